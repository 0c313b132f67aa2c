package forwarder

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// The relay. After the TLS handshake and the backend dial, which run on a
// goroutine each, a connection pair leaves the Go network poller and joins
// one of a few event loops (one per GOMAXPROCS), each an epoll instance
// driven by a single goroutine. A loop moves bytes for many connections
// per wake-up, the way an event-driven proxy does, instead of parking and
// waking two goroutines for every request and response that crosses a
// connection. Under load that is what decides throughput: the system calls
// are the same, but the thread hand-offs and wake-ups are not.
//
// crypto/tls still does all of the record work: the client side of each
// pair is a *tls.Conn over a loopConn whose Read never blocks (it answers
// errWouldBlock, which crypto/tls treats as a retryable net.Error and keeps
// the partial record) and whose Write only queues ciphertext for the loop
// to flush.
//
// What the loop queues is bounded. Backend bytes are read only when the
// client's queue is empty, so data never queues more than one read's
// worth. crypto/tls also writes on its own while it reads the client: a
// TLS 1.3 KeyUpdate that asks for an answer queues one. A client that
// keeps asking and never reads would grow its queue without end, so the
// client is not read while its queue holds maxQueued bytes or more (the
// kernel's buffers then fill and its writes block) and the idle timeout
// ends the connection if it never drains.

// maxQueued is the queued ciphertext above which a client is not read:
// twice what one backend read (32 KiB) queues, so data alone never
// reaches it. crypto/tls may still decrypt records it had already read
// before noticing, at most its read-ahead (one maximal record and some):
// a flooding connection holds about 100 KiB.
const maxQueued = 64 << 10

// errWouldBlock tells crypto/tls that no more ciphertext is readable now.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "no data ready" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// loopConn is the net.Conn under the client's *tls.Conn. Until detach it
// is the accepted connection itself (the handshake runs on a goroutine
// with Go's deadlines); afterwards it is the raw, non-blocking socket
// owned by an event loop.
type loopConn struct {
	net.Conn
	fd       int  // -1 until detached
	readable bool // edge-triggered readiness: reads may return data
	hup      bool // the peer's FIN (or an error) is queued: keep reading to see it
	writable bool
	out      []byte // ciphertext queued by crypto/tls, not yet written
	full     bool   // out reached maxQueued: the client is not read until it drains
	// pauses counts the times full was set (nil: not counted).
	pauses prometheus.Counter
}

func newLoopConn(c net.Conn, pauses prometheus.Counter) *loopConn {
	return &loopConn{Conn: c, fd: -1, pauses: pauses}
}

func (c *loopConn) Read(p []byte) (int, error) {
	if c.fd < 0 {
		return c.Conn.Read(p)
	}
	if len(c.out) >= maxQueued {
		// Back-pressure: readiness is kept, so the loop reads again as
		// soon as the queue drains below the cap.
		if !c.full && c.pauses != nil {
			c.pauses.Inc()
		}
		c.full = true
		return 0, errWouldBlock
	}
	c.full = false
	if !c.readable {
		return 0, errWouldBlock
	}
	n, err := readFD(c.fd, p)
	switch {
	case err == unix.EAGAIN:
		c.readable = false
		return 0, errWouldBlock
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: err}
	case n == 0:
		return 0, io.EOF
	}
	if n < len(p) && !c.hup {
		// The socket buffer was emptied: the next edge says when more came.
		// Not so once the peer has shut down: its FIN raised the last edge
		// there will be, and only another read turns it into io.EOF.
		c.readable = false
	}
	return n, nil
}

func (c *loopConn) Write(p []byte) (int, error) {
	if c.fd < 0 {
		return c.Conn.Write(p)
	}
	c.out = append(c.out, p...)
	return len(p), nil
}

// Deadlines belong to the handshake; once detached, the loop's timers rule.
func (c *loopConn) SetDeadline(t time.Time) error {
	if c.fd < 0 {
		return c.Conn.SetDeadline(t)
	}
	return nil
}

func (c *loopConn) SetReadDeadline(t time.Time) error {
	if c.fd < 0 {
		return c.Conn.SetReadDeadline(t)
	}
	return nil
}

func (c *loopConn) SetWriteDeadline(t time.Time) error {
	if c.fd < 0 {
		return c.Conn.SetWriteDeadline(t)
	}
	return nil
}

