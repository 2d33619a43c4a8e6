/* GPT-2 byte-level BPE (the scheme of OpenAI's GPT-2 encoder and Hugging Face's GPT2
 * tokenizer).
 *
 *   text --(split "<|endoftext|>" when allow_special)--> segments
 *        --(GPT-2 pre-tokenisation regex, PCRE2 JIT)--> pre-tokens (UTF-8 bytes)
 *        --(bytes -> byte tokens, ranked merges, word cache)--> ids
 *
 * Files: vocab.json + merges.txt (Hugging Face), encoder.json + vocab.bpe (OpenAI), or
 * tokenizer.json with "model": {"type": "BPE"}. Vocabulary strings are in GPT-2's
 * byte-to-unicode alphabet: every byte b maps to one printable code point; tokens are
 * sequences of those code points, and a token's bytes are their preimages.
 *
 * Regex semantics are Hugging Face's (Oniguruma/Python `regex`): \s is the Unicode
 * White_Space property. PCRE2's UCP \s also matches U+180E, so the pattern spells the
 * class out. Invalid UTF-8 in the input: each byte of an ill-formed subsequence becomes its
 * own byte token, and the valid text around it is pre-tokenised as if the invalid bytes were
 * segment boundaries (PCRE2_MATCH_INVALID_UTF). docs/tokenizer.md has the details. */
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include "fdpo/chat.h"
#include "fdpo/core.h"
#include "data/jsonl.h"
#include "text/tokenizer_internal.h"

#define EOT_TEXT "<|endoftext|>"
#define EOT_LEN (sizeof EOT_TEXT - 1)
#define NO_RANK UINT32_MAX
#define CACHE_SLOTS 4               /* concurrent encoders that get a word cache */
#define CACHE_MAX_KEY 64            /* longer pre-tokens are not cached */
#define CACHE_MAX_ENTRIES (1u << 20) /* then the cache starts over */
#define LONG_WORD 64                /* longer pre-tokens merge through a heap */

/* White_Space (Unicode), written out: see the header comment. */
#define WS "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

/* Qwen2's pre-tokenisation regex (transformers' Qwen2Tokenizer and the Split of Qwen2's
 * tokenizer.json), written as in those files: \s is rewritten by pattern_rewrite. */
static const char QWEN2_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ---- (a, b) -> rank, merged id: entries by rank, found through an index table ---- */
typedef struct { uint64_t key; uint32_t rank; int32_t merged; } pair_entry;

/* ---- word cache: pre-token bytes -> ids ---- */
typedef struct { uint64_t hash; uint32_t key_off, ids_off; uint16_t key_len, n_ids; } cache_entry;
typedef struct {
    pthread_mutex_t lock;
    fdpo_itab table;                      /* pre-token -> entry */
    cache_entry *ent; size_t n_ent, cap_ent;
    char *keys; size_t n_keys, cap_keys;
    int32_t *ids; size_t n_ids, cap_ids;
    pcre2_match_data *md;
} word_cache;

struct fdpo_bpe {
    size_t n_vocab;
    char **str;              /* token string as in the vocabulary file (UTF-8) */
    unsigned char **bytes;   /* token bytes (preimage of the byte alphabet) */
    uint32_t *n_bytes;
    fdpo_itab map;           /* token string -> id */
    pair_entry *pairs;       /* [n_merges], by rank */
    fdpo_itab pair_index;    /* (a, b) -> rank of its (last) merge line */
    int32_t (*merges)[2]; size_t n_merges; /* in rank order, for saving */
    int32_t byte_id[256];
    char b2u[256][4]; uint8_t b2u_len[256]; /* each byte's symbol, UTF-8 */
    int ignore_merges;       /* tokenizer.json "ignore_merges": whole words in model.vocab win */
    unsigned char *in_model; /* with ignore_merges: [n_vocab] 1 = in model.vocab (not only an added token) */
    int nfc;                 /* normalizer NFC: text between added tokens is NFC-normalised */
    char *pattern;           /* pre-tokenisation regex as written in the file (NULL: GPT-2's) */
    int digits;              /* Digits pre-tokenizer first: 0 none, 1 individual_digits, 2 runs */
    pcre2_code *digits_re;   /* \p{N} or \p{N}+ */
    unsigned char *special;  /* [n_vocab] 1 = a special added token (decode may skip it) */
    unsigned char *json_added; /* [n_vocab] 1 = in tokenizer.json's added_tokens: a config name keeps its flag */
    int32_t *added; size_t n_added; /* added tokens matched in text, longest first */
    unsigned char added_first[256]; /* 1 if some added token starts with this byte */
    char *src_json, *src_config, *src_jinja, *src_map; /* tokenizer.json / tokenizer_config.json / chat_template.jinja /
                                                         * special_tokens_map.json as read (saved verbatim) */
    size_t src_json_len, src_config_len, src_jinja_len, src_map_len;
    pcre2_code *re;
    word_cache cache[CACHE_SLOTS];
};

/* ---- GPT-2's byte <-> unicode alphabet ---- */
static int byte_is_printable(int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}
static uint32_t byte_to_cp(int b) {
    if (byte_is_printable(b)) return (uint32_t)b;
    int n = 0;
    for (int c = 0; c < b; c++) if (!byte_is_printable(c)) n++;
    return 256u + (uint32_t)n;
}
/* code point -> byte, or -1 when the code point is outside the alphabet */
static int cp_to_byte(uint32_t cp) {
    if (cp < 256) return byte_is_printable((int)cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1; /* 68 bytes are not printable */
    int n = 0;
    for (int c = 0; c < 256; c++) if (!byte_is_printable(c) && n++ == (int)(cp - 256)) return c;
    return -1;
}
static size_t put_utf8(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}
/* Decode one UTF-8 code point of valid input (the files are checked: check_utf8). */
static size_t get_utf8(const unsigned char *s, size_t n, uint32_t *cp) {
    if (s[0] < 0x80 || n < 2) { *cp = s[0]; return 1; }
    if (s[0] < 0xE0) { *cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F); return 2; }
    if (s[0] < 0xF0 || n < 4) {
        if (n < 3) { *cp = s[0]; return 1; }
        *cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

size_t fdpo_bpe_byte_symbol(int b, char out[4]) { return put_utf8(byte_to_cp(b), out); }
const char *fdpo_bpe_gpt2_pattern(void) { return GPT2_PATTERN; }

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

/* ---- string -> id ---- */
static int32_t strmap_get(const struct fdpo_bpe *b, const char *s, size_t len) {
    if (!b->map.cap) return -1;
    for (size_t i = fdpo_itab_first(&b->map, fdpo_hash64(FDPO_HASH_INIT, s, len)); b->map.slot[i]; i = fdpo_itab_next(&b->map, i)) {
        const char *t = b->str[b->map.slot[i] - 1];
        if (strlen(t) == len && memcmp(t, s, len) == 0) return (int32_t)(b->map.slot[i] - 1);
    }
    return -1;
}
/* returns the id already there, or -1 after inserting */
static int32_t strmap_put(struct fdpo_bpe *b, int32_t id) {
    const char *s = b->str[id];
    size_t i = fdpo_itab_first(&b->map, fdpo_hash64(FDPO_HASH_INIT, s, strlen(s)));
    for (; b->map.slot[i]; i = fdpo_itab_next(&b->map, i))
        if (strcmp(b->str[b->map.slot[i] - 1], s) == 0) return (int32_t)(b->map.slot[i] - 1);
    fdpo_itab_set(&b->map, i, (size_t)id);
    return -1;
}

/* ---- pair map ---- */
static inline uint64_t pair_key(int32_t a, int32_t c) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)c; }
static inline const pair_entry *pair_get(const struct fdpo_bpe *b, int32_t a, int32_t c) {
    uint64_t k = pair_key(a, c);
    for (size_t i = fdpo_itab_first(&b->pair_index, mix64(k)); b->pair_index.slot[i]; i = fdpo_itab_next(&b->pair_index, i)) {
        const pair_entry *e = &b->pairs[b->pair_index.slot[i] - 1];
        if (e->key == k) return e;
    }
    return NULL;
}
/* rank = b->n_merges (merges are added in file order) */
static void pair_put(struct fdpo_bpe *b, int32_t a, int32_t c, uint32_t rank, int32_t merged) {
    uint64_t k = pair_key(a, c);
    b->pairs[rank] = (pair_entry){.key = k, .rank = rank, .merged = merged};
    size_t i = fdpo_itab_first(&b->pair_index, mix64(k));
    for (; b->pair_index.slot[i]; i = fdpo_itab_next(&b->pair_index, i))
        if (b->pairs[b->pair_index.slot[i] - 1].key == k) break; /* a repeated pair: the later line wins, as in HF */
    fdpo_itab_set(&b->pair_index, i, rank);
}

/* ---- loading ---- */
static struct fdpo_bpe *bpe_new(void) {
    struct fdpo_bpe *b = fdpo_calloc(1, sizeof *b);
    for (int i = 0; i < CACHE_SLOTS; i++) pthread_mutex_init(&b->cache[i].lock, NULL);
    for (int i = 0; i < 256; i++) b->b2u_len[i] = (uint8_t)put_utf8(byte_to_cp(i), b->b2u[i]);
    return b;
}

static void cache_release(word_cache *c) {
    fdpo_itab_free(&c->table); free(c->ent); free(c->keys); free(c->ids);
    if (c->md) pcre2_match_data_free(c->md);
    c->ent = NULL; c->keys = NULL; c->ids = NULL; c->md = NULL;
}

/* A token's text for a message: 'text' with control bytes, quotes and backslashes escaped,
 * cut after 64 bytes (at a character's start) */
static void quote_token(char *out, size_t size, const char *s) {
    size_t k = 0;
    out[k++] = '\'';
    for (size_t i = 0; s && s[i] && k + 8 < size; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= 64 && (c & 0xC0) != 0x80) { k += (size_t)snprintf(out + k, size - k, "..."); break; }
        if (c < 0x20 || c == 0x7f) k += (size_t)snprintf(out + k, size - k, "\\x%02x", c);
        else if (c == '\'' || c == '\\') { out[k++] = '\\'; out[k++] = (char)c; }
        else out[k++] = (char)c;
    }
    if (!s) k += (size_t)snprintf(out + k, size - k, "(none)");
    out[k++] = '\'';
    out[k] = 0;
}

static int diff_put(char *buf, size_t size, const char *fmt, ...) {
    if (buf && size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, size, fmt, ap);
        va_end(ap);
    }
    return 1;
}

static const char *const DIGITS_NAME[] = {"none", "individual_digits", "runs of digits"};

