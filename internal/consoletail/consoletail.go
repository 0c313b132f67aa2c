// Package consoletail reads the end of a VM's console log and finds what
// the guest said about how its last run ended: a kernel panic, processes
// killed for lack of memory, mergen-init's exit status and error, and the
// last lines themselves.
//
// It reads at most MaxBytes from the end of the log, reaching into the
// rotated file (console.log.1) when the current one is shorter, and looks
// only at the last boot within that window: the console log keeps every
// run, one after the other.
package consoletail

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxBytes bounds how much of the console log Read looks at.
const MaxBytes = 64 << 10

// Report is what the console says about the last run.
type Report struct {
	// KernelPanic is the kernel's "Kernel panic - not syncing: …" line
	// (without its timestamp), empty when the kernel did not panic.
	KernelPanic string
	// OOMKills are the kernel's "Out of memory: Killed process …" lines.
	OOMKills []string
	// InitExit is the status mergen-init said the guest ends with
	// ("mergen-init: exit status N"), -1 when it said none.
	InitExit int
	// InitError is the error mergen-init reported before ending
	// ("mergen-init: error: …"), empty when none.
	InitError string
	// PayloadExit is the payload's status ("mergen-init: payload exited
	// with status N"), -1 when it did not exit.
	PayloadExit int
	// StopRequested says mergen-init was asked to stop the payload
	// ("mergen-init: stop requested …").
	StopRequested bool
	// Lines are the last lines of the run, control characters escaped.
	Lines []string
}

// Read reads the tail of the console log at path (and of old, the log
// before its rotation, when path holds less than MaxBytes) and parses it,
// keeping the last n lines. Missing files are empty.
func Read(path, old string, n int) (Report, error) {
	b, err := tail(path, MaxBytes)
	if err != nil {
		return Report{}, err
	}
	if len(b) < MaxBytes && old != "" {
		o, err := tail(old, MaxBytes-len(b))
		if err != nil {
			return Report{}, err
		}
		if len(o) > 0 && len(b) > 0 && o[len(o)-1] != '\n' {
			o = append(o, '\n')
		}
		b = append(o, b...)
	}
	return Parse(b, n), nil
}

// tail is the last max bytes of the file at path, from a line's start
// unless the whole file fits.
func tail(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	off := max64(0, size-int64(max))
	b := make([]byte, size-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("console log: %w", err)
	}
	if off > 0 {
		// Drop the partial first line.
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		} else {
			b = nil
		}
	}
	return b, nil
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

var (
	// The kernel's printk prefix: "[   12.345678] ", or "<3>[ …] ".
	timestampRe = regexp.MustCompile(`^(<\d+>)?\[\s*\d+\.\d+\]\s?`)
	initExitRe  = regexp.MustCompile(`^mergen-init: exit status (\d+)$`)
	// kernelStampRe finds a kernel message's stamp inside a line: the
	// kernel writes to the serial console as it logs, so its message can
	// land in the middle of a line mergen-init is writing.
	kernelStampRe = regexp.MustCompile(`(<\d+>)?\[\s*\d+\.\d+\]`)
	payloadRe     = regexp.MustCompile(`^mergen-init: payload exited with status (\d+)$`)
)

// Parse reads a console log's tail b and keeps the last n lines.
func Parse(b []byte, n int) Report {
	raw := strings.Split(string(b), "\n")
	if len(raw) > 0 && raw[len(raw)-1] == "" {
		raw = raw[:len(raw)-1]
	}
	lines := make([]string, len(raw))
	for i, l := range raw {
		lines[i] = strings.TrimRight(l, "\r")
	}
	// Only the last boot: the kernel's banner starts a run.
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(stripTimestamp(lines[i]), "Linux version ") {
			lines = lines[i:]
			break
		}
	}
	r := Report{InitExit: -1, PayloadExit: -1}
	for _, l := range lines {
		m := initLine(stripTimestamp(l))
		switch {
		case strings.HasPrefix(m, "Kernel panic - not syncing"):
			if r.KernelPanic == "" {
				r.KernelPanic = m
			}
		case strings.Contains(m, "Out of memory: Kill"), strings.Contains(m, "out of memory: Kill"):
			r.OOMKills = append(r.OOMKills, m)
		case strings.HasPrefix(m, "mergen-init: stop requested"):
			r.StopRequested = true
		case strings.HasPrefix(m, "mergen-init: error: "):
			r.InitError = strings.TrimPrefix(m, "mergen-init: error: ")
		default:
			if s := initExitRe.FindStringSubmatch(m); s != nil {
				r.InitExit, _ = strconv.Atoi(s[1])
			} else if s := payloadRe.FindStringSubmatch(m); s != nil {
				r.PayloadExit, _ = strconv.Atoi(s[1])
			}
		}
	}
	if n >= 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for _, l := range lines {
		r.Lines = append(r.Lines, Escape(l))
	}
	return r
}

// initLine is a line of mergen-init's without a kernel message that landed
// inside it; other lines are returned as they are.
func initLine(m string) string {
	if !strings.HasPrefix(m, "mergen-init: ") {
		return m
	}
	if loc := kernelStampRe.FindStringIndex(m); loc != nil {
		return m[:loc[0]]
	}
	return m
}

func stripTimestamp(l string) string {
	if loc := timestampRe.FindStringIndex(l); loc != nil {
		return l[loc[1]:]
	}
	return l
}

// Escape writes control characters (but tabs) and invalid UTF-8 as Go
// escapes, so a line is safe to show on a terminal.
func Escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r != '\t' && unicode.IsControl(r):
			if r < 0x100 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}
