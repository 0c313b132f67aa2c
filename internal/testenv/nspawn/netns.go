package nspawn

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Dial connects from inside the container's network namespace (the
// container runs with --private-network), so that 127.0.0.1 is the
// container's loopback. Use literal addresses: name resolution would happen
// outside the namespace.
func (c *Container) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var conn net.Conn
	err := c.inNetns(func() (err error) {
		// The socket is created here, on this thread, and stays in the
		// container's namespace for its whole life.
		conn, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// Listen opens a listener inside the container's network namespace.
func (c *Container) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := c.inNetns(func() (err error) {
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// HTTPClient returns a client whose connections are made inside the
// container's network namespace.
func (c *Container) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext:       c.Dial,
			DisableKeepAlives: true,
		},
	}
}

// inNetns runs fn on an OS thread switched into the container's network
// namespace, and switches the thread back afterwards.
func (c *Container) inNetns(fn func() error) error {
	if c.Leader == 0 {
		return fmt.Errorf("nspawn: %s has no leader", c.Name)
	}
	target, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", c.Leader))
	if err != nil {
		return fmt.Errorf("nspawn: network namespace of %s: %w", c.Name, err)
	}
	defer target.Close()

	errc := make(chan error, 1)
	// A goroutine of its own: should switching back fail, its thread is
	// thrown away with it instead of serving other goroutines in the wrong
	// namespace.
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("nspawn: enter network namespace of %s: %w", c.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it ends with this goroutine.
			errc <- fmt.Errorf("nspawn: leave network namespace of %s: %w", c.Name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
