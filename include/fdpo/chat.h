/* Chat templates: how {"role", "content"} messages become text, which parts of that text are
 * template markers (special tokens are matched there, never in message content) and which
 * are trained (assistant content and its end-of-turn marker).
 *
 * There is no Jinja here: the files' chat template (chat_template.jinja, else
 * tokenizer_config.json's chat_template) is recognised when it is one of the published
 * templates known to render as a built-in (anything else is refused), or one is named with
 * --chat-template NAME:
 *   plain   fdpo's format: "<|ROLE|>\nCONTENT\n"; generation prompt "<|assistant|>\n"
 *           (the default for tokenizers without a chat_template, e.g. GPT-2)
 *   chatml  SmolLM2 / Qwen2: "<|im_start|>ROLE\nCONTENT<|im_end|>\n"; generation prompt
 *           "<|im_start|>assistant\n"; the template's default system turn, if it has one,
 *           when the first message is not a system message
 *   llama3  "<|begin_of_text|>" once, then "<|start_header_id|>ROLE<|end_header_id|>\n\n"
 *           + trimmed CONTENT + "<|eot_id|>"; the Llama-3.1 template also gets its
 *           system preamble ("Cutting Knowledge Date: ...\nToday Date: ...\n\n")
 *   zephyr  Zephyr / TinyLlama: "<|ROLE|>\nCONTENT" + eos_token + "\n"; generation prompt
 *           "<|assistant|>\n"
 * docs/training.md#chat-templates has the rules in full. */
#ifndef FDPO_CHAT_H
#define FDPO_CHAT_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { FDPO_CHAT_PLAIN, FDPO_CHAT_CHATML, FDPO_CHAT_LLAMA3, FDPO_CHAT_ZEPHYR } fdpo_chat_kind;
#define FDPO_CHAT_BUILTINS "plain, chatml, llama3, zephyr"

typedef struct {
    fdpo_chat_kind kind;
    char *default_system;   /* chatml: system turn added when messages[0] is not one (NULL: none) */
    char *preamble;         /* llama3.1+: system preamble before the system message (NULL: none) */
    char *bos, *eos;        /* token texts: the leading bos, zephyr's end of turn */
    int start_bos;          /* bos before the conversation: llama3, a chatml template that writes bos_token */
} fdpo_chat;

/* untrained: an assistant message kept out of the loss (OpenAI's "weight": 0); 0 trains it */
typedef struct { const char *role, *content; int untrained; } fdpo_chat_msg;

/* The template the tokenizer's files or its explicit choice (fdpo_tokenizer_set_chat_template)
 * give. Errors name the file's template (chat_template.jinja, or tokenizer_config.json's
 * chat_template) when it is not recognised, with the built-ins, and a list of templates with
 * none named "default". Free with fdpo_chat_free. */
int fdpo_chat_for(const fdpo_tokenizer *t, fdpo_chat *out);
void fdpo_chat_free(fdpo_chat *c);
/* Recognise a chat_template source: 0 and *kind when it is one of the published templates fdpo
 * knows to render as a built-in (src/data/chat_known.c; compared up to what Jinja ignores:
 * newline style, whitespace inside tags, quote style and escapes of string literals), or -1
 * (no message). docs/training.md#chat-templates states the rule. */
int fdpo_chat_detect(const char *source, fdpo_chat_kind *kind);
/* A Jinja chat_template that renders as the built-in does for tokenizer t (no default system
 * turn or preamble; the bos and eos fdpo renders for t written as literals), malloc'd;
 * fdpo_chat_detect recognises it. Saved with a tokenizer whose template was named
 * (fdpo_tokenizer_save_dir). */
char *fdpo_chat_source(const fdpo_tokenizer *t, fdpo_chat_kind kind);
/* A built-in by name; the error lists the built-ins. */
int fdpo_chat_parse_name(const char *name, fdpo_chat_kind *kind);
const char *fdpo_chat_name(fdpo_chat_kind kind);

/* Rendered text with two byte masks. */
typedef struct {
    char *text; size_t n, cap;
    unsigned char *tmpl;   /* [n] 1 = template text (special tokens matched here) */
    unsigned char *train;  /* [n] 1 = assistant content and its end of turn (not an untrained message's) */
} fdpo_chat_text;
void fdpo_chat_text_free(fdpo_chat_text *t);
/* Appends s[0..n) with the given masks (plain data text: tmpl = train = 0). */
void fdpo_chat_text_put(fdpo_chat_text *t, const char *s, size_t n, int tmpl, int train);

