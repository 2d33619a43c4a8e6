/* Whole-file reads and atomic writes (temp file, fsync, rename, fsync directory). */
#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fdpo/core.h"

/* Open with O_NONBLOCK so that a FIFO does not block the open itself, then refuse anything
 * but a regular file (a FIFO, a directory, a device would block or never end). */
FILE *fdpo_open_regular(const char *path) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { fdpo_error("%s: cannot open: %s", path, strerror(errno)); return NULL; }
    struct stat st;
    if (fstat(fd, &st) != 0) { fdpo_error("%s: cannot stat: %s", path, strerror(errno)); close(fd); return NULL; }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        fdpo_error("%s: not a regular file (a %s)", path, S_ISDIR(st.st_mode) ? "directory" : S_ISFIFO(st.st_mode) ? "FIFO" :
                   S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "device" : S_ISSOCK(st.st_mode) ? "socket" : "special file");
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl != -1) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    FILE *f = fdopen(fd, "rb");
    if (!f) { fdpo_error("%s: cannot open: %s", path, strerror(errno)); close(fd); return NULL; }
    return f;
}

char *fdpo_read_file(const char *path, size_t *len) {
    FILE *f = fdpo_open_regular(path);
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = fdpo_malloc(cap);
    for (;;) {
        if (n + 1 >= cap) { cap *= 2; buf = fdpo_realloc(buf, cap); }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); fdpo_error("%s: read error", path); return NULL; }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int fdpo_fsync_parent(const char *path, int report) {
    char *copy = fdpo_strdup(path);
    const char *dir = dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;
    if (fd < 0) rc = report ? fdpo_error("%s: cannot open: %s", dir, strerror(errno)) : -1;
    else if (fsync(fd) != 0) rc = report ? fdpo_error("%s: fsync: %s", dir, strerror(errno)) : -1;
    if (fd >= 0) close(fd);
    free(copy);
    return rc;
}

int fdpo_refuse_special_file(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        return fdpo_error("%s: not a regular file (a device, FIFO or socket): fdpo writes a new file and renames it "
                          "into place, which would replace it; give a file path", path);
    return 0;
}

int fdpo_atomic_open(fdpo_atomic_file *af, const char *path) {
    if (fdpo_refuse_special_file(path)) return -1;   /* the rename would replace /dev/null, say */
    size_t n = strlen(path) + 32;
    af->path = fdpo_strdup(path);
    af->tmp_path = fdpo_malloc(n);
    snprintf(af->tmp_path, n, "%s.tmp.%d", path, (int)getpid());
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f) {
        fdpo_error("%s: cannot write: %s", af->tmp_path, strerror(errno));
        free(af->path); free(af->tmp_path); af->path = af->tmp_path = NULL;
        return -1;
    }
    return 0;
}

void fdpo_atomic_abort(fdpo_atomic_file *af) {
    if (af->f) fclose(af->f);
    if (af->tmp_path) unlink(af->tmp_path);
    free(af->path); free(af->tmp_path);
    af->f = NULL; af->path = af->tmp_path = NULL;
}

/* every byte of the temp file on disk (a full disk shows here at the latest), the file closed */
static int atomic_sync(fdpo_atomic_file *af) {
    if (!af->f) return 0;   /* synced already */
    int bad = ferror(af->f) || fflush(af->f) != 0 || fsync(fileno(af->f)) != 0;
    if (bad) {
        fdpo_error("%s: write failed: %s", af->path, strerror(errno));
        fdpo_atomic_abort(af);
        return -1;
    }
    fclose(af->f); af->f = NULL;
    return 0;
}

int fdpo_atomic_commit(fdpo_atomic_file *af) {
    if (atomic_sync(af)) return -1;
    if (rename(af->tmp_path, af->path) != 0) {
        fdpo_error("%s: rename failed: %s", af->path, strerror(errno));
        fdpo_atomic_abort(af);
        return -1;
    }
    (void)fdpo_fsync_parent(af->path, 0);   /* the file is in place; the entry's durability is best effort */
    free(af->path); free(af->tmp_path);
    af->path = af->tmp_path = NULL;
    return 0;
}

/* One output of a set moved into place, and how to undo it: EXCHANGED left the old file at
 * the temp name (renameat2 RENAME_EXCHANGE), NEW had no old file, REPLACED lost its old file
 * (a file system without the exchange: no undo). */
enum { COMMIT_PENDING, COMMIT_EXCHANGED, COMMIT_NEW, COMMIT_REPLACED };

static int commit_one_of_set(fdpo_atomic_file *af, int *state) {
    struct stat st;
    if (lstat(af->path, &st) == 0 && S_ISDIR(st.st_mode)) {   /* the exchange would move a directory aside */
        errno = EISDIR;
        return -1;
    }
    if (renameat2(AT_FDCWD, af->tmp_path, AT_FDCWD, af->path, RENAME_EXCHANGE) == 0) { *state = COMMIT_EXCHANGED; return 0; }
    int no_old = errno == ENOENT, no_exchange = errno == EINVAL || errno == ENOSYS;
    if (!no_old && !no_exchange) return -1;
    if (rename(af->tmp_path, af->path) != 0) return -1;
    *state = no_old ? COMMIT_NEW : COMMIT_REPLACED;
    return 0;
}

