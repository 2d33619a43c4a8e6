/* Preference losses of DESIGN.md §3 on one (chosen, rejected) pair, with analytic gradients.
 *
 * Delta = s(lw) - s(ll) and z = beta * Delta. Every loss is a function of z (or of Delta for
 * ipo), so dL/dlw = dL/dDelta * s'(lw) and dL/dll = -dL/dDelta * s'(ll). softplus and
 * log sigma use their overflow-free forms. */
#include <math.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/objectives.h"

static const char LOSS_LIST[] = "sigmoid, robust, hinge, ipo, simpo";

int fdpo_loss_parse(const char *spec, fdpo_loss_kind *k) {
    static const struct { const char *name; fdpo_loss_kind kind; } T[] = {
        {"sigmoid", FDPO_LOSS_SIGMOID}, {"robust", FDPO_LOSS_ROBUST}, {"hinge", FDPO_LOSS_HINGE},
        {"ipo", FDPO_LOSS_IPO}, {"simpo", FDPO_LOSS_SIMPO},
    };
    for (size_t i = 0; spec && i < sizeof T / sizeof T[0]; i++)
        if (!strcmp(spec, T[i].name)) { *k = T[i].kind; return 0; }
    return fdpo_error("--loss: unknown loss '%s' (expected one of %s)", spec ? spec : "", LOSS_LIST);
}

const char *fdpo_loss_name(fdpo_loss_kind k) {
    switch (k) {
    case FDPO_LOSS_SIGMOID: return "sigmoid";
    case FDPO_LOSS_ROBUST: return "robust";
    case FDPO_LOSS_HINGE: return "hinge";
    case FDPO_LOSS_IPO: return "ipo";
    case FDPO_LOSS_SIMPO: return "simpo";
    }
    return "?";
}

int fdpo_pref_loss_check(const fdpo_pref_loss *L) {
    /* a kind past the enum gave a NaN loss (fdpo_pref_loss_pair) named "?" */
    if ((unsigned)L->kind > FDPO_LOSS_SIMPO) return fdpo_error("--loss: unknown loss %d", (int)L->kind);
    if ((unsigned)L->div.kind > FDPO_DIV_CHI2) return fdpo_error("--divergence: unknown divergence %d", (int)L->div.kind);
    if (fdpo_beta_check(L->beta)) return -1;
    if (!(L->label_smoothing >= 0 && L->label_smoothing < 0.5))
        return fdpo_error("--label-smoothing: must be in [0, 0.5) (got %g)", L->label_smoothing);
    if (L->label_smoothing > 0 && L->kind != FDPO_LOSS_SIGMOID && L->kind != FDPO_LOSS_ROBUST)
        return fdpo_error("--label-smoothing: only the sigmoid (cDPO) and robust losses use it, not %s (got %g)",
                          fdpo_loss_name(L->kind), L->label_smoothing);
    if (!isfinite(L->simpo_gamma))
        return fdpo_error("--simpo-gamma: must be finite (got %g)", L->simpo_gamma);
    if (!(L->sft_weight >= 0) || !isfinite(L->sft_weight))
        return fdpo_error("--sft-weight: must be a finite number >= 0 (got %g)", L->sft_weight);
    if (L->kind == FDPO_LOSS_SIMPO && L->div.kind != FDPO_DIV_RKL) {
        /* SimPO has no reference and no divergence: a run labelled with one would mislead */
        char name[64];
        fdpo_divergence_name(&L->div, name, sizeof name);
        return fdpo_error("--divergence %s: --loss simpo ignores the divergence (it has no reference); "
                          "drop --divergence or pick another --loss", name);
    }
    if (L->kind != FDPO_LOSS_SIMPO) {
        const char *why;
        if (!fdpo_divergence_admissible(&L->div, &why)) {
            char name[64];
            fdpo_divergence_name(&L->div, name, sizeof name);
            return fdpo_error("--divergence %s: %s", name, why);
        }
    }
    return 0;
}

