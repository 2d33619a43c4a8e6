/* KV-cache decoding for GPT-2 (see include/fdpo/decode.h). The forward pass is the one of
 * src/model written for rows that each belong to a slot and sit at a position: the new
 * tokens' keys and values go into the cache first, then every row attends to its slot's
 * cache up to and including its own position. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/decode.h"
#include "fdpo/lora.h"
#include "model/llama_decode.h"
#include "model/gpt2_internal.h"

/* Decoding steps of up to DECODE_SMALL_ROWS rows take the bandwidth-bound strip matmuls
 * (48-column strips, DECODE_STRIP); the LM head takes oneDNN per vocabulary block (fp32)
 * or, up to DECODE_HEAD_ROWS rows, the one-pass kernel (bf16); more rows (prefill,
 * scoring) take the library GEMMs. */
#define DECODE_SMALL_ROWS 16
#define DECODE_STRIP 48

struct fdpo_decoder {
    const fdpo_gpt2 *model;
    llama_decoder *llama;   /* Llama family: all the work happens there */
    size_t max_seqs, max_len;
    size_t *len;        /* [max_seqs] tokens cached per slot */
    float *k_cache;     /* [L, max_seqs, max_len, C] */
    float *v_cache;     /* [L, max_seqs, max_len, C] */
    /* scratch for R rows, grown on demand */
    size_t cap_rows;
    float *x;           /* [R, C] residual stream */
    float *h;           /* [R, C] LayerNorm output */
    float *qkv;         /* [R, 3C] */
    float *atty;        /* [R, C] attention output before c_proj */
    float *fch;         /* [R, 4C] */
    float *xlast;       /* [n_slots, C] last rows when all_logits = 0 */
    float *acc;         /* [DECODE_SMALL_ROWS, 4C + DECODE_STRIP] small-rows matmul accumulators */
    float *xpad;        /* [DECODE_HEAD_ROWS, C] bf16 LM head input rows, widened, zero-padded to groups of 8 */
    size_t *row_slot;   /* [R] */
    int32_t *row_pos;   /* [R] */
    float *scores;      /* [threads, max_len] attention scores per thread */
    int n_threads_scores;
    /* bf16 precision (the model's, at create): bf16 copy of the weights, which the
     * decoder only reads, and the bf16-rounded matmul inputs [cap16 rows, 4C] */
    uint16_t *w16, *in16;
    size_t cap16;
};

fdpo_decoder *fdpo_decoder_create(const fdpo_gpt2 *m, size_t max_seqs, size_t max_len) {
    const fdpo_gpt2_config *c = &m->config;
    if (max_seqs == 0) { fdpo_error("decoder: max_seqs must be > 0"); return NULL; }
    if (max_len == 0 || max_len > c->n_positions) {
        fdpo_error("decoder: sequence length %zu exceeds the model's n_positions %zu", max_len, c->n_positions);
        return NULL;
    }
    fdpo_decoder *d = fdpo_calloc(1, sizeof *d);
    d->model = m;
    d->max_seqs = max_seqs;
    d->max_len = max_len;
    if (c->arch == FDPO_ARCH_LLAMA) { d->llama = fdpo_llama_decoder_create(m, max_seqs, max_len); return d; }
    d->len = fdpo_calloc(max_seqs, sizeof *d->len);
    size_t n = c->n_layer * max_seqs * max_len * c->n_embd;
    d->k_cache = fdpo_malloc(n * sizeof(float));
    d->v_cache = fdpo_malloc(n * sizeof(float));
    if (m->precision == FDPO_PRECISION_BF16) {
        fdpo_bf16_native(); /* says once if the GEMMs (prefill) fall back */
        d->w16 = fdpo_malloc(m->n_params * sizeof(uint16_t));
        fdpo_f32_to_bf16(d->w16, m->params_memory, m->n_params);
    }
    return d;
}

void fdpo_decoder_free(fdpo_decoder *d) {
    if (!d) return;
    fdpo_llama_decoder_free(d->llama);
    free(d->len); free(d->k_cache); free(d->v_cache);
    free(d->x); free(d->h); free(d->qkv); free(d->atty); free(d->fch); free(d->xlast); free(d->acc); free(d->xpad);
    free(d->row_slot); free(d->row_pos); free(d->scores);
    free(d->w16); free(d->in16);
    free(d);
}

const fdpo_gpt2 *fdpo_decoder_model(const fdpo_decoder *d) { return d->model; }
size_t fdpo_decoder_max_len(const fdpo_decoder *d) { return d->max_len; }

void fdpo_decoder_reset(fdpo_decoder *d, size_t slot) {
    if (d->llama) fdpo_llama_decoder_reset(d->llama, slot);
    else if (slot < d->max_seqs) d->len[slot] = 0;
}
size_t fdpo_decoder_len(const fdpo_decoder *d, size_t slot) {
    if (d->llama) return fdpo_llama_decoder_len(d->llama, slot);
    return slot < d->max_seqs ? d->len[slot] : 0;
}

