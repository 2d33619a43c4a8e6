/* fdpo-harness: test-only subcommands that the Python tests drive. Each subsystem adds its
 * own file tests/harness/h_<subsystem>.c and one line in the table in harness.c. */
#ifndef FDPO_HARNESS_H
#define FDPO_HARNESS_H
#include <stddef.h>
typedef int (*harness_fn)(int argc, char **argv); /* argv[0] = subcommand; 0 = ok */
/* the machine's peaks, measured on the current threads. STREAM triad over three arrays of
 * mib MiB (h_triad.c): best / median / worst of `repeats` timed runs in GB/s, 0 or -1
 * after fdpo_error; harness_triad_gbs: the best of 10 (0.0 on failure) */
typedef struct {
    double best_gbs, median_gbs, worst_gbs, init_seconds;
} harness_triad_result;
int harness_triad(size_t mib, int repeats, int huge, harness_triad_result *out);
double harness_triad_gbs(size_t mib);
/* v printed with fmt into buf (32 bytes) as a JSON number, or "null" when !known: a bench
 * summary without a timed step has no rate (inf and a 1e30 sentinel are not JSON) */
const char *harness_json_number(char *buf, const char *fmt, double v, int known);
/* 512-bit fp32 FMA GFLOP/s (h_isa.c) */
double harness_fma_fp32_gflops(void);
#endif