double fdpo_pref_loss_pair(const fdpo_pref_loss *L, double lw, double ll, double *dlw, double *dll) {
    const double b = L->beta, e = L->label_smoothing;
    double loss, dz; /* dz = dL/dz for the z-losses; for ipo dL/dDelta */
    if (L->kind == FDPO_LOSS_SIMPO) {
        /* -log sigma(beta (lw - ll) - gamma) on mean token log-probs: no reference, no f */
        double z = b * (lw - ll) - L->simpo_gamma;
        loss = fdpo_softplus(-z);
        double g = -b * fdpo_sigmoid(-z);
        if (dlw) *dlw = g;
        if (dll) *dll = -g;
        return loss;
    }
    double delta = fdpo_score(&L->div, lw) - fdpo_score(&L->div, ll);
    double z = b * delta, dL_ddelta;
    switch (L->kind) {
    case FDPO_LOSS_SIGMOID:
        /* cDPO: -(1-e) log sigma(z) - e log sigma(-z); the e term only where e > 0 (0 * softplus(inf)
         * was NaN where beta * Delta overflows) */
        loss = (1 - e) * fdpo_softplus(-z) + (e > 0 ? e * fdpo_softplus(z) : 0);
        dz = -(1 - e) * fdpo_sigmoid(-z) + e * fdpo_sigmoid(z);
        dL_ddelta = b * dz;
        break;
    case FDPO_LOSS_ROBUST:
        /* (-(1-e) log sigma(z) + e log sigma(-z)) / (1 - 2e): unbiased under label flips at rate e */
        loss = ((1 - e) * fdpo_softplus(-z) - (e > 0 ? e * fdpo_softplus(z) : 0)) / (1 - 2 * e);   /* as cDPO's */
        dz = (-(1 - e) * fdpo_sigmoid(-z) - e * fdpo_sigmoid(z)) / (1 - 2 * e);
        dL_ddelta = b * dz;
        break;
    case FDPO_LOSS_HINGE:
        loss = 1 - z > 0 ? 1 - z : 0;
        dL_ddelta = 1 - z > 0 ? -b : 0;
        break;
    case FDPO_LOSS_IPO: {
        /* (Delta - 1/(2 beta))^2; TRL convention: lw, ll are per-token mean log-ratios */
        double m = delta - 1 / (2 * b);
        loss = m * m;
        dL_ddelta = 2 * m;
        break;
    }
    default: loss = NAN; dL_ddelta = NAN; break;
    }
    if (dlw) *dlw = dL_ddelta * fdpo_score_grad(&L->div, lw);
    if (dll) *dll = -dL_ddelta * fdpo_score_grad(&L->div, ll);
    return loss;
}

/* ---- reward model (Bradley-Terry, TRL RewardTrainer) ---- */
double fdpo_rm_loss_pair(double r_chosen, double r_rejected, double margin, double center_coef,
                         double *d_chosen, double *d_rejected) {
    /* -log sigma(r_c - r_r - margin) + coef * (r_c + r_r)^2 */
    double z = r_chosen - r_rejected - margin, sum = r_chosen + r_rejected;
    double g = -fdpo_sigmoid(-z), c = 2 * center_coef * sum;
    if (d_chosen) *d_chosen = g + c;
    if (d_rejected) *d_rejected = -g + c;
    return fdpo_softplus(-z) + center_coef * sum * sum;
}

/* ---- KTO (Ethayarajh et al. 2024; TRL KTOTrainer, loss_type "kto") ---- */
int fdpo_kto_loss_check(const fdpo_kto_loss *K) {
    if (fdpo_beta_check(K->beta)) return -1;
    if (!(K->desirable_weight >= 0) || !isfinite(K->desirable_weight))
        return fdpo_error("--desirable-weight: must be a finite number >= 0 (got %g)", K->desirable_weight);
    if (!(K->undesirable_weight >= 0) || !isfinite(K->undesirable_weight))
        return fdpo_error("--undesirable-weight: must be a finite number >= 0 (got %g)", K->undesirable_weight);
    const char *why;
    if (!fdpo_divergence_admissible(&K->div, &why)) {
        char name[64];
        fdpo_divergence_name(&K->div, name, sizeof name);
        return fdpo_error("--divergence %s: %s", name, why);
    }
    return 0;
}

double fdpo_kto_score(const fdpo_divergence *d, double l) { return fdpo_score(d, l) - fdpo_score(d, 0.0); }

double fdpo_kto_z0(const fdpo_divergence *d, const double *l_kl, size_t n) {
    if (n == 0) return 0;
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fdpo_kto_score(d, l_kl[i]);
    s /= (double)n;
    return s > 0 ? s : 0;
}

double fdpo_kto_loss_one(const fdpo_kto_loss *K, double l, int desirable, double z0, double *dl) {
    /* desirable: w_d (1 - sigma(beta (s~(l) - z0))); undesirable: w_u (1 - sigma(beta (z0 - s~(l)))).
     * 1 - sigma(x) = sigma(-x); d/dx sigma(-x) = -sigma(x) sigma(-x). z0 is a constant. */
    double s = fdpo_kto_score(&K->div, l), b = K->beta;
    double x = desirable ? b * (s - z0) : b * (z0 - s), w = desirable ? K->desirable_weight : K->undesirable_weight;
    double dx_ds = desirable ? b : -b;
    if (dl) *dl = -w * fdpo_sigmoid(x) * fdpo_sigmoid(-x) * dx_ds * fdpo_score_grad(&K->div, l);
    return w * fdpo_sigmoid(-x);
}