int fdpo_bpe_diff(const struct fdpo_bpe *a, const struct fdpo_bpe *b, char *buf, size_t size) {
    char qa[192], qb[192];
    if (a->n_vocab != b->n_vocab) return diff_put(buf, size, "vocabulary %zu vs %zu tokens", a->n_vocab, b->n_vocab);
    for (size_t i = 0; i < a->n_vocab; i++) {
        if (a->n_bytes[i] != b->n_bytes[i] || (a->n_bytes[i] && memcmp(a->bytes[i], b->bytes[i], a->n_bytes[i]))) {
            quote_token(qa, sizeof qa, a->str[i]);
            quote_token(qb, sizeof qb, b->str[i]);
            return diff_put(buf, size, "token %zu %s vs %s", i, qa, qb);
        }
        int sa = a->special ? a->special[i] : 0, sb = b->special ? b->special[i] : 0;
        if (sa != sb) {
            quote_token(qa, sizeof qa, a->str[i]);
            return diff_put(buf, size, "token %zu %s special %s vs %s", i, qa, sa ? "yes" : "no", sb ? "yes" : "no");
        }
    }
    size_t n = a->n_merges < b->n_merges ? a->n_merges : b->n_merges;
    for (size_t r = 0; r < n; r++)
        if (a->merges[r][0] != b->merges[r][0] || a->merges[r][1] != b->merges[r][1]) {
            char pa[256], pb[256];
            snprintf(pa, sizeof pa, "%s %s", a->str[a->merges[r][0]], a->str[a->merges[r][1]]);
            snprintf(pb, sizeof pb, "%s %s", b->str[b->merges[r][0]], b->str[b->merges[r][1]]);
            quote_token(qa, sizeof qa, pa);
            quote_token(qb, sizeof qb, pb);
            return diff_put(buf, size, "merges[%zu] %s vs %s", r, qa, qb);
        }
    if (a->n_merges != b->n_merges)
        return diff_put(buf, size, "merges %zu vs %zu (the first %zu agree)", a->n_merges, b->n_merges, n);
    if (a->n_added != b->n_added) return diff_put(buf, size, "added tokens %zu vs %zu", a->n_added, b->n_added);
    for (size_t i = 0; i < a->n_added; i++)
        if (a->added[i] != b->added[i]) {
            quote_token(qa, sizeof qa, a->str[a->added[i]]);
            quote_token(qb, sizeof qb, b->str[b->added[i]]);
            return diff_put(buf, size, "added token %zu (matched in this order) %s vs %s", i, qa, qb);
        }
    if ((a->pattern || b->pattern) && (!a->pattern || !b->pattern || strcmp(a->pattern, b->pattern))) {
        if (a->pattern) quote_token(qa, sizeof qa, a->pattern); else snprintf(qa, sizeof qa, "(GPT-2's, none written)");
        if (b->pattern) quote_token(qb, sizeof qb, b->pattern); else snprintf(qb, sizeof qb, "(GPT-2's, none written)");
        return diff_put(buf, size, "pre-tokenizer pattern %s vs %s", qa, qb);
    }
    if (a->digits != b->digits)
        return diff_put(buf, size, "Digits pre-tokenizer %s vs %s", DIGITS_NAME[a->digits], DIGITS_NAME[b->digits]);
    if (a->nfc != b->nfc) return diff_put(buf, size, "normalizer NFC %s vs %s", a->nfc ? "yes" : "no", b->nfc ? "yes" : "no");
    if (a->ignore_merges != b->ignore_merges)
        return diff_put(buf, size, "ignore_merges %s vs %s", a->ignore_merges ? "true" : "false", b->ignore_merges ? "true" : "false");
    return 0;
}

void fdpo_bpe_free(struct fdpo_bpe *b) {
    if (!b) return;
    for (size_t i = 0; i < b->n_vocab; i++) { free(b->str ? b->str[i] : NULL); free(b->bytes ? b->bytes[i] : NULL); }
    free(b->str); free(b->bytes); free(b->n_bytes); fdpo_itab_free(&b->map); free(b->pairs); fdpo_itab_free(&b->pair_index); free(b->merges);
    for (int i = 0; i < CACHE_SLOTS; i++) { cache_release(&b->cache[i]); pthread_mutex_destroy(&b->cache[i].lock); }
    if (b->re) pcre2_code_free(b->re);
    if (b->digits_re) pcre2_code_free(b->digits_re);
    free(b->pattern); free(b->in_model); free(b->special); free(b->json_added); free(b->added); free(b->src_json); free(b->src_config); free(b->src_jinja); free(b->src_map);
    free(b);
}

/* Line (1-based) of byte offset off in text, for messages. */
static int line_of(const char *text, size_t off) {
    int line = 1;
    for (size_t i = 0; i < off && text[i]; i++) line += text[i] == '\n';
    return line;
}

/* Tokenizer files are UTF-8 text: Python's json.load and Hugging Face's loader refuse
 * ill-formed bytes, and cJSON would pass them on (an overlong "<\xC0\xAF>" read as "</>"). */
static int check_utf8(const char *path, const char *text, size_t n) {
    size_t bad = fdpo_utf8_first_invalid(text, n);
    if (bad == n) return 0;
    return fdpo_error("%s:%d: invalid UTF-8 (byte 0x%02X at byte offset %zu)", path, line_of(text, bad),
                      (unsigned char)text[bad], bad);
}

static cJSON *parse_json(const char *path, const char *text, size_t n) {
    if (check_utf8(path, text, n)) return NULL;
    size_t esc = fdpo_json_bad_u_escape(text, n), col;
    if (esc < n) {
        size_t line = fdpo_json_line_col(text, esc, 1, &col);
        fdpo_error("%s:%zu: " FDPO_JSON_BAD_U_ESCAPE, path, line, col);
        return NULL;
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    if (!j) {
        size_t off = end && end >= text && end <= text + n ? (size_t)(end - text) : 0;
        fdpo_error("%s:%d: malformed JSON (near byte %zu)", path, line_of(text, off), off);
    }
    return j;
}

/* Set token id's string (and bytes). raw = 1: the string is literal text (an added token),
 * not byte-alphabet symbols. */
static void set_token(struct fdpo_bpe *b, int32_t id, const char *s, int raw) {
    size_t len = strlen(s);
    b->str[id] = fdpo_strdup(s);
    unsigned char *out = fdpo_malloc(len + 1);
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t m = get_utf8((const unsigned char *)s + i, len - i, &cp);
        int byte = raw ? -1 : cp_to_byte(cp);
        if (byte >= 0) out[k++] = (unsigned char)byte;
        else { memcpy(out + k, s + i, m); k += m; } /* outside the alphabet: the text itself */
        i += m;
    }
    b->bytes[id] = out; b->n_bytes[id] = (uint32_t)k;
}

/* The file and field that put an added token's content into the vocabulary object (its
 * entry in `list`, see added_entry), or NULL when the vocabulary file has it itself. */
static const char *added_where(const cJSON *list, const char *content) {
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content"), *w = cJSON_GetObjectItemCaseSensitive(e, "where");
        if (cJSON_IsString(w) && cJSON_IsString(c) && !strcmp(c->valuestring, content)) return w->valuestring;
    }
    return NULL;
}

typedef struct { double id; size_t at; const cJSON *e; } vocab_ent;
static int vocab_ent_cmp(const void *x, const void *y) {
    const vocab_ent *a = x, *b = y;
    if (a->id != b->id) return a->id < b->id ? -1 : 1;
    return (a->at > b->at) - (a->at < b->at);
}

/* vocab: a JSON object {token: id}, added tokens appended (list: their entries, or NULL).
 * Builds str/bytes/map. where = file name (and field) for messages. A repeated id is
 * reported before the range of ids, naming the added token that repeats it. */
static int load_vocab_object(struct fdpo_bpe *b, const cJSON *vocab, const char *where, const cJSON *list) {
    if (!cJSON_IsObject(vocab)) return fdpo_error("%s: vocabulary is not a JSON object {token: id}", where);
    size_t n = 0; double max_id = -1;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        double v = e->valuedouble;
        if (!cJSON_IsNumber(e) || v < 0 || v > 1e8 || v != (double)(int64_t)v)
            return fdpo_error("%s: token '%s': id is not a non-negative integer", where, e->string);
        if (v > max_id) max_id = v;
        n++;
    }
    if (n == 0) return fdpo_error("%s: empty vocabulary", where);
    /* ids by value (file order within one): the first repeat in file order is reported */
    vocab_ent *ent = fdpo_malloc(n * sizeof *ent);
    size_t k = 0;
    for (const cJSON *e = vocab->child; e; e = e->next, k++) ent[k] = (vocab_ent){e->valuedouble, k, e};
    qsort(ent, n, sizeof *ent, vocab_ent_cmp);
    const vocab_ent *first = NULL, *again = NULL;
    for (size_t i = 1, g = 0; i < n; i++) {
        if (ent[i].id != ent[i - 1].id) { g = i; continue; }
        if (!again || ent[i].at < again->at) { first = &ent[g]; again = &ent[i]; }
    }
    if (again) {
        const char *w = list ? added_where(list, again->e->string) : NULL;
        fdpo_error("%s: id %.0f used by both '%s' and '%s'", w ? w : where, again->id, first->e->string, again->e->string);
        free(ent);
        return -1;
    }
    free(ent);
    if ((size_t)max_id + 1 != n)
        return fdpo_error("%s: ids must be 0..%zu for %zu tokens, found id %.0f", where, n - 1, n, max_id);
    b->n_vocab = n;
    b->str = fdpo_calloc(n, sizeof *b->str);
    b->bytes = fdpo_calloc(n, sizeof *b->bytes);
    b->n_bytes = fdpo_calloc(n, sizeof *b->n_bytes);
    for (const cJSON *e = vocab->child; e; e = e->next) set_token(b, (int32_t)e->valuedouble, e->string, 0);
    fdpo_itab_init(&b->map, n);
    for (size_t i = 0; i < n; i++) {
        int32_t dup = strmap_put(b, (int32_t)i);
        if (dup >= 0) return fdpo_error("%s: token '%s' appears twice (ids %d and %zu)", where, b->str[i], dup, i);
    }
    return 0;
}

/* One merge "a b"; loc names it for messages ("merges.txt:4"). */
static int add_merge(struct fdpo_bpe *b, const char *a, size_t la, const char *c, size_t lc, const char *loc) {
    int32_t ia = strmap_get(b, a, la), ic = strmap_get(b, c, lc);
    if (ia < 0 || ic < 0) {
        const char *bad = ia < 0 ? a : c; size_t lb = ia < 0 ? la : lc;
        return fdpo_error("%s: merge names unknown symbol '%.*s'", loc, (int)lb, bad);
    }
    char stack[256], *cat = la + lc < sizeof stack ? stack : fdpo_malloc(la + lc + 1);
    memcpy(cat, a, la); memcpy(cat + la, c, lc); cat[la + lc] = 0;
    int32_t im = strmap_get(b, cat, la + lc);
    if (im < 0) {
        fdpo_error("%s: merge result '%s' is not in the vocabulary", loc, cat);
        if (cat != stack) free(cat);
        return -1;
    }
    if (cat != stack) free(cat);
    b->merges[b->n_merges][0] = ia; b->merges[b->n_merges][1] = ic;
    pair_put(b, ia, ic, (uint32_t)b->n_merges, im);
    b->n_merges++;
    return 0;
}

static void merges_alloc(struct fdpo_bpe *b, size_t n) {
    b->merges = fdpo_malloc((n ? n : 1) * sizeof *b->merges);
    b->pairs = fdpo_malloc((n ? n : 1) * sizeof *b->pairs);
    fdpo_itab_init(&b->pair_index, n + 1);
}

/* merges.txt / vocab.bpe: optional "#version" first line, then "a b" per line. */
static int load_merges(struct fdpo_bpe *b, const char *path, const char *text, size_t n) {
    if (check_utf8(path, text, n)) return -1;
    size_t lines = 1;
    for (size_t i = 0; i < n; i++) lines += text[i] == '\n';
    merges_alloc(b, lines);
    int rc = 0;
    size_t line = 0;
    for (const char *p = text, *end = text + n; p < end && rc == 0;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        line++;
        size_t len = (size_t)(le - p);
        if (len && p[len - 1] == '\r') len--;
        if (line == 1 && len >= 8 && memcmp(p, "#version", 8) == 0) { p = le + 1; continue; }
        if (len == 0) { /* blank lines are allowed only at the end */
            for (const char *q = p; q < end; q++)
                if (*q != '\n' && *q != '\r') { rc = fdpo_error("%s:%zu: empty line inside the merges", path, line); break; }
            break;
        }
        const char *sp = memchr(p, ' ', len);
        if (!sp || sp == p || sp == p + len - 1 || memchr(sp + 1, ' ', (size_t)(p + len - sp - 1)))
            rc = fdpo_error("%s:%zu: expected two symbols separated by one space, got '%.*s'", path, line,
                            (int)(len > 80 ? 80 : len), p);
        else {
            char loc[PATH_MAX + 32];   /* "PATH:LINE", a path of up to PATH_MAX whole */
            snprintf(loc, sizeof loc, "%s:%zu", path, line);
            rc = add_merge(b, p, (size_t)(sp - p), sp + 1, (size_t)(p + len - sp - 1), loc);
        }
        p = le + 1;
    }
    return rc;
}

