package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/artifact"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/progress"
	"github.com/mergenhq/mergen/internal/snapshot"
)

// newSnapshotTransferCmds are snapshotTransferCmds reading the process
// environment.
func newSnapshotTransferCmds() []*cobra.Command { return snapshotTransferCmds(config.Env()) }

// snapshotTransferCmds are `snapshot push` and `snapshot pull`. Like
// `images push|pull` they work on this host's files, not through the
// daemon: they run on the daemon's host and read or write the snapshots
// directory of its data root. The daemon lists a pulled snapshot as soon
// as it is renamed into place.
func snapshotTransferCmds(getenv config.Source) []*cobra.Command {
	return []*cobra.Command{newSnapshotTransferCmd(getenv, true), newSnapshotTransferCmd(getenv, false)}
}

func newSnapshotTransferCmd(getenv config.Source, push bool) *cobra.Command {
	var registry string
	defaults, _ := config.CLIFromEnv(getenv)
	cmd := &cobra.Command{
		Use:   "pull ID",
		Short: "Download a snapshot from an S3 profile and install it atomically",
		Long: `Downloads snapshot ID (its full id) into the snapshots directory of the
data root, verifying every file's SHA-256, and renames it into place once
complete. A snapshot restores only on a host of the same kind: the same
base assets and image files at the same paths (the pull compares their
content with the snapshot's and refuses otherwise, before downloading
anything) and the same VMM version (checked when a VM is restored from
it). A snapshot that is here already is left alone: the pull succeeds when
it is the same one, and is refused when it differs. Run on the daemon's host.`,
		Args: cobra.ExactArgs(1),
	}
	if push {
		cmd.Use = "push SNAPSHOT"
		cmd.Short = "Upload a snapshot of this host to an S3 profile"
		cmd.Long = `Uploads snapshot SNAPSHOT (its id or a unique prefix of 8 characters or
more) from the snapshots directory of the data root, with a manifest of
every file's SHA-256 and of the content of the base assets and image files
it was taken with. A damaged snapshot, or one whose base files changed
since it was taken, is not pushed. Pushing a snapshot again uploads
nothing; a different snapshot under the same id is refused. Run on the
daemon's host.`
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cfg, err := config.CLIFromEnv(withDataRoot(cmd, getenv))
		if err != nil {
			return err
		}
		p, err := resolveProfile(cfg, registry)
		if err != nil {
			return err
		}
		// Push and pull touch only the snapshots directory, which is under
		// the data root.
		snaps := snapshot.New(layout.Layout{DataRoot: cfg.DataRoot})
		id := args[0]
		if push {
			rec, err := snaps.Resolve(id)
			if err != nil {
				return fmt.Errorf("push snapshot %s: %w", id, err)
			}
			id = rec.ID
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
		defer stop()
		tr := progress.New()
		c, err := artifact.New(p, artifact.Options{Progress: tr})
		if err != nil {
			return err
		}
		return withProgress(ctx, cmd.ErrOrStderr(), cmd.OutOrStdout(), tr, cfg.ProgressEvery, func(ctx context.Context) (string, error) {
			if push {
				res, err := c.PushSnapshot(ctx, snaps, id)
				switch {
				case err != nil:
					return "", err
				case res.Existed:
					return fmt.Sprintf("snapshot %s is in registry %s already; nothing uploaded", id, registry), nil
				}
				return fmt.Sprintf("pushed snapshot %s to registry %s (%d files, %s)", id, registry, len(res.Manifest.Files), progress.Bytes(filesSize(res.Manifest))), nil
			}
			res, err := c.PullSnapshot(ctx, snaps, id)
			switch {
			case err != nil:
				return "", err
			case len(res.Fetched) == 0:
				return fmt.Sprintf("snapshot %s is here already (the same snapshot); nothing downloaded", id), nil
			}
			return fmt.Sprintf("installed snapshot %s into %s (%d files, %s)", id, snaps.Paths(id).Dir, len(res.Fetched), progress.Bytes(filesSize(res.Manifest))), nil
		})
	}
	fl := cmd.Flags()
	fl.StringVar(&registry, "registry", "default", "S3 profile name")
	fl.String("data-root", defaults.DataRoot, "the daemon's data root ($MGR_DATA_ROOT); snapshots are in its snapshots/")
	return cmd
}

// filesSize is the bytes m lists.
func filesSize(m artifact.Manifest) int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}
