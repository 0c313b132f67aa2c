package main

import (
	"errors"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/doctor"
)

func newDoctorCmd() *cobra.Command {
	var asJSON bool
	var assets string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host and the base assets a VM boots from",
		Long: "Checks KVM, the VMM binaries, systemd, nftables and /dev/net/tun, then the base assets\n" +
			"(MGR_BASE_ASSETS_DIR, default /var/lib/mergen/base/current). Each line is PASS, FAIL or\n" +
			"WARN with the reason and the fix. Exits non-zero when anything FAILs.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if assets == "" {
				assets = defaultAssetsDir()
			}
			checks := append(doctor.Host(), doctor.BaseAssets(assets)...)
			if err := doctor.Print(cmd.OutOrStdout(), checks, asJSON); err != nil {
				return err
			}
			if doctor.Failed(checks) {
				return errors.New("doctor: some checks failed")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the checks as a JSON array")
	cmd.Flags().StringVar(&assets, "assets", "", "base assets directory (default $MGR_BASE_ASSETS_DIR or /var/lib/mergen/base/current)")
	return cmd
}

func defaultAssetsDir() string {
	if d := os.Getenv("MGR_BASE_ASSETS_DIR"); d != "" {
		return d
	}
	data := os.Getenv("MGR_DATA_ROOT")
	if data == "" {
		data = "/var/lib/mergen"
	}
	return filepath.Join(data, "base", "current")
}