void fdpo_decoder_copy_slot(fdpo_decoder *d, size_t dst, size_t src) {
    if (d->llama) { fdpo_llama_decoder_copy_slot(d->llama, dst, src); return; }
    if (dst == src || dst >= d->max_seqs || src >= d->max_seqs) return;
    size_t C = d->model->config.n_embd, L = d->model->config.n_layer;
    size_t stride = d->max_len * C, n = d->len[src] * C;
    for (size_t l = 0; l < L; l++) {
        size_t base = l * d->max_seqs * stride;
        memcpy(d->k_cache + base + dst * stride, d->k_cache + base + src * stride, n * sizeof(float));
        memcpy(d->v_cache + base + dst * stride, d->v_cache + base + src * stride, n * sizeof(float));
    }
    d->len[dst] = d->len[src];
}

static void grow_rows(fdpo_decoder *d, size_t R, size_t n_slots) {
    size_t C = d->model->config.n_embd;
    if (R > d->cap_rows) {
        d->cap_rows = R;
        d->x = fdpo_realloc(d->x, R * C * sizeof(float));
        d->h = fdpo_realloc(d->h, R * C * sizeof(float));
        d->qkv = fdpo_realloc(d->qkv, R * 3 * C * sizeof(float));
        d->atty = fdpo_realloc(d->atty, R * C * sizeof(float));
        d->fch = fdpo_realloc(d->fch, R * 4 * C * sizeof(float));
        d->row_slot = fdpo_realloc(d->row_slot, R * sizeof(size_t));
        d->row_pos = fdpo_realloc(d->row_pos, R * sizeof(int32_t));
    }
    d->xlast = fdpo_realloc(d->xlast, (n_slots ? n_slots : 1) * C * sizeof(float));
    if (!d->acc) {
        d->acc = fdpo_malloc(DECODE_SMALL_ROWS * (4 * C + DECODE_STRIP) * sizeof(float));
        d->xpad = fdpo_malloc(DECODE_HEAD_ROWS * C * sizeof(float));
    }
    int threads = omp_get_max_threads();
    if (threads > d->n_threads_scores) {
        d->n_threads_scores = threads;
        d->scores = fdpo_realloc(d->scores, (size_t)threads * d->max_len * sizeof(float));
    }
}

/* out [R, C] = wte[tokens[r]] + wpe[pos[r]] */
static void decode_embed_forward(float *out, const int32_t *tokens, const int32_t *pos,
                                 const float *wte, const float *wpe, size_t R, size_t C) {
    for (size_t r = 0; r < R; r++) {
        const float *te = wte + (size_t)tokens[r] * C, *pe = wpe + (size_t)pos[r] * C;
        for (size_t i = 0; i < C; i++) out[r * C + i] = te[i] + pe[i];
    }
}

/* out [R, C] = LayerNorm(inp [R, C]) * w [C] + b [C] */
static void decode_layernorm_forward(float *out, const float *inp, const float *w, const float *b,
                                     size_t R, size_t C, float eps) {
    #pragma omp parallel for if (R * C > 32768)
    for (size_t r = 0; r < R; r++) {
        const float *x = inp + r * C;
        float mean = 0, var = 0;
        for (size_t i = 0; i < C; i++) mean += x[i];
        mean /= (float)C;
        for (size_t i = 0; i < C; i++) { float dx = x[i] - mean; var += dx * dx; }
        var /= (float)C;
        float rstd = 1.0f / sqrtf(var + eps);
        for (size_t i = 0; i < C; i++) out[r * C + i] = (x[i] - mean) * rstd * w[i] + b[i];
    }
}

/* out [R, OC] += inp [R, IC] @ w [IC, OC] for R <= 16 rows (decoding steps). A decoding
 * step reads every weight once and does little arithmetic with it, so its speed is the
 * speed of streaming w. BLAS would pack the whole weight matrix for a handful of rows,
 * which costs as much as the product. Here each 48-column strip keeps the 8 x 48
 * accumulators of a group of up to 8 rows in registers (24 of the 32 AVX-512 registers;
 * 48 columns ran at about 1.4x the speed of 32, 64 spills), and w is read in blocks of
 * DECODE_IBLOCK rows: for each block, every strip of the thread's column range and every
 * row group loads its accumulators from acc, runs over the block's rows and stores them
 * back (a second row group reads the block's strip again from L1). So w is read row after row (DECODE_IBLOCK
 * sequential streams the prefetcher follows), where one strip's walk down all IC rows
 * read a 192-byte piece of a new 9 KB row (a new page) per step: 1.5x faster at 1 thread
 * (768 x 3072, R = 8). Each output is still summed in i order from 0, then added to out,
 * by one thread: results do not depend on the thread count and are bit-identical to the
 * strip-at-a-time loop. The multiply-adds are fused where the target has a fast fma
 * (-std=c11 keeps GCC from contracting a * b + c itself): ~10% faster, one rounding per
 * step. acc is scratch of R * n_strips * DECODE_STRIP floats. */
