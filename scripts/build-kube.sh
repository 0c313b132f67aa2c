#!/usr/bin/env bash
# build-kube.sh [DEST] — the Kubernetes control plane the tests run against.
#
# Builds etcd, kube-apiserver, kube-scheduler, kube-controller-manager and
# kubectl (KUBE_VERSION, default v1.37.2) from the Go module proxy, caches
# them by version under ${XDG_CACHE_HOME:-$HOME/.cache}/mergen/kube/VERSION/bin
# and points DEST/bin (default .build/kube/bin) at that cache.
#
# Kubernetes cannot be `go install`ed (its go.mod replaces the staging
# modules with local directories), so the build happens in a throwaway
# module that requires k8s.io/kubernetes and replaces each staging module
# with its published k8s.io/X v0.MINOR.PATCH, as generated from kubernetes'
# own go.mod. etcd comes from the same module graph, so it is the version
# kubernetes pins. The module and build caches of this build (~1.5 GB and
# ~3 GB) are temporary and deleted afterwards; only the binaries are kept.
#
# A cached version costs nothing. A build goes to a staging directory that
# is renamed into the cache only when every binary is there, so a killed
# build never looks complete, and a lock keeps concurrent runs from
# building twice.
set -euo pipefail

readonly KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
readonly BINARIES=(etcd kube-apiserver kube-scheduler kube-controller-manager kubectl)
readonly COMMANDS=(kube-apiserver kube-scheduler kube-controller-manager kubectl)

log() { printf 'build-kube: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# complete DIR: every binary is in DIR/bin.
complete() {
	local b
	for b in "${BINARIES[@]}"; do [[ -x "$1/bin/$b" ]] || return 1; done
}

# link DEST CACHE: points DEST/bin at CACHE/bin, replacing an older link in
# one rename so a reader never finds it missing.
link() {
	mkdir -p "$1"
	if [[ -d "$1/bin" && ! -L "$1/bin" ]]; then rm -rf "$1/bin"; fi
	ln -sfn "$2/bin" "$1/bin.new"
	mv -T "$1/bin.new" "$1/bin"
	log "$KUBE_VERSION in $1/bin -> $2/bin"
}

# remove DIR, a module cache among it (read-only by design).
remove() {
	chmod -R u+w "$1" 2>/dev/null || true
	rm -rf "$1"
}

# build OUT: the five binaries into OUT/bin, from a module in the current
# (empty) directory.
build() {
	local out="$1" start minor staging_version kgomod m ldflags p build_start end b ready
	local -a staging replaces
	[[ "$KUBE_VERSION" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] ||
		die "KUBE_VERSION=$KUBE_VERSION: want v1.MINOR.PATCH"
	minor="${BASH_REMATCH[1]}"
	staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

	start=$(date +%s)
	log "resolving k8s.io/kubernetes $KUBE_VERSION (staging modules at $staging_version)"
	go mod init kube-build 2>/dev/null
	go mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"
	go mod download k8s.io/kubernetes ||
		die "cannot download k8s.io/kubernetes@$KUBE_VERSION from the module proxy"

	# kubernetes' go.mod says `k8s.io/X => ./staging/src/k8s.io/X` for each
	# staging module; the same code is published as k8s.io/X v0.MINOR.PATCH.
	kgomod="$(go list -m -f '{{.GoMod}}' k8s.io/kubernetes)"
	mapfile -t staging < <(sed -nE 's#^[[:space:]]*(k8s\.io/[^[:space:]]+)[[:space:]]+=>[[:space:]]+\./staging/src/k8s\.io/.*#\1#p' "$kgomod")
	((${#staging[@]} > 0)) || die "no staging replaces in kubernetes' go.mod ($kgomod)"
	for m in "${staging[@]}"; do replaces+=("-replace=$m=$m@$staging_version"); done
	go mod edit "${replaces[@]}"
	log "${#staging[@]} staging modules replaced"

	mkdir etcd
	cat >etcd/main.go <<'EOF'
// Command etcd is the etcd server kubernetes pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF

	# Some 300 modules: their "downloading" lines are shown only on failure.
	if ! go get -tool "${COMMANDS[@]/#/k8s.io/kubernetes/cmd/}" 2>get.log || ! go mod tidy 2>>get.log; then
		cat get.log >&2
		die "resolving the modules of k8s.io/kubernetes@$KUBE_VERSION failed"
	fi
	log "modules resolved in $(fmt_secs $(($(date +%s) - start)))"

	# Without the version the servers report v0.0.0 and clients warn about skew.
	ldflags="-s -w"
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
	done

	# One `go build` of all five: it compiles each shared package once, keeps
	# every core busy and links the binaries side by side, where separate
	# builds would compile the shared packages once each. The apiserver's
	# link peaks at ~2.4 GB of memory.
	build_start=$(date +%s)
	log "building ${BINARIES[*]} (the first time takes ~12 min of two cores)"
	mkdir -p "$out/bin"
	go build -trimpath -ldflags "$ldflags" -o "$out/bin/" ./etcd "${COMMANDS[@]/#/k8s.io/kubernetes/cmd/}"
	end=$(date +%s)
	complete "$out" || die "the build ended without all of ${BINARIES[*]}"

	# go build writes each binary when its own link ends: its modification
	# time says when it was ready.
	for b in "${BINARIES[@]}"; do
		ready=$(($(stat -c %Y "$out/bin/$b") - build_start))
		log "$(printf '%-24s ready after %s (%d MB)' "$b" "$(fmt_secs "$ready")" $(($(stat -c %s "$out/bin/$b") / 1048576)))"
	done
	log "built in $(fmt_secs $((end - build_start))), $(fmt_secs $((end - start))) with module downloads"

	[[ "$("$out/bin/kube-apiserver" --version)" == *" $KUBE_VERSION" ]] ||
		die "kube-apiserver does not report $KUBE_VERSION"
}

main() {
	local repo dest cache_root cache stale work
	repo="$(cd "$(dirname "$0")/.." && pwd)"
	dest="${1:-$repo/.build/kube}"
	cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/mergen/kube"
	cache="$cache_root/$KUBE_VERSION"
	command -v go >/dev/null || die "go not found in PATH"

	mkdir -p "$cache_root"
	exec 9>"$cache_root/.lock"
	flock 9

	# Under the lock no other build runs: staging left here is from a build
	# that was killed, and holds gigabytes of module and build cache.
	for stale in "$cache_root"/.build-*; do
		[[ -e "$stale" ]] || continue
		log "removing $stale, left by an interrupted build"
		remove "$stale"
	done

	if complete "$cache"; then
		link "$dest" "$cache"
		return
	fi
	if [[ -e "$cache" ]]; then
		log "$cache is incomplete; building it again"
		rm -rf "$cache"
	fi

	# Everything of the build lives beside the cache (one file system, so
	# the final rename is atomic) and goes when it ends, however it ends.
	work="$(mktemp -d "$cache_root/.build-$KUBE_VERSION.XXXXXX")"
	# shellcheck disable=SC2064 # expand work now: it is local
	trap "remove '$work'" EXIT
	mkdir "$work/mod"
	(
		cd "$work/mod"
		export GOMODCACHE="$work/gomodcache" GOCACHE="$work/gocache" GOPATH="$work/gopath"
		export GOFLAGS="-mod=mod" GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
		build "$work/out"
	)
	mv -T "$work/out" "$cache"
	link "$dest" "$cache"
}

# On one line, so bash has read it all before the build starts: a checkout
# that changes this file during a build does not change what runs.
main "$@"; exit
