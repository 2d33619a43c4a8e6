/* Byte-level BPE training with GPT-2's pre-tokenisation (docs/tokenizer.md#training).
 *
 *   texts --(split at "<|endoftext|>")--> documents --(GPT-2 regex, PCRE2)--> words
 *         --(count distinct words)--> word table --(repeat: merge the best pair)--> merges
 *
 * Vocabulary: ids 0..255 are the 256 byte symbols in GPT-2's order (the printable bytes
 * '!'..'~', 0xA1..0xAC, 0xAE..0xFF, then the other 68), so byte tokens carry GPT-2's ids;
 * ids 256.. are the merges in the order learnt; the last id is "<|endoftext|>".
 * Bytes of ill-formed UTF-8 are left out of the words, as the encoder makes them byte tokens.
 *
 * Each step merges the pair with the highest count (summed over words, weighted by word
 * frequency); ties go to the pair whose (left token bytes, right token bytes) is smallest
 * in bytewise lexicographic order, so the result depends on the corpus alone. Pairs are
 * counted per occurrence, and merging is left to right within a word ("a a a" -> "aa a"),
 * as the encoder applies merges. The pair table is updated incrementally: only words that
 * contain the merged pair are recounted; the best pair comes from a lazy max-heap. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include "fdpo/core.h"
#include "fdpo/tokenizer.h"
#include "text/tokenizer_internal.h"

#define EOT_TEXT "<|endoftext|>"

typedef struct {
    int32_t *sym; size_t n; uint64_t freq;
    char *bytes; size_t len; uint64_t hash;   /* the word itself: the key of the word index */
} bt_word;

typedef struct {
    uint64_t key;              /* (left << 32) | right */
    int64_t count;
    size_t *words; size_t n_words, cap_words; /* words that contained the pair when it was counted (may be stale) */
    size_t stamp;              /* round in which it was last queued for a heap push */
} bt_pair;

typedef struct { int64_t count; uint64_t key; } heap_item;

typedef struct {
    bt_word *words; size_t n_words, cap_words;
    fdpo_itab word_index;      /* word bytes -> index into words (the shared index table) */
    bt_pair *pairs; size_t n_pairs, cap_pairs;
    fdpo_itab pair_index;      /* pair key -> index into pairs */
    heap_item *heap; size_t n_heap, cap_heap;
    unsigned char **tok; size_t *tok_len; size_t n_tok, cap_tok;
    int32_t (*merges)[2]; size_t n_merges;
    size_t *touched; size_t n_touched, cap_touched; /* pairs (indices) whose count changed this round */
    size_t round;
} bt_state;

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

/* -1 if pair x should be merged before pair y at equal count (smaller bytes first) */
static int pair_bytes_cmp(const bt_state *s, uint64_t x, uint64_t y) {
    for (int side = 0; side < 2; side++) {
        int32_t a = side ? (int32_t)(uint32_t)x : (int32_t)(x >> 32);
        int32_t b = side ? (int32_t)(uint32_t)y : (int32_t)(y >> 32);
        size_t la = s->tok_len[a], lb = s->tok_len[b];
        int c = memcmp(s->tok[a], s->tok[b], la < lb ? la : lb);
        if (c) return c < 0 ? -1 : 1;
        if (la != lb) return la < lb ? -1 : 1;
    }
    return 0;
}

/* heap order: larger count first, then smaller bytes */
static int heap_before(const bt_state *s, const heap_item *x, const heap_item *y) {
    if (x->count != y->count) return x->count > y->count;
    return pair_bytes_cmp(s, x->key, y->key) < 0;
}

static void heap_push(bt_state *s, int64_t count, uint64_t key) {
    if (s->n_heap == s->cap_heap) { s->cap_heap = s->cap_heap ? 2 * s->cap_heap : 1024; s->heap = fdpo_realloc(s->heap, s->cap_heap * sizeof *s->heap); }
    size_t i = s->n_heap++;
    s->heap[i] = (heap_item){count, key};
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_before(s, &s->heap[i], &s->heap[p])) break;
        heap_item t = s->heap[i]; s->heap[i] = s->heap[p]; s->heap[p] = t;
        i = p;
    }
}

