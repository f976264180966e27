#!/usr/bin/env bash
# Integration: meshd discovers endpoints from mesh-destination's Get streams: Workloads added and removed move real traffic; the control plane killed and restarted.
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

"$pki" "$tmp" client default client web1 default web web2 default web \
  dest linkerd linkerd-destination >/dev/null
DEST_ID=linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local

read -r P_APP1 P_APP2 P_IN P_DST P_DADM P_CADM P_S1ADM P_S2ADM P_WEB P_NONE P_OUT P_DB \
  P_TDST P_TDADM P_TADM P_TWEB P_BADM P_BWEB <<<"$(timeout 20 "$PY" "$load" free-ports 18)"

timeout 110 "$PY" "$peers" backend "$P_APP1" web-1 >app1.log 2>&1 &
pids+=($!)
timeout 110 "$PY" "$peers" backend "$P_APP2" web-2 >app2.log 2>&1 &
pids+=($!)

# ---- the store: a Service and two Workloads, each with its own meshd -------------------
mkdir store
put web.yaml <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, protocol: http}
  - {name: db, port: 5432, targetPort: http, protocol: opaque}
EOF
workload() { # N ADDRESS APP_PORT
  put "web-$1.yaml" <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-$1, namespace: default, labels: {app: web}}
spec: {serviceAccount: web, address: $2, proxyPort: $P_IN, ports: [{name: http, port: $3}]}
EOF
}
workload 1 127.0.0.2 "$P_APP1"
workload 2 127.0.0.3 "$P_APP2"

start_dest() {
  timeout 110 "$dest" --store-dir store --listen "127.0.0.1:$P_DST" --admin "127.0.0.1:$P_DADM" \
    --debounce-ms 100 >>dest.log 2>&1 &
  DPID=$!
  pids+=("$DPID")
  for _ in $(seq 100); do curl -fsS -m 1 "http://127.0.0.1:$P_DADM/ready" >/dev/null 2>&1 && return 0; sleep 0.05; done
  fail "mesh-destination does not become ready"
}
start_dest

timeout 110 "$meshd" --identity-dir web1 --inbound-listen-addr "127.0.0.2:$P_IN" \
  --outbound-listen-addr "" --admin-listen-addr "127.0.0.2:$P_S1ADM" >server1.log 2>&1 &
pids+=($!)
timeout 110 "$meshd" --identity-dir web2 --inbound-listen-addr "127.0.0.3:$P_IN" \
  --outbound-listen-addr "" --admin-listen-addr "127.0.0.3:$P_S2ADM" >server2.log 2>&1 &
pids+=($!)
MESH_PROXY_WORKLOAD_NAMESPACE=default timeout 110 "$meshd" --identity-dir client \
  --outbound-listen-addr "127.0.0.1:$P_OUT" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_CADM" --destination-addr "127.0.0.1:$P_DST" \
  --outbound-port-map "127.0.0.1:$P_WEB=web.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_NONE=nothing.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_DB=web.default.svc.cluster.local:5432" \
  --log-level debug >client.log 2>&1 &
pids+=($!)

wait_http "http://127.0.0.1:$P_CADM/ready"
wait_http "http://127.0.0.2:$P_S1ADM/ready"
wait_http "http://127.0.0.3:$P_S2ADM/ready"
wait_http "http://127.0.0.1:$P_APP1/"
wait_http "http://127.0.0.1:$P_APP2/"

