#!/usr/bin/env bash
# Integration: inbound authorization in meshd: the seed's exam-api Server, ServerAuthorization and routes, enforced per request and per connection for real mTLS clients with different identities.
set -euo pipefail
meshd=$(realpath "$1")  # meson may pass paths relative to the build dir
pki=$(realpath "$2")
load=$(realpath "$3")
peers=$(realpath "$4")
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"
EXAM=exam-api.production.serviceaccount.identity.linkerd.cluster.local
FRONTEND=frontend.production.serviceaccount.identity.linkerd.cluster.local

# Identities: the seed authorizes the frontend-service and mobile-api-service
# accounts, and the frontend identity by name; other-service is no one's.
"$pki" "$tmp" server production exam-api frontend production frontend-service \
  mobile production mobile-api-service other production other-service \
  named production frontend >/dev/null

read -r P_APP P_APP2 P_ECHO P_IN P_SADM P_F P_M P_O P_N P_FADM P_MADM P_OADM P_NADM P_FECHO P_OECHO \
  <<<"$(timeout 20 "$PY" "$load" free-ports 15)"
timeout 170 "$PY" "$peers" backend "$P_APP" exam-api >app.log 2>&1 &
pids+=($!)
timeout 170 "$PY" "$peers" backend "$P_APP2" other-port >app2.log 2>&1 &
pids+=($!)
timeout 170 "$PY" "$load" echo-server "$P_ECHO" /dev/null >echo.log 2>&1 &
pids+=($!)

mkdir policy
# The seed's manifests with the port this test's application listens on.
sed "s/port: 8080/port: $P_APP/" "$(dirname "$peers")/../data/seed/exam-api-policy.yaml" >policy/exam-api.yaml
authz_echo() { # identities allowed on the opaque echo port
  cat >policy/echo.tmp <<EOF
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: echo, namespace: production}
spec:
  podSelector: {matchLabels: {app: exam-api}}
  port: $P_ECHO
  proxyProtocol: opaque
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: echo-authz, namespace: production}
spec:
  server: {name: echo}
  client:
    meshTLS:
      serviceAccounts: [$1]
EOF
  mv policy/echo.tmp policy/echo.yaml
}
authz_echo "{name: frontend-service}"

timeout 170 "$meshd" --identity-dir server --inbound-listen-addr "127.0.0.2:$P_IN" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.2:$P_SADM" --policy policy --workload-namespace production \
  --workload-labels app=exam-api,version=v1 --default-inbound-policy deny >server.log 2>&1 &
pids+=($!)
client() { # identity-dir listen-port admin-port [echo-port]
  cat >"eps-$1.json" <<EOF
{"services": {
  "exam-api.production.svc.cluster.local:80": {"endpoints": [{"addr": "127.0.0.2:$P_IN", "identity": "$EXAM", "port": $P_APP}]},
  "other.production.svc.cluster.local:80": {"endpoints": [{"addr": "127.0.0.2:$P_IN", "identity": "$EXAM", "port": $P_APP2}]},
  "echo.production.svc.cluster.local:7": {"endpoints": [{"addr": "127.0.0.2:$P_IN", "identity": "$EXAM", "port": $P_ECHO}]}}}
EOF
  local maps=(--outbound-port-map "127.0.0.1:$2=exam-api.production.svc.cluster.local:80")
  [ -n "${4:-}" ] && maps+=(--outbound-port-map "127.0.0.1:$4=echo.production.svc.cluster.local:7")
  timeout 170 "$meshd" --identity-dir "$1" --inbound-listen-addr "" --outbound-listen-addr "" \
    --admin-listen-addr "127.0.0.1:$3" --endpoints "eps-$1.json" --opaque-ports 7 "${maps[@]}" >"$1.log" 2>&1 &
  pids+=($!)
}
client frontend "$P_F" "$P_FADM" "$P_FECHO"
client mobile "$P_M" "$P_MADM"
client other "$P_O" "$P_OADM" "$P_OECHO"
client named "$P_N" "$P_NADM"

wait_http "http://127.0.0.2:$P_SADM/ready"
for a in "$P_FADM" "$P_MADM" "$P_OADM" "$P_NADM"; do wait_http "http://127.0.0.1:$a/ready"; done
wait_http "http://127.0.0.1:$P_APP/"
grep -q 'policy policy loaded: 2 servers' server.log || fail "the policy did not load: $(grep policy server.log)"

code() { curl -s -o body.tmp -D head.tmp -w '%{http_code}' -m 10 "$@"; }
perr() { grep -i '^l5d-proxy-error:' head.tmp | tr -d '\r' | cut -d' ' -f2-; }
smetrics() { curl -fsS -m 5 "http://127.0.0.2:$P_SADM/metrics" >s.prom && cat s.prom; }

# ---- per request: identities and routes --------------------------------------------------------
for who in "$P_F:frontend-service" "$P_M:mobile-api-service" "$P_N:the frontend identity"; do
  c=$(code "http://127.0.0.1:${who%%:*}/api/v1/public/exams")
  [ "$c" = 200 ] || fail "${who#*:} on /api/v1/public: $c $(perr)"
done
c=$(code "http://127.0.0.1:$P_O/api/v1/public/exams")
[ "$c" = 403 ] && perr | grep -q unauthorized || fail "other-service on /api/v1/public: $c $(perr)"
c=$(code -H "l5d-client-id: $FRONTEND" "http://127.0.0.1:$P_O/api/v1/public/exams")
[ "$c" = 403 ] || fail "a spoofed l5d-client-id let other-service in: $c"
ok "authorized service accounts and identity pass (200); other-service gets 403 (a spoofed l5d-client-id changes nothing)"

