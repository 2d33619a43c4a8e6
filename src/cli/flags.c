#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/flags.h"
#include "fdpo/core.h"
#include "fdpo/io.h"

static char norm(char c) { return c == '_' ? '-' : c; }

/* flag[0..len) equals key up to '-' vs '_' */
static int names_equal_prefix(const char *flag, const char *key, size_t len) {
    for (size_t i = 0; i < len; i++) if (!flag[i] || !key[i] || norm(flag[i]) != norm(key[i])) return 0;
    return 1;
}

/* Equal up to '-' vs '_'. */
static int names_equal(const char *flag, const char *key) {
    for (; *flag && *key; flag++, key++) if (norm(*flag) != norm(*key)) return 0;
    return *flag == 0 && *key == 0;
}

/* The one vocabulary's old spellings: old name -> the flag that replaced it. */
static const struct { const char *old, *now, *not_in; } ALIASES[] = {   /* not_in: commands where it is no alias */
    {"policy", "model", NULL}, {"init", "model", NULL},
    {"prompts", "data", "lab"},   /* lab's --prompts is a number (gap, coverage): in frontier it read as a file */
    {"samples", "data", NULL}, {"input", "data", NULL},
    {"k", "n", NULL}, {"batch", "batch-size", NULL}, {"val-fraction", "eval-fraction", NULL},
    {"export-pi", "export-policy", NULL},   /* lab check --method: the name lab check has */
    {"pairs", "pairing", NULL},   /* online/sacpo's best-worst|all-bt (eval's --pairs FILE keeps its name) */
};
#define N_ALIASES (sizeof ALIASES / sizeof ALIASES[0])

static fdpo_flag *find_exact(fdpo_flag *flags, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++) if (names_equal(flags[i].name, name)) return &flags[i];
    return NULL;
}

static const char *g_parsing;   /* the command flags_parse is parsing ("lab frontier"), for ALIASES' not_in */

/* Whether alias a is no alias in the command being parsed (ALIASES' not_in) */
static int alias_off_here(size_t a) {
    const char *no = ALIASES[a].not_in;
    return no && g_parsing && !strncmp(g_parsing, no, strlen(no));
}

/* The flag called `name`, or the one an old spelling of it now names (*is_alias set then). */
static fdpo_flag *find_flag(fdpo_flag *flags, size_t n, const char *name, int *is_alias) {
    *is_alias = 0;
    fdpo_flag *f = find_exact(flags, n, name);
    if (f) return f;
    for (size_t a = 0; a < N_ALIASES; a++) {
        if (alias_off_here(a)) continue;
        if (names_equal(ALIASES[a].old, name) && (f = find_exact(flags, n, ALIASES[a].now))) { *is_alias = 1; return f; }
    }
    return NULL;
}

/* Whether name is an old spelling (ALIASES' old) in the command being parsed */
static int old_spelling(const char *name) {
    for (size_t a = 0; a < N_ALIASES; a++)
        if (!alias_off_here(a) && names_equal(ALIASES[a].old, name)) return 1;
    return 0;
}

/* The flag name nearest to `name` (an old spelling counts as its new flag where it is an
 * alias: lab's --prompts was answered "did you mean --data?"), or NULL when nothing is close:
 * at most 1 + len/4 edits. */
static const char *nearest(fdpo_flag *flags, size_t n, const char *name) {
    const char *best = NULL;
    size_t best_d = 1 + strlen(name) / 4 + 1;
    for (size_t i = 0; i < n; i++) {
        size_t d = fdpo_edit_distance(flags[i].name, name);
        for (size_t a = 0; a < N_ALIASES; a++) {
            if (!names_equal(ALIASES[a].now, flags[i].name) || find_exact(flags, n, ALIASES[a].old) || alias_off_here(a))
                continue;
            size_t da = fdpo_edit_distance(ALIASES[a].old, name);
            if (da < d) d = da;
        }
        if (d < best_d) { best_d = d; best = flags[i].name; }
    }
    return best;
}

/* Strings and lists kept alive for the process lifetime (config values, FLAG_LIST storage):
 * the registry keeps them reachable, so leak checkers stay quiet. */
static void **g_keep; static size_t g_n_keep, g_cap_keep;

static void *keep_realloc(void *old, size_t size) {
    void *p = fdpo_realloc(old, size);
    for (size_t i = 0; old && i < g_n_keep; i++) if (g_keep[i] == old) { g_keep[i] = p; return p; }
    /* the registry doubles: a config file of many keys stays linear (the INI fuzzer found it quadratic) */
    if (g_n_keep == g_cap_keep) {
        g_cap_keep = g_cap_keep ? 2 * g_cap_keep : 16;
        g_keep = fdpo_realloc(g_keep, g_cap_keep * sizeof *g_keep);
    }
    g_keep[g_n_keep++] = p;
    return p;
}

static char *keep_strdup(const char *s) {
    size_t len = strlen(s);
    char *c = keep_realloc(NULL, len + 1);
    memcpy(c, s, len + 1);
    return c;
}

