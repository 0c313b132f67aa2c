package main

import (
	"errors"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/doctor"
)

func newDoctorCmd() *cobra.Command { return doctorCmd(config.Env()) }

// doctorCmd is newDoctorCmd reading its configuration through getenv.
func doctorCmd(getenv config.Source) *cobra.Command {
	var asJSON bool
	var assets string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host and the base assets a VM boots from",
		Long: "Checks the daemon's configuration, KVM, the VMM binaries, systemd, nftables and /dev/net/tun,\n" +
			"then the base assets (MGR_BASE_ASSETS_DIR, default $MGR_DATA_ROOT/base/current). Each line is\n" +
			"PASS, FAIL or WARN with the reason and the fix. Exits non-zero when anything FAILs.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cli, err := config.CLIFromEnv(getenv)
			if err != nil {
				return err
			}
			if assets == "" {
				assets = cli.BaseAssetsDir
			}
			// The VMM binaries are the daemon's settings; a configuration
			// the daemon would refuse is a failed check of its own.
			host, err := config.FromEnv(getenv)
			checks := append([]doctor.Check{configCheck(err)}, doctor.Host(host.Driver.FirecrackerBin, host.Driver.QEMUBin)...)
			checks = append(checks, doctor.VMM(host.VMM, host.Driver)...)
			checks = append(checks, doctor.BaseAssets(assets)...)
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
	cmd.Flags().StringVar(&assets, "assets", "", "base assets directory (default $MGR_BASE_ASSETS_DIR, itself by default $MGR_DATA_ROOT/base/current)")
	return cmd
}

// configCheck reports whether the daemon would accept this environment.
func configCheck(err error) doctor.Check {
	if err == nil {
		return doctor.Check{Name: "configuration", Status: doctor.Pass, Reason: "the MGR_*/MGN_* settings are valid"}
	}
	return doctor.Check{Name: "configuration", Status: doctor.Fail, Reason: strings.ReplaceAll(err.Error(), "\n", "; "),
		Fix: "correct the variables named (README.md, Configuration)"}
}
