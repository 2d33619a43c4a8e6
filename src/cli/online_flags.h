/* The flags of `fdpo online`'s sampling, scoring and rounds, shared with the commands whose
 * stages are online f-DPO runs (sacpo):
 *
 *   online_flags v; fdpo_online_opts o;
 *   n = online_flags_add(&v, &o, flags, n);          --data (prompts), --reward, --rounds, --n, ...
 *   flags_parse(...);
 *   online_flags_finish(&v, &o, seed);               text flags -> o (sample config, pairs, ref update)
 *   fdpo_online_round_dpo_opts(&o.dpo);              what every round's f-DPO run needs (library) */
#ifndef FDPO_CLI_ONLINE_FLAGS_H
#define FDPO_CLI_ONLINE_FLAGS_H
#include <stddef.h>
#include <stdint.h>
#include "cli/flags.h"
#include "fdpo/online.h"

#define ONLINE_FLAGS_N 16
typedef struct {
    const char *ref_update, *pairs_mode, *ref_logps, *stop;
    double temperature, top_p, timeout;
    long top_k, max_new;
} online_flags;

/* Appends the ONLINE_FLAGS_N flags at f + n; returns the new count. */
size_t online_flags_add(online_flags *v, fdpo_online_opts *o, fdpo_flag *f, size_t n);
/* The parsed text flags -> o (seed: the sampling seed); errors name the flag. flags[0..n) is the
 * command's parsed table: a flag given that the run would not use is refused (--bt-scale without
 * --pairing all-bt, --reward-timeout without a cmd: spec among specs[0..n_specs)). */
int online_flags_finish(const online_flags *v, const fdpo_flag *flags, size_t n, fdpo_online_opts *o, uint64_t seed,
                        const char *const *specs, size_t n_specs);
#endif
