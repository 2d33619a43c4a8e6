/* libFuzzer: GPT-2 BPE encoding of arbitrary bytes (invalid UTF-8, long pre-tokens, the
 * literal <|endoftext|>) with one fixed tokenizer built in memory at start-up: the 256 byte
 * symbols, merges that form words, a long run of merges for "aaaa..." (the heap path for
 * pre-tokens past 64 bytes) and <|endoftext|>. Byte-level BPE is lossless, so the token bytes
 * must concatenate back to the input, and decoding valid UTF-8 must give it back. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/tokenizer.h"

/* GPT-2's byte -> code point table: printable bytes map to themselves, the 68 others to 256+ */
static unsigned byte_cp(int b) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    if (printable) return (unsigned)b;
    unsigned n = 0;
    for (int c = 0; c < b; c++)
        n += !((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF));
    return 256 + n;
}

static fdpo_tokenizer *build(void) {
    static const char *merges[][2] = {
        {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"\\u0120", "w"}, {"o", "r"}, {"\\u0120w", "or"},
        {"l", "d"}, {"\\u0120wor", "ld"}, {"\\u0120", "t"}, {"\\u0120t", "he"}, {"a", "a"}, {"aa", "aa"},
        {"aaaa", "aaaa"}, {"aaaaaaaa", "aaaaaaaa"}, {"aaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaa"}, {"'", "s"},
        {"\\u010a", "\\u010a"}, {"\\u0120", "\\u0120"}, {"\\u00c3", "\\u00a9"},
    };
    size_t nm = sizeof merges / sizeof merges[0], cap = 65536, k = 0;
    char *v = malloc(cap), *m = malloc(cap);
    k += (size_t)snprintf(v + k, cap - k, "{");
    for (int b = 0; b < 256; b++) {
        unsigned cp = byte_cp(b);
        if (cp == '"' || cp == '\\') k += (size_t)snprintf(v + k, cap - k, "\"\\%c\": %d, ", (char)cp, b);
        else k += (size_t)snprintf(v + k, cap - k, "\"\\u%04x\": %d, ", cp, b);
    }
    for (size_t i = 0; i < nm; i++) k += (size_t)snprintf(v + k, cap - k, "\"%s%s\": %zu, ", merges[i][0], merges[i][1], 256 + i);
    snprintf(v + k, cap - k, "\"<|endoftext|>\": %zu}", 256 + nm);
    /* merges.txt holds the symbols as UTF-8 text, not JSON escapes: decode the \uXXXX above */
    size_t mk = (size_t)snprintf(m, cap, "#version: 0.2\n");
    for (size_t i = 0; i < nm; i++)
        for (int part = 0; part < 2; part++) {
            for (const char *s = merges[i][part]; *s;) {
                if (s[0] == '\\' && s[1] == 'u') {
                    unsigned cp = (unsigned)strtoul((char[5]){s[2], s[3], s[4], s[5], 0}, NULL, 16);
                    m[mk++] = (char)(0xC0 | (cp >> 6)); m[mk++] = (char)(0x80 | (cp & 0x3F));
                    s += 6;
                } else m[mk++] = *s++;
            }
            m[mk++] = part ? '\n' : ' ';
        }
    fdpo_tokenizer *t = fdpo_tokenizer_bpe_parse("vocab.json", v, strlen(v), "merges.txt", m, mk);
    free(v); free(m);
    if (!t) { fprintf(stderr, "fuzz_bpe_encode: %s\n", fdpo_last_error()); abort(); }
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fdpo_tokenizer *t;
    if (!t) t = build();
    const char *text = (const char *)data;
    for (int special = 0; special < 2; special++) {
        int32_t *ids;
        size_t n;
        if (fdpo_tokenizer_encode(t, text, size, special, &ids, &n)) abort();
        size_t pos = 0;
        for (size_t i = 0; i < n; i++) {
            size_t bl;
            const char *b = fdpo_tokenizer_token_bytes(t, ids[i], &bl);
            if (pos + bl > size || memcmp(text + pos, b, bl)) abort();
            pos += bl;
        }
        if (pos != size) abort();
        size_t dl;
        char *d = fdpo_tokenizer_decode(t, ids, n, &dl);
        if (fdpo_utf8_valid(text, size) && (dl != size || memcmp(d, text, size))) abort();
        free(d);
        free(ids);
    }
    return 0;
}
