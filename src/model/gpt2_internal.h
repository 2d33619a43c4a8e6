/* Private to src/model: the activation buffers of one forward/backward and the kernels.
 * Other subsystems read m->params only (KV-cache decoding reuses the kernels below). */
#ifndef FDPO_GPT2_INTERNAL_H
#define FDPO_GPT2_INTERNAL_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#include "fdpo/gpt2.h"

/* Activations of the last forward, carved from one allocation (acts->memory).
 * N = tokens in the packed batch. Attention keeps only the per-row log-sum-exp (O(N NH)),
 * not the T x T maps: backward recomputes them tile by tile. */
#define FDPO_MAX_SLICES 16 /* threads a batch is split over, at most */
struct fdpo_gpt2_acts {
    /* capacities the buffers were sized for */
    size_t cap_tokens, cap_seq, cap_maxT;
    float *memory;
    /* forward */
    float *encoded;   /* [N, C] */
    float *ln1;       /* [L, N, C] */
    float *ln1_mean;  /* [L, N] */
    float *ln1_rstd;  /* [L, N] */
    float *qkv;       /* [L, N, 3C] */
    float *atty;      /* [L, N, C] attention output before c_proj */
    float *att_lse;   /* [L, N, NH] log-sum-exp of each attention row's scores */
    float *residual2; /* [L, N, C] after the attention block */
    float *ln2;       /* [L, N, C] */
    float *ln2_mean;  /* [L, N] */
    float *ln2_rstd;  /* [L, N] */
    float *fch;       /* [L, N, 4C] c_fc output (pre-GELU); the GELU pass replaces it with gelu' of it */
    float *fch_gelu;  /* [L, N, 4C] */
    float *residual3; /* [L, N, C] after the MLP block */
    float *lnf;       /* [N, C] */
    float *lnf_mean;  /* [N] */
    float *lnf_rstd;  /* [N] */
    float *logits;    /* [N, V]; backward overwrites it with d logits. Its own allocation
                       * (logits_cap rows), made only when a forward materialises logits */
    size_t logits_cap;
    float *lse;       /* [N] log-sum-exp of each logits row */
    float *logit_sum; /* [N] sum over V of each row's logits (fused head: the only trace of them) */
    int fused_head;   /* the last forward ran the chunked head: no logits */
    size_t head_chunk; /* its vocabulary columns per chunk (fdpo_lmhead_chunk, <= V) */
    int head_keep;     /* the fused head keeps all K x V logits for the backward (head_keeps_logits) */
    /* The last fused forward ran the last block after its attention (c_proj, ln_2, MLP,
     * ln_f) on the head's rows only (a->rows[], the only ones whose output is
     * read): their rows sit packed at the front of each slice's rows of residual2, ln2, fch,
     * fch_gelu, residual3 and lnf (row t0 + j = packed row k0 + j); the backward takes the
     * same rows. gpt2.c, "The last block on the head's rows". */
    int head_rows_only;
    /* chunked head scratch (grown on demand): logits of one chunk, bf16 operands, row state */
    float *head_scratch;  size_t head_scratch_cap;  /* floats */
    size_t head_logits_rows; /* the last fused forward's vocabulary fit in one chunk: head_scratch still
                              * holds the [K, V] logits of its K packed rows (backward reuses them);
                              * SIZE_MAX: it does not */
    uint16_t *head_bf16;  size_t head_bf16_cap;     /* bf16 elements (also unfused bf16 d logits) */
    double *head_acc;     size_t head_acc_cap;      /* doubles */
    /* backward scratch */
    float *d_residual; /* [N, C] gradient flowing down the residual stream */
    float *d_ln;       /* [N, C] gradient w.r.t. a LayerNorm output */
    float *d_qkv;      /* [N, 3C] */
    float *d_atty;     /* [N, C] */
    float *d_fch;      /* [N, 4C] (gradient w.r.t. fch_gelu, then fch, in place) */
    /* the batch of the last forward (copied: the caller's arrays may go away) */
    size_t n_seq, n_tokens, max_T;
    size_t *seq_offset;  /* [B+1] */
    int32_t *tokens, *targets, *pos;
    float *weights;      /* resolved: weight where target >= 0, else 0 */
    uint8_t *branch;     /* valid when has_branch (the buffer outlives batches without) */
    int has_branch;
    int skip_unweighted; /* the batch's flag: logits only for weighted tokens */
    fdpo_precision precision; /* of the last forward */
    /* backward of the LM head over the K rows with a gradient only */
    size_t *rows;        /* [N] packed row -> token */
    int32_t *ctargets;   /* [N] targets, d_token_logp and lse of the packed rows */
    float *cd, *clse;
    /* bf16 precision: matmul inputs rounded to bf16 (sized for the capacities above) */
    uint16_t *bf16_x;    /* [cap_tokens * 4C] first operand (activations) */
    uint16_t *bf16_y;    /* [cap_tokens * 4C] second operand of the weight-gradient GEMM */
    size_t bf16_cap;     /* tokens the two buffers hold */
    int has_forward;
    /* sliced batches (gpt2.c: one thread per group of whole sequences) */
    size_t slice_bounds[FDPO_MAX_SLICES + 1]; /* sequence index where each slice starts */
    float *slice_grads; size_t slice_grads_cap; /* gradients of threads 1.. ([n_params] each), kept zero */
};

