// Package hooks runs the two kinds of extension points mergen offers.
//
// Manager hooks (this file) fire on the VM events of the host's event
// stream (package events): onCreate, onStart, onStop and onDelete on the
// operations the daemon is asked for, and onReady, onUnhealthy, onFailed
// and onRestart on what happens to a running VM. They come from the VM's hooks.json (the
// "hooks" field of POST /v1/vms) and from every *.json file in
// MGR_GLOBAL_HOOKS_DIR, global ones first, in file-name order. A hook is an
// HTTP call or a command; it is best-effort (failures are logged) unless it
// is strict, in which case its failure fails the operation.
//
// Guarantees towards the API caller, who may be anyone holding a token:
//   - command hooks in a request body are refused unless the operator allows
//     them (ParseRequest); global files, which need root to write, keep them;
//   - a failed hook is described by its event, source, index, and kind (HTTP
//     method and host, or the command's program): never the URL's path,
//     query or credentials, never the command's arguments;
//   - the error says how the hook failed (HTTP status, exit status, signal,
//     timeout), never what the command printed or what the remote answered:
//     those go to the daemon log, at most 4 KiB of each;
//   - HTTP hooks follow redirects only to the same scheme, host and port;
//   - the hooks.json the API serves has its header values redacted (Redact).
//
// Lifecycle stage hooks (stage.go) extend the stages mergen-lifecycle runs.
package hooks

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/store"
)

// Event names a manager event.
type Event string

// The manager events.
const (
	OnCreate Event = "onCreate"
	OnStart  Event = "onStart"
	OnStop   Event = "onStop"
	OnDelete Event = "onDelete"

	// Events no operation waits for: their hooks are best-effort only.
	OnReady     Event = "onReady"
	OnUnhealthy Event = "onUnhealthy"
	OnFailed    Event = "onFailed"
	OnRestart   Event = "onRestart"
)

// eventNames lists the events for errors.
const eventNames = "onCreate, onStart, onStop, onDelete, onReady, onUnhealthy, onFailed or onRestart"

// CanBeStrict reports whether an operation waits for e's hooks, so that a
// strict one can fail it.
func (e Event) CanBeStrict() bool {
	switch e {
	case OnCreate, OnStart, OnStop, OnDelete:
		return true
	}
	return false
}

// Timeouts of one hook.
const (
	DefaultTimeout = 5 * time.Second
	MaxTimeout     = 300 * time.Second
)

// maxRedirects is how many redirects an HTTP hook follows, all to the
// scheme, host and port of its URL.
const maxRedirects = 3

// Hook is one manager hook: an HTTP call when URL is set, a command when
// Command is set.
type Hook struct {
	URL     string            `json:"url,omitempty"`
	Method  string            `json:"method,omitempty"` // default POST
	Headers map[string]string `json:"headers,omitempty"`

	Command []string          `json:"command,omitempty"` // absolute path, then arguments
	Env     map[string]string `json:"env,omitempty"`

	TimeoutSeconds int  `json:"timeoutSeconds,omitempty"` // default 5, at most 300
	Strict         bool `json:"strict,omitempty"`
}

// Set is the hooks of each event, as stored in hooks.json.
type Set struct {
	OnCreate []Hook `json:"onCreate,omitempty"`
	OnStart  []Hook `json:"onStart,omitempty"`
	OnStop   []Hook `json:"onStop,omitempty"`
	OnDelete []Hook `json:"onDelete,omitempty"`

	OnReady     []Hook `json:"onReady,omitempty"`
	OnUnhealthy []Hook `json:"onUnhealthy,omitempty"`
	OnFailed    []Hook `json:"onFailed,omitempty"`
	OnRestart   []Hook `json:"onRestart,omitempty"`

	// Source names where the set came from in errors and logs: the global
	// file's name (set by LoadDir), or empty for a VM's own hooks.json.
	Source string `json:"-"`
}

