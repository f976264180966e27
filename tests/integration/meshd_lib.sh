# Sourced by the meshd integration scripts (after they resolve their arguments):
# a scratch directory that is the working directory, the processes started
# (in pids) killed on exit, and the shared reporting and waiting helpers.
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"

# A failure shows the end of every log (debug lines left out) and load output.
fail() {
  echo "FAIL: $*"
  for f in *.log *.out; do [ -f "$f" ] && { echo "--- $f"; grep -v DEBUG "$f" | tail -n 30; }; done
  exit 1
}
ok() { echo "ok: $*"; }
# Debian's interpreter: it has python3-grpcio, and a pyenv shim costs seconds a call.
PY=/usr/bin/python3

wait_http() { # url: until it answers 200, for at most 5 s
  for _ in $(seq 100); do curl -fsS -m 1 "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
  fail "$1 does not answer"
}

# put NAME: stdin into store/NAME, written whole (a temporary file renamed),
# as an editor or a deploy tool does: the store never reads half a file.
put() {
  cat >"store/.$1.tmp"
  mv "store/.$1.tmp" "store/$1"
}
