#!/usr/bin/env bash
# Mutation testing: do the focused tests notice a planted bug?
#
#   scripts/mutate.sh [MUTANTS_FILE] [NAME_FILTER]      (default scripts/mutants.txt)
#
# MUTANTS_FILE holds one block per mutant (blank lines and '#' comments ignored):
#   @ src/objectives/pref_loss.c  short name of the bug
#   - the original text (one line, must occur exactly once in the file)
#   + its replacement
# Every mutant is applied in a scratch copy of the tree under /tmp (your working files are
# never touched), built incrementally, and judged by the tests mapped to its file below
# (pytest -x: the first failure kills it). Prints KILLED / SURVIVED / STALE (snippet not
# found once: the file changed) / NOBUILD (the mutant does not compile) per mutant and a
# summary; exits 1 if a mutant survived. Run it with nice: it takes minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MUTANTS=$(readlink -f "${1:-scripts/mutants.txt}")
FILTER=${2:-}
PY=/usr/bin/python3

# which tests judge a mutant of which file
tests_for() {
  case "$1" in
    src/objectives/*) echo "tests/py/test_objectives.py tests/py/test_dpo_metrics.py build/tests/test_objectives" ;;
    src/train/dpo.c) echo "tests/py/test_dpo_metrics.py tests/py/test_dpo.py" ;;
    src/train/*) echo "tests/py/test_train.py tests/py/test_dpo_metrics.py build/tests/test_train" ;;
    src/eval/sample.c) echo "tests/py/test_generate_decode.py tests/py/test_generate.py" ;;
    src/eval/*) echo "tests/py/test_eval_metrics.py" ;;
    src/lab/*) echo "tests/py/test_lab.py tests/py/test_lab_newton.py" ;;
    src/model/lora.c|src/io/peft.c) echo "tests/py/test_lora.py" ;;
    src/model/expf_libm.c|src/model/gpt2_decode.c) echo "tests/py/test_generate_decode.py" ;;
    src/model/*) echo "tests/py/test_model_parity.py tests/py/test_dpo_metrics.py tests/py/test_attention.py" ;;
    src/data/*) echo "tests/py/test_pairs.py tests/py/test_dpo_data.py" ;;
    *) echo "" ;;
  esac
}

SCRATCH=$(mktemp -d /tmp/fdpo-mutate.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
# the tree as it is now (tracked + untracked, not ignored), mtimes kept; the build folder
# comes along so that the first build is incremental
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$SCRATCH"
[ -d build ] && cp -a build "$SCRATCH/"
[ -e node_modules ] && ln -s "$(readlink -f node_modules)" "$SCRATCH/node_modules"
cd "$SCRATCH"
export FDPO_BIN="$SCRATCH/build/fdpo" FDPO_HARNESS="$SCRATCH/build/fdpo-harness" CK_FORK=yes

build() { make -j2 all build/tests/test_objectives build/tests/test_train >"$SCRATCH/build.log" 2>&1; }

# 0 if every test passes
run_tests() {
  local t
  for t in "$@"; do
    if [[ $t == build/tests/* ]]; then
      timeout 600 "$t" >"$SCRATCH/test.log" 2>&1 || return 1
    else
      timeout 600 $PY -m pytest -x -q -p no:cacheprovider "$t" >"$SCRATCH/test.log" 2>&1 || return 1
    fi
  done
  return 0
}

# apply FILE ORIGINAL REPLACEMENT: exact, unique substring replacement; 2 when not found once
apply() {
  $PY - "$@" <<'EOF'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(2)
open(path, "w").write(text.replace(old, new))
EOF
}

# parse the mutant file into parallel arrays
files=(); names=(); olds=(); news=()
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    "@ "*) rest=${line#@ }; files+=("${rest%% *}"); n=${rest#* }; [ "$n" = "$rest" ] && n=""; names+=("$n") ;;
    "- "*) olds+=("${line#- }") ;;
    "+ "*) news+=("${line#+ }") ;;
    "" | "#"*) ;;
    *) echo "mutate: $MUTANTS: cannot parse line: $line" >&2; exit 2 ;;
  esac
done <"$MUTANTS"
if [ ${#files[@]} -ne ${#olds[@]} ] || [ ${#files[@]} -ne ${#news[@]} ]; then
  echo "mutate: $MUTANTS: every '@ FILE NAME' needs one '- original' and one '+ replacement' line" >&2
  exit 2
fi

echo "mutate: ${#files[@]} mutants; scratch tree $SCRATCH"
if ! build; then echo "mutate: the unmutated tree does not build:"; tail -20 build.log; exit 2; fi
# baseline: every test set used must pass before mutation means anything
declare -A seen=()
for i in "${!files[@]}"; do
  [ -n "$FILTER" ] && [[ "${files[$i]}: ${names[$i]}" != *"$FILTER"* ]] && continue
  for t in $(tests_for "${files[$i]}"); do
    [ -n "${seen[$t]:-}" ] && continue
    seen[$t]=1
    if ! run_tests "$t"; then echo "mutate: baseline test fails without a mutant: $t"; tail -20 test.log; exit 2; fi
  done
done

killed=0; survived=0; stale=0; nobuild=0; survivors=()
for i in "${!files[@]}"; do
  f=${files[$i]} name="${files[$i]}: ${names[$i]}"
  [ -n "$FILTER" ] && [[ $name != *"$FILTER"* ]] && continue
  tests=$(tests_for "$f")
  if [ -z "$tests" ]; then echo "mutate: no tests mapped for $f (edit tests_for)" >&2; exit 2; fi
  cp -p "$f" "$SCRATCH/orig"
  apply "$f" "${olds[$i]}" "${news[$i]}"
  rc=$?
  if [ $rc -ne 0 ]; then
    printf 'STALE    %s (original text not found exactly once)\n' "$name"; stale=$((stale + 1)); continue
  fi
  t0=$SECONDS
  if ! build; then
    printf 'NOBUILD  %s\n' "$name"; nobuild=$((nobuild + 1))
  elif run_tests $tests; then
    printf 'SURVIVED %s (%ds)\n' "$name" $((SECONDS - t0)); survived=$((survived + 1)); survivors+=("$name")
  else
    printf 'KILLED   %s (%ds)\n' "$name" $((SECONDS - t0)); killed=$((killed + 1))
  fi
  cp "$SCRATCH/orig" "$f" && touch "$f" # new mtime: the next build recompiles the original
done
build || { echo "mutate: the restored tree does not build"; exit 2; }
echo "mutate: $killed killed, $survived survived, $stale stale, $nobuild did not build"
for s in "${survivors[@]}"; do echo "  survived: $s"; done
[ "$survived" -eq 0 ]
