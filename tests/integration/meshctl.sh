#!/usr/bin/env bash
# meshctl end to end: validate the seed and bad manifests, generate profiles, check exit codes and formats.
set -euo pipefail
meshctl=$(realpath "$1") src=$(realpath "$2")
data=$src/tests/data
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# run NAME EXPECTED_STATUS ARGS...: runs meshctl, keeps stdout and stderr in
# $tmp/out and $tmp/err, and checks the exit status.
run() {
  local name=$1 want=$2
  shift 2
  local got=0
  "$meshctl" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null || got=$?
  if [ "$got" != "$want" ]; then
    fail "$name: exit $got, expected $want"
    sed 's/^/  stdout: /' "$tmp/out"
    sed 's/^/  stderr: /' "$tmp/err"
  fi
}

# has NAME FILE TEXT: FILE contains the line TEXT exactly.
has() {
  grep -qxF -- "$3" "$2" || { fail "$1: no line '$3' in"; sed 's/^/  /' "$2"; }
}

# matches NAME FILE REGEX: some line of FILE matches the extended REGEX.
matches() {
  grep -qE -- "$3" "$2" || { fail "$1: nothing matches /$3/ in"; sed 's/^/  /' "$2"; }
}

is_json() {
  python3 -c 'import json,sys; json.load(sys.stdin)' <"$2" || fail "$1: stdout is not JSON"
}

# The seed: every file is valid; one line per document; the seed's HttpRoute
# spelling is a warning, not an error.
cd "$data/seed"
run seed 0 validate -f exam-api-policy.yaml -f exam-api-profile.yaml -f prometheus.yaml \
  -f traffic-splits.yaml -f user-service-profile.yaml
has seed "$tmp/out" "exam-api-profile.yaml: ServiceProfile production/exam-api: 2 routes"
has seed "$tmp/out" "user-service-profile.yaml: ServiceProfile production/user-service: 3 routes"
has seed "$tmp/out" "traffic-splits.yaml: TrafficSplit production/exam-service-canary: exam-service → exam-service-stable 90%, exam-service-canary 10%"
has seed "$tmp/out" "traffic-splits.yaml: TrafficSplit default/learning-module-split: learning-module → learning-module-v1 70%, learning-module-v2 30%"
has seed "$tmp/out" "exam-api-policy.yaml: Server production/exam-api-server"
has seed "$tmp/out" "exam-api-policy.yaml: ServerAuthorization production/exam-api-authz"
has seed "$tmp/out" "exam-api-policy.yaml: HttpRoute production/exam-routes"
has seed "$tmp/out" "prometheus.yaml: ServiceMonitor linkerd-viz/linkerd-proxy: not a mesh resource, ignored"
[ "$(wc -l <"$tmp/out")" -eq 9 ] || fail "seed: expected 9 document lines, found $(wc -l <"$tmp/out")"
matches seed "$tmp/err" "^exam-api-policy\.yaml:34:7: warning: .*'HttpRoute'.*'HTTPRoute'"
grep -q ': error: ' "$tmp/err" && fail "seed: unexpected errors"
cd - >/dev/null

# A directory means its manifests, in name order, named by their paths.
run seed-dir 0 validate -f "$data/seed/"
[ "$(head -1 "$tmp/out")" = "$data/seed/exam-api-policy.yaml: Server production/exam-api-server" ] ||
  fail "seed-dir: first line is '$(head -1 "$tmp/out")'"
[ "$(wc -l <"$tmp/out")" -eq 9 ] || fail "seed-dir: expected 9 document lines"

# JSON: one object that parses, with every file, document and diagnostic.
run seed-json 0 validate -o json -f "$data/seed"
is_json seed-json "$tmp/out"
python3 - "$tmp/out" <<'EOF' || fail "seed-json: wrong report"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["valid"] is True, r["valid"]
assert len(r["files"]) == 5, len(r["files"])
docs = [d for f in r["files"] for d in f["documents"]]
assert len(docs) == 9, len(docs)
split = next(d for d in docs if d["name"] == "exam-service-canary")
assert split == {"kind": "TrafficSplit", "apiVersion": "split.smi-spec.io/v1alpha1",
                 "name": "exam-service-canary", "namespace": "production", "line": 2}, split
warn = [g for f in r["files"] for g in f["diagnostics"] if "HttpRoute" in g["message"]]
assert warn and warn[0]["severity"] == "warning" and warn[0]["line"] == 34 and warn[0]["column"] == 7, warn
EOF

# Bad inputs: exit 1 and compiler-style diagnostics at the right place.
check_bad() {
  local file=$1 where=$2 what=$3
  run "$file" 1 validate -f "$data/bad/$file"
  matches "$file" "$tmp/err" "^$(printf '%s' "$data/bad/$file" | sed 's/[.[\*^$]/\\&/g'):$where: error: .*$what"
  [ -s "$tmp/out" ] && fail "$file: printed documents for an invalid file"
  run "$file-json" 1 validate -o json -f "$data/bad/$file"
  is_json "$file-json" "$tmp/out"
  python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["valid"] is False and r["files"][0]["diagnostics"][0]["severity"] == "error"' \
    <"$tmp/out" || fail "$file-json: not reported invalid"
}
check_bad bad-regex.yaml 12:18 "invalid pathRegex"
check_bad bad-duration.yaml 13:14 "invalid duration '30 seconds'"
check_bad bad-weight.yaml 13:13 "invalid quantity 'ten'"
check_bad missing-kind.yaml 2:1 "missing required field 'kind'"
check_bad syntax-error.yaml 9:1 "YAML syntax error"

