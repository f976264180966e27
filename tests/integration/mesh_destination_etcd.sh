#!/usr/bin/env bash
# mesh-destination on etcd: a three-member cluster and two replicas; meshctl apply/get/delete; identical answers, registrations under etcd leases, a member killed (a meshd's traffic unharmed), a compaction, a bad manifest, a replica killed.
set -euo pipefail
daemon=$(realpath "$1")
meshctl=$(realpath "$2")
meshd=$(realpath "$3")
pki=$(realpath "$4")
peers=$(realpath "$5")
etcd=$(command -v etcd)
. "$(dirname "$(realpath "$0")")/checks_lib.sh"
PY=/usr/bin/python3 # Debian's: a pyenv shim costs seconds a call
GET=/io.linkerd.proxy.destination.Destination/Get
PROFILE=/io.linkerd.proxy.destination.Destination/GetProfile

# Nine free loopback ports: three members' client and peer ports, an application, meshd's.
read -r -a ports <<<"$("$PY" -c '
import socket
ss = [socket.socket() for _ in range(9)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
for s in ss: s.close()')"
C=("${ports[0]}" "${ports[1]}" "${ports[2]}")
P=("${ports[3]}" "${ports[4]}" "${ports[5]}")
P_APP=${ports[6]} P_OUT=${ports[7]} P_MADM=${ports[8]}
cluster="m1=http://127.0.0.1:${P[0]},m2=http://127.0.0.1:${P[1]},m3=http://127.0.0.1:${P[2]}"
epid=()
start_member() { # INDEX (0..2)
  local i=$1
  timeout 90 "$etcd" --name "m$((i + 1))" --data-dir "$tmp/m$((i + 1))" \
    --listen-client-urls "http://127.0.0.1:${C[$i]}" --advertise-client-urls "http://127.0.0.1:${C[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${P[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${P[$i]}" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "t$$" \
    >>"etcd$((i + 1)).log" 2>&1 &
  epid[$i]=$!
  pids+=("$!")
}
healthy() { # INDEX: the member answers a quorum read
  timeout 2 curl -sf -X POST "http://127.0.0.1:${C[$1]}/v3/kv/range" -d '{"key":"AA=="}' >/dev/null
}
for i in 0 1 2; do start_member "$i"; done
for _ in $(seq 200); do healthy 0 && healthy 1 && healthy 2 && break; sleep 0.05; done
healthy 0 && healthy 1 && healthy 2 || { echo "FAIL: etcd did not start"; tail -5 etcd*.log; exit 1; }
EPS="http://127.0.0.1:${C[0]},http://127.0.0.1:${C[1]},http://127.0.0.1:${C[2]}"

# ---- meshctl apply into etcd: a Service, its workload, a split.
mkdir in
cat >in/web.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, protocol: http}
EOF
cat >in/web-1.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, address: 127.0.0.2, ports: [{name: http, port: 8080}]}
EOF
cat >in/split.yaml <<'EOF'
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: web-split, namespace: shop}
spec:
  service: web
  backends: [{service: web-v1, weight: 90}, {service: web-v2, weight: 10}]
EOF
# And a service without a proxy (a real HTTP server) for a meshd to send traffic to.
cat >api.yaml <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: $P_APP}]
---
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: api-1, namespace: shop, labels: {app: api}}
spec: {address: 127.0.0.1, proxyPort: 0}
EOF
checks=$((checks + 1))
timeout 20 "$meshctl" apply -f in -f api.yaml --etcd-endpoints "$EPS" >apply.out 2>apply.err ||
  fail "apply: exit $? ($(cat apply.err))"
matches apply apply.out "in/web-1\.yaml: stored as /libmesh/manifests/shop/web-1\.yaml"

