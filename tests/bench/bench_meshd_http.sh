#!/usr/bin/env bash
# Benchmark: HTTP/1.1 and HTTP/2 through two meshd (mTLS) vs direct, a HAProxy chain and an nginx chain: latency, throughput, CPU/request, RSS.
#
# usage: bench_meshd_http.sh MESHD MESHD_PKI [LATENCY_SECONDS=10] [THROUGHPUT_REQUESTS=50000]
# PERF_OUT=DIR (optional): `perf record -g` both meshd during their throughput runs into DIR
# (it slows them: the figures of such a run are not the ones to quote).
set -euo pipefail
meshd=$(realpath "$1") # meson may pass paths relative to the build dir
pki=$(realpath "$2")
lat_secs=${3:-10}
tput_n=${4:-50000}
perf_out=${PERF_OUT:+$(realpath "$PERF_OUT")}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"
PY=/usr/bin/python3 # a pyenv shim on PATH costs seconds a call
[ -x "$PY" ] || PY=python3
fail() {
  echo "FAIL: $*"
  for f in *.log */*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }; done
  exit 1
}
WEB=web.default.serviceaccount.identity.linkerd.cluster.local
# One TLS policy for every chain: meshd's (TLS 1.2, ECDHE-ECDSA-AES128-GCM, P-256 certificates).
CIPHER=ECDHE-ECDSA-AES128-GCM-SHA256
"$pki" "$tmp" client default client server default web >/dev/null
mkdir other && "$pki" "$tmp/other" client default client >/dev/null # another CA: must be refused
# HAProxy wants the chain and the key in one file.
cat client/leaf.crt client/key.pem >client.pem
cat server/leaf.crt server/key.pem >server.pem
# openssl s_client sends only the first certificate of -cert: the issuer goes in -cert_chain.
for d in client other/client; do awk '/BEGIN CERT/ { n++ } n > 1' $d/leaf.crt >$d/chain.pem; done

read -r P_APP1 P_APP2 P_MIN P_MSADM P_MCADM P_M1 P_M2 P_HA1A P_HA1B P_HA2A P_HA2B P_NX1A P_NX1B P_NX2 \
  <<<"$(timeout 20 "$PY" -c '
import socket
s = [socket.socket() for _ in range(14)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')"

# ---- the backend: one nginx worker, HTTP/1.1 on P_APP1, h2c (prior knowledge) on P_APP2 -------------
nginx_common() { # DIR: the part every nginx here shares; own pid, log and temp paths, no root paths
  mkdir -p "$1"
  cat <<EOF
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid $1/nginx.pid;
lock_file $1/nginx.lock;
error_log $1/error.log warn;
events { worker_connections 8192; }
EOF
}
nginx_http_common() { # DIR
  cat <<EOF
  access_log off;
  client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
  keepalive_requests 10000000; keepalive_timeout 300s;
EOF
}
{
  nginx_common "$tmp/app"
  echo "http {"
  nginx_http_common "$tmp/app"
  cat <<EOF
  server { listen 127.0.0.1:$P_APP1; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$P_APP2 http2; location / { return 200 "ok\n"; } }
}
EOF
} >app.conf
timeout 300 nginx -p "$tmp/app" -c "$tmp/app.conf" -e "$tmp/app/error.log" >app.log 2>&1 &
APP=$!
pids+=("$APP")

# ---- meshd: client proxy (port maps) -> one mTLS HTTP/2 connection -> server proxy -> the backend ----
cat >eps.json <<EOF
{"services": {
  "web1.default.svc.cluster.local:80": {"endpoints": [{"addr": "127.0.0.2:$P_MIN", "identity": "$WEB", "port": $P_APP1}]},
  "web2.default.svc.cluster.local:80": {"endpoints": [{"addr": "127.0.0.2:$P_MIN", "identity": "$WEB", "port": $P_APP2}]}}}
EOF
timeout 300 "$meshd" --identity-dir server --inbound-listen-addr "127.0.0.2:$P_MIN" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.2:$P_MSADM" --inbound-ports "$P_APP1,$P_APP2" --log-level warn >meshd-in.log 2>&1 &
MIN=$!
pids+=("$MIN")
timeout 300 "$meshd" --identity-dir client --inbound-listen-addr "" --outbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_MCADM" --endpoints eps.json --log-level warn \
  --outbound-port-map "127.0.0.1:$P_M1=web1.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_M2=web2.default.svc.cluster.local:80" >meshd-out.log 2>&1 &
MOUT=$!
pids+=("$MOUT")

# ---- HAProxy: the same two hops, one thread each; HTTP/1.1 hops for HTTP/1.1, HTTP/2 hops for h2 ----
haproxy_common() {
  cat <<EOF
global
  nbthread 1
  maxconn 4096
  ssl-server-verify required
  ssl-default-bind-ciphers $CIPHER
  ssl-default-bind-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2
  ssl-default-server-ciphers $CIPHER
  ssl-default-server-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2
defaults
  mode http
  maxconn 4096
  timeout connect 1s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
EOF
}
{
  haproxy_common
  cat <<EOF
frontend h1
  bind 127.0.0.1:$P_HA1A
  default_backend hop_h1
frontend h2
  bind 127.0.0.1:$P_HA1B proto h2
  default_backend hop_h2
backend hop_h1
  server in 127.0.0.2:$P_HA2A ssl crt $tmp/client.pem ca-file $tmp/ca.crt verify required verifyhost $WEB sni str($WEB) alpn http/1.1
backend hop_h2
  server in 127.0.0.2:$P_HA2B ssl crt $tmp/client.pem ca-file $tmp/ca.crt verify required verifyhost $WEB sni str($WEB) alpn h2
EOF
} >ha-out.cfg
{
  haproxy_common
  cat <<EOF
frontend in_h1
  bind 127.0.0.2:$P_HA2A ssl crt $tmp/server.pem ca-file $tmp/ca.crt verify required alpn http/1.1
  default_backend app_h1
frontend in_h2
  bind 127.0.0.2:$P_HA2B ssl crt $tmp/server.pem ca-file $tmp/ca.crt verify required alpn h2
  default_backend app_h2
backend app_h1
  server app 127.0.0.1:$P_APP1
backend app_h2
  server app 127.0.0.1:$P_APP2 proto h2
EOF
} >ha-in.cfg
timeout 300 haproxy -db -f ha-in.cfg >ha-in.log 2>&1 &
HAIN=$!
pids+=("$HAIN")
timeout 300 haproxy -db -f ha-out.cfg >ha-out.log 2>&1 &
HAOUT=$!
pids+=("$HAOUT")

# ---- nginx: the same two hops, one worker each; HTTP/1.1 between the hops (nginx has no HTTP/2 upstreams) ----
{
  nginx_common "$tmp/nx-out"
  echo "http {"
  nginx_http_common "$tmp/nx-out"
  cat <<EOF
  upstream hop { server 127.0.0.2:$P_NX2; keepalive 128; keepalive_requests 10000000; keepalive_timeout 300s; }
  server {
    listen 127.0.0.1:$P_NX1A;
    listen 127.0.0.1:$P_NX1B http2;
    location / {
      proxy_pass https://hop;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate $tmp/client/leaf.crt;
      proxy_ssl_certificate_key $tmp/client/key.pem;
      proxy_ssl_trusted_certificate $tmp/ca.crt;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 3;
      proxy_ssl_name $WEB;
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.2;
      proxy_ssl_ciphers $CIPHER;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
} >nx-out.conf
{
  nginx_common "$tmp/nx-in"
  echo "http {"
  nginx_http_common "$tmp/nx-in"
  cat <<EOF
  upstream app { server 127.0.0.1:$P_APP1; keepalive 128; keepalive_requests 10000000; keepalive_timeout 300s; }
  server {
    listen 127.0.0.2:$P_NX2 ssl;
    ssl_certificate $tmp/server/leaf.crt;
    ssl_certificate_key $tmp/server/key.pem;
    ssl_client_certificate $tmp/ca.crt;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_protocols TLSv1.2;
    ssl_ciphers $CIPHER;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
} >nx-in.conf
timeout 300 nginx -p "$tmp/nx-in" -c "$tmp/nx-in.conf" -e "$tmp/nx-in/error.log" >nx-in.log 2>&1 &
NXIN=$!
pids+=("$NXIN")
timeout 300 nginx -p "$tmp/nx-out" -c "$tmp/nx-out.conf" -e "$tmp/nx-out/error.log" >nx-out.log 2>&1 &
NXOUT=$!
pids+=("$NXOUT")

# ---- every chain answers, and each second hop refuses a client certificate from another CA -------------
get1() { curl -fsS -m 2 "http://127.0.0.1:$1/" 2>/dev/null; }
get2() { curl -fsS -m 2 --http2-prior-knowledge "http://127.0.0.1:$1/" 2>/dev/null; }
for p in $P_APP1 $P_M1 $P_HA1A $P_NX1A; do
  for _ in $(seq 100); do [ "$(get1 "$p")" = ok ] && break; sleep 0.1; done
  [ "$(get1 "$p")" = ok ] || fail "HTTP/1.1 to port $p"
done
for p in $P_APP2 $P_M2 $P_HA1B $P_NX1B; do
  [ "$(get2 "$p")" = ok ] || fail "HTTP/2 (prior knowledge) to port $p"
done
tls_ok() { # PORT CERTDIR: a TLS 1.2 handshake with that client certificate completes
  timeout 10 openssl s_client -connect "127.0.0.2:$1" -tls1_2 -cipher "$CIPHER" -servername "$WEB" \
    -CAfile ca.crt -verify_return_error -cert "$2/leaf.crt" -cert_chain "$2/chain.pem" -key "$2/key.pem" ${3:+-alpn "$3"} \
    </dev/null >tls.out 2>&1 || true # meshd may close first, at the EOF before a transport header
  grep -q '^New, TLSv1.2, Cipher is' tls.out
}
https_ok() { # PORT CERTDIR: an HTTPS request with that client certificate is answered
  [ "$(curl -fsS -m 5 --cacert ca.crt --resolve "$WEB:$1:127.0.0.2" --cert "$2/leaf.crt" --key "$2/key.pem" \
    "https://$WEB:$1/" 2>/dev/null)" = ok ]
}
tls_ok "$P_MIN" client transport.l5d.io/v1 || fail "meshd inbound refused the right client certificate: $(cat tls.out)"
echo "mTLS check: meshd inbound: $(grep -m1 -o 'Cipher is .*' tls.out)"
! grep -q 'client certificate rejected' meshd-in.log || fail "meshd inbound rejected the right client certificate"
# meshd completes the TLS 1.2 handshake and then checks the certificate: the connection is closed and logged.
tls_ok "$P_MIN" other/client transport.l5d.io/v1 || true
for _ in $(seq 50); do grep -q 'client certificate rejected' meshd-in.log && break; sleep 0.1; done
grep -q 'client certificate rejected' meshd-in.log || fail "meshd inbound accepted another CA's client certificate"
for hop in "HAProxy $P_HA2A" "nginx $P_NX2"; do
  read -r name p <<<"$hop"
  https_ok "$p" client || fail "$name inbound refused the right client certificate"
  tls_ok "$p" client || fail "TLS to $name inbound: $(cat tls.out)"
  echo "mTLS check: $name inbound: $(grep -m1 -o 'Cipher is .*' tls.out)"
  ! https_ok "$p" other/client || fail "$name inbound answered a client with another CA's certificate"
done
echo "mTLS check: each second hop (meshd, HAProxy, nginx) refused a client certificate from another CA"

# ---- measuring -------------------------------------------------------------------------------------------
child() { ps -o pid= --ppid "$1" | tr -d ' ' | head -n 1; }
# The processes that do the work: meshd and HAProxy under timeout(1); nginx's worker under its master.
M_OUT=$(child $MOUT) M_IN=$(child $MIN) H_OUT=$(child $HAOUT) H_IN=$(child $HAIN)
N_OUT=$(child "$(child $NXOUT)") N_IN=$(child "$(child $NXIN)") A_W=$(child "$(child $APP)")
for p in "$M_OUT" "$M_IN" "$H_OUT" "$H_IN" "$N_OUT" "$N_IN" "$A_W"; do [ -n "$p" ] || fail "a process is missing"; done
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
res=results.tsv
: >$res
put() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>$res; }
for c in meshd haproxy nginx; do
  case $c in meshd) o=$M_OUT i=$M_IN ;; haproxy) o=$H_OUT i=$H_IN ;; nginx) o=$N_OUT i=$N_IN ;; esac
  put "$c" - rss_fresh_out "$(rss "$o")"
  put "$c" - rss_fresh_in "$(rss "$i")"
done

# RSS with 1,000 open client connections, each of which has had one HTTP/1.1 request answered.
cat >many.py <<'EOF2'
import os, socket, sys, time
port, n, ready, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
deadline = time.monotonic() + 60
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    got = b""
    while not got.endswith(b"\r\n\r\nok\n"):
        b = s.recv(4096)
        if not b or time.monotonic() > deadline:
            sys.exit("many.py: no answer")
        got += b
    socks.append(s)
open(ready, "w").close()
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.05)
EOF2
hopconns() { ss -Htn state established "( dport = :$1 )" | wc -l; }
hold_many() { # TAG: for each chain, RSS of both hops with 1,000 client connections open
  local c o i p hp many
  for c in meshd haproxy nginx; do
    case $c in
      meshd) o=$M_OUT i=$M_IN p=$P_M1 hp=$P_MIN ;;
      haproxy) o=$H_OUT i=$H_IN p=$P_HA1A hp=$P_HA2A ;;
      nginx) o=$N_OUT i=$N_IN p=$P_NX1A hp=$P_NX2 ;;
    esac
    rm -f ready go
    timeout 90 "$PY" many.py "$p" 1000 ready go >many.log 2>&1 &
    many=$!
    for _ in $(seq 600); do [ -e ready ] && break; kill -0 $many 2>/dev/null || break; sleep 0.1; done
    [ -e ready ] || fail "$c: could not open 1,000 connections: $(cat many.log)"
    put $c - "rss_$1_out" "$(rss $o)"
    put $c - "rss_$1_in" "$(rss $i)"
    put $c - "hop_conns_$1" "$(hopconns "$hp")"
    touch go
    wait $many || true
    sleep 0.5 # let the proxies see the closes
  done
}
hold_many 1kfresh

h2args() { [ "$1" = h1 ] && echo --h1 || true; }
# One connection at 1,000 requests/s: h2load fires each connection's requests on its own timer, so
# N connections at 1000/N each would send bursts of N at once and measure their queueing.
latency() { # CHAIN PROTO PORT: p50/p90/p99 at a constant 1,000 requests/s
  local n=$((lat_secs * 1000)) a m
  a=$(h2args "$2")
  [ "$2" = h1 ] && m=1 || m=10
  timeout 30 h2load $a -n 2000 -c 10 -m 1 "http://127.0.0.1:$3/" >warm.out 2>&1 || true
  rm -f lat.tsv # h2load appends to its log file
  timeout $((lat_secs + 60)) h2load $a -t 1 -c 1 -m $m --rps 1000 -n "$n" --log-file lat.tsv \
    "http://127.0.0.1:$3/" >h2load.out 2>&1 || fail "h2load $1 $2: $(cat h2load.out)"
  grep -q "$n succeeded, 0 failed, 0 errored" h2load.out || fail "h2load $1 $2: $(grep requests: h2load.out)"
  read -r p50 p90 p99 <<<"$(cut -f3 lat.tsv | sort -n | awk '{ v[NR] = $1 }
    function q(f) { i = int(f * NR + 0.999999); if (i < 1) i = 1; return v[i] / 1000 }
    END { printf "%.3f %.3f %.3f\n", q(0.5), q(0.9), q(0.99) }')"
  put "$1" "$2" p50 "$p50"
  put "$1" "$2" p90 "$p90"
  put "$1" "$2" p99 "$p99"
}
throughput() { # CHAIN PROTO PORT OUTPID INPID: requests/s over a bounded count, and CPU per request of each hop
  local a m o0 i0 w0 perf=
  a=$(h2args "$2")
  [ "$2" = h1 ] && m=1 || m=10
  if [ -n "$perf_out" ] && [ "$1" = meshd ]; then
    timeout -s INT 120 perf record -g -o "$perf_out/meshd-$2.data" -p "$4,$5" >perf.log 2>&1 &
    perf=$!
    sleep 1
  fi
  o0=$(ticks "${4:-$A_W}") i0=$(ticks "${5:-$A_W}") w0=$(ticks $A_W)
  timeout 120 h2load $a -t 1 -c 50 -m $m -n "$tput_n" "http://127.0.0.1:$3/" >h2load.out 2>&1 ||
    fail "h2load $1 $2: $(cat h2load.out)"
  put "$1" "$2" cpu_out "$((($(ticks "${4:-$A_W}") - o0) * 1000000 / HZ))"
  put "$1" "$2" cpu_in "$((($(ticks "${5:-$A_W}") - i0) * 1000000 / HZ))"
  put "$1" "$2" cpu_app "$((($(ticks $A_W) - w0) * 1000000 / HZ))"
  [ -z "$perf" ] || { kill -INT "$perf"; wait "$perf" || true; }
  grep -q "$tput_n succeeded, 0 failed, 0 errored" h2load.out || fail "h2load $1 $2: $(grep requests: h2load.out)"
  put "$1" "$2" rps "$(sed -n 's/^finished in .*s, \([0-9.]*\) req\/s.*/\1/p' h2load.out)"
}
for proto in h1 h2; do
  for c in direct meshd haproxy nginx; do
    case $c/$proto in
      direct/h1) p=$P_APP1 o='' i='' ;; direct/h2) p=$P_APP2 o='' i='' ;;
      meshd/h1) p=$P_M1 o=$M_OUT i=$M_IN ;; meshd/h2) p=$P_M2 o=$M_OUT i=$M_IN ;;
      haproxy/h1) p=$P_HA1A o=$H_OUT i=$H_IN ;; haproxy/h2) p=$P_HA1B o=$H_OUT i=$H_IN ;;
      nginx/h1) p=$P_NX1A o=$N_OUT i=$N_IN ;; nginx/h2) p=$P_NX1B o=$N_OUT i=$N_IN ;;
    esac
    latency $c $proto "$p"
    throughput $c $proto "$p" "$o" "$i"
    echo "done: $c $proto ($(tail -n 1 $res | cut -f4) req/s)"
  done
