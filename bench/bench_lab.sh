#!/usr/bin/env bash
# Speed of `fdpo lab frontier` on a large problem: n = 10^6 responses x 50 betas x 6
# divergences (rkl, fkl, js, alpha:0.5, tv, chi2) = 300 exact solves. Target <= 10 s on 2
# cores. OpenMP runs the (divergence, beta) solves in parallel; each solve is sequential, so
# the table is identical for any thread count (the script checks that too).
#
#   bench/bench_lab.sh                 # n = 1e6, threads 1 and 2
#   N=200000 THREADS="2" bench/bench_lab.sh
#
# Wall time includes generating the problem and sorting the rewards (~0.4 s at n = 1e6).
# Not a test: timings depend on the machine and its load (read `uptime` in the output).
N=${N:-1000000}
source "$(dirname "$0")/lab_threads.sh"
echo "problem: n=$N responses, 50 betas in [0.01, 10], divergences rkl,fkl,js,alpha:0.5,tv,chi2"
lab_thread_runs frontier --n "$N" --n-betas 50 --divergence all
echo "per divergence, 1 thread (user seconds):"
for d in rkl fkl js alpha:0.5 tv chi2; do
  /usr/bin/time -f "  $d %U s" "$FDPO" lab frontier --n "$N" --n-betas 50 --divergence "$d" --threads 1 > /dev/null
done
