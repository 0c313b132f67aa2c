package logging

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

func TestConsoleFormatPutsLevelBeforeTimestamp(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "debug", "console", false)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("vm created", "id", "abc")
	line := strings.TrimSpace(buf.String())
	re := regexp.MustCompile(`^\[INFO\] \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* vm created id=abc$`)
	if !re.MatchString(line) {
		t.Fatalf("console line %q does not match %s", line, re)
	}
}

func TestConsoleColoursLevels(t *testing.T) {
	var buf bytes.Buffer
	log, _ := New(&buf, "debug", "console", true)
	log.Warn("careful")
	if !strings.HasPrefix(buf.String(), "\x1b[33m[WARN]") {
		t.Fatalf("warn line not yellow: %q", buf.String())
	}
}

func TestJSONFormatAndLevelFilter(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "warn", "json", false)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Error("shown", "op", "start")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("want 1 line at level warn, got %d: %q", len(lines), buf.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["msg"] != "shown" || rec["level"] != "ERROR" || rec["op"] != "start" {
		t.Fatalf("unexpected record %v", rec)
	}
}

func TestRejectsUnknownLevelAndFormat(t *testing.T) {
	if _, err := New(&bytes.Buffer{}, "loud", "json", false); err == nil || !strings.Contains(err.Error(), "debug|info|warn|error") {
		t.Fatalf("unknown level: got %v", err)
	}
	if _, err := New(&bytes.Buffer{}, "info", "xml", false); err == nil || !strings.Contains(err.Error(), "console|json|text") {
		t.Fatalf("unknown format: got %v", err)
	}
}
