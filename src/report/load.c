/* Reading the report's inputs: run directories (metrics.jsonl + run config), eval JSON files
 * and lab CSV files. Bad content becomes a warning naming FILE:LINE; only a missing path is
 * an error. Formats: docs/report.md. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "fdpo/core.h"
#include "data/jsonl.h"
#include "report/report_internal.h"

void fdpo_rp_warn(rp_ctx *c, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->warn) fprintf(c->warn, "fdpo report: warning: %s\n", msg);
    else fdpo_log(FDPO_LOG_WARN, "%s", msg);   /* the library prints nothing itself */
    c->warnings = fdpo_realloc(c->warnings, (c->n_warnings + 1) * sizeof *c->warnings);
    c->warnings[c->n_warnings++] = fdpo_strdup(msg);
}

const cJSON *fdpo_rp_get(const cJSON *obj, const char *const *names) {
    if (!cJSON_IsObject(obj)) return NULL;
    for (; *names; names++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, *names);
        if (v && !cJSON_IsNull(v)) return v;
    }
    return NULL;
}

int fdpo_rp_get_num(const cJSON *obj, const char *name, double *v) {
    const cJSON *x = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, name) : NULL;
    if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble)) return 0;
    *v = x->valuedouble;
    return 1;
}

/* A setting's number written as text, read by the one number rule (fdpo_parse_number: "0x10"
 * or "1e-400" is no β); one it refuses is a warning "WHERE: KEY: 'TEXT' is ...; not used"
 * (c NULL: silently not used). */
static int setting_number(rp_ctx *c, const char *where, const char *key, const char *text, double *v) {
    char at[600];
    snprintf(at, sizeof at, "%s: %s", where, key);
    if (!fdpo_parse_number(at, text, v)) return 1;
    if (c) fdpo_rp_warn(c, "%s; not used", fdpo_last_error());
    return 0;
}

/* A number, or a string holding one ("0.1"): settings files store either. */
static int get_num_or_text(rp_ctx *c, const char *where, const cJSON *obj, const char *name, double *v) {
    if (fdpo_rp_get_num(obj, name, v)) return 1;
    const cJSON *x = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, name) : NULL;
    return cJSON_IsString(x) && setting_number(c, where, name, x->valuestring, v);
}

static const char *base_name(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;          /* "runs/a/" -> "a" */
    size_t s = n;
    while (s > 0 && path[s - 1] != '/') s--;
    static _Thread_local char buf[512];
    size_t len = n - s < sizeof buf - 1 ? n - s : sizeof buf - 1;
    memcpy(buf, path + s, len);
    buf[len] = 0;
    return buf[0] ? buf : path;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcasecmp(s + a - b, suf) == 0;
}

/* A whole JSON file read as Python's json reads it (fdpo_json_parse_value: a key twice is
 * refused, where cJSON's lookups would take the first copy and Python the last; text after
 * the value is refused, where a second document was dropped), and, shown: with no NUL in a
 * string (cJSON ends the string there: "good\u0000 HIDDEN" was shown as "good"; a settings
 * file is not shown, and a tokenizer.json beside it may hold "\u0000" as a token). NULL after
 * a warning "THE LIBRARY'S ERROR, SKIPPED" (what the caller leaves out without it). */
static cJSON *parse_file(rp_ctx *c, const char *path, const char *text, size_t len, const char *skipped, int shown) {
    cJSON *doc = fdpo_json_parse_value(path, 1, text, len);
    if (doc && shown && fdpo_jsonl_check_nul(path, text, len, doc)) { cJSON_Delete(doc); doc = NULL; }
    if (!doc) fdpo_rp_warn(c, "%s, %s", fdpo_last_error(), skipped);
    return doc;
}

/* cJSON reads a number past a double's range (1e400, -1e400) as an infinity, which no table
 * or panel can show: it is left out as null is, but said, once per file and key (a metrics
 * file has thousands of lines), naming the FILE:LINE of the first and the number as written.
 * The k-th number of the text that cJSON reads as infinite (the same first 63 characters to
 * strtod) is the k-th infinite number of the value in document order. */
typedef struct {
    const char *path, *text;
    size_t len, line_no, at;   /* text[0..len) starts on line line_no; at: where the scan goes on */
    cJSON *seen;               /* the keys already said, for the whole file */
} rp_nonfinite;

static void warn_nonfinite(rp_ctx *c, rp_nonfinite *s, const cJSON *j, const char *key) {
    for (const cJSON *it = j->child; it; it = it->next) {
        const char *k = it->string ? it->string : key;   /* an array's items are its key's */
        if (it->child) { warn_nonfinite(c, s, it, k); continue; }
        if (!cJSON_IsNumber(it) || isfinite(it->valuedouble)) continue;
        size_t n = 0, at = fdpo_json_next_number(s->text, s->len, s->at, &n);
        for (; at < s->len; at = fdpo_json_next_number(s->text, s->len, at + n, &n)) {
            char num[64];
            size_t m = n < sizeof num - 1 ? n : sizeof num - 1;
            memcpy(num, s->text + at, m); num[m] = 0;
            if (!isfinite(strtod(num, NULL))) break;
        }
        if (at >= s->len) return;   /* not found: no line to name (cannot happen) */
        s->at = at + n;
        if (!k || cJSON_GetObjectItemCaseSensitive(s->seen, k)) continue;
        cJSON_AddNullToObject(s->seen, k);
        size_t line = s->line_no;
        for (size_t i = 0; i < at; i++) line += s->text[i] == '\n';
        fdpo_rp_warn(c, "%s:%zu: %s: '%.*s' is not a finite number (past a double's range); left out, as null is "
                     "(said once for the key in this file)", s->path, line, k, (int)(n > 40 ? 40 : n), s->text + at);
    }
}

/* Sorted names of the directory's entries (no dot files); NULL on failure. */
static char **list_dir(const char *dir, size_t *n) {
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return NULL;
    char **names = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        names = fdpo_realloc(names, (*n + 1) * sizeof *names);
        names[(*n)++] = fdpo_strdup(e->d_name);
    }
    closedir(d);
    for (size_t i = 1; i < *n; i++)            /* insertion sort: directories are small */
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j]; names[j] = names[j - 1]; names[j - 1] = t;
        }
    return names;
}

