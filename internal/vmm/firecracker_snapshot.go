package vmm

// Firecracker snapshots and restores, the agent channel (hybrid vsock), the
// binary's version and the VM's shape.
//
// A snapshot is Firecracker's own pair of files: the vCPU and device state
// (vmstate) and the guest's memory (memory); the disks are the caller's to
// copy while the guest is paused. The vmstate records the paths the
// Firecracker that took it had opened — each drive's path_on_host, the
// tap's name and the vsock socket — and API v1.0 cannot change them at
// load. Under the jailer they are the same in every VM's chroot
// (/drive-<id>, /run/vsock.sock), so any VM of the same shape whose tap
// has the same name (in its own network namespace) can load the snapshot.
// Without the jailer the drives are /proc/self/fd/N of the process that
// took it and the vsock socket lies in that VM's run directory; neither can
// be given to another process as they were, so both snapshot and restore
// are refused (errUnjailedSnapshot).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/beneath"
	"github.com/mergenhq/mergen/internal/filecache"
)

// The files of a Firecracker snapshot, as Snapshot names them in the
// caller's directory and Command places them in a restoring VM's chroot.
const (
	snapshotState  = "vmstate"
	snapshotMemory = "memory"
)

var snapshotFiles = []string{snapshotState, snapshotMemory}

// Directories in the jailer's chroot for snapshots: Firecracker writes a
// snapshot into jailSnapshotDir (the jail user's, made afresh for each
// snapshot) and loads one from jailRestoreDir (root's, laid out by
// Command). Two directories, because a VM restored from a snapshot keeps
// its memory file mapped while it is snapshotted again.
const (
	jailSnapshotDir = "/snapshot"
	jailRestoreDir  = "/restore"
)

// agentVsockPort is the vsock port mergen-init's agent listens on in the
// guest. It is agentproto.VsockPort; a copy until that package exists.
const agentVsockPort = 1024

// errUnjailedSnapshot refuses a snapshot or a restore of a VM that runs
// Firecracker without the jailer (see the comment at the top of the file).
func errUnjailedSnapshot(op, id string) error {
	return fmt.Errorf("%s vm %s: %w: Firecracker snapshots need the jailer (MGR_JAILER=1, or MGR_JAILER unset with the jailer binary found, when the VM is created): without it a snapshot names the VM's disks by descriptors of the Firecracker process that took it (/proc/self/fd/N) and its vsock socket by that VM's run directory, which a new Firecracker cannot open as they were",
		op, id, ErrUnavailable)
}

// jailRoot is the VM's chroot as jail lays it out for the configured
// binary (the chroot is named after the binary's file name).
func (f *firecracker) jailRoot(s Spec) (string, error) {
	bin := f.bin
	if bin == "" {
		bin = "firecracker"
	}
	return f.jailDir(s, bin)
}

// Snapshot has the paused Firecracker write a full snapshot (PUT
// /snapshot/create) into a fresh directory of the jail user's in its
// chroot, then moves the two files into dir with takeSnapshotFile. The
// guest stays paused.
func (f *firecracker) Snapshot(ctx context.Context, s Spec, dir string) ([]string, error) {
	if err := s.validate(false); err != nil {
		return nil, fmt.Errorf("snapshot %w", err)
	}
	if !f.jailer {
		return nil, errUnjailedSnapshot("snapshot", s.ID)
	}
	fail := func(err error) ([]string, error) {
		return nil, fmt.Errorf("snapshot vm %s: %w", s.ID, err)
	}
	uid, gid, err := f.ids(s)
	if err != nil {
		return fail(err)
	}
	root, err := f.jailRoot(s)
	if err != nil {
		return nil, fmt.Errorf("snapshot %w", err)
	}
	if fi, err := os.Lstat(dir); err != nil {
		return fail(err)
	} else if !fi.IsDir() {
		return fail(fmt.Errorf("%s is not a directory (%s)", dir, fi.Mode().Type()))
	}
	st, err := f.Status(ctx, s.SocketPath)
	if err != nil {
		return fail(err)
	}
	if !st.Paused {
		return fail(fmt.Errorf("the guest is %s, not paused: pause it first, so that memory and disks are taken at the same instant", st.State))
	}
	// The jailer gives the chroot's root directory to the jail user, who
	// may put anything in it, links included. RemoveAll removes a link
	// in out's place, never what it points to; what an earlier, failed
	// snapshot left goes too.
	out := filepath.Join(root, jailSnapshotDir)
	if err := os.RemoveAll(out); err != nil {
		return fail(err)
	}
	defer os.RemoveAll(out)
	if err := mkdirFor(out, uid, gid); err != nil {
		return fail(err)
	}
	err = newFCClient(s.SocketPath).createSnapshot(ctx, jailSnapshotDir+"/"+snapshotState, jailSnapshotDir+"/"+snapshotMemory)
	if err != nil {
		return fail(err)
	}
	var taken []string
	for _, name := range snapshotFiles {
		size := int64(-1)
		if name == snapshotMemory {
			size = int64(s.MemMiB) << 20
		}
		if err := takeSnapshotFile(root, name, dir, uid, size); err != nil {
			for _, n := range taken {
				os.Remove(filepath.Join(dir, n))
			}
			return fail(err)
		}
		taken = append(taken, name)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return fail(err)
	}
	return taken, nil
}