static heap_item heap_pop(bt_state *s) {
    heap_item top = s->heap[0];
    s->heap[0] = s->heap[--s->n_heap];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->n_heap && heap_before(s, &s->heap[l], &s->heap[m])) m = l;
        if (r < s->n_heap && heap_before(s, &s->heap[r], &s->heap[m])) m = r;
        if (m == i) break;
        heap_item t = s->heap[i]; s->heap[i] = s->heap[m]; s->heap[m] = t;
        i = m;
    }
    return top;
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}
static uint64_t pair_hash_of(size_t item, const void *ctx) { return mix64(((const bt_state *)ctx)->pairs[item].key); }
static uint64_t word_hash_of(size_t item, const void *ctx) { return ((const bt_state *)ctx)->words[item].hash; }

/* index of the pair with this key (created with count 0 when create), or SIZE_MAX. Indices
 * stay valid as the array grows; pointers into it do not. */
static size_t pair_get(bt_state *s, uint64_t key, int create) {
    size_t i = fdpo_itab_first(&s->pair_index, mix64(key));
    for (; s->pair_index.slot[i]; i = fdpo_itab_next(&s->pair_index, i))
        if (s->pairs[s->pair_index.slot[i] - 1].key == key) return s->pair_index.slot[i] - 1;
    if (!create) return SIZE_MAX;
    if (s->n_pairs == s->cap_pairs) {
        s->cap_pairs = s->cap_pairs ? 2 * s->cap_pairs : 1024;
        s->pairs = fdpo_realloc(s->pairs, s->cap_pairs * sizeof *s->pairs);
    }
    s->pairs[s->n_pairs] = (bt_pair){.key = key};
    if (fdpo_itab_reserve(&s->pair_index, s->n_pairs + 1, pair_hash_of, s)) {
        i = fdpo_itab_first(&s->pair_index, mix64(key));
        while (s->pair_index.slot[i]) i = fdpo_itab_next(&s->pair_index, i);
    }
    fdpo_itab_set(&s->pair_index, i, s->n_pairs);
    return s->n_pairs++;
}

/* add delta * freq for every adjacent pair of word w (with delta > 0 also note w in the
 * pair's word list); each pair touched is queued once per round for a heap push */
static void count_word(bt_state *s, size_t w, int delta) {
    const bt_word *wd = &s->words[w];
    for (size_t i = 0; i + 1 < wd->n; i++) {
        uint64_t k = pair_key(wd->sym[i], wd->sym[i + 1]);
        size_t pi = pair_get(s, k, 1);
        bt_pair *p = &s->pairs[pi];
        p->count += delta * (int64_t)wd->freq;
        if (delta > 0 && (p->n_words == 0 || p->words[p->n_words - 1] != w)) {
            if (p->n_words == p->cap_words) { p->cap_words = p->cap_words ? 2 * p->cap_words : 4; p->words = fdpo_realloc(p->words, p->cap_words * sizeof *p->words); }
            p->words[p->n_words++] = w;
        }
        if (p->stamp != s->round + 1) {
            p->stamp = s->round + 1;
            if (s->n_touched == s->cap_touched) { s->cap_touched = s->cap_touched ? 2 * s->cap_touched : 1024; s->touched = fdpo_realloc(s->touched, s->cap_touched * sizeof *s->touched); }
            s->touched[s->n_touched++] = pi;
        }
    }
}

/* push the final count of every pair touched this round; older heap entries become stale */
static void flush_touched(bt_state *s) {
    for (size_t i = 0; i < s->n_touched; i++) {
        const bt_pair *p = &s->pairs[s->touched[i]];
        if (p->count > 0) heap_push(s, p->count, p->key);
    }
    s->n_touched = 0;
    s->round++;
}

static void add_token(bt_state *s, const unsigned char *bytes, size_t len) {
    if (s->n_tok == s->cap_tok) {
        s->cap_tok = s->cap_tok ? 2 * s->cap_tok : 512;
        s->tok = fdpo_realloc(s->tok, s->cap_tok * sizeof *s->tok);
        s->tok_len = fdpo_realloc(s->tok_len, s->cap_tok * sizeof *s->tok_len);
    }
    s->tok[s->n_tok] = fdpo_malloc(len ? len : 1);
    memcpy(s->tok[s->n_tok], bytes, len);
    s->tok_len[s->n_tok++] = len;
}

