/* Tokenizer harness subcommands (tests/py/test_bpe.py, test_tokenizer_json.py):
 *   tok-info DIR            {"vocab_size", "eos", "bos", "pad", "special": [ids], "chat": NAME}
 *   tok-save SRC DST        load SRC (a directory or "byte"), save it into DST
 *   tok-threads DIR FILE N  encode FILE's lines from N OpenMP threads at once (each line
 *                           several times, so threads share the word caches) and print
 *                           the ids of each line once, in order, as `fdpo tokenize --lines` */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/chat.h"
#include "fdpo/tokenizer.h"
#include "harness.h"

static fdpo_tokenizer *load(const char *src) {
    return strcmp(src, "byte") == 0 ? fdpo_tokenizer_byte() : fdpo_tokenizer_load_dir(src);
}

static int info(const char *dir) {
    fdpo_tokenizer *t = load(dir);
    if (!t) return -1;
    fdpo_chat chat;
    int have_chat = fdpo_chat_for(t, &chat) == 0;
    printf("{\"vocab_size\": %zu, \"eos\": %d, \"bos\": %d, \"pad\": %d, \"chat\": \"%s\", \"special\": [",
           fdpo_tokenizer_vocab_size(t), fdpo_tokenizer_eot(t), fdpo_tokenizer_bos(t), fdpo_tokenizer_pad(t),
           have_chat ? fdpo_chat_name(chat.kind) : "unknown");
    int first = 1;
    for (size_t i = 0; i < fdpo_tokenizer_vocab_size(t); i++)
        if (fdpo_tokenizer_is_special(t, (int32_t)i)) { printf(first ? "%zu" : ", %zu", i); first = 0; }
    printf("]}\n");
    if (have_chat) fdpo_chat_free(&chat);
    fdpo_tokenizer_free(t);
    return 0;
}

int h_tokenizer(int argc, char **argv) {
    if (!strcmp(argv[0], "tok-info")) {
        if (argc != 2) return fdpo_error("usage: tok-info DIR");
        return info(argv[1]);
    }
    if (!strcmp(argv[0], "tok-save")) {
        if (argc != 3) return fdpo_error("usage: tok-save SRC DST");
        fdpo_tokenizer *t = load(argv[1]);
        if (!t) return -1;
        int rc = fdpo_tokenizer_save_dir(t, argv[2]);
        fdpo_tokenizer_free(t);
        return rc;
    }
    if (argc != 4) return fdpo_error("usage: tok-threads DIR FILE N");
    fdpo_tokenizer *t = load(argv[1]);
    if (!t) return -1;
    size_t n;
    char *text = fdpo_read_file(argv[2], &n);
    if (!text) { fdpo_tokenizer_free(t); return -1; }
    size_t n_lines = 0, cap = 64;
    const char **start = fdpo_malloc(cap * sizeof *start);
    size_t *len = fdpo_malloc(cap * sizeof *len);
    for (char *p = text, *end = text + n; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        if (n_lines == cap) { cap *= 2; start = fdpo_realloc(start, cap * sizeof *start); len = fdpo_realloc(len, cap * sizeof *len); }
        start[n_lines] = p; len[n_lines] = (size_t)(le - p); n_lines++;
        p = le + 1;
    }
    int32_t **ids = fdpo_calloc(n_lines ? n_lines : 1, sizeof *ids);
    size_t *n_ids = fdpo_calloc(n_lines ? n_lines : 1, sizeof *n_ids);
    int bad = 0, threads = atoi(argv[3]);
    long total = 4 * (long)n_lines;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(+:bad)
    for (long k = 0; k < total; k++) {
        size_t i = (size_t)(k % (long)(n_lines ? n_lines : 1));
        int32_t *v; size_t m;
        if (fdpo_tokenizer_encode(t, start[i], len[i], 0, &v, &m)) { bad++; continue; }
        if (k < (long)n_lines) { ids[i] = v; n_ids[i] = m; continue; }
        /* repeats must agree with the first encoding; wait for it by re-encoding later */
        free(v);
    }
    /* second pass: compare repeats with the first results (all threads done) */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(+:bad)
    for (long k = 0; k < total; k++) {
        size_t i = (size_t)(k % (long)(n_lines ? n_lines : 1));
        int32_t *v; size_t m;
        if (fdpo_tokenizer_encode(t, start[i], len[i], 0, &v, &m)) { bad++; continue; }
        if (m != n_ids[i] || (m && memcmp(v, ids[i], m * sizeof *v) != 0)) bad++;
        free(v);
    }
    for (size_t i = 0; i < n_lines; i++) {
        for (size_t j = 0; j < n_ids[i]; j++) printf(j ? " %d" : "%d", ids[i][j]);
        printf("\n");
        free(ids[i]);
    }
    free(ids); free(n_ids); free(start); free(len); free(text);
    fdpo_tokenizer_free(t);
    if (bad) return fdpo_error("%d encodings differed between threads", bad);
    return 0;
}
