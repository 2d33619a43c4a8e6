/* isa-peaks: the instruction-level FLOP ceilings of this CPU, register-resident.
 *
 *   isa-peaks [--threads N] [--iters I]
 *       one JSON line: GFLOP/s of 512-bit fp32 FMA (vfmadd231ps, 32 FLOP per instruction),
 *       bf16 dot-product accumulate (vdpbf16ps: 16 lanes x 2 products x 2 = 64 FLOP) and,
 *       for information, fp16 FMA (vfmadd231ph, 64 FLOP; fp16 accumulation, so no training
 *       path uses it), each on every thread at once, plus bf16/fp32 = the factor a bf16
 *       GEMM can gain over an fp32 one at most (no memory traffic at all here). *_gflops:
 *       FLOPs per wall second; *_cpu_gflops: per second of each thread's own CPU time,
 *       summed over threads (what the cores do while they run: steady on a loaded machine);
 *       bf16_over_fp32 is the ratio of the latter.
 *
 * Why: issue #13's bf16 goals assume AVX512-BF16 does twice the fp32 FMA FLOP rate (true on
 * the Zen 4 the issue was measured on); whether it holds on the machine at hand decides
 * whether a bf16 GEMM can beat fp32 sgemm at all. Each thread keeps 16 independent
 * accumulators (more than latency x throughput of either instruction on current cores), no
 * loads or stores in the loop; the best of several runs counts. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fdpo/core.h"
#include "harness.h"

#define ACC 16
static volatile float sink; /* keeps the accumulators alive */

/* Each probe: ACC accumulators, each updated `iters` times by one instruction; the empty
 * asm makes `a` opaque every iteration so nothing is hoisted or folded. */
__attribute__((target("avx512f"))) static void probe_fma_fp32(long iters) {
    __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1e-7f), acc[ACC];
    for (int i = 0; i < ACC; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < ACC; i++) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
        __asm__ volatile("" : "+v"(a));
    }
    float s = 0.0f;
    for (int i = 0; i < ACC; i++) s += _mm512_reduce_add_ps(acc[i]);
    sink = s;
}

__attribute__((target("avx512f,avx512bf16"))) static void probe_dpbf16(long iters) {
    /* a = 1.0, b = 2^-24 in every bf16 lane */
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380);
    __m512 acc[ACC];
    for (int i = 0; i < ACC; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < ACC; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
        __asm__ volatile("" : "+v"(a));
    }
    float s = 0.0f;
    for (int i = 0; i < ACC; i++) s += _mm512_reduce_add_ps(acc[i]);
    sink = s;
}

__attribute__((target("avx512f,avx512fp16"))) static void probe_fma_fp16(long iters) {
    __m512h a = _mm512_set1_ph((_Float16)1.0f), b = _mm512_set1_ph((_Float16)0.0001f), acc[ACC];
    for (int i = 0; i < ACC; i++) acc[i] = _mm512_set1_ph((_Float16)(float)i);
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < ACC; i++) acc[i] = _mm512_fmadd_ph(a, b, acc[i]);
        __asm__ volatile("" : "+v"(a));
    }
    float s = 0.0f;
    for (int i = 0; i < ACC; i++) s += (float)_mm512_reduce_add_ph(acc[i]);
    sink = s;
}

static double thread_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Best of `reps` runs of fn on all threads at once: wall GFLOP/s, and the sum over threads
 * of each thread's FLOPs per second of its own CPU time (*cpu_rate), which a shared
 * machine's time slicing does not dilute. */
static double probe_gflops(void (*fn)(long), long iters, double flop_per_insn, int reps, double *cpu_rate) {
    double best = 0.0, best_cpu = 0.0, flop = flop_per_insn * ACC * (double)iters;
    for (int r = 0; r < reps; r++) {
        double t0 = 0.0, t1 = 0.0, rate = 0.0;
        int nth = 1;
#pragma omp parallel reduction(+ : rate)
        {
#pragma omp barrier
#pragma omp single
            { t0 = fdpo_now(); nth = omp_get_num_threads(); }
            double c0 = thread_cpu_seconds();
            fn(iters);
            rate = flop / (thread_cpu_seconds() - c0);
#pragma omp barrier
#pragma omp single
            t1 = fdpo_now();
        }
        double g = flop * nth / (t1 - t0) * 1e-9;
        if (g > best) best = g;
        if (rate * 1e-9 > best_cpu) best_cpu = rate * 1e-9;
    }
    *cpu_rate = best_cpu;
    return best;
}

/* wall GFLOP/s of 512-bit fp32 FMA on all current threads at once (0 without AVX-512);
 * decode-matmul reports its kernels against it */
double harness_fma_fp32_gflops(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return 0.0;
    double cpu;
    return probe_gflops(probe_fma_fp32, 20000000 / ACC, 32.0, 5, &cpu);
}

int h_isa_peaks(int argc, char **argv);
int h_isa_peaks(int argc, char **argv) {
    int threads = 0;
    long iters = 20000000 / ACC; /* ~0.1 s per run at a few GHz */
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters")) iters = atol(argv[i + 1]);
        else return fdpo_error("isa-peaks: unknown flag '%s' (--threads, --iters)", argv[i]);
    }
    if (threads > 0) fdpo_set_threads(threads);
    if (iters < 1) return fdpo_error("--iters: must be >= 1");
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return fdpo_error("isa-peaks: this CPU has no AVX-512");
    int has_bf16 = __builtin_cpu_supports("avx512bf16") != 0, has_fp16 = __builtin_cpu_supports("avx512fp16") != 0;
    double fma_c = 0, bf16_c = 0, fp16_c = 0;
    double fma = probe_gflops(probe_fma_fp32, iters, 32.0, 5, &fma_c);
    double bf16 = has_bf16 ? probe_gflops(probe_dpbf16, iters, 64.0, 5, &bf16_c) : 0.0;
    double fp16 = has_fp16 ? probe_gflops(probe_fma_fp16, iters, 64.0, 5, &fp16_c) : 0.0;
    printf("{\"threads\": %d, \"fma_fp32_gflops\": %.1f, \"dpbf16_gflops\": %.1f, \"fma_fp16_gflops\": %.1f, "
           "\"fma_fp32_cpu_gflops\": %.1f, \"dpbf16_cpu_gflops\": %.1f, \"fma_fp16_cpu_gflops\": %.1f, "
           "\"bf16_over_fp32\": %.3f}\n",
           fdpo_get_threads(), fma, bf16, fp16, fma_c, bf16_c, fp16_c, fma_c > 0 ? bf16_c / fma_c : 0.0);
    return 0;
}
