package supervisor_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/testenv/nspawn"
)

// The supervision contract against a real systemd, PID 1 of a container:
// units are installed and reloaded over D-Bus from this process, and every
// scenario runs as it does for the detached supervisor.
func TestSystemdContract(t *testing.T) {
	bin := testStages(t)
	im := implementation{root: t.TempDir(), bin: bin, name: "systemd"}
	c := nspawn.Boot(t, nspawn.Config{Binds: []string{filepath.Dir(bin), im.root}})
	c.UseBus(t)
	unitDir := filepath.Join(c.Root, "etc/systemd/system")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	s, err := supervisor.New("systemd", im.options(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if s.Name() != "systemd" {
		t.Fatalf("Name() = %q", s.Name())
	}
	// Before installation the supervisor says what is missing.
	if err := s.Check(ctx); !errors.Is(err, supervisor.ErrUnavailable) || !strings.Contains(err.Error(), "mergen@.service") {
		t.Fatalf("Check before install = %v, want unavailable naming mergen@.service", err)
	}
	if err := s.Start(ctx, "7f3e9b10-ffff-4000-8000-000000000000"); !errors.Is(err, supervisor.ErrUnavailable) {
		t.Fatalf("Start before install = %v, want unavailable", err)
	} else {
		t.Logf("Start before install: %v", err)
	}

	im.sup = func(t *testing.T, stopTimeout time.Duration) supervisor.Supervisor {
		// TimeoutStopSec lives in the unit: reinstall for each timeout.
		o := im.options(stopTimeout)
		o.UnitDir = unitDir // restart policies' drop-ins
		if err := supervisor.InstallUnits(ctx, o, unitDir); err != nil {
			t.Fatalf("InstallUnits: %v", err)
		}
		s, err := supervisor.New("systemd", o)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Check(ctx); err != nil {
			t.Fatalf("Check after install: %v", err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("journal:\n%s", c.Journal(""))
			}
		})
		return s
	}
	testContract(t, im)
	testRestart(t, im, func(policy string, delay time.Duration) []string {
		return []string{"MGR_RESTART=" + policy, "MGR_RESTART_DELAY=" + delay.String()}
	})

	// systemctl, the operator's view, agrees.
	s = im.sup(t, 5*time.Second)
	f := im.vm(t, s)
	if err := s.Start(ctx, f.id); err != nil {
		t.Fatal(err)
	}
	unit := "mergen@" + f.id + ".service"
	if out, err := c.Exec(ctx, "systemctl", "is-active", unit); err != nil || strings.TrimSpace(string(out)) != "active" {
		t.Fatalf("systemctl is-active %s = %q, %v", unit, out, err)
	}
}
