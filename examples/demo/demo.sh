#!/usr/bin/env bash
# `make demo`: the seed's EdTech manifests through libmesh — validated by
# meshctl, then explained (routes, budgets, splits) by the same logic the
# proxy runs, called in-process from Python.
set -euo pipefail
build=${1:-build}
cd "$(dirname "$0")/../.."
manifests=tests/data/seed
meshctl=$build/daemons/meshctl/meshctl

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. meshctl validate -f $manifests/"
"$meshctl" validate -f "$manifests"

say "2. what the mesh does with them (Python, proxyless: examples/demo/explain.py)"
MESH_LIBRARY=$build/libmesh/libmesh.so PYTHONPATH=bindings/python \
  python3 examples/demo/explain.py "$manifests"

say "3. one request from C (examples/route_check.c)"
"$build/examples/route-check" "$manifests/exam-api-profile.yaml" GET /api/v1/exams/42/questions 503

cat <<TXT

Look further:
  $meshctl validate -f FILE -o json       diagnostics as JSON
  $meshctl profile --template NAME        a ServiceProfile to start from
  $meshctl profile --open-api SPEC NAME   a ServiceProfile from an OpenAPI spec
  $meshctl identity init --dir DIR        a trust anchor, an issuer and a token key
  $build/daemons/mesh-identity/mesh-identity --dir DIR   the certificate authority (doc/protocol.md)
  $build/daemons/meshd/meshd --help        the proxy (doc/meshd.md)
  README.md, doc/                          the library, the API, the benchmarks
TXT
