/* Exact optimum of max_pi E_pi[r] - beta D_f(pi || pi_ref) on a finite response set.
 *
 * KKT: r - beta f'(pi/pi_ref) - lambda + mu = 0, mu pi = 0, sum pi = 1.
 * - rkl: closed form, pi = softmax(log pi_ref + (r - r_max)/beta), lambda = r_max + beta (logsumexp - 1).
 * - fkl, js, alpha: pi = pi_ref g((r - lambda)/beta) with g = (f')^-1 increasing and convex,
 *   so h(lambda) = sum pi - 1 is convex and decreasing. Newton started left of the root (where
 *   h >= 0) then climbs monotonically to it without overshooting, quadratically at the end.
 *   Left start: every single term q_i g((r_i - lambda)/beta) reaches 1 at lambda_i = r_i -
 *   beta f'(1/q_i), and all terms are >= q_i at lambda = r_min - beta f'(1): the larger of these
 *   bounds has h >= 0. Right end (h <= 0): lambda = r_max - beta f'(1) (every u <= 1).
 * - chi2: pi = pi_ref max(0, 1 + (r - lambda)/(2 beta)); the support is a top-k set by reward,
 *   found by one scan of prefix sums in decreasing-reward order (like projecting on a simplex),
 *   every quantity taken relative to the support's lowest reward (no cancellation at any beta).
 * - tv: a linear program. Moving mass delta from y to y' changes the objective by
 *   delta (r(y') - r(y) - beta) (the penalty beta/2 |pi - pi_ref| is paid on both ends), so
 *   the optimum moves all the mass of every y with r(y) < r_max - beta onto the best
 *   response(s) (split in proportion to pi_ref among ties) and leaves the rest at pi_ref.
 *   lambda = r_max - beta/2. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/lab.h"

typedef struct { double r; size_t i; } keyed;
static int by_reward_desc(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    if (x->r > y->r) return -1;
    if (x->r < y->r) return 1;
    return x->i < y->i ? -1 : x->i > y->i; /* ties by index: deterministic */
}

void fdpo_lab_prepare(fdpo_lab_prepared *pp, const double *pi_ref, const double *reward, size_t n) {
    pp->n = n;
    pp->pi_ref = pi_ref;
    pp->reward = reward;
    pp->log_pi_ref = fdpo_malloc(n * sizeof(double));
    pp->order_desc = fdpo_malloc(n * sizeof(size_t));
    pp->n_sorted = n;
    pp->r_min = INFINITY;
    pp->r_max = -INFINITY;
    keyed *k = fdpo_malloc(n * sizeof *k);
    for (size_t i = 0; i < n; i++) {
        pp->log_pi_ref[i] = log(pi_ref[i]);
        k[i].r = reward[i];
        k[i].i = i;
        if (reward[i] < pp->r_min) pp->r_min = reward[i];
        if (reward[i] > pp->r_max) pp->r_max = reward[i];
    }
    qsort(k, n, sizeof *k, by_reward_desc);
    for (size_t i = 0; i < n; i++) pp->order_desc[i] = k[i].i;
    free(k);
}

void fdpo_lab_prepared_free(fdpo_lab_prepared *pp) {
    free(pp->log_pi_ref);
    free(pp->order_desc);
    memset(pp, 0, sizeof *pp);
}

fdpo_lab_prepared *fdpo_lab_prepare_prompts(const fdpo_lab_problem *p, size_t *n_prompts) {
    const size_t np = p->prompt_offset ? p->n_prompts : 1;
    fdpo_lab_prepared *pps = fdpo_calloc(np, sizeof *pps);
    for (size_t x = 0; x < np; x++) {
        const size_t lo = p->prompt_offset ? p->prompt_offset[x] : 0, hi = p->prompt_offset ? p->prompt_offset[x + 1] : p->n;
        fdpo_lab_prepare(&pps[x], p->pi_ref + lo, p->reward + lo, hi - lo);
    }
    *n_prompts = np;
    return pps;
}

void fdpo_lab_prepared_free_prompts(fdpo_lab_prepared *pps, size_t n_prompts) {
    for (size_t x = 0; pps && x < n_prompts; x++) fdpo_lab_prepared_free(&pps[x]);
    free(pps);
}

/* (a - b)/beta, also where a - b overflows (rewards 1e308 and -1e308: the gap was inf, so at
 * beta = 1e308 the worse response's D = 2 read inf, its pi 0, and alpha's far branch, recomputing
 * it from log_gap, gave a pi summing to 1.5). h = gap_half(pp): 1 for the plain quotient (h a,
 * h b and the product by 1/h are then exact: the same double as before), 1/2 where the problem's
 * reward spread overflows, whose halves do not; doubling back is exact, or overflows only where
 * (a - b)/beta itself does. One multiplier for every element keeps the hot loops branch-free. */
