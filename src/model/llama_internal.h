/* Private to src/model: the Llama family (LlamaForCausalLM and its Qwen2 variant) behind
 * the model interface of fdpo/gpt2.h. Tensors keep Hugging Face's nn.Linear layout
 * [out, in], so y = x W^T + b, and files map 1:1. */
#ifndef FDPO_LLAMA_INTERNAL_H
#define FDPO_LLAMA_INTERNAL_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/gpt2.h"
#include "model/gpt2_internal.h" /* fdpo_bf16_weight */

/* tensor roles; per-layer roles hold all layers contiguously ([L, ...]) */
enum {
    LR_EMBED, LR_LN1, LR_QW, LR_QB, LR_KW, LR_KB, LR_VW, LR_VB, LR_OW, LR_OB, LR_LN2,
    LR_GATEW, LR_GATEB, LR_UPW, LR_UPB, LR_DOWNW, LR_DOWNB, LR_NORM, LR_HEAD,
    LR_SCORE, /* reward model (LlamaForSequenceClassification): score.weight [num_labels, C], no lm_head */
    LR_N_ROLES
};

/* Activations of the last forward (one allocation), N tokens. */
typedef struct {
    size_t cap_tokens, cap_seq;
    float *memory;
    float *encoded;              /* [N, C] */
    float *ln1, *ln1_rstd;       /* [L, N, C], [L, N] */
    float *q, *k, *v;            /* [L, N, QD], [L, N, KD], [L, N, KD]; q, k rotated */
    float *att_lse;              /* [L, N, NH] log-sum-exp of each attention row (backward recomputes P) */
    float *atty;                 /* [L, N, QD] */
    float *residual2;            /* [L, N, C] after attention */
    float *ln2, *ln2_rstd;       /* [L, N, C], [L, N] */
    float *gate, *up;            /* [L, N, F] each: x Wg^T, x Wu^T (silu(gate) * up is recomputed) */
    float *residual3;            /* [L, N, C] after the MLP */
    float *lnf, *lnf_rstd;       /* [N, C], [N] */
    float *logits;               /* [N, V], its own allocation (logits_cap rows), made only by a
                                  * forward that materialises logits (not fused_head) */
    size_t logits_cap;
    float *lse, *logit_sum;      /* [N] log-sum-exp and sum over V of each logits row */
    float *rope_cos, *rope_sin;  /* [N, hd/2] for the batch's positions */
    /* backward scratch */
    float *d_residual, *d_ln;    /* [N, C] */
    float *d_q, *d_k, *d_v;      /* [N, QD], [N, KD], [N, KD] */
    float *d_atty;               /* [N, QD] */
    float *d_h, *d_gate;         /* [N, F]; d_gate also holds silu(gate) * up (forward: the layer's,
                                  * backward: recomputed) until the SwiGLU backward */
    /* bf16 precision: bf16-rounded matmul operands, bf16_x and bf16_y [cap, max(C, QD, F)]
     * (inputs and upstream gradients; weight-gradient inputs) */
    uint16_t *bf16_x, *bf16_y;
    size_t bf16_cap;
    /* the LM head's scratch, grown on demand: one vocabulary chunk of logits (fused), bf16
     * operands (fused: K (C + chunk); materialised bf16 backward: d logits N V), row state */
    float *head_scratch;  size_t head_scratch_cap;  /* floats */
    uint16_t *head_bf16;  size_t head_bf16_cap;     /* bf16 elements */
    double *head_acc;     size_t head_acc_cap;      /* doubles */
    int fused_head;              /* the last forward ran the chunked head: no logits */
    fdpo_precision precision;    /* of the last forward (backward follows it) */
    /* the batch (copied) */
    size_t n_seq, n_tokens;
    size_t *seq_offset;
    int32_t *tokens, *targets, *pos;
    float *weights;
    uint8_t *branch;
    int has_branch;              /* the last forward had branch masks (in branch) */
    /* skip_unweighted or fused_head: the LM head ran over the K rows head_rows[0..K) only
     * (ascending); head_targets/head_d/head_lse [N] are their packed targets, upstream
     * gradients (forward: token log-probs) and log-sum-exps */
    size_t *head_rows, n_head_rows;
    int32_t *head_targets;
    float *head_d, *head_lse;
    int skip_unweighted;
    /* fused_head with rows skipped: the last layer ran after its attention (o_proj, MLP,
     * norms) on the K head rows only, packed at the front of residual2, ln2, gate, up,
     * residual3 and lnf (as GPT-2's: docs/model.md, "The last block on the head's rows") */
    int head_rows_only;
    int has_forward;
} llama_acts;

