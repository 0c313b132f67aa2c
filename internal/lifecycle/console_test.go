package lifecycle

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/store"
)

// TestMain lets the test binary stand in for mergen-lifecycle when the start
// stage runs it as the console copier (os.Executable is the test binary).
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == ConsoleLogStage {
		signal.Ignore(os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		cfg, err := config.Load()
		if err == nil {
			err = CopyConsole(cfg, os.Args[2], os.Stdin, os.Stderr)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// pattern is n bytes that differ from one position to the next, so any
// lost, doubled or reordered byte shows.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = "0123456789abcdefghijklmnopqrstuvwxyz\n"[(i*7+i/37)%37]
	}
	return b
}

// copyThroughPipe writes data through a real pipe, in chunks of the given
// size, to ConsoleLog.Copy, and returns Copy's result once the write end is
// closed: Copy must end on its own at end of file.
func copyThroughPipe(t *testing.T, c *ConsoleLog, data []byte, chunk int) error {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		defer pr.Close()
		done <- c.Copy(pr)
	}()
	for len(data) > 0 {
		n := min(chunk, len(data))
		if _, err := pw.Write(data[:n]); err != nil {
			t.Fatal(err)
		}
		data = data[n:]
	}
	pw.Close()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Copy did not return after end of file")
		return nil
	}
}

func readOr(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConsoleLogKeepsEverythingUpToTheLimit(t *testing.T) {
	dir := t.TempDir()
	c := &ConsoleLog{Path: filepath.Join(dir, "console.log"), Old: filepath.Join(dir, "console.log.1"), Max: 64 << 10}
	data := pattern(64 << 10)
	if err := copyThroughPipe(t, c, data, 4093); err != nil {
		t.Fatal(err)
	}
	if got := readOr(t, c.Path); !bytes.Equal(got, data) {
		t.Fatalf("console.log holds %d bytes, want the %d written, unchanged", len(got), len(data))
	}
	if _, err := os.Stat(c.Old); !os.IsNotExist(err) {
		t.Fatalf("rotated before the limit (%v)", err)
	}
	if st, _ := os.Stat(c.Path); st.Mode().Perm() != 0o600 {
		t.Errorf("console.log mode %v, want 0600", st.Mode().Perm())
	}
}

func TestConsoleLogRotatesAtTheLimit(t *testing.T) {
	const max = 64 << 10
	for _, tc := range []struct {
		name     string
		existing int // bytes already in console.log (an earlier boot)
		written  int
	}{
		{"one byte past", 0, max + 1},
		{"several rotations", 0, 3*max + 123},
		{"an earlier boot's output counts", max - 10, 20},
		{"an earlier boot filled the log", max, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := &ConsoleLog{Path: filepath.Join(dir, "console.log"), Old: filepath.Join(dir, "console.log.1"), Max: max}
			all := pattern(tc.existing + tc.written)
			if err := os.WriteFile(c.Path, all[:tc.existing], 0o600); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(c.Old, []byte("the oldest output, dropped\n"), 0o600)
			if err := copyThroughPipe(t, c, all[tc.existing:], 1000); err != nil {
				t.Fatal(err)
			}
			cur, old := readOr(t, c.Path), readOr(t, c.Old)
			// Files fill to exactly Max before the next byte goes to a
			// new one: the current file holds what came after the last
			// multiple of Max, the old one the Max bytes before.
			total := len(all)
			curLen := total % max
			if curLen == 0 {
				curLen = max
			}
			if !bytes.Equal(cur, all[total-curLen:]) {
				t.Errorf("console.log: %d bytes, want the last %d written", len(cur), curLen)
			}
			if !bytes.Equal(old, all[total-curLen-max:total-curLen]) {
				t.Errorf("console.log.1: %d bytes, want the %d before console.log's", len(old), max)
			}
		})
	}
}

// A log that cannot be written does not stop the copier from draining its
// pipe (a VMM blocked on its console would stop the guest): it says so
// once and goes on until end of file.
func TestConsoleLogDrainsWhenTheLogCannotBeWritten(t *testing.T) {
	dir := t.TempDir()
	var warn bytes.Buffer
	c := &ConsoleLog{Path: filepath.Join(dir, "gone", "console.log"), Old: filepath.Join(dir, "gone", "console.log.1"), Max: 64 << 10, Warn: &warn}
	if err := copyThroughPipe(t, c, pattern(1<<20), 8192); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(warn.String(), "no such file"); n != 1 {
		t.Errorf("warned %d times, want once:\n%s", n, warn.String())
	}
}

// The start stage's copier for real: the test binary run as the hidden
// console-log command, fed through the pipe the VMM would write to. It
// ignores SIGTERM (a stop aimed at the VM), rotates at
// MGR_CONSOLE_LOG_MAX_BYTES, and exits by itself when the pipe closes.
func TestStartStageConsoleCopierRotatesAndExitsAtEndOfFile(t *testing.T) {
	d := t.TempDir()
	const max = 64 << 10
	for k, v := range map[string]string{"MGR_CONFIG_ROOT": d + "/vm.d", "MGR_RUN_ROOT": d + "/run", "MGR_DATA_ROOT": d + "/data",
		"MGR_CONSOLE_LOG_MAX_BYTES": fmt.Sprint(max)} {
		t.Setenv(k, v)
	}
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(cfg.Layout())
	if err != nil {
		t.Fatal(err)
	}
	r := &Runner{Config: cfg, Store: st, Log: slog.New(slog.DiscardHandler)}
	id := store.NewID()
	p := st.Paths(id)
	if err := os.MkdirAll(p.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	pw, copier, err := r.startConsoleLog(id)
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan *os.ProcessState, 1)
	go func() {
		ps, _ := copier.Wait()
		exited <- ps
	}()
	data := pattern(2*max + 4321)
	half := len(data) / 2
	if _, err := pw.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	if err := copier.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := pw.Write(data[half:]); err != nil {
		t.Fatalf("the copier stopped reading after SIGTERM: %v", err)
	}
	pw.Close()
	select {
	case ps := <-exited:
		if ps == nil || !ps.Success() {
			t.Fatalf("copier ended with %v", ps)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the copier did not exit at end of file")
	}
	cur, old := readOr(t, p.ConsoleLog), readOr(t, p.ConsoleLogOld)
	if !bytes.Equal(cur, data[2*max:]) || !bytes.Equal(old, data[max:2*max]) {
		t.Fatalf("console.log %d bytes, console.log.1 %d bytes; want the last %d and the %d before", len(cur), len(old), len(data)-2*max, max)
	}
}
