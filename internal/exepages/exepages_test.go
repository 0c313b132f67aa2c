package exepages

import (
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// An excerpt of /proc/PID/smaps: the executable (device fd:01, inode 42)
// as a static Go binary maps it, plus a relocated read-only segment of the
// same file, a writable one, and another file's text.
const smaps = `00400000-00f9d000 r-xp 00000000 fd:01 42                                 /usr/bin/mergen
Size:              12148 kB
Rss:                8240 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
00f9d000-01b16000 r--p 00b9d000 fd:01 42                                 /usr/bin/mergen
Size:              11748 kB
Rss:                9060 kB
Anonymous:             0 kB
01b16000-01b17000 r--p 01716000 fd:01 42                                 /usr/bin/mergen
Size:                  4 kB
Rss:                   4 kB
Anonymous:             4 kB
01b17000-01b2f000 rw-p 01717000 fd:01 42                                 /usr/bin/mergen
Size:                 96 kB
Rss:                  96 kB
Anonymous:            40 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 43                         /usr/lib/libc.so.6
Size:               1024 kB
Rss:                1024 kB
Anonymous:             0 kB
7f0000100000-7f0000200000 r-xp 00000000 fd:02 42                         /other/fs/same-inode
Size:               1024 kB
Rss:                1024 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  20 kB
Anonymous:            20 kB
`

func TestReleasableIsTheExecutablesUnwritableMappingsWithoutPrivateCopies(t *testing.T) {
	got, err := Releasable([]byte(smaps), unix.Mkdev(0xfd, 0x01), 42)
	if err != nil {
		t.Fatal(err)
	}
	want := []Span{{0x400000, 0xf9d000, 8240}, {0xf9d000, 0x1b16000, 9060}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("span %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestReleasableLeavesAMappingWithoutAnAnonymousCountAlone(t *testing.T) {
	in := "00400000-00401000 r-xp 00000000 fd:01 42 /usr/bin/mergen\nRss: 4 kB\n"
	got, err := Releasable([]byte(in), unix.Mkdev(0xfd, 0x01), 42)
	if err != nil || len(got) != 0 {
		t.Fatalf("got %+v, %v; want none", got, err)
	}
}

func TestReleasableRejectsAMalformedMapping(t *testing.T) {
	for _, in := range []string{
		"zz-00401000 r-xp 00000000 fd:01 42 /x\n",
		"00401000-00400000 r-xp 00000000 fd:01 42 /x\n",
		"00400000-00401000 r-xp 00000000 fd01 42 /x\n",
		"00400000-00401000 r-xp\n",
	} {
		if _, err := Releasable([]byte(in), unix.Mkdev(0xfd, 0x01), 42); err == nil {
			t.Errorf("%q: accepted", in)
		}
	}
}

// The test binary's own executable pages: resident after start, fewer
// after Release, and the program runs on (its code faults back in).
func TestReleaseDropsTheExecutablesResidentPagesAndTheProgramRunsOn(t *testing.T) {
	before := exeRssKiB(t)
	if before == 0 {
		t.Fatal("no resident page of the executable before Release")
	}
	kib, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	after := exeRssKiB(t)
	if kib <= 0 || after >= before {
		t.Fatalf("Release dropped %d KiB; the executable's resident KiB went from %d to %d", kib, before, after)
	}
	// Code and read-only data of the executable, used after the release.
	s := []string{"b", "c", "a"}
	sort.Strings(s)
	if strings.Join(s, ",") != "a,b,c" || strconv.Itoa(42) != "42" {
		t.Fatal("the program does not run on")
	}
	t.Logf("executable resident: %d KiB before, %d KiB after (%d KiB dropped)", before, after, kib)
}

// exeRssKiB sums Rss over the test binary's mappings of its executable.
func exeRssKiB(t *testing.T) int {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	sum, in := 0, false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") {
			in = len(f) >= 6 && f[5] == exe
			continue
		}
		if in && f[0] == "Rss:" {
			n, _ := strconv.Atoi(f[1])
			sum += n
		}
	}
	return sum
}
