/* SFT JSONL -> weighted sequences (loss on the completion only). */
#include <cJSON.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/chat.h"
#include "fdpo/core.h"
#include "fdpo/data.h"
#include "data/jsonl.h"

typedef struct {
    int32_t *tokens; float *weights; size_t n, cap;
    size_t *start, *len; size_t n_seq, cap_seq;
    int last_cut;   /* finish_seq cut the last sequence */
} builder;

static void b_push(builder *b, const int32_t *ids, size_t n, float w) {
    if (n == 0) return; /* ids and b->tokens may both be NULL */
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->tokens = fdpo_realloc(b->tokens, b->cap * sizeof *b->tokens);
        b->weights = fdpo_realloc(b->weights, b->cap * sizeof *b->weights);
    }
    memcpy(b->tokens + b->n, ids, n * sizeof *ids);
    for (size_t i = 0; i < n; i++) b->weights[b->n + i] = w;
    b->n += n;
}

static const char *get_string(cJSON *obj, const char *field, const char *where, int required, int *err) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, field);
    if (!v) {
        if (required) { fdpo_error("%s: field '%s' missing", where, field); *err = 1; }
        return NULL;
    }
    if (!cJSON_IsString(v)) { fdpo_error("%s: field '%s' must be a string", where, field); *err = 1; return NULL; }
    return v->valuestring;
}

static int finish_seq(builder *b, size_t begin, size_t seq_len);

/* One example -> appended to the builder as one sequence; returns 1 if kept, 0 if dropped,
 * -1 on a tokenizer error. */
static int add_example(builder *b, const fdpo_tokenizer *tok, const char *prompt, const char *completion,
                       const char *text, size_t seq_len) {
    const int32_t eot = fdpo_tokenizer_eot(tok);
    size_t begin = b->n;
    int32_t *ids; size_t n;
    if (text) {
        if (fdpo_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n)) return -1;
        b_push(b, ids, n, 1.0f); free(ids);
    } else {
        if (fdpo_tokenizer_encode(tok, prompt, strlen(prompt), 0, &ids, &n)) return -1;
        /* an empty prompt becomes <|endoftext|> so that the first completion token has a context */
        if (n == 0) b_push(b, &eot, 1, 0.0f);
        else b_push(b, ids, n, 0.0f);
        free(ids);
        if (fdpo_tokenizer_encode(tok, completion, strlen(completion), 0, &ids, &n)) { b->n = begin; return -1; }
        b_push(b, ids, n, 1.0f); free(ids);
    }
    b_push(b, &eot, 1, 1.0f);
    return finish_seq(b, begin, seq_len);
}

/* Ends the sequence that started at begin: cut to seq_len + 1, drop it if nothing is left
 * to learn, else record it. 1 kept, 0 dropped. */
static int finish_seq(builder *b, size_t begin, size_t seq_len) {
    size_t len = b->n - begin;
    b->last_cut = len > seq_len + 1;
    if (b->last_cut) { len = seq_len + 1; b->n = begin + len; }
    double w = 0;
    for (size_t j = 1; j < len; j++) w += b->weights[begin + j];
    if (len < 2 || w <= 0) { b->n = begin; return 0; }
    b->weights[begin] = 0.0f; /* the first token is never a target */
    if (b->n_seq == b->cap_seq) {
        b->cap_seq = b->cap_seq ? b->cap_seq * 2 : 64;
        b->start = fdpo_realloc(b->start, b->cap_seq * sizeof *b->start);
        b->len = fdpo_realloc(b->len, b->cap_seq * sizeof *b->len);
    }
    b->start[b->n_seq] = begin; b->len[b->n_seq] = len; b->n_seq++;
    return 1;
}

/* An assistant message's optional "weight" (OpenAI's fine-tuning format): 1 trains it, 0
 * keeps it as context only. 1 trained, 0 not, -1 error. */
static int message_weight(const cJSON *m, const char *role, const char *where, const char *field, size_t i) {
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(m, "weight");
    if (!w) return 1;
    if (strcmp(role, "assistant"))
        return fdpo_error("%s: field '%s[%zu].weight' on a %s message: only assistant messages take a weight "
                          "(0 keeps one out of the loss)", where, field, i, role);
    if (!cJSON_IsNumber(w) || (w->valuedouble != 0 && w->valuedouble != 1))
        return fdpo_error("%s: field '%s[%zu].weight' must be 0 or 1 (OpenAI's format: 0 keeps the message out "
                          "of the loss)", where, field, i);
    return w->valuedouble == 1;
}

