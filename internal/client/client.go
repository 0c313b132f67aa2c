// Package client is the Go client of the daemon's REST API, used by the CLI.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/wire"
)

// Client talks to one daemon, over its unix socket or over TCP with a
// bearer token.
type Client struct {
	base  string // URL prefix of requests
	where string // what error messages call the daemon
	token string
	http  *http.Client
}

// Option configures New.
type Option func(*Client)

// WithToken sends token as the bearer token of every request (TCP; the
// socket needs none).
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// New returns a client for the daemon at addr: "unix:///path/to/socket",
// "host:port" or an http(s) URL.
func New(addr string, opts ...Option) (*Client, error) {
	if addr == "" {
		return nil, fmt.Errorf("no daemon address (--api or MERGEN_API)")
	}
	c := &Client{http: &http.Client{Timeout: 10 * time.Minute}}
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if path == "" || path[0] != '/' {
			return nil, fmt.Errorf("api address %q: want unix:///absolute/path", addr)
		}
		var d net.Dialer
		c.http.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		}}
		c.base, c.where = "http://mergen", path
	} else {
		if !strings.Contains(addr, "://") {
			addr = "http://" + addr
		}
		u, err := url.Parse(addr)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("api address %q is not a URL like http://127.0.0.1:8080 or unix:///run/mergen/mergen.sock", addr)
		}
		c.base = strings.TrimRight(u.String(), "/")
		c.where = c.base
	}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Socket reports whether a daemon answers on the unix socket at path: the
// CLI's first choice when no address is given.
func Socket(path string) bool {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

func (c *Client) newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// APIError is an error answer of the daemon.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status) }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the mergen daemon at %s: %w (is `mergen server` running? set --api or MERGEN_API)", c.where, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return errorAnswer(resp.StatusCode, data)
	}
	if out != nil {
		if raw, ok := out.(*json.RawMessage); ok {
			*raw = append((*raw)[:0], data...)
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode %s %s: %w", method, path, err)
		}
	}
	return nil
}

// Create creates a VM.
func (c *Client) Create(ctx context.Context, req wire.CreateRequest) (wire.VM, error) {
	var vm wire.VM
	err := c.do(ctx, http.MethodPost, "/v1/vms", req, &vm)
	return vm, err
}

// List lists all VMs.
func (c *Client) List(ctx context.Context) ([]wire.VM, error) {
	var l wire.VMList
	err := c.do(ctx, http.MethodGet, "/v1/vms", nil, &l)
	return l.VMs, err
}

// Get returns one VM by its full id.
func (c *Client) Get(ctx context.Context, id string) (wire.VM, error) {
	var vm wire.VM
	err := c.do(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(id), nil, &vm)
	return vm, err
}

// Start starts a VM.
func (c *Client) Start(ctx context.Context, id string) (wire.VM, error) {
	var vm wire.VM
	err := c.do(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(id)+"/start", nil, &vm)
	return vm, err
}

// Stop stops a VM.
func (c *Client) Stop(ctx context.Context, id string) (wire.VM, error) {
	var vm wire.VM
	err := c.do(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(id)+"/stop", nil, &vm)
	return vm, err
}

// Pause pauses a running VM's guest; pausing a paused VM succeeds.
func (c *Client) Pause(ctx context.Context, id string) (wire.VM, error) {
	var vm wire.VM
	err := c.do(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(id)+"/pause", nil, &vm)
	return vm, err
}

// Resume resumes a paused VM; resuming a running VM succeeds.
func (c *Client) Resume(ctx context.Context, id string) (wire.VM, error) {
	var vm wire.VM
	err := c.do(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(id)+"/resume", nil, &vm)
	return vm, err
}

// Delete deletes a VM.
func (c *Client) Delete(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/vms/"+url.PathEscape(id), nil, nil)
}

// File returns one of the VM's stored files (meta.json, vm.json, hooks.json).
func (c *Client) File(ctx context.Context, id, name string) (json.RawMessage, error) {
	var raw json.RawMessage
	err := c.do(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(id)+"/"+name, nil, &raw)
	return raw, err
}

// Health says whether the daemon answers (GET /healthz, which needs no
// token).
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil)
}

// Images returns the daemon's image inventory as JSON.
func (c *Client) Images(ctx context.Context) (json.RawMessage, error) {
	var raw json.RawMessage
	err := c.do(ctx, http.MethodGet, "/v1/images", nil, &raw)
	return raw, err
}

