/* The f-divergence table (DESIGN.md §2) and the preference/SFT losses (§3). Pure functions,
 * shared by the trainer, the lab and the tests: this is the one place they live. */
#ifndef FDPO_OBJECTIVES_H
#define FDPO_OBJECTIVES_H
#include <stddef.h>

typedef enum { FDPO_DIV_RKL, FDPO_DIV_FKL, FDPO_DIV_JS, FDPO_DIV_ALPHA, FDPO_DIV_TV, FDPO_DIV_CHI2 } fdpo_div_kind;
typedef struct { fdpo_div_kind kind; double alpha; /* ALPHA only, 0 < alpha < 1, paper convention */ } fdpo_divergence;

/* "rkl", "fkl", "js", "alpha:0.5", "tv", "chi2". Error names the spec. */
int fdpo_divergence_parse(const char *spec, fdpo_divergence *d);
void fdpo_divergence_name(const fdpo_divergence *d, char *buf, size_t n); /* canonical spec */
/* 1 if usable by f-DPO (0 not in dom f'); else 0 and *why explains (tv, chi2). */
int fdpo_divergence_admissible(const fdpo_divergence *d, const char **why);

double fdpo_f(const fdpo_divergence *d, double u);           /* f(u), u >= 0 */
double fdpo_fprime(const fdpo_divergence *d, double u);      /* f'(u) */
double fdpo_fprime_inv(const fdpo_divergence *d, double v);  /* (f')^-1(v); NaN outside domain */
double fdpo_fprime_inv_sup(const fdpo_divergence *d);        /* sup of the domain of (f')^-1 (+inf for rkl) */
double fdpo_score(const fdpo_divergence *d, double l);       /* s(l), l = log u (capped exponents) */
double fdpo_score_grad(const fdpo_divergence *d, double l);  /* s'(l) */

typedef enum { FDPO_LOSS_SIGMOID, FDPO_LOSS_ROBUST, FDPO_LOSS_HINGE, FDPO_LOSS_IPO, FDPO_LOSS_SIMPO } fdpo_loss_kind;
typedef struct {
    fdpo_loss_kind kind;
    fdpo_divergence div;      /* ignored by simpo */
    double beta;              /* > 0 */
    double label_smoothing;   /* e in [0, 0.5): cDPO for sigmoid, robust */
    double simpo_gamma;       /* SimPO target margin gamma (TRL: gamma_beta_ratio * beta) */
    double sft_weight;        /* RPO: a * mean NLL of chosen tokens, applied by the trainer */
} fdpo_pref_loss;

int fdpo_loss_parse(const char *spec, fdpo_loss_kind *k);  /* "sigmoid", "robust", ... */
const char *fdpo_loss_name(fdpo_loss_kind k);              /* inverse of fdpo_loss_parse */
/* Validates beta > 0, smoothing range, divergence admissible (loss != simpo). */
int fdpo_pref_loss_check(const fdpo_pref_loss *L);

/* One pair. lw, ll: for sigmoid/robust/hinge/ipo the log-ratios l = log pi - log pi_ref of
 * chosen and rejected (summed over tokens; ipo: the trainer passes per-token means);
 * for simpo the mean token log-probs of the policy. Returns the loss; writes dL/dlw, dL/dll
 * (either pointer may be NULL). */
double fdpo_pref_loss_pair(const fdpo_pref_loss *L, double lw, double ll, double *dlw, double *dll);

/* Policy gradient with an f-penalty (src/objectives/pg_reward.c). l = log pi(y) - log pi_ref(y)
 * summed over the completion. fdpo_fprime_log(d, l) = f'(e^l) with capped exponents (NaN for
 * tv, chi2); the shaped reward is r - beta f'(e^l). Advantages over a group of k >= 2 samples
 * of one prompt: RLOO x_i - mean of the other k - 1; GRPO (x_i - mean)/(std + eps), std with
 * k - 1 (TRL's eps is 1e-4). */
double fdpo_fprime_log(const fdpo_divergence *d, double l);
double fdpo_shaped_reward(const fdpo_divergence *d, double beta, double reward, double log_ratio);
void fdpo_rloo_advantages(const double *shaped, size_t k, double *adv);
void fdpo_grpo_advantages(const double *shaped, size_t k, double eps, double *adv);

#endif
