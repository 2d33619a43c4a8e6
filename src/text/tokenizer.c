/* Tokenizer dispatch and the byte-level tokenizer: ids 0..255 are bytes, 256 is
 * <|endoftext|>. Any text round-trips exactly; no vocabulary file is needed. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cJSON.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include "fdpo/chat.h"
#include "fdpo/core.h"
#include "data/jsonl.h"
#include "text/tokenizer_internal.h"

#define BYTE_EOT 256
static const char EOT_TEXT[] = "<|endoftext|>";

fdpo_tokenizer *fdpo_tokenizer_byte(void) {
    fdpo_tokenizer *t = fdpo_calloc(1, sizeof *t);
    t->kind = FDPO_TOK_BYTE;
    t->vocab_size = 257;
    t->eot = BYTE_EOT;
    t->bos = t->pad = -1;
    return t;
}

int fdpo_tokenizer_dir_has_files(const char *dir) {
    char *p = fdpo_path_join(dir, "fdpo_tokenizer.json");
    int has = fdpo_file_exists(p) || fdpo_bpe_dir_has_files(dir);
    free(p);
    return has;
}

static fdpo_tokenizer *load_dir(const char *dir);

/* A directory whose set of tokenizer files is being replaced, or whose save was killed
 * between its renames (the set's journal, fdpo_atomic_commit_set), may hold a new file beside
 * an old one, which can even load: refused, saying that the next cleanup puts the old back, or,
 * for a journal this build cannot read (no cleanup acts on it), what to do by hand. */
int fdpo_tokenizer_dir_settled(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char journal[256] = "";
    while (d && !*journal && (e = readdir(d)))
        if (strncmp(e->d_name, ".fdpo-set.tmp.", 14) == 0) snprintf(journal, sizeof journal, "%s", e->d_name);
    if (!*journal) { if (d) closedir(d); return 0; }
    char *jp = fdpo_path_join(dir, journal);
    int readable = fdpo_atomic_set_journal_readable(jp);
    free(jp);
    if (readable) {
        closedir(d);
        return fdpo_error("%s: its tokenizer files are being replaced, or a save that replaced them was killed (%s is there): once "
                          "no save runs, `fdpo tokenizer train --out %s FILE` with valid options (even one then refused for lacking "
                          "--overwrite) clears it and says what it did; if %s stays (its process id is in use again), remove it "
                          "by hand", dir, journal, dir, journal);
    }
    /* the temp names of that process: the other version of each file the save was replacing */
    long pid = fdpo_tmp_name_pid(journal);
    char tmps[2048] = "";
    rewinddir(d);
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && pid > 0 && fdpo_tmp_name_pid(e->d_name) == pid) {
            size_t l = strlen(tmps);
            if (l < sizeof tmps - 1) snprintf(tmps + l, sizeof tmps - l, "%s%s", l ? ", " : "", e->d_name);
        }
    closedir(d);
    return fdpo_error("%s: %s is a journal this build cannot read (not an \"fdpo atomic set 3\" one: an earlier build's, or "
                      "another file), so no cleanup acts on it: the *.tmp.%ld files beside it (%s) may be the only copies of "
                      "the tokenizer files that save replaced. By hand: compare each NAME.tmp.%ld with NAME, put back the "
                      "version you want (mv %s/NAME.tmp.%ld %s/NAME), then remove the other *.tmp.%ld files and %s/%s",
                      dir, journal, pid, *tmps ? tmps : "none here", pid, dir, pid, dir, pid, dir, journal);
}

fdpo_tokenizer *fdpo_tokenizer_load_dir(const char *dir) {
    return fdpo_tokenizer_dir_settled(dir) ? NULL : load_dir(dir);
}

static fdpo_tokenizer *load_dir(const char *dir) {
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fdpo_error("%s: not a directory (a tokenizer or checkpoint directory is expected)", dir);
        return NULL;
    }
    char *p = fdpo_path_join(dir, "fdpo_tokenizer.json");
    int has_byte = fdpo_file_exists(p);
    if (has_byte) {
        size_t n;
        char *s = fdpo_read_file(p, &n);
        size_t esc = s ? fdpo_json_bad_u_escape(s, n) : 0;   /* cJSON would cut the chat template there */
        if (s && esc < n) {
            size_t col, line = fdpo_json_line_col(s, esc, 1, &col);
            fdpo_error("%s:%zu: " FDPO_JSON_BAD_U_ESCAPE, p, line, col);
            free(s); free(p);
            return NULL;
        }
        cJSON *j = s ? cJSON_ParseWithLength(s, n) : NULL;
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(j, "type"), *ct = cJSON_GetObjectItemCaseSensitive(j, "chat_template");
        int ok = cJSON_IsString(ty) && !strcmp(ty->valuestring, "byte");
        free(s);
        if (!ok) { cJSON_Delete(j); fdpo_error("%s: expected {\"type\": \"byte\"}", p); free(p); return NULL; }
        free(p);
        fdpo_tokenizer *t = fdpo_tokenizer_byte();
        if (cJSON_IsString(ct)) t->chat_template_src = fdpo_strdup(ct->valuestring);
        cJSON_Delete(j);
        return t;
    }
    free(p);
    if (fdpo_bpe_dir_has_files(dir)) return fdpo_bpe_load_dir(dir);
    fdpo_error("%s: no tokenizer files (expected vocab.json + merges.txt, encoder.json + "
               "vocab.bpe, tokenizer.json, or fdpo_tokenizer.json)", dir);
    return NULL;
}