#define DECODE_IBLOCK 32
#define DECODE_GROUP_ROWS 8
#ifdef FP_FAST_FMAF
#define DECODE_FMA(a, b, c) fmaf(a, b, c)
#else
#define DECODE_FMA(a, b, c) ((a) * (b) + (c))
#endif

/* acc [R, ob] += inp [R, i0:i1] @ w [i0:i1, o0:o0+ob] (ob <= DECODE_STRIP) */
static inline void decode_strip_block(float acc[DECODE_GROUP_ROWS][DECODE_STRIP], const float *inp, const float *w,
                                      size_t R, size_t IC, size_t OC, size_t o0, size_t ob, size_t i0, size_t i1) {
    if (R == DECODE_GROUP_ROWS && ob == DECODE_STRIP) { /* constant bounds: acc stays in registers */
        for (size_t i = i0; i < i1; i++) {
            const float *wi = w + i * OC + o0;
            for (size_t r = 0; r < DECODE_GROUP_ROWS; r++) {
                float a = inp[r * IC + i];
                for (size_t j = 0; j < DECODE_STRIP; j++) acc[r][j] = DECODE_FMA(a, wi[j], acc[r][j]);
            }
        }
    } else if (ob == DECODE_STRIP) {
        for (size_t i = i0; i < i1; i++) {
            const float *wi = w + i * OC + o0;
            for (size_t r = 0; r < R; r++) {
                float a = inp[r * IC + i];
                for (size_t j = 0; j < DECODE_STRIP; j++) acc[r][j] = DECODE_FMA(a, wi[j], acc[r][j]);
            }
        }
    } else {
        for (size_t i = i0; i < i1; i++) {
            const float *wi = w + i * OC + o0;
            for (size_t r = 0; r < R; r++) {
                float a = inp[r * IC + i];
                for (size_t j = 0; j < ob; j++) acc[r][j] = DECODE_FMA(a, wi[j], acc[r][j]);
            }
        }
    }
}

static void decode_matmul_small_rows(float *out, const float *inp, const float *w, size_t R, size_t IC, size_t OC,
                                     float *acc) {
    size_t n_strips = (OC + DECODE_STRIP - 1) / DECODE_STRIP;
    #pragma omp parallel if (R * IC * OC >= (1 << 20))
    {
        size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
        size_t s0 = n_strips * t / nt, s1 = n_strips * (t + 1) / nt;
        float *mine = acc + s0 * R * DECODE_STRIP;
        memset(mine, 0, (s1 - s0) * R * DECODE_STRIP * sizeof(float));
        for (size_t i0 = 0; i0 < IC; i0 += DECODE_IBLOCK) {
            size_t i1 = i0 + DECODE_IBLOCK < IC ? i0 + DECODE_IBLOCK : IC;
            for (size_t s = s0; s < s1; s++) {
                size_t o0 = s * DECODE_STRIP, ob = OC - o0 < DECODE_STRIP ? OC - o0 : DECODE_STRIP;
                for (size_t r0 = 0; r0 < R; r0 += DECODE_GROUP_ROWS) {
                    size_t nr = R - r0 < DECODE_GROUP_ROWS ? R - r0 : DECODE_GROUP_ROWS;
                    float a[DECODE_GROUP_ROWS][DECODE_STRIP], *saved = mine + ((s - s0) * R + r0) * DECODE_STRIP;
                    memcpy(a, saved, nr * DECODE_STRIP * sizeof(float));
                    decode_strip_block(a, inp + r0 * IC, w, nr, IC, OC, o0, ob, i0, i1);
                    memcpy(saved, a, nr * DECODE_STRIP * sizeof(float));
                }
            }
        }
        for (size_t s = s0; s < s1; s++) {
            size_t o0 = s * DECODE_STRIP, ob = OC - o0 < DECODE_STRIP ? OC - o0 : DECODE_STRIP;
            const float *saved = mine + (s - s0) * R * DECODE_STRIP;
            for (size_t r = 0; r < R; r++)
                for (size_t j = 0; j < ob; j++) out[r * OC + o0 + j] += saved[r * DECODE_STRIP + j];
        }
    }
}

/* bf16 weights, few rows: out [R, OC] += in16 [R, IC] @ w16 [IC, OC], both operands bf16
 * widened exactly to fp32, fp32 accumulation (the bf16 rule). Decoding reads every weight
 * once per step, so half the bytes is the point; a library GEMM would repack the weight
 * on every call. Same blocked strip loop as decode_matmul_small_rows. */
