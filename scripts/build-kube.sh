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

repo="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$repo/.build/kube}"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/mergen/kube"
cache="$cache_root/$KUBE_VERSION"

log() { printf 'build-kube: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$KUBE_VERSION" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] ||
	die "KUBE_VERSION=$KUBE_VERSION: want v1.MINOR.PATCH"
minor="${BASH_REMATCH[1]}"
staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

command -v go >/dev/null || die "go not found in PATH"

complete() {
	local b
	for b in "${BINARIES[@]}"; do [[ -x "$1/bin/$b" ]] || return 1; done
}

# link_dest points DEST/bin at the cached binaries (replacing any older link
# in one rename, so a reader never sees it missing).
link_dest() {
	mkdir -p "$dest"
	if [[ -d "$dest/bin" && ! -L "$dest/bin" ]]; then rm -rf "$dest/bin"; fi
	ln -sfn "$cache/bin" "$dest/bin.new"
	mv -T "$dest/bin.new" "$dest/bin"
	log "$KUBE_VERSION in $dest/bin -> $cache/bin"
}

fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9

if complete "$cache"; then
	link_dest
	exit 0
fi
if [[ -e "$cache" ]]; then
	log "$cache is incomplete; rebuilding it"
	rm -rf "$cache"
fi

# Everything of this build lives under one directory beside the cache (the
# same file system, so the final rename is atomic) and goes when it ends.
work="$(mktemp -d "$cache_root/.build-$KUBE_VERSION.XXXXXX")"
cleanup() {
	# The module cache is read-only by design; make it removable first.
	chmod -R u+w "$work" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

export GOMODCACHE="$work/gomodcache" GOCACHE="$work/gocache"
export GOPATH="$work/gopath" GOFLAGS="-mod=mod" GOWORK=off GOTOOLCHAIN=local
export CGO_ENABLED=0
mod="$work/mod"
out="$work/out"
mkdir -p "$mod/etcd" "$out/bin"
cd "$mod"

start=$(date +%s)
log "resolving k8s.io/kubernetes $KUBE_VERSION (staging modules at $staging_version)"
go mod init kube-build >/dev/null 2>&1
go mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"

# kubernetes' go.mod says `k8s.io/X => ./staging/src/k8s.io/X` for each
# staging module; the same code is published as k8s.io/X at v0.MINOR.PATCH.
kgomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | jq -er .GoMod)" ||
	die "cannot download k8s.io/kubernetes@$KUBE_VERSION from the module proxy"
mapfile -t staging < <(sed -nE 's#^[[:space:]]*(k8s\.io/[^[:space:]]+)[[:space:]]+=>[[:space:]]+\./staging/src/k8s\.io/.*#\1#p' "$kgomod")
((${#staging[@]} > 0)) || die "no staging replaces found in kubernetes' go.mod ($kgomod)"
replaces=()
for m in "${staging[@]}"; do replaces+=("-replace=$m=$m@$staging_version"); done
go mod edit "${replaces[@]}"
log "${#staging[@]} staging modules replaced"

cat >"$mod/etcd/main.go" <<'EOF'
// Command etcd is the etcd server kubernetes pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF

# Some 300 modules: their "downloading" lines are shown only on failure.
if ! go get -tool \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kubectl 2>"$work/get.log" ||
	! go mod tidy 2>>"$work/get.log"; then
	cat "$work/get.log" >&2
	die "resolving the modules of k8s.io/kubernetes@$KUBE_VERSION failed"
fi
log "modules resolved in $(fmt_secs $(($(date +%s) - start)))"

# Without the version the servers report v0.0.0 and clients warn about skew.
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done

# One `go build` of all five: it compiles each shared package once, keeps
# every core busy and links the binaries side by side, which beats separate
# builds (that would compile the shared packages several times) on a small
# machine. The apiserver's link peaks at ~2.4 GB of memory.
build_start=$(date +%s)
log "building ${BINARIES[*]} (the apiserver alone takes ~8 min of two cores)"
go build -trimpath -ldflags "$ldflags" -o "$out/bin/" \
	./etcd \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kubectl
end=$(date +%s)
complete "$out" || die "build finished without all of ${BINARIES[*]}"

# Each binary is written when its own link ends, so its modification time
# tells when it was ready.
for b in "${BINARIES[@]}"; do
	ready=$(($(stat -c %Y "$out/bin/$b") - build_start))
	log "$(printf '%-24s ready after %s (%d MB)' "$b" "$(fmt_secs "$ready")" $(($(stat -c %s "$out/bin/$b") / 1048576)))"
done
log "built in $(fmt_secs $((end - build_start))), $(fmt_secs $((end - start))) with module downloads"

"$out/bin/kube-apiserver" --version | grep -qF "$KUBE_VERSION" ||
	die "kube-apiserver does not report $KUBE_VERSION"

mv -T "$out" "$cache"
link_dest
