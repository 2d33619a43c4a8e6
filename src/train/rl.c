/* Policy gradient with an f-divergence penalty (include/fdpo/rl.h, docs/rl.md). */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/io.h"
#include "fdpo/rl.h"
#include "fdpo/train.h"

int fdpo_rl_algo_parse(const char *name, fdpo_rl_algo *a) {
    if (!strcmp(name, "rloo")) { *a = FDPO_RL_RLOO; return 0; }
    if (!strcmp(name, "grpo")) { *a = FDPO_RL_GRPO; return 0; }
    return fdpo_error("--algo: unknown algorithm '%s' (expected rloo, grpo)", name);
}

int fdpo_rl_config_check(const fdpo_rl_config *c) {
    const char *why;
    if (!fdpo_divergence_admissible(&c->div, &why)) return fdpo_error("--divergence: %s", why);
    if (!(c->beta > 0) || !isfinite(c->beta)) return fdpo_error("--beta: must be > 0 (got %g)", c->beta);
    if (c->k < 2) return fdpo_error("--n: RLOO/GRPO need at least 2 samples per prompt (got %zu)", c->k);
    if (c->algo == FDPO_RL_GRPO && !(c->grpo_eps > 0)) return fdpo_error("--grpo-eps: must be > 0 (got %g)", c->grpo_eps);
    return 0;
}

int fdpo_rl_step(fdpo_gpt2 *m, const fdpo_rl_config *c, size_t n, int32_t *const *prompt, const size_t *n_prompt,
                 int32_t *const *comp, const size_t *n_comp, const double *reward, const double *ref_logp,
                 double *adv_out, fdpo_rl_metrics *out) {
    if (fdpo_rl_config_check(c)) return -1;
    if (n == 0 || n % c->k) return fdpo_error("rl step: %zu samples is not a whole number of groups of %zu", n, c->k);
    /* packed batch: sample i = prompt + completion[0..n_comp-1); targets on completion tokens */
    size_t N = 0;
    for (size_t i = 0; i < n; i++) {
        if (n_prompt[i] < 1 || n_comp[i] < 1) return fdpo_error("rl step: sample %zu has an empty prompt or completion", i);
        N += n_prompt[i] + n_comp[i] - 1;
    }
    size_t *off = fdpo_malloc((n + 1) * sizeof(size_t));
    int32_t *tok = fdpo_malloc(N * sizeof(int32_t)), *tgt = fdpo_malloc(N * sizeof(int32_t));
    float *tlp = fdpo_malloc(N * sizeof(float)), *slp = fdpo_malloc(n * sizeof(float));
    float *dtok = fdpo_malloc(N * sizeof(float)), *dseq = fdpo_malloc(n * sizeof(float));
    double *shaped = fdpo_malloc(n * sizeof(double)), *adv = fdpo_malloc(n * sizeof(double));
    size_t t = 0, tokens = 0;
    for (size_t i = 0; i < n; i++) {
        off[i] = t;
        size_t P = n_prompt[i], L = n_prompt[i] + n_comp[i] - 1;
        for (size_t j = 0; j < L; j++) {
            tok[t + j] = j < P ? prompt[i][j] : comp[i][j - P];
            tgt[t + j] = j + 1 < P ? -1 : comp[i][j + 1 - P];
        }
        t += L;
        tokens += n_comp[i];
    }
    off[n] = t;
    fdpo_batch b = {n, N, off, tok, tgt, NULL, NULL, NULL};
    int rc = fdpo_gpt2_check_batch(m, &b);
    if (rc == 0) rc = fdpo_gpt2_forward(m, &b, tlp, slp);
    if (rc == 0) {
        memset(out, 0, sizeof *out);
        for (size_t i = 0; i < n; i++) {
            double l = (double)slp[i] - ref_logp[i];
            shaped[i] = fdpo_shaped_reward(&c->div, c->beta, reward[i], l);
            out->scores += reward[i];
            out->kl += l;
            out->entropy -= slp[i];
            out->shaped += shaped[i];
            out->logp += slp[i];
        }
        for (size_t g = 0; g < n / c->k; g++) {
            if (c->algo == FDPO_RL_RLOO) fdpo_rloo_advantages(shaped + g * c->k, c->k, adv + g * c->k);
            else fdpo_grpo_advantages(shaped + g * c->k, c->k, c->grpo_eps, adv + g * c->k);
        }
        double loss = 0, s2 = 0;
        for (size_t i = 0; i < n; i++) {
            loss -= adv[i] * slp[i] / (double)n;
            dseq[i] = (float)(-adv[i] / (double)n); /* dLoss/dlogp_i */
            s2 += adv[i] * adv[i];
            if (adv_out) adv_out[i] = adv[i];
        }
        out->loss = loss;
        out->scores /= (double)n; out->kl /= (double)n; out->entropy /= (double)n;
        out->shaped /= (double)n; out->logp /= (double)n;
        out->advantage_std = sqrt(s2 / (double)n);
        out->samples = n;
        out->tokens = tokens;
        fdpo_batch_seq_to_token_grad(&b, dseq, dtok);
        rc = fdpo_gpt2_backward(m, dtok);
    }
    free(off); free(tok); free(tgt); free(tlp); free(slp); free(dtok); free(dseq); free(shaped); free(adv);
    return rc;
}