static inline double gap_half(const fdpo_lab_prepared *pp) { return isinf(pp->r_max - pp->r_min) ? 0.5 : 1; }
static inline double scaled_gap(double a, double b, double beta, double h) { return (h * a - h * b) / beta * (1 / h); }

/* b + beta x (lambda, the objective), where it would be inf or NaN only by overflowing on the way
 * (beta x or b + beta x past DBL_MAX though the result is not: rewards and beta ~1e308), from halves.
 * A result beyond +-DBL_MAX stays +-inf, the double it rounds to. */
static inline double plus_beta_times(double y, double b, double beta, double x) {
    return isfinite(y) ? y : 2 * (0.5 * b + 0.5 * beta * x);
}

/* q (u log u - u + 1), from q, p = q u, u and lu = log u: KL(pi || pi_ref) is their sum
 * plus 1 - sum q (sum_stat_offset), as sum p = 1. Unlike sum p log u, whose terms are ~lu and
 * cancel to a sum ~lu^2, each term here is ~lu^2/2 itself, so a large beta (u ~ 1) keeps KL's
 * error relative to lu; near u = 1 in expm1 form, elsewhere from p (u overflows where p does
 * not: a subnormal pi_ref); p = 0 gives its limit, q. */
static double kl_term(double q, double p, double u, double lu) {
    if (p == 0) return q;
    return fabs(lu) < 1 ? q * (u * lu - expm1(lu)) : p * lu - p + q;
}

/* 1 - sum q (compensated): what the sums of kl_term and of fkl's standardised f leave out when
 * pi_ref, kept as given, sums to 1 only within the loader's 1e-9 */
static double sum_stat_offset(const double *q, size_t n) {
    double s = 0, c = 0;
    for (size_t i = 0; i < n; i++) {   /* Neumaier */
        double t = s + q[i];
        c += fabs(s) >= fabs(q[i]) ? (s - t) + q[i] : (q[i] - t) + s;
        s = t;
    }
    return (1 - s) - c;
}

/* Accumulates the statistics of pi one element at a time. */
typedef struct { double er, h, kl, df; size_t support; } acc;
static inline void acc_add(acc *a, const fdpo_divergence *d, double q, double logq, double r, double pi, double logpi, double u) {
    if (pi > 0) {
        a->er += pi * r;
        a->h -= pi * logpi;
        a->support++;
    }
    /* KL in kl_term's second-order form (the caller adds sum_stat_offset): the plain terms
     * pi (log pi - log q) are ~1/beta and cancel to a sum ~1/beta^2 (chi2's KL read -1e-16 at beta = 1e8) */
    a->kl += kl_term(q, pi, u, isfinite(u) ? log(u) : logpi - logq);
    /* q f(u) overflows where p f(u)/u does not: u log u past u ~ 2.5e305, and u = p/q itself
     * for a subnormal q (tv's D_f was inf, js's NaN); there eval's log-space form, exact there
     * since log p - log q is the ~700 it needs to be. pi = 0 keeps q f(0) (fkl's inf is D_f's). */
    double qf = q * fdpo_f(d, u);
    if (!isfinite(qf) && pi > 0) qf = fdpo_qf_log(d, logpi, logq);
    a->df += qf;
}
static void acc_finish(const acc *a, double beta, fdpo_lab_result *res) {
    res->expected_reward = a->er;
    res->entropy = a->h;
    res->kl = a->kl;
    res->f_divergence = a->df;
    res->objective = plus_beta_times(a->er - beta * a->df, a->er, beta, -a->df);
    res->support = a->support;
}

/* 1/A when it is a small whole number (alpha:0.5 -> 2): then (1 - A v)^(-1/A) is a few
 * multiplications instead of a log and an exp */
static int int_power(double A) {
    double k = 1 / A;
    return k == floor(k) && k <= 16 ? (int)k : 0;
}
static inline double ipow(double x, int k) {
    double y = x;
    for (int j = 1; j < k; j++) y *= x;
    return y;
}

/* fkl, js, alpha in the distance to the pole. (f')^-1(v) blows up as v -> sup; write
 * v_i = sup - eps_i with eps_i = tau + D_i, D_i = (r_max - r_i)/beta >= 0, so that
 * lambda = r_max - beta sup + beta tau and tau > 0 is the domain. Then
 *   fkl:   u = g(eps) = 1/eps
 *   js:    u = 1/expm1(eps)            (e^v/(2 - e^v) with v = log 2 - eps)
 *   alpha: u = (A eps)^(-1/A)          ((1 - A v)^(-1/A) with v = 1/A - eps)
 * g is decreasing and convex. Working in tau rather than lambda keeps the solution
 * representable when the best response has a tiny pi_ref: its u = 1/pi_ref needs
 * tau ~ pi_ref (1e-16 is fine), while lambda - (r_max - beta sup) would round to 0. */