# ---- Two replicas, each starting on a different member.
start_replica() { # NAME ENDPOINTS
  timeout 90 "$daemon" --etcd-endpoints "$2" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
    --debounce-ms 50 --no-dns-fallback 2>>"$1.log" &
  pids+=("$!")
  eval "${1}_pid=$!"
  for _ in $(seq 200); do grep -q "admin .* listening" "$1.log" 2>/dev/null && break; sleep 0.05; done
  eval "${1}_port=$(sed -n 's/.*Destination .* listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$1.log" | tail -1)"
  eval "${1}_admin=$(sed -n 's/.*admin .* listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$1.log" | tail -1)"
}
start_replica a "$EPS"
start_replica b "http://127.0.0.1:${C[1]},http://127.0.0.1:${C[2]},http://127.0.0.1:${C[0]}"
[ -n "$a_port" ] && [ -n "$b_port" ] || { echo "FAIL: a replica did not start"; cat a.log b.log; exit 1; }
for r in a b; do
  eval "adm=\$${r}_admin"
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$adm/ready")" = 200 ] && break
    sleep 0.05
  done
  equals "ready-$r" "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$adm/ready")" 200
done

watch() { # NAME PORT PATH AUTHORITY: a stream in the background, lines into NAME.out
  timeout 80 curl -sS -N --http2-prior-knowledge -H 'content-type: application/json' \
    --data-binary "{\"path\":\"$4\"}" "http://127.0.0.1:$2$3" >"$1.out" 2>"$1.err" &
  pids+=("$!")
}
once() { # PORT PATH AUTHORITY: the first message of a new stream (the stream is then closed)
  local p
  : >once.out
  timeout 3 curl -sS -N --http2-prior-knowledge -H 'content-type: application/json' \
    --data-binary "{\"path\":\"$3\"}" "http://127.0.0.1:$1$2" >once.out 2>/dev/null &
  p=$!
  for _ in $(seq 200); do grep -q . once.out && break; sleep 0.01; done
  kill "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  head -1 once.out
}
metric() { # ADMIN_PORT NAME
  timeout 5 curl -sS "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'
}
same() { # NAME PATH AUTHORITY: both replicas give the same first message, and it matches REGEX
  local x y
  x=$(once "$a_port" "$2" "$3")
  y=$(once "$b_port" "$2" "$3")
  checks=$((checks + 1))
  [ -n "$x" ] && [ "$x" = "$y" ] || fail "$1: the replicas differ on $3:"$'\n'"  a: $x"$'\n'"  b: $y"
  printf '%s\n' "$x" >"$1.first"
  matches "$1" "$1.first" "$4"
}

watch ga "$a_port" "$GET" web.shop.svc.cluster.local:80
watch gb "$b_port" "$GET" web.shop.svc.cluster.local:80
within first-a 2000 ga.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.2:4143".*"target_port":8080'
within first-b 2000 gb.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.2:4143".*"target_port":8080'
equals first-identical "$(head -1 ga.out)" "$(head -1 gb.out)"
same profile "$PROFILE" web.shop.svc.cluster.local:80 '"dst_overrides":\[\{"authority":"web-v1\.shop\.svc\.cluster\.local:80","weight":9000\}'

# ---- An update reaches both replicas within a second.
cat >in2.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, address: 127.0.0.3, ports: [{name: http, port: 8081}], weight: 3}
EOF
cp in2.yaml web-2.yaml
timeout 20 "$meshctl" apply -f web-2.yaml --etcd-endpoints "$EPS" >/dev/null
within add-a 1000 ga.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.3:4143","weight":3,'
echo "add reached replica a in ${took} ms"
within add-b 1000 gb.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.3:4143","weight":3,'
echo "add reached replica b in ${took} ms"
same get-2 "$GET" web.shop:80 '127\.0\.0\.2:4143.*127\.0\.0\.3:4143'

# ---- meshctl refuses a bad manifest with its position, and changes nothing.
cat >bad.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-9, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, address: 127.0.0.9, proxyPort: 99999}
EOF
got=0
timeout 20 "$meshctl" apply -f bad.yaml --etcd-endpoints "$EPS" >bad.out 2>bad.err || got=$?
equals refused-exit "$got" 1
matches refused-position bad.err '^bad\.yaml:4:[0-9]+: error: .*'
bkey=$(printf '/libmesh/manifests/shop/bad.yaml' | base64 -w0)
equals refused-nothing-stored \
  "$(curl -s -X POST "http://127.0.0.1:${C[0]}/v3/kv/range" -d "{\"key\":\"$bkey\",\"count_only\":true}" |
    "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("count","0"))')" 0
