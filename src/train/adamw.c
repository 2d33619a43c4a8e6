/* AdamW and gradient-norm clipping with PyTorch's semantics (torch.optim.AdamW,
 * torch.nn.utils.clip_grad_norm_), so that runs can be checked against PyTorch step by step. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
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
    o->m = fdpo_calloc(n ? n : 1, sizeof(float));
    o->v = fdpo_calloc(n ? n : 1, sizeof(float));
    o->t = 0;
    return 0;
}

void fdpo_adamw_free(fdpo_adamw *o) {
    free(o->m); free(o->v);
    o->m = o->v = NULL; o->n = 0;
}

/* One tensor's update, n elements (params p, grads g, moments m, v: [n]), in PyTorch's order
 * and float32 arithmetic, with g read as g * gscale (the clip factor: the float product
 * clip_grad_norm_ would have stored, so the same bits as clipping in place first):
 *   p *= decay;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
 *   p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
 * first: the step after a reset (t == 0): m = v = 0 without reading them, the same values
 * (0*b1 + x is x, and +0 where x is -0: the "+ 0.0f"), so a reset optimizer need not clear
 * 2x the model's bytes first. store = 0: m and v are not written back (a run's last step
 * whose moments nobody reads: the online rounds, fdpo_adamw_step_ex). Called with constant
 * flags inside the caller's parallel region (the omp for splits the elements). */
static inline void adamw_tensor(float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                                size_t n, float gscale, float decay, float b1, float b2, float one_minus_b1,
                                float one_minus_b2, float step_size, float bc2_sqrt, float eps, const int first,
                                const int store) {
    #pragma omp for simd schedule(static) nowait
    for (size_t i = 0; i < n; i++) {
        const float gi = g[i] * gscale;
        float pi = p[i] * decay;
        float mi = first ? one_minus_b1 * gi + 0.0f : m[i] * b1 + one_minus_b1 * gi;
        float vi = first ? one_minus_b2 * gi * gi + 0.0f : v[i] * b2 + one_minus_b2 * gi * gi;
        if (store) { m[i] = mi; v[i] = vi; }
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
    }
}

/* params, grads, m, v: [n_params], walked tensor by tensor so that decay applies only to
 * tensors flagged decay (2-D weights), as the usual two PyTorch param groups do:
 * p *= 1 - lr*wd, bias corrections step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t). */
void fdpo_adamw_step_ex(fdpo_adamw *o, fdpo_gpt2 *model, double lr, float grad_scale, int store_moments) {
    const int first = o->t == 0, store = store_moments != 0;
    o->t++;
    double bc1 = 1.0 - pow(o->beta1, (double)o->t);
    double bc2 = 1.0 - pow(o->beta2, (double)o->t);
    const float step_size = (float)(lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float b1 = (float)o->beta1, b2 = (float)o->beta2;
    const float one_minus_b1 = (float)(1.0 - o->beta1), one_minus_b2 = (float)(1.0 - o->beta2);
    const float eps = (float)o->eps;
    /* One parallel region for the whole model (a small model has ~50 tensors, some of 128
     * elements: a region per tensor cost more in fork/join than the update itself). Each
     * tensor's elements are split statically; nowait because tensors are disjoint. */
    #pragma omp parallel
    for (int ti = 0; ti < (int)model->n_tensors; ti++) {
        const fdpo_gpt2_tensor *t = &model->tensors[ti];
        float *p = model->params_memory + t->offset;
        const float *g = model->grads_memory + t->offset;
        float *m = o->m + t->offset, *v = o->v + t->offset;
        const float decay = t->decay ? (float)(1.0 - lr * o->weight_decay) : 1.0f;
#define ADAMW_TENSOR(F, S) adamw_tensor(p, g, m, v, t->numel, grad_scale, decay, b1, b2, one_minus_b1, one_minus_b2, \
                                        step_size, bc2_sqrt, eps, F, S)
        if (first && store) ADAMW_TENSOR(1, 1);
        else if (first) ADAMW_TENSOR(1, 0);
        else if (store) ADAMW_TENSOR(0, 1);
        else ADAMW_TENSOR(0, 0);
#undef ADAMW_TENSOR
    }
}

void fdpo_adamw_step(fdpo_adamw *o, fdpo_gpt2 *model, double lr) { fdpo_adamw_step_ex(o, model, lr, 1.0f, 1); }

/* Total L2 norm over every gradient element (accumulated in double, so the result does not
 * depend on the thread count). */
double fdpo_grad_norm(const fdpo_gpt2 *model) {
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
    double norm = fdpo_grad_norm(model);
    if (max_norm > 0 && norm > max_norm) {
        const float scale = fdpo_clip_scale(norm, max_norm);
        float *gw = model->grads_memory;
        const size_t n = model->n_params;
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) gw[i] *= scale;
    }
    return norm;
}
