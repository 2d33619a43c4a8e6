/* Data parallelism over Open MPI: see include/fdpo/dist.h. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/dist.h"
#ifdef FDPO_HAVE_MPI
#include <mpi.h>
#endif

static int g_rank = 0, g_size = 1, g_active = 0;
static double g_comm_seconds = 0;

int fdpo_dist_compiled(void) {
#ifdef FDPO_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

int fdpo_dist_rank(void) { return g_rank; }
int fdpo_dist_size(void) { return g_size; }
double fdpo_dist_comm_seconds(void) { return g_comm_seconds; }

/* started by an MPI launcher? (Open MPI, PMIx/Slurm, MPICH's Hydra) */
static int launched_by_mpi(void) {
    static const char *const VARS[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"};
    for (size_t i = 0; i < sizeof VARS / sizeof VARS[0]; i++)
        if (getenv(VARS[i])) return 1;
    return 0;
}

#ifdef FDPO_HAVE_MPI
static int mpi_fail(int code, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(code, msg, &len);
    return fdpo_error("MPI %s failed on rank %d of %d: %.*s", what, g_rank, g_size, len, msg);
}
#endif

int fdpo_dist_init(int *argc, char ***argv) {
    (void)argc; (void)argv;
    if (!launched_by_mpi()) return 0;
#ifdef FDPO_HAVE_MPI
    int provided = 0, rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return fdpo_error("MPI_Init_thread failed (code %d)", rc);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    g_active = 1;
    if (provided < MPI_THREAD_FUNNELED) return fdpo_error("MPI provides thread level %d, fdpo needs FUNNELED", provided);
    return 0;
#else
    return fdpo_error("started by an MPI launcher, but this fdpo was built without MPI "
                      "(install libopenmpi-dev and rebuild; fdpo --version says which)");
#endif
}

void fdpo_dist_finalize(void) {
#ifdef FDPO_HAVE_MPI
    if (g_active) MPI_Finalize();
#endif
    g_active = 0;
}

void fdpo_dist_abort(int code) {
#ifdef FDPO_HAVE_MPI
    if (g_active && g_size > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    (void)code;
}

#ifdef FDPO_HAVE_MPI
static int sum_buckets(void *buf, size_t n, size_t elem, MPI_Datatype type) {
    double t0 = fdpo_now();
    for (size_t off = 0; off < n; off += FDPO_DIST_BUCKET) {
        size_t k = n - off < FDPO_DIST_BUCKET ? n - off : FDPO_DIST_BUCKET;
        int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + off * elem, (int)k, type, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "allreduce");
    }
    g_comm_seconds += fdpo_now() - t0;
    return 0;
}
#endif

int fdpo_dist_sum_f32(float *buf, size_t n) {
#ifdef FDPO_HAVE_MPI
    if (g_size > 1) return sum_buckets(buf, n, sizeof *buf, MPI_FLOAT);
#endif
    (void)buf; (void)n;
    return 0;
}

int fdpo_dist_sum_f64(double *buf, size_t n) {
#ifdef FDPO_HAVE_MPI
    if (g_size > 1) return sum_buckets(buf, n, sizeof *buf, MPI_DOUBLE);
#endif
    (void)buf; (void)n;
    return 0;
}

int fdpo_dist_bcast(void *buf, size_t n, int root) {
#ifdef FDPO_HAVE_MPI
    if (g_size > 1) {
        double t0 = fdpo_now();
        for (size_t off = 0; off < n; off += (size_t)1 << 30) {
            size_t k = n - off < ((size_t)1 << 30) ? n - off : ((size_t)1 << 30);
            int rc = MPI_Bcast((char *)buf + off, (int)k, MPI_BYTE, root, MPI_COMM_WORLD);
            if (rc != MPI_SUCCESS) return mpi_fail(rc, "broadcast");
        }
        g_comm_seconds += fdpo_now() - t0;
    }
#endif
    (void)buf; (void)n; (void)root;
    return 0;
}

int fdpo_dist_check_agree(const char *what, uint64_t hash) {
#ifdef FDPO_HAVE_MPI
    if (g_size > 1) {
        uint64_t *all = fdpo_malloc((size_t)g_size * sizeof *all);
        int rc = MPI_Allgather(&hash, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) { free(all); return mpi_fail(rc, "allgather"); }
        for (int r = 1; r < g_size; r++)
            if (all[r] != all[0]) {
                uint64_t h0 = all[0], hr = all[r];
                free(all);
                return fdpo_error("%s differs between ranks (rank 0: %016llx, rank %d: %016llx): every rank "
                                  "must get the same flags, data and checkpoint", what,
                                  (unsigned long long)h0, r, (unsigned long long)hr);
            }
        free(all);
    }
#endif
    (void)what; (void)hash;
    return 0;
}

int fdpo_dist_allgather_bytes(const void *mine, size_t n, char **all, size_t *len) {
    *all = NULL;
    *len = 0;
#ifdef FDPO_HAVE_MPI
    if (g_size > 1) {
        double t0 = fdpo_now();
        uint64_t mine_n = n, *counts = fdpo_malloc((size_t)g_size * sizeof *counts);
        int rc = MPI_Allgather(&mine_n, 1, MPI_UINT64_T, counts, 1, MPI_UINT64_T, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) { free(counts); return mpi_fail(rc, "allgather"); }
        int *cnt = fdpo_malloc((size_t)g_size * sizeof *cnt), *displ = fdpo_malloc((size_t)g_size * sizeof *displ);
        uint64_t total = 0;
        for (int r = 0; r < g_size; r++) {
            if (total + counts[r] > INT_MAX) {
                free(counts); free(cnt); free(displ);
                return fdpo_error("gathering results over %d ranks: more than %d bytes (split the work in smaller calls)",
                                  g_size, INT_MAX);
            }
            cnt[r] = (int)counts[r];
            displ[r] = (int)total;
            total += counts[r];
        }
        char *buf = fdpo_malloc(total ? (size_t)total : 1);
        rc = MPI_Allgatherv(mine, (int)n, MPI_BYTE, buf, cnt, displ, MPI_BYTE, MPI_COMM_WORLD);
        free(counts); free(cnt); free(displ);
        if (rc != MPI_SUCCESS) { free(buf); return mpi_fail(rc, "allgatherv"); }
        g_comm_seconds += fdpo_now() - t0;
        *all = buf;
        *len = (size_t)total;
        return 0;
    }
#endif
    *all = fdpo_malloc(n ? n : 1);
    if (n) memcpy(*all, mine, n);
    *len = n;
    return 0;
}

int fdpo_dist_all_ok(int rc) {
    if (g_size == 1) return rc ? -1 : 0;
    const char *msg = rc ? fdpo_last_error() : "";
    size_t n = rc ? strlen(msg) + 1 : 0;   /* a failed rank sends its message, NUL included */
    char *all = NULL;
    size_t len = 0;
    char *mine = fdpo_malloc(n + 1);
    mine[0] = rc ? 1 : 0;
    memcpy(mine + 1, msg, n);
    int grc = fdpo_dist_allgather_bytes(mine, rc ? n + 1 : 1, &all, &len);
    free(mine);
    if (grc) return -1;
    /* parts: 1 byte per succeeded rank, 1 + message + NUL per failed one, in rank order */
    int out = 0;
    size_t at = 0;
    for (int r = 0; r < g_size && at < len; r++) {
        if (!all[at]) { at++; continue; }
        const char *m = all + at + 1;
        if (!out && r != g_rank && !rc) fdpo_error("rank %d of %d failed: %s", r, g_size, m);
        out = -1;
        at += 1 + strlen(m) + 1;
    }
    free(all);
    return rc ? -1 : out;
}

int fdpo_dist_barrier(void) {
#ifdef FDPO_HAVE_MPI
    if (g_size > 1) {
        int rc = MPI_Barrier(MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "barrier");
    }
#endif
    return 0;
}

void fdpo_dist_shard(size_t n, size_t *begin, size_t *end) {
    size_t r = (size_t)g_rank, s = (size_t)g_size;
    *begin = n * r / s;
    *end = n * (r + 1) / s;
}
