/* The f-penalised policy-gradient reward and the RLOO/GRPO advantages (src/objectives/pg_reward.c)
 * against the formulas written out by hand: f'(u) of DESIGN.md §2 at u = e^l, the leave-one-out
 * mean, and the unbiased group standard deviation. */
#include <check.h>
#include "check_main.h"
#include <math.h>
#include <stdlib.h>
#include "fdpo/objectives.h"

/* f'(u) written independently of src/objectives (paper convention) */
static double fprime_by_hand(const char *spec, double u) {
    if (spec[0] == 'r') return log(u) + 1;
    if (spec[0] == 'f') return -1 / u;
    if (spec[0] == 'j') return log(2 * u / (1 + u));
    double a = atof(spec + 6);
    return (1 - pow(u, -a)) / a;
}

START_TEST(shaped_reward_is_r_minus_beta_fprime) {
    const char *specs[] = {"rkl", "fkl", "js", "alpha:0.3", "alpha:0.5", "alpha:0.7"};
    const double ls[] = {-3.0, -0.7, 0.0, 0.4, 2.5};
    for (size_t s = 0; s < 6; s++)
        for (size_t i = 0; i < 5; i++) {
            fdpo_divergence d;
            ck_assert_int_eq(fdpo_divergence_parse(specs[s], &d), 0);
            double want = 1.25 - 0.3 * fprime_by_hand(specs[s], exp(ls[i]));
            double got = fdpo_shaped_reward(&d, 0.3, 1.25, ls[i]);
            ck_assert_msg(fabs(got - want) <= 1e-12 * (1 + fabs(want)), "%s l=%g: %.17g vs %.17g", specs[s], ls[i], got, want);
            /* the advantages' reward: the same wherever f''s exponent is below its cap of 64 */
            got = fdpo_shaped_reward_pg(&d, 0.3, 1.25, ls[i]);
            ck_assert_msg(fabs(got - want) <= 1e-12 * (1 + fabs(want)), "pg %s l=%g: %.17g vs %.17g", specs[s], ls[i], got, want);
        }
    /* far below the reference the exponent is capped (finite), not inf */
    fdpo_divergence d;
    fdpo_divergence_parse("fkl", &d);
    ck_assert(isfinite(fdpo_shaped_reward(&d, 0.1, 0, -1000)));
    /* ... at 88.7228 (the score's cap) for the logged reward, at 64 (the f-DPO derivative's) for the
     * advantages, which weigh grad log pi: f' = -e^(-l) fkl, (1 - e^(-A l))/A alpha */
    ck_assert_double_eq_tol(fdpo_shaped_reward(&d, 0.1, 0, -1000), 0.1 * exp(88.7228), 1e-12 * 0.1 * exp(88.7228));
    ck_assert_double_eq_tol(fdpo_shaped_reward_pg(&d, 0.1, 0, -1000), 0.1 * exp(64), 1e-12 * 0.1 * exp(64));
    ck_assert_double_eq_tol(fdpo_shaped_reward_pg(&d, 0.1, 0, -63), 0.1 * exp(63), 1e-12 * 0.1 * exp(63));
    fdpo_divergence_parse("alpha:0.5", &d);
    ck_assert_double_eq_tol(fdpo_shaped_reward_pg(&d, 1, 0, -200), (exp(64) - 1) / 0.5, 1e-12 * exp(64) / 0.5);
    fdpo_divergence_parse("chi2", &d);
    ck_assert(isnan(fdpo_fprime_log(&d, 0.0)));
}
END_TEST

START_TEST(rloo_and_grpo_advantages) {
    const double x[4] = {1.0, 3.0, -2.0, 0.5};
    double adv[4];
    fdpo_rloo_advantages(x, 4, adv);
    /* x_i - mean of the other three */
    const double rloo[4] = {1.0 - 1.5 / 3, 3.0 - (-0.5) / 3, -2.0 - 4.5 / 3, 0.5 - 2.0 / 3};
    for (int i = 0; i < 4; i++) ck_assert_double_eq_tol(adv[i], rloo[i], 1e-15);
    /* mean 0.625, unbiased variance sum (x - mean)^2 / 3 */
    double m = 0.625, ss = 0.140625 + 5.640625 + 6.890625 + 0.015625, sd = sqrt(ss / 3);
    fdpo_grpo_advantages(x, 4, 1e-4, adv);
    for (int i = 0; i < 4; i++) ck_assert_double_eq_tol(adv[i], (x[i] - m) / (sd + 1e-4), 1e-15);
    /* a group of equal rewards carries no signal */
    const double same[3] = {2, 2, 2};
    fdpo_grpo_advantages(same, 3, 1e-4, adv);
    for (int i = 0; i < 3; i++) ck_assert_double_eq(adv[i], 0);
    fdpo_rloo_advantages(same, 3, adv);
    for (int i = 0; i < 3; i++) ck_assert_double_eq(adv[i], 0);
    /* ... also where sum / k is not the value in doubles (0.1 x 3 sums to 0.30000000000000004;
     * -2.9 x 7): they gave advantages of 1e-17 and GRPO a nonzero gradient */
    const double tenth[3] = {0.1, 0.1, 0.1}, neg[7] = {-2.9, -2.9, -2.9, -2.9, -2.9, -2.9, -2.9};
    double adv7[7];
    fdpo_grpo_advantages(tenth, 3, 1e-4, adv);
    for (int i = 0; i < 3; i++) ck_assert_double_eq(adv[i], 0);
    fdpo_rloo_advantages(tenth, 3, adv);
    for (int i = 0; i < 3; i++) ck_assert_double_eq(adv[i], 0);
    fdpo_grpo_advantages(neg, 7, 1e-4, adv7);
    for (int i = 0; i < 7; i++) ck_assert_double_eq(adv7[i], 0);
    fdpo_rloo_advantages(neg, 7, adv7);
    for (int i = 0; i < 7; i++) ck_assert_double_eq(adv7[i], 0);
}
END_TEST

