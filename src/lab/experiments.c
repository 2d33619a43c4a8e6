/* The rows of `fdpo lab gap`, `bias` and `frontier` (DESIGN.md §4): a reward model's error
 * turned into a gap in the true reward, and the reward / entropy / divergence frontier. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/lab.h"

/* sum_y pi*(y) exp(eps/beta) eps with eps = |r - r_hat|: the price of moving pi* towards
 * responses whose reward is overstated by eps, at most exp(eps/beta) times their pi* mass.
 * Where pi* is tiny (below DBL_MIN, 0 once e^-745 underflows) or exp(eps/beta) overflows (past
 * eps/beta ~ 709) while their product may be ~1 and the whole bound, the term is formed from
 * log pi* (log_pistar, or NULL) as exp(log pi* + eps/beta) eps (dropping it read 0,
 * multiplying read inf: pi* = e^-400 at eps/beta = 800 is 1e174) */
double fdpo_lab_gap_bound(const double *pistar, const double *log_pistar, const double *reward,
                          const double *reward_hat, size_t n, double beta) {
    double bound = 0;
    for (size_t i = 0; i < n; i++) {
        double eps = fabs(reward[i] - reward_hat[i]);
        if (!(eps > 0)) continue;
        const int from_log = log_pistar && (pistar[i] < DBL_MIN || eps / beta > 700);
        if (!from_log) { if (pistar[i] > 0) bound += pistar[i] * exp(eps / beta) * eps; }
        else if (log_pistar[i] > -INFINITY) bound += exp(log_pistar[i] + eps / beta) * eps;
    }
    return bound;
}

int fdpo_lab_gap_noise(const fdpo_lab_problem *P, size_t prompts, double noise, uint64_t seed, size_t noise_index,
                       double *const *reward_hat) {
    if (!(noise >= 0) || !isfinite(noise)) return fdpo_error("--noise: must be >= 0 (got %g)", noise);
    fdpo_rng nr;
    fdpo_rng_seed(&nr, seed * 0x9E3779B97F4A7C15ULL + 1000003ULL * (noise_index + 1));
    for (size_t x = 0; x < prompts; x++)
        for (size_t i = 0; i < P[x].n; i++) reward_hat[x][i] = P[x].reward[i] + noise * fdpo_rng_normal(&nr);
    return 0;
}

int fdpo_lab_gap(const fdpo_divergence *d, double beta, const double *pi_ref, const double *reward,
                 const double *reward_hat, size_t n, double *pistar, double *pihat, fdpo_lab_gap_row *row) {
    fdpo_lab_prepared a, b;
    fdpo_lab_result rs, rh, eh;
    fdpo_lab_prepare(&a, pi_ref, reward, n);
    fdpo_lab_prepare(&b, pi_ref, reward_hat, n);
    double *log_pistar = fdpo_malloc(n * sizeof(double));
    int rc = fdpo_lab_solve_log(&a, d, beta, pistar, log_pistar, &rs);
    if (!rc) rc = fdpo_lab_solve(&b, d, beta, pihat, &rh);
    fdpo_lab_prepared_free(&a);
    fdpo_lab_prepared_free(&b);
    if (rc) { free(log_pistar); return rc; }
    fdpo_lab_evaluate(d, beta, pi_ref, reward, pihat, n, &eh); /* pi_hat judged by the true reward */
    row->reward_gap = rs.expected_reward - eh.expected_reward;
    /* both policies in the same sums: rs.objective (the solver's) against eh's differed by
     * their roundings, ~1e-16 beta, which was the whole gap at a large beta */
    row->objective_gap = fdpo_lab_objective_gap(d, beta, pi_ref, reward, pistar, pihat, n);
    row->bound = fdpo_lab_gap_bound(pistar, log_pistar, reward, reward_hat, n, beta);
    free(log_pistar);
    return 0;
}

int fdpo_lab_gap_mean(const fdpo_divergence *d, double beta, const fdpo_lab_problem *P,
                      const double *const *reward_hat, size_t prompts, fdpo_lab_gap_row *mean, int *bound_held) {
    memset(mean, 0, sizeof *mean);
    if (prompts < 1) return fdpo_error("--prompts: must be >= 1 (got %zu)", prompts);
    int rc = 0;
    for (size_t x = 0; rc == 0 && x < prompts; x++) {
        double *ps = fdpo_malloc(P[x].n * sizeof(double)), *ph = fdpo_malloc(P[x].n * sizeof(double));
        fdpo_lab_gap_row g;
        rc = fdpo_lab_gap(d, beta, P[x].pi_ref, P[x].reward, reward_hat[x], P[x].n, ps, ph, &g);
        mean->reward_gap += g.reward_gap / (double)prompts;
        mean->objective_gap += g.objective_gap / (double)prompts;
        mean->bound += g.bound / (double)prompts;
        free(ps); free(ph);
    }
    if (bound_held) *bound_held = mean->reward_gap <= mean->bound + 1e-12;
    return rc;
}