struct fdpo_llama_state {
    int role[LR_N_ROLES];        /* index into m->tensors, -1 when absent */
    llama_acts acts;
};

int  fdpo_llama_config_check(const fdpo_gpt2_config *c);
double fdpo_llama_n_params(const fdpo_gpt2_config *c);   /* fdpo_gpt2_config_n_params for the family */
void fdpo_llama_build(fdpo_gpt2 *m);                  /* tensor table + state */
void fdpo_llama_free(fdpo_gpt2 *m);
void fdpo_llama_init(fdpo_gpt2 *m, uint64_t seed);
int  fdpo_llama_forward(fdpo_gpt2 *m, const fdpo_batch *b, float *token_logp, float *seq_logp);
int  fdpo_llama_backward(fdpo_gpt2 *m, const float *d_token_logp);
/* backward from a gradient on the final hidden states d_lnf [N, C] (the LM head gets none) */
int  fdpo_llama_backward_hidden(fdpo_gpt2 *m, const float *d_lnf);
const float *fdpo_llama_hidden(const fdpo_gpt2 *m);   /* [N, C] after model.norm, NULL if none */
float *fdpo_llama_score_weight(fdpo_gpt2 *m, float *memory); /* score.weight in memory, NULL for an LM */
const float *fdpo_llama_logits(const fdpo_gpt2 *m);
/* [N] sum over V of each row's logits after a fused_head forward (NULL otherwise) */
const float *fdpo_llama_fused_logit_sums(const fdpo_gpt2 *m);
/* rope angles: inv_freq[i] for i < hd/2 (llama3 rope_scaling applied), in double */
void fdpo_llama_inv_freq(const fdpo_gpt2_config *c, double *inv_freq);

/* ---- kernels (src/model/llama_kernels.c) ---- */
void fdpo_llama_embed_forward(float *out, const int32_t *tokens, const float *embed, size_t N, size_t C);
void fdpo_llama_embed_backward(float *dembed, const float *dout, const int32_t *tokens, size_t N, size_t C);
void fdpo_llama_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, size_t N, size_t C, float eps);
void fdpo_llama_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                      const float *rstd, size_t N, size_t C);
void fdpo_llama_linear_forward(float *out, const float *inp, const float *w, const float *bias, size_t N, size_t IC, size_t OC);
void fdpo_llama_linear_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w,
                     size_t N, size_t IC, size_t OC, int accumulate_dinp);
void fdpo_llama_linear_forward_bf16(float *out, const float *inp, fdpo_bf16_weight w16, const float *bias, size_t N,
                                    size_t IC, size_t OC, uint16_t *scratch);
void fdpo_llama_linear_backward_bf16(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                                     fdpo_bf16_weight w16, size_t N, size_t IC, size_t OC,
                                     int accumulate_dinp, uint16_t *scratch_dout, uint16_t *scratch_inp);
void fdpo_llama_rope_tables(float *cos_t, float *sin_t, const int32_t *pos, const double *inv_freq, size_t N, size_t half);
void fdpo_llama_rope_forward(float *x, const float *cos_t, const float *sin_t, size_t N, size_t n_heads, size_t hd);
void fdpo_llama_rope_backward(float *dx, const float *cos_t, const float *sin_t, size_t N, size_t n_heads, size_t hd);
/* streaming (O(T) memory): lse [N, NH] instead of T x T probabilities */
void fdpo_llama_gqa_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                      const size_t *seq_offset, const uint8_t *branch, size_t B, size_t NH, size_t NKV,
                                      size_t hd);
void fdpo_llama_gqa_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                       const float *v, const float *out, const float *lse, const size_t *seq_offset,
                                       const uint8_t *branch, size_t B, size_t NH, size_t NKV, size_t hd, int bf16);
void fdpo_llama_swiglu_forward(float *h, const float *gate, const float *up, size_t n);
void fdpo_llama_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n);

#endif
