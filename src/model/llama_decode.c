/* KV-cache decoding for the Llama family (the interface of include/fdpo/decode.h; the
 * GPT-2 decoder in gpt2_decode.c hands Llama models to these functions). Rows of new
 * tokens, each in a slot at a position: keys (rotated) and values go into the cache first,
 * then every row attends to its slot's cache up to its own position, query head h reading
 * key/value head h / (NH / NKV). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/lora.h"
#include "model/llama_decode.h"
#include "model/gpt2_internal.h"
#include "model/llama_internal.h"

struct llama_decoder {
    const fdpo_gpt2 *model;
    size_t max_seqs, max_len, hd, QD, KD;
    size_t *len;              /* [max_seqs] */
    float *k_cache, *v_cache; /* [L, max_seqs, max_len, KD] */
    double *inv_freq;         /* [hd/2] */
    size_t cap_rows;
    float *x, *h, *q, *k, *v, *atty, *gate, *up, *xlast, *rope_cos, *rope_sin, *scores;
    size_t *row_slot;
    int32_t *row_pos;
    int n_threads_scores;
    /* bf16 precision (the model's, at create): each linear layer's weight packed for the
     * small-rows driver on its first use (packed [n_packed]: the fp32 weight it was made
     * from and where its copy starts in wp), the bf16-rounded matmul inputs
     * [cap16 rows, max(C, QD, F) + 1] and the driver's scratch [cap_acc floats] */
    int bf16;
    uint16_t *wp, *in16;
    size_t wp_used, wp_cap;
    struct { const float *w; size_t at; } *packed;
    size_t n_packed, cap_packed;
    size_t cap16;
    float *acc;
    size_t cap_acc;
    /* 1: bf16 steps without LoRA run in one parallel region (dec_layers_one_region); 0 with
     * FDPO_DECODE_ONE_REGION=0 (the per-kernel regions: tests, A/B) */
    int one_region;
    float *h_team;            /* [threads, R, C + 1]: each thread's RMSNorm output and rstd */
    size_t cap_h_team;        /* floats */
    uint16_t *x16;            /* vdpbf16ps route: the bf16 rows of the matmul inputs (dec_layers_one_region) */
    size_t cap_x16;           /* elements */
};

static const float *tensor(const fdpo_gpt2 *m, int role) {
    int i = m->llama->role[role];
    return i < 0 ? NULL : m->params_memory + m->tensors[i].offset;
}

llama_decoder *fdpo_llama_decoder_create(const fdpo_gpt2 *m, size_t max_seqs, size_t max_len) {
    const fdpo_gpt2_config *c = &m->config;
    llama_decoder *d = fdpo_calloc(1, sizeof *d);
    d->model = m;
    d->max_seqs = max_seqs;
    d->max_len = max_len;
    d->hd = c->head_dim ? c->head_dim : c->n_embd / c->n_head;
    d->QD = c->n_head * d->hd;
    d->KD = c->n_kv_head * d->hd;
    d->len = fdpo_calloc(max_seqs, sizeof *d->len);
    size_t n = c->n_layer * max_seqs * max_len * d->KD;
    d->k_cache = fdpo_alloc_large(n * sizeof(float)); /* streamed every step: src/core/alloc_large.c */
    d->v_cache = d->k_cache ? fdpo_alloc_large(n * sizeof(float)) : NULL;
    if (!d->v_cache) { fdpo_error_context("decoder: key/value cache"); fdpo_llama_decoder_free(d); return NULL; }
    d->inv_freq = fdpo_malloc(d->hd / 2 * sizeof *d->inv_freq);
    fdpo_llama_inv_freq(c, d->inv_freq);
    static _Atomic int one_region = -1;   /* read once: its warning once */
    if (one_region < 0) one_region = fdpo_env_switch("FDPO_DECODE_ONE_REGION", 1);
    d->one_region = one_region;
    if (m->precision == FDPO_PRECISION_BF16) {
        d->bf16 = 1;
        fdpo_bf16_native(); /* says once if the small-rows driver falls back */
        /* every weight dec_linear reads: 7 per layer and the head */
        d->cap_packed = 7 * c->n_layer + 1;
        d->packed = fdpo_malloc(d->cap_packed * sizeof *d->packed);
    }
    return d;
}