/* A group's advantages from its rewards and log-ratios: below f''s e^64 cap, bit for bit the
 * per-sample rule; past it, the group's largest exponent factored out, checked against the
 * formulas by hand */
START_TEST(group_advantages_factor_out_the_cap) {
    fdpo_divergence d;
    double x[3], adv[3], want[3], pg[3];
    const double r[3] = {1, 2, 4};
    /* below the cap (fkl 63.9 down, alpha:0.5 127 down): the same bits as before */
    const char *specs[2] = {"fkl", "alpha:0.5"};
    const double ls[2][3] = {{-63.9, -2, 0.5}, {-127, -3, 1}};
    for (int s = 0; s < 2; s++)
        for (int grpo = 0; grpo < 2; grpo++) {
            fdpo_divergence_parse(specs[s], &d);
            for (int i = 0; i < 3; i++) pg[i] = fdpo_shaped_reward_pg(&d, 0.05, r[i], ls[s][i]);
            if (grpo) fdpo_grpo_advantages(pg, 3, 1e-4, want);
            else fdpo_rloo_advantages(pg, 3, want);
            fdpo_pg_group_advantages(&d, 0.05, r, ls[s], 3, grpo, 1e-4, x, adv);
            for (int i = 0; i < 3; i++) ck_assert_msg(adv[i] == want[i], "%s grpo %d: %.17g vs %.17g", specs[s], grpo, adv[i], want[i]);
        }
    /* all three 100 nats down (fkl): their penalties are equal, the rewards decide. Capping each
     * gave r_i + beta e^64, which rounds r away (advantages 0); factored out, the shaped rewards
     * are taken times e^-36: RLOO (r_i - mean of the others) e^-36, GRPO, its eps scaled alike,
     * (r - mean)/(sd + eps) */
    fdpo_divergence_parse("fkl", &d);
    const double l100[3] = {-100, -100, -100};
    fdpo_pg_group_advantages(&d, 0.05, r, l100, 3, 0, 1e-4, x, adv);
    want[0] = -2; want[1] = -0.5; want[2] = 2.5;
    for (int i = 0; i < 3; i++) ck_assert_double_eq_tol(adv[i], want[i] * exp(-36), 1e-15 * exp(-36));
    fdpo_pg_group_advantages(&d, 0.05, r, l100, 3, 1, 1e-4, x, adv);
    const double sd = sqrt((16.0 / 9 + 1.0 / 9 + 25.0 / 9) / 2);   /* r - mean: -4/3, -1/3, 5/3 */
    want[0] = -4.0 / 3; want[1] = -1.0 / 3; want[2] = 5.0 / 3;
    for (int i = 0; i < 3; i++) ck_assert_double_eq_tol(adv[i], want[i] / (sd + 1e-4), 1e-14);
    /* a log-ratio of -inf: that sample takes beta e^64, the others 0 (finite advantages) */
    const double linf[3] = {-INFINITY, -1, -2};
    fdpo_pg_group_advantages(&d, 0.05, r, linf, 3, 0, 1e-4, x, adv);
    ck_assert_double_eq_tol(adv[0], 0.05 * exp(64), 1e-15 * exp(64));
    ck_assert_double_eq_tol(adv[1], -0.025 * exp(64), 1e-15 * exp(64));
    ck_assert_double_eq_tol(adv[2], -0.025 * exp(64), 1e-15 * exp(64));
    /* equal exponents 100 to 1000 nats down: the penalties cancel and the rewards decide,
     * (r - mean)/(sd + eps) with eps itself, as at 100 (the scaled deviations' squares
     * underflowed past ~430: 3500 at 500 and 700, inf at 800, 0 at 900 and 1000) */
    const double sd2 = sqrt(((r[0] - (r[0] + r[1]) / 2) * (r[0] - (r[0] + r[1]) / 2) +
                             (r[1] - (r[0] + r[1]) / 2) * (r[1] - (r[0] + r[1]) / 2)) / 1);
    for (double down = 100; down <= 1000; down += 100) {
        const double leq[2] = {-down, -down};
        fdpo_pg_group_advantages(&d, 0.05, r, leq, 2, 1, 1e-4, x, adv);
        for (int i = 0; i < 2; i++)
            ck_assert_msg(fabs(adv[i] - (r[i] - (r[0] + r[1]) / 2) / (sd2 + 1e-4)) <= 1e-14, "%g down: %.17g", down, adv[i]);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("pg_reward");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, shaped_reward_is_r_minus_beta_fprime);
    tcase_add_test(tc, rloo_and_grpo_advantages);
    tcase_add_test(tc, group_advantages_factor_out_the_cap);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
