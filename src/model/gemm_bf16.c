/* bf16 mixed precision: the one GEMM entry point (fdpo_gemm_bf16), fp32 <-> bf16
 * conversion, CPU detection and the --precision setting.
 *
 * bf16 matmuls take bf16 inputs and accumulate in fp32 into an fp32 output. Two routes
 * compute that product (only the fp32 summation order differs between them):
 *   - vdpbf16ps: oneDNN's dnnl_gemm_bf16bf16f32, which libdnnl 2.6 exports but does not
 *     declare: the prototype below is its documented C++ signature (row-major, dnnl_dim_t
 *     sizes, like dnnl_sgemm). See docs/model.md for why this and not the matmul primitive.
 *   - fp32 FMA: both operands widened to fp32 (exact) and multiplied by fdpo_sgemm. Taken
 *     without AVX512-BF16 (or with FDPO_FORCE_BF16_FALLBACK=1), and for large GEMMs on CPUs
 *     where vdpbf16ps is the slower instruction (below: this Intel Xeon runs it at half the
 *     fp32 FMA's FLOP rate; docs/model.md, bf16 on this CPU). FDPO_BF16_GEMM=dpbf16|fp32
 *     forces one route for every bf16 GEMM. */
#include <cblas.h>
#include <immintrin.h>
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "model/gpt2_internal.h"

dnnl_status_t dnnl_gemm_bf16bf16f32(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N, dnnl_dim_t K,
                                    float alpha, const uint16_t *A, dnnl_dim_t lda, const uint16_t *B,
                                    dnnl_dim_t ldb, float beta, float *C, dnnl_dim_t ldc);

static fdpo_precision default_precision = FDPO_PRECISION_FP32;

int fdpo_precision_parse(const char *name, fdpo_precision *out) {
    if (name && !strcmp(name, "fp32")) { *out = FDPO_PRECISION_FP32; return 0; }
    if (name && !strcmp(name, "bf16")) { *out = FDPO_PRECISION_BF16; return 0; }
    return fdpo_error("--precision: '%s' is not one of fp32, bf16", name ? name : "(none)");
}

const char *fdpo_precision_name(fdpo_precision p) { return p == FDPO_PRECISION_BF16 ? "bf16" : "fp32"; }

int fdpo_set_precision(const char *name) {
    fdpo_precision p = FDPO_PRECISION_FP32;
    if (fdpo_precision_parse(name, &p)) return -1;
    default_precision = p;
    return 0;
}

fdpo_precision fdpo_get_precision(void) { return default_precision; }

/* 1 if the bf16 GEMM runs on AVX512-BF16 hardware, 0 for the fp32 fallback; the first
 * call that picks the fallback says so once through the log hook. Decided once per process
 * (pthread_once: callers on several threads wait for the one answer and one notice). */
static int bf16_native_state;
static pthread_once_t bf16_native_once = PTHREAD_ONCE_INIT;

static void bf16_native_decide(void) {
    int forced = fdpo_env_switch("FDPO_FORCE_BF16_FALLBACK", 0);
    __builtin_cpu_init();
    int has = __builtin_cpu_supports("avx512bf16") != 0;
    bf16_native_state = has && !forced;
    if (!bf16_native_state)
        fdpo_log(FDPO_LOG_INFO, "bf16: %s; matmuls use the slower fp32 fallback (bf16-rounded inputs, sgemm)",
                 forced ? "FDPO_FORCE_BF16_FALLBACK=1" : "this CPU has no AVX512-BF16");
}

int fdpo_bf16_native(void) {
    pthread_once(&bf16_native_once, bf16_native_decide);
    return bf16_native_state;
}

/* ---- which instruction multiplies bf16 operands ----
 * vdpbf16ps (16 lanes x 2 bf16 products per instruction) is twice the fp32 FMA's FLOPs per
 * instruction, but not every core issues it as often: on the Zen 4 the bf16 goals were set
 * on it runs at 2x the fp32 FMA rate, on this Intel Xeon (KVM) at 0.49x (`fdpo-harness
 * isa-peaks`: 86 vs 175 GFLOP/s per core, register-resident), and oneDNN's bf16 GEMM then
 * reaches half of its fp32 sgemm. A product of two bf16 numbers is exact in fp32, so an
 * fp32 GEMM of the bf16-rounded operands computes the same bf16 x bf16 -> fp32 product (only
 * the summation order differs, as between any two GEMMs): where vdpbf16ps is the slower
 * instruction, bf16 GEMMs large enough to amortise the widening run that way.
 * Decided once per process by a register-resident probe of both instructions (best of 7,
 * thread CPU time, < 1 ms), with a wide margin (the two rates differ by 2x either way on the
 * machines measured); FDPO_BF16_GEMM=dpbf16|fp32 overrides it (tests, A/B runs). */
