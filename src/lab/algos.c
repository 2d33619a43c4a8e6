/* Tabular algorithm checks (include/fdpo/lab_algos.h): offline f-DPO on a pair distribution
 * that does not cover pi*, online f-DPO, f-RLOO and f-GRPO on a softmax policy, each compared
 * with the exact optimum of fdpo_lab_solve. The losses and shaped rewards are the trainer's
 * own pure functions (fdpo_pref_loss_pair, fdpo_shaped_reward_pg, fdpo_pg_group_advantages,
 * fdpo_kto_loss_one). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/lab_algos.h"

static const char *const METHOD_NAMES[FDPO_LAB_NMETHODS] = {"dpo", "online", "rloo", "grpo", "kto"};

int fdpo_lab_method_parse(const char *name, fdpo_lab_method *m) {
    for (int i = 0; i < FDPO_LAB_NMETHODS; i++)
        if (name && !strcmp(name, METHOD_NAMES[i])) { *m = (fdpo_lab_method)i; return 0; }
    return fdpo_error("--method: unknown method '%s' (expected dpo, online, rloo, grpo, kto)", name ? name : "");
}
const char *fdpo_lab_method_name(fdpo_lab_method m) { return METHOD_NAMES[m]; }

int fdpo_lab_labels_parse(const char *name, fdpo_lab_labels *out) {
    if (name && !strcmp(name, "bt")) *out = FDPO_LAB_LABELS_BT;
    else if (name && !strcmp(name, "threshold")) *out = FDPO_LAB_LABELS_THRESHOLD;
    else return fdpo_error("--labels: unknown labelling '%s' (expected bt or threshold)", name ? name : "");
    return 0;
}

/* online's sampled pair loss is noisy (Bradley-Terry labels stay random at pi*); exact grpo
 * averages n^k groups a step; dpo runs L-BFGS (no step size); kto runs exact only */
double fdpo_lab_algo_default_lr(fdpo_lab_method m, int exact) {
    static const double lr_exact[FDPO_LAB_NMETHODS] = {0, 5, 1, 0.05, 5}, lr_sampled[FDPO_LAB_NMETHODS] = {0, 1, 1, 0.05, 0};
    return exact ? lr_exact[m] : lr_sampled[m];
}

long fdpo_lab_algo_default_steps(fdpo_lab_method m, int exact) {
    if (!exact) return 100000;
    return m == FDPO_LAB_GRPO || m == FDPO_LAB_KTO ? 20000 : 200000;
}

void fdpo_lab_algo_opts_default(fdpo_lab_algo_opts *o, fdpo_lab_method m, int exact, size_t n) {
    memset(o, 0, sizeof *o);
    o->method = m;
    fdpo_divergence_parse("rkl", &o->div);
    o->beta = 0.5;
    o->exact = exact;
    o->pair_top = n / 2;
    o->steps = fdpo_lab_algo_default_steps(m, exact);
    o->k = 4;
    o->lr = fdpo_lab_algo_default_lr(m, exact);
    o->grpo_eps = 1e-4;
    o->labels = FDPO_LAB_LABELS_BT;
    o->label_threshold = NAN;
    o->desirable_weight = o->undesirable_weight = 1;
    o->seed = FDPO_DEFAULT_SEED;
}

const char *fdpo_lab_algo_variant(const fdpo_lab_algo_opts *o) {
    if (o->method == FDPO_LAB_DPO || o->method == FDPO_LAB_KTO) return "offline";
    return o->exact ? "exact" : "sampled";
}

/* kto's weights and threshold (fdpo_lab_algo_opts_check and kto_setup, which
 * fdpo_lab_kto_target shares) */
/* the KTO loss the options describe (its own check: fdpo_kto_loss_check) */
static fdpo_kto_loss kto_loss_of(const fdpo_lab_algo_opts *o) {
    fdpo_kto_loss K = {0};
    K.div = o->div;
    K.beta = o->beta;
    K.desirable_weight = o->desirable_weight;
    K.undesirable_weight = o->undesirable_weight;
    return K;
}

