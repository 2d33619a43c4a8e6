#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/flags.h"
#include "cli/lm_command.h"
#include "cli/train_flags.h"
#include "interrupts.h"

int lm_command_run(const lm_command *c, int argc, char **argv) {
    fdpo_train_opts o;
    c->defaults(&o);   /* the flags below then set what they name */
    fdpo_flag flags[TRAIN_FLAGS_MAX + 2];
    flag_list data;
    /* pretrain trains every weight: fdpo_trainer_open refuses LoRA for it, so --help does not offer it */
    static const char *const NOT_FOR_PRETRAIN[] = {"lora-r", "lora-alpha", "lora-dropout", "lora-targets", NULL};
    size_t n = train_flags_add_except(flags, 0, &o, strcmp(c->name, "pretrain") ? NULL : NOT_FOR_PRETRAIN);
    flags[n++] = (fdpo_flag){"eval-max-seqs", FLAG_INT, &o.eval_max_seqs, "0",
                             "validate on the first N held-out sequences only (0: all)", 0};
    flags[n++] = (fdpo_flag){"data", FLAG_LIST, &data, NULL, "input file (repeatable; positional FILEs work too)", 0};
    if (c->default_lr) train_flags_set_default(flags, n, "lr", c->default_lr);
    if (c->default_epochs) train_flags_set_default(flags, n, "epochs", c->default_epochs);
    int n_pos; char **pos = NULL;
    int rc = flags_parse(c->name, c->usage, flags, n, argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    rc = -1;
    fdpo_tokenizer *tok = NULL;
    fdpo_lm_data train = {0}, val = {0};
    if (train_flags_finish(flags, n, &o, c->name) || fdpo_train_opts_check(&o)) goto done;
    flags_prepend_list("data", &data, &pos, &n_pos);
    if (n_pos == 0) { fdpo_error("--data: no input files (usage: %s)", c->usage); goto done; }
    o.data = n_pos == 1 ? pos[0] : NULL;   /* named if a step is capped at the data set */
    for (int i = 0; i < n_pos; i++) {   /* each data file: not one that this run's replacing save removes */
        fdpo_train_opts one = o;
        one.data = pos[i];
        if (fdpo_train_out_inputs_check(&one, NULL)) goto done;
    }
    if (!(tok = fdpo_trainer_load_tokenizer(&o))) goto done;
    if (c->load(pos, (size_t)n_pos, tok, &o, &train, &val)) goto done;
    interrupts_set(INTERRUPT_STOP_TRAINER);
    rc = fdpo_lm_train(&o, c->name, tok, &train, &val);
done:
    fdpo_lm_data_free(&train); fdpo_lm_data_free(&val);
    fdpo_tokenizer_free(tok);
    free(pos);
    return rc;
}
