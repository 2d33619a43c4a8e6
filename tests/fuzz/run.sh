#!/usr/bin/env bash
# Run each libFuzzer harness for SECONDS: tests/fuzz/run.sh BUILD_DIR SECONDS NAME...
# Seeds come from tests/fuzz/corpus/NAME/ (read only); new inputs go to BUILD_DIR/corpus/NAME/,
# a crashing input to BUILD_DIR/crash/NAME-*. Prints one line per harness (executions, corpus
# size) and exits non-zero if any harness found a crash, leak, timeout or sanitizer report.
set -uo pipefail
build=$1 seconds=$2
shift 2
cd "$(dirname "$0")/../.."
failed=0
for name in "$@"; do
    bin=$build/fuzz/fuzz_$name
    work=$build/corpus/$name
    mkdir -p "$work" "$build/crash" "$build/log"
    log=$build/log/$name.log
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
        "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$build/crash/$name-" "$work" "tests/fuzz/corpus/$name" >"$log" 2>&1
    rc=$?
    runs=$(grep -oE 'Done [0-9]+ runs' "$log" | tail -1 | grep -oE '[0-9]+')
    if [ $rc -ne 0 ]; then
        failed=1
        echo "fuzz $name: FAILED (exit $rc); log $log:"
        grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -20
    else
        echo "fuzz $name: ${runs:-?} runs in ${seconds}s, no findings ($(ls "$work" | wc -l) new corpus inputs)"
    fi
done
exit $failed
