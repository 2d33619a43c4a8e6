/* Time, threads, progress display, number formatting. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
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

int fdpo_env_long(const char *name, long def, long min, long max, long *out) {
    *out = def;
    const char *e = getenv(name);
    if (!e || !*e) return 0;
    errno = 0;
    char *end;
    long v = strtol(e, &end, 10);
    /* strtol skips leading blanks, which the flags refuse (" 5" ran; hunt of wave 46) */
    if (!fdpo_number_is_decimal(e) || end == e || *end || errno == ERANGE || v < min || v > max) {
        if (max == LONG_MAX) return fdpo_error("%s=%s: must be an integer >= %ld", name, e, min);
        return fdpo_error("%s=%s: must be an integer in [%ld, %ld]", name, e, min, max);
    }
    *out = v;
    return 0;
}

int fdpo_env_switch(const char *name, int def) {
    /* a warning, not an error: the caller's pending error message is left as it was */
    char pending[512];
    snprintf(pending, sizeof pending, "%s", fdpo_last_error());
    long v;
    if (fdpo_env_long(name, def, 0, 1, &v) == 0) return (int)v;
    fdpo_log(FDPO_LOG_WARN, "%s; using the default (%d)", fdpo_last_error(), def);
    if (strcmp(pending, "unknown error")) fdpo_error("%s", pending); else fdpo_clear_error();
    return def;
}

int fdpo_env_choice(const char *name, const char *const *choices, int def, int *warned) {
    const char *e = getenv(name);
    if (!e || !*e) return def;
    char list[256] = "";
    size_t k = 0;
    for (int i = 0; choices[i]; i++) {
        if (!strcmp(e, choices[i])) return i;
        k += (size_t)snprintf(list + k, k < sizeof list ? sizeof list - k : 0, "%s%s", i ? ", " : "", choices[i]);
        if (k >= sizeof list) k = sizeof list - 1;
    }
    if (!*warned) fdpo_log(FDPO_LOG_WARN, "%s=%s: not one of %s; using the default (%s)", name, e, list, choices[def]);
    *warned = 1;
    return def;
}

double fdpo_ram_bytes(void) {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (double)pages * (double)page : 0;
}

double fdpo_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int g_threads = 0;

/* The CPUs this process may run on, when something narrowed it below the online CPUs
 * (taskset, or an MPI launcher binding the rank: Open MPI binds each rank to one core by
 * default for -np <= 2); 0 when not narrowed, unknown, or when the user pinned OpenMP's
 * threads (libgomp narrows each thread's mask to its place itself). */
static int narrowed_cpu_count(void) {
#if defined(__linux__) && defined(CPU_COUNT)
    if (omp_get_proc_bind() != omp_proc_bind_false) return 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
    int allowed = CPU_COUNT(&set);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 && allowed < online ? allowed : 0;
#else
    return 0;
#endif
}

/* Says once when --threads asks for more threads than the CPUs the process was narrowed to:
 * they then share those CPUs and a step takes about n / cpus times as long (wave 20:
 * `mpirun -np 1 ... --threads 2` ran the small model's step in 37 ms, 19 with --bind-to
 * none). The count is kept: results are defined per thread count. */
static void warn_if_narrowed(int n) {
    static int warned;
    int cpus = narrowed_cpu_count();
    if (warned || cpus <= 0 || n <= cpus) return;
    warned = 1;
    fdpo_log(FDPO_LOG_WARN, "--threads %d, but this process may run on only %d CPU%s (its CPU affinity, as taskset "
             "or an MPI launcher's binding set it): the threads share %s; under mpirun give each rank its CPUs "
             "(Open MPI: --bind-to none, or --map-by slot:PE=%d)", n, cpus, cpus == 1 ? "" : "s",
             cpus == 1 ? "it" : "them", n);
}

/* Make the thread count fdpo asks for the team size OpenMP gives. oneDNN's GEMMs and
 * OpenBLAS's OpenMP build split their work into omp_get_max_threads() parts and open a region
 * for them; a smaller team (OMP_THREAD_LIMIT below the count, or OMP_DYNAMIC shrinking teams
 * on a loaded machine) leaves parts uncomputed (wrong products) or waits for threads that
 * never come (OpenBLAS). So: at most the thread limit, and no dynamic team sizes (fdpo's
 * results are defined per thread count). Returns the count; called outside parallel regions. */
