/* fdpo pretrain: next-token training on plain-text files (a thin layer over fdpo_lm_train). */
#include "cli/commands.h"
#include "cli/lm_command.h"

static int load_text(char *const *files, size_t n_files, const fdpo_tokenizer *tok,
                     const fdpo_train_opts *o, fdpo_lm_data *train, fdpo_lm_data *val) {
    return fdpo_text_load((const char *const *)files, n_files, tok, (size_t)o->seq_len, o->val_fraction,
                          (uint64_t)o->seed, train, val);
}

int cmd_pretrain(int argc, char **argv) {
    static const lm_command c = {
        "pretrain", "fdpo pretrain --out DIR --data FILE... [flags]   (UTF-8 text; <|endoftext|> separates documents)",
        NULL, NULL, fdpo_train_opts_default, load_text};
    return lm_command_run(&c, argc, argv);
}
