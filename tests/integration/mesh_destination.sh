#!/usr/bin/env bash
# mesh-destination end to end: watch streams (curl, nghttp) see store changes within a second; bad manifests, restarts, meshctl.
set -euo pipefail
daemon=$(realpath "$1")
meshctl=$(realpath "$2")
pki=$(realpath "$3")
. "$(dirname "$(realpath "$0")")/checks_lib.sh"
mkdir store
GET=/io.linkerd.proxy.destination.Destination/Get
PROFILE=/io.linkerd.proxy.destination.Destination/GetProfile


metric() { # NAME_WITH_LABELS: the value of a sample on /metrics
  timeout 10 curl -sS "http://127.0.0.1:$APORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}

# watch NAME PATH AUTHORITY [TOKEN]: a curl stream in the background, lines into NAME.out.
watch() {
  local body="{\"path\":\"$3\"${4:+,\"context_token\":\"$4\"}}"
  timeout 60 curl -sS -N --http2-prior-knowledge -H 'content-type: application/json' \
    --data-binary "$body" "http://127.0.0.1:$PORT$2" >"$1.out" 2>"$1.err" &
  pids+=($!)
}

lines() { wc -l <"$1" | tr -d ' '; }

start() { # [PORT]: the log is appended to, so wait for one more "listening" line
  local before
  before=$(grep -c "admin .* listening" daemon.log 2>/dev/null || true)
  timeout 120 "$daemon" --store-dir store --listen "127.0.0.1:${1:-0}" --admin 127.0.0.1:0 \
    --debounce-ms 100 2>>daemon.log &
  dpid=$!
  pids+=("$dpid")
  for _ in $(seq 200); do
    [ "$(grep -c "admin .* listening" daemon.log 2>/dev/null || true)" -gt "${before:-0}" ] && break
    sleep 0.05
  done
  PORT=$(sed -n 's/.*Destination .* listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' daemon.log | tail -1)
  APORT=$(sed -n 's/.*admin .* listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' daemon.log | tail -1)
  [ -n "$PORT" ] && [ -n "$APORT" ] || { echo "FAIL: mesh-destination did not start"; cat daemon.log; exit 1; }
}

# ---- The store: a Service, a workload behind it, a profile and a split.
put web.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, protocol: http}
  - {name: db, port: 5432, protocol: opaque}
EOF
put web-1.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, address: 127.0.0.2, ports: [{name: http, port: 8080}]}
EOF
put profile.yaml <<'EOF'
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web.shop.svc.cluster.local, namespace: shop}
spec:
  routes:
  - name: items
    condition: {method: GET, pathRegex: '/items/[^/]*'}
    timeout: 2s
    isRetryable: true
---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: web-split, namespace: shop}
spec:
  service: web
  backends: [{service: web-v1, weight: 90}, {service: web-v2, weight: 10}]
EOF

start
matches start daemon.log "store store loaded: 4 documents"
equals ready "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/ready")" 200
equals live "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/live")" 200

# ---- meshctl diagnostics endpoints: a real client of the daemon.
checks=$((checks + 1))
timeout 20 "$meshctl" diagnostics endpoints --destination "127.0.0.1:$PORT" web.shop.svc.cluster.local:80 \
  web:5432 -n shop >eps.out 2>eps.err || fail "diagnostics endpoints: exit $? ($(cat eps.err))"
matches endpoints eps.out "^NAMESPACE +IP +PORT +POD +SERVICE +IDENTITY$"
matches endpoints eps.out "^shop +127\.0\.0\.2 +8080 +web-1 +web\.shop +web\.shop\.serviceaccount\.identity\.linkerd\.cluster\.local$"
matches endpoints eps.out "^shop +127\.0\.0\.2 +5432 +web-1 +web\.shop "
checks=$((checks + 1))
got=0
timeout 20 "$meshctl" diagnostics endpoints --destination "127.0.0.1:$PORT" nope.shop:80 >none.out 2>none.err || got=$?
equals no-endpoints-exit "$got" 1
matches no-endpoints none.err "nope\.shop:80: no endpoints found \(no such service\)"
timeout 20 "$meshctl" diagnostics endpoints --destination "127.0.0.1:$PORT" web.shop:80 -o json >eps.json
checks=$((checks + 1))
python3 -c 'import json,sys; r=json.load(open("eps.json")); assert len(r)==1 and r[0]["addr"]=="127.0.0.2:4143" and r[0]["port"]==8080, r' ||
  fail "diagnostics endpoints -o json"
