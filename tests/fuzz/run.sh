#!/usr/bin/env bash
# Runs one libFuzzer target for MESH_FUZZ_SECONDS over a scratch copy of its corpus.
set -euo pipefail
target=$1; shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for dir in "$@"; do cp -r "$dir"/. "$work"/ 2>/dev/null || true; done
"$target" -max_total_time="${MESH_FUZZ_SECONDS:-60}" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
  -error_exitcode=1 -timeout_exitcode=1 \
  -print_final_stats=1 "$work"
