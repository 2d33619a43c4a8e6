/* Checkpoint directories replaced atomically: write OUT.tmp, swap it in with two renames,
 * carry over what is not part of a checkpoint, and repair what an interrupted swap left. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "core/lock_internal.h"
#include "fdpo/dist.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/online.h"
#include "fdpo/sacpo.h"
#include "fdpo/tokenizer.h"
#include "fdpo/trainer.h"

/* How a later run tells the leftovers of fdpo's own swap from a user's OUT.tmp or OUT.old (a
 * backup made by `mv run run.old`, another run whose --out is that name): a save makes
 * SAVE_MARK in OUT.tmp with the directory, and renames it to SWAP_MARK just before it moves OUT
 * to OUT.old, so SWAP_MARK (in OUT.tmp, or in OUT once OUT.tmp became OUT) says that OUT.old is
 * the checkpoint this save replaced. The mark is removed from OUT once OUT.old is gone: a
 * finished checkpoint, and a copy of it, carry none. */
#define SAVE_MARK ".fdpo-save"
#define SWAP_MARK ".fdpo-swap"
enum { NOT_A_SAVE, SAVE_WRITING, SAVE_SWAPPING };

const char *fdpo_out_holds_run(const char *out, unsigned ignore) {
    static const struct { unsigned kind; const char *name, *what; } MARKS[] = {
        {FDPO_RUN_CHECKPOINT, "training_state.json", "a checkpoint (training_state.json)"},
        {FDPO_RUN_CHECKPOINT, "model.safetensors", "a checkpoint (model.safetensors)"},
        {FDPO_RUN_CHECKPOINT, "model.safetensors.index.json", "a checkpoint (model.safetensors.index.json)"},
        /* a model in another format (save_pretrained's pytorch_model.bin) or a user's config:
         * a save writes config.json and removes generation_config.json (fdpo_checkpoint_file_kind) */
        {FDPO_RUN_CHECKPOINT, "config.json", "a checkpoint (config.json)"},
        {FDPO_RUN_CHECKPOINT, "generation_config.json", "a checkpoint (generation_config.json)"},
        {FDPO_RUN_ROUNDS, "round-0", "online rounds (round-0)"},
        /* a rounds run killed in round 0: its plan, or round 0 half-written or paired */
        {FDPO_RUN_ROUNDS, "online.json", "online rounds (online.json)"},
        {FDPO_RUN_ROUNDS, "round-0.partial", "online rounds (round-0.partial)"},
        {FDPO_RUN_ROUNDS, "round-0.pairs.jsonl", "online rounds (round-0.pairs.jsonl)"},
        {FDPO_RUN_SACPO, "sacpo.json", "sacpo stages (sacpo.json)"},
        /* a tokenizer alone (`fdpo tokenizer train`'s OUT): a save that writes its tokenizer
         * carries none of these (carry_over), so a fresh run deleted it. Checked after the
         * checkpoint's files, which a checkpoint's tokenizer sits beside. The names are
         * fdpo_checkpoint_file_kind's FDPO_CKPT_FILE_TOKENIZER: chat_template.jinja too, a
         * template a user put in OUT alone, which the save dropped as well (exit 0), and
         * special_tokens_map.json likewise (a stale one beside a legacy tokenizer_config.json
         * would change the eos/pad a later load reads: dropped only under --overwrite). A
         * byte-level run's save would keep these two (replaced_by_tokenizer), but the run's
         * tokenizer is not known here: refused alike. */
        {FDPO_RUN_TOKENIZER, "vocab.json", "a tokenizer (vocab.json)"},
        {FDPO_RUN_TOKENIZER, "merges.txt", "a tokenizer (merges.txt)"},
        {FDPO_RUN_TOKENIZER, "tokenizer.json", "a tokenizer (tokenizer.json)"},
        {FDPO_RUN_TOKENIZER, "tokenizer_config.json", "a tokenizer (tokenizer_config.json)"},
        {FDPO_RUN_TOKENIZER, "fdpo_tokenizer.json", "a tokenizer (fdpo_tokenizer.json)"},
        {FDPO_RUN_TOKENIZER, "encoder.json", "a tokenizer (encoder.json)"},
        {FDPO_RUN_TOKENIZER, "vocab.bpe", "a tokenizer (vocab.bpe)"},
        {FDPO_RUN_TOKENIZER, "chat_template.jinja", "a tokenizer (chat_template.jinja)"},
        {FDPO_RUN_TOKENIZER, "special_tokens_map.json", "a tokenizer (special_tokens_map.json)"},
    };
    if (!(ignore & FDPO_RUN_CHECKPOINT) && fdpo_lora_dir_has_adapter(out)) return "a checkpoint (adapter_config.json)";
    for (size_t i = 0; i < sizeof MARKS / sizeof MARKS[0]; i++) {
        if (ignore & MARKS[i].kind) continue;
        char *p = fdpo_path_join(out, MARKS[i].name);
        struct stat st;
        int there = stat(p, &st) == 0;
        free(p);
        if (there) return MARKS[i].what;
    }
    return NULL;
}

