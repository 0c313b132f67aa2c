#!/usr/bin/env bash
# Exec round trip of `true` in a QEMU guest: through the API (client,
# WebSocket relay, exec agent) next to the bare transport (the same channel
# in the VM's namespace, same secret, no API), p50 and p99 in one run.
# Needs root and the base assets (make assets).
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench 'BenchmarkExecRoundTrip$' -benchtime 1x -count 1 -timeout 20m ./test/e2e/ | grep -E '^(exec round trip|--- FAIL|FAIL)'
