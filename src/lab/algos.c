/* Tabular algorithm checks (include/fdpo/lab_algos.h): offline f-DPO on a pair distribution
 * that does not cover pi*, online f-DPO, f-RLOO and f-GRPO on a softmax policy, each compared
 * with the exact optimum of fdpo_lab_solve. The losses and shaped rewards are the trainer's
 * own pure functions (fdpo_pref_loss_pair, fdpo_shaped_reward, fdpo_rloo/grpo_advantages). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/lab_algos.h"

static const char *const METHOD_NAMES[] = {"dpo", "online", "rloo", "grpo"};

int fdpo_lab_method_parse(const char *name, fdpo_lab_method *m) {
    for (int i = 0; i < 4; i++)
        if (name && !strcmp(name, METHOD_NAMES[i])) { *m = (fdpo_lab_method)i; return 0; }
    return fdpo_error("--method: unknown method '%s' (expected dpo, online, rloo, grpo)", name ? name : "");
}
const char *fdpo_lab_method_name(fdpo_lab_method m) { return METHOD_NAMES[m]; }

static double sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }
static double max_abs(const double *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) if (fabs(a[i]) > m) m = fabs(a[i]);
    return m;
}

/* theta[n] -> pi[n] = softmax(theta), l[n] = log pi - log pi_ref */
static void policy(const fdpo_lab_prepared *pp, const double *theta, double *pi, double *l) {
    const size_t n = pp->n;
    double m = -INFINITY, z = 0;
    for (size_t i = 0; i < n; i++) if (theta[i] > m) m = theta[i];
    for (size_t i = 0; i < n; i++) z += exp(theta[i] - m);
    double lz = m + log(z);
    for (size_t i = 0; i < n; i++) {
        pi[i] = exp(theta[i] - lz);
        l[i] = theta[i] - lz - pp->log_pi_ref[i];
    }
}

/* gl[n] = dLoss/dl -> g[n] = dLoss/dtheta through l_k = theta_k - logsumexp(theta) - log pi_ref_k */
static void l_to_theta_grad(const double *pi, const double *gl, size_t n, double *g) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += gl[i];
    for (size_t k = 0; k < n; k++) g[k] = gl[k] - pi[k] * s;
}

static size_t sample(fdpo_rng *rng, const double *pi, size_t n) {
    double u = fdpo_rng_uniform(rng), c = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        c += pi[i];
        if (u < c) return i;
    }
    return n - 1;
}

/* ---- expected pair loss: w[i*n+j] = probability that (chosen i, rejected j) is drawn ---- */

typedef struct {
    const fdpo_lab_prepared *pp;
    const fdpo_pref_loss *L;
    const double *w;
    double *pi, *l, *gl;
} pair_ctx;

/* loss and dLoss/dtheta of sum_{ij} w_ij L(l_i, l_j) at theta (w held fixed) */
static double pair_fg(const double *theta, double *g, void *vctx) {
    pair_ctx *c = vctx;
    const size_t n = c->pp->n;
    policy(c->pp, theta, c->pi, c->l);
    memset(c->gl, 0, n * sizeof(double));
    double f = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double w = c->w[i * n + j], dw, dl;
            if (w == 0) continue;
            f += w * fdpo_pref_loss_pair(c->L, c->l[i], c->l[j], &dw, &dl);
            c->gl[i] += w * dw;
            c->gl[j] += w * dl;
        }
    l_to_theta_grad(c->pi, c->gl, n, g);
    return f;
}

/* pairs from q x q labelled by Bradley-Terry: w_ij = q_i q_j sigma(r_i - r_j), i != j */
static void bt_pair_weights(const fdpo_lab_prepared *pp, const double *q, double *w) {
    const size_t n = pp->n;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            w[i * n + j] = i == j ? 0 : q[i] * q[j] * sigmoid(pp->reward[i] - pp->reward[j]);
}

