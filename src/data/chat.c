/* Chat templates (include/fdpo/chat.h): recognition by content, rendering with template and
 * training masks, and encoding with specials matched in template text only. */
#include <cJSON.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/chat.h"
#include "fdpo/core.h"
#include "data/chat_known.h"
#include "data/jsonl.h"

static const char *const NAMES[] = {"plain", "chatml", "llama3", "zephyr"};

const char *fdpo_chat_name(fdpo_chat_kind kind) { return NAMES[kind]; }

int fdpo_chat_parse_name(const char *name, fdpo_chat_kind *kind) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, NAMES[i])) { *kind = (fdpo_chat_kind)i; return 0; }
    return fdpo_error("--chat-template: '%s' is not a built-in template (" FDPO_CHAT_BUILTINS ", or auto)", name);
}

/* ---- recognition: the file's template is one of FDPO_CHAT_KNOWN (data/chat_known.h), up to
 * what Jinja ignores. Both are reduced to a canonical form and compared: newlines as Jinja's
 * lexer normalises them (\r\n and \r are \n, one trailing \n dropped: keep_trailing_newline is
 * off in transformers), whitespace inside {{ }} and {% %} only where it separates two words
 * or two operator characters (`! =` and `= =` are not Jinja's `!=` and `==` but syntax errors),
 * string literals by their value (either quote, any escape), comments by their
 * whitespace-control marks only. Template text outside the tags must be the same byte for
 * byte (trim_blocks and lstrip_blocks make its whitespace count). Anything else (a filter, a
 * literal, a raise_exception, a missing separator) makes another template, which renders
 * otherwise than the built-in: there is no Jinja engine here to render it. ---- */

/* A Jinja string literal's value (Python's rules, as Jinja's lexer decodes it with
 * "unicode-escape"), p just after the opening quote q, appended to *o escaped for the
 * canonical form (\ and " escaped; a hole character kept raw); *end after the closing
 * quote. -1 for what this cannot decode exactly: \N{...}, a bad \x \u \U, a surrogate, NUL,
 * a backslash before a non-ASCII character, no closing quote. */
static int canon_string(const char *p, char q, fdpo_chat_text *o, const char **end) {
    fdpo_chat_text_put(o, "\"", 1, 0, 0);
    for (;;) {
        unsigned char c = (unsigned char)*p;
        if (!c) return -1;
        if (c == (unsigned char)q) break;
        uint32_t cp;
        if (c != '\\') {
            if (c == '"' || c == '\\') fdpo_chat_text_put(o, "\\", 1, 0, 0);
            fdpo_chat_text_put(o, p++, 1, 0, 0);
            continue;
        }
        char e = p[1];
        p += 2;
        const char *simple = strchr("\\'\"abfnrtv", e);
        if (e && simple) {
            cp = (uint32_t)"\\'\"\a\b\f\n\r\t\v"[simple - "\\'\"abfnrtv"];
        } else if (e == '\n') {
            continue;   /* a backslash-newline is nothing */
        } else if (e >= '0' && e <= '7') {
            cp = (uint32_t)(e - '0');
            for (int k = 0; k < 2 && *p >= '0' && *p <= '7'; k++) cp = cp * 8 + (uint32_t)(*p++ - '0');
        } else if (e == 'x' || e == 'u' || e == 'U') {
            int digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            cp = 0;
            for (int k = 0; k < digits; k++, p++) {
                char h = *p;
                int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (v < 0) return -1;
                cp = cp * 16 + (uint32_t)v;
            }
        } else if (e && !(e & 0x80) && e != 'N') {
            fdpo_chat_text_put(o, "\\\\", 2, 0, 0);   /* an unknown escape keeps its backslash */
            p--;
            continue;
        } else {
            return -1;
        }
        if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
        char u[4];
        size_t n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        if (n == 1) u[0] = (char)cp;
        else if (n == 2) { u[0] = (char)(0xC0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3F)); }
        else if (n == 3) { u[0] = (char)(0xE0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[2] = (char)(0x80 | (cp & 0x3F)); }
        else { u[0] = (char)(0xF0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F)); u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); }
        if (cp == '"' || cp == '\\') fdpo_chat_text_put(o, "\\", 1, 0, 0);
        fdpo_chat_text_put(o, u, n, 0, 0);
    }
    fdpo_chat_text_put(o, "\"", 1, 0, 0);
    *end = p + 1;
    return 0;
}

