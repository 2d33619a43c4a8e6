/* How long an idle OpenMP thread spins before it sleeps, chosen by the fdpo programs (the
 * fdpo command and fdpo-harness, the benches' fdpo side), never by the library.
 *
 * Why: every kernel is an OpenMP region (and oneDNN's GEMMs are GOMP regions too), so a
 * training step passes a few hundred fork/join barriers. libgomp's default, with
 * OMP_WAIT_POLICY unset, spins 300000 iterations (milliseconds) before sleeping. When the
 * machine is shared, a waiting thread then burns the time slice its partner needs:
 * measured on the 2-core development box under load, a small-model training step took
 * 2.0-2.5 s at 2 threads with the default and 0.08-0.13 s with a short spin
 * (docs/model.md#threads). A short spin keeps the quick hand-off between back-to-back
 * regions on an idle machine.
 *
 * libgomp reads its environment once, in its constructor, before main(); setting it from
 * .preinit_array does not work either (libc resets environ after it). So main() calls
 * fdpo_omp_spin_reexec(argv) first: when neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is
 * set, it sets GOMP_SPINCOUNT and re-executes the program (same pid, before MPI or any
 * file is touched; about a millisecond). A user's setting is left alone; if the exec fails
 * the program simply goes on with libgomp's default.
 *
 * No re-exec when the user pins threads (OMP_PROC_BIND other than false, OMP_PLACES or
 * GOMP_CPU_AFFINITY; libgomp's own answer: omp_get_proc_bind() is not false, the test
 * src/core/runtime.c makes too): libgomp's constructor has then already bound this thread
 * to its first place, and an exec keeps that one-CPU mask, so the new program saw a single
 * CPU and ran every thread on it (wave 20: OMP_PROC_BIND=true made a 124M DPO step 1.9 s
 * instead of 1.0, the small model's 37 ms instead of 20). A user who pins threads keeps
 * libgomp's default wait. */
#ifndef FDPO_CLI_OMP_SPIN_H
#define FDPO_CLI_OMP_SPIN_H
#include <omp.h>
#include <stdlib.h>
#include <unistd.h>

#define FDPO_GOMP_SPINCOUNT "1000" /* iterations of libgomp's pause loop: tens of microseconds */

static inline void fdpo_omp_spin_reexec(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT") || omp_get_proc_bind() != omp_proc_bind_false) return;
    if (setenv("GOMP_SPINCOUNT", FDPO_GOMP_SPINCOUNT, 0) != 0) return;
    execv("/proc/self/exe", argv); /* returns only on failure: go on with the default */
}
#endif
