#!/usr/bin/env bash
# meshctl identity and diagnostics end to end: openssl judges what meshctl writes, and meshctl judges openssl's certificates.
set -euo pipefail
meshctl=$(realpath "$1")
[ -d "$2" ] || { echo "no source root '$2'"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'echo "FAIL: line $LINENO: a setup command failed"' ERR
cd "$tmp"
failures=0 checks=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# run NAME EXPECTED_STATUS ARGS...: runs meshctl, keeps stdout and stderr in
# out and err, and checks the exit status.
run() {
  local name=$1 want=$2
  shift 2
  local got=0
  checks=$((checks + 1))
  "$meshctl" "$@" >out 2>err </dev/null || got=$?
  if [ "$got" != "$want" ]; then
    fail "$name: exit $got, expected $want"
    sed 's/^/  stdout: /' out
    sed 's/^/  stderr: /' err
  fi
}

# matches NAME FILE REGEX: some line of FILE matches the extended REGEX.
matches() {
  checks=$((checks + 1))
  grep -qE -- "$3" "$2" || { fail "$1: nothing matches /$3/ in $2:"; sed 's/^/  /' "$2"; }
}

# check NAME COMMAND...: the command succeeds.
check() {
  local name=$1
  shift
  checks=$((checks + 1))
  "$@" >/dev/null 2>&1 || fail "$name: '$*' failed"
}

is_json() {
  checks=$((checks + 1))
  python3 -c 'import json,sys; json.load(sys.stdin)' <"$2" || fail "$1: stdout is not JSON"
}

mode() { stat -c %a "$1"; }
pubkey_of_cert() { openssl x509 -in "$1" -noout -pubkey; }
pubkey_of_key() { openssl pkey -in "$1" -pubout; }
enddate() { date -d "$(openssl x509 -in "$1" -noout -enddate | cut -d= -f2)" +%s; }
now=$(date +%s)

# ---- init: a generated trust anchor, issuer and token key.
run init 0 identity init --dir id
for f in ca.crt issuer.crt issuer.key token.key token.pub identity.json; do
  checks=$((checks + 1))
  [ -s "id/$f" ] || fail "init: no id/$f"
done
matches init out "ca\.crt +trust anchor CN=root\.linkerd\.cluster\.local, valid .* to "
matches init out "issuer\.crt +issuer CN=identity\.linkerd\.cluster\.local, valid .*\(36[45] days\)"
check init-verify openssl verify -CAfile id/ca.crt id/issuer.crt
openssl x509 -in id/issuer.crt -noout -text >issuer.txt
matches init-issuer issuer.txt "CA:TRUE, pathlen:0"
matches init-issuer issuer.txt "Subject: CN = identity\.linkerd\.cluster\.local"
openssl x509 -in id/ca.crt -noout -text >anchor.txt
matches init-anchor anchor.txt "Subject: CN = root\.linkerd\.cluster\.local"
matches init-anchor anchor.txt "CA:TRUE"
for f in issuer.key token.key; do
  checks=$((checks + 1))
  [ "$(mode "id/$f")" = 600 ] || fail "init: id/$f has mode $(mode "id/$f"), expected 600"
done
checks=$((checks + 1))
[ "$(mode id/ca.crt)" = 644 ] || fail "init: id/ca.crt has mode $(mode id/ca.crt)"
for f in ca.crt issuer.crt; do
  left=$(($(enddate "id/$f") - now))
  checks=$((checks + 1))
  [ "$left" -ge $((364 * 86400)) ] && [ "$left" -le $((366 * 86400)) ] || fail "init: $f lasts ${left}s, not 365 days"
done
checks=$((checks + 1))
cmp -s <(pubkey_of_key id/issuer.key) <(pubkey_of_cert id/issuer.crt) || fail "init: issuer key does not match issuer.crt"
checks=$((checks + 1))
cmp -s <(pubkey_of_key id/token.key) <(openssl pkey -pubin -in id/token.pub -pubout) || fail "init: token.pub is not token.key's"
checks=$((checks + 1))
python3 - id/identity.json <<'EOF' || fail "init: identity.json"
import json, sys
c = json.load(open(sys.argv[1]))
assert c == {"trustDomain": "cluster.local", "controlPlaneNamespace": "linkerd",
             "issuanceLifetime": "24h0m0s", "clockSkewAllowance": "20s"}, c
EOF

# Never overwrites an issuer key by accident; --force replaces it.
cp id/issuer.key saved.key
run init-again 1 identity init --dir id
matches init-again err "id/issuer\.key already exists.*--force"
check init-again-kept cmp -s saved.key id/issuer.key
run init-force 0 identity init --dir id --force
checks=$((checks + 1))
cmp -s saved.key id/issuer.key && fail "init --force kept the old issuer key"
check init-force-verify openssl verify -CAfile id/ca.crt id/issuer.crt

# Another trust domain, control plane namespace and durations.
run init-custom 0 identity init --dir custom --identity-trust-domain example.org --cp-namespace mesh \
  --identity-issuance-lifetime 1h30m --identity-clock-skew-allowance 1m
openssl x509 -in custom/issuer.crt -noout -subject >subject.txt
matches init-custom subject.txt "CN = identity\.mesh\.example\.org"
openssl x509 -in custom/ca.crt -noout -subject >subject.txt
matches init-custom subject.txt "CN = root\.mesh\.example\.org"
checks=$((checks + 1))
python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); assert c["trustDomain"]=="example.org" and c["controlPlaneNamespace"]=="mesh" and c["issuanceLifetime"]=="1h30m0s" and c["clockSkewAllowance"]=="1m0s", c' \
  custom/identity.json || fail "init-custom: identity.json"