/* e^x - 1: expm1 where the subtraction would cancel, the cheaper exp elsewhere (x > 0.5
 * loses under one bit) */
static inline double em1(double x) { return x > 0.5 ? exp(x) - 1 : expm1(x); }
static inline double g_eps(fdpo_div_kind kind, double A, int k, double eps) {
    if (kind == FDPO_DIV_FKL) return 1 / eps;
    if (kind == FDPO_DIV_JS) return 1 / em1(eps);
    double w = A * eps;
    return k ? ipow(1 / w, k) : exp(-log(w) / A);
}
/* eps with g(eps) = u */
static double g_inv(fdpo_div_kind kind, double A, double u) {
    if (kind == FDPO_DIV_FKL) return 1 / u;
    if (kind == FDPO_DIV_JS) return log1p(1 / u);
    return exp(-A * log(u)) / A;
}

/* A pi_ref known in log space (constrained's stepwise pi1) can be subnormal or 0 in doubles
 * with log q finite: q then keeps a few bits or none (e^-745.7 is 0, e^-744.4 is 5e-324, 3%
 * off), and the split between such best responses, and their share, come from log q. One given
 * as q (log q = lq: a CSV's 1e-320) is exact as it is, and log q ~ -745 would cost 1e-13. */
static inline int tiny_q(double q, double lq) { return q < DBL_MIN && lq > -INFINITY && log(q) != lq; }

/* A term whose eps = tau + D_i is subnormal, or whose u = g(eps) overflows though p = q u does
 * not (a best response with a tiny pi_ref: fkl's and js's u = 1/eps for eps < 5.6e-309,
 * alpha's already for A eps < DBL_MAX^-A). q * u was q * inf, and a subnormal eps keeps only
 * the bits its size leaves (11 at 1e-320: pi 5e-4 off), so both come from es = eps/c =
 * t + D_i/c, tau = c t (solve_tau's scale): p, log u and c q (-g'(eps)), the derivative in t. */
static double tiny_term(fdpo_div_kind kind, double A, int k, double q, double lq, double t, double c, double D,
                        double *lu, double *dp) {
    const double es = t + D / c, le = log(es) + log(c);
    if (kind == FDPO_DIV_ALPHA) {
        *lu = -(log(A) + le) / A;
        /* q / w^k by k divisions where 1/A = k (c is 1 then: tau < DBL_MIN needs A > 0.95), each
         * step <= p; else from logs, to ~|log u| 1e-16 relative as exp(log u) is anyway */
        double p = q;
        if (k && c == 1 && !tiny_q(q, lq)) for (int j = 0; j < k; j++) p /= A * es;
        else p = exp(lq + *lu);
        *dp = p / (A * es);   /* c q u / (A eps) */
        return p;
    }
    *lu = -le;   /* fkl 1/eps, js 1/expm1(eps) = 1/eps: eps < DBL_MIN here (u would not overflow) */
    /* a tiny q as q/c from log q: normal at c = 2^-128 down to q ~ 1e-346, and then (q/c)/es moves
     * with t to 1e-16 where exp(lq + lu), both ~745, steps by 1e-13 (Newton stalled at h ~ 1e-13) */
    const double qc = tiny_q(q, lq) ? exp(lq - log(c)) : q / c;
    const double p = qc >= DBL_MIN || !tiny_q(q, lq) ? qc / es : exp(lq + *lu);
    *dp = kind == FDPO_DIV_FKL ? p / es : p * (1 / es + c);   /* c q u^2, c q u (1 + u) */
    return p;
}

/* c q (-g'(eps)) for u = g(eps): fkl u^2, js u (1 + u), alpha u / (A eps) */
static inline double neg_dg(fdpo_div_kind kind, double A, double e, double u) {
    return kind == FDPO_DIV_FKL ? u * u : kind == FDPO_DIV_JS ? u * (1 + u) : u / (A * e);
}