typedef struct { double v; size_t i; } keyed;
static int by_value_desc(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    return x->v > y->v ? -1 : x->v < y->v ? 1 : (x->i > y->i) - (x->i < y->i);
}

/* offline: q = pi_ref restricted to its pair_top most likely responses */
static int run_dpo(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o, const fdpo_pref_loss *L,
                   const double *pistar, double *theta, fdpo_lab_algo_result *res) {
    const size_t n = pp->n, top = o->pair_top && o->pair_top < n ? o->pair_top : n;
    if (top < 2) return fdpo_error("--pair-top: offline pairs need at least 2 responses (got %zu)", top);
    keyed *k = fdpo_malloc(n * sizeof *k);
    for (size_t i = 0; i < n; i++) { k[i].v = pp->pi_ref[i]; k[i].i = i; }
    qsort(k, n, sizeof *k, by_value_desc);
    double *q = fdpo_calloc(n, sizeof(double)), mass = 0;
    for (size_t t = 0; t < top; t++) mass += pp->pi_ref[k[t].i];
    for (size_t t = 0; t < top; t++) q[k[t].i] = pp->pi_ref[k[t].i] / mass;
    res->uncovered_mass = 0;
    for (size_t i = 0; i < n; i++) if (q[i] == 0) res->uncovered_mass += pistar[i];
    double *w = fdpo_malloc(n * n * sizeof(double));
    bt_pair_weights(pp, q, w);
    pair_ctx c = {pp, L, w, fdpo_malloc(n * sizeof(double)), fdpo_malloc(n * sizeof(double)), fdpo_malloc(n * sizeof(double))};
    double gnorm;
    res->iterations = fdpo_lab_lbfgs(n, theta, pair_fg, &c, 1e-13, 5000, &gnorm);
    free(k); free(q); free(w); free(c.pi); free(c.l); free(c.gl);
    return 0;
}

/* The stochastic gradient of one step, written into g[n] (a descent direction for the
 * minimised loss: online's pair loss, minus the PG objective for rloo/grpo). */
typedef struct {
    const fdpo_lab_prepared *pp;
    const fdpo_lab_algo_opts *o;
    const fdpo_pref_loss *L;
    size_t k;
    double *pi, *l, *gl, *w, *shaped, *adv;
    size_t *ys;
} step_ctx;

static void pg_group_grad(step_ctx *c, double weight, double *g) {
    /* ascent direction of E[r] - beta D_f from one group: (1/k) sum_i adv_i (e_{y_i} - pi);
     * g accumulates its negative (descent) scaled by weight */
    const size_t n = c->pp->n, k = c->k;
    for (size_t i = 0; i < k; i++)
        c->shaped[i] = fdpo_shaped_reward(&c->o->div, c->o->beta, c->pp->reward[c->ys[i]], c->l[c->ys[i]]);
    if (c->o->method == FDPO_LAB_RLOO) fdpo_rloo_advantages(c->shaped, k, c->adv);
    else fdpo_grpo_advantages(c->shaped, k, c->o->grpo_eps, c->adv);
    for (size_t i = 0; i < k; i++) {
        double a = weight * c->adv[i] / (double)k;
        g[c->ys[i]] -= a;
        for (size_t j = 0; j < n; j++) g[j] += a * c->pi[j];
    }
}