/* Every token must be a byte, a merge result, an added token or a special-looking token
 * ("<...>"): a vocabulary bigger than its merges explain means a truncated or mismatched
 * merges file. */
static int check_consistent(struct fdpo_bpe *b, const char *vocab_where, const char *merges_where) {
    for (int i = 0; i < 256; i++) {
        char s[4];
        s[put_utf8(byte_to_cp(i), s)] = 0;
        b->byte_id[i] = strmap_get(b, s, strlen(s));
        if (b->byte_id[i] < 0)
            return fdpo_error("%s: no token for byte 0x%02X (symbol '%s'): not a byte-level BPE vocabulary", vocab_where, i, s);
    }
    unsigned char *reach = fdpo_calloc(b->n_vocab, 1);
    for (int i = 0; i < 256; i++) reach[b->byte_id[i]] = 1;
    for (size_t i = 0; i < b->n_added; i++) reach[b->added[i]] = 1;
    for (size_t i = 0; i < b->pair_index.cap; i++)
        if (b->pair_index.slot[i]) reach[b->pairs[b->pair_index.slot[i] - 1].merged] = 1;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < b->n_vocab; i++) {
        size_t l = strlen(b->str[i]);
        int special = l >= 2 && b->str[i][0] == '<' && b->str[i][l - 1] == '>';
        if (!reach[i] && !special) { if (!bad) first = i; bad++; }
    }
    free(reach);
    if (bad)
        return fdpo_error("%s: vocab size %zu inconsistent with %s (%zu merges): %zu tokens are neither "
                          "bytes, merge results nor special tokens (first: '%s', id %zu)",
                          vocab_where, b->n_vocab, merges_where, b->n_merges, bad, b->str[first], first);
    return 0;
}

/* A boolean field of a tokenizer file: absent gives dflt; anything but true/false (1, "true",
 * null) is refused naming the field, as Hugging Face's loaders refuse it (serde's bool never
 * coerces; the Python AddedToken takes only a bool), rather than read as false. */
static int json_bool(const cJSON *obj, const char *key, int dflt, int *out, const char *where) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = dflt;
    if (!v) return 0;
    if (!cJSON_IsBool(v)) return fdpo_error("%s: '%s' must be true or false", where, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* ---- added tokens (tokenizer.json "added_tokens", tokenizer_config.json
 * "added_tokens_decoder") ----
 * Each entry {"id", "content", "special", ...} joins the vocabulary (when its content is not
 * there already) and is matched in text before pre-tokenisation: non-special ones always,
 * special ones when the caller allows specials. Collected into `list` as {id, content,
 * special} for add_mark once the vocabulary is built. */
static int added_entry(cJSON *vocab, cJSON *list, const cJSON *a, double id, const char *where) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(a, "content");
    if (!cJSON_IsString(c) || !*c->valuestring) return fdpo_error("%s: 'content' missing or not a non-empty string", where);
    if (!(id >= 0 && id <= 1e8 && id == (double)(int64_t)id)) return fdpo_error("%s: 'id' is not a non-negative integer", where);
    static const char *const unsupported[] = {"lstrip", "rstrip", "single_word"};
    int flag, special, normalized;
    for (size_t k = 0; k < 3; k++) {
        if (json_bool(a, unsupported[k], 0, &flag, where)) return -1;
        if (flag) return fdpo_error("%s: '%s' = true is not supported (token '%s')", where, unsupported[k], c->valuestring);
    }
    /* normalized is only checked: added tokens are matched in the raw text (docs/tokenizer.md) */
    if (json_bool(a, "special", 0, &special, where) || json_bool(a, "normalized", 0, &normalized, where)) return -1;
    const cJSON *have = cJSON_GetObjectItemCaseSensitive(vocab, c->valuestring);
    if (have && have->valuedouble != id)
        return fdpo_error("%s: token '%s' has id %.0f, but the vocabulary gives it id %.0f", where, c->valuestring, id, have->valuedouble);
    if (!have) cJSON_AddNumberToObject(vocab, c->valuestring, id);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "content", c->valuestring);
    if (!have) cJSON_AddStringToObject(e, "where", where); /* it joined the vocabulary here */
    cJSON_AddBoolToObject(e, "special", special);
    cJSON_AddItemToArray(list, e);
    return 0;
}

/* tokenizer.json "added_tokens": [{"id", "content", ...}] */
static int added_from_array(cJSON *vocab, cJSON *list, const cJSON *arr, const char *file) {
    if (!arr || cJSON_IsNull(arr)) return 0;
    if (!cJSON_IsArray(arr)) return fdpo_error("%s: added_tokens is not an array", file);
    size_t i = 0;
    for (const cJSON *a = arr->child; a; a = a->next, i++) {
        char where[PATH_MAX + 128];
        snprintf(where, sizeof where, "%s: added_tokens[%zu]", file, i);
        if (!cJSON_IsObject(a)) return fdpo_error("%s: not an object {\"id\", \"content\", ...}", where);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        if (!cJSON_IsNumber(id)) return fdpo_error("%s: 'id' missing or not a number", where);
        if (added_entry(vocab, list, a, id->valuedouble, where)) return -1;
    }
    return 0;
}

/* tokenizer_config.json "added_tokens_decoder": {"ID": {"content", "special", ...}} */
static int added_from_decoder(cJSON *vocab, cJSON *list, const cJSON *cfg, const char *file) {
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder");
    if (!d || cJSON_IsNull(d)) return 0;
    if (!cJSON_IsObject(d)) return fdpo_error("%s: added_tokens_decoder is not an object {\"id\": {...}}", file);
    for (const cJSON *a = d->child; a; a = a->next) {
        char where[PATH_MAX + 128];
        snprintf(where, sizeof where, "%s: added_tokens_decoder[\"%.40s\"]", file, a->string);
        /* transformers reads the key with int(): "0xC451", "5.0257e4", "50257.0" are errors
         * there, not ids (strtod took them) */
        size_t nd = strspn(a->string, "0123456789");
        if (!nd || a->string[nd]) return fdpo_error("%s: the key is not a token id (a decimal integer)", where);
        double id = strtod(a->string, NULL);
        if (!cJSON_IsObject(a)) return fdpo_error("%s: not an object {\"content\", ...}", where);
        if (added_entry(vocab, list, a, id, where)) return -1;
    }
    return 0;
}

static int added_len_desc(const void *x, const void *y, void *ctx) {
    const struct fdpo_bpe *b = ctx;
    int32_t i = *(const int32_t *)x, j = *(const int32_t *)y;
    size_t li = b->n_bytes[i], lj = b->n_bytes[j];
    return li != lj ? (li < lj ? 1 : -1) : (i > j) - (i < j);
}

/* After the vocabulary is built: added tokens are literal text (not byte-alphabet symbols),
 * marked special or not, and sorted longest first for matching. Called again for the
 * tokens tokenizer_config.json names (finish, keep_added 1): one of tokenizer.json's
 * added_tokens keeps what that file says (transformers' backend holds them already and adds a
 * named token only when it does not: a pad_token that add_tokens made non-special stays
 * matched as text is, and decoded); one that only added_tokens_decoder lists becomes special
 * (transformers adds those with special = its flag or being named). */
static void add_mark(struct fdpo_bpe *b, const cJSON *list, int keep_added) {
    if (!b->special) b->special = fdpo_calloc(b->n_vocab, 1);
    b->added = fdpo_realloc(b->added, (b->n_added + (size_t)cJSON_GetArraySize(list) + 1) * sizeof *b->added);
    for (const cJSON *e = list->child; e; e = e->next) {
        const char *c = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        int32_t id = strmap_get(b, c, strlen(c));
        if (id < 0) continue; /* cannot happen: added_entry put it in the vocabulary */
        int seen = 0;
        for (size_t k = 0; k < b->n_added; k++) seen |= b->added[k] == id;
        if (seen && keep_added && b->json_added && b->json_added[id]) continue;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special"))) b->special[id] = 1;
        if (seen) continue;
        free(b->str[id]); free(b->bytes[id]);
        set_token(b, id, c, 1);
        b->added[b->n_added++] = id;
    }
    qsort_r(b->added, b->n_added, sizeof *b->added, added_len_desc, b);
    for (size_t k = 0; k < b->n_added; k++) b->added_first[b->bytes[b->added[k]][0]] = 1;
}

/* ---- tokenizer_config.json: bos/eos/pad and the chat template ---- */
/* A special-token value: "text", {"content": "text", ...}, null or absent (*id -1). */
/* required: eos and bos, whose ids fdpo uses, must be in the vocabulary; another named token
 * that is not (transformers would add it as a new id, past the model's embedding, or take its
 * id from the legacy added_tokens.json, which fdpo does not read) is left out, as before fdpo
 * read those keys. The pad is one of those: fdpo pads with no token, and an old GPT-2
 * fine-tune whose special_tokens_map.json names an added "[PAD]" loads in transformers. */
static int config_token(const cJSON *v, const char *key, const char *file, const struct fdpo_bpe *b, int required,
                        int32_t *id) {
    *id = -1;
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v)) return fdpo_error("%s: %s must be a string or {\"content\": string}", file, key);
    *id = strmap_get(b, v->valuestring, strlen(v->valuestring));
    if (*id < 0 && required) return fdpo_error("%s: %s '%s' is not in the vocabulary", file, key, v->valuestring);
    return 0;
}

static void list_special(cJSON *list, const char *content) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "content", content);
    cJSON_AddBoolToObject(e, "special", 1);
    cJSON_AddItemToArray(list, e);
}

/* transformers adds every token the config names (its SPECIAL_TOKENS_ATTRIBUTES) that is not
 * an added token yet as a special added token: each goes into list (add_mark keeps the ones
 * the files added); eos, bos and pad ids into ebp. */
static int additional_specials(const cJSON *cfg, const char *file, const struct fdpo_bpe *b, cJSON *list) {
    const cJSON *more = cJSON_GetObjectItemCaseSensitive(cfg, "additional_special_tokens"), *e;
    if (!more || cJSON_IsNull(more)) return 0;
    if (!cJSON_IsArray(more)) return fdpo_error("%s: additional_special_tokens must be a list", file);
    size_t i = 0;
    cJSON_ArrayForEach(e, more) {
        char key[64];
        snprintf(key, sizeof key, "additional_special_tokens[%zu]", i++);
        int32_t id;
        if (config_token(e, key, file, b, 0, &id)) return -1;
        if (id >= 0) list_special(list, b->str[id]);
    }
    return 0;
}

/* The named tokens of tokenizer_config.json (cfg, may be NULL) and special_tokens_map.json
 * (map, NULL unless it applies: see read_special_tokens_map). transformers' legacy loading sets each key
 * the map has over the config's value (null included) and appends the map's
 * additional_special_tokens to the config's. */
static int config_specials(const cJSON *cfg, const char *file, const cJSON *map, const char *map_file,
                           const struct fdpo_bpe *b, cJSON *list, int32_t ebp[3]) {
    static const char *const KEYS[] = {"eos_token", "bos_token", "pad_token", "unk_token", "sep_token", "cls_token",
                                       "mask_token"};
    for (size_t k = 0; k < sizeof KEYS / sizeof KEYS[0]; k++) {
        int32_t id;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(map, KEYS[k]);
        const char *from = v ? map_file : file;
        if (!v) v = cJSON_GetObjectItemCaseSensitive(cfg, KEYS[k]);
        if (config_token(v, KEYS[k], from, b, k < 2, &id)) return -1;   /* eos, bos */
        if (k < 3) ebp[k] = id;
        if (id >= 0) list_special(list, b->str[id]);
    }
    return additional_specials(cfg, file, b, list) || additional_specials(map, map_file, b, list) ? -1 : 0;
}

