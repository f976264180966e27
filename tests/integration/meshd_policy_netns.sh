#!/usr/bin/env bash
# Integration: meshd's inbound network rules (NetworkAuthentication and ServerAuthorization networks with except, cluster-authenticated with --cluster-networks, a live edit) against clients in two network namespaces, each with its own source address.
set -euo pipefail
meshd=$(realpath "$1") # meson may pass paths relative to the build dir
pki=$(realpath "$2")
load=$(realpath "$3")
peers=$(realpath "$4")
for tool in ip curl ss; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing (make deps installs iproute2 and curl)"; exit 1; }
done
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"

# A /29 of 198.19.0.0/16 (the upper half of the benchmarking range
# 198.18.0.0/15; meshd_transparent.sh takes its /30s from the lower half),
# chosen by pid so that runs from several build trees do not collide:
# namespace A behind the /30 at .0, namespace B behind the /30 at .4.
i=$(($$ % 8192 * 8))
net=198.19.$((i / 256)).
base=$((i % 256))
BLOCK=$net$base/29
A_HOST=$net$((base + 1)) A=$net$((base + 2)) # the server proxy listens on A_HOST
B_HOST=$net$((base + 5)) B=$net$((base + 6))
A_NET=$net$base/30
NSA=mesh-pn-$$-a NSB=mesh-pn-$$-b
VAH=pn$$ah VAN=pn$$an VBH=pn$$bh VBN=pn$$bn
# meshd_lib.sh's cleanup, and the namespaces and veths: whatever still runs
# inside a namespace is one of this test's processes.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for ns in "$NSA" "$NSB"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  done
  wait 2>/dev/null || true
  ip netns del "$NSA" 2>/dev/null || true
  ip netns del "$NSB" 2>/dev/null || true
  ip link del "$VAH" 2>/dev/null || true
  ip link del "$VBH" 2>/dev/null || true
  rm -rf "$tmp"
}
SERVER=web.production.serviceaccount.identity.linkerd.cluster.local
CLIENT_B=client-b.production.serviceaccount.identity.linkerd.cluster.local
T0=$(date +%s)

ip netns add "$NSA" 2>netns.err ||
  fail "cannot create a network namespace (ip netns add: $(cat netns.err)); this test needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), as CI runs it"
ip netns add "$NSB"
for x in "$NSA $VAH $VAN $A_HOST $A" "$NSB $VBH $VBN $B_HOST $B"; do
  read -r ns vh vn host addr <<<"$x"
  ip link add "$vh" type veth peer name "$vn"
  ip link set "$vn" netns "$ns"
  ip addr add "$host/30" dev "$vh"
  ip link set "$vh" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$addr/30" dev "$vn"
  ip -n "$ns" link set "$vn" up
  ip -n "$ns" route add default via "$host"
done

"$pki" "$tmp" server production web client-a production client-a client-b production client-b >/dev/null
read -r P_WEB P_OPEN P_ECHO P_IN P_SADM P_CW P_CO P_CE P_CADM <<<"$(timeout 20 "$PY" "$load" free-ports 9)"
timeout 50 "$PY" "$peers" backend "$P_WEB" web >web.log 2>&1 &
pids+=($!)
timeout 50 "$PY" "$peers" backend "$P_OPEN" open >open.log 2>&1 &
pids+=($!)
: >echo.conns # one line for each connection that reached the application
timeout 50 "$PY" "$load" echo-server "$P_ECHO" "$tmp/echo.conns" >echo.log 2>&1 &
pids+=($!)

# The whole policy in one file, written whole: one edit is one change.
# $1 is the address both except ranges leave out.
policy() {
  cat >policy/web.tmp <<EOF
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: web, namespace: production}
spec:
  podSelector: {matchLabels: {app: web}}
  port: $P_WEB
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: web-nets, namespace: production}
spec:
  networks:
  - cidr: 198.19.0.0/16
    except: [$1/32]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-authz, namespace: production}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: web}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: web-nets}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: echo, namespace: production}
