/* f-DPO: pair batches in two layouts, the training/eval step, and the reference log-prob
 * cache. The loss itself lives in objectives (fdpo_pref_loss_pair); the optimizer in train.
 *
 * Layouts (a pair = prompt p[0..P), chosen c[0..Cw), rejected r[0..Cl)):
 *   PLAIN   two sequences per pair: p + c[0..Cw-1) and p + r[0..Cl-1) (the last completion
 *           token is a target only, never an input, so it is not fed).
 *   SHARED  one sequence per pair: p[0..P-1) in branch 0, then branch 1 =
 *           [p[P-1], c[0..Cw-1)] and branch 2 = [p[P-1], r[0..Cl-1)], both branches at
 *           positions P-1, P, ... . The last prompt token is duplicated into each branch
 *           because its next-token target differs (c[0] vs r[0]); the copy sees exactly the
 *           context it has in the plain layout, so both layouts compute the same function.
 * In both, the targets of a pair's chosen range are c[0..Cw) and of its rejected range
 * r[0..Cl); every other position has target -1 (prompt tokens are never scored).
 *
 * Conventions of the step (docs/dpo.md):
 *   l = logp_policy - logp_ref summed over completion tokens (ipo: per-token means of
 *   both; simpo: the policy's mean token log-prob, no reference). Loss of a step = mean
 *   over its pairs of fdpo_pref_loss_pair, plus sft_weight * (sum of chosen-token NLL) /
 *   (number of chosen tokens in the step). Micro-batching splits the step's pairs but
 *   keeps these step-wide denominators, so accumulation is exact. */
#ifndef FDPO_DPO_H
#define FDPO_DPO_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/gpt2.h"
#include "fdpo/objectives.h"
#include "fdpo/pref.h"
#include "fdpo/trainer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { FDPO_LAYOUT_SHARED, FDPO_LAYOUT_PLAIN } fdpo_pair_layout;
int fdpo_layout_parse(const char *name, fdpo_pair_layout *l); /* "shared" | "plain" */

typedef struct {
    fdpo_pair_layout layout;
    size_t n_pairs;
    fdpo_batch batch;          /* points into the storage below */
    /* per pair: positions [begin, end) whose targets are the chosen / rejected tokens */
    size_t *chosen_begin, *chosen_end, *rejected_begin, *rejected_end;
    size_t *seq_offset; int32_t *tokens, *targets, *pos; uint8_t *branch;
    size_t cap_tokens, cap_seq, cap_pairs;
} fdpo_pair_batch;

/* Tokens the layout needs for these pairs. */
size_t fdpo_pair_batch_tokens(fdpo_pair_layout layout, const fdpo_pref_pair *const *pairs, size_t n);
/* (Re)build pb for these pairs; storage grows as needed and is reused. */
void fdpo_pair_batch_build(fdpo_pair_batch *pb, fdpo_pair_layout layout, const fdpo_pref_pair *const *pairs, size_t n);
void fdpo_pair_batch_free(fdpo_pair_batch *pb);

typedef struct {
    fdpo_pref_loss loss;
    fdpo_pair_layout layout;
    size_t micro_batch;        /* pairs per forward/backward; 0 = the whole step at once */
} fdpo_dpo_config;

/* Means over the pairs of one call (TRL's names in docs/dpo.md). */
typedef struct {
    size_t pairs, tokens;          /* tokens = model positions the policy processed on this rank (under MPI its micro-batches' only) */
    double loss, pref_loss, sft_nll;
    double rewards_chosen, rewards_rejected, margins, accuracy;  /* accuracy: ties count 1/2 */
    double logps_chosen, logps_rejected, logits_chosen, logits_rejected;
    double scores_chosen, scores_rejected;
} fdpo_dpo_metrics;

typedef struct {
    fdpo_gpt2 *policy;
    fdpo_gpt2 *ref_live;       /* frozen reference run each step, or NULL (cached log-probs) */
    /* 1: the reference is the policy's current weights (the first step of a run whose
     * reference is its starting policy: online f-DPO): the reference's log-probs are the
     * policy forward's own, so every implicit reward is exactly 0 (log-probs scored by
     * another pass, in another float order, made them rounding noise). With LoRA dropout
     * active the policy's training forward is not the reference's: the reference is then the
     * policy's forward without dropout, run on the same batch. ref_logp and ref_live are not read. */
    int ref_is_policy;
    fdpo_dpo_config cfg;
    fdpo_pair_batch pb;
    float *token_logp, *ref_token_logp, *d_token_logp;
    float *logit_sums;   /* [cap_tokens] sum over V of each policy logits row (logits/ metrics) */
    size_t cap_tokens;
} fdpo_dpo;

/* cfg->loss must have passed fdpo_pref_loss_check (fdpo_dpo_run_opts_check does it once per run). */
int  fdpo_dpo_init(fdpo_dpo *d, fdpo_gpt2 *policy, fdpo_gpt2 *ref_live, const fdpo_dpo_config *cfg);
void fdpo_dpo_free(fdpo_dpo *d);

