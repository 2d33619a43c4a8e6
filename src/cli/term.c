/* The terminal printer: the fdpo command's log and progress hooks (the library never prints).
 * Progress rewrites one line on a terminal and prints a line per call otherwise:
 *   "step 12/100 | loss 3.2100 | lr 3.00e-04 | gnorm 1.230 | 1234 tok/s | ETA 1m02s". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli/term.h"

static int g_tty;
static int g_line_open; /* a progress line without its newline is on screen */

static void fmt_eta(char *buf, size_t n, double s) {
    if (!(s >= 0) || s > 1e7) { snprintf(buf, n, "?"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

static void close_line(void) {
    if (g_line_open) { fputc('\n', stderr); g_line_open = 0; }
}

static void term_log(fdpo_log_level level, const char *msg, void *user) {
    const char *cmd = user;
    close_line();
    if (level == FDPO_LOG_DEBUG && !getenv("FDPO_DEBUG")) return;
    fprintf(stderr, "fdpo%s%s: %s%s\n", cmd ? " " : "", cmd ? cmd : "",
            level == FDPO_LOG_WARN ? "warning: " : level == FDPO_LOG_ERROR ? "error: " : "", msg);
    fflush(stderr);
}

static void term_progress(const fdpo_progress_info *p, void *user) {
    (void)user;
    if (p->done) {
        close_line();
        fprintf(stderr, "%s%sdone in %.1fs\n", p->phase ? p->phase : "", p->phase ? ": " : "", p->elapsed);
        fflush(stderr);
        return;
    }
    char eta[32];
    fmt_eta(eta, sizeof eta, p->eta);
    fprintf(stderr, "%s", g_tty ? "\r\033[K" : "");
    if (p->phase && *p->phase && strcmp(p->phase, "train")) fprintf(stderr, "%s ", p->phase);
    fprintf(stderr, "step %zu/%zu", p->step, p->total);
    if (!isnan(p->loss)) fprintf(stderr, " | loss %.4f", p->loss);
    if (!isnan(p->lr)) fprintf(stderr, " | lr %.2e", p->lr);
    if (!isnan(p->grad_norm)) fprintf(stderr, " | gnorm %.3f", p->grad_norm);
    if (!isnan(p->tokens_per_sec)) fprintf(stderr, " | %.0f tok/s", p->tokens_per_sec);
    fprintf(stderr, " | ETA %s", eta);
    if (p->extra && *p->extra) fprintf(stderr, " | %s", p->extra);
    if (g_tty) g_line_open = 1;
    else fputc('\n', stderr);
    fflush(stderr);
}

/* Out of memory: the command has nothing to save, so it says so and exits 1. */
static void term_oom(size_t bytes, void *user) {
    close_line();
    fprintf(stderr, "fdpo%s%s: out of memory allocating %zu bytes\n", user ? " " : "", user ? (const char *)user : "", bytes);
    exit(1);
}

void term_install(const char *cmd) {
    g_tty = isatty(2);
    fdpo_oom_set(term_oom, (void *)cmd);
    fdpo_log_set(term_log, (void *)cmd);
    fdpo_progress_set(term_progress, NULL);
}

void term_finish(void) { close_line(); }
