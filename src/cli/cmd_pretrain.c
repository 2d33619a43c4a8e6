/* fdpo pretrain: next-token training on plain-text files (a thin layer over fdpo_lm_train). */
#include <stdio.h>
#include <stdlib.h>
#include "cli/commands.h"
#include "cli/train_flags.h"
#include "fdpo/data.h"
#include "fdpo/trainer.h"

int cmd_pretrain(int argc, char **argv) {
    static const char usage[] = "fdpo pretrain --out DIR [flags] FILE...   (UTF-8 text; <|endoftext|> separates documents)";
    fdpo_train_opts o;
    fdpo_flag flags[TRAIN_FLAGS_MAX + 1];
    size_t n = train_flags_add(flags, 0, &o);
    flags[n++] = (fdpo_flag){"eval-max-seqs", FLAG_INT, &o.eval_max_seqs, "0",
                             "validate on the first N held-out sequences only (0: all)", 0};
    int n_pos; char **pos = NULL;
    int rc = flags_parse("pretrain", usage, flags, n, argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    rc = -1;
    fdpo_tokenizer *tok = NULL;
    fdpo_lm_data train = {0}, val = {0};
    char **fixed_vals = NULL;
    if (train_flags_finish(flags, n, &o, TRAIN_FIXED_FLAGS, TRAIN_N_FIXED_FLAGS)) goto done;
    if (o.eval_max_seqs < 0) { fdpo_error("--eval-max-seqs: %ld must be >= 0", o.eval_max_seqs); goto done; }
    if (n_pos == 0) { fdpo_error("no input files (usage: %s)", usage); goto done; }
    if (!(tok = fdpo_trainer_load_tokenizer(&o))) goto done;
    if (fdpo_text_load((const char *const *)pos, (size_t)n_pos, tok, (size_t)o.seq_len, o.val_fraction,
                       (uint64_t)o.seed, &train, &val)) goto done;
    fixed_vals = train_flags_values(flags, n, TRAIN_FIXED_FLAGS, TRAIN_N_FIXED_FLAGS);
    train_catch_interrupts();
    rc = fdpo_lm_train(&o, "pretrain", tok, &train, &val, TRAIN_N_FIXED_FLAGS, TRAIN_FIXED_FLAGS,
                       (const char *const *)fixed_vals);
done:
    fdpo_strv_free(fixed_vals, TRAIN_N_FIXED_FLAGS);
    fdpo_lm_data_free(&train); fdpo_lm_data_free(&val);
    fdpo_tokenizer_free(tok);
    free(pos);
    return rc;
}
