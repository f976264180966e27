#!/usr/bin/env bash
# mesh-destination with 10,000 endpoints and 1,000 profiles in its store and 500 watch streams: fan-out latency, RSS, CPU.
# The store is a directory, or the same manifests as keys in a one-member etcd on loopback (Debian's etcd-server).
# usage: bench_destination.sh MESH_DESTINATION BENCH_DESTINATION [STREAMS] [ROUNDS] [STORES]
#   STORES: "dir", "etcd" or "dir etcd" (the default: both in one run, so that their figures compare)
set -euo pipefail
daemon=$(realpath "$1")
driver=$(realpath "$2")
streams=${3:-500}
rounds=${4:-10}
stores=${5:-dir etcd}
prefix=/libmesh/
tmp=$(mktemp -d)
pid=
etcd_pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"
mkdir store
# 1,000 Services in 10 namespaces, 10 Workloads each, and a ServiceProfile each.
python3 - <<'EOF'
svc, wl, prof = [], [], []
for i in range(1000):
    ns = "ns%d" % (i % 10)
    svc.append("apiVersion: mesh.libmesh.io/v1alpha1\nkind: Service\n"
               "metadata: {name: s%d, namespace: %s}\n"
               "spec: {selector: {app: s%d}, ports: [{port: 80, targetPort: 8080}]}\n" % (i, ns, i))
    prof.append("apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\n"
                "metadata: {name: s%d.%s.svc.cluster.local, namespace: %s}\n"
                "spec: {routes: [{name: get, condition: {method: GET, pathRegex: '/items/[^/]*'},"
                " isRetryable: true, timeout: 2s}]}\n" % (i, ns, ns))
