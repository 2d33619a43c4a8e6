/* The f-divergence table of DESIGN.md §2, paper convention (Wang et al. 2024).
 *
 * u = pi/pi_ref, l = log u. Scores s(l) are f'(e^l) with additive constants dropped (they
 * cancel in chosen - rejected). Exponents are capped at log(FLT_MAX) like TRL's cap_exp, so
 * a float trainer never sees inf; the cap is applied to the exponent. s'(l) has a lower cap,
 * GRAD_EXP_CAP: beyond it s'(l) is the derivative formula at that exponent (not TRL's zero
 * gradient of a clamp), so a sequence far below the reference still gets pushed in the right
 * direction, by a gradient the backward's sums and products keep within float (at 88.72 one
 * pair's per-token gradient of ~3e37 overflowed to inf in the backward). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/objectives.h"

static const char DIV_LIST[] = "rkl, fkl, js, alpha:A (0 < A < 1), tv, chi2";

int fdpo_divergence_parse(const char *spec, fdpo_divergence *d) {
    if (!spec || !*spec) return fdpo_error("divergence: empty spec (expected one of %s)", DIV_LIST);
    d->alpha = 0;
    if (!strcmp(spec, "rkl")) { d->kind = FDPO_DIV_RKL; return 0; }
    if (!strcmp(spec, "fkl")) { d->kind = FDPO_DIV_FKL; return 0; }
    if (!strcmp(spec, "js")) { d->kind = FDPO_DIV_JS; return 0; }
    if (!strcmp(spec, "tv")) { d->kind = FDPO_DIV_TV; return 0; }
    if (!strcmp(spec, "chi2")) { d->kind = FDPO_DIV_CHI2; return 0; }
    if (!strncmp(spec, "alpha", 5) && (spec[5] == ':' || spec[5] == 0)) {
        if (spec[5] == 0 || spec[6] == 0)
            return fdpo_error("divergence '%s': alpha needs a coefficient, e.g. alpha:0.5 (0 < A < 1)", spec);
        char *end;
        double a = strtod(spec + 6, &end);
        if (end == spec + 6 || *end || !isfinite(a) || !fdpo_number_is_decimal(spec + 6))
            return fdpo_error("divergence '%s': '%s' is not a number", spec, spec + 6);
        if (!(a > 0 && a < 1))
            return fdpo_error("divergence '%s': alpha must be in (0, 1) (paper convention: 0 -> rkl, 1 -> fkl; "
                              "TRL >= 0.29's alpha is 1 - A)", spec);
        d->kind = FDPO_DIV_ALPHA;
        d->alpha = a;
        return 0;
    }
    return fdpo_error("unknown divergence '%s' (expected one of %s)", spec, DIV_LIST);
}

int fdpo_divergence_parse_list(const char *spec, fdpo_divergence **out, size_t *count) {
    *out = NULL;
    *count = 0;
    if (!spec || !*spec) return fdpo_error("divergence list: empty (expected e.g. rkl,js,alpha:0.5)");
    if (!strcmp(spec, "all")) spec = "rkl,fkl,js,alpha:0.5,tv,chi2";
    size_t L = strlen(spec);   /* strtok skips empty items */
    if (spec[0] == ',' || spec[L - 1] == ',' || strstr(spec, ",,"))
        return fdpo_error("divergence list '%s': an empty item", spec);
    size_t cap = 1;
    for (const char *c = spec; *c; c++) cap += *c == ',';
    fdpo_divergence *d = fdpo_malloc(cap * sizeof *d);
    char *copy = fdpo_strdup(spec), *save = NULL;
    size_t n = 0;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (fdpo_divergence_parse(t, &d[n++])) { free(copy); free(d); return -1; }
        char a[96], b[96];   /* the same divergence twice (alpha:0.5 and alpha:0.50): its results' keys would repeat */
        fdpo_divergence_name(&d[n - 1], a, sizeof a);
        for (size_t k = 0; k + 1 < n; k++) {
            fdpo_divergence_name(&d[k], b, sizeof b);
            if (!strcmp(a, b)) { fdpo_error("divergence list '%s': %s given twice", spec, a); free(copy); free(d); return -1; }
        }
    }
    free(copy);
    if (n == 0) { free(d); return fdpo_error("divergence list '%s': no divergence in it", spec); }
    *out = d;
    *count = n;
    return 0;
}

