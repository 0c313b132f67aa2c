package forwarder

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"net"
	"strings"
	"sync"
)

// recordWriter sends TLS 1.3 records of its own on a connection whose
// handshake crypto/tls completed: crypto/tls sends a KeyUpdate only on its
// own schedule (after many records), never on demand, so the tests write
// them here. The client's application traffic secret comes from the
// handshake's key log; keys, nonces, the record format and the key update
// follow RFC 8446 (7.1, 7.2, 7.3, 5.2, 4.6.3). Only the two AES-GCM suites
// are implemented: the forwarder picks one of them on a machine with AES
// instructions, and the writer refuses the ChaCha20 suite rather than
// pretend.
//
// After the handshake the writer owns the raw connection: the *tls.Conn is
// never used again, so nothing else advances the record sequence number.
type recordWriter struct {
	conn   net.Conn
	newH   func() hash.Hash
	keyLen int
	secret []byte
	aead   cipher.AEAD
	iv     []byte
	seq    uint64
}

// keyLog keeps what crypto/tls writes to tls.Config.KeyLogWriter.
type keyLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (k *keyLog) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.buf.Write(p)
}

func (k *keyLog) secret(label string) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, line := range strings.Split(k.buf.String(), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == label {
			return hex.DecodeString(f[2])
		}
	}
	return nil, fmt.Errorf("no %s in the key log", label)
}

// dialRecordWriter completes a TLS 1.3 handshake with crypto/tls over
// conn and returns a writer holding the client's application keys.
func dialRecordWriter(conn net.Conn, sni string, pool *x509.CertPool) (*recordWriter, error) {
	var log keyLog
	tc := tls.Client(conn, &tls.Config{
		ServerName: sni, RootCAs: pool, InsecureSkipVerify: pool == nil, MinVersion: tls.VersionTLS13, KeyLogWriter: &log,
	})
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	w := &recordWriter{conn: conn}
	switch suite := tc.ConnectionState().CipherSuite; suite {
	case tls.TLS_AES_128_GCM_SHA256:
		w.newH, w.keyLen = sha256.New, 16
	case tls.TLS_AES_256_GCM_SHA384:
		w.newH, w.keyLen = sha512.New384, 32
	default:
		return nil, fmt.Errorf("cipher suite %s: the test's record writer does AES-GCM only", tls.CipherSuiteName(suite))
	}
	secret, err := log.secret("CLIENT_TRAFFIC_SECRET_0")
	if err != nil {
		return nil, err
	}
	if err := w.setSecret(secret); err != nil {
		return nil, err
	}
	return w, nil
}

// expandLabel is HKDF-Expand-Label with an empty context (RFC 8446 7.1).
func (w *recordWriter) expandLabel(secret []byte, label string, length int) ([]byte, error) {
	info := binary.BigEndian.AppendUint16(nil, uint16(length))
	info = append(info, byte(len("tls13 ")+len(label)))
	info = append(info, "tls13 "...)
	info = append(info, label...)
	info = append(info, 0)
	return hkdf.Expand(w.newH, secret, string(info), length)
}

func (w *recordWriter) setSecret(secret []byte) error {
	key, err := w.expandLabel(secret, "key", w.keyLen)
	if err != nil {
		return err
	}
	iv, err := w.expandLabel(secret, "iv", 12)
	if err != nil {
		return err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return err
	}
	w.secret, w.aead, w.iv, w.seq = secret, aead, iv, 0
	return nil
}

// seal appends one protected record carrying content of contentType.
func (w *recordWriter) seal(dst []byte, contentType byte, content []byte) []byte {
	inner := append(append([]byte(nil), content...), contentType)
	n := len(inner) + w.aead.Overhead()
	hdr := []byte{23, 3, 3, byte(n >> 8), byte(n)} // application_data, TLS 1.2 on the wire
	nonce := append([]byte(nil), w.iv...)
	for i := range 8 {
		nonce[len(nonce)-1-i] ^= byte(w.seq >> (8 * i))
	}
	w.seq++
	dst = append(dst, hdr...)
	return w.aead.Seal(dst, nonce, inner, hdr)
}

// keyUpdate appends a KeyUpdate handshake message in its own record and
// moves to the next sending keys. With requested set, the peer must
// answer with a KeyUpdate of its own.
func (w *recordWriter) keyUpdate(dst []byte, requested bool) ([]byte, error) {
	req := byte(0)
	if requested {
		req = 1
	}
	dst = w.seal(dst, 22, []byte{24, 0, 0, 1, req}) // handshake: key_update, length 1
	next, err := w.expandLabel(w.secret, "traffic upd", w.newH().Size())
	if err != nil {
		return nil, err
	}
	return dst, w.setSecret(next)
}

// maxKeyUpdatesInARow is how many post-handshake messages crypto/tls
// takes before a record that carries data (its maxUselessRecords): a
// peer sending more in a row is disconnected. A flood interleaves a byte
// of data.
const maxKeyUpdatesInARow = 16

// keyUpdates appends maxKeyUpdatesInARow KeyUpdates asking for an answer,
// then one byte of application data, b.
func (w *recordWriter) keyUpdates(dst []byte, b byte) ([]byte, error) {
	var err error
	for range maxKeyUpdatesInARow {
		if dst, err = w.keyUpdate(dst, true); err != nil {
			return nil, err
		}
	}
	return w.data(dst, []byte{b}), nil
}

// data appends application data records.
func (w *recordWriter) data(dst, p []byte) []byte {
	for len(p) > 0 {
		n := min(len(p), 16<<10)
		dst = w.seal(dst, 23, p[:n])
		p = p[n:]
	}
	return dst
}
