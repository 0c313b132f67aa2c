package guest

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mergenhq/mergen/internal/bootparam"
	"github.com/mergenhq/mergen/internal/execproto"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"golang.org/x/sys/unix"
)

// Where mergen-init puts things inside the guest.
const (
	modulesDir = "/lib/modules/mergen"
	mergenDir  = "/mergen"
	agentMnt   = mergenDir + "/agent"
	payloadMnt = mergenDir + "/payload"
	envMnt     = mergenDir + "/env"
	dataMnt    = mergenDir + "/data"
	rwMnt      = mergenDir + "/rw"
	rootMnt    = mergenDir + "/root"
)

// Exit statuses of mergen-init's own failures, so the host can tell them from
// the payload's.
const (
	ExitConfig     = 78  // bad image metadata, env, user or command line
	ExitNoCommand  = 127 // entrypoint not found in the image
	ExitInitFailed = 70  // mounts, disks: the guest could not be set up
)

type failure struct {
	code int
	err  error
}

func (f *failure) Error() string { return f.err.Error() }

func fail(code int, format string, a ...any) error {
	return &failure{code: code, err: fmt.Errorf(format, a...)}
}

var consoleMu sync.Mutex

func logf(format string, a ...any) {
	consoleMu.Lock()
	defer consoleMu.Unlock()
	fmt.Fprintf(os.Stdout, "mergen-init: "+format+"\n", a...)
}

// Main runs mergen-init in the role its name and pid select and returns the
// process exit status (only reached outside PID 1).
func Main(args []string) int {
	name := filepath.Base(args[0])
	switch {
	case os.Getpid() == 1 && args[0] == "/init":
		stage1()
	case os.Getpid() == 1:
		pid1()
	case name == "mergen-agent":
		fmt.Println("mergen-agent is mergen-init's agent-disk copy; it runs only as the guest's PID 1")
		return 0
	}
	fmt.Fprintln(os.Stderr, "mergen-init: must run as PID 1 inside a mergen VM")
	return 2
}

// mountKernelFS mounts what every stage needs and points stdio at the
// console: the kernel opens /dev/console for init only if the node exists,
// and neither the initramfs nor the golden rootfs ships one.
func mountKernelFS() {
	for _, m := range []struct{ src, dst, typ, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, unix.MS_NOSUID, m.data); err != nil && err != unix.EBUSY {
			logf("mount %s: %v", m.dst, err)
		}
	}
	if c, err := os.OpenFile("/dev/console", os.O_RDWR, 0); err == nil {
		for fd := 0; fd < 3; fd++ {
			unix.Dup2(int(c.Fd()), fd)
		}
		c.Close()
	}
}

// loadModules loads the modules in dir/modules.list in order. A module
// already loaded (or built in on another kernel) is not an error.
func loadModules(dir string) {
	list, err := os.ReadFile(filepath.Join(dir, "modules.list"))
	if err != nil {
		return
	}
	for _, m := range strings.Fields(string(list)) {
		f, err := os.Open(filepath.Join(dir, m+".ko"))
		if err != nil {
			logf("module %s: %v", m, err)
			continue
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			logf("module %s: %v", m, err)
		}
	}
}

