/* core: RNG reproducibility and reference values, UTF-8 validation, atomic writes. */
#include <check.h>
#include <dirent.h>
#include "check_main.h"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <cJSON.h>
#include "fdpo/core.h"
#include "data/jsonl.h" /* fdpo_json_size */

/* The one check for sizes read from JSON: exact non-negative integers up to 2^53 only. */
START_TEST(json_size_takes_exact_non_negative_integers_only) {
    const char *ok[] = {"0", "7", "4096", "9007199254740992", "1e3"};
    const size_t want[] = {0, 7, 4096, 9007199254740992ULL, 1000};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        cJSON *j = cJSON_Parse(ok[i]);
        size_t v = 12345;
        ck_assert_int_eq(fdpo_json_size(j, &v), 0);
        ck_assert_uint_eq(v, want[i]);
        cJSON_Delete(j);
    }
    const char *bad[] = {"-1", "2.5", "1e16", "6.67e32", "-0.5", "\"3\"", "null", "true", "[1]", "{}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cJSON *j = cJSON_Parse(bad[i]);
        size_t v = 12345;
        ck_assert_msg(fdpo_json_size(j, &v) == -1, "%s accepted", bad[i]);
        ck_assert_uint_eq(v, 12345); /* untouched */
        cJSON_Delete(j);
    }
    ck_assert_int_eq(fdpo_json_size(NULL, &(size_t){0}), -1); /* a missing field */
}
END_TEST

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

/* fdpo_direct_file: bytes fed in odd pieces (a chunk boundary, a tail under one block)
 * arrive intact on a file system that takes O_DIRECT (/tmp, ext4 here) and on one that
 * refuses it (tmpfs /dev/shm: plain writes); nothing is left under the temp name; an
 * unwritable path fails naming it. The reference is the input itself. */
START_TEST(direct_file_writes_exact_bytes) {
    const size_t n = ((size_t)8 << 20) * 2 + 4096 * 3 + 123;   /* two bounce buffers, blocks, a tail */
    unsigned char *data = malloc(n);
    fdpo_rng r;
    fdpo_rng_seed(&r, 11);
    for (size_t i = 0; i < n; i++) data[i] = (unsigned char)fdpo_rng_u64(&r);
    const char *bases[] = {"/tmp/fdpo_test_direct_XXXXXX", "/dev/shm/fdpo_test_direct_XXXXXX"};
    for (int b = 0; b < 2; b++) {
        char dir[64];
        snprintf(dir, sizeof dir, "%s", bases[b]);
        if (!mkdtemp(dir)) continue;   /* no /dev/shm: the ext4 case still ran */
        char *p = fdpo_path_join(dir, "m.bin");
        fdpo_direct_file f;
        ck_assert_int_eq(fdpo_direct_open(&f, p), 0);
        size_t at = 0, piece = 1;
        while (at < n) {   /* pieces 1, 8, 64, ... bytes: unaligned everywhere */
            size_t k = piece < n - at ? piece : n - at;
            ck_assert_int_eq(fdpo_direct_write(&f, data + at, k), 0);
            at += k;
            piece = piece * 8 + 3;
        }
        ck_assert_int_eq(fdpo_direct_commit(&f), 0);
        size_t got = 0;
        char *back = fdpo_read_file(p, &got);
        ck_assert_ptr_nonnull(back);
        ck_assert_uint_eq(got, n);
        ck_assert_int_eq(memcmp(back, data, n), 0);
        free(back);
        ck_assert_int_eq(fdpo_remove_stale_tmp(dir), 0);
        unlink(p); rmdir(dir); free(p);
    }
    fdpo_direct_file f;
    ck_assert_int_eq(fdpo_direct_open(&f, "/nonexistent/dir/m.bin"), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "/nonexistent/dir/m.bin"));
    free(data);
}
END_TEST

/* fdpo_atomic_commit_all: one output whose bytes cannot be written out (its stream in error,
 * as a full disk leaves it) keeps every old file of the set, the one already written included,
 * and leaves no temp file; with all written, all are replaced. The references are the bytes
 * written. */
START_TEST(atomic_commit_all_is_all_or_nothing) {
    char dir[] = "/tmp/fdpo_test_commit_all_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *a = fdpo_path_join(dir, "vocab.json"), *b = fdpo_path_join(dir, "merges.txt");
    ck_assert_int_eq(fdpo_write_file_atomic(a, "old a", 5), 0);
    ck_assert_int_eq(fdpo_write_file_atomic(b, "old b", 5), 0);
    fdpo_atomic_file fa = {0}, fb = {0}, fc = {0}, *set[3] = {&fa, &fc, &fb};   /* fc: never opened */
    ck_assert_int_eq(fdpo_atomic_open(&fa, a), 0);
    ck_assert_int_eq(fdpo_atomic_open(&fb, b), 0);
    fputs("new a", fa.f);
    FILE *good = fb.f;
    fb.f = fopen("/dev/null", "r");   /* a write to it fails and sets the stream's error */
    ck_assert_uint_eq(fwrite("new b", 1, 5, fb.f), 0);
    fclose(good);
    ck_assert_int_eq(fdpo_atomic_commit_all(set, 3), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "merges.txt: write failed"));
    size_t n;
    char *x = fdpo_read_file(a, &n), *y = fdpo_read_file(b, &n);
    ck_assert_str_eq(x, "old a");
    ck_assert_str_eq(y, "old b");
    free(x); free(y);
    ck_assert_ptr_null(fa.path);   /* aborted: temp files removed (the directory holds the two old files only) */
    ck_assert_ptr_null(fb.path);
    DIR *d = opendir(dir);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));) entries += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    ck_assert_int_eq(entries, 2);
    ck_assert_int_eq(fdpo_atomic_open(&fa, a), 0);
    ck_assert_int_eq(fdpo_atomic_open(&fb, b), 0);
    fputs("new a", fa.f);
    fputs("new b", fb.f);
    ck_assert_int_eq(fdpo_atomic_commit_all(set, 3), 0);
    x = fdpo_read_file(a, &n); y = fdpo_read_file(b, &n);
    ck_assert_str_eq(x, "new a");
    ck_assert_str_eq(y, "new b");
    free(x); free(y);
    unlink(a); unlink(b); rmdir(dir); free(a); free(b);
}
END_TEST