void fdpo_llama_decoder_free(llama_decoder *d) {
    if (!d) return;
    free(d->len); fdpo_free_large(d->k_cache); fdpo_free_large(d->v_cache); free(d->inv_freq);
    free(d->x); free(d->h); free(d->q); free(d->k); free(d->v); free(d->atty); free(d->gate); free(d->up);
    free(d->xlast); free(d->rope_cos); free(d->rope_sin); free(d->scores); free(d->row_slot); free(d->row_pos);
    fdpo_free_large(d->wp); free(d->packed); free(d->in16); free(d->acc); free(d->h_team); free(d->x16);
    free(d);
}

void fdpo_llama_decoder_refresh_weights(llama_decoder *d) {
    /* packed_weight packs each weight again on its next use, into the same buffer */
    d->n_packed = 0;
    d->wp_used = 0;
}

void fdpo_llama_decoder_reset(llama_decoder *d, size_t slot) { if (slot < d->max_seqs) d->len[slot] = 0; }
size_t fdpo_llama_decoder_len(const llama_decoder *d, size_t slot) { return slot < d->max_seqs ? d->len[slot] : 0; }

void fdpo_llama_decoder_copy_slot(llama_decoder *d, size_t dst, size_t src) {
    if (dst == src || dst >= d->max_seqs || src >= d->max_seqs) return;
    size_t L = d->model->config.n_layer, stride = d->max_len * d->KD, n = d->len[src] * d->KD;
    for (size_t l = 0; l < L; l++) {
        size_t base = l * d->max_seqs * stride;
        memcpy(d->k_cache + base + dst * stride, d->k_cache + base + src * stride, n * sizeof(float));
        memcpy(d->v_cache + base + dst * stride, d->v_cache + base + src * stride, n * sizeof(float));
    }
    d->len[dst] = d->len[src];
}

static void grow(llama_decoder *d, size_t R, size_t n_slots) {
    const fdpo_gpt2_config *c = &d->model->config;
    size_t C = c->n_embd, F = c->intermediate_size;
    if (R > d->cap_rows) {
        d->cap_rows = R;
        d->x = fdpo_realloc(d->x, R * C * sizeof(float));
        d->h = fdpo_realloc(d->h, R * C * sizeof(float));
        d->q = fdpo_realloc(d->q, R * d->QD * sizeof(float));
        d->k = fdpo_realloc(d->k, R * d->KD * sizeof(float));
        d->v = fdpo_realloc(d->v, R * d->KD * sizeof(float));
        d->atty = fdpo_realloc(d->atty, R * d->QD * sizeof(float));
        d->gate = fdpo_realloc(d->gate, R * F * sizeof(float));
        d->up = fdpo_realloc(d->up, R * F * sizeof(float));
        d->rope_cos = fdpo_realloc(d->rope_cos, R * d->hd / 2 * sizeof(float));
        d->rope_sin = fdpo_realloc(d->rope_sin, R * d->hd / 2 * sizeof(float));
        d->row_slot = fdpo_realloc(d->row_slot, R * sizeof(size_t));
        d->row_pos = fdpo_realloc(d->row_pos, R * sizeof(int32_t));
    }
    d->xlast = fdpo_realloc(d->xlast, (n_slots ? n_slots : 1) * C * sizeof(float));
    if (d->bf16 && R > d->cap16) {
        size_t wide = C > d->QD ? C : d->QD;
        wide = wide > F ? wide : F;
        free(d->in16);
        d->in16 = fdpo_malloc(R * (wide + 1) * sizeof(uint16_t));
        d->cap16 = R;
    }
    if (d->bf16 && fdpo_decode_packed_scratch(R) > d->cap_acc) {
        free(d->acc);
        d->cap_acc = fdpo_decode_packed_scratch(R);
        d->acc = fdpo_malloc(d->cap_acc * sizeof(float));
    }
    int threads = omp_get_max_threads();
    if (threads > d->n_threads_scores) {
        d->n_threads_scores = threads;
        d->scores = fdpo_realloc(d->scores, (size_t)threads * d->max_len * sizeof(float));
    }
}

/* w [OC, IC] packed in bf16 for the small-rows driver, packed on first use (after
 * fdpo_llama_decoder_refresh_weights: on the first use after it) */
