/* Shared checks for the JSONL readers: one line's object, byte order mark, NUL escapes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "data/jsonl.h"
#include "fdpo/core.h"

/* What a JSON value is, for "expected a JSON object, got ...". */
static const char *json_kind(const cJSON *j) {
    return cJSON_IsArray(j) ? "an array" : cJSON_IsString(j) ? "a string" : cJSON_IsNumber(j) ? "a number"
         : cJSON_IsBool(j) ? "a boolean" : "null";
}

static int cmp_key(const void *a, const void *b) {
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* cJSON keeps both copies of a key and its lookups return the first; Python's json, and so a
 * datasets/TRL pipeline, keeps the last: the same line would be another record there. */
const char *fdpo_json_duplicate_key(const cJSON *j) {
    if (!cJSON_IsObject(j) && !cJSON_IsArray(j)) return NULL;
    size_t n = 0;
    for (const cJSON *e = j->child; e; e = e->next) {
        const char *d = fdpo_json_duplicate_key(e);
        if (d) return d;
        n++;
    }
    if (!cJSON_IsObject(j) || n < 2) return NULL;
    const cJSON **keys = fdpo_malloc(n * sizeof *keys);
    n = 0;
    for (const cJSON *e = j->child; e; e = e->next) keys[n++] = e;
    qsort(keys, n, sizeof *keys, cmp_key);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (!strcmp(keys[i - 1]->string, keys[i]->string)) dup = keys[i]->string;
    free(keys);
    return dup;
}

/* The first control character JSON forbids in line[0..n), or n: U+0001..U+001F raw inside a
 * string (they must be escaped), or any but tab, CR and LF between tokens, a 0 byte too (cJSON
 * skips it as whitespace there). cJSON takes them; Python's json, and so a datasets/TRL
 * pipeline, refuses the line. A raw 0 byte inside a string is left to fdpo_jsonl_check_nul,
 * which names the field it would cut. *in_string: where it was. */
size_t fdpo_json_raw_control(const char *line, size_t n, int *in_string) {
    int in = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)line[i];
        if (in) {
            if (c == '"') in = 0;
            else if (c == '\\') i++;
            else if (c < 0x20 && c != 0) { *in_string = 1; return i; }
        } else if (c == '"') in = 1;
        else if (c < 0x20 && c != '\t' && c != '\r' && c != '\n') { *in_string = 0; return i; }
    }
    return n;
}

size_t fdpo_json_next_number(const char *s, size_t n, size_t from, size_t *len) {
    int in = 0;
    for (size_t i = from; i < n; i++) {
        char c = s[i];
        if (in) {
            if (c == '"') in = 0;
            else if (c == '\\') i++;
        } else if (c == '"') in = 1;
        else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t k = i;
            while (k < n && s[k] && strchr("0123456789+-.eE", s[k])) k++;   /* what cJSON hands strtod */
            *len = k - i;
            return i;
        }
    }
    return n;
}

/* What RFC 8259's number grammar, -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, finds wrong
 * with t[0..n), or NULL. cJSON reads numbers with strtod, which also takes 01, 0. and 1.e5;
 * Python's json, and so a datasets/TRL pipeline, refuses the line. */
static const char *bad_number(const char *t, size_t n) {
#define DIGIT(k) ((k) < n && t[k] >= '0' && t[k] <= '9')
    size_t i = t[0] == '-';
    if (!DIGIT(i)) return "no digit before the first non-digit";
    if (t[i] == '0' && DIGIT(i + 1)) return "a leading zero";
    while (DIGIT(i)) i++;
    if (i < n && t[i] == '.') {
        i++;
        if (!DIGIT(i)) return "no digit after the '.'";
        while (DIGIT(i)) i++;
    }
    if (i < n && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        if (i < n && (t[i] == '+' || t[i] == '-')) i++;
        if (!DIGIT(i)) return "no digit in its exponent";
        while (DIGIT(i)) i++;
    }
    return i < n ? "text after its digits" : NULL;
#undef DIGIT
}

/* The line and column (bytes, from 1) of text[off], text starting on line line_no: a JSONL
 * line has no newline, a whole file (a --lexicon) has many. */
size_t fdpo_json_line_col(const char *text, size_t off, size_t line_no, size_t *col) {
    size_t start = 0;
    for (size_t i = 0; i < off; i++)
        if (text[i] == '\n') { line_no++; start = i + 1; }
    *col = off - start + 1;
    return line_no;
}

