/* Training flags shared by `fdpo pretrain`, `fdpo sft` and `fdpo dpo`.
 *
 *   fdpo_train_opts o; fdpo_flag flags[TRAIN_FLAGS_MAX + 8]; size_t n = 0;
 *   n = train_flags_add(flags, n, &o);                       the shared table
 *   train_flags_set_default(flags, n, "lr", "5e-7");         per-command defaults
 *   flags[n++] = (fdpo_flag){"beta", FLAG_FLOAT, &beta, "0.1", "..."};   own flags
 *   rc = flags_parse("dpo", usage, flags, n, argc, argv, &npos, &pos);
 *   rc = train_flags_finish(flags, n, &o, fixed_names, n_fixed);  validate; on --resume
 *        take unset fixed flags from OUT's saved run and refuse changed ones
 *   train_flags_fixed_values(flags, n, fixed_names, n_fixed, values)  -> text for the state
 */
#ifndef FDPO_CLI_TRAIN_FLAGS_H
#define FDPO_CLI_TRAIN_FLAGS_H
#include <stddef.h>
#include "cli/flags.h"
#include "fdpo/trainer.h"

#define TRAIN_FLAGS_MAX 40
size_t train_flags_add(fdpo_flag *flags, size_t n, fdpo_train_opts *o);
int train_flags_set_default(fdpo_flag *flags, size_t n, const char *name, const char *def);
/* Flags whose values shape the result; a resumed run must keep them (names without --). */
extern const char *const TRAIN_FIXED_FLAGS[];
extern const size_t TRAIN_N_FIXED_FLAGS;
/* Validate the shared options (positive sizes, schedule name, ranges); error names the flag.
 * With --resume, for each name in fixed: an unset flag takes the saved value, a set flag
 * that differs from it is an error naming the flag. */
int train_flags_finish(fdpo_flag *flags, size_t n, fdpo_train_opts *o,
                       const char *const *fixed, size_t n_fixed);
/* Text of each named flag's current value (malloc'd; free with fdpo_strv_free). */
char **train_flags_values(const fdpo_flag *flags, size_t n, const char *const *names, size_t n_names);
/* SIGINT / SIGTERM -> fdpo_trainer_request_stop(): the run saves after the current step
 * and exits with "interrupted ..."; a second signal kills as usual (SA_RESETHAND). */
void train_catch_interrupts(void);
#endif