static int is_word(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
/* the characters of Jinja's two-character operators (== != <= >= // **): joined across
 * whitespace they would lex as another token */
static int is_operator(char c) { return c && strchr("=!<>*/", c) != NULL; }

/* The canonical form of a template source (above), malloc'd; NULL when it cannot be read
 * (an unclosed tag, comment or string, an escape canon_string refuses). */
static char *canonical(const char *src) {
    size_t len = strlen(src);
    char *s = fdpo_malloc(len + 1);   /* newlines normalised */
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') { s[n++] = '\n'; if (src[i + 1] == '\n') i++; }
        else s[n++] = src[i];
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;
    fdpo_chat_text o = {0};
    const char *p = s;
    while (*p) {
        const char *tag = p;
        while (*tag && !(tag[0] == '{' && (tag[1] == '{' || tag[1] == '%' || tag[1] == '#'))) tag++;
        fdpo_chat_text_put(&o, p, (size_t)(tag - p), 0, 0);   /* template text, as it is */
        if (!*tag) break;
        char kind = tag[1];
        const char *close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
        fdpo_chat_text_put(&o, tag, 2, 0, 0);
        p = tag + 2;
        if (*p == '-' || *p == '+') fdpo_chat_text_put(&o, p++, 1, 0, 0);
        if (kind == '#') {   /* a comment renders nothing: only its whitespace control counts */
            const char *e = strstr(p, close);
            if (!e) goto bad;
            if (e > p && (e[-1] == '-' || e[-1] == '+')) fdpo_chat_text_put(&o, e - 1, 1, 0, 0);
            fdpo_chat_text_put(&o, close, 2, 0, 0);
            p = e + 2;
            continue;
        }
        int space = 0;
        for (;;) {
            if (!*p) goto bad;
            if (p[0] == close[0] && p[1] == close[1]) { fdpo_chat_text_put(&o, close, 2, 0, 0); p += 2; break; }
            if (*p == ' ' || *p == '\t' || *p == '\n') { space = 1; p++; continue; }
            if (space && o.n && ((is_word(o.text[o.n - 1]) && is_word(*p)) || (is_operator(o.text[o.n - 1]) && is_operator(*p))))
                fdpo_chat_text_put(&o, " ", 1, 0, 0);
            space = 0;
            if (*p == '\'' || *p == '"') {
                if (canon_string(p + 1, *p, &o, &p)) goto bad;
            } else {
                fdpo_chat_text_put(&o, p++, 1, 0, 0);
            }
        }
    }
    free(s);
    char *out = o.text ? o.text : fdpo_strdup("");
    o.text = NULL;
    fdpo_chat_text_free(&o);
    return out;
bad:
    free(s);
    fdpo_chat_text_free(&o);
    return NULL;
}

/* The value of a canonical string literal's text s[0..n) (canon_string's escapes undone). */
static char *canon_value(const char *s, size_t n) {
    char *v = fdpo_malloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) v[k++] = s[i] == '\\' && i + 1 < n ? s[++i] : s[i];
    v[k] = 0;
    return v;
}

/* 1 when the canonical text c is the canonical known source pat, each hole of pat (inside a
 * literal) matching the rest of c's literal up to the text that follows the hole there;
 * holes[k] then holds hole k's value (malloc'd). */
static int canon_match(const char *c, const char *pat, char **holes) {
    int k = 0;
    while (*pat) {
        if (*pat != HOLE[0]) {
            if (*c++ != *pat++) return 0;
            continue;
        }
        pat++;
        const char *ps = pat, *ce = c;   /* the literal's rest after the hole, in pat and in c */
        while (*ps && *ps != '"') ps += *ps == '\\' && ps[1] ? 2 : 1;
        while (*ce && *ce != '"') ce += *ce == '\\' && ce[1] ? 2 : 1;
        size_t tail = (size_t)(ps - pat);
        if (!*ce || (size_t)(ce - c) < tail || memcmp(ce - tail, pat, tail)) return 0;
        const char *cut = ce - tail;
        size_t bs = 0;   /* the cut must not split an escape: an even run of backslashes before it */
        while (cut - bs > c && *(cut - bs - 1) == '\\') bs++;
        if (bs % 2) return 0;
        if (k < KNOWN_MAX_HOLES) holes[k++] = canon_value(c, (size_t)(cut - c));
        c = cut;
    }
    return *c == 0;
}

/* The entry of FDPO_CHAT_KNOWN that src is, with its holes' values (holes[KNOWN_MAX_HOLES],
 * malloc'd; NULL where none); NULL when src is none of them. */
