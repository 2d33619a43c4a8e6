/* Llama-family layer kernels, forward and backward, over a packed batch of N tokens (same
 * packing, positions and branch masks as GPT-2: fdpo/gpt2.h). Linear weights are in
 * nn.Linear layout [out, in]. Backward functions ACCUMULATE into parameter gradients;
 * reductions over tokens run in a fixed order, so results depend only on the thread count. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>
#include "model/gpt2_internal.h"
#include "model/llama_internal.h"

#define COL_BLOCK 64

/* out [N,C] = embed[tokens] */
void fdpo_llama_embed_forward(float *out, const int32_t *tokens, const float *embed, size_t N, size_t C) {
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < N; t++) memcpy(out + t * C, embed + (size_t)tokens[t] * C, C * sizeof(float));
}

/* dembed [V,C] += scatter of dout [N,C]; parallel over channels (no races, token order) */
void fdpo_llama_embed_backward(float *dembed, const float *dout, const int32_t *tokens, size_t N, size_t C) {
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < C; c++)
        for (size_t t = 0; t < N; t++) dembed[(size_t)tokens[t] * C + c] += dout[t * C + c];
}

/* out [N,C] = inp * rstd * w,  rstd [N] = 1 / sqrt(mean(inp^2) + eps)  (LlamaRMSNorm) */
void fdpo_llama_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, size_t N, size_t C, float eps) {
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < N; t++) {
        const float *x = inp + t * C;
        double ss = 0.0;
        for (size_t c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / (double)C + eps));
        float *o = out + t * C;
        for (size_t c = 0; c < C; c++) o[c] = x[c] * r * w[c];
        rstd[t] = r;
    }
}

/* dinp [N,C] += r (w dy) - x r^3 mean(w dy x);  dw [C] += sum_t dy x r */
void fdpo_llama_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                      const float *rstd, size_t N, size_t C) {
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < N; t++) {
        const float *dy = dout + t * C, *x = inp + t * C;
        float r = rstd[t];
        double dot = 0.0;
        for (size_t c = 0; c < C; c++) dot += (double)w[c] * dy[c] * x[c];
        float k = (float)(dot / (double)C) * r * r * r;
        float *dx = dinp + t * C;
        for (size_t c = 0; c < C; c++) dx[c] += r * w[c] * dy[c] - x[c] * k;
    }
    if (!dw) return; /* frozen weights (LoRA) */
    long n_blocks = (long)((C + COL_BLOCK - 1) / COL_BLOCK);
#pragma omp parallel for schedule(static)
    for (long blk = 0; blk < n_blocks; blk++) {
        size_t c0 = (size_t)blk * COL_BLOCK, wd = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
        float s[COL_BLOCK] = {0};
        for (size_t t = 0; t < N; t++) {
            const float *x = inp + t * C + c0, *dy = dout + t * C + c0;
            float r = rstd[t];
            for (size_t j = 0; j < wd; j++) s[j] += dy[j] * x[j] * r;
        }
        for (size_t j = 0; j < wd; j++) dw[c0 + j] += s[j];
    }
}

/* out [N,OC] = inp [N,IC] @ w^T + bias,  w [OC,IC] (bias may be NULL) */
/* fp32 GEMMs through fdpo_sgemm (oneDNN), as GPT-2's: docs/model.md says why */
void fdpo_llama_linear_forward(float *out, const float *inp, const float *w, const float *bias, size_t N, size_t IC, size_t OC) {
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for schedule(static)
        for (size_t t = 0; t < N; t++) memcpy(out + t * OC, bias, OC * sizeof(float));
        beta = 1.0f;
    }
    fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)IC,
                1.0f, inp, (int)IC, w, (int)IC, beta, out, (int)OC);
}

/* dinp [N,IC] (+)= dout @ w;  dw [OC,IC] += dout^T @ inp;  dbias [OC] += sum_t dout
 * (dinp, dw, dbias NULL: not wanted) */
