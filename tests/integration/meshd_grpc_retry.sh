#!/usr/bin/env bash
# Integration: gRPC failures that arrive in trailers (headers and data first) are retried by meshd, through a retryable ServiceProfile route and a retry.linkerd.io/grpc annotation; streams past the hold bound or that go on stream intact and unretried (grpcio).
set -euo pipefail
meshd=$(realpath "$1") # meson may pass paths relative to the build dir
dest=$(realpath "$2")
pki=$(realpath "$3")
load=$(realpath "$4")
peers=$(realpath "$5")
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"
WEB=web.default.serviceaccount.identity.linkerd.cluster.local

"$pki" "$tmp" client default client server default web >/dev/null
read -r P_APP P_IN P_SADM P_CADM P_DST P_DADM P_RT P_PLAIN P_ANN \
  <<<"$(timeout 20 "$PY" "$load" free-ports 9)"

timeout 60 "$PY" "$peers" grpc-server "$P_APP" >grpc.log 2>&1 &
pids+=($!)

# grpc: through the server proxy (mTLS, HTTP/2), with retryable routes;
# grpc-plain: the same server, a route that is not retryable.
cat >eps.json <<EOF
{"services": {
  "grpc.default.svc.cluster.local:80": {"endpoints": [
    {"addr": "127.0.0.2:$P_IN", "identity": "$WEB", "port": $P_APP}]},
  "grpc-plain.default.svc.cluster.local:80": {"endpoints": [
    {"addr": "127.0.0.2:$P_IN", "identity": "$WEB", "port": $P_APP}]}
}}
EOF
mkdir profiles store
cat >profiles/grpc.yaml <<'EOF'
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: grpc.default.svc.cluster.local, namespace: default}
spec:
  routes:
  - name: Flaky
    condition: {method: POST, pathRegex: /test\.Echo/Flaky}
    isRetryable: true
    timeout: 1s
  - name: Items
    condition: {method: POST, pathRegex: /test\.Echo/Items}
    isRetryable: true
  retryBudget: {retryRatio: 0.6, minRetriesPerSecond: 10, ttl: 10s}
EOF
cat >profiles/grpc-plain.yaml <<'EOF'
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: grpc-plain.default.svc.cluster.local, namespace: default}
spec:
  routes:
  - name: Flaky
    condition: {method: POST, pathRegex: /test\.Echo/Flaky}
EOF
# grpc-ann: from mesh-destination, retried by its annotations, straight to the server.
cat >store/svc.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata:
  name: grpc-ann
  namespace: default
  annotations:
    retry.linkerd.io/grpc: unavailable
    retry.linkerd.io/limit: "5"
spec:
  selector: {app: grpc}
  ports: [{name: http, port: 80, targetPort: http, protocol: http}]
EOF
cat >store/app.yaml <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: grpc-1, namespace: default, labels: {app: grpc}}
spec: {address: 127.0.0.1, proxyPort: 0, adminPort: 0, ports: [{name: http, port: $P_APP}]}
EOF

timeout 60 "$dest" --store-dir store --listen "127.0.0.1:$P_DST" --admin "127.0.0.1:$P_DADM" \
  >dest.log 2>&1 &
pids+=($!)
timeout 60 "$meshd" --identity-dir server --inbound-listen-addr "127.0.0.2:$P_IN" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.2:$P_SADM" --inbound-ports "$P_APP" >server.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_DADM/ready"
timeout 60 "$meshd" --identity-dir client --outbound-listen-addr "" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_CADM" --endpoints eps.json --profiles profiles \
  --destination-addr "127.0.0.1:$P_DST" \
  --outbound-port-map "127.0.0.1:$P_RT=grpc.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_PLAIN=grpc-plain.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_ANN=grpc-ann.default.svc.cluster.local:80" >client.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_CADM/ready"
wait_http "http://127.0.0.2:$P_SADM/ready"

metrics() { curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics"; }
msum() { metrics | { grep -E "$1" || true; } | awk '{s+=$NF} END {printf "%d\n", s}'; } # the samples whose line matches
# calls PORT METHOD REQUEST N: "ok=N fail=N bad=N items=N first_ms=N" (http_peers.py grpc-calls)
calls() {
  timeout 30 "$PY" "$peers" grpc-calls "127.0.0.1:$1" "$(port_dst "$1")" "$2" "$3" "$4" 2>&1 ||
    fail "grpc-calls $*"
}
port_dst() {
  case $1 in
  "$P_RT") echo grpc.default.svc.cluster.local:80 ;;
  "$P_PLAIN") echo grpc-plain.default.svc.cluster.local:80 ;;
  *) echo grpc-ann.default.svc.cluster.local:80 ;;
  esac
}
kv() { grep -o "\b$1=[0-9]*" | cut -d= -f2; } # kv KEY <<<"$result"
R='direction="outbound",dst="grpc.default.svc.cluster.local:80"'
tries() { msum "^route_retryable_total\{$R,rt_route=\"$1\",skipped=\"$2\"\}"; }
sent() { msum "^route_actual_request_total\{$R,rt_route=\"$1\","; }

# ---- a retryable route: UNAVAILABLE in the trailers, after the headers ----------------------
out=$(calls "$P_RT" Flaky 30 300)
[ "$(kv ok <<<"$out")" -ge 297 ] && [ "$(kv bad <<<"$out")" = 0 ] ||
  fail "retryable route over a method failing 30% in its trailers: $out (want >= 99% OK)"
