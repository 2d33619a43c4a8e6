/* GPT-2 layer kernels, forward and backward, over a packed batch of N tokens.
 * Matmuls go to OpenBLAS over all N tokens; the remaining loops use OpenMP. Backward
 * functions ACCUMULATE into parameter gradients. Reductions over tokens run in a fixed
 * order per output element, so results depend only on the thread count. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include "model/gpt2_internal.h"

/* acc [OC] += sum over rows t of x [N,OC] (a linear layer's bias gradient, both families).
 * Blocks of columns per thread, rows read contiguously; each column sums in row order
 * whatever the thread count. */
#define COL_BLOCK 64
static void column_sums_blocks(float *acc, const float *x, size_t N, size_t OC, size_t b0, size_t b1) {
    for (size_t blk = b0; blk < b1; blk++) {
        size_t o0 = blk * COL_BLOCK, w = OC - o0 < COL_BLOCK ? OC - o0 : COL_BLOCK;
        float s[COL_BLOCK] = {0};
        for (size_t t = 0; t < N; t++) {
            const float *row = x + t * OC + o0;
            for (size_t j = 0; j < w; j++) s[j] += row[j];
        }
        for (size_t j = 0; j < w; j++) acc[o0 + j] += s[j];
    }
}
void fdpo_k_column_sums_add(float *acc, const float *x, size_t N, size_t OC) {
    FDPO_SPLIT((OC + COL_BLOCK - 1) / COL_BLOCK, N * OC >= FDPO_PAR_MIN, column_sums_blocks(acc, x, N, OC, lo_, hi_));
}

/* out [N,C] = wte[tokens] + wpe[pos] */
static void encoder_rows(float *out, const int32_t *tokens, const int32_t *pos, const float *wte, const float *wpe,
                         size_t C, size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) {
        const float *te = wte + (size_t)tokens[t] * C, *pe = wpe + (size_t)pos[t] * C;
        float *o = out + t * C;
        for (size_t c = 0; c < C; c++) o[c] = te[c] + pe[c];
    }
}
void fdpo_k_encoder_forward(float *out, const int32_t *tokens, const int32_t *pos, const float *wte,
                     const float *wpe, size_t N, size_t C) {
    FDPO_SPLIT(N, N * C >= FDPO_PAR_MIN, encoder_rows(out, tokens, pos, wte, wpe, C, lo_, hi_));
}

/* dwte [V,C], dwpe [maxT,C] += scatter of dout [N,C]. Parallel over blocks of channels so
 * that two tokens with the same id never race, and each element sums in token order; a
 * block reads a contiguous run of each row (one channel per thread read a float per row). */
static void encoder_backward_blocks(float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                                    const int32_t *pos, size_t N, size_t C, size_t b0, size_t b1) {
    for (size_t blk = b0; blk < b1; blk++) {
        size_t c0 = blk * COL_BLOCK, w = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
        for (size_t t = 0; t < N; t++) {
            const float *d = dout + t * C + c0;
            float *te = dwte + (size_t)tokens[t] * C + c0, *pe = dwpe + (size_t)pos[t] * C + c0;
#pragma omp simd
            for (size_t j = 0; j < w; j++) {
                te[j] += d[j];
                pe[j] += d[j];
            }
        }
    }
}
void fdpo_k_encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                      const int32_t *pos, size_t N, size_t C) {
    FDPO_SPLIT((C + COL_BLOCK - 1) / COL_BLOCK, N * C >= FDPO_PAR_MIN,
               encoder_backward_blocks(dwte, dwpe, dout, tokens, pos, N, C, lo_, hi_));
}

/* dst [K, W] = rows rows[0..K) of src [., W]. dst may be src: rows ascend with rows[k] >= k,
 * so no later source is overwritten. */
void fdpo_k_gather_rows(float *dst, const float *src, const size_t *rows, size_t K, size_t W) {
    for (size_t k = 0; k < K; k++)
        if (dst + k * W != src + rows[k] * W) memmove(dst + k * W, src + rows[k] * W, W * sizeof(float));
}

/* x [., W]: rows t0 .. t0+K hold packed rows for the rows rows[0..K) (ascending, inside
 * [t0, t0+n), so rows[k] >= t0 + k): move each to its row, in place, and zero every other
 * row of [t0, t0+n). From the back, so no row is overwritten before it has moved. */
void fdpo_k_scatter_rows(float *x, size_t t0, size_t n, const size_t *rows, size_t K, size_t W) {
    size_t next = t0 + n;
    for (size_t k = K; k-- > 0;) {
        size_t t = rows[k];
        if (next > t + 1) memset(x + (t + 1) * W, 0, (next - t - 1) * W * sizeof(float));
        if (t != t0 + k) memcpy(x + t * W, x + (t0 + k) * W, W * sizeof(float));
        next = t;
    }
    if (next > t0) memset(x + t0 * W, 0, (next - t0) * W * sizeof(float));
}

/* One row of LayerNorm: o [C] = (x - mean) * rstd * w + b; sums in double. */
static inline void layernorm_row(float *o, float *mean, float *rstd, const float *x, const float *w, const float *b,
                                 size_t C, float eps) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (size_t c = 0; c < C; c++) s += x[c];
    float m = (float)(s / (double)C);
    double v = 0.0;
#pragma omp simd reduction(+ : v)
    for (size_t c = 0; c < C; c++) { double d = x[c] - m; v += d * d; }
    float r = (float)(1.0 / sqrt(v / (double)C + eps));
#pragma omp simd
    for (size_t c = 0; c < C; c++) o[c] = (x[c] - m) * r * w[c] + b[c];
    *mean = m;
    *rstd = r;
}

/* out [N,C] = (inp - mean) * rstd * w + b; mean, rstd [N] kept for backward. */
static void layernorm_rows(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                           size_t C, float eps, size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) layernorm_row(out + t * C, mean + t, rstd + t, inp + t * C, w, b, C, eps);
}
void fdpo_k_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, size_t N, size_t C, float eps) {
    FDPO_SPLIT(N, N * C >= FDPO_PAR_MIN, layernorm_rows(out, mean, rstd, inp, w, b, C, eps, lo_, hi_));
}

/* res [N,C] += bias [C] + residual [N,C], then out [N,C] = LayerNorm(res) as above.
 * res holds a linear layer's output computed without its bias; one pass per row (the
 * row is still in cache when it is normalised) instead of a bias copy, a residual add and
 * a LayerNorm, each with its own parallel region. bias may be NULL. */
static void residual_layernorm_rows(float *res, float *out, float *mean, float *rstd, const float *bias,
                                    const float *residual, const float *w, const float *b, size_t C, float eps,
                                    size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) {
        float *x = res + t * C;
        const float *r = residual + t * C;
        if (bias) {
#pragma omp simd
            for (size_t c = 0; c < C; c++) x[c] = x[c] + bias[c] + r[c];
        } else {
#pragma omp simd
            for (size_t c = 0; c < C; c++) x[c] += r[c];
        }
        layernorm_row(out + t * C, mean + t, rstd + t, x, w, b, C, eps);
    }
}
void fdpo_k_residual_layernorm_forward(float *res, float *out, float *mean, float *rstd, const float *bias,
                                const float *residual, const float *w, const float *b, size_t N, size_t C,
                                float eps) {
    FDPO_SPLIT(N, N * C >= FDPO_PAR_MIN,
               residual_layernorm_rows(res, out, mean, rstd, bias, residual, w, b, C, eps, lo_, hi_));
}

/* dinp [N,C] += LayerNorm backward of dout [N,C]; dw, db [C] += per-channel sums.
 *   xhat = (x - mean) * rstd,  dxhat = dout * w
 *   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) */
static void layernorm_backward_rows(float *dinp, const float *dout, const float *inp, const float *w,
                                    const float *mean, const float *rstd, size_t C, size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) {
        const float *dy = dout + t * C, *x = inp + t * C;
        float m = mean[t], r = rstd[t];
        double sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
#pragma omp simd reduction(+ : sum_dxhat, sum_dxhat_xhat)
        for (size_t c = 0; c < C; c++) {
            float xhat = (x[c] - m) * r, dxhat = dy[c] * w[c];
            sum_dxhat += dxhat;
            sum_dxhat_xhat += dxhat * xhat;
        }
        float mean_dxhat = (float)(sum_dxhat / (double)C);
        float mean_dxhat_xhat = (float)(sum_dxhat_xhat / (double)C);
        float *dx = dinp + t * C;
#pragma omp simd
        for (size_t c = 0; c < C; c++) {
            float xhat = (x[c] - m) * r, dxhat = dy[c] * w[c];
            dx[c] += r * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        }
    }
}

static void layernorm_backward_blocks(float *dw, float *db, const float *dout, const float *inp, const float *mean,
                                      const float *rstd, size_t N, size_t C, size_t b0, size_t b1) {
    for (size_t blk = b0; blk < b1; blk++) {
        size_t c0 = blk * COL_BLOCK, w = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
        float sw[COL_BLOCK] = {0}, sb[COL_BLOCK] = {0};
        for (size_t t = 0; t < N; t++) {
            const float *x = inp + t * C + c0, *dy = dout + t * C + c0;
            float m = mean[t], r = rstd[t];
            for (size_t j = 0; j < w; j++) {
                sw[j] += dy[j] * ((x[j] - m) * r);
                sb[j] += dy[j];
            }
        }
        for (size_t j = 0; j < w; j++) { dw[c0 + j] += sw[j]; db[c0 + j] += sb[j]; }
    }
}

void fdpo_k_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, size_t N, size_t C) {
    size_t n_blocks = dw ? (C + COL_BLOCK - 1) / COL_BLOCK : 0; /* dw NULL: frozen weights (LoRA) */
    if (fdpo_k_on_this_thread(N * C >= FDPO_PAR_MIN)) {
        layernorm_backward_rows(dinp, dout, inp, w, mean, rstd, C, 0, N);
        layernorm_backward_blocks(dw, db, dout, inp, mean, rstd, N, C, 0, n_blocks);
        return;
    }
    /* one region: the row pass (dinp) and the column pass (dw, db) read the same inputs and
     * write different outputs, so neither waits for the other */
#pragma omp parallel
    {
        const size_t nt = (size_t)omp_get_num_threads(), it = (size_t)omp_get_thread_num();
        layernorm_backward_rows(dinp, dout, inp, w, mean, rstd, C, N * it / nt, N * (it + 1) / nt);
        layernorm_backward_blocks(dw, db, dout, inp, mean, rstd, N, C, n_blocks * it / nt, n_blocks * (it + 1) / nt);
    }
}

static void bias_add_rows(float *out, const float *bias, size_t OC, size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) {
        float *o = out + t * OC;
#pragma omp simd
        for (size_t c = 0; c < OC; c++) o[c] += bias[c];
    }
}

/* out [N,OC] = inp [N,IC] @ w [IC,OC] + bias [OC]  (Conv1D layout; bias may be NULL).
 * The bias is added after the GEMM, to rows still in cache: copied into out first (as the
 * GEMM's beta = 1 operand) it cost a pass of its own over the cold output, ~1.3 % of a small
 * model's training step (the qkv layer's). The same sum, the product plus the bias once,
 * where the GEMM does not split the inner dimension (IC <= oneDNN's K block). */
void fdpo_k_matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                    size_t N, size_t IC, size_t OC) {
    fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)OC, (int)IC,
                1.0f, inp, (int)IC, w, (int)OC, 0.0f, out, (int)OC);
    if (bias) FDPO_SPLIT(N, N * OC >= FDPO_PAR_MIN, bias_add_rows(out, bias, OC, lo_, hi_));
}

/* A backward's two GEMMs (d input and d weight) are independent and equal in FLOPs. On two
 * threads, when each is small (<= GEMM_PAIR_MAX_FLOPS), one parallel region runs one GEMM
 * per thread (oneDNN runs single-threaded inside a region): one fork/join instead of two,
 * and no small GEMM split in halves that then wait for each other. Larger GEMMs, other
 * thread counts and FDPO_GEMM_PAIR=0 (for A/B runs) keep one threaded GEMM after the other.
 * Either way each result is a function of the shapes and the thread count only. */
#define GEMM_PAIR_MAX_FLOPS ((size_t)1 << 28)
static int gemm_pair(size_t flops_each) {
    static int env = -1;
    if (env < 0) {
        env = fdpo_env_switch("FDPO_GEMM_PAIR", 1);
    }
    return env && flops_each <= GEMM_PAIR_MAX_FLOPS && !omp_in_parallel() && omp_get_max_threads() == 2;
}

/* dinp [N,IC] (+)= dout [N,OC] @ w^T;  dw [IC,OC] += inp^T @ dout;  dbias [OC] += sum_t dout */
void fdpo_k_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                     const float *w, size_t N, size_t IC, size_t OC, int accumulate_dinp) {
    const float beta = accumulate_dinp ? 1.0f : 0.0f;
    if (dw && gemm_pair(2 * N * IC * OC)) {
#pragma omp parallel sections num_threads(2)
        {
#pragma omp section
            fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)IC, (int)OC,
                       1.0f, dout, (int)OC, w, (int)OC, beta, dinp, (int)IC);
#pragma omp section
            fdpo_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)IC, (int)OC, (int)N,
                       1.0f, inp, (int)IC, dout, (int)OC, 1.0f, dw, (int)OC);
        }
    } else {
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)IC, (int)OC,
                   1.0f, dout, (int)OC, w, (int)OC, beta, dinp, (int)IC);
        if (dw) /* NULL: frozen weight (LoRA) */
            fdpo_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)IC, (int)OC, (int)N,
                       1.0f, inp, (int)IC, dout, (int)OC, 1.0f, dw, (int)OC);
    }
    if (dbias) fdpo_k_column_sums_add(dbias, dout, N, OC);
}

