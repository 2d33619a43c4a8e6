/* Preference data (TRL format) -> token ids, with truncation and an honest summary.
 *
 * One JSON object per line: {"prompt", "chosen", "rejected"}.
 *   - strings: prompt text + completion text. Without "prompt", the prompt is the longest
 *     common CHARACTER prefix of chosen and rejected (backed up to a UTF-8 code point
 *     boundary; a trailing space goes back to the completions, as TRL does, because GPT-2's
 *     BPE attaches a leading space to the following word).
 *   - conversational: lists of {"role", "content"}; without "prompt" the prompt is the
 *     common leading MESSAGES of chosen and rejected. Rendered with the tokenizer's chat
 *     template (include/fdpo/chat.h; default "plain": "<|ROLE|>\nCONTENT\n" per message):
 *     the prompt from the start of the conversation + the generation prompt ("<|assistant|>\n");
 *     the completion is the first (assistant) message's content, then any further
 *     messages, up to the last end-of-turn marker. The completion must start with an
 *     assistant turn.
 * Prompt and completions are encoded separately (a literal "<|endoftext|>" in data is
 * text; special tokens are matched in template markers only); every completion ends with
 * eos (not repeated when the template's end-of-turn marker is eos). An empty prompt becomes
 * the single token eos so that the first completion token has a context.
 *
 * Truncation (max_length > 0): if len(prompt) + max(len(chosen), len(rejected)) exceeds
 * max_length, the prompt keeps its LAST max_prompt_length tokens, then the completions
 * keep their FIRST max_length - len(prompt) tokens (losing <|endoftext|>).
 *
 * Policy for bad data. Always an error naming FILE:LINE: invalid JSON, a line that is not
 * an object, a missing or non-string field, an unknown role, invalid UTF-8, a string with a
 * NUL (\u0000 or a raw 0 byte: cJSON would cut it there; the field is named). A leading
 * UTF-8 byte order mark is skipped. With
 * on_bad = FDPO_PREF_ERROR (default) also an error: an empty completion, chosen ==
 * rejected (their token ids before truncation: texts an NFC normalizer makes one count); with FDPO_PREF_SKIP those pairs are skipped and counted. Pairs that exceed
 * max_length follow on_long: truncate (counted), skip (counted), or error. A pair whose
 * completions become identical after truncation is skipped and counted (nothing is left
 * to prefer). Blank lines are ignored. Nothing is dropped without a count. */
#ifndef FDPO_PREF_H
#define FDPO_PREF_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "fdpo/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int32_t *prompt;   size_t n_prompt;
    int32_t *chosen;   size_t n_chosen;     /* completion tokens, <|endoftext|> last unless cut */
    int32_t *rejected; size_t n_rejected;
    size_t line;       /* 1-based line in the source file */
    size_t index;      /* position in the loaded set (stable key for the reference cache) */
    int truncated;     /* 1 if the prompt or a completion was cut */
    double margin;     /* the optional "margin" field (TRL's RewardTrainer; fdpo rm): 0 when absent or
                        * null, NaN when it is not a finite number (fdpo_pref_margins_check refuses it; the
                        * trainers that ignore it, dpo and online, read the file as before) */
} fdpo_pref_pair;

typedef enum { FDPO_PREF_ERROR, FDPO_PREF_SKIP } fdpo_pref_on_bad;
typedef enum { FDPO_PREF_LONG_TRUNCATE, FDPO_PREF_LONG_SKIP, FDPO_PREF_LONG_ERROR } fdpo_pref_on_long;

typedef struct {
    size_t max_length;         /* 0 = no limit */
    size_t max_prompt_length;  /* 0 = max_length / 2 (no limit when max_length is 0); else < max_length */
    fdpo_pref_on_bad on_bad;
    fdpo_pref_on_long on_long;
    const char *max_length_name; /* what messages call the limit (NULL: "--max-length"; eval: the reference's n_positions) */
} fdpo_pref_options;

