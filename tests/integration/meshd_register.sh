#!/usr/bin/env bash
# Integration: meshds register their Workloads with mesh-destination under leases: they become endpoints, a SIGTERM deregisters at once, a SIGKILL lapses with the lease, another identity is refused. With "etcd" as the last argument, mesh-destination keeps them in etcd (a real member) under etcd leases.
set -euo pipefail
meshd=$(realpath "$1") # meson may pass paths relative to the build dir
dest=$(realpath "$2")
pki=$(realpath "$3")
load=$(realpath "$4")
peers=$(realpath "$5")
store=${6:-dir} # dir or etcd
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)
ok() { echo "ok (at $(($(now_ms) - T0)) ms): $*"; }

"$pki" "$tmp" client default client web1 default web web2 default web \
  dest linkerd linkerd-destination >/dev/null
DEST_ID=linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local

read -r P_APP1 P_APP2 P_IN P_DST P_DADM P_CADM P_S1ADM P_S2ADM P_S3ADM P_WEB P_EC P_EP \
  <<<"$(timeout 20 "$PY" "$load" free-ports 12)"

timeout 60 "$PY" "$peers" backend "$P_APP1" web-1 >app1.log 2>&1 &
pids+=($!)
timeout 60 "$PY" "$peers" backend "$P_APP2" web-2 >app2.log 2>&1 &
pids+=($!)

# ---- the store: a Service only; its endpoints are the registrations -------------------
mkdir store
cat >store/web.yaml <<STORE
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, protocol: http}
STORE
# mTLS, so that every registration is checked against its caller's identity.
source_args=(--store-dir store)
lapsed='registration default/web-2: lease [0-9a-f]* expired'
if [ "$store" = etcd ]; then
  # One member; the manifest as a key; registrations become keys under etcd leases.
  EC=http://127.0.0.1:$P_EC
  timeout 60 etcd --name m1 --data-dir "$tmp/etcd" --listen-client-urls "$EC" \
    --advertise-client-urls "$EC" --listen-peer-urls "http://127.0.0.1:$P_EP" \
    --initial-advertise-peer-urls "http://127.0.0.1:$P_EP" \
    --initial-cluster "m1=http://127.0.0.1:$P_EP" >etcd.out 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do curl -sf -m 1 -X POST "$EC/v3/kv/range" -d '{"key":"AA=="}' >/dev/null && break; sleep 0.05; done
  curl -sf -X POST "$EC/v3/kv/put" -d "{\"key\":\"$(printf /libmesh/manifests/default/web.yaml | base64 -w0)\",\"value\":\"$(base64 -w0 store/web.yaml)\"}" >/dev/null ||
    fail "etcd does not take the manifest"
  source_args=(--etcd-endpoints "$EC")
  lapsed='registration default/web-2: gone from etcd'
fi
timeout 60 "$dest" "${source_args[@]}" --listen "127.0.0.1:$P_DST" --admin "127.0.0.1:$P_DADM" \
  --identity-dir dest --debounce-ms 100 --no-dns-fallback >dest.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_DADM/ready"

server() { # N IP APP_PORT ADMIN_PORT IDENTITY NAMESPACE
  timeout 60 "$meshd" --identity-dir "$5" --inbound-listen-addr "$2:$P_IN" \
    --outbound-listen-addr "" --admin-listen-addr "$2:$4" \
    --destination-addr "127.0.0.1:$P_DST" --destination-identity "$DEST_ID" \
    --workload-namespace "$6" --workload-labels app=web --workload-name "web-$1" \
    --register --register-lease 3s --workload-ports "http=$3" >"server$1.log" 2>&1 &
  SPID=$!
  pids+=("$SPID")
}
server 1 127.0.0.2 "$P_APP1" "$P_S1ADM" web1 default
S1=$SPID
server 2 127.0.0.3 "$P_APP2" "$P_S2ADM" web2 default
S2=$SPID
MESH_PROXY_WORKLOAD_NAMESPACE=default timeout 60 "$meshd" --identity-dir client \
  --outbound-listen-addr "" --inbound-listen-addr "" --admin-listen-addr "127.0.0.1:$P_CADM" \
  --destination-addr "127.0.0.1:$P_DST" --destination-identity "$DEST_ID" \
  --outbound-failfast-timeout 500ms \
  --outbound-port-map "127.0.0.1:$P_WEB=web.default.svc.cluster.local:80" >client.log 2>&1 &
pids+=($!)

wait_http "http://127.0.0.1:$P_CADM/ready"
wait_http "http://127.0.0.1:$P_APP1/"
wait_http "http://127.0.0.1:$P_APP2/"
for f in server1.log server2.log; do
  for _ in $(seq 100); do grep -q "registered default/web-" "$f" && break; sleep 0.05; done
  grep -q "registered default/web-[12] with mesh-destination: lease [0-9a-f]*, 3 s" "$f" ||
    fail "$f: no registration"
done
grep -q "registration default/web-1 (web.default.serviceaccount.identity.linkerd.cluster.local)" dest.log ||
  fail "mesh-destination did not log web-1's registration with its identity"
ok "both server meshds registered under 3 s leases"
if [ "$store" = etcd ]; then
  # The key holds the Workload, who registered it, and is bound to a lease.
  curl -sf -X POST "$EC/v3/kv/range" \
    -d "{\"key\":\"$(printf /libmesh/registrations/default/web-1 | base64 -w0)\"}" >key.out
  "$PY" - key.out <<'PY' || fail "the etcd key of web-1: $(cat key.out)"
