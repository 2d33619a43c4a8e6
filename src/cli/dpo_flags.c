/* The flag table of `fdpo dpo` and its mapping onto fdpo_dpo_run_opts (cli/dpo_flags.h). */
#include <stdio.h>
#include <string.h>
#include "cli/dpo_flags.h"
#include "fdpo/core.h"

/* Shared training flags that do not apply to DPO: the model comes from dpo's own --model (a
 * required checkpoint, not a random init), lengths from --max-length, the split from
 * --eval-fraction. */
static const char *const NOT_FOR_DPO[] = {"model", "tokenizer", "n-layer", "n-head", "n-embd", "n-positions",
                                          "arch", "n-kv-head", "intermediate-size", "rope-theta", "tie-word-embeddings",
                                          "seq-len", "eval-fraction"};

static int listed(const char *name, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(name, list[i])) return 1;
    return 0;
}

size_t dpo_flags_add(dpo_flags *v, fdpo_flag *flags, const char *const *skip, size_t n_skip) {
    memset(v, 0, sizeof *v);
    fdpo_dpo_run_opts *o = &v->o;
    fdpo_dpo_run_opts_default(o);   /* the flags below then set what they name */
    fdpo_flag all[TRAIN_FLAGS_MAX];
    size_t n_all = train_flags_add(all, 0, &o->train), n = 0;
    const fdpo_flag own[] = {
        {"model", FLAG_STR, &v->model, NULL, "checkpoint directory to align (required); also the reference unless --ref", 0},
        {"data", FLAG_STR, &o->data, NULL, "preference JSONL {prompt, chosen, rejected} (required; see docs/dpo.md)", 0},
        {"divergence", FLAG_STR, &v->divergence, "rkl", "f-divergence: rkl (= DPO), fkl, js, alpha:A with 0<A<1 (paper convention; TRL's alpha = 1 - A)", 0},
        {"loss", FLAG_STR, &v->loss, "sigmoid", "preference loss: sigmoid, robust, hinge, ipo (per-token means), simpo (no reference)", 0},
        {"beta", FLAG_FLOAT, &v->beta, "0.1", "strength of the divergence constraint (> 0)", 0},
        {"label-smoothing", FLAG_FLOAT, &v->smoothing, "0", "label noise e in [0, 0.5) for sigmoid (cDPO) and robust", 0},
        {"simpo-gamma", FLAG_FLOAT, &v->gamma, "0.5", "SimPO target margin gamma", 0},
        {"sft-weight", FLAG_FLOAT, &v->sft, "0", "RPO: add this times the mean NLL per chosen token of the step", 0},
        {"ref", FLAG_STR, &o->ref, NULL, "reference checkpoint (default: the initial policy)", 0},
        {"ref-live", FLAG_BOOL, &o->ref_live, "0", "keep the reference in memory and run it every step instead of caching its log-probs", 0},
        {"ref-cache-dir", FLAG_STR, &o->ref_cache_dir, NULL, "where cached reference log-probs live (default: .fdpo-cache beside --out)", 0},
        {"layout", FLAG_STR, &v->layout, "shared", "pair layout: shared (prompt computed once) or plain (two sequences)", 0},
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (!listed(own[i].name, skip, n_skip)) flags[n++] = own[i];
    fdpo_flag data[PREF_DATA_NFLAGS];
    pref_data_flags_add(data, 0, &v->data, &o->eval_fraction, &o->eval_file, "pairs");
    for (size_t i = 0; i < PREF_DATA_NFLAGS; i++)
        if (!listed(data[i].name, skip, n_skip)) flags[n++] = data[i];
    for (size_t i = 0; i < n_all; i++) {
        if (listed(all[i].name, NOT_FOR_DPO, sizeof NOT_FOR_DPO / sizeof NOT_FOR_DPO[0]) || listed(all[i].name, skip, n_skip)) continue;
        flags[n] = all[i];
        if (!strcmp(all[i].name, "batch-size")) flags[n].help = "pairs per micro-batch (one forward/backward)";
        if (!strcmp(all[i].name, "grad-accum")) flags[n].help = "micro-batches per optimizer step (the loss is the mean over all its pairs)";
        if (!strcmp(all[i].name, "eval-every")) flags[n].help = "held-out reward accuracy/margins every N steps, at the start and at the end (0: none during the run; eval_summary.json is still written at the end)";
        if (!strcmp(all[i].name, "seed")) flags[n].help = SEED_HELP_PREF;   /* no init: the model is --model */
        n++;
    }
    train_flags_set_default(flags, n, "lr", "1e-6");
    train_flags_set_default(flags, n, "schedule", "linear");
    train_flags_set_default(flags, n, "eval-every", "50");
    return n;
}

int dpo_flags_finish(dpo_flags *v, fdpo_flag *flags, size_t n) {
    fdpo_dpo_run_opts *o = &v->o;
    /* on --resume, unset flags take the saved run's values; the library checks the rest */
    if (train_flags_finish(flags, n, &o->train, "dpo")) return -1;
    if (!v->model) return fdpo_error("--model: required (the checkpoint to align)");
    o->train.init = v->model;
    if (fdpo_divergence_parse(v->divergence, &o->dpo.loss.div)) return fdpo_error_context("--divergence");
    if (fdpo_loss_parse(v->loss, &o->dpo.loss.kind)) return -1;
    if (fdpo_layout_parse(v->layout, &o->dpo.layout)) return -1;
    o->dpo.loss.beta = v->beta;
    o->dpo.loss.label_smoothing = v->smoothing;
    o->dpo.loss.simpo_gamma = v->gamma;
    o->dpo.loss.sft_weight = v->sft;
    return pref_data_flags_finish(&v->data, flags, n, &o->pref);
}

size_t pref_data_flags_add(fdpo_flag *f, size_t n, pref_data_flags *v, double *eval_fraction, const char **eval_file,
                           const char *what) {
    static char help[4][160];   /* the texts name what is shaped: pairs or examples */
    snprintf(help[0], sizeof help[0], "prompt keeps its last N tokens when one of the %s is too long (0: max-length/2; --on-long truncate only)", what);
    snprintf(help[1], sizeof help[1], "%s longer than --max-length: truncate, skip (counted) or error", what);
    snprintf(help[2], sizeof help[2], "fraction of %s held out for eval (seeded by --seed)", what);
    snprintf(help[3], sizeof help[3], "held-out JSONL of %s (instead of the --eval-fraction split: not with it)", what);
    f[n++] = (fdpo_flag){"max-length", FLAG_COUNT, &v->max_length, "0", "max tokens of prompt + one completion (0: the model's n_positions)", 0};
    f[n++] = (fdpo_flag){"max-prompt-length", FLAG_COUNT, &v->max_prompt_length, "0", help[0], 0};
    f[n++] = (fdpo_flag){"on-long", FLAG_STR, &v->on_long, "truncate", help[1], 0};
    f[n++] = (fdpo_flag){"bad-pairs", FLAG_STR, &v->bad_pairs, "error", "empty completions / chosen == rejected: error or skip (counted)", 0};
    f[n++] = (fdpo_flag){"eval-fraction", FLAG_FLOAT, eval_fraction, "0.1", help[2], 0};
    f[n++] = (fdpo_flag){"eval-file", FLAG_STR, eval_file, NULL, help[3], 0};
    return n;
}

int pref_data_flags_finish(const pref_data_flags *v, const fdpo_flag *flags, size_t n, fdpo_pref_options *p) {
    /* the library cannot tell a given --eval-fraction from its default, which --eval-file
     * replaces: given together, the fraction would be dropped without a word */
    if (flags_was_set(flags, n, "eval-file") && flags_was_set(flags, n, "eval-fraction"))
        return fdpo_error("--eval-fraction: has no use with --eval-file (the file is the held-out set; the training "
                          "data are not split): give one of the two");
    p->max_length = (size_t)v->max_length;
    p->max_prompt_length = (size_t)v->max_prompt_length;
    if (!strcmp(v->on_long, "truncate")) p->on_long = FDPO_PREF_LONG_TRUNCATE;
    else if (!strcmp(v->on_long, "skip")) p->on_long = FDPO_PREF_LONG_SKIP;
    else if (!strcmp(v->on_long, "error")) p->on_long = FDPO_PREF_LONG_ERROR;
    else return fdpo_error("--on-long: '%s' is not truncate, skip or error", v->on_long);
    if (!strcmp(v->bad_pairs, "error")) p->on_bad = FDPO_PREF_ERROR;
    else if (!strcmp(v->bad_pairs, "skip")) p->on_bad = FDPO_PREF_SKIP;
    else return fdpo_error("--bad-pairs: '%s' is not error or skip", v->bad_pairs);
    return 0;
}