static void free_list(char **names, size_t n) {
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

static int is_dir(const char *p) { struct stat st; return stat(p, &st) == 0 && S_ISDIR(st.st_mode); }
static int is_file(const char *p) { struct stat st; return stat(p, &st) == 0 && S_ISREG(st.st_mode); }

/* ---------------------------------------------------------------- run settings ---- */

static const char *const K_DIV[] = {"divergence", "f_divergence", "fdiv", "f", NULL};
static const char *const K_LOSS[] = {"loss_type", "loss", NULL};

/* Look for the settings in obj and (depth-first) its sub-objects; where names obj's file. */
static void find_settings(rp_ctx *c, const char *where, const cJSON *obj, int depth, char **div, double *beta,
                          int *has_beta, char **loss, double *alpha, int *has_alpha) {
    if (!cJSON_IsObject(obj) || depth > 3) return;
    const cJSON *v;
    if (!*div && (v = fdpo_rp_get(obj, K_DIV)) && cJSON_IsString(v) && v->valuestring[0])
        *div = fdpo_strdup(v->valuestring);
    if (!*loss && (v = fdpo_rp_get(obj, K_LOSS)) && cJSON_IsString(v) && v->valuestring[0])
        *loss = fdpo_strdup(v->valuestring);
    double x;
    if (!*has_beta && get_num_or_text(c, where, obj, "beta", &x)) { *beta = x; *has_beta = 1; }
    if (!*has_alpha && get_num_or_text(c, where, obj, "alpha", &x)) { *alpha = x; *has_alpha = 1; }
    for (const cJSON *it = obj->child; it; it = it->next)
        if (cJSON_IsObject(it)) find_settings(c, where, it, depth + 1, div, beta, has_beta, loss, alpha, has_alpha);
}

/* INI / key=value config (the format of `--config FILE`). */
static void settings_from_ini(rp_ctx *c, const char *path, const char *text, char **div, double *beta,
                              int *has_beta, char **loss, double *alpha, int *has_alpha) {
    const char *p = text + fdpo_jsonl_bom(text, strlen(text));
    for (size_t line_no = 1; *p; line_no++) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char line[512];
        if (n < sizeof line) {
            memcpy(line, p, n); line[n] = 0;
            char *eq = strchr(line, '=');
            if (eq && line[0] != '#' && line[0] != ';' && line[0] != '[') {
                *eq = 0;
                char *k = line, *val = eq + 1;
                while (isspace((unsigned char)*k)) k++;
                for (char *t = k + strlen(k); t > k && isspace((unsigned char)t[-1]); ) *--t = 0;
                while (isspace((unsigned char)*val) || *val == '"') val++;
                for (char *t = val + strlen(val); t > val && (isspace((unsigned char)t[-1]) || t[-1] == '"'); ) *--t = 0;
                for (char *t = k; *t; t++) if (*t == '-') *t = '_';
                char where[560];
                snprintf(where, sizeof where, "%s:%zu", path, line_no);
                if (!*div && (!strcmp(k, "divergence") || !strcmp(k, "f_divergence") || !strcmp(k, "f")) && *val)
                    *div = fdpo_strdup(val);
                else if (!*loss && (!strcmp(k, "loss") || !strcmp(k, "loss_type")) && *val)
                    *loss = fdpo_strdup(val);
                else if (!*has_beta && !strcmp(k, "beta"))
                    *has_beta = setting_number(c, where, k, val, beta);
                else if (!*has_alpha && !strcmp(k, "alpha"))
                    *has_alpha = setting_number(c, where, k, val, alpha);
            }
        }
        if (!e) break;
        p = e + 1;
    }
}

static int is_samples_name(const char *name) {
    return strcasestr(name, "samples") && ends_with(name, ".jsonl");
}

static int is_eval_name(const char *name) {
    return strncasecmp(name, "eval", 4) == 0 && ends_with(name, ".json");
}

/* Find divergence, beta and loss in the run directory's config file(s). */
/* A *.json of a run directory, read for its settings as Python's json reads it. Any JSON file
 * is looked at (tokenizer.json, transformers' trainer_state.json with its NaN grad_norm): one
 * the strict reader refuses is said only when it would have given settings (cJSON alone reads a
 * divergence, beta, loss or alpha in it: a run.json with beta twice), else passed over as it
 * always was. */
static cJSON *settings_file(rp_ctx *c, const char *path, const char *text) {
    cJSON *doc = fdpo_json_parse_value(path, 1, text, strlen(text));
    if (doc) return doc;
    char why[1024];
    snprintf(why, sizeof why, "%s", fdpo_last_error());
    cJSON *loose = cJSON_Parse(text);
    char *div = NULL, *loss = NULL;
    double beta = 0, alpha = 0;
    int hb = 0, ha = 0;
    if (cJSON_IsObject(loose)) find_settings(NULL, path, loose, 0, &div, &beta, &hb, &loss, &alpha, &ha);
    if (div || hb || loss || ha) fdpo_rp_warn(c, "%s, not read for the run's settings", why);
    free(div); free(loss);
    cJSON_Delete(loose);
    return NULL;
}

static void discover_settings(rp_ctx *c, rp_run *r, char **names, size_t n_names) {
    double alpha = 0; int has_alpha = 0;
    /* Preferred names first, then any other *.json / *.ini. */
    static const char *const preferred[] = {"training_state.json", "run.json", "run_config.json", "config.json", "args.json",
                                            "training_args.json", "dpo_config.json", "run.ini", "config.ini", NULL};
    for (int pass = 0; pass < 2 && !r->divergence; pass++) {
        /* pass 0 walks preferred[] itself, so its order (not the listing's alphabetical one) decides */
        size_t n_pass = pass == 0 ? sizeof preferred / sizeof *preferred - 1 : n_names;
        for (size_t i = 0; i < n_pass && !r->divergence; i++) {
            const char *nm = pass == 0 ? preferred[i] : names[i];
            int pref = 0, listed = 0;
            for (const char *const *q = preferred; *q; q++) if (!strcmp(*q, nm)) pref = 1;
            for (size_t k = 0; pass == 0 && k < n_names && !listed; k++) listed = !strcmp(names[k], nm);
            if (pass == 0 ? !listed : pref) continue;
            int json = ends_with(nm, ".json"), ini = ends_with(nm, ".ini") || ends_with(nm, ".cfg");
            if ((!json && !ini) || is_eval_name(nm)) continue;
            char *path = fdpo_path_join(r->dir, nm);
            struct stat st;
            if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (64 << 20)) { free(path); continue; }
            char *text = fdpo_read_file(path, NULL);
            if (!text) { free(path); continue; }
            char *div = NULL, *loss = NULL; double beta = 0; int hb = 0;
            if (json) {
                cJSON *doc = settings_file(c, path, text);
                /* a checkpoint's config.json (model_type) or an eval output is not a run config */
                if (doc && cJSON_IsObject(doc) && !cJSON_GetObjectItem(doc, "model_type") &&
                    !cJSON_GetObjectItem(doc, "policies")) {
                    find_settings(c, path, doc, 0, &div, &beta, &hb, &loss, &alpha, &has_alpha);
                    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(doc, "kind");
                    if (!r->kind && cJSON_IsString(kind) && kind->valuestring[0]) r->kind = fdpo_strdup(kind->valuestring);
                }
                cJSON_Delete(doc);
            } else {
                settings_from_ini(c, path, text, &div, &beta, &hb, &loss, &alpha, &has_alpha);
            }
            free(text);
            if (div || hb) {       /* merge: each setting from the first file that has it */
                if (div && !r->divergence) { r->divergence = div; div = NULL; free(r->config_file); r->config_file = fdpo_strdup(path); }
                if (hb && !r->has_beta) { r->beta = beta; r->has_beta = 1; }
                if (loss && !r->loss) { r->loss = loss; loss = NULL; }
                if (!r->config_file) r->config_file = fdpo_strdup(path);
            }
            free(div); free(loss); free(path);
        }
    }
    /* fall back on the first metrics row that names them */
    if (!r->divergence || !r->has_beta) {
        char *mpath = fdpo_path_join(r->dir, "metrics.jsonl");
        size_t before = c->n_warnings;
        cJSON *row;
        cJSON_ArrayForEach(row, r->rows) {   /* a refused β is said once, not on every line */
            find_settings(c->n_warnings == before ? c : NULL, mpath, row, 3, &r->divergence, &r->beta, &r->has_beta,
                          &r->loss, &alpha, &has_alpha);
            if (r->divergence && r->has_beta) break;
        }
        free(mpath);
    }
    /* "alpha" + alpha=0.5 -> "alpha:0.5" (the CLI's spelling) */
    if (r->divergence && !strcmp(r->divergence, "alpha") && has_alpha) {
        char buf[64];
        snprintf(buf, sizeof buf, "alpha:%g", alpha);
        free(r->divergence);
        r->divergence = fdpo_strdup(buf);
    }
}