static inline float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* acc [R, ob] += in16 [R, i0:i1] @ w16 [i0:i1, o0:o0+ob] (ob <= DECODE_STRIP) */
static inline void decode_strip_block_bf16(float acc[DECODE_GROUP_ROWS][DECODE_STRIP], const uint16_t *in16,
                                           const uint16_t *w16, size_t R, size_t IC, size_t OC, size_t o0,
                                           size_t ob, size_t i0, size_t i1) {
    if (R == DECODE_GROUP_ROWS && ob == DECODE_STRIP) { /* constant bounds: acc stays in registers */
        for (size_t i = i0; i < i1; i++) {
            const uint16_t *wi = w16 + i * OC + o0;
            float wf[DECODE_STRIP];
            for (size_t j = 0; j < DECODE_STRIP; j++) wf[j] = bf16_value(wi[j]);
            for (size_t r = 0; r < DECODE_GROUP_ROWS; r++) {
                float a = bf16_value(in16[r * IC + i]);
                for (size_t j = 0; j < DECODE_STRIP; j++) acc[r][j] = DECODE_FMA(a, wf[j], acc[r][j]);
            }
        }
        return;
    }
    for (size_t i = i0; i < i1; i++) {
        const uint16_t *wi = w16 + i * OC + o0;
        float wf[DECODE_STRIP];
        if (ob == DECODE_STRIP) {
            for (size_t j = 0; j < DECODE_STRIP; j++) wf[j] = bf16_value(wi[j]);
            for (size_t r = 0; r < R; r++) {
                float a = bf16_value(in16[r * IC + i]);
                for (size_t j = 0; j < DECODE_STRIP; j++) acc[r][j] = DECODE_FMA(a, wf[j], acc[r][j]);
            }
        } else {
            for (size_t j = 0; j < ob; j++) wf[j] = bf16_value(wi[j]);
            for (size_t r = 0; r < R; r++) {
                float a = bf16_value(in16[r * IC + i]);
                for (size_t j = 0; j < ob; j++) acc[r][j] = DECODE_FMA(a, wf[j], acc[r][j]);
            }
        }
    }
}

static void decode_matmul_small_rows_bf16(float *out, const uint16_t *in16, const uint16_t *w16, size_t R,
                                          size_t IC, size_t OC, float *acc) {
    size_t n_strips = (OC + DECODE_STRIP - 1) / DECODE_STRIP;
    #pragma omp parallel if (R * IC * OC >= (1 << 20))
    {
        size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
        size_t s0 = n_strips * t / nt, s1 = n_strips * (t + 1) / nt;
        float *mine = acc + s0 * R * DECODE_STRIP;
        memset(mine, 0, (s1 - s0) * R * DECODE_STRIP * sizeof(float));
        for (size_t i0 = 0; i0 < IC; i0 += DECODE_IBLOCK) {
            size_t i1 = i0 + DECODE_IBLOCK < IC ? i0 + DECODE_IBLOCK : IC;
            for (size_t s = s0; s < s1; s++) {
                size_t o0 = s * DECODE_STRIP, ob = OC - o0 < DECODE_STRIP ? OC - o0 : DECODE_STRIP;
                for (size_t r0 = 0; r0 < R; r0 += DECODE_GROUP_ROWS) {
                    size_t nr = R - r0 < DECODE_GROUP_ROWS ? R - r0 : DECODE_GROUP_ROWS;
                    float a[DECODE_GROUP_ROWS][DECODE_STRIP], *saved = mine + ((s - s0) * R + r0) * DECODE_STRIP;
                    memcpy(a, saved, nr * DECODE_STRIP * sizeof(float));
                    decode_strip_block_bf16(a, in16 + r0 * IC, w16, nr, IC, OC, o0, ob, i0, i1);
                    memcpy(saved, a, nr * DECODE_STRIP * sizeof(float));
                }
            }
        }
        for (size_t s = s0; s < s1; s++) {
            size_t o0 = s * DECODE_STRIP, ob = OC - o0 < DECODE_STRIP ? OC - o0 : DECODE_STRIP;
            const float *saved = mine + (s - s0) * R * DECODE_STRIP;
            for (size_t r = 0; r < R; r++)
                for (size_t j = 0; j < ob; j++) out[r * OC + o0 + j] += saved[r * DECODE_STRIP + j];
        }
    }
}