/* fdpo_atomic_commit_all, a rename that fails after others succeeded (here the last output's
 * path became a directory): the outputs already renamed are put back, an old file with its
 * old bytes and a file that did not exist removed, and no temp file stays. */
START_TEST(atomic_commit_all_rolls_back_a_failed_rename) {
    char dir[] = "/tmp/fdpo_test_commit_back_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *a = fdpo_path_join(dir, "eval.json"), *fresh = fdpo_path_join(dir, "new.jsonl"),
         *b = fdpo_path_join(dir, "samples.jsonl");
    ck_assert_int_eq(fdpo_write_file_atomic(a, "old a", 5), 0);
    fdpo_atomic_file fa = {0}, fn = {0}, fb = {0}, *set[3] = {&fa, &fn, &fb};
    ck_assert_int_eq(fdpo_atomic_open(&fa, a), 0);
    ck_assert_int_eq(fdpo_atomic_open(&fn, fresh), 0);
    ck_assert_int_eq(fdpo_atomic_open(&fb, b), 0);
    fputs("new a", fa.f); fputs("new n", fn.f); fputs("new b", fb.f);
    ck_assert_int_eq(mkdir(b, 0755), 0);   /* made after the open: only the rename can fail */
    ck_assert_int_eq(fdpo_atomic_commit_all(set, 3), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "samples.jsonl: rename failed: Is a directory"));
    size_t len;
    char *x = fdpo_read_file(a, &len);
    ck_assert_str_eq(x, "old a");
    free(x);
    ck_assert_int_eq(access(fresh, F_OK), -1);
    ck_assert_ptr_null(fa.path);
    ck_assert_ptr_null(fn.path);
    ck_assert_ptr_null(fb.path);
    DIR *d = opendir(dir);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));) entries += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    ck_assert_int_eq(entries, 2);   /* eval.json and the directory */
    rmdir(b); unlink(a); rmdir(dir); free(a); free(fresh); free(b);
}
END_TEST

/* fdpo_remove_stale_tmp_of: only PATH's own temp names of dead writers go */
START_TEST(stale_tmp_of_one_file_only) {
    char dir[] = "/tmp/fdpo_test_tmp_of_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    const long dead = 4194304 + 7;   /* above Linux's pid_max: no such process */
    char mine[128], other[128], prefix_only[128], live[128];
    snprintf(mine, sizeof mine, "%s/s.jsonl.tmp.%ld", dir, dead);
    snprintf(other, sizeof other, "%s/t.jsonl.tmp.%ld", dir, dead);
    snprintf(prefix_only, sizeof prefix_only, "%s/s.jsonl2.tmp.%ld", dir, dead);
    snprintf(live, sizeof live, "%s/s.jsonl.tmp.%ld", dir, (long)getpid());
    const char *all[] = {mine, other, prefix_only, live};
    for (int i = 0; i < 4; i++) ck_assert_int_eq(fdpo_write_file_atomic(all[i], "x", 1), 0);
    char *path = fdpo_path_join(dir, "s.jsonl");
    ck_assert_int_eq(fdpo_remove_stale_tmp_of(path), 1);
    ck_assert(!fdpo_file_exists(mine));
    ck_assert(fdpo_file_exists(other) && fdpo_file_exists(prefix_only) && fdpo_file_exists(live));
    for (int i = 1; i < 4; i++) unlink(all[i]);
    rmdir(dir); free(path);
    /* a file directly under the root: its name was cut with the directory's ("/x" -> "/" and "") */
    char root_tmp[64];
    snprintf(root_tmp, sizeof root_tmp, "/fdpo_test_root_%ld.jsonl.tmp.%ld", (long)getpid(), dead);
    if (fdpo_write_file_atomic(root_tmp, "x", 1) == 0) {   /* / writable (root): the case runs */
        char root_path[64];
        snprintf(root_path, sizeof root_path, "/fdpo_test_root_%ld.jsonl", (long)getpid());
        ck_assert_int_eq(fdpo_remove_stale_tmp_of(root_path), 1);
        ck_assert(!fdpo_file_exists(root_tmp));
    }
}
END_TEST

/* The run lock: a second process is refused with the holder's pid; the holder may take it
 * again; once released (or the holder gone) another process gets it. */
