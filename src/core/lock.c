/* Run-directory locks and stale temp-file cleanup.
 *
 * A run owns its --out directory for its whole life: an exclusive flock on DIR.lock (a file
 * BESIDE DIR, because DIR itself is replaced by a rename on every checkpoint swap) keeps a
 * second run out. The lock file holds the owner's pid so the refusal can name it. The kernel
 * drops the lock when the process dies, so a killed run never leaves a lock behind. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "fdpo/core.h"
#include "core/lock_internal.h"

/* Locks this process holds (a run holds one; a handful is plenty). */
#define MAX_HELD 8
/* made: DIR did not exist when locked; made_parents: the directories above DIR.lock that
 * take_lock's own mkdir() created, outermost first (n_made_parents of them) */
static struct {
    char *dir; char *flag; int fd; pid_t owner; int made;
    char **made_parents; size_t n_made_parents;
} g_held[MAX_HELD];

static void free_made_parents(int i) {
    for (size_t k = 0; k < g_held[i].n_made_parents; k++) free(g_held[i].made_parents[k]);
    free(g_held[i].made_parents);
    g_held[i].made_parents = NULL;
    g_held[i].n_made_parents = 0;
}

static char *lock_path(const char *dir) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    char *p = fdpo_malloc(n + 6);
    memcpy(p, dir, n);
    memcpy(p + n, ".lock", 6);
    return p;
}

static int held_index(const char *path) {
    /* a forked child inherits the table but not the ownership: it must lock on its own */
    for (int i = 0; i < MAX_HELD; i++)
        if (g_held[i].dir && g_held[i].owner == getpid() && !strcmp(g_held[i].dir, path)) return i;
    return -1;
}

/* Whether the lock file lp ("DIR.lock") guards something: DIR is a directory with files in
 * it. Beside nothing, a file (an output file's lock) or an empty directory (a run that failed
 * before it made DIR or saved anything there) it guards nothing once released. */
static int guards_something(const char *lp) {
    char *target = fdpo_strdup(lp);
    target[strlen(target) - 5] = 0;   /* drop ".lock" */
    int full = fdpo_dir_has_entries(target) > 0;
    free(target);
    return full;
}

int fdpo_dir_has_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    int full = 0;
    while (!full && (e = readdir(d))) full = strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return full;
}

/* The directories fdpo_mkdir_p_made made, removed innermost first while they are empty. */
static void remove_made(char *const *made, size_t n) {
    for (size_t k = n; k-- > 0;)
        if (rmdir(made[k]) != 0) break;
}

/* ... and freed */
static void unmake_parents(char **made, size_t n) {
    remove_made(made, n);
    for (size_t k = 0; k < n; k++) free(made[k]);
    free(made);
}

/* A held lock that guards nothing (a run that failed at its start): its file is removed, and
 * DIR too if this run made it and it is still empty (rmdir removes only an empty one), so a
 * failed start leaves nothing behind. Called while the lock is still held. */
static void remove_if_unused(int i) {
    if (guards_something(g_held[i].dir)) return;
    if (g_held[i].made) {
        char *target = fdpo_strdup(g_held[i].dir);
        target[strlen(target) - 5] = 0;   /* drop ".lock" */
        (void)rmdir(target);
        free(target);
    }
    unlink(g_held[i].dir);
    remove_made(g_held[i].made_parents, g_held[i].n_made_parents);   /* and the directories made for it */
}

/* At exit (or at the end by a signal), the locks a failed run did not release (remove_if_unused). */
void fdpo_locks_release_unused(void) {
    for (int i = 0; i < MAX_HELD; i++)
        if (g_held[i].dir && g_held[i].owner == getpid()) remove_if_unused(i);
}
static void release_at_exit(void) { fdpo_locks_release_unused(); }

static int pid_alive(long pid) { return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM); }

/* The pid a held lock file records: > 0, 0 for none (an empty file), -1 for text that is no
 * pid (another tool's lock). Its holder writes it just after its flock succeeds, so a run
 * refused in between read an empty file ("pid 0 holds": two ranks of one mpirun racing for
 * one OUT) or the pid of the file's last, finished holder: re-read for a moment while it names
 * no live process. After that, the pid recorded (a holder on another host of a shared file
 * system is no local process) or 0. */
