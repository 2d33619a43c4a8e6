/* KV-cache decoding for GPT-2 (see include/fdpo/decode.h). The forward pass is the one of
 * src/model written for rows that each belong to a slot and sit at a position: the new
 * tokens' keys and values go into the cache first, then every row attends to its slot's
 * cache up to and including its own position. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/decode.h"
#include "fdpo/lora.h"
#include "model/llama_decode.h"
#include "model/gpt2_internal.h"

/* fp32: decoding steps of up to DECODE_SMALL_ROWS rows take the bandwidth-bound strip
 * matmuls (48-column strips, DECODE_STRIP), the LM head oneDNN per vocabulary block, more
 * rows (prefill, scoring) the library GEMMs. bf16: every linear layer and the LM head, any
 * number of rows, take the strip matmuls on weights packed for them at create. */
#define DECODE_SMALL_ROWS 16
#define DECODE_STRIP 48
/* keys per vector in attention (decode_attention_forward) */
#define DECODE_KEYS 16
typedef float decode_keys __attribute__((vector_size(DECODE_KEYS * sizeof(float))));

/* ---- Small-rows matmuls: out [R, OC] (= or +=) x [R, IC] @ W [IC, OC] ----
 * A decoding step reads every weight once and does little arithmetic with it, so its speed
 * is the speed of streaming W. BLAS would pack the whole weight matrix for a handful of
 * rows, which costs as much as the product. The drivers cut W into 48-column strips
 * (DECODE_STRIP), give each thread a contiguous range of strips (in the caller's region,
 * or one of their own) and call a tile kernel per (block of W's rows, strip, group of up to 8 rows of x):
 * the tile keeps the 8 x 48 accumulators of its row group in registers (24 of the 32
 * AVX-512 registers; 48 columns ran at about 1.4x the speed of 32, 64 spills) while it runs
 * down its block of W, and the driver keeps them in scratch (acc) between blocks. Each
 * output is summed in i order from 0 by one thread, then added to out, so results do not
 * depend on the thread count or on R. Two weight layouts:
 *
 * - fp32, W as the model stores it ([IC, OC] row-major; decode_matmul_small_rows with
 *   decode_tile_f32): blocks of DECODE_IBLOCK rows, and for each block every strip of the
 *   thread's range, so W is read row after row (DECODE_IBLOCK sequential streams the
 *   prefetcher follows; one strip's walk down all IC rows read a 192-byte piece of a new
 *   9 KB row per step: 1.5x slower at 1 thread, 768 x 3072, R = 8; blocks of 8, 16, 64 and
 *   128 rows measured 3-80% slower than 32). A second row group reads the block's strip
 *   again from L1.
 * - bf16, W packed once per decoder (decode_pack_bf16): strip after strip, each strip
 *   [ceil(IC/2) row pairs][48 columns][2] bf16, so a thread's strips are one contiguous run
 *   of memory. Two tiles read the pairs, one route per process (decode_bf16_route): fp32
 *   FMAs of the pairs widened in registers (decode_matmul_widen, below; where vdpbf16ps is
 *   slow, as on this Xeon), or AVX512-BF16's vdpbf16ps, which multiplies 16 columns x 2
 *   rows of W by a broadcast pair of x and adds both products into 16 fp32 sums
 *   (decode_matmul_small_rows with decode_tile_dpbf16, all of IC in one block). Without
 *   AVX512-BF16 (or FDPO_FORCE_BF16_FALLBACK=1) a portable tile does the widening route's
 *   sums in the same order.
 *
 * The multiply-adds are fused where the target has a fast fma (-std=c11 keeps GCC from
 * contracting a * b + c itself): ~10% faster, one rounding per step. */
#define DECODE_IBLOCK 32
#define DECODE_GROUP_ROWS 8
/* rows of a group whose 48 accumulators stay in registers while the tile runs down the block:
 * all 8 in AVX-512's 32 registers (24), 2 in AVX2's 16 (12; 8 rows there spilled every
 * accumulator to the stack, 2x slower), the block's strip read again from L1 per pass */
#if defined(__AVX512F__)
#define DECODE_PASS_ROWS 8
#elif defined(__AVX__)
#define DECODE_PASS_ROWS 2
#else
#define DECODE_PASS_ROWS 1
#endif
#ifdef FP_FAST_FMAF
#define DECODE_FMA(a, b, c) fmaf(a, b, c)
#else
#define DECODE_FMA(a, b, c) ((a) * (b) + (c))
#endif

/* acc [nr, DECODE_STRIP] += x [r0 : r0 + nr, i0 : i1] @ W [i0 : i1, strip s] (nr <=
 * DECODE_GROUP_ROWS; acc rows DECODE_STRIP apart). x's rows are ldx elements apart; x and
 * W are fp32 or bf16, as the kernel expects. */
typedef void decode_tile_fn(float *acc, const void *x, size_t ldx, size_t r0, size_t nr, const void *w,
                            size_t IC, size_t OC, size_t s, size_t i0, size_t i1);

/* fp32 tile, W [IC, OC] as stored: acc [R, ob] += inp [R, i0:i1] @ w [i0:i1, o0:o0+ob] */
static inline void decode_strip_block(float acc[DECODE_GROUP_ROWS][DECODE_STRIP], const float *inp, size_t ldx,
                                      const float *w, size_t R, size_t OC, size_t o0, size_t ob, size_t i0,
                                      size_t i1) {
    if (R == DECODE_GROUP_ROWS && ob == DECODE_STRIP) { /* constant bounds: acc stays in registers */
#pragma GCC unroll 8
        for (size_t r0 = 0; r0 < DECODE_GROUP_ROWS; r0 += DECODE_PASS_ROWS) /* one pass on AVX-512 */
            for (size_t i = i0; i < i1; i++) {
                const float *wi = w + i * OC + o0;
                /* the same piece of the next block's row: read after this block's other strips
                 * (past the last block it points beyond w: a prefetch never faults) */
                if (r0 == 0) {
                    __builtin_prefetch(wi + DECODE_IBLOCK * OC, 0, 2);
                    __builtin_prefetch(wi + DECODE_IBLOCK * OC + 16, 0, 2);
                    __builtin_prefetch(wi + DECODE_IBLOCK * OC + 32, 0, 2);
                }
                for (size_t r = r0; r < r0 + DECODE_PASS_ROWS; r++) {
                    float a = inp[r * ldx + i];
                    for (size_t j = 0; j < DECODE_STRIP; j++) acc[r][j] = DECODE_FMA(a, wi[j], acc[r][j]);
                }
            }
    } else if (ob == DECODE_STRIP) {
        for (size_t i = i0; i < i1; i++) {
            const float *wi = w + i * OC + o0;
            for (size_t r = 0; r < R; r++) {
                float a = inp[r * ldx + i];
                for (size_t j = 0; j < DECODE_STRIP; j++) acc[r][j] = DECODE_FMA(a, wi[j], acc[r][j]);
            }
        }
    } else {
        for (size_t i = i0; i < i1; i++) {
            const float *wi = w + i * OC + o0;
            for (size_t r = 0; r < R; r++) {
                float a = inp[r * ldx + i];
                for (size_t j = 0; j < ob; j++) acc[r][j] = DECODE_FMA(a, wi[j], acc[r][j]);
            }
        }
    }
}

static void decode_tile_f32(float *acc, const void *x, size_t ldx, size_t r0, size_t nr, const void *w,
                            size_t IC, size_t OC, size_t s, size_t i0, size_t i1) {
    (void)IC;
    size_t o0 = s * DECODE_STRIP, ob = OC - o0 < DECODE_STRIP ? OC - o0 : DECODE_STRIP;
    float a[DECODE_GROUP_ROWS][DECODE_STRIP];
    if (nr == DECODE_GROUP_ROWS) { /* constant sizes: the copies are inlined vector moves */
        memcpy(a, acc, sizeof a);
        decode_strip_block(a, (const float *)x + r0 * ldx, ldx, w, DECODE_GROUP_ROWS, OC, o0, ob, i0, i1);
        memcpy(acc, a, sizeof a);
        return;
    }
    memcpy(a, acc, nr * DECODE_STRIP * sizeof(float));
    decode_strip_block(a, (const float *)x + r0 * ldx, ldx, w, nr, OC, o0, ob, i0, i1);
    memcpy(acc, a, nr * DECODE_STRIP * sizeof(float));
}

/* Packed bf16 layout of W [IC, OC] for the small-rows driver: strip s, row pair p, column
 * j < DECODE_STRIP, q < 2 at ((s * ceil(IC/2) + p) * DECODE_STRIP + j) * 2 + q holds
 * bf16(W [2p + q, 48 s + j]), zero past IC or OC. */
static size_t decode_packed_size(size_t IC, size_t OC) {
    return (OC + DECODE_STRIP - 1) / DECODE_STRIP * DECODE_STRIP * ((IC + 1) / 2 * 2);
}

/* dst = the packed layout of W [IC, OC] with W [i, o] = src [i * si + o * so] (so a
 * transposed matrix, the tied LM head, packs with si = 1). */
static void decode_pack_bf16(uint16_t *dst, const float *src, size_t IC, size_t OC, size_t si, size_t so) {
    size_t n_strips = (OC + DECODE_STRIP - 1) / DECODE_STRIP, n_pairs = (IC + 1) / 2;
    #pragma omp parallel for schedule(static)
    for (size_t s = 0; s < n_strips; s++) {
        uint16_t *d = dst + s * n_pairs * DECODE_STRIP * 2;
        size_t o0 = s * DECODE_STRIP;
        /* full strips of an even IC without bounds checks (vectorised: 124M packed in 193
         * ms of CPU, against 276 with the generic loop) */
        if (o0 + DECODE_STRIP <= OC && IC % 2 == 0 && so == 1) { /* W's rows contiguous */
            for (size_t p = 0; p < n_pairs; p++) {
                const float *r0 = src + 2 * p * si + o0, *r1 = r0 + si;
                uint16_t *dp = d + p * DECODE_STRIP * 2;
                for (size_t j = 0; j < DECODE_STRIP; j++) { dp[2 * j] = fdpo_bf16_round(r0[j]); dp[2 * j + 1] = fdpo_bf16_round(r1[j]); }
            }
            continue;
        }
        if (o0 + DECODE_STRIP <= OC && IC % 2 == 0 && si == 1) { /* W's columns contiguous */
            for (size_t j = 0; j < DECODE_STRIP; j++) {
                const float *col = src + (o0 + j) * so;
                for (size_t p = 0; p < n_pairs; p++) {
                    d[(p * DECODE_STRIP + j) * 2] = fdpo_bf16_round(col[2 * p]);
                    d[(p * DECODE_STRIP + j) * 2 + 1] = fdpo_bf16_round(col[2 * p + 1]);
                }
            }
            continue;
        }
        for (size_t p = 0; p < n_pairs; p++)
            for (size_t j = 0; j < DECODE_STRIP; j++)
                for (size_t q = 0; q < 2; q++) {
                    size_t i = 2 * p + q, o = s * DECODE_STRIP + j;
                    *d++ = i < IC && o < OC ? fdpo_bf16_round(src[i * si + o * so]) : 0;
                }
    }
}

