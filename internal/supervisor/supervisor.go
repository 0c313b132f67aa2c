// Package supervisor keeps each VM's lifecycle under a service manager so
// that the VM outlives the daemon that asked for it.
//
// A VM's stages are run by the lifecycle program (`mergen-lifecycle <stage>
// <id>`): pre-start, start (the long-running main process, which execs the
// VMM), post-start, stop, post-stop and on-failure. A Supervisor only
// orchestrates those stages, the way a systemd service unit does:
//
//   - systemd drives the template unit <prefix>@<id>.service over D-Bus; the
//     unit's OnFailure= starts <prefix>-failure@<id>.service.
//   - detached runs the same sequence in a supervising process of its own
//     session (`<lifecycle> supervise <id>`), which is not the daemon's child
//     to wait on, survives the daemon's death and is re-adopted through its
//     pid file.
//
// Both report State in systemd's vocabulary (ActiveState, SubState, MainPID)
// so callers need not care which one runs a VM.
package supervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/envfile"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/layout"
)

// ErrUnavailable marks errors saying that a supervisor cannot work on this
// host (no service manager, no lifecycle binary, units not installed). It is
// the project's error class, so the API answers such errors with 503.
var ErrUnavailable = errdefs.ErrUnavailable

// State is what the service manager knows about one VM's unit.
type State struct {
	Available   bool   `json:"available"`   // the service manager answers
	Unit        string `json:"unit"`        // <prefix>@<id>.service (also for detached, for uniformity)
	Active      bool   `json:"active"`      // ActiveState == "active"
	ActiveState string `json:"activeState"` // active|inactive|failed|activating|deactivating
	SubState    string `json:"subState"`    // e.g. running, dead, failed, start-pre, stop
	MainPID     int    `json:"mainPID"`     // the start stage's process (the VMM), 0 when not running
	Restarts    int    `json:"restarts"`    // automatic restarts under the VM's restart policy (systemd's NRestarts)
}

// Exit is how the main process (the VMM) of a VM's last run ended, in
// systemd's words. The zero Exit means the VM has not ended a run (it never
// ran, or it runs now) or the service manager does not remember it: systemd
// unloads a unit that stopped cleanly, and forgets its run with it; a failed
// unit stays until the VM is deleted.
type Exit struct {
	// Result is the unit's: success, exit-code, signal, core-dump, timeout.
	Result string `json:"result,omitempty"`
	// Code is systemd's EXIT_CODE: exited, killed or dumped; empty when the
	// main process's end is not known (it never started).
	Code string `json:"code,omitempty"`
	// Status is the exit status when Code is exited.
	Status int `json:"status,omitempty"`
	// Signal names the signal (KILL, TERM, SEGV, …) when Code is killed or
	// dumped.
	Signal string `json:"signal,omitempty"`
	// At is when the main process ended (or the unit, when the main process
	// never started); zero when not known.
	At time.Time `json:"at,omitzero"`
	// Restarts are the automatic restarts under the VM's restart policy
	// before this end; GaveUp says the policy then gave up (on-failure:N
	// had made its N restarts). Result stays the last run's.
	Restarts int  `json:"restarts,omitempty"`
	GaveUp   bool `json:"gaveUp,omitempty"`
}

