/* Optimisation: AdamW, schedules, gradient clipping, training state. */
#ifndef FDPO_TRAIN_H
#define FDPO_TRAIN_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/gpt2.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { FDPO_SCHED_CONSTANT, FDPO_SCHED_COSINE, FDPO_SCHED_LINEAR } fdpo_sched_kind;
typedef struct {
    fdpo_sched_kind kind;
    double lr;           /* peak */
    size_t warmup_steps; /* linear 0 -> lr over warmup */
    size_t total_steps;
    double min_lr_ratio; /* cosine/linear floor as a fraction of lr */
} fdpo_schedule;
int fdpo_schedule_parse(const char *name, fdpo_sched_kind *k);
double fdpo_schedule_lr(const fdpo_schedule *s, size_t step); /* step counts from 0 */

typedef struct {
    double beta1, beta2, eps, weight_decay;
    size_t n;            /* number of parameters */
    float *m, *v;        /* moments [n]; while t == 0 they are zero by definition and never
                            read (the first step writes them), so a reset need not clear them */
    size_t t;            /* steps taken */
} fdpo_adamw;
int fdpo_adamw_init(fdpo_adamw *o, size_t n, double beta1, double beta2, double eps, double wd);
/* A fresh optimizer (t = 0, moments zero) with these hyperparameters in o's memory: no
 * allocation, no clearing (the online rounds reuse one pair of moment buffers). */
int fdpo_adamw_reset(fdpo_adamw *o, double beta1, double beta2, double eps, double wd);
void fdpo_adamw_free(fdpo_adamw *o);
/* PyTorch AdamW semantics (decoupled decay p *= 1 - lr*wd, bias correction), weight decay
 * only on tensors with decay = 1 (2-D weights). Errors (nothing changed): m has no gradients
 * yet (no backward, no fdpo_gpt2_zero_grad), o was sized for another parameter count. */
int fdpo_adamw_step(fdpo_adamw *o, fdpo_gpt2 *m, double lr);
/* The same step reading each gradient as g * grad_scale (fdpo_clip_scale's factor: the bits
 * of clipping in place first, without the pass that stores the scaled gradients; m->grads
 * keep the unscaled values). store_moments = 0: m and v are not written back -- only for a
 * last step whose moments nobody reads (what follows is fdpo_adamw_reset or free). */
int fdpo_adamw_step_ex(fdpo_adamw *o, fdpo_gpt2 *m, double lr, float grad_scale, int store_moments);
/* Global L2 norm of m->grads; if max_norm > 0 and the norm exceeds it, scale grads by
 * max_norm / (norm + 1e-6) as torch.nn.utils.clip_grad_norm_. Returns the norm before clipping. */
double fdpo_clip_grad_norm(fdpo_gpt2 *m, double max_norm);
/* The norm alone (the same double for any thread count), and the factor clipping to
 * max_norm applies for it (1 when max_norm <= 0 or norm <= max_norm). Both norms are NaN,
 * with the error set, when m has no gradients yet (as fdpo_adamw_step). */
double fdpo_grad_norm(const fdpo_gpt2 *m);
float fdpo_clip_scale(double norm, double max_norm);

#ifdef __cplusplus
}
#endif

#endif
