package guest

import (
	"encoding/base64"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
)

func TestParseCmdline(t *testing.T) {
	env := base64.RawURLEncoding.EncodeToString([]byte(`{"B":"2","A":"x=y"}`))
	cases := []struct {
		name    string
		cmdline string
		want    Boot
		wantErr string
	}{
		{"nothing of ours", "console=ttyS0 reboot=k panic=1", Boot{StopTimeout: DefaultStopTimeout, Restart: RestartNo}, ""},
		{"full ip with dns", "ip=172.16.0.2::172.16.0.1:255.255.255.252:vm1:eth0:off:1.1.1.1",
			Boot{StopTimeout: DefaultStopTimeout, Restart: RestartNo, Net: &Net{Addr: net.IPv4(172, 16, 0, 2).To4(), Mask: net.CIDRMask(30, 32),
				Gateway: net.IPv4(172, 16, 0, 1).To4(), Hostname: "vm1", Device: "eth0", DNS: []net.IP{net.ParseIP("1.1.1.1")}}}, ""},
		{"ip without gateway or device", "ip=10.0.0.5:::255.255.255.0::",
			Boot{StopTimeout: DefaultStopTimeout, Restart: RestartNo, Net: &Net{Addr: net.IPv4(10, 0, 0, 5).To4(), Mask: net.CIDRMask(24, 32), Device: "eth0"}}, ""},
		{"env sorted by key", "mergen.env=" + env, Boot{StopTimeout: DefaultStopTimeout, Restart: RestartNo, Env: []string{"A=x=y", "B=2"}}, ""},
		{"padded base64 accepted", "mergen.env=" + base64.URLEncoding.EncodeToString([]byte(`{"K":"v"}`)),
			Boot{StopTimeout: DefaultStopTimeout, Restart: RestartNo, Env: []string{"K=v"}}, ""},
		{"env from the agent", "mergen.env_from=agent", Boot{StopTimeout: DefaultStopTimeout, Restart: RestartNo, EnvFromAgent: true}, ""},
		{"env from elsewhere", "mergen.env_from=disk", Boot{}, `mergen.env_from="disk": want agent`},
		{"argv with spaces and quotes", "mergen.argv=" + base64.RawURLEncoding.EncodeToString([]byte(`["sh","-c","echo 'a b' \"c\""]`)),
			Boot{StopTimeout: DefaultStopTimeout, Restart: RestartNo, Argv: []string{"sh", "-c", `echo 'a b' "c"`}}, ""},
		{"argv empty program", "mergen.argv=" + base64.RawURLEncoding.EncodeToString([]byte(`[""]`)), Boot{}, "mergen.argv: the program to run is empty"},
		{"argv not an array", "mergen.argv=" + base64.RawURLEncoding.EncodeToString([]byte(`{"a":"b"}`)), Boot{}, "mergen.argv: not a JSON array"},
		{"argv with NUL", "mergen.argv=" + base64.RawURLEncoding.EncodeToString([]byte(`["sh","a\u0000b"]`)), Boot{}, "argument 1 contains NUL"},
		{"restart", "mergen.restart=on-failure", Boot{StopTimeout: DefaultStopTimeout, Restart: RestartOnFailure}, ""},
		{"stop timeout", "mergen.stop_timeout=3", Boot{Restart: RestartNo, StopTimeout: 3 * time.Second}, ""},
		{"exit port hex", "mergen.exit_port=0xf4", Boot{StopTimeout: DefaultStopTimeout, Restart: RestartNo, ExitPort: 0xf4}, ""},
		{"exit port decimal", "mergen.exit_port=1281", Boot{StopTimeout: DefaultStopTimeout, Restart: RestartNo, ExitPort: 0x501}, ""},
		{"exit port zero", "mergen.exit_port=0", Boot{}, "mergen.exit_port"},
		{"exit port too large", "mergen.exit_port=0x10000", Boot{}, "mergen.exit_port"},
		{"bad stop timeout", "mergen.stop_timeout=0", Boot{}, "mergen.stop_timeout"},
		{"bad restart", "mergen.restart=sometimes", Boot{}, "mergen.restart"},
		{"bad address", "ip=10.0.0.300::10.0.0.1:255.255.255.0:h:eth0:off", Boot{}, "client address"},
		{"missing netmask", "ip=10.0.0.3::10.0.0.1::h:eth0:off", Boot{}, "netmask is missing"},
		{"non-contiguous netmask", "ip=10.0.0.3::10.0.0.1:255.0.255.0:h:eth0:off", Boot{}, "not contiguous"},
		{"dhcp refused", "ip=10.0.0.3::10.0.0.1:255.255.255.0:h:eth0:dhcp", Boot{}, "autoconf"},
		{"env not base64", "mergen.env=!!!", Boot{}, "mergen.env: not base64url"},
		{"env not an object", "mergen.env=" + base64.RawURLEncoding.EncodeToString([]byte(`["A=1"]`)), Boot{}, "JSON object"},
		{"env bad key", "mergen.env=" + base64.RawURLEncoding.EncodeToString([]byte(`{"A=B":"1"}`)), Boot{}, `variable name "A=B" is not a shell name`},
		{"env key not a shell name", "mergen.env=" + base64.RawURLEncoding.EncodeToString([]byte(`{"A.B":"1"}`)), Boot{}, `"A.B" is not a shell name`},
		{"env value with NUL", "mergen.env=" + base64.RawURLEncoding.EncodeToString([]byte(`{"A":"x\u0000y"}`)), Boot{}, "value of A contains NUL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseCmdline(c.cmdline)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %+v (net %+v), want %+v (net %+v)", got, got.Net, c.want, c.want.Net)
			}
		})
	}
}

