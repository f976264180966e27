#!/usr/bin/env bash
# Benchmark: throughput and connection rate through two meshd (mTLS) vs direct, and meshd's RSS idle and with 1,000 connections.
set -euo pipefail
meshd=$(realpath "$1") # meson may pass paths relative to the build dir
pki=$(realpath "$2")
load=$(realpath "$3")
secs=${4:-5}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"
PY=/usr/bin/python3 # a pyenv shim on PATH costs seconds a call
[ -x "$PY" ] || PY=python3
WEB=web.default.serviceaccount.identity.linkerd.cluster.local
"$pki" "$tmp" client default client server default web >/dev/null
read -r P_SINK P_ECHO P_IN P_SADM P_CADM P_MSINK P_MECHO <<<"$(timeout 30 "$PY" "$load" free-ports 7)"

timeout 300 "$PY" "$load" sink-server "$P_SINK" >sink.log 2>&1 &
pids+=($!)
timeout 300 "$PY" "$load" echo-server "$P_ECHO" /dev/null >echo.log 2>&1 &
pids+=($!)
cat >eps.json <<EOF2
{"services": {
  "sink.default.svc.cluster.local:9000": {"endpoints": [{"addr": "127.0.0.2:$P_IN", "identity": "$WEB", "port": $P_SINK}]},
  "echo.default.svc.cluster.local:7": {"endpoints": [{"addr": "127.0.0.2:$P_IN", "identity": "$WEB", "port": $P_ECHO}]}}}
EOF2
timeout 300 "$meshd" --identity-dir server --inbound-listen-addr "127.0.0.2:$P_IN" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.2:$P_SADM" --log-level warn >server.log 2>&1 &
SERVER=$!
pids+=($SERVER)
timeout 300 "$meshd" --identity-dir client --inbound-listen-addr "" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_CADM" --endpoints eps.json --log-level warn --opaque-ports 7,9000 \
  --outbound-port-map "127.0.0.1:$P_MSINK=sink.default.svc.cluster.local:9000" \
  --outbound-port-map "127.0.0.1:$P_MECHO=echo.default.svc.cluster.local:7" >client.log 2>&1 &
CLIENT=$!
pids+=($CLIENT)
for _ in $(seq 200); do curl -fsS -m 1 "http://127.0.0.1:$P_CADM/ready" >/dev/null 2>&1 && break; sleep 0.05; done
for _ in $(seq 200); do timeout 5 "$PY" "$load" check "$P_MECHO" 1 >/dev/null 2>&1 && break; sleep 0.1; done

# meshd runs under timeout(1): measure its child, meshd itself.
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$(ps -o pid= --ppid "$1" | tr -d ' ' | head -n 1)/status"; }
echo "meshd opaque TCP, client meshd -> mTLS (TLS 1.2, ECDHE-ECDSA-AES128-GCM) -> server meshd -> backend,"
echo "one event loop each, loopback, $(nproc) CPUs shared by everything; python3 load and backends; ${secs} s per figure"
d=$(timeout $((secs + 60)) "$PY" "$load" throughput "$P_SINK" "$secs")
m=$(timeout $((secs + 60)) "$PY" "$load" throughput "$P_MSINK" "$secs")
echo "throughput, one connection: direct $d MB/s, through two meshd $m MB/s"
d=$(timeout $((secs + 60)) "$PY" "$load" connrate "$P_ECHO" "$secs")
m=$(timeout $((secs + 60)) "$PY" "$load" connrate "$P_MECHO" "$secs")
echo "connections/s, sequential (connect, 1-byte echo, close): direct $d, through two meshd $m"
echo "RSS idle (after the runs above): client meshd $(rss $CLIENT) KiB, server meshd $(rss $SERVER) KiB"
timeout 120 "$PY" "$load" open-many "$P_MECHO" 1000 ready go >many.log 2>&1 &
MANY=$!
pids+=($MANY)
for _ in $(seq 1200); do [ -e ready ] && break; kill -0 $MANY 2>/dev/null || break; sleep 0.1; done
[ -e ready ] || { echo "could not open 1000 connections"; cat many.log client.log server.log; exit 1; }
open=$(curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics" | awk '/^tcp_open_connections/ { s += $2 } END { print s }')
echo "RSS with 1,000 open proxied connections ($open sockets open in the client meshd):" \
  "client meshd $(rss $CLIENT) KiB, server meshd $(rss $SERVER) KiB"
touch go
wait $MANY || true
