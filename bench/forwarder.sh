#!/usr/bin/env bash
# mergen-forwarder against nginx, same machine, same certificate, same
# backend, one run:
#   - keep-alive: requests/s and p99 latency (wrk, 64 connections)
#   - new connections: TLS handshakes/s (wrk, one request per connection)
#   - CPU time each proxy spent per keep-alive request
# The two proxies take turns, BENCH_ROUNDS times per measurement, and the
# medians are compared: on a shared or virtualised host the throughput of
# the whole machine drifts by more than the difference being measured, and
# alternating short runs exposes both proxies to the same drift.
# nginx is configured as the equivalent proxy: its stream module terminates
# TLS and relays bytes to the backend, one backend connection per client
# connection, exactly what the forwarder does.
#
# Everything runs inside a network namespace this script creates and
# removes, on 127.0.0.1 only. wrk connects from one address, so the
# forwarder's per-address cap (FWD_MAX_CONNS_PER_IP) is raised above the
# connection count; the other caps keep their defaults, and the script
# reports any connection the forwarder refused. Needs root, wrk, nginx with
# libnginx-mod-stream, openssl (scripts/deps.d/60-forwarder.sh).
#
#   BENCH_DURATION   seconds per wrk run (default 5)
#   BENCH_ROUNDS     runs per proxy and measurement (default 5)
#   BENCH_CONNS      keep-alive connections (default 64)
#   BENCH_THREADS    wrk threads (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${BENCH_DURATION:-5}
ROUNDS=${BENCH_ROUNDS:-5}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
[ "$(id -u)" = 0 ] || { echo "bench/forwarder.sh: needs root (network namespace)" >&2; exit 1; }
for tool in wrk nginx openssl ip curl; do
  command -v "$tool" >/dev/null || { echo "bench/forwarder.sh: $tool missing: run scripts/install-deps.sh" >&2; exit 1; }
done
STREAM_MOD=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f "$STREAM_MOD" ] || { echo "bench/forwarder.sh: $STREAM_MOD missing (libnginx-mod-stream)" >&2; exit 1; }

NS="fwdbench-$$"
WORK="$(mktemp -d)"
DOMAIN="vm.bench"
VMID="b0b0b0b0-0000-4000-8000-000000000001"
FWD_PORT=8443 NGX_PORT=8444 BACKEND_PORT=18080 FWD_METRICS_PORT=19109
# Connections closed by wrk are released a moment after wrk opens the
# next ones: leave room above the count.
PER_IP_CAP=$((CONNS * 2 + 64))
MAX_CONNS=$((PER_IP_CAP > 10000 ? PER_IP_CAP : 10000))
cleanup() {
  [ -f "$WORK/forwarder.pid" ] && kill "$(cat "$WORK/forwarder.pid")" 2>/dev/null || true
  [ -f "$WORK/backend.pid" ] && kill "$(cat "$WORK/backend.pid")" 2>/dev/null || true
  [ -f "$WORK/proxy.pid" ] && kill "$(cat "$WORK/proxy.pid")" 2>/dev/null || true
  sleep 0.3
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "/etc/netns/$NS" "$WORK"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
# ip netns exec bind-mounts /etc/netns/<ns>/hosts over /etc/hosts, so the
# wildcard names resolve to loopback for wrk inside the namespace only.
mkdir -p "/etc/netns/$NS"
printf '127.0.0.1 localhost app.%s\n' "$DOMAIN" > "/etc/netns/$NS/hosts"
in_ns() { ip netns exec "$NS" "$@"; }

echo "building mergen-forwarder..."
CGO_ENABLED=0 go build -o "$WORK/mergen-forwarder" ./cmd/mergen-forwarder
# One ECDSA P-256 wildcard certificate for both proxies (what
# `mergen certs wildcard` makes).
mkdir -p "$WORK/certs"
CERT="$WORK/certs/wildcard.$DOMAIN.crt" KEY="$WORK/certs/wildcard.$DOMAIN.key"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=*.$DOMAIN" -addext "subjectAltName=DNS:*.$DOMAIN,DNS:$DOMAIN" \
  -keyout "$KEY" -out "$CERT" 2>/dev/null

# The backend: a small nginx answering 200 with a short body, keep-alive on.
cat > "$WORK/backend.conf" <<CONF
daemon on; worker_processes 1; pid $WORK/backend.pid; error_log $WORK/backend.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND_PORT; location / { return 200 "hello from the vm\n"; } }
}
CONF
# The peer: nginx terminating TLS with the same certificate and relaying
# to the same backend.
cat > "$WORK/proxy.conf" <<CONF
load_module $STREAM_MOD;
daemon on; worker_processes auto; pid $WORK/proxy.pid; error_log $WORK/proxy.err;
events { worker_connections 4096; }
stream {
  server {
    listen 127.0.0.1:$NGX_PORT ssl;
    ssl_certificate $CERT; ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    proxy_pass 127.0.0.1:$BACKEND_PORT;
  }
}
CONF
in_ns nginx -c "$WORK/backend.conf" -p "$WORK" </dev/null >/dev/null 2>&1
in_ns nginx -c "$WORK/proxy.conf" -p "$WORK" </dev/null >/dev/null 2>&1

