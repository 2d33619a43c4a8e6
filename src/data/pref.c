/* Preference JSONL (TRL format) -> token ids: prompt extraction, chat template,
 * truncation, skip accounting. The rules are documented in include/fdpo/pref.h. */
#include <cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <strings.h>
#include "fdpo/chat.h"
#include "fdpo/core.h"
#include "fdpo/data.h"
#include "fdpo/pref.h"
#include "data/jsonl.h"

/* Data text (no template, nothing matched as a special token). */
static void sb_add(fdpo_chat_text *b, const char *s, size_t n) { fdpo_chat_text_put(b, s, n, 0, 0); }
static void sb_str(fdpo_chat_text *b, const char *s) { sb_add(b, s, strlen(s)); }

/* The chat template, looked up at the first conversational record (a file of plain
 * strings needs none, so an unrecognised template does not stop it). */
typedef struct { const char *name; size_t line; const fdpo_tokenizer *tok; fdpo_chat chat; int have_chat; } where;
static int need_chat(where *w) {
    if (w->have_chat) return 0;
    if (fdpo_chat_for(w->tok, &w->chat)) return fdpo_error_context("%s:%zu", w->name, w->line);
    w->have_chat = 1;
    return 0;
}

static int string_field(const where *w, const cJSON *v, const char *field, const char **out) {
    if (!cJSON_IsString(v)) return fdpo_error("%s:%zu: field '%s' must be a string", w->name, w->line, field);
    if (!fdpo_utf8_valid(v->valuestring, strlen(v->valuestring)))
        return fdpo_error("%s:%zu: field '%s' is not valid UTF-8", w->name, w->line, field);
    *out = v->valuestring;
    return 0;
}

/* Messages: a JSON array of {"role": system|user|assistant, "content": string}
 * (fdpo_chat_check_message); a prompt's list is checked as one (fdpo_chat_check_prompt). */
static int check_messages(const where *w, const cJSON *arr, const char *field) {
    size_t i = 0;
    const cJSON *m;
    int rc = 0;
    /* an empty list is the implicit prompt of two lone assistant turns: the render starts there */
    if (!strcmp(field, "prompt") && cJSON_GetArraySize(arr) > 0) rc = fdpo_chat_check_prompt(arr, field, NULL);
    else cJSON_ArrayForEach(m, arr) if (!rc) rc = fdpo_chat_check_message(m, field, i++);
    return rc ? fdpo_error_context("%s:%zu", w->name, w->line) : 0;
}

static const char *msg_role(const cJSON *m) { return cJSON_GetObjectItemCaseSensitive(m, "role")->valuestring; }
static const char *msg_content(const cJSON *m) { return cJSON_GetObjectItemCaseSensitive(m, "content")->valuestring; }
static int msg_equal(const cJSON *a, const cJSON *b) {
    return !strcmp(msg_role(a), msg_role(b)) && !strcmp(msg_content(a), msg_content(b));
}
/* messages[from..to) of a checked array -> fdpo_chat_msg (pointers into the JSON). */
static fdpo_chat_msg *msgs_of(const cJSON *arr, size_t from, size_t to) {
    fdpo_chat_msg *m = fdpo_malloc((to > from ? to - from : 1) * sizeof *m);
    for (size_t i = from; i < to; i++) {
        const cJSON *e = cJSON_GetArrayItem(arr, (int)i);
        m[i - from] = (fdpo_chat_msg){.role = msg_role(e), .content = msg_content(e)};
    }
    return m;
}
/* Prompt = messages rendered from the start of the conversation + the generation prompt
 * (list completions: each message is a turn of its own, so a prompt that ends with the
 * assistant's is closed and a new turn begins; prompt + completion is TRL's render). */
static void render_prompt(const where *w, const cJSON *arr, size_t n, fdpo_chat_text *b) {
    fdpo_chat_msg *m = msgs_of(arr, 0, n);
    fdpo_chat_render(&w->chat, m, n, FDPO_CHAT_START | FDPO_CHAT_GENERATION_PROMPT, b);
    free(m);
}
/* Completion = messages[from..]: first must be the assistant's (its header ends the prompt);
 * it ends at the last message's end-of-turn marker. */
