/* The epoch data order: a seeded permutation per epoch, consumed across epoch boundaries. */
#include <stdlib.h>
#include "fdpo/trainer.h"

static void order_draw(fdpo_data_order *d, fdpo_rng *rng) {
    for (size_t i = 0; i < d->n; i++) d->order[i] = i;
    if (d->shuffle) fdpo_rng_shuffle(rng, d->order, d->n);
}

void fdpo_order_init(fdpo_data_order *d, size_t n, int shuffle, fdpo_rng *rng) {
    d->n = n; d->shuffle = shuffle; d->epoch = 0; d->pos = 0;
    d->order = fdpo_malloc((n ? n : 1) * sizeof *d->order);
    order_draw(d, rng);
}

size_t fdpo_order_next(fdpo_data_order *d, fdpo_rng *rng) {
    if (d->pos == d->n) { d->epoch++; d->pos = 0; order_draw(d, rng); }
    return d->order[d->pos++];
}

double fdpo_order_epoch(const fdpo_data_order *d) {
    return d->n ? (double)d->epoch + (double)d->pos / (double)d->n : 0;
}

void fdpo_order_free(fdpo_data_order *d) { free(d->order); d->order = NULL; d->n = 0; }
