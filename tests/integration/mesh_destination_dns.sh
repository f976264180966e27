#!/usr/bin/env bash
# mesh-destination's DNS fallback against a real dnsmasq on loopback: answers, TTL-driven changes, NXDOMAIN, a server down, cluster names kept off DNS, bounds, and meshd reaching a name outside the mesh.
set -euo pipefail
dest=$(realpath "$1")
meshd=$(realpath "$2")
pki=$(realpath "$3")
load=$(realpath "$4")
peers=$(realpath "$5")
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)
ok() { echo "ok (at $(($(now_ms) - T0)) ms): $*"; }
GET=/io.linkerd.proxy.destination.Destination/Get
DNS_IP=127.0.0.35 # dnsmasq's own loopback address: nothing else listens there
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq) # sbin: not on every user's PATH
[ -x "$DNSMASQ" ] || fail "dnsmasq is not installed (Debian's dnsmasq-base: make test-deps)"

read -r P_DNS P_DST P_DADM P_APP P_OUT P_CADM P_D2 P_D2ADM P_D3 P_D3ADM <<<"$(timeout 20 "$PY" "$load" free-ports 10)"

# ---- dnsmasq: the names of example.test from a hosts file (TTL 1 s), NXDOMAIN for the rest -----
# hosts IP: the zone, with api.example.test at IP.
hosts() {
  printf '%s\n' "$1 api.example.test" "127.0.0.11 dual.example.test" "::1 dual.example.test" \
    "127.0.0.12 api.corp" >hosts.tmp && mv hosts.tmp hosts
}
hosts 127.0.0.9
start_dns() {
  timeout 60 "$DNSMASQ" --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
    --addn-hosts="$PWD/hosts" --local=/example.test/ --local=/corp/ --local-ttl=1 --user="$(id -un)" \
    --listen-address="$DNS_IP" --bind-interfaces --port="$P_DNS" --pid-file="$PWD/dnsmasq.pid" \
    --log-queries --log-facility="$PWD/dnsmasq.log" 2>>dnsmasq.err &
  pids+=($!)
  for _ in $(seq 100); do
    [ -s dnsmasq.pid ] && grep -q "read $PWD/hosts" dnsmasq.log 2>/dev/null && return 0
    sleep 0.05
  done
  fail "dnsmasq does not start: $(cat dnsmasq.err)"
}
start_dns
# queries NAME: how many A queries dnsmasq has seen for NAME.
queries() { grep -c "query\[A\] $1 from" dnsmasq.log || true; }

# ---- the store: one Service, so that cluster names have an owner -------------------------
mkdir store
cat >store/web.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, address: 127.0.0.2}
EOF

timeout 60 "$dest" --store-dir store --listen "127.0.0.1:$P_DST" --admin "127.0.0.1:$P_DADM" \
  --dns-server "$DNS_IP:$P_DNS" --debounce-ms 50 >dest.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_DADM/ready"
grep -q "resolved by DNS ($DNS_IP:$P_DNS)" dest.log || fail "the DNS servers are not logged"

