/* libFuzzer: prompt files for generate/eval (fdpo_parse_prompts), JSONL or plain text. */
#include <stdint.h>
#include <stdlib.h>
#include "fdpo/eval.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char **prompts;
    size_t n;
    if (fdpo_parse_prompts("fuzz.jsonl", (const char *)data, size, &prompts, &n) == 0) {
        if (n == 0) abort(); /* an empty file is an error, never zero prompts */
        fdpo_free_strings(prompts, n);
    }
    return 0;
}
