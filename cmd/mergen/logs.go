package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/client"
)

func newLogsCmd() *cobra.Command {
	f := &apiFlags{}
	var follow, raw bool
	var tail, source string
	cmd := &cobra.Command{
		Use:   "logs [-f] [--tail N] [--source payload] VM",
		Short: "Show a VM's output: guest kernel, mergen-init and payload",
		Long: `Shows a VM's serial console: guest kernel, mergen-init and payload output,
line by line. --tail N shows only the last N lines (default all, within the
daemon's bound of 4 MiB); -f keeps printing new output until Ctrl-C or the
VM is deleted. --source payload shows only the payload's output (the lines
mergen-init writes as "[payload] ...", without that prefix).

The console is written by the guest. Control characters (escape sequences
among them) are shown as \xNN or \uNNNN so that they cannot drive your
terminal; newlines, tabs and the carriage return of a \r\n line end pass
through. --raw prints the bytes as they are.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tail != "all" {
				if n, err := strconv.ParseInt(tail, 10, 64); err != nil || n < 0 {
					return fmt.Errorf("--tail: %q is not a line count (a number ≥ 0, or all)", tail)
				}
			}
			if source != "console" && source != "payload" {
				return fmt.Errorf("--source: %q is not console or payload", source)
			}
			c, vm, err := f.resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			opts := client.LogsOptions{Tail: tail, Follow: follow, Source: source}
			ctx := cmd.Context()
			if follow {
				// Ctrl-C ends the follow, not mergen: what is held is
				// written and the exit status is 0, as docker's.
				var stop context.CancelFunc
				ctx, stop = signal.NotifyContext(ctx, os.Interrupt)
				defer stop()
			}
			if raw {
				return c.Logs(ctx, vm.ID, opts, cmd.OutOrStdout())
			}
			w := &escaper{w: cmd.OutOrStdout()}
			err = c.Logs(ctx, vm.ID, opts, w)
			if ferr := w.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until interrupted")
	cmd.Flags().StringVar(&tail, "tail", "all", "only the last N lines")
	cmd.Flags().StringVar(&source, "source", "console", "console (everything) or payload (the payload's output alone)")
	cmd.Flags().BoolVar(&raw, "raw", false, "print the console's bytes as they are, control sequences included")
	return cmd
}

// escaper writes guest text through and control characters as visible
// escapes, so that what a guest prints cannot drive the terminal of who reads
// it: C0 controls but \n and \t, DEL, C1 controls (U+0080–U+009F) and bytes
// that are not UTF-8. A carriage return passes only as part of "\r\n". A UTF-8
// sequence or a "\r" cut at the end of one Write is held for the next; Flush
// writes what is held at the end of the stream.
type escaper struct {
	w       io.Writer
	pending []byte
	out     []byte
}

func (e *escaper) Write(p []byte) (int, error) {
	data := p
	if len(e.pending) > 0 {
		data = append(e.pending, p...)
		e.pending = nil
	}
	out := e.out[:0]
	for i := 0; i < len(data); {
		b := data[i]
		switch {
		case b == '\n' || b == '\t':
			out = append(out, b)
			i++
		case b == '\r':
			switch {
			case i+1 == len(data):
				e.pending = append(e.pending, '\r') // decided by what follows
			case data[i+1] == '\n':
				out = append(out, '\r')
			default:
				out = append(out, `\r`...)
			}
			i++
		case b < 0x20 || b == 0x7f:
			out = fmt.Appendf(out, `\x%02x`, b)
			i++
		case b < utf8.RuneSelf:
			out = append(out, b)
			i++
		default:
			r, size := utf8.DecodeRune(data[i:])
			switch {
			case r == utf8.RuneError && size <= 1 && !utf8.FullRune(data[i:]):
				e.pending = append(e.pending, data[i:]...) // cut by the write
				i = len(data)
			case r == utf8.RuneError && size <= 1:
				out = fmt.Appendf(out, `\x%02x`, b)
				i++
			case r >= 0x80 && r <= 0x9f:
				out = fmt.Appendf(out, `\u%04x`, r)
				i += size
			default:
				out = append(out, data[i:i+size]...)
				i += size
			}
		}
	}
	e.out = out
	if _, err := e.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what a Write held back, escaped: the stream has ended.
func (e *escaper) Flush() error {
	var out []byte
	for _, b := range e.pending {
		if b == '\r' {
			out = append(out, `\r`...)
		} else {
			out = fmt.Appendf(out, `\x%02x`, b)
		}
	}
	e.pending = nil
	if len(out) == 0 {
		return nil
	}
	_, err := e.w.Write(out)
	return err
}
