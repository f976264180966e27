#!/usr/bin/env bash
# Integration: mesh-viz scrapes three meshd over mTLS under a known load; meshctl viz stat, routes and edges agree with what was sent; an admin that never answers, a proxy restart, store changes, mesh-viz down.
set -euo pipefail
meshd=$(realpath "$1") # meson may pass paths relative to the build dir
viz=$(realpath "$2")
meshctl=$(realpath "$3")
pki=$(realpath "$4")
load=$(realpath "$5")
peers=$(realpath "$6")
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)
ok() { echo "ok (at $(($(now_ms) - T0)) ms): $*"; }
TD=serviceaccount.identity.linkerd.cluster.local

"$pki" "$tmp" client default client web1 default web web2 default web >/dev/null
# One admin port for every proxy, each on its own address: as Prometheus scrapes pod-ip:4191.
read -r P_APP1 P_APP2 P_IN P_ADM P_WEB P_SPLIT P_VIZ <<<"$(timeout 20 "$PY" "$load" free-ports 7)"

timeout 60 "$PY" "$peers" backend "$P_APP1" web-1 >app1.log 2>&1 &
pids+=($!)
timeout 60 "$PY" "$peers" backend "$P_APP2" web-2 >app2.log 2>&1 &
pids+=($!)
# ghost-1's admin accepts connections and never answers: its scrapes time out.
timeout 60 "$PY" -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.5", int(sys.argv[1]))); s.listen(16); time.sleep(60)' "$P_ADM" &
pids+=($!)

# ---- the store: a Service, Workloads (adminPort on each address), a ServiceProfile ----------
mkdir store
put() { # NAME TEXT: written whole, as a deploy tool does
  printf '%s\n' "$2" >"store/.$1.tmp"
  mv "store/.$1.tmp" "store/$1"
}
put web.yaml "apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]"
wl() { # NAME LABELS SA ADDRESS APP_PORT [ADMIN_PORT]
  put "$1.yaml" "apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: $1, namespace: default, labels: {$2}}
spec: {serviceAccount: $3, address: $4, proxyPort: $P_IN, adminPort: ${6:-$P_ADM}, ports: [{name: http, port: $5}]}"
}
wl web-1 "app: web, version: v1" web 127.0.0.2 "$P_APP1"
wl web-2 "app: web, version: v2" web 127.0.0.3 "$P_APP2"
wl client-1 "app: client" client 127.0.0.4 8080
wl ghost-1 "app: ghost" ghost 127.0.0.5 8080
for v in 1 2; do
  put "web-v$v.yaml" "apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: web-v$v, namespace: default}
spec: {selector: {app: web, version: v$v}, ports: [{port: 80, targetPort: http}]}"
done
put split.yaml "apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: web-split, namespace: default}
spec:
  service: web-split
  backends:
  - {service: web-v1, weight: 900m}
  - {service: web-v2, weight: 100m}"
put profile.yaml "apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web.default.svc.cluster.local, namespace: default}
spec:
  routes:
  - name: GET /status
    condition: {method: GET, pathRegex: '/status/[0-9]+'}
  - name: GET /flaky
    condition: {method: GET, pathRegex: '/flaky/[0-9]+'}"
WEB=web.default.$TD
printf '{"services": {"web.default.svc.cluster.local:80": {"endpoints": [
  {"addr": "127.0.0.2:%s", "identity": "%s", "port": %s},
  {"addr": "127.0.0.3:%s", "identity": "%s", "port": %s}]},
 "web-v1.default.svc.cluster.local:80": {"endpoints": [{"addr": "127.0.0.2:%s", "identity": "%s", "port": %s}]},
 "web-v2.default.svc.cluster.local:80": {"endpoints": [{"addr": "127.0.0.3:%s", "identity": "%s", "port": %s}]}}}\n' \
  "$P_IN" "$WEB" "$P_APP1" "$P_IN" "$WEB" "$P_APP2" "$P_IN" "$WEB" "$P_APP1" "$P_IN" "$WEB" "$P_APP2" >eps.json