static const char *const RUN_FILES[] = {"metrics.jsonl", "data_summary.json", "eval_summary.json"};

static int is_run_file(const char *name) {
    for (size_t i = 0; i < sizeof RUN_FILES / sizeof RUN_FILES[0]; i++) if (!strcmp(name, RUN_FILES[i])) return 1;
    return 0;
}

const char *fdpo_out_run_file(const char *out) {
    for (size_t i = 0; i < sizeof RUN_FILES / sizeof RUN_FILES[0]; i++) {
        char *p = fdpo_path_join(out, RUN_FILES[i]);
        int there = fdpo_file_exists(p);
        free(p);
        if (there) return RUN_FILES[i];
    }
    return NULL;
}

int fdpo_out_remove_run_files(const char *out) {
    for (size_t i = 0; fdpo_dist_is_root() && i < sizeof RUN_FILES / sizeof RUN_FILES[0]; i++) {
        char *p = fdpo_path_join(out, RUN_FILES[i]);
        int rc = remove(p) != 0 && errno != ENOENT ? fdpo_error("%s: cannot remove the replaced run's file: %s", p, strerror(errno)) : 0;
        free(p);
        if (rc) return rc;
    }
    return 0;
}

/* Is path (st: its lstat; a directory or a bind-mounted file) the root of a mount inside a
 * tree on file system dev? A bind mount of the same file system keeps its device number:
 * statx says so where the kernel can (Linux 5.8+), the device number otherwise. */
static int mount_root(const char *path, const struct stat *st, dev_t dev) {
    if (st->st_dev != dev) return 1;
#ifdef STATX_ATTR_MOUNT_ROOT
    struct statx sx;
    if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, 0, &sx) == 0 && (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT))
        return (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
#else
    (void)path;
#endif
    return 0;
}

/* The swap would move a mount to OUT.old, whose removal emptied it (a directory) or failed at
 * it (a bind-mounted file) after the new checkpoint was in place. */
static int mount_error(const char *path) {
    return fdpo_error("%s: a mount point (a file system or a bind mount), which a save's directory swap cannot carry "
                      "(mount it outside OUT)", path);
}

/* Every mount point under dir (on file system dev), refused at a run's start rather than at
 * its first save, after the training */
static int refuse_mounts(const char *dir, dev_t dev) {
    DIR *d = opendir(dir);
    if (!d) return 0;   /* what cannot be read here fails where it is used, with its reason */
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) && !rc) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = fdpo_path_join(dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && !S_ISLNK(st.st_mode)) {
            if (mount_root(p, &st, dev)) rc = mount_error(p);
            else if (S_ISDIR(st.st_mode)) rc = refuse_mounts(p, dev);
        }
        free(p);
    }
    closedir(d);
    return rc;
}

