/* Llama family (LlamaForCausalLM; Qwen2 = q/k/v biases): tensor table, init, forward and
 * backward over a packed batch. RMSNorm, rotary embeddings (rotate-half, rope_theta,
 * optional llama3 frequency scaling), grouped-query attention, SwiGLU MLP, tied or untied
 * LM head. Kernels in llama_kernels.c; the LM head and log-softmax are GPT-2's, fused and
 * chunked over the vocabulary (fdpo_batch.fused_head) or materialised. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "model/gpt2_internal.h"
#include "model/llama_internal.h"
#include "fdpo/lora.h"

size_t fdpo_llama_head_dim(const fdpo_gpt2_config *c) { return c->head_dim ? c->head_dim : c->n_embd / c->n_head; }
static size_t head_dim(const fdpo_gpt2_config *c) { return fdpo_llama_head_dim(c); }

int fdpo_llama_config_check(const fdpo_gpt2_config *c) {
    if (c->vocab_size == 0 || c->vocab_size > (1u << 24))
        return fdpo_error("config: vocab_size %zu must be in [1, %u]", c->vocab_size, 1u << 24);
    if (c->n_positions == 0 || c->n_positions > (1u << 24))
        return fdpo_error("config: max_position_embeddings %zu must be in [1, %u]", c->n_positions, 1u << 24);
    if (c->n_embd == 0 || c->n_embd > 65536) return fdpo_error("config: hidden_size %zu must be in [1, 65536]", c->n_embd);
    if (c->n_layer == 0 || c->n_layer > 1024) return fdpo_error("config: num_hidden_layers %zu must be in [1, 1024]", c->n_layer);
    if (c->n_head == 0 || c->n_head > 1024) return fdpo_error("config: num_attention_heads %zu must be in [1, 1024]", c->n_head);
    if (c->n_kv_head == 0 || c->n_head % c->n_kv_head)
        return fdpo_error("config: num_key_value_heads %zu must be >= 1 and divide num_attention_heads %zu", c->n_kv_head, c->n_head);
    if (!c->head_dim && c->n_embd % c->n_head)
        return fdpo_error("config: num_attention_heads %zu must divide hidden_size %zu (or set head_dim)", c->n_head, c->n_embd);
    size_t hd = head_dim(c);
    if (hd == 0 || hd % 2 || hd > 4096) return fdpo_error("config: head_dim %zu must be even and in [2, 4096]", hd);
    if (c->intermediate_size == 0 || c->intermediate_size > (1u << 20))
        return fdpo_error("config: intermediate_size %zu must be in [1, %u]", c->intermediate_size, 1u << 20);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta)) return fdpo_error("config: rope_theta %g must be positive", c->rope_theta);
    if (!(c->layer_norm_epsilon > 0.0f) || !isfinite(c->layer_norm_epsilon))
        return fdpo_error("config: rms_norm_eps %g must be a positive number", (double)c->layer_norm_epsilon);
    if (c->num_labels > 1) return fdpo_error("config: num_labels %zu is not supported (a reward model has 1)", c->num_labels);
    if (c->rope_factor != 0) {
        if (!(c->rope_factor >= 1) || !(c->rope_low_freq_factor > 0) || !(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
            c->rope_original_max_position == 0)
            return fdpo_error("config: rope_scaling (llama3) needs factor >= 1, 0 < low_freq_factor < high_freq_factor "
                              "and original_max_position_embeddings");
    }
    double n = fdpo_llama_n_params(c);
    if (n > 8589934592.0) return fdpo_error("config: %.3g parameters is more than fdpo supports (8.6e9)", n);
    return 0;
}

double fdpo_llama_n_params(const fdpo_gpt2_config *c) {
    /* the sizes fdpo_llama_build gives its tensors, in double: called before the config is checked */
    double C = (double)c->n_embd, V = (double)c->vocab_size, F = (double)c->intermediate_size;
    double QD = (double)c->n_head * (double)head_dim(c), KD = (double)c->n_kv_head * (double)head_dim(c);
    double layer = 2 * C + C * (QD + 2 * KD) + QD * C + 3 * C * F + (c->qkv_bias ? QD + 2 * KD : 0) + (c->o_bias ? C : 0) +
                   (c->mlp_bias ? 2 * F + C : 0);
    double head = c->num_labels ? (double)c->num_labels * C : c->tie_word_embeddings ? 0 : V * C;
    return V * C + C + (double)c->n_layer * layer + head;
}

void fdpo_llama_inv_freq(const fdpo_gpt2_config *c, double *inv_freq) {
    size_t hd = head_dim(c), half = hd / 2;
    for (size_t i = 0; i < half; i++) inv_freq[i] = 1.0 / pow(c->rope_theta, (double)(2 * i) / (double)hd);
    if (c->rope_factor == 0) return;
    /* llama3: long wavelengths slow down by factor, short ones stay, a smooth ramp between */
    double old = (double)c->rope_original_max_position;
    double low_wavelen = old / c->rope_low_freq_factor, high_wavelen = old / c->rope_high_freq_factor;
    for (size_t i = 0; i < half; i++) {
        double wavelen = 2 * M_PI / inv_freq[i];
        if (wavelen < high_wavelen) continue;
        if (wavelen > low_wavelen) { inv_freq[i] /= c->rope_factor; continue; }
        double smooth = (old / wavelen - c->rope_low_freq_factor) / (c->rope_high_freq_factor - c->rope_low_freq_factor);
        inv_freq[i] = (1 - smooth) * inv_freq[i] / c->rope_factor + smooth * inv_freq[i];
    }
}

