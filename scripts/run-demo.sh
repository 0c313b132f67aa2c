#!/usr/bin/env bash
# `make run`: set this host up and run the demo — the daemon, the forwarder
# and a VM made from the bundled demo image, reachable over HTTPS.
# `make stop` (this script with "stop"): remove the demo VM and stop both.
#
# Runs as root on a fresh Debian host; running it again is fine. Under
# systemd (PID 1) the daemon and the forwarder become services; elsewhere
# they run detached, with pid files in /run/mergen-demo.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.build/bin
DATA=${MGR_DATA_ROOT:-/var/lib/mergen}
DOMAIN=${FWD_DOMAIN:-localhost}
HTTPS_ADDR=${FWD_HTTPS_ADDR:-:443}
HTTPS_PORT=${HTTPS_ADDR##*:}
API_ADDR=${MGR_HTTP_ADDR:-127.0.0.1:8080}
API=http://${API_ADDR/#:/127.0.0.1:}
STATE=/run/mergen-demo
LOGS=$DATA/logs
SOCKET=${MGR_API_SOCKET:-${MGR_RUN_ROOT:-/run/mergen}/mergen.sock}
TOKEN_FILE=${MGR_API_TOKEN_FILE:-/etc/mergen/api-token}
# The CLI finds the daemon on its unix socket (no token needed as root).
export MGR_DATA_ROOT=$DATA MGR_API_SOCKET=$SOCKET MGR_API_TOKEN_FILE=$TOKEN_FILE

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "run-demo: must run as root (network namespaces, nftables, VMs)" >&2
  exit 1
fi
systemd_host() { [ -d /run/systemd/system ]; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_detached() {
  local pidfile=$STATE/$1.pid
  if alive "$pidfile"; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pidfile" || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
}

if [ "${1:-}" = "stop" ]; then
  if curl -fsS "$API/healthz" >/dev/null 2>&1; then
    say "removing the demo VM"
    /usr/local/bin/mergen vm rm -f demo 2>/dev/null || true
  fi
  say "stopping the daemon and the forwarder"
  if systemd_host; then
    systemctl disable --now mergen-forwarder.service mergen.service 2>/dev/null || true
  fi
  stop_detached mergen-forwarder
  stop_detached mergen
  exit 0
fi

say "installing binaries into /usr/local/bin"
for b in "$BIN"/*; do install -m 0755 "$b" /usr/local/bin/; done

say "installing base assets into $DATA/base/current"
mkdir -p "$DATA/base/current" "$LOGS" "$STATE" /etc/mergen
cp -a --update .build/assets/. "$DATA/base/current/"

CERT=$DATA/certs/wildcard.$DOMAIN.crt
KEY=$DATA/certs/wildcard.$DOMAIN.key
if [ ! -s "$CERT" ]; then
  say "making a wildcard certificate for *.$DOMAIN"
  mergen certs wildcard --domain "$DOMAIN" --out "$DATA/certs"
fi

cat > /etc/mergen/mergen.env <<ENV
MGR_DATA_ROOT=$DATA
MGR_HTTP_ADDR=$API_ADDR
MGR_LOG_FORMAT=text
ENV
cat > /etc/mergen/forwarder.env <<ENV
FWD_CONFIG_ROOT=${MGR_CONFIG_ROOT:-$DATA/vm.d}
FWD_DOMAIN=$DOMAIN
FWD_TLS_CERT_FILE=$CERT
FWD_TLS_KEY_FILE=$KEY
FWD_HTTPS_ADDR=$HTTPS_ADDR
FWD_LOG_LEVEL=info
FWD_LOG_FORMAT=text
ENV

# start_detached NAME ENVFILE COMMAND...: run COMMAND in its own session with
# the settings of /etc/mergen/ENVFILE, unless it already runs.
start_detached() {
  local name=$1 envfile=$2
  shift 2
  if alive "$STATE/$name.pid"; then return 0; fi
  (
    set -a
    . "/etc/mergen/$envfile"
    set +a
    setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
  )
}

if systemd_host; then
  say "starting mergen.service and mergen-forwarder.service"
  install -m 0644 deploy/systemd/mergen.service deploy/systemd/mergen-forwarder.service /etc/systemd/system/
  systemctl daemon-reload
  systemctl enable --now mergen.service mergen-forwarder.service
else
  say "starting the daemon and the forwarder detached (PID 1 is not systemd; logs in $LOGS)"
  start_detached mergen mergen.env /usr/local/bin/mergen server
  start_detached mergen-forwarder forwarder.env /usr/local/bin/mergen-forwarder
fi

for _ in $(seq 100); do curl -fsS "$API/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "$API/healthz" >/dev/null || { echo "run-demo: the daemon did not come up; see $LOGS/mergen.log" >&2; exit 1; }

say "building the demo image"
mergen demo image --out "$DATA/demo-image" >/dev/null

if mergen vm inspect demo >/dev/null 2>&1; then
  say "the demo VM exists; making sure it runs"
  mergen vm start demo >/dev/null
  mergen vm ls
else
  say "running the demo image"
  mergen run "oci:$DATA/demo-image" --name demo --detach --domain "$DOMAIN" --https-port "$HTTPS_PORT"
fi

URL="https://demo.$DOMAIN/"
[ "$HTTPS_PORT" = 443 ] || URL="https://demo.$DOMAIN:$HTTPS_PORT/"
CURL="curl -k --resolve demo.$DOMAIN:$HTTPS_PORT:127.0.0.1 $URL"
for _ in $(seq 50); do $CURL -fsS -o /dev/null 2>/dev/null && break; sleep 0.2; done
say "the demo answers through mergen-forwarder over TLS:"
echo "    $CURL"
$CURL -sS
say "the API, over the unix socket or over TCP with the daemon's token:"
echo "    curl --unix-socket $SOCKET http://mergen/v1/vms"
echo "    curl -H \"Authorization: Bearer \$(head -n1 $TOKEN_FILE)\" $API/v1/vms"
say "stop everything with: make stop"