/* below: the file system of the tree's top; a directory on another (a mount point) is not entered */
static int remove_tree_on(const char *path, dev_t dev, int top) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : fdpo_error("%s: %s", path, strerror(errno));
    if (!top && S_ISDIR(st.st_mode) && mount_root(path, &st, dev))
        return fdpo_error("%s: a mount point (a file system or a bind mount); not removed", path);
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return fdpo_error("%s: cannot open directory: %s", path, strerror(errno));
        struct dirent *e;
        int rc = 0;
        while ((e = readdir(d)) && !rc) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char *child = fdpo_path_join(path, e->d_name);
            rc = remove_tree_on(child, st.st_dev, 0);
            free(child);
        }
        closedir(d);
        if (rc) return rc;
        if (rmdir(path) != 0) return fdpo_error("%s: cannot remove: %s", path, strerror(errno));
        return 0;
    }
    if (unlink(path) != 0) return fdpo_error("%s: cannot remove: %s", path, strerror(errno));
    return 0;
}

int fdpo_remove_tree(const char *path) { return remove_tree_on(path, 0, 1); }

static int copy_file(const char *src, const char *dst) {
    size_t len;
    char *data = fdpo_read_file(src, &len);
    if (!data) return -1;
    int rc = fdpo_write_file_atomic(dst, data, len);
    free(data);
    return rc;
}

/* A symbolic link of OUT recreated in the new checkpoint with the same target (a relative
 * one names the same thing: OUT.tmp becomes OUT). Before, a save dropped every link, FIFO and
 * socket a user kept in OUT. */
static int copy_symlink(const char *src, const char *dst) {
    char target[PATH_MAX];
    ssize_t n = readlink(src, target, sizeof target - 1);
    if (n < 0) return fdpo_error("%s: cannot read the link: %s", src, strerror(errno));
    target[n] = '\0';
    if (symlink(target, dst) != 0) return fdpo_error("%s: cannot recreate the link %s: %s", dst, src, strerror(errno));
    return 0;
}

/* The files every save writes afresh (FDPO_CKPT_FILE_MODEL): never carried over (a writer
 * that truncated in place instead of renaming would otherwise write through the link into
 * the old checkpoint). A sharded checkpoint's index and shards are the weights of the
 * replaced model: carried, they sat beside the new model.safetensors.
 * The files a tokenizer is read from (FDPO_CKPT_FILE_TOKENIZER; tokenizer.json wins over the
 * pairs, fdpo_tokenizer.json over all): a save that writes its tokenizer carries none of the
 * old ones, or a byte-level run written over a BPE run's OUT (--overwrite) kept the BPE's
 * tokenizer.json, and the reverse kept fdpo_tokenizer.json, which then loaded instead. */
static int rewritten_by_save(const char *name) {
    /* generation_config.json is not: a LoRA save writes none and keeps the user's; a full
     * model's save writes or removes it (fdpo_checkpoint_save_model) */
    return fdpo_checkpoint_file_kind(name) == FDPO_CKPT_FILE_MODEL && strcmp(name, "generation_config.json");
}
/* A save that writes tok replaces OUT's tokenizer files, but for two: special_tokens_map.json
 * and chat_template.jinja go with a BPE tokenizer's files (read, and written back, with them);
 * the byte-level tokenizer neither reads nor writes them, so beside its fdpo_tokenizer.json in
 * the run's own OUT they are a user's files, kept (pretrain's or sft's --tokenizer DIR as --out
 * DIR deleted DIR's map, exit 0). A save that replaces OUT's run (new_run: --overwrite, merge)
 * replaces its tokenizer whole, as it always did. */
static int replaced_by_tokenizer(const char *name, const fdpo_tokenizer *tok, int new_run) {
    if (!tok || fdpo_checkpoint_file_kind(name) != FDPO_CKPT_FILE_TOKENIZER) return 0;
    return new_run || fdpo_tokenizer_kind_of(tok) == FDPO_TOK_BPE ||
           (strcmp(name, "special_tokens_map.json") && strcmp(name, "chat_template.jinja"));
}

/* What a replacing save (--overwrite) leaves behind besides the run files, where OUT held an
 * online rounds run or a sacpo run: that run's own entries (its plan, round-K and their pairs,
 * the stages and their locks: fdpo_online_out_entry, fdpo_sacpo_out_entry). Carried, they
 * made OUT both the new checkpoint and the old rounds, which `--resume` read. Only the
 * replaced kind's names go: a checkpoint a user keeps in a directory of OUT stays. */