static const fdpo_chat_known *recognise(const char *src, char **holes) {
    for (int k = 0; k < KNOWN_MAX_HOLES; k++) holes[k] = NULL;
    char *c = canonical(src);
    const fdpo_chat_known *found = NULL;
    for (size_t i = 0; c && i < FDPO_CHAT_N_KNOWN && !found; i++) {
        char *pat = canonical(FDPO_CHAT_KNOWN[i].source);
        if (canon_match(c, pat, holes)) found = &FDPO_CHAT_KNOWN[i];
        else for (int k = 0; k < KNOWN_MAX_HOLES; k++) { free(holes[k]); holes[k] = NULL; }
        free(pat);
    }
    free(c);
    return found;
}

static const char *hole_value(const fdpo_chat_known *e, char **holes, int what) {
    for (int k = 0; k < KNOWN_MAX_HOLES; k++)
        if (e->holes[k] == what) return holes[k];
    return NULL;
}

int fdpo_chat_detect(const char *s, fdpo_chat_kind *kind) {
    char *holes[KNOWN_MAX_HOLES];
    const fdpo_chat_known *e = recognise(s, holes);
    for (int k = 0; k < KNOWN_MAX_HOLES; k++) free(holes[k]);
    if (!e) return -1;
    *kind = e->kind;
    return 0;
}

static char *token_text(const fdpo_tokenizer *t, int32_t id) {
    if (id < 0) return NULL;
    size_t l;
    const char *b = fdpo_tokenizer_token_bytes(t, id, &l);
    char *s = fdpo_malloc(l + 1);
    memcpy(s, b, l); s[l] = 0;
    return s;
}

/* The bos and eos texts the built-in kind renders for tokenizer t (NULL: none). */
static void builtin_tokens(const fdpo_tokenizer *t, fdpo_chat_kind kind, char **bos, char **eos) {
    *bos = token_text(t, fdpo_tokenizer_bos(t));
    *eos = token_text(t, fdpo_tokenizer_eot(t));
    if (kind == FDPO_CHAT_LLAMA3 && !*bos) *bos = token_text(t, fdpo_tokenizer_token_id(t, "<|begin_of_text|>"));
}

/* fdpo's saved source for kind: the bos and eos it renders for t written as Jinja literals
 * (transformers leaves bos_token or eos_token undefined, and Jinja refuses undefined + text,
 * when the tokenizer's config names none; fdpo renders no bos, or its default eos). */
char *fdpo_chat_source(const fdpo_tokenizer *t, fdpo_chat_kind kind) {
    char *bos, *eos;
    builtin_tokens(t, kind, &bos, &eos);
    const fdpo_chat_known *e = NULL;
    for (size_t i = 0; i < FDPO_CHAT_N_KNOWN && !e; i++) {
        const fdpo_chat_known *k = &FDPO_CHAT_KNOWN[i];
        if ((k->flags & KNOWN_SAVED) && k->kind == kind && (kind != FDPO_CHAT_LLAMA3 || !(k->flags & KNOWN_NO_BOS) == !!bos))
            e = k;
    }
    const char *fill = kind == FDPO_CHAT_LLAMA3 ? bos : eos;
    fdpo_chat_text o = {0};
    for (const char *p = e->source; *p; p++) {
        if (*p != HOLE[0]) { fdpo_chat_text_put(&o, p, 1, 0, 0); continue; }
        for (const char *f = fill ? fill : ""; *f; f++) {   /* inside '...': Python escapes */
            const char *esc = *f == '\\' ? "\\\\" : *f == '\'' ? "\\'" : *f == '\r' ? "\\r" : NULL;
            if (esc) fdpo_chat_text_put(&o, esc, 2, 0, 0);
            else fdpo_chat_text_put(&o, f, 1, 0, 0);
        }
    }
    free(bos); free(eos);
    char *out = o.text;
    o.text = NULL;
    fdpo_chat_text_free(&o);
    return out;
}

