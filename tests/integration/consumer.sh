#!/usr/bin/env bash
# A consumer builds against an installed libmesh with pkg-config alone, and runs.
set -euo pipefail
build=$1 src=$2 cc=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >/dev/null
pc=$(dirname "$(find "$tmp/root" -name libmesh.pc | head -1)")
[ -f "$pc/libmesh.pc" ] || { echo "libmesh.pc was not installed"; exit 1; }
export PKG_CONFIG_PATH=$pc PKG_CONFIG_SYSROOT_DIR=$tmp/root
flags=$(pkg-config --cflags --libs libmesh)
"$cc" -o "$tmp/route-check" "$src/examples/route_check.c" $flags
libdir=$(dirname "$(find "$tmp/root" -name 'libmesh.so.0' | head -1)")
out=$(LD_LIBRARY_PATH=$libdir "$tmp/route-check" "$src/tests/data/seed/exam-api-profile.yaml" GET /api/v1/exams/7/questions 503)
echo "$out"
expected='production/exam-api: GET /api/v1/exams/7/questions -> get_exam_questions (timeout 5000ms); 503 is a failure'
[ "$out" = "$expected" ] || { echo "expected: $expected"; exit 1; }
# The installed binary must use the installed library, not the build tree's.
LD_LIBRARY_PATH=$libdir ldd "$tmp/route-check" | grep "$libdir/libmesh.so.0" >/dev/null
echo "ok: consumer built with pkg-config and ran"