/* in16 [R, ICp] = bf16(inp [R, IC]), ICp = IC rounded up to even, the pad column zero */
static void decode_rows_to_bf16(uint16_t *in16, const float *inp, size_t R, size_t IC) {
    size_t ICp = (IC + 1) / 2 * 2;
    for (size_t r = 0; r < R; r++) {
        fdpo_bf16_round_n(in16 + r * ICp, inp + r * IC, IC);
        if (ICp > IC) in16[r * ICp + IC] = 0;
    }
}

/* ---- bf16: the strip's row pairs widened to fp32 (the route where vdpbf16ps is slow) ----
 * A 512-bit load of a packed row pair holds 16 columns of row 2p in its low halves and of
 * row 2p + 1 in its high halves: shifting left by 16 makes the first 16 fp32 weights, zeroing
 * the low halves (a masked 16-bit move) the second (the bf16 value is the fp32's top 16 bits), two operations per
 * 32 weights. Each then meets the row's activations in plain fp32 FMAs. The activations are
 * rounded to bf16 and kept as fp32 (xb), so every product is bf16 x bf16, exact in fp32: the
 * sums are "bf16 inputs, fp32 accumulation", one rounding per step, each output summed in i
 * order from 0 (as the fp32 path sums). At 8 rows that is 6 widening ops and 48 FMAs per
 * pair of 48 columns (192 bytes), against 24 vdpbf16ps, which run at a quarter of the FMA's
 * instruction rate on this Xeon (fdpo-harness isa-peaks): 27 against 48 cycles, and the
 * stream of weights, not the arithmetic, becomes the limit. */

/* activations of one K-block per thread (floats): with the strip's stream they stay in L1 */
#define DECODE_XBLOCK 6144
/* strips whose accumulators wait in scratch while a thread runs over the K-blocks */
#define DECODE_GROUP_STRIPS 16
/* rows per call of the widening driver (more rows, prefills: several calls), so a K-block
 * holds >= 48 row pairs */
#define DECODE_WIDEN_ROWS 64

/* acc [nr, 48] (+)= xb [nr, 0 : 2 np] @ ws [np row pairs of one strip] (load: add to acc,
 * else start from 0); xb's rows ldx floats apart, bf16-rounded; nr <= DECODE_GROUP_ROWS */
typedef void decode_widen_tile_fn(float *acc, const float *xb, size_t ldx, const uint16_t *ws, size_t np, size_t nr,
                                  int load);

static inline float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#if defined(__AVX2__) && defined(__FMA__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
/* The portable tile on AVX2 (built with -march=native on such a CPU): the same sums in the
 * same order. 8 x 48 accumulators are 48 of AVX2's 16 registers (the generic loop kept them
 * on the stack); a pass keeps NR <= 2 rows x 24 columns (6 accumulators) and the half
 * strip's 6 widened weight vectors in registers, and the strip's pairs are read again, from
 * L2, by each of the 2 x ceil(nr/2) passes. A 256-bit load of a pair's 8 columns holds row
 * 2p in its low halves and 2p + 1 in its high halves: a shift and a mask widen them. */
static inline __attribute__((always_inline)) void decode_widen_avx2_pass(float *acc, const float *xb, size_t ldx,
                                                                        const uint16_t *ws, size_t np, int load,
                                                                        size_t h, const size_t NR) {
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
    __m256 a[2][3];
    for (size_t r = 0; r < NR; r++)
        for (size_t k = 0; k < 3; k++)
            a[r][k] = load ? _mm256_loadu_ps(acc + r * DECODE_STRIP + 24 * h + 8 * k) : _mm256_setzero_ps();
    for (size_t p = 0; p < np; p++) {
        const uint16_t *wp = ws + p * DECODE_STRIP * 2 + 48 * h;
        __m256 we[3], wo[3];
        for (size_t k = 0; k < 3; k++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(wp + 16 * k));
            we[k] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            wo[k] = _mm256_castsi256_ps(_mm256_and_si256(v, high));
        }
        for (size_t r = 0; r < NR; r++) {
            __m256 x0 = _mm256_set1_ps(xb[r * ldx + 2 * p]), x1 = _mm256_set1_ps(xb[r * ldx + 2 * p + 1]);
            for (size_t k = 0; k < 3; k++) a[r][k] = _mm256_fmadd_ps(x0, we[k], a[r][k]);
            for (size_t k = 0; k < 3; k++) a[r][k] = _mm256_fmadd_ps(x1, wo[k], a[r][k]);
        }
    }
    for (size_t r = 0; r < NR; r++)
        for (size_t k = 0; k < 3; k++) _mm256_storeu_ps(acc + r * DECODE_STRIP + 24 * h + 8 * k, a[r][k]);
}

static void decode_tile_widen_portable(float *acc, const float *xb, size_t ldx, const uint16_t *ws, size_t np,
                                       size_t nr, int load) {
    for (size_t r0 = 0; r0 < nr; r0 += 2)
        for (size_t h = 0; h < 2; h++) {
            if (nr - r0 >= 2) decode_widen_avx2_pass(acc + r0 * DECODE_STRIP, xb + r0 * ldx, ldx, ws, np, load, h, 2);
            else decode_widen_avx2_pass(acc + r0 * DECODE_STRIP, xb + r0 * ldx, ldx, ws, np, load, h, 1);
        }
}
#else
/* Portable tile (no AVX-512, or FDPO_FORCE_BF16_FALLBACK=1): the same sums in the same
 * order, bit for bit. The products of bf16 values are exact, so fmaf and a * b + c agree
 * too. */
static inline void decode_tile_widen_portable_rows(float acc[DECODE_GROUP_ROWS][DECODE_STRIP], const float *xb,
                                                   size_t ldx, const uint16_t *ws, size_t np, size_t nr) {
    for (size_t p = 0; p < np; p++) {
        const uint16_t *wp = ws + p * DECODE_STRIP * 2;
        float w0[DECODE_STRIP], w1[DECODE_STRIP];
        for (size_t j = 0; j < DECODE_STRIP; j++) { w0[j] = bf16_value(wp[2 * j]); w1[j] = bf16_value(wp[2 * j + 1]); }
        for (size_t r = 0; r < nr; r++) {
            float x0 = xb[r * ldx + 2 * p], x1 = xb[r * ldx + 2 * p + 1];
            for (size_t j = 0; j < DECODE_STRIP; j++) {
                acc[r][j] = DECODE_FMA(x0, w0[j], acc[r][j]);
                acc[r][j] = DECODE_FMA(x1, w1[j], acc[r][j]);
            }
        }
    }
}

static void decode_tile_widen_portable(float *acc, const float *xb, size_t ldx, const uint16_t *ws, size_t np,
                                       size_t nr, int load) {
    float a[DECODE_GROUP_ROWS][DECODE_STRIP];
    if (load) memcpy(a, acc, nr * DECODE_STRIP * sizeof(float));
    else memset(a, 0, sizeof a);
    if (nr == DECODE_GROUP_ROWS) decode_tile_widen_portable_rows(a, xb, ldx, ws, np, DECODE_GROUP_ROWS); /* constant */
    else decode_tile_widen_portable_rows(a, xb, ldx, ws, np, nr);
    memcpy(acc, a, nr * DECODE_STRIP * sizeof(float));
}
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DECODE_HAVE_AVX512 1
#define DECODE_AVX512_TARGET __attribute__((target("avx512f,avx512bw")))
#define DECODE_DPBF16_TARGET __attribute__((target("avx512f,avx512bf16")))

/* AVX-512 widening tile for exactly NR rows (a constant after inlining): 3 NR accumulators
 * and the pair's 6 widened weight vectors in registers, each activation one broadcast used
 * by 3 FMAs. */
DECODE_AVX512_TARGET static inline __attribute__((always_inline)) void
decode_tile_widen_rows(float *acc, const float *xb, size_t ldx, const uint16_t *ws, size_t np, int load,
                       const size_t NR) {
    __m512 a[DECODE_GROUP_ROWS][3];
    for (size_t r = 0; r < NR; r++)
        for (size_t k = 0; k < 3; k++) a[r][k] = load ? _mm512_loadu_ps(acc + r * DECODE_STRIP + 16 * k) : _mm512_setzero_ps();
    for (size_t p = 0; p < np; p++) {
        const uint16_t *wp = ws + p * DECODE_STRIP * 2;
        /* 4 KB ahead (3 lines per pair; 1, 2 and 8 KB ran 0-25% slower on one loaded core:
         * fdpo-harness decode-matmul, 768 x 3072 and 3072 x 768 at 1 and 8 rows) */
        _mm_prefetch((const char *)(wp + 2048), _MM_HINT_T0);
        _mm_prefetch((const char *)(wp + 2048 + 32), _MM_HINT_T0);
        _mm_prefetch((const char *)(wp + 2048 + 64), _MM_HINT_T0);
        __m512 we[3], wo[3];
        for (size_t k = 0; k < 3; k++) {
            __m512i v = _mm512_loadu_si512(wp + 32 * k);
            we[k] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            wo[k] = _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xaaaaaaaau, v)); /* a k mask: no zmm held */
        }
        for (size_t r = 0; r < NR; r++) {
            __m512 x0 = _mm512_set1_ps(xb[r * ldx + 2 * p]), x1 = _mm512_set1_ps(xb[r * ldx + 2 * p + 1]);
            for (size_t k = 0; k < 3; k++) a[r][k] = _mm512_fmadd_ps(x0, we[k], a[r][k]);
            for (size_t k = 0; k < 3; k++) a[r][k] = _mm512_fmadd_ps(x1, wo[k], a[r][k]);
        }
    }
    for (size_t r = 0; r < NR; r++)
        for (size_t k = 0; k < 3; k++) _mm512_storeu_ps(acc + r * DECODE_STRIP + 16 * k, a[r][k]);
}

DECODE_AVX512_TARGET static void decode_tile_widen(float *acc, const float *xb, size_t ldx, const uint16_t *ws,
                                                   size_t np, size_t nr, int load) {
    switch (nr) {
    case 8: decode_tile_widen_rows(acc, xb, ldx, ws, np, load, 8); break;
    case 7: decode_tile_widen_rows(acc, xb, ldx, ws, np, load, 7); break;
    case 6: decode_tile_widen_rows(acc, xb, ldx, ws, np, load, 6); break;
    case 5: decode_tile_widen_rows(acc, xb, ldx, ws, np, load, 5); break;
    case 4: decode_tile_widen_rows(acc, xb, ldx, ws, np, load, 4); break;
    case 3: decode_tile_widen_rows(acc, xb, ldx, ws, np, load, 3); break;
    case 2: decode_tile_widen_rows(acc, xb, ldx, ws, np, load, 2); break;
    default: decode_tile_widen_rows(acc, xb, ldx, ws, np, load, 1); break;
    }
}

