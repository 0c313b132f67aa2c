#!/usr/bin/env bash
# Builds the base assets a VM boots from into OUTDIR:
#
#   vmlinuz              Debian's cloud kernel (bzImage), for QEMU
#   vmlinux              the same kernel as an uncompressed ELF, for Firecracker
#   initrd.img           newc cpio: mergen-init as /init, the modules the cloud
#                        kernel needs to reach its disks, and their load order
#   golden-rootfs.ext4   label mergen-root: busybox, /sbin/init = mergen-init
#   agent-rootfs.ext4    label mergen-agent: the bin/ directory, read-only
#   bin/sbin-init        mergen-init
#   env-rootfs.ext4      label mergen-env: an empty `env` file
#   bin/mergen-agent     the same binary (it changes role by argv[0])
#
# Idempotent: downloads and extractions are cached under .build/cache/guest,
# and each output is rebuilt only when what it is made from changed, so a
# second run takes well under a second.
#
# Usage: scripts/build-assets.sh OUTDIR
set -euo pipefail

OUT=${1:?usage: build-assets.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=$ROOT/.build/cache/guest
mkdir -p "$OUT" "$OUT/bin" "$CACHE"
OUT=$(cd "$OUT" && pwd)

# Modules the cloud kernel builds as modules but a guest needs, in load order
# (a module's dependencies come first). virtio_* reach the disks and NIC,
# virtio_console the agent's virtio-serial port (QEMU), overlay gives the
# writable layer, vsock the agent's channel under Firecracker, button + evdev
# the ACPI power button.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev
  virtio_pci virtio_blk failover net_failover virtio_net virtio_console overlay
  vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
  button evdev)

log() { echo "build-assets: $*" >&2; }

# Stamps record, per output directory, the digest of what each output was
# made from.
STAMPS=$CACHE/stamps/$(echo "$OUT" | sha256sum | cut -c1-16)
mkdir -p "$STAMPS"