/* {"messages": [{"role", "content"}, ...]} rendered whole with the tokenizer's chat
 * template (include/fdpo/chat.h), encoded as one text; loss on the tokens of the assistant
 * messages' content and end-of-turn markers (not their headers; not those of a message
 * with "weight": 0), then eos (unless the last end-of-turn marker is eos), trained when the
 * last message is a trained assistant message. */
static int add_messages(builder *b, const fdpo_tokenizer *tok, const cJSON *msgs, const char *where, size_t seq_len) {
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return fdpo_error("%s: field 'messages' must be a non-empty array of {\"role\", \"content\"}", where);
    size_t i = 0, n_assistant = 0, n_trained = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        if (fdpo_chat_check_message(m, "messages", i)) return fdpo_error_context("%s", where);
        const char *r = cJSON_GetObjectItemCaseSensitive(m, "role")->valuestring;
        int trained = message_weight(m, r, where, "messages", i);
        if (trained < 0) return -1;
        n_assistant += !strcmp(r, "assistant");
        n_trained += !strcmp(r, "assistant") && trained;
        i++;
    }
    if (n_assistant == 0) return fdpo_error("%s: field 'messages' has no assistant message (nothing to learn)", where);
    if (n_trained == 0) return fdpo_error("%s: every assistant message has weight 0 (nothing to learn)", where);
    fdpo_chat chat;
    if (fdpo_chat_for(tok, &chat)) return fdpo_error_context("%s", where);
    fdpo_chat_msg *msg = fdpo_malloc(i * sizeof *msg);
    size_t k = 0;
    cJSON_ArrayForEach(m, msgs) {
        const char *r = cJSON_GetObjectItemCaseSensitive(m, "role")->valuestring;
        msg[k] = (fdpo_chat_msg){r, cJSON_GetObjectItemCaseSensitive(m, "content")->valuestring,
                                 !message_weight(m, r, where, "messages", k)};
        k++;
    }
    int last_trained = !strcmp(msg[k - 1].role, "assistant") && !msg[k - 1].untrained;
    fdpo_chat_text text = {0};
    fdpo_chat_render(&chat, msg, k, FDPO_CHAT_START | FDPO_CHAT_END_AT_EOT, &text);
    free(msg);
    fdpo_chat_free(&chat);
    int32_t *ids = NULL; float *w = NULL; size_t n = 0;
    int rc = fdpo_chat_encode(tok, &text, &ids, &w, &n);
    fdpo_chat_text_free(&text);
    if (rc) return fdpo_error_context("%s", where);
    const int32_t eot = fdpo_tokenizer_eot(tok);
    size_t begin = b->n;
    for (size_t t = 0; t < n; t++) b_push(b, &ids[t], 1, w[t]);
    if (n == 0 || ids[n - 1] != eot) b_push(b, &eot, 1, last_trained ? 1.0f : 0.0f);
    free(ids); free(w);
    return finish_seq(b, begin, seq_len);
}

/* TRL's conversational prompt-completion: {"prompt": [messages], "completion": [messages]},
 * rendered as the one conversation prompt + completion (add_messages) with the loss on the
 * completion's assistant messages; the prompt's assistant messages are context (weight 0). */
