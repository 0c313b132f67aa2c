#!/usr/bin/env bash
# Forwarder tests and benchmark: iproute2 for the test namespaces, and for
# bench/forwarder.sh wrk (load), nginx (the peer it is measured against)
# with its stream module (a TLS-terminating TCP proxy, the forwarder's
# exact peer) and openssl.
set -euo pipefail
apt_install iproute2 wrk nginx libnginx-mod-stream openssl
# Debian starts nginx on install where it can; the benchmark runs its own
# instance with its own configuration and wants the packaged one stopped.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now nginx >/dev/null 2>&1 || true
fi
