#!/usr/bin/env bash
# Listing 1,000 VMs through the real HTTP API (GET /v1/vms p50, p99) next
# to a GET per VM and to reading the records alone, all from one run.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench 'BenchmarkList$' -benchtime 1x -count 1 ./test/e2e/ | grep -E '^(list|Benchmark)'
