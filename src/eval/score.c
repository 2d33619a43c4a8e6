/* Log-probabilities and per-position statistics of given completions under a policy and,
 * optionally, a reference: entropy, exact token-level KL and f-divergences. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/eval.h"

/* out [V] = log softmax(logits [V]) in double */
static void log_softmax_row(double *out, const float *logits, size_t V) {
    double mx = -INFINITY, s = 0;
    for (size_t v = 0; v < V; v++) if (logits[v] > mx) mx = logits[v];
    for (size_t v = 0; v < V; v++) s += exp((double)logits[v] - mx);
    double lse = mx + log(s);
    for (size_t v = 0; v < V; v++) out[v] = (double)logits[v] - lse;
}

double fdpo_token_divergences(const double *logp, const double *logq, size_t V,
                              const fdpo_divergence *divs, size_t n_div, double *fdiv) {
    double kl = 0;
    for (size_t k = 0; k < n_div; k++) fdiv[k] = 0;
    for (size_t v = 0; v < V; v++) {
        kl += exp(logp[v]) * (logp[v] - logq[v]);
        for (size_t k = 0; k < n_div; k++) fdiv[k] += fdpo_qf_log(&divs[k], logp[v], logq[v]);
    }
    return kl;
}

/* Logits of completion[t] given prompt + completion[<t], t < n_comp: [n_comp, V]. */
static int completion_logits(fdpo_decoder *d, const int32_t *prompt, size_t n_prompt,
                             const int32_t *completion, size_t n_comp, size_t V, float *logits) {
    size_t slot = 0, n = n_prompt;
    fdpo_decoder_reset(d, 0);
    if (fdpo_decoder_forward(d, 1, &slot, &n, prompt, logits, 0)) return -1;
    if (n_comp > 1) {
        n = n_comp - 1;
        if (fdpo_decoder_forward(d, 1, &slot, &n, completion, logits + V, 1)) return -1;
    }
    return 0;
}

int fdpo_score_sequence(fdpo_decoder *policy, fdpo_decoder *ref, const int32_t *prompt, size_t n_prompt,
                        const int32_t *completion, size_t n_comp, const fdpo_divergence *divs,
                        size_t n_div, fdpo_seq_score *out) {
    const fdpo_gpt2 *pm = fdpo_decoder_model(policy);
    size_t V = pm->config.vocab_size;
    out->logp = out->logp_ref = out->entropy_sum = out->kl_tok = 0;
    for (size_t k = 0; k < n_div; k++) out->fdiv_tok[k] = 0;
    out->n_positions = n_comp;
    if (n_prompt == 0) return fdpo_error("empty prompt (needs at least one token)");
    if (ref && fdpo_decoder_model(ref)->config.vocab_size != V)
        return fdpo_error("policy vocabulary %zu != reference vocabulary %zu", V,
                          fdpo_decoder_model(ref)->config.vocab_size);
    for (size_t t = 0; t < n_comp; t++)
        if (completion[t] < 0 || (size_t)completion[t] >= V)
            return fdpo_error("token id %d outside the vocabulary of %zu", completion[t], V);
    if (n_comp == 0) return 0;
    float *pl = fdpo_malloc(n_comp * V * sizeof(float));
    float *rl = ref ? fdpo_malloc(n_comp * V * sizeof(float)) : NULL;
    int rc = completion_logits(policy, prompt, n_prompt, completion, n_comp, V, pl);
    if (!rc && ref) rc = completion_logits(ref, prompt, n_prompt, completion, n_comp, V, rl);
    if (rc) { free(pl); free(rl); return -1; }
    /* per position: [logp, logp_ref, entropy, kl, fdiv...]; summed in order afterwards so
     * the result does not depend on the thread count */
    size_t stride = 4 + n_div;
    double *pos = fdpo_calloc(n_comp * stride, sizeof(double));
    #pragma omp parallel if (n_comp * V >= 65536)
    {
        double *lp = fdpo_malloc(2 * V * sizeof(double)), *lq = lp + V;
        #pragma omp for schedule(static)
        for (size_t t = 0; t < n_comp; t++) {
            double *o = pos + t * stride;
            log_softmax_row(lp, pl + t * V, V);
            o[0] = lp[completion[t]];
            double h = 0;
            for (size_t v = 0; v < V; v++) h -= exp(lp[v]) * lp[v];
            o[2] = h;
            if (ref) {
                log_softmax_row(lq, rl + t * V, V);
                o[1] = lq[completion[t]];
                o[3] = fdpo_token_divergences(lp, lq, V, divs, n_div, o + 4);
            }
        }
        free(lp);
    }
    for (size_t t = 0; t < n_comp; t++) {
        const double *o = pos + t * stride;
        out->logp += o[0]; out->logp_ref += o[1]; out->entropy_sum += o[2]; out->kl_tok += o[3];
        for (size_t k = 0; k < n_div; k++) out->fdiv_tok[k] += o[4 + k];
    }
    free(pos); free(pl); free(rl);
    return 0;
}