static void add_word(bt_state *s, const int32_t *byte_id, const unsigned char *w, size_t n) {
    uint64_t h = fdpo_hash64(FDPO_HASH_INIT, w, n);
    size_t i = fdpo_itab_first(&s->word_index, h);
    for (; s->word_index.slot[i]; i = fdpo_itab_next(&s->word_index, i)) {
        bt_word *x = &s->words[s->word_index.slot[i] - 1];
        if (x->hash == h && x->len == n && !memcmp(x->bytes, w, n)) { x->freq++; return; }
    }
    if (s->n_words == s->cap_words) { s->cap_words = s->cap_words ? 2 * s->cap_words : 1024; s->words = fdpo_realloc(s->words, s->cap_words * sizeof *s->words); }
    bt_word *wd = &s->words[s->n_words];
    wd->sym = fdpo_malloc(n * sizeof *wd->sym);
    for (size_t k = 0; k < n; k++) wd->sym[k] = byte_id[w[k]];
    wd->n = n; wd->freq = 1;
    wd->bytes = fdpo_malloc(n);
    memcpy(wd->bytes, w, n);
    wd->len = n; wd->hash = h;
    if (fdpo_itab_reserve(&s->word_index, s->n_words + 1, word_hash_of, s)) {
        i = fdpo_itab_first(&s->word_index, h);
        while (s->word_index.slot[i]) i = fdpo_itab_next(&s->word_index, i);
    }
    fdpo_itab_set(&s->word_index, i, s->n_words++);
}

/* pre-tokenise one document into words */
static void add_document(bt_state *s, const int32_t *byte_id, pcre2_code *re, pcre2_match_data *md,
                         const unsigned char *t, size_t n) {
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    for (size_t off = 0; off < n;) {
        int rc = pcre2_jit_match(re, t, n, off, 0, md, NULL);
        if (rc <= 0) break;
        if (ov[1] > ov[0]) add_word(s, byte_id, t + ov[0], ov[1] - ov[0]);
        off = ov[1] > off ? ov[1] : off + 1;
    }
}

static void state_free(bt_state *s) {
    for (size_t i = 0; i < s->n_words; i++) { free(s->words[i].sym); free(s->words[i].bytes); }
    free(s->words);
    fdpo_itab_free(&s->word_index);
    for (size_t i = 0; i < s->n_pairs; i++) free(s->pairs[i].words);
    free(s->pairs);
    fdpo_itab_free(&s->pair_index);
    free(s->heap); free(s->touched);
    for (size_t i = 0; i < s->n_tok; i++) free(s->tok[i]);
    free(s->tok); free(s->tok_len); free(s->merges);
}

int fdpo_bpe_train_opts_check(const fdpo_bpe_train_opts *o) {
    if (o->vocab_size < 257)
        return fdpo_error("--vocab-size: %zu must be at least 257 (256 bytes + <|endoftext|>)", o->vocab_size);
    if (o->vocab_size > INT32_MAX)   /* token ids are int32 */
        return fdpo_error("--vocab-size: %zu must be at most %d (token ids are 32-bit)", o->vocab_size, INT32_MAX);
    if (o->min_frequency < 1) return fdpo_error("--min-frequency: must be >= 1");
    return 0;
}

/* one merge of pair (a, b) -> id c in every word that has it */
static void apply_merge(bt_state *s, size_t pi, int32_t a, int32_t b, int32_t c) {
    bt_pair *p = &s->pairs[pi];   /* not used below: count_word may move the array */
    size_t n_words = p->n_words;
    size_t *words = p->words;
    p->words = NULL; p->n_words = p->cap_words = 0;
    for (size_t k = 0; k < n_words; k++) {
        size_t w = words[k];
        bt_word *wd = &s->words[w];
        int has = 0;
        for (size_t i = 0; i + 1 < wd->n && !has; i++) has = wd->sym[i] == a && wd->sym[i + 1] == b;
        if (!has) continue; /* stale entry: an earlier merge consumed the pair here */
        count_word(s, w, -1);
        size_t j = 0;
        for (size_t i = 0; i < wd->n; i++) {
            if (i + 1 < wd->n && wd->sym[i] == a && wd->sym[i + 1] == b) { wd->sym[j++] = c; i++; }
            else wd->sym[j++] = wd->sym[i];
        }
        wd->n = j;
        count_word(s, w, +1);
    }
    free(words);
}

