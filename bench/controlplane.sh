#!/usr/bin/env bash
# Control-plane throughput and latency through the real HTTP API:
# 1,000 creates (creates/s, p50, p99), listing 1,000 VMs, the daemon's
# resident size, then 1,000 deletes (deletes/s, p50, p99; the baseline
# commit's benchmark may predate them).
#
# The same benchmark runs on a baseline in the same run, alternating with
# this tree: BASE (a commit; default 6d4deec, the last one before creates
# were committed in groups), checked out in a temporary worktree.
# BASE=none skips it. ROUNDS (default 1) repeats both, for a noisy host.
set -euo pipefail
cd "$(dirname "$0")/.."
base_ref=${BASE:-6d4deec}
rounds=${ROUNDS:-1}

bench() {
	(cd "$1" && go test -run '^$' -bench 'BenchmarkControlPlane$' -benchtime 1x -count 1 ./test/e2e/) |
		grep -E '^control plane' || { echo "benchmark failed in $1" >&2; return 1; }
}

if [ "$base_ref" != none ]; then
	base=$(mktemp -d)
	trap 'git worktree remove --force "$base" >/dev/null 2>&1 || rm -rf "$base"' EXIT
	git worktree add --quiet --detach "$base" "$base_ref"
fi
for ((i = 1; i <= rounds; i++)); do
	echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
	if [ "$base_ref" != none ]; then
		echo "baseline $base_ref: $(bench "$base")"
	fi
	echo "mergen $(git rev-parse --short HEAD): $(bench .)"
done
