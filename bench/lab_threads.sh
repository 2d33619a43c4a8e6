# Sourced by bench/bench_lab*.sh: the setup they share and the timed runs over thread counts.
# After sourcing: FDPO (FDPO_BIN, default build/fdpo), THREADS ("1 2" unless set) and a
# temporary directory $tmp removed on exit; the machine's cores and load are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
FDPO=${FDPO_BIN:-build/fdpo}
THREADS=${THREADS:-"1 2"}
[ -x "$FDPO" ] || { echo "build first: make" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "machine: $(nproc) cores, load: $(uptime | sed 's/.*load average: //')"

# lab_thread_runs ARGS...: `fdpo lab ARGS --threads T --out $tmp/table_T.csv` for each T in
# $THREADS, with its wall and CPU seconds and rows; stops with MISMATCH when two thread counts
# give different tables (each solve is sequential, so they must not). Leaves the last table
# at $tmp/table.csv.
lab_thread_runs() {
  local first="" t start end
  for t in $THREADS; do
    start=$(date +%s.%N)
    /usr/bin/time -o "$tmp/time_$t" -f "cpu: user %U s, sys %S s" "$FDPO" lab "$@" --threads "$t" --out "$tmp/table_$t.csv"
    end=$(date +%s.%N)
    printf 'threads=%s  wall %.2f s  (%d rows)\n' "$t" "$(echo "$end - $start" | bc)" "$(($(wc -l < "$tmp/table_$t.csv") - 1))"
    cat "$tmp/time_$t"
    if [ -z "$first" ]; then first="$tmp/table_$t.csv"
    elif ! cmp -s "$first" "$tmp/table_$t.csv"; then echo "MISMATCH: thread counts gave different tables" >&2; exit 1; fi
  done
  cp "$first" "$tmp/table.csv"
}