static int render_completion(const where *w, const cJSON *arr, size_t from, const char *field, fdpo_chat_text *b, size_t *content_len) {
    size_t n = (size_t)cJSON_GetArraySize(arr);
    *content_len = 0;
    if (from >= n) return 0; /* empty completion: the caller decides */
    const cJSON *first = cJSON_GetArrayItem(arr, (int)from);
    if (strcmp(msg_role(first), "assistant"))
        return fdpo_error("%s:%zu: %s[%zu] must be an assistant turn (the completion starts there), not '%s'",
                          w->name, w->line, field, from, msg_role(first));
    for (size_t i = from; i < n; i++) *content_len += strlen(msg_content(cJSON_GetArrayItem(arr, (int)i)));
    fdpo_chat_msg *m = msgs_of(arr, from, n);
    fdpo_chat_render(&w->chat, m, n - from, FDPO_CHAT_CONTINUE | FDPO_CHAT_END_AT_EOT, b);
    free(m);
    return 0;
}

/* Longest common prefix in bytes, backed up to a UTF-8 code point boundary; a trailing
 * space goes back to the completions (TRL's extract_prompt rule). */
static size_t common_prefix(const char *a, const char *b) {
    size_t n = 0;
    while (a[n] && a[n] == b[n]) n++;
    if (a[n] == 0 && b[n] == 0) return n; /* identical: caller reports it */
    while (n > 0 && ((unsigned char)a[n] & 0xC0) == 0x80) n--; /* mid code point */
    if (n > 0 && a[n - 1] == ' ') n--;
    return n;
}

typedef struct { fdpo_chat_text prompt, chosen, rejected; size_t chosen_content, rejected_content; int chat; } rendered;

/* A string prompt that is the JSON text of a message list: how prompt files keep
 * conversational prompts (fdpo_read_prompts), so pairs made from samples of them (fdpo
 * online, fdpo pairs) carry it. 1 and *pm the parsed list, 0 not one, -1 a bad one. */
static int prompt_messages(const where *w, const cJSON *p, cJSON **pm) {
    *pm = NULL;
    int is = cJSON_IsString(p) ? fdpo_chat_parse_conversation(p->valuestring, "prompt", pm) : 0;
    return is < 0 ? fdpo_error_context("%s:%zu", w->name, w->line) : is;
}
/* The prompt a sample was drawn from and a text completion of it, rendered as sampled
 * (fdpo_chat_encode_prompt): the prompt with fdpo_chat_prompt_flags, the completion as the
 * assistant's content after it (going on with the prompt's last message when that was the
 * assistant's and left open), to its end-of-turn marker. */
static void render_sampled(const where *w, const cJSON *pm, const char *text, fdpo_chat_text *prompt, fdpo_chat_text *out) {
    size_t n = (size_t)cJSON_GetArraySize(pm);
    fdpo_chat_msg *m = msgs_of(pm, 0, n);
    if (prompt) fdpo_chat_render(&w->chat, m, n, fdpo_chat_prompt_flags(m, n), prompt);
    fdpo_chat_render_reply(&w->chat, m, n, text, out);
    free(m);
}

/* A key that looks like a misspelt "prompt": any case of it, or up to 2 edits away in lower
 * case ("promt", "Propmt"); not a longer name that starts with it ("prompt_id", "prompts",
 * "promptId": other columns a dataset carries). */
static int near_prompt(const char *key) {
    char low[16];
    size_t n = strlen(key);
    if (n >= sizeof low) return 0;
    for (size_t i = 0; i <= n; i++) low[i] = (char)(key[i] >= 'A' && key[i] <= 'Z' ? key[i] - 'A' + 'a' : key[i]);
    if (!strcmp(low, "prompt")) return 1;
    return strncmp(low, "prompt", 6) && fdpo_edit_distance(low, "prompt") <= 2;
}