START_TEST(dir_lock_excludes_other_processes) {
    char dir[] = "/tmp/fdpo_test_lock_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *out = fdpo_path_join(dir, "run");
    ck_assert_int_eq(fdpo_dir_lock(out, "--out"), 0);
    ck_assert_int_eq(fdpo_dir_lock(out, "--out"), 0);       /* already ours: no-op */
    ck_assert_int_eq(fdpo_dir_locked(out), 1);
    char want[64];
    snprintf(want, sizeof want, "pid %ld holds", (long)getpid());
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t child = fork();
    if (child == 0) {   /* a second process: must be refused, naming the parent */
        int rc = fdpo_dir_lock(out, "--out");
        const char *msg = fdpo_last_error();
        ssize_t w = write(fds[1], msg, strlen(msg) + 1);
        _exit(rc == -1 && w > 0 ? 0 : 1);
    }
    int status;
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char msg[2048] = "";
    ck_assert_int_gt(read(fds[0], msg, sizeof msg - 1), 0);
    ck_assert_msg(strstr(msg, want) && strstr(msg, "--out") && strstr(msg, "in use by another run"), "%s", msg);
    fdpo_dir_unlock(out);
    ck_assert_int_eq(fdpo_dir_locked(out), 0);
    child = fork();
    if (child == 0) _exit(fdpo_dir_lock(out, "--out") == 0 ? 0 : 1);
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(fds[0]); close(fds[1]);
    char *lock = fdpo_path_join(dir, "run.lock");
    unlink(lock); rmdir(dir); free(lock); free(out);
}
END_TEST

/* An output file's claim: refused to another process while held; released, FILE.lock is
 * gone and the next claim works; a lock file whose name was removed while held (the
 * holder's release) blocks no later claimer; a directory is refused and leaves no lock. */
START_TEST(out_file_claim_and_release) {
    char dir[] = "/tmp/fdpo_test_claim_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *out = fdpo_path_join(dir, "s.jsonl"), *lock = fdpo_path_join(dir, "s.jsonl.lock");
    ck_assert_int_eq(fdpo_out_file_claim(out, "--out"), 0);
    ck_assert_int_eq(fdpo_file_exists(lock), 1);
    int status;
    pid_t child = fork();
    if (child == 0) _exit(fdpo_out_file_claim(out, "--out") == -1 && strstr(fdpo_last_error(), "in use by another run") ? 0 : 1);
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    fdpo_out_file_release(out);
    ck_assert_int_eq(fdpo_file_exists(lock), 0);
    ck_assert_int_eq(fdpo_out_file_claim(out, "--out"), 0);
    ck_assert_int_eq(unlink(lock), 0);   /* the name is gone: another process may create it */
    child = fork();
    if (child == 0) _exit(fdpo_out_file_claim(out, "--out") == 0 ? 0 : 1);   /* gets the new name */
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    fdpo_out_file_release(out);
    /* a directory is refused, and leaves no lock */
    ck_assert_int_eq(fdpo_out_file_claim(dir, "--out"), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "is a directory"));
    char *dlock = fdpo_path_join("/tmp", strrchr(dir, '/') + 1);
    char *dl = fdpo_malloc(strlen(dlock) + 6);
    sprintf(dl, "%s.lock", dlock);
    ck_assert_int_eq(fdpo_file_exists(dl), 0);
    unlink(lock); rmdir(dir);
    free(dl); free(dlock); free(out); free(lock);
}
END_TEST

/* A run directory is named by its own name and is a directory: "." (DIR.lock would be
 * "..lock" inside it), "..", "/" and a regular file are refused before any lock file is made.
 * Released, a lock file that guards nothing (DIR missing or empty) is removed; beside a
 * directory with files it stays. */
START_TEST(dir_lock_names_and_lock_files) {
    char dir[] = "/tmp/fdpo_test_dirlock_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *sub = fdpo_path_join(dir, "sub"), *dot = fdpo_path_join(sub, "."), *file = fdpo_path_join(dir, "f.jsonl");
    ck_assert_int_eq(mkdir(sub, 0777), 0);
    const char *bad[] = {dot, "..", "./", "/"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char want[256];
        snprintf(want, sizeof want, "--out %s: give the directory by its name, not '.', '..' or '/'", bad[i]);
        ck_assert_int_eq(fdpo_dir_lock(bad[i], "--out"), -1);
        ck_assert_msg(strstr(fdpo_last_error(), want) == fdpo_last_error(), "%s", fdpo_last_error());
    }
    /* '' is none of those: the empty path every command names so (hunt of wave 46) */
    ck_assert_int_eq(fdpo_dir_lock("", "--out"), -1);
    ck_assert_str_eq(fdpo_last_error(), "--out: an empty path");
    ck_assert_int_eq(fdpo_write_file_atomic(file, "x", 1), 0);
    ck_assert_int_eq(fdpo_dir_lock(file, "--out"), -1);
    char want[256];
    snprintf(want, sizeof want, "--out %s: not a directory (a run writes its checkpoint directory there); choose "
             "another --out", file);
    ck_assert_str_eq(fdpo_last_error(), want);
    char *sub_lock = fdpo_path_join(dir, "sub.lock"), *file_lock = fdpo_path_join(dir, "f.jsonl.lock");
    ck_assert_int_eq(fdpo_file_exists(sub_lock), 0);
    ck_assert_int_eq(fdpo_file_exists(file_lock), 0);
    /* an empty directory, then one that does not exist: the lock file goes with the lock */
    ck_assert_int_eq(fdpo_dir_lock(sub, "--out"), 0);
    ck_assert_int_eq(fdpo_file_exists(sub_lock), 1);
    fdpo_dir_unlock(sub);
    ck_assert_int_eq(fdpo_file_exists(sub_lock), 0);
    char *gone = fdpo_path_join(dir, "gone"), *gone_lock = fdpo_path_join(dir, "gone.lock");
    ck_assert_int_eq(fdpo_dir_lock(gone, "--out"), 0);
    fdpo_dir_unlock(gone);
    ck_assert_int_eq(fdpo_file_exists(gone_lock), 0);
    /* a directory with a run's files: it stays */
    char *inside = fdpo_path_join(sub, "model.safetensors");
    ck_assert_int_eq(fdpo_write_file_atomic(inside, "x", 1), 0);
    ck_assert_int_eq(fdpo_dir_lock(sub, "--out"), 0);
    fdpo_dir_unlock(sub);
    ck_assert_int_eq(fdpo_file_exists(sub_lock), 1);
    unlink(sub_lock); unlink(inside); unlink(file); rmdir(sub); rmdir(dir);
    free(inside); free(gone); free(gone_lock); free(sub_lock); free(file_lock); free(sub); free(dot); free(file);
}
END_TEST

