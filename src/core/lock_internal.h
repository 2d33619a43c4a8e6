/* Helpers of lock.c that the checkpoint swap (src/train/checkpoint_dir.c) and files.c share,
 * so that a directory's emptiness and a lock holder's text are decided and worded in one place. */
#ifndef FDPO_CORE_LOCK_INTERNAL_H
#define FDPO_CORE_LOCK_INTERNAL_H
#include <stddef.h>

/* 1: dir is a directory with an entry in it (other than . and ..); 0: an empty one; -1: no
 * directory, or one that cannot be read */
int fdpo_dir_has_entries(const char *dir);
/* "pid N" for a holder's pid > 0, "another process" where its lock file records none (the
 * value fdpo_dir_lock_holder gives) */
void fdpo_lock_holder_text(long pid, char *out, size_t n);
/* Whether a process of that pid runs (EPERM: another user's) */
int fdpo_pid_alive(long pid);
/* The commit record fdpo_atomic_commit_all writes beside each file of a set (FINAL + this
 * suffix) while it renames them; fdpo_commit_record_finish(record) completes the set of a
 * killed writer (files.c says how) and removes its records: 1 done, 0 nothing to do (no
 * record, not one of fdpo's, or its writer still runs). Called before stale temp files are
 * removed (lock.c), since the temp files a record names are the set's new files. */
#define FDPO_COMMIT_SUFFIX ".fdpo-commit"
int fdpo_commit_record_finish(const char *record);

#endif
