#!/usr/bin/env bash
# Integration: two meshd processes carry opaque TCP over mTLS (curl, binary echo, identities, reloads, limits, admin, shutdown).
set -euo pipefail
meshd=$(realpath "$1")  # meson may pass paths relative to the build dir
pki=$(realpath "$2")
load=$(realpath "$3")
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"

fail() {
  echo "FAIL: $*"
  for f in *.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
  exit 1
}
ok() { echo "ok: $*"; }
# The Debian interpreter: a pyenv shim on PATH costs seconds a call.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
py() { timeout 60 "$PY" "$load" "$@"; }
WEB=web.default.serviceaccount.identity.linkerd.cluster.local
CLIENT=client.default.serviceaccount.identity.linkerd.cluster.local

"$pki" "$tmp" client default client server default web spare default spare >/dev/null

read -r P_H1 P_H2 P_E P_IN P_SADM P_CADM P_OUT P_WEB P_ECHO P_WRONG P_UNKNOWN P_DENY P_SPARE P_LIM P_LADM P_FD P_FADM P_IN2 P_SADM2 \
  <<<"$(py free-ports 19)"

mkdir one two
echo backend-one >one/index.html
echo backend-two >two/index.html
(cd one && exec timeout 170 "$PY" -m http.server "$P_H1" --bind 127.0.0.1 >../http1.log 2>&1) &
pids+=($!)
(cd two && exec timeout 170 "$PY" -m http.server "$P_H2" --bind 127.0.0.1 >../http2.log 2>&1) &
pids+=($!)
: >echo.conns
timeout 170 "$PY" "$load" echo-server "$P_E" echo.conns >echo.log 2>&1 &
pids+=($!)

endpoints() { # web-port: writes eps.json atomically
  cat >eps.tmp <<EOF
{"services": {
  "web.default.svc.cluster.local:80": {"endpoints": [
    {"addr": "127.0.0.2:$P_IN", "identity": "$WEB", "port": $1}]},
  "echo.default.svc.cluster.local:7": {"endpoints": [
    {"addr": "127.0.0.2:$P_IN", "identity": "spiffe://cluster.local/ns/default/sa/web", "port": $P_E}]},
  "wrong.default.svc.cluster.local:7": {"endpoints": [
    {"addr": "127.0.0.2:$P_IN", "identity": "other.default.serviceaccount.identity.linkerd.cluster.local", "port": $P_E}]},
  "deny.default.svc.cluster.local:7": {"endpoints": [
    {"addr": "127.0.0.2:$P_IN", "identity": "$WEB", "port": $P_DENY}]}
}}
EOF
  mv eps.tmp eps.json
}
endpoints "$P_H1"

timeout 170 "$meshd" --identity-dir server --inbound-listen-addr "127.0.0.2:$P_IN" \
  --outbound-listen-addr "" --admin-listen-addr "127.0.0.2:$P_SADM" \
  --inbound-ports "$P_H1,$P_H2,$P_E,$P_SADM" --log-level debug >server.log 2>&1 &
SERVER=$!
pids+=($SERVER)
timeout 170 "$meshd" --identity-dir client --outbound-listen-addr "127.0.0.1:$P_OUT" \
  --inbound-listen-addr "" --admin-listen-addr "127.0.0.1:$P_CADM" --endpoints eps.json \
  --outbound-port-map "127.0.0.1:$P_WEB=web.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_ECHO=echo.default.svc.cluster.local:7" \
  --outbound-port-map "127.0.0.1:$P_WRONG=wrong.default.svc.cluster.local:7" \
  --outbound-port-map "127.0.0.1:$P_UNKNOWN=unknown.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_DENY=deny.default.svc.cluster.local:7" \
  --opaque-ports 7 --shutdown-grace 5s --log-level debug >client.log 2>&1 &
CLIENT_PID=$!
pids+=($CLIENT_PID)