// detach takes the socket away from Go's poller: it duplicates the
// descriptor (the duplicate shares the non-blocking file status) and
// closes the original, which deregisters it from the runtime's epoll set.
func detach(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T has no file descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(orig uintptr) {
		fd, dupErr = unix.FcntlInt(orig, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, fmt.Errorf("dup: %w", dupErr)
	}
	c.Close()
	return fd, nil
}

// Connection ends, as logged in "end"; the timeouts are also error kinds.
const (
	endEOF         = "eof"
	endClientError = "client_error"
	endShutdown    = "shutdown"
)

// pair is one client connection and its backend, owned by a loop.
type pair struct {
	tls    *tls.Conn
	client *loopConn
	bfd    int
	// finished receives the byte counts and how the connection ended; it
	// runs on the loop goroutine, once.
	finished func(up, down int64, end string)

	bReadable, bWritable bool
	bHup                 bool   // as loopConn.hup, for the backend
	toBackend            []byte // plaintext the backend socket has not taken yet
	upEOF, upShut        bool   // client done sending; backend's write half shut
	downEOF, downShut    bool   // backend done sending; client's write half shut
	up, down             int64
	last, deadline       time.Duration // loop clock; deadline 0 = none
	closed               bool
}

// loop is one epoll instance and the goroutine that drives it. The epoll
// descriptor is itself registered with Go's poller (epf), so the loop
// goroutine parks like any other when nothing is ready, rather than
// sitting in a blocking epoll_wait that the runtime would have to work
// around by handing its processor to another thread.
type loop struct {
	epfd  int
	epf   *os.File
	eprc  syscall.RawConn
	wake  int // eventfd: shutdown requests
	buf   []byte
	epoch time.Time
	now   time.Duration
	idle  time.Duration
	total time.Duration
	tick  time.Duration
	// shared: other loops run in this process (see the wake-up in run).
	shared bool
	// again holds pairs that used their turn (maxRounds) with bytes still
	// moving; the loop pumps them again after the next poll, which does
	// not wait while any are listed. Loop goroutine only.
	again, turn []*pair

	mu      sync.Mutex
	pairs   map[int32]*pair // by both descriptors
	closing bool            // no new pairs; close the open ones
	stopped bool

	open atomic.Int64
	done chan struct{}
}

func newLoop(idle, total time.Duration) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	// The timer scan runs often enough to honour the shortest timeout
	// within an eighth of it, and at least once a second.
	tick := time.Second
	for _, d := range []time.Duration{idle, total} {
		if d > 0 {
			tick = min(tick, max(d/8, 10*time.Millisecond))
		}
	}
	// A non-blocking descriptor handed to os.NewFile joins Go's poller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll non-blocking: %w", err)
	}
	epf := os.NewFile(uintptr(epfd), "epoll")
	eprc, err := epf.SyscallConn()
	if err != nil {
		epf.Close()
		unix.Close(wake)
		return nil, fmt.Errorf("epoll poller: %w", err)
	}
	return &loop{
		epfd: epfd, epf: epf, eprc: eprc, wake: wake, buf: make([]byte, 32<<10), epoch: time.Now(),
		idle: idle, total: total, tick: tick,
		pairs: map[int32]*pair{}, done: make(chan struct{}),
	}, nil
}

// add registers a pair with the loop, which owns both descriptors from
// then on. Registration happens under the loop's lock, so the loop sees
// no event for the pair before both sockets are in its set. Registering a
// writable socket edge-triggered reports it at once, so the loop's first
// look at the pair also relays whatever crypto/tls already buffered.
func (l *loop) add(p *pair) error {
	now := time.Since(l.epoch)
	p.last = now
	if l.total > 0 {
		p.deadline = now + l.total
	}
	p.bReadable, p.bWritable = true, true
	p.client.readable, p.client.writable = true, true
	cfd := p.client.fd
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return errors.New("forwarder is shutting down")
	}
	for _, fd := range []int{p.bfd, cfd} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			if fd == cfd {
				unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, p.bfd, nil)
			}
			return fmt.Errorf("epoll_ctl: %w", err)
		}
	}
	l.pairs[int32(cfd)] = p
	l.pairs[int32(p.bfd)] = p
	l.open.Add(1)
	return nil
}

// closeAll ends every open pair and refuses new ones (shutdown timeout).
func (l *loop) closeAll() {
	l.mu.Lock()
	l.closing = true
	l.mu.Unlock()
	l.signal()
}

