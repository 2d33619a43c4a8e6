/* libFuzzer: preference JSONL (fdpo_pref_parse) with the byte tokenizer. The first byte
 * picks the options (truncation, bad-pair and long-pair policies); the rest is the file. */
#include <stdint.h>
#include <stdlib.h>
#include "fdpo/pref.h"
#include "fuzz_pref_options.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fdpo_tokenizer *tok;
    if (!tok) tok = fdpo_tokenizer_byte();
    if (size < 1) return 0;
    fdpo_pref_options opt = fuzz_pref_options(data[0]);
    fdpo_pref_set set;
    if (fdpo_pref_parse("fuzz.jsonl", (const char *)data + 1, size - 1, tok, &opt, &set) == 0) {
        for (size_t i = 0; i < set.n; i++) /* ids must be in the vocabulary */
            for (size_t j = 0; j < set.pairs[i].n_chosen; j++)
                if ((size_t)set.pairs[i].chosen[j] >= fdpo_tokenizer_vocab_size(tok)) abort();
        char *js = fdpo_pref_summary_json(&set.summary);
        free(js);
        fdpo_pref_free(&set);
    }
    return 0;
}
