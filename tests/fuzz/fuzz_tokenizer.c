/* libFuzzer: byte-level BPE tokenizer files. First byte % 4: 0 the rest is tokenizer.json;
 * 2 tokenizer.json, a line "=====", then tokenizer_config.json; odd: vocab.json, a line
 * "=====", then merges.txt. A tokenizer that loads must round-trip text exactly (byte-level
 * BPE loses nothing; added tokens are their literal text): the tail after a second "====="
 * line, or a fixed sentence; so must a conversation rendered with its chat template. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/chat.h"
#include "fdpo/core.h"
#include "fdpo/tokenizer.h"

static const char SEP[] = "\n=====\n";

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
    if (data[0] % 4 == 0) {
        t = fdpo_tokenizer_bpe_parse_json("tokenizer.json", s, n);
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
        if (fdpo_tokenizer_encode(t, sample, sample_len, special, &ids, &k)) abort();
        for (size_t i = 0; i < k; i++) if (ids[i] < 0 || (size_t)ids[i] >= fdpo_tokenizer_vocab_size(t)) abort();
        /* raw token bytes concatenate back to the input */
        size_t pos = 0;
        for (size_t i = 0; i < k; i++) {
            size_t bl;
            const char *b = fdpo_tokenizer_token_bytes(t, ids[i], &bl);
            if (pos + bl > sample_len || memcmp(sample + pos, b, bl)) abort();
            pos += bl;
        }
        if (pos != sample_len) abort();
        size_t dl;
        free(fdpo_tokenizer_decode(t, ids, k, &dl));
        free(ids);
    }
    fdpo_chat chat;
    if (fdpo_chat_for(t, &chat) == 0) {
        char *content = fdpo_malloc(sample_len + 1); /* message content is a C string */
        memcpy(content, sample, sample_len);
        content[sample_len] = 0;
        const fdpo_chat_msg m[3] = {{"system", content}, {"user", "hi <|im_end|>"}, {"assistant", " ok "}};
        fdpo_chat_text text = {0};
        fdpo_chat_render(&chat, m, 3, FDPO_CHAT_START | FDPO_CHAT_GENERATION_PROMPT, &text);
        int32_t *ids = NULL;
        float *w = NULL;
        size_t k = 0, pos = 0;
        if (fdpo_chat_encode(t, &text, &ids, &w, &k)) abort();
        for (size_t i = 0; i < k; i++) {
            size_t bl;
            const char *b = fdpo_tokenizer_token_bytes(t, ids[i], &bl);
            if (pos + bl > text.n || memcmp(text.text + pos, b, bl) || (w[i] != 0.0f && w[i] != 1.0f)) abort();
            pos += bl;
        }
        if (pos != text.n) abort();
        free(ids); free(w);
        fdpo_chat_text_free(&text);
        fdpo_chat_free(&chat);
        free(content);
    }
    fdpo_tokenizer_free(t);
    return 0;
}