static long recorded_pid(int fd) {
    long pid = 0;
    for (int tries = 0; tries < 50; tries++) {   /* 50 x 2 ms: a holder that has the lock is microseconds from writing */
        char buf[32] = "", *end;
        ssize_t got = pread(fd, buf, sizeof buf - 1, 0);
        buf[got > 0 ? got : 0] = 0;
        pid = strtol(buf, &end, 10);
        if (pid <= 0 || end == buf || (*end != '\n' && *end != 0)) pid = got > 0 ? -1 : 0;
        if (pid < 0 || pid_alive(pid)) break;
        nanosleep(&(struct timespec){0, 2000000}, NULL);
    }
    return pid;
}

void fdpo_lock_holder_text(long pid, char *out, size_t n) {
    if (pid > 0) snprintf(out, n, "pid %ld", pid);
    else snprintf(out, n, "another process");
}

/* The lock file at path, opened or made: never through a symbolic link (the link's target, a
 * file the user never named, was truncated to our pid and, for an output file's lock,
 * removed at the end), and only a regular file (O_NONBLOCK: a FIFO must not block the open) */
static int open_lock_file(const char *path, const char *flag, const char *dir) {
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0666);
    if (fd < 0) {
        int e = errno;
        struct stat st;
        if (e == ELOOP && lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
            return fdpo_error("%s %s: its lock file %s is a symbolic link; fdpo makes that file itself (it would "
                              "write through the link): remove the link or choose another %s", flag, dir, path, flag);
        return fdpo_error("%s %s: cannot create lock file %s: %s", flag, dir, path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fdpo_error("%s %s: its lock file %s exists and is not a regular file; move it away or choose another %s",
                          flag, dir, path, flag);
    }
    return fd;
}

/* What take_lock writes (a pid and a newline), or an empty file (made, its pid not written
 * yet, or another tool's flock file); anything else is a user's file at the lock's name */
static int holds_a_pid_or_nothing(int fd) {
    char buf[32];
    ssize_t got = pread(fd, buf, sizeof buf, 0);
    if (got <= 0) return got == 0;
    if (got == (ssize_t)sizeof buf) return 0;
    ssize_t k = 0;
    while (k < got && buf[k] >= '0' && buf[k] <= '9') k++;
    return k > 0 && (k == got || (k == got - 1 && buf[k] == '\n'));
}

static int take_lock(const char *dir, const char *flag) {
    char *path = lock_path(dir);
    if (held_index(path) >= 0) { free(path); return 0; }
    struct stat before;
    const int made = stat(dir, &before) != 0;
    int slot;
    for (slot = 0; slot < MAX_HELD && g_held[slot].dir && g_held[slot].owner == getpid(); slot++) {}
    if (slot == MAX_HELD) { free(path); return fdpo_error("%s %s: too many run directories locked by one process", flag, dir); }
    char *parent = fdpo_strdup(path), **made_parents = NULL;
    size_t n_made_parents = 0;
    char *slash = strrchr(parent, '/');
    int fd = -1;
    if (slash && slash != parent) {
        *slash = 0;
        if (fdpo_mkdir_p_made(parent, &made_parents, &n_made_parents)) {
            free(parent);
            fdpo_error_context("%s", flag);
            goto fail;
        }
    }
    free(parent);
    fd = open_lock_file(path, flag, dir);
    if (fd < 0) goto fail;
    int busy = flock(fd, LOCK_EX | LOCK_NB) != 0;
    /* an output file's lock is removed by its holder when done (fdpo_out_file_release): if
     * that happened between our open and our flock, we hold a lock on a name no longer in the
     * directory; open the path again (a handful of tries: each means another run finished) */
    for (int tries = 0; !busy && tries < 8; tries++) {
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev) break;
        close(fd);
        fd = open_lock_file(path, flag, dir);
        if (fd < 0) goto fail;
        busy = flock(fd, LOCK_EX | LOCK_NB) != 0;
    }
    if (busy) {
        int e = errno;
        if (e == EWOULDBLOCK) {
            char who[48];
            fdpo_lock_holder_text(recorded_pid(fd), who, sizeof who);
            fdpo_error("%s %s: in use by another run (%s holds %s); wait for it or choose another %s",
                       flag, dir, who, path, flag);
        } else
            fdpo_error("%s %s: cannot lock %s: %s", flag, dir, path, strerror(e));
        goto fail;
    }
    /* ours now, so its text is stable: an fdpo lock holds a pid line, or nothing yet */
    if (!holds_a_pid_or_nothing(fd)) {
        fdpo_error("%s %s: %s exists and is not a lock file of fdpo's (it holds something other than a process id): "
                   "taking the lock would overwrite it; move it away or choose another %s", flag, dir, path, flag);
        goto fail;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    /* the pid over the old text, then the rest cut: the file is never empty in between (a run
     * refused meanwhile reads the old pid or ours; recorded_pid waits for a live one) */
    if (pwrite(fd, pid, (size_t)n, 0) != n || ftruncate(fd, n) != 0) {
        int e = errno;
        fdpo_error("%s %s: cannot write lock file %s: %s", flag, dir, path, strerror(e));
        /* we hold it, so nobody else is using it: an empty lock file (a full disk) guards
         * nothing; removed while held, as remove_if_unused does (a regular file only: a FIFO
         * or device of that name is not ours to remove) */
        struct stat lst;
        if (fstat(fd, &lst) == 0 && S_ISREG(lst.st_mode)) unlink(path);
        goto fail;
    }
    if (g_held[slot].dir) { free(g_held[slot].dir); free(g_held[slot].flag); free_made_parents(slot); }   /* the parent's entry, in a forked child */
    g_held[slot].dir = path;
    g_held[slot].flag = fdpo_strdup(flag);
    g_held[slot].fd = fd;
    g_held[slot].owner = getpid();
    g_held[slot].made = made;
    g_held[slot].made_parents = made_parents;
    g_held[slot].n_made_parents = n_made_parents;
    static int at_exit;
    if (!at_exit) at_exit = atexit(release_at_exit) == 0;
    return 0;
fail:
    if (fd >= 0) close(fd);
    free(path);
    unmake_parents(made_parents, n_made_parents);   /* a lock file we made in them stays: it may be another run's */
    return -1;
}

/* A symbolic link as OUT: every save renames a new directory (or file) over OUT's path, which
 * replaces the link itself, and the lock would be LINK.lock, not the target's: a run on the
 * target and a run on the link would both hold "their" lock and write into one place. */
static int refuse_symlink(const char *path, const char *flag, const char *what) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    char *p = fdpo_malloc(n + 1);
    memcpy(p, path, n);
    p[n] = 0;
    struct stat st;
    int rc = 0;
    if (lstat(p, &st) == 0 && S_ISLNK(st.st_mode)) {
        char target[512];
        ssize_t k = readlink(p, target, sizeof target - 1);
        target[k > 0 ? k : 0] = 0;
        rc = fdpo_error("%s %s: is a symbolic link (to %s); give the %s itself (each save renames a new %s over this "
                        "path, which would replace the link, and a run on the link and one on its target would not "
                        "see each other's lock)", flag, path, target, what, what);
    }
    free(p);
    return rc;
}

