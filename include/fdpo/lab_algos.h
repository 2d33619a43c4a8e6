/* Algorithm checks on a tabular problem (DESIGN.md §4, §6; docs/lab.md "check --method").
 *
 * One prompt, n responses, a softmax policy pi_theta = softmax(theta) started at pi_ref.
 * Each alignment algorithm runs on it and is compared with the exact pi* of fdpo_lab_solve:
 *
 *   dpo     offline f-DPO: pairs (y1, y2) ~ pi_ref x pi_ref restricted to the pair_top most
 *           likely responses under pi_ref (the only ones an SFT model proposes), labelled by
 *           Bradley-Terry on the true reward; minimises the exact expected loss (L-BFGS) with
 *           or without `exact`. pi* minimises that loss too, but so does every policy that
 *           moves the unseen responses' mass (a set of minimisers): the run reports the one
 *           L-BFGS reaches from pi_ref (docs/lab.md).
 *   online  online f-DPO: every step the pairs come from the CURRENT policy, labelled by
 *           Bradley-Terry; one gradient step on that step's loss (semi-gradient: the pair
 *           distribution is not differentiated, as in TRL's OnlineDPOTrainer).
 *   rloo    REINFORCE on the shaped reward r - beta f'(pi/pi_ref) with leave-one-out baselines.
 *   grpo    the same with group-normalised advantages (x - mean)/(std + eps).
 *   kto     offline KTO (fdpo_kto_loss_one): unpaired completions y ~ pi_ref, labelled
 *           desirable with probability p(y) (labels below), z0 = max(0, E_pi_ref[s~(l)])
 *           held constant per evaluation; minimises the exact expected loss (L-BFGS). Its
 *           limit is NOT pi*: it puts no mass on the net-undesirable responses
 *           (p w_d <= (1 - p) w_u) and on the others minimises
 *           sum_y pi_ref(y) (p w_d - (1 - p) w_u) sigma(-beta s~(l_y)) (docs/lab.md);
 *           target_diff measures the distance to that limit.
 *
 * exact = 1 replaces every sample by its expectation (rloo: the exact policy gradient of
 * E[r] - beta D_f; grpo: the average over all n^k ordered groups; online: the exact expected
 * pair loss under pi_theta x pi_theta); exact = 0 samples with fdpo_rng and averages the iterates
 * of the second half of the run (Polyak-Ruppert) under a 1/sqrt(t) step size. */
#ifndef FDPO_LAB_ALGOS_H
#define FDPO_LAB_ALGOS_H
#include <stdint.h>
#include "fdpo/lab.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { FDPO_LAB_DPO, FDPO_LAB_ONLINE, FDPO_LAB_RLOO, FDPO_LAB_GRPO, FDPO_LAB_KTO } fdpo_lab_method;
#define FDPO_LAB_NMETHODS 5

/* KTO labels from the reward: bt: P(desirable | y) = sigma(r(y) - threshold) (a Bradley-Terry
 * comparison with a response of reward threshold); threshold: desirable iff r(y) > threshold. */
typedef enum { FDPO_LAB_LABELS_BT, FDPO_LAB_LABELS_THRESHOLD } fdpo_lab_labels;

int fdpo_lab_method_parse(const char *name, fdpo_lab_method *m); /* "dpo", "online", "rloo", "grpo", "kto" */
const char *fdpo_lab_method_name(fdpo_lab_method m);
int fdpo_lab_labels_parse(const char *name, fdpo_lab_labels *out); /* "bt", "threshold"; errors name --labels */

typedef struct {
    fdpo_lab_method method;
    fdpo_divergence div;
    double beta;        /* > 0 */
    int exact;          /* 1: expectations, 0: sampled */
    size_t pair_top;    /* dpo: pairs among the pair_top most likely responses under pi_ref (0 = all; > n refused) */
    long steps;         /* online, rloo, grpo: iterations (exact runs stop earlier at convergence) */
    long k;             /* --group-size: samples per step: online pairs; rloo, grpo group size (>= 2) */
    double lr;          /* step size (sampled: lr / sqrt(1 + t / 1000); exact grpo too; exact online and
                         * rloo: the first step, halved for the rest of the run whenever it does not
                         * lower the exact loss, so that a large beta cannot make it diverge) */
    double grpo_eps;    /* GRPO's std epsilon (TRL: 1e-4) */
    uint64_t seed;
    /* kto */
    fdpo_lab_labels labels;
    double label_threshold;   /* NaN = E_pi_ref[r] */
    double desirable_weight, undesirable_weight;   /* TRL's names (> 0) */
} fdpo_lab_algo_opts;

