/* Online and iterative f-DPO (`fdpo online`, docs/online.md).
 *
 * Round k = 0 .. rounds-1: take prompts_per_round prompts (cycling through the prompt file),
 * sample n completions each from the current policy (round k-1's checkpoint, or the initial
 * model), score them with the reward, pair the best with the worst completion of every prompt
 * (prompts whose completions all score the same give no pair) -- or, with pairs_bt, pair them
 * off with Bradley-Terry-sampled labels as `fdpo pairs` does -- record them as preference JSONL
 * DIR/round-K.pairs.jsonl and run f-DPO on their sampled token ids straight from memory
 * (fdpo_dpo_train_pairs, every loss/divergence; the reference log-probs from the scoring) into
 * DIR/round-K. The reference is the initial model (ref_update_round = 0: online DPO) or the
 * previous round's policy (1: iterative DPO, Xiong et al. 2024). The policy (and a fixed
 * reference) stay in memory across rounds; each is read from disk once per run.
 *
 * A round trains into DIR/round-K.partial and is renamed to DIR/round-K only when complete, so
 * an interrupted or failed round (a reward program that fails, say) leaves every earlier round
 * intact; a resumed run continues after the last complete round. Per round one line of
 * DIR/metrics.jsonl with TRL online-trainer names (objective/scores, objective/kl,
 * objective/entropy, objective/rlhf_reward, val/contain_eos_token, ...). */
#ifndef FDPO_ONLINE_H
#define FDPO_ONLINE_H
#include "fdpo/dpo.h"
#include "fdpo/eval.h"
#include "fdpo/trainer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *model;           /* initial policy checkpoint */
    const char *ref;             /* reference (default: model) */
    const char *prompts;         /* prompt file (fdpo_read_prompts) */
    const char *reward;          /* reward spec (afinn, length, cmd:PROG) */
    fdpo_reward_options reward_opts;
    const char *out;             /* run directory */
    long rounds, prompts_per_round, n;
    int ref_update_round;        /* 0: fixed reference; 1: previous round's policy */
    int pairs_bt;                /* 0: best vs worst per prompt; 1: all disjoint pairs with Bradley-Terry-
                                    sampled labels (fdpo_make_pairs, as `fdpo pairs`) */
    double bt_scale;             /* BT temperature for pairs_bt */
    int ref_logps_pairs;         /* 0 (default): reference log-probs for every sample, so objective/kl
                                    is TRL's unbiased mean over all samples; 1: for the pairs' samples
                                    only (one reference forward less; objective/kl is their mean) */
    int resume;
    fdpo_sample_config sample;   /* its seed is not read: dpo.train.seed, mixed with the round
                                    number, seeds the samples */
    fdpo_dpo_run_opts dpo;       /* template of each round's f-DPO run (data/out/init/ref set per round) */
} fdpo_online_opts;

/* Defaults of `fdpo online` (the library owns them; the CLI's flag table shows the same
 * values): 3 rounds of 16 prompts x 4 completions, best-worst pairs (bt_scale 1), reference
 * log-probs of every sample, fixed reference; sampling at temperature 1, top-p 1, 32 new
 * tokens, seeded by dpo.train.seed; a cmd: reward's timeout 60 s; each round's f-DPO run is
 * fdpo_dpo_run_opts_default's with lr 1e-4, constant schedule, one epoch, no held-out split,
 * empty completions skipped. */
void fdpo_online_opts_default(fdpo_online_opts *o);
/* What every round's f-DPO run needs whatever the flags (fdpo_online_opts_default applies it;
 * a caller that fills d from flags applies it after them): the shared-prompt layout (a
 * prompt's completions share it), no held-out split, long completions truncated, empty or
 * identical ones skipped. */
void fdpo_online_round_dpo_opts(fdpo_dpo_run_opts *d);
/* The check both modes share (paths, loss, prompts per round, n, sampling, not greedy: a
 * pair needs two different completions, and the training options through
 * fdpo_train_opts_check, as sft and dpo check them); errors name the flag. Called by
 * fdpo_online_run and fdpo_online_step_run before anything is sampled; they check their own
 * mode's. */
int fdpo_online_opts_check(const fdpo_online_opts *o);
/* Rounds mode's check: fdpo_online_opts_check and its own flags (--rounds, --bt-scale of
 * --pairing all-bt; no --stop-at, --overwrite or --save-every). fdpo_online_run calls it, and
 * fdpo_sacpo_opts_check for each online stage before any stage runs. */
int fdpo_online_rounds_opts_check(const fdpo_online_opts *o);
/* The sampling flags against the policy's vocabulary size (a --top-p at or below 1/V keeps one
 * token: greedy, no pair could form; fdpo_sample_distinct_check). Both modes call it once the
 * policy is read, fdpo_sacpo_run once --model's config is, before any stage trains. */
int fdpo_online_sample_check(const fdpo_online_opts *o, size_t vocab);
int fdpo_online_run(const fdpo_online_opts *o);
/* 1 if name is an entry a rounds run makes in its OUT: online.json, round-K, round-K.partial,
 * round-K.pairs.jsonl. A run that replaces a rounds run's OUT (--overwrite) leaves these behind. */
int fdpo_online_out_entry(const char *name);

/* --mode step, TRL OnlineDPOTrainer's fully online variant: every optimizer step samples n
 * completions for prompts_per_round prompts from the in-memory policy, pairs the best with the
 * worst of each prompt, and takes one f-DPO step on them (the pairs' reference log-probs from
 * the step's scoring pass; under MPI each rank computes the gradient of its block of pairs).
 * dpo.train.steps steps, an fdpo_trainer run (kind "online-step") whose items are the prompts
 * in file order: DIR gets one metrics line per step (with time/sampling, time/scoring,
 * time/training seconds), checkpoints with training state every save_every steps, at
 * stop_at, on fdpo_trainer_request_stop and at the end; resume continues one bit-exactly
 * (the sampling seed of step s is fdpo_round_seed(seed, s); the reference is fixed). */
int fdpo_online_step_run(const fdpo_online_opts *o);
/* Its settings under their flag names (training_state.json; --resume refuses a different fixed one). */
void fdpo_online_step_settings(const fdpo_online_opts *o, fdpo_settings *s);
/* Rounds mode's settings under their flag names: DIR/online.json, written before round 0; a
 * --resume that changes a fixed one (or leaves it out: back to its default) is refused by name. */
void fdpo_online_round_settings(const fdpo_online_opts *o, fdpo_settings *s);
/* SAVED (an online.json's settings) and NOW (fdpo_online_round_settings) made comparable as a
 * resume compares them (fdpo online's plan, sacpo's plan of an online stage): an earlier
 * fdpo's mode "round" read as "rounds"; --lora-targets dropped from both (compared by the
 * modules it selects, against the completed round's adapter); with init_in_run (a sacpo
 * stage's starting model, pinned by sacpo's plan) the saved model dropped. */
void fdpo_online_settings_for_resume(fdpo_settings *saved, fdpo_settings *now, int init_in_run);

#ifdef __cplusplus
}
#endif

#endif
