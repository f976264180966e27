#!/usr/bin/env bash
# meshctl check end to end: a real mesh-identity, mesh-destination and meshd; a stopped daemon, an expiring issuer, busy ports.
set -euo pipefail
meshctl=$(realpath "$1")
ident=$(realpath "$2")
dest=$(realpath "$3")
meshd=$(realpath "$4")
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "FAIL: line $LINENO: a setup command failed"' ERR
cd "$tmp"
failures=0 checks=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# run NAME EXPECTED_STATUS ARGS...: meshctl (bounded in time), stdout in out, stderr in err.
run() {
  local name=$1 want=$2
  shift 2
  local got=0
  checks=$((checks + 1))
  timeout 60 "$meshctl" "$@" >out 2>err </dev/null || got=$?
  if [ "$got" != "$want" ]; then
    fail "$name: exit $got, expected $want"
    sed 's/^/  stdout: /' out
    sed 's/^/  stderr: /' err
  fi
}

# matches NAME FILE REGEX / lacks NAME FILE REGEX
matches() {
  checks=$((checks + 1))
  grep -qE -- "$3" "$2" || { fail "$1: nothing matches /$3/ in $2:"; sed 's/^/  /' "$2"; }
}
lacks() {
  checks=$((checks + 1))
  ! grep -qE -- "$3" "$2" || { fail "$1: /$3/ matches in $2:"; sed 's/^/  /' "$2"; }
}

