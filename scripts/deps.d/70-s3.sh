#!/usr/bin/env bash
# Artifact tests run against a real S3 server: versitygw with its posix
# backend, built once from the Go module proxy into .build/tools.
set -euo pipefail
out=.build/tools/versitygw
if [ -x "$out" ]; then
  exit 0
fi
mkdir -p .build/tools
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" CGO_ENABLED=0 go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
install -m 0755 "$tmp/versitygw" "$out"
