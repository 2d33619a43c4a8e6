/* libFuzzer: scored-sample JSONL, the input of `fdpo pairs` (fdpo_sample_recs_read, then
 * fdpo_make_pairs on what it accepted) and of `fdpo score` (fdpo_read_completions). The first
 * byte picks the reader (even: samples + pairs, odd: completions) and the pairs options; the
 * rest is the file, read back from an anonymous memory file (memfd) through /proc/self/fd. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "fdpo/eval.h"
#include "fdpo/pairs.h"

static void samples_and_pairs(const char *path, unsigned k) {
    fdpo_sample_rec *recs = NULL;
    size_t n = 0;
    if (fdpo_sample_recs_read(path, &recs, &n) != 0) return;
    for (size_t i = 0; i < n; i++) {
        if (!recs[i].prompt || !recs[i].completion || recs[i].line == 0) abort();
        if (recs[i].has_reward && !isfinite(recs[i].reward)) abort();
    }
    fdpo_pairs_config c = {.scale = (k & 2) ? 0.5 : 1.0, .max_per_prompt = (k >> 2) & 3, .skip_ties = (k >> 4) & 1, .seed = k};
    fdpo_pair *pairs = NULL;
    size_t n_pairs = 0;
    fdpo_pairs_skipped skipped;
    if (fdpo_make_pairs(recs, n, &c, &pairs, &n_pairs, &skipped) == 0) {
        /* two different samples of one prompt, a probability in [0, 1] */
        for (size_t i = 0; i < n_pairs; i++) {
            const fdpo_pair *p = &pairs[i];
            if (p->chosen >= n || p->rejected >= n || p->chosen == p->rejected) abort();
            if (strcmp(recs[p->chosen].prompt, recs[p->rejected].prompt)) abort();
            if (!(p->p_chosen >= 0 && p->p_chosen <= 1)) abort();
        }
        free(pairs);
    }
    fdpo_sample_recs_free(recs, n);
}

static void completions(const char *path) {
    char **prompts = NULL, **comps = NULL;
    size_t n = 0, *lines = NULL;
    if (fdpo_read_completions(path, &prompts, &comps, &lines, &n) != 0) return;
    /* each record's line: increasing, from 1 */
    for (size_t i = 0; i < n; i++)
        if (!prompts[i] || !comps[i] || lines[i] < 1 || (i && lines[i] <= lines[i - 1])) abort();
    fdpo_free_strings(prompts, n);
    fdpo_free_strings(comps, n);
    free(lines);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int fd = memfd_create("fuzz.jsonl", 0);
    if (fd < 0) abort();
    if (size > 1 && write(fd, data + 1, size - 1) != (ssize_t)(size - 1)) abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (data[0] & 1) completions(path);
    else samples_and_pairs(path, data[0]);
    close(fd);
    return 0;
}
