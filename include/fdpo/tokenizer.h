/* Tokenizers: byte-level (256 bytes + <|endoftext|>) and byte-level BPE (GPT-2, Llama-3,
 * Qwen2, SmolLM2). A checkpoint directory carries its tokenizer; fdpo_tokenizer_load_dir
 * picks the kind:
 *   tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe  -> byte-level BPE
 *     (tokenizer.json first; tokenizer_config.json beside them gives bos/eos/pad, extra
 *     added tokens and the chat template)
 *   fdpo_tokenizer.json {"type": "byte"}                                   -> byte-level
 * docs/tokenizer.md lists what of tokenizer.json is read and what is refused. */
#ifndef FDPO_TOKENIZER_H
#define FDPO_TOKENIZER_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fdpo_tokenizer fdpo_tokenizer;
typedef enum { FDPO_TOK_BYTE, FDPO_TOK_BPE } fdpo_tokenizer_kind;

fdpo_tokenizer *fdpo_tokenizer_byte(void);
fdpo_tokenizer *fdpo_tokenizer_load_dir(const char *dir);
/* 0 when no save's set journal (DIR/.fdpo-set.tmp.PID) is in DIR, else -1 with an error naming
 * it: what clears it, or, for a journal this build cannot read (which no cleanup touches), which
 * files to put back and remove by hand. fdpo_tokenizer_load_dir refuses such a DIR; a save into
 * it would fail its reload. A DIR that cannot be opened: 0. */
int fdpo_tokenizer_dir_settled(const char *dir);
/* 1 if DIR holds any file fdpo_tokenizer_load_dir reads a tokenizer from. */
int fdpo_tokenizer_dir_has_files(const char *dir);
/* GPT-2 BPE from file contents in memory (the names are used in messages): vocab.json +
 * merges.txt (or encoder.json + vocab.bpe), or tokenizer.json. */
fdpo_tokenizer *fdpo_tokenizer_bpe_parse(const char *vocab_name, const char *vocab_json, size_t vocab_len,
                                         const char *merges_name, const char *merges_txt, size_t merges_len);
fdpo_tokenizer *fdpo_tokenizer_bpe_parse_json(const char *name, const char *tokenizer_json, size_t len);
/* The same with a tokenizer_config.json (config NULL: none). */
fdpo_tokenizer *fdpo_tokenizer_bpe_parse_json_config(const char *name, const char *tokenizer_json, size_t len,
                                                     const char *config_name, const char *config, size_t config_len);
fdpo_tokenizer *fdpo_tokenizer_bpe_parse_config(const char *vocab_name, const char *vocab_json, size_t vocab_len,
                                                const char *merges_name, const char *merges_txt, size_t merges_len,
                                                const char *config_name, const char *config, size_t config_len);
int fdpo_tokenizer_save_dir(const fdpo_tokenizer *t, const char *dir); /* atomic files */
void fdpo_tokenizer_free(fdpo_tokenizer *t);
fdpo_tokenizer_kind fdpo_tokenizer_kind_of(const fdpo_tokenizer *t);
size_t fdpo_tokenizer_vocab_size(const fdpo_tokenizer *t);
/* 1 if a and b turn every text into the same ids and back: same kind and vocabulary (every
 * token's bytes), same special tokens and eos/bos (not pad), and for BPE the same merges in the same
 * order, pre-tokenisation pattern, digit splitting and normalisation. Two models scored or
 * compared token by token (score/eval's --ref) need this; the vocabulary's size alone let a
 * byte-level model be scored against a 257-token BPE one. The chat template is not compared. */
int fdpo_tokenizer_same(const fdpo_tokenizer *a, const fdpo_tokenizer *b);
/* Why fdpo_tokenizer_same(a, b) is 0: the first difference, in the style of
 * fdpo_gpt2_config_diff ("A vs B"), written into buf (NULL: not written) and 1; 0 when they
 * are the same. Checked in this order: the kind, vocab_size, the eos/bos ids ("eos id 100
 * vs 299"; not pad's, which changes no ids: fdpo never pads with it, and a reward model pools
 * at config.json's pad_token_id), each token's bytes or special flag ("token 200 'ab' vs 'ba'"), the merges by rank
 * from 0 ("merges[4] 'h e' vs 'e r'") and their number, the added tokens, the pre-tokenizer
 * pattern, the Digits pre-tokenizer, NFC normalisation and ignore_merges. */
