package supervisor_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
)

// stageRecord is one line of the stage log written by teststages.
type stageRecord map[string]string

// vmFixture is one VM's worth of directories and a stage log.
type vmFixture struct {
	id         string
	runRoot    string
	configRoot string
	stageLog   string
	trigger    string // creating this file makes the main process exit
}

func newVM(t *testing.T, root, id string, env ...string) vmFixture {
	t.Helper()
	f := vmFixture{
		id:         id,
		runRoot:    filepath.Join(root, "run"),
		configRoot: filepath.Join(root, "config"),
		stageLog:   filepath.Join(root, id+".stages"),
		trigger:    filepath.Join(root, id+".exit"),
	}
	if err := os.MkdirAll(filepath.Join(f.configRoot, id), 0o755); err != nil {
		t.Fatal(err)
	}
	// The stages' environment file, as the manager writes it.
	// Each VM records its stages in a log of its own, named in its env file.
	content := "# written by the test\nTEST_FROM_ENV_FILE=\"from env file\"\nTEST_STAGE_LOG=" + f.stageLog +
		"\nTEST_EXIT_TRIGGER=" + f.trigger + "\n" + strings.Join(env, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(f.configRoot, id, "env"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// stages reads the stage log.
func (f vmFixture) stages(t *testing.T) []stageRecord {
	t.Helper()
	b, err := os.ReadFile(f.stageLog)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []stageRecord
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		rec := stageRecord{}
		// Values may hold spaces only in TEST_FROM_ENV_FILE, which is last.
		if i := strings.Index(line, " TEST_FROM_ENV_FILE="); i >= 0 {
			rec["TEST_FROM_ENV_FILE"] = line[i+len(" TEST_FROM_ENV_FILE="):]
			line = line[:i]
		}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			rec[k] = v
		}
		out = append(out, rec)
	}
	return out
}

func stageNames(recs []stageRecord) string {
	var names []string
	for _, r := range recs {
		names = append(names, r["stage"])
	}
	return strings.Join(names, ",")
}

// controlStages lists the stages other than start, in order. The start
// stage is the main process: like systemd's ExecStartPost=, post-start runs
// once it has been exec'd, so its own first write may come after
// post-start's.
func controlStages(recs []stageRecord) string {
	var names []string
	for _, r := range recs {
		if r["stage"] != "start" {
			names = append(names, r["stage"])
		}
	}
	return strings.Join(names, ",")
}

// waitStage waits for stage's record: the main process writes its own
// asynchronously to Start's return.
func (f vmFixture) waitStage(t *testing.T, stage string) stageRecord {
	t.Helper()
	var rec stageRecord
	testenv.Eventually(t, time.Minute, "stage "+stage, func() bool {
		for _, r := range f.stages(t) {
			if r["stage"] == stage {
				rec = r
				return true
			}
		}
		return false
	})
	return rec
}

func (f vmFixture) find(t *testing.T, stage string) stageRecord {
	t.Helper()
	for _, r := range f.stages(t) {
		if r["stage"] == stage {
			return r
		}
	}
	t.Fatalf("stage %s did not run; stages: %s", stage, stageNames(f.stages(t)))
	return nil
}

func testStages(t testing.TB) string {
	t.Helper()
	return testenv.Build(t, "./internal/supervisor/internal/teststages")
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}