static void list_add(flag_list *l, const char *v) {
    l->v = keep_realloc((void *)l->v, (l->n + 1) * sizeof *l->v);
    l->v[l->n++] = v;
}

/* The flags that name a file or directory to read (every command's spelling; report's
 * eval ... chartjs: "--eval ''" failed as ": no such eval file", naming nothing) */
static int is_input_path(const char *name) {
    static const char *const inputs[] = {"data", "model", "ref", "tokenizer", "eval-file", "base", "lora", "pairs",
                                         "reward-data", "safety-data", "lexicon", "words", "ref-cache-dir",
                                         "eval", "lab", "lab-frontier", "proxy-eval", "samples", "notes", "chartjs"};
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++)
        if (!strcmp(name, inputs[i])) return 1;
    return 0;
}

/* The flags that name a file or directory to write ('-': standard output) */
static int is_output_path(const char *name) {
    return !strcmp(name, "out") || !strcmp(name, "samples-out") || !strncmp(name, "export-", 7);
}

/* The commands that record their paths and settings in JSON files (training_state.json,
 * sacpo.json, eval's e.json): those must be valid UTF-8. The others (generate, score, pairs,
 * merge, tokenize, lab, report, tokenizer train) write none, and take any text; info records its
 * checkpoint path only with --json, so cmd_info checks that path itself once --json is known. */
static int command_records_paths(void) {
    static const char *const RECORDING[] = {"pretrain", "sft", "dpo", "rm", "kto", "online", "rl", "sacpo", "eval"};
    for (size_t i = 0; g_parsing && i < sizeof RECORDING / sizeof *RECORDING; i++)
        if (!strcmp(g_parsing, RECORDING[i])) return 1;
    return 0;
}

/* A text value given (not a default: fdpo's own text) of a command that records its paths and
 * settings in JSON files (command_records_paths) is valid UTF-8, as JSON holds UTF-8 text only
 * (the library's option checks also refuse a path that resolves to bytes that are not:
 * fdpo_path_record_check). An input path's '' is refused here, an output's by its command. */
static int check_text_value(const fdpo_flag *f, const char *val, const char *where) {
    if (val == f->def || !strcmp(val, "-")) return 0;
    if (!*val && is_input_path(f->name)) return fdpo_error("%s: an empty path", where);
    if (!command_records_paths()) return 0;
    if (is_input_path(f->name) || is_output_path(f->name)) return fdpo_path_utf8_check(where, val);
    if (!fdpo_utf8_valid(val, strlen(val)))
        return fdpo_error("%s: not valid UTF-8 (fdpo records its settings in JSON files)", where);
    return 0;
}

/* where: "--lr" or "cfg.ini: key 'lr'" for messages */
static int set_value(fdpo_flag *f, const char *val, const char *where) {
    switch (f->type) {
    case FLAG_INT: case FLAG_COUNT: {
        /* fdpo_parse_long/fdpo_parse_number refuse blanks and hex ("0x10" for "0.10" ran silently) */
        long v = 0;
        if (fdpo_parse_long(where, val, &v)) return -1;
        if (f->type == FLAG_COUNT && v < 0) return fdpo_error("%s: must not be negative (got %s)", where, val);
        *(long *)f->dest = v; break;
    }
    case FLAG_FLOAT: {
        double v = 0;
        if (fdpo_parse_number(where, val, &v)) return -1;
        *(double *)f->dest = v; break;
    }
    case FLAG_STR: case FLAG_LIST:
        /* an input path given as '' failed later as ": cannot open", naming no flag */
        if (check_text_value(f, val, where)) return -1;
        if (f->type == FLAG_STR) *(const char **)f->dest = val;
        else list_add(f->dest, val);
        break;
    case FLAG_BOOL:
        if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes")) *(int *)f->dest = 1;
        else if (!strcmp(val, "0") || !strcmp(val, "false") || !strcmp(val, "no")) *(int *)f->dest = 0;
        else return fdpo_error("%s: '%s' is not a boolean (true/false)", where, val);
        break;
    }
    return 0;
}

/* Where a --config file set a flag's value (and the command line did not override it): the
 * file, its text (kept) and which of the parser's handler calls set it; one record per value
 * of a repeatable flag (a message about the first of two `data` values named no line). Debian's inih gives the
 * handler no line number, so the line is found when a message needs it: a second parse of
 * the text that rejects that call, whose line ini_parse_string then returns. Flag names are
 * the tables' string literals; the records last as long as the process (flags_release_config
 * drops them). */
/* The command line's positional arguments (flag NULL) and list flags' values, in argv order:
 * FILE... and --data FILE given together keep the order they were given in
 * (flags_prepend_list) */
typedef struct { const char *flag, *value; } cli_item;
static cli_item *g_order; static size_t g_n_order, g_cap_order;

static void order_add(const char *flag, const char *value) {
    if (g_n_order == g_cap_order) {
        g_cap_order = g_cap_order ? 2 * g_cap_order : 16;
        g_order = fdpo_realloc(g_order, g_cap_order * sizeof *g_order);
    }
    g_order[g_n_order++] = (cli_item){flag, value};
}

