#!/usr/bin/env bash
# Integration: meshd takes its inbound policy from mesh-destination's WatchWorkload stream: not ready (inbound refused) until the first policy, the store's labels, live store edits, a bad edit and the control plane going away keep the last policy, a restart resyncs; --policy wins.
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

"$pki" "$tmp" web default web a default client-a b default client-b >/dev/null
WEB_ID=web.default.serviceaccount.identity.linkerd.cluster.local

read -r P_APP P_IN P_DST P_DADM P_SADM P_A P_AADM P_B P_BADM P_LADM \
  <<<"$(timeout 20 "$PY" "$load" free-ports 10)"
timeout 60 "$PY" "$peers" backend "$P_APP" web >app.log 2>&1 &
pids+=($!)

# ---- the store: a Service, the Workload web-1 (app=web), a Server and its authorization ----
mkdir store
put web.yaml <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, protocol: http}]
---
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec: {serviceAccount: web, address: 127.0.0.2, proxyPort: $P_IN, ports: [{name: http, port: $P_APP}]}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: web-http, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  port: $P_APP
  proxyProtocol: HTTP/1
EOF
authorize() { # SERVICE-ACCOUNT...: the clients web-http admits
  local sas=""
  for sa in "$@"; do sas="$sas${sas:+, }{name: $sa}"; done
  put authz.yaml <<EOF
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: web-clients, namespace: default}
spec:
  server: {name: web-http}
  client: {meshTLS: {serviceAccounts: [$sas]}}
EOF
}
authorize client-a

start_dest() {
  timeout 60 "$dest" --store-dir store --listen "127.0.0.1:$P_DST" --admin "127.0.0.1:$P_DADM" \
    --debounce-ms 100 >>dest.log 2>&1 &
  DPID=$!
  pids+=("$DPID")
  wait_http "http://127.0.0.1:$P_DADM/ready"
}

# The workload's meshd. Its --workload-labels name no Server: were they used (or the
# default policy, all-unauthenticated), client B would pass.
timeout 60 "$meshd" --identity-dir web --inbound-listen-addr "127.0.0.2:$P_IN" \
  --outbound-listen-addr "" --admin-listen-addr "127.0.0.2:$P_SADM" \
  --destination-addr "127.0.0.1:$P_DST" --workload-namespace default --workload-name web-1 \
  --workload-labels app=not-web --log-level debug >server.log 2>&1 &
pids+=($!)
client() { # NAME LISTEN ADMIN: a client meshd with its identity, web in a static endpoints file
  cat >"eps-$1.json" <<EOF
{"services": {"web.default.svc.cluster.local:80": {"endpoints": [
  {"addr": "127.0.0.2:$P_IN", "identity": "$WEB_ID", "port": $P_APP}]}}}
EOF
  timeout 60 "$meshd" --identity-dir "$1" --inbound-listen-addr "" --outbound-listen-addr "" \
    --admin-listen-addr "127.0.0.1:$3" --endpoints "eps-$1.json" \
    --outbound-port-map "127.0.0.1:$2=web.default.svc.cluster.local:80" >"client-$1.log" 2>&1 &
  pids+=($!)
}
client a "$P_A" "$P_AADM"
client b "$P_B" "$P_BADM"
wait_http "http://127.0.0.1:$P_AADM/ready"
wait_http "http://127.0.0.1:$P_BADM/ready"
wait_http "http://127.0.0.1:$P_APP/"

smetrics() { curl -fsS -m 5 "http://127.0.0.2:$P_SADM/metrics"; }
msum() { smetrics | grep -E "$1" | awk '{s+=$NF} END {printf "%d\n", s}'; } # the samples whose line matches
code() { # PORT: the status of one request through that client meshd; headers in h.txt
  curl -sS -m 5 -o body.txt -D h.txt -w '%{http_code}' "http://127.0.0.1:$1/" || true
}
until_code() { # PORT WANT MS: polls until a request gets WANT; prints the time it took
  local t0 c
  t0=$(now_ms)
  while :; do
    c=$(code "$1")
    [ "$c" = "$2" ] && break
    [ $(($(now_ms) - t0)) -gt "$3" ] && fail "port $1: still $c after $3 ms (want $2): $(cat h.txt body.txt)"
    sleep 0.02
  done
  echo $(($(now_ms) - t0))
}

