#!/usr/bin/env bash
# Integration: fail-fast queueing in meshd: a request with no ready endpoint waits out the fail-fast timeout (503 fail_fast), is served when the endpoint comes back or discovery adds one, and a full queue sheds at once.
set -euo pipefail
meshd=$(realpath "$1") # meson may pass paths relative to the build dir
dest=$(realpath "$2")
pki=$(realpath "$3")
load=$(realpath "$4")
peers=$(realpath "$5")
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"
now_ms() { echo $(($(date +%s%N) / 1000000)); }

"$pki" "$tmp" client default client web default web >/dev/null

read -r P_DOWN P_BACK P_FULL P_APP P_IN P_SADM P_DST P_DADM P_ADM1 P_ADM2 P_ADM3 P_M1 P_M2 P_M3 \
  P_M4 P_M5 <<<"$(timeout 20 "$PY" "$load" free-ports 16)"

# Unmeshed endpoints on ports nothing listens on yet: the endpoint itself is down.
cat >eps.json <<EOF
{"services": {
  "down.default.svc.cluster.local:80": {"endpoints": [{"addr": "127.0.0.1:$P_DOWN"}]},
  "back.default.svc.cluster.local:80": {"endpoints": [{"addr": "127.0.0.1:$P_BACK"}]},
  "full.default.svc.cluster.local:80": {"endpoints": [{"addr": "127.0.0.1:$P_FULL"}]}
}}
EOF

client() { # admin-port log [flags...]
  local adm=$1 log=$2
  shift 2
  timeout 60 "$meshd" --identity-dir client --inbound-listen-addr "" --outbound-listen-addr "" \
    --admin-listen-addr "127.0.0.1:$adm" --endpoints eps.json "$@" >"$log" 2>&1 &
  pids+=($!)
}
# One with the defaults (3 s), one that waits long and queues two at most.
client "$P_ADM1" client1.log --outbound-port-map "127.0.0.1:$P_M1=down.default.svc.cluster.local:80"
client "$P_ADM2" client2.log --outbound-failfast-timeout 8s --outbound-queue-capacity 2 \
  --outbound-port-map "127.0.0.1:$P_M2=back.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_M3=full.default.svc.cluster.local:80"
wait_http "http://127.0.0.1:$P_ADM1/ready"
wait_http "http://127.0.0.1:$P_ADM2/ready"

# req PORT: "status elapsed-ms l5d-proxy-error" of one GET through a port map.
req() {
  local t0 c
  t0=$(now_ms)
  c=$(curl -sS -m 15 -D "h.$1" -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/" || true)
  echo "$c $(($(now_ms) - t0)) $(tr -d '\r' <"h.$1" | awk 'tolower($0) ~ /^l5d-proxy-error: / { sub(/^[^:]*: /, ""); print }')"
}
metric() { # admin-port name{labels}
  curl -fsS -m 5 "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'
}
# trip PORT: seven refused connections in a row open the only endpoint's breaker.
trip() {
  for i in 1 2 3 4 5 6 7; do
    read -r c _ e <<<"$(req "$1")"
    [ "$c" = 502 ] && [[ "$e" == connect_refused* ]] || fail "request $i to a dead endpoint: $c $e"
  done
}

# ---- the only endpoint is down: the request waits out the fail-fast timeout -----------------
trip "$P_M1"
read -r c ms e <<<"$(req "$P_M1")"
[ "$c" = 503 ] && [[ "$e" == fail_fast:*"service in fail-fast"* ]] ||
  fail "a request with every breaker open: $c $e"
[ "$ms" -ge 2700 ] && [ "$ms" -le 6000 ] || fail "fail-fast after $ms ms, not about 3 s"
[ "$(metric "$P_ADM1" 'http_failfast_total{direction="outbound"}')" = 1 ] ||
  fail "http_failfast_total: $(metric "$P_ADM1" 'http_failfast_total{direction="outbound"}')"
[ "$(metric "$P_ADM1" 'http_queue_requests{direction="outbound"}')" = 0 ] || fail "the queue gauge stays up"
grep -q 'outbound GET .*: 503 fail_fast' client1.log || fail "the fail-fast is not logged"
ok "breaker open, endpoint still down: 503 fail_fast after $ms ms (timeout 3 s), counted"

# ---- a request waiting while its endpoint comes back is served ------------------------------
trip "$P_M2"
(req "$P_M2" >back.out) &
bg=$!
for _ in $(seq 40); do
  [ "$(metric "$P_ADM2" 'http_queue_requests{direction="outbound"}')" = 1 ] && break
  sleep 0.05
done
[ "$(metric "$P_ADM2" 'http_queue_requests{direction="outbound"}')" = 1 ] || fail "the request is not queued"
timeout 50 "$PY" "$peers" backend "$P_BACK" back >back.log 2>&1 &
pids+=($!)
wait "$bg"
read -r c ms e <"back.out"
[ "$c" = 200 ] || fail "the waiting request after the endpoint came back: $c $e ($ms ms)"
[ "$ms" -ge 200 ] || fail "the request did not wait ($ms ms)"
[ "$(metric "$P_ADM2" 'http_queue_requests{direction="outbound"}')" = 0 ] || fail "the queue gauge stays up"
ok "a request queued behind an open breaker is served once the endpoint is back ($ms ms)"

# ---- the queue is full: 503 load_shed at once -----------------------------------------------
trip "$P_M3"
curl -sS -m 20 --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$P_M3/one" 2>/dev/null &
w1=$!
curl -sS -m 20 --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$P_M3/two" 2>/dev/null &
w2=$!
for _ in $(seq 40); do
  [ "$(metric "$P_ADM2" 'http_queue_requests{direction="outbound"}')" = 2 ] && break
  sleep 0.05
done
[ "$(metric "$P_ADM2" 'http_queue_requests{direction="outbound"}')" = 2 ] || fail "two requests are not queued"
read -r c ms e <<<"$(req "$P_M3")"
[ "$c" = 503 ] && [[ "$e" == load_shed:*"queue is full"* ]] || fail "over the queue capacity: $c $e"
[ "$ms" -lt 1000 ] || fail "the load shed took $ms ms"
[ "$(metric "$P_ADM2" 'http_queue_load_shed_total{direction="outbound"}')" = 1 ] || fail "the shed is not counted"
# Callers that give up leave the queue (HTTP/2 callers: an HTTP/1 connection is
# not read while its request is in flight, so its close is seen at the answer).
kill "$w1" "$w2" 2>/dev/null || true
wait "$w1" "$w2" 2>/dev/null || true
for _ in $(seq 40); do
  [ "$(metric "$P_ADM2" 'http_queue_requests{direction="outbound"}')" = 0 ] && break
  sleep 0.05
done
[ "$(metric "$P_ADM2" 'http_queue_requests{direction="outbound"}')" = 0 ] || fail "abandoned requests stay queued"
ok "queue capacity 2: the third waiting request got 503 load_shed in $ms ms; abandoned ones left the queue"

# ---- discovery: a known service with no endpoint yet, then a Workload appears ----------------
mkdir store
put api.yaml <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: api, namespace: default}
spec:
  selector: {app: api}
  ports:
  - {name: http, port: 80, targetPort: http, protocol: http}
