package forwarder

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"syscall"

	"github.com/vishvananda/netns"
)

// hostNetns is the forwarder's own network namespace, the one every dial
// returns to, opened once instead of on every connection. New opens it
// before any dial runs, while no thread of the process has left it.
var hostNetns = sync.OnceValues(netns.Get)

// dialTarget connects to the VM's guestIP:httpPort from inside its network
// namespace. A socket belongs to the namespace it was created in, so only
// socket() needs the switch: the calling OS thread is locked and moved into
// the VM's namespace, the dialer creates the socket, and its Control hook
// (which runs before connect) moves the thread back and unlocks it. The
// connect itself then waits like any other, without holding a thread. A
// thread that cannot be moved back stays locked, so the runtime retires it
// instead of reusing it in the wrong namespace.
func dialTarget(ctx context.Context, d *net.Dialer, t *Target) (net.Conn, error) {
	if t.NetnsPath == "" {
		return d.DialContext(ctx, "tcp", t.Addr.String())
	}
	target, err := netns.GetFromPath(t.NetnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", t.NetnsPath, err)
	}
	defer target.Close()

	orig, err := hostNetns()
	if err != nil {
		return nil, fmt.Errorf("current netns: %w", err)
	}
	runtime.LockOSThread()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter netns %s: %w", t.NetnsPath, err)
	}

	inTarget := true
	var leaveErr error
	leave := func() {
		if !inTarget {
			return
		}
		inTarget = false
		if leaveErr = netns.Set(orig); leaveErr == nil {
			runtime.UnlockOSThread()
		}
	}
	vd := *d
	vd.ControlContext = func(context.Context, string, string, syscall.RawConn) error {
		leave()
		if leaveErr != nil {
			return errors.New("cannot leave the VM's namespace")
		}
		return nil
	}
	conn, dialErr := vd.DialContext(ctx, "tcp", t.Addr.String())
	leave() // when the dial failed before creating a socket
	if leaveErr != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("leave netns %s: %w", t.NetnsPath, leaveErr)
	}
	return conn, dialErr
}