void fdpo_divergence_name(const fdpo_divergence *d, char *buf, size_t n) {
    switch (d->kind) {
    case FDPO_DIV_RKL: snprintf(buf, n, "rkl"); break;
    case FDPO_DIV_FKL: snprintf(buf, n, "fkl"); break;
    case FDPO_DIV_JS: snprintf(buf, n, "js"); break;
    case FDPO_DIV_TV: snprintf(buf, n, "tv"); break;
    case FDPO_DIV_CHI2: snprintf(buf, n, "chi2"); break;
    case FDPO_DIV_ALPHA: {
        char num[64];
        fdpo_fmt_double(num, sizeof num, d->alpha);
        snprintf(buf, n, "alpha:%s", num);
        break;
    }
    }
}

int fdpo_beta_check(double beta) {
    if (!(beta > 0) || !isfinite(beta)) return fdpo_error("--beta: must be a finite number > 0 (got %g)", beta);
    return 0;
}

int fdpo_divergence_admissible(const fdpo_divergence *d, const char **why) {
    const char *reason = NULL;
    if ((unsigned)d->kind > FDPO_DIV_CHI2) reason = "an unknown divergence kind";
    else if (d->kind == FDPO_DIV_TV)
        reason = "total variation is not usable by f-DPO: f'(u) = sign(u - 1)/2 takes only two values, so f' is "
                 "not invertible and the optimum cannot be written as pi_ref * (f')^-1((r - lambda)/beta); the "
                 "optimum is a linear program that puts pi = 0 on low-reward responses, so the partition "
                 "function does not cancel (use `fdpo lab solve --divergence tv` to see it)";
    else if (d->kind == FDPO_DIV_CHI2)
        reason = "chi2 is not usable by f-DPO: 0 is in the domain of f'(u) = 2(u - 1) (f'(0) = -2 is finite), so the "
                 "constraint pi >= 0 binds, the optimum can hit zero (pi = pi_ref * max(0, 1 + (r - lambda)/(2 beta))) "
                 "and the partition function does not cancel (use `fdpo lab solve --divergence chi2` to see it)";
    else if (d->kind == FDPO_DIV_ALPHA && !(d->alpha > 0 && d->alpha < 1))
        reason = "alpha must be in (0, 1)";
    if (why) *why = reason;
    return reason == NULL;
}

/* log(FLT_MAX) rounded down at 4 decimals, as TRL's get_exp_cap does for float32. */
#define EXP_CAP 88.7228
/* e^64 ~ 6.2e27: s' beyond it is a gradient no step can follow (clipping keeps its direction
 * only), and 10 orders of magnitude below float's range leave the backward room */
#define GRAD_EXP_CAP 64.0
static double cap_exp_grad(double x) { return exp(x < GRAD_EXP_CAP ? x : GRAD_EXP_CAP); }

/* The alpha row in forms that keep every A in (0, 1) accurate. The table's
 * (u^(1-A) - (1-A) u - A)/(A(A-1)) subtracts numbers of size 1/A: at A = 1e-15 a token's
 * divergence was 15% off, at A = 1e-300 every f(u) came out 0 or 1. With u = e^l,
 *   f(u) = (u expm1(-A l)/A + expm1(l)) / (A - 1)         (A < 1/2; -> u log u - u + 1 as A -> 0)
 *        = (expm1(l) - expm1((1-A) l)/(1-A)) / A          (A >= 1/2; -> -log u + u - 1 as A -> 1)
 * the limits being rkl and fkl plus a linear term, which adds nothing to E_pi_ref[f]. Each is
 * used where its terms do not cancel: on the side of A where its denominator is not small,
 * and on each side of l = 0 in the arrangement that neither overflows nor cancels. */

/* expm1(A y)/A, -> y as A -> 0. Below |A y| = 1e-8 its series y (1 + x/2 + x^2/6) (the next
 * term, x^3/24, is under rounding): A y can be subnormal or 0 there (A = 1e-300) */