timeout 20 "$meshctl" diagnostics profile --destination "127.0.0.1:$PORT" web.shop:80 >profile.json
checks=$((checks + 1))
python3 - <<'EOF' || fail "diagnostics profile"
import json
p = json.load(open("profile.json"))
assert p["fully_qualified_name"] == "web.shop.svc.cluster.local", p
assert p["routes"][0]["metrics_labels"] == {"route": "items"} and p["routes"][0]["timeout"] == "2s", p
assert p["dst_overrides"] == [{"authority": "web-v1.shop.svc.cluster.local:80", "weight": 9000},
                              {"authority": "web-v2.shop.svc.cluster.local:80", "weight": 1000}], p
EOF

# ---- Streams: the first message at once, then changes within a second.
watch get "$GET" "web:80" '{\"ns\":\"shop\"}'
watch prof "$PROFILE" "web.shop.svc.cluster.local:80"
within first-get 2000 get.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.2:4143","weight":1,.*"protocol_hint":\{"h2":\{\}\},"target_port":8080\}\],"metric_labels":\{"namespace":"shop","service":"web"\}\}\}$'
within first-profile 2000 prof.out '"dst_overrides":\[\{"authority":"web-v1\.shop\.svc\.cluster\.local:80","weight":9000\}'
# nghttp reads the same stream (it ends when nghttp's timeout stops it).
printf '{"path":"web.shop:80"}' >req.json
timeout 3 stdbuf -oL nghttp -d req.json "http://127.0.0.1:$PORT$GET" >nghttp.out 2>&1 || true
matches nghttp nghttp.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.2:4143"'

put web-2.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, address: 127.0.0.3, ports: [{name: http, port: 8081}], weight: 3}
EOF
within add 1000 get.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.3:4143","weight":3,.*"target_port":8081\}\]'
echo "add reached the stream in ${took} ms"
equals add-only-new "$(grep -c '127\.0\.0\.2' get.out)" 1

# A TrafficSplit edit reaches the profile stream.
sed -i 's/weight: 90/weight: 50/; s/weight: 10}/weight: 50}/' store/profile.yaml
within split-edit 1000 prof.out '"dst_overrides":\[\{"authority":"web-v1\.shop\.svc\.cluster\.local:80","weight":5000\}'

rm store/web-2.yaml
within remove 1000 get.out '^\{"remove":\{"addrs":\[\{"addr":"127\.0\.0\.3:4143"\}\]\}\}$'
echo "remove reached the stream in ${took} ms"

# ---- A broken manifest: nothing is sent, the old state is served, the error is reported.
sleep 0.3
before_get=$(lines get.out) before_prof=$(lines prof.out)
put broken.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-3, namespace: shop, labels: {app: web}}
spec: {address: 10.0.0.300, ports: [{name: http, port: 8082}]}
EOF
# Wait for the refusal to be counted (bounded), then check that nothing was sent.
for _ in $(seq 60); do [ "$(metric 'destination_store_reloads_total{result="refused"}')" = 1 ] && break; sleep 0.05; done
sleep 0.2
equals broken-get-silent "$(lines get.out)" "$before_get"
equals broken-profile-silent "$(lines prof.out)" "$before_prof"
equals refused "$(metric 'destination_store_reloads_total{result="refused"}')" 1
equals failing "$(metric destination_store_failing)" 1
timeout 10 curl -sS "http://127.0.0.1:$APORT/metrics" >metrics.out
matches error-metric metrics.out '^destination_store_last_error_info\{error="store/broken\.yaml:4:17: error: spec\.address: .10\.0\.0\.300. is not an IPv4 or IPv6 address"\} 1$'
timeout 10 curl -sS "http://127.0.0.1:$APORT/store" >store.out
matches store-page store.out "^failing: store/broken\.yaml:4:17"
matches log daemon.log "change refused, still serving generation [0-9]+: store/broken\.yaml:4:17"
timeout 20 "$meshctl" diagnostics endpoints --destination "127.0.0.1:$PORT" web.shop:80 >eps2.out
matches still-served eps2.out "^shop +127\.0\.0\.2 +8080 +web-1 "
absent still-served eps2.out "web-3"
checks=$((checks + 1))
got=0
"$meshctl" get workloads -n shop --store-dir store >get.err 2>&1 || got=$?
equals meshctl-get-broken "$got" 1
matches meshctl-get-broken get.err "store/broken\.yaml:4:17: error: spec\.address"
promtool check metrics <metrics.out >promtool.out 2>&1 || true
absent promtool promtool.out "error"