/* out [R, OC] (= or +=, accumulate) x [R, IC] @ w [OC, IC]^T for R <= DECODE_HEAD_ROWS rows,
 * w fp32 (w32) or bf16 (w16; x then already bf16-rounded): in bf16, the tied LM head
 * (w = wte) and every Llama linear layer of a decoding step (in fp32 oneDNN per block of
 * rows of w measured 1.15-1.3x faster, so fp32 calls keep it; this kernel handles fp32
 * weights too). One pass over w, parallel over its rows.
 * The rows of x go in groups of 8 (xpad [ceil(R/8)*8, IC], the rows past R zero; see
 * fdpo_decode_rows_pad), and each dot product keeps DECODE_LANES partial sums (lane j takes
 * the columns c = j mod DECODE_LANES), added pairwise at the end, then the columns past the
 * last multiple of DECODE_LANES, summed apart: 8 rows x 16 lanes are 8 independent vector
 * accumulators, which hides the multiply-add latency (one dot product at a time is a chain
 * of dependent multiply-adds), and each vector of w is loaded once for the 8 rows. Every
 * output is summed in the same order whatever R and the thread count, so a sample does not
 * depend on the batch it runs in. */
#define DECODE_LANES 16
#define DECODE_W_CHUNK 256

/* lane [8, DECODE_LANES] += the products of x [8 rows, row stride ldx] [0:n] and w [0:n]
 * (n a multiple of DECODE_LANES), lane j of a row taking the columns c = j mod DECODE_LANES.
 * Written with GCC/Clang vector types and eight named accumulators: as a plain array loop
 * GCC interchanged it into one dependent chain per row with a store every step, which ran
 * 1.4x slower (CPU seconds, 124M head, 1 thread). Multiply, then add (-std=c11 does not
 * contract them). */
typedef float decode_vec __attribute__((vector_size(DECODE_LANES * sizeof(float))));
/* v = p [0 : DECODE_LANES] (a macro, not a function: a vector argument or return value
 * would depend on the target's ABI, which GCC warns about without -march) */
#define DECODE_VLOAD(v, p) memcpy(&(v), (p), sizeof(decode_vec))

static inline void decode_dot8(float lane[8][DECODE_LANES], const float *x, size_t ldx, const float *w, size_t n) {
    decode_vec a[8], wv, xv;
    for (size_t r = 0; r < 8; r++) DECODE_VLOAD(a[r], lane[r]);
    for (size_t c = 0; c < n; c += DECODE_LANES) {
        DECODE_VLOAD(wv, w + c);
        DECODE_VLOAD(xv, x + 0 * ldx + c); a[0] += xv * wv;
        DECODE_VLOAD(xv, x + 1 * ldx + c); a[1] += xv * wv;
        DECODE_VLOAD(xv, x + 2 * ldx + c); a[2] += xv * wv;
        DECODE_VLOAD(xv, x + 3 * ldx + c); a[3] += xv * wv;
        DECODE_VLOAD(xv, x + 4 * ldx + c); a[4] += xv * wv;
        DECODE_VLOAD(xv, x + 5 * ldx + c); a[5] += xv * wv;
        DECODE_VLOAD(xv, x + 6 * ldx + c); a[6] += xv * wv;
        DECODE_VLOAD(xv, x + 7 * ldx + c); a[7] += xv * wv;
    }
    for (size_t r = 0; r < 8; r++) memcpy(lane[r], &a[r], sizeof a[r]);
}

void fdpo_decode_rows_matmul_wt(float *out, const float *xpad, const float *w32, const uint16_t *w16, size_t R,
                                size_t IC, size_t OC, int accumulate) {
    size_t IC0 = IC - IC % DECODE_LANES, groups = (R + 7) / 8;
    #pragma omp parallel for schedule(static) if (R * OC * IC >= (1 << 20))
    for (size_t o = 0; o < OC; o++) {
        float wbuf[DECODE_W_CHUNK]; /* a piece of a bf16 row of w, widened */
        for (size_t g = 0; g < groups; g++) {
            const float *x = xpad + g * 8 * IC;
            float lane[8][DECODE_LANES] = {{0}}, tail[8] = {0};
            if (w16) {
                for (size_t c0 = 0; c0 < IC0; c0 += DECODE_W_CHUNK) {
                    size_t n = IC0 - c0 < DECODE_W_CHUNK ? IC0 - c0 : DECODE_W_CHUNK;
                    for (size_t j = 0; j < n; j++) wbuf[j] = bf16_value(w16[o * IC + c0 + j]);
                    decode_dot8(lane, x + c0, IC, wbuf, n);
                }
            } else
                decode_dot8(lane, x, IC, w32 + o * IC, IC0);
            for (size_t c = IC0; c < IC; c++) {
                float wc = w16 ? bf16_value(w16[o * IC + c]) : w32[o * IC + c];
                for (size_t r = 0; r < 8; r++) tail[r] = DECODE_FMA(x[r * IC + c], wc, tail[r]);
            }
            for (size_t r = 0; r < 8 && g * 8 + r < R; r++) {
                for (size_t width = DECODE_LANES / 2; width > 0; width /= 2)
                    for (size_t j = 0; j < width; j++) lane[r][j] += lane[r][j + width];
                float *y = out + (g * 8 + r) * OC + o;
                *y = (accumulate ? *y : 0.0f) + (lane[r][0] + tail[r]);
            }
        }
    }
}

