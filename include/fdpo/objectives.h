/* The f-divergence table (DESIGN.md §2) and the preference/SFT losses (§3). Pure functions,
 * shared by the trainer, the lab and the tests: this is the one place they live. */
#ifndef FDPO_OBJECTIVES_H
#define FDPO_OBJECTIVES_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The logistic function and its logs in overflow-free form, for every caller in the library
 * (losses, Bradley-Terry fits, calibration, simulated labels): finite for any finite x. */
double fdpo_sigmoid(double x);      /* 1 / (1 + e^-x) */
double fdpo_log_sigmoid(double x);  /* log sigma(x) = -softplus(-x) */
double fdpo_softplus(double x);     /* log(1 + e^x) */

typedef enum { FDPO_DIV_RKL, FDPO_DIV_FKL, FDPO_DIV_JS, FDPO_DIV_ALPHA, FDPO_DIV_TV, FDPO_DIV_CHI2 } fdpo_div_kind;
typedef struct { fdpo_div_kind kind; double alpha; /* ALPHA only, 0 < alpha < 1, paper convention */ } fdpo_divergence;

/* "rkl", "fkl", "js", "alpha:0.5", "tv", "chi2". Error names the spec. */
int fdpo_divergence_parse(const char *spec, fdpo_divergence *d);
/* Comma list of specs ("rkl,js,alpha:0.5"); "all" = rkl,fkl,js,alpha:0.5,tv,chi2. *out is
 * malloc'd (free it). Errors name the bad item; callers add the flag name. */
int fdpo_divergence_parse_list(const char *spec, fdpo_divergence **out, size_t *count);
void fdpo_divergence_name(const fdpo_divergence *d, char *buf, size_t n); /* canonical spec */
/* 1 if usable by f-DPO (0 not in dom f'); else 0 and *why explains (tv, chi2). */
int fdpo_divergence_admissible(const fdpo_divergence *d, const char **why);
/* The regularisation strength of max E[r] - beta D_f: finite and > 0, else an error naming
 * the flag ("--beta: must be a finite number > 0 (got 0)"). Every user of beta checks it here:
 * the losses, rl, eval's calibration and the lab. */
int fdpo_beta_check(double beta);

double fdpo_f(const fdpo_divergence *d, double u);           /* f(u), u >= 0 */
/* f(e^l), from l = log u: alpha:A in the forms that keep every A in (0, 1) and every l accurate
 * (the table's (u^(1-A) - (1-A) u - A)/(A(A-1)) cancels to ~1e-16/(1-A) near A = 1 and to
 * ~1e-16/A near 0; a series in l near l = 0), js in a form without cancellation (its two terms
 * of size ~u left an absolute 1e-16 where f ~ l^2/4), finite up to l = 710.15 where e^l alone
 * overflows; l = -inf giving f(0); the others from l too (fkl -l, rkl l e^l, tv and chi2 in
 * expm1(l), exact near u = 1), finite wherever the value is. fdpo_f, fdpo_f_over_u_log and
 * fdpo_qf_log share these forms. */
double fdpo_f_log(const fdpo_divergence *d, double l);
/* f(u)/u at u = e^l: one sample's estimate of D_f(pi || pi_ref) = E_pi[f(u)/u] from its
 * log-ratio l = log pi - log pi_ref (fdpo rl's objective/f_divergence, fdpo eval's fdiv_seq).
 * In log space: finite wherever the value is (js -> log 2, alpha -> 1/alpha, tv -> 1/2 as
 * l -> inf), where exp(l)/exp(l) was NaN past l = 709; tv and chi2 in expm1, full precision
 * near u = 1. */
double fdpo_f_over_u_log(const fdpo_divergence *d, double l);
/* pi_ref f(pi/pi_ref) from lp = log pi, lq = log pi_ref (finite): one vocabulary entry's
 * term of a token-level D_f (fdpo eval's fdiv_tok). Finite where the value is, also where pi_ref
 * underflows to 0 and pi/pi_ref overflows (tends to pi * lim f(u)/u: js log 2, alpha 1/A, tv 1/2). */