/* ---- bf16: vdpbf16ps (the route where it is fast: Zen 4 runs it at 2x the FMA's FLOPs) ----
 * tile for exactly NR rows (a constant after inlining: 3 NR accumulators in registers). The
 * pair (x [r, 2p], x [r, 2p + 1]) is one 32-bit broadcast. Its sums are not the widening
 * route's bits (vdpbf16ps adds a pair's two products in its own order and flushes denormals);
 * both follow the bf16 rule. */
DECODE_DPBF16_TARGET static inline __attribute__((always_inline)) void
decode_tile_dpbf16_rows(float *acc, const uint16_t *x, size_t ldx, const uint16_t *ws, size_t p0, size_t p1,
                        const size_t NR) {
    __m512 a[DECODE_GROUP_ROWS][3];
    for (size_t r = 0; r < NR; r++)
        for (size_t k = 0; k < 3; k++) a[r][k] = _mm512_loadu_ps(acc + r * DECODE_STRIP + 16 * k);
    for (size_t p = p0; p < p1; p++) {
        const uint16_t *wp = ws + p * DECODE_STRIP * 2;
        /* 2 KB ahead: the hardware prefetcher alone left the stream at half the speed */
        _mm_prefetch((const char *)(wp + 1024), _MM_HINT_T0);
        _mm_prefetch((const char *)(wp + 1024 + 32), _MM_HINT_T0);
        _mm_prefetch((const char *)(wp + 1024 + 64), _MM_HINT_T0);
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(wp), w1 = (__m512bh)_mm512_loadu_si512(wp + 32),
                 w2 = (__m512bh)_mm512_loadu_si512(wp + 64);
        for (size_t r = 0; r < NR; r++) {
            int32_t pair;
            memcpy(&pair, x + r * ldx + 2 * p, sizeof pair);
            __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
            a[r][0] = _mm512_dpbf16_ps(a[r][0], w0, xb);
            a[r][1] = _mm512_dpbf16_ps(a[r][1], w1, xb);
            a[r][2] = _mm512_dpbf16_ps(a[r][2], w2, xb);
        }
    }
    for (size_t r = 0; r < NR; r++)
        for (size_t k = 0; k < 3; k++) _mm512_storeu_ps(acc + r * DECODE_STRIP + 16 * k, a[r][k]);
}

DECODE_DPBF16_TARGET static void decode_tile_dpbf16(float *acc, const void *x, size_t ldx, size_t r0, size_t nr,
                                                    const void *w, size_t IC, size_t OC, size_t s, size_t i0,
                                                    size_t i1) {
    (void)OC;
    size_t n_pairs = (IC + 1) / 2, p0 = i0 / 2, p1 = (i1 + 1) / 2;
    const uint16_t *ws = (const uint16_t *)w + s * n_pairs * DECODE_STRIP * 2, *xr = (const uint16_t *)x + r0 * ldx;
    switch (nr) {
    case 8: decode_tile_dpbf16_rows(acc, xr, ldx, ws, p0, p1, 8); break;
    case 7: decode_tile_dpbf16_rows(acc, xr, ldx, ws, p0, p1, 7); break;
    case 6: decode_tile_dpbf16_rows(acc, xr, ldx, ws, p0, p1, 6); break;
    case 5: decode_tile_dpbf16_rows(acc, xr, ldx, ws, p0, p1, 5); break;
    case 4: decode_tile_dpbf16_rows(acc, xr, ldx, ws, p0, p1, 4); break;
    case 3: decode_tile_dpbf16_rows(acc, xr, ldx, ws, p0, p1, 3); break;
    case 2: decode_tile_dpbf16_rows(acc, xr, ldx, ws, p0, p1, 2); break;
    default: decode_tile_dpbf16_rows(acc, xr, ldx, ws, p0, p1, 1); break;
    }
}
#endif

/* The bf16 route of this process, decided once (at decoder creation): DECODE_BF16_DPBF16
 * where the CPU has AVX512-BF16 and vdpbf16ps is at least 0.75x the fp32 FMA's FLOP rate
 * (gemm_bf16.c's probe, the rule the bf16 GEMMs follow: then it is the faster instruction
 * at 4 or more rows), DECODE_BF16_WIDEN where it is slower (this Xeon: 0.49x), the portable
 * widening tile without AVX512-BF16 or with FDPO_FORCE_BF16_FALLBACK=1 (same bits as
 * DECODE_BF16_WIDEN). FDPO_DECODE_BF16=dpbf16|widen overrides the probe (tests, A/B). One
 * route per process, never per shape or row count, so the sums of an output do not depend
 * on R. */
enum { DECODE_BF16_PORTABLE, DECODE_BF16_WIDEN, DECODE_BF16_DPBF16 };
static int decode_bf16_route_decide(void) {
    int route = DECODE_BF16_PORTABLE;
#ifdef DECODE_HAVE_AVX512
    if (fdpo_bf16_native()) {
        const char *e = getenv("FDPO_DECODE_BF16");
        if (e && !strcmp(e, "dpbf16")) route = DECODE_BF16_DPBF16;
        else if (e && !strcmp(e, "widen")) route = DECODE_BF16_WIDEN;
        else {
            if (e && *e)
                fdpo_log(FDPO_LOG_WARN, "FDPO_DECODE_BF16: '%s' is not one of dpbf16, widen; choosing by measurement", e);
            route = fdpo_bf16_dpbf16_is_fast() ? DECODE_BF16_DPBF16 : DECODE_BF16_WIDEN;
        }
        fdpo_log(FDPO_LOG_DEBUG, "decode: bf16 linear layers on %s",
                 route == DECODE_BF16_DPBF16 ? "vdpbf16ps" : "fp32 FMA of the widened bf16 weights");
    }
#endif
    return route;
}

/* Once per process. Every thread of a team must see the same route: the dpbf16 share has
 * barriers the widen share has not, so a thread that read a provisional value while another
 * ran the probe left its team waiting at a barrier for ever (seen under ASan, where the
 * probe picks dpbf16). The decision is published only when final, under a critical section;
 * the decoders also decide it before their first parallel region. */
static int decode_bf16_route(void) {
    static int route = -1;
    int r;
    #pragma omp atomic read
    r = route;
    if (r >= 0) return r;
    #pragma omp critical(fdpo_decode_bf16_route)
    {
        #pragma omp atomic read
        r = route;
        if (r < 0) {
            r = decode_bf16_route_decide();
            #pragma omp atomic write
            route = r;
        }
    }
    return r;
}

/* The generic driver (fp32, and bf16 on vdpbf16ps). out [R, OC] (= or +=, accumulate)
 * x [R, IC] @ W through tile; iblock: rows of W per tile call; one_strip: 1 = a thread
 * finishes a strip (all blocks) before the next (packed W), 0 = block by block across all
 * its strips (W as stored). acc: scratch of R * DECODE_STRIP floats per thread (one_strip)
 * or R * (OC rounded up to DECODE_STRIP). This is thread t of a team of nt's share (its
 * strips), with no region or barrier of its own, for callers already inside a parallel
 * region (decode_layers_one_region); decode_matmul_small_rows below opens one. */
static void decode_matmul_small_rows_share(float *out, const void *x, size_t ldx, const void *w, size_t R, size_t IC,
                                           size_t OC, int accumulate, float *acc, decode_tile_fn *tile, size_t iblock,
                                           int one_strip, size_t t, size_t nt) {
    size_t n_strips = (OC + DECODE_STRIP - 1) / DECODE_STRIP;
    {
        size_t s0 = n_strips * t / nt, s1 = n_strips * (t + 1) / nt, pass = one_strip ? 1 : s1 - s0;
        float *mine = acc + (one_strip ? t : s0) * R * DECODE_STRIP;
        for (size_t sp = s0; sp < s1; sp += pass) {
            size_t se = sp + pass < s1 ? sp + pass : s1;
            memset(mine, 0, (se - sp) * R * DECODE_STRIP * sizeof(float));
            for (size_t i0 = 0; i0 < IC; i0 += iblock) {
                size_t i1 = i0 + iblock < IC ? i0 + iblock : IC;
                for (size_t s = sp; s < se; s++)
                    for (size_t r0 = 0; r0 < R; r0 += DECODE_GROUP_ROWS) {
                        size_t nr = R - r0 < DECODE_GROUP_ROWS ? R - r0 : DECODE_GROUP_ROWS;
                        tile(mine + ((s - sp) * R + r0) * DECODE_STRIP, x, ldx, r0, nr, w, IC, OC, s, i0, i1);
                    }
            }
            for (size_t s = sp; s < se; s++) {
                size_t o0 = s * DECODE_STRIP, ob = OC - o0 < DECODE_STRIP ? OC - o0 : DECODE_STRIP;
                const float *saved = mine + (s - sp) * R * DECODE_STRIP;
                for (size_t r = 0; r < R; r++) {
                    float *y = out + r * OC + o0;
                    const float *a = saved + r * DECODE_STRIP;
                    if (accumulate) for (size_t j = 0; j < ob; j++) y[j] += a[j];
                    else memcpy(y, a, ob * sizeof(float));
                }
            }
        }
    }
}

static void decode_matmul_small_rows(float *out, const void *x, size_t ldx, const void *w, size_t R, size_t IC,
                                     size_t OC, int accumulate, float *acc, decode_tile_fn *tile, size_t iblock,
                                     int one_strip) {
    #pragma omp parallel if (R * IC * OC >= (1 << 20))
    decode_matmul_small_rows_share(out, x, ldx, w, R, IC, OC, accumulate, acc, tile, iblock, one_strip,
                                   (size_t)omp_get_thread_num(), (size_t)omp_get_num_threads());
}

/* The widening driver: out [R, OC] (= or +=) bf16(inp [R, IC]) @ W packed, thread t of a
 * team of nt's share (decode_matmul_widen below: in a region of its own). Thread t owns the contiguous strips [s0, s1) (so it streams one contiguous run of
 * the packed W, and no two threads write the same output line but at a strip boundary,
 * once per call), in groups of up to DECODE_GROUP_STRIPS strips; per group it runs over IC
 * in K-blocks of kp row pairs, rounding the block's activations to bf16 into its own xb
 * (<= DECODE_XBLOCK floats: they stay in L1 while the weights stream past), and per block
 * runs each strip of the group down the block, accumulators in registers, parked in acc
 * (DECODE_GROUP_STRIPS * R * DECODE_STRIP floats per thread) between blocks. Where all of
 * IC fits one block (every 124M layer but mlp.c_proj at 8 rows) a strip is one pass. */