// waitForLabels polls for disks: virtio-blk probes asynchronously after its
// module loads.
func waitForLabels(want string, timeout time.Duration) map[string]string {
	deadline := time.Now().Add(timeout)
	for {
		disks, _ := DisksByLabel("/sys/class/block", "/dev")
		if _, ok := disks[want]; ok || time.Now().After(deadline) {
			return disks
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stage1 is the initramfs /init: modules, root by label, switch_root.
func stage1() {
	mountKernelFS()
	logf("initramfs: loading modules")
	loadModules(modulesDir)
	disks := waitForLabels(imagemeta.LabelRoot, 10*time.Second)
	dev, ok := disks[imagemeta.LabelRoot]
	if !ok {
		powerOff(ExitInitFailed, fmt.Errorf("initramfs: no disk labelled %s", imagemeta.LabelRoot), false)
	}
	if err := switchRoot(dev, "/newroot"); err != nil {
		powerOff(ExitInitFailed, fmt.Errorf("initramfs: switch root to %s: %w", dev, err), false)
	}
}

func switchRoot(dev, newRoot string) error {
	os.MkdirAll(newRoot, 0o755)
	if err := unix.Mount(dev, newRoot, "ext4", unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		if err := unix.Mount(d, newRoot+d, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s: %w", d, err)
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	unix.Chdir("/")
	// The initramfs stays in memory (a few MB); the guest never returns to it.
	return unix.Exec("/sbin/init", []string{"/sbin/init"}, os.Environ())
}

// uptime reads seconds since kernel start.
func uptime() float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return -1
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}

type mounted struct{ list []string }

func (m *mounted) mount(src, dst, typ string, flags uintptr, data string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", dst, err)
	}
	if err := unix.Mount(src, dst, typ, flags, data); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", src, typ, dst, err)
	}
	m.list = append(m.list, dst)
	return nil
}

var mounts mounted

// pid1 is /sbin/init on the golden rootfs.
func pid1() {
	mountKernelFS()
	start := uptime()
	logf("starting (kernel uptime %.3fs)", start)
	// Ctrl-Alt-Del becomes SIGINT to us instead of an immediate reboot.
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		logf("ctrl-alt-del: %v", err)
	}
	stop := make(chan os.Signal, 4)
	// SIGUSR1 and SIGUSR2 are what busybox's halt and poweroff send to
	// init.
	signal.Notify(stop, unix.SIGINT, unix.SIGTERM, unix.SIGPWR, unix.SIGUSR1, unix.SIGUSR2)

	code, err := setupAndRun(stop)
	powerOff(code, err, true)
}

func setupAndRun(stop chan os.Signal) (int, error) {
	for _, m := range []struct{ src, dst, typ, data string }{
		{"devpts", "/dev/pts", "devpts", "gid=5,mode=620,ptmxmode=666"},
		{"tmpfs", "/dev/shm", "tmpfs", "mode=1777"},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
		{"tmpfs", mergenDir, "tmpfs", "mode=0755"},
	} {
		if err := mounts.mount(m.src, m.dst, m.typ, unix.MS_NOSUID, m.data); err != nil {
			return ExitInitFailed, err
		}
	}
	loadModules(modulesDir)
	seedEntropy()
	go watchPowerButton(stop)

	boot, err := ParseCmdline(readCmdline())
	if err != nil {
		return ExitConfig, fail(ExitConfig, "%v", err)
	}
	setHostname("mergen")
	if err := configureNetwork(boot.Net); err != nil {
		return ExitInitFailed, err
	}

	disks := waitForLabels(imagemeta.LabelPayload, 5*time.Second)
	pdev, ok := disks[imagemeta.LabelPayload]
	if !ok {
		return ExitInitFailed, fmt.Errorf("no disk labelled %s (the image)", imagemeta.LabelPayload)
	}
	if err := mounts.mount(pdev, payloadMnt, "ext4", unix.MS_RDONLY, ""); err != nil {
		return ExitInitFailed, err
	}
	if dev, ok := disks[imagemeta.LabelAgent]; ok {
		if err := mounts.mount(dev, agentMnt, "ext4", unix.MS_RDONLY, ""); err != nil {
			logf("agent disk: %v", err)
		} else if fatal, err := runAgentInit(filepath.Join(agentMnt, "sbin-init")); fatal {
			return ExitInitFailed, err
		} else if err != nil {
			logf("agent disk: %v; continuing with the golden rootfs's init", err)
		}
	}
	// The agent answers from before the payload starts: a host restoring a
	// snapshot taken at any point finds it, and an identity that comes
	// before the payload's root is ready lands there once it is.
	state := newVMState(boot)
	startAgent(state.handle)

	var envDisk []string
	if dev, ok := disks[imagemeta.LabelEnv]; ok {
		if err := mounts.mount(dev, envMnt, "ext4", unix.MS_RDONLY, ""); err != nil {
			return ExitInitFailed, err
		}
		data, err := os.ReadFile(filepath.Join(envMnt, imagemeta.EnvFile))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return ExitConfig, fail(ExitConfig, "env disk: %v", err)
		}
		if envDisk, err = ParseEnvFile(data); err != nil {
			return ExitConfig, fail(ExitConfig, "env disk: %v", err)
		}
	}

	spec, err := readImage(payloadMnt)
	if err != nil {
		return ExitConfig, err
	}
	if boot.Argv != nil { // the VM's own argv (a pod's command and args)
		spec.Argv = boot.Argv
	}

	// Writable layer: on the VM's data disk when given, else in memory.
	upperBase := rwMnt
	if dev, ok := disks[imagemeta.LabelData]; ok {
		if err := mounts.mount(dev, dataMnt, "ext4", 0, ""); err != nil {
			return ExitInitFailed, err
		}
		upperBase = dataMnt
	} else if err := mounts.mount("tmpfs", rwMnt, "tmpfs", 0, "mode=0755"); err != nil {
		return ExitInitFailed, err
	}
	upper, work := filepath.Join(upperBase, "upper"), filepath.Join(upperBase, "work")
	os.MkdirAll(upper, 0o755)
	os.MkdirAll(work, 0o755)
	if err := mounts.mount("overlay", rootMnt, "overlay", 0, OverlayOptions(payloadMnt, upper, work)); err != nil {
		return ExitInitFailed, err
	}
	for _, m := range ChrootMounts(rootMnt) {
		if err := mounts.mount(m.Source, m.Target, m.FSType, m.Flags, m.Data); err != nil {
			return ExitInitFailed, err
		}
	}

	cred, err := LookupUser(rootMnt, spec.User)
	if err != nil {
		return ExitConfig, fail(ExitConfig, "image user: %v", err)
	}
	if err := state.rootReady(rootMnt, cred); err != nil {
		return ExitInitFailed, err
	}
	// Every start of the payload, restarts included, and every exec get
	// the VM's extraEnv and hostname as they are then: an identity
	// replaces both.
	envFor := func(home string) []string {
		extra, host := state.current()
		return PayloadEnv(spec.Env, envDisk, extra, home, host)
	}
	envNow := func() []string { return envFor(cred.Home) }
	// The entrypoint is resolved once, with the PATH of the first start.
	path, _ := LookupEnv(envNow(), "PATH")
	exe, err := ResolveCommand(rootMnt, spec.Argv[0], path)
	if err != nil {
		return ExitNoCommand, fail(ExitNoCommand, "entrypoint: %v", err)
	}
	wd := spec.WorkingDir
	if wd == "" {
		wd = "/"
	}
	if err := os.MkdirAll(filepath.Join(rootMnt, wd), 0o755); err != nil {
		return ExitConfig, fail(ExitConfig, "working directory %s: %v", wd, err)
	}
	stopSig := unix.SIGTERM
	if spec.StopSignal != "" {
		if s, ok := ParseSignal(spec.StopSignal); ok {
			stopSig = s
		} else {
			logf("stop signal %q unknown, using SIGTERM", spec.StopSignal)
		}
	}
	// Children are collected from here on, before the exec agent can
	// start any: a SIGCHLD from then is not lost.
	chld := make(chan os.Signal, 16)
	signal.Notify(chld, unix.SIGCHLD)
	startExecAgent(newExecServer(rootMnt, cred, wd, envFor, state.execSecret, execChildren))
	// The rescue console's shell waits for the payload's first start: it
	// is there when the payload or the network breaks, and its start
	// (a fork and an exec, emulated) is not in every boot's way.
	started := func() { startConsole(execChildren) }
	if boot.EnvFromAgent {
		// The VM's extraEnv did not fit the command line: the host's
		// post-start stage hands it over the agent channel, and the
		// payload must not start without it.
		logf("waiting for the VM's environment from the host (%s=%s)", bootparam.EnvFromParam, bootparam.FromAgent)
		select {
		case <-state.envGiven:
		case sig := <-stop:
			stopRequested.Store(true)
			logf("stop requested (%v) before the payload started", sig)
			return 0, nil
		}
	}
	return supervise(&payload{exe: exe, argv: spec.Argv, env: envNow, dir: wd, cred: cred, root: rootMnt, start: uptime, started: started}, boot, stopSig, stop, chld)
}

