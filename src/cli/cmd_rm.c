/* fdpo rm: Bradley-Terry reward-model training (a thin layer over fdpo_rm_train). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/dpo_flags.h"
#include "cli/train_flags.h"
#include "fdpo/core.h"
#include "fdpo/rm.h"
#include "interrupts.h"

/* Shared training flags that do not apply: the backbone comes from --model, lengths from
 * --max-length, the split from --eval-fraction. */
static const char *const NOT_FOR_RM[] = {"model", "tokenizer", "n-layer", "n-head", "n-embd", "n-positions",
                                         "arch", "n-kv-head", "intermediate-size", "rope-theta", "tie-word-embeddings",
                                         "seq-len", "eval-fraction", NULL};



int cmd_rm(int argc, char **argv) {
    static const char usage[] = "fdpo rm --model CKPT --data pairs.jsonl --out DIR [--center-rewards-coefficient C] [flags]";
    fdpo_rm_run_opts o;
    fdpo_rm_run_opts_default(&o);   /* the flags below then set what they name */
    fdpo_flag flags[TRAIN_FLAGS_MAX + 16];
    size_t n = 0;
    const char *model = NULL;
    pref_data_flags data;
    const fdpo_flag own[] = {
        {"model", FLAG_STR, &model, NULL, "backbone checkpoint (a language model gets a new score head; a reward model continues) (required)", 0},
        {"data", FLAG_STR, &o.data, NULL, "preference JSONL {prompt, chosen, rejected[, margin]} (required; see docs/rm.md)", 0},
        {"center-rewards-coefficient", FLAG_FLOAT, &o.center_rewards_coefficient, "0", "TRL's centering term: adds C * mean((r_chosen + r_rejected)^2)", 0},
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) flags[n++] = own[i];
    n = pref_data_flags_add(flags, n, &data, &o.eval_fraction, &o.eval_file, "pairs");
    n = train_flags_add_except(flags, n, &o.train, NOT_FOR_RM);
    train_flags_set_help(flags, n, "batch-size", "pairs per micro-batch (one forward/backward over 2x sequences)");
    train_flags_set_help(flags, n, "eval-every", "held-out loss/accuracy every N steps, at the start and at the end (0: none during the run; eval_summary.json is still written at the end)");
    train_flags_set_help(flags, n, "seed", "seed for the new score head of a language model (score.weight ~ N(0, 0.02)), the held-out "
                                           "split, the data order and LoRA adapters (init, dropout)");
    train_flags_set_default(flags, n, "lr", "1e-5");
    train_flags_set_default(flags, n, "schedule", "linear");
    train_flags_set_default(flags, n, "eval-every", "50");
    int n_pos = 0;
    char **pos = NULL;
    int rc = flags_parse("rm", usage, flags, n, argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    rc = -1;
    if (n_pos > 0) { fdpo_error("unexpected argument '%s' (the data file goes in --data)", pos[0]); goto done; }
    /* on --resume, unset flags take the saved run's values; the library checks the rest */
    if (train_flags_finish(flags, n, &o.train, "rm")) goto done;
    if (!model) { fdpo_error("--model: required (the backbone checkpoint)"); goto done; }
    if (!o.data) { fdpo_error("--data: required (preference JSONL)"); goto done; }
    o.train.init = model;
    if (pref_data_flags_finish(&data, flags, n, &o.pref)) goto done;   /* the library checks the options (fdpo_rm_run_opts_check) */
    interrupts_set(INTERRUPT_STOP_TRAINER);
    rc = fdpo_rm_train(&o);
done:
    free(pos);
    return rc;
}