# watch NAME AUTHORITY [PORT]: a Get stream in the background, its lines into NAME.out.
watch() {
  timeout 50 curl -sS -N --http2-prior-knowledge -H 'content-type: application/json' \
    --data-binary "{\"path\":\"$2\"}" "http://127.0.0.1:${3:-$P_DST}$GET" >"$1.out" 2>"$1.err" &
  pids+=($!)
}
# within MS FILE REGEX [SKIP]: FILE gets a line matching REGEX within MS milliseconds (its
# first SKIP lines, already seen, left out).
within() {
  local deadline=$(($(now_ms) + $1))
  while ! tail -n "+$((${4:-0} + 1))" "$2" 2>/dev/null | grep -qE -- "$3"; do
    [ "$(now_ms)" -gt "$deadline" ] && fail "no line matching /$3/ in $2 within $1 ms: $(cat "$2")"
    sleep 0.02
  done
}
# first AUTHORITY PORT: the first message of a Get stream (the stream is then closed).
first() {
  local f="first.$2.out" c
  timeout 5 curl -sS -N --http2-prior-knowledge --data-binary "{\"path\":\"$1\"}" \
    "http://127.0.0.1:$2$GET" >"$f" 2>/dev/null &
  c=$!
  for _ in $(seq 200); do [ "$(wc -l <"$f")" -ge 1 ] && break; sleep 0.02; done
  kill "$c" 2>/dev/null || true
  wait "$c" 2>/dev/null || true
  head -n 1 "$f"
}
metric() { curl -fsS -m 5 "http://127.0.0.1:${2:-$P_DADM}/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

# ---- answers: addresses as endpoints that are not meshed; one resolution per name -------------
watch api "api.example.test:8080"
within 2000 api.out '^\{"add"'
[ "$(cat api.out)" = '{"add":{"addrs":[{"addr":"127.0.0.9:8080","weight":1,"target_port":8080}]}}' ] ||
  fail "the first answer for api.example.test:8080: $(cat api.out)"
watch api2 "API.Example.Test.:9090"
within 2000 api2.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.9:9090","weight":1,"target_port":9090\}\]\}\}$'
[ "$(queries api.example.test)" = 1 ] || fail "two streams, $(queries api.example.test) queries for one name"
watch dual "dual.example.test"
within 2000 dual.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.11:80",[^]]*\},\{"addr":"\[::1\]:80","weight":1,"target_port":80\}\]\}\}$'
ok "A and AAAA answers stream as plain endpoints; two streams for one name share one query"

watch nope "nope.example.test:80"
within 2000 nope.out '^\{"no_endpoints":\{"exists":false\}\}$'
grep -q "query\[A\] nope.example.test from" dnsmasq.log || fail "nope.example.test was not asked to DNS"
grep -q "dns nope.example.test: no such name" dest.log || fail "NXDOMAIN is not logged: $(grep dns dest.log)"
ok "NXDOMAIN: no_endpoints{exists:false}"

# Names of the cluster, and short names, stay the store's: never asked to DNS.
watch known "web.shop.svc.cluster.local:80"
within 2000 known.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.2:4143",.*"tls_identity"'
i=0
for a in gone.shop.svc.cluster.local:80 gone.shop.svc:80 gone.shop:80 gone:80 node.cluster.local:80 \
  10.9.9.9:80; do
  watch "local$((i += 1))" "$a"
done
for n in $(seq "$i"); do within 2000 "local$n.out" '^\{"no_endpoints":\{"exists":false\}\}$'; done
sleep 0.2
for n in $(seq "$i"); do [ "$(wc -l <"local$n.out")" = 1 ] || fail "local$n: $(cat "local$n.out")"; done
! grep -E "query\[[A-Z]+\] ([^ ]*cluster\.local|[^ ]*\.svc|gone|10\.9\.9\.9) " dnsmasq.log ||
  fail "a name of the cluster went to DNS"
[ "$(metric destination_dns_names)" = 3 ] || fail "destination_dns_names: $(metric destination_dns_names)"
ok "cluster-domain names, short names (svc.ns of a namespace of the store too) and addresses the store lacks: exists:false, no DNS query"

# The store takes a name DNS answered (a Service api in namespace corp), and gives it back.
watch corp "api.corp:80"
within 2000 corp.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.12:80","weight":1,"target_port":80\}\]\}\}$'
cat >store/.corp.tmp <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: api, namespace: corp}
spec: {selector: {app: api}}
---
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: api-1, namespace: corp, labels: {app: api}}
spec: {serviceAccount: api, address: 127.0.0.13}
EOF
mv store/.corp.tmp store/corp.yaml
within 2000 corp.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.13:4143",.*"tls_identity"' 1
[ "$(sed -n 2p corp.out)" = '{"remove":{"addrs":[{"addr":"127.0.0.12:80"}]}}' ] ||
  fail "the store took api.corp: $(cat corp.out)"
rm store/corp.yaml
within 2000 corp.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.12:80"' 3
[ "$(sed -n 4p corp.out)" = '{"no_endpoints":{"exists":false}}' ] || fail "the store let api.corp go: $(cat corp.out)"
ok "a Service for a name DNS answered takes over (DNS addresses removed); gone, DNS answers again"

# ---- meshd reaches the name through discovery: plain HTTP to the address DNS gave -----------
timeout 50 "$PY" "$peers" backend "$P_APP" external 127.0.0.9 >app.log 2>&1 &
pids+=($!)
"$pki" "$tmp" client default client >/dev/null
timeout 50 "$meshd" --identity-dir client --outbound-listen-addr "" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_CADM" --destination-addr "127.0.0.1:$P_DST" \
  --outbound-port-map "127.0.0.1:$P_OUT=api.example.test:$P_APP" >client.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_CADM/ready"
for _ in $(seq 50); do curl -fsS -m 1 "http://127.0.0.9:$P_APP/" >/dev/null 2>&1 && break; sleep 0.05; done
got=$(curl -sS -m 5 "http://127.0.0.1:$P_OUT/" || true)
[ "$got" = external ] || fail "through meshd to api.example.test:$P_APP: '$got'"
curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics" >m.txt
grep -qE "^tcp_open_total\{direction=\"outbound\",peer=\"dst\",tls=\"no_identity\",.*\"127\.0\.0\.9:$P_APP\"" m.txt ||
  fail "meshd's connection to the DNS endpoint was not plain TCP: $(grep '^tcp_open_total' m.txt)"
