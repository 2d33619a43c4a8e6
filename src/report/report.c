/* fdpo_report_write: read every input (load.c), render the page (render.c), write it
 * atomically. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "fdpo/core.h"
#include "fdpo/report.h"
#include "report/report_internal.h"

/* The Chart.js text to inline, without its trailing source-map comment (the page must not
 * ask for any other file). Returns a malloc'd copy. */
static char *chartjs_text(const fdpo_report_opts *o, size_t *len) {
    char *text;
    if (o->chartjs_path) {
        text = fdpo_read_file(o->chartjs_path, len);
        if (!text) { fdpo_error_context("--chartjs"); return NULL; }
    } else {
        const char *emb = fdpo_report_embedded_chartjs(len);
        if (!emb || !*len) {
            fdpo_error("Chart.js was not embedded at build time (node_modules/chart.js missing): "
                       "run scripts/deps.sh and rebuild, or pass --chartjs FILE (chart.umd.min.js)");
            return NULL;
        }
        text = fdpo_malloc(*len + 1);
        memcpy(text, emb, *len);
        text[*len] = 0;
    }
    char *map = strstr(text, "//# sourceMappingURL=");
    if (map) { *map = 0; *len = (size_t)(map - text); }
    for (char *p = text; (p = strchr(p, '<')); p++)
        if (!strncasecmp(p, "</script", 8)) {
            free(text);
            fdpo_error("%s: contains \"</script\", cannot be inlined", o->chartjs_path ? o->chartjs_path : "embedded Chart.js");
            return NULL;
        }
    if (!strstr(text, "Chart")) {
        free(text);
        fdpo_error("%s: does not look like the Chart.js UMD bundle", o->chartjs_path ? o->chartjs_path : "embedded Chart.js");
        return NULL;
    }
    return text;
}

/* A --lab-frontier table: a lab table that has the columns the reward-KL panel draws. */
static int load_lab_frontier(rp_ctx *c, const char *path) {
    rp_lab *L = fdpo_rp_lab_read_before(c, path);   /* given to --lab too, or a run's own: that table, on the frontier */
    if (L && L->on_frontier) {   /* --lab-frontier F --lab-frontier ./F: said, as for every repeated input */
        fdpo_rp_warn(c, "%s: the same file as %s, read already; not read again", path, L->source);
        return 0;
    }
    if (!L) {
        int got = fdpo_rp_load_lab(c, path, 1);
        if (got < 0) return fdpo_error_context("--lab-frontier");
        L = got ? &c->labs[c->n_labs - 1] : NULL;
    }
    static const char *const need[] = {"divergence", "beta", "kl", "expected_reward"};
    for (size_t k = 0; k < sizeof need / sizeof need[0]; k++) {
        int have = 0;
        for (size_t i = 0; L && i < L->n_cols; i++) have |= !strcmp(L->cols[i], need[k]);
        if (!have)
            return fdpo_error("--lab-frontier %s: no column \"%s\" (expected the table of `fdpo lab frontier`: "
                              "divergence,beta,expected_reward,...,kl,...)", path, need[k]);
    }
    /* a constrained table has those columns too, but its rows run over the safety threshold at
     * one beta: drawn as a beta frontier it would be a line through unrelated points */
    for (size_t i = 0; i < L->n_cols; i++)
        if (!strcmp(L->cols[i], "min_safety"))
            return fdpo_error("--lab-frontier %s: a `fdpo lab constrained` table (column \"min_safety\"): its rows run over "
                              "the safety threshold, not along beta; give it to --lab", path);
    L->on_frontier = 1;
    return 0;
}

/* A --proxy-eval file: its policies go to c->proxy, not to the evaluation's tables and panels
 * (they are the gold-evaluated policies again, under another reward). */
static int load_proxy_eval(rp_ctx *c, const char *path) {
    rp_ctx tmp = {.opts = c->opts, .warn = c->warn,   /* read once among the --proxy-eval files */
                  .read_files = c->proxy_read_files, .n_read_files = c->n_proxy_read_files};
    c->proxy_read_files = NULL;
    c->n_proxy_read_files = 0;
    int rc = fdpo_rp_load_eval(&tmp, path, NULL, 1);
    c->proxy_read_files = tmp.read_files;
    c->n_proxy_read_files = tmp.n_read_files;
    tmp.read_files = NULL;
    tmp.n_read_files = 0;
    if (rc) rc = fdpo_error_context("--proxy-eval");
    c->proxy = fdpo_realloc(c->proxy, (c->n_proxy + tmp.n_pols + 1) * sizeof *c->proxy);
    if (tmp.n_pols) memcpy(c->proxy + c->n_proxy, tmp.pols, tmp.n_pols * sizeof *tmp.pols);   /* NULL when none */
    c->n_proxy += tmp.n_pols;
    tmp.n_pols = 0;
    c->warnings = fdpo_realloc(c->warnings, (c->n_warnings + tmp.n_warnings + 1) * sizeof *c->warnings);
    if (tmp.n_warnings) memcpy(c->warnings + c->n_warnings, tmp.warnings, tmp.n_warnings * sizeof *tmp.warnings);
    c->n_warnings += tmp.n_warnings;
    tmp.n_warnings = 0;
    fdpo_rp_ctx_free(&tmp);
    return rc;
}