/* May token i attend to token j (j <= i, same sequence)? Branch 0 is shared; otherwise
 * both tokens must be on the same branch. */
static inline int may_attend(const uint8_t *branch, size_t i, size_t j) {
    return !branch || branch[j] == 0 || branch[j] == branch[i];
}

/* 1 when no query of [i0, i0+nq) may attend any key of [j0, j0+nk) by the branch rule: the
 * keys all lie on one branch and no query does (in the shared-prompt DPO layout, a tile of
 * the rejected completion against one of the chosen). Every score of that tile is masked,
 * its P = exp(-inf) and dS are exact zeros, so the streaming kernels skip the tile: the same
 * results, without the products (at T = 1024, prompt 512 + 2 x 512 completions, a fifth of
 * the tiles). */
static int tile_masked_by_branch(const uint8_t *br, size_t i0, size_t nq, size_t j0, size_t nk) {
    if (!br || br[j0] == 0) return 0;
    const uint8_t bk = br[j0];
    for (size_t c = 1; c < nk; c++)
        if (br[j0 + c] != bk) return 0;
    for (size_t r = 0; r < nq; r++)
        if (br[i0 + r] == bk) return 0;
    return 1;
}

/* Per sequence b (tokens [s, s+T)) and head h, with Q, K, V read from qkv [N,3C] at
 * column offsets h*hs, C + h*hs, 2C + h*hs (row stride 3C):
 *   att [T,T] = softmax(mask(Q K^T / sqrt(hs))),   out [T, hs] (row stride C) = att V
 * att of (b, h) lives at att_offset[b] + h*T*T; masked entries are stored as 0. */
void fdpo_k_attention_forward(float *out, float *att, const float *qkv, const size_t *seq_offset,
                       const size_t *att_offset, const uint8_t *branch, size_t B, size_t C, size_t NH) {
    size_t hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    long n_jobs = (long)(B * NH);
#pragma omp parallel for schedule(dynamic, 1)
    for (long job = 0; job < n_jobs; job++) {
        size_t b = (size_t)job / NH, h = (size_t)job % NH;
        size_t s = seq_offset[b], T = seq_offset[b + 1] - s;
        if (T == 0) continue;
        const float *q = qkv + s * C3 + h * hs, *k = q + C, *v = q + 2 * C;
        float *a = att + att_offset[b] + h * T * T;
        const uint8_t *br = branch ? branch + s : NULL;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)hs,
                    scale, q, (int)C3, k, (int)C3, 0.0f, a, (int)T);
        for (size_t i = 0; i < T; i++) {
            float *row = a + i * T;
            float mx = -INFINITY;
            for (size_t j = 0; j <= i; j++)
                if (may_attend(br, i, j) && row[j] > mx) mx = row[j];
            double sum = 0.0;
            for (size_t j = 0; j <= i; j++) {
                float e = may_attend(br, i, j) ? expf(row[j] - mx) : 0.0f;
                row[j] = e;
                sum += e;
            }
            float inv = (float)(1.0 / sum); /* j = i is always allowed, so sum >= 1 */
            for (size_t j = 0; j <= i; j++) row[j] *= inv;
            for (size_t j = i + 1; j < T; j++) row[j] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)hs, (int)T,
                    1.0f, a, (int)T, v, (int)C3, 0.0f, out + s * C + h * hs, (int)C);
    }
}

/* Backward of fdpo_k_attention_forward; WRITES dqkv [N,3C] (every element of every sequence).
 *   dP = dY V^T;  dV = P^T dY;  dS = P * (dP - rowsum(dP * P));  dQ = dS K / sqrt(hs);
 *   dK = dS^T Q / sqrt(hs).  Masked entries have P = 0, hence dS = 0.
 * datt_scratch holds scratch_stride floats (>= maxT^2) per OpenMP thread. */
void fdpo_k_attention_backward(float *dqkv, float *datt_scratch, size_t scratch_stride, const float *dout,
                        const float *qkv, const float *att, const size_t *seq_offset,
                        const size_t *att_offset, size_t B, size_t C, size_t NH) {
    size_t hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    long n_jobs = (long)(B * NH);
#pragma omp parallel for schedule(dynamic, 1)
    for (long job = 0; job < n_jobs; job++) {
        size_t b = (size_t)job / NH, h = (size_t)job % NH;
        size_t s = seq_offset[b], T = seq_offset[b + 1] - s;
        if (T == 0) continue;
        float *dP = datt_scratch + (size_t)omp_get_thread_num() * scratch_stride;
        const float *q = qkv + s * C3 + h * hs, *k = q + C, *v = q + 2 * C;
        float *dq = dqkv + s * C3 + h * hs, *dk = dq + C, *dv = dq + 2 * C;
        const float *P = att + att_offset[b] + h * T * T;
        const float *dy = dout + s * C + h * hs;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)hs,
                    1.0f, dy, (int)C, v, (int)C3, 0.0f, dP, (int)T);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)T, (int)hs, (int)T,
                    1.0f, P, (int)T, dy, (int)C, 0.0f, dv, (int)C3);
        for (size_t i = 0; i < T; i++) {
            const float *p = P + i * T;
            float *d = dP + i * T;
            double dot = 0.0;
            for (size_t j = 0; j <= i; j++) dot += (double)p[j] * d[j];
            float fdot = (float)dot;
            for (size_t j = 0; j <= i; j++) d[j] = p[j] * (d[j] - fdot);
            for (size_t j = i + 1; j < T; j++) d[j] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)hs, (int)T,
                    scale, dP, (int)T, k, (int)C3, 0.0f, dq, (int)C3);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)T, (int)hs, (int)T,
                    scale, dP, (int)T, q, (int)C3, 0.0f, dk, (int)C3);
    }
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
/* gelu_new: out = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
 * Computed as x * sigmoid(2u), the same function (0.5 (1 + tanh u) = sigmoid(2u)): one
 * exp (fdpo_k_expf) instead of libm's tanhf, which was a third of a small model's step. */
static inline float gelu_value(float x) {
    float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    return x / (1.0f + fdpo_k_expf(-2.0f * u));
}

/* gelu'(x) = s + x * 2 s (1 - s) * du/dx with s = sigmoid(2u), du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2) */
static inline float gelu_grad(float x) {
    float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    float sg = 1.0f / (1.0f + fdpo_k_expf(-2.0f * u));
    float du = GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    return sg + 2.0f * x * sg * (1.0f - sg) * du;
}

/* out [N,OC] = gelu(fch + bias [OC]), and fch [N,OC] = gelu'(fch + bias) in place: the
 * backward needs only the derivative, which shares this pass's exp (it used to recompute
 * exp and a division from the pre-activation: ~5 % of a small model's step). The c_fc
 * layer's bias is added here instead of by a copy before its GEMM. The values are gelu_value's
 * and gelu_grad's as before, so results are unchanged bit for bit. */
static void bias_gelu_rows(float *out, float *fch, const float *bias, size_t OC, size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; t++) {
        float *x = fch + t * OC, *o = out + t * OC;
#pragma omp simd
        for (size_t c = 0; c < OC; c++) {
            float v = x[c] + bias[c];
            o[c] = gelu_value(v);
            x[c] = gelu_grad(v); /* inlined: the compiler shares the one exp of both */
        }
    }
}
void fdpo_k_bias_gelu_forward(float *out, float *fch, const float *bias, size_t N, size_t OC) {
    FDPO_SPLIT(N, N * OC >= FDPO_PAR_MIN, bias_gelu_rows(out, fch, bias, OC, lo_, hi_));
}

/* d [N,OC] = dgelu * d (in place; dgelu [N,OC]: gelu' as fdpo_k_bias_gelu_forward left it);
 * dbias [OC] += column sums of the new d (NULL: frozen). Parallel over blocks of columns so
 * each dbias element sums its rows in order, as fdpo_k_column_sums_add does: one pass and one
 * region instead of two. */
#define GELU_COL_BLOCK 256
static void gelu_backward_bias_blocks(float *d, float *dbias, const float *dgelu, size_t N, size_t OC, size_t b0,
                                      size_t b1) {
    for (size_t blk = b0; blk < b1; blk++) {
        size_t o0 = blk * GELU_COL_BLOCK, w = OC - o0 < GELU_COL_BLOCK ? OC - o0 : GELU_COL_BLOCK;
        float s[GELU_COL_BLOCK] = {0};
        for (size_t t = 0; t < N; t++) {
            float *row = d + t * OC + o0;
            const float *g = dgelu + t * OC + o0;
#pragma omp simd
            for (size_t j = 0; j < w; j++) {
                row[j] = g[j] * row[j];
                s[j] += row[j];
            }
        }
        if (dbias)
            for (size_t j = 0; j < w; j++) dbias[o0 + j] += s[j];
    }
}
void fdpo_k_gelu_backward_bias(float *d, float *dbias, const float *dgelu, size_t N, size_t OC) {
    FDPO_SPLIT((OC + GELU_COL_BLOCK - 1) / GELU_COL_BLOCK, N * OC >= FDPO_PAR_MIN,
               gelu_backward_bias_blocks(d, dbias, dgelu, N, OC, lo_, hi_));
}

/* out = a + b, n elements */
void fdpo_k_residual_forward(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static) if (n >= FDPO_PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* logits [N,V] = inp [N,C] @ wte^T  (tied LM head, wte [V,C]) */
void fdpo_k_lmhead_forward(float *logits, const float *inp, const float *wte, size_t N, size_t C, size_t V) {
    fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)V, (int)C,
                1.0f, inp, (int)C, wte, (int)C, 0.0f, logits, (int)V);
}

/* lse [N] = log sum_v exp(logits[t,v]) (max-subtracted, summed in double);
 * token_logp [N] = logits[t, target] - lse, 0 where target < 0 (token_logp may be NULL). */
void fdpo_k_logsoftmax_forward(float *lse, float *token_logp, const float *logits, const int32_t *targets,
                        size_t N, size_t V) {
#pragma omp parallel for schedule(static) if (N * V >= FDPO_PAR_MIN)
    for (size_t t = 0; t < N; t++) {
        const float *row = logits + t * V;
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (size_t v = 0; v < V; v++) mx = row[v] > mx ? row[v] : mx;
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (size_t v = 0; v < V; v++) sum += fdpo_k_expf(row[v] - mx);
        double l = (double)mx + log(sum);
        lse[t] = (float)l;
        if (token_logp) token_logp[t] = targets[t] >= 0 ? (float)((double)row[targets[t]] - l) : 0.0f;
    }
}

/* dlogits [N,V] = d_token_logp[t] * (onehot(target) - softmax(logits)); rows without a
 * target get 0. dlogits may alias the logits it is computed from (it does in gpt2.c). */
void fdpo_k_logsoftmax_backward(float *dlogits, const float *lse, const int32_t *targets,
                         const float *d_token_logp, size_t N, size_t V) {
#pragma omp parallel for schedule(static) if (N * V >= FDPO_PAR_MIN)
    for (size_t t = 0; t < N; t++) {
        float *row = dlogits + t * V;
        float d = targets[t] >= 0 ? d_token_logp[t] : 0.0f;
        if (d == 0.0f) { memset(row, 0, V * sizeof(float)); continue; }
        float l = lse[t];
#pragma omp simd
        for (size_t v = 0; v < V; v++) row[v] = -d * fdpo_k_expf(row[v] - l);
        row[targets[t]] += d;
    }
}

/* dinp [N,C] = dlogits @ wte;  dwte [V,C] += dlogits^T @ inp */
void fdpo_k_lmhead_backward(float *dinp, float *dwte, const float *dlogits, const float *inp,
                     const float *wte, size_t N, size_t C, size_t V) {
    fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)V,
                1.0f, dlogits, (int)V, wte, (int)C, 0.0f, dinp, (int)C);
    if (dwte) /* NULL: frozen weight (LoRA) */
        fdpo_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)V, (int)C, (int)N,
                    1.0f, dlogits, (int)V, inp, (int)C, 1.0f, dwte, (int)C);
}

/* ---- bf16 variants: inputs rounded to bf16, fp32 accumulation and outputs ---- */

/* out [N,OC] = bf16(inp [N,IC]) @ w [IC,OC] (bf16) + bias [OC]; scratch holds N*IC.
 * w.f: the fp32 route on that fp32 copy of the bf16 weight (the caller's, made once per
 * refresh); only w.h: as fdpo_gemm_bf16 routes it, widening w.h here on the fp32 route. */
void fdpo_k_matmul_forward_bf16(float *out, const float *inp, fdpo_bf16_weight w, const float *bias,
                         size_t N, size_t IC, size_t OC, uint16_t *scratch) {
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for schedule(static) if (N * OC >= FDPO_PAR_MIN)
        for (size_t t = 0; t < N; t++) memcpy(out + t * OC, bias, OC * sizeof(float));
        beta = 1.0f;
    }
    if (w.f || fdpo_gemm_bf16_widens(N, OC)) { /* fp32 route: one rounding pass, the fp32 weight */
        float *xr = fdpo_bf16_operand_scratch(0, N * IC);
        const float *wf = w.f;
        if (!wf) {
            float *t = fdpo_bf16_operand_scratch(1, IC * OC);
            fdpo_bf16_widen(t, w.h, IC * OC);
            wf = t;
        }
        fdpo_f32_round_bf16(xr, inp, N * IC);
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)OC, (int)IC, 1.0f, xr, (int)IC, wf,
                   (int)OC, beta, out, (int)OC);
        return;
    }
    fdpo_f32_to_bf16(scratch, inp, N * IC);
    fdpo_gemm_bf16(0, 0, N, OC, IC, 1.0f, scratch, IC, w.h, OC, beta, out, OC);
}