/* Who holds the lock file at path, found with a shared flock probe of our own (dropped at
 * once): 0 when path is no regular file or nobody else holds it, else the pid it records
 * (fdpo's locks record one), -1 for a held file that records none (another tool's lock).
 * O_NONBLOCK: a FIFO of that name must not block the open. */
static long lock_file_holder(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return 0;
    struct stat st;
    long who = 0;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
        long pid = recorded_pid(fd);
        who = pid > 0 ? pid : -1;
    }
    close(fd);   /* drops our shared lock, if we got one */
    return who;
}

/* An existing file that a running process holds a flock on (another run's DIR.lock or
 * FILE.lock): writing over it (a rename) would drop that run's claim on its output */
static int refuse_held_lock_file(const char *path, const char *flag) {
    long who = lock_file_holder(path);
    if (!who) return 0;
    char holder[48];
    fdpo_lock_holder_text(who, holder, sizeof holder);
    return fdpo_error("%s %s: is the lock file of a running run (%s holds it); choose another %s", flag, path, holder,
                      flag);
}

/* The lock this process holds on the lock file lp names: by name, or by the file itself
 * ("x.lock" and "./x.lock"); -1 if none. */
static int held_same_file(const char *lp) {
    int i = held_index(lp);
    struct stat a, b;
    if (i >= 0 || stat(lp, &a) != 0) return i;
    for (int j = 0; j < MAX_HELD; j++)
        if (g_held[j].dir && g_held[j].owner == getpid() && fstat(g_held[j].fd, &b) == 0 && a.st_ino == b.st_ino &&
            a.st_dev == b.st_dev)
            return j;
    return -1;
}

