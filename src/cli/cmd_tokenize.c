/* fdpo tokenize: text -> token ids (or ids -> text with --decode) with a tokenizer
 * directory (a checkpoint carries one) or the byte-level tokenizer ("--tokenizer byte").
 *
 *   encode: one line of space-separated ids per input file (stdin when none, or "-");
 *           --lines: one per input line (the '\n' is not encoded);
 *           --jsonl-field NAME: one per JSONL record, encoding the string field NAME.
 *   decode: every line of ids -> its text, written as is; with --lines, each followed by '\n'.
 * --stats prints counts and encode throughput to stderr. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <time.h>
#include <cjson/cJSON.h>
#include "cli/commands.h"
#include "cli/flags.h"
#include "fdpo/core.h"
#include "fdpo/tokenizer.h"

typedef struct { char *p; size_t n, cap; } buf;
static void buf_put(buf *b, const char *s, size_t n) {
    if (!n) return;
    if (b->n + n > b->cap) { b->cap = 2 * (b->n + n) + 4096; b->p = fdpo_realloc(b->p, b->cap); }
    memcpy(b->p + b->n, s, n); b->n += n;
}
static void buf_flush(buf *b) { if (b->n) fwrite(b->p, 1, b->n, stdout); b->n = 0; }

static char *read_input(const char *path, size_t *n) {
    if (strcmp(path, "-") != 0) return fdpo_read_file(path, n);
    buf b = {0};
    char tmp[65536];
    size_t k;
    while ((k = fread(tmp, 1, sizeof tmp, stdin)) > 0) buf_put(&b, tmp, k);
    if (ferror(stdin)) { free(b.p); fdpo_error("<stdin>: read error"); return NULL; }
    buf_put(&b, "", 1);
    *n = b.n - 1;
    return b.p;
}

typedef struct {
    const fdpo_tokenizer *tok;
    int allow_special;
    buf out;
    size_t n_texts, n_bytes, n_tokens;
    double t_encode; /* wall seconds in encode calls */
} enc_ctx;

static int encode_one(enc_ctx *c, const char *s, size_t n) {
    int32_t *ids; size_t k;
    double t0 = fdpo_now();
    if (fdpo_tokenizer_encode(c->tok, s, n, c->allow_special, &ids, &k)) return -1;
    c->t_encode += fdpo_now() - t0;
    c->n_texts++; c->n_bytes += n; c->n_tokens += k;
    char num[16];
    for (size_t i = 0; i < k; i++) { /* " %d" without printf: ids are >= 0 */
        char *e = num + sizeof num, *q = e;
        uint32_t v = (uint32_t)ids[i];
        do { *--q = (char)('0' + v % 10); v /= 10; } while (v);
        if (i) *--q = ' ';
        buf_put(&c->out, q, (size_t)(e - q));
    }
    buf_put(&c->out, "\n", 1);
    if (c->out.n > (1 << 20)) buf_flush(&c->out);
    free(ids);
    return 0;
}

static int encode_jsonl(enc_ctx *c, const char *path, const char *s, size_t n, const char *field) {
    size_t line = 0;
    for (const char *p = s, *end = s + n; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        line++;
        const char *q = p;
        while (q < le && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        if (q < le) {
            /* as every JSONL reader: invalid UTF-8 refused (by the parser), and a NUL that would cut the text */
            cJSON *j = fdpo_jsonl_parse_object(path, line, p, (size_t)(le - p), NULL);
            if (!j) return -1;
            char where[PATH_MAX + 32];   /* "PATH:LINE": a path of up to PATH_MAX survives whole */
            snprintf(where, sizeof where, "%s:%zu", path, line);
            if (fdpo_jsonl_check_nul(where, p, (size_t)(le - p), j)) { cJSON_Delete(j); return -1; }
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, field);
            if (!cJSON_IsString(f)) {
                cJSON_Delete(j);
                return fdpo_error("%s:%zu: field '%s' %s", path, line, field, f ? "is not a string" : "is missing");
            }
            int rc = encode_one(c, f->valuestring, strlen(f->valuestring));
            cJSON_Delete(j);
            if (rc) return rc;
        }
        p = le + 1;
    }
    return 0;
}

