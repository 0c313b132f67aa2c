package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/snapshot"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
)

// runSnapshotCLI runs `mergen snapshot push|pull` in-process with the
// configuration read from vars alone.
func runSnapshotCLI(t *testing.T, vars map[string]string, args ...string) (string, error) {
	t.Helper()
	getenv := config.Source(func(k string) string { return vars[k] })
	snap := &cobra.Command{Use: "snapshot"}
	snap.AddCommand(snapshotTransferCmds(getenv)...)
	root := &cobra.Command{Use: "mergen", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(snap)
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// An operator moves a snapshot from one host's data root to another's
// through an S3 profile given by the environment.
func TestSnapshotPushPullCommands(t *testing.T) {
	s3 := testenv.StartS3(t, "snap-access", "snap-secret-key", "fleet")
	hostA, hostB := t.TempDir(), t.TempDir()
	vars := map[string]string{
		"MERGEN_CONFIG_FILE":              filepath.Join(t.TempDir(), "config.json"),
		"MGR_DATA_ROOT":                   hostA,
		"MGR_CONFIG_S3_ENDPOINT":          s3.Endpoint,
		"MGR_CONFIG_S3_BUCKET":            "fleet",
		"MGR_CONFIG_S3_USE_PATH_STYLE":    "true",
		"MGR_CONFIG_S3_ACCESS_KEY_ID":     "snap-access",
		"MGR_CONFIG_S3_SECRET_ACCESS_KEY": "snap-secret-key",
		"MGR_PROGRESS_EVERY_MILLISECONDS": "10",
	}

	// A snapshot of host A, taken with a kernel both hosts have.
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	src := snapshot.New(layout.Layout{DataRoot: hostA})
	rec := snapshot.Record{ID: store.NewID(), VMM: "qemu", Kernel: kernel, VMMFiles: []string{"memory"}}
	b, err := snapshot.Fingerprint("kernel", kernel)
	if err != nil {
		t.Fatal(err)
	}
	rec.Bases = []snapshot.Base{b}
	staging, err := src.Stage(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(staging, "memory"), bytes.Repeat([]byte("m"), 1<<20), 0o600)
	if err := src.Commit(staging, &rec); err != nil {
		t.Fatal(err)
	}

	noProfile := map[string]string{"MGR_DATA_ROOT": hostA, "MERGEN_CONFIG_FILE": vars["MERGEN_CONFIG_FILE"]}
	if _, err := runSnapshotCLI(t, noProfile, "snapshot", "push", rec.ID, "--registry", "nope"); err == nil || !strings.Contains(err.Error(), `registry "nope": unknown profile`) {
		t.Fatalf("push to an unknown profile: %v", err)
	}
	if _, err := runSnapshotCLI(t, vars, "snapshot", "push", "0000"); err == nil || !strings.Contains(err.Error(), "at least 8 characters") {
		t.Fatalf("push of a short prefix: %v", err)
	}
	out, err := runSnapshotCLI(t, vars, "snapshot", "push", rec.ID[:8])
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	if !strings.Contains(out, "progress memory") || !strings.Contains(out, "pushed snapshot "+rec.ID+" to registry default (2 files") {
		t.Fatalf("push output lacks progress or result:\n%s", out)
	}
	out, err = runSnapshotCLI(t, vars, "snapshot", "push", rec.ID[:8])
	if err != nil || !strings.Contains(out, "snapshot "+rec.ID+" is in registry default already") {
		t.Fatalf("second push: %v\n%s", err, out)
	}

	// On host B, by the --data-root flag.
	out, err = runSnapshotCLI(t, vars, "snapshot", "pull", rec.ID, "--data-root", hostB)
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	if !strings.Contains(out, "progress memory") || !strings.Contains(out, "installed snapshot "+rec.ID+" into "+filepath.Join(hostB, "snapshots", rec.ID)) {
		t.Fatalf("pull output lacks progress or result:\n%s", out)
	}
	got, err := snapshot.New(layout.Layout{DataRoot: hostB}).Get(rec.ID)
	if err != nil || len(got.Files) != 1 || got.Files[0] != rec.Files[0] {
		t.Fatalf("pulled record: %+v %v", got, err)
	}
	out, err = runSnapshotCLI(t, vars, "snapshot", "pull", rec.ID, "--data-root", hostB)
	if err != nil || !strings.Contains(out, "is here already") {
		t.Fatalf("second pull: %v\n%s", err, out)
	}
	if _, err := runSnapshotCLI(t, vars, "snapshot", "pull", rec.ID[:8]); err == nil || !strings.Contains(err.Error(), "not a lowercase UUID") {
		t.Fatalf("pull by prefix: %v", err)
	}
}