/* dinp [N,IC] (=) bf16(dout) @ w^T;  dw [IC,OC] += bf16(inp)^T @ bf16(dout);
 * dbias [OC] += sum_t dout (fp32). scratch_dout holds N*OC, scratch_inp N*IC. w as in the
 * forward (w.f: the fp32 route). */
void fdpo_k_matmul_backward_bf16(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                          fdpo_bf16_weight w, size_t N, size_t IC, size_t OC, uint16_t *scratch_dout,
                          uint16_t *scratch_inp) {
    if (dbias) fdpo_k_column_sums_add(dbias, dout, N, OC);
    if (w.f || fdpo_gemm_bf16_widens(N, IC)) {
        /* fp32 route: dout rounded once for both GEMMs (not rounded, then widened by each),
         * the fp32 weight (widened here once without w.f); then the fp32 backward (its
         * two-GEMM region included) */
        float *dr = fdpo_bf16_operand_scratch(0, N * OC), *xr = fdpo_bf16_operand_scratch(1, N * IC + (w.f ? 0 : IC * OC));
        const float *wf = w.f;
        if (!wf) {
            fdpo_bf16_widen(xr + N * IC, w.h, IC * OC);
            wf = xr + N * IC;
        }
        fdpo_f32_round_bf16(dr, dout, N * OC);
        if (dw) fdpo_f32_round_bf16(xr, inp, N * IC);
        fdpo_k_matmul_backward(dinp, dw, NULL, dr, xr, wf, N, IC, OC, 0);
        return;
    }
    fdpo_f32_to_bf16(scratch_dout, dout, N * OC);
    fdpo_gemm_bf16(0, 1, N, IC, OC, 1.0f, scratch_dout, OC, w.h, OC, 0.0f, dinp, IC);
    if (dw) { /* NULL: frozen weight (LoRA) */
        fdpo_f32_to_bf16(scratch_inp, inp, N * IC);
        fdpo_gemm_bf16(1, 0, IC, OC, N, 1.0f, scratch_inp, IC, scratch_dout, OC, 1.0f, dw, OC);
    }
}

/* logits [N,V] = bf16(inp [N,C]) @ wte^T (bf16 [V,C]); scratch holds N*C; wte.f: the fp32
 * route on it */
void fdpo_k_lmhead_forward_bf16(float *logits, const float *inp, fdpo_bf16_weight wte, size_t N, size_t C, size_t V,
                         uint16_t *scratch) {
    if (wte.f) {
        float *xr = fdpo_bf16_operand_scratch(0, N * C);
        fdpo_f32_round_bf16(xr, inp, N * C);
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)V, (int)C, 1.0f, xr, (int)C, wte.f, (int)C,
                   0.0f, logits, (int)V);
        return;
    }
    fdpo_f32_to_bf16(scratch, inp, N * C);
    fdpo_gemm_bf16(0, 1, N, V, C, 1.0f, scratch, C, wte.h, C, 0.0f, logits, V);
}

/* dinp [N,C] = bf16(dlogits) @ wte;  dwte [V,C] += bf16(dlogits)^T @ bf16(inp); wte.f: the
 * fp32 route on it for dinp (dlogits rounded once, for dwte's GEMM too where that widens) */
void fdpo_k_lmhead_backward_bf16(float *dinp, float *dwte, const float *dlogits, const float *inp,
                          fdpo_bf16_weight wte, size_t N, size_t C, size_t V, uint16_t *scratch_dlogits,
                          uint16_t *scratch_inp) {
    if (wte.f) {
        float *dr = fdpo_bf16_operand_scratch(0, N * V);
        fdpo_f32_round_bf16(dr, dlogits, N * V);
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)V, 1.0f, dr, (int)V, wte.f, (int)C,
                   0.0f, dinp, (int)C);
        if (dwte && fdpo_gemm_bf16_widens(V, C)) {
            float *xr = fdpo_bf16_operand_scratch(1, N * C);
            fdpo_f32_round_bf16(xr, inp, N * C);
            fdpo_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)V, (int)C, (int)N, 1.0f, dr, (int)V, xr, (int)C,
                       1.0f, dwte, (int)C);
            return;
        }
        if (dwte) fdpo_f32_to_bf16(scratch_dlogits, dlogits, N * V);
    } else {
        fdpo_f32_to_bf16(scratch_dlogits, dlogits, N * V);
        fdpo_gemm_bf16(0, 0, N, C, V, 1.0f, scratch_dlogits, V, wte.h, C, 0.0f, dinp, C);
    }
    if (dwte) { /* NULL: frozen (LoRA) */
        fdpo_f32_to_bf16(scratch_inp, inp, N * C);
        fdpo_gemm_bf16(1, 0, V, C, N, 1.0f, scratch_dlogits, V, scratch_inp, C, 1.0f, dwte, C);
    }
}

/* ---- attention without T x T storage (streaming softmax, recomputing backward) ---- */

/* ---- the streaming attention's small path: head sizes 16 and 32 (attention_small_path) ----
 * oneDNN takes ~2.5 us per 64 x 64 x 32 tile product (setup per call is a large part of
 * so little work; ~2,700 calls per small-model step), and the row-wise softmax of a score
 * tile needs a horizontal max and sum per row. Here the score tile is kept transposed,
 * St [keys, queries]: every product of the forward and backward is then an "axpy" form
 *   C [M, N] (=/+=) alpha * sum_k a(m, k) B[k, :]   (B's rows contiguous)
 * with B a row block of K, V, Q or dY as stored, or the query tile's Q (scaled) or dY
 * transposed once per query tile (Qt, dYt [hs, 64]); and the online softmax runs down the
 * columns of St as plain vector operations over queries. tile_product keeps RB x NV vectors
 * of C in registers (AVX-512: 4 rows x up to 4 vectors of 16, or 8 x 2; AVX2: 4 x 2 or 8 x 1
 * vectors of 8, as its 16 registers hold; 16-float vectors there spilled to the stack and made
 * the small model's step 3x slower: GCC/Clang vector types), loads each
 * vector of B once for the RB rows, and sums in k order: results depend only on the
 * shapes, never on the thread count or the vector width. ATT_LANES is the tiles' column
 * granularity (padding, causal masks), the same on every ISA; ATT_VEC is one register. */
#define ATT_LANES 16
#define ATT_SMALL_MAX_HS 32
#ifdef __AVX512F__
#define ATT_VEC 16
#define ATT_NV_MAX 4 /* vectors per chunk of columns */
#elif defined(__AVX__)
#define ATT_VEC 8
#define ATT_NV_MAX 2
#else
#define ATT_VEC 4
#define ATT_NV_MAX 2
#endif
typedef float att_vec __attribute__((vector_size(ATT_VEC * sizeof(float))));
/* -std=c11 turns off GCC's multiply-add contraction; these products want fused
 * multiply-adds (one rounding per step instead of two, as the GEMM's kernels do) */
#if defined(__GNUC__) && !defined(__clang__)
#define ATT_FMA __attribute__((optimize("fp-contract=fast")))
#else
#define ATT_FMA
#endif

/* GCC folds the load of B's vector j into each row's FMA as a memory operand: RB x NV loads
 * of B per k (16 at 4 x 4) instead of NV, so the load ports, not the FMA units, set the pace.
 * An empty asm that may change the register keeps the loaded vector in it; the arithmetic is
 * the same (one thread, B 8 x T 128, hs 32: attention forward and backward each ~6 % faster). */
#if defined(__AVX512F__) && defined(__GNUC__)
#define ATT_KEEP_IN_REGISTER(v) __asm__("" : "+v"(v))
#elif defined(__SSE__) && defined(__GNUC__)
#define ATT_KEEP_IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define ATT_KEEP_IN_REGISTER(v) ((void)0)
#endif

/* C [RB, n] (=/+=) alpha * sum_k A[r*sam + k*sak] B [k, 0:NV*ATT_VEC] (row stride ldb); the first
 * n <= NV*ATT_VEC columns are stored; RB and NV are constants at every call (unrolled) */
static inline __attribute__((always_inline)) ATT_FMA void tile_block(float *C, size_t ldc, const float *A, size_t sam,
                                                              size_t sak, const float *B, size_t ldb, size_t K,
                                                              float alpha, int accumulate, size_t n, const int RB,
                                                              const int NV) {
    att_vec acc[8][ATT_NV_MAX], b[ATT_NV_MAX];
    for (int r = 0; r < RB; r++)
        for (int j = 0; j < NV; j++) acc[r][j] = (att_vec){0};
    for (size_t k = 0; k < K; k++) {
        for (int j = 0; j < NV; j++) {
            memcpy(&b[j], B + k * ldb + (size_t)j * ATT_VEC, sizeof b[j]);
            ATT_KEEP_IN_REGISTER(b[j]);
        }
        for (int r = 0; r < RB; r++) {
            float a = A[(size_t)r * sam + k * sak];
            for (int j = 0; j < NV; j++) acc[r][j] += a * b[j];
        }
    }
    for (int r = 0; r < RB; r++)
        for (int j = 0; j < NV; j++) {
            float *c = C + (size_t)r * ldc + (size_t)j * ATT_VEC;
            size_t w = n - (size_t)j * ATT_VEC < ATT_VEC ? n - (size_t)j * ATT_VEC : ATT_VEC;
            att_vec v = acc[r][j] * alpha, cv;
            if (w == ATT_VEC) {
                if (accumulate) {
                    memcpy(&cv, c, sizeof cv);
                    v += cv;
                }
                memcpy(c, &v, sizeof v);
            } else { /* never for the shapes used here (N is hs or a padded tile width) */
                float out[ATT_VEC];
                memcpy(out, &v, sizeof out);
                for (size_t i = 0; i < w; i++) c[i] = (accumulate ? c[i] : 0.0f) + out[i];
            }
        }
}

/* On a diagonal tile (keys j0 == queries i0) the causal mask zeroes half of every product:
 * key c may be attended by queries r >= c only. tile_product's `tri` skips, per block of
 * rows m .. m+RB-1, the terms that are exactly zero there (P = exp(-inf) = 0, hence dS = 0):
 *   TRI_K_END    rows are queries, k keys:   k < m + RB only   (O += P V,  dQ += dS K)
 *   TRI_K_START  rows are keys, k queries:   k >= m only       (dV += P^T dY,  dK += dS^T Q)
 *   TRI_N_START  rows are keys, columns queries: from column m/16*16 on; the skipped ones are
 *                all masked and are stored as 0 (scores: overwritten with -inf by the caller)
 * Skipping an exact zero term leaves every sum bit-identical to the full product. */
enum { TRI_NONE, TRI_K_END, TRI_K_START, TRI_N_START };

/* rows m .. m+RB-1 of tile_product (one chunk of n <= ATT_NV_MAX*ATT_VEC columns, nv vectors,
 * starting at column n0 of the product) */
static inline __attribute__((always_inline)) ATT_FMA void tile_rows(float *C, size_t ldc, const float *A, size_t sam,
                                                             size_t sak, const float *B, size_t ldb, size_t K,
                                                             float alpha, int accumulate, size_t n, size_t nv,
                                                             size_t n0, size_t m, const int RB, int tri) {
    size_t k0 = 0, k1 = K, v0 = 0;
    if (tri == TRI_K_END && m + (size_t)RB < K) k1 = m + (size_t)RB;
    if (tri == TRI_K_START) k0 = m < K ? m : K;
    if (tri == TRI_N_START) { /* columns before m's 16-vector are masked: stored as 0 */
        size_t masked = m / ATT_LANES * ATT_LANES, skip = masked > n0 ? (masked - n0) / ATT_VEC : 0;
        if (skip >= nv) { /* the whole chunk */
            for (int r = 0; r < RB; r++) memset(C + (m + (size_t)r) * ldc, 0, n * sizeof(float));
            return;
        }
        v0 = skip;
        for (int r = 0; r < RB; r++) memset(C + (m + (size_t)r) * ldc, 0, v0 * ATT_VEC * sizeof(float));
    }
    float *c = C + m * ldc + v0 * ATT_VEC;
    const float *a = A + m * sam + k0 * sak, *b = B + k0 * ldb + v0 * ATT_VEC;
    size_t nn = n - v0 * ATT_VEC;
    switch (nv - v0) {
    case 1: tile_block(c, ldc, a, sam, sak, b, ldb, k1 - k0, alpha, accumulate, nn, RB, 1); break;
#if ATT_NV_MAX == 4
    case 2: tile_block(c, ldc, a, sam, sak, b, ldb, k1 - k0, alpha, accumulate, nn, RB, 2); break;
    case 3: tile_block(c, ldc, a, sam, sak, b, ldb, k1 - k0, alpha, accumulate, nn, RB, 3); break;
#endif
    default: tile_block(c, ldc, a, sam, sak, b, ldb, k1 - k0, alpha, accumulate, nn, RB, ATT_NV_MAX); break;
    }
}

/* C [M, N] (=/+=) alpha * sum_k a(m, k) B [k, 0:N]; a(m, k) = A[m*sam + k*sak]; B has row
 * stride ldb and readable columns up to N rounded up to 16. tri (diagonal tiles, above):
 * RB (8 or 4) divides every block's first row, so each block reads only entries at or after
 * the 16-vector holding its first row. Blocks of 16 accumulators (AVX-512: 8 rows x 2
 * vectors or 4 x 4) or 8 (AVX2: 8 x 1 or 4 x 2), leaving registers for B's vectors. */
