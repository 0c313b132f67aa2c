#!/usr/bin/env bash
# Guest assets and boot tests: the cloud kernel is fetched with apt-get
# download; busybox fills the golden rootfs; QEMU boots guests under TCG.
set -euo pipefail
apt_install busybox-static cpio e2fsprogs lz4 xz-utils qemu-system-x86 kmod
