package forwarder

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// certCheckInterval bounds how often the handshake path stats the files.
const certCheckInterval = time.Second

// certFile serves the certificate from a cert/key file pair and reloads it
// when either file changes (size or modification time), checked at most
// once per certCheckInterval from the handshake path itself: no watcher, no
// restart. A pair that fails to load (for example half-written during a
// renewal) keeps the previous certificate in service and is retried.
type certFile struct {
	certPath, keyPath string
	log               *slog.Logger
	onReload          func(ok bool)

	cert      atomic.Pointer[tls.Certificate]
	nextCheck atomic.Int64 // unix nanos
	mu        sync.Mutex
	stamp     [2]fileID
}

type fileID struct {
	mod  time.Time
	size int64
}

func newCertFile(certPath, keyPath string, log *slog.Logger, onReload func(bool)) (*certFile, error) {
	c := &certFile{certPath: certPath, keyPath: keyPath, log: log, onReload: onReload}
	stamp, err := c.stat()
	if err != nil {
		return nil, err
	}
	if err := c.load(stamp); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *certFile) stat() ([2]fileID, error) {
	var s [2]fileID
	for i, p := range []string{c.certPath, c.keyPath} {
		st, err := os.Stat(p)
		if err != nil {
			return s, fmt.Errorf("tls: %w", err)
		}
		s[i] = fileID{st.ModTime(), st.Size()}
	}
	return s, nil
}

func (c *certFile) load(stamp [2]fileID) error {
	pair, err := tls.LoadX509KeyPair(c.certPath, c.keyPath)
	if err != nil {
		return fmt.Errorf("tls: load %s and %s: %w", c.certPath, c.keyPath, err)
	}
	c.cert.Store(&pair)
	c.stamp = stamp
	return nil
}

// get is tls.Config.GetCertificate.
func (c *certFile) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	now := time.Now().UnixNano()
	next := c.nextCheck.Load()
	if now >= next && c.nextCheck.CompareAndSwap(next, now+int64(certCheckInterval)) {
		c.maybeReload()
	}
	return c.cert.Load(), nil
}

func (c *certFile) maybeReload() {
	c.mu.Lock()
	defer c.mu.Unlock()
	stamp, err := c.stat()
	if err != nil {
		c.log.Warn("certificate check failed, keeping the loaded one", "err", err)
		return
	}
	if stamp == c.stamp {
		return
	}
	if err := c.load(stamp); err != nil {
		c.log.Error("certificate reload failed, keeping the loaded one", "err", err)
		c.onReload(false)
		return
	}
	c.log.Info("certificate reloaded", "cert", c.certPath, "key", c.keyPath)
	c.onReload(true)
}