int fdpo_bpe_train(const char *const *texts, const size_t *lens, size_t n_texts, const fdpo_bpe_train_opts *o,
                   fdpo_bpe_trained *out) {
    memset(out, 0, sizeof *out);
    if (fdpo_bpe_train_opts_check(o)) return -1;
    int err; PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)fdpo_bpe_gpt2_pattern(), PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &eoff, NULL);
    if (!re) return fdpo_error("GPT-2 regex does not compile (PCRE2 error %d)", err);
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    bt_state s = {0};
    fdpo_itab_init(&s.word_index, 1024);
    fdpo_itab_init(&s.pair_index, 1024);
    /* ids 0..255: the byte symbols in GPT-2's order */
    int32_t byte_id[256];
    for (int pass = 0; pass < 2; pass++)
        for (int b = 0; b < 256; b++) {
            int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            if (printable == (pass == 0)) { unsigned char c = (unsigned char)b; byte_id[b] = (int32_t)s.n_tok; add_token(&s, &c, 1); }
        }
    for (size_t t = 0; t < n_texts; t++) {
        const unsigned char *p = (const unsigned char *)texts[t], *end = p + lens[t];
        while (p < end) {
            const unsigned char *eot = memmem(p, (size_t)(end - p), EOT_TEXT, sizeof EOT_TEXT - 1);
            const unsigned char *stop = eot ? eot : end;
            add_document(&s, byte_id, re, md, p, (size_t)(stop - p));
            p = eot ? eot + sizeof EOT_TEXT - 1 : end;
        }
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    if (s.n_words == 0) {   /* it wrote the 257 byte and end tokens as a trained tokenizer */
        state_free(&s);
        return fdpo_error("nothing to train on: the input holds no text (empty, only <|endoftext|>, or no valid UTF-8)");
    }
    for (size_t w = 0; w < s.n_words; w++) count_word(&s, w, +1);
    flush_touched(&s);

    size_t target_merges = o->vocab_size - 257;
    s.merges = fdpo_malloc((target_merges ? target_merges : 1) * sizeof *s.merges);
    while (s.n_merges < target_merges && s.n_heap > 0) {
        heap_item top = heap_pop(&s);
        size_t pi = pair_get(&s, top.key, 0);
        if (pi == SIZE_MAX || s.pairs[pi].count != top.count) continue; /* stale heap entry */
        if (s.pairs[pi].count < (int64_t)o->min_frequency) break;
        int32_t a = (int32_t)(top.key >> 32), b = (int32_t)(uint32_t)top.key;
        size_t la = s.tok_len[a], lb = s.tok_len[b];
        unsigned char *joined = fdpo_malloc(la + lb);
        memcpy(joined, s.tok[a], la); memcpy(joined + la, s.tok[b], lb);
        int32_t c = (int32_t)s.n_tok;
        add_token(&s, joined, la + lb);
        free(joined);
        s.merges[s.n_merges][0] = a; s.merges[s.n_merges][1] = b; s.n_merges++;
        apply_merge(&s, pi, a, b, c);
        flush_touched(&s);
    }
    out->n_tokens = s.n_tok + 1; /* + <|endoftext|> */
    out->tokens = fdpo_malloc(out->n_tokens * sizeof *out->tokens);
    out->token_len = fdpo_malloc(out->n_tokens * sizeof *out->token_len);
    for (size_t i = 0; i < s.n_tok; i++) { out->tokens[i] = (char *)s.tok[i]; out->token_len[i] = s.tok_len[i]; s.tok[i] = NULL; }
    out->tokens[s.n_tok] = fdpo_strdup(EOT_TEXT);
    out->token_len[s.n_tok] = sizeof EOT_TEXT - 1;
    out->merges = s.merges; out->n_merges = s.n_merges; s.merges = NULL;
    out->n_words = s.n_words;
    state_free(&s);
    return 0;
}

void fdpo_bpe_trained_free(fdpo_bpe_trained *t) {
    for (size_t i = 0; i < t->n_tokens; i++) free(t->tokens[i]);
    free(t->tokens); free(t->token_len); free(t->merges);
    memset(t, 0, sizeof *t);
}

/* a token's bytes in GPT-2's byte-to-unicode alphabet (the eot token is literal text) */
static char *token_symbols(const fdpo_bpe_trained *t, size_t id) {
    if (id == t->n_tokens - 1) return fdpo_strdup(EOT_TEXT);
    char *s = fdpo_malloc(2 * t->token_len[id] + 1), *q = s;
    for (size_t i = 0; i < t->token_len[id]; i++) q += fdpo_bpe_byte_symbol((unsigned char)t->tokens[id][i], q);
    *q = 0;
    return s;
}

/* tokenizer_config.json for transformers' AutoTokenizer (which needs a tokenizer_class when
 * there is no config.json): GPT-2's tokenizer, its special tokens all the trained
 * <|endoftext|>, no prefix space, no bos added, decoding without the clean-up of spaces
 * (byte for byte, as fdpo decodes). No model_max_length: no model is known here. fdpo reads
 * it back as the pair alone, but for bos (the end token; -1 without it), as transformers
 * does. */