/* Fill r from one JSON object. Returns 0 ok, -1 error, 1 skip (reason in *skip). */
static int render_pair(where *w, const cJSON *obj, rendered *r, fdpo_pref_summary *sum) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, "prompt");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(obj, "chosen");
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, "rejected");
    if (!c) return fdpo_error("%s:%zu: missing field 'chosen'", w->name, w->line);
    if (!j) return fdpo_error("%s:%zu: missing field 'rejected'", w->name, w->line);
    if (!p) {
        /* TRL's implicit prompt (the common prefix of chosen and rejected): a misspelt
         * "prompt" would silently become one, its text dropped */
        for (const cJSON *k = obj->child; k; k = k->next)
            if (k->string && near_prompt(k->string))
                return fdpo_error("%s:%zu: no field 'prompt', but '%s': a misspelling? (a pair without 'prompt' takes "
                                  "the common prefix of chosen and rejected as its prompt)", w->name, w->line, k->string);
        sum->implicit_prompt++;
    }
    cJSON *pm = NULL;
    if (cJSON_IsString(c) && cJSON_IsString(j) && prompt_messages(w, p, &pm) < 0) return -1;
    if (pm) { /* {"prompt": "[messages]", "chosen": text, "rejected": text} */
        sum->conversational++;
        const char *cs = "", *js = "";
        int rc = string_field(w, c, "chosen", &cs) || string_field(w, j, "rejected", &js) || need_chat(w) ? -1 : 0;
        if (!rc) {
            r->chat = 1;
            render_sampled(w, pm, cs, &r->prompt, &r->chosen);
            render_sampled(w, pm, js, NULL, &r->rejected);
            r->chosen_content = strlen(cs); r->rejected_content = strlen(js);
        }
        cJSON_Delete(pm);
        return rc;
    }
    if (cJSON_IsArray(c) || cJSON_IsArray(j)) {
        sum->conversational++;
        if (!cJSON_IsArray(c)) return fdpo_error("%s:%zu: field 'chosen' must be a list of messages like 'rejected'", w->name, w->line);
        if (!cJSON_IsArray(j)) return fdpo_error("%s:%zu: field 'rejected' must be a list of messages like 'chosen'", w->name, w->line);
        if (p && !cJSON_IsArray(p)) return fdpo_error("%s:%zu: field 'prompt' must be a list of messages like 'chosen'", w->name, w->line);
        if (check_messages(w, c, "chosen") || check_messages(w, j, "rejected") || (p && check_messages(w, p, "prompt"))) return -1;
        if (need_chat(w)) return -1;
        r->chat = 1;
        size_t from = 0;
        if (p) {
            render_prompt(w, p, (size_t)cJSON_GetArraySize(p), &r->prompt);
        } else {
            size_t nc = (size_t)cJSON_GetArraySize(c), nj = (size_t)cJSON_GetArraySize(j);
            while (from < nc && from < nj && msg_equal(cJSON_GetArrayItem(c, (int)from), cJSON_GetArrayItem(j, (int)from))) from++;
            if (from == 0 && nc && nj && (strcmp(msg_role(c->child), "assistant") || strcmp(msg_role(j->child), "assistant")))
                return fdpo_error("%s:%zu: no field 'prompt', and chosen and rejected start with different messages: "
                                  "the implicit prompt is their common leading messages, and they have none (only "
                                  "two lone assistant turns may have an empty prompt)", w->name, w->line);
            if (from && !strcmp(msg_role(cJSON_GetArrayItem(c, (int)from - 1)), "system"))
                return fdpo_error("%s:%zu: no field 'prompt', and the messages chosen and rejected share end with a "
                                  "system message (chosen[%zu]): a prompt ends with a user message or an assistant one",
                                  w->name, w->line, from - 1);
            render_prompt(w, c, from, &r->prompt);
        }
        if (render_completion(w, c, from, "chosen", &r->chosen, &r->chosen_content)) return -1;
        if (render_completion(w, j, from, "rejected", &r->rejected, &r->rejected_content)) return -1;
        return 0;
    }
    const char *cs = "", *js = "", *ps = "";
    if (string_field(w, c, "chosen", &cs) || string_field(w, j, "rejected", &js)) return -1;
    if (p && string_field(w, p, "prompt", &ps)) return -1;
    if (!p) {
        size_t n = common_prefix(cs, js);
        sb_add(&r->prompt, cs, n);
        cs += n; js += n;
    } else {
        sb_str(&r->prompt, ps);
    }
    sb_str(&r->chosen, cs); sb_str(&r->rejected, js);
    r->chosen_content = strlen(cs); r->rejected_content = strlen(js);
    return 0;
}

