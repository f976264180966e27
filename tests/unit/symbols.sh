#!/usr/bin/env bash
# The ABI check: MESH_API declarations, libmesh.map and libmesh.so's exports must agree.
set -euo pipefail
lib=$1 map=$2 incdir=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Functions declared MESH_API in the public headers (declarations may wrap lines).
grep -hv '^#' "$incdir"/mesh/*.h | tr '\n' ' ' | grep -oE 'MESH_API [^;(]*\(' |
  sed -E 's/.*[ *]([a-z_][a-z0-9_]*)\($/\1/' | sort -u >"$tmp/headers"
# Names listed under global: in the version script.
sed -n '/global:/,/local:/p' "$map" | grep -oE '^\s*mesh_[a-z0-9_]+;' | tr -d ' ;' | sort -u >"$tmp/map"
# Symbols the shared library really exports.
nm -D --defined-only "$lib" | awk '$2 ~ /[TDBRW]/ {print $3}' | sed 's/@.*//' | grep -v '^LIBMESH_' | sort -u >"$tmp/exports"

status=0
report() { # $1 $2: names in file $1 missing from file $2, with a message
  local missing
  missing=$(comm -23 "$tmp/$1" "$tmp/$2")
  if [ -n "$missing" ]; then
    echo "in $1 but not in $2:"; echo "$missing" | sed 's/^/  /'
    status=1
  fi
}
report headers map; report map headers; report map exports; report exports map
n=$(wc -l <"$tmp/exports")
[ "$n" -gt 0 ] || { echo "no symbols exported at all"; exit 1; }
[ $status -eq 0 ] && echo "ok: $n symbols agree across headers, libmesh.map and libmesh.so"
exit $status