# One bad file fails the run; the good one is still reported.
run mixed 1 validate -f "$data/seed/exam-api-profile.yaml" -f "$data/bad/bad-regex.yaml"
matches mixed "$tmp/out" "exam-api-profile.yaml: ServiceProfile production/exam-api: 2 routes"
run missing-file 1 validate -f "$tmp/nope.yaml"
has missing-file "$tmp/err" "$tmp/nope.yaml: error: cannot open: No such file or directory"
mkdir "$tmp/empty"
run empty-dir 1 validate -f "$tmp/empty"
matches empty-dir "$tmp/err" "no manifests"

# Usage errors: exit 2, usage on stderr.
run no-args 2
matches no-args "$tmp/err" "^Usage:"
run unknown-command 2 frobnicate
matches unknown-command "$tmp/err" "unknown command 'frobnicate'"
run no-input 2 validate
run bad-flag 2 validate --bogus -f x
run bad-output 2 validate -o yaml -f "$data/seed"
run profile-neither 2 profile web
run profile-both 2 profile --template --open-api x web
run profile-bad-name 2 profile --template Web_1
run profile-no-name 2 profile --template

# Help and version.
for h in help --help -h; do
  run "$h" 0 "$h"
  matches "$h" "$tmp/out" "^  validate +"
  matches "$h" "$tmp/out" "^  profile +"
done
run help-validate 0 help validate
matches help-validate "$tmp/out" "meshctl validate -f FILE"
run validate-help 0 validate --help
matches validate-help "$tmp/out" "^Exit status"
run profile-help 0 profile -h
matches profile-help "$tmp/out" "--open-api SPEC"
run version 0 version
matches version "$tmp/out" "^Client version: [0-9]+\.[0-9]+\.[0-9]+$"
run version-short 0 version --short
matches version-short "$tmp/out" "^[0-9]+\.[0-9]+\.[0-9]+$"

# The template loads back with no diagnostic at all.
run template 0 profile --template web -n shop
has template "$tmp/out" "  name: web.shop.svc.cluster.local"
cp "$tmp/out" "$tmp/template.yaml"
"$meshctl" validate -f - <"$tmp/template.yaml" >"$tmp/out" 2>"$tmp/err" || fail "template does not validate"
has template-validate "$tmp/out" "<stdin>: ServiceProfile shop/web.shop.svc.cluster.local: 1 route"
[ -s "$tmp/err" ] && { fail "template has diagnostics"; cat "$tmp/err"; }

# OpenAPI 3 (YAML) and 2 (JSON, read from stdin): generated profiles load back.
run openapi3 0 profile --open-api "$data/openapi/petstore.yaml" petstore -n shop
has openapi3 "$tmp/out" '  name: "petstore.shop.svc.cluster.local"'
has openapi3 "$tmp/out" '    name: "GET /pets/{petId}"'
has openapi3 "$tmp/out" '      pathRegex: "/pets/[^/]*/photo\\.jpg"'
has openapi3 "$tmp/out" '    timeout: "1m30s"'
[ -s "$tmp/err" ] && { fail "openapi3: diagnostics"; cat "$tmp/err"; }
cp "$tmp/out" "$tmp/petstore-profile.yaml"
"$meshctl" validate -f - <"$tmp/petstore-profile.yaml" >"$tmp/out" 2>"$tmp/err" || fail "openapi3 profile does not validate"
has openapi3-validate "$tmp/out" "<stdin>: ServiceProfile shop/petstore.shop.svc.cluster.local: 5 routes"
[ -s "$tmp/err" ] && { fail "openapi3 profile has diagnostics"; cat "$tmp/err"; }

"$meshctl" profile --open-api - store <"$data/openapi/petstore-v2.json" >"$tmp/store.yaml" 2>"$tmp/err" ||
  fail "openapi2 from stdin failed: $(cat "$tmp/err")"
grep -qxF '    name: "GET /api/v2/store/order/{orderId}"' "$tmp/store.yaml" || fail "openapi2: basePath not joined"
"$meshctl" validate -f - <"$tmp/store.yaml" >"$tmp/out" 2>"$tmp/err" || fail "openapi2 profile does not validate"
has openapi2-validate "$tmp/out" "<stdin>: ServiceProfile default/store.default.svc.cluster.local: 4 routes"

# A broken spec: exit 1, a positioned diagnostic, nothing on stdout.
printf 'openapi: 3.0.0\npaths:\n  /a:\n    get:\n      x-linkerd-timeout: soon\n' >"$tmp/bad-spec.yaml"
run openapi-bad 1 profile --open-api "$tmp/bad-spec.yaml" web
matches openapi-bad "$tmp/err" "bad-spec\.yaml:5:26: error: paths\./a\.get\.x-linkerd-timeout: invalid duration 'soon'"
[ -s "$tmp/out" ] && fail "openapi-bad: printed a profile"
run openapi-missing 1 profile --open-api "$tmp/none.json" web
matches openapi-missing "$tmp/err" "none\.json: No such file or directory"

if [ "$failures" -ne 0 ]; then
  echo "$failures meshctl check(s) failed"
  exit 1
fi
echo "ok: meshctl"