# The forwarder sees one VM whose "guest" is the backend, reached through
# the namespace switch it makes for every real VM.
mkdir -p "$WORK/vm.d/$VMID"
cat > "$WORK/vm.d/$VMID/meta.json" <<JSON
{"id":"$VMID","guestIP":"127.0.0.1","httpPort":$BACKEND_PORT,"netns":"$NS","tags":{"app":"app"}}
JSON
# The pid file names the forwarder itself, not the ip(8) process that
# launched it.
in_ns sh -c 'echo $$ > "$1"; shift; exec "$@"' sh "$WORK/forwarder.pid" env FWD_CONFIG_ROOT="$WORK/vm.d" FWD_NETNS_ROOT=/run/netns FWD_DOMAIN="$DOMAIN" \
  FWD_TLS_CERT_FILE="$CERT" FWD_TLS_KEY_FILE="$KEY" FWD_HTTPS_ADDR="127.0.0.1:$FWD_PORT" \
  FWD_METRICS_ADDR="127.0.0.1:$FWD_METRICS_PORT" FWD_LOG_LEVEL=warn FWD_RESOLVER_CACHE_TTL_SECONDS=5 \
  FWD_MAX_CONNS_PER_IP="$PER_IP_CAP" FWD_MAX_CONNS="$MAX_CONNS" \
  "$WORK/mergen-forwarder" >/dev/null 2>"$WORK/forwarder.err" </dev/null &

for port in $FWD_PORT $NGX_PORT; do
  ok=
  for _ in $(seq 50); do
    if in_ns wrk -t1 -c1 -d1s "https://app.$DOMAIN:$port/" 2>/dev/null | grep -q 'Requests/sec'; then ok=1; break; fi
    sleep 0.2
  done
  [ -n "$ok" ] || { echo "proxy on port $port does not answer"; cat "$WORK"/*.err; exit 1; }
done

# cpu_ticks PID... prints the user+system clock ticks the processes used.
cpu_ticks() {
  local total=0 t
  for pid in "$@"; do
    for t in /proc/"$pid"/task/*/stat; do
      total=$((total + $(awk '{print $14 + $15}' "$t" 2>/dev/null || echo 0)))
    done
  done
  echo "$total"
}
FWD_PIDS="$(cat "$WORK/forwarder.pid")"
NGX_PIDS="$(pgrep -P "$(cat "$WORK/proxy.pid")" | tr '\n' ' ')"