/* ---- the journal of a set in one directory (fdpo_atomic_commit_set) ----
 * DIR/.fdpo-set.tmp.PID, written and synced after every new file is and before the first
 * rename: a header line (format 3), one line "HAD_OLD NEW_HASH OLD_HASH NAME" per file, each
 * HASH the 16 hex digits of fdpo_hash64 over the content of the new file and of the old one it
 * replaces (0 when there is none), and "end". A kill between the exchanges left some names
 * holding the new file and the others the old one, each other version at NAME.tmp.PID; the
 * contents tell which is which (a touch or a copy of the same bytes changes nothing), so
 * fdpo_atomic_set_recover can swap the set back whole; a name removed since whose temp name
 * holds the old file gets it back. A file that is neither (other bytes written since the kill)
 * stops the recovery. A journal of another format (an earlier build's) is left with its temp
 * files, untouched: which holds what is not known. */
#define SET_JOURNAL_HEADER "fdpo atomic set 3\n"
#define SET_MAX 16
/* the FNV-1a 64 hash of a regular file's content: 0 when read, -1 when absent or unreadable */
static int content_hash(const char *path, uint64_t *h) {
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) return -1;
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char buf[65536];
    size_t k;
    *h = FDPO_HASH_INIT;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) *h = fdpo_hash64(*h, buf, k);
    int bad = ferror(f);
    fclose(f);
    return bad ? -1 : 0;
}

static char *set_journal_path(const char *dir, long pid) {
    char name[64];
    snprintf(name, sizeof name, ".fdpo-set.tmp.%ld", pid);
    return fdpo_path_join(dir, name);
}

static char *parent_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return fdpo_strdup(".");
    if (slash == path) return fdpo_strdup("/");
    char *d = fdpo_malloc((size_t)(slash - path) + 1);
    memcpy(d, path, (size_t)(slash - path));
    d[slash - path] = 0;
    return d;
}

/* the journal's path when every file of the set is in one directory (else NULL: no journal) */
static char *set_journal_for(fdpo_atomic_file *const *afs, size_t n) {
    char *dir = NULL;
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        if (!afs[i]->path) continue;
        char *d = parent_of(afs[i]->path);
        const char *slash = strrchr(afs[i]->path, '/');
        int ok = !strchr(slash ? slash + 1 : afs[i]->path, '\n') && (!dir || strcmp(d, dir) == 0);
        if (!dir) dir = d;
        else free(d);
        if (!ok || ++used > SET_MAX) { free(dir); return NULL; }
    }
    if (!dir) return NULL;
    char *j = set_journal_path(dir, (long)getpid());
    free(dir);
    return j;
}

static int write_set_journal(const char *jp, fdpo_atomic_file *const *afs, size_t n) {
    size_t cap = sizeof SET_JOURNAL_HEADER + 8, len;
    for (size_t i = 0; i < n; i++) if (afs[i]->path) cap += strlen(afs[i]->path) + 200;
    char *text = fdpo_malloc(cap);
    len = (size_t)snprintf(text, cap, "%s", SET_JOURNAL_HEADER);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (!afs[i]->path) continue;
        struct stat old;
        uint64_t a, b = 0;
        if (content_hash(afs[i]->tmp_path, &a) != 0) { rc = fdpo_error("%s: cannot read it back: %s", afs[i]->tmp_path, strerror(errno)); break; }
        const char *slash = strrchr(afs[i]->path, '/');
        int had = lstat(afs[i]->path, &old) == 0;
        if (had && content_hash(afs[i]->path, &b) != 0) b = 0;   /* not a regular file: its rename fails below */
        len += (size_t)snprintf(text + len, cap - len, "%d %016llx %016llx %s\n", had, (unsigned long long)a, (unsigned long long)b,
                                slash ? slash + 1 : afs[i]->path);
    }
    len += (size_t)snprintf(text + len, cap - len, "end\n");
    if (!rc) {
        int fd = open(jp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, text, len) != (ssize_t)len || fsync(fd) != 0 || fdpo_fsync_parent(jp, 1) != 0)
            rc = fdpo_error("%s: write failed: %s", jp, strerror(errno));
        if (fd >= 0) close(fd);
        if (rc) unlink(jp);
    }
    free(text);
    return rc;
}

/* a journal's first line (head: one was read) is of this build's format, or a prefix of its
 * header (a journal cut short before the first rename, which recovery removes) */
static int set_journal_header_ok(const char *line, int head) {
    return !head || strcmp(line, SET_JOURNAL_HEADER) == 0 || strncmp(line, SET_JOURNAL_HEADER, strlen(line)) == 0;
}

int fdpo_atomic_set_journal_readable(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT;
    char line[4096];
    int head = fgets(line, sizeof line, f) != NULL, bad = ferror(f);
    fclose(f);
    return !bad && set_journal_header_ok(line, head);
}

