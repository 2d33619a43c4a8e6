/* fdpo_expf8: libm's expf, 8 at a time, bit for bit (include/fdpo/decode.h).
 *
 * Why a second exponential next to fdpo_k_expf: fdpo_k_expf is the fast one of the training
 * kernels (<= 1 ulp, its own bits); this one exists where fp32 results have always been
 * computed with libm's expf and must keep every bit: the sampler's weights (the sampled
 * token is the first v whose running sum exceeds u, so one changed bit can change a
 * sample), the fp32 decoder's GELU and attention softmax (fp32 samples stay byte-identical
 * to every earlier build). One by one, those calls were the larger half of the sampler's
 * time (50257 per row at GPT-2 size).
 *
 * The algorithm is glibc's expf (sysdeps/ieee754/flt-32/e_expf.c: x 32/ln 2 = k + r,
 * exp(x) = 2^(k/32) 2^(r/32), a 32-entry table of 2^(i/32) and a cubic in double
 * precision, one rounding to float at the end) with the fused multiply-adds Debian 12's
 * libm uses (its __expf_fma, read in the disassembly: k and r are both fma of x 32/ln 2,
 * the cubic is three fmas), on 8 doubles per AVX-512 vector. The table is computed here,
 * not copied, and the routine is checked against expf itself at first use (1 in 9973 of
 * the floats in (-88, 88) and every 1/64 step; tests/py/test_generate_decode.py checks 1
 * in 13): any difference, no AVX-512, or FDPO_EXPF8_SCALAR=1, and fdpo_expf8 calls expf. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/decode.h"

static struct {
    uint64_t tab[32];   /* bits of 2^(i/32) minus i << 47 (adding k << 47 then gives 2^(k/32)) */
    double invln2n, shift, c0, c1, c2;
} vexp;
static int vexp_ok; /* 1: expf8_vector may be used (set once, by expf8_init) */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EXPF8_VECTOR 1
/* out [0:8] = expf (x [0:8]) on glibc's main path (|x| < 88; the caller checks) */
__attribute__((target("avx512f"))) static inline void expf8_vector(float *out, const float *x) {
    __m512d xd = _mm512_cvtps_pd(_mm256_loadu_ps(x)), invln2n = _mm512_set1_pd(vexp.invln2n),
            shift = _mm512_set1_pd(vexp.shift);
    __m512d kd = _mm512_fmadd_pd(invln2n, xd, shift); /* k = round(x 32 / ln 2), in the low bits */
    __m512i ki = _mm512_castpd_si512(kd);
    kd = _mm512_sub_pd(kd, shift);
    __m512d r = _mm512_fmsub_pd(invln2n, xd, kd);     /* x 32 / ln 2 - k, in [-1/2, 1/2] */
    /* tab [k mod 32]: two two-register permutes (entries 0-15, 16-31: each reads the index's
     * low 4 bits) and a blend on bit 4, in registers; a gather made 8 loads of it */
    const __m512i *tab = (const __m512i *)(const void *)vexp.tab;
    __m512i t = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(ki, _mm512_set1_epi64(16)),
                                        _mm512_permutex2var_epi64(_mm512_loadu_si512(tab), ki, _mm512_loadu_si512(tab + 1)),
                                        _mm512_permutex2var_epi64(_mm512_loadu_si512(tab + 2), ki, _mm512_loadu_si512(tab + 3)));
    __m512d s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64(ki, 47))); /* 2^(k/32) */
    __m512d z = _mm512_fmadd_pd(_mm512_set1_pd(vexp.c0), r, _mm512_set1_pd(vexp.c1));
    __m512d r2 = _mm512_mul_pd(r, r);
    __m512d y = _mm512_fmadd_pd(_mm512_set1_pd(vexp.c2), r, _mm512_set1_pd(1.0));
    y = _mm512_fmadd_pd(z, r2, y);
    _mm256_storeu_ps(out, _mm512_cvtpd_ps(_mm512_mul_pd(y, s)));
}
#endif

