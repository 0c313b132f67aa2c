#!/usr/bin/env bash
# Installs everything the build and the test suite need on a fresh Debian 12
# host, as root. Idempotent: every step checks before it acts.
#
# Each file in scripts/deps.d/ installs what one part of mergen needs; they run
# in name order after one shared package-index refresh.
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

for f in scripts/deps.d/*.sh; do
  [ -e "$f" ] || continue
  echo "install-deps: $f"
  bash "$f"
done
