/* AdamW and gradient-norm clipping with PyTorch's semantics (torch.optim.AdamW,
 * torch.nn.utils.clip_grad_norm_), so that runs can be checked against PyTorch step by step. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include "fdpo/train.h"

static int check_hyper(double beta1, double beta2, double eps, double wd) {
    if (!(beta1 >= 0 && beta1 < 1)) return fdpo_error("--beta1: %g is not in [0, 1)", beta1);
    if (!(beta2 >= 0 && beta2 < 1)) return fdpo_error("--beta2: %g is not in [0, 1)", beta2);
    if (!(eps > 0)) return fdpo_error("--adam-eps: %g must be > 0", eps);
    if (!(wd >= 0)) return fdpo_error("--weight-decay: %g must be >= 0", wd);
    return 0;
}

int fdpo_adamw_reset(fdpo_adamw *o, double beta1, double beta2, double eps, double wd) {
    if (check_hyper(beta1, beta2, eps, wd)) return -1;
    o->beta1 = beta1; o->beta2 = beta2; o->eps = eps; o->weight_decay = wd;
    o->t = 0;
    return 0;
}

int fdpo_adamw_init(fdpo_adamw *o, size_t n, double beta1, double beta2, double eps, double wd) {
    if (check_hyper(beta1, beta2, eps, wd)) return -1;
    o->beta1 = beta1; o->beta2 = beta2; o->eps = eps; o->weight_decay = wd;
    o->n = n;
    /* zeroed, on the parameters' and gradients' page size: the update streams all four
     * (src/core/alloc_large.c: a pass over arrays of both sizes is the slow case) */
    o->m = fdpo_malloc_large((n ? n : 1) * sizeof(float));
    o->v = fdpo_malloc_large((n ? n : 1) * sizeof(float));
    o->t = 0;
    return 0;
}

void fdpo_adamw_free(fdpo_adamw *o) {
    fdpo_free_large(o->m); fdpo_free_large(o->v);
    o->m = o->v = NULL; o->n = 0;
}

/* One AdamW update of n elements (one thread's share of one tensor), per element in
 * PyTorch's order and float32 arithmetic, with g read as g * gscale (the clip factor: the
 * float product clip_grad_norm_ would have stored, so the same bits as clipping in place
 * first; gscale = 1 leaves g as it is):
 *   p *= decay;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
 *   p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
 * first: the step after a reset (t == 0): m = v = 0 are not read (the same values: 0*b1 + x
 * is x, and +0 where x is -0: the "+ 0.0f"), so a reset optimizer need not clear 2x the
 * model's bytes first. store = 0: m and v are not written back (a run's last step whose
 * moments nobody reads: the online rounds, fdpo_adamw_step_ex).
 * AVX-512: 16 elements at a time with intrinsics. GCC does not vectorise the plain loop
 * (`omp simd` or not): sqrtf may set errno, so without -fno-math-errno each element gets a
 * scalar sqrtss and an errno branch, and neither the optimize attribute nor the pragma
 * lifts that (GCC 12). Scalar, the update ran ~9 cycles an element, ~5 % of a small
 * model's training step. Each element goes through the same IEEE operations in the same
 * order (no contraction into FMAs: the build's -std=c11 has none either), so both paths
 * give the same bits. */
typedef struct {
    float gscale, decay, b1, b2, one_minus_b1, one_minus_b2, step_size, bc2_sqrt, eps;
} adamw_coef;

static inline float adamw_element(float *p, float g_raw, float *m, float *v, adamw_coef k, int first, int store) {
    const float g = g_raw * k.gscale;
    float pi = *p * k.decay;
    float mi = first ? k.one_minus_b1 * g + 0.0f : *m * k.b1 + k.one_minus_b1 * g;
    float vi = first ? k.one_minus_b2 * g * g + 0.0f : *v * k.b2 + k.one_minus_b2 * g * g;
    if (store) { *m = mi; *v = vi; }
    float denom = sqrtf(vi) / k.bc2_sqrt + k.eps;
    return pi - k.step_size * (mi / denom);
}