static void make_label(rp_run *r) {
    char buf[600];
    if (r->divergence && r->has_beta) snprintf(buf, sizeof buf, "%s (%s, \xce\xb2=%g)", r->name, r->divergence, r->beta);
    else if (r->divergence) snprintf(buf, sizeof buf, "%s (%s)", r->name, r->divergence);
    else if (r->has_beta) snprintf(buf, sizeof buf, "%s (\xce\xb2=%g)", r->name, r->beta);
    else snprintf(buf, sizeof buf, "%s", r->name);
    r->label = fdpo_strdup(buf);
}

/* ---------------------------------------------------------------- metrics.jsonl ---- */

/* The warning for a JSONL line of p[0..n) that fdpo_jsonl_parse_object refused: its error,
 * "(the file ends there: truncated?)" for a last line without a newline, and the line's
 * start (40 bytes, whole characters, control bytes as '?'). */
static void warn_bad_line(rp_ctx *c, const char *p, size_t n, int last) {
    size_t s = 0;
    while (n > 0 && isspace((unsigned char)p[n - 1])) n--;
    while (s < n && isspace((unsigned char)p[s])) s++;
    char snip[48];
    size_t m = n - s < 40 ? n - s : 40;
    while (m > 0 && m < n - s && ((unsigned char)p[s + m] & 0xC0) == 0x80) m--;   /* whole characters */
    memcpy(snip, p + s, m); snip[m] = 0;
    for (size_t i = 0; i < m; i++) if ((unsigned char)snip[i] < 0x20 || snip[i] == 0x7f) snip[i] = '?';
    fdpo_rp_warn(c, "%s%s, line skipped: %s%s", fdpo_last_error(),
                 last ? " (the file ends there: truncated?)" : "", snip, n - s > 40 ? "..." : "");
}

static void load_metrics(rp_ctx *c, rp_run *r, const char *path) {
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) { fdpo_rp_warn(c, "%s", fdpo_last_error()); return; }
    size_t line = 0;
    int any = 0;
    char *p = text, *end = text + len;
    rp_nonfinite nf = {.path = path, .seen = cJSON_CreateObject()};
    /* counted here, lines grown geometrically: cJSON_GetArraySize walks the whole list, and
     * asking it per line made a 300k-line file take hours */
    size_t n_rows = (size_t)cJSON_GetArraySize(r->rows), lines_cap = n_rows;
    while (p < end) {
        char *e = memchr(p, '\n', (size_t)(end - p));
        size_t n = e ? (size_t)(e - p) : (size_t)(end - p);
        line++;
        size_t k = n;
        while (k > 0 && isspace((unsigned char)p[k - 1])) k--;
        size_t s = 0;
        while (s < k && isspace((unsigned char)p[s])) s++;
        if (k > s) {
            cJSON *obj = fdpo_jsonl_parse_object_any_bytes(path, line, p, k);   /* the words of every JSONL reader; bad bytes shown as U+FFFD */
            if (!obj) {
                warn_bad_line(c, p, k, !e);
                r->n_bad++;
            } else {
                nf.text = p; nf.len = k; nf.line_no = line; nf.at = 0;
                warn_nonfinite(c, &nf, obj, NULL);   /* before val_loss moves: in the line's order */
                /* pretrain/sft logged their held-out loss as val_loss before wave 28: one key,
                 * so a run resumed across the rename keeps one curve and one column */
                cJSON *old = cJSON_GetObjectItemCaseSensitive(obj, "val_loss");
                if (old && !cJSON_GetObjectItemCaseSensitive(obj, "eval_loss")) {
                    cJSON_DetachItemViaPointer(obj, old);
                    cJSON_AddItemToObject(obj, "eval_loss", old);
                }
                cJSON_AddItemToArray(r->rows, obj);
                if (n_rows == lines_cap) {
                    lines_cap = lines_cap ? 2 * lines_cap : 64;
                    r->lines = fdpo_realloc(r->lines, lines_cap * sizeof *r->lines);
                }
                r->lines[n_rows++] = line;   /* a row's x without "step" */
            }
            any = 1;
        }
        if (!e) break;
        p = e + 1;
    }
    /* an empty file is named like an empty samples or eval file (else a run of 0 rows with no word) */
    if (!any) fdpo_rp_warn(c, "%s: no metrics found (the file is empty)", path);
    cJSON_Delete(nf.seen);
    free(text);
}

/* ---------------------------------------------------------------- run directory ---- */

static rp_run *new_run(rp_ctx *c, const char *dir, const char *name) {
    c->runs = fdpo_realloc(c->runs, (c->n_runs + 1) * sizeof *c->runs);
    rp_run *r = &c->runs[c->n_runs++];
    memset(r, 0, sizeof *r);
    r->dir = fdpo_strdup(dir);
    r->name = fdpo_strdup(name);
    r->rows = cJSON_CreateArray();
    return r;
}

static const struct rp_read_file *read_entry(const rp_ctx *c, const char *path);
static void record_read(rp_ctx *c, const char *path);

/* 1 (with a warning) when what path names, a run directory or a metrics file, was read as a
 * run before under any spelling (RUN_DIR and ./RUN_DIR, DIR/metrics.jsonl and DIR): it was a
 * second run of the same rows, every curve drawn twice. Else it is recorded. */
static int run_read_before(rp_ctx *c, const char *path, const char *what) {
    const struct rp_read_file *e = read_entry(c, path);
    if (e) {
        fdpo_rp_warn(c, "%s: the same %s as %s, read already; not read again", path, what, e->path);
        return 1;
    }
    record_read(c, path);
    return 0;
}