/* h(tau) + 1 = sum q_i g(tau + D_i) and -h'(t) = c sum q_i (-g'(tau + D_i)), tau = c t */
static void sum_g(const fdpo_lab_prepared *pp, const fdpo_divergence *d, double beta, double t, double c,
                  double *s, double *ds) {
    const double *q = pp->pi_ref, *r = pp->reward, rmax = pp->r_max, A = d->alpha, tau = c * t, h = gap_half(pp);
    const int k = d->kind == FDPO_DIV_ALPHA ? int_power(A) : 0;
    const size_t n = pp->n;
    double a = 0, b = 0;
    /* the smallest eps is tau (D_i >= 0): where it is subnormal or its u overflows, some terms
     * need tiny_term, and a loop that checks each one (the plain loops stay branch-free) */
    if (tau < DBL_MIN || isinf(g_eps(d->kind, A, k, tau))) {
        double bt = 0, lu, dp;   /* bt: tiny terms' c q (-g'), already in t */
        for (size_t i = 0; i < n; i++) {
            double D = scaled_gap(rmax, r[i], beta, h), e = tau + D, u = g_eps(d->kind, A, k, e);
            if (e < DBL_MIN || isinf(u)) { a += tiny_term(d->kind, A, k, q[i], pp->log_pi_ref[i], t, c, D, &lu, &dp); bt += dp; }
            else { a += q[i] * u; b += q[i] * neg_dg(d->kind, A, e, u); }
        }
        *s = a;
        *ds = c * b + bt;
        return;
    }
    switch (d->kind) { /* one loop per kind so the branch leaves the hot loop */
    case FDPO_DIV_FKL:
        for (size_t i = 0; i < n; i++) {
            double e = tau + scaled_gap(rmax, r[i], beta, h), u = 1 / e;
            a += q[i] * u; b += q[i] * u * u;
        }
        break;
    case FDPO_DIV_JS:
        for (size_t i = 0; i < n; i++) {
            double e = tau + scaled_gap(rmax, r[i], beta, h), u = 1 / em1(e);
            a += q[i] * u; b += q[i] * u * (1 + u);
        }
        break;
    default:
        for (size_t i = 0; i < n; i++) {
            double e = tau + scaled_gap(rmax, r[i], beta, h), u = g_eps(FDPO_DIV_ALPHA, A, k, e);
            a += q[i] * u; b += q[i] * u / (A * e); /* -g'(eps) = u / (A eps) */
        }
        break;
    }
    *s = a;
    *ds = c * b;
}

/* tau's scale where the root can be subnormal: tau = TAU_SCALE t keeps t's 53 bits down to
 * tau ~ 1e-362 (a power of 2: t's arithmetic is tau's, exactly, wherever tau is normal) */
#define TAU_SCALE 0x1p-128

/* tau of the optimum, as tau = c t. Bracket: at tau_hi = g_inv(1) every u <= 1 (sum <= 1); at
 * tau_lo every single term q_i g(tau + D_i) of the best-rewarded responses reaches 1 (sum >= 1),
 * and g_inv(1) - D_max makes every u >= 1. Newton from tau_lo climbs monotonically (h convex
 * and decreasing) and ends quadratically; bisection guards the bracket. The bracket is taken
 * in units of TAU_SCALE, and c is 1 unless tau_lo < DBL_MIN (a subnormal pi_ref on a best
 * response, where the root is ~pi_ref: 1e-320 in doubles has 11 bits and Newton stalled there,
 * "did not converge"). */
static int solve_tau(const fdpo_lab_prepared *pp, const fdpo_divergence *d, double beta, double *t_out, double *c_out) {
    const fdpo_div_kind kind = d->kind;
    const double A = d->alpha, S = TAU_SCALE, h = gap_half(pp);
    double hi = g_inv(kind, A, 1.0), lo = hi / S - scaled_gap(pp->r_max, pp->r_min, beta, h) / S;
    size_t top = pp->n_sorted < 256 ? pp->n_sorted : 256; /* all n would cost a log per response per beta */
    for (size_t k = 0; k < top; k++) {
        size_t i = pp->order_desc[k];
        const double q = pp->pi_ref[i];
        /* g_inv(1/q)/S; for a subnormal q straight from q (1/q overflows or 1/(1/q) is q to its few
         * bits): fkl, js q (log1p(q) = q), from log q where that says more (tiny_q), alpha q^A/A in
         * logs, shaded by 1e-12 (the exp of a ~700 log is good to ~2e-13) to stay left of the root */
        const double lq = pp->log_pi_ref[i];
        const double gi = q >= DBL_MIN ? g_inv(kind, A, 1 / q) / S
                        : kind == FDPO_DIV_ALPHA ? exp(A * lq - log(A * S)) * (1 - 1e-12)
                        : tiny_q(q, lq) ? exp(lq - log(S)) * (1 - 1e-12) : q / S;
        double ti = gi - scaled_gap(pp->r_max, pp->reward[i], beta, h) / S;
        if (ti > lo) lo = ti;
    }
    if (!(lo > 0)) lo = 0;
    if (lo > hi / S) lo = hi / S;
    const double c = lo * S >= DBL_MIN ? 1 : S;
    if (c == 1) lo *= S; else hi /= S;
    double a = lo, b = hi, tau = lo, prev = INFINITY;   /* tau: t, in units of c */
    int it;
    for (it = 1; it <= 300; it++) {
        double s, ds;
        sum_g(pp, d, beta, tau, c, &s, &ds);
        double h = s - 1;
        if (!isfinite(h) || !isfinite(ds)) { /* only at tau = 0 (the pole) */
            a = tau;
            tau = 0.5 * (a + b);
            continue;
        }
        if (fabs(h) <= 1e-15) break;
        if (h > 0) a = tau; else b = tau;
        double next = tau + h / ds;
        /* bisect when Newton leaves the bracket or stops halving |h| (rounding-level noise):
         * geometrically while the bracket spans orders of magnitude, since the root can sit at
         * tau ~ pi_ref^A (1e-140) with the bracket's top at 1/A, which halving the interval
         * takes ~460 steps to reach (it ran out of iterations there, with sum pi = 0.06) */
        if (!(ds > 0) || !(next > a && next < b) || fabs(h) > 0.5 * prev)
            next = a > 0 && b > 4 * a ? sqrt(a) * sqrt(b) : 0.5 * (a + b);
        prev = fabs(h);
        if (!(next > a && next < b) || fabs(next - tau) <= 1e-16 * tau) break;
        tau = next;
    }
    *t_out = tau;
    *c_out = c;
    if (it > 300) {   /* out of iterations: a tau that is not the root is an error, not a result */
        double sum, ds;
        sum_g(pp, d, beta, tau, c, &sum, &ds);
        if (!(fabs(sum - 1) <= 1e-12)) return 0;
    }
    return it;
}