// source describes where the set came from.
func (s Set) source() string {
	if s.Source == "" {
		return "per-VM hooks.json"
	}
	return "global " + s.Source
}

// For returns the hooks of one event.
func (s Set) For(e Event) []Hook {
	if l := s.slot(e); l != nil {
		return *l
	}
	return nil
}

// ParseOptions says what a hook set from an API request may hold.
type ParseOptions struct {
	// AllowCommands accepts command hooks (MGR_ALLOW_VM_COMMAND_HOOKS=1).
	// Without it an API caller could run any program as the daemon's user.
	AllowCommands bool
}

// commandsDisabled is why a command hook in an API request is refused.
const commandsDisabled = "command hooks in API requests are disabled; an operator can allow them with MGR_ALLOW_VM_COMMAND_HOOKS=1 or use a global hook file in MGR_GLOBAL_HOOKS_DIR"

// ParseRequest decodes and validates the hooks of an API request (the
// "hooks" field of POST /v1/vms). Command hooks are refused unless
// o.AllowCommands. Errors are errdefs.Invalid and name the offending field,
// e.g. hooks.onCreate[0].command.
func ParseRequest(b []byte, o ParseOptions) (Set, error) {
	s, err := parse(b, o.AllowCommands)
	if err != nil {
		return Set{}, errdefs.Invalid("%w", err)
	}
	return s, nil
}

// Parse decodes and validates a hook set from a trusted place: a global
// hook file, or a VM's stored hooks.json (accepted when the VM was created,
// so it keeps working whatever the options are now). Command hooks are
// allowed; API input goes through ParseRequest instead. Empty input is an
// empty set. Errors name the offending field, e.g. hooks.onCreate[0].url.
func Parse(b []byte) (Set, error) {
	return parse(b, true)
}

func parse(b []byte, allowCommands bool) (Set, error) {
	var s Set
	if t := bytes.TrimSpace(b); len(t) == 0 || string(t) == "null" {
		return s, nil
	}
	// Decode level by level so that every error can name its field.
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return Set{}, fmt.Errorf("hooks: want an object of event lists: %v", err)
	}
	for name, raw := range top {
		list := s.slot(Event(name))
		if list == nil {
			return Set{}, fmt.Errorf("hooks.%s: unknown event (want %s)", name, eventNames)
		}
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return Set{}, fmt.Errorf("hooks.%s: want a list of hooks", name)
		}
		for i, item := range items {
			var h Hook
			dec := json.NewDecoder(bytes.NewReader(item))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&h); err != nil {
				return Set{}, fmt.Errorf("hooks.%s[%d]: %s", name, i, decodeProblem(err))
			}
			if h.Command != nil && !allowCommands {
				return Set{}, fmt.Errorf("hooks.%s[%d].command: %s", name, i, commandsDisabled)
			}
			if err := h.validate(); err != nil {
				return Set{}, fmt.Errorf("hooks.%s[%d].%v", name, i, err)
			}
			if h.Strict && !Event(name).CanBeStrict() {
				return Set{}, fmt.Errorf("hooks.%s[%d].strict: no operation waits for %s hooks, so they cannot be strict", name, i, name)
			}
			*list = append(*list, h)
		}
	}
	return s, nil
}

// decodeProblem rewords encoding/json errors in the terms of hooks.json.
func decodeProblem(err error) string {
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te) && te.Field != "":
		return fmt.Sprintf("%s: want %s, got %s", te.Field, jsonType(te.Type.Kind().String()), te.Value)
	case errors.As(err, &te):
		return "want an object (a hook), got " + te.Value
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ") +
			" (hook fields are url, method, headers, command, env, timeoutSeconds, strict)"
	}
	return err.Error()
}

func jsonType(kind string) string {
	switch kind {
	case "slice":
		return "a list"
	case "map", "struct":
		return "an object"
	case "int", "int64":
		return "a whole number"
	case "bool":
		return "true or false"
	}
	return "a " + kind
}