int fdpo_report_write(const fdpo_report_opts *o, const char *out_path, fdpo_report_stats *stats) {
    if (!out_path || !*out_path) return fdpo_error("--out: no output file");
    if (o->max_points == 1) return fdpo_error("--max-points: 1 must be >= 2 (a curve's first and last points; 0: 2000)");
    if (o->n_run_dirs + o->n_eval_files + o->n_lab_files + o->n_sample_files + o->n_lab_frontier_files == 0)
        return fdpo_error("nothing to read (give RUN_DIR..., --eval FILE or --lab FILE)");
    size_t cj_len;
    char *cj = chartjs_text(o, &cj_len);
    if (!cj) return -1;
    rp_ctx c = {0};
    c.opts = o;
    c.warn = o->warn;
    int rc = 0;
    for (size_t i = 0; i < o->n_run_dirs && !rc; i++) rc = fdpo_rp_load_run(&c, o->run_dirs[i]);
    for (size_t i = 0; i < o->n_eval_files && !rc; i++) rc = fdpo_rp_load_eval(&c, o->eval_files[i], NULL, 1);
    for (size_t i = 0; i < o->n_sample_files && !rc; i++) rc = fdpo_rp_load_samples(&c, o->sample_files[i], NULL, 1);
    for (size_t i = 0; i < o->n_lab_files && !rc; i++) rc = fdpo_rp_load_lab(&c, o->lab_files[i], 0) < 0 ? -1 : 0;
    for (size_t i = 0; i < o->n_lab_frontier_files && !rc; i++) rc = load_lab_frontier(&c, o->lab_frontier_files[i]);
    for (size_t i = 0; i < o->n_proxy_eval_files && !rc; i++) rc = load_proxy_eval(&c, o->proxy_eval_files[i]);
    if (!rc && o->notes_path) {
        size_t len;
        if (!(c.notes = fdpo_read_file(o->notes_path, &len))) rc = fdpo_error_context("--notes");
        else if (memchr(c.notes, 0, len)) rc = fdpo_error("--notes %s: contains a NUL byte (expected a text file)", o->notes_path);
    }
    fdpo_rp_link_policies(&c);
    /* every policy so far came from an eval file (--eval, a RUN_DIR's eval*.json or eval/); the
     * samples attached next add metric-less ones for the policies no eval file holds */
    size_t n_evaluated = c.n_pols;
    fdpo_rp_attach_samples(&c);
    size_t n_runs = fdpo_rp_runs_with_rows(&c);
    if (!rc && n_runs + c.n_pols + c.n_labs == 0)
        rc = fdpo_error("nothing could be read from the inputs (%zu warning%s above)",
                        c.n_warnings, c.n_warnings == 1 ? "" : "s");
    /* the panel sets the proxy against the gold evaluation of the same policies: with none (a
     * run, a lab table or samples the only other input) the file was read and then left out of
     * the page, without a word or with a warning about gold eval files there were none of */
    if (!rc && o->n_proxy_eval_files && !n_evaluated)
        rc = fdpo_error("--proxy-eval %s: no gold evaluation to set it against: the over-optimisation panel draws the "
                        "proxy reward next to the gold reward of the same policies (give their --eval files, or a "
                        "RUN_DIR with eval/ files)", o->proxy_eval_files[0]);
    if (!rc) {
        rp_buf page = {0};
        size_t n_charts = fdpo_rp_render(&c, cj, cj_len, &page);
        fdpo_rp_fix_utf8(&page);     /* names and texts from the inputs are not checked one by one */
        rc = fdpo_write_file_atomic(out_path, page.p, page.n);
        free(page.p);
        if (stats) {
            stats->n_runs = n_runs;
            stats->n_policies = c.n_pols;
            stats->n_lab_tables = c.n_labs;
            stats->n_charts = n_charts;
            stats->n_warnings = c.n_warnings;
        }
    }
    free(cj);
    free(c.notes);
    fdpo_rp_ctx_free(&c);
    return rc;
}