static int replaced_run_entry(const char *out, const char *name) {
    if (fdpo_out_holds_run(out, FDPO_RUN_CHECKPOINT | FDPO_RUN_SACPO | FDPO_RUN_TOKENIZER) && fdpo_online_out_entry(name))
        return 1;
    return fdpo_out_holds_run(out, FDPO_RUN_CHECKPOINT | FDPO_RUN_ROUNDS | FDPO_RUN_TOKENIZER) && fdpo_sacpo_out_entry(name);
}

char *fdpo_out_replacing_drops(const char *out, const char *path) {
    if (!out || !path) return NULL;
    char *real_out = realpath(out, NULL), *real_path = realpath(path, NULL), *entry = NULL;
    size_t n = real_out ? strlen(real_out) : 0;
    /* path resolved is OUT/NAME or inside it (an OUT of "/" holds no run to replace) */
    if (real_path && n > 1 && !strncmp(real_path, real_out, n) && real_path[n] == '/') {
        const char *rest = real_path + n + 1;
        size_t len = strcspn(rest, "/");
        char *name = fdpo_malloc(len + 1);
        memcpy(name, rest, len);
        name[len] = '\0';
        if (is_run_file(name) || replaced_run_entry(out, name)) entry = fdpo_path_join(out, name);
        free(name);
    }
    free(real_out); free(real_path);
    return entry;
}

/* Hard-link (or copy) every other file of src into dst, recursively: what a user or the run
 * keeps in OUT besides the checkpoint (metrics.jsonl, notes) survives the directory swap.
 * top: src is OUT itself (its checkpoint files are written afresh); new_tokenizer: the tokenizer
 * the save writes (NULL: none), whose files replace OUT's (replaced_by_tokenizer); new_run: a run
 * replaces OUT's (its run files, rounds and stages are left behind). */
static int carry_over(const char *src, const char *dst, int top, const fdpo_tokenizer *new_tokenizer, int new_run) {
    struct stat src_st;
    if (lstat(src, &src_st) != 0) return fdpo_error("%s: %s", src, strerror(errno));
    const dev_t dev = src_st.st_dev;
    DIR *d = opendir(src);
    if (!d) return fdpo_error("%s: cannot open directory: %s", src, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) && !rc) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (fdpo_tmp_name_pid(e->d_name)) continue; /* a writer's half-written NAME.tmp.PID */
        if (top && (!strcmp(e->d_name, SAVE_MARK) || !strcmp(e->d_name, SWAP_MARK))) continue;   /* the save's own */
        if (top && (rewritten_by_save(e->d_name) || replaced_by_tokenizer(e->d_name, new_tokenizer, new_run) ||
                    (new_run && (is_run_file(e->d_name) || replaced_run_entry(src, e->d_name)))))
            continue;
        char *a = fdpo_path_join(src, e->d_name), *b = fdpo_path_join(dst, e->d_name);
        struct stat st;
        if (lstat(a, &st) == 0) {
            if (!S_ISLNK(st.st_mode) && mount_root(a, &st, dev)) rc = mount_error(a);
            else if (S_ISDIR(st.st_mode)) rc = fdpo_mkdir_p(b) || carry_over(a, b, 0, NULL, 0);
            else if (S_ISLNK(st.st_mode)) rc = copy_symlink(a, b);   /* the link, never what it names */
            else if (link(a, b) != 0) {   /* a file, FIFO or socket: the same inode */
                if (S_ISREG(st.st_mode)) rc = copy_file(a, b);
                else if (!S_ISFIFO(st.st_mode) || mkfifo(b, st.st_mode & 07777) != 0)   /* not ours to link */
                    fdpo_log(FDPO_LOG_WARN, "%s: left out of the new checkpoint (a FIFO, socket or device that cannot "
                             "be linked or made again: %s)", a, strerror(errno));
            }
        }
        free(a); free(b);
    }
    closedir(d);
    return rc;
}

static char *suffixed(const char *path, const char *suffix) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;   /* "out/" -> "out.tmp", not "out/.tmp" */
    char *r = fdpo_malloc(n + strlen(suffix) + 1);
    memcpy(r, path, n);
    strcpy(r + n, suffix);
    return r;
}