# A duplicate of what is stored (the same kind, namespace and name) is refused too.
sed 's/127.0.0.3/127.0.0.4/' web-2.yaml >dup.yaml
got=0
timeout 20 "$meshctl" apply -f dup.yaml --etcd-endpoints "$EPS" >dup.out 2>dup.err || got=$?
equals duplicate-exit "$got" 1
matches duplicate dup.err 'web-2'

# ---- A meshd discovering through replica a: its requests go on while a member dies.
"$pki" "$tmp" client shop client >/dev/null
timeout 80 "$PY" "$peers" backend "$P_APP" api-1 >app.log 2>&1 &
pids+=("$!")
MESH_PROXY_WORKLOAD_NAMESPACE=shop timeout 80 "$meshd" --identity-dir client \
  --outbound-listen-addr "" --inbound-listen-addr "" --admin-listen-addr "127.0.0.1:$P_MADM" \
  --destination-addr "127.0.0.1:$a_port" \
  --outbound-port-map "127.0.0.1:$P_OUT=api.shop.svc.cluster.local:80" >meshd.log 2>&1 &
pids+=("$!")
for _ in $(seq 100); do
  [ "$(curl -s -m 2 "http://127.0.0.1:$P_OUT/" 2>/dev/null)" = api-1 ] && break
  sleep 0.05
done
equals through-meshd "$(curl -s -m 5 "http://127.0.0.1:$P_OUT/" 2>/dev/null)" api-1
# Requests one after another until told to stop: "answered failed".
timeout 60 "$PY" - "$P_OUT" >loop.out 2>&1 <<'EOF' &
import os, sys, time, urllib.request
port, good, bad = sys.argv[1], 0, 0
while not os.path.exists("stop"):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            ok = r.status == 200 and r.read().strip() == b"api-1"
    except Exception:
        ok = False
    good, bad = good + ok, bad + (not ok)
    if good == 1:
        open("started", "w").close()
    time.sleep(0.01)
print(good, bad)
EOF
loop=$!
pids+=("$loop")
for _ in $(seq 200); do [ -e started ] && break; sleep 0.02; done
sleep 0.2

# ---- Kill the member replica a reads from: updates keep flowing.
kill "${epid[0]}"
wait "${epid[0]}" 2>/dev/null || true
sed 's/web-2/web-3/; s/127.0.0.3/127.0.0.5/; s/weight: 3/weight: 5/' web-2.yaml >web-3.yaml
checks=$((checks + 1))
timeout 20 "$meshctl" apply -f web-3.yaml --etcd-endpoints "$EPS" >/dev/null 2>apply3.err ||
  fail "apply with a member down: $(cat apply3.err)"
within failover-a 2000 ga.out '"addr":"127\.0\.0\.5:4143","weight":5'
echo "update after the member's death reached replica a in ${took} ms"
within failover-b 2000 gb.out '"addr":"127\.0\.0\.5:4143","weight":5'
matches failover-log a.log "etcd http://127\.0\.0\.1:${C[0]}: .*resuming the watch on http://127\.0\.0\.1:${C[1]}"
within connected-a 3000 a.log "watching /libmesh/ from revision"
equals connected-metric "$(metric "$a_admin" destination_store_connected)" 1
same get-3 "$GET" web.shop:80 '127\.0\.0\.5:4143'
touch stop
wait "$loop" || true
read -r answered failed <loop.out || true
echo "meshd: ${answered:-?} requests answered, ${failed:-?} failed while a member died"
equals meshd-no-failure "${failed:-none}" 0
checks=$((checks + 1))
[ "${answered:-0}" -gt 20 ] || fail "meshd: only ${answered:-0} requests answered"

# ---- A bad manifest put straight into etcd: both replicas keep the last good state and say why.
bad=$(base64 -w0 bad.yaml)
curl -sf -X POST "http://127.0.0.1:${C[1]}/v3/kv/put" -d "{\"key\":\"$bkey\",\"value\":\"$bad\"}" >/dev/null
for r in a b; do
  eval "adm=\$${r}_admin"
  for _ in $(seq 100); do
    [ "$(metric "$adm" destination_store_failing)" = 1 ] && break
    sleep 0.02
  done
  equals "failing-$r" "$(metric "$adm" destination_store_failing)" 1
  curl -s "http://127.0.0.1:$adm/store" >"store-$r.txt"
  matches "store-error-$r" "store-$r.txt" '^failing: /libmesh/manifests/shop/bad\.yaml:4:[0-9]+: error: '
done
absent_lines=$( (grep -h '127\.0\.0\.9' ga.out gb.out || true) | wc -l)
equals bad-not-served "$absent_lines" 0
same get-kept "$GET" web.shop:80 '127\.0\.0\.5:4143'
curl -sf -X POST "http://127.0.0.1:${C[1]}/v3/kv/deleterange" -d "{\"key\":\"$bkey\"}" >/dev/null

# ---- A replica whose first read is refused is not ready; it is once the key is fixed.
okey=$(printf '/other/bad.yaml' | base64 -w0)
curl -sf -X POST "http://127.0.0.1:${C[1]}/v3/kv/put" -d "{\"key\":\"$okey\",\"value\":\"$bad\"}" >/dev/null
timeout 60 "$daemon" --etcd-endpoints "$EPS" --etcd-prefix /other/ --listen 127.0.0.1:0 \
  --admin 127.0.0.1:0 --no-dns-fallback 2>>c.log &
pids+=("$!")
c_pid=$!
within c-read 3000 c.log 'read 1 keys under /other/'
c_admin=$(sed -n 's/.*admin .* listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' c.log | tail -1)
equals c-not-ready "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$c_admin/ready")" 503
curl -sf -X POST "http://127.0.0.1:${C[1]}/v3/kv/put" \
  -d "{\"key\":\"$okey\",\"value\":\"$(base64 -w0 in/web.yaml)\"}" >/dev/null
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$c_admin/ready")" = 200 ] && break
  sleep 0.02