/* Elements (floats touched per pass) below which an elementwise or row kernel runs on one
 * thread: a fork/join costs microseconds on an idle machine and much more on a shared one,
 * more than splitting ~10 us of work saves (DPO micro-batches of a few hundred tokens).
 * Only the thread count changes, never the arithmetic of an element, so results are the same. */
#define FDPO_PAR_MIN 65536

/* STMT over [0, n), naming its range lo_ .. hi_: split statically over the OpenMP team when
 * par, or run once over all of [0, n) on this thread when !par or when the caller is
 * already inside a parallel region. A small model's step runs every sequence slice on a
 * thread of its own (gpt2.c, slice_plan), and there even an inactive nested region costs
 * libgomp a team of one and two futex calls (~2.7 us on this VM against a plain loop's
 * 0.35, wave 21): about 50 of them per thread and step when every kernel opened one. STMT
 * calls a function (no pragmas inside a macro argument); each range computes the elements
 * it would in one loop, so the results do not depend on the split. fdpo_k_on_this_thread is
 * the rule, for kernels whose split is not one range (the LayerNorm backward, the attention). */
static inline int fdpo_k_on_this_thread(int par) { return !par || omp_in_parallel(); }
#define FDPO_SPLIT(n, par, STMT)                                                                 \
    do {                                                                                        \
        const size_t n_ = (n);                                                                  \
        if (fdpo_k_on_this_thread(par)) {                                                       \
            const size_t lo_ = 0, hi_ = n_;                                                     \
            STMT;                                                                               \
        } else {                                                                                \
            _Pragma("omp parallel")                                                             \
            {                                                                                   \
                const size_t nt_ = (size_t)omp_get_num_threads(), it_ = (size_t)omp_get_thread_num(); \
                const size_t lo_ = n_ * it_ / nt_, hi_ = n_ * (it_ + 1) / nt_;                  \
                STMT;                                                                           \
            }                                                                                   \
        }                                                                                       \
    } while (0)

/* ---- kernels (src/model/gpt2_kernels.c); one per layer and direction ---- */
void fdpo_k_column_sums_add(float *acc, const float *x, size_t N, size_t OC);
void fdpo_k_encoder_forward(float *out, const int32_t *tokens, const int32_t *pos, const float *wte,
                     const float *wpe, size_t N, size_t C);
void fdpo_k_encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                      const int32_t *pos, size_t N, size_t C);
/* 0 when FDPO_HEAD_ROWS_ONLY=0: the last block runs on every row (gpt2.c) */
int fdpo_model_head_rows_only_setting(void);
/* packed rows (the LM head's, the last block's): gather them to the front, scatter them back */
void fdpo_k_gather_rows(float *dst, const float *src, const size_t *rows, size_t K, size_t W);
void fdpo_k_scatter_rows(float *x, size_t t0, size_t n, const size_t *rows, size_t K, size_t W);
void fdpo_k_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, size_t N, size_t C, float eps);
void fdpo_k_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, size_t N, size_t C);
void fdpo_k_matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                    size_t N, size_t IC, size_t OC);
void fdpo_k_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                     const float *w, size_t N, size_t IC, size_t OC, int accumulate_dinp);
/* the materialised attention (T x T maps; att of (b, h) at att_offset[b] + h*T*T): kept as
 * the reference the streaming kernels are tested against (harness attention-check) */
