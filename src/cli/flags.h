/* Declarative command-line flags shared by every fdpo command.
 *
 *   long n_layer; double lr; const char *out; int resume;
 *   fdpo_flag flags[] = {
 *     {"n-layer", FLAG_INT,   &n_layer, "4",    "transformer blocks"},
 *     {"lr",      FLAG_FLOAT, &lr,      "3e-4", "peak learning rate"},
 *     {"out",     FLAG_STR,   &out,     NULL,   "output checkpoint directory (required)"},
 *     {"resume",  FLAG_BOOL,  &resume,  "0",    "continue from OUT's training state"},
 *   };
 *   int rc = flags_parse("pretrain", "fdpo pretrain [flags] FILE...", flags, N, argc, argv, &npos, &pos);
 *
 * Defaults are applied first, then `--config FILE` (an INI file, keys = flag names with
 * '-' or '_', optional [section] headers ignored), then the command line, so flags win over
 * the file. Unknown flags and config keys are errors that name them. `--help` prints every
 * flag with its default and returns 1 (callers exit 0 on FLAGS_HELP). */
#ifndef FDPO_CLI_FLAGS_H
#define FDPO_CLI_FLAGS_H
#include <stddef.h>

typedef enum { FLAG_INT, FLAG_FLOAT, FLAG_STR, FLAG_BOOL } flag_type;
typedef struct {
    const char *name;
    flag_type type;
    void *dest;        /* long*, double*, const char**, int* */
    const char *def;   /* default as text; NULL = unset (STR -> NULL) */
    const char *help;
    int set;           /* filled by the parser: 1 if given on the command line or config */
} fdpo_flag;

#define FLAGS_OK 0
#define FLAGS_HELP 1
#define FLAGS_ERROR (-1)
int flags_parse(const char *cmd, const char *usage, fdpo_flag *flags, size_t n_flags,
                int argc, char **argv, int *n_pos, char ***pos);
/* Apply the INI text of a --config file (name is used in messages: "NAME:LINE: ..."). */
int flags_parse_config(fdpo_flag *flags, size_t n_flags, const char *name, const char *text);
/* Free the config values kept for the process lifetime (string flags set from a config
 * point into them): for a long-lived caller such as the fuzz harness. */
void flags_release_config(void);
void flags_print_help(const char *cmd, const char *usage, const fdpo_flag *flags, size_t n_flags);
/* Was this flag given explicitly? */
int flags_was_set(const fdpo_flag *flags, size_t n_flags, const char *name);
#define NFLAGS(a) (sizeof(a) / sizeof((a)[0]))

#endif