static double expm1_over(double A, double y) {
    const double x = A * y;
    return fabs(x) < 1e-8 ? y * (1 + x / 2 * (1 + x / 3)) : expm1(x) / A;
}

/* f(e^l) near l = 0, where both forms below subtract two O(l) terms to leave the ~l^2/2 f is:
 * a relative error ~1e-16/|l| (7e-7 at l = 1e-9). With
 * f(e^l) = (B e^l + A - e^(B l))/(A B), B = 1 - A, the power series in l is
 *   sum_{n>=2} c_n l^n/n!,  c_n = (1 - B^(n-1))/A = 1 + B + ... + B^(n-2)  (c_(n+1) = 1 + B c_n),
 * every coefficient positive and free of cancellation for every A; for |l| <= 1 it needs at
 * most ~20 terms (c_n <= n - 1), and its alternating signs for l < 0 lose under a digit. */
#define ALPHA_SERIES_MAX 1.0
static double alpha_f_series(double A, double l) {
    const double B = 1 - A;
    double c = 1, term = l * l / 2, s = term;   /* n = 2 */
    for (int n = 3; n < 40; n++) {
        c = 1 + B * c;
        term *= l / n;
        const double t = c * term;
        s += t;
        if (fabs(t) <= 0x1p-60 * fabs(s)) break;
    }
    return s;
}

/* f(e^l) for l <= 0, where f is bounded (f(0) = 1/(1-A)). For small A, once -A l > 1,
 * u (u^-A - 1) is u^(1-A) - u in two exps: u^-A alone overflows before u^(1-A) does */
static double alpha_f_low(double A, double l) {
    if (l == -INFINITY) return 1 / (1 - A);
    if (l >= -ALPHA_SERIES_MAX) return alpha_f_series(A, l);
    if (A >= 0.5) return (expm1(l) - expm1_over(1 - A, l)) / A;
    const double t = -A * l > 1 ? (exp(l - A * l) - exp(l)) / A : exp(l) * expm1_over(A, -l);
    return (t + expm1(l)) / (A - 1);
}

/* f(e^l)/e^l for l >= 0, -> 1/A as l -> inf. For A >= 1/2 the second form over u, with
 * e^-l expm1((1-A) l) as e^(-A l) - e^-l once (1-A) l > 1 (0 * inf far out otherwise) */
static double alpha_f_over_u_high(double A, double l) {
    if (l <= ALPHA_SERIES_MAX) return alpha_f_series(A, l) * exp(-l);
    if (A < 0.5) return (expm1_over(A, -l) - expm1(-l)) / (A - 1);
    const double B = 1 - A;
    const double t = B * l > 1 ? (exp(-A * l) - exp(-l)) / B : exp(-l) * expm1_over(B, l);
    return (-expm1(-l) - t) / A;
}

/* The js row, u log u - (u+1) log((u+1)/2), from l = log u without cancellation. Its two
 * terms are each ~u: near u = 1 they cancelled to the ~l^2/4 f is with an absolute 1e-16 (f
 * came out -1.1e-16 at l = 1e-9, where it is 2.5e-19), and far out u log u overflowed first.
 * With u = e^(2x), u + 1 = 2 e^x cosh x and u - 1 = 2 e^x sinh x, so
 *   f(u) = x (u - 1) - (u + 1) log cosh x = (1 + u) h(x),   h(x) = x tanh x - log cosh x,
 * h even, >= 0, ~x^2/2 near 0 and -> log 2: at most a factor 2 cancels in either form of h. */
static double js_h(double x) {
    x = fabs(x);
    if (x <= 1) {   /* log cosh x as log1p(2 sinh^2(x/2)): cosh x itself rounds to 1 below 1e-8 */
        const double s = sinh(x / 2);
        return x * tanh(x) - log1p(2 * s * s);
    }
    if (isinf(x)) return M_LN2;
    /* log cosh x = x + log1p(t) - log 2 and 1 - tanh x = 2t/(1 + t), t = e^-2x: h in terms
     * that tend to 0, so its limit log 2 is exact */
    const double t = exp(-2 * x);
    return M_LN2 - log1p(t) - 2 * x * t / (1 + t);
}