/* log(a - b) for a >= b, also where a - b overflows (rewards 1e308 and -1e308) */
static double log_gap(double a, double b) {
    double d = a - b;
    return isinf(d) ? log(0.5 * a - 0.5 * b) + M_LN2 : log(d);
}

int fdpo_lab_divergence_check(const fdpo_divergence *d) {
    if (d->kind == FDPO_DIV_ALPHA && !(d->alpha > 0 && d->alpha < 1))
        return fdpo_error("--divergence alpha:%g: alpha must be in (0, 1)", d->alpha);
    if (d->kind == FDPO_DIV_ALPHA && d->alpha < FDPO_LAB_ALPHA_MIN)
        return fdpo_error("alpha:%g: the lab solves alpha:A for A >= %g (below, its solver loses "
                          "accuracy as 1e-16/A); the optimum is then within O(A) of rkl's, the A -> 0 limit: give rkl",
                          d->alpha, FDPO_LAB_ALPHA_MIN);
    return 0;
}

int fdpo_lab_solve(const fdpo_lab_prepared *pp, const fdpo_divergence *d, double beta, double *pi, fdpo_lab_result *res) {
    return fdpo_lab_solve_log(pp, d, beta, pi, NULL, res);
}

int fdpo_lab_solve_log(const fdpo_lab_prepared *pp, const fdpo_divergence *d, double beta, double *pi, double *log_pi,
                       fdpo_lab_result *res) {
    if (fdpo_beta_check(beta)) return -1;
    if (pp->n == 0) return fdpo_error("no responses (n = 0)");
    if (fdpo_lab_divergence_check(d)) return -1;
    const size_t n = pp->n;
    const double *q = pp->pi_ref, *r = pp->reward, *lq = pp->log_pi_ref, h = gap_half(pp);
    acc a = {0};
    memset(res, 0, sizeof *res);
    switch (d->kind) {
    case FDPO_DIV_RKL: {
        /* v = log pi_ref + (r - r_max)/beta: the scores shifted by r_max/beta, which overflows
         * for a tiny beta (r/beta = inf - inf made every pi NaN, then 0, at beta = 1e-320);
         * the shifted score of the best response is finite, so logsumexp is */
        const double rmax = pp->r_max;
        double m = -INFINITY, z = 0;
        for (size_t i = 0; i < n; i++) { double v = lq[i] + scaled_gap(r[i], rmax, beta, h); if (v > m) m = v; }
        for (size_t i = 0; i < n; i++) z += exp(lq[i] + scaled_gap(r[i], rmax, beta, h) - m);
        double logz = m + log(z);
        res->lambda = plus_beta_times(rmax + beta * logz - beta, rmax, beta, logz - 1); /* beta (log sum pi_ref e^(r/beta) - 1) */
        for (size_t i = 0; i < n; i++) {
            const double lu = scaled_gap(r[i], rmax, beta, h) - logz, lp = lq[i] + lu, p = exp(lp);   /* lu = log(pi/pi_ref) */
            if (pi) pi[i] = p;
            if (log_pi) log_pi[i] = lp;
            if (p > 0) { a.er += p * r[i]; a.h -= p * lp; a.support++; }
            a.kl += kl_term(q[i], p, p > 0 ? exp(lu) : 0, lu);
        }
        a.kl += sum_stat_offset(q, n);
        a.df = a.kl;
        break;
    }
    case FDPO_DIV_FKL: case FDPO_DIV_JS: case FDPO_DIV_ALPHA: {
        /* A reference known in log space (constrained's stepwise pi1) can have its best-rewarded
         * responses underflow to q = 0 with log q finite: their u ~ 1/q needs a tau below the
         * smallest double. If the others leave mass at tau = 0 (s0 = sum q g(D) < 1 over D > 0), that
         * mass is the best responses', in proportion to q: the optimum up to a relative ~q/(1 - s0) */
        double t = 0, c = 1, pole = 0, lz = 0;
        const double A = d->alpha;
        const int k = d->kind == FDPO_DIV_ALPHA ? int_power(A) : 0;
        double qtop = 0, m = -INFINITY;
        for (size_t i = 0; i < n; i++)
            if (r[i] == pp->r_max) { qtop += q[i]; m = fmax(m, lq[i]); }
        if (qtop == 0 && m > -INFINITY) {
            double s0 = 0, z = 0;
            for (size_t i = 0; i < n; i++)
                if (r[i] == pp->r_max) z += exp(lq[i] - m);
                else s0 += q[i] * g_eps(d->kind, A, k, scaled_gap(pp->r_max, r[i], beta, h));
            if (s0 < 1) { pole = 1 - s0; lz = log(z); }
        }
        res->iterations = pole > 0 ? 1 : solve_tau(pp, d, beta, &t, &c);
        if (res->iterations == 0) {
            char div[64];
            fdpo_divergence_name(d, div, sizeof div);
            return fdpo_error("--divergence %s at beta %.17g: the solver did not converge in 300 iterations "
                              "(sum of pi off 1 by more than 1e-12)", div, beta);
        }
        const double tau = c * t;
        const double sup = fdpo_fprime_inv_sup(d);
        res->lambda = plus_beta_times(pp->r_max - beta * sup + beta * tau, pp->r_max, beta, tau - sup);
        /* u, log u and f(u) share their transcendentals (this pass dominates `frontier`):
         * fkl: u = 1/eps, f = -log u.
         * js: u = 1/expm1(eps), f from log u.
         * alpha: w = A eps, log u = -log(w)/A, f from log u. */
        for (size_t i = 0; i < n; i++) {
            if (pole > 0 && r[i] == pp->r_max) { /* at the pole: p from log q (D_f's q f(u) is 0 * inf) */
                /* lq - m exact, then log z: m + log z (~ -745) would round by 1e-13 (sum pi 1 + 2e-14) */
                const double lp = log(pole) + ((lq[i] - m) - lz), p = exp(lp);
                if (pi) pi[i] = p;
                if (log_pi) log_pi[i] = lp;
                if (p > 0) { a.er += p * r[i]; a.h -= p * lp; a.support++; }
                a.kl += kl_term(q[i], p, INFINITY, lp - lq[i]);
                a.df += fdpo_qf_log(d, lp, lq[i]);
                continue;
            }
            const double D = scaled_gap(pp->r_max, r[i], beta, h);
            double e = tau + D, u, lu, f;
            /* e = inf when (r_max - r)/beta overflows (a subnormal beta): u = 0, and log e, which
             * f needs (fkl: log e, alpha: w^(1-1/A)... in logs), is log(r_max - r) - log beta */
            const int far = isinf(e);
            if (d->kind == FDPO_DIV_FKL) {
                /* -log u standardised as -log u + u - 1 (f'(1) = -1: the -lu terms cancel to ~lu^2
                 * in the sum, as kl_term says), in expm1 form near u = 1 */
                u = 1 / e; lu = far ? -(log_gap(pp->r_max, r[i]) - log(beta)) : -log(e);
                f = fabs(lu) < 1 ? expm1(lu) - lu : (u - 1) - lu;
            } else if (d->kind == FDPO_DIV_JS) {
                double em = em1(e);
                /* u underflows to 0 past e ~ 709 (e + log u was inf - inf) */
                if (isinf(em)) { u = 0; lu = -e; }
                else { u = 1 / em; lu = -log(em); }
                /* f from lu in the shared table's form (fdpo_f_log), ~lu^2/4 near u = 1 (a large beta)
                 * with a relative error: u lu - (u + 1) log((u+1)/2) left an absolute 1e-16 there
                 * (D_f came out -3e-17) */
                f = fdpo_f_log(d, lu);
            } else {
                /* u = (A e)^(-1/A), from log w where w = A e overflows (0 * inf was NaN). f from lu in
                 * the shared table's forms (fdpo_f_log): the table's (u w - (1 - A) u - A)/(A(A - 1))
                 * cancels to ~1e-16/(1 - A) (D_f 10% off at A = 1 - 2e-16) and left 3e-16 at u = 1 */
                double w = A * e;
                lu = far ? -(log(A) + log_gap(pp->r_max, r[i]) - log(beta)) / A : -log(w) / A;
                u = far || !k ? exp(lu) : ipow(1 / w, k);
                f = fdpo_f_log(d, lu);
            }
            double p = tiny_q(q[i], lq[i]) ? exp(lq[i] + lu) : q[i] * u, qf = q[i] * f, dp;
            if (!far && (e < DBL_MIN || isinf(u))) {   /* a subnormal eps or an overflowing u: sum_g's tiny_term */
                p = tiny_term(d->kind, A, k, q[i], lq[i], t, c, D, &lu, &dp);
                u = exp(lu);
                qf = NAN;
            }
            /* q f(u) where it overflows (js's u lu - (u+1)(...) was inf - inf = NaN past u ~ 2.5e305,
             * alpha's u w past A DBL_MAX; fkl's u - 1 and every f where u itself does) from p, as
             * p f(u)/u (fdpo_f_over_u_log, eval's form for u > 1); fkl's standardised -q lu + p - q */
            if (!isfinite(qf)) qf = d->kind == FDPO_DIV_FKL ? p - q[i] - q[i] * lu : p * fdpo_f_over_u_log(d, lu);
            if (pi) pi[i] = p;
            if (log_pi) log_pi[i] = lq[i] + lu;
            if (p > 0) { a.er += p * r[i]; a.h -= p * (lq[i] + lu); a.support++; }
            a.kl += kl_term(q[i], p, u, lu);
            a.df += qf;
        }
        {   /* the standardised sums' 1 - sum q: KL's +, fkl's (f'(1) = -1) - */
            const double off = sum_stat_offset(q, n);
            a.kl += off;
            if (d->kind == FDPO_DIV_FKL) a.df -= off;
        }
        break;
    }
    case FDPO_DIV_CHI2: {
        if (pp->n_sorted < n) return fdpo_error("chi2: the problem was prepared without the full reward order");
        /* The support is the top k by reward. Anchored at its lowest reward r_k, with
         * A_k = sum_{j<=k} q_j (r_j - r_k) >= 0 (each term >= 0; A_k = A_(k-1) + Q_(k-1) (r_(k-1) - r_k)),
         * the optimum is pi_i = q_i ((r_i - r_k)/(2 beta) + c), c = (1 - A_k/(2 beta))/Q_k, and k
         * is the largest with c > 0, i.e. A_k < 2 beta (A_k grows with k). Every term is >= 0:
         * no cancellation, and no r/beta that overflows. The old form (r - lambda)/(2 beta) with
         * lambda = 2 beta + (P_k - 2 beta)/Q_k lost the support at beta = 1e-17 (r - 2 beta/q
         * rounds to r) and cancelled catastrophically above. */
        /* Rewards and A_k are held times h (gap_half): A_k and r_i - r_k overflow where the reward
         * spread does (1e308, -1e308 gave a point mass and lambda -inf), their halves do not; h = 1
         * is the plain form, to the bit */
        const size_t *ord = pp->order_desc;
        double Q = 0, A = 0, rk = r[ord[0]];   /* A: h A_k */
        for (size_t k = 0; k < n; k++) {
            size_t i = ord[k];
            double An = A + Q * (h * rk - h * r[i]);
            if (!(An / beta < 2 * h)) break;
            A = An; Q += q[i]; rk = r[i];
        }
        /* the support is {r >= rk} (ties with r_k add nothing to A_k, so they are all in) */
        const double c = (1 - 0.5 * (A / beta / h)) / Q, half = 0.5 / h;
        /* lambda = r_k + 2 beta (1 - c), written without the difference 1 - c */
        res->lambda = (h * rk + (A + h * beta * (2 * (Q - 1))) / Q) / h;
        double s = 0; /* normalised explicitly: the sum is 1 to rounding, now exactly a distribution */
        for (size_t k = 0; k < n && r[ord[k]] >= rk; k++) {
            size_t i = ord[k];
            s += q[i] * (h * r[i] - h * rk) / beta * half + q[i] * c;
        }
        for (size_t i = 0; i < n; i++) {
            double p = r[i] >= rk ? (q[i] * (h * r[i] - h * rk) / beta * half + q[i] * c) / s : 0;
            if (pi) pi[i] = p;
            if (log_pi) log_pi[i] = p > 0 ? log(p) : -INFINITY;
            acc_add(&a, d, q[i], lq[i], r[i], p, p > 0 ? log(p) : 0, p / q[i]);
        }
        a.kl += sum_stat_offset(q, n);
        break;
    }
    case FDPO_DIV_TV: {
        /* moved: r_max - r > beta, in the exact difference (r_max - beta rounds to r_max for a
         * tiny beta) */
        const double rmax = pp->r_max;
        double moved = 0, qtop = 0;
        for (size_t i = 0; i < n; i++) {
            if (rmax - r[i] > beta) moved += q[i];
            if (r[i] == rmax) qtop += q[i];
        }
        res->lambda = rmax - beta / 2;
        for (size_t i = 0; i < n; i++) {
            double p = rmax - r[i] > beta ? 0 : r[i] == rmax ? q[i] + moved * (q[i] / qtop) : q[i];
            if (pi) pi[i] = p;
            if (log_pi) log_pi[i] = p > 0 ? log(p) : -INFINITY;
            acc_add(&a, d, q[i], lq[i], r[i], p, p > 0 ? log(p) : 0, p / q[i]);
        }
        a.kl += sum_stat_offset(q, n);
        break;
    }
    }
    acc_finish(&a, beta, res);
    return 0;
}

