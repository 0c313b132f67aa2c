package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/envfile"
)

// restartDropIn is the path of the drop-in carrying a VM's restart policy
// to systemd.
func (s *systemdSupervisor) restartDropIn(id string) string {
	return filepath.Join(s.o.UnitDir, UnitName(s.o.UnitPrefix, id)+".d", "50-restart.conf")
}

// renderRestartDropIn turns a policy into unit settings; nil for no.
//
// systemd 252 (Debian 12) has no backoff: RestartSteps= and
// RestartMaxDelaySec= come with 254. They are written anyway (252 warns
// about an unknown key and ignores it), so 254 and later back off from
// RestartSec= to 60 s; 252 waits RestartSec= every time. on-failure:N is
// the start limit: N+1 starts within RestartResetAfter, after which the
// unit fails with result start-limit-hit; always and on-failure have no
// start limit.
func renderRestartDropIn(id string, p RestartPolicy, first time.Duration) []byte {
	if p.Mode == RestartNo || p.Mode == "" {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Restart policy %s of VM %s, written by mergen; removed with the VM.\n", p, id)
	b.WriteString("[Unit]\n")
	if p.Mode == RestartOnFailure && p.Max > 0 {
		fmt.Fprintf(&b, "StartLimitIntervalSec=%ds\nStartLimitBurst=%d\n", int(RestartResetAfter/time.Second), p.Max+1)
	} else {
		b.WriteString("StartLimitIntervalSec=0\n")
	}
	b.WriteString("\n[Service]\n")
	fmt.Fprintf(&b, "Restart=%s\nRestartSec=%dms\n", p.Mode, first.Milliseconds())
	fmt.Fprintf(&b, "RestartSteps=6\nRestartMaxDelaySec=%ds\n", int(max(RestartDelayMax, first)/time.Second))
	return []byte(b.String())
}

// applyRestart makes the VM's drop-in say what its env file's MGR_RESTART
// says, and reloads systemd when it changed. The env file is the one place
// both supervisors read the policy from.
func (s *systemdSupervisor) applyRestart(ctx context.Context, conn *sddbus.Conn, id string) error {
	env, err := envfile.Read(s.o.layout().VM(id).Env)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	policy, first := restartSettings(env, slog.Default())
	want := renderRestartDropIn(id, policy, first)
	path := s.restartDropIn(id)
	have, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if bytes.Equal(have, want) && (want != nil || errors.Is(err, fs.ErrNotExist)) {
		return nil
	}
	if want == nil {
		if err := removeDropIn(path); err != nil {
			return err
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := atomicfile.WriteFile(path, want, 0o644); err != nil {
			return err
		}
	}
	if err := conn.ReloadContext(ctx); err != nil {
		return fmt.Errorf("daemon-reload: %w", err)
	}
	return nil
}

// removeDropIn removes the drop-in and its directory when that is empty.
func removeDropIn(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Remove(filepath.Dir(path)); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		return err
	}
	return nil
}