/* dpo's offline pairs: among the pair_top most likely responses (0: all n; more than n: refused) */
static size_t dpo_top(const fdpo_lab_algo_opts *o, size_t n) { return o->pair_top && o->pair_top < n ? o->pair_top : n; }

static int kto_opts_check(const fdpo_lab_algo_opts *o) {
    if (!(o->desirable_weight > 0) || !isfinite(o->desirable_weight))
        return fdpo_error("--desirable-weight: must be > 0 (got %g)", o->desirable_weight);
    if (!(o->undesirable_weight > 0) || !isfinite(o->undesirable_weight))
        return fdpo_error("--undesirable-weight: must be > 0 (got %g)", o->undesirable_weight);
    if (isinf(o->label_threshold)) return fdpo_error("--label-threshold: must be finite (got %g)", o->label_threshold);
    const fdpo_kto_loss K = kto_loss_of(o);
    return fdpo_kto_loss_check(&K);
}

int fdpo_lab_algo_opts_check(const fdpo_lab_algo_opts *o) {
    const char *why;
    if ((unsigned)o->method >= FDPO_LAB_NMETHODS) return fdpo_error("--method: unknown method %d", (int)o->method);
    if (fdpo_beta_check(o->beta)) return -1;
    if (!fdpo_divergence_admissible(&o->div, &why)) return fdpo_error("--divergence: %s", why);
    if (o->method == FDPO_LAB_DPO) return 0; /* L-BFGS on the exact loss: no steps, lr or groups */
    if (o->method == FDPO_LAB_KTO && !o->exact)
        return fdpo_error("--sampled: kto runs on the exact expected loss only (offline, like dpo)");
    if (o->steps < 1) return fdpo_error("--steps: must be >= 1 (got %ld)", o->steps);
    if (!(o->lr > 0) || !isfinite(o->lr)) return fdpo_error("--lr: must be > 0 (got %g)", o->lr);
    if (o->method == FDPO_LAB_KTO) {
        if (o->labels != FDPO_LAB_LABELS_BT && o->labels != FDPO_LAB_LABELS_THRESHOLD)
            return fdpo_error("--labels: unknown labelling %d (expected bt or threshold)", (int)o->labels);
        return kto_opts_check(o);
    }
    if (o->method != FDPO_LAB_ONLINE && o->k < 2)
        return fdpo_error("--group-size: %s needs groups of at least 2 samples (got %ld)", fdpo_lab_method_name(o->method), o->k);
    if (o->k < 1) return fdpo_error("--group-size: must be >= 1 (got %ld)", o->k);
    if (o->method == FDPO_LAB_GRPO && fdpo_grpo_eps_check(o->grpo_eps)) return -1;
    return 0;
}

/* whether run_iterative reads --group-size: sampled groups/pairs, and exact grpo's n^k groups
 * (exact online and exact rloo take their expectations per response) */
static int algo_uses_groups(const fdpo_lab_algo_opts *o) {
    return o->method != FDPO_LAB_DPO && o->method != FDPO_LAB_KTO && (!o->exact || o->method == FDPO_LAB_GRPO);
}