int fdpo_chat_for(const fdpo_tokenizer *t, fdpo_chat *out) {
    memset(out, 0, sizeof *out);
    const char *name = NULL;
    const char *src = fdpo_tokenizer_chat_template(t, &name);
    char *holes[KNOWN_MAX_HOLES] = {0};
    const fdpo_chat_known *known = src ? recognise(src, holes) : NULL;
    const char *problem, *origin = fdpo_tokenizer_chat_template_origin(t, &problem);
    int rc = 0;
    if (name && strcmp(name, "auto")) {
        rc = fdpo_chat_parse_name(name, &out->kind);
    } else if (problem) {
        rc = fdpo_error("%s", problem);
    } else if (src && !known) {
        rc = fdpo_error("%s is not one fdpo recognises: fdpo has no Jinja engine and renders only the published "
                        "templates it knows to render as a built-in (docs/training.md#chat-templates); name a "
                        "built-in to render the messages with it instead: --chat-template NAME (" FDPO_CHAT_BUILTINS ") in sft, "
                        "dpo, kto, rm, generate, eval and score (online and rl render with the --model checkpoint's own: "
                        "save one with a built-in first, e.g. fdpo sft --chat-template NAME)",
                        origin);
    } else {
        out->kind = known ? known->kind : FDPO_CHAT_PLAIN; /* plain when the files have no template */
    }
    if (rc) { for (int k = 0; k < KNOWN_MAX_HOLES; k++) free(holes[k]); return -1; }
    builtin_tokens(t, out->kind, &out->bos, &out->eos);
    out->start_bos = out->kind == FDPO_CHAT_LLAMA3;
    if (known && known->kind == out->kind) { /* the file's own parameters */
        const char *v;
        if ((v = hole_value(known, holes, HOLE_SYSTEM))) out->default_system = fdpo_strdup(v);
        const char *kd = hole_value(known, holes, HOLE_KNOWLEDGE_DATE), *date = hole_value(known, holes, HOLE_DATE);
        if (kd && date) {
            size_t n = strlen(kd) + strlen(date) + 64;
            out->preamble = fdpo_malloc(n);
            snprintf(out->preamble, n, "Cutting Knowledge Date: %s\nToday Date: %s\n\n", kd, date);
        }
        if (known->flags & KNOWN_START_BOS) out->start_bos = 1;
        if (known->flags & KNOWN_NO_BOS) out->start_bos = 0;
        /* the file's bos_token is the config's only (transformers passes no other): Llama-3.1's
         * {{- bos_token }} renders none without one, and Meta-Llama-3's bos_token + text
         * raises in Jinja; the <|begin_of_text|> fallback is for a named built-in, whose saved
         * source writes it as a literal */
        free(out->bos);
        out->bos = token_text(t, fdpo_tokenizer_bos(t));
        if (!out->bos && (known->flags & KNOWN_BOS_PLUS)) {
            for (int k = 0; k < KNOWN_MAX_HOLES; k++) free(holes[k]);
            fdpo_chat_free(out);
            return fdpo_error("%s (Meta-Llama-3's) writes bos_token + text, and the tokenizer's config sets no "
                              "bos_token: Jinja refuses to render it ('bos_token' is undefined), as transformers' "
                              "apply_chat_template would; set bos_token (<|begin_of_text|>) in tokenizer_config.json",
                              origin);
        }
        /* the template's literal bos / end of turn is what it renders */
        if ((v = hole_value(known, holes, HOLE_BOS))) { free(out->bos); out->bos = fdpo_strdup(v); }
        if ((v = hole_value(known, holes, HOLE_EOS))) { free(out->eos); out->eos = fdpo_strdup(v); }
    }
    for (int k = 0; k < KNOWN_MAX_HOLES; k++) free(holes[k]);
    return 0;
}

void fdpo_chat_free(fdpo_chat *c) {
    free(c->default_system); free(c->preamble); free(c->bos); free(c->eos);
    memset(c, 0, sizeof *c);
}

void fdpo_chat_text_free(fdpo_chat_text *t) {
    free(t->text); free(t->tmpl); free(t->train);
    memset(t, 0, sizeof *t);
}

void fdpo_chat_text_put(fdpo_chat_text *t, const char *s, size_t n, int tmpl, int train) {
    if (t->n + n + 1 > t->cap) {
        t->cap = 2 * (t->n + n + 1) + 64;
        t->text = fdpo_realloc(t->text, t->cap);
        t->tmpl = fdpo_realloc(t->tmpl, t->cap);
        t->train = fdpo_realloc(t->train, t->cap);
    }
    if (n) memcpy(t->text + t->n, s, n);
    memset(t->tmpl + t->n, tmpl, n);
    memset(t->train + t->n, train, n);
    t->n += n;
    t->text[t->n] = 0;
}
static void put_str(fdpo_chat_text *t, const char *s, int tmpl, int train) { if (s) fdpo_chat_text_put(t, s, strlen(s), tmpl, train); }