void fdpo_k_attention_forward(float *out, float *att, const float *qkv, const size_t *seq_offset,
                       const size_t *att_offset, const uint8_t *branch, size_t B, size_t C, size_t NH);
void fdpo_k_attention_backward(float *dqkv, float *datt_scratch, size_t scratch_stride, const float *dout,
                        const float *qkv, const float *att, const size_t *seq_offset,
                        const size_t *att_offset, size_t B, size_t C, size_t NH);
/* the same attention with O(T) storage: lse [N, NH] instead of the T x T maps */
void fdpo_k_attention_forward_streaming(float *out, float *lse, const float *qkv, const size_t *seq_offset,
                                 const uint8_t *branch, size_t B, size_t C, size_t NH);
/* bf16 = 1: the backward's products take bf16-rounded operands (Q, K, V, dY, P, dS) with fp32
 * accumulation, as the linear layers' GEMMs in bf16 precision; the softmax, D and every
 * sum stay fp32. The callers pass fdpo_attention_bf16(precision). */
void fdpo_k_attention_backward_streaming(float *dqkv, const float *dout, const float *qkv, const float *out,
                                  const float *lse, const size_t *seq_offset, const uint8_t *branch,
                                  size_t B, size_t C, size_t NH, int bf16);
/* 1 if a model in this precision multiplies the attention backward's tiles on bf16 operands:
 * bf16 precision, unless FDPO_ATT_BF16=0 (A/B runs). The rule is the same on every CPU; the
 * products run on vdpbf16ps where a large bf16 GEMM does (fdpo_gemm_bf16_widens), else as
 * fp32 FMA on the bf16 values. */
int fdpo_attention_bf16(fdpo_precision p);
/* The streaming attention backward's parts, for GPT-2 and Llama alike (gpt2_kernels.c):
 * dp = 1 if bf16 products run on vdpbf16ps here (the route of a large bf16 GEMM), their
 * operands then uint16, else bf16 values held in fp32 multiplied with fp32 FMA; a per-thread
 * scratch; rows [T, hs] (contiguous) = the bf16 values of x's T rows of hs (row stride ld);
 * and one query block [i0, i0+nq) (nq <= ATT_TILE) against all its keys [0, i0+nq), adding
 * into dq (row stride qs), dk and dv (ks), with D = dY . out of its rows (fdpo_k_rows_dot).
 * ops: round = 1 for the bf16 rule (q, k, v, dy are then rounded rows, uint16 if dp; P and
 * dS are rounded when made), 0 for fp32 (q, k, v, dy the fp32 rows); gemm multiplies fp32
 * operands. q, k, v, dy row strides qld, kld, yld in elements. Buffers: fdpo_k_att_rows_bytes
 * for each rows copy (rounded up to 64 bytes, so the next one stays aligned), work
 * fdpo_k_att_block_work(dp, T), T >= i0 + nq. */
int fdpo_k_att_bf16_dp(void);
void *fdpo_k_att_scratch(size_t bytes);
void fdpo_k_att_round_rows(int dp, void *rows, const float *x, size_t ld, size_t T, size_t hs);
/* D [nq] = dY_i . out_i for rows i0 .. i0+nq (row stride ld): rowsum(P * dP) of the
 * attention backward (both families) */
