/* The lab (DESIGN.md §4, §6): exact f-regularised alignment on finite problems.
 *
 *   max_pi  E_pi[r] - beta * D_f(pi || pi_ref)   over distributions pi on n responses.
 *
 * Admissible f (rkl, fkl, js, alpha): pi*(y) = pi_ref(y) (f')^-1((r(y) - lambda)/beta), lambda
 * the unique root of sum pi* = 1 (closed form for rkl). chi2: pi* = pi_ref max(0, 1 +
 * (r - lambda)/(2 beta)) (exact, sorted prefix sums). tv: the linear program's exact optimum
 * (mass of every response with r < r_max - beta moves to the best response). */
#ifndef FDPO_LAB_H
#define FDPO_LAB_H
#include <stddef.h>
#include "fdpo/core.h"
#include "fdpo/objectives.h"

/* One prompt's responses. reward_hat and length are optional (NULL). */
typedef struct {
    size_t n;
    double *pi_ref, *reward, *reward_hat, *length;
} fdpo_lab_problem;
void fdpo_lab_problem_free(fdpo_lab_problem *p);

/* Generated problems. pi_ref: "zipf" (pi_ref(k) ∝ k^-zipf_s), "dirichlet" (symmetric,
 * dirichlet_alpha), "uniform". reward: "gaussian" (N(0, reward_scale^2)) or "uniform"
 * (U(-reward_scale, reward_scale)). Lengths: integers uniform in [length_min, length_max]. */
typedef struct {
    const char *pi_ref_kind, *reward_kind;
    double zipf_s, dirichlet_alpha, reward_scale;
    long length_min, length_max;
} fdpo_lab_gen;
int fdpo_lab_generate(const fdpo_lab_gen *g, size_t n, fdpo_rng *rng, fdpo_lab_problem *p);

/* CSV with a header naming columns pi_ref, reward (required) and reward_hat, length
 * (optional), one row per response. Errors name FILE:LINE and the column. pi_ref must be > 0;
 * if it sums to 1 +- more than 1e-9 it is renormalised and *renormalised gets its old sum
 * (else 0). */
int fdpo_lab_read_csv(const char *path, fdpo_lab_problem *p, double *renormalised);
/* Validates an in-memory problem (what names it in messages). */
int fdpo_lab_validate(const fdpo_lab_problem *p, const char *what);

/* A problem prepared for many solves: log pi_ref and the order of rewards (for chi2). */
typedef struct {
    size_t n;
    const double *pi_ref, *reward;
    double *log_pi_ref;
    size_t *order_desc; /* indices by decreasing reward */
    double r_min, r_max;
} fdpo_lab_prepared;
void fdpo_lab_prepare(fdpo_lab_prepared *pp, const double *pi_ref, const double *reward, size_t n);
void fdpo_lab_prepared_free(fdpo_lab_prepared *pp);

typedef struct {
    double lambda;           /* KKT multiplier of sum pi = 1 (convention r - beta f'(u) - lambda + mu = 0) */
    double expected_reward;  /* E_pi[reward] (the reward the problem was solved with) */
    double entropy;          /* -sum pi log pi, nats */
    double kl;               /* KL(pi || pi_ref) */
    double f_divergence;     /* D_f(pi || pi_ref) = sum pi_ref f(pi/pi_ref) */
    double objective;        /* expected_reward - beta * f_divergence */
    size_t support;          /* #{pi > 0} */
    int iterations;          /* root-finder iterations (0 for closed forms) */
} fdpo_lab_result;

/* pi* for divergence d and beta > 0. pi may be NULL (statistics only, O(1) memory). */
int fdpo_lab_solve(const fdpo_lab_prepared *pp, const fdpo_divergence *d, double beta, double *pi,
                   fdpo_lab_result *res);
/* Statistics of a given pi under (pi_ref, reward) for divergence d; lambda left NaN. */
void fdpo_lab_evaluate(const fdpo_divergence *d, double beta, const double *pi_ref, const double *reward,
                       const double *pi, size_t n, fdpo_lab_result *res);

/* Bradley-Terry maximum likelihood on one prompt: minimise
 *   sum_k softplus(theta[loser_k] - theta[winner_k]) + ridge/2 * |theta|^2
 * by L-BFGS (convex; the ridge fixes the free constant: sum theta = 0 at the optimum, and
 * keeps never-compared or never-beaten responses finite). */
int fdpo_lab_bt_fit(size_t n, const size_t *winner, const size_t *loser, size_t m, double ridge,
                    double *theta, int *iterations);

/* Minimal L-BFGS (memory 10, backtracking Armijo line search). fg returns f(x) and writes g.
 * Stops when max|g| <= gtol or the line search can make no progress. Returns iterations. */
typedef double (*fdpo_lab_fg)(const double *x, double *g, void *ctx);
int fdpo_lab_lbfgs(size_t dim, double *x, fdpo_lab_fg fg, void *ctx, double gtol, int max_iter, double *gnorm_out);

/* Tabular f-DPO: policy pi_theta = softmax(theta) on n responses trained on the exact
 * expected loss over all unordered pairs (uniform weights) with Bradley-Terry labels
 * P(i > j) = sigma(r_i - r_j), flipped at rate label_noise, using fdpo_pref_loss_pair. */
typedef struct {
    double max_abs_diff;   /* max_y |pi_theta(y) - pi*(y)| */
    double loss;           /* final expected loss */
    double grad_norm;      /* final max |dL/dtheta| */
    int iterations;
} fdpo_lab_check_result;
int fdpo_lab_check(const fdpo_lab_prepared *pp, const fdpo_pref_loss *L, double label_noise,
                   double *pi_theta, fdpo_lab_check_result *res);

#endif