/* The length of the whitespace character that s[0..n) starts with (exactly n bytes of it
 * when exact), 0 if it does not start with one. Whitespace is Python's str.isspace(), which
 * Jinja's trim (str.strip) uses: \t \n \v \f \r, U+001C..U+001F, space, U+0085, U+00A0,
 * U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000 (Unicode White_Space plus
 * the four ASCII separators; not U+180E, U+200B or U+FEFF). */
static size_t space_len(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    if (s[0] < 0x80) return (s[0] >= 0x09 && s[0] <= 0x0D) || (s[0] >= 0x1C && s[0] <= 0x20) ? 1 : 0;
    uint32_t cp;
    size_t k;
    if ((s[0] & 0xE0) == 0xC0 && n >= 2 && (s[1] & 0xC0) == 0x80) {
        cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F); k = 2;
    } else if ((s[0] & 0xF0) == 0xE0 && n >= 3 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80) {
        cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F); k = 3;
    } else {
        return 0; /* four-byte sequences hold no whitespace; ill-formed bytes are not space */
    }
    int sp = cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
             cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
    if (cp < (k == 2 ? 0x80u : 0x800u)) return 0; /* an overlong form is not a character */
    return sp ? k : 0;
}

/* s[0..l) without its trailing whitespace (space_len), as Python's str.rstrip(): the length. */
static size_t rstripped(const char *s, size_t l) {
    const unsigned char *u = (const unsigned char *)s;
    for (;;) {
        size_t back = 0;
        for (size_t m = 1; m <= 3 && m <= l && !back; m++)
            if (space_len(u + l - m, m) == m) back = m;
        if (!back) return l;
        l -= back;
    }
}

/* Jinja's trim: leading and trailing whitespace, as Python's str.strip() (space_len). */
static void trimmed(const char *s, const char **b, size_t *n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t l = strlen(s), i = 0, k;
    while ((k = space_len(u + i, l - i)) != 0) i += k;
    *b = s + i; *n = rstripped(s + i, l - i);
}

static void header(const fdpo_chat *c, const char *role, fdpo_chat_text *o) {
    switch (c->kind) {
    case FDPO_CHAT_PLAIN: case FDPO_CHAT_ZEPHYR: put_str(o, "<|", 1, 0); put_str(o, role, 1, 0); put_str(o, "|>\n", 1, 0); break;
    case FDPO_CHAT_CHATML: put_str(o, "<|im_start|>", 1, 0); put_str(o, role, 1, 0); put_str(o, "\n", 1, 0); break;
    case FDPO_CHAT_LLAMA3:
        put_str(o, "<|start_header_id|>", 1, 0); put_str(o, role, 1, 0); put_str(o, "<|end_header_id|>\n\n", 1, 0);
        break;
    }
}

/* Content, end-of-turn marker (trained for the assistant), then the text between turns
 * unless this is the last turn and END_AT_EOT. */
static void body(const fdpo_chat *c, const char *role, const char *content, int untrained, int last_end,
                 int keep_start, fdpo_chat_text *o) {
    int tr = !strcmp(role, "assistant") && !untrained;
    const char *s = content;
    size_t n = strlen(content);
    if (c->kind == FDPO_CHAT_LLAMA3) {   /* | trim; of the whole content, whose start an open prompt held */
        if (keep_start) n = rstripped(content, n);
        else trimmed(content, &s, &n);
    }
    fdpo_chat_text_put(o, s, n, 0, tr);
    switch (c->kind) {
    case FDPO_CHAT_PLAIN: put_str(o, "\n", 1, tr); break;
    case FDPO_CHAT_CHATML: put_str(o, "<|im_end|>", 1, tr); if (!last_end) put_str(o, "\n", 1, 0); break;
    case FDPO_CHAT_LLAMA3: put_str(o, "<|eot_id|>", 1, tr); break;
    case FDPO_CHAT_ZEPHYR: put_str(o, c->eos, 1, tr); if (!last_end) put_str(o, "\n", 1, 0); break;
    }
}

