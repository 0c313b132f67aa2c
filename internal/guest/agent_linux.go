package guest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/agentproto"
	"golang.org/x/sys/unix"
)

// Virtio device ids (/sys/bus/virtio/devices/*/device) of the two channels.
const (
	virtioConsole = 3  // virtio-serial: QEMU
	virtioVsock   = 19 // vsock: Firecracker
)

// How long the agent looks for its virtio-serial port once the device is
// there: the host names the port in a message after the driver probed.
const serialPortWait = 10 * time.Second

// serialRecheck is how often the serial agent looks for a host without being
// told: SIGIO is what wakes it, this only covers a signal lost.
const serialRecheck = time.Second

// serialHostWait is how long an answer waits for the port to learn that
// the host which asked is connected, polling every serialHostPoll.
const (
	serialHostWait = 2 * time.Second
	serialHostPoll = 20 * time.Millisecond
)

// startAgent serves the agent protocol on each channel the VMM gave this
// guest, for the rest of PID 1's life. A host older than the agent gives
// neither: then it does nothing.
func startAgent(h agentproto.Handler) {
	devices := virtioDevices("/sys/bus/virtio/devices")
	if devices[virtioVsock] {
		if l, err := listenVsock(agentproto.VsockPort); err != nil {
			logf("agent: vsock: %v", err)
		} else {
			logf("agent: listening on vsock port %d", agentproto.VsockPort)
			go serveListener(l, h)
		}
	}
	if devices[virtioConsole] {
		go serveSerial(h)
	}
}

// virtioDevices returns the ids of the virtio devices the kernel found.
func virtioDevices(dir string) map[int]bool {
	ids := map[int]bool{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "device"))
		if err != nil {
			continue
		}
		if id, err := strconv.ParseInt(strings.TrimSpace(string(b)), 0, 32); err == nil {
			ids[int(id)] = true
		}
	}
	return ids
}

func listenVsock(port uint32) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 8); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen on port %d: %w", port, err)
	}
	// Non-blocking, so the runtime's poller waits for connections.
	return os.NewFile(uintptr(fd), "vsock-listener"), nil
}

// serveListener serves every connection to the listener l (a non-blocking
// stream socket: the vsock one), each on its own.
func serveListener(l *os.File, h agentproto.Handler) {
	rc, err := l.SyscallConn()
	if err != nil {
		logf("agent: %v", err)
		return
	}
	for {
		var nfd int
		var aerr error
		if err := rc.Read(func(fd uintptr) bool {
			nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			return !errors.Is(aerr, unix.EAGAIN)
		}); err != nil {
			logf("agent: accept: %v", err)
			return
		}
		switch {
		case errors.Is(aerr, unix.EINTR), errors.Is(aerr, unix.ECONNABORTED):
			continue
		case aerr != nil:
			logf("agent: accept: %v", aerr)
			time.Sleep(time.Second) // e.g. out of file descriptors: do not spin
			continue
		}
		go func() {
			c := os.NewFile(uintptr(nfd), "agent connection")
			defer c.Close()
			if err := agentproto.Serve(c, h); err != nil {
				logf("agent: %v", err)
			}
		}()
	}
}

// serveSerial serves the virtio-serial port named agentproto.SerialName,
// one host connection after another.
//
// The port is always open in the guest; the host side connects and leaves.
// While no host is connected the driver reports the port readable and hung
// up at once, and read returns 0, so waiting cannot be a blocking read or
// poll: the agent asks for SIGIO (F_SETOWN, O_ASYNC), which the driver
// sends when the host connects or leaves and when data arrives, and looks
// again every serialRecheck in case a signal was lost. Each look serves
// what is there, until the port reads as ended: a host's requests until it
// leaves, or nothing. (Serving again at once instead of waiting kept the
// guest's only processor busy for as long as no host was connected: an
// idle VM took a host CPU.)
func serveSerial(h agentproto.Handler) {
	path, err := waitSerialPort("/sys/class/virtio-ports", "/dev", agentproto.SerialName, serialPortWait)
	if err != nil {
		logf("agent: %v", err)
		return
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		logf("agent: open %s: %v", path, err)
		return
	}
	sigio := make(chan os.Signal, 1)
	signal.Notify(sigio, unix.SIGIO)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETOWN, os.Getpid()); err != nil {
		logf("agent: %s: F_SETOWN: %v (looking for the host every %v instead)", path, err, serialRecheck)
	} else if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil {
		logf("agent: %s: F_GETFL: %v", path, err)
	} else if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_ASYNC); err != nil {
		logf("agent: %s: O_ASYNC: %v (looking for the host every %v instead)", path, err, serialRecheck)
	}
	logf("agent: serving %s on %s", agentproto.SerialName, path)
	port := serialPort{fd: fd, path: path}
	recheck := time.NewTicker(serialRecheck)
	for {
		// Each look gets a fresh reader: a partial line from a host that
		// left is gone with it. A host that connects while this one is
		// served leaves its signal waiting below.
		if err := agentproto.Serve(port, h); err != nil {
			logf("agent: %s: %v", path, err)
		}
		select {
		case <-sigio:
		case <-recheck.C:
		}
	}
}