START_TEST(stale_tmp_files_of_dead_writers_only) {
    char dir[] = "/tmp/fdpo_test_stale_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char name[128];
    const char *kinds[] = {"a.json.tmp.%d", "b.json.tmp.%d", "c.tmp.x%d", "keep.json"};
    int pids[] = {4194311, (int)getppid(), 4194311, 0};   /* dead (> pid_max), alive, not a pid */
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, kinds[i], pids[i]);
        char *p = fdpo_path_join(dir, name);
        ck_assert_int_eq(fdpo_write_file_atomic(p, "x", 1), 0);
        free(p);
    }
    ck_assert_int_eq(fdpo_remove_stale_tmp(dir), 1);
    snprintf(name, sizeof name, kinds[0], pids[0]);
    char *p = fdpo_path_join(dir, name);
    ck_assert_int_eq(fdpo_file_exists(p), 0);
    free(p);
    for (int i = 1; i < 4; i++) {
        snprintf(name, sizeof name, kinds[i], pids[i]);
        p = fdpo_path_join(dir, name);
        ck_assert_int_eq(fdpo_file_exists(p), 1);
        unlink(p); free(p);
    }
    rmdir(dir);
}
END_TEST

START_TEST(strv_and_json_writer) {
    fdpo_strv v = {0};
    char buf[16];
    for (int i = 0; i < 40; i++) { snprintf(buf, sizeof buf, "s%d", i); fdpo_strv_push(&v, buf); }
    ck_assert_uint_eq(v.n, 40);
    ck_assert_str_eq(v.v[0], "s0"); ck_assert_str_eq(v.v[39], "s39");
    fdpo_strv_free(&v);
    ck_assert_uint_eq(v.n, 0);
    char dir[] = "/tmp/fdpo_test_json_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *p = fdpo_path_join(dir, "x.json");
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "a", 1.5);
    ck_assert_int_eq(fdpo_write_json_atomic(p, j, 0), 0);
    cJSON_Delete(j);
    size_t n;
    char *text = fdpo_read_file(p, &n);
    ck_assert_str_eq(text, "{\"a\":1.5}\n");
    free(text); unlink(p); rmdir(dir); free(p);
}
END_TEST

/* "" is no directory: fdpo_mkdir_p read past its 1-byte copy (a heap-buffer-overflow under
 * ASan); an option's "" is refused by its flag, as the CLI says it. */
START_TEST(mkdir_p_and_path_check_refuse_an_empty_path) {
    ck_assert_int_eq(fdpo_mkdir_p(""), -1);
    ck_assert_str_eq(fdpo_last_error(), "cannot create a directory at an empty path");
    char **made = NULL;
    size_t n_made = 0;
    ck_assert_int_eq(fdpo_mkdir_p_made("", &made, &n_made), -1);
    ck_assert_uint_eq(n_made, 0);
    free(made);
    ck_assert_int_eq(fdpo_path_check("--out", ""), -1);
    ck_assert_str_eq(fdpo_last_error(), "--out: an empty path");
    ck_assert_int_eq(fdpo_path_check("--out", NULL), 0);   /* not given */
    ck_assert_int_eq(fdpo_path_check("--out", "o"), 0);
    /* bytes that are not UTF-8: fdpo's JSON files (training_state.json) could not hold the path;
     * a command that records no path takes it */
    ck_assert_int_eq(fdpo_path_check("--out", "o\xff\xfe"), 0);
    ck_assert_int_eq(fdpo_path_record_check("--out", "o\xff\xfe"), -1);
    ck_assert_str_eq(fdpo_last_error(), "--out: the path is not valid UTF-8 (o\\xFF\\xFE; fdpo records paths in its JSON files)");
    ck_assert_int_eq(fdpo_path_record_check("--out", "o\xc3\xa9"), 0);   /* U+00E9 */
    ck_assert_int_eq(fdpo_path_record_check("--out", ""), -1);
    ck_assert_str_eq(fdpo_last_error(), "--out: an empty path");
}
END_TEST

/* fdpo_path_identity, the rule of include/fdpo/core.h: the directory's real path (symlinks
 * in it followed, the missing part taken lexically) joined with the last component, which is
 * not followed. Expected texts are built from the temp directory's own realpath. */
static void expect_identity(const char *path, const char *want) {
    char *got = fdpo_path_identity(path);
    ck_assert_msg(!strcmp(got, want), "%s: got %s, want %s", path, got, want);
    free(got);
}