static ATT_FMA void tile_product(float *C, size_t ldc, const float *A, size_t sam, size_t sak, const float *B,
                                 size_t ldb, size_t M, size_t N, size_t K, float alpha, int accumulate, int tri) {
    const size_t chunk = ATT_NV_MAX * ATT_VEC;
    for (size_t n0 = 0; n0 < N; n0 += chunk) {
        size_t n = N - n0 < chunk ? N - n0 : chunk, nv = (n + ATT_VEC - 1) / ATT_VEC, m = 0;
        float *c = C + n0;
        const float *b = B + n0;
        if (nv <= ATT_NV_MAX / 2)
            for (; m + 8 <= M; m += 8) tile_rows(c, ldc, A, sam, sak, b, ldb, K, alpha, accumulate, n, nv, n0, m, 8, tri);
        for (; m + 4 <= M; m += 4) tile_rows(c, ldc, A, sam, sak, b, ldb, K, alpha, accumulate, n, nv, n0, m, 4, tri);
        for (; m < M; m++) tile_rows(c, ldc, A, sam, sak, b, ldb, K, alpha, accumulate, n, nv, n0, m, 1, tri);
    }
}

#ifdef __AVX512F__
/* r [16] (16 rows of 16 floats) transposed in registers: r[j] becomes column j */
static inline void transpose16x16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) { /* interleave row pairs */
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int b = 0; b < 16; b += 4) { /* 4 x 4 blocks inside each 128-bit lane */
        r[b] = _mm512_shuffle_ps(t[b], t[b + 2], 0x44);
        r[b + 1] = _mm512_shuffle_ps(t[b], t[b + 2], 0xEE);
        r[b + 2] = _mm512_shuffle_ps(t[b + 1], t[b + 3], 0x44);
        r[b + 3] = _mm512_shuffle_ps(t[b + 1], t[b + 3], 0xEE);
    }
    for (int b = 0; b < 16; b += 8) /* then the 128-bit lanes */
        for (int k = 0; k < 4; k++) {
            t[b + k] = _mm512_shuffle_f32x4(r[b + k], r[b + 4 + k], 0x88);
            t[b + 4 + k] = _mm512_shuffle_f32x4(r[b + k], r[b + 4 + k], 0xDD);
        }
    for (int k = 0; k < 8; k++) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
        r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xDD);
    }
}
#endif

/* Xt [hs, ATT_TILE] = alpha * rows 0 .. n of X (row stride ld) transposed; columns n .. np zero.
 * AVX-512: 16 x 16 blocks transposed in registers (the scalar strided loop was a quarter of
 * the small path's own time, ~1 % of a small model's step); the same products. */
static void tile_transpose(float *Xt, const float *X, size_t ld, size_t n, size_t np, size_t hs, float alpha) {
    size_t c0 = 0;
#ifdef __AVX512F__
    if (hs % ATT_LANES == 0) {
        const __m512 va = _mm512_set1_ps(alpha);
        for (; c0 + ATT_LANES <= n; c0 += ATT_LANES)
            for (size_t d0 = 0; d0 < hs; d0 += ATT_LANES) {
                __m512 r[16];
                for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(X + (c0 + (size_t)i) * ld + d0);
                transpose16x16(r);
                for (int j = 0; j < 16; j++) _mm512_storeu_ps(Xt + (d0 + (size_t)j) * ATT_TILE + c0, _mm512_mul_ps(va, r[j]));
            }
    }
#endif
    for (size_t d = 0; d < hs; d++) {
        float *row = Xt + d * ATT_TILE;
        for (size_t c = c0; c < n; c++) row[c] = alpha * X[c * ld + d];
        for (size_t c = n; c < np; c++) row[c] = 0.0f;
    }
}

/* St [nk, np] = scores of keys j0.. (rows) against queries i0.. (columns) from K's rows and
 * Qt (Q's tile transposed and scaled), then -inf where a key may not be attended. On a
 * diagonal tile key row c is read only from the vector holding query c on (the softmax
 * loops start there, tile_product's tri reads nothing before it), so only that vector's
 * masked entries are set: setting all c of them was ~2,000 scalar stores per tile. */
static void attention_scores_tile_t(float *St, size_t np, const float *k, size_t C3, const float *qt, size_t hs,
                                    const uint8_t *br, size_t i0, size_t nq, size_t j0, size_t nk) {
    const int diag = j0 == i0;
    tile_product(St, np, k + j0 * C3, C3, 1, qt, ATT_TILE, nk, np, hs, 1.0f, 0, diag ? TRI_N_START : TRI_NONE);
    for (size_t c = 0; c < nk; c++) {
        size_t j = j0 + c, r_min = j > i0 ? j - i0 : 0; /* queries i >= j may attend key j */
        float *row = St + c * np;
        for (size_t r = diag ? c / ATT_LANES * ATT_LANES : 0; r < r_min && r < nq; r++) row[r] = -INFINITY;
        if (br)
            for (size_t r = r_min; r < nq; r++)
                if (!may_attend(br, i0 + r, j)) row[r] = -INFINITY;
    }
}

/* Which head sizes take the small path, by measurement. Backward (CPU per step, model-ops, 1
 * thread): hs 32 -8 % against oneDNN's 64^3 tiles, hs 64 +11..13 %. Forward (wave 15, 2
 * threads, best of 100-300 calls, against the query blocks of fdpo_sgemm products): hs 16
 * and 32 at T <= 256 -4..-20 %; hs 48, 64, 80, 128 +25..+36 %, hs 32 at T = 512 +10 %. So
 * both take it up to hs 32 (the small models' head size). */
static int attention_small_path(size_t hs) {
    static int env = -1; /* FDPO_ATT_SMALL=0: every head size through fdpo_sgemm (A/B runs) */
    if (env < 0) {
        env = fdpo_env_switch("FDPO_ATT_SMALL", 1);
    }
    return env && hs % ATT_LANES == 0 && hs <= ATT_SMALL_MAX_HS;
}

/* fdpo_k_attention_forward_streaming for one (sequence, head) on the small path */
static void attention_forward_small(float *o, float *lse, size_t lse_stride, const float *q, const float *k,
                                    const float *v, const uint8_t *br, size_t T, size_t C, size_t hs, float scale) {
    size_t C3 = 3 * C;
    float St[ATT_TILE * ATT_TILE], qt[ATT_SMALL_MAX_HS * ATT_TILE], m[ATT_TILE], l[ATT_TILE], ms[ATT_TILE];
    for (size_t i0 = 0; i0 < T; i0 += ATT_TILE) {
        size_t nq = T - i0 < ATT_TILE ? T - i0 : ATT_TILE, np = (nq + ATT_LANES - 1) / ATT_LANES * ATT_LANES;
        tile_transpose(qt, q + i0 * C3, C3, nq, np, hs, scale);
        for (size_t r = 0; r < np; r++) { m[r] = -INFINITY; l[r] = 0.0f; }
        /* o's rows are not cleared: the first key tile (j0 = 0) stores its product, the later
         * ones rescale and add (a memset of hs floats per row was ~1 % of a small step) */
        for (size_t j0 = 0; j0 < i0 + nq; j0 += ATT_TILE) {
            size_t nk = i0 + nq - j0 < ATT_TILE ? i0 + nq - j0 : ATT_TILE;
            /* never the first key tile (j0 = 0): it stores o's rows */
            if (j0 > 0 && tile_masked_by_branch(br, i0, nq, j0, nk)) continue;
            attention_scores_tile_t(St, np, k, C3, qt, hs, br, i0, nq, j0, nk);
            /* online softmax down each column r: m_new = max(m, column max), l = l exp(m - m_new) + sum */
            float cmax[ATT_TILE], corr[ATT_TILE], csum[ATT_TILE];
            /* diagonal tile: key row c is masked (-inf, exp 0) for queries r < c; from the vector
             * holding r = c on (tile_product's TRI_K_END reads no entry before it) */
            const int diag = j0 == i0;
            for (size_t r = 0; r < np; r++) cmax[r] = -INFINITY;
            for (size_t c = 0; c < nk; c++) {
                const float *row = St + c * np;
#pragma omp simd
                for (size_t r = diag ? c / ATT_LANES * ATT_LANES : 0; r < np; r++) cmax[r] = row[r] > cmax[r] ? row[r] : cmax[r];
            }
#pragma omp simd
            for (size_t r = 0; r < np; r++) {
                float mn = cmax[r] > m[r] ? cmax[r] : m[r];
                ms[r] = mn == -INFINITY ? 0.0f : mn; /* nothing attended yet: exp(-inf - 0) = 0, no NaN */
                corr[r] = fdpo_k_expf(m[r] - ms[r]);
                m[r] = mn;
                csum[r] = 0.0f;
            }
            for (size_t c = 0; c < nk; c++) {
                float *row = St + c * np;
#pragma omp simd
                for (size_t r = diag ? c / ATT_LANES * ATT_LANES : 0; r < np; r++) {
                    row[r] = fdpo_k_expf(row[r] - ms[r]);
                    csum[r] += row[r];
                }
            }
            for (size_t r = 0; r < nq; r++) {
                l[r] = l[r] * corr[r] + csum[r];
                if (j0 > 0 && corr[r] != 1.0f) {
                    float *orow = o + (i0 + r) * C;
                    for (size_t d = 0; d < hs; d++) orow[d] *= corr[r];
                }
            }
            tile_product(o + i0 * C, C, St, 1, np, v + j0 * C3, C3, nq, hs, nk, 1.0f, j0 > 0, j0 == i0 ? TRI_K_END : TRI_NONE);
        }
        for (size_t r = 0; r < nq; r++) { /* j = i is always allowed, so l >= 1 */
            float inv = 1.0f / l[r], *orow = o + (i0 + r) * C;
            for (size_t d = 0; d < hs; d++) orow[d] *= inv;
            lse[(i0 + r) * lse_stride] = m[r] + logf(l[r]);
        }
    }
}

/* fdpo_k_attention_backward_streaming for one (sequence, head) on the small path; dq, dk, dv
 * rows (stride 3C) are written */
static void attention_backward_small(float *dq, float *dk, float *dv, const float *dy, const float *o,
                                     const float *q, const float *k, const float *v, const float *lse,
                                     size_t lse_stride, const uint8_t *br, size_t T, size_t C, size_t hs,
                                     float scale) {
    size_t C3 = 3 * C;
    float Pt[ATT_TILE * ATT_TILE], dPt[ATT_TILE * ATT_TILE], qt[ATT_SMALL_MAX_HS * ATT_TILE];
    float dyt[ATT_SMALL_MAX_HS * ATT_TILE], D[ATT_TILE], L[ATT_TILE];
    /* dq, dk, dv are not cleared first (3 memsets of hs floats per token were ~1.3 % of a
     * small step): a query tile's first product (j0 = 0) and a key tile's first (the diagonal
     * tile, i0 = j0: query tiles run in order) store, the later ones add. Every row is stored
     * once before it is added to, and x instead of 0 + x is the same value. */
    for (size_t i0 = 0; i0 < T; i0 += ATT_TILE) {
        size_t nq = T - i0 < ATT_TILE ? T - i0 : ATT_TILE, np = (nq + ATT_LANES - 1) / ATT_LANES * ATT_LANES;
        tile_transpose(qt, q + i0 * C3, C3, nq, np, hs, scale);
        tile_transpose(dyt, dy + i0 * C, C, nq, np, hs, 1.0f);
        for (size_t r = 0; r < np; r++) {
            float dot = 0.0f;
            if (r < nq) {
                const float *a = dy + (i0 + r) * C, *c = o + (i0 + r) * C;
#pragma omp simd reduction(+ : dot)
                for (size_t d = 0; d < hs; d++) dot += a[d] * c[d];
            }
            D[r] = dot;
            L[r] = r < nq ? lse[(i0 + r) * lse_stride] : 0.0f;
        }
        for (size_t j0 = 0; j0 < i0 + nq; j0 += ATT_TILE) {
            size_t nk = i0 + nq - j0 < ATT_TILE ? i0 + nq - j0 : ATT_TILE;
            /* never a tile that stores: j0 = 0, or the diagonal one (whose queries are its keys) */
            if (j0 > 0 && tile_masked_by_branch(br, i0, nq, j0, nk)) continue;
            attention_scores_tile_t(Pt, np, k, C3, qt, hs, br, i0, nq, j0, nk);
            /* diagonal tile: causal zeros skipped (tile_product's tri); key row c from the vector
             * holding query c on, the entries before it are masked and read by no product */
            const int diag = j0 == i0;
            for (size_t c = 0; c < nk; c++) {
                float *row = Pt + c * np;
#pragma omp simd
                for (size_t r = diag ? c / ATT_LANES * ATT_LANES : 0; r < np; r++) row[r] = fdpo_k_expf(row[r] - L[r]);
            }
            /* dV += P^T dY;  dP^T = V dY^T;  dS^T = P^T (dP^T - D);  dQ += dS K s;  dK += dS^T Q s */
            tile_product(dv + j0 * C3, C3, Pt, np, 1, dy + i0 * C, C, nk, hs, nq, 1.0f, !diag, diag ? TRI_K_START : TRI_NONE);
            tile_product(dPt, np, v + j0 * C3, C3, 1, dyt, ATT_TILE, nk, np, hs, 1.0f, 0, diag ? TRI_N_START : TRI_NONE);
            for (size_t c = 0; c < nk; c++) {
                float *d = dPt + c * np;
                const float *p = Pt + c * np;
#pragma omp simd
                for (size_t r = diag ? c / ATT_LANES * ATT_LANES : 0; r < np; r++) d[r] = p[r] * (d[r] - D[r]);
            }
            tile_product(dq + i0 * C3, C3, dPt, 1, np, k + j0 * C3, C3, nq, hs, nk, scale, j0 > 0, diag ? TRI_K_END : TRI_NONE);
            tile_product(dk + j0 * C3, C3, dPt, np, 1, q + i0 * C3, C3, nk, hs, nq, scale, !diag, diag ? TRI_K_START : TRI_NONE);
        }
    }
}