int fdpo_rp_load_run(rp_ctx *c, const char *dir) {
    struct stat st;
    if (stat(dir, &st) != 0) return fdpo_error("%s: no such run directory (%s)", dir, strerror(errno));
    if (S_ISREG(st.st_mode)) {           /* a file given directly: dispatch on its kind */
        if (ends_with(dir, ".csv")) return fdpo_rp_load_lab(c, dir, 0) < 0 ? -1 : 0;
        if (is_samples_name(base_name(dir))) return fdpo_rp_load_samples(c, dir, NULL, 1);
        if (ends_with(dir, ".jsonl")) {
            if (run_read_before(c, dir, "file")) return 0;
            char *parent = fdpo_strdup(dir);
            char *slash = strrchr(parent, '/');
            if (slash) *slash = 0; else strcpy(parent, ".");
            char *name = fdpo_strdup(base_name(parent));
            rp_run *r = new_run(c, parent, name);
            free(parent); free(name);
            load_metrics(c, r, dir);
            make_label(r);
            return 0;
        }
        return fdpo_rp_load_eval(c, dir, NULL, 1);
    }
    if (!S_ISDIR(st.st_mode)) return fdpo_error("%s: not a run directory", dir);
    if (run_read_before(c, dir, "directory")) return 0;
    size_t n_names;
    char **names = list_dir(dir, &n_names);
    if (!names && n_names == 0) {
        DIR *d = opendir(dir);
        if (!d) return fdpo_error("%s: cannot read directory (%s)", dir, strerror(errno));
        closedir(d);
    }
    char *name = fdpo_strdup(base_name(dir));
    rp_run *r = new_run(c, dir, name);
    free(name);
    size_t run_index = c->n_runs - 1;
    int found = 0;
    char *mpath = fdpo_path_join(dir, "metrics.jsonl");
    if (is_file(mpath)) {   /* found either way: a warning says where its rows went */
        if (!run_read_before(c, mpath, "file")) load_metrics(c, r, mpath);
        found = 1;
    }
    free(mpath);
    discover_settings(c, r, names, n_names);
    fdpo_rp_loop_discover(c, r);
    make_label(r);
    /* eval*.json here and *.json under eval/; *.csv under lab/ and here (those need a divergence column) */
    for (size_t i = 0; i < n_names; i++) {
        char *path = fdpo_path_join(dir, names[i]);
        if (is_eval_name(names[i]) && is_file(path)) { fdpo_rp_load_eval(c, path, &c->runs[run_index], 0); found = 1; }
        else if (is_samples_name(names[i]) && is_file(path)) { fdpo_rp_load_samples(c, path, &c->runs[run_index], 0); found = 1; }
        else if (ends_with(names[i], ".csv") && is_file(path)) found |= fdpo_rp_load_lab(c, path, 1) == 1;
        free(path);
    }
    static const char *const subs[] = {"eval", "lab"};
    for (int s = 0; s < 2; s++) {
        char *sub = fdpo_path_join(dir, subs[s]);
        if (is_dir(sub)) {
            size_t m;
            char **sn = list_dir(sub, &m);
            for (size_t i = 0; i < m; i++) {
                char *path = fdpo_path_join(sub, sn[i]);
                if (!is_file(path)) { free(path); continue; }
                if (s == 0 && ends_with(sn[i], ".json")) { fdpo_rp_load_eval(c, path, &c->runs[run_index], 0); found = 1; }
                if (s == 0 && is_samples_name(sn[i])) { fdpo_rp_load_samples(c, path, &c->runs[run_index], 0); found = 1; }
                if (s == 1 && (ends_with(sn[i], ".csv") || ends_with(sn[i], ".json"))) { fdpo_rp_load_lab(c, path, 0); found = 1; }
                free(path);
            }
            free_list(sn, m);
        }
        free(sub);
    }
    free_list(names, n_names);
    if (!found) fdpo_rp_warn(c, "%s: no metrics.jsonl, eval*.json, *samples*.jsonl or lab CSV files (see docs/report.md)", dir);
    return 0;
}

/* ---------------------------------------------------------------- eval JSON ---- */

static const char *const K_NAME[] = {"name", "policy", "label", "model", "checkpoint", "id", NULL};
static const char *const K_SAMPLES[] = {"samples", "completions", "generations", NULL};
static const char *const K_COMPLETION[] = {"completion", "text", "response", "output", "sample", NULL};
static const char *const K_REWARD[] = {"reward", "score", NULL};
static const char *const SKIP_KEYS[] = {"samples", "completions", "generations", "config", "args", "settings", NULL};

static int in_list(const char *s, const char *const *list) {
    for (; *list; list++) if (!strcmp(s, *list)) return 1;
    return 0;
}

/* Numbers of obj, flattened: nested objects join keys with '.', except "metrics" which
 * is transparent. Booleans and strings are not metrics. */
static void flatten(cJSON *out, const cJSON *obj, const char *prefix, int depth) {
    if (depth > 4) return;
    for (const cJSON *it = obj->child; it; it = it->next) {
        if (!it->string) continue;
        char key[256];
        int w = prefix[0] ? snprintf(key, sizeof key, "%s.%s", prefix, it->string)
                          : snprintf(key, sizeof key, "%s", it->string);
        if (w < 0 || (size_t)w >= sizeof key) continue;     /* absurdly long name: skip */
        if (cJSON_IsNumber(it) && isfinite(it->valuedouble)) {
            if (!cJSON_GetObjectItemCaseSensitive(out, key)) cJSON_AddNumberToObject(out, key, it->valuedouble);
        } else if (cJSON_IsObject(it) && !(depth == 0 && in_list(it->string, SKIP_KEYS))) {
            flatten(out, it, strcmp(it->string, "metrics") ? key : prefix, depth + 1);
        }
    }
}

/* The sample-completions table shows each policy's first completion per prompt, so a policy
 * keeps one sample per prompt, for its first RP_MAX_SAMPLE_PROMPTS prompts (the samples past
 * it are counted and said). The (policy, prompt) pairs kept are in a hash set, so a file of
 * many samples is read in linear time. */
#define RP_MAX_SAMPLE_PROMPTS 5000
typedef struct { size_t pol; const char *prompt; } rp_kept;          /* prompt NULL: a free slot */
typedef struct { rp_kept *slot; size_t cap, n; } rp_kept_set;
typedef struct { rp_kept_set *set; size_t pol, *count, *dropped; } rp_keep;   /* where a policy's samples go */

static size_t kept_slot(const rp_kept_set *h, size_t pol, const char *prompt) {
    unsigned long long x = 1469598103934665603ull ^ (unsigned long long)pol;    /* FNV-1a */
    for (const char *q = prompt; *q; q++) x = (x ^ (unsigned char)*q) * 1099511628211ull;
    size_t i = (size_t)x & (h->cap - 1);
    while (h->slot[i].prompt && (h->slot[i].pol != pol || strcmp(h->slot[i].prompt, prompt))) i = (i + 1) & (h->cap - 1);
    return i;
}

static int kept_has(const rp_kept_set *h, size_t pol, const char *prompt) {
    return h->cap && h->slot[kept_slot(h, pol, prompt)].prompt != NULL;
}

/* Adds (pol, prompt), not in the set yet; prompt must outlive the set. */
static void kept_add(rp_kept_set *h, size_t pol, const char *prompt) {
    if (2 * (h->n + 1) > h->cap) {      /* at most half full */
        size_t cap = h->cap ? 2 * h->cap : 64;
        rp_kept_set g = {fdpo_calloc(cap, sizeof *g.slot), cap, h->n};
        for (size_t i = 0; i < h->cap; i++)
            if (h->slot[i].prompt) g.slot[kept_slot(&g, h->slot[i].pol, h->slot[i].prompt)] = h->slot[i];
        free(h->slot);
        *h = g;
    }
    h->slot[kept_slot(h, pol, prompt)] = (rp_kept){pol, prompt};
    h->n++;
}

/* Appends smp to list when its policy has no sample of its prompt yet and is under the cap;
 * else frees it. */
static void keep_sample(const rp_keep *k, cJSON *list, cJSON *smp) {
    const char *prompt = cJSON_GetObjectItemCaseSensitive(smp, "prompt")->valuestring;
    if (kept_has(k->set, k->pol, prompt)) { cJSON_Delete(smp); return; }
    if (*k->count >= RP_MAX_SAMPLE_PROMPTS) { ++*k->dropped; cJSON_Delete(smp); return; }
    cJSON_AddItemToArray(list, smp);
    kept_add(k->set, k->pol, prompt);
    ++*k->count;
}

static void warn_dropped_samples(rp_ctx *c, const char *policy, const char *path, size_t dropped) {
    if (dropped)
        fdpo_rp_warn(c, "%s: policy %s: %zu sample%s of prompts past its first %d not kept (the sample table shows the "
                     "first completion per prompt, for at most %d prompts)", path, policy, dropped, dropped == 1 ? "" : "s",
                     RP_MAX_SAMPLE_PROMPTS, RP_MAX_SAMPLE_PROMPTS);
}