// mkdirFor makes the directory path, mode 0700, and gives it to uid/gid:
// the directory made, opened without following a link, whatever the jail
// user may have put under its name since.
func mkdirFor(path string, uid, gid int) error {
	if err := os.Mkdir(path, 0o700); err != nil {
		return err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s: the directory just made is owned by uid %d", path, st.Uid)
	}
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return &fs.PathError{Op: "chown", Path: path, Err: err}
	}
	return nil
}

// takeSnapshotFile moves the snapshot file name, written by Firecracker as
// the jail user uid into jailSnapshotDir in the chroot at root, to dir,
// where it becomes this process's user's (root's) with mode 0600. The jail
// user owns the chroot's root and that directory and could have put
// anything under those names, so the file is opened below root without
// following a link on the way or in its place, and must be a regular file
// of the jail user's with no other name (no hard link to a file of its
// elsewhere, such as its data disk), size bytes long (any length but 0
// when size is negative). It is then hard-linked into dir from the open
// file, or, when dir is on another file system than the chroot, copied;
// either way synced. The name in the chroot goes with its directory.
func takeSnapshotFile(root, name, dir string, uid int, size int64) error {
	src, err := beneath.Open(root, strings.TrimPrefix(jailSnapshotDir, "/")+"/"+name, os.O_RDONLY)
	if err != nil {
		return fmt.Errorf("snapshot file %s: %w", name, err)
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	switch {
	case int(st.Uid) != uid:
		return fmt.Errorf("snapshot file %s is owned by uid %d, not by the jail's %d", name, st.Uid, uid)
	case st.Nlink != 1:
		return fmt.Errorf("snapshot file %s has %d names; Firecracker writes a new file", name, st.Nlink)
	case size >= 0 && fi.Size() != size:
		return fmt.Errorf("snapshot file %s is %d bytes, want %d (the guest's memory)", name, fi.Size(), size)
	case size < 0 && fi.Size() == 0:
		return fmt.Errorf("snapshot file %s is empty", name)
	}
	dst := filepath.Join(dir, name)
	// Root's, 0600, before it has a name outside the chroot.
	if err := src.Chown(os.Geteuid(), os.Getegid()); err != nil {
		return err
	}
	if err := src.Chmod(0o600); err != nil {
		return err
	}
	err = unix.Linkat(unix.AT_FDCWD, beneath.FDPath(src), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
	switch {
	case err == nil:
		// Firecracker v1.0 syncs both files itself; later versions
		// need not.
		if err := src.Sync(); err != nil {
			os.Remove(dst)
			return err
		}
	case errors.Is(err, unix.EXDEV):
		if err := copyInto(src, fi.Size(), dst, os.Geteuid(), os.Getegid(), true); err != nil {
			os.Remove(dst)
			return fmt.Errorf("copy snapshot file %s out of the jail: %w", name, err)
		}
	default:
		return &fs.PathError{Op: "link", Path: dst, Err: err}
	}
	return nil
}

// Restored loads the snapshot Command placed in the chroot (PUT
// /snapshot/load with resume_vm) into the Firecracker that was started
// without a configuration, and returns once GET / reports the guest
// Running. A Firecracker that has loaded already (a second call) is only
// checked, and resumed if it is paused.
func (f *firecracker) Restored(ctx context.Context, s Spec) error {
	fail := func(err error) error { return fmt.Errorf("restore vm %s: %w", s.ID, err) }
	if s.Restore == nil {
		return fail(errors.New("the VM was not started from a snapshot (no Restore in its spec)"))
	}
	if !f.jailer {
		return errUnjailedSnapshot("restore", s.ID)
	}
	c := newFCClient(s.SocketPath)
	info, err := c.instanceInfo(ctx)
	if err != nil {
		return fail(err)
	}
	if info.State == "Not started" {
		if err := c.loadSnapshot(ctx, jailRestoreDir+"/"+snapshotState, jailRestoreDir+"/"+snapshotMemory); err != nil {
			return fail(fmt.Errorf("load snapshot (a Firecracker whose load failed exits): %w", err))
		}
		if info, err = c.instanceInfo(ctx); err != nil {
			return fail(err)
		}
	}
	if info.State == "Paused" {
		if err := c.vmState(ctx, "Resumed"); err != nil {
			return fail(err)
		}
		if info, err = c.instanceInfo(ctx); err != nil {
			return fail(err)
		}
	}
	if info.State != "Running" {
		return fail(fmt.Errorf("after loading the snapshot Firecracker reports the guest %q, not Running", info.State))
	}
	return nil
}

// Agent connects to the guest agent's vsock port through the VM's vsock
// device, see dialHybridVsock.
func (f *firecracker) Agent(ctx context.Context, s Spec) (net.Conn, error) {
	if !f.vsock {
		return nil, fmt.Errorf("agent vm %s: %w: the VM has no vsock device, the agent's only channel (it was created with MGR_VSOCK=0)", s.ID, ErrUnavailable)
	}
	dir, name, err := f.vsockPath(s)
	if err != nil {
		return nil, fmt.Errorf("agent %w", err)
	}
	conn, err := dialHybridVsock(ctx, dir, name, agentVsockPort)
	if err != nil {
		return nil, fmt.Errorf("agent vm %s: %w", s.ID, err)
	}
	return conn, nil
}

// vsockPath is the host side of the VM's vsock device, as a directory and
// a name below it: in the chroot with the jailer, else in the run
// directory.
func (f *firecracker) vsockPath(s Spec) (dir, name string, err error) {
	if f.jailer {
		root, err := f.jailRoot(s)
		if err != nil {
			return "", "", err
		}
		return root, strings.TrimPrefix(jailVsock, "/"), nil
	}
	if s.WorkDir == "" {
		return "", "", fmt.Errorf("vm %s: workDir: empty, but the vsock socket is there", s.ID)
	}
	return s.WorkDir, vsockSocket, nil
}

// maxVsockAnswer bounds Firecracker's answer to CONNECT: "OK " and a
// 32-bit port number, with room to show what came instead.
const maxVsockAnswer = 32

// dialHybridVsock connects to port in the guest through Firecracker's
// hybrid vsock: a client of the unix socket name below dir writes
// "CONNECT <port>\n" and Firecracker answers "OK <host port>\n" once the
// guest has accepted, or closes the connection (v1.0 waits for the guest
// as long as the client does: ctx bounds it). After the answer the
// connection is the guest's stream.
//
// The jail user owns the chroot's root and its /run, and could put a link
// to another host socket (the daemon's own, another VM's vsock) in the
// socket's place or on the way, so the socket is resolved below dir
// without following links (beneath.OpenPath), checked to be a socket, and
// dialled through its descriptor's /proc link, which also keeps the
// address short whatever the chroot's path.
func dialHybridVsock(ctx context.Context, dir, name string, port uint32) (net.Conn, error) {
	path := filepath.Join(dir, name)
	f, err := beneath.OpenPath(dir, name)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return nil, fmt.Errorf("vsock socket %s is not a socket (%v)", path, fi.Mode().Type())
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", beneath.FDPath(f))
	if err != nil {
		return nil, fmt.Errorf("connect to vsock socket %s: %w", path, err)
	}
	if err := vsockHandshake(ctx, conn, port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock port %d through %s: %w", port, path, err)
	}
	return conn, nil
}

// vsockHandshake sends CONNECT and reads the answer line, a byte at a time
// so that nothing of the guest's stream after it is consumed, within ctx.
func vsockHandshake(ctx context.Context, conn net.Conn, port uint32) error {
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	_, err := fmt.Fprintf(conn, "CONNECT %d\n", port)
	var line []byte
	if err == nil {
		line, err = readAnswer(conn)
	}
	if !stop() {
		return fmt.Errorf("handshake: %w", ctx.Err())
	}
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	rest, ok := bytes.CutPrefix(line, []byte("OK "))
	if _, perr := strconv.ParseUint(string(rest), 10, 32); !ok || perr != nil {
		return fmt.Errorf("handshake: Firecracker answered %q, want \"OK <port>\"", line)
	}
	return conn.SetDeadline(time.Time{})
}

// readAnswer reads one line, without its newline, of at most
// maxVsockAnswer bytes.
func readAnswer(r io.Reader) ([]byte, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) <= maxVsockAnswer {
		if _, err := io.ReadFull(r, b); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("Firecracker closed the connection after %q: nothing accepted the connection in the guest", line)
			}
			return nil, err
		}
		if b[0] == '\n' {
			return line, nil
		}
		line = append(line, b[0])
	}
	return nil, fmt.Errorf("Firecracker's answer %q… is longer than %d bytes", line[:maxVsockAnswer], maxVsockAnswer)
}