static void decode_matmul_widen_share(float *out, const float *inp, const uint16_t *wp, size_t R, size_t IC,
                                      size_t OC, int accumulate, float *acc, decode_widen_tile_fn *tile, size_t t,
                                      size_t nt, size_t acc_rows, int rounded) {
    size_t n_strips = (OC + DECODE_STRIP - 1) / DECODE_STRIP, n_pairs = (IC + 1) / 2;
    size_t kp = DECODE_XBLOCK / (2 * R);
    if (kp > n_pairs) kp = n_pairs;
    /* rounded: inp holds bf16 values already (the one-region step rounds each matmul input
     * where it is produced), so the tile reads inp's rows in place, K-block by K-block (the
     * same kp, the same sums), instead of a copy rounded by every thread for every group of
     * strips and K-block (at 16 rows two K-blocks per 768-wide input, so the LM head's
     * thread re-rounded its input 66 times per step) */
    if (IC % 2) rounded = 0; /* the tile reads a pad column past the row */
    {
        float xb[DECODE_XBLOCK] __attribute__((aligned(64)));
        size_t ldx = rounded ? IC : 2 * kp;
        size_t s0 = n_strips * t / nt, s1 = n_strips * (t + 1) / nt;
        /* acc_rows (>= R): the rows of each thread's scratch, the same for every call of a
         * region (a thread on a later, shorter chunk of rows must not land in another's) */
        float *mine = acc + t * DECODE_GROUP_STRIPS * acc_rows * DECODE_STRIP;
        size_t in_xb = SIZE_MAX; /* the K-block xb holds (one block: rounded once per call) */
        for (size_t g0 = s0; g0 < s1; g0 += DECODE_GROUP_STRIPS) {
            size_t g1 = g0 + DECODE_GROUP_STRIPS < s1 ? g0 + DECODE_GROUP_STRIPS : s1;
            for (size_t p0 = 0; p0 < n_pairs; p0 += kp) {
                size_t np = n_pairs - p0 < kp ? n_pairs - p0 : kp, i0 = 2 * p0;
                const float *xk = rounded ? inp + i0 : xb;
                if (!rounded && in_xb != p0)
                    for (size_t r = 0; r < R; r++)
                        for (size_t j = 0; j < 2 * np; j++)
                            xb[r * ldx + j] = i0 + j < IC ? bf16_value(fdpo_bf16_round(inp[r * IC + i0 + j])) : 0.0f;
                in_xb = p0;
                for (size_t s = g0; s < g1; s++)
                    for (size_t r0 = 0; r0 < R; r0 += DECODE_GROUP_ROWS)
                        tile(mine + ((s - g0) * R + r0) * DECODE_STRIP, xk + r0 * ldx, ldx,
                             wp + (s * n_pairs + p0) * DECODE_STRIP * 2, np,
                             R - r0 < DECODE_GROUP_ROWS ? R - r0 : DECODE_GROUP_ROWS, p0 > 0);
            }
            for (size_t s = g0; s < g1; s++) {
                size_t o0 = s * DECODE_STRIP, ob = OC - o0 < DECODE_STRIP ? OC - o0 : DECODE_STRIP;
                const float *saved = mine + (s - g0) * R * DECODE_STRIP;
                for (size_t r = 0; r < R; r++) {
                    float *y = out + r * OC + o0;
                    const float *a = saved + r * DECODE_STRIP;
                    if (accumulate) for (size_t j = 0; j < ob; j++) y[j] += a[j];
                    else memcpy(y, a, ob * sizeof(float));
                }
            }
        }
    }
}

/* thread t of nt's share above is decode_matmul_widen_share; this is the call with its own
 * region */
static void decode_matmul_widen(float *out, const float *inp, const uint16_t *wp, size_t R, size_t IC, size_t OC,
                                int accumulate, float *acc, decode_widen_tile_fn *tile) {
    #pragma omp parallel if (R * IC * OC >= (1 << 20))
    decode_matmul_widen_share(out, inp, wp, R, IC, OC, accumulate, acc, tile, (size_t)omp_get_thread_num(),
                              (size_t)omp_get_num_threads(), R, 0);
}

/* scratch floats the bf16 drivers need for R rows and this many threads (the widening
 * driver's groups of strips; the vdpbf16ps one needs a strip's) */
static size_t decode_packed_scratch(size_t R, size_t threads) {
    size_t widen = DECODE_GROUP_STRIPS * (R < DECODE_WIDEN_ROWS ? R : DECODE_WIDEN_ROWS);
    return threads * DECODE_STRIP * (widen > R ? widen : R);
}

struct fdpo_decoder {
    const fdpo_gpt2 *model;
    llama_decoder *llama;   /* Llama family: all the work happens there */
    size_t max_seqs, max_len;
    size_t ldk;         /* max_len rounded up to DECODE_KEYS */
    size_t *len;        /* [max_seqs] tokens cached per slot */
    float *k_cache;     /* [L, max_seqs, C, ldk] keys channel by channel */
    float *v_cache;     /* [L, max_seqs, NH, max_len, hs] values head by head (see decode_cache_store) */
    /* scratch for R rows, grown on demand */
    size_t cap_rows;
    float *x;           /* [R, C] residual stream */
    float *h;           /* [R, C] LayerNorm output */
    float *qkv;         /* [R, 3C] */
    float *atty;        /* [R, C] attention output before c_proj */
    float *fch;         /* [R, 4C] */
    float *xlast;       /* [n_slots, C] last rows when all_logits = 0 */
    float *acc;         /* small-rows matmul accumulators (decode_matmul_small_rows) */
    size_t cap_acc;     /* floats */
    size_t *row_slot;   /* [R] */
    int32_t *row_pos;   /* [R] */
    float *scores;      /* [threads, ldk] attention scores per thread */
    int n_threads_scores;
    /* bf16 precision (the model's, at create): the linear layers' weights and the LM head
     * (wte^T) packed for the strip matmuls (decode_pack_bf16), which the decoder only
     * reads: layer l's c_attn, attn.c_proj, c_fc, mlp.c_proj at wp + wp_off[4 l + k], the
     * head at wp + wp_off[4 L]; the bf16-rounded matmul inputs [cap16 rows, 4C + 2] */
    uint16_t *wp, *in16;
    size_t *wp_off;
    size_t cap16;
    /* 1: steps run in one parallel region (decode_layers_one_region); 0 with
     * FDPO_DECODE_ONE_REGION=0, one region per kernel call (tests, A/B) */
    int one_region;
    float *h_team;      /* [threads, R, C] each thread's LayerNorm output in that step */
    size_t cap_h_team;  /* floats */
    /* vdpbf16ps route of the one-region step: the bf16 bits of each matmul input, written
     * by the thread that makes the input (decode_layers_one_region) */
    uint16_t *x16;
    size_t cap_x16;     /* elements */
};

/* W [IC, OC] of a layer's k-th linear layer (c_attn, attn.c_proj, c_fc, mlp.c_proj) */
static size_t decode_ic(size_t C, size_t k) { return k == 3 ? 4 * C : C; }
static size_t decode_oc(size_t C, size_t k) { return k == 0 ? 3 * C : k == 2 ? 4 * C : C; }

/* bf16: pack the model's current weights into d->wp (laid out by fdpo_decoder_create) */
static void decode_pack_model(fdpo_decoder *d) {
    const fdpo_gpt2_params *p = &d->model->params;
    const fdpo_gpt2_config *c = &d->model->config;
    size_t C = c->n_embd, L = c->n_layer, V = c->vocab_size;
    for (size_t l = 0; l < L; l++) {
        const float *src[4] = {p->qkvw + l * C * 3 * C, p->attprojw + l * C * C, p->fcw + l * C * 4 * C,
                               p->fcprojw + l * 4 * C * C};
        for (size_t k = 0; k < 4; k++)
            decode_pack_bf16(d->wp + d->wp_off[4 * l + k], src[k], decode_ic(C, k), decode_oc(C, k), decode_oc(C, k), 1);
    }
    decode_pack_bf16(d->wp + d->wp_off[4 * L], p->wte, C, V, 1, C); /* logits = x @ wte^T */
}

fdpo_decoder *fdpo_decoder_create(const fdpo_gpt2 *m, size_t max_seqs, size_t max_len) {
    const fdpo_gpt2_config *c = &m->config;
    if (max_seqs == 0) { fdpo_error("decoder: max_seqs must be > 0"); return NULL; }
    if (max_len == 0) { fdpo_error("decoder: sequence length must be >= 1 (got 0)"); return NULL; }
    if (max_len > c->n_positions) {
        fdpo_error("decoder: sequence length %zu exceeds the model's n_positions %zu", max_len, c->n_positions);
        return NULL;
    }
    fdpo_decoder *d = fdpo_calloc(1, sizeof *d);
    d->model = m;
    d->max_seqs = max_seqs;
    d->max_len = max_len;
    static _Atomic int one_region = -1;   /* read once: its warning once */
    if (one_region < 0) one_region = fdpo_env_switch("FDPO_DECODE_ONE_REGION", 1);
    d->one_region = one_region;
    if (c->arch == FDPO_ARCH_LLAMA) {
        if (!(d->llama = fdpo_llama_decoder_create(m, max_seqs, max_len))) { free(d); return NULL; }
        return d;
    }
    d->len = fdpo_calloc(max_seqs, sizeof *d->len);
    size_t n = c->n_layer * max_seqs * max_len * c->n_embd;
    d->ldk = (max_len + DECODE_KEYS - 1) / DECODE_KEYS * DECODE_KEYS;
    /* streamed every step: fdpo_alloc_large (huge pages unless FDPO_HUGEPAGES=0); zeroed: the
     * lanes past a row's length read it (and never use it) */
    d->k_cache = fdpo_alloc_large(c->n_layer * max_seqs * c->n_embd * d->ldk * sizeof(float));
    d->v_cache = d->k_cache ? fdpo_alloc_large(n * sizeof(float)) : NULL;
    if (!d->v_cache) { fdpo_error_context("decoder: key/value cache"); fdpo_decoder_free(d); return NULL; }
    if (m->precision == FDPO_PRECISION_BF16) {
        size_t C = c->n_embd, L = c->n_layer, V = c->vocab_size, total = 0;
        decode_bf16_route(); /* decided (and said) once, before any parallel region */
        d->wp_off = fdpo_malloc((4 * L + 1) * sizeof *d->wp_off);
        for (size_t k = 0; k < 4 * L; k++) { d->wp_off[k] = total; total += decode_packed_size(decode_ic(C, k % 4), decode_oc(C, k % 4)); }
        d->wp_off[4 * L] = total;
        total += decode_packed_size(C, V);
        d->wp = fdpo_alloc_large(total * sizeof(uint16_t)); /* streamed every step: as the cache */
        if (!d->wp) { fdpo_error_context("decoder: bf16 weights"); fdpo_decoder_free(d); return NULL; }
        decode_pack_model(d);
    }
    return d;
}