int fdpo_json_refuse_invalid_utf8(const char *path, size_t line_no, const char *text, size_t n) {
    size_t col, bad = fdpo_utf8_first_invalid(text, n);
    if (bad == n) return 0;
    size_t ln = fdpo_json_line_col(text, bad, line_no, &col);
    return fdpo_error("%s:%zu: " FDPO_JSON_INVALID_UTF8, path, ln, (unsigned)(unsigned char)text[bad], col);
}

int fdpo_jsonl_refuse_bom(const char *path, size_t line_no) {
    return fdpo_error("%s:%zu: a UTF-8 byte order mark at the start of the line, column 1 (only the file's start may "
                      "hold one, once; Python's json refuses the line)", path, line_no);
}

size_t fdpo_json_bad_u_escape(const char *s, size_t n) {
#define HEX(c) (((c) >= '0' && (c) <= '9') || ((c) >= 'a' && (c) <= 'f') || ((c) >= 'A' && (c) <= 'F'))
    int in = 0;
    for (size_t i = 0; i < n; i++) {
        if (!in) { in = s[i] == '"'; continue; }
        if (s[i] == '"') { in = 0; continue; }
        if (s[i] != '\\') continue;
        if (i + 1 < n && s[i + 1] == 'u') {
            size_t k = 0;
            while (k < 4 && i + 2 + k < n && HEX(s[i + 2 + k])) k++;
            if (k < 4) return i + 1;   /* its u, where Python's json points */
        }
        i++; /* the escaped character */
    }
    return n;
#undef HEX
}

fdpo_json_flaw fdpo_json_cjson_only(const char *s, size_t n) {
    fdpo_json_flaw f = {FDPO_JSON_STRICT, n, 0, 0, NULL};
    if ((f.at = fdpo_json_raw_control(s, n, &f.in_string)) < n) { f.kind = FDPO_JSON_RAW_CONTROL; return f; }
    if ((f.at = fdpo_json_bad_u_escape(s, n)) < n) { f.kind = FDPO_JSON_U_ESCAPE; return f; }
    size_t len = 0;
    for (size_t at = fdpo_json_next_number(s, n, 0, &len); at < n; at = fdpo_json_next_number(s, n, at + len, &len)) {
        const char *why = bad_number(s + at, len);
        if (why) return (fdpo_json_flaw){FDPO_JSON_NUMBER, at, len, 0, why};
    }
    f.at = n;
    return f;
}

/* Every check but the root's kind, in the order fdpo_jsonl_parse_object has always made
 * them; what: "object" or "value", the noun of "unexpected text after the JSON ...". The
 * duplicate key is left to the caller: a JSONL line that is not an object is named so first.
 * utf8: refuse invalid UTF-8 (every reader of data; the report shows it as U+FFFD). */
static cJSON *parse_json(const char *path, size_t line_no, const char *line, size_t n, const char *what, int utf8) {
    /* the file's own byte order mark: line 1 may start with one (a reader that skipped it hands
     * it on with the line; a whole-file reader never skipped it). Columns count from after it,
     * as Python's, which decodes the file with utf-8-sig. */
    const size_t own = line_no == 1 ? fdpo_jsonl_bom(line, n) : 0;
    line += own;
    n -= own;
    size_t col;
    /* anywhere, also in a column or key nobody reads: Python refuses the file */
    if (utf8 && fdpo_json_refuse_invalid_utf8(path, line_no, line, n)) return NULL;
    /* cJSON skips a BOM at the start of every text it is given. Any but the file's own is
     * inside the file: one starting a later line (cat a.jsonl b.jsonl, b saved with one) or a
     * second right after the file's own (a file saved with a BOM by a tool that kept the one it
     * read). Python's json refuses the line ("Unexpected UTF-8 BOM") at column 1. */
    if (fdpo_jsonl_bom(line, n)) {
        fdpo_jsonl_refuse_bom(path, line_no);
        return NULL;
    }
    /* what only cJSON reads: a raw control character or a bad \u escape before the parse, a
     * number outside JSON's grammar after it (its errors come first) */
    const fdpo_json_flaw flaw = fdpo_json_cjson_only(line, n);
    if (flaw.kind == FDPO_JSON_RAW_CONTROL) {
        size_t ln = fdpo_json_line_col(line, flaw.at, line_no, &col);
        fdpo_error("%s:%zu: invalid JSON: a raw control character (U+%04X) %s at column %zu%s", path, ln,
                   (unsigned)(unsigned char)line[flaw.at], flaw.in_string ? "inside a string" : "between values", col,
                   flaw.in_string ? " (JSON needs it escaped, as \\t or \\u00XX)" : "");
        return NULL;
    }
    if (flaw.kind == FDPO_JSON_U_ESCAPE) {
        size_t ln = fdpo_json_line_col(line, flaw.at, line_no, &col);
        fdpo_error("%s:%zu: " FDPO_JSON_BAD_U_ESCAPE, path, ln, col);
        return NULL;
    }
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(line, n, &end, 0);
    if (!obj) {
        size_t ln = fdpo_json_line_col(line, end && end >= line && end <= line + n ? (size_t)(end - line) : 0, line_no, &col);
        fdpo_error("%s:%zu: invalid JSON near column %zu", path, ln, col);
        return NULL;
    }
    size_t used = end && end >= line ? (size_t)(end - line) : n;
    while (used < n && (line[used] == ' ' || line[used] == '\t' || line[used] == '\r' || line[used] == '\n')) used++;
    if (used < n) {
        cJSON_Delete(obj);
        size_t ln = fdpo_json_line_col(line, used, line_no, &col);
        fdpo_error("%s:%zu: unexpected text after the JSON %s at column %zu", path, ln, what, col);
        return NULL;
    }
    if (flaw.kind == FDPO_JSON_NUMBER) {
        size_t ln = fdpo_json_line_col(line, flaw.at, line_no, &col);
        fdpo_error("%s:%zu: invalid JSON: the number '%.*s' at column %zu has %s (not a JSON number: Python's "
                   "json refuses the line)", path, ln, (int)(flaw.len > 40 ? 40 : flaw.len), line + flaw.at, col, flaw.why);
        cJSON_Delete(obj);
        return NULL;
    }
    return obj;
}