enum {
    FDPO_CHAT_START = 1,             /* the conversation starts here: bos, default system turn */
    FDPO_CHAT_GENERATION_PROMPT = 2, /* append the assistant header (add_generation_prompt) */
    FDPO_CHAT_CONTINUE = 4,          /* m[0] is an assistant turn whose header the text before holds */
    FDPO_CHAT_END_AT_EOT = 8,        /* stop after the last message's end-of-turn marker */
    FDPO_CHAT_OPEN_END = 16,         /* the last message is an assistant turn left open: the
                                      * render cut after its content, no end-of-turn marker
                                      * (transformers' continue_final_message) */
    FDPO_CHAT_CONTINUE_OPEN = 32,    /* with CONTINUE: m[0] goes on with the content the text
                                      * before left open (OPEN_END), so its start is not trimmed */
};
/* A prompt's flags: from the start, then the generation prompt after a user message, or the
 * last message left open when it is the assistant's (the completion continues it, as
 * transformers' continue_final_message and TRL's maybe_apply_chat_template do). */
unsigned fdpo_chat_prompt_flags(const fdpo_chat_msg *m, size_t n);
/* Renders m[0..n) onto out. Roles are system, user, assistant (the callers check). */
void fdpo_chat_render(const fdpo_chat *c, const fdpo_chat_msg *m, size_t n, unsigned flags, fdpo_chat_text *out);

/* Tokens of t (specials matched in template text only) and, when w is not NULL, each
 * token's loss weight: 1 if any of its bytes is trained. *ids, *w malloc'd. */
int fdpo_chat_encode(const fdpo_tokenizer *tok, const fdpo_chat_text *t, int32_t **ids, float **w, size_t *n);

/* A prompt that is the JSON text of a message list ('[{"role", "content"}, ...]', as
 * fdpo_read_prompts keeps conversational prompts): rendered from the start with
 * fdpo_chat_prompt_flags and encoded. 0 done, 1 not such a prompt (nothing set), -1 error. */
int fdpo_chat_encode_prompt(const fdpo_tokenizer *tok, const char *prompt, int32_t **ids, size_t *n);
/* The assistant's reply text to the prompt m[0..n) as sampling continues it: after the
 * generation prompt, or going on with the prompt's last message when that is the
 * assistant's left open, to its end-of-turn marker. */
void fdpo_chat_render_reply(const fdpo_chat *c, const fdpo_chat_msg *m, size_t n, const char *text, fdpo_chat_text *out);
/* A completion of such a prompt, rendered as the reply (fdpo_chat_render_reply) and encoded:
 * the tokens a preference pair of (prompt, completion) trains on. 0 done, 1 the prompt is not
 * a message list (nothing set), -1 error. */
int fdpo_chat_encode_reply(const fdpo_tokenizer *tok, const char *prompt, const char *text, int32_t **ids, size_t *n);

/* 1 when prompt is such a message list (fdpo_chat_encode_prompt would render it, or refuse
 * it as a bad one), else 0. */
int fdpo_chat_is_conversation(const char *prompt);
/* Is text the JSON text of a message list? The whole text (blanks after it allowed) must be
 * a non-empty JSON array of objects that all have a "role": else it is plain text (0; text
 * after the list made it one, and that text was dropped). Such a list is then checked as a
 * prompt (fdpo_chat_check_prompt; field names it in the message; a key twice in one object, and
 * what only cJSON reads (a raw control character, a \u escape without four hex digits, a number
 * such as 01 or 1.) are refused, as in a JSONL line): 1 and *out the parsed
 * list (the caller deletes it with cJSON_Delete), or -1 with the error set. */
struct cJSON;
int fdpo_chat_parse_conversation(const char *text, const char *field, struct cJSON **out);
/* A prompt's messages, as every reader takes them: each an object with "role" system, user
 * or assistant and "content" a string of valid UTF-8 without NUL (raw: the JSON text the
 * list was parsed from, where a "\u0000" escape would have cut a content, or NULL); no
 * tool_calls or function_call (no built-in template renders them: they were dropped); at
 * least one message, the last a user or assistant one (a system message ends no prompt;
 * TRL refuses both). Errors name field[i]. */
int fdpo_chat_check_prompt(const struct cJSON *arr, const char *field, const char *raw);
/* The per-message part of that check, for any message list (SFT "messages", completions). */
int fdpo_chat_check_message(const struct cJSON *m, const char *field, size_t i);

#ifdef __cplusplus
}
#endif

#endif