for j in range(10000):
    i = j % 1000
    wl.append("apiVersion: mesh.libmesh.io/v1alpha1\nkind: Workload\n"
              "metadata: {name: w%d, namespace: ns%d, labels: {app: s%d}}\n"
              "spec: {serviceAccount: s%d, address: 10.%d.%d.%d}\n" % (j, i % 10, i, i, j // 65536, (j // 256) % 256, j % 256))
# One file a namespace's workloads: a manifest file holds at most 200,000 nodes.
files = [("services.yaml", svc), ("profiles.yaml", prof)]
files += [("workloads-%d.yaml" % n, wl[n * 1000:(n + 1) * 1000]) for n in range(10)]
for name, docs in files:
    open("store/" + name, "w").write("---\n".join(docs))
EOF

rss() { awk '/^VmRSS/ {print $2 / 1024 " MB"}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM/ {print $2 / 1024 " MB"}' "/proc/$1/status"; }
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print int(($14 + $15) * 1000 / hz)}' "/proc/$1/stat"; }

# etcd's JSON gateway: POST a JSON body to /v3/kv/PATH; keys and values in base64.
etcd_kv() { curl -sf -X POST --data-binary @- "$etcd_url/v3/kv/$1" >/dev/null; }
b64() { printf %s "$1" | base64 -w0; }
# A range read of the key "\0": any answer is a member that serves.
etcd_up() { echo '{"key":"AA=="}' | etcd_kv range; }

# One member: the benchmark measures delivery, not replication. Its data
# directory is under $tmp, removed on exit; fsync as etcd does by default.
start_etcd() {
  local cport pport
  read -r cport pport < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
for s in ss: s.close()')
  etcd_url=http://127.0.0.1:$cport
  "$etcd" --name bench --data-dir "$tmp/etcd" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "bench=http://127.0.0.1:$pport" >etcd.log 2>&1 &
  etcd_pid=$!
  for _ in $(seq 200); do etcd_up && break; sleep 0.05; done
  etcd_up || { echo "etcd did not start"; tail -5 etcd.log; exit 1; }
  # The files, each the value of a key named after it (doc/etcd.md "Key layout").
  local keys=0
  for f in store/*.yaml; do
    printf '{"key":"%s","value":"%s"}' "$(b64 "$prefix${f#store/}")" "$(base64 -w0 "$f")" | etcd_kv put
    keys=$((keys + 1))
  done
  echo "etcd $($etcd --version | sed -n 's/^etcd Version: //p'), one member; ${prefix}*: $keys keys," \
    "$(cat store/*.yaml | wc -c) bytes; RSS $(rss "$etcd_pid")"
}

# Two shapes: 500 proxies watching 500 services and one change touching all
# of them (500 Workloads in one file or key), and 500 proxies watching one
# service that gains one Workload. Each with no debounce (the daemon's own
# work) and the default 100 ms.
run_shapes() { # STORE
  local store=$1 store_args etcd_opt change services label debounce
  if [ "$store" = etcd ]; then
    store_args=(--etcd-endpoints "$etcd_url" --etcd-prefix "$prefix")
    etcd_opt=(--etcd "$etcd_url")
    change=${prefix}bench.yaml
  else
    store_args=(--store-dir store)
    etcd_opt=()
    change=store/bench.yaml
  fi
  for shape in "1000 500-services" "1 one-service"; do
    read -r services label <<<"$shape"
    for debounce in 0 100; do
      : >daemon.log
      t0=$(date +%s%N)
      "$daemon" "${store_args[@]}" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --debounce-ms "$debounce" \
        2>daemon.log &
      pid=$!
      for _ in $(seq 200); do grep -q "admin .* listening" daemon.log && break; sleep 0.05; done
      port=$(sed -n 's/.*Destination .* listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' daemon.log)
      admin=$(sed -n 's/.*admin .* listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' daemon.log)
      [ -n "$port" ] && [ -n "$admin" ] || { echo "mesh-destination did not start"; cat daemon.log; exit 1; }
      # Serving once /ready says so: from etcd, the first state is read after the listeners open.
      for _ in $(seq 500); do curl -sf "http://127.0.0.1:$admin/ready" >/dev/null && break; sleep 0.01; done
      curl -sf "http://127.0.0.1:$admin/ready" >/dev/null || { echo "mesh-destination not ready"; cat daemon.log; exit 1; }
      echo "== $store store, $streams streams, $label, --debounce-ms $debounce (1,000 services, 10,000 endpoints, 1,000 profiles)"
      echo "start to serving: $((($(date +%s%N) - t0) / 1000000)) ms; RSS idle $(rss "$pid")"
      c0=$(cpu_ms "$pid")
      if [ -n "$etcd_pid" ]; then e0=$(cpu_ms "$etcd_pid"); fi
      "$driver" "${etcd_opt[@]}" "127.0.0.1:$port" "$streams" "$services" "$change" "$rounds"
      echo "RSS with $streams streams $(rss "$pid") (peak $(hwm "$pid")); CPU during the run $(($(cpu_ms "$pid") - c0)) ms"
      if [ -n "$etcd_pid" ]; then
        echo "etcd: RSS $(rss "$etcd_pid") (peak $(hwm "$etcd_pid")); CPU during the run $(($(cpu_ms "$etcd_pid") - e0)) ms"
      fi
      kill "$pid"
      wait "$pid" 2>/dev/null || true
      pid=
      # The next run starts from the same manifests again.
      if [ "$store" = etcd ]; then printf '{"key":"%s"}' "$(b64 "$change")" | etcd_kv deleterange
      else rm -f "$change"; fi
    done
  done
}

etcd=$(command -v etcd || true)
for store in $stores; do
  case $store in
  dir) run_shapes dir ;;
  etcd)
    if [ -z "$etcd" ]; then echo "== etcd store: skipped, no etcd on PATH (Debian: etcd-server)"; continue; fi
    start_etcd
    run_shapes etcd
    kill "$etcd_pid"
    wait "$etcd_pid" 2>/dev/null || true
    etcd_pid=
    ;;
  *) echo "unknown store '$store': dir or etcd"; exit 2 ;;
  esac
done
