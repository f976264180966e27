#!/usr/bin/env bash
# Integration: openssl judges the keys, CSRs, certificates and tokens of libmesh's identity module, and the reverse.
set -euo pipefail
tool=$(realpath "$1")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
now=$(date +%s)
checks=0
ok() { checks=$((checks + 1)); }
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_fail() { # a command that must fail
  if "$@" >/dev/null 2>&1; then fail "succeeded but must not: $*"; fi
  ok
}

"$tool" init "$tmp" "$now"
dns=frontend.production.serviceaccount.identity.linkerd.cluster.local
uri=spiffe://cluster.local/ns/production/sa/frontend

# ---- The chain: anchor -> issuer -> leaf, for both TLS purposes.
openssl verify -CAfile main-anchor.pem -untrusted main-issuer.pem main-leaf.pem >/dev/null ||
  fail "openssl does not verify the leaf"; ok
openssl verify -purpose sslserver -CAfile main-anchor.pem -untrusted main-issuer.pem main-leaf.pem >/dev/null ||
  fail "leaf is not a TLS server certificate"; ok
openssl verify -purpose sslclient -CAfile main-anchor.pem -untrusted main-issuer.pem main-leaf.pem >/dev/null ||
  fail "leaf is not a TLS client certificate"; ok
openssl verify -x509_strict -CAfile main-anchor.pem -untrusted main-issuer.pem main-leaf.pem >/dev/null ||
  fail "leaf fails strict X.509 checks"; ok
cmp -s main-chain.pem main-issuer.pem || fail "issued chain is not the issuer's"; ok