# The servers read the same profiles: their route metrics (direction="inbound") are the
# server-side routes of routes svc/web and routes deploy/web.
server() { # N ADDRESS
  timeout 60 "$meshd" --identity-dir "web$1" --inbound-listen-addr "$2:$P_IN" --outbound-listen-addr "" \
    --admin-listen-addr "$2:$P_ADM" --inbound-ports "$P_APP1,$P_APP2" --profiles store >>"server$1.log" 2>&1 &
  pids+=($!)
}
server 1 127.0.0.2
SERVER1=$!
server 2 127.0.0.3
SERVER2=$!
# The client reads the profile from the same directory (meshd skips the kinds it does not use).
timeout 60 "$meshd" --identity-dir client --outbound-listen-addr "" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.4:$P_ADM" --endpoints eps.json --profiles store \
  --outbound-port-map "127.0.0.1:$P_WEB=web.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_SPLIT=web-split.default.svc.cluster.local:80" >client.log 2>&1 &
pids+=($!)
for a in 127.0.0.2 127.0.0.3 127.0.0.4; do wait_http "http://$a:$P_ADM/ready"; done
wait_http "http://127.0.0.1:$P_APP1/"
wait_http "http://127.0.0.1:$P_APP2/"
# Both endpoints warm (connections made) before mesh-viz's first sample: the requests
# counted below are then exactly the load's.
for _ in $(seq 20); do curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$P_WEB/warm"; done
curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$P_SPLIT/warm"

timeout 60 "$viz" --store-dir store --listen "127.0.0.1:$P_VIZ" --scrape-interval 1s \
  --retention 5m --debounce-ms 50 >viz.log 2>&1 &
VIZ=$!
pids+=($!)
# Ready once every target was tried (ghost-1's first scrape times out after 1 s).
for _ in $(seq 100); do curl -fsS -m 1 "http://127.0.0.1:$P_VIZ/ready" >/dev/null 2>&1 && break; sleep 0.05; done
curl -fsS -m 1 "http://127.0.0.1:$P_VIZ/ready" >/dev/null || fail "mesh-viz does not become ready"
V=(--viz-addr "127.0.0.1:$P_VIZ")
vz() { timeout 10 "$meshctl" viz "$@" "${V[@]}"; }
jq_() { "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print($1)" "$2"; }
check() { # PYTHON-EXPRESSION-OVER-d FILE MESSAGE
  "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if ($1) else 1)" "$2" ||
    fail "$3: $(cat "$2")"
}

# ---- the load: exactly 90 requests, 20 of them failing (500), over two routes and the rest ----
urls=()
for _ in $(seq 60); do urls+=(-o /dev/null "http://127.0.0.1:$P_WEB/status/200"); done
for _ in $(seq 20); do urls+=(-o /dev/null "http://127.0.0.1:$P_WEB/status/500"); done
for _ in $(seq 10); do urls+=(-o /dev/null "http://127.0.0.1:$P_WEB/other"); done
timeout 30 curl -s -m 5 -w '%{http_code}\n' "${urls[@]}" | sort | uniq -c >codes.txt
[ "$(tr -s ' \n' ' ' <codes.txt)" = " 70 200 20 500 " ] || fail "the load's answers: $(cat codes.txt)"
sleep 2.5 # two more scrapes

vz stat deploy -o json >stat.json || fail "meshctl viz stat: $(cat stat.json)"
check 'len(d) == 3 and [r["name"] for r in d] == ["client", "ghost", "web"]' stat.json "stat rows"
check 'd[2]["meshed"] == "2/2" and d[2]["requests"] == 90 and abs(d[2]["success"] - 70/90) < 1e-9' \
  stat.json "web's inbound requests and success rate"
# Connections: the client's pooled HTTP/2 connection may have gone idle (3 s) by now.
check 'abs(d[2]["rps"] * d[2]["window_s"] - 90) < 0.5 and d[2]["tcp_conn"] is not None' stat.json "web's rps x window"
check 'd[2]["latency_p50"] is not None and 0 < d[2]["latency_p50"] <= d[2]["latency_p95"] <= d[2]["latency_p99"] < 1000' \
  stat.json "web's latencies"
check 'd[1]["meshed"] == "0/1" and d[1]["success"] is None and "no answer within 1000 ms" in d[1]["unreachable"][0]["error"]' \
  stat.json "ghost (admin never answers)"