void fdpo_k_rows_dot(float *D, const float *dy, const float *o, size_t ld, size_t i0, size_t nq, size_t hs);
size_t fdpo_k_att_rows_bytes(int dp, size_t T, size_t hs);
size_t fdpo_k_att_block_work(int dp, size_t T);
typedef void fdpo_sgemm_fn(int order, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                           int lda, const float *B, int ldb, float beta, float *C, int ldc);
typedef struct {
    int round, dp;
    fdpo_sgemm_fn *gemm;
} fdpo_att_ops;
void fdpo_k_attention_backward_block(const fdpo_att_ops *ops, float *dq, size_t qs, float *dk, float *dv, size_t ks,
                                     const void *q, size_t qld, const void *k, const void *v, size_t kld,
                                     const void *dy, size_t yld, const float *lse, size_t lse_stride, const float *D,
                                     const uint8_t *br, size_t i0, size_t nq, size_t hs, float scale, void *work);
/* one (sequence, head) of the streaming forward, for GPT-2 and Llama alike: row strides as
 * arguments, and the GEMM (fdpo_sgemm's signature) the products are multiplied with */
#define ATT_TILE 64 /* query rows per block, key columns per tile */
void fdpo_k_attention_forward_blocks(fdpo_sgemm_fn *gemm, float *o, size_t os, float *lse, size_t lse_stride,
                                     const float *q, size_t qs, const float *k, const float *v, size_t ks,
                                     const uint8_t *br, size_t T, size_t hs, float scale);
void fdpo_k_residual_layernorm_forward(float *res, float *out, float *mean, float *rstd, const float *bias,
                                const float *residual, const float *w, const float *b, size_t N, size_t C,
                                float eps);
void fdpo_k_bias_gelu_forward(float *out, float *fch, const float *bias, size_t N, size_t OC);
void fdpo_k_gelu_backward_bias(float *d, float *dbias, const float *dgelu, size_t N, size_t OC);
void fdpo_k_residual_forward(float *out, const float *a, const float *b, size_t n);
void fdpo_k_lmhead_forward(float *logits, const float *inp, const float *wte, size_t N, size_t C, size_t V);
void fdpo_k_logsoftmax_forward(float *lse, float *token_logp, const float *logits, const int32_t *targets,
                        size_t N, size_t V);
void fdpo_k_logsoftmax_backward(float *dlogits, const float *lse, const int32_t *targets,
                         const float *d_token_logp, size_t N, size_t V);
void fdpo_k_lmhead_backward(float *dinp, float *dwte, const float *dlogits, const float *inp,
                     const float *wte, size_t N, size_t C, size_t V);

/* fp32 GEMM with cblas_sgemm's arguments (CblasRowMajor, CblasNoTrans/CblasTrans as ints),
 * run by oneDNN (FDPO_SGEMM=openblas: OpenBLAS); src/model/gemm_bf16.c */
void fdpo_sgemm(int order, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc);
/* The same without the 48-row blocks of CPUs without AVX-512 (docs/model.md#row-invariance):
 * the KV-cache decoders' per-step products of a few rows (GPT-2's LM head up to 64 rows,
 * Llama's linear layers), where a block of 48 rows for one sequence made fp32 sampling 4-5x
 * slower on an AVX2 EPYC (a review's find). Their rows' last bits may follow the batch there,
 * as they did before the blocks; the prefill's products keep the blocks (sacpo's online
 * stage equals a plain online run bit for bit only with them). */
void fdpo_sgemm_any_rows(int order, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                         int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* ---- bf16 (src/model/gemm_bf16.c and the *_bf16 kernels in gpt2_kernels.c) ---- */
/* One value to bf16: round to nearest even; NaN stays NaN (quiet). The rule of every bf16
 * conversion (fdpo_f32_to_bf16, the decoder's packed weights). */
static inline uint16_t fdpo_bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded); /* a select: `omp simd` loops vectorise it */
}
void fdpo_f32_to_bf16(uint16_t *dst, const float *src, size_t n);
void fdpo_bf16_round_n(uint16_t *dst, const float *src, size_t n); /* the same, on the calling thread */
/* A bf16 weight as the bf16 kernels read it: h, its bf16 values; f, the same values in fp32
 * (exact), the operand of the fp32 route (fdpo_gemm_bf16_widens). A kernel given f takes the
 * fp32 route on it; given only h, it routes as fdpo_gemm_bf16 does (widening h itself on the
 * fp32 route). Both NULL: only for an empty product. */
