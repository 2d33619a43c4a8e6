/* fdpo eval's engine: sample k completions per prompt from a policy, score them under the
 * policy and the reference, and reduce to the flat metrics of docs/eval.md. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/dist.h"
#include "fdpo/dpo.h"   /* fdpo_hash_pair */
#include "fdpo/eval.h"

static void put(cJSON *o, const char *name, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, name, v);
    else cJSON_AddNullToObject(o, name); /* JSON has no NaN: undefined metrics are null */
}

static void put_stats(cJSON *o, const char *prefix, const double *x, size_t n) {
    fdpo_stats s = fdpo_stats_of(x, n);
    char k[128];
    snprintf(k, sizeof k, "%s_mean", prefix); put(o, k, s.mean);
    snprintf(k, sizeof k, "%s_std", prefix); put(o, k, s.std);
    snprintf(k, sizeof k, "%s_se", prefix); put(o, k, s.se);
}

/* "alpha:0.5" -> "alpha_0.5": metric names stay plain identifiers plus dots */
void fdpo_eval_div_key(const fdpo_divergence *d, char *buf, size_t n) {
    fdpo_divergence_name(d, buf, n);
    for (char *p = buf; *p; p++) if (*p == ':') *p = '_';
}

/* Text of a sample for word metrics: the decoded completion, or without a tokenizer the
 * token ids written as words ("3 1 4"). */
/* Pooled rate of known words, sum(known) / sum(total) over the samples, with the standard
 * error of a ratio estimator (the delta method; samples are the units, so long samples
 * weigh more): se = sqrt(sum_i (k_i - R n_i)^2 / (N (N-1))) / mean(n). NaN without words. */
static void word_rate(const double *known, const double *total, size_t n, double *rate, double *se) {
    double sk = 0, sn = 0;
    for (size_t i = 0; i < n; i++) { sk += known[i]; sn += total[i]; }
    *rate = *se = NAN;
    if (!(sn > 0)) return;
    *rate = sk / sn;
    if (n < 2) return;
    double ss = 0;
    for (size_t i = 0; i < n; i++) { double d = known[i] - *rate * total[i]; ss += d * d; }
    *se = sqrt(ss / ((double)n * (double)(n - 1))) / (sn / (double)n);
}

static char *sample_text(const fdpo_sample *s) {
    if (s->text) return fdpo_strdup(s->text);
    char *t = fdpo_malloc(12 * (s->n_completion + 1));
    size_t at = 0;
    t[0] = 0;
    for (size_t i = 0; i < s->n_completion; i++) at += (size_t)sprintf(t + at, i ? " %d" : "%d", s->tokens[i]);
    return t;
}

static void diversity(cJSON *o, const char *suffix, fdpo_words *const *groups, const size_t *group_n,
                      size_t n_groups, double vocab) {
    char k[64];
    for (size_t n = 1; n <= 4; n++) {
        double sd = 0, se = 0;
        for (size_t g = 0; g < n_groups; g++) {
            double d, e;
            fdpo_distinct(groups[g], group_n[g], n, vocab, &d, &e);
            sd += d; se += e;
        }
        snprintf(k, sizeof k, "distinct_%zu_%s", n, suffix); put(o, k, sd / (double)n_groups);
        snprintf(k, sizeof k, "ead_%zu_%s", n, suffix); put(o, k, se / (double)n_groups);
    }
    for (size_t n = 3; n <= 4; n++) {
        double sb = 0; size_t used = 0;
        for (size_t g = 0; g < n_groups; g++) {
            if (group_n[g] < 2) continue;
            sb += fdpo_self_bleu(groups[g], group_n[g], n); used++;
        }
        snprintf(k, sizeof k, "self_bleu_%zu_%s", n, suffix); put(o, k, used ? sb / (double)used : NAN);
    }
}