check 'd[0]["meshed"] == "1/1" and d[0]["requests"] == 0' stat.json "client (no inbound traffic)"
ok "stat deploy: web 90 requests, 77.78% success (70 of 90 sent succeeded), rps x window = 90; ghost 0/1 meshed"

vz stat po -o json >po.json || fail "stat po"
check '[r["name"] for r in d] == ["client-1", "ghost-1", "web-1", "web-2"] and
  d[2]["requests"] + d[3]["requests"] == 90 and d[0]["requests"] == 0 and d[1]["requests"] is None' \
  po.json "stat po: the 90 requests over web-1 and web-2"
vz stat deploy/web --from deploy/client -o json >from.json || fail "stat --from"
check 'len(d) == 1 and d[0]["requests"] == 90 and abs(d[0]["success"] - 70/90) < 1e-9 and d[0]["tcp_conn"] is not None' \
  from.json "stat deploy/web --from deploy/client (the client's outbound metrics)"
vz stat deploy --to svc/web -o json >to.json || fail "stat --to"
check '[r["requests"] for r in d] == [90, None, 0]' to.json "stat deploy --to svc/web"
ok "stat po: the 90 requests over the web Workloads; --from deploy/client and --to svc/web read the client's outbound metrics"

vz stat >stat.txt || fail "stat (text)"
head -1 stat.txt | grep -Eq '^NAME +MESHED +SUCCESS +RPS +LATENCY_P50 +LATENCY_P95 +LATENCY_P99 +TCP_CONN$' ||
  fail "stat's header: $(cat stat.txt)"
grep -Eq '^web +2/2 +77\.78% +[0-9.]+rps +[0-9]+ms +[0-9]+ms +[0-9]+ms +[0-9]+$' stat.txt || fail "stat's web row: $(cat stat.txt)"
grep -Eq '^ghost +0/1 +- +- +- +- +- +-$' stat.txt || fail "stat's ghost row: $(cat stat.txt)"
grep -q "default/ghost-1 is not reachable: no answer within 1000 ms" stat.txt || fail "stat: why ghost is not meshed"
ok "stat as text: aligned columns, '-' for no data, why ghost-1 is not reachable"

# ---- routes: the profile's routes, [DEFAULT] for the rest; effective vs actual --------------
vz routes svc/web -o json >routes.json || fail "routes: $(cat routes.json)"
check '[r["route"] for r in d] == ["GET /status", "GET /flaky", "[DEFAULT]"]' routes.json "routes in profile order"
check 'd[0]["requests"] == 80 and d[0]["success"] == 0.75 and d[2]["requests"] == 10 and d[2]["success"] == 1 and
  d[1]["requests"] is None and d[1]["success"] is None and d[0]["actual_rps"] > 0 and d[0]["latency_p99"] is not None' \
  routes.json "route counts (80 to /status/*, 20 of them 500; 10 to [DEFAULT])"
vz routes web -o wide >routes.txt || fail "routes -o wide"
head -1 routes.txt | grep -Eq '^ROUTE +SERVICE +EFFECTIVE_SUCCESS +EFFECTIVE_RPS +ACTUAL_SUCCESS +ACTUAL_RPS +LATENCY_P50' ||
  fail "routes -o wide header: $(cat routes.txt)"
grep -Eq '^GET /status +web +75\.00% +[0-9.]+rps +75\.00% +[0-9.]+rps' routes.txt || fail "routes -o wide: $(cat routes.txt)"
grep -Eq '^\[DEFAULT\] +web +100\.00%' routes.txt || fail "routes: [DEFAULT]: $(cat routes.txt)"
vz routes deploy/client --to svc/web -o json >rto.json || fail "routes --to"
check '[r["requests"] for r in d] == [80, None, 10] and d[0]["actual_rps"] > 0' rto.json "routes deploy/client --to svc/web"
ok "routes svc/web: GET /status 75%, GET /flaky no traffic, [DEFAULT] 100%; -o wide effective and actual"
# Without --to, a deployment's own server-side routes (its proxies' inbound route metrics),
# every service it served; the client serves none.
vz routes deploy/web -o json >rdep.json || fail "routes deploy/web: $(cat rdep.json)"
check '[(r["route"], r["service"], r["requests"]) for r in d] == [("GET /status", "web", 80),
  ("GET /flaky", "web", None), ("[DEFAULT]", "web", 10)] and d[0]["success"] == 0.75 and d[2]["success"] == 1 and
  d[0]["actual_success"] == 0.75 and d[0]["latency_p50"] is not None' rdep.json "routes deploy/web (server side)"