static int decode_text(const fdpo_tokenizer *tok, const char *path, const char *s, size_t n, int lines, int skip_special, buf *out) {
    size_t vocab = fdpo_tokenizer_vocab_size(tok), line = 0, cap = 1024;
    int32_t *ids = fdpo_malloc(cap * sizeof *ids);
    int rc = 0;
    for (const char *p = s, *end = s + n; p < end && rc == 0;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        line++;
        size_t k = 0;
        const char *nul = memchr(p, '\0', (size_t)(le - p));
        if (nul) {   /* '%.*s' below would stop at it and quote a valid id as the fault */
            rc = fdpo_error("%s:%zu: a NUL byte at column %zu (token ids are decimal numbers separated by blanks)", path,
                            line, (size_t)(nul - p) + 1);
            break;
        }
        for (const char *q = p; q < le;) {
            if (*q == ' ' || *q == '\t' || *q == '\r') { q++; continue; }
            const char *st = q;
            long v = 0;
            int ok = 1;
            while (q < le && *q != ' ' && *q != '\t' && *q != '\r') {
                if (*q < '0' || *q > '9' || v > 100000000) ok = 0;
                else v = v * 10 + (*q - '0');
                q++;
            }
            if (!ok || (size_t)v >= vocab) {
                rc = fdpo_error("%s:%zu: '%.*s' is not a token id (vocab size %zu)", path, line,
                                (int)(q - st > 40 ? 40 : q - st), st, vocab);
                break;
            }
            if (k == cap) { cap *= 2; ids = fdpo_realloc(ids, cap * sizeof *ids); }
            ids[k++] = (int32_t)v;
        }
        if (rc) break;
        size_t len;
        char *text = fdpo_tokenizer_decode_ex(tok, ids, k, skip_special, &len);
        buf_put(out, text, len);
        if (lines) buf_put(out, "\n", 1);
        free(text);
        if (out->n > (1 << 20)) buf_flush(out);
        p = le + 1;
    }
    free(ids);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    const char *tok_dir, *field;
    int decode, lines, allow_special, skip_special, stats;
    flag_list data;
    fdpo_flag flags[] = {
        {"data", FLAG_LIST, &data, NULL, "input file (repeatable; positional FILEs work too; none = stdin)", 0},
        {"tokenizer", FLAG_STR, &tok_dir, NULL, "tokenizer or checkpoint directory, or 'byte' (required)", 0},
        {"decode", FLAG_BOOL, &decode, "0", "ids -> text instead of text -> ids", 0},
        {"lines", FLAG_BOOL, &lines, "0", "one output line per input line (encode); '\\n' after each decoded line", 0},
        {"jsonl-field", FLAG_STR, &field, NULL, "encode the string field NAME of each JSONL record, one line each", 0},
        {"allow-special", FLAG_BOOL, &allow_special, "0", "match special tokens (<|endoftext|>, <|im_start|>, ...) in the text; otherwise they are text", 0},
        {"skip-special-tokens", FLAG_BOOL, &skip_special, "0", "--decode: leave special tokens out of the text", 0},
        {"stats", FLAG_BOOL, &stats, "0", "print texts, bytes, tokens and encode throughput to stderr", 0},
    };
    int npos; char **pos;
    int rc = flags_parse("tokenize", "fdpo tokenize --tokenizer DIR|byte [flags] [--data FILE...]  (stdin when no FILE)",
                         flags, NFLAGS(flags), argc, argv, &npos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    flags_prepend_list("data", &data, &pos, &npos);
    if (!tok_dir) { free(pos); return fdpo_error("--tokenizer: required (a directory or 'byte')"); }
    if (field && (lines || decode)) { free(pos); return fdpo_error("--jsonl-field: cannot be combined with %s", lines ? "--lines" : "--decode"); }
    if (field && !*field) { free(pos); return fdpo_error("--jsonl-field: empty field name"); }
    if (skip_special && !decode) { free(pos); return fdpo_error("--skip-special-tokens: only with --decode"); }
    /* encoding's flags with --decode were ignored */
    if (decode && (allow_special || stats)) {
        free(pos);
        return fdpo_error("%s: encoding only (not with --decode)", allow_special ? "--allow-special" : "--stats");
    }
    double t0 = fdpo_now();
    fdpo_tokenizer *tok = strcmp(tok_dir, "byte") == 0 ? fdpo_tokenizer_byte() : fdpo_tokenizer_load_dir(tok_dir);
    if (!tok) { free(pos); return fdpo_error_context("--tokenizer"); }

    static char *stdin_only[] = {"-", NULL};
    char **files = npos ? pos : stdin_only;
    int nfiles = npos ? npos : 1;
    enc_ctx c = {tok, allow_special, {0}, 0, 0, 0, 0};
    clock_t cpu0 = clock();
    rc = 0;
    for (int i = 0; i < nfiles && rc == 0; i++) {
        const char *name = strcmp(files[i], "-") ? files[i] : "<stdin>";
        size_t n;
        char *s = read_input(files[i], &n);
        if (!s) { rc = -1; break; }
        if (decode) rc = decode_text(tok, name, s, n, lines, skip_special, &c.out);
        else if (field) rc = encode_jsonl(&c, name, s, n, field);
        else if (lines) {
            for (const char *p = s, *end = s + n; p < end && rc == 0;) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                const char *le = nl ? nl : end;
                rc = encode_one(&c, p, (size_t)(le - p));
                p = le + 1;
            }
        } else rc = encode_one(&c, s, n);
        free(s);
    }
    buf_flush(&c.out);
    double cpu = (double)(clock() - cpu0) / CLOCKS_PER_SEC;
    free(c.out.p);
    if (rc == 0 && stats && !decode) {
        double t = c.t_encode > 0 ? c.t_encode : 1e-9;
        fprintf(stderr, "tokenize: %zu texts, %zu bytes, %zu tokens, %.3f bytes/token | encode %.3f s, "
                        "%.2f MB/s, %.0f tokens/s | cpu %.3f s (read+encode+print) | total with loading %.3f s\n",
                c.n_texts, c.n_bytes, c.n_tokens, c.n_tokens ? (double)c.n_bytes / (double)c.n_tokens : 0.0,
                c.t_encode, (double)c.n_bytes / t / 1e6, (double)c.n_tokens / t, cpu, fdpo_now() - t0);
    }
    fdpo_tokenizer_free(tok);
    free(pos);
    errno = 0;   /* the words of main's check, with the reason */
    if ((fflush(stdout) != 0 || ferror(stdout)) && rc == 0)
        rc = fdpo_error("<stdout>: write error: %s", errno ? strerror(errno) : "the stream is in error");
    return rc;
}
