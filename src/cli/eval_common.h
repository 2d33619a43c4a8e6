/* Shared by fdpo generate, eval and score: loading a checkpoint with its tokenizer. */
#ifndef FDPO_CLI_EVAL_COMMON_H
#define FDPO_CLI_EVAL_COMMON_H
#include "fdpo/gpt2.h"
#include "fdpo/tokenizer.h"
#include "fdpo/objectives.h"

/* Loads DIR's model and tokenizer; the tokenizer's ids must fit the model's vocabulary.
 * flag names the flag in messages ("--model"). */
int eval_load_checkpoint(const char *flag, const char *dir, fdpo_gpt2 **model, fdpo_tokenizer **tok);
/* Parses a comma-separated list of divergences ("rkl,fkl,alpha:0.5"); *divs is malloc'd. */
int eval_parse_divergences(const char *flag, const char *list, fdpo_divergence **divs, size_t *n);
#endif
