#!/usr/bin/env bash
# Integration: ServiceProfile routes, retries within the budget, route timeouts, TrafficSplit weights and an endpoint killed under load, through real meshd proxies (h2load, curl).
set -euo pipefail
meshd=$(realpath "$1")  # meson may pass paths relative to the build dir
pki=$(realpath "$2")
load=$(realpath "$3")
peers=$(realpath "$4")
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"
WEB=web.default.serviceaccount.identity.linkerd.cluster.local

"$pki" "$tmp" client default client server default web >/dev/null
read -r P_V1 P_V2 P_INA P_INB P_SADMA P_SADMB P_CADM P_WEB P_SPLIT \
  <<<"$(timeout 20 "$PY" "$load" free-ports 9)"

timeout 250 "$PY" "$peers" backend "$P_V1" web-v1 >v1.log 2>&1 &
pids+=($!)
timeout 250 "$PY" "$peers" backend "$P_V2" web-v2 >v2.log 2>&1 &
pids+=($!)

cat >eps.json <<EOF
{"services": {
  "web.default.svc.cluster.local:80": {"endpoints": [
    {"addr": "127.0.0.2:$P_INA", "identity": "$WEB", "port": $P_V1},
    {"addr": "127.0.0.3:$P_INB", "identity": "$WEB", "port": $P_V1}]},
  "web-v1.default.svc.cluster.local:80": {"endpoints": [
    {"addr": "127.0.0.2:$P_INA", "identity": "$WEB", "port": $P_V1}]},
  "web-v2.default.svc.cluster.local:80": {"endpoints": [
    {"addr": "127.0.0.2:$P_INA", "identity": "$WEB", "port": $P_V2}]}
}}
EOF
mkdir profiles
cat >profiles/web.yaml <<'EOF'
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata:
  name: web.default.svc.cluster.local
  namespace: default
spec:
  routes:
  - name: GET /flaky
    condition:
      method: GET
      pathRegex: /flaky/[0-9]+
    isRetryable: true
  - name: GET /slow
    condition:
      method: GET
      pathRegex: /slow/[0-9]+
    timeout: 500ms
  retryBudget:
    retryRatio: 0.6
    minRetriesPerSecond: 10
    ttl: 10s
EOF
split() { # v1-weight v2-weight: the seed's TrafficSplit shape, written atomically
  cat >split.tmp <<EOF
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata:
  name: web-split
  namespace: default
spec:
  service: web-split
  backends:
  - service: web-v1
    weight: $1
  - service: web-v2
    weight: $2
EOF
  mv split.tmp profiles/split.yaml
}
split 900m 100m

server() { # address inbound-port admin-port log
  timeout 250 "$meshd" --identity-dir server --inbound-listen-addr "$1:$2" --outbound-listen-addr "" \
    --admin-listen-addr "$1:$3" --inbound-ports "$P_V1,$P_V2" >>"$4" 2>&1 &
  pids+=($!)
}
server 127.0.0.2 "$P_INA" "$P_SADMA" servera.log
server 127.0.0.3 "$P_INB" "$P_SADMB" serverb.log
SERVERB=$!
timeout 250 "$meshd" --identity-dir client --outbound-listen-addr "" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_CADM" --endpoints eps.json --profiles profiles \
  --outbound-port-map "127.0.0.1:$P_WEB=web.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_SPLIT=web-split.default.svc.cluster.local:80" >client.log 2>&1 &
pids+=($!)

wait_http "http://127.0.0.1:$P_CADM/ready"
wait_http "http://127.0.0.2:$P_SADMA/ready"
wait_http "http://127.0.0.3:$P_SADMB/ready"
wait_http "http://127.0.0.1:$P_V1/"
wait_http "http://127.0.0.1:$P_V2/"
wait_http "http://127.0.0.1:$P_WEB/"

