package execclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/execproto"
)

// guestAuth answers connections on loopback with the guest's side of the
// exchange, against a secret the test sets.
type guestAuth struct {
	mu     sync.Mutex
	secret []byte
	conns  int
}

func (g *guestAuth) listen(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.conns++
			s := g.secret
			g.mu.Unlock()
			go func() {
				defer c.Close()
				if execproto.Challenge(execproto.NewEncoder(c), execproto.NewDecoder(c), s, rand.Reader) == nil {
					execproto.NewDecoder(c).Next() // hold the connection until the host closes it
				}
			}()
		}
	}()
	return l.Addr().String()
}

func TestDialDeliversTheSecretOnceWhenRefused(t *testing.T) {
	g := &guestAuth{}
	secret := bytes.Repeat([]byte{3}, execproto.SecretLen)
	deliveries := 0
	tg := Target{VM: "vm1", Addr: g.listen(t), Secret: secret, Deliver: func(_ context.Context, s []byte) error {
		deliveries++
		g.mu.Lock()
		g.secret = s
		g.mu.Unlock()
		return nil
	}}
	c, err := Dial(context.Background(), tg)
	if err != nil {
		t.Fatalf("no secret in the guest: %v", err)
	}
	c.Close()
	g.mu.Lock()
	conns := g.conns
	g.mu.Unlock()
	if deliveries != 1 || conns != 2 {
		t.Errorf("%d deliveries, %d connections; want 1 and 2", deliveries, conns)
	}
	c, err = Dial(context.Background(), tg)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if deliveries != 1 {
		t.Errorf("a guest with the secret got it again")
	}

	// A delivery that does not take: one retry, then the refusal.
	tg.Deliver = func(context.Context, []byte) error { deliveries++; return nil }
	g.mu.Lock()
	g.secret = bytes.Repeat([]byte{4}, execproto.SecretLen)
	g.mu.Unlock()
	if _, err := Dial(context.Background(), tg); !errors.Is(err, execproto.ErrRefused) || deliveries != 2 {
		t.Errorf("still refused: %v after %d deliveries", err, deliveries)
	}
	tg.Deliver = func(context.Context, []byte) error { return errors.New("agent down") }
	if _, err := Dial(context.Background(), tg); err == nil || !bytes.Contains([]byte(err.Error()), []byte("agent down")) {
		t.Errorf("failed delivery: %v", err)
	}
}

// An agent that accepts and then never says a word: the dial gives up at
// the caller's deadline with an error naming the VM, instead of hanging.
func TestDialGivesUpOnAnAgentThatNeverAnswers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, silent
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Dial(ctx, Target{VM: "vm-silent", Addr: l.Addr().String(), Secret: bytes.Repeat([]byte{1}, execproto.SecretLen)})
	if err == nil || !strings.Contains(err.Error(), "vm-silent") {
		t.Fatalf("Dial to a silent agent = %v; want an error naming the VM", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("Dial waited %s past a 500 ms deadline", waited)
	}
}