/* Per sequence b (tokens [s, s+T)) and head h, the same output as fdpo_k_attention_forward:
 *   out [T, hs] (row stride C) = softmax(mask(Q K^T / sqrt(hs))) V
 * computed without the T x T map: by query blocks (fdpo_k_attention_forward_blocks), or on
 * the small path tile by tile with a running row maximum m and sum l (online softmax); only
 * lse [N, NH] (lse[t*NH + h] = m + log l, the log-sum-exp of row t's scores) is kept for
 * backward: O(T) memory per head instead of T^2. Sequential inside a (sequence, head) job,
 * so the result does not depend on the thread count. */
static void attention_forward_job(float *out, float *lse, const float *qkv, const size_t *seq_offset,
                                  const uint8_t *branch, size_t C, size_t NH, size_t job) {
    size_t hs = C / NH, C3 = 3 * C, b = job / NH, h = job % NH;
    float scale = 1.0f / sqrtf((float)hs);
    size_t s = seq_offset[b], T = seq_offset[b + 1] - s;
    const float *q = qkv + s * C3 + h * hs, *k = q + C, *v = q + 2 * C;
    float *o = out + s * C + h * hs;
    const uint8_t *br = branch ? branch + s : NULL;
    if (attention_small_path(hs))
        attention_forward_small(o, lse + s * NH + h, NH, q, k, v, br, T, C, hs, scale);
    else
        fdpo_k_attention_forward_blocks(fdpo_sgemm, o, C, lse + s * NH + h, NH, q, C3, k, v, C3, br, T, hs, scale);
}
void fdpo_k_attention_forward_streaming(float *out, float *lse, const float *qkv, const size_t *seq_offset,
                                 const uint8_t *branch, size_t B, size_t C, size_t NH) {
    long n_jobs = (long)(B * NH);
    if (fdpo_k_on_this_thread(1)) { /* a sequence slice's own thread */
        for (long job = 0; job < n_jobs; job++) attention_forward_job(out, lse, qkv, seq_offset, branch, C, NH, (size_t)job);
        return;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (long job = 0; job < n_jobs; job++) attention_forward_job(out, lse, qkv, seq_offset, branch, C, NH, (size_t)job);
}

int fdpo_attention_bf16(fdpo_precision p) {
    static int env = -1; /* FDPO_ATT_BF16=0: fp32 tile products in bf16 precision too (A/B runs) */
    if (env < 0) {
        env = fdpo_env_switch("FDPO_ATT_BF16", 1);
    }
    return p == FDPO_PRECISION_BF16 && env;
}

/* Per-thread scratch of one attention job: its query block's scores (forward), P and dP
 * (backward), and in bf16 the rounded rows of Q, K, V, dY and the rounded P and dS; grown on
 * demand and kept (a malloc per job of up to a few MB would be mapped and faulted in every
 * time). */
static _Thread_local void *att_buf;
static _Thread_local size_t att_cap;

void *fdpo_k_att_scratch(size_t bytes) {
    if (bytes > att_cap) {
        att_buf = fdpo_realloc_large(att_buf, bytes);
        att_cap = bytes;
    }
    return att_buf;
}

int fdpo_k_att_bf16_dp(void) { return !fdpo_gemm_bf16_widens(4096, 4096); }

/* dst [n] = the bf16 values of src [n] as bf16 (dp) or as fp32 (the same values exactly;
 * n here is at most a tile, under the conversion's parallel threshold: the calling thread) */
static void att_round(int dp, void *dst, const float *src, size_t n) {
    if (dp)
        fdpo_bf16_round_n(dst, src, n);
    else
        fdpo_f32_round_bf16(dst, src, n);
}

void fdpo_k_att_round_rows(int dp, void *rows, const float *x, size_t ld, size_t T, size_t hs) {
    size_t es = dp ? sizeof(uint16_t) : sizeof(float);
    for (size_t t = 0; t < T; t++) att_round(dp, (unsigned char *)rows + t * hs * es, x + t * ld, hs);
}

/* C = alpha op(A) op(B) + beta C for the attention's blocks (fdpo_att_ops): bf16 operands on
 * vdpbf16ps (round and dp: A, B uint16), else fp32 operands through ops->gemm (fp32, or the
 * bf16 values held in fp32: the same products; the route a large bf16 GEMM takes here,
 * fdpo_gemm_bf16_widens, as each block would be slower widened per call) */
static void att_mm(const fdpo_att_ops *ops, int ta, int tb, size_t M, size_t N, size_t K, float alpha, const void *A,
                   size_t lda, const void *B, size_t ldb, float beta, float *C, size_t ldc) {
    if (ops->round && ops->dp)
        fdpo_gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
        ops->gemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                  (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

/* dq, dk, dv rows [T, hs] (row stride ld) = 0: the backward accumulates into them */
static void clear_head_rows(float *dq, float *dk, float *dv, size_t ld, size_t T, size_t hs) {
    for (size_t t = 0; t < T; t++) {
        memset(dq + t * ld, 0, hs * sizeof(float));
        memset(dk + t * ld, 0, hs * sizeof(float));
        memset(dv + t * ld, 0, hs * sizeof(float));
    }
}

/* D [nq] = dY_i . out_i for rows i0 .. i0+nq (row stride ld): rowsum(P * dP) of the backward */
void fdpo_k_rows_dot(float *D, const float *dy, const float *o, size_t ld, size_t i0, size_t nq, size_t hs) {
    for (size_t r = 0; r < nq; r++) {
        const float *a = dy + (i0 + r) * ld, *c = o + (i0 + r) * ld;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (size_t d = 0; d < hs; d++) dot += a[d] * c[d];
        D[r] = dot;
    }
}

/* ---- attention by query blocks (GPT-2 and Llama, off the small path) ----
 * Per query block of ATT_TILE rows [i0, i0 + nq), all its keys [0, nk = i0 + nq) at once:
 * each product is ATT_TILE x (a run of key tiles) x hs instead of a 64^3 tile, each of which
 * cost a library call (~2 us). The runs are the key tiles the branch rule leaves
 * (tile_masked_by_branch: in the shared-prompt DPO layout the rejected rows skip the chosen
 * tiles), so no product touches a fully masked tile. The backward's work: ATT_TILE x T of P
 * and dP (and in bf16 their rounded copies), O(T) per head; in bf16 its operands Q, K, V, dY
 * are rounded once per job into rows [T, hs] (fdpo_k_att_round_rows), P and dS when made,
 * as with 64^3 tiles. One 124M layer's backward, 2 threads, tiles -> blocks: bf16 3.8-4.9
 * -> 3.4-4.5 ms at the DPO goal shape (4 x 256 tokens), 13.3 -> 10-11 ms at T = 1024; fp32
 * 5.2-6.6 -> 4.5-6.1 and 17.4-19.7 -> 16.5-17.2 ms (docs/model.md, "Query blocks"). */
#define ATT_MAX_RUNS 64 /* runs of key tiles per query block (att_key_runs) */

/* runs[r] = [j0, j1): the maximal runs of key tiles in [0, nk) not masked by the branch rule
 * for queries [i0, i0 + nq), in order; returns their count */
static size_t att_key_runs(const uint8_t *br, size_t i0, size_t nq, size_t nk, size_t runs[][2]) {
    size_t n = 0;
    for (size_t j0 = 0; j0 < nk; j0 += ATT_TILE) {
        size_t w = nk - j0 < ATT_TILE ? nk - j0 : ATT_TILE;
        if (tile_masked_by_branch(br, i0, nq, j0, w)) continue;
        if (n > 0 && runs[n - 1][1] == j0)
            runs[n - 1][1] = j0 + w;
        else if (n < ATT_MAX_RUNS) {
            runs[n][0] = j0;
            runs[n][1] = j0 + w;
            n++;
        } else /* more runs than that (T > 8000, branches alternating by tile): the last run spans
                * the masked tiles between, whose scores the element rule masks: exact, at the
                * cost of their products */
            runs[n - 1][1] = j0 + w;
    }
    return n;
}

/* S [nq, nk] (row stride nk) of query block [i0, i0 + nq): per row i, the entries of the runs
 * the causal and branch rules mask (keys j > i, or of another branch) become -inf; entries
 * outside the runs are not touched. */
static void att_block_mask(float *S, const uint8_t *br, size_t i0, size_t nq, size_t nk, size_t runs[][2],
                           size_t n_runs) {
    size_t first_branch = 0;
    while (br && first_branch < nk && br[first_branch] == 0) first_branch++; /* keys before: all shared */
    for (size_t r = 0; r < nq; r++) {
        const size_t i = i0 + r;
        float *row = S + r * nk;
        if (br && i > first_branch) { /* may_attend, branch-free */
            const uint8_t bi = br[i];
            for (size_t u = 0; u < n_runs; u++) {
                size_t c1 = runs[u][1] < i ? runs[u][1] : i;
#pragma omp simd
                for (size_t c = runs[u][0] > first_branch ? runs[u][0] : first_branch; c < c1; c++)
                    row[c] = br[c] != 0 && br[c] != bi ? -INFINITY : row[c];
            }
        }
        for (size_t c = i + 1; c < nk; c++) row[c] = -INFINITY; /* causal (always the last run's) */
    }
}

/* the bf16 copies of a block's rows over the runs: dst row r (stride nk) = bf16(src row r) */
static void att_round_runs(int dp, void *dst, const float *src, size_t nq, size_t nk, size_t runs[][2],
                           size_t n_runs) {
    size_t es = dp ? sizeof(uint16_t) : sizeof(float);
    for (size_t r = 0; r < nq; r++)
        for (size_t u = 0; u < n_runs; u++)
            att_round(dp, (unsigned char *)dst + (r * nk + runs[u][0]) * es, src + r * nk + runs[u][0],
                      runs[u][1] - runs[u][0]);
}

size_t fdpo_k_att_rows_bytes(int dp, size_t T, size_t hs) {
    return (T * hs * (dp ? sizeof(uint16_t) : sizeof(float)) + 63) / 64 * 64; /* the next buffer stays aligned */
}

size_t fdpo_k_att_block_work(int dp, size_t T) { /* P, dP in fp32; their bf16 copies */
    return 2 * ATT_TILE * T * (sizeof(float) + (dp ? sizeof(uint16_t) : sizeof(float)));
}

void fdpo_k_attention_backward_block(const fdpo_att_ops *ops, float *dq, size_t qs, float *dk, float *dv, size_t ks,
                                     const void *q, size_t qld, const void *k, const void *v, size_t kld,
                                     const void *dy, size_t yld, const float *lse, size_t lse_stride, const float *D,
                                     const uint8_t *br, size_t i0, size_t nq, size_t hs, float scale, void *work) {
    size_t es = ops->round && ops->dp ? sizeof(uint16_t) : sizeof(float), nk = i0 + nq, blk = ATT_TILE * nk;
    size_t runs[ATT_MAX_RUNS][2];
    float *P = work, *dP = P + blk;
    /* the products' copies of P and dS: bf16-rounded (the bf16 rule), or P and dS themselves */
    unsigned char *pb = ops->round ? (unsigned char *)(dP + blk) : (unsigned char *)P;
    unsigned char *ds = ops->round ? pb + blk * es : (unsigned char *)dP;
    const unsigned char *qi = (const unsigned char *)q + i0 * qld * es, *dyi = (const unsigned char *)dy + i0 * yld * es;
    const unsigned char *k8 = k, *v8 = v;
    size_t n_runs = att_key_runs(br, i0, nq, nk, runs);
    for (size_t u = 0; u < n_runs; u++) /* S = scale Q K^T */
        att_mm(ops, 0, 1, nq, runs[u][1] - runs[u][0], hs, scale, qi, qld, k8 + runs[u][0] * kld * es, kld, 0.0f,
               P + runs[u][0], nk);
    att_block_mask(P, br, i0, nq, nk, runs, n_runs);
    for (size_t r = 0; r < nq; r++) { /* P = exp(S - lse), masked entries 0 */
        float *row = P + r * nk, L = lse[(i0 + r) * lse_stride];
        for (size_t u = 0; u < n_runs; u++) {
#pragma omp simd
            for (size_t c = runs[u][0]; c < runs[u][1]; c++) row[c] = fdpo_k_expf(row[c] - L);
        }
    }
    if (ops->round) att_round_runs(ops->dp, pb, P, nq, nk, runs, n_runs);
    for (size_t u = 0; u < n_runs; u++) { /* dV += P^T dY;  dP = dY V^T */
        size_t j0 = runs[u][0], nj = runs[u][1] - j0;
        att_mm(ops, 1, 0, nj, hs, nq, 1.0f, pb + j0 * es, nk, dyi, yld, 1.0f, dv + j0 * ks, ks);
        att_mm(ops, 0, 1, nq, nj, hs, 1.0f, dyi, yld, v8 + j0 * kld * es, kld, 0.0f, dP + j0, nk);
    }
    for (size_t r = 0; r < nq; r++) /* dS = P (dP - D) */
        for (size_t u = 0; u < n_runs; u++) {
            float *dp_row = dP + r * nk;
            const float *p_row = P + r * nk;
#pragma omp simd
            for (size_t c = runs[u][0]; c < runs[u][1]; c++) dp_row[c] = p_row[c] * (dp_row[c] - D[r]);
        }
    if (ops->round) att_round_runs(ops->dp, ds, dP, nq, nk, runs, n_runs);
    for (size_t u = 0; u < n_runs; u++) { /* dQ += scale dS K;  dK += scale dS^T Q */
        size_t j0 = runs[u][0], nj = runs[u][1] - j0;
        att_mm(ops, 0, 0, nq, hs, nj, scale, ds + j0 * es, nk, k8 + j0 * kld * es, kld, 1.0f, dq + i0 * qs, qs);
        att_mm(ops, 1, 0, nj, hs, nq, scale, ds + j0 * es, nk, qi, qld, 1.0f, dk + j0 * ks, ks);
    }
}

/* ---- the bf16 backward on vdpbf16ps, register-tiled (GPT-2, even head sizes) ----
 * Why: on the dp route each query block above makes ~10 oneDNN calls of 64 x (up to T) x hs,
 * each with its own set-up and packing (~2.5 us) for a few us of work, and rounds P and dS
 * row by row. Here each product is a loop of register tiles over operands laid out for
 * vdpbf16ps once: per (sequence, head) job the bf16 pairs of Q, K, V and dY in the layouts
 * the five products read; per query block P and dS rounded straight into theirs, in the
 * passes that make them; D for all rows first; no pass clears dQ, dK, dV. The arithmetic is
 * the bf16 rule's: the same roundings of the same fp32 values, fp32 sums of vdpbf16ps pairs
 * in order of k (at the DPO goal shape the same bits as oneDNN's route), held by
 * tests/py/test_attention.py's float64 emulation like the other routes. One 124M layer at the
 * DPO goal shape (4 x [128 | 64 | 64], 12 heads of 64), 2 threads, best of 100, both routes
 * alternated 3 times: 4.18-4.23 -> 3.07-3.26 ms; at T = 1024 no change (~10-11 ms: oneDNN's
 * products are long enough there). FDPO_ATT_DP=0 takes the query blocks above (A/B runs).
 *
 * Layouts (uint32 = one bf16 pair, the even index in the low half):
 *   rows  X [t, p]  = (x [t, 2p], x [t, 2p+1])          pairs along the head (Q, dY; dS)
 *   cols  Xt [p, t] = rows transposed                    K and V as QK^T's and dY V^T's B
 *   pairs Xi [u, c] = (x [2u, c], x [2u+1, c])           pairs of rows (Q, K, dY; P, dS)
 *   the missing half of a pair at an odd end is 0 */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ATT_DP 1
#define ATT_DP_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

/* C [MR, 16 NV] (row stride ldc; the last vector's columns by mask last) = alpha * sum over
 * pairs p < np of A(r, p) . B [p, :] + beta * C (beta 0: C is not read); A(r, p) the pair at
 * A [r ars + p aps], B's pair rows ldb apart. MR <= ATT_DP_MR and NV <= 4 are constants after
 * inlining, so the MR x NV accumulators stay in registers (24, 4 vectors of B and the
 * broadcast: 29 of 32); each pair of A is one broadcast. ATT_UNROLL unrolls the loops over
 * registers before GCC decides where acc lives: without it acc stayed in memory, a load and
 * a store around every vdpbf16ps. */
#define ATT_DP_MR 6
#define ATT_UNROLL _Pragma("GCC unroll 6")
ATT_DP_TARGET static inline __attribute__((always_inline)) void
att_dp_tile(float *C, size_t ldc, const uint32_t *A, size_t ars, size_t aps, const uint32_t *B, size_t ldb,
            size_t np, float alpha, float beta, __mmask16 last, const size_t MR, const size_t NV) {
    __m512 acc[ATT_DP_MR][4];
    ATT_UNROLL for (size_t r = 0; r < MR; r++)
        ATT_UNROLL for (size_t v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
    for (size_t p = 0; p < np; p++) {
        const uint32_t *bp = B + p * ldb;
        __m512i b[4];
        ATT_UNROLL for (size_t v = 0; v < NV; v++) {
            b[v] = v + 1 < NV ? _mm512_loadu_si512(bp + 16 * v) : _mm512_maskz_loadu_epi32(last, bp + 16 * v);
            ATT_KEEP_IN_REGISTER(b[v]);
        }
        ATT_UNROLL for (size_t r = 0; r < MR; r++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)A[r * ars + p * aps]);
            ATT_UNROLL for (size_t v = 0; v < NV; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, (__m512bh)b[v]);
        }
    }
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    ATT_UNROLL for (size_t r = 0; r < MR; r++)
        ATT_UNROLL for (size_t v = 0; v < NV; v++) {
            __mmask16 m = v + 1 < NV ? (__mmask16)0xffff : last;
            float *c = C + r * ldc + 16 * v;
            __m512 x = _mm512_mul_ps(va, acc[r][v]);
            if (beta != 0.0f) x = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, c), x);
            _mm512_mask_storeu_ps(c, m, x);
        }
}