void fdpo_decoder_refresh_weights(fdpo_decoder *d) {
    if (d->llama) fdpo_llama_decoder_refresh_weights(d->llama);
    else if (d->wp) decode_pack_model(d);
}

void fdpo_decoder_free(fdpo_decoder *d) {
    if (!d) return;
    fdpo_llama_decoder_free(d->llama);
    free(d->len); fdpo_free_large(d->k_cache); fdpo_free_large(d->v_cache);
    free(d->x); free(d->h); free(d->qkv); free(d->atty); free(d->fch); free(d->xlast); free(d->acc);
    free(d->row_slot); free(d->row_pos); free(d->scores);
    fdpo_free_large(d->wp); free(d->wp_off); free(d->in16); free(d->h_team); free(d->x16);
    free(d);
}

const fdpo_gpt2 *fdpo_decoder_model(const fdpo_decoder *d) { return d->model; }
size_t fdpo_decoder_max_len(const fdpo_decoder *d) { return d->max_len; }

void fdpo_decoder_reset(fdpo_decoder *d, size_t slot) {
    if (d->llama) fdpo_llama_decoder_reset(d->llama, slot);
    else if (slot < d->max_seqs) d->len[slot] = 0;
}
size_t fdpo_decoder_len(const fdpo_decoder *d, size_t slot) {
    if (d->llama) return fdpo_llama_decoder_len(d->llama, slot);
    return slot < d->max_seqs ? d->len[slot] : 0;
}

void fdpo_decoder_copy_slot(fdpo_decoder *d, size_t dst, size_t src) {
    if (d->llama) { fdpo_llama_decoder_copy_slot(d->llama, dst, src); return; }
    if (dst == src || dst >= d->max_seqs || src >= d->max_seqs) return;
    size_t C = d->model->config.n_embd, L = d->model->config.n_layer;
    size_t NH = d->model->config.n_head, hs = C / NH;
    size_t stride = d->max_len * C, n = d->len[src] * hs, kstride = C * d->ldk;
    for (size_t l = 0; l < L; l++) {
        size_t base = l * d->max_seqs * stride;
        for (size_t h = 0; h < NH; h++) /* each head's first len[src] positions */
            memcpy(d->v_cache + base + dst * stride + h * d->max_len * hs,
                   d->v_cache + base + src * stride + h * d->max_len * hs, n * sizeof(float));
        float *kd = d->k_cache + (l * d->max_seqs + dst) * kstride, *ks = d->k_cache + (l * d->max_seqs + src) * kstride;
        for (size_t ch = 0; ch < C; ch++) memcpy(kd + ch * d->ldk, ks + ch * d->ldk, d->len[src] * sizeof(float));
    }
    d->len[dst] = d->len[src];
}

static void grow_rows(fdpo_decoder *d, size_t R, size_t n_slots) {
    size_t C = d->model->config.n_embd;
    if (R > d->cap_rows) {
        d->cap_rows = R;
        d->x = fdpo_realloc(d->x, R * C * sizeof(float));
        d->h = fdpo_realloc(d->h, R * C * sizeof(float));
        d->qkv = fdpo_realloc(d->qkv, R * 3 * C * sizeof(float));
        d->atty = fdpo_realloc(d->atty, R * C * sizeof(float));
        d->fch = fdpo_realloc(d->fch, R * 4 * C * sizeof(float));
        d->row_slot = fdpo_realloc(d->row_slot, R * sizeof(size_t));
        d->row_pos = fdpo_realloc(d->row_pos, R * sizeof(int32_t));
    }
    d->xlast = fdpo_realloc(d->xlast, (n_slots ? n_slots : 1) * C * sizeof(float));
    int threads = omp_get_max_threads();
    /* fp32: R <= DECODE_SMALL_ROWS rows x every strip of the widest layer (4C); bf16: R rows
     * of one strip per thread */
    size_t need = DECODE_SMALL_ROWS * (4 * C + DECODE_STRIP);
    if (d->wp && fdpo_decode_packed_scratch(R) > need) need = fdpo_decode_packed_scratch(R);
    if (need > d->cap_acc) {
        free(d->acc);
        d->acc = fdpo_malloc(need * sizeof(float));
        d->cap_acc = need;
    }
    if (threads > d->n_threads_scores) {
        d->n_threads_scores = threads;
        d->scores = fdpo_realloc(d->scores, (size_t)threads * d->ldk * sizeof(float));
    }
}

/* out [R, C] = wte[tokens[r]] + wpe[pos[r]] */
static void decode_embed_forward(float *out, const int32_t *tokens, const int32_t *pos,
                                 const float *wte, const float *wpe, size_t R, size_t C) {
    for (size_t r = 0; r < R; r++) {
        const float *te = wte + (size_t)tokens[r] * C, *pe = wpe + (size_t)pos[r] * C;
        for (size_t i = 0; i < C; i++) out[r * C + i] = te[i] + pe[i];
    }
}

/* out [R, C] = LayerNorm(inp [R, C]) * w [C] + b [C] */
static inline void decode_layernorm_row(float *out, const float *x, const float *w, const float *b, size_t C,
                                        float eps) {
    float mean = 0, var = 0;
    for (size_t i = 0; i < C; i++) mean += x[i];
    mean /= (float)C;
    for (size_t i = 0; i < C; i++) { float dx = x[i] - mean; var += dx * dx; }
    var /= (float)C;
    float rstd = 1.0f / sqrtf(var + eps);
    for (size_t i = 0; i < C; i++) out[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

static void decode_layernorm_forward(float *out, const float *inp, const float *w, const float *b,
                                     size_t R, size_t C, float eps) {
    #pragma omp parallel for if (R * C > 32768)
    for (size_t r = 0; r < R; r++) decode_layernorm_row(out + r * C, inp + r * C, w, b, C, eps);
}

size_t fdpo_decode_packed_size(size_t IC, size_t OC) { return decode_packed_size(IC, OC); }

void fdpo_decode_pack_bf16(uint16_t *dst, const float *src, size_t IC, size_t OC, size_t si, size_t so) {
    decode_bf16_route(); /* decided before the packed weights are used in any parallel region */
    decode_pack_bf16(dst, src, IC, OC, si, so);
}

size_t fdpo_decode_packed_scratch(size_t R) { return decode_packed_scratch(R, (size_t)omp_get_max_threads()); }

void fdpo_decode_packed_matmul(float *out, const float *inp, const uint16_t *wp, size_t R, size_t IC, size_t OC,
                               int accumulate, uint16_t *in16, float *acc) {
    int route = decode_bf16_route();
    decode_widen_tile_fn *tile = decode_tile_widen_portable;
#ifdef DECODE_HAVE_AVX512
    if (route == DECODE_BF16_DPBF16) {
        decode_rows_to_bf16(in16, inp, R, IC);
        decode_matmul_small_rows(out, in16, (IC + 1) / 2 * 2, wp, R, IC, OC, accumulate, acc, decode_tile_dpbf16, IC, 1);
        return;
    }
    if (route == DECODE_BF16_WIDEN) tile = decode_tile_widen;
#else
    (void)route; (void)in16;
#endif
    /* prefills and scoring: DECODE_WIDEN_ROWS rows at a time (each output's sum is its row's
     * alone, so the bits do not depend on the cut) */
    for (size_t r0 = 0; r0 < R; r0 += DECODE_WIDEN_ROWS)
        decode_matmul_widen(out + r0 * OC, inp + r0 * IC, wp, R - r0 < DECODE_WIDEN_ROWS ? R - r0 : DECODE_WIDEN_ROWS, IC,
                            OC, accumulate, acc, tile);
}

size_t fdpo_decode_f32_scratch(size_t R, size_t OC) {
    return R * ((OC + DECODE_STRIP - 1) / DECODE_STRIP * DECODE_STRIP);
}

void fdpo_decode_f32_matmul(float *out, const float *inp, const float *w, size_t R, size_t IC, size_t OC,
                            int accumulate, float *acc) {
    decode_matmul_small_rows(out, inp, IC, w, R, IC, OC, accumulate, acc, decode_tile_f32, DECODE_IBLOCK, 0);
}

/* out [R, OC] (= or +=) inp [R, IC] @ w [IC, OC] + bias [OC]; accumulate adds into out
 * (the residual stream) instead of overwriting it. wp: w packed in bf16 (bf16 precision;
 * out += bf16(inp) @ wp with fp32 sums), NULL in fp32. */
static void decode_matmul_forward(fdpo_decoder *d, float *out, const float *inp, const float *w, const float *bias,
                                  size_t R, size_t IC, size_t OC, int accumulate, const uint16_t *wp) {
    if (!accumulate) {
        for (size_t r = 0; r < R; r++) memcpy(out + r * OC, bias, OC * sizeof(float));
    } else {
        for (size_t r = 0; r < R; r++) for (size_t o = 0; o < OC; o++) out[r * OC + o] += bias[o];
    }
    if (wp)
        fdpo_decode_packed_matmul(out, inp, wp, R, IC, OC, 1, d->in16, d->acc);
    else if (R <= DECODE_SMALL_ROWS)
        fdpo_decode_f32_matmul(out, inp, w, R, IC, OC, 1, d->acc);
    else
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)R, (int)OC, (int)IC, 1.0f,
                    inp, (int)IC, w, (int)OC, 1.0f, out, (int)OC);
}

/* Store the keys and values of qkv [R, 3C] at (slot, pos) of this layer's caches:
 * k [max_seqs, C, ldk] (a slot's keys channel by channel, positions contiguous: see
 * decode_attention_forward), v [max_seqs, NH, max_len, hs] (a slot's values head by head,
 * so the values one head reads are one contiguous run: with v [max_seqs, max_len, C] a head
 * read 256 of every 3072 bytes at 124M, a pattern the hardware prefetcher does not follow
 * across 4 KB pages). This is row r, head h's share: the head's hs keys (one float on each
 * of hs lines) and its run of hs values; decode_cache_store below, every row and head. */