void fdpo_llama_build(fdpo_gpt2 *m) {
    const fdpo_gpt2_config *c = &m->config;
    size_t V = c->vocab_size, C = c->n_embd, L = c->n_layer, F = c->intermediate_size, hd = head_dim(c);
    size_t QD = c->n_head * hd, KD = c->n_kv_head * hd;
    struct { int role; const char *name; int per_layer; size_t s0, s1; int ndim, decay, present; } spec[] = {
        {LR_EMBED, "model.embed_tokens.weight", 0, V, C, 2, 1, 1},
        {LR_LN1, "model.layers.{i}.input_layernorm.weight", 1, C, 0, 1, 0, 1},
        {LR_QW, "model.layers.{i}.self_attn.q_proj.weight", 1, QD, C, 2, 1, 1},
        {LR_QB, "model.layers.{i}.self_attn.q_proj.bias", 1, QD, 0, 1, 0, c->qkv_bias},
        {LR_KW, "model.layers.{i}.self_attn.k_proj.weight", 1, KD, C, 2, 1, 1},
        {LR_KB, "model.layers.{i}.self_attn.k_proj.bias", 1, KD, 0, 1, 0, c->qkv_bias},
        {LR_VW, "model.layers.{i}.self_attn.v_proj.weight", 1, KD, C, 2, 1, 1},
        {LR_VB, "model.layers.{i}.self_attn.v_proj.bias", 1, KD, 0, 1, 0, c->qkv_bias},
        {LR_OW, "model.layers.{i}.self_attn.o_proj.weight", 1, C, QD, 2, 1, 1},
        {LR_OB, "model.layers.{i}.self_attn.o_proj.bias", 1, C, 0, 1, 0, c->o_bias},
        {LR_LN2, "model.layers.{i}.post_attention_layernorm.weight", 1, C, 0, 1, 0, 1},
        {LR_GATEW, "model.layers.{i}.mlp.gate_proj.weight", 1, F, C, 2, 1, 1},
        {LR_GATEB, "model.layers.{i}.mlp.gate_proj.bias", 1, F, 0, 1, 0, c->mlp_bias},
        {LR_UPW, "model.layers.{i}.mlp.up_proj.weight", 1, F, C, 2, 1, 1},
        {LR_UPB, "model.layers.{i}.mlp.up_proj.bias", 1, F, 0, 1, 0, c->mlp_bias},
        {LR_DOWNW, "model.layers.{i}.mlp.down_proj.weight", 1, C, F, 2, 1, 1},
        {LR_DOWNB, "model.layers.{i}.mlp.down_proj.bias", 1, C, 0, 1, 0, c->mlp_bias},
        {LR_NORM, "model.norm.weight", 0, C, 0, 1, 0, 1},
        {LR_HEAD, "lm_head.weight", 0, V, C, 2, 1, !c->tie_word_embeddings && !c->num_labels},
        {LR_SCORE, "score.weight", 0, c->num_labels, C, 2, 1, c->num_labels > 0},
    };
    m->llama = fdpo_calloc(1, sizeof *m->llama);
    size_t off = 0, n = 0;
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        m->llama->role[spec[i].role] = -1;
        if (!spec[i].present) continue;
        fdpo_gpt2_tensor *t = &m->tensors[n];
        t->name = spec[i].name;
        t->per_layer = spec[i].per_layer;
        t->ndim = spec[i].ndim;
        t->shape[0] = spec[i].s0;
        t->shape[1] = spec[i].ndim > 1 ? spec[i].s1 : 0;
        t->shape[2] = 0;
        t->decay = spec[i].decay;
        size_t one = spec[i].ndim > 1 ? spec[i].s0 * spec[i].s1 : spec[i].s0;
        t->numel = one * (spec[i].per_layer ? L : 1);
        t->offset = off;
        off += t->numel;
        m->llama->role[spec[i].role] = (int)n++;
    }
    m->n_tensors = n;
    m->n_params = off;
}

static void acts_free(llama_acts *a) {
    fdpo_free_large(a->bf16_x); fdpo_free_large(a->bf16_y); free(a->head_rows); free(a->head_targets); free(a->head_d); free(a->head_lse);
    fdpo_free_large(a->logits); fdpo_free_large(a->head_scratch); fdpo_free_large(a->head_bf16);
    fdpo_free_large(a->head_acc); fdpo_free_large(a->memory); free(a->seq_offset); free(a->tokens);
    free(a->targets); free(a->pos); free(a->weights); free(a->branch);
}

void fdpo_llama_free(fdpo_gpt2 *m) {
    if (!m->llama) return;
    acts_free(&m->llama->acts);
    free(m->llama);
    m->llama = NULL;
}

/* HF LlamaPreTrainedModel: N(0, 0.02) for Linear and Embedding weights, zero biases,
 * RMSNorm weights 1 (no residual scaling). Deterministic for a seed. */
void fdpo_llama_init(fdpo_gpt2 *m, uint64_t seed) {
    fdpo_rng rng;
    fdpo_rng_seed(&rng, seed);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const fdpo_gpt2_tensor *t = &m->tensors[i];
        float *p = m->params_memory + t->offset;
        if (t->decay) for (size_t k = 0; k < t->numel; k++) p[k] = (float)(0.02 * fdpo_rng_normal(&rng));
        else {
            float v = strstr(t->name, "norm") ? 1.0f : 0.0f;
            for (size_t k = 0; k < t->numel; k++) p[k] = v;
        }
    }
}

static float *tensor(const fdpo_gpt2 *m, float *memory, int role) {
    int i = m->llama->role[role];
    return i < 0 ? NULL : memory + m->tensors[i].offset;
}

