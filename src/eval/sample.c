/* Sampling completions with the KV-cache decoder: temperature, top-k, top-p, stop at EOT or
 * a stop string, n samples per prompt, one RNG stream per (seed, prompt, sample). */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/chat.h"
#include "fdpo/decode.h"
#include "fdpo/eval.h"

int fdpo_sample_config_check(const fdpo_sample_config *c) {
    if (!(c->temperature >= 0)) return fdpo_error("--temperature: %g must be >= 0 (0 = greedy)", c->temperature);
    if (c->temperature > 0 && !(1.0 / c->temperature <= FLT_MAX))   /* the logits' scale 1/T: inf drew token 0 */
        return fdpo_error("--temperature: %g is too small (1/T overflows a float); use 0 for greedy", c->temperature);
    if (!(c->top_p > 0 && c->top_p <= 1))   /* shortest text that reads back: %g printed 1.0000001 as 1 */
        return fdpo_error("--top-p: %s is outside (0, 1]", fdpo_shortest(c->top_p).s);
    if (c->temperature == 0 && (c->top_k || c->top_p < 1))   /* greedy takes the top token whatever they keep */
        return fdpo_error("--%s: has no effect with --temperature 0 (greedy decoding)", c->top_k ? "top-k" : "top-p");
    if (c->max_new_tokens == 0) return fdpo_error("--max-new-tokens: must be > 0");
    if (c->batch == 0) return fdpo_error("--batch-size: must be > 0");
    if (c->stop && !*c->stop) return fdpo_error("--stop: the stop string is empty (leave --stop out for none)");
    /* the sampler matches the stop in the completion's bytes and the text is cut where the
     * decoded text (invalid bytes as U+FFFD) holds it: one place only for valid UTF-8 without
     * U+FFFD (a lone byte cut a character in two, written as invalid UTF-8; U+FFFD cut the text
     * at an invalid byte while sampling ran on) */
    if (c->stop && !fdpo_utf8_valid(c->stop, strlen(c->stop)))
        return fdpo_error("--stop: the stop string is not valid UTF-8 (the completion's text is UTF-8)");
    if (c->stop && strstr(c->stop, "\xEF\xBF\xBD"))
        return fdpo_error("--stop: the stop string holds U+FFFD, which the decoded text also shows for bytes that are "
                          "not UTF-8, where the completion's bytes hold no stop");
    return 0;
}

int fdpo_sample_distinct_check(const fdpo_sample_config *c, long n, size_t vocab, const char *need, const char *else_what) {
    if (c->temperature == 0 || c->top_k == 1)
        return fdpo_error("--%s: %s, and greedy decoding gives all --n %ld the same text (%s); sample with "
                          "--temperature > 0 and --top-k 0 or > 1", c->temperature == 0 ? "temperature 0" : "top-k 1",
                          need, n, else_what);
    /* top-p keeps the shortest prefix whose mass reaches top_p of the kept mass, and the most
     * probable of K kept tokens holds at least 1/K of it: top_p <= 1/K keeps that token alone at
     * every position, greedy decoding again. K is --top-k's where it keeps fewer than the
     * vocabulary's V, else V (vocab 0: not known yet; --top-k's bound holds whatever V is, and
     * the caller checks again once the model is read). */
    const int by_top_k = c->top_k > 0 && (!vocab || c->top_k < vocab);
    const size_t K = by_top_k ? c->top_k : vocab;
    if (K > 1 && c->top_p < 1 && c->top_p <= 1.0 / (double)K) {
        char of[64];
        if (by_top_k) snprintf(of, sizeof of, "--top-k %zu's tokens", K);
        else snprintf(of, sizeof of, "the vocabulary's %zu tokens", K);
        return fdpo_error("--top-p %s: %s, and a top-p at or below 1/%zu (%s) keeps only the most probable token, so "
                          "greedy decoding gives all --n %ld the same text (%s); sample with --top-p > 1/%zu",
                          fdpo_shortest(c->top_p).s, need, K, of, n, else_what, K);
    }
    return 0;
}

void fdpo_sample_rng(fdpo_rng *r, uint64_t seed, size_t prompt_index, size_t sample_index) {
    uint64_t key[3] = {seed, (uint64_t)prompt_index, (uint64_t)sample_index};
    fdpo_rng_seed(r, fdpo_hash64(FDPO_HASH_INIT, key, sizeof key));
}

static int by_prob_desc(const void *a, const void *b, void *ctx) {
    const double *p = ctx;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    if (p[i] > p[j]) return -1;
    if (p[i] < p[j]) return 1;
    return i < j ? -1 : i > j; /* ties: lower id first, so the order is deterministic */
}

/* Does token i come before token j in by_prob_desc's order? */
static inline int prob_before(const double *p, size_t i, size_t j) { return p[i] > p[j] || (p[i] == p[j] && i < j); }

/* order[0..k) = the first k tokens of by_prob_desc's order, in that order, without sorting
 * all V: a k-element heap whose root is the last token kept so far (O(V log k)), then a
 * sort of the k. The order is total (ties go by id), so this is exactly the prefix a full
 * sort gives. */
