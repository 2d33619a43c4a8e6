/* Chat templates (include/fdpo/chat.h): recognition by content, rendering with template and
 * training masks, and encoding with specials matched in template text only. */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/chat.h"
#include "fdpo/core.h"
#include "data/jsonl.h"

static const char *const NAMES[] = {"plain", "chatml", "llama3", "zephyr"};

const char *fdpo_chat_name(fdpo_chat_kind kind) { return NAMES[kind]; }

int fdpo_chat_parse_name(const char *name, fdpo_chat_kind *kind) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, NAMES[i])) { *kind = (fdpo_chat_kind)i; return 0; }
    return fdpo_error("--chat-template: '%s' is not a built-in template (" FDPO_CHAT_BUILTINS ", or auto)", name);
}

/* Jinja sources that render as the built-ins do (without a default system turn or
 * preamble), written into a checkpoint's tokenizer_config.json when a run names its
 * template, so that later commands (and transformers) render the same way. */
static const char *const SOURCES[] = {
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{# <|user|> <|assistant|> #}",
};

const char *fdpo_chat_source(fdpo_chat_kind kind) { return SOURCES[kind]; }

/* 1 when every "<|name|>" marker written in s is one of allowed[] (NULL-terminated): a
 * template with markers of its own (Phi-3's "<|end|>" beside Zephyr's role markers) is
 * another family, whose turns the built-in would render otherwise. */
static int markers_only(const char *s, const char *const *allowed) {
    for (const char *p = strstr(s, "<|"); p; p = strstr(p + 2, "<|")) {
        const char *e = strstr(p + 2, "|>");
        size_t n = e ? (size_t)(e + 2 - p) : 0;
        if (!e || n > 40 || strcspn(p + 2, " '\"+{}") < (size_t)(e - p - 2)) continue;   /* not a literal marker */
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++) ok = strlen(*a) == n && !strncmp(p, *a, n);
        if (!ok) return 0;
    }
    return 1;
}

/* By the markers each family's template writes. */
int fdpo_chat_detect(const char *s, fdpo_chat_kind *kind) {
    static const char *const zephyr_markers[] = {"<|system|>", "<|user|>", "<|assistant|>", NULL};
    if (strstr(s, "<|start_header_id|>") && strstr(s, "<|end_header_id|>") && strstr(s, "<|eot_id|>")) *kind = FDPO_CHAT_LLAMA3;
    else if (strstr(s, "<|im_start|>") && strstr(s, "<|im_end|>")) *kind = FDPO_CHAT_CHATML;
    else if (strstr(s, "<|user|>") && strstr(s, "<|assistant|>") && strstr(s, "eos_token") && markers_only(s, zephyr_markers))
        *kind = FDPO_CHAT_ZEPHYR;
    else if (!strcmp(s, SOURCES[FDPO_CHAT_PLAIN])) *kind = FDPO_CHAT_PLAIN;
    else return -1;
    return 0;
}

/* A literal of the template source starting at s: up to a quote or the end marker, with
 * the escapes \n and \\ of Jinja string literals undone. NULL if it is not a plain literal
 * (an expression interrupts it before `end`). */
static char *literal_until(const char *s, const char *end) {
    const char *e = strstr(s, end);
    if (!e) return NULL;
    char *out = fdpo_malloc((size_t)(e - s) + 1);
    size_t k = 0;
    for (const char *p = s; p < e; p++) {
        if (*p == '\'' || *p == '"' || *p == '{' || *p == '}') { free(out); return NULL; }
        if (*p == '\\' && p + 1 < e) {
            p++;
            out[k++] = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p;
        } else out[k++] = *p;
    }
    out[k] = 0;
    return out;
}

/* ChatML's default system turn: the first "<|im_start|>system" + newline (literal or \n)
 * followed by literal text up to "<|im_end|>" (SmolLM2, Qwen2). */