/* chat_template as a list [{"name", "template"}]: transformers makes it a dict (a later name
 * wins) and renders the one named "default"; with none it refuses to render ("This model has
 * multiple chat templates with no default specified!"). *no_default then says so, for
 * fdpo_chat_for; an entry that is not {"name": string, "template": string} is refused here
 * (transformers fails to load it). */
static int chat_from_list(const cJSON *ct, const char *file, char **chat, char **no_default) {
    const cJSON *e, *def = NULL;
    char names[256] = "";
    size_t i = 0, at = 0;
    cJSON_ArrayForEach(e, ct) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name"), *tp = cJSON_GetObjectItemCaseSensitive(e, "template");
        if (!cJSON_IsObject(e)) return fdpo_error("%s: chat_template[%zu] is not an object {\"name\", \"template\"}", file, i);
        if (!cJSON_IsString(nm)) return fdpo_error("%s: chat_template[%zu].name is missing or not a string", file, i);
        if (!cJSON_IsString(tp)) return fdpo_error("%s: chat_template[%zu].template is missing or not a string", file, i);
        if (!strcmp(nm->valuestring, "default")) def = tp;
        if (at < sizeof names)
            at += (size_t)snprintf(names + at, sizeof names - at, "%s'%s'", i ? ", " : "", nm->valuestring);
        i++;
    }
    if (def) { *chat = fdpo_strdup(def->valuestring); return 0; }
    size_t n = strlen(file) + strlen(names) + 256;
    *no_default = fdpo_malloc(n);
    snprintf(*no_default, n, "%s: chat_template lists %zu template%s (%s) and none named 'default', the one "
             "transformers renders (it refuses too: \"This model has multiple chat templates with no default "
             "specified!\"); name one with --chat-template NAME", file, i, i == 1 ? "" : "s", names);
    return 0;
}

/* White_Space written out, for \s in patterns read from files (see the header comment). */
static const char WS_CLASS[] = WS;

/* Oniguruma's \w and \h (a hex digit; PCRE2's \h is horizontal space), as class contents.
 * \w is the engine's word set, not its doc's "Letter | Mark | Number | Connector_Punctuation":
 * Alphabetic (so the circled letters U+24B6.. are in it) | Mark | Decimal_Number |
 * Connector_Punctuation (U+2460 and the other No numbers are not). \w \W \b \B outside a
 * class also count Latin-1's superscripts and fractions (U+00B2 U+00B3 U+00B9 U+00BC..U+00BE)
 * as word characters: below U+0100 the engine tests them with its ISO-8859-1 ctype table; a
 * \w inside [...] is the Unicode word range, without them. Compared with libonig 6.9.8, the
 * one Hugging Face tokenizers bundles, over every code point assigned in Unicode 14 (that
 * libonig's and PCRE2 10.42's Unicode). */
#define WORD_RANGE "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}"
static const char WORD_CLASS[] = WORD_RANGE "\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}";
static const char WORD_CLASS_IN_BRACKETS[] = WORD_RANGE;
static const char HEX_CLASS[] = "0-9a-fA-F";

/* Whether pat turns case-insensitive matching on anywhere: an inline flag group (?i) or
 * (?i:...) with i among the flags it sets (before any '-'). */
static int caseless(const char *pat) {
    for (const char *p = pat; (p = strstr(p, "(?")) != NULL; p += 2) {
        if (p > pat && p[-1] == '\\') continue;
        for (const char *q = p + 2; *q && *q != ')' && *q != ':' && *q != '-'; q++)
            if (*q == 'i') return 1;
            else if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z'))) break;
    }
    return 0;
}

/* The file's regex with the escapes whose meaning differs between Oniguruma (Hugging Face
 * tokenizers compiles Split patterns with it) and PCRE2 spelled out as Oniguruma reads them:
 * \s and \S as Unicode White_Space (PCRE2's \s differs at U+180E), \w \W and the \b \B
 * built on them (PCRE2 10.42's \w has no marks and only _ of the connectors), \h \H (hex
 * digits in Oniguruma). A negated one (\S \W \H) inside a class cannot be expanded in place
 * and is refused. */
static char *pattern_rewrite(const char *pat, const char *where) {
    size_t n = strlen(pat), cap = 4 * n + 64 + 16 * sizeof WS_CLASS;
    char *out = fdpo_malloc(cap);
    size_t k = 0;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        while (k + 2 * sizeof WS_CLASS + 4 * sizeof WORD_CLASS + 64 > cap) { cap *= 2; out = fdpo_realloc(out, cap); }
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char d = pat[++i];
            const char *cls = d == 's' || d == 'S' ? WS_CLASS
                            : d == 'w' || d == 'W' ? (in_class ? WORD_CLASS_IN_BRACKETS : WORD_CLASS)
                            : d == 'h' || d == 'H' ? HEX_CLASS : NULL;
            if (cls && in_class && (d == 'S' || d == 'W' || d == 'H')) {
                free(out);
                fdpo_error("%s: \\%c inside a character class is not supported", where, d);
                return NULL;
            }
            if (cls) k += (size_t)sprintf(out + k, in_class ? "%s" : d >= 'a' ? "[%s]" : "[^%s]", cls);
            else if ((d == 'b' || d == 'B') && !in_class) /* a word boundary on Oniguruma's \w */
                k += (size_t)sprintf(out + k, d == 'b' ? "(?:(?<=[%s])(?![%s])|(?<![%s])(?=[%s]))"
                                                       : "(?:(?<=[%s])(?=[%s])|(?<![%s])(?![%s]))",
                                     WORD_CLASS, WORD_CLASS, WORD_CLASS, WORD_CLASS);
            else { out[k++] = c; out[k++] = d; }
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            out[k++] = c;
            if (i + 1 < n && pat[i + 1] == '^') out[k++] = pat[++i];
            if (i + 1 < n && pat[i + 1] == ']') out[k++] = pat[++i]; /* a leading ] is literal */
            continue;
        }
        if (c == '[' && in_class && pat[i + 1] == ':') { /* a POSIX class [:digit:]: its ] does not end the outer class */
            int negated = pat[i + 2] == '^';
            size_t name = i + 2 + negated, j = name;
            while ((pat[j] >= 'a' && pat[j] <= 'z') || (pat[j] >= 'A' && pat[j] <= 'Z')) j++;
            if (pat[j] == ':' && pat[j + 1] == ']') {
                int len = (int)(j - name);
                #define POSIX_IS(s) (len == (int)strlen(s) && !strncmp(pat + name, s, (size_t)len))
                /* PCRE2 with UCP has Hugging Face's Oniguruma sets for these (digit, xdigit, cntrl
                 * measured over every code point against libonig 6.9.8; punct, graph, print, ascii
                 * against tokenizers 0.23.2, whose bundled Oniguruma's punct has $ + < as PCRE2's);
                 * the others are spelled as libonig 6.9.8 matches them (every code point compared):
                 * [:word:] and [:space:] are Oniguruma's [\w] and \s, [:alpha:] is Alphabetic (PCRE2's
                 * has no marks), [:alnum:] Alphabetic | Nd (PCRE2's has No numbers), [:upper:] and
                 * [:lower:] Uppercase and Lowercase (PCRE2's are Lu and Ll), [:blank:] tab | Zs
                 * (PCRE2's has U+180E). A negated one of a single property is its \P; the other
                 * negated ones cannot be written inside a class, and under (?i) Oniguruma closes
                 * [:upper:] and [:lower:] over case (PCRE2's \p does not): refused. */
                const char *set = POSIX_IS("word") ? WORD_CLASS_IN_BRACKETS : POSIX_IS("space") ? WS_CLASS
                                : POSIX_IS("alnum") ? "\\p{Alphabetic}\\p{Nd}" : POSIX_IS("blank") ? "\\t\\p{Zs}" : NULL;
                const char *prop = POSIX_IS("alpha") ? "Alphabetic" : POSIX_IS("upper") ? "Uppercase"
                                 : POSIX_IS("lower") ? "Lowercase" : NULL;
                if (POSIX_IS("digit") || POSIX_IS("xdigit") || POSIX_IS("cntrl") || POSIX_IS("punct") ||
                    POSIX_IS("graph") || POSIX_IS("print") || POSIX_IS("ascii")) {
                    while (k + (j + 2 - i) + 1 > cap) { cap *= 2; out = fdpo_realloc(out, cap); }
                    memcpy(out + k, pat + i, j + 2 - i); k += j + 2 - i;
                } else if (!negated && set) {
                    k += (size_t)sprintf(out + k, "%s", set);
                } else if (prop && !(pat[name] != 'a' && caseless(pat))) {
                    k += (size_t)sprintf(out + k, "\\%c{%s}", negated ? 'P' : 'p', prop);
                } else {
                    free(out);
                    fdpo_error("%s: the POSIX class [:%s%.*s:] in the regex '%.200s' is not supported "
                               "(%s)", where, negated ? "^" : "", len, pat + name, pat,
                               prop ? "Oniguruma matches it case-insensitively under (?i), PCRE2 does not"
                               : set ? "a negated class of several properties cannot be written inside a PCRE2 class"
                               : "PCRE2's set differs from Oniguruma's");
                    return NULL;
                }
                #undef POSIX_IS
                i = j + 1;
                continue;
            }
        }
        if ((c == '[' || (c == '&' && pat[i + 1] == '&')) && in_class) { /* Oniguruma's nested class or */
            free(out);                                                 /* intersection: PCRE2 reads literals */
            fdpo_error("%s: %s inside a character class in the regex '%.200s' is not supported", where,
                       c == '[' ? "a nested class '['" : "a class intersection '&&'", pat);
            return NULL;
        }
        if (c == ']' && in_class) in_class = 0;
        out[k++] = c;
    }
    out[k] = 0;
    return out;
}

/* jinja: chat_template.jinja beside the files (NULL: none), which transformers (4.47 on)
 * reads in place of tokenizer_config.json's chat_template. */
static int finish(fdpo_tokenizer **out, struct fdpo_bpe *b, const char *where, const cJSON *cfg, const char *cfg_name,
                  const cJSON *map, const char *map_name, const char *jinja) {
    int32_t ebp[3] = {-1, -1, -1};
    cJSON *named = cJSON_CreateArray();
    if ((cfg || map) && config_specials(cfg, cfg_name, map, map_name, b, named, ebp)) { cJSON_Delete(named); return -1; }
    int32_t eos = ebp[0], bos = ebp[1], pad = ebp[2];
    if (eos < 0) eos = strmap_get(b, EOT_TEXT, EOT_LEN);
    if (eos < 0) {
        cJSON_Delete(named);
        fdpo_error("%s: no '%s' token and no eos_token in tokenizer_config.json", where, EOT_TEXT);
        return -1;
    }
    /* the eos, also the default one (GPT2Tokenizer's eos_token default), however the files list it */
    list_special(named, b->str[eos]);
    add_mark(b, named, 1);
    cJSON_Delete(named);
    char *chat = NULL, *no_default = NULL;
    if (jinja) chat = fdpo_strdup(jinja);
    else if (cfg) {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        if (cJSON_IsString(ct)) chat = fdpo_strdup(ct->valuestring);
        else if (cJSON_IsArray(ct)) {
            if (chat_from_list(ct, cfg_name, &chat, &no_default)) return -1;
        } else if (ct && !cJSON_IsNull(ct)) {
            return fdpo_error("%s: chat_template must be a string or a list of {\"name\", \"template\"}", cfg_name);
        }
    }
    char *pat = pattern_rewrite(b->pattern ? b->pattern : GPT2_PATTERN, where);
    if (!pat) { free(chat); free(no_default); return -1; }
    int err; PCRE2_SIZE eoff;
    b->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &eoff, NULL);
    free(pat);
    if (!b->re) {
        free(chat); free(no_default);
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return fdpo_error("%s: pre_tokenizer regex: %s at offset %zu", where, (char *)msg, (size_t)eoff);
    }
    if (pcre2_jit_compile(b->re, PCRE2_JIT_COMPLETE) != 0) { free(chat); free(no_default); return fdpo_error("%s: pre_tokenizer regex: PCRE2 JIT unavailable", where); }
    if (b->digits) {
        b->digits_re = pcre2_compile((PCRE2_SPTR)(b->digits == 1 ? "\\p{N}" : "\\p{N}+"), PCRE2_ZERO_TERMINATED,
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &eoff, NULL);
        if (!b->digits_re || pcre2_jit_compile(b->digits_re, PCRE2_JIT_COMPLETE) != 0) {
            free(chat); free(no_default);
            return fdpo_error("%s: Digits pre-tokenizer: cannot compile \\p{N}", where);
        }
    }
    fdpo_tokenizer *t = fdpo_calloc(1, sizeof *t);
    t->kind = FDPO_TOK_BPE;
    t->vocab_size = b->n_vocab;
    t->eot = eos;
    t->bos = bos;
    t->pad = pad;
    t->bpe = b;
    t->chat_template_src = chat;
    t->chat_template_problem = no_default;
    t->chat_template_origin = jinja ? "chat_template.jinja" : NULL;
    *out = t;
    return 0;
}