static void decode_cache_store_head(float *k, float *v, const float *qkv, const size_t *row_slot,
                                    const int32_t *row_pos, size_t r, size_t h, size_t C, size_t NH, size_t max_len,
                                    size_t ldk) {
    size_t hs = C / NH;
    const float *kr = qkv + r * 3 * C + C + h * hs;
    float *kc = k + (row_slot[r] * C + h * hs) * ldk + (size_t)row_pos[r];
    for (size_t c = 0; c < hs; c++) kc[c * ldk] = kr[c];
    memcpy(v + ((row_slot[r] * NH + h) * max_len + (size_t)row_pos[r]) * hs, kr + C, hs * sizeof(float));
}

static void decode_cache_store(float *k, float *v, const float *qkv, const size_t *row_slot,
                               const int32_t *row_pos, size_t R, size_t C, size_t NH, size_t max_len, size_t ldk) {
    for (size_t r = 0; r < R; r++)
        for (size_t h = 0; h < NH; h++) decode_cache_store_head(k, v, qkv, row_slot, row_pos, r, h, C, NH, max_len, ldk);
}

/* out [R, C]: row r, head h attends with its query qkv[r, h*hs ..] over keys/values
 * 0..pos[r] of its slot in k [max_seqs, C, ldk], v [max_seqs, NH, max_len, hs]. scores
 * [threads, ldk]. Each score is the dot product of q and one key summed in channel order,
 * one multiply and one add per channel (as a plain loop over the channels does), but 16
 * keys at a time: with the keys stored channel by channel (ldk a multiple of
 * DECODE_KEYS), a vector of 16 positions of one channel is one load, and 16 independent
 * sums replace one chain of hs dependent adds (the scalar loop was latency-bound: 4
 * cycles per add). Lanes past T read zeros or stale keys and are never used. */
/* s [t0 : t0 + 16 NV] = scale * (q [0:hs] . each key t), keys kb [hs, ldk] (channel
 * major); NV (a constant after inlining) vectors of keys, NV independent chains of adds */
static inline __attribute__((always_inline)) void decode_attention_scores(float *s, const float *q, const float *kb,
                                                                          size_t ldk, size_t hs, size_t t0,
                                                                          float scale, const size_t NV) {
    decode_keys dot[4] = {{0}}, kv;
    for (size_t i = 0; i < hs; i++) {
        /* the cache is far from L1 (3.5 MB of keys per layer at 124M, 8 slots, 144
         * positions) and each channel is a new line: ask 8 channels ahead */
        for (size_t v = 0; v < NV; v++) __builtin_prefetch(kb + (i + 8) * ldk + t0 + v * DECODE_KEYS);
        for (size_t v = 0; v < NV; v++) {
            memcpy(&kv, kb + i * ldk + t0 + v * DECODE_KEYS, sizeof kv);
            dot[v] = dot[v] + q[i] * kv;
        }
    }
    for (size_t v = 0; v < NV; v++) {
        dot[v] = dot[v] * scale;
        memcpy(s + t0 + v * DECODE_KEYS, &dot[v], sizeof dot[v]);
    }
}

/* out [r, h*hs : (h+1)*hs]: row r, head h of decode_attention_forward; s: ldk floats of
 * scratch for the scores */
static void decode_attention_head(float *out, float *s, const float *qkv, const float *k, const float *v,
                                  const size_t *row_slot, const int32_t *row_pos, size_t r, size_t h, size_t C,
                                  size_t NH, size_t max_len, size_t ldk) {
    size_t hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    const float *q = qkv + r * 3 * C + h * hs;
    size_t T = (size_t)row_pos[r] + 1;
    const float *kb = k + (row_slot[r] * C + h * hs) * ldk;
    const float *vb = v + (row_slot[r] * NH + h) * max_len * hs;
    for (size_t t0 = 0; t0 < T; t0 += 4 * DECODE_KEYS) {
        size_t nv = (T - t0 + DECODE_KEYS - 1) / DECODE_KEYS;
        if (nv >= 4) decode_attention_scores(s, q, kb, ldk, hs, t0, scale, 4);
        else if (nv == 3) decode_attention_scores(s, q, kb, ldk, hs, t0, scale, 3);
        else if (nv == 2) decode_attention_scores(s, q, kb, ldk, hs, t0, scale, 2);
        else decode_attention_scores(s, q, kb, ldk, hs, t0, scale, 1);
    }
    float mx = -INFINITY;
    for (size_t t = 0; t < T; t++) if (s[t] > mx) mx = s[t];
    float sum = 0;
    size_t t8 = T / 8 * 8;
    for (size_t t = 0; t < t8; t += 8) { /* expf's bits 8 at a time (fdpo_expf8) */
        float dx[8];
        for (size_t j = 0; j < 8; j++) dx[j] = s[t + j] - mx;
        fdpo_expf8(s + t, dx);
        for (size_t j = 0; j < 8; j++) sum += s[t + j];
    }
    for (size_t t = t8; t < T; t++) { s[t] = expf(s[t] - mx); sum += s[t]; }
    float inv = 1.0f / sum;
    float *o = out + r * C + h * hs;
    if (hs == 4 * DECODE_KEYS) { /* GPT-2's 64: the four sums stay in registers */
        decode_keys o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0}, vv;
        for (size_t t = 0; t < T; t++) {
            float a = s[t] * inv;
            const float *vt = vb + t * hs;
            for (size_t k = 0; k < 4; k++) __builtin_prefetch(vt + 8 * hs + k * DECODE_KEYS); /* as the keys */
            memcpy(&vv, vt, sizeof vv); o0 = o0 + a * vv;
            memcpy(&vv, vt + DECODE_KEYS, sizeof vv); o1 = o1 + a * vv;
            memcpy(&vv, vt + 2 * DECODE_KEYS, sizeof vv); o2 = o2 + a * vv;
            memcpy(&vv, vt + 3 * DECODE_KEYS, sizeof vv); o3 = o3 + a * vv;
        }
        memcpy(o, &o0, sizeof o0); memcpy(o + DECODE_KEYS, &o1, sizeof o1);
        memcpy(o + 2 * DECODE_KEYS, &o2, sizeof o2); memcpy(o + 3 * DECODE_KEYS, &o3, sizeof o3);
    } else {
        for (size_t i = 0; i < hs; i++) o[i] = 0;
        for (size_t t = 0; t < T; t++) {
            float a = s[t] * inv;
            for (size_t i = 0; i < hs; i++) o[i] += a * vb[t * hs + i];
        }
    }
}

static void decode_attention_forward(float *out, float *scores, const float *qkv, const float *k,
                                     const float *v, const size_t *row_slot, const int32_t *row_pos,
                                     size_t R, size_t C, size_t NH, size_t max_len, size_t ldk) {
    size_t hs = C / NH, max_T = 0;
    for (size_t r = 0; r < R; r++) if ((size_t)row_pos[r] + 1 > max_T) max_T = (size_t)row_pos[r] + 1;
    /* threads only pay off when there is real work: waking a team costs microseconds, one
     * decoding step of 8 rows at 124M (12 heads, 16 cached positions) is ~50 us per layer */
    #pragma omp parallel for collapse(2) if (R * NH * max_T * hs >= (1 << 15))
    for (size_t r = 0; r < R; r++)
        for (size_t h = 0; h < NH; h++)
            decode_attention_head(out, scores + (size_t)omp_get_thread_num() * ldk, qkv, k, v, row_slot, row_pos, r,
                                  h, C, NH, max_len, ldk);
}

/* x [i0 : i1] = GELU(x), tanh approximation ("gelu_new"), for decode_gelu_forward (x of n
 * floats; fp32: i0 a multiple of 8, the groups of 8 below n8 = n / 8 * 8 on fdpo_expf8) */
static inline void decode_gelu_range(float *x, size_t i0, size_t i1, size_t n, int vector_exp) {
    const float s = 0.7978845608028654f; /* sqrt(2/pi) */
    if (vector_exp) { /* bf16: fdpo_k_expf, as the training forward's GELU (vectorises) */
        for (size_t i = i0; i < i1; i++) {
            float u = x[i];
            x[i] = u / (1.0f + fdpo_k_expf(-2.0f * s * (u + 0.044715f * u * u * u)));
        }
        return;
    }
    /* fp32: libm's expf bits, the bits fp32 samples have always had, 8 at a time
     * (fdpo_expf8); 0.5 u (1 + tanh(a)) = u / (1 + exp(-2a)): one expf instead of tanhf */
    size_t n8 = n / 8 * 8, e8 = i1 < n8 ? i1 : n8;
    for (size_t i = i0; i < e8; i += 8) {
        float a[8], e[8];
        for (size_t j = 0; j < 8; j++) { float u = x[i + j]; a[j] = -2.0f * s * (u + 0.044715f * u * u * u); }
        fdpo_expf8(e, a);
        for (size_t j = 0; j < 8; j++) x[i + j] = x[i + j] / (1.0f + e[j]);
    }
    for (size_t i = i0 > n8 ? i0 : n8; i < i1; i++) {
        float u = x[i];
        x[i] = u / (1.0f + expf(-2.0f * s * (u + 0.044715f * u * u * u)));
    }
}

/* x [n] = GELU(x) (decode_gelu_range); vector_exp: fdpo_k_expf (<= 2 ulp) */
static void decode_gelu_forward(float *x, size_t n, int vector_exp) {
    size_t n_chunks = (n + 1023) / 1024; /* chunks of 1024 (a multiple of 8) */
    #pragma omp parallel for if (n > 8192)
    for (size_t g = 0; g < n_chunks; g++) decode_gelu_range(x, 1024 * g, 1024 * g + 1024 < n ? 1024 * g + 1024 : n, n, vector_exp);
}

/* logits [R, V] = inp [R, C] @ wte [V, C]^T (tied LM head; 154 MB at 124M in fp32). A
 * library GEMM over all of wte would pack it whole for a handful of rows. fp32, up to
 * DECODE_LMHEAD_ROWS rows: each thread takes blocks of DECODE_LMHEAD_BLOCK vocabulary rows
 * and calls a single-threaded sgemm on them, so the packed block stays in cache (measured
 * 1.15-1.3x faster than fdpo_decode_rows_matmul_wt in CPU seconds at 1 thread, 8 rows);
 * more rows (prefill, scoring): the GEMM. bf16 (wte16p: wte^T packed): the strip matmuls,
 * any number of rows. */
