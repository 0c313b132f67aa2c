package main

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/mergenhq/mergen/internal/wire"
)

// healthFlags are the health check flags of vm create and run, named as
// docker's.
type healthFlags struct {
	http, cmd                      string
	tcp, port, retries             int
	interval, timeout, startPeriod time.Duration
}

func (h *healthFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&h.http, "health-http", "", "health check: GET this path on the HTTP port (or --health-port); 200..399 is healthy")
	fl.IntVar(&h.tcp, "health-tcp", 0, "health check: this guest TCP port accepts connections")
	fl.StringVar(&h.cmd, "health-cmd", "", "health check: this shell command, run in the guest with /bin/sh -c, exits 0")
	fl.IntVar(&h.port, "health-port", 0, "guest port of --health-http (default: the HTTP port)")
	fl.DurationVar(&h.interval, "health-interval", 0, "time between health checks (default 10s)")
	fl.DurationVar(&h.timeout, "health-timeout", 0, "time one health check may take (default 2s)")
	fl.IntVar(&h.retries, "health-retries", 0, "failed health checks in a row that make the VM unhealthy (default 3)")
	fl.DurationVar(&h.startPeriod, "health-start-period", 0, "time after a start during which failed health checks do not count")
}

// check is the request's health check; nil when no check flag was given.
func (h *healthFlags) check() (*wire.HealthCheck, error) {
	c := &wire.HealthCheck{Retries: h.retries}
	n := 0
	if h.http != "" {
		c.HTTP, n = &wire.HTTPHealthCheck{Path: h.http, Port: h.port}, n+1
	}
	if h.tcp != 0 {
		c.TCP, n = &wire.TCPHealthCheck{Port: h.tcp}, n+1
	}
	if h.cmd != "" {
		c.Exec, n = &wire.ExecHealthCheck{Argv: []string{"/bin/sh", "-c", h.cmd}}, n+1
	}
	switch {
	case n > 1:
		return nil, fmt.Errorf("give one of --health-http, --health-tcp and --health-cmd")
	case n == 0:
		if h.port != 0 || h.interval != 0 || h.timeout != 0 || h.retries != 0 || h.startPeriod != 0 {
			return nil, fmt.Errorf("--health-* settings need a check: --health-http, --health-tcp or --health-cmd")
		}
		return nil, nil
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
		dst  *int
	}{
		{"--health-interval", h.interval, &c.IntervalSeconds},
		{"--health-timeout", h.timeout, &c.TimeoutSeconds},
		{"--health-start-period", h.startPeriod, &c.StartPeriodSeconds},
	} {
		if d.v%time.Second != 0 || d.v < 0 {
			return nil, fmt.Errorf("%s: %s is not a whole number of seconds", d.flag, d.v)
		}
		*d.dst = int(d.v / time.Second)
	}
	return c, nil
}