/* add_eot: 1 always (text completions), 2 unless the text already ends with it (a chat
 * completion whose end-of-turn marker is the eos token). An empty text becomes eos. */
static int encode(const fdpo_tokenizer *tok, const fdpo_chat_text *b, int add_eot, int32_t **ids, size_t *n) {
    int32_t *t = NULL;
    size_t k = 0;
    if (fdpo_chat_encode(tok, b, &t, NULL, &k)) return -1;
    if (add_eot == 2 && k && t[k - 1] == fdpo_tokenizer_eot(tok)) add_eot = 0;
    if (add_eot || k == 0) {
        t = fdpo_realloc(t, (k + 1) * sizeof *t);
        t[k++] = fdpo_tokenizer_eot(tok);
    }
    *ids = t; *n = k;
    return 0;
}

static void pair_free(fdpo_pref_pair *p) { free(p->prompt); free(p->chosen); free(p->rejected); }

void fdpo_pref_count_skip(fdpo_pref_summary *s, int why, size_t line) {
    size_t *c[] = {&s->skipped_empty, &s->skipped_identical, &s->skipped_too_long, &s->skipped_identical_after_truncation};
    (*c[why])++;
    if (!s->first_skip_line[why]) s->first_skip_line[why] = line;
}

/* A pair whose chosen and rejected train the same tokens: skipped and counted under
 * --bad-pairs skip (1), else an error (-1). normalized: the texts differed and the tokenizer's
 * normalizer made them one (NFC: "café" precomposed and as e + U+0301). */
static int identical_pair(const where *w, const fdpo_pref_options *opt, fdpo_pref_summary *sum, int normalized) {
    if (opt->on_bad == FDPO_PREF_SKIP) { fdpo_pref_count_skip(sum, FDPO_SKIP_IDENTICAL, w->line); return 1; }
    return fdpo_error("%s:%zu: chosen and rejected are identical%s (no preference to learn); use --bad-pairs skip to "
                      "skip such pairs", w->name, w->line,
                      normalized ? " once tokenized (the tokenizer's normalizer makes their texts the same)" : "");
}

