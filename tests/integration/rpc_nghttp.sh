#!/usr/bin/env bash
# Interop: nghttp, curl and h2load against libmesh's rpc server (h2c and mTLS), and malformed input beside a healthy load.
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
  for f in *.log *.out; do [ -f "$f" ] && { echo "--- $f"; head -c 4000 "$f"; }; done
  exit 1
}
ok() { echo "ok: $*"; }
WEB=web.emojivoto.serviceaccount.identity.linkerd.cluster.local
BOT=vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local

"$tool" pki "$tmp"

start() { # name args... -> PORT
  local name=$1
  shift
  timeout 170 "$tool" serve "$name.port" "$@" >"$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do [ -s "$name.port" ] && break; sleep 0.05; done
  [ -s "$name.port" ] || fail "$name did not start"
  PORT=$(cat "$name.port")
}

start plain --body-max 65536
P=$PORT
start tls --tls "$tmp"
T=$PORT
printf '{"a":[1,2,3]}' >body.json
printf '{"n":25}' >n.json

# ---- nghttp, h2c prior knowledge ----------------------------------------------
timeout 10 nghttp -d body.json "http://127.0.0.1:$P/echo.Echo/Say" >say.out 2>&1 ||
  fail "nghttp unary"
grep -qF '{"echo":{"a":[1,2,3]},"peer":null}' say.out || fail "nghttp unary body"
ok "nghttp unary over h2c"

timeout 10 nghttp -d n.json "http://127.0.0.1:$P/echo.Echo/Stream" >stream.out 2>&1 ||
  fail "nghttp stream"
[ "$(grep -c '^{"i":[0-9]*}$' stream.out)" = 25 ] || fail "nghttp stream: want 25 lines"
grep -qx '{"i":24}' stream.out || fail "nghttp stream: last line"
ok "nghttp stream of 25 lines"

timeout 10 nghttp -v -d body.json "http://127.0.0.1:$P/nope.Nope/Nothing" >nf.out 2>&1 || true
grep -q ':status: 404' nf.out || fail "nghttp unknown path: no 404"
grep -qF '"code":"not_found"' nf.out || fail "nghttp unknown path: error body"
ok "nghttp unknown path is 404 not_found"

# ---- curl, h2c prior knowledge ---------------------------------------------------
code=$(timeout 10 curl -sS --http2-prior-knowledge --data-binary @body.json -o curl.out \
  -w '%{http_code} %{http_version}' "http://127.0.0.1:$P/echo.Echo/Say")
[ "$code" = "200 2" ] || fail "curl unary: $code"
grep -qF '{"echo":{"a":[1,2,3]}' curl.out || fail "curl unary body"
ok "curl unary over h2c"

code=$(timeout 10 curl -sS --http2-prior-knowledge -o get.out -w '%{http_code}' \
  "http://127.0.0.1:$P/echo.Echo/Say")
[ "$code" = 405 ] || fail "curl GET: $code"
ok "curl GET is 405"

code=$(timeout 10 curl -sS --http2-prior-knowledge --data-binary 'not json' -o bad.out \
  -w '%{http_code}' "http://127.0.0.1:$P/echo.Echo/Say")
[ "$code" = 400 ] && grep -qF '"code":"invalid_argument"' bad.out || fail "curl bad JSON: $code"
ok "curl bad JSON is 400 invalid_argument"

head -c 100000 /dev/zero | tr '\0' ' ' >big.json
code=$(timeout 10 curl -sS --http2-prior-knowledge --data-binary @big.json -o big.out \
  -w '%{http_code}' "http://127.0.0.1:$P/echo.Echo/Say" || true)
[ "$code" = 413 ] && grep -qF '"code":"resource_exhausted"' big.out || fail "curl 100 KB body: $code"
ok "curl oversized body is 413 resource_exhausted"

# ---- mTLS ----------------------------------------------------------------------------
timeout 10 nghttp --cert client.pem --key client.key -d body.json \
  "https://127.0.0.1:$T/echo.Echo/Say" >tls.out 2>&1 || fail "nghttp over mTLS"
grep -qF "\"peer\":\"$BOT\"" tls.out || fail "server did not see the client identity"
ok "nghttp over mTLS, the server sees $BOT"

timeout 10 nghttp -d body.json "https://127.0.0.1:$T/echo.Echo/Say" >nocert.out 2>&1 || true
grep -qF '"echo"' nocert.out && fail "a client without a certificate was served"
ok "no client certificate, no answer"

