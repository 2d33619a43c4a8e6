/* Smooth minimisation for the lab: L-BFGS, the Bradley-Terry reward fit, and tabular f-DPO
 * trained on its exact expected loss (the consistency check of DESIGN.md §6). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/lab.h"

#define LBFGS_M 10

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
static double max_abs(const double *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) if (fabs(a[i]) > m) m = fabs(a[i]);
    return m;
}

int fdpo_lab_lbfgs(size_t dim, double *x, fdpo_lab_fg fg, void *ctx, double gtol, int max_iter, double *gnorm_out) {
    double *S = fdpo_malloc(LBFGS_M * dim * sizeof(double)), *Y = fdpo_malloc(LBFGS_M * dim * sizeof(double));
    double *g = fdpo_malloc(dim * sizeof(double)), *gn = fdpo_malloc(dim * sizeof(double));
    double *d = fdpo_malloc(dim * sizeof(double)), *xn = fdpo_malloc(dim * sizeof(double));
    double rho[LBFGS_M], alpha[LBFGS_M];
    int n_mem = 0, head = 0, it, stalls = 0;
    double f = fg(x, g, ctx);
    for (it = 0; it < max_iter; it++) {
        if (max_abs(g, dim) <= gtol) break;
        /* two-loop recursion: d = -H g */
        for (size_t i = 0; i < dim; i++) d[i] = -g[i];
        for (int k = 0; k < n_mem; k++) {
            int j = (head - 1 - k + LBFGS_M) % LBFGS_M;
            alpha[j] = rho[j] * dot(S + j * dim, d, dim);
            for (size_t i = 0; i < dim; i++) d[i] -= alpha[j] * Y[j * dim + i];
        }
        if (n_mem > 0) {
            int j = (head - 1 + LBFGS_M) % LBFGS_M;
            double gamma = dot(S + j * dim, Y + j * dim, dim) / dot(Y + j * dim, Y + j * dim, dim);
            for (size_t i = 0; i < dim; i++) d[i] *= gamma;
        } else {
            double scale = 1 / fmax(1.0, max_abs(g, dim)); /* first step: at most 1 in any coordinate */
            for (size_t i = 0; i < dim; i++) d[i] *= scale;
        }
        for (int k = n_mem - 1; k >= 0; k--) {
            int j = (head - 1 - k + LBFGS_M) % LBFGS_M;
            double b = rho[j] * dot(Y + j * dim, d, dim);
            for (size_t i = 0; i < dim; i++) d[i] += (alpha[j] - b) * S[j * dim + i];
        }
        double gd = dot(g, d, dim);
        if (!(gd < 0)) { /* not a descent direction: restart from steepest descent */
            n_mem = 0;
            for (size_t i = 0; i < dim; i++) d[i] = -g[i] / fmax(1.0, max_abs(g, dim));
            gd = dot(g, d, dim);
        }
        double t = 1, fn = NAN;
        int ok = 0;
        for (int ls = 0; ls < 60; ls++) {
            for (size_t i = 0; i < dim; i++) xn[i] = x[i] + t * d[i];
            fn = fg(xn, gn, ctx);
            /* strict decrease too: near the optimum f + 1e-4 t gd rounds to f, and accepting
             * fn == f would let the search creep along forever */
            if (isfinite(fn) && fn <= f + 1e-4 * t * gd && fn < f) { ok = 1; break; }
            t *= 0.5;
        }
        if (!ok) break; /* no decrease left at double precision */
        stalls = f - fn <= 1e-15 * fabs(f) ? stalls + 1 : 0;
        if (stalls >= 5) { memcpy(x, xn, dim * sizeof(double)); memcpy(g, gn, dim * sizeof(double)); break; }
        double *s = S + head * dim, *y = Y + head * dim;
        for (size_t i = 0; i < dim; i++) { s[i] = xn[i] - x[i]; y[i] = gn[i] - g[i]; }
        double sy = dot(s, y, dim);
        if (sy > 1e-300) {
            rho[head] = 1 / sy;
            head = (head + 1) % LBFGS_M;
            if (n_mem < LBFGS_M) n_mem++;
        }
        memcpy(x, xn, dim * sizeof(double));
        memcpy(g, gn, dim * sizeof(double));
        f = fn;
    }
    if (gnorm_out) *gnorm_out = max_abs(g, dim);
    free(S); free(Y); free(g); free(gn); free(d); free(xn);
    return it;
}