static void top_k_order(size_t *order, const double *p, size_t V, size_t k) {
    size_t *h = order, n = 0;
    for (size_t v = 0; v < V; v++) {
        size_t i;
        if (n < k) { /* push, sift up: a parent comes after its children */
            h[i = n++] = v;
            while (i > 0 && prob_before(p, h[(i - 1) / 2], h[i])) {
                size_t up = (i - 1) / 2, t = h[up];
                h[up] = h[i]; h[i] = t; i = up;
            }
            continue;
        }
        if (!prob_before(p, v, h[0])) continue;
        h[i = 0] = v; /* replace the root, sift down */
        for (;;) {
            size_t w = i, l = 2 * i + 1, r = l + 1;
            if (l < n && prob_before(p, h[w], h[l])) w = l;
            if (r < n && prob_before(p, h[w], h[r])) w = r;
            if (w == i) break;
            size_t t = h[w]; h[w] = h[i]; h[i] = t; i = w;
        }
    }
    qsort_r(order, n, sizeof *order, by_prob_desc, (void *)p);
}

/* Top-p alone: the nucleus is the shortest prefix of by_prob_desc's order whose mass
 * reaches target, so only that prefix needs ordering. order[0..k) = the first k tokens
 * (top_k_order, O(V log k)) for k = 64, 256, ... until they hold target; a flat
 * distribution (k past V/4) sorts the whole vocabulary. Returns k (V after the sort).
 * Sorting all V took 9 ms per row at V = 50257 (CPU time, loaded machine): for 8 rows more
 * than a 124M decoding step's forward. */
static size_t top_p_order(size_t *order, const double *p, size_t V, double target) {
    for (size_t k = 64; k <= V / 4; k *= 4) {
        top_k_order(order, p, V, k);
        double cum = 0;
        for (size_t i = 0; i < k; i++) cum += p[order[i]];
        if (cum >= target) return k;
    }
    for (size_t v = 0; v < V; v++) order[v] = v;
    qsort_r(order, V, sizeof *order, by_prob_desc, (void *)p);
    return V;
}

/* rows whose weights one call of sample_weights_rows computes together: each row's running
 * sum is a chain of dependent double adds (50257 at GPT-2 size, one per token, each waiting
 * for the last), so a row alone runs at the adder's latency; 4 rows' chains interleaved in
 * one loop keep it busy, and the rows' exponentials fill the gaps */
#define SAMPLE_ROWS 4
/* tokens per block: a block's exponentials are computed into stack buffers, then summed */
#define SAMPLE_BLOCK 256

/* w [0:n] = expf ((lg [0:n] - mx) * inv_t) (inv_t = 1: expf (lg - mx) exactly), the
 * weights of one block; d (not NULL) = expf (lg - mx), the untempered ones */
static inline void sample_block_weights(float *w, float *d, const float *lg, size_t n, float mx, float inv_t) {
    for (size_t j = 0; j < n; j++) { float dj = lg[j] - mx; w[j] = dj * inv_t; if (d) d[j] = dj; }
    /* expf with its bits, 8 at a time (fdpo_expf_block): the token depends on every bit of
     * the weights (it is the first v whose running sum exceeds u) */
    fdpo_expf_block(w, w, n);
    if (d) fdpo_expf_block(d, d, n);
}

/* what sample_weights_rows stores in p [i] */
enum {
    SAMPLE_EACH,       /* p [i][v] = w_v (truncation orders the tokens by it) */
    SAMPLE_BLOCK_SUMS  /* p [i][b] = row i's running sum at the end of block b (SAMPLE_BLOCK
                        * tokens): the draw finds u's block by them and sums that block
                        * again (sample_draw), instead of storing and reading a running
                        * sum per token (8 bytes per token: 3.2 MB per step of 8 rows at
                        * GPT-2 size, more than the L2 holds) */
};

/* One pass over each row's logits in v order, for n <= SAMPLE_ROWS rows at once (NR, a
 * constant after inlining): the weights w_v of sample_block_weights, into p [i] as `store`
 * says (p may be NULL: nothing). total [i] = the sum of row i's w_v (double, in v order);
 * z1 (not NULL): z1 [i] = the sum of expf (lg [v] - mx) in v order, the untempered
 * normaliser. Every row's sums are the same doubles as a loop over that row alone. */
static inline __attribute__((always_inline)) void
sample_weights_rows_n(double *const *p, const float *const *lg, size_t V, const float *mx, float inv_t, int store,
                      double *total, double *z1, const size_t NR) {
    float x[SAMPLE_ROWS][SAMPLE_BLOCK], d[SAMPLE_ROWS][SAMPLE_BLOCK];
    double t[SAMPLE_ROWS] = {0}, z[SAMPLE_ROWS] = {0};
    for (size_t v0 = 0; v0 < V; v0 += SAMPLE_BLOCK) {
        size_t nb = V - v0 < SAMPLE_BLOCK ? V - v0 : SAMPLE_BLOCK;
        for (size_t i = 0; i < NR; i++) sample_block_weights(x[i], z1 ? d[i] : NULL, lg[i] + v0, nb, mx[i], inv_t);
        /* the rows' chains side by side, one loop per kind of output (no tests inside) */
        if (p && store == SAMPLE_EACH) {
            double *pb[SAMPLE_ROWS];
            for (size_t i = 0; i < NR; i++) pb[i] = p[i] + v0;
            for (size_t j = 0; j < nb; j++)
                for (size_t i = 0; i < NR; i++) { t[i] += (double)x[i][j]; pb[i][j] = (double)x[i][j]; }
        } else {
            for (size_t j = 0; j < nb; j++)
                for (size_t i = 0; i < NR; i++) t[i] += (double)x[i][j];
            if (p) for (size_t i = 0; i < NR; i++) p[i][v0 / SAMPLE_BLOCK] = t[i];
        }
        if (z1)
            for (size_t j = 0; j < nb; j++)
                for (size_t i = 0; i < NR; i++) z[i] += (double)d[i][j];
    }
    for (size_t i = 0; i < NR; i++) {
        total[i] = t[i];
        if (z1) z1[i] = z[i];
    }
}

