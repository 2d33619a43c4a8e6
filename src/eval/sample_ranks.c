/* Sampling split over the MPI ranks by prompt (include/fdpo/eval.h fdpo_generate_ranks,
 * fdpo_sample_and_score_ranks). Each rank generates its contiguous block of prompts; a
 * sample's RNG depends only on (seed, prompt index among ALL prompts, sample index), so the
 * block is seeded by its first prompt's global index and every sample equals the one a
 * single process draws. The blocks, serialised, go to every rank with one MPI_Allgatherv;
 * rank order is prompt order. A rank that failed sends its message instead, so every rank
 * fails with it rather than waiting in a collective. */
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/eval.h"

typedef struct { char *p; size_t n, cap; } byte_buf;

static void put(byte_buf *b, const void *x, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = 2 * (b->n + n) + 64;
        b->p = fdpo_realloc(b->p, b->cap);
    }
    if (n) memcpy(b->p + b->n, x, n);
    b->n += n;
}
static void put_u64(byte_buf *b, uint64_t v) { put(b, &v, sizeof v); }
static void put_f64(byte_buf *b, double v) { put(b, &v, sizeof v); }

typedef struct { const char *p, *end; } reader;
static int get(reader *r, void *x, size_t n) {
    if ((size_t)(r->end - r->p) < n) return -1;
    if (n) memcpy(x, r->p, n);
    r->p += n;
    return 0;
}
static uint64_t get_u64(reader *r, int *bad) { uint64_t v = 0; *bad |= get(r, &v, sizeof v); return v; }
static double get_f64(reader *r, int *bad) { double v = 0; *bad |= get(r, &v, sizeof v); return v; }

/* One rank's part: u64 status (0 ok); failed: u64 length, message; ok: u64 count, then per
 * sample its fields, its reward, its tokens and its text (length + 1, 0 for none). */
static void pack(byte_buf *b, int failed, const fdpo_sample *s, size_t n, size_t first_prompt, const double *r) {
    put_u64(b, (uint64_t)(failed != 0));
    if (failed) {
        const char *msg = fdpo_last_error();
        put_u64(b, strlen(msg));
        put(b, msg, strlen(msg));
        return;
    }
    put_u64(b, n);
    for (size_t i = 0; i < n; i++) {
        put_u64(b, first_prompt + s[i].prompt_index);
        put_u64(b, s[i].sample_index);
        put_u64(b, s[i].n_tokens);
        put_u64(b, s[i].n_completion);
        put_u64(b, (uint64_t)s[i].finish);
        put_f64(b, s[i].logp);
        put_f64(b, r ? r[i] : 0);
        put(b, s[i].tokens, s[i].n_tokens * sizeof(int32_t));
        size_t tl = s[i].text ? strlen(s[i].text) : 0;
        put_u64(b, s[i].text ? tl + 1 : 0);
        put(b, s[i].text, tl);
    }
}

/* self_failed: this rank's own error stands (it said "rank R of N failed" of itself) */
static int unpack(const char *buf, size_t len, size_t total, fdpo_sample **out, double *r_out, int self_failed) {
    fdpo_sample *s = fdpo_calloc(total ? total : 1, sizeof *s);
    reader rd = {buf, buf + len};
    size_t k = 0;
    int bad = 0, rc = 0;
    for (int rank = 0; rank < fdpo_dist_size() && !rc && !bad; rank++) {
        if (get_u64(&rd, &bad)) {
            uint64_t ml = get_u64(&rd, &bad);
            char *msg = fdpo_malloc(ml + 1);
            bad |= get(&rd, msg, ml);
            msg[bad ? 0 : ml] = 0;
            rc = self_failed ? -1 : fdpo_error("rank %d of %d failed: %s", rank, fdpo_dist_size(), msg);
            free(msg);
            break;
        }
        uint64_t n = get_u64(&rd, &bad);
        if (bad || n > total - k) { bad = 1; break; }
        for (uint64_t i = 0; i < n && !bad; i++, k++) {
            fdpo_sample *x = &s[k];
            x->prompt_index = get_u64(&rd, &bad);
            x->sample_index = get_u64(&rd, &bad);
            x->n_tokens = get_u64(&rd, &bad);
            x->n_completion = get_u64(&rd, &bad);
            x->finish = (fdpo_finish)get_u64(&rd, &bad);
            x->logp = get_f64(&rd, &bad);
            double rw = get_f64(&rd, &bad);
            if (r_out) r_out[k] = rw;
            if (bad || x->n_tokens > (size_t)(rd.end - rd.p) / sizeof(int32_t)) { bad = 1; break; }
            x->tokens = fdpo_malloc((x->n_tokens ? x->n_tokens : 1) * sizeof(int32_t));
            bad |= get(&rd, x->tokens, x->n_tokens * sizeof(int32_t));
            uint64_t tl = get_u64(&rd, &bad);
            if (bad || tl > (size_t)(rd.end - rd.p) + 1) { bad = 1; break; }
            if (tl) {
                x->text = fdpo_malloc(tl);
                bad |= get(&rd, x->text, tl - 1);
                x->text[tl - 1] = 0;
            }
        }
    }
    if (!rc && (bad || k != total))
        rc = fdpo_error("gathering samples over %d ranks: %zu of %zu arrived intact", fdpo_dist_size(), k, total);
    if (rc) { fdpo_samples_free(s, total); return -1; }
    *out = s;
    return 0;
}