void fdpo_llama_linear_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w,
                     size_t N, size_t IC, size_t OC, int accumulate_dinp) {
    if (dinp)
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)IC, (int)OC,
                    1.0f, dout, (int)OC, w, (int)IC, accumulate_dinp ? 1.0f : 0.0f, dinp, (int)IC);
    if (dw) /* NULL: frozen weight (LoRA) */
        fdpo_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)IC, (int)N,
                    1.0f, dout, (int)OC, inp, (int)IC, 1.0f, dw, (int)IC);
    if (dbias) fdpo_k_column_sums_add(dbias, dout, N, OC);
}

/* bf16 (the rule of fdpo/gpt2.h): out [N,OC] = bf16(inp [N,IC]) @ w16^T + bias, w16 [OC,IC]
 * the bf16 copy of the weight, fp32 accumulation and output; scratch holds N*IC. w16.f: the
 * fp32 route on that fp32 copy (inp rounded in fp32, one sgemm); only w16.h: fdpo_gemm_bf16. */
void fdpo_llama_linear_forward_bf16(float *out, const float *inp, fdpo_bf16_weight w16, const float *bias, size_t N,
                                    size_t IC, size_t OC, uint16_t *scratch) {
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for schedule(static)
        for (size_t t = 0; t < N; t++) memcpy(out + t * OC, bias, OC * sizeof(float));
        beta = 1.0f;
    }
    if (w16.f) {
        float *xr = fdpo_bf16_operand_scratch(0, N * IC);
        fdpo_f32_round_bf16(xr, inp, N * IC);
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)IC, 1.0f, xr, (int)IC, w16.f,
                   (int)IC, beta, out, (int)OC);
        return;
    }
    fdpo_f32_to_bf16(scratch, inp, N * IC);
    fdpo_gemm_bf16(0, 1, N, OC, IC, 1.0f, scratch, IC, w16.h, IC, beta, out, OC);
}

/* bf16: dinp [N,IC] (+)= bf16(dout) @ w16;  dw [OC,IC] += bf16(dout)^T @ bf16(inp);
 * dbias [OC] += sum_t dout (fp32); NULL outputs are not wanted. scratch_dout holds N*OC,
 * scratch_inp N*IC. w16.f: dinp on the fp32 route on it (dout rounded once in fp32, also for
 * dw's GEMM where that widens). */
void fdpo_llama_linear_backward_bf16(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                                     fdpo_bf16_weight w16, size_t N, size_t IC, size_t OC,
                                     int accumulate_dinp, uint16_t *scratch_dout, uint16_t *scratch_inp) {
    if (w16.f) {
        float *dr = fdpo_bf16_operand_scratch(0, N * OC);
        fdpo_f32_round_bf16(dr, dout, N * OC);
        if (dinp)
            fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)IC, (int)OC, 1.0f, dr, (int)OC, w16.f,
                       (int)IC, accumulate_dinp ? 1.0f : 0.0f, dinp, (int)IC);
        if (dw && fdpo_gemm_bf16_widens(OC, IC)) {
            float *xr = fdpo_bf16_operand_scratch(1, N * IC);
            fdpo_f32_round_bf16(xr, inp, N * IC);
            fdpo_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)IC, (int)N, 1.0f, dr, (int)OC, xr,
                       (int)IC, 1.0f, dw, (int)IC);
            dw = NULL; /* done */
        }
        if (dw) fdpo_f32_to_bf16(scratch_dout, dout, N * OC);
    } else {
        fdpo_f32_to_bf16(scratch_dout, dout, N * OC);
        if (dinp)
            fdpo_gemm_bf16(0, 0, N, IC, OC, 1.0f, scratch_dout, OC, w16.h, IC, accumulate_dinp ? 1.0f : 0.0f, dinp, IC);
    }
    if (dw) { /* NULL: a frozen weight (LoRA), no gradient */
        fdpo_f32_to_bf16(scratch_inp, inp, N * IC);
        fdpo_gemm_bf16(1, 0, OC, IC, N, 1.0f, scratch_dout, OC, scratch_inp, IC, 1.0f, dw, IC);
    }
    if (dbias) fdpo_k_column_sums_add(dbias, dout, N, OC);
}

