/* fdpo report: one self-contained HTML file (charts drawn offline by an inlined Chart.js)
 * that shows what each divergence cost, built from run directories, eval JSON files and
 * lab CSV files. See docs/report.md for the inputs it reads and the panels it draws.
 *
 * Bad content (a malformed metrics.jsonl line, an unparseable eval file, a CSV row with the
 * wrong number of fields) is a warning naming FILE:LINE, written to opts->warn (the log hook,
 * fdpo_log, when NULL) and listed in the report; everything else still renders. A path that does not
 * exist, or inputs from which nothing at all could be read, is an error (-1, fdpo_error). */
#ifndef FDPO_REPORT_H
#define FDPO_REPORT_H
#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *const *run_dirs;  size_t n_run_dirs;   /* RUN_DIR...: metrics.jsonl, run config,
                                                          eval*.json, eval/ and lab/ files, CSVs */
    const char *const *eval_files; size_t n_eval_files; /* extra `fdpo eval --out` files */
    const char *const *lab_files;  size_t n_lab_files;  /* extra `fdpo lab` CSV files */
    const char *const *sample_files; size_t n_sample_files; /* samples JSONL of `fdpo eval` */
    const char *const *lab_frontier_files; size_t n_lab_frontier_files; /* `fdpo lab frontier` tables
                                     (divergence, beta, kl, expected_reward) drawn on the evaluation's
                                     reward-KL panel as "exact (lab)" lines: their expected_reward
                                     must be in the eval files' reward units */
    const char *const *proxy_eval_files; size_t n_proxy_eval_files; /* `fdpo eval --out` files whose
                                     reward is a proxy (e.g. rm:DIR) of the --eval files' gold reward:
                                     policies of the same name are drawn as gold and proxy reward
                                     against KL (reward over-optimisation); the file must also hold
                                     the reference as a policy (KL 0), and the report a gold
                                     evaluation (else an error naming --proxy-eval) */
    const char *title;            /* page title; NULL: "fdpo report" */
    const char *chartjs_path;     /* Chart.js UMD bundle to inline; NULL: the copy embedded
                                     at build time (node_modules/chart.js) */
    size_t max_points;            /* per training curve; longer runs are thinned (0: 2000) */
    size_t max_prompts;           /* sample-completion rows (0: 6) */
    const char *notes_path;       /* text shown first as the page's summary (a Markdown subset:
                                     #-headings, "- " lists, ``` blocks, **bold**, `code`); NULL: none */
    FILE *warn;                   /* where warnings go; NULL: the log hook (fdpo_log) */
} fdpo_report_opts;

typedef struct {
    size_t n_runs;       /* run directories with at least one metrics row */
    size_t n_policies;   /* evaluated policies */
    size_t n_lab_tables; /* lab CSV files read */
    size_t n_charts;     /* charts the page draws (the page sets data-charts-ready to this) */
    size_t n_warnings;
} fdpo_report_stats;

/* Read the inputs and write the HTML atomically to out_path. stats may be NULL. */
int fdpo_report_write(const fdpo_report_opts *opts, const char *out_path, fdpo_report_stats *stats);

/* The Chart.js bundle compiled into the library (NULL, 0 when node_modules/chart.js was
 * absent at build time). */
const char *fdpo_report_embedded_chartjs(size_t *len);

#ifdef __cplusplus
}
#endif

#endif
