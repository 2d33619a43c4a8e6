/* libFuzzer: SFT JSONL (fdpo_sft_parse) with the byte tokenizer. */
#include <stdint.h>
#include <stdlib.h>
#include "fdpo/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fdpo_tokenizer *tok;
    if (!tok) tok = fdpo_tokenizer_byte();
    fdpo_lm_data train, val;
    fdpo_sft_stats st;
    if (fdpo_sft_parse("fuzz.jsonl", (const char *)data, size, tok, 32, 0.25, 1, &train, &val, &st) == 0) {
        for (size_t i = 0; i < train.n_seq; i++) /* every sequence lies inside the buffer */
            if (train.start[i] + train.len[i] > train.n_tokens || train.len[i] < 2 || train.len[i] > 33) abort();
        fdpo_lm_data_free(&train);
        fdpo_lm_data_free(&val);
    }
    return 0;
}