static void add_sample(cJSON *out, const cJSON *prompt, const cJSON *text, const cJSON *reward, const rp_keep *keep) {
    if (!cJSON_IsString(text)) return;
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "prompt", cJSON_IsString(prompt) ? prompt->valuestring : "");
    cJSON_AddStringToObject(s, "completion", text->valuestring);
    if (cJSON_IsNumber(reward) && isfinite(reward->valuedouble)) cJSON_AddNumberToObject(s, "reward", reward->valuedouble);
    if (keep) keep_sample(keep, out, s);
    else cJSON_AddItemToArray(out, s);
}

static cJSON *collect_samples(const cJSON *arr, size_t *dropped) {
    cJSON *out = cJSON_CreateArray();
    if (!cJSON_IsArray(arr)) return out;
    rp_kept_set set = {0};
    size_t count = 0;
    const rp_keep keep = {&set, 0, &count, dropped};
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (cJSON_IsString(it)) { add_sample(out, NULL, it, NULL, &keep); continue; }
        if (!cJSON_IsObject(it)) continue;
        const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(it, "prompt");
        const cJSON *text = fdpo_rp_get(it, K_COMPLETION), *reward = fdpo_rp_get(it, K_REWARD);
        if (text) { add_sample(out, prompt, text, reward, &keep); continue; }
        const cJSON *many = fdpo_rp_get(it, K_SAMPLES);       /* {"prompt", "completions": [...]} */
        if (cJSON_IsArray(many)) {
            const cJSON *rewards = cJSON_GetObjectItemCaseSensitive(it, "rewards");
            const cJSON *first = cJSON_GetArrayItem(many, 0);
            if (cJSON_IsObject(first)) add_sample(out, prompt, fdpo_rp_get(first, K_COMPLETION), fdpo_rp_get(first, K_REWARD), &keep);
            else add_sample(out, prompt, first, cJSON_GetArrayItem(rewards, 0), &keep);
        }
    }
    free(set.slot);
    return out;
}

/* The policy's own name (its last path component) holds a word (letters and digits, split at
 * anything else) that is ref, sft, base or init, or reference, baseline or initial, with or
 * without a number after it ("ref", "sft-model", "base_ref", "gpt2 (base)", "Reference model",
 * "sft0"): a word that only contains one ("preference-exps", "refined") or a parent directory
 * ("runs/sft/final") is no sign. */
int fdpo_rp_looks_like_reference(const char *name) {
    static const char *const pats[] = {"reference", "baseline", "initial", "ref", "sft", "base", "init", NULL};
    const char *own = base_name(name);
    for (const char *w = own; *w;) {
        size_t n = 0;
        while (isalnum((unsigned char)w[n])) n++;
        for (const char *const *p = pats; n && *p; p++) {
            size_t k = strlen(*p), d = k;
            while (d < n && isdigit((unsigned char)w[d])) d++;
            if (n >= k && d == n && !strncasecmp(w, *p, k)) return 1;
        }
        w += n ? n : 1;
    }
    return 0;
}

static void add_policy(rp_ctx *c, const cJSON *p, const char *key_name, const char *path,
                       const rp_run *run, size_t index, size_t n_in_file) {
    const cJSON *nm = fdpo_rp_get(p, K_NAME);
    char buf[64];
    const char *name;
    if (cJSON_IsString(nm) && nm->valuestring[0]) name = nm->valuestring;
    else if (key_name) name = key_name;
    else if (run && n_in_file == 1) name = run->name;
    else { snprintf(buf, sizeof buf, "policy %zu", index + 1); name = buf; }

    c->pols = fdpo_realloc(c->pols, (c->n_pols + 1) * sizeof *c->pols);
    rp_policy *q = &c->pols[c->n_pols++];
    memset(q, 0, sizeof *q);
    q->name = fdpo_strdup(name);
    q->source = fdpo_strdup(path);
    q->run = run ? fdpo_strdup(run->name) : NULL;
    q->run_index = run ? (long)(run - c->runs) : -1;
    q->metrics = cJSON_CreateObject();
    flatten(q->metrics, p, "", 0);
    size_t dropped = 0;
    q->samples = collect_samples(fdpo_rp_get(p, K_SAMPLES), &dropped);
    warn_dropped_samples(c, q->name, path, dropped);

    char *div = NULL, *loss = NULL; double beta = 0, alpha = 0; int hb = 0, ha = 0;
    find_settings(c, path, p, 0, &div, &beta, &hb, &loss, &alpha, &ha);
    free(loss);
    if (div && !strcmp(div, "alpha") && ha) {
        char a[64]; snprintf(a, sizeof a, "alpha:%g", alpha);
        free(div); div = fdpo_strdup(a);
    }
    /* A policy without settings inherits its run's, unless it is the reference/SFT model
     * evaluated alongside (several policies in the file, named like one). */
    if (!div && !hb && run && (n_in_file == 1 || !fdpo_rp_looks_like_reference(name))) {
        if (run->divergence) div = fdpo_strdup(run->divergence);
        beta = run->beta; hb = run->has_beta;
    }
    q->divergence = div;
    q->beta = beta; q->has_beta = hb;
}

static int is_policy_object(const cJSON *o) {
    if (!cJSON_IsObject(o)) return 0;
    static const char *const marks[] = {"reward_mean", "kl_seq", "kl_token", "entropy", "metrics", "samples", NULL};
    return fdpo_rp_get(o, marks) != NULL;
}

/* The entry of c->read_files for path's file under any spelling, or NULL (never read, or no
 * such file). */
static const struct rp_read_file *read_entry(const rp_ctx *c, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return NULL;
    for (size_t i = 0; i < c->n_read_files; i++)
        if (c->read_files[i].dev == (unsigned long long)st.st_dev && c->read_files[i].ino == (unsigned long long)st.st_ino)
            return &c->read_files[i];
    return NULL;
}

static void record_read(rp_ctx *c, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return;
    c->read_files = fdpo_realloc(c->read_files, (c->n_read_files + 1) * sizeof *c->read_files);
    c->read_files[c->n_read_files++] = (struct rp_read_file){(unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
                                                             fdpo_strdup(path)};
}

/* 1 (with a warning) when path is a file read before under any spelling; else records it. */
static int read_before(rp_ctx *c, const char *path) {
    const struct rp_read_file *e = read_entry(c, path);
    if (e) {
        fdpo_rp_warn(c, "%s: the same file as %s, read already; not read again", path, e->path);
        return 1;
    }
    record_read(c, path);
    return 0;
}

rp_lab *fdpo_rp_lab_read_before(rp_ctx *c, const char *path) {
    const struct rp_read_file *e = read_entry(c, path);
    for (size_t i = 0; e && i < c->n_labs; i++)
        if (!strcmp(c->labs[i].source, e->path)) return &c->labs[i];
    return NULL;
}

int fdpo_rp_load_eval(rp_ctx *c, const char *path, const rp_run *run, int explicit_file) {
    if (!is_file(path)) return fdpo_error("%s: no such eval file", path);
    if (read_before(c, path)) return 0;
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) return -1;
    cJSON *doc = parse_file(c, path, text, len, "eval file skipped", 1);
    if (doc) {
        rp_nonfinite nf = {.path = path, .text = text, .len = len, .line_no = 1, .seen = cJSON_CreateObject()};
        warn_nonfinite(c, &nf, doc, NULL);
        cJSON_Delete(nf.seen);
    }
    free(text);
    if (!doc) return 0;
    size_t before = c->n_pols;
    const cJSON *list = cJSON_IsObject(doc) ? cJSON_GetObjectItemCaseSensitive(doc, "policies") : NULL;
    if (!list && cJSON_IsObject(doc) && !is_policy_object(doc)) {
        list = cJSON_GetObjectItemCaseSensitive(doc, "results");
        if (!list) list = doc;                /* {"name": {metrics}, ...} */
    }
    if (!list && cJSON_IsObject(doc)) {      /* one policy object; a bare number, string or null is none */
        add_policy(c, doc, NULL, path, run, 0, 1);
    } else if (cJSON_IsArray(doc) || cJSON_IsArray(list)) {
        const cJSON *arr = cJSON_IsArray(doc) ? doc : list;
        size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, arr) {
            if (cJSON_IsObject(it)) add_policy(c, it, NULL, path, run, i, n);
            i++;
        }
    } else if (cJSON_IsObject(list)) {
        size_t n = 0, i = 0;
        for (const cJSON *it = list->child; it; it = it->next) n += is_policy_object(it);
        for (const cJSON *it = list->child; it; it = it->next)
            if (is_policy_object(it)) add_policy(c, it, it->string, path, run, i++, n);
    }
    /* other JSON in a run directory (eval_summary.json of `fdpo dpo`, ...) is not an error */
    if (c->n_pols == before && explicit_file)
        fdpo_rp_warn(c, "%s: no policy metrics found (expected {\"policies\": [...]}, see docs/report.md)", path);
    cJSON_Delete(doc);
    return 0;
}