static const uint16_t *packed_weight(llama_decoder *d, const float *w, size_t IC, size_t OC) {
    for (size_t i = 0; i < d->n_packed; i++)
        if (d->packed[i].w == w) return d->wp + d->packed[i].at;
    size_t n = fdpo_decode_packed_size(IC, OC);
    if (d->wp_used + n > d->wp_cap) {
        /* all of the model's linear weights, once: 2 bytes per parameter is enough */
        size_t cap = d->model->n_params > d->wp_used + n ? d->model->n_params : d->wp_used + n;
        /* streamed every step: a large buffer. No error path reaches here (packing runs
         * inside the step), so out of memory is fdpo_malloc's: the fdpo_oom_set handler, else abort() */
        uint16_t *wp = fdpo_malloc_large((cap + n) * sizeof(uint16_t));
        if (d->wp_used) memcpy(wp, d->wp, d->wp_used * sizeof(uint16_t));
        fdpo_free_large(d->wp);
        d->wp = wp;
        d->wp_cap = cap + n;
    }
    fdpo_decode_pack_bf16(d->wp + d->wp_used, w, IC, OC, 1, IC);
    if (d->n_packed == d->cap_packed) {
        d->cap_packed = 2 * d->cap_packed + 8;
        d->packed = fdpo_realloc(d->packed, d->cap_packed * sizeof *d->packed);
    }
    d->packed[d->n_packed].w = w;
    d->packed[d->n_packed++].at = d->wp_used;
    d->wp_used += n;
    return d->wp + d->packed[d->n_packed - 1].at;
}

/* out [R, OC] (+)= inp [R, IC] @ w^T + bias, w [OC, IC]; in bf16 the product takes
 * bf16(inp) and w packed in bf16 (fdpo_decode_packed_matmul, gpt2_decode.c: every row
 * count, each weight read once per call for all rows). fp32 takes sgemv / the GEMMs. */
static void dec_linear(llama_decoder *d, float *out, const float *inp, const float *w, const float *bias, size_t R,
                       size_t IC, size_t OC, int accumulate) {
    if (bias) for (size_t r = 0; r < R; r++) for (size_t o = 0; o < OC; o++) out[r * OC + o] = (accumulate ? out[r * OC + o] : 0) + bias[o];
    int beta_one = accumulate || bias;
    if (d->bf16) {
        fdpo_decode_packed_matmul(out, inp, packed_weight(d, w, IC, OC), R, IC, OC, beta_one, d->in16, d->acc);
    } else if (R == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)OC, (int)IC, 1.0f, w, (int)IC, inp, 1, beta_one ? 1.0f : 0.0f, out, 1);
    else
        fdpo_sgemm_any_rows(CblasRowMajor, CblasNoTrans, CblasTrans, (int)R, (int)OC, (int)IC, 1.0f, inp, (int)IC, w, (int)IC,
                   beta_one ? 1.0f : 0.0f, out, (int)OC);
}

/* out [r, h*hd : (h+1)*hd]: row r, head h attends over its slot's cached keys/values
 * 0..pos[r] (query head h reads key/value head h / (NH / NKV)); s: max_len floats of scratch */
static void dec_attention_head(float *out, float *s, const float *q, const float *k, const float *v,
                               const size_t *row_slot, const int32_t *row_pos, size_t r, size_t h, size_t NH,
                               size_t NKV, size_t hd, size_t max_len) {
    size_t QD = NH * hd, KD = NKV * hd, group = NH / NKV;
    float scale = 1.0f / sqrtf((float)hd);
    const float *qh = q + r * QD + h * hd;
    size_t T = (size_t)row_pos[r] + 1, g = h / group;
    const float *kb = k + row_slot[r] * max_len * KD + g * hd, *vb = v + row_slot[r] * max_len * KD + g * hd;
    float mx = -INFINITY;
    for (size_t t = 0; t < T; t++) {
        float dot = 0;
        for (size_t i = 0; i < hd; i++) dot += qh[i] * kb[t * KD + i];
        s[t] = dot * scale;
        if (s[t] > mx) mx = s[t];
    }
    float sum = 0;
    for (size_t t = 0; t < T; t++) { s[t] = expf(s[t] - mx); sum += s[t]; }
    float inv = 1.0f / sum, *o = out + r * QD + h * hd;
    for (size_t i = 0; i < hd; i++) o[i] = 0;
    for (size_t t = 0; t < T; t++) {
        float a = s[t] * inv;
        for (size_t i = 0; i < hd; i++) o[i] += a * vb[t * KD + i];
    }
}