int fdpo_atomic_set_recover(const char *dir, long pid) {
    char *jp = set_journal_path(dir, pid);
    FILE *f = fopen(jp, "rb");
    if (!f) { free(jp); return errno == ENOENT ? 0 : -1; }
    char line[4096], names[SET_MAX][256];
    uint64_t nh[SET_MAX], oh[SET_MAX];
    int had_old[SET_MAX], complete = 0;
    size_t n = 0;
    int head = fgets(line, sizeof line, f) != NULL;
    int ok = head && strcmp(line, SET_JOURNAL_HEADER) == 0;
    if (!set_journal_header_ok(line, head)) {
        /* not this format (a format 1 or 2 journal of an earlier build, another file): which
         * temp file holds which version is unknown, and they may be the only copies of the old
         * files, so nothing is touched and the journal stays (loads keep refusing) */
        fclose(f);
        fdpo_log(FDPO_LOG_WARN, "%s: cannot read this journal of process %ld (which is gone; not a \"%.*s\" journal): left it and "
                 "every *.tmp.%ld file as they are; check the files by hand, then remove %s", jp, pid,
                 (int)strlen(SET_JOURNAL_HEADER) - 1, SET_JOURNAL_HEADER, pid, jp);
        free(jp);
        return -1;
    }
    while (ok && fgets(line, sizeof line, f)) {
        if (strcmp(line, "end\n") == 0) { complete = 1; break; }
        int at = 0;
        size_t l = strlen(line);
        unsigned long long x, y;
        if (n == SET_MAX || l == 0 || line[l - 1] != '\n' || sscanf(line, "%d %llx %llx %n", &had_old[n], &x, &y, &at) != 3 || !at ||
            l - 1 - (size_t)at >= sizeof names[n] || l - 1 == (size_t)at) { ok = 0; break; }
        nh[n] = (uint64_t)x;
        oh[n] = (uint64_t)y;
        line[l - 1] = 0;
        snprintf(names[n], sizeof names[n], "%s", line + at);
        n++;
    }
    fclose(f);
    int rc = 0;
    char msg[32768] = "";     /* logged once the journal is gone, so a rerun after a kill at its removal is not told twice */
    if (ok && complete) {
        /* state, by content: in = the name holds the new file; tmp = NAME.tmp.PID is there (the
         * other version); *_old = it holds the old file */
        int in[SET_MAX], here[SET_MAX], here_old[SET_MAX], tmp[SET_MAX], tmp_new[SET_MAX], tmp_old[SET_MAX], same[SET_MAX];
        int back = 1, foreign = 0;
        char *np[SET_MAX], *tp[SET_MAX];
        for (size_t i = 0; i < n; i++) {
            struct stat st;
            uint64_t h = 0;
            np[i] = fdpo_path_join(dir, names[i]);
            size_t k = strlen(np[i]) + 32;
            tp[i] = fdpo_malloc(k);
            snprintf(tp[i], k, "%s.tmp.%ld", np[i], pid);
            here[i] = lstat(np[i], &st) == 0;
            int hh = here[i] && content_hash(np[i], &h) == 0;
            in[i] = hh && h == nh[i];
            here_old[i] = hh && had_old[i] && h == oh[i];
            same[i] = had_old[i] && nh[i] == oh[i];   /* the old and the new bytes are one: nothing to swap */
            if (here[i] && !in[i] && !here_old[i]) foreign = 1;   /* written since the kill */
            tmp[i] = lstat(tp[i], &st) == 0;
            int th = tmp[i] && content_hash(tp[i], &h) == 0;
            tmp_new[i] = th && h == nh[i];
            tmp_old[i] = th && had_old[i] && h == oh[i];
            if (tmp[i] && !tmp_new[i] && !tmp_old[i]) foreign = 1;
            /* back only while every old file is still somewhere (at its name or its temp name): one
             * gone already (the save's last removals, or a temp file copied over its name since)
             * sends the set forward */
            /* (a file whose old and new bytes agree is at its name either way: only its temp name,
             * which the save's last removals take, says whether the set went that far) */
            if (had_old[i] && !tmp_old[i] && (same[i] || !here_old[i])) back = 0;
        }
        /* going forward, a name whose new file is nowhere (removed since the kill) would be left
         * missing, and its temp name's old file deleted: treated as written since (kept aside) */
        for (size_t i = 0; i < n && !back; i++)
            if (!in[i] && !tmp_new[i]) foreign = 1;
        if (foreign) {
            /* a file of the set was written since the kill (a tokenizer copied in): which set the
             * user wants is not ours to guess, so no name of the set is touched; the versions the
             * dead save left at their temp names are kept under names no cleanup removes */
            char list[SET_MAX * 300] = "";
            for (size_t i = 0; i < n; i++) {
                if (!tmp[i]) continue;
                size_t k = strlen(np[i]) + 64, l = strlen(list);
                char *kp = fdpo_malloc(k);
                /* never over a NAME.kept.PID already there (an earlier save of a reused PID):
                 * then NAME.kept.PID.N, the first N free */
                int r = -1;
                for (int v = 0; v < 1000 && r != 0; v++) {
                    if (v) snprintf(kp, k, "%s.kept.%ld.%d", np[i], pid, v);
                    else snprintf(kp, k, "%s.kept.%ld", np[i], pid);
                    r = renameat2(AT_FDCWD, tp[i], AT_FDCWD, kp, RENAME_NOREPLACE);
                    if (r != 0 && errno == EINVAL) {   /* no RENAME_NOREPLACE here: a link fails on an existing name */
                        r = link(tp[i], kp);
                        if (r == 0 && unlink(tp[i]) != 0) { unlink(kp); r = -1; break; }
                    }
                    if (r != 0 && errno != EEXIST) break;
                }
                if (r != 0) { rc = -1; free(kp); break; }
                const char *kn = strrchr(kp, '/');
                snprintf(list + l, sizeof list - l, "%s%s", l ? ", " : "", kn ? kn + 1 : kp);
                free(kp);
            }
            if (rc)
                snprintf(msg, sizeof msg, "%s: the tokenizer files were written or removed since process %ld (which is gone) was killed "
                         "replacing them, and its files cannot be kept aside: %s (they stay at *.tmp.%ld)", dir, pid, strerror(errno), pid);
            else
                snprintf(msg, sizeof msg, "%s: the tokenizer files were written or removed since process %ld (which is gone) was killed "
                         "replacing them: "
                         "left them as they are; the versions it left are kept as %s (remove them once not needed)", dir, pid,
                         *list ? list : "(none)");
            for (size_t i = 0; i < n; i++) { free(np[i]); free(tp[i]); }
            n = 0;
        }
        int put_back[SET_MAX] = {0}, removed_new[SET_MAX] = {0};
        for (size_t i = 0; i < n && !rc; i++) {
            if (back && in[i] && tmp_old[i] && !same[i]) {   /* the old file at the temp name: swapped back, the new one removed */
                if (renameat2(AT_FDCWD, tp[i], AT_FDCWD, np[i], RENAME_EXCHANGE) != 0 || unlink(tp[i]) != 0) rc = -1;
                put_back[i] = 1;
            } else if (back && in[i] && !had_old[i]) {
                if (unlink(np[i]) != 0) rc = -1;
                removed_new[i] = 1;
            } else if (back && !in[i] && !here_old[i] && tmp_old[i]) {   /* the old file, its name removed since: put back */
                if (rename(tp[i], np[i]) != 0) rc = -1;
                put_back[i] = 1;
            } else if (back && tmp[i]) {   /* never renamed: the new file */
                if (unlink(tp[i]) != 0) rc = -1;
            } else if (!back && in[i] && tmp[i]) {   /* the old file */
                if (unlink(tp[i]) != 0) rc = -1;
            } else if (!back && tmp_new[i]) {   /* the new file, not yet in (a file system without the exchange) */
                if (rename(tp[i], np[i]) != 0) rc = -1;
            } else if (!back && tmp[i]) {   /* an old file whose name holds one written since the kill: that one stays */
                if (unlink(tp[i]) != 0) rc = -1;
            }
            if (rc) fdpo_log(FDPO_LOG_WARN, "%s: cannot finish the replacement process %ld began: %s (its files stay at *.tmp.%ld)",
                             np[i], pid, strerror(errno), pid);
        }
        if (!rc && n) {
            (void)fdpo_fsync_parent(jp, 0);
            /* what was done, name by name: the old file put back, the new one removed (the name
             * had none before), the old one left (never replaced), or the new one kept */
            char list[SET_MAX * 258] = "", said[5][SET_MAX * 258] = {"", "", "", "", ""};
            for (size_t i = 0; i < n; i++) {
                size_t l = strlen(list);
                snprintf(list + l, sizeof list - l, "%s%s", i ? ", " : "", names[i]);
                int w = !back ? 3 : put_back[i] ? 0 : same[i] ? 4 : removed_new[i] ? 1 : had_old[i] ? 2 : -1;
                if (w < 0) continue;
                l = strlen(said[w]);
                snprintf(said[w] + l, sizeof said[w] - l, "%s%s", l ? ", " : "", names[i]);
            }
            static const char *const WHAT[5] = {"put back the old ", "removed the new ", "kept the old ", "finished putting in the new ",
                                                "left "};
            static const char *const WHY[5] = {"", " (there was no old one)", " (not yet replaced)", "",
                                               " (its old and new bytes are the same)"};
            char did[sizeof said + 256] = "";
            for (int w = 0; w < 5; w++) {
                if (!*said[w]) continue;
                size_t l = strlen(did);
                snprintf(did + l, sizeof did - l, "%s%s%s%s", l ? "; " : "", WHAT[w], said[w], WHY[w]);
            }
            snprintf(msg, sizeof msg, "%s: %s: process %ld (which is gone) was killed replacing %s together", dir,
                     *did ? did : "nothing to undo", pid, list);
        }
        for (size_t i = 0; i < n; i++) { free(np[i]); free(tp[i]); }
    }
    /* an incomplete journal: killed before the first rename, so every NAME.tmp.PID is a new file */
    if (!rc && unlink(jp) != 0 && errno != ENOENT) rc = -1;
    if (*msg) fdpo_log(FDPO_LOG_WARN, "%s", msg);
    free(jp);
    return rc;
}

