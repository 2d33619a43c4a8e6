/* fdpo kto: KTO on unpaired data with an f-divergence score (a thin layer over fdpo_kto_train). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/dpo_flags.h"
#include "cli/train_flags.h"
#include "fdpo/core.h"
#include "fdpo/kto.h"
#include "interrupts.h"

static const char *const NOT_FOR_KTO[] = {"model", "tokenizer", "n-layer", "n-head", "n-embd", "n-positions",
                                          "arch", "n-kv-head", "intermediate-size", "rope-theta", "tie-word-embeddings",
                                          "seq-len", "eval-fraction", NULL};



int cmd_kto(int argc, char **argv) {
    static const char usage[] =
        "fdpo kto --model CKPT --data unpaired.jsonl --out DIR [--beta B] [--divergence rkl|fkl|js|alpha:A] "
        "[--desirable-weight W] [--undesirable-weight W] [flags]";
    fdpo_kto_run_opts o;
    fdpo_kto_run_opts_default(&o);   /* the flags below then set what they name */
    fdpo_flag flags[TRAIN_FLAGS_MAX + 16];
    size_t n = 0;
    const char *model = NULL, *divergence = NULL;
    pref_data_flags data;
    const fdpo_flag own[] = {
        {"model", FLAG_STR, &model, NULL, "policy checkpoint to align (required); also the reference unless --ref", 0},
        {"data", FLAG_STR, &o.data, NULL, "unpaired JSONL {prompt, completion, label: true|false} (required; docs/kto.md)", 0},
        {"ref", FLAG_STR, &o.ref, NULL, "reference checkpoint (default: the initial policy)", 0},
        {"beta", FLAG_FLOAT, &o.loss.beta, "0.1", "strength of the divergence constraint (> 0)", 0},
        {"divergence", FLAG_STR, &divergence, "rkl", "score s(l) in place of the log-ratio: rkl (= KTO), fkl, js, alpha:A", 0},
        {"desirable-weight", FLAG_FLOAT, &o.loss.desirable_weight, "1", "TRL desirable_weight: weight of desirable examples' losses", 0},
        {"undesirable-weight", FLAG_FLOAT, &o.loss.undesirable_weight, "1", "TRL undesirable_weight: weight of undesirable examples' losses", 0},
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) flags[n++] = own[i];
    n = pref_data_flags_add(flags, n, &data, &o.eval_fraction, &o.eval_file, "examples");
    n = train_flags_add_except(flags, n, &o.train, NOT_FOR_KTO);
    train_flags_set_help(flags, n, "batch-size", "examples per micro-batch, at least 2 (the KL reference point z0 pairs each with another example of it)");
    train_flags_set_help(flags, n, "seed", SEED_HELP_PREF);   /* no init: the model is --model */
    train_flags_set_default(flags, n, "lr", "1e-6");
    train_flags_set_default(flags, n, "schedule", "linear");
    train_flags_set_default(flags, n, "eval-every", "50");
    train_flags_set_help(flags, n, "eval-every", "held-out KTO loss and rewards every N steps, at the start and at the end (0: none during the run; eval_summary.json is still written at the end)");
    train_flags_set_help(flags, n, "bad-pairs", "empty completions: error or skip (counted)");
    int n_pos = 0;
    char **pos = NULL;
    int rc = flags_parse("kto", usage, flags, n, argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    rc = -1;
    if (n_pos > 0) { fdpo_error("unexpected argument '%s' (the data file goes in --data)", pos[0]); goto done; }
    /* on --resume, unset flags take the saved run's values; the library checks the rest */
    if (train_flags_finish(flags, n, &o.train, "kto")) goto done;
    if (!model) { fdpo_error("--model: required (the policy checkpoint)"); goto done; }
    if (!o.data) { fdpo_error("--data: required (unpaired JSONL)"); goto done; }
    o.train.init = model;
    if (fdpo_divergence_parse(divergence, &o.loss.div)) { fdpo_error_context("--divergence"); goto done; }
    if (pref_data_flags_finish(&data, flags, n, &o.pref)) goto done;   /* the library checks the options (fdpo_kto_run_opts_check) */
    interrupts_set(INTERRUPT_STOP_TRAINER);
    rc = fdpo_kto_train(&o);
done:
    free(pos);
    return rc;
}
