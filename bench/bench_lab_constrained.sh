#!/usr/bin/env bash
# Speed of `fdpo lab constrained --frontier`: n = 10^5 responses x 50 thresholds x 4
# divergences (rkl, fkl, js, alpha:0.5) = 200 constrained solves, each a Brent search over the
# multiplier lambda with an exact inner solve per evaluation. Target <= 10 s on 2 threads.
# OpenMP runs the divergences in parallel; inside one, thresholds go in increasing order so
# each lambda* brackets the next. Rows are identical for any thread count (checked below).
#
#   bench/bench_lab_constrained.sh
#   N=20000 THREADS="2" bench/bench_lab_constrained.sh
#
# Not a test: timings depend on the machine and its load (read `uptime` in the output).
N=${N:-100000}
source "$(dirname "$0")/lab_threads.sh"
echo "problem: n=$N, 50 thresholds in [-0.5, 1.5], beta 0.1, divergences rkl,fkl,js,alpha:0.5, safety corr -0.5"
lab_thread_runs constrained --n "$N" --frontier -0.5:1.5:50 --divergence rkl,fkl,js,alpha:0.5
echo "inner solves: $(awk -F, 'NR > 1 {s += $13} END {print s}' "$tmp/table.csv")"