/* One parsed object -> pair. 0 kept, 1 skipped (counted), -1 error. */
static int make_pair(where *w, const cJSON *obj, const fdpo_tokenizer *tok, const fdpo_pref_options *opt,
                     fdpo_pref_summary *sum, fdpo_pref_pair *out) {
    rendered r = {0};
    int rc = render_pair(w, obj, &r, sum);
    memset(out, 0, sizeof *out);
    out->line = w->line;
    const cJSON *mg = cJSON_GetObjectItemCaseSensitive(obj, "margin");
    out->margin = !mg || cJSON_IsNull(mg) ? 0 : cJSON_IsNumber(mg) && isfinite(mg->valuedouble) ? mg->valuedouble : NAN;
    if (rc) goto done;
    /* both may be empty (NULL buffers): memcmp must not see them */
    if (r.chosen.n == r.rejected.n && (r.chosen.n == 0 || memcmp(r.chosen.text, r.rejected.text, r.chosen.n) == 0)) {
        rc = identical_pair(w, opt, sum, 0);
        goto done;
    }
    if (r.chosen_content == 0 || r.rejected_content == 0) {
        const char *which = r.chosen_content == 0 ? "chosen" : "rejected";
        if (opt->on_bad == FDPO_PREF_SKIP) { fdpo_pref_count_skip(sum, FDPO_SKIP_EMPTY, w->line); rc = 1; goto done; }
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(obj, "chosen"), *j = cJSON_GetObjectItemCaseSensitive(obj, "rejected");
        const cJSON *mine = r.chosen_content == 0 ? c : j;
        if (!cJSON_GetObjectItemCaseSensitive(obj, "prompt") && cJSON_IsString(c) && cJSON_IsString(j) &&
            mine->valuestring[0])   /* a text that is not empty: the implicit prompt took all of it */
            rc = fdpo_error("%s:%zu: empty %s completion: no field 'prompt', and %s is a prefix of %s, so the implicit "
                            "prompt (their longest common prefix) is the whole of %s (TRL's extract_prompt keeps its "
                            "last character as the completion); give the pair a 'prompt', or use --bad-pairs skip to "
                            "skip such pairs", w->name, w->line, which, which, mine == c ? "rejected" : "chosen", which);
        else
            rc = fdpo_error("%s:%zu: empty %s completion (after the prompt); use --bad-pairs skip to skip such pairs",
                            w->name, w->line, which);
        goto done;
    }
    int eot = r.chat ? 2 : 1;
    if (encode(tok, &r.prompt, 0, &out->prompt, &out->n_prompt) || encode(tok, &r.chosen, eot, &out->chosen, &out->n_chosen) ||
        encode(tok, &r.rejected, eot, &out->rejected, &out->n_rejected)) {
        fdpo_error_context("%s:%zu", w->name, w->line);
        rc = -1; goto done;
    }
    /* the rule is on what the model trains on, the ids before truncation: texts that differ
     * can tokenize the same (an NFC normalizer) */
    if (out->n_chosen == out->n_rejected && !memcmp(out->chosen, out->rejected, out->n_chosen * sizeof *out->chosen)) {
        rc = identical_pair(w, opt, sum, 1);
        goto done;
    }
    size_t longest = out->n_chosen > out->n_rejected ? out->n_chosen : out->n_rejected;
    if (opt->max_length && out->n_prompt + longest > opt->max_length) {
        if (opt->on_long == FDPO_PREF_LONG_ERROR) {
            rc = fdpo_error("%s:%zu: pair has %zu tokens (prompt %zu + longest completion %zu), more than %s %zu",
                            w->name, w->line, out->n_prompt + longest, out->n_prompt, longest,
                            opt->max_length_name ? opt->max_length_name : "--max-length", opt->max_length);
            goto done;
        }
        if (opt->on_long == FDPO_PREF_LONG_SKIP) { fdpo_pref_count_skip(sum, FDPO_SKIP_LONG, w->line); rc = 1; goto done; }
        size_t max_prompt = opt->max_prompt_length ? opt->max_prompt_length : opt->max_length / 2;
        int cut_prompt = 0, cut_completion = 0;
        out->truncated = 1;
        if (out->n_prompt > max_prompt) { /* keep the END of the prompt: the question is usually last */
            memmove(out->prompt, out->prompt + (out->n_prompt - max_prompt), max_prompt * sizeof *out->prompt);
            out->n_prompt = max_prompt;
            cut_prompt = 1;
        }
        size_t budget = opt->max_length - out->n_prompt;
        if (out->n_chosen > budget) { out->n_chosen = budget; cut_completion = 1; }
        if (out->n_rejected > budget) { out->n_rejected = budget; cut_completion = 1; }
        if (out->n_chosen == out->n_rejected && !memcmp(out->chosen, out->rejected, out->n_chosen * sizeof *out->chosen)) {
            fdpo_pref_count_skip(sum, FDPO_SKIP_IDENTICAL_TRUNC, w->line);
            rc = 1; goto done;
        }
        sum->truncated_prompt += (size_t)cut_prompt;
        sum->truncated_completion += (size_t)cut_completion;
    }
done:
    if (rc) pair_free(out);
    fdpo_chat_text_free(&r.prompt); fdpo_chat_text_free(&r.chosen); fdpo_chat_text_free(&r.rejected);
    return rc;
}

