package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/profile"
)

// newConfigCmd manages the S3 profiles used by `images push|pull`.
func newConfigCmd() *cobra.Command { return configCmd(config.Env()) }

// configCmd is newConfigCmd reading its configuration through getenv.
func configCmd(getenv config.Source) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Manage S3 registry profiles (MERGEN_CONFIG_FILE, default ~/.config/mergen/config.json)"}
	cmd.AddCommand(newConfigInitCmd(getenv), newConfigLoginCmd(getenv), newConfigShowCmd(getenv))
	return cmd
}

// profileFlags are the profile fields a command accepts; empty flags fall
// back to MGR_CONFIG_S3_*.
type profileFlags struct {
	registry string
	p        profile.Profile
}

func (f *profileFlags) registerRegistry(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.registry, "registry", "default", "profile name")
}

func (f *profileFlags) given(cfg config.CLI) profile.Profile {
	env := profile.FromEnv(cfg.S3)
	g := f.p
	for dst, src := range map[*string]string{&g.Endpoint: env.Endpoint, &g.Region: env.Region, &g.Bucket: env.Bucket, &g.Prefix: env.Prefix,
		&g.AccessKeyID: env.AccessKeyID, &g.SecretAccessKey: env.SecretAccessKey, &g.SessionToken: env.SessionToken, &g.Username: env.Username} {
		if *dst == "" {
			*dst = src
		}
	}
	g.PathStyle = g.PathStyle || env.PathStyle
	return g
}

func newConfigInitCmd(getenv config.Source) *cobra.Command {
	var f profileFlags
	cmd := &cobra.Command{
		Use:   "init --registry NAME [--bucket B] [--endpoint URL] ...",
		Short: "Create or update an S3 profile",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.CLIFromEnv(getenv)
			if err != nil {
				return err
			}
			p, err := profile.Init(cfg.ConfigFile, f.registry, f.given(cfg), profile.TerminalAsker(cmd.InOrStdin(), cmd.ErrOrStderr()))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "profile %s saved in %s: %s\n", f.registry, cfg.ConfigFile, p)
			return nil
		},
	}
	f.registerRegistry(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.p.Endpoint, "endpoint", "", "S3 endpoint URL (empty for AWS; required for MinIO or other S3-compatible stores)")
	fl.StringVar(&f.p.Region, "region", "", "region (default us-east-1)")
	fl.StringVar(&f.p.Bucket, "bucket", "", "bucket")
	fl.StringVar(&f.p.Prefix, "prefix", "", "key prefix (default artifacts)")
	fl.BoolVar(&f.p.PathStyle, "path-style", false, "path-style addressing (MinIO and most self-hosted stores)")
	return cmd
}

func newConfigLoginCmd(getenv config.Source) *cobra.Command {
	var f profileFlags
	var secretStdin bool
	cmd := &cobra.Command{
		Use:   "login --registry NAME [--access-key-id ID --secret-access-key-stdin]",
		Short: "Store credentials in an S3 profile",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.CLIFromEnv(getenv)
			if err != nil {
				return err
			}
			g := f.given(cfg)
			ask := profile.TerminalAsker(cmd.InOrStdin(), cmd.ErrOrStderr())
			if secretStdin {
				// The secret comes from a pipe: it must not be a flag value
				// visible in the process list.
				if g.SecretAccessKey, err = readSecret(cmd); err != nil {
					return err
				}
				ask = nil
			}
			p, err := profile.Login(cfg.ConfigFile, f.registry, g, ask)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "credentials saved for profile %s: %s\n", f.registry, p)
			return nil
		},
	}
	f.registerRegistry(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.p.AccessKeyID, "access-key-id", "", "access key id")
	fl.BoolVar(&secretStdin, "secret-access-key-stdin", false, "read the secret access key from stdin")
	fl.StringVar(&f.p.Username, "username", "", "operator name recorded with the profile (not used for S3)")
	return cmd
}

func newConfigShowCmd(getenv config.Source) *cobra.Command {
	var f profileFlags
	cmd := &cobra.Command{
		Use:   "show --registry NAME",
		Short: "Print a profile with its secrets masked",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.CLIFromEnv(getenv)
			if err != nil {
				return err
			}
			p, err := resolveProfile(cfg, f.registry)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", f.registry, p)
			return nil
		},
	}
	f.registerRegistry(cmd)
	return cmd
}

// resolveProfile is the named profile from cfg's file with cfg's
// MGR_CONFIG_S3_* overrides.
func resolveProfile(cfg config.CLI, name string) (profile.Profile, error) {
	c, err := profile.Load(cfg.ConfigFile)
	if err != nil {
		return profile.Profile{}, err
	}
	return profile.Resolve(c, name, cfg.S3)
}

// readSecret reads one line from stdin.
func readSecret(cmd *cobra.Command) (string, error) {
	b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4096))
	if err != nil {
		return "", fmt.Errorf("read secret from stdin: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("--secret-access-key-stdin: stdin was empty")
	}
	return s, nil
}