int fdpo_lab_algo_validate(const fdpo_lab_algo_opts *o, size_t n) {
    if (n < 2) return fdpo_error("--n: the check needs at least 2 responses (got %zu)", n);
    if (fdpo_lab_algo_opts_check(o)) return -1;
    if (o->method == FDPO_LAB_DPO) {
        const size_t top = dpo_top(o, n);
        if (o->pair_top > n)
            return fdpo_error("--pair-top: %zu is more than the problem's n = %zu responses (--pair-top %zu pairs all of them)",
                              o->pair_top, n, n);
        /* --n 2 or 3 makes the default n/2 too small: the user may not have given --pair-top */
        if (top < 2 && o->pair_top == n / 2)
            return fdpo_error("--pair-top: offline pairs need at least 2 responses (got %zu; for these n = %zu responses "
                              "dpo's default, n/2, is %zu too); give --pair-top %s, more responses (--n, or the rows of "
                              "--data), or a --method list without dpo", top, n, n / 2, n == 2 ? "2" : "2 or 3");
        if (top < 2) return fdpo_error("--pair-top: offline pairs need at least 2 responses (got %zu)", top);
    }
    if (o->exact && o->method == FDPO_LAB_GRPO && pow((double)n, (double)o->k) > 1e6)
        return fdpo_error("--group-size: exact grpo averages over all n^k = %zu^%ld groups (more than 1e6); use a smaller "
                          "--group-size or --n, or the sampled variant", n, o->k);
    /* what the run allocates (in doubles, no size_t to overflow), before any output: the n x n
     * pair weights of dpo and exact online, the group buffers of the methods that draw
     * groups (run_iterative), O(n) vectors with L-BFGS's history; beyond the machine's memory it
     * died in fdpo_malloc after the table's header, naming no flag */
    const double ram = fdpo_ram_bytes(), dn = (double)n;
    const double pairs = o->method == FDPO_LAB_DPO || (o->exact && o->method == FDPO_LAB_ONLINE) ? 8 * dn * dn : 0;
    const double groups = algo_uses_groups(o) ? 24 * (double)o->k : 0, vectors = 8 * 40 * dn;
    if (ram > 0 && pairs + groups + vectors > ram) {
        const char *m = fdpo_lab_method_name(o->method);
        if (groups > pairs + vectors)
            return fdpo_error("--group-size %ld: %s's group buffers take %.3g GB, more than this machine's %.3g GB", o->k,
                              m, groups / 1e9, ram / 1e9);
        return fdpo_error("--n %zu: %s on %zu responses takes %.3g GB (%s), more than this machine's %.3g GB (--n, or the "
                          "rows of --data)", n, m, n, (pairs + groups + vectors) / 1e9,
                          pairs > 0 ? "its n x n pair weights" : "its per-response vectors", ram / 1e9);
    }
    return 0;
}

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
            w[i * n + j] = i == j ? 0 : q[i] * q[j] * fdpo_sigmoid(pp->reward[i] - pp->reward[j]);
}

typedef struct { double v; size_t i; } keyed;
static int by_value_desc(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    return x->v > y->v ? -1 : x->v < y->v ? 1 : (x->i > y->i) - (x->i < y->i);
}

/* offline: q = pi_ref restricted to its pair_top most likely responses. The loss does not pin the
 * responses outside them down (pi* is one minimiser of a set): the result is the minimiser L-BFGS
 * reaches from pi_ref, whose unseen logits stay at log pi_ref for rkl alone (docs/lab.md). */
static int run_dpo(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o, const fdpo_pref_loss *L,
                   const double *pistar, double *theta, fdpo_lab_algo_result *res) {
    const size_t n = pp->n, top = dpo_top(o, n); /* >= 2: fdpo_lab_algo_validate */
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
    double *gr, *gls;   /* a group's rewards and log-ratios (pg_group_grad) */
} step_ctx;

static void pg_group_grad(step_ctx *c, double weight, double *g) {
    /* ascent direction of E[r] - beta D_f from one group: (1/k) sum_i adv_i (e_{y_i} - pi);
     * g accumulates its negative (descent) scaled by weight */
    const size_t n = c->pp->n, k = c->k;
    for (size_t i = 0; i < k; i++) { c->gr[i] = c->pp->reward[c->ys[i]]; c->gls[i] = c->l[c->ys[i]]; }
    /* the trainer's group rule (fdpo_rl_step): f''s exponent capped at 64, factored out of a
     * group that passes it */
    fdpo_pg_group_advantages(&c->o->div, c->o->beta, c->gr, c->gls, k, c->o->method != FDPO_LAB_RLOO, c->o->grpo_eps,
                             c->shaped, c->adv);
    for (size_t i = 0; i < k; i++) {
        double a = weight * c->adv[i] / (double)k;
        g[c->ys[i]] -= a;
        for (size_t j = 0; j < n; j++) g[j] += a * c->pi[j];
    }
}

