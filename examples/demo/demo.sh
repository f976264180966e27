#!/usr/bin/env bash
# `make demo`: the seed's EdTech platform as a running mesh on loopback. A
# trust anchor and issuer, the control plane (mesh-identity, mesh-destination,
# mesh-viz), and each service as a small real application behind its own meshd
# with its own identity; the seed's manifests applied as written; bounded
# traffic; then what the mesh saw, from the proxies' own metrics.
#
#   demo.sh [BUILD]          start (after stopping a previous run) and report
#   demo.sh down             stop every process a run started, remove its files
#
# Settings (environment): DEMO_DIR (.demo), DEMO_NET (127.0.2: workload i
# gets DEMO_NET.i), DEMO_CP (127.0.0.1: the control plane's address) and its
# ports DEMO_IDENTITY_PORT (8083), DEMO_IDENTITY_ADMIN (9990),
# DEMO_DESTINATION_PORT (8086), DEMO_DESTINATION_ADMIN (9996), DEMO_VIZ_PORT
# (8085); DEMO_RATE (requests a second per driver target, 5), DEMO_WARMUP
# (seconds of traffic before the report, 20), DEMO_SECONDS (how long the
# drivers run, 600) and DEMO_LIFETIME (when every process stops by itself, 1800).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
DEMO_DIR=${DEMO_DIR:-.demo}
DEMO_NET=${DEMO_NET:-127.0.2}
DEMO_CP=${DEMO_CP:-127.0.0.1}
DEMO_IDENTITY_PORT=${DEMO_IDENTITY_PORT:-8083}
DEMO_IDENTITY_ADMIN=${DEMO_IDENTITY_ADMIN:-9990}
DEMO_DESTINATION_PORT=${DEMO_DESTINATION_PORT:-8086}
DEMO_DESTINATION_ADMIN=${DEMO_DESTINATION_ADMIN:-9996}
DEMO_VIZ_PORT=${DEMO_VIZ_PORT:-8085}
DEMO_RATE=${DEMO_RATE:-5}
DEMO_WARMUP=${DEMO_WARMUP:-20}
DEMO_SECONDS=${DEMO_SECONDS:-600}
DEMO_LIFETIME=${DEMO_LIFETIME:-1800}
PY=/usr/bin/python3 # Debian's: it has python3-grpcio

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

# ---- down: every process a run started is in DEMO_DIR/pids -----------------------
down() {
  [ -d "$DEMO_DIR" ] || return 0
  if [ -f "$DEMO_DIR/pids" ]; then
    local pids
    pids=$(cat "$DEMO_DIR/pids")
    kill $pids 2>/dev/null || true
    for _ in $(seq 50); do kill -0 $pids 2>/dev/null || break; sleep 0.1; done
    kill -KILL $pids 2>/dev/null || true
  fi
  rm -rf "$DEMO_DIR"
}
if [ "${1:-}" = down ]; then
  down
  echo "demo: stopped, and $DEMO_DIR removed"
  exit 0
fi
build=$(realpath "${1:-build}")
meshctl=$build/daemons/meshctl/meshctl
for b in "$meshctl" "$build/daemons/meshd/meshd" "$build/daemons/mesh-identity/mesh-identity" \
  "$build/daemons/mesh-destination/mesh-destination" "$build/daemons/mesh-viz/mesh-viz"; do
  [ -x "$b" ] || die "$b is missing: build first (make build)"
done
"$PY" -c 'import grpc' 2>/dev/null || die "$PY cannot import grpc: apt-get install python3-grpcio"

