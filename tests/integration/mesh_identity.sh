#!/usr/bin/env bash
# mesh-identity end to end: meshctl certify, curl and openssl against the daemon; refusals, issuer rotation, metrics.
set -euo pipefail
daemon=$(realpath "$1")
meshctl=$(realpath "$2")
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
SERVER=identity.linkerd.serviceaccount.identity.linkerd.cluster.local
DNS=web.shop.serviceaccount.identity.linkerd.cluster.local
URI=spiffe://cluster.local/ns/shop/sa/web

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# matches NAME FILE REGEX: some line of FILE matches the extended REGEX.
matches() {
  checks=$((checks + 1))
  grep -qE -- "$3" "$2" || { fail "$1: nothing matches /$3/ in $2:"; sed 's/^/  /' "$2"; }
}

# equals NAME GOT WANT
equals() {
  checks=$((checks + 1))
  [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
}

token() { # NS SA [flags...]
  local ns=$1 sa=$2
  shift 2
  "$meshctl" identity token --ns "$ns" --sa "$sa" --key id/token.key "$@"
}

# certify NAME EXPECTED_STATUS TOKEN [flags...]: meshctl identity certify for shop/web.
certify() {
  local name=$1 want=$2 tok=$3
  shift 3
  local got=0
  checks=$((checks + 1))
  timeout 20 "$meshctl" identity certify --addr "127.0.0.1:$PORT" --dir id --token "$tok" \
    --ns shop --sa web "$@" >out 2>err </dev/null || got=$?
  if [ "$got" != "$want" ]; then
    fail "$name: exit $got, expected $want"
    sed 's/^/  stdout: /' out
    sed 's/^/  stderr: /' err
  fi
}

# post NAME BODY_FILE: POST the file to Certify with curl over HTTP/2 and TLS;
# the status goes to $status and the body to resp.
post() {
  status=$(timeout 20 curl -sS --http2 --cacert id/ca.crt --connect-to "$SERVER:443:127.0.0.1:$PORT" \
    -H 'content-type: application/json' --data-binary "@$2" -o resp -w '%{http_code}' \
    "https://$SERVER/identity.Identity/Certify" 2>curl.err) || { fail "$1: curl failed: $(cat curl.err)"; status=0; }
}

metric() { # NAME [LABELS]: the value of a sample on /metrics
  timeout 10 curl -sS "http://127.0.0.1:$APORT/metrics" | awk -v m="$1${2:-}" '$1 == m { print $2 }'
}

issuer_cn() { openssl x509 -in "$1" -noout -issuer | sed 's/.*CN *= *//'; }

# ---- An anchor whose key we keep (to rotate issuers under it), and a first issuer.
ca_ext=(-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign")
printf '%s\n' "basicConstraints=critical,CA:TRUE,pathlen:0" "keyUsage=critical,keyCertSign,cRLSign" \
  "subjectKeyIdentifier=hash" >ca.ext
openssl ecparam -genkey -name prime256v1 -noout -out root.key
openssl req -x509 -new -key root.key -subj "/CN=root.linkerd.cluster.local" -days 30 "${ca_ext[@]}" \
  -out root.pem 2>/dev/null
make_issuer() { # NAME CN [ANCHOR_PEM ANCHOR_KEY [EXTFILE]]
  openssl ecparam -genkey -name prime256v1 -noout -out "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "${3:-root.pem}" -CAkey "${4:-root.key}" -CAcreateserial \
    -days 20 -extfile "${5:-ca.ext}" -out "$1.pem" 2>/dev/null
}
make_issuer issuer1 "Issuer One"
"$meshctl" identity init --dir id --identity-trust-anchors-file root.pem \
  --identity-issuer-certificate-file issuer1.pem --identity-issuer-key-file issuer1.key >/dev/null

# ---- Start the daemon on free ports (port 0), learning them from its log.
timeout 300 "$daemon" --dir id --listen 127.0.0.1:0 --admin 127.0.0.1:0 2>daemon.log &
dpid=$!
pids+=("$dpid")
for _ in $(seq 100); do grep -q "admin .* listening" daemon.log && break; sleep 0.1; done
PORT=$(sed -n 's/.*Certify .* listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' daemon.log)
APORT=$(sed -n 's/.*admin .* listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' daemon.log)
[ -n "$PORT" ] && [ -n "$APORT" ] || { echo "FAIL: mesh-identity did not start"; cat daemon.log; exit 1; }
matches start daemon.log "serving certificate for $SERVER"
matches start daemon.log "issuer loaded \(start\): CN=Issuer One"
equals ready "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/ready")" 200
equals live "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/live")" 200

