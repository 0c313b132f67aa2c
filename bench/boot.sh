#!/usr/bin/env bash
# Boot timeline: boots a tiny payload with the base assets under QEMU and
# prints kernel-start -> payload-exec as mergen-init reports it on the
# console, plus the wall time from QEMU launch to power-off.
#
#   bash bench/boot.sh            3 boots
#   BOOTS=5 ACCEL=kvm bash bench/boot.sh
#
# The guest has no network device and sends nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ASSETS=${MERGEN_TEST_ASSETS:-$ROOT/.build/assets}
BOOTS=${BOOTS:-3}
ACCEL=${ACCEL:-tcg}
for f in vmlinuz initrd.img golden-rootfs.ext4; do
  [[ -f $ASSETS/$f ]] || { echo "boot.sh: $ASSETS/$f missing: run make assets" >&2; exit 1; }
done
(( BOOTS >= 1 && BOOTS <= 20 )) || { echo "boot.sh: BOOTS must be 1..20" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
img=$tmp/img
mkdir -p "$img/bin" "$img/etc" "$img/.mergen"
cp "$(command -v busybox)" "$img/bin/busybox"
ln -s busybox "$img/bin/sh"
echo 'root:x:0:0:root:/root:/bin/sh' >"$img/etc/passwd"
echo 'root:x:0:' >"$img/etc/group"
printf '#!/bin/sh\necho payload running\n' >"$img/entry"
chmod 0755 "$img/entry"
echo '{"image":"bench","entrypoint":["/entry"]}' >"$img/.mergen/image-meta.json"
echo '{"version":1,"image":"bench","argv":["/entry"],"env":["PATH=/bin"]}' >"$img/.mergen/mergen.runtime.json"
truncate -s 16M "$tmp/payload.ext4"
mkfs.ext4 -q -F -L mergen-payload -d "$img" "$tmp/payload.ext4"

echo "boot  kernel-start->payload-exec  launch->power-off  (accel $ACCEL)"
for i in $(seq 1 "$BOOTS"); do
  cp "$ASSETS/golden-rootfs.ext4" "$tmp/root.ext4"
  t0=$(date +%s.%N)
  timeout 120 qemu-system-x86_64 -accel "$ACCEL" -cpu max -M q35 -m 256 -nographic -nodefaults \
    -no-reboot -serial stdio -monitor none \
    -kernel "$ASSETS/vmlinuz" -initrd "$ASSETS/initrd.img" \
    -append "console=ttyS0 reboot=k panic=1 init=/sbin/init quiet" \
    -drive "file=$tmp/root.ext4,if=virtio,format=raw" \
    -drive "file=$tmp/payload.ext4,if=virtio,format=raw,readonly=on" >"$tmp/console.log" 2>&1 || true
  t1=$(date +%s.%N)
  tl=$(grep -o 'kernel-start->payload-exec [0-9.]*s' "$tmp/console.log" | awk '{print $2}' || true)
  if [[ -z $tl ]] || ! grep -q 'mergen-init: exit status 0' "$tmp/console.log"; then
    echo "boot.sh: boot $i did not reach the payload; console:" >&2
    tail -n 20 "$tmp/console.log" >&2
    exit 1
  fi
  printf '%4d  %27s  %16.2fs\n' "$i" "$tl" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
done