/* Where a flag's value came from when the command line did not give it: a config file's entry
 * (text: the file's text; entry: the entry's index), or (text NULL) a run's saved settings that
 * --resume restored (file: its training_state.json) */
typedef struct { const char *flag, *file, *text; size_t entry; const char *value; } cfg_origin;
static cfg_origin *g_origin; static size_t g_n_origin, g_cap_origin;

/* file NULL: the command line gave the flag, which replaces every value a file gave; list: a
 * file's value is one more of the flag's values, not a replacement */
static void origin_set(const char *flag, const char *file, const char *text, size_t entry, const char *value, int list) {
    for (size_t i = 0; i < g_n_origin; i++)
        if (g_origin[i].flag == flag) {
            if (!file) g_origin[i].file = NULL;
            else if (!list) { g_origin[i] = (cfg_origin){flag, file, text, entry, value}; return; }
        }
    if (!file) return;
    if (g_n_origin == g_cap_origin) {
        g_cap_origin = g_cap_origin ? 2 * g_cap_origin : 16;
        g_origin = fdpo_realloc(g_origin, g_cap_origin * sizeof *g_origin);
    }
    g_origin[g_n_origin++] = (cfg_origin){flag, file, text, entry, value};
}

typedef struct { size_t target, entry; } origin_ctx;
static int reject_target(void *user, const char *section, const char *name, const char *value) {
    (void)section; (void)name; (void)value;
    origin_ctx *c = user;
    return c->entry++ != c->target;
}

static int origin_line(const cfg_origin *o, const char **file) {
    if (!o->text) return 0;   /* a saved setting: no line */
    origin_ctx c = {o->entry, 0};
    int line = ini_parse_string(o->text, reject_target, &c);
    if (line <= 0) return 0;
    *file = o->file;
    return line;
}

/* The value of flag a file gave that rest starts with, then ':' or ' ' (eval's "--model DIR:
 * ..." of two models), else the last one (a single-value flag has one) */
static const cfg_origin *origin_of(const char *flag, const char *rest) {
    const cfg_origin *last = NULL;
    for (size_t i = 0; i < g_n_origin; i++) {
        const cfg_origin *o = &g_origin[i];
        if (!o->file || strcmp(o->flag, flag)) continue;
        const size_t k = rest && o->value ? strlen(o->value) : 0;
        if (k && !strncmp(rest, o->value, k) && (rest[k] == ':' || rest[k] == ' ')) return o;
        last = o;
    }
    return last;
}

/* "from FILE:LINE" or "saved in FILE, restored by --resume" into buf; 0 where o says neither */
static int origin_where(const cfg_origin *o, char *buf, size_t n) {
    if (!o) return 0;
    if (!o->text) return snprintf(buf, n, "saved in %s, restored by --resume", o->file), 1;
    const char *file = NULL;
    const int line = origin_line(o, &file);
    if (line <= 0) return 0;
    snprintf(buf, n, "from %s:%d", file, line);
    return 1;
}

void flags_note_saved(const char *flag, const char *state_file, const char *value) {
    origin_set(flag, keep_strdup(state_file), NULL, 0, value ? keep_strdup(value) : NULL, 0);
}

int flags_config_line(const char *flag, const char **file) {
    const cfg_origin *o = origin_of(flag, NULL);
    return o ? origin_line(o, file) : 0;
}

/* s starts with the name of a file a checkpoint directory holds (fdpo_checkpoint_file_kind),
 * then ':' */
static int is_checkpoint_file(const char *s) {
    char name[64];
    const size_t k = strcspn(s, ":/");
    if (s[k] != ':' || k >= sizeof name) return 0;
    memcpy(name, s, k);
    name[k] = 0;
    return fdpo_checkpoint_file_kind(name) != 0;
}

