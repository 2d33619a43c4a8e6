/* Shared by fdpo generate, eval, score and pairs: the sampling flags, --out claims, and
 * stopping reward programs on SIGINT/SIGTERM (a checkpoint with its tokenizer is loaded by
 * the library's fdpo_eval_load_checkpoint). */
#ifndef FDPO_CLI_EVAL_COMMON_H
#define FDPO_CLI_EVAL_COMMON_H
#include "cli/flags.h"
#include "fdpo/eval.h"
#include "fdpo/gpt2.h"
#include "fdpo/tokenizer.h"
#include "fdpo/objectives.h"

/* Parses a comma-separated list of divergences ("rkl,fkl,alpha:0.5"); *divs is malloc'd. */
/* --chat-template NAME on a loaded tokenizer ("auto": its files'); a bad name is an error. */
int eval_set_chat_template(fdpo_tokenizer *tok, const char *name);
/* A given --chat-template that no prompt would use (none is a message list) and, for eval, no
 * --pairs: refused, as every flag without effect (it was accepted and changed nothing). */
int eval_chat_template_used(const fdpo_flag *flags, size_t n_flags, char *const *prompts, size_t n_prompts,
                            int other_use);
int eval_parse_divergences(const char *flag, const char *list, fdpo_divergence **divs, size_t *n);

/* The sampling flags of fdpo generate and fdpo eval: --n, --temperature, --top-k, --top-p,
 * --max-new-tokens, --stop, --seed, --batch-size. */
typedef struct {
    long n, top_k, max_new_tokens, seed, batch_size;
    double temperature, top_p;
    const char *stop;
} eval_sampling_flags;
#define EVAL_SAMPLING_NFLAGS 8
/* Appends the table at f + n (room for EVAL_SAMPLING_NFLAGS); n_default is --n's default.
 * Returns the new count. */
size_t eval_sampling_flags_add(fdpo_flag *f, size_t n, eval_sampling_flags *s, const char *n_default);
/* Range checks, then the library's sampling config. */
int eval_sampling_flags_finish(const eval_sampling_flags *s, fdpo_sample_config *c);

/* --out FILE of a command that writes it at its end: claimed from the start
 * (fdpo_out_file_claim; rank 0 only, the rank that writes), so a second run on the same file
 * is refused instead of replacing this one's output. NULL claims nothing; "-" is stdout where
 * stdout_ok (generate, score: JSONL streams) and an error elsewhere (eval, pairs made a file
 * named "-"), so `--out -` means one thing in every command.
 * eval_release_out is safe on anything eval_claim_out was given, claimed or not. inputs
 * ({flag, path} x n_inputs; a NULL path is skipped; the --config files and the base of a LoRA
 * adapter among them are added): path may not be an input file, nor a file in an input
 * checkpoint directory named as one its loader reads (existing or new), nor an existing data
 * file (.json, .jsonl, .csv) in a directory given under the flag "RUN_DIR" (report's). Nor ""
 * or a path ending in '/'. */
int eval_claim_out(const char *flag, const char *path, const char *const (*inputs)[2], size_t n_inputs, int stdout_ok);
void eval_release_out(const char *path);

/* eval_claim_out's inputs, built a flag at a time where their number varies (eval, report):
 * each of paths[0..n_paths) as one {flag, path} entry. The array grows; free(in->v) after. */
typedef struct { const char *(*v)[2]; size_t n, cap; fdpo_strv owned; } eval_inputs;
void eval_inputs_add(eval_inputs *in, const char *flag, const char *const *paths, size_t n_paths);
/* the files and directories reward spec reads (fdpo_reward_spec_inputs), under flag */
void eval_inputs_add_reward(eval_inputs *in, const char *flag, const char *spec);
void eval_inputs_free(eval_inputs *in);
#endif