# run_wrk PORT [wrk args...] prints "req/s p99_ms cpu_us_per_request"
run_wrk() {
  local port=$1; shift
  local pids out before after
  if [ "$port" = "$FWD_PORT" ]; then pids=$FWD_PIDS; else pids=$NGX_PIDS; fi
  # shellcheck disable=SC2086
  before=$(cpu_ticks $pids)
  out="$(in_ns wrk --latency -d"${DURATION}s" "$@" "https://app.$DOMAIN:$port/")"
  # shellcheck disable=SC2086
  after=$(cpu_ticks $pids)
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then echo "$out" | grep -E 'Non-2xx|Socket errors' >&2; fi
  local rps p99 reqs
  rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
  reqs="$(awk '/requests in/ {print $1}' <<<"$out")"
  p99="$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")"
  awk -v r="$rps" -v p="${p99:-nan}" -v t=$((after - before)) -v n="${reqs:-0}" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%s %s %.1f\n", r, p, (n > 0 ? t * 1e6 / hz / n : 0) }'
}

median() { sort -g | awk '{v[NR]=$1} END { if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2] + v[NR/2+1]) / 2 }'; }

# measure NAME [wrk args...]: ROUNDS alternating runs; writes
# $WORK/NAME.fwd and $WORK/NAME.ngx, one "req/s p99 cpu" line per run.
measure() {
  local name=$1; shift
  : > "$WORK/$name.fwd"; : > "$WORK/$name.ngx"
  for round in $(seq "$ROUNDS"); do
    run_wrk $FWD_PORT "$@" >> "$WORK/$name.fwd"
    run_wrk $NGX_PORT "$@" >> "$WORK/$name.ngx"
    echo "  $name round $round: forwarder $(tail -1 "$WORK/$name.fwd" | cut -d' ' -f1) req/s, nginx $(tail -1 "$WORK/$name.ngx" | cut -d' ' -f1) req/s"
  done
}
col() { cut -d' ' -f"$2" "$WORK/$1" | median; }

echo "wrk: ${DURATION}s per run, ${THREADS} threads, ${ROUNDS} rounds taking turns; keep-alive with ${CONNS} connections; handshakes with one request per connection"
measure keepalive -t"$THREADS" -c"$CONNS"
measure handshake -t"$THREADS" -c16 -H 'Connection: close'

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
fwd_rps=$(col keepalive.fwd 1) ngx_rps=$(col keepalive.ngx 1)
fwd_p99=$(col keepalive.fwd 2) ngx_p99=$(col keepalive.ngx 2)
fwd_cpu=$(col keepalive.fwd 3) ngx_cpu=$(col keepalive.ngx 3)
fwd_hs=$(col handshake.fwd 1) ngx_hs=$(col handshake.ngx 1)
printf '\n%-26s %16s %14s %10s\n' "median of ${ROUNDS}" "mergen-forwarder" "nginx" "ratio"
printf '%-26s %16.0f %14.0f %10s\n' "keep-alive req/s" "$fwd_rps" "$ngx_rps" "$(ratio "$fwd_rps" "$ngx_rps")"
printf '%-26s %16.2f %14.2f %10s\n' "keep-alive p99 ms" "$fwd_p99" "$ngx_p99" "$(ratio "$fwd_p99" "$ngx_p99")"
printf '%-26s %16.1f %14.1f %10s\n' "proxy CPU us per request" "$fwd_cpu" "$ngx_cpu" "$(ratio "$fwd_cpu" "$ngx_cpu")"
printf '%-26s %16.0f %14.0f %10s\n' "handshakes/s" "$fwd_hs" "$ngx_hs" "$(ratio "$fwd_hs" "$ngx_hs")"
echo "(ratio = forwarder / nginx: above 1 is better for req/s and handshakes/s, below 1 is better for p99 and CPU)"

# Every connection should have been admitted: a refusal would make the
# forwarder look faster than it is (wrk counts the errors apart).
refused="$(in_ns curl -fsS "http://127.0.0.1:$FWD_METRICS_PORT/metrics" 2>/dev/null |
  awk '/^mergen_forwarder_refused_total/ {n += $2} END {print n + 0}')"
echo "forwarder caps: FWD_MAX_CONNS_PER_IP=$PER_IP_CAP FWD_MAX_CONNS=$MAX_CONNS; connections refused: $refused"
[ "$refused" = 0 ] || echo "bench/forwarder.sh: the forwarder refused $refused connections: raise the caps" >&2
