package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/artifact"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/images"
	"github.com/mergenhq/mergen/internal/progress"
)

// newImagesCmd lists local images and moves base assets through S3.
func newImagesCmd() *cobra.Command { return imagesCmd(config.Env()) }

// imagesCmd is newImagesCmd reading its configuration through getenv.
func imagesCmd(getenv config.Source) *cobra.Command {
	cmd := &cobra.Command{Use: "images", Short: "Local base assets and converted images; push and pull base assets through S3"}
	push := &cobra.Command{Use: "push", Short: "Upload artifacts to an S3 profile"}
	push.AddCommand(newImagesBaseCmd(getenv, true))
	pull := &cobra.Command{Use: "pull", Short: "Download artifacts from an S3 profile"}
	pull.AddCommand(newImagesBaseCmd(getenv, false))
	cmd.AddCommand(newImagesLsCmd(getenv), push, pull)
	return cmd
}

// The flags' defaults come from the configuration (read again when the
// command runs, so that an invalid one is refused with every wrong variable
// named): the same base assets dir and images root as the daemon,
// `mergen doctor`, `mergen run` and the converter.

func newImagesLsCmd(getenv config.Source) *cobra.Command {
	var baseDir, imagesRoot, format string
	defaults, _ := config.CLIFromEnv(getenv)
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List base assets and converted images with sizes and versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := config.CLIFromEnv(getenv); err != nil {
				return err
			}
			inv, err := images.List(baseDir, imagesRoot)
			if err != nil {
				return fmt.Errorf("images ls: %w", err)
			}
			if format == "json" {
				return printJSON(cmd.OutOrStdout(), inv)
			}
			return printInventory(cmd.OutOrStdout(), inv)
		},
	}
	cmd.Flags().StringVar(&baseDir, "base-dir", defaults.BaseAssetsDir, "base assets directory (MGR_BASE_ASSETS_DIR)")
	cmd.Flags().StringVar(&imagesRoot, "images-root", defaults.ImagesRoot, "converted images root (MGR_IMAGES_ROOT)")
	cmd.Flags().StringVarP(&format, "output", "o", "table", "table or json")
	return cmd
}

func printInventory(w io.Writer, inv images.Inventory) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	version := inv.BaseVersion
	if version == "" {
		version = "unknown (not pulled)"
	}
	fmt.Fprintf(tw, "BASE (%s, version %s)\tSIZE\tMODIFIED\n", inv.BaseDir, version)
	for _, f := range inv.Base {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Name, progress.Bytes(f.Size), f.Modified.Format("2006-01-02 15:04"))
	}
	fmt.Fprintf(tw, "\nIMAGE (%s)\tPAYLOAD\tDIGEST\n", inv.ImagesRoot)
	for _, im := range inv.Images {
		size := "-"
		if im.Payload != nil {
			size = progress.Bytes(im.Payload.Size)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", im.Ref, size, dash(im.Digest))
	}
	return tw.Flush()
}

func newImagesBaseCmd(getenv config.Source, push bool) *cobra.Command {
	var registry, platform, flavor, ver, baseDir string
	defaults, _ := config.CLIFromEnv(getenv)
	short := "Download a base asset version (or latest) and install it atomically"
	if push {
		short = "Upload the base assets as a new version and move latest to it"
	}
	cmd := &cobra.Command{
		Use:   "base",
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ver == "" {
				return fmt.Errorf("--version: required")
			}
			cfg, err := config.CLIFromEnv(getenv)
			if err != nil {
				return err
			}
			p, err := resolveProfile(cfg, registry)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			tr := progress.New()
			c, err := artifact.New(p, artifact.Options{Progress: tr})
			if err != nil {
				return err
			}
			b := artifact.Base{Platform: platform, Flavor: flavor, Version: ver}
			return withProgress(ctx, cmd.ErrOrStderr(), cmd.OutOrStdout(), tr, cfg.ProgressEvery, func(ctx context.Context) (string, error) {
				if push {
					m, err := c.PushBase(ctx, baseDir, b)
					if err != nil {
						return "", err
					}
					return fmt.Sprintf("pushed %s/%s/%s (%d files); latest → %s", b.Platform, b.Flavor, m.Version, len(m.Files), m.Version), nil
				}
				res, err := c.PullBase(ctx, baseDir, b)
				if err != nil {
					return "", err
				}
				return fmt.Sprintf("installed %s/%s/%s into %s (fetched: %s)", b.Platform, b.Flavor, res.Manifest.Version, baseDir, dash(strings.Join(res.Fetched, ", "))), nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&registry, "registry", "default", "S3 profile name")
	fl.StringVar(&platform, "platform", defaults.BasePlatform, "platform (MGR_BASE_PLATFORM)")
	fl.StringVar(&flavor, "flavor", defaults.BaseFlavor, "flavor (MGR_BASE_FLAVOR)")
	fl.StringVar(&ver, "version", "", "version, e.g. v0.0.1 (pull also takes latest)")
	fl.StringVar(&baseDir, "base-dir", defaults.BaseAssetsDir, "base assets directory (MGR_BASE_ASSETS_DIR)")
	return cmd
}

// withProgress renders tr on w every period (bars on a terminal, lines
// otherwise) while fn runs.
func withProgress(ctx context.Context, w, out io.Writer, tr *progress.Tracker, every time.Duration, fn func(context.Context) (string, error)) error {
	stop := progress.Render(ctx, w, tr, every)
	result, err := fn(ctx)
	stop()
	// The result after the last progress line, never in between.
	if err == nil && result != "" {
		_, err = fmt.Fprintln(out, result)
	}
	return err
}