/* fdpo_path_absolute: dir as an absolute path without "." and "..": its deepest existing part resolved
 * (realpath: links followed; a lock beside a link's path is beside its target's too, and OUT
 * itself is no link), the parts that do not exist yet appended and folded by hand */
char *fdpo_path_absolute(const char *dir) {
    char *p = fdpo_strdup(dir), *real = NULL;
    size_t n = strlen(p), cut = n;
    for (;;) {
        while (cut > 1 && p[cut - 1] == '/') cut--;
        p[cut] = 0;
        if ((real = realpath(cut ? p : ".", NULL))) break;
        if (cut == 0) { free(p); return fdpo_strdup(dir); }   /* no working directory: as given */
        char *slash = strrchr(p, '/');
        if (!slash) { cut = 0; continue; }   /* relative: from the working directory */
        cut = slash == p ? 1 : (size_t)(slash - p);
    }
    /* the rest of dir after the resolved part, one component at a time */
    fdpo_strv parts = {0};
    char *abs = real, *rest = fdpo_strdup(dir + (cut < strlen(dir) ? cut : strlen(dir))), *save = NULL;
    for (char *c = strtok_r(rest, "/", &save); c; c = strtok_r(NULL, "/", &save)) fdpo_strv_push(&parts, c);
    for (size_t i = 0; i < parts.n; i++) {
        if (!strcmp(parts.v[i], ".")) continue;
        if (!strcmp(parts.v[i], "..")) {
            char *slash = strrchr(abs, '/');
            if (slash && slash != abs) *slash = 0; else strcpy(abs, "/");
            continue;
        }
        char *joined = fdpo_path_join(abs, parts.v[i]);
        free(abs);
        abs = joined;
    }
    fdpo_strv_free(&parts);
    free(rest); free(p);
    return abs;
}

/* Who holds X.lock of the directory X whose swap name (X.tmp, X.old) is the first n bytes of
 * path: another process's pid (-1: a holder that records none), with own this process's
 * pid when it holds it; 0 when that is no swap name or no run holds X */
static long swap_name_holder(const char *path, size_t n, int own) {
    if (n < 5 || path[n - 5] == '/' || (strncmp(path + n - 4, ".tmp", 4) && strncmp(path + n - 4, ".old", 4)))
        return 0;
    char *base = fdpo_malloc(n - 3);
    memcpy(base, path, n - 4);
    base[n - 4] = 0;
    struct stat st;
    long who = 0;
    /* this process's run may not have made its directory yet (its first save does) */
    if (lstat(base, &st) == 0 ? S_ISDIR(st.st_mode) : own) {
        who = fdpo_dir_lock_holder(base);
        char *lp = lock_path(base);
        if (!who && own && held_same_file(lp) >= 0) who = (long)getpid();
        free(lp);
    }
    free(base);
    return who;
}

/* An output (a run's directory, a tokenizer's, a file) named X.tmp or X.old, or inside one,
 * while another process's run on the directory X holds X.lock (with own: this process's run
 * too): each save of that run writes or moves a directory under that name, replacing the
 * output or moving it from under its writer (and a file inside it landed in X's checkpoint) */