// versions caches `firecracker --version` per binary while the binary is
// unchanged (package filecache: one stat per call; the binary's bytes,
// read once per change, are not otherwise used).
var versions filecache.Cache[string]

// fcVersionRe is the first line of `firecracker --version`, e.g.
// "Firecracker v1.0.0" or "Firecracker v1.0.0-44-gc73a27cb-dirty".
var fcVersionRe = regexp.MustCompile(`^Firecracker v[0-9]+\.[0-9]+\.[0-9]+[A-Za-z0-9.+-]*$`)

// Version is the first line of `firecracker --version`: the build, which
// is what a snapshot must be restored with (v1.0 writes its state in the
// newest format it knows, which older builds cannot read).
func (f *firecracker) Version(ctx context.Context) (string, error) {
	bin, err := findBinary(f.bin, "firecracker")
	if err != nil {
		return "", fmt.Errorf("firecracker version: %w", err)
	}
	v, err := versions.Load(bin, func([]byte) (string, bool, error) {
		v, err := runVersion(ctx, bin)
		return v, err == nil, err
	})
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("firecracker version: %w: %w", ErrUnavailable, err)
	}
	if err != nil {
		return "", fmt.Errorf("firecracker version of %s: %w", bin, err)
	}
	return v, nil
}

// maxVersionOutput bounds what is kept of `--version`'s output.
const maxVersionOutput = 4 << 10