/* ---- Bradley-Terry ---- */

typedef struct { size_t n, m; const size_t *w, *l; double ridge; } bt_ctx;

static double bt_fg(const double *th, double *g, void *vctx) {
    const bt_ctx *c = vctx;
    double f = 0;
    for (size_t i = 0; i < c->n; i++) { f += 0.5 * c->ridge * th[i] * th[i]; g[i] = c->ridge * th[i]; }
    for (size_t k = 0; k < c->m; k++) {
        double z = th[c->l[k]] - th[c->w[k]];
        f += fdpo_softplus(z);
        double s = fdpo_sigmoid(z);
        g[c->l[k]] += s;
        g[c->w[k]] -= s;
    }
    return f;
}

/* LAPACK's Cholesky solve, shipped inside OpenBLAS (Debian has no lapacke.h for it) */
extern void dposv_(const char *uplo, const int *n, const int *nrhs, double *a, const int *lda, double *b,
                   const int *ldb, int *info);

/* Newton on the (convex) penalised likelihood: H = sum_k s(1-s) (e_w - e_l)(e_w - e_l)^T +
 * ridge I is positive definite, so each step solves H d = -g by Cholesky; a halving line
 * search keeps it monotone. Converges to rounding in a handful of steps, which L-BFGS does
 * not on nearly separable data (flat directions with curvature ~ ridge). */
static int bt_newton(const bt_ctx *c, double *th, int max_iter) {
    const size_t n = c->n;
    double *H = fdpo_malloc(n * n * sizeof(double)), *g = fdpo_malloc(n * sizeof(double));
    double *d = fdpo_malloc(n * sizeof(double)), *tn = fdpo_malloc(n * sizeof(double)), *gn = fdpo_malloc(n * sizeof(double));
    double f = bt_fg(th, g, (void *)c);
    int it, rc = 0;
    for (it = 0; it < max_iter; it++) {
        if (max_abs(g, n) <= 1e-13 * (1 + (double)c->m)) break;
        memset(H, 0, n * n * sizeof(double));
        for (size_t i = 0; i < n; i++) H[i * n + i] = c->ridge;
        for (size_t k = 0; k < c->m; k++) {
            size_t w = c->w[k], l = c->l[k];
            if (w == l) continue; /* a response against itself carries no information */
            double s = fdpo_sigmoid(th[l] - th[w]), h = s * (1 - s);
            H[w * n + w] += h; H[l * n + l] += h; H[w * n + l] -= h; H[l * n + w] -= h;
        }
        for (size_t i = 0; i < n; i++) d[i] = -g[i];
        int ni = (int)n, one = 1, info = 0;
        dposv_("U", &ni, &one, H, &ni, d, &ni, &info);
        if (info != 0) { rc = fdpo_error("Bradley-Terry fit: Hessian not positive definite (LAPACK dposv info %d)", info); break; }
        double t = 1, fn = f;
        int ok = 0;
        for (int ls = 0; ls < 30; ls++) {
            for (size_t i = 0; i < n; i++) tn[i] = th[i] + t * d[i];
            fn = bt_fg(tn, gn, (void *)c);
            if (fn < f) { ok = 1; break; }
            /* a full step that leaves f unchanged is the optimum to rounding: keep it */
            if (fn == f && t == 1) { ok = 2; break; }
            t *= 0.5;
        }
        if (!ok) break; /* no decrease left at double precision */
        memcpy(th, tn, n * sizeof(double));
        memcpy(g, gn, n * sizeof(double));
        f = fn;
        if (ok == 2) { it++; break; }
    }
    free(H); free(g); free(d); free(tn); free(gn);
    return rc ? -1 : it;
}

