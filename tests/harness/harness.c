/* fdpo-harness: a test-only binary that the Python tests drive (model parity, gradients,
 * objectives). Errors print "fdpo-harness SUB: message" and exit 1. */
#include <stdio.h>
#include <string.h>
#include "fdpo/core.h"
#include "harness.h"

/* one declaration + one table row per subcommand (keep alphabetical) */

static const struct { const char *name; harness_fn fn; } SUBS[] = {
    {NULL, NULL},
};

int main(int argc, char **argv) {
    if (argc >= 2) {
        for (size_t i = 0; SUBS[i].name; i++) {
            if (!strcmp(argv[1], SUBS[i].name)) {
                int rc = SUBS[i].fn(argc - 1, argv + 1);
                if (rc) { fprintf(stderr, "fdpo-harness %s: %s\n", argv[1], fdpo_last_error()); return 1; }
                return 0;
            }
        }
    }
    fprintf(stderr, "usage: fdpo-harness SUBCOMMAND ...; subcommands:");
    for (size_t i = 0; SUBS[i].name; i++) fprintf(stderr, " %s", SUBS[i].name);
    fprintf(stderr, "\n");
    return 2;
}