const char *flags_error_origin(const char *msg, char *buf, size_t n) {
    if (strncmp(msg, "--", 2)) {
        /* a loader's message about a path the file gave, which names no flag: the flag and
         * the file's line. The path itself ("missing.jsonl: cannot open"), or a checkpoint
         * file in the directory it gave ("DIR/config.json: ..."), not any path under it
         * (--out o1 did not give o1/missing.txt) */
        const cfg_origin *hit = NULL;
        for (size_t i = 0; i < g_n_origin && !hit; i++) {   /* the path itself first */
            const cfg_origin *o = &g_origin[i];
            const size_t len = o->file && o->value ? strlen(o->value) : 0;
            if (len && !strncmp(msg, o->value, len) && msg[len] == ':') hit = o;
        }
        for (size_t i = 0; i < g_n_origin && !hit; i++) {
            const cfg_origin *o = &g_origin[i];
            const size_t len = o->file && o->value ? strlen(o->value) : 0;
            if (len && !strncmp(msg, o->value, len) && msg[len] == '/' && is_checkpoint_file(msg + len + 1)) hit = o;
        }
        char where[PATH_MAX + 64];   /* a file path whole */
        if (!origin_where(hit, where, sizeof where)) return msg;
        snprintf(buf, n, "--%s: %s (%s)", hit->flag, msg, where);
        return buf;
    }
    static const char NAME_CHARS[] = "abcdefghijklmnopqrstuvwxyz0123456789-";
    size_t len = strspn(msg + 2, NAME_CHARS);
    char name[128];
    if (len == 0 || len >= sizeof name) return msg;
    memcpy(name, msg + 2, len);
    name[len] = 0;
    if (msg[2 + len] == '/' && !strncmp(msg + 3 + len, "--", 2)) {
        /* "--beta-min/--beta-max: ..." (a check of two flags): the line of each one a file gave */
        const char *b = msg + 5 + len;
        const size_t len_b = strspn(b, NAME_CHARS);
        char name_b[128];
        if (len_b == 0 || len_b >= sizeof name_b || (b[len_b] != ':' && b[len_b] != ' ')) return msg;
        memcpy(name_b, b, len_b);
        name_b[len_b] = 0;
        const char *names[2] = {name, name_b};
        size_t at = (size_t)snprintf(buf, n, "%s (", msg);
        int named = 0;
        for (int k = 0; k < 2 && at < n; k++) {
            char where[PATH_MAX + 64];   /* a file path whole */
            if (origin_where(origin_of(names[k], NULL), where, sizeof where))
                at += (size_t)snprintf(buf + at, n - at, "%s--%s %s", named++ ? ", " : "", names[k], where);
        }
        if (!named) return msg;
        if (at < n) snprintf(buf + at, n - at, ")");
        return buf;
    }
    /* "--lr: ..." and "--eval-every 5: ..." (the value after the name) */
    if (msg[2 + len] != ':' && msg[2 + len] != ' ') return msg;
    char where[PATH_MAX + 64];   /* a file path whole */
    if (!origin_where(origin_of(name, msg[2 + len] == ' ' ? msg + 3 + len : NULL), where, sizeof where)) return msg;
    snprintf(buf, n, "%s (%s)", msg, where);
    return buf;
}

typedef struct {
    fdpo_flag *flags; size_t n; const char *path, *text; int failed; size_t entry;
    char *spelling;         /* [n] per flag: 1 given under its name in this file, 2 under an old spelling */
    const char **old_key;   /* [n] that old spelling */
} ini_ctx;

/* Debian's inih passes no line number to the handler; ini_parse returns the line of the
 * first line the handler rejected, which becomes the file:line of the message. */
static int on_ini_line(void *user, const char *section, const char *name, const char *value) {
    (void)section;
    ini_ctx *c = user;
    const size_t entry = c->entry++;
    if (c->failed) return 1;
    int is_alias;
    fdpo_flag *f = names_equal(name, "config") ? NULL : find_flag(c->flags, c->n, name, &is_alias);
    if (!f) {
        const char *near = nearest(c->flags, c->n, name);
        if (near) fdpo_error("unknown key '%s' (did you mean '%s'?)", name, near);
        else fdpo_error("unknown key '%s' (the keys are the flag names of --help)", name);
        c->failed = 1;
        return 0;
    }
    const size_t k = (size_t)(f - c->flags);
    const char spelling = is_alias ? 2 : 1;
    if (c->spelling[k] && c->spelling[k] != spelling) {   /* as on the command line: one flag given twice */
        fdpo_error("key '%s': given twice, once as '%s' (its old spelling): give it once", f->name,
                   is_alias ? name : c->old_key[k]);
        c->failed = 1;
        return 0;
    }
    c->spelling[k] = spelling;
    if (is_alias) { c->old_key[k] = keep_strdup(name); fdpo_log(FDPO_LOG_WARN, "%s: key '%s' is deprecated; use '%s'", c->path, name, f->name); }
    char where[512];
    snprintf(where, sizeof where, "key '%s'", name);
    /* inih reuses its buffers: keep our own copy for string flags */
    const char *kept = keep_strdup(value);
    if (set_value(f, kept, where)) { c->failed = 1; return 0; }
    f->set = 1;
    origin_set(f->name, c->path, c->text, entry, f->type == FLAG_STR || f->type == FLAG_LIST ? kept : NULL,
               f->type == FLAG_LIST);
    return 1;
}

void flags_print_help(const char *cmd, const char *usage, const fdpo_flag *flags, size_t n) {
    printf("usage: %s\n\nflags (default in brackets):\n", usage);
    for (size_t i = 0; i < n; i++) {
        const char *t = flags[i].type == FLAG_INT || flags[i].type == FLAG_COUNT ? "N" : flags[i].type == FLAG_FLOAT ? "X" :
                        flags[i].type == FLAG_STR ? "S" : flags[i].type == FLAG_LIST ? "S..." : "";
        char left[64];
        snprintf(left, sizeof left, "--%s %s", flags[i].name, t);
        printf("  %-26s %s [%s]", left, flags[i].help, flags[i].def ? flags[i].def : "none");
        int olds = 0;
        for (size_t a = 0; a < N_ALIASES; a++)
            if (names_equal(ALIASES[a].now, flags[i].name) && !find_exact((fdpo_flag *)flags, n, ALIASES[a].old) &&
                !(ALIASES[a].not_in && !strncmp(cmd, ALIASES[a].not_in, strlen(ALIASES[a].not_in))))
                printf("%s--%s", olds++ ? ", " : " (was ", ALIASES[a].old);
        printf("%s\n", olds ? ")" : "");
    }
    printf("  %-26s %s\n", "--config FILE", "INI file with the same keys as the flags (flags override it)");
    printf("  %-26s %s\n", "--help", "this text");
    (void)cmd;
}