ok "meshd: a request to api.example.test:$P_APP reaches 127.0.0.9 over plain TCP ($got)"

# ---- the answer changes: remove then add once the TTL (floored at 5 s) runs out ---------------
before=$(wc -l <api.out)
hosts 127.0.0.10
kill -HUP "$(cat dnsmasq.pid)"
t0=$(now_ms)
within 9000 api.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.10:8080"'
took=$(($(now_ms) - t0))
[ "$(sed -n "$((before + 1))p" api.out)" = '{"remove":{"addrs":[{"addr":"127.0.0.9:8080"}]}}' ] ||
  fail "the change did not start with a remove: $(cat api.out)"
within 2000 api2.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.10:9090"'
grep -q '^{"remove":{"addrs":\[{"addr":"127.0.0.9:9090"}\]}}$' api2.out || fail "api2: $(cat api2.out)"
[ "$(wc -l <dual.out)" = 1 ] || fail "an unchanged answer was sent again: $(cat dual.out)"
ok "a changed answer: remove 127.0.0.9, add 127.0.0.10 on both streams after $took ms"

# ---- the server down: the last answer stays, retried with backoff; back: updates again ------
kill "$(cat dnsmasq.pid)"
before=$(wc -l <api.out)
within 9000 dest.log "dns api.example.test: .*keeping the last addresses, retrying with backoff"
sleep 1.5
[ "$(wc -l <api.out)" = "$before" ] || fail "a failing server changed the stream: $(cat api.out)"
f=$(metric 'destination_dns_resolutions_total{result="failed"}')
[ "${f:-0}" -ge 2 ] || fail "failed resolutions: '$f' (expected a retry)"
hosts 127.0.0.9
rm -f dnsmasq.pid
start_dns
within 9000 api.out '^\{"add":\{"addrs":\[\{"addr":"127\.0\.0\.9:8080"' "$before"
grep -q '^{"remove":{"addrs":\[{"addr":"127.0.0.10:8080"}\]}}$' api.out || fail "api after the restart: $(cat api.out)"
ok "DNS away: the last answer kept ($f failed tries); back: the new answer streams"

# ---- bounds: one name at most; a watched name is never evicted, an idle one is --------------
timeout 30 "$dest" --store-dir store --listen "127.0.0.1:$P_D2" --admin "127.0.0.1:$P_D2ADM" \
  --dns-server "$DNS_IP:$P_DNS" --dns-max-names 1 >d2.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_D2ADM/ready"
timeout 30 curl -sS -N --http2-prior-knowledge --data-binary '{"path":"api.example.test:80"}' \
  "http://127.0.0.1:$P_D2$GET" >held.out 2>/dev/null &
held=$!
pids+=("$held")
within 2000 held.out '^\{"add"'
c=$(curl -sS --http2-prior-knowledge -o full.out -w '%{http_code}' -m 5 \
  --data-binary '{"path":"dual.example.test:80"}' "http://127.0.0.1:$P_D2$GET" || true)
[ "$c" = 429 ] && grep -q '"code":"resource_exhausted"' full.out || fail "a second name past --dns-max-names 1: $c $(cat full.out)"
kill "$held"
for _ in $(seq 50); do [ "$(metric 'destination_streams{method="get"}' "$P_D2ADM")" = 0 ] && break; sleep 0.05; done
out=$(first dual.example.test:80 "$P_D2")
case "$out" in '{"add":{"addrs":[{"addr":"127.0.0.11:80"'*) ;; *) fail "after the stream closed: '$out'" ;; esac
ok "--dns-max-names 1: a second name refused (429) while the first is watched, served once it is idle"

# ---- --no-dns-fallback: the store's answer alone, DNS untouched ---------------------------
timeout 30 "$dest" --store-dir store --listen "127.0.0.1:$P_D3" --admin "127.0.0.1:$P_D3ADM" \
  --dns-server "$DNS_IP:$P_DNS" --no-dns-fallback >d3.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_D3ADM/ready"
out=$(first solo.example.test:8080 "$P_D3")
[ "$out" = '{"no_endpoints":{"exists":false}}' ] || fail "--no-dns-fallback: '$out'"
[ "$(queries solo.example.test)" = 0 ] || fail "--no-dns-fallback asked DNS"
code=0
timeout 5 "$dest" --store-dir store --dns-server 127.0.0.1:99999 >bad.log 2>&1 || code=$?
[ "$code" = 2 ] && grep -q "expected IP\[:PORT\]" bad.log || fail "a bad --dns-server: $code $(cat bad.log)"
ok "--no-dns-fallback answers exists:false without DNS; a bad --dns-server is refused"
echo "mesh-destination DNS fallback: all checks passed in $(($(now_ms) - T0)) ms"