static cJSON *parse_config(const char *name, const char *text, size_t len) {
    if (!text) return NULL;
    cJSON *c = parse_json(name, text, len);
    if (c && !cJSON_IsObject(c)) { cJSON_Delete(c); fdpo_error("%s: not a JSON object", name); return NULL; }
    return c;
}

/* special_tokens_map.json counts only when tokenizer_config.json has no added_tokens_decoder
 * (a directory saved before transformers 4.34, or written by hand): transformers reads it
 * then, and not otherwise. *map NULL when it does not apply. */
static int read_special_tokens_map(const cJSON *cfg, const char *sp, const char *stext, size_t slen, cJSON **map) {
    *map = NULL;
    if (!stext || cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder")) return 0;
    return (*map = parse_config(sp, stext, slen)) ? 0 : -1;
}

static void keep_config(struct fdpo_bpe *b, const char *text, size_t len) {
    if (!text) return;
    b->src_config = fdpo_malloc(len + 1);
    memcpy(b->src_config, text, len); b->src_config[len] = 0;
    b->src_config_len = len;
}

/* tokenizer_config.json "tokenizer_class" beside vocab.json + merges.txt: which tokenizer
 * transformers builds from the pair. GPT-2's (absent or null too: GPT-2 as before) reads as
 * is; Qwen2's is the Qwen2 regex and NFC, as its converter writes them into a
 * tokenizer.json (Qwen2TokenizerFast, what AutoTokenizer loads). Any other class may split
 * or normalise otherwise, or add a prefix space: refused rather than encoded as GPT-2. */
static int pair_tokenizer_class(struct fdpo_bpe *b, const cJSON *cfg, const char *cp) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(cfg, "tokenizer_class");
    if (!c || cJSON_IsNull(c)) return 0;
    if (!cJSON_IsString(c)) return fdpo_error("%s: tokenizer_class must be a string", cp);
    const char *s = c->valuestring;
    if (!strcmp(s, "GPT2Tokenizer") || !strcmp(s, "GPT2TokenizerFast")) return 0;
    if (!strcmp(s, "Qwen2Tokenizer") || !strcmp(s, "Qwen2TokenizerFast")) {
        b->pattern = fdpo_strdup(QWEN2_PATTERN);
        b->nfc = 1;
        return 0;
    }
    return fdpo_error("%s: tokenizer_class '%s' is not supported beside a vocabulary and merges file "
                      "(GPT2Tokenizer, GPT2TokenizerFast, Qwen2Tokenizer and Qwen2TokenizerFast are; "
                      "other tokenizers need their tokenizer.json)", cp, s);
}

/* chat_template.jinja as read (jtext NULL: none), kept to be saved: see finish */
static int keep_jinja(struct fdpo_bpe *b, const char *jp, const char *jtext, size_t jlen) {
    if (!jtext) return 0;
    if (check_utf8(jp, jtext, jlen)) return -1;
    b->src_jinja = fdpo_malloc(jlen + 1);
    memcpy(b->src_jinja, jtext, jlen); b->src_jinja[jlen] = 0;
    b->src_jinja_len = jlen;
    return 0;
}

/* A file beside the tokenizer files, if any (*text NULL when absent). */
static int read_beside(const char *dir, const char *name, char **path, char **text, size_t *len) {
    *path = fdpo_path_join(dir, name);
    *text = NULL; *len = 0;
    if (!fdpo_file_exists(*path)) return 0;
    return (*text = fdpo_read_file(*path, len)) ? 0 : -1;
}
/* tokenizer_config.json, chat_template.jinja and special_tokens_map.json (path, text, length) */
typedef struct { char *cp, *ctext, *jp, *jtext, *sp, *stext; size_t clen, jlen, slen; } beside;
static int read_config(const char *dir, beside *c) {
    memset(c, 0, sizeof *c);
    return read_beside(dir, "tokenizer_config.json", &c->cp, &c->ctext, &c->clen) ||
           read_beside(dir, "chat_template.jinja", &c->jp, &c->jtext, &c->jlen) ||
           read_beside(dir, "special_tokens_map.json", &c->sp, &c->stext, &c->slen) ? -1 : 0;
}
static void beside_free(beside *c) { free(c->cp); free(c->ctext); free(c->jp); free(c->jtext); free(c->sp); free(c->stext); }

/* the config files of c parsed: *cfg (NULL: none), *map (NULL: none, or it does not apply) */
static int parse_beside(const beside *c, cJSON **cfg, cJSON **map) {
    *cfg = *map = NULL;
    if (c->ctext && !(*cfg = parse_config(c->cp, c->ctext, c->clen))) return -1;
    return read_special_tokens_map(*cfg, c->sp, c->stext, c->slen, map);
}

/* keep the files as read, to be saved */
static int keep_beside(struct fdpo_bpe *b, const beside *c) {
    keep_config(b, c->ctext, c->clen);
    if (c->stext) {
        b->src_map = fdpo_malloc(c->slen + 1);
        memcpy(b->src_map, c->stext, c->slen); b->src_map[c->slen] = 0;
        b->src_map_len = c->slen;
    }
    return keep_jinja(b, c->jp, c->jtext, c->jlen);
}

static fdpo_tokenizer *parse_pair(const char *vp, const char *vtext, size_t vlen, const char *mp, const char *mtext,
                                  size_t mlen, const beside *c) {
    struct fdpo_bpe *b = bpe_new();
    fdpo_tokenizer *t = NULL;
    const char *cp = c->cp;
    cJSON *j = NULL, *cfg = NULL, *map = NULL, *list = cJSON_CreateArray();
    if (parse_beside(c, &cfg, &map)) goto done;
    if (cfg && pair_tokenizer_class(b, cfg, cp)) goto done;
    if (!(j = parse_json(vp, vtext, vlen))) goto done;
    if (cfg && cJSON_IsObject(j) && added_from_decoder(j, list, cfg, cp)) goto done;
    if (load_vocab_object(b, j, vp, list)) goto done;
    cJSON_Delete(j); j = NULL;
    if (cJSON_GetArraySize(list)) add_mark(b, list, 0);
    if (load_merges(b, mp, mtext, mlen)) goto done;
    if (check_consistent(b, vp, mp)) goto done;
    if (keep_beside(b, c)) goto done;
    if (finish(&t, b, vp, cfg, cp, map, c->sp, b->src_jinja)) goto done;
done:
    cJSON_Delete(j); cJSON_Delete(cfg); cJSON_Delete(map); cJSON_Delete(list);
    if (!t) fdpo_bpe_free(b);
    return t;
}

fdpo_tokenizer *fdpo_tokenizer_bpe_parse_config(const char *vp, const char *vtext, size_t vlen,
                                                const char *mp, const char *mtext, size_t mlen,
                                                const char *cp, const char *ctext, size_t clen) {
    beside c = {.cp = (char *)cp, .ctext = (char *)ctext, .clen = clen};
    return parse_pair(vp, vtext, vlen, mp, mtext, mlen, &c);
}

fdpo_tokenizer *fdpo_tokenizer_bpe_parse(const char *vp, const char *vtext, size_t vlen,
                                         const char *mp, const char *mtext, size_t mlen) {
    return fdpo_tokenizer_bpe_parse_config(vp, vtext, vlen, mp, mtext, mlen, NULL, NULL, 0);
}


static fdpo_tokenizer *load_pair(const char *dir, const char *vname, const char *mname) {
    char *vp = fdpo_path_join(dir, vname), *mp = fdpo_path_join(dir, mname);
    char *vtext = NULL, *mtext = NULL;
    size_t vlen = 0, mlen = 0;
    beside c = {0};
    fdpo_tokenizer *t = NULL;
    if (!fdpo_file_exists(mp)) fdpo_error("%s: missing merges file %s (beside %s)", mp, mname, vname);
    else if ((vtext = fdpo_read_file(vp, &vlen)) && (mtext = fdpo_read_file(mp, &mlen)) && read_config(dir, &c) == 0)
        t = parse_pair(vp, vtext, vlen, mp, mtext, mlen, &c);
    free(vtext); free(mtext); beside_free(&c);
    free(vp); free(mp);
    return t;
}

static fdpo_tokenizer *parse_json_file(const char *p, const char *text, size_t len, const beside *c);

static fdpo_tokenizer *load_tokenizer_json(const char *dir) {
    char *p = fdpo_path_join(dir, "tokenizer.json");
    size_t n = 0;
    char *text = fdpo_read_file(p, &n);
    beside c = {0};
    fdpo_tokenizer *t = NULL;
    if (text && read_config(dir, &c) == 0) t = parse_json_file(p, text, n, &c);
    free(text); beside_free(&c);
    free(p);
    return t;
}

/* What fdpo cannot run, refused by name: SentencePiece-style BPE (Llama-2, TinyLlama). */
static int refuse_sentencepiece(const char *p, const char *why) {
    return fdpo_error("%s: %s: this is SentencePiece-style BPE (Llama-2/TinyLlama: '\xe2\x96\x81' for spaces + "
                      "byte fallback), which fdpo does not support; only byte-level BPE (GPT-2, Llama-3, Qwen2, "
                      "SmolLM2) is", p, why);
}

/* normalizer: none, or NFC (applied by the encoder through ICU: b->nfc), or a Sequence of those */
static int check_normalizer(struct fdpo_bpe *b, const char *p, const cJSON *nz, int depth) {
    if (!nz || cJSON_IsNull(nz)) return 0;
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(nz, "type");
    const char *s = cJSON_IsString(ty) ? ty->valuestring : NULL;
    if (!s) return fdpo_error("%s: normalizer.type missing or not a string", p);
    if (!strcmp(s, "NFC")) { b->nfc = 1; return 0; }
    if (!strcmp(s, "Sequence") && depth == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(nz, "normalizers"), *e;
        if (!cJSON_IsArray(list)) return fdpo_error("%s: normalizer.normalizers is not an array", p);
        cJSON_ArrayForEach(e, list) if (check_normalizer(b, p, e, 1)) return -1;
        return 0;
    }
    if (!strcmp(s, "Prepend") || !strcmp(s, "Replace")) return refuse_sentencepiece(p, "normalizer.type is Prepend/Replace");
    return fdpo_error("%s: normalizer.type '%s' is not supported (none or NFC are)", p, s);
}

/* pre_tokenizer: ByteLevel (GPT-2's regex unless use_regex = false), or a Sequence of at
 * most one Split (Isolated, the regex to use) and a ByteLevel with use_regex = false, as
 * Llama-3 and Qwen2 files have it, optionally after one Digits. Exactly one regex: a
 * ByteLevel with use_regex = false needs a Split (at top level or in a Sequence). Sets
 * b->pattern (NULL = GPT-2's). */
