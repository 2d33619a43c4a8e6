/* Pretraining text -> documents -> train/val streams -> seq_len + 1 token windows. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/data.h"
#include "data/jsonl.h"

void fdpo_lm_data_free(fdpo_lm_data *d) {
    if (!d) return;
    free(d->start); free(d->len); free(d->tokens); free(d->weights);
    memset(d, 0, sizeof *d);
}

double fdpo_lm_data_seq_weight(const fdpo_lm_data *d, size_t i) {
    if (d->len[i] < 2) return 0;
    if (!d->weights) return (double)(d->len[i] - 1);
    double w = 0;
    for (size_t j = 1; j < d->len[i]; j++) w += d->weights[d->start[i] + j];
    return w;
}

uint64_t fdpo_lm_data_hash(const fdpo_lm_data *d) {
    uint64_t h = FDPO_HASH_INIT;
    h = fdpo_hash64(h, &d->n_seq, sizeof d->n_seq);
    for (size_t i = 0; i < d->n_seq; i++) {
        h = fdpo_hash64(h, &d->len[i], sizeof d->len[i]);
        h = fdpo_hash64(h, d->tokens + d->start[i], d->len[i] * sizeof(int32_t));
        if (d->weights) h = fdpo_hash64(h, d->weights + d->start[i], d->len[i] * sizeof(float));
    }
    return h;
}

void fdpo_data_split(size_t n, double val_fraction, uint64_t seed, unsigned char *is_val) {
    memset(is_val, 0, n);
    if (!(val_fraction > 0) || n < 2) return;
    size_t k = (size_t)floor(val_fraction * (double)n + 0.5);
    if (k < 1) k = 1;
    if (k > n - 1) k = n - 1;
    /* its own stream, so the split does not depend on (or disturb) the data-order RNG */
    fdpo_rng rng;
    fdpo_rng_seed(&rng, seed ^ 0x76616c5f73706c74ULL);
    size_t *idx = fdpo_malloc(n * sizeof *idx);
    for (size_t i = 0; i < n; i++) idx[i] = i;
    fdpo_rng_shuffle(&rng, idx, n);
    for (size_t i = 0; i < k; i++) is_val[idx[i]] = 1;
    free(idx);
}

/* stream[0..n) -> windows of seq_len + 1 tokens overlapping by one. Takes the stream. */
static void cut_windows(int32_t *stream, size_t n, size_t seq_len, size_t n_docs, fdpo_lm_data *d) {
    memset(d, 0, sizeof *d);
    d->tokens = stream; d->n_tokens = n; d->n_docs = n_docs;
    size_t cap = n > 1 ? (n - 2) / seq_len + 1 : 0;
    d->start = fdpo_malloc((cap ? cap : 1) * sizeof *d->start);
    d->len = fdpo_malloc((cap ? cap : 1) * sizeof *d->len);
    for (size_t s = 0; s + 1 < n; s += seq_len) {
        size_t len = n - s < seq_len + 1 ? n - s : seq_len + 1;
        d->start[d->n_seq] = s; d->len[d->n_seq] = len; d->n_seq++;
    }
}

typedef struct { size_t begin, end; } span; /* a document in the token buffer, EOT excluded */

int fdpo_text_load(const char *const *paths, size_t n_paths, const fdpo_tokenizer *tok,
                   size_t seq_len, double val_fraction, uint64_t seed,
                   fdpo_lm_data *train, fdpo_lm_data *val) {
    memset(train, 0, sizeof *train);
    memset(val, 0, sizeof *val);
    if (n_paths == 0) return fdpo_error("no input files (give one or more text files)");
    if (seq_len < 1) return fdpo_error("--seq-len must be >= 1");
    /* the eos: generation stops there, so a document must end there (an Instruct tokenizer's
     * <|im_end|>, not its <|endoftext|>, which is then a token inside the text) */
    const int32_t eot = fdpo_tokenizer_eot(tok);
    int32_t *all = NULL; size_t n_all = 0, cap_all = 0;
    span *docs = NULL; size_t n_docs = 0, cap_docs = 0;
    for (size_t f = 0; f < n_paths; f++) {
        size_t len;
        char *text = fdpo_read_file(paths[f], &len);
        if (!text) goto fail;
        const size_t bom = fdpo_jsonl_bom(text, len);   /* a byte order mark is not text (as every reader) */
        if (len == bom) { free(text); fdpo_error("%s: empty file (nothing to train on)", paths[f]); goto fail; }
        size_t bad = fdpo_utf8_first_invalid(text, len);
        if (bad < len) {
            size_t line = 1;
            for (size_t i = 0; i < bad; i++) line += text[i] == '\n';
            fdpo_error("%s: invalid UTF-8 at byte offset %zu (line %zu): byte 0x%02x",
                       paths[f], bad, line, (unsigned char)text[bad]);
            free(text); goto fail;
        }
        int32_t *ids; size_t n_ids;
        int rc = fdpo_tokenizer_encode(tok, text + bom, len - bom, 1, &ids, &n_ids);
        free(text);
        if (rc) { fdpo_error_context("%s", paths[f]); goto fail; }
        if (n_all + n_ids > cap_all) {
            cap_all = (n_all + n_ids) * 2;
            all = fdpo_realloc(all, cap_all * sizeof *all);
        }
        /* split at <|endoftext|>; empty pieces (EOT at the start/end, doubled) are skipped */
        size_t b = 0;
        const size_t docs_before = n_docs;
        for (size_t i = 0; i <= n_ids; i++) {
            if (i == n_ids || ids[i] == eot) {
                if (i > b) {
                    if (n_docs == cap_docs) { cap_docs = cap_docs ? cap_docs * 2 : 16; docs = fdpo_realloc(docs, cap_docs * sizeof *docs); }
                    docs[n_docs].begin = n_all + b; docs[n_docs].end = n_all + i; n_docs++;
                }
                b = i + 1;
            }
        }
        memcpy(all + n_all, ids, n_ids * sizeof *ids);
        n_all += n_ids;
        free(ids);
        /* each file, as an empty one is: beside other files it was passed over without a word */
        if (n_docs == docs_before) { fdpo_error("%s: no text besides <|endoftext|> markers", paths[f]); goto fail; }
    }
    unsigned char *is_val = fdpo_malloc(n_docs);
    fdpo_data_split(n_docs, val_fraction, seed, is_val);
    for (int part = 0; part < 2; part++) {
        size_t n = 0, nd = 0;
        for (size_t d = 0; d < n_docs; d++) if (is_val[d] == part) { n += docs[d].end - docs[d].begin + 1; nd++; }
        int32_t *stream = fdpo_malloc((n ? n : 1) * sizeof *stream);
        size_t k = 0;
        for (size_t d = 0; d < n_docs; d++) {
            if (is_val[d] != part) continue;
            memcpy(stream + k, all + docs[d].begin, (docs[d].end - docs[d].begin) * sizeof *stream);
            k += docs[d].end - docs[d].begin;
            stream[k++] = eot;
        }
        cut_windows(stream, n, seq_len, nd, part ? val : train);
    }
    free(is_val); free(all); free(docs);
    if (train->n_seq == 0) {
        fdpo_lm_data_free(train); fdpo_lm_data_free(val);
        return fdpo_error("%s: too little text for one training sequence", paths[0]);
    }
    return 0;
fail:
    free(all); free(docs);
    return -1;
}
