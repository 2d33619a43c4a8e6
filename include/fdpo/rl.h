/* RLHF with an f-divergence penalty (`fdpo rl`, docs/rl.md): maximise
 * E[r] - beta D_f(pi || pi_ref) by policy gradient with the sequence-level shaped reward
 * r - beta f'(pi(y)/pi_ref(y)) and RLOO or GRPO advantages over k samples per prompt. */
#ifndef FDPO_RL_H
#define FDPO_RL_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/eval.h"
#include "fdpo/gpt2.h"
#include "fdpo/objectives.h"
#include "fdpo/trainer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { FDPO_RL_RLOO, FDPO_RL_GRPO } fdpo_rl_algo;
int fdpo_rl_algo_parse(const char *name, fdpo_rl_algo *a); /* "rloo" | "grpo" */

typedef struct {
    fdpo_rl_algo algo;
    fdpo_divergence div;   /* admissible: rkl, fkl, js, alpha:A */
    double beta;           /* > 0 */
    size_t k;              /* samples per prompt (>= 2); samples are prompt-major */
    double grpo_eps;       /* TRL: 1e-4 */
    /* The training step keeps the completion rows' [K, V] logits for its backward (K the
     * step's completion tokens) when they take at most this many bytes (0:
     * FDPO_RL_LOGITS_MAX_BYTES; GPT-2: the fused head's per-batch budget,
     * fdpo_batch.head_keep_max_bytes), and recomputes them chunk by chunk in the backward
     * (one more K x V x C GEMM) above it. Both give the same log-probs and gradients up to
     * rounding. */
    size_t logits_max_bytes;
} fdpo_rl_config;
#define FDPO_RL_LOGITS_MAX_BYTES FDPO_LM_LOGITS_KEEP_MAX_BYTES /* a trained step's budget, as pretrain/SFT's */
int fdpo_rl_config_check(const fdpo_rl_config *c); /* names the flag */

/* Means over one step's samples (their metrics.jsonl names: docs/rl.md "Metrics"). A rank's
 * fdpo_rl_step gives its share of them (its sum / n_total), so the ranks' values add up to the step's;
 * advantage_sq is the mean square of the advantages, advantage_std its square root. kl,
 * entropy, fdiv (the estimate E_pi[f(u)/u] of D_f(pi || pi_ref)) and shaped all take log pi
 * from the training forward, the one the loss differentiates (not the sampler's sums, which
 * differ from it in the last bits in fp32 and by ~3e-3 per sequence in bf16: docs/rl.md). */
typedef struct {
    double loss, scores, kl, entropy, shaped, advantage_std, advantage_sq, fdiv;
    size_t samples, tokens;
} fdpo_rl_metrics;

/* One step on FIXED samples: n = groups * k sequences (prompt-major), sample i = prompt ids
 * prompt[i][0..n_prompt[i]) then completion comp[i][0..n_comp[i]) (n_comp >= 1; completions
 * include a final EOT when sampling ended there, and it is scored). reward[i] the reward,
 * ref_logp[i] = sum of log pi_ref over the completion tokens.
 * Runs the policy forward, l_i = logp_i - ref_logp_i, shaped_i = r_i - beta f'(e^l_i) (held
 * constant), advantages per group, loss = -(1/n_total) sum_i adv_i logp_i, and ACCUMULATES its
 * gradient into m->grads. n_total >= n is the number of samples in the whole step: n when one
 * process takes them all; under MPI each rank passes its block of whole groups, and the sum
 * of the ranks' losses and gradients is the step's. adv_out (may be NULL) gets the n
 * advantages. Consecutive samples with the same prompt (equal ids) run as one sequence
 * with the prompt computed once (docs/rl.md "Shared prompts"). */
int fdpo_rl_step(fdpo_gpt2 *m, const fdpo_rl_config *c, size_t n, size_t n_total, int32_t *const *prompt,
                 const size_t *n_prompt, int32_t *const *comp, const size_t *n_comp, const double *reward,
                 const double *ref_logp, double *adv_out, fdpo_rl_metrics *out);
/* ref_logp[i] = the sum of log ref over sample i's completion tokens, from a forward of ref on
 * the very batch fdpo_rl_step(m, c, n, ...) runs on the same samples (the same packing, head
 * settings and rows): when ref's weights equal m's, ref_logp equals the step's log pi to the
 * bit, so l = 0 exactly (a reference scored in another layout gave l of rounding noise,
 * which GRPO's std normalisation and Adam turned into a full lr step). Overwrites ref's
 * activations (ref is not const); LoRA dropout off; not collective. */