/* ---------------------------------------------------------------- samples JSONL ---- */

/* One line per sample, as `fdpo eval` writes them: {"policy", "prompt", "completion",
 * "reward", ...}. Kept aside until every policy is loaded (fdpo_rp_attach_samples). */
int fdpo_rp_load_samples(rp_ctx *c, const char *path, const rp_run *run, int explicit_file) {
    if (!is_file(path)) return fdpo_error("%s: no such samples file", path);
    if (read_before(c, path)) return 0;
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) return -1;
    if (!c->pending) c->pending = cJSON_CreateArray();
    size_t line = 0, kept = 0, bad = 0;
    char *p = text, *end = text + len;
    while (p < end) {
        char *e = memchr(p, '\n', (size_t)(end - p));
        size_t n = e ? (size_t)(e - p) : (size_t)(end - p);
        line++;
        int blank = strspn(p, " \t\r") >= n;
        cJSON *obj = blank ? NULL : fdpo_jsonl_parse_object_any_bytes(path, line, p, n);   /* bad bytes shown as U+FFFD */
        if (obj) {   /* a NUL would cut the text shown: refused as every JSONL reader does */
            char where[PATH_MAX + 32];
            snprintf(where, sizeof where, "%s:%zu", path, line);
            if (fdpo_jsonl_check_nul(where, p, n, obj)) { cJSON_Delete(obj); obj = NULL; }
        }
        const cJSON *text_item = obj ? fdpo_rp_get(obj, K_COMPLETION) : NULL;
        if (obj && cJSON_IsString(text_item)) {
            /* every line is kept until its policy is known: fdpo_rp_attach_samples keeps one per
             * (policy, prompt) */
            cJSON *tmp = cJSON_CreateArray();
            add_sample(tmp, cJSON_GetObjectItemCaseSensitive(obj, "prompt"), text_item, fdpo_rp_get(obj, K_REWARD), NULL);
            cJSON *smp = cJSON_DetachItemFromArray(tmp, 0);
            cJSON_Delete(tmp);
            const cJSON *pol = fdpo_rp_get(obj, K_NAME);
            if (cJSON_IsString(pol)) cJSON_AddStringToObject(smp, "policy", pol->valuestring);
            cJSON_AddNumberToObject(smp, "run", run ? (double)(run - c->runs) : -1);
            cJSON_AddStringToObject(smp, "file", path);
            cJSON_AddItemToArray(c->pending, smp);
            kept++;
        } else if (!blank && bad++ < 3) {
            if (obj) fdpo_rp_warn(c, "%s:%zu: not a sample (a JSON object with \"completion\"), line skipped", path, line);
            else warn_bad_line(c, p, n, !e);
        }
        cJSON_Delete(obj);
        if (!e) break;
        p = e + 1;
    }
    if (bad > 3) fdpo_rp_warn(c, "%s: %zu more lines skipped", path, bad - 3);
    if (!kept && explicit_file) fdpo_rp_warn(c, "%s: no samples found", path);
    free(text);
    return 0;
}

void fdpo_rp_attach_samples(rp_ctx *c) {
    if (!c->pending) return;
    struct { size_t count, dropped; char *file; } *per = NULL;   /* per policy, indexed as c->pols */
    size_t n_per = 0;
    rp_kept_set set = {0};
    cJSON *smp;
    while ((smp = cJSON_DetachItemFromArray(c->pending, 0))) {
        const cJSON *pol = cJSON_GetObjectItemCaseSensitive(smp, "policy");
        long run = (long)cJSON_GetObjectItemCaseSensitive(smp, "run")->valuedouble;
        rp_policy *to = NULL;
        size_t in_run = 0;
        for (size_t i = 0; i < c->n_pols && !to; i++)
            if (cJSON_IsString(pol) && !strcmp(c->pols[i].name, pol->valuestring)) to = &c->pols[i];
        for (size_t i = 0; i < c->n_pols && !to && run >= 0; i++)
            if (c->pols[i].run_index == run) in_run++;
        for (size_t i = 0; i < c->n_pols && !to && in_run == 1; i++)
            if (c->pols[i].run_index == run) to = &c->pols[i];
        if (!to) {  /* samples of a policy with no metrics: show them anyway */
            const char *name = cJSON_IsString(pol) ? pol->valuestring
                             : run >= 0 ? c->runs[run].name : base_name(cJSON_GetObjectItem(smp, "file")->valuestring);
            for (size_t i = 0; i < c->n_pols && !to; i++) if (!strcmp(c->pols[i].name, name)) to = &c->pols[i];
            if (!to) {
                c->pols = fdpo_realloc(c->pols, (c->n_pols + 1) * sizeof *c->pols);
                to = &c->pols[c->n_pols++];
                memset(to, 0, sizeof *to);
                to->name = fdpo_strdup(name);
                to->source = fdpo_strdup(cJSON_GetObjectItem(smp, "file")->valuestring);
                to->run_index = run;
                if (run >= 0) {
                    const rp_run *r = &c->runs[run];
                    to->run = fdpo_strdup(r->name);
                    if (r->divergence) to->divergence = fdpo_strdup(r->divergence);
                    to->beta = r->beta; to->has_beta = r->has_beta;
                }
                to->metrics = cJSON_CreateObject();
                to->samples = cJSON_CreateArray();
            }
        }
        size_t at = (size_t)(to - c->pols);
        if (at >= n_per) {
            per = fdpo_realloc(per, c->n_pols * sizeof *per);
            memset(per + n_per, 0, (c->n_pols - n_per) * sizeof *per);
            n_per = c->n_pols;
        }
        if (!per[at].file) {    /* first sample for this policy: its eval JSON's samples are kept already */
            per[at].file = fdpo_strdup(cJSON_GetObjectItem(smp, "file")->valuestring);
            const cJSON *had;
            cJSON_ArrayForEach(had, to->samples) {
                const char *prompt = cJSON_GetObjectItemCaseSensitive(had, "prompt")->valuestring;
                if (!kept_has(&set, at, prompt)) kept_add(&set, at, prompt);
                per[at].count++;
            }
        }
        cJSON_DeleteItemFromObject(smp, "policy");
        cJSON_DeleteItemFromObject(smp, "run");
        cJSON_DeleteItemFromObject(smp, "file");
        keep_sample(&(rp_keep){&set, at, &per[at].count, &per[at].dropped}, to->samples, smp);
    }
    for (size_t i = 0; i < n_per; i++) {
        warn_dropped_samples(c, c->pols[i].name, per[i].file, per[i].dropped);
        free(per[i].file);
    }
    free(per);
    free(set.slot);
}