# Fixed: served again, not failing.
sed -i 's/10\.0\.0\.300/127.0.0.4/' store/broken.yaml
within fixed 1000 get.out '"addr":"127\.0\.0\.4:4143"'
equals not-failing "$(metric destination_store_failing)" 0

# ---- meshctl get reads the same directory.
"$meshctl" get svc -n shop --store-dir store >svc.out
matches get-svc svc.out "^NAME +PORTS +SELECTOR$"
matches get-svc svc.out "^web +80/http,5432/opaque +app=web$"
"$meshctl" get wl -A --store-dir store -o wide >wl.out
matches get-wide wl.out "^shop +web-1 +127\.0\.0\.2 +web +app=web +store/web-1\.yaml:1$"
"$meshctl" get workload web-1 -n shop --store-dir store -o json >wl.json
checks=$((checks + 1))
python3 -c 'import json; d=json.load(open("wl.json")); assert d["kind"]=="Workload" and d["spec"]["address"]=="127.0.0.2", d' ||
  fail "get -o json"
"$meshctl" get ts -n shop --store-dir store -o yaml >ts.yaml
matches get-yaml ts.yaml "^kind: List$"
matches get-yaml ts.yaml "^ +- service: web-v1$"
checks=$((checks + 1))
got=0
"$meshctl" get svc nope --store-dir store 2>nf.err || got=$?
equals get-not-found "$got" 1

# ---- Bad requests: clear errors, the streams unaffected.
status=$(curl -sS --http2-prior-knowledge -o bad.out -w '%{http_code}' --data-binary 'not json' "http://127.0.0.1:$PORT$GET")
equals bad-json "$status" 400
matches bad-json bad.out '"code":"invalid_argument"'
status=$(curl -sS --http2-prior-knowledge -o bad.out -w '%{http_code}' --data-binary '{"path":"a b:80"}' "http://127.0.0.1:$PORT$PROFILE")
equals bad-authority "$status" 400
long=$(head -c 600 /dev/zero | tr '\0' a)
status=$(curl -sS --http2-prior-knowledge -o bad.out -w '%{http_code}' --data-binary "{\"path\":\"$long:80\"}" "http://127.0.0.1:$PORT$GET")
equals huge-path "$status" 400
status=$(curl -sS --http2-prior-knowledge -o bad.out -w '%{http_code}' --data-binary '{}' "http://127.0.0.1:$PORT/io.linkerd.proxy.destination.Destination/Nope")
equals unknown-method "$status" 404
timeout 3 curl -sS -N --http2-prior-knowledge --data-binary '{"path":"nope.shop:80"}' "http://127.0.0.1:$PORT$GET" >unknown.out 2>/dev/null || true
matches unknown-service unknown.out '^\{"no_endpoints":\{"exists":false\}\}$'

# ---- Restart: a reconnecting client gets the current state at once.
kill "$dpid"
wait "$dpid" 2>/dev/null || true
old_port=$PORT
echo "--- restart" >>daemon.log
start "$old_port"
equals same-port "$PORT" "$old_port"
watch again "$GET" "web.shop.svc.cluster.local:80"
within reconnect 2000 again.out '^\{"add":\{"addrs":\[.*"127\.0\.0\.2:4143".*"127\.0\.0\.4:4143".*\]'
absent reconnect again.out "127\.0\.0\.3"
echo "a reconnecting client had the current state in ${took} ms"

kill "$dpid"
wait "$dpid" 2>/dev/null || true
matches stop daemon.log "SIGTERM: shutting down"

# ---- A bound on watch streams: the one past it is refused, the others go on.
timeout 60 "$daemon" --store-dir store --listen 127.0.0.1:0 --admin 127.0.0.1:0 --max-streams 2 \
  2>cap.log &
