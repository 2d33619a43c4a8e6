/* Data parallelism over Open MPI (src/dist). Optional at build time: without MPI every
 * function works for one process (rank 0 of 1), so callers need no #ifdefs.
 *
 * A run is distributed when fdpo was started by an MPI launcher (mpirun, srun): then
 * fdpo_dist_init calls MPI_Init_thread (FUNNELED: only the main thread calls MPI; OpenMP
 * threads work inside each rank). Started by hand, fdpo stays a single process and never
 * touches MPI. Errors are returned, not fatal (MPI_ERRORS_RETURN on the world
 * communicator); the CLI ends a failing job with fdpo_dist_abort, so no rank waits forever
 * in a collective for one that gave up. */
#ifndef FDPO_DIST_H
#define FDPO_DIST_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int fdpo_dist_compiled(void);          /* 1 if built with MPI */
int fdpo_dist_init(int *argc, char ***argv);
void fdpo_dist_finalize(void);
int fdpo_dist_rank(void);              /* 0 when not distributed */
int fdpo_dist_size(void);              /* 1 when not distributed */
static inline int fdpo_dist_is_root(void) { return fdpo_dist_rank() == 0; }

/* In-place sums over all ranks, in buckets of at most FDPO_DIST_BUCKET elements so a large
 * gradient never needs a second full-size buffer. No-ops for one process. */
#define FDPO_DIST_BUCKET ((size_t)4 << 20)
int fdpo_dist_sum_f32(float *buf, size_t n);
int fdpo_dist_sum_f64(double *buf, size_t n);
/* rows is an n x width array of which each rank filled its fdpo_dist_shard(n) block of rows;
 * afterwards every rank holds every row, bit for bit as the rank that filled it computed it
 * (-0 included): the same numbers as one process. No-op for one process. */
int fdpo_dist_join_shards_f64(double *rows, size_t n, size_t width);
/* Broadcast n bytes from root to every rank. */
int fdpo_dist_bcast(void *buf, size_t n, int root);
/* Every rank passes the hash of what must agree (config, data, flags); if any differs the
 * call fails on every rank with "WHAT differs between ranks (rank 0: H0, rank K: HK)". */
int fdpo_dist_check_agree(const char *what, uint64_t hash);
/* Every rank names the same place with PATH (FLAG's value, rank 0 alone writing there): what
 * they name is compared (fdpo_path_identity: "x" and "./x" agree, "x" from two working
 * directories does not), not the text. If any rank's differs the call fails on every rank with
 * "FLAG differs between ranks (rank 0: P0 = /abs/p0, rank K: PK = /abs/pk): ...". Collective;
 * 0 for one process. */
int fdpo_dist_check_same_path(const char *flag, const char *path);
/* Under MPI, every --precision bf16 rank takes rank 0's bf16 route (fdpo_bf16_route_pin; a
 * collective every rank joins whatever its --precision). Each rank measures its own route,
 * and ranks on two routes would sum their shares of one job in different orders (and look
 * up different reference caches); where a rank cannot take it (no AVX512-BF16), every rank
 * takes the fallback, which all can. 0 for one process, or when rank 0 runs fp32. Called by
 * fdpo_trainer_open, before dpo's reference log-probs and online rounds' first sampler, and
 * by the jobs split without a trainer (generate and eval: fdpo_generate_ranks; score). */
int fdpo_dist_agree_bf16_route(void);
/* Rank r's share [*begin, *end) of n items split in contiguous, near-equal blocks. */
void fdpo_dist_shard(size_t n, size_t *begin, size_t *end);
/* Is micro-batch i this rank's? (round robin: i % size == rank). Micro-batches keep the
 * boundaries of a single-process run, so each one computes the same numbers on any rank. */
