/* Time, threads, progress display, number formatting. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "fdpo/core.h"

/* OpenBLAS's own setter; present in every OpenBLAS build, declared here to avoid
 * depending on which cblas.h variant is installed. */
void openblas_set_num_threads(int n);

double fdpo_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int g_threads = 0;
void fdpo_set_threads(int n) {
    if (n <= 0) return;
    g_threads = n;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}
int fdpo_get_threads(void) { return g_threads > 0 ? g_threads : omp_get_max_threads(); }

void fdpo_progress_start(fdpo_progress *p, size_t total) {
    p->t_start = fdpo_now();
    p->total = total;
    p->tty = isatty(2);
}

static void fmt_eta(char *buf, size_t n, double s) {
    if (!(s >= 0) || s > 1e7) { snprintf(buf, n, "?"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

void fdpo_progress_step(fdpo_progress *p, size_t step, double loss, double lr, double grad_norm,
                        double tokens_per_sec, const char *extra) {
    double el = fdpo_now() - p->t_start;
    double eta = step > 0 ? el / (double)step * (double)(p->total - (step < p->total ? step : p->total)) : -1;
    char etab[32];
    fmt_eta(etab, sizeof etab, eta);
    fprintf(stderr, "%sstep %zu/%zu | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | ETA %s%s%s%s",
            p->tty ? "\r\033[K" : "", step, p->total, loss, lr, grad_norm, tokens_per_sec, etab,
            extra && *extra ? " | " : "", extra ? extra : "", p->tty ? "" : "\n");
    fflush(stderr);
}

void fdpo_progress_end(fdpo_progress *p) {
    if (p->tty) fputc('\n', stderr);
    fprintf(stderr, "done in %.1fs\n", fdpo_now() - p->t_start);
}

void fdpo_fmt_double(char *buf, size_t n, double v) {
    if (!isfinite(v)) { snprintf(buf, n, "null"); return; } /* JSON has no NaN/Infinity */
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

void fdpo_fmt_float(char *buf, size_t n, float v) {
    if (!isfinite(v)) { snprintf(buf, n, "null"); return; }
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, n, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) return;
    }
}
