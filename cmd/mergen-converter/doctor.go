package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/doctor"
)

func newDoctorCmd(getenv config.Source) *cobra.Command {
	var asJSON bool
	var assets string
	defaults, _ := config.CLIFromEnv(getenv)
	cmd := &cobra.Command{
		Use:   "doctor [--json]",
		Short: "Check the tools conversions need, the images root and the base assets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.CLIFromEnv(withDataRoot(cmd, getenv))
			if err != nil {
				return err
			}
			if assets == "" {
				assets = cfg.BaseAssetsDir
			}
			checks := append(converterChecks(cfg.ImagesRoot), doctor.BaseAssets(assets)...)
			if err := doctor.Print(cmd.OutOrStdout(), checks, asJSON); err != nil {
				return err
			}
			if doctor.Failed(checks) {
				return fmt.Errorf("doctor: some checks failed")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	cmd.Flags().StringVar(&assets, "assets", "", "base assets dir (default: $MGR_BASE_ASSETS_DIR, itself by default $MGR_DATA_ROOT/base/current)")
	cmd.Flags().String("data-root", defaults.DataRoot, "data root ($MGR_DATA_ROOT)")
	return cmd
}

// converterChecks: the e2fsprogs programs the converter runs, and whether
// converted images can be written into the images root.
func converterChecks(images string) []doctor.Check {
	var checks []doctor.Check
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "tune2fs", "resize2fs"} {
		c := doctor.Check{Name: tool, Status: doctor.Pass}
		if p, err := exec.LookPath(tool); err != nil {
			c.Status, c.Reason, c.Fix = doctor.Fail, tool+" not found in PATH", "install e2fsprogs (apt-get install e2fsprogs)"
		} else {
			c.Reason = p
		}
		checks = append(checks, c)
	}
	c := doctor.Check{Name: "images dir", Status: doctor.Pass, Reason: images + " is writable"}
	if err := writable(images); err != nil {
		c.Status, c.Reason, c.Fix = doctor.Fail, err.Error(), "create it, or set MGR_IMAGES_ROOT (or MGR_DATA_ROOT, --output-dir) to a writable place"
	}
	if os.Geteuid() != 0 && c.Status == doctor.Pass {
		c.Status, c.Reason = doctor.Warn, images+" is writable; not root: disks are made with tar2ext4 instead of mkfs.ext4 -d"
	}
	return append(checks, c)
}

// writable checks dir (or its nearest existing parent) by creating a file.
func writable(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			f, err := os.CreateTemp(d, ".doctor-")
			if err != nil {
				return fmt.Errorf("%s is not writable: %w", d, err)
			}
			f.Close()
			return os.Remove(f.Name())
		}
		if d == filepath.Dir(d) {
			return fmt.Errorf("no existing parent of %s", dir)
		}
	}
}