static int commit_set(fdpo_atomic_file *const *afs, size_t n, int journaled) {
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) if (afs[i]->path) rc = atomic_sync(afs[i]);
    char *jp = NULL;
    if (!rc && journaled && (jp = set_journal_for(afs, n))) rc = write_set_journal(jp, afs, n);
    if (rc) {
        for (size_t i = 0; i < n; i++) if (afs[i]->path) fdpo_atomic_abort(afs[i]);
        free(jp);
        return rc;
    }
    /* Every file goes in by an exchange with its old one, which waits at the temp name until
     * all are in: a rename that fails (an immutable file, a mount point, a directory made
     * meanwhile) puts the earlier ones back, so the set is replaced whole or not at all. */
    int *state = fdpo_calloc(n ? n : 1, sizeof(int));
    size_t failed = n;
    for (size_t i = 0; i < n && failed == n; i++) {
        if (!afs[i]->path) continue;   /* not opened: an optional output */
        if (commit_one_of_set(afs[i], &state[i]) != 0) {
            rc = fdpo_error("%s: rename failed: %s", afs[i]->path, strerror(errno));
            failed = i;
        }
    }
    for (size_t k = n; k-- > 0;) {
        fdpo_atomic_file *af = afs[k];
        if (!af->path) continue;
        if (rc && state[k] == COMMIT_EXCHANGED) {
            if (renameat2(AT_FDCWD, af->tmp_path, AT_FDCWD, af->path, RENAME_EXCHANGE) != 0)
                fdpo_log(FDPO_LOG_WARN, "%s: the new file stays (cannot put the old one back: %s; it is at %s)", af->path, strerror(errno),
                          af->tmp_path);
            else unlink(af->tmp_path);
        } else if (rc && state[k] == COMMIT_NEW) {
            unlink(af->path);
        } else if (rc && state[k] == COMMIT_REPLACED) {
            fdpo_log(FDPO_LOG_WARN, "%s: replaced before %s failed (this file system cannot put the old one back)", af->path,
                      afs[failed]->path);
        } else if (!rc) {
            if (state[k] == COMMIT_EXCHANGED) unlink(af->tmp_path);   /* the old file */
            (void)fdpo_fsync_parent(af->path, 0);
        }
        if (rc && state[k] == COMMIT_PENDING) unlink(af->tmp_path);
        free(af->path); free(af->tmp_path);
        af->path = af->tmp_path = NULL;
    }
    free(state);
    if (jp) {   /* last: until it goes, a kill is undone (or finished) by the next cleanup */
        unlink(jp);
        (void)fdpo_fsync_parent(jp, 0);
        free(jp);
    }
    return rc;
}

