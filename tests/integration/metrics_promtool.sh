#!/usr/bin/env bash
# promtool judges libmesh's Prometheus exposition: it must parse, lint clean but for Linkerd's _ms names, and hold every series.
set -euo pipefail
tool=$(realpath "$1") # meson may pass a path relative to the build dir
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

fail() {
  echo "FAIL: $*"
  for f in *.out *.txt; do [ -f "$f" ] && { echo "--- $f"; head -c 20000 "$f"; }; done
  exit 1
}
ok() { echo "ok: $*"; }

command -v promtool >/dev/null || fail "promtool not found (Debian package 'prometheus': make test-deps)"
timeout 30 "$tool" >metrics.txt || fail "metrics_tool failed"
[ -s metrics.txt ] || fail "empty exposition"

# 1. Parse and lint. Exit 1 is a parse error; 3 is lint findings, which may
# only be the abbreviated-unit ones that Linkerd's own names earn.
set +e
timeout 30 promtool check metrics <metrics.txt >check.out 2>&1
rc=$?
set -e
[ $rc -eq 0 ] || [ $rc -eq 3 ] || fail "promtool check metrics exited $rc"
grep -q 'error while linting\|parsing error' check.out && fail "promtool could not parse the exposition"
unexpected=$(grep -vE '^(response_latency_ms|route_response_latency_ms|tcp_connection_duration_ms) metric names should not contain abbreviated units$' check.out || true)
[ -z "$unexpected" ] || fail "unexpected lint findings: $unexpected"
[ "$(grep -c . check.out)" -eq 3 ] || fail "expected the 3 _ms findings"
ok "promtool parses the exposition; lint findings are only Linkerd's _ms names"

# 2. Cardinality as promtool counts it: every series and histogram sample was
# read. The _ms names are renamed to base units so that the lint passes and --extended
# prints its table.
sed 's/_ms\([_{ ]\)/_seconds\1/g' metrics.txt >renamed.txt
timeout 30 promtool check metrics --extended <renamed.txt >extended.out 2>&1 || fail "promtool --extended failed"
expect_card() { # family cardinality
  local got
  got=$(awk -v m="$1" '$1 == m {print $2}' extended.out)
  [ "$got" = "$2" ] || fail "$1: cardinality '$got', want $2"
}
expect_card request_total 6
expect_card response_total 10
expect_card response_latency_seconds 140   # 5 series x (25 bounds + +Inf + _sum + _count)
expect_card route_request_total 3
expect_card route_response_total 3
expect_card route_response_latency_seconds 84
expect_card tcp_open_total 4                      # 3 peers under the limit + the overflow series
expect_card tcp_close_total 1
expect_card tcp_open_connections 1                # the removed endpoint is gone
expect_card tcp_read_bytes_total 1
expect_card tcp_write_bytes_total 1
expect_card tcp_connection_duration_seconds 28
for p in process_cpu_seconds_total process_resident_memory_bytes process_virtual_memory_bytes \
  process_open_fds process_max_fds process_start_time_seconds; do
  expect_card "$p" 1
done
expect_card Total 288
ok "promtool counts every family's series (288 samples)"

# 3. Values and escaping, as written.
has() { grep -qF -- "$1" metrics.txt || fail "missing: $1"; }
has 'authority="we\"ird\\host\nname:80"'
has 'authority="éxamen.日本.example:443"'
has 'rt_route="GET /api/v1/exams/{id}"'
has 'tcp_open_total{direction="inbound",peer="overflow",tls="true",client_id="",server_id=""} 7'
has 'tcp_open_connections{direction="outbound",peer="10.42.0.7:8080",tls="true",client_id="",server_id="web.emojivoto.serviceaccount.identity.linkerd.cluster.local"} 2'
grep -q '10.42.0.99' metrics.txt && fail "a removed series is still exposed"
# Observations 0 1 3 5 7 50 51 999 50000 70000: le is inclusive, buckets cumulative.
lat='response_latency_ms_bucket{direction="outbound",authority="web-svc.emojivoto.svc.cluster.local:80",target_addr="10.42.0.7:8080",tls="true",server_id="web.emojivoto.serviceaccount.identity.linkerd.cluster.local",client_id="",dst_namespace="emojivoto",dst_service="web-svc",status_code="200",le='
has "${lat}\"1\"} 2"
has "${lat}\"5\"} 4"
has "${lat}\"50\"} 6"
has "${lat}\"100\"} 7"
has "${lat}\"1000\"} 8"
has "${lat}\"50000\"} 9"
has "${lat}\"+Inf\"} 10"
has 'response_latency_ms_count{direction="outbound",authority="web-svc.emojivoto.svc.cluster.local:80",target_addr="10.42.0.7:8080",tls="true",server_id="web.emojivoto.serviceaccount.identity.linkerd.cluster.local",client_id="",dst_namespace="emojivoto",dst_service="web-svc",status_code="200"} 10'
has 'response_latency_ms_sum{direction="outbound",authority="web-svc.emojivoto.svc.cluster.local:80",target_addr="10.42.0.7:8080",tls="true",server_id="web.emojivoto.serviceaccount.identity.linkerd.cluster.local",client_id="",dst_namespace="emojivoto",dst_service="web-svc",status_code="200"} 121116'
ok "values, escaping and cumulative buckets as expected"

# 4. A broken exposition is refused: the check above can fail.
printf '# TYPE x counter\nx{a="b\\q"} 1\n' >broken.txt
if timeout 30 promtool check metrics <broken.txt >broken.out 2>&1; then
  fail "promtool accepted an invalid escape"
fi
ok "promtool refuses a malformed exposition"
