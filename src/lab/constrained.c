/* Constrained alignment: max_pi E[r] - beta D_f(pi || pi_ref) s.t. E_pi[g] >= b.
 *
 * The Lagrangian E[r + lambda g] - beta D_f - lambda b (lambda >= 0) is, for fixed lambda,
 * the unconstrained problem with reward r + lambda g, so pi*_lambda = pi_ref (f')^-1((r +
 * lambda g - mu)/beta) comes from fdpo_lab_solve. KKT: lambda >= 0, E[g] >= b, lambda (E[g] -
 * b) = 0. The dual is convex in lambda and its derivative is b - E_{pi*_lambda}[g], so
 * E_{pi*_lambda}[g] is non-decreasing. Explicitly, with w_i = pi_ref_i (f'^-1)'(v_i) >= 0:
 * dE[g]/dlambda = (1/beta) sum_i w_i (g_i - gbar_w)^2 >= 0 (gbar_w the w-weighted mean).
 * So: lambda* = 0 if pi*_0 meets the constraint, else the root of E_lambda[g] = b, bracketed
 * by doubling lambda and located by Brent's method (inverse quadratic interpolation guarded
 * by bisection).
 *
 * Stepwise: pi1 = optimum for r from pi_ref at beta; pi2 = optimum for g from pi1 at
 * beta/lambda*. For rkl, pi2 ∝ pi1 e^{lambda g/beta} ∝ pi_ref e^{(r + lambda g)/beta} = pi*:
 * exact. For other f, pi2 = pi_ref u1 u2 with u = (f')^-1 of each step's score, while pi* =
 * pi_ref (f')^-1(score1 + score2): (f')^-1 turns sums into products only when it is exp. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/lab.h"

enum { ST_OK = 0, ST_INFEASIBLE = 1, ST_NO_BRACKET = 2, ST_SOLVE = 3 };

#define TOP_K 256

typedef struct {
    size_t n;
    const double *pi_ref, *log_pi_ref, *reward, *safety;
    const fdpo_divergence *d;
    double beta;
    double *c;          /* r + lambda g */
    size_t *top;        /* indices of the TOP_K largest c (a min-heap while selecting) */
    int evals;
} dual;

/* min-heap of indices keyed by c, sift-down from i */
static void heap_down(size_t *h, size_t k, const double *c, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < k && c[h[l]] < c[h[m]]) m = l;
        if (r < k && c[h[r]] < c[h[m]]) m = r;
        if (m == i) return;
        size_t t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

/* pi*_lambda into pi; the inner solver only needs the largest rewards (its bracket), not a
 * full sort, so selection keeps each evaluation O(n) */
static int solve_at(dual *x, double lambda, double *pi, double *log_pi, fdpo_lab_result *res) {
    const size_t n = x->n, k = n < TOP_K ? n : TOP_K;
    double cmin = INFINITY, cmax = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double v = lambda > 0 ? x->reward[i] + lambda * x->safety[i] : x->reward[i];
        x->c[i] = v;
        if (v < cmin) cmin = v;
        if (v > cmax) cmax = v;
    }
    for (size_t i = 0; i < k; i++) x->top[i] = i;
    for (size_t i = k / 2; i-- > 0;) heap_down(x->top, k, x->c, i);
    for (size_t i = k; i < n; i++)
        if (x->c[i] > x->c[x->top[0]]) { x->top[0] = i; heap_down(x->top, k, x->c, 0); }
    fdpo_lab_prepared pp = {n, x->pi_ref, x->c, (double *)x->log_pi_ref, x->top, k, cmin, cmax};
    x->evals++;
    return fdpo_lab_solve_log(&pp, x->d, x->beta, pi, log_pi, res);
}

static double mean_under(const double *pi, const double *v, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += pi[i] * v[i];
    return s;
}

/* E_{pi*_lambda}[g] - b */
static int excess(dual *x, double lambda, double b, double *pi, double *out) {
    fdpo_lab_result r;
    if (solve_at(x, lambda, pi, NULL, &r)) return -1;
    *out = mean_under(pi, x->safety, x->n) - b;
    return 0;
}

/* Brent's root finder on [a, b] with f(a) < 0 <= f(b) (Brent 1973, "zero"). Returns the end
 * of the final bracket where f >= 0, so the reported policy meets the constraint. */