typedef struct {
    size_t lines;                  /* non-blank lines read */
    size_t pairs;                  /* pairs kept */
    size_t conversational;         /* of those read, how many were message lists */
    size_t implicit_prompt;        /* of those read, how many had no "prompt" */
    size_t truncated_prompt;       /* kept pairs whose prompt was cut */
    size_t truncated_completion;   /* kept pairs whose chosen or rejected was cut */
    size_t skipped_empty;          /* empty chosen or rejected (on_bad = skip) */
    size_t skipped_identical;      /* chosen == rejected, as token ids (on_bad = skip) */
    size_t skipped_too_long;       /* on_long = skip */
    size_t skipped_identical_after_truncation;
    size_t first_skip_line[4];     /* first line of each skip reason above (0 = none) */
    int unpaired;                  /* KTO's examples (fdpo_unpaired_load): "pairs" counts examples, one
                                    * completion each, so no identical ones; messages say "examples" */
} fdpo_pref_summary;

/* The skip reasons, first_skip_line's order. */
enum { FDPO_SKIP_EMPTY, FDPO_SKIP_IDENTICAL, FDPO_SKIP_LONG, FDPO_SKIP_IDENTICAL_TRUNC };
/* Count one skipped pair (example) of line for reason why. */
void fdpo_pref_count_skip(fdpo_pref_summary *s, int why, size_t line);

typedef struct {
    fdpo_pref_pair *pairs;
    size_t n;
    fdpo_pref_summary summary;
} fdpo_pref_set;

/* Parse, template, tokenize and truncate FILE. Errors name FILE:LINE and the field. */
int fdpo_pref_load(const char *path, const fdpo_tokenizer *tok, const fdpo_pref_options *opt,
                   fdpo_pref_set *out);
/* The same from text in memory (name is used in messages). */
int fdpo_pref_parse(const char *name, const char *text, size_t len, const fdpo_tokenizer *tok,
                    const fdpo_pref_options *opt, fdpo_pref_set *out);
void fdpo_pref_free(fdpo_pref_set *s);
/* The error when nothing is left (returns -1): "NAME: no usable preference pairs (L lines
 * read, K skipped: ...)" with the count of each reason (an unpaired summary: "no usable
 * examples"). */
int fdpo_pref_none_usable(const char *name, const fdpo_pref_summary *s, const fdpo_pref_options *opt);
/* Summary as one JSON object (malloc'd). */
char *fdpo_pref_summary_json(const fdpo_pref_summary *s);
/* A run's data_summary.json (dpo, kto): {"data": the training file's summary, "eval_data":
 * --eval-file's (eval NULL: none), "train_pairs", "eval_pairs" ("train_examples",
 * "eval_examples" for an unpaired summary), "max_length", "max_prompt_length"}; the caller
 * adds its own keys and deletes it. */
struct cJSON;
struct cJSON *fdpo_pref_data_summary(const fdpo_pref_summary *train, const fdpo_pref_summary *eval, size_t n_train,
                                     size_t n_eval, const fdpo_pref_options *opt);
/* The summary as log lines through the hook (counts, then the first line skipped per reason). */
void fdpo_pref_summary_log(const char *name, const fdpo_pref_summary *s);
/* Seeded split (fdpo_data_split of data.h): round(fraction * n) pairs, at least 1 when
 * fraction > 0 and n >= 2, never all, go to eval; both halves stay in file order. Caller
 * frees both arrays. */
int fdpo_pref_split(size_t n, double fraction, uint64_t seed, size_t **train_idx, size_t *n_train,
                    size_t **eval_idx, size_t *n_eval);

/* One (prompt, completion) with the rules of a pair's chosen side: strings, or message
 * lists (prompt rendered + the generation prompt, the completion starting with an assistant
 * turn); prompt ids (an empty prompt becomes <|endoftext|>) and completion ids +
 * <|endoftext|> (malloc'd). *content_len: bytes of completion content (0 = empty);
 * *conversational: 1 when rendered with the chat template (message lists, or a prompt that
 * is its messages' JSON text, as a pair's conversational count has it), else 0. Errors
 * name NAME:LINE and the field. For unpaired data (kto.h). */
struct cJSON;
int fdpo_pref_encode_single(const char *name, size_t line, const struct cJSON *prompt, const struct cJSON *completion,
                            const fdpo_tokenizer *tok, int32_t **p, size_t *np, int32_t **c, size_t *nc,
                            size_t *content_len, int *conversational);

#ifdef __cplusplus
}
#endif

#endif