void fdpo_chat_render(const fdpo_chat *c, const fdpo_chat_msg *m, size_t n, unsigned flags, fdpo_chat_text *o) {
    size_t i = 0;
    if (flags & FDPO_CHAT_START) {
        if (c->start_bos) put_str(o, c->bos, 1, 0);
        if (c->kind == FDPO_CHAT_CHATML && c->default_system && (n == 0 || strcmp(m[0].role, "system"))) {
            header(c, "system", o);   /* the template's own text: special tokens are matched in it */
            put_str(o, c->default_system, 1, 0);
            put_str(o, "<|im_end|>\n", 1, 0);
        }
        if (c->kind == FDPO_CHAT_LLAMA3 && c->preamble) { /* the system turn is always there */
            header(c, "system", o);
            put_str(o, c->preamble, 1, 0);
            const char *s = "";
            size_t sl = 0;
            if (n && !strcmp(m[0].role, "system")) { trimmed(m[0].content, &s, &sl); i = 1; }
            fdpo_chat_text_put(o, s, sl, 0, 0);
            put_str(o, "<|eot_id|>", 1, 0);
        }
    }
    for (; i < n; i++) {
        if (!(i == 0 && (flags & FDPO_CHAT_CONTINUE))) header(c, m[i].role, o);
        if (i + 1 == n && (flags & FDPO_CHAT_OPEN_END)) {
            /* cut after the content, as transformers' continue_final_message cuts the render:
             * after the whole content when the render holds it verbatim from its first
             * character (a content that starts with whitespace does not match there), else
             * after its stripped text; llama3's render holds the trimmed content */
            const char *s = m[i].content;
            size_t len = strlen(s);
            if (c->kind == FDPO_CHAT_LLAMA3) trimmed(s, &s, &len);
            else if (space_len((const unsigned char *)s, len)) len = rstripped(s, len);
            fdpo_chat_text_put(o, s, len, 0, 0);
            return;
        }
        body(c, m[i].role, m[i].content, m[i].untrained, i + 1 == n && (flags & FDPO_CHAT_END_AT_EOT),
             i == 0 && (flags & FDPO_CHAT_CONTINUE_OPEN), o);
    }
    if (flags & FDPO_CHAT_GENERATION_PROMPT) header(c, "assistant", o);
}

unsigned fdpo_chat_prompt_flags(const fdpo_chat_msg *m, size_t n) {
    return FDPO_CHAT_START | (n && !strcmp(m[n - 1].role, "assistant") ? FDPO_CHAT_OPEN_END : FDPO_CHAT_GENERATION_PROMPT);
}

/* The text as a normalising (NFC) tokenizer encodes it, masks carried along: each run of
 * bytes with the same masks normalised on its own, so trained bytes stay trained. */
static void normalize_runs(const fdpo_tokenizer *tok, const fdpo_chat_text *t, fdpo_chat_text *o) {
    for (size_t i = 0; i < t->n;) {
        size_t j = i;
        while (j < t->n && t->tmpl[j] == t->tmpl[i] && t->train[j] == t->train[i]) j++;
        size_t m;
        char *u = fdpo_tokenizer_normalize(tok, t->text + i, j - i, &m);
        fdpo_chat_text_put(o, u, m, t->tmpl[i], t->train[i]);
        free(u);
        i = j;
    }
}

int fdpo_chat_encode(const fdpo_tokenizer *tok, const fdpo_chat_text *t_in, int32_t **ids, float **w, size_t *n) {
    fdpo_chat_text norm = {0};
    const fdpo_chat_text *t = t_in;
    if (w && fdpo_tokenizer_normalizes(tok)) { /* token bytes then line up with the masks */
        normalize_runs(tok, t_in, &norm);
        t = &norm;
    }
    int rc = fdpo_tokenizer_encode_masked(tok, t->text ? t->text : "", t->n, t->tmpl, ids, n);
    if (rc || !w) { fdpo_chat_text_free(&norm); return rc ? -1 : 0; }
    *w = fdpo_malloc((*n ? *n : 1) * sizeof **w);
    size_t off = 0;
    for (size_t i = 0; i < *n; i++) {
        size_t l;
        fdpo_tokenizer_token_bytes(tok, (*ids)[i], &l);
        int any = 0;
        for (size_t k = off; k < off + l && k < t->n; k++) any |= t->train[k];
        (*w)[i] = any ? 1.0f : 0.0f;
        off += l;
    }
    size_t total = t->n;
    fdpo_chat_text_free(&norm);
    if (off != total) { /* NFC joined a template character with the message text after it */
        free(*ids); free(*w);
        *ids = NULL; *w = NULL;
        return fdpo_error("chat text: the tokenizer's NFC normalizer changes the text across a template/message "
                          "boundary, so the loss mask cannot follow the roles (a message starting with a "
                          "combining mark?)");
    }
    return 0;
}