// execChildren are the exec agent's commands, whose statuses reap passes
// on.
var execChildren = newChildren(false)

// startExecAgent serves the exec agent on every guest address for the rest
// of PID 1's life. It serves from when the payload's root is ready: every
// session runs there.
func startExecAgent(s *execServer) {
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", execproto.Port))
	if err != nil {
		logf("exec: listen on port %d: %v", execproto.Port, err)
		return
	}
	logf("exec: listening on port %d", execproto.Port)
	go func() {
		err := s.serve(l)
		logf("exec: %v", err)
	}()
}

func hostname(n *Net) string {
	if n != nil && n.Hostname != "" {
		return n.Hostname
	}
	return "mergen"
}

// Spec is what the payload runs, from the payload disk's metadata.
type Spec struct {
	Argv       []string
	Env        []string
	WorkingDir string
	User       string
	StopSignal string
}

// readImage reads /.mergen/image-meta.json and mergen.runtime.json from the
// payload disk. Both must exist and parse; the runtime file's argv is what
// runs, fields it leaves empty fall back to the image's.
func readImage(root string) (Spec, error) {
	dir := filepath.Join(root, imagemeta.MetaDir)
	var meta imagemeta.ImageMeta
	var rt imagemeta.Runtime
	for _, f := range []struct {
		name string
		v    any
	}{{imagemeta.ImageMetaFile, &meta}, {imagemeta.RuntimeFile, &rt}} {
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return Spec{}, fail(ExitConfig, "payload disk: /%s/%s: %v", imagemeta.MetaDir, f.name, err)
		}
		if err := json.Unmarshal(b, f.v); err != nil {
			return Spec{}, fail(ExitConfig, "payload disk: /%s/%s is not valid JSON: %v", imagemeta.MetaDir, f.name, err)
		}
	}
	return SpecFrom(meta, rt)
}