static int check_options(const fdpo_pref_options *opt) {
    if (opt->max_length && opt->max_prompt_length >= opt->max_length)
        return fdpo_error("--max-prompt-length %zu must be smaller than --max-length %zu (completions need room)",
                          opt->max_prompt_length, opt->max_length);
    if (!opt->max_length && opt->max_prompt_length)
        return fdpo_error("--max-prompt-length %zu needs --max-length", opt->max_prompt_length);
    if (opt->max_length == 1) return fdpo_error("--max-length 1 leaves no room for a prompt and a completion");
    return 0;
}

static int parse_lines(const char *name, const char *text, size_t len, const fdpo_tokenizer *tok,
                       const fdpo_pref_options *opt, fdpo_pref_set *out, where *wp);

int fdpo_pref_parse(const char *name, const char *text, size_t len, const fdpo_tokenizer *tok,
                    const fdpo_pref_options *opt, fdpo_pref_set *out) {
    where w = {name, 0, tok, {0}, 0};
    int rc = parse_lines(name, text, len, tok, opt, out, &w);
    fdpo_chat_free(&w.chat);
    return rc;
}

/* The lines of a preference file; w holds the chat template once a conversation needs it
 * (the caller frees it, also after an error). */
static int parse_lines(const char *name, const char *text, size_t len, const fdpo_tokenizer *tok,
                       const fdpo_pref_options *opt, fdpo_pref_set *out, where *w) {
    memset(out, 0, sizeof *out);
    if (check_options(opt)) return -1;
    size_t cap = 0;
    const size_t bom = fdpo_jsonl_bom(text, len);
    for (size_t pos = bom; pos < len;) { /* a UTF-8 BOM is not data */
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + (nl ? 1 : 0);
        w->line++;
        size_t k = 0;
        while (k < n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k == n) continue;
        out->summary.lines++;
        /* line 1 with the file's BOM: the parser skips it and refuses a second one */
        const size_t own = line == text + bom ? bom : 0;
        cJSON *obj = fdpo_jsonl_parse_object(name, w->line, line - own, n + own, "{\"prompt\", \"chosen\", \"rejected\"}");
        if (!obj) { fdpo_pref_free(out); return -1; }
        char where_nul[PATH_MAX + 32];   /* "PATH:LINE", a path of up to PATH_MAX whole */
        snprintf(where_nul, sizeof where_nul, "%s:%zu", name, w->line);
        if (fdpo_jsonl_check_nul(where_nul, line, n, obj)) { cJSON_Delete(obj); fdpo_pref_free(out); return -1; }
        fdpo_pref_pair pair;
        int rc = make_pair(w, obj, tok, opt, &out->summary, &pair);
        cJSON_Delete(obj);
        if (rc < 0) { fdpo_pref_free(out); return -1; }
        if (rc > 0) continue;
        if (out->n == cap) {
            cap = cap ? cap * 2 : 64;
            out->pairs = fdpo_realloc(out->pairs, cap * sizeof *out->pairs);
        }
        pair.index = out->n;
        out->pairs[out->n++] = pair;
    }
    out->summary.pairs = out->n;
    if (out->n == 0) {
        int rc = fdpo_pref_none_usable(name, &out->summary, opt);
        fdpo_pref_free(out);
        return rc;
    }
    return 0;
}

int fdpo_pref_none_usable(const char *name, const fdpo_pref_summary *s, const fdpo_pref_options *opt) {
    const char *limit = opt->max_length_name ? opt->max_length_name : "--max-length";
    size_t skipped = s->skipped_empty + s->skipped_identical + s->skipped_too_long + s->skipped_identical_after_truncation;
    if (s->unpaired)   /* one completion: nothing can be identical */
        return fdpo_error("%s: no usable examples (%zu lines read, %zu skipped: %zu empty completion, %zu too long for "
                          "%s)", name, s->lines, skipped, s->skipped_empty, s->skipped_too_long, limit);
    return fdpo_error("%s: no usable preference pairs (%zu lines read, %zu skipped: %zu empty completion, "
                      "%zu identical chosen/rejected, %zu too long for %s, %zu identical after "
                      "truncation)", name, s->lines, skipped, s->skipped_empty, s->skipped_identical,
                      s->skipped_too_long, limit, s->skipped_identical_after_truncation);
}