/* out [R, NH*hd]: every row and head of dec_attention_head; scores [threads, max_len] */
static void dec_attention(float *out, float *scores, const float *q, const float *k, const float *v,
                          const size_t *row_slot, const int32_t *row_pos, size_t R, size_t NH, size_t NKV,
                          size_t hd, size_t max_len) {
    size_t max_T = 0;
    for (size_t r = 0; r < R; r++) if ((size_t)row_pos[r] + 1 > max_T) max_T = (size_t)row_pos[r] + 1;
    #pragma omp parallel for collapse(2) if (R * NH * max_T * hd >= (1 << 20))
    for (size_t r = 0; r < R; r++)
        for (size_t h = 0; h < NH; h++)
            dec_attention_head(out, scores + (size_t)omp_get_thread_num() * max_len, q, k, v, row_slot, row_pos, r, h,
                               NH, NKV, hd, max_len);
}

/* [*i0, *i1): thread t of nt's share of n items */
static inline void dec_share(size_t n, size_t t, size_t nt, size_t *i0, size_t *i1) {
    *i0 = n * t / nt;
    *i1 = n * (t + 1) / nt;
}

/* dec_linear (bf16) as thread t of nt's share inside a region: the bias of its output
 * columns, then its columns of the product; x16: inp's bf16 rows or NULL
 * (fdpo_decode_packed_matmul_share) */
static void dec_linear_share(llama_decoder *d, float *out, const float *inp, const float *w, const float *bias,
                             size_t R, size_t IC, size_t OC, int accumulate, const uint16_t *x16, size_t t,
                             size_t nt) {
    if (bias) {
        size_t o0, o1;
        fdpo_decode_share_cols(OC, t, nt, &o0, &o1);
        for (size_t r = 0; r < R; r++)
            for (size_t o = o0; o < o1; o++) out[r * OC + o] = (accumulate ? out[r * OC + o] : 0) + bias[o];
        accumulate = 1;
    }
    fdpo_decode_packed_matmul_share(out, inp, packed_weight(d, w, IC, OC), R, IC, OC, accumulate, d->in16, d->acc,
                                    t, nt, 0, x16);
}

/* The bf16 step of fdpo_llama_decoder_forward (no LoRA) in one parallel region, as the
 * GPT-2 decoder's (gpt2_decode.c, decode_layers_one_region): each kernel runs thread t's
 * share of its work (rows, (row, head) pairs or strips of output columns) with the same
 * code in the same order as in its own region, so the bits are those of the per-kernel
 * path at any team size; a barrier stands only where the next kernel reads what other
 * threads wrote (5 per layer). Every thread normalises all R rows into its own buffer
 * (a few microseconds of duplicated work instead of a barrier). The weights are packed
 * before the region (packed_weight packs on first use, in a region of its own). */