/* One optimizer step's pairs (or an eval set). ref_logp[2i], ref_logp[2i+1]: the summed
 * reference log-probs of pair i's chosen and rejected completions, or NULL to run
 * d->ref_live (ignored for simpo). With grad, ACCUMULATES d(step loss)/dtheta into
 * policy->grads (the caller zeroes them). pair_out (may be NULL) gets per pair
 * {logp_policy_chosen, logp_policy_rejected, l_w, l_l, loss} (sums, as used by the loss). */
int fdpo_dpo_step(fdpo_dpo *d, const fdpo_pref_pair *const *pairs, size_t n, const double *ref_logp,
                  int grad, fdpo_dpo_metrics *out, double *pair_out);

/* Summed completion log-probs of model m for n pairs: out[2i] chosen, out[2i+1] rejected.
 * Runs in micro-batches of micro_batch pairs (0 = all) in the given layout. */
int fdpo_dpo_pair_logps(fdpo_gpt2 *m, fdpo_pair_layout layout, size_t micro_batch,
                        const fdpo_pref_pair *const *pairs, size_t n, double *out);

/* ---- reference log-prob cache (src/train/refcache.c) ----
 * A file DIR/ref-<key>.safetensors holding logps [n, 2] (F64) for every pair of a loaded
 * set, in set order, and in its metadata the FNV-1a 64 "checksum" of those bytes. A file
 * whose checksum does not match or that holds a non-finite value is logged as a warning and
 * recomputed. key = FNV-1a 64 over: a format version, the reference config (every field
 * fdpo_gpt2_config_equal compares) and weights, the data file's bytes, the tokenizer
 * files' bytes, the truncation options, the token ids of every pair (so anything that
 * changes the model's inputs changes it), and how the log-probs are computed: the
 * reference's precision, under bf16 the route of its products (fdpo_bf16_route), the
 * pair layout and the micro-batch size (each can change the last bits, and a cached
 * reference must equal the live one exactly: at step 0 every implicit reward is then 0, not
 * rounding noise). */
typedef struct {
    uint64_t weights, data, tokenizer, options, tokens, compute; /* partial hashes (for the log) */
    fdpo_precision precision;   /* how the log-probs are computed (in compute) */
    const char *route;          /* bf16: fdpo_bf16_route() (in compute); fp32: "none" */
    fdpo_pair_layout layout;
    size_t micro_batch;         /* pairs per forward (in compute): a product's row count can change its last bits */
    uint64_t key;
} fdpo_refcache_key;
uint64_t fdpo_hash_model(const fdpo_gpt2 *m);
/* Chain one pair's token ids (prompt, chosen, rejected, with their lengths) into h. */
uint64_t fdpo_hash_pair(uint64_t h, const fdpo_pref_pair *p);
/* Hash of the tokenizer files present in dir (fdpo_tokenizer.json, vocab.json, ...). */
uint64_t fdpo_hash_tokenizer_dir(const char *dir);
int fdpo_refcache_key_make(fdpo_refcache_key *k, uint64_t weights_hash, const char *data_path,
                           const char *tokenizer_dir, const fdpo_pref_options *opt, const fdpo_pref_set *set,
                           fdpo_precision precision, fdpo_pair_layout layout, size_t micro_batch);
/* Load the cached log-probs into out[2n] if DIR holds them for key; else compute them with
 * ref (the key's micro-batches and layout; ref's precision must be the key's), write the
 * file atomically, and fill out. *hit = 1 on reuse. Logs "ref cache hit|miss: PATH"
 * through the hook (fdpo_log). */
int fdpo_refcache_get(const char *dir, const fdpo_refcache_key *k, fdpo_gpt2 *ref, const fdpo_pref_set *set,
                      double *out, int *hit);
char *fdpo_refcache_path(const char *dir, const fdpo_refcache_key *k); /* malloc'd */

/* ---- a whole run (src/train/dpo_run.c): what `fdpo dpo` does ----
 * The reference is --ref or, by default, the initial policy. Default: its log-probs are
 * computed once (fdpo_refcache_get) into ref_cache_dir (default OUT/../.fdpo-cache);
 * ref_live keeps the frozen model in memory and runs it every step. OUT receives the
 * checkpoints, metrics.jsonl, data_summary.json and eval_summary.json. */