/* q f~(u) for u = p/q, f~(u) = f(u) - f'(1)(u - 1): D_f(pi || pi_ref) = sum q f~(u) + f'(1)(1 - sum q)
 * for a distribution pi (f'(1) = 1 rkl, -1 fkl, 0 for the others). Near u = 1 (a large beta) q f(u)
 * is ~(u - 1) for rkl and fkl: summed plainly they cancel to the ~(u - 1)^2 D_f is, leaving an
 * absolute ~1e-16 that beta multiplies (gap's objective_gap was -2e-7 at beta 1e9 with no noise).
 * Each form here is ~(u - 1)^2 itself, as the solver's are (js and alpha: the table's own f, which
 * is); where u overflows (a subnormal pi_ref) from p and log u, as eval's log-space forms. */
static double std_term(const fdpo_divergence *d, double q, double lq, double p) {
    if (p == 0) return q * fdpo_f(d, 0) + (d->kind == FDPO_DIV_RKL ? q : d->kind == FDPO_DIV_FKL ? -q : 0);
    const double u = p / q, lu = isfinite(u) ? log(u) : log(p) - lq;
    double t;
    switch (d->kind) {
    case FDPO_DIV_RKL: return kl_term(q, p, u, lu);
    case FDPO_DIV_FKL: return fabs(lu) < 1 ? q * ((u - 1) - log1p(u - 1)) : p - q - q * lu;   /* -log u + u - 1 */
    case FDPO_DIV_ALPHA: t = q * fdpo_f_log(d, lu); break;
    default: t = q * fdpo_f(d, u); break;
    }
    return isfinite(t) ? t : fdpo_qf_log(d, log(p), lq);
}