spec:
  podSelector: {matchLabels: {app: web}}
  port: $P_ECHO
  proxyProtocol: opaque
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: echo-authz, namespace: production}
spec:
  server: {name: echo}
  client:
    networks:
    - cidr: $BLOCK
      except: [$1/32]
    unauthenticated: true
EOF
  mv policy/web.tmp policy/web.yaml
}
mkdir policy
policy "$B"

# The server proxy on the host, on A's host-end address (B reaches it through
# its default route); ports no Server selects: cluster-authenticated, the
# cluster being A's /30 only.
timeout 50 "$meshd" --identity-dir server --inbound-listen-addr "$A_HOST:$P_IN" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_SADM" --policy policy --workload-namespace production \
  --workload-labels app=web --default-inbound-policy cluster-authenticated \
  --cluster-networks "$A_NET" >server.log 2>&1 &
SPID=$!
pids+=($SPID)
cat >eps.json <<EOF
{"services": {
  "web.production.svc.cluster.local:80": {"endpoints": [{"addr": "$A_HOST:$P_IN", "identity": "$SERVER", "port": $P_WEB}]},
  "open.production.svc.cluster.local:80": {"endpoints": [{"addr": "$A_HOST:$P_IN", "identity": "$SERVER", "port": $P_OPEN}]},
  "echo.production.svc.cluster.local:7": {"endpoints": [{"addr": "$A_HOST:$P_IN", "identity": "$SERVER", "port": $P_ECHO}]}}}
EOF
# The same client proxy in each namespace: only the identity and the source address differ.
for x in "$NSA client-a" "$NSB client-b"; do
  read -r ns id <<<"$x"
  timeout 50 ip netns exec "$ns" "$meshd" --identity-dir "$tmp/$id" --endpoints "$tmp/eps.json" \
    --inbound-listen-addr "" --outbound-listen-addr "" --admin-listen-addr "127.0.0.1:$P_CADM" \
    --opaque-ports 7 --outbound-port-map "127.0.0.1:$P_CW=web.production.svc.cluster.local:80" \
    --outbound-port-map "127.0.0.1:$P_CO=open.production.svc.cluster.local:80" \
    --outbound-port-map "127.0.0.1:$P_CE=echo.production.svc.cluster.local:7" >"$id.log" 2>&1 &
  pids+=($!)
done

wait_http "http://127.0.0.1:$P_SADM/ready"
for ns in "$NSA" "$NSB"; do
  for _ in $(seq 100); do ip netns exec "$ns" curl -fsS -m 1 "http://127.0.0.1:$P_CADM/ready" >/dev/null 2>&1 && break; sleep 0.05; done
  ip netns exec "$ns" curl -fsS -m 1 "http://127.0.0.1:$P_CADM/ready" >/dev/null || fail "the client proxy in $ns is not ready"
done
wait_http "http://127.0.0.1:$P_WEB/"
wait_http "http://127.0.0.1:$P_OPEN/"
grep -q 'policy policy loaded: 2 servers' server.log || fail "the policy did not load: $(grep policy server.log)"

