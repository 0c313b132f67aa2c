package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// SocketGroup is the group given the API socket when it exists: its
// members may use the API without a token.
const SocketGroup = "mergen"

// maxSocketPath is the longest path a unix socket address holds on Linux.
const maxSocketPath = 107

// socketListener is the API's unix socket, removed when the daemon stops
// (unless another daemon has put its own in its place since).
type socketListener struct {
	*net.UnixListener
	path string
	made os.FileInfo
}

// listenSocket listens on the unix socket at path: its directory created
// (0755) if missing; a stale socket left by a daemon that died removed, but
// a socket that answers, or anything that is not a socket, refused. The
// socket is mode 0660, in group mergen when that group exists; it is made
// under a private temporary name and renamed into place, so that nobody can
// connect before its permissions are set.
func listenSocket(path string, log *slog.Logger) (*socketListener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("%s is %d bytes long: a unix socket path holds at most %d", path, len(path), maxSocketPath)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := clearStaleSocket(path, log); err != nil {
		return nil, err
	}
	private, err := os.MkdirTemp(dir, ".s")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false) // it moves; remove deletes it by its final name
	fail := func(err error) (*socketListener, error) {
		ln.Close()
		return nil, err
	}
	if err := os.Chmod(tmp, 0o660); err != nil {
		return fail(err)
	}
	if g, err := user.LookupGroup(SocketGroup); err == nil {
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Lchown(tmp, -1, gid); err != nil {
			log.Warn("API socket not given to its group: only the daemon's user can use it", "socket", path, "group", SocketGroup, "err", err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	made, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &socketListener{UnixListener: ln, path: path, made: made}, nil
}

// clearStaleSocket makes way at path: nothing there, or a socket nobody
// answers on (removed).
func clearStaleSocket(path string, log *slog.Logger) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s): move it away, or set MGR_API_SOCKET to another path", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("another daemon answers on %s: stop it first, or give this one its own MGR_API_SOCKET and MGR_HTTP_ADDR", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("cannot tell whether another daemon uses %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	log.Info("removed a stale API socket nobody answered on", "socket", path)
	return nil
}

// remove deletes the socket file if it is still the one this daemon made.
func (s *socketListener) remove() {
	if fi, err := os.Lstat(s.path); err == nil && os.SameFile(fi, s.made) {
		os.Remove(s.path)
	}
}