# ---- A certificate, judged by openssl.
good=$(token shop web)
certify certify 0 "$good" --out-dir cert1
matches certify out "^Certified $DNS$"
matches certify out "^  SPIFFE ID: +$URI$"
matches certify out "^  Issuer: +CN=Issuer One$"
matches certify out "^  Chain: +verified against id/ca\.crt$"
checks=$((checks + 1))
openssl verify -CAfile id/ca.crt -untrusted cert1/chain.crt cert1/leaf.crt >verify.out 2>&1 ||
  { fail "openssl verify refused the leaf"; cat verify.out; }
openssl x509 -in cert1/leaf.crt -noout -text >leaf.txt
matches leaf-sans leaf.txt "DNS:$DNS"
matches leaf-sans leaf.txt "URI:$URI"
matches leaf-ca leaf.txt "CA:FALSE"
equals key-mode "$(stat -c %a cert1/key.pem)" 600
checks=$((checks + 1))
cmp -s <(openssl pkey -in cert1/key.pem -pubout) <(openssl x509 -in cert1/leaf.crt -noout -pubkey) ||
  fail "key.pem is not the leaf's key"
left=$(($(date -d "$(openssl x509 -in cert1/leaf.crt -noout -enddate | cut -d= -f2)" +%s) - $(date +%s)))
checks=$((checks + 1))
[ "$left" -gt 86000 ] && [ "$left" -le 86400 ] || fail "leaf lasts ${left}s, not 24h"
# Without --out-dir nothing is written; a token file with a newline is fine.
token shop web >tok.txt
checks=$((checks + 1))
timeout 20 "$meshctl" identity certify --addr "127.0.0.1:$PORT" --anchors id/ca.crt --token-file tok.txt \
  --ns shop --sa web >out 2>err || { fail "certify --token-file: $(cat err)"; }
matches token-file out "^Certified $DNS$"
issued=2

# The client checks who it talks to: another control-plane namespace is another server identity.
certify wrong-server 1 "$good" --cp-namespace other
matches wrong-server err "cannot reach the identity service .* as identity\.other\.serviceaccount"

# ---- Refusals: each names its reason, and the daemon keeps serving.
"$meshctl" identity init --dir other >/dev/null
forged=$("$meshctl" identity token --ns shop --sa web --key other/token.key)
certify forged 1 "$forged"
matches forged err "refused the request \(HTTP 401, unauthenticated\): token was signed by another key"
short=$(token shop web --ttl 1s)
sleep 2
certify expired 1 "$short"
matches expired err "\(HTTP 401, unauthenticated\): token has expired"
certify other-sa 1 "$(token shop admin)"
matches other-sa err "\(HTTP 401, unauthenticated\): token names another namespace or service account"
certify other-ns 1 "$(token bank web)"
matches other-ns err "\(HTTP 401, unauthenticated\)"
certify audience 1 "$(token shop web --audience somebody-else)"
matches audience err "\(HTTP 401, unauthenticated\): token audience does not match"
unauth=5

echo 'this is not JSON' >junk.json
post garbage junk.json
echo >>resp
equals garbage-status "$status" 400
matches garbage resp '"code":"invalid_argument"'
matches garbage resp 'not a JSON object'
echo '{"identity":"'"$DNS"'"}' >partial.json
post partial partial.json
equals partial-status "$status" 400
matches partial resp 'lacks .*token'
printf '{"identity":"%s","token":"%s","certificate_signing_request":"-----BEGIN CERTIFICATE REQUEST-----\\nAAAA\\n-----END CERTIFICATE REQUEST-----\\n"}' \
  "$DNS" "$good" >badcsr.json
post bad-csr badcsr.json
equals bad-csr-status "$status" 400
invalid=3
echo '{"identity":"spiffe://example.org/ns/shop/sa/web","token":"a.b.c","certificate_signing_request":"x"}' >foreign.json
post foreign foreign.json
equals foreign-status "$status" 412
matches foreign resp '"code":"failed_precondition"'
matches foreign resp 'trust domain'
head -c 70000 /dev/zero | tr '\0' ' ' >big.json
post oversized big.json
equals oversized-status "$status" 413
matches oversized resp '"code":"resource_exhausted"'
# A raw junk HTTP/2 body with nghttp as well (another client implementation).
timeout 20 nghttp -v -H 'content-type: application/json' -d junk.json \
  "https://127.0.0.1:$PORT/identity.Identity/Certify" >nghttp.out 2>&1 || true
matches nghttp-junk nghttp.out ':status: 400'
matches nghttp-junk nghttp.out '"code":"invalid_argument"'
invalid=$((invalid + 1))