static void acts_reserve(fdpo_gpt2 *m, size_t N, size_t B) {
    llama_acts *a = &m->llama->acts;
    const fdpo_gpt2_config *c = &m->config;
    if (B > a->cap_seq) {
        a->seq_offset = fdpo_realloc(a->seq_offset, (B + 1) * sizeof(size_t));
        a->cap_seq = B;
    }
    if (N <= a->cap_tokens && a->memory) return;
    if (N > a->cap_tokens) {
        a->tokens = fdpo_realloc(a->tokens, N * sizeof(int32_t));
        a->targets = fdpo_realloc(a->targets, N * sizeof(int32_t));
        a->pos = fdpo_realloc(a->pos, N * sizeof(int32_t));
        a->weights = fdpo_realloc(a->weights, N * sizeof(float));
        a->head_rows = fdpo_realloc(a->head_rows, N * sizeof(size_t));
        a->head_targets = fdpo_realloc(a->head_targets, N * sizeof(int32_t));
        a->head_d = fdpo_realloc(a->head_d, N * sizeof(float));
        a->head_lse = fdpo_realloc(a->head_lse, N * sizeof(float));
        free(a->branch);
        a->branch = NULL;
    }
    N = N > a->cap_tokens ? N : a->cap_tokens;
    size_t C = c->n_embd, L = c->n_layer, F = c->intermediate_size, hd = head_dim(c);
    size_t QD = c->n_head * hd, KD = c->n_kv_head * hd;
    struct { float **p; size_t n; } parts[] = {
        {&a->encoded, N * C}, {&a->ln1, L * N * C}, {&a->ln1_rstd, L * N}, {&a->q, L * N * QD},
        {&a->k, L * N * KD}, {&a->v, L * N * KD}, {&a->att_lse, L * N * c->n_head}, {&a->atty, L * N * QD},
        {&a->residual2, L * N * C}, {&a->ln2, L * N * C}, {&a->ln2_rstd, L * N}, {&a->gate, L * N * F},
        {&a->up, L * N * F}, {&a->residual3, L * N * C}, {&a->lnf, N * C},
        {&a->lnf_rstd, N}, {&a->lse, N}, {&a->logit_sum, N}, {&a->rope_cos, N * hd / 2},
        {&a->rope_sin, N * hd / 2}, {&a->d_residual, N * C}, {&a->d_ln, N * C},
        {&a->d_q, N * QD}, {&a->d_k, N * KD}, {&a->d_v, N * KD}, {&a->d_atty, N * QD},
        {&a->d_h, N * F}, {&a->d_gate, N * F},
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) total += parts[i].n;
    a->memory = fdpo_realloc_large(a->memory, total * sizeof(float));   /* in place: gpt2.c acts_reserve */
    float *p = a->memory;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) { *parts[i].p = p; p += parts[i].n; }
    a->cap_tokens = N;
}

/* bf16: the shared bf16 weight copies (fdpo_model_bf16_refresh: out of date at each forward;
 * fdpo_model_bf16_weight makes the one a GEMM reads) and the scratch for bf16-rounded
 * operands, sized for the activations' capacity */
static void bf16_prepare(fdpo_gpt2 *m) {
    llama_acts *a = &m->llama->acts;
    const fdpo_gpt2_config *c = &m->config;
    size_t QD = c->n_head * head_dim(c), C = c->n_embd, F = c->intermediate_size;
    size_t act = C > QD ? C : QD;
    act = act > F ? act : F;
    fdpo_model_bf16_refresh(m);
    if (a->bf16_cap < a->cap_tokens) {
        a->bf16_x = fdpo_realloc_large(a->bf16_x, a->cap_tokens * act * sizeof(uint16_t));
        a->bf16_y = fdpo_realloc_large(a->bf16_y, a->cap_tokens * act * sizeof(uint16_t));
        a->bf16_cap = a->cap_tokens;
    }
}

/* the bf16 copy of the weight tensor w (which points into params_memory) for a GEMM whose
 * result is [M, N]: the fp32 one on the fp32 route (fdpo_model_bf16_weight) */
static fdpo_bf16_weight w16_of(fdpo_gpt2 *m, const float *w, size_t M, size_t N) {
    return fdpo_model_bf16_weight(m, w, M, N);
}

/* Linear layers and the LM head in the model's precision (the kernels do the maths). */
static void linear_forward(fdpo_gpt2 *m, float *out, const float *inp, const float *w, const float *bias, size_t N,
                           size_t IC, size_t OC) {
    if (m->precision == FDPO_PRECISION_BF16)
        fdpo_llama_linear_forward_bf16(out, inp, w16_of(m, w, N, OC), bias, N, IC, OC, m->llama->acts.bf16_x);
    else
        fdpo_llama_linear_forward(out, inp, w, bias, N, IC, OC);
}

static void linear_backward(fdpo_gpt2 *m, float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                            const float *w, size_t N, size_t IC, size_t OC, int accumulate_dinp) {
    llama_acts *a = &m->llama->acts;
    if (a->precision == FDPO_PRECISION_BF16) /* the forward's: its bf16 weights are current */
        fdpo_llama_linear_backward_bf16(dinp, dw, dbias, dout, inp, w16_of(m, w, N, IC), N, IC, OC, accumulate_dinp,
                                        a->bf16_x, a->bf16_y);
    else
        fdpo_llama_linear_backward(dinp, dw, dbias, dout, inp, w, N, IC, OC, accumulate_dinp);
}

static void head_forward(fdpo_gpt2 *m, float *logits, const float *inp, const float *head, size_t N) {
    size_t C = m->config.n_embd, V = m->config.vocab_size;
    if (m->precision == FDPO_PRECISION_BF16)
        fdpo_k_lmhead_forward_bf16(logits, inp, w16_of(m, head, N, V), N, C, V, m->llama->acts.bf16_x);
    else
        fdpo_k_lmhead_forward(logits, inp, head, N, C, V);
}

