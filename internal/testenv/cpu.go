package testenv

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// CPU is processor time, user and system: what benchmarks print beside
// wall-clock figures, since it moves less with the load of a shared
// machine.
type CPU struct{ User, System time.Duration }

// Total is user and system time together.
func (c CPU) Total() time.Duration { return c.User + c.System }

// Add is c and o together.
func (c CPU) Add(o CPU) CPU { return CPU{c.User + o.User, c.System + o.System} }

// Sub is the time spent since o.
func (c CPU) Sub(o CPU) CPU { return CPU{c.User - o.User, c.System - o.System} }

// ProcessCPU is the processor time this process has used so far.
func ProcessCPU() CPU { return rusage(syscall.RUSAGE_SELF) }

// ChildrenCPU is the processor time of this process's children that ended
// and were waited for.
func ChildrenCPU() CPU { return rusage(syscall.RUSAGE_CHILDREN) }

func rusage(who int) CPU {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		panic("getrusage: " + err.Error()) // only for an invalid who
	}
	return CPU{time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())}
}

// PidCPU is the processor time process pid has used so far, from
// /proc/<pid>/stat (in the kernel's clock ticks, 100 a second).
func PidCPU(t testing.TB, pid int) CPU {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	// The command (field 2) is in parentheses and may hold spaces: the
	// fields counted from after it. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		t.Fatalf("testenv: /proc/%d/stat: %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		t.Fatalf("testenv: /proc/%d/stat: %q", pid, b)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("testenv: /proc/%d/stat: %q", pid, b)
	}
	const tick = 10 * time.Millisecond // USER_HZ, 100 on Linux
	return CPU{time.Duration(utime) * tick, time.Duration(stime) * tick}
}

// BootTicksTime is the wall-clock time of a moment given in clock ticks
// since the machine booted (a process's start in /proc/<pid>/stat, as
// proc.Process.Start records it), to the tick (10 ms), read against
// /proc/uptime.
func BootTicksTime(t testing.TB, ticks uint64) time.Time {
	t.Helper()
	now := time.Now()
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		t.Fatalf("testenv: /proc/uptime: %q", b)
	}
	up, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatalf("testenv: /proc/uptime: %q", b)
	}
	const tick = 10 * time.Millisecond
	return now.Add(-time.Duration(up*float64(time.Second)) + time.Duration(ticks)*tick)
}
