/* objectives: parse/name round trip, admissibility, and every loss's analytic gradient
 * against central finite differences (the PyTorch comparisons live in test_objectives.py). */
#include <check.h>
#include "check_main.h"
#include <math.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/eval.h"
#include "fdpo/objectives.h"

START_TEST(parse_and_name_round_trip) {
    const char *specs[] = {"rkl", "fkl", "js", "alpha:0.5", "alpha:0.25", "tv", "chi2"};
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        fdpo_divergence d;
        ck_assert_int_eq(fdpo_divergence_parse(specs[i], &d), 0);
        char name[64];
        fdpo_divergence_name(&d, name, sizeof name);
        ck_assert_str_eq(name, specs[i]);
    }
    fdpo_divergence d;
    ck_assert_int_ne(fdpo_divergence_parse("alpha:1", &d), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "alpha:1"));
    ck_assert_int_ne(fdpo_divergence_parse("KL", &d), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "unknown divergence 'KL'"));
}
END_TEST

START_TEST(admissibility) {
    const char *why;
    fdpo_divergence d;
    fdpo_divergence_parse("tv", &d);
    ck_assert_int_eq(fdpo_divergence_admissible(&d, &why), 0);
    ck_assert_ptr_nonnull(strstr(why, "not invertible"));
    fdpo_divergence_parse("chi2", &d);
    ck_assert_int_eq(fdpo_divergence_admissible(&d, &why), 0);
    ck_assert_ptr_nonnull(strstr(why, "0 is in the domain"));
    fdpo_divergence_parse("js", &d);
    ck_assert_int_eq(fdpo_divergence_admissible(&d, &why), 1);
    ck_assert_ptr_null(why);
}
END_TEST

START_TEST(loss_gradients_match_finite_differences) {
    const char *divs[] = {"rkl", "fkl", "js", "alpha:0.3", "alpha:0.7"};
    const fdpo_loss_kind kinds[] = {FDPO_LOSS_SIGMOID, FDPO_LOSS_ROBUST, FDPO_LOSS_HINGE, FDPO_LOSS_IPO, FDPO_LOSS_SIMPO};
    const double pairs[][2] = {{0.3, -0.2}, {-1.5, 0.7}, {2.0, 1.9}, {-0.4, -3.0}};
    for (size_t a = 0; a < 5; a++)
        for (size_t b = 0; b < 5; b++)
            for (size_t p = 0; p < 4; p++) {
                if (kinds[b] == FDPO_LOSS_SIMPO && a > 0) continue; /* simpo has no f: rkl only */
                fdpo_pref_loss L = {0};
                L.kind = kinds[b];
                fdpo_divergence_parse(divs[a], &L.div);
                L.beta = 0.7;
                L.label_smoothing = (kinds[b] == FDPO_LOSS_SIGMOID || kinds[b] == FDPO_LOSS_ROBUST) ? 0.15 : 0;
                L.simpo_gamma = 0.3;
                ck_assert_int_eq(fdpo_pref_loss_check(&L), 0);
                double lw = pairs[p][0], ll = pairs[p][1], dw, dl, h = 1e-6;
                fdpo_pref_loss_pair(&L, lw, ll, &dw, &dl);
                double fw = (fdpo_pref_loss_pair(&L, lw + h, ll, NULL, NULL) - fdpo_pref_loss_pair(&L, lw - h, ll, NULL, NULL)) / (2 * h);
                double fl = (fdpo_pref_loss_pair(&L, lw, ll + h, NULL, NULL) - fdpo_pref_loss_pair(&L, lw, ll - h, NULL, NULL)) / (2 * h);
                /* central differences: error O(h^2) + rounding O(eps/h) ~ 1e-9 on O(1) values */
                ck_assert_msg(fabs(dw - fw) <= 1e-7 * (1 + fabs(fw)), "%s loss %zu pair %zu: dlw %g vs fd %g", divs[a], b, p, dw, fw);
                ck_assert_msg(fabs(dl - fl) <= 1e-7 * (1 + fabs(fl)), "%s loss %zu pair %zu: dll %g vs fd %g", divs[a], b, p, dl, fl);
            }
}
END_TEST