static int threads_settle(int n) {
    int limit = omp_get_thread_limit(), want = n > 0 ? n : omp_get_max_threads();
    if (want > limit) {
        static int said_want, said_limit;   /* once per count and limit: every run of a process settles again */
        if (want != said_want || limit != said_limit)
            fdpo_log(FDPO_LOG_WARN, "%s %d exceeds OMP_THREAD_LIMIT=%d: running %d thread%s",
                     n > 0 ? "--threads" : "the default thread count", want, limit, limit, limit == 1 ? "" : "s");
        said_want = want;
        said_limit = limit;
        want = limit;
    }
    omp_set_dynamic(0);
    if (n > 0) warn_if_narrowed(want);
    if (n > 0 || want != omp_get_max_threads()) { /* n <= 0 and within the limit: defaults untouched */
        omp_set_num_threads(want);
        openblas_set_num_threads(want);
    }
    return want;
}

/* The count OpenMP gave before fdpo first set one (0: not yet read): what n <= 0 restores.
 * omp_get_max_threads() after an earlier fdpo_set_threads(1) is that call's 1, so a run with
 * the default count took the previous run's (and its numbers, defined per thread count). */
static int g_default_threads;

void fdpo_set_threads(int n) {
    if (omp_in_parallel()) return; /* would set only this thread's count */
    if (!g_default_threads) g_default_threads = omp_get_max_threads();
    if (n <= 0 && omp_get_max_threads() != g_default_threads) {   /* back to the default, said as such */
        omp_set_num_threads(g_default_threads);
        openblas_set_num_threads(g_default_threads);
    }
    int got = threads_settle(n);
    g_threads = n > 0 ? got : 0;
}

/* three reads of OpenMP's settings: cheap next to the GEMM that calls it */
void fdpo_threads_settle(void) {
    if ((omp_get_dynamic() || omp_get_max_threads() > omp_get_thread_limit()) && !omp_in_parallel())
        threads_settle(0);
}

int fdpo_threads_check(long n) {
    if (n < 0 || n > FDPO_THREADS_MAX)
        return fdpo_error("--threads: %ld is not in [0, %d] (0: OpenMP's default, OMP_NUM_THREADS or all cores)",
                          n, FDPO_THREADS_MAX);
    return 0;
}

int fdpo_get_threads(void) { return g_threads > 0 ? g_threads : omp_get_max_threads(); }

static fdpo_log_fn g_log_fn;
static void *g_log_user;
static fdpo_progress_fn g_progress_fn;
static void *g_progress_user;

void fdpo_log_set(fdpo_log_fn fn, void *user) { g_log_fn = fn; g_log_user = user; }
void fdpo_progress_set(fdpo_progress_fn fn, void *user) { g_progress_fn = fn; g_progress_user = user; }

void fdpo_log(fdpo_log_level level, const char *fmt, ...) {
    if (!g_log_fn) return;
    char msg[PATH_MAX + 2048];   /* a logged error message (fdpo_last_error) whole */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    g_log_fn(level, msg, g_log_user);
}

void fdpo_progress_start(fdpo_progress *p, const char *phase, size_t total) {
    p->t_start = fdpo_now();
    p->total = total;
    p->phase = phase;
}

static void progress_emit(const fdpo_progress *p, size_t step, double loss, double lr, double grad_norm,
                          double tokens_per_sec, const char *extra, int done) {
    if (!g_progress_fn) return;
    double el = fdpo_now() - p->t_start;
    size_t left = p->total - (step < p->total ? step : p->total);
    fdpo_progress_info info = {
        .phase = p->phase, .step = step, .total = p->total, .elapsed = el,
        .eta = step > 0 ? el / (double)step * (double)left : -1,
        .loss = loss, .lr = lr, .grad_norm = grad_norm, .tokens_per_sec = tokens_per_sec,
        .extra = extra, .done = done,
    };
    g_progress_fn(&info, g_progress_user);
}

void fdpo_progress_step(fdpo_progress *p, size_t step, double loss, double lr, double grad_norm,
                        double tokens_per_sec, const char *extra) {
    progress_emit(p, step, loss, lr, grad_norm, tokens_per_sec, extra, 0);
}

void fdpo_progress_end(fdpo_progress *p) {
    progress_emit(p, p->total, NAN, NAN, NAN, NAN, NULL, 1);
}

void fdpo_fmt_double(char *buf, size_t n, double v) {
    if (!isfinite(v)) { snprintf(buf, n, "null"); return; } /* JSON has no NaN/Infinity */
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

fdpo_number_text fdpo_shortest(double v) {
    fdpo_number_text t;
    if (isfinite(v)) fdpo_fmt_double(t.s, sizeof t.s, v);
    else snprintf(t.s, sizeof t.s, "%g", v);
    return t;
}

void fdpo_fmt_float(char *buf, size_t n, float v) {
    if (!isfinite(v)) { snprintf(buf, n, "null"); return; }
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, n, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) return;
    }
}
