package proc

import (
	"os"
	"os/exec"
	"path/filepath"
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