int fdpo_pref_load(const char *path, const fdpo_tokenizer *tok, const fdpo_pref_options *opt, fdpo_pref_set *out) {
    size_t len;
    memset(out, 0, sizeof *out);
    char *text = fdpo_read_file(path, &len);
    if (!text) return -1;
    int rc = fdpo_pref_parse(path, text, len, tok, opt, out);
    free(text);
    return rc;
}

void fdpo_pref_free(fdpo_pref_set *s) {
    for (size_t i = 0; i < s->n; i++) pair_free(&s->pairs[i]);
    free(s->pairs);
    s->pairs = NULL;
    s->n = 0;
}

static cJSON *summary_object(const fdpo_pref_summary *s) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "lines", (double)s->lines);
    cJSON_AddNumberToObject(o, s->unpaired ? "examples" : "pairs", (double)s->pairs);
    cJSON_AddNumberToObject(o, "conversational", (double)s->conversational);
    if (!s->unpaired) cJSON_AddNumberToObject(o, "implicit_prompt", (double)s->implicit_prompt);
    cJSON_AddNumberToObject(o, "truncated_prompt", (double)s->truncated_prompt);
    cJSON_AddNumberToObject(o, "truncated_completion", (double)s->truncated_completion);
    cJSON *sk = cJSON_AddObjectToObject(o, "skipped");
    cJSON_AddNumberToObject(sk, "empty_completion", (double)s->skipped_empty);
    if (!s->unpaired) cJSON_AddNumberToObject(sk, "identical", (double)s->skipped_identical);
    cJSON_AddNumberToObject(sk, "too_long", (double)s->skipped_too_long);
    if (!s->unpaired)
        cJSON_AddNumberToObject(sk, "identical_after_truncation", (double)s->skipped_identical_after_truncation);
    return o;
}

char *fdpo_pref_summary_json(const fdpo_pref_summary *s) {
    cJSON *o = summary_object(s);
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    char *r = fdpo_strdup(txt);
    cJSON_free(txt);
    return r;
}

cJSON *fdpo_pref_data_summary(const fdpo_pref_summary *train, const fdpo_pref_summary *eval, size_t n_train,
                              size_t n_eval, const fdpo_pref_options *opt) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddItemToObject(root, "data", summary_object(train));
    if (eval) cJSON_AddItemToObject(root, "eval_data", summary_object(eval));
    cJSON_AddNumberToObject(root, train->unpaired ? "train_examples" : "train_pairs", (double)n_train);
    cJSON_AddNumberToObject(root, train->unpaired ? "eval_examples" : "eval_pairs", (double)n_eval);
    cJSON_AddNumberToObject(root, "max_length", (double)opt->max_length);
    cJSON_AddNumberToObject(root, "max_prompt_length",
                            (double)(opt->max_prompt_length ? opt->max_prompt_length : opt->max_length / 2));
    return root;
}

void fdpo_pref_summary_log(const char *name, const fdpo_pref_summary *s) {
    const char *item = s->unpaired ? "example" : "pair";
    if (s->unpaired)
        fdpo_log(FDPO_LOG_INFO, "%s: %zu examples from %zu lines; examples truncated: %zu in the prompt, %zu in the "
                 "completion; skipped: %zu empty, %zu too long", name, s->pairs, s->lines, s->truncated_prompt,
                 s->truncated_completion, s->skipped_empty, s->skipped_too_long);
    else
        fdpo_log(FDPO_LOG_INFO, "%s: %zu pairs from %zu lines; pairs truncated: %zu in the prompt, %zu in a completion; "
                 "skipped: %zu empty, %zu identical, %zu too long, %zu identical after truncation",
                 name, s->pairs, s->lines, s->truncated_prompt, s->truncated_completion, s->skipped_empty,
                 s->skipped_identical, s->skipped_too_long, s->skipped_identical_after_truncation);
    const char *why[] = {"empty completion", "identical", "too long", "identical after truncation"};
    for (int i = 0; i < 4; i++)
        if (s->first_skip_line[i])
            fdpo_log(FDPO_LOG_INFO, "%s:%zu: first %s skipped as %s", name, s->first_skip_line[i], item, why[i]);
    if (s->implicit_prompt)
        fdpo_log(FDPO_LOG_INFO, "%s: %zu %s without a 'prompt': the common prefix of chosen and rejected is the prompt "
                 "(TRL's implicit prompt)", name, s->implicit_prompt, s->implicit_prompt == 1 ? "pair" : "pairs");
}

