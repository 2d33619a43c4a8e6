/* libFuzzer: --config INI files (flags_parse_config of src/cli/flags.c) over a table with
 * every flag type. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cli/flags.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    long n_layer = 0; double lr = 0; const char *out = NULL; int resume = 0;
    fdpo_flag flags[] = {
        {"n-layer", FLAG_INT, &n_layer, "4", "blocks", 0},
        {"lr", FLAG_FLOAT, &lr, "3e-4", "learning rate", 0},
        {"out", FLAG_STR, &out, NULL, "output", 0},
        {"resume", FLAG_BOOL, &resume, "0", "resume", 0},
    };
    char *text = malloc(size + 1); /* inih reads a C string */
    memcpy(text, data, size);
    text[size] = 0;
    flags_parse_config(flags, NFLAGS(flags), "fuzz.ini", text, size);
    flags_release_config(); /* else the kept values pile up over millions of runs */
    free(text);
    return 0;
}