static void exact_step_grad(step_ctx *c, const double *theta, double *g) {
    const size_t n = c->pp->n;
    memset(g, 0, n * sizeof(double));
    if (c->o->method == FDPO_LAB_ONLINE) {
        policy(c->pp, theta, c->pi, c->l);
        bt_pair_weights(c->pp, c->pi, c->w);
        pair_ctx pc = {c->pp, c->L, c->w, c->pi, c->l, c->gl};
        pair_fg(theta, g, &pc);
        return;
    }
    policy(c->pp, theta, c->pi, c->l);
    if (c->o->method == FDPO_LAB_RLOO) {
        /* E of the RLOO estimator = the exact gradient: pi_k (shaped_k - E_pi shaped) */
        double mean = 0;
        for (size_t i = 0; i < n; i++) {
            c->shaped[i] = fdpo_shaped_reward(&c->o->div, c->o->beta, c->pp->reward[i], c->l[i]);
            mean += c->pi[i] * c->shaped[i];
        }
        for (size_t i = 0; i < n; i++) g[i] = -c->pi[i] * (c->shaped[i] - mean);
        return;
    }
    /* GRPO: the advantage is not linear in the group, so average over all n^k ordered groups */
    size_t total = 1;
    for (size_t i = 0; i < c->k; i++) total *= n;
    for (size_t t = 0; t < total; t++) {
        size_t rest = t;
        double p = 1;
        for (size_t i = 0; i < c->k; i++) { c->ys[i] = rest % n; rest /= n; p *= c->pi[c->ys[i]]; }
        pg_group_grad(c, p, g);
    }
}

static void sampled_step_grad(step_ctx *c, const double *theta, fdpo_rng *rng, double *g) {
    const size_t n = c->pp->n, k = c->k;
    policy(c->pp, theta, c->pi, c->l);
    memset(g, 0, n * sizeof(double));
    if (c->o->method == FDPO_LAB_ONLINE) {
        /* k pairs from the current policy, the winner drawn from Bradley-Terry */
        memset(c->gl, 0, n * sizeof(double));
        for (size_t p = 0; p < k; p++) {
            size_t a = sample(rng, c->pi, n), b = sample(rng, c->pi, n);
            if (fdpo_rng_uniform(rng) >= sigmoid(c->pp->reward[a] - c->pp->reward[b])) { size_t s = a; a = b; b = s; }
            double dw, dl;
            fdpo_pref_loss_pair(c->L, c->l[a], c->l[b], &dw, &dl);
            c->gl[a] += dw / (double)k;
            c->gl[b] += dl / (double)k;
        }
        l_to_theta_grad(c->pi, c->gl, n, g);
        return;
    }
    for (size_t i = 0; i < k; i++) c->ys[i] = sample(rng, c->pi, n);
    pg_group_grad(c, 1.0, g);
}