static int is_dir_not_link(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_regular_file(const char *dir, const char *name) {
    char *p = fdpo_path_join(dir, name);
    struct stat st;
    int there = lstat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    return there;
}

/* made at once, with its name (a kill before it leaves OUT.tmp empty, which save_mark counts as
 * the save's); the text is for a user who finds it */
static int make_save_mark(const char *dir) {
    static const char TEXT[] = "fdpo: this directory is a checkpoint being saved (docs/training.md, Atomic save)\n";
    char *p = fdpo_path_join(dir, SAVE_MARK);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666), rc = 0;
    if (fd < 0 || write(fd, TEXT, sizeof TEXT - 1) != (ssize_t)(sizeof TEXT - 1))
        rc = fdpo_error("%s: cannot write: %s", p, strerror(errno));
    if (fd >= 0) close(fd);
    free(p);
    return rc;
}

/* What dir (OUT, OUT.tmp or OUT.old) is to a save: marked by one, or not a save's (no mark,
 * or a run of its own holds dir's lock: that run's directory is never ours to touch) */
static int save_mark(const char *dir) {
    if (!is_dir_not_link(dir) || fdpo_dir_lock_holder(dir)) return NOT_A_SAVE;
    if (has_regular_file(dir, SWAP_MARK)) return SAVE_SWAPPING;
    return has_regular_file(dir, SAVE_MARK) || fdpo_dir_has_entries(dir) == 0 ? SAVE_WRITING : NOT_A_SAVE;
}

static int remove_marks(const char *dir) {
    const char *marks[] = {SAVE_MARK, SWAP_MARK};
    int rc = 0;
    for (size_t i = 0; i < 2 && !rc; i++) {
        char *p = fdpo_path_join(dir, marks[i]);
        if (unlink(p) != 0 && errno != ENOENT) rc = fdpo_error("%s: cannot remove: %s", p, strerror(errno));
        free(p);
    }
    return rc;
}

/* A directory no save of this fdpo marked and no running run holds: a user's, or what a save of
 * an earlier fdpo (which marked none) left */
static int is_unmarked_dir(const char *dir) {
    return is_dir_not_link(dir) && !fdpo_dir_lock_holder(dir) && save_mark(dir) == NOT_A_SAVE;
}

/* The weights of a checkpoint (a full model or a LoRA adapter) or its training state */
static int holds_checkpoint(const char *dir) {
    static const char *const FILES[] = {"training_state.json", "model.safetensors", "model.safetensors.index.json",
                                        "adapter_model.safetensors"};
    for (size_t i = 0; i < sizeof FILES / sizeof FILES[0]; i++) if (has_regular_file(dir, FILES[i])) return 1;
    return 0;
}

/* Whether a file at the top of tmp is the same inode as one in old: a save's carry_over
 * hard-linked it (a run's metrics.jsonl), so tmp was made from old by a save */
static int shares_a_file(const char *old, const char *tmp) {
    DIR *d = opendir(old);
    if (!d) return 0;
    struct dirent *e;
    int shared = 0;
    while (!shared && (e = readdir(d))) {
        char *a = fdpo_path_join(old, e->d_name), *b = fdpo_path_join(tmp, e->d_name);
        struct stat sa, sb;
        shared = lstat(a, &sa) == 0 && S_ISREG(sa.st_mode) && lstat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
                 sa.st_ino == sb.st_ino;
        free(a); free(b);
    }
    closedir(d);
    return shared;
}

/* An earlier fdpo's save, killed between its two renames (OUT -> OUT.old, OUT.tmp -> OUT), left
 * OUT missing and both unmarked directories beside it; that fdpo restored OUT.old, as here. Taken
 * for one: OUT.old a checkpoint, or (the first save, of an OUT that held only the run's files)
 * OUT.tmp a checkpoint made from OUT.old. A user's `mv run run.old` backup has no run.tmp beside
 * it, so it is not taken for one. */
