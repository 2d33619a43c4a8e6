/* The f-penalised policy-gradient reward and the group advantages of RLOO and GRPO
 * (DESIGN.md §4 "Policy gradient with an f-penalty"). Pure functions shared by the RL
 * trainer, the lab's algorithm checks and the tests.
 *
 * Sequence level, u = pi(y)/pi_ref(y), l = log u: grad_theta D_f(pi || pi_ref) =
 * E_pi[f'(u) grad log pi(y)], so maximising E[r] - beta D_f by REINFORCE uses the shaped
 * reward r - beta f'(u) (docs/rl.md derives it). */
#include <math.h>
#include "fdpo/core.h"
#include "fdpo/objectives.h"

/* f'(e^l) = s(l) + the constant the score drops (rkl 1, js log 2, alpha 1/A, fkl 0): the
 * constant shifts every shaped reward of a group equally, so advantages ignore it, but the
 * logged reward is the true r - beta f'(u). */
static double fprime_from_score(const fdpo_divergence *d, double s) {
    switch (d->kind) {
    case FDPO_DIV_RKL: return s + 1;
    case FDPO_DIV_FKL: return s;
    case FDPO_DIV_JS: return s + M_LN2;
    case FDPO_DIV_ALPHA: return s;    /* the score keeps its 1/A: (1 - e^(-A l))/A = f'(u) */
    default: return NAN; /* tv, chi2: not admissible */
    }
}

double fdpo_fprime_log(const fdpo_divergence *d, double l) { return fprime_from_score(d, fdpo_score(d, l)); }

double fdpo_shaped_reward(const fdpo_divergence *d, double beta, double reward, double log_ratio) {
    return reward - beta * fdpo_fprime_log(d, log_ratio);
}

/* The shaped reward the advantages are computed from: they weigh grad log pi, so f''s exponent
 * is capped at the f-DPO derivative's e^64, not the score's 88.72 (an RLOO advantage of
 * beta e^88.72 = 3.4e38 beta made the backward's sums, and the gradient norm, inf) */
double fdpo_shaped_reward_pg(const fdpo_divergence *d, double beta, double reward, double log_ratio) {
    return reward - beta * fprime_from_score(d, fdpo_score_grad_capped(d, log_ratio));
}

/* RLOO (Ahmadian et al. 2024; TRL RLOOTrainer): adv_i = x_i - mean_{j != i} x_j. k >= 2. */
void fdpo_rloo_advantages(const double *shaped, size_t k, double *adv) {
    /* as deviations from shaped[0]: a group of equal rewards gives exactly 0 (sum / k is not
     * x in doubles at k = 3, 6, 7, ...) */
    double sum = 0;
    for (size_t i = 0; i < k; i++) sum += shaped[i] - shaped[0];
    for (size_t i = 0; i < k; i++) {
        const double d = shaped[i] - shaped[0];
        adv[i] = d - (sum - d) / (double)(k - 1);
    }
}

/* GRPO (Shao et al. 2024; TRL GRPOTrainer): adv_i = (x_i - mean) / (std + eps), std the
 * unbiased (k - 1) sample standard deviation as torch.std computes it. k >= 2. */
void fdpo_grpo_advantages(const double *shaped, size_t k, double eps, double *adv) {
    double mean = 0, ss = 0;   /* of the deviations from shaped[0], as in fdpo_rloo_advantages */
    for (size_t i = 0; i < k; i++) mean += shaped[i] - shaped[0];
    mean /= (double)k;
    for (size_t i = 0; i < k; i++) ss += (shaped[i] - shaped[0] - mean) * (shaped[i] - shaped[0] - mean);
    double sd = sqrt(ss / (double)(k - 1));
    for (size_t i = 0; i < k; i++) adv[i] = (shaped[i] - shaped[0] - mean) / (sd + eps);
}

int fdpo_grpo_eps_check(double eps) {
    if (!(eps > 0) || !isfinite(eps)) return fdpo_error("--grpo-eps: must be > 0 (got %g)", eps);
    return 0;
}