timeout 10 "$tool" call "127.0.0.1:$T" /echo.Echo/Say '{"z":1}' --tls "$tmp" --expect "$WEB" \
  >call.out 2>&1 || fail "rpc_tool call over mTLS"
grep -qx 'status 200' call.out || fail "rpc_tool call status"
ok "libmesh client to libmesh server over mTLS"

timeout 10 "$tool" call "127.0.0.1:$T" /echo.Echo/Say '{}' --tls "$tmp" --expect "$BOT" \
  >wrong.out 2>&1 && fail "wrong server identity accepted"
grep -q '^error -10 ' wrong.out || fail "wrong identity: not MESH_ERR_IDENTITY"
ok "wrong server identity is MESH_ERR_IDENTITY"

# ---- malformed input while h2load keeps a healthy load going ----------------------
# A timed load (4 s) so that it surely overlaps every step below.
timeout 60 h2load -D 4 -c 4 -m 10 -d body.json "http://127.0.0.1:$P/echo.Echo/Say" \
  >load.out 2>&1 &
load=$!
pids+=($load)

# The server closes (a reset is as good as a FIN here): only a timeout fails.
closed_by_server() { # what
  local rc=0
  timeout 10 cat <&3 >/dev/null 2>&1 || rc=$?
  exec 3<&-
  [ "$rc" != 124 ] || fail "$1: the connection stayed open"
}
for _ in 1 2 3; do # random bytes
  exec 3<>"/dev/tcp/127.0.0.1/$P"
  (head -c 4096 /dev/urandom >&3) 2>/dev/null || true # a subshell takes any SIGPIPE
  closed_by_server "random bytes"
done
exec 3<>"/dev/tcp/127.0.0.1/$P" # a valid preface, then garbage frames
(printf 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'; head -c 4096 /dev/urandom) >&3 2>/dev/null || true
closed_by_server "garbage frames"
ok "random bytes get the connection closed"

h1=$(timeout 10 curl -sS --http1.1 -o /dev/null -w '%{http_code}' \
  "http://127.0.0.1:$P/echo.Echo/Say" 2>h1.log || true)
[ "$h1" = 200 ] && fail "an HTTP/1 request was answered on the h2 port"
exec 3<>"/dev/tcp/127.0.0.1/$P"
(printf 'POST /echo.Echo/Say HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}' >&3) 2>/dev/null || true
rc=0
timeout 10 cat <&3 >h1raw.out 2>/dev/null || rc=$?
exec 3<&-
[ "$rc" != 124 ] || fail "HTTP/1: the connection stayed open"
grep -q 'HTTP/1' h1raw.out && fail "HTTP/1 answered"
ok "an HTTP/1 request on the h2 port gets the connection closed"

bighdr=$(head -c 40000 /dev/zero | tr '\0' 'a')
rc=0
timeout 10 curl -sS --http2-prior-knowledge -H "x-big: $bighdr" --data-binary @body.json \
  -o hdr.out "http://127.0.0.1:$P/echo.Echo/Say" 2>hdr.log || rc=$?
[ "$rc" != 0 ] || fail "a 40 KB header was served"
ok "a 40 KB header is refused (curl exit $rc)"

# A connection that opened a stream stays usable by the server for others:
timeout 10 nghttp -d body.json "http://127.0.0.1:$P/echo.Echo/Say" >after.out 2>&1 ||
  fail "nghttp after the malformed input"
grep -qF '"echo"' after.out || fail "no answer after the malformed input"

kill -0 "$load" 2>/dev/null || fail "h2load ended before the malformed input was over"
wait "$load" || fail "h2load failed"
line=$(grep '^requests:' load.out) || fail "h2load: no summary"
total=$(echo "$line" | sed -n 's/^requests: \([0-9]*\) total.*/\1/p')
[ "${total:-0}" -gt 100 ] || fail "h2load: too few requests ($line)"
echo "$line" | grep -q " $total succeeded, 0 failed, 0 errored, 0 timeout" ||
  fail "h2load: not every request succeeded ($line)"
grep -q "status codes: $total 2xx" load.out || fail "h2load: not all 2xx"
ok "h2load: $total of $total succeeded alongside the malformed input"

kill -0 "${pids[0]}" 2>/dev/null || fail "the plaintext server died"
kill -0 "${pids[1]}" 2>/dev/null || fail "the TLS server died"
echo "all rpc interop checks passed"