// Supervisor runs VMs' lifecycle stages under a service manager.
type Supervisor interface {
	// Name is "systemd" or "detached".
	Name() string
	// Check says why this supervisor cannot work here (wrapping ErrUnavailable).
	Check(ctx context.Context) error
	// Start is idempotent; it returns once the start stages completed
	// (post-start done) or failed.
	Start(ctx context.Context, id string) error
	// Stop is idempotent; it returns once the VM's unit is stopped.
	Stop(ctx context.Context, id string) error
	// State reports the unit's state. When the service manager does not
	// answer, it returns a State with Available false and an error wrapping
	// ErrUnavailable.
	State(ctx context.Context, id string) (State, error)
	// States reports the state of every VM in ids at once, as State would
	// for each, without a round trip per VM: one query of the service
	// manager (systemd), one read of each VM's state file (detached). A VM
	// whose state is unknown (the service manager does not answer, its
	// record cannot be read) is reported with Available false, and the
	// error says why.
	States(ctx context.Context, ids []string) (map[string]State, error)
	// Unstarted is what State reports of a VM whose unit has not been
	// started since the VM was created, without asking the service
	// manager: a create's answer describes the VM as created. Available
	// says whether the service manager answered when it was last asked.
	Unstarted(id string) State
	// LastExit reports how the VM's last run ended: the unit's result and
	// the main process's exit status or signal. It costs more than State
	// (systemd: one more D-Bus call), so lists do not ask for it.
	LastExit(ctx context.Context, id string) (Exit, error)
	// Forget drops what the service manager remembers about a deleted VM
	// (failed state, pid and state files).
	Forget(ctx context.Context, id string) error
}

// Options configure both supervisors. Zero values take the host
// configuration's defaults (internal/config), except LifecycleBin.
type Options struct {
	UnitPrefix   string        // MGR_UNIT_PREFIX
	LifecycleBin string        // the lifecycle program: an absolute path, or a name looked up in PATH
	RunRoot      string        // MGR_RUN_ROOT: the detached supervisor's files live in the layout's run directory of each VM
	ConfigRoot   string        // MGR_CONFIG_ROOT: the layout's env file of each VM is the stages' environment file
	StopTimeout  time.Duration // MGR_STOP_TIMEOUT_SECONDS: how long stop may take before the VMM is killed
	Env          []string      // KEY=VALUE given to every stage (config.StageEnv)
	// UnitDir is where the systemd supervisor writes a VM's drop-ins (its
	// restart policy); DefaultUnitDir when empty.
	UnitDir string
}

// OptionsFrom derives the supervisor's options from the host configuration.
func OptionsFrom(c config.Config) Options {
	return Options{
		UnitPrefix:   c.UnitPrefix,
		LifecycleBin: c.LifecycleBin,
		RunRoot:      c.RunRoot,
		ConfigRoot:   c.ConfigRoot,
		StopTimeout:  c.StopTimeout,
		Env:          c.StageEnv(),
	}
}

// Defaults not in the host configuration.
const (
	DefaultLifecycleBin = "/usr/local/bin/mergen-lifecycle"
	DefaultUnitDir      = "/etc/systemd/system"
)

func (o Options) layout() layout.Layout {
	return layout.Layout{ConfigRoot: o.ConfigRoot, RunRoot: o.RunRoot}
}

// selfEnv is what a supervising process needs to rebuild these options.
func (o Options) selfEnv() []string {
	return []string{
		"MGR_RUN_ROOT=" + o.RunRoot,
		"MGR_CONFIG_ROOT=" + o.ConfigRoot,
		"MGR_UNIT_PREFIX=" + o.UnitPrefix,
		"MGR_LIFECYCLE_BIN=" + o.LifecycleBin,
		"MGR_STOP_TIMEOUT_SECONDS=" + strconv.FormatInt(int64((o.StopTimeout+time.Second-1)/time.Second), 10),
	}
}

