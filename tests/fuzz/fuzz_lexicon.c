/* libFuzzer: the word-list reward specs, lexicon:FILE ("word weight" per line) and words:FILE
 * (one word per line) (fdpo_reward_create), then the reward of a text under the list. Input:
 * first byte even = lexicon, odd = words; then the list file, a line "=====", and the text to
 * score (all list when there is no separator). The list goes into an anonymous memory file
 * (memfd) named through /proc/self/fd: nothing touches the disk. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "fdpo/eval.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *body = (const char *)data + 1;
    size_t n = size - 1, list_len = n;
    const char *text = "", *sep = memmem(body, n, "\n=====\n", 7);
    char *text_copy = NULL;
    if (sep) {
        list_len = (size_t)(sep - body) + 1;
        size_t tl = n - list_len - 6;
        text_copy = malloc(tl + 1);
        memcpy(text_copy, sep + 7, tl);
        text_copy[tl] = 0;
        text = text_copy;
    }
    int fd = memfd_create("fuzz.txt", 0);
    if (fd < 0) abort();
    if (list_len && write(fd, body, list_len) != (ssize_t)list_len) abort();
    char spec[80];
    snprintf(spec, sizeof spec, "%s:/proc/self/fd/%d", (data[0] & 1) ? "words" : "lexicon", fd);
    fdpo_reward_options o = {.timeout_s = 1};
    fdpo_reward *r = fdpo_reward_create(spec, &o);
    if (r) {
        char *prompts[1] = {(char *)"p"}, *comps[1] = {(char *)text};
        size_t n_tokens[1] = {strlen(text)};
        double out[1];
        if (fdpo_reward_score(r, 1, prompts, comps, n_tokens, out) == 0) {
            if (!isfinite(out[0])) abort();
            if ((data[0] & 1) && !(out[0] >= 0 && out[0] <= 1)) abort();   /* a fraction of words */
        }
        size_t known, total;
        if (fdpo_reward_word_counts(r, text, &known, &total) == 0 && known > total) abort();
        fdpo_reward_free(r);
    }
    free(text_copy);
    close(fd);
    return 0;
}