int fdpo_atomic_commit_all(fdpo_atomic_file *const *afs, size_t n) { return commit_set(afs, n, 0); }

int fdpo_atomic_commit_set(fdpo_atomic_file *const *afs, size_t n) { return commit_set(afs, n, 1); }

int fdpo_write_file_atomic(const char *path, const void *data, size_t len) {
    fdpo_atomic_file af;
    if (fdpo_atomic_open(&af, path)) return -1;
    if (len && fwrite(data, 1, len, af.f) != len) {
        fdpo_error("%s: write failed: %s", path, strerror(errno));
        fdpo_atomic_abort(&af);
        return -1;
    }
    return fdpo_atomic_commit(&af);
}

/* ---- large files past the page cache (fdpo_direct_file) ----
 * Measured on this machine (ext4 on virtio, 500 MB then fsync): buffered 1.0 s of CPU and
 * 2.3 s wall, O_DIRECT 0.015 s CPU and 0.3 s wall. The bytes are staged through a
 * DIRECT_CHUNK buffer aligned to DIRECT_ALIGN (one memcpy, ~0.05 s for 500 MB) and written
 * in whole chunks, so every O_DIRECT write starts at an aligned offset with an aligned
 * length; the tail, under one block, is written with O_DIRECT switched off. */
#define DIRECT_ALIGN 4096
#define DIRECT_CHUNK ((size_t)8 << 20)

/* write all n bytes; an O_DIRECT write the file system refuses (EINVAL: alignment it does not
 * accept) switches the descriptor to plain writes and goes on */
static int direct_write_all(fdpo_direct_file *f, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(f->fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EINVAL && f->direct) {
            int fl = fcntl(f->fd, F_GETFL);
            if (fl == -1 || fcntl(f->fd, F_SETFL, fl & ~O_DIRECT) == -1) return -1;
            f->direct = 0;
            continue;
        }
        if (w <= 0) { if (w == 0) errno = EIO; return -1; }
        p += w; n -= (size_t)w;
    }
    return 0;
}