// Resolve turns what a user typed — a full id, a unique id prefix, or a VM's
// name tag — into the VM. A name wins over a prefix; ambiguity is an error
// that lists the candidates.
func (c *Client) Resolve(ctx context.Context, ref string) (wire.VM, error) {
	if ref == "" {
		return wire.VM{}, fmt.Errorf("no VM given")
	}
	vms, err := c.List(ctx)
	if err != nil {
		return wire.VM{}, err
	}
	return Match(vms, ref)
}

// Match picks the VM ref names among vms (see Resolve).
func Match(vms []wire.VM, ref string) (wire.VM, error) {
	for _, vm := range vms {
		if vm.ID == ref {
			return vm, nil
		}
	}
	for _, vm := range vms {
		if vm.Name == ref {
			return vm, nil
		}
	}
	var hits []wire.VM
	for _, vm := range vms {
		if strings.HasPrefix(vm.ID, ref) {
			hits = append(hits, vm)
		}
	}
	switch len(hits) {
	case 1:
		return hits[0], nil
	case 0:
		return wire.VM{}, fmt.Errorf("no VM with id, id prefix or name %q", ref)
	}
	ids := make([]string, len(hits))
	for i, vm := range hits {
		ids[i] = vm.ID
	}
	return wire.VM{}, fmt.Errorf("%q matches %d VMs (%s): give more of the id", ref, len(hits), strings.Join(ids, ", "))
}

// Console copies the VM's serial console to w; with follow it keeps
// streaming until ctx is done or the VM is deleted.
func (c *Client) Console(ctx context.Context, id string, tail int64, follow bool, w io.Writer) error {
	q := url.Values{}
	if tail > 0 {
		q.Set("tail", fmt.Sprint(tail))
	}
	if follow {
		q.Set("follow", "true")
	}
	return c.stream(ctx, "/v1/vms/"+url.PathEscape(id)+"/console?"+q.Encode(), w)
}

// LogsOptions selects what Logs shows.
type LogsOptions struct {
	// Tail is the number of lines from the end to show first: "" or "all"
	// for all of them (within the daemon's bound), "0" for none.
	Tail string
	// Follow keeps streaming new output until ctx is done or the VM is
	// deleted.
	Follow bool
	// Source is "console" (the default: kernel, mergen-init and payload)
	// or "payload" (the payload's lines alone, without their prefix).
	Source string
}

// Logs copies the VM's output, by lines, to w (GET /v1/vms/{id}/logs).
func (c *Client) Logs(ctx context.Context, id string, opts LogsOptions, w io.Writer) error {
	q := url.Values{}
	if opts.Tail != "" {
		q.Set("tail", opts.Tail)
	}
	if opts.Follow {
		q.Set("follow", "1")
	}
	if opts.Source != "" {
		q.Set("source", opts.Source)
	}
	return c.stream(ctx, "/v1/vms/"+url.PathEscape(id)+"/logs?"+q.Encode(), w)
}

// stream copies a text answer that may never end to w; ctx ending it is no
// error.
func (c *Client) stream(ctx context.Context, path string, w io.Writer) error {
	resp, err := c.send(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// send sends a request whose answer may be long or never end (no client
// timeout; ctx bounds it) and returns the answer when it is a success; an
// error answer is an APIError.
func (c *Client) send(ctx context.Context, method, path string, body io.Reader, header http.Header) (*http.Response, error) {
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	hc := *c.http
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the mergen daemon at %s: %w", c.where, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, apiError(resp)
	}
	return resp, nil
}

// apiError reads an error answer.
func apiError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return errorAnswer(resp.StatusCode, data)
}

// errorAnswer is the APIError of an answer with status and body data:
// the API's {"error": …}, or the body as text.
func errorAnswer(status int, data []byte) error {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(data, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(data))
	}
	if status == http.StatusUnauthorized {
		e.Error += " (give the daemon's token with MERGEN_API_TOKEN, or run where the token file MGR_API_TOKEN_FILE is readable, or use the unix socket MGR_API_SOCKET)"
	}
	return &APIError{Status: status, Message: e.Error}
}

// Snapshot takes a snapshot of VM id.
func (c *Client) Snapshot(ctx context.Context, id string, req wire.SnapshotRequest) (wire.Snapshot, error) {
	var s wire.Snapshot
	err := c.do(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(id)+"/snapshots", req, &s)
	return s, err
}

// Snapshots lists the host's snapshots, oldest first.
func (c *Client) Snapshots(ctx context.Context) ([]wire.Snapshot, error) {
	var l wire.SnapshotList
	err := c.do(ctx, http.MethodGet, "/v1/snapshots", nil, &l)
	return l.Snapshots, err
}

