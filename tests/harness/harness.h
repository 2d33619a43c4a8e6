/* fdpo-harness: test-only subcommands that the Python tests drive. Each subsystem adds its
 * own file tests/harness/h_<subsystem>.c and one line in the table in harness.c. */
#ifndef FDPO_HARNESS_H
#define FDPO_HARNESS_H
#include <stddef.h>
typedef int (*harness_fn)(int argc, char **argv); /* argv[0] = subcommand; 0 = ok */
/* the machine's peaks, measured on the current threads: STREAM triad GB/s over three
 * arrays of mib MiB (h_model.c), 512-bit fp32 FMA GFLOP/s (h_isa.c) */
double harness_triad_gbs(size_t mib);
double harness_fma_fp32_gflops(void);
#endif