/* The exact variants' loss at theta for a step from the point where exact_step_grad last ran:
 * online, the pair loss with the pairs' distribution w held at that point (its gradient is the
 * semi-gradient); rloo, -(E_pi r - beta D_f(pi || pi_ref)) (its gradient is the exact policy
 * gradient). g[n] is scratch; *scale = the sum of the terms' magnitudes (its rounding's scale). */
static double exact_loss(step_ctx *c, const double *theta, double *g, double *scale) {
    const size_t n = c->pp->n;
    if (c->o->method == FDPO_LAB_ONLINE) {
        pair_ctx pc = {c->pp, c->L, c->w, c->pi, c->l, c->gl};
        double f = pair_fg(theta, g, &pc);
        *scale = fabs(f); /* a sum of terms >= 0 */
        return f;
    }
    policy(c->pp, theta, c->pi, c->l);
    double f = 0;
    *scale = 0;
    for (size_t i = 0; i < n; i++) {
        double d = c->o->beta * c->pp->pi_ref[i] * fdpo_f_log(&c->o->div, c->l[i]), e = c->pi[i] * c->pp->reward[i];
        f += d - e;
        *scale += fabs(d) + fabs(e);
    }
    return f;
}

/* g[n] = the exact step's descent direction at theta; returns exact_loss there (NaN for grpo,
 * whose normalised field is no loss's gradient) */
