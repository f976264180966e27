#!/usr/bin/env bash
# Integration: meshd certifies itself with mesh-identity (key in memory, 15 s certificates renewed in flight); the service down at start, a wrong token.
set -euo pipefail
meshd=$(realpath "$1") # meson may pass paths relative to the build dir
ident=$(realpath "$2")
meshctl=$(realpath "$3")
load=$(realpath "$4")
peers=$(realpath "$5")
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)
ok() { echo "ok (at $(($(now_ms) - T0)) ms): $*"; }
SUFFIX=default.serviceaccount.identity.linkerd.cluster.local
WEB=web.$SUFFIX CLIENT=client.$SUFFIX API=api.$SUFFIX

read -r P_APP P_IN P_SADM P_CADM P_WEB P_ID P_IDADM P_BADM <<<"$(timeout 20 "$PY" "$load" free-ports 8)"

# Certificates live 15 s: renewed at 70 %, after ~10 s, while the test runs.
"$meshctl" identity init --dir id --identity-issuance-lifetime 15s >/dev/null
token() { "$meshctl" identity token --ns default --sa "$1" --key id/token.key; }
token web >web.tok
token client >client.tok
token web >api.tok # a token for another service account than the proxy's

timeout 60 "$PY" "$peers" backend "$P_APP" web-v1 >app.log 2>&1 &
pids+=($!)
cat >eps.json <<EOF
{"services": {"web.default.svc.cluster.local:80": {"endpoints": [
  {"addr": "127.0.0.2:$P_IN", "identity": "$WEB", "port": $P_APP}]}}}
EOF

ready() { curl -s -o /dev/null -m 1 -w '%{http_code}' "http://$1/ready" || true; }
wait_ready() { # ADMIN SECONDS
  for _ in $(seq $(($2 * 10))); do [ "$(ready "$1")" = 200 ] && return 0; sleep 0.1; done
  fail "meshd at $1 not ready after $2 s"
}
metric() { curl -fsS -m 2 "http://$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }
serial() { # the certificate the inbound listener presents to a new handshake (s_client
  # presents none, so the handshake then fails: the server's certificate came first)
  { timeout 5 openssl s_client -connect "127.0.0.2:$P_IN" -alpn transport.l5d.io/v1 </dev/null 2>/dev/null || true; } |
    openssl x509 -noout -serial | cut -d= -f2
}
client_id() { # the l5d-client-id the application sees for a request through both proxies
  curl -fsS -m 5 "http://127.0.0.1:$P_WEB/headers" >h.json || fail "GET /headers through the mesh"
  "$PY" -c 'import json; print(json.load(open("h.json")).get("l5d-client-id", ""))'
}

# ---- flags: one source of credentials, and all of what certifying needs ------------------
rc=0
"$meshd" --identity-addr "127.0.0.1:$P_ID" --identity-dir id --identity-token-file web.tok \
  --service-account web --anchors id/ca.crt >conflict.out 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q -- "--identity-addr and --identity-dir are exclusive" conflict.out ||
  fail "--identity-addr with --identity-dir: exit $rc, $(cat conflict.out)"
rc=0
MESH_PROXY_IDENTITY_ADDR="127.0.0.1:$P_ID" "$meshd" --anchors id/ca.crt >missing.out 2>&1 || rc=$?
[ "$rc" = 2 ] && grep -q -- "--identity-addr needs --identity-token-file, --service-account" missing.out ||
  fail "MESH_PROXY_IDENTITY_ADDR without a token: exit $rc, $(cat missing.out)"
ok "conflicting or incomplete identity flags are refused at start"

# ---- mesh-identity down at start: both proxies wait, not ready, retrying --------------------
identity_flags=(--identity-addr "127.0.0.1:$P_ID" --anchors id/ca.crt)
timeout 60 "$meshd" "${identity_flags[@]}" --identity-token-file web.tok --service-account web \
  --inbound-listen-addr "127.0.0.2:$P_IN" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.2:$P_SADM" --inbound-ports "$P_APP" >server.log 2>&1 &
pids+=($!)
MESH_PROXY_SERVICE_ACCOUNT=client MESH_PROXY_IDENTITY_TOKEN_FILE=client.tok \
  timeout 60 "$meshd" "${identity_flags[@]}" --workload-namespace default \
  --inbound-listen-addr "" --outbound-listen-addr "" --admin-listen-addr "127.0.0.1:$P_CADM" \
  --endpoints eps.json --outbound-port-map "127.0.0.1:$P_WEB=web.default.svc.cluster.local:80" \
  >client.log 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ "$(ready "127.0.0.1:$P_CADM")" = 503 ] && break; sleep 0.05; done
sleep 1.5
[ "$(ready "127.0.0.1:$P_CADM")" = 503 ] && [ "$(ready "127.0.0.2:$P_SADM")" = 503 ] ||
  fail "a proxy without a certificate is ready"
n=$(grep -c "identity: no answer from mesh-identity at 127.0.0.1:$P_ID (expected as identity\.linkerd\.serviceaccount\.identity\.linkerd\.cluster\.local): connection failed: .*; not ready; retrying in" server.log || true)
[ "$n" -ge 2 ] || fail "the server proxy did not retry an unreachable mesh-identity ($n attempts)"
ok "mesh-identity down: not ready, $n attempts with backoff"