/* one function per shape (MR rows, NV vectors) */
#define ATT_DP_DEF(MR, NV)                                                                           \
    ATT_DP_TARGET static void att_dp_tile_##MR##_##NV(float *C, size_t ldc, const uint32_t *A, size_t ars, \
                                                      size_t aps, const uint32_t *B, size_t ldb, size_t np, \
                                                      float alpha, float beta, __mmask16 last) {        \
        att_dp_tile(C, ldc, A, ars, aps, B, ldb, np, alpha, beta, last, MR, NV);                      \
    }
ATT_DP_DEF(6, 4) ATT_DP_DEF(6, 3) ATT_DP_DEF(6, 2) ATT_DP_DEF(6, 1)
ATT_DP_DEF(5, 4) ATT_DP_DEF(5, 3) ATT_DP_DEF(5, 2) ATT_DP_DEF(5, 1)
ATT_DP_DEF(4, 4) ATT_DP_DEF(4, 3) ATT_DP_DEF(4, 2) ATT_DP_DEF(4, 1)
ATT_DP_DEF(3, 4) ATT_DP_DEF(3, 3) ATT_DP_DEF(3, 2) ATT_DP_DEF(3, 1)
ATT_DP_DEF(2, 4) ATT_DP_DEF(2, 3) ATT_DP_DEF(2, 2) ATT_DP_DEF(2, 1)
ATT_DP_DEF(1, 4) ATT_DP_DEF(1, 3) ATT_DP_DEF(1, 2) ATT_DP_DEF(1, 1)
typedef void att_dp_tile_fn(float *, size_t, const uint32_t *, size_t, size_t, const uint32_t *, size_t, size_t, float,
                            float, __mmask16);
static att_dp_tile_fn *const att_dp_tiles[ATT_DP_MR][4] = {
    {att_dp_tile_1_1, att_dp_tile_1_2, att_dp_tile_1_3, att_dp_tile_1_4},
    {att_dp_tile_2_1, att_dp_tile_2_2, att_dp_tile_2_3, att_dp_tile_2_4},
    {att_dp_tile_3_1, att_dp_tile_3_2, att_dp_tile_3_3, att_dp_tile_3_4},
    {att_dp_tile_4_1, att_dp_tile_4_2, att_dp_tile_4_3, att_dp_tile_4_4},
    {att_dp_tile_5_1, att_dp_tile_5_2, att_dp_tile_5_3, att_dp_tile_5_4},
    {att_dp_tile_6_1, att_dp_tile_6_2, att_dp_tile_6_3, att_dp_tile_6_4},
};

/* C [M, N] = alpha * A B + beta * C over np pairs (att_dp_tile's operands), in tiles of
 * ATT_DP_MR rows x 64 columns */
ATT_DP_TARGET static void att_dp_gemm(size_t M, size_t N, size_t np, float alpha, const uint32_t *A, size_t ars,
                                      size_t aps, const uint32_t *B, size_t ldb, float beta, float *C, size_t ldc) {
    for (size_t n0 = 0; n0 < N; n0 += 64) {
        size_t w = N - n0 < 64 ? N - n0 : 64, nv = (w + 15) / 16, tail = w - 16 * (nv - 1);
        __mmask16 last = (__mmask16)(tail == 16 ? 0xffff : (1u << tail) - 1);
        for (size_t m0 = 0; m0 < M; m0 += ATT_DP_MR) {
            size_t mr = M - m0 < ATT_DP_MR ? M - m0 : ATT_DP_MR;
            att_dp_tiles[mr - 1][nv - 1](C + m0 * ldc + n0, ldc, A + m0 * ars, ars, aps, B + n0, ldb, np, alpha, beta,
                                         last);
        }
    }
}

/* rows [j0, j1) of dK or dV (row stride ldc) += A B over np pairs (A's row j0 at A, rows
 * ars apart), where rows from i0 on are first reached in query block i0 (its diagonal tile,
 * which no rule masks): those are stored, not added, so no pass clears dK and dV */
ATT_DP_TARGET static void att_dp_key_rows(size_t j0, size_t j1, size_t i0, size_t N, size_t np, float alpha,
                                          const uint32_t *A, size_t ars, size_t aps, const uint32_t *B, size_t ldb,
                                          float *C, size_t ldc) {
    size_t jd = j1 > i0 ? (j0 > i0 ? j0 : i0) : j1;
    if (jd > j0) att_dp_gemm(jd - j0, N, np, alpha, A, ars, aps, B, ldb, 1.0f, C + j0 * ldc, ldc);
    if (j1 > jd) att_dp_gemm(j1 - jd, N, np, alpha, A + (jd - j0) * ars, ars, aps, B, ldb, 0.0f, C + jd * ldc, ldc);
}

/* rows 2u, 2u+1 of x (row stride ld; hi NULL past the end: 0) in both layouts: pairs
 * xi [c] = (x0 [c], x1 [c]), and (rows not NULL) the rows' own bf16 r0, r1 */
static void att_dp_pack_two(uint32_t *xi, uint16_t *r0, uint16_t *r1, const float *x0, const float *x1, size_t n) {
    if (x1) {
#pragma omp simd
        for (size_t c = 0; c < n; c++) {
            uint32_t lo = (uint32_t)fdpo_bf16_round(x0[c]), hi = (uint32_t)fdpo_bf16_round(x1[c]);
            xi[c] = lo | hi << 16;
            if (r0) {
                r0[c] = (uint16_t)lo;
                r1[c] = (uint16_t)hi;
            }
        }
    } else {
#pragma omp simd
        for (size_t c = 0; c < n; c++) {
            uint32_t lo = (uint32_t)fdpo_bf16_round(x0[c]);
            xi[c] = lo;
            if (r0) r0[c] = (uint16_t)lo;
        }
    }
}

/* rows this far ahead are fetched while the current ones are packed: a job's rows are 3C
 * floats apart and cold (the layer's forward wrote them long ago) */
#define ATT_DP_AHEAD 8
static inline void att_dp_prefetch_row(const float *row, size_t n) {
    for (size_t c = 0; c < n; c += 16) __builtin_prefetch(row + c);
}

/* one job's operand x [T, hs] (row stride ld): pairs of rows xi [Tu, hs] and, with xr, the
 * rows [T, hs] (uint16) */
static void att_dp_pack(uint32_t *xi, uint16_t *xr, const float *x, size_t ld, size_t T, size_t hs) {
    for (size_t u = 0; 2 * u < T; u++) {
        int two = 2 * u + 1 < T;
        for (size_t t = 2 * u + ATT_DP_AHEAD; t < 2 * u + ATT_DP_AHEAD + 2 && t < T; t++)
            att_dp_prefetch_row(x + t * ld, hs);
        att_dp_pack_two(xi + u * hs, xr ? xr + 2 * u * hs : NULL, xr && two ? xr + (2 * u + 1) * hs : NULL,
                        x + 2 * u * ld, two ? x + (2 * u + 1) * ld : NULL, hs);
    }
}

/* xt [p, t] (row stride ldt) = x [t, p] for p < n (x's row stride ld; 32-bit elements), 16
 * rows' element p by one gather */
ATT_DP_TARGET static void att_transpose32(uint32_t *xt, size_t ldt, const uint32_t *x, size_t ld, size_t T, size_t n) {
    const __m512i lanes = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32((int)ld));
    for (size_t t0 = 0; t0 < T; t0 += 16) {
        __mmask16 m = (__mmask16)(T - t0 >= 16 ? 0xffff : (1u << (T - t0)) - 1);
        for (size_t p = 0; p < n; p++) {
            const int *base = (const int *)(x + t0 * ld + p);
            __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, lanes, base, 4);
            _mm512_mask_storeu_epi32(xt + p * ldt + t0, m, g);
        }
    }
}

/* Kt's and Vt's row stride: T plus a line, so that a tile's pair rows (read down a column
 * block) do not all fall in the same L1 sets when T * 4 bytes is a multiple of 4 KB */
static size_t att_dp_ldt(size_t T) { return T + 16; }

/* bytes of one job's scratch: the operand layouts and one query block's S/P, dP and pairs */
static size_t att_dp_scratch_bytes(size_t T, size_t hs) {
    size_t Tu = (T + 1) / 2; /* in 4-byte words: */
    size_t job = att_dp_ldt(T) * hs + 3 * Tu * hs + T * hs + T * hs / 2 + T; /* Kt Vt; Ki Qi dYi; Qr dYr; stage; D */
    size_t block = 2 * ATT_TILE * T + 2 * (ATT_TILE / 2) * T + ATT_TILE * Tu;  /* P dP; Pi dSi; dSr */
    return (job + block) * sizeof(uint32_t);
}

/* One GPT-2 (sequence, head) of the bf16 streaming backward on the dp route, by query
 * blocks as fdpo_k_attention_backward_block (the same runs, masks, softmax recompute, D and
 * roundings); dq, dk, dv rows [T, hs] (row stride 3C) are written, each row by its first
 * product (att_dp_key_rows; dQ's rows by their block's first run). */
