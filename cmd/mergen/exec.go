package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/mergenhq/mergen/internal/client"
	"github.com/mergenhq/mergen/internal/execproto"
)

// exitError makes mergen exit with a command's status.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func newExecCmd() *cobra.Command {
	f := &apiFlags{}
	var req execproto.ExecRequest
	var interactive, tty bool
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] [-u USER] [-w DIR] [-e K=V] VM -- CMD...",
		Short: "Run a command in a running VM; its exit status becomes mergen's",
		Long: `exec runs CMD in the VM's guest, chrooted in the image's root, as the
image's user (or -u USER[:GROUP]), in its working directory (or -w DIR),
with the payload's environment plus -e variables. -i sends this terminal's
input; -t gives the command a terminal (window size changes follow; Ctrl-C
then goes to the command as a key). Without -t, Ctrl-C sends SIGINT to the
command. An unknown command exits 127, one that cannot run 126.`,
		Example: `  mergen exec demo -- id
  mergen exec -it demo -- sh
  mergen exec -e GREETING=hi demo -- sh -c 'echo $GREETING'`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, vm, err := f.resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			argv := args[1:]
			if argv[0] == "--" { // flags stop at VM: "--" after it is only a separator
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return fmt.Errorf("exec: no command given after %s", args[0])
			}
			req.Argv, req.TTY, req.Stdin = argv, tty, interactive
			streams := client.ExecIO{Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr()}
			if interactive {
				streams.Stdin = cmd.InOrStdin()
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			in := int(os.Stdin.Fd())
			if tty && term.IsTerminal(in) {
				if cols, rows, err := term.GetSize(in); err == nil {
					req.Cols, req.Rows = cols, rows
				}
				if interactive {
					old, err := term.MakeRaw(in)
					if err != nil {
						return fmt.Errorf("exec: raw terminal: %w", err)
					}
					defer term.Restore(in, old)
				}
				resize := make(chan execproto.WindowSize, 1)
				winch := make(chan os.Signal, 1)
				signal.Notify(winch, syscall.SIGWINCH)
				defer signal.Stop(winch)
				go func() {
					for range winch {
						if cols, rows, err := term.GetSize(in); err == nil {
							select {
							case resize <- execproto.WindowSize{Cols: cols, Rows: rows}:
							default:
							}
						}
					}
				}()
				streams.Resize = resize
			} else if !tty {
				// Ctrl-C and termination reach the remote command, which
				// decides when the session ends.
				sigs := make(chan string, 4)
				caught := make(chan os.Signal, 4)
				signal.Notify(caught, os.Interrupt, syscall.SIGTERM)
				defer signal.Stop(caught)
				go func() {
					for s := range caught {
						name := "INT"
						if s == syscall.SIGTERM {
							name = "TERM"
						}
						sigs <- name
					}
				}()
				streams.Signal = sigs
			}
			exit, err := c.Exec(ctx, vm.ID, req, streams)
			if err != nil {
				return err
			}
			code := exit.Code
			if exit.Signal != "" && code == 0 {
				code = 128 + 15
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	f.register(cmd)
	fl := cmd.Flags()
	fl.BoolVarP(&interactive, "interactive", "i", false, "send standard input to the command")
	fl.BoolVarP(&tty, "tty", "t", false, "give the command a terminal")
	fl.StringVarP(&req.User, "user", "u", "", "user[:group] to run as (default: the image's)")
	fl.StringVarP(&req.Workdir, "workdir", "w", "", "working directory (default: the image's)")
	fl.StringArrayVarP(&req.Env, "env", "e", nil, "environment KEY=VALUE; repeatable")
	fl.SetInterspersed(false)
	return cmd
}

func newCpCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files between this host and a running VM (VM:/path on one side)",
		Long: `cp copies a file or directory into or out of a VM's guest, keeping modes.
One side is VM:/absolute/path (a name, id or id prefix), the other a local
path. Files copied in belong to the guest's root, with their modes. Into an
existing directory (or a path ending in /) the source keeps
its name; otherwise it takes the destination's name. Guest paths are
confined to the image's root.`,
		Example: `  mergen cp ./app.conf demo:/etc/app.conf
  mergen cp demo:/var/log ./logs`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcVM, srcPath, srcRemote := splitRemote(args[0])
			dstVM, dstPath, dstRemote := splitRemote(args[1])
			switch {
			case srcRemote == dstRemote:
				return fmt.Errorf("cp: give VM:/path on exactly one side")
			case srcRemote:
				c, vm, err := f.resolve(cmd.Context(), srcVM)
				if err != nil {
					return err
				}
				return copyOut(cmd.Context(), c, vm.ID, srcPath, dstPath)
			default:
				c, vm, err := f.resolve(cmd.Context(), dstVM)
				if err != nil {
					return err
				}
				return copyIn(cmd.Context(), c, vm.ID, srcPath, dstPath)
			}
		},
	}
	f.register(cmd)
	return cmd
}