static int recover_unmarked_swap(const char *out, const char *old, const char *tmp) {
    struct stat st;
    if (lstat(out, &st) == 0 || !is_unmarked_dir(old) || !is_unmarked_dir(tmp) ||
        !(holds_checkpoint(old) || (holds_checkpoint(tmp) && shares_a_file(old, tmp))))
        return 0;
    if (rename(old, out) != 0) return fdpo_error("%s: cannot restore from %s: %s", out, old, strerror(errno));
    fdpo_log(FDPO_LOG_WARN, "%s restored from %s (a save of an earlier fdpo was interrupted)", out, old);
    fdpo_log(FDPO_LOG_WARN, "removed %s (left by that interrupted save)", tmp);
    return fdpo_remove_tree(tmp);
}

/* Undo what an interrupted save of OUT left, and only that (each step a warning naming the
 * path): killed between its two renames, OUT.old back into place (or, were it gone, the
 * complete OUT.tmp); its OUT.tmp removed; killed after them, OUT.old removed and the mark
 * dropped. A user's OUT.tmp or OUT.old is left alone (refuse_swap_names_taken names it). */
static int recover_swap(const char *out) {
    char *old = suffixed(out, ".old"), *tmp = suffixed(out, ".tmp");
    if (recover_unmarked_swap(out, old, tmp)) { free(old); free(tmp); return -1; }
    int rc = 0, tmp_mark = save_mark(tmp);
    struct stat st;
    if (lstat(out, &st) != 0 && tmp_mark == SAVE_SWAPPING) {
        if (is_dir_not_link(old) && !fdpo_dir_lock_holder(old)) {
            if (rename(old, out) != 0) rc = fdpo_error("%s: cannot restore from %s: %s", out, old, strerror(errno));
            else fdpo_log(FDPO_LOG_WARN, "%s restored from %s (a save was interrupted)", out, old);
        } else if (rename(tmp, out) != 0) {
            rc = fdpo_error("%s: cannot restore from %s: %s", out, tmp, strerror(errno));
        } else {
            fdpo_log(FDPO_LOG_WARN, "%s restored from %s, the new checkpoint (a save was interrupted; %s is gone)",
                     out, tmp, old);
            tmp_mark = NOT_A_SAVE;
        }
    }
    if (!rc && tmp_mark != NOT_A_SAVE) {
        fdpo_log(FDPO_LOG_WARN, "removed %s (left by an interrupted save)", tmp);
        rc = fdpo_remove_tree(tmp);
    }
    const int out_mark = rc ? NOT_A_SAVE : save_mark(out);
    if (out_mark == SAVE_SWAPPING && is_dir_not_link(old) && !fdpo_dir_lock_holder(old)) {
        /* the swap finished; only the removal of the replaced checkpoint was interrupted */
        fdpo_log(FDPO_LOG_WARN, "removed %s (the checkpoint that an interrupted save replaced)", old);
        rc = fdpo_remove_tree(old);
    }
    if (!rc && out_mark != NOT_A_SAVE) rc = remove_marks(out);
    free(old); free(tmp);
    return rc;
}

/* An unmarked OUT.tmp (is_tmp) or OUT.old at p: a user's, another run's, or what a save of an
 * earlier fdpo left that recover_unmarked_swap could not tell apart; the message says what to
 * do in each case. It names the leftover, not --out: a sacpo stage's or an online round's
 * directory is none the user named. */
static int refuse_unmarked_leftover(const char *out, const char *p, int is_tmp) {
    struct stat st;
    const int out_there = lstat(out, &st) == 0;
    size_t n = 3 * strlen(out) + 160;
    char *advice = fdpo_malloc(n);
    if (is_tmp && out_there)
        snprintf(advice, n, "An earlier fdpo's unfinished save beside a complete %s: remove it", out);
    else if (is_tmp)
        snprintf(advice, n, "An earlier fdpo's save cut short, with no %s: remove it, after moving %s.old (if there) "
                 "back to %s", out, out, out);
    else if (out_there)
        snprintf(advice, n, "Beside a complete %s, the checkpoint an earlier fdpo's save replaced: remove it if it is "
                 "not your backup", out);
    else
        snprintf(advice, n, "With no %s, the checkpoint an earlier fdpo's killed save moved aside: if it is not your "
                 "backup, move it back to %s and resume", out, out);
    int rc = fdpo_error("%s is in the way of the saves of %s (each writes %s.tmp and moves the old checkpoint to "
                        "%s.old) and carries no mark of this fdpo's saves, so it is not removed: it is a copy of yours, "
                        "another run's directory, or a leftover of an interrupted save of an earlier fdpo (which "
                        "marked none). %s; otherwise move it away", p, out, out, out, advice);
    free(advice);
    return rc;
}

