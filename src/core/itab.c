/* Index tables: the shared open-addressing hash table (include/fdpo/core.h). */
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"

static size_t capacity_for(size_t n_items) {
    size_t c = 16;
    while (c < 2 * n_items) c <<= 1;   /* load <= 1/2: short probe runs */
    return c;
}

void fdpo_itab_init(fdpo_itab *t, size_t n_items) {
    t->cap = capacity_for(n_items);
    t->slot = fdpo_calloc(t->cap, sizeof *t->slot);
    t->n = 0;
}

int fdpo_itab_reserve(fdpo_itab *t, size_t n_items, uint64_t (*hash_of)(size_t item, const void *ctx), const void *ctx) {
    if (t->cap && 2 * n_items <= t->cap) return 0;
    uint32_t *old = t->slot;
    size_t old_cap = t->cap;
    fdpo_itab_init(t, n_items > 2 * t->n ? n_items : 2 * t->n);
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i]) continue;
        size_t item = old[i] - 1, s = fdpo_itab_first(t, hash_of(item, ctx));
        while (t->slot[s]) s = fdpo_itab_next(t, s);
        fdpo_itab_set(t, s, item);
    }
    free(old);
    return 1;
}

void fdpo_itab_clear(fdpo_itab *t) {
    if (t->slot) memset(t->slot, 0, t->cap * sizeof *t->slot);
    t->n = 0;
}

void fdpo_itab_free(fdpo_itab *t) {
    free(t->slot);
    memset(t, 0, sizeof *t);
}