done
equals c-ready "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$c_admin/ready")" 200
kill "$c_pid"
got=0
timeout 5 "$daemon" --etcd-endpoints "$EPS" --store-dir . >/dev/null 2>both.err || got=$?
equals both-sources "$got" 2
matches both-sources both.err 'either --store-dir or --etcd-endpoints'

# ---- meshctl delete KIND NAME: the workload goes from both.
checks=$((checks + 1))
timeout 20 "$meshctl" delete Workload web-2 -n shop --etcd-endpoints "$EPS" >del.out 2>del.err ||
  fail "delete: $(cat del.err)"
within remove-a 1000 ga.out '^\{"remove":\{"addrs":\[\{"addr":"127\.0\.0\.3:4143"\}\]\}\}$'
within remove-b 1000 gb.out '^\{"remove":\{"addrs":\[\{"addr":"127\.0\.0\.3:4143"\}\]\}\}$'
got=0
timeout 20 "$meshctl" delete Workload web-2 -n shop --etcd-endpoints "$EPS" >/dev/null 2>del2.err || got=$?
equals delete-missing-exit "$got" 1
matches delete-missing del2.err 'no Workload web-2 in namespace shop'

# ---- A compaction while the replicas are cut off: they read everything again.
start_member 0
for _ in $(seq 100); do healthy 0 && break; sleep 0.05; done
# The daemons themselves, not the timeout processes above them.
a_dpid=$(pgrep -P "$a_pid") b_dpid=$(pgrep -P "$b_pid")
kill -STOP "$a_dpid" "$b_dpid"
kill "${epid[1]}" # the member both replicas watch now
wait "${epid[1]}" 2>/dev/null || true
sed 's/web-2/web-4/; s/127.0.0.3/127.0.0.6/; s/weight: 3/weight: 6/' web-2.yaml >web-4.yaml
timeout 20 "$meshctl" apply -f web-4.yaml --etcd-endpoints "$EPS" >/dev/null
# One more revision (a key that is not a manifest), so that the replicas' next one is compacted.
curl -sf -X POST "http://127.0.0.1:${C[2]}/v3/kv/put" \
  -d "{\"key\":\"$(printf /libmesh/README | base64 -w0)\",\"value\":\"$(printf notes | base64 -w0)\"}" >/dev/null