static int brent(dual *x, double bsafe, double gtol, double *pi, double a, double fa, double b, double fb, double *root) {
    double c = a, fc = fa, d = b - a, e = d;
    for (int it = 0; it < 200; it++) {
        if ((fb > 0 && fc > 0) || (fb < 0 && fc < 0)) { c = a; fc = fa; d = e = b - a; }
        if (fabs(fc) < fabs(fb)) { a = b; b = c; c = a; fa = fb; fb = fc; fc = fa; }
        /* the floor is the smallest double: a safety of scale ~1e308 puts lambda* near 1e-308,
         * and a floor of 1e-300 returned the bracket's end unrefined (E[g] 9% above b) */
        double tol = 2 * DBL_EPSILON * fabs(b) + DBL_TRUE_MIN, m = 0.5 * (c - b);
        /* done when the bracket is a few ulps wide, or when E[g] meets b from above to
         * rounding, gtol (a flat E[g](lambda) would otherwise need every bisection down to ulps) */
        if (fabs(m) <= tol || (fb >= 0 && fb <= gtol)) { *root = fb >= 0 ? b : c; return 0; }
        if (fabs(e) >= tol && fabs(fa) > fabs(fb)) {
            double s = fb / fa, p, q;
            if (a == c) { p = 2 * m * s; q = 1 - s; } /* secant */
            else {                                      /* inverse quadratic */
                double qq = fa / fc, r = fb / fc;
                p = s * (2 * m * qq * (qq - r) - (b - a) * (r - 1));
                q = (qq - 1) * (r - 1) * (s - 1);
            }
            if (p > 0) q = -q; else p = -p;
            if (2 * p < fmin(3 * m * q - fabs(tol * q), fabs(e * q))) { e = d; d = p / q; }
            else { d = m; e = m; }
        } else { d = m; e = m; }
        a = b; fa = fb;
        b += fabs(d) > tol ? d : (m > 0 ? tol : -tol);
        if (excess(x, b, bsafe, pi, &fb)) return -1;
    }
    *root = b;
    return 0;
}

static void stats(const double *pi, const dual *x, const fdpo_lab_result *r, fdpo_lab_constrained_result *res) {
    res->expected_reward = mean_under(pi, x->reward, x->n);
    res->expected_safety = mean_under(pi, x->safety, x->n);
    res->f_divergence = r->f_divergence;
    res->kl = r->kl;
    res->entropy = r->entropy;
    res->objective = res->expected_reward - x->beta * r->f_divergence;
}

/* The r-only optimum pi1 = pi*_0, computed once per (problem, divergence): it decides whether
 * a threshold is active and is the first step of the stepwise policy, which starts from log pi1
 * (pi1 underflows to 0 where a small beta leaves e^-1000: for rkl the second step must give
 * back exactly the joint optimum, which has mass there). */
typedef struct { double *pi1, *log_pi1; fdpo_lab_result r0; double e0, gmin, gmax; } base;

static int base_init(dual *x, base *bs) {
    bs->pi1 = fdpo_malloc(x->n * sizeof(double));
    bs->log_pi1 = fdpo_malloc(x->n * sizeof(double));
    if (solve_at(x, 0, bs->pi1, bs->log_pi1, &bs->r0)) return -1;
    bs->e0 = mean_under(bs->pi1, x->safety, x->n);
    bs->gmin = INFINITY; bs->gmax = -INFINITY;
    for (size_t i = 0; i < x->n; i++) { bs->gmax = fmax(bs->gmax, x->safety[i]); bs->gmin = fmin(bs->gmin, x->safety[i]); }
    return 0;
}

/* The stepwise policy's second step into ps: the optimum for g from pi1 at beta/lambda, pi1 given
 * in log space. Only pi1's support (log pi1 > -inf) takes part: the solver's pole sits at the
 * largest g with mass, and pi1 = 0 stays 0. */