static int byte_level(const char *p, const cJSON *e, const char *field, int *use_regex) {
    char where[PATH_MAX + 96];
    snprintf(where, sizeof where, "%s: %s", p, field);
    int prefix;
    if (json_bool(e, "add_prefix_space", 0, &prefix, where) || json_bool(e, "use_regex", 1, use_regex, where)) return -1;
    if (prefix) return fdpo_error("%s: %s.add_prefix_space = true is not supported", p, field);
    return 0;
}
static int split_pattern(struct fdpo_bpe *b, const char *p, const cJSON *e, const char *field) {
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(e, "pattern");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex"), *str = cJSON_GetObjectItemCaseSensitive(pat, "String");
    const cJSON *beh = cJSON_GetObjectItemCaseSensitive(e, "behavior");
    char where[PATH_MAX + 96];
    snprintf(where, sizeof where, "%s: %s", p, field);
    int invert;
    if (json_bool(e, "invert", 0, &invert, where)) return -1;
    if (invert) return fdpo_error("%s: %s.invert = true is not supported", p, field);
    if (!cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated"))
        return fdpo_error("%s: %s.behavior '%s' is not supported (Isolated is)", p, field,
                          cJSON_IsString(beh) ? beh->valuestring : "(missing)");
    if (b->pattern) return fdpo_error("%s: %s: a second Split is not supported", p, field);
    /* An empty pattern matches empty everywhere: every code point is a piece, as in Hugging
     * Face, which escapes a String into a regex ("" stays "") */
    if (cJSON_IsString(re)) b->pattern = fdpo_strdup(re->valuestring);
    else if (cJSON_IsString(str)) { /* a literal: metacharacters escaped */
        const char *t = str->valuestring;
        char *q = b->pattern = fdpo_malloc(2 * strlen(t) + 1);
        for (; *t; t++) {
            if (strchr("\\^$.|?*+()[]{}", *t)) *q++ = '\\';
            *q++ = *t;
        }
        *q = 0;
    } else return fdpo_error("%s: %s.pattern must be {\"Regex\": string} or {\"String\": string}", p, field);
    return 0;
}
static int check_pre_tokenizer(struct fdpo_bpe *b, const char *p, const cJSON *pre) {
    if (!pre || cJSON_IsNull(pre))
        return fdpo_error("%s: pre_tokenizer is null; byte-level BPE needs ByteLevel (or Sequence [Split, ByteLevel])", p);
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(pre, "type");
    if (!cJSON_IsString(ty)) return fdpo_error("%s: pre_tokenizer.type missing or not a string", p);
    int use_regex = 1;
    if (!strcmp(ty->valuestring, "ByteLevel")) {
        if (byte_level(p, pre, "pre_tokenizer", &use_regex)) return -1;
        if (!use_regex) return fdpo_error("%s: pre_tokenizer ByteLevel with use_regex = false and no Split is not supported", p);
        return 0;
    }
    if (!strcmp(ty->valuestring, "Metaspace")) return refuse_sentencepiece(p, "pre_tokenizer.type is Metaspace");
    if (strcmp(ty->valuestring, "Sequence"))
        return fdpo_error("%s: pre_tokenizer.type '%s' is not supported (ByteLevel, or Sequence of Split and ByteLevel)", p, ty->valuestring);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    if (!cJSON_IsArray(list)) return fdpo_error("%s: pre_tokenizer.pretokenizers is not an array", p);
    int n_byte = 0, byte_regex = 0;
    size_t i = 0, byte_at = 0;
    for (const cJSON *e = list->child; e; e = e->next, i++) {
        char field[64];
        snprintf(field, sizeof field, "pre_tokenizer.pretokenizers[%zu]", i);
        const cJSON *et = cJSON_GetObjectItemCaseSensitive(e, "type");
        const char *s = cJSON_IsString(et) ? et->valuestring : "(missing)";
        if (!strcmp(s, "Digits")) { /* before any regex: each digit (or run) its own piece */
            if (n_byte || b->pattern || b->digits)
                return fdpo_error("%s: %s: Digits is supported only first in the sequence", p, field);
            char where[PATH_MAX + 96];
            snprintf(where, sizeof where, "%s: %s", p, field);
            int individual;
            if (json_bool(e, "individual_digits", 0, &individual, where)) return -1;
            b->digits = individual ? 1 : 2;
        } else if (!strcmp(s, "Split")) {
            if (n_byte) return fdpo_error("%s: %s: a Split after ByteLevel is not supported", p, field);
            if (split_pattern(b, p, e, field)) return -1;
        } else if (!strcmp(s, "ByteLevel")) {
            if (n_byte++) return fdpo_error("%s: %s: a second ByteLevel is not supported", p, field);
            if (byte_level(p, e, field, &byte_regex)) return -1;
            byte_at = i;
        } else if (!strcmp(s, "Metaspace")) {
            char why[96];
            snprintf(why, sizeof why, "%s.type is Metaspace", field);
            return refuse_sentencepiece(p, why);
        } else {
            return fdpo_error("%s: %s.type '%s' is not supported (Digits, Split, ByteLevel)", p, field, s);
        }
    }
    if (!n_byte) return fdpo_error("%s: pre_tokenizer Sequence has no ByteLevel: not a byte-level BPE", p);
    if (byte_regex && b->pattern)
        return fdpo_error("%s: pre_tokenizer: Split followed by ByteLevel with use_regex = true (two regexes) is not supported", p);
    /* No regex at all (Hugging Face then byte-pair encodes each whole stretch, or each stretch
     * between digits): refused as at top level, not run with GPT-2's regex. */
    if (!byte_regex && !b->pattern)
        return fdpo_error("%s: pre_tokenizer.pretokenizers[%zu] ByteLevel with use_regex = false and no Split is not supported",
                          p, byte_at);
    return 0;
}

/* decoder: ByteLevel or none; a SentencePiece decoder chain is refused by name. */
static int check_decoder(const char *p, const cJSON *d) {
    if (!d || cJSON_IsNull(d)) return 0;
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(d, "type");
    const char *s = cJSON_IsString(ty) ? ty->valuestring : "(missing)";
    if (!strcmp(s, "ByteLevel")) return 0;
    if (!strcmp(s, "Sequence") || !strcmp(s, "ByteFallback") || !strcmp(s, "Metaspace"))
        return refuse_sentencepiece(p, "decoder is not ByteLevel");
    return fdpo_error("%s: decoder.type '%s' is not supported (ByteLevel is)", p, s);
}

fdpo_tokenizer *fdpo_tokenizer_bpe_parse_json(const char *p, const char *text, size_t len) {
    return fdpo_tokenizer_bpe_parse_json_config(p, text, len, NULL, NULL, 0);
}

fdpo_tokenizer *fdpo_tokenizer_bpe_parse_json_config(const char *p, const char *text, size_t len,
                                                     const char *cp, const char *ctext, size_t clen) {
    beside c = {.cp = (char *)cp, .ctext = (char *)ctext, .clen = clen};
    return parse_json_file(p, text, len, &c);
}

static fdpo_tokenizer *parse_json_file(const char *p, const char *text, size_t len, const beside *c) {
    struct fdpo_bpe *b = bpe_new();
    fdpo_tokenizer *t = NULL;
    const char *cp = c->cp;
    cJSON *v2 = NULL, *cfg = NULL, *map = NULL, *list = cJSON_CreateArray();
    cJSON *j = parse_json(p, text, len);
    if (!j) goto done;
    if (!cJSON_IsObject(j)) { fdpo_error("%s: not a JSON object", p); goto done; }
    if (parse_beside(c, &cfg, &map)) goto done;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (!cJSON_IsObject(model)) { fdpo_error("%s: no \"model\" object", p); goto done; }
    if (type && !(cJSON_IsString(type) && strcmp(type->valuestring, "BPE") == 0)) {
        fdpo_error("%s: model.type is %s; only \"BPE\" (byte-level) is supported", p,
                   cJSON_IsString(type) ? type->valuestring : "not a string");
        goto done;
    }
    char model_where[PATH_MAX + 16];
    snprintf(model_where, sizeof model_where, "%s: model", p);
    int byte_fallback, ignore_merges;
    if (json_bool(model, "byte_fallback", 0, &byte_fallback, model_where) ||
        json_bool(model, "ignore_merges", 0, &ignore_merges, model_where)) goto done;
    if (byte_fallback) { refuse_sentencepiece(p, "model.byte_fallback is true"); goto done; }
    static const char *must_be_null[] = {"continuing_subword_prefix", "end_of_word_suffix", "dropout"};
    for (size_t i = 0; i < 3; i++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(model, must_be_null[i]);
        if (f && !cJSON_IsNull(f) && !(cJSON_IsString(f) && !*f->valuestring)) {
            fdpo_error("%s: model.%s is set; byte-level BPE does not use it", p, must_be_null[i]);
            goto done;
        }
    }
    if (check_normalizer(b, p, cJSON_GetObjectItemCaseSensitive(j, "normalizer"), 0)) goto done;
    if (check_pre_tokenizer(b, p, cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer"))) goto done;
    if (check_decoder(p, cJSON_GetObjectItemCaseSensitive(j, "decoder"))) goto done;
    b->ignore_merges = ignore_merges;
    char where[PATH_MAX + 128];   /* "PATH: model.vocab", a path of up to PATH_MAX whole */
    snprintf(where, sizeof where, "%s: model.vocab", p);
    /* added tokens outside model.vocab extend it (literal text, e.g. <|endoftext|>) */
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) { fdpo_error("%s: model.vocab is not a JSON object {token: id}", p); goto done; }
    v2 = cJSON_Duplicate(vocab, 1);
    if (added_from_array(v2, list, cJSON_GetObjectItemCaseSensitive(j, "added_tokens"), p)) goto done;
    const int n_json_added = cJSON_GetArraySize(list);
    if (cfg && added_from_decoder(v2, list, cfg, cp)) goto done;
    if (load_vocab_object(b, v2, where, list)) goto done;
    b->json_added = fdpo_calloc(b->n_vocab ? b->n_vocab : 1, 1);
    for (int i = 0; i < n_json_added; i++) {
        const char *c = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(list, i), "content")->valuestring;
        int32_t id = strmap_get(b, c, strlen(c));
        if (id >= 0) b->json_added[id] = 1;
    }
    if (b->ignore_merges) { /* ids checked by load_vocab_object: v2 holds them all */
        b->in_model = fdpo_calloc(b->n_vocab, 1);
        for (const cJSON *e = vocab->child; e; e = e->next) b->in_model[(size_t)e->valuedouble] = 1;
    }
    if (cJSON_GetArraySize(list)) add_mark(b, list, 0);
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) { fdpo_error("%s: model.merges is not an array", p); goto done; }
    merges_alloc(b, (size_t)cJSON_GetArraySize(merges));
    size_t k = 0;
    snprintf(where, sizeof where, "%s: model.merges", p);
    for (const cJSON *m = merges->child; m; m = m->next, k++) {
        const char *a = NULL, *c = NULL; size_t la = 0, lc = 0;
        if (cJSON_IsString(m)) {
            const char *sp = strchr(m->valuestring, ' ');
            if (sp && sp != m->valuestring && sp[1] && !strchr(sp + 1, ' ')) {
                a = m->valuestring; la = (size_t)(sp - a); c = sp + 1; lc = strlen(c);
            }
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
                   cJSON_IsString(m->child->next)) {
            a = m->child->valuestring; la = strlen(a); c = m->child->next->valuestring; lc = strlen(c);
        }
        if (!a || !la || !lc) { fdpo_error("%s[%zu]: expected \"a b\" or [\"a\", \"b\"]", where, k); goto done; }
        char w[PATH_MAX + 160];
        snprintf(w, sizeof w, "%s[%zu]", where, k);
        if (add_merge(b, a, la, c, lc, w)) goto done;
    }
    snprintf(where, sizeof where, "%s: model.vocab", p);
    if (check_consistent(b, where, "model.merges")) goto done;
    b->src_json = fdpo_malloc(len + 1);
    memcpy(b->src_json, text, len); b->src_json[len] = 0;
    b->src_json_len = len;
    if (keep_beside(b, c)) goto done;
    if (finish(&t, b, p, cfg, cp, map, c->sp, b->src_jinja)) goto done;
done:
    cJSON_Delete(j); cJSON_Delete(v2); cJSON_Delete(cfg); cJSON_Delete(map); cJSON_Delete(list);
    if (!t) fdpo_bpe_free(b);
    return t;
}