# ---- the workloads: NAME NAMESPACE SERVICE_ACCOUNT PORT(name:protocol) DEPENDENCIES ----
# A dependency NAME=AUTHORITY becomes an outbound listener of the workload's meshd.
# Drivers (traffic, crawler) only call; crawler's identity is one the policy denies.
WORKLOADS=(
  "traffic production traffic - frontend=frontend.production:80 mobile-api=mobile-api.production:80"
  "crawler production crawler - exam-api=exam-api.production:80"
  "frontend production frontend http:http exam-api=exam-api.production:80 learning-module=learning-module.default:80 user-service=user-service.production:80"
  "mobile-api production mobile-api-service http:http exam-api=exam-api.production:80 user-service=user-service.production:80"
  "exam-api production exam-api http:http exam-service=exam-service.production:80"
  "exam-service-stable production exam-service http:http payment-service=payment-service.production:50051"
  "exam-service-canary production exam-service http:http payment-service=payment-service.production:50051"
  "user-service production user-service http:http"
  "payment-service production payment-service grpc:grpc"
  "learning-module-v1 default learning-module http:http"
  "learning-module-v2 default learning-module http:http"
)
APP_PORT=8080 INBOUND_PORT=4143 ADMIN_PORT=4191 FIRST_OUT_PORT=7001