// SpecFrom combines the two metadata files.
func SpecFrom(meta imagemeta.ImageMeta, rt imagemeta.Runtime) (Spec, error) {
	s := Spec{Argv: rt.Argv, Env: rt.Env, WorkingDir: rt.WorkingDir, User: rt.User, StopSignal: rt.StopSignal}
	if len(s.Argv) == 0 {
		s.Argv = append(append([]string{}, meta.Entrypoint...), meta.Cmd...)
	}
	if s.Env == nil {
		s.Env = meta.Env
	}
	if s.WorkingDir == "" {
		s.WorkingDir = meta.WorkingDir
	}
	if s.User == "" {
		s.User = meta.User
	}
	if s.StopSignal == "" {
		s.StopSignal = meta.StopSignal
	}
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		return Spec{}, fail(ExitConfig, "image metadata: argv is empty (no entrypoint or cmd)")
	}
	for i, kv := range s.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return Spec{}, fail(ExitConfig, "image metadata: env[%d] %q is not KEY=VALUE", i, kv)
		}
	}
	if s.WorkingDir != "" && !filepath.IsAbs(s.WorkingDir) {
		return Spec{}, fail(ExitConfig, "image metadata: workingDir %q is not absolute", s.WorkingDir)
	}
	return s, nil
}

// seedEntropy mixes boot-varying bytes into the pool. It credits nothing:
// 6.1 kernels initialise the CRNG themselves from RDRAND and jitter.
func seedEntropy() {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:], uint64(time.Now().UnixNano()))
	binary.LittleEndian.PutUint64(b[8:], uint64(os.Getpid()))
	f.Write(b[:])
}

// watchPowerButton turns an ACPI power-button press (QEMU system_powerdown)
// into a stop request, like Ctrl-Alt-Del.
func watchPowerButton(stop chan os.Signal) {
	ents, _ := filepath.Glob("/sys/class/input/event*")
	for _, e := range ents {
		name, _ := os.ReadFile(filepath.Join(e, "device/name"))
		if strings.TrimSpace(string(name)) != "Power Button" {
			continue
		}
		f, err := os.Open("/dev/input/" + filepath.Base(e))
		if err != nil {
			continue
		}
		go func(f *os.File) {
			r := bufio.NewReader(f)
			ev := make([]byte, 24) // struct input_event on 64-bit
			for {
				if _, err := io.ReadFull(r, ev); err != nil {
					return
				}
				typ := binary.LittleEndian.Uint16(ev[16:])
				code := binary.LittleEndian.Uint16(ev[18:])
				val := binary.LittleEndian.Uint32(ev[20:])
				if typ == 1 && code == 116 && val == 1 { // EV_KEY, KEY_POWER, press
					stop <- unix.SIGPWR
				}
			}
		}(f)
	}
}