int fdpo_tokenizer_save_dir(const fdpo_tokenizer *t, const char *dir) {
    if (t->kind == FDPO_TOK_BPE) return fdpo_bpe_save_dir(t, dir);
    if (fdpo_mkdir_p(dir)) return -1;
    char *p = fdpo_path_join(dir, "fdpo_tokenizer.json");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "byte");
    cJSON_AddNumberToObject(o, "vocab_size", 257);
    cJSON_AddNumberToObject(o, "eos_token_id", 256);
    fdpo_chat_kind kind; /* a named template travels with the checkpoint (as in tokenizer_config.json) */
    const char *name = t->chat_template_name;
    if (name && strcmp(name, "auto") && fdpo_chat_parse_name(name, &kind) == 0) {
        char *src = fdpo_chat_source(t, kind);
        cJSON_AddStringToObject(o, "chat_template", src);
        free(src);
    }
    else if (t->chat_template_src)
        cJSON_AddStringToObject(o, "chat_template", t->chat_template_src);
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    size_t len = strlen(body);
    body = fdpo_realloc(body, len + 2);
    body[len++] = '\n';
    int rc = fdpo_write_file_atomic(p, body, len);
    free(body);
    free(p);
    return rc;
}

void fdpo_tokenizer_free(fdpo_tokenizer *t) {
    if (!t) return;
    if (t->bpe) fdpo_bpe_free(t->bpe);
    free(t->chat_template_src); free(t->chat_template_problem); free(t->chat_template_name);
    free(t);
}

fdpo_tokenizer_kind fdpo_tokenizer_kind_of(const fdpo_tokenizer *t) { return t->kind; }
size_t fdpo_tokenizer_vocab_size(const fdpo_tokenizer *t) { return t->vocab_size; }
/* eos/bos id as a message shows it ("none" for -1) */
static const char *special_id(int32_t id, char buf[16]) {
    if (id < 0) return "none";
    snprintf(buf, 16, "%d", (int)id);
    return buf;
}

int fdpo_tokenizer_diff(const fdpo_tokenizer *a, const fdpo_tokenizer *b, char *buf, size_t size) {
    if (buf && size) buf[0] = 0;
    const char *ka = a->kind == FDPO_TOK_BPE ? "gpt2-bpe" : "byte", *kb = b->kind == FDPO_TOK_BPE ? "gpt2-bpe" : "byte";
    if (a->kind != b->kind) { if (buf) snprintf(buf, size, "kind %s vs %s", ka, kb); return 1; }
    if (a->vocab_size != b->vocab_size) {
        if (buf) snprintf(buf, size, "vocab_size %zu vs %zu", a->vocab_size, b->vocab_size);
        return 1;
    }
    /* eos ends every completion and document, bos is written by templates; pad is not compared:
     * no text encodes otherwise for it (fdpo pads with no token id, and a reward model pools at
     * config.json's pad_token_id), and a checkpoint of a legacy directory saved before
     * special_tokens_map.json was read has no pad where its base now has the map's. A pad named
     * as another token still differs where it counts, in that token's special flag. */
    const struct { const char *name; int32_t a, b; } ids[] = {{"eos", a->eot, b->eot}, {"bos", a->bos, b->bos}};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (ids[i].a != ids[i].b) {
            char va[16], vb[16];
            if (buf) snprintf(buf, size, "%s id %s vs %s", ids[i].name, special_id(ids[i].a, va), special_id(ids[i].b, vb));
            return 1;
        }
    return a->kind == FDPO_TOK_BPE && fdpo_bpe_diff(a->bpe, b->bpe, buf, size);
}