static inline int fdpo_dist_mine(size_t i) { return (int)(i % (size_t)fdpo_dist_size()) == fdpo_dist_rank(); }
/* Every rank's n bytes, concatenated in rank order, to every rank: *all (fdpo_malloc'd, the
 * caller frees it) gets rank 0's bytes, then rank 1's, ...; *len their total. For one process
 * *all is a copy of mine. Fails (on every rank) when the total exceeds INT_MAX bytes. */
int fdpo_dist_allgather_bytes(const void *mine, size_t n, char **all, size_t *len);
/* Did every rank succeed? Each passes its own rc (0 or -1); a failed rank sends its
 * fdpo_last_error message. Returns 0 when all succeeded; otherwise -1 on every rank, the
 * others with "rank R of N failed: MESSAGE" (the lowest failed rank), the failed rank with
 * its own message. So no rank waits in a later collective for one that gave up. */
int fdpo_dist_all_ok(int rc);
/* The gradient allreduce overlapped with backward. grads[0..n) is split in groups (a
 * group = one layer's slices of the per-layer tensors, offset[k], len[k] for k < n_slices);
 * fdpo_dist_overlap_start launches a group's sum (MPI_Iallreduce per contiguous piece)
 * once its gradients are final, and lets the earlier ones progress; _finish starts the
 * groups not started yet, waits for them all and sums, blocking, everything outside the
 * groups. Each
 * element is summed exactly once per step, by the same reduction as fdpo_dist_sum_f32 (for 2
 * ranks a + b either way; see docs/scaling.md for more). */
typedef struct fdpo_dist_overlap fdpo_dist_overlap;
fdpo_dist_overlap *fdpo_dist_overlap_create(size_t n, size_t n_groups);
int fdpo_dist_overlap_group(fdpo_dist_overlap *o, size_t group, size_t n_slices, const size_t *offset, const size_t *len);
int fdpo_dist_overlap_start(fdpo_dist_overlap *o, float *grads, size_t group);
int fdpo_dist_overlap_finish(fdpo_dist_overlap *o, float *grads);
/* How many groups the last _finish found already started during backward (the rest were
 * summed there, blocking): n_groups when the model's backward calls the per-layer hook. */
size_t fdpo_dist_overlap_last_overlapped(const fdpo_dist_overlap *o);
void fdpo_dist_overlap_free(fdpo_dist_overlap *o);
/* The step loops mark the backward of their last micro-batch on this rank: only then are a
 * layer's gradients final for the step (earlier backwards still add to them). */
void fdpo_dist_arm_overlap(int last_backward);
int fdpo_dist_overlap_armed(void);
/* The trainer names the step's overlap (NULL: none) and gradient buffer at the step's start;
 * _finish ends it. Every step loop calls _backward_done after its micro-batches, on every
 * rank, before the blocking sums of its metrics: it starts the groups this rank's backward
 * did not (all of them on a rank without a micro-batch), so every rank posts the same
 * collectives in the same order. A no-op without an overlap. */
void fdpo_dist_overlap_begin_step(fdpo_dist_overlap *o, float *grads);
int fdpo_dist_overlap_backward_done(void);
/* Is micro-batch i of n this rank's last one? */
static inline int fdpo_dist_last_mine(size_t i, size_t n) {
    return fdpo_dist_mine(i) && i + (size_t)fdpo_dist_size() >= n;
}
/* Every rank waits here (no-op for one process). */
int fdpo_dist_barrier(void);
/* The same, asleep between polls (every 10 ms): for ranks that wait long for another (while
 * rank 0 runs a command alone) and leave it their CPU. */
int fdpo_dist_barrier_idle(void);
/* Seconds spent inside collectives since start (for the allreduce share in metrics). */
double fdpo_dist_comm_seconds(void);
/* End every rank of the job with this exit code (MPI_Abort, which Open MPI carries out by
 * killing the job's processes); returns when not distributed. For the CLI's error path
 * only: the library never calls it. */
void fdpo_dist_abort(int code);

#ifdef __cplusplus
}
#endif

#endif
