/* The library as a program embedding it calls it, twice in one process: what one call sets up
 * (a stop request, a resumed run's bf16 route pin, OUT's lock) must not change a later call.
 * The reference of each later run is the same run in a fresh process (a forked child that ran
 * nothing before it): its files must be byte-identical; the rest is the headers' documented
 * behaviour (trainer.h, gpt2.h, rl.h, online.h). */
#include <check.h>
#include "check_main.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fdpo/core.h"
#include "fdpo/data.h"
#include "fdpo/dpo.h"
#include "fdpo/kto.h"
#include "fdpo/rm.h"
#include "fdpo/gpt2.h"
#include "fdpo/online.h"
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

/* the pretrain run in a fresh process: the reference of a later run in this one */
static void pretrain_in_fresh_process(const char *name, long n_embd, long threads, const char *precision) {
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (precision && fdpo_set_precision(precision)) _exit(3);
        _exit(pretrain(name, 0, 0, n_embd, threads) ? 1 : 0);
    }
    int st = 0;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* trainer.h: "Ask every running trainer to save and stop": a run started after the stopped
 * one had returned is not running at the request; it trained 1 step, then ended "interrupted" */
START_TEST(a_stop_request_ends_with_the_run_it_stopped) {
    make_tmpdir();
    write_text();
    pretrain_in_fresh_process("fresh", 8, 1, NULL);   /* forked before this process runs anything */
    fdpo_trainer_request_stop();   /* e.g. the embedding program's "stop" button */
    ck_assert_int_eq(pretrain("stopped", 0, 0, 8, 1), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "interrupted after step 1 of 3"));
    ck_assert_int_eq(pretrain("later", 0, 0, 8, 1), 0);
    char *later = tmp_path("later"), *fresh = tmp_path("fresh");
    ck_assert(same_file(later, fresh, "model.safetensors"));
    free(later); free(fresh);
    /* a request while no trainer runs is still for the next one (the command's SIGINT during
     * its data loading) */
    fdpo_trainer_request_stop();
    ck_assert_int_eq(pretrain("stopped2", 0, 0, 8, 1), -1);
    ck_assert_int_eq(pretrain("later2", 0, 0, 8, 1), 0);
    ck_assert_int_eq(fdpo_remove_tree(tmpdir), 0);
}
END_TEST

/* gpt2.h: the pin is the resumed run's route. A run resumed on another route than this
 * process's (its first steps on the no-AVX512-BF16 fallback), then a fresh run: the fresh
 * run takes this process's route and the weights it has in a fresh process. */
START_TEST(a_resumed_run_s_route_pin_ends_with_it) {
    make_tmpdir();
    write_text();
    pid_t pid = fork();   /* run A's first step on the fallback route, in its own process */
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        setenv("FDPO_FORCE_BF16_FALLBACK", "1", 1);
        if (fdpo_set_precision("bf16")) _exit(3);
        _exit(pretrain("A", 0, 1, 64, 1) ? 1 : 0);
    }
    int st = 0;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    if (!fdpo_bf16_native()) {   /* the fallback is this CPU's only route: nothing to pin */
        ck_assert_int_eq(fdpo_remove_tree(tmpdir), 0);
        return;
    }
    pretrain_in_fresh_process("B_fresh", 64, 1, "bf16");   /* forked before this process runs anything */
    ck_assert_int_eq(fdpo_set_precision("bf16"), 0);
    const char *route = fdpo_bf16_route();
    ck_assert_str_ne(route, "fallback");
    ck_assert_int_eq(pretrain("A", 1, 0, 64, 1), 0);   /* resumed on its pinned route */
    ck_assert_str_eq(fdpo_bf16_route(), route);
    ck_assert_int_eq(pretrain("B_after", 0, 0, 64, 1), 0);
    char *after = tmp_path("B_after"), *fresh = tmp_path("B_fresh");
    ck_assert(same_file(after, fresh, "model.safetensors"));
    ck_assert(same_file(after, fresh, "training_state.json"));   /* its "bf16-route" included */
    free(after); free(fresh);
    ck_assert_int_eq(fdpo_remove_tree(tmpdir), 0);
}
END_TEST

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