c=$(code "http://127.0.0.1:$P_F/api/v1/exams/7/questions")
[ "$c" = 404 ] && perr | grep -q route_not_found || fail "a path no route matches: $c $(perr)"
c=$(code -H 'authorization: Bearer' "http://127.0.0.1:$P_F/anything")
[ "$c" = 200 ] || fail "the premium rule's header match (ORed with its path, as written): $c"
[ "$(code "http://127.0.0.1:$P_F/api/v1/premium/x")" = 200 ] || fail "/api/v1/premium for frontend"
[ "$(code "http://127.0.0.1:$P_O/api/v1/premium/x")" = 403 ] || fail "/api/v1/premium for other-service"
ok "routes: 404 where no route matches; the premium rule's path and header matches (ORed, as the seed writes them)"

# ---- a port no Server selects: the default policy (deny here) ----------------------------------------
curl -fsS -m 5 -H 'l5d-dst-override: other.production.svc.cluster.local:80' "http://127.0.0.1:$P_F/" >/dev/null 2>&1 &&
  fail "the default policy (deny) let a request through"
c=$(code -H 'l5d-dst-override: other.production.svc.cluster.local:80' "http://127.0.0.1:$P_F/")
[ "$c" = 403 ] || fail "default deny: $c"
ok "a port no Server selects follows --default-inbound-policy deny (403)"

# ---- per connection: the opaque port ---------------------------------------------------------------
timeout 10 "$PY" "$load" check "$P_FECHO" 1000 >/dev/null || fail "frontend on the opaque echo port"
if timeout 10 "$PY" "$load" check "$P_OECHO" 1000 >/dev/null 2>&1; then fail "other-service reached the opaque port"; fi
smetrics >/dev/null
grep -q "^inbound_tcp_authz_deny_total{srv_kind=\"server\",srv_name=\"echo\"} 1" s.prom ||
  fail "the refused connection: $(grep tcp_authz s.prom)"
ok "opaque port: frontend's connection spliced, other-service's refused before any byte reached the app"

# ---- metrics -----------------------------------------------------------------------------------------
smetrics >/dev/null
grep -q '^inbound_http_authz_allow_total{srv_kind="server",srv_name="exam-api-server",route_kind="httproute",route_name="exam-routes",authz_kind="serverauthorization",authz_name="exam-api-authz"}' s.prom ||
  fail "allow metric: $(grep authz_allow s.prom)"
grep -q '^inbound_http_authz_deny_total{srv_kind="server",srv_name="exam-api-server",route_kind="httproute",route_name="exam-routes"} [2-9]' s.prom ||
  fail "deny metric: $(grep authz_deny s.prom)"
grep -q '^inbound_http_route_not_found_total{srv_kind="server",srv_name="exam-api-server"} 1' s.prom ||
  fail "route_not_found metric: $(grep not_found s.prom)"
ok "inbound_http_authz_allow/deny_total, inbound_http_route_not_found_total and inbound_tcp_authz_deny_total name the deciding resources"

# ---- changes: open connections follow them; a bad one is refused ------------------------------------------
n=$(grep -c 'policy policy loaded' server.log)
sed -i 's/      - name: mobile-api-service/      - name: mobile-api-service\n      - name: other-service/' policy/exam-api.yaml
for _ in $(seq 50); do [ "$(grep -c 'policy policy loaded' server.log)" -gt "$n" ] && break; sleep 0.1; done
c=$(code "http://127.0.0.1:$P_O/api/v1/public/exams")
[ "$c" = 200 ] || fail "after authorizing other-service: $c"
ok "an authorization added: other-service's next request passes on the proxies' open connection"

# An opaque connection already open, and no longer authorized: closed.
timeout 30 "$PY" -c '
import os, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"before\n")
assert s.recv(100) == b"before\n"
open("held", "w").close()
while not os.path.exists("go"):
    time.sleep(0.05)
try:
    s.sendall(b"after\n")
    print("open" if s.recv(100) else "closed")
except OSError:
    print("closed")' "$P_FECHO" >held.out 2>&1 &
HELD=$!
for _ in $(seq 100); do [ -e held ] && break; sleep 0.05; done
[ -e held ] || fail "the held connection: $(cat held.out)"
n=$(grep -c 'policy policy loaded' server.log)
authz_echo "{name: other-service}"
for _ in $(seq 50); do [ "$(grep -c 'policy policy loaded' server.log)" -gt "$n" ] && break; sleep 0.1; done
touch go
wait $HELD || true
[ "$(cat held.out)" = closed ] || fail "an open connection no longer authorized: $(cat held.out)"
timeout 10 "$PY" "$load" check "$P_OECHO" 1000 >/dev/null || fail "other-service, now authorized, on the echo port"
ok "a policy change closes the open opaque connections it no longer authorizes; the newly authorized client gets in"

cp policy/exam-api.yaml good.yaml
printf -- '---\napiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: {name: bad, namespace: production}\nspec:\n  networks:\n  - cidr: 10.0.0.0/33\n' >>policy/exam-api.yaml
for _ in $(seq 50); do grep -q 'policy policy rejected' server.log && break; sleep 0.1; done
grep -q 'policy policy rejected.*10.0.0.0/33\|policy policy rejected.*cidr' server.log || fail "a bad CIDR was not reported: $(grep 'policy policy' server.log | tail -2)"
[ "$(code "http://127.0.0.1:$P_O/api/v1/public/exams")" = 200 ] || fail "the last good policy was not kept"
ok "a bad CIDR is reported with where and why; the last good policy stays in force"