static int has(const char *dir, const char *name) {
    char *p = fdpo_path_join(dir, name);
    int r = fdpo_file_exists(p);
    free(p);
    return r;
}

int fdpo_bpe_dir_has_files(const char *dir) {
    return has(dir, "vocab.json") || has(dir, "merges.txt") || has(dir, "encoder.json") ||
           has(dir, "vocab.bpe") || has(dir, "tokenizer.json");
}

/* tokenizer.json first, as Hugging Face's fast tokenizers: it alone carries the regex and
 * the added tokens (Qwen2 directories hold vocab.json + merges.txt as well). */
fdpo_tokenizer *fdpo_bpe_load_dir(const char *dir) {
    int v = has(dir, "vocab.json"), m = has(dir, "merges.txt");
    int e = has(dir, "encoder.json"), vb = has(dir, "vocab.bpe"), tj = has(dir, "tokenizer.json");
    if (tj) return load_tokenizer_json(dir);
    if (v && m) return load_pair(dir, "vocab.json", "merges.txt");
    if (e && vb) return load_pair(dir, "encoder.json", "vocab.bpe");
    char *p;
    if (v || e) {
        p = fdpo_path_join(dir, v ? "merges.txt" : "vocab.bpe");
        fdpo_error("%s: missing merges file (needed beside %s)", p, v ? "vocab.json" : "encoder.json");
    } else {
        p = fdpo_path_join(dir, m ? "vocab.json" : "encoder.json");
        fdpo_error("%s: missing vocabulary file (needed beside %s)", p, m ? "merges.txt" : "vocab.bpe");
    }
    free(p);
    return NULL;
}

static int save_text(const char *dir, const char *name, const char *text, size_t len) {
    char *p = fdpo_path_join(dir, name);
    int rc = fdpo_write_file_atomic(p, text, len);
    free(p);
    return rc;
}

/* ---- saving: the tokenizer.json read (verbatim), else vocab.json + merges.txt; and the
 * tokenizer_config.json read ---- */
/* tokenizer_config.json (and chat_template.jinja): as read, with the template replaced by
 * the named built-in's source when the tokenizer's template was named (a run's
 * --chat-template): in chat_template.jinja when the files had one (it is read in place of
 * the config's), else in the config's "chat_template". */
static int save_config(const fdpo_tokenizer *t, const char *dir) {
    const struct fdpo_bpe *b = t->bpe;
    fdpo_chat_kind kind, file_kind;
    const char *name = t->chat_template_name;
    /* a named built-in of the file's own family renders with the file's parameters (default
     * system turn, leading bos: fdpo_chat_for), so the file's template is kept: the built-in
     * source would drop them for later commands */
    int keep = !name || !strcmp(name, "auto") || fdpo_chat_parse_name(name, &kind) ||
               (t->chat_template_src && fdpo_chat_detect(t->chat_template_src, &file_kind) == 0 && file_kind == kind);
    if (keep || b->src_jinja) {
        if (b->src_config && save_text(dir, "tokenizer_config.json", b->src_config, b->src_config_len)) return -1;
        if (!b->src_jinja) return 0;
        if (keep) return save_text(dir, "chat_template.jinja", b->src_jinja, b->src_jinja_len);
        char *jinja = fdpo_chat_source(t, kind);
        int rc = save_text(dir, "chat_template.jinja", jinja, strlen(jinja));
        free(jinja);
        return rc;
    }
    cJSON *cfg = b->src_config ? cJSON_Parse(b->src_config) : cJSON_CreateObject();
    if (!cJSON_IsObject(cfg)) { cJSON_Delete(cfg); cfg = cJSON_CreateObject(); }
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "chat_template");
    char *source = fdpo_chat_source(t, kind);
    cJSON_AddStringToObject(cfg, "chat_template", source);
    free(source);
    char *js = cJSON_Print(cfg);
    cJSON_Delete(cfg);
    int rc = save_text(dir, "tokenizer_config.json", js, strlen(js));
    cJSON_free(js);
    return rc;
}

int fdpo_bpe_save_dir(const fdpo_tokenizer *t, const char *dir) {
    const struct fdpo_bpe *b = t->bpe;
    if (fdpo_mkdir_p(dir)) return -1;
    if (save_config(t, dir)) return -1;
    if (b->src_map && save_text(dir, "special_tokens_map.json", b->src_map, b->src_map_len)) return -1;
    if (b->src_json) return save_text(dir, "tokenizer.json", b->src_json, b->src_json_len);
    cJSON *v = cJSON_CreateObject();
    for (size_t i = 0; i < b->n_vocab; i++) cJSON_AddItemToObject(v, b->str[i], cJSON_CreateNumber((double)i));
    char *js = cJSON_PrintUnformatted(v);
    cJSON_Delete(v);
    if (!js) return fdpo_error("%s: cannot serialise vocab.json", dir);
    int rc = save_text(dir, "vocab.json", js, strlen(js));
    free(js);
    if (rc) return rc;
    size_t cap = 32;
    for (size_t i = 0; i < b->n_merges; i++) cap += strlen(b->str[b->merges[i][0]]) + strlen(b->str[b->merges[i][1]]) + 2;
    char *buf = fdpo_malloc(cap), *q = buf;
    q += sprintf(q, "#version: 0.2\n");
    for (size_t i = 0; i < b->n_merges; i++) {
        const char *a = b->str[b->merges[i][0]], *c = b->str[b->merges[i][1]];
        size_t la = strlen(a), lc = strlen(c);
        memcpy(q, a, la); q += la; *q++ = ' ';
        memcpy(q, c, lc); q += lc; *q++ = '\n';
    }
    rc = save_text(dir, "merges.txt", buf, (size_t)(q - buf));
    free(buf);
    return rc;
}

/* ---- encoding ---- */
typedef struct { int32_t *v; size_t n, cap; } idvec;
static inline void idvec_push(idvec *o, int32_t id) {
    if (o->n == o->cap) { o->cap = o->cap ? 2 * o->cap : 256; o->v = fdpo_realloc(o->v, o->cap * sizeof *o->v); }
    o->v[o->n++] = id;
}

/* BPE on one pre-token's bytes: repeatedly merge every occurrence (left to right) of the
 * adjacent pair with the lowest rank. rank[i] caches the rank of (sym[i], sym[i+1]). */
static size_t bpe_word(const struct fdpo_bpe *b, const unsigned char *w, size_t n, int32_t *sym, uint32_t *rank) {
    for (size_t i = 0; i < n; i++) sym[i] = b->byte_id[w[i]];
    for (size_t i = 0; i + 1 < n; i++) {
        const pair_entry *e = pair_get(b, sym[i], sym[i + 1]);
        rank[i] = e ? e->rank : NO_RANK;
    }
    while (n > 1) {
        uint32_t best = NO_RANK;
        size_t at = 0;
        for (size_t i = 0; i + 1 < n; i++) if (rank[i] < best) { best = rank[i]; at = i; }
        if (best == NO_RANK) break;
        int32_t a = sym[at], c = sym[at + 1];
        int32_t merged = pair_get(b, a, c)->merged;
        size_t j = at; /* everything before `at` is unchanged */
        int prev_merged = 0;
        for (size_t i = at; i < n;) {
            int merge = i + 1 < n && sym[i] == a && sym[i + 1] == c;
            int32_t s = merge ? merged : sym[i];
            size_t old = i;
            i += merge ? 2 : 1;
            if (j > 0) {
                if (merge || prev_merged) {
                    const pair_entry *e = pair_get(b, sym[j - 1], s);
                    rank[j - 1] = e ? e->rank : NO_RANK;
                } else {
                    rank[j - 1] = rank[old - 1]; /* the pair (old-1, old) is unchanged */
                }
            }
            sym[j++] = s;
            prev_merged = merge;
        }
        n = j;
    }
    return n;
}

/* The same merges for long pre-tokens in O(n log n): a min-heap of (rank, position) over a
 * linked list of symbols. All heap entries of the lowest rank are taken as one batch and
 * merged left to right, skipping stale or overlapping ones, before any pair that the batch
 * creates is considered: exactly the rounds of bpe_word (and of OpenAI's encoder). */
