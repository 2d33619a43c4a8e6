/* libFuzzer: safetensors header validation (fdpo_st_open_buffer) and tensor reads. */
#include <stdint.h>
#include <stdlib.h>
#include "fdpo/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fdpo_safetensors st;
    if (fdpo_st_open_buffer(&st, "fuzz.safetensors", data, size)) return 0;
    for (size_t i = 0; i < st.n_tensors; i++) {
        const fdpo_st_tensor *t = &st.tensors[i];
        if (t->begin > t->end || t->end > st.data_len) abort(); /* the header check promised this */
        if (fdpo_st_find(&st, t->name) == NULL) abort();
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        if (numel > (1u << 20)) continue;
        float *out = malloc((numel ? numel : 1) * sizeof *out);
        fdpo_st_read_f32(&st, t, out, numel); /* non-float dtypes: an error, not a read */
        free(out);
    }
    fdpo_st_meta(&st, "format");
    fdpo_st_close(&st);
    return 0;
}
