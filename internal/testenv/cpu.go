package testenv

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/proc"
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

// PidCPU is the processor time process pid has used so far (from
// /proc/<pid>/stat, to the kernel's 10 ms tick).
func PidCPU(t testing.TB, pid int) CPU {
	t.Helper()
	u, err := proc.UsageOf(pid)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return CPU{u.User, u.System}
}

// BootTicksTime is the wall-clock time of a moment given in clock ticks
// since the machine booted (a process's start in /proc/<pid>/stat, as
// proc.Process.Start records it), to the tick, read against /proc/uptime.
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
	return now.Add(-time.Duration(up*float64(time.Second)) + time.Duration(ticks)*proc.ClockTick)
}