typedef struct { const uint16_t *h; const float *f; } fdpo_bf16_weight;
/* Each forward in bf16 calls this first, with its token rows: the model's bf16 weight copies
 * are out of date (so every writer of params, load, copy, merge, is covered without a
 * hook), except a params_frozen model's once made and a bf16 copy the optimizer wrote with
 * its update (fdpo_model_params_updated); and whether this forward's fp32-route GEMMs read
 * an fp32 copy or widen the bf16 one (src/model/gpt2.c). */
void fdpo_model_bf16_refresh(fdpo_gpt2 *m);
/* The bf16 copy of weight w (a tensor in params_memory) for a bf16 GEMM whose result is
 * [M, N]: the fp32 copy (.f) where fdpo_gemm_bf16_widens(M, N) and the forward reads one,
 * else the bf16 one (.h), each made from the masters at its first use after the refresh
 * (serial callers only). */
fdpo_bf16_weight fdpo_model_bf16_weight(fdpo_gpt2 *m, const float *w, size_t M, size_t N);
void fdpo_gemm_bf16(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha,
                    const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, float beta, float *C, size_t ldc);
/* The fp32 route of the bf16 kernels, for callers that prepare its operands themselves (once
 * for two GEMMs): 1 if fdpo_gemm_bf16 multiplies an [M, N] result's operands widened to fp32;
 * the operands: activations rounded to bf16 in fp32 in one pass, bf16 weights widened (exact);
 * per-thread buffers for them (slot 0 or 1; contents not kept across calls). */
int fdpo_gemm_bf16_widens(size_t M, size_t N);
void fdpo_f32_round_bf16(float *dst, const float *src, size_t n);
void fdpo_bf16_widen(float *dst, const uint16_t *x, size_t n);
float *fdpo_bf16_operand_scratch(int slot, size_t n);
/* the route of every later bf16 GEMM: 1 vdpbf16ps, 0 fp32 FMA on the widened operands, -1 by
 * shape and CPU (the default; FDPO_BF16_GEMM sets it from the environment). For measurements. */
void fdpo_gemm_bf16_force_route(int route);
/* 1 if vdpbf16ps runs at >= 0.75x the fp32 FMA's FLOP rate here (probed once, said once;
 * call only where fdpo_bf16_native()): the bf16 GEMMs' and the decoder's choice */
int fdpo_bf16_dpbf16_is_fast(void);
void fdpo_k_matmul_forward_bf16(float *out, const float *inp, fdpo_bf16_weight w, const float *bias,
                         size_t N, size_t IC, size_t OC, uint16_t *scratch);
void fdpo_k_matmul_backward_bf16(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                          fdpo_bf16_weight w, size_t N, size_t IC, size_t OC, uint16_t *scratch_dout,
                          uint16_t *scratch_inp);
void fdpo_k_lmhead_forward_bf16(float *logits, const float *inp, fdpo_bf16_weight wte, size_t N, size_t C, size_t V,
                         uint16_t *scratch);
void fdpo_k_lmhead_backward_bf16(float *dinp, float *dwte, const float *dlogits, const float *inp,
                          fdpo_bf16_weight wte, size_t N, size_t C, size_t V, uint16_t *scratch_dlogits,
                          uint16_t *scratch_inp);

/* LM head + log-softmax + gather over vocabulary chunks, never holding [K, V] logits (the
 * training path: only target log-probs are used) unless keep_logits. head [V, C];
 * head_bf16.h or .f set = bf16 GEMMs (the weight for a [K, chunk] result; .f: the fp32 route
 * on it). Scratch: K*chunk floats (K*V with keep_logits), bf16 K*C
 * (forward) / K*(C+chunk) (backward), 3K doubles. keep_logits (forward) leaves chunk
 * [v0, v0+nv) of the logits at scratch + v0*K; logits_ready (backward): scratch still holds
 * the forward's logits of the same K rows that way (kept, or V <= chunk), so the backward
 * skips recomputing them (one GEMM of K x V x C fewer). */