typedef struct {
    fdpo_train_opts train;      /* shared trainer options; train.init = the policy checkpoint */
    const char *data, *eval_file, *ref, *ref_cache_dir;
    int ref_live;
    double eval_fraction;
    fdpo_pref_options pref;
    fdpo_dpo_config dpo;        /* micro_batch is taken from train.batch_size */
    int plan_saved;             /* 1: pref is a saved plan's (a stage of a sacpo rerun, which has no
                                 * --resume): fdpo_pref_data_check as on resume */
} fdpo_dpo_run_opts;
/* --simpo-gamma's default: another value with a loss other than simpo is refused. */
#define FDPO_SIMPO_GAMMA_DEFAULT 0.5
/* Defaults of `fdpo dpo` (train options included: lr 1e-6, linear schedule, eval every 50). */
void fdpo_dpo_run_opts_default(fdpo_dpo_run_opts *o);
/* The one check of a run's options (the train options, the loss, the data shaping); called
 * by fdpo_dpo_train. Errors name the option by its flag ("--beta: must be a finite number > 0 (got 0)").
 * Options the run would not use are refused: with --loss simpo (no reference) --ref, --ref-live
 * and --ref-cache-dir; with another loss a --simpo-gamma other than FDPO_SIMPO_GAMMA_DEFAULT
 * (--ref and --simpo-gamma, fixed settings, only on a fresh run: a run saved before resumes). */
int fdpo_dpo_run_opts_check(const fdpo_dpo_run_opts *o);
/* The run's settings under their flag names, for training_state.json: the objective, data
 * shaping and reference are fixed on --resume; layout, ref-live and ref-cache-dir are kept
 * unless given again. Appended to s. */
void fdpo_dpo_run_opts_settings(const fdpo_dpo_run_opts *o, fdpo_settings *s);
/* The data-shaping settings every preference trainer saves (dpo, rm, kto): --max-length,
 * --max-prompt-length, --on-long, --bad-pairs, --eval-fraction, --eval-file; all fixed. */
void fdpo_pref_data_settings(const fdpo_pref_options *p, double eval_fraction, const char *eval_file, fdpo_settings *s);
/* The held-out set as --resume's and the ranks' data checks name it (fdpo_train_opts's
 * eval_name): "--eval-file F", or "the --eval-fraction X split of --data F" (data NULL,
 * sft's or pretrain's several files: "... of the --data files"). */
void fdpo_pref_eval_name(char *buf, size_t n, const char *data, double eval_fraction, const char *eval_file);
/* t's held-out set as fdpo_trainer_open checks it: its name (written into buf, which t then
 * points at: it must outlive the open), its size, its fingerprint and the fingerprint states
 * written before the held-out set was recorded kept (eval_legacy_hash). The one setup of dpo,
 * rm, kto, sft and pretrain. */
void fdpo_train_opts_held_out(fdpo_train_opts *t, char *buf, size_t n, const char *data, double eval_fraction,
                              const char *eval_file, size_t n_items, uint64_t hash, uint64_t legacy_hash);
/* p's on_bad and on_long are among their enums' values (named by flag: --bad-pairs, --on-long),
 * and a max_prompt_length is only given with on_long truncate, the one policy that reads it
 * (not checked on resume: a run saved with one before that rule still resumes);
 * dpo, kto and rm's option checks call it. */
int fdpo_pref_data_check(const fdpo_pref_options *p, int resume);
/* The defaults every preference trainer (dpo, rm, kto) shares: a given model fine-tuned at
 * lr with linear decay, held-out checks every 50 steps on eval_fraction 0.1 of the data
 * (the train options' own split unused), long examples truncated, bad ones an error. */
void fdpo_pref_run_defaults(fdpo_train_opts *train, fdpo_pref_options *pref, double *eval_fraction, double lr);
int fdpo_dpo_train(const fdpo_dpo_run_opts *o);
/* The same trainer loop on pairs already in memory (an online round, src/train/online.c):
 * policy is trained in place (o->train.init only names where it came from, for the saved
 * settings; o->data names the pairs' record file and is not read), tok is saved with it,
 * ref_logp[2i], ref_logp[2i+1] are the reference log-probs of pair i's chosen and rejected
 * completions (NULL for simpo). Fewer pairs than a step takes (--batch-size x --grad-accum):
 * a step takes each pair once (an epoch is one step), not a wrap-around into the next epoch.
 * No held-out split, no reference cache, no data_summary.json:
 * OUT gets the checkpoint with training state and metrics.jsonl, as fdpo_dpo_train writes them.
 * state_out != NULL: no checkpoint at all (OUT gets metrics.jsonl alone); the run's final
 * training state is moved to *state_out (free with fdpo_train_state_free) for the caller to
 * save with the model (the online rounds' background writer). A stop request (SIGINT) before
 * the last step then fails the run without saving ("interrupted after step N of M (nothing of
 * it is saved; train.continue_how)"): a round is redone, never resumed mid-way; after the last
 * step the run ends as if none came, its pairs trained (the round is complete).
 * ref_is_start: the reference is the policy as passed (an online round whose reference is its
 * starting policy): the first step takes the reference's log-probs from the policy's own
 * forward (fdpo_dpo.ref_is_policy), later steps from ref_logp. */
int fdpo_dpo_train_pairs(const fdpo_dpo_run_opts *o, fdpo_gpt2 *policy, const fdpo_tokenizer *tok,
                         const fdpo_pref_pair *const *pairs, size_t n, const double *ref_logp, int ref_is_start,
                         fdpo_train_state *state_out);

#ifdef __cplusplus
}
#endif

#endif
