#!/usr/bin/env bash
# What the API's front door costs: create and get latency through the real
# HTTP API with bearer tokens next to MGR_API_AUTH=none, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench 'BenchmarkAPIAuth$' -benchtime 1x -count 1 ./test/e2e/ | grep -E '^(api auth|Benchmark)'