int fdpo_lab_bt_fit(size_t n, const size_t *winner, const size_t *loser, size_t m, double ridge, double *theta, int *iterations) {
    if (n == 0) return fdpo_error("Bradley-Terry fit: no responses");
    if (!(ridge > 0) || !isfinite(ridge)) return fdpo_error("--ridge: must be > 0 (got %g): without it the fit has a free constant", ridge);
    for (size_t k = 0; k < m; k++)
        if (winner[k] >= n || loser[k] >= n) return fdpo_error("Bradley-Terry fit: comparison %zu names response %zu of %zu", k, winner[k] >= n ? winner[k] : loser[k], n);
    bt_ctx c = {n, m, winner, loser, ridge};
    for (size_t i = 0; i < n; i++) theta[i] = 0;
    int it;
    if (n <= 2000) {
        it = bt_newton(&c, theta, 100);
        if (it < 0) return -1;
    } else {
        /* too large for a dense Hessian: L-BFGS, tolerance scaled with the m-term gradient */
        double gn;
        it = fdpo_lab_lbfgs(n, theta, bt_fg, &c, 1e-11 * (1 + (double)m), 5000, &gn);
    }
    if (iterations) *iterations = it;
    return 0;
}

/* ---- tabular f-DPO ---- */

typedef struct {
    const fdpo_lab_prepared *pp;
    const fdpo_pref_loss *L;
    const double *p_win; /* n x n: probability that i is labelled the winner against j */
    double weight;       /* 1 / number of unordered pairs */
    double *pi, *l, *gl;
} check_ctx;

static double check_fg(const double *th, double *g, void *vctx) {
    check_ctx *c = vctx;
    const size_t n = c->pp->n;
    double m = -INFINITY, z = 0;
    for (size_t i = 0; i < n; i++) if (th[i] > m) m = th[i];
    for (size_t i = 0; i < n; i++) z += exp(th[i] - m);
    double lz = m + log(z);
    for (size_t i = 0; i < n; i++) {
        double lp = th[i] - lz;
        c->pi[i] = exp(lp);
        c->l[i] = lp - c->pp->log_pi_ref[i];
        c->gl[i] = 0;
    }
    double f = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = i + 1; j < n; j++) {
            double pij = c->p_win[i * n + j], dw, dl;
            /* i chosen over j with probability pij, j over i otherwise */
            f += c->weight * pij * fdpo_pref_loss_pair(c->L, c->l[i], c->l[j], &dw, &dl);
            c->gl[i] += c->weight * pij * dw;
            c->gl[j] += c->weight * pij * dl;
            f += c->weight * (1 - pij) * fdpo_pref_loss_pair(c->L, c->l[j], c->l[i], &dw, &dl);
            c->gl[j] += c->weight * (1 - pij) * dw;
            c->gl[i] += c->weight * (1 - pij) * dl;
        }
    }
    /* l_i = theta_i - logsumexp(theta) - log pi_ref_i: dL/dtheta_k = gl_k - pi_k sum_i gl_i */
    double sg = 0;
    for (size_t i = 0; i < n; i++) sg += c->gl[i];
    for (size_t k = 0; k < n; k++) g[k] = c->gl[k] - c->pi[k] * sg;
    return f;
}

int fdpo_lab_check_loss_check(const fdpo_pref_loss *L) {
    if (L->kind == FDPO_LOSS_SIMPO) return fdpo_error("--loss simpo: the check needs a reference-based loss (simpo has no pi_ref, so no pi* to compare with)");
    return fdpo_pref_loss_check(L);
}

int fdpo_lab_check_validate(const fdpo_pref_loss *L, double label_noise, size_t n) {
    if (fdpo_lab_check_loss_check(L)) return -1;
    if (!(label_noise >= 0 && label_noise < 0.5)) return fdpo_error("--label-noise: must be in [0, 0.5) (got %g)", label_noise);
    if (n < 2) return fdpo_error("--n: the check needs at least 2 responses (got %zu)", n);
    /* fdpo_lab_check's n x n win probabilities and O(n) vectors (L-BFGS's history among them), in
     * doubles: beyond the machine's memory it died in fdpo_malloc after the table's header */
    const double ram = fdpo_ram_bytes(), bytes = 8 * (double)n * (double)n + 8 * 40 * (double)n;
    if (ram > 0 && bytes > ram)
        return fdpo_error("--n %zu: the check's n x n pair probabilities take %.3g GB, more than this machine's %.3g GB "
                          "(--n, or the rows of --data)", n, bytes / 1e9, ram / 1e9);
    return 0;
}