int fdpo_lab_bias(const fdpo_divergence *d, double beta, double bias, const fdpo_lab_problem *p, fdpo_lab_bias_row *row) {
    if (!p->length) return fdpo_error("the bias experiment needs response lengths (a 'length' column)");
    const size_t n = p->n;
    double *rh = fdpo_malloc(n * sizeof(double)), *ps = fdpo_malloc(n * sizeof(double)), *ph = fdpo_malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) rh[i] = p->reward[i] + bias * p->length[i];
    fdpo_lab_gap_row g;
    int rc = fdpo_lab_gap(d, beta, p->pi_ref, p->reward, rh, n, ps, ph, &g);
    if (rc == 0) {
        double ls = 0, lh = 0;
        for (size_t i = 0; i < n; i++) { ls += ps[i] * p->length[i]; lh += ph[i] * p->length[i]; }
        row->length_pistar = ls;
        row->length_pihat = lh;
        row->length_increase = lh - ls;
        row->reward_gap = g.reward_gap;
    }
    free(rh); free(ps); free(ph);
    return rc;
}

void fdpo_lab_beta_grid_default(fdpo_lab_beta_grid_opts *o) {
    o->beta_min = 0.01;
    o->beta_max = 10;
    o->n_betas = 50;
}

int fdpo_lab_beta_grid_check(const fdpo_lab_beta_grid_opts *o) {
    if (!(o->beta_min > 0) || !(o->beta_max >= o->beta_min) || !isfinite(o->beta_max))
        return fdpo_error("--beta-min/--beta-max: need 0 < min <= max (got %g, %g)", o->beta_min, o->beta_max);
    /* each beta is a solve per divergence and a table row: a million is past any plot */
    if (o->n_betas < 1 || o->n_betas > 1000000) return fdpo_error("--n-betas: must be in [1, 1000000] (got %ld)", o->n_betas);
    if (o->n_betas == 1 && o->beta_min != o->beta_max)   /* one point: --beta-max was dropped without a word */
        return fdpo_error("--n-betas 1: one beta, but --beta-min %g and --beta-max %g differ (give them equal, or "
                          "--n-betas 2 or more)", o->beta_min, o->beta_max);
    if (o->n_betas > 1 && o->beta_min == o->beta_max)   /* every point the one beta: its rows under one key */
        return fdpo_error("--n-betas %ld: %ld betas, but --beta-min and --beta-max are both %g (the grid would run it %ld "
                          "times: give --n-betas 1)", o->n_betas, o->n_betas, o->beta_min, o->n_betas);
    return 0;
}

int fdpo_lab_beta_grid(const fdpo_lab_beta_grid_opts *o, double **betas, size_t *n) {
    if (fdpo_lab_beta_grid_check(o)) return -1;
    const long nb = o->n_betas;
    const double lo = log(o->beta_min), hi = log(o->beta_max);
    *betas = fdpo_malloc((size_t)nb * sizeof(double));
    /* the ends exactly as given (exp(log 0.01) is 0.010000000000000004: its rows did not join
     * a --betas 0.01 run's), as numpy's geomspace does */
    for (long i = 0; i < nb; i++)
        (*betas)[i] = i == 0 ? o->beta_min : i == nb - 1 ? o->beta_max : exp(lo + (hi - lo) * (double)i / (double)(nb - 1));
    /* ends a few ulps apart: interior points round onto an end (a beta twice, two rows under one
     * key, as a repeat in --betas), or past it (exp(log 0.1) is 0.10000000000000002) */
    for (long i = 1; i < nb; i++)
        if (!((*betas)[i] > (*betas)[i - 1])) {
            /* each number as the shortest text that reads back (%g printed ends 1 ulp apart as equal) */
            const fdpo_number_text b = fdpo_shortest((*betas)[i]), prev = fdpo_shortest((*betas)[i - 1]);
            free(*betas);
            *betas = NULL;
            return fdpo_error("--beta-min %s --beta-max %s --n-betas %ld: the grid's betas must increase, but %s follows "
                              "%s (ends this close give a beta twice): fewer --n-betas, or ends further apart",
                              fdpo_shortest(o->beta_min).s, fdpo_shortest(o->beta_max).s, nb, b.s, prev.s);
        }
    *n = (size_t)nb;
    return 0;
}