static int step_two(const dual *x, const base *bs, double lambda, double *ps) {
    const size_t n = x->n;
    size_t m = 0, *idx = fdpo_malloc(n * sizeof *idx);
    double *buf = fdpo_malloc(4 * n * sizeof(double)), *q = buf, *lq = buf + n, *g = buf + 2 * n, *p = buf + 3 * n;
    for (size_t i = 0; i < n; i++)
        if (bs->log_pi1[i] > -INFINITY) { idx[m] = i; lq[m] = bs->log_pi1[i]; q[m] = exp(lq[m]); g[m] = x->safety[i]; m++; }
    dual y = *x;
    y.n = m; y.pi_ref = q; y.log_pi_ref = lq; y.reward = g; y.safety = g; y.beta = x->beta / lambda;
    fdpo_lab_result r;
    int rc = solve_at(&y, 0, p, NULL, &r);
    if (rc) fdpo_error_context("--stepwise's second step (for safety from pi1 at beta/lambda* = %.17g)", y.beta);
    memset(ps, 0, n * sizeof *ps);
    for (size_t j = 0; j < m; j++) ps[idx[j]] = p[j];
    free(idx); free(buf);
    return rc;
}

/* A threshold's solution. Returns an ST_ code; only ST_SOLVE leaves a message (the solver's,
 * in this thread's error: the sweep copies it out). hint (or NULL): {lambda, its E[g], a step}: a smaller threshold's lambda*, whose E[g]
 * is <= b, so the bracket starts there and first tries lambda + step; updated to this
 * threshold's lambda* and 1.5 x its increment. */
static int constrained_core(dual *x, const base *bs, double b, int stepwise, double hint[3], double *pi,
                            double *pi_step, fdpo_lab_constrained_result *res) {
    const size_t n = x->n;
    memset(res, 0, sizeof *res);
    res->feasible = 1;
    x->evals = 1; /* the shared r-only solve */
    fdpo_lab_result r = bs->r0;
    double lambda = 0;
    /* b <= min safety: every policy meets it (E[g] computed at lambda = 0 can round below a
     * constant safety s; --min-safety s was then refused as the largest safety) */
    if (bs->e0 >= b || b <= bs->gmin) memcpy(pi, bs->pi1, n * sizeof *pi);
    else {
        if (!(b < bs->gmax)) return ST_INFEASIBLE;
        double lo = 0, flo = bs->e0 - b, fhi;
        if (hint && hint[0] > 0 && hint[1] <= b) { lo = hint[0]; flo = hint[1] - b; }
        /* lambda's scale is reward per unit of safety: steps from beta / range(g), doubling */
        /* range(g) in halves: gmax - gmin overflows to inf for 1e308, -1e308, the step was 0 and
         * the doubling never moved hi (a hang); floored at the smallest double for the same reason */
        double step = lo > 0 ? fmax(hint[2], 1e-6 * lo) : fmax(0.5 * x->beta / (bs->gmax / 2 - bs->gmin / 2), DBL_TRUE_MIN),
               hi = lo + step;
        /* every bracket end, the first included, is clamped to 1e300 and the clamped one tried
         * once: a lambda* between the last lo and 1e300 was refused as out of reach (hi jumped
         * past the cap unevaluated), and a first step past the cap (safety +-1e-301, beta 1:
         * 5e300) was taken and returned as lambda* */
        for (int last = 0;;) {
            if (!(hi < 1e300)) {
                if (!(lo < 1e300)) return ST_NO_BRACKET;
                hi = 1e300; last = 1;
            }
            if (excess(x, hi, b, pi, &fhi)) return ST_SOLVE;
            if (fhi >= 0) break;
            if (last) return ST_NO_BRACKET;
            lo = hi; flo = fhi;
            step *= 2;
            hi = lo + step;
        }
        /* E[g] - b rounds at ~eps (|b| + max|g|): the 1 of the old 4 eps (1 + |b|) is kept where
         * max|g| >= 1 (no number moves there) and scaled down with the safety below it; an
         * absolute 4 eps accepted any E[g] >= b for safety of scale 1e-20..1e-300, and the first
         * bracket end came back as lambda* (12% off) */
        double gtol = 4 * DBL_EPSILON * (fabs(b) + fmin(1, fmax(fabs(bs->gmin), fabs(bs->gmax))));
        if (brent(x, b, gtol, pi, lo, flo, hi, fhi, &lambda)) return ST_SOLVE;
        if (solve_at(x, lambda, pi, NULL, &r)) return ST_SOLVE;
        res->active = 1;
    }
    res->lambda = lambda;
    res->evaluations = x->evals;
    stats(pi, x, &r, res);
    if (hint && res->active) { /* the last step of lambda* guesses the next one */
        hint[2] = hint[0] > 0 ? 1.5 * (lambda - hint[0]) : 0;
        hint[0] = lambda;
        hint[1] = res->expected_safety;
    }
    if (!stepwise) return ST_OK;
    res->stepwise = 1;
    double *ps = pi_step;
    if (lambda == 0) memcpy(ps, bs->pi1, n * sizeof *ps);
    else if (step_two(x, bs, lambda, ps)) return ST_SOLVE;
    double mx = 0, tv = 0, kl = 0;
    for (size_t i = 0; i < n; i++) {
        double dlt = fabs(ps[i] - pi[i]);
        if (dlt > mx) mx = dlt;
        tv += 0.5 * dlt;
        if (ps[i] > 0) kl += pi[i] > 0 ? ps[i] * log(ps[i] / pi[i]) : INFINITY;
    }
    res->step_expected_reward = mean_under(ps, x->reward, n);
    res->step_expected_safety = mean_under(ps, x->safety, n);
    res->step_max_abs_diff = mx;
    res->step_tv = tv;
    res->step_kl = kl;
    return ST_OK;
}