static int add_conversation(builder *b, const fdpo_tokenizer *tok, const cJSON *prompt, const cJSON *completion,
                            const char *where, size_t seq_len) {
    if (!cJSON_IsArray(prompt))
        return fdpo_error("%s: field 'prompt' must be a list of messages like 'completion'", where);
    if (!cJSON_IsArray(completion))
        return fdpo_error("%s: field 'completion' must be a list of messages like 'prompt'", where);
    if (fdpo_chat_check_prompt(prompt, "prompt", NULL)) return fdpo_error_context("%s", where);
    size_t i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, prompt) {   /* context: a weight there would be replaced, not read */
        if (cJSON_GetObjectItemCaseSensitive(m, "weight"))
            return fdpo_error("%s: field 'prompt[%zu].weight': the prompt's messages are context, out of the loss (a "
                              "weight belongs to a completion message)", where, i);
        i++;
    }
    i = 0;
    cJSON_ArrayForEach(m, completion) {
        if (fdpo_chat_check_message(m, "completion", i)) return fdpo_error_context("%s", where);
        if (message_weight(m, cJSON_GetObjectItemCaseSensitive(m, "role")->valuestring, where, "completion", i) < 0) return -1;
        i++;
    }
    const char *first = i ? cJSON_GetObjectItemCaseSensitive(completion->child, "role")->valuestring : "";
    if (strcmp(first, "assistant"))
        return fdpo_error("%s: completion[0] must be an assistant message (the completion starts there)%s", where,
                          i ? "" : "; the list is empty");
    cJSON *all = cJSON_CreateArray();
    cJSON_ArrayForEach(m, prompt) {
        cJSON *c = cJSON_Duplicate(m, 1);
        if (!strcmp(cJSON_GetObjectItemCaseSensitive(c, "role")->valuestring, "assistant"))
            cJSON_AddNumberToObject(c, "weight", 0);
        cJSON_AddItemToArray(all, c);
    }
    cJSON_ArrayForEach(m, completion) cJSON_AddItemToArray(all, cJSON_Duplicate(m, 1));
    int kept = add_messages(b, tok, all, where, seq_len);
    cJSON_Delete(all);
    return kept;
}

/* {"prompt": "[messages' JSON text]", "completion": text}: how generate, online and pairs keep
 * a conversational prompt, so a rejection-sampling loop (generate -> filter -> sft) trains on
 * its samples as they were sampled. Read as dpo, kto, rm and score read it: the prompt
 * rendered with its generation prompt (fdpo_chat_encode_prompt), the completion as the
 * assistant's reply to it up to the end-of-turn marker (fdpo_chat_encode_reply), then eos
 * as add_messages ends one; loss on the reply. 1 kept, 0 dropped, 2 the prompt is plain
 * text (nothing added), -1 error. */
static int add_sampled(builder *b, const fdpo_tokenizer *tok, const char *prompt, const char *completion,
                       const char *where, size_t seq_len) {
    int32_t *p = NULL, *c = NULL;
    size_t np = 0, nc = 0;
    int is = fdpo_chat_encode_prompt(tok, prompt, &p, &np);
    if (is == 1) return 2;
    if (is == 0) is = fdpo_chat_encode_reply(tok, prompt, completion, &c, &nc);
    if (is != 0) { free(p); free(c); return fdpo_error_context("%s", where); }
    const int32_t eot = fdpo_tokenizer_eot(tok);
    size_t begin = b->n;
    b_push(b, p, np, 0.0f);
    b_push(b, c, nc, 1.0f);
    if (nc == 0 || c[nc - 1] != eot) b_push(b, &eot, 1, 1.0f);
    free(p); free(c);
    return finish_seq(b, begin, seq_len);
}

_Static_assert(sizeof ((fdpo_sft_stats *)0)->first_dropped >= PATH_MAX + 32, "a FILE:LINE of parse_text's where");

/* the example just added at where: kept (1, maybe cut) or dropped (0), counted in st */
static void count_example(fdpo_sft_stats *st, const builder *b, int kept, const char *where) {
    if (kept == 0 && !st->dropped++) snprintf(st->first_dropped, sizeof st->first_dropped, "%s", where);
    if (kept == 1 && b->last_cut && !st->cut++) snprintf(st->first_cut, sizeof st->first_cut, "%s", where);
}

/* whether a trained message of msgs (an assistant message message_weight trains) has s in its
 * content: the messages' text that is learnt, as "text" and "completion" are. Called once the
 * line has been added, so every weight has passed message_weight's checks (no error here). */
static int trained_message_holds(const cJSON *msgs, const char *s) {
    const cJSON *m;
    size_t i = 0;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role"), *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (cJSON_IsString(role) && !strcmp(role->valuestring, "assistant") &&
            message_weight(m, "assistant", "", "messages", i) == 1 && cJSON_IsString(content) && strstr(content->valuestring, s))
            return 1;
        i++;
    }
    return 0;
}