metrics() { curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics" >m.prom && cat m.prom; }
# metric-sum REGEX: the sum of the samples whose line matches
msum() { metrics | grep -E "$1" | awk '{s+=$NF} END {printf "%d\n", s}'; }
codes() { grep '^status codes:' "$1" | tr -d ','; } # "status codes: N 2xx N 3xx N 4xx N 5xx"
ok2xx() { codes "$1" | awk '{print $3}'; }
bad5xx() { codes "$1" | awk '{print $9}'; }

# ---- retries within the budget ---------------------------------------------------------------
timeout 120 h2load --h1 -n 2000 -c 10 "http://127.0.0.1:$P_WEB/flaky/30" >flaky.out 2>&1 || fail "h2load: $(cat flaky.out)"
good=$(ok2xx flaky.out)
[ "$good" -ge 1980 ] || fail "with a retryable route, $good of 2000 requests to a backend failing 30% succeeded (want >= 99%)"
R='dst="web.default.svc.cluster.local:80",rt_route="GET /flaky"'
req=$(msum "^route_request_total\{direction=\"outbound\",$R\}")
retries=$(msum "^route_retryable_total\{direction=\"outbound\",$R,skipped=\"\"\}")
actual=$(msum "^route_actual_request_total\{direction=\"outbound\",$R,")
eff_ok=$(msum "^route_response_total\{direction=\"outbound\",$R,classification=\"success\"")
act_fail=$(msum "^route_actual_response_total\{direction=\"outbound\",$R,.*classification=\"failure\"")
[ "$req" = 2000 ] || fail "route_request_total for GET /flaky: $req"
[ "$actual" = $((2000 + retries)) ] || fail "actual requests $actual != 2000 + $retries retries"
[ "$retries" -gt 300 ] || fail "only $retries retries for ~600 failures"
# The budget: 0.6 retries per request, plus 10 a second over the 10 s ttl.
[ "$retries" -le $((2000 * 6 / 10 + 100)) ] || fail "$retries retries exceed the budget"
[ "$eff_ok" -ge 1980 ] && [ "$act_fail" -ge 300 ] || fail "effective successes $eff_ok, actual failures $act_fail"
ok "flaky backend (30% 500s): $good/2000 succeeded through a retryable route; $retries retries (budget 0.6/request), effective vs actual in the route metrics"

# Edit a profile and wait until the client proxy has loaded the change.
loads() { grep -c 'profiles profiles loaded' client.log || true; }
edit_profile() { # sed expression
  local n
  n=$(loads)
  sed -i "$1" profiles/web.yaml
  for _ in $(seq 50); do [ "$(loads)" -gt "$n" ] && return 0; sleep 0.1; done
  fail "the edited profile was not picked up"
}

# The budget refuses when it runs dry: a ratio of 0 and no reserve.
edit_profile 's/retryRatio: 0.6/retryRatio: 0.0/; s/minRetriesPerSecond: 10/minRetriesPerSecond: 0/'
timeout 60 h2load --h1 -n 300 -c 5 "http://127.0.0.1:$P_WEB/flaky/30" >dry.out 2>&1 || fail "h2load: $(cat dry.out)"
skipped=$(msum "^route_retryable_total\{direction=\"outbound\",$R,skipped=\"no_budget\"\}")
[ "$skipped" -gt 20 ] && [ "$(bad5xx dry.out)" -gt 20 ] || fail "no_budget: $skipped skipped, $(bad5xx dry.out) 5xx"
ok "an empty budget: $skipped retries refused and counted (skipped=\"no_budget\"), the failures reach the caller"

# ---- route timeout ------------------------------------------------------------------------------
t0=$(date +%s%N)
c=$(curl -s -o /dev/null -D head.tmp -w '%{http_code}' -m 10 "http://127.0.0.1:$P_WEB/slow/3000")
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$c" = 504 ] && grep -qi '^l5d-proxy-error: route_timeout' head.tmp || fail "slow route: $c $(cat head.tmp)"
[ "$ms" -ge 450 ] && [ "$ms" -le 2500 ] || fail "the 500ms route timeout answered after $ms ms"
[ "$(curl -fsS -m 5 "http://127.0.0.1:$P_WEB/slow/100")" = slow ] || fail "a fast request on the timed route"
ok "route timeout 500ms: 504 route_timeout after $ms ms; faster requests pass"
t0=$(date +%s%N)
c=$(curl -s -o /dev/null -D head.tmp -w '%{http_code}' -m 10 -H 'content-type: application/grpc' \
  -H 'grpc-timeout: 150m' "http://127.0.0.1:$P_WEB/slow/3000")
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$c" = 200 ] && grep -qi '^grpc-status: 4' head.tmp || fail "grpc-timeout: $c $(cat head.tmp)"
[ "$ms" -ge 140 ] && [ "$ms" -lt 450 ] || fail "grpc-timeout 150m answered after $ms ms"
ok "a gRPC client's grpc-timeout (150m, sooner than the route's): DEADLINE_EXCEEDED after $ms ms"

# ---- TrafficSplit ------------------------------------------------------------------------------
timeout 120 h2load --h1 -n 10000 -c 20 "http://127.0.0.1:$P_SPLIT/" >split.out 2>&1 || fail "h2load: $(cat split.out)"
[ "$(ok2xx split.out)" = 10000 ] || fail "split load: $(codes split.out)"
S='dst="web-split.default.svc.cluster.local:80",rt_route="\[DEFAULT\]"'
v1=$(msum "^route_actual_request_total\{direction=\"outbound\",$S,dst_service=\"web-v1.default.svc.cluster.local:80\"")
v2=$(msum "^route_actual_request_total\{direction=\"outbound\",$S,dst_service=\"web-v2.default.svc.cluster.local:80\"")
[ $((v1 + v2)) = 10000 ] || fail "split counts: v1 $v1 + v2 $v2"
[ "$v2" -ge 800 ] && [ "$v2" -le 1200 ] || fail "90/10 split sent $v2 of 10000 to v2 (want 1000 +/- 200)"
ok "TrafficSplit 900m/100m over 10000 requests: web-v1 $v1, web-v2 $v2"

# A weight change under load (1,000 requests/s for 6 s): no failed request,
# and the new weights apply.
count_v() { msum "^route_actual_request_total\{direction=\"outbound\",$S,dst_service=\"web-v$1.default.svc.cluster.local:80\""; }
timeout 120 h2load --h1 -n 6000 -c 10 --rps 100 "http://127.0.0.1:$P_SPLIT/" >change.out 2>&1 &
LOAD=$!
sleep 1
n=$(loads)
split 500m 500m
for _ in $(seq 50); do [ "$(loads)" -gt "$n" ] && break; sleep 0.1; done
[ "$(loads)" -gt "$n" ] || fail "the new weights were not picked up"
wait $LOAD || fail "h2load during the change: $(cat change.out)"
[ "$(ok2xx change.out)" = 6000 ] || fail "requests failed while the weights changed: $(codes change.out)"
v1=$(count_v 1)
v2=$(count_v 2)
timeout 60 h2load --h1 -n 2000 -c 10 "http://127.0.0.1:$P_SPLIT/" >after.out 2>&1 || fail "h2load after the change"
v1b=$(( $(count_v 1) - v1 ))
v2b=$(( $(count_v 2) - v2 ))
[ $((v1b + v2b)) = 2000 ] && [ "$v2b" -ge 800 ] && [ "$v2b" -le 1200 ] ||
  fail "after 500m/500m: v1 $v1b, v2 $v2b of 2000"
ok "weights changed under load: 6000/6000 succeeded; then v1 $v1b, v2 $v2b of 2000"

# ---- an endpoint killed under load ---------------------------------------------------------------
edit_profile 's/retryRatio: 0.0/retryRatio: 0.6/; s/minRetriesPerSecond: 0/minRetriesPerSecond: 10/'
B="target_addr=\"127.0.0.3:$P_INB\""
timeout 120 h2load --h1 -n 6000 -c 10 "http://127.0.0.1:$P_WEB/flaky/0" >kill.out 2>&1 &
LOAD=$!
sleep 1
kill -KILL "$(ps -o pid= --ppid "$SERVERB" | tr -d ' ')" # meshd itself, not timeout(1)
wait $LOAD || fail "h2load while an endpoint died: $(cat kill.out)"
good=$(ok2xx kill.out)
[ "$good" -ge 5994 ] || fail "$good of 6000 succeeded while an endpoint was killed (want >= 99.9%): $(metrics | grep -E "^route_retryable|^route_actual_response" | grep flaky)"
before=$(msum "^request_total\{direction=\"outbound\".*$B")
timeout 60 h2load --h1 -n 500 -c 5 "http://127.0.0.1:$P_WEB/flaky/0" >ejected.out 2>&1 || true
[ "$(ok2xx ejected.out)" = 500 ] || fail "after the kill: $(codes ejected.out)"
tried=$(( $(msum "^request_total\{direction=\"outbound\".*$B") - before ))
[ "$tried" -le 25 ] || fail "the dead endpoint still got $tried of 500 attempts (not ejected: want at most 5%, its probes)"
ok "endpoint killed under load: $good/6000 succeeded; then ejected ($tried of 500 attempts tried it)"

server 127.0.0.3 "$P_INB" "$P_SADMB" serverb.log
wait_http "http://127.0.0.3:$P_SADMB/ready"
before=$(msum "^response_total\{direction=\"outbound\".*$B.*status_code=\"200\"")
# The breaker's penalty grew while the endpoint was dead (1 s doubling, with
# jitter): a probe gets through within it.
deadline=$(( $(date +%s) + 70 ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  timeout 30 h2load --h1 -n 200 -c 4 "http://127.0.0.1:$P_WEB/flaky/0" >back.out 2>&1 || true
  [ $(( $(msum "^response_total\{direction=\"outbound\".*$B.*status_code=\"200\"") - before )) -gt 10 ] && break
  sleep 0.5
done
back=$(( $(msum "^response_total\{direction=\"outbound\".*$B.*status_code=\"200\"") - before ))
[ "$back" -gt 10 ] || fail "the restarted endpoint got no traffic back ($back)"
ok "the endpoint, restarted, is back in rotation after probation ($back responses)"