code() { # namespace url
  ip netns exec "$1" curl -s -o body.tmp -D head.tmp -w '%{http_code}' -m 10 "$2"
}
perr() { grep -i '^l5d-proxy-error:' head.tmp | tr -d '\r' | cut -d' ' -f2-; }
smetrics() { curl -fsS -m 5 "http://127.0.0.1:$P_SADM/metrics" >s.prom; }
metric() { # series value: the series has exactly this value
  grep -qxF "$1 $2" s.prom || fail "expected $1 $2; got: $(grep -F "${1%%\{*}" s.prom)"
}
# An opaque exchange from a namespace: "echo" when the bytes came back,
# "refused" when the connection was closed without them.
opaque() { # namespace port
  timeout 10 ip netns exec "$1" "$PY" -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
got = b""
try:
    s.sendall(b"ping\n")
    while len(got) < 5:
        b = s.recv(100)
        if not b:
            break
        got += b
except socket.timeout:
    print("timeout"); sys.exit()
except OSError:
    pass
print("echo" if got == b"ping\n" else "refused" if not got else "other: %r" % got)' "$2"
}
conns() { wc -l <echo.conns; }
refused() { # inbound connections closed as unauthorized, whatever their target
  awk '/^inbound_tcp_errors_total\{error="unauthorized",/ { n += $NF } END { print n + 0 }' s.prom
}
HTTP_WEB='srv_kind="server",srv_name="web",route_kind="default",route_name="default"'
HTTP_OPEN='srv_kind="default",srv_name="cluster-authenticated",route_kind="default",route_name="default"'
TCP_ECHO='srv_kind="server",srv_name="echo"'

# ---- 1. AuthorizationPolicy + NetworkAuthentication: 198.19.0.0/16 except B -----------------
c=$(code "$NSA" "http://127.0.0.1:$P_CW/")
[ "$c" = 200 ] && grep -qx web body.tmp || fail "A ($A) on web: $c $(perr)"
c=$(code "$NSB" "http://127.0.0.1:$P_CW/")
[ "$c" = 403 ] && perr | grep -q '^unauthorized' || fail "B ($B) on web: $c $(perr)"
perr | grep -q "$CLIENT_B" || fail "the 403 does not name the client: $(perr)"
# Both proxies' connections, as the server's kernel sees them: two source addresses.
peers_seen=$(ss -Htn state established "( sport = :$P_IN )" | awk '{print $4}' | sed 's/:[0-9]*$//' | sort -u | tr '\n' ' ')
[ "$peers_seen" = "$A $B " ] || [ "$peers_seen" = "$B $A " ] || fail "the server's peers: $peers_seen (expected $A and $B)"
smetrics
metric "inbound_http_authz_allow_total{$HTTP_WEB,authz_kind=\"authorizationpolicy\",authz_name=\"web-authz\"}" 1
metric "inbound_http_authz_deny_total{$HTTP_WEB}" 1
ok "NetworkAuthentication 198.19.0.0/16 except $B: A ($A) 200, B ($B) 403 unauthorized; counted under web-authz / web"

# ---- 2. ServerAuthorization networks + unauthenticated on an opaque port --------------------------
r=$(opaque "$NSA" "$P_CE")
[ "$r" = echo ] || fail "A on the opaque port: $r"
[ "$(conns)" = 1 ] || fail "A's connection reached the application $(conns) times"
r=$(opaque "$NSB" "$P_CE")
[ "$r" = refused ] || fail "B on the opaque port: $r"
sleep 0.2 # a connection let through would be logged by now
[ "$(conns)" = 1 ] || fail "B's refused connection reached the application"
smetrics
metric "inbound_tcp_authz_allow_total{$TCP_ECHO,authz_kind=\"serverauthorization\",authz_name=\"echo-authz\"}" 1
metric "inbound_tcp_authz_deny_total{$TCP_ECHO}" 1
[ "$(refused)" = 1 ] || fail "inbound_tcp_errors_total{error=\"unauthorized\"}: $(grep -F tcp_errors s.prom)"
ok "ServerAuthorization $BLOCK except $B, unauthenticated: A's connection echoed, B's refused before any byte reached the application"

# ---- 3. cluster-authenticated for ports no Server selects, --cluster-networks A's /30 -----------------
c=$(code "$NSA" "http://127.0.0.1:$P_CO/")
[ "$c" = 200 ] && grep -qx open body.tmp || fail "A (inside $A_NET) on a port no Server selects: $c $(perr)"
c=$(code "$NSB" "http://127.0.0.1:$P_CO/")
[ "$c" = 403 ] && perr | grep -q '^unauthorized' || fail "B (outside $A_NET, authenticated) on a port no Server selects: $c $(perr)"
smetrics
metric "inbound_http_authz_allow_total{$HTTP_OPEN,authz_kind=\"default\",authz_name=\"cluster-authenticated\"}" 1
metric "inbound_http_authz_deny_total{$HTTP_OPEN}" 1
ok "cluster-authenticated with --cluster-networks $A_NET: A 200, B (a mesh identity from outside) 403"

# ---- 4. the except moved to A: in force within a second, open opaque connections included ----------
timeout 20 ip netns exec "$NSA" "$PY" -c '
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"before\n")
got = b""
while len(got) < 7:
    b = s.recv(100)
    if not b:
        break
    got += b