EOF
timeout 50 "$dest" --store-dir store --listen "127.0.0.1:$P_DST" --admin "127.0.0.1:$P_DADM" \
  --debounce-ms 100 >dest.log 2>&1 &
pids+=($!)
timeout 50 "$PY" "$peers" backend "$P_APP" api-1 >app.log 2>&1 &
pids+=($!)
timeout 50 "$meshd" --identity-dir web --inbound-listen-addr "127.0.0.2:$P_IN" \
  --outbound-listen-addr "" --admin-listen-addr "127.0.0.2:$P_SADM" >server.log 2>&1 &
pids+=($!)
MESH_PROXY_WORKLOAD_NAMESPACE=default client "$P_ADM3" client3.log \
  --destination-addr "127.0.0.1:$P_DST" --outbound-failfast-timeout 8s \
  --outbound-port-map "127.0.0.1:$P_M4=api.default.svc.cluster.local:80"
wait_http "http://127.0.0.1:$P_DADM/ready"
wait_http "http://127.0.0.1:$P_ADM3/ready"
wait_http "http://127.0.0.2:$P_SADM/ready"
wait_http "http://127.0.0.1:$P_APP/"
(req "$P_M4" >api.out) &
bg=$!
for _ in $(seq 60); do
  [ "$(metric "$P_ADM3" 'http_queue_requests{direction="outbound"}')" = 1 ] && break
  sleep 0.05
done
[ "$(metric "$P_ADM3" 'http_queue_requests{direction="outbound"}')" = 1 ] ||
  fail "a request to a service without endpoints is not queued"
put api-1.yaml <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: api-1, namespace: default, labels: {app: api}}
spec: {serviceAccount: web, address: 127.0.0.2, proxyPort: $P_IN, ports: [{name: http, port: $P_APP}]}
EOF
wait "$bg"
read -r c ms e <"api.out"
[ "$c" = 200 ] || fail "the request waiting for discovery's first endpoint: $c $e ($ms ms)"
[ "$ms" -lt 8000 ] || fail "served only after $ms ms"
ok "a request to a service with no endpoint waited, and went as soon as discovery added one ($ms ms)"

# ---- the flags are checked ----------------------------------------------------------------
for bad in "--outbound-failfast-timeout 0" "--inbound-failfast-timeout x" "--outbound-queue-capacity 0"; do
  # shellcheck disable=SC2086 # the flag and its value are two words
  if timeout 10 "$meshd" --identity-dir client --inbound-listen-addr "" --outbound-listen-addr "" \
    --admin-listen-addr "127.0.0.1:$P_M5" $bad >bad.log 2>&1; then
    fail "meshd accepted $bad"
  fi
  grep -q -- "${bad%% *}" bad.log || fail "$bad: the error does not name the flag: $(cat bad.log)"
done
ok "bad fail-fast flags are refused, naming the flag"
