/* The scalar head of a GPT-2 reward model (Hugging Face GPT2ForSequenceClassification with
 * num_labels = 1): r = score.weight . h_last, h_last the final hidden state (after ln_f) of
 * a sequence's last token. score.weight is row vocab_size of wte (see fdpo_gpt2_config). */
#include <stdlib.h>
#include <string.h>
#include "fdpo/gpt2.h"
#include "model/gpt2_internal.h"

float *fdpo_gpt2_score_weight(fdpo_gpt2 *m) {
    if (m->config.num_labels != 1 || m->config.arch != FDPO_ARCH_GPT2) return NULL;
    return m->params.wte + m->config.vocab_size * m->config.n_embd;
}

/* rewards [B] = h [last token of each sequence, C] . w [C] */
static void score_forward(float *rewards, const float *h, const float *w, const size_t *seq_offset,
                          size_t B, size_t C) {
    for (size_t b = 0; b < B; b++) {
        const float *hb = h + (seq_offset[b + 1] - 1) * C;
        double s = 0.0;
        for (size_t c = 0; c < C; c++) s += (double)w[c] * hb[c];
        rewards[b] = (float)s;
    }
}

/* dh [N, C] = d_rewards[b] * w on each sequence's last row, 0 elsewhere;
 * dw [C] += sum_b d_rewards[b] * h_last_b */
static void score_backward(float *dh, float *dw, const float *d_rewards, const float *h, const float *w,
                           const size_t *seq_offset, size_t B, size_t N, size_t C) {
    memset(dh, 0, N * C * sizeof(float));
    for (size_t b = 0; b < B; b++) {
        size_t t = seq_offset[b + 1] - 1;
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
    score_forward(rewards, fdpo_gpt2_hidden(m), w, m->acts->seq_offset, b->n_seq, m->config.n_embd);
    return 0;
}

int fdpo_gpt2_score_backward(fdpo_gpt2 *m, const float *d_rewards) {
    const float *w = fdpo_gpt2_score_weight(m);
    if (!w) return fdpo_error("score backward: the model has no score head");
    const float *h = fdpo_gpt2_hidden(m);
    if (!h) return fdpo_error("score backward: no forward pass to differentiate");
    if (!m->grads_memory) fdpo_gpt2_zero_grad(m);
    fdpo_gpt2_acts *a = m->acts;
    size_t N = a->n_tokens, C = m->config.n_embd;
    float *dw = m->grads.wte + m->config.vocab_size * C;
    float *dh = fdpo_malloc(N * C * sizeof(float));
    score_backward(dh, dw, d_rewards, h, w, a->seq_offset, a->n_seq, N, C);
    int rc = fdpo_gpt2_backward_hidden(m, dh);
    free(dh);
    return rc;
}

fdpo_gpt2 *fdpo_gpt2_reward_model_from_lm(const fdpo_gpt2 *lm, double init_std, uint64_t seed,
                                          int32_t pad_token_id) {
    fdpo_gpt2_config c = lm->config;
    if (c.num_labels != 0) { fdpo_error("reward model from LM: the model already has a score head"); return NULL; }
    /* the score head rides on GPT-2's wte layout; a Llama family head is not written yet */
    if (c.arch != FDPO_ARCH_GPT2) {
        fdpo_error("reward model from LM: a %s model cannot get a score head yet (reward models are GPT-2 only, "
                   "docs/model.md#families)", c.model_type[0] ? c.model_type : "llama");
        return NULL;
    }
    c.num_labels = 1;
    c.pad_token_id = pad_token_id;
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    if (!m) return NULL;
    /* same tensor order; only wte is one row longer, and it comes first */
    size_t wte_lm = lm->config.vocab_size * c.n_embd;
    memcpy(m->params_memory, lm->params_memory, wte_lm * sizeof(float));
    memcpy(m->params_memory + wte_lm + c.n_embd, lm->params_memory + wte_lm, (lm->n_params - wte_lm) * sizeof(float));
    fdpo_rng rng;
    fdpo_rng_seed(&rng, seed);
    float *w = fdpo_gpt2_score_weight(m);
    for (size_t k = 0; k < c.n_embd; k++) w[k] = (float)(init_std * fdpo_rng_normal(&rng));
    return m;
}