#define DECODE_LMHEAD_ROWS 64
#define DECODE_LMHEAD_BLOCK 128
static void decode_lmhead_forward(fdpo_decoder *d, float *logits, const float *inp, const float *wte, size_t R,
                                  size_t C, size_t V, const uint16_t *wte16p) {
    if (wte16p) /* bf16: logits = bf16(inp) @ bf16(wte)^T */
        fdpo_decode_packed_matmul(logits, inp, wte16p, R, C, V, 0, d->in16, d->acc);
    else if (R <= DECODE_LMHEAD_ROWS) {
        size_t n_blocks = (V + DECODE_LMHEAD_BLOCK - 1) / DECODE_LMHEAD_BLOCK;
        #pragma omp parallel for schedule(static) if (R * V * C >= (1 << 20))
        for (size_t blk = 0; blk < n_blocks; blk++) {
            size_t v0 = blk * DECODE_LMHEAD_BLOCK;
            size_t nv = V - v0 < DECODE_LMHEAD_BLOCK ? V - v0 : DECODE_LMHEAD_BLOCK;
            /* logits [R, v0 : v0 + nv] = inp [R, C] @ wte [v0 : v0 + nv, C]^T */
            fdpo_sgemm_any_rows(CblasRowMajor, CblasNoTrans, CblasTrans, (int)R, (int)nv, (int)C, 1.0f, inp, (int)C,
                        wte + v0 * C, (int)C, 0.0f, logits + v0, (int)V);
        }
    } else
        fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)R, (int)V, (int)C, 1.0f, inp, (int)C,
                    wte, (int)C, 0.0f, logits, (int)V);
}

/* ---- One parallel region per decoding step ----
 * The step below opens one region for all its layers instead of one per kernel call (~75
 * per step at 124M: the team's wake-ups and joins were 7-10% of a step's CPU time). Each
 * kernel runs thread t of nt's share of its work (rows, (row, head) pairs or strips of
 * output columns, cut the way its own region cuts it), and a barrier stands only where the
 * next kernel reads what others wrote. Every output is computed by the same code in the
 * same order as in the kernels' own regions, so the bits are the same at any team size. */

/* x [n] = bf16(x [n]) as fp32: the one-region step rounds each bf16 matmul input where it
 * is produced (decode_matmul_widen_share reads it in place); the widening driver would round
 * the same values to the same bits */
static void decode_round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = bf16_value(fdpo_bf16_round(x[i]));
}

/* [*i0, *i1): thread t of nt's share of n items */
static inline void decode_share(size_t n, size_t t, size_t nt, size_t *i0, size_t *i1) {
    *i0 = n * t / nt;
    *i1 = n * (t + 1) / nt;
}

/* thread t of nt's share of decode_matmul_forward: its strips' columns of out get the bias
 * (= or +=), then its strips of the product (in16: the dpbf16 route's bf16 rows, written
 * here by rows, hence one barrier inside). bias NULL: out = product (the LM head). */
/* [*o0, *o1): the output columns of thread t of nt's strips (o0 >= o1: none) */
static inline void decode_share_cols(size_t OC, size_t t, size_t nt, size_t *o0, size_t *o1) {
    size_t s0, s1;
    decode_share((OC + DECODE_STRIP - 1) / DECODE_STRIP, t, nt, &s0, &s1);
    *o0 = s0 * DECODE_STRIP;
    *o1 = s1 * DECODE_STRIP < OC ? s1 * DECODE_STRIP : OC;
}

/* bf16 (wp): inp must hold bf16 values (decode_round_bf16); x16 their bits for the
 * vdpbf16ps route, or NULL (fdpo_decode_packed_matmul_share) */
static void decode_matmul_share(fdpo_decoder *d, float *out, const float *inp, const float *w, const float *bias,
                                size_t R, size_t IC, size_t OC, int accumulate, const uint16_t *wp,
                                const uint16_t *x16, size_t t, size_t nt) {
    size_t o0, o1;
    decode_share_cols(OC, t, nt, &o0, &o1);
    if (bias) {
        for (size_t r = 0; r < R; r++) {
            float *y = out + r * OC;
            if (!accumulate) memcpy(y + o0, bias + o0, (o1 > o0 ? o1 - o0 : 0) * sizeof(float));
            else for (size_t o = o0; o < o1; o++) y[o] += bias[o];
        }
        accumulate = 1;
    }
    if (!wp) {
        decode_matmul_small_rows_share(out, inp, IC, w, R, IC, OC, accumulate, d->acc, decode_tile_f32, DECODE_IBLOCK,
                                       0, t, nt);
        return;
    }
    fdpo_decode_packed_matmul_share(out, inp, wp, R, IC, OC, accumulate, d->in16, d->acc, t, nt, 1, x16);
}

int fdpo_decode_reads_bf16_rows(void) { return decode_bf16_route() == DECODE_BF16_DPBF16; }

uint16_t *fdpo_decode_x16(uint16_t **buf, size_t *cap, size_t need) {
    if (!fdpo_decode_reads_bf16_rows()) return NULL;
    if (need > *cap) {
        free(*buf);
        *buf = fdpo_calloc(need, sizeof(uint16_t));
        *cap = need;
    }
    return *buf;
}

void fdpo_decode_share_cols(size_t OC, size_t t, size_t nt, size_t *o0, size_t *o1) {
    decode_share_cols(OC, t, nt, o0, o1);
}

void fdpo_decode_packed_matmul_share(float *out, const float *inp, const uint16_t *wp, size_t R, size_t IC,
                                     size_t OC, int accumulate, uint16_t *in16, float *acc, size_t t, size_t nt,
                                     int rounded, const uint16_t *x16) {
    int route = decode_bf16_route();
    decode_widen_tile_fn *tile = decode_tile_widen_portable;
#ifdef DECODE_HAVE_AVX512
    if (route == DECODE_BF16_DPBF16 && x16) { /* the caller's barrier made x16 whole */
        decode_matmul_small_rows_share(out, x16, (IC + 1) / 2 * 2, wp, R, IC, OC, accumulate, acc, decode_tile_dpbf16,
                                       IC, 1, t, nt);
        return;
    }
    if (route == DECODE_BF16_DPBF16) {
        size_t r0, r1, ICp = (IC + 1) / 2 * 2;
        decode_share(R, t, nt, &r0, &r1);
        decode_rows_to_bf16(in16 + r0 * ICp, inp + r0 * IC, r1 - r0, IC);
        #pragma omp barrier
        decode_matmul_small_rows_share(out, in16, ICp, wp, R, IC, OC, accumulate, acc, decode_tile_dpbf16, IC, 1, t,
                                       nt);
        #pragma omp barrier /* in16 is read to the end before the next call rewrites it */
        return;
    }
    if (route == DECODE_BF16_WIDEN) tile = decode_tile_widen;
#else
    (void)route; (void)in16;
#endif
    for (size_t r0 = 0; r0 < R; r0 += DECODE_WIDEN_ROWS)
        decode_matmul_widen_share(out + r0 * OC, inp + r0 * IC, wp, R - r0 < DECODE_WIDEN_ROWS ? R - r0 : DECODE_WIDEN_ROWS,
                                  IC, OC, accumulate, acc, tile, t, nt, R < DECODE_WIDEN_ROWS ? R : DECODE_WIDEN_ROWS,
                                  rounded);
}

/* The layers (and in bf16 the LM head) of fdpo_decoder_forward in one region, for steps
 * without LoRA whose linear layers all take the strip matmuls (bf16, or fp32 up to
 * DECODE_SMALL_ROWS rows). h [n_slots, C] = the final LayerNorm of each slot's last row
 * (all_logits = 0) or of every row; logits computed here in bf16 only. */