type payload struct {
	exe   string
	argv  []string
	env   func() []string // asked at every start
	dir   string
	cred  Cred
	root  string
	start func() float64
	// started runs once, after the first start (nil: nothing).
	started func()
}

// run starts the payload in its own process group with stdout and stderr
// prefixed on the console.
func (p *payload) run(out *sync.WaitGroup) (int, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	devnull, _ := os.Open("/dev/null")
	proc, err := os.StartProcess(p.exe, p.argv, &os.ProcAttr{
		Dir:   p.dir,
		Env:   p.env(),
		Files: []*os.File{devnull, w, w},
		Sys: &syscall.SysProcAttr{
			Chroot:     p.root,
			Setpgid:    true,
			Credential: &syscall.Credential{Uid: p.cred.UID, Gid: p.cred.GID, Groups: p.cred.Groups},
		},
	})
	w.Close()
	if devnull != nil {
		devnull.Close()
	}
	if err != nil {
		r.Close()
		return 0, err
	}
	out.Add(1)
	go func() {
		defer out.Done()
		// A line longer than the buffer is printed in pieces rather than
		// stalling the reader (and with it the payload's writes).
		br := bufio.NewReaderSize(r, 64*1024)
		for {
			line, err := br.ReadSlice('\n')
			if len(line) > 0 {
				consoleMu.Lock()
				fmt.Fprintf(os.Stdout, "[payload] %s\n", strings.TrimSuffix(string(line), "\n"))
				consoleMu.Unlock()
			}
			if err != nil && err != bufio.ErrBufferFull {
				break
			}
		}
		r.Close()
	}()
	pid := proc.Pid
	proc.Release() // the reaper, not os.Process, waits for it
	return pid, nil
}

// supervise runs the payload, reaps every child, and handles stop requests.
// One loop calls wait4(-1) so reaping orphans never races the payload's wait.
// chld is notified of SIGCHLD.
func supervise(p *payload, boot Boot, stopSig unix.Signal, stop, chld chan os.Signal) (int, error) {
	restart := boot.Restart
	var out sync.WaitGroup
	first := true
	for {
		t := uptime()
		pid, err := p.run(&out)
		if err != nil {
			return ExitNoCommand, fail(ExitNoCommand, "start %s: %v", p.argv[0], err)
		}
		if first {
			logf("boot timeline: kernel-start->payload-exec %.3fs", t)
		}
		logf("payload started: pid %d, uid %d, gid %d, argv %q", pid, p.cred.UID, p.cred.GID, p.argv)
		if first && p.started != nil {
			p.started()
		}
		first = false
		stopping := false
		var kill <-chan time.Time
		status := -1
		for status < 0 {
			select {
			case s := <-stop:
				stopRequested.Store(true)
				if !stopping {
					logf("stop requested (%v): sending %v to the payload", s, stopSig)
					unix.Kill(-pid, stopSig)
					stopping = true
					kill = time.After(boot.StopTimeout)
				}
			case <-kill:
				logf("payload still running after %v: SIGKILL", boot.StopTimeout)
				unix.Kill(-pid, unix.SIGKILL)
			case <-chld:
				status = reap(pid)
			}
		}
		code := status
		logf("payload exited with status %d", code)
		switch {
		case stopping:
			drain(&out)
			return code, nil
		case restart == RestartAlways, restart == RestartOnFailure && code != 0:
			logf("restarting (policy %s)", restart)
			select {
			case s := <-stop:
				stopRequested.Store(true)
				logf("stop requested (%v) while restarting", s)
				drain(&out)
				return code, nil
			case <-time.After(time.Second):
			}
			continue
		}
		drain(&out)
		return code, nil
	}
}

// drain waits briefly for the payload's last output. A background process
// the payload left behind may hold the pipe open for ever; it is killed at
// power-off, so waiting longer would only hang the guest.
func drain(out *sync.WaitGroup) {
	done := make(chan struct{})
	go func() { out.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
	}
}

