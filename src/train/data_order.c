/* The epoch data order: a seeded permutation per epoch, consumed across epoch boundaries.
 *
 * A step that straddles an epoch boundary takes the old epoch's last items and the new
 * epoch's first ones. Drawn blindly, the new permutation could put one of those last items
 * at its front, and the step would hold that example twice (weighted double in its
 * gradient) while another waits. So the items this step already took go to the end of the
 * new permutation, in its order: every epoch still visits every item once, and no step of
 * at most n items repeats one. The RNG draws the same numbers as a blind draw. */
#include <stdlib.h>
#include <string.h>
#include "fdpo/trainer.h"

static void order_draw(fdpo_data_order *d, fdpo_rng *rng) {
    for (size_t i = 0; i < d->n; i++) d->order[i] = i;
    if (d->shuffle) fdpo_rng_shuffle(rng, d->order, d->n);
}

void fdpo_order_init(fdpo_data_order *d, size_t n, int shuffle, fdpo_rng *rng) {
    d->n = n; d->shuffle = shuffle; d->epoch = 0; d->pos = 0; d->step_start = 0;
    d->order = fdpo_malloc((n ? n : 1) * sizeof *d->order);
    order_draw(d, rng);
}

void fdpo_order_begin_step(fdpo_data_order *d) { d->step_start = d->pos; }

/* order [n] = the stable partition of a fresh permutation: items not in taken [k] first,
 * then those in taken, each group in the permutation's order */
void fdpo_order_defer_taken(size_t *order, size_t n, const size_t *taken, size_t k) {
    if (!k) return;
    unsigned char *is_taken = fdpo_calloc(n, 1);
    size_t *tail = fdpo_malloc(k * sizeof *tail);
    for (size_t i = 0; i < k; i++) is_taken[taken[i]] = 1;
    size_t w = 0, t = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_taken[order[i]]) tail[t++] = order[i];
        else order[w++] = order[i];
    }
    memcpy(order + w, tail, t * sizeof *tail);
    free(tail);
    free(is_taken);
}

size_t fdpo_order_next(fdpo_data_order *d, fdpo_rng *rng) {
    if (d->pos == d->n) {
        /* this step's items from the old epoch: order[step_start .. n) */
        size_t k = d->step_start < d->n ? d->n - d->step_start : 0;
        size_t *taken = NULL;
        if (k) {
            taken = fdpo_malloc(k * sizeof *taken);
            memcpy(taken, d->order + d->step_start, k * sizeof *taken);
        }
        d->epoch++; d->pos = 0; d->step_start = 0;
        order_draw(d, rng);
        fdpo_order_defer_taken(d->order, d->n, taken, k);
        free(taken);
    }
    return d->order[d->pos++];
}

double fdpo_order_epoch(const fdpo_data_order *d) {
    return d->n ? (double)d->epoch + (double)d->pos / (double)d->n : 0;
}

void fdpo_order_free(fdpo_data_order *d) { free(d->order); d->order = NULL; d->n = 0; }