/* Every rank's block (or its failure) to every rank: *out gets all total samples. */
static int gather(int failed, fdpo_sample *mine, size_t n_mine, size_t first_prompt, const double *r_mine,
                  size_t total, fdpo_sample **out, double *r_out) {
    byte_buf b = {0};
    pack(&b, failed, mine, n_mine, first_prompt, r_mine);
    char *all = NULL;
    size_t len = 0;
    int rc = fdpo_dist_allgather_bytes(b.p, b.n, &all, &len);
    free(b.p);
    if (!rc) rc = unpack(all, len, total, out, r_out, failed);
    free(all);
    return rc;
}

/* fdpo_sampler_generate on a sampler of its own, whose timing goes to *timing (NULL: none) */
static int generate_timed(const fdpo_gpt2 *m, const fdpo_tokenizer *tok, int32_t eot, const fdpo_sample_config *c,
                          int32_t *const *prompt_ids, const size_t *prompt_lens, size_t n_prompts, size_t n_samples,
                          fdpo_sample **out, fdpo_generate_timing *timing) {
    fdpo_sampler *smp = fdpo_sampler_create(m);
    int rc = fdpo_sampler_generate(smp, tok, eot, c, prompt_ids, prompt_lens, n_prompts, n_samples, out);
    if (timing) fdpo_sampler_timing(smp, timing);
    fdpo_sampler_free(smp);
    return rc;
}

/* *t (this rank's) becomes the whole job's: the counts summed over the ranks, each time the
 * longest any rank took (the call waits for its slowest rank). One allgather, posted by every
 * rank whatever its block (none included) or result, so the ranks' collectives stay one order. */
static int timing_over_ranks(fdpo_generate_timing *t) {
    const double mine[5] = {t->setup, t->prefill, t->decode, (double)t->decode_steps, (double)t->decode_tokens};
    char *all = NULL;
    size_t len = 0;
    if (fdpo_dist_allgather_bytes(mine, sizeof mine, &all, &len)) return -1;
    double sum[5] = {0, 0, 0, 0, 0};
    for (size_t r = 0; r < len / sizeof mine; r++) {
        double x[5];
        memcpy(x, all + r * sizeof mine, sizeof mine);
        for (int i = 0; i < 3; i++) if (x[i] > sum[i]) sum[i] = x[i];
        for (int i = 3; i < 5; i++) sum[i] += x[i];   /* exact: counts far below 2^53 */
    }
    free(all);
    *t = (fdpo_generate_timing){sum[0], sum[1], sum[2], (size_t)sum[3], (size_t)sum[4]};
    return 0;
}