int fdpo_direct_open(fdpo_direct_file *f, const char *path) {
    if (fdpo_refuse_special_file(path)) return -1;
    memset(f, 0, sizeof *f);
    size_t n = strlen(path) + 32;
    f->path = fdpo_strdup(path);
    f->tmp_path = fdpo_malloc(n);
    snprintf(f->tmp_path, n, "%s.tmp.%d", path, (int)getpid());
    f->fd = open(f->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0666);
    f->direct = f->fd >= 0;
    if (f->fd < 0 && errno == EINVAL) f->fd = open(f->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    void *buf = NULL;
    if (f->fd < 0 || posix_memalign(&buf, DIRECT_ALIGN, DIRECT_CHUNK) != 0) {
        fdpo_error("%s: cannot write: %s", f->tmp_path, f->fd < 0 ? strerror(errno) : "out of memory");
        fdpo_direct_abort(f);
        return -1;
    }
    f->buf = buf;
    return 0;
}

int fdpo_direct_write(fdpo_direct_file *f, const void *data, size_t len) {
    const unsigned char *p = data;
    while (len > 0 && !f->err) {
        size_t k = DIRECT_CHUNK - f->n < len ? DIRECT_CHUNK - f->n : len;
        memcpy(f->buf + f->n, p, k);
        f->n += k; p += k; len -= k;
        if (f->n == DIRECT_CHUNK) {
            if (direct_write_all(f, f->buf, f->n)) f->err = errno ? errno : EIO;
            f->n = 0;
        }
    }
    return f->err ? fdpo_error("%s: write failed: %s", f->path, strerror(f->err)) : 0;
}

void fdpo_direct_abort(fdpo_direct_file *f) {
    if (f->fd >= 0) close(f->fd);
    if (f->tmp_path) unlink(f->tmp_path);
    free(f->path); free(f->tmp_path); free(f->buf);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

int fdpo_direct_commit(fdpo_direct_file *f) {
    /* the whole blocks direct, the tail (< DIRECT_ALIGN) plain */
    size_t whole = f->n / DIRECT_ALIGN * DIRECT_ALIGN;
    int rc = f->err ? -1 : direct_write_all(f, f->buf, whole);
    if (!rc && f->n > whole && f->direct) {
        int fl = fcntl(f->fd, F_GETFL);
        rc = fl == -1 ? -1 : fcntl(f->fd, F_SETFL, fl & ~O_DIRECT);
        f->direct = 0;
    }
    if (!rc) rc = direct_write_all(f, f->buf + whole, f->n - whole);
    if (!rc) rc = fsync(f->fd);
    if (rc) {
        fdpo_error("%s: write failed: %s", f->path, strerror(f->err ? f->err : errno));
        fdpo_direct_abort(f);
        return -1;
    }
    close(f->fd);
    f->fd = -1;
    if (rename(f->tmp_path, f->path) != 0) {
        fdpo_error("%s: rename failed: %s", f->path, strerror(errno));
        fdpo_direct_abort(f);
        return -1;
    }
    (void)fdpo_fsync_parent(f->path, 0);    /* as above */
    free(f->path); free(f->tmp_path); free(f->buf);
    memset(f, 0, sizeof *f);
    f->fd = -1;
    return 0;
}

/* Whether cJSON's own printing of v reads back as another double: it writes a whole number
 * in int's range as such, null for NaN and Infinity, else %.15g whenever that reads back within
 * an ulp or two (and %.17g otherwise). */
static int printed_inexactly(double v) {
    if (!isfinite(v) || (v == floor(v) && fabs(v) <= INT_MAX)) return 0;
    char text[32];
    snprintf(text, sizeof text, "%1.15g", v);
    return strtod(text, NULL) != v;
}

static int any_printed_inexactly(const cJSON *j) {
    for (const cJSON *e = j->child; e; e = e->next)
        if (cJSON_IsNumber(e) ? printed_inexactly(e->valuedouble) : any_printed_inexactly(e)) return 1;
    return 0;
}

/* each such number of j (at any depth) replaced by its exact text as a raw value */
static void numbers_exact(cJSON *j) {
    for (cJSON *e = j->child, *next; e; e = next) {
        next = e->next;
        if (cJSON_IsNumber(e) && printed_inexactly(e->valuedouble)) {
            char text[32];
            fdpo_fmt_double(text, sizeof text, e->valuedouble);
            cJSON *raw = cJSON_CreateRaw(text);
            raw->string = e->string;   /* the key moves over (the call keeps no key) */
            raw->type |= e->type & cJSON_StringIsConst;
            e->string = NULL;
            cJSON_ReplaceItemViaPointer(j, e, raw);
        } else if (!cJSON_IsNumber(e)) numbers_exact(e);
    }
}

char *fdpo_json_print(const struct cJSON *root, int pretty) {
    /* the copy only when a number needs it: a pretrain state's data order is millions of
     * whole numbers, which cJSON prints exactly */
    cJSON *copy = any_printed_inexactly(root) ? cJSON_Duplicate(root, 1) : NULL;
    if (copy) numbers_exact(copy);
    const cJSON *what = copy ? copy : root;
    char *text = pretty ? cJSON_Print(what) : cJSON_PrintUnformatted(what);
    cJSON_Delete(copy);
    if (!text) return NULL;
    char *out = fdpo_strdup(text);   /* free()d, whatever allocator cJSON was built with */
    cJSON_free(text);
    return out;
}

char *fdpo_json_text(const struct cJSON *root, int pretty, size_t *len) {
    char *text = fdpo_json_print(root, pretty);
    if (!text) return NULL;
    size_t n = strlen(text);
    char *body = fdpo_malloc(n + 2);
    memcpy(body, text, n);
    body[n] = '\n';
    body[n + 1] = 0;
    free(text);
    *len = n + 1;
    return body;
}

int fdpo_json_whole_exact(long long v) { return v > -1000000000000000LL && v < 1000000000000000LL; }

void fdpo_json_add_whole(struct cJSON *obj, const char *key, long long v) {
    if (fdpo_json_whole_exact(v)) { cJSON_AddNumberToObject(obj, key, (double)v); return; }
    char digits[32];
    snprintf(digits, sizeof digits, "%lld", v);
    cJSON_AddStringToObject(obj, key, digits);
}

int fdpo_write_json_atomic(const char *path, const struct cJSON *root, int pretty) {
    size_t n;
    char *body = fdpo_json_text(root, pretty, &n);
    if (!body) return fdpo_error("%s: cannot format JSON", path);
    int rc = fdpo_write_file_atomic(path, body, n);
    free(body);
    return rc;
}

const char *fdpo_strv_push(fdpo_strv *sv, const char *s) {
    if (sv->n == sv->cap) { sv->cap = sv->cap ? 2 * sv->cap : 16; sv->v = fdpo_realloc(sv->v, sv->cap * sizeof *sv->v); }
    return sv->v[sv->n++] = fdpo_strdup(s);
}

void fdpo_strv_free(fdpo_strv *sv) {
    for (size_t i = 0; i < sv->n; i++) free(sv->v[i]);
    free(sv->v);
    sv->v = NULL; sv->n = sv->cap = 0;
}

int fdpo_mkdir_p_made(const char *path, char ***made, size_t *n_made) {
    /* the loop below starts past the first byte: "" read past its copy's terminator */
    if (!*path) return fdpo_error("cannot create a directory at an empty path");
    char *p = fdpo_strdup(path);
    for (char *s = p + 1; ; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s; *s = 0;
            if (mkdir(p, 0777) == 0) {
                if (made) {
                    *made = fdpo_realloc(*made, (*n_made + 1) * sizeof **made);
                    (*made)[(*n_made)++] = fdpo_strdup(p);
                }
            } else if (errno != EEXIST) {
                fdpo_error("%s: cannot create directory: %s", p, strerror(errno));
                free(p); return -1;
            }
            *s = c;
            if (c == 0) break;
        }
    }
    free(p);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return fdpo_error("%s: not a directory", path);
    return 0;
}

int fdpo_mkdir_p(const char *path) { return fdpo_mkdir_p_made(path, NULL, NULL); }

/* path for a message: each byte that does not start valid UTF-8 as \xHH (malloc'd) */
static char *utf8_escaped(const char *path) {
    size_t n = strlen(path), k = 0;
    char *out = fdpo_malloc(4 * n + 1);
    for (size_t i = 0; i < n;) {
        size_t ok = fdpo_utf8_first_invalid(path + i, n - i);
        memcpy(out + k, path + i, ok);
        k += ok; i += ok;
        if (i < n) k += (size_t)sprintf(out + k, "\\x%02X", (unsigned char)path[i++]);
    }
    out[k] = 0;
    return out;
}

/* "FLAG: the path is not valid UTF-8 (SHOWN; ...)", SHOWN the path (or how as) escaped */
static int not_utf8(const char *flag, const char *how, const char *path) {
    char *shown = utf8_escaped(path);
    fdpo_error("%s: the path is not valid UTF-8 (%s%s; fdpo records paths in its JSON files)", flag, how, shown);
    free(shown);
    return -1;
}

int fdpo_path_utf8_check(const char *flag, const char *path) {
    return path && !fdpo_utf8_valid(path, strlen(path)) ? not_utf8(flag, "", path) : 0;
}

int fdpo_path_check(const char *flag, const char *path) {
    return path && !*path ? fdpo_error("%s: an empty path", flag) : 0;
}

int fdpo_path_record_check(const char *flag, const char *path) {
    if (!path) return 0;
    if (!*path) return fdpo_error("%s: an empty path", flag);
    if (fdpo_path_utf8_check(flag, path)) return -1;
    char *abs = fdpo_path_absolute(path);
    int rc = fdpo_utf8_valid(abs, strlen(abs)) ? 0 : not_utf8(flag, "it resolves to ", abs);
    free(abs);
    return rc;
}

int fdpo_file_exists(const char *path) { struct stat st; return stat(path, &st) == 0; }

char *fdpo_path_join(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    char *r = fdpo_malloc(na + nb + 2);
    memcpy(r, a, na);
    size_t k = na;
    if (na && a[na - 1] != '/') r[k++] = '/';
    memcpy(r + k, b, nb + 1);
    return r;
}

/* d[0..n) split at its last '/': *s the start of the last component (trailing slashes
 * already stripped by the caller, n >= 1) */
static size_t last_component(const char *d, size_t n) {
    size_t s = n;
    while (s > 0 && d[s - 1] != '/') s--;
    return s;
}

/* the directory d[0..n) names, resolved (fdpo_path_identity) */
static char *resolve_dir(const char *d, size_t n) {
    while (n > 1 && d[n - 1] == '/') n--;   /* "a/" is "a"; "/" stays */
    char *copy = fdpo_malloc(n + 1);
    memcpy(copy, d, n);
    copy[n] = 0;
    char *real = realpath(copy, NULL);
    if (real || !strcmp(copy, ".") || !strcmp(copy, "/")) { if (real) free(copy); return real ? real : copy; }
    size_t s = last_component(copy, n), pn = s;
    while (pn > 1 && copy[pn - 1] == '/') pn--;
    /* "name": the working directory's; "/name": the root's */
    char *parent = s == 0 ? resolve_dir(".", 1) : resolve_dir(copy, pn);
    const char *name = copy + s;
    char *out;
    if (!strcmp(name, ".")) {
        out = parent;
    } else if (!strcmp(name, "..")) {
        char *slash = strrchr(parent, '/');
        if (slash && slash > parent) *slash = 0;
        else if (slash) slash[1] = 0;   /* the root's parent is the root */
        out = parent;
    } else {
        out = fdpo_path_join(parent, name);
        free(parent);
    }
    free(copy);
    return out;
}

/* an absolute PATH as written, with "//" and "/./" collapsed and a trailing '/' dropped
 * ('..' kept: lexically it is not its directory's parent where a symlink leads there) */
static char *absolute_path_clean(const char *path) {
    size_t n = strlen(path), o = 0;
    char *out = fdpo_malloc(n + 2);
    for (size_t i = 0; i < n;) {
        if (path[i] == '/') {
            while (i < n && path[i] == '/') i++;
            if (i + 1 <= n && path[i] == '.' && (i + 1 == n || path[i + 1] == '/')) { i++; continue; }   /* "/." */
            if (i < n) out[o++] = '/';
        } else
            out[o++] = path[i++];
    }
    if (o == 0) out[o++] = '/';
    out[o] = 0;
    return out;
}

char *fdpo_path_identity(const char *path) {
    size_t n = strlen(path);
    if (n == 0) return fdpo_strdup(path);
    /* absolute: as written. Ranks on other nodes may reach one directory through other
     * symlinks or mounts (/home a link on one, a mount on another), so resolving it could
     * set two texts apart that name one place; the same text was always one run's. */
    if (path[0] == '/') return absolute_path_clean(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t s = last_component(path, n), pn = s;
    const char *name = path + s;
    size_t name_n = n - s;
    if ((name_n == 1 && name[0] == '.') || (name_n == 2 && name[0] == '.' && name[1] == '.') || name_n == 0 ||
        (n == 1 && path[0] == '/'))
        return resolve_dir(path, n);   /* ".", "..", "/": a directory named by itself */
    while (pn > 1 && path[pn - 1] == '/') pn--;
    char *parent = s == 0 ? resolve_dir(".", 1) : resolve_dir(path, pn);
    char *last = fdpo_malloc(name_n + 1);
    memcpy(last, name, name_n);
    last[name_n] = 0;
    char *out = fdpo_path_join(parent, last);
    free(parent);
    free(last);
    return out;
}

uint64_t fdpo_hash64(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
    return h;
}

/* One scanner for UTF-8 checks: the offset of the first byte that does not start a valid,
 * complete, shortest-form, non-surrogate code point; n when all of s[0..n) is valid. */
size_t fdpo_utf8_first_invalid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t k; unsigned min;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { k = 1; min = 0x80; c &= 0x1F; }
        else if ((c & 0xF0) == 0xE0) { k = 2; min = 0x800; c &= 0x0F; }
        else if ((c & 0xF8) == 0xF0) { k = 3; min = 0x10000; c &= 0x07; }
        else return i;
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (p[i + j] & 0xC0) != 0x80) return i;
            c = (c << 6) | (p[i + j] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return i;
        i += k + 1;
    }
    return n;
}