# ---- no policy yet: not ready, inbound refused (not decided by the default policy) -------
r=$(curl -sS -m 2 -w ' %{http_code}' "http://127.0.0.2:$P_SADM/ready" || true)
[ "$r" = "not ready: waiting for the inbound policy
 503" ] || fail "/ready before the first policy: $r"
c=$(code "$P_B")
[ "$c" = 503 ] && grep -qi '^l5d-proxy-error: policy_pending' h.txt ||
  fail "a request before the first policy: $c $(cat h.txt)"
[ "$(msum '^inbound_http_authz_allow_total')" = 0 ] || fail "a request was authorized without a policy"
ok "before mesh-destination is up: /ready 503 (waiting for the inbound policy), B gets 503 policy_pending"

start_dest
t0=$(now_ms)
wait_http "http://127.0.0.2:$P_SADM/ready"
ok "the first policy came $(($(now_ms) - t0)) ms after mesh-destination started: ready"
grep -q 'policy from mesh-destination (Workload default:web-1) loaded: 1 servers, 1 authorizations' server.log ||
  fail "the policy from the stream was not logged: $(grep policy server.log)"

# ---- A is authorized, B is not: the Server selects the store's labels (app=web) ----------
c=$(code "$P_A")
[ "$c" = 200 ] && [ "$(cat body.txt)" = web ] || fail "A through the streamed policy: $c $(cat body.txt)"
c=$(code "$P_B")
[ "$c" = 403 ] && grep -qi '^l5d-proxy-error: unauthorized: server web-http does not authorize client-b' h.txt ||
  fail "B through the streamed policy: $c $(cat h.txt)"
S='srv_kind="server",srv_name="web-http"'
[ "$(msum "^inbound_http_authz_allow_total\{${S},.*authz_name=\"web-clients\"")" = 1 ] &&
  [ "$(msum "^inbound_http_authz_deny_total\{${S}")" = 1 ] ||
  fail "authz metrics: $(smetrics | grep authz)"
[ "$(msum '^destination_policy_streams ')" = 1 ] && [ "$(msum '^destination_policy_updates_total ')" = 1 ] &&
  [ "$(msum '^destination_policy_rejects_total ')" = 0 ] || fail "policy metrics: $(smetrics | grep destination_policy)"
ok "A 200, B 403 unauthorized (web-http selected by the store's labels, not --workload-labels)"

# ---- the store edited: B authorized, without restarts ------------------------------------
authorize client-a client-b
took=$(until_code "$P_B" 200 3000)
[ "$took" -le 1500 ] || fail "authorizing B took $took ms"
[ "$(code "$P_A")" = 200 ] || fail "A after B was authorized"
[ "$(msum '^destination_policy_updates_total ')" = 2 ] || fail "updates: $(smetrics | grep destination_policy)"
ok "B authorized in the store: B passes after $took ms"

# ---- a bad policy file: the store refuses it, the decisions stay -------------------------
put bad.yaml <<EOF
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: broken, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  port: 70000
EOF
for i in $(seq 60); do
  grep -q 'change refused.*bad.yaml' dest.log && break
  [ "$i" = 60 ] && fail "mesh-destination did not refuse the bad file: $(tail -5 dest.log)"
  sleep 0.05
done
sleep 0.3
[ "$(code "$P_A")" = 200 ] && [ "$(code "$P_B")" = 200 ] || fail "decisions after a bad policy file"
[ "$(msum '^destination_policy_updates_total ')" = 2 ] || fail "a bad file changed the policy"
rm store/bad.yaml
ok "a bad policy file: refused, A and B keep passing under the last policy"

# ---- the control plane away: decisions continue; restarted: resync -----------------------
kill "$DPID"
wait "$DPID" 2>/dev/null || true
for i in $(seq 50); do
  [ "$(msum '^destination_policy_streams ')" = 0 ] && break
  [ "$i" = 50 ] && fail "the policy stream did not end with mesh-destination"
  sleep 0.05
done
grep -q 'policy default:web-1: stream ended.*keeping the last policy, reconnecting' server.log ||
  fail "the end of the stream was not logged"
authorize client-a # meanwhile: B no longer admitted, not yet known to the proxy
sleep 0.5
[ "$(code "$P_A")" = 200 ] && [ "$(code "$P_B")" = 200 ] || fail "decisions with mesh-destination down"
curl -fsS -m 2 "http://127.0.0.2:$P_SADM/ready" >/dev/null || fail "not ready while mesh-destination is down"
ok "mesh-destination killed: A and B still pass under the last policy, still ready"

start_dest
took=$(until_code "$P_B" 403 12000)
grep -qi '^l5d-proxy-error: unauthorized' h.txt || fail "B after the resync: $(cat h.txt)"
[ "$(code "$P_A")" = 200 ] || fail "A after the resync"
[ "$(msum '^destination_policy_reconnects_total ')" -ge 1 ] && [ "$(msum '^destination_policy_streams ')" = 1 ] ||
  fail "reconnect metrics: $(smetrics | grep destination_policy)"
ok "mesh-destination restarted: the stream resynced after $took ms, B is refused again"

# ---- --policy DIR wins: no stream, ready at once ------------------------------------------
mkdir local
timeout 20 "$meshd" --identity-dir web --inbound-listen-addr "" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_LADM" --destination-addr "127.0.0.1:$P_DST" \
  --workload-name web-1 --policy local >local.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_LADM/ready"
grep -q 'policy: the directory local wins' local.log || fail "the precedence of --policy was not logged"
curl -fsS -m 5 "http://127.0.0.1:$P_LADM/metrics" | grep -q '^destination_policy_streams' &&
  fail "a policy stream was opened despite --policy"
ok "--policy with --workload-name: the directory wins, no stream"
echo "all meshd policy discovery checks passed"
