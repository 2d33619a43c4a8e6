/* The scalar head of a reward model, both families (Hugging Face
 * GPT2ForSequenceClassification / LlamaForSequenceClassification / Qwen2ForSequenceClassification
 * with num_labels = 1): r = score.weight . h_pool, h_pool the final hidden state (after
 * ln_f / model.norm) of a sequence's last token that is not pad_token_id, where
 * transformers pools. GPT-2 keeps score.weight as row vocab_size of wte (fdpo_gpt2_config);
 * Llama has it as its own tensor score.weight and no lm_head. */
#include <stdlib.h>
#include <string.h>
#include "fdpo/gpt2.h"
#include "fdpo/lora.h"
#include "model/gpt2_internal.h"
#include "model/llama_internal.h"

/* score.weight inside memory (params_memory or grads_memory) */
static float *score_in(fdpo_gpt2 *m, float *memory) {
    if (m->config.num_labels != 1 || !memory) return NULL;
    if (m->config.arch == FDPO_ARCH_LLAMA) return fdpo_llama_score_weight(m, memory);
    return memory + m->tensors[0].offset + m->config.vocab_size * m->config.n_embd;
}

/* a LoRA reward model trains its score head in the adapters' table (fdpo_lora_score) */
float *fdpo_gpt2_score_weight(fdpo_gpt2 *m) {
    float *w = m->lora ? fdpo_lora_score(m->lora, 0) : NULL;
    return w ? w : score_in(m, m->params_memory);
}

/* The packed batch of the last forward, whichever family ran it. */
typedef struct { size_t n_seq, n_tokens; const size_t *seq_offset; const int32_t *tokens; } last_batch;

static last_batch batch_of(const fdpo_gpt2 *m) {
    if (m->config.arch == FDPO_ARCH_LLAMA) {
        const llama_acts *a = &m->llama->acts;
        return (last_batch){a->n_seq, a->n_tokens, a->seq_offset, a->tokens};
    }
    return (last_batch){m->acts->n_seq, m->acts->n_tokens, m->acts->seq_offset, m->acts->tokens};
}

/* The row a sequence's reward is read at, as transformers pools: the rightmost token of
 * [s, e) that is not pad (pad < 0: the last token); a sequence of pad tokens only pools at
 * its first token (transformers' argmax of token_index * non_pad over zeros). */
static size_t pooled_row(const int32_t *tokens, size_t s, size_t e, int32_t pad) {
    if (pad < 0) return e - 1;
    for (size_t t = e; t-- > s;)
        if (tokens[t] != pad) return t;
    return s;
}

/* rewards [B] = h [pooled row of each sequence, C] . w [C] */
static void score_forward(float *rewards, const float *h, const float *w, const last_batch *lb, int32_t pad, size_t C) {
    for (size_t b = 0; b < lb->n_seq; b++) {
        const float *hb = h + pooled_row(lb->tokens, lb->seq_offset[b], lb->seq_offset[b + 1], pad) * C;
        double s = 0.0;
        for (size_t c = 0; c < C; c++) s += (double)w[c] * hb[c];
        rewards[b] = (float)s;
    }
}

/* dh [N, C] = d_rewards[b] * w on each sequence's pooled row, 0 elsewhere;
 * dw [C] += sum_b d_rewards[b] * h_pool_b */
static void score_backward(float *dh, float *dw, const float *d_rewards, const float *h, const float *w,
                           const last_batch *lb, int32_t pad, size_t C) {
    memset(dh, 0, lb->n_tokens * C * sizeof(float));
    for (size_t b = 0; b < lb->n_seq; b++) {
        size_t t = pooled_row(lb->tokens, lb->seq_offset[b], lb->seq_offset[b + 1], pad);
        for (size_t c = 0; c < C; c++) {
            dh[t * C + c] = d_rewards[b] * w[c];
            dw[c] += d_rewards[b] * h[t * C + c];
        }
    }
}

int fdpo_gpt2_score_forward(fdpo_gpt2 *m, const fdpo_batch *b, float *rewards) {
    const float *w = fdpo_gpt2_score_weight(m);
    if (!w) return fdpo_error("score forward: the model has no score head (a language model, num_labels 0)");
    if (fdpo_gpt2_forward(m, b, NULL, NULL)) return -1;
    last_batch lb = batch_of(m);
    score_forward(rewards, fdpo_gpt2_hidden(m), w, &lb, m->config.pad_token_id, m->config.n_embd);
    return 0;
}

int fdpo_gpt2_score_backward(fdpo_gpt2 *m, const float *d_rewards) {
    const float *w = fdpo_gpt2_score_weight(m);
    if (!w) return fdpo_error("score backward: the model has no score head");
    const float *h = fdpo_gpt2_hidden(m);
    if (!h) return fdpo_error("score backward: no forward pass to differentiate");
    if (!m->grads_memory && !fdpo_lora_frozen(m)) fdpo_gpt2_zero_grad(m);
    last_batch lb = batch_of(m);
    size_t C = m->config.n_embd;
    float *dh = fdpo_malloc(lb.n_tokens * C * sizeof(float));
    float *dw = m->lora ? fdpo_lora_score(m->lora, 1) : score_in(m, m->grads_memory);
    if (!dw) { free(dh); return fdpo_error("score backward: LoRA adapters on a reward model without its score head"); }
    score_backward(dh, dw, d_rewards, h, w, &lb, m->config.pad_token_id, C);
    int rc = fdpo_gpt2_backward_hidden(m, dh);
    free(dh);
    return rc;
}

/* Llama: every tensor of the reward model but score.weight is the LM's of the same name
 * (the LM's lm_head is dropped: LlamaForSequenceClassification has none) */
static void copy_llama_backbone(fdpo_gpt2 *rm, const fdpo_gpt2 *lm) {
    for (size_t i = 0; i < rm->n_tensors; i++)
        for (size_t j = 0; j < lm->n_tensors; j++)
            if (!strcmp(rm->tensors[i].name, lm->tensors[j].name)) {
                memcpy(rm->params_memory + rm->tensors[i].offset, lm->params_memory + lm->tensors[j].offset,
                       rm->tensors[i].numel * sizeof(float));
                break;
            }
}

fdpo_gpt2 *fdpo_gpt2_reward_model_from_lm(const fdpo_gpt2 *lm, double init_std, uint64_t seed,
                                          int32_t pad_token_id) {
    fdpo_gpt2_config c = lm->config;
    if (c.num_labels != 0) { fdpo_error("reward model from LM: the model already has a score head"); return NULL; }
    c.num_labels = 1;
    c.pad_token_id = pad_token_id;
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    if (!m) return NULL;
    if (c.arch == FDPO_ARCH_LLAMA) copy_llama_backbone(m, lm);
    else {
        /* same tensor order; only wte is one row longer, and it comes first */
        size_t wte_lm = lm->config.vocab_size * c.n_embd;
        memcpy(m->params_memory, lm->params_memory, wte_lm * sizeof(float));
        memcpy(m->params_memory + wte_lm + c.n_embd, lm->params_memory + wte_lm, (lm->n_params - wte_lm) * sizeof(float));
    }
    fdpo_rng rng;
    fdpo_rng_seed(&rng, seed);
    float *w = fdpo_gpt2_score_weight(m);
    for (size_t k = 0; k < c.n_embd; k++) w[k] = (float)(init_std * fdpo_rng_normal(&rng));
    return m;
}
