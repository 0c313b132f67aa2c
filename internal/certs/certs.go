// Package certs makes the wildcard TLS certificate the forwarder serves: a
// self-signed certificate for "*.domain" and "domain", with an ECDSA P-256
// key by default. Operators with a real CA replace the two files; the
// forwarder reloads them when they change.
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/atomicfile"
)

// Key algorithms accepted by Options.KeyType.
const (
	KeyECDSAP256 = "ecdsa-p256"
	KeyRSA2048   = "rsa-2048"
)

// Options describe the certificate to make.
type Options struct {
	Domain  string        // e.g. "vm.example.com"; required
	Valid   time.Duration // default 365 days
	KeyType string        // KeyECDSAP256 (default) or KeyRSA2048
	Now     time.Time     // start of validity; default now
}

// Pair is a PEM-encoded certificate and private key.
type Pair struct {
	CertPEM []byte
	KeyPEM  []byte
}

// Wildcard creates a self-signed certificate valid for "*.Domain" and
// "Domain".
func Wildcard(o Options) (Pair, error) {
	domain := strings.Trim(strings.ToLower(strings.TrimSpace(o.Domain)), ".")
	if err := checkDomain(domain); err != nil {
		return Pair{}, fmt.Errorf("certs: domain %q: %w", o.Domain, err)
	}
	if o.Valid == 0 {
		o.Valid = 365 * 24 * time.Hour
	}
	if o.Valid < 0 {
		return Pair{}, fmt.Errorf("certs: validity %s is negative", o.Valid)
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	var key crypto.Signer
	var err error
	switch o.KeyType {
	case "", KeyECDSAP256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyRSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		return Pair{}, fmt.Errorf("certs: key type %q unknown (want %s or %s)", o.KeyType, KeyECDSAP256, KeyRSA2048)
	}
	if err != nil {
		return Pair{}, fmt.Errorf("certs: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return Pair{}, fmt.Errorf("certs: serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "*." + domain},
		DNSNames:              []string{"*." + domain, domain},
		NotBefore:             o.Now.Add(-5 * time.Minute), // tolerate small clock skew
		NotAfter:              o.Now.Add(o.Valid),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		// Self-signed and used as its own trust anchor by clients that pin it.
		IsCA: true,
	}
	if _, ok := key.(*rsa.PrivateKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return Pair{}, fmt.Errorf("certs: sign: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, fmt.Errorf("certs: encode key: %w", err)
	}
	return Pair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// FileNames are the names WriteFiles uses in its directory:
// wildcard.<domain>.crt and wildcard.<domain>.key.
func FileNames(domain string) (cert, key string) {
	domain = strings.Trim(strings.ToLower(strings.TrimSpace(domain)), ".")
	return "wildcard." + domain + ".crt", "wildcard." + domain + ".key"
}

// WriteFiles writes the pair into dir atomically (the key first, mode 0600,
// so a reader never sees a new certificate with an old key for long) and
// returns the two paths. It refuses to replace existing files unless
// overwrite is set.
func WriteFiles(dir, domain string, p Pair, overwrite bool) (certPath, keyPath string, err error) {
	cn, kn := FileNames(domain)
	certPath, keyPath = filepath.Join(dir, cn), filepath.Join(dir, kn)
	if !overwrite {
		for _, path := range []string{certPath, keyPath} {
			if _, err := os.Stat(path); err == nil {
				return "", "", fmt.Errorf("certs: %s exists (use --force to replace it)", path)
			} else if !errors.Is(err, os.ErrNotExist) {
				return "", "", fmt.Errorf("certs: %w", err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("certs: create %s: %w", dir, err)
	}
	if err := atomicfile.WriteFile(keyPath, p.KeyPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("certs: write key: %w", err)
	}
	if err := atomicfile.WriteFile(certPath, p.CertPEM, 0o644); err != nil {
		return "", "", fmt.Errorf("certs: write certificate: %w", err)
	}
	return certPath, keyPath, nil
}

func checkDomain(d string) error {
	if d == "" {
		return errors.New("empty")
	}
	if len(d) > 253-2 {
		return errors.New("too long")
	}
	for _, part := range strings.Split(d, ".") {
		if part == "" || len(part) > 63 {
			return fmt.Errorf("label %q must be 1-63 characters", part)
		}
		if part[0] == '-' || part[len(part)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with a hyphen", part)
		}
		for _, c := range part {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("label %q has character %q", part, c)
			}
		}
	}
	return nil
}
