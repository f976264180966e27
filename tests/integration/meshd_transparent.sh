#!/usr/bin/env bash
# Integration: transparent outbound: iptables REDIRECT in a network namespace, SO_ORIGINAL_DST, mTLS to a proxy outside it.
set -euo pipefail
meshd=$(realpath "$1") # meson may pass paths relative to the build dir
pki=$(realpath "$2")
load=$(realpath "$3")
for tool in ip iptables setpriv; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing (make deps installs iproute2 iptables)"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "FAIL: network namespaces need root"; exit 1; }

tmp=$(mktemp -d)
chmod 755 "$tmp" # meshd runs as nobody inside the namespace and reads its identity here
ns=mesh-test-$$
va=mt$$a vb=mt$$b
# A /30 of 198.18.0.0/15 (benchmarking range) of our own, so that parallel runs do not collide.
i=$(($$ % 16384 * 4))
net=198.18.$((i / 256)).
HOST=$net$((i % 256 + 2)) # the outside (root namespace): the server proxy and the backends
APP=$net$((i % 256 + 1))  # the application's namespace
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$va" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"
fail() {
  echo "FAIL: $*"
  for f in *.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
  exit 1
}
ok() { echo "ok: $*"; }
PY=/usr/bin/python3 # a pyenv shim on PATH costs seconds a call
[ -x "$PY" ] || PY=python3
inns() { ip netns exec "$ns" "$@"; }
WEB=web.default.serviceaccount.identity.linkerd.cluster.local
CLIENT=client.default.serviceaccount.identity.linkerd.cluster.local

"$pki" "$tmp" client default client server default web >/dev/null
read -r P_APP P_PASS P_IN P_SADM P_OUT P_CADM <<<"$(timeout 30 "$PY" "$load" free-ports 6)"

ip netns add "$ns"
ip link add "$va" type veth peer name "$vb"
ip link set "$vb" netns "$ns"
ip addr add "$HOST/30" dev "$va"
ip link set "$va" up
inns ip addr add "$APP/30" dev "$vb"
inns ip link set "$vb" up
inns ip link set lo up
# Capture every TCP connection the namespace makes, except the proxy's own
# (it runs as nobody) and loopback's (its admin port).
inns iptables -t nat -A OUTPUT -p tcp -m owner --uid-owner nobody -j RETURN
inns iptables -t nat -A OUTPUT -p tcp -o lo -j RETURN
inns iptables -t nat -A OUTPUT -p tcp -j REDIRECT --to-ports "$P_OUT"

# Outside: a web backend on loopback behind the server proxy, and an
# unmeshed echo server on the veth address.
mkdir www
echo transparent-backend >www/index.html
(cd www && exec timeout 110 "$PY" -m http.server "$P_APP" --bind 127.0.0.1 >../http.log 2>&1) &
pids+=($!)
: >pass.conns
timeout 110 "$PY" - "$HOST" "$P_PASS" >pass.log 2>&1 <<'EOF' &
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
while True:
    c, _ = s.accept()
    data = c.recv(100)
    c.sendall(b"passthrough:" + data)
    c.close()
EOF
pids+=($!)

cat >eps.json <<EOF
{"services": {"$HOST:$P_APP": {"endpoints": [{"addr": "$HOST:$P_IN", "identity": "$WEB"}]}}}
EOF
chmod 644 eps.json

timeout 110 "$meshd" --identity-dir server --inbound-listen-addr "$HOST:$P_IN" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_SADM" >server.log 2>&1 &
pids+=($!)
timeout 110 ip netns exec "$ns" setpriv --reuid=nobody --regid=nogroup --clear-groups \
  "$meshd" --identity-dir "$tmp/client" --endpoints "$tmp/eps.json" \
  --outbound-listen-addr "127.0.0.1:$P_OUT" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_CADM" >client.log 2>&1 &
pids+=($!)

for _ in $(seq 100); do inns curl -fsS -m 1 "http://127.0.0.1:$P_CADM/ready" >/dev/null 2>&1 && break; sleep 0.05; done
inns curl -fsS -m 1 "http://127.0.0.1:$P_CADM/ready" >/dev/null || fail "client proxy not ready"
for _ in $(seq 100); do curl -fsS -m 1 "http://127.0.0.1:$P_SADM/ready" >/dev/null 2>&1 && break; sleep 0.05; done
for _ in $(seq 100); do curl -fsS -m 1 "http://127.0.0.1:$P_APP/" >/dev/null 2>&1 && break; sleep 0.05; done

# The application knows nothing of the proxy: it connects to the service address.
got=$(inns curl -fsS -m 5 "http://$HOST:$P_APP/") || fail "curl from the namespace"
[ "$got" = transparent-backend ] || fail "unexpected answer: $got"
inns curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics" >c.prom
curl -fsS -m 5 "http://127.0.0.1:$P_SADM/metrics" >s.prom
grep -q "^tcp_open_total{direction=\"outbound\",peer=\"src\",tls=\"no_identity\",client_id=\"\",server_id=\"\",target_addr=\"$HOST:$P_APP\"} 1" c.prom ||
  fail "the original destination was not seen: $(grep tcp_open_total c.prom)"
grep -q "^tcp_open_total{direction=\"outbound\",peer=\"dst\",tls=\"true\",client_id=\"\",server_id=\"$WEB\",target_addr=\"$HOST:$P_IN\"} 1" c.prom ||
  fail "not sent over mTLS: $(grep tcp_open_total c.prom)"
grep -q "^tcp_open_total{direction=\"inbound\",peer=\"src\",tls=\"true\",client_id=\"$CLIENT\",server_id=\"\",target_addr=\"127.0.0.1:$P_APP\"} 1" s.prom ||
  fail "the server proxy did not see the client identity: $(grep tcp_open_total s.prom)"
ok "iptables REDIRECT -> SO_ORIGINAL_DST $HOST:$P_APP -> mTLS -> inbound -> backend"

# A destination the endpoints file does not know goes straight to where it was headed.
# (The line ends the protocol detection at once: it cannot be HTTP.)
got=$(echo hello | inns timeout 5 "$PY" -c '
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"hello\n")
print(s.recv(100).decode().strip())' "$HOST" "$P_PASS") || fail "passthrough connection"
[ "$got" = passthrough:hello ] || fail "passthrough answer: $got"
inns curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics" >c.prom
grep -q "^tcp_open_total{direction=\"outbound\",peer=\"dst\",tls=\"no_identity\",client_id=\"\",server_id=\"\",target_addr=\"$HOST:$P_PASS\"} 1" c.prom ||
  fail "passthrough not counted as a plain dst: $(grep tcp_open_total c.prom)"
ok "unknown original destination: plain TCP straight to it (tls=\"no_identity\")"

# The proxy's own connections are not captured (else they would loop back into it).
grep -q 'loop' c.prom && fail "a connection looped"
# In a sanitizer build, any report in a proxy's log is a failure.
if grep -l -E 'AddressSanitizer|LeakSanitizer|runtime error:' ./*.log 2>/dev/null; then fail "sanitizer report"; fi
echo "all meshd transparent tests passed"
