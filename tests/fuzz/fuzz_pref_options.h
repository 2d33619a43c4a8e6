/* The preference readers' options from a fuzz input's first byte (truncation, bad-record and
 * long-record policies): one decoding for fuzz_pref.c and fuzz_unpaired.c, so both readers
 * see the same option space. */
#ifndef FDPO_FUZZ_PREF_OPTIONS_H
#define FDPO_FUZZ_PREF_OPTIONS_H
#include "fdpo/pref.h"

static inline fdpo_pref_options fuzz_pref_options(unsigned k) {
    static const size_t max_len[4] = {0, 2, 16, 64};
    fdpo_pref_options opt = {0};
    opt.max_length = max_len[k & 3];
    opt.max_prompt_length = opt.max_length && (k & 4) ? opt.max_length / 2 : 0;
    opt.on_bad = (k & 8) ? FDPO_PREF_SKIP : FDPO_PREF_ERROR;
    opt.on_long = (fdpo_pref_on_long)((k >> 4) % 3);
    return opt;
}
#endif
