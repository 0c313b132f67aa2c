#!/usr/bin/env bash
# Time from POST /v1/vms (autoStart) to the guest's HTTP port answering,
# next to the same guest booted by a bare qemu-system-x86_64 command, and the
# ratio; the median of the runs' ratios, mergen's own part (POST to its
# VMM's start), which no boot's spread is in, and each guest's own boot
# (kernel start to the payload's exec, from its console). BENCH_RUNS
# (default 5) runs of each. Needs root and the base assets (make assets).
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench 'BenchmarkCreateToHTTP$' -benchtime "${BENCH_RUNS:-5}x" -count 1 ./test/e2e/ | grep -E '^(create|Benchmark)'
