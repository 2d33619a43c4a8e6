/* C++ callers: every public header in one C++ translation unit, linked against libfdpo.a.
 * Without the headers' extern "C" guards the names below are mangled and the link fails
 * ("undefined reference to `fdpo_error(char const*, ...)'"): building this file is most of
 * the test. One function of each header is referenced (a global table, so the compiler
 * keeps every reference), a few are called. */
#include <check.h>
#include <cmath>
#include <cstring>
#include "check_main.h"
#include "fdpo/chat.h"
#include "fdpo/core.h"
#include "fdpo/data.h"
#include "fdpo/decode.h"
#include "fdpo/dist.h"
#include "fdpo/dpo.h"
#include "fdpo/eval.h"
#include "fdpo/gpt2.h"
#include "fdpo/io.h"
#include "fdpo/kto.h"
#include "fdpo/lab.h"
#include "fdpo/lab_algos.h"
#include "fdpo/lora.h"
#include "fdpo/merge.h"
#include "fdpo/objectives.h"
#include "fdpo/online.h"
#include "fdpo/pairs.h"
#include "fdpo/pref.h"
#include "fdpo/report.h"
#include "fdpo/rl.h"
#include "fdpo/rm.h"
#include "fdpo/sacpo.h"
#include "fdpo/tokenizer.h"
#include "fdpo/train.h"
#include "fdpo/trainer.h"

typedef void (*any_fn)(void);
#define REF(f) reinterpret_cast<any_fn>(&f)
/* not const and not static: external linkage, so it is emitted with every reference */
any_fn fdpo_one_function_per_header[] = {
    REF(fdpo_chat_free),        REF(fdpo_last_error),      REF(fdpo_lm_data_free),
    REF(fdpo_decoder_forward),  REF(fdpo_dist_compiled),   REF(fdpo_layout_parse),
    REF(fdpo_read_prompts),     REF(fdpo_gpt2_create),     REF(fdpo_st_open),
    REF(fdpo_unpaired_load),    REF(fdpo_lab_gen_default), REF(fdpo_lab_method_parse),
    REF(fdpo_lora_opts_check),  REF(fdpo_merge_opts_check), REF(fdpo_sigmoid),
    REF(fdpo_online_opts_default), REF(fdpo_sample_recs_read), REF(fdpo_pref_parse),
    REF(fdpo_report_write),     REF(fdpo_rl_config_check), REF(fdpo_rm_batch_add),
    REF(fdpo_sacpo_opts_check), REF(fdpo_tokenizer_byte),  REF(fdpo_adamw_step),
    REF(fdpo_train_opts_default),
};

START_TEST(cxx_program_links_and_calls_the_c_library) {
    const size_t n = sizeof fdpo_one_function_per_header / sizeof *fdpo_one_function_per_header;
    ck_assert_uint_eq(n, 25);   /* the headers in include/fdpo */
    for (size_t i = 0; i < n; i++) ck_assert_ptr_nonnull(reinterpret_cast<void *>(fdpo_one_function_per_header[i]));
    ck_assert_int_eq(fdpo_error("x %d", 1), -1);
    ck_assert_str_eq(fdpo_last_error(), "x 1");
    ck_assert_double_eq(fdpo_sigmoid(0.0), 0.5);
    ck_assert_double_eq_tol(fdpo_softplus(0.0), std::log(2.0), 1e-15);
    fdpo_sched_kind k;
    ck_assert_int_eq(fdpo_schedule_parse("cosine", &k), 0);
    ck_assert_int_eq(k, FDPO_SCHED_COSINE);
    fdpo_merge_opts mo = {};
    ck_assert_int_eq(fdpo_merge_opts_check(&mo), -1);
    ck_assert_str_eq(fdpo_last_error(), "--model: at least one checkpoint to merge is required");
    fdpo_tokenizer *tok = fdpo_tokenizer_byte();
    ck_assert_ptr_nonnull(tok);
    fdpo_tokenizer_free(tok);
}
END_TEST

int main(void) {
    Suite *s = suite_create("headers_cxx");
    TCase *tc = tcase_create("headers_cxx");
    tcase_add_test(tc, cxx_program_links_and_calls_the_c_library);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