int fdpo_lab_check(const fdpo_lab_prepared *pp, const fdpo_pref_loss *L, double label_noise, double *pi_theta, fdpo_lab_check_result *res) {
    const size_t n = pp->n;
    if (fdpo_lab_check_validate(L, label_noise, n)) return -1;
    double *p_win = fdpo_malloc(n * n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double p = fdpo_sigmoid(pp->reward[i] - pp->reward[j]);
            p_win[i * n + j] = (1 - label_noise) * p + label_noise * (1 - p);
        }
    check_ctx c = {pp, L, p_win, 2.0 / ((double)n * (double)(n - 1)), fdpo_malloc(n * sizeof(double)),
                   fdpo_malloc(n * sizeof(double)), fdpo_malloc(n * sizeof(double))};
    double *theta = fdpo_malloc(n * sizeof(double)), *g = fdpo_malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) theta[i] = pp->log_pi_ref[i]; /* start at pi_ref */
    res->iterations = fdpo_lab_lbfgs(n, theta, check_fg, &c, 1e-12, 5000, &res->grad_norm);
    res->loss = check_fg(theta, g, &c);
    double *pistar = fdpo_malloc(n * sizeof(double));
    fdpo_lab_result sr;
    int rc = fdpo_lab_solve(pp, &L->div, L->beta, pistar, &sr);
    res->max_abs_diff = 0;
    for (size_t i = 0; i < n; i++) {
        if (pi_theta) pi_theta[i] = c.pi[i];
        double e = fabs(c.pi[i] - pistar[i]);
        if (e > res->max_abs_diff) res->max_abs_diff = e;
    }
    free(pistar); free(theta); free(g); free(p_win); free(c.pi); free(c.l); free(c.gl);
    return rc;
}

/* ---- coverage: Bradley-Terry rewards from N sampled comparisons ---- */

int fdpo_lab_data_policy_parse(const char *name, fdpo_lab_data_policy *out) {
    static const char *names[] = {"ref", "optimal", "uniform", "mixture"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) { *out = (fdpo_lab_data_policy)i; return 0; }
    return fdpo_error("--data-policy: unknown policy '%s' (expected ref, optimal, uniform, mixture)", name);
}

/* index drawn by inverse CDF on the cumulative sums cdf (cdf[n-1] = total mass) */
static size_t draw(const double *cdf, size_t n, fdpo_rng *rng) {
    double u = fdpo_rng_uniform(rng) * cdf[n - 1];
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cdf[mid] > u) hi = mid; else lo = mid + 1;
    }
    return lo;
}

void fdpo_lab_coverage_opts_default(fdpo_lab_coverage_opts *o) {
    memset(o, 0, sizeof *o);
    o->policy = FDPO_LAB_DATA_REF;
    fdpo_divergence_parse("rkl", &o->data_div);
    o->beta = 0.1;
    o->mixture = 0.5;
    o->ridge = 1e-3;
    o->seed = FDPO_DEFAULT_SEED;
}

int fdpo_lab_coverage_opts_check(const fdpo_lab_coverage_opts *o) {
    if ((unsigned)o->policy > FDPO_LAB_DATA_MIXTURE) return fdpo_error("--data-policy: unknown policy %d", (int)o->policy);
    if (fdpo_beta_check(o->beta)) return -1;
    if (!(o->mixture >= 0 && o->mixture <= 1))
        return fdpo_error("--mixture: must be in [0, 1] (got %s)", fdpo_shortest(o->mixture).s);
    if (!(o->ridge > 0) || !isfinite(o->ridge)) return fdpo_error("--ridge: must be > 0 (got %s)", fdpo_shortest(o->ridge).s);
    return 0;
}

int fdpo_lab_coverage_check(const fdpo_lab_coverage_opts *o, size_t prompts, const size_t *ns, size_t nn) {
    if (fdpo_lab_coverage_opts_check(o)) return -1;
    if (prompts < 1) return fdpo_error("--prompts: must be >= 1 (got %zu)", prompts);
    if (nn == 0) return fdpo_error("--comparisons: empty list");
    for (size_t a = 0; a < nn; a++) /* 1e8 comparisons: 1.6 GB of indices */
        if (ns[a] < 1 || ns[a] > 100000000) return fdpo_error("--comparisons: must be in [1, 1e8] (got %zu)", ns[a]);
    return 0;
}

