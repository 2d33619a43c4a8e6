/* decode-matmul: the decoder's small-rows linear kernel alone, per shape, against the
 * machine's measured peaks (issue #13: sampling near the memory limit).
 *
 *   decode-matmul [--shapes ICxOC,...] [--rows 1,4,8,16] [--threads 1,2] [--precision fp32,bf16]
 *                 [--min-seconds S] [--triad-mib MIB] [--peaks 0|1]
 *       Default shapes: GPT-2 124M's c_attn 768x2304, attn.c_proj 768x768, c_fc 768x3072,
 *       mlp.c_proj 3072x768 and, bf16 only, the tied LM head 768x50257 (fp32 decodes the head
 *       with blocked sgemm over wte, not this kernel). Per thread count: one JSON line of
 *       peaks (triad_gbs: the STREAM triad of h_triad.c over 3 x MIB MiB, only with --triad-mib:
 *       bench/bandwidth.py's triad_sizes gives STREAM's size for this machine, 1040 MiB here;
 *       fma_gflops: 512-bit fp32 FMA, register-resident; --peaks 0 skips them), then one line per (precision,
 *       shape, rows): median and best milliseconds per call, GFLOP/s (2 R IC OC per call),
 *       GB/s of weights read (fp32 4 bytes, bf16 2 bytes per weight; the activations are
 *       noise next to them) and both as % of the peaks (from the median); cpu_ms_median:
 *       the median call's CPU time over all threads (steadier than wall time under load;
 *       at 2 threads it includes OpenMP's waiting).
 *       The kernel is what the decoder calls: fdpo_decode_f32_matmul (W [IC, OC] as stored)
 *       and fdpo_decode_packed_matmul (bf16-packed W; FDPO_DECODE_BF16 picks its route).
 *       Each call reads a different copy of W, enough copies to pass 384 MiB (more than
 *       this machine's 260 MiB L3; weights of the last pass mostly evicted), so the weights come
 *       from memory as in a decoding step, where the whole model streams through once per token. The copies
 *       live where the decoder keeps its weights (fdpo_alloc_large: 2 MiB pages with
 *       FDPO_HUGEPAGES=1, 4 KiB with 0). Calls are timed one by one for at
 *       least 20 calls and --min-seconds (default 0.3) per case. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fdpo/core.h"
#include "fdpo/io.h"
#include "harness.h"
#include "model/llama_decode.h"

static const char *darg(int argc, char **argv, const char *name, const char *def) {
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], name)) return argv[i + 1];
    return def;
}

/* "a,b,c" -> up to max positive numbers; 0 on a malformed list */
static size_t parse_list(const char *s, size_t *v, size_t max) {
    size_t n = 0;
    while (*s && n < max) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s || x < 1) return 0;
        v[n++] = (size_t)x;
        if (*end == ',') end++;
        else if (*end) return 0;
        s = end;
    }
    return n;
}

/* CPU seconds of all the process's threads (OpenMP's waiting included): on a shared machine
 * a call's CPU time, unlike its wall time, does not grow while other processes run */