START_TEST(path_identity_names_the_place_not_the_text) {
    char dir[] = "/tmp/fdpo_pathid_XXXXXX", cwd[4096], want[8192], want2[8192];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    char *real = realpath(dir, NULL);
    ck_assert_ptr_nonnull(real);
    char sub[4096], link[4096];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    snprintf(link, sizeof link, "%s/ln", dir);
    ck_assert_int_eq(mkdir(sub, 0777), 0);
    ck_assert_int_eq(symlink("sub", link), 0);
    ck_assert_int_eq(chdir(dir), 0);
    snprintf(want, sizeof want, "%s/x", real);
    const char *same[] = {"x", "./x", "x/", "x//", ".//x", "sub/../x", "sub/./../x", "missing/../x", "ln/../x"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) expect_identity(same[i], want);
    snprintf(want2, sizeof want2, "%s/x", dir);
    expect_identity(want2, want2);                 /* absolute: as written (ranks on other nodes) */
    expect_identity("//a/./b//c/.", "/a/b/c");
    expect_identity("/a/../b/", "/a/../b");        /* '..' kept: a symlink may lead there */
    expect_identity("/a/ln", "/a/ln");
    snprintf(want, sizeof want, "%s/sub/x", real);
    expect_identity("ln/x", want);                 /* a symlinked directory: followed */
    expect_identity("sub/x", want);
    snprintf(want, sizeof want, "%s/ln", real);
    expect_identity("ln", want);                   /* the last component: not followed */
    snprintf(want, sizeof want, "%s/a/b/c", real);
    expect_identity("a/b/c", want);                /* nothing of it there yet */
    expect_identity("a/./b//c/", want);
    snprintf(want, sizeof want, "%s/a/c", real);
    expect_identity("a/b/../c", want);
    expect_identity(".", real);                    /* '.' and '..' name directories */
    expect_identity("sub/..", real);
    expect_identity("a/b/../..", real);
    expect_identity("/", "/");
    expect_identity("//", "/");
    ck_assert_int_eq(chdir(sub), 0);
    snprintf(want, sizeof want, "%s/sub/x", real);
    expect_identity("x", want);                    /* the same text elsewhere: another place */
    snprintf(want, sizeof want, "%s/x", real);
    expect_identity("../x", want);
    ck_assert_int_eq(chdir(cwd), 0);
    ck_assert_int_eq(unlink(link), 0);
    ck_assert_int_eq(rmdir(sub), 0);
    ck_assert_int_eq(rmdir(dir), 0);
    free(real);
}
END_TEST

/* Under AddressSanitizer a failed malloc must return NULL (as libc's does) for the test below. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

/* Out of memory goes to the installed handler (here it jumps back), never to exit(). */
static jmp_buf oom_jump;
static size_t oom_bytes;
static void oom_handler(size_t bytes, void *user) { (void)user; oom_bytes = bytes; longjmp(oom_jump, 1); }
START_TEST(oom_calls_the_handler) {
    fdpo_oom_set(oom_handler, NULL);
    volatile size_t huge = SIZE_MAX / 2;
    if (setjmp(oom_jump) == 0) {
        void *p = fdpo_malloc(huge);
        free(p);
        ck_abort_msg("allocation of SIZE_MAX/2 bytes succeeded");
    }
    ck_assert_uint_eq(oom_bytes, SIZE_MAX / 2);
    fdpo_oom_set(NULL, NULL);
}
END_TEST

/* ARCHITECTURE.md: an embedding program may longjmp out of the handler, as often as memory
 * runs out. The handler's "in the handler" flag stayed set after the first jump, so the
 * second out of memory in the thread logged and abort()ed without calling it. Here from
 * the same stack depth, from deeper and shallower ones, and from inside the handler (a
 * handler that allocates: called again, nested). */
static int oom_calls, oom_nest_once;
static void oom_counting_handler(size_t bytes, void *user) {
    (void)user;
    oom_bytes = bytes;
    if (++oom_calls == 1 && oom_nest_once) {   /* the handler itself runs out: called again inside */
        volatile size_t huge = SIZE_MAX / 4;
        free(fdpo_malloc(huge));
        ck_abort_msg("nested allocation of SIZE_MAX/4 bytes succeeded");
    }
    longjmp(oom_jump, 1);
}
__attribute__((noinline)) static void alloc_huge_at_depth(int depth) {
    volatile size_t huge = SIZE_MAX / 2;
    if (depth > 0) alloc_huge_at_depth(depth - 1);
    else free(fdpo_malloc(huge));
    __asm__ volatile("" ::: "memory");   /* not a tail call: each level keeps its frame */
}
START_TEST(oom_handler_that_longjmps_is_called_every_time) {
    fdpo_oom_set(oom_counting_handler, NULL);
    oom_calls = 0; oom_nest_once = 0;
    const int depths[] = {0, 0, 0, 8, 30, 2, 30, 0};
    volatile int recovered = 0;
    for (volatile size_t i = 0; i < sizeof depths / sizeof *depths; i++) {
        if (setjmp(oom_jump) == 0) {
            alloc_huge_at_depth(depths[i]);
            ck_abort_msg("allocation of SIZE_MAX/2 bytes succeeded");
        }
        recovered++;
        ck_assert_int_eq(oom_calls, (int)i + 1);
        ck_assert_uint_eq(oom_bytes, SIZE_MAX / 2);
    }
    ck_assert_int_eq(recovered, 8);
    /* an out of memory inside the handler reaches it again, and after the jump out of both
     * levels the next one still does */
    oom_calls = 0; oom_nest_once = 1;
    if (setjmp(oom_jump) == 0) alloc_huge_at_depth(3);
    ck_assert_int_eq(oom_calls, 2);
    ck_assert_uint_eq(oom_bytes, SIZE_MAX / 4);
    oom_nest_once = 0;
    for (volatile int k = 0; k < 3; k++)
        if (setjmp(oom_jump) == 0) alloc_huge_at_depth(k);
    ck_assert_int_eq(oom_calls, 5);
    ck_assert_uint_eq(oom_bytes, SIZE_MAX / 2);
    fdpo_oom_set(NULL, NULL);
}
END_TEST

