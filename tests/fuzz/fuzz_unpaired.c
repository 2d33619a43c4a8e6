/* libFuzzer: KTO's unpaired JSONL (fdpo_unpaired_load) with the byte tokenizer. The first byte
 * picks the options (truncation, bad-example and long-example policies), as fuzz_pref.c does;
 * the rest is the file. The reader takes a path, so the input goes into an anonymous memory
 * file (memfd) read back through /proc/self/fd: nothing touches the disk. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include "fdpo/kto.h"
#include "fuzz_pref_options.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fdpo_tokenizer *tok;
    if (!tok) tok = fdpo_tokenizer_byte();
    if (size < 1) return 0;
    fdpo_pref_options opt = fuzz_pref_options(data[0]);
    int fd = memfd_create("fuzz.jsonl", 0);
    if (fd < 0) abort();
    if (size > 1 && write(fd, data + 1, size - 1) != (ssize_t)(size - 1)) abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    fdpo_unpaired_set s;
    if (fdpo_unpaired_load(path, tok, &opt, &s) == 0) {
        /* labels are 0/1 and counted; ids are in the vocabulary; a kept example has a completion
         * and fits max_length */
        if (s.desirable + s.undesirable != s.n) abort();
        for (size_t i = 0; i < s.n; i++) {
            const fdpo_unpaired_example *e = &s.ex[i];
            if (e->label != 0 && e->label != 1) abort();
            if (e->n_completion == 0) abort();
            if (opt.max_length && e->n_prompt + e->n_completion > opt.max_length) abort();
            for (size_t j = 0; j < e->n_prompt; j++) if ((size_t)e->prompt[j] >= fdpo_tokenizer_vocab_size(tok)) abort();
            for (size_t j = 0; j < e->n_completion; j++)
                if ((size_t)e->completion[j] >= fdpo_tokenizer_vocab_size(tok)) abort();
        }
        fdpo_unpaired_free(&s);
    }
    close(fd);
    return 0;
}