int fdpo_pref_split(size_t n, double fraction, uint64_t seed, size_t **train_idx, size_t *n_train,
                    size_t **eval_idx, size_t *n_eval) {
    if (!(fraction >= 0.0 && fraction < 1.0)) return fdpo_error("--eval-fraction %g must be in [0, 1)", fraction);
    /* the same seeded choice as the SFT/pretraining validation split (data.h) */
    unsigned char *is_eval = fdpo_calloc(n ? n : 1, 1);
    fdpo_data_split(n, fraction, seed, is_eval);
    size_t ne = 0;
    for (size_t i = 0; i < n; i++) ne += is_eval[i];
    *eval_idx = fdpo_malloc((ne ? ne : 1) * sizeof **eval_idx);
    *train_idx = fdpo_malloc((n - ne ? n - ne : 1) * sizeof **train_idx);
    *n_eval = *n_train = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_eval[i]) (*eval_idx)[(*n_eval)++] = i;
        else (*train_idx)[(*n_train)++] = i;
    }
    free(is_eval);
    return 0;
}

/* One (prompt, completion) rendered and encoded by exactly the rules of a pair's chosen
 * side (unpaired KTO data, src/data/unpaired.c). */
int fdpo_pref_encode_single(const char *name, size_t line, const cJSON *prompt, const cJSON *completion,
                            const fdpo_tokenizer *tok, int32_t **p, size_t *np, int32_t **c, size_t *nc,
                            size_t *content_len, int *conversational) {
    where w = {name, line, tok, {0}, 0};
    fdpo_chat_text ps = {0}, cs = {0};
    int eot = 1;
    cJSON *pm = NULL;
    int rc = 0;
    *p = *c = NULL;
    if (cJSON_IsArray(completion)) {
        if (!cJSON_IsArray(prompt)) rc = fdpo_error("%s:%zu: field 'prompt' must be a list of messages like 'completion'", name, line);
        if (!rc) rc = check_messages(&w, prompt, "prompt") || check_messages(&w, completion, "completion") ? -1 : 0;
        if (!rc) rc = need_chat(&w);
        if (!rc) {
            render_prompt(&w, prompt, (size_t)cJSON_GetArraySize(prompt), &ps);
            rc = render_completion(&w, completion, 0, "completion", &cs, content_len);
            eot = 2;
        }
    } else if (cJSON_IsString(completion) && (rc = prompt_messages(&w, prompt, &pm)) < 0) {
        /* a bad conversation: said */
    } else if (pm) { /* see prompt_messages */
        const char *ct = "";
        rc = string_field(&w, completion, "completion", &ct) || need_chat(&w) ? -1 : 0;
        if (!rc) {
            render_sampled(&w, pm, ct, &ps, &cs);
            *content_len = strlen(ct);
            eot = 2;
        }
    } else {
        const char *pt = "", *ct = "";
        rc = string_field(&w, completion, "completion", &ct) || string_field(&w, prompt, "prompt", &pt) ? -1 : 0;
        if (!rc) { sb_str(&ps, pt); sb_str(&cs, ct); *content_len = strlen(ct); }
    }
    if (!rc && (encode(tok, &ps, 0, p, np) || encode(tok, &cs, eot, c, nc))) {
        fdpo_error_context("%s:%zu", name, line);
        free(*p); free(*c); *p = *c = NULL;
        rc = -1;
    }
    *conversational = eot == 2;   /* the two chat renderings end the completion's turn */
    fdpo_chat_text_free(&ps); fdpo_chat_text_free(&cs); fdpo_chat_free(&w.chat); cJSON_Delete(pm);
    return rc;
}
