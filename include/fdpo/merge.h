/* Model merging: linear weight averaging and task arithmetic over checkpoints that share
 * architecture and tokenizer (P-SACPO interpolates models aligned with different lambdas).
 *
 *   linear:          theta = sum_i w_i * theta_i                     (default w_i = 1/n)
 *   task arithmetic: theta = theta_base + sum_i w_i * (theta_i - theta_base)  (default w_i = 1)
 *
 * Each element is summed in double, in the order written above (base first, then the terms
 * in --model order), and rounded to float once: the same numbers as numpy's float64
 * expression cast to float32, which is what tests/py/test_merge.py checks. */
#ifndef FDPO_MERGE_H
#define FDPO_MERGE_H
#include <stddef.h>
#include "fdpo/gpt2.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *const *models; /* --model, one per input checkpoint directory */
    size_t n_models;
    const double *weights;     /* --weight, n_models values; NULL = the defaults above */
    const char *base;          /* --base: task arithmetic relative to this checkpoint; NULL = linear */
} fdpo_merge_opts;

/* Claim the merge's output before any input is loaded: OUT's lock (fdpo_checkpoint_recover,
 * held through the save, so a run or merge into the same OUT meanwhile is refused) and, without
 * overwrite, a refusal of an OUT that holds another run's output: a checkpoint, rounds, stages
 * or a tokenizer (fdpo_out_holds_run) or the metrics.jsonl and summaries of a run that never
 * saved (fdpo_out_run_file). Under MPI a collective: rank 0 looks, and every rank returns its
 * verdict before rank 0 can write OUT. */
int fdpo_merge_claim_out(const char *out, int overwrite);
/* Errors name the flag: "--weight: 3 weights for 2 models". */
int fdpo_merge_opts_check(const fdpo_merge_opts *o);
/* Load the inputs one at a time, check that every config and tokenizer equals the first
 * model's (the base's for task arithmetic), and return the merged model. */
fdpo_gpt2 *fdpo_merge(const fdpo_merge_opts *o);
/* The weight model i gets under o (the given one or the default). */
double fdpo_merge_weight(const fdpo_merge_opts *o, size_t i);
/* LoRA: the base checkpoint (base_dir; NULL = the adapter's base_model_name_or_path) with
 * the PEFT adapter of adapter_dir folded in, W += (alpha/r) B A (transposed for GPT-2's
 * [in, out] weights), each element summed in double and rounded once. A base that is itself
 * an adapter directory is refused (a chain: the fold would count its adapter too). */
fdpo_gpt2 *fdpo_merge_lora(const char *adapter_dir, const char *base_dir);

#ifdef __cplusplus
}
#endif

#endif