/* fdpo_calloc of 2^33 x 2^31 bytes (2^64: the product wraps to 0 in size_t): the handler is
 * told SIZE_MAX, not 0, and without a handler the log names both factors before abort(). */
static int oom_log_fd = -1;
static void oom_log_to_pipe(fdpo_log_level level, const char *msg, void *user) {
    (void)user;
    if (level == FDPO_LOG_ERROR && write(oom_log_fd, msg, strlen(msg)) < 0) _exit(3);
}
START_TEST(calloc_overflow_reports_the_true_size) {
    volatile size_t count = (size_t)1 << 33, size = (size_t)1 << 31;
    fdpo_oom_set(oom_handler, NULL);
    oom_bytes = 0;
    if (setjmp(oom_jump) == 0) {
        free(fdpo_calloc(count, size));
        ck_abort_msg("calloc of 2^64 bytes succeeded");
    }
    ck_assert_uint_eq(oom_bytes, SIZE_MAX);
    fdpo_oom_set(NULL, NULL);
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        oom_log_fd = fds[1];
        fdpo_log_set(oom_log_to_pipe, NULL);
        signal(SIGABRT, SIG_DFL);
        free(fdpo_calloc(count, size));
        _exit(0);
    }
    close(fds[1]);
    char msg[256] = {0};
    size_t got = 0;
    ssize_t r;
    while (got < sizeof msg - 1 && (r = read(fds[0], msg + got, sizeof msg - 1 - got)) > 0) got += (size_t)r;
    close(fds[0]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    ck_assert_str_eq(msg, "out of memory allocating 8589934592 x 2147483648 bytes (more than SIZE_MAX)");
}
END_TEST

/* The VmFlags line of the /proc/self/smaps mapping that holds p ("" when not found): "hg"
 * there is MADV_HUGEPAGE, "nh" MADV_NOHUGEPAGE (proc(5)) */
static void smaps_flags(const void *p, char *flags, size_t cap) {
    flags[0] = 0;
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return;
    char line[512];
    int inside = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
            inside = (uintptr_t)p >= lo && (uintptr_t)p < hi;
        else if (inside && !strncmp(line, "VmFlags:", 8)) { snprintf(flags, cap, "%.200s", line + 8); break; }
    }
    fclose(f);
}

START_TEST(alloc_large_aligned_zeroed_advised) {
    size_t sizes[] = {1, 4096, (3u << 20) + 5, (size_t)8 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *p = fdpo_alloc_large(sizes[i]);
        ck_assert_ptr_nonnull(p);
        ck_assert_uint_eq((uintptr_t)p % ((uintptr_t)2 << 20), 0);
        size_t nonzero = 0;
        for (size_t k = 0; k < sizes[i]; k++) nonzero += p[k] != 0;
        ck_assert_msg(nonzero == 0, "%zu of %zu bytes not zero", nonzero, sizes[i]);
        memset(p, 0xab, sizes[i]); /* all of it writable; the next one must be zero again */
        fdpo_free_large(p);
    }
#ifdef __linux__
    /* FDPO_HUGEPAGES=1 or unset (the default): MADV_HUGEPAGE ("hg"), =0: MADV_NOHUGEPAGE
     * ("nh"), =system: neither */
    const char *values[] = {"1", "0", NULL, "system"};
    const char *want[] = {" hg", " nh", " hg", NULL}, *unwanted[] = {" nh", " hg", " nh", NULL};
    const int advice[] = {1, 0, 1, -1};
    for (int i = 0; i < 4; i++) {
        char flags[256];
        if (values[i]) setenv("FDPO_HUGEPAGES", values[i], 1);
        else unsetenv("FDPO_HUGEPAGES");
        ck_assert_int_eq(fdpo_hugepages_advice(), advice[i]);
        /* one rule for every large buffer: the decoder's (alloc), parameters, gradients and
         * moments (malloc), activations (realloc, and the part a growth adds) */
        void *bufs[3] = {fdpo_alloc_large((size_t)4 << 20), fdpo_malloc_large((size_t)4 << 20),
                         fdpo_realloc_large(NULL, (size_t)4 << 20)};
        bufs[2] = fdpo_realloc_large(bufs[2], (size_t)12 << 20);
        for (int b = 0; b < 4; b++) {
            void *p = b < 3 ? bufs[b] : (char *)bufs[2] + ((size_t)8 << 20); /* b = 3: the grown part */
            smaps_flags(p, flags, sizeof flags);
            ck_assert_msg(flags[0], "no smaps entry for buffer %d", b);
            if (want[i])
                ck_assert_msg(strstr(flags, want[i]) && !strstr(flags, unwanted[i]), "FDPO_HUGEPAGES=%s, buffer %d:%s",
                              values[i], b, flags);
            else
                ck_assert_msg(!strstr(flags, " hg") && !strstr(flags, " nh"), "FDPO_HUGEPAGES=system, buffer %d:%s", b, flags);
        }
        for (int b = 0; b < 3; b++) fdpo_free_large(bufs[b]);
    }
    unsetenv("FDPO_HUGEPAGES");
#endif
}
END_TEST