certify after-refusals 0 "$good"
matches after-refusals out "^Certified $DNS$"
issued=$((issued + 1))

# ---- Issuer rotation under load: a new issuer under the same anchor, swapped
# while certify calls run back to back; none may fail.
make_issuer issuer2 "Issuer Two"
(
  n=0 bad=0
  end=$((SECONDS + 6))
  while [ $SECONDS -lt $end ]; do
    if timeout 20 "$meshctl" identity certify --addr "127.0.0.1:$PORT" --dir id --token "$good" \
      --ns shop --sa web >/dev/null 2>loop.err; then n=$((n + 1)); else bad=$((bad + 1)); cat loop.err >>loop.errors; fi
  done
  echo "$n $bad" >loop.result
) &
loop=$!
sleep 2
cp issuer2.pem id/.issuer.crt.new
cp issuer2.key id/.issuer.key.new
mv id/.issuer.key.new id/issuer.key
mv id/.issuer.crt.new id/issuer.crt
kill -HUP "$dpid"
wait "$loop"
read -r loop_ok loop_bad <loop.result
echo "rotation: $loop_ok certify calls succeeded during the swap, $loop_bad failed"
equals rotation-failures "$loop_bad" 0
[ -s loop.errors ] && sed 's/^/  /' loop.errors
checks=$((checks + 1))
[ "$loop_ok" -ge 3 ] || fail "only $loop_ok certify calls ran during the rotation"
issued=$((issued + loop_ok))
matches rotated daemon.log "issuer loaded \((SIGHUP|files changed)\): CN=Issuer Two"
certify after-rotation 0 "$good" --out-dir cert2
matches after-rotation out "^  Issuer: +CN=Issuer Two$"
issued=$((issued + 1))
equals leaf-issuer "$(issuer_cn cert2/leaf.crt)" "Issuer Two"
checks=$((checks + 1))
openssl verify -CAfile id/ca.crt -untrusted cert2/chain.crt cert2/leaf.crt >/dev/null 2>&1 ||
  fail "openssl verify refused the leaf of the new issuer"
equals chain-is-issuer2 "$(openssl x509 -in cert2/chain.crt -noout -serial)" "$(openssl x509 -in issuer2.pem -noout -serial)"

# The files alone (no signal) are enough: a third issuer is picked up within seconds.
make_issuer issuer3 "Issuer Three"
cp issuer3.key id/issuer.key
cp issuer3.pem id/issuer.crt
for _ in $(seq 50); do grep -q "CN=Issuer Three" daemon.log && break; sleep 0.1; done
matches file-change daemon.log "issuer loaded \(files changed\): CN=Issuer Three"
certify after-file-change 0 "$good"
matches after-file-change out "^  Issuer: +CN=Issuer Three$"
issued=$((issued + 1))

# ---- Bad issuers are refused; the previous one keeps serving.
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" >leaf.ext
make_issuer notca "Not A CA" root.pem root.key leaf.ext
openssl ecparam -genkey -name prime256v1 -noout -out other-root.key
openssl req -x509 -new -key other-root.key -subj "/CN=Other Root" -days 30 "${ca_ext[@]}" -out other-root.pem 2>/dev/null
make_issuer foreign "Foreign Issuer" other-root.pem other-root.key
# An issuer that expired in 2020, signed with `openssl ca` (the only way to backdate without faketime).
touch index.txt
echo 01 >serial
printf '%s\n' "[ca]" "default_ca = old" "[old]" "database = index.txt" "new_certs_dir = ." \
  "serial = serial" "default_md = sha256" "policy = any" "[any]" "commonName = supplied" \
  "[ca_ext]" "basicConstraints = critical,CA:TRUE,pathlen:0" "keyUsage = critical,keyCertSign" >old.cnf
openssl ca -batch -config old.cnf -cert root.pem -keyfile root.key -in issuer2.csr -notext \
  -startdate 20200101000000Z -enddate 20200201000000Z -extensions ca_ext -out expired.pem 2>/dev/null
