/* The shared body of the next-token training commands (pretrain, sft): flags, tokenizer,
 * data, fdpo_lm_train. They differ only in usage text, defaults and how files become data. */
#ifndef FDPO_CLI_LM_COMMAND_H
#define FDPO_CLI_LM_COMMAND_H
#include "fdpo/data.h"
#include "fdpo/trainer.h"

/* Load the positional files into train/val; 0 on success. */
typedef int (*lm_data_loader)(char *const *files, size_t n_files, const fdpo_tokenizer *tok,
                              const fdpo_train_opts *o, fdpo_lm_data *train, fdpo_lm_data *val);
typedef struct {
    const char *name;          /* "pretrain" */
    const char *usage;
    const char *default_lr;    /* NULL: the shared table's */
    const char *default_epochs;
    void (*defaults)(fdpo_train_opts *o);   /* the library's: fdpo_train_opts_default, fdpo_sft_opts_default */
    lm_data_loader load;
} lm_command;

int lm_command_run(const lm_command *c, int argc, char **argv);
#endif