// The exit device is found even on a command line mergen-init refuses:
// that guest fails, and must end with a failure.
func TestExitPortFromAnyCommandLine(t *testing.T) {
	for cmdline, want := range map[string]uint16{
		"console=ttyS0 mergen.exit_port=0xf4":                          0xf4,
		"mergen.env=!!! mergen.restart=sometimes mergen.exit_port=244": 0xf4,
		"console=ttyS0":         0,
		"mergen.exit_port=none": 0,
	} {
		if got := ExitPortFrom(cmdline); got != want {
			t.Errorf("ExitPortFrom(%q) = %#x, want %#x", cmdline, got, want)
		}
	}
}

func TestParseEnvFile(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{"values kept literally", "A=1\n# comment\n\n  \nB= spaced \"quoted\"\nC=\nD=x=y\r\n", []string{"A=1", `B= spaced "quoted"`, "C=", "D=x=y"}, ""},
		{"empty file", "", nil, ""},
		{"no equals", "A=1\nnonsense\n", nil, `line 2: "nonsense" is not KEY=VALUE`},
		{"empty key", "=1\n", nil, "line 1: empty variable name"},
		{"space in key", "MY VAR=1\n", nil, "line 1: variable name \"MY VAR\" contains whitespace"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseEnvFile([]byte(c.in))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

func TestMergeEnvLaterLayerWinsInFirstPosition(t *testing.T) {
	got := MergeEnv(
		[]string{"PATH=/bin", "A=image", "B=image"},
		[]string{"B=envdisk", "C=envdisk"},
		[]string{"A=cmdline"},
	)
	want := []string{"PATH=/bin", "A=cmdline", "B=envdisk", "C=envdisk"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if v, ok := LookupEnv(got, "B"); !ok || v != "envdisk" {
		t.Fatalf("LookupEnv(B) = %q, %v", v, ok)
	}
}

func TestPayloadEnvLayersAndDefaults(t *testing.T) {
	got := PayloadEnv([]string{"FOO=image", "BAR=image"}, []string{"BAR=disk"}, []string{"FOO=extra"}, "/home/app", "vm1")
	want := []string{"HOME=/home/app", "HOSTNAME=vm1", "PATH=" + defaultPath, "FOO=extra", "BAR=disk"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	// Layers that set PATH, HOME or HOSTNAME win over the defaults.
	got = PayloadEnv([]string{"PATH=/bin", "HOSTNAME=fixed"}, nil, []string{"HOME=/srv"}, "/home/app", "vm1")
	want = []string{"HOME=/srv", "HOSTNAME=fixed", "PATH=/bin"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// The env script, sourced by a real shell, gives back every value exactly.
func TestEnvScriptIsSourceableAndQuoted(t *testing.T) {
	env := []string{"PLAIN=abc", "EMPTY=", "QUOTE=it's", "QUOTES='''", "DOLLAR=$HOME `id` $(id)", "NEWLINE=a\nb",
		"BACKSLASH=a\\nb\\", "EQUALS=a=b", "SPACE= x  y "}
	script, err := EnvScript(env)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(script), "PLAIN='abc'\nEMPTY=''\nQUOTE='it'\\''s'\n") {
		t.Errorf("script starts %q", script)
	}
	f := filepath.Join(t.TempDir(), "env")
	if err := os.WriteFile(f, script, 0o600); err != nil {
		t.Fatal(err)
	}
	// Print each variable NUL-terminated, as the shell sees it after sourcing.
	var names []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		names = append(names, `"$`+k+`"`)
	}
	out, err := exec.Command(testenv.Tool(t, "sh"), "-c", `. "$0" && printf '%s\0' `+strings.Join(names, " "), f).Output()
	if err != nil {
		t.Fatalf("sh: %v", err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	for i, kv := range env {
		_, v, _ := strings.Cut(kv, "=")
		if i >= len(got) || got[i] != v {
			t.Errorf("%s: shell read %q", kv, got)
		}
	}

	for _, bad := range [][]string{{"A-B=1"}, {"=1"}, {"NOEQUALS"}, {"A=x\x00y"}} {
		if _, err := EnvScript(bad); err == nil {
			t.Errorf("EnvScript(%q) accepted it", bad)
		}
	}
	if s, err := EnvScript(nil); err != nil || len(s) != 0 {
		t.Errorf("no extraEnv: %q, %v; want an empty file", s, err)
	}
}
