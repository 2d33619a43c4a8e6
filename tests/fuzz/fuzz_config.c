/* libFuzzer: Hugging Face config.json (fdpo_config_parse). */
#include <stdint.h>
#include <stdlib.h>
#include "fdpo/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fdpo_gpt2_config c;
    if (fdpo_config_parse("config.json", (const char *)data, size, &c) == 0) {
        /* an accepted config is one the model can be built from */
        if (c.n_embd % c.n_head || c.vocab_size < 1 || c.n_layer < 1 || !(c.layer_norm_epsilon > 0)) abort();
    }
    return 0;
}
