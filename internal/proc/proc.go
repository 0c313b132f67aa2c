// Package proc answers "is this process still the one we started?" the one
// way mergen asks it: a pid together with the process's start time, so that
// a pid recycled by the kernel for another process is not mistaken for a
// VMM or a supervisor that has died.
package proc

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/atomicfile"
)

// Process identifies one process for its whole life.
type Process struct {
	PID   int
	Start uint64 // start time in clock ticks since boot (/proc/<pid>/stat field 22); 0: unknown
}

// Self is the calling process. Its start time survives exec, so a stage
// that records itself and then execs the VMM has recorded the VMM.
func Self() Process {
	p := Process{PID: os.Getpid()}
	p.Start, _ = StartTime(p.PID)
	return p
}

// Of returns pid with its current start time.
func Of(pid int) (Process, error) {
	start, err := StartTime(pid)
	if err != nil {
		return Process{}, err
	}
	return Process{PID: pid, Start: start}, nil
}

// Alive reports whether the process runs: the pid exists, is not a zombie,
// and, when the start time is known, started when it did.
func (p Process) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	st, err := readStat(p.PID)
	if err != nil {
		return false
	}
	if st.state == 'Z' || st.state == 'X' {
		return false
	}
	return p.Start == 0 || st.start == p.Start
}

// StartTime is field 22 of /proc/<pid>/stat.
func StartTime(pid int) (uint64, error) {
	st, err := readStat(pid)
	return st.start, err
}

// State is field 3 of /proc/<pid>/stat ('R', 'S', 'Z', …), 0 when the
// process is gone.
func State(pid int) byte {
	st, _ := readStat(pid)
	return st.state
}

// stat is what mergen reads of /proc/<pid>/stat.
type stat struct {
	state        byte
	start        uint64 // clock ticks since boot
	user, system uint64 // clock ticks
	rssPages     int64
}

func readStat(pid int) (stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, err
	}
	return parseStat(pid, b)
}

// parseStat reads the fields stat keeps from the text of /proc/<pid>/stat.
func parseStat(pid int, b []byte) (st stat, err error) {
	// The command name (field 2) may hold spaces and parentheses; fields
	// after the last ')' are plain.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return stat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): field n is f[n-3]. utime and stime are
	// fields 14 and 15, the start time 22, rss (pages) 24.
	if len(f) < 22 || len(f[0]) != 1 {
		return stat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	st = stat{state: f[0][0]}
	for _, field := range []struct {
		name string
		text string
		to   *uint64
	}{{"start time", f[19], &st.start}, {"user time", f[11], &st.user}, {"system time", f[12], &st.system}} {
		if *field.to, err = strconv.ParseUint(field.text, 10, 64); err != nil {
			return stat{}, fmt.Errorf("/proc/%d/stat: %s: %w", pid, field.name, err)
		}
	}
	if st.rssPages, err = strconv.ParseInt(f[21], 10, 64); err != nil {
		return stat{}, fmt.Errorf("/proc/%d/stat: resident size: %w", pid, err)
	}
	return st, nil
}

// WritePIDFile records p as "<pid> <start>\n", atomically.
func WritePIDFile(path string, p Process) error {
	return atomicfile.WriteFile(path, []byte(fmt.Sprintf("%d %d\n", p.PID, p.Start)), 0o600)
}

// ReadPIDFile reads a file written by WritePIDFile. A file holding only a
// pid (written by an earlier version) gives a Process with unknown start.
// A missing file is the zero Process and no error.
func ReadPIDFile(path string) (Process, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Process{}, nil
	}
	if err != nil {
		return Process{}, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return Process{}, nil
	}
	var p Process
	if p.PID, err = strconv.Atoi(f[0]); err != nil || p.PID <= 0 {
		return Process{}, fmt.Errorf("pid file %s: %q is not a pid", path, f[0])
	}
	if len(f) > 1 {
		if p.Start, err = strconv.ParseUint(f[1], 10, 64); err != nil {
			return Process{}, fmt.Errorf("pid file %s: %q is not a start time", path, f[1])
		}
	}
	return p, nil
}

// Usage is what a process has used: CPU time (user and system) and its
// resident memory.
type Usage struct {
	User, System time.Duration
	RSSBytes     int64
}

// CPUSeconds is the CPU time, user and system together.
func (u Usage) CPUSeconds() float64 { return (u.User + u.System).Seconds() }

// UsageOf reads pid's usage from /proc.
func UsageOf(pid int) (Usage, error) {
	st, err := readStat(pid)
	if err != nil {
		return Usage{}, err
	}
	return Usage{
		User:     time.Duration(st.user) * ClockTick,
		System:   time.Duration(st.system) * ClockTick,
		RSSBytes: st.rssPages * int64(os.Getpagesize()),
	}, nil
}

// ClockTick is the unit of /proc's process times and start times (USER_HZ,
// 100 a second on every Linux architecture mergen runs on).
const ClockTick = time.Second / 100
