package guest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/agentproto"
	"golang.org/x/sys/unix"
)

func TestVirtioDevicesAndSerialPortBySysfs(t *testing.T) {
	sys := t.TempDir()
	for name, id := range map[string]string{"virtio0": "0x0001\n", "virtio1": "0x0003\n", "virtio2": "0x0013\n"} {
		os.MkdirAll(filepath.Join(sys, name), 0o755)
		os.WriteFile(filepath.Join(sys, name, "device"), []byte(id), 0o444)
	}
	if got := virtioDevices(sys); !reflect.DeepEqual(got, map[int]bool{1: true, virtioConsole: true, virtioVsock: true}) {
		t.Fatalf("virtioDevices = %v", got)
	}

	ports, dev := t.TempDir(), t.TempDir()
	for name, port := range map[string]string{"vport1p1": "org.qemu.guest_agent.0\n", "vport1p2": agentproto.SerialName + "\n", "vport1p3": ""} {
		os.MkdirAll(filepath.Join(ports, name), 0o755)
		os.WriteFile(filepath.Join(ports, name, "name"), []byte(port), 0o444)
		os.WriteFile(filepath.Join(ports, name, "dev"), []byte("245:2\n"), 0o444)
	}
	os.WriteFile(filepath.Join(dev, "vport1p2"), nil, 0o600)
	if got, err := findSerialPort(ports, dev, agentproto.SerialName); err != nil || got != filepath.Join(dev, "vport1p2") {
		t.Fatalf("findSerialPort = %q, %v", got, err)
	}
	if _, err := waitSerialPort(ports, dev, "org.mergen.other", 100*time.Millisecond); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a port that never appears: %v, want not-exist", err)
	}
	// Without devtmpfs's node the agent makes one (root only).
	if os.Geteuid() == 0 {
		os.Remove(filepath.Join(dev, "vport1p2"))
		got, err := findSerialPort(ports, dev, agentproto.SerialName)
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(got, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 245<<8|2 {
			t.Fatalf("made node %s: %+v, %v", got, st, err)
		}
	}
}

// The accept loop behind the vsock listener, on a unix socket (a test
// outside a guest has no vsock peer to connect from): connections are
// served side by side, each to its end, and one that hangs up early harms
// no other.
func TestServeListenerServesEachConnection(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 8); err != nil {
		t.Fatal(err)
	}
	l := os.NewFile(uintptr(fd), "listener")
	var mu sync.Mutex
	hostnames := map[string]bool{}
	go serveListener(l, func(r agentproto.Request) agentproto.Response {
		if r.Op == agentproto.OpIdentity {
			mu.Lock()
			hostnames[r.Identity.Hostname] = true
			mu.Unlock()
		}
		return agentproto.Response{OK: true}
	})

	dial := func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	idle := dial() // connected, never sends: must not hold up the others
	early := dial()
	early.Write([]byte(`{"op":"pi`))
	early.Close()
	a, b := dial(), dial()
	for i, c := range []net.Conn{a, b, a} {
		id := agentproto.Identity{Hostname: fmt.Sprintf("vm%d", i), UnixNano: 1, Entropy: make([]byte, 32)}
		if _, err := agentproto.Call(ctx, c, agentproto.Request{Op: agentproto.OpIdentity, Identity: &id}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if _, err := agentproto.Call(ctx, idle, agentproto.Request{Op: agentproto.OpPing}); err != nil {
		t.Fatalf("ping on the idle connection: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(hostnames) != 3 {
		t.Fatalf("the handler saw %v", hostnames)
	}
}
