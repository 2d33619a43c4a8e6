/* libFuzzer: the lab's problem CSV (fdpo_lab_read_csv), with or without a prompt column. The reader takes a path, so the
 * input goes into an anonymous memory file (memfd) and is read back through /proc/self/fd:
 * nothing touches the disk. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include "fdpo/lab.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = memfd_create("fuzz.csv", 0);
    if (fd < 0) abort();
    if (size && write(fd, data, size) != (ssize_t)size) abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    fdpo_lab_problem p;
    double renorm;
    if (fdpo_lab_read_csv(path, &p, &renorm) == 0) {
        if (p.n == 0) abort();
        /* every column of an accepted file is finite; pi_ref is > 0 after renormalisation */
        for (size_t i = 0; i < p.n; i++) {
            if (!isfinite(p.pi_ref[i]) || !(p.pi_ref[i] > 0) || !isfinite(p.reward[i])) abort();
            if ((p.reward_hat && !isfinite(p.reward_hat[i])) || (p.length && !isfinite(p.length[i]))) abort();
        }
        /* a prompt column: the blocks cover every row, none empty, pi_ref sums to 1 in each */
        if (p.prompt_offset) {
            if (p.n_prompts < 1 || p.prompt_offset[0] != 0 || p.prompt_offset[p.n_prompts] != p.n) abort();
            for (size_t x = 0; x < p.n_prompts; x++) {
                if (p.prompt_offset[x + 1] <= p.prompt_offset[x]) abort();
                double s = 0;
                for (size_t i = p.prompt_offset[x]; i < p.prompt_offset[x + 1]; i++) s += p.pi_ref[i];
                if (!(fabs(s - 1) < 1e-6)) abort();
            }
        }
        fdpo_lab_problem_free(&p);
    }
    close(fd);
    return 0;
}
