/* Training flags shared by `fdpo pretrain`, `fdpo sft` and `fdpo dpo`.
 *
 *   fdpo_train_opts o; fdpo_train_opts_default(&o);          the library's defaults first:
 *   fdpo_flag flags[TRAIN_FLAGS_MAX + 8]; size_t n = 0;     the flags set what they name
 *   n = train_flags_add(flags, n, &o);                       the shared table
 *   train_flags_set_default(flags, n, "lr", "5e-7");         per-command defaults
 *   flags[n++] = (fdpo_flag){"beta", FLAG_FLOAT, &beta, "0.1", "..."};   own flags
 *   rc = flags_parse("dpo", usage, flags, n, argc, argv, &npos, &pos);
 *   rc = train_flags_finish(flags, n, &o, "dpo");   on --resume: unset flags take the saved values
 */
#ifndef FDPO_CLI_TRAIN_FLAGS_H
#define FDPO_CLI_TRAIN_FLAGS_H
#include <stddef.h>
#include "cli/flags.h"
#include "fdpo/trainer.h"

#define TRAIN_FLAGS_MAX 48
size_t train_flags_add(fdpo_flag *flags, size_t n, fdpo_train_opts *o);
int train_flags_set_default(fdpo_flag *flags, size_t n, const char *name, const char *def);
int train_flags_set_help(fdpo_flag *flags, size_t n, const char *name, const char *help);
/* The shared table without the flags named in except (a NULL-terminated list), appended at
 * f + n; returns the new count. */
size_t train_flags_add_except(fdpo_flag *f, size_t n, fdpo_train_opts *o, const char *const *except);
/* With --resume: OUT must hold a run of this kind (the trainer's: "dpo", "kto", ...;
 * another command's run is refused first), then every flag not given now takes the saved
 * run's value from OUT's training_state.json, and the log lists the values in force.
 * Validation of the options is the library's (fdpo_train_opts_check, fdpo_dpo_run_opts_check), as is refusing a changed
 * fixed setting. */
int train_flags_finish(fdpo_flag *flags, size_t n, fdpo_train_opts *o, const char *kind);
#endif