static void sample_weights_rows(size_t n, double *const *p, const float *const *lg, size_t V, const float *mx,
                                float inv_t, int store, double *total, double *z1) {
    switch (n) {
    case 4: sample_weights_rows_n(p, lg, V, mx, inv_t, store, total, z1, 4); break;
    case 3: sample_weights_rows_n(p, lg, V, mx, inv_t, store, total, z1, 3); break;
    case 2: sample_weights_rows_n(p, lg, V, mx, inv_t, store, total, z1, 2); break;
    default: sample_weights_rows_n(p, lg, V, mx, inv_t, store, total, z1, 1); break;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
/* sample_max's lanes on AVX-512 (GCC 12 leaves its loop scalar, vmaxss by vmaxss): vmaxps
 * (a, b) is "a > b ? a : b", lane by lane, NaNs and signed zeros included */
__attribute__((target("avx512f"))) static size_t sample_max16_avx512(float *m, const float *logits, size_t V) {
    __m512 mv = _mm512_loadu_ps(m);
    size_t v = 0;
    for (; v + 16 <= V; v += 16) mv = _mm512_max_ps(_mm512_loadu_ps(logits + v), mv);
    _mm512_storeu_ps(m, mv);
    return v;
}
#endif

/* max of logits [V], NaNs skipped (as a scalar "if (x > mx) mx = x" skips them), 16 lanes
 * at a time: each lane's "x > m ? x : m" is one vmaxps, and a maximum does not depend on
 * the order it is taken in */
static float sample_max(const float *logits, size_t V) {
    float m[16], mx = -INFINITY;
    size_t v = 0;
    for (int j = 0; j < 16; j++) m[j] = -INFINITY;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (__builtin_cpu_supports("avx512f")) v = sample_max16_avx512(m, logits, V);
#endif
    for (; v + 16 <= V; v += 16)
        for (int j = 0; j < 16; j++) m[j] = logits[v + j] > m[j] ? logits[v + j] : m[j];
    for (int j = 0; j < 16; j++) if (m[j] > mx) mx = m[j];
    for (; v < V; v++) if (logits[v] > mx) mx = logits[v];
    return mx;
}

/* The draw of one row once its weights are known (fdpo_sample_tokens' last part): p = work
 * as sample_weights_rows left it (SAMPLE_BLOCK_SUMS without truncation, else SAMPLE_EACH),
 * total its sum, mx the row's max */
static int32_t sample_draw(const float *logits, size_t V, const fdpo_sample_config *c, fdpo_rng *r, double *p,
                           size_t *order, float mx, double total) {
    float inv_t = (float)(1.0 / c->temperature);
    int truncate = (c->top_k > 0 && c->top_k < V) || c->top_p < 1;
    if (!truncate) {
        /* the token is the first v whose running total (the sum in v order: the doubles a
         * scan adding weight after weight reaches) exceeds u. The totals never decrease, so
         * it lies in the first block whose end total p [b] exceeds u; that block's weights
         * are computed again (the same bits) and summed from the previous block's end total,
         * which reaches p [b] again: the same doubles as a scan of all V. */
        double u = fdpo_rng_uniform(r) * total;
        size_t n_blocks = (V + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK, b = 0, lo = V; /* V: none */
        while (b < n_blocks && !(u < p[b])) b++;
        if (b < n_blocks) {
            float w[SAMPLE_BLOCK];
            size_t v0 = b * SAMPLE_BLOCK, nb = V - v0 < SAMPLE_BLOCK ? V - v0 : SAMPLE_BLOCK;
            double run = b > 0 ? p[b - 1] : 0;
            sample_block_weights(w, NULL, logits + v0, nb, mx, inv_t);
            for (size_t j = 0; j < nb; j++) {
                run += (double)w[j];
                if (u < run) { lo = v0 + j; break; }
            }
        }
        if (lo == V) { /* u landed on the rounding slack: the last token of positive weight */
            lo = V - 1;
            while (lo > 0 && !(expf((logits[lo] - mx) * inv_t) > 0)) lo--;
        }
        return (int32_t)lo;
    }
    /* truncation: tokens in decreasing probability; top-k keeps the first k, top-p then keeps
     * the shortest prefix (of those) whose mass reaches top_p of the kept mass */
    size_t keep;
    double kept = 0;
    if (c->top_k > 0 && c->top_k < V) {
        keep = c->top_k;
        top_k_order(order, p, V, keep);
        for (size_t i = 0; i < keep; i++) kept += p[order[i]];
    } else { /* top-p alone: its threshold is top_p of all the mass */
        keep = top_p_order(order, p, V, c->top_p * total);
        kept = total;
    }
    if (c->top_p < 1) {
        double cum = 0, target = c->top_p * kept;
        size_t i = 0;
        for (; i < keep; i++) { cum += p[order[i]]; if (cum >= target) { i++; break; } }
        keep = i < keep ? i : keep;
        kept = 0;
        for (size_t j = 0; j < keep; j++) kept += p[order[j]];
    }
    double u = fdpo_rng_uniform(r) * kept, cum = 0;
    int32_t token = (int32_t)order[keep - 1];
    for (size_t i = 0; i < keep; i++) {
        cum += p[order[i]];
        if (u < cum) { token = (int32_t)order[i]; break; }
    }
    return token;
}

void fdpo_sample_tokens(size_t n, const float *const *logits, size_t V, const fdpo_sample_config *c,
                        fdpo_rng *const *r, double *const *work, size_t *const *order, int32_t *tokens,
                        double *logp) {
    for (size_t i0 = 0; i0 < n; i0 += SAMPLE_ROWS) {
        size_t m = n - i0 < SAMPLE_ROWS ? n - i0 : SAMPLE_ROWS;
        const float *const *lg = logits + i0;
        float mx[SAMPLE_ROWS];
        /* one pass of expf gives both the sampling weights and, at temperature 1, the
         * normaliser of log pi: float exponentials of values <= 0, summed in double */
        double total[SAMPLE_ROWS], z1[SAMPLE_ROWS];
        for (size_t i = 0; i < m; i++) mx[i] = sample_max(lg[i], V);
        if (c->temperature == 0) {
            sample_weights_rows(m, NULL, lg, V, mx, 1.0f, SAMPLE_EACH, z1, NULL);
            for (size_t i = 0; i < m; i++) {
                size_t best = 0;
                for (size_t v = 0; v < V; v++) if (lg[i][v] > lg[i][best]) best = v;
                tokens[i0 + i] = (int32_t)best;
            }
        } else {
            int truncate = (c->top_k > 0 && c->top_k < V) || c->top_p < 1;
            sample_weights_rows(m, work + i0, lg, V, mx, (float)(1.0 / c->temperature),
                                truncate ? SAMPLE_EACH : SAMPLE_BLOCK_SUMS, total, c->temperature == 1 ? NULL : z1);
            for (size_t i = 0; i < m; i++) {
                if (c->temperature == 1) z1[i] = total[i];
                tokens[i0 + i] = sample_draw(lg[i], V, c, r[i0 + i], work[i0 + i], order ? order[i0 + i] : NULL,
                                             mx[i], total[i]);
            }
        }
        if (logp)
            for (size_t i = 0; i < m; i++) logp[i0 + i] = (double)(lg[i][tokens[i0 + i]] - mx[i]) - log(z1[i]);
    }
}

int32_t fdpo_sample_token(const float *logits, size_t V, const fdpo_sample_config *c, fdpo_rng *r,
                          double *work, size_t *order, double *logp) {
    int32_t token;
    double lp;
    fdpo_sample_tokens(1, &logits, V, c, &r, &work, &order, &token, &lp);
    if (logp) *logp = lp;
    return token;
}

int fdpo_prompt_lens_check(const size_t *lens, const size_t *lines, size_t n, size_t n_positions, const char *path) {
    for (size_t p = 0; p < n; p++) {
        if (lens[p] < n_positions) continue;
        if (lines)
            return fdpo_error("%s:%zu: the prompt's %zu tokens leave no room to generate (model n_positions %zu)", path,
                              lines[p], lens[p], n_positions);
        return fdpo_error("--data %s: prompt %zu (blank lines not counted): %zu tokens leave no room to generate "
                          "(model n_positions %zu)", path, p + 1, lens[p], n_positions);
    }
    return 0;
}

int fdpo_prompts_check_fit(const fdpo_tokenizer *tok, char *const *prompts, const size_t *lines, size_t n,
                           const fdpo_gpt2_config *policy, const fdpo_gpt2_config *ref, size_t max_new_tokens,
                           const char *path) {
    int32_t **ids = NULL;
    size_t *lens = NULL;
    if (fdpo_encode_prompts(tok, prompts, n, &ids, &lens)) return fdpo_error_context("--data %s", path);
    int rc = fdpo_prompt_lens_check(lens, lines, n, policy->n_positions, path);
    /* a reference shorter than a sample failed after the first sampling, as "batch: token 16:
     * position 16 outside [0, n_positions 16)" */
    if (!rc && ref) rc = fdpo_eval_check_fit(policy, ref, lens, n, &(fdpo_eval_config){.sample.max_new_tokens = max_new_tokens});
    fdpo_free_ids(ids, lens, n);
    return rc;
}

int fdpo_encode_prompts(const fdpo_tokenizer *tok, char *const *prompts, size_t n, int32_t ***ids, size_t **lens) {
    *ids = fdpo_calloc(n ? n : 1, sizeof **ids);
    *lens = fdpo_calloc(n ? n : 1, sizeof **lens);
    for (size_t i = 0; i < n; i++) {
        int chat = fdpo_chat_encode_prompt(tok, prompts[i], &(*ids)[i], &(*lens)[i]); /* 1: not a conversation */
        if (chat < 0 || (chat == 1 && fdpo_tokenizer_encode(tok, prompts[i], strlen(prompts[i]), 0, &(*ids)[i], &(*lens)[i]))) {
            fdpo_free_ids(*ids, *lens, i);
            *ids = NULL; *lens = NULL;
            return fdpo_error_context("prompt %zu", i + 1);
        }
        if ((*lens)[i] == 0) { /* nothing to condition on: start from <|endoftext|> */
            (*ids)[i] = fdpo_realloc((*ids)[i], sizeof(int32_t));
            (*ids)[i][0] = fdpo_tokenizer_eot(tok);   /* as the preference and SFT data start it */
            (*lens)[i] = 1;
        }
    }
    return 0;
}

void fdpo_free_ids(int32_t **ids, size_t *lens, size_t n) {
    if (ids) for (size_t i = 0; i < n; i++) free(ids[i]);
    free(ids); free(lens);
}

void fdpo_samples_free(fdpo_sample *s, size_t n) {
    if (!s) return;
    for (size_t i = 0; i < n; i++) { free(s[i].tokens); free(s[i].text); }
    free(s);
}

/* Per-slot state of one sequence being sampled. */
typedef struct {
    fdpo_sample *out;
    fdpo_rng rng;
    char *bytes; size_t n_bytes, cap_bytes;  /* raw bytes generated so far, specials left out (stop strings) */
    int active;
    int32_t next;                            /* token sampled at this step */
} slot_state;

static void append_token(fdpo_sample *s, int32_t t) {
    s->tokens = fdpo_realloc(s->tokens, (s->n_tokens + 1) * sizeof *s->tokens);
    s->tokens[s->n_tokens++] = t;
}

/* Decode the completion text without special tokens (as Hugging Face's
 * skip_special_tokens=True; the ids keep them); with a stop string, cut at its first
 * occurrence. */
static void finish_text(fdpo_sample *s, const fdpo_tokenizer *tok, const char *stop) {
    if (!tok) return;
    size_t n = s->n_completion, len = 0;
    char *raw = fdpo_tokenizer_decode_ex(tok, s->tokens, n, 1, &len);
    if (!raw) { s->text = fdpo_strdup(""); return; }
    /* a NUL byte (a byte-level tokenizer's token 0) would end the C string there, and the
     * reward would score a cut text: it becomes U+FFFD (the ids keep the token) */
    size_t nul = 0;
    for (size_t i = 0; i < len; i++) nul += raw[i] == 0;
    if (nul) {
        char *t = fdpo_malloc(len + 2 * nul + 1), *q = t;
        for (size_t i = 0; i < len; i++) {
            if (raw[i]) *q++ = raw[i];
            else { memcpy(q, "\xEF\xBF\xBD", 3); q += 3; }
        }
        *q = 0;
        free(raw);
        raw = t;
    }
    s->text = raw;
    if (stop && *stop) {
        char *at = strstr(s->text, stop);
        if (at) *at = 0;
    }
}

int fdpo_generate_eot(const fdpo_gpt2 *m, const fdpo_tokenizer *tok, int32_t eot, const fdpo_sample_config *c,
                      int32_t *const *prompt_ids, const size_t *prompt_lens, size_t n_prompts,
                      size_t n_samples, fdpo_sample **out);

int fdpo_generate(const fdpo_gpt2 *m, const fdpo_tokenizer *tok, const fdpo_sample_config *c,
                  int32_t *const *prompt_ids, const size_t *prompt_lens, size_t n_prompts,
                  size_t n_samples, fdpo_sample **out) {
    return fdpo_generate_eot(m, tok, tok ? fdpo_tokenizer_eot(tok) : -1, c, prompt_ids, prompt_lens,
                             n_prompts, n_samples, out);
}

/* The sampler: fdpo_generate's decoder and buffers, kept from one call to the next. A
 * call that needs more slots or a longer cache than the decoder has makes a new one (sized
 * for the larger of the old and the new shapes); a larger decoder than a call needs gives
 * the same samples (each slot attends over its own positions only). */
struct fdpo_sampler {
    const fdpo_gpt2 *model;
    fdpo_decoder *dec;
    size_t dec_seqs, dec_len;       /* the decoder's slots and cache length */
    fdpo_precision dec_precision;   /* the model's precision when dec was made */
    fdpo_generate_timing timing;    /* of the last generate call */
    size_t cap_b, cap_feed;         /* slots and prompt tokens the buffers below hold */
    int has_order;
    char *slot_memory;              /* the SLOT_BUFFERS below, carved from one allocation */
    float *logits, *prefill;        /* [cap_b, V] */
    double *work;                   /* [cap_b, V] */
    size_t *order;                  /* [cap_b, V] (top-k / top-p only) */
    slot_state *st;
    size_t *slots, *n_new, *row_of, *src_slot;
    int32_t *feed;                  /* [cap_feed] */
    const float **lrow;
    /* one step's draws: the active slots, their RNGs, rows of work and order, the results */
    size_t *draw_slot;
    fdpo_rng **draw_rng;
    double **draw_work, *draw_logp;
    size_t **draw_order;
    int32_t *draw_token;
};

/* The buffers of cap_b slots: (field, elements per slot) */
#define SLOT_BUFFERS(X, V)                                                                             \
    X(logits, V) X(prefill, V) X(work, V) X(st, 1) X(slots, 1) X(n_new, 1) X(row_of, 1) X(src_slot, 1) \
    X(lrow, 1) X(draw_slot, 1) X(draw_rng, 1) X(draw_work, 1) X(draw_logp, 1) X(draw_order, 1) X(draw_token, 1)
#define SLOT_BYTES(field, per) ((B * (per) * sizeof *s->field + 63) / 64 * 64)

/* every SLOT_BUFFERS array for B slots of V logits, carved from one allocation (64-byte
 * aligned parts); the old contents are not kept */
static void slot_buffers_alloc(fdpo_sampler *s, size_t B, size_t V) {
    size_t total = 0;
#define ADD_SIZE(field, per) total += SLOT_BYTES(field, per);
    SLOT_BUFFERS(ADD_SIZE, V)
#undef ADD_SIZE
    free(s->slot_memory);
    char *p = s->slot_memory = fdpo_malloc(total);
#define CARVE(field, per) s->field = (void *)p; p += SLOT_BYTES(field, per);
    SLOT_BUFFERS(CARVE, V)
#undef CARVE
    s->cap_b = B;
}

fdpo_sampler *fdpo_sampler_create(const fdpo_gpt2 *m) {
    fdpo_sampler *s = fdpo_calloc(1, sizeof *s);
    s->model = m;
    return s;
}

const fdpo_gpt2 *fdpo_sampler_model(const fdpo_sampler *s) { return s->model; }

void fdpo_sampler_free(fdpo_sampler *s) {
    if (!s) return;
    fdpo_decoder_free(s->dec);
    free(s->slot_memory); free(s->order); free(s->feed);
    free(s);
}

/* A decoder of at least B slots of cache_len tokens with weights that are the model's now,
 * and buffers for B slots and feed_len tokens fed at once. */
static int sampler_prepare(fdpo_sampler *s, size_t B, size_t cache_len, size_t feed_len, int truncate) {
    const fdpo_gpt2 *m = s->model;
    const size_t V = m->config.vocab_size;
    if (s->dec && (B > s->dec_seqs || cache_len > s->dec_len || m->precision != s->dec_precision)) {
        if (m->precision == s->dec_precision) {   /* grow to cover both shapes: no back and forth */
            if (s->dec_seqs > B) B = s->dec_seqs;
            if (s->dec_len > cache_len) cache_len = s->dec_len;
        }
        fdpo_decoder_free(s->dec);
        s->dec = NULL;
    }
    if (!s->dec) {
        s->dec = fdpo_decoder_create(m, B, cache_len);
        if (!s->dec) return -1;
        s->dec_seqs = B; s->dec_len = cache_len; s->dec_precision = m->precision;
    } else if (!m->params_frozen) {
        /* made in an earlier call: the parameters may have changed since (an optimizer
         * step), and bf16 decodes from a packed copy of them (fp32: nothing to do) */
        fdpo_decoder_refresh_weights(s->dec);
    }
    if (B > s->cap_b) {
        slot_buffers_alloc(s, B, V);
        free(s->order); /* [cap_b, V]: remade at the new size when a truncating sampler needs it */
        s->order = NULL;
        s->has_order = 0;
    }
    if (truncate && !s->has_order) {
        s->order = fdpo_malloc(s->cap_b * V * sizeof(size_t));
        s->has_order = 1;
    }
    if (feed_len > s->cap_feed) {
        free(s->feed);
        s->feed = fdpo_malloc(feed_len * sizeof *s->feed);
        s->cap_feed = feed_len;
    }
    memset(s->st, 0, B * sizeof *s->st);
    memset(s->lrow, 0, B * sizeof *s->lrow);
    return 0;
}

void fdpo_sampler_timing(const fdpo_sampler *s, fdpo_generate_timing *out) { *out = s->timing; }

int fdpo_generate_eot(const fdpo_gpt2 *m, const fdpo_tokenizer *tok, int32_t eot, const fdpo_sample_config *c,
                      int32_t *const *prompt_ids, const size_t *prompt_lens, size_t n_prompts,
                      size_t n_samples, fdpo_sample **out) {
    fdpo_sampler *smp = fdpo_sampler_create(m);
    int rc = fdpo_sampler_generate(smp, tok, eot, c, prompt_ids, prompt_lens, n_prompts, n_samples, out);
    fdpo_sampler_free(smp);
    return rc;
}

int fdpo_samples_count_check(const char *prompts_flag, size_t n_prompts, size_t n_samples) {
    /* the flags at fault: --n, and the one that set the prompt count when no file did */
    char flag[64];
    if (prompts_flag) snprintf(flag, sizeof flag, "%s/--n:", prompts_flag);
    else snprintf(flag, sizeof flag, "--n %zu:", n_samples);
    /* n_prompts * n_samples records: a product past size_t wrapped (generate wrote 2 samples
     * for --n 6148914691236517206, eval indexed out of bounds) */
    if (n_samples && n_prompts > SIZE_MAX / sizeof(fdpo_sample) / n_samples)
        return fdpo_error("%s %zu prompts x %zu samples cannot be held (their count alone overflows memory)", flag,
                          n_prompts, n_samples);
    /* records beyond the machine's memory ended in the out-of-memory handler's line, which
     * names no flag */
    const double bytes = (double)n_prompts * (double)n_samples * (double)sizeof(fdpo_sample), ram = fdpo_ram_bytes();
    if (ram > 0 && bytes > ram)
        return fdpo_error("%s %zu prompts x %zu samples: their records alone take %.3g GB, more than this machine's "
                          "%.3g GB", flag, n_prompts, n_samples, bytes / 1e9, ram / 1e9);
    return 0;
}

int fdpo_sampler_generate(fdpo_sampler *smp, const fdpo_tokenizer *tok, int32_t eot, const fdpo_sample_config *c,
                          int32_t *const *prompt_ids, const size_t *prompt_lens, size_t n_prompts,
                          size_t n_samples, fdpo_sample **out) {
    const fdpo_gpt2 *m = smp->model;
    *out = NULL;
    if (fdpo_sample_config_check(c)) return -1;
    if (n_samples == 0) return fdpo_error("number of samples per prompt must be > 0");
    if (fdpo_samples_count_check(NULL, n_prompts, n_samples)) return -1;
    size_t V = m->config.vocab_size, maxT = m->config.n_positions, max_prompt = 0;
    for (size_t p = 0; p < n_prompts; p++) {
        if (prompt_lens[p] == 0) return fdpo_error("prompt %zu: no tokens", c->first_prompt + p + 1);
        if (prompt_lens[p] >= maxT)
            return fdpo_error("prompt %zu (blank lines not counted): %zu tokens leave no room to generate (model n_positions %zu)",
                              c->first_prompt + p + 1, prompt_lens[p], maxT);
        for (size_t i = 0; i < prompt_lens[p]; i++)
            if (prompt_ids[p][i] < 0 || (size_t)prompt_ids[p][i] >= V)
                return fdpo_error("prompt %zu: token id %d outside the model's vocabulary of %zu", c->first_prompt + p + 1, prompt_ids[p][i], V);
        if (prompt_lens[p] > max_prompt) max_prompt = prompt_lens[p];
    }
    size_t total = n_prompts * n_samples;
    fdpo_sample *samples = fdpo_calloc(total ? total : 1, sizeof *samples);
    if (total == 0) { *out = samples; return 0; }
    size_t B = c->batch < total ? c->batch : total;
    size_t cache_len = max_prompt + c->max_new_tokens;
    if (cache_len > maxT) cache_len = maxT;
    int truncate = (c->top_k > 0 && c->top_k < V) || c->top_p < 1;
    fdpo_generate_timing *timing = &smp->timing;
    *timing = (fdpo_generate_timing){0};
    double t_start = fdpo_now();
    if (sampler_prepare(smp, B, cache_len, B * max_prompt + B, truncate)) { free(samples); return -1; }
    double t_loop = fdpo_now();
    timing->setup = t_loop - t_start;
    fdpo_decoder *dec = smp->dec;
    float *logits = smp->logits, *prefill = smp->prefill;
    double *work = smp->work;
    size_t *order = truncate ? smp->order : NULL;
    slot_state *st = smp->st;
    size_t *slots = smp->slots, *n_new = smp->n_new;
    int32_t *feed = smp->feed;
    /* slot b's logits for the next draw: a row of prefill (just filled) or of logits (the
     * step's rows come back packed in slot order), read where they are, never moved */
    const float **lrow = smp->lrow;
    /* refill bookkeeping: filled slot i is row_of[i], its prompt was prefilled as unique row src_slot[i] */
    size_t *row_of = smp->row_of, *src_slot = smp->src_slot;
    size_t *draw_slot = smp->draw_slot, **draw_order = smp->draw_order;
    fdpo_rng **draw_rng = smp->draw_rng;
    double **draw_work = smp->draw_work, *draw_logp = smp->draw_logp;
    int32_t *draw_token = smp->draw_token;
    int rc = 0;

    /* Continuous batching: B slots decode together (one forward over the rows of every
     * active sequence per step, so each weight is read once per step for all of them);
     * a slot whose sample ends takes the next sample at once instead of idling until the
     * slowest sequence of its batch ends. Samples of the same prompt that start together
     * share one prefill (the cache is copied). A sample's tokens depend only on its own
     * rows and RNG stream (seed, prompt, sample), not on which slot or batch it ran in. */
    size_t next = 0;
    for (;;) {
        /* refill the free slots with the next samples, prompt-major */
        size_t n_unique = 0, n_feed = 0, n_fill = 0;
        for (size_t b = 0; b < B && next < total; b++) {
            if (st[b].active) continue;
            size_t seq = next++, p = seq / n_samples;
            fdpo_decoder_reset(dec, b);
            fdpo_sample *s = &samples[seq];
            s->prompt_index = p; s->sample_index = seq % n_samples;
            st[b] = (slot_state){.out = s, .active = 1};
            fdpo_sample_rng(&st[b].rng, c->seed, c->first_prompt + p, s->sample_index);
            row_of[n_fill] = b;
            if (n_fill > 0 && st[row_of[n_fill - 1]].out->prompt_index == p) { /* same prompt: share */
                src_slot[n_fill] = src_slot[n_fill - 1];
                n_fill++;
                continue;
            }
            src_slot[n_fill++] = n_unique;
            slots[n_unique] = b; n_new[n_unique] = prompt_lens[p];
            memcpy(feed + n_feed, prompt_ids[p], prompt_lens[p] * sizeof *feed);
            n_feed += prompt_lens[p];
            n_unique++;
        }
        if (n_unique > 0) {
            double t_prefill = fdpo_now();
            if ((rc = fdpo_decoder_forward(dec, n_unique, slots, n_new, feed, prefill, 0))) break;
            /* each filled slot gets its prompt's last-token logits (and cache, if shared) */
            for (size_t i = 0; i < n_fill; i++) {
                size_t b = row_of[i], u = src_slot[i];
                lrow[b] = prefill + u * V;
                if (slots[u] != b) fdpo_decoder_copy_slot(dec, b, slots[u]);
            }
            timing->prefill += fdpo_now() - t_prefill;
        }
        size_t n_running = 0;
        for (size_t b = 0; b < B; b++) n_running += st[b].active;
        if (n_running == 0) break;
        /* sample one token for every active slot; each slot has its own RNG. The rows go
         * in groups of up to 4 (fdpo_sample_tokens sums a group's rows together), at least
         * one group per thread */
        size_t n_draw = 0;
        for (size_t b = 0; b < B; b++) {
            if (!st[b].active) continue;
            draw_slot[n_draw] = b; draw_rng[n_draw] = &st[b].rng;
            draw_work[n_draw] = work + b * V; draw_order[n_draw] = order ? order + b * V : NULL;
            n_draw++;
        }
        size_t n_threads = (size_t)omp_get_max_threads(), per = (n_draw + n_threads - 1) / n_threads;
        if (per > 4) per = 4;
        if (per < 1) per = 1;
        #pragma omp parallel for schedule(dynamic) if (n_draw * V >= 65536)
        for (size_t g = 0; g < n_draw; g += per) {
            size_t m = n_draw - g < per ? n_draw - g : per;
            const float *rows[4];
            for (size_t i = 0; i < m; i++) rows[i] = lrow[draw_slot[g + i]];
            fdpo_sample_tokens(m, rows, V, c, draw_rng + g, draw_work + g, order ? draw_order + g : NULL, draw_token + g,
                               draw_logp + g);
        }
        for (size_t i = 0; i < n_draw; i++) {
            size_t b = draw_slot[i];
            fdpo_sample *s = st[b].out;
            s->logp += draw_logp[i];
            append_token(s, draw_token[i]);
            st[b].next = draw_token[i];
        }
        size_t n_active = 0;
        for (size_t b = 0; b < B; b++) {
            if (!st[b].active) continue;
            fdpo_sample *s = st[b].out;
            int32_t t = st[b].next;
            size_t used = prompt_lens[s->prompt_index] + s->n_tokens;
            int done = 0;
            if (t == eot) { s->finish = FDPO_FINISH_EOT; done = 1; }
            else {
                s->n_completion++;
                /* the stop is matched in the text the completion is written as, which leaves
                 * special tokens out (finish_text): a special token adds no bytes, so the
                 * sample stops exactly when the written text first holds the stop */
                if (c->stop && *c->stop && tok && fdpo_tokenizer_is_special(tok, t)) {
                    /* a special token spelled exactly as the stop (--stop '<|im_end|>': a chat
                     * template's end of turn under a base model's other eos) ends the sample as
                     * its text would; it adds no bytes, so the written text is not cut */
                    size_t len;
                    const char *bytes = fdpo_tokenizer_token_bytes(tok, t, &len);
                    if (bytes && len == strlen(c->stop) && !memcmp(bytes, c->stop, len)) { s->finish = FDPO_FINISH_STOP; done = 1; }
                } else if (c->stop && *c->stop && tok) {
                    size_t len;
                    const char *bytes = fdpo_tokenizer_token_bytes(tok, t, &len);
                    if (st[b].n_bytes + len + 1 > st[b].cap_bytes) {
                        st[b].cap_bytes = 2 * (st[b].n_bytes + len + 1);
                        st[b].bytes = fdpo_realloc(st[b].bytes, st[b].cap_bytes);
                    }
                    memcpy(st[b].bytes + st[b].n_bytes, bytes, len);
                    st[b].n_bytes += len;
                    st[b].bytes[st[b].n_bytes] = 0;
                    /* only the tail can hold a new occurrence */
                    size_t sl = strlen(c->stop), from = st[b].n_bytes > len + sl ? st[b].n_bytes - len - sl : 0;
                    if (memmem(st[b].bytes + from, st[b].n_bytes - from, c->stop, sl)) { s->finish = FDPO_FINISH_STOP; done = 1; }
                }
                if (!done && (s->n_tokens >= c->max_new_tokens || used >= cache_len)) { s->finish = FDPO_FINISH_LENGTH; done = 1; }
            }
            if (done) { /* the slot is free for the next sample */
                finish_text(s, tok, c->stop);
                free(st[b].bytes);
                st[b] = (slot_state){0};
                continue;
            }
            slots[n_active] = b; n_new[n_active] = 1; feed[n_active] = t;
            n_active++;
        }
        if (n_active == 0) continue;
        if ((rc = fdpo_decoder_forward(dec, n_active, slots, n_new, feed, logits, 0))) break;
        for (size_t i = 0; i < n_active; i++) lrow[slots[i]] = logits + i * V;
        timing->decode_steps++;
        timing->decode_tokens += n_active;
    }
    /* the decoding steps: the loop less its prefills (the last draws, which end every
     * sample, count too) */
    timing->decode = fdpo_now() - t_loop - timing->prefill;
    for (size_t b = 0; b < B; b++) { free(st[b].bytes); st[b] = (slot_state){0}; }
    if (rc) { fdpo_samples_free(samples, total); return -1; }
    *out = samples;
    return 0;
}

int fdpo_sample_and_score(fdpo_sampler *smp, const fdpo_tokenizer *tok, const fdpo_sample_config *c, const char *what,
                          long round, char *const *ps, size_t P, size_t k, fdpo_reward *reward, int32_t ***ids,
                          size_t **lens, fdpo_sample **s, char **pp, char **cc, double *r, double *seconds) {
    const size_t N = P * k;
    double t0 = fdpo_now();
    fdpo_sample_config sc = *c;
    sc.seed = fdpo_round_seed(c->seed, round);
    int rc = fdpo_encode_prompts(tok, ps, P, ids, lens);
    if (!rc) rc = fdpo_sampler_generate(smp, tok, fdpo_tokenizer_eot(tok), &sc, *ids, *lens, P, k, s);
    if (rc) return rc;
    double t1 = fdpo_now();
    size_t *nt = fdpo_malloc((N ? N : 1) * sizeof *nt);
    for (size_t i = 0; i < N; i++) { pp[i] = ps[(*s)[i].prompt_index]; cc[i] = (*s)[i].text; nt[i] = (*s)[i].n_completion; }
    rc = fdpo_reward_score(reward, N, pp, cc, nt, r);
    free(nt);
    if (seconds) { seconds[0] = t1 - t0; seconds[1] = fdpo_now() - t1; }
    if (rc) fdpo_error_context("%s: %s %s", what, fdpo_reward_flag(reward), fdpo_reward_spec(reward));
    return rc;
}