// withDefaults fills zero fields and validates the result. It does not look
// at the file system: a unit may be rendered for another root.
func (o Options) withDefaults() (Options, error) {
	def, _ := config.FromEnv(nil) // the defaults table
	if o.UnitPrefix == "" {
		o.UnitPrefix = def.UnitPrefix
	}
	if o.LifecycleBin == "" {
		o.LifecycleBin = DefaultLifecycleBin
	}
	if !strings.Contains(o.LifecycleBin, "/") {
		// A bare name is looked up once, here: unit files and the detached
		// supervisor's pid checks want the absolute path.
		p, err := exec.LookPath(o.LifecycleBin)
		if err != nil {
			return o, fmt.Errorf("supervisor options: LifecycleBin %q: %w", o.LifecycleBin, err)
		}
		if p, err = filepath.Abs(p); err == nil {
			o.LifecycleBin = p
		}
	}
	if o.RunRoot == "" {
		o.RunRoot = def.RunRoot
	}
	if o.ConfigRoot == "" {
		o.ConfigRoot = def.ConfigRoot
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = def.StopTimeout
	}
	if o.UnitDir == "" {
		o.UnitDir = DefaultUnitDir
	}
	if len(o.UnitPrefix) > 64 || !unitPrefixRe.MatchString(o.UnitPrefix) {
		return o, fmt.Errorf("supervisor options: UnitPrefix %q: want letters, digits, '-', '_', '.' only", o.UnitPrefix)
	}
	for _, p := range []struct{ field, path string }{
		{"LifecycleBin", o.LifecycleBin}, {"RunRoot", o.RunRoot}, {"ConfigRoot", o.ConfigRoot},
	} {
		if !filepath.IsAbs(p.path) {
			return o, fmt.Errorf("supervisor options: %s %q is not an absolute path", p.field, p.path)
		}
		// Paths end up unquoted on unit file lines, where blanks, quotes,
		// '%' (specifiers) and '$' (variables) would change their meaning.
		if !unitPathRe.MatchString(p.path) {
			return o, fmt.Errorf("supervisor options: %s %q: only letters, digits and /._+-@: are allowed", p.field, p.path)
		}
	}
	if o.StopTimeout < time.Second {
		return o, fmt.Errorf("supervisor options: StopTimeout %s is below one second", o.StopTimeout)
	}
	for _, kv := range o.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || !envfile.ValidKey(k) {
			return o, fmt.Errorf("supervisor options: Env entry %q is not KEY=VALUE", kv)
		}
		if strings.ContainsAny(kv, "\n\r\x00") {
			return o, fmt.Errorf("supervisor options: Env entry for %s contains a control character", k)
		}
	}
	return o, nil
}

var (
	// At most 64 bytes.
	// A repetition with a bound ({1,64}) compiles to a copy of its
	// class per repetition, kept for the program's life (20 KB and more
	// per expression): the length is checked apart.
	unitPrefixRe = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	unitPathRe   = regexp.MustCompile(`^[A-Za-z0-9/._+@:-]+$`)
)

func checkID(op, id string) error {
	if !validID(id) {
		return fmt.Errorf("%s vm %q: invalid id: want letters, digits, '-', '_', '.'", op, id)
	}
	return nil
}

// validID reports whether id is safe both as a systemd instance name and
// as a single path element (VM ids are UUIDs): a letter or digit, then at
// most 127 letters, digits, '_', '.' or '-', and no "..". A loop, not a
// regular expression: a list checks every VM's id.
func validID(id string) bool {
	if len(id) == 0 || len(id) > 128 || strings.Contains(id, "..") {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '_' || c == '.' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// UnitName is the service unit of VM id: <prefix>@<id>.service.
func UnitName(prefix, id string) string { return prefix + "@" + id + ".service" }

// FailureUnitName is the unit started by OnFailure=: <prefix>-failure@<id>.service.
func FailureUnitName(prefix, id string) string { return prefix + "-failure@" + id + ".service" }

// New returns the supervisor called name: "systemd", "detached", or "" for
// automatic choice (MGR_SUPERVISOR unset): systemd when PID 1 is systemd
// (/run/systemd/system exists), else detached.
func New(name string, o Options) (Supervisor, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if name == "" {
		name = Detect()
	}
	switch name {
	case "systemd":
		return newSystemd(o), nil
	case "detached":
		return newDetached(o), nil
	default:
		return nil, fmt.Errorf("supervisor: unknown supervisor %q (want systemd, detached, or empty for automatic)", name)
	}
}

// Detect names the supervisor that fits this host: "systemd" when PID 1 is
// systemd, else "detached".
func Detect() string {
	// sd_booted(3)'s test: this directory exists only when systemd is PID 1.
	if fi, err := os.Stat("/run/systemd/system"); err == nil && fi.IsDir() {
		return "systemd"
	}
	return "detached"
}