/* f(e^l)/e^l = (1 + e^-l) h(l/2): -> log 2 as l -> inf, +inf at l = -inf (f(0)/0). For
 * l < -700 the 1 is negligible and e^-l is split: it alone overflows past -l = 709.78, while
 * the product ~ e^-l log 2 is finite up to -l = 710.15 */
static double js_f_over_u(double l) {
    return l > -700 ? (1 + exp(-l)) * js_h(l / 2) : exp(-l - 1) * (M_E * js_h(l / 2));   /* -l - 1 is exact there */
}

/* f(e^l); for l > 0 as e^l f(u)/u with e^l split where it alone overflows (past l = 709.78,
 * while f ~ u log 2 is finite up to l = 710.15) */
static double js_f_log(double l) {
    if (!(l > 0)) return (1 + exp(l)) * js_h(l / 2);
    const double g = js_f_over_u(l);
    return l < 700 ? exp(l) * g : exp(l - 1) * (M_E * g);   /* l - 1 is exact there */
}

double fdpo_f(const fdpo_divergence *d, double u) {
    if (!(u >= 0)) return NAN;
    switch (d->kind) {
    case FDPO_DIV_RKL: return u > 0 ? u * log(u) : 0.0;
    case FDPO_DIV_FKL: return -log(u);
    case FDPO_DIV_JS: {   /* u itself, not e^(log u), in the factor: (1 + u) h, or u f(u)/u where 1 + u could overflow */
        const double l = log(u);
        return l <= 0 ? (1 + u) * js_h(l / 2) : u * js_f_over_u(l);
    }
    case FDPO_DIV_ALPHA: {
        const double l = log(u);
        return l <= 0 ? alpha_f_low(d->alpha, l) : u * alpha_f_over_u_high(d->alpha, l);
    }
    case FDPO_DIV_TV: return 0.5 * fabs(u - 1);
    case FDPO_DIV_CHI2: return (u - 1) * (u - 1);
    }
    return NAN;
}

double fdpo_f_log(const fdpo_divergence *d, double l) {
    /* from l itself, not from e^l: e^l under- or overflows past |l| ~ 708 (fkl's -log(e^l) was
     * inf at l = -800), and its rounding cost chi2 and tv a relative ~eps/|l| near u = 1 */
    switch (d->kind) {
    case FDPO_DIV_RKL: return l == -INFINITY ? 0.0 : l * exp(l);   /* 0 log 0 = 0 */
    case FDPO_DIV_FKL: return -l;
    case FDPO_DIV_JS: return js_f_log(l);
    case FDPO_DIV_ALPHA: return l <= 0 ? alpha_f_low(d->alpha, l) : exp(l) * alpha_f_over_u_high(d->alpha, l);
    case FDPO_DIV_TV:   /* e^l split past l = 700 as in js_f_log: e^l alone overflows before e^l / 2 */
        return l < 700 ? 0.5 * fabs(expm1(l)) : exp(l - 1) * (0.5 * M_E);
    case FDPO_DIV_CHI2: return expm1(l) * expm1(l);
    }
    return NAN;
}

double fdpo_f_over_u_log(const fdpo_divergence *d, double l) {
    if (isnan(l)) return NAN;
    /* f(u)/u with u = e^l, each written in e^-l so that nothing overflows where the value is
     * finite: exp(l) is inf past l = 709 and inf/inf was NaN (js, alpha, tv tend to finite
     * limits: log 2, 1/alpha, 1/2) */
    const double em = exp(-l); /* 1/u */
    switch (d->kind) {
    case FDPO_DIV_RKL: return l;                                   /* u log u / u */
    case FDPO_DIV_FKL: return -l * em;                             /* -log u / u */
    case FDPO_DIV_JS: return js_f_over_u(l);
    case FDPO_DIV_ALPHA: return l >= 0 ? alpha_f_over_u_high(d->alpha, l) : alpha_f_low(d->alpha, l) * em;
    /* tv and chi2 in expm1: 1 - e^-l and u - 2 + 1/u cancelled near u = 1 to an absolute
     * ~1e-16 (chi2 came out 0 at l = -1e-12, where it is 1e-24) */
    case FDPO_DIV_TV:   /* e^-l split past -l = 700 as in js_f_over_u: e^-l alone overflows before e^-l / 2 */
        return l > -700 ? 0.5 * fabs(expm1(-l)) : exp(-l - 1) * (0.5 * M_E);
    case FDPO_DIV_CHI2: return expm1(l) * -expm1(-l);              /* (u-1)^2/u = (u-1)(1-1/u) */
    }
    return NAN;
}

