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
# 5 timed steps per side.
set -uo pipefail
cd "$(dirname "$0")/.."
export FDPO_BIN="$PWD/build/fdpo" FDPO_HARNESS="$PWD/build/fdpo-harness"
T=${THREADS:-2}
if [ "${1:-}" = "--goals" ]; then
    shift
    exec /usr/bin/python3 bench/goals.py --threads "$T" "$@"
fi
/usr/bin/python3 bench/bench_train_step.py --threads "$T"
/usr/bin/python3 bench/bench_dpo_step.py --threads "$T"
/usr/bin/python3 bench/bench_sample.py --threads "$T"
/usr/bin/python3 bench/bench_online.py --threads "$T"
/usr/bin/python3 bench/bench_rl.py --threads "$T"
/usr/bin/python3 bench/bench_tokenizer.py
bash bench/bench_lab.sh
# data parallelism: 2 ranks x 1 thread vs 1 rank x 2 threads (needs mpirun; docs/scaling.md)
if command -v mpirun >/dev/null; then /usr/bin/python3 bench/bench_mpi.py; fi
