/* fdpo report RUN_DIR... [--out FILE]: a thin layer over fdpo_report_write (src/report). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/flags.h"
#include "fdpo/core.h"
#include "fdpo/report.h"

/* --eval, --samples and --lab may be repeated; flags.h keeps the last value, so collect them
 * all here (flags_parse has already validated the command line, and gives --help and --config). */
static const char **collect_repeated(int argc, char **argv, const fdpo_flag *flags, size_t n_flags,
                                     const char *name, size_t *n) {
    const char **v = fdpo_malloc((size_t)argc * sizeof *v);
    size_t len = strlen(name);
    *n = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) break;
        if (strncmp(a, "--", 2)) continue;
        const char *eq = strchr(a + 2, '=');
        size_t alen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (alen == len && !strncmp(a + 2, name, len)) {
            if (eq) v[(*n)++] = eq + 1;
            else if (i + 1 < argc) v[(*n)++] = argv[++i];
            continue;
        }
        if (eq) continue;
        int takes_value = alen == 6 && !strncmp(a + 2, "config", 6);   /* skip the value of other flags */
        for (size_t k = 0; k < n_flags; k++)
            if (strlen(flags[k].name) == alen && !strncmp(a + 2, flags[k].name, alen)) takes_value = flags[k].type != FLAG_BOOL;
        if (takes_value) i++;
    }
    return v;
}

int cmd_report(int argc, char **argv) {
    const char *out, *eval, *lab, *samples, *title, *chartjs;
    long max_points, max_prompts;
    fdpo_flag flags[] = {
        {"out",         FLAG_STR, &out,         "report.html", "HTML file to write (self-contained, opens offline)", 0},
        {"eval",        FLAG_STR, &eval,        NULL,          "eval JSON from `fdpo eval --out` (repeatable)", 0},
        {"lab",         FLAG_STR, &lab,         NULL,          "lab CSV from `fdpo lab` (repeatable)", 0},
        {"samples",     FLAG_STR, &samples,     NULL,          "samples JSONL from `fdpo eval` (repeatable)", 0},
        {"title",       FLAG_STR, &title,       "fdpo report", "page title", 0},
        {"chartjs",     FLAG_STR, &chartjs,     NULL,          "Chart.js UMD bundle to inline instead of the built-in copy", 0},
        {"max-points",  FLAG_INT, &max_points,  "2000",        "points per training curve (longer runs are thinned)", 0},
        {"max-prompts", FLAG_INT, &max_prompts, "6",           "prompts in the sample-completions table", 0},
    };
    const char *usage = "fdpo report RUN_DIR... [--eval FILE]... [--samples FILE]... [--lab FILE]... [--out FILE]";
    int n_pos = 0;
    char **pos = NULL;
    int rc = flags_parse("report", usage, flags, NFLAGS(flags), argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc != FLAGS_OK) return -1;
    if (max_points < 2 || max_prompts < 1) { free(pos); return fdpo_error("--max-points must be >= 2 and --max-prompts >= 1"); }

    size_t n_eval, n_lab, n_samples;
    const char **evals = collect_repeated(argc, argv, flags, NFLAGS(flags), "eval", &n_eval);
    const char **labs = collect_repeated(argc, argv, flags, NFLAGS(flags), "lab", &n_lab);
    const char **smps = collect_repeated(argc, argv, flags, NFLAGS(flags), "samples", &n_samples);
    if (n_eval == 0 && eval) evals[n_eval++] = eval;   /* from --config */
    if (n_lab == 0 && lab) labs[n_lab++] = lab;
    if (n_samples == 0 && samples) smps[n_samples++] = samples;
    if (n_pos == 0 && n_eval == 0 && n_lab == 0 && n_samples == 0) {
        free(pos); free(evals); free(labs); free(smps);
        return fdpo_error("no inputs: give at least one RUN_DIR, --eval FILE or --lab FILE (usage: %s)", usage);
    }
    fdpo_report_opts o = {0};
    o.run_dirs = (const char *const *)pos; o.n_run_dirs = (size_t)n_pos;
    o.eval_files = evals; o.n_eval_files = n_eval;
    o.lab_files = labs; o.n_lab_files = n_lab;
    o.sample_files = smps; o.n_sample_files = n_samples;
    o.title = title;
    o.chartjs_path = chartjs;
    o.max_points = (size_t)max_points;
    o.max_prompts = (size_t)max_prompts;
    fdpo_report_stats st;
    rc = fdpo_report_write(&o, out, &st);
    if (rc == 0)
        fprintf(stderr, "fdpo report: wrote %s (%zu run%s, %zu polic%s, %zu lab table%s, %zu chart%s, %zu warning%s)\n",
                out, st.n_runs, st.n_runs == 1 ? "" : "s", st.n_policies, st.n_policies == 1 ? "y" : "ies",
                st.n_lab_tables, st.n_lab_tables == 1 ? "" : "s", st.n_charts, st.n_charts == 1 ? "" : "s",
                st.n_warnings, st.n_warnings == 1 ? "" : "s");
    free(pos); free(evals); free(labs); free(smps);
    return rc;
}