vz routes deploy/web >rdep.txt || fail "routes deploy/web (text)"
head -1 rdep.txt | grep -Eq '^ROUTE +SERVICE +SUCCESS +RPS +LATENCY_P50 +LATENCY_P95 +LATENCY_P99$' ||
  fail "routes deploy/web header: $(cat rdep.txt)"
grep -Eq '^GET /status +web +75\.00% +[0-9.]+rps +[0-9]+ms' rdep.txt || fail "routes deploy/web: $(cat rdep.txt)"
curl -fsS -m 5 "http://127.0.0.1:$P_VIZ/api/routes?resource=svc/web" >rsvc.json || fail "/api/routes?resource=svc/web"
check 'd["direction"] == "inbound" and d["rows"][0]["requests"] == 80' rsvc.json \
  "routes svc/web reads the server side once its proxies have route metrics"
vz routes deploy/client >rcli.txt || fail "routes deploy/client"
[ "$(cat rcli.txt)" = "No routes found." ] || fail "routes deploy/client (it serves nothing): $(cat rcli.txt)"
ok "routes deploy/web: web's server-side routes (GET /status 80 requests, 75%; GET /flaky -; [DEFAULT] 10); deploy/client serves none"

# ---- ts: the TrafficSplit's leaves, from the client's outbound route metrics ------------------
urls=()
for _ in $(seq 100); do urls+=(-o /dev/null "http://127.0.0.1:$P_SPLIT/split"); done
timeout 30 curl -s -m 5 -w '%{http_code}\n' "${urls[@]}" | sort | uniq -c >codes3.txt
[ "$(tr -s ' \n' ' ' <codes3.txt)" = " 100 200 " ] || fail "the split's answers: $(cat codes3.txt)"
sleep 2.2
vz stat ts -o json >ts.json || fail "stat ts"
check '[(r["name"], r["apex"], r["leaf"], r["weight"]) for r in d] == [("web-split", "web-split", "web-v1", "900m"),
  ("web-split", "web-split", "web-v2", "100m")] and d[0]["requests"] + d[1]["requests"] == 100 and
  d[0]["requests"] > d[1]["requests"] and d[0]["success"] == 1 and d[0]["latency_p50"] is not None' \
  ts.json "stat ts: 100 requests over the leaves (90/10)"
vz stat ts/web-split >ts.txt || fail "stat ts (text)"
head -1 ts.txt | grep -Eq '^NAME +APEX +LEAF +WEIGHT +SUCCESS +RPS +LATENCY_P50 +LATENCY_P95 +LATENCY_P99$' ||
  fail "stat ts header: $(cat ts.txt)"
grep -Eq '^web-split +web-split +web-v1 +900m +100\.00% +[0-9.]+rps' ts.txt || fail "stat ts rows: $(cat ts.txt)"
ok "stat ts: web-split's leaves web-v1 ($(jq_ 'int(d[0]["requests"])' ts.json)) and web-v2 ($(jq_ 'int(d[1]["requests"])' ts.json)) of 100, weights as written"

# ---- edges: the mTLS edge with both identities ----------------------------------------------
vz edges -o json >edges.json || fail "edges"
check "len(d) == 1 and d[0]['src'] == 'client' and d[0]['dst'] == 'web' and d[0]['secured'] is True and
  d[0]['client_id'] == 'client.default.$TD' and d[0]['server_id'] == 'web.default.$TD'" edges.json "edges"
vz edges po >edges.txt || fail "edges po"
head -1 edges.txt | grep -Eq '^SRC +DST +SRC_NS +DST_NS +SECURED +CLIENT_ID +SERVER_ID$' || fail "edges' header: $(cat edges.txt)"
grep -Eq "^client-1 +web-[12] +default +default +√ +client\.default\.$TD +web\.default\.$TD$" edges.txt ||
  fail "edges po: $(cat edges.txt)"