ATT_DP_TARGET static void attention_backward_head_dp(float *dq, float *dk, float *dv, const float *dy, const float *o,
                                                     const float *q, const float *k, const float *v, const float *lse,
                                                     size_t lse_stride, const uint8_t *br, size_t T, size_t C,
                                                     size_t hs, float scale) {
    const size_t C3 = 3 * C, hp = hs / 2, Tu = (T + 1) / 2;
    uint32_t *Kt = fdpo_k_att_scratch(att_dp_scratch_bytes(T, hs));
    const size_t ldt = att_dp_ldt(T); /* Kt, Vt row stride */
    uint32_t *Vt = Kt + ldt * hp, *Ki = Vt + ldt * hp, *Qi = Ki + Tu * hs, *dYi = Qi + Tu * hs;
    uint16_t *Qr = (uint16_t *)(dYi + Tu * hs), *dYr = Qr + T * hs, *stage = dYr + T * hs;
    float *P = (float *)(stage + T * hs), *dP = P + ATT_TILE * T;
    uint32_t *Pi = (uint32_t *)(dP + ATT_TILE * T), *dSi = Pi + ATT_TILE / 2 * T, *dSr = dSi + ATT_TILE / 2 * T;
    float *Dall = (float *)(dSr + ATT_TILE * Tu);
    att_dp_pack(Qi, Qr, q, C3, T, hs);
    att_dp_pack(dYi, dYr, dy, C, T, hs);
    att_dp_pack(Ki, stage, k, C3, T, hs);
    att_transpose32(Kt, ldt, (const uint32_t *)(const void *)stage, hp, T, hp);
    for (size_t t = 0; t < T; t++) { /* V's rows, only to be transposed */
        if (t + ATT_DP_AHEAD < T) att_dp_prefetch_row(v + (t + ATT_DP_AHEAD) * C3, hs);
        fdpo_bf16_round_n(stage + t * hs, v + t * C3, hs);
    }
    att_transpose32(Vt, ldt, (const uint32_t *)(const void *)stage, hp, T, hp);
    const uint32_t *Qr32 = (const uint32_t *)(const void *)Qr, *dYr32 = (const uint32_t *)(const void *)dYr;
    for (size_t t = 0; t < T && t < ATT_DP_AHEAD; t++) att_dp_prefetch_row(o + t * C, hs);
    for (size_t t = 0; t < T; t += ATT_DP_AHEAD) { /* D = dY . out, every row (fdpo_k_rows_dot's sums) */
        for (size_t a = t + ATT_DP_AHEAD; a < t + 2 * ATT_DP_AHEAD && a < T; a++) att_dp_prefetch_row(o + a * C, hs);
        fdpo_k_rows_dot(Dall + t, dy, o, C, t, T - t < ATT_DP_AHEAD ? T - t : ATT_DP_AHEAD, hs);
    }
    size_t runs[ATT_MAX_RUNS][2];
    for (size_t i0 = 0; i0 < T; i0 += ATT_TILE) {
        const size_t nq = T - i0 < ATT_TILE ? T - i0 : ATT_TILE, nk = i0 + nq, nqu = (nq + 1) / 2, nku = (nk + 1) / 2;
        const size_t n_runs = att_key_runs(br, i0, nq, nk, runs);
        const float *D = Dall + i0;
        for (size_t u = 0; u < n_runs; u++) /* S = scale Q K^T */
            att_dp_gemm(nq, runs[u][1] - runs[u][0], hp, scale, Qr32 + i0 * hp, hp, 1, Kt + runs[u][0], ldt, 0.0f,
                        P + runs[u][0], nk);
        att_block_mask(P, br, i0, nq, nk, runs, n_runs);
        for (size_t w = 0; w < nqu; w++) { /* P = exp(S - lse) (masked entries 0) and its pairs of query rows */
            float *p0 = P + 2 * w * nk, *p1 = p0 + nk, L0 = lse[(i0 + 2 * w) * lse_stride];
            int two = 2 * w + 1 < nq;
            float L1 = two ? lse[(i0 + 2 * w + 1) * lse_stride] : 0.0f;
            uint32_t *pi = Pi + w * nk;
            for (size_t u = 0; u < n_runs; u++) {
                if (two) {
#pragma omp simd
                    for (size_t c = runs[u][0]; c < runs[u][1]; c++) {
                        float e0 = fdpo_k_expf(p0[c] - L0), e1 = fdpo_k_expf(p1[c] - L1);
                        p0[c] = e0;
                        p1[c] = e1;
                        pi[c] = (uint32_t)fdpo_bf16_round(e0) | (uint32_t)fdpo_bf16_round(e1) << 16;
                    }
                } else {
#pragma omp simd
                    for (size_t c = runs[u][0]; c < runs[u][1]; c++) {
                        float e0 = fdpo_k_expf(p0[c] - L0);
                        p0[c] = e0;
                        pi[c] = (uint32_t)fdpo_bf16_round(e0);
                    }
                }
            }
        }
        for (size_t u = 0; u < n_runs; u++) { /* dV += P^T dY;  dP = dY V^T */
            size_t j0 = runs[u][0], j1 = runs[u][1];
            att_dp_key_rows(j0, j1, i0, hs, nqu, 1.0f, Pi + j0, 1, nk, dYi + i0 / 2 * hs, hs, dv, C3);
            att_dp_gemm(nq, j1 - j0, hp, 1.0f, dYr32 + i0 * hp, hp, 1, Vt + j0, ldt, 0.0f, dP + j0, nk);
        }
        for (size_t w = 0; w < nqu; w++) { /* dS = P (dP - D), rounded: pairs along keys and of query rows */
            const float *p0 = P + 2 * w * nk, *p1 = p0 + nk, *d0 = dP + 2 * w * nk, *d1 = d0 + nk;
            uint16_t *s0 = (uint16_t *)(dSr + 2 * w * nku), *s1 = s0 + 2 * nku;
            uint32_t *si = dSi + w * nk;
            const float D0 = D[2 * w];
            int two = 2 * w + 1 < nq;
            const float D1 = two ? D[2 * w + 1] : 0.0f;
            for (size_t u = 0; u < n_runs; u++) {
                if (two) {
#pragma omp simd
                    for (size_t c = runs[u][0]; c < runs[u][1]; c++) {
                        uint32_t lo = (uint32_t)fdpo_bf16_round(p0[c] * (d0[c] - D0)), hi = (uint32_t)fdpo_bf16_round(p1[c] * (d1[c] - D1));
                        s0[c] = (uint16_t)lo;
                        s1[c] = (uint16_t)hi;
                        si[c] = lo | hi << 16;
                    }
                } else {
#pragma omp simd
                    for (size_t c = runs[u][0]; c < runs[u][1]; c++) {
                        uint32_t lo = (uint32_t)fdpo_bf16_round(p0[c] * (d0[c] - D0));
                        s0[c] = (uint16_t)lo;
                        si[c] = lo;
                    }
                }
            }
            if (nk % 2) { /* an odd last key: its pair along keys ends in 0 */
                s0[nk] = 0;
                if (two) s1[nk] = 0;
            }
        }
        for (size_t u = 0; u < n_runs; u++) { /* dQ += scale dS K;  dK += scale dS^T Q */
            size_t j0 = runs[u][0], j1 = runs[u][1];
            att_dp_gemm(nq, hs, (j1 - j0 + 1) / 2, scale, dSr + j0 / 2, nku, 1, Ki + j0 / 2 * hs, hs, u ? 1.0f : 0.0f,
                        dq + i0 * C3, C3);
            att_dp_key_rows(j0, j1, i0, hs, nqu, scale, dSi + j0, 1, nk, Qi + i0 / 2 * hs, hs, dk, C3);
        }
    }
}

/* FDPO_ATT_DP=0: the dp route's products through oneDNN by query blocks instead (A/B runs) */
static int att_dp_enabled(void) {
    static int env = -1;
    if (env < 0) {
        env = fdpo_env_switch("FDPO_ATT_DP", 1);
    }
    return env;
}
#endif

/* One (sequence, head) of the streaming forward, shared by GPT-2 and Llama's grouped-query
 * attention (which differ in row strides and GEMM):
 *   o [T, hs] (row stride os) = softmax(mask(scale Q K^T)) V,  q row stride qs, k and v ks;
 *   lse[t * lse_stride] = m + log l, the log-sum-exp of row t's scores.
 * By query blocks, as the backward above: per block of ATT_TILE rows, S = scale Q K^T
 * against all its keys (one product per run of key tiles the branch rule leaves), the row
 * softmax in place, out = P V: products of 64 x (up to T) x hs instead of two per 64^3 tile
 * with an online rescale between them. Scratch: ATT_TILE x T floats per thread, O(T). One
 * 124M layer, 2 threads (wave 15): 2.5-3.1 -> 1.9-2.4 ms at the DPO goal shape, 9.8-11.4 ->
 * 5.8-7.0 ms at T = 1024, against the small path's tiles (docs/model.md, "Query blocks"). */
void fdpo_k_attention_forward_blocks(fdpo_sgemm_fn *gemm, float *o, size_t os, float *lse, size_t lse_stride,
                                     const float *q, size_t qs, const float *k, const float *v, size_t ks,
                                     const uint8_t *br, size_t T, size_t hs, float scale) {
    float *S = fdpo_k_att_scratch(ATT_TILE * T * sizeof(float));
    size_t runs[ATT_MAX_RUNS][2];
    for (size_t i0 = 0; i0 < T; i0 += ATT_TILE) {
        size_t nq = T - i0 < ATT_TILE ? T - i0 : ATT_TILE, nk = i0 + nq;
        size_t n_runs = att_key_runs(br, i0, nq, nk, runs);
        for (size_t u = 0; u < n_runs; u++)
            gemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)(runs[u][1] - runs[u][0]), (int)hs, scale,
                 q + i0 * qs, (int)qs, k + runs[u][0] * ks, (int)ks, 0.0f, S + runs[u][0], (int)nk);
        att_block_mask(S, br, i0, nq, nk, runs, n_runs);
        for (size_t r = 0; r < nq; r++) {
            float *row = S + r * nk, mx = -INFINITY, sum = 0.0f;
            for (size_t u = 0; u < n_runs; u++) {
#pragma omp simd reduction(max : mx)
                for (size_t c = runs[u][0]; c < runs[u][1]; c++) mx = row[c] > mx ? row[c] : mx;
            }
            for (size_t u = 0; u < n_runs; u++) { /* j = i is always allowed: mx is finite */
#pragma omp simd reduction(+ : sum)
                for (size_t c = runs[u][0]; c < runs[u][1]; c++) {
                    row[c] = fdpo_k_expf(row[c] - mx);
                    sum += row[c];
                }
            }
            const float inv = 1.0f / sum;
            for (size_t u = 0; u < n_runs; u++) {
#pragma omp simd
                for (size_t c = runs[u][0]; c < runs[u][1]; c++) row[c] *= inv;
            }
            lse[(i0 + r) * lse_stride] = mx + logf(sum);
        }
        for (size_t u = 0; u < n_runs; u++)
            gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)hs, (int)(runs[u][1] - runs[u][0]), 1.0f,
                 S + runs[u][0], (int)nk, v + runs[u][0] * ks, (int)ks, u ? 1.0f : 0.0f, o + i0 * os, (int)os);
    }
}

/* The streaming backward of one GPT-2 (sequence, head) by query blocks (row stride 3C for
 * q, k, v, dq, dk, dv; C for dy, o). bf16: Q, K, V, dY rounded once into rows [T, hs] that
 * the blocks read instead (dp: as uint16). */
static void attention_backward_head(float *dq, float *dk, float *dv, const float *dy, const float *o, const float *q,
                                    const float *k, const float *v, const float *lse, size_t lse_stride,
                                    const uint8_t *br, size_t T, size_t C, size_t hs, float scale, int bf16, int dp) {
#ifdef ATT_DP
    if (bf16 && dp && hs % 2 == 0 && att_dp_enabled()) {
        attention_backward_head_dp(dq, dk, dv, dy, o, q, k, v, lse, lse_stride, br, T, C, hs, scale);
        return;
    }
#endif
    size_t C3 = 3 * C, rows = bf16 ? fdpo_k_att_rows_bytes(dp, T, hs) : 0;
    unsigned char *qb = fdpo_k_att_scratch(4 * rows + fdpo_k_att_block_work(dp, T));
    unsigned char *kb = qb + rows, *vb = kb + rows, *dyb = vb + rows, *work = dyb + rows;
    const fdpo_att_ops ops = {.round = bf16, .dp = dp, .gemm = fdpo_sgemm};
    const void *qo = q, *ko = k, *vo = v, *dyo = dy;
    size_t qkv_ld = C3, dy_ld = C;
    if (bf16) {
        fdpo_k_att_round_rows(dp, qb, q, C3, T, hs);
        fdpo_k_att_round_rows(dp, kb, k, C3, T, hs);
        fdpo_k_att_round_rows(dp, vb, v, C3, T, hs);
        fdpo_k_att_round_rows(dp, dyb, dy, C, T, hs);
        qo = qb, ko = kb, vo = vb, dyo = dyb, qkv_ld = hs, dy_ld = hs;
    }
    float D[ATT_TILE];
    clear_head_rows(dq, dk, dv, C3, T, hs);
    for (size_t i0 = 0; i0 < T; i0 += ATT_TILE) {
        size_t nq = T - i0 < ATT_TILE ? T - i0 : ATT_TILE;
        fdpo_k_rows_dot(D, dy, o, C, i0, nq, hs);
        fdpo_k_attention_backward_block(&ops, dq, C3, dk, dv, C3, qo, qkv_ld, ko, vo, qkv_ld, dyo, dy_ld, lse, lse_stride,
                                        D, br, i0, nq, hs, scale, work);
    }
}