assert got == b"before\n", got
open(sys.argv[2], "w").close()
try:
    b = s.recv(100)
    end = time.time()
    state = "data" if b else "closed"
    if not b:
        s.sendall(b"after\n")  # the proxy is gone both ways: no echo, at most a reset
        state = "closed" if not s.recv(100) else "half-closed"
except socket.timeout:
    state, end = "open", time.time()
except OSError:
    state, end = "closed", time.time()
print(state, "%.3f" % end)' "$P_CE" "$tmp/held" >held.out 2>&1 &
HELD=$!
pids+=($HELD)
for _ in $(seq 100); do [ -e held ] && break; sleep 0.05; done
[ -e held ] || fail "the held connection did not open: $(cat held.out)"
[ "$(conns)" = 2 ] || fail "the held connection did not reach the application"
n=$(grep -c 'policy policy loaded' server.log)
t0=$(date +%s.%N)
policy "$A"
for _ in $(seq 120); do [ "$(grep -c 'policy policy loaded' server.log)" -gt "$n" ] && break; sleep 0.025; done
t1=$(date +%s.%N)
[ "$(grep -c 'policy policy loaded' server.log)" -gt "$n" ] || fail "the edit was not loaded in 3 s"
grep -q 'policy policy rejected' server.log && fail "the edit was rejected"
kill -0 "$SPID" || fail "the server proxy is gone"
wait "$HELD" || true
read -r state closed_at <held.out || true
[ "$state" = closed ] || fail "A's open opaque connection, no longer authorized: $(cat held.out)"
awk -v a="$t0" -v b="$t1" -v c="$closed_at" 'BEGIN { exit !(b - a <= 1.5 && c - a <= 1.5) }' ||
  fail "the edit took $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') s to load, the held connection closed after $(awk -v a="$t0" -v c="$closed_at" 'BEGIN { print c - a }') s"
grep -q "inbound .*closed, no longer authorized" server.log || fail "the closing is not logged"
c=$(code "$NSA" "http://127.0.0.1:$P_CW/")
[ "$c" = 403 ] && perr | grep -q '^unauthorized' || fail "A on web after the edit: $c $(perr)"
c=$(code "$NSB" "http://127.0.0.1:$P_CW/")
[ "$c" = 200 ] && grep -qx web body.tmp || fail "B on web after the edit: $c $(perr)"
r=$(opaque "$NSB" "$P_CE")
[ "$r" = echo ] || fail "B on the opaque port after the edit: $r"
r=$(opaque "$NSA" "$P_CE")
[ "$r" = refused ] || fail "A on the opaque port after the edit: $r"
sleep 0.2
[ "$(conns)" = 3 ] || fail "after the edit, $(conns) connections reached the application (expected 3: A, A held, B)"
smetrics
metric "inbound_http_authz_allow_total{$HTTP_WEB,authz_kind=\"authorizationpolicy\",authz_name=\"web-authz\"}" 2
metric "inbound_http_authz_deny_total{$HTTP_WEB}" 2
metric "inbound_tcp_authz_allow_total{$TCP_ECHO,authz_kind=\"serverauthorization\",authz_name=\"echo-authz\"}" 3
metric "inbound_tcp_authz_deny_total{$TCP_ECHO}" 2
# the held connection closed by the edit counts as an error, not as a decision
[ "$(refused)" = 3 ] || fail "inbound_tcp_errors_total{error=\"unauthorized\"}: $(grep -F tcp_errors s.prom)"
ok "except moved to A without a restart: loaded in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s; A's open opaque connection closed; A now 403 and refused, B 200 and echoed"

if grep -l -E 'AddressSanitizer|LeakSanitizer|runtime error:' ./*.log 2>/dev/null; then fail "sanitizer report"; fi
[ $(($(date +%s) - T0)) -lt 60 ] || fail "the test took $(($(date +%s) - T0)) s (its bound is 60 s)"
echo "all meshd network policy tests passed"
