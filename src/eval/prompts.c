/* Prompt files for generate/eval and completion files for score. */
#include <cJSON.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/chat.h"
#include "fdpo/eval.h"
#include "data/jsonl.h"

void fdpo_free_strings(char **s, size_t n) {
    if (s) for (size_t i = 0; i < n; i++) free(s[i]);
    free(s);
}

static int blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

static const char *json_string(const cJSON *o, const char *field, const char *path, size_t line, int *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, field);
    if (!v) { *err = fdpo_error("%s:%zu: missing field \"%s\"", path, line, field); return NULL; }
    if (!cJSON_IsString(v)) { *err = fdpo_error("%s:%zu: field \"%s\" must be a string", path, line, field); return NULL; }
    return v->valuestring;
}

/* A conversational prompt (fdpo_chat_check_prompt: a non-empty array of {"role":
 * system|user|assistant, "content": string}, ending with a user or assistant message), kept as its compact JSON text (fdpo_encode_prompts renders it with the chat
 * template and the generation prompt). */
static char *messages_text(const cJSON *a, const char *field, const char *path, size_t line, int *err) {
    if (fdpo_chat_check_prompt(a, field, NULL)) {
        *err = fdpo_error_context("%s:%zu", path, line);
        return NULL;
    }
    return cJSON_PrintUnformatted(a);
}

/* A prompt string that is a message list's JSON text (fdpo_chat_parse_conversation) is
 * checked here, where its FILE:LINE is known, not first when it is encoded ("prompt 2"). */
static int check_conversation(const char *s, const char *path, size_t line) {
    cJSON *list = NULL;
    int is = fdpo_chat_parse_conversation(s, "prompt", &list);
    cJSON_Delete(list);
    return is < 0 ? fdpo_error_context("%s:%zu", path, line) : 0;
}

/* Walks the lines of text; for JSONL calls fields[] extraction. n_fields 1 or 2. lines (may
 * be NULL): each record's line number, malloc'd. */
