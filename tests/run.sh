#!/usr/bin/env bash
# Runs every test binary in build/tests and every tests/*.test.sh script, counts the
# "ok" / "FAIL" / "SKIP" lines they print, and ends with "N passed, N failed, N skipped".
# A test program that crashes or exits non-zero without a FAIL line counts as one failure.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-./moerun}
TESTBIN=${TESTBIN:-build/tests}
export BIN
pass=0 fail=0 skip=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run_one() {
    local name=$1
    shift
    "$@" >"$log" 2>&1
    local rc=$?
    local p f s
    p=$(grep -c '^ok ' "$log")
    f=$(grep -c '^FAIL ' "$log")
    s=$(grep -c '^SKIP ' "$log")
    grep -E '^(FAIL|SKIP) ' "$log"
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $name: exited with status $rc and no FAIL line; last output:"
        tail -n 5 "$log" | sed 's/^/    /'
        f=1
    fi
    if [ "${VERBOSE:-0}" = 1 ]; then grep '^ok ' "$log"; fi
    if [ "$s" -gt 0 ] && [ "${MOERUN_REQUIRE_FIXTURES:-0}" = 1 ]; then
        echo "FAIL $name: $s skipped while MOERUN_REQUIRE_FIXTURES=1"
        f=$((f + 1))
    fi
    printf '  %-28s %3d ok %3d failed %3d skipped\n' "$name" "$p" "$f" "$s"
    pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
}

for t in "$TESTBIN"/test_*; do
    [ -x "$t" ] || continue
    run_one "$(basename "$t")" "$t"
done
for t in tests/*.test.sh; do
    [ -f "$t" ] || continue
    run_one "$(basename "$t")" bash "$t"
done
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