cpid=$!
pids+=("$cpid")
for _ in $(seq 100); do grep -q "admin .* listening" cap.log && break; sleep 0.05; done
CPORT=$(sed -n 's/.*Destination .* listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' cap.log)
saved_port=$PORT
PORT=$CPORT
watch cap1 "$GET" "web.shop:80"
watch cap2 "$PROFILE" "web.shop:80"
within cap-first 2000 cap1.out '^\{"add"'
within cap-second 2000 cap2.out '^\{"fully_qualified_name"'
status=$(curl -sS --http2-prior-knowledge -o cap3.out -w '%{http_code}' --data-binary '{"path":"web.shop:80"}' "http://127.0.0.1:$CPORT$GET")
equals over-the-cap "$status" 429
matches over-the-cap cap3.out '"code":"resource_exhausted"'
put web-5.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-5, namespace: shop, labels: {app: web}}
spec: {address: 127.0.0.5, ports: [{name: http, port: 8085}]}
EOF
within cap-still-served 1000 cap1.out '"addr":"127\.0\.0\.5:4143"'
rm store/web-5.yaml
PORT=$saved_port
kill "$cpid"
wait "$cpid" 2>/dev/null || true

# ---- mTLS: the same answers to clients with a mesh certificate, none to others.
checks=$((checks + 1))
got=0
timeout 10 "$daemon" --store-dir store --listen 0.0.0.0:0 --admin 127.0.0.1:0 2>open.err || got=$?
equals plaintext-off-loopback "$got" 2
matches plaintext-off-loopback open.err "only loopback addresses are served in plaintext"
DST=linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local
mkdir pki
"$pki" pki dst linkerd linkerd-destination cli shop web >/dev/null
timeout 120 "$daemon" --store-dir store --identity-dir pki/dst --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
  2>tls.log &
tpid=$!
pids+=("$tpid")
for _ in $(seq 100); do grep -q "admin .* listening" tls.log && break; sleep 0.05; done
TPORT=$(sed -n 's/.*Destination .* listening on 127\.0\.0\.1:\([0-9]*\) over mTLS.*/\1/p' tls.log)
[ -n "$TPORT" ] || { echo "FAIL: mesh-destination did not start with --identity-dir"; cat tls.log; exit 1; }
matches tls-start tls.log "serving as $DST \(start\)"
checks=$((checks + 1))
timeout 20 "$meshctl" diagnostics endpoints --destination "127.0.0.1:$TPORT" --identity-dir pki/cli \
  web.shop:80 >tls-eps.out 2>tls-eps.err || fail "endpoints over mTLS: $(cat tls-eps.err)"
matches tls-endpoints tls-eps.out "^shop +127\.0\.0\.2 +8080 +web-1 +web\.shop "
checks=$((checks + 1))
got=0
timeout 20 "$meshctl" diagnostics endpoints --destination "127.0.0.1:$TPORT" --anchors pki/cli/ca.crt \
  web.shop:80 >/dev/null 2>tls-nocert.err || got=$?
equals tls-no-client-cert "$got" 1
matches tls-no-client-cert tls-nocert.err "cannot reach mesh-destination"
checks=$((checks + 1))
got=0
timeout 20 "$meshctl" diagnostics profile --destination "127.0.0.1:$TPORT" --identity-dir pki/cli \
  --destination-identity web.shop.serviceaccount.identity.linkerd.cluster.local web.shop:80 \
  >/dev/null 2>tls-id.err || got=$?
equals tls-wrong-server "$got" 1
matches tls-wrong-server tls-id.err "cannot reach mesh-destination: .*identity"
timeout 5 curl -sS -N --http2 --cacert pki/cli/ca.crt --cert pki/cli/leaf.crt --key pki/cli/key.pem \
  --connect-to "$DST:443:127.0.0.1:$TPORT" --data-binary '{"path":"web.shop:80"}' \
  "https://$DST$GET" >tls-curl.out 2>/dev/null || true
matches tls-curl tls-curl.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.2:4143"'
kill "$tpid"
wait "$tpid" 2>/dev/null || true
echo "$checks checks, $failures failed"
[ "$failures" -eq 0 ]
