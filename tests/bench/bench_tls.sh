#!/usr/bin/env bash
# Benchmark: full and resumed mTLS handshakes/s of libmesh's TLS layer vs openssl s_time, against the same servers.
set -euo pipefail
tool=$(realpath "$1") # meson may pass a path relative to the build dir
secs=${2:-5}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"
WEB=web.emojivoto.serviceaccount.identity.linkerd.cluster.local
"$tool" pki "$tmp" >/dev/null
# openssl s_time cannot send an intermediate: the servers also trust the issuer directly.
cat anchor.pem issuer.pem >trust.pem

timeout 120 openssl s_server -accept 127.0.0.1:0 -rev -cert server.pem -cert_chain issuer.pem \
  -key server.key -CAfile trust.pem -Verify 1 -verify_return_error </dev/null >ossl.log 2>&1 &
pids+=($!)
for _ in $(seq 200); do grep -q '^ACCEPT' ossl.log && break; sleep 0.05; done
OPORT=$(sed -n 's/^ACCEPT .*:\([0-9]*\)$/\1/p' ossl.log | head -1)
[ -n "$OPORT" ] || { echo "openssl s_server did not start"; cat ossl.log; exit 1; }

timeout 120 "$tool" server mesh.port server.pem server.key trust.pem >mesh.log 2>&1 &
pids+=($!)
for _ in $(seq 200); do [ -s mesh.port ] && break; sleep 0.05; done
MPORT=$(cat mesh.port)

stime() { # port mode
  timeout $((secs + 20)) openssl s_time -connect "127.0.0.1:$1" "$2" -time "$secs" \
    -cert client.pem -key client.key -CAfile anchor.pem 2>&1 |
    sed -n 's/^\([0-9]*\) connections in \([0-9.]*\) real seconds.*/\1 \2/p' |
    awk -v what="$3" '{ printf "%s: %d in %.2f s = %.0f/s\n", what, $1, $2, ($2 > 0 ? $1 / $2 : 0) }'
}

echo "mTLS handshakes, TLS 1.2 ECDHE-ECDSA P-256 + X25519, one connection at a time, ${secs} s each"
echo "-- against openssl s_server -Verify 1 (openssl $(openssl version | cut -d' ' -f2))"
timeout $((secs + 20)) "$tool" bench "$OPORT" client.pem client.key anchor.pem "$WEB" "$secs"
timeout $((secs + 20)) "$tool" bench "$OPORT" client.pem client.key anchor.pem "$WEB" "$secs" --resume
stime "$OPORT" -new "openssl s_time full handshakes"
stime "$OPORT" -reuse "openssl s_time resumed handshakes"
echo "-- against the libmesh server (tls_tool server, client auth required)"
timeout $((secs + 20)) "$tool" bench "$MPORT" client.pem client.key anchor.pem "$WEB" "$secs"
timeout $((secs + 20)) "$tool" bench "$MPORT" client.pem client.key anchor.pem "$WEB" "$secs" --resume
stime "$MPORT" -new "openssl s_time full handshakes"
stime "$MPORT" -reuse "openssl s_time resumed handshakes"
