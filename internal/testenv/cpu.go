package testenv

import (
	"syscall"
	"time"
)

// CPU is processor time, user and system: what benchmarks print beside
// wall-clock figures, since it moves less with the load of a shared
// machine.
type CPU struct{ User, System time.Duration }

// Total is user and system time together.
func (c CPU) Total() time.Duration { return c.User + c.System }

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
