package guest

import (
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is one step of a mount plan.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

// OverlayOptions is the overlayfs option string for a read-only image under
// a writable upper layer.
func OverlayOptions(lower, upper, work string) string {
	return fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
}

// ChrootMounts is what the payload's root needs besides the image itself:
// the kernel file systems and a private /dev/shm and /run.
func ChrootMounts(root string) []Mount {
	j := func(p string) string { return filepath.Join(root, p) }
	return []Mount{
		{"proc", j("/proc"), "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", j("/sys"), "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RDONLY, ""},
		{"/dev", j("/dev"), "", unix.MS_BIND | unix.MS_REC, ""},
		{"tmpfs", j("/run"), "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	}
}

// ResolveCommand finds argv0 inside the image at root the way execvp would
// from within it, returning the path as seen from the host side (root
// prefixed is NOT included: the process is chrooted, so the result is the
// in-image path).
func ResolveCommand(root, argv0, pathEnv string) (string, error) {
	isExec := func(p string) bool {
		st, err := os.Stat(resolveIn(root, p))
		return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
	}
	if strings.Contains(argv0, "/") {
		p := argv0
		if !path.IsAbs(p) {
			return "", fmt.Errorf("%q: relative paths are not supported", argv0)
		}
		if !isExec(p) {
			return "", fmt.Errorf("%q does not exist in the image or is not executable", argv0)
		}
		return p, nil
	}
	for _, dir := range strings.Split(pathEnv, ":") {
		if dir == "" || !path.IsAbs(dir) {
			continue
		}
		if p := path.Join(dir, argv0); isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in the image's PATH %s", argv0, pathEnv)
}

// resolveIn follows symlinks of p as if root were "/", so an absolute link in
// the image does not escape to the guest's own root.
func resolveIn(root, p string) string {
	cur := "/"
	parts := strings.Split(strings.Trim(path.Clean(p), "/"), "/")
	for hops := 0; len(parts) > 0 && hops < 40; {
		next := path.Join(cur, parts[0])
		parts = parts[1:]
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			cur = next
			continue
		}
		hops++
		if !path.IsAbs(target) {
			target = path.Join(cur, target)
		}
		parts = append(strings.Split(strings.Trim(path.Clean(target), "/"), "/"), parts...)
		cur = "/"
	}
	return filepath.Join(root, cur)
}

// ParseSignal reads "SIGTERM", "TERM" or "15".
func ParseSignal(s string) (unix.Signal, bool) {
	s = strings.ToUpper(strings.TrimSpace(s))
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err == nil && fmt.Sprint(n) == s {
		return unix.Signal(n), n > 0 && n < 65
	}
	if !strings.HasPrefix(s, "SIG") {
		s = "SIG" + s
	}
	sig := unix.SignalNum(s)
	return sig, sig != 0
}

// NetFiles renders /etc/hosts and /etc/resolv.conf for a guest called name
// with network n (nil: none).
func NetFiles(name string, n *Net) (hosts, resolv string) {
	hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if n != nil {
		hosts += fmt.Sprintf("%s\t%s\n", n.Addr, name)
		var b strings.Builder
		for _, d := range n.DNS {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		resolv = b.String()
	} else {
		hosts += fmt.Sprintf("127.0.1.1\t%s\n", name)
	}
	return hosts, resolv
}

// Prefix returns the CIDR form of the guest address.
func (n *Net) Prefix() *net.IPNet { return &net.IPNet{IP: n.Addr, Mask: n.Mask} }
