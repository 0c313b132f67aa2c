#!/usr/bin/env bash
# Push and pull throughput (MB/s) of a sparse disk through a real S3 server
# on loopback (versitygw, posix backend): mergen's transfers (hashing,
# manifest, verification, staged install) next to the raw aws-sdk-go-v2
# transfer manager moving the same disk in the same run.
#
#   bench/s3.sh                 # 1 GiB disk
#   MERGEN_BENCH_DISK_MIB=256 bench/s3.sh
#   BENCH_COUNT=3 bench/s3.sh   # repeat for spread
#   MERGEN_BENCH_DISK_DENSE=1 bench/s3.sh   # random bytes instead of holes
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .build/tools/versitygw ] && ! command -v versitygw >/dev/null; then
  echo "bench/s3.sh: versitygw missing: run scripts/deps.d/70-s3.sh (or make deps)" >&2
  exit 1
fi
export MERGEN_BENCH_DISK_MIB="${MERGEN_BENCH_DISK_MIB:-1024}"
kind=sparse
if [ "${MERGEN_BENCH_DISK_DENSE:-}" = 1 ]; then kind="random, dense"; fi
echo "disk: ${MERGEN_BENCH_DISK_MIB} MiB ${kind} (+5 MiB kernel and agent disk on mergen's side)"
go test -run '^$' -bench 'BenchmarkS3Transfer' -benchtime 1x -count "${BENCH_COUNT:-1}" ./internal/artifact |
  awk '/^BenchmarkS3Transfer/ { name=$1; sub(/^BenchmarkS3Transfer\//, "", name); sub(/-[0-9]+$/, "", name); printf "%-12s %10.1f MB/s  %8.2f s\n", name, $5, $3/1e9 }'