# Usage errors: exit 2, nothing written.
run init-no-dir 2 identity init
run init-half-issuer 2 identity init --dir u --identity-issuer-certificate-file x.pem
matches init-half-issuer err "go together"
run init-no-anchors 2 identity init --dir u --identity-issuer-certificate-file x.pem --identity-issuer-key-file x.key
run init-bad-duration 2 identity init --dir u --identity-issuance-lifetime soon
run init-bad-domain 2 identity init --dir u --identity-trust-domain Cluster_Local
run init-bad-ns 2 identity init --dir u --cp-namespace -x
checks=$((checks + 1))
[ -e u ] && fail "a usage error wrote u/"
run no-subcommand 2 identity
run unknown-subcommand 2 identity frobnicate
run identity-help 0 identity --help
matches identity-help out "^  get-issuer +"
run init-help 0 identity init --help
matches init-help out "--identity-trust-anchors-file FILE"

# ---- init with an anchor and an issuer made by openssl.
mkdir ext
(
  cd ext
  ca_ext=(-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign")
  openssl ecparam -genkey -name prime256v1 -out root.key
  openssl req -x509 -new -key root.key -subj "/O=Example/CN=Example Root" -days 30 "${ca_ext[@]}" -out root.pem 2>/dev/null
  openssl ecparam -genkey -name prime256v1 -out issuer.key
  openssl req -new -key issuer.key -subj "/O=Example/CN=Example Issuer" -out issuer.csr 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:TRUE,pathlen:0" "keyUsage=critical,keyCertSign,cRLSign" >ca.ext
  openssl x509 -req -in issuer.csr -CA root.pem -CAkey root.key -CAcreateserial -days 20 -extfile ca.ext \
    -out issuer.pem 2>/dev/null
  # Not a CA.
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" >leaf.ext
  openssl x509 -req -in issuer.csr -CA root.pem -CAkey root.key -CAcreateserial -days 20 -extfile leaf.ext \
    -out not-ca.pem 2>/dev/null
  # A CA under another anchor.
  openssl ecparam -genkey -name prime256v1 -noout -out other-root.key
  openssl req -x509 -new -key other-root.key -subj "/CN=Other Root" -days 30 "${ca_ext[@]}" -out other-root.pem 2>/dev/null
  openssl x509 -req -in issuer.csr -CA other-root.pem -CAkey other-root.key -CAcreateserial -days 20 \
    -extfile ca.ext -out other-issuer.pem 2>/dev/null
  # A key that is not the issuer's.
  openssl ecparam -genkey -name prime256v1 -noout -out wrong.key
  # An issuer that expired in 2020, signed with `openssl ca` (the only way to
  # backdate a certificate without faketime).
  touch index.txt
  echo 01 >serial
  printf '%s\n' "[ca]" "default_ca = old" "[old]" "database = index.txt" "new_certs_dir = ." \
    "serial = serial" "default_md = sha256" "policy = any" "[any]" "commonName = supplied" \
    "[ca_ext]" "basicConstraints = critical,CA:TRUE,pathlen:0" "keyUsage = critical,keyCertSign" \
    "[leaf_ext]" "basicConstraints = CA:FALSE" "keyUsage = critical,digitalSignature" >ca.cnf
  openssl ca -batch -config ca.cnf -cert root.pem -keyfile root.key -in issuer.csr -notext \
    -startdate 20200101000000Z -enddate 20200201000000Z -extensions ca_ext -out expired-issuer.pem 2>/dev/null
  echo "not a certificate" >junk.pem
)
ext=$tmp/ext
run supplied 0 identity init --dir sup --identity-trust-anchors-file ext/root.pem \
  --identity-issuer-certificate-file ext/issuer.pem --identity-issuer-key-file ext/issuer.key
matches supplied out "^Installed the identity"
matches supplied out "trust anchor .*CN=Example Root"
check supplied-verify openssl verify -CAfile sup/ca.crt sup/issuer.crt
checks=$((checks + 1))
[ "$(openssl x509 -in sup/ca.crt -noout -fingerprint)" = "$(openssl x509 -in ext/root.pem -noout -fingerprint)" ] ||
  fail "supplied: ca.crt is not the given anchor"
checks=$((checks + 1))
cmp -s <(pubkey_of_key sup/issuer.key) <(pubkey_of_cert ext/issuer.pem) || fail "supplied: issuer.key is not the given key"
checks=$((checks + 1))
[ "$(mode sup/issuer.key)" = 600 ] || fail "supplied: issuer.key has mode $(mode sup/issuer.key)"

# Refusals: exit 1, a message naming the file at fault, and no issuer key written.
refuse() {
  local name=$1 anchors=$2 cert=$3 key=$4 want=$5
  run "$name" 1 identity init --dir "bad-$name" --identity-trust-anchors-file "$anchors" \
    --identity-issuer-certificate-file "$cert" --identity-issuer-key-file "$key"
  matches "$name" err "$want"
  checks=$((checks + 1))
  [ -e "bad-$name" ] && fail "$name: wrote bad-$name/ although it refused"
  true
}
refuse not-ca ext/root.pem ext/not-ca.pem ext/issuer.key "ext/not-ca\.pem: the issuer certificate .*Example Issuer.* is not a CA"
refuse other-anchor ext/root.pem ext/other-issuer.pem ext/issuer.key \
  "ext/other-issuer\.pem: the issuer .* is not signed by a trust anchor in ext/root\.pem: certificate chain does not lead"
refuse wrong-key ext/root.pem ext/issuer.pem ext/wrong.key "ext/wrong\.key does not work with ext/issuer\.pem: issuer key does not match"
refuse expired ext/root.pem ext/expired-issuer.pem ext/issuer.key "ext/expired-issuer\.pem: the issuer certificate .* expired on 2020-02-01T00:00:00Z"
refuse junk-cert ext/root.pem ext/junk.pem ext/issuer.key "ext/junk\.pem: not a PEM certificate file"
refuse junk-anchors ext/junk.pem ext/issuer.pem ext/issuer.key "ext/junk\.pem: not a PEM certificate file"
refuse cert-as-key ext/root.pem ext/issuer.pem ext/issuer.pem "ext/issuer\.pem: not a usable private key"
refuse leaf-anchor ext/not-ca.pem ext/issuer.pem ext/issuer.key "ext/not-ca\.pem: certificate 1 .* is not a CA, so it cannot be a trust anchor"
refuse missing ext/root.pem ext/none.pem ext/issuer.key "ext/none\.pem: No such file or directory"

# ---- token: a JWS with ES256 that openssl verifies with token.pub.
b64url_decode() {
  local s=${1//-/+}
  s=${s//_//}
  while [ $((${#s} % 4)) -ne 0 ]; do s="$s="; done
  printf '%s' "$s" | base64 -d
}
run token 0 identity token --ns production --sa frontend --key id/token.key
tok=$(cat out)
IFS=. read -r th tp ts <<<"$tok"
b64url_decode "$th" >header.json
b64url_decode "$tp" >claims.json
is_json token-header header.json
checks=$((checks + 1))
python3 - header.json claims.json "$now" <<'EOF' || fail "token: header or claims"
import json, sys, time
h = json.load(open(sys.argv[1]))
c = json.load(open(sys.argv[2]))
assert h["alg"] == "ES256" and h["typ"] == "JWT" and h["kid"], h
assert c["ns"] == "production" and c["sa"] == "frontend", c
assert c["aud"] == "identity.linkerd.cluster.local", c
assert c["exp"] - c["iat"] == 3600, c
assert abs(c["iat"] - int(sys.argv[3])) < 120, c
EOF
printf '%s.%s' "$th" "$tp" >signed.txt
b64url_decode "$ts" >sig.raw
r=$(head -c 32 sig.raw | od -An -tx1 | tr -d ' \n')
s=$(tail -c 32 sig.raw | od -An -tx1 | tr -d ' \n')
printf 'asn1=SEQUENCE:sig\n[sig]\nr=INTEGER:0x%s\ns=INTEGER:0x%s\n' "$r" "$s" >sig.cnf
openssl asn1parse -genconf sig.cnf -out sig.der -noout
check token-signature openssl dgst -sha256 -verify id/token.pub -signature sig.der signed.txt

run token-ttl 0 identity token --ns shop --sa web --ttl 10m --audience my-audience --key id/token.key
IFS=. read -r th tp ts <out
b64url_decode "$tp" >claims.json
checks=$((checks + 1))
python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); assert c["exp"]-c["iat"]==600 and c["aud"]=="my-audience" and c["ns"]=="shop" and c["sa"]=="web", c' \
  claims.json || fail "token-ttl: claims"
run token-public-key 1 identity token --ns shop --sa web --key id/token.pub
matches token-public-key err "id/token\.pub: holds a public key"
run token-not-a-key 1 identity token --ns shop --sa web --key id/ca.crt
matches token-not-a-key err "id/ca\.crt: not a usable private key"
run token-missing 2 identity token --ns shop --key id/token.key
run token-bad-ns 2 identity token --ns Shop --sa web --key id/token.key
run token-bad-ttl 2 identity token --ns shop --sa web --ttl 0s --key id/token.key

# ---- get-issuer.
run get-issuer 0 identity get-issuer --dir id
matches get-issuer out "^  Subject: +CN=identity\.linkerd\.cluster\.local$"
matches get-issuer out "^  Issuer: +CN=root\.linkerd\.cluster\.local$"
matches get-issuer out "^  Not after: +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
matches get-issuer out "^  Expires in: +36[45] days$"
matches get-issuer out "^  Trust anchors: +signed by a trust anchor in id/ca\.crt$"
serial=$(openssl x509 -in id/issuer.crt -noout -serial | cut -d= -f2)
checks=$((checks + 1))
[ "$(grep '^  Serial:' out | awk '{print $2}' | tr -d : | sed 's/^0*//')" = "$(sed 's/^0*//' <<<"$serial")" ] ||
  fail "get-issuer: serial is not openssl's $serial"
run get-issuer-json 0 identity get-issuer --dir id -o json
is_json get-issuer-json out
want_after=$(date -u -d "@$(enddate id/issuer.crt)" +%Y-%m-%dT%H:%M:%SZ)
checks=$((checks + 1))
python3 - out "$want_after" <<'EOF' || fail "get-issuer-json: wrong report"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["subject"] == "CN=identity.linkerd.cluster.local", r
assert r["notAfter"] == sys.argv[2], (r["notAfter"], sys.argv[2])
assert r["signedByTrustAnchors"] is True and r["isCA"] is True and r["pathLen"] == 0, r
assert r["expiresInDays"] in (364, 365), r
EOF
run get-issuer-other 1 identity get-issuer --issuer-certificate-file sup/issuer.crt --identity-trust-anchors-file id/ca.crt
matches get-issuer-other out "Trust anchors: +NOT signed by a trust anchor in id/ca\.crt: certificate chain does not lead"
run get-issuer-file 0 identity get-issuer --issuer-certificate-file sup/issuer.crt -o json
checks=$((checks + 1))
python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["signedByTrustAnchors"] is None and r["expiresInDays"] in (19, 20), r' <out ||
  fail "get-issuer-file: report"
run get-issuer-expired 1 identity get-issuer --issuer-certificate-file ext/expired-issuer.pem --identity-trust-anchors-file ext/root.pem
matches get-issuer-expired out "^  Expires in: +expired [0-9]+ days ago$"
matches get-issuer-expired out "Trust anchors: +signed by a trust anchor in ext/root\.pem, but not valid now: the certificate has expired"
run get-issuer-junk 1 identity get-issuer --issuer-certificate-file ext/junk.pem
matches get-issuer-junk err "ext/junk\.pem: not a PEM certificate file"
run get-issuer-none 2 identity get-issuer

# ---- inspect: a leaf that openssl signs with the generated issuer.
dns=web.shop.serviceaccount.identity.linkerd.cluster.local
uri=spiffe://cluster.local/ns/shop/sa/web
openssl ecparam -name prime256v1 -genkey -noout -out leaf.key
openssl req -new -key leaf.key -subj "/CN=$dns" -out leaf.csr 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=DNS:$dns,URI:$uri" >leaf.ext
openssl x509 -req -in leaf.csr -CA id/issuer.crt -CAkey id/issuer.key -CAcreateserial -days 1 \
  -extfile leaf.ext -out leaf.pem 2>/dev/null
cat leaf.pem id/issuer.crt >chain.pem
run inspect 0 identity inspect chain.pem --anchors id/ca.crt
matches inspect out "^Certificate 1 of 2 in chain\.pem$"
matches inspect out "^  SANs: +DNS:$dns, URI:$uri$"
matches inspect out "^  Identity: +$dns$"
matches inspect out "^ +$uri$"
matches inspect out "^  CA: +no$"
matches inspect out "^  CA: +yes, pathlen 0$"
matches inspect out "^Chain: verified against id/ca\.crt$"
run inspect-json 0 identity inspect chain.pem --anchors id/ca.crt -o json
is_json inspect-json out
checks=$((checks + 1))
python3 - out "$dns" "$uri" <<'EOF' || fail "inspect-json: wrong report"
import json, sys
r = json.load(open(sys.argv[1]))
leaf, issuer = r["certificates"]
assert leaf["identity"] == {"dns": sys.argv[2], "spiffe": sys.argv[3]}, leaf
assert leaf["sans"] == [{"type": "DNS", "value": sys.argv[2]}, {"type": "URI", "value": sys.argv[3]}], leaf
assert leaf["isCA"] is False and leaf["pathLen"] is None, leaf
assert issuer["isCA"] is True and issuer["pathLen"] == 0 and issuer["identity"] is None, issuer
assert r["chain"]["verified"] is True, r["chain"]
EOF
run inspect-plain 0 identity inspect id/ca.crt
matches inspect-plain out "^  CA: +yes, no path length limit$"
run inspect-other 1 identity inspect chain.pem --anchors sup/ca.crt
matches inspect-other out "^Chain: NOT verified against sup/ca\.crt: certificate chain does not lead"
run inspect-junk 1 identity inspect ext/junk.pem
matches inspect-junk err "ext/junk\.pem: not a PEM certificate file"
run inspect-two 2 identity inspect a.pem b.pem

# ---- diagnostics certificates.
run diag 0 diagnostics certificates --dir id --certs chain.pem
matches diag out "^NAME +KIND +NOT_AFTER +EXPIRES_IN +STATUS$"
matches diag out "^root\.linkerd\.cluster\.local +trust anchor +[0-9T:-]+Z +36[45]d +√$"
matches diag out "^identity\.linkerd\.cluster\.local +issuer +[0-9T:-]+Z +36[45]d +√$"
matches diag out "^$dns +leaf +[0-9T:-]+Z +2[0-4]h +√$"
matches diag out "^identity\.linkerd\.cluster\.local +intermediate +.* +√$"
matches diag out "^Status check results are √$"
run diag-json 0 diagnostics certificates --dir id --certs leaf.pem -o json
is_json diag-json out
checks=$((checks + 1))
python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["status"]=="ok" and [c["kind"] for c in r["certificates"]]==["trust anchor","issuer","leaf"], r' <out ||
  fail "diag-json: report"

# An expired leaf: ×, and exit 1.
(cd ext && openssl ca -batch -config ca.cnf -cert ../id/issuer.crt -keyfile ../id/issuer.key -in ../leaf.csr \
  -notext -startdate 20200101000000Z -enddate 20200102000000Z -extensions leaf_ext -out ../expired.pem 2>/dev/null)
run diag-expired 1 diagnostics certificates --dir id --certs leaf.pem expired.pem
matches diag-expired out "^$dns +leaf +2020-01-02T00:00:00Z +expired +×$"
matches diag-expired out "^$dns +leaf +[0-9T:-]+Z +2[0-4]h +√$"
matches diag-expired out "^× $dns \(expired\.pem\): leaf expired on 2020-01-02T00:00:00Z$"
matches diag-expired out "^Status check results are ×$"

# An anchor and issuer that expire within 60 days: ‼, still exit 0.
run diag-soon 0 diagnostics certificates --dir sup
matches diag-soon out "^Example Root +trust anchor +[0-9T:-]+Z +(29|30)d +‼$"
matches diag-soon out "^Example Issuer +issuer +[0-9T:-]+Z +(19|20)d +‼$"
matches diag-soon out "^‼ Example Issuer \(sup/issuer\.crt\): issuer expires on .*, within 60 days: rotate it$"
matches diag-soon out "^Status check results are ‼$"

# A leaf from another trust anchor: ×.
run diag-foreign 1 diagnostics certificates --dir sup --certs leaf.pem
matches diag-foreign out "^× $dns \(leaf\.pem\): not signed by the trust anchors in sup/ca\.crt: certificate chain does not lead"

# An issuer made with a backdated `openssl ca` run, next to its anchor: ×.
mkdir old
cp ext/root.pem old/ca.crt
cp ext/expired-issuer.pem old/issuer.crt
run diag-old-issuer 1 diagnostics certificates --dir old
matches diag-old-issuer out "^Example Issuer +issuer +2020-02-01T00:00:00Z +expired +×$"

# Files that cannot be read: exit 1, named.
run diag-missing 1 diagnostics certificates --dir nowhere
matches diag-missing err "nowhere/ca\.crt: No such file or directory"
run diag-junk 1 diagnostics certificates --dir id --certs ext/junk.pem
matches diag-junk err "ext/junk\.pem: not a PEM certificate file"
run diag-no-dir 2 diagnostics certificates
run diag-no-sub 2 diagnostics
run diag-help 0 help diagnostics
matches diag-help out "meshctl diagnostics certificates --dir DIR"
run help 0 help
matches help out "^  identity +"
matches help out "^  diagnostics +"

if [ "$failures" -ne 0 ]; then
  echo "$failures of $checks meshctl identity check(s) failed"
  exit 1
fi
echo "ok: $checks meshctl identity checks"