static int eval_pairs(cJSON *o, fdpo_decoder *pd, fdpo_decoder *rd, const fdpo_pref_set *pairs,
                      const fdpo_eval_config *c) {
    size_t n = pairs->n;
    double *p = fdpo_calloc(n ? n : 1, sizeof(double)), *zs = fdpo_calloc(n ? n : 1, sizeof(double)), margin = 0;
    size_t longer = 0, b, e;
    int rc = 0;
    fdpo_seq_score sw = {0}, sl = {0};
    fdpo_dist_shard(n, &b, &e);   /* under MPI: this rank's pairs, joined below */
    for (size_t i = b; i < e && rc == 0; i++) {
        const fdpo_pref_pair *q = &pairs->pairs[i];
        rc = fdpo_score_sequence(pd, rd, q->prompt, q->n_prompt, q->chosen, q->n_chosen, NULL, 0, &sw);
        if (!rc) rc = fdpo_score_sequence(pd, rd, q->prompt, q->n_prompt, q->rejected, q->n_rejected, NULL, 0, &sl);
        if (rc) { fdpo_error_context("--pairs: pair %zu (line %zu)", i + 1, q->line); break; }
        /* uncapped: the training score's float32 cap made pairs far below the reference ties */
        double delta = fdpo_score_diff(&c->cal_div, sw.logp - sw.logp_ref, sl.logp - sl.logp_ref);
        zs[i] = c->beta * delta;
        p[i] = fdpo_sigmoid(zs[i]);
    }
    if (fdpo_dist_size() > 1) {
        rc = fdpo_dist_all_ok(rc);
        if (rc == 0) rc = fdpo_dist_join_shards_f64(p, n, 1);
        if (rc == 0) rc = fdpo_dist_join_shards_f64(zs, n, 1);
    }
    if (rc == 0) margin = fdpo_exact_sum(zs, n);   /* exactly rounded, as fdpo_stats_of's means */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        longer += pairs->pairs[i].n_chosen > pairs->pairs[i].n_rejected;
    }
    if (rc == 0) {
        double acc, ece;
        fdpo_calibration(p, n, &acc, &ece);
        cJSON_AddNumberToObject(o, "pref_n", (double)n);
        put(o, "pref_accuracy", acc);
        put(o, "pref_ece", ece);
        put(o, "pref_margin_mean", n ? margin / (double)n : NAN);
        put(o, "pref_chosen_longer", n ? (double)longer / (double)n : NAN);
    }
    free(p); free(zs);
    return rc;
}

/* fdpo_generate_ranks checks the sampling; this the scoring, one check per flag so that the
 * error names it */
int fdpo_eval_config_agree(const fdpo_eval_config *c) {
    if (fdpo_dist_size() < 2) return 0;
    if (fdpo_dist_check_agree("--reward", fdpo_reward_identity(c->reward))) return -1;
    uint64_t h = fdpo_reward_identity(c->safety);
    if (c->safety) h = fdpo_hash64(h, &c->safety_threshold, sizeof c->safety_threshold);
    if (fdpo_dist_check_agree("--safety or --safety-threshold", h)) return -1;
    if (fdpo_dist_check_agree("--words", fdpo_reward_identity(c->words))) return -1;
    const uint64_t n_div = c->n_div;
    h = fdpo_hash64(FDPO_HASH_INIT, &n_div, sizeof n_div);
    for (size_t k = 0; k < c->n_div; k++) {
        const int kind = (int)c->divs[k].kind;
        h = fdpo_hash64(h, &kind, sizeof kind);
        if (c->divs[k].kind == FDPO_DIV_ALPHA) h = fdpo_hash64(h, &c->divs[k].alpha, sizeof c->divs[k].alpha);
    }
    if (fdpo_dist_check_agree("--divergences", h)) return -1;
    /* the pairs' tokens: each rank scores its share of them */
    const uint64_t n_pairs = c->pairs ? c->pairs->n : 0, has_pairs = c->pairs != NULL;
    h = fdpo_hash64(FDPO_HASH_INIT, &has_pairs, sizeof has_pairs);
    h = fdpo_hash64(h, &n_pairs, sizeof n_pairs);
    for (size_t i = 0; i < n_pairs; i++) h = fdpo_hash_pair(h, &c->pairs->pairs[i]);
    if (fdpo_dist_check_agree("--pairs (the pairs' tokens)", h)) return -1;
    h = FDPO_HASH_INIT;
    if (c->pairs) {
        const int kind = (int)c->cal_div.kind;
        h = fdpo_hash64(h, &c->beta, sizeof c->beta);
        h = fdpo_hash64(h, &kind, sizeof kind);
        if (c->cal_div.kind == FDPO_DIV_ALPHA) h = fdpo_hash64(h, &c->cal_div.alpha, sizeof c->cal_div.alpha);
    }
    if (fdpo_dist_check_agree("--beta or --divergence", h)) return -1;
    return fdpo_dist_check_agree("--ead-vocab", fdpo_hash64(FDPO_HASH_INIT, &c->ead_vocab, sizeof c->ead_vocab));
}