// waitSerialPort finds the device node of the virtio-serial port called
// name, waiting up to timeout for the host to name it. devtmpfs normally
// has the node; without one it is made from the port's dev numbers.
func waitSerialPort(sysDir, devDir, name string, timeout time.Duration) (string, error) {
	for deadline := time.Now().Add(timeout); ; time.Sleep(50 * time.Millisecond) {
		p, err := findSerialPort(sysDir, devDir, name)
		if err == nil || !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return p, err
		}
	}
}

func findSerialPort(sysDir, devDir, name string) (string, error) {
	ents, _ := os.ReadDir(sysDir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysDir, e.Name(), "name"))
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		node := filepath.Join(devDir, e.Name())
		if _, err := os.Stat(node); err == nil {
			return node, nil
		}
		dev, err := os.ReadFile(filepath.Join(sysDir, e.Name(), "dev"))
		if err != nil {
			return "", fmt.Errorf("virtio-serial port %s (%s): no device node and %w", name, e.Name(), err)
		}
		major, minor, ok := strings.Cut(strings.TrimSpace(string(dev)), ":")
		maj, err1 := strconv.ParseUint(major, 10, 32)
		mnr, err2 := strconv.ParseUint(minor, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return "", fmt.Errorf("virtio-serial port %s (%s): dev %q is not major:minor", name, e.Name(), dev)
		}
		if err := unix.Mknod(node, unix.S_IFCHR|0o600, int(unix.Mkdev(uint32(maj), uint32(mnr)))); err != nil && !errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("virtio-serial port %s: mknod %s: %w", name, node, err)
		}
		return node, nil
	}
	return "", fmt.Errorf("no virtio-serial port named %s in %s: %w", name, sysDir, os.ErrNotExist)
}

// errHostGone: the host left while the agent was answering.
var errHostGone = errors.New("the host disconnected")

// serialPort is the guest's end of the port, used without blocking: a
// blocking write to a port whose host left waits for the next host and
// hands it an answer to a question it never asked.
type serialPort struct {
	fd   int
	path string
}

// wait blocks until the port is ready for events or the host leaves, and
// returns what poll reported.
func (p serialPort) wait(events int16) (int16, error) {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: events}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) { // SIGIO, among others
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("poll %s: %w", p.path, err)
		}
		return fds[0].Revents, nil
	}
}

// Read returns io.EOF once the host has left and its data is read.
func (p serialPort) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(p.fd, b)
		switch {
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			if _, err := p.wait(unix.POLLIN); err != nil {
				return 0, err
			}
		case err != nil:
			return 0, fmt.Errorf("read %s: %w", p.path, err)
		case n == 0:
			return 0, io.EOF
		default:
			return n, nil
		}
	}
}

func (p serialPort) Write(b []byte) (int, error) {
	done := 0
	var hostWait time.Duration
	for done < len(b) {
		n, err := unix.Write(p.fd, b[done:])
		switch {
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			// The host's buffers are full, or the port does not know of
			// the host: not any more, or not yet (the guest learns of a
			// connection from a control message a kernel worker handles,
			// and of its data from the data queue, so a host's first
			// request can be read before the port knows it is there).
			ev, err := p.wait(unix.POLLOUT)
			if err != nil {
				return done, err
			}
			if ev&unix.POLLOUT == 0 && ev&unix.POLLHUP != 0 {
				if hostWait >= serialHostWait {
					return done, errHostGone
				}
				time.Sleep(serialHostPoll)
				hostWait += serialHostPoll
			}
		case err != nil:
			return done, fmt.Errorf("write %s: %w", p.path, err)
		default:
			done += n
		}
	}
	return done, nil
}