void fdpo_k_lmhead_logsoftmax_forward_chunked(float *lse, float *token_logp, float *logit_sum, const float *inp,
                                              const float *head, fdpo_bf16_weight head_bf16, const int32_t *targets,
                                              size_t K, size_t C, size_t V, size_t chunk, float *scratch,
                                              uint16_t *scratch_bf16, double *acc, int keep_logits);
void fdpo_k_lmhead_logsoftmax_backward_chunked(float *dinp, float *dhead, const float *d_token_logp, const float *lse,
                                               const int32_t *targets, const float *inp, const float *head,
                                               fdpo_bf16_weight head_bf16, size_t K, size_t C, size_t V, size_t chunk,
                                               float *scratch, uint16_t *scratch_bf16, int logits_ready);
#define FDPO_LMHEAD_CHUNK 2048 /* vocabulary columns per chunk (FDPO_LMHEAD_CHUNK=n overrides, for tests) */
/* A trained GPT-2's fused head keeps its K x V logits for the backward when they take at most
 * this many bytes, unless the batch gives its own budget (fdpo_batch.head_keep_max_bytes; the
 * RL step's is 256 MiB) (FDPO_LMHEAD_KEEP_MAX_BYTES=n overrides; 0 = always recompute): 103 MB
 * for the 512 completion rows of the 124M DPO goal step (a 40 GFLOP recompute saved). 1024
 * rows (206 MB: the T = 1024 peak-RSS step, the B4 T256 train step) recompute: kept, they
 * put the bf16 DPO step at T = 1024 at 62 % of PyTorch's peak RSS, over #13's 60 % (idle,
 * wave 6), so long sequences spend FLOPs, not memory. */
#define FDPO_LMHEAD_KEEP_MAX_BYTES ((size_t)128 << 20)
/* p with room for n elements of elem bytes (*cap counts elements); contents are not kept */
void *fdpo_model_grow(void *p, size_t *cap, size_t n, size_t elem);
size_t fdpo_lmhead_chunk(size_t V); /* FDPO_LMHEAD_CHUNK or the environment's, at most V (gpt2.c) */


/* exp(x) in fp32, inline so that `#pragma omp simd` loops vectorise it together with the
 * work around it (GELU, softmax, log-softmax, SiLU); the one exp of fdpo's kernels, GPT-2's
 * and Llama's. Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6
 * polynomial for exp(r) in fmaf steps, then p * 2^n built in the exponent bits. Within
 * 1 ulp of exp on [-86.9, 88.72] (every float checked); x = n ln2 + r with n <= -126
 * (x < -86.99, also -inf) gives exactly 0 (the true value is below 1.7e-38: a flush to
 * zero, never a subnormal); above log(FLT_MAX) the product overflows to +inf by itself; NaN
 * stays NaN. Only two range guards and no selects on the result: x is clamped below so n
 * stays >= -126, and n's bits are capped (an integer min) at 128, so the whole function is
 * ~20 vector instructions, as fast as glibc's libmvec expf (0.26 ns per float on one core,
 * docs/model.md#exp) and more accurate (1 ulp vs 3), and the scalar and vector code paths
 * give the same bits, so results never depend on where an element falls in a loop. */
static inline float fdpo_k_expf(float x) {
    const float shift = 12582912.0f; /* 1.5 * 2^23: x + shift rounds x to an integer held in the low mantissa bits */
    float xc = x < -87.5f ? -87.5f : x;                        /* NaN passes through */
    float t = fmaf(xc, 1.44269504088896341f, shift);
    uint32_t ti;
    memcpy(&ti, &t, sizeof ti);
    ti = ti > 0x4B400080u ? 0x4B400080u : ti;                  /* n <= 128: large x, +inf and NaN */
    memcpy(&t, &ti, sizeof t);
    float n = t - shift;                                       /* round(x / ln2), in [-126, 128] */
    float r = fmaf(n, -0.693359375f, xc);                      /* ln2 split in two: exact product first */
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r) + 1.0f;
    uint32_t bits = (ti + 126u) << 23;                         /* 2^(n-1); n = -126 gives +0 */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale * 2.0f;                                   /* n = 128, p >= 1: +inf */
}

#endif