static int parse_text(const char *path, const char *buf, size_t len, builder *b, const fdpo_tokenizer *tok,
                      size_t seq_len, fdpo_sft_stats *st) {
    size_t line = 1, eos_len = 0;
    const int32_t eot = fdpo_tokenizer_eot(tok);
    char *eos = fdpo_tokenizer_decode(tok, &eot, 1, &eos_len);   /* its text, "<|endoftext|>" */
    int rc = 0;
    const size_t bom = fdpo_jsonl_bom(buf, len);
    for (const char *p = buf + bom; p < buf + len; line++) { /* a UTF-8 BOM is not data */
        const char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        const char *end = nl ? nl : buf + len;
        char where[PATH_MAX + 32];   /* "PATH:LINE": a path of up to PATH_MAX survives whole */
        snprintf(where, sizeof where, "%s:%zu", path, line);
        size_t ll = (size_t)(end - p);
        int blank = 1;
        for (size_t i = 0; i < ll; i++) if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r') { blank = 0; break; }
        if (!blank) {
            const size_t own = p == buf + bom ? bom : 0;   /* line 1's BOM: the parser skips it, refuses a second */
            cJSON *obj = fdpo_jsonl_parse_object(path, line, p - own, ll + own, NULL);   /* invalid UTF-8 too */
            if (!obj) { rc = -1; break; }
            if (fdpo_jsonl_check_nul(where, p, ll, obj)) { cJSON_Delete(obj); rc = -1; break; }
            int err = 0;
            const char *text = NULL, *prompt = NULL, *completion = NULL;
            const cJSON *trained_msgs = NULL;   /* the messages whose assistant content is trained */
            /* a line with two shapes (ultrachat's "prompt" beside its "messages") reads one,
             * messages over prompt/completion over text, and is counted: the other is unread */
            const int pc = cJSON_GetObjectItemCaseSensitive(obj, "completion") || cJSON_GetObjectItemCaseSensitive(obj, "prompt"),
                      tx = cJSON_GetObjectItemCaseSensitive(obj, "text") != NULL,
                      ms = cJSON_GetObjectItemCaseSensitive(obj, "messages") != NULL;
            if (pc + tx + ms > 1 && !st->two_shapes++) snprintf(st->first_two_shapes, sizeof st->first_two_shapes, "%s", where);
            if (ms) {
                trained_msgs = cJSON_GetObjectItemCaseSensitive(obj, "messages");
                int kept = add_messages(b, tok, trained_msgs, where, seq_len);
                if (kept < 0) err = 1;
                else count_example(st, b, kept, where);
            } else if (pc && (cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(obj, "prompt")) ||
                              cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(obj, "completion")))) {
                trained_msgs = cJSON_GetObjectItemCaseSensitive(obj, "completion");   /* the prompt's are context */
                int kept = add_conversation(b, tok, cJSON_GetObjectItemCaseSensitive(obj, "prompt"), trained_msgs,
                                            where, seq_len);
                if (kept < 0) err = 1;
                else count_example(st, b, kept, where);
            } else if (pc) {
                prompt = get_string(obj, "prompt", where, 1, &err);
                if (!err) completion = get_string(obj, "completion", where, 1, &err);
            } else if (tx) {
                text = get_string(obj, "text", where, 1, &err);
            } else {
                fdpo_error("%s: field 'completion' missing (expected {\"prompt\", \"completion\"}, {\"text\"} "
                           "or {\"messages\"})", where); err = 1;
            }
            /* only text that is trained: a prompt (weight 0) is context, its marker is not learnt */
            if (!err && eos_len && ((text && strstr(text, eos)) || (completion && strstr(completion, eos)) ||
                                    trained_message_holds(trained_msgs, eos)) && !st->eos_text++)
                snprintf(st->first_eos_text, sizeof st->first_eos_text, "%s", where);
            if (!err && prompt && completion) {
                int kept = add_sampled(b, tok, prompt, completion, where, seq_len);
                if (kept < 0) err = 1;
                else if (kept < 2) { count_example(st, b, kept, where); completion = NULL; }   /* not again as text */
            }
            if (!err && (text || completion)) {
                int kept = add_example(b, tok, prompt, completion, text, seq_len);
                if (kept < 0) { fdpo_error_context("%s", where); err = 1; }
                else count_example(st, b, kept, where);
            }
            cJSON_Delete(obj);
            if (err) { rc = -1; break; }
        }
        p = end + 1;
    }
    free(eos);
    return rc;
}

static int parse_file(const char *path, builder *b, const fdpo_tokenizer *tok, size_t seq_len, fdpo_sft_stats *st) {
    size_t len;
    char *buf = fdpo_read_file(path, &len);
    if (!buf) return -1;
    size_t lines = 0;   /* every file holds examples: an empty one among several was passed over */
    for (size_t i = fdpo_jsonl_bom(buf, len); i < len && !lines; i++)
        lines = buf[i] != ' ' && buf[i] != '\t' && buf[i] != '\r' && buf[i] != '\n';
    int rc = lines ? parse_text(path, buf, len, b, tok, seq_len, st)
                   : fdpo_error("%s: no examples (the file is empty or holds only blank lines)", path);
    free(buf);
    return rc;
}

