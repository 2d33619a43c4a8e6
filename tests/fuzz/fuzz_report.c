/* libFuzzer: the report's readers (src/report/load.c) through fdpo_report_write. The first
 * byte picks what the rest is: 0 an eval JSON (--eval), 1 samples JSONL (--samples), 2 a lab
 * CSV (--lab), 3 a run directory's metrics.jsonl, 4 notes (--notes, the Markdown subset),
 * 5 a lab frontier table (--lab-frontier, with the input as --eval too), 6 a proxy eval
 * (--proxy-eval, with the input as --eval too). Bad content must become warnings or an error,
 * never a crash. Inputs and the page live under /dev/shm (memory); Chart.js is left out (a
 * one-line stand-in) so that each run writes a small page. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fdpo/report.h"

static char dir[64], run[96], metrics[128], input[128], empty[128], page[128];
static FILE *devnull;

static void cleanup(void) {
    unlink(metrics); unlink(input); unlink(empty); unlink(page);
    rmdir(run); rmdir(dir);
}

static void setup(void) {
    snprintf(dir, sizeof dir, "/dev/shm/fdpo-fuzz-report-%d", (int)getpid());
    snprintf(run, sizeof run, "%s/run", dir);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", run);
    snprintf(input, sizeof input, "%s/input", dir);
    snprintf(empty, sizeof empty, "%s/chart.js", dir);
    snprintf(page, sizeof page, "%s/report.html", dir);
    if ((mkdir(dir, 0700) && errno != EEXIST) || (mkdir(run, 0700) && errno != EEXIST)) abort();
    FILE *f = fopen(empty, "w");   /* a stand-in bundle: the page's size stays small */
    if (!f || fputs("/* Chart */\n", f) < 0) abort();
    fclose(f);
    devnull = fopen("/dev/null", "w");
    atexit(cleanup);
}

static void put(const char *path, const uint8_t *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size)) abort();
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!devnull) setup();
    if (size < 1) return 0;
    unsigned mode = data[0] % 7;
    const char *in[1] = {input}, *runs[1] = {run};
    fdpo_report_opts o = {.chartjs_path = empty, .warn = devnull, .max_points = 50};
    unlink(metrics);
    if (mode == 3) { put(metrics, data + 1, size - 1); o.run_dirs = runs; o.n_run_dirs = 1; }
    else put(input, data + 1, size - 1);
    switch (mode) {
    case 0: o.eval_files = in; o.n_eval_files = 1; break;
    case 1: o.sample_files = in; o.n_sample_files = 1; break;
    case 2: o.lab_files = in; o.n_lab_files = 1; break;
    case 4: o.notes_path = input; o.run_dirs = runs; o.n_run_dirs = 1; break;
    case 5: o.lab_frontier_files = in; o.n_lab_frontier_files = 1; o.eval_files = in; o.n_eval_files = 1; break;
    case 6: o.proxy_eval_files = in; o.n_proxy_eval_files = 1; o.eval_files = in; o.n_eval_files = 1; break;
    }
    fdpo_report_stats st;
    if (fdpo_report_write(&o, page, &st) == 0 && access(page, F_OK) != 0) abort();   /* success wrote the page */
    unlink(page);
    return 0;
}
