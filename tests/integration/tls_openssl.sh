#!/usr/bin/env bash
# Interop: openssl s_client and s_server against libmesh's TLS layer, mutual auth, identity checks, refusals.
set -euo pipefail
tool=$(realpath "$1") # meson may pass a path relative to the build dir
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"

fail() {
  echo "FAIL: $*"
  for f in *.log *.out; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done
  exit 1
}
ok() { echo "ok: $*"; }
WEB=web.emojivoto.serviceaccount.identity.linkerd.cluster.local
BOT=vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local

"$tool" pki "$tmp"

# A libmesh echo server on a free loopback port (it picks one and writes it down).
start_mesh() { # name args...
  local name=$1
  shift
  timeout 150 "$tool" server "$name.port" server.pem server.key anchor.pem "$@" >"$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do [ -s "$name.port" ] && break; sleep 0.05; done
  [ -s "$name.port" ] || fail "$name did not start"
  PORT=$(cat "$name.port")
}

# An openssl server on a free loopback port; it reports the port it bound.
start_ossl() { # name args...
  local name=$1
  shift
  timeout 150 openssl s_server -accept 127.0.0.1:0 -rev -alpn h2,http/1.1 "$@" \
    </dev/null >"$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do grep -q '^ACCEPT' "$name.log" 2>/dev/null && break; sleep 0.05; done
  PORT=$(sed -n 's/^ACCEPT .*:\([0-9]*\)$/\1/p' "$name.log" | head -1)
  [ -n "$PORT" ] || fail "$name did not start"
}

# s_client with a line to send; the server closes after echoing it.
s_client() { # out-file args...
  local out=$1
  shift
  (echo ping; sleep 1) | timeout 10 openssl s_client -connect "127.0.0.1:$PORT" -CAfile anchor.pem \
    -verify_return_error -ign_eof "$@" >"$out" 2>&1
}

expect_log() { # file pattern what
  for _ in $(seq 100); do grep -q -- "$2" "$1" && return 0; sleep 0.05; done
  fail "$3: no '$2' in $1"
}

# ---- openssl s_client -> libmesh server ----------------------------------

start_mesh required --close-after-echo
s_client mutual.out -cert client.pem -cert_chain issuer.pem -key client.key -alpn h2 ||
  fail "mutual handshake with the libmesh server"
grep -q 'Verify return code: 0 (ok)' mutual.out || fail "s_client did not verify the server"
grep -q 'Protocol  *: TLSv1.2' mutual.out || fail "not TLS 1.2"
grep -q 'Cipher  *: ECDHE-ECDSA-AES128-GCM-SHA256' mutual.out || fail "unexpected cipher"
grep -q 'ALPN protocol: h2' mutual.out || fail "ALPN h2 not negotiated"
grep -qx 'ping' mutual.out || fail "no echo"
expect_log required.log "accepted peer=$BOT alpn=h2 resumed=0" "server side of the mutual handshake"
ok "s_client mutual handshake, TLS 1.2, ECDHE-ECDSA-AES128-GCM, ALPN h2, echo, client identity seen"

s_client chacha.out -cert client.pem -cert_chain issuer.pem -key client.key \
  -cipher ECDHE-ECDSA-CHACHA20-POLY1305 || fail "CHACHA20-POLY1305 handshake"
grep -q 'Cipher  *: ECDHE-ECDSA-CHACHA20-POLY1305' chacha.out || fail "chacha not negotiated"
ok "s_client with ECDHE-ECDSA-CHACHA20-POLY1305"

if s_client nocert.out; then fail "required mode accepted a client without a certificate"; fi
grep -qx 'ping' nocert.out && fail "data echoed without a client certificate"
expect_log required.log "rejected err=-10 .*client presented no certificate" "missing client cert"
ok "required mode refuses a client without a certificate"

if s_client rogue.out -cert rogue.pem -cert_chain other-issuer.pem -key rogue.key; then
  fail "a client certificate from another anchor was accepted"
fi
expect_log required.log "rejected err=-9 .*client certificate rejected" "client cert from another anchor"
ok "a client certificate from another anchor is refused"

if s_client expired.out -cert expired.pem -cert_chain issuer.pem -key expired.key; then
  fail "an expired client certificate was accepted"
