/* Unpaired preference JSONL (TRL's KTO format) -> token ids. Rules in include/fdpo/kto.h;
 * rendering and tokenization are the preference reader's (fdpo_pref_encode_single). */
#include <cJSON.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "data/jsonl.h"
#include "fdpo/kto.h"

void fdpo_unpaired_free(fdpo_unpaired_set *s) {
    for (size_t i = 0; i < s->n; i++) { free(s->ex[i].prompt); free(s->ex[i].completion); }
    free(s->ex);
    memset(s, 0, sizeof *s);
}

/* One object -> example: 0 kept, 1 skipped (counted), -1 error. */
static int make_example(const char *path, size_t line, const cJSON *obj, const fdpo_tokenizer *tok,
                        const fdpo_pref_options *opt, fdpo_unpaired_set *s, fdpo_unpaired_example *e) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, "prompt");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(obj, "completion");
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(obj, "label");
    if (!l) return fdpo_error("%s:%zu: missing field 'label' (true = desirable, false = undesirable)", path, line);
    if (!cJSON_IsBool(l)) return fdpo_error("%s:%zu: field 'label' must be true or false", path, line);
    if (!p) return fdpo_error("%s:%zu: missing field 'prompt'", path, line);
    if (!c) return fdpo_error("%s:%zu: missing field 'completion'", path, line);
    memset(e, 0, sizeof *e);
    e->line = line;
    e->label = cJSON_IsTrue(l);
    size_t content = 0;
    int conversational = 0;
    if (fdpo_pref_encode_single(path, line, p, c, tok, &e->prompt, &e->n_prompt, &e->completion, &e->n_completion,
                                &content, &conversational))
        return -1;
    s->summary.conversational += (size_t)conversational;   /* a prompt as its messages' JSON text too, as for pairs */
    int rc = 0;
    if (content == 0) {
        if (opt->on_bad == FDPO_PREF_SKIP) { fdpo_pref_count_skip(&s->summary, FDPO_SKIP_EMPTY, line); rc = 1; }
        else rc = fdpo_error("%s:%zu: empty completion; use --bad-pairs skip to skip such examples", path, line);
    } else if (opt->max_length && e->n_prompt + e->n_completion > opt->max_length) {
        if (opt->on_long == FDPO_PREF_LONG_ERROR)
            rc = fdpo_error("%s:%zu: example has %zu tokens (prompt %zu + completion %zu), more than --max-length %zu",
                            path, line, e->n_prompt + e->n_completion, e->n_prompt, e->n_completion, opt->max_length);
        else if (opt->on_long == FDPO_PREF_LONG_SKIP) { fdpo_pref_count_skip(&s->summary, FDPO_SKIP_LONG, line); rc = 1; }
        else {
            size_t max_prompt = opt->max_prompt_length ? opt->max_prompt_length : opt->max_length / 2;
            if (e->n_prompt > max_prompt) { /* keep the end of the prompt, as for pairs */
                memmove(e->prompt, e->prompt + (e->n_prompt - max_prompt), max_prompt * sizeof *e->prompt);
                e->n_prompt = max_prompt;
                s->summary.truncated_prompt++;
            }
            size_t budget = opt->max_length - e->n_prompt;
            if (e->n_completion > budget) { e->n_completion = budget; s->summary.truncated_completion++; }
            e->truncated = 1;
        }
    }
    if (rc) { free(e->prompt); free(e->completion); }
    return rc;
}

int fdpo_unpaired_load(const char *path, const fdpo_tokenizer *tok, const fdpo_pref_options *opt,
                       fdpo_unpaired_set *out) {
    memset(out, 0, sizeof *out);
    out->summary.unpaired = 1;
    if (opt->max_length && opt->max_prompt_length >= opt->max_length)
        return fdpo_error("--max-prompt-length %zu must be smaller than --max-length %zu", opt->max_prompt_length, opt->max_length);
    if (opt->max_length == 1) return fdpo_error("--max-length 1 leaves no room for a prompt and a completion");
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) return -1;
    int rc = 0;
    size_t cap = 0, line = 0;
    const size_t bom = fdpo_jsonl_bom(text, len);
    for (size_t pos = bom; pos < len && !rc;) {   /* a UTF-8 BOM is not data */
        const char *ln = text + pos;
        const char *nl = memchr(ln, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - ln) : len - pos;
        pos += n + (nl ? 1 : 0);
        line++;
        size_t k = 0;
        while (k < n && (ln[k] == ' ' || ln[k] == '\t' || ln[k] == '\r')) k++;
        if (k == n) continue;
        out->summary.lines++;
        const size_t own = ln == text + bom ? bom : 0;   /* line 1's BOM: the parser skips it, refuses a second */
        cJSON *obj = fdpo_jsonl_parse_object(path, line, ln - own, n + own, "{\"prompt\", \"completion\", \"label\"}");
        if (!obj) { rc = -1; break; }
        /* "PATH:LINE", a path of up to PATH_MAX whole. A NUL ends a string (a key too) where
         * cJSON decodes it: refused, as every reader does */
        char where[PATH_MAX + 32];
        snprintf(where, sizeof where, "%s:%zu", path, line);
        if (fdpo_jsonl_check_nul(where, ln, n, obj)) { cJSON_Delete(obj); rc = -1; break; }
        if (out->n == cap) { cap = cap ? 2 * cap : 64; out->ex = fdpo_realloc(out->ex, cap * sizeof *out->ex); }
        int r = make_example(path, line, obj, tok, opt, out, &out->ex[out->n]);
        cJSON_Delete(obj);
        if (r < 0) rc = -1;
        else if (r == 0) {
            if (out->ex[out->n].label) out->desirable++; else out->undesirable++;
            out->n++;
        }
    }
    free(text);
    out->summary.pairs = out->n;
    if (!rc && out->n == 0) rc = fdpo_pref_none_usable(path, &out->summary, opt);
    if (rc) fdpo_unpaired_free(out);
    return rc;
}