static double process_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int h_decode_matmul(int argc, char **argv);
int h_decode_matmul(int argc, char **argv) {
    for (int i = 1; i < argc; i += 2) {
        static const char *known[] = {"--shapes", "--rows", "--threads", "--precision", "--min-seconds", "--triad-mib", "--peaks"};
        int ok = 0;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) ok |= !strcmp(argv[i], known[k]);
        if (!ok || i + 1 >= argc)
            return fdpo_error("decode-matmul: unknown flag or missing value '%s' (--shapes, --rows, --threads, "
                              "--precision, --min-seconds, --triad-mib, --peaks)", argv[i]);
    }
    const char *shapes_s = darg(argc, argv, "--shapes", "768x2304,768x768,768x3072,3072x768,768x50257");
    const char *prec_s = darg(argc, argv, "--precision", "fp32,bf16");
    size_t rows[16], threads[8], n_rows = parse_list(darg(argc, argv, "--rows", "1,4,8,16"), rows, 16);
    size_t n_threads = parse_list(darg(argc, argv, "--threads", "1,2"), threads, 8);
    double min_seconds = atof(darg(argc, argv, "--min-seconds", "0.3"));
    long triad_mib = atol(darg(argc, argv, "--triad-mib", "0")); /* 0: no triad */
    int peaks = atoi(darg(argc, argv, "--peaks", "1"));
    if (!n_rows) return fdpo_error("--rows: not a list of positive numbers");
    for (size_t i = 0; i < n_rows; i++) if (rows[i] > 16) return fdpo_error("--rows: %zu > 16 (the small-rows path)", rows[i]);
    if (!n_threads) return fdpo_error("--threads: not a list of positive numbers");
    if (darg(argc, argv, "--triad-mib", NULL) && triad_mib < 1) return fdpo_error("--triad-mib: must be >= 1");
    int want_f32 = strstr(prec_s, "fp32") != NULL, want_bf16 = strstr(prec_s, "bf16") != NULL;
    if (!want_f32 && !want_bf16) return fdpo_error("--precision: '%s' names neither fp32 nor bf16", prec_s);
    size_t ic[16], oc[16], n_shapes = 0;
    for (const char *p = shapes_s; *p && n_shapes < 16; n_shapes++) {
        char *end;
        long a = strtol(p, &end, 10), b;
        if (end == p || a < 1 || *end != 'x') return fdpo_error("--shapes: '%s' is not a list of ICxOC", shapes_s);
        p = end + 1;
        b = strtol(p, &end, 10);
        if (end == p || b < 1 || (*end && *end != ',')) return fdpo_error("--shapes: '%s' is not a list of ICxOC", shapes_s);
        ic[n_shapes] = (size_t)a; oc[n_shapes] = (size_t)b;
        p = *end ? end + 1 : end;
    }
    uint64_t rng = 12345;
    for (size_t ti = 0; ti < n_threads; ti++) {
        fdpo_set_threads((int)threads[ti]);
        double triad = 0.0, fma = 0.0;
        if (peaks) {
            if (triad_mib > 0 && (triad = harness_triad_gbs((size_t)triad_mib)) <= 0.0) return -1;
            fma = harness_fma_fp32_gflops();
            printf("{\"peaks\": true, \"threads\": %d, \"triad_mib\": %ld, \"triad_gbs\": %.2f, \"fma_gflops\": %.1f}\n",
                   fdpo_get_threads(), triad_mib, triad, fma);
            fflush(stdout);
        }
        for (int bf16 = 0; bf16 < 2; bf16++) {
            if (bf16 ? !want_bf16 : !want_f32) continue;
            for (size_t si = 0; si < n_shapes; si++) {
                size_t IC = ic[si], OC = oc[si];
                if (!bf16 && !strcmp(shapes_s, "768x2304,768x768,768x3072,3072x768,768x50257") && OC == 50257)
                    continue; /* the default list's head: bf16 only (see above) */
                size_t n_w = bf16 ? fdpo_decode_packed_size(IC, OC) : IC * OC, elem = bf16 ? 2 : 4;
                size_t bytes = n_w * elem, copies = ((size_t)384 << 20) / bytes + 1;
                if (copies > 512) copies = 512;
                float *src = fdpo_malloc(IC * OC * sizeof(float));
                for (size_t i = 0; i < IC * OC; i++) {
                    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
                    src[i] = ((float)(rng >> 40) / (float)(1 << 24) - 0.5f) * 0.1f;
                }
                char *w = fdpo_alloc_large(copies * bytes); /* as the decoder's weights */
                if (!w) { free(src); return -1; }
                for (size_t c = 0; c < copies; c++) {
                    if (bf16) fdpo_decode_pack_bf16((uint16_t *)(w + c * bytes), src, IC, OC, OC, 1);
                    else memcpy(w + c * bytes, src, bytes);
                }
                free(src);
                for (size_t ri = 0; ri < n_rows; ri++) {
                    size_t R = rows[ri];
                    float *x = fdpo_malloc(R * IC * sizeof(float)), *out = fdpo_calloc(R * OC, sizeof(float));
                    for (size_t i = 0; i < R * IC; i++) x[i] = (float)((i * 7) % 13) * 0.1f - 0.6f;
                    size_t n_acc = bf16 ? fdpo_decode_packed_scratch(R) : fdpo_decode_f32_scratch(R, OC);
                    float *acc = fdpo_malloc(n_acc * sizeof(float));
                    uint16_t *in16 = fdpo_malloc(R * (IC + 1) * sizeof(uint16_t));
                    size_t cap = 4096, n = 0;
                    double *ms = fdpo_malloc(cap * sizeof(double)), *cpu = fdpo_malloc(cap * sizeof(double)), start = 0.0;
                    for (size_t call = 0; n < 20 || fdpo_now() - start < min_seconds; call++) {
                        const char *wc = w + (call % copies) * bytes;
                        double t0 = fdpo_now(), c0 = process_cpu_seconds();
                        if (bf16) fdpo_decode_packed_matmul(out, x, (const uint16_t *)wc, R, IC, OC, 0, in16, acc);
                        else fdpo_decode_f32_matmul(out, x, (const float *)wc, R, IC, OC, 0, acc);
                        double dt = fdpo_now() - t0, dc = process_cpu_seconds() - c0;
                        if (call == 2) start = t0;
                        if (call >= 2 && n < cap) { cpu[n] = dc * 1e3; ms[n++] = dt * 1e3; } /* two calls of warm-up */
                        if (n == cap) break;
                    }
                    qsort(ms, n, sizeof *ms, cmp_double);
                    qsort(cpu, n, sizeof *cpu, cmp_double);
                    double med = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
                    double gflops = 2.0 * (double)R * (double)IC * (double)OC / (med * 1e-3) * 1e-9;
                    double gbs = (double)IC * (double)OC * (double)elem / (med * 1e-3) * 1e-9;
                    printf("{\"precision\": \"%s\", \"shape\": [%zu, %zu], \"rows\": %zu, \"threads\": %d, "
                           "\"calls\": %zu, \"ms_median\": %.6f, \"ms_best\": %.6f, \"gflops\": %.2f, \"gbs\": %.3f, "
                           "\"pct_triad\": %.1f, \"pct_fma\": %.1f, \"cpu_ms_median\": %.6f}\n",
                           bf16 ? "bf16" : "fp32", IC, OC, R, fdpo_get_threads(), n, med, ms[0], gflops, gbs,
                           triad > 0 ? 100.0 * gbs / triad : 0.0, fma > 0 ? 100.0 * gflops / fma : 0.0,
                           n % 2 ? cpu[n / 2] : 0.5 * (cpu[n / 2 - 1] + cpu[n / 2]));
                    fflush(stdout);
                    free(x); free(out); free(acc); free(in16); free(ms); free(cpu);
                }
                fdpo_free_large(w);
            }
        }
    }
    return 0;
}

