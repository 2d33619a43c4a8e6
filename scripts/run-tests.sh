#!/usr/bin/env bash
# Runs every C test (tests/c, Check) and Python test (tests/py, pytest) against the binaries
# in $FDPO_BUILD, then prints one closing line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${FDPO_BUILD:-build}
export FDPO_BIN="$PWD/$BUILD/fdpo" FDPO_HARNESS="$PWD/$BUILD/fdpo-harness"
export CK_FORK=yes
# Sanitizer runtime options (used only by the ASan build). OpenBLAS/OpenMP keep their thread
# pools alive until exit, which LeakSanitizer would report: suppress only those libraries.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=23}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/scripts/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
passed=0; failed=0
for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  out=$("$t" 2>&1); rc=$?
  echo "$out" | grep -E "^[0-9]+%|:[EF]:" || true
  n=$(echo "$out" | sed -n 's/.*Checks: \([0-9]*\), Failures: \([0-9]*\), Errors: \([0-9]*\).*/\1 \2 \3/p' | tail -n1)
  if [ -n "$n" ]; then
    set -- $n; passed=$((passed + $1 - $2 - $3)); failed=$((failed + $2 + $3))
  fi
  if [ $rc -ne 0 ] && [ -z "$n" ]; then failed=$((failed + 1)); echo "$out" | tail -20; fi
  if [ $rc -ne 0 ]; then echo "FAILED: $t (exit $rc)"; fi
done
# Python tests on FDPO_TEST_WORKERS pytest-xdist workers (default: one per core, at most 4).
# A test's time is mostly one process at a time (Python, a torch reference, one fdpo run):
# the serial suite kept 2 cores ~50 % busy. Tests share nothing but the machine: each has its
# own tmp_path, and the ones that find or signal processes look only at their own (their
# child's descendants, their process group). FDPO_TEST_WORKERS=0 runs them in this process.
workers=${FDPO_TEST_WORKERS:-$(n=$(nproc 2>/dev/null || echo 1); [ "$n" -gt 4 ] && n=4; echo "$n")}
xdist=()
if [ "$workers" -gt 1 ] && /usr/bin/python3 -c "import xdist" 2>/dev/null; then
  xdist=(-n "$workers")
fi
log=$(mktemp)
/usr/bin/python3 -m pytest -q -p no:cacheprovider "${xdist[@]}" tests/py ${PYTEST_ARGS:-} 2>&1 | tee "$log"
prc=${PIPESTATUS[0]}
# the counts come from pytest's closing line only: a failing test's own output can hold
# "rank 1 of 2 failed", which summing every "N failed" in the log counted as failures
summary=$(grep -E '^=*[[:space:]]*[0-9]+ (passed|failed|errors?)' "$log" | tail -n1)
pp=$(echo "$summary" | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+' || echo 0)
pf=$(echo "$summary" | grep -Eo '[0-9]+ (failed|errors?)' | awk '{s+=$1} END {print s+0}')
# pytest failing without a count (a collection crash, an interrupted run) is a failure too
if [ "$prc" -ne 0 ] && [ "${pf:-0}" -eq 0 ]; then pf=1; echo "FAILED: pytest exited $prc"; fi
rm -f "$log"
passed=$((passed + pp)); failed=$((failed + ${pf:-0}))
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
