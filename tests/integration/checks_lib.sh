# Sourced by the mesh-destination integration scripts (after they resolve
# their arguments): a scratch directory that is the working directory, the
# processes started (in pids) resumed and killed on exit, and checks that
# count and go on (failures, checks) rather than stop at the first.
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "FAIL: line $LINENO: a setup command failed"' ERR
cd "$tmp"
failures=0 checks=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# matches NAME FILE REGEX: some line of FILE matches the extended REGEX.
matches() {
  checks=$((checks + 1))
  grep -qE -- "$3" "$2" || { fail "$1: nothing matches /$3/ in $2:"; sed 's/^/  /' "$2"; }
}

# absent NAME FILE REGEX: no line of FILE matches.
absent() {
  checks=$((checks + 1))
  ! grep -qE -- "$3" "$2" || { fail "$1: /$3/ should not be in $2:"; sed 's/^/  /' "$2"; }
}

equals() { # NAME GOT WANT
  checks=$((checks + 1))
  [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# within NAME MS FILE REGEX: FILE gets a line matching REGEX within MS milliseconds; sets $took.
within() {
  local t0 deadline
  t0=$(now_ms)
  deadline=$((t0 + $2))
  checks=$((checks + 1))
  while ! grep -qE -- "$4" "$3" 2>/dev/null; do
    if [ "$(now_ms)" -gt "$deadline" ]; then
      fail "$1: no line matching /$4/ in $3 within $2 ms:"
      sed 's/^/  /' "$3"
      took=-1
      return
    fi
    sleep 0.01
  done
  took=$(($(now_ms) - t0))
}

# put NAME: stdin into store/NAME, written whole (a temporary file renamed),
# as an editor or a deploy tool does: the store never reads half a file.
put() {
  cat >"store/.$1.tmp"
  mv "store/.$1.tmp" "store/$1"
}
