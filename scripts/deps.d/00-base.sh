#!/usr/bin/env bash
# Tools the core needs: ext4 images, namespaces, QEMU and its guest tooling.
set -euo pipefail
apt_install ca-certificates curl jq e2fsprogs iproute2 nftables kmod cpio \
  busybox-static qemu-system-x86 lz4 xz-utils openssl
