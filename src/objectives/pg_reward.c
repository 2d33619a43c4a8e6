/* The f-penalised policy-gradient reward and the group advantages of RLOO and GRPO
 * (DESIGN.md §4 "Policy gradient with an f-penalty"). Pure functions shared by the RL
 * trainer, the lab's algorithm checks and the tests.
 *
 * Sequence level, u = pi(y)/pi_ref(y), l = log u: grad_theta D_f(pi || pi_ref) =
 * E_pi[f'(u) grad log pi(y)], so maximising E[r] - beta D_f by REINFORCE uses the shaped
 * reward r - beta f'(u) (docs/rl.md derives it). */
#include <math.h>
#include <stdlib.h>
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

/* f''s exponent at l: fkl e^x with x = -l, alpha e^x/A with x = -A l (f' = (1 - e^x)/A); rkl and
 * js have none (returns 0: *has = 0) */
static double fprime_exponent(const fdpo_divergence *d, double l, int *has) {
    *has = d->kind == FDPO_DIV_FKL || d->kind == FDPO_DIV_ALPHA;
    return d->kind == FDPO_DIV_FKL ? -l : d->kind == FDPO_DIV_ALPHA ? -d->alpha * l : 0;
}

/* The e^64 cap of fdpo_shaped_reward_pg (the f-DPO derivative's, fdpo_score_grad_capped) */
#define PG_EXP_CAP 64.0

void fdpo_pg_group_advantages(const fdpo_divergence *d, double beta, const double *reward, const double *log_ratio,
                              size_t k, int grpo, double grpo_eps, double *x, double *adv) {
    /* m: the group's largest exponent (NaN log-ratios skipped: their advantages come out NaN) */
    int has = 0;
    double m = -INFINITY;
    for (size_t i = 0; i < k; i++) {
        const double e = fprime_exponent(d, log_ratio[i], &has);
        if (e > m) m = e;
    }
    if (!has || !(m > PG_EXP_CAP)) {   /* the cap is not reached: the per-sample rule, bit for bit */
        for (size_t i = 0; i < k; i++) x[i] = fdpo_shaped_reward_pg(d, beta, reward[i], log_ratio[i]);
        if (grpo) fdpo_grpo_advantages(x, k, grpo_eps, adv);
        else fdpo_rloo_advantages(x, k, adv);
        return;
    }
    /* The group's shaped rewards times e^-s, s = m - 64, so that its largest exponent is the
     * cap's: RLOO's advantages are linear in them (the float64 ones times e^-s: their
     * direction at the cap's size), GRPO's are scale-free once eps is scaled too (the float64
     * ones themselves). Written as deviations from sample 0, which both functions take them
     * as: the penalty's constant cancels exactly and equal exponents leave the rewards'
     * difference (r_i - r_0) e^-s, which r_i e^-s + beta e^64 would round away. m = +inf (a
     * log-ratio of -inf): those samples take e^64 and every other term e^-inf = 0. */
    const double s = m - PG_EXP_CAP, scale = exp(-s), coef = d->kind == FDPO_DIV_ALPHA ? beta / d->alpha : beta;
    const double e0 = fprime_exponent(d, log_ratio[0], &has);
    const double p0 = exp(e0 == m ? PG_EXP_CAP : e0 - s);
    for (size_t i = 0; i < k; i++) {
        const double e = fprime_exponent(d, log_ratio[i], &has);
        const double p = exp(e == m ? PG_EXP_CAP : e - s);
        /* shaped = r - beta f'(e^l) = r + coef e^x - (alpha: coef); minus sample 0's, times e^-s */
        x[i] = i == 0 ? 0 : (reward[i] - reward[0]) * scale + coef * (p - p0);
    }
    if (!grpo) { fdpo_rloo_advantages(x, k, adv); return; }
    /* every exponent the same: the penalties cancel and x is (r_i - r_0) e^-s, whose squares
     * underflow past s ~ 370 (sd 0: advantages of 3500, inf or 0 where the float64 ones are
     * +-0.95; a review's find). GRPO is scale-free: the rewards' deviations with eps itself. */
    size_t flat = 1;
    while (flat < k && fprime_exponent(d, log_ratio[flat], &has) == fprime_exponent(d, log_ratio[0], &has)) flat++;
    if (flat == k) {
        double *dev = fdpo_malloc(k * sizeof(double));
        for (size_t i = 0; i < k; i++) dev[i] = reward[i] - reward[0];
        fdpo_grpo_advantages(dev, k, grpo_eps, adv);
        free(dev);
        return;
    }
    const double eps = grpo_eps * scale;
    size_t same = 1;
    while (same < k && x[same] == x[0]) same++;
    if (!(eps > 0) && same == k) {   /* eps underflowed (s > ~745): equal x (sd 0) give 0, not 0/0 */
        for (size_t i = 0; i < k; i++) adv[i] = 0;
        return;
    }
    fdpo_grpo_advantages(x, k, eps, adv);
}

int fdpo_grpo_eps_check(double eps) {
    if (!(eps > 0) || !isfinite(eps)) return fdpo_error("--grpo-eps: must be > 0 (got %g)", eps);
    return 0;
}