int fdpo_tokenizer_same(const fdpo_tokenizer *a, const fdpo_tokenizer *b) { return !fdpo_tokenizer_diff(a, b, NULL, 0); }
int32_t fdpo_tokenizer_eot(const fdpo_tokenizer *t) { return t->eot; }
int32_t fdpo_tokenizer_bos(const fdpo_tokenizer *t) { return t->bos; }
int32_t fdpo_tokenizer_pad(const fdpo_tokenizer *t) { return t->pad; }

int fdpo_tokenizer_is_special(const fdpo_tokenizer *t, int32_t id) {
    if (t->kind == FDPO_TOK_BPE) return fdpo_bpe_is_special(t, id);
    return id == BYTE_EOT;
}

int32_t fdpo_tokenizer_token_id(const fdpo_tokenizer *t, const char *text) {
    if (t->kind == FDPO_TOK_BPE) return fdpo_bpe_token_id(t, text);
    if (!strcmp(text, EOT_TEXT)) return BYTE_EOT;
    return strlen(text) == 1 ? (unsigned char)text[0] : -1;
}

int fdpo_tokenizer_encode_masked(const fdpo_tokenizer *t, const char *text, size_t len,
                                 const unsigned char *mask, int32_t **ids, size_t *n_ids) {
    if (t->kind == FDPO_TOK_BPE) return fdpo_bpe_encode_marked(t, text, len, 1, mask, ids, n_ids);
    int32_t *out = fdpo_malloc((len + 1) * sizeof *out);
    size_t n = 0, elen = sizeof EOT_TEXT - 1;
    for (size_t i = 0; i < len;) {
        if ((!mask || mask[i]) && len - i >= elen && memcmp(text + i, EOT_TEXT, elen) == 0) {
            out[n++] = BYTE_EOT; i += elen;
        } else {
            out[n++] = (unsigned char)text[i++];
        }
    }
    *ids = out; *n_ids = n;
    return 0;
}

int fdpo_tokenizer_encode(const fdpo_tokenizer *t, const char *text, size_t len,
                          int allow_special, int32_t **ids, size_t *n_ids) {
    if (t->kind == FDPO_TOK_BPE) return fdpo_bpe_encode(t, text, len, allow_special, ids, n_ids);
    if (!allow_special) {
        int32_t *out = fdpo_malloc((len + 1) * sizeof *out);
        for (size_t i = 0; i < len; i++) out[i] = (unsigned char)text[i];
        *ids = out; *n_ids = len;
        return 0;
    }
    return fdpo_tokenizer_encode_masked(t, text, len, NULL, ids, n_ids);
}

const char *fdpo_tokenizer_token_bytes(const fdpo_tokenizer *t, int32_t id, size_t *len) {
    if (t->kind == FDPO_TOK_BPE) return fdpo_bpe_token_bytes(t, id, len);
    static char bytes[256];
    static int init = 0;
    if (!init) { for (int i = 0; i < 256; i++) bytes[i] = (char)i; init = 1; }
    if (id == BYTE_EOT) { *len = sizeof EOT_TEXT - 1; return EOT_TEXT; }
    if (id < 0 || id > 255) { *len = 0; return ""; }
    *len = 1;
    return bytes + id;
}