retried=$(tries Flaky "")
actual_fail=$(msum "^route_actual_response_total\{$R,rt_route=\"Flaky\",.*classification=\"failure\",status_code=\"200\"")
[ "$retried" -ge 50 ] && [ "$(sent Flaky)" = $((300 + retried)) ] && [ "$actual_fail" -ge 50 ] ||
  fail "retries not in the metrics: retried $retried, sent $(sent Flaky), failed attempts $actual_fail"
ok "retryable route, 30% UNAVAILABLE after the headers: $out; $retried retries, $actual_fail failed attempts"

# Data, then the failure: the failed attempt's items never reach the caller.
out=$(calls "$P_RT" Items "1 100 30 0" 200)
[ "$(kv ok <<<"$out")" -ge 198 ] && [ "$(kv bad <<<"$out")" = 0 ] &&
  [ "$(kv items <<<"$out")" = 200 ] ||
  fail "one item then 30% UNAVAILABLE: $out"
ok "one message then UNAVAILABLE in 30%: $out, retried ($(tries Items "") retries), no item twice"

# ---- streams are let through -------------------------------------------------------------------
# A message past the 64 KiB hold: 3 items of 70,000 bytes stream whole, no
# retry; a failure at their end reaches the caller, counted as a retry skipped.
before=$(sent Items)
out=$(calls "$P_RT" Items "3 70000 0 0" 10)
[ "$out" = "ok=10 fail=0 bad=0 items=30 first_ms=$(kv first_ms <<<"$out")" ] || fail "a 210 KB stream: $out"
out=$(calls "$P_RT" Items "3 70000 100 0" 10)
[ "$(kv fail <<<"$out")" = 10 ] && [ "$(kv bad <<<"$out")" = 0 ] && [ "$(kv items <<<"$out")" = 30 ] ||
  fail "a 210 KB stream ending UNAVAILABLE: $out"
large=$(tries Items response_too_large)
[ "$(($(sent Items) - before))" = 20 ] && [ "$large" = 10 ] ||
  fail "streams past the bound: $(($(sent Items) - before)) attempts for 20 calls, skipped response_too_large $large"
ok "210 KB streams pass intact and unretried; their failures reach the caller (skipped=\"response_too_large\" $large)"

# A stream that goes on: a second message, and one that pauses 800 ms after
# its first (let through within the hold's 100 ms, not at its end).
before=$(sent Items)
out=$(calls "$P_RT" Items "100 2000 0 0" 10)
[ "$out" = "ok=10 fail=0 bad=0 items=1000 first_ms=$(kv first_ms <<<"$out")" ] || fail "a stream of 100 messages: $out"
out=$(calls "$P_RT" Items "200 20 100 0" 10)
[ "$(kv fail <<<"$out")" = 10 ] && [ "$(kv bad <<<"$out")" = 0 ] && [ "$(kv items <<<"$out")" = 2000 ] ||
  fail "a stream of 200 small messages ending UNAVAILABLE: $out"
out=$(calls "$P_RT" Items "2 20 0 800" 4)
[ "$(kv ok <<<"$out")" = 4 ] && [ "$(kv items <<<"$out")" = 8 ] && [ "$(kv first_ms <<<"$out")" -lt 600 ] ||
  fail "a stream pausing after its first message: $out (first item after 600 ms or more: held)"
streams=$(tries Items response_stream)
[ "$streams" = 10 ] && [ "$(($(sent Items) - before))" = 24 ] ||
  fail "skipped=\"response_stream\": $streams, not 10; $(($(sent Items) - before)) attempts for 24 calls"
ok "streams that go on pass unretried (skipped=\"response_stream\" $streams); a paused stream's first item after $(kv first_ms <<<"$out") ms"

# ---- the route timeout runs while a response is held ---------------------------------------------
t0=$(date +%s%N)
out=$(calls "$P_RT" Flaky "0 3000" 1)
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$(kv fail <<<"$out")" = 1 ] || fail "headers at once, answer after 3 s, route timeout 1 s: $out"
[ "$ms" -lt 2800 ] || fail "the route timeout did not cut a held response: $ms ms"
grep -q 'route_timeout' client.log || fail "no route_timeout logged"
ok "headers at once and the answer after 3 s: cut by the route's 1 s timeout while held ($ms ms)"

# ---- retry.linkerd.io/grpc: unavailable ------------------------------------------------------------
out=$(calls "$P_ANN" Flaky 30 300)
A='direction="outbound",dst="grpc-ann.default.svc.cluster.local:80"'
retried=$(msum "^route_retryable_total\{$A,rt_route=\"\[DEFAULT\]\",skipped=\"\"\}")
[ "$(kv ok <<<"$out")" -ge 297 ] && [ "$retried" -ge 50 ] ||
  fail "retry.linkerd.io/grpc unavailable, limit 5, 30% failing: $out, $retried retries"
ok "retry.linkerd.io/grpc unavailable, limit 5: $out; $retried retries"

# ---- a route that is not retryable: nothing held, failures reach the caller --------------------
out=$(calls "$P_PLAIN" Flaky 30 200)
okn=$(kv ok <<<"$out")
[ "$okn" -ge 100 ] && [ "$okn" -le 180 ] || fail "non-retryable route over a 30% failing method: $out"
P='direction="outbound",dst="grpc-plain.default.svc.cluster.local:80"'
[ "$(msum "^route_retryable_total\{$P,")" = 0 ] && [ "$(msum "^route_actual_request_total\{$P,")" = 200 ] ||
  fail "a route that is not retryable was retried: $(metrics | grep -E "^route_(retryable|actual_request)_total\{$P")"
ok "non-retryable route: $out, no retry"