static void head_backward(fdpo_gpt2 *m, float *dinp, float *dhead, const float *dlogits, const float *inp,
                          const float *head, size_t N) {
    llama_acts *a = &m->llama->acts;
    size_t C = m->config.n_embd, V = m->config.vocab_size;
    if (a->precision == FDPO_PRECISION_BF16) {
        a->head_bf16 = fdpo_model_grow(a->head_bf16, &a->head_bf16_cap, N * V, sizeof(uint16_t)); /* bf16 d logits */
        fdpo_k_lmhead_backward_bf16(dinp, dhead, dlogits, inp, w16_of(m, head, N, C), N, C, V, a->head_bf16, a->bf16_y);
    }
    else
        fdpo_k_lmhead_backward(dinp, dhead, dlogits, inp, head, N, C, V);
}

/* The [N, V] logits, only for forwards that materialise them */
static void logits_reserve(llama_acts *a, size_t N, size_t V) {
    a->logits = fdpo_model_grow(a->logits, &a->logits_cap, N * V, sizeof(float));
}

/* The fused head's scratch for K rows: one chunk of logits, bf16 operands, row state */
static void fused_head_reserve(fdpo_gpt2 *m, size_t K, size_t chunk) {
    llama_acts *a = &m->llama->acts;
    a->head_scratch = fdpo_model_grow(a->head_scratch, &a->head_scratch_cap, K * chunk, sizeof(float));
    a->head_acc = fdpo_model_grow(a->head_acc, &a->head_acc_cap, 3 * K, sizeof(double));
    if (a->precision == FDPO_PRECISION_BF16)
        a->head_bf16 = fdpo_model_grow(a->head_bf16, &a->head_bf16_cap, K * (m->config.n_embd + chunk), sizeof(uint16_t));
}

/* Fused LM head over the K rows head_rows[0..K): log-probs, lse and logit sums chunk by
 * chunk over the vocabulary (as GPT-2's), never [N, V] logits. Rows not listed get lse,
 * logit_sum and token_logp 0. */
static void head_fused_forward(fdpo_gpt2 *m, const float *head, float *tlp) {
    llama_acts *a = &m->llama->acts;
    size_t N = a->n_tokens, C = m->config.n_embd, V = m->config.vocab_size, K = a->n_head_rows;
    size_t chunk = fdpo_lmhead_chunk(V);
    /* backward scratch, free during forward (tlp may alias d_residual) */
    float *lnf_packed = a->d_ln, *tlp_packed = a->head_d, *lse_packed = a->head_lse, *sum_packed = a->d_q;
    if (a->head_rows_only) lnf_packed = a->lnf; /* the last layer left them packed */
    else fdpo_k_gather_rows(lnf_packed, a->lnf, a->head_rows, K, C);
    for (size_t k = 0; k < K; k++) a->head_targets[k] = a->targets[a->head_rows[k]];
    fused_head_reserve(m, K, chunk);
    if (K > 0)
        fdpo_k_lmhead_logsoftmax_forward_chunked(lse_packed, tlp_packed, sum_packed, lnf_packed, head,
                                                 a->precision == FDPO_PRECISION_BF16 ? w16_of(m, head, K, chunk)
                                                                                     : (fdpo_bf16_weight){NULL, NULL},
                                                 a->head_targets, K, C, V, chunk, a->head_scratch, a->head_bf16,
                                                 a->head_acc, 0);
    memset(a->lse, 0, N * sizeof(float));
    memset(a->logit_sum, 0, N * sizeof(float));
    if (tlp) memset(tlp, 0, N * sizeof(float));
    for (size_t k = 0; k < K; k++) {
        a->lse[a->head_rows[k]] = lse_packed[k];
        a->logit_sum[a->head_rows[k]] = sum_packed[k];
        if (tlp) tlp[a->head_rows[k]] = tlp_packed[k];
    }
}

/* LM head + log-softmax over the weighted rows only (skip_unweighted): pack their
 * model.norm outputs, one K x V GEMM instead of N x V, then put each logits row back at its
 * token (the others 0, as GPT-2 does; fdpo_gpt2_logits keeps one meaning) */
static void head_rows_forward(fdpo_gpt2 *m, const float *head, float *tlp) {
    llama_acts *a = &m->llama->acts;
    size_t N = a->n_tokens, C = m->config.n_embd, V = m->config.vocab_size, K = a->n_head_rows;
    float *lnf_packed = a->d_ln, *lse_packed = a->head_d, *tlp_packed = a->d_residual; /* backward scratch */
    fdpo_k_gather_rows(lnf_packed, a->lnf, a->head_rows, K, C);
    for (size_t k = 0; k < K; k++) a->head_targets[k] = a->targets[a->head_rows[k]];
    if (K > 0) {
        head_forward(m, a->logits, lnf_packed, head, K);
        fdpo_k_logsoftmax_forward(lse_packed, tlp_packed, a->logits, a->head_targets, K, V);
    }
    memset(a->lse, 0, N * sizeof(float));
    for (size_t k = 0; k < K; k++) a->lse[a->head_rows[k]] = lse_packed[k];
    if (tlp) {
        float *tmp = a->d_q; /* tlp may alias d_residual: go through a third buffer */
        memcpy(tmp, tlp_packed, K * sizeof(float));
        memset(tlp, 0, N * sizeof(float));
        for (size_t k = 0; k < K; k++) tlp[a->head_rows[k]] = tmp[k];
    }
    fdpo_k_scatter_rows(a->logits, 0, N, a->head_rows, K, V);
}

