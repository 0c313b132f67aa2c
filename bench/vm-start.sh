#!/usr/bin/env bash
# Time from POST /v1/vms (autoStart) to the guest's HTTP port answering,
# next to the same guest booted by a bare qemu-system-x86_64 command, and the
# ratio. Needs root and the base assets (make assets).
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench 'BenchmarkCreateToHTTP$' -benchtime "${BENCH_RUNS:-3}x" -count 1 ./test/e2e/ | grep -E '^(create|Benchmark)'
