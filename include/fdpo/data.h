/* Training data for next-token objectives (pretraining and SFT).
 *
 * A dataset is a list of token sequences over one shared buffer. Sequence i is
 * tokens[start[i] .. start[i] + len[i]); the model reads tokens 0..len-2 and predicts
 * tokens 1..len-1, each target j weighted by weights[start[i] + j] (the weight of a token
 * as a TARGET; the first token of a sequence is never a target). weights == NULL means 1.
 * Sequences may overlap in the buffer (pretraining windows share one token). */
#ifndef FDPO_DATA_H
#define FDPO_DATA_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    size_t n_seq;
    size_t *start, *len;     /* [n_seq] */
    int32_t *tokens;         /* [n_tokens] */
    float *weights;          /* [n_tokens] or NULL */
    size_t n_tokens;
    size_t n_docs;           /* documents / examples the sequences came from */
} fdpo_lm_data;

void fdpo_lm_data_free(fdpo_lm_data *d);
/* Sum of target weights of sequence i (the loss normaliser's share of it). */
double fdpo_lm_data_seq_weight(const fdpo_lm_data *d, size_t i);
/* Fingerprint of the sequences (tokens, weights, boundaries): resume refuses other data. */
uint64_t fdpo_lm_data_hash(const fdpo_lm_data *d);


/* Pretraining text: each file is UTF-8 (an empty file or invalid UTF-8 is an error naming
 * the file, byte offset and line). The literal "<|endoftext|>" separates documents inside a
 * file; every file ends a document. Documents are split train/val (a seeded choice of
 * round(val_fraction * docs) documents, at least 1 and at most docs - 1 when val_fraction > 0
 * and there are 2+ documents; none with a single document), each split's documents are
 * joined with <|endoftext|> after every document, and the stream is cut into windows of
 * seq_len + 1 tokens that overlap by one token (every token is a target once; the last
 * window may be shorter). */
int fdpo_text_load(const char *const *paths, size_t n_paths, const fdpo_tokenizer *tok,
                   size_t seq_len, double val_fraction, uint64_t seed,
                   fdpo_lm_data *train, fdpo_lm_data *val);

/* SFT JSONL, one example per line (blank lines skipped):
 *   {"prompt": P, "completion": C}  tokens P + C + <|endoftext|>, loss on C and <|endoftext|>
 *   {"text": T}                     tokens T + <|endoftext|>, loss on every target
 * Prompt and completion are tokenized separately. Sequences longer than seq_len + 1 tokens
 * are cut at the end (counted in stats->cut); an example left with no weighted target is
 * dropped (stats->dropped). Errors name "FILE:LINE" and the field; a string with a NUL
 * (\u0000) is an error (cJSON would cut it there); a leading UTF-8 byte order mark is
 * skipped. val as in fdpo_text_load, by example. */
typedef struct {
    size_t dropped;   /* examples with no weighted target within seq_len + 1 tokens */
    size_t cut;       /* examples longer than seq_len + 1 tokens, cut at the end */
    size_t two_shapes;   /* lines with keys of two shapes: read as messages, else prompt/completion */
    /* lines whose trained text ("text", a "completion" string, the content of a trained
     * assistant message of "messages" or of a "completion" list; not a prompt) holds the eos
     * token's text (data formatted for causal LM training): tokenized as text, not as the
     * token, as every data string is (docs/training.md); eos is appended all the same */
    size_t eos_text;
    /* "FILE:LINE" of the first; "" none. 4128: a path of PATH_MAX (4096 on Linux) and its line */
    char first_dropped[4128], first_cut[4128], first_two_shapes[4128], first_eos_text[4128];
} fdpo_sft_stats;
int fdpo_sft_load(const char *const *paths, size_t n_paths, const fdpo_tokenizer *tok,
                  size_t seq_len, double val_fraction, uint64_t seed,
                  fdpo_lm_data *train, fdpo_lm_data *val, fdpo_sft_stats *stats);

/* The same for one file's text in memory (name is used in messages). */
int fdpo_sft_parse(const char *name, const char *text, size_t len, const fdpo_tokenizer *tok,
                   size_t seq_len, double val_fraction, uint64_t seed,
                   fdpo_lm_data *train, fdpo_lm_data *val, fdpo_sft_stats *stats);

/* Seeded choice of which of n units go to validation (1 = val), see fdpo_text_load. */
void fdpo_data_split(size_t n, double val_fraction, uint64_t seed, unsigned char *is_val);

#ifdef __cplusplus
}
#endif

#endif