fi
expect_log required.log "rejected err=-11 .*expired" "expired client cert"
ok "an expired client certificate is refused"

if timeout 10 openssl s_client -connect "127.0.0.1:$PORT" -CAfile anchor.pem -tls1_3 \
  -cert client.pem -cert_chain issuer.pem -key client.key </dev/null >tls13.out 2>&1; then
  fail "TLS 1.3 only client connected"
fi
ok "TLS 1.3-only clients are refused (TLS 1.2 only)"

start_mesh optional --optional --close-after-echo
s_client optional.out || fail "optional mode refused a client without a certificate"
grep -qx 'ping' optional.out || fail "no echo in optional mode"
expect_log optional.log "accepted peer=none" "optional mode without a certificate"
ok "optional mode: a client without a certificate connects with no identity"

timeout 20 openssl s_client -connect "127.0.0.1:$PORT" -CAfile anchor.pem -verify_return_error \
  -cert client.pem -cert_chain issuer.pem -key client.key -reconnect </dev/null >reconnect.out 2>&1 ||
  fail "s_client -reconnect"
[ "$(grep -c '^Reused, TLSv1.2' reconnect.out)" -ge 5 ] || fail "sessions were not resumed"
expect_log optional.log "accepted peer=$BOT alpn=none resumed=1" "resumed session on the server"
ok "s_client -reconnect resumes sessions with the libmesh server"

# ---- libmesh client -> openssl s_server -Verify 1 -------------------------

start_ossl ossl -cert server.pem -cert_chain issuer.pem -key server.key -CAfile anchor.pem \
  -Verify 1 -verify_return_error
"$tool" client "$PORT" client.pem client.key anchor.pem "$WEB" >client.out 2>&1 ||
  fail "libmesh client against openssl s_server"
grep -q "connected peer=$WEB alpn=h2 cipher=TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256 reply=gnip" \
  client.out || fail "unexpected client result"
ok "openssl s_server -Verify 1 accepts the libmesh client (ALPN h2, reply reversed)"

"$tool" client "$PORT" client.pem client.key anchor.pem "spiffe://cluster.local/ns/emojivoto/sa/web" \
  --alpn http/1.1 >spiffe.out 2>&1 || fail "SPIFFE expected identity"
grep -q "alpn=http/1.1" spiffe.out || fail "ALPN override"
ok "the expected identity may be a SPIFFE ID; ALPN override http/1.1"

if "$tool" client "$PORT" client.pem client.key anchor.pem \
  "emoji.emojivoto.serviceaccount.identity.linkerd.cluster.local" >wrongid.out 2>&1; then
  fail "the client accepted a server with another identity"
fi
grep -q "error err=-10 .*server identity is $WEB, expected emoji" wrongid.out ||
  fail "wrong identity not reported"
ok "a server with another identity than expected is refused (MESH_ERR_IDENTITY)"

if "$tool" client "$PORT" rogue.pem rogue.key anchor.pem "$WEB" >rogueclient.out 2>&1; then
  fail "s_server accepted a client certificate from another anchor"
fi
grep -q "error err=" rogueclient.out || fail "no error reported"
ok "s_server refuses the libmesh client's certificate from another anchor: $(sed 's/.*why=//' rogueclient.out)"

if "$tool" client "$PORT" expired.pem expired.key anchor.pem "$WEB" >expiredclient.out 2>&1; then
  fail "s_server accepted an expired client certificate"
fi
grep -q "certificate_expired" expiredclient.out || fail "expired not reported"
ok "s_server refuses the libmesh client's expired certificate"

start_ossl rogue_srv -cert rogue-server.pem -cert_chain other-issuer.pem -key rogue-server.key \
  -CAfile anchor.pem -Verify 1
if "$tool" client "$PORT" client.pem client.key anchor.pem "$WEB" >rogueserver.out 2>&1; then
  fail "the client accepted a server certificate from another anchor"
fi
grep -q "error err=-9 .*server certificate rejected" rogueserver.out || fail "untrusted server not reported"
ok "a server certificate from another anchor is refused"

echo "ok: libmesh TLS interoperates with openssl $(openssl version | cut -d' ' -f2)"
