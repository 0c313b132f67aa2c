package store

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/layout"
)

func TestBootArgsCarryTheGuestNetworkExtraEnvThenTheCallersArguments(t *testing.T) {
	m := Meta{ID: fixtureID, GuestIP: "172.30.0.9", Gateway: "172.30.0.1", PrefixLen: 24,
		Tags: map[string]string{"name": "web"}, ExtraEnv: map[string]string{"GREETING": "hello world; $HOME"}}
	got := BootArgs(m, "  quiet loglevel=3 ")
	wantPrefix := "console=ttyS0 reboot=k panic=1 init=/sbin/init ip=172.30.0.9::172.30.0.1:255.255.255.0:web:eth0:off mergen.env="
	if !strings.HasPrefix(got, wantPrefix) || !strings.HasSuffix(got, " quiet loglevel=3") {
		t.Fatalf("BootArgs = %q", got)
	}
	// extraEnv travels as one token the kernel cannot split or expand.
	enc := strings.Fields(strings.TrimPrefix(got, wantPrefix))[0]
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		t.Fatal(err)
	}
	var env map[string]string
	if err := json.Unmarshal(raw, &env); err != nil || env["GREETING"] != "hello world; $HOME" {
		t.Fatalf("mergen.env decodes to %v (%v)", env, err)
	}
	// Without a name the hostname comes from the id; without env no token.
	got = BootArgs(Meta{ID: fixtureID, GuestIP: "10.0.0.2", Gateway: "10.0.0.1", PrefixLen: 16}, "")
	if !strings.Contains(got, ":255.255.0.0:vm-3f0c2b1e:eth0:off") || strings.Contains(got, "mergen.env") {
		t.Fatalf("BootArgs = %q", got)
	}
}

func TestSpecAttachesDisksInConventionalOrderWithPathsFromTheLayout(t *testing.T) {
	l := layout.Layout{ConfigRoot: "/c", RunRoot: "/r", DataRoot: "/d"}
	m := Meta{ID: fixtureID, VCPU: 2, MemMiB: 256, TapName: "tap-x", MAC: "02:00:00:00:00:01",
		Kernel: "/b/vmlinux", Disks: Disks{Rootfs: "/b/root", Payload: "/i/p", Data: "/d/data"},
		DiskRoots: map[string]string{"kernel": "/b", "rootfs": "/b", "payloadDisk": "/i", "dataDisk": "/d"}}
	s := Spec(m, l.VM(fixtureID))
	if s.SocketPath != "/r/"+fixtureID+"/vmm.sock" || s.WorkDir != "/r/"+fixtureID {
		t.Errorf("socket %q, workdir %q", s.SocketPath, s.WorkDir)
	}
	var ids []string
	for _, d := range s.Drives {
		ids = append(ids, d.ID)
		if d.ReadOnly == (d.ID == "data") {
			t.Errorf("drive %s read-only %v", d.ID, d.ReadOnly)
		}
	}
	if strings.Join(ids, ",") != "rootfs,payload,data" || !s.Drives[0].Root {
		t.Errorf("drives %v", s.Drives)
	}
	// Each file is opened at start below the root the record names.
	if s.KernelBeneath != "/b" || s.Drives[0].Beneath != "/b" || s.Drives[1].Beneath != "/i" || s.Drives[2].Beneath != "/d" {
		t.Errorf("roots: kernel %q, drives %+v", s.KernelBeneath, s.Drives)
	}
	var fields []string
	for _, f := range m.Files() {
		fields = append(fields, f.Field+"="+f.Path)
	}
	if got := strings.Join(fields, " "); got != "kernel=/b/vmlinux rootfs=/b/root payloadDisk=/i/p dataDisk=/d/data" {
		t.Errorf("Files() = %s", got)
	}
}

func TestBootArgsCarryTheVMsArgvAsOneToken(t *testing.T) {
	argv := []string{"sh", "-c", "echo 'a b' $HOME; exit 3"}
	got := BootArgs(Meta{ID: fixtureID, Argv: argv}, "")
	var enc string
	for _, f := range strings.Fields(got) {
		if v, ok := strings.CutPrefix(f, "mergen.argv="); ok {
			enc = v
		}
	}
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		t.Fatalf("BootArgs = %q: %v", got, err)
	}
	var back []string
	if err := json.Unmarshal(raw, &back); err != nil || strings.Join(back, "|") != strings.Join(argv, "|") {
		t.Fatalf("mergen.argv decodes to %q (%v), want %q", back, err, argv)
	}
	if got := BootArgs(Meta{ID: fixtureID}, ""); strings.Contains(got, "mergen.argv") {
		t.Fatalf("a VM without argv got %q", got)
	}
}