START_TEST(check_names_the_flag) {
    fdpo_pref_loss L = {0};
    L.kind = FDPO_LOSS_SIGMOID;
    fdpo_divergence_parse("rkl", &L.div);
    L.beta = 0;
    ck_assert_int_ne(fdpo_pref_loss_check(&L), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--beta"));
    L.beta = 0.1;
    L.label_smoothing = 0.5;
    ck_assert_int_ne(fdpo_pref_loss_check(&L), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--label-smoothing"));
    L.label_smoothing = 0;
    fdpo_divergence_parse("chi2", &L.div);
    ck_assert_int_ne(fdpo_pref_loss_check(&L), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--divergence chi2"));
    L.kind = FDPO_LOSS_SIMPO; /* reference-free, no f: a divergence other than rkl would be ignored */
    ck_assert_int_ne(fdpo_pref_loss_check(&L), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--divergence chi2: --loss simpo ignores the divergence"));
    fdpo_divergence_parse("rkl", &L.div);
    ck_assert_int_eq(fdpo_pref_loss_check(&L), 0);
}
END_TEST

/* one beta rule for every user of beta (losses, rl, eval, lab): finite and > 0, the value named */
START_TEST(beta_check_is_one_rule) {
    ck_assert_int_eq(fdpo_beta_check(0.1), 0);
    ck_assert_int_eq(fdpo_beta_check(1e-300), 0);
    const double bad[] = {0, -0.5, NAN, INFINITY};
    const char *want[] = {"(got 0)", "(got -0.5)", "(got nan)", "(got inf)"};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_ne(fdpo_beta_check(bad[i]), 0);
        ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--beta: must be a finite number > 0"));
        ck_assert_ptr_nonnull(strstr(fdpo_last_error(), want[i]));
    }
    fdpo_kto_loss K = {0};
    K.beta = -1;
    fdpo_divergence_parse("rkl", &K.div);
    K.desirable_weight = K.undesirable_weight = 1;
    ck_assert_int_ne(fdpo_kto_loss_check(&K), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--beta: must be a finite number > 0 (got -1)"));
}
END_TEST

/* f(u)/u at u = e^l against the definitions written out here (u log u, -log u, JS's
 * u log u - (u+1) log((u+1)/2), the alpha family, |u-1|/2, (u-1)^2, each over u) at moderate
 * l, and the limits as l -> inf, where exp(l)/exp(l) was NaN: log 2, 1/alpha, 1/2, 0 */
START_TEST(f_over_u_in_log_space) {
    const char *specs[] = {"rkl", "fkl", "js", "alpha:0.3", "tv", "chi2"};
    for (size_t k = 0; k < 6; k++) {
        fdpo_divergence d;
        ck_assert_int_eq(fdpo_divergence_parse(specs[k], &d), 0);
        for (double l = -6; l <= 6; l += 0.75) {
            double u = exp(l), f;
            switch (d.kind) {
            case FDPO_DIV_RKL: f = u * log(u); break;
            case FDPO_DIV_FKL: f = -log(u); break;
            case FDPO_DIV_JS: f = u * log(u) - (u + 1) * log((u + 1) / 2); break;
            case FDPO_DIV_ALPHA: f = (pow(u, 0.7) - 0.7 * u - 0.3) / (0.3 * -0.7); break;
            case FDPO_DIV_TV: f = 0.5 * fabs(u - 1); break;
            default: f = (u - 1) * (u - 1); break;
            }
            ck_assert_double_eq_tol(fdpo_f_over_u_log(&d, l), f / u, 1e-12 * fmax(1, fabs(f / u)));
        }
    }
    fdpo_divergence js, al, tv, fkl, rkl;
    fdpo_divergence_parse("js", &js); fdpo_divergence_parse("alpha:0.3", &al);
    fdpo_divergence_parse("tv", &tv); fdpo_divergence_parse("fkl", &fkl); fdpo_divergence_parse("rkl", &rkl);
    ck_assert_double_eq_tol(fdpo_f_over_u_log(&js, 800), log(2.0), 1e-15);
    ck_assert_double_eq_tol(fdpo_f_over_u_log(&al, 800), 1 / 0.3, 1e-12);
    ck_assert_double_eq_tol(fdpo_f_over_u_log(&tv, 800), 0.5, 1e-15);
    ck_assert_double_eq(fdpo_f_over_u_log(&fkl, 800), 0.0);   /* -800 e^-800: underflows to -0 */
    ck_assert_double_eq(fdpo_f_over_u_log(&rkl, 800), 800.0);
}
END_TEST

/* js's f(u) ~ u log 2 at the far end: +inf at u = inf (as rkl, fkl and alpha give their inf),
 * and from l = log u finite up to l = log(DBL_MAX / log 2) = 710.15, +inf beyond. fdpo_f(js, inf)
 * was inf * 0 = NaN, and fdpo_f_log NaN past l = 709.78 where e^l alone overflowed. The finite
 * values are mpmath's at 50 digits (tests/py/test_objectives.py checks the whole range). */
START_TEST(js_f_at_the_far_end) {
    fdpo_divergence js;
    ck_assert_int_eq(fdpo_divergence_parse("js", &js), 0);
    ck_assert(isinf(fdpo_f(&js, INFINITY)) && fdpo_f(&js, INFINITY) > 0);
    ck_assert(isinf(fdpo_f_log(&js, INFINITY)) && fdpo_f_log(&js, INFINITY) > 0);
    ck_assert(isinf(fdpo_f_log(&js, 745)) && fdpo_f_log(&js, 745) > 0);
    ck_assert(isinf(fdpo_f_log(&js, 710.2)) && fdpo_f_log(&js, 710.2) > 0);
    ck_assert_double_eq_tol(fdpo_f_log(&js, 709.9), 1.4011291359773521e308, 1e-14 * 1.4011291359773521e308);
    ck_assert_double_eq_tol(fdpo_f_log(&js, 710), 1.5484871735506643e308, 1e-14 * 1.5484871735506643e308);
    ck_assert_double_eq_tol(fdpo_f_log(&js, -INFINITY), log(2.0), 1e-16);   /* f(0) */
    ck_assert_double_eq(fdpo_f(&js, 1), 0.0);
}
END_TEST

/* eval's fdiv_tok (fdpo_token_divergences, the vocabulary sum of fdpo_qf_log) for a policy a
 * few 1e-9 nats from its reference: js had no correct digit there (each term's absolute 1e-16
 * against a sum of 1e-18), alpha ~1e-7. The reference is mpmath's at 60 digits, from these
 * doubles: sum_v q_v f(p_v/q_v), l_v = lp_v - lq_v exactly. */
START_TEST(token_divergences_near_the_reference) {
    const double lq[3] = {-0.6931471805599453, -1.2039728043259361, -1.6094379124341003};
    const double lp[3] = {-0.6931471785599452, -1.2039728073259361, -1.6094379114341002};
    fdpo_divergence divs[2];
    fdpo_divergence_parse("js", &divs[0]);
    fdpo_divergence_parse("alpha:0.5", &divs[1]);
    double fdiv[2];
    fdpo_token_divergences(lp, lq, 3, divs, 2, fdiv);
    ck_assert_double_eq_tol(fdiv[0], 1.2250000467951862e-18, 1e-14 * 1.2250000467951862e-18);
    ck_assert_double_eq_tol(fdiv[1], 2.4500000935903723e-18, 1e-14 * 2.4500000935903723e-18);
}
END_TEST

/* eval's Delta = s(l_w) - s(l_l) without the training score's exponent cap (88.7228): the
 * capped difference below it; beyond it e^(-A l_l) - e^(-A l_w) over A, against mpmath at 50
 * digits (from the doubles written here), finite where only e^(-A l) alone overflows, +-inf
 * past double's range, 0 for equal sides */
START_TEST(score_diff_without_the_cap) {
    fdpo_divergence fkl, al, al5, rkl, js;
    fdpo_divergence_parse("fkl", &fkl); fdpo_divergence_parse("alpha:0.3", &al); fdpo_divergence_parse("alpha:0.5", &al5);
    fdpo_divergence_parse("rkl", &rkl); fdpo_divergence_parse("js", &js);
    ck_assert_double_eq(fdpo_score_diff(&fkl, -3, -5), fdpo_score(&fkl, -3) - fdpo_score(&fkl, -5));
    ck_assert_double_eq(fdpo_score_diff(&al, 2, -7), fdpo_score(&al, 2) - fdpo_score(&al, -7));
    ck_assert_double_eq(fdpo_score_diff(&rkl, -900, -1000), 100.0);
    ck_assert_double_eq(fdpo_score_diff(&js, -900, -1000), fdpo_score(&js, -900) - fdpo_score(&js, -1000));
    /* the capped score makes both sides -e^88.7228: a tie */
    ck_assert_double_eq(fdpo_score(&fkl, -700) - fdpo_score(&fkl, -705), 0.0);
    ck_assert_double_eq_tol(fdpo_score_diff(&fkl, -700, -705), 1.4951115125158440187e+306, 1e-13 * 1.5e306);
    ck_assert_double_eq_tol(fdpo_score_diff(&al5, -300, -200), -2.7874191613327593946e+65, 1e-13 * 2.8e65);
    ck_assert_double_eq_tol(fdpo_score_diff(&al, -1990, -2000), 1.1950575604180409421e+261, 1e-12 * 1.2e261);
    ck_assert_double_eq_tol(fdpo_score_diff(&fkl, -709.99, -710), 2.2228619326777347211e+306, 1e-11 * 2.2e306);
    ck_assert(isinf(fdpo_score_diff(&fkl, -100, -800)) && fdpo_score_diff(&fkl, -100, -800) > 0);
    ck_assert(isinf(fdpo_score_diff(&fkl, -800, -100)) && fdpo_score_diff(&fkl, -800, -100) < 0);
    ck_assert(isinf(fdpo_score_diff(&fkl, -100, -INFINITY)) && fdpo_score_diff(&fkl, -100, -INFINITY) > 0);
    ck_assert_double_eq(fdpo_score_diff(&fkl, -1000, -1000), 0.0);
    ck_assert(isnan(fdpo_score_diff(&fkl, NAN, -1000)));
}
END_TEST

/* fdpo eval's pair calibration: the library refuses what has no score s (tv, chi2) and a
 * beta that is not > 0, and a NaN probability gives NaN metrics rather than an undefined cast */
START_TEST(eval_config_check_and_calibration) {
    fdpo_eval_config c = {0};
    fdpo_pref_set pairs = {0};
    c.k = 1;
    ck_assert_int_eq(fdpo_eval_config_check(&c), 0);   /* no pairs: beta and cal_div unused */
    c.pairs = &pairs;
    ck_assert_int_ne(fdpo_eval_config_check(&c), 0);
    c.beta = 0.1;
    ck_assert_int_eq(fdpo_eval_config_check(&c), 0);   /* a zeroed cal_div is rkl */
    fdpo_divergence_parse("tv", &c.cal_div);
    ck_assert_int_ne(fdpo_eval_config_check(&c), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--divergence tv: cannot score"));
    fdpo_divergence_parse("js", &c.cal_div);
    c.beta = -1;
    ck_assert_int_ne(fdpo_eval_config_check(&c), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--beta"));
    c.beta = 0.1;
    c.safety_threshold = INFINITY;
    ck_assert_int_ne(fdpo_eval_config_check(&c), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--safety-threshold"));
    /* by hand: right = [1, 0], confidence 0.8 (bin 8) and 0.7 (bin 7):
     * ECE = |1 - 0.8|/2 + |0 - 0.7|/2 = 0.45 */
    double p[2] = {0.8, 0.3}, acc, ece;
    fdpo_calibration(p, 2, &acc, &ece);
    ck_assert_double_eq_tol(acc, 0.5, 1e-15);
    ck_assert_double_eq_tol(ece, 0.45, 1e-15);
    p[1] = NAN;
    fdpo_calibration(p, 2, &acc, &ece);
    ck_assert(isnan(acc) && isnan(ece));
}
END_TEST

int main(void) {
    Suite *s = suite_create("objectives");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, parse_and_name_round_trip);
    tcase_add_test(tc, admissibility);
    tcase_add_test(tc, loss_gradients_match_finite_differences);
    tcase_add_test(tc, check_names_the_flag);
    tcase_add_test(tc, beta_check_is_one_rule);
    tcase_add_test(tc, eval_config_check_and_calibration);
    tcase_add_test(tc, f_over_u_in_log_space);
    tcase_add_test(tc, js_f_at_the_far_end);
    tcase_add_test(tc, token_divergences_near_the_reference);
    tcase_add_test(tc, score_diff_without_the_cap);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
