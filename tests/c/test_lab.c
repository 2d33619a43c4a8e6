/* lab library: the divergence-list parser, the experiment rows (gap bound, frontier, bias),
 * the CSV reader's edge cases and the constrained solver, against values derived by hand in
 * each test (symmetric problems, closed-form softmax). The scipy comparisons live in
 * tests/py/test_lab.py. */
#include <check.h>
#include "check_main.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fdpo/core.h"
#include "fdpo/lab.h"
#include "fdpo/objectives.h"

static const char *tmp_csv(const char *name, const char *text, size_t len) {
    static char path[256];
    snprintf(path, sizeof path, "/tmp/fdpo_test_lab_%d_%s", (int)getpid(), name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fwrite(text, 1, len, f);
    fclose(f);
    return path;
}

START_TEST(divergence_list) {
    fdpo_divergence *d;
    size_t n;
    ck_assert_int_eq(fdpo_divergence_parse_list("rkl,alpha:0.25", &d, &n), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(d[0].kind, FDPO_DIV_RKL);
    ck_assert_int_eq(d[1].kind, FDPO_DIV_ALPHA);
    ck_assert_double_eq(d[1].alpha, 0.25);
    free(d);
    ck_assert_int_eq(fdpo_divergence_parse_list("all", &d, &n), 0);
    ck_assert_uint_eq(n, 6);
    ck_assert_int_eq(d[5].kind, FDPO_DIV_CHI2);
    free(d);
    ck_assert_int_ne(fdpo_divergence_parse_list("rkl,kl", &d, &n), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "'kl'"));
    ck_assert_ptr_null(d);
    ck_assert_int_ne(fdpo_divergence_parse_list("", &d, &n), 0);
    ck_assert_int_ne(fdpo_divergence_parse_list(",", &d, &n), 0);
}
END_TEST

START_TEST(gap_bound_and_zero_gap) {
    /* bound = sum pi* e^{eps/beta} eps: pi* = (0.25, 0.75), eps = (0.5, 0), beta = 0.5 */
    double ps[2] = {0.25, 0.75}, r[2] = {1, 2}, rh[2] = {1.5, 2};
    ck_assert_double_eq_tol(fdpo_lab_gap_bound(ps, r, rh, 2, 0.5), 0.25 * exp(1.0) * 0.5, 1e-15);
    /* r_hat = r: pi_hat = pi*, every gap is 0 */
    double q[3] = {0.2, 0.3, 0.5}, rr[3] = {0.1, -1, 2}, a[3], b[3];
    fdpo_divergence d;
    fdpo_divergence_parse("js", &d);
    fdpo_lab_gap_row g;
    ck_assert_int_eq(fdpo_lab_gap(&d, 0.3, q, rr, rr, 3, a, b, &g), 0);
    ck_assert_double_eq(g.reward_gap, 0);
    ck_assert_double_eq(g.bound, 0);
    ck_assert_double_le(fabs(g.objective_gap), 1e-15);
    /* mean over prompts: a perturbed prompt and an exact one average to half the gap */
    double rh3[3] = {0.4, -1, 2};
    ck_assert_int_eq(fdpo_lab_gap(&d, 0.3, q, rr, rh3, 3, a, b, &g), 0);
    ck_assert_double_gt(g.reward_gap, 0);
    fdpo_lab_problem P[2] = {{.n = 3, .pi_ref = q, .reward = rr}, {.n = 3, .pi_ref = q, .reward = rr}};
    const double *rhs[2] = {rh3, rr};
    fdpo_lab_gap_row m;
    int held;
    ck_assert_int_eq(fdpo_lab_gap_mean(&d, 0.3, P, rhs, 2, &m, &held), 0);
    ck_assert_double_eq_tol(m.reward_gap, g.reward_gap / 2, 1e-15);
    ck_assert_double_eq_tol(m.bound, g.bound / 2, 1e-15);
    ck_assert_int_eq(held, m.reward_gap <= m.bound + 1e-12);
}
END_TEST

START_TEST(rkl_gap_and_bias_closed_form) {
    /* rkl: pi ∝ q e^{r/beta}. Two responses, q uniform, beta = 1, r = (0, 0), lengths (1, 3),
     * bias 0.5: r_hat = (0.5, 1.5), pi_hat = (1, e)/(1 + e), pi* = (1/2, 1/2). */
    double q[2] = {0.5, 0.5}, r[2] = {0, 0}, len[2] = {1, 3};
    fdpo_lab_problem p = {.n = 2, .pi_ref = q, .reward = r, .length = len};
    fdpo_divergence d;
    fdpo_divergence_parse("rkl", &d);
    fdpo_lab_bias_row row;
    ck_assert_int_eq(fdpo_lab_bias(&d, 1.0, 0.5, &p, &row), 0);
    double e = exp(1.0), ph0 = 1 / (1 + e), ph1 = e / (1 + e);
    ck_assert_double_eq_tol(row.length_pistar, 2.0, 1e-15);
    ck_assert_double_eq_tol(row.length_pihat, ph0 * 1 + ph1 * 3, 1e-14);
    ck_assert_double_eq_tol(row.length_increase, ph0 + 3 * ph1 - 2, 1e-14);
    ck_assert_double_eq_tol(row.reward_gap, 0, 1e-15); /* equal true rewards: no reward lost */
    p.length = NULL;
    ck_assert_int_ne(fdpo_lab_bias(&d, 1.0, 0.5, &p, &row), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "length"));
}
END_TEST

