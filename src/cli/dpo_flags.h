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
typedef struct {
    fdpo_dpo_run_opts o;
    const char *model, *divergence, *loss, *layout, *on_long, *bad_pairs;
    double beta, smoothing, gamma, sft;
    long max_length, max_prompt_length;
} dpo_flags;

size_t dpo_flags_add(dpo_flags *v, fdpo_flag *flags, const char *const *skip, size_t n_skip);
/* --resume restoration (train_flags_finish), then the text flags parsed into v->o;
 * errors name the flag. --model is required. */
int dpo_flags_finish(dpo_flags *v, fdpo_flag *flags, size_t n);
#endif