/* a one-round online run from tmpdir/model: rc */
static int online_run(const char *name, long seed, long sample_seed) {
    char *model = tmp_path("model"), *prompts = tmp_path("p.txt"), *out = tmp_path(name);
    fdpo_online_opts o;
    fdpo_online_opts_default(&o);
    o.model = model; o.prompts = prompts; o.reward = "length"; o.out = out;
    o.rounds = 1; o.prompts_per_round = 3; o.n = 3; o.sample.max_new_tokens = 6;
    o.dpo.train.threads = 1; o.dpo.train.quiet = 1; o.dpo.train.seed = seed;
    if (sample_seed >= 0) o.sample.seed = (uint64_t)sample_seed;
    int rc = fdpo_online_run(&o);
    free(model); free(prompts); free(out);
    return rc;
}

/* online.h: sampling "seeded by dpo.train.seed" (the seed online.json records), whatever
 * sample.seed holds: the run `fdpo online --seed 1337` makes */
START_TEST(online_samples_are_seeded_by_dpo_train_seed) {
    make_tmpdir();
    write_text();
    ck_assert_int_eq(pretrain("model", 0, 0, 8, 1), 0);
    write_file("p.txt", "the cat\na dog\nsat on\n");
    ck_assert_int_eq(online_run("as_the_command", 1337, -1), 0);
    ck_assert_int_eq(online_run("other_sample_seed", 1337, 99), 0);
    char *a = tmp_path("as_the_command"), *b = tmp_path("other_sample_seed");
    size_t n = 0;
    char *pairs = read_bytes(a, "round-0.pairs.jsonl", &n);
    ck_assert_ptr_nonnull(pairs);
    ck_assert_uint_gt(n, 0);   /* pairs to compare: the samples' rewards differed */
    free(pairs);
    ck_assert(same_file(a, b, "round-0.pairs.jsonl"));
    ck_assert(same_file(a, b, "round-0/model.safetensors"));
    free(a); free(b);
    ck_assert_int_eq(fdpo_remove_tree(tmpdir), 0);
}
END_TEST

/* A run refused early leaves OUT free, as every other failure of fdpo_trainer_open does:
 * another process's run on OUT is no longer refused "in use" until this program exits. */