static double exact_step_grad(step_ctx *c, const double *theta, double *g, double *scale) {
    const size_t n = c->pp->n;
    memset(g, 0, n * sizeof(double));
    if (c->o->method == FDPO_LAB_ONLINE) {
        policy(c->pp, theta, c->pi, c->l);
        bt_pair_weights(c->pp, c->pi, c->w);
        pair_ctx pc = {c->pp, c->L, c->w, c->pi, c->l, c->gl};
        double f = pair_fg(theta, g, &pc);
        *scale = fabs(f);
        return f;
    }
    if (c->o->method == FDPO_LAB_RLOO) {
        /* E of the RLOO estimator = the exact gradient: pi_k (shaped_k - E_pi shaped) */
        double mean = 0, f = exact_loss(c, theta, g, scale);
        for (size_t i = 0; i < n; i++) {
            c->shaped[i] = fdpo_shaped_reward_pg(&c->o->div, c->o->beta, c->pp->reward[i], c->l[i]);
            mean += c->pi[i] * c->shaped[i];
        }
        for (size_t i = 0; i < n; i++) g[i] = -c->pi[i] * (c->shaped[i] - mean);
        return f;
    }
    policy(c->pp, theta, c->pi, c->l);
    /* GRPO: the advantage is not linear in the group, so average over all n^k ordered groups */
    size_t total = 1;
    for (size_t i = 0; i < c->k; i++) total *= n;
    for (size_t t = 0; t < total; t++) {
        size_t rest = t;
        double p = 1;
        for (size_t i = 0; i < c->k; i++) { c->ys[i] = rest % n; rest /= n; p *= c->pi[c->ys[i]]; }
        pg_group_grad(c, p, g);
    }
    *scale = NAN;
    return NAN;
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
            if (fdpo_rng_uniform(rng) >= fdpo_sigmoid(c->pp->reward[a] - c->pp->reward[b])) { size_t s = a; a = b; b = s; }
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
    const size_t n = pp->n, k = (size_t)o->k; /* steps, lr, k, grpo_eps, n^k: fdpo_lab_algo_validate */
    /* shaped rewards: per response (exact rloo) or per sample; the pair weights for exact online
     * alone (the sizes fdpo_lab_algo_validate checked against the machine's memory) */
    const size_t nk = algo_uses_groups(o) && k > n ? k : n;
    const int pairs = o->exact && o->method == FDPO_LAB_ONLINE;
    step_ctx c = {pp, o, L, k, fdpo_malloc(n * sizeof(double)), fdpo_malloc(n * sizeof(double)),
                  fdpo_malloc(n * sizeof(double)), pairs ? fdpo_malloc(n * n * sizeof(double)) : NULL,
                  fdpo_malloc(nk * sizeof(double)), fdpo_malloc(nk * sizeof(double)), fdpo_malloc(nk * sizeof(size_t)),
                  fdpo_malloc(nk * sizeof(double)), fdpo_malloc(nk * sizeof(double))};
    double *g = fdpo_malloc(n * sizeof(double)), *avg = fdpo_calloc(n, sizeof(double));
    double *trial = fdpo_malloc(n * sizeof(double)), *scratch = fdpo_malloc(n * sizeof(double));
    double *prev = fdpo_malloc(n * sizeof(double)), prev_step = NAN;   /* exact online/rloo: the iterate before theta */
    fdpo_rng rng;
    fdpo_rng_seed(&rng, o->seed);
    long t, averaged = 0;
    double step = o->lr; /* exact online/rloo: halved for the rest of the run when it fails (below) */
    res->samples = 0;
    for (t = 0; t < o->steps; t++) {
        if (o->exact) {
            double scale, f = exact_step_grad(&c, theta, g, &scale), lr = step;
            /* GRPO's normalised advantages do not shrink near pi* (the field is scale-free until
             * the spread reaches eps), so a fixed step circles pi* at a distance ~ lr: decay it */
            if (o->method == FDPO_LAB_GRPO) lr = o->lr / sqrt(1 + (double)t / 1000);
            /* converged: the step no longer changes theta beyond rounding */
            if (max_abs(g, n) * lr <= 1e-15) { res->converged = 1; break; }
            if (o->method == FDPO_LAB_GRPO) {
                for (size_t i = 0; i < n; i++) theta[i] -= lr * g[i];
                step = lr;
                continue;
            }
            /* Online and rloo descend an exact loss (exact_loss). A fixed step makes pi* an
             * unstable fixed point once lr * (the curvature there) > 2, and that curvature grows
             * with beta (~ beta^2 for the pair loss, ~ beta for rloo): so the step must lower the
             * loss (Armijo, up to its rounding), else it is halved, for the rest of the run (a
             * step that grew back would make the run circle pi* at the instability's edge). */
            double gg = 0;
            int lowered = 0;
            for (size_t i = 0; i < n; i++) gg += g[i] * g[i];
            for (;;) {
                double scale1;
                for (size_t i = 0; i < n; i++) trial[i] = theta[i] - step * g[i];
                double f1 = exact_loss(&c, trial, scratch, &scale1);
                const double noise = 64 * DBL_EPSILON * (scale + scale1);
                if ((lowered = f1 <= f - 1e-4 * step * gg + noise)) break;
                /* Near pi* at a large beta the decrease drowns in the loss's rounding (its terms
                 * grow with beta, and their sum's error is more than the slack above), and
                 * halving on noise stalled rloo 1e-9 short of pi* at beta 300. rloo's gradient is
                 * exact: a step after which it still points along g stopped short of the line's
                 * minimum, so it is taken, unless the loss rose by more than its rounding can. */
                if (o->method == FDPO_LAB_RLOO && f1 <= f + 1024 * noise) {
                    double s1, dot = 0;
                    exact_step_grad(&c, trial, scratch, &s1);   /* c's buffers: recomputed at theta next step */
                    for (size_t i = 0; i < n; i++) dot += scratch[i] * g[i];
                    if ((lowered = dot > 0)) break;
                }
                if (max_abs(g, n) * step <= 1e-15) break;
                step /= 2;
            }
            if (!lowered) { res->stalled = 1; t++; break; } /* no step lowers the loss: stop, unconverged */
            /* converged, too, when the step returns exactly to the iterate before the last one at
             * the same step length: the run is then a 2-cycle for ever (the map from (theta, step)
             * is deterministic) whose two points lower the loss to each other within its rounding,
             * i.e. pi* to rounding. The gradient has a rounding floor of its own (eps times its
             * terms' scale), which can sit above the 1e-15 test there: online fkl at beta 2.2 and
             * rkl at 5, rloo at 50 swapped two iterates ~1e-15 apart, within 2e-16 of pi*, for
             * all --steps and warned "did not converge". A run that stopped before is unchanged. */
            const int cycle = t > 0 && step == prev_step && memcmp(trial, prev, n * sizeof(double)) == 0;
            memcpy(prev, theta, n * sizeof(double));
            prev_step = step;
            memcpy(theta, trial, n * sizeof(double));
            if (cycle) { res->converged = 1; t++; break; }
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
    res->final_lr = o->exact ? step : NAN;
    free(c.pi); free(c.l); free(c.gl); free(c.w); free(c.shaped); free(c.adv); free(c.ys); free(c.gr); free(c.gls); free(g); free(avg);
    free(trial); free(scratch); free(prev);
    return 0;
}


/* ---- offline KTO: completions y ~ pi_ref, P(desirable | y) = p_y ---- */

typedef struct {
    const fdpo_lab_prepared *pp;
    fdpo_kto_loss K;
    const double *p;          /* p[n]: label probabilities */
    const unsigned char *in;  /* in[n]: responses the policy may put mass on (theta = -inf elsewhere) */
    int z0_zero;              /* the target: z0 = 0 exactly (docs/lab.md: Jensen) */
    double z0;                /* the last evaluation's reference point */
    double *pi, *l, *gl;
} kto_ctx;

/* sum_y pi_ref(y) [p_y L_d(l_y) + (1 - p_y) L_u(l_y)] with z0 = max(0, E_pi_ref[s~(l)]) held
 * constant (TRL computes z0 without gradient), and its (semi-)gradient wrt theta */
static double kto_fg(const double *theta, double *g, void *vctx) {
    kto_ctx *c = vctx;
    const size_t n = c->pp->n;
    policy(c->pp, theta, c->pi, c->l);
    double z0 = 0;
    if (!c->z0_zero) {
        for (size_t i = 0; i < n; i++) z0 += c->pp->pi_ref[i] * fdpo_kto_score(&c->K.div, c->l[i]);
        if (!(z0 > 0)) z0 = 0;
    }
    c->z0 = z0;
    double f = 0;
    for (size_t i = 0; i < n; i++) {
        c->gl[i] = 0;
        if (!c->in[i]) continue;
        double dd, du, q = c->pp->pi_ref[i];
        f += q * (c->p[i] * fdpo_kto_loss_one(&c->K, c->l[i], 1, z0, &dd) +
                  (1 - c->p[i]) * fdpo_kto_loss_one(&c->K, c->l[i], 0, z0, &du));
        c->gl[i] = q * (c->p[i] * dd + (1 - c->p[i]) * du);
    }
    l_to_theta_grad(c->pi, c->gl, n, g);
    for (size_t i = 0; i < n; i++) if (!c->in[i]) g[i] = 0;
    return f;
}

/* the labels' threshold: --label-threshold, by default E_pi_ref[r] */
static double kto_threshold(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o) {
    if (!isnan(o->label_threshold)) return o->label_threshold;
    double tau = 0;
    for (size_t i = 0; i < pp->n; i++) tau += pp->pi_ref[i] * pp->reward[i];
    return tau;
}

/* p[n] = P(desirable | y); in[n] = y is net desirable: p w_d > (1 - p) w_u, i.e. its loss falls
 * as l_y rises. Returns how many are; *undesirable_mass = pi_ref of the others. */
static size_t kto_label(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o, double *p, unsigned char *in,
                        double *undesirable_mass) {
    const double tau = kto_threshold(pp, o);
    size_t kept = 0;
    *undesirable_mass = 0;
    for (size_t i = 0; i < pp->n; i++) {
        p[i] = o->labels == FDPO_LAB_LABELS_BT ? fdpo_sigmoid(pp->reward[i] - tau) : pp->reward[i] > tau ? 1.0 : 0.0;
        in[i] = p[i] * o->desirable_weight > (1 - p[i]) * o->undesirable_weight;
        if (in[i]) kept++;
        else *undesirable_mass += pp->pi_ref[i];
    }
    return kept;
}

/* No net-desirable response: every response's loss rises with its l, and since sum pi = 1 some
 * l must rise, so the infimum lies on the simplex's boundary (where is a combinatorial
 * question), while pi_ref is a stationary point of the flow that can be the loss's maximum (hard
 * labels: equal net weights; rkl, beta <= 1 by Jensen). docs/lab.md's limit (items 2-4) needs a
 * non-empty D: refused, not measured against a meaningless target. */
static int kto_none_desirable(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o) {
    return fdpo_error("--method kto: no response is net desirable (P(desirable) w_d > (1 - P(desirable)) w_u holds for "
                      "none of the %zu responses, with --labels %s at the threshold %g%s, --desirable-weight %g and "
                      "--undesirable-weight %g): every response's KTO loss then rises with its probability, the loss's "
                      "infimum lies on the simplex's boundary, and the lab has no limit to compare the run with; lower "
                      "--label-threshold or --undesirable-weight, or raise --desirable-weight", pp->n,
                      o->labels == FDPO_LAB_LABELS_BT ? "bt" : "threshold", kto_threshold(pp, o),
                      isnan(o->label_threshold) ? " (E_pi_ref[r], the default --label-threshold)" : "",
                      o->desirable_weight, o->undesirable_weight);
}

static int kto_setup(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o, kto_ctx *c, double *p, unsigned char *in,
                     double *undesirable_mass) {
    const size_t n = pp->n;
    memset(c, 0, sizeof *c);
    c->pp = pp;
    c->K = kto_loss_of(o);
    if (kto_opts_check(o)) return -1;
    if (kto_label(pp, o, p, in, undesirable_mass) == 0) return kto_none_desirable(pp, o);
    c->p = p;
    c->in = in;
    c->pi = fdpo_malloc(n * sizeof(double));
    c->l = fdpo_malloc(n * sizeof(double));
    c->gl = fdpo_malloc(n * sizeof(double));
    return 0;
}
static void kto_free(kto_ctx *c) { free(c->pi); free(c->l); free(c->gl); }

/* the target's variables are the logits of the responses it keeps; the others sit at -inf */
typedef struct { kto_ctx *c; const size_t *keep; size_t m; double *theta, *g; } kto_sub_ctx;
static double kto_sub_fg(const double *x, double *gx, void *vctx) {
    kto_sub_ctx *s = vctx;
    for (size_t j = 0; j < s->m; j++) s->theta[s->keep[j]] = x[j];
    double f = kto_fg(s->theta, s->g, s->c);
    for (size_t j = 0; j < s->m; j++) gx[j] = s->g[s->keep[j]];
    return f;
}

int fdpo_lab_kto_target(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o, double *pi) {
    const size_t n = pp->n;
    kto_ctx c;
    double *p = fdpo_malloc(n * sizeof(double)), um, gnorm;
    unsigned char *in = fdpo_malloc(n);
    int rc = kto_setup(pp, o, &c, p, in, &um);
    if (rc == 0) {
        size_t *keep = fdpo_malloc(n * sizeof(size_t)), m = 0;
        double *x = fdpo_malloc(n * sizeof(double));
        kto_sub_ctx sc = {&c, keep, 0, fdpo_malloc(n * sizeof(double)), fdpo_malloc(n * sizeof(double))};
        for (size_t i = 0; i < n; i++) {
            sc.theta[i] = -INFINITY;
            if (in[i]) { keep[m] = i; x[m++] = pp->log_pi_ref[i]; }
        }
        sc.m = m;
        c.z0_zero = 1;
        fdpo_lab_lbfgs(m, x, kto_sub_fg, &sc, 1e-15, 10000, &gnorm);
        for (size_t j = 0; j < m; j++) sc.theta[keep[j]] = x[j];
        policy(pp, sc.theta, pi, c.l);
        free(keep); free(x); free(sc.theta); free(sc.g);
        kto_free(&c);
    }
    free(p); free(in);
    return rc;
}

/* the run: gradient descent from pi_ref with a fixed step (the flow an SGD trainer follows; a
 * quasi-Newton step can jump to a corner of the simplex, where softmax's gradient vanishes
 * although the loss is not minimal); the net-undesirable responses only tend to 0 */
static int run_kto(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o, double *theta, fdpo_lab_algo_result *res) {
    const size_t n = pp->n; /* steps, lr: fdpo_lab_algo_opts_check */
    kto_ctx c;
    double *p = fdpo_malloc(n * sizeof(double)), *g = fdpo_malloc(n * sizeof(double));
    unsigned char *in = fdpo_malloc(n);
    int rc = kto_setup(pp, o, &c, p, in, &res->undesirable_mass);
    if (rc == 0) {
        memset(in, 1, n);
        long t;
        for (t = 0; t < o->steps; t++) {
            kto_fg(theta, g, &c);
            if (max_abs(g, n) * o->lr <= 1e-16) break;
            for (size_t i = 0; i < n; i++) theta[i] -= o->lr * g[i];
        }
        res->iterations = t;
        /* near the limit the flow is slow (the error falls like 1/t): finish with L-BFGS, which
         * from here stays in the basin the flow found */
        double gnorm;
        res->iterations += fdpo_lab_lbfgs(n, theta, kto_fg, &c, 1e-15, 10000, &gnorm);
        kto_fg(theta, g, &c); /* z0 at the final policy */
        res->z0 = c.z0;
        kto_free(&c);
    }
    free(p); free(g); free(in);
    return rc;
}

int fdpo_lab_algo_validate_problem(const fdpo_lab_algo_opts *o, const fdpo_lab_prepared *pp) {
    if (fdpo_lab_algo_validate(o, pp->n)) return -1;
    if (o->method == FDPO_LAB_KTO) {
        double *p = fdpo_malloc(pp->n * sizeof(double)), um;
        unsigned char *in = fdpo_malloc(pp->n);
        size_t kept = kto_label(pp, o, p, in, &um);
        free(p); free(in);
        if (kept == 0) return kto_none_desirable(pp, o);
    }
    return 0;
}

int fdpo_lab_algo_run(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o, double *pi_out, fdpo_lab_algo_result *res) {
    const size_t n = pp->n;
    if (fdpo_lab_algo_validate_problem(o, pp)) return -1;
    fdpo_pref_loss L = {0};
    L.kind = FDPO_LOSS_SIGMOID;
    L.div = o->div;
    L.beta = o->beta;
    memset(res, 0, sizeof *res);
    res->final_lr = NAN;
    if (o->method != FDPO_LAB_KTO) res->z0 = res->undesirable_mass = NAN; /* kto's alone: not 0, which reads as a value */
    double *pistar = fdpo_malloc(n * sizeof(double)), *theta = fdpo_malloc(n * sizeof(double));
    double *pi = fdpo_malloc(n * sizeof(double)), *l = fdpo_malloc(n * sizeof(double));
    fdpo_lab_result star;
    int rc = fdpo_lab_solve(pp, &o->div, o->beta, pistar, &star);
    for (size_t i = 0; i < n; i++) theta[i] = pp->log_pi_ref[i]; /* start at pi_ref */
    if (rc == 0)
        rc = o->method == FDPO_LAB_DPO   ? run_dpo(pp, o, &L, pistar, theta, res)
           : o->method == FDPO_LAB_KTO   ? run_kto(pp, o, theta, res)
                                         : run_iterative(pp, o, &L, theta, res);
    double *target = pistar;
    if (rc == 0 && o->method == FDPO_LAB_KTO) {
        target = fdpo_malloc(n * sizeof(double));
        rc = fdpo_lab_kto_target(pp, o, target);
    }
    if (rc == 0) {
        policy(pp, theta, pi, l);
        for (size_t i = 0; i < n; i++) {
            double e = fabs(pi[i] - pistar[i]), et = fabs(pi[i] - target[i]);
            if (e > res->max_abs_diff) res->max_abs_diff = e;
            if (et > res->target_diff) res->target_diff = et;
            if (pi_out) pi_out[i] = pi[i];
        }
        res->objective_gap = fdpo_lab_objective_gap(&o->div, o->beta, pp->pi_ref, pp->reward, pistar, pi, n);
    }
    if (target != pistar) free(target);
    free(pistar); free(theta); free(pi); free(l);
    return rc;
}