int fdpo_eval_config_check(const fdpo_eval_config *c) {
    if (c->k == 0) return fdpo_error("--n: must be > 0");
    if (!(c->ead_vocab == 0 || (c->ead_vocab >= 1 && isfinite(c->ead_vocab))))   /* EAD's V: a vocabulary size */
        return fdpo_error("--ead-vocab: must be 0 (the policy's vocabulary size) or >= 1 (got %g)", c->ead_vocab);
    const char *why = NULL;
    if (c->pairs && fdpo_beta_check(c->beta)) return -1;   /* beta and cal_div: only the pairs use them */
    if (c->pairs && !fdpo_divergence_admissible(&c->cal_div, &why)) {   /* the pairs' Delta needs the score s of f */
        char name[64];
        fdpo_divergence_name(&c->cal_div, name, sizeof name);
        return fdpo_error("--divergence %s: cannot score the preference pairs' calibration: %s", name,
                          why ? why : "not admissible");
    }
    if (!isfinite(c->safety_threshold))
        return fdpo_error("--safety-threshold: must be finite (got %g)", c->safety_threshold);
    return 0;
}

int fdpo_eval_check_fit(const fdpo_gpt2_config *policy, const fdpo_gpt2_config *ref, const size_t *prompt_lens,
                        size_t n_prompts, const fdpo_eval_config *c) {
    if (policy->vocab_size != ref->vocab_size)
        return fdpo_error("policy vocabulary %zu != reference vocabulary %zu (both must share one tokenizer)",
                          policy->vocab_size, ref->vocab_size);
    /* every sample must fit the reference: its prompt + up to --max-new-tokens, as far as the
     * policy's context goes. Found after sampling, this was "sequence of N tokens exceeds
     * n_positions M", with the reference's M under the policy's name */
    const size_t rn = ref->n_positions, pn = policy->n_positions;
    for (size_t i = 0; i < n_prompts; i++) {
        size_t longest = prompt_lens[i] + c->sample.max_new_tokens;
        if (longest > pn) longest = pn;
        if (longest > rn)
            return fdpo_error("--ref: its n_positions %zu is shorter than a sample can be: prompt %zu has %zu tokens and "
                              "--max-new-tokens is %zu (the reference has room for %zu new tokens after it)", rn, i + 1,
                              prompt_lens[i], c->sample.max_new_tokens, rn > prompt_lens[i] ? rn - prompt_lens[i] : 0);
    }
    /* and every pair both models (fdpo eval loads --pairs with the smallest n_positions of all,
     * so that such a pair is named by FILE:LINE or skipped there) */
    for (size_t i = 0; c->pairs && i < c->pairs->n; i++) {
        const fdpo_pref_pair *q = &c->pairs->pairs[i];
        size_t longest = q->n_chosen > q->n_rejected ? q->n_chosen : q->n_rejected, cap = pn < rn ? pn : rn;
        if (q->n_prompt + longest > cap)
            return fdpo_error("--pairs: pair %zu (line %zu) has %zu tokens (prompt %zu + longest completion %zu), more "
                              "than the %s's n_positions %zu", i + 1, q->line, q->n_prompt + longest, q->n_prompt,
                              longest, pn < rn ? "policy" : "reference", cap);
    }
    return 0;
}

int fdpo_eval_check_policies(char *const *dirs, size_t n, const fdpo_gpt2_config *ref, const fdpo_tokenizer *ref_tok,
                             const size_t *prompt_lens, const size_t *prompt_lines, size_t n_prompts,
                             const char *prompts_path, const fdpo_eval_config *c, size_t *min_positions,
                             size_t *min_of) {
    *min_positions = ref->n_positions;
    *min_of = n;
    for (size_t p = 0; p < n; p++) {
        fdpo_gpt2_config pc;
        fdpo_tokenizer *pt = NULL;
        int rc = fdpo_eval_load_config("--model", dirs[p], &pc, &pt);
        char what[512];
        if (!rc && fdpo_tokenizer_diff(pt, ref_tok, what, sizeof what))
            rc = fdpo_error("--model %s: its tokenizer differs from --ref's (%s): the same text would be other ids", dirs[p],
                            what);
        if (!rc && (fdpo_prompt_lens_check(prompt_lens, prompt_lines, n_prompts, pc.n_positions, prompts_path) ||
                    fdpo_eval_check_fit(&pc, ref, prompt_lens, n_prompts, c)))
            rc = fdpo_error_context("--model %s", dirs[p]);
        fdpo_tokenizer_free(pt);
        if (rc) return rc;
        if (pc.n_positions < *min_positions) { *min_positions = pc.n_positions; *min_of = p; }
    }
    return 0;
}

