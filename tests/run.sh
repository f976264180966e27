#!/usr/bin/env bash
# `make test`: every suite in the normal build, the unit suite again under
# ASan+UBSan, each fuzzer for a bounded time; then one honest count.
set -uo pipefail
build=$1 asan=$2 fuzz=$3 fuzz_seconds=$4
cd "$(dirname "$0")/.."
broken=0   # builds that failed: each counts as a failed test

stage() { printf '\n==== %s\n' "$*"; }
# Configure a build directory once; show meson's complaint if it fails.
setup() {
  local dir=$1; shift
  [ -f "$dir/build.ninja" ] && return 0
  rm -rf "$dir"
  meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
}
# Only this run's results count.
rm -f "$build/meson-logs/testlog.json" "$asan/meson-logs/testlog.json" "$fuzz/meson-logs/testlog.json"

stage "build ($build)"
if ninja -C "$build"; then
  stage "tests ($build)"
  meson test -C "$build" --print-errorlogs --num-processes 2
else
  broken=$((broken + 1))
fi

stage "unit tests under ASan+UBSan ($asan)"
if setup "$asan" -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false \
     -Dc_args=-fno-sanitize-recover=all && ninja -C "$asan"; then
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    meson test -C "$asan" --suite unit --print-errorlogs --num-processes 2
else
  broken=$((broken + 1))
fi

if command -v clang >/dev/null; then
  stage "fuzzers, ${fuzz_seconds}s each ($fuzz)"
  if CC=clang setup "$fuzz" -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false &&
     ninja -C "$fuzz"; then
    MESH_FUZZ_SECONDS=$fuzz_seconds meson test -C "$fuzz" --suite fuzz --print-errorlogs --num-processes 2
  else
    broken=$((broken + 1))
  fi
fi

stage "summary"
python3 tests/count.py --broken "$broken" "$build" "$asan" "$fuzz"
