/* The memory-bandwidth peak every bench reports: a STREAM triad (McCalpin's stream.c,
 * a[i] = b[i] + s * c[i]) over three arrays, OpenMP over the current threads.
 *
 *   triad --mib N[,M...] [--threads T] [--repeats R] [--huge 1|0|-1]
 *       one JSON line per array size N MiB: best_gbs (STREAM's figure: the best of R runs,
 *       default 10, after one untimed run), median_gbs, worst_gbs, init_seconds.
 *       GB/s counts STREAM's 3 x 4 bytes per element (two arrays read, one written; the
 *       write-allocate read of a is not counted, as in STREAM). --huge 1 asks the kernel for
 *       transparent huge pages on the arrays (MADV_HUGEPAGE), 0 for 4 KiB pages
 *       (MADV_NOHUGEPAGE), -1 gives no advice (the system's THP policy); the default is what
 *       fdpo's streamed buffers get (fdpo_alloc_large: FDPO_HUGEPAGES 1 or unset / 0 / system), as is
 *       harness_triad_gbs's (decode-matmul, model-peaks).
 *
 * How large the arrays must be is the caller's choice: bench/bandwidth.py sizes them by
 * STREAM's rule (each array >= 4 x the last-level cache, capped by free memory) and passes
 * the size; the same function serves model-peaks and decode-matmul when given --triad-mib. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "fdpo/core.h"
#include "harness.h"

typedef struct {
    float *a, *b, *c;
    long n;
} triad_arrays;

/* a [n] = b [n] + 3 c [n], static schedule: each thread touches the same slice as in the
 * first-touch initialisation, so its pages stay where that thread placed them */
static void triad_run(triad_arrays *x) {
    float *a = x->a;
    const float *b = x->b, *c = x->c;
    long n = x->n;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) a[i] = b[i] + 3.0f * c[i];
}

static int cmp_double(const void *p, const void *q) {
    double x = *(const double *)p, y = *(const double *)q;
    return x < y ? -1 : x > y;
}

/* one array of `bytes`, 2 MiB aligned (so huge pages can back it whole), with or without
 * MADV_HUGEPAGE; NULL after fdpo_error when the memory is not there */
static float *triad_alloc(size_t bytes, int huge) {
    void *p = NULL;
    if (posix_memalign(&p, (size_t)2 << 20, bytes) != 0) {
        fdpo_error("--mib: cannot allocate %zu MiB for an array", bytes >> 20);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    if (huge >= 0) madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE); /* 0: 4 KiB also where THP is "always" */
#else
    (void)huge;
#endif
    return p;
}

int harness_triad(size_t mib, int repeats, int huge, harness_triad_result *out) {
    memset(out, 0, sizeof *out);
    if (mib < 1) return fdpo_error("--mib: must be >= 1");
    if (repeats < 1) return fdpo_error("--repeats: must be >= 1");
    size_t bytes = mib << 20;
    triad_arrays x = {.n = (long)(bytes / sizeof(float))};
    if (!(x.a = triad_alloc(bytes, huge))) return -1;
    if (!(x.b = triad_alloc(bytes, huge))) { free(x.a); return -1; }
    if (!(x.c = triad_alloc(bytes, huge))) { free(x.a); free(x.b); return -1; }
    double t0 = fdpo_now();
    long n = x.n;
#pragma omp parallel for schedule(static) /* first touch by the threads that run the triad */
    for (long i = 0; i < n; i++) { x.a[i] = 0.0f; x.b[i] = 1.0f; x.c[i] = 2.0f; }
    out->init_seconds = fdpo_now() - t0;
    triad_run(&x); /* untimed, as STREAM drops its first iteration */
    double *t = fdpo_malloc((size_t)repeats * sizeof(double));
    for (int r = 0; r < repeats; r++) {
        double s = fdpo_now();
        triad_run(&x);
        t[r] = fdpo_now() - s;
    }
    qsort(t, (size_t)repeats, sizeof *t, cmp_double);
    double moved = 3.0 * (double)bytes * 1e-9;
    out->best_gbs = moved / t[0];
    out->median_gbs = moved / (repeats % 2 ? t[repeats / 2] : 0.5 * (t[repeats / 2 - 1] + t[repeats / 2]));
    out->worst_gbs = moved / t[repeats - 1];
    free(t); free(x.a); free(x.b); free(x.c);
    return 0;
}

double harness_triad_gbs(size_t mib) {
    harness_triad_result r;
    return harness_triad(mib, 10, fdpo_hugepages_advice(), &r) ? 0.0 : r.best_gbs;
}

static const char *targ(int argc, char **argv, const char *name, const char *def) {
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], name)) return argv[i + 1];
    return def;
}

int h_triad(int argc, char **argv);
int h_triad(int argc, char **argv) {
    static const char *known[] = {"--mib", "--threads", "--repeats", "--huge"};
    for (int i = 1; i < argc; i += 2) {
        int ok = 0;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) ok |= !strcmp(argv[i], known[k]);
        if (!ok || i + 1 >= argc)
            return fdpo_error("unknown flag or missing value '%s' (--mib, --threads, --repeats, --huge)", argv[i]);
    }
    const char *mibs = targ(argc, argv, "--mib", NULL), *th = targ(argc, argv, "--threads", NULL);
    if (!mibs) return fdpo_error("usage: triad --mib N[,M...] [--threads T] [--repeats R] [--huge 1|0|-1]");
    int repeats = atoi(targ(argc, argv, "--repeats", "10")), huge = atoi(targ(argc, argv, "--huge", fdpo_hugepages_advice() < 0 ? "-1" : fdpo_hugepages_advice() ? "1" : "0"));
    if (repeats < 1) return fdpo_error("--repeats: must be >= 1");
    if (huge < -1 || huge > 1) return fdpo_error("--huge: must be 1, 0 or -1 (no advice)");
    if (th) fdpo_set_threads(atoi(th));
    long mib[16];
    size_t n = 0;
    for (const char *p = mibs; *p;) { /* the whole list checked before anything runs */
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || (*end && *end != ',') || n == 16)
            return fdpo_error("--mib: '%s' is not a list of up to 16 sizes >= 1", mibs);
        mib[n++] = v;
        p = *end ? end + 1 : end;
    }
    for (size_t i = 0; i < n; i++) {
        harness_triad_result r;
        if (harness_triad((size_t)mib[i], repeats, huge, &r)) return -1;
        printf("{\"threads\": %d, \"array_mib\": %ld, \"repeats\": %d, \"huge\": %d, \"best_gbs\": %.2f, "
               "\"median_gbs\": %.2f, \"worst_gbs\": %.2f, \"init_seconds\": %.3f}\n",
               fdpo_get_threads(), mib[i], repeats, huge, r.best_gbs, r.median_gbs, r.worst_gbs, r.init_seconds);
        fflush(stdout);
    }
    return 0;
}
