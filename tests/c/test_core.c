/* core: RNG reproducibility and reference values, UTF-8 validation, atomic writes. */
#include <check.h>
#include "check_main.h"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <math.h>
#include "fdpo/core.h"

START_TEST(rng_reference_values) {
    /* splitmix64(0) first outputs, published with the algorithm (Vigna's splitmix64.c):
     * 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4 — xoshiro's state after seeding with 0. */
    fdpo_rng r;
    fdpo_rng_seed(&r, 0);
    ck_assert_uint_eq(r.s[0], 0xe220a8397b1dcdafULL);
    ck_assert_uint_eq(r.s[1], 0x6e789e6aa1b965f4ULL);
    fdpo_rng a, b;
    fdpo_rng_seed(&a, 42); fdpo_rng_seed(&b, 42);
    for (int i = 0; i < 1000; i++) ck_assert_uint_eq(fdpo_rng_u64(&a), fdpo_rng_u64(&b));
}
END_TEST

START_TEST(rng_normal_moments) {
    fdpo_rng r;
    fdpo_rng_seed(&r, 7);
    double s = 0, s2 = 0;
    int n = 200000;
    for (int i = 0; i < n; i++) { double x = fdpo_rng_normal(&r); s += x; s2 += x * x; }
    /* mean within 5 standard errors of 0, variance within 5 s.e. (sqrt(2/n)) of 1 */
    ck_assert_double_le(fabs(s / n), 5.0 / sqrt(n));
    ck_assert_double_le(fabs(s2 / n - 1.0), 5.0 * sqrt(2.0 / n));
}
END_TEST

START_TEST(utf8_validation) {
    ck_assert_int_eq(fdpo_utf8_valid("abc", 3), 1);
    ck_assert_int_eq(fdpo_utf8_valid("\xC3\xA9", 2), 1);            /* é */
    ck_assert_int_eq(fdpo_utf8_valid("\xF0\x9F\x98\x80", 4), 1);    /* 😀 */
    ck_assert_int_eq(fdpo_utf8_valid("\xC3", 1), 0);                /* truncated */
    ck_assert_int_eq(fdpo_utf8_valid("\xC0\xAF", 2), 0);            /* overlong */
    ck_assert_int_eq(fdpo_utf8_valid("\xED\xA0\x80", 3), 0);        /* surrogate */
    ck_assert_int_eq(fdpo_utf8_valid("\xFF", 1), 0);
}
END_TEST

START_TEST(atomic_write_replaces) {
    char dir[] = "/tmp/fdpo_test_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *p = fdpo_path_join(dir, "f.txt");
    ck_assert_int_eq(fdpo_write_file_atomic(p, "old", 3), 0);
    ck_assert_int_eq(fdpo_write_file_atomic(p, "new!", 4), 0);
    size_t n;
    char *s = fdpo_read_file(p, &n);
    ck_assert_uint_eq(n, 4);
    ck_assert_str_eq(s, "new!");
    free(s);
    ck_assert_ptr_null(fdpo_read_file("/nonexistent/x", &n));
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "/nonexistent/x"));
    unlink(p); rmdir(dir); free(p);
}
END_TEST

int main(void) {
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, rng_reference_values);
    tcase_add_test(tc, rng_normal_moments);
    tcase_add_test(tc, utf8_validation);
    tcase_add_test(tc, atomic_write_replaces);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