int fdpo_tokenizer_diff(const fdpo_tokenizer *a, const fdpo_tokenizer *b, char *buf, size_t size);
/* End of sequence: tokenizer_config.json's eos_token, else <|endoftext|> (256 byte-level,
 * 50256 GPT-2). Completions end with it and generation stops at it; it separates
 * pretraining documents and starts an empty prompt (one token for all, so that what is
 * trained on is what is sampled). */
int32_t fdpo_tokenizer_eot(const fdpo_tokenizer *t);
int32_t fdpo_tokenizer_bos(const fdpo_tokenizer *t);   /* -1: none */
int32_t fdpo_tokenizer_pad(const fdpo_tokenizer *t);   /* -1: none */
/* 1 if id is a special token (added with "special": true; <|endoftext|> when the files
 * list no added tokens). */
int fdpo_tokenizer_is_special(const fdpo_tokenizer *t, int32_t id);
/* The id of a token given its text (an added token's content, or a vocabulary string in
 * the byte alphabet); -1 if none. */
int32_t fdpo_tokenizer_token_id(const fdpo_tokenizer *t, const char *text);

/* Encode len bytes of text. Added tokens that are not special are always matched in the
 * text (longest first); special ones ("<|endoftext|>", "<|im_start|>", ...) only with
 * allow_special, else they are ordinary text. *ids is malloc'd. */
int fdpo_tokenizer_encode(const fdpo_tokenizer *t, const char *text, size_t len,
                          int allow_special, int32_t **ids, size_t *n_ids);
/* The same where special tokens are matched only when they start at a byte i with
 * mask[i] != 0 (chat templates: the template's markers, not the messages' content). */
int fdpo_tokenizer_encode_masked(const fdpo_tokenizer *t, const char *text, size_t len,
                                 const unsigned char *mask, int32_t **ids, size_t *n_ids);
/* 1 if encoding normalises text first: a tokenizer.json whose normalizer is NFC (Qwen2).
 * Each stretch between added tokens is NFC-normalised (ICU) before pre-tokenisation, as
 * Hugging Face does; bytes that are not valid UTF-8 pass through unchanged. */
int fdpo_tokenizer_normalizes(const fdpo_tokenizer *t);
/* text[0..len) as the tokenizer's normalizer leaves it (NFC, or a copy); malloc'd,
 * NUL-terminated, *out_len bytes. */
char *fdpo_tokenizer_normalize(const fdpo_tokenizer *t, const char *text, size_t len, size_t *out_len);
/* Decode to a malloc'd NUL-terminated string; *len gets its length (may be NULL). Byte
 * sequences that are not valid UTF-8 become U+FFFD, as Hugging Face's decode does. */
char *fdpo_tokenizer_decode(const fdpo_tokenizer *t, const int32_t *ids, size_t n, size_t *len);
/* The same, leaving out special tokens when skip_special (Hugging Face's
 * skip_special_tokens=True). */
char *fdpo_tokenizer_decode_ex(const fdpo_tokenizer *t, const int32_t *ids, size_t n, int skip_special, size_t *len);
/* The chat template (include/fdpo/chat.h): NULL/"auto" = tokenizer_config.json's
 * chat_template, else a built-in's name (checked when rendering: fdpo_chat_for). */
void fdpo_tokenizer_set_chat_template(fdpo_tokenizer *t, const char *name);
/* The files' chat template source (chat_template.jinja, else tokenizer_config.json's
 * chat_template; NULL: none); *name the name set (or NULL). */
const char *fdpo_tokenizer_chat_template(const fdpo_tokenizer *t, const char **name);
/* Where that source is, for messages ("chat_template.jinja" or "tokenizer_config.json:
 * chat_template"); *problem why the files' template cannot be rendered (a list of templates
 * with none named "default"), or NULL. */
const char *fdpo_tokenizer_chat_template_origin(const fdpo_tokenizer *t, const char **problem);
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
/* vocab.json + merges.txt + tokenizer_config.json (Hugging Face GPT2Tokenizer files, the
 * config naming the class and <|endoftext|> as bos/eos/unk), replaced together atomically. */
int fdpo_bpe_trained_save(const fdpo_bpe_trained *t, const char *dir);
void fdpo_bpe_trained_free(fdpo_bpe_trained *t);

#ifdef __cplusplus
}
#endif

#endif
