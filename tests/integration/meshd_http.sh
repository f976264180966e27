#!/usr/bin/env bash
# Integration: two meshd proxies carry HTTP/1.1, HTTP/2 and gRPC over one mTLS HTTP/2 connection (curl, nghttp, h2load, grpcio); errors and limits.
set -euo pipefail
meshd=$(realpath "$1")  # meson may pass paths relative to the build dir
pki=$(realpath "$2")
load=$(realpath "$3")
peers=$(realpath "$4")
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"
peer() { timeout 60 "$PY" "$peers" "$@"; }
WEB=web.default.serviceaccount.identity.linkerd.cluster.local
CLIENT=client.default.serviceaccount.identity.linkerd.cluster.local

"$pki" "$tmp" client default client server default web >/dev/null

read -r P_APP P_GRPC P_H2APP P_IN P_SADM P_CADM P_OUT P_WEB P_GW P_DEAD P_UNK P_H2 P_CLOSED \
  <<<"$(timeout 20 "$PY" "$load" free-ports 13)"

timeout 170 "$PY" "$peers" backend "$P_APP" web-v1 >app.log 2>&1 &
pids+=($!)
timeout 170 "$PY" "$peers" grpc-server "$P_GRPC" >grpc.log 2>&1 &
pids+=($!)
mkdir h2root && echo h2-backend >h2root/index.html
timeout 170 nghttpd --no-tls -d h2root "$P_H2APP" >h2app.log 2>&1 &
pids+=($!)

cat >eps.json <<EOF
{"services": {
  "web.default.svc.cluster.local:80": {"endpoints": [
    {"addr": "127.0.0.2:$P_IN", "identity": "$WEB", "port": $P_APP}]},
  "grpc.default.svc.cluster.local:8080": {"endpoints": [
    {"addr": "127.0.0.2:$P_IN", "identity": "$WEB", "port": $P_GRPC}]},
  "h2.default.svc.cluster.local:80": {"endpoints": [
    {"addr": "127.0.0.2:$P_IN", "identity": "$WEB", "port": $P_H2APP}]},
  "dead.default.svc.cluster.local:80": {"endpoints": [
    {"addr": "127.0.0.2:$P_IN", "identity": "$WEB", "port": $P_CLOSED}]},
  "plain.default.svc.cluster.local:80": {"endpoints": [{"addr": "127.0.0.1:$P_APP"}]}
}}
EOF

timeout 170 "$meshd" --identity-dir server --inbound-listen-addr "127.0.0.2:$P_IN" \
  --outbound-listen-addr "" --admin-listen-addr "127.0.0.2:$P_SADM" \
  --inbound-ports "$P_APP,$P_GRPC,$P_H2APP,$P_CLOSED" --log-level debug >server.log 2>&1 &
pids+=($!)
timeout 170 "$meshd" --identity-dir client --outbound-listen-addr "127.0.0.1:$P_OUT" \
  --inbound-listen-addr "" --admin-listen-addr "127.0.0.1:$P_CADM" --endpoints eps.json \
  --outbound-port-map "127.0.0.1:$P_WEB=web.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_GW=grpc.default.svc.cluster.local:8080" \
  --outbound-port-map "127.0.0.1:$P_DEAD=dead.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_UNK=unknown.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_H2=h2.default.svc.cluster.local:80" \
  --response-timeout 2s --header-timeout 2s --max-header-bytes 16384 --max-header-fields 50 \
  --log-level debug >client.log 2>&1 &
pids+=($!)

wait_http "http://127.0.0.1:$P_CADM/ready"
wait_http "http://127.0.0.2:$P_SADM/ready"
wait_http "http://127.0.0.1:$P_APP/"
for _ in $(seq 100); do nghttp -t 1 "http://127.0.0.1:$P_H2APP/" >/dev/null 2>&1 && break; sleep 0.05; done