/* LM head + log-softmax holding the [N, V] logits (fdpo_gpt2_logits reads them): over
 * every row, or over the weighted rows only when skip_unweighted */
static void head_materialised_forward(fdpo_gpt2 *m, const float *head, float *tlp) {
    llama_acts *a = &m->llama->acts;
    size_t N = a->n_tokens, V = m->config.vocab_size;
    logits_reserve(a, N, V);
    if (a->skip_unweighted)
        for (size_t t = 0; t < N; t++) if (a->weights[t] != 0.0f) a->head_rows[a->n_head_rows++] = t;
    if (!a->skip_unweighted || a->n_head_rows == N) {
        a->skip_unweighted = 0;
        head_forward(m, a->logits, a->lnf, head, N);
        fdpo_k_logsoftmax_forward(a->lse, tlp, a->logits, a->targets, N, V);
    } else {
        head_rows_forward(m, head, tlp);
    }
}

int fdpo_llama_forward(fdpo_gpt2 *m, const fdpo_batch *b, float *token_logp, float *seq_logp) {
    const fdpo_gpt2_config *c = &m->config;
    if (c->num_labels && (token_logp || seq_logp))
        return fdpo_error("a reward model (%s) has no LM head: it scores whole sequences (rm:DIR), not token "
                          "log-probs", fdpo_gpt2_architecture(c, 1));
    size_t N = b->n_tokens, B = b->n_seq, C = c->n_embd, L = c->n_layer, NH = c->n_head, NKV = c->n_kv_head;
    size_t F = c->intermediate_size, hd = head_dim(c), QD = NH * hd, KD = NKV * hd;
    acts_reserve(m, N, B);
    llama_acts *a = &m->llama->acts;
    a->n_seq = B;
    a->n_tokens = N;
    memcpy(a->seq_offset, b->seq_offset, (B + 1) * sizeof(size_t));
    for (size_t s = 0; s < B; s++)
        for (size_t t = b->seq_offset[s]; t < b->seq_offset[s + 1]; t++)
            a->pos[t] = b->pos ? b->pos[t] : (int32_t)(t - b->seq_offset[s]);
    memcpy(a->tokens, b->tokens, N * sizeof(int32_t));
    memcpy(a->targets, b->targets, N * sizeof(int32_t));
    for (size_t t = 0; t < N; t++) a->weights[t] = b->targets[t] < 0 ? 0.0f : (b->weights ? b->weights[t] : 1.0f);
    if (b->branch) {
        if (!a->branch) a->branch = fdpo_malloc(a->cap_tokens);
        memcpy(a->branch, b->branch, N);
    }
    a->has_branch = b->branch != NULL;
    const uint8_t *branch = b->branch ? a->branch : NULL;
    a->precision = m->precision; /* backward follows the forward even if m->precision changes */
    if (m->precision == FDPO_PRECISION_BF16) bf16_prepare(m);
    double *inv_freq = fdpo_malloc(hd / 2 * sizeof *inv_freq);
    fdpo_llama_inv_freq(c, inv_freq);
    fdpo_llama_rope_tables(a->rope_cos, a->rope_sin, a->pos, inv_freq, N, hd / 2);
    free(inv_freq);

    /* the fused head's rows (with a target, and a weight if skipping): when some rows are
     * not among them, the last layer after its attention runs on these rows only */
    a->n_head_rows = 0;
    a->head_rows_only = 0;
    if (b->fused_head && !c->num_labels) {
        for (size_t t = 0; t < N; t++) /* weights are 0 where there is no target */
            if (a->targets[t] >= 0 && (!b->skip_unweighted || a->weights[t] != 0.0f)) a->head_rows[a->n_head_rows++] = t;
        a->head_rows_only = a->n_head_rows > 0 && a->n_head_rows < N && fdpo_model_head_rows_only_setting();
    }
    float *P = m->params_memory;
    float *embed = tensor(m, P, LR_EMBED), *head = m->llama->role[LR_HEAD] >= 0 ? tensor(m, P, LR_HEAD) : embed;
    fdpo_llama_embed_forward(a->encoded, a->tokens, embed, N, C);
    size_t n_last = a->head_rows_only ? a->n_head_rows : N; /* rows of the last layer after its attention */
    for (size_t l = 0; l < L; l++) {
        const float *residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * N * C;
        float *ln1 = a->ln1 + l * N * C, *q = a->q + l * N * QD, *k = a->k + l * N * KD, *v = a->v + l * N * KD;
        float *atty = a->atty + l * N * QD, *res2 = a->residual2 + l * N * C, *ln2 = a->ln2 + l * N * C;
        /* h = silu(gate) * up is not kept: backward recomputes it (one elementwise pass) */
        float *gate = a->gate + l * N * F, *up = a->up + l * N * F, *h = a->d_gate; /* backward scratch */
        float *res3 = a->residual3 + l * N * C;
        float *qb = tensor(m, P, LR_QB), *kb = tensor(m, P, LR_KB), *vb = tensor(m, P, LR_VB), *ob = tensor(m, P, LR_OB);
        float *gb = tensor(m, P, LR_GATEB), *ub = tensor(m, P, LR_UPB), *db = tensor(m, P, LR_DOWNB);
        fdpo_llama_rmsnorm_forward(ln1, a->ln1_rstd + l * N, residual, tensor(m, P, LR_LN1) + l * C, N, C, c->layer_norm_epsilon);
        linear_forward(m, q, ln1, tensor(m, P, LR_QW) + l * QD * C, qb ? qb + l * QD : NULL, N, C, QD);
        linear_forward(m, k, ln1, tensor(m, P, LR_KW) + l * KD * C, kb ? kb + l * KD : NULL, N, C, KD);
        linear_forward(m, v, ln1, tensor(m, P, LR_VW) + l * KD * C, vb ? vb + l * KD : NULL, N, C, KD);
        fdpo_lora_forward(m, FDPO_LORA_Q, l, q, ln1, N, NULL); /* before the rotation, as in PEFT */
        fdpo_lora_forward(m, FDPO_LORA_K, l, k, ln1, N, NULL);
        fdpo_lora_forward(m, FDPO_LORA_V, l, v, ln1, N, NULL);
        fdpo_llama_rope_forward(q, a->rope_cos, a->rope_sin, N, NH, hd);
        fdpo_llama_rope_forward(k, a->rope_cos, a->rope_sin, N, NKV, hd);
        fdpo_llama_gqa_attention_forward(atty, a->att_lse + l * N * NH, q, k, v, a->seq_offset, branch, B, NH, NKV, hd);
        size_t n = l + 1 == L ? n_last : N; /* rows the rest of the layer runs on */
        const float *o_in = atty;
        const size_t *lrows = n != N ? a->head_rows : NULL;   /* the batch rows of the packed ones (LoRA dropout) */
        if (n != N) { /* the head's rows of the attention output and the residual, in backward scratch */
            fdpo_k_gather_rows(a->d_atty, atty, a->head_rows, n, QD);
            fdpo_k_gather_rows(a->d_ln, residual, a->head_rows, n, C);
            o_in = a->d_atty;
            residual = a->d_ln;
        }
        linear_forward(m, res2, o_in, tensor(m, P, LR_OW) + l * C * QD, ob ? ob + l * C : NULL, n, QD, C);
        fdpo_lora_forward(m, FDPO_LORA_O, l, res2, o_in, n, lrows);
        fdpo_k_residual_forward(res2, res2, residual, n * C);
        fdpo_llama_rmsnorm_forward(ln2, a->ln2_rstd + l * N, res2, tensor(m, P, LR_LN2) + l * C, n, C, c->layer_norm_epsilon);
        linear_forward(m, gate, ln2, tensor(m, P, LR_GATEW) + l * F * C, gb ? gb + l * F : NULL, n, C, F);
        linear_forward(m, up, ln2, tensor(m, P, LR_UPW) + l * F * C, ub ? ub + l * F : NULL, n, C, F);
        fdpo_lora_forward(m, FDPO_LORA_GATE, l, gate, ln2, n, lrows);
        fdpo_lora_forward(m, FDPO_LORA_UP, l, up, ln2, n, lrows);
        fdpo_llama_swiglu_forward(h, gate, up, n * F);
        linear_forward(m, res3, h, tensor(m, P, LR_DOWNW) + l * C * F, db ? db + l * C : NULL, n, F, C);
        fdpo_lora_forward(m, FDPO_LORA_DOWN, l, res3, h, n, lrows);
        fdpo_k_residual_forward(res3, res3, res2, n * C);
    }
    fdpo_llama_rmsnorm_forward(a->lnf, a->lnf_rstd, a->residual3 + (L - 1) * N * C, tensor(m, P, LR_NORM), n_last, C,
                               c->layer_norm_epsilon);
    float *tlp = token_logp ? token_logp : (seq_logp ? a->d_residual : NULL);
    if (c->num_labels) { /* a reward model has no LM head: the score head reads a->lnf */
        if (tlp) memset(tlp, 0, N * sizeof(float));
    } else {
        a->skip_unweighted = b->skip_unweighted;
        a->fused_head = b->fused_head;
        if (b->fused_head) { /* rows with a target (and a weight, if skipping) only, never [N, V] */
            head_fused_forward(m, head, tlp);
        } else {
            head_materialised_forward(m, head, tlp);
        }
    }
    if (seq_logp)
        for (size_t s = 0; s < B; s++) {
            double sum = 0.0;
            for (size_t t = a->seq_offset[s]; t < a->seq_offset[s + 1]; t++) sum += (double)a->weights[t] * tlp[t];
            seq_logp[s] = (float)sum;
        }
    a->has_forward = 1;
    return 0;
}