/* Backward of fdpo_k_attention_forward_streaming; WRITES dqkv [N,3C]. Recomputes P from Q, K
 * and lse: by query blocks (fdpo_k_attention_backward_block), or on the small path tile by
 * tile. out is the forward's output (the
 * attention output before c_proj). */
static void attention_backward_job(float *dqkv, const float *dout, const float *qkv, const float *out,
                                   const float *lse, const size_t *seq_offset, const uint8_t *branch, size_t C,
                                   size_t NH, int bf16, int dp, size_t job) {
    size_t hs = C / NH, C3 = 3 * C, b = job / NH, h = job % NH;
    float scale = 1.0f / sqrtf((float)hs);
    size_t s = seq_offset[b], T = seq_offset[b + 1] - s;
    const float *q = qkv + s * C3 + h * hs, *k = q + C, *v = q + 2 * C;
    float *dq = dqkv + s * C3 + h * hs, *dk = dq + C, *dv = dq + 2 * C;
    const float *dy = dout + s * C + h * hs, *o = out + s * C + h * hs;
    const uint8_t *br = branch ? branch + s : NULL;
    if (attention_small_path(hs) && !bf16)
        attention_backward_small(dq, dk, dv, dy, o, q, k, v, lse + s * NH + h, NH, br, T, C, hs, scale);
    else
        attention_backward_head(dq, dk, dv, dy, o, q, k, v, lse + s * NH + h, NH, br, T, C, hs, scale, bf16, dp);
}
void fdpo_k_attention_backward_streaming(float *dqkv, const float *dout, const float *qkv, const float *out,
                                  const float *lse, const size_t *seq_offset, const uint8_t *branch,
                                  size_t B, size_t C, size_t NH, int bf16) {
    long n_jobs = (long)(B * NH);
    const int dp = bf16 && fdpo_k_att_bf16_dp();
    if (fdpo_k_on_this_thread(1)) { /* a sequence slice's own thread */
        for (long job = 0; job < n_jobs; job++)
            attention_backward_job(dqkv, dout, qkv, out, lse, seq_offset, branch, C, NH, bf16, dp, (size_t)job);
        return;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (long job = 0; job < n_jobs; job++)
        attention_backward_job(dqkv, dout, qkv, out, lse, seq_offset, branch, C, NH, bf16, dp, (size_t)job);
}

/* ---- LM head + log-softmax + gather fused over vocabulary chunks (no [K, V] logits) ----
 * For training losses only the target's log-prob of each row is used, so the [K, V] logits
 * need never exist at once: the vocabulary is swept `chunk` columns at a time, memory
 * O(K x chunk). wte_bf16.h or .f set selects bf16 GEMMs (bf16-rounded inputs, fp32
 * accumulation) exactly as fdpo_k_lmhead_*_bf16 do (.f: the fp32 route on that copy). Callable by any family whose head is
 * a [V, C] matrix (GPT-2's tied wte, Llama's lm_head or embed_tokens). */

/* S [K, nv] = inp [K, C] @ wte[v0 : v0+nv]^T, in fp32 or from the bf16 copies; bf16 on the
 * fp32 route: xr = inp rounded to bf16 in fp32, wf = the chunk of wte in fp32 ([nv, C]) */
static void lmhead_chunk_logits(float *S, const float *inp, const uint16_t *inp_bf16, const float *wte,
                                const uint16_t *wte_bf16, const float *xr, const float *wf, size_t K, size_t C,
                                size_t v0, size_t nv) {
    if (xr)
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)K, (int)nv, (int)C, 1.0f, xr, (int)C, wf, (int)C,
                   0.0f, S, (int)nv);
    else if (wte_bf16)
        fdpo_gemm_bf16(0, 1, K, nv, C, 1.0f, inp_bf16, C, wte_bf16 + v0 * C, C, 0.0f, S, nv);
    else
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)K, (int)nv, (int)C, 1.0f, inp, (int)C,
                    wte + v0 * C, (int)C, 0.0f, S, (int)nv);
}

/* bf16 head on the fp32 route (the caller's fp32 copy, or fdpo_gemm_bf16_widens for the
 * chunk GEMM [K, chunk]): inp rounded once for every chunk into operand slot 0 (returned),
 * else NULL */
static const float *lmhead_rounded_inp(const float *inp, fdpo_bf16_weight wte_bf16, size_t K, size_t C, size_t chunk) {
    if (!wte_bf16.f && (!wte_bf16.h || !fdpo_gemm_bf16_widens(K, chunk))) return NULL;
    float *xr = fdpo_bf16_operand_scratch(0, K * C);
    fdpo_f32_round_bf16(xr, inp, K * C);
    return xr;
}

/* the chunk [v0, v0+nv) of the bf16 head in fp32: in the fp32 copy, or widened into operand
 * slot 1 */
static const float *lmhead_widened_chunk(fdpo_bf16_weight wte_bf16, size_t C, size_t v0, size_t nv) {
    if (wte_bf16.f) return wte_bf16.f + v0 * C;
    float *wf = fdpo_bf16_operand_scratch(1, nv * C);
    fdpo_bf16_widen(wf, wte_bf16.h + v0 * C, nv * C);
    return wf;
}

/* lse [K] = log sum_v exp(logits[k, v]);  token_logp [K] (may be NULL) = logits[k, target] - lse,
 * 0 where target < 0;  logit_sum [K] (may be NULL) = sum_v logits[k, v].
 * Online log-sum-exp across chunks: with the running max m and sum s (double),
 *   m' = max(m, max of the chunk),  s' = s exp(m - m') + sum_chunk exp(x - m').
 * scratch: K*chunk floats, or K*V with keep_logits: chunk [v0, v0+nv) is then left at
 * scratch + v0*K as [K, nv] for the backward (logits_ready there: one GEMM of K x V x C fewer
 * per step, for K*V floats of memory); scratch_bf16 (bf16 only): K*C; acc: 3K doubles. Each row is
 * updated by one thread in chunk order, so results depend only on the thread count. */
void fdpo_k_lmhead_logsoftmax_forward_chunked(float *lse, float *token_logp, float *logit_sum, const float *inp,
                                              const float *wte, fdpo_bf16_weight wte_bf16, const int32_t *targets,
                                              size_t K, size_t C, size_t V, size_t chunk, float *scratch,
                                              uint16_t *scratch_bf16, double *acc, int keep_logits) {
    double *m = acc, *s = acc + K, *sum = acc + 2 * K;
    for (size_t k = 0; k < K; k++) { m[k] = -INFINITY; s[k] = 0.0; sum[k] = 0.0; }
    const float *xr = lmhead_rounded_inp(inp, wte_bf16, K, C, chunk);
    if (wte_bf16.h && !xr) fdpo_f32_to_bf16(scratch_bf16, inp, K * C);
    for (size_t v0 = 0; v0 < V; v0 += chunk) {
        size_t nv = V - v0 < chunk ? V - v0 : chunk;
        float *S = keep_logits ? scratch + v0 * K : scratch; /* kept: chunk after chunk, for the backward */
        lmhead_chunk_logits(S, inp, scratch_bf16, wte, wte_bf16.h, xr, xr ? lmhead_widened_chunk(wte_bf16, C, v0, nv) : NULL,
                            K, C, v0, nv);
#pragma omp parallel for schedule(static) if (K * nv >= FDPO_PAR_MIN)
        for (size_t k = 0; k < K; k++) {
            const float *row = S + k * nv;
            float mx = -INFINITY;
            double rs = 0.0;
#pragma omp simd reduction(max : mx) reduction(+ : rs)
            for (size_t v = 0; v < nv; v++) { mx = row[v] > mx ? row[v] : mx; rs += row[v]; }
            double m_new = mx > m[k] ? mx : m[k], e = 0.0;
            float fm = (float)m_new;
#pragma omp simd reduction(+ : e)
            for (size_t v = 0; v < nv; v++) e += fdpo_k_expf(row[v] - fm);
            s[k] = s[k] * exp(m[k] - m_new) + e; /* exp(-inf) = 0 on the first chunk */
            m[k] = m_new;
            sum[k] += rs;
            int32_t tg = targets[k];
            if (token_logp && tg >= 0 && (size_t)tg >= v0 && (size_t)tg < v0 + nv) token_logp[k] = row[tg - v0];
        }
    }
    for (size_t k = 0; k < K; k++) {
        double l = m[k] + log(s[k]);
        lse[k] = (float)l;
        if (token_logp) token_logp[k] = targets[k] >= 0 ? (float)((double)token_logp[k] - l) : 0.0f;
        if (logit_sum) logit_sum[k] = (float)sum[k];
    }
}

/* Backward of the above for upstream d_token_logp [K]; recomputes each chunk's logits:
 *   dlogits[k, v] = d_k (onehot(target_k) - exp(logits[k, v] - lse_k))   (0 where target < 0)
 *   dinp [K, C] = sum over chunks dlogits_c @ wte_c   (WRITTEN)
 *   dwte [V, C] += dlogits^T @ inp                     (chunk by chunk, ACCUMULATED; NULL: frozen)
 * scratch: K*chunk floats; scratch_bf16 (bf16 only): K*(C + chunk). logits_ready: scratch holds
 * the forward's logits of these K rows (keep_logits there, or one chunk: V <= chunk), chunk
 * [v0, v0+nv) at scratch + v0*K: not recomputed, d logits overwrite them. */
void fdpo_k_lmhead_logsoftmax_backward_chunked(float *dinp, float *dwte, const float *d_token_logp, const float *lse,
                                               const int32_t *targets, const float *inp, const float *wte,
                                               fdpo_bf16_weight wte_bf16, size_t K, size_t C, size_t V, size_t chunk,
                                               float *scratch, uint16_t *scratch_bf16, int logits_ready) {
    uint16_t *inp_bf16 = scratch_bf16, *dS_bf16 = scratch_bf16 ? scratch_bf16 + K * C : NULL;
    if (K == 0) return;
    /* bf16 on the fp32 route: inp rounded once, each chunk of the head in fp32 (the copy's,
     * or widened once for its recompute and two GEMMs), d logits rounded in place; then the
     * fp32 code below */
    const float *xr = lmhead_rounded_inp(inp, wte_bf16, K, C, chunk);
    if (wte_bf16.h && !xr) fdpo_f32_to_bf16(inp_bf16, inp, K * C);
    for (size_t v0 = 0; v0 < V; v0 += chunk) {
        size_t nv = V - v0 < chunk ? V - v0 : chunk;
        float beta = v0 == 0 ? 0.0f : 1.0f;
        float *S = logits_ready ? scratch + v0 * K : scratch; /* the forward's chunk, or recomputed */
        const float *wf = xr ? lmhead_widened_chunk(wte_bf16, C, v0, nv) : NULL;
        if (!logits_ready) lmhead_chunk_logits(S, inp, inp_bf16, wte, wte_bf16.h, xr, wf, K, C, v0, nv);
        /* bf16 GEMMs: each row of d logits rounded to bf16 while it is in cache (not in a
         * pass of its own over the chunk) */
        uint16_t *dS_rows = wte_bf16.h && !xr ? dS_bf16 : NULL;
#pragma omp parallel for schedule(static) if (K * nv >= FDPO_PAR_MIN)
        for (size_t k = 0; k < K; k++) {
            float *row = S + k * nv;
            float d = targets[k] >= 0 ? d_token_logp[k] : 0.0f, l = lse[k];
            if (d == 0.0f) {
                memset(row, 0, nv * sizeof(float));
                if (dS_rows) memset(dS_rows + k * nv, 0, nv * sizeof(uint16_t));
                continue;
            }
#pragma omp simd
            for (size_t v = 0; v < nv; v++) row[v] = -d * fdpo_k_expf(row[v] - l);
            int32_t tg = targets[k];
            if ((size_t)tg >= v0 && (size_t)tg < v0 + nv) row[tg - v0] += d;
            if (dS_rows) fdpo_bf16_round_n(dS_rows + k * nv, row, nv);
        }
        const float *X = xr ? xr : inp, *W = xr ? wf : wte + v0 * C; /* fp32 operands */
        if (xr) fdpo_f32_round_bf16(S, S, K * nv);
        if (wte_bf16.h && !xr) {
            fdpo_gemm_bf16(0, 0, K, C, nv, 1.0f, dS_bf16, nv, wte_bf16.h + v0 * C, C, beta, dinp, C);
            if (dwte) fdpo_gemm_bf16(1, 0, nv, C, K, 1.0f, dS_bf16, nv, inp_bf16, C, 1.0f, dwte + v0 * C, C);
        } else if (dwte && gemm_pair(2 * K * C * nv)) { /* as in fdpo_k_matmul_backward */
#pragma omp parallel sections num_threads(2)
            {
#pragma omp section
                fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)K, (int)C, (int)nv, 1.0f, S, (int)nv,
                           W, (int)C, beta, dinp, (int)C);
#pragma omp section
                fdpo_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nv, (int)C, (int)K, 1.0f, S, (int)nv,
                           X, (int)C, 1.0f, dwte + v0 * C, (int)C);
            }
        } else {
            fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)K, (int)C, (int)nv, 1.0f, S, (int)nv,
                        W, (int)C, beta, dinp, (int)C);
            if (dwte) /* NULL: frozen (LoRA) */
                fdpo_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nv, (int)C, (int)K, 1.0f, S, (int)nv, X,
                           (int)C, 1.0f, dwte + v0 * C, (int)C);
        }
    }
}
