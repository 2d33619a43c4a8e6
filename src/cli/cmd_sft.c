/* fdpo sft: supervised fine-tuning on JSONL (a thin layer over fdpo_lm_train). */
#include <stdio.h>
#include "cli/commands.h"
#include "cli/lm_command.h"

static int load_sft(char *const *files, size_t n_files, const fdpo_tokenizer *tok,
                    const fdpo_train_opts *o, fdpo_lm_data *train, fdpo_lm_data *val) {
    fdpo_sft_stats st;
    if (fdpo_sft_load((const char *const *)files, n_files, tok, (size_t)o->seq_len, o->val_fraction,
                      (uint64_t)o->seed, train, val, &st)) return -1;
    /* said with --quiet too, which hides the progress line, not what became of the data (as dpo
     * and kto say it): a script's run lost examples without a word */
    if (st.dropped)
        fdpo_log(FDPO_LOG_INFO, "dropped %zu example%s with no completion token within --seq-len %ld (%s first)", st.dropped,
                 st.dropped == 1 ? "" : "s", o->seq_len, st.first_dropped);
    if (st.two_shapes)
        fdpo_log(FDPO_LOG_WARN, "%zu line%s with keys of two example shapes read as {\"messages\"}, else {\"prompt\", "
                 "\"completion\"}; the other keys are not read (%s first)", st.two_shapes, st.two_shapes == 1 ? "" : "s",
                 st.first_two_shapes);
    if (st.eos_text)   /* pre-formatted causal LM data: the model would learn to write the marker's text */
        fdpo_log(FDPO_LOG_WARN, "%zu %s the eos token's text in trained text (\"text\", \"completion\" or an "
                 "assistant message's \"content\"): it is trained as plain text, not as the token (every data string "
                 "is text; fdpo appends the eos itself), so the model learns to write it; remove it from the data "
                 "(%s first)", st.eos_text, st.eos_text == 1 ? "line holds" : "lines hold", st.first_eos_text);
    if (st.cut)   /* as dpo and kto count their truncated pairs */
        fdpo_log(FDPO_LOG_INFO, "%zu example%s longer than --seq-len %ld + 1 tokens cut at the end: the rest of the "
                 "example and its <|endoftext|> are not trained (%s first)", st.cut, st.cut == 1 ? "" : "s", o->seq_len,
                 st.first_cut);
    return 0;
}

int cmd_sft(int argc, char **argv) {
    static const lm_command c = {
        "sft", "fdpo sft --out DIR [--model CKPT] --data FILE.jsonl... [flags]   "
               "(lines {\"prompt\",\"completion\"}, {\"text\"} or {\"messages\"})",
        "2e-5", "3", fdpo_sft_opts_default, load_sft};
    return lm_command_run(&c, argc, argv);
}