ok "edges: client -> web secured (√), client and server identities"

# ---- a window: no traffic in the last 2 s -----------------------------------------------------
sleep 2.2
vz stat deploy/web -t 2s -o json >idle.json || fail "stat -t 2s"
check 'd[0]["requests"] == 0 and d[0]["rps"] == 0 and d[0]["success"] is None and 1 <= d[0]["window_s"] <= 3' \
  idle.json "a 2 s window without traffic"
ok "stat -t 2s after 2 s of quiet: 0 requests, 0 rps, success '-'"

# ---- both web proxies restart: their counters start again from 0 -------------------------------
# Every later request reaches a fresh proxy, whose counters begin again below (or, for the
# proxy that had counted less, above) the last sample's: a plain newest-minus-base
# difference would lose requests or go negative.
kill "$SERVER1" "$SERVER2"
wait "$SERVER1" "$SERVER2" 2>/dev/null || true
server 1 127.0.0.2
server 2 127.0.0.3
wait_http "http://127.0.0.2:$P_ADM/ready"
wait_http "http://127.0.0.3:$P_ADM/ready"
sleep 1.2 # a scrape of the fresh proxy
urls=()
for _ in $(seq 30); do urls+=(-o /dev/null "http://127.0.0.1:$P_WEB/status/200"); done
timeout 30 curl -s -m 5 -w '%{http_code}\n' "${urls[@]}" | sort | uniq -c >codes2.txt
good=$(awk '$2 == 200 { print $1 }' codes2.txt)
sleep 2.5
vz stat deploy/web -o json >reset.json || fail "stat after the restart"
# 90 + the split's 100 + what the fresh proxies answered (a request sent on a connection the
# restarts dropped may fail before it reaches one), whichever proxy had counted more before.
check "d[0]['requests'] == 190 + $good and abs(d[0]['success'] - (170 + $good) / (190 + $good)) < 1e-9" \
  reset.json "after the restarts ($good of 30 succeeded)"
ok "web proxies restarted: counted from 0 again, 190 + $good requests in the window"

# ---- the store changes: a Workload without admin counts as not meshed ----------------------
wl web-3 "app: web" web 127.0.0.6 "$P_APP1" 0
for i in $(seq 40); do
  vz stat deploy/web -o json >s3.json
  "$PY" -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))[0]["meshed"] != "2/3")' s3.json && break
  [ "$i" = 40 ] && fail "web-3 added to the store is not counted: $(cat s3.json)"
  sleep 0.1
done
check '"adminPort 0" in d[0]["unreachable"][0]["error"]' s3.json "web-3 (adminPort 0)"
ok "a Workload added to the store counts at once (web 2/3 meshed; web-3 not scraped: adminPort 0)"

# ---- mesh-viz not answering, or down: meshctl fails within its 3 s -----------------------------
t0=$(now_ms)
rc=0
timeout 10 "$meshctl" viz stat --viz-addr "127.0.0.5:$P_ADM" >hung.out 2>&1 || rc=$?
took=$(($(now_ms) - t0))
[ "$rc" = 1 ] && grep -q "cannot reach mesh-viz at 127.0.0.5:$P_ADM: .*no answer within the timeout" hung.out ||
  fail "a mesh-viz that does not answer: rc $rc: $(cat hung.out)"
[ "$took" -ge 2900 ] && [ "$took" -lt 5000 ] || fail "a mesh-viz that does not answer: $took ms"
kill "$VIZ"
wait "$VIZ" 2>/dev/null || true
t0=$(now_ms)
rc=0
vz stat >down.out 2>&1 || rc=$?
took=$(($(now_ms) - t0))
[ "$rc" = 1 ] && grep -q "cannot reach mesh-viz at 127.0.0.1:$P_VIZ" down.out && grep -q "Is mesh-viz running" down.out ||
  fail "mesh-viz down: rc $rc: $(cat down.out)"
[ "$took" -lt 1000 ] || fail "mesh-viz down took $took ms"
ok "mesh-viz down: exit 1 in $took ms with the reason; not answering: exit 1 after the 3 s timeout"
echo "all mesh-viz checks passed"
