#!/usr/bin/env bash
# Integration: the server's meshd records route metrics (direction="inbound") by the profile of the destination l5d-dst-canonical names, from mesh-destination or --profiles, classified by its response classes, without its retries or timeouts and without waiting for it; forged and huge l5d-dst-canonical values; the inbound cache outlives the outbound idle timeout.
set -euo pipefail
meshd=$(realpath "$1") # meson may pass paths relative to the build dir
dest=$(realpath "$2")
pki=$(realpath "$3")
load=$(realpath "$4")
peers=$(realpath "$5")
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)
ok() { echo "ok (at $(($(now_ms) - T0)) ms): $*"; }
WEB_ID=web.default.serviceaccount.identity.linkerd.cluster.local
WEB=web.default.svc.cluster.local:80
API=api.default.svc.cluster.local:80

"$pki" "$tmp" client default client web1 default web >/dev/null
read -r P_APP P_IN P_DST P_DADM P_SADM P_CADM P_WEB P_API <<<"$(timeout 20 "$PY" "$load" free-ports 8)"

timeout 60 "$PY" "$peers" backend "$P_APP" web-1 >app.log 2>&1 &
pids+=($!)

# ---- the store: web and api on one Workload with its own meshd; profiles for both ------------
mkdir store slocal clocal
for s in web api; do
  put "svc-$s.yaml" <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: $s, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, protocol: http}]
EOF
done
put web-1.yaml <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec: {serviceAccount: web, address: 127.0.0.2, proxyPort: $P_IN, ports: [{name: http, port: $P_APP}]}
EOF
# The server's view of web: a retryable route that calls 418 a failure, a route with a timeout.
put web-profile.yaml <<'EOF'
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web.default.svc.cluster.local, namespace: default}
spec:
  routes:
  - name: status
    condition: {method: GET, pathRegex: '/status/[0-9]+'}
    isRetryable: true
    responseClasses:
    - condition: {status: {min: 418, max: 418}}
      isFailure: true
  - name: slow
    condition: {method: GET, pathRegex: '/slow/[0-9]+'}
    timeout: 300ms
EOF
put api-profile.yaml <<'EOF'
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: api.default.svc.cluster.local, namespace: default}
spec:
  routes: [{name: from-control-plane, condition: {pathRegex: '/.*'}}]
EOF
# The server's own directory names api: it wins over the control plane's, and 4xx fail there.
cat >slocal/api.yaml <<'EOF'
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: api.default.svc.cluster.local, namespace: default}
spec:
  routes:
  - name: api-status
    condition: {method: GET, pathRegex: '/status/[0-9]+'}
    responseClasses:
    - condition: {status: {min: 400, max: 499}}
      isFailure: true
EOF
# The client's own view of web: one route, no timeout, no retries, Linkerd's classes. The
# server's metrics must follow the server's profile, not the client's.
cat >clocal/web.yaml <<'EOF'
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web.default.svc.cluster.local, namespace: default}
spec:
  routes: [{name: client-view, condition: {pathRegex: '/.*'}}]
EOF

timeout 60 "$dest" --store-dir store --listen "127.0.0.1:$P_DST" --admin "127.0.0.1:$P_DADM" \
  --debounce-ms 100 >dest.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_DADM/ready"
timeout 60 "$meshd" --identity-dir web1 --inbound-listen-addr "127.0.0.2:$P_IN" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.2:$P_SADM" --inbound-ports "$P_APP" --destination-addr "127.0.0.1:$P_DST" \
  --profiles slocal --log-level debug >server.log 2>&1 &
SERVER=$!
pids+=($!)
timeout 60 "$meshd" --identity-dir client --inbound-listen-addr "" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_CADM" --destination-addr "127.0.0.1:$P_DST" --profiles clocal \
  --outbound-port-map "127.0.0.1:$P_WEB=$WEB" --outbound-port-map "127.0.0.1:$P_API=$API" \
  --log-level debug >client.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.2:$P_SADM/ready"
wait_http "http://127.0.0.1:$P_CADM/ready"
wait_http "http://127.0.0.1:$P_APP/"

# msum ADMIN METRIC [LABEL=VALUE...]: the sum of METRIC's series with those labels.
msum() {
  curl -fsS -m 5 "http://$1/metrics" >metrics.out
  "$PY" - "$@" <<'EOF'
import re, sys
_, name, *want = sys.argv[1:]
want = dict(w.split("=", 1) for w in want)
total = 0.0
for line in open("metrics.out"):
    m = re.match(r'([a-z_]+)(?:\{(.*)\})? (\S+)$', line.strip())
    if not m or m.group(1) != name:
        continue
    labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
    if all(labels.get(k) == v for k, v in want.items()):
        total += float(m.group(3))
print(int(total))
EOF
}
S=127.0.0.2:$P_SADM
C=127.0.0.1:$P_CADM
expect() { # WHAT EXPECTED ADMIN METRIC [LABEL=VALUE...]
  local what=$1 want=$2 got
  shift 2
  got=$(msum "$@")
  [ "$got" = "$want" ] || fail "$what: $got, expected $want"
}
codes() { # PORT PATH...: one request each, the answers' status codes counted
  local port=$1 urls=()
  shift
  for p in "$@"; do urls+=(-o /dev/null "http://127.0.0.1:$port$p"); done
  timeout 30 curl -s -m 5 -w '%{http_code}\n' "${urls[@]}" | sort | uniq -c | tr -s ' \n' ' '
}

