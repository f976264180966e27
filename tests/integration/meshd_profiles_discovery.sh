#!/usr/bin/env bash
# Integration: meshd takes ServiceProfiles and TrafficSplits from mesh-destination's GetProfile streams: routes, retries, timeouts, response classes, splits; store edits apply live; bad edits and the control plane going away keep the last profile; --profiles wins.
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

"$pki" "$tmp" client default client >/dev/null
read -r P_WEBAPP P_V1 P_V2 P_DST P_DADM P_CADM P_WEB P_SPLIT P_LOCAL \
  <<<"$(timeout 20 "$PY" "$load" free-ports 9)"

for b in "$P_WEBAPP web" "$P_V1 web-v1" "$P_V2 web-v2"; do
  # shellcheck disable=SC2086 # port and name
  timeout 60 "$PY" "$peers" backend $b >"app-${b#* }.log" 2>&1 &
  pids+=($!)
done

# ---- the store: three Services on one Workload (no proxy: plain HTTP to the app) -------
mkdir store local
service() { # NAME TARGET-PORT-NAME
  put "svc-$1.yaml" <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: $1, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: $2, protocol: http}]
EOF
}
service web http
service web-v1 v1
service web-v2 v2
put app.yaml <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: app-1, namespace: default, labels: {app: web}}
spec:
  address: 127.0.0.1
  proxyPort: 0
  adminPort: 0
  ports: [{name: http, port: $P_WEBAPP}, {name: v1, port: $P_V1}, {name: v2, port: $P_V2}]
EOF
profile() { # SLOW-ROUTE-NAME SLOW-TIMEOUT
  put web-profile.yaml <<EOF
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web.default.svc.cluster.local, namespace: default}
spec:
  routes:
  - name: flaky
    condition: {method: GET, pathRegex: '/flaky/[0-9]+'}
    isRetryable: true
  - name: $1
    condition: {method: GET, pathRegex: '/slow/[0-9]+'}
    timeout: $2
  - name: teapot
    condition:
      all:
      - {method: GET}
      - any: [{pathRegex: /status/418}, {pathRegex: /status/419}]
    responseClasses:
    - condition: {status: {min: 418, max: 418}}
      isFailure: true
  retryBudget: {retryRatio: 0.6, minRetriesPerSecond: 10, ttl: 10s}
EOF
}
profile slow 400ms
split() { # V1-WEIGHT V2-WEIGHT
  put split.yaml <<EOF
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: web-split, namespace: default}
spec:
  service: web-split
  backends: [{service: web-v1, weight: $1}, {service: web-v2, weight: $2}]
EOF
}
split 900m 100m
# web-v1 has a profile in the store and one in the local directory: the local one wins.
put v1-profile.yaml <<'EOF'
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web-v1.default.svc.cluster.local, namespace: default}
spec:
  routes: [{name: from-control-plane, condition: {pathRegex: '/.*'}}]
EOF
cat >local/v1.yaml <<'EOF'
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web-v1.default.svc.cluster.local, namespace: default}
spec:
  routes: [{name: local, condition: {pathRegex: '/.*'}}]
EOF

start_dest() {
  timeout 60 "$dest" --store-dir store --listen "127.0.0.1:$P_DST" --admin "127.0.0.1:$P_DADM" \
    --debounce-ms 100 >>dest.log 2>&1 &
  DPID=$!
  pids+=("$DPID")
  wait_http "http://127.0.0.1:$P_DADM/ready"
}
start_dest

timeout 60 "$meshd" --identity-dir client --outbound-listen-addr "" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_CADM" --destination-addr "127.0.0.1:$P_DST" \
  --profiles local \
  --outbound-port-map "127.0.0.1:$P_WEB=web.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_SPLIT=web-split.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_LOCAL=web-v1.default.svc.cluster.local:80" \
  --log-level debug >client.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_CADM/ready"
for p in "$P_WEBAPP" "$P_V1" "$P_V2"; do wait_http "http://127.0.0.1:$p/"; done