/* ---------------------------------------------------------------- policies <-> runs ---- */

static int same_dir(const char *a, const char *b) {
    char *ra = realpath(a, NULL), *rb = realpath(b, NULL);
    int same = ra && rb && !strcmp(ra, rb);
    free(ra); free(rb);
    return same;
}

/* `fdpo eval` names each policy by the checkpoint path it was given, and one eval file often
 * covers several runs. Link such a policy to the run directory it names (same directory, else
 * a unique directory name) and take that run's settings; a policy naming a directory that is
 * not among the runs gets the settings from the directory's files. */
void fdpo_rp_link_policies(rp_ctx *c) {
    for (size_t i = 0; i < c->n_pols; i++) {
        rp_policy *q = &c->pols[i];
        if (q->run_index >= 0) continue;
        long hit = -1;
        for (size_t k = 0; k < c->n_runs && hit < 0; k++) if (same_dir(q->name, c->runs[k].dir)) hit = (long)k;
        if (hit < 0) {
            char *bn = fdpo_strdup(base_name(q->name));
            for (size_t k = 0; k < c->n_runs && hit != -2; k++)
                if (!strcmp(bn, c->runs[k].name)) hit = hit == -1 ? (long)k : -2;
            free(bn);
        }
        int unset = !q->divergence && !q->has_beta;
        if (hit >= 0) {
            const rp_run *r = &c->runs[hit];
            q->run_index = hit;
            free(q->run);
            q->run = fdpo_strdup(r->name);
            if (unset) {
                if (r->divergence) q->divergence = fdpo_strdup(r->divergence);
                q->beta = r->beta; q->has_beta = r->has_beta;
            }
        } else if (unset && is_dir(q->name)) {
            rp_run tmp;
            memset(&tmp, 0, sizeof tmp);
            tmp.dir = q->name;
            tmp.rows = cJSON_CreateArray();
            size_t n;
            char **names = list_dir(q->name, &n);
            discover_settings(c, &tmp, names, n);
            free_list(names, n);
            q->divergence = tmp.divergence;
            q->beta = tmp.beta; q->has_beta = tmp.has_beta;
            free(tmp.loss); free(tmp.config_file); free(tmp.kind);
            cJSON_Delete(tmp.rows);
        }
    }
}

/* ---------------------------------------------------------------- lab CSV ---- */

/* One CSV record starting at *p (RFC 4180 quoting, CR LF or LF). Returns fields, advances
 * *p and *line past the record. A '"' opens a quoted field only at the field's start (inside
 * an unquoted field it is a character, as RFC 4180 and Python's csv read it: ab"c took the
 * rest of the file into one field); *open_quote: the end of the text came inside quotes. */
static char **csv_record(const char **p, const char *end, size_t *line, size_t *n_fields, int *open_quote) {
    char **f = NULL; size_t n = 0;
    rp_buf cur = {0};
    const char *s = *p;
    int quoted = 0, done = 0, at_start = 1;
    *open_quote = 0;
    while (!done) {
        if (s >= end) { done = 1; *open_quote = quoted; }
        else if (quoted) {
            if (*s == '"' && s + 1 < end && s[1] == '"') { fdpo_rp_put(&cur, "\"", 1); s += 2; continue; }
            if (*s == '"') { quoted = 0; s++; continue; }
            if (*s == '\n' || (*s == '\r' && (s + 1 >= end || s[1] != '\n'))) (*line)++;
            fdpo_rp_put(&cur, s, 1); s++;
            continue;
        } else if (*s == '"' && at_start) { quoted = 1; at_start = 0; s++; continue; }
        else if (*s == ',') {
            /* a field ends */
        } else if (*s == '\n' || *s == '\r') {   /* a record ends at \n, \r\n or a bare \r, as in Python's csv */
            if (*s == '\r' && s + 1 < end && s[1] == '\n') s++;
            done = 1; (*line)++;
        } else { fdpo_rp_put(&cur, s, 1); s++; at_start = 0; continue; }
        at_start = 1;
        f = fdpo_realloc(f, (n + 1) * sizeof *f);
        f[n++] = cur.p ? cur.p : fdpo_strdup("");
        cur.p = NULL; cur.n = cur.cap = 0;
        if (s < end) s++;
    }
    *p = s;
    *n_fields = n;
    return f;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    for (char *t = s + strlen(s); t > s && isspace((unsigned char)t[-1]); ) *--t = 0;
    return s;
}

static size_t col_index(rp_lab *L, const char *name) {
    for (size_t i = 0; i < L->n_cols; i++) if (!strcmp(L->cols[i], name)) return i;
    L->cols = fdpo_realloc(L->cols, (L->n_cols + 1) * sizeof *L->cols);
    L->cols[L->n_cols] = fdpo_strdup(name);
    return L->n_cols++;
}

static int lab_from_json(rp_ctx *c, const char *path, const char *text, size_t len, int must_be_lab) {
    cJSON *doc = parse_file(c, path, text, len, "lab file skipped", 1);
    if (!doc) return 0;
    if (!cJSON_IsArray(doc)) {
        fdpo_rp_warn(c, "%s:1: not a JSON array, lab file skipped", path);
        cJSON_Delete(doc);
        return 0;
    }
    rp_nonfinite nf = {.path = path, .text = text, .len = len, .line_no = 1, .seen = cJSON_CreateObject()};
    warn_nonfinite(c, &nf, doc, NULL);
    cJSON_Delete(nf.seen);
    rp_lab L = {0};
    L.source = fdpo_strdup(path);
    L.rows = cJSON_CreateArray();
    const cJSON *o;
    cJSON_ArrayForEach(o, doc)
        for (const cJSON *it = cJSON_IsObject(o) ? o->child : NULL; it; it = it->next) col_index(&L, it->string);
    size_t i = 0;
    cJSON_ArrayForEach(o, doc) {
        i++;
        if (!cJSON_IsObject(o)) { fdpo_rp_warn(c, "%s: element %zu is not an object, skipped", path, i); continue; }
        cJSON *row = cJSON_CreateArray();
        for (size_t k = 0; k < L.n_cols; k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, L.cols[k]);
            if (cJSON_IsNumber(v) && isfinite(v->valuedouble)) cJSON_AddItemToArray(row, cJSON_CreateNumber(v->valuedouble));
            else if (cJSON_IsString(v)) cJSON_AddItemToArray(row, cJSON_CreateString(v->valuestring));
            else if (cJSON_IsBool(v)) cJSON_AddItemToArray(row, cJSON_CreateNumber(cJSON_IsTrue(v)));
            else cJSON_AddItemToArray(row, cJSON_CreateNull());
        }
        cJSON_AddItemToArray(L.rows, row);
    }
    cJSON_Delete(doc);
    int has_div = 0;
    for (size_t k = 0; k < L.n_cols; k++) has_div |= !strcmp(L.cols[k], "divergence");
    if (L.n_cols == 0 || (must_be_lab && !has_div)) {
        if (!must_be_lab) fdpo_rp_warn(c, "%s: no columns, file skipped", path);
        free(L.source);
        for (size_t k = 0; k < L.n_cols; k++) free(L.cols[k]);
        free(L.cols);
        cJSON_Delete(L.rows);
        return 0;
    }
    c->labs = fdpo_realloc(c->labs, (c->n_labs + 1) * sizeof *c->labs);
    c->labs[c->n_labs++] = L;
    return 1;
}

