#!/usr/bin/env bash
# A real systemd for the supervision tests: systemd-nspawn boots a minimal
# Debian bookworm root file system. The root file system is built once with
# mmdebstrap and kept as a tarball; each test extracts a fresh copy.
#
# bookworm is pinned on purpose: its systemd still runs on hosts with hybrid
# (v1 + v2) cgroup hierarchies.
set -euo pipefail
apt_install systemd-container mmdebstrap

cache=.build/cache
tarball="$cache/nspawn-bookworm.tar"
if [ -s "$tarball" ]; then
  exit 0
fi
mkdir -p "$cache"
tmp="$tarball.tmp.$$"
trap 'rm -f "$tmp"' EXIT
mmdebstrap --quiet --variant=minbase --format=tar \
  --include=systemd,systemd-sysv,dbus,iproute2 \
  bookworm "$tmp"
mv "$tmp" "$tarball"
trap - EXIT
echo "40-nspawn: built $tarball"
