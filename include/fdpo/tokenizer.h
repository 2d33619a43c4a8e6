/* Tokenizers: byte-level (256 bytes + <|endoftext|>) and GPT-2 byte-level BPE.
 * A checkpoint directory carries its tokenizer; fdpo_tokenizer_load_dir picks the kind:
 *   vocab.json + merges.txt, encoder.json + vocab.bpe, or tokenizer.json  -> GPT-2 BPE
 *   fdpo_tokenizer.json {"type": "byte"}                                   -> byte-level */
#ifndef FDPO_TOKENIZER_H
#define FDPO_TOKENIZER_H
#include <stddef.h>
#include <stdint.h>

typedef struct fdpo_tokenizer fdpo_tokenizer;
typedef enum { FDPO_TOK_BYTE, FDPO_TOK_BPE } fdpo_tokenizer_kind;

fdpo_tokenizer *fdpo_tokenizer_byte(void);
fdpo_tokenizer *fdpo_tokenizer_load_dir(const char *dir);
/* GPT-2 BPE from file contents in memory (the names are used in messages): vocab.json +
 * merges.txt (or encoder.json + vocab.bpe), or tokenizer.json. */
fdpo_tokenizer *fdpo_tokenizer_bpe_parse(const char *vocab_name, const char *vocab_json, size_t vocab_len,
                                         const char *merges_name, const char *merges_txt, size_t merges_len);
fdpo_tokenizer *fdpo_tokenizer_bpe_parse_json(const char *name, const char *tokenizer_json, size_t len);
int fdpo_tokenizer_save_dir(const fdpo_tokenizer *t, const char *dir); /* atomic files */
void fdpo_tokenizer_free(fdpo_tokenizer *t);
fdpo_tokenizer_kind fdpo_tokenizer_kind_of(const fdpo_tokenizer *t);
size_t fdpo_tokenizer_vocab_size(const fdpo_tokenizer *t);
int32_t fdpo_tokenizer_eot(const fdpo_tokenizer *t);   /* <|endoftext|>: 256 byte-level, 50256 GPT-2 */

/* Encode len bytes of text. With allow_special, the literal "<|endoftext|>" becomes the
 * EOT id; otherwise it is encoded as ordinary text. *ids is malloc'd. */
int fdpo_tokenizer_encode(const fdpo_tokenizer *t, const char *text, size_t len,
                          int allow_special, int32_t **ids, size_t *n_ids);
/* Decode to a malloc'd NUL-terminated string; *len gets its length (may be NULL). Byte
 * sequences that are not valid UTF-8 become U+FFFD, as Hugging Face's decode does. */
char *fdpo_tokenizer_decode(const fdpo_tokenizer *t, const int32_t *ids, size_t n, size_t *len);
/* Raw bytes of one token (no UTF-8 repair), for streaming output. */
const char *fdpo_tokenizer_token_bytes(const fdpo_tokenizer *t, int32_t id, size_t *len);

/* ---- BPE training (src/text/bpe_train.c, docs/tokenizer.md#training) ----
 * Byte-level BPE with GPT-2's pre-tokenisation: ids 0..255 are the byte symbols in GPT-2's
 * order, then the merges as learnt, then "<|endoftext|>" (id vocab_size - 1 when the corpus
 * allows that many merges). Deterministic: ties in pair count go to the bytewise-smallest
 * (left, right) pair. */
typedef struct {
    size_t vocab_size;     /* >= 257 */
    size_t min_frequency;  /* stop when the best pair occurs fewer times (>= 1) */
} fdpo_bpe_train_opts;
typedef struct {
    char **tokens; size_t *token_len; size_t n_tokens; /* token bytes (the last: "<|endoftext|>") */
    int32_t (*merges)[2]; size_t n_merges;              /* merge i made token 256 + i */
    size_t n_words;                                     /* distinct pre-tokens seen */
} fdpo_bpe_trained;
int fdpo_bpe_train_opts_check(const fdpo_bpe_train_opts *o);
int fdpo_bpe_train(const char *const *texts, const size_t *lens, size_t n_texts, const fdpo_bpe_train_opts *o,
                   fdpo_bpe_trained *out);
/* vocab.json + merges.txt (Hugging Face GPT2Tokenizer files), each written atomically. */
int fdpo_bpe_trained_save(const fdpo_bpe_trained *t, const char *dir);
void fdpo_bpe_trained_free(fdpo_bpe_trained *t);

#endif