/* Returns 1 when a table was added, 0 when skipped (with must_be_lab and no divergence
 * column, or unreadable), -1 when the file is missing. */
static int load_lab_file(rp_ctx *c, const char *path, int must_be_lab) {
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) return -1;
    const size_t bom = fdpo_jsonl_bom(text, len);   /* a UTF-8 BOM is not data (as every reader) */
    size_t lead = bom + strspn(text + bom, " \t\r\n");
    if (text[lead] == '[') {     /* `fdpo lab --format json`: an array of flat objects */
        int got = lab_from_json(c, path, text + bom, len - bom, must_be_lab);
        free(text);
        return got;
    }
    const char *p = text + bom, *end = text + len;
    size_t line = 1, nh;
    int open_quote;
    char **hdr = csv_record(&p, end, &line, &nh, &open_quote);
    int has_div = 0;
    for (size_t i = 0; i < nh; i++) { char *t = trim(hdr[i]); memmove(hdr[i], t, strlen(t) + 1); has_div |= !strcmp(hdr[i], "divergence"); }
    if ((must_be_lab && !has_div) || nh == 0 || (nh == 1 && !hdr[0][0])) {
        if (!must_be_lab) fdpo_rp_warn(c, "%s:1: no CSV header, file skipped", path);
        for (size_t i = 0; i < nh; i++) free(hdr[i]);
        free(hdr); free(text);
        return 0;
    }
    c->labs = fdpo_realloc(c->labs, (c->n_labs + 1) * sizeof *c->labs);
    rp_lab *L = &c->labs[c->n_labs++];
    L->source = fdpo_strdup(path);
    L->cols = hdr; L->n_cols = nh;
    L->on_frontier = 0;
    L->rows = cJSON_CreateArray();
    size_t bad_cells = 0;
    while (p < end) {
        size_t at = line, nf;
        char **f = csv_record(&p, end, &line, &nf, &open_quote);
        int blank = nf == 1 && !trim(f[0])[0];
        if (open_quote) {   /* every line after it would be this row's field: said, not kept */
            fdpo_rp_warn(c, "%s:%zu: a quoted field opened on this line is not closed by the end of the file; "
                         "lines %zu-%zu skipped", path, at, at, end[-1] == '\n' || end[-1] == '\r' ? line - 1 : line);
        } else if (!blank && nf != nh) {
            fdpo_rp_warn(c, "%s:%zu: %zu fields, header has %zu; row skipped", path, at, nf, nh);
        } else if (!blank) {
            cJSON *row = cJSON_CreateArray();
            for (size_t i = 0; i < nf; i++) {
                char *v = trim(f[i]), *e, where[600];
                snprintf(where, sizeof where, "%s:%zu: column \"%s\"", path, at, hdr[i]);
                double x;
                if (!*v) cJSON_AddItemToArray(row, cJSON_CreateNull());
                else if (!fdpo_parse_number(where, v, &x)) cJSON_AddItemToArray(row, cJSON_CreateNumber(x));
                else {
                    /* text ("rkl") stays text; nan/inf (how `fdpo lab` writes them) are no
                     * point; any other cell strtod would read ("0x10", "1e-400") is refused
                     * by the one number rule: kept as text, and said (the first 3 of a file) */
                    x = strtod(v, &e);
                    int number_like = e != v && !*e, spelt_nonfinite = number_like && !isfinite(x) && !strpbrk(v, "0123456789");
                    if (spelt_nonfinite) cJSON_AddItemToArray(row, cJSON_CreateNull());
                    else {
                        if (number_like && bad_cells++ < 3)
                            fdpo_rp_warn(c, "%s; kept as text, not plotted", fdpo_last_error());
                        cJSON_AddItemToArray(row, cJSON_CreateString(v));
                    }
                }
            }
            cJSON_AddItemToArray(L->rows, row);
        }
        for (size_t i = 0; i < nf; i++) free(f[i]);
        free(f);
    }
    if (bad_cells > 3) fdpo_rp_warn(c, "%s: %zu more cells not read as numbers, kept as text", path, bad_cells - 3);
    free(text);
    return 1;
}

/* Read once: a file given twice (another spelling, or a run's own lab file given again) adds
 * its table once. */
int fdpo_rp_load_lab(rp_ctx *c, const char *path, int must_be_lab) {
    if (!is_file(path)) return fdpo_error("%s: no such lab file", path);
    const struct rp_read_file *e = read_entry(c, path);
    if (e) {
        fdpo_rp_warn(c, "%s: the same file as %s, read already; not read again", path, e->path);
        return fdpo_rp_lab_read_before(c, path) != NULL;
    }
    int got = load_lab_file(c, path, must_be_lab);
    if (got == 1) record_read(c, path);    /* a skipped file may still be read as a table later */
    return got;
}

/* ---------------------------------------------------------------- cleanup ---- */

size_t fdpo_rp_runs_with_rows(const rp_ctx *c) {
    size_t n = 0;
    for (size_t i = 0; i < c->n_runs; i++) n += c->runs[i].rows->child != NULL;
    return n;
}

void fdpo_rp_number_runs(rp_ctx *c) {
    size_t n = 0;
    for (size_t i = 0; i < c->n_runs; i++) { c->runs[i].slot = n; n += c->runs[i].rows->child != NULL; }
}

size_t fdpo_rp_run_slot(const rp_ctx *c, size_t i) {
    return i < c->n_runs ? c->runs[i].slot : fdpo_rp_runs_with_rows(c);
}

void fdpo_rp_ctx_free(rp_ctx *c) {
    for (size_t i = 0; i < c->n_runs; i++) {
        rp_run *r = &c->runs[i];
        free(r->dir); free(r->name); free(r->lines); free(r->label); free(r->divergence); free(r->loss); free(r->config_file); free(r->kind);
        cJSON_Delete(r->rows);
    }
    for (size_t k = 0; k < 2; k++) {
        rp_policy *list = k ? c->proxy : c->pols;
        for (size_t i = 0, n = k ? c->n_proxy : c->n_pols; i < n; i++) {
            rp_policy *q = &list[i];
            free(q->from);
            free(q->name); free(q->run); free(q->source); free(q->divergence);
            cJSON_Delete(q->metrics); cJSON_Delete(q->samples);
        }
    }
    for (size_t i = 0; i < c->n_labs; i++) {
        rp_lab *L = &c->labs[i];
        free(L->source);
        for (size_t j = 0; j < L->n_cols; j++) free(L->cols[j]);
        free(L->cols);
        cJSON_Delete(L->rows);
    }
    for (size_t i = 0; i < c->n_warnings; i++) free(c->warnings[i]);
    cJSON_Delete(c->pending);
    for (size_t i = 0; i < c->n_read_files; i++) free(c->read_files[i].path);
    free(c->read_files);
    for (size_t i = 0; i < c->n_proxy_read_files; i++) free(c->proxy_read_files[i].path);
    free(c->proxy_read_files);
    free(c->runs); free(c->pols); free(c->proxy); free(c->labs); free(c->warnings);
    memset(c, 0, sizeof *c);
}
