/* fdpo dpo: f-DPO preference optimisation (a thin layer over fdpo_dpo_train). */
#include <stdlib.h>
#include "cli/commands.h"
#include "cli/dpo_flags.h"
#include "fdpo/core.h"
#include "fdpo/dpo.h"
#include "interrupts.h"

int cmd_dpo(int argc, char **argv) {
    static const char usage[] =
        "fdpo dpo --model CKPT --data FILE.jsonl --out DIR [--divergence rkl|fkl|js|alpha:A] "
        "[--loss sigmoid|robust|hinge|ipo|simpo] [--beta B] [flags]";
    dpo_flags v;
    fdpo_flag flags[DPO_FLAGS_MAX];
    size_t n = dpo_flags_add(&v, flags, NULL, 0);
    int n_pos = 0;
    char **pos = NULL;
    int rc = flags_parse("dpo", usage, flags, n, argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    rc = -1;
    if (n_pos > 0) fdpo_error("unexpected argument '%s' (the data file goes in --data)", pos[0]);
    else if (!dpo_flags_finish(&v, flags, n)) {
        interrupts_set(INTERRUPT_STOP_TRAINER);
        rc = fdpo_dpo_train(&v.o);
    }
    free(pos);
    return rc;
}