static void dec_layers_one_region(llama_decoder *d, const int32_t *tokens, size_t R, size_t n_slots,
                                  const size_t *n_new, float *logits, int all_logits) {
    const fdpo_gpt2 *m = d->model;
    const fdpo_gpt2_config *c = &m->config;
    size_t C = c->n_embd, L = c->n_layer, NH = c->n_head, NKV = c->n_kv_head, V = c->vocab_size, F = c->intermediate_size;
    size_t hd = d->hd, QD = d->QD, KD = d->KD, layer_cache = d->max_seqs * d->max_len * KD;
    float eps = c->layer_norm_epsilon;
    const float *embed = tensor(m, LR_EMBED), *head = tensor(m, LR_HEAD) ? tensor(m, LR_HEAD) : embed;
    static const int roles[7] = {LR_QW, LR_KW, LR_VW, LR_OW, LR_GATEW, LR_UPW, LR_DOWNW};
    for (size_t l = 0; l < L; l++) {
        size_t ic[7] = {C, C, C, QD, C, C, F}, oc[7] = {QD, KD, KD, C, F, F, C};
        for (size_t k = 0; k < 7; k++) packed_weight(d, tensor(m, roles[k]) + l * ic[k] * oc[k], ic[k], oc[k]);
    }
    packed_weight(d, head, C, V);
    size_t max_threads = (size_t)omp_get_max_threads(), need = max_threads * R * (C + 1);
    if (need > d->cap_h_team) {
        free(d->h_team);
        d->h_team = fdpo_malloc(need * sizeof(float));
        d->cap_h_team = need;
    }
    /* vdpbf16ps reads bf16 rows: each input's bits are written where it is made (as GPT-2's
     * step does: gpt2_decode.c), so its matmuls need no copy and no barriers of their own.
     * x16: [threads][R][Cp] RMSNorm rows, [R][QDp] attention output, [R][Cp] final norm,
     * [R][Fp] SwiGLU output (Xp: X rounded up to even, the pad column 0: calloc'd) */
    size_t Cp = (C + 1) / 2 * 2, QDp = (QD + 1) / 2 * 2, Fp = (F + 1) / 2 * 2;
    uint16_t *x16 = fdpo_decode_x16(&d->x16, &d->cap_x16, (max_threads + 1) * R * Cp + R * QDp + R * Fp);
    uint16_t *atty16 = x16 ? x16 + max_threads * R * Cp : NULL, *h16 = x16 ? atty16 + R * QDp : NULL;
    uint16_t *gate16 = x16 ? h16 + R * Cp : NULL;
#define B(role, size) (tensor(m, role) ? tensor(m, role) + l * (size) : NULL)
    #pragma omp parallel
    {
        size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num(), r0, r1, a0, a1, o0, o1;
        float *hm = d->h_team + t * R * (C + 1), *rstd = hm + R * C, *scores = d->scores + t * d->max_len;
        uint16_t *hm16 = x16 ? x16 + t * R * Cp : NULL;
        dec_share(R, t, nt, &r0, &r1);
        dec_share(R * NH, t, nt, &a0, &a1);
        for (size_t r = r0; r < r1; r++) memcpy(d->x + r * C, embed + (size_t)tokens[r] * C, C * sizeof(float));
        #pragma omp barrier
        for (size_t l = 0; l < L; l++) {
            float *kc = d->k_cache + l * layer_cache, *vc = d->v_cache + l * layer_cache;
            fdpo_llama_rmsnorm_forward(hm, rstd, d->x, tensor(m, LR_LN1) + l * C, R, C, eps);
            for (size_t r = 0; hm16 && r < R; r++) fdpo_bf16_round_n(hm16 + r * Cp, hm + r * C, C);
            dec_linear_share(d, d->q, hm, tensor(m, LR_QW) + l * QD * C, B(LR_QB, QD), R, C, QD, 0, hm16, t, nt);
            dec_linear_share(d, d->k, hm, tensor(m, LR_KW) + l * KD * C, B(LR_KB, KD), R, C, KD, 0, hm16, t, nt);
            dec_linear_share(d, d->v, hm, tensor(m, LR_VW) + l * KD * C, B(LR_VB, KD), R, C, KD, 0, hm16, t, nt);
            #pragma omp barrier
            /* RoPE and the cache of the thread's rows (a row's rotation needs all its columns) */
            fdpo_llama_rope_forward(d->q + r0 * QD, d->rope_cos + r0 * hd / 2, d->rope_sin + r0 * hd / 2, r1 - r0, NH, hd);
            fdpo_llama_rope_forward(d->k + r0 * KD, d->rope_cos + r0 * hd / 2, d->rope_sin + r0 * hd / 2, r1 - r0, NKV, hd);
            for (size_t r = r0; r < r1; r++) {
                size_t at = (d->row_slot[r] * d->max_len + (size_t)d->row_pos[r]) * KD;
                memcpy(kc + at, d->k + r * KD, KD * sizeof(float));
                memcpy(vc + at, d->v + r * KD, KD * sizeof(float));
            }
            #pragma omp barrier
            for (size_t a = a0; a < a1; a++) {
                dec_attention_head(d->atty, scores, d->q, kc, vc, d->row_slot, d->row_pos, a / NH, a % NH, NH, NKV, hd,
                                   d->max_len);
                if (atty16)
                    fdpo_bf16_round_n(atty16 + (a / NH) * QDp + (a % NH) * hd, d->atty + (a / NH) * QD + (a % NH) * hd, hd);
            }
            #pragma omp barrier
            dec_linear_share(d, d->x, d->atty, tensor(m, LR_OW) + l * C * QD, B(LR_OB, C), R, QD, C, 1, atty16, t, nt);
            #pragma omp barrier
            fdpo_llama_rmsnorm_forward(hm, rstd, d->x, tensor(m, LR_LN2) + l * C, R, C, eps);
            for (size_t r = 0; hm16 && r < R; r++) fdpo_bf16_round_n(hm16 + r * Cp, hm + r * C, C);
            dec_linear_share(d, d->gate, hm, tensor(m, LR_GATEW) + l * F * C, B(LR_GATEB, F), R, C, F, 0, hm16, t, nt);
            dec_linear_share(d, d->up, hm, tensor(m, LR_UPW) + l * F * C, B(LR_UPB, F), R, C, F, 0, hm16, t, nt);
            /* SwiGLU of the thread's own columns of gate and up (the same strips of F) */
            fdpo_decode_share_cols(F, t, nt, &o0, &o1);
            for (size_t r = 0; r < R && o0 < o1; r++) {
                fdpo_llama_swiglu_forward(d->gate + r * F + o0, d->gate + r * F + o0, d->up + r * F + o0, o1 - o0);
                if (gate16) fdpo_bf16_round_n(gate16 + r * Fp + o0, d->gate + r * F + o0, o1 - o0);
            }
            #pragma omp barrier
            dec_linear_share(d, d->x, d->gate, tensor(m, LR_DOWNW) + l * C * F, B(LR_DOWNB, C), R, F, C, 1, gate16, t,
                             nt);
            #pragma omp barrier
        }
        size_t n_out = all_logits ? R : n_slots, q0, q1;
        dec_share(n_out, t, nt, &q0, &q1);
        for (size_t q = q0; q < q1; q++) {
            size_t r = q; /* all_logits: row q; else slot q's last row */
            if (!all_logits) {
                r = 0;
                for (size_t i = 0; i <= q; i++) r += n_new[i];
                r--;
            }
            fdpo_llama_rmsnorm_forward(d->h + q * C, rstd, d->x + r * C, tensor(m, LR_NORM), 1, C, eps);
            if (h16) fdpo_bf16_round_n(h16 + q * Cp, d->h + q * C, C);
        }
        #pragma omp barrier
        dec_linear_share(d, logits, d->h, head, NULL, n_out, C, V, 0, h16, t, nt);
    }
#undef B
}