double fdpo_qf_log(const fdpo_divergence *d, double lp, double lq);
double fdpo_fprime(const fdpo_divergence *d, double u);      /* f'(u) */
double fdpo_fprime_inv(const fdpo_divergence *d, double v);  /* (f')^-1(v); NaN outside domain */
double fdpo_fprime_inv_sup(const fdpo_divergence *d);        /* sup of the domain of (f')^-1 (+inf for rkl) */
double fdpo_score(const fdpo_divergence *d, double l);       /* s(l), l = log u (capped exponents) */
double fdpo_score_grad(const fdpo_divergence *d, double l);  /* s'(l) */
/* s(l) with its exponent capped at s'(l)'s cap (e^64) instead of the score's (88.72): for a score
 * that weighs a gradient, RL's shaped reward (fdpo_shaped_reward_pg) */
double fdpo_score_grad_capped(const fdpo_divergence *d, double l);
/* Delta = s(l_w) - s(l_l) without the exponent cap of fdpo_score (fdpo eval's calibration, in
 * double): where neither exponent reaches the cap, exactly fdpo_score(l_w) - fdpo_score(l_l);
 * beyond it, the exact difference (the cap made two log-ratios below -88.72 a tie), +-inf only
 * where it exceeds double's range. Training keeps the capped score. */
double fdpo_score_diff(const fdpo_divergence *d, double lw, double ll);

typedef enum { FDPO_LOSS_SIGMOID, FDPO_LOSS_ROBUST, FDPO_LOSS_HINGE, FDPO_LOSS_IPO, FDPO_LOSS_SIMPO } fdpo_loss_kind;
typedef struct {
    fdpo_loss_kind kind;
    fdpo_divergence div;      /* ignored by simpo */
    double beta;              /* > 0 */
    double label_smoothing;   /* e in [0, 0.5): cDPO for sigmoid, robust */
    double simpo_gamma;       /* SimPO target margin gamma (princeton-nlp/SimPO: gamma_beta_ratio * beta; TRL CPO: simpo_gamma) */
    double sft_weight;        /* RPO: a * mean NLL of chosen tokens, applied by the trainer */
} fdpo_pref_loss;

int fdpo_loss_parse(const char *spec, fdpo_loss_kind *k);  /* "sigmoid", "robust", ... */
const char *fdpo_loss_name(fdpo_loss_kind k);              /* inverse of fdpo_loss_parse */
/* Validates beta > 0, smoothing range, divergence admissible (loss != simpo); simpo takes
 * only the default rkl (any other divergence would be ignored, so it is refused). */
int fdpo_pref_loss_check(const fdpo_pref_loss *L);

/* One pair. lw, ll: for sigmoid/robust/hinge/ipo the log-ratios l = log pi - log pi_ref of
 * chosen and rejected (summed over tokens; ipo: the trainer passes per-token means);
 * for simpo the mean token log-probs of the policy. Returns the loss; writes dL/dlw, dL/dll
 * (either pointer may be NULL). */
double fdpo_pref_loss_pair(const fdpo_pref_loss *L, double lw, double ll, double *dlw, double *dll);

/* Bradley-Terry reward-model loss of one pair (TRL RewardTrainer):
 *   -log sigma(r_chosen - r_rejected - margin) + center_coef * (r_chosen + r_rejected)^2
 * (TRL subtracts the per-pair margin; center_coef = center_rewards_coefficient, whose term
 * TRL takes as a mean over the batch, as the trainer's mean over pairs does here).
 * Writes dL/dr_chosen, dL/dr_rejected (either may be NULL). */
double fdpo_rm_loss_pair(double r_chosen, double r_rejected, double margin, double center_coef,
                         double *d_chosen, double *d_rejected);