/* decode-matmul-check --ic IC --oc OC [--seed S] [--threads N] --out FILE
 *   random x [70, IC], W [IC, OC] and base [70, OC] (uniform in [-1, 1)); for R in 1, 5, 8,
 *   16, 70 (a prefill: the bf16 driver takes 64 rows at a time): out = base + x [0:R] @ W through the decoder's kernels (accumulate, as the decoder's
 *   linear layers call them): bf16_R (W packed, the bf16 route of this process) and f32_R (W
 *   as stored). Writes x, w, base and the ten outputs as safetensors (tests/py/
 *   test_decode_kernel.py compares them with numpy). */
int h_decode_matmul_check(int argc, char **argv);
int h_decode_matmul_check(int argc, char **argv) {
    const char *ic_s = darg(argc, argv, "--ic", NULL), *oc_s = darg(argc, argv, "--oc", NULL);
    const char *out = darg(argc, argv, "--out", NULL), *th = darg(argc, argv, "--threads", NULL);
    uint64_t rng = (uint64_t)atol(darg(argc, argv, "--seed", "1")) * 2654435761u + 1;
    if (!ic_s || !oc_s || !out)
        return fdpo_error("usage: decode-matmul-check --ic IC --oc OC [--seed S] [--threads N] --out FILE");
    size_t IC = (size_t)atol(ic_s), OC = (size_t)atol(oc_s), RMAX = 70;
    if (IC < 1 || OC < 1) return fdpo_error("--ic, --oc: must be >= 1");
    if (th) fdpo_set_threads(atoi(th));
    float *x = fdpo_malloc(RMAX * IC * sizeof(float)), *w = fdpo_malloc(IC * OC * sizeof(float));
    float *base = fdpo_malloc(RMAX * OC * sizeof(float));
    float *vals[3] = {x, w, base};
    size_t lens[3] = {RMAX * IC, IC * OC, RMAX * OC};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < lens[k]; i++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            vals[k][i] = (float)(rng >> 40) / (float)(1 << 23) - 1.0f;
        }
    uint16_t *wp = fdpo_malloc(fdpo_decode_packed_size(IC, OC) * sizeof(uint16_t));
    fdpo_decode_pack_bf16(wp, w, IC, OC, OC, 1);
    size_t n_acc = fdpo_decode_packed_scratch(RMAX), n_f32 = fdpo_decode_f32_scratch(RMAX, OC);
    float *acc = fdpo_malloc((n_acc > n_f32 ? n_acc : n_f32) * sizeof(float));
    uint16_t *in16 = fdpo_malloc(RMAX * (IC + 1) * sizeof(uint16_t));
    static const size_t rows[5] = {1, 5, 8, 16, 70};
    float *res[10];
    char names[10][16];
    size_t sx[2] = {RMAX, IC}, sw[2] = {IC, OC}, sb[2] = {RMAX, OC}, so[10][2];
    fdpo_st_writer *wr = fdpo_st_writer_new();
    fdpo_st_writer_add(wr, "x", FDPO_F32, sx, 2, x);
    fdpo_st_writer_add(wr, "w", FDPO_F32, sw, 2, w);
    fdpo_st_writer_add(wr, "base", FDPO_F32, sb, 2, base);
    for (int k = 0; k < 10; k++) {
        size_t R = rows[k % 5];
        res[k] = fdpo_malloc(R * OC * sizeof(float));
        memcpy(res[k], base, R * OC * sizeof(float));
        if (k < 5) fdpo_decode_packed_matmul(res[k], x, wp, R, IC, OC, 1, in16, acc);
        else fdpo_decode_f32_matmul(res[k], x, w, R, IC, OC, 1, acc);
        snprintf(names[k], sizeof names[k], "%s_%zu", k < 5 ? "bf16" : "f32", R);
        so[k][0] = R; so[k][1] = OC;
        fdpo_st_writer_add(wr, names[k], FDPO_F32, so[k], 2, res[k]);
    }
    int rc = fdpo_st_writer_write(wr, out);
    fdpo_st_writer_free(wr);
    for (int k = 0; k < 10; k++) free(res[k]);
    free(x); free(w); free(base); free(wp); free(acc); free(in16);
    return rc;
}