// stop ends the loop goroutine after closing whatever is still open, and
// waits for it.
func (l *loop) stop() {
	l.mu.Lock()
	l.closing, l.stopped = true, true
	l.mu.Unlock()
	l.signal()
	<-l.done
	l.epf.Close()
	unix.Close(l.wake)
}

func (l *loop) signal() {
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	writeFD(l.wake, one)
}

type ready struct {
	p      *pair
	events uint32
	fd     int32
}

func (l *loop) run() {
	defer close(l.done)
	events := make([]unix.EpollEvent, 256)
	batch := make([]ready, 0, 256)
	nextScan := l.tick
	l.epf.SetReadDeadline(l.epoch.Add(nextScan))
	for {
		// Take what is ready without blocking; park only when nothing is.
		n := 0
		var waitErr error
		polls := 0
		err := l.eprc.Read(func(fd uintptr) bool {
			polls++
			n, waitErr = rawEpollPoll(int(fd), events)
			return n > 0 || len(l.again) > 0 || waitErr != nil && waitErr != unix.EINTR
		})
		if polls > 1 && l.shared {
			// This loop slept and was woken by the thread that was blocked
			// in Go's network poller, and only one thread blocks there at a
			// time. While this one relays, another loop's events would wait
			// for this batch to end, or up to 10 ms for the runtime's monitor.
			// A new goroutine wakes an idle thread, which finds no other
			// work and takes over the poller. (Measured: keep-alive p99
			// halved with two loops.)
			go func() {}()
		}
		if waitErr == nil && err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			waitErr = err
		}
		if waitErr != nil {
			// Only a broken epoll descriptor gets here; nothing can be relayed.
			panic(fmt.Sprintf("forwarder: epoll_wait: %v", waitErr))
		}
		l.now = time.Since(l.epoch)

		woken := false
		batch = batch[:0]
		l.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			if int(ev.Fd) == l.wake {
				woken = true
				continue
			}
			if p := l.pairs[ev.Fd]; p != nil {
				batch = append(batch, ready{p, ev.Events, ev.Fd})
			}
		}
		closing, stopped := l.closing, l.stopped
		l.mu.Unlock()

		// Pairs that used up their last turn go first, then what is ready
		// now; either may list a pair for another turn.
		l.turn, l.again = l.again, l.turn[:0]
		for _, p := range l.turn {
			if !p.closed {
				l.pump(p)
			}
		}
		clear(l.turn)
		for _, r := range batch {
			if r.p.closed {
				continue
			}
			l.mark(r)
			l.pump(r.p)
		}
		if woken {
			var b [8]byte
			readFD(l.wake, b[:])
		}
		if closing {
			l.finishAll(endShutdown)
			if stopped {
				return
			}
		}
		if l.now >= nextScan {
			l.scan()
			nextScan = l.now + l.tick
			l.epf.SetReadDeadline(l.epoch.Add(nextScan))
		}
	}
}

// mark records what an event says about one side of a pair.
func (l *loop) mark(r ready) {
	p := r.p
	in := r.events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	hup := r.events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	out := r.events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0
	if int(r.fd) == p.client.fd {
		p.client.readable = p.client.readable || in
		p.client.hup = p.client.hup || hup
		p.client.writable = p.client.writable || out
	} else {
		p.bReadable = p.bReadable || in
		p.bHup = p.bHup || hup
		p.bWritable = p.bWritable || out
	}
}

// maxRounds is a pair's turn: how many rounds of at most one buffer each
// way pump runs before the loop serves the other pairs. A client that
// uploads as fast as the backend takes it would otherwise keep every
// other connection of its loop waiting (measured: over a thousand rounds,
// tens of megabytes, in one call).
const maxRounds = 16