/* The offset in text[0..n) (valid JSON) of key's second occurrence within one object, or n when
 * it is not found as written: where the duplicate-key message points in a text of several lines
 * (a config.json, a --lexicon). Keys spelt with an escape are not compared (their text is not
 * the decoded key: the line would be another key's), so such a key is named at line_no. One
 * pass: each open object or array on the stack says whether the key was met in it (0 an array,
 * 1 an object without it yet, 2 with it). */
static size_t duplicate_key_offset(const char *text, size_t n, const char *key) {
    size_t klen = strlen(key), depth = 0, cap = 64, at = n;
    unsigned char *stack = fdpo_malloc(cap);
    for (size_t i = 0; i < n && at == n; i++) {
        const char c = text[i];
        if (c == '{' || c == '[') {
            if (depth == cap) stack = fdpo_realloc(stack, cap *= 2);
            stack[depth++] = c == '{' ? 1 : 0;
        } else if (c == '}' || c == ']') {
            if (depth) depth--;
        } else if (c == '"') {
            size_t start = i + 1, j = start;
            int escaped = 0;
            while (j < n && text[j] != '"') {
                if (text[j] == '\\') { escaped = 1; j += 2; } else j++;
            }
            size_t k = j + 1;
            while (k < n && (text[k] == ' ' || text[k] == '\t' || text[k] == '\r' || text[k] == '\n')) k++;
            if (k < n && text[k] == ':' && depth && stack[depth - 1] && !escaped && j - start == klen &&
                !memcmp(text + start, key, klen)) {
                if (stack[depth - 1] == 2) at = start - 1;
                stack[depth - 1] = 2;
            }
            i = j;
        }
    }
    free(stack);
    return at;
}

static cJSON *refuse_duplicate(const char *path, size_t line_no, const char *text, size_t n, cJSON *obj) {
    const char *dup = fdpo_json_duplicate_key(obj);
    if (!dup) return obj;
    size_t col, at = duplicate_key_offset(text, n, dup);
    fdpo_error("%s:%zu: key \"%.64s\" appears twice in one object (readers differ on which one counts)", path,
               at < n ? fdpo_json_line_col(text, at, line_no, &col) : line_no, dup);
    cJSON_Delete(obj);
    return NULL;
}

cJSON *fdpo_json_parse_value(const char *path, size_t line_no, const char *text, size_t n) {
    cJSON *v = parse_json(path, line_no, text, n, "value", 0);
    return v ? refuse_duplicate(path, line_no, text, n, v) : NULL;
}

static cJSON *parse_object(const char *path, size_t line_no, const char *line, size_t n, const char *expect, int utf8) {
    cJSON *obj = parse_json(path, line_no, line, n, "object", utf8);
    if (!obj) return NULL;
    if (!cJSON_IsObject(obj)) {
        fdpo_error("%s:%zu: expected a JSON object%s%s, got %s", path, line_no, expect ? " " : "", expect ? expect : "",
                   json_kind(obj));
        cJSON_Delete(obj);
        return NULL;
    }
    return obj;
}