/* KTO (Ethayarajh et al. 2024, TRL KTOTrainer loss_type "kto") with an f-divergence score.
 * l = log pi(y|x) - log pi_ref(y|x) summed over completion tokens. s~(l) = s(l) - s(0): the
 * f-DPO score shifted so that it is 0 when the policy equals the reference (rkl: s~(l) = l,
 * plain KTO; the shift matters because z0 is clamped at 0 and compared with s~ directly).
 *   z0 = max(0, mean over mismatched (prompt, completion) pairs of s~(l_KL)), a constant
 *   desirable:   w_d * (1 - sigma(beta * (s~(l) - z0)))
 *   undesirable: w_u * (1 - sigma(beta * (z0 - s~(l)))) */
typedef struct {
    fdpo_divergence div;
    double beta;                 /* > 0 */
    double desirable_weight;     /* TRL desirable_weight (default 1) */
    double undesirable_weight;   /* TRL undesirable_weight (default 1) */
} fdpo_kto_loss;
int fdpo_kto_loss_check(const fdpo_kto_loss *K);   /* beta, weights, admissible divergence */
double fdpo_kto_score(const fdpo_divergence *d, double l);            /* s~(l) */
double fdpo_kto_z0(const fdpo_divergence *d, const double *l_kl, size_t n);
/* Loss of one example; writes dL/dl (z0 held constant) when dl != NULL. */
double fdpo_kto_loss_one(const fdpo_kto_loss *K, double l, int desirable, double z0, double *dl);
/* Policy gradient with an f-penalty (src/objectives/pg_reward.c). l = log pi(y) - log pi_ref(y)
 * summed over the completion. fdpo_fprime_log(d, l) = f'(e^l) with capped exponents (NaN for
 * tv, chi2); the shaped reward is r - beta f'(e^l), logged as such. fdpo_shaped_reward_pg is the
 * one the advantages are computed from, which weigh grad log pi: f''s exponent capped at e^64,
 * the f-DPO derivative's cap (fdpo_score_grad_capped), so a sample far below the reference
 * (fkl, alpha) cannot overflow the step's gradient; the two differ only where -l (fkl) or -A l
 * (alpha) exceeds 64. Advantages over a group of k >= 2 samples of one prompt: RLOO x_i - mean
 * of the other k - 1; GRPO (x_i - mean)/(std + eps), std with k - 1 (TRL's eps is 1e-4). */
double fdpo_fprime_log(const fdpo_divergence *d, double l);
double fdpo_shaped_reward(const fdpo_divergence *d, double beta, double reward, double log_ratio);
double fdpo_shaped_reward_pg(const fdpo_divergence *d, double beta, double reward, double log_ratio);
void fdpo_rloo_advantages(const double *shaped, size_t k, double *adv);
void fdpo_grpo_advantages(const double *shaped, size_t k, double eps, double *adv);
/* One group's advantages (k >= 2 samples of one prompt) from its rewards and log-ratios: GRPO
 * (grpo != 0, grpo_eps) or RLOO over fdpo_shaped_reward_pg's rewards, bit for bit, while every
 * exponent of the group (-l fkl, -A l alpha) is at most 64. Past it the group's largest
 * exponent m is factored out: its shaped rewards are taken times e^-(m - 64), so RLOO's
 * advantages are the float64 ones times that factor (their direction, at the cap's size) and
 * GRPO's, with eps scaled alike, the float64 ones; capping each sample made samples past the
 * cap tie (a group wholly past it got advantages of 0). x[k]: scratch (the group's shaped
 * rewards as used, possibly as deviations from sample 0's). fdpo_rl_step and the lab use it. */
void fdpo_pg_group_advantages(const fdpo_divergence *d, double beta, const double *reward, const double *log_ratio,
                              size_t k, int grpo, double grpo_eps, double *x, double *adv);
/* GRPO's eps: a finite number > 0, else an error naming --grpo-eps ("--grpo-eps: must be > 0
 * (got inf)"): an inf eps made every advantage 0 (an exact lab grpo run did no step and reported
 * converged). fdpo_rl_config_check and fdpo_lab_algo_opts_check both check it here. */
int fdpo_grpo_eps_check(double eps);

#ifdef __cplusplus
}
#endif

#endif
