/* Private tokenizer layout shared by the byte-level and BPE implementations. */
#ifndef FDPO_TOKENIZER_INTERNAL_H
#define FDPO_TOKENIZER_INTERNAL_H
#include "fdpo/tokenizer.h"

struct fdpo_bpe; /* src/text/bpe.c */

struct fdpo_tokenizer {
    fdpo_tokenizer_kind kind;
    size_t vocab_size;
    int32_t eot;            /* eos_token of tokenizer_config.json, else <|endoftext|> */
    int32_t bos, pad;       /* -1 when the files name none */
    char *chat_template_src; /* chat_template.jinja, else tokenizer_config.json "chat_template" (NULL: none) */
    char *chat_template_problem; /* why the files' template cannot be rendered (NULL: it can) */
    const char *chat_template_origin; /* "chat_template.jinja", or NULL: tokenizer_config.json */
    char *chat_template_name; /* --chat-template NAME (NULL: from the files) */
    struct fdpo_bpe *bpe;   /* FDPO_TOK_BPE only */
};

/* Implemented in bpe.c (GPT-2 BPE). */
fdpo_tokenizer *fdpo_bpe_load_dir(const char *dir); /* NULL + error if no BPE files / bad files */
int fdpo_bpe_dir_has_files(const char *dir);
int fdpo_bpe_save_dir(const fdpo_tokenizer *t, const char *dir);
void fdpo_bpe_free(struct fdpo_bpe *b);
/* fdpo_tokenizer_diff's BPE part: the first difference written into buf (may be NULL), 1; 0 for none */
int fdpo_bpe_diff(const struct fdpo_bpe *a, const struct fdpo_bpe *b, char *buf, size_t size);
int fdpo_bpe_encode(const fdpo_tokenizer *t, const char *text, size_t len, int allow_special,
                    int32_t **ids, size_t *n_ids);
int fdpo_bpe_encode_marked(const fdpo_tokenizer *t, const char *text, size_t len, int allow_special,
                           const unsigned char *mask, int32_t **ids, size_t *n_ids);
int fdpo_bpe_is_special(const fdpo_tokenizer *t, int32_t id);
int fdpo_bpe_normalizes(const fdpo_tokenizer *t); /* tokenizer.json normalizer NFC */
/* NFC (ICU) of each maximal valid UTF-8 run of text[0..n); invalid bytes pass through.
 * malloc'd, NUL-terminated (tokenizer.c). */
char *fdpo_text_nfc(const char *text, size_t n, size_t *out_len);
int32_t fdpo_bpe_token_id(const fdpo_tokenizer *t, const char *text);
/* GPT-2's byte-to-unicode alphabet: byte b's symbol as UTF-8 (1-2 bytes); and the GPT-2
 * pre-tokenisation pattern (PCRE2 syntax, UTF + UCP) the encoder uses. For the trainer. */
size_t fdpo_bpe_byte_symbol(int b, char out[4]);
const char *fdpo_bpe_gpt2_pattern(void);
const char *fdpo_bpe_token_bytes(const fdpo_tokenizer *t, int32_t id, size_t *len);

#endif