/* The UTF-8 sequence at s[0..n) (n >= 1): its length (1-4) if valid (no overlongs,
 * surrogates or code points above U+10FFFF), else 0 with *bad = the length of the maximal
 * invalid subsequence there (Unicode's "maximal subpart", what U+FFFD replaces). */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *bad) {
    unsigned c = s[0];
    size_t need; unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    else if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else { *bad = 1; return 0; }
    size_t j = 1;
    for (; j <= need && j < n; j++) {
        unsigned b = s[j];
        if (j == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
    }
    if (j == need + 1) return need + 1;
    *bad = j;
    return 0;
}

/* Append s[0..n) to out, replacing each maximal invalid UTF-8 subsequence with U+FFFD
 * (as Python's bytes.decode(errors="replace"), which Hugging Face's decode uses). */
static size_t utf8_repair(const unsigned char *s, size_t n, char *out) {
    size_t i = 0, k = 0;
    while (i < n) {
        size_t bad = 0, l = utf8_seq(s + i, n - i, &bad);
        if (l) { memcpy(out + k, s + i, l); k += l; i += l; }
        else { memcpy(out + k, "\xEF\xBF\xBD", 3); k += 3; i += bad; }
    }
    return k;
}

/* NFC of one valid UTF-8 run through ICU (UTF-8 -> UTF-16 -> unorm2 -> UTF-8), appended at
 * out + *k (room: 3 bytes per UTF-16 unit of the result). 0, or -1 when ICU fails (the run
 * is then left as it is). */
static int nfc_run(const char *s, size_t n, char **out, size_t *cap, size_t *k) {
    UErrorCode e = U_ZERO_ERROR;
    const UNormalizer2 *nfc = unorm2_getNFCInstance(&e);
    if (U_FAILURE(e) || n > INT32_MAX / 4) return -1;
    UChar *u = fdpo_malloc((n + 1) * sizeof *u); /* UTF-16 units <= UTF-8 bytes */
    int32_t un = 0, vn = 0;
    u_strFromUTF8(u, (int32_t)n + 1, &un, s, (int32_t)n, &e);
    UChar *v = NULL;
    if (U_SUCCESS(e)) {
        int32_t vcap = 3 * un + 16; /* NFC grows a string by at most 3x */
        v = fdpo_malloc((size_t)vcap * sizeof *v);
        vn = unorm2_normalize(nfc, u, un, v, vcap, &e);
    }
    int rc = -1;
    if (U_SUCCESS(e)) {
        size_t need = *k + 3 * (size_t)vn + 1;
        if (need > *cap) { *cap = 2 * need; *out = fdpo_realloc(*out, *cap); }
        int32_t m = 0;
        u_strToUTF8(*out + *k, (int32_t)(*cap - *k), &m, v, vn, &e);
        if (U_SUCCESS(e)) { *k += (size_t)m; rc = 0; }
    }
    free(u);
    free(v);
    return rc;
}

char *fdpo_text_nfc(const char *text, size_t n, size_t *out_len) {
    const unsigned char *s = (const unsigned char *)text;
    size_t cap = n + 16, k = 0;
    char *out = fdpo_malloc(cap);
    for (size_t i = 0; i < n;) {
        size_t run = i, bad = 0, ascii = 1;
        for (size_t l; run < n && (l = utf8_seq(s + run, n - run, &bad)) > 0; run += l) ascii &= l == 1;
        if (run > i) { /* a valid run: ASCII is NFC already */
            if (ascii || nfc_run(text + i, run - i, &out, &cap, &k)) {
                if (k + (run - i) + 1 > cap) { cap = 2 * (k + run - i + 1); out = fdpo_realloc(out, cap); }
                memcpy(out + k, text + i, run - i);
                k += run - i;
            }
            i = run;
            continue;
        }
        if (k + bad + 1 > cap) { cap = 2 * (k + bad + 1); out = fdpo_realloc(out, cap); }
        memcpy(out + k, text + i, bad); /* invalid bytes pass through (byte-level BPE encodes them) */
        k += bad;
        i += bad;
    }
    out[k] = 0;
    *out_len = k;
    return out;
}

int fdpo_tokenizer_normalizes(const fdpo_tokenizer *t) { return t->kind == FDPO_TOK_BPE && fdpo_bpe_normalizes(t); }

char *fdpo_tokenizer_normalize(const fdpo_tokenizer *t, const char *text, size_t len, size_t *out_len) {
    if (fdpo_tokenizer_normalizes(t)) return fdpo_text_nfc(text, len, out_len);
    char *out = fdpo_malloc(len + 1);
    memcpy(out, text, len);
    out[len] = 0;
    *out_len = len;
    return out;
}

char *fdpo_tokenizer_decode(const fdpo_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
    return fdpo_tokenizer_decode_ex(t, ids, n, 0, len);
}

char *fdpo_tokenizer_decode_ex(const fdpo_tokenizer *t, const int32_t *ids, size_t n, int skip_special, size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) { size_t l; fdpo_tokenizer_token_bytes(t, ids[i], &l); total += l; }
    unsigned char *raw = fdpo_malloc(total + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        if (skip_special && fdpo_tokenizer_is_special(t, ids[i])) continue;
        const char *b = fdpo_tokenizer_token_bytes(t, ids[i], &l);
        memcpy(raw + k, b, l); k += l;
    }
    char *out = fdpo_malloc(3 * total + 1);
    size_t m = utf8_repair(raw, k, out);
    out[m] = 0;
    free(raw);
    if (len) *len = m;
    return out;
}

void fdpo_tokenizer_set_chat_template(fdpo_tokenizer *t, const char *name) {
    free(t->chat_template_name);
    t->chat_template_name = name ? fdpo_strdup(name) : NULL;
}

const char *fdpo_tokenizer_chat_template(const fdpo_tokenizer *t, const char **name) {
    if (name) *name = t->chat_template_name;
    return t->chat_template_src;
}

const char *fdpo_tokenizer_chat_template_origin(const fdpo_tokenizer *t, const char **problem) {
    if (problem) *problem = t->chat_template_problem;
    return t->chat_template_origin ? t->chat_template_origin : "tokenizer_config.json: chat_template";
}