static void adamw_update(float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                         size_t n, adamw_coef k, int first, int store) {
    size_t i = 0;
#ifdef __AVX512F__
    const __m512 gscale = _mm512_set1_ps(k.gscale), decay = _mm512_set1_ps(k.decay);
    const __m512 b1 = _mm512_set1_ps(k.b1), b2 = _mm512_set1_ps(k.b2);
    const __m512 omb1 = _mm512_set1_ps(k.one_minus_b1), omb2 = _mm512_set1_ps(k.one_minus_b2);
    const __m512 step = _mm512_set1_ps(k.step_size), bc2s = _mm512_set1_ps(k.bc2_sqrt), eps = _mm512_set1_ps(k.eps);
    const __m512 zero = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m512 gi = _mm512_mul_ps(_mm512_loadu_ps(g + i), gscale);
        __m512 pi = _mm512_mul_ps(_mm512_loadu_ps(p + i), decay);
        __m512 mg = _mm512_mul_ps(omb1, gi), vg = _mm512_mul_ps(_mm512_mul_ps(omb2, gi), gi);
        __m512 mi = first ? _mm512_add_ps(mg, zero) : _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(m + i), b1), mg);
        __m512 vi = first ? _mm512_add_ps(vg, zero) : _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(v + i), b2), vg);
        if (store) {
            _mm512_storeu_ps(m + i, mi);
            _mm512_storeu_ps(v + i, vi);
        }
        __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bc2s), eps);
        _mm512_storeu_ps(p + i, _mm512_sub_ps(pi, _mm512_mul_ps(step, _mm512_div_ps(mi, denom))));
    }
#endif
    for (; i < n; i++) p[i] = adamw_element(p + i, g[i], m + i, v + i, k, first, store);
}

#define ADAMW_BLOCK 4096 /* elements per block (a multiple of 16): 64 KiB of p, g, m, v, in L2 */

/* params, grads, m, v: [n_params], walked tensor by tensor so that decay applies only to
 * tensors flagged decay (2-D weights), as the usual two PyTorch param groups do
 * (torch.optim.AdamW: p *= 1 - lr*wd, bias corrections step_size = lr / (1 - b1^t),
 * bc2_sqrt = sqrt(1 - b2^t); the update per element: adamw_update). */
/* m->grads_memory is allocated by the first backward (or fdpo_gpt2_zero_grad): before it,
 * there is nothing to read */
static int check_grads(const fdpo_gpt2 *model, const char *what) {
    if (!model->grads_memory)
        return fdpo_error("%s: the model has no gradients yet (run a backward pass, or fdpo_gpt2_zero_grad, first)", what);
    return 0;
}

