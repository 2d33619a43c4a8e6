/* Out of memory while decoding: every failed large allocation of a bf16 Llama decoder
 * (src/model/llama_decode.c) either returns an error or reaches the fdpo_oom_set handler,
 * never abort() past it. A file of its own: it replaces mmap for the whole program (the
 * library is linked statically, so its calls land here), failing one anonymous mapping. */
#include <check.h>
#include "check_main.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fdpo/core.h"
#include "fdpo/eval.h"
#include "fdpo/gpt2.h"
#include "fdpo/trainer.h"

static int armed, count, fail_at = -1;
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    if (armed && (flags & MAP_ANONYMOUS) && count++ == fail_at) { errno = ENOMEM; return MAP_FAILED; }
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

enum { DONE = 10, FAILED = 11, HANDLER = 12 };
static void oom_handler(size_t bytes, void *user) { (void)bytes; (void)user; _exit(HANDLER); }

/* the child's run with the k-th anonymous mapping failing: DONE when none was left to fail */
static void generate_failing(int k) {
    fdpo_set_threads(1);
    if (fdpo_set_precision("bf16")) _exit(1);
    fdpo_oom_set(oom_handler, NULL);
    fdpo_train_opts o;
    fdpo_train_opts_default(&o);
    o.out = "unused"; o.arch = "llama"; o.n_layer = 1; o.n_head = 2; o.n_embd = 16; o.n_positions = 64;
    fdpo_gpt2_config c = fdpo_train_opts_model_config(&o, 257);
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    if (!m) _exit(1);
    fdpo_gpt2_init(m, 1);
    fdpo_sample_config sc = {.temperature = 1, .top_p = 1, .max_new_tokens = 4, .batch = 2, .seed = 1};
    int32_t p0[2] = {10, 20}, *pp[1] = {p0};
    size_t pl[1] = {2};
    fdpo_sample *s = NULL;
    fail_at = k;
    armed = 1;
    int rc = fdpo_generate_eot(m, NULL, -1, &sc, pp, pl, 1, 2, &s);
    armed = 0;
    _exit(rc ? FAILED : count <= k ? DONE : 1);
}

START_TEST(bf16_llama_decoder_out_of_memory_reaches_the_handler) {
    int k = 0, failed = 0;
    for (;; k++) {
        ck_assert_msg(k < 64, "generation still mapping memory after 64 mappings");
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) generate_failing(k);
        int st;
        ck_assert_int_eq(waitpid(pid, &st, 0), pid);
        ck_assert_msg(WIFEXITED(st), "anonymous mapping %d failing: killed by signal %d (abort past the handler)", k,
                      WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        int code = WEXITSTATUS(st);
        ck_assert_msg(code == DONE || code == FAILED || code == HANDLER, "mapping %d failing: exit %d", k, code);
        if (code == DONE) break;
        failed++;
    }
    ck_assert_int_gt(failed, 0);   /* the run mapped memory: some failure was met */
}
END_TEST

int main(void) {
    Suite *s = suite_create("decode_oom");
    TCase *tc = tcase_create("decode_oom");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, bf16_llama_decoder_out_of_memory_reaches_the_handler);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