static double thread_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

__attribute__((target("avx512f"))) static double probe_fma_rate(long iters) {
    __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1e-7f), acc[12];
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps((float)i);
    double c0 = thread_cpu_seconds();
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < 12; i++) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
        __asm__ volatile("" : "+v"(a));
    }
    double dt = thread_cpu_seconds() - c0;
    float s = 0.0f;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(acc[i]);
    return s == 12345.0f ? 0.0 : 32.0 * 12 * (double)iters / dt; /* the test keeps s alive */
}

__attribute__((target("avx512f,avx512bf16"))) static double probe_dpbf16_rate(long iters) {
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380);
    __m512 acc[12];
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps((float)i);
    double c0 = thread_cpu_seconds();
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < 12; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
        __asm__ volatile("" : "+v"(a));
    }
    double dt = thread_cpu_seconds() - c0;
    float s = 0.0f;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(acc[i]);
    return s == 12345.0f ? 0.0 : 64.0 * 12 * (double)iters / dt;
}

/* FDPO_BF16_GEMM: 1 = dpbf16 (every bf16 GEMM on vdpbf16ps), 0 = fp32 (every one widened),
 * -1 = unset: by shape and the probe below. Read once (fdpo_gemm_bf16_force_route sets it). */
static _Atomic int bf16_route_state = -2; /* atomic: read by any thread (the value is the environment's either way) */

void fdpo_gemm_bf16_force_route(int route) { bf16_route_state = route < 0 ? -1 : route > 0; }

static int bf16_gemm_forced(void) {
    int state = bf16_route_state;
    if (state > -2) return state;
    const char *e = getenv("FDPO_BF16_GEMM");
    state = -1;
    if (e && !strcmp(e, "dpbf16")) state = 1;
    else if (e && !strcmp(e, "fp32")) state = 0;
    else if (e && *e)
        fdpo_log(FDPO_LOG_WARN, "FDPO_BF16_GEMM: '%s' is not one of dpbf16, fp32; choosing by measurement", e);
    bf16_route_state = state;
    return state;
}

/* 1 if vdpbf16ps is at least 0.75x as fast as fp32 FMA here (probed once, said once). The
 * probe is timed, so two threads probing at once could disagree (one GEMM on each route, or
 * a decoder team split between the routes' barriers): pthread_once runs it on one thread
 * while any other caller waits for its answer. */
static int dpbf16_fast_state;
static pthread_once_t dpbf16_fast_once = PTHREAD_ONCE_INIT;

static void dpbf16_fast_decide(void) {
    /* FDPO_BF16_PROBE=dpbf16|fp32: the answer of a CPU on either side of the threshold, for
     * the tests of a resume's route pin (fdpo_bf16_route_pin, which it does not override) */
    const char *e = getenv("FDPO_BF16_PROBE");
    if (e && (!strcmp(e, "dpbf16") || !strcmp(e, "fp32"))) {
        dpbf16_fast_state = !strcmp(e, "dpbf16");
        return;
    }
    if (e && *e) fdpo_log(FDPO_LOG_WARN, "FDPO_BF16_PROBE: '%s' is not one of dpbf16, fp32; measuring", e);
    double fma = 0.0, dp = 0.0;
    /* best of 7, alternating, ~40 us each: a busy SMT sibling or a preemption only lowers a
     * rate, so the best of several short runs is the instruction's; best of 3 x 8 us picked
     * the other route now and then under heavy load (seen in the decode tests, wave 6) */
    for (int r = 0; r < 7; r++) {
        double f = probe_fma_rate(20000), d = probe_dpbf16_rate(20000);
        fma = f > fma ? f : fma;
        dp = d > dp ? d : dp;
    }
    dpbf16_fast_state = dp >= 0.75 * fma;
    fdpo_log(FDPO_LOG_INFO, "bf16: vdpbf16ps runs at %.2fx the fp32 FMA rate on this CPU; large bf16 GEMMs %s "
             "(FDPO_BF16_GEMM=dpbf16|fp32 overrides)", fma > 0 ? dp / fma : 0.0,
             dpbf16_fast_state ? "use it" : "multiply the bf16-rounded operands with fp32 FMA");
}

/* A resumed run's route (fdpo_bf16_route_pin): -1 none (the probe's answer), 1 vdpbf16ps,
 * 0 fp32 FMA. It replaces the probe's answer, which is timed and so could differ between a
 * run and its resume on a CPU whose two rates lie near the threshold. */