int flags_was_set(const fdpo_flag *flags, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++) if (names_equal(flags[i].name, name)) return flags[i].set;
    return 0;
}

void flags_unset_from(const fdpo_flag *flags, size_t n, const void *base, size_t size, void *to, const void *defaults) {
    for (size_t i = 0; i < n; i++) {
        const char *dest = flags[i].dest, *b = base;
        if (flags[i].set || dest < b || dest >= b + size) continue;
        const size_t at = (size_t)(dest - b);
        const size_t width = flags[i].type == FLAG_INT || flags[i].type == FLAG_COUNT ? sizeof(long)
                           : flags[i].type == FLAG_FLOAT ? sizeof(double)
                           : flags[i].type == FLAG_STR ? sizeof(const char *)
                           : flags[i].type == FLAG_BOOL ? sizeof(int) : sizeof(flag_list);
        memcpy((char *)to + at, (const char *)defaults + at, width);
    }
}

const char *flags_first_set(const fdpo_flag *flags, size_t n, const char *const *names, size_t k) {
    for (size_t i = 0; i < k; i++)
        if (flags_was_set(flags, n, names[i])) return names[i];
    return NULL;
}

int flags_from_config(const char *flag) {
    for (size_t i = 0; i < g_n_origin; i++)
        if (!strcmp(g_origin[i].flag, flag)) return g_origin[i].file && g_origin[i].text;   /* not a saved setting */
    return 0;
}

void flags_prepend_list(const char *flag, const flag_list *l, char ***pos, int *n_pos) {
    /* FILE... on the command line is that flag given there: it replaces a config file's values */
    if (!l->n || (*n_pos > 0 && flags_from_config(flag))) return;
    char **p = fdpo_malloc((l->n + (size_t)*n_pos + 1) * sizeof *p);
    if (*n_pos > 0) {   /* both on the command line: in the order given (A --data B trained B first) */
        size_t k = 0;
        for (size_t i = 0; i < g_n_order; i++)
            if (!g_order[i].flag || !strcmp(g_order[i].flag, flag)) p[k++] = (char *)g_order[i].value;
        p[k] = NULL;
    } else {
        for (size_t i = 0; i < l->n; i++) p[i] = (char *)l->v[i];
        p[l->n] = NULL;
    }
    free(*pos);
    *pos = p;
    *n_pos += (int)l->n;
}

static int unknown_flag(fdpo_flag *flags, size_t n, const char *dashes, const char *name) {
    const char *near = nearest(flags, n, name);
    if (near) return fdpo_error("unknown flag %s%s (did you mean --%s?)", dashes, name, near);
    return fdpo_error("unknown flag %s%s (--help lists the flags)", dashes, name);
}

void flags_release_config(void) {
    for (size_t i = 0; i < g_n_keep; i++) free(g_keep[i]);
    free(g_keep);
    g_keep = NULL;
    g_n_keep = g_cap_keep = 0;
    free(g_order);
    g_order = NULL;
    g_n_order = g_cap_order = 0;
    free(g_origin);   /* they point into the kept texts */
    g_origin = NULL;
    g_n_origin = g_cap_origin = 0;
}

