/* fdpo sft: supervised fine-tuning on JSONL (a thin layer over fdpo_lm_train). */
#include <stdio.h>
#include "cli/commands.h"
#include "cli/lm_command.h"

static int load_sft(char *const *files, size_t n_files, const fdpo_tokenizer *tok,
                    const fdpo_train_opts *o, fdpo_lm_data *train, fdpo_lm_data *val) {
    size_t dropped = 0;
    if (fdpo_sft_load((const char *const *)files, n_files, tok, (size_t)o->seq_len, o->val_fraction,
                      (uint64_t)o->seed, train, val, &dropped)) return -1;
    if (dropped && !o->quiet)
        fdpo_log(FDPO_LOG_INFO, "dropped %zu examples with no completion token within --seq-len %ld", dropped, o->seq_len);
    return 0;
}

int cmd_sft(int argc, char **argv) {
    static const lm_command c = {
        "sft", "fdpo sft --out DIR [--model CKPT] --data FILE.jsonl... [flags]   "
               "(lines {\"prompt\",\"completion\"}, {\"text\"} or {\"messages\"})",
        "2e-5", "3", fdpo_sft_opts_default, load_sft};
    return lm_command_run(&c, argc, argv);
}
