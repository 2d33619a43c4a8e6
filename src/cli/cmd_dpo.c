/* fdpo dpo: f-DPO preference optimisation (a thin layer over fdpo_dpo_train). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/train_flags.h"
#include "fdpo/core.h"
#include "fdpo/dpo.h"

/* Shared training flags that do not apply to DPO: the model comes from --policy (not a
 * random init), lengths from --max-length, the split from --eval-fraction. */
static const char *const NOT_FOR_DPO[] = {"init", "tokenizer", "n-layer", "n-head", "n-embd", "n-positions",
                                          "seq-len", "val-fraction"};

static int not_for_dpo(const char *name) {
    for (size_t i = 0; i < sizeof NOT_FOR_DPO / sizeof NOT_FOR_DPO[0]; i++)
        if (!strcmp(name, NOT_FOR_DPO[i])) return 1;
    return 0;
}

int cmd_dpo(int argc, char **argv) {
    static const char usage[] =
        "fdpo dpo --policy CKPT --data FILE.jsonl --out DIR [--divergence rkl|fkl|js|alpha:A] "
        "[--loss sigmoid|robust|hinge|ipo|simpo] [--beta B] [flags]";
    fdpo_dpo_run_opts o;
    memset(&o, 0, sizeof o);
    fdpo_flag all[TRAIN_FLAGS_MAX], flags[TRAIN_FLAGS_MAX + 24];
    size_t n_all = train_flags_add(all, 0, &o.train), n = 0;
    const char *policy = NULL, *divergence = NULL, *loss = NULL, *layout = NULL, *on_long = NULL, *bad_pairs = NULL;
    double beta, smoothing, gamma, sft;
    long max_length, max_prompt_length;
    const fdpo_flag own[] = {
        {"policy", FLAG_STR, &policy, NULL, "checkpoint directory to align (required); also the reference unless --ref", 0},
        {"data", FLAG_STR, &o.data, NULL, "preference JSONL {prompt, chosen, rejected} (required; see docs/dpo.md)", 0},
        {"divergence", FLAG_STR, &divergence, "rkl", "f-divergence: rkl (= DPO), fkl, js, alpha:A with 0<A<1 (paper convention; TRL's alpha = 1 - A)", 0},
        {"loss", FLAG_STR, &loss, "sigmoid", "preference loss: sigmoid, robust, hinge, ipo (per-token means), simpo (no reference)", 0},
        {"beta", FLAG_FLOAT, &beta, "0.1", "strength of the divergence constraint (> 0)", 0},
        {"label-smoothing", FLAG_FLOAT, &smoothing, "0", "label noise e in [0, 0.5) for sigmoid (cDPO) and robust", 0},
        {"simpo-gamma", FLAG_FLOAT, &gamma, "0.5", "SimPO target margin gamma", 0},
        {"sft-weight", FLAG_FLOAT, &sft, "0", "RPO: add this times the mean NLL per chosen token of the step", 0},
        {"max-length", FLAG_INT, &max_length, "0", "max tokens of prompt + one completion (0: the policy's n_positions)", 0},
        {"max-prompt-length", FLAG_INT, &max_prompt_length, "0", "prompt keeps its last N tokens when a pair is too long (0: max-length/2)", 0},
        {"on-long", FLAG_STR, &on_long, "truncate", "pairs longer than --max-length: truncate, skip (counted) or error", 0},
        {"bad-pairs", FLAG_STR, &bad_pairs, "error", "empty completions / chosen == rejected: error or skip (counted)", 0},
        {"eval-fraction", FLAG_FLOAT, &o.eval_fraction, "0.1", "fraction of pairs held out for eval (seeded by --seed)", 0},
        {"eval-file", FLAG_STR, &o.eval_file, NULL, "held-out preference JSONL (replaces --eval-fraction)", 0},
        {"ref", FLAG_STR, &o.ref, NULL, "reference checkpoint (default: the initial policy)", 0},
        {"ref-live", FLAG_BOOL, &o.ref_live, "0", "keep the reference in memory and run it every step instead of caching its log-probs", 0},
        {"ref-cache-dir", FLAG_STR, &o.ref_cache_dir, NULL, "where cached reference log-probs live (default: .fdpo-cache beside --out)", 0},
        {"layout", FLAG_STR, &layout, "shared", "pair layout: shared (prompt computed once) or plain (two sequences)", 0},
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) flags[n++] = own[i];
    for (size_t i = 0; i < n_all; i++) {
        if (not_for_dpo(all[i].name)) continue;
        flags[n] = all[i];
        if (!strcmp(all[i].name, "batch-size")) flags[n].help = "pairs per micro-batch (one forward/backward)";
        if (!strcmp(all[i].name, "grad-accum")) flags[n].help = "micro-batches per optimizer step (the loss is the mean over all its pairs)";
        if (!strcmp(all[i].name, "eval-every")) flags[n].help = "held-out reward accuracy/margins every N steps, at the start and at the end (0: never)";
        n++;
    }
    /* the dropped flags' fields: shapes come from --policy, so only the shared checks see these */
    o.train.n_layer = o.train.n_head = o.train.n_embd = o.train.n_positions = o.train.seq_len = 1;
    train_flags_set_default(flags, n, "lr", "1e-6");
    train_flags_set_default(flags, n, "schedule", "linear");
    train_flags_set_default(flags, n, "eval-every", "50");
    int n_pos = 0;
    char **pos = NULL;
    int rc = flags_parse("dpo", usage, flags, n, argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    rc = -1;
    if (n_pos > 0) { fdpo_error("unexpected argument '%s' (the data file goes in --data)", pos[0]); goto done; }
    /* on --resume, unset flags take the saved run's values; the library checks the rest */
    if (train_flags_finish(flags, n, &o.train)) goto done;
    if (!policy) { fdpo_error("--policy: required (the checkpoint to align)"); goto done; }
    o.train.init = policy;
    if (fdpo_divergence_parse(divergence, &o.dpo.loss.div)) { fdpo_error_context("--divergence"); goto done; }
    if (fdpo_loss_parse(loss, &o.dpo.loss.kind)) goto done;
    if (fdpo_layout_parse(layout, &o.dpo.layout)) goto done;
    o.dpo.loss.beta = beta;
    o.dpo.loss.label_smoothing = smoothing;
    o.dpo.loss.simpo_gamma = gamma;
    o.dpo.loss.sft_weight = sft;
    if (max_length < 0) { fdpo_error("--max-length: %ld must be >= 0", max_length); goto done; }
    if (max_prompt_length < 0) { fdpo_error("--max-prompt-length: %ld must be >= 0", max_prompt_length); goto done; }
    o.pref.max_length = (size_t)max_length;
    o.pref.max_prompt_length = (size_t)max_prompt_length;
    if (!strcmp(on_long, "truncate")) o.pref.on_long = FDPO_PREF_LONG_TRUNCATE;
    else if (!strcmp(on_long, "skip")) o.pref.on_long = FDPO_PREF_LONG_SKIP;
    else if (!strcmp(on_long, "error")) o.pref.on_long = FDPO_PREF_LONG_ERROR;
    else { fdpo_error("--on-long: '%s' is not truncate, skip or error", on_long); goto done; }
    if (!strcmp(bad_pairs, "error")) o.pref.on_bad = FDPO_PREF_ERROR;
    else if (!strcmp(bad_pairs, "skip")) o.pref.on_bad = FDPO_PREF_SKIP;
    else { fdpo_error("--bad-pairs: '%s' is not error or skip", bad_pairs); goto done; }
    train_catch_interrupts();
    rc = fdpo_dpo_train(&o);
done:
    free(pos);
    return rc;
}