# ---- the header: the client's proxy sets it, replacing the application's ------------------
curl -fsS -m 5 -H 'l5d-dst-canonical: evil.default.svc.cluster.local:80' \
  "http://127.0.0.1:$P_WEB/headers" >h.json || fail "GET /headers"
"$PY" - "$WEB" <<'EOF' || fail "headers at the application: $(cat h.json)"
import json, sys
h = json.load(open("h.json"))
assert h["l5d-dst-canonical"] == sys.argv[1], h  # the client proxy's, not the application's
EOF
# That first request named web before the server had its profile: it went on at once, unlabelled.
expect "the first request's route metrics" 0 "$S" route_request_total direction=inbound
expect "the first request" 1 "$S" request_total direction=inbound
for _ in $(seq 100); do
  [ "$(msum "$S" destination_profile_updates_total)" -ge 1 ] && break
  sleep 0.05
done
ok "l5d-dst-canonical: $WEB at the application (the application's value replaced); the first request did not wait for the profile"

# ---- web's profile from mesh-destination: routes and classes as the server's profile says ----
paths=()
for _ in $(seq 6); do paths+=(/status/200); done
for _ in $(seq 3); do paths+=(/status/418); done
for _ in $(seq 2); do paths+=(/status/500); done
paths+=(/other /other)
got=$(codes "$P_WEB" "${paths[@]}")
[ "$got" = " 8 200 3 418 2 500 " ] || fail "web's answers: $got"
expect "status route, success" 6 "$S" route_response_total direction=inbound dst="$WEB" rt_route=status \
  classification=success
expect "status route, 418 a failure by its class" 3 "$S" route_response_total direction=inbound dst="$WEB" \
  rt_route=status classification=failure status_code=418
expect "status route, 500 a failure" 2 "$S" route_response_total direction=inbound dst="$WEB" \
  rt_route=status classification=failure status_code=500
expect "[DEFAULT]" 2 "$S" route_response_total direction=inbound dst="$WEB" rt_route="[DEFAULT]" classification=success
expect "route requests" 13 "$S" route_request_total direction=inbound dst="$WEB"
expect "route latency" 13 "$S" route_response_latency_ms_count direction=inbound dst="$WEB"
# The client's view is its own profile: one route, 418 a success there (and /headers before).
expect "the client's route" 12 "$C" route_response_total direction=outbound dst="$WEB" rt_route=client-view \
  classification=success
# The server neither retries (the route is retryable) nor counts attempts: the client's job.
expect "no inbound retries" 0 "$S" route_retryable_total
expect "no inbound attempts" 0 "$S" route_actual_request_total
expect "each request reached the application once" 14 "$S" request_total direction=inbound
ok "server-side routes of web (profile from mesh-destination): status 6 success, 5 failures (418 by its class, 500), [DEFAULT] 2; no retries"

# The slow route's 300 ms timeout is the client's to apply, not the server's.
t0=$(now_ms)
[ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_WEB/slow/600")" = 200 ] ||
  fail "a slow request through a route with a 300 ms timeout at the server"
took=$(($(now_ms) - t0))
[ "$took" -ge 600 ] || fail "the slow request took $took ms"
expect "slow route" 1 "$S" route_response_total direction=inbound dst="$WEB" rt_route=slow classification=success
ok "slow route: 200 after $took ms (the server does not apply the route's 300 ms timeout)"

# ---- api's profile from the server's --profiles directory: no wait, and it wins ----------------
[ "$(codes "$P_API" /status/200 /status/200 /status/404)" = " 2 200 1 404 " ] || fail "api's answers"
expect "api-status success" 2 "$S" route_response_total direction=inbound dst="$API" rt_route=api-status \
  classification=success
expect "api-status 404 a failure by its class" 1 "$S" route_response_total direction=inbound dst="$API" \
  rt_route=api-status classification=failure
expect "the control plane's api profile not used" 0 "$S" route_response_total direction=inbound dst="$API" \
  rt_route=from-control-plane
ok "server-side routes of api (--profiles, over the control plane's): api-status 2 success, 1 failure (404 by its class)"

