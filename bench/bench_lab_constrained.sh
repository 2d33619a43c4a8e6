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
set -euo pipefail
cd "$(dirname "$0")/.."
FDPO=${FDPO_BIN:-build/fdpo}
N=${N:-100000}
THREADS=${THREADS:-"1 2"}
[ -x "$FDPO" ] || { echo "build first: make" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "machine: $(nproc) cores, load: $(uptime | sed 's/.*load average: //')"
echo "problem: n=$N, 50 thresholds in [-0.5, 1.5], beta 0.1, divergences rkl,fkl,js,alpha:0.5, safety corr -0.5"
first=""
for t in $THREADS; do
  start=$(date +%s.%N)
  /usr/bin/time -o "$tmp/time_$t" -f "cpu: user %U s, sys %S s" "$FDPO" lab constrained --n "$N" --frontier -0.5:1.5:50 \
    --divergence rkl,fkl,js,alpha:0.5 --threads "$t" --out "$tmp/c_$t.csv"
  end=$(date +%s.%N)
  printf 'threads=%s  wall %.2f s  (%d rows, %d inner solves)\n' "$t" "$(echo "$end - $start" | bc)" \
    "$(($(wc -l < "$tmp/c_$t.csv") - 1))" "$(awk -F, 'NR > 1 {s += $13} END {print s}' "$tmp/c_$t.csv")"
  cat "$tmp/time_$t"
  if [ -z "$first" ]; then first="$tmp/c_$t.csv"
  elif ! cmp -s "$first" "$tmp/c_$t.csv"; then echo "MISMATCH: thread counts gave different tables" >&2; exit 1; fi
done