/* OUT.tmp and OUT.old are the names each save's swap uses. What is there after recover_swap
 * is not fdpo's leftover (a user's backup, another run's directory), and a run that holds
 * the lock of either name makes its directory there: refused, never removed. */
static int refuse_swap_names_taken(const char *out) {
    const char *suffixes[] = {".tmp", ".old"};
    int rc = 0;
    for (size_t i = 0; i < 2 && !rc; i++) {
        char *p = suffixed(out, suffixes[i]);
        long who = fdpo_dir_lock_holder(p);
        struct stat st;
        if (who) {
            char holder[48];
            fdpo_lock_holder_text(who, holder, sizeof holder);
            rc = fdpo_error("--out %s: %s is the directory of a running run (%s holds %s.lock), which this run's saves "
                            "would replace (each writes %s.tmp and moves the old checkpoint to %s.old); wait for it or "
                            "choose another --out", out, p, holder, p, out, out);
        } else if (lstat(p, &st) == 0) {
            rc = refuse_unmarked_leftover(out, p, i == 0);
        }
        free(p);
    }
    return rc;
}

/* A run's start under OUT's lock: OUT as a mount point, or one inside it, refused (stopped here,
 * not after the training at the first save, whose carry-over refuses one made since), then the
 * swap recovered.
 * Each save recovers the swap alone: walking OUT once per save is not needed. */
static int start_checks(const char *out) {
    struct stat st, up_st;
    if (lstat(out, &st) == 0 && S_ISDIR(st.st_mode)) {
        /* OUT itself mounted (a container's volume): the swap's rename of OUT fails (EBUSY), so
         * every save would fail after the training */
        char *up = fdpo_path_join(out, "..");
        int mounted = stat(up, &up_st) == 0 && mount_root(out, &st, up_st.st_dev);
        free(up);
        if (mounted)
            return fdpo_error("%s: a mount point (a file system or a bind mount): a save writes the new checkpoint "
                              "beside OUT and swaps the two directories, which a mount point refuses; give a directory "
                              "inside it as --out", out);
        if (refuse_mounts(out, st.st_dev)) return -1;
    }
    /* an OUT named X.tmp or X.old while a run on X holds X.lock: fdpo_dir_lock refused it */
    return recover_swap(out) || refuse_swap_names_taken(out) ? -1 : 0;
}

static fdpo_strv g_claimed;   /* directories this process claimed (every rank keeps the list) */

int fdpo_checkpoint_recover(const char *out) {
    if (fdpo_dist_size() > 1) {
        /* rank 0 takes the lock and repairs OUT; the others wait for it (a failure on rank 0
         * ends the job through the CLI's abort, so nobody waits forever) */
        for (size_t i = 0; i < g_claimed.n; i++) if (!strcmp(g_claimed.v[i], out)) return 0;
        fdpo_strv_push(&g_claimed, out);
        /* one OUT for the job, said before anything is made (beside the barrier below, which
         * every rank joins already): rank 0 alone writes the run, so a rank given another --out
         * got nothing there (its empty directory was the only trace) */
        if (fdpo_dist_check_same_path("--out", out)) return -1;   /* what it names: "x" and "./x" agree */
        if (fdpo_dist_rank() == 0) {
            if (fdpo_dir_lock(out, "--out")) return -1;
            if (start_checks(out)) { fdpo_dir_unlock(out); return -1; }
            fdpo_remove_stale_tmp(out);
        }
        return fdpo_dist_barrier();
    }
    if (fdpo_dir_locked(out)) return 0;   /* claimed (and recovered) earlier by this process */
    if (fdpo_dir_lock(out, "--out")) return -1;
    /* under the lock nobody else writes here: what an interrupted save or a killed writer left is stale */
    if (start_checks(out)) { fdpo_dir_unlock(out); return -1; }
    fdpo_remove_stale_tmp(out);
    return 0;
}

