/* The flags of `fdpo dpo`, shared with the commands whose stages are f-DPO runs (sacpo):
 *
 *   dpo_flags v; fdpo_flag flags[DPO_FLAGS_MAX + 8];
 *   size_t n = dpo_flags_add(&v, flags, skip, n_skip);   dpo's table minus the names in skip
 *   flags[n++] = ...;                                      the command's own flags
 *   flags_parse(...); dpo_flags_finish(&v, flags, n);      text flags -> v.o (the run options) */
#ifndef FDPO_CLI_DPO_FLAGS_H
#define FDPO_CLI_DPO_FLAGS_H
#include <stddef.h>
#include "cli/flags.h"
#include "cli/train_flags.h"
#include "fdpo/dpo.h"

#define DPO_FLAGS_MAX (TRAIN_FLAGS_MAX + 24)
/* --seed of the preference trainers (dpo, kto; rm and sacpo say more): what it seeds there, as
 * the shared table's "init, data split and data order" is pretrain's and sft's */
#define SEED_HELP_PREF "seed for the held-out split, the data order and LoRA adapters (init, dropout)"

/* The data-shaping flags of every preference trainer (dpo, rm, kto): --max-length,
 * --max-prompt-length, --on-long, --bad-pairs, --eval-fraction, --eval-file. */
#define PREF_DATA_NFLAGS 6
typedef struct { const char *on_long, *bad_pairs; long max_length, max_prompt_length; } pref_data_flags;
/* Appends the six flags at f + n (what: "pairs" or "examples", for the help texts). */
size_t pref_data_flags_add(fdpo_flag *f, size_t n, pref_data_flags *v, double *eval_fraction, const char **eval_file,
                           const char *what);
/* The parsed text flags -> p; errors name the flag. flags: the command's table, for the one
 * rule the library cannot check, --eval-fraction and --eval-file given together (refused). */
int pref_data_flags_finish(const pref_data_flags *v, const fdpo_flag *flags, size_t n, fdpo_pref_options *p);
typedef struct {
    fdpo_dpo_run_opts o;
    const char *model, *divergence, *loss, *layout;
    double beta, smoothing, gamma, sft;
    pref_data_flags data;
} dpo_flags;

size_t dpo_flags_add(dpo_flags *v, fdpo_flag *flags, const char *const *skip, size_t n_skip);
/* --resume restoration (train_flags_finish), then the text flags parsed into v->o;
 * errors name the flag. --model is required. */
int dpo_flags_finish(dpo_flags *v, fdpo_flag *flags, size_t n);
#endif
