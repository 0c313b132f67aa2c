#!/usr/bin/env bash
# Control-plane throughput and latency through the real HTTP API of the
# built daemon: 1,000 creates (creates/s, p50, p99), listing 1,000 VMs, the
# daemon's resident size, then 1,000 deletes (deletes/s, p50, p99).
#
# The same benchmark measures a baseline in the same run, alternating with
# this tree: the daemon of BASE (a commit; default 6d4deec, the last one
# before creates were committed in groups), built from a temporary
# worktree and driven by this tree's benchmark (its -daemon flag).
# BASE=none skips it. ROUNDS (default 1) repeats both, for a noisy host,
# and ends with each daemon's median creates/s and create p99.
#
# SYSTEMD=1 (root) runs BenchmarkControlPlaneSystemd instead: the daemon
# answered by a real systemd booted in a container, as on a host. Its
# baseline defaults to ca46334, the last commit before systemd was asked
# without loading units.
set -euo pipefail
cd "$(dirname "$0")/.."
name=BenchmarkControlPlane
base_ref=${BASE:-6d4deec}
if [ "${SYSTEMD:-}" = 1 ]; then
	name=BenchmarkControlPlaneSystemd
	base_ref=${BASE:-ca46334}
fi
rounds=${ROUNDS:-1}

bench() {
	go test -run '^$' -bench "^$name\$" -benchtime 1x -count 1 ./test/e2e/ -args -daemon="$1" |
		grep -E '^control plane' || { echo "benchmark failed with daemon ${1:-of this tree}" >&2; return 1; }
}

if [ "$base_ref" != none ]; then
	base=$(mktemp -d)
	trap 'git worktree remove --force "$base" >/dev/null 2>&1 || rm -rf "$base"' EXIT
	git worktree add --quiet --detach "$base" "$base_ref"
	(cd "$base" && CGO_ENABLED=0 go build -o "$base/mergen-base" ./cmd/mergen)
fi
for ((i = 1; i <= rounds; i++)); do
	echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
	if [ "$base_ref" != none ]; then
		echo "baseline $base_ref: $(bench "$base/mergen-base")"
	fi
	echo "mergen $(git rev-parse --short HEAD): $(bench "")"
done |
	# Every round as it comes, then (with ROUNDS > 1) the medians of
	# each daemon's creates/s and create p99, as the other benches give
	# theirs: one round that meets a burst of load on the machine is
	# seen beside the others, not taken for the figure.
	awk -v rounds="$rounds" '
		{ print; fflush() }
		/^(baseline|mergen) / && match($0, /= [0-9]+ creates\/s; create p50 [0-9.]+ ms, p99 [0-9.]+ ms/) {
			who = $1 " " $2; sub(/:$/, "", who); split(substr($0, RSTART, RLENGTH), f, " ")
			if (!n[who]++) order[++whos] = who
			rate[who, n[who]] = f[2]; p99[who, n[who]] = f[9]
		}
		function median(a, who,    i, j, t, k, v) {
			k = n[who]; for (i = 1; i <= k; i++) v[i] = a[who, i]
			for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
			return k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
		}
		END {
			if (rounds < 2) exit
			for (i = 1; i <= whos; i++) printf "median of %d rounds, %s: %d creates/s, create p99 %.2f ms\n", n[order[i]], order[i], median(rate, order[i]), median(p99, order[i])
		}'
