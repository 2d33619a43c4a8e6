/* Bradley-Terry reward models (`fdpo rm`, docs/rm.md): a GPT-2 backbone with a scalar head
 * on the last token's final hidden state, saved as Hugging Face
 * GPT2ForSequenceClassification (score.weight [1, C], num_labels 1, pad_token_id = eot).
 *
 * Inputs. A pair's two sequences are prompt + chosen and prompt + rejected, tokenized by
 * the preference reader (fdpo_pref_load: templates, truncation) with the trailing
 * <|endoftext|> of each completion removed: the reward is read at the last completion
 * token, where transformers pools when pad_token_id = eot. Loss of a step = mean over its
 * pairs of fdpo_rm_loss_pair (objectives.h). */
#ifndef FDPO_RM_H
#define FDPO_RM_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/gpt2.h"
#include "fdpo/pref.h"
#include "fdpo/trainer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* score.weight init of a reward model made from a language model: N(0, 0.02), what
 * transformers' _init_weights gives a new nn.Linear (initializer_range). Not zeros: with
 * w = 0 the backbone gets no gradient until w has moved. */
#define FDPO_RM_INIT_STD 0.02

/* Packed plain batch of sequences prompt + completion (trailing eot dropped), reused. */
typedef struct {
    fdpo_batch batch;
    size_t *seq_offset; int32_t *tokens, *targets;
    size_t cap_tokens, cap_seq;
} fdpo_rm_batch;
/* Add one sequence (prompt ids then completion ids without a trailing eot) to rb. */
void fdpo_rm_batch_reset(fdpo_rm_batch *rb);
void fdpo_rm_batch_add(fdpo_rm_batch *rb, const int32_t *prompt, size_t n_prompt, const int32_t *comp,
                       size_t n_comp, int32_t eot);
void fdpo_rm_batch_free(fdpo_rm_batch *rb);

typedef struct {
    size_t pairs;
    double loss, accuracy, margin, mean_reward, rewards_chosen, rewards_rejected; /* means; ties count 1/2 */
    size_t tokens;   /* model positions this rank processed (under MPI its micro-batches' only) */
} fdpo_rm_metrics;

/* Loss, metrics and (grad) ACCUMULATED gradients of n pairs, micro_batch pairs per
 * forward (0 = all), each with its margin (fdpo_pref_pair.margin). norm: the number of pairs the step's
 * mean is over (>= n with micro-batching, so accumulation is exact). rewards_out (may be
 * NULL) gets [2n]: chosen, rejected. */
int fdpo_rm_step(fdpo_gpt2 *m, fdpo_rm_batch *rb, const fdpo_pref_pair *const *pairs, size_t n, size_t micro_batch, double center_coef, int grad, size_t norm, int32_t eot,
                 fdpo_rm_metrics *out, double *rewards_out);

/* The per-pair "margin" field of a preference JSONL (TRL RewardTrainer), as the loader read it
 * (fdpo_pref_pair.margin, 0 when absent): one that is not a finite number is an error naming
 * PATH:LINE (path: the file the set was loaded from). */
int fdpo_pref_margins_check(const char *path, const fdpo_pref_set *set);

/* A whole run: what `fdpo rm` does. train.init = the backbone (a language model, or a
 * reward model to continue). */
typedef struct {
    fdpo_train_opts train;
    const char *data, *eval_file;
    double eval_fraction;
    double center_rewards_coefficient;
    fdpo_pref_options pref;
} fdpo_rm_run_opts;
/* Defaults of `fdpo rm` (the library owns them; the CLI's flag table shows the same values):
 * the train options' with lr 1e-5, linear schedule, eval every 50, eval_fraction 0.1, long
 * pairs truncated, bad pairs an error, no reward centering. */
void fdpo_rm_run_opts_default(fdpo_rm_run_opts *o);
/* The one check of a run's options; errors name the flag. Called by fdpo_rm_train. */
int fdpo_rm_run_opts_check(const fdpo_rm_run_opts *o);
/* The run's settings under their flag names (objective, data shaping and model fixed on
 * --resume), appended to s. */
void fdpo_rm_run_opts_settings(const fdpo_rm_run_opts *o, fdpo_settings *s);
int fdpo_rm_train(const fdpo_rm_run_opts *o);

/* Load a reward-model directory: config + weights (GPT2ForSequenceClassification) and its
 * tokenizer. A plain language model is refused with an error naming the directory. */
fdpo_gpt2 *fdpo_rm_load(const char *dir, fdpo_tokenizer **tok);

#ifdef __cplusplus
}
#endif

#endif
