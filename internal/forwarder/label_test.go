package forwarder

import (
	"errors"
	"strings"
	"testing"
)

func TestDomainLabel(t *testing.T) {
	d, err := NewDomain("vm", "Example.com.")
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "vm.example.com" {
		t.Fatalf("domain = %q, want vm.example.com", d.Name)
	}
	cases := []struct {
		sni     string
		label   string
		wantErr error
	}{
		{"app1.vm.example.com", "app1", nil},
		{"APP1.VM.Example.COM", "app1", nil},
		{"084604f6.vm.example.com", "084604f6", nil},
		{"084604f6-1c2d-4e5f-8a9b-0c1d2e3f4a5b.vm.example.com", "084604f6-1c2d-4e5f-8a9b-0c1d2e3f4a5b", nil},
		{"app1.vm.example.com.", "app1", nil},
		{"", "", ErrNoServerName},
		{"vm.example.com", "", ErrOtherDomain},
		{"app1.example.com", "", ErrOtherDomain},
		{"app1.vm.example.org", "", ErrOtherDomain},
		{"app1.xvm.example.com", "", ErrOtherDomain},
		{"a.b.vm.example.com", "", ErrNestedLabel},
		{".vm.example.com", "", ErrInvalidLabel},
		{"-app.vm.example.com", "", ErrInvalidLabel},
		{"app-.vm.example.com", "", ErrInvalidLabel},
		{"app_1.vm.example.com", "", ErrInvalidLabel},
		{"app%00.vm.example.com", "", ErrInvalidLabel},
		{"ápp.vm.example.com", "", ErrInvalidLabel},
		{strings.Repeat("a", 64) + ".vm.example.com", "", ErrInvalidLabel},
		{strings.Repeat("a", 63) + ".vm.example.com", strings.Repeat("a", 63), nil},
		{strings.Repeat("a.", 200) + "vm.example.com", "", ErrNameTooLong},
	}
	for _, c := range cases {
		got, err := d.Label(c.sni)
		if c.wantErr != nil {
			if !errors.Is(err, c.wantErr) {
				t.Errorf("Label(%q) error = %v, want %v", c.sni, err, c.wantErr)
			}
			continue
		}
		if err != nil || got != c.label {
			t.Errorf("Label(%q) = %q, %v; want %q", c.sni, got, err, c.label)
		}
	}
}

func TestNewDomain(t *testing.T) {
	cases := []struct {
		prefix, suffix, want string
		ok                   bool
	}{
		{"", "localhost", "localhost", true},
		{"vm", "example.com", "vm.example.com", true},
		{"", ".vm.example.com.", "vm.example.com", true},
		{"", "", "", false},
		{"vm", "", "", false},
		{"", "exa mple.com", "", false},
		{"", "a..b", "", false},
	}
	for _, c := range cases {
		d, err := NewDomain(c.prefix, c.suffix)
		if (err == nil) != c.ok || d.Name != c.want {
			t.Errorf("NewDomain(%q, %q) = %q, %v; want %q ok=%v", c.prefix, c.suffix, d.Name, err, c.want, c.ok)
		}
	}
}

// FuzzDomainLabel checks that any server name either yields a label made
// only of [a-z0-9-], 1-63 bytes, that maps back to the same name, or an
// error.
func FuzzDomainLabel(f *testing.F) {
	d := Domain{Name: "vm.example.com"}
	for _, s := range []string{"app.vm.example.com", "", "vm.example.com", "A.VM.EXAMPLE.COM.", "a..vm.example.com", "\x00.vm.example.com"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sni string) {
		label, err := d.Label(sni)
		if err != nil {
			if label != "" {
				t.Fatalf("Label(%q) returned %q with error %v", sni, label, err)
			}
			return
		}
		if checkLabel(label) != nil {
			t.Fatalf("Label(%q) = %q, not a valid label", sni, label)
		}
		if want := strings.TrimSuffix(strings.ToLower(sni), "."); label+"."+d.Name != want {
			t.Fatalf("Label(%q) = %q does not rebuild the name %q", sni, label, want)
		}
	})
}
