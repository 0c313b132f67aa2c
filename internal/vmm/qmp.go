package vmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
)

// qmpConn is one QMP session over QEMU's unix socket: JSON objects one per
// line, a greeting, a capabilities handshake, then commands answered in
// order, with asynchronous events interleaved.
type qmpConn struct {
	socket string
	ctx    context.Context // closes conn when it ends
	conn   net.Conn
	dec    *json.Decoder
	stop   func() bool
}

// qmpMessage is any object QEMU sends: the greeting, a command's return or
// error, or an event.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	Event  string          `json:"event"`
}

type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return e.Class + ": " + e.Desc }

// dialQMP connects, reads the greeting and leaves capabilities negotiation
// mode. The connection is closed when ctx ends, which unblocks any read.
func dialQMP(ctx context.Context, socket string) (*qmpConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", socket, err)
	}
	c := &qmpConn{socket: socket, ctx: ctx, conn: conn, dec: json.NewDecoder(bufio.NewReader(conn))}
	c.stop = context.AfterFunc(ctx, func() { conn.Close() })
	var greeting qmpMessage
	if err := c.dec.Decode(&greeting); err != nil {
		c.Close()
		return nil, c.wrap("greeting", err)
	}
	if greeting.QMP == nil {
		c.Close()
		return nil, fmt.Errorf("qmp %s: greeting: not a QMP server", socket)
	}
	if err := c.execute("qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *qmpConn) Close() error {
	c.stop()
	return c.conn.Close()
}

// execute sends one command and waits for its answer, skipping events.
func (c *qmpConn) execute(cmd string, args, out any) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: %s: %w", c.socket, cmd, err)
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return c.wrap(cmd, err)
	}
	return c.answer(cmd, out)
}

// answer reads the answer to cmd, skipping events.
func (c *qmpConn) answer(cmd string, out any) error {
	for {
		var m qmpMessage
		if err := c.dec.Decode(&m); err != nil {
			return c.wrap(cmd, err)
		}
		switch {
		case m.Event != "":
			continue
		case m.Error != nil:
			return fmt.Errorf("qmp %s: %s: %w", c.socket, cmd, m.Error)
		case m.Return != nil:
			if out != nil {
				if err := json.Unmarshal(m.Return, out); err != nil {
					return fmt.Errorf("qmp %s: %s: decode answer: %w", c.socket, cmd, err)
				}
			}
			return nil
		}
	}
}

// wrap names the operation, and reports a context's end rather than the
// "use of closed connection" it caused.
func (c *qmpConn) wrap(what string, err error) error {
	if ctxErr := c.ctx.Err(); ctxErr != nil && errors.Is(err, net.ErrClosed) {
		err = ctxErr
	}
	return fmt.Errorf("qmp %s: %s: %w", c.socket, what, err)
}
