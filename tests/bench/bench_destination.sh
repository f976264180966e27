#!/usr/bin/env bash
# mesh-destination with 10,000 endpoints and 1,000 profiles in its directory and 500 watch streams: fan-out latency, RSS, CPU.
# usage: bench_destination.sh MESH_DESTINATION BENCH_DESTINATION [STREAMS] [ROUNDS]
set -euo pipefail
daemon=$(realpath "$1")
driver=$(realpath "$2")
streams=${3:-500}
rounds=${4:-10}
tmp=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
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

rss() { awk '/^VmRSS/ {print $2 / 1024 " MB"}' "/proc/$pid/status"; }
hwm() { awk '/^VmHWM/ {print $2 / 1024 " MB"}' "/proc/$pid/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

# Two shapes: 500 proxies watching 500 services and one file touching all of
# them (500 Workloads), and 500 proxies watching one service that gains one
# Workload. Each with no debounce (the daemon's own work) and the default 100 ms.
for shape in "1000 500-services" "1 one-service"; do
  set -- $shape
  for debounce in 0 100; do
    : >daemon.log
    t0=$(date +%s%N)
    "$daemon" --store-dir store --listen 127.0.0.1:0 --admin 127.0.0.1:0 --debounce-ms "$debounce" \
      2>daemon.log &
    pid=$!
    for _ in $(seq 200); do grep -q "admin .* listening" daemon.log && break; sleep 0.05; done
    port=$(sed -n 's/.*Destination .* listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' daemon.log)
    [ -n "$port" ] || { echo "mesh-destination did not start"; cat daemon.log; exit 1; }
    echo "== $streams streams, $2, --debounce-ms $debounce (store: 1,000 services, 10,000 endpoints, 1,000 profiles)"
    echo "start to serving: $((($(date +%s%N) - t0) / 1000000)) ms; RSS idle $(rss)"
    c0=$(cpu_ticks)
    "$driver" "127.0.0.1:$port" "$streams" "$1" store/bench.yaml "$rounds"
    c1=$(cpu_ticks)
    hz=$(getconf CLK_TCK)
    echo "RSS with $streams streams $(rss) (peak $(hwm)); CPU during the run $(((c1 - c0) * 1000 / hz)) ms"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
    rm -f store/bench.yaml
  done
done
