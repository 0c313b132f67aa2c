package main

import (
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/spf13/cobra"
)

func newLogsCmd() *cobra.Command {
	f := &apiFlags{}
	var follow, raw bool
	var tail int64
	cmd := &cobra.Command{
		Use:   "logs VM",
		Short: "Show a VM's console: guest kernel, mergen-init and payload output",
		Long: `Shows a VM's serial console: guest kernel, mergen-init and payload output.

The console is written by the guest. Control characters (escape sequences
among them) are shown as \xNN or \uNNNN so that they cannot drive your
terminal; newlines, tabs and the carriage return of a \r\n line end pass
through. --raw prints the bytes as they are.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, vm, err := f.resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if raw {
				return c.Console(cmd.Context(), vm.ID, tail, follow, cmd.OutOrStdout())
			}
			w := &escaper{w: cmd.OutOrStdout()}
			err = c.Console(cmd.Context(), vm.ID, tail, follow, w)
			if ferr := w.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().Int64Var(&tail, "tail", 0, "only the last N bytes")
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