int fdpo_lab_coverage(const fdpo_lab_coverage_opts *o, const fdpo_lab_problem *P, size_t prompts,
                      const size_t *ns, size_t nn, const fdpo_divergence *divs, size_t nd,
                      fdpo_lab_coverage_row *rows) {
    if (fdpo_lab_coverage_check(o, prompts, ns, nn)) return -1;
    memset(rows, 0, nn * nd * sizeof *rows);
    fdpo_rng crng;
    fdpo_rng_seed(&crng, o->seed * 0xD1B54A32D192ED03ULL + 7);
    int rc = 0;
    for (size_t a = 0; rc == 0 && a < nn; a++) {
        const size_t m = ns[a];
        for (size_t x = 0; rc == 0 && x < prompts; x++) {
            const fdpo_lab_problem *p = &P[x];
            const size_t n = p->n;
            double *cdf = fdpo_malloc(n * sizeof(double)), *pol = fdpo_malloc(n * sizeof(double));
            double *theta = fdpo_malloc(n * sizeof(double)), *ps = fdpo_malloc(n * sizeof(double)), *ph = fdpo_malloc(n * sizeof(double));
            size_t *w = fdpo_malloc((m ? m : 1) * sizeof(size_t)), *l = fdpo_malloc((m ? m : 1) * sizeof(size_t));
            char *seen = fdpo_calloc(n, 1);
            if (o->policy == FDPO_LAB_DATA_OPTIMAL || o->policy == FDPO_LAB_DATA_MIXTURE) {
                fdpo_lab_prepared pp;
                fdpo_lab_result r0;
                fdpo_lab_prepare(&pp, p->pi_ref, p->reward, n);
                rc = fdpo_lab_solve(&pp, &o->data_div, o->beta, pol, &r0);
                fdpo_lab_prepared_free(&pp);
            }
            double c = 0;
            for (size_t i = 0; rc == 0 && i < n; i++) {
                double d = o->policy == FDPO_LAB_DATA_REF ? p->pi_ref[i]
                         : o->policy == FDPO_LAB_DATA_OPTIMAL ? pol[i]
                         : o->policy == FDPO_LAB_DATA_UNIFORM ? 1.0 / (double)n
                         : (1 - o->mixture) * p->pi_ref[i] + o->mixture * pol[i];
                c += d;
                cdf[i] = c;
            }
            for (size_t k = 0; rc == 0 && k < m; k++) {
                size_t y1 = draw(cdf, n, &crng), y2 = draw(cdf, n, &crng);
                int first_wins = fdpo_rng_uniform(&crng) < fdpo_sigmoid(p->reward[y1] - p->reward[y2]);
                w[k] = first_wins ? y1 : y2;
                l[k] = first_wins ? y2 : y1;
                seen[y1] = seen[y2] = 1;
            }
            if (rc == 0) rc = fdpo_lab_bt_fit(n, w, l, m, o->ridge, theta, NULL);
            if (rc == 0 && o->on_fit) o->on_fit(o->ctx, m, x, w, l, theta, n);
            /* fit error after removing each side's mean: BT identifies rewards up to a constant */
            double mr = 0, mt = 0, se = 0;
            for (size_t i = 0; i < n; i++) { mr += p->reward[i] / (double)n; mt += theta[i] / (double)n; }
            for (size_t i = 0; i < n; i++) { double e = (theta[i] - mt) - (p->reward[i] - mr); se += e * e / (double)n; }
            for (size_t k = 0; rc == 0 && k < nd; k++) {
                fdpo_lab_gap_row g;
                rc = fdpo_lab_gap(&divs[k], o->beta, p->pi_ref, p->reward, theta, n, ps, ph, &g);
                double cov = 0;
                for (size_t i = 0; i < n; i++) if (seen[i]) cov += ps[i];
                fdpo_lab_coverage_row *row = &rows[a * nd + k];
                row->reward_gap += g.reward_gap / (double)prompts;
                row->objective_gap += g.objective_gap / (double)prompts;
                row->pistar_coverage += cov / (double)prompts;
                row->fit_rmse += sqrt(se) / (double)prompts;
            }
            free(cdf); free(pol); free(theta); free(ps); free(ph); free(w); free(l); free(seen);
        }
    }
    return rc;
}
