#!/usr/bin/env bash
# mesh-destination's inbound policy stream (curl) follows store edits within a second and keeps the last good state; meshctl authz on the seed's exam-api policy.
set -euo pipefail
daemon=$(realpath "$1")
meshctl=$(realpath "$2")
seed=$(realpath "$3")
. "$(dirname "$(realpath "$0")")/checks_lib.sh"
mkdir store
WATCH=/io.linkerd.proxy.inbound.InboundServerPolicies/WatchWorkload
GET=/io.linkerd.proxy.destination.Destination/Get

lines() { wc -l <"$1" | tr -d ' '; }

# lines_within NAME MS FILE N: FILE has N lines within MS milliseconds; sets $took.
lines_within() {
  local t0 deadline
  t0=$(now_ms)
  deadline=$((t0 + $2))
  checks=$((checks + 1))
  while [ "$(lines "$3")" -lt "$4" ]; do
    if [ "$(now_ms)" -gt "$deadline" ]; then
      fail "$1: fewer than $4 lines in $3 after $2 ms:"
      sed 's/^/  /' "$3"
      took=-1
      return
    fi
    sleep 0.01
  done
  took=$(($(now_ms) - t0))
}

# line N FILE: line N of FILE.
line() { sed -n "$1p" "$2"; }

# docs N FILE: "Kind/name ..." of the documents of line N.
docs() { line "$1" "$2" | jq -r '[.documents[] | .kind + "/" + .metadata.name] | join(" ")'; }


metric() { # NAME_WITH_LABELS: the value of a sample on /metrics
  timeout 10 curl -sS "http://127.0.0.1:$APORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}

# ask BODY: a WatchWorkload request that is answered at once; status and body into ask.out.
ask() {
  timeout 10 curl -sS --http2-prior-knowledge -H 'content-type: application/json' \
    -o ask.out -w '%{http_code}' --data-binary "$1" "http://127.0.0.1:$PORT$WATCH"
}

# ---- The store: the seed's exam-api policy, a Workload it selects and one it does not.
cp "$seed/exam-api-policy.yaml" store/exam-api-policy.yaml
put workloads.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: exam-api-1, namespace: production, labels: {app: exam-api, version: v1}}
spec: {serviceAccount: exam-api, address: 127.0.0.2, ports: [{name: http, port: 8080}, {name: admin, port: 9901}]}
---
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: production, labels: {app: web}}
spec: {address: 127.0.0.3}
EOF

# ---- meshctl authz on the seed's policy, straight from the directory.
timeout 10 "$meshctl" authz exam-api-1 -n production --store-dir store >authz.txt 2>authz.err ||
  fail "meshctl authz exited $?: $(cat authz.err)"
matches "authz: the workload" authz.txt '^Workload production/exam-api-1$'
matches "authz: header" authz.txt '^PORT +SERVER +PROTOCOL +ROUTE +AUTHORIZATION +CLIENTS$'
# The seed's ServerAuthorization: two serviceAccounts made whole and one identity, on the route.
matches "authz: exam-api-authz" authz.txt \
  '^8080/http +exam-api-server +HTTP/2 +exam-routes +serverauthorization/exam-api-authz +mTLS identities frontend\.production\.serviceaccount\.identity\.linkerd\.cluster\.local, frontend-service\.production\.serviceaccount\.identity\.linkerd\.cluster\.local, mobile-api-service\.production\.serviceaccount\.identity\.linkerd\.cluster\.local$'
matches "authz: the Server's accessPolicy" authz.txt \
  '^8080/http +exam-api-server +HTTP/2 +exam-routes +accessPolicy/deny +no one$'
# No Server selects port 9901: the default policy decides it, and every undeclared port.
matches "authz: an unselected declared port" authz.txt \
  '^9901/admin +default +unknown +default +default/all-unauthenticated +anyone \(unauthenticated\)$'
matches "authz: other ports" authz.txt '^\* +default +unknown +default +default/all-unauthenticated +anyone'
equals "authz: rows" "$(grep -cE '^(8080/http|9901/admin|\*) ' authz.txt)" 4

timeout 10 "$meshctl" authz exam-api-1 -n production --store-dir store -o json \
  --default-inbound-policy cluster-authenticated >authz.json
equals "authz json: server" "$(jq -r '.ports[0].server.name' authz.json)" exam-api-server
equals "authz json: routes" "$(jq -r '.ports[0].server.routes | map(.name + ":" + (.rules|tostring)) | join(",")' authz.json)" \
  "exam-routes:2"
equals "authz json: identities" "$(jq -r '.ports[0].server.authorizations[0].clients[0].identities | length' authz.json)" 3
equals "authz json: authentication" "$(jq -r '.ports[0].server.authorizations[0].clients[0].authentication' authz.json)" mesh-tls
equals "authz json: default" "$(jq -r '.default.policy' authz.json)" cluster-authenticated
equals "authz json: default networks" "$(jq -r '.default.authorization.clients[0].networks[0].cidr' authz.json)" 10.0.0.0/8
equals "authz json: port 9901" "$(jq -r '.ports[1] | "\(.port) \(.server)"' authz.json)" "9901 null"

rc=0
timeout 10 "$meshctl" authz nope -n production --store-dir store >nope.out 2>nope.err || rc=$?
equals "authz: unknown workload exit" "$rc" 1
matches "authz: unknown workload says so" nope.err 'no Workload "nope" in namespace production'