static int parse_lines(const char *path, const char *text, size_t len, int allow_text, const char *const *fields,
                       size_t n_fields, fdpo_strv *out, size_t **lines) {
    size_t n_lines = 0, cap_lines = 0;
    if (lines) *lines = NULL;
    const char *begin = text + fdpo_jsonl_bom(text, len); /* a UTF-8 BOM is not data */
    /* named by line, in the words of every JSONL reader (also for a text file) */
    if (fdpo_json_refuse_invalid_utf8(path, 1, begin, (size_t)(text + len - begin))) return -1;
    /* JSONL iff the first non-blank line starts with '{' */
    int jsonl = !allow_text;
    if (allow_text) {
        const char *p = begin;
        while (p < text + len && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
        jsonl = p < text + len && *p == '{';
    }
    size_t line = 0, n_json = 0, first_json = 0, n_both = 0, first_both = 0;
    int rc = 0;
    for (const char *p = begin; p < text + len && rc == 0;) {
        const char *nl = memchr(p, '\n', (size_t)(text + len - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(text + len - p);
        line++;
        if (!blank(p, n)) {
            if (lines) {
                if (n_lines == cap_lines) *lines = fdpo_realloc(*lines, (cap_lines = cap_lines ? 2 * cap_lines : 64) * sizeof **lines);
                (*lines)[n_lines++] = line;
            }
            if (!jsonl) {
                size_t m = n;
                if (m && p[m - 1] == '\r') m--;
                const char *nul = memchr(p, 0, m);   /* the prompt would end there */
                if (nul) {
                    rc = fdpo_error("%s:%zu: a NUL character at column %zu; text with NUL cannot be tokenized faithfully",
                                    path, line, (size_t)(nul - p) + 1);
                    break;
                }
                if (m && *p == '{') {   /* JSONL-looking lines in a file read as text: said below */
                    cJSON *o = cJSON_ParseWithLength(p, m);
                    if (cJSON_IsObject(o) && !n_json++) first_json = line;
                    cJSON_Delete(o);
                }
                char *s = fdpo_malloc(m + 1);
                memcpy(s, p, m); s[m] = 0;
                if (n_fields == 1 && !strcmp(fields[0], "prompt")) rc = check_conversation(s, path, line);
                fdpo_strv_push(out, s);
                free(s);
            } else {
                const size_t own = p == begin ? (size_t)(begin - text) : 0;   /* line 1's BOM: skipped, a second refused */
                cJSON *o = fdpo_jsonl_parse_object(path, line, p - own, n + own, NULL);
                if (!o) rc = -1;
                else {
                    char where[PATH_MAX + 32];   /* "PATH:LINE": a path of up to PATH_MAX survives whole */
                    snprintf(where, sizeof where, "%s:%zu", path, line);
                    rc = fdpo_jsonl_check_nul(where, p, n, o);
                }
                const cJSON *msgs = NULL;
                const char *mfield = "prompt";
                if (rc == 0 && n_fields == 1 && !strcmp(fields[0], "prompt")) { /* prompts may be conversations */
                    const cJSON *pv = cJSON_GetObjectItemCaseSensitive(o, "prompt");
                    if (pv && cJSON_GetObjectItemCaseSensitive(o, "messages") && !n_both++) first_both = line;
                    if (cJSON_IsArray(pv)) msgs = pv;
                    else if (!pv && (msgs = cJSON_GetObjectItemCaseSensitive(o, "messages"))) mfield = "messages";
                }
                if (msgs) {
                    char *js = messages_text(msgs, mfield, path, line, &rc);
                    if (js) { fdpo_strv_push(out, js); cJSON_free(js); }
                }
                for (size_t f = 0; !msgs && f < n_fields && rc == 0; f++) {
                    const char *v = json_string(o, fields[f], path, line, &rc);
                    /* score's "prompt" too: fdpo_encode_prompts renders it as eval's */
                    if (v && !strcmp(fields[f], "prompt")) rc = check_conversation(v, path, line);
                    if (v) fdpo_strv_push(out, v);
                }
                cJSON_Delete(o);
            }
        }
        p = nl ? nl + 1 : text + len;
    }
    if (rc == 0 && out->n == 0)
        rc = fdpo_error("%s: no %s (the file %s)", path, n_fields == 2 ? "records" : "prompts",
                        begin == text + len ? "is empty" : "holds only blank lines");
    if (rc == 0 && n_both)   /* as sft's lines with two shapes: the one read is said */
        fdpo_log(FDPO_LOG_WARN, "%s: %zu line%s (line %zu first) with both \"prompt\" and \"messages\": the prompt is "
                 "read, the messages are not", path, n_both, n_both == 1 ? "" : "s", first_both);
    if (rc == 0 && n_json)
        fdpo_log(FDPO_LOG_WARN, "%s: read as plain text, one prompt per line (its first line is not a JSON object), "
                 "yet %zu line%s (line %zu first) %s, kept as literal text", path, n_json,
                 n_json == 1 ? "" : "s", first_json, n_json == 1 ? "is a JSON object" : "are JSON objects");
    if (rc) {
        fdpo_strv_free(out);
        if (lines) { free(*lines); *lines = NULL; }
    }
    return rc;
}

static int read_lines(const char *path, int allow_text, const char *const *fields, size_t n_fields, fdpo_strv *out,
                      size_t **lines) {
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) return -1;   /* fdpo_read_file's error names the path */
    int rc = parse_lines(path, text, len, allow_text, fields, n_fields, out, lines);
    free(text);
    return rc;
}

int fdpo_read_prompts(const char *path, char ***prompts, size_t **lines, size_t *n) {
    fdpo_strv v = {0};
    static const char *const fields[] = {"prompt"};
    if (read_lines(path, 1, fields, 1, &v, lines)) return -1;   /* parse_lines freed what it read */
    *prompts = v.v; *n = v.n;
    return 0;
}

int fdpo_parse_prompts(const char *name, const char *text, size_t len, char ***prompts, size_t *n) {
    fdpo_strv v = {0};
    static const char *const fields[] = {"prompt"};
    if (parse_lines(name, text, len, 1, fields, 1, &v, NULL)) return -1;   /* parse_lines freed what it read */
    *prompts = v.v; *n = v.n;
    return 0;
}

int fdpo_read_completions(const char *path, char ***prompts, char ***completions, size_t **lines, size_t *n) {
    fdpo_strv v = {0};
    static const char *const fields[] = {"prompt", "completion"};
    if (read_lines(path, 0, fields, 2, &v, lines)) return -1;   /* parse_lines freed what it read */
    size_t m = v.n / 2;
    *prompts = fdpo_malloc(m * sizeof(char *));
    *completions = fdpo_malloc(m * sizeof(char *));
    for (size_t i = 0; i < m; i++) { (*prompts)[i] = v.v[2 * i]; (*completions)[i] = v.v[2 * i + 1]; }
    free(v.v);
    *n = m;
    return 0;
}
