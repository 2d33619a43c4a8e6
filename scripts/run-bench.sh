#!/usr/bin/env bash
# Runs every benchmark in bench/: each runs fdpo and its competitor (PyTorch on the same
# threads, or gpt-3-encoder under node) in one invocation and prints the ratio.
# THREADS (default 2) is passed to the ones that take it. Benchmarks, not tests: the
# numbers depend on the machine and its load.
set -uo pipefail
cd "$(dirname "$0")/.."
export FDPO_BIN="$PWD/build/fdpo" FDPO_HARNESS="$PWD/build/fdpo-harness"
T=${THREADS:-2}
/usr/bin/python3 bench/bench_train_step.py --threads "$T"
/usr/bin/python3 bench/bench_dpo_step.py --threads "$T"
/usr/bin/python3 bench/bench_sample.py --threads "$T"
/usr/bin/python3 bench/bench_tokenizer.py
bash bench/bench_lab.sh