int fdpo_utf8_valid(const char *s, size_t n) { return fdpo_utf8_first_invalid(s, n) == n; }

int fdpo_number_is_decimal(const char *s) {
    const char *d = s + (s[0] == '+' || s[0] == '-');
    return !(s[0] == ' ' || (s[0] >= '\t' && s[0] <= '\r') || (d[0] == '0' && (d[1] == 'x' || d[1] == 'X')));
}

/* strtod's ERANGE is not the error itself: a subnormal (1e-320: ERANGE with a nonzero result)
 * is a finite number and is taken; a value that underflows to 0 (1e-400) is out of range; an
 * overflow (1e999) is not finite. */
int fdpo_parse_number(const char *where, const char *text, double *out) {
    char *end;
    if (!fdpo_number_is_decimal(text)) return fdpo_error("%s: '%s' is not a decimal number", where, text);
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end || !isfinite(v)) return fdpo_error("%s: '%s' is not a finite number", where, text);
    if (errno == ERANGE && v == 0)
        return fdpo_error("%s: '%s' is out of range (it rounds to 0: the smallest double is 4.9e-324)", where, text);
    *out = v;
    return 0;
}

int fdpo_parse_long(const char *where, const char *text, long *out) {
    char *end;
    if (!fdpo_number_is_decimal(text)) return fdpo_error("%s: '%s' is not a decimal number", where, text);
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end) return fdpo_error("%s: '%s' is not an integer", where, text);
    if (errno == ERANGE)   /* an integer all the same: it said "is not an integer" */
        return v == LONG_MAX ? fdpo_error("%s: '%s' is out of range (at most %ld)", where, text, LONG_MAX)
                             : fdpo_error("%s: '%s' is out of range (at least %ld)", where, text, LONG_MIN);
    if (errno) return fdpo_error("%s: '%s' is not an integer", where, text);
    *out = v;
    return 0;
}

static char dash_norm(char c) { return c == '_' ? '-' : c; }

size_t fdpo_edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    size_t *row = fdpo_malloc((lb + 1) * sizeof *row);
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (dash_norm(a[i - 1]) != dash_norm(b[j - 1]));
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    size_t d = row[lb];
    free(row);
    return d;
}
