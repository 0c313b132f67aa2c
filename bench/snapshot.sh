#!/usr/bin/env bash
# Cold boot against restore of an image's ready snapshot, under QEMU: time
# from POST /v1/vms to the guest's first HTTP answer for each, their ratio,
# and the snapshot's size and the time to take it. Needs root and the base
# assets (make assets).
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench 'BenchmarkSnapshotRestore$' -benchtime 1x -count 1 -timeout 30m ./test/e2e/ | grep -E '^(POST|  cold|  of which|snapshot|--- FAIL|FAIL)'