// GetSnapshot returns a snapshot by id or unique prefix (8 characters or
// more).
func (c *Client) GetSnapshot(ctx context.Context, ref string) (wire.Snapshot, error) {
	var s wire.Snapshot
	err := c.do(ctx, http.MethodGet, "/v1/snapshots/"+url.PathEscape(ref), nil, &s)
	return s, err
}

// DeleteSnapshot deletes a snapshot.
func (c *Client) DeleteSnapshot(ctx context.Context, ref string) error {
	return c.do(ctx, http.MethodDelete, "/v1/snapshots/"+url.PathEscape(ref), nil, nil)
}

// Stats returns what VM id uses now.
func (c *Client) Stats(ctx context.Context, id string) (wire.Stats, error) {
	var s wire.Stats
	err := c.do(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(id)+"/stats", nil, &s)
	return s, err
}

// EventsOptions choose the events a watcher gets.
type EventsOptions struct {
	VM    string   // a VM id; empty: every VM
	Types []string // event types; empty: all
	// Since resumes after that position (the seq of the last event seen);
	// FromStart with Since 0 gets every event the host still keeps.
	// Neither: only what happens from now on.
	Since     uint64
	FromStart bool
	// NoFollow ends the watch at the end of what the host has recorded
	// when the request arrives (follow=0).
	NoFollow bool
	// Reconnect makes Watch reconnect, from the last event it handed over,
	// when the connection is lost (the daemon restarted); it gives up only
	// when ctx ends or the daemon refuses the request.
	Reconnect bool
	// OnReconnect, when set, is told of each lost connection.
	OnReconnect func(err error)
}

// Watch streams the host's events (GET /v1/events) to fn, in order, until
// ctx ends (no error), fn fails, or the stream ends.
func (c *Client) Watch(ctx context.Context, opts EventsOptions, fn func(events.Event) error) error {
	since, fromNow := opts.Since, opts.Since == 0 && !opts.FromStart
	delay := 250 * time.Millisecond
	for {
		q := url.Values{}
		if opts.VM != "" {
			q.Set("vm", opts.VM)
		}
		if len(opts.Types) > 0 {
			q.Set("type", strings.Join(opts.Types, ","))
		}
		if !fromNow {
			q.Set("since", strconv.FormatUint(since, 10))
		}
		if opts.NoFollow {
			q.Set("follow", "0")
		}
		got := false
		err := c.watchOnce(ctx, "/v1/events?"+q.Encode(), func(pos uint64) {
			// The stream's first line says where it starts: a reconnect
			// goes on from there even before any event came.
			since, fromNow = pos, false
		}, func(ev events.Event) error {
			got = true
			return fn(ev)
		})
		var apiErr *APIError
		switch {
		case ctx.Err() != nil:
			return nil
		case opts.NoFollow && errors.Is(err, errStreamEnded):
			return nil
		case !opts.Reconnect, errors.As(err, &apiErr), errors.Is(err, errStreamGone), errors.Is(err, errHandler):
			return err
		}
		if got {
			delay = 250 * time.Millisecond
		}
		if opts.OnReconnect != nil {
			opts.OnReconnect(err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

var (
	errStreamEnded = errors.New("event stream: the daemon closed it")
	errStreamGone  = errors.New("the daemon no longer keeps events that far back")
	errHandler     = errors.New("event handler")
)

// watchOnce reads one event stream, telling pos of every position it
// passes (each event's id, and the one the stream starts after).
func (c *Client) watchOnce(ctx context.Context, path string, pos func(uint64), fn func(events.Event) error) error {
	resp, err := c.send(ctx, http.MethodGet, path, nil, http.Header{"Accept": {"text/event-stream"}})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	var kind string
	var data []byte
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if kind == "gone" {
				var e struct {
					Error string `json:"error"`
				}
				json.Unmarshal(data, &e)
				return fmt.Errorf("%w: %s", errStreamGone, e.Error)
			}
			if len(data) > 0 {
				var ev events.Event
				if err := json.Unmarshal(data, &ev); err != nil {
					return fmt.Errorf("event stream: %w", err)
				}
				if err := fn(ev); err != nil {
					return fmt.Errorf("%w: %w", errHandler, err)
				}
			}
			kind, data = "", nil
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id:"):
			if n, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(line, "id:")), 10, 64); err == nil {
				pos(n)
			}
		case strings.HasPrefix(line, "event:"):
			kind = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")...)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("event stream: %w", err)
	}
	return errStreamEnded
}