rev=$(curl -s -X POST "http://127.0.0.1:${C[2]}/v3/kv/range" -d '{"key":"AA=="}' |
  "$PY" -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
curl -sf -X POST "http://127.0.0.1:${C[2]}/v3/kv/compaction" -d "{\"revision\":\"$rev\",\"physical\":true}" >/dev/null
kill -CONT "$a_dpid" "$b_dpid"
within compacted-a 3000 ga.out '"addr":"127\.0\.0\.6:4143","weight":6'
within compacted-b 3000 gb.out '"addr":"127\.0\.0\.6:4143","weight":6'
matches compacted-log a.log 'watch canceled \(revision compacted'
same get-4 "$GET" web.shop:80 '127\.0\.0\.6:4143'

# ---- Registrations live in etcd under leases: every replica serves them, a
# replica started later reads them, they lapse with their lease, and
# meshctl shows them but does not delete them.
register() { # REPLICA_PORT NAME ADDRESS LEASE_SECONDS: the answer's body
  timeout 5 curl -sS --http2-prior-knowledge -H 'content-type: application/json' \
    --data-binary "{\"namespace\":\"shop\",\"name\":\"$2\",\"serviceAccount\":\"web\",\"address\":\"$3\",\"labels\":{\"app\":\"web\"},\"ports\":[{\"name\":\"http\",\"port\":8080}],\"lease_seconds\":$4}" \
    "http://127.0.0.1:$1/mesh.Registry/Register"
}
deregister() { # REPLICA_PORT NAME: the answer's body
  timeout 5 curl -sS --http2-prior-knowledge -H 'content-type: application/json' \
    --data-binary "{\"namespace\":\"shop\",\"name\":\"$2\"}" "http://127.0.0.1:$1/mesh.Registry/Deregister"
}
register "$a_port" web-r 127.0.0.8 30 >reg1.out
matches register-a reg1.out '^\{"lease_id":"[0-9a-f]{16}","lease_seconds":30,"renewed":false\}$'
within registered-a 1000 ga.out '"addr":"127\.0\.0\.8:4143"'
echo "a registration through replica a reached a's stream in ${took} ms"
within registered-b 1000 gb.out '"addr":"127\.0\.0\.8:4143"'
echo "... and b's in ${took} ms"
register "$b_port" web-r 127.0.0.8 30 >reg2.out # a renewal through the other replica: the same lease
equals renewed-same-lease "$(sed 's/"renewed":false/"renewed":true/' reg1.out)" "$(cat reg2.out)"
checks=$((checks + 1))
timeout 20 "$meshctl" get workload web-r -n shop -o wide --etcd-endpoints "$EPS" >getreg.out 2>getreg.err ||
  fail "meshctl get on etcd: $(cat getreg.err)"
matches get-registration getreg.out '^web-r .*registration shop/web-r:1$'
checks=$((checks + 1))
timeout 20 "$meshctl" get workload -n shop --etcd-endpoints "$EPS" >getall.out 2>&1 || fail "meshctl get: $(cat getall.out)"
matches get-manifests-too getall.out '^web-1 '
got=0
timeout 20 "$meshctl" delete Workload web-r -n shop --etcd-endpoints "$EPS" >/dev/null 2>delreg.err || got=$?
equals delete-registration-exit "$got" 1
matches delete-registration delreg.err 'is a registration shop/web-r: it goes when its proxy deregisters'
# A manifest of a registered name is refused by apply (mesh-destination would refuse the set).
sed 's/web-2/web-r/' web-2.yaml >dup-reg.yaml
got=0
timeout 20 "$meshctl" apply -f dup-reg.yaml --etcd-endpoints "$EPS" >/dev/null 2>dupreg.err || got=$?
equals apply-over-registration-exit "$got" 1
matches apply-over-registration dupreg.err 'Workload shop/web-r is already defined at registration shop/web-r'
# A replica started now reads the registration from etcd.
start_replica c2 "http://127.0.0.1:${C[2]}"
x=$(once "$c2_port" "$GET" web.shop:80)
printf '%s\n' "$x" >late.first
matches late-replica late.first '127\.0\.0\.8:4143'
kill "$c2_pid"
# Deregistering through b removes web-r from both; web-s, never renewed, lapses with its lease.
register "$a_port" web-s 127.0.0.10 3 >/dev/null
within registered-s 1000 gb.out '"addr":"127\.0\.0\.10:4143"'
equals deregister "$(deregister "$b_port" web-r)" '{}'
within deregistered-a 1000 ga.out '^\{"remove":\{"addrs":\[\{"addr":"127\.0\.0\.8:4143"\}\]\}\}$'
echo "a deregistration through replica b reached a's stream in ${took} ms"
within lapsed-a 6000 ga.out '^\{"remove":\{"addrs":\[\{"addr":"127\.0\.0\.10:4143"\}\]\}\}$'
within lapsed-b 1000 gb.out '^\{"remove":\{"addrs":\[\{"addr":"127\.0\.0\.10:4143"\}\]\}\}$'
matches lapsed-log a.log 'registration shop/web-s: gone from etcd'
got=$(deregister "$a_port" web-s)
printf '%s\n' "$got" >dereg-gone.out
matches deregister-gone dereg-gone.out '"code":"not_found".*no registration shop/web-s'
equals no-registration-left "$(curl -s -X POST "http://127.0.0.1:${C[2]}/v3/kv/range" \
  -d "{\"key\":\"$(printf /libmesh/registrations/ | base64 -w0)\",\"range_end\":\"$(printf /libmesh/registrations0 | base64 -w0)\",\"count_only\":true}" |
  "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("count","0"))')" 0

# ---- Kill replica b: a keeps answering, old streams and new.
kill "$b_pid"
wait "$b_pid" 2>/dev/null || true
sed 's/web-2/web-5/; s/127.0.0.3/127.0.0.7/' web-2.yaml >web-5.yaml
timeout 20 "$meshctl" apply -f web-5.yaml --etcd-endpoints "$EPS" >/dev/null
within after-replica-death 1000 ga.out '"addr":"127\.0\.0\.7:4143"'
x=$(once "$a_port" "$GET" web.shop:80)
printf '%s\n' "$x" >alone.first
matches alone alone.first '127\.0\.0\.7:4143'

# ---- meshctl apply and delete on a directory: whole files, refusals change nothing.
mkdir store
checks=$((checks + 1))
timeout 20 "$meshctl" apply -f in --store-dir store >dir.out 2>dir.err || fail "apply --store-dir: $(cat dir.err)"
equals dir-files "$(ls -A store | tr '\n' ' ')" "split.yaml web-1.yaml web.yaml "
got=0
timeout 20 "$meshctl" apply -f bad.yaml --store-dir store >/dev/null 2>dirbad.err || got=$?
equals dir-refused "$got" 1
matches dir-refused-position dirbad.err '^bad\.yaml:4:[0-9]+: error: '
equals dir-unchanged "$(ls -A store | tr '\n' ' ')" "split.yaml web-1.yaml web.yaml "
checks=$((checks + 1))
timeout 20 "$meshctl" delete TrafficSplit web-split -n shop --store-dir store >/dev/null 2>dirdel.err ||
  fail "delete --store-dir: $(cat dirdel.err)"
equals dir-deleted "$(ls -A store | tr '\n' ' ')" "web-1.yaml web.yaml "

echo "$checks checks, $failures failures"
[ "$failures" -eq 0 ]
