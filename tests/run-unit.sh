#!/usr/bin/env bash
# Run each cmocka unit test binary given as an argument and count results.
# Prints `unit: N passed, N failed, N skipped`; with PMD_COUNTS=FILE also
# writes "passed failed skipped" to FILE. Exit 1 if anything failed.
set -uo pipefail

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

passed=0 failed=0 skipped=0
for bin in "$@"; do
	name=${bin##*/}
	if [ ! -x "$bin" ]; then
		echo "unit: $name: $bin was not built" >&2
		failed=$((failed + 1))
		continue
	fi
	out=$(timeout 300 "$bin" </dev/null 2>&1)
	rc=$?
	printf '%s\n' "$out"
	# cmocka's closing lines: "[  PASSED  ] N test(s)." and
	# "[  FAILED  ] N test(s), listed below:" / "[  SKIPPED ] N test(s), ...".
	p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' <<<"$out" | tail -n1)
	f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' <<<"$out" | tail -n1)
	s=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' <<<"$out" | tail -n1)
	p=${p:-0} f=${f:-0} s=${s:-0}
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		# A crash, a sanitizer report or a timeout after the last test.
		echo "unit: $name exited with status $rc" >&2
		f=1
	fi
	if [ "$rc" -eq 0 ] && [ "$p" -eq 0 ] && [ "$s" -eq 0 ]; then
		echo "unit: $name ran no test" >&2
		f=1
	fi
	passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
done

[ -n "${PMD_COUNTS:-}" ] && echo "$passed $failed $skipped" >"$PMD_COUNTS"
echo "unit: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