const float *fdpo_llama_logits(const fdpo_gpt2 *m) {
    const llama_acts *a = m->llama ? &m->llama->acts : NULL;
    return a && a->has_forward && !a->fused_head && !m->config.num_labels ? a->logits : NULL;
}

const float *fdpo_llama_fused_logit_sums(const fdpo_gpt2 *m) {
    const llama_acts *a = m->llama ? &m->llama->acts : NULL;
    return a && a->has_forward && a->fused_head && !m->config.num_labels ? a->logit_sum : NULL;
}

const float *fdpo_llama_hidden(const fdpo_gpt2 *m) {
    return m->llama && m->llama->acts.has_forward && !m->llama->acts.head_rows_only ? m->llama->acts.lnf : NULL;
}

float *fdpo_llama_score_weight(fdpo_gpt2 *m, float *memory) {
    return m->llama && m->llama->role[LR_SCORE] >= 0 ? tensor(m, memory, LR_SCORE) : NULL;
}

static int llama_backward(fdpo_gpt2 *m, const float *d_token_logp, const float *d_lnf);
int fdpo_llama_backward(fdpo_gpt2 *m, const float *d_token_logp) {
    if (m->config.num_labels) return fdpo_error("llama backward: a reward model has no LM head (use the score backward)");
    return llama_backward(m, d_token_logp, NULL);
}
int fdpo_llama_backward_hidden(fdpo_gpt2 *m, const float *d_lnf) { return llama_backward(m, NULL, d_lnf); }

