package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/wire"
)

// What a hostile guest prints to its console, and what the operator's
// terminal receives from `mergen logs`.
var escapeCases = []struct{ name, in, want string }{
	{"plain text and UTF-8 pass", "booting\tok\nhéllo ✓ 日本\n", "booting\tok\nhéllo ✓ 日本\n"},
	{"CRLF line ends pass", "line\r\nnext\r\n", "line\r\nnext\r\n"},
	{"a lone carriage return is shown", "visible\rhidden\n", `visible\rhidden` + "\n"},
	{"CSI: clear the screen", "\x1b[2J\x1b[H", `\x1b[2J\x1b[H`},
	{"OSC: set the title, BEL", "\x1b]0;pwned\x07", `\x1b]0;pwned\x07`},
	{"OSC 52: write the clipboard", "\x1b]52;c;Y3VybCBldmlsfHNo\x1b\\", `\x1b]52;c;Y3VybCBldmlsfHNo\x1b\`},
	{"backspace and DEL", "rm -rf /\b\b\b\b\b\b\b\bls\x7f", `rm -rf /\x08\x08\x08\x08\x08\x08\x08\x08ls\x7f`},
	{"C1 CSI as UTF-8", "\u009b31m", `\u009b31m`},
	{"C1 CSI as a raw byte", "\x9b31m", `\x9b31m`},
	{"NUL and other C0", "a\x00b\x01c\x1fd", `a\x00b\x01c\x1fd`},
	{"invalid UTF-8", "\xff\xfe ok", `\xff\xfe ok`},
	{"a trailing carriage return at the end", "prompt\r", `prompt\r`},
	{"a cut UTF-8 sequence at the end", "cut \xe6\x97", `cut \xe6\x97`},
}

func TestEscaperNeutralisesControlSequences(t *testing.T) {
	for _, c := range escapeCases {
		t.Run(c.name, func(t *testing.T) {
			// Whole, then one byte per Write: the result is the same
			// wherever the stream is cut.
			for _, chunk := range []int{len(c.in) + 1, 1, 2, 3} {
				var out bytes.Buffer
				e := &escaper{w: &out}
				in := []byte(c.in)
				for len(in) > 0 {
					n := min(chunk, len(in))
					if w, err := e.Write(in[:n]); err != nil || w != n {
						t.Fatalf("Write = %d, %v", w, err)
					}
					in = in[n:]
				}
				if err := e.Flush(); err != nil {
					t.Fatal(err)
				}
				if out.String() != c.want {
					t.Errorf("chunks of %d: %q, want %q", chunk, out.String(), c.want)
				}
				if chunk == 1 && strings.ContainsAny(out.String(), "\x1b\x07\x08\x7f\x00") {
					t.Errorf("a control byte got through: %q", out.String())
				}
			}
		})
	}
}

// `mergen logs` against an API on loopback serving a hostile console:
// escaped by default, the bytes as they are with --raw.
func TestLogsCommandEscapesUnlessRaw(t *testing.T) {
	const id = "3f2a1c9e-8b7d-4e6f-9a0b-1c2d3e4f5a6b"
	console := "boot ok\r\n\x1b]0;owned\x07\x1b[31mred\x1b[0m\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/vms":
			json.NewEncoder(w).Encode(wire.VMList{VMs: []wire.VM{{ID: id, Name: "web"}}})
		case "/v1/vms/" + id + "/logs":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Write([]byte(console))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "boot ok\r\n" + `\x1b]0;owned\x07\x1b[31mred\x1b[0m` + "\n"},
		{[]string{"--raw"}, console},
	} {
		root := &cobra.Command{Use: "mergen", SilenceUsage: true, SilenceErrors: true}
		root.AddCommand(newLogsCmd())
		var out bytes.Buffer
		root.SetArgs(append([]string{"logs", "web", "--api", srv.URL}, c.args...))
		root.SetOut(&out)
		root.SetErr(&out)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := root.ExecuteContext(ctx)
		cancel()
		if err != nil {
			t.Fatalf("logs %v: %v", c.args, err)
		}
		if out.String() != c.want {
			t.Errorf("logs %v printed %q, want %q", c.args, out.String(), c.want)
		}
	}
}

// The flags reach the API as docker's habits have them: --tail lines, -f,
// --source; bad values are refused before asking.
func TestLogsCommandFlags(t *testing.T) {
	const id = "3f2a1c9e-8b7d-4e6f-9a0b-1c2d3e4f5a6b"
	queries := make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/vms":
			json.NewEncoder(w).Encode(wire.VMList{VMs: []wire.VM{{ID: id, Name: "web"}}})
		case "/v1/vms/" + id + "/logs":
			queries <- r.URL.RawQuery
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Write([]byte("line\n"))
			if r.URL.Query().Get("follow") == "1" {
				w.(http.Flusher).Flush()
				<-r.Context().Done() // until the client goes away
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	run := func(ctx context.Context, args ...string) (string, error) {
		root := &cobra.Command{Use: "mergen", SilenceUsage: true, SilenceErrors: true}
		root.AddCommand(newLogsCmd())
		var out bytes.Buffer
		root.SetArgs(append([]string{"logs", "--api", srv.URL}, args...))
		root.SetOut(&out)
		root.SetErr(&out)
		err := root.ExecuteContext(ctx)
		return out.String(), err
	}
	for _, c := range []struct {
		args  []string
		query string
	}{
		{[]string{"web"}, "source=console&tail=all"},
		{[]string{"--tail", "5", "web"}, "source=console&tail=5"},
		{[]string{"--tail=0", "--source", "payload", "web"}, "source=payload&tail=0"},
		{[]string{"web", "--source=console", "--tail", "all"}, "source=console&tail=all"},
	} {
		out, err := run(context.Background(), c.args...)
		if err != nil || out != "line\n" {
			t.Errorf("logs %v: %q, %v", c.args, out, err)
		}
		if q := <-queries; q != c.query {
			t.Errorf("logs %v asked for %q, want %q", c.args, q, c.query)
		}
	}
	// -f follows until the context ends (Ctrl-C), without an error.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := run(ctx, "-f", "--tail", "10", "web")
		done <- err
	}()
	if q := <-queries; q != "follow=1&source=console&tail=10" {
		t.Errorf("logs -f --tail 10 asked for %q", q)
	}
	select {
	case err := <-done:
		t.Fatalf("logs -f ended on its own: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("logs -f ended by Ctrl-C: %v, want no error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("logs -f did not end with its context")
	}
	for _, args := range [][]string{{"--tail", "-1", "web"}, {"--tail", "ten", "web"}, {"--source", "stderr", "web"}} {
		if _, err := run(context.Background(), args...); err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("logs %v: %v; want an error naming %s", args, err, args[0])
		}
	}
	if len(queries) != 0 {
		t.Errorf("bad flags reached the API: %q", <-queries)
	}
}
