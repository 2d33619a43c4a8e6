#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/flags.h"
#include "fdpo/core.h"

static int names_equal(const char *flag, const char *key) {
    for (; *flag && *key; flag++, key++) {
        char a = *flag == '_' ? '-' : *flag, b = *key == '_' ? '-' : *key;
        if (a != b) return 0;
    }
    return *flag == 0 && *key == 0;
}

static fdpo_flag *find_flag(fdpo_flag *flags, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++) if (names_equal(flags[i].name, name)) return &flags[i];
    return NULL;
}

/* where: "--lr" or "cfg.ini:3" for messages */
static int set_value(fdpo_flag *f, const char *val, const char *where) {
    char *end;
    switch (f->type) {
    case FLAG_INT: {
        errno = 0;
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end) return fdpo_error("%s: '%s' is not an integer", where, val);
        *(long *)f->dest = v; break;
    }
    case FLAG_FLOAT: {
        errno = 0;
        double v = strtod(val, &end);
        if (errno || end == val || *end || !isfinite(v)) return fdpo_error("%s: '%s' is not a finite number", where, val);
        *(double *)f->dest = v; break;
    }
    case FLAG_STR: *(const char **)f->dest = val; break;
    case FLAG_BOOL:
        if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes")) *(int *)f->dest = 1;
        else if (!strcmp(val, "0") || !strcmp(val, "false") || !strcmp(val, "no")) *(int *)f->dest = 0;
        else return fdpo_error("%s: '%s' is not a boolean (true/false)", where, val);
        break;
    }
    return 0;
}

typedef struct { fdpo_flag *flags; size_t n; const char *path; int failed; char **keep; size_t n_keep; } ini_ctx;

/* Debian's inih passes no line number to the handler; ini_parse returns the line of the
 * first line the handler rejected, which becomes the file:line of the message. */
static int on_ini_line(void *user, const char *section, const char *name, const char *value) {
    (void)section;
    ini_ctx *c = user;
    if (c->failed) return 1;
    char where[512];
    snprintf(where, sizeof where, "key '%s'", name);
    fdpo_flag *f = find_flag(c->flags, c->n, name);
    if (!f || names_equal(name, "config")) { fdpo_error("unknown key '%s'", name); c->failed = 1; return 0; }
    /* inih reuses its buffers: keep our own copy for string flags */
    char *copy = fdpo_strdup(value);
    if ((c->n_keep & (c->n_keep - 1)) == 0) /* 0, 1, 2, 4, ...: double the array */
        c->keep = fdpo_realloc(c->keep, (c->n_keep ? 2 * c->n_keep : 1) * sizeof *c->keep);
    c->keep[c->n_keep++] = copy;
    if (set_value(f, copy, where)) { c->failed = 1; return 0; }
    f->set = 1;
    return 1;
}

void flags_print_help(const char *cmd, const char *usage, const fdpo_flag *flags, size_t n) {
    printf("usage: %s\n\nflags (default in brackets):\n", usage);
    for (size_t i = 0; i < n; i++) {
        const char *t = flags[i].type == FLAG_INT ? "N" : flags[i].type == FLAG_FLOAT ? "X" :
                        flags[i].type == FLAG_STR ? "S" : "";
        char left[64];
        snprintf(left, sizeof left, "--%s %s", flags[i].name, t);
        printf("  %-26s %s [%s]\n", left, flags[i].help, flags[i].def ? flags[i].def : "none");
    }
    printf("  %-26s %s\n", "--config FILE", "INI file with the same keys as the flags (flags override it)");
    printf("  %-26s %s\n", "--help", "this text");
    (void)cmd;
}

int flags_was_set(const fdpo_flag *flags, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++) if (names_equal(flags[i].name, name)) return flags[i].set;
    return 0;
}

/* Strings kept alive for the process lifetime (config values). */
static char **g_keep; static size_t g_n_keep;

void flags_release_config(void) {
    for (size_t i = 0; i < g_n_keep; i++) free(g_keep[i]);
    free(g_keep);
    g_keep = NULL;
    g_n_keep = 0;
}

int flags_parse_config(fdpo_flag *flags, size_t n, const char *name, const char *text) {
    ini_ctx c = {flags, n, name, 0, g_keep, g_n_keep};
    int rc = ini_parse_string(text, on_ini_line, &c);
    g_keep = c.keep; g_n_keep = c.n_keep;
    if (c.failed) return fdpo_error_context("%s:%d", name, rc);
    if (rc > 0) return fdpo_error("%s:%d: syntax error (expected key = value)", name, rc);
    if (rc < 0) return fdpo_error("%s: cannot parse (out of memory)", name);
    return 0;
}

int flags_parse(const char *cmd, const char *usage, fdpo_flag *flags, size_t n,
                int argc, char **argv, int *n_pos, char ***pos) {
    for (size_t i = 0; i < n; i++) {
        flags[i].set = 0;
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
        if (cfg) {
            /* read through fdpo_read_file: a FIFO or directory is refused, not waited on */
            char *text = fdpo_read_file(cfg, NULL);
            if (!text) return fdpo_error_context("--config");
            int rc = flags_parse_config(flags, n, cfg, text);
            free(text);
            if (rc) return FLAGS_ERROR;
        }
    }
    /* pass 2: flags and positionals */
    char **p = fdpo_malloc((size_t)(argc + 1) * sizeof *p);
    int np = 0, only_pos = 0;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] == 0) { p[np++] = a; continue; }
        if (!strcmp(a, "--")) { only_pos = 1; continue; }
        if (a[1] != '-') { free(p); return fdpo_error("%s: unknown flag '%s' (see fdpo %s --help)", cmd, a, cmd); }
        char name[128];
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
        if (len >= sizeof name) len = sizeof name - 1;
        memcpy(name, a + 2, len); name[len] = 0;
        if (!strcmp(name, "config")) { if (!eq) i++; continue; }
        fdpo_flag *f = find_flag(flags, n, name);
        if (!f) { free(p); return fdpo_error("%s: unknown flag '--%s' (see fdpo %s --help)", cmd, name, cmd); }
        const char *val;
        if (eq) val = eq + 1;
        else if (f->type == FLAG_BOOL) val = "1";
        else {
            if (i + 1 >= argc) { free(p); return fdpo_error("--%s: missing value", name); }
            val = argv[++i];
        }
        char where[160];
        snprintf(where, sizeof where, "--%s", name);
        if (set_value(f, val, where)) { free(p); return FLAGS_ERROR; }
        f->set = 1;
    }
    p[np] = NULL;
    if (pos) *pos = p; else free(p);
    if (n_pos) *n_pos = np;
    return FLAGS_OK;
}
