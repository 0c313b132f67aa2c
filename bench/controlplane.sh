#!/usr/bin/env bash
# Control-plane throughput and latency through the real HTTP API:
# 1,000 creates (creates/s, p50, p99) and listing 1,000 VMs.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench 'BenchmarkControlPlane$' -benchtime 1x -count 1 ./test/e2e/ | grep -E '^(control plane|Benchmark)'