static int run_iterative(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o, const fdpo_pref_loss *L,
                         double *theta, fdpo_lab_algo_result *res) {
    const size_t n = pp->n, k = (size_t)o->k;
    if (o->steps < 1) return fdpo_error("--steps: must be >= 1 (got %ld)", o->steps);
    if (!(o->lr > 0) || !isfinite(o->lr)) return fdpo_error("--lr: must be > 0 (got %g)", o->lr);
    if (o->method != FDPO_LAB_ONLINE && o->k < 2)
        return fdpo_error("--k: %s needs groups of at least 2 samples (got %ld)", fdpo_lab_method_name(o->method), o->k);
    if (o->k < 1) return fdpo_error("--k: must be >= 1 (got %ld)", o->k);
    if (o->exact && o->method == FDPO_LAB_GRPO) {
        double groups = pow((double)n, (double)k);
        if (groups > 1e6)
            return fdpo_error("--k: exact grpo averages over all n^k = %zu^%zu groups (more than 1e6); use a smaller "
                              "--k or --n, or the sampled variant", n, k);
    }
    if (o->method == FDPO_LAB_GRPO && !(o->grpo_eps > 0)) return fdpo_error("--grpo-eps: must be > 0 (got %g)", o->grpo_eps);
    const size_t nk = n > k ? n : k; /* shaped rewards: per response (exact rloo) or per sample */
    step_ctx c = {pp, o, L, k, fdpo_malloc(n * sizeof(double)), fdpo_malloc(n * sizeof(double)),
                  fdpo_malloc(n * sizeof(double)), fdpo_malloc(n * n * sizeof(double)),
                  fdpo_malloc(nk * sizeof(double)), fdpo_malloc(nk * sizeof(double)), fdpo_malloc(nk * sizeof(size_t))};
    double *g = fdpo_malloc(n * sizeof(double)), *avg = fdpo_calloc(n, sizeof(double));
    fdpo_rng rng;
    fdpo_rng_seed(&rng, o->seed);
    long t, averaged = 0;
    res->samples = 0;
    for (t = 0; t < o->steps; t++) {
        if (o->exact) {
            exact_step_grad(&c, theta, g);
            /* converged: the step no longer changes theta beyond rounding */
            if (max_abs(g, n) * o->lr <= 1e-15) break;
            /* GRPO's normalised advantages do not shrink near pi* (the field is scale-free until
             * the spread reaches eps), so a fixed step circles pi* at a distance ~ lr: decay it */
            double lr = o->method == FDPO_LAB_GRPO ? o->lr / sqrt(1 + (double)t / 1000) : o->lr;
            for (size_t i = 0; i < n; i++) theta[i] -= lr * g[i];
        } else {
            sampled_step_grad(&c, theta, &rng, g);
            res->samples += o->method == FDPO_LAB_ONLINE ? 2 * o->k : o->k;
            double lr = o->lr / sqrt(1 + (double)t / 1000);
            for (size_t i = 0; i < n; i++) theta[i] -= lr * g[i];
            if (2 * t >= o->steps) { /* Polyak-Ruppert: average the second half of the iterates */
                for (size_t i = 0; i < n; i++) avg[i] += theta[i];
                averaged++;
            }
        }
    }
    if (!o->exact && averaged > 0)
        for (size_t i = 0; i < n; i++) theta[i] = avg[i] / (double)averaged;
    res->iterations = t;
    free(c.pi); free(c.l); free(c.gl); free(c.w); free(c.shaped); free(c.adv); free(c.ys); free(g); free(avg);
    return 0;
}

int fdpo_lab_algo_run(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o, double *pi_out, fdpo_lab_algo_result *res) {
    const size_t n = pp->n;
    const char *why;
    if (n < 2) return fdpo_error("--n: the check needs at least 2 responses (got %zu)", n);
    if (!(o->beta > 0) || !isfinite(o->beta)) return fdpo_error("--beta: must be > 0 (got %g)", o->beta);
    if (!fdpo_divergence_admissible(&o->div, &why)) return fdpo_error("--divergence: %s", why);
    fdpo_pref_loss L = {0};
    L.kind = FDPO_LOSS_SIGMOID;
    L.div = o->div;
    L.beta = o->beta;
    memset(res, 0, sizeof *res);
    double *pistar = fdpo_malloc(n * sizeof(double)), *theta = fdpo_malloc(n * sizeof(double));
    double *pi = fdpo_malloc(n * sizeof(double)), *l = fdpo_malloc(n * sizeof(double));
    fdpo_lab_result star, got;
    int rc = fdpo_lab_solve(pp, &o->div, o->beta, pistar, &star);
    for (size_t i = 0; i < n; i++) theta[i] = pp->log_pi_ref[i]; /* start at pi_ref */
    if (rc == 0) rc = o->method == FDPO_LAB_DPO ? run_dpo(pp, o, &L, pistar, theta, res) : run_iterative(pp, o, &L, theta, res);
    if (rc == 0) {
        policy(pp, theta, pi, l);
        for (size_t i = 0; i < n; i++) {
            double e = fabs(pi[i] - pistar[i]);
            if (e > res->max_abs_diff) res->max_abs_diff = e;
            if (pi_out) pi_out[i] = pi[i];
        }
        fdpo_lab_evaluate(&o->div, o->beta, pp->pi_ref, pp->reward, pi, n, &got);
        res->objective_gap = star.objective - got.objective;
    }
    free(pistar); free(theta); free(pi); free(l);
    return rc;
}