func (s *Set) slot(e Event) *[]Hook {
	switch e {
	case OnCreate:
		return &s.OnCreate
	case OnStart:
		return &s.OnStart
	case OnStop:
		return &s.OnStop
	case OnDelete:
		return &s.OnDelete
	case OnReady:
		return &s.OnReady
	case OnUnhealthy:
		return &s.OnUnhealthy
	case OnFailed:
		return &s.OnFailed
	case OnRestart:
		return &s.OnRestart
	}
	return nil
}

var methods = map[string]bool{"GET": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true}

func (h Hook) validate() error {
	switch {
	case h.URL != "" && h.Command != nil:
		return errors.New("url: a hook is either an HTTP call (url) or a command, not both")
	case h.URL == "" && h.Command == nil:
		return errors.New("url: a hook needs url or command")
	}
	// 0 means the default; anything else must be a usable bound.
	if h.TimeoutSeconds < 0 || time.Duration(h.TimeoutSeconds)*time.Second > MaxTimeout {
		return fmt.Errorf("timeoutSeconds: %d is out of range 1..%d", h.TimeoutSeconds, int(MaxTimeout.Seconds()))
	}
	if h.URL != "" {
		u, err := url.Parse(h.URL)
		if err != nil {
			return fmt.Errorf("url: %q is not a URL", h.URL)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return fmt.Errorf("url: unsupported scheme %q (want http or https)", u.Scheme)
		}
		if u.Host == "" {
			return fmt.Errorf("url: %q has no host", h.URL)
		}
		if h.Method != "" && !methods[strings.ToUpper(h.Method)] {
			return fmt.Errorf("method: %q is not one of GET, POST, PUT, PATCH, DELETE", h.Method)
		}
		for k, v := range h.Headers {
			if k == "" || strings.ContainsAny(k, " :\r\n") || strings.ContainsAny(v, "\r\n") {
				return fmt.Errorf("headers: %q is not a valid header", k)
			}
		}
		if len(h.Env) > 0 {
			return errors.New("env: only command hooks take env")
		}
		return nil
	}
	if len(h.Command) == 0 || h.Command[0] == "" {
		return errors.New("command: empty (want an absolute program path, then its arguments)")
	}
	if !filepath.IsAbs(h.Command[0]) {
		return fmt.Errorf("command: %q must be an absolute path", h.Command[0])
	}
	for k := range h.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("env: %q is not a variable name", k)
		}
	}
	if h.Method != "" || len(h.Headers) > 0 {
		return errors.New("method: only HTTP hooks take method and headers")
	}
	return nil
}

func (h Hook) timeout() time.Duration {
	if h.TimeoutSeconds == 0 {
		return DefaultTimeout
	}
	return time.Duration(h.TimeoutSeconds) * time.Second
}

// target describes the hook for errors and logs without secrets: the
// method and host (with port) of an HTTP hook, no path, query, credentials
// or headers; the program of a command, no arguments.
func (h Hook) target() string {
	if h.URL != "" {
		if u, err := url.Parse(h.URL); err == nil {
			return "http " + h.method() + " " + u.Host
		}
		return "http " + h.method()
	}
	if len(h.Command) > 0 {
		return "command " + h.Command[0]
	}
	return "?"
}

func (h Hook) method() string {
	if h.Method == "" {
		return http.MethodPost
	}
	return strings.ToUpper(h.Method)
}

// LoadDir reads the global hooks: every *.json file of dir, in name order.
// A missing directory holds no hooks.
func LoadDir(dir string) ([]Set, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var sets []Set
	var errs []error
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s, err := Parse(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
			continue
		}
		s.Source = filepath.Base(n)
		sets = append(sets, s)
	}
	return sets, errors.Join(errs...)
}

