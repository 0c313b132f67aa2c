package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/coder/websocket"

	"github.com/mergenhq/mergen/internal/execproto"
)

// ExecIO is where an exec session's streams come from and go to.
type ExecIO struct {
	Stdin          io.Reader // nil: no input (the request's Stdin is false)
	Stdout, Stderr io.Writer
	// Resize and Signal, when set, are sent to the command as they come:
	// window sizes (with a terminal) and signal names ("INT", "TERM").
	Resize <-chan execproto.WindowSize
	Signal <-chan string
}

// Exec runs a command in VM id through POST /v1/vms/{id}/exec (a
// WebSocket carrying the exec agent's frames, docs/exec.md) and returns
// its exit status once it has ended.
func (c *Client) Exec(ctx context.Context, id string, req execproto.ExecRequest, streams ExecIO) (execproto.Exit, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ws, err := c.dialExec(ctx, id)
	if err != nil {
		return execproto.Exit{}, err
	}
	defer ws.CloseNow()
	ws.SetReadLimit(execproto.HeaderLen + execproto.MaxPayload)
	send := func(st execproto.Stream, p []byte) error {
		b, err := execproto.AppendFrame(nil, st, p)
		if err != nil {
			return err
		}
		return ws.Write(ctx, websocket.MessageBinary, b)
	}
	body, err := json.Marshal(execproto.Request{Op: execproto.OpExec, ExecRequest: req})
	if err != nil {
		return execproto.Exit{}, err
	}
	if err := send(execproto.StreamRequest, body); err != nil {
		return execproto.Exit{}, fmt.Errorf("exec vm %s: send the request: %w", id, err)
	}
	if streams.Stdin != nil && req.Stdin {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := streams.Stdin.Read(buf)
				if n > 0 && send(execproto.StreamStdin, buf[:n]) != nil {
					return
				}
				if err != nil {
					send(execproto.StreamStdin, nil) // end of input
					return
				}
			}
		}()
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ws, ok := <-streams.Resize:
				if !ok {
					streams.Resize = nil
					continue
				}
				b, _ := json.Marshal(ws)
				send(execproto.StreamResize, b)
			case sig, ok := <-streams.Signal:
				if !ok {
					streams.Signal = nil
					continue
				}
				b, _ := json.Marshal(execproto.SignalMsg{Signal: sig})
				send(execproto.StreamSignal, b)
			}
		}
	}()
	for {
		typ, msg, err := ws.Read(ctx)
		if err != nil {
			return execproto.Exit{}, fmt.Errorf("exec vm %s: the session ended without an exit status: %w", id, err)
		}
		if typ != websocket.MessageBinary {
			continue
		}
		st, p, err := execproto.NewDecoder(bytes.NewReader(msg)).Next()
		if err != nil {
			return execproto.Exit{}, fmt.Errorf("exec vm %s: %w", id, err)
		}
		switch st {
		case execproto.StreamStdout:
			if streams.Stdout != nil {
				streams.Stdout.Write(p)
			}
		case execproto.StreamStderr:
			if streams.Stderr != nil {
				streams.Stderr.Write(p)
			}
		case execproto.StreamError:
			return execproto.Exit{}, fmt.Errorf("exec vm %s: %s", id, p)
		case execproto.StreamExit:
			var exit execproto.Exit
			if err := json.Unmarshal(p, &exit); err != nil {
				return exit, fmt.Errorf("exec vm %s: exit frame: %w", id, err)
			}
			ws.Close(websocket.StatusNormalClosure, "")
			return exit, nil
		}
	}
}

// AttachConsole opens VM id's interactive serial console: a WebSocket whose
// binary messages are the console's bytes, both ways.
func (c *Client) AttachConsole(ctx context.Context, id string) (*websocket.Conn, error) {
	return c.dialWS(ctx, id, "/console/attach")
}

// dialExec opens the WebSocket; a refusal before the upgrade (unknown VM,
// not running) is an APIError like any other answer.
func (c *Client) dialExec(ctx context.Context, id string) (*websocket.Conn, error) {
	return c.dialWS(ctx, id, "/exec")
}

// dialWS opens the WebSocket at /v1/vms/{id}<suffix>.
func (c *Client) dialWS(ctx context.Context, id, suffix string) (*websocket.Conn, error) {
	u := strings.Replace(c.base, "http", "ws", 1) + "/v1/vms/" + url.PathEscape(id) + suffix
	hc := *c.http
	hc.Timeout = 0 // a session has no natural end; ctx bounds it
	h := http.Header{}
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: &hc, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode >= 300 {
			return nil, apiError(resp)
		}
		return nil, fmt.Errorf("vm %s: cannot reach the mergen daemon at %s: %w", id, c.where, err)
	}
	return ws, nil
}

// ReadFiles copies the file or directory path of VM id, as a tar archive,
// to w (GET /v1/vms/{id}/files).
func (c *Client) ReadFiles(ctx context.Context, id, path string, w io.Writer) error {
	resp, err := c.files(ctx, http.MethodGet, id, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

// WriteFiles extracts the tar archive r into the directory dir of VM id
// (PUT /v1/vms/{id}/files).
func (c *Client) WriteFiles(ctx context.Context, id, dir string, r io.Reader) error {
	resp, err := c.files(ctx, http.MethodPut, id, dir, r)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// files sends one files request with a tar body or answer and returns a
// successful answer; any other is an APIError.
func (c *Client) files(ctx context.Context, method, id, path string, body io.Reader) (*http.Response, error) {
	h := http.Header{"Accept": {"application/x-tar"}}
	if body != nil {
		h = http.Header{"Content-Type": {"application/x-tar"}}
	}
	return c.send(ctx, method, "/v1/vms/"+url.PathEscape(id)+"/files?path="+url.QueryEscape(path), body, h)
}

// IsStatus reports whether err is an API answer with that status.
func IsStatus(err error, status int) bool {
	var e *APIError
	return errors.As(err, &e) && e.Status == status
}