// reap collects every exited child and returns the main payload's status when
// it is among them, else -1. The exec agent's commands' statuses go to
// their sessions.
func reap(main int) int {
	execChildren.mu.Lock()
	defer execChildren.mu.Unlock()
	status := -1
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return status
		}
		if execChildren.collected(pid, ws) {
			continue
		}
		if pid == main {
			switch {
			case ws.Exited():
				status = ws.ExitStatus()
			case ws.Signaled():
				status = 128 + int(ws.Signal())
			}
		}
	}
}

// stopRequested is set once the guest was asked to stop (ACPI power button,
// a signal to PID 1): its end is then not a failure, whatever the payload's
// status.
var stopRequested atomic.Bool

func readCmdline() string {
	b, _ := os.ReadFile("/proc/cmdline")
	return string(b)
}

// powerOff reports the status, ends every process, syncs, unmounts and
// powers the VM off. It never returns.
func powerOff(code int, err error, full bool) {
	var f *failure
	if errors.As(err, &f) {
		code = f.code
	}
	if err != nil {
		logf("error: %v", err)
		if code == 0 {
			code = ExitInitFailed
		}
	}
	logf("exit status %d", code)
	if full {
		unix.Kill(-1, unix.SIGTERM)
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			if pid, _ := unix.Wait4(-1, nil, unix.WNOHANG, nil); pid < 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		unix.Kill(-1, unix.SIGKILL)
		unix.Sync()
		for i := len(mounts.list) - 1; i >= 0; i-- {
			if err := unix.Unmount(mounts.list[i], 0); err != nil {
				unix.Unmount(mounts.list[i], unix.MNT_DETACH)
			}
		}
	}
	unix.Sync()
	// A guest that ends by itself with a failure makes its VMM fail, when
	// the kernel command line names the VMM's exit device (QEMU's
	// isa-debug-exit): the service manager then sees a failure, and an
	// on-failure restart policy applies. Without the device every power-off
	// is a clean exit of the VMM.
	if port := ExitPortFrom(readCmdline()); port != 0 && code != 0 && !stopRequested.Load() {
		// The VMM ends on this write; the power-off below is for a device
		// that did not take it.
		if err := writeExitDevice(port, byte(code)); err != nil {
			logf("exit device: %v", err)
		}
	}
	// Without ACPI (Firecracker before 1.8) there is no power-off method and
	// the VMM ends the VM on a keyboard-controller reset instead (reboot=k).
	if _, err := os.Stat("/sys/firmware/acpi"); err == nil {
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

// agentInitEnv marks an init started from the agent disk, so it does not
// start itself again.
const agentInitEnv = "MERGEN_AGENT_INIT"

// runAgentInit replaces this init with the agent disk's sbin-init when that
// one differs: the agent disk carries the host's current guest binary, so a
// golden rootfs built earlier still boots the init the host expects. The
// binary is copied to memory and every mount of this init is undone before
// the exec, so the new init starts from the same state this one did. It
// returns only when it does not (or cannot) exec; fatal says the mounts are
// already gone and this init cannot go on.
func runAgentInit(path string) (fatal bool, err error) {
	if os.Getenv(agentInitEnv) != "" {
		return false, nil
	}
	agent, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil || string(self) == string(agent) {
		return false, err
	}
	fd, err := unix.MemfdCreate("mergen-init", 0) // no CLOEXEC: exec'd by fd
	if err != nil {
		return false, fmt.Errorf("memfd: %w", err)
	}
	// Raw writes: an *os.File here could be finalized, closing fd, before
	// the exec.
	for rest := agent; len(rest) > 0; {
		n, err := unix.Write(fd, rest)
		if err != nil {
			unix.Close(fd)
			return false, fmt.Errorf("memfd: %w", err)
		}
		rest = rest[n:]
	}
	logf("agent disk: running its init (%d bytes)", len(agent))
	for i := len(mounts.list) - 1; i >= 0; i-- {
		if err := unix.Unmount(mounts.list[i], 0); err != nil {
			unix.Unmount(mounts.list[i], unix.MNT_DETACH)
		}
	}
	mounts.list = nil
	err = unix.Exec(fmt.Sprintf("/proc/self/fd/%d", fd), []string{"/sbin/init"}, append(os.Environ(), agentInitEnv+"=1"))
	return true, fmt.Errorf("exec the agent disk's init: %w", err)
}