# changed OUTPUT INPUTS...: true when OUTPUT is missing or the recorded digest
# of INPUTS differs.
changed() {
  local name=$1; shift
  local want
  want=$(printf '%s\n' "$@" | sha256sum | cut -d' ' -f1)
  [[ -e $OUT/$name && "$(cat "$STAMPS/${name//\//_}" 2>/dev/null)" == "$want" ]] && return 1
  echo "$want" >"$STAMPS/${name//\//_}.new"
  return 0
}
commit_stamp() { mv "$STAMPS/${1//\//_}.new" "$STAMPS/${1//\//_}"; }
sum() { sha256sum "$@" | cut -d' ' -f1; }

# --- kernel -----------------------------------------------------------------
kernel_pkg() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    grep -o 'linux-image-6\.1[^ ]*-cloud-amd64' | head -n1
}
# The cached modules/modules.list is the list they were extracted for: a
# cache made for another list (a module added here) is extracted anew, so
# existing caches pick up a new module without being deleted by hand.
if [[ ! -f $CACHE/kernel/.done ||
  "$(cat "$CACHE/kernel/modules/modules.list" 2>/dev/null)" != "$(printf '%s\n' "${MODULES[@]}")" ]]; then
  pkg=$(kernel_pkg)
  if [[ -z $pkg && $(id -u) -eq 0 ]]; then
    apt-get update -qq >/dev/null # a fresh host may have no package lists yet
    pkg=$(kernel_pkg)
  fi
  [[ -n $pkg ]] || { log "no linux-image-6.1.*-cloud-amd64 package known to apt (run apt-get update)"; exit 1; }
  log "downloading $pkg"
  tmp=$(mktemp -d "$CACHE/kernel.XXXXXX")
  (cd "$tmp" && apt-get download "$pkg" >/dev/null)
  dpkg -x "$tmp"/*.deb "$tmp/x"
  rm -rf "$CACHE/kernel"
  mkdir -p "$CACHE/kernel/modules"
  cp "$tmp"/x/boot/vmlinuz-* "$CACHE/kernel/vmlinuz"
  kver=$(ls "$tmp/x/lib/modules")
  echo "$kver" >"$CACHE/kernel/version"
  for m in "${MODULES[@]}"; do
    f=$(find "$tmp/x/lib/modules/$kver" -name "$m.ko" | head -n1)
    [[ -n $f ]] || { log "module $m not in $pkg"; exit 1; }
    cp "$f" "$CACHE/kernel/modules/"
  done
  printf '%s\n' "${MODULES[@]}" >"$CACHE/kernel/modules/modules.list"
  rm -rf "$tmp"
  touch "$CACHE/kernel/.done"
fi

if changed vmlinuz "$(sum "$CACHE/kernel/vmlinuz")"; then
  cp "$CACHE/kernel/vmlinuz" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
  commit_stamp vmlinuz
fi

# The cloud bzImage carries an LZ4 (legacy frame) payload; the generic one XZ.
# Decompress from the first magic; trailing bytes after the stream are the
# bzImage's own and make the decompressor complain, so only the ELF header of
# the result is trusted.
if changed vmlinux "$(sum "$CACHE/kernel/vmlinuz")"; then
  kz=$CACHE/kernel/vmlinuz
  off=$(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$kz" | head -n1 | cut -d: -f1 || true)
  if [[ -n $off ]]; then
    tail -c +"$((off + 1))" "$kz" | lz4 -dc -l >"$OUT/vmlinux.tmp" 2>/dev/null || true
  else
    off=$(LC_ALL=C grep -obUaP '\xfd\x37\x7a\x58\x5a\x00' "$kz" | head -n1 | cut -d: -f1 || true)
    [[ -n $off ]] || { log "vmlinuz: no LZ4 or XZ payload found"; exit 1; }
    tail -c +"$((off + 1))" "$kz" | xz -dc --single-stream >"$OUT/vmlinux.tmp" 2>/dev/null || true
  fi
  [[ "$(head -c4 "$OUT/vmlinux.tmp" | od -An -tx1 | tr -d ' \n')" == 7f454c46 ]] ||
    { log "vmlinux: decompressed payload is not ELF"; rm -f "$OUT/vmlinux.tmp"; exit 1; }
  mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
  commit_stamp vmlinux
fi

# --- mergen-init --------------------------------------------------------------
# Prefer the binary `make build` just made; otherwise build it here.
INIT=$ROOT/.build/bin/mergen-init
if [[ ! -x $INIT ]]; then
  INIT=$CACHE/mergen-init
  log "building mergen-init"
  (cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$INIT" ./cmd/mergen-init)
fi
if changed bin/mergen-agent "$(sum "$INIT")"; then
  install -m 0755 "$INIT" "$OUT/bin/sbin-init"
  install -m 0755 "$INIT" "$OUT/bin/mergen-agent"
  commit_stamp bin/mergen-agent
fi

# --- initrd -----------------------------------------------------------------
if changed initrd.img "$(sum "$INIT" "$CACHE"/kernel/modules/*)"; then
  tmp=$(mktemp -d "$CACHE/initrd.XXXXXX")
  mkdir -p "$tmp"/{dev,proc,sys,newroot,lib/modules}
  install -m 0755 "$INIT" "$tmp/init"
  cp -r "$CACHE/kernel/modules" "$tmp/lib/modules/mergen"
  (cd "$tmp" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$OUT/initrd.img.tmp"
  mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
  rm -rf "$tmp"
  commit_stamp initrd.img
fi

# --- golden rootfs ----------------------------------------------------------
BUSYBOX=$(command -v busybox || true)
[[ -n $BUSYBOX ]] || { log "busybox missing: run make deps (busybox-static)"; exit 1; }
if changed golden-rootfs.ext4 "$(sum "$INIT" "$BUSYBOX" "$CACHE"/kernel/modules/* "$0")"; then
  tmp=$(mktemp -d "$CACHE/golden.XXXXXX")
  r=$tmp/root
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,mnt,var/log,lib/modules,mergen}
  chmod 1777 "$r/tmp"
  install -m 0755 "$BUSYBOX" "$r/bin/busybox"
  # Applet links, except init: /sbin/init is mergen-init.
  "$BUSYBOX" --list-full | while read -r a; do
    [[ $a == sbin/init || $a == linuxrc || $a == bin/busybox ]] && continue
    mkdir -p "$r/$(dirname "$a")"
    ln -sf /bin/busybox "$r/$a"
  done
  install -m 0755 "$INIT" "$r/sbin/init"
  cp -r "$CACHE/kernel/modules" "$r/lib/modules/mergen"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  echo mergen >"$r/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$r/etc/hosts"
  : >"$r/etc/resolv.conf"
  rm -f "$OUT/golden-rootfs.ext4.tmp"
  truncate -s 64M "$OUT/golden-rootfs.ext4.tmp"
  mkfs.ext4 -q -F -L mergen-root -d "$r" "$OUT/golden-rootfs.ext4.tmp"
  mv "$OUT/golden-rootfs.ext4.tmp" "$OUT/golden-rootfs.ext4"
  rm -rf "$tmp"
  commit_stamp golden-rootfs.ext4
fi

# --- agent disk ---------------------------------------------------------------
if changed agent-rootfs.ext4 "$(sum "$OUT"/bin/*)"; then
  rm -f "$OUT/agent-rootfs.ext4.tmp"
  truncate -s 32M "$OUT/agent-rootfs.ext4.tmp"
  mkfs.ext4 -q -F -L mergen-agent -d "$OUT/bin" "$OUT/agent-rootfs.ext4.tmp"
  mv "$OUT/agent-rootfs.ext4.tmp" "$OUT/agent-rootfs.ext4"
  commit_stamp agent-rootfs.ext4
fi

# --- env disk ---------------------------------------------------------------
# An empty env disk (label mergen-env, empty `env` file): a template for
# per-VM env disks and a harmless default to attach.
if changed env-rootfs.ext4 "empty-v1"; then
  tmp=$(mktemp -d "$CACHE/env.XXXXXX")
  : >"$tmp/env"
  rm -f "$OUT/env-rootfs.ext4.tmp"
  truncate -s 1M "$OUT/env-rootfs.ext4.tmp"
  mkfs.ext4 -q -F -L mergen-env -d "$tmp" "$OUT/env-rootfs.ext4.tmp"
  mv "$OUT/env-rootfs.ext4.tmp" "$OUT/env-rootfs.ext4"
  rm -rf "$tmp"
  commit_stamp env-rootfs.ext4
fi

log "assets ready in $OUT (kernel $(cat "$CACHE/kernel/version"))"
