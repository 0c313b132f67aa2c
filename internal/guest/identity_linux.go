package guest

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"github.com/mergenhq/mergen/internal/agentproto"
	"github.com/mergenhq/mergen/internal/bootparam"
	"golang.org/x/sys/unix"
)

// envDir and envFile: where the payload finds the VM's extraEnv, inside its
// own root.
const (
	envDir  = "/run/mergen"
	envFile = "env"
)

// vmState is what makes this guest the VM it is and may change after boot:
// an identity message (a VM restored from another's snapshot) replaces it.
// mu serialises identities and guards the fields against the supervisor,
// which reads them whenever it starts the payload.
type vmState struct {
	mu       sync.Mutex
	hostname string
	net      *Net     // nil: no network
	extraEnv []string // the VM's extraEnv, KEY=VALUE sorted by key
	// root is the payload's root once it is ready for files ("" before),
	// cred whom the env file belongs to.
	root string
	cred Cred
	// secret is the exec agent's key (execproto), from the host over the
	// agent channel; nil until then. It lives in this process's memory
	// only: no file, no command line, nothing the payload can read.
	secret []byte
	// envGiven is closed once the VM's extraEnv is known: at boot from the
	// command line, or, with mergen.env_from=agent, when the host hands it
	// over (OpEnv, or an identity). The payload does not start before.
	envGiven chan struct{}
	envOnce  sync.Once
}

func newVMState(boot Boot) *vmState {
	s := &vmState{hostname: hostname(boot.Net), net: boot.Net, extraEnv: boot.Env, envGiven: make(chan struct{})}
	if !boot.EnvFromAgent {
		s.gotEnv()
	}
	return s
}

// gotEnv marks the VM's extraEnv known.
func (s *vmState) gotEnv() { s.envOnce.Do(func() { close(s.envGiven) }) }

// setEnv takes the VM's extraEnv from the host (OpEnv): for every later
// start of the payload, and into the env file once the root is ready.
func (s *vmState) setEnv(env map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.extraEnv = bootparam.Assignments(env)
	if s.root != "" {
		if err := s.writeEnv(); err != nil {
			return err
		}
	}
	s.gotEnv()
	logf("agent: environment received (%d variables)", len(env))
	return nil
}

// rootReady writes the hostname, hosts and env files into the payload's
// root, as the state is now (an identity may have come first), and from now
// on with every identity. Only the env file is fatal: payloads rely on it.
func (s *vmState) rootReady(root string, cred Cred) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.root, s.cred = root, cred
	if err := writeNetFiles(root, s.hostname, s.net); err != nil {
		logf("%v", err)
	}
	return s.writeEnv()
}

func (s *vmState) writeEnv() error {
	data, err := EnvScript(s.extraEnv)
	if err != nil {
		return err
	}
	return writeInRoot(s.root, envDir, envFile, data, 0o600, int(s.cred.UID), int(s.cred.GID))
}

// current returns the VM's extraEnv and hostname for a payload (re)start.
func (s *vmState) current() (extraEnv []string, hostname string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.extraEnv, s.hostname
}

// execSecret returns the exec agent's secret, nil before the host sent one.
func (s *vmState) execSecret() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.secret
}

// handle answers the agent's requests (already validated by agentproto).
func (s *vmState) handle(req agentproto.Request) agentproto.Response {
	switch req.Op {
	case agentproto.OpPing:
		return agentproto.Response{OK: true}
	case agentproto.OpIdentity:
		if err := s.applyIdentity(*req.Identity); err != nil {
			logf("identity: %v", err) // errors name fields, never env values
			return agentproto.Response{Error: "identity: " + err.Error()}
		}
		return agentproto.Response{OK: true}
	case agentproto.OpEnv:
		if err := s.setEnv(req.Env); err != nil {
			logf("env: %v", err)
			return agentproto.Response{Error: "env: " + err.Error()}
		}
		return agentproto.Response{OK: true}
	case agentproto.OpSecret:
		s.mu.Lock()
		s.secret = append([]byte(nil), req.Secret...)
		s.mu.Unlock()
		logf("agent: exec secret set")
		return agentproto.Response{OK: true}
	}
	return agentproto.Response{Error: fmt.Sprintf("op %q: unknown", req.Op)}
}

// applyIdentity makes this guest the VM id describes, step by step; an
// error names the step that failed, and the steps before it stay applied.
func (s *vmState) applyIdentity(id agentproto.Identity) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := planIdentity(id, s.net)
	if err != nil {
		return err
	}
	// First: the snapshot's VM's secret must not open this VM, even if a
	// later step fails. Without a new one the exec agent refuses every
	// host until one is delivered.
	s.secret = nil
	if len(id.Secret) > 0 {
		s.secret = append([]byte(nil), id.Secret...)
	}
	// A restored guest's clock is the snapshot's.
	tv := unix.NsecToTimeval(p.clock.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("clock: settimeofday: %w", err)
	}
	// Every VM restored from one snapshot starts with the same random pool.
	if err := addEntropy(p.entropy); err != nil {
		return fmt.Errorf("random: %w", err)
	}
	if err := setHostname(p.hostname); err != nil {
		return fmt.Errorf("hostname %q: sethostname: %w", p.hostname, err)
	}
	s.hostname = p.hostname
	if s.root != "" {
		if err := writeNetFiles(s.root, p.hostname, p.net); err != nil {
			return fmt.Errorf("hostname: %w", err)
		}
	}
	if p.setNet {
		if err := reconfigureNetwork(p.net, p.mac); err != nil {
			return err
		}
	}
	s.net = p.net
	s.extraEnv = p.env
	if s.root != "" {
		if err := s.writeEnv(); err != nil {
			return fmt.Errorf("env: %w", err)
		}
	}
	s.gotEnv()
	logf("identity applied: hostname %s, address %s", p.hostname, p.address())
	return nil
}

// addEntropy mixes b into the kernel's pool, credited in full (the host's
// random bytes), and reseeds the CRNG from it at once, so the random
// streams of guests restored from one snapshot part from here on.
func addEntropy(b []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count (bits); int buf_size; __u32 buf[]; }
	req := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(req[0:], uint32(8*len(b)))
	binary.NativeEndian.PutUint32(req[4:], uint32(len(b)))
	copy(req[8:], b)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&req[0])))
	runtime.KeepAlive(req)
	if errno != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", errno)
	}
	return nil
}