# ---- The stream.
timeout 60 "$daemon" --store-dir store --listen 127.0.0.1:0 --admin 127.0.0.1:0 --debounce-ms 50 \
  --max-streams 2 2>daemon.log &
pids+=($!)
for _ in $(seq 200); do
  grep -q "admin .* listening" daemon.log 2>/dev/null && break
  sleep 0.05
done
PORT=$(sed -n 's/.*Destination .* listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' daemon.log | tail -1)
APORT=$(sed -n 's/.*admin .* listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' daemon.log | tail -1)
[ -n "$PORT" ] && [ -n "$APORT" ] || { echo "FAIL: mesh-destination did not start"; cat daemon.log; exit 1; }
matches "the log names the stream" daemon.log 'InboundServerPolicies \(WatchWorkload\) listening'

# Errors come before any stream is open (a full service answers 429 first).
equals "unknown workload: status" "$(ask '{"workload":"production:nope"}')" 404
matches "unknown workload: says which" ask.out \
  '"code":"not_found","message":"no Workload '"'"'nope'"'"' in namespace '"'"'production'"'"' in the store"'
equals "not ns:name: status" "$(ask '{"workload":"exam-api-1"}')" 400
matches "not ns:name: says the form" ask.out '"code":"invalid_argument".*namespace:name'
equals "too long: status" "$(ask "{\"workload\":\"production:$(printf 'a%.0s' $(seq 600))\"}")" 400

timeout 60 curl -sS -N --http2-prior-knowledge -H 'content-type: application/json' \
  --data-binary '{"workload":"production:exam-api-1"}' "http://127.0.0.1:$PORT$WATCH" \
  >watch.out 2>watch.err &
pids+=($!)
lines_within "first message at once" 1000 watch.out 1
echo "first message: ${took} ms"
equals "first: documents" "$(docs 1 watch.out)" \
  "Server/exam-api-server ServerAuthorization/exam-api-authz HttpRoute/exam-routes"
equals "first: workload" "$(line 1 watch.out | jq -c '[.workload.namespace, .workload.name, .workload.labels.app, .exists]')" \
  '["production","exam-api-1","exam-api",true]'

# An edit that concerns it: an AuthorizationPolicy opening the Server to a network.
t0=$(now_ms)
put open.yaml <<'EOF'
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: exam-api-probes, namespace: production}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: exam-api-server}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: probes}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: probes, namespace: production}
spec: {networks: [{cidr: 10.10.0.0/16}]}
EOF
lines_within "edit delivered" 1000 watch.out 2
echo "edit delivered after $(($(now_ms) - t0)) ms"
equals "edit: documents" "$(docs 2 watch.out)" \
  "Server/exam-api-server ServerAuthorization/exam-api-authz HttpRoute/exam-routes AuthorizationPolicy/exam-api-probes NetworkAuthentication/probes"

# An edit that does not concern it sends nothing.
put unrelated.yaml <<'EOF'
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: web-http, namespace: production}
spec: {podSelector: {matchLabels: {app: web}}, port: 80}
EOF
for _ in $(seq 100); do
  grep -q "generation 3" daemon.log && break
  sleep 0.02
done
sleep 0.3
equals "unrelated edit: nothing sent" "$(lines watch.out)" 2

# A bad policy file: refused, the last good state stays and nothing is sent.
put bad.yaml <<'EOF'
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: exam-api-extra, namespace: production}
spec: {podSelector: {matchLabels: {app: exam-api}}, port: 9901, proxyProtocol: http/2}
EOF
for _ in $(seq 100); do
  [ "$(metric destination_store_failing)" = 1 ] && break
  sleep 0.02
done
equals "bad file: refused" "$(metric destination_store_failing)" 1
matches "bad file: the error is logged" daemon.log "bad\.yaml:4:.*proxyProtocol 'http/2'"
sleep 0.3
equals "bad file: nothing sent" "$(lines watch.out)" 2
rm store/bad.yaml
for _ in $(seq 100); do
  [ "$(metric destination_store_failing)" = 0 ] && break
  sleep 0.02
done
equals "bad file gone: store good again" "$(metric destination_store_failing)" 0
sleep 0.2
equals "bad file gone: the state did not change" "$(lines watch.out)" 2

# The Workload leaves the store: it is told so; it comes back: its policy again.
cp store/workloads.yaml workloads.keep
put workloads.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: production, labels: {app: web}}
spec: {address: 127.0.0.3}
EOF
lines_within "workload gone" 1000 watch.out 3
equals "workload gone: message" "$(line 3 watch.out | jq -c '[.exists, (.documents | length)]')" '[false,0]'
put workloads.yaml <workloads.keep
lines_within "workload back" 1000 watch.out 4
equals "workload back: documents" "$(line 4 watch.out | jq -r '.documents | length')" 5

# The stream counts in --max-streams with Get's: the third is refused.
timeout 60 curl -sS -N --http2-prior-knowledge -H 'content-type: application/json' \
  --data-binary '{"path":"web.production:80"}' "http://127.0.0.1:$PORT$GET" >get.out 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  [ "$(metric 'destination_streams{method="get"}')" = 1 ] && break
  sleep 0.02
done
equals "policy streams gauge" "$(metric 'destination_streams{method="policy"}')" 1
equals "max streams: status" "$(ask '{"workload":"production:exam-api-1"}')" 429
matches "max streams: code" ask.out '"code":"resource_exhausted"'

trap - ERR
echo "$checks checks, $failures failed"
[ "$failures" -eq 0 ]