metric() { curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
# batch N [PARALLEL]: N requests through the client meshd (PARALLEL at a time, default 1),
# one answer per line ("ERR" for a failure). Peak-EWMA prefers the endpoint it has measured
# (a sequential client would only ever see one): load makes it try the other.
batch() {
  timeout 30 "$PY" - "$P_WEB" "$1" "${2:-1}" <<'EOF'
import sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
port, n, par = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def get(i):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?n={i}", timeout=5) as r:
            return r.read().decode().strip() if r.status == 200 else "ERR"
    except Exception:
        return "ERR"
with ThreadPoolExecutor(par) as ex:
    for line in ex.map(get, range(n)):
        print(line)
EOF
}
spread() { batch "$1" 40; }

# ---- discovery: the first request waits for the first answer -------------------------
[ "$(curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_WEB/")" = 200 ] ||
  fail "the first request through a discovered service"
spread 200 | sort | uniq -c >b1.txt
grep -q ' web-1$' b1.txt && grep -q ' web-2$' b1.txt && ! grep -q ERR b1.txt ||
  fail "200 requests did not reach both workloads: $(cat b1.txt)"
grep -q "destination web.default.svc.cluster.local:80: 2 endpoints" client.log ||
  fail "the client did not log the discovered endpoints"
[ "$(metric destination_streams)" = 1 ] || fail "destination_streams: $(metric destination_streams)"
ok "requests through a discovered service reach both workloads ($(tr -s ' \n' ' ' <b1.txt))"

# Opaque TCP (5432 is an opaque port): the connection waits for discovery, then mTLS + splice.
db=$(curl -fsS -m 5 "http://127.0.0.1:$P_DB/" || true)
[ "$db" = web-1 ] || [ "$db" = web-2 ] || fail "opaque TCP through a discovered service: '$db'"
curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics" >m.txt
grep -q '^tcp_open_total{direction="outbound",peer="dst",tls="true",.*server_id="web.default.serviceaccount' m.txt ||
  fail "the opaque connection was not mTLS to the workload's proxy: $(grep tcp_open_total m.txt)"
ok "opaque TCP through a discovered service, over mTLS ($db)"

# ---- mTLS to mesh-destination (its identity given: mTLS even on loopback) ---------------
timeout 110 "$dest" --store-dir store --listen "127.0.0.1:$P_TDST" --admin "127.0.0.1:$P_TDADM" \
  --identity-dir dest --debounce-ms 100 >tdest.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_TDADM/ready"
timeout 110 "$meshd" --identity-dir client --outbound-listen-addr "" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_TADM" --destination-addr "127.0.0.1:$P_TDST" \
  --destination-identity "$DEST_ID" \
  --outbound-port-map "127.0.0.1:$P_TWEB=web.default.svc.cluster.local:80" >tclient.log 2>&1 &
pids+=($!)
# ... and one that expects another identity: it must refuse the server.
timeout 110 "$meshd" --identity-dir client --outbound-listen-addr "" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_BADM" --destination-addr "127.0.0.1:$P_TDST" \
  --destination-identity web.default.serviceaccount.identity.linkerd.cluster.local \
  --outbound-port-map "127.0.0.1:$P_BWEB=web.default.svc.cluster.local:80" >bclient.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_TADM/ready"
wait_http "http://127.0.0.1:$P_BADM/ready"
t=$(curl -fsS -m 5 "http://127.0.0.1:$P_TWEB/" || true)
[ "$t" = web-1 ] || [ "$t" = web-2 ] || fail "through discovery over mTLS: '$t'"
! grep -q "stream ended" tclient.log || fail "the mTLS stream ended: $(grep destination tclient.log)"
c=$(curl -sS -m 5 -o /dev/null -D h.txt -w '%{http_code}' "http://127.0.0.1:$P_BWEB/" || true)
[ "$c" = 503 ] && grep -qi '^l5d-proxy-error: unknown_destination' h.txt ||
  fail "a destination service with the wrong identity was trusted: $c"
grep -q "destination web.default.svc.cluster.local:80: stream ended (peer identity mismatch: " bclient.log ||
  fail "no identity error in the log of the refusing client: $(grep destination bclient.log)"
ok "discovery over mTLS ($t); a server with another identity is refused (503)"

# An authority the control plane does not know: answered at once, not after the wait.
t0=$(now_ms)
c=$(curl -sS -m 5 -o /dev/null -D h.txt -w '%{http_code}' "http://127.0.0.1:$P_NONE/" || true)
took=$(($(now_ms) - t0))
[ "$c" = 503 ] && grep -qi '^l5d-proxy-error: unknown_destination' h.txt ||
  fail "an unknown service: $c $(cat h.txt)"
[ "$took" -lt 1000 ] || fail "an unknown service took $took ms"
ok "a service the control plane does not know: 503 unknown_destination in $took ms"

# ---- a Workload removed: no more requests to it within a second -----------------------
rm store/web-2.yaml
t0=$(now_ms)
sleep 1
spread 100 | sort | uniq -c >b2.txt
[ "$(cat b2.txt | tr -s ' ')" = " 100 web-1" ] || fail "after removing web-2 (1 s): $(cat b2.txt)"
ok "web-2 removed: every request goes to web-1 after $(($(now_ms) - t0)) ms"

workload 2 127.0.0.3 "$P_APP2"
for i in $(seq 30); do
  spread 200 | sort | uniq -c >b3.txt
  grep -q ' web-2$' b3.txt && break
  [ "$i" = 30 ] && fail "web-2 added back but gets no requests: $(cat b3.txt)"
  sleep 0.1
done
ok "web-2 added back: it gets requests again"

# ---- the control plane away: keep serving from the last known state ---------------
kill "$DPID"
wait "$DPID" 2>/dev/null || true
spread 200 | sort | uniq -c >b4.txt
! grep -q ERR b4.txt && grep -q ' web-1$' b4.txt && grep -q ' web-2$' b4.txt ||
  fail "mesh-destination down: $(cat b4.txt)"
sleep 1.5
batch 20 | sort | uniq -c >b5.txt
! grep -q ERR b5.txt || fail "mesh-destination down (later): $(cat b5.txt)"
r=$(metric destination_reconnects_total)
[ "${r:-0}" -ge 1 ] || fail "destination_reconnects_total: '$r'"
ok "mesh-destination killed: 220 requests succeed from the last state; $r reconnect attempts"

# ---- restarted: updates flow again --------------------------------------------------
rm store/web-1.yaml
start_dest
t0=$(now_ms)
# The removal happened while the stream was down: the reconnected stream's first
# message is the whole state, and web-1 must go (under load, so that it would be picked).
for i in $(seq 60); do
  spread 80 | sort | uniq -c >b6.txt
  [ "$(cat b6.txt | tr -s ' ')" = " 80 web-2" ] && break
  [ "$i" = 60 ] && fail "after the restart, web-1's removal never arrived: $(cat b6.txt)"
  sleep 0.2
done
ok "mesh-destination restarted: the stream reconnected and web-1's removal applied ($(($(now_ms) - t0)) ms)"
u=$(metric destination_updates_total)
[ "${u:-0}" -ge 4 ] || fail "destination_updates_total: '$u'"

# ---- the idle cache: an authority nobody asked for in 5 s is dropped --------------------
c=$(curl -sS -m 5 -o /dev/null -w '%{http_code}' -H 'Host: idle.default.svc.cluster.local' "http://127.0.0.1:$P_OUT/" || true)
[ "$c" = 503 ] || fail "explicit mode, an unknown service: $c"
web_idle() { grep -c "destination web.default.svc.cluster.local:80: idle" client.log || true; }
idle_before=$(web_idle)
t0=$(now_ms)
for i in $(seq 100); do
  grep -q "destination idle.default.svc.cluster.local:80: idle, dropped" client.log && break
  [ "$i" = 100 ] && fail "the idle authority was not dropped within 10 s"
  curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$P_WEB/" || fail "web during the idle wait"
  sleep 0.1
done
took=$(($(now_ms) - t0))
[ "$took" -ge 4000 ] || fail "the idle authority was dropped after $took ms (< 5 s)"
[ "$(web_idle)" = "$idle_before" ] || fail "the authority in use was dropped"
ok "idle cache: an unused authority's stream cancelled after $took ms; the one in use stays"
echo "all meshd discovery checks passed"
