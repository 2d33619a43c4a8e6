/* libFuzzer: byte-level BPE tokenizer files. First byte % 4: 0 the rest is tokenizer.json
 * (optionally a line "=====", then the text to encode);
 * 2 tokenizer.json, a line "=====", then tokenizer_config.json; odd: vocab.json, a line
 * "=====", then merges.txt. A tokenizer that loads must round-trip text exactly (byte-level
 * BPE loses nothing; added tokens are their literal text): the tail after a second "====="
 * line, or a fixed sentence; so must a conversation rendered with its chat template. With
 * an NFC normalizer the tokens' bytes must be canonically equivalent to the text instead:
 * NFC(concatenated bytes) == NFC(text). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/chat.h"
#include "fdpo/core.h"
#include "fdpo/tokenizer.h"

static const char SEP[] = "\n=====\n";

/* the token bytes of ids[0..k) spell text[0..n): exactly, or up to NFC for a normalising
 * tokenizer (each stretch between added tokens was normalised on its own, and NFC is
 * compatible with concatenation) */
static int spells(const fdpo_tokenizer *t, const int32_t *ids, size_t k, const char *text, size_t n) {
    size_t total = 0;
    for (size_t i = 0; i < k; i++) { size_t bl; fdpo_tokenizer_token_bytes(t, ids[i], &bl); total += bl; }
    char *cat = malloc(total + 1);
    size_t pos = 0;
    for (size_t i = 0; i < k; i++) {
        size_t bl;
        const char *b = fdpo_tokenizer_token_bytes(t, ids[i], &bl);
        memcpy(cat + pos, b, bl);
        pos += bl;
    }
    int ok;
    if (!fdpo_tokenizer_normalizes(t)) {
        ok = total == n && memcmp(cat, text, n) == 0;
    } else {
        size_t la, lb;
        char *a = fdpo_tokenizer_normalize(t, cat, total, &la), *b = fdpo_tokenizer_normalize(t, text, n, &lb);
        ok = la == lb && memcmp(a, b, la) == 0;
        free(a); free(b);
    }
    free(cat);
    return ok;
}

static const char *find_sep(const char *s, size_t n) {
    return n >= sizeof SEP - 1 ? memmem(s, n, SEP, sizeof SEP - 1) : NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    const char *sample = "Hello world, it's 2024!\n\tcaf\xc3\xa9 <|endoftext|>  done";
    size_t sample_len = strlen(sample);
    fdpo_tokenizer *t;
    if (data[0] % 4 == 0) { /* tokenizer.json [, "=====", the text to encode] */
        const char *sep = find_sep(s, n);
        if (sep) {
            sample = sep + sizeof SEP - 1;
            sample_len = (size_t)(s + n - sample);
        }
        t = fdpo_tokenizer_bpe_parse_json("tokenizer.json", s, sep ? (size_t)(sep - s) : n);
    } else if (data[0] % 4 == 2) {
        const char *sep = find_sep(s, n);
        if (!sep) return 0;
        const char *c = sep + sizeof SEP - 1;
        t = fdpo_tokenizer_bpe_parse_json_config("tokenizer.json", s, (size_t)(sep - s), "tokenizer_config.json",
                                                 c, (size_t)(s + n - c));
    } else {
        const char *sep = find_sep(s, n);
        if (!sep) return 0;
        const char *m = sep + sizeof SEP - 1;
        size_t mlen = (size_t)(s + n - m);
        const char *sep2 = find_sep(m, mlen);
        if (sep2) {
            sample = sep2 + sizeof SEP - 1;
            sample_len = (size_t)(s + n - sample);
            mlen = (size_t)(sep2 - m);
        }
        t = fdpo_tokenizer_bpe_parse("vocab.json", s, (size_t)(sep - s), "merges.txt", m, mlen);
    }
    if (!t) return 0;
    for (int special = 0; special < 2; special++) {
        int32_t *ids = NULL;
        size_t k = 0;
        /* a file's pattern may fail to match within PCRE2's limits (catastrophic backtracking):
         * encoding then fails, naming the pattern (it used to encode the rest as one piece) */
        if (fdpo_tokenizer_encode(t, sample, sample_len, special, &ids, &k)) {
            if (!strstr(fdpo_last_error(), "pre_tokenizer regex '")) abort();
            continue;
        }
        for (size_t i = 0; i < k; i++) if (ids[i] < 0 || (size_t)ids[i] >= fdpo_tokenizer_vocab_size(t)) abort();
        /* raw token bytes concatenate back to the input */
        if (!spells(t, ids, k, sample, sample_len)) abort();
        size_t dl;
        free(fdpo_tokenizer_decode(t, ids, k, &dl));
        free(ids);
    }
    fdpo_chat chat;
    if (fdpo_chat_for(t, &chat) == 0) {
        char *content = fdpo_malloc(sample_len + 1); /* message content is a C string */
        memcpy(content, sample, sample_len);
        content[sample_len] = 0;
        const fdpo_chat_msg m[3] = {{"system", content, 0}, {"user", "hi <|im_end|>", 0}, {"assistant", " ok ", 0}};
        fdpo_chat_text text = {0};
        fdpo_chat_render(&chat, m, 3, FDPO_CHAT_START | FDPO_CHAT_GENERATION_PROMPT, &text);
        int32_t *ids = NULL;
        float *w = NULL;
        size_t k = 0;
        if (fdpo_chat_encode(t, &text, &ids, &w, &k)) abort();
        for (size_t i = 0; i < k; i++) if (w[i] != 0.0f && w[i] != 1.0f) abort();
        if (!spells(t, ids, k, text.text, text.n)) abort();
        free(ids); free(w);
        fdpo_chat_text_free(&text);
        fdpo_chat_free(&chat);
        free(content);
    }
    fdpo_tokenizer_free(t);
    return 0;
}
