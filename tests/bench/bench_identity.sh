#!/usr/bin/env bash
# Benchmark: certificates issued per second by mesh-identity, from the rpc client with calls in flight and from meshctl one at a time.
set -euo pipefail
daemon=$(realpath "$1")
meshctl=$(realpath "$2")
driver=$(realpath "$3")
secs=${4:-2}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"
SERVER=identity.linkerd.serviceaccount.identity.linkerd.cluster.local

"$meshctl" identity init --dir id >/dev/null
timeout 120 "$daemon" --dir id --listen 127.0.0.1:0 --admin 127.0.0.1:0 2>daemon.log &
pids+=($!)
for _ in $(seq 100); do grep -q "admin .* listening" daemon.log && break; sleep 0.1; done
PORT=$(sed -n 's/.*Certify .* listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' daemon.log)
APORT=$(sed -n 's/.*admin .* listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' daemon.log)
[ -n "$PORT" ] || { echo "mesh-identity did not start"; cat daemon.log; exit 1; }
"$meshctl" identity token --ns shop --sa web --key id/token.key >token

echo "Certify issuances/s, mesh-identity (one thread, P-256 issuer), TLS 1.2 + HTTP/2, ${secs} s each"
for shape in 1x1 1x16 8x16; do
  timeout $((secs + 30)) "$driver" "127.0.0.1:$PORT" "$SERVER" id/ca.crt token shop web "$secs" "$shape"
done
# The command-line path: a process, a key, a full TLS handshake and one call each time.
n=0
end=$((SECONDS + secs))
start=$(date +%s.%N)
while [ $SECONDS -lt $end ]; do
  timeout 20 "$meshctl" identity certify --addr "127.0.0.1:$PORT" --dir id --token-file token \
    --ns shop --sa web >/dev/null && n=$((n + 1))
done
awk -v n="$n" -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "meshctl identity certify, one at a time: %d in %.2f s = %.0f/s\n", n, e - s, n / (e - s) }'
curl -s "http://127.0.0.1:$APORT/metrics" | grep -E '^identity_cert_(issued|failed)_total' | sed 's/^/  /'
