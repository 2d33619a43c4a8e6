/* Declarative command-line flags shared by every fdpo command.
 *
 *   long n_layer; double lr; const char *model; flag_list data; int resume;
 *   fdpo_flag flags[] = {
 *     {"n-layer", FLAG_INT,   &n_layer, "4",    "transformer blocks"},
 *     {"lr",      FLAG_FLOAT, &lr,      "3e-4", "peak learning rate"},
 *     {"model",   FLAG_STR,   &model,   NULL,   "checkpoint to start from"},
 *     {"data",    FLAG_LIST,  &data,    NULL,   "input files (repeatable)"},
 *     {"resume",  FLAG_BOOL,  &resume,  "0",    "continue from OUT's training state"},
 *   };
 *   int rc = flags_parse("pretrain", "fdpo pretrain [flags] FILE...", flags, N, argc, argv, &npos, &pos);
 *
 * Defaults are applied first, then `--config FILE` (an INI file, keys = flag names with
 * '-' or '_', optional [section] headers ignored), then the command line, so flags win over
 * the file. Unknown flags and config keys are errors that name them and suggest the nearest
 * known name ("unknown flag --lrr (did you mean --lr?)"). `--help` prints every flag with its
 * default and returns FLAGS_HELP (callers exit 0).
 *
 * One vocabulary across commands (docs/cli.md): --model, --ref, --data, --out, --n,
 * --batch-size, --seed (default FLAGS_DEFAULT_SEED), --threads. The old spellings (--policy,
 * --init, --prompts, --samples, --input, --k, --batch, --val-fraction, online's --pairs) live on in one alias table in
 * flags.c: in a command that has the new flag and no flag of the old name, the old name
 * still works, on the command line and as a config key, and logs "--policy is deprecated;
 * use --model". A one-letter alias also works with one dash (-k). */
#ifndef FDPO_CLI_FLAGS_H
#define FDPO_CLI_FLAGS_H
#include <stddef.h>
#include "fdpo/core.h"   /* FDPO_DEFAULT_SEED */

/* The one default --seed of every command: the library's (core.h). */
#define FLAGS_STR_(x) #x
#define FLAGS_STR(x) FLAGS_STR_(x)
#define FLAGS_DEFAULT_SEED FLAGS_STR(FDPO_DEFAULT_SEED)

typedef enum { FLAG_INT, FLAG_COUNT, FLAG_FLOAT, FLAG_STR, FLAG_BOOL, FLAG_LIST } flag_type;
/* FLAG_COUNT: a whole number >= 0 into a long, for the flags whose library field is unsigned
 * (size_t counts, a uint64_t seed): the sign is the one thing the library cannot see, so the
 * parser refuses it ("--top-k: must not be negative (got -1)"); ranges are the library's checks. */
/* FLAG_LIST: a repeatable string flag; every value in order. Values from the command line
 * replace those from --config. The storage lives as long as the process. */
typedef struct { const char **v; size_t n; } flag_list;
typedef struct {
    const char *name;
    flag_type type;
    void *dest;        /* long* (INT, COUNT), double*, const char**, int*, flag_list* */
    const char *def;   /* default as text; NULL = unset (STR -> NULL, LIST -> empty) */
    const char *help;
    int set;           /* filled by the parser: 1 if given on the command line or config */
} fdpo_flag;

#define FLAGS_OK 0
#define FLAGS_HELP 1
#define FLAGS_ERROR (-1)
int flags_parse(const char *cmd, const char *usage, fdpo_flag *flags, size_t n_flags,
                int argc, char **argv, int *n_pos, char ***pos);
/* A check for the next flags_parse to run once it has found no --help or -h at a flag
 * position (after pass 1, before the flags' values are read): main defers the environment's
 * check (fdpo_model_env_check) there when an argv item reads -h or --help, which may be a
 * flag's value ("--stop -h") and not a request for help. NULL: none. */
void flags_defer_check(int (*check)(void));
/* Whether flag `name` is given to command cmd (table flags): at a flag position of argv
 * ("--name" or "--name=...", not another flag's value: flags_parse's reading) or as a key of
 * one of its --config files. For a command whose flags depend on one flag (lab check
 * --method), asked before flags_parse; a file it cannot read says no (flags_parse says why). */
int flags_given(const char *cmd, fdpo_flag *flags, size_t n_flags, int argc, char **argv, const char *name);
/* The --config files of the last flags_parse, in order (an output must not replace one:
 * eval_claim_out). */