static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0 && h[(i - 1) / 2] > v) { h[i] = h[(i - 1) / 2]; i = (i - 1) / 2; }
    h[i] = v;
}
static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c]; i = c;
    }
    if (*n) h[i] = v;
    return top;
}
static size_t bpe_word_long(const struct fdpo_bpe *b, const unsigned char *w, size_t n, int32_t *out) {
    int32_t *sym = fdpo_malloc(n * sizeof *sym), *nxt = fdpo_malloc(n * sizeof *nxt), *prv = fdpo_malloc(n * sizeof *prv);
    uint64_t *heap = fdpo_malloc((3 * n + 4) * sizeof *heap);
    uint32_t *batch = fdpo_malloc((3 * n + 4) * sizeof *batch); /* heap entries of one rank */
    size_t nh = 0;
    for (size_t i = 0; i < n; i++) {
        sym[i] = b->byte_id[w[i]];
        prv[i] = (int32_t)i - 1;
        nxt[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        const pair_entry *e = pair_get(b, sym[i], sym[i + 1]);
        if (e) heap_push(heap, &nh, ((uint64_t)e->rank << 32) | i);
    }
    while (nh) {
        uint32_t r = (uint32_t)(heap[0] >> 32);
        size_t nb = 0;
        while (nh && (uint32_t)(heap[0] >> 32) == r) batch[nb++] = (uint32_t)heap_pop(heap, &nh);
        for (size_t k = 0; k < nb; k++) {
            int32_t p = (int32_t)batch[k];
            if (k && batch[k] == batch[k - 1]) continue;
            int32_t q = nxt[p];
            if (sym[p] < 0 || q < 0) continue; /* merged away, or nothing on the right */
            const pair_entry *e = pair_get(b, sym[p], sym[q]);
            if (!e || e->rank != r) continue; /* stale entry */
            sym[p] = e->merged;
            sym[q] = -1;
            nxt[p] = nxt[q];
            if (nxt[q] >= 0) prv[nxt[q]] = p;
            if (prv[p] >= 0) {
                const pair_entry *l = pair_get(b, sym[prv[p]], sym[p]);
                if (l) heap_push(heap, &nh, ((uint64_t)l->rank << 32) | (uint32_t)prv[p]);
            }
            if (nxt[p] >= 0) {
                const pair_entry *rr = pair_get(b, sym[p], sym[nxt[p]]);
                if (rr) heap_push(heap, &nh, ((uint64_t)rr->rank << 32) | (uint32_t)p);
            }
        }
    }
    size_t m = 0;
    for (int32_t p = 0; p >= 0; p = nxt[p]) out[m++] = sym[p];
    free(sym); free(nxt); free(prv); free(heap); free(batch);
    return m;
}

static uint64_t cache_entry_hash(size_t item, const void *ctx) { return ((const word_cache *)ctx)->ent[item].hash; }

/* Encode one pre-token (bytes) into o, through the cache when one is held. */
static void encode_word(const struct fdpo_bpe *b, word_cache *c, const unsigned char *w, size_t n, idvec *o) {
    if (n == 1) { idvec_push(o, b->byte_id[w[0]]); return; }
    if (b->ignore_merges) {
        char stack[1024];
        if (n * 2 < sizeof stack) {
            size_t k = 0;
            for (size_t i = 0; i < n; i++) { memcpy(stack + k, b->b2u[w[i]], b->b2u_len[w[i]]); k += b->b2u_len[w[i]]; }
            int32_t id = strmap_get(b, stack, k);
            /* Hugging Face looks in model.vocab only: an added token (special or not) is
             * matched before the model or not at all, never by its text as one word */
            if (id >= 0 && b->in_model[id]) { idvec_push(o, id); return; }
        }
    }
    uint64_t h = 0;
    if (c && n <= CACHE_MAX_KEY) {
        h = fdpo_hash64(FDPO_HASH_INIT, w, n);
        for (size_t i = c->table.cap ? fdpo_itab_first(&c->table, h) : 0; c->table.cap && c->table.slot[i]; i = fdpo_itab_next(&c->table, i)) {
            const cache_entry *e = &c->ent[c->table.slot[i] - 1];
            if (e->hash == h && e->key_len == n && memcmp(c->keys + e->key_off, w, n) == 0) {
                for (size_t k = 0; k < e->n_ids; k++) idvec_push(o, c->ids[e->ids_off + k]);
                return;
            }
        }
    }
    int32_t sym_s[128]; uint32_t rank_s[128];
    int32_t *sym = n <= 128 ? sym_s : fdpo_malloc(n * sizeof *sym);
    uint32_t *rank = n <= 128 ? rank_s : fdpo_malloc(n * sizeof *rank);
    size_t m = n > LONG_WORD ? bpe_word_long(b, w, n, sym) : bpe_word(b, w, n, sym, rank);
    for (size_t i = 0; i < m; i++) idvec_push(o, sym[i]);
    if (c && n <= CACHE_MAX_KEY) {
        if (c->n_ent >= CACHE_MAX_ENTRIES) { /* full: start over */
            c->n_ent = 0; c->n_keys = 0; c->n_ids = 0;
            fdpo_itab_clear(&c->table);
        }
        fdpo_itab_reserve(&c->table, c->n_ent + 1 > 4096 ? c->n_ent + 1 : 4096, cache_entry_hash, c);
        size_t slot = fdpo_itab_first(&c->table, h);
        while (c->table.slot[slot]) slot = fdpo_itab_next(&c->table, slot);
        if (c->n_ent == c->cap_ent) { c->cap_ent = c->cap_ent ? 2 * c->cap_ent : 4096; c->ent = fdpo_realloc(c->ent, c->cap_ent * sizeof *c->ent); }
        if (c->n_keys + n > c->cap_keys) { c->cap_keys = 2 * (c->cap_keys + n) + 65536; c->keys = fdpo_realloc(c->keys, c->cap_keys); }
        if (c->n_ids + m > c->cap_ids) { c->cap_ids = 2 * (c->cap_ids + m) + 16384; c->ids = fdpo_realloc(c->ids, c->cap_ids * sizeof *c->ids); }
        cache_entry *e = &c->ent[c->n_ent];
        e->hash = h; e->key_off = (uint32_t)c->n_keys; e->key_len = (uint16_t)n;
        e->ids_off = (uint32_t)c->n_ids; e->n_ids = (uint16_t)m;
        memcpy(c->keys + c->n_keys, w, n); c->n_keys += n;
        memcpy(c->ids + c->n_ids, sym, m * sizeof *sym); c->n_ids += m;
        fdpo_itab_set(&c->table, slot, c->n_ent++);
    }
    if (sym != sym_s) { free(sym); free(rank); }
}

/* Pre-tokenise s[0..n) and encode each piece. Bytes no match covers are ill-formed UTF-8:
 * each becomes its byte token. */
/* Text the pattern does not cover is its own piece (Split's Isolated behaviour), byte-pair
 * encoded; its ill-formed UTF-8 bytes (which no pattern matches) are byte tokens each. */
static void encode_gap(const struct fdpo_bpe *b, word_cache *c, const unsigned char *s, size_t n, idvec *o) {
    while (n) {
        size_t ok = fdpo_utf8_first_invalid((const char *)s, n);
        if (ok > n) ok = n;
        if (ok) encode_word(b, c, s, ok, o);
        if (ok == n) break;
        idvec_push(o, b->byte_id[s[ok]]);
        s += ok + 1; n -= ok + 1;
    }
}

/* The next match of re in s[0..n) from off: > 0 a match, 0 none, -1 an error (named).
 * The JIT runs on a 32 KiB machine stack, which a quantified group ((?:\p{L}|\p{N})+) over
 * a run of about 1,400 characters exhausts (PCRE2_ERROR_JIT_STACKLIMIT): such a match is
 * redone by the interpreter, whose backtracking frames live on the heap (Oniguruma, which
 * Hugging Face uses, grows its stack too). An error there (its match, depth or heap limit) is
 * reported: taken as "no match" it made the rest of the text one piece, merged across what
 * the pattern splits. */
static int regex_next(const struct fdpo_bpe *b, const pcre2_code *re, const unsigned char *s, size_t n, size_t off,
                      pcre2_match_data *md) {
    int rc = pcre2_jit_match(re, s, n, off, 0, md, NULL);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) rc = pcre2_match(re, s, n, off, PCRE2_NO_JIT, md, NULL);
    if (rc > 0) return 1;
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc == 0) return fdpo_error("pre_tokenizer regex: match data too small"); /* cannot happen: md is from the pattern */
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    const char *pat = re == b->digits_re ? (b->digits == 1 ? "\\p{N}" : "\\p{N}+") : b->pattern ? b->pattern : GPT2_PATTERN;
    return fdpo_error("pre_tokenizer regex '%.200s%s': PCRE2 failed while splitting %zu bytes of text at byte %zu: %s",
                      pat, strlen(pat) > 200 ? "..." : "", n, off, (char *)msg);
}

/* Pre-tokenise s[0..n) with the regex and encode each piece. */
static int encode_regex(const struct fdpo_bpe *b, word_cache *c, pcre2_match_data *md,
                        const unsigned char *s, size_t n, idvec *o) {
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t off = 0, gap = 0; /* off: where the search resumes; gap: start of the text not yet encoded */
    while (off < n) {
        int rc = regex_next(b, b->re, s, n, off, md);
        if (rc < 0) return -1;
        if (rc == 0) break;
        size_t start = ov[0], end = ov[1];
        if (start > gap) encode_gap(b, c, s + gap, start - gap, o);
        gap = start;
        if (end == start) { /* an empty match is only a boundary (as in Oniguruma's and Python's */
            if (start >= n) break;   /* finditer): search again one code point on, the gap goes on */
            size_t k = 1;
            while (start + k < n && (s[start + k] & 0xC0) == 0x80) k++;
            off = start + k;
            continue;
        }
        encode_word(b, c, s + start, end - start, o);
        gap = off = end;
    }
    if (gap < n) encode_gap(b, c, s + gap, n - gap, o);
    return 0;
}

/* A Digits pre-tokenizer first (StarCoder, SmolLM2): every digit (individual_digits) or
 * run of digits is its own piece; the regex runs on the stretches between them. */
static int encode_segment(const struct fdpo_bpe *b, word_cache *c, pcre2_match_data *md,
                          const unsigned char *s, size_t n, idvec *o) {
    if (!b->digits_re) return encode_regex(b, c, md, s, n, o);
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t off = 0;
    while (off < n) {
        int rc = regex_next(b, b->digits_re, s, n, off, md);
        if (rc < 0) return -1;
        size_t start = rc > 0 ? ov[0] : n, end = rc > 0 ? ov[1] : n; /* copied: encode_regex reuses md */
        if (start > off && encode_regex(b, c, md, s + off, start - off, o)) return -1;
        if (rc == 0 || end == start) break;
        encode_word(b, c, s + start, end - start, o);
        off = end;
    }
    return 0;
}

/* One stretch of text between added tokens: NFC-normalised first when the tokenizer's
 * normalizer asks for it (Hugging Face normalises each split that is not an added token) */
static int encode_stretch(const struct fdpo_bpe *b, word_cache *c, pcre2_match_data *md,
                          const unsigned char *s, size_t n, idvec *o) {
    if (!b->nfc || n == 0) return encode_segment(b, c, md, s, n, o);
    size_t m;
    char *u = fdpo_text_nfc((const char *)s, n, &m);
    int rc = encode_segment(b, c, md, (const unsigned char *)u, m, o);
    free(u);
    return rc;
}

/* The added token (longest first) that s[0..n) starts with, eligible under allow_special
 * (non-special added tokens always are, as in Hugging Face); -1 if none. */
static int32_t added_at(const struct fdpo_bpe *b, const unsigned char *s, size_t n, int allow_special) {
    if (!b->added_first[s[0]]) return -1;
    for (size_t k = 0; k < b->n_added; k++) {
        int32_t id = b->added[k];
        size_t l = b->n_bytes[id];
        if (l <= n && b->bytes[id][0] == s[0] && (allow_special || !b->special[id]) && memcmp(b->bytes[id], s, l) == 0)
            return id;
    }
    return -1;
}

int fdpo_bpe_encode(const fdpo_tokenizer *t, const char *text, size_t len, int allow_special,
                    int32_t **ids, size_t *n_ids) {
    return fdpo_bpe_encode_marked(t, text, len, allow_special, NULL, ids, n_ids);
}

/* With allow_special and a mask, a special token is matched only where it starts at a byte
 * with mask[i] != 0 (template text, not message content). */
int fdpo_bpe_encode_marked(const fdpo_tokenizer *t, const char *text, size_t len, int allow_special,
                           const unsigned char *mask, int32_t **ids, size_t *n_ids) {
    struct fdpo_bpe *b = t->bpe;
    word_cache *c = NULL;
    for (int i = 0; i < CACHE_SLOTS && !c; i++)
        if (pthread_mutex_trylock(&b->cache[i].lock) == 0) c = &b->cache[i];
    pcre2_match_data *md;
    if (c) {
        if (!c->md) c->md = pcre2_match_data_create_from_pattern(b->re, NULL);
        md = c->md;
    } else {
        md = pcre2_match_data_create_from_pattern(b->re, NULL);
    }
    idvec o = {0};
    o.cap = len / 3 + 16;
    o.v = fdpo_malloc(o.cap * sizeof *o.v);
    const unsigned char *s = (const unsigned char *)text;
    size_t seg = 0;
    int rc = 0;
    for (size_t pos = 0; pos < len && !rc;) {
        int ok = allow_special && (!mask || mask[pos]);
        int32_t id = added_at(b, s + pos, len - pos, ok);
        if (id < 0) { pos++; continue; }
        rc = encode_stretch(b, c, md, s + seg, pos - seg, &o);
        idvec_push(&o, id);
        pos += b->n_bytes[id];
        seg = pos;
    }
    if (!rc) rc = encode_stretch(b, c, md, s + seg, len - seg, &o);
    if (c) pthread_mutex_unlock(&c->lock);
    else pcre2_match_data_free(md);
    if (rc) { free(o.v); return -1; }
    *ids = o.v; *n_ids = o.n;
    return 0;
}

int fdpo_bpe_normalizes(const fdpo_tokenizer *t) { return t->bpe->nfc; }

int fdpo_bpe_is_special(const fdpo_tokenizer *t, int32_t id) {
    const struct fdpo_bpe *b = t->bpe;
    return id >= 0 && (size_t)id < b->n_vocab && b->special && b->special[id];
}

const char *fdpo_bpe_token_bytes(const fdpo_tokenizer *t, int32_t id, size_t *len) {
    const struct fdpo_bpe *b = t->bpe;
    if (id < 0 || (size_t)id >= b->n_vocab) { *len = 0; return ""; }
    *len = b->n_bytes[id];
    return (const char *)b->bytes[id];
}

int32_t fdpo_bpe_token_id(const fdpo_tokenizer *t, const char *text) {
    return strmap_get(t->bpe, text, strlen(text));
}
