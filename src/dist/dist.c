/* Data parallelism over Open MPI: see include/fdpo/dist.h. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/gpt2.h"
#ifdef FDPO_HAVE_MPI
#include <mpi.h>
#endif

static int g_rank = 0, g_size = 1, g_active = 0;
static double g_comm_seconds = 0;
static FILE *g_trace;   /* FDPO_DIST_TRACE: this rank's collectives, in the order posted */

#ifdef FDPO_HAVE_MPI
/* One line per collective this rank posts: "OP COUNT" (COUNT 0 where ranks may differ, as
 * in a gather's own part). MPI needs every rank to post the same collectives in the same
 * order, blocking and non-blocking alike; the tests compare the ranks' traces. */
static void trace(const char *op, size_t n) {
    if (g_trace) fprintf(g_trace, "%s %zu\n", op, n);
}
#endif

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
    const char *tp = getenv("FDPO_DIST_TRACE");
    if (tp && *tp && g_size > 1) {
        char path[4096];
        snprintf(path, sizeof path, "%s.%d", tp, g_rank);
        if (!(g_trace = fopen(path, "w"))) return fdpo_error("FDPO_DIST_TRACE: %s: cannot write", path);
    }
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
    if (g_trace) fclose(g_trace);
    g_trace = NULL;
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
        trace("allreduce", k);
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

int fdpo_dist_join_shards_f64(double *rows, size_t n, size_t width) {
    if (g_size < 2) return 0;
    /* -0.0, not 0: (-0.0) + (+0.0) is +0.0, so a row of -0 (a reward program's -0.0) summed
     * with another rank's +0 came out +0; -0.0 is the additive identity of every double */
    size_t begin, end;
    fdpo_dist_shard(n, &begin, &end);
    for (size_t i = 0; i < n * width; i++)
        if (i < begin * width || i >= end * width) rows[i] = -0.0;
    return fdpo_dist_sum_f64(rows, n * width);
}

