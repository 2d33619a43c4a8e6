/* Internals of src/report: the inputs as read (runs, evaluated policies, lab tables), a
 * growable string buffer, and the two halves of fdpo_report_write (load.c, render.c). */
#ifndef FDPO_REPORT_INTERNAL_H
#define FDPO_REPORT_INTERNAL_H
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cjson/cJSON.h>
#include "fdpo/report.h"

/* ---- string buffer ---- */
typedef struct { char *p; size_t n, cap; } rp_buf;
void fdpo_rp_put(rp_buf *b, const char *s, size_t n);
void fdpo_rp_puts(rp_buf *b, const char *s);
void fdpo_rp_printf(rp_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fdpo_rp_html(rp_buf *b, const char *s);           /* HTML-escaped text */
void fdpo_rp_html_n(rp_buf *b, const char *s, size_t n);
void fdpo_rp_num(rp_buf *b, double v);                 /* compact number for tables; "–" if NaN */
void fdpo_rp_fix_utf8(rp_buf *b);                      /* invalid UTF-8 bytes -> U+FFFD */

/* ---- inputs ---- */
typedef struct {
    char *dir, *name;          /* path as given, its last component */
    char *label;               /* legend text: "name (div, β=…)" */
    char *divergence, *loss, *config_file, *kind;   /* NULL when unknown; kind: dpo, sft, ... */
    double beta; int has_beta;
    cJSON *rows;               /* array of the metrics.jsonl objects that parsed */
    size_t *lines;             /* lines[i]: rows[i]'s line number in metrics.jsonl */
    size_t n_bad;              /* lines skipped */
    size_t slot;               /* runs with rows before this one (fdpo_rp_number_runs, once) */
} rp_run;

typedef struct {
    char *name, *run, *source; /* policy name, run name (or NULL), file it came from */
    long run_index;            /* index into rp_ctx.runs, -1 if none */
    char *divergence;          /* NULL: unknown / reference */
    double beta; int has_beta;
    cJSON *metrics;            /* object: flat name -> number (owned) */
    cJSON *samples;            /* array of {"prompt","completion","reward"?} (owned) */
    char *from;                /* " (FILE)" when another file evaluated a policy of the same name, else NULL (render) */
} rp_policy;

typedef struct {
    char *source;
    size_t n_cols; char **cols;
    cJSON *rows;               /* array of arrays: number, string or null per column */
    int on_frontier;           /* from --lab-frontier: also drawn on the evaluation's reward-KL panel */
} rp_lab;

typedef struct {
    const fdpo_report_opts *opts;
    FILE *warn;
    rp_run *runs; size_t n_runs;
    rp_policy *pols; size_t n_pols;
    rp_policy *proxy; size_t n_proxy; /* --proxy-eval: the same policies scored with a proxy reward */
    rp_lab *labs; size_t n_labs;
    char **warnings; size_t n_warnings;
    cJSON *pending;            /* samples read before their policy is known */
    char *notes;               /* contents of opts->notes_path, NULL without one */
    /* eval and samples files read so far (device, inode, path as given): one file reached twice
     * (a run directory's eval.json also given with --eval) is read once */
    struct rp_read_file { unsigned long long dev, ino; char *path; } *read_files; size_t n_read_files;
    struct rp_read_file *proxy_read_files; size_t n_proxy_read_files;   /* the --proxy-eval files' own read-once set */
} rp_ctx;

void fdpo_rp_warn(rp_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int fdpo_rp_load_run(rp_ctx *c, const char *dir);                 /* -1 only if dir is missing */
/* explicit_file: named on the command line (warn when it holds nothing usable). */
int fdpo_rp_load_eval(rp_ctx *c, const char *path, const rp_run *run, int explicit_file); /* -1 only if missing */
int fdpo_rp_load_samples(rp_ctx *c, const char *path, const rp_run *run, int explicit_file);
void fdpo_rp_link_policies(rp_ctx *c);             /* after all loading: policy named by a run's path */
void fdpo_rp_attach_samples(rp_ctx *c);            /* after fdpo_rp_link_policies */
int fdpo_rp_load_lab(rp_ctx *c, const char *path, int must_be_lab);    /* -1 only if missing */
rp_lab *fdpo_rp_lab_read_before(rp_ctx *c, const char *path);          /* the table read from path's file, or NULL */
void fdpo_rp_ctx_free(rp_ctx *c);
/* 1 when a policy's own name (last path component) has reference/baseline/initial/ref/sft/
 * base/init as a word (digits may follow): the reference or SFT model evaluated alongside. */
int fdpo_rp_looks_like_reference(const char *name);
size_t fdpo_rp_runs_with_rows(const rp_ctx *c);   /* the runs counted on the page and stdout */
/* Each run's slot, its place among the runs with rows, counted once after loading (counting
 * the runs before run i on every call made the colour lookups quadratic in run directories). */
void fdpo_rp_number_runs(rp_ctx *c);
size_t fdpo_rp_run_slot(const rp_ctx *c, size_t i);   /* runs with rows before run i: its place among those */

/* Render the page into b; returns the number of charts it draws. */
size_t fdpo_rp_render(rp_ctx *c, const char *chartjs, size_t chartjs_len, rp_buf *b);

/* render.c's chart list and helpers, for the panels written in other files */
typedef struct rp_charts rp_charts;
cJSON *fdpo_rp_series_new(cJSON *list, const char *label, const char *color, int line, int dash);
void fdpo_rp_series_add(cJSON *s, double x, double y, const char *tip);
/* Thinning a curve of n points to at most maxp (>= 2), the first and the last among them:
 * points j = round(k (n - 1) / (maxp - 1)), k = 0 .. maxp - 1, asked in order j = 0 .. n - 1.
 * (A stride plus "keep the last" drew maxp + 1.) */
typedef struct { size_t n, maxp, k; } fdpo_rp_thin;
static inline int fdpo_rp_thin_keep(fdpo_rp_thin *t, size_t j) {
    if (t->n <= t->maxp) return 1;
    size_t m = t->maxp < 2 ? 2 : t->maxp;
    if (j != (size_t)((double)t->k * (double)(t->n - 1) / (double)(m - 1) + 0.5)) return 0;
    t->k++;
    return 1;
}
/* Emits a panel if any series has a point (takes ownership of series); returns 1 if drawn. */
int fdpo_rp_chart_emit(rp_charts *ch, cJSON *series, const char *title, const char *explain, const char *xlabel,
                       const char *ylabel, int xlog);
const char *fdpo_rp_run_color(const rp_ctx *c, size_t i);   /* of run i, by its slot */

/* loop_panels.c: rm, online and rl runs */
void fdpo_rp_loop_discover(rp_ctx *c, rp_run *r);          /* load time: online run dirs' settings and kind */
void fdpo_rp_loop_section(rp_ctx *c, rp_charts *ch, rp_buf *b);
const char *fdpo_rp_loop_kind_name(const rp_run *r);       /* r->kind, else the kind its metrics show; NULL */

/* notes.c: the notes file as the page's summary section */
void fdpo_rp_notes(rp_buf *b, const char *text);

/* assets.c */
const char *fdpo_rp_asset_js(size_t *len);
const char *fdpo_rp_asset_css(size_t *len);

/* helpers shared by load.c and render.c */
const cJSON *fdpo_rp_get(const cJSON *obj, const char *const *names); /* first present key */
int fdpo_rp_get_num(const cJSON *obj, const char *name, double *v);
#endif