# ---- What the leaf says.
leaf=$(openssl x509 -in main-leaf.pem -noout -text)
grep -qF "DNS:$dns" <<<"$leaf" || fail "no DNS SAN"; ok
grep -qF "URI:$uri" <<<"$leaf" || fail "no URI SAN"; ok
grep -qF "DNS:$dns, URI:$uri" <<<"$leaf" || fail "SANs are not exactly DNS+URI"; ok
grep -qF "TLS Web Server Authentication, TLS Web Client Authentication" <<<"$leaf" || fail "EKU"; ok
grep -A1 "X509v3 Key Usage: critical" <<<"$leaf" | grep -qx " *Digital Signature" || fail "key usage"; ok
grep -qF "CA:FALSE" <<<"$leaf" || fail "basicConstraints CA:FALSE"; ok
grep -qF "Subject: CN = $dns" <<<"$leaf" || fail "subject"; ok
grep -qF "ecdsa-with-SHA256" <<<"$leaf" || fail "signature algorithm"; ok
grep -qF "NIST CURVE: P-256" <<<"$leaf" || fail "key curve"; ok
# 24 h, backdated 20 s.
nb=$(date -d "$(openssl x509 -in main-leaf.pem -noout -startdate | cut -d= -f2)" +%s)
na=$(date -d "$(openssl x509 -in main-leaf.pem -noout -enddate | cut -d= -f2)" +%s)
[ "$nb" -eq $((now - 20)) ] || fail "notBefore $nb, want $((now - 20))"; ok
[ "$na" -eq $((now + 86400)) ] || fail "notAfter $na, want $((now + 86400))"; ok
# A positive serial of at most 128 bits (DER adds a 00 byte when the top bit is set).
serial=$(openssl x509 -in main-leaf.pem -noout -serial | cut -d= -f2)
[ ${#serial} -ge 24 ] && [ ${#serial} -le 32 ] || fail "serial $serial"; ok
# The key file matches the certificate.
cmp -s <(openssl pkey -in main-leaf.key -pubout) <(openssl x509 -in main-leaf.pem -noout -pubkey) ||
  fail "leaf key does not match"; ok

# ---- The issuer and the anchor.
issuer=$(openssl x509 -in main-issuer.pem -noout -text)
grep -qF "CA:TRUE, pathlen:0" <<<"$issuer" || fail "issuer basicConstraints"; ok
grep -qF "Certificate Sign, CRL Sign" <<<"$issuer" || fail "issuer key usage"; ok
grep -qF "Subject: CN = identity.linkerd.cluster.local" <<<"$issuer" || fail "issuer subject"; ok
anchor=$(openssl x509 -in main-anchor.pem -noout -text)
grep -qF "Subject: CN = root.linkerd.cluster.local" <<<"$anchor" || fail "anchor subject"; ok
grep -qF "CA:TRUE" <<<"$anchor" || fail "anchor basicConstraints"; ok
openssl verify -CAfile main-anchor.pem main-anchor.pem >/dev/null || fail "anchor is not self-signed"; ok
openssl verify -CAfile main-anchor.pem main-issuer.pem >/dev/null || fail "issuer is not signed by the anchor"; ok
na=$(date -d "$(openssl x509 -in main-anchor.pem -noout -enddate | cut -d= -f2)" +%s)
[ "$na" -eq $((now + 365 * 86400)) ] || fail "anchor lifetime"; ok

# ---- Another anchor's leaf is refused, until both anchors are trusted (rotation).
expect_fail openssl verify -CAfile main-anchor.pem -untrusted other-issuer.pem other-leaf.pem
expect_fail openssl verify -CAfile other-anchor.pem -untrusted main-issuer.pem main-leaf.pem
expect_fail openssl verify -CAfile main-anchor.pem -untrusted main-issuer.pem other-leaf.pem
cat main-anchor.pem other-anchor.pem >both-anchors.pem
openssl verify -CAfile both-anchors.pem -untrusted other-issuer.pem other-leaf.pem >/dev/null ||
  fail "rotation bundle"; ok
openssl verify -CAfile both-anchors.pem -untrusted main-issuer.pem main-leaf.pem >/dev/null ||
  fail "rotation bundle"; ok

# ---- The CSR: openssl checks its signature and sees exactly the two SANs.
openssl req -in main.csr -noout -verify 2>&1 | grep -q "verify OK" || fail "CSR signature"; ok
csr=$(openssl req -in main.csr -noout -text)
grep -qF "DNS:$dns, URI:$uri" <<<"$csr" || fail "CSR SANs"; ok
grep -qF "Subject: CN = $dns" <<<"$csr" || fail "CSR subject"; ok

# ---- Issuers made by openssl: an EC one with an unusual subjectKeyIdentifier
# (so the leaf's authorityKeyIdentifier must be copied, not recomputed), and RSA.
openssl ecparam -name prime256v1 -genkey -noout -out ext-root.key
openssl req -x509 -new -key ext-root.key -subj "/O=Example/CN=Ext Root" -days 2 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ext-root.pem 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out ext-issuer.key
openssl req -new -key ext-issuer.key -subj "/C=DE/O=Example/CN=Ext Issuer" -out ext-issuer.csr 2>/dev/null
printf '%s\n' "basicConstraints=critical,CA:TRUE,pathlen:0" "keyUsage=critical,keyCertSign" \
  "subjectKeyIdentifier=0102030405060708090a" "authorityKeyIdentifier=keyid" >ext-issuer.ext
openssl x509 -req -in ext-issuer.csr -CA ext-root.pem -CAkey ext-root.key -CAcreateserial -days 1 \
  -extfile ext-issuer.ext -out ext-issuer.pem 2>/dev/null
"$tool" issue "$tmp" "$(date +%s)" ext-issuer.pem ext-issuer.key ext
openssl verify -x509_strict -CAfile ext-root.pem -untrusted ext-chain.pem ext-leaf.pem >/dev/null ||
  fail "leaf from an openssl-made EC issuer"; ok
openssl x509 -in ext-leaf.pem -noout -text | grep -qF "01:02:03:04:05:06:07:08:09:0A" ||
  fail "authorityKeyIdentifier not copied from the issuer"; ok
openssl x509 -in ext-leaf.pem -noout -issuer | grep -qF "C = DE, O = Example, CN = Ext Issuer" ||
  fail "issuer name"; ok

openssl genrsa -out rsa-root.key 2048 2>/dev/null
openssl req -x509 -new -key rsa-root.key -subj "/CN=RSA Root" -days 2 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" -out rsa-root.pem 2>/dev/null
"$tool" issue "$tmp" "$(date +%s)" rsa-root.pem rsa-root.key rsa
openssl verify -x509_strict -CAfile rsa-root.pem rsa-leaf.pem >/dev/null || fail "leaf from an RSA issuer"; ok
openssl x509 -in rsa-leaf.pem -noout -text | grep -qF "sha256WithRSAEncryption" || fail "RSA signature"; ok

# ---- The reverse: a leaf that openssl signs for libmesh's CSR, verified by libmesh.
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=DNS:$dns,URI:$uri" >leaf.ext
openssl x509 -req -in main.csr -CA main-issuer.pem -CAkey main-issuer.key -CAcreateserial -days 1 \
  -extfile leaf.ext -out openssl-leaf.pem 2>/dev/null
cat openssl-leaf.pem main-issuer.pem >openssl-chain.pem
later=$(date +%s) # openssl's leaf starts when openssl made it
[ "$("$tool" verify "$tmp" "$later" main-anchor.pem openssl-chain.pem)" = "$dns $uri" ] ||
  fail "libmesh does not verify an openssl-signed leaf"; ok
out=$("$tool" verify "$tmp" "$later" other-anchor.pem openssl-chain.pem 2>&1 || true)
grep -qF "TLS error: certificate chain does not lead" <<<"$out" || fail "libmesh accepts a leaf from another anchor: $out"; ok
out=$("$tool" verify "$tmp" $((later + 3 * 86400)) main-anchor.pem openssl-chain.pem 2>&1 || true)
grep -qF "expired or not yet valid: the certificate has expired" <<<"$out" || fail "libmesh accepts an expired leaf: $out"; ok

# ---- Tokens: the ES256 signature is raw r||s over "header.payload".
b64url_decode() {
  local s=${1//-/+}
  s=${s//_//}
  while [ $((${#s} % 4)) -ne 0 ]; do s="$s="; done
  printf '%s' "$s" | base64 -d
}
b64url_encode() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
IFS=. read -r th tp ts <token.jwt || [ -n "${ts:-}" ] # no trailing newline
b64url_decode "$th" | grep -qF '"alg":"ES256"' || fail "token header"; ok
b64url_decode "$tp" | grep -qF '"ns":"production","sa":"frontend"' || fail "token claims"; ok
printf '%s.%s' "$th" "$tp" >signed.txt
b64url_decode "$ts" >sig.raw
[ "$(stat -c %s sig.raw)" -eq 64 ] || fail "ES256 signature is not 64 bytes"; ok
r=$(head -c 32 sig.raw | od -An -tx1 | tr -d ' \n')
s=$(tail -c 32 sig.raw | od -An -tx1 | tr -d ' \n')
printf 'asn1=SEQUENCE:sig\n[sig]\nr=INTEGER:0x%s\ns=INTEGER:0x%s\n' "$r" "$s" >sig.cnf
openssl asn1parse -genconf sig.cnf -out sig.der -noout
openssl dgst -sha256 -verify token.pub.pem -signature sig.der signed.txt >/dev/null ||
  fail "openssl does not verify the token signature"; ok
printf '%s.%sx' "$th" "$tp" >forged.txt
expect_fail openssl dgst -sha256 -verify token.pub.pem -signature sig.der forged.txt
"$tool" verify-token "$tmp" "$now" token.pub.pem token.jwt production frontend identity.linkerd.cluster.local >/dev/null ||
  fail "libmesh does not verify its own token"; ok

# openssl mints a token (DER signature converted to r||s); libmesh verifies it.
hdr=$(printf '{"alg":"ES256","typ":"JWT"}' | b64url_encode)
claims=$(printf '{"ns":"production","sa":"frontend","aud":"identity.linkerd.cluster.local","exp":%d,"iat":%d}' \
  $((now + 60)) "$now" | b64url_encode)
printf '%s.%s' "$hdr" "$claims" >o-signed.txt
openssl dgst -sha256 -sign token.key -out o-sig.der o-signed.txt
ints=$(openssl asn1parse -inform DER -in o-sig.der | awk -F: '/INTEGER/ {print $NF}')
rs=""
for i in $ints; do
  p=$(printf '%064s' "$i" | tr ' ' 0)
  rs="$rs${p: -64}"
done
[ ${#rs} -eq 128 ] || fail "could not convert openssl's signature"
sig=$(printf '%s' "$rs" | sed 's/../\\x&/g' | xargs -0 printf '%b' | b64url_encode)
printf '%s.%s.%s' "$hdr" "$claims" "$sig" >openssl.jwt
"$tool" verify-token "$tmp" "$now" token.pub.pem openssl.jwt production frontend identity.linkerd.cluster.local >/dev/null ||
  fail "libmesh does not verify an openssl-signed ES256 token"; ok
expect_fail "$tool" verify-token "$tmp" "$now" token.pub.pem openssl.jwt production admin identity.linkerd.cluster.local
expect_fail "$tool" verify-token "$tmp" "$now" token.pub.pem openssl.jwt production frontend another-audience
expect_fail "$tool" verify-token "$tmp" $((now + 61)) token.pub.pem openssl.jwt production frontend identity.linkerd.cluster.local

echo "ok: $checks identity checks against openssl"