static int ini_isspace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* Where a ';' after a blank in the value of key line l[0..n) starts (Debian's inih is built
 * with INI_ALLOW_INLINE_COMMENTS: it drops the rest of the value as a comment), else 0; *value
 * is where the value starts. Its scan: the name ends at the first '=' or ':', the value's scan
 * starts after it with no blank seen (a ';' before the separator is inih's syntax error). */
static size_t inline_comment_at(const char *l, size_t n, size_t *value) {
    int was_space = 0, in_value = 0;
    for (size_t k = 0; k < n; k++) {
        if (was_space && l[k] == ';') return in_value ? k : 0;
        if (!in_value && (l[k] == '=' || l[k] == ':')) { in_value = 1; was_space = 0; *value = k + 1; continue; }
        was_space = ini_isspace(l[k]);
    }
    return 0;
}

/* What inih would read otherwise than written, refused with the line: a NUL byte (the text
 * ended there), a line of INI_MAX_LINE - 1 bytes or more, a CRLF's \r counted (its reader
 * holds INI_MAX_LINE - 1 bytes, the newline included: the rest, or the newline alone, is read
 * as another line, and every later line number was one off) and an indented line after a key
 * of the same section (inih's continuation of that value: "  n = 3" after "stop = ###" made
 * stop "n = 3"; before any key, or after a [section], an indented key is read as a key), and
 * a ';' after a blank in a value (inih's inline comment: "out = samples ;v2.jsonl" wrote
 * "samples", where --out took the text whole). */
static int config_text_check(const char *name, const char *text, size_t len) {
    size_t line = 1;
    int after_key = 0;   /* inih's prev_name: set by a key line, cleared by a [section] */
    for (size_t at = 0; at < len; line++) {
        const char *nl = memchr(text + at, '\n', len - at);
        size_t end = nl ? (size_t)(nl - text) : len, n = end - at;
        const char *l = text + at;
        if (memchr(l, 0, n)) return fdpo_error("%s:%zu: a NUL byte (not INI text)", name, line);
        if (n >= INI_MAX_LINE - 1)
            return fdpo_error("%s:%zu: a line of %zu bytes; the INI reader takes lines of at most %d bytes", name, line,
                              n, INI_MAX_LINE - 2);
        size_t lead = line == 1 && n >= 3 && !memcmp(l, "\xEF\xBB\xBF", 3) ? 3 : 0;   /* a byte order mark */
        const size_t bom = lead;
        while (lead < n && ini_isspace(l[lead])) lead++;
        const char c = lead < n ? l[lead] : 0;
        if (c && c != ';' && c != '#') {
            if (lead > bom && after_key)
                return fdpo_error("%s:%zu: an indented line after a key (INI reads it as more of that key's value): "
                                  "remove the indentation", name, line);
            after_key = c != '[';
            size_t value = 0;
            const size_t semi = after_key ? inline_comment_at(l + lead, n - lead, &value) : 0;
            if (semi) {
                const char *v = l + lead + value, *e = l + lead + semi;
                while (v < e && ini_isspace(*v)) v++;
                while (e > v && ini_isspace(e[-1])) e--;
                return fdpo_error("%s:%zu: a ';' after a blank starts a comment in INI (the value would be read as "
                                  "'%.*s'): put a comment on a line of its own, and give a value holding \" ;\" "
                                  "as its flag", name, line, (int)(e - v), v);
            }
        }
        at = end + 1;
    }
    return 0;
}

static int take_any(void *user, const char *section, const char *name, const char *value) {
    (void)user; (void)section; (void)name; (void)value;
    return 1;
}

int flags_parse_config(fdpo_flag *flags, size_t n, const char *name, const char *text, size_t len) {
    if (config_text_check(name, text, len)) return -1;
    /* inih reads on past a syntax error and returns the first line that failed, a syntax
     * error's or the handler's: a bad value on line 3 was said as line 2's, and the syntax
     * error there never. So the handler sees only the lines before the first syntax error
     * (a parse that takes every key finds it) and the first error is said at its own line.
     * Its lines are the text's '\n' lines: config_text_check refused lines inih would split. */
    const int syntax = ini_parse_string(text, take_any, NULL);
    size_t upto = len;   /* where that line starts */
    if (syntax > 0) {
        upto = 0;
        for (int k = 1; k < syntax; k++) {
            const char *nl = memchr(text + upto, '\n', len - upto);
            if (!nl) break;
            upto = (size_t)(nl - text) + 1;
        }
    }
    char *head = fdpo_malloc(upto + 1);
    memcpy(head, text, upto);
    head[upto] = 0;
    /* name and a kept copy of text: a later message about a value from this file names its line */
    ini_ctx c = {flags, n, keep_strdup(name), keep_strdup(text), 0, 0, fdpo_calloc(n ? n : 1, 1),
                 fdpo_calloc(n ? n : 1, sizeof(char *))};
    int rc = ini_parse_string(head, on_ini_line, &c);
    free(head); free(c.spelling); free(c.old_key);
    if (c.failed) return fdpo_error_context("%s:%d", name, rc);
    if (syntax > 0 || rc > 0) return fdpo_error("%s:%d: syntax error (expected key = value)", name, syntax > 0 ? syntax : rc);
    if (rc < 0) return fdpo_error("%s: cannot parse (out of memory)", name);
    return 0;
}

static fdpo_strv g_configs;   /* the --config files of the last flags_parse */

size_t flags_config_files(const char *const **files) {
    *files = (const char *const *)g_configs.v;
    return g_configs.n;
}

/* Whether argv item a is a flag that takes the next item as its value (pass 2's reading:
 * "--name" or a one-letter "-k" alias, not a boolean, no "="), so that pass 1 skips the value
 * and reads neither --help nor --config there. An unknown name takes nothing (pass 2 reports it). */
static int takes_next_value(fdpo_flag *flags, size_t n, const char *a) {
    if (a[0] != '-' || !a[1] || strchr(a, '=')) return 0;
    const char *name = a + (a[1] == '-' ? 2 : 1);
    int is_alias = 0;
    fdpo_flag *f = find_flag(flags, n, name, &is_alias);
    if (!f || (a[1] != '-' && (!is_alias || strlen(name) != 1))) return 0;
    return f->type != FLAG_BOOL;
}

typedef struct { const char *name; int found; } key_ctx;
static int find_key(void *user, const char *section, const char *name, const char *value) {
    (void)section; (void)value;
    key_ctx *c = user;
    if (names_equal(name, c->name)) c->found = 1;
    return 1;
}

int flags_given(const char *cmd, fdpo_flag *flags, size_t n, int argc, char **argv, const char *name) {
    g_parsing = cmd;
    const size_t len = strlen(name);
    for (int i = 1; i < argc; i++) {   /* pass 1's reading of argv */
        const char *a = argv[i];
        if (!strcmp(a, "--")) break;
        if (!strncmp(a, "--", 2) && names_equal_prefix(a + 2, name, len) && (!a[2 + len] || a[2 + len] == '=')) return 1;
        const char *cfg = NULL;
        if (!strcmp(a, "--config")) cfg = i + 1 < argc ? argv[++i] : NULL;
        else if (!strncmp(a, "--config=", 9)) cfg = a + 9;
        else if (takes_next_value(flags, n, a)) i++;
        if (!cfg) continue;
        size_t text_len = 0;
        char *text = fdpo_read_file(cfg, &text_len);
        if (!text) continue;   /* flags_parse says why */
        key_ctx c = {name, 0};
        ini_parse_string(text, find_key, &c);
        free(text);
        if (c.found) return 1;
    }
    return 0;
}

static int (*g_after_help_pass)(void);   /* flags_defer_check's check, run once */

void flags_defer_check(int (*check)(void)) { g_after_help_pass = check; }

int flags_parse(const char *cmd, const char *usage, fdpo_flag *flags, size_t n,
                int argc, char **argv, int *n_pos, char ***pos) {
    g_n_origin = 0;   /* this table's values only */
    fdpo_strv_free(&g_configs);
    g_parsing = cmd;
    for (size_t i = 0; i < n; i++) {
        flags[i].set = 0;
        if (flags[i].type == FLAG_LIST) *(flag_list *)flags[i].dest = (flag_list){NULL, 0};
        if (flags[i].def) {
            if (set_value(&flags[i], flags[i].def, flags[i].name)) return FLAGS_ERROR;
        } else if (flags[i].type == FLAG_STR) {
            *(const char **)flags[i].dest = NULL;
        }
    }
    /* pass 1: --help and --config */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { flags_print_help(cmd, usage, flags, n); return FLAGS_HELP; }
        if (!strcmp(argv[i], "--")) break;
        const char *cfg = NULL;
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) return fdpo_error("--config: missing FILE");
            cfg = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) cfg = argv[i] + 9;
        else if (takes_next_value(flags, n, argv[i])) i++;   /* "--stop -h": -h is the value, as in pass 2 */
        if (cfg) {
            fdpo_strv_push(&g_configs, cfg);
            /* read through fdpo_read_file: a FIFO or directory is refused, not waited on */
            size_t len = 0;
            char *text = fdpo_read_file(cfg, &len);
            if (!text) return fdpo_error_context("--config");
            int rc = flags_parse_config(flags, n, cfg, text, len);
            free(text);
            if (rc) return FLAGS_ERROR;
        }
    }
    /* no --help at a flag position: the check main deferred for an argv item -h or --help
     * (a flag's value: "--stop -h") runs now, before the flags' own checks, as main runs it */
    if (g_after_help_pass) {
        int (*check)(void) = g_after_help_pass;
        g_after_help_pass = NULL;
        if (check()) return FLAGS_ERROR;
    }
    /* pass 2: flags and positionals; a list flag's first command-line value drops the config's */
    char *from_cli = fdpo_calloc(n ? n : 1, 1);
    const char **old_name = fdpo_calloc(n ? n : 1, sizeof *old_name);   /* the argv item of an old spelling */
    char **p = fdpo_malloc((size_t)(argc + 1) * sizeof *p);
    int np = 0, only_pos = 0, rc = FLAGS_OK;
    g_n_order = 0;
    for (int i = 1; i < argc && rc == FLAGS_OK; i++) {
        char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] == 0) {
            /* a file or directory argument ('' failed later as ": cannot open", naming nothing) */
            if (!*a) { rc = fdpo_error("an empty argument (a path was expected)"); break; }
            if (command_records_paths() && fdpo_path_utf8_check("a path argument", a)) { rc = FLAGS_ERROR; break; }
            p[np++] = a;
            order_add(NULL, a);
            continue;
        }
        if (!strcmp(a, "--")) { only_pos = 1; continue; }
        const char *dashes = a[1] == '-' ? "--" : "-";
        const char *body = a + strlen(dashes);
        char name[128];
        const char *eq = strchr(body, '=');
        size_t len = eq ? (size_t)(eq - body) : strlen(body);
        if (len >= sizeof name) len = sizeof name - 1;
        memcpy(name, body, len); name[len] = 0;
        if (dashes[1] && !strcmp(name, "config")) { if (!eq) i++; continue; }
        int is_alias = 0;
        fdpo_flag *f = find_flag(flags, n, name, &is_alias);
        /* one dash: only one-letter aliases ("-k"), and a one-letter old spelling that the
         * command keeps as its own flag to say what replaced it (lab check --method's k: "-k"
         * was answered "did you mean --k?", then --k said it was renamed --group-size) */
        if (f && !dashes[1] && (len != 1 || (!is_alias && !old_spelling(name)))) f = NULL;
        if (!f) { rc = unknown_flag(flags, n, dashes, name); break; }
        if (is_alias) fdpo_log(FDPO_LOG_WARN, "%s%s is deprecated; use --%s", dashes, name, f->name);
        const char *val;
        if (eq) val = eq + 1;
        else if (f->type == FLAG_BOOL) val = "1";
        else {
            if (i + 1 >= argc) { rc = fdpo_error("--%s: missing value", f->name); break; }
            val = argv[++i];
        }
        size_t k = (size_t)(f - flags);
        /* 1: given under its name, 2: under an old spelling; both is one flag twice (the last
         * one won without a word: lab solve --input A --data B read B) */
        const char spelling = is_alias ? 2 : 1;
        if (is_alias && !old_name[k]) old_name[k] = a;
        if (from_cli[k] && from_cli[k] != spelling) {
            const char *o = old_name[k];
            rc = fdpo_error("--%s: given twice, once as %.*s (its old spelling): give it once", f->name,
                            (int)strcspn(o, "="), o);
            break;
        }
        if (f->type == FLAG_LIST && !from_cli[k]) ((flag_list *)f->dest)->n = 0;
        from_cli[k] = spelling;
        char where[160];
        snprintf(where, sizeof where, "%s%s", dashes, name);
        if (set_value(f, val, where)) { rc = FLAGS_ERROR; break; }
        if (f->type == FLAG_LIST) order_add(f->name, val);
        f->set = 1;
        origin_set(f->name, NULL, NULL, 0, NULL, 0);   /* the command line's value, not the file's */
    }
    free(from_cli);
    free(old_name);
    if (rc != FLAGS_OK) { free(p); return FLAGS_ERROR; }
    p[np] = NULL;
    /* --threads, the one flag every computing command shares: its range (the library's,
     * fdpo_threads_check) checked here once (a negative count ran on the OpenMP default; a
     * huge one was cut to int) */
    fdpo_flag *th = find_exact(flags, n, "threads");
    if (th && th->type == FLAG_INT && fdpo_threads_check(*(long *)th->dest)) {
        free(p);
        return FLAGS_ERROR;
    }
    if (!pos && np > 0) {   /* a command without positional arguments: a forgotten flag name, say */
        rc = fdpo_error("unexpected argument '%s' (--help lists the flags)", p[0]);
        free(p);
        return FLAGS_ERROR;
    }
    if (pos) *pos = p; else free(p);
    if (n_pos) *n_pos = np;
    return FLAGS_OK;
}

