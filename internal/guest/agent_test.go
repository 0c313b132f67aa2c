package guest

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/agentproto"
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