/* Does every x [0:8] lie on expf's main path (|x| < 88, not NaN)? */
static inline int expf8_in_range(const float *x) {
    int ok = 1;
    for (int j = 0; j < 8; j++) ok &= fabsf(x[j]) < 88.0f;
    return ok;
}

/* Floats where expf8_vector differs from expf: the bit patterns of (-88, 88) taken 1 in
 * stride (both signs) and every 1/64 step of (-88, 88) */
static size_t expf8_mismatches(uint32_t stride) {
    size_t bad = 0;
#ifdef EXPF8_VECTOR
    float x[8], e[8];
    int n = 0;
    for (uint64_t b = 0; b <= 0x42b00000u; b += stride)
        for (int sign = 0; sign < 2; sign++) {
            uint32_t bits = (uint32_t)b | (sign ? 0x80000000u : 0);
            memcpy(&x[n], &bits, sizeof bits);
            if (++n < 8) continue;
            n = 0;
            if (!expf8_in_range(x)) continue;
            expf8_vector(e, x);
            for (int j = 0; j < 8; j++) bad += memcmp(&e[j], &(float){expf(x[j])}, sizeof(float)) != 0;
        }
    for (int k = -88 * 64 + 1; k + 8 <= 88 * 64; k += 8) {
        for (int j = 0; j < 8; j++) x[j] = (float)(k + j) / 64;
        expf8_vector(e, x);
        for (int j = 0; j < 8; j++) bad += memcmp(&e[j], &(float){expf(x[j])}, sizeof(float)) != 0;
    }
#else
    (void)stride;
#endif
    return bad;
}

static void expf8_init(void) {
#ifdef EXPF8_VECTOR
    if (fdpo_env_switch("FDPO_EXPF8_SCALAR", 0) || !__builtin_cpu_supports("avx512f")) return;
    for (int i = 0; i < 32; i++) {
        double v = (double)exp2l((long double)i / 32); /* 2^(i/32) rounded to double */
        uint64_t u;
        memcpy(&u, &v, sizeof u);
        vexp.tab[i] = u - ((uint64_t)i << 47);
    }
    vexp.invln2n = 0x1.71547652b82fep+0 * 32;       /* 32 / ln 2 */
    vexp.shift = 0x1.8p+52;                         /* adding it rounds to an integer */
    vexp.c0 = 0x1.c6af84b912394p-5 / 32 / 32 / 32; /* the cubic for 2^(r/32) */
    vexp.c1 = 0x1.ebfce50fac4f3p-3 / 32 / 32;
    vexp.c2 = 0x1.62e42ff0c52d6p-1 / 32;
    vexp_ok = expf8_mismatches(9973) == 0;
#endif
}

int fdpo_expf8_ready(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, expf8_init);
    return vexp_ok;
}

void fdpo_expf8(float *e, const float *x) {
#ifdef EXPF8_VECTOR
    if (fdpo_expf8_ready() && expf8_in_range(x)) { expf8_vector(e, x); return; }
#endif
    for (int j = 0; j < 8; j++) e[j] = expf(x[j]);
}

#ifdef EXPF8_VECTOR
/* e [0:n] = expf (x [0:n]), groups of 8 on expf8_vector (inlined: one call and one check of
 * the init for a whole block, the range test as one vector compare), the rest expf */
__attribute__((target("avx512f"))) static size_t expf_block_vector(float *e, const float *x, size_t n) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), lim = _mm256_set1_ps(88.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 ax = _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask);
        if (_mm256_movemask_ps(_mm256_cmp_ps(ax, lim, _CMP_LT_OQ)) == 0xff) expf8_vector(e + i, x + i); /* |x| < 88 */
        else for (int j = 0; j < 8; j++) e[i + j] = expf(x[i + j]);
    }
    return i;
}
#endif

void fdpo_expf_block(float *e, const float *x, size_t n) {
    size_t i = 0;
#ifdef EXPF8_VECTOR
    if (fdpo_expf8_ready()) i = expf_block_vector(e, x, n);
#endif
    for (; i < n; i++) e[i] = expf(x[i]);
}

size_t fdpo_expf8_check(uint32_t stride) { return fdpo_expf8_ready() ? expf8_mismatches(stride ? stride : 1) : 0; }