int fdpo_dist_bcast(void *buf, size_t n, int root) {
#ifdef FDPO_HAVE_MPI
    if (g_size > 1) {
        double t0 = fdpo_now();
        for (size_t off = 0; off < n; off += (size_t)1 << 30) {
            size_t k = n - off < ((size_t)1 << 30) ? n - off : ((size_t)1 << 30);
            trace("bcast", k);
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
        trace("allgather", 1);
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

int fdpo_dist_check_same_path(const char *flag, const char *path) {
    if (g_size < 2) return 0;
    /* "GIVEN\0RESOLVED\0" per rank, in rank order */
    char *id = fdpo_path_identity(path);
    size_t ng = strlen(path) + 1, ni = strlen(id) + 1;
    char *mine = fdpo_malloc(ng + ni), *all = NULL;
    memcpy(mine, path, ng);
    memcpy(mine + ng, id, ni);
    free(id);
    size_t len = 0;
    int rc = fdpo_dist_allgather_bytes(mine, ng + ni, &all, &len);
    free(mine);
    if (rc) return -1;
    const char *given0 = all, *id0 = given0 + strlen(given0) + 1, *at = id0 + strlen(id0) + 1;
    for (int r = 1; r < g_size && at < all + len; r++) {
        const char *given = at, *idr = given + strlen(given) + 1;
        at = idr + strlen(idr) + 1;
        if (strcmp(idr, id0)) {
            rc = fdpo_error("%s differs between ranks (rank 0: %s = %s, rank %d: %s = %s): every rank must name the "
                            "same directory (rank 0 alone writes there)", flag, given0, id0, r, given, idr);
            break;
        }
    }
    free(all);
    return rc;
}

int fdpo_dist_allgather_bytes(const void *mine, size_t n, char **all, size_t *len) {
    *all = NULL;
    *len = 0;
#ifdef FDPO_HAVE_MPI
    if (g_size > 1) {
        double t0 = fdpo_now();
        uint64_t mine_n = n, *counts = fdpo_malloc((size_t)g_size * sizeof *counts);
        trace("allgather", 1);
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
        trace("allgatherv", 0);
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
        trace("barrier", 0);
        int rc = MPI_Barrier(MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "barrier");
    }
#endif
    return 0;
}

int fdpo_dist_barrier_idle(void) {
#ifdef FDPO_HAVE_MPI
    if (g_size > 1) {
        trace("barrier", 0);
        MPI_Request req;
        int rc = MPI_Ibarrier(MPI_COMM_WORLD, &req), done = 0;
        while (rc == MPI_SUCCESS) {
            rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
            if (rc != MPI_SUCCESS || done) break;
            nanosleep(&(struct timespec){0, 10000000}, NULL);   /* 10 ms: a blocking barrier spins a core */
        }
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

/* ---- the gradient allreduce overlapped with backward ---- */

typedef struct { size_t offset, len; } slice;

struct fdpo_dist_overlap {
    size_t n, n_groups;
    slice **slices;          /* [n_groups][n_slices[g]]: contiguous, each at most FDPO_DIST_BUCKET */
    size_t *n_slices;
    slice *rest;             /* everything outside the groups */
    size_t n_rest;
    int rest_built;
    int *started;            /* this step */
    size_t last_overlapped;  /* groups the last finished step had started during backward */
    int counted;             /* this step's last_overlapped is set (by _backward_done) */
#ifdef FDPO_HAVE_MPI
    MPI_Request *req;        /* one per slice of every group, in group order */
    size_t n_req;
    size_t *first_req;       /* [n_groups]: the group's first request */
#endif
};

static int g_overlap_armed;
void fdpo_dist_arm_overlap(int last_backward) { g_overlap_armed = last_backward; }
int fdpo_dist_overlap_armed(void) { return g_overlap_armed; }

static fdpo_dist_overlap *g_step_overlap;   /* the step's, between _begin_step and _finish */
static float *g_step_grads;

fdpo_dist_overlap *fdpo_dist_overlap_create(size_t n, size_t n_groups) {
    fdpo_dist_overlap *o = fdpo_calloc(1, sizeof *o);
    o->n = n; o->n_groups = n_groups;
    o->slices = fdpo_calloc(n_groups ? n_groups : 1, sizeof *o->slices);
    o->n_slices = fdpo_calloc(n_groups ? n_groups : 1, sizeof *o->n_slices);
    o->started = fdpo_calloc(n_groups ? n_groups : 1, sizeof *o->started);
#ifdef FDPO_HAVE_MPI
    o->first_req = fdpo_calloc(n_groups ? n_groups : 1, sizeof *o->first_req);
#endif
    return o;
}

/* Open MPI's reductions take contiguous buffers of a predefined type (MPI_SUM on a derived
 * datatype fails with MPI_ERR_OP), so a group is a list of contiguous pieces */
static size_t push_pieces(slice **v, size_t k, size_t offset, size_t len) {
    for (size_t at = 0; at < len; at += FDPO_DIST_BUCKET) {
        *v = fdpo_realloc(*v, (k + 1) * sizeof **v);
        (*v)[k++] = (slice){offset + at, len - at < FDPO_DIST_BUCKET ? len - at : FDPO_DIST_BUCKET};
    }
    return k;
}

int fdpo_dist_overlap_group(fdpo_dist_overlap *o, size_t group, size_t n_slices, const size_t *offset, const size_t *len) {
    if (group >= o->n_groups) return fdpo_error("overlap group %zu out of %zu", group, o->n_groups);
    size_t k = 0;
    for (size_t i = 0; i < n_slices; i++) {
        if (offset[i] + len[i] > o->n) return fdpo_error("overlap group %zu: slice beyond the gradient", group);
        k = push_pieces(&o->slices[group], k, offset[i], len[i]);
    }
    o->n_slices[group] = k;
    return 0;
}

static int by_offset(const void *a, const void *b) {
    const slice *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* the complement of the groups' slices in [0, n); and the request table */
static int build_rest(fdpo_dist_overlap *o) {
    size_t total = 0, k = 0, r = 0, at = 0;
    for (size_t g = 0; g < o->n_groups; g++) total += o->n_slices[g];
    slice *all = fdpo_malloc((total ? total : 1) * sizeof *all);
    for (size_t g = 0; g < o->n_groups; g++)
        for (size_t i = 0; i < o->n_slices[g]; i++) all[k++] = o->slices[g][i];
    qsort(all, k, sizeof *all, by_offset);
    for (size_t i = 0; i < k; i++) {
        if (all[i].offset < at) { free(all); return fdpo_error("--allreduce-overlap: gradient groups overlap"); }
        if (all[i].offset > at) r = push_pieces(&o->rest, r, at, all[i].offset - at);
        at = all[i].offset + all[i].len;
    }
    if (at < o->n) r = push_pieces(&o->rest, r, at, o->n - at);
    o->n_rest = r;
    free(all);
#ifdef FDPO_HAVE_MPI
    o->req = fdpo_malloc((total ? total : 1) * sizeof *o->req);
    for (size_t i = 0; i < total; i++) o->req[i] = MPI_REQUEST_NULL;
    o->n_req = total;
    for (size_t g = 0, q = 0; g < o->n_groups; q += o->n_slices[g], g++) o->first_req[g] = q;
#endif
    o->rest_built = 1;
    return 0;
}

int fdpo_dist_overlap_start(fdpo_dist_overlap *o, float *grads, size_t group) {
    if (!o || group >= o->n_groups || o->started[group]) return 0;
    if (!o->rest_built && build_rest(o)) return -1;
    o->started[group] = 1;
#ifdef FDPO_HAVE_MPI
    if (g_size > 1) {
        double t0 = fdpo_now();
        for (size_t i = 0; i < o->n_slices[group]; i++) {
            const slice *x = &o->slices[group][i];
            trace("iallreduce", x->len);
            int rc = MPI_Iallreduce(MPI_IN_PLACE, grads + x->offset, (int)x->len, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                                    &o->req[o->first_req[group] + i]);
            if (rc != MPI_SUCCESS) return mpi_fail(rc, "iallreduce");
        }
        /* Open MPI moves a non-blocking collective on only inside MPI calls: let the pieces
         * launched so far progress while this rank goes on with the layers below */
        int done = 0, rc = MPI_Testall((int)o->n_req, o->req, &done, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "testall");
        g_comm_seconds += fdpo_now() - t0;
    }
#endif
    (void)grads;
    return 0;
}

static size_t count_started(const fdpo_dist_overlap *o) {
    size_t n = 0;
    for (size_t g = 0; g < o->n_groups; g++) n += o->started[g] != 0;
    return n;
}

/* the groups not started yet, from the last down (the order backward starts them in) */
static int start_missing(fdpo_dist_overlap *o, float *grads) {
    int rc = 0;
    for (size_t g = o->n_groups; g-- > 0 && !rc;)
        if (!o->started[g]) rc = fdpo_dist_overlap_start(o, grads, g);
    return rc;
}

void fdpo_dist_overlap_begin_step(fdpo_dist_overlap *o, float *grads) {
    g_step_overlap = o;
    g_step_grads = grads;
}

int fdpo_dist_overlap_backward_done(void) {
    g_overlap_armed = 0;
    fdpo_dist_overlap *o = g_step_overlap;
    if (!o || g_size < 2) return 0;
    /* Backward starts the groups from the last layer down, so what this rank started is a
     * run from the top; the groups it never reached (no micro-batch this step, none with
     * tokens, a family without the per-layer hook) start now, in the same descending order.
     * Every rank calls this at the same point of the step, before the blocking sums of the
     * step's metrics, so all post the same non-blocking sums in one order and before those:
     * MPI asks for one order of blocking and non-blocking collectives on a communicator. */
    o->last_overlapped = count_started(o);
    o->counted = 1;
    return start_missing(o, g_step_grads);
}

int fdpo_dist_overlap_finish(fdpo_dist_overlap *o, float *grads) {
    g_overlap_armed = 0;
    if (!o->rest_built && build_rest(o)) return -1;
    if (!o->counted) o->last_overlapped = count_started(o);
    o->counted = 0;
    int rc = 0;
#ifdef FDPO_HAVE_MPI
    if (g_size > 1) {
        /* the groups not started yet, as _backward_done starts them (a caller that did not call
         * it: the same order on every rank still) */
        rc = start_missing(o, grads);
        double t0 = fdpo_now();
        int mrc = rc ? MPI_SUCCESS : MPI_Waitall((int)o->n_req, o->req, MPI_STATUSES_IGNORE);
        if (mrc != MPI_SUCCESS) rc = mpi_fail(mrc, "waitall");
        /* then the rest (embeddings, final norm, score head) */
        for (size_t i = 0; i < o->n_rest && !rc; i++) {
            trace("allreduce", o->rest[i].len);
            mrc = MPI_Allreduce(MPI_IN_PLACE, grads + o->rest[i].offset, (int)o->rest[i].len, MPI_FLOAT, MPI_SUM,
                                MPI_COMM_WORLD);
            if (mrc != MPI_SUCCESS) rc = mpi_fail(mrc, "allreduce");
        }
        g_comm_seconds += fdpo_now() - t0;
    }
#endif
    (void)grads;
    memset(o->started, 0, (o->n_groups ? o->n_groups : 1) * sizeof *o->started);
    if (g_step_overlap == o) g_step_overlap = NULL;
    return rc;
}

size_t fdpo_dist_overlap_last_overlapped(const fdpo_dist_overlap *o) { return o ? o->last_overlapped : 0; }

void fdpo_dist_overlap_free(fdpo_dist_overlap *o) {
    if (!o) return;
    if (g_step_overlap == o) g_step_overlap = NULL;
#ifdef FDPO_HAVE_MPI
    free(o->req); free(o->first_req);
#endif
    for (size_t g = 0; g < o->n_groups; g++) free(o->slices[g]);
    free(o->slices); free(o->n_slices); free(o->started); free(o->rest);
    free(o);
}

int fdpo_dist_agree_bf16_route(void) {
    if (fdpo_dist_size() < 2) return 0;
    /* the same collectives on every rank whatever its --precision (a rank that skipped them
     * left the others waiting: the ranks' differing flags are refused afterwards) */
    static const char *const names[] = {"dpbf16", "fp32", "fallback"};
    const int bf16 = fdpo_get_precision() == FDPO_PRECISION_BF16;
    const char *mine = bf16 ? fdpo_bf16_route() : NULL;
    unsigned char code = 3;   /* rank 0 runs fp32: nothing to agree */
    for (unsigned char i = 0; mine && i < 3; i++) if (!strcmp(mine, names[i])) code = i;
    if (fdpo_dist_bcast(&code, 1, 0)) return -1;
    int rc = bf16 && code < 3 && strcmp(mine, names[code]) ? fdpo_bf16_route_pin(names[code]) : 0;
    if (rc < 0) return -1;
    /* a rank without AVX512-BF16 cannot take vdpbf16ps or the by-shape route: then every
     * rank takes the fallback, which every CPU can (the same bits as the widening routes) */
    double able = rc == 0;
    if (fdpo_dist_sum_f64(&able, 1)) return -1;
    if (bf16 && code < 3 && able < (double)fdpo_dist_size()) {
        if (fdpo_bf16_route_pin("fallback") < 0) return -1;
        static int warned;   /* once: eval agrees again for each policy */
        if (fdpo_dist_rank() == 0 && !warned++)
            fdpo_log(FDPO_LOG_WARN, "bf16: a rank has no AVX512-BF16 (or FDPO_FORCE_BF16_FALLBACK=1): every rank "
                     "multiplies on the fallback route");
    }
    return 0;
}
