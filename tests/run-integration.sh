#!/usr/bin/env bash
# Run the integration tests (pytest on Debian's python3) against $PMD_BUILD.
# Services are whatever the environment says (tests/services.sh writes the
# variables; tests of a missing service skip). Prints
# `integration: N passed, N failed, N skipped`; with PMD_COUNTS=FILE also
# writes "passed failed skipped" to FILE. "No test collected" (pytest's exit
# 5) is not a failure. Extra arguments go to pytest.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
export PMD_BUILD=${PMD_BUILD:-$repo/build}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export PYTHONDONTWRITEBYTECODE=1

junit=$(mktemp)
trap 'rm -f "$junit"' EXIT
cd "$repo" || exit 1
# Most integration tests wait on timers and peers, not on the CPU: run them
# on PMD_TEST_JOBS workers (pytest-xdist; conftest.py keeps the tests that
# share dockerd or Pebble on one worker). PMD_TEST_JOBS=1 runs them in turn.
jobs=${PMD_TEST_JOBS:-3}
par=()
if [ "$jobs" -gt 1 ] && /usr/bin/python3 -c 'import xdist' 2>/dev/null; then
	par=(-n "$jobs" --dist loadgroup)
fi
timeout 2400 /usr/bin/python3 -m pytest tests/integration -q -rfEs \
	-p no:cacheprovider --junitxml="$junit" "${par[@]}" "$@" </dev/null
rc=$?

read -r passed failed skipped < <(/usr/bin/python3 - "$junit" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print(0, 0, 0)
    sys.exit()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = s = 0
for su in suites:
    t += int(su.get("tests", 0))
    f += int(su.get("failures", 0)) + int(su.get("errors", 0))
    s += int(su.get("skipped", 0))
print(max(t - f - s, 0), f, s)
PY
)

case $rc in
0 | 5) ;;
*) [ "$failed" -gt 0 ] || failed=1 ;; # interrupted, internal or usage error
esac
[ -n "${PMD_COUNTS:-}" ] && echo "$passed $failed $skipped" >"$PMD_COUNTS"
echo "integration: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
