package proc

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestAProcessIsAliveOnlyWithItsOwnStartTime(t *testing.T) {
	self := Self()
	if self.Start == 0 || !self.Alive() {
		t.Fatalf("Self() = %+v, alive %v", self, self.Alive())
	}
	if (Process{PID: self.PID, Start: self.Start + 1}).Alive() {
		t.Error("a pid with another start time (a recycled pid) counts as alive")
	}
	if (Process{PID: self.PID}).Alive() != true {
		t.Error("a pid of unknown start time (an old pid file) does not count as alive")
	}
	if (Process{}).Alive() {
		t.Error("the zero Process is alive")
	}
}

func TestAZombieIsNotAlive(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p, _ := Of(cmd.Process.Pid) // may race with the exit; the state below decides
	// Not waited for yet: once it exits it is a zombie until reaped. Poll
	// the observable state rather than sleep.
	for State(cmd.Process.Pid) != 'Z' {
	}
	if (Process{PID: cmd.Process.Pid, Start: p.Start}).Alive() {
		t.Error("a zombie counts as alive")
	}
	cmd.Wait()
}

func TestPIDFilesRoundTripAndReadTheOldForm(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vmm.pid")
	want := Process{PID: 4242, Start: 987654}
	if err := WritePIDFile(path, want); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadPIDFile(path); err != nil || got != want {
		t.Fatalf("ReadPIDFile = %+v, %v; want %+v", got, err, want)
	}
	os.WriteFile(path, []byte("4242\n"), 0o600)
	if got, err := ReadPIDFile(path); err != nil || got != (Process{PID: 4242}) {
		t.Fatalf("old form: %+v, %v", got, err)
	}
	if got, err := ReadPIDFile(filepath.Join(dir, "missing")); err != nil || got != (Process{}) {
		t.Fatalf("missing file: %+v, %v", got, err)
	}
	os.WriteFile(path, []byte("nope\n"), 0o600)
	if _, err := ReadPIDFile(path); err == nil {
		t.Fatal("a garbage pid file was accepted")
	}
}

// A process's usage is read from /proc: this test's own has spent some
// CPU and holds some memory; a pid that does not exist is an error.
func TestUsageOfThisProcess(t *testing.T) {
	for i := 0; i < 1e6; i++ { // some CPU time to count
		_ = i * i
	}
	u, err := UsageOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.RSSBytes < 1<<20 || u.CPUSeconds() < 0 {
		t.Fatalf("usage %+v", u)
	}
	if _, err := UsageOf(1 << 30); err == nil {
		t.Fatal("usage of a pid that does not exist")
	}
}

// /proc/<pid>/stat is read past a command name holding spaces and
// parentheses, and a field that does not parse is an error naming it,
// never a zero taken for a measurement.
func TestStatFieldsAreReadOrNamedAsUnreadable(t *testing.T) {
	line := func(utime, rss string) []byte {
		// Fields 3 to 24: state, then 10 others, utime, stime, 6 more,
		// the start time, vsize, rss.
		return []byte("42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 " + utime + " 7 0 0 20 0 1 0 123456 1000000 " + rss + " 18446744073709551615\n")
	}
	st, err := parseStat(42, line("5", "300"))
	if err != nil {
		t.Fatal(err)
	}
	if st.state != 'S' || st.user != 5 || st.system != 7 || st.start != 123456 || st.rssPages != 300 {
		t.Fatalf("parsed %+v; want state S, user 5, system 7, start 123456, rss 300 pages", st)
	}
	for _, tc := range []struct{ utime, rss, want string }{
		{"x5", "300", "user time"},
		{"5", "-", "resident size"},
	} {
		if _, err := parseStat(42, line(tc.utime, tc.rss)); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "/proc/42/stat") {
			t.Errorf("utime %q, rss %q: %v; want an error naming %s in /proc/42/stat", tc.utime, tc.rss, err, tc.want)
		}
	}
}