START_TEST(alloc_large_failure_is_an_error) {
    fdpo_free_large(NULL);
    fdpo_clear_error();
    ck_assert_ptr_null(fdpo_alloc_large(SIZE_MAX - 10)); /* past the address space: caught before mmap */
    ck_assert_msg(strstr(fdpo_last_error(), "cannot allocate") != NULL, "%s", fdpo_last_error());
    fdpo_clear_error();
    ck_assert_ptr_null(fdpo_alloc_large(SIZE_MAX / 4)); /* 4 EiB: the kernel refuses */
    ck_assert_msg(strstr(fdpo_last_error(), "cannot allocate 4611686018427387903 bytes") != NULL, "%s",
                  fdpo_last_error());
}
END_TEST

/* fdpo_realloc_large: contents kept, growth zeroed, in place while the reservation holds
 * (the address is the same, so the pages touched before stay mapped), moved beyond it */
START_TEST(realloc_large_grows_in_place) {
    unsigned char *p = fdpo_realloc_large(NULL, 1000);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq((uintptr_t)p % ((uintptr_t)2 << 20), 0);
    for (size_t k = 0; k < 1000; k++) ck_assert_uint_eq(p[k], 0);
    for (size_t k = 0; k < 1000; k++) p[k] = (unsigned char)(k * 7 + 1);
    ck_assert_ptr_eq(fdpo_realloc_large(p, 500), p); /* never shrinks */
    size_t big = (size_t)100 << 20;                    /* within the first 256 MiB reserved */
    unsigned char *q = fdpo_realloc_large(p, big);
    ck_assert_ptr_eq(q, p);
    for (size_t k = 0; k < 1000; k++) ck_assert_uint_eq(q[k], (unsigned char)(k * 7 + 1));
    size_t nonzero = 0;
    for (size_t k = 1000; k < big; k += 4093) nonzero += q[k] != 0;
    ck_assert_uint_eq(nonzero, 0);
    q[big - 1] = 5;
    size_t bigger = (size_t)300 << 20; /* past it: a new reservation, the contents copied */
    unsigned char *r = fdpo_realloc_large(q, bigger);
    ck_assert_ptr_nonnull(r);
    for (size_t k = 0; k < 1000; k++) ck_assert_uint_eq(r[k], (unsigned char)(k * 7 + 1));
    ck_assert_uint_eq(r[big - 1], 5);
    ck_assert_uint_eq(r[bigger - 1], 0);
    r[bigger - 1] = 9;
    ck_assert_ptr_eq(fdpo_realloc_large(r, 2 * bigger), r); /* and in place again in the new one */
    ck_assert_uint_eq(r[bigger - 1], 9);
    r[2 * bigger - 1] = 1;
    fdpo_free_large(r);
}
END_TEST

/* fdpo_env_switch: 0/1 read, anything else the default with a warning; the caller's pending
 * error message survives it (the warning went through fdpo_error and replaced it) */
START_TEST(env_switch_warns_and_keeps_the_pending_error) {
    setenv("FDPO_TEST_SWITCH", "1", 1);
    ck_assert_int_eq(fdpo_env_switch("FDPO_TEST_SWITCH", 0), 1);
    setenv("FDPO_TEST_SWITCH", "yes", 1);
    fdpo_error("the caller's error");
    ck_assert_int_eq(fdpo_env_switch("FDPO_TEST_SWITCH", 0), 0);
    ck_assert_str_eq(fdpo_last_error(), "the caller's error");
    fdpo_clear_error();
    ck_assert_int_eq(fdpo_env_switch("FDPO_TEST_SWITCH", 1), 1);
    ck_assert_str_eq(fdpo_last_error(), "unknown error");
    long v = 0;
    setenv("FDPO_TEST_SWITCH", "12x", 1);
    ck_assert_int_eq(fdpo_env_long("FDPO_TEST_SWITCH", 5, 1, 100, &v), -1);
    ck_assert_str_eq(fdpo_last_error(), "FDPO_TEST_SWITCH=12x: must be an integer in [1, 100]");
    unsetenv("FDPO_TEST_SWITCH");
    ck_assert_int_eq(fdpo_env_long("FDPO_TEST_SWITCH", 5, 1, 100, &v), 0);
    ck_assert_int_eq(v, 5);
    /* a named choice: its index; anything else the default, warned once */
    static const char *const choices[] = {"0", "1", "system", NULL};
    int warned = 0;
    ck_assert_int_eq(fdpo_env_choice("FDPO_TEST_SWITCH", choices, 1, &warned), 1);
    setenv("FDPO_TEST_SWITCH", "system", 1);
    ck_assert_int_eq(fdpo_env_choice("FDPO_TEST_SWITCH", choices, 1, &warned), 2);
    ck_assert_int_eq(warned, 0);
    setenv("FDPO_TEST_SWITCH", "off", 1);
    ck_assert_int_eq(fdpo_env_choice("FDPO_TEST_SWITCH", choices, 1, &warned), 1);
    ck_assert_int_eq(warned, 1);
    unsetenv("FDPO_TEST_SWITCH");
    /* FDPO_HUGEPAGES=off meant on without a word: now the default (on) with a warning */
    setenv("FDPO_HUGEPAGES", "off", 1);
    ck_assert_int_eq(fdpo_hugepages_advice(), 1);
    setenv("FDPO_HUGEPAGES", "0", 1);
    ck_assert_int_eq(fdpo_hugepages_advice(), 0);
    setenv("FDPO_HUGEPAGES", "system", 1);
    ck_assert_int_eq(fdpo_hugepages_advice(), -1);
    unsetenv("FDPO_HUGEPAGES");
    ck_assert_int_eq(fdpo_hugepages_advice(), 1);
}
END_TEST

