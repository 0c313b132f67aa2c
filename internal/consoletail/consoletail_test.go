package consoletail

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// An earlier run, then a boot whose payload's entrypoint is missing.
const badEntrypoint = `[    0.000000] Linux version 6.1.0 (builder@ci) (gcc 12.2.0) #1 SMP PREEMPT_DYNAMIC
mergen-init: starting (kernel uptime 0.412s)
mergen-init: payload exited with status 0
mergen-init: exit status 0
[    3.100000] reboot: Power down
[    0.000000] Linux version 6.1.0 (builder@ci) (gcc 12.2.0) #1 SMP PREEMPT_DYNAMIC
[    0.000000] Command line: console=ttyS0 reboot=k panic=1 root=/dev/vda ro
mergen-init: starting (kernel uptime 0.398s)
mergen-init: network: eth0 10.20.0.2/30 gateway 10.20.0.1
mergen-init: error: entrypoint: "/app/server" does not exist in the image or is not executable
mergen-init: exit status 127
[    0.934211] reboot: Power down
`

const panicNoRoot = "[    0.000000] Linux version 6.1.0 (builder@ci) (gcc 12.2.0) #1 SMP PREEMPT_DYNAMIC\r\n" +
	"[    1.523421] VFS: Cannot open root device \"vda\" or unknown-block(0,0): error -6\r\n" +
	"[    1.524001] Please append a correct \"root=\" boot option; here are the available partitions:\r\n" +
	"[    1.524500] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\r\n" +
	"[    1.525000] CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.1.0 #1\r\n" +
	"[    1.525900] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0) ]---\r\n"

const oom = `[    0.000000] Linux version 6.1.0 (builder@ci) (gcc 12.2.0) #1 SMP PREEMPT_DYNAMIC
mergen-init: payload started: pid 231, uid 0, gid 0, argv ["/bin/stress" "--vm" "1"]
[   25.112233] stress invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
[   25.120000] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/,task=stress,pid=231,uid=0
[   25.120500] Out of memory: Killed process 231 (stress) total-vm:270436kB, anon-rss:231936kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:500kB oom_score_adj:0
mergen-init: payload exited with status 137
mergen-init: exit status 137
`

func TestParse(t *testing.T) {
	r := Parse([]byte(badEntrypoint), 20)
	if r.InitExit != 127 || r.InitError != `entrypoint: "/app/server" does not exist in the image or is not executable` || r.PayloadExit != -1 || r.KernelPanic != "" || r.OOMKills != nil {
		t.Errorf("bad entrypoint: %+v", r)
	}
	if len(r.Lines) != 7 || !strings.Contains(r.Lines[0], "Linux version") || r.Lines[6] != "[    0.934211] reboot: Power down" {
		t.Errorf("bad entrypoint: lines %q, want the last boot's", r.Lines)
	}

	r = Parse([]byte(panicNoRoot), 3)
	if r.KernelPanic != "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)" || r.InitExit != -1 {
		t.Errorf("panic: %+v", r)
	}
	if len(r.Lines) != 3 || strings.HasSuffix(r.Lines[2], "\r") || !strings.HasPrefix(r.Lines[2], "[    1.525900] ---[ end Kernel panic") {
		t.Errorf("panic: lines %q", r.Lines)
	}

	r = Parse([]byte(oom), 20)
	if len(r.OOMKills) != 1 || !strings.HasPrefix(r.OOMKills[0], "Out of memory: Killed process 231 (stress)") || r.PayloadExit != 137 || r.InitExit != 137 {
		t.Errorf("oom: %+v", r)
	}

	// The kernel logs onto the console while mergen-init writes a line:
	// its message lands inside the line and is no part of the error.
	interleaved := strings.Replace(badEntrypoint, "not executable\n", "not executable[    2.993858] IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready\n", 1)
	r = Parse([]byte(interleaved), 20)
	if r.InitExit != 127 || r.InitError != `entrypoint: "/app/server" does not exist in the image or is not executable` {
		t.Errorf("a kernel message inside the error line: %+v", r)
	}

	if r := Parse(nil, 20); r.InitExit != -1 || r.PayloadExit != -1 || r.Lines != nil {
		t.Errorf("empty: %+v", r)
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"plain\ttab":           "plain\ttab",
		"\x1b[31mred\x1b[0m":   `\x1b[31mred\x1b[0m`,
		"bell\a and \xff byte": `bell\x07 and \xff byte`,
		"ünïcode ok":           "ünïcode ok",
		"c1 \u0085 control":    `c1 \x85 control`,
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReadAcrossRotation(t *testing.T) {
	dir := t.TempDir()
	cur, old := filepath.Join(dir, "console.log"), filepath.Join(dir, "console.log.1")
	// A panic in the rotated file and mergen-init's end in the new one: both
	// are within the window.
	if err := os.WriteFile(old, []byte(strings.Repeat("x", 2*MaxBytes)+"\n"+badEntrypoint[:strings.Index(badEntrypoint, "mergen-init: error")]), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cur, []byte(badEntrypoint[strings.Index(badEntrypoint, "mergen-init: error"):]), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Read(cur, old, 4)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"mergen-init: network: eth0 10.20.0.2/30 gateway 10.20.0.1",
		`mergen-init: error: entrypoint: "/app/server" does not exist in the image or is not executable`,
		"mergen-init: exit status 127",
		"[    0.934211] reboot: Power down",
	}
	if r.InitExit != 127 || !reflect.DeepEqual(r.Lines, want) {
		t.Errorf("Read = %+v, want lines %q", r, want)
	}

	// A log larger than the window is cut at a line's start; the rotated
	// file is not read then.
	big := strings.Repeat("filler line\n", MaxBytes/6) + "mergen-init: exit status 3\n"
	if err := os.WriteFile(cur, []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	if r, err = Read(cur, old, 2); err != nil || r.InitExit != 3 || !reflect.DeepEqual(r.Lines, []string{"filler line", "mergen-init: exit status 3"}) {
		t.Errorf("Read = %+v, %v", r, err)
	}

	if r, err = Read(filepath.Join(dir, "none"), filepath.Join(dir, "none.1"), 5); err != nil || r.Lines != nil || r.InitExit != -1 {
		t.Errorf("missing files: %+v, %v", r, err)
	}
}