static void decode_layers_one_region(fdpo_decoder *d, const int32_t *tokens, size_t R, size_t n_slots,
                                     const size_t *n_new, float *logits, int all_logits) {
    const fdpo_gpt2_config *c = &d->model->config;
    const fdpo_gpt2_params *p = &d->model->params;
    size_t C = c->n_embd, L = c->n_layer, NH = c->n_head, V = c->vocab_size;
    float eps = c->layer_norm_epsilon;
    size_t layer_cache = d->max_seqs * d->max_len * C, layer_kcache = d->max_seqs * C * d->ldk;
#define WP(l, k) (d->wp ? d->wp + d->wp_off[4 * (l) + (k)] : NULL)
    /* fp32's GELU runs in groups of 8 from 0 (decode_gelu_range): a thread's columns (48 k to
     * 48 k' or 4C) are whole groups when 4C is a multiple of 8; bf16's is per element
     * (fdpo_k_expf: the same bits on any lane) */
    int bf16 = d->wp != NULL, gelu_own_cols = bf16 || (4 * C) % 8 == 0, one_row_per_slot = R == n_slots;
    size_t max_threads = (size_t)omp_get_max_threads(), need = max_threads * R * C;
    if (need > d->cap_h_team) {
        free(d->h_team);
        d->h_team = fdpo_malloc(need * sizeof(float));
        d->cap_h_team = need;
    }
    /* vdpbf16ps reads bf16 rows: each input's bits are written where the input is made (the
     * thread's own LayerNorm rows, its (row, head) of attention, its GELU columns, its rows of
     * the final LayerNorm), so the matmul needs no copy and no barriers of its own (12
     * barriers per layer become 5); the fp32 input is then left unrounded, as only the
     * widening routes read it (the bf16 of x and of bf16(x) are the same bits). x16: [threads][R][Cp] LayerNorm rows, then [R][Cp]
     * attention output, [R][Cp] final LayerNorm, [R][4C] GELU output; calloc'd: the pad
     * column of an odd C stays 0. */
    size_t Cp = (C + 1) / 2 * 2;
    uint16_t *x16 = bf16 ? fdpo_decode_x16(&d->x16, &d->cap_x16, (max_threads + 2) * R * Cp + R * 4 * C) : NULL;
    uint16_t *atty16 = x16 ? x16 + max_threads * R * Cp : NULL, *h16 = x16 ? atty16 + R * Cp : NULL;
    uint16_t *fch16 = x16 ? h16 + R * Cp : NULL;
    #pragma omp parallel
    {
        size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num(), r0, r1, a0, a1, g0, g1, o0, o1;
        size_t n_fc = R * 4 * C, n_groups = (n_fc + 7) / 8, hs = C / NH;
        float *scores = d->scores + t * d->ldk, *hm = d->h_team + t * R * C;
        uint16_t *hm16 = x16 ? x16 + t * R * Cp : NULL;
        decode_share(R, t, nt, &r0, &r1);
        decode_share(R * NH, t, nt, &a0, &a1);
        decode_share(n_groups, t, nt, &g0, &g1);
        decode_embed_forward(d->x + r0 * C, tokens + r0, d->row_pos + r0, p->wte, p->wpe, r1 - r0, C);
        #pragma omp barrier
        for (size_t l = 0; l < L; l++) {
            float *kc = d->k_cache + l * layer_kcache, *vc = d->v_cache + l * layer_cache;
            /* every thread normalises all R rows into its own h (a few microseconds of
             * duplicated work instead of a barrier) */
            for (size_t r = 0; r < R; r++)
                decode_layernorm_row(hm + r * C, d->x + r * C, p->ln1w + l * C, p->ln1b + l * C, C, eps);
            if (hm16) decode_rows_to_bf16(hm16, hm, R, C);
            else if (bf16) decode_round_bf16(hm, R * C);
            decode_matmul_share(d, d->qkv, hm, p->qkvw + l * C * 3 * C, p->qkvb + l * 3 * C, R, C, 3 * C, 0,
                                WP(l, 0), hm16, t, nt);
            #pragma omp barrier
            /* the keys and values of a (row, head) go into the cache on the thread that
             * attends with them, just before: a key is one float on each of hs lines, and
             * the lines' misses then overlap with the attention that reads those lines anyway
             * (stored by the qkv columns' threads after c_attn they were half of the step's
             * time outside the kernels, perf at 16 rows). Rows that attend to other rows of
             * their slot (a prefill) wait for every row's store. */
            if (!one_row_per_slot) {
                for (size_t a = a0; a < a1; a++)
                    decode_cache_store_head(kc, vc, d->qkv, d->row_slot, d->row_pos, a / NH, a % NH, C, NH, d->max_len,
                                            d->ldk);
                #pragma omp barrier
            }
            for (size_t a = a0; a < a1; a++) {
                if (one_row_per_slot)
                    decode_cache_store_head(kc, vc, d->qkv, d->row_slot, d->row_pos, a / NH, a % NH, C, NH, d->max_len,
                                            d->ldk);
                decode_attention_head(d->atty, scores, d->qkv, kc, vc, d->row_slot, d->row_pos, a / NH, a % NH, C, NH,
                                      d->max_len, d->ldk);
                if (atty16)
                    fdpo_bf16_round_n(atty16 + (a / NH) * Cp + (a % NH) * hs, d->atty + (a / NH) * C + (a % NH) * hs, hs);
                else if (bf16)
                    decode_round_bf16(d->atty + (a / NH) * C + (a % NH) * hs, hs);
            }
            #pragma omp barrier
            decode_matmul_share(d, d->x, d->atty, p->attprojw + l * C * C, p->attprojb + l * C, R, C, C, 1, WP(l, 1),
                                atty16, t, nt);
            #pragma omp barrier
            for (size_t r = 0; r < R; r++)
                decode_layernorm_row(hm + r * C, d->x + r * C, p->ln2w + l * C, p->ln2b + l * C, C, eps);
            if (hm16) decode_rows_to_bf16(hm16, hm, R, C);
            else if (bf16) decode_round_bf16(hm, R * C);
            decode_matmul_share(d, d->fch, hm, p->fcw + l * C * 4 * C, p->fcb + l * 4 * C, R, C, 4 * C, 0,
                                WP(l, 2), hm16, t, nt);
            if (gelu_own_cols) { /* GELU of the thread's own columns, no barrier between */
                decode_share_cols(4 * C, t, nt, &o0, &o1);
                for (size_t r = 0; r < R && o0 < o1; r++) {
                    decode_gelu_range(d->fch, r * 4 * C + o0, r * 4 * C + o1, n_fc, bf16);
                    if (fch16) fdpo_bf16_round_n(fch16 + r * 4 * C + o0, d->fch + r * 4 * C + o0, o1 - o0);
                    else if (bf16) decode_round_bf16(d->fch + r * 4 * C + o0, o1 - o0);
                }
            } else {
                #pragma omp barrier
                decode_gelu_range(d->fch, 8 * g0, 8 * g1 < n_fc ? 8 * g1 : n_fc, n_fc, d->wp != NULL);
            }
            #pragma omp barrier
            decode_matmul_share(d, d->x, d->fch, p->fcprojw + l * 4 * C * C, p->fcprojb + l * C, R, 4 * C, C, 1,
                                WP(l, 3), fch16, t, nt);
            #pragma omp barrier
        }
        size_t n_out = all_logits ? R : n_slots, q0, q1;
        decode_share(n_out, t, nt, &q0, &q1);
        for (size_t q = q0; q < q1; q++) {
            size_t r = q; /* all_logits: row q; else slot q's last row */
            if (!all_logits) {
                r = 0;
                for (size_t i = 0; i <= q; i++) r += n_new[i];
                r--;
            }
            decode_layernorm_row(d->h + q * C, d->x + r * C, p->lnfw, p->lnfb, C, eps);
            if (h16) decode_rows_to_bf16(h16 + q * Cp, d->h + q * C, 1, C);
            else if (bf16) decode_round_bf16(d->h + q * C, C);
        }
        if (d->wp) {
            #pragma omp barrier
            decode_matmul_share(d, logits, d->h, NULL, NULL, n_out, C, V, 0, WP(L, 0), h16, t, nt);
        }
    }
#undef WP
}

int fdpo_decoder_forward(fdpo_decoder *d, size_t n_slots, const size_t *slots,
                         const size_t *n_new, const int32_t *tokens, float *logits, int all_logits) {
    const fdpo_gpt2_config *c = &d->model->config;
    const fdpo_gpt2_params *p = &d->model->params;
    size_t C = c->n_embd, L = c->n_layer, NH = c->n_head, V = c->vocab_size;
    size_t R = 0;
    for (size_t i = 0; i < n_slots; i++) {
        if (slots[i] >= d->max_seqs) return fdpo_error("decoder: slot %zu out of range (%zu slots)", slots[i], d->max_seqs);
        /* every row's position is its slot's length before the call plus its index within
         * the entry, so a second entry for one slot would overwrite the first's cache
         * positions and pass the length check (made per entry) past max_len. Quadratic in
         * n_slots: a few thousand comparisons at the sampler's batch sizes, against a step */
        for (size_t j = 0; j < i; j++)
            if (slots[j] == slots[i])
                return fdpo_error("decoder: slot %zu given twice in one call (entries %zu and %zu)", slots[i], j + 1, i + 1);
        if (fdpo_decoder_len(d, slots[i]) + n_new[i] > d->max_len)
            return fdpo_error("decoder: sequence of %zu tokens exceeds the cache length %zu",
                              fdpo_decoder_len(d, slots[i]) + n_new[i], d->max_len);
        if (n_new[i] == 0) return fdpo_error("decoder: no new tokens for slot %zu", slots[i]);
        R += n_new[i];
    }
    for (size_t r = 0; r < R; r++)
        if (tokens[r] < 0 || (size_t)tokens[r] >= V)
            return fdpo_error("decoder: token id %d outside the vocabulary [0, %zu)", tokens[r], V);
    if (R == 0) return 0;
    if (d->llama) return fdpo_llama_decoder_forward(d->llama, n_slots, slots, n_new, tokens, logits, all_logits, R);
    grow_rows(d, R, n_slots);
    const fdpo_gpt2 *m = d->model;
    if (d->wp && d->cap16 < R) {
        free(d->in16);
        d->in16 = fdpo_malloc(R * (4 * C + 2) * sizeof(uint16_t));
        d->cap16 = R;
    }
    /* layer l's k-th linear layer packed in bf16 (NULL in fp32) */
#define WP(l, k) (d->wp ? d->wp + d->wp_off[4 * (l) + (k)] : NULL)
    for (size_t i = 0, r = 0; i < n_slots; i++)
        for (size_t j = 0; j < n_new[i]; j++, r++) {
            d->row_slot[r] = slots[i];
            d->row_pos[r] = (int32_t)(d->len[slots[i]] + j);
        }

    if (d->one_region && !(m->lora && m->lora->enabled) && (d->wp || R <= DECODE_SMALL_ROWS)) {
        decode_layers_one_region(d, tokens, R, n_slots, n_new, logits, all_logits);
        for (size_t i = 0; i < n_slots; i++) d->len[slots[i]] += n_new[i];
        if (!d->wp) decode_lmhead_forward(d, logits, d->h, p->wte, all_logits ? R : n_slots, C, V, NULL);
        return 0;
    }
    decode_embed_forward(d->x, tokens, d->row_pos, p->wte, p->wpe, R, C);
    size_t layer_cache = d->max_seqs * d->max_len * C, layer_kcache = d->max_seqs * C * d->ldk;
    for (size_t l = 0; l < L; l++) {
        float *kc = d->k_cache + l * layer_kcache, *vc = d->v_cache + l * layer_cache;
        decode_layernorm_forward(d->h, d->x, p->ln1w + l * C, p->ln1b + l * C, R, C, c->layer_norm_epsilon);
        decode_matmul_forward(d, d->qkv, d->h, p->qkvw + l * C * 3 * C, p->qkvb + l * 3 * C, R, C, 3 * C, 0,
                              WP(l, 0));
        fdpo_lora_apply(m, FDPO_LORA_C_ATTN, l, d->qkv, d->h, R);
        decode_cache_store(kc, vc, d->qkv, d->row_slot, d->row_pos, R, C, NH, d->max_len, d->ldk);
        decode_attention_forward(d->atty, d->scores, d->qkv, kc, vc, d->row_slot, d->row_pos, R, C, NH, d->max_len,
                                 d->ldk);
        decode_matmul_forward(d, d->x, d->atty, p->attprojw + l * C * C, p->attprojb + l * C, R, C, C, 1,
                              WP(l, 1));
        fdpo_lora_apply(m, FDPO_LORA_ATTN_C_PROJ, l, d->x, d->atty, R);
        decode_layernorm_forward(d->h, d->x, p->ln2w + l * C, p->ln2b + l * C, R, C, c->layer_norm_epsilon);
        decode_matmul_forward(d, d->fch, d->h, p->fcw + l * C * 4 * C, p->fcb + l * 4 * C, R, C, 4 * C, 0,
                              WP(l, 2));
        fdpo_lora_apply(m, FDPO_LORA_C_FC, l, d->fch, d->h, R);
        decode_gelu_forward(d->fch, R * 4 * C, d->wp != NULL);
        decode_matmul_forward(d, d->x, d->fch, p->fcprojw + l * 4 * C * C, p->fcprojb + l * C, R, 4 * C, C, 1,
                              WP(l, 3));
        fdpo_lora_apply(m, FDPO_LORA_MLP_C_PROJ, l, d->x, d->fch, R);
    }
    for (size_t i = 0; i < n_slots; i++) d->len[slots[i]] += n_new[i];

    if (all_logits) {
        decode_layernorm_forward(d->h, d->x, p->lnfw, p->lnfb, R, C, c->layer_norm_epsilon);
        decode_lmhead_forward(d, logits, d->h, p->wte, R, C, V, WP(L, 0));
    } else {
        size_t r_end = 0;
        for (size_t i = 0; i < n_slots; i++) {
            r_end += n_new[i];
            memcpy(d->xlast + i * C, d->x + (r_end - 1) * C, C * sizeof(float));
        }
        decode_layernorm_forward(d->h, d->xlast, p->lnfw, p->lnfb, n_slots, C, c->layer_norm_epsilon);
        decode_lmhead_forward(d, logits, d->h, p->wte, n_slots, C, V, WP(L, 0));
    }
#undef WP
    return 0;
}