static int refuse_swap_name_of_running_run(const char *path, const char *flag, int own) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    long who = swap_name_holder(path, n, own);
    char holder[48];
    if (who) {
        fdpo_lock_holder_text(who, holder, sizeof holder);
        return fdpo_error("%s %s: is where each save of the running run on %.*s (%s holds %.*s.lock) puts its new or "
                          "its old checkpoint, replacing what is there; choose another %s", flag, path, (int)(n - 4),
                          path, holder, (int)(n - 4), path, flag);
    }
    /* the directories above it, resolved (P.tmp/x/../y is inside P.tmp, P.tmp/../y is not) */
    char *abs = fdpo_path_absolute(path);
    int rc = 0;
    for (char *slash; !rc && (slash = strrchr(abs, '/')) && slash != abs;) {
        *slash = 0;   /* the next directory up */
        size_t an = strlen(abs);
        if (!(who = swap_name_holder(abs, an, own))) continue;
        fdpo_lock_holder_text(who, holder, sizeof holder);
        rc = fdpo_error("%s %s: inside %s, where each save of the running run on %.*s (%s holds %.*s.lock) puts its "
                        "new or its old checkpoint, moving what is there; choose %s outside it", flag, path, abs,
                        (int)(an - 4), abs, holder, (int)(an - 4), abs, flag);
    }
    free(abs);
    return rc;
}

/* A directory above dir that a running run holds (its PARENT.lock is flock-held by another
 * process): every save of that run swaps PARENT whole, so this run's files inside it would be
 * moved under it mid-write (a rename of DIR.tmp inside PARENT failed "No such file"). */
static int refuse_inside_running_run(const char *dir, const char *flag) {
    char *path = fdpo_path_absolute(dir);
    int rc = 0;
    for (char *slash; !rc && (slash = strrchr(path, '/')) && slash != path;) {
        *slash = 0;   /* the next directory up */
        char *lp = lock_path(path);
        /* this process's own lock (online rounds, sacpo stages) is found by the file: the path
         * here is resolved, the held one is as the user spelled it; only fdpo's locks count */
        long pid = held_same_file(lp) < 0 ? lock_file_holder(lp) : 0;
        if (pid > 0)
            rc = fdpo_error("%s %s: inside %s, the directory of a running run (pid %ld holds %s), whose saves "
                            "replace it whole; choose %s outside it", flag, dir, path, pid, lp, flag);
        free(lp);
    }
    free(path);
    return rc;
}

/* A run directory below dir that another process's run holds (a held NAME.lock in dir's
 * tree): every save of the run on dir swaps dir whole, moving that run's files under it. The
 * tree is walked to a few levels, without following links. */
static int refuse_running_run_inside(const char *flag, const char *out, const char *dir, int depth) {
    DIR *d = depth < 6 ? opendir(dir) : NULL;
    if (!d) return 0;
    int rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = fdpo_path_join(dir, e->d_name);
        struct stat st;
        size_t n = strlen(e->d_name);
        if (lstat(p, &st) != 0) {
            /* gone meanwhile */
        } else if (S_ISDIR(st.st_mode)) {
            rc = refuse_running_run_inside(flag, out, p, depth + 1);
        } else if (n > 5 && !strcmp(e->d_name + n - 5, ".lock") && held_same_file(p) < 0) {
            long pid = lock_file_holder(p);   /* fdpo's locks only (a job wrapper's records no pid) */
            if (pid > 0)
                rc = fdpo_error("%s %s: holds the output of a running run (pid %ld holds %s), which this run's saves "
                                "would move from under it (each replaces %s whole); wait for it or choose another %s",
                                flag, out, pid, p, out, flag);
        }
        free(p);
    }
    closedir(d);
    return rc;
}

int fdpo_shared_dir_check(const char *dir, const char *flag) {
    return refuse_inside_running_run(dir, flag) || refuse_swap_name_of_running_run(dir, flag, 1) ? -1 : 0;
}

long fdpo_dir_lock_holder(const char *dir) {
    char *lp = lock_path(dir);
    long who = held_same_file(lp) < 0 ? lock_file_holder(lp) : 0;
    free(lp);
    return who;
}