static void builder_free(builder *b) { free(b->tokens); free(b->weights); free(b->start); free(b->len); }
static int split_into(builder *b, const char *name, size_t seq_len, size_t n_dropped, double val_fraction, uint64_t seed,
                      fdpo_lm_data *train, fdpo_lm_data *val);

int fdpo_sft_parse(const char *name, const char *text, size_t len, const fdpo_tokenizer *tok,
                   size_t seq_len, double val_fraction, uint64_t seed,
                   fdpo_lm_data *train, fdpo_lm_data *val, fdpo_sft_stats *stats) {
    memset(train, 0, sizeof *train);
    memset(val, 0, sizeof *val);
    *stats = (fdpo_sft_stats){0};
    if (seq_len < 1) return fdpo_error("--seq-len must be >= 1");
    builder b = {0};
    if (parse_text(name, text, len, &b, tok, seq_len, stats)) { builder_free(&b); return -1; }
    return split_into(&b, name, seq_len, stats->dropped, val_fraction, seed, train, val);
}

int fdpo_sft_load(const char *const *paths, size_t n_paths, const fdpo_tokenizer *tok,
                  size_t seq_len, double val_fraction, uint64_t seed,
                  fdpo_lm_data *train, fdpo_lm_data *val, fdpo_sft_stats *stats) {
    memset(train, 0, sizeof *train);
    memset(val, 0, sizeof *val);
    *stats = (fdpo_sft_stats){0};
    if (n_paths == 0) return fdpo_error("no input files (give one or more JSONL files)");
    if (seq_len < 1) return fdpo_error("--seq-len must be >= 1");
    builder b = {0};
    for (size_t f = 0; f < n_paths; f++) {
        if (parse_file(paths[f], &b, tok, seq_len, stats)) { builder_free(&b); return -1; }
    }
    return split_into(&b, paths[0], seq_len, stats->dropped, val_fraction, seed, train, val);
}

/* The collected sequences -> train/val (frees b). No sequence left: say why where every
 * example was dropped (the count the partial case logs, and the flag that decides it). */
static int split_into(builder *b_, const char *name, size_t seq_len, size_t n_dropped, double val_fraction, uint64_t seed,
                      fdpo_lm_data *train, fdpo_lm_data *val) {
    builder b = *b_;
    if (b.n_seq == 0) {
        builder_free(&b);
        if (n_dropped > 0)
            return fdpo_error("%s: no usable examples: none of the %zu has a completion token within --seq-len %zu "
                              "(the completion is empty, or the prompt or the chat template's text fills --seq-len)",
                              name, n_dropped, seq_len);
        return fdpo_error("%s: no usable examples", name);
    }
    unsigned char *is_val = fdpo_malloc(b.n_seq);
    fdpo_data_split(b.n_seq, val_fraction, seed, is_val);
    for (int part = 0; part < 2; part++) {
        fdpo_lm_data *d = part ? val : train;
        size_t n = 0, ns = 0;
        for (size_t i = 0; i < b.n_seq; i++) if (is_val[i] == part) { n += b.len[i]; ns++; }
        d->tokens = fdpo_malloc((n ? n : 1) * sizeof *d->tokens);
        d->weights = fdpo_malloc((n ? n : 1) * sizeof *d->weights);
        d->start = fdpo_malloc((ns ? ns : 1) * sizeof *d->start);
        d->len = fdpo_malloc((ns ? ns : 1) * sizeof *d->len);
        size_t k = 0;
        for (size_t i = 0; i < b.n_seq; i++) {
            if (is_val[i] != part) continue;
            memcpy(d->tokens + k, b.tokens + b.start[i], b.len[i] * sizeof *d->tokens);
            memcpy(d->weights + k, b.weights + b.start[i], b.len[i] * sizeof *d->weights);
            d->start[d->n_seq] = k; d->len[d->n_seq] = b.len[i]; d->n_seq++;
            k += b.len[i];
        }
        d->n_tokens = n; d->n_docs = ns;
    }
    free(is_val);
    builder_free(&b);
    return 0;
}