wait_ready() { # URL
  for _ in $(seq 100); do curl -fsS -m 1 "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "FAIL: $1 does not become ready"
  tail -n 20 ./*.log
  exit 1
}

read -r P_IN P_ADM P_BUSY P_FREE <<<"$(python3 -c '
import socket
s = [socket.socket() for _ in range(4)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')"

# ---- a control plane: identity, destination with a store, one meshd with certified credentials.
"$meshctl" identity init --dir id >/dev/null
timeout 100 "$ident" --dir id --listen 127.0.0.1:0 --admin 127.0.0.1:0 2>identity.log &
pids+=($!)
mkdir store
cat >store/web.yaml <<'YAML'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: http}
YAML
timeout 100 "$dest" --store-dir store --listen 127.0.0.1:0 --admin 127.0.0.1:0 2>destination.log &
dpid=$!
pids+=("$dpid")
for _ in $(seq 100); do
  grep -q "admin .* listening" identity.log && grep -q "admin .* listening" destination.log && break
  sleep 0.1
done
admin_port() { sed -n 's/.*admin .* listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$1"; }
IPORT=$(sed -n 's/.*Certify .* listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' identity.log)
IADM=$(admin_port identity.log)
DADM=$(admin_port destination.log)
[ -n "$IPORT" ] && [ -n "$IADM" ] && [ -n "$DADM" ] || { echo "FAIL: the control plane did not start"; cat ./*.log; exit 1; }

tok=$("$meshctl" identity token --ns shop --sa web --key id/token.key)
timeout 20 "$meshctl" identity certify --addr "127.0.0.1:$IPORT" --dir id --token "$tok" --ns shop --sa web \
  --out-dir "$tmp/web" >/dev/null
cp id/ca.crt web/ca.crt # certify writes leaf.crt, chain.crt and key.pem; meshd also wants the anchors
timeout 100 "$meshd" --identity-dir "$tmp/web" --inbound-listen-addr "127.0.0.1:$P_IN" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_ADM" >meshd.log 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$IADM/ready"
wait_ready "http://127.0.0.1:$DADM/ready"
wait_ready "http://127.0.0.1:$P_ADM/ready"

cp=(--identity-addr "127.0.0.1:$IADM" --destination-addr "127.0.0.1:$DADM" --identity-dir id
  --proxy "127.0.0.1:$P_ADM" --store-dir store)
ID=web.shop.serviceaccount.identity.linkerd.cluster.local

# ---- all well: every check √, exit 0.
run healthy 0 check "${cp[@]}"
for cat in control-plane identity data-plane manifests; do matches "healthy-$cat" out "^$cat$"; done
matches healthy out "^√ mesh-identity is ready at 127\.0\.0\.1:$IADM$"
matches healthy out "^√ mesh-destination is ready at 127\.0\.0\.1:$DADM$"
matches healthy out "^√ issuer certificate is issued by the trust anchor$"
matches healthy out "^√ issuer certificate is valid for at least 60 days$"
matches healthy out "^√ proxy is ready at 127\.0\.0\.1:$P_ADM$"
matches healthy out "^√ proxy 127\.0\.0\.1:$P_ADM holds a valid certificate for $ID$"
matches healthy out "^√ proxy 127\.0\.0\.1:$P_ADM's certificate is issued by the trust anchor$"
matches healthy out "^√ proxy 127\.0\.0\.1:$P_ADM runs meshctl's version \($("$meshctl" version --short)\)$"
matches healthy out "^√ manifests in store are valid \(1 file\)$"
matches healthy out "^Status check results are √$"
lacks healthy out "^(‼|×) "

# ---- -o json: the stable shape.
run json 0 check "${cp[@]}" -o json
checks=$((checks + 1))
python3 - out <<'PY' || fail "json: wrong shape"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["status"] == "ok" and r["success"] is True, r
names = [c["name"] for c in r["categories"]]
assert names == ["control-plane", "identity", "data-plane", "manifests"], names
for c in r["categories"]:
    assert c["checks"], c
    for k in c["checks"]:
        assert set(k) == {"description", "result", "hint"}, k
        assert k["result"] == "ok", k
PY

# ---- a broken manifest: ×, with the diagnostic as the hint.
printf 'apiVersion: mesh.libmesh.io/v1alpha1\nkind: Service\nmetadata: {name: Bad_Name, namespace: shop}\n' >store/bad.yaml
run bad-manifest 1 check "${cp[@]}"
matches bad-manifest out "^× manifests in store are valid \(2 files\)$"
matches bad-manifest out "^    store/bad\.yaml:[0-9]+:[0-9]+: error: "
rm store/bad.yaml

# ---- an issuer from another anchor: ×; the proxy's certificate no longer chains to that anchor: ×.
"$meshctl" identity init --dir other >/dev/null
run foreign 1 check "${cp[@]}" --identity-dir other
matches foreign out "^√ issuer certificate is issued by the trust anchor$"
matches foreign out "^× proxy 127\.0\.0\.1:$P_ADM's certificate is issued by the trust anchor$"
cp id/ca.crt mixed-ca.crt
mkdir mixed && cp other/ca.crt mixed/ca.crt && cp id/issuer.crt mixed/issuer.crt
run foreign-issuer 1 check --identity-addr "127.0.0.1:$IADM" --destination-addr "127.0.0.1:$DADM" --identity-dir mixed
matches foreign-issuer out "^× issuer certificate is issued by the trust anchor$"
matches foreign-issuer out "not signed by the trust anchors in mixed/ca\.crt"

# ---- an anchor and issuer expiring within 60 days (openssl's, installed with identity init): ‼, still exit 0.
ca_ext=(-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign")
openssl ecparam -genkey -name prime256v1 -noout -out root.key
openssl req -x509 -new -key root.key -subj "/CN=root.linkerd.cluster.local" -days 30 "${ca_ext[@]}" -out root.pem 2>/dev/null
openssl ecparam -genkey -name prime256v1 -noout -out issuer.key
openssl req -new -key issuer.key -subj "/CN=identity.linkerd.cluster.local" -out issuer.csr 2>/dev/null
printf '%s\n' "basicConstraints=critical,CA:TRUE,pathlen:0" "keyUsage=critical,keyCertSign,cRLSign" >ca.ext
openssl x509 -req -in issuer.csr -CA root.pem -CAkey root.key -CAcreateserial -days 20 -extfile ca.ext \
  -out issuer.pem 2>/dev/null
"$meshctl" identity init --dir soon --identity-trust-anchors-file root.pem \
  --identity-issuer-certificate-file issuer.pem --identity-issuer-key-file issuer.key >/dev/null
run soon 0 check --identity-addr "127.0.0.1:$IADM" --destination-addr "127.0.0.1:$DADM" --identity-dir soon
matches soon out "^√ issuer certificate is valid$"
matches soon out "^‼ issuer certificate is valid for at least 60 days$"
matches soon out "^    soon/issuer\.crt: issuer expires on .*, within 60 days: rotate it$"
matches soon out "^‼ trust anchors are valid for at least 60 days$"
matches soon out "^Status check results are ‼$"
run soon-json 0 check --identity-addr "127.0.0.1:$IADM" --destination-addr "127.0.0.1:$DADM" --identity-dir soon -o json
checks=$((checks + 1))
python3 -c '
import json, sys
r = json.load(sys.stdin)
ident = {k["description"]: k for c in r["categories"] if c["name"] == "identity" for k in c["checks"]}
w = ident["issuer certificate is valid for at least 60 days"]
assert w["result"] == "warning" and "within 60 days" in w["hint"], w
assert r["status"] == "warning" and r["success"] is True, r' <out || fail "soon-json: report"

# ---- a proxy that is not there: ×, quickly.
run no-proxy 1 check --identity-addr "127.0.0.1:$IADM" --destination-addr "127.0.0.1:$DADM" --proxy "127.0.0.1:$P_BUSY"
matches no-proxy out "^× proxy is ready at 127\.0\.0\.1:$P_BUSY$"
matches no-proxy out "cannot connect to 127\.0\.0\.1:$P_BUSY: Connection refused"

# ---- mesh-destination stopped: ×, exit 1; the rest still reported.
kill "$dpid"
wait "$dpid" 2>/dev/null || true
run dest-down 1 check "${cp[@]}"
matches dest-down out "^× mesh-destination is ready at 127\.0\.0\.1:$DADM$"
matches dest-down out "^    cannot connect to 127\.0\.0\.1:$DADM: Connection refused$"
matches dest-down out "^√ mesh-identity is ready at 127\.0\.0\.1:$IADM$"
matches dest-down out "^√ proxy 127\.0\.0\.1:$P_ADM holds a valid certificate for $ID$"
matches dest-down out "^Status check results are ×$"
run dest-down-json 1 check "${cp[@]}" -o json
checks=$((checks + 1))
python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["status"]=="error" and r["success"] is False, r' <out ||
  fail "dest-down-json: report"

# ---- a server that accepts and never answers: a bounded wait, then ×.
python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
print("listening", flush=True); time.sleep(90)' "$P_BUSY" >busy.log &
pids+=($!)
for _ in $(seq 100); do grep -q listening busy.log && break; sleep 0.05; done
t0=$(date +%s)
run silent 1 check --identity-addr "127.0.0.1:$P_BUSY" --destination-addr "127.0.0.1:$IADM"
matches silent out "^× mesh-identity is ready at 127\.0\.0\.1:$P_BUSY$"
matches silent out "no answer within the timeout"
checks=$((checks + 1))
[ $(($(date +%s) - t0)) -le 10 ] || fail "silent: took $(($(date +%s) - t0)) s"

# ---- --pre: the busy port (the silent server's) is ×; free ones are √.
run pre-busy 1 check --pre --ports "$P_BUSY,$P_FREE"
matches pre-busy out "^kernel$"
matches pre-busy out "^√ inotify is available$"
matches pre-busy out "^(√|‼) iptables nat table is usable$"
matches pre-busy out "^× port $P_BUSY is free$"
matches pre-busy out "^    another process listens on port $P_BUSY"
matches pre-busy out "^√ port $P_FREE is free$"
matches pre-busy out "^tools$"
matches pre-busy out "^√ system time is after meshctl's build date$"
run pre-free 0 check --pre --ports "$P_FREE" --identity-dir id -o json
checks=$((checks + 1))
python3 -c '
import json, sys
r = json.load(sys.stdin)
names = [c["name"] for c in r["categories"]]
assert names == ["kernel", "ports", "tools", "clock"], names
ports = r["categories"][1]["checks"]
assert [k["result"] for k in ports] == ["ok"], ports
clock = [k["description"] for k in r["categories"][3]["checks"]]
assert "system time is after the trust anchor'"'"'s notBefore" in clock, clock' <out || fail "pre-free: report"

# ---- usage errors.
run bad-ports 2 check --pre --ports 80,x
run pre-and-proxy 2 check --pre --proxy 127.0.0.1:1
run bad-output 2 check -o yaml
run extra 2 check extra
run help 0 check --help
matches help out "meshctl check --pre"
run list 0 help
matches list out "^  check +"

if [ "$failures" -ne 0 ]; then
  echo "$failures of $checks meshctl check check(s) failed"
  exit 1
fi
echo "ok: $checks meshctl check checks"