typedef struct {
    double max_abs_diff;     /* max_y |pi(y) - pi*(y)| */
    double objective_gap;    /* [E_pi* r - beta D_f(pi*)] - [E_pi r - beta D_f(pi)] >= 0 */
    double uncovered_mass;   /* pi* mass on responses the pair distribution never proposes (dpo) */
    long samples;            /* responses drawn (0 for exact runs) */
    long iterations;         /* gradient steps or L-BFGS iterations */
    double target_diff;      /* max_y |pi(y) - target(y)|: target = pi* (= max_abs_diff), for kto its own limit */
    double z0;               /* kto: the reference point at the final policy (NaN otherwise: not applicable) */
    double undesirable_mass; /* kto: pi_ref mass of the net-undesirable responses (NaN otherwise) */
    int converged;           /* exact online, rloo, grpo: 1 when the run stopped because a step no
                              * longer moved theta by more than 1e-15 (online, rloo: or returned to
                              * the iterate before, a 2-cycle at rounding); 0 when --steps ran out first
                              * (and for the other runs: their own stopping rules) */
    int stalled;             /* exact online, rloo: 1 when the run stopped because no step lowered the
                              * exact loss beyond its rounding (before converging or running out) */
    double final_lr;         /* exact online, rloo, grpo: the last step (online, rloo: --lr halved each
                              * time a step failed to lower the exact loss; grpo: the decayed step);
                              * NaN for the other runs */
} fdpo_lab_algo_result;

/* The defaults of `fdpo lab check --method` for method m, exact or sampled, on n responses:
 * div rkl, beta 0.5, pair_top n/2, k 4, grpo_eps 1e-4, bt labels at the threshold NaN
 * (E_pi_ref[r]), weights 1, seed FDPO_DEFAULT_SEED, and steps and lr by method (below). */
void fdpo_lab_algo_opts_default(fdpo_lab_algo_opts *o, fdpo_lab_method m, int exact, size_t n);
/* iterations: 100000 sampled; exact 20000 for grpo and kto, else 200000 */
long fdpo_lab_algo_default_steps(fdpo_lab_method m, int exact);
/* step size: exact online 5, rloo 1, grpo 0.05, kto 5; sampled online 1, rloo 1, grpo 0.05;
 * 0 where the method takes none (dpo: L-BFGS; sampled kto: refused) */
double fdpo_lab_algo_default_lr(fdpo_lab_method m, int exact);
/* The options' own checks (fdpo_lab_algo_run calls it first; those that need the problem, as
 * --pair-top and exact grpo's n^k, come in the run). Errors name the flag: kto without exact
 * is refused (--sampled); steps >= 1 and lr > 0 for every method but dpo; --group-size >= 2
 * for rloo and grpo (>= 1 for online); grpo_eps finite and > 0 (fdpo_grpo_eps_check, rl's
 * rule); kto's weights > 0 and a finite threshold. */
int fdpo_lab_algo_opts_check(const fdpo_lab_algo_opts *o);
/* Everything fdpo_lab_algo_run refuses on n responses before it computes (it runs this first;
 * a caller runs it for every run before it writes anything): n >= 2, the options' check, dpo's
 * --pair-top in [2, n], exact grpo's n^k <= 1e6. Errors name the flag. */
int fdpo_lab_algo_validate(const fdpo_lab_algo_opts *o, size_t n);
/* fdpo_lab_algo_validate and what needs the problem's rewards (fdpo_lab_algo_run runs this
 * first): kto needs a net-desirable response (p w_d > (1 - p) w_u), else its loss has no
 * interior limit (docs/lab.md). Errors name the flags. */
int fdpo_lab_algo_validate_problem(const fdpo_lab_algo_opts *o, const fdpo_lab_prepared *pp);

/* The table's `variant` of a run: "offline" (dpo, kto: a fixed data set), else "exact" or "sampled". */
const char *fdpo_lab_algo_variant(const fdpo_lab_algo_opts *o);

/* kto: the limit the run targets (pi, n), z0 = 0 there; errors name the flag. */
int fdpo_lab_kto_target(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o, double *pi);

/* Runs one method; pi (n, may be NULL) receives the final policy. Errors name the flag. */
int fdpo_lab_algo_run(const fdpo_lab_prepared *pp, const fdpo_lab_algo_opts *o, double *pi,
                      fdpo_lab_algo_result *res);

#ifdef __cplusplus
}
#endif

#endif