/* fdpo_json_add_whole: every whole number reads back from cJSON's text as itself (the digits
 * from 10^15: cJSON wrote 2^53 - 1 as 9.00719925474099e+15) */
START_TEST(json_whole_numbers_read_back_exactly) {
    const long long v[] = {0, -7, 999999999999999LL, -999999999999999LL, 1000000000000000LL, 9007199254740991LL,
                           9007199254740993LL, 12345678901234567LL, INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        cJSON *o = cJSON_CreateObject();
        fdpo_json_add_whole(o, "seed", v[i]);
        char *text = cJSON_PrintUnformatted(o);
        cJSON *back = cJSON_Parse(text), *x = cJSON_GetObjectItemCaseSensitive(back, "seed");
        const char *digits = cJSON_IsString(x) ? x->valuestring : strchr(text, ':') + 1;
        ck_assert_msg(strtoll(digits, NULL, 10) == v[i], "%lld written as %s", v[i], text);
        ck_assert_int_eq(cJSON_IsNumber(x), v[i] > -1000000000000000LL && v[i] < 1000000000000000LL);
        cJSON_free(text); cJSON_Delete(back); cJSON_Delete(o);
    }
}
END_TEST

/* fdpo_parse_number: the rule of flags, lists, lexicons and --frontier's parts */
START_TEST(parse_number_decimal_finite_not_rounding_to_0) {
    double d = -1;
    long l = -1;
    ck_assert_int_eq(fdpo_parse_number("--x", "1e-320", &d), 0);   /* a subnormal is a number */
    ck_assert(d > 0 && d < 1e-319);
    ck_assert_int_eq(fdpo_parse_number("--x", "-2.5", &d), 0);
    ck_assert_double_eq(d, -2.5);
    ck_assert_int_ne(fdpo_parse_number("--x", "0x10", &d), 0);
    ck_assert_str_eq(fdpo_last_error(), "--x: '0x10' is not a decimal number");
    ck_assert_int_ne(fdpo_parse_number("--x", " 1", &d), 0);
    ck_assert_str_eq(fdpo_last_error(), "--x: ' 1' is not a decimal number");
    ck_assert_int_ne(fdpo_parse_number("--x", "1e999", &d), 0);
    ck_assert_str_eq(fdpo_last_error(), "--x: '1e999' is not a finite number");
    ck_assert_int_ne(fdpo_parse_number("--x", "1e-400", &d), 0);
    ck_assert_str_eq(fdpo_last_error(), "--x: '1e-400' is out of range (it rounds to 0: the smallest double is 4.9e-324)");
    ck_assert_double_eq(d, -2.5);   /* untouched on an error */
    ck_assert_int_eq(fdpo_parse_long("--k", "-12", &l), 0);
    ck_assert_int_eq(l, -12);
    ck_assert_int_ne(fdpo_parse_long("--k", "0x3", &l), 0);
    ck_assert_str_eq(fdpo_last_error(), "--k: '0x3' is not a decimal number");
    ck_assert_int_ne(fdpo_parse_long("--k", "3.5", &l), 0);
    ck_assert_str_eq(fdpo_last_error(), "--k: '3.5' is not an integer");
}
END_TEST

/* core.h: fdpo_set_threads(n <= 0) sets "the default count": the count the process started
 * with, not the previous call's */
START_TEST(set_threads_zero_restores_the_default_count) {
    const int start = fdpo_get_threads();
    fdpo_set_threads(start + 1);
    ck_assert_int_eq(fdpo_get_threads(), start + 1);
    fdpo_set_threads(0);
    ck_assert_int_eq(fdpo_get_threads(), start);
    fdpo_set_threads(start + 1);
    fdpo_set_threads(-1);
    ck_assert_int_eq(fdpo_get_threads(), start);
}
END_TEST

int main(void) {
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, rng_reference_values);
    tcase_add_test(tc, rng_normal_moments);
    tcase_add_test(tc, utf8_validation);
    tcase_add_test(tc, atomic_write_replaces);
    tcase_add_test(tc, direct_file_writes_exact_bytes);
    tcase_add_test(tc, atomic_commit_all_is_all_or_nothing);
    tcase_add_test(tc, atomic_commit_all_rolls_back_a_failed_rename);
    tcase_add_test(tc, stale_tmp_of_one_file_only);
    tcase_add_test(tc, dir_lock_excludes_other_processes);
    tcase_add_test(tc, out_file_claim_and_release);
    tcase_add_test(tc, dir_lock_names_and_lock_files);
    tcase_add_test(tc, stale_tmp_files_of_dead_writers_only);
    tcase_add_test(tc, strv_and_json_writer);
    tcase_add_test(tc, oom_calls_the_handler);
    tcase_add_test(tc, oom_handler_that_longjmps_is_called_every_time);
    tcase_add_test(tc, calloc_overflow_reports_the_true_size);
    tcase_add_test(tc, alloc_large_aligned_zeroed_advised);
    tcase_add_test(tc, alloc_large_failure_is_an_error);
    tcase_add_test(tc, realloc_large_grows_in_place);
    tcase_add_test(tc, json_size_takes_exact_non_negative_integers_only);
    tcase_add_test(tc, json_whole_numbers_read_back_exactly);
    tcase_add_test(tc, parse_number_decimal_finite_not_rounding_to_0);
    tcase_add_test(tc, env_switch_warns_and_keeps_the_pending_error);
    tcase_add_test(tc, mkdir_p_and_path_check_refuse_an_empty_path);
    tcase_add_test(tc, path_identity_names_the_place_not_the_text);
    tcase_add_test(tc, set_threads_zero_restores_the_default_count);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