int flags_list_empty_item(const char *flag, const char *spec) {
    size_t L = strlen(spec);   /* strtok skips empty items: "0.5,,0.5" would read as two */
    if (L && (spec[0] == ',' || spec[L - 1] == ',' || strstr(spec, ",,")))
        return fdpo_error("--%s: empty item in '%s'", flag, spec);
    return 0;
}

int flags_number_list(const char *flag, const char *spec, int sign, double **out, size_t *count) {
    const int distinct = sign & FLAGS_LIST_DISTINCT;
    sign &= ~FLAGS_LIST_DISTINCT;
    if (flags_list_empty_item(flag, spec)) return -1;
    char *s = fdpo_strdup(spec), *save = NULL;
    size_t cap = 8, n = 0;
    double *v = fdpo_malloc(cap * sizeof *v);
    for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        /* "0.5, 1, 2": blanks around an item are the list's layout, not the number's */
        while (*tok == ' ' || *tok == '\t') tok++;
        for (size_t k = strlen(tok); k && (tok[k - 1] == ' ' || tok[k - 1] == '\t');) tok[--k] = 0;
        if (!*tok) { fdpo_error("--%s: empty item in '%s'", flag, spec); free(s); free(v); return -1; }
        char where[96];
        snprintf(where, sizeof where, "--%s", flag);
        double x = 0;
        if (fdpo_parse_number(where, tok, &x)) { free(s); free(v); return -1; }
        if (sign == FLAGS_LIST_POSITIVE && !(x > 0)) { fdpo_error("--%s: must be > 0 (got %s)", flag, tok); free(s); free(v); return -1; }
        if (sign == FLAGS_LIST_NONNEG && x < 0) { fdpo_error("--%s: must be >= 0 (got %s)", flag, tok); free(s); free(v); return -1; }
        if (sign == FLAGS_LIST_COUNT && !(x >= 1 && x <= 9007199254740992.0 && x == floor(x))) {
            fdpo_error("--%s: '%s' is not a whole number from 1 to 2^53", flag, tok); free(s); free(v); return -1;
        }
        for (size_t j = 0; distinct && j < n; j++)
            if (v[j] == x) { fdpo_error("--%s: %g given twice in '%s'", flag, v[j], spec); free(s); free(v); return -1; }
        if (n == cap) v = fdpo_realloc(v, (cap *= 2) * sizeof *v);
        v[n++] = x;
    }
    free(s);
    if (n == 0) { free(v); return fdpo_error("--%s: empty list", flag); }
    *out = v;
    *count = n;
    return 0;
}
