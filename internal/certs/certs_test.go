package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWildcardCoversDomainAndOneLabel(t *testing.T) {
	for _, keyType := range []string{"", KeyECDSAP256, KeyRSA2048} {
		t.Run("key="+keyType, func(t *testing.T) {
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			p, err := Wildcard(Options{Domain: "VM.Example.com.", KeyType: keyType, Now: now, Valid: 30 * 24 * time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			pair, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
			if err != nil {
				t.Fatalf("certificate and key do not match: %v", err)
			}
			cert, err := x509.ParseCertificate(pair.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			switch k := cert.PublicKey.(type) {
			case *ecdsa.PublicKey:
				if keyType == KeyRSA2048 || k.Curve != elliptic.P256() {
					t.Errorf("key type %q gave an ECDSA key on %s", keyType, k.Curve.Params().Name)
				}
			case *rsa.PublicKey:
				if keyType != KeyRSA2048 || k.N.BitLen() != 2048 {
					t.Errorf("key type %q gave RSA-%d", keyType, k.N.BitLen())
				}
			}
			pool := x509.NewCertPool()
			pool.AddCert(cert)
			at := now.Add(time.Hour)
			for name, ok := range map[string]bool{
				"app1.vm.example.com": true,
				"vm.example.com":      true,
				"a.b.vm.example.com":  false,
				"app1.example.com":    false,
			} {
				_, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: pool, CurrentTime: at})
				if (err == nil) != ok {
					t.Errorf("verify %s: %v, want ok=%v", name, err, ok)
				}
			}
			if !cert.NotAfter.Equal(now.Add(30 * 24 * time.Hour)) {
				t.Errorf("NotAfter = %s", cert.NotAfter)
			}
		})
	}
}

func TestWildcardBadInput(t *testing.T) {
	cases := []struct {
		o    Options
		want string
	}{
		{Options{}, "empty"},
		{Options{Domain: "a..b"}, "1-63"},
		{Options{Domain: "bad_domain.com"}, "character"},
		{Options{Domain: "-a.com"}, "hyphen"},
		{Options{Domain: "ok.com", KeyType: "dsa"}, `key type "dsa"`},
		{Options{Domain: "ok.com", Valid: -time.Hour}, "negative"},
	}
	for _, c := range cases {
		if _, err := Wildcard(c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Wildcard(%+v) = %v, want error containing %q", c.o, err, c.want)
		}
	}
}

func TestWriteFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	p, err := Wildcard(Options{Domain: "vm.test"})
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err := WriteFiles(dir, "vm.test", p, false)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(certPath) != "wildcard.vm.test.crt" || filepath.Base(keyPath) != "wildcard.vm.test.key" {
		t.Errorf("paths %s %s", certPath, keyPath)
	}
	st, err := os.Stat(keyPath)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	if _, err := tls.LoadX509KeyPair(certPath, keyPath); err != nil {
		t.Errorf("written pair does not load: %v", err)
	}
	if _, _, err := WriteFiles(dir, "vm.test", p, false); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("second write without overwrite: %v, want refusal", err)
	}
	if _, _, err := WriteFiles(dir, "vm.test", p, true); err != nil {
		t.Errorf("overwrite: %v", err)
	}
}