static char *trained_config(const fdpo_bpe_trained *t) {
    cJSON *c = cJSON_CreateObject(), *dec = cJSON_CreateObject(), *eot = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "tokenizer_class", "GPT2Tokenizer");
    cJSON_AddStringToObject(c, "bos_token", EOT_TEXT);
    cJSON_AddStringToObject(c, "eos_token", EOT_TEXT);
    cJSON_AddStringToObject(c, "unk_token", EOT_TEXT);
    cJSON_AddBoolToObject(c, "add_prefix_space", 0);
    cJSON_AddBoolToObject(c, "add_bos_token", 0);
    cJSON_AddBoolToObject(c, "clean_up_tokenization_spaces", 0);
    cJSON_AddStringToObject(c, "errors", "replace");
    cJSON_AddStringToObject(eot, "content", EOT_TEXT);
    cJSON_AddBoolToObject(eot, "lstrip", 0);
    cJSON_AddBoolToObject(eot, "normalized", 0);
    cJSON_AddBoolToObject(eot, "rstrip", 0);
    cJSON_AddBoolToObject(eot, "single_word", 0);
    cJSON_AddBoolToObject(eot, "special", 1);
    char id[32];
    snprintf(id, sizeof id, "%zu", t->n_tokens - 1);
    cJSON_AddItemToObject(dec, id, eot);
    cJSON_AddItemToObject(c, "added_tokens_decoder", dec);
    char *js = cJSON_Print(c);
    cJSON_Delete(c);
    return js;
}

int fdpo_bpe_trained_save(const fdpo_bpe_trained *t, const char *dir) {
    if (fdpo_mkdir_p(dir)) return -1;
    char **sym = fdpo_malloc(t->n_tokens * sizeof *sym);
    for (size_t i = 0; i < t->n_tokens; i++) sym[i] = token_symbols(t, i);
    int rc = -1;
    cJSON *v = cJSON_CreateObject();
    for (size_t i = 0; i < t->n_tokens; i++) cJSON_AddItemToObject(v, sym[i], cJSON_CreateNumber((double)i));
    char *js = cJSON_PrintUnformatted(v);
    cJSON_Delete(v);
    size_t cap = 32;
    for (size_t i = 0; i < t->n_merges; i++) cap += strlen(sym[t->merges[i][0]]) + strlen(sym[t->merges[i][1]]) + 2;
    char *mt = fdpo_malloc(cap), *q = mt;
    q += snprintf(q, cap, "#version: 0.2\n");
    for (size_t i = 0; i < t->n_merges; i++)
        q += snprintf(q, cap - (size_t)(q - mt), "%s %s\n", sym[t->merges[i][0]], sym[t->merges[i][1]]);
    char *cfg = trained_config(t);
    char *vp = fdpo_path_join(dir, "vocab.json"), *mp = fdpo_path_join(dir, "merges.txt");
    char *cp = fdpo_path_join(dir, "tokenizer_config.json");
    /* the three files are one tokenizer: all written out before any replaces an old one (a
     * full disk at merges.txt left a new vocab.json beside the old merges, which loads as neither) */
    fdpo_atomic_file va = {0}, ma = {0}, ca = {0}, *all[3] = {&va, &ma, &ca};
    if (!js || !cfg) fdpo_error("%s: cannot serialise %s", dir, js ? "tokenizer_config.json" : "vocab.json");
    else if (!fdpo_atomic_open(&va, vp) && !fdpo_atomic_open(&ma, mp) && !fdpo_atomic_open(&ca, cp)) {
        size_t nv = strlen(js), nm = (size_t)(q - mt), nc = strlen(cfg);
        if (fwrite(js, 1, nv, va.f) != nv) fdpo_error("%s: write failed: %s", vp, strerror(errno));
        else if (fwrite(mt, 1, nm, ma.f) != nm) fdpo_error("%s: write failed: %s", mp, strerror(errno));
        else if (fwrite(cfg, 1, nc, ca.f) != nc || fputc('\n', ca.f) == EOF) fdpo_error("%s: write failed: %s", cp, strerror(errno));
        else rc = fdpo_atomic_commit_set(all, 3);   /* a kill between its renames: put back whole */
    }
    if (rc) { fdpo_atomic_abort(&va); fdpo_atomic_abort(&ma); fdpo_atomic_abort(&ca); }
    free(vp); free(mp); free(cp); free(mt); free(js); cJSON_free(cfg);
    for (size_t i = 0; i < t->n_tokens; i++) free(sym[i]);
    free(sym);
    return rc;
}
