#!/usr/bin/env bash
# `make check`: the test peers (dockerd, registry, pebble) started by
# tests/services.sh, unit tests, integration tests, the peers stopped, then
# the fuzz harnesses for FUZZ_SECONDS (20) each.
# Arguments: the unit test binaries. PMD_BUILD: the build folder to test
# (build, or build/san for `make check SANITIZE=1`).
# PMD_TEST_SERVICES=none runs the integration tests without peers (those
# tests skip); =optional tolerates a peer that fails to start.
# The last line is `check: N passed, N failed, N skipped`.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
export PMD_BUILD=${PMD_BUILD:-$repo/build}

tmp=$(mktemp -d /tmp/pmd-check.XXXXXX)
svc=$tmp/services
cleanup() {
	[ -d "$svc" ] && bash "$here/services.sh" stop "$svc"
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

errors=0

# Unit test binaries that make did not build (yet) are built here, with the
# same make variables (SANITIZE=1 reaches us through MAKEFLAGS); one that
# still does not build counts as a failure in run-unit.sh.
missing=()
for b in "$@"; do [ -x "$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -gt 0 ]; then
	make -C "$repo" --no-print-directory -k "${missing[@]#"$repo"/}" || true
fi

# The peers first: some unit tests talk to the test dockerd too.
if [ "${PMD_TEST_SERVICES:-}" != none ]; then
	if bash "$here/services.sh" start "$svc"; then
		# shellcheck disable=SC1091
		source "$svc/env"
	else
		echo "check: starting the test services failed" >&2
		errors=$((errors + 1))
	fi
fi

PMD_COUNTS=$tmp/unit.counts bash "$here/run-unit.sh" "$@"
if [ "$errors" -eq 0 ]; then
	PMD_COUNTS=$tmp/integration.counts bash "$here/run-integration.sh"
fi

# The libFuzzer harnesses of tests/fuzz, FUZZ_SECONDS (20) each, when
# clang's libFuzzer runtime is there (skipped otherwise; FUZZ_SECONDS=0
# skips them too). A harness that does not build, crashes or breaks an
# invariant fails the check.
# The harnesses are always built with ASan+UBSan, so the SANITIZE=1 pass
# does not run them a second time.
fuzz_seconds=${FUZZ_SECONDS:-20}
if [ "$fuzz_seconds" = 0 ] || [ "${PMD_CHECK_SANITIZED:-}" = 1 ]; then
	[ "${PMD_CHECK_SANITIZED:-}" = 1 ] && echo "check: fuzz harnesses ran in the plain pass (they are sanitized builds already)" >&2
	echo "0 0 1" >"$tmp/fuzz.counts"
elif printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' |
	"${CLANG:-clang}" -fsanitize=fuzzer,address,undefined -x c - -o "$tmp/fuzz-probe" >/dev/null 2>&1; then
	if make -C "$repo" --no-print-directory -s -f tests/fuzz/fuzz.mk run \
		FUZZ_SECONDS="$fuzz_seconds" CLANG="${CLANG:-clang}"; then
		echo "1 0 0" >"$tmp/fuzz.counts"
	else
		echo "check: fuzzing failed" >&2
		echo "0 1 0" >"$tmp/fuzz.counts"
	fi
else
	echo "check: no clang with libFuzzer, fuzz harnesses skipped" >&2
	echo "0 0 1" >"$tmp/fuzz.counts"
fi

passed=0 failed=$errors skipped=0
for c in "$tmp/unit.counts" "$tmp/integration.counts" "$tmp/fuzz.counts"; do
	[ -f "$c" ] || continue
	read -r p f s <"$c"
	passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
done
echo "check: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
