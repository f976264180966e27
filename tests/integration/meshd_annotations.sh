#!/usr/bin/env bash
# Integration: Linkerd's retry.linkerd.io / timeout.linkerd.io annotations on a Service in mesh-destination's store, applied by meshd: retries with backoff on a flaky backend, a request timeout, a ServiceProfile's precedence, a bad value refused with the last good state kept.
set -euo pipefail
meshd=$(realpath "$1") # meson may pass paths relative to the build dir
dest=$(realpath "$2")
pki=$(realpath "$3")
load=$(realpath "$4")
peers=$(realpath "$5")
. "$(dirname "$(realpath "$0")")/meshd_lib.sh"
now_ms() { echo $(($(date +%s%N) / 1000000)); }

"$pki" "$tmp" client default client >/dev/null
read -r P_APP P_DST P_DADM P_CADM P_FLAKY P_SLOW P_BOTH P_TRY <<<"$(timeout 20 "$PY" "$load" free-ports 8)"

timeout 60 "$PY" "$peers" backend "$P_APP" app >app.log 2>&1 &
pids+=($!)

mkdir store
service() { # NAME ANNOTATIONS (YAML lines, indented four)
  put "svc-$1.yaml" <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata:
  name: $1
  namespace: default
  annotations:
$2
spec:
  selector: {app: app}
  ports: [{name: http, port: 80, targetPort: http, protocol: http}]
EOF
}
flaky_ok='    retry.linkerd.io/http: 5xx
    retry.linkerd.io/limit: "3"'
service flaky "$flaky_ok"
service slow '    timeout.linkerd.io/request: 300ms'
service try '    retry.linkerd.io/timeout: 200ms
    retry.linkerd.io/limit: "2"
    timeout.linkerd.io/request: 5s'
# Annotations and a ServiceProfile on one Service: the profile's timeout wins (Linkerd's rule).
service both '    timeout.linkerd.io/request: 300ms'
put both-profile.yaml <<'EOF'
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: both.default.svc.cluster.local, namespace: default}
spec:
  routes: [{name: slow, condition: {pathRegex: '/slow/[0-9]+'}, timeout: 3s}]
EOF
put app.yaml <<EOF
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: app-1, namespace: default, labels: {app: app}}
spec: {address: 127.0.0.1, proxyPort: 0, adminPort: 0, ports: [{name: http, port: $P_APP}]}
EOF

timeout 60 "$dest" --store-dir store --listen "127.0.0.1:$P_DST" --admin "127.0.0.1:$P_DADM" \
  --debounce-ms 100 >dest.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_DADM/ready"
timeout 60 "$meshd" --identity-dir client --outbound-listen-addr "" --inbound-listen-addr "" \
  --admin-listen-addr "127.0.0.1:$P_CADM" --destination-addr "127.0.0.1:$P_DST" \
  --outbound-port-map "127.0.0.1:$P_FLAKY=flaky.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_SLOW=slow.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_BOTH=both.default.svc.cluster.local:80" \
  --outbound-port-map "127.0.0.1:$P_TRY=try.default.svc.cluster.local:80" \
  --log-level debug >client.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_CADM/ready"
wait_http "http://127.0.0.1:$P_APP/"

metrics() { curl -fsS -m 5 "http://127.0.0.1:$P_CADM/metrics"; }
msum() { metrics | { grep -E "$1" || true; } | awk '{s+=$NF} END {printf "%d\n", s}'; } # the samples whose line matches
get() { # PORT PATH: "status ms l5d-proxy-error"
  local t0 c
  t0=$(now_ms)
  c=$(curl -sS -m 10 -o /dev/null -D h.txt -w '%{http_code}' "http://127.0.0.1:$1$2" || true)
  echo "$c $(($(now_ms) - t0)) $(tr -d '\r' <h.txt | awk 'tolower($0) ~ /^l5d-proxy-error: / { sub(/^[^:]*: /, ""); print }')"
}
# batch PORT PATH N: N requests, 20 at a time, one status a line ("ERR": no answer)
batch() {
  timeout 30 "$PY" - "$1" "$2" "$3" <<'EOF'
import sys, urllib.request, urllib.error
from concurrent.futures import ThreadPoolExecutor
port, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def get(i):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            r.read()
            return str(r.status)
    except urllib.error.HTTPError as e:
        return str(e.code)
    except Exception:
        return "ERR"
with ThreadPoolExecutor(20) as ex:
    for line in ex.map(get, range(n)):
        print(line)
EOF
}
F='dst="flaky.default.svc.cluster.local:80"'

# ---- retries from annotations: a backend failing 20% answers >= 99% ---------------------------
# Four attempts fail together 0.2^4 = 0.16% of the time: 99% holds with a wide margin (at 30%
# the expected 0.8% would sit too near the bar for a stable test).
read -r c _ <<<"$(get "$P_FLAKY" /)"
[ "$c" = 200 ] || fail "the first request through an annotated Service: $c"
batch "$P_FLAKY" /flaky/20 400 >flaky.txt
okn=$(grep -c '^200$' flaky.txt || true)
[ "$okn" -ge 396 ] || fail "with retry.linkerd.io/http 5xx and limit 3: $okn of 400 succeeded ($(sort flaky.txt | uniq -c | tr -s ' \n' ' '))"
retried=$(msum "^route_retryable_total\{direction=\"outbound\",$F,rt_route=\"\[DEFAULT\]\",skipped=\"\"\}")
sent=$(msum "^route_actual_request_total\{direction=\"outbound\",$F,")
asked=$(msum "^route_request_total\{direction=\"outbound\",$F,")
[ "$retried" -ge 40 ] && [ "$sent" -ge $((asked + 40)) ] ||
  fail "retries not visible: retried $retried, sent $sent for $asked requests: $(metrics | grep -E '^route_(retryable|actual_request)_total')"