int fdpo_dir_lock(const char *dir, const char *flag) {
    /* DIR.lock, and a checkpoint save's DIR.tmp and DIR.old, are DIR's text plus a suffix:
     * "." would give "..lock" inside DIR itself and "..tmp" that a save copies DIR into */
    /* '' was told it is '.', '..' or '/' and to cd .. (merge, tokenizer train; hunt of wave 46) */
    if (!*dir) return fdpo_error("%s: an empty path", flag);
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    const char *last = dir + n;
    while (last > dir && last[-1] != '/') last--;
    size_t ln = (size_t)(dir + n - last);
    if (ln == 0 || (ln == 1 && last[0] == '.') || (ln == 2 && last[0] == '.' && last[1] == '.'))
        return fdpo_error("%s %s: give the directory by its name, not '.', '..' or '/' (the run's lock and each "
                          "save's swap go beside it, under that name); from inside it: cd .. and give %s NAME",
                          flag, dir, flag);
    if (!strcmp(dir, "-"))   /* fdpo's flags read "-" as stdout (generate, score): not a directory's name here */
        return fdpo_error("%s -: this output is a directory, not a stream (give ./- for a directory named '-')", flag);
    if (refuse_symlink(dir, flag, "directory")) return -1;
    struct stat st;
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode))
        return fdpo_error("%s %s: not a directory (a run writes its checkpoint directory there); choose another %s",
                          flag, dir, flag);
    if (take_lock(dir, flag)) return -1;
    /* the nesting checks under our own lock: of two nested runs starting together, the one
     * that locks second sees the other's lock (checked before locking, both could pass) */
    if (refuse_inside_running_run(dir, flag) || refuse_running_run_inside(flag, dir, dir, 0) ||
        refuse_swap_name_of_running_run(dir, flag, 0)) {
        fdpo_dir_unlock(dir);
        return -1;
    }
    return 0;
}

void fdpo_dir_unlock(const char *dir) {
    char *path = lock_path(dir);
    int i = held_index(path);
    free(path);
    if (i < 0) return;
    /* beside a run's files the lock file stays (it is empty of meaning once no process holds
     * it); one that guards nothing (a failed start) is removed while still held: a run that
     * opened it meanwhile finds the name gone and opens it again (take_lock) */
    remove_if_unused(i);
    close(g_held[i].fd);   /* releases the flock */
    free(g_held[i].dir);
    free(g_held[i].flag);
    free_made_parents(i);
    g_held[i].dir = g_held[i].flag = NULL;
}

int fdpo_dir_locked(const char *dir) {
    char *path = lock_path(dir);
    int i = held_index(path);
    free(path);
    return i >= 0;
}

/* The output this process claimed (a held lock's DIR) that is the file lp names, by any
 * spelling of its path; -1 if none */
static int held_target_at(const char *lp) {
    char *want = fdpo_path_absolute(lp);
    int found = -1;
    for (int j = 0; j < MAX_HELD && found < 0; j++) {
        if (!g_held[j].dir || g_held[j].owner != getpid()) continue;
        char *target = fdpo_strdup(g_held[j].dir);
        target[strlen(target) - 5] = 0;   /* drop ".lock" */
        char *abs = fdpo_path_absolute(target);
        if (!strcmp(abs, want)) found = j;
        free(abs); free(target);
    }
    free(want);
    return found;
}

int fdpo_out_file_claim(const char *path, const char *flag) {
    /* two outputs of one run on one file: the later write would replace the earlier */
    char *lp = lock_path(path);
    int held = held_same_file(lp);
    /* or one output at the other's lock file (FILE and FILE.lock, in either order): the lock
     * is written over with a pid, and removed with its claim, after the output was put there */
    int lock_of = held < 0 ? held_same_file(path) : -1, locked_by = held < 0 && lock_of < 0 ? held_target_at(lp) : -1;
    if (held >= 0 || lock_of >= 0 || locked_by >= 0) {
        int i = held >= 0 ? held : lock_of >= 0 ? lock_of : locked_by;
        char *other = fdpo_strdup(g_held[i].dir);
        other[strlen(other) - 5] = 0;   /* the other output: its lock's path without ".lock" */
        if (held >= 0)
            fdpo_error("%s %s: already the file of %s in this run; give each output its own file", flag, path,
                       g_held[i].flag);
        else if (lock_of >= 0)
            fdpo_error("%s %s: is the lock file of %s %s in this run (held while it works, removed at its end); "
                       "give each output its own file", flag, path, g_held[i].flag, other);
        else
            fdpo_error("%s %s: its lock file %s is the file of %s in this run (the lock would be written over it and removed "
                       "at the end); give each output its own file", flag, path, lp, g_held[i].flag);
        free(other); free(lp);
        return -1;
    }
    free(lp);
    /* before the lock, whose PATH.lock would be made beside a device too */
    if (fdpo_refuse_special_file(path)) return fdpo_error_context("%s", flag);
    if (refuse_symlink(path, flag, "file") || refuse_held_lock_file(path, flag)) return -1;
    if (take_lock(path, flag)) return -1;
    /* that run's next save would move the file's directory, or the file's name is its swap's */
    if (refuse_inside_running_run(path, flag) || refuse_swap_name_of_running_run(path, flag, 0)) {
        fdpo_out_file_release(path);
        return -1;
    }
    fdpo_remove_stale_tmp_of(path);   /* what a killed writer of this file left (PATH.tmp.PID) */
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            fdpo_out_file_release(path);
            return fdpo_error("%s %s: is a directory (a file is written here)", flag, path);
        }
        fdpo_log(FDPO_LOG_INFO, "%s %s: exists; it is replaced when this run finishes", flag, path);
    }
    return 0;
}

