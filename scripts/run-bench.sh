#!/usr/bin/env bash
# Runs every benchmark in bench/: each runs fdpo and its competitor (PyTorch on the same
# threads, or gpt-3-encoder under node) in one invocation and prints the ratio. The model
# benches interleave fdpo and PyTorch step by step (bench/interleave.py), print the
# machine's measured sgemm / bf16 GEMM peaks and the memory-bandwidth limit first (the DRAM
# STREAM triad, arrays >= 4 x the last-level cache: bench/bandwidth.py), and default to small configs
# (pass --configs 124M / --config 124M by hand for GPT-2 124M shapes).
# THREADS (default 2) is passed to the ones that take it. Benchmarks, not tests: the
# numbers depend on the machine and its load.
#
#   scripts/run-bench.sh --goals [--quick] [--repeats N] [--only dpo,train124,trainsmall,sample,rss]
# instead runs the rows of issue #13's goal table (bench/goals.py): each goal bench in
# sequence, the whole set three times, then one table with every run's figure, the spread
# across runs (goal <= 15 %) and whether the median meets the goal. --quick: goal sides only,
# 5 timed steps per side. --goals may come anywhere on the line; any other argument without
# it is refused (the rest mean something only to goals.py). FDPO_BIN / FDPO_HARNESS, when
# set, name the binaries measured (default build/). The exit status is 1 when a bench failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export FDPO_BIN="${FDPO_BIN:-$PWD/build/fdpo}" FDPO_HARNESS="${FDPO_HARNESS:-$PWD/build/fdpo-harness}"
T=${THREADS:-2}
args=() goals=0
for arg in "$@"; do
    if [ "$arg" = "--goals" ]; then goals=1; else args+=("$arg"); fi
done
if [ "$goals" = 1 ]; then
    exec /usr/bin/python3 bench/goals.py --threads "$T" ${args[@]+"${args[@]}"}
fi
if [ $# -gt 0 ]; then
    echo "run-bench.sh: $1: unknown without --goals (usage: scripts/run-bench.sh, or scripts/run-bench.sh --goals [--quick] [--repeats N] [--only ...])" >&2
    exit 2
fi
failed=()
run() {   # a bench that fails is named at the end and makes the exit status 1; the others still run
    "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then failed+=("$* (exit $rc)"); fi
}
run /usr/bin/python3 bench/bench_train_step.py --threads "$T"
run /usr/bin/python3 bench/bench_dpo_step.py --threads "$T"
run /usr/bin/python3 bench/bench_sample.py --threads "$T"
run /usr/bin/python3 bench/bench_online.py --threads "$T"
run /usr/bin/python3 bench/bench_rl.py --threads "$T"
run /usr/bin/python3 bench/bench_tokenizer.py
run bash bench/bench_lab.sh
# data parallelism: 2 ranks x 1 thread vs 1 rank x 2 threads (needs mpirun; docs/scaling.md)
if command -v mpirun >/dev/null; then run /usr/bin/python3 bench/bench_mpi.py; fi
if [ ${#failed[@]} -gt 0 ]; then
    printf 'run-bench.sh: failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