int fdpo_lab_threshold_range(const char *spec, double **thresholds, size_t *n) {
    /* each part through the number reader of flags and lists: sscanf's %lf read hex
     * ("0x0.8" as 0.5), leading blanks, and 1e-400 as 0 */
    const char *c1 = strchr(spec, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2 || strchr(c2 + 1, ':'))
        return fdpo_error("--frontier: '%s' is not LO:HI:K with LO <= HI and 1 <= K <= 1e6", spec);
    char *s = fdpo_strdup(spec);
    s[c1 - spec] = s[c2 - spec] = 0;
    double lo = 0, hi = 0;
    long k = 0;
    int rc = fdpo_parse_number("--frontier LO", s, &lo) || fdpo_parse_number("--frontier HI", s + (c1 - spec) + 1, &hi) ||
             fdpo_parse_long("--frontier K", s + (c2 - spec) + 1, &k);
    free(s);
    if (rc) return -1;
    if (k < 1 || k > 1000000 || hi < lo)
        return fdpo_error("--frontier: '%s' is not LO:HI:K with LO <= HI and 1 <= K <= 1e6", spec);
    if (k == 1 && lo != hi)   /* one point: HI was dropped without a word */
        return fdpo_error("--frontier: '%s' is one threshold, but LO and HI differ (give LO:LO:1, or K >= 2)", spec);
    *thresholds = fdpo_malloc((size_t)k * sizeof(double));
    for (long i = 0; i < k; i++) (*thresholds)[i] = k == 1 ? lo : lo + (hi - lo) * (double)i / (double)(k - 1);
    for (long i = 1; i < k; i++)   /* increasing: a repeat (LO = HI with K >= 2) is a neighbour, as in the beta grid */
        if ((*thresholds)[i] == (*thresholds)[i - 1]) {
            double b = (*thresholds)[i];
            free(*thresholds);
            *thresholds = NULL;
            return fdpo_error("--frontier: '%s' gives threshold %g twice (its rows would share one key): "
                              "LO = HI needs K = 1", spec, b);
        }
    *n = (size_t)k;
    return 0;
}

int fdpo_lab_frontier(const fdpo_lab_prepared *pp, const fdpo_divergence *divs, size_t ndivs,
                      const double *betas, size_t nbetas, fdpo_lab_result *rows) {
    return fdpo_lab_frontier_prompts(pp, 1, divs, ndivs, betas, nbetas, rows);
}

/* One (divergence, beta) over every prompt: the mean of the per-prompt statistics (DESIGN §4's
 * objective is an expectation over prompts; pi*(.|x) depends on x's responses only). */
static int frontier_row(const fdpo_lab_prepared *pps, size_t n_prompts, const fdpo_divergence *d, double beta,
                        fdpo_lab_result *row) {
    fdpo_lab_result sum = {0};
    for (size_t x = 0; x < n_prompts; x++) {
        fdpo_lab_result r;
        if (fdpo_lab_solve(&pps[x], d, beta, NULL, &r))
            return n_prompts > 1 ? fdpo_error_context("prompt %zu of %zu", x + 1, n_prompts) : -1;
        if (n_prompts == 1) { *row = r; return 0; }
        sum.expected_reward += r.expected_reward;
        sum.entropy += r.entropy;
        sum.kl += r.kl;
        sum.f_divergence += r.f_divergence;
        sum.objective += r.objective;
        sum.support += r.support;
        if (r.iterations > sum.iterations) sum.iterations = r.iterations;
    }
    const double P = (double)n_prompts;
    *row = (fdpo_lab_result){.lambda = NAN, .expected_reward = sum.expected_reward / P, .entropy = sum.entropy / P,
                             .kl = sum.kl / P, .f_divergence = sum.f_divergence / P, .objective = sum.objective / P,
                             .support = sum.support, .iterations = sum.iterations};
    return 0;
}

int fdpo_lab_frontier_prompts(const fdpo_lab_prepared *pps, size_t n_prompts, const fdpo_divergence *divs,
                              size_t ndivs, const double *betas, size_t nbetas, fdpo_lab_result *rows) {
    /* validate up front: the parallel loop cannot stop at the first error */
    if (n_prompts < 1) return fdpo_error("frontier: no prompts");
    for (size_t b = 0; b < nbetas; b++)
        if (!(betas[b] > 0) || !isfinite(betas[b])) return fdpo_error("--betas: must be finite and > 0 (got %g)", betas[b]);
    for (size_t k = 0; k < ndivs; k++)
        if (divs[k].kind == FDPO_DIV_ALPHA && !(divs[k].alpha > 0 && divs[k].alpha < 1))
            return fdpo_error("--divergence alpha:%g: alpha must be in (0, 1)", divs[k].alpha);
    long long nt = (long long)(ndivs * nbetas), first = nt;
    char *msg = NULL; /* the first failed row's message (its solve's, naming divergence and beta): errors
                       * are per thread, so it is copied out, and the first in the table's order is kept */
#pragma omp parallel for schedule(dynamic, 1)
    for (long long k = 0; k < nt; k++)
        if (frontier_row(pps, n_prompts, &divs[k / (long long)nbetas], betas[k % (long long)nbetas], &rows[k])) {
#pragma omp critical(fdpo_lab_frontier_error)
            if (k < first) { first = k; free(msg); msg = fdpo_strdup(fdpo_last_error()); }
        }
    if (!msg) return 0;
    fdpo_error("frontier: %s", msg);
    free(msg);
    return -1;
}