START_TEST(a_refused_run_releases_out) {
    make_tmpdir();
    write_text();
    ck_assert_int_eq(pretrain("model", 0, 0, 8, 1), 0);
    ck_assert_int_eq(pretrain("existing", 0, 0, 8, 1), 0);
    char *model = tmp_path("model"), *existing = tmp_path("existing"), *pairs = tmp_path("pairs.jsonl");
    /* a resume of another kind: OUT holds a pretrain run, resumed as sft */
    fdpo_tokenizer *tok = fdpo_tokenizer_byte();
    fdpo_train_opts o;
    fdpo_train_opts_default(&o);
    o.out = existing; o.n_layer = 1; o.n_head = 2; o.n_embd = 8; o.n_positions = 32; o.seq_len = 16;
    o.batch_size = 2; o.steps = 3; o.threads = 1; o.quiet = 1; o.eval_every = 0; o.val_fraction = 0; o.resume = 1;
    char *data = tmp_path("text.txt");
    const char *paths[1] = {data};
    fdpo_lm_data tr = {0}, va = {0};
    ck_assert_int_eq(fdpo_text_load(paths, 1, tok, 16, 0, (uint64_t)o.seed, &tr, &va), 0);
    ck_assert_int_eq(fdpo_lm_train(&o, "sft", tok, &tr, &va), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "holds a 'pretrain' run, not 'sft'"));
    ck_assert_int_eq(fdpo_dir_locked(existing), 0);
    fdpo_lm_data_free(&tr); fdpo_lm_data_free(&va);
    fdpo_tokenizer_free(tok);
    /* dpo's most common refusal: a fresh run into an OUT that holds a checkpoint */
    write_file("pairs.jsonl", "{\"prompt\": \"the\", \"chosen\": \" cat\", \"rejected\": \" dog\"}\n"
                              "{\"prompt\": \"a\", \"chosen\": \" mat\", \"rejected\": \" sat\"}\n");
    fdpo_dpo_run_opts d;
    fdpo_dpo_run_opts_default(&d);
    d.train.init = model; d.data = pairs; d.train.out = existing; d.train.threads = 1; d.train.quiet = 1; d.train.steps = 1;
    ck_assert_int_eq(fdpo_dpo_train(&d), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "already holds a checkpoint"));
    ck_assert_int_eq(fdpo_dir_locked(existing), 0);
    /* the tokenizer of a resume that has nothing to resume */
    d.train.out = model;
    char *state = fdpo_path_join(model, "training_state.json");
    ck_assert_int_eq(unlink(state), 0);
    free(state);
    d.train.resume = 1;
    ck_assert_ptr_null(fdpo_trainer_load_tokenizer(&d.train));
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "has no training state"));
    ck_assert_int_eq(fdpo_dir_locked(model), 0);
    /* rm and kto refused after the resume's tokenizer took OUT (its data file missing): free too */
    char *missing = tmp_path("missing.jsonl"), *rmrun = tmp_path("rmrun"), *ktorun = tmp_path("ktorun");
    char *kdata = tmp_path("kto.jsonl");
    fdpo_rm_run_opts rm;
    fdpo_rm_run_opts_default(&rm);
    rm.train.init = model; rm.data = pairs; rm.train.out = rmrun; rm.train.threads = 1; rm.train.quiet = 1;
    rm.train.steps = 1; rm.train.batch_size = 2; rm.eval_fraction = 0;
    ck_assert_int_eq(fdpo_rm_train(&rm), 0);
    rm.data = missing; rm.train.resume = 1; rm.train.steps = 2;
    ck_assert_int_eq(fdpo_rm_train(&rm), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "missing.jsonl"));
    ck_assert_int_eq(fdpo_dir_locked(rmrun), 0);
    write_file("kto.jsonl", "{\"prompt\": \"the\", \"completion\": \" cat\", \"label\": true}\n"
                            "{\"prompt\": \"a\", \"completion\": \" dog\", \"label\": false}\n");
    fdpo_kto_run_opts kto;
    fdpo_kto_run_opts_default(&kto);
    kto.train.init = model; kto.data = kdata; kto.train.out = ktorun; kto.train.threads = 1; kto.train.quiet = 1;
    kto.train.steps = 1; kto.train.batch_size = 2; kto.eval_fraction = 0;
    ck_assert_int_eq(fdpo_kto_train(&kto), 0);
    kto.data = missing; kto.train.resume = 1; kto.train.steps = 2;
    ck_assert_int_eq(fdpo_kto_train(&kto), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "missing.jsonl"));
    ck_assert_int_eq(fdpo_dir_locked(ktorun), 0);
    free(missing); free(rmrun); free(ktorun); free(kdata);
    free(model); free(existing); free(pairs); free(data);
    ck_assert_int_eq(fdpo_remove_tree(tmpdir), 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("library_state");
    TCase *tc = tcase_create("library_state");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, a_stop_request_ends_with_the_run_it_stopped);
    tcase_add_test(tc, a_resumed_run_s_route_pin_ends_with_it);
    tcase_add_test(tc, rl_samples_are_seeded_by_train_seed);
    tcase_add_test(tc, online_samples_are_seeded_by_dpo_train_seed);
    tcase_add_test(tc, a_refused_run_releases_out);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