void fdpo_out_file_release(const char *path) {
    char *lp = lock_path(path);
    int i = held_index(lp);
    if (i >= 0) unlink(lp);   /* while still holding it: a run that opened it before sees it gone and reopens */
    free(lp);
    fdpo_dir_unlock(path);
}

long fdpo_tmp_name_pid(const char *name) {
    const char *t = NULL;
    for (const char *p = strstr(name, ".tmp."); p; p = strstr(p + 1, ".tmp.")) t = p;
    if (!t || !t[5]) return 0;
    for (const char *c = t + 5; *c; c++) if (*c < '0' || *c > '9') return 0;
    return strtol(t + 5, NULL, 10);
}

/* the stale NAME.tmp.PID files in dir whose NAME is prefix (every NAME when prefix is NULL) */
static long remove_stale_tmp_named(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    long removed = 0;
    struct dirent *e;
    size_t np = prefix ? strlen(prefix) : 0;
    /* first a set a dead writer was swapping in: its old files wait at their temp names */
    while ((e = readdir(d))) {
        long pid = strncmp(e->d_name, ".fdpo-set.tmp.", 14) == 0 ? fdpo_tmp_name_pid(e->d_name) : 0;
        if (pid > 0 && pid != (long)getpid() && !pid_alive(pid)) (void)fdpo_atomic_set_recover(dir, pid);
    }
    rewinddir(d);
    while ((e = readdir(d))) {
        if (prefix && (strncmp(e->d_name, prefix, np) != 0 || strncmp(e->d_name + np, ".tmp.", 5) != 0)) continue;
        long pid = fdpo_tmp_name_pid(e->d_name);
        if (pid <= 0 || pid == (long)getpid() || pid_alive(pid)) continue;
        char *p = fdpo_path_join(dir, e->d_name), set[64];
        snprintf(set, sizeof set, ".fdpo-set.tmp.%ld", pid);
        char *sp = fdpo_path_join(dir, set);
        struct stat st;
        int held = lstat(sp, &st) == 0;   /* its set could not be put back: nothing of it goes */
        free(sp);
        if (!held && lstat(p, &st) == 0 && S_ISREG(st.st_mode) && unlink(p) == 0) {
            fdpo_log(FDPO_LOG_WARN, "removed %s (left by process %ld, which is gone)", p, pid);
            removed++;
        }
        free(p);
    }
    closedir(d);
    return removed;
}

long fdpo_remove_stale_tmp(const char *dir) { return remove_stale_tmp_named(dir, NULL); }

long fdpo_remove_stale_tmp_of(const char *path) {
    char *dir = fdpo_strdup(path);
    char *slash = strrchr(dir, '/');
    const char *name = slash ? path + (slash - dir) + 1 : path;   /* in path: dir's copy is cut below */
    if (slash == dir) dir[1] = 0;   /* "/x": the root */
    else if (slash) *slash = 0;
    long removed = *name ? remove_stale_tmp_named(slash ? dir : ".", name) : 0;
    free(dir);
    return removed;
}
