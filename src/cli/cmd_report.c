/* fdpo report RUN_DIR... [--out FILE]: a thin layer over fdpo_report_write (src/report). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/eval_common.h"
#include "cli/flags.h"
#include "fdpo/core.h"
#include "fdpo/report.h"

int cmd_report(int argc, char **argv) {
    const char *out, *title, *chartjs, *notes;
    flag_list evals, labs, smps, lab_fronts, proxies;
    long max_points, max_prompts;
    fdpo_flag flags[] = {
        {"out",         FLAG_STR, &out,         "report.html", "HTML file to write (self-contained, opens offline)", 0},
        {"eval",        FLAG_LIST, &evals,      NULL,          "eval JSON from `fdpo eval --out` (repeatable)", 0},
        {"lab",         FLAG_LIST, &labs,       NULL,          "lab CSV from `fdpo lab` (repeatable)", 0},
        {"lab-frontier", FLAG_LIST, &lab_fronts, NULL,         "lab frontier CSV (`fdpo lab frontier`) drawn on the evaluation's reward-KL panel as dashed \"exact (lab)\" lines; its expected_reward must be in the eval's reward units (repeatable)", 0},
        {"proxy-eval",  FLAG_LIST, &proxies,    NULL,          "eval JSON of the same policies scored with a proxy reward (e.g. `fdpo eval --reward rm:DIR`, with the reference as a policy): gold and proxy reward against KL, the reward over-optimisation panel (repeatable)", 0},
        {"samples",     FLAG_LIST, &smps,       NULL,          "samples JSONL from `fdpo eval` (repeatable)", 0},
        {"title",       FLAG_STR, &title,       "fdpo report", "page title", 0},
        {"notes",       FLAG_STR, &notes,       NULL,          "text file shown first as the summary (Markdown subset: # headings, - lists, ``` blocks)", 0},
        {"chartjs",     FLAG_STR, &chartjs,     NULL,          "Chart.js UMD bundle to inline instead of the built-in copy", 0},
        {"max-points",  FLAG_COUNT, &max_points,  "2000",        "points per training curve, >= 2 (longer runs are thinned; 0: 2000)", 0},
        {"max-prompts", FLAG_COUNT, &max_prompts, "6",           "prompts in the sample-completions table (0: 6)", 0},
    };
    const char *usage = "fdpo report RUN_DIR... [--eval FILE]... [--samples FILE]... [--lab FILE]... [--lab-frontier FILE]... [--proxy-eval FILE]... [--notes FILE] [--out FILE]";
    int n_pos = 0;
    char **pos = NULL;
    int rc = flags_parse("report", usage, flags, NFLAGS(flags), argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc != FLAGS_OK) return -1;

    if (n_pos == 0 && evals.n == 0 && labs.n == 0 && smps.n == 0 && lab_fronts.n == 0) {
        free(pos);
        return fdpo_error("no inputs: give at least one RUN_DIR, --eval FILE or --lab FILE (usage: %s)", usage);
    }
    fdpo_report_opts o = {0};
    o.run_dirs = (const char *const *)pos; o.n_run_dirs = (size_t)n_pos;
    o.eval_files = evals.v; o.n_eval_files = evals.n;
    o.lab_files = labs.v; o.n_lab_files = labs.n;
    o.sample_files = smps.v; o.n_sample_files = smps.n;
    o.lab_frontier_files = lab_fronts.v; o.n_lab_frontier_files = lab_fronts.n;
    o.proxy_eval_files = proxies.v; o.n_proxy_eval_files = proxies.n;
    o.title = title;
    o.chartjs_path = chartjs;
    o.notes_path = notes;
    o.max_points = (size_t)max_points;
    o.max_prompts = (size_t)max_prompts;
    fdpo_report_stats st;
    /* the rules of every output file (eval_claim_out): not "-" (the report is a file, it made
     * one named "-"), not an input, claimed from the start */
    eval_inputs in = {0};
    eval_inputs_add(&in, "RUN_DIR", (const char *const *)pos, (size_t)n_pos);
    for (int i = 0; i < n_pos; i++)   /* a run's eval/ and lab/ files are read too (docs/report.md) */
        for (int k = 0; k < 2; k++) {
            char *sub = fdpo_path_join(pos[i], k ? "lab" : "eval");
            const char *owned = fdpo_strv_push(&in.owned, sub);
            free(sub);
            eval_inputs_add(&in, "RUN_DIR", &owned, 1);
        }
    const flag_list *lists[] = {&evals, &labs, &smps, &lab_fronts, &proxies};
    const char *names[] = {"--eval", "--lab", "--samples", "--lab-frontier", "--proxy-eval"};
    for (size_t k = 0; k < 5; k++) eval_inputs_add(&in, names[k], lists[k]->v, lists[k]->n);
    eval_inputs_add(&in, "--notes", &notes, 1);
    eval_inputs_add(&in, "--chartjs", &chartjs, 1);
    rc = eval_claim_out("--out", out, (const char *const (*)[2])in.v, in.n, 0);
    eval_inputs_free(&in);
    if (rc) { free(pos); return -1; }
    rc = fdpo_report_write(&o, out, &st);
    eval_release_out(out);
    if (rc == 0)
        fdpo_log(FDPO_LOG_INFO, "wrote %s (%zu run%s, %zu polic%s, %zu lab table%s, %zu chart%s, %zu warning%s)",
                out, st.n_runs, st.n_runs == 1 ? "" : "s", st.n_policies, st.n_policies == 1 ? "y" : "ies",
                st.n_lab_tables, st.n_lab_tables == 1 ? "" : "s", st.n_charts, st.n_charts == 1 ? "" : "s",
                st.n_warnings, st.n_warnings == 1 ? "" : "s");
    free(pos);
    return rc;
}
