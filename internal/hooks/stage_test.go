package hooks

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/envfile"
)

func TestEnvVarNames(t *testing.T) {
	want := map[string]string{
		"preStart": "MGN_LIFECYCLE_PRE_START_HOOKS", "postStart": "MGN_LIFECYCLE_POST_START_HOOKS",
		"preStop": "MGN_LIFECYCLE_PRE_STOP_HOOKS", "postStop": "MGN_LIFECYCLE_POST_STOP_HOOKS",
		"preDelete": "MGN_LIFECYCLE_PRE_DELETE_HOOKS", "delete": "MGN_LIFECYCLE_DELETE_HOOKS",
		"postDelete": "MGN_LIFECYCLE_POST_DELETE_HOOKS",
	}
	for key, v := range want {
		if got := config.StageHookVar(key); got != v {
			t.Errorf("config.StageHookVar(%s) = %s, want %s", key, got, v)
		}
	}
}

func TestStageHooksRunInOrderWithSubstitution(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "trace")
	os.WriteFile(filepath.Join(dir, StageFile), []byte(`{
  "preStart": ["echo file-shell {{vm_id}} >> `+trace+`", ["/bin/sh", "-c", "echo file-argv ${VM_ID} $VM_ID >> `+trace+`"]],
  "postStop": ["echo other-stage >> `+trace+`"]
}`), 0o644)
	env := []string{"PATH=/bin", config.StageHookVar("preStart") + "=echo env-1 {{vm_id}} >> " + trace + "; echo env-2 >> " + trace}
	list, err := StageHooks(filepath.Join(dir, StageFile), "preStart", hostHooks(t, env))
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "events.log")
	if err := RunStage(context.Background(), quiet, "vm-7", "preStart", list, log); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(trace)
	want := "env-1 vm-7\nenv-2\nfile-shell vm-7\nfile-argv vm-7 vm-7\n"
	if string(b) != want {
		t.Fatalf("hooks ran as\n%s\nwant\n%s", b, want)
	}
	recs := readRecords(t, log)
	if len(recs) != 4 || recs[0].Stage != "preStart" || recs[0].VMID != "vm-7" || recs[3].Result != "ok" {
		t.Fatalf("event log %+v", recs)
	}
}

func TestFailingStageHookFailsTheStageAndIsLogged(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "trace")
	list := []StageHook{{Source: "a", Shell: "echo SECRET; exit 4"}, {Source: "b", Shell: "echo ran >> " + trace}}
	log := filepath.Join(dir, "events.log")
	var buf strings.Builder
	err := RunStage(context.Background(), slog.New(slog.NewTextHandler(&buf, nil)), "vm-1", "postStart", list, log)
	if err == nil || err.Error() != "postStart hook of vm vm-1 (a): exit status 4" {
		t.Fatalf("err = %v; want the stage, VM, hook and exit status, not the output", err)
	}
	if _, err := os.Stat(trace); !os.IsNotExist(err) {
		t.Fatal("a hook after the failed one ran")
	}
	// The output is kept where the operator looks: the log and the event log.
	if recs := readRecords(t, log); len(recs) != 1 || recs[0].Result != "error" || recs[0].Error != "exit status 4" || recs[0].Output != "SECRET\n" {
		t.Fatalf("event log %+v", recs)
	}
	if !strings.Contains(buf.String(), "SECRET") {
		t.Fatalf("log lacks the output:\n%s", buf.String())
	}
}

func TestStageHookFileErrors(t *testing.T) {
	cases := map[string]string{
		`{"preBoot": []}`:          `unknown stage "preBoot"`,
		`{"preStart": [""]}`:       "preStart[0]: empty command",
		`{"preStart": [["rel"]]}`:  "absolute program path",
		`{"preStart": [{"x": 1}]}`: "want a shell command string or an argv array",
		`{"preStart": "echo hi"}`:  "lifecycle-hooks.json",
	}
	for content, want := range cases {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, StageFile), []byte(content), 0o644)
		_, err := StageHooks(filepath.Join(dir, StageFile), "preStart", hostHooks(t, nil))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want %q", content, err, want)
		}
	}
	if _, err := StageHooks(filepath.Join(t.TempDir(), StageFile), "preBoot", hostHooks(t, nil)); err == nil {
		t.Error("unknown stage key accepted")
	}
	if list, err := StageHooks(filepath.Join(t.TempDir(), StageFile), "delete", hostHooks(t, nil)); err != nil || len(list) != 0 {
		t.Errorf("no file, no env: %v %v", list, err)
	}
}

