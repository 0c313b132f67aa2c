#!/usr/bin/env bash
# Installs what mergen needs on a fresh Debian 12 host, as root. Idempotent:
# every step checks before it acts.
#
#   scripts/install-deps.sh           everything: running VMs, the build, the
#                                     test suite and the benchmarks
#   scripts/install-deps.sh runtime   only what running mergen needs
#
# Each file in scripts/deps.d/ installs what one part of mergen needs; they run
# in name order after one shared package-index refresh. Files numbered below
# 40 are the runtime; the rest serve tests and benchmarks (a systemd
# container image, a registry, an S3 server, nginx and wrk).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (it installs Debian packages)" >&2
  exit 1
fi

# apt_install PKG... installs only what is missing, refreshing the index once.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -z "${MERGEN_APT_UPDATED:-}" ]; then
    apt-get update -qq
    export MERGEN_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
export -f apt_install

mode=${1:-all}
case "$mode" in
  all | runtime) ;;
  *) echo "install-deps: unknown mode \"$mode\" (want all or runtime)" >&2; exit 2 ;;
esac

for f in scripts/deps.d/*.sh; do
  [ -e "$f" ] || continue
  n=$(basename "$f")
  if [ "$mode" = runtime ] && [ "${n%%-*}" -ge 40 ]; then
    continue
  fi
  echo "install-deps: $f"
  bash "$f"
done
