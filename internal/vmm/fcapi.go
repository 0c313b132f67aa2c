package vmm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// fcClient speaks Firecracker's HTTP API over its unix socket: the few calls
// the driver needs after boot (status, Ctrl-Alt-Del, pause and resume,
// snapshot create and load),
// typed by hand rather than through the SDK (which pulls in hundreds of
// modules for the same requests).
type fcClient struct {
	socket string
	http   *http.Client
}

func newFCClient(socket string) *fcClient {
	return &fcClient{
		socket: socket,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			// One short exchange per client; keeping the connection
			// would only leave it to Firecracker to close.
			DisableKeepAlives: true,
		}},
	}
}

// fcInstanceInfo is the body of GET /.
type fcInstanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"` // "Not started", "Running", "Paused"
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

// fcError is the body of every error answer.
type fcError struct {
	FaultMessage string `json:"fault_message"`
}

func (c *fcClient) instanceInfo(ctx context.Context) (fcInstanceInfo, error) {
	var info fcInstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// action sends PUT /actions; action_type is InstanceStart, SendCtrlAltDel or
// FlushMetrics.
func (c *fcClient) action(ctx context.Context, actionType string) error {
	return c.do(ctx, http.MethodPut, "/actions", map[string]string{"action_type": actionType}, nil)
}

// vmState sends PATCH /vm with state Paused or Resumed.
func (c *fcClient) vmState(ctx context.Context, state string) error {
	return c.do(ctx, http.MethodPatch, "/vm", map[string]string{"state": state}, nil)
}

// fcSnapshotCreate is the body of PUT /snapshot/create (API v1.0
// SnapshotCreateParams). The optional "version" (save in an older format)
// is left out: a snapshot is restored by the version that took it, and
// later APIs drop the field.
type fcSnapshotCreate struct {
	SnapshotType string `json:"snapshot_type"` // Full or Diff
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

// fcSnapshotLoad is the body of PUT /snapshot/load (API v1.0
// SnapshotLoadParams).
type fcSnapshotLoad struct {
	SnapshotPath        string `json:"snapshot_path"`
	MemFilePath         string `json:"mem_file_path"`
	EnableDiffSnapshots bool   `json:"enable_diff_snapshots"`
	ResumeVM            bool   `json:"resume_vm"`
}

// createSnapshot writes a full snapshot of the paused VM to the two paths,
// as Firecracker sees them (inside its chroot with the jailer).
func (c *fcClient) createSnapshot(ctx context.Context, statePath, memPath string) error {
	return c.do(ctx, http.MethodPut, "/snapshot/create", fcSnapshotCreate{SnapshotType: "Full", SnapshotPath: statePath, MemFilePath: memPath}, nil)
}

// loadSnapshot loads a full snapshot into a Firecracker that has no
// configuration yet and resumes it. On failure Firecracker exits.
func (c *fcClient) loadSnapshot(ctx context.Context, statePath, memPath string) error {
	return c.do(ctx, http.MethodPut, "/snapshot/load", fcSnapshotLoad{SnapshotPath: statePath, MemFilePath: memPath, ResumeVM: true}, nil)
}

func (c *fcClient) do(ctx context.Context, method, path string, in, out any) error {
	op := fmt.Sprintf("firecracker %s %s on %s", method, path, c.socket)
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		// A bytes.Reader gives the request a Content-Length; Firecracker's
		// HTTP server does not take chunked bodies.
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s: read answer: %w", op, err)
	}
	if resp.StatusCode/100 != 2 {
		var fe fcError
		if json.Unmarshal(b, &fe) == nil && fe.FaultMessage != "" {
			return fmt.Errorf("%s: %s: %s", op, resp.Status, fe.FaultMessage)
		}
		return fmt.Errorf("%s: %s: %s", op, resp.Status, strings.TrimSpace(string(b)))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s: decode answer: %w", op, err)
		}
	}
	return nil
}
