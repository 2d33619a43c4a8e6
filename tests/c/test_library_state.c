/* The library as a program embedding it calls it: what the headers document (rl.h). */
#include <check.h>
#include "check_main.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fdpo/core.h"
#include "fdpo/data.h"
#include "fdpo/rl.h"
#include "fdpo/trainer.h"

static char tmpdir[256];
static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fdpo_test_libstate_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}
static char *tmp_path(const char *name) { return fdpo_path_join(tmpdir, name); }

static void write_file(const char *name, const char *text) {
    char *p = tmp_path(name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    free(p);
}

/* a file's bytes (NUL-terminated, *n its length); NULL when it cannot be read */
static char *read_bytes(const char *dir, const char *name, size_t *n) {
    char *p = fdpo_path_join(dir, name);
    FILE *f = fopen(p, "rb");
    free(p);
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    b[*n] = 0;
    fclose(f);
    return b;
}

static int same_file(const char *dir_a, const char *dir_b, const char *name) {
    size_t na = 0, nb = 0;
    char *a = read_bytes(dir_a, name, &na), *b = read_bytes(dir_b, name, &nb);
    int same = a && b && na == nb && !memcmp(a, b, na);
    free(a);
    free(b);
    return same;
}

/* 400 words of a 6-word vocabulary, deterministic */
static void write_text(void) {
    static const char *const words[] = {"the", "cat", "sat", "on", "a", "mat"};
    char text[4096];
    size_t n = 0;
    unsigned x = 1;
    for (int i = 0; i < 400; i++) {
        x = x * 1103515245u + 12345u;
        n += (size_t)snprintf(text + n, sizeof text - n, "%s%s", i ? " " : "", words[(x >> 16) % 6]);
    }
    snprintf(text + n, sizeof text - n, "\n");
    write_file("text.txt", text);
}

/* a tiny pretrain run into tmpdir/name: rc */
static int pretrain(const char *name, int resume, long stop_at, long n_embd, long threads) {
    char *data = tmp_path("text.txt"), *out = tmp_path(name);
    fdpo_tokenizer *tok = fdpo_tokenizer_byte();
    fdpo_train_opts o;
    fdpo_train_opts_default(&o);
    o.out = out; o.n_layer = 1; o.n_head = 2; o.n_embd = n_embd; o.n_positions = 32; o.seq_len = 16;
    o.batch_size = 2; o.steps = 3; o.threads = threads; o.quiet = 1; o.eval_every = 0; o.val_fraction = 0;
    o.lr = 1e-2; o.resume = resume; o.stop_at = stop_at;
    ck_assert_int_eq(fdpo_train_opts_check(&o), 0);
    const char *paths[1] = {data};
    fdpo_lm_data tr = {0}, va = {0};
    ck_assert_int_eq(fdpo_text_load(paths, 1, tok, (size_t)o.seq_len, 0, (uint64_t)o.seed, &tr, &va), 0);
    int rc = fdpo_lm_train(&o, "pretrain", tok, &tr, &va);
    fdpo_lm_data_free(&tr);
    fdpo_lm_data_free(&va);
    fdpo_tokenizer_free(tok);
    free(data);
    free(out);
    return rc;
}

/* a tiny rl run from tmpdir/model: rc */
static int rl_run(const char *name, long seed, long sample_seed) {
    char *model = tmp_path("model"), *prompts = tmp_path("p.txt"), *out = tmp_path(name);
    fdpo_rl_run_opts o;
    fdpo_rl_run_opts_default(&o);
    o.model = model; o.prompts = prompts; o.reward = "length"; o.train.out = out;
    o.train.steps = 2; o.rl.k = 2; o.prompts_per_step = 2; o.sample.max_new_tokens = 6;
    o.train.threads = 1; o.train.quiet = 1; o.train.lr = 1e-2;
    o.train.seed = seed;
    if (sample_seed >= 0) o.sample.seed = (uint64_t)sample_seed;
    int rc = fdpo_rl_train(&o);
    free(model); free(prompts); free(out);
    return rc;
}

/* rl.h: sampling "seeded by train.seed", the seed the run records: setting it after the
 * defaults is the run `fdpo rl --seed 7` makes (the command copies --seed into sample.seed too) */
START_TEST(rl_samples_are_seeded_by_train_seed) {
    make_tmpdir();
    write_text();
    ck_assert_int_eq(pretrain("model", 0, 0, 8, 1), 0);
    write_file("p.txt", "the cat\na dog\nsat on\n");
    ck_assert_int_eq(rl_run("seed7", 7, -1), 0);
    ck_assert_int_eq(rl_run("seed7_as_the_command", 7, 7), 0);
    ck_assert_int_eq(rl_run("seed1337", 1337, -1), 0);
    char *a = tmp_path("seed7"), *b = tmp_path("seed7_as_the_command"), *c = tmp_path("seed1337");
    ck_assert(same_file(a, b, "model.safetensors"));
    ck_assert(!same_file(a, c, "model.safetensors"));
    free(a); free(b); free(c);
    ck_assert_int_eq(fdpo_remove_tree(tmpdir), 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("library_state");
    TCase *tc = tcase_create("library_state");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, rl_samples_are_seeded_by_train_seed);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