static _Atomic int dpbf16_fast_pinned = -1;
static _Atomic int route_pinned_fallback; /* 1: pinned to the no-AVX512-BF16 fallback's bits */
static _Atomic int route_fallback_set_gemm; /* 1: that pin forced the GEMM route (no FDPO_BF16_GEMM) */

static int dpbf16_is_fast(void) {
    int pinned = dpbf16_fast_pinned;
    if (pinned >= 0) return pinned;
    pthread_once(&dpbf16_fast_once, dpbf16_fast_decide);
    return dpbf16_fast_state;
}

const char *fdpo_bf16_route(void) {
    if (!fdpo_bf16_native() || route_pinned_fallback) return "fallback";
    return dpbf16_is_fast() ? "dpbf16" : "fp32";
}

int fdpo_bf16_route_pin(const char *route) {
    int fallback = route && !strcmp(route, "fallback"), dp = route && !strcmp(route, "dpbf16");
    if (!fallback && !dp && !(route && !strcmp(route, "fp32")))
        return fdpo_error("bf16-route: '%s' is not one of dpbf16, fp32, fallback", route ? route : "(none)");
    if (!fdpo_bf16_native()) return fallback ? 0 : 1;   /* the fallback is the only route here */
    if (fallback && !route_pinned_fallback) {   /* every GEMM widened (unless FDPO_BF16_GEMM says otherwise), the decoder widening */
        route_fallback_set_gemm = bf16_gemm_forced() < 0;
        if (route_fallback_set_gemm) bf16_route_state = 0;
        route_pinned_fallback = 1;
    } else if (!fallback && route_pinned_fallback) {   /* a later pin replaces the fallback's, whole */
        if (route_fallback_set_gemm) bf16_route_state = -1;
        route_fallback_set_gemm = 0;
        route_pinned_fallback = 0;
    }
    dpbf16_fast_pinned = dp;
    return 0;
}

const char *fdpo_bf16_route_pinned(void) {
    if (route_pinned_fallback) return "fallback";
    int pinned = dpbf16_fast_pinned;
    return pinned < 0 ? NULL : pinned ? "dpbf16" : "fp32";
}

void fdpo_bf16_route_restore(const char *pinned) {
    if (pinned) { (void)fdpo_bf16_route_pin(pinned); return; }   /* a name fdpo_bf16_route_pinned gave */
    if (route_pinned_fallback && route_fallback_set_gemm) bf16_route_state = -1;   /* undo what the pin forced */
    route_fallback_set_gemm = 0;
    route_pinned_fallback = 0;
    dpbf16_fast_pinned = -1;   /* the probe's answer again */
}

int fdpo_bf16_dpbf16_is_fast(void) { return dpbf16_is_fast(); }

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* dst [n] = bf16(src [n]) on the calling thread: fdpo_bf16_round's bits (round to nearest
 * even, NaN kept quiet, subnormals kept: not vcvtneps2bf16, which flushes them), 16 at a
 * time with AVX-512F integer operations */
void fdpo_bf16_round_n(uint16_t *dst, const float *src, size_t n) {
    size_t i = 0;
#ifdef __AVX512F__
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    const __m512i half = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1), quiet = _mm512_set1_epi32(0x40);
    for (; i + 16 <= n; i += 16) {
        __m512i u = _mm512_loadu_si512(src + i);
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
        __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
        r = _mm512_mask_or_epi32(_mm512_srli_epi32(r, 16), nan, _mm512_srli_epi32(u, 16), quiet);
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(r));
    }
#endif
    for (; i < n; i++) dst[i] = fdpo_bf16_round(src[i]);
}

/* dst [n] = bf16(src [n]) */
void fdpo_f32_to_bf16(uint16_t *dst, const float *src, size_t n) {
    enum { BLOCK = 16384 };
    const size_t nb = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t b = 0; b < nb; b++) {
        size_t lo = b * BLOCK, len = n - lo < BLOCK ? n - lo : BLOCK;
        fdpo_bf16_round_n(dst + lo, src + lo, len);
    }
}

/* dense fp32 copy [rows, cols] of a bf16 matrix with leading dimension ld, into w */
static void widen(float *w, const uint16_t *x, size_t rows, size_t cols, size_t ld) {
#pragma omp parallel for schedule(static) if (rows * cols >= FDPO_PAR_MIN)
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) w[r * cols + c] = bf16_to_f32(x[r * ld + c]);
}

/* Per-thread scratch for the widened operands, grown on demand and kept: a GEMM per layer
 * and direction would otherwise map and fault in megabytes each call. */