# meshd runs under timeout(1): its own pid is timeout's child.
child() { ps -o pid= --ppid "$1" | tr -d ' ' | head -n 1; }
wait_http() { # url: until it answers 200
  for _ in $(seq 100); do curl -fsS -m 1 "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
  fail "$1 does not answer"
}
wait_http "http://127.0.0.1:$P_CADM/ready"
wait_http "http://127.0.0.2:$P_SADM/ready"
wait_http "http://127.0.0.1:$P_H1/"
wait_http "http://127.0.0.1:$P_H2/"
for _ in $(seq 100); do py check "$P_E" 1 >/dev/null 2>&1 && break; sleep 0.05; done
CLIENT_MESHD=$(child "$CLIENT_PID")
SERVER_MESHD=$(child "$SERVER")
[ -n "$CLIENT_MESHD" ] && [ -n "$SERVER_MESHD" ] || fail "cannot find the meshd processes"
: >echo.conns

# Fetched whole before grep: grep -q quitting early would fail curl under pipefail.
cmetrics() { curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics" >m.tmp && cat m.tmp; }
smetrics() { curl -fsS -m 5 "http://127.0.0.2:$P_SADM/metrics" >m.tmp && cat m.tmp; }
chas() { curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics" >m.tmp && grep -q "$1" m.tmp; }
shas() { curl -fsS -m 5 "http://127.0.0.2:$P_SADM/metrics" >m.tmp && grep -q "$1" m.tmp; }
conns() { wc -l <echo.conns; }

# ---- admin ------------------------------------------------------------------
[ "$(curl -fsS -m 2 "http://127.0.0.1:$P_CADM/live")" = live ] || fail "/live"
[ "$(curl -fsS -m 2 "http://127.0.0.1:$P_CADM/ready")" = ready ] || fail "/ready"
curl -fsS -m 2 "http://127.0.0.1:$P_CADM/env.json" >env.json || fail "/env.json"
"$PY" - "$P_OUT" <<'EOF' || fail "/env.json content: $(cat env.json)"
import json, sys
e = json.load(open("env.json"))
assert e["MESH_PROXY_OUTBOUND_LISTEN_ADDR"] == "127.0.0.1:" + sys.argv[1], e
assert e["identity"] == "client.default.serviceaccount.identity.linkerd.cluster.local", e
assert e["ready"] is True and e["MESH_PROXY_ENDPOINTS"] == "eps.json", e
assert len(e["MESH_PROXY_OUTBOUND_PORT_MAP"]) == 5, e
# Paths and the public certificates only, never key material.
assert e["identity_chain_pem"].startswith("-----BEGIN CERTIFICATE-----"), e
assert "PRIVATE" not in json.dumps(e), e
EOF
code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$P_CADM/shutdown")
[ "$code" = 405 ] || fail "GET /shutdown answered $code, not 405"
ok "admin: /live, /ready, /env.json (the certificates, no key), GET /shutdown refused"

# ---- the happy path -------------------------------------------------------------
[ "$(curl -fsS -m 5 "http://127.0.0.1:$P_WEB/")" = backend-one ] || fail "curl through the mesh"
ok "curl -> outbound port map -> mTLS -> inbound -> http.server"
py check "$P_ECHO" 1048576 >/dev/null || fail "1 MiB binary echo with half-close"
py check "$P_ECHO" 1 >/dev/null || fail "1-byte echo"
ok "binary echo of 1 MiB and of 1 byte, half-closed, byte-exact"

cmetrics >c.prom
smetrics >s.prom
grep -q "^tcp_open_total{direction=\"outbound\",peer=\"dst\",tls=\"true\",client_id=\"\",server_id=\"$WEB\",target_addr=\"127.0.0.2:$P_IN\"} [1-9]" c.prom ||
  fail "client metrics lack the mTLS dst series: $(grep tcp_open_total c.prom)"
grep -q "^tcp_open_total{direction=\"inbound\",peer=\"src\",tls=\"true\",client_id=\"$CLIENT\",server_id=\"\",target_addr=\"127.0.0.1:$P_E\"} [1-9]" s.prom ||
  fail "server metrics lack the client identity: $(grep tcp_open_total s.prom)"
grep -q "^tcp_read_bytes_total{direction=\"inbound\",peer=\"dst\",.*target_addr=\"127.0.0.1:$P_E\"} 104857[6-9]" s.prom ||
  fail "server read bytes: $(grep tcp_read_bytes s.prom)"
grep -q '^identity_cert_expiration_timestamp_seconds [1-9]' c.prom || fail "no cert expiry gauge"
grep -q '^process_resident_memory_bytes [1-9]' c.prom || fail "no process metrics"
# Lint clean but for the abbreviated unit in Linkerd's own name.
for f in c.prom s.prom; do
  rc=0
  promtool check metrics <$f >promtool.log 2>&1 || rc=$?
  [ $rc -eq 0 ] || [ $rc -eq 3 ] || fail "promtool rejects $f: $(cat promtool.log)"
  others=$(grep -v '^response_latency_ms metric names should not contain abbreviated units$' promtool.log || true)
  [ -z "$others" ] || fail "promtool on $f: $others"
done
ok "metrics: tls=\"true\" with client_id / server_id, byte counts, cert expiry, process"

# ---- refusals --------------------------------------------------------------------
before=$(conns)
if py check "$P_WRONG" 10 >/dev/null 2>&1; then fail "a server with the wrong identity was accepted"; fi
sleep 0.3
[ "$(conns)" = "$before" ] || fail "bytes reached the backend despite the identity mismatch"
chas '^outbound_tcp_errors_total{error="tls_identity",target_addr="wrong.default.svc.cluster.local:7"} 1' ||
  fail "identity mismatch not counted: $(cmetrics | grep errors_total)"
ok "wrong expected identity: connection closed, counted, nothing reached the backend"

if (echo hi; sleep 1) | timeout 10 openssl s_client -connect "127.0.0.2:$P_IN" \
  -CAfile server/ca.crt -verify_return_error >nocert.out 2>&1 && grep -q '^hi' nocert.out; then
  fail "inbound accepted a client without a certificate"
fi
sleep 0.2
[ "$(conns)" = "$before" ] || fail "an unauthenticated client reached the backend"
shas '^inbound_tcp_errors_total{error="tls_' || fail "no-certificate client not counted: $(smetrics | grep errors_total)"
ok "openssl s_client without a certificate refused by inbound"

# A certificate from the same CA but the wrong use (the client proxy's, talking straight to
# inbound, with a valid header) is accepted: the header is the protocol, not a secret.
json="{\"port\":$P_E}"
printf "\\x00\\x$(printf %02x ${#json})%s" "$json" >hdr.bin
awk '/BEGIN/ { n++ } n == 2' client/leaf.crt >client/issuer.pem
(cat hdr.bin; echo direct; sleep 1) | timeout 10 openssl s_client -quiet -no_ign_eof -connect "127.0.0.2:$P_IN" \
  -cert client/leaf.crt -cert_chain client/issuer.pem -key client/key.pem -CAfile client/ca.crt -alpn transport.l5d.io/v1 \
  >direct.out 2>direct.err || true
grep -q '^direct' direct.out || fail "openssl s_client with a certificate and a transport header: $(cat direct.err)"
ok "openssl s_client with the client certificate and a transport header reaches the backend"

if py check "$P_UNKNOWN" 10 >/dev/null 2>&1; then fail "unknown authority proxied"; fi
chas '^outbound_tcp_errors_total{error="unknown_destination",target_addr="unknown.default.svc.cluster.local:80"} 1' ||
  fail "unknown destination not counted"
ok "port map to an authority not in the endpoints file: closed and counted"

if py check "$P_DENY" 10 >/dev/null 2>&1; then fail "a port outside --inbound-ports was reached"; fi
shas "^inbound_tcp_errors_total{error=\"port_forbidden\",target_addr=\"127.0.0.1:$P_DENY\"} 1" ||
  fail "forbidden port not counted: $(smetrics | grep errors_total)"
ok "--inbound-ports: a port outside the allowlist is refused"

# A peer naming the proxy's own admin port must not reach it (POST /shutdown
# trusts loopback), even though the server's --inbound-ports lists that port.
json="{\"port\":$P_SADM}"
printf "\\x00\\x$(printf %02x ${#json})%s" "$json" >hdr-admin.bin
(cat hdr-admin.bin; printf 'POST /shutdown HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n'; sleep 1) |
  timeout 10 openssl s_client -quiet -no_ign_eof -connect "127.0.0.2:$P_IN" -cert client/leaf.crt \
    -cert_chain client/issuer.pem -key client/key.pem -CAfile client/ca.crt -alpn transport.l5d.io/v1 \
    >admin.out 2>admin.err || true
if grep -q shutdown admin.out; then fail "a peer reached the proxy's admin port through inbound"; fi
shas "^inbound_tcp_errors_total{error=\"port_forbidden\",target_addr=\"127.0.0.1:$P_SADM\"} 1" ||
  fail "own-port attempt not counted: $(smetrics | grep errors_total)"
[ "$(curl -fsS -m 2 "http://127.0.0.2:$P_SADM/live")" = live ] || fail "the server proxy is gone"
ok "the proxy's own ports are refused as inbound targets, whatever --inbound-ports says"

# ---- endpoints swap with a live connection -----------------------------------------------
timeout 60 "$PY" "$load" hold "$P_ECHO" go1 hold1.out >hold1.log 2>&1 &
HOLD=$!
for _ in $(seq 100); do [ -s hold1.out.1 ] && break; sleep 0.05; done
[ "$(cat hold1.out.1 2>/dev/null)" = first ] || fail "held connection did not start"
sleep 1.1 # a new mtime second
endpoints "$P_H2"
for i in $(seq 60); do
  [ "$(curl -fsS -m 2 "http://127.0.0.1:$P_WEB/" 2>/dev/null)" = backend-two ] && break
  [ "$i" = 60 ] && fail "the endpoints file change did not move new connections"
  sleep 0.1
done
touch go1
wait "$HOLD" || fail "held connection failed"
[ "$(cat hold1.out)" = "first second eof" ] || fail "held connection across the swap: $(cat hold1.out)"
ok "endpoints file change (mtime poll): new connections to backend two, the open one kept working"

cp eps.json good.json
echo '{"services": {"web.default.svc.cluster.local:80": {"endpoints": [{"addr": "nonsense"}]}}}' >eps.json
kill -HUP "$CLIENT_MESHD"
sleep 1.5
grep -q 'endpoints file rejected' client.log || fail "a bad endpoints file was not reported"
[ "$(curl -fsS -m 2 "http://127.0.0.1:$P_WEB/")" = backend-two ] || fail "a bad endpoints file dropped the old config"
ok "bad endpoints file (SIGHUP and poll): logged, previous endpoints kept"
endpoints "$P_H1"
kill -HUP "$CLIENT_MESHD"
for i in $(seq 30); do
  [ "$(curl -fsS -m 2 "http://127.0.0.1:$P_WEB/" 2>/dev/null)" = backend-one ] && break
  [ "$i" = 30 ] && fail "SIGHUP did not reload"
  sleep 0.1
done
ok "SIGHUP reloads the endpoints file"

# ---- concurrency and fd hygiene ------------------------------------------------------------
fds_before=$(ls /proc/$CLIENT_MESHD/fd | wc -l)
sfds_before=$(ls /proc/$SERVER_MESHD/fd | wc -l)
py concurrent "$P_ECHO" 200 16384 >conc.out 2>&1 || fail "200 concurrent connections: $(tail -3 conc.out)"
ok "200 concurrent connections, 16 KiB each, all byte-exact"
for i in $(seq 50); do
  open=$(cmetrics | awk '/^tcp_open_connections/ { s += $2 } END { print s + 0 }')
  [ "$open" = 0 ] && break
  [ "$i" = 50 ] && fail "$open connections still open on the client after the load"
  sleep 0.1
done
for i in $(seq 50); do
  cf=$(ls /proc/$CLIENT_MESHD/fd | wc -l)
  sf=$(ls /proc/$SERVER_MESHD/fd | wc -l)
  [ "$cf" -le "$fds_before" ] && [ "$sf" -le "$sfds_before" ] && break
  [ "$i" = 50 ] && fail "fds leaked: client $fds_before -> $cf, server $sfds_before -> $sf"
  sleep 0.1
done
ok "every connection closed afterwards, no file descriptors leaked"

# ---- readiness before credentials ----------------------------------------------------------------
mkdir late
timeout 60 "$meshd" --identity-dir late --outbound-listen-addr "" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_SPARE" >late.log 2>&1 &
LATE=$!
pids+=($LATE)
wait_http "http://127.0.0.1:$P_SPARE/live"
code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$P_SPARE/ready")
[ "$code" = 503 ] || fail "/ready without credentials answered $code"
cp spare/ca.crt spare/key.pem late/ && cp spare/leaf.crt late/
wait_http "http://127.0.0.1:$P_SPARE/ready"
kill -TERM "$LATE"
timeout 10 tail --pid="$LATE" -f /dev/null || fail "SIGTERM did not stop meshd"
ok "/ready 503 until the identity directory is filled, then 200; SIGTERM exits"

# ---- the connection limit -------------------------------------------------------------------
timeout 60 "$meshd" --identity-dir client --outbound-listen-addr "" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_LADM" --endpoints eps.json --max-connections 2 \
  --opaque-ports 7 --outbound-port-map "127.0.0.1:$P_LIM=echo.default.svc.cluster.local:7" >limited.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_LADM/ready"
timeout 60 "$PY" "$load" hold "$P_LIM" go3 hold3.out >hold3.log 2>&1 &
H3=$!
timeout 60 "$PY" "$load" hold "$P_LIM" go4 hold4.out >hold4.log 2>&1 &
H4=$!
for _ in $(seq 100); do [ -s hold3.out.1 ] && [ -s hold4.out.1 ] && break; sleep 0.05; done
[ -s hold3.out.1 ] && [ -s hold4.out.1 ] || fail "two connections under a limit of 2"
timeout 60 "$PY" "$load" check "$P_LIM" 100 >third.out 2>&1 &
THIRD=$!
sleep 1
kill -0 "$THIRD" 2>/dev/null || fail "a third connection was served at --max-connections 2: $(cat third.out)"
grep -q 'at the limit, accepting paused' limited.log || fail "no log line for the paused accept"
touch go3
wait "$H3" || fail "held connection under the limit"
wait "$THIRD" || fail "the third connection failed once a slot was free: $(cat third.out)"
touch go4
wait "$H4" || fail "second held connection"
ok "--max-connections 2: a third connection waits in the backlog until one closes, then is served"

# ---- out of file descriptors: accept pauses instead of spinning ------------------------------
(ulimit -n 32 && exec timeout 60 "$meshd" --identity-dir client --outbound-listen-addr "" \
  --inbound-listen-addr "" --admin-listen-addr "127.0.0.1:$P_FADM" --endpoints eps.json \
  --opaque-ports 7 --outbound-port-map "127.0.0.1:$P_FD=echo.default.svc.cluster.local:7") >fdlimit.log 2>&1 &
FDL=$!
pids+=($FDL)
wait_http "http://127.0.0.1:$P_FADM/ready"
FDL_MESHD=$(child "$FDL")
ticks() { awk '{ print $14 + $15 }' "/proc/$FDL_MESHD/stat"; }
t0=$(ticks)
timeout 30 "$PY" - "$P_FD" <<'EOF' || fail "could not hold 40 connections against the fd-limited meshd"
import socket, sys, time
socks = [socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) for _ in range(40)]
for s in socks:
    s.sendall(b"x")
time.sleep(2)
for s in socks:
    s.close()
EOF
t1=$(ticks)
grep -q 'Too many open files; pausing for 250 ms' fdlimit.log || fail "no EMFILE pause: $(tail -5 fdlimit.log)"
[ $((t1 - t0)) -lt 60 ] || fail "meshd used $((t1 - t0)) ticks of CPU in 2 s at EMFILE: spinning"
for i in $(seq 50); do
  py check "$P_FD" 1000 >/dev/null 2>&1 && break
  [ "$i" = 50 ] && fail "accepting did not resume after EMFILE"
  sleep 0.1
done
ok "EMFILE: accepting paused (not spun on: $((t1 - t0)) CPU ticks in 2 s) and resumed once fds were free"

# ---- header and idle timeouts ------------------------------------------------------------------
timeout 60 "$meshd" --identity-dir server --inbound-listen-addr "127.0.0.2:$P_IN2" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.2:$P_SADM2" --header-timeout 500ms --idle-timeout 2s \
  --shutdown-grace 500ms >short.log 2>&1 &
SHORT=$!
pids+=($SHORT)
wait_http "http://127.0.0.2:$P_SADM2/ready"
ms() { date +%s%3N; }
t0=$(ms)
# Input from a process substitution: the time is s_client's, not its feeder's.
timeout 10 openssl s_client -quiet -connect "127.0.0.2:$P_IN2" -cert client/leaf.crt \
  -cert_chain client/issuer.pem -key client/key.pem -CAfile client/ca.crt \
  < <(sleep 5) >/dev/null 2>&1 || true
took=$(($(ms) - t0))
[ "$took" -lt 3000 ] || fail "no transport header: still open after $took ms (--header-timeout 500ms)"
curl -fsS -m 5 "http://127.0.0.2:$P_SADM2/metrics" >short.prom
grep -q '^inbound_tcp_errors_total{error="header_timeout",' short.prom || fail "header timeout not counted"
t0=$(ms)
timeout 10 openssl s_client -quiet -connect "127.0.0.2:$P_IN2" -cert client/leaf.crt \
  -cert_chain client/issuer.pem -key client/key.pem -CAfile client/ca.crt \
  < <(cat hdr.bin; sleep 6) >/dev/null 2>&1 || true
took=$(($(ms) - t0))
[ "$took" -lt 5000 ] || fail "an idle connection was still open after $took ms (--idle-timeout 2s)"
curl -fsS -m 5 "http://127.0.0.2:$P_SADM2/metrics" >short.prom
grep -q "^tcp_close_total{direction=\"inbound\",peer=\"src\",tls=\"true\",client_id=\"$CLIENT\",server_id=\"\",target_addr=\"127.0.0.1:$P_E\",errno=\"\"} 1" short.prom ||
  fail "idle close not counted: $(grep tcp_close short.prom)"
ok "--header-timeout 500ms closes a silent client; --idle-timeout 2s closes an idle proxied connection"

# A connection that does not finish is closed when the grace period ends.
timeout 10 openssl s_client -quiet -connect "127.0.0.2:$P_IN2" -cert client/leaf.crt \
  -cert_chain client/issuer.pem -key client/key.pem -CAfile client/ca.crt \
  < <(cat hdr.bin; sleep 8) >/dev/null 2>&1 &
SC=$!
sleep 0.5
t0=$(ms)
[ "$(curl -fsS -m 2 -X POST "http://127.0.0.2:$P_SADM2/shutdown")" = shutdown ] || fail "POST /shutdown (short)"
wait "$SC" || true
took=$(($(ms) - t0))
[ "$took" -lt 1500 ] || fail "a connection outlived --shutdown-grace 500ms by $took ms"
timeout 5 tail --pid="$SHORT" -f /dev/null || fail "meshd did not exit after the grace period"
grep -q 'shutdown grace period over: closing 1 connections' short.log || fail "no grace log line"
ok "--shutdown-grace 500ms: a connection still open is closed when it ends, then exit ($took ms)"

# ---- graceful shutdown ---------------------------------------------------------------------------
timeout 60 "$PY" "$load" hold "$P_ECHO" go2 hold2.out >hold2.log 2>&1 &
HOLD=$!
for _ in $(seq 100); do [ -s hold2.out.1 ] && break; sleep 0.05; done
[ "$(cat hold2.out.1 2>/dev/null)" = first ] || fail "held connection did not start"
[ "$(curl -fsS -m 2 -X POST "http://127.0.0.1:$P_CADM/shutdown")" = shutdown ] || fail "POST /shutdown"
sleep 0.3
if curl -fsS -m 2 "http://127.0.0.1:$P_WEB/" >/dev/null 2>&1; then fail "new connections accepted while draining"; fi
kill -0 "$CLIENT_PID" 2>/dev/null || fail "meshd exited before its open connection finished"
touch go2
wait "$HOLD" || fail "held connection failed during the drain"
[ "$(cat hold2.out)" = "first second eof" ] || fail "held connection during the drain: $(cat hold2.out)"
timeout 5 tail --pid="$CLIENT_PID" -f /dev/null || fail "meshd did not exit after draining"
ok "POST /shutdown: listeners closed, the open connection finished, then exit"
grep -q 'shutdown complete' client.log || fail "no shutdown log line"
# In a sanitizer build, any report in a proxy's log is a failure.
if grep -l -E 'AddressSanitizer|LeakSanitizer|runtime error:' ./*.log 2>/dev/null; then fail "sanitizer report"; fi
echo "all meshd TCP tests passed"
