/* Preference pairs from scored samples, with Bradley-Terry-sampled labels (the DPO paper's
 * controlled-sentiment set-up): for completions a, b of one prompt with gold rewards r_a, r_b,
 * a is labelled chosen with probability sigma((r_a - r_b) / scale). */
#ifndef FDPO_PAIRS_H
#define FDPO_PAIRS_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char *prompt, *completion;
    double reward;
    size_t n_tokens;      /* 0 if unknown */
    int has_reward;
    size_t line;          /* 1-based line in the samples file */
    int has_n_tokens;     /* the record gave "n_tokens" */
} fdpo_sample_rec;

typedef struct {
    size_t chosen, rejected; /* indices into the records */
    double p_chosen;         /* sigma((r_chosen - r_rejected) / scale) under the BT model */
} fdpo_pair;

/* Read JSONL records {"prompt", "completion"[, "reward"][, "n_tokens"]} (what `fdpo generate`
 * and `fdpo score` write). Errors name FILE:LINE and the field. */
int fdpo_sample_recs_read(const char *path, fdpo_sample_rec **recs, size_t *n);
void fdpo_sample_recs_free(fdpo_sample_rec *recs, size_t n);

typedef struct {
    double scale;           /* BT temperature (> 0) */
    size_t max_per_prompt;  /* 0 = all disjoint pairs */
    int skip_ties;          /* drop pairs whose gold rewards are equal (their label is a coin flip) */
    uint64_t seed;
} fdpo_pairs_config;
/* pairs skipped (identical completions, equal rewards, an empty side), and samples left out:
 * unpaired (a prompt's odd one out, or its only sample), beyond_max (after --pairs-per-prompt) */
typedef struct { size_t identical, ties, empty, unpaired, beyond_max; } fdpo_pairs_skipped;
/* scale finite and > 0 ("--bt-scale: ..."); fdpo_make_pairs runs it, a caller may run it
 * before it reads or scores anything */
int fdpo_pairs_config_check(const fdpo_pairs_config *c);

/* Group records by prompt (first-appearance order); per prompt, shuffle its completions
 * with the seeded RNG and pair them off (0,1), (2,3), ... up to max_per_prompt pairs.
 * Pairs with identical completions (and, with skip_ties, equal rewards), and pairs with an
 * empty completion (a preference file refuses them) are skipped and counted. Each pair's label is drawn from the BT model. */
int fdpo_make_pairs(const fdpo_sample_rec *recs, size_t n, const fdpo_pairs_config *c,
                    fdpo_pair **pairs, size_t *n_pairs, fdpo_pairs_skipped *skipped);

/* One line of preference JSONL as fdpo pairs and the online rounds write it: TRL's prompt,
 * chosen, rejected, and the two rewards (chosen_reward, rejected_reward). */
void fdpo_pair_row_write(FILE *f, const char *prompt, const char *chosen, const char *rejected, double chosen_reward,
                         double rejected_reward);

#ifdef __cplusplus
}
#endif

#endif