double fdpo_qf_log(const fdpo_divergence *d, double lp, double lq) {
    /* p = e^lp, q = e^lq, u = p/q = e^l. Written as q f(u) where u <= 1 (f is bounded on
     * [0, 1]) and as p f(u)/u where u > 1 (bounded for js, alpha, tv: log 2, 1/A, 1/2), so
     * neither factor is 0 while the other is inf: a reference whose logits spread ~1000 nats
     * has q = 0 where u = inf, and q f(u) was 0 * inf = NaN for every token. */
    const double l = lp - lq;
    switch (d->kind) {
    case FDPO_DIV_RKL: return exp(lp) * l;                          /* p log(p/q) */
    case FDPO_DIV_FKL: return -exp(lq) * l;                         /* q log(q/p) */
    case FDPO_DIV_CHI2:   /* q (u-1)^2 = p u (1 - 1/u)^2: f(u)/u is unbounded, so p u = e^(lp+l) in one exp */
        return l <= 0 ? exp(lq) * expm1(l) * expm1(l) : exp(lp + l) * expm1(-l) * expm1(-l);
    case FDPO_DIV_ALPHA:  /* f(e^l) from l itself: it holds u^(1-A), which e^l rounded away below l = -708
                           * (0.66 % off at A = 0.999 for a policy whose logits spread 1000 nats) */
        return l <= 0 ? exp(lq) * alpha_f_low(d->alpha, l) : exp(lp) * alpha_f_over_u_high(d->alpha, l);
    case FDPO_DIV_JS:     /* from l itself: e^l's rounding is an error of ~1e-16 in l, relative 1e-16/l in f ~ l^2/4 */
        return l <= 0 ? exp(lq) * js_f_log(l) : exp(lp) * js_f_over_u(l);
    default: return l <= 0 ? exp(lq) * fdpo_f_log(d, l) : exp(lp) * fdpo_f_over_u_log(d, l);
    }
}

double fdpo_fprime(const fdpo_divergence *d, double u) {
    if (!(u >= 0)) return NAN;
    switch (d->kind) {
    case FDPO_DIV_RKL: return log(u) + 1;
    case FDPO_DIV_FKL: return -1 / u;
    case FDPO_DIV_JS: return M_LN2 + log(u) - log1p(u); /* log(2u/(1+u)) */
    /* (1 - u^-A)/A as -expm1(-A log u)/A: the table's form subtracts two numbers near 1 and
     * kept ~16 + log10(A |log u|) digits (4 % off at A = 1e-15, 0 for every u at A = 1e-300) */
    case FDPO_DIV_ALPHA: return u > 0 ? -expm1(-d->alpha * log(u)) / d->alpha : -INFINITY;
    case FDPO_DIV_TV: return u > 1 ? 0.5 : u < 1 ? -0.5 : 0.0; /* at u = 1: 0 from the subgradient [-1/2, 1/2] */
    case FDPO_DIV_CHI2: return 2 * (u - 1);
    }
    return NAN;
}

double fdpo_fprime_inv(const fdpo_divergence *d, double v) {
    if (isnan(v)) return NAN;
    switch (d->kind) {
    case FDPO_DIV_RKL: return exp(v - 1);
    case FDPO_DIV_FKL: return v < 0 ? -1 / v : NAN;
    case FDPO_DIV_JS: {
        if (!(v < M_LN2)) return NAN;
        double ev = exp(v);
        return ev / (2 - ev);
    }
    case FDPO_DIV_ALPHA: {
        double A = d->alpha;
        if (!(v < 1 / A)) return NAN;
        return exp(-log1p(-A * v) / A);
    }
    case FDPO_DIV_TV: return NAN; /* f' is a step function: no inverse */
    case FDPO_DIV_CHI2: return v >= -2 ? 1 + v / 2 : NAN; /* u >= 0 */
    }
    return NAN;
}

