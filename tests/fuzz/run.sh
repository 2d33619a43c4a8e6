#!/usr/bin/env bash
# Run each libFuzzer harness for SECONDS: tests/fuzz/run.sh BUILD_DIR SECONDS NAME...
# Seeds come from tests/fuzz/corpus/NAME/ (read only); new inputs go to BUILD_DIR/corpus/NAME/,
# a crashing input to BUILD_DIR/crash/NAME-*. FUZZ_JOBS harnesses run at once (default 1).
# Prints one line per harness (executions, new corpus inputs) and exits non-zero if any
# harness found a crash, leak, timeout, out-of-memory or sanitizer report.
set -uo pipefail
build=$1 seconds=$2
shift 2
jobs=${FUZZ_JOBS:-1}
cd "$(dirname "$0")/../.."
mkdir -p "$build/crash" "$build/log"

run_one() {
    local name=$1 work=$build/corpus/$1 log=$build/log/$1.log
    mkdir -p "$work"
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
        "$build/fuzz/fuzz_$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$build/crash/$name-" "$work" "tests/fuzz/corpus/$name" >"$log" 2>&1
    echo $? >"$build/log/$name.rc"
}

running=0
for name in "$@"; do
    run_one "$name" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

failed=0
for name in "$@"; do
    log=$build/log/$name.log rc=$(cat "$build/log/$name.rc")
    runs=$(grep -oE 'Done [0-9]+ runs' "$log" | tail -1 | grep -oE '[0-9]+')
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "fuzz $name: FAILED (exit $rc); log $log:"
        grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -20
    else
        echo "fuzz $name: ${runs:-?} runs in ${seconds}s, no findings ($(ls "$build/corpus/$name" | wc -l) inputs in $build/corpus/$name)"
    fi
done
exit $failed
