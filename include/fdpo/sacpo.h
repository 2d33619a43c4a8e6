/* SACPO (Wachi et al., NeurIPS 2024): safety-constrained alignment done stepwise.
 *
 *   max E[r] - beta D(pi || pi_ref)  s.t.  E[g] >= b
 *
 * For a multiplier lambda > 0 the Lagrangian optimum is pi_ref (f')^-1((r + lambda g - mu)/beta).
 * For reverse KL, pi_ref exp((r + lambda g)/beta) = [pi_ref exp(r/beta)] exp(g/(beta/lambda)),
 * so aligning for r with beta and then that model for g with beta/lambda (each an ordinary
 * f-DPO run on its own preference data, the second with the first's result as reference)
 * reaches the joint optimum; for other f the composition is not exact (fdpo lab
 * constrained --stepwise measures the gap). P-SACPO: merge the weights of models aligned
 * with different lambdas to get the ones between without training them (the paper merges
 * the reward stage, lambda 0, with one model of a large lambda).
 *
 * Layout of OUT (docs/sacpo.md):
 *   OUT/reward                reward-first: the reward stage (shared by every lambda)
 *   OUT/safety-lambda-L       safety-first: the safety stage of lambda L
 *   OUT/lambda-L              the final model of lambda L
 *   OUT/merge-LA-LB-wW        P-SACPO: (1-W) lambda-LA + W lambda-LB, neighbouring lambdas; reward
 *                             first, LA = 0 is OUT/reward (merge-0-L1-wW)
 *   OUT/sacpo.json            the plan and the stages completed (resume skips them)
 * Every stage is an f-DPO run (fdpo_dpo_train) with the template's loss, divergence,
 * trainer options and reference cache; a stage interrupted half-way resumes.
 *
 * Online stages: a stage given a reward spec (reward_spec / safety_spec) instead of a data file
 * runs online f-DPO (fdpo_online_run, include/fdpo/online.h) from its starting model, which
 * is also its reference, with the stage's beta, against that spec: rounds of sampling,
 * scoring, pairing and f-DPO into OUT/<stage>.online/ (round-K/, metrics.jsonl); its last
 * round is then saved as OUT/<stage>, so every stage directory is a checkpoint whichever way
 * it was trained. An interrupted online stage resumes after its last complete round. */
#ifndef FDPO_SACPO_H
#define FDPO_SACPO_H
#include <stddef.h>
#include "fdpo/dpo.h"
#include "fdpo/online.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    fdpo_dpo_run_opts dpo;        /* template: train.init = the model, loss (divergence, beta), trainer options
                                     (train.out is not used: each stage's is a directory in out) */
    const char *reward_data;      /* preference JSONL for helpfulness/reward, or NULL with reward_spec */
    const char *safety_data;      /* preference JSONL for safety, or NULL with safety_spec */
    const char *reward_spec;      /* online reward stage: the reward of a completion (exclusive with reward_data) */
    const char *safety_spec;      /* online safety stage: the safety of a completion (exclusive with safety_data) */
    fdpo_online_opts online;      /* online stages' template: prompts, rounds, n, sampling, pairs,
                                     reward options, dpo (each round's f-DPO run); model, ref, reward,
                                     out, resume and the beta are set per stage */
    const double *lambdas;        /* > 0 each, ascending */
    size_t n_lambdas;
    int safety_first;             /* order: 0 reward-first, 1 safety-first */
    const double *merge_weights;  /* P-SACPO weights in (0, 1) between consecutive lambdas (reward
                                     first: from 0, the reward stage), or NULL */
    size_t n_merge_weights;
    const char *out;
} fdpo_sacpo_opts;

/* Defaults of `fdpo sacpo` (the library owns them; the CLI's flag table shows dpo's values):
 * dpo = fdpo_dpo_run_opts_default's (the stages on files); online = fdpo_online_opts_default's,
 * its rounds' f-DPO run included (lr 1e-4, constant schedule, no held-out split, empty
 * completions skipped), so that an online stage is `fdpo online`; a caller sets the trainer
 * options given to it in both templates; reward-first, no merges. */
void fdpo_sacpo_opts_default(fdpo_sacpo_opts *o);
int fdpo_sacpo_opts_check(const fdpo_sacpo_opts *o);
int fdpo_sacpo_run(const fdpo_sacpo_opts *o);
/* "OUT/lambda-0.5" etc. (malloc'd): the directory a lambda's final model lands in */
char *fdpo_sacpo_lambda_dir(const char *out, double lambda);
/* 1 if name is an entry a sacpo run makes in its OUT: sacpo.json, a stage directory (reward,
 * lambda-L, safety-lambda-L, merge-A-B-wW with the numbers as fdpo_fmt_double writes them,
 * each also with .online), or such a directory's lock file or interrupted save (.tmp, .old).
 * A run that replaces a sacpo run's OUT (--overwrite) leaves these behind. */
int fdpo_sacpo_out_entry(const char *name);

#ifdef __cplusplus
}
#endif

#endif