/* xpad [ceil(R/8)*8, C] = inp [R, C] (fp32), or in16 widened when in16 is given; the rows
 * past R zero */
void fdpo_decode_rows_pad(float *xpad, const float *inp, const uint16_t *in16, size_t R, size_t C) {
    size_t padded = (R + 7) / 8 * 8;
    for (size_t i = 0; i < R * C; i++) xpad[i] = in16 ? bf16_value(in16[i]) : inp[i];
    memset(xpad + R * C, 0, (padded - R) * C * sizeof(float));
}

/* The accumulator scratch of the small-rows matmuls (decoder->acc) for the decoder this
 * thread is running: set by fdpo_decoder_forward, so that decode_matmul_forward keeps the
 * argument list its call sites (and the LoRA hooks after them) share with the training
 * kernels' linear layers. Thread-local: two decoders may run in two threads. */
static _Thread_local float *decode_acc;

/* out [R, OC] (= or +=) inp [R, IC] @ w [IC, OC] + bias [OC]; accumulate adds into out
 * (the residual stream) instead of overwriting it. */
static void decode_matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                                  size_t R, size_t IC, size_t OC, int accumulate, const uint16_t *w16,
                                  uint16_t *in16) {
    if (!accumulate) {
        for (size_t r = 0; r < R; r++) memcpy(out + r * OC, bias, OC * sizeof(float));
    } else {
        for (size_t r = 0; r < R; r++) for (size_t o = 0; o < OC; o++) out[r * OC + o] += bias[o];
    }
    if (w16) { /* bf16: out += bf16(inp) @ w16, fp32 accumulation */
        fdpo_f32_to_bf16(in16, inp, R * IC);
        if (R <= DECODE_SMALL_ROWS)
            decode_matmul_small_rows_bf16(out, in16, w16, R, IC, OC, decode_acc);
        else
            fdpo_gemm_bf16(0, 0, R, OC, IC, 1.0f, in16, IC, w16, OC, 1.0f, out, OC);
    } else if (R <= DECODE_SMALL_ROWS)
        decode_matmul_small_rows(out, inp, w, R, IC, OC, decode_acc);
    else
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)R, (int)OC, (int)IC, 1.0f,
                    inp, (int)IC, w, (int)OC, 1.0f, out, (int)OC);
}

/* Store the keys and values of qkv [R, 3C] at (slot, pos) of this layer's caches
 * k, v [max_seqs, max_len, C]. */
static void decode_cache_store(float *k, float *v, const float *qkv, const size_t *row_slot,
                               const int32_t *row_pos, size_t R, size_t C, size_t max_len) {
    for (size_t r = 0; r < R; r++) {
        size_t at = (row_slot[r] * max_len + (size_t)row_pos[r]) * C;
        memcpy(k + at, qkv + r * 3 * C + C, C * sizeof(float));
        memcpy(v + at, qkv + r * 3 * C + 2 * C, C * sizeof(float));
    }
}

/* out [R, C]: row r, head h attends with its query qkv[r, h*hs ..] over keys/values
 * 0..pos[r] of its slot in k, v [max_seqs, max_len, C]. scores [threads, max_len]. */
static void decode_attention_forward(float *out, float *scores, const float *qkv, const float *k,
                                     const float *v, const size_t *row_slot, const int32_t *row_pos,
                                     size_t R, size_t C, size_t NH, size_t max_len) {
    size_t hs = C / NH, max_T = 0;
    for (size_t r = 0; r < R; r++) if ((size_t)row_pos[r] + 1 > max_T) max_T = (size_t)row_pos[r] + 1;
    float scale = 1.0f / sqrtf((float)hs);
    /* threads only pay off when there is real work: waking a team costs microseconds, one
     * decoding step of 8 rows at 124M (12 heads, 16 cached positions) is ~50 us per layer */
    #pragma omp parallel for collapse(2) if (R * NH * max_T * hs >= (1 << 15))
    for (size_t r = 0; r < R; r++) {
        for (size_t h = 0; h < NH; h++) {
            float *s = scores + (size_t)omp_get_thread_num() * max_len;
            const float *q = qkv + r * 3 * C + h * hs;
            size_t T = (size_t)row_pos[r] + 1;
            const float *kb = k + row_slot[r] * max_len * C + h * hs;
            const float *vb = v + row_slot[r] * max_len * C + h * hs;
            float mx = -INFINITY;
            for (size_t t = 0; t < T; t++) {
                float dot = 0;
                for (size_t i = 0; i < hs; i++) dot += q[i] * kb[t * C + i];
                s[t] = dot * scale;
                if (s[t] > mx) mx = s[t];
            }
            float sum = 0;
            for (size_t t = 0; t < T; t++) { s[t] = expf(s[t] - mx); sum += s[t]; }
            float inv = 1.0f / sum;
            float *o = out + r * C + h * hs;
            for (size_t i = 0; i < hs; i++) o[i] = 0;
            for (size_t t = 0; t < T; t++) {
                float a = s[t] * inv;
                for (size_t i = 0; i < hs; i++) o[i] += a * vb[t * C + i];
            }
        }
    }
}