/* The value of the four hex digits at s, or -1 when they are not four hex digits. */
static long hex4(const char *s) {
    long v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Python's json.loads reads more than RFC 8259: the constants NaN, Infinity and -Infinity
 * (json.dumps writes them for a float nan or inf) and a \uD800..\uDFFF escape that is not
 * half of a surrogate pair (a lone surrogate in the str); cJSON refuses both. t[0..n), a
 * copy of the text, gets each spelt as JSON cJSON reads, at the same length so that the
 * columns of any other error stay: a constant as "[]" and spaces (a value that joins no
 * neighbour, so "1NaN" and "-NaN" stay errors, as in Python), a lone surrogate as \u003f. */
static void python_extensions_as_json(char *t, size_t n) {
    static const char *const CONSTANTS[] = {"NaN", "Infinity", "-Infinity"};
    int in = 0;
    for (size_t i = 0; i < n; i++) {
        if (in) {
            if (t[i] == '"') in = 0;
            else if (t[i] == '\\' && i + 5 < n && t[i + 1] == 'u' && hex4(t + i + 2) >= 0) {
                long u = hex4(t + i + 2), low = i + 11 < n && t[i + 6] == '\\' && t[i + 7] == 'u' ? hex4(t + i + 8) : -1;
                if (u >= 0xD800 && u <= 0xDBFF && low >= 0xDC00 && low <= 0xDFFF) i += 6;   /* a pair: both escapes */
                else if (u >= 0xD800 && u <= 0xDFFF) memcpy(t + i + 2, "003f", 4);
                i += 5;
            } else if (t[i] == '\\') i++;   /* the escaped character (a bad \u is refused later) */
            continue;
        }
        if (t[i] == '"') { in = 1; continue; }
        for (size_t k = 0; k < sizeof CONSTANTS / sizeof *CONSTANTS; k++) {
            size_t len = strlen(CONSTANTS[k]);
            if (len > n - i || memcmp(t + i, CONSTANTS[k], len)) continue;
            memcpy(t + i, "[]", 2);
            memset(t + i + 2, ' ', len - 2);
            i += len - 1;
            break;
        }
    }
}

void fdpo_json_python_extensions_as_json(char *t, size_t n) { python_extensions_as_json(t, n); }

int fdpo_json_check_python_object(const char *path, const char *text, size_t n) {
    size_t col;
    if (fdpo_jsonl_bom(text, n))
        return fdpo_error("%s:1: a UTF-8 byte order mark starts the file (Python's json refuses it: \"Unexpected "
                          "UTF-8 BOM\")", path);
    if (fdpo_json_refuse_invalid_utf8(path, 1, text, n)) return -1;   /* transformers reads it as UTF-8 */
    const char *nul = memchr(text, 0, n);
    if (nul) {   /* Python's json refuses it in a string and between values; cJSON's string ends there */
        size_t ln = fdpo_json_line_col(text, (size_t)(nul - text), 1, &col);
        return fdpo_error("%s:%zu: invalid JSON: a raw control character (U+0000) at column %zu", path, ln, col);
    }
    char *t = fdpo_malloc(n + 1);
    memcpy(t, text, n);
    t[n] = 0;
    python_extensions_as_json(t, n);
    cJSON *obj = fdpo_json_parse_object_any_keys(path, 1, t, n, NULL);
    free(t);
    cJSON_Delete(obj);
    return obj ? 0 : -1;
}

cJSON *fdpo_json_parse_object_any_keys(const char *path, size_t line_no, const char *line, size_t n, const char *expect) {
    return parse_object(path, line_no, line, n, expect, 1);
}

cJSON *fdpo_jsonl_parse_object(const char *path, size_t line_no, const char *line, size_t n, const char *expect) {
    cJSON *obj = parse_object(path, line_no, line, n, expect, 1);
    return obj ? refuse_duplicate(path, line_no, line, n, obj) : NULL;
}

cJSON *fdpo_jsonl_parse_object_any_bytes(const char *path, size_t line_no, const char *line, size_t n) {
    cJSON *obj = parse_object(path, line_no, line, n, NULL, 0);
    return obj ? refuse_duplicate(path, line_no, line, n, obj) : NULL;
}

size_t fdpo_jsonl_bom(const char *text, size_t len) {
    return len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3) ? 3 : 0;
}

/* The first NUL of raw[from..n), from outside a string or (in_string) inside one. Escapes are
 * skipped pairwise so that "\\u0000" (a backslash, then text) does not count. */