/* d_lnf == NULL: from d_token_logp through the LM head; else from the final hidden states */
static int llama_backward(fdpo_gpt2 *m, const float *d_token_logp, const float *d_lnf) {
    llama_acts *a = &m->llama->acts;
    if (!a->has_forward) return fdpo_error("llama backward: no forward pass to differentiate");
    const fdpo_gpt2_config *c = &m->config;
    size_t N = a->n_tokens, B = a->n_seq, C = c->n_embd, L = c->n_layer, NH = c->n_head, NKV = c->n_kv_head;
    size_t V = c->vocab_size, F = c->intermediate_size, hd = head_dim(c), QD = NH * hd, KD = NKV * hd;
    /* LoRA: the base is frozen, no base gradient (G NULL: the kernels skip NULL gradients) */
    float *P = m->params_memory, *G = fdpo_lora_frozen(m) ? NULL : m->grads_memory;
    int tied = m->llama->role[LR_HEAD] < 0;
    float *head = tied ? tensor(m, P, LR_EMBED) : tensor(m, P, LR_HEAD);
    float *dhead = !G ? NULL : tied ? tensor(m, G, LR_EMBED) : tensor(m, G, LR_HEAD);
    size_t n_last = N; /* rows of the last layer after its attention */
    if (d_lnf) {
        if (a->head_rows_only)
            return fdpo_error("llama backward_hidden: the forward (fused_head) ran the last layer on the LM head's "
                              "rows only; the other hidden states were not computed");
        memcpy(a->d_ln, d_lnf, N * C * sizeof(float));
    } else if (a->fused_head) { /* recompute the logits chunk by chunk; d head and d lnf accumulate */
        size_t K = 0; /* the rows with a gradient, packed; head_rows_only: exactly the forward's rows */
        for (size_t t = 0; t < N; t++) {
            if (a->targets[t] < 0 || (d_token_logp[t] == 0.0f && !a->head_rows_only)) continue;
            if (a->skip_unweighted && a->weights[t] == 0.0f) {
                if (d_token_logp[t] == 0.0f) continue;
                return fdpo_error("llama backward: d_token_logp[%zu] = %g but the forward skipped that token "
                                  "(skip_unweighted: its weight is 0)", t, (double)d_token_logp[t]);
            }
            a->head_rows[K] = t;
            a->head_targets[K] = a->targets[t];
            a->head_d[K] = d_token_logp[t];
            a->head_lse[K] = a->lse[t];
            K++;
        }
        size_t chunk = fdpo_lmhead_chunk(V);
        float *lnf_packed = a->d_residual; /* free until the blocks */
        if (a->head_rows_only) lnf_packed = a->lnf;
        else fdpo_k_gather_rows(lnf_packed, a->lnf, a->head_rows, K, C);
        fused_head_reserve(m, K, chunk);
        if (K > 0)
            fdpo_k_lmhead_logsoftmax_backward_chunked(a->d_ln, dhead, a->head_d, a->head_lse, a->head_targets, lnf_packed,
                                                      head,
                                                      a->precision == FDPO_PRECISION_BF16 ? w16_of(m, head, K, chunk)
                                                                                          : (fdpo_bf16_weight){NULL, NULL},
                                                      K, C, V, chunk, a->head_scratch, a->head_bf16, 0);
        if (a->head_rows_only) n_last = K; /* d lnf stays packed for the last layer */
        else fdpo_k_scatter_rows(a->d_ln, 0, N, a->head_rows, K, C);
    } else if (a->skip_unweighted) { /* the K rows of the forward's LM head, packed */
        size_t K = a->n_head_rows;
        for (size_t t = 0, k = 0; t < N; t++) {
            int in_head = k < K && a->head_rows[k] == t;
            if (in_head) a->head_d[k++] = a->targets[t] < 0 ? 0.0f : d_token_logp[t];
            else if (a->targets[t] >= 0 && d_token_logp[t] != 0.0f)
                return fdpo_error("llama backward: d_token_logp[%zu] = %g but the forward skipped that token "
                                  "(skip_unweighted: its weight is 0)", t, (double)d_token_logp[t]);
        }
        for (size_t k = 0; k < K; k++) a->head_targets[k] = a->targets[a->head_rows[k]];
        float *lse_packed = a->d_q, *lnf_packed = a->d_residual; /* free until the blocks */
        for (size_t k = 0; k < K; k++) lse_packed[k] = a->lse[a->head_rows[k]];
        fdpo_k_gather_rows(a->logits, a->logits, a->head_rows, K, V);
        fdpo_k_gather_rows(lnf_packed, a->lnf, a->head_rows, K, C);
        if (K > 0) {
            fdpo_k_logsoftmax_backward(a->logits, lse_packed, a->head_targets, a->head_d, K, V);
            head_backward(m, a->d_ln, dhead, a->logits, lnf_packed, head, K);
        }
        fdpo_k_scatter_rows(a->d_ln, 0, N, a->head_rows, K, C);
    } else { /* the logits buffer becomes d logits */
        fdpo_k_logsoftmax_backward(a->logits, a->lse, a->targets, d_token_logp, N, V);
        head_backward(m, a->d_ln, dhead, a->logits, a->lnf, head, N);
    }
    memset(a->d_residual, 0, N * C * sizeof(float));
    fdpo_llama_rmsnorm_backward(a->d_residual, G ? tensor(m, G, LR_NORM) : NULL, a->d_ln, a->residual3 + (L - 1) * N * C,
                     tensor(m, P, LR_NORM), a->lnf_rstd, n_last, C);
#define GB(role, size) (G && tensor(m, G, role) ? tensor(m, G, role) + l * (size) : NULL)
    for (size_t l = L; l-- > 0;) {
        const float *residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * N * C;
        const float *ln1 = a->ln1 + l * N * C, *q = a->q + l * N * QD, *k = a->k + l * N * KD, *v = a->v + l * N * KD;
        const float *atty = a->atty + l * N * QD, *res2 = a->residual2 + l * N * C, *ln2 = a->ln2 + l * N * C;
        const float *gate = a->gate + l * N * F, *up = a->up + l * N * F;
        float *h = a->d_gate; /* the forward's silu(gate) * up, recomputed; d_gate once used */
        size_t n = l + 1 == L ? n_last : N; /* rows of this layer after its attention (packed if < N) */
        const float *o_in = atty;
        const size_t *lrows = n != N ? a->head_rows : NULL;
        if (n != N) { /* the forward's packed o_proj input again, in d_q (free until the attention's backward) */
            fdpo_k_gather_rows(a->d_q, atty, a->head_rows, n, QD);
            o_in = a->d_q;
        }
        fdpo_llama_swiglu_forward(h, gate, up, n * F);
        /* MLP: res3 = res2 + (silu(ln2 Wg^T) * (ln2 Wu^T)) Wd^T */
        linear_backward(m, a->d_h, GB(LR_DOWNW, C * F), GB(LR_DOWNB, C), a->d_residual, h,
                        tensor(m, P, LR_DOWNW) + l * C * F, n, F, C, 0);
        fdpo_lora_backward(m, FDPO_LORA_DOWN, l, a->d_h, a->d_residual, h, n, lrows);
        fdpo_llama_swiglu_backward(a->d_gate, a->d_h, a->d_h, gate, up, n * F); /* d_h becomes d up */
        linear_backward(m, a->d_ln, GB(LR_GATEW, F * C), GB(LR_GATEB, F), a->d_gate, ln2,
                        tensor(m, P, LR_GATEW) + l * F * C, n, C, F, 0);
        linear_backward(m, a->d_ln, GB(LR_UPW, F * C), GB(LR_UPB, F), a->d_h, ln2,
                        tensor(m, P, LR_UPW) + l * F * C, n, C, F, 1);
        fdpo_lora_backward(m, FDPO_LORA_GATE, l, a->d_ln, a->d_gate, ln2, n, lrows);
        fdpo_lora_backward(m, FDPO_LORA_UP, l, a->d_ln, a->d_h, ln2, n, lrows);
        fdpo_llama_rmsnorm_backward(a->d_residual, GB(LR_LN2, C), a->d_ln, res2, tensor(m, P, LR_LN2) + l * C,
                         a->ln2_rstd + l * N, n, C);
        /* attention: res2 = residual + attn(rope(ln1 Wq^T), rope(ln1 Wk^T), ln1 Wv^T) Wo^T */
        linear_backward(m, a->d_atty, GB(LR_OW, C * QD), GB(LR_OB, C), a->d_residual, o_in,
                        tensor(m, P, LR_OW) + l * C * QD, n, QD, C, 0);
        fdpo_lora_backward(m, FDPO_LORA_O, l, a->d_atty, a->d_residual, o_in, n, lrows);
        if (n != N) { /* back to the tokens' rows; the rows the last layer skipped get 0 */
            fdpo_k_scatter_rows(a->d_atty, 0, N, a->head_rows, n, QD);
            fdpo_k_scatter_rows(a->d_residual, 0, N, a->head_rows, n, C);
        }
        fdpo_llama_gqa_attention_backward(a->d_q, a->d_k, a->d_v, a->d_atty, q, k, v, atty, a->att_lse + l * N * NH,
                                          a->seq_offset, a->has_branch ? a->branch : NULL, B, NH, NKV, hd,
                                          fdpo_attention_bf16(a->precision));
        fdpo_llama_rope_backward(a->d_q, a->rope_cos, a->rope_sin, N, NH, hd);
        fdpo_llama_rope_backward(a->d_k, a->rope_cos, a->rope_sin, N, NKV, hd);
        /* frozen base (LoRA): below layer 0's q/k/v only the embedding would take a
         * gradient, and it has none, so their d input and ln1's backward are not computed */
        float *d_ln1 = l == 0 && !G ? NULL : a->d_ln;
        linear_backward(m, d_ln1, GB(LR_QW, QD * C), GB(LR_QB, QD), a->d_q, ln1,
                        tensor(m, P, LR_QW) + l * QD * C, N, C, QD, 0);
        linear_backward(m, d_ln1, GB(LR_KW, KD * C), GB(LR_KB, KD), a->d_k, ln1,
                        tensor(m, P, LR_KW) + l * KD * C, N, C, KD, 1);
        linear_backward(m, d_ln1, GB(LR_VW, KD * C), GB(LR_VB, KD), a->d_v, ln1,
                        tensor(m, P, LR_VW) + l * KD * C, N, C, KD, 1);
        fdpo_lora_backward(m, FDPO_LORA_Q, l, a->d_ln, a->d_q, ln1, N, NULL); /* (their d input unused at layer 0) */
        fdpo_lora_backward(m, FDPO_LORA_K, l, a->d_ln, a->d_k, ln1, N, NULL);
        fdpo_lora_backward(m, FDPO_LORA_V, l, a->d_ln, a->d_v, ln1, N, NULL);
        if (d_ln1)
            fdpo_llama_rmsnorm_backward(a->d_residual, GB(LR_LN1, C), a->d_ln, residual, tensor(m, P, LR_LN1) + l * C,
                                        a->ln1_rstd + l * N, N, C);
        if (m->on_layer_grads) m->on_layer_grads(m->on_layer_grads_ctx, l);   /* layer l is final (--allreduce-overlap) */
    }
#undef GB
    if (G) fdpo_llama_embed_backward(tensor(m, G, LR_EMBED), a->d_residual, a->tokens, N, C);
    a->has_forward = 0;
    return 0;
}