int fdpo_llama_decoder_forward(llama_decoder *d, size_t n_slots, const size_t *slots, const size_t *n_new,
                          const int32_t *tokens, float *logits, int all_logits, size_t R) {
    const fdpo_gpt2 *m = d->model;
    const fdpo_gpt2_config *c = &m->config;
    if (c->num_labels)
        return fdpo_error("decoder: a reward model (...ForSequenceClassification) has no LM head to sample from");
    size_t C = c->n_embd, L = c->n_layer, NH = c->n_head, NKV = c->n_kv_head, V = c->vocab_size, F = c->intermediate_size;
    size_t hd = d->hd, QD = d->QD, KD = d->KD;
    float eps = c->layer_norm_epsilon;
    grow(d, R, n_slots);
    for (size_t i = 0, r = 0; i < n_slots; i++)
        for (size_t j = 0; j < n_new[i]; j++, r++) {
            d->row_slot[r] = slots[i];
            d->row_pos[r] = (int32_t)(d->len[slots[i]] + j);
        }
    fdpo_llama_rope_tables(d->rope_cos, d->rope_sin, d->row_pos, d->inv_freq, R, hd / 2);
    if (d->bf16 && d->one_region && !(m->lora && m->lora->enabled)) {
        dec_layers_one_region(d, tokens, R, n_slots, n_new, logits, all_logits);
        for (size_t i = 0; i < n_slots; i++) d->len[slots[i]] += n_new[i];
        return 0;
    }
    const float *embed = tensor(m, LR_EMBED), *head = tensor(m, LR_HEAD) ? tensor(m, LR_HEAD) : embed;
    for (size_t r = 0; r < R; r++) memcpy(d->x + r * C, embed + (size_t)tokens[r] * C, C * sizeof(float));
    float *rstd = d->gate; /* scratch: RMSNorm's rstd is not needed after the norm */
    size_t layer_cache = d->max_seqs * d->max_len * KD;
#define B(role, size) (tensor(m, role) ? tensor(m, role) + l * (size) : NULL)
    for (size_t l = 0; l < L; l++) {
        float *kc = d->k_cache + l * layer_cache, *vc = d->v_cache + l * layer_cache;
        fdpo_llama_rmsnorm_forward(d->h, rstd, d->x, tensor(m, LR_LN1) + l * C, R, C, eps);
        dec_linear(d, d->q, d->h, tensor(m, LR_QW) + l * QD * C, B(LR_QB, QD), R, C, QD, 0);
        fdpo_lora_apply(m, FDPO_LORA_Q, l, d->q, d->h, R);
        dec_linear(d, d->k, d->h, tensor(m, LR_KW) + l * KD * C, B(LR_KB, KD), R, C, KD, 0);
        fdpo_lora_apply(m, FDPO_LORA_K, l, d->k, d->h, R);
        dec_linear(d, d->v, d->h, tensor(m, LR_VW) + l * KD * C, B(LR_VB, KD), R, C, KD, 0);
        fdpo_lora_apply(m, FDPO_LORA_V, l, d->v, d->h, R);
        fdpo_llama_rope_forward(d->q, d->rope_cos, d->rope_sin, R, NH, hd);
        fdpo_llama_rope_forward(d->k, d->rope_cos, d->rope_sin, R, NKV, hd);
        for (size_t r = 0; r < R; r++) {
            size_t at = (d->row_slot[r] * d->max_len + (size_t)d->row_pos[r]) * KD;
            memcpy(kc + at, d->k + r * KD, KD * sizeof(float));
            memcpy(vc + at, d->v + r * KD, KD * sizeof(float));
        }
        dec_attention(d->atty, d->scores, d->q, kc, vc, d->row_slot, d->row_pos, R, NH, NKV, hd, d->max_len);
        dec_linear(d, d->x, d->atty, tensor(m, LR_OW) + l * C * QD, B(LR_OB, C), R, QD, C, 1);
        fdpo_lora_apply(m, FDPO_LORA_O, l, d->x, d->atty, R);
        fdpo_llama_rmsnorm_forward(d->h, rstd, d->x, tensor(m, LR_LN2) + l * C, R, C, eps);
        dec_linear(d, d->gate, d->h, tensor(m, LR_GATEW) + l * F * C, B(LR_GATEB, F), R, C, F, 0);
        fdpo_lora_apply(m, FDPO_LORA_GATE, l, d->gate, d->h, R);
        dec_linear(d, d->up, d->h, tensor(m, LR_UPW) + l * F * C, B(LR_UPB, F), R, C, F, 0);
        fdpo_lora_apply(m, FDPO_LORA_UP, l, d->up, d->h, R);
        fdpo_llama_swiglu_forward(d->gate, d->gate, d->up, R * F);
        dec_linear(d, d->x, d->gate, tensor(m, LR_DOWNW) + l * C * F, B(LR_DOWNB, C), R, F, C, 1);
        fdpo_lora_apply(m, FDPO_LORA_DOWN, l, d->x, d->gate, R);
    }
#undef B
    for (size_t i = 0; i < n_slots; i++) d->len[slots[i]] += n_new[i];
    const float *xs = d->x;
    size_t rows = R;
    if (!all_logits) {
        size_t r_end = 0;
        for (size_t i = 0; i < n_slots; i++) {
            r_end += n_new[i];
            memcpy(d->xlast + i * C, d->x + (r_end - 1) * C, C * sizeof(float));
        }
        xs = d->xlast;
        rows = n_slots;
    }
    fdpo_llama_rmsnorm_forward(d->h, d->up, xs, tensor(m, LR_NORM), rows, C, eps);
    dec_linear(d, logits, d->h, head, NULL, rows, C, V, 0);
    return 0;
}
