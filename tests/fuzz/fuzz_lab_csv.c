/* libFuzzer: the lab's problem CSV (fdpo_lab_read_csv). The reader takes a path, so the
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
        fdpo_lab_problem_free(&p);
    }
    close(fd);
    return 0;
}