int fdpo_chat_check_message(const cJSON *m, const char *field, size_t i) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role"), *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!cJSON_IsObject(m)) return fdpo_error("%s[%zu] must be an object {\"role\", \"content\"}", field, i);
    if (!cJSON_IsString(role)) return fdpo_error("%s[%zu].role: missing or not a string", field, i);
    const char *r = role->valuestring;
    if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))
        return fdpo_error("%s[%zu].role is '%s'; expected system, user or assistant", field, i, r);
    if (!cJSON_IsString(content)) return fdpo_error("%s[%zu].content: missing or not a string", field, i);
    if (!fdpo_utf8_valid(content->valuestring, strlen(content->valuestring)))
        return fdpo_error("%s[%zu].content is not valid UTF-8", field, i);
    static const char *const CALLS[] = {"tool_calls", "function_call"};
    for (size_t k = 0; k < 2; k++) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(m, CALLS[k]);
        if (t && !cJSON_IsNull(t) && !(cJSON_IsArray(t) && cJSON_GetArraySize(t) == 0))
            return fdpo_error("%s[%zu].%s: tool calls are not rendered by fdpo's chat templates (they would be dropped "
                              "from the text)", field, i, CALLS[k]);
    }
    return 0;
}

int fdpo_chat_check_prompt(const cJSON *arr, const char *field, const char *raw) {
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) == 0)
        return fdpo_error("%s must be a non-empty list of {\"role\", \"content\"} (a prompt with no message has "
                          "nothing to answer)", field);
    size_t i = 0;
    const cJSON *m, *last = NULL;
    cJSON_ArrayForEach(m, arr) {
        if (fdpo_chat_check_message(m, field, i++)) return -1;
        last = m;
    }
    if (raw && fdpo_jsonl_check_nul_in(field, raw, strlen(raw), arr)) return -1;
    const char *r = cJSON_GetObjectItemCaseSensitive(last, "role")->valuestring;
    if (!strcmp(r, "system"))
        return fdpo_error("%s[%zu] is a system message: a prompt ends with a user message (answered after the "
                          "generation prompt) or an assistant one (continued)", field, i - 1);
    return 0;
}

/* 1 when list is a non-empty JSON list of objects that each hold a "role" */
static int is_message_list(const cJSON *list) {
    int is = cJSON_IsArray(list) && cJSON_GetArraySize(list) > 0;
    for (const cJSON *e = is ? list->child : NULL; e && is; e = e->next)
        is = cJSON_IsObject(e) && cJSON_GetObjectItemCaseSensitive(e, "role");
    return is;
}

int fdpo_chat_parse_conversation(const char *text, const char *field, cJSON **out) {
    *out = NULL;
    if (text[0] != '[') return 0;
    cJSON *list = cJSON_ParseWithOpts(text, NULL, 1);   /* the whole text, or it is plain text */
    size_t n = strlen(text);
    if (!list) {
        /* a message list that only Python's json reads (json.dumps writes NaN, Infinity and a
         * lone surrogate escape): refused, not taken as the literal text of a prompt */
        char *t = fdpo_malloc(n + 1);
        memcpy(t, text, n + 1);
        fdpo_json_python_extensions_as_json(t, n);
        cJSON *py = cJSON_ParseWithOpts(t, NULL, 1);
        size_t at = 0;
        while (at < n && t[at] == text[at]) at++;
        if (at >= 2 && text[at - 1] == 'u' && text[at - 2] == '\\') at -= 2;   /* a surrogate's escape */
        free(t);
        int msgs = is_message_list(py);
        cJSON_Delete(py);
        if (msgs)
            return fdpo_error("%s: its messages' JSON text has NaN, Infinity or a lone surrogate escape (\\uD800-"
                              "\\uDFFF) at byte %zu, which Python's json reads and JSON does not: write the list "
                              "without it", field, at + 1);
    }
    if (!is_message_list(list)) { cJSON_Delete(list); return 0; }
    /* what only cJSON reads (a raw tab inside a string, a \u escape without four hex digits, a
     * number such as 01 or 1.e5), Python's json refuses (it would be a plain prompt there):
     * refused, by the rule of a JSONL line (fdpo_json_cjson_only), rather than read as a
     * conversation that other tools read as text */
    const fdpo_json_flaw flaw = fdpo_json_cjson_only(text, n);
    if (flaw.kind == FDPO_JSON_RAW_CONTROL)
        fdpo_error("%s: its messages' JSON text has a raw control character (U+%04X) %s at byte %zu, which JSON and "
                   "Python's json refuse%s", field, (unsigned)(unsigned char)text[flaw.at],
                   flaw.in_string ? "inside a string" : "between values", flaw.at + 1,
                   flaw.in_string ? ": escape it (\\t, \\n or \\u00XX)" : "");
    else if (flaw.kind == FDPO_JSON_U_ESCAPE)   /* cJSON cut a string there */
        fdpo_error("%s (its messages' JSON text): " FDPO_JSON_BAD_U_ESCAPE, field, flaw.at + 1);
    else if (flaw.kind == FDPO_JSON_NUMBER)
        fdpo_error("%s: its messages' JSON text has the number '%.*s' at byte %zu, which has %s (not a JSON number: "
                   "JSON and Python's json refuse the text)", field, (int)(flaw.len > 40 ? 40 : flaw.len),
                   text + flaw.at, flaw.at + 1, flaw.why);
    if (flaw.kind != FDPO_JSON_STRICT) {
        cJSON_Delete(list);
        return -1;
    }
    /* refused as in a JSONL line (fdpo_jsonl_parse_object): cJSON's lookups read the first
     * copy, Python's json the last */
    const char *dup = fdpo_json_duplicate_key(list);
    if (dup) {
        fdpo_error("%s: key \"%.64s\" appears twice in one object (readers differ on which one counts)", field, dup);
        cJSON_Delete(list);
        return -1;
    }
    if (fdpo_chat_check_prompt(list, field, text)) { cJSON_Delete(list); return -1; }
    *out = list;
    return 1;
}