START_TEST(frontier_rows_equal_single_solves) {
    fdpo_rng rng;
    fdpo_rng_seed(&rng, 5);
    fdpo_lab_gen g = {"zipf", "gaussian", 1.0, 1.0, 1.0, 1, 10};
    fdpo_lab_problem p;
    ck_assert_int_eq(fdpo_lab_generate(&g, 200, &rng, &p), 0);
    fdpo_lab_prepared pp;
    fdpo_lab_prepare(&pp, p.pi_ref, p.reward, p.n);
    fdpo_divergence *d;
    size_t nd;
    ck_assert_int_eq(fdpo_divergence_parse_list("all", &d, &nd), 0);
    double betas[3] = {0.05, 0.5, 5};
    fdpo_lab_result rows[18], one;
    ck_assert_int_eq(fdpo_lab_frontier(&pp, d, nd, betas, 3, rows), 0);
    for (size_t k = 0; k < nd; k++)
        for (size_t b = 0; b < 3; b++) {
            ck_assert_int_eq(fdpo_lab_solve(&pp, &d[k], betas[b], NULL, &one), 0);
            ck_assert_double_eq(rows[k * 3 + b].expected_reward, one.expected_reward);
            ck_assert_double_eq(rows[k * 3 + b].f_divergence, one.f_divergence);
        }
    betas[1] = 0;
    ck_assert_int_ne(fdpo_lab_frontier(&pp, d, nd, betas, 3, rows), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--betas"));
    free(d);
    fdpo_lab_prepared_free(&pp);
    fdpo_lab_problem_free(&p);
}
END_TEST

START_TEST(csv_bom_subnormal_overflow_nul) {
    fdpo_lab_problem p;
    double renorm;
    const char bom[] = "\xEF\xBB\xBFpi_ref,reward\n0.5,1\n0.5,2\n";
    ck_assert_int_eq(fdpo_lab_read_csv(tmp_csv("bom.csv", bom, sizeof bom - 1), &p, &renorm), 0);
    ck_assert_uint_eq(p.n, 2);
    ck_assert_double_eq(renorm, 0);
    fdpo_lab_problem_free(&p);
    /* a subnormal pi_ref is a number (strtod flags it ERANGE) */
    const char sub[] = "pi_ref,reward\n1,0\n4.9e-324,1\n";
    ck_assert_int_eq(fdpo_lab_read_csv(tmp_csv("sub.csv", sub, sizeof sub - 1), &p, &renorm), 0);
    ck_assert_double_gt(p.pi_ref[1], 0);
    ck_assert_double_eq(p.pi_ref[0], 1);
    fdpo_lab_problem_free(&p);
    /* values whose sum overflows: normalised without inf/inf = nan */
    const char big[] = "pi_ref,reward\n1e308,0\n1e308,1\n";
    ck_assert_int_eq(fdpo_lab_read_csv(tmp_csv("big.csv", big, sizeof big - 1), &p, &renorm), 0);
    ck_assert_double_eq(p.pi_ref[0], 0.5);
    ck_assert_double_eq(p.pi_ref[1], 0.5);
    ck_assert(isinf(renorm));
    fdpo_lab_problem_free(&p);
    /* a NUL byte on line 3 */
    const char nul[] = "pi_ref,reward\n0.5,1\n0.5,\0002\n";
    const char *path = tmp_csv("nul.csv", nul, sizeof nul - 1);
    ck_assert_int_ne(fdpo_lab_read_csv(path, &p, &renorm), 0);
    char want[300];
    snprintf(want, sizeof want, "%s:3: NUL byte", path);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), want));
    /* a safety column is read */
    const char saf[] = "pi_ref,reward,safety\n0.5,1,-1\n0.5,2,3\n";
    ck_assert_int_eq(fdpo_lab_read_csv(tmp_csv("saf.csv", saf, sizeof saf - 1), &p, &renorm), 0);
    ck_assert_ptr_nonnull(p.safety);
    ck_assert_double_eq(p.safety[1], 3);
    fdpo_lab_problem_free(&p);
}
END_TEST