double fdpo_fprime_inv_sup(const fdpo_divergence *d) {
    switch (d->kind) {
    case FDPO_DIV_RKL: return INFINITY;
    case FDPO_DIV_FKL: return 0.0;
    case FDPO_DIV_JS: return M_LN2;
    case FDPO_DIV_ALPHA: return 1 / d->alpha;
    case FDPO_DIV_TV: return 0.5;
    case FDPO_DIV_CHI2: return INFINITY;
    }
    return NAN;
}

/* s(l) with its exponent capped at cap (EXP_CAP or GRAD_EXP_CAP) */
static double score_capped(const fdpo_divergence *d, double l, double cap) {
    if (isnan(l)) return NAN;
    switch (d->kind) {
    case FDPO_DIV_RKL: return l;
    case FDPO_DIV_FKL: return -exp(-l < cap ? -l : cap);
    case FDPO_DIV_JS: return fdpo_log_sigmoid(l);
    case FDPO_DIV_ALPHA: {
        /* (1 - e^(-A l))/A = -expm1(-A l)/A: the table's -e^(-A l)/A plus the constant 1/A.
         * In this form s(l) -> l as A -> 0 without cancellation (at A = 1e-6, l = 1e-3 the
         * naive -e^(-Al)/A + 1/A keeps about 7 of 16 digits); the cap makes s >= (1 - e^cap)/A.
         * Below the cap it is -expm1_over(A, -l): for a subnormal A the product A l keeps a few
         * bits or none (alpha:4.9e-324 gave s = 0 for |l| < 1, not l), the series does not. */
        const double A = d->alpha, x = -A * l;
        return x < cap ? -expm1_over(A, -l) : -expm1(cap) / A;
    }
    default: return NAN; /* tv, chi2: no f-DPO score */
    }
}

double fdpo_score(const fdpo_divergence *d, double l) { return score_capped(d, l, EXP_CAP); }

/* Where s(l) itself weighs a gradient (RL's shaped reward r - beta f'(u) multiplies grad log pi),
 * the bound that keeps the backward within float is the derivative's, not the score's: at 88.72
 * an RLOO advantage of beta 3.4e38 made the step's gradient inf (fkl, one sample 89 nats down) */
double fdpo_score_grad_capped(const fdpo_divergence *d, double l) { return score_capped(d, l, GRAD_EXP_CAP); }

double fdpo_score_diff(const fdpo_divergence *d, double lw, double ll) {
    if (isnan(lw) || isnan(ll)) return NAN;
    double A;
    switch (d->kind) {
    case FDPO_DIV_FKL: A = 1; break;
    case FDPO_DIV_ALPHA: A = d->alpha; break;
    default: return fdpo_score(d, lw) - fdpo_score(d, ll);   /* rkl, js: no exponent to cap; tv, chi2: NaN */
    }
    const double xw = -A * lw, xl = -A * ll;   /* s(l) = -e^x/A plus a constant, x = -A l */
    if (xw < EXP_CAP && xl < EXP_CAP) return fdpo_score(d, lw) - fdpo_score(d, ll);   /* the cap is not reached */
    if (xw == xl) return 0;   /* also both +inf (both log-ratios -inf): a tie */
    /* (e^xl - e^xw)/A = +-e^(m - log A) (1 - e^-|xl - xw|), m the larger exponent, taken out
     * in log space: finite wherever the difference is, with its sign (+-inf only beyond double) */
    const double m = xw > xl ? xw : xl, mag = exp(m - log(A) + log(-expm1(-fabs(xl - xw))));
    return xl > xw ? mag : -mag;
}

double fdpo_score_grad(const fdpo_divergence *d, double l) {
    if (isnan(l)) return NAN;
    switch (d->kind) {
    case FDPO_DIV_RKL: return 1.0;
    case FDPO_DIV_FKL: return cap_exp_grad(-l);
    case FDPO_DIV_JS: return fdpo_sigmoid(-l);
    case FDPO_DIV_ALPHA: return cap_exp_grad(-d->alpha * l);
    default: return NAN;
    }
}