int fdpo_checkpoint_save_all(const char *out, const fdpo_gpt2 *m, const fdpo_tokenizer *tok,
                             const fdpo_train_state *s, const fdpo_adamw *opt) {
    return fdpo_checkpoint_save_run(out, m, tok, s, opt, NULL, 0);
}

/* files == NULL: a save of the same run (its files carried over); else the first save of a
 * run that replaces OUT's (the old run files left behind, these written) */
int fdpo_checkpoint_save_run(const char *out, const fdpo_gpt2 *m, const fdpo_tokenizer *tok,
                             const fdpo_train_state *s, const fdpo_adamw *opt, const fdpo_run_file *files,
                             size_t n_files) {
    /* claiming OUT is collective under MPI (every rank calls this); rank 0 alone writes */
    if (fdpo_dist_size() > 1 && (fdpo_checkpoint_recover(out) || fdpo_dist_rank() > 0)) return fdpo_dist_rank() > 0 ? 0 : -1;
    char *old = suffixed(out, ".old"), *tmp = suffixed(out, ".tmp");
    int rc = -1;
    if (fdpo_checkpoint_recover(out) || recover_swap(out) || refuse_swap_names_taken(out)) goto done;
    if (fdpo_weights_finite(out, m->lora ? &m->lora->view : m)) goto done;   /* before anything is written */
    /* OUT.tmp made here, not taken over (one made since the check is another's), and marked ours */
    if (mkdir(tmp, 0777) != 0) { fdpo_error("%s: cannot make the save's directory: %s", tmp, strerror(errno)); goto done; }
    if (make_save_mark(tmp)) goto done;
    if (fdpo_file_exists(out) && carry_over(out, tmp, 1, tok, files != NULL)) goto done;
    for (size_t i = 0; i < n_files; i++) {
        char *p = fdpo_path_join(tmp, files[i].name);
        int wrc = fdpo_write_file_atomic(p, files[i].data, files[i].len);
        free(p);
        if (wrc) goto done;
    }
    /* a LoRA run saves the adapter (PEFT files) and the adapter's optimizer state, not the
     * frozen base it was trained on (adapter_config.json names it) */
    if (m->lora ? fdpo_lora_save_peft(tmp, m, m->lora->base_model) : fdpo_checkpoint_save_model(tmp, m)) goto done;
    if (tok && fdpo_tokenizer_save_dir(tok, tmp)) goto done;
    if (s && fdpo_train_state_save(tmp, s, opt, m->lora ? &m->lora->view : m)) goto done;
    const int replaces = fdpo_file_exists(out);
    if (replaces) {
        /* OUT.old is this save's from here on: said in OUT.tmp before the rename makes it */
        char *save = fdpo_path_join(tmp, SAVE_MARK), *swap = fdpo_path_join(tmp, SWAP_MARK);
        int mrc = rename(save, swap) != 0 ? fdpo_error("%s: cannot rename to %s: %s", save, swap, strerror(errno)) : 0;
        if (!mrc) (void)fdpo_fsync_parent(swap, 0);
        free(save); free(swap);
        if (mrc) goto done;
        if (rename(out, old) != 0) { fdpo_error("%s: cannot move aside: %s", out, strerror(errno)); goto done; }
    }
    if (rename(tmp, out) != 0) { fdpo_error("%s: cannot rename %s into place: %s", out, tmp, strerror(errno)); goto done; }
    (void)fdpo_fsync_parent(out, 0);   /* the swap is done; the entries' durability is best effort */
    if (replaces && fdpo_remove_tree(old)) goto done;
    if (remove_marks(out)) goto done;   /* last: until OUT.old is gone, the mark says it is ours */
    rc = 0;
done:
    if (rc) fdpo_error_context("saving checkpoint %s", out);
    free(old); free(tmp);
    return rc;
}