metrics() { curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics"; }
msum() { metrics | grep -E "$1" | awk '{s+=$NF} END {printf "%d\n", s}'; } # the samples whose line matches
R='route_request_total\{direction="outbound",dst="web.default.svc.cluster.local:80",rt_route='
get() { # PATH: "status ms" of one request through the client meshd (web); headers in h.txt
  local t0 c
  t0=$(now_ms)
  c=$(curl -sS -m 10 -o /dev/null -D h.txt -w '%{http_code}' "http://127.0.0.1:$P_WEB$1" || true)
  echo "$c $(($(now_ms) - t0))"
}
# batch PORT PATH N: N requests, 20 at a time, one answer a line ("ERR" for a failure)
batch() {
  timeout 30 "$PY" - "$1" "$2" "$3" <<'EOF'
import sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
port, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def get(i):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.read().decode().strip() if r.status == 200 else "ERR"
    except Exception:
        return "ERR"
with ThreadPoolExecutor(20) as ex:
    for line in ex.map(get, range(n)):
        print(line)
EOF
}

# ---- the first request waits for the profile; routes are counted ------------------------
read -r c ms <<<"$(get /flaky/0)"
[ "$c" = 200 ] || fail "the first request through a discovered profile: $c"
[ "$(msum "^${R}\"flaky\"\}")" = 1 ] ||
  fail "the first request did not count under its route: $(metrics | grep '^route_request_total')"
[ "$(msum '^destination_profile_streams ')" -ge 1 ] && [ "$(msum '^destination_profile_updates_total ')" -ge 1 ] ||
  fail "profile metrics: $(metrics | grep '^destination_profile')"
ok "the first request waited for the profile ($ms ms) and counted under rt_route=\"flaky\""

# ---- retries within the budget ----------------------------------------------------------
batch "$P_WEB" /flaky/30 400 | sort | uniq -c >flaky.txt
good=$(awk '$2 == "flaky" {print $1}' flaky.txt)
retried=$(msum "^route_retryable_total\{direction=\"outbound\",dst=\"web.default.svc.cluster.local:80\",rt_route=\"flaky\",skipped=\"\"\}")
[ "${good:-0}" -ge 396 ] || fail "a retryable route over a backend failing 30%: $(tr -s ' \n' ' ' <flaky.txt)"
[ "$retried" -ge 60 ] || fail "only $retried retries for ~120 failures"
ok "retryable route: $good/400 succeeded against 30% failures, $retried retries"

# ---- the route timeout, and response classes --------------------------------------------
read -r c ms <<<"$(get /slow/3000)"
[ "$c" = 504 ] && grep -qi '^l5d-proxy-error: route_timeout' h.txt || fail "slow route: $c $(cat h.txt)"
[ "$ms" -ge 350 ] && [ "$ms" -le 2000 ] || fail "the 400ms route timeout answered after $ms ms"
read -r c _ <<<"$(get /slow/10)"
[ "$c" = 200 ] || fail "a fast request on the timed route: $c"
ok "route timeout 400ms: 504 route_timeout after $ms ms; a fast request passes"
read -r c _ <<<"$(get /status/418)"
read -r c2 _ <<<"$(get /status/419)"
RC='route_response_total\{direction="outbound",dst="web.default.svc.cluster.local:80",rt_route="teapot",classification='
[ "$c $c2" = "418 419" ] && [ "$(msum "^${RC}\"failure\",status_code=\"418\"")" = 1 ] &&
  [ "$(msum "^${RC}\"success\",status_code=\"419\"")" = 1 ] ||
  fail "response classes: $c $c2 $(metrics | grep teapot)"
ok "response classes from the control plane: 418 a failure, 419 a success (all/any conditions)"

# ---- an edit of the ServiceProfile in the store: no restart ------------------------------
# A request in flight across the swap finishes under the profile it started with (it
# holds a reference: nothing it uses goes away under it).
timeout 10 curl -sS -m 8 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_WEB/slow/300" >inflight.txt &
INFLIGHT=$!
sleep 0.1
u0=$(msum '^destination_profile_updates_total ')
t0=$(now_ms)
profile slow-v2 2s
for i in $(seq 60); do
  read -r c _ <<<"$(get /slow/600)"
  [ "$c" = 200 ] && [ "$(msum "^${R}\"slow-v2\"\}")" -ge 1 ] && break
  [ "$i" = 60 ] && fail "the edited profile never applied: $c $(metrics | grep -E '^route_request_total|^destination_profile')"
  sleep 0.05
done
took=$(($(now_ms) - t0))
[ "$took" -le 2500 ] || fail "the edit took $took ms to apply"
[ "$(msum '^destination_profile_updates_total ')" -gt "$u0" ] || fail "destination_profile_updates_total did not move"
wait "$INFLIGHT" || true
[ "$(cat inflight.txt)" = 200 ] || fail "the request in flight across the edit: $(cat inflight.txt)"
ok "route renamed and its timeout raised in the store: applied after $took ms (a 600 ms request now passes)"

# ---- TrafficSplit: traffic moves between backends ----------------------------------------
batch "$P_SPLIT" / 400 | sort | uniq -c >s1.txt
v1=$(awk '$2 == "web-v1" {print $1}' s1.txt)
v2=$(awk '$2 == "web-v2" {print $1}' s1.txt)
[ "$((${v1:-0} + ${v2:-0}))" = 400 ] && [ "${v2:-0}" -ge 15 ] && [ "${v2:-0}" -le 80 ] ||
  fail "a 900m/100m split over 400 requests: $(tr -s ' \n' ' ' <s1.txt)"
ok "TrafficSplit 900m/100m from the control plane: web-v1 $v1, web-v2 $v2 of 400"
t0=$(now_ms)
split 0 1
for i in $(seq 60); do
  batch "$P_SPLIT" / 100 | sort | uniq -c >s2.txt
  [ "$(tr -s ' ' <s2.txt)" = " 100 web-v2" ] && break
  [ "$i" = 60 ] && fail "the split moved to 0/1 never applied: $(tr -s ' \n' ' ' <s2.txt)"
  sleep 0.05
done
ok "the split edited to 0/1: every request goes to web-v2 after $(($(now_ms) - t0)) ms"

# ---- a bad edit: the store refuses it, the last good profile keeps serving -------------------
u0=$(msum '^destination_profile_updates_total ')
sed -i "s|'/slow/\[0-9\]+'|'/slow/[0-9+'|" store/web-profile.yaml
grep -q "'/slow/\[0-9+'" store/web-profile.yaml || fail "the bad edit was not made"
for i in $(seq 50); do
  grep -q 'change refused.*web-profile.yaml' dest.log && break
  [ "$i" = 50 ] && fail "mesh-destination did not report the bad manifest"
  sleep 0.05
done
sleep 0.3
read -r c _ <<<"$(get /slow/600)"
n=$(msum "^${R}\"slow-v2\"\}")
[ "$c" = 200 ] && [ "$n" -ge 2 ] || fail "after a bad edit: $c, slow-v2 requests $n"
[ "$(msum '^destination_profile_updates_total ')" = "$u0" ] || fail "a profile update followed a refused edit"
ok "a bad regex in the store is refused; the last good profile keeps serving"

# ---- --profiles wins over the control plane, logged once ---------------------------------
for i in $(seq 40); do
  curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$P_LOCAL/" || fail "through the local profile"
  grep -q 'destination web-v1.default.svc.cluster.local:80: the local profile (--profiles) overrides' client.log && break
  [ "$i" = 40 ] && fail "the precedence of the local profile was not logged"
  sleep 0.05
done
curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$P_LOCAL/" || fail "through the local profile"
L='route_request_total\{direction="outbound",dst="web-v1.default.svc.cluster.local:80",rt_route='
[ "$(msum "^${L}\"from-control-plane\"")" = 0 ] && [ "$(msum "^${L}\"local\"")" -ge 2 ] ||
  fail "the local profile did not win: $(metrics | grep web-v1)"
[ "$(grep -c 'the local profile (--profiles) overrides' client.log)" = 1 ] || fail "the precedence was logged more than once"
ok "a destination in --profiles and the control plane: the local profile is used, logged once"

# ---- the control plane away: the last profile keeps serving -----------------------------
kill "$DPID"
wait "$DPID" 2>/dev/null || true
sleep 0.3
read -r c ms <<<"$(get /slow/3000)"
[ "$c" = 504 ] && [ "$ms" -ge 1900 ] && [ "$ms" -le 3000 ] || fail "the 2s timeout with mesh-destination down: $c after $ms ms"
batch "$P_WEB" /flaky/30 100 | sort | uniq -c >away.txt
[ "$(awk '$2 == "flaky" {print $1}' away.txt)" -ge 99 ] || fail "retries with mesh-destination down: $(cat away.txt)"
grep -q 'destination web.default.svc.cluster.local:80: profile stream ended' client.log ||
  fail "the end of the profile stream was not logged"
ok "mesh-destination killed: the route timeout (2s, $ms ms) and retries still apply"

# Back: a fresh stream resyncs, and an edit made meanwhile applies.
profile slow-v3 2s
start_dest
for i in $(seq 60); do
  get /slow/10 >/dev/null
  [ "$(msum "^${R}\"slow-v3\"\}")" -ge 1 ] && break
  [ "$i" = 60 ] && fail "after mesh-destination restarted, the profile edited meanwhile never applied"
  sleep 0.1
done
[ "$(msum '^destination_profile_reconnects_total ')" -ge 1 ] || fail "destination_profile_reconnects_total"
ok "mesh-destination restarted: the profile stream reconnected and the edit made meanwhile applied"
echo "all meshd profile discovery checks passed"