/* cos/sin [N, half] of pos[t] * inv_freq[i], angles in double */
void fdpo_llama_rope_tables(float *cos_t, float *sin_t, const int32_t *pos, const double *inv_freq, size_t N, size_t half) {
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < N; t++)
        for (size_t i = 0; i < half; i++) {
            double a = (double)pos[t] * inv_freq[i];
            cos_t[t * half + i] = (float)cos(a);
            sin_t[t * half + i] = (float)sin(a);
        }
}

/* In place on x [N, n_heads*hd], the rotation by angle sign * theta (Hugging Face's
 * rotate-half convention): with h = hd/2 and s_i = sign * sin_i,
 *   x'[i]   = x[i] cos_i - x[i+h] s_i,   x'[i+h] = x[i+h] cos_i + x[i] s_i
 * sign -1 is the transpose (backward); multiplying by -1 is exact, so it rounds as the
 * rotation written out with + and - does. */
static void rope_rotate(float *x, const float *cos_t, const float *sin_t, float sign, size_t N, size_t n_heads,
                        size_t hd) {
    size_t h = hd / 2;
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < N; t++)
        for (size_t head = 0; head < n_heads; head++) {
            float *r = x + (t * n_heads + head) * hd;
            const float *c = cos_t + t * h, *s = sin_t + t * h;
            for (size_t i = 0; i < h; i++) {
                float a = r[i], b = r[i + h], si = sign * s[i];
                r[i] = a * c[i] - b * si;
                r[i + h] = b * c[i] + a * si;
            }
        }
}

void fdpo_llama_rope_forward(float *x, const float *cos_t, const float *sin_t, size_t N, size_t n_heads, size_t hd) {
    rope_rotate(x, cos_t, sin_t, 1.0f, N, n_heads, hd);
}

/* In place: the transpose of the rotation above */
void fdpo_llama_rope_backward(float *dx, const float *cos_t, const float *sin_t, size_t N, size_t n_heads, size_t hd) {
    rope_rotate(dx, cos_t, sin_t, -1.0f, N, n_heads, hd);
}

/* Per sequence b (tokens [s, s+T)) and query head h with key/value head g = h / (NH/NKV):
 *   out [T, hd] (row stride NH*hd) = softmax(mask(Q_h K_g^T / sqrt(hd))) V_g
 * q [N, NH*hd], k, v [N, NKV*hd]. By query blocks (fdpo_k_attention_forward_blocks), so only
 * lse [N, NH] (lse[t*NH + h] = m + log l) is kept for backward: O(T) memory per head instead
 * of T^2. Sequential inside a (sequence, head) job, so the result does not depend on
 * the thread count. */
void fdpo_llama_gqa_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                      const size_t *seq_offset, const uint8_t *branch, size_t B, size_t NH, size_t NKV,
                                      size_t hd) {
    size_t QD = NH * hd, KD = NKV * hd, group = NH / NKV;
    float scale = 1.0f / sqrtf((float)hd);
    long n_jobs = (long)(B * NH);
#pragma omp parallel for schedule(dynamic, 1)
    for (long job = 0; job < n_jobs; job++) {
        size_t b = (size_t)job / NH, h = (size_t)job % NH, g = h / group;
        size_t s = seq_offset[b], T = seq_offset[b + 1] - s;
        const float *qh = q + s * QD + h * hd, *kg = k + s * KD + g * hd, *vg = v + s * KD + g * hd;
        fdpo_k_attention_forward_blocks(fdpo_sgemm, out + s * QD + h * hd, QD, lse + s * NH + h, NH, qh, QD, kg,
                                        vg, KD, branch ? branch + s : NULL, T, hd, scale);
    }
}

/* Backward of fdpo_llama_gqa_attention_forward; WRITES dq, dk, dv (every element of every
 * sequence). Recomputes P from Q, K and lse by query blocks (fdpo_k_attention_backward_block).
 * Jobs are (sequence, kv head) so the heads sharing K_g, V_g add into dK_g, dV_g in head
 * order without races. out is the forward's output. */
