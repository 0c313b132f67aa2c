// Command mergen-converter turns OCI and Docker images into the ext4 payload
// disk and metadata a mergen VM boots from, and makes agent and env disks.
// It stands alone: it needs neither the daemon nor its configuration.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/config"
)

func main() {
	root := newRootCmd(config.Env())
	root.SetArgs(longFlags(root, os.Args[1:]))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "mergen-converter:", err)
		os.Exit(1)
	}
}

// newRootCmd builds the program; its commands read their configuration
// (config.CLI) through getenv.
func newRootCmd(getenv config.Source) *cobra.Command {
	root := newConvertCmd("mergen-converter [flags] IMAGE", getenv)
	root.AddCommand(newConvertCmd("convert [flags] IMAGE", getenv), newLoginCmd(getenv), newDoctorCmd(getenv), newVersionCmd())
	attachRemote(root, getenv)
	return root
}

// withDataRoot is getenv with --data-root, when given, standing for
// MGR_DATA_ROOT, so that the roots derived from it (images, base assets)
// follow the flag unless set themselves.
func withDataRoot(cmd *cobra.Command, getenv config.Source) config.Source {
	if fl := cmd.Flags().Lookup("data-root"); fl != nil && fl.Changed {
		return getenv.With("MGR_DATA_ROOT", fl.Value.String())
	}
	return getenv
}

// longFlags accepts the single-dash long flags of earlier versions
// (-output-dir, -delete-rootfs) by rewriting them to the double-dash form,
// but only for flags that exist, so "-q" and values stay as they are.
func longFlags(root *cobra.Command, args []string) []string {
	known := map[string]bool{}
	var collect func(c *cobra.Command)
	collect = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflagFlag) { known[f.Name] = true })
		c.PersistentFlags().VisitAll(func(f *pflagFlag) { known[f.Name] = true })
		for _, s := range c.Commands() {
			collect(s)
		}
	}
	collect(root)
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			if known[name] && len(name) > 1 {
				a = "-" + a
			}
		}
		out = append(out, a)
	}
	return out
}
