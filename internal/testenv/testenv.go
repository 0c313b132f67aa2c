// Package testenv gives tests one way to ask for what they need from the
// machine: root, a freshly built program of this repository, the base assets
// built by `make assets`, or a tool installed by scripts/install-deps.sh.
//
// A test that lacks root skips loudly (the project cannot grant root). A test
// that lacks something the project installs or builds fails, naming the make
// target that provides it: a missing dependency must never pass silently.
package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RequireRoot skips the test, loudly, when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("SKIPPED: %s needs root (network namespaces, mounts, nftables); run `make test` as root", t.Name())
	}
}

// RepoRoot is the directory holding go.mod: the nearest one above the
// working directory, which go test sets to the package's own. (Not found
// from the source file's path: built with -trimpath, as make test builds,
// that is the import path.)
func RepoRoot(t testing.TB) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return root
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("locate the repository: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("locate the repository: no go.mod above the working directory")
		}
		dir = parent
	}
}

// RepoPath is a path inside the repository, for code that cannot fail a
// test (it returns the error instead).
func RepoPath(elem ...string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(append([]string{root}, elem...)...), nil
}

var (
	buildMu  sync.Mutex
	built    = map[string]string{}
	buildDir string
)

// Build compiles the package at pkg (relative to the repository root, e.g.
// "./cmd/mergen-init") as a static binary once per test process and returns
// its path. The binary is named after the last path element.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "mergen-testbin-")
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		buildDir = d
	}
	out := filepath.Join(buildDir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = RepoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("testenv: go build %s: %v\n%s", pkg, err, stderr.String())
	}
	built[pkg] = out
	return out
}

// Assets is the directory of base assets built by `make assets` (kernel,
// initramfs, golden rootfs, agent disk). MERGEN_TEST_ASSETS overrides it.
func Assets(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("MERGEN_TEST_ASSETS")
	if dir == "" {
		dir = filepath.Join(RepoRoot(t), ".build", "assets")
	}
	if _, err := os.Stat(filepath.Join(dir, "vmlinuz")); err != nil {
		t.Fatalf("testenv: base assets missing in %s (%v): run `make assets`", dir, err)
	}
	return dir
}

// KubeBinOverride is MERGEN_KUBE_BIN: a directory of the Kubernetes control
// plane's binaries to test against instead of the repository's
// .build/kube/bin (internal/kubetest). Test settings are read here only.
func KubeBinOverride() string { return os.Getenv("MERGEN_KUBE_BIN") }

// Tool returns the path of an external program, failing with the make target
// that installs it when it is absent.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		// Tools built by the project live in .build/tools.
		local := filepath.Join(RepoRoot(t), ".build", "tools", name)
		if _, serr := os.Stat(local); serr == nil {
			return local
		}
		t.Fatalf("testenv: %s not found: run `make deps` (scripts/install-deps.sh) as root", name)
	}
	return p
}

// WatchOpens watches path for opens and reads (inotify) from now on; the
// function it returns counts the events seen so far.
func WatchOpens(t testing.TB, path string) func() int {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_OPEN|unix.IN_ACCESS); err != nil {
		t.Fatal(err)
	}
	return func() int {
		n := 0
		buf := make([]byte, 64<<10)
		for {
			got, err := unix.Read(fd, buf)
			if got <= 0 || err != nil {
				return n
			}
			for off := 0; off+unix.SizeofInotifyEvent <= got; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				n++
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}

// Eventually polls cond until it holds: for state another process or
// goroutine changes where no event announces it. The timeout only turns a
// hang into a failure; it asserts nothing about speed.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", timeout, what)
		}
	}
}

// Log collects what a logger writes from many goroutines, for tests that
// look at a daemon's or a server's log.
type Log struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is everything written so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