/* D_f's f'(1)(1 - sum q), which the sum of std_term leaves out */
static double std_offset(const fdpo_divergence *d, const double *pi_ref, size_t n) {
    if (d->kind != FDPO_DIV_RKL && d->kind != FDPO_DIV_FKL) return 0;
    const double off = sum_stat_offset(pi_ref, n);
    return d->kind == FDPO_DIV_RKL ? off : -off;
}

void fdpo_lab_evaluate(const fdpo_divergence *d, double beta, const double *pi_ref, const double *reward,
                       const double *pi, size_t n, fdpo_lab_result *res) {
    acc a = {0};
    memset(res, 0, sizeof *res);
    for (size_t i = 0; i < n; i++) {
        const double q = pi_ref[i], lq = log(q), p = pi[i];
        if (p > 0) {
            const double lp = log(p), u = p / q;
            a.er += p * reward[i];
            a.h -= p * lp;
            a.support++;
            a.kl += kl_term(q, p, u, isfinite(u) ? log(u) : lp - lq);
        } else a.kl += q;
        a.df += std_term(d, q, lq, p);
    }
    a.kl += sum_stat_offset(pi_ref, n);
    a.df += std_offset(d, pi_ref, n);
    acc_finish(&a, beta, res);
    res->lambda = NAN;
}

double fdpo_lab_objective_gap(const fdpo_divergence *d, double beta, const double *pi_ref, const double *reward,
                              const double *pi_a, const double *pi_b, size_t n) {
    double dr = 0, ddf = 0;
    for (size_t i = 0; i < n; i++) {
        if (pi_a[i] == pi_b[i]) continue;   /* the same term on both sides: exactly 0 */
        const double lq = log(pi_ref[i]);
        dr += (pi_a[i] - pi_b[i]) * reward[i];
        ddf += std_term(d, pi_ref[i], lq, pi_a[i]) - std_term(d, pi_ref[i], lq, pi_b[i]);
    }
    return dr - beta * ddf;
}