// TestEventLogAppendsFromManyProcessesKeepLinesWhole runs several copies of
// this test binary that append concurrently to one log.
func TestEventLogAppendsFromManyProcessesKeepLinesWhole(t *testing.T) {
	if os.Getenv("HOOKS_APPEND_CHILD") != "" {
		for i := 0; i < 200; i++ {
			r := Record{VMID: os.Getenv("HOOKS_APPEND_CHILD"), Stage: "preStart", Hook: strings.Repeat("h", 300), Result: "ok"}
			if err := AppendEvent(os.Getenv("HOOKS_APPEND_LOG"), r); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		return
	}
	log := filepath.Join(t.TempDir(), "daemon.log")
	var cmds []*exec.Cmd
	for p := 0; p < 4; p++ {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestEventLogAppendsFromManyProcessesKeepLinesWhole$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("HOOKS_APPEND_CHILD=vm-%d", p), "HOOKS_APPEND_LOG="+log)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	recs := readRecords(t, log)
	if len(recs) != 800 {
		t.Fatalf("%d whole records, want 800", len(recs))
	}
}

func readRecords(t *testing.T, path string) []Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("torn line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func TestStageHookTimeoutComesFromTheEnvironment(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	env := []string{TimeoutEnv + "=1", config.StageHookVar("preStop") + "=sleep 60 & echo $! > " + pidFile + " && wait"}
	list, err := StageHooks(filepath.Join(dir, StageFile), "preStop", hostHooks(t, env))
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "events.log")
	err = RunStage(context.Background(), quiet, "vm-3", "preStop", list, log)
	if err == nil || !strings.Contains(err.Error(), "preStop hook of vm vm-3") || !strings.Contains(err.Error(), "did not finish within 1s") {
		t.Fatalf("err = %v", err)
	}
	b, rerr := os.ReadFile(pidFile)
	if rerr != nil {
		t.Fatal(rerr)
	}
	requireGone(t, strings.TrimSpace(string(b)))
	if recs := readRecords(t, log); len(recs) != 1 || recs[0].Result != "error" || !strings.Contains(recs[0].Error, "within 1s") {
		t.Fatalf("event log %+v", recs)
	}

	for _, bad := range []string{"0", "soon", "-5", "3601"} {
		_, err := config.FromEnv(func(k string) string { return map[string]string{TimeoutEnv: bad}[k] })
		if err == nil || !strings.Contains(err.Error(), TimeoutEnv) {
			t.Errorf("%s=%s: err %v, want one naming the variable", TimeoutEnv, bad, err)
		}
	}
}

func TestStageHookSeesVMIDAndStageInItsEnvironment(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	list := []StageHook{{Source: "t", Argv: []string{"/bin/sh", "-c", `echo "$VM_ID $MGN_STAGE" > "$1"`, "sh", out}}}
	if err := RunStage(context.Background(), quiet, "vm-5", "postDelete", list, ""); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != "vm-5 postDelete\n" {
		t.Fatalf("hook saw %q", b)
	}
}

// The env list is split on ';': each part is its own hook, run in order.
// A hook may leave a process running in the background and still succeed.
func TestEnvListSplitsOnSemicolonAndBackgroundChildrenAreAllowed(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "daemon.pid")
	trace := filepath.Join(dir, "trace")
	env := []string{config.StageHookVar("postStart") + "=sleep 5 & echo $! > " + pidFile + " ; echo second >> " + trace + ";; echo third >> " + trace}
	list, err := StageHooks(filepath.Join(dir, StageFile), "postStart", hostHooks(t, env))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 {
		t.Fatalf("%d hooks from the env list, want 3: %v", len(list), list)
	}
	if err := RunStage(context.Background(), quiet, "vm-8", "postStart", list, ""); err != nil {
		t.Fatalf("a hook that backgrounds a child and exits 0 failed: %v", err)
	}
	if b, _ := os.ReadFile(trace); string(b) != "second\nthird\n" {
		t.Fatalf("trace %q", b)
	}
	if b, err := os.ReadFile(pidFile); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// TimeoutEnv sets the timeout of every stage hook, in whole seconds.
const TimeoutEnv = "MGN_LIFECYCLE_HOOK_TIMEOUT_SECONDS"

// hostHooks is the host's stage hook configuration for env (KEY=VALUE
// pairs), read the way the lifecycle program reads its environment.
func hostHooks(t *testing.T, env []string) config.StageHooks {
	t.Helper()
	c, err := config.FromEnv(func(k string) string { v, _ := envfile.Lookup(env, k); return v })
	if err != nil {
		t.Fatal(err)
	}
	return c.StageHooks
}