int fdpo_adamw_step_ex(fdpo_adamw *o, fdpo_gpt2 *model, double lr, float grad_scale, int store_moments) {
    if (check_grads(model, "adamw step")) return -1;
    if (o->n != model->n_params)
        return fdpo_error("adamw step: the optimizer holds moments for %zu parameters, the model has %zu", o->n,
                          model->n_params);
    const int first = o->t == 0, store = store_moments != 0;
    o->t++;
    double bc1 = 1.0 - pow(o->beta1, (double)o->t);
    double bc2 = 1.0 - pow(o->beta2, (double)o->t);
    adamw_coef k = {.gscale = grad_scale, .b1 = (float)o->beta1, .b2 = (float)o->beta2, .one_minus_b1 = (float)(1.0 - o->beta1),
                    .one_minus_b2 = (float)(1.0 - o->beta2), .step_size = (float)(lr / bc1),
                    .bc2_sqrt = (float)sqrt(bc2), .eps = (float)o->eps};
    const float wd_decay = (float)(1.0 - lr * o->weight_decay);
    /* One parallel region for the whole model (a small model has ~50 tensors, some of 128
     * elements: a region per tensor cost more in fork/join than the update itself). Each
     * tensor's elements are split in equal static parts (multiples of 16, whole vectors);
     * no barrier between tensors, which are disjoint. */
    #pragma omp parallel firstprivate(k)
    {
        const size_t nt = (size_t)omp_get_num_threads(), it = (size_t)omp_get_thread_num();
        for (size_t ti = 0; ti < model->n_tensors; ti++) {
            const fdpo_gpt2_tensor *t = &model->tensors[ti];
            const size_t n = t->numel, per = (n + nt * 16 - 1) / (nt * 16) * 16;
            size_t lo = it * per, hi = lo + per < n ? lo + per : n;
            if (lo >= hi) continue;
            const size_t off = t->offset + lo;
            k.decay = t->decay ? wd_decay : 1.0f;
            /* in blocks, each one's bf16 copy written while it is in cache (fdpo_model_params_updated) */
            for (size_t b = 0; b < hi - lo; b += ADAMW_BLOCK) {
                const size_t nb = hi - lo - b < ADAMW_BLOCK ? hi - lo - b : ADAMW_BLOCK;
                adamw_update(model->params_memory + off + b, model->grads_memory + off + b, o->m + off + b,
                             o->v + off + b, nb, k, first, store);
                fdpo_model_params_updated(model, off + b, nb);
            }
        }
    }
    fdpo_model_params_update_done(model);
    return 0;
}

int fdpo_adamw_step(fdpo_adamw *o, fdpo_gpt2 *model, double lr) { return fdpo_adamw_step_ex(o, model, lr, 1.0f, 1); }

/* Total L2 norm over every gradient element (accumulated in double, so the result does not
 * depend on the thread count). */
double fdpo_grad_norm(const fdpo_gpt2 *model) {
    if (check_grads(model, "gradient norm")) return NAN;
    const float *g = model->grads_memory;
    const size_t n = model->n_params;
    /* fixed chunks summed in order: the same norm for any thread count. Within a chunk,
     * LANES independent sums (element i goes to lane (i - lo) % LANES, added up in lane
     * order at the end): the compiler keeps them in vector registers, where one running sum
     * is a chain of dependent double adds, ~4 cycles an element (124M: ~0.1 s a step, 3-4x
     * the memory-bound pass this is now). */
    enum { CHUNKS = 64, LANES = 16 };
    double partial[CHUNKS];
    #pragma omp parallel for schedule(static)
    for (size_t c = 0; c < CHUNKS; c++) {
        size_t lo = n * c / CHUNKS, hi = n * (c + 1) / CHUNKS, i = lo;
        double lane[LANES] = {0};
        for (; i + LANES <= hi; i += LANES)
            for (size_t j = 0; j < LANES; j++) lane[j] += (double)g[i + j] * (double)g[i + j];
        for (size_t j = 0; i < hi; i++, j++) lane[j] += (double)g[i] * (double)g[i];
        double ss = 0;
        for (size_t j = 0; j < LANES; j++) ss += lane[j];
        partial[c] = ss;
    }
    double ss = 0;
    for (size_t c = 0; c < CHUNKS; c++) ss += partial[c];
    return sqrt(ss);
}

float fdpo_clip_scale(double norm, double max_norm) {
    return max_norm > 0 && norm > max_norm ? (float)(max_norm / (norm + 1e-6)) : 1.0f;
}

double fdpo_clip_grad_norm(fdpo_gpt2 *model, double max_norm) {
    double norm = fdpo_grad_norm(model);   /* NaN without gradients: nothing to scale */
    if (max_norm > 0 && norm > max_norm) {
        const float scale = fdpo_clip_scale(norm, max_norm);
        float *gw = model->grads_memory;
        const size_t n = model->n_params;
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) gw[i] *= scale;
    }
    return norm;
}
