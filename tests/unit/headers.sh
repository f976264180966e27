#!/usr/bin/env bash
# The public headers compile on their own, as strict C99 and as C++.
set -euo pipefail
cc=$1 cxx=$2 src_inc=$3 build_inc=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for h in "$src_inc"/mesh/*.h; do
  name=mesh/$(basename "$h")
  printf '#include <%s>\n#include <%s>\nint main(void) { return 0; }\n' "$name" "$name" >"$tmp/t.c"
  "$cc" -std=c99 -pedantic -Wall -Wextra -Werror -I"$src_inc" -I"$build_inc" -fsyntax-only "$tmp/t.c"
  "$cxx" -x c++ -std=c++11 -pedantic -Wall -Wextra -Werror -I"$src_inc" -I"$build_inc" -fsyntax-only "$tmp/t.c"
done
echo "ok: every public header compiles alone as C99 and as C++"
