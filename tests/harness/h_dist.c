/* dist-allreduce N_FLOATS REPS: the gradient allreduce alone, as fdpo_trainer_step calls it
 * (fdpo_dist_sum_f32 over a buffer of N_FLOATS), REPS times after a barrier each, under
 * mpirun. Rank r fills the buffer with r + 1, so every element must end as N(N+1)/2 (checked).
 * Rank 0 prints {"ranks":N,"bytes":B,"seconds":[...]} (bench/bench_mpi.py). */
#include <stdio.h>
#include <stdlib.h>
#include "fdpo/core.h"
#include "fdpo/dist.h"

int h_dist(int argc, char **argv) {
    if (argc != 3) return fdpo_error("usage: dist-allreduce N_FLOATS REPS");
    size_t n = (size_t)strtoull(argv[1], NULL, 10);
    int reps = atoi(argv[2]);
    if (n == 0 || reps <= 0) return fdpo_error("N_FLOATS and REPS must be positive");
    if (fdpo_dist_init(&argc, &argv)) return -1;
    int size = fdpo_dist_size(), rank = fdpo_dist_rank();
    float *buf = fdpo_malloc(n * sizeof *buf);
    double *sec = fdpo_malloc((size_t)reps * sizeof *sec);
    const float want = (float)(size * (size + 1) / 2);
    int rc = 0;
    for (int k = 0; k < reps && !rc; k++) {
        for (size_t i = 0; i < n; i++) buf[i] = (float)(rank + 1);
        if ((rc = fdpo_dist_barrier())) break;
        double t0 = fdpo_now();
        if ((rc = fdpo_dist_sum_f32(buf, n))) break;
        sec[k] = fdpo_now() - t0;
        for (size_t i = 0; i < n; i++)
            if (buf[i] != want) { rc = fdpo_error("element %zu is %g after the sum, not %g", i, buf[i], want); break; }
    }
    if (!rc && rank == 0) {
        printf("{\"ranks\": %d, \"bytes\": %zu, \"seconds\": [", size, n * sizeof *buf);
        for (int k = 0; k < reps; k++) printf("%s%.9f", k ? ", " : "", sec[k]);
        printf("]}\n");
    }
    free(buf);
    free(sec);
    if (rc && size > 1) { fprintf(stderr, "fdpo-harness dist-allreduce: %s\n", fdpo_last_error()); fdpo_dist_abort(1); }
    fdpo_dist_finalize();
    return rc;
}
