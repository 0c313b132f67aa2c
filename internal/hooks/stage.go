package hooks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/layout"
)

// Lifecycle stage extensions. For each extensible stage, hooks come from
// two places and run in this order, each waited for before the next starts:
//
//  1. the host-wide env list MGN_LIFECYCLE_<STAGE>_HOOKS (commands separated
//     by ';', each run with /bin/sh -c), e.g. MGN_LIFECYCLE_PRE_START_HOOKS;
//  2. the VM's lifecycle-hooks.json: {"preStart": ["shell command", ["/abs/argv", "x"]], ...}.
//
// {{vm_id}} and ${VM_ID} in a hook are replaced by the VM id (VM_ID is also
// in the hook's environment). A failing hook fails the stage. As with
// manager hooks, the error says how the hook ended, never what it printed:
// the output (at most 4 KiB) goes to the log and the event log.

// StageKeys are the extensible stages, as named in lifecycle-hooks.json.
var StageKeys = config.StageHookKeys

// StageFile is the per-VM stage hook file in the VM's config directory.
const StageFile = layout.FileLifecycleHooks

// StageHook is one stage hook: Argv run directly, or Shell via /bin/sh -c.
type StageHook struct {
	Source  string        // where it came from, for logs
	Argv    []string      // exec form
	Shell   string        // shell form
	Timeout time.Duration // 0: bounded only by the caller's context
}

func (h StageHook) String() string {
	if h.Shell != "" {
		return h.Source + ": " + h.Shell
	}
	return h.Source + ": " + strings.Join(h.Argv, " ")
}

func validKey(key string) bool {
	for _, k := range StageKeys {
		if k == key {
			return true
		}
	}
	return false
}

// StageHooks collects the hooks of one stage key for a VM: first the
// host's env list (config.StageHooks, from MGN_LIFECYCLE_<STAGE>_HOOKS),
// then the VM's lifecycle-hooks.json at file. Each gets the host's hook
// timeout.
func StageHooks(file, key string, host config.StageHooks) ([]StageHook, error) {
	if !validKey(key) {
		return nil, fmt.Errorf("stage hooks: unknown stage %q (want one of %s)", key, strings.Join(StageKeys, ", "))
	}
	var out []StageHook
	name := config.StageHookVar(key)
	for i, cmd := range strings.Split(host.Commands[key], ";") {
		if cmd = strings.TrimSpace(cmd); cmd != "" {
			out = append(out, StageHook{Source: fmt.Sprintf("%s[%d]", name, i), Shell: cmd, Timeout: host.Timeout})
		}
	}
	fileHooks, err := loadStageFile(file)
	if err != nil {
		return nil, err
	}
	for i, raw := range fileHooks[key] {
		h, err := parseStageHook(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %s[%d]: %w", StageFile, key, i, err)
		}
		h.Source = fmt.Sprintf("%s %s[%d]", StageFile, key, i)
		h.Timeout = host.Timeout
		out = append(out, h)
	}
	return out, nil
}

func loadStageFile(path string) (map[string][]json.RawMessage, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", StageFile, err)
	}
	var m map[string][]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", StageFile, err)
	}
	for k := range m {
		if !validKey(k) {
			return nil, fmt.Errorf("%s: unknown stage %q (want one of %s)", StageFile, k, strings.Join(StageKeys, ", "))
		}
	}
	return m, nil
}

func parseStageHook(raw json.RawMessage) (StageHook, error) {
	var shell string
	if err := json.Unmarshal(raw, &shell); err == nil {
		if strings.TrimSpace(shell) == "" {
			return StageHook{}, errors.New("empty command")
		}
		return StageHook{Shell: shell}, nil
	}
	var argv []string
	if err := json.Unmarshal(raw, &argv); err != nil {
		return StageHook{}, errors.New("want a shell command string or an argv array of strings")
	}
	if len(argv) == 0 || !filepath.IsAbs(argv[0]) {
		return StageHook{}, errors.New("argv form needs an absolute program path first")
	}
	return StageHook{Argv: argv}, nil
}

func substitute(s, id string) string {
	return strings.NewReplacer("{{vm_id}}", id, "${VM_ID}", id).Replace(s)
}

// RunStage runs the hooks in order, each waited for, and appends one record
// per hook to the event log (when eventLog is not empty).
func RunStage(ctx context.Context, log *slog.Logger, vmID, key string, list []StageHook, eventLog string) error {
	for _, h := range list {
		t0 := time.Now()
		output, err := runStageHook(ctx, h, vmID, key)
		rec := Record{Time: t0.UTC(), VMID: vmID, Stage: key, Hook: h.String(), Duration: time.Since(t0), Result: "ok"}
		if err != nil {
			rec.Result, rec.Error, rec.Output = "error", err.Error(), string(output)
			log.Warn("stage hook failed", "vm", vmID, "stage", key, "hook", h.Source, "err", err, "output", string(output))
		}
		if eventLog != "" {
			if werr := AppendEvent(eventLog, rec); werr != nil {
				log.Warn("stage event log", "file", eventLog, "err", werr)
			}
		}
		if err != nil {
			return fmt.Errorf("%s hook of vm %s (%s): %w", key, vmID, h.Source, err)
		}
		log.Debug("stage hook ran", "vm", vmID, "stage", key, "hook", h.Source, "duration", rec.Duration)
	}
	return nil
}

func runStageHook(ctx context.Context, h StageHook, id, key string) ([]byte, error) {
	timeout := h.Timeout
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var cmd *exec.Cmd
	if h.Shell != "" {
		cmd = exec.CommandContext(ctx, "/bin/sh", "-c", substitute(h.Shell, id))
	} else {
		argv := make([]string, len(h.Argv))
		for i, a := range h.Argv {
			argv[i] = substitute(a, id)
		}
		cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	}
	cmd.Env = append(os.Environ(), "VM_ID="+id, "MGN_STAGE="+key)
	return runCmd(ctx, cmd, timeout)
}

// Record is one line of the stage event log (MGN_DAEMON_LOG_FILE).
type Record struct {
	Time     time.Time     `json:"time"`
	VMID     string        `json:"vmId"`
	Stage    string        `json:"stage"`
	Hook     string        `json:"hook,omitempty"`
	Result   string        `json:"result"`
	Error    string        `json:"error,omitempty"`
	Output   string        `json:"output,omitempty"` // the start of a failed hook's output
	Duration time.Duration `json:"durationNs"`
}

// AppendEvent appends one JSON line to the event log. The line goes out in
// a single write on an O_APPEND descriptor, so concurrent writers from many
// processes never interleave within a line.
func AppendEvent(path string, r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	cerr := f.Close()
	return errors.Join(werr, cerr)
}
