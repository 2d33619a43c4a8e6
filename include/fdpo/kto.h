/* KTO (Ethayarajh et al. 2024; TRL KTOTrainer) on unpaired data, with an f-divergence
 * score in place of the log-ratio (the loss is objectives.h fdpo_kto_loss_one; docs/kto.md).
 *
 * Data: JSONL {"prompt", "completion", "label"} (TRL's unpaired preference format), label
 * true = desirable, false = undesirable; prompt and completion are strings or message
 * lists, rendered and tokenized as a preference pair's chosen side (pref.h). Truncation as
 * pref.h with one completion: if prompt + completion exceed max_length the prompt keeps its
 * last max_prompt_length tokens, then the completion its first max_length - prompt.
 *
 * A step over a micro-batch of n examples: l_i = log pi - log pi_ref of completion i after
 * prompt i (summed over completion tokens); the KL reference point pairs completion i with
 * prompt (i+1) mod n (TRL's mismatched pairs), z0 = max(0, mean s~(l_KL)), no gradient.
 * Loss = mean over the step's examples. The reference runs live (the mismatched pairs
 * change with the data order, so they cannot be cached per example). */
#ifndef FDPO_KTO_H
#define FDPO_KTO_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/gpt2.h"
#include "fdpo/objectives.h"
#include "fdpo/pref.h"
#include "fdpo/trainer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int32_t *prompt; size_t n_prompt;
    int32_t *completion; size_t n_completion;   /* <|endoftext|> last unless cut */
    int label;                                   /* 1 desirable, 0 undesirable */
    size_t line;
    int truncated;
} fdpo_unpaired_example;

typedef struct {
    fdpo_unpaired_example *ex;
    size_t n;
    size_t desirable, undesirable;
    fdpo_pref_summary summary;   /* a preference file's (unpaired set): lines, examples kept, truncated, skipped */
} fdpo_unpaired_set;

/* Errors name FILE:LINE and the field: invalid JSON, a missing/non-boolean label, a missing
 * prompt or completion, bad messages; an empty completion or one too long follow
 * opt->on_bad / opt->on_long as for pairs (skips are counted, with the first line of each
 * reason, in summary: fdpo_pref_summary_log and fdpo_pref_summary_json report it as for
 * pairs). With no example left, the error counts lines read and skipped by reason
 * (fdpo_pref_none_usable). */
int fdpo_unpaired_load(const char *path, const fdpo_tokenizer *tok, const fdpo_pref_options *opt,
                       fdpo_unpaired_set *out);
void fdpo_unpaired_free(fdpo_unpaired_set *s);

typedef struct {
    size_t n, desirable, undesirable, tokens;   /* tokens: model positions this rank processed (under MPI its micro-batches' only) */
    double loss, kl;                                   /* kl: z0 of the micro-batches, weighted by their sizes */
    double rewards_chosen, rewards_rejected, margins;  /* beta * l, means over desirable / undesirable */
    double logps_chosen, logps_rejected;               /* policy summed completion log-probs */
    double scores_chosen, scores_rejected;             /* beta * s~(l) */
} fdpo_kto_metrics;

/* Loss and (grad) ACCUMULATED gradients of n examples, micro_batch per forward (0 = all;
 * the KL pairs are formed within each micro-batch; a last micro-batch of one example joins
 * the one before, so that no KL pair is an example's own prompt). norm: examples the step's mean is over.
 * out_l (may be NULL) gets per example {l, l_KL, z0, loss}. */
int fdpo_kto_step(fdpo_gpt2 *policy, fdpo_gpt2 *ref, const fdpo_kto_loss *K, const fdpo_unpaired_example *const *ex,
                  size_t n, size_t micro_batch, size_t max_length, int grad, size_t norm, fdpo_kto_metrics *out,
                  double *out_l);

typedef struct {
    fdpo_train_opts train;       /* train.init = the policy checkpoint */
    const char *data, *eval_file, *ref;
    double eval_fraction;
    fdpo_pref_options pref;
    fdpo_kto_loss loss;
} fdpo_kto_run_opts;
/* Defaults of `fdpo kto` (the library owns them; the CLI's flag table shows the same values):
 * the train options' with lr 1e-6, linear schedule, eval every 50, eval_fraction 0.1; rkl,
 * beta 0.1, both weights 1. */
void fdpo_kto_run_opts_default(fdpo_kto_run_opts *o);
/* The one check of a run's options; errors name the flag. Called by fdpo_kto_train. */
int fdpo_kto_run_opts_check(const fdpo_kto_run_opts *o);
/* The run's settings under their flag names (objective, data shaping, model and reference
 * fixed on --resume), appended to s. */
void fdpo_kto_run_opts_settings(const fdpo_kto_run_opts *o, fdpo_settings *s);
int fdpo_kto_train(const fdpo_kto_run_opts *o);

#ifdef __cplusplus
}
#endif

#endif