# No budget is consulted: a limit of 3 retries, never skipped for want of one.
[ "$(msum "^route_retryable_total\{direction=\"outbound\",$F,.*skipped=\"no_budget\"")" = 0 ] ||
  fail "annotation retries were held to a retry budget"
ok "retry.linkerd.io/http 5xx, limit 3: $okn of 400 succeeded through a 20%-failing backend; $retried retries ($sent attempts for $asked requests)"

# ---- timeout.linkerd.io/request: the whole exchange is cut -----------------------------------
read -r c ms e <<<"$(get "$P_SLOW" /slow/2000)"
[ "$c" = 504 ] && [[ "$e" == request_timeout* ]] || fail "timeout.linkerd.io/request 300ms on /slow/2000: $c $e"
[ "$ms" -ge 250 ] && [ "$ms" -le 1500 ] || fail "the request timeout cut after $ms ms, not about 300"
read -r c _ <<<"$(get "$P_SLOW" /slow/50)"
[ "$c" = 200 ] || fail "a request within the request timeout: $c"
ok "timeout.linkerd.io/request 300ms: /slow/2000 answered 504 request_timeout after $ms ms; /slow/50 200"

# ---- retry.linkerd.io/timeout: each attempt cut and retried, up to the limit -------------------
read -r c ms e <<<"$(get "$P_TRY" /slow/3000)"
[ "$c" = 504 ] && [[ "$e" == response_timeout*"no retry is left"* ]] ||
  fail "three attempts of 200 ms at /slow/3000: $c $e"
[ "$ms" -ge 550 ] && [ "$ms" -le 2500 ] || fail "three 200 ms attempts took $ms ms"
T='dst="try.default.svc.cluster.local:80"'
[ "$(msum "^route_actual_request_total\{direction=\"outbound\",$T,")" = 3 ] &&
  [ "$(msum "^route_retryable_total\{direction=\"outbound\",$T,.*skipped=\"\"")" = 2 ] &&
  [ "$(msum "^route_retryable_total\{direction=\"outbound\",$T,.*skipped=\"attempts\"")" = 1 ] ||
  fail "per-attempt timeouts: $(metrics | grep -E "^route_(retryable|actual_request)_total.*$T")"
read -r c _ <<<"$(get "$P_TRY" /slow/20)"
[ "$c" = 200 ] || fail "an attempt within retry.linkerd.io/timeout: $c"
ok "retry.linkerd.io/timeout 200ms, limit 2: /slow/3000 tried 3 times, then 504 after $ms ms"

# ---- a ServiceProfile wins over annotations -------------------------------------------------
read -r c ms e <<<"$(get "$P_BOTH" /slow/600)"
[ "$c" = 200 ] || fail "a Service with a ServiceProfile used its annotations: $c $e after $ms ms"
ok "with a ServiceProfile too, its 3 s route timeout applies, not the annotation's 300 ms ($ms ms)"

# ---- a bad annotation: refused with its place, the last good state kept ---------------------
service flaky '    retry.linkerd.io/http: 5xx
    retry.linkerd.io/limit: "lots"'
for i in $(seq 60); do
  grep -q 'change refused' dest.log && break
  [ "$i" = 60 ] && fail "mesh-destination did not refuse the bad annotation"
  sleep 0.05
done
grep 'change refused' dest.log | grep -q 'svc-flaky.yaml:8.*retry.linkerd.io/limit.*lots' ||
  fail "the refusal does not say where and what: $(grep 'change refused' dest.log)"
sleep 0.3
# The last good annotations still apply: without retries a fifth of these would fail.
batch "$P_FLAKY" /flaky/20 100 >flaky2.txt
okn=$(grep -c '^200$' flaky2.txt || true)
[ "$okn" -ge 98 ] || fail "after a refused edit the retries stopped: $okn of 100"
ok "retry.linkerd.io/limit \"lots\" refused at svc-flaky.yaml:8; the last good annotations keep retrying ($okn of 100)"

# Fixed again, then removed: the Service goes back to no retries at all.
service flaky "$flaky_ok"
put svc-flaky.yaml <<'EOF'
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: flaky, namespace: default}
spec:
  selector: {app: app}
  ports: [{name: http, port: 80, targetPort: http, protocol: http}]
EOF
for i in $(seq 60); do
  batch "$P_FLAKY" /flaky/50 40 >flaky3.txt
  grep -q '^500$' flaky3.txt && break
  [ "$i" = 60 ] && fail "with the annotations removed, failures are still retried away"
  sleep 0.1
done
ok "annotations removed from the Service: failures reach the caller again"
