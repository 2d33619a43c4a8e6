/* Learning-rate schedules with linear warmup, as Hugging Face's get_*_schedule_with_warmup
 * (LambdaLR factors) with a min-lr floor. step counts optimizer steps from 0; the lr of
 * step s is used for the update that step s makes. W = warmup_steps, S = total_steps:
 *   s < W:     lr * s / max(1, W)
 *   constant:  lr
 *   cosine:    lr * (r + (1 - r) * 0.5 * (1 + cos(pi * p)))
 *   linear:    lr * (r + (1 - r) * max(0, (S - s) / max(1, S - W)))
 * with p = (s - W) / max(1, S - W) and r = min_lr_ratio. */
#include <math.h>
#include <string.h>
#include "fdpo/train.h"

int fdpo_schedule_parse(const char *name, fdpo_sched_kind *k) {
    if (!name) return fdpo_error("--schedule: missing value");
    if (!strcmp(name, "constant")) *k = FDPO_SCHED_CONSTANT;
    else if (!strcmp(name, "cosine")) *k = FDPO_SCHED_COSINE;
    else if (!strcmp(name, "linear")) *k = FDPO_SCHED_LINEAR;
    else return fdpo_error("--schedule: unknown schedule '%s' (constant, cosine, linear)", name);
    return 0;
}

double fdpo_schedule_lr(const fdpo_schedule *s, size_t step) {
    const double W = (double)s->warmup_steps, S = (double)s->total_steps, x = (double)step;
    if (step < s->warmup_steps) return s->lr * x / (W > 1 ? W : 1);
    const double span = S - W > 1 ? S - W : 1;
    const double r = s->min_lr_ratio;
    double f;
    switch (s->kind) {
    case FDPO_SCHED_COSINE: {
        double p = (x - W) / span;
        f = 0.5 * (1.0 + cos(M_PI * p));
        break;
    }
    case FDPO_SCHED_LINEAR: {
        f = (S - x) / span;
        if (f < 0) f = 0;
        break;
    }
    default: return s->lr;
    }
    return s->lr * (r + (1.0 - r) * f);
}