# ---- ports: checked before anything starts ------------------------------------------
listening() { ss -Hltn "src $1 and sport = :$2" 2>/dev/null | grep -q .; }
check_ports() {
  local busy=() i=0 w
  for a in "$DEMO_IDENTITY_PORT:DEMO_IDENTITY_PORT" "$DEMO_IDENTITY_ADMIN:DEMO_IDENTITY_ADMIN" \
    "$DEMO_DESTINATION_PORT:DEMO_DESTINATION_PORT" "$DEMO_DESTINATION_ADMIN:DEMO_DESTINATION_ADMIN" \
    "$DEMO_VIZ_PORT:DEMO_VIZ_PORT"; do
    # 0.0.0.0 too: a wildcard listener on the port takes it from us
    listening "$DEMO_CP" "${a%%:*}" || listening 0.0.0.0 "${a%%:*}" && busy+=("$DEMO_CP:${a%%:*} (set ${a#*:})")
  done
  for w in "${WORKLOADS[@]}"; do
    i=$((i + 1))
    local deps n
    read -r _ _ _ _ deps <<<"$w"
    n=$(wc -w <<<"$deps") # the outbound listeners, one a dependency
    for p in $APP_PORT $INBOUND_PORT $ADMIN_PORT $(seq $FIRST_OUT_PORT $((FIRST_OUT_PORT + n - 1))); do
      listening "$DEMO_NET.$i" "$p" && busy+=("$DEMO_NET.$i:$p (set DEMO_NET)")
    done
  done
  [ ${#busy[@]} -eq 0 ] || die "these ports are taken: ${busy[*]}"
}

down # a previous run, if any: running the demo twice in a row works
check_ports
mkdir -p "$DEMO_DIR"/{logs,tokens,store}
DEMO_DIR=$(realpath "$DEMO_DIR")
trap 'echo; echo "demo: interrupted, stopping"; down; exit 130' INT TERM
# Every process is started with setsid (a closed terminal does not stop it)
# under a lifetime, and is remembered for `down`.
start() { # LOG CMD...
  local log=$1
  shift
  setsid timeout "$DEMO_LIFETIME" "$@" >"$DEMO_DIR/logs/$log.log" 2>&1 &
  echo $! >>"$DEMO_DIR/pids"
}
wait_ready() { # URL WHAT
  for _ in $(seq 200); do curl -fsS -m 1 "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
  die "$2 did not become ready ($1); its log is in $DEMO_DIR/logs"
}

say "1. the trust anchor and the issuer (meshctl identity init, as the seed's step commands)"
"$meshctl" identity init --dir "$DEMO_DIR/identity" | sed 's/^/   /'

say "2. the manifests: the seed's, as written, plus the demo's services and workloads"
store=$DEMO_DIR/store
for f in exam-api-profile.yaml user-service-profile.yaml traffic-splits.yaml exam-api-policy.yaml; do
  cp "tests/data/seed/$f" "$store/"
done
cp examples/demo/manifests/*.yaml "$store/"
{ # One Service per workload (selecting app=NAME) and the Workloads themselves.
  i=0
  for w in "${WORKLOADS[@]}"; do
    read -r name ns sa port _ <<<"$w"
    i=$((i + 1))
    if [ "$port" != - ]; then
      svc_port=80
      [ "${port#*:}" = grpc ] && svc_port=50051
      cat <<EOF
---
apiVersion: mesh.libmesh.io/v1alpha1
kind: Service
metadata: {name: $name, namespace: $ns}
spec:
  selector: {app: $name}
  ports: [{name: ${port%%:*}, port: $svc_port, targetPort: ${port%%:*}, protocol: ${port#*:}}]
EOF
    fi
    cat <<EOF
---
apiVersion: mesh.libmesh.io/v1alpha1
kind: Workload
metadata: {name: $name, namespace: $ns, labels: {app: $name}}
spec:
  serviceAccount: $sa
  address: $DEMO_NET.$i
  proxyPort: $INBOUND_PORT
  adminPort: $ADMIN_PORT
  ports: [$([ "$port" = - ] || echo "{name: ${port%%:*}, port: $APP_PORT}")]
EOF
  done
} >"$store/workloads.yaml"
"$meshctl" validate -f "$store" >"$DEMO_DIR/logs/validate.log" 2>&1 ||
  die "the manifests do not validate: $DEMO_DIR/logs/validate.log"
echo "   $(ls "$store" | wc -l) files in $store, all valid ($(grep -c warning "$DEMO_DIR/logs/validate.log") warnings, such as the seed's per-route retryBudget: logs/validate.log)"

say "3. the control plane: mesh-identity, mesh-destination, mesh-viz"
start mesh-identity "$build/daemons/mesh-identity/mesh-identity" --dir "$DEMO_DIR/identity" \
  --listen "$DEMO_CP:$DEMO_IDENTITY_PORT" --admin "$DEMO_CP:$DEMO_IDENTITY_ADMIN"
start mesh-destination "$build/daemons/mesh-destination/mesh-destination" --store-dir "$store" \
  --listen "$DEMO_CP:$DEMO_DESTINATION_PORT" --admin "$DEMO_CP:$DEMO_DESTINATION_ADMIN"
start mesh-viz "$build/daemons/mesh-viz/mesh-viz" --store-dir "$store" \
  --listen "$DEMO_CP:$DEMO_VIZ_PORT" --scrape-interval 2s
wait_ready "http://$DEMO_CP:$DEMO_IDENTITY_ADMIN/ready" mesh-identity
wait_ready "http://$DEMO_CP:$DEMO_DESTINATION_ADMIN/ready" mesh-destination
wait_ready "http://$DEMO_CP:$DEMO_VIZ_PORT/ready" mesh-viz
echo "   identity $DEMO_CP:$DEMO_IDENTITY_PORT, destination $DEMO_CP:$DEMO_DESTINATION_PORT, viz $DEMO_CP:$DEMO_VIZ_PORT"

say "4. the services, each behind its own meshd with its own identity"
i=0
proxies=()
for w in "${WORKLOADS[@]}"; do
  read -r name ns sa port deps <<<"$w"
  i=$((i + 1))
  addr=$DEMO_NET.$i
  # The workload's token, as Kubernetes projects a service-account token; meshd
  # trades it with a CSR for its certificate and keeps the key in memory.
  "$meshctl" identity token --ns "$ns" --sa "$sa" --key "$DEMO_DIR/identity/token.key" \
    --ttl 24h >"$DEMO_DIR/tokens/$name"
  maps=() app_deps=() out=$FIRST_OUT_PORT
  for d in $deps; do
    maps+=(--outbound-port-map "$addr:$out=${d#*=}")
    app_deps+=("${d%%=*}=$addr:$out")
    out=$((out + 1))
  done
  inbound=$addr:$INBOUND_PORT
  [ "$port" = - ] && inbound=""
  # Identity from mesh-identity; endpoints, profiles and inbound policy
  # from mesh-destination (the policy of the Workload it names).
  start "$name-proxy" "$build/daemons/meshd/meshd" \
    --workload-namespace "$ns" --workload-name "$name" --service-account "$sa" \
    --identity-addr "$DEMO_CP:$DEMO_IDENTITY_PORT" --identity-token-file "$DEMO_DIR/tokens/$name" \
    --anchors "$DEMO_DIR/identity/ca.crt" --destination-addr "$DEMO_CP:$DEMO_DESTINATION_PORT" \
    --inbound-listen-addr "$inbound" --inbound-forward-ip "$addr" --outbound-listen-addr "" \
    --admin-listen-addr "$addr:$ADMIN_PORT" "${maps[@]}"
  proxies+=(--proxy "$addr:$ADMIN_PORT")
  case $name in
  traffic | crawler) ;; # drivers start once every proxy is ready
  *) start "$name" "$PY" examples/demo/app.py "$name" "$addr:$APP_PORT" "${app_deps[@]}" ;;
  esac
  printf '   %-20s %-11s %s\n' "$name" "$addr" "$sa.$ns.serviceaccount.identity.linkerd.cluster.local"
done
i=0
for w in "${WORKLOADS[@]}"; do
  i=$((i + 1))
  wait_ready "http://$DEMO_NET.$i:$ADMIN_PORT/ready" "the meshd of ${w%% *}"
done

say "5. traffic for ${DEMO_WARMUP}s: frontend and mobile-api called, the crawler refused by policy"
start traffic "$PY" examples/demo/app.py driver "$DEMO_SECONDS" "$DEMO_RATE" "$DEMO_DIR/traffic.json" \
  "frontend=$DEMO_NET.1:$FIRST_OUT_PORT/" "mobile-api=$DEMO_NET.1:$((FIRST_OUT_PORT + 1))/"
start crawler "$PY" examples/demo/app.py driver "$DEMO_SECONDS" 1 "$DEMO_DIR/crawler.json" \
  "exam-api=$DEMO_NET.2:$FIRST_OUT_PORT/api/v1/exams/7/questions"
sleep "$DEMO_WARMUP"

say "meshctl check"
"$meshctl" check --identity-addr "$DEMO_CP:$DEMO_IDENTITY_ADMIN" \
  --destination-addr "$DEMO_CP:$DEMO_DESTINATION_ADMIN" --identity-dir "$DEMO_DIR/identity" \
  --store-dir "$store" "${proxies[@]}" || true
viz() { # SUBCOMMAND ARGS...
  local sub=$1
  shift
  echo "\$ meshctl viz $sub $*"
  "$meshctl" viz "$sub" --viz-addr "$DEMO_CP:$DEMO_VIZ_PORT" "$@" || true
  echo
}
say "golden metrics (meshctl viz; -t is the window)"
viz stat deploy -n production -t 30s
viz stat deploy -n default -t 30s
viz stat ts -A -t 30s
viz routes deploy/frontend --to svc/exam-api -n production -t 30s
viz routes deploy/exam-api -n production -t 30s
viz routes deploy/frontend --to svc/learning-module --to-namespace default -n production -t 30s -o wide
viz edges deploy -A

cat <<TXT

The mesh keeps running (traffic for ${DEMO_SECONDS}s; every process stops by
itself after ${DEMO_LIFETIME}s). Look further:
  $meshctl viz stat deploy -n production --viz-addr $DEMO_CP:$DEMO_VIZ_PORT
  $meshctl viz routes deploy/mobile-api --to svc/user-service -n production --viz-addr $DEMO_CP:$DEMO_VIZ_PORT
  $meshctl get svc -A --store-dir $store
  $meshctl diagnostics endpoints exam-service-stable.production:80 --destination-addr $DEMO_CP:$DEMO_DESTINATION_PORT
  curl -s http://$DEMO_NET.5:$ADMIN_PORT/metrics     exam-api's proxy, in Prometheus' format
  edit $store/traffic-splits.yaml                 weights move within a second
  logs: $DEMO_DIR/logs
Stop it: make demo-down
TXT
