package api_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/lifecycle"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// /logs?tail=N counts lines, across the rotation, and source=payload keeps
// the payload's lines without their prefix.
func TestLogsTailCountsLinesAcrossTheRotation(t *testing.T) {
	h := newHost(t, nil)
	var vm wire.VM
	decode(t, h.do(t, http.MethodPost, "/v1/vms", `{}`), &vm)
	rec := h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/logs?tail=5", "")
	if rec.Code != http.StatusOK || rec.Body.Len() != 0 {
		t.Fatalf("logs of a VM that never started: %d %q; want 200, empty", rec.Code, rec.Body)
	}
	p := h.store.Paths(vm.ID)
	if err := os.MkdirAll(p.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// The rotation cut a payload line in two: its end is in console.log.
	os.WriteFile(p.ConsoleLogOld, []byte("mergen-init: starting\r\n[payload] one\r\n[payload] tw"), 0o600)
	os.WriteFile(p.ConsoleLog, []byte("o\r\nkernel: oops\r\n[payload] three\r\nmergen-init: exit status 0\r\n[payload] no newline"), 0o600)
	all := "mergen-init: starting\r\n[payload] one\r\n[payload] two\r\nkernel: oops\r\n[payload] three\r\nmergen-init: exit status 0\r\n[payload] no newline"
	h.bodies(t, "/v1/vms/"+vm.ID+"/logs", map[string]string{
		"":                         all,
		"?tail=all":                all,
		"?tail=1000":               all,
		"?tail=0":                  "",
		"?tail=1":                  "[payload] no newline",
		"?tail=5":                  "[payload] two\r\nkernel: oops\r\n[payload] three\r\nmergen-init: exit status 0\r\n[payload] no newline",
		"?source=console&tail=2":   "mergen-init: exit status 0\r\n[payload] no newline",
		"?source=payload":          "one\r\ntwo\r\nthree\r\nno newline",
		"?source=payload&tail=2":   "three\r\nno newline",
		"?source=payload&tail=3":   "two\r\nthree\r\nno newline",
		"?source=payload&tail=0":   "",
		"?source=payload&tail=99":  "one\r\ntwo\r\nthree\r\nno newline",
		"?source=payload&follow=0": "one\r\ntwo\r\nthree\r\nno newline",
		"?tail=2&follow=false":     "mergen-init: exit status 0\r\n[payload] no newline",
	})
	// A final newline ends the last line; it does not start another.
	os.WriteFile(p.ConsoleLog, []byte("o\r\n[payload] three\r\nlast\n"), 0o600)
	h.bodies(t, "/v1/vms/"+vm.ID+"/logs", map[string]string{
		"?tail=1":                "last\n",
		"?tail=2":                "[payload] three\r\nlast\n",
		"?source=payload&tail=1": "three\r\n",
	})
}

// A log longer than the answer's bound: the tail is found reading from the
// end, whole lines only.
func TestLogsTailOfALongLog(t *testing.T) {
	h := newHost(t, nil)
	vm, p := h.vmWithDataDir(t)
	var b bytes.Buffer
	for i := 0; b.Len() < 6<<20; i++ {
		b.WriteString(strings.Repeat("x", i%200) + "\n")
		if i%1000 == 0 {
			b.WriteString("[payload] marker\n")
		}
	}
	b.WriteString("[payload] last\nthe end\n")
	if err := os.WriteFile(p.ConsoleLog, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/logs?tail=2", "")
	if got := rec.Body.String(); got != "[payload] last\nthe end\n" {
		t.Errorf("tail=2 of a 6 MiB log: %q", got)
	}
	rec = h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/logs?source=payload&tail=3", "")
	if got := rec.Body.String(); got != "marker\nmarker\nlast\n" {
		t.Errorf("source=payload&tail=3 of a 6 MiB log: %q", got)
	}
	// All: bounded, starting at a line's start.
	rec = h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/logs", "")
	body := rec.Body.Bytes()
	if len(body) > 4<<20 || len(body) < 4<<20-200 || !bytes.HasSuffix(b.Bytes(), body) || b.Bytes()[b.Len()-len(body)-1] != '\n' {
		t.Errorf("all of a 6 MiB log: %d bytes; want the last 4 MiB or just under, from a line's start", len(body))
	}
}

// Bad parameters are a 400 naming the parameter; an unknown VM a 404.
func TestLogsRefusesBadParameters(t *testing.T) {
	h := newHost(t, nil)
	var vm wire.VM
	decode(t, h.do(t, http.MethodPost, "/v1/vms", `{}`), &vm)
	for q, want := range map[string]string{
		"tail=-1":       "tail:",
		"tail=ten":      "tail:",
		"tail=1.5":      "tail:",
		"follow=yes":    "follow:",
		"follow=2":      "follow:",
		"source=stderr": "source:",
		"source=":       "", // empty: the default
	} {
		rec := h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/logs?"+q, "")
		if want == "" {
			if rec.Code != http.StatusOK {
				t.Errorf("logs?%s: %d, want 200", q, rec.Code)
			}
			continue
		}
		if rec.Code != http.StatusBadRequest || !strings.HasPrefix(errorOf(t, rec), want) {
			t.Errorf("logs?%s: %d %s; want 400 starting %q", q, rec.Code, rec.Body, want)
		}
	}
	if rec := h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/logs?tail=-1&follow=1", ""); rec.Code != http.StatusBadRequest {
		t.Errorf("a bad tail with follow: %d, want 400 at once", rec.Code)
	}
}

// A follower on loopback receives what is appended and what crosses a
// rotation, payload lines only with source=payload, until the VM is deleted.
func TestLogsFollowAcrossAppendAndRotation(t *testing.T) {
	h := newHost(t, nil)
	vm, p := h.vmWithDataDir(t)
	srv := httptest.NewServer(h.handler)
	defer srv.Close()

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	copied := make(chan error, 1)
	go func() {
		copied <- (&lifecycle.ConsoleLog{Path: p.ConsoleLog, Old: p.ConsoleLogOld, Max: 256}).Copy(pr)
	}()
	write := func(s string) {
		if _, err := pw.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	// written waits until the copier has put what was written in the log.
	written := func(suffix string) {
		t.Helper()
		testenv.Eventually(t, 10*time.Second, fmt.Sprintf("the copier to write %q to the log", suffix), func() bool {
			data, _ := os.ReadFile(p.ConsoleLog)
			return bytes.HasSuffix(data, []byte(suffix))
		})
	}
	write("mergen-init: starting\r\n[payload] old 1\r\n[payload] old 2\r\n")
	written("old 2\r\n")

	follow := func(q string) (func() string, func() error) {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/vms/"+vm.ID+"/logs?"+q, nil)
		req.Header.Set("Authorization", "Bearer "+h.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("logs?%s: %d", q, resp.StatusCode)
		}
		var mu sync.Mutex
		var got []byte
		done := make(chan error, 1)
		go func() {
			defer resp.Body.Close()
			buf := make([]byte, 4096)
			for {
				n, err := resp.Body.Read(buf)
				mu.Lock()
				got = append(got, buf[:n]...)
				mu.Unlock()
				if err != nil {
					done <- err
					return
				}
			}
		}()
		return func() string {
				mu.Lock()
				defer mu.Unlock()
				return string(got)
			}, func() error {
				select {
				case err := <-done:
					return err
				case <-time.After(10 * time.Second):
					t.Fatalf("logs?%s: the stream did not end", q)
					return nil
				}
			}
	}
	console, consoleEnded := follow("follow=1&tail=1")
	payload, payloadEnded := follow("follow=true&tail=1&source=payload")
	waitFor := func(got func() string, want string) {
		t.Helper()
		testenv.Eventually(t, 10*time.Second, fmt.Sprintf("the follower to have %q", want), func() bool { return got() == want })
	}
	waitFor(console, "[payload] old 2\r\n")
	waitFor(payload, "old 2\r\n")

	// An append, a line cut in two writes, then enough to rotate twice.
	write("kernel: hello\r\n[payload] new")
	// The console follower has sent the first half before the second is
	// written, so the payload filter must hold the cut line.
	waitFor(console, "[payload] old 2\r\nkernel: hello\r\n[payload] new")
	write(" line\r\n")
	wantConsole := "[payload] old 2\r\nkernel: hello\r\n[payload] new line\r\n"
	wantPayload := "old 2\r\nnew line\r\n"
	waitFor(console, wantConsole)
	waitFor(payload, wantPayload)
	for i := range 6 {
		line := "[payload] " + strings.Repeat(string(rune('a'+i)), 100) + "\r\nmergen-init: tick\r\n"
		write(line)
		wantConsole += line
		wantPayload += strings.Repeat(string(rune('a'+i)), 100) + "\r\n"
		waitFor(console, wantConsole)
	}
	waitFor(payload, wantPayload)
	if _, err := os.Stat(p.ConsoleLogOld); err != nil {
		t.Fatalf("the log never rotated: %v", err)
	}
	pw.Close()
	if err := <-copied; err != nil {
		t.Fatal(err)
	}

	// Deleting the VM ends both streams.
	if rec := h.do(t, http.MethodDelete, "/v1/vms/"+vm.ID, ""); rec.Code != http.StatusOK {
		t.Fatalf("delete: %d %s", rec.Code, rec.Body)
	}
	consoleEnded()
	payloadEnded()
}