static int check_args(const fdpo_divergence *d, double beta) {
    const char *why;
    if (!fdpo_divergence_admissible(d, &why)) {
        char name[64];
        fdpo_divergence_name(d, name, sizeof name);
        return fdpo_error("--divergence %s: the constrained solver needs an admissible f (rkl, fkl, js, alpha:A): %s", name, why);
    }
    if (fdpo_beta_check(beta)) return -1;
    return 0;
}

static int check_inputs(const double *pi_ref, const double *reward, const double *safety, size_t n) {
    if (n == 0) return fdpo_error("no responses (n = 0)");
    for (size_t i = 0; i < n; i++) {
        if (!(pi_ref[i] > 0) || !isfinite(pi_ref[i])) return fdpo_error("pi_ref[%zu] = %g: must be finite and > 0", i, pi_ref[i]);
        if (!isfinite(reward[i])) return fdpo_error("reward[%zu] is not finite", i);
        if (!isfinite(safety[i])) return fdpo_error("safety[%zu] is not finite", i);
    }
    return 0;
}

static void dual_init(dual *x, const double *pi_ref, const double *log_pi_ref, const double *reward, const double *safety,
                      size_t n, const fdpo_divergence *d, double beta) {
    memset(x, 0, sizeof *x);
    x->n = n; x->pi_ref = pi_ref; x->log_pi_ref = log_pi_ref; x->reward = reward; x->safety = safety;
    x->d = d; x->beta = beta;
    x->c = fdpo_malloc(n * sizeof(double));
    x->top = fdpo_malloc((n < TOP_K ? n : TOP_K) * sizeof(size_t));
}

static int report(int st, double b, const double *safety, size_t n) {
    if (st == ST_INFEASIBLE) {
        double gmax = -INFINITY;
        for (size_t i = 0; i < n; i++) gmax = fmax(gmax, safety[i]);
        if (b > gmax) return fdpo_error("--min-safety %.17g: infeasible: the largest safety is %.17g, so no policy has E[safety] >= %g", b, gmax, b);
        return fdpo_error("--min-safety %.17g: equals the largest safety: only a point mass on the safest responses reaches it, "
                          "as lambda -> inf (no finite optimum with pi > pi_ref * 0)", b);
    }
    if (st == ST_NO_BRACKET) return fdpo_error("--min-safety %g: no lambda <= 1e300 reaches E[safety] = %g", b, b);
    return fdpo_error_context("constrained solve");
}

int fdpo_lab_constrained(const double *pi_ref, const double *reward, const double *safety, size_t n,
                         const fdpo_divergence *d, double beta, double min_safety, int stepwise,
                         double *pi, double *pi_step, fdpo_lab_constrained_result *res) {
    if (check_args(d, beta)) return -1;
    if (!isfinite(min_safety)) return fdpo_error("--min-safety: must be a finite number (got %g)", min_safety);
    if (check_inputs(pi_ref, reward, safety, n)) return -1;
    double *lq = fdpo_malloc(n * sizeof(double)), *pi_own = pi ? NULL : fdpo_malloc(n * sizeof(double));
    double *ps_own = stepwise && !pi_step ? fdpo_malloc(n * sizeof(double)) : NULL;
    for (size_t i = 0; i < n; i++) lq[i] = log(pi_ref[i]);
    dual x;
    dual_init(&x, pi_ref, lq, reward, safety, n, d, beta);
    base bs;
    int st = base_init(&x, &bs) ? ST_SOLVE
           : constrained_core(&x, &bs, min_safety, stepwise, NULL, pi ? pi : pi_own, pi_step ? pi_step : ps_own, res);
    free(x.c); free(x.top); free(lq); free(pi_own); free(bs.pi1); free(bs.log_pi1); free(ps_own);
    return st == ST_OK ? 0 : report(st, min_safety, safety, n);
}