cmetrics() { curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics" >m.tmp && cat m.tmp; }
smetrics() { curl -fsS -m 5 "http://127.0.0.2:$P_SADM/metrics" >m.tmp && cat m.tmp; }
code() { curl -s -o body.tmp -D head.tmp -w '%{http_code}' -m 10 "$@"; }
perr() { grep -i '^l5d-proxy-error:' head.tmp | tr -d '\r' | cut -d' ' -f2-; }

# ---- HTTP/1.1 through the mesh ------------------------------------------------------
[ "$(curl -fsS -m 5 "http://127.0.0.1:$P_WEB/")" = web-v1 ] || fail "GET through the mesh"
curl -fsS -m 5 "http://127.0.0.1:$P_WEB/headers" -H 'l5d-client-id: evil.default.serviceaccount.identity.linkerd.cluster.local' >h.json
"$PY" - "$CLIENT" <<'EOF' || fail "headers at the app: $(cat h.json)"
import json, sys
h = json.load(open("h.json"))
assert h["l5d-client-id"] == sys.argv[1], h      # the verified identity, never the spoofed one
assert "l5d-orig-proto" not in h, h               # restored to HTTP/1.1 before the app
assert h["host"].startswith("127.0.0.1:"), h
EOF
ok "HTTP/1.1 GET; l5d-client-id from the verified peer (a spoofed one dropped); orig-proto restored"

head -c 3000000 /dev/urandom >up.bin
curl -fsS -m 20 -H 'Transfer-Encoding: chunked' --data-binary @up.bin "http://127.0.0.1:$P_WEB/echo" >down.bin
cmp -s up.bin down.bin || fail "a 3 MB chunked upload did not come back identical"
curl -fsS -m 20 --data-binary @up.bin "http://127.0.0.1:$P_WEB/echo" >down.bin
cmp -s up.bin down.bin || fail "a 3 MB content-length upload did not come back identical"
ok "3 MB bodies both ways, chunked and with a length"

[ "$(curl -fsS -m 5 -I "http://127.0.0.1:$P_WEB/" | tr -d '\r' | grep -ci '^content-length: 7')" = 1 ] ||
  fail "HEAD lost its content-length"
c=$(code -H 'Expect: 100-continue' --data-binary @up.bin "http://127.0.0.1:$P_WEB/echo")
[ "$c" = 200 ] && cmp -s up.bin body.tmp || fail "Expect: 100-continue upload: $c"
[ "$(code "http://127.0.0.1:$P_WEB/status/503")" = 503 ] || fail "an upstream 503 is not passed on"
[ -z "$(perr)" ] || fail "an upstream's own 503 must not carry l5d-proxy-error"
ok "HEAD, Expect: 100-continue, upstream statuses passed on"

# The application closing its connection closes the caller's too (l5d-proxy-connection).
curl -sv -m 5 "http://127.0.0.1:$P_WEB/close" "http://127.0.0.1:$P_WEB/" >pc.out 2>&1 || fail "l5d-proxy-connection: $(cat pc.out)"
grep -qi '^< connection: close' pc.out || fail "the caller's response lacks connection: close: $(grep '^<' pc.out)"
grep -qi 'l5d-proxy-connection' pc.out && fail "l5d-proxy-connection leaked to the caller"
[ "$(grep -c 'Connected to' pc.out)" = 2 ] || fail "the caller's connection was reused after the application closed"
ok "an application's connection: close reaches the caller through the mesh (l5d-proxy-connection), and is not leaked"

peer pipeline "$P_WEB" 20 >pipe.out || fail "pipelining: $(cat pipe.out)"
ok "$(cat pipe.out)"

peer upgrade "$P_WEB" web.default.svc.cluster.local >ws.out 2>&1 || fail "upgrade: $(cat ws.out)"
ok "$(cat ws.out)"

# Keep-alive from curl and many clients: one mTLS connection between the proxies.
inbound_opened() { smetrics | grep '^tcp_open_total{direction="inbound",peer="src"' | awk '{s+=$2} END {print s+0}'; }
curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$P_WEB/" || fail "warm-up request"
before=$(inbound_opened)
for i in $(seq 30); do curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$P_WEB/?n=$i" || fail "request $i"; done
opened=$(( $(inbound_opened) - before ))
[ "$opened" = 0 ] || fail "the proxies opened $opened more connections for 30 HTTP/1 requests (want 0: multiplexed)"
ok "HTTP/1 requests from 30 connections share one mTLS HTTP/2 connection between the proxies"

# ---- explicit mode: the request names its destination --------------------------------
[ "$(curl -fsS -m 5 -x "http://127.0.0.1:$P_OUT" http://web.default.svc.cluster.local/)" = web-v1 ] ||
  fail "absolute-form request to the outbound listener"
[ "$(curl -fsS -m 5 -H 'Host: web.default.svc.cluster.local' "http://127.0.0.1:$P_OUT/")" = web-v1 ] ||
  fail "Host-routed request to the outbound listener"
[ "$(curl -fsS -m 5 -H 'l5d-dst-override: plain.default.svc.cluster.local:80' "http://127.0.0.1:$P_OUT/")" = web-v1 ] ||
  fail "l5d-dst-override to an unmeshed endpoint"
ok "explicit mode: absolute-form, Host and l5d-dst-override"

# ---- HTTP/2 and gRPC ---------------------------------------------------------------
h2=$(nghttp -t 5 -H ":authority: h2.default.svc.cluster.local" "http://127.0.0.1:$P_OUT/index.html") ||
  fail "nghttp (h2c prior knowledge) through the mesh"
[ "$h2" = h2-backend ] || fail "nghttp got '$h2'"
[ "$(curl -fsS -m 5 --http2-prior-knowledge -H 'Host: h2.default.svc.cluster.local' "http://127.0.0.1:$P_OUT/index.html")" = h2-backend ] ||
  fail "curl --http2-prior-knowledge through the mesh"
ok "HTTP/2 prior knowledge end to end (nghttp, curl) to an HTTP/2 app"
peer grpc-client "127.0.0.1:$P_GW" grpc.default.svc.cluster.local:8080 >grpc.out 2>&1 || fail "grpc: $(cat grpc.out)"
ok "$(cat grpc.out)"

timeout 60 h2load -n 2000 -c 20 -m 10 "http://127.0.0.1:$P_H2/index.html" >h2load.out 2>&1 ||
  fail "h2load: $(cat h2load.out)"
grep -q '2000 succeeded, 0 failed, 0 errored' h2load.out || fail "h2load: $(grep requests: h2load.out)"
timeout 60 h2load --h1 -n 2000 -c 20 "http://127.0.0.1:$P_WEB/" >h2load1.out 2>&1 ||
  fail "h2load --h1: $(cat h2load1.out)"
grep -q '2000 succeeded, 0 failed, 0 errored' h2load1.out || fail "h2load --h1: $(grep requests: h2load1.out)"
ok "h2load: 2000 HTTP/2 requests (20 connections x 10 streams, to nghttpd) and 2000 HTTP/1.1, none failed"

# ---- synthesized errors ------------------------------------------------------------------
c=$(code "http://127.0.0.1:$P_DEAD/")
[ "$c" = 502 ] && perr | grep -q connect || fail "refused upstream: $c $(perr)"
c=$(code "http://127.0.0.1:$P_UNK/")
[ "$c" = 503 ] && perr | grep -q unknown_destination || fail "unknown destination: $c $(perr)"
c=$(code -H 'Host: nowhere.default.svc.cluster.local' "http://127.0.0.1:$P_OUT/")
[ "$c" = 503 ] || fail "explicit mode, unknown authority: $c"
c=$(code "http://127.0.0.1:$P_WEB/slow/4000")
[ "$c" = 504 ] && perr | grep -q response_timeout || fail "slow upstream: $c $(perr)"
ok "502 (refused upstream), 503 (unknown destination), 504 (response timeout), with l5d-proxy-error"

[ "$(peer raw "$P_WEB" 'GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n')" = "HTTP/1.1 400 Bad Request" ] ||
  fail "malformed header line"
[ "$(peer big-head "$P_WEB" 20000 10)" = "HTTP/1.1 431 Request Header Fields Too Large" ] ||
  fail "20 KB of headers over a 16 KiB limit"
[ "$(peer big-head "$P_WEB" 600 60)" = "HTTP/1.1 431 Request Header Fields Too Large" ] ||
  fail "60 fields over a limit of 50"
[ "$(peer slow-head "$P_WEB" 2)" = "HTTP/1.1 408 Request Timeout" ] || fail "a stalled head"
[ "$(curl -fsS -m 5 "http://127.0.0.1:$P_WEB/")" = web-v1 ] || fail "the proxy after bad input"
ok "400 malformed, 431 head too large and too many fields, 408 stalled head; serving on"

# HTTP/2 garbage after a valid preface closes only that connection.
printf 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x99\x00\x00\x00\x00\x00junk' |
  timeout 5 "$PY" -c "import socket,sys; s=socket.create_connection(('127.0.0.1',$P_WEB)); s.sendall(sys.stdin.buffer.read()); s.settimeout(3); print(len(s.recv(4096)))" >/dev/null 2>&1 || true
[ "$(curl -fsS -m 5 --http2-prior-knowledge "http://127.0.0.1:$P_H2/index.html")" = h2-backend ] ||
  fail "after an HTTP/2 protocol error"
ok "an HTTP/2 protocol error closes that connection only"

# ---- metrics ------------------------------------------------------------------------------
cmetrics >client.prom
smetrics >server.prom
grep -q "^request_total{direction=\"outbound\",authority=\"127.0.0.1:$P_WEB\".*tls=\"true\".*server_id=\"$WEB\"" client.prom ||
  fail "outbound request_total: $(grep ^request_total client.prom | head -3)"
grep -q 'response_total{direction="outbound".*classification="failure",status_code="504".*error="response_timeout"' client.prom ||
  fail "the 504 in response_total"
grep -q "^response_total{direction=\"inbound\".*client_id=\"$CLIENT\".*classification=\"success\",status_code=\"200\"" server.prom ||
  fail "inbound response_total: $(grep ^response_total server.prom | head -3)"
grep -q '^response_latency_ms_bucket{direction="outbound".*le="5"}' client.prom || fail "response_latency_ms"
# promtool lints clean but for the abbreviated unit in Linkerd's own name.
for f in client.prom server.prom; do
  rc=0
  promtool check metrics <$f >promtool.out 2>&1 || rc=$?
  [ $rc -eq 0 ] || [ $rc -eq 3 ] || fail "promtool check metrics ($f) exited $rc: $(cat promtool.out)"
  others=$(grep -v '^response_latency_ms metric names should not contain abbreviated units$' promtool.out || true)
  [ -z "$others" ] || fail "promtool ($f): $others"
done
ok "request_total, response_total, response_latency_ms with Linkerd's labels; promtool check metrics"

# ---- load shedding: past --max-in-flight, 503 at once -----------------------------------------------
read -r P_SHED P_SHEDADM <<<"$(timeout 20 "$PY" "$load" free-ports 2)"
timeout 60 "$meshd" --identity-dir client --outbound-listen-addr "" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_SHEDADM" --endpoints eps.json --max-in-flight 1 \
  --outbound-port-map "127.0.0.1:$P_SHED=web.default.svc.cluster.local:80" >shed.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_SHEDADM/ready"
curl -sS -m 10 -o /dev/null "http://127.0.0.1:$P_SHED/slow/1500" &
SLOWSHED=$!
sleep 0.5
t0=$(date +%s%N)
c=$(code "http://127.0.0.1:$P_SHED/")
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$c" = 503 ] && perr | grep -q load_shed || fail "over --max-in-flight: $c $(perr)"
[ "$ms" -lt 500 ] || fail "load shedding took $ms ms (want at once)"
wait $SLOWSHED || fail "the request in flight during shedding"
[ "$(curl -fsS -m 5 "http://127.0.0.1:$P_SHED/")" = web-v1 ] || fail "after the load went"
ok "load shedding: one request over --max-in-flight 1 got 503 load_shed in $ms ms; the one in flight finished"

# ---- graceful shutdown: in-flight requests finish, new connections are refused ----------------
curl -sS -m 10 -o slow.out -w '%{http_code}' "http://127.0.0.1:$P_WEB/slow/1500" >slow.code 2>&1 &
SLOW=$!
sleep 0.5
[ "$(curl -s -m 2 -X POST -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_CADM/shutdown")" = 200 ] ||
  fail "POST /shutdown"
sleep 0.2
if curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$P_WEB/" 2>/dev/null; then fail "a new connection accepted while draining"; fi
wait $SLOW || true
[ "$(cat slow.code)" = 200 ] && [ "$(cat slow.out)" = slow ] || fail "the in-flight request during shutdown: $(cat slow.code)"
for _ in $(seq 100); do curl -fsS -m 1 -o /dev/null "http://127.0.0.1:$P_CADM/live" 2>/dev/null || break; sleep 0.05; done
curl -fsS -m 1 -o /dev/null "http://127.0.0.1:$P_CADM/live" 2>/dev/null && fail "meshd did not exit after draining"
ok "graceful shutdown: the in-flight request finished (200), new connections refused, meshd exited"