cJSON *fdpo_evaluate(const fdpo_gpt2 *policy, const fdpo_gpt2 *ref, const fdpo_tokenizer *tok,
                     char *const *prompts, int32_t *const *prompt_ids, const size_t *prompt_lens,
                     size_t n_prompts, const fdpo_eval_config *c, FILE *samples_out, const char *name) {
    if (fdpo_eval_config_check(c)) return NULL;
    if (n_prompts == 0) { fdpo_error("no prompts"); return NULL; }
    if (fdpo_eval_check_fit(&policy->config, &ref->config, prompt_lens, n_prompts, c)) return NULL;
    fdpo_sample *smp = NULL;
    int32_t eot = tok ? fdpo_tokenizer_eot(tok) : c->eot;
    if (fdpo_eval_config_agree(c)) return NULL;
    /* under MPI the prompts, then the samples' scores, are split over the ranks (docs/scaling.md) */
    if (fdpo_generate_ranks(policy, tok, eot, &c->sample, prompt_ids, prompt_lens, n_prompts, c->k, &smp, NULL)) return NULL;
    size_t N = n_prompts * c->k, nd = c->n_div, max_len = 0;
    for (size_t i = 0; i < N; i++) {
        size_t l = prompt_lens[smp[i].prompt_index] + smp[i].n_tokens;
        if (l > max_len) max_len = l;
    }
    if (c->pairs)
        for (size_t i = 0; i < c->pairs->n; i++) {
            const fdpo_pref_pair *q = &c->pairs->pairs[i];
            size_t l = q->n_prompt + (q->n_chosen > q->n_rejected ? q->n_chosen : q->n_rejected);
            if (l > max_len) max_len = l;
        }
    /* fdpo_eval_check_fit made this impossible before sampling; the decoders' guard */
    size_t cap = policy->config.n_positions < ref->config.n_positions ? policy->config.n_positions : ref->config.n_positions;
    if (max_len > cap) { fdpo_samples_free(smp, N); fdpo_error("sequence of %zu tokens exceeds n_positions %zu", max_len, cap); return NULL; }
    fdpo_decoder *pd = fdpo_decoder_create(policy, 1, max_len), *rd = fdpo_decoder_create(ref, 1, max_len);
    double *reward = fdpo_calloc(N, sizeof(double)), *logp = fdpo_calloc(N, sizeof(double));
    double *lref = fdpo_calloc(N, sizeof(double)), *kl_seq = fdpo_calloc(N, sizeof(double));
    double *kl_tok = fdpo_calloc(N, sizeof(double)), *ntok = fdpo_calloc(N, sizeof(double));
    double *nwords_vocab = fdpo_calloc(N, sizeof(double)), nwords_vocab_total = 0;
    double *nwords = fdpo_calloc(N, sizeof(double)), *safety = fdpo_calloc(N, sizeof(double));
    double *fd_seq = fdpo_calloc(N * (nd ? nd : 1), sizeof(double)), *fd_tok = fdpo_calloc(N * (nd ? nd : 1), sizeof(double));
    double ent_sum = 0, *ent = fdpo_calloc(N, sizeof(double)), *npos = fdpo_calloc(N, sizeof(double));
    size_t ent_n = 0, n_eot = 0, b, e;
    fdpo_dist_shard(N, &b, &e);   /* this rank scores samples [b, e); the ranks' blocks are joined below */
    char **texts = fdpo_calloc(N, sizeof(char *)), **ptexts = fdpo_calloc(N, sizeof(char *));
    size_t *ntok_sz = fdpo_calloc(N, sizeof(size_t));
    fdpo_words *words = fdpo_calloc(N, sizeof(fdpo_words));
    cJSON *o = NULL;
    int rc = (!pd || !rd) ? -1 : 0;
    for (size_t i = 0; i < N && rc == 0; i++) {
        fdpo_sample *s = &smp[i];
        n_eot += s->finish == FDPO_FINISH_EOT;
        texts[i] = sample_text(s);
        ptexts[i] = prompts ? fdpo_strdup(prompts[s->prompt_index]) : fdpo_strdup("");
        ntok_sz[i] = s->n_completion;
        ntok[i] = (double)s->n_completion;
        fdpo_words_split(texts[i], &words[i]);
        nwords[i] = (double)words[i].n;
        if (i < b || i >= e) continue;
        fdpo_seq_score sc = {.fdiv_tok = fd_tok + i * nd};
        rc = fdpo_score_sequence(pd, rd, prompt_ids[s->prompt_index], prompt_lens[s->prompt_index], s->tokens,
                                 s->n_tokens, c->divs, nd, &sc);
        if (rc) break;
        logp[i] = sc.logp; lref[i] = sc.logp_ref;
        double l = sc.logp - sc.logp_ref; /* log pi(y|x) - log pi_ref(y|x) */
        kl_seq[i] = l;
        kl_tok[i] = sc.kl_tok;
        for (size_t k = 0; k < nd; k++)   /* D_f(pi || pi_ref) = E_{pi_ref}[f(u)] = E_pi[f(u) / u], u = pi/pi_ref */
            fd_seq[i * nd + k] = fdpo_f_over_u_log(&c->divs[k], l);
        ent[i] = sc.entropy_sum; npos[i] = (double)sc.n_positions;
    }
    if (rc == 0 && c->reward && e > b) rc = fdpo_reward_score(c->reward, e - b, ptexts + b, texts + b, ntok_sz + b, reward + b);
    if (rc == 0 && c->safety && e > b && fdpo_reward_score(c->safety, e - b, ptexts + b, texts + b, ntok_sz + b, safety + b))
        rc = fdpo_error_context("--safety %s", fdpo_reward_spec(c->safety));
    if (fdpo_dist_size() > 1) {
        /* every rank learns whether any failed (and its message), then the blocks are
         * joined: every value is the single process's, bit for bit (-0 included) */
        rc = fdpo_dist_all_ok(rc);
        double *cols[] = {logp, lref, kl_seq, kl_tok, ent, npos, reward, safety};
        for (size_t k = 0; rc == 0 && k < sizeof cols / sizeof cols[0]; k++) rc = fdpo_dist_join_shards_f64(cols[k], N, 1);
        if (rc == 0 && nd) rc = fdpo_dist_join_shards_f64(fd_seq, N, nd);
        if (rc == 0 && nd) rc = fdpo_dist_join_shards_f64(fd_tok, N, nd);
    }
    for (size_t i = 0; i < N; i++) ent_n += (size_t)npos[i];
    ent_sum = fdpo_exact_sum(ent, N);
    double *known = fdpo_calloc(N, sizeof(double));
    for (size_t i = 0; i < N && rc == 0 && c->words; i++) {
        size_t kn, tot;
        rc = fdpo_reward_word_counts(c->words, texts[i], &kn, &tot);
        known[i] = (double)kn;
        nwords_vocab_total += (double)tot;
        nwords_vocab[i] = (double)tot;
    }
    if (rc == 0) {
        o = cJSON_CreateObject();
        if (name) cJSON_AddStringToObject(o, "name", name);
        cJSON_AddNumberToObject(o, "n_prompts", (double)n_prompts);
        cJSON_AddNumberToObject(o, "k", (double)c->k);
        cJSON_AddNumberToObject(o, "n_samples", (double)N);
        if (c->reward) {
            put_stats(o, "reward", reward, N);
            put(o, "reward_length_corr", fdpo_pearson(reward, ntok, N));
            put(o, "reward_words_corr", fdpo_pearson(reward, nwords, N));
        }
        if (c->safety) {
            size_t n_safe = 0;
            for (size_t i = 0; i < N; i++) n_safe += safety[i] >= c->safety_threshold;
            put_stats(o, "safety", safety, N);
            put(o, "safety_threshold", c->safety_threshold);
            put(o, "safety_frac_safe", (double)n_safe / (double)N);
        }
        if (c->words) {
            double rate, se;
            word_rate(known, nwords_vocab, N, &rate, &se);
            put(o, "word_rate", rate);
            put(o, "word_rate_se", se);
            put(o, "word_rate_words", nwords_vocab_total);
        }
        put_stats(o, "kl_seq", kl_seq, N);
        put_stats(o, "kl_tok", kl_tok, N);
        char key[128], dk[64];
        double *col = fdpo_malloc(N * sizeof(double));
        for (size_t k = 0; k < nd; k++) {
            fdpo_eval_div_key(&c->divs[k], dk, sizeof dk);
            for (size_t i = 0; i < N; i++) col[i] = fd_seq[i * nd + k];
            snprintf(key, sizeof key, "fdiv_seq_%s", dk); put_stats(o, key, col, N);
            for (size_t i = 0; i < N; i++) col[i] = fd_tok[i * nd + k];
            snprintf(key, sizeof key, "fdiv_tok_%s", dk); put_stats(o, key, col, N);
        }
        free(col);
        put(o, "entropy", ent_n ? ent_sum / (double)ent_n : NAN);
        put_stats(o, "logp", logp, N);
        put_stats(o, "logp_ref", lref, N);
        put_stats(o, "len_tokens", ntok, N);
        put_stats(o, "len_words", nwords, N);
        put(o, "frac_eot", (double)n_eot / (double)N);
        double vocab = c->ead_vocab > 0 ? c->ead_vocab : (double)policy->config.vocab_size;
        /* per-input: the k samples of each prompt; across-input: sample 0 of every prompt */
        fdpo_words **groups = fdpo_malloc(n_prompts * sizeof *groups);
        size_t *gn = fdpo_malloc(n_prompts * sizeof *gn);
        for (size_t p = 0; p < n_prompts; p++) { groups[p] = words + p * c->k; gn[p] = c->k; }
        diversity(o, "per_input", groups, gn, n_prompts, vocab);
        fdpo_words *firsts = fdpo_malloc(n_prompts * sizeof *firsts);
        for (size_t p = 0; p < n_prompts; p++) firsts[p] = words[p * c->k];
        size_t np = n_prompts;
        diversity(o, "across_input", &firsts, &np, 1, vocab);
        free(firsts); free(groups); free(gn);
        if (c->pairs && eval_pairs(o, pd, rd, c->pairs, c)) rc = -1;
    }
    if (rc == 0 && samples_out) {
        for (size_t i = 0; i < N; i++) {
            cJSON *j = cJSON_CreateObject();
            if (name) cJSON_AddStringToObject(j, "policy", name);
            cJSON_AddNumberToObject(j, "prompt_index", (double)smp[i].prompt_index);
            cJSON_AddNumberToObject(j, "sample_index", (double)smp[i].sample_index);
            cJSON_AddStringToObject(j, "prompt", ptexts[i]);
            cJSON_AddStringToObject(j, "completion", texts[i]);
            cJSON_AddNumberToObject(j, "n_tokens", ntok[i]);
            cJSON_AddNumberToObject(j, "n_words", nwords[i]);
            if (c->reward) put(j, "reward", reward[i]);
            if (c->safety) put(j, "safety", safety[i]);
            if (c->words) put(j, "word_rate", nwords_vocab[i] > 0 ? known[i] / nwords_vocab[i] : NAN);
            put(j, "logp", logp[i]);
            put(j, "logp_ref", lref[i]);
            put(j, "kl_tok", kl_tok[i]);
            char key[128], dk[64];
            for (size_t k = 0; k < nd; k++) {
                fdpo_eval_div_key(&c->divs[k], dk, sizeof dk);
                snprintf(key, sizeof key, "fdiv_tok_%s", dk); put(j, key, fd_tok[i * nd + k]);
            }
            cJSON *ids = cJSON_CreateArray();
            for (size_t t = 0; t < smp[i].n_tokens; t++) cJSON_AddItemToArray(ids, cJSON_CreateNumber(smp[i].tokens[t]));
            cJSON_AddItemToObject(j, "tokens", ids);
            char *line = fdpo_json_print(j, 0);
            fprintf(samples_out, "%s\n", line);
            free(line);
            cJSON_Delete(j);
        }
    }
    if (rc) { cJSON_Delete(o); o = NULL; }
    for (size_t i = 0; i < N; i++) { free(texts[i]); free(ptexts[i]); fdpo_words_free(&words[i]); }
    free(texts); free(ptexts); free(words); free(ntok_sz);
    free(ent); free(npos);
    free(reward); free(safety); free(logp); free(lref); free(kl_seq); free(kl_tok); free(ntok); free(nwords); free(known); free(nwords_vocab); free(fd_seq); free(fd_tok);
    fdpo_decoder_free(pd); fdpo_decoder_free(rd);
    fdpo_samples_free(smp, N);
    return o;
}