func runVersion(ctx context.Context, bin string) (string, error) {
	out := &headBuffer{max: maxVersionOutput}
	cmd := exec.CommandContext(ctx, bin, "--version")
	cmd.Stdout = out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s --version: %w", bin, err)
	}
	first, _, _ := strings.Cut(out.String(), "\n")
	first = strings.TrimSpace(first)
	if !fcVersionRe.MatchString(first) {
		if len(first) > 80 {
			first = first[:80] + "…"
		}
		return "", fmt.Errorf("%s --version: first line %q is not \"Firecracker v<version>\"", bin, first)
	}
	return first, nil
}

// headBuffer keeps the first max bytes written to it and drops the rest.
type headBuffer struct {
	bytes.Buffer
	max int
}

func (h *headBuffer) Write(p []byte) (int, error) {
	if room := h.max - h.Len(); room > 0 {
		h.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// Shape is what a snapshot's VM and a VM restored from it must share: the
// vCPUs and memory, the drives (ids, read-only or not, root) in order, and
// which of the network interface, vsock and entropy devices exist. The
// drive ids are in it because the snapshot names each drive's file in the
// chroot by its id.
func (f *firecracker) Shape(s Spec) (string, error) {
	if err := s.validate(false); err != nil {
		return "", fmt.Errorf("shape: %w", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "firecracker: %d vCPU, %d MiB, ", s.VCPU, s.MemMiB)
	if len(s.Drives) == 0 {
		b.WriteString("no drives")
	} else {
		b.WriteString("drives")
	}
	for _, d := range s.Drives {
		mode := "rw"
		if d.ReadOnly {
			mode = "ro"
		}
		if d.Root {
			mode += ",root"
		}
		fmt.Fprintf(&b, " %s(%s)", d.ID, mode)
	}
	if s.NIC != nil {
		b.WriteString(", net")
	}
	if f.vsock {
		b.WriteString(", vsock")
	}
	if f.entropy {
		b.WriteString(", entropy")
	}
	return b.String(), nil
}

// Console: Firecracker has one serial port, which is the console log; an
// interactive console is QEMU's.
func (f *firecracker) Console(ctx context.Context, s Spec) (net.Conn, error) {
	return nil, fmt.Errorf("vm %s: console: %w: Firecracker has one serial port (the console log, mergen logs -f); use mergen exec -it for a shell", s.ID, ErrUnavailable)
}