int fdpo_rl_ref_logp(fdpo_gpt2 *ref, const fdpo_rl_config *c, size_t n, int32_t *const *prompt,
                     const size_t *n_prompt, int32_t *const *comp, const size_t *n_comp, double *ref_logp);

/* A whole run: steps of (sample k completions for each of prompts_per_step prompts from the
 * current policy, score, fdpo_rl_step, clip, lr schedule, AdamW), an fdpo_trainer run
 * (include/fdpo/trainer.h) whose items are the prompts in file order: OUT gets metrics.jsonl
 * (with time/sampling, time/scoring, time/training seconds per step), checkpoints with
 * training state every save_every steps, at stop_at, on fdpo_trainer_request_stop and at the
 * end, and train.resume continues one bit-exactly (the sampling seed of step s is
 * fdpo_round_seed(seed, s), so it needs no RNG state; the reference is fixed). train: lr,
 * schedule, steps, grad_clip, adam settings, seed, threads, out, resume, stop_at, save_every,
 * log_every, overwrite, quiet (train.init/tokenizer/batch_size are set from the fields below;
 * sample.batch is the run's: all of a step's samples on a rank decode together, up to 64).
 * Under MPI each rank samples, and computes the gradient of, its block of each step's prompts.
 * A rank's block runs as micro-batches of whole groups of at most 1024 packed tokens (one group
 * at least), each scored by the reference (fdpo_rl_ref_logp) and trained (fdpo_rl_step) as
 * the same batch. */
typedef struct {
    fdpo_train_opts train;
    const char *model, *ref, *prompts, *reward;
    fdpo_reward_options reward_opts;
    fdpo_rl_config rl;
    long prompts_per_step;
    fdpo_sample_config sample;   /* its seed is not read: the samples are seeded by train.seed */
} fdpo_rl_run_opts;
/* Defaults of `fdpo rl` (the library owns them; the CLI's flag table shows the same values):
 * the train options' with lr 1e-5, constant schedule, 100 steps; rloo, rkl, beta 0.05, k 4,
 * 8 prompts per step, grpo_eps 1e-4; sampling at temperature 1, top-p 1, 32 new tokens,
 * seeded by train.seed; a cmd: reward's timeout 60 s. */
void fdpo_rl_run_opts_default(fdpo_rl_run_opts *o);
/* The one check of a run's options (the training options the run uses through
 * fdpo_train_opts_check, as sft and dpo check them); errors name the flag. Called by
 * fdpo_rl_train. */
int fdpo_rl_run_opts_check(const fdpo_rl_run_opts *o);
int fdpo_rl_train(const fdpo_rl_run_opts *o);
/* The run's own settings under their flag names (saved in training_state.json; --resume
 * refuses a different fixed one). */
void fdpo_rl_run_opts_settings(const fdpo_rl_run_opts *o, fdpo_settings *s);
/* Shared by the on-policy loops (rl, online --mode step): the sampling and reward settings,
 * and the fingerprint of a prompt list (resume refuses other prompts). */
void fdpo_sample_config_settings(const fdpo_sample_config *c, const fdpo_reward_options *r, fdpo_settings *s);
uint64_t fdpo_prompts_hash(char *const *prompts, size_t n);

/* Summed log-probs under m of n samples' tokens (completion, EOT included) after their prompts
 * ids[s.prompt_index]: the reference term of `fdpo online`'s pairs (fdpo rl scores its
 * reference with fdpo_rl_ref_logp, in its training step's batches). One training forward
 * (fused head, completion rows only; consecutive samples of one prompt share it, across
 * groups too) per micro-batch of <= 1024 packed tokens, not one decoder pass per sample; it
 * overwrites m's activations (so m is not const), LoRA dropout off. Collective under MPI: the ranks split the micro-batches and every rank gets
 * all n values, bit-identical whatever the number of ranks. */
int fdpo_samples_logp(fdpo_gpt2 *m, int32_t *const *ids, const size_t *lens, const fdpo_sample *s, size_t n,
                      double *logp);

#ifdef __cplusplus
}
#endif

#endif