static _Thread_local float *widen_buf;
static _Thread_local size_t widen_cap;

static float *widen_scratch(size_t n) {
    if (n > widen_cap) {
        widen_buf = fdpo_realloc_large(widen_buf, n * sizeof(float));   /* in place: alloc_large.c */
        widen_cap = n;
    }
    return widen_buf;
}

/* FLOPs per widened element above which the fp32 route pays for its widening (2MN/(M+N):
 * below it, e.g. a decode step's few rows against a weight, the GEMM is a pass over the
 * weight and bf16's half-size reads win) */
#define WIDEN_MIN_INTENSITY 128.0

/* 1 if a bf16 GEMM with an [M, N] result runs as an fp32 GEMM of the widened (bf16-rounded)
 * operands here, 0 if on vdpbf16ps: the route fdpo_gemm_bf16 takes for that shape. */
int fdpo_gemm_bf16_widens(size_t M, size_t N) {
    if (!fdpo_bf16_native()) return 1;
    int forced = bf16_gemm_forced();
    if (forced >= 0) return !forced;
    return !(2.0 * (double)M * (double)N / (double)(M + N) < WIDEN_MIN_INTENSITY || dpbf16_is_fast());
}

/* dst [n] = src [n] rounded to bf16 and kept in fp32 (the fp32 route's operand, in one pass
 * instead of rounding to bf16 and widening again; the same values bit for bit) */
void fdpo_f32_round_bf16(float *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(fdpo_bf16_round(src[i]));
}

/* dst [n] = the bf16 values x [n] in fp32 (exact) */
void fdpo_bf16_widen(float *dst, const uint16_t *x, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(x[i]);
}

/* Per-thread fp32 operand buffers of the bf16 kernels' fp32 route (slot 0 or 1), grown on
 * demand and kept, like widen_scratch. Contents are not kept across calls. */
static _Thread_local float *operand_buf[2];
static _Thread_local size_t operand_cap[2];

float *fdpo_bf16_operand_scratch(int slot, size_t n) {
    if (n > operand_cap[slot]) {
        operand_buf[slot] = fdpo_realloc_large(operand_buf[slot], n * sizeof(float));   /* in place */
        operand_cap[slot] = n;
    }
    return operand_buf[slot];
}

/* C [M,N] = alpha * op(A) op(B) + beta * C, row-major; op(A) is [M,K], op(B) is [K,N];
 * A, B bf16, C fp32, fp32 accumulation. The only bf16 GEMM in fdpo. */
void fdpo_gemm_bf16(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha,
                    const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, float beta, float *C, size_t ldc) {
    if (M == 0 || N == 0) return;
    fdpo_threads_settle();
    int use_dpbf16 = !fdpo_gemm_bf16_widens(M, N);
    if (use_dpbf16) {
        dnnl_status_t s = dnnl_gemm_bf16bf16f32(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', (dnnl_dim_t)M,
                                                (dnnl_dim_t)N, (dnnl_dim_t)K, alpha, A, (dnnl_dim_t)lda, B,
                                                (dnnl_dim_t)ldb, beta, C, (dnnl_dim_t)ldc);
        if (s == dnnl_success) return;
        /* not expected with valid sizes; the fp32 route below computes the same product */
    }
    size_t ar = trans_a ? K : M, ac = trans_a ? M : K, br = trans_b ? N : K, bc = trans_b ? K : N;
    float *a = widen_scratch(ar * ac + br * bc + 1), *b = a + ar * ac;
    widen(a, A, ar, ac, lda);
    widen(b, B, br, bc, ldb);
    fdpo_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M,
               (int)N, (int)K, alpha, a, (int)ac, b, (int)bc, beta, C, (int)ldc);
}

/* ---- fp32 GEMM ----
 * cblas_sgemm's signature, computed by oneDNN's dnnl_sgemm (row-major). Why: Debian's
 * OpenBLAS 0.3.21 does not recognise every AVX-512 CPU and then runs its generic SSE3
 * ("Prescott") kernels; on the Zen 4 development machine that made fdpo's fp32 GEMMs 3-5x
 * slower than oneDNN's, whose JIT kernels pick the ISA at run time (docs/model.md#speed).
 * FDPO_SGEMM=openblas goes back to cblas_sgemm (for A/B measurements). Deterministic for a
 * given thread count, like OpenBLAS. Inside an OpenMP parallel region oneDNN runs on the
 * calling thread. */
static int sgemm_use_openblas(void) {
    static int state = -1;
    if (state < 0) {
        static const char *const choices[] = {"onednn", "openblas", NULL};
        int warned = 0;
        state = fdpo_env_choice("FDPO_SGEMM", choices, 0, &warned);
    }
    return state;
}