/* The messages of a prompt that is a conversation's JSON text: *a holds the parsed text the
 * messages point into (the caller deletes it), *m the messages (malloc'd). 1 a
 * conversation, 0 not (nothing kept), -1 a bad one. */
static int prompt_messages(const char *prompt, cJSON **a, fdpo_chat_msg **m, size_t *k) {
    *a = NULL; *m = NULL; *k = 0;
    cJSON *list;
    int is = fdpo_chat_parse_conversation(prompt, "prompt", &list);
    if (is <= 0) return is;
    fdpo_chat_msg *msgs = fdpo_malloc((size_t)cJSON_GetArraySize(list) * sizeof *msgs);
    size_t n = 0;
    for (const cJSON *e = list->child; e; e = e->next)
        msgs[n++] = (fdpo_chat_msg){.role = cJSON_GetObjectItemCaseSensitive(e, "role")->valuestring,
                                    .content = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring};
    *a = list; *m = msgs; *k = n;
    return 1;
}

int fdpo_chat_is_conversation(const char *prompt) {
    cJSON *a;
    fdpo_chat_msg *m;
    size_t k;
    int yes = prompt_messages(prompt, &a, &m, &k);
    free(m);
    cJSON_Delete(a);
    return yes != 0;   /* a bad one too: encoding it says what is wrong */
}

void fdpo_chat_render_reply(const fdpo_chat *c, const fdpo_chat_msg *m, size_t n, const char *text, fdpo_chat_text *out) {
    const fdpo_chat_msg turn = {.role = "assistant", .content = text};
    const unsigned open = fdpo_chat_prompt_flags(m, n) & FDPO_CHAT_OPEN_END ? FDPO_CHAT_CONTINUE_OPEN : 0;
    fdpo_chat_render(c, &turn, 1, FDPO_CHAT_CONTINUE | FDPO_CHAT_END_AT_EOT | open, out);
}

/* The prompt's messages rendered (reply NULL), or the reply to them, and encoded; 1 when the
 * prompt is not a message list. */
static int encode_rendered(const fdpo_tokenizer *tok, const char *prompt, const char *reply, int32_t **ids, size_t *n) {
    cJSON *a;
    fdpo_chat_msg *m;
    size_t k;
    int is = prompt_messages(prompt, &a, &m, &k);
    if (is <= 0) return is < 0 ? -1 : 1;
    fdpo_chat chat;
    int rc = fdpo_chat_for(tok, &chat);
    if (rc == 0) {
        fdpo_chat_text t = {0};
        if (reply) fdpo_chat_render_reply(&chat, m, k, reply, &t);
        else fdpo_chat_render(&chat, m, k, fdpo_chat_prompt_flags(m, k), &t);
        rc = fdpo_chat_encode(tok, &t, ids, NULL, n);
        fdpo_chat_text_free(&t);
        fdpo_chat_free(&chat);
    }
    free(m);
    cJSON_Delete(a);
    return rc;
}

int fdpo_chat_encode_reply(const fdpo_tokenizer *tok, const char *prompt, const char *text, int32_t **ids, size_t *n) {
    return encode_rendered(tok, prompt, text, ids, n);
}

int fdpo_chat_encode_prompt(const fdpo_tokenizer *tok, const char *prompt, int32_t **ids, size_t *n) {
    return encode_rendered(tok, prompt, NULL, ids, n);
}