import base64, json, sys
kv = json.load(open(sys.argv[1]))["kvs"][0]
w = json.loads(base64.b64decode(kv["value"]))
assert int(kv.get("lease", 0)) > 0, "no lease"
assert w["kind"] == "Workload" and w["metadata"]["name"] == "web-1", w
assert w["metadata"]["annotations"]["mesh.libmesh.io/registered-by"] == \
    "web.default.serviceaccount.identity.linkerd.cluster.local", w
PY
  ok "etcd holds web-1 at /libmesh/registrations/default/web-1, under a lease, with who registered it"
fi

# batch N: N requests through the client meshd, 40 at a time, one answer per line ("ERR"
# for a failure). Load makes peak-EWMA try both endpoints.
batch() {
  timeout 30 "$PY" - "$P_WEB" "$1" <<'PY'
import sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
port, n = sys.argv[1], int(sys.argv[2])
def get(i):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?n={i}", timeout=5) as r:
            return r.read().decode().strip() if r.status == 200 else "ERR"
    except Exception:
        return "ERR"
with ThreadPoolExecutor(40) as ex:
    for line in ex.map(get, range(n)):
        print(line)
PY
}

for i in $(seq 40); do
  batch 200 | sort | uniq -c >b1.txt
  grep -q ' web-1$' b1.txt && grep -q ' web-2$' b1.txt && break
  [ "$i" = 40 ] && fail "requests did not reach both registered workloads: $(cat b1.txt)"
  sleep 0.1
done
! grep -q ERR b1.txt || fail "requests failed: $(cat b1.txt)"
# Renewals (every second) must not disturb anything: well past one lease, still both.
sleep 3.5
batch 200 | sort | uniq -c >b2.txt
grep -q ' web-1$' b2.txt && grep -q ' web-2$' b2.txt && ! grep -q ERR b2.txt ||
  fail "after a lease's length of renewals: $(cat b2.txt)"
! grep -qE "expired|gone from etcd" dest.log || fail "a renewed lease expired"
ok "registered workloads are endpoints: requests reach both ($(tr -s ' \n' ' ' <b1.txt)), still after 3.5 s"

# ---- another identity: web1's certificate claiming a Workload in namespace prod ------------
server 9 127.0.0.4 "$P_APP1" "$P_S3ADM" web1 prod
for _ in $(seq 100); do grep -q "register prod/web-9: refused" server9.log && break; sleep 0.05; done
grep -q "register prod/web-9: refused: permission_denied" server9.log ||
  fail "a registration under another identity was not refused"
grep -q "registration prod/web-9 refused: the caller is web.default.serviceaccount.identity.linkerd.cluster.local, not web.prod.serviceaccount" dest.log ||
  fail "mesh-destination did not say why it refused prod/web-9"
kill "$SPID"
ok "a registration claiming another identity (web.prod) over mTLS is refused"

# ---- SIGTERM: deregistered before draining, at once -------------------------------------
t0=$(now_ms)
kill -TERM "$S1"
for _ in $(seq 100); do grep -q "deregistered default/web-1" server1.log && break; sleep 0.02; done
grep -q "deregistered default/web-1 (lease" server1.log || fail "web-1 did not deregister on SIGTERM"
grep -q "registration default/web-1 deregistered" dest.log || fail "mesh-destination did not see web-1 go"
took=$(($(now_ms) - t0))
# Its lease (3 s) has not run out: web-1 is gone because it said so.
batch 200 | sort | uniq -c >b3.txt
[ "$(tr -s ' ' <b3.txt)" = " 200 web-2" ] || fail "after web-1's SIGTERM: $(cat b3.txt)"
[ $(($(now_ms) - t0)) -lt 2500 ] || fail "checking web-1's removal took past its lease"
ok "SIGTERM: web-1 deregistered in $took ms; every request goes to web-2"

# ---- SIGKILL: removed when the lease lapses ----------------------------------------------
# The meshd itself: timeout does not pass a SIGKILL on to its child.
M2=$(pgrep -P "$S2")
[ -n "$M2" ] || fail "no meshd under timeout $S2"
kill -KILL "$M2"
t0=$(now_ms)
for i in $(seq 80); do
  grep -qE "$lapsed" dest.log && break
  [ "$i" = 80 ] && fail "web-2's lease did not expire within 8 s"
  sleep 0.1
done
took=$(($(now_ms) - t0))
[ "$took" -ge 1500 ] || fail "web-2 was removed after $took ms: before its lease could lapse"
# The removal then travels: the store's debounce, the Get stream, the client's balancer.
for _ in $(seq 20); do
  c=$(curl -sS -m 5 -o /dev/null -D h.txt -w '%{http_code}' "http://127.0.0.1:$P_WEB/" || true)
  [ "$c" = 503 ] && break
  sleep 0.05
done
[ "$c" = 503 ] || fail "no endpoints left, yet the client answered $c"
# An empty endpoint set: meshd's fail-fast answer (no endpoint ready within the timeout).
grep -i '^l5d-proxy-error: fail_fast: .*no endpoint ready for web.default.svc.cluster.local:80' h.txt >err.txt ||
  fail "the 503 is not for want of endpoints: $(cat h.txt)"
ok "SIGKILL: web-2's lease lapsed after $took ms; the client answers 503 ($(tr -d '\r' <err.txt))"
