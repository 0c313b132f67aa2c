package forwarder

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// dialTarget connects to the VM's guestIP:httpPort from inside its network
// namespace. The socket is created while the calling OS thread is in that
// namespace and stays bound to it afterwards, so only the socket() call
// needs the switch; the thread is switched back before it is unlocked. A
// thread that cannot be switched back is left locked, so the runtime
// retires it instead of reusing it in the wrong namespace.
func dialTarget(ctx context.Context, d *net.Dialer, t *Target) (net.Conn, error) {
	if t.NetnsPath == "" {
		return d.DialContext(ctx, "tcp", t.Addr.String())
	}
	target, err := netns.GetFromPath(t.NetnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", t.NetnsPath, err)
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter netns %s: %w", t.NetnsPath, err)
	}
	conn, dialErr := d.DialContext(ctx, "tcp", t.Addr.String())
	if err := netns.Set(orig); err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("leave netns %s: %w", t.NetnsPath, err)
	}
	runtime.UnlockOSThread()
	return conn, dialErr
}