/* Row blocks (CPUs without AVX-512). A row of C should depend on its row of A and on B
 * only: a sequence scored alone or in a batch, and equal rows of one batch, then give the
 * same bits (a policy is its own reference exactly: DPO's step-0 ties, GRPO's zero
 * advantages for equal completions; docs/model.md#row-invariance). oneDNN 2.6's AVX2
 * kernels break that: the last M mod 6 rows, when 1-3, take another kernel, and the K
 * blocking follows M (with K 768, N 2304 every row of an M < 384 product differs from the
 * same row at M = 2048). On AVX-512 its kernels keep it and fdpo_sgemm calls oneDNN
 * directly. Here every product with untransposed A runs as products of exactly
 * SGEMM_ROW_BLOCK rows, the last padded with zero rows in scratch: one shape per (N, K),
 * so every row takes the same kernel. (A failed call can only be a bad argument, which
 * the first block already reports, before any row of C is written.) Measured with 2
 * threads on an AVX2 EPYC (loaded machine, best of 5): 166-171
 * GFLOP/s for 1024 x 768 x 2304 and 1024 x 3072 x 768 against 162-178 in one call, and
 * 1.6x faster than one call for K = 128 (oneDNN splits those poorly). */
#ifndef __AVX512F__
#define SGEMM_ROW_BLOCK 48
static _Thread_local float *row_block_buf;
static _Thread_local size_t row_block_cap;

static int sgemm_row_blocks(char ta, char tb, int M, int N, int K, float alpha, const float *A, int lda,
                            const float *B, int ldb, float beta, float *C, int ldc) {
    int m0 = 0;
    for (; m0 + SGEMM_ROW_BLOCK <= M; m0 += SGEMM_ROW_BLOCK)
        if (dnnl_sgemm(ta, tb, SGEMM_ROW_BLOCK, N, K, alpha, A + (size_t)m0 * (size_t)lda, lda, B, ldb, beta,
                       C + (size_t)m0 * (size_t)ldc, ldc) != dnnl_success)
            return 0;
    if (m0 == M) return 1;
    size_t r = (size_t)(M - m0), need = (size_t)SGEMM_ROW_BLOCK * ((size_t)K + (size_t)N);
    if (need > row_block_cap) {
        row_block_buf = fdpo_realloc_large(row_block_buf, need * sizeof(float));
        row_block_cap = need;
    }
    float *a = row_block_buf, *c = row_block_buf + (size_t)SGEMM_ROW_BLOCK * (size_t)K;
    for (size_t i = 0; i < r; i++) memcpy(a + i * (size_t)K, A + ((size_t)m0 + i) * (size_t)lda, (size_t)K * sizeof(float));
    memset(a + r * (size_t)K, 0, (SGEMM_ROW_BLOCK - r) * (size_t)K * sizeof(float));
    if (beta != 0.0f)
        for (size_t i = 0; i < r; i++) memcpy(c + i * (size_t)N, C + ((size_t)m0 + i) * (size_t)ldc, (size_t)N * sizeof(float));
    if (dnnl_sgemm(ta, tb, SGEMM_ROW_BLOCK, N, K, alpha, a, K, B, ldb, beta, c, N) != dnnl_success) return 0;
    for (size_t i = 0; i < r; i++) memcpy(C + ((size_t)m0 + i) * (size_t)ldc, c + i * (size_t)N, (size_t)N * sizeof(float));
    return 1;
}
#endif

static void sgemm_run(int row_blocks, int order, int trans_a, int trans_b, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    (void)row_blocks;   /* AVX-512 builds: oneDNN's rows are invariant there */
    if (M <= 0 || N <= 0) return;
    fdpo_threads_settle();
    if (order == CblasRowMajor && K > 0 && !sgemm_use_openblas()) {
        char ta = trans_a == CblasTrans ? 'T' : 'N', tb = trans_b == CblasTrans ? 'T' : 'N';
#ifndef __AVX512F__
        if (ta == 'N' && row_blocks) {
            if (sgemm_row_blocks(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)) return;
        } else
#endif
        if (dnnl_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) == dnnl_success) return;
    }
    cblas_sgemm((CBLAS_ORDER)order, (CBLAS_TRANSPOSE)trans_a, (CBLAS_TRANSPOSE)trans_b, M, N, K, alpha, A, lda, B,
                ldb, beta, C, ldc);
}

void fdpo_sgemm(int order, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc) {
    sgemm_run(1, order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void fdpo_sgemm_any_rows(int order, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                         int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    sgemm_run(0, order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
