#!/usr/bin/env bash
# Push and pull throughput (MB/s) of a sparse disk through a real S3 server
# on loopback (versitygw, posix backend): mergen's transfers (hashing,
# manifest, verification, staged install, the fsync before it) next to the
# raw aws-sdk-go-v2 transfer manager moving the same disk in the same run.
# raw-pull+fsync is a second reference beside the raw-pull baseline: the
# raw download made durable by one fsync at the end. CPU is the client
# process's processor time per transfer (the server's is not counted).
#
#   bench/s3.sh                 # 1 GiB disk
#   MERGEN_BENCH_DISK_MIB=256 bench/s3.sh
#   BENCH_COUNT=3 bench/s3.sh   # repeat for spread: medians and ratios at the end
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
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/artifact.test" ./internal/artifact
# Runs one after another, each with all five transfers, so that a burst
# of load on the machine falls on every kind alike rather than on the
# repeats of one.
for run in $(seq "${BENCH_COUNT:-1}"); do
  (cd internal/artifact && "$tmp/artifact.test" -test.run '^$' -test.bench 'BenchmarkS3Transfer' -test.benchtime 1x)
done |
  awk '
    /^BenchmarkS3Transfer/ {
      name = $1; sub(/^BenchmarkS3Transfer\//, "", name); sub(/-[0-9]+$/, "", name)
      printf "%-15s %10.1f MB/s  %8.2f s  %6.2f s CPU\n", name, $5, $3 / 1e9, $7
      n[name]++; v[name, n[name]] = $5; cpu[name, n[name]] = $7
    }
    function median(name, col,    i, j, t, a, k) {
      k = n[name]; for (i = 1; i <= k; i++) a[i] = col == "cpu" ? cpu[name, i] : v[name, i]
      for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
    }
    function ratio(a, b) {
      if (n[a] && n[b]) printf "%-15s %10.1f MB/s  %5.2fx %s (%.1f MB/s); CPU %.2f s, %.2f s\n", a, median(a), median(a) / median(b), b, median(b), median(a, "cpu"), median(b, "cpu")
    }
    END {
      if (!n["mergen-pull"]) exit 1
      print "median of " n["mergen-pull"] " run(s):"
      ratio("mergen-push", "raw-push")
      ratio("mergen-pull", "raw-pull")
      ratio("mergen-pull", "raw-pull+fsync")
    }'
