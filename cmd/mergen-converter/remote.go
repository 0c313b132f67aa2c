package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/artifact"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/profile"
	prog "github.com/mergenhq/mergen/internal/progress"
)

// newRemoteCmds are init, push and pull of payload disks through an S3
// profile (the same file and format `mergen config` writes), so a build
// machine without the rest of mergen can publish converted images.
func newRemoteCmds(getenv config.Source) []*cobra.Command {
	return []*cobra.Command{newRemoteInitCmd(getenv), newRemoteTransferCmd(getenv, true), newRemoteTransferCmd(getenv, false)}
}

// remoteGiven is what flags and MGR_CONFIG_S3_* say, flags first.
func remoteGiven(cfg config.CLI, flags profile.Profile) profile.Profile {
	env := profile.FromEnv(cfg.S3)
	for dst, src := range map[*string]string{&flags.Endpoint: env.Endpoint, &flags.Region: env.Region, &flags.Bucket: env.Bucket, &flags.Prefix: env.Prefix,
		&flags.AccessKeyID: env.AccessKeyID, &flags.SecretAccessKey: env.SecretAccessKey, &flags.SessionToken: env.SessionToken} {
		if *dst == "" {
			*dst = src
		}
	}
	flags.PathStyle = flags.PathStyle || env.PathStyle
	return flags
}

func newRemoteInitCmd(getenv config.Source) *cobra.Command {
	var registry string
	var p profile.Profile
	cmd := &cobra.Command{
		Use:   "init --registry NAME --bucket B [--endpoint URL] ...",
		Short: "Create or update the S3 profile that push and pull use",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.CLIFromEnv(getenv)
			if err != nil {
				return err
			}
			got, err := profile.Init(cfg.ConfigFile, registry, remoteGiven(cfg, p), profile.TerminalAsker(cmd.InOrStdin(), cmd.ErrOrStderr()))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "profile %s saved in %s: %s\n", registry, cfg.ConfigFile, got)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&registry, "registry", "default", "profile name")
	fl.StringVar(&p.Endpoint, "endpoint", "", "S3 endpoint URL (empty for AWS)")
	fl.StringVar(&p.Region, "region", "", "region (default us-east-1)")
	fl.StringVar(&p.Bucket, "bucket", "", "bucket")
	fl.StringVar(&p.Prefix, "prefix", "", "key prefix (default artifacts)")
	fl.BoolVar(&p.PathStyle, "path-style", false, "path-style addressing (MinIO and most self-hosted stores)")
	return cmd
}

// withS3Login teaches the image-registry login command a second job: with
// --registry NAME it stores S3 credentials in that profile instead (access
// key as --username, secret via --password-stdin or --password).
func withS3Login(login *cobra.Command, getenv config.Source) *cobra.Command {
	var registry string
	login.Flags().StringVar(&registry, "registry", "", "S3 profile: store S3 credentials (access key id as --username, secret with --password-stdin) instead of logging in to an image registry")
	origArgs, origRun := login.Args, login.RunE
	login.Args = func(cmd *cobra.Command, args []string) error {
		if registry != "" {
			return cobra.NoArgs(cmd, args)
		}
		return origArgs(cmd, args)
	}
	login.RunE = func(cmd *cobra.Command, args []string) error {
		if registry == "" {
			return origRun(cmd, args)
		}
		cfg, err := config.CLIFromEnv(getenv)
		if err != nil {
			return err
		}
		var g profile.Profile
		g.AccessKeyID, _ = cmd.Flags().GetString("username")
		g.SecretAccessKey, _ = cmd.Flags().GetString("password")
		ask := profile.TerminalAsker(cmd.InOrStdin(), cmd.ErrOrStderr())
		if fromStdin, _ := cmd.Flags().GetBool("password-stdin"); fromStdin {
			b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4096))
			if err != nil {
				return fmt.Errorf("login --registry %s: read secret: %w", registry, err)
			}
			g.SecretAccessKey, ask = strings.TrimSpace(string(b)), nil
		}
		g = remoteGiven(cfg, g)
		p, err := profile.Login(cfg.ConfigFile, registry, g, ask)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "credentials saved for profile %s: %s\n", registry, p)
		return nil
	}
	return login
}

func newRemoteTransferCmd(getenv config.Source, push bool) *cobra.Command {
	var registry, image, dir, root string
	defaults, _ := config.CLIFromEnv(getenv)
	use, short := "pull --registry NAME --image REF", "Download a payload disk and its metadata into the images root"
	if push {
		use, short = "push --registry NAME --image REF", "Upload a converted image's payload disk and metadata"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if image == "" {
				return fmt.Errorf("--image: required")
			}
			cfg, err := config.CLIFromEnv(getenv)
			if err != nil {
				return err
			}
			c, err := profile.Load(cfg.ConfigFile)
			if err != nil {
				return err
			}
			p, err := profile.Resolve(c, registry, cfg.S3)
			if err != nil {
				return err
			}
			tr := prog.New()
			cl, err := artifact.New(p, artifact.Options{Progress: tr})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			done := prog.Render(ctx, cmd.ErrOrStderr(), tr, cfg.ProgressEvery)
			err = runRemote(ctx, cmd, cl, push, image, dir, root)
			done()
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&registry, "registry", "default", "S3 profile name")
	fl.StringVar(&image, "image", "", "image reference, e.g. ghcr.io/org/app:1.2.3")
	fl.StringVar(&root, "images-root", defaults.ImagesRoot, "converted images root (MGR_IMAGES_ROOT)")
	if push {
		fl.StringVar(&dir, "dir", "", "directory of the converted image (default <images-root>/<image>)")
	}
	return cmd
}

func runRemote(ctx context.Context, cmd *cobra.Command, cl *artifact.Client, push bool, image, dir, root string) error {
	if push {
		if dir == "" {
			dir = filepath.Join(root, filepath.FromSlash(image))
		}
		m, err := cl.PushPayload(ctx, dir, image)
		if err == nil {
			fmt.Fprintf(cmd.OutOrStdout(), "pushed %s (%d files)\n", image, len(m.Files))
		}
		return err
	}
	res, err := cl.PullPayload(ctx, root, image)
	if err == nil {
		fmt.Fprintf(cmd.OutOrStdout(), "installed %s into %s (fetched %d of %d files)\n", image, filepath.Join(root, filepath.FromSlash(image)), len(res.Fetched), len(res.Manifest.Files))
	}
	return err
}

// attachRemote adds init, push and pull to root and gives its image-registry
// login the --registry (S3 profile) mode.
func attachRemote(root *cobra.Command, getenv config.Source) {
	for _, c := range root.Commands() {
		if c.Name() == "login" {
			withS3Login(c, getenv)
		}
	}
	root.AddCommand(newRemoteCmds(getenv)...)
}