/* x [n] = GELU(x), tanh approximation ("gelu_new") */
static void decode_gelu_forward(float *x, size_t n) {
    const float s = 0.7978845608028654f; /* sqrt(2/pi) */
    #pragma omp parallel for if (n > 8192) /* expf is scalar: ~0.1 ms per 124M layer of 8 rows */
    for (size_t i = 0; i < n; i++) {
        float u = x[i];
        /* 0.5 u (1 + tanh(a)) = u / (1 + exp(-2a)): one expf instead of tanhf */
        x[i] = u / (1.0f + expf(-2.0f * s * (u + 0.044715f * u * u * u)));
    }
}

/* logits [R, V] = inp [R, C] @ wte [V, C]^T (tied LM head; 154 MB at 124M in fp32). A
 * library GEMM over all of wte would pack it whole for a handful of rows. fp32, up to
 * DECODE_LMHEAD_ROWS rows: each thread takes blocks of DECODE_LMHEAD_BLOCK vocabulary rows
 * and calls a single-threaded sgemm on them, so the packed block stays in cache (measured
 * 1.15-1.3x faster than fdpo_decode_rows_matmul_wt in CPU seconds at 1 thread, 8 rows).
 * bf16, up to DECODE_HEAD_ROWS rows: fdpo_decode_rows_matmul_wt on the bf16 copy (a bf16
 * GEMM per block would convert and pack each block). More rows (prefill, scoring): the
 * GEMMs. xpad [ceil(R/8)*8, C] is scratch. */
#define DECODE_LMHEAD_ROWS 64
#define DECODE_LMHEAD_BLOCK 128
static void decode_lmhead_forward(float *logits, const float *inp, const float *wte, size_t R, size_t C, size_t V,
                                  const uint16_t *wte16, uint16_t *in16, float *xpad) {
    if (wte16) { /* bf16: logits = bf16(inp) @ wte16^T */
        fdpo_f32_to_bf16(in16, inp, R * C);
        if (R <= DECODE_HEAD_ROWS) {
            fdpo_decode_rows_pad(xpad, NULL, in16, R, C);
            fdpo_decode_rows_matmul_wt(logits, xpad, NULL, wte16, R, C, V, 0);
        } else
            fdpo_gemm_bf16(0, 1, R, V, C, 1.0f, in16, C, wte16, C, 0.0f, logits, V);
    } else if (R <= DECODE_LMHEAD_ROWS) {
        size_t n_blocks = (V + DECODE_LMHEAD_BLOCK - 1) / DECODE_LMHEAD_BLOCK;
        #pragma omp parallel for schedule(static) if (R * V * C >= (1 << 20))
        for (size_t blk = 0; blk < n_blocks; blk++) {
            size_t v0 = blk * DECODE_LMHEAD_BLOCK;
            size_t nv = V - v0 < DECODE_LMHEAD_BLOCK ? V - v0 : DECODE_LMHEAD_BLOCK;
            /* logits [R, v0 : v0 + nv] = inp [R, C] @ wte [v0 : v0 + nv, C]^T */
            fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)R, (int)nv, (int)C, 1.0f, inp, (int)C,
                        wte + v0 * C, (int)C, 0.0f, logits + v0, (int)V);
        }
    } else
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)R, (int)V, (int)C, 1.0f, inp, (int)C,
                    wte, (int)C, 0.0f, logits, (int)V);
}