static size_t find_nul_from(const char *raw, size_t n, size_t from, int in_string) {
    for (size_t i = from; i < n; i++) {
        char c = raw[i];
        if (!in_string) { in_string = c == '"'; continue; }
        if (c == '"') { in_string = 0; continue; }
        if (c == 0) return i;
        if (c != '\\') continue;
        if (i + 5 < n && raw[i + 1] == 'u' && !memcmp(raw + i + 2, "0000", 4)) return i;
        i++; /* the escaped character */
    }
    return n;
}

size_t fdpo_json_find_nul(const char *raw, size_t n) { return find_nul_from(raw, n, 0, 0); }

size_t *fdpo_json_member_offsets(const char *s, size_t n, size_t *count) {
    size_t depth = 0, k = 0, cap = 64;
    size_t *at = fdpo_malloc(cap * sizeof *at);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '{' || s[i] == '[') depth++;
        else if ((s[i] == '}' || s[i] == ']') && depth) depth--;
        else if (s[i] == '"') {
            size_t start = i;
            for (i++; i < n && s[i] != '"'; i++)
                if (s[i] == '\\') i++;
            size_t j = i + 1;   /* a key is the string before a ':' */
            while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\r' || s[j] == '\n')) j++;
            if (depth == 1 && j < n && s[j] == ':') {
                if (k == cap) at = fdpo_realloc(at, (cap *= 2) * sizeof *at);
                at[k++] = start;
            }
        }
    }
    *count = k;
    return at;
}

/* Walk a (NUL-cut) and b (the same text with every NUL made U+0001) together; the
 * first key or string whose lengths differ held a NUL. path gets its name. */
static int find_cut(const cJSON *a, const cJSON *b, char *path, size_t cap) {
    if (cJSON_IsString(a) && cJSON_IsString(b) && strlen(a->valuestring) != strlen(b->valuestring)) return 1;
    size_t len = strlen(path), i = 0;
    for (const cJSON *x = a->child, *y = b->child; x && y; x = x->next, y = y->next, i++) {
        if (cJSON_IsArray(a)) snprintf(path + len, cap - len, "[%zu]", i);
        else if (x->string && y->string && strlen(x->string) != strlen(y->string)) {
            snprintf(path + len, cap - len, "%s%s\\u0000... (a key)", len ? "." : "", x->string);
            return 1;
        } else snprintf(path + len, cap - len, "%s%s", len ? "." : "", y->string ? y->string : "?");
        if (find_cut(x, y, path, cap)) return 1;
        path[len] = 0;
    }
    return 0;
}

static int check_nul(const char *where, const char *field, const char *raw, size_t n, const cJSON *root) {
    size_t at = fdpo_json_find_nul(raw, n);
    if (at == n) return 0;
    char *copy = fdpo_malloc(n + 1);
    memcpy(copy, raw, n);
    copy[n] = 0;
    /* every NUL becomes U+0001, in one pass (each search goes on inside the string it was in:
     * searching from the start again took seconds on a line of many \u0000) */
    for (size_t i = at; i < n;) {
        size_t next = copy[i] == 0 ? i + 1 : i + 6;
        if (copy[i] == 0) copy[i] = 1;
        else copy[i + 5] = '1';
        i = find_nul_from(copy, n, next, 1);
    }
    cJSON *whole = cJSON_ParseWithLength(copy, n);
    free(copy);
    char path[256];
    snprintf(path, sizeof path, "%s", field);
    int named = whole && root && find_cut(root, whole, path, sizeof path);
    cJSON_Delete(whole);
    const char *sep = where ? ": " : "";
    if (!where) where = "";
    if (named && path[0])
        return fdpo_error("%s%sfield '%s' contains a NUL character (\\u0000); text with NUL cannot be tokenized faithfully",
                          where, sep, path);
    return fdpo_error("%s%sa string contains a NUL character at column %zu; text with NUL cannot be tokenized faithfully",
                      where, sep, at + 1);
}

int fdpo_jsonl_check_nul(const char *where, const char *raw, size_t n, const cJSON *root) {
    return check_nul(where, "", raw, n, root);
}

int fdpo_jsonl_check_nul_in(const char *field, const char *raw, size_t n, const cJSON *root) {
    return check_nul(NULL, field, raw, n, root);
}

int fdpo_json_size(const cJSON *j, size_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!(v >= 0 && v <= 9007199254740992.0) || v != floor(v)) return -1;
    *out = (size_t)v;
    return 0;
}
