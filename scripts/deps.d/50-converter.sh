#!/usr/bin/env bash
# The converter's tests: e2fsprogs (mkfs.ext4 -d, e2fsck, debugfs, tune2fs)
# and a real OCI registry server, the distribution project's `registry`,
# built from the Go module proxy into .build/tools (about 4 minutes the first
# time, nothing afterwards).
set -euo pipefail
apt_install e2fsprogs

version=v3.0.0
tools="$PWD/.build/tools"
stamp="$tools/registry.version"
if [ -x "$tools/registry" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
mkdir -p "$tools"
GOBIN="$tools" GOFLAGS=-mod=mod go install "github.com/distribution/distribution/v3/cmd/registry@$version"
echo "$version" > "$stamp"
echo "50-converter: built $tools/registry ($version)"
