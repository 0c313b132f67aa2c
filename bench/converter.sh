#!/usr/bin/env bash
# Converter speed: one conversion of a ~100 MB, 4-layer image from an OCI
# layout against the baseline of `tar -x` of the same layers followed by
# `mkfs.ext4 -d`, measured in the same run; prints both, the ratio and the
# time of a cached re-conversion (and the baseline with the converter's 4 KiB
# blocks, and the load average). Needs root (mkfs.ext4 -d keeps owners).
set -euo pipefail
cd "$(dirname "$0")/.."
go test ./internal/converter/ -run '^$' -bench BenchmarkConvertAgainstTarAndMkfs -benchtime "${BENCH_COUNT:-1}x" -count 1
