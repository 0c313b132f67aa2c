package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/converter"
	"github.com/mergenhq/mergen/internal/converter/layer"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/progress"
)

type convertFlags struct {
	image                     string
	platform, outputDir       string
	insecure, skipPull, quiet bool
	sizeMiB                   int64
	headroom                  float64
	noTar, deleteRootfs       bool
	keepRootfs                bool
	maxLayerBytes             int64
	maxLayerEntries           int

	agent, env     bool
	binDir, output string
	runtime        string
	envVars        []string
}

// newConvertCmd is both the root command (mergen-converter IMAGE) and the
// convert subcommand (mergen-converter convert -image IMAGE) of earlier
// versions.
func newConvertCmd(use string, getenv config.Source) *cobra.Command {
	var f convertFlags
	defaults, _ := config.CLIFromEnv(getenv)
	cmd := &cobra.Command{
		Use:   use,
		Short: "Convert an OCI/Docker image into a mergen payload disk",
		Long: `Converts IMAGE into payload-rootfs.ext4 and its metadata under
$MGR_IMAGES_ROOT/<ref> (default $MGR_DATA_ROOT/images/<ref>, or
--output-dir), where the daemon and 'mergen images ls' find it.

IMAGE is a registry reference (nginx:alpine, ghcr.io/org/app:1.2.3,
repo@sha256:...), oci:DIR for an OCI image layout, or docker-archive:FILE
for a 'docker save' tarball.

--agent-rootfs and --env-rootfs make the other disks instead and take no IMAGE.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.CLIFromEnv(withDataRoot(cmd, getenv))
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			switch {
			case f.agent && f.env:
				return fmt.Errorf("--agent-rootfs and --env-rootfs: choose one")
			case (f.agent || f.env) && f.image != "":
				return fmt.Errorf("--image does not go with --agent-rootfs or --env-rootfs")
			case f.agent:
				return runAgent(ctx, cmd, cfg, f, args)
			case f.env:
				return runEnv(ctx, cmd, cfg, f, args)
			}
			if f.image != "" {
				if len(args) > 0 {
					return fmt.Errorf("image given twice: --image %s and %s", f.image, args[0])
				}
				args = []string{f.image}
			}
			if len(args) != 1 {
				return fmt.Errorf("IMAGE is required (see --help)")
			}
			return runConvert(ctx, cmd, cfg, f, args[0])
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.image, "image", "", "the image to convert (instead of the IMAGE argument)")
	fl.StringVar(&f.platform, "platform", "", "os/arch[/variant] to select (default: the host's, "+converter.HostPlatform()+")")
	fl.StringVar(&f.outputDir, "output-dir", "", "output directory (default: $MGR_IMAGES_ROOT/<ref>)")
	fl.String("data-root", defaults.DataRoot, "data root ($MGR_DATA_ROOT): images and base assets below it unless MGR_IMAGES_ROOT or MGR_BASE_ASSETS_DIR are set")
	fl.BoolVar(&f.insecure, "insecure", false, "allow plain HTTP to the registry")
	fl.BoolVar(&f.skipPull, "skip-pull", false, "convert from the layer cache alone; fail if it is incomplete")
	fl.Int64Var(&f.sizeMiB, "size-mib", 0, "ext4 size in MiB (default: content plus headroom)")
	fl.Float64Var(&f.headroom, "headroom", 0.2, "free space to add to the content size, as a fraction")
	fl.BoolVar(&f.noTar, "no-tar", false, "do not write "+imagemeta.PayloadTar)
	fl.BoolVar(&f.keepRootfs, "keep-rootfs", false, "keep the unpacked "+imagemeta.PayloadDir+"/ directory (mode 0700: it holds the image's setuid files and device nodes)")
	fl.BoolVar(&f.deleteRootfs, "delete-rootfs", false, "remove the "+imagemeta.PayloadDir+"/ directory (the default; accepted for earlier scripts)")
	fl.Int64Var(&f.maxLayerBytes, "max-layer-bytes", converter.DefaultMaxLayerBytes, "refuse a layer larger than this, uncompressed (-1: no bound)")
	fl.IntVar(&f.maxLayerEntries, "max-layer-entries", converter.DefaultMaxLayerEntries, "refuse a layer with more entries than this (-1: no bound)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "print nothing but errors")
	fl.BoolVar(&f.agent, "agent-rootfs", false, "make the read-only agent disk from --bin-dir")
	fl.StringVar(&f.binDir, "bin-dir", "", "agent binaries (default: $MGR_BASE_ASSETS_DIR/bin)")
	fl.BoolVar(&f.env, "env-rootfs", false, "make an env disk from --runtime and --env-var")
	fl.StringVar(&f.runtime, "runtime", "", "mergen.runtime.json whose environment the env disk starts from")
	fl.StringArrayVar(&f.envVars, "env-var", nil, "KEY=VALUE for the env disk (repeatable, later wins)")
	fl.StringVarP(&f.output, "output", "o", "", "disk file for --agent-rootfs/--env-rootfs")
	return cmd
}

func runConvert(ctx context.Context, cmd *cobra.Command, cfg config.CLI, f convertFlags, src string) error {
	if f.keepRootfs && f.deleteRootfs {
		return fmt.Errorf("--keep-rootfs and --delete-rootfs: choose one")
	}
	if f.maxLayerBytes == 0 || f.maxLayerEntries == 0 {
		return fmt.Errorf("--max-layer-bytes and --max-layer-entries: 0 would refuse every layer (-1 for no bound)")
	}
	var tr *progress.Tracker
	stop := func() {}
	if !f.quiet {
		tr = progress.New()
		stop = progress.Render(ctx, cmd.ErrOrStderr(), tr, cfg.ProgressEvery)
	}
	res, err := converter.Convert(ctx, converter.Options{
		Source: src, Platform: f.platform, ImagesRoot: cfg.ImagesRoot, BaseAssetsDir: cfg.BaseAssetsDir, OutputDir: f.outputDir,
		Insecure: f.insecure, SkipPull: f.skipPull, SizeMiB: f.sizeMiB, Headroom: f.headroom,
		NoTar: f.noTar, KeepDir: f.keepRootfs, Progress: tr,
		MaxLayerBytes: f.maxLayerBytes, MaxLayerEntries: f.maxLayerEntries,
	})
	stop()
	if errors.Is(err, layer.ErrLimit) {
		return fmt.Errorf("%w (raise --max-layer-bytes or --max-layer-entries if the image is trusted)", err)
	}
	if err != nil {
		return err
	}
	if !f.quiet {
		fmt.Fprintf(cmd.OutOrStdout(), "%s\n", res.Ext4)
	}
	return nil
}

func runAgent(ctx context.Context, cmd *cobra.Command, cfg config.CLI, f convertFlags, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("--agent-rootfs takes no IMAGE")
	}
	base := cfg.BaseAssetsDir
	bin := f.binDir
	if bin == "" {
		bin = filepath.Join(base, "bin")
	}
	out := f.output
	if out == "" {
		out = filepath.Join(base, "agent-rootfs.ext4")
	}
	if err := converter.AgentDisk(ctx, bin, out, f.sizeMiB); err != nil {
		return err
	}
	if !f.quiet {
		fmt.Fprintln(cmd.OutOrStdout(), out)
	}
	return nil
}

func runEnv(ctx context.Context, cmd *cobra.Command, cfg config.CLI, f convertFlags, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("--env-rootfs takes no IMAGE (use --runtime FILE)")
	}
	out := f.output
	if out == "" {
		out = filepath.Join(cfg.BaseAssetsDir, "env-rootfs.ext4")
	}
	if err := converter.EnvDisk(ctx, f.runtime, f.envVars, out); err != nil {
		return err
	}
	if !f.quiet {
		fmt.Fprintln(cmd.OutOrStdout(), out)
	}
	return nil
}
