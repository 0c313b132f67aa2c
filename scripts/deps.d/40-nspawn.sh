#!/usr/bin/env bash
# A real systemd for the supervision and end-to-end tests: systemd-nspawn
# boots a minimal Debian bookworm root file system. It is built once with
# mmdebstrap and kept as a tarball; each test extracts a fresh copy.
#
# bookworm is pinned on purpose: its systemd still runs on hosts with hybrid
# (v1 + v2) cgroup hierarchies. QEMU is included so that VMs can run from a
# service inside the container; nftables and procps let tests inspect it.
set -euo pipefail
apt_install systemd-container mmdebstrap

packages="systemd,systemd-sysv,dbus,iproute2,qemu-system-x86,nftables,procps"
cache=.build/cache
tarball="$cache/nspawn-bookworm.tar"
stamp="$tarball.packages"
# Rebuilt when the package list changes.
if [ -s "$tarball" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$packages" ]; then
  exit 0
fi
mkdir -p "$cache"
tmp="$tarball.tmp.$$"
trap 'rm -f "$tmp"' EXIT
mmdebstrap --quiet --variant=minbase --format=tar --include="$packages" bookworm "$tmp"
mv "$tmp" "$tarball"
echo "$packages" > "$stamp"
trap - EXIT
echo "40-nspawn: built $tarball"
