// Command teststages stands in for mergen-lifecycle in the supervisor's
// tests. It follows the lifecycle's contract (`<stage> <id>`, the start stage
// being the long-running main process) and appends one line per stage to
// $TEST_STAGE_LOG so a test can read what ran, in which order, with which
// environment. It also serves `supervise <id>` (the detached supervisor's
// body) and `starter <id>`, a client that starts a VM and then waits to be
// killed.
//
// Behaviour is chosen by the environment (usually the VM's env file):
//
//	TEST_FAIL_STAGE=<stage>  that stage exits 1
//	TEST_EXIT_TRIGGER=<path> the main process exits with TEST_EXIT_CODE once path exists
//	TEST_EXIT_SIGNAL=KILL    ... or kills itself with SIGKILL instead
//	TEST_IGNORE_TERM=1       the main process ignores SIGTERM
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mergenhq/mergen/internal/supervisor"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: teststages <stage> <id>")
		os.Exit(2)
	}
	stage, id := os.Args[1], os.Args[2]
	switch stage {
	case "supervise":
		if err := supervisor.RunDetached(context.Background(), options(), id); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	case "starter":
		// TEST_SUPERVISOR picks the supervisor; detached by default.
		name := os.Getenv("TEST_SUPERVISOR")
		if name == "" {
			name = "detached"
		}
		s, err := supervisor.New(name, options())
		if err == nil {
			err = s.Start(context.Background(), id)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("started")
		select {} // until killed
	}

	record(stage, id)
	if os.Getenv("TEST_FAIL_STAGE") == stage {
		os.Exit(1)
	}
	if stage == "start" {
		runMain()
	}
}

// options builds the supervisor's options from the variables the detached
// supervisor passes on, as mergen-lifecycle does.
func options() supervisor.Options {
	exe, _ := os.Executable()
	secs, _ := strconv.Atoi(os.Getenv("MGR_STOP_TIMEOUT_SECONDS"))
	return supervisor.Options{
		UnitPrefix:   os.Getenv("MGR_UNIT_PREFIX"),
		LifecycleBin: exe,
		RunRoot:      os.Getenv("MGR_RUN_ROOT"),
		ConfigRoot:   os.Getenv("MGR_CONFIG_ROOT"),
		StopTimeout:  time.Duration(secs) * time.Second,
	}
}

func record(stage, id string) {
	fields := []string{"stage=" + stage, "id=" + id, "pid=" + strconv.Itoa(os.Getpid())}
	for _, k := range []string{"MAINPID", "SERVICE_RESULT", "EXIT_STATUS", "MONITOR_SERVICE_RESULT", "MONITOR_EXIT_STATUS", "TEST_FROM_ENV_FILE"} {
		if v, ok := os.LookupEnv(k); ok {
			fields = append(fields, k+"="+v)
		}
	}
	f, err := os.OpenFile(os.Getenv("TEST_STAGE_LOG"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "teststages:", err)
		os.Exit(1)
	}
	// One write per line: O_APPEND keeps concurrent stages' lines whole.
	f.WriteString(strings.Join(fields, " ") + "\n")
	f.Close()
}

// runMain is the main process: it waits for SIGTERM, or for the exit
// trigger.
func runMain() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	if os.Getenv("TEST_IGNORE_TERM") == "1" {
		signal.Ignore(syscall.SIGTERM)
	}
	trigger := os.Getenv("TEST_EXIT_TRIGGER")
	for {
		select {
		case <-sigs:
			os.Exit(0)
		case <-time.After(20 * time.Millisecond):
		}
		if trigger != "" {
			if _, err := os.Stat(trigger); err == nil {
				if os.Getenv("TEST_EXIT_SIGNAL") == "KILL" {
					syscall.Kill(os.Getpid(), syscall.SIGKILL)
				}
				code, _ := strconv.Atoi(os.Getenv("TEST_EXIT_CODE"))
				os.Exit(code)
			}
		}
	}
}
