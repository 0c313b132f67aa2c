package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/proc"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/vmnet"
	"github.com/mergenhq/mergen/internal/wire"
)

// BenchmarkCreateToHTTP measures, in one run, the time from POST /v1/vms
// (autoStart) to the guest's HTTP port answering on its published host port,
// and the same kernel, initramfs and disks booted by a bare
// qemu-system-x86_64 command until the guest's HTTP port answers inside its
// namespace — and prints the ratio: mergen's overhead over the VMM itself.
//
// A guest's boot under emulation moves by a tenth and more from one run to
// the next, more than mergen adds: the benchmark also prints the median of
// the runs' ratios (each mergen boot beside the bare one after it), and
// mergen's own part, from the POST to its VMM process's start (read from
// the VMM's pid file, to the kernel's 10 ms tick), which no boot is in, and
// each guest's own boot as its console reports it (kernel start to the
// payload's exec, the guest's clock): what the guest did is apart from
// what was done around it.
//
//	go test -run '^$' -bench CreateToHTTP -benchtime 3x ./test/e2e/
func BenchmarkCreateToHTTP(b *testing.B) {
	testenv.RequireRoot(b)
	vh := newVMHost(b, "detached", "172.31.253.0/24")
	h, assets := vh.host, vh.assets
	payload := webPayload(b, h.path("data", "images", "web"), "bench\n", "8080")
	d := h.startBinary(b, vh.mergen, freePort(b))

	var viaMergen, bare, toVMM, guestMergen, guestBare time.Duration
	var ratios []float64
	for i := 0; i < b.N; i++ {
		// mergen: API call to HTTP answer.
		t0 := time.Now()
		var vm wire.VM
		code, body := call(b, "POST", d.base+"/v1/vms", map[string]any{
			"payloadDisk": payload, "memMiB": 256, "autoStart": true, "httpPort": 8080,
			"ports": []map[string]any{{"guest": 8080}},
		}, &vm)
		if code != 201 {
			b.Fatalf("create: %d %s", code, body)
		}
		port := vm.Network.Ports[0].Host
		if err := pollTCP(func() (net.Conn, error) { return net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)) }, 2*time.Minute); err != nil {
			b.Fatalf("mergen guest: %v", err)
		}
		took := time.Since(t0)
		viaMergen += took
		vmmProc, err := proc.ReadPIDFile(h.store(b).Paths(vm.ID).PIDFile)
		if err != nil || vmmProc.Start == 0 {
			b.Fatalf("the VMM's pid file: %+v, %v", vmmProc, err)
		}
		toVMM += testenv.BootTicksTime(b, vmmProc.Start).Sub(t0)
		guestMergen += guestBoot(b, h.store(b).Paths(vm.ID).ConsoleLog)
		call(b, "DELETE", d.base+"/v1/vms/"+vm.ID, nil, nil)

		// Bare QEMU with the same kernel, initramfs, disks and command line.
		bareLog := h.path(fmt.Sprintf("bare-%d.log", i))
		bareTook := bareQEMU(b, assets, payload, bareLog)
		bare += bareTook
		guestBare += guestBoot(b, bareLog)
		ratios = append(ratios, took.Seconds()/bareTook.Seconds())
	}
	n := float64(b.N)
	slices.Sort(ratios)
	b.ReportMetric(viaMergen.Seconds()/n, "mergen-s/op")
	b.ReportMetric(bare.Seconds()/n, "bare-qemu-s/op")
	b.ReportMetric(viaMergen.Seconds()/bare.Seconds(), "ratio")
	fmt.Printf("create→HTTP: mergen %.2fs, bare qemu %.2fs, ratio %.2f (mean of %d); median of the runs' ratios %.2f (%.2f–%.2f); POST → mergen's VMM started %.0f ms; the guests' own boot (kernel start → payload exec) mergen %.2fs, bare %.2fs\n",
		viaMergen.Seconds()/n, bare.Seconds()/n, viaMergen.Seconds()/bare.Seconds(), b.N,
		ratios[len(ratios)/2], ratios[0], ratios[len(ratios)-1], float64(toVMM.Milliseconds())/n,
		guestMergen.Seconds()/n, guestBare.Seconds()/n)
}

// bootTimeline is mergen-init's line with the guest's own boot time.
var bootTimeline = regexp.MustCompile(`mergen-init: boot timeline: kernel-start->payload-exec ([0-9.]+)s`)

// guestBoot is the time from the guest kernel's start to the payload's
// exec, as mergen-init printed it on the console logged at path.
func guestBoot(b *testing.B, path string) time.Duration {
	b.Helper()
	console, err := os.ReadFile(path)
	if err != nil {
		b.Fatalf("the guest's console: %v", err)
	}
	m := bootTimeline.FindSubmatch(console)
	if m == nil {
		b.Fatalf("the guest's console %s has no boot timeline", path)
	}
	s, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		b.Fatal(err)
	}
	return time.Duration(s * float64(time.Second))
}

// bareQEMU boots the guest with a hand-written QEMU command in a namespace
// made for it and returns the time until its HTTP port accepts.
func bareQEMU(b *testing.B, assets, payload, console string) time.Duration {
	id := store.NewID()
	c := vmnet.Config{ID: id, Netns: store.NetnsName(id), Tap: store.TapName(id), Veth: store.VethName(id),
		GuestIP: netip.MustParseAddr("172.31.254.2"), Gateway: netip.MustParseAddr("172.31.254.1"), PrefixLen: 24, MAC: vmnet.MACFor(id)}
	if err := vmnet.Setup(context.Background(), c); err != nil {
		b.Fatal(err)
	}
	defer vmnet.Teardown(context.Background(), c)
	args := []string{"netns", "exec", c.Netns, "qemu-system-x86_64",
		"-M", "q35", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "file:" + console,
		"-kernel", filepath.Join(assets, "vmlinuz"), "-initrd", filepath.Join(assets, "initrd.img"),
		"-append", "console=ttyS0 reboot=k panic=1 init=/sbin/init ip=172.31.254.2::172.31.254.1:255.255.255.0:bare:eth0:off",
		"-drive", "file=" + filepath.Join(assets, "golden-rootfs.ext4") + ",if=virtio,format=raw,readonly=on",
		"-drive", "file=" + filepath.Join(assets, "agent-rootfs.ext4") + ",if=virtio,format=raw,readonly=on",
		"-drive", "file=" + payload + ",if=virtio,format=raw,readonly=on",
		"-netdev", "tap,id=n0,ifname=" + c.Tap + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + c.MAC,
	}
	t0 := time.Now()
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	err := pollTCP(func() (conn net.Conn, err error) {
		err = vmnet.RunInNetns(c.Netns, func() error {
			conn, err = net.DialTimeout("tcp", "172.31.254.2:8080", time.Second)
			return err
		})
		return conn, err
	}, 2*time.Minute)
	if err != nil {
		b.Fatalf("bare guest: %v", err)
	}
	return time.Since(t0)
}

func pollTCP(dial func() (net.Conn, error), limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := dial()
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