int fdpo_generate_ranks(const fdpo_gpt2 *m, const fdpo_tokenizer *tok, int32_t eot, const fdpo_sample_config *c,
                        int32_t *const *prompt_ids, const size_t *prompt_lens, size_t n_prompts,
                        size_t n_samples, fdpo_sample **out, fdpo_generate_timing *timing) {
    if (timing) *timing = (fdpo_generate_timing){0};
    if (fdpo_samples_count_check(NULL, n_prompts, n_samples)) return -1;   /* before any rank sizes its block */
    if (fdpo_dist_size() == 1)
        return generate_timed(m, tok, eot, c, prompt_ids, prompt_lens, n_prompts, n_samples, out, timing);
    *out = NULL;
    /* every rank must sample the same job (each generates a block of it): the settings that
     * change samples, the prompts and the weights (--batch-size and --threads may differ) */
    uint64_t h = FDPO_HASH_INIT;
    const double real[2] = {c->temperature, c->top_p};
    const uint64_t whole[5] = {c->top_k, c->max_new_tokens, c->seed, c->first_prompt, n_samples};
    h = fdpo_hash64(h, real, sizeof real);
    h = fdpo_hash64(h, whole, sizeof whole);
    h = fdpo_hash64(h, &eot, sizeof eot);
    if (c->stop) h = fdpo_hash64(h, c->stop, strlen(c->stop) + 1);
    for (size_t i = 0; i < n_prompts; i++) {
        h = fdpo_hash64(h, &prompt_lens[i], sizeof prompt_lens[i]);
        h = fdpo_hash64(h, prompt_ids[i], prompt_lens[i] * sizeof(int32_t));
    }
    h = fdpo_hash64(h, m->params_memory, m->n_params * sizeof(float));
    const int precision[2] = {(int)m->precision, (int)fdpo_get_precision()};   /* bf16 samples other tokens */
    h = fdpo_hash64(h, precision, sizeof precision);
    if (fdpo_dist_check_agree("the sampling flags (--precision included), prompts or model", h)) return -1;
    /* each rank's block on one bf16 route (the decoder keeps the route it starts with) */
    if (fdpo_dist_agree_bf16_route()) return -1;
    size_t b, e;
    fdpo_dist_shard(n_prompts, &b, &e);
    fdpo_sample_config mine_c = *c;
    mine_c.first_prompt = c->first_prompt + b;
    fdpo_sample *mine = NULL;
    fdpo_generate_timing tm = {0};
    int failed = generate_timed(m, tok, eot, &mine_c, prompt_ids + b, prompt_lens + b, e - b, n_samples, &mine, &tm);
    if (timing_over_ranks(&tm)) failed = -1;
    if (timing) *timing = tm;
    int rc = gather(failed, mine, failed ? 0 : (e - b) * n_samples, c->first_prompt + b, NULL,
                    n_prompts * n_samples, out, NULL);
    if (mine) fdpo_samples_free(mine, (e - b) * n_samples);
    return rc;
}

int fdpo_sample_and_score_ranks(fdpo_sampler *smp, const fdpo_tokenizer *tok, const fdpo_sample_config *c,
                                const char *what, long round, char *const *ps, size_t P, size_t k,
                                fdpo_reward *reward, int32_t ***ids, size_t **lens, fdpo_sample **s, char **pp,
                                char **cc, double *r, double *seconds) {
    if (fdpo_dist_size() == 1)
        return fdpo_sample_and_score(smp, tok, c, what, round, ps, P, k, reward, ids, lens, s, pp, cc, r, seconds);
    double t0 = fdpo_now(), t1 = t0;
    /* every rank encodes every prompt: the callers score and train on all samples */
    if (fdpo_encode_prompts(tok, ps, P, ids, lens)) return -1;
    size_t b, e;
    fdpo_dist_shard(P, &b, &e);
    const size_t n_mine = (e - b) * k;
    fdpo_sample_config sc = *c;
    sc.seed = fdpo_round_seed(c->seed, round);
    sc.first_prompt = b;
    fdpo_sample *mine = NULL;
    double *r_mine = fdpo_malloc((n_mine ? n_mine : 1) * sizeof(double));
    int failed = fdpo_sampler_generate(smp, tok, fdpo_tokenizer_eot(tok), &sc, *ids + b, *lens + b, e - b, k, &mine);
    t1 = fdpo_now();
    if (!failed && n_mine > 0) {
        char **mp = fdpo_malloc(n_mine * sizeof *mp), **mc = fdpo_malloc(n_mine * sizeof *mc);
        size_t *nt = fdpo_malloc(n_mine * sizeof *nt);
        for (size_t i = 0; i < n_mine; i++) {
            mp[i] = ps[b + mine[i].prompt_index]; mc[i] = mine[i].text; nt[i] = mine[i].n_completion;
        }
        failed = fdpo_reward_score(reward, n_mine, mp, mc, nt, r_mine);
        if (failed) fdpo_error_context("%s: %s %s", what, fdpo_reward_flag(reward), fdpo_reward_spec(reward));
        free(mp); free(mc); free(nt);
    }
    int rc = gather(failed, mine, failed ? 0 : n_mine, b, r_mine, P * k, s, r);
    if (seconds) { seconds[0] = t1 - t0; seconds[1] = fdpo_now() - t1; }   /* this rank's; the gather counts as scoring */
    if (mine) fdpo_samples_free(mine, n_mine);
    free(r_mine);
    for (size_t i = 0; !rc && i < P * k; i++) { pp[i] = ps[(*s)[i].prompt_index]; cc[i] = (*s)[i].text; }
    return rc;
}