// Data is the context a hook receives: the JSON body of HTTP hooks and the
// stdin of command hooks, and MERGEN_* variables for commands.
type Data struct {
	Event    Event             `json:"event"`
	VMID     string            `json:"vmId"`
	GuestIP  string            `json:"guestIP,omitempty"`
	Ports    []store.Port      `json:"ports,omitempty"`
	HTTPPort int               `json:"httpPort,omitempty"`
	Tags     map[string]string `json:"tags,omitempty"`
	Metadata json.RawMessage   `json:"metadata,omitempty"`
	// The event of the host's event stream the hook fires for: its
	// position, and for onFailed and onUnhealthy why.
	Seq     uint64 `json:"seq,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// Run runs the event's hooks of set in order. A failing best-effort hook is
// logged and the rest still run; a failing strict hook stops and returns
// the error.
//
// The error names the hook (event, index, source, kind) and how it failed,
// e.g. "onCreate hook 0 of vm 3f0c… (per-VM hooks.json, http POST
// hooks.example) failed: HTTP 500 Internal Server Error". What a command
// printed or a server answered goes to log only, as "detail".
func Run(ctx context.Context, log *slog.Logger, set Set, d Data) error {
	_, err := RunCounted(ctx, log, set, d)
	return err
}

// RunCounted is Run that also says how many hooks failed, best-effort ones
// included.
func RunCounted(ctx context.Context, log *slog.Logger, set Set, d Data) (failed int, err error) {
	body, err := json.Marshal(d)
	if err != nil {
		return 0, fmt.Errorf("%s hooks of vm %s: %w", d.Event, d.VMID, err)
	}
	for i, h := range set.For(d.Event) {
		t0 := time.Now()
		output, err := runOne(ctx, h, d, body)
		attrs := []any{"vm", d.VMID, "event", string(d.Event), "source", set.source(), "hook", i, "target", h.target(), "duration", time.Since(t0).Round(time.Millisecond)}
		if err != nil {
			attrs = append(attrs, "err", err)
			if len(output) > 0 {
				attrs = append(attrs, "detail", string(output))
			}
		}
		if err != nil {
			failed++
		}
		switch {
		case err == nil:
			log.Debug("hook ran", attrs...)
		case h.Strict:
			log.Error("strict hook failed", attrs...)
			return failed, fmt.Errorf("%s hook %d of vm %s (%s, %s) failed: %w", d.Event, i, d.VMID, set.source(), h.target(), err)
		default:
			log.Warn("hook failed (best-effort, continuing)", attrs...)
		}
	}
	return failed, nil
}

// runOne runs one hook. On failure, output is the start of what the command
// printed or the server answered, or the transport's own error: for the log
// only.
func runOne(ctx context.Context, h Hook, d Data, body []byte) (output []byte, err error) {
	ctx, cancel := context.WithTimeout(ctx, h.timeout())
	defer cancel()
	if h.URL != "" {
		return runHTTP(ctx, h, body)
	}
	return runCommand(ctx, h, d, body)
}

func runHTTP(ctx context.Context, h Hook, body []byte) ([]byte, error) {
	var rd io.Reader
	if h.method() != http.MethodGet {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, h.method(), h.URL, rd)
	if err != nil {
		return nil, scrub(err, h.URL)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("User-Agent", "mergen-hooks")
	for k, v := range h.Headers {
		req.Header.Set(k, v)
	}
	// Redirects are followed only to the hook's own scheme, host and port
	// (host:port is the host: another port is another server), a few times
	// at most. Anything else stops at the 3xx answer, which fails the hook.
	var stopped string
	client := &http.Client{CheckRedirect: func(next *http.Request, via []*http.Request) error {
		switch first := via[0].URL; {
		case next.URL.Scheme != first.Scheme || !strings.EqualFold(next.URL.Host, first.Host):
			stopped = "redirect to another host not followed"
		case len(via) > maxRedirects:
			stopped = fmt.Sprintf("more than %d redirects", maxRedirects)
		default:
			return nil
		}
		return http.ErrUseLastResponse
	}}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no answer within %s", h.timeout())
		}
		// Transport errors can quote the server (a malformed status line, a
		// Location header, a certificate's names): the error gets the kind
		// of failure only, the log the whole of it.
		return []byte(scrub(err, h.URL).Error()), transportError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		// The status is the answer: the body is not read, so a slow or
		// endless one cannot hold the operation up.
		return nil, nil
	}
	// The answer's start is for the log; the error carries the status only
	// (a hook's URL is the caller's choice: echoing what it answered would
	// let the caller read from wherever the daemon can reach).
	var answer headBuffer
	_, _ = io.Copy(&answer, io.LimitReader(resp.Body, maxLogged))
	status := strings.TrimSpace(fmt.Sprintf("HTTP %d %s", resp.StatusCode, http.StatusText(resp.StatusCode)))
	if stopped != "" {
		return answer.b, fmt.Errorf("%s: %s", status, stopped)
	}
	return answer.b, errors.New(status)
}

// transportError says what kind of failure err is, in words of our own.
func transportError(err error) error {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	var errno syscall.Errno
	var certErr *tls.CertificateVerificationError
	switch {
	case errors.As(err, &dnsErr):
		return errors.New("cannot resolve the host")
	case errors.As(err, &certErr):
		return errors.New("TLS: the server's certificate is not trusted")
	case errors.As(err, &opErr) && opErr.Op == "dial" && errors.As(err, &errno):
		return fmt.Errorf("cannot connect: %s", errno)
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return errors.New("cannot connect")
	case errors.As(err, &errno):
		return fmt.Errorf("connection failed: %s", errno)
	}
	return errors.New("no valid HTTP answer")
}

// scrub removes the URL (which may carry credentials) from a client error.
func scrub(err error, raw string) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return errors.New(strings.ReplaceAll(err.Error(), raw, "<url>"))
}

func runCommand(ctx context.Context, h Hook, d Data, body []byte) ([]byte, error) {
	cmd := exec.CommandContext(ctx, h.Command[0], h.Command[1:]...)
	cmd.Stdin = bytes.NewReader(body)
	tags, _ := json.Marshal(d.Tags)
	ports, _ := json.Marshal(d.Ports)
	cmd.Env = append(os.Environ(),
		"MERGEN_EVENT="+string(d.Event),
		"MERGEN_VM_ID="+d.VMID,
		"MERGEN_VM_GUEST_IP="+d.GuestIP,
		fmt.Sprintf("MERGEN_VM_HTTP_PORT=%d", d.HTTPPort),
		"MERGEN_VM_TAGS="+string(tags),
		"MERGEN_VM_PORTS="+string(ports),
	)
	for k, v := range h.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return runCmd(ctx, cmd, h.timeout())
}

// Redacted replaces every header value in the hooks.json the API serves.
const Redacted = "<redacted>"

// Redact returns a stored hooks.json with every header value replaced by
// Redacted; header names and everything else are kept. The file on disk
// keeps the real values, which the hooks need. The result is indented as
// the manager writes hooks.json.
func Redact(b []byte) ([]byte, error) {
	if t := bytes.TrimSpace(b); len(t) == 0 || string(t) == "null" {
		return b, nil
	}
	// No validation: a stored record is served as it is, less the secrets.
	var s Set
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("redact hooks.json: %w", err)
	}
	for _, list := range []*[]Hook{&s.OnCreate, &s.OnStart, &s.OnStop, &s.OnDelete} {
		for i := range *list {
			h := &(*list)[i]
			if h.Headers == nil {
				continue
			}
			redacted := make(map[string]string, len(h.Headers))
			for k := range h.Headers {
				redacted[k] = Redacted
			}
			h.Headers = redacted
		}
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // "<redacted>", not "\u003credacted\u003e"
	if err := enc.Encode(s); err != nil {
		return nil, fmt.Errorf("redact hooks.json: %w", err)
	}
	return out.Bytes(), nil
}