START_TEST(constrained_symmetric_problem) {
    /* q = (1/2, 1/2), r = (1, 0), g = (0, 1), b = 1/2: E[g] = 1/2 forces pi = (1/2, 1/2), which
     * is the optimum for r + lambda g only when both responses tie: lambda* = 1, for every f */
    const char *specs[] = {"rkl", "fkl", "js", "alpha:0.3", "alpha:0.7"};
    double q[2] = {0.5, 0.5}, r[2] = {1, 0}, g[2] = {0, 1}, pi[2], ps[2];
    for (size_t k = 0; k < 5; k++) {
        fdpo_divergence d;
        fdpo_divergence_parse(specs[k], &d);
        fdpo_lab_constrained_result res;
        ck_assert_int_eq(fdpo_lab_constrained(q, r, g, 2, &d, 0.7, 0.5, 1, pi, ps, &res), 0);
        ck_assert_int_eq(res.active, 1);
        ck_assert_double_eq_tol(res.lambda, 1.0, 1e-12);
        ck_assert_double_eq_tol(pi[0], 0.5, 1e-13);
        ck_assert_double_ge(res.expected_safety, 0.5 - 1e-15);
        ck_assert_double_eq_tol(res.expected_reward, 0.5, 1e-13);
        ck_assert_double_le(fabs(res.f_divergence), 1e-12);
        /* inactive: b below the r-only optimum's E[g] */
        ck_assert_int_eq(fdpo_lab_constrained(q, r, g, 2, &d, 0.7, -1, 0, pi, NULL, &res), 0);
        ck_assert_int_eq(res.active, 0);
        ck_assert_double_eq(res.lambda, 0);
        /* infeasible */
        ck_assert_int_ne(fdpo_lab_constrained(q, r, g, 2, &d, 0.7, 1.5, 0, pi, NULL, &res), 0);
        ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--min-safety 1.5: infeasible"));
        ck_assert_int_ne(fdpo_lab_constrained(q, r, g, 2, &d, 0.7, 1.0, 0, pi, NULL, &res), 0);
        ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "lambda -> inf"));
    }
    fdpo_divergence tv;
    fdpo_divergence_parse("tv", &tv);
    fdpo_lab_constrained_result res;
    ck_assert_int_ne(fdpo_lab_constrained(q, r, g, 2, &tv, 0.7, 0.5, 0, pi, NULL, &res), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--divergence tv"));
}
END_TEST

START_TEST(constrained_rkl_stepwise_is_exact) {
    fdpo_rng rng;
    fdpo_rng_seed(&rng, 9);
    fdpo_lab_gen gen = {"dirichlet", "gaussian", 1.0, 1.0, 1.0, 1, 10};
    fdpo_lab_problem p;
    ck_assert_int_eq(fdpo_lab_generate(&gen, 300, &rng, &p), 0);
    ck_assert_int_ne(fdpo_lab_generate_safety(&p, 1.5, &rng), 0); /* sqrt(1 - c^2): NaN scores */
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--safety-correlation"));
    ck_assert_int_eq(fdpo_lab_generate_safety(&p, -0.6, &rng), 0);
    fdpo_divergence d;
    fdpo_divergence_parse("rkl", &d);
    fdpo_lab_constrained_result res;
    ck_assert_int_eq(fdpo_lab_constrained(p.pi_ref, p.reward, p.safety, p.n, &d, 0.2, 0.8, 1, NULL, NULL, &res), 0);
    ck_assert_int_eq(res.active, 1);
    ck_assert_double_le(res.step_max_abs_diff, 1e-12);
    ck_assert_double_le(fabs(res.step_expected_safety - res.expected_safety), 1e-12);
    /* the sweep's rows equal the single solves */
    double bs[3] = {0.8, -5, 0.4};
    fdpo_lab_constrained_result rows[3];
    ck_assert_int_eq(fdpo_lab_constrained_sweep(p.pi_ref, p.reward, p.safety, p.n, &d, 1, 0.2, bs, 3, 0, rows), 0);
    ck_assert_double_eq_tol(rows[0].lambda, res.lambda, 1e-12 * res.lambda);
    ck_assert_int_eq(rows[1].active, 0);
    ck_assert_double_le(rows[2].lambda, rows[0].lambda); /* lambda* grows with the threshold */
    fdpo_lab_problem_free(&p);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("lab");
    TCase *t = tcase_create("lab");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, divergence_list);
    tcase_add_test(t, gap_bound_and_zero_gap);
    tcase_add_test(t, rkl_gap_and_bias_closed_form);
    tcase_add_test(t, frontier_rows_equal_single_solves);
    tcase_add_test(t, csv_bom_subnormal_overflow_nul);
    tcase_add_test(t, constrained_symmetric_problem);
    tcase_add_test(t, constrained_rkl_stepwise_is_exact);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return run_suite(suite()); }
