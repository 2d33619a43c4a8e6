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

#ifdef __cplusplus
extern "C" {
#endif

/* One prompt's responses, or several prompts' (a CSV with a `prompt` column): then rows
 * prompt_offset[x] .. prompt_offset[x + 1] - 1 are prompt x's responses and pi_ref sums to 1
 * within each prompt. n_prompts = 0 and prompt_offset = NULL mean one prompt. reward_hat,
 * length and safety are optional (NULL). */
typedef struct {
    size_t n;
    double *pi_ref, *reward, *reward_hat, *length, *safety;
    size_t n_prompts, *prompt_offset;
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
/* The lab's default generated problem (every `fdpo lab` subcommand's --pi-ref, --zipf-s, ...):
 * Zipf pi_ref with s = 1, Gaussian rewards of sd 1, lengths in [10, 200]. */
void fdpo_lab_gen_default(fdpo_lab_gen *g);
int fdpo_lab_generate(const fdpo_lab_gen *g, size_t n, fdpo_rng *rng, fdpo_lab_problem *p);

/* A safety score for a generated problem: g = c * r / sd(r) + sqrt(1 - c^2) * N(0, 1), so
 * corr(g, r) ~ c (c < 0: the rewarded answers are the less safe ones). An error (naming
 * --safety-correlation) unless |c| <= 1. */
int fdpo_lab_generate_safety(fdpo_lab_problem *p, double correlation, fdpo_rng *rng);

/* CSV with a header naming columns pi_ref, reward (required) and reward_hat, length, safety,
 * prompt (optional), one row per response; a UTF-8 byte-order mark is skipped, a NUL byte is
 * an error. Errors name FILE:LINE and the column. pi_ref must be > 0 (subnormals are fine);
 * if it sums to 1 +- more than 1e-9 it is renormalised (overflow-safe: divided by its max
 * first) and *renormalised gets its old sum (inf if that overflows a double; else 0).
 * `prompt` is a label (any text without commas): each prompt's rows must be contiguous, and
 * pi_ref is normalised per prompt (*renormalised: the old sum of the first prompt that was
 * renormalised). A file with a prompt column always gets prompt_offset, even for one label. */
int fdpo_lab_read_csv(const char *path, fdpo_lab_problem *p, double *renormalised);
/* Validates an in-memory problem (what names it in messages). */
int fdpo_lab_validate(const fdpo_lab_problem *p, const char *what);

/* A problem prepared for many solves: log pi_ref and the order of rewards (for chi2). */
typedef struct {
    size_t n;
    const double *pi_ref, *reward;
    double *log_pi_ref;
    size_t *order_desc; /* indices by decreasing reward: the first n_sorted of them */
    size_t n_sorted;    /* n after fdpo_lab_prepare; chi2 needs all, the others use the top 256 */
    double r_min, r_max;
} fdpo_lab_prepared;
void fdpo_lab_prepare(fdpo_lab_prepared *pp, const double *pi_ref, const double *reward, size_t n);
void fdpo_lab_prepared_free(fdpo_lab_prepared *pp);
/* One prepared problem per prompt of p (rows prompt_offset[x] .. prompt_offset[x + 1] - 1), or
 * one for the whole of a problem without prompts; *n_prompts gets their number. The pointers
 * into p must outlive them. Freed by fdpo_lab_prepared_free_prompts. */
fdpo_lab_prepared *fdpo_lab_prepare_prompts(const fdpo_lab_problem *p, size_t *n_prompts);
void fdpo_lab_prepared_free_prompts(fdpo_lab_prepared *pps, size_t n_prompts);

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

/* Can fdpo_lab_solve solve d? alpha:A needs A >= FDPO_LAB_ALPHA_MIN: below it the solver's
 * distance to the pole, (A eps)^(-1/A) with A eps ~ 1, turns the rounding of eps into a
 * relative error of ~1e-16/A in pi (measured: 1.5e-6 at A = 1e-10, pi = pi_ref at 1e-20);
 * pi* is then within O(A) of rkl's, the A -> 0 limit. The error names the divergence. */
#define FDPO_LAB_ALPHA_MIN 1e-6
int fdpo_lab_divergence_check(const fdpo_divergence *d);
/* pi* for divergence d and beta > 0. pi may be NULL (statistics only, O(1) memory). */
int fdpo_lab_solve(const fdpo_lab_prepared *pp, const fdpo_divergence *d, double beta, double *pi,
                   fdpo_lab_result *res);
/* fdpo_lab_solve that also gives log pi (log_pi may be NULL): for rkl, fkl, js and alpha it is
 * log pi_ref + log u, finite where pi underflows (chi2, tv: log pi), so that pi can be the next solve's reference
 * (constrained's stepwise) in log space. pi_ref may then underflow to 0 where log_pi_ref is finite. */
int fdpo_lab_solve_log(const fdpo_lab_prepared *pp, const fdpo_divergence *d, double beta, double *pi,
                       double *log_pi, fdpo_lab_result *res);
/* Statistics of a given pi under (pi_ref, reward) for divergence d; lambda left NaN. pi is taken
 * as a distribution (sum 1): kl and D_f are summed in the solver's second-order forms, each term
 * ~(pi/pi_ref - 1)^2, so that their error stays relative to them at a large beta. */
void fdpo_lab_evaluate(const fdpo_divergence *d, double beta, const double *pi_ref, const double *reward,
                       const double *pi, size_t n, fdpo_lab_result *res);
/* objective(pi_a) - objective(pi_b) under (pi_ref, reward), objective = E[r] - beta D_f, summed as
 * per-response differences in fdpo_lab_evaluate's forms: exactly 0 where pi_a = pi_b, and no
 * rounding of either objective (~1e-16 |E[r]|) in a gap that can be far smaller */
double fdpo_lab_objective_gap(const fdpo_divergence *d, double beta, const double *pi_ref, const double *reward,
                              const double *pi_a, const double *pi_b, size_t n);

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
/* The loss fdpo_lab_check can train: simpo refused first (no pi_ref, so no pi* to compare
 * with; whatever the divergence, which simpo's own check would blame), then the loss's check
 * (fdpo_pref_loss_check). Errors name the flag. */
int fdpo_lab_check_loss_check(const fdpo_pref_loss *L);
/* What fdpo_lab_check refuses, on n responses, before it computes (it runs this first; a
 * caller runs it before it writes anything): fdpo_lab_check_loss_check, label_noise in
 * [0, 0.5), n >= 2. Errors name the flag. */
int fdpo_lab_check_validate(const fdpo_pref_loss *L, double label_noise, size_t n);

/* ---- experiments: the rows of `fdpo lab gap/bias/frontier/coverage` ---- */

/* pi* (solved with reward) against pi_hat (solved with reward_hat), both judged with the true
 * reward. bound = sum_y pi*(y) exp(eps(y)/beta) eps(y), eps = |reward - reward_hat|: the
 * reward-gap bound of DESIGN.md §4 (proved for rkl; reported for every f). log_pistar (or NULL):
 * log pi*, for the terms where pi* is below DBL_MIN and exp(eps/beta) huge. */
typedef struct { double reward_gap, objective_gap, bound; } fdpo_lab_gap_row;
double fdpo_lab_gap_bound(const double *pistar, const double *log_pistar, const double *reward,
                          const double *reward_hat, size_t n, double beta);
/* `fdpo lab gap`'s noisy reward model: reward_hat[x] = P[x].reward + noise * N(0, 1) for each
 * of the prompts problems (reward_hat[x]: P[x].n doubles), drawn from a stream seeded by
 * (seed, noise_index) alone, so a row does not depend on the other noise levels or on the
 * divergences. An error (naming --noise) unless noise is finite and >= 0. */
int fdpo_lab_gap_noise(const fdpo_lab_problem *P, size_t prompts, double noise, uint64_t seed, size_t noise_index,
                       double *const *reward_hat);
/* pistar, pihat: n doubles each (scratch; left holding the two policies). */
int fdpo_lab_gap(const fdpo_divergence *d, double beta, const double *pi_ref, const double *reward,
                 const double *reward_hat, size_t n, double *pistar, double *pihat, fdpo_lab_gap_row *row);

/* The mean of fdpo_lab_gap over prompts (reward_hat[x] for problem x); bound_held: the mean
 * reward gap is <= the mean bound (+1e-12 for rounding). */
int fdpo_lab_gap_mean(const fdpo_divergence *d, double beta, const fdpo_lab_problem *problems,
                      const double *const *reward_hat, size_t prompts, fdpo_lab_gap_row *mean, int *bound_held);

/* Length bias: r_hat = r + bias * length. Needs p->length. */
typedef struct { double length_pistar, length_pihat, length_increase, reward_gap; } fdpo_lab_bias_row;
int fdpo_lab_bias(const fdpo_divergence *d, double beta, double bias, const fdpo_lab_problem *p, fdpo_lab_bias_row *row);

/* `fdpo lab frontier`'s log-spaced beta grid: n_betas values from beta_min to beta_max (one:
 * beta_min). Defaults 0.01, 10, 50; the check (errors name --beta-min/--beta-max, --n-betas)
 * needs 0 < beta_min <= beta_max < inf, n_betas >= 1, and n_betas = 1 for equal ends; a grid
 * whose points do not increase (ends a few ulps apart: a beta twice) is refused too. *betas:
 * n_betas doubles (free). */
typedef struct { double beta_min, beta_max; long n_betas; } fdpo_lab_beta_grid_opts;
void fdpo_lab_beta_grid_default(fdpo_lab_beta_grid_opts *o);
int fdpo_lab_beta_grid_check(const fdpo_lab_beta_grid_opts *o);
int fdpo_lab_beta_grid(const fdpo_lab_beta_grid_opts *o, double **betas, size_t *n);

/* Every (divergence, beta) solve, rows[k * nbetas + b], in parallel over the pairs (each solve
 * is sequential, so the rows do not depend on the thread count). */
int fdpo_lab_frontier(const fdpo_lab_prepared *pp, const fdpo_divergence *divs, size_t ndivs,
                      const double *betas, size_t nbetas, fdpo_lab_result *rows);
/* The same over n_prompts prompts (pps[x]: prompt x), pi*(.|x) solved per prompt: each row is
 * the mean over prompts (uniform weight) of expected_reward, entropy (so H(Y|X)), kl,
 * f_divergence and objective; support is the sum over prompts, iterations the largest,
 * lambda NaN (it is per prompt). Prompts are summed in order inside one solve task, so the
 * rows do not depend on the thread count; with one prompt the rows equal fdpo_lab_frontier's. */
int fdpo_lab_frontier_prompts(const fdpo_lab_prepared *pps, size_t n_prompts, const fdpo_divergence *divs,
                              size_t ndivs, const double *betas, size_t nbetas, fdpo_lab_result *rows);

/* Coverage: for each N in n_comparisons and each prompt, draw N pairs from the data policy,
 * label them by Bradley-Terry on the true reward, fit r_hat (fdpo_lab_bt_fit) and compare
 * the pi_hat it induces with pi* for every divergence. Rows (N-major, nn * ndivs) are means
 * over prompts; pistar_coverage = pi*-mass of the responses seen in some comparison,
 * fit_rmse = RMS of the mean-centred r_hat - r. */
typedef enum { FDPO_LAB_DATA_REF, FDPO_LAB_DATA_OPTIMAL, FDPO_LAB_DATA_UNIFORM, FDPO_LAB_DATA_MIXTURE } fdpo_lab_data_policy;
int fdpo_lab_data_policy_parse(const char *name, fdpo_lab_data_policy *out); /* ref, optimal, uniform, mixture */
typedef struct { double reward_gap, objective_gap, pistar_coverage, fit_rmse; } fdpo_lab_coverage_row;
typedef struct {
    fdpo_lab_data_policy policy;
    fdpo_divergence data_div; /* the f whose pi* (at beta) "optimal" and "mixture" use */
    double beta, mixture, ridge;
    uint64_t seed;            /* the comparisons' own stream: adding divergences changes nothing */
    /* optional: called once per (N, prompt) with the comparisons and the fitted r_hat */
    void (*on_fit)(void *ctx, size_t n_comparisons, size_t prompt, const size_t *winner, const size_t *loser,
                   const double *reward_hat, size_t n);
    void *ctx;
} fdpo_lab_coverage_opts;
/* Defaults of `fdpo lab coverage`: policy ref, data_div rkl, beta 0.1, mixture 0.5, ridge 1e-3,
 * seed FDPO_DEFAULT_SEED, no on_fit. The options' check (errors name the flag): beta > 0,
 * mixture in [0, 1], ridge > 0. fdpo_lab_coverage_check adds what fdpo_lab_coverage also needs,
 * prompts >= 1 and every N in [1, 1e8] (--comparisons); fdpo_lab_coverage runs it first, and a
 * caller can run it before it loads or writes anything. */
void fdpo_lab_coverage_opts_default(fdpo_lab_coverage_opts *o);
int fdpo_lab_coverage_opts_check(const fdpo_lab_coverage_opts *o);
int fdpo_lab_coverage_check(const fdpo_lab_coverage_opts *o, size_t prompts, const size_t *n_comparisons, size_t nn);
int fdpo_lab_coverage(const fdpo_lab_coverage_opts *o, const fdpo_lab_problem *problems, size_t prompts,
                      const size_t *n_comparisons, size_t nn, const fdpo_divergence *divs, size_t ndivs,
                      fdpo_lab_coverage_row *rows);

/* ---- constrained alignment (`fdpo lab constrained`) ----
 *
 *   max_pi E_pi[r] - beta D_f(pi || pi_ref)   s.t.   E_pi[g] >= b
 *
 * for admissible f (rkl, fkl, js, alpha). KKT with a multiplier lambda >= 0: pi*_lambda is the
 * unconstrained optimum for the reward r + lambda g; E_{pi*_lambda}[g] is non-decreasing in
 * lambda. lambda* = 0 when pi*_0 already satisfies the constraint; otherwise the root of
 * E_{pi*_lambda}[g] = b, bracketed by doubling and found by Brent's method. b >= max g is
 * infeasible (only a point mass reaches max g, and only as lambda -> inf). */
typedef struct {
    int feasible;                  /* 0: min_safety >= max g (sweeps report the row; the rest NaN) */
    double lambda;                 /* lambda* >= 0 */
    int active;                    /* 1 when lambda* > 0 */
    double expected_reward, expected_safety, f_divergence, kl, entropy;
    double objective;              /* E[r] - beta D_f */
    int evaluations;               /* inner solves of the dual search */
    /* two-step alignment (stepwise = 1): pi1 = optimum for r from pi_ref at beta, then the
     * optimum for g from pi1 at beta / lambda* (pi1 itself when lambda* = 0) */
    int stepwise;
    double step_expected_reward, step_expected_safety;
    double step_max_abs_diff;      /* max_y |pi_step - pi*| */
    double step_tv;                /* 1/2 sum |pi_step - pi*| */
    double step_kl;                /* KL(pi_step || pi*) */
} fdpo_lab_constrained_result;
/* pi, pi_step: n doubles or NULL. stepwise: also fill the step_* fields (and pi_step). */
int fdpo_lab_constrained(const double *pi_ref, const double *reward, const double *safety, size_t n,
                         const fdpo_divergence *d, double beta, double min_safety, int stepwise,
                         double *pi, double *pi_step, fdpo_lab_constrained_result *res);
/* `fdpo lab constrained --frontier LO:HI:K`: K evenly spaced thresholds from LO to HI (K = 1:
 * LO). An error (naming --frontier and the text) unless LO <= HI are finite and 1 <= K <= 1e6,
 * and the K thresholds differ (LO = HI needs K = 1). *thresholds: K doubles (free). */
int fdpo_lab_threshold_range(const char *spec, double **thresholds, size_t *n);
/* Every (divergence, threshold) pair, rows[k * nthresholds + t], in parallel (OpenMP) over the
 * pairs; each row is computed sequentially, so rows do not depend on the thread count.
 * Infeasible thresholds give feasible = 0 rows instead of an error. */
int fdpo_lab_constrained_sweep(const double *pi_ref, const double *reward, const double *safety, size_t n,
                               const fdpo_divergence *divs, size_t ndivs, double beta,
                               const double *thresholds, size_t nthresholds, int stepwise,
                               fdpo_lab_constrained_result *rows);

#ifdef __cplusplus
}
#endif

#endif