void fdpo_llama_gqa_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                       const float *v, const float *out, const float *lse, const size_t *seq_offset,
                                       const uint8_t *branch, size_t B, size_t NH, size_t NKV, size_t hd, int bf16) {
    size_t QD = NH * hd, KD = NKV * hd, group = NH / NKV;
    float scale = 1.0f / sqrtf((float)hd);
    long n_jobs = (long)(B * NKV);
    const int dp = bf16 && fdpo_k_att_bf16_dp();
#pragma omp parallel for schedule(dynamic, 1)
    for (long job = 0; job < n_jobs; job++) {
        size_t b = (size_t)job / NKV, g = (size_t)job % NKV;
        size_t s = seq_offset[b], T = seq_offset[b + 1] - s;
        const float *kg = k + s * KD + g * hd, *vg = v + s * KD + g * hd;
        float *dkg = dk + s * KD + g * hd, *dvg = dv + s * KD + g * hd;
        const uint8_t *br = branch ? branch + s : NULL;
        float D[ATT_TILE];
        /* bf16 (fdpo_attention_bf16): the group's K and V rounded once, each head's Q and dY;
         * fp32: the rows as they are */
        const fdpo_att_ops ops = {.round = bf16, .dp = dp, .gemm = fdpo_sgemm};
        size_t rows = bf16 ? fdpo_k_att_rows_bytes(dp, T, hd) : 0;
        unsigned char *kb = fdpo_k_att_scratch(4 * rows + fdpo_k_att_block_work(dp, T));
        unsigned char *vb = kb + rows, *qb = vb + rows, *dyb = qb + rows, *work = dyb + rows;
        if (bf16) {
            fdpo_k_att_round_rows(dp, kb, kg, KD, T, hd);
            fdpo_k_att_round_rows(dp, vb, vg, KD, T, hd);
        }
        for (size_t t = 0; t < T; t++) {
            memset(dkg + t * KD, 0, hd * sizeof(float));
            memset(dvg + t * KD, 0, hd * sizeof(float));
        }
        for (size_t hi = 0; hi < group; hi++) {
            size_t h = g * group + hi;
            const float *qh = q + s * QD + h * hd, *dy = dout + s * QD + h * hd, *o = out + s * QD + h * hd;
            float *dqh = dq + s * QD + h * hd;
            for (size_t t = 0; t < T; t++) memset(dqh + t * QD, 0, hd * sizeof(float));
            if (bf16) {
                fdpo_k_att_round_rows(dp, qb, qh, QD, T, hd);
                fdpo_k_att_round_rows(dp, dyb, dy, QD, T, hd);
            }
            const void *qo = bf16 ? (const void *)qb : qh, *dyo = bf16 ? (const void *)dyb : dy;
            const void *ko = bf16 ? (const void *)kb : kg, *vo = bf16 ? (const void *)vb : vg;
            const size_t q_ld = bf16 ? hd : QD, kv_ld = bf16 ? hd : KD;
            for (size_t i0 = 0; i0 < T; i0 += ATT_TILE) {
                size_t nq = T - i0 < ATT_TILE ? T - i0 : ATT_TILE;
                fdpo_k_rows_dot(D, dy, o, QD, i0, nq, hd);
                fdpo_k_attention_backward_block(&ops, dqh, QD, dkg, dvg, KD, qo, q_ld, ko, vo, kv_ld, dyo, q_ld,
                                                lse + s * NH + h, NH, D, br, i0, nq, hd, scale, work);
            }
        }
    }
}

/* h = silu(gate) * up,  silu(x) = x sigmoid(x) = x / (1 + exp(-x)) */
void fdpo_llama_swiglu_forward(float *h, const float *gate, const float *up, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) h[i] = gate[i] / (1.0f + fdpo_k_expf(-gate[i])) * up[i];
}

/* dgate = dh up silu'(gate),  silu'(x) = s (1 + x (1 - s));  dup = dh silu(gate) */
void fdpo_llama_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) { /* dup may be dh (in place): dh is read first */
        float g = gate[i], s = 1.0f / (1.0f + fdpo_k_expf(-g)), d = dh[i];
        dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s));
        dup[i] = d * g * s;
    }
}
