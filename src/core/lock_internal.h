/* Helpers of lock.c that the checkpoint swap (src/train/checkpoint_dir.c) shares, so that a
 * directory's emptiness and a lock holder's text are decided and worded in one place. */
#ifndef FDPO_CORE_LOCK_INTERNAL_H
#define FDPO_CORE_LOCK_INTERNAL_H
#include <stddef.h>

/* 1: dir is a directory with an entry in it (other than . and ..); 0: an empty one; -1: no
 * directory, or one that cannot be read */
int fdpo_dir_has_entries(const char *dir);
/* "pid N" for a holder's pid > 0, "another process" where its lock file records none (the
 * value fdpo_dir_lock_holder gives) */
void fdpo_lock_holder_text(long pid, char *out, size_t n);

#endif