refused_before=$(metric identity_issuer_reloads_total '{result="refused"}')
bad_issuer() { # NAME CERT KEY REGEX
  local lines
  lines=$(wc -l <daemon.log)
  cp "$3" id/issuer.key
  cp "$2" id/issuer.crt
  kill -HUP "$dpid"
  # Only what the daemon logged since this swap counts.
  for _ in $(seq 50); do
    tail -n +$((lines + 1)) daemon.log >newlog
    grep -q "refused:" newlog && break
    sleep 0.1
  done
  matches "$1" newlog "issuer reload \((SIGHUP|files changed)\) refused: .*$4.*still serving with the previous issuer"
  certify "$1-still-serving" 0 "$good"
  matches "$1-still-serving" out "^  Issuer: +CN=Issuer Three$"
  issued=$((issued + 1))
}
bad_issuer not-a-ca notca.pem notca.key "not a CA"
bad_issuer other-anchor foreign.pem foreign.key "not a valid issuer under the trust anchors"
bad_issuer key-mismatch issuer2.pem issuer3.key "issuer key does not match"
bad_issuer expired expired.pem issuer2.key "Issuer Two.*expired"
echo "not a certificate" >junk.pem
bad_issuer junk-file junk.pem issuer3.key "issuer\.crt with issuer\.key"
# Unreadable: the key's path is now a directory (root reads any file, so no chmod).
lines=$(wc -l <daemon.log)
rm id/issuer.key
mkdir id/issuer.key
kill -HUP "$dpid"
for _ in $(seq 50); do
  tail -n +$((lines + 1)) daemon.log | grep -q "refused:" && break
  sleep 0.1
done
tail -n +$((lines + 1)) daemon.log >newlog
matches unreadable newlog "refused: .*id/issuer\.key: Is a directory; still serving with the previous issuer"
certify unreadable-still-serving 0 "$good"
issued=$((issued + 1))
rmdir id/issuer.key
refused_after=$(metric identity_issuer_reloads_total '{result="refused"}')
checks=$((checks + 1))
[ "$refused_after" -ge $((refused_before + 6)) ] || fail "reloads refused went $refused_before -> $refused_after"
# And back to a good issuer.
lines=$(wc -l <daemon.log)
cp issuer3.key id/issuer.key
cp issuer3.pem id/issuer.crt
kill -HUP "$dpid"
for _ in $(seq 100); do
  tail -n +$((lines + 1)) daemon.log | grep -q "issuer loaded" && break
  sleep 0.1
done
tail -n +$((lines + 1)) daemon.log >newlog
matches restored newlog "issuer loaded \((SIGHUP|files changed)\): CN=Issuer Three"

# ---- Metrics: counts match what happened here.
timeout 10 curl -sS "http://127.0.0.1:$APORT/metrics" >metrics.txt
checks=$((checks + 1))
promtool check metrics <metrics.txt >promtool.out 2>&1 || { fail "promtool check metrics"; cat promtool.out; }
equals issued-total "$(metric identity_cert_issued_total)" "$issued"
equals failed-unauthenticated "$(metric identity_cert_failed_total '{reason="unauthenticated"}')" "$unauth"
equals failed-invalid "$(metric identity_cert_failed_total '{reason="invalid_argument"}')" "$invalid"
equals failed-precondition "$(metric identity_cert_failed_total '{reason="failed_precondition"}')" 1
equals failed-unavailable "$(metric identity_cert_failed_total '{reason="unavailable"}')" 0
checks=$((checks + 1))
[ "$(metric identity_issuer_reloads_total '{result="ok"}')" -ge 3 ] || fail "fewer than 3 successful reloads counted"
equals issuer-expiry "$(metric identity_issuer_expiry_timestamp_seconds)" \
  "$(date -d "$(openssl x509 -in issuer3.pem -noout -enddate | cut -d= -f2)" +%s)"
equals not-found "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/nothing")" 404

# ---- Usage errors, and a graceful stop.
checks=$((checks + 1))
st=0; "$daemon" >/dev/null 2>&1 || st=$?
[ "$st" = 2 ] || fail "mesh-identity without --dir: exit $st, expected 2"
checks=$((checks + 1))
st=0; timeout 10 "$daemon" --dir nowhere --listen 127.0.0.1:0 --admin 127.0.0.1:0 2>nowhere.log || st=$?
[ "$st" = 1 ] || fail "mesh-identity --dir nowhere: exit $st, expected 1"
matches nowhere nowhere.log "nowhere/identity\.json"
checks=$((checks + 1))
st=0; timeout 10 "$meshctl" identity certify --dir id --ns shop --sa web >/dev/null 2>&1 || st=$?
[ "$st" = 2 ] || fail "certify without a token: exit $st, expected 2"
kill -TERM "$dpid"
st=0
wait "$dpid" || st=$?
pids=()
equals sigterm-exit "$st" 0
matches sigterm daemon.log "SIGTERM: shutting down"

if [ "$failures" -ne 0 ]; then
  echo "$failures of $checks mesh-identity check(s) failed"
  exit 1
fi
echo "ok: $checks mesh-identity checks"
