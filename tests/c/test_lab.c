/* lab library: the divergence-list parser, the experiment rows (gap bound, frontier, bias),
 * the CSV reader's edge cases and the constrained solver, against values derived by hand in
 * each test (symmetric problems, closed-form softmax); the experiments' defaults, grids and
 * option checks that `fdpo lab` calls (each error names its flag). The scipy comparisons live in
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
#include "fdpo/lab_algos.h"
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
    ck_assert_double_eq_tol(fdpo_lab_gap_bound(ps, NULL, r, rh, 2, 0.5), 0.25 * exp(1.0) * 0.5, 1e-15);
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

/* frontier and the constrained sweep check their arguments before the parallel loop (it cannot
 * stop at the first error), but a solve inside it can still refuse: their checks let alpha:A
 * through for any A in (0, 1), and fdpo_lab_solve refuses A < FDPO_LAB_ALPHA_MIN. The CLI refuses
 * such an A at --divergence, and no CLI input is known to make a solve fail there (the 1e-320
 * reference that did now solves), so the message path is tested here. The message is the solve's
 * own, the first in the table's order (alpha:1e-9 before alpha:2e-9, both failing). */
START_TEST(frontier_and_sweep_keep_the_solves_message) {
    const double q[3] = {0.5, 0.3, 0.2}, r[3] = {1, 0, -1}, g[3] = {0, 1, 0.5};
    fdpo_lab_prepared pp[2];
    fdpo_lab_prepare(&pp[0], q, r, 3);
    fdpo_lab_prepare(&pp[1], q, r, 3);
    const fdpo_divergence d[3] = {{FDPO_DIV_RKL, 0}, {FDPO_DIV_ALPHA, 1e-9}, {FDPO_DIV_ALPHA, 2e-9}};
    double betas[2] = {0.1, 1}, bs[2] = {0.2, 0.4};
    fdpo_lab_result one, rows[6];
    ck_assert_int_ne(fdpo_lab_solve(&pp[0], &d[1], 0.1, NULL, &one), 0);
    char msg[1024], want[1100];
    snprintf(msg, sizeof msg, "%s", fdpo_last_error());
    ck_assert_ptr_nonnull(strstr(msg, "alpha:1e-09"));   /* the solve's refusal, below the minimum */
    snprintf(want, sizeof want, "frontier: %s", msg);
    ck_assert_int_ne(fdpo_lab_frontier(pp, d, 3, betas, 2, rows), 0);
    ck_assert_str_eq(fdpo_last_error(), want);
    snprintf(want, sizeof want, "frontier: prompt 1 of 2: %s", msg);
    ck_assert_int_ne(fdpo_lab_frontier_prompts(pp, 2, d, 3, betas, 2, rows), 0);
    ck_assert_str_eq(fdpo_last_error(), want);
    fdpo_lab_constrained_result crow[6];
    snprintf(want, sizeof want, "constrained frontier: %s", msg);
    ck_assert_int_ne(fdpo_lab_constrained_sweep(q, r, g, 3, d, 3, 0.1, bs, 2, 1, crow), 0);
    ck_assert_str_eq(fdpo_last_error(), want);
    /* without the refused divergence the same calls succeed */
    ck_assert_int_eq(fdpo_lab_frontier(pp, d, 1, betas, 2, rows), 0);
    ck_assert_int_eq(fdpo_lab_constrained_sweep(q, r, g, 3, d, 1, 0.1, bs, 2, 1, crow), 0);
    fdpo_lab_prepared_free(&pp[0]);
    fdpo_lab_prepared_free(&pp[1]);
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

/* the error names the flag: fdpo_last_error() contains `what` */
#define ck_error_names(call, what)                                    \
    do {                                                              \
        ck_assert_int_ne((call), 0);                                  \
        ck_assert_ptr_nonnull(strstr(fdpo_last_error(), (what)));     \
    } while (0)

START_TEST(beta_grid_and_thresholds) {
    fdpo_lab_beta_grid_opts g;
    fdpo_lab_beta_grid_default(&g);
    ck_assert_double_eq(g.beta_min, 0.01);
    ck_assert_double_eq(g.beta_max, 10);
    ck_assert_int_eq(g.n_betas, 50);
    double *b;
    size_t n;
    g = (fdpo_lab_beta_grid_opts){0.1, 1000, 5};
    ck_assert_int_eq(fdpo_lab_beta_grid(&g, &b, &n), 0);
    ck_assert_uint_eq(n, 5);
    for (size_t i = 0; i < 5; i++) ck_assert_double_eq_tol(b[i], 0.1 * pow(10, (double)i), 1e-12 * b[i]); /* log-spaced */
    free(b);
    g.n_betas = 1; /* one point between two ends: --beta-max was dropped without a word */
    ck_error_names(fdpo_lab_beta_grid(&g, &b, &n), "--n-betas 1: one beta, but --beta-min 0.1 and --beta-max 1000 differ");
    g.beta_max = 0.1; /* one point, given */
    ck_assert_int_eq(fdpo_lab_beta_grid(&g, &b, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_double_eq(b[0], 0.1);
    free(b);
    /* a beta given twice keys two rows (lab.md: every lab list refuses a repeat): equal ends, or
     * ends one ulp apart, whose interior points round onto them */
    g = (fdpo_lab_beta_grid_opts){0.1, 0.1, 3};
    ck_error_names(fdpo_lab_beta_grid_check(&g), "--n-betas 3: 3 betas, but --beta-min and --beta-max are both 0.1");
    g = (fdpo_lab_beta_grid_opts){1, nextafter(1, 2), 5};
    /* the ends as they read back (with %g both printed as 1) */
    ck_error_names(fdpo_lab_beta_grid(&g, &b, &n),
                   "--beta-min 1 --beta-max 1.0000000000000002 --n-betas 5: the grid's betas must increase, but 1 follows 1 ");
    ck_error_names(fdpo_lab_threshold_range("0.1:0.1:3", &b, &n), "--frontier: '0.1:0.1:3' gives threshold 0.1 twice");
    g = (fdpo_lab_beta_grid_opts){0, 10, 3};
    ck_error_names(fdpo_lab_beta_grid_check(&g), "--beta-min/--beta-max");
    g = (fdpo_lab_beta_grid_opts){1, 0.5, 3};
    ck_error_names(fdpo_lab_beta_grid_check(&g), "--beta-min/--beta-max");
    g = (fdpo_lab_beta_grid_opts){1, INFINITY, 3}; /* a grid of inf and NaN betas */
    ck_error_names(fdpo_lab_beta_grid(&g, &b, &n), "--beta-min/--beta-max");
    g = (fdpo_lab_beta_grid_opts){1, 2, 0};
    ck_error_names(fdpo_lab_beta_grid(&g, &b, &n), "--n-betas: must be in [1, 1000000] (got 0)");
    g = (fdpo_lab_beta_grid_opts){1, 2, 1000001};   /* an allocation the OOM handler ended, naming no flag */
    ck_error_names(fdpo_lab_beta_grid(&g, &b, &n), "--n-betas: must be in [1, 1000000] (got 1000001)");

    ck_assert_int_eq(fdpo_lab_threshold_range("-1:1:5", &b, &n), 0);
    ck_assert_uint_eq(n, 5);
    for (size_t i = 0; i < 5; i++) ck_assert_double_eq(b[i], -1 + 0.5 * (double)i);
    free(b);
    ck_assert_int_eq(fdpo_lab_threshold_range("0.3:0.3:1", &b, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_double_eq(b[0], 0.3);
    free(b);
    ck_error_names(fdpo_lab_threshold_range("1:0:3", &b, &n), "--frontier: '1:0:3' is not LO:HI:K");
    ck_error_names(fdpo_lab_threshold_range("0:1:0", &b, &n), "--frontier: '0:1:0'");
    ck_error_names(fdpo_lab_threshold_range("0:1:3x", &b, &n), "--frontier K: '3x' is not an integer");
    /* each part by fdpo_parse_number (sscanf's %lf read 0x0.8 as 0.5 and 1e-400 as 0) */
    ck_error_names(fdpo_lab_threshold_range("0x0.8:1:3", &b, &n), "--frontier LO: '0x0.8' is not a decimal number");
    ck_error_names(fdpo_lab_threshold_range("1e-400:1:2", &b, &n), "--frontier LO: '1e-400' is out of range");
    ck_error_names(fdpo_lab_threshold_range("0:inf:2", &b, &n), "--frontier HI: 'inf' is not a finite number");
    ck_error_names(fdpo_lab_threshold_range("0:1:3:4", &b, &n), "--frontier: '0:1:3:4' is not LO:HI:K");
    ck_error_names(fdpo_lab_threshold_range("0:1", &b, &n), "--frontier: '0:1' is not LO:HI:K");
    ck_error_names(fdpo_lab_threshold_range("1:1.5:1", &b, &n), "--frontier: '1:1.5:1' is one threshold, but LO and HI differ");
}
END_TEST

/* coverage's defaults and checks; N = 0 comparisons is refused by the library (it used to fit
 * the ridge alone: only the CLI refused it) */
START_TEST(coverage_opts_and_comparisons) {
    fdpo_lab_coverage_opts o;
    fdpo_lab_coverage_opts_default(&o);
    ck_assert_int_eq(o.policy, FDPO_LAB_DATA_REF);
    ck_assert_int_eq(o.data_div.kind, FDPO_DIV_RKL);
    ck_assert_double_eq(o.beta, 0.1);
    ck_assert_double_eq(o.mixture, 0.5);
    ck_assert_double_eq(o.ridge, 1e-3);
    ck_assert_ptr_null(o.on_fit);
    ck_assert_int_eq(fdpo_lab_coverage_opts_check(&o), 0);
    o.mixture = 1.5;
    ck_error_names(fdpo_lab_coverage_opts_check(&o), "--mixture: must be in [0, 1] (got 1.5)");
    o.mixture = nextafter(1, 2);   /* as it reads back (%g printed "got 1") */
    ck_error_names(fdpo_lab_coverage_opts_check(&o), "--mixture: must be in [0, 1] (got 1.0000000000000002)");
    o.mixture = 0.5;
    o.ridge = 0;
    ck_error_names(fdpo_lab_coverage_opts_check(&o), "--ridge");
    o.ridge = 1e-3;
    o.beta = -1;
    ck_error_names(fdpo_lab_coverage_opts_check(&o), "--beta");
    o.beta = 0.1;
    /* what fdpo_lab_coverage needs besides the options, checkable before any work */
    const size_t ns_ok[] = {10, 100000000}, ns_big[] = {10, 100000001}, ns_zero[] = {0};
    ck_assert_int_eq(fdpo_lab_coverage_check(&o, 2, ns_ok, 2), 0);
    ck_error_names(fdpo_lab_coverage_check(&o, 0, ns_ok, 2), "--prompts: must be >= 1 (got 0)");
    ck_error_names(fdpo_lab_coverage_check(&o, 2, ns_big, 2), "--comparisons: must be in [1, 1e8] (got 100000001)");
    ck_error_names(fdpo_lab_coverage_check(&o, 2, ns_zero, 1), "--comparisons: must be in [1, 1e8] (got 0)");
    ck_error_names(fdpo_lab_coverage_check(&o, 2, ns_ok, 0), "--comparisons: empty list");
    fdpo_rng rng;
    fdpo_rng_seed(&rng, 5);
    fdpo_lab_gen gen = {"zipf", "gaussian", 1.0, 1.0, 1.0, 10, 200};
    fdpo_lab_problem p;
    ck_assert_int_eq(fdpo_lab_generate(&gen, 6, &rng, &p), 0);
    fdpo_divergence d;
    fdpo_divergence_parse("rkl", &d);
    fdpo_lab_coverage_row row;
    size_t ns[1] = {40};
    ck_assert_int_eq(fdpo_lab_coverage(&o, &p, 1, ns, 1, &d, 1, &row), 0);
    ck_assert_double_le(row.pistar_coverage, 1 + 1e-12);
    ns[0] = 0;
    ck_error_names(fdpo_lab_coverage(&o, &p, 1, ns, 1, &d, 1, &row), "--comparisons: must be in [1, 1e8] (got 0)");
    fdpo_lab_problem_free(&p);
}
END_TEST

/* frontier's per-prompt problems: slices of the rows, or the whole problem */
START_TEST(prepare_prompts) {
    double q[5] = {0.5, 0.5, 0.2, 0.3, 0.5}, r[5] = {1, 2, 3, 4, 5};
    size_t off[3] = {0, 2, 5};
    fdpo_lab_problem p = {.n = 5, .pi_ref = q, .reward = r, .n_prompts = 2, .prompt_offset = off};
    size_t np;
    fdpo_lab_prepared *pps = fdpo_lab_prepare_prompts(&p, &np);
    ck_assert_uint_eq(np, 2);
    ck_assert_uint_eq(pps[0].n, 2);
    ck_assert_uint_eq(pps[1].n, 3);
    ck_assert_ptr_eq(pps[1].pi_ref, q + 2);
    ck_assert_ptr_eq(pps[1].reward, r + 2);
    ck_assert_double_eq(pps[1].r_max, 5);
    fdpo_lab_prepared_free_prompts(pps, np);
    p.n_prompts = 0;
    p.prompt_offset = NULL;
    pps = fdpo_lab_prepare_prompts(&p, &np);
    ck_assert_uint_eq(np, 1);
    ck_assert_uint_eq(pps[0].n, 5);
    fdpo_lab_prepared_free_prompts(pps, np);
}
END_TEST

START_TEST(gap_noise_stream) {
    fdpo_rng rng;
    fdpo_rng_seed(&rng, 3);
    fdpo_lab_gen gen = {"zipf", "gaussian", 1.0, 1.0, 1.0, 10, 200};
    fdpo_lab_problem P[2];
    ck_assert_int_eq(fdpo_lab_generate(&gen, 50, &rng, &P[0]), 0);
    ck_assert_int_eq(fdpo_lab_generate(&gen, 30, &rng, &P[1]), 0);
    double a0[50], a1[30], b0[50], b1[30], c0[50], c1[30];
    double *a[2] = {a0, a1}, *b[2] = {b0, b1}, *c[2] = {c0, c1};
    /* noise index 1 at sd 0.1 and sd 0.2: one stream, so r_hat - r doubles exactly */
    ck_assert_int_eq(fdpo_lab_gap_noise(P, 2, 0.1, 7, 1, a), 0);
    ck_assert_int_eq(fdpo_lab_gap_noise(P, 2, 0.2, 7, 1, b), 0);
    ck_assert_int_eq(fdpo_lab_gap_noise(P, 2, 0.1, 7, 0, c), 0); /* another index: another stream */
    int differs = 0;
    for (size_t x = 0; x < 2; x++)
        for (size_t i = 0; i < P[x].n; i++) {
            ck_assert_double_eq_tol(b[x][i] - P[x].reward[i], 2 * (a[x][i] - P[x].reward[i]), 1e-12);
            differs |= c[x][i] != a[x][i];
        }
    ck_assert_int_eq(differs, 1);
    ck_assert_int_eq(fdpo_lab_gap_noise(P, 2, 0, 7, 1, c), 0); /* no noise: r_hat = r */
    for (size_t i = 0; i < P[1].n; i++) ck_assert_double_eq(c[1][i], P[1].reward[i]);
    ck_error_names(fdpo_lab_gap_noise(P, 2, -0.1, 7, 0, c), "--noise: must be >= 0 (got -0.1)");
    ck_error_names(fdpo_lab_gap_noise(P, 2, NAN, 7, 0, c), "--noise");
    fdpo_lab_problem_free(&P[0]);
    fdpo_lab_problem_free(&P[1]);
}
END_TEST

START_TEST(algo_defaults_and_checks) {
    static const double lr_exact[] = {0, 5, 1, 0.05, 5}, lr_sampled[] = {0, 1, 1, 0.05, 0};
    static const long steps_exact[] = {200000, 200000, 200000, 20000, 20000};
    for (int m = 0; m < FDPO_LAB_NMETHODS; m++) {
        fdpo_lab_algo_opts o;
        fdpo_lab_algo_opts_default(&o, (fdpo_lab_method)m, 1, 7);
        ck_assert_int_eq(o.method, m);
        ck_assert_int_eq(o.div.kind, FDPO_DIV_RKL);
        ck_assert_double_eq(o.beta, 0.5);
        ck_assert_uint_eq(o.pair_top, 3);
        ck_assert_int_eq(o.k, 4);
        ck_assert_double_eq(o.grpo_eps, 1e-4);
        ck_assert_int_eq(o.labels, FDPO_LAB_LABELS_BT);
        ck_assert(isnan(o.label_threshold));
        ck_assert_double_eq(o.desirable_weight, 1);
        ck_assert_double_eq(o.undesirable_weight, 1);
        ck_assert_double_eq(o.lr, lr_exact[m]);
        ck_assert_int_eq(o.steps, steps_exact[m]);
        ck_assert_int_eq(fdpo_lab_algo_opts_check(&o), 0);
        ck_assert_str_eq(fdpo_lab_algo_variant(&o), m == FDPO_LAB_DPO || m == FDPO_LAB_KTO ? "offline" : "exact");
        fdpo_lab_algo_opts_default(&o, (fdpo_lab_method)m, 0, 7);
        ck_assert_str_eq(fdpo_lab_algo_variant(&o), m == FDPO_LAB_DPO || m == FDPO_LAB_KTO ? "offline" : "sampled");
        ck_assert_double_eq(o.lr, lr_sampled[m]);
        ck_assert_int_eq(o.steps, 100000);
        if (m == FDPO_LAB_KTO) ck_error_names(fdpo_lab_algo_opts_check(&o), "--sampled: kto runs on the exact expected loss only");
        else ck_assert_int_eq(fdpo_lab_algo_opts_check(&o), 0);
    }
    fdpo_lab_algo_opts o;
    fdpo_lab_algo_opts_default(&o, FDPO_LAB_ONLINE, 1, 7);
    o.lr = 0;
    ck_error_names(fdpo_lab_algo_opts_check(&o), "--lr: must be > 0");
    o.lr = 1;
    o.steps = 0;
    ck_error_names(fdpo_lab_algo_opts_check(&o), "--steps: must be >= 1");
    o.steps = 10;
    o.k = 1; /* one sample per step is fine online, not for rloo's leave-one-out */
    ck_assert_int_eq(fdpo_lab_algo_opts_check(&o), 0);
    o.method = FDPO_LAB_RLOO;
    ck_error_names(fdpo_lab_algo_opts_check(&o), "--group-size: rloo needs groups of at least 2");
    o.k = 4;
    o.method = FDPO_LAB_GRPO;
    o.grpo_eps = 0;
    ck_error_names(fdpo_lab_algo_opts_check(&o), "--grpo-eps");
    /* non-finite as rl refuses it (fdpo_rl_config_check): an inf eps made every advantage 0,
     * and an exact grpo run did no step and reported converged = 1 with pi = pi_ref */
    o.grpo_eps = INFINITY;
    ck_assert_int_eq(fdpo_lab_algo_opts_check(&o), -1);
    ck_assert_str_eq(fdpo_last_error(), "--grpo-eps: must be > 0 (got inf)");
    o.grpo_eps = NAN;
    ck_assert_int_eq(fdpo_lab_algo_opts_check(&o), -1);
    ck_assert_str_eq(fdpo_last_error(), "--grpo-eps: must be > 0 (got nan)");
    o.grpo_eps = 1e-4;
    o.method = FDPO_LAB_DPO; /* L-BFGS: no step size, steps or groups */
    o.lr = 0;
    ck_assert_int_eq(fdpo_lab_algo_opts_check(&o), 0);
    o.beta = 0;
    ck_error_names(fdpo_lab_algo_opts_check(&o), "--beta");
    fdpo_lab_algo_opts_default(&o, FDPO_LAB_KTO, 1, 7);
    o.labels = (fdpo_lab_labels)7;
    ck_error_names(fdpo_lab_algo_opts_check(&o), "--labels");
    fdpo_lab_labels l;
    ck_assert_int_eq(fdpo_lab_labels_parse("threshold", &l), 0);
    ck_assert_int_eq(l, FDPO_LAB_LABELS_THRESHOLD);
    ck_assert_int_eq(fdpo_lab_labels_parse("bt", &l), 0);
    ck_assert_int_eq(l, FDPO_LAB_LABELS_BT);
    ck_error_names(fdpo_lab_labels_parse("soft", &l), "--labels: unknown labelling 'soft'");
}
END_TEST

/* KTO is fitted on its exact expected loss only: a sampled run asked of the library is refused
 * with the flag (it used to run the exact loss under a "sampled" label: only the CLI refused) */
START_TEST(algo_run_refuses_sampled_kto) {
    const double q[4] = {0.4, 0.3, 0.2, 0.1}, r[4] = {1, 0, -0.5, 0.25};
    fdpo_lab_prepared pp;
    fdpo_lab_prepare(&pp, q, r, 4);
    fdpo_lab_algo_opts o = {0};
    o.method = FDPO_LAB_KTO;
    fdpo_divergence_parse("rkl", &o.div);
    o.beta = 0.5;
    o.exact = 0;
    o.steps = 200;
    o.lr = 1;
    o.label_threshold = NAN;
    o.desirable_weight = o.undesirable_weight = 1;
    fdpo_lab_algo_result res;
    double pi[4];
    ck_assert_int_ne(fdpo_lab_algo_run(&pp, &o, pi, &res), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--sampled"));
    o.exact = 1;
    ck_assert_int_eq(fdpo_lab_algo_run(&pp, &o, pi, &res), 0);
    ck_assert(isfinite(res.z0) && isfinite(res.undesirable_mass));
    /* z0 and undesirable_mass are kto's: NaN (not applicable) on the other methods' results */
    o.method = FDPO_LAB_RLOO;
    o.k = 2;
    ck_assert_int_eq(fdpo_lab_algo_run(&pp, &o, pi, &res), 0);
    ck_assert(isnan(res.z0) && isnan(res.undesirable_mass));
    ck_assert_double_eq(res.target_diff, res.max_abs_diff);
    fdpo_lab_prepared_free(&pp);
}
END_TEST

/* What the runs refuse, checkable before anything is written (fdpo lab check runs these before
 * its table's header): fdpo_lab_algo_validate (n, the options, dpo's pair-top, exact grpo's
 * n^k, kto's weights) and fdpo_lab_check_validate (the loss, --label-noise, n). */
START_TEST(validate_before_the_run) {
    fdpo_lab_algo_opts o;
    fdpo_lab_algo_opts_default(&o, FDPO_LAB_RLOO, 1, 6);
    ck_assert_int_eq(fdpo_lab_algo_validate(&o, 6), 0);
    ck_error_names(fdpo_lab_algo_validate(&o, 1), "--n: the check needs at least 2 responses (got 1)");
    o.k = 1;
    ck_error_names(fdpo_lab_algo_validate(&o, 6), "--group-size: rloo needs groups of at least 2 samples (got 1)");
    fdpo_lab_algo_opts_default(&o, FDPO_LAB_GRPO, 1, 6);
    o.k = 7; /* 6^7 = 279936 groups */
    ck_assert_int_eq(fdpo_lab_algo_validate(&o, 6), 0);
    o.k = 8; /* 6^8 = 1679616 */
    ck_error_names(fdpo_lab_algo_validate(&o, 6), "--group-size: exact grpo averages over all n^k = 6^8 groups");
    o.exact = 0;
    o.lr = 0.05;
    ck_assert_int_eq(fdpo_lab_algo_validate(&o, 6), 0);
    fdpo_lab_algo_opts_default(&o, FDPO_LAB_DPO, 1, 6);
    o.pair_top = 1;
    ck_error_names(fdpo_lab_algo_validate(&o, 6), "--pair-top: offline pairs need at least 2 responses (got 1)");
    o.pair_top = 0; /* all n */
    ck_assert_int_eq(fdpo_lab_algo_validate(&o, 6), 0);
    fdpo_lab_algo_opts_default(&o, FDPO_LAB_KTO, 1, 6);
    ck_assert_int_eq(fdpo_lab_algo_validate(&o, 6), 0);
    o.desirable_weight = 0;
    ck_error_names(fdpo_lab_algo_validate(&o, 6), "--desirable-weight: must be > 0 (got 0)");
    o.desirable_weight = 1;
    o.undesirable_weight = NAN;
    ck_error_names(fdpo_lab_algo_opts_check(&o), "--undesirable-weight: must be > 0");
    o.undesirable_weight = 1;
    o.label_threshold = INFINITY;
    ck_error_names(fdpo_lab_algo_opts_check(&o), "--label-threshold: must be finite");

    fdpo_pref_loss L = {0};
    L.kind = FDPO_LOSS_SIGMOID;
    fdpo_divergence_parse("rkl", &L.div);
    L.beta = 0.5;
    ck_assert_int_eq(fdpo_lab_check_validate(&L, 0.2, 6), 0);
    ck_error_names(fdpo_lab_check_validate(&L, 0.5, 6), "--label-noise: must be in [0, 0.5) (got 0.5)");
    ck_error_names(fdpo_lab_check_validate(&L, -0.1, 6), "--label-noise");
    ck_error_names(fdpo_lab_check_validate(&L, 0, 1), "--n: the check needs at least 2 responses (got 1)");
    /* and the run itself refuses the same */
    const double q[3] = {0.5, 0.3, 0.2}, r[3] = {1, 0, -1};
    fdpo_lab_prepared pp;
    fdpo_lab_prepare(&pp, q, r, 3);
    fdpo_lab_check_result cr;
    ck_error_names(fdpo_lab_check(&pp, &L, 0.5, NULL, &cr), "--label-noise");
    /* simpo is refused as the loss, before its own check blames the (default) divergence */
    L.kind = FDPO_LOSS_SIMPO;
    fdpo_divergence_parse("fkl", &L.div);
    ck_error_names(fdpo_lab_check_validate(&L, 0, 6), "--loss simpo: the check needs a reference-based loss");
    /* --pair-top above n was clamped to n silently */
    fdpo_lab_algo_opts_default(&o, FDPO_LAB_DPO, 1, 3);
    o.pair_top = 4;
    ck_error_names(fdpo_lab_algo_validate_problem(&o, &pp), "--pair-top: 4 is more than the problem's n = 3 responses");
    o.pair_top = 3;
    ck_assert_int_eq(fdpo_lab_algo_validate_problem(&o, &pp), 0);
    /* kto with no net-desirable response (no reward above the threshold): no limit to compare with */
    fdpo_lab_algo_opts_default(&o, FDPO_LAB_KTO, 1, 3);
    o.labels = FDPO_LAB_LABELS_THRESHOLD;
    o.label_threshold = 1;
    ck_error_names(fdpo_lab_algo_validate_problem(&o, &pp), "--method kto: no response is net desirable");
    fdpo_lab_algo_result res;
    double pi[3];
    ck_error_names(fdpo_lab_algo_run(&pp, &o, pi, &res), "--method kto: no response is net desirable");
    o.label_threshold = 0.5;
    ck_assert_int_eq(fdpo_lab_algo_validate_problem(&o, &pp), 0);
    fdpo_lab_prepared_free(&pp);
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
    tcase_add_test(t, frontier_and_sweep_keep_the_solves_message);
    tcase_add_test(t, csv_bom_subnormal_overflow_nul);
    tcase_add_test(t, constrained_symmetric_problem);
    tcase_add_test(t, constrained_rkl_stepwise_is_exact);
    tcase_add_test(t, beta_grid_and_thresholds);
    tcase_add_test(t, prepare_prompts);
    tcase_add_test(t, coverage_opts_and_comparisons);
    tcase_add_test(t, gap_noise_stream);
    tcase_add_test(t, algo_defaults_and_checks);
    tcase_add_test(t, algo_run_refuses_sampled_kto);
    tcase_add_test(t, validate_before_the_run);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return run_suite(suite()); }