timeout 60 "$ident" --dir id --listen "127.0.0.1:$P_ID" --admin "127.0.0.1:$P_IDADM" >ident.log 2>&1 &
pids+=($!)
# The proxy claiming api with web's token starts once the service is up, so
# that every attempt is refused by it rather than unreachable.
for _ in $(seq 100); do [ "$(ready "127.0.0.1:$P_IDADM")" = 200 ] && break; sleep 0.05; done
timeout 60 "$meshd" "${identity_flags[@]}" --identity-token-file api.tok --service-account api \
  --inbound-listen-addr "" --outbound-listen-addr "" --admin-listen-addr "127.0.0.1:$P_BADM" \
  >bad.log 2>&1 &
pids+=($!)
wait_ready "127.0.0.1:$P_CADM" 15
wait_ready "127.0.0.2:$P_SADM" 15
grep -q "identity: certified $WEB by mesh-identity at 127.0.0.1:$P_ID: serial [0-9A-F:]*, valid until 20[0-9T:-]*Z ([0-9]*); renewing in 1[0-9] s" server.log ||
  fail "the server proxy did not log its certificate and expiry"
ok "mesh-identity started: both proxies certified and ready"

# ---- traffic, with the client's identity as the server proxy verified it -----------------
[ "$(curl -fsS -m 5 "http://127.0.0.1:$P_WEB/")" = web-v1 ] || fail "GET through the mesh"
[ "$(client_id)" = "$CLIENT" ] || fail "l5d-client-id: $(cat h.json)"
S1=$(serial)
E1=$(metric "127.0.0.2:$P_SADM" identity_cert_expiration_timestamp_seconds)
[ -n "$S1" ] && [ "$(metric "127.0.0.2:$P_SADM" identity_cert_refresh_total)" = 1 ] &&
  [ "$E1" -gt "$(date +%s)" ] && [ "$E1" -le $(($(date +%s) + 15)) ] ||
  fail "first certificate: serial '$S1', expiry '$E1', refreshes $(metric "127.0.0.2:$P_SADM" identity_cert_refresh_total)"
ok "HTTP through both proxies; l5d-client-id $CLIENT; serial $S1 expires at $E1"

# ---- a token for another service account: refused with the reason, retried, never ready ---
for _ in $(seq 40); do
  [ "$(grep -c "refused to certify" bad.log || true)" -ge 2 ] && break
  sleep 0.1
done
[ "$(ready "127.0.0.1:$P_BADM")" = 503 ] || fail "a proxy with a wrong token is ready"
grep -q "identity: mesh-identity at 127.0.0.1:$P_ID refused to certify $API: unauthenticated (HTTP 401): token names another namespace or service account than the CSR; not ready; retrying in [0-9]* ms" bad.log ||
  fail "the wrong token's refusal is not logged with mesh-identity's reason"
n=$(grep -c "refused to certify" bad.log)
[ "$n" -ge 2 ] || fail "the wrong token was not retried ($n attempts)"
ok "a token for another service account: not ready, refused $n times with mesh-identity's reason"
# The token file is read again at every attempt, as a projected token is.
token api >api.tok.new && mv api.tok.new api.tok
wait_ready "127.0.0.1:$P_BADM" 12
grep -q "identity: certified $API" bad.log || fail "the fixed token did not certify api"
ok "the token file fixed: the next attempt certifies $API"

# ---- renewal: new key and certificate for new handshakes, traffic unaffected ---------------
for _ in $(seq 150); do
  [ "$(metric "127.0.0.2:$P_SADM" identity_cert_refresh_total)" -ge 2 ] &&
    [ "$(metric "127.0.0.1:$P_CADM" identity_cert_refresh_total)" -ge 2 ] && break
  sleep 0.1
done
S2=$(serial)
E2=$(metric "127.0.0.2:$P_SADM" identity_cert_expiration_timestamp_seconds)
[ "$(metric "127.0.0.2:$P_SADM" identity_cert_refresh_total)" -ge 2 ] &&
  [ "$(metric "127.0.0.1:$P_CADM" identity_cert_refresh_total)" -ge 2 ] ||
  fail "no renewal within 15 s"
[ -n "$S2" ] && [ "$S2" != "$S1" ] && [ "$E2" -gt "$E1" ] ||
  fail "after renewal: serial $S1 -> '$S2', expiry $E1 -> '$E2'"
[ "$(grep -c "identity: certified $WEB" server.log)" -ge 2 ] || fail "the renewal was not logged"
for i in 1 2 3; do
  [ "$(curl -fsS -m 5 "http://127.0.0.1:$P_WEB/?i=$i")" = web-v1 ] || fail "GET $i after renewal"
done
[ "$(client_id)" = "$CLIENT" ] || fail "l5d-client-id after renewal: $(cat h.json)"
ok "renewed: serial $S1 -> $S2, expiry $E1 -> $E2; traffic and l5d-client-id unchanged"

# ---- the keys never touched a disk: only mesh-identity's own keys are in the scratch dir ---
keys=$(grep -rlE -- "-----BEGIN ([A-Z]+ )?PRIVATE KEY-----" . | grep -v '^\./id/' || true)
[ -z "$keys" ] || fail "private keys written: $keys"
grep -q '"MESH_PROXY_IDENTITY_ADDR": "127.0.0.1:'"$P_ID"'"' <(curl -fsS -m 2 "http://127.0.0.2:$P_SADM/env.json") ||
  fail "/env.json does not show the identity service"
ok "no private key file written by the proxies"
echo "PASS"
