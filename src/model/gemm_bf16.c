/* bf16 mixed precision: the one GEMM entry point (fdpo_gemm_bf16), fp32 <-> bf16
 * conversion, CPU detection and the --precision setting.
 *
 * bf16 matmuls take bf16 inputs and accumulate in fp32 into an fp32 output (what
 * vdpbf16ps does). The fast path is oneDNN's dnnl_gemm_bf16bf16f32, which libdnnl 2.6
 * exports but does not declare: the prototype below is its documented C++ signature
 * (row-major, dnnl_dim_t sizes, like dnnl_sgemm). See docs/model.md for why this and not
 * the matmul primitive. Without AVX512-BF16 (or with FDPO_FORCE_BF16_FALLBACK=1) the
 * inputs are widened to fp32 (exact) and multiplied by cblas_sgemm: same rounding of the
 * inputs, only the summation order differs. */
#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <string.h>
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
 * call that picks the fallback says so once through the log hook. */
int fdpo_bf16_native(void) {
    static int state = -1; /* decided once per process */
    if (state >= 0) return state;
    const char *force = getenv("FDPO_FORCE_BF16_FALLBACK");
    int forced = force && *force && strcmp(force, "0") != 0;
    __builtin_cpu_init();
    int has = __builtin_cpu_supports("avx512bf16") != 0;
    state = has && !forced;
    if (!state)
        fdpo_log(FDPO_LOG_INFO, "bf16: %s; matmuls use the slower fp32 fallback (bf16-rounded inputs, sgemm)",
                 forced ? "FDPO_FORCE_BF16_FALLBACK=1" : "this CPU has no AVX512-BF16");
    return state;
}

/* Round to nearest even; NaN stays NaN (quiet). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* dst [n] = bf16(src [n]) */
void fdpo_f32_to_bf16(uint16_t *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

/* dense fp32 copy [rows, cols] of a bf16 matrix with leading dimension ld */
static float *widen(const uint16_t *x, size_t rows, size_t cols, size_t ld) {
    float *w = fdpo_malloc((rows * cols + 1) * sizeof(float));
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) w[r * cols + c] = bf16_to_f32(x[r * ld + c]);
    return w;
}

/* C [M,N] = alpha * op(A) op(B) + beta * C, row-major; op(A) is [M,K], op(B) is [K,N];
 * A, B bf16, C fp32, fp32 accumulation. The only bf16 GEMM in fdpo. */
void fdpo_gemm_bf16(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha,
                    const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, float beta, float *C, size_t ldc) {
    if (M == 0 || N == 0) return;
    if (fdpo_bf16_native()) {
        dnnl_status_t s = dnnl_gemm_bf16bf16f32(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', (dnnl_dim_t)M,
                                                (dnnl_dim_t)N, (dnnl_dim_t)K, alpha, A, (dnnl_dim_t)lda, B,
                                                (dnnl_dim_t)ldb, beta, C, (dnnl_dim_t)ldc);
        if (s == dnnl_success) return;
        /* not expected with valid sizes; the fallback below computes the same product */
    }
    size_t ar = trans_a ? K : M, ac = trans_a ? M : K, br = trans_b ? N : K, bc = trans_b ? K : N;
    float *a = widen(A, ar, ac, lda), *b = widen(B, br, bc, ldb);
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, alpha, a, (int)ac, b, (int)bc, beta, C, (int)ldc);
    free(a);
    free(b);
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
        const char *e = getenv("FDPO_SGEMM");
        state = e && !strcmp(e, "openblas");
    }
    return state;
}

void fdpo_sgemm(int order, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (order == CblasRowMajor && K > 0 && !sgemm_use_openblas()) {
        dnnl_status_t s = dnnl_sgemm(trans_a == CblasTrans ? 'T' : 'N', trans_b == CblasTrans ? 'T' : 'N', M, N, K,
                                     alpha, A, lda, B, ldb, beta, C, ldc);
        if (s == dnnl_success) return;
    }
    cblas_sgemm((CBLAS_ORDER)order, (CBLAS_TRANSPOSE)trans_a, (CBLAS_TRANSPOSE)trans_b, M, N, K, alpha, A, lda, B,
                ldb, beta, C, ldc);
}