size_t flags_config_files(const char *const **files);
/* Apply the INI text[0..len) of a --config file (name is used in messages: "NAME:LINE: ...").
 * A NUL byte, a line inih would split (INI_MAX_LINE), an indented line (inih's
 * continuation of the value above) and a ';' after a blank in a value (inih's inline comment)
 * are refused with their line. */
int flags_parse_config(fdpo_flag *flags, size_t n_flags, const char *name, const char *text, size_t len);
/* Free the config values kept for the process lifetime (string flags set from a config
 * point into them): for a long-lived caller such as the fuzz harness. */
void flags_release_config(void);
/* The line of the --config file (*file) that set flag's value in the last flags_parse (a
 * repeatable flag's last value), or 0 when it was not set by a file (a default, the command
 * line, a --resume's saved value). */
int flags_config_line(const char *flag, const char **file);
/* An error message "--NAME: ..." (a library check's, naming the flag) whose flag's value came
 * from a --config file, with " (from FILE:LINE)" appended in buf ("--A/--B: ...": each flag
 * a file gave, " (--A from FILE:LINE, ...)"), or from a run's saved settings (flags_note_saved),
 * with " (saved in FILE, restored by --resume)"; otherwise msg itself. */
const char *flags_error_origin(const char *msg, char *buf, size_t n);
/* flag's value (value: its text for a text flag, else NULL) was restored by --resume from the
 * saved settings in state_file: errors about it say so (flags_error_origin) */
void flags_note_saved(const char *flag, const char *state_file, const char *value);
void flags_print_help(const char *cmd, const char *usage, const fdpo_flag *flags, size_t n_flags);
/* Was this flag given explicitly? */
int flags_was_set(const fdpo_flag *flags, size_t n_flags, const char *name);
/* For each flag of flags[0..n) not given whose value lives inside the struct at base (size
 * bytes): that field of to (a struct of the same type) takes the same field of defaults. A
 * command whose stages are another command's runs (sacpo's online stages are fdpo online)
 * gives them that command's defaults, the library's, where a flag was not given. */
void flags_unset_from(const fdpo_flag *flags, size_t n, const void *base, size_t size, void *to, const void *defaults);
/* The first of names[0..k) given on the command line or in --config, or NULL: the one a
 * refusal of flags the run would not use names. */
const char *flags_first_set(const fdpo_flag *flags, size_t n_flags, const char *const *names, size_t k);
#define FLAGS_NAMES(a) (a), (sizeof(a) / sizeof((a)[0]))
/* Puts a list flag's values (--data A --data B) in front of the positional arguments *pos
 * (as returned by flags_parse), so commands that take FILE... accept --data FILE too; values
 * from a --config file are dropped when there are positional FILEs (the command line's
 * values replace a file's, as --data given there does). */
void flags_prepend_list(const char *flag, const flag_list *l, char ***pos, int *n_pos);
/* Did a --config file give this flag's value (and the command line not)? */
int flags_from_config(const char *flag);
/* "0.1,0.5,2" -> *count finite doubles (malloc'd). sign: FLAGS_LIST_ANY, FLAGS_LIST_POSITIVE
 * (> 0), FLAGS_LIST_NONNEG (>= 0) or FLAGS_LIST_COUNT (whole numbers in [1, 2^53]: each
 * converts exactly to a size_t; the library checks its own range), or'd with
 * FLAGS_LIST_DISTINCT for a list whose values key result rows (the lab's --betas): a value given
 * twice, as numbers (0.1 and 0.10), is refused ("--betas: 0.1 given twice in '0.1,0.10'"), not
 * run twice under one key. Errors name the flag and the item. */
enum { FLAGS_LIST_ANY, FLAGS_LIST_POSITIVE, FLAGS_LIST_NONNEG, FLAGS_LIST_COUNT, FLAGS_LIST_DISTINCT = 16 };
int flags_number_list(const char *flag, const char *spec, int sign, double **out, size_t *count);
/* A comma list's empty items (",a", "a,,b", "a,"), which strtok skips: an error naming the flag
 * ("--method: empty item in 'dpo,,rloo'"), else 0. flags_number_list's own check. */
int flags_list_empty_item(const char *flag, const char *spec);
#define NFLAGS(a) (sizeof(a) / sizeof((a)[0]))

#endif
