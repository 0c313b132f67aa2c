package lifecycle

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/store"
)

// ConsoleLogStage is the hidden mergen-lifecycle command the start stage
// runs to write the VMM's console output to the console log:
//
//	mergen-lifecycle console-log <vm-id>   (the output on stdin)
const ConsoleLogStage = "console-log"

// CopyConsole is the console-log command: it writes in, the console output
// of VM id, to the VM's console log, bounded by cfg.ConsoleLogMax, until in
// ends. Problems writing the log go to warn.
func CopyConsole(cfg config.Config, id string, in io.Reader, warn io.Writer) error {
	if err := store.ValidateID(id); err != nil {
		return fmt.Errorf("%s: %w", ConsoleLogStage, err)
	}
	p := cfg.Layout().VM(id)
	c := &ConsoleLog{Path: p.ConsoleLog, Old: p.ConsoleLogOld, Max: cfg.ConsoleLogMax, Warn: warn}
	return c.Copy(in)
}

// ConsoleLog writes a VM's console output to Path, bounded: when Path would
// grow past Max bytes it is renamed to Old (replacing the one before) and a
// new Path is started, so the two files together never hold more than
// 2*Max bytes, and the most recent output up to Max bytes is always kept.
//
// The VMM writes its console to a pipe that Copy drains: Copy never stops
// reading before end of file (the VMM has exited), even when the log
// cannot be written, because a VMM blocked on its console stops the guest.
type ConsoleLog struct {
	Path, Old string
	Max       int64
	// Warn receives what went wrong writing the log (nil: nothing). Copy
	// goes on: output that cannot be written is dropped.
	Warn io.Writer

	f    *os.File
	size int64
}

// Copy writes r to the log until r ends.
func (c *ConsoleLog) Copy(r io.Reader) error {
	if c.Max <= 0 {
		return fmt.Errorf("console log %s: maximum size %d is not positive", c.Path, c.Max)
	}
	defer c.close()
	buf := make([]byte, 64<<10)
	var failed error // the last write error reported, so it is reported once
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if err := c.write(buf[:n]); err != nil {
				if failed == nil || err.Error() != failed.Error() {
					c.warn(err)
				}
				failed = err
				c.close() // reopened by the next write
			} else {
				failed = nil
			}
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("console log %s: read: %w", c.Path, rerr)
		}
	}
}

func (c *ConsoleLog) warn(err error) {
	if c.Warn != nil {
		fmt.Fprintf(c.Warn, "console log %s: %v (output dropped until it can be written)\n", c.Path, err)
	}
}

// write appends p, rotating whenever the current file is full: the file
// reaches exactly Max bytes before the next byte goes to a new one.
func (c *ConsoleLog) write(p []byte) error {
	for len(p) > 0 {
		if c.f == nil {
			if err := c.open(); err != nil {
				return err
			}
		}
		if c.size >= c.Max {
			if err := c.rotate(); err != nil {
				return err
			}
		}
		n := int64(len(p))
		if room := c.Max - c.size; n > room {
			n = room
		}
		w, err := c.f.Write(p[:n])
		c.size += int64(w)
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// open opens Path for appending, taking its current size into account.
func (c *ConsoleLog) open() error {
	f, err := os.OpenFile(c.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	c.f, c.size = f, st.Size()
	return nil
}

// rotate renames the full log to Old and starts a new one. Readers that
// follow the log by name see the rename and reopen Path.
func (c *ConsoleLog) rotate() error {
	c.close()
	if err := os.Rename(c.Path, c.Old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rotate: %w", err)
	}
	f, err := os.OpenFile(c.Path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	c.f, c.size = f, 0
	return nil
}

func (c *ConsoleLog) close() {
	if c.f != nil {
		c.f.Close()
		c.f = nil
	}
}