typedef struct { double b; size_t t; } keyed_threshold;
static int by_threshold(const void *a, const void *b) {
    const keyed_threshold *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : (x->t > y->t) - (x->t < y->t);
}

int fdpo_lab_constrained_sweep(const double *pi_ref, const double *reward, const double *safety, size_t n,
                               const fdpo_divergence *divs, size_t nd, double beta,
                               const double *bs, size_t nb, int stepwise, fdpo_lab_constrained_result *rows) {
    for (size_t k = 0; k < nd; k++) if (check_args(&divs[k], beta)) return -1;
    if (check_inputs(pi_ref, reward, safety, n)) return -1;
    for (size_t t = 0; t < nb; t++) if (!isfinite(bs[t])) return fdpo_error("--frontier: threshold %g is not finite", bs[t]);
    double *lq = fdpo_malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) lq[i] = log(pi_ref[i]);
    /* increasing thresholds, so each lambda* brackets the next (lambda* is monotone in b) */
    keyed_threshold *order = fdpo_malloc(nb * sizeof *order);
    for (size_t t = 0; t < nb; t++) { order[t].b = bs[t]; order[t].t = t; }
    qsort(order, nb, sizeof *order, by_threshold);
    long long ndl = (long long)nd, first = ndl;
    char *msg = NULL; /* the first failed divergence's message (errors are per thread: copied out) */
    size_t done = 0, every = (nd * nb + 9) / 10;
    fdpo_progress pr;
    fdpo_progress_start(&pr, "constrained frontier", nd * nb);
    /* parallel over divergences; thresholds in order inside one, so rows do not depend on threads */
#pragma omp parallel for schedule(dynamic, 1)
    for (long long k = 0; k < ndl; k++) {
        dual x;
        dual_init(&x, pi_ref, lq, reward, safety, n, &divs[k], beta);
        double *pi = fdpo_malloc(n * sizeof(double)), *ps = stepwise ? fdpo_malloc(n * sizeof(double)) : NULL;
        base b0;
        double hint[3] = {0, 0, 0};
        int failed = base_init(&x, &b0);
        for (size_t j = 0; !failed && j < nb; j++) {
            fdpo_lab_constrained_result *row = &rows[(size_t)k * nb + order[j].t];
            int st = constrained_core(&x, &b0, order[j].b, stepwise, hint, pi, ps, row);
            if (st == ST_INFEASIBLE || st == ST_NO_BRACKET) {
                memset(row, 0, sizeof *row);
                row->lambda = row->expected_reward = row->expected_safety = row->f_divergence = row->kl = NAN;
                row->entropy = row->objective = NAN;
                row->step_expected_reward = row->step_expected_safety = row->step_max_abs_diff = row->step_tv = row->step_kl = NAN;
                row->stepwise = stepwise;
            } else if (st != ST_OK) failed = fdpo_error_context("--min-safety %.17g", order[j].b);
#pragma omp critical(fdpo_lab_constrained_progress)
            if (++done % every == 0) fdpo_progress_step(&pr, done, NAN, NAN, NAN, NAN, NULL); /* ~10 reports */
        }
        if (failed) {
#pragma omp critical(fdpo_lab_constrained_error)
            if (k < first) { first = k; free(msg); msg = fdpo_strdup(fdpo_last_error()); }
        }
        free(x.c); free(x.top); free(pi); free(ps); free(b0.pi1); free(b0.log_pi1);
    }
    fdpo_progress_end(&pr);
    free(lq); free(order);
    if (!msg) return 0;
    fdpo_error("constrained frontier: %s", msg);
    free(msg);
    return -1;
}