# ---- forged and huge l5d-dst-canonical from a peer with a valid certificate -------------------
# Straight to the server's inbound port: mTLS, the transport header, HTTP/2 by hand (a
# libmesh client proxy always writes its own value).
raw() { # CANONICAL PATH: one request; prints the status and the length of the header the application saw
  timeout 10 "$PY" - "$P_IN" "$P_APP" "$WEB_ID" "$1" "$2" <<'EOF'
import json, socket, ssl, struct, sys
port, app, sid, canonical, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_cert_chain("client/leaf.crt", "client/key.pem")
ctx.load_verify_locations("client/ca.crt")
ctx.set_alpn_protocols(["transport.l5d.io/v1"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.2", port), timeout=5), server_hostname=sid)
hdr = json.dumps({"port": app, "proto": "h2"}).encode()
s.sendall(struct.pack(">H", len(hdr)) + hdr)
def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
def hpack_int(v):  # a 7-bit prefix integer (RFC 7541 5.1), for string lengths
    if v < 127:
        return bytes([v])
    out, v = [127], v - 127
    while v >= 128:
        out.append((v & 127) | 128)
        v >>= 7
    return bytes(out + [v])
def literal(name, value):  # without indexing, a new name, no Huffman
    return b"\x00" + hpack_int(len(name)) + name.encode() + hpack_int(len(value)) + value.encode()
block = b"".join(literal(n, v) for n, v in [(":method", "GET"), (":scheme", "http"), (":path", path),
    (":authority", "web.default.svc.cluster.local:80"), ("l5d-orig-proto", "HTTP/1.1"),
    ("l5d-dst-canonical", canonical)])
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") + frame(1, 5, 1, block))
buf, status, body = b"", None, b""
while True:
    while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
        more = s.recv(65536)
        if not more:
            raise SystemExit("connection closed")
        buf += more
    n = int.from_bytes(buf[:3], "big")
    kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
    payload, buf = buf[9:9 + n], buf[9 + n:]
    if kind == 4 and not flags & 1:
        s.sendall(frame(4, 1, 0, b""))
    if stream != 1:
        continue
    if kind == 3:
        raise SystemExit("stream reset")
    if kind == 1:  # :status 200 is the static table's entry 8, which nghttp2 always indexes
        status = 200 if payload[:1] == b"\x88" else "not 200"
    if kind == 0:
        body += payload
    if flags & 1:
        break
seen = json.loads(body).get("l5d-dst-canonical", "") if status == 200 else ""
print(status, len(seen))
EOF
}
before=$(msum "$S" route_request_total direction=inbound dst="$WEB")
huge=$(head -c 8000 /dev/zero | tr '\0' a):80
[ "$(raw "$huge" /headers)" = "200 8003" ] || fail "a huge l5d-dst-canonical: $(raw "$huge" /headers 2>&1)"
# Ignored (over 259 bytes): the authority names the destination, web.
expect "a huge value falls back to the authority" $((before + 1)) "$S" route_request_total direction=inbound dst="$WEB"
for v in 'web.default.svc.cluster.local:99999' 'web/../../etc:80' 'web.default.svc.cluster.local' '[::1'; do
  [ "$(raw "$v" /headers)" = "200 ${#v}" ] || fail "l5d-dst-canonical '$v'"
done
expect "malformed values fall back to the authority" $((before + 5)) "$S" route_request_total \
  direction=inbound dst="$WEB"
# A well-formed name the control plane does not know: a cache entry, no profile, no route metrics.
nosuch=nosuch.default.svc.cluster.local:80
[ "$(raw "$nosuch" /headers)" = "200 ${#nosuch}" ] || fail "an unknown destination"
[ "$(raw "$nosuch" /headers)" = "200 ${#nosuch}" ] || fail "an unknown destination (again)"
expect "an unknown destination" 0 "$S" route_request_total direction=inbound dst="$nosuch"
expect "inbound cache entries" 3 "$S" destination_inbound_authorities
kill -0 "$SERVER" || fail "the server's meshd is gone"
[ "$(codes "$P_WEB" /status/200)" = " 1 200 " ] || fail "web after the forged requests"
ok "forged l5d-dst-canonical: 8003 bytes and malformed values ignored (the authority used), an unknown name counted nowhere; every request answered 200"

# ---- the inbound cache outlives the outbound idle timeout (5 s) ---------------------------------
# The server's entries (web, api and nosuch) and the client's (web, api) were last used now.
[ "$(codes "$P_API" /status/200)" = " 1 200 " ] || fail "api before the idle time"
expect "the client's profile streams" 2 "$C" destination_profile_streams
streams=$(msum "$S" destination_profile_streams)
[ "$streams" = 3 ] || fail "the server's profile streams: $streams"
sleep 7 # past the outbound idle timeout and the sweep after it (1 s)
expect "the client's outbound entries dropped after 5 s idle" 0 "$C" destination_profile_streams
expect "the server's inbound entries kept after 7 s idle" 3 "$S" destination_profile_streams
expect "the server's inbound entries" 3 "$S" destination_inbound_authorities
grep -q 'destination web.default.svc.cluster.local:80: idle, dropped' server.log &&
  fail "the server dropped web's entry"
# Still answered from the kept profile: no first-request gap this time.
r0=$(msum "$S" route_request_total direction=inbound dst="$WEB")
[ "$(codes "$P_WEB" /status/200)" = " 1 200 " ] || fail "web after the idle time"
expect "a request after the idle time" $((r0 + 1)) "$S" route_request_total direction=inbound dst="$WEB"
ok "after 7 s idle: the client's entries dropped (5 s), the server's kept (90 s), its next request labelled at once"
echo "all inbound route checks passed"
