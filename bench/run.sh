#!/usr/bin/env bash
# Phases of `mergen run` with the demo image (conversion uncached and cached,
# create and start, boot until HTTP answers, first answer through the
# forwarder). Needs root and the base assets (make assets).
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench 'BenchmarkRunPhases$' -benchtime 1x -count 1 ./test/e2e/ | grep -E '^mergen run'
