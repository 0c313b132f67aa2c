package supervisor_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/testenv"
)

// The unit files shipped in deploy/systemd/ are exactly what InstallUnits
// writes on a host with the default paths. Regenerate them with
// MERGEN_UPDATE_UNITS=1 go test -run TestDeployUnitsAreRenderedDefaults.
func TestDeployUnitsAreRenderedDefaults(t *testing.T) {
	units, err := supervisor.RenderUnits(supervisor.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(testenv.RepoRoot(t), "deploy", "systemd")
	for _, u := range units {
		path := filepath.Join(dir, u.Name)
		if os.Getenv("MERGEN_UPDATE_UNITS") == "1" {
			if err := os.WriteFile(path, u.Content, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(u.Content) {
			t.Errorf("%s differs from the rendered defaults:\n--- file\n%s\n--- rendered\n%s", path, got, u.Content)
		}
	}
}

func TestRenderUnits(t *testing.T) {
	units, err := supervisor.RenderUnits(supervisor.Options{
		UnitPrefix:   "mvm",
		LifecycleBin: "/opt/mergen/bin/mergen-lifecycle",
		RunRoot:      "/run/mvm",
		ConfigRoot:   "/srv/mvm/vm.d",
		StopTimeout:  2500 * time.Millisecond,
		Env:          []string{`GREETING=say "hi" 100% \o/`},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(units) != 2 || units[0].Name != "mvm@.service" || units[1].Name != "mvm-failure@.service" {
		t.Fatalf("units = %v", units)
	}
	service, failure := string(units[0].Content), string(units[1].Content)
	for _, want := range []string{
		"OnFailure=mvm-failure@%i.service\n",
		"Type=exec\n",
		"EnvironmentFile=-/srv/mvm/vm.d/%i/env\n",
		`Environment="MGR_CONFIG_ROOT=/srv/mvm/vm.d"` + "\n",
		`Environment="MGR_RUN_ROOT=/run/mvm"` + "\n",
		`Environment="MGR_UNIT_PREFIX=mvm"` + "\n",
		// Quotes and backslashes escaped, '%' doubled so systemd does not
		// read a specifier.
		`Environment="GREETING=say \"hi\" 100%% \\o/"` + "\n",
		"ExecStartPre=/opt/mergen/bin/mergen-lifecycle pre-start %i\n",
		"ExecStart=/opt/mergen/bin/mergen-lifecycle start %i\n",
		"ExecStartPost=/opt/mergen/bin/mergen-lifecycle post-start %i\n",
		"ExecStop=/opt/mergen/bin/mergen-lifecycle stop %i\n",
		"ExecStopPost=/opt/mergen/bin/mergen-lifecycle post-stop %i\n",
		"KillMode=mixed\n",
		"TimeoutStopSec=3\n", // rounded up to whole seconds
	} {
		if !strings.Contains(service, want) {
			t.Errorf("service unit lacks %q:\n%s", want, service)
		}
	}
	for _, want := range []string{
		"Type=oneshot\n",
		"EnvironmentFile=-/srv/mvm/vm.d/%i/env\n",
		"ExecStart=/opt/mergen/bin/mergen-lifecycle on-failure %i\n",
	} {
		if !strings.Contains(failure, want) {
			t.Errorf("failure unit lacks %q:\n%s", want, failure)
		}
	}
}

// Bad options are refused with the field named, before anything is
// rendered or started.
func TestOptionsAreValidated(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    supervisor.Options
		want string
	}{
		{"prefix with @", supervisor.Options{UnitPrefix: "a@b"}, "UnitPrefix"},
		{"prefix with slash", supervisor.Options{UnitPrefix: "a/b"}, "UnitPrefix"},
		{"prefix of 65 bytes", supervisor.Options{UnitPrefix: strings.Repeat("a", 65)}, "UnitPrefix"},
		{"relative lifecycle", supervisor.Options{LifecycleBin: "bin/mergen-lifecycle"}, "LifecycleBin"},
		{"lifecycle not in PATH", supervisor.Options{LifecycleBin: "mergen-no-such-program"}, "LifecycleBin"},
		{"blank in run root", supervisor.Options{RunRoot: "/run/my mergen"}, "RunRoot"},
		{"specifier in config root", supervisor.Options{ConfigRoot: "/var/lib/%i"}, "ConfigRoot"},
		{"short stop timeout", supervisor.Options{StopTimeout: time.Millisecond}, "StopTimeout"},
		{"env without =", supervisor.Options{Env: []string{"JUSTAKEY"}}, "Env"},
		{"env with newline", supervisor.Options{Env: []string{"A=1\nExecStart=/bin/evil"}}, "Env"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := supervisor.RenderUnits(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("RenderUnits error = %v, want one naming %s", err, tc.want)
			}
			if _, err := supervisor.New("detached", tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New error = %v, want one naming %s", err, tc.want)
			}
		})
	}
}

func TestNewPicksSupervisor(t *testing.T) {
	for _, tc := range []struct {
		name, want, err string
	}{
		{name: "systemd", want: "systemd"},
		{name: "detached", want: "detached"},
		// The name comes from MGR_SUPERVISOR through internal/config, which
		// validates it; empty means automatic.
		{name: "", want: supervisor.Detect()},
		{name: "launchd", err: `unknown supervisor "launchd"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := supervisor.New(tc.name, supervisor.Options{})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("New(%q) error = %v, want %q", tc.name, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Name() != tc.want {
				t.Fatalf("New(%q) = %s, want %s", tc.name, s.Name(), tc.want)
			}
		})
	}
}

// Ids end up in unit names and paths: anything else than a plain name is
// refused by every operation.
func TestBadIDsAreRefused(t *testing.T) {
	s, err := supervisor.New("detached", supervisor.Options{RunRoot: t.TempDir(), LifecycleBin: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "../etc", "a/b", "a b", "-rf", "x@y"} {
		if err := s.Start(t.Context(), id); err == nil || !strings.Contains(err.Error(), "invalid id") {
			t.Errorf("Start(%q) = %v, want invalid id", id, err)
		}
		if err := s.Stop(t.Context(), id); err == nil {
			t.Errorf("Stop(%q) succeeded", id)
		}
		if _, err := s.State(t.Context(), id); err == nil {
			t.Errorf("State(%q) succeeded", id)
		}
		if err := s.Forget(t.Context(), id); err == nil {
			t.Errorf("Forget(%q) succeeded", id)
		}
	}
}

// A bare lifecycle name is resolved in PATH once, so that units and pid
// checks see an absolute path.
func TestLifecycleBinLookedUpInPath(t *testing.T) {
	units, err := supervisor.RenderUnits(supervisor.Options{LifecycleBin: "sh"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(units[0].Content), "\nExecStart=/") {
		t.Fatalf("ExecStart is not an absolute path:\n%s", units[0].Content)
	}
}

func TestDetachedCheckNamesMissingLifecycle(t *testing.T) {
	s, err := supervisor.New("detached", supervisor.Options{RunRoot: t.TempDir(), LifecycleBin: "/nonexistent/mergen-lifecycle"})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Check(t.Context())
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/mergen-lifecycle") {
		t.Fatalf("Check = %v, want an error naming the binary", err)
	}
	if err := s.Start(t.Context(), "vm1"); err == nil {
		t.Fatal("Start succeeded without a lifecycle binary")
	}
}

// InstallUnits refuses to install units that could not work, and writes
// nothing then.
func TestInstallUnitsRefusals(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(t.TempDir(), "plain-file")
	if err := os.WriteFile(plain, []byte("not a program\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		o    supervisor.Options
		bus  string
		want string
	}{
		{"missing lifecycle binary", supervisor.Options{LifecycleBin: "/nonexistent/mergen-lifecycle"}, "", "/nonexistent/mergen-lifecycle"},
		{"not executable", supervisor.Options{LifecycleBin: plain}, "", "not an executable"},
		// A bus socket path where nothing listens: systemd does not answer.
		{"no systemd", supervisor.Options{LifecycleBin: exe}, "unix:path=" + filepath.Join(t.TempDir(), "no-bus"), "D-Bus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.bus != "" {
				t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", tc.bus)
			}
			dir := t.TempDir()
			err := supervisor.InstallUnits(t.Context(), tc.o, dir)
			if !errors.Is(err, supervisor.ErrUnavailable) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("InstallUnits = %v, want unavailable mentioning %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("InstallUnits left %d files in %s", len(entries), dir)
			}
		})
	}
}