// splitRemote splits VM:/path; a local path has no colon before its first
// slash.
func splitRemote(arg string) (vm, p string, remote bool) {
	i := strings.Index(arg, ":")
	if i <= 0 || strings.Contains(arg[:i], "/") {
		return "", arg, false
	}
	return arg[:i], arg[i+1:], true
}

// copyOut fetches remote (a tar) and writes it below local.
func copyOut(ctx context.Context, c *client.Client, id, remote, local string) error {
	if !path.IsAbs(remote) {
		return fmt.Errorf("cp: %q: the guest path must be absolute", remote)
	}
	// Into an existing directory the source keeps its name; else the
	// top entry is renamed to local's.
	dir, rename := local, ""
	if fi, err := os.Stat(local); err != nil || !fi.IsDir() {
		if strings.HasSuffix(local, "/") {
			return fmt.Errorf("cp: %s: no such directory", local)
		}
		dir, rename = filepath.Dir(local), filepath.Base(local)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(c.ReadFiles(ctx, id, remote, pw)) }()
	defer pr.Close()
	tr := tar.NewReader(pr)
	top := path.Base(remote)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("cp %s:%s: %w", id, remote, err)
		}
		name := path.Clean(hdr.Name)
		if rename != "" {
			if name == top {
				name = rename
			} else if rest, ok := strings.CutPrefix(name, top+"/"); ok {
				name = rename + "/" + rest
			}
		}
		if !fs.ValidPath(name) {
			return fmt.Errorf("cp: the archive names %q, outside the destination", hdr.Name)
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		mode := os.FileMode(hdr.Mode & 0o7777)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			os.Chmod(target, mode)
		case tar.TypeReg:
			out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, tr); err != nil {
				out.Close()
				return err
			}
			if err := out.Close(); err != nil {
				return err
			}
			os.Chmod(target, mode)
		case tar.TypeSymlink:
			os.Remove(target)
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		}
	}
}

// copyIn sends local as a tar into the guest.
func copyIn(ctx context.Context, c *client.Client, id, local, remote string) error {
	if !path.IsAbs(remote) {
		return fmt.Errorf("cp: %q: the guest path must be absolute", remote)
	}
	if _, err := os.Lstat(local); err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	// remote ending in / is a directory to copy into; otherwise remote is
	// the new name (docker's rule, without asking the guest first).
	dir, name := remote, filepath.Base(local)
	if !strings.HasSuffix(remote, "/") {
		dir, name = path.Dir(remote), path.Base(remote)
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := filepath.WalkDir(local, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(local, p)
			entry := path.Join(name, filepath.ToSlash(rel))
			link := ""
			if info.Mode()&fs.ModeSymlink != 0 {
				if link, err = os.Readlink(p); err != nil {
					return err
				}
			}
			hdr, err := tar.FileInfoHeader(info, link)
			if err != nil {
				return err
			}
			// Owned by the guest's root, as docker cp does: this host's
			// uids mean nothing in the image.
			hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = entry, 0, 0, "", ""
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if info.Mode().IsRegular() {
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = io.Copy(tw, f)
				return err
			}
			return nil
		})
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	if err := c.WriteFiles(ctx, id, dir, pr); err != nil {
		return fmt.Errorf("cp %s %s:%s: %w", local, id, remote, err)
	}
	return nil
}