static char *chatml_default_system(const char *src) {
    static const char tag[] = "<|im_start|>system";
    for (const char *p = strstr(src, tag); p; p = strstr(p + 1, tag)) {
        const char *q = p + sizeof tag - 1;
        if (*q == '\n') q++;
        else if (q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        char *lit = literal_until(q, "<|im_end|>");
        if (lit && *lit) return lit;
        free(lit);
    }
    return NULL;
}

/* Llama-3.1/3.2's system preamble: "Cutting Knowledge Date: K\nToday Date: D\n\n", D the
 * template's literal date_string default (transformers' strftime_now is not reproduced). */
static char *llama3_preamble(const char *src) {
    static const char ck[] = "Cutting Knowledge Date: ", ds[] = "date_string = \"";
    const char *p = strstr(src, ck);
    if (!p) return NULL;
    p += sizeof ck - 1;
    size_t kl = 0;
    while (p[kl] && p[kl] != '\\' && p[kl] != '\n' && p[kl] != '"' && p[kl] != '\'') kl++;
    const char *d = strstr(src, ds);
    const char *date = "26 Jul 2024";
    size_t dl = strlen(date);
    if (d) {
        d += sizeof ds - 1;
        const char *e = strchr(d, '"');
        if (e && e - d < 40) { date = d; dl = (size_t)(e - d); }
    }
    size_t n = sizeof ck + kl + dl + 32;
    char *out = fdpo_malloc(n);
    snprintf(out, n, "%s%.*s\nToday Date: %.*s\n\n", ck, (int)kl, p, (int)dl, date);
    return out;
}

static char *token_text(const fdpo_tokenizer *t, int32_t id) {
    if (id < 0) return NULL;
    size_t l;
    const char *b = fdpo_tokenizer_token_bytes(t, id, &l);
    char *s = fdpo_malloc(l + 1);
    memcpy(s, b, l); s[l] = 0;
    return s;
}

int fdpo_chat_for(const fdpo_tokenizer *t, fdpo_chat *out) {
    memset(out, 0, sizeof *out);
    const char *name = NULL;
    const char *src = fdpo_tokenizer_chat_template(t, &name);
    fdpo_chat_kind detected = FDPO_CHAT_PLAIN;
    int known = src && fdpo_chat_detect(src, &detected) == 0;
    const char *problem, *origin = fdpo_tokenizer_chat_template_origin(t, &problem);
    if (name && strcmp(name, "auto")) {
        if (fdpo_chat_parse_name(name, &out->kind)) return -1;
    } else if (problem) {
        return fdpo_error("%s", problem);
    } else if (src && !known) {
        return fdpo_error("%s is not one fdpo recognises (built-ins: " FDPO_CHAT_BUILTINS
                          "); name one with --chat-template NAME", origin);
    } else {
        out->kind = detected; /* plain when the files have no template */
    }
    out->start_bos = out->kind == FDPO_CHAT_LLAMA3;
    if (known && detected == out->kind) { /* the file's own parameters */
        if (out->kind == FDPO_CHAT_CHATML) out->default_system = chatml_default_system(src);
        if (out->kind == FDPO_CHAT_LLAMA3) out->preamble = llama3_preamble(src);
        /* a ChatML template that writes bos_token (OpenHermes-2.5's "{{ bos_token }}" first) */
        if (out->kind == FDPO_CHAT_CHATML && strstr(src, "bos_token")) out->start_bos = 1;
    }
    out->bos = token_text(t, fdpo_tokenizer_bos(t));
    out->eos = token_text(t, fdpo_tokenizer_eot(t));
    if (out->kind == FDPO_CHAT_LLAMA3 && !out->bos) {
        int32_t id = fdpo_tokenizer_token_id(t, "<|begin_of_text|>");
        out->bos = token_text(t, id);
    }
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
            header(c, "system", o);
            body(c, "system", c->default_system, 0, 0, 0, o);
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

int fdpo_chat_parse_conversation(const char *text, const char *field, cJSON **out) {
    *out = NULL;
    if (text[0] != '[') return 0;
    cJSON *list = cJSON_ParseWithOpts(text, NULL, 1);   /* the whole text, or it is plain text */
    int is = cJSON_IsArray(list) && cJSON_GetArraySize(list) > 0;
    for (const cJSON *e = is ? list->child : NULL; e && is; e = e->next)
        is = cJSON_IsObject(e) && cJSON_GetObjectItemCaseSensitive(e, "role");
    if (!is) { cJSON_Delete(list); return 0; }
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