done
for c in meshd haproxy nginx; do
  case $c in meshd) o=$M_OUT i=$M_IN ;; haproxy) o=$H_OUT i=$H_IN ;; nginx) o=$N_OUT i=$N_IN ;; esac
  put "$c" - rss_idle_out "$(rss "$o")"
  put "$c" - rss_idle_in "$(rss "$i")"
done
hold_many 1kafter

# ---- the report ------------------------------------------------------------------------------------------
echo
echo "meshd HTTP: h2load -> first hop -> mTLS (TLS 1.2 $CIPHER) -> second hop -> nginx 'return 200 \"ok\\n\"',"
echo "$(date -u '+%F %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg); all on loopback, $(nproc) CPUs shared by everything; meshd, HAProxy (nbthread 1), nginx (1 worker): one thread a hop;"
echo "latency: ${lat_secs} s at 1,000 requests/s on one connection (h2: up to 10 streams); throughput: $tput_n requests, -c 50 (h2: -m 10)"
"$PY" - "$res" "$tput_n" <<'EOF'
import sys
r = {}
for line in open(sys.argv[1]):
    c, p, k, v = line.rstrip("\n").split("\t")
    r[(c, p, k)] = float(v)
n = int(sys.argv[2])
chains = ["direct", "meshd", "haproxy", "nginx"]
def g(c, p, k): return r.get((c, p, k))
for p, name in (("h1", "HTTP/1.1"), ("h2", "HTTP/2")):
    print("\n%s (nginx chain: HTTP/1.1 between its hops%s)" % (name, "" if p == "h1" else "; h2c only at its first hop"))
    print("| figure | " + " | ".join(chains) + " | meshd - direct | meshd / haproxy |")
    print("|---|" + "---:|" * (len(chains) + 2))
    for k, label in (("p50", "latency p50, ms"), ("p90", "latency p90, ms"), ("p99", "latency p99, ms")):
        d, m, h = g("direct", p, k), g("meshd", p, k), g("haproxy", p, k)
        print("| %s | %s | %+.3f ms | %.2fx |" % (label, " | ".join("%.3f" % g(c, p, k) for c in chains), m - d, m / h))
    d, m, h = g("direct", p, "rps"), g("meshd", p, "rps"), g("haproxy", p, "rps")
    print("| throughput, req/s | %s | %.2fx of direct | %.2fx |" % (" | ".join("%.0f" % g(c, p, "rps") for c in chains), m / d, m / h))
    for k, label in (("cpu_out", "CPU us/request, first hop"), ("cpu_in", "CPU us/request, second hop"), ("cpu_app", "CPU us/request, backend nginx")):
        vals = [g(c, p, k) / n for c in chains]
        if k != "cpu_app": vals[0] = None
        cells = " | ".join("-" if v is None else "%.1f" % v for v in vals)
        print("| %s | %s | | %.2fx |" % (label, cells, vals[1] / vals[2]))
print("\nRSS, KiB (first hop / second hop)")
print("| state | meshd | haproxy | nginx |")
print("|---|---:|---:|---:|")
for k, label in (("fresh", "idle, after start and one request"),
                 ("1kfresh", "1,000 open client connections (HTTP/1.1), before the load runs"),
                 ("idle", "idle, after the load runs"),
                 ("1kafter", "1,000 open client connections, after the load runs")):
    print("| %s | %s |" % (label, " | ".join("%d / %d" % (g(c, "-", "rss_%s_out" % k), g(c, "-", "rss_%s_in" % k)) for c in chains[1:])))
for k in ("1kfresh", "1kafter"):
    print("| TCP connections between the hops, %s | %s |" % (k, " | ".join("%d" % g(c, "-", "hop_conns_" + k) for c in chains[1:])))
EOF