int fdpo_decoder_forward(fdpo_decoder *d, size_t n_slots, const size_t *slots,
                         const size_t *n_new, const int32_t *tokens, float *logits, int all_logits) {
    const fdpo_gpt2_config *c = &d->model->config;
    const fdpo_gpt2_params *p = &d->model->params;
    size_t C = c->n_embd, L = c->n_layer, NH = c->n_head, V = c->vocab_size;
    size_t R = 0;
    for (size_t i = 0; i < n_slots; i++) {
        if (slots[i] >= d->max_seqs) return fdpo_error("decoder: slot %zu out of range (%zu slots)", slots[i], d->max_seqs);
        if (fdpo_decoder_len(d, slots[i]) + n_new[i] > d->max_len)
            return fdpo_error("decoder: sequence of %zu tokens exceeds the cache length %zu",
                              fdpo_decoder_len(d, slots[i]) + n_new[i], d->max_len);
        if (n_new[i] == 0) return fdpo_error("decoder: no new tokens for slot %zu", slots[i]);
        R += n_new[i];
    }
    for (size_t r = 0; r < R; r++)
        if (tokens[r] < 0 || (size_t)tokens[r] >= V)
            return fdpo_error("decoder: token id %d outside the vocabulary [0, %zu)", tokens[r], V);
    if (R == 0) return 0;
    if (d->llama) return fdpo_llama_decoder_forward(d->llama, n_slots, slots, n_new, tokens, logits, all_logits, R);
    grow_rows(d, R, n_slots);
    const fdpo_gpt2 *m = d->model;
    if (d->w16 && d->cap16 < R) {
        free(d->in16);
        d->in16 = fdpo_malloc(R * 4 * C * sizeof(uint16_t));
        d->cap16 = R;
    }
    /* the bf16 copy of weight tensor w (NULL in fp32) */
#define W16(w) (d->w16 ? d->w16 + ((w) - m->params_memory) : NULL)
    for (size_t i = 0, r = 0; i < n_slots; i++)
        for (size_t j = 0; j < n_new[i]; j++, r++) {
            d->row_slot[r] = slots[i];
            d->row_pos[r] = (int32_t)(d->len[slots[i]] + j);
        }

    decode_acc = d->acc;
    decode_embed_forward(d->x, tokens, d->row_pos, p->wte, p->wpe, R, C);
    size_t layer_cache = d->max_seqs * d->max_len * C;
    for (size_t l = 0; l < L; l++) {
        float *kc = d->k_cache + l * layer_cache, *vc = d->v_cache + l * layer_cache;
        decode_layernorm_forward(d->h, d->x, p->ln1w + l * C, p->ln1b + l * C, R, C, c->layer_norm_epsilon);
        decode_matmul_forward(d->qkv, d->h, p->qkvw + l * C * 3 * C, p->qkvb + l * 3 * C, R, C, 3 * C, 0,
                              W16(p->qkvw + l * C * 3 * C), d->in16);
        fdpo_lora_apply(m, FDPO_LORA_C_ATTN, l, d->qkv, d->h, R);
        decode_cache_store(kc, vc, d->qkv, d->row_slot, d->row_pos, R, C, d->max_len);
        decode_attention_forward(d->atty, d->scores, d->qkv, kc, vc, d->row_slot, d->row_pos, R, C, NH, d->max_len);
        decode_matmul_forward(d->x, d->atty, p->attprojw + l * C * C, p->attprojb + l * C, R, C, C, 1,
                              W16(p->attprojw + l * C * C), d->in16);
        fdpo_lora_apply(m, FDPO_LORA_ATTN_C_PROJ, l, d->x, d->atty, R);
        decode_layernorm_forward(d->h, d->x, p->ln2w + l * C, p->ln2b + l * C, R, C, c->layer_norm_epsilon);
        decode_matmul_forward(d->fch, d->h, p->fcw + l * C * 4 * C, p->fcb + l * 4 * C, R, C, 4 * C, 0,
                              W16(p->fcw + l * C * 4 * C), d->in16);
        fdpo_lora_apply(m, FDPO_LORA_C_FC, l, d->fch, d->h, R);
        decode_gelu_forward(d->fch, R * 4 * C);
        decode_matmul_forward(d->x, d->fch, p->fcprojw + l * 4 * C * C, p->fcprojb + l * C, R, 4 * C, C, 1,
                              W16(p->fcprojw + l * 4 * C * C), d->in16);
        fdpo_lora_apply(m, FDPO_LORA_MLP_C_PROJ, l, d->x, d->fch, R);
    }
    for (size_t i = 0; i < n_slots; i++) d->len[slots[i]] += n_new[i];

    if (all_logits) {
        decode_layernorm_forward(d->h, d->x, p->lnfw, p->lnfb, R, C, c->layer_norm_epsilon);
        decode_lmhead_forward(logits, d->h, p->wte, R, C, V, W16(p->wte), d->in16, d->xpad);
    } else {
        size_t r_end = 0;
        for (size_t i = 0; i < n_slots; i++) {
            r_end += n_new[i];
            memcpy(d->xlast + i * C, d->x + (r_end - 1) * C, C * sizeof(float));
        }
        decode_layernorm_forward(d->h, d->xlast, p->lnfw, p->lnfb, n_slots, C, c->layer_norm_epsilon);
        decode_lmhead_forward(logits, d->h, p->wte, n_slots, C, V, W16(p->wte), d->in16, d->xpad);
    }
#undef W16
    return 0;
}