// pump moves what can move now, both ways, until nothing does or the
// pair's turn is over: client records are decrypted and written to the
// backend; backend bytes are encrypted and queued for the client. A side
// whose peer has not taken the last bytes is not read again until it has,
// so a slow reader holds back its sender instead of filling memory, and a
// client whose queued records reach maxQueued is not read (loopConn.Read).
// When one side finishes sending, the other side's write half is shut
// (after a close_notify toward the client), so half-closed exchanges
// still complete.
func (l *loop) pump(p *pair) {
	for round, progress := 0, true; progress && !p.closed; round++ {
		if round == maxRounds {
			// Still moving: another turn after the others had theirs.
			l.again = append(l.again, p)
			return
		}
		progress = false

		// client → backend
		borrowed := false // p.toBackend points into the loop's buffer
		if !p.upEOF && len(p.toBackend) == 0 {
			n, err := p.tls.Read(l.buf)
			if n > 0 {
				progress, borrowed = true, true
				p.up += int64(n)
				p.toBackend = l.buf[:n]
			}
			switch {
			case err == nil, err == errWouldBlock:
			case errors.Is(err, io.EOF):
				p.upEOF, progress = true, true
			default:
				// A bad record, a reset: nothing more will come from the client.
				l.finish(p, endClientError)
				return
			}
		}
		if len(p.toBackend) > 0 && p.bWritable {
			n, err := writeFD(p.bfd, p.toBackend)
			switch {
			case err == unix.EAGAIN:
				p.bWritable = false
			case err != nil:
				// The backend stopped reading for good: drop what the client
				// sends from now on, keep relaying the answer.
				p.toBackend, p.upEOF, p.upShut = nil, true, true
			}
			if n > 0 {
				progress = true
				p.toBackend = p.toBackend[n:]
			}
		}
		if borrowed && len(p.toBackend) > 0 {
			// The loop's buffer is about to be reused: keep a private copy.
			p.toBackend = append([]byte(nil), p.toBackend...)
		}
		if p.upEOF && !p.upShut && len(p.toBackend) == 0 {
			rawShutdown(p.bfd, unix.SHUT_WR)
			p.upShut = true
		}

		// backend → client
		if !p.downEOF && len(p.client.out) == 0 && p.bReadable {
			n, err := readFD(p.bfd, l.buf)
			switch {
			case err == unix.EAGAIN:
				p.bReadable = false
			case err != nil || n == 0:
				p.downEOF, progress = true, true
				p.tls.CloseWrite() // queues close_notify
			default:
				progress = true
				p.down += int64(n)
				if n < len(l.buf) && !p.bHup {
					p.bReadable = false // drained; see loopConn.Read for the FIN case
				}
				p.tls.Write(l.buf[:n]) // only queues: loopConn.Write cannot fail
			}
		}
		if len(p.client.out) > 0 && p.client.writable {
			n, err := writeFD(p.client.fd, p.client.out)
			switch {
			case err == unix.EAGAIN:
				p.client.writable = false
			case err != nil:
				l.finish(p, endClientError)
				return
			}
			switch {
			case n == len(p.client.out):
				progress = true
				// Reuse the queue's memory, unless a burst made it large.
				if cap(p.client.out) > 64<<10 {
					p.client.out = nil
				} else {
					p.client.out = p.client.out[:0]
				}
			case n > 0:
				progress = true
				p.client.out = p.client.out[n:]
			}
		}
		if p.downEOF && !p.downShut && len(p.client.out) == 0 {
			rawShutdown(p.client.fd, unix.SHUT_WR)
			p.downShut = true
		}

		if p.upShut && p.downShut {
			l.finish(p, endEOF)
			return
		}
		if progress {
			p.last = l.now
		}
	}
}

// scan ends pairs past their idle or total timeout.
func (l *loop) scan() {
	var expired []*pair
	var why []string
	l.mu.Lock()
	for fd, p := range l.pairs {
		if int(fd) != p.client.fd {
			continue // each pair is listed under both descriptors
		}
		switch {
		case p.deadline > 0 && l.now >= p.deadline:
			expired, why = append(expired, p), append(why, kindTotal)
		case l.idle > 0 && l.now-p.last >= l.idle:
			expired, why = append(expired, p), append(why, kindIdle)
		}
	}
	l.mu.Unlock()
	for i, p := range expired {
		l.finish(p, why[i])
	}
}

func (l *loop) finishAll(end string) {
	l.mu.Lock()
	var all []*pair
	for fd, p := range l.pairs {
		if int(fd) == p.client.fd {
			all = append(all, p)
		}
	}
	l.mu.Unlock()
	for _, p := range all {
		l.finish(p, end)
	}
}

// finish closes both sockets and reports the pair. The descriptors leave
// the map before they are closed, so a number the kernel hands out again
// is never mistaken for this pair.
func (l *loop) finish(p *pair, end string) {
	if p.closed {
		return
	}
	p.closed = true
	l.mu.Lock()
	delete(l.pairs, int32(p.client.fd))
	delete(l.pairs, int32(p.bfd))
	l.mu.Unlock()
	rawClose(p.client.fd)
	rawClose(p.bfd)
	l.open.Add(-1)
	p.finished(p.up, p.down, end)
}
