/* fdpo core: errors, RNG, files, timing, progress. Everything else builds on this. */
#ifndef FDPO_CORE_H
#define FDPO_CORE_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ----
 * Library functions return 0 (or a non-NULL pointer) on success and -1 (or NULL) on
 * failure after recording one message with fdpo_error(). The message names the file,
 * line, tensor, field or flag at fault, e.g. "model.safetensors: tensor 'wte.weight':
 * shape [10,4], config wants [257,4]". The CLI prints it as "fdpo: <message>" and exits 1. */
int fdpo_error(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* returns -1 */
/* Prefix the current message: "<prefix>: <old message>" (adds context on the way up). A
 * message holds a path of up to PATH_MAX whole and 2048 bytes more; the prefix is kept whole
 * and the end of the old message cut when both do not fit. */
int fdpo_error_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *fdpo_last_error(void);
void fdpo_clear_error(void);
/* The numeric FDPO_* environment knobs, parsed strictly in one place: *out = the integer in
 * the variable `name` (decimal, no blank before or after it), or def when it is unset or empty; a value
 * that is not such an integer in [min, max] is an error naming the variable and the value
 * ("FDPO_LMHEAD_CHUNK=abc: must be an integer >= 1"), *out = def. */
int fdpo_env_long(const char *name, long def, long min, long max, long *out);
/* An on/off knob read where no error can be returned (a kernel's A/B switch): 0 or 1 from
 * the variable (fdpo_env_long), def when unset or empty; any other value logs one warning
 * through the log hook ("FDPO_SLICES=abc: must be an integer in [0, 1]; using the default
 * (1)") and is def. Callers read it once. */
int fdpo_env_switch(const char *name, int def);
/* A knob that names one of a few settings (FDPO_HUGEPAGES=0|1|system, FDPO_SGEMM=onednn|openblas):
 * the index of the variable's value in choices (NULL-terminated), def when unset or empty;
 * any other value logs one warning through the log hook naming the choices and is def.
 * *warned (the caller's, starting at 0) keeps a knob read on every call to one warning. */
int fdpo_env_choice(const char *name, const char *const *choices, int def, int *warned);

/* ---- memory ----
 * Allocation never returns NULL. On out-of-memory the library calls the handler set with
 * fdpo_oom_set (the fdpo command installs one that prints "fdpo: out of memory ..." and
 * exits 1); the handler may exit/longjmp, or release memory and return, after which the
 * allocation is retried once. After a longjmp out of it, the next out of memory calls it
 * again; an out of memory inside the handler calls it again, nested (at most 16 levels, then
 * as without a handler). A level is known to be left when the stack has unwound past it: a
 * program that longjmps out of 16 handler calls in a row, each made deeper in its stack than
 * the one before, uses up the levels (the 17th is as without a handler). bytes is SIZE_MAX for a calloc whose count x size does not fit in
 * size_t. With no handler, or if the retry fails, the library logs an error through the
 * hook and calls abort() — it never calls exit(). */
typedef void (*fdpo_oom_fn)(size_t bytes, void *user);
void fdpo_oom_set(fdpo_oom_fn fn, void *user);
void *fdpo_malloc(size_t n);
void *fdpo_calloc(size_t count, size_t size);
void *fdpo_realloc(void *p, size_t n);
char *fdpo_strdup(const char *s);
/* Large long-lived buffers that a step streams through (model parameters, gradients,
 * optimizer moments, activations, the decoder's packed weights and key/value cache): zeroed
 * and 2 MiB aligned, so transparent huge pages can back them whole (~250 MB read per step in
 * ~120 TLB entries instead of ~60k; and one page size for all the arrays a pass streams).
 * By default (FDPO_HUGEPAGES unset or 1) advises MADV_HUGEPAGE; FDPO_HUGEPAGES=0 advises
 * MADV_NOHUGEPAGE, =system leaves the system's THP policy (measurements: src/core/alloc_large.c).
 * Unlike fdpo_malloc it returns NULL after fdpo_error when the memory is not there (no
 * out-of-memory handler): a caller reports the failure. Free with fdpo_free_large only.
 * fdpo_hugepages_advice: 1 (huge), 0 (4 KiB) or -1 (system) from FDPO_HUGEPAGES. src/core/alloc_large.c. */
void *fdpo_alloc_large(size_t bytes);
void fdpo_free_large(void *p);
/* fdpo_alloc_large with fdpo_malloc's out-of-memory behaviour (the handler, else abort):
 * for buffers made where there is no error path (a model's bf16 weight copies at its first
 * bf16 forward, its gradients at the first zero_grad, AdamW's moments). Free with
 * fdpo_free_large. */
void *fdpo_malloc_large(size_t bytes);
int fdpo_hugepages_advice(void);
/* Grow (never shrink) a buffer of fdpo_realloc_large's, keeping its contents; NULL p makes
 * one (zeroed). It grows in place within an address range reserved at its first allocation
 * (8x, at least 256 MiB; no memory until used), so the pages it has touched stay mapped where
 * they are: on a VM with shadow paging a moved mapping faults again page by page
 * (src/core/alloc_large.c). Out of memory: the handler, else abort (fdpo_malloc's rule).
 * Free with fdpo_free_large. */
void *fdpo_realloc_large(void *p, size_t bytes);

/* ---- string vectors ---- the one growable list of owned strings. */
typedef struct { char **v; size_t n, cap; } fdpo_strv;
const char *fdpo_strv_push(fdpo_strv *sv, const char *s);  /* copies s; returns the copy */
void fdpo_strv_free(fdpo_strv *sv);
/* Levenshtein distance of two strings, '-' and '_' counted equal: the one measure of "did you
 * mean" (a flag name, a misspelt key of a data file). */
size_t fdpo_edit_distance(const char *a, const char *b);
/* 0 when strtod/strtol would read s otherwise than as the decimal number it shows: leading
 * blanks, or hexadecimal after an optional sign ("0x10" is 16 to strtod, "0x1p-3" 0.125),
 * which no flag, CSV cell or reward program means; else 1. The number readers call it first. */
int fdpo_number_is_decimal(const char *s);
/* The one reader of a number written as text (a flag's value, a list item, a lexicon weight,
 * a part of LO:HI:K): the whole text, decimal, finite, and not a nonzero that rounds to 0.
 * 0, or -1 after fdpo_error("WHERE: 'TEXT' is not a decimal number" / "is not a finite
 * number" / "is out of range (it rounds to 0 ...)"); where names the flag, file or key. */
int fdpo_parse_number(const char *where, const char *text, double *out);
/* The same for a whole number (strtol, base 10): "WHERE: 'TEXT' is not an integer". */
int fdpo_parse_long(const char *where, const char *text, long *out);

/* ---- index tables ----
 * The one hash table of libfdpo: open addressing with linear probing over items that live in
 * the caller's own arrays. A slot holds item index + 1 (0 = empty); the table stores no keys,
 * so a lookup is a probe loop in which the caller compares its item:
 *     for (size_t i = fdpo_itab_first(&t, h); t.slot[i]; i = fdpo_itab_next(&t, i))
 *         if (same_key(t.slot[i] - 1)) return t.slot[i] - 1;
 *     fdpo_itab_set(&t, i, item);     (not found: i is the empty slot where it goes)
 * Capacity is a power of two kept at load <= 1/2 (fdpo_itab_reserve). */
typedef struct { uint32_t *slot; size_t cap, n; } fdpo_itab;
void fdpo_itab_init(fdpo_itab *t, size_t n_items);           /* room for n_items */
static inline size_t fdpo_itab_first(const fdpo_itab *t, uint64_t hash) { return (size_t)(hash & (t->cap - 1)); }
static inline size_t fdpo_itab_next(const fdpo_itab *t, size_t i) { return (i + 1) & (t->cap - 1); }
static inline void fdpo_itab_set(fdpo_itab *t, size_t slot, size_t item) {
    if (!t->slot[slot]) t->n++;
    t->slot[slot] = (uint32_t)item + 1;
}
/* Make room for n_items; when the table grows, the items in it are placed again with
 * hash_of(item, ctx), so slots found before are stale: probe again. Returns 1 if it grew. */
int fdpo_itab_reserve(fdpo_itab *t, size_t n_items, uint64_t (*hash_of)(size_t item, const void *ctx), const void *ctx);
void fdpo_itab_clear(fdpo_itab *t);   /* empty, same capacity */
void fdpo_itab_free(fdpo_itab *t);

/* The one default seed of every options struct (the CLI's --seed default, docs/cli.md). */
#define FDPO_DEFAULT_SEED 1337

/* ---- RNG ---- xoshiro256** seeded with splitmix64: same seed -> same stream everywhere. */
typedef struct { uint64_t s[4]; } fdpo_rng;
void fdpo_rng_seed(fdpo_rng *r, uint64_t seed);
uint64_t fdpo_rng_u64(fdpo_rng *r);
double fdpo_rng_uniform(fdpo_rng *r);          /* [0, 1), 53 bits */
double fdpo_rng_normal(fdpo_rng *r);           /* N(0,1), Box-Muller, no cached spare */
uint64_t fdpo_rng_below(fdpo_rng *r, uint64_t n); /* uniform in [0, n), unbiased */
void fdpo_rng_shuffle(fdpo_rng *r, size_t *idx, size_t n); /* Fisher-Yates */

/* ---- files ---- */
/* Read a whole file; *len gets its size. Adds a NUL after the data (not counted).
 * Anything but a regular file (a FIFO, a directory, a device) is refused, never waited on. */
char *fdpo_read_file(const char *path, size_t *len);
/* fopen(path, "rb") for streaming readers, with the same regular-file check. */
FILE *fdpo_open_regular(const char *path);
/* An error (naming path) when path exists and is neither a regular file nor a directory:
 * every writer here renames a new file over its path, which would replace a device (as root,
 * /dev/null itself), FIFO or socket. */
int fdpo_refuse_special_file(const char *path);
/* fsync the directory that holds path (after a rename into it: the new entry's durability).
 * -1 on failure; with report, after an error naming the directory (best-effort callers pass
 * 0 and keep the error message as it was). */
int fdpo_fsync_parent(const char *path, int report);
/* Atomic write: PATH.tmp.<pid>, fwrite, fflush, fsync, rename over PATH, fsync the dir.
 * A crash leaves either the old file or the new one, never half of one. */
int fdpo_write_file_atomic(const char *path, const void *data, size_t len);
/* Streaming version: open returns a FILE* on a temp name; commit fsyncs and renames;
 * abort removes the temp file. */
typedef struct { FILE *f; char *path; char *tmp_path; } fdpo_atomic_file;
int fdpo_atomic_open(fdpo_atomic_file *af, const char *path);
int fdpo_atomic_commit(fdpo_atomic_file *af);
void fdpo_atomic_abort(fdpo_atomic_file *af);
/* Outputs of one run replaced together: every temp file written out and synced first (a
 * full disk fails here, before any is renamed), then each swapped with its old file
 * (RENAME_EXCHANGE; the old one removed once all are in); on a failure, a rename's included,
 * those already in are put back (a file that was new removed) and every old file stays.
 * Only a file system without the exchange keeps a replaced file (with a warning). Files not
 * opened (path NULL) are skipped. */
int fdpo_atomic_commit_all(fdpo_atomic_file *const *afs, size_t n);
/* The same for a set in one directory that must never be left mixed by a kill (a
 * tokenizer's files): before the first rename it writes and syncs DIR/.fdpo-set.tmp.PID,
 * naming each file with the content hash of its new and its old version, and removes
 * it last. A process killed between the
 * renames leaves it; the next fdpo_remove_stale_tmp of DIR (fdpo_atomic_set_recover) puts
 * the old set back, or finishes the new one once an old file is gone, instead of removing
 * the old files that wait at their temp names. A name holding a file that is neither version
 * (written since the kill) stops it: no name of the set is touched, and the versions at the
 * temp names are renamed to NAME.kept.PID. Files in several directories: no journal. */
int fdpo_atomic_commit_set(fdpo_atomic_file *const *afs, size_t n);
/* Undo (or finish) the set dead process pid was committing in dir: 0 when there was none
 * or it is done (the journal removed), -1 when a rename failed or the journal is not of this
 * build's format (logged; all is left, the journal included, so loads keep refusing). */
int fdpo_atomic_set_recover(const char *dir, long pid);
/* 1 when the set journal at path (DIR/.fdpo-set.tmp.PID) is one fdpo_atomic_set_recover can act
 * on (this build's format, or empty, or gone), 0 when it is not (another format: an earlier
 * build's, another file; or it cannot be read), which no cleanup touches. */
int fdpo_atomic_set_journal_readable(const char *path);
/* Large files written past the page cache, atomically as fdpo_atomic_file (PATH.tmp.<pid>,
 * fsync, rename, fsync the dir): O_DIRECT through an aligned bounce buffer, so the kernel
 * does not copy every byte into the page cache on a core the caller computes on (a 500 MB
 * checkpoint: ~1 s of CPU buffered, ~0.02 s direct). A file system that refuses O_DIRECT
 * gets plain writes through the same buffer. Errors name the file. */
typedef struct { int fd, direct, err; char *path, *tmp_path; unsigned char *buf; size_t n; } fdpo_direct_file;
int fdpo_direct_open(fdpo_direct_file *f, const char *path);
int fdpo_direct_write(fdpo_direct_file *f, const void *data, size_t len);
int fdpo_direct_commit(fdpo_direct_file *f);
void fdpo_direct_abort(fdpo_direct_file *f);
int fdpo_mkdir_p(const char *path);
/* fdpo_mkdir_p that also appends to (*made, *n_made) each directory its own mkdir() created,
 * outermost first (not the path's text: "new/../keep" makes only "new"); free each and the
 * array. made may be NULL. */
int fdpo_mkdir_p_made(const char *path, char ***made, size_t *n_made);
/* An option's path given as "" (NULL is "not given" and passes): "FLAG: an empty path", as
 * the CLI says; the *_opts_check functions call it for each path they take (an empty path
 * failed later as ": cannot open", or after all the work as ": rename failed"). */
int fdpo_path_check(const char *flag, const char *path);
/* fdpo_path_check for a path a run records (the training commands' training_state.json, with
 * where it resolved): refused too when it is not valid UTF-8, as given or as the absolute path
 * it resolves to (fdpo_path_absolute: a relative path under a working directory with such a
 * name). JSON holds UTF-8 text only, and a lossy escape would not read back as the same path on
 * --resume. Commands that record no path (score, merge, generate) take any path. */
int fdpo_path_record_check(const char *flag, const char *path);
/* fdpo_path_check's test of the path's own text only, for a path recorded as given (eval's
 * e.json, the CLI's check of every path flag): "FLAG: the path is not valid UTF-8 (...)" */
int fdpo_path_utf8_check(const char *flag, const char *path);
/* path as an absolute path without "." and "..": its deepest existing part resolved by
 * realpath, the rest appended (malloc'd; path itself when there is no working directory) */
char *fdpo_path_absolute(const char *path);
int fdpo_file_exists(const char *path);
/* Exclusive, non-blocking flock on DIR.lock (beside DIR: DIR itself is swapped by rename),
 * held until fdpo_dir_unlock or process exit; the file records the holder's pid. Taking a
 * lock this process already holds is a no-op. Refused: "FLAG DIR: in use by another run
 * (pid N holds DIR.lock)". flag names the option that chose DIR ("--out"). Refused before
 * any file is made: a DIR whose last part is "." or ".." (or "/"; DIR.lock and a save's
 * DIR.tmp are DIR's text plus a suffix), and a DIR that exists and is not a directory.
 * A lock file that guards nothing (DIR missing or empty: a run that failed at its start) is
 * removed when the lock is released, by fdpo_dir_unlock or at process exit, and DIR with it
 * when it did not exist when locked and is still empty. DIR.lock is never opened through a
 * symbolic link; one that is a link, no regular file, or a file holding anything but a pid
 * line (a user's file at that name) is refused naming it. Refused too: a DIR named X.tmp or
 * X.old while another process's run on the directory X holds X.lock (each save of that run
 * writes or moves a directory there), as is such an output file (fdpo_out_file_claim). */
/* Refused too: a DIR or FILE inside such an X.tmp or X.old (the save moves it from under its
 * writer, or it lands in X's checkpoint). */
int fdpo_dir_lock(const char *dir, const char *flag);   /* also refuses a DIR that is a symbolic link */
/* A directory that a command writes into without claiming it, as runs share it (dpo's
 * --ref-cache-dir): refused inside the directory of another process's running run, and at or
 * inside X.tmp or X.old of a running run on X, this process's own included (its first save
 * found the directory in its way, after all its steps). */
int fdpo_shared_dir_check(const char *dir, const char *flag);
void fdpo_dir_unlock(const char *dir);
int fdpo_dir_locked(const char *dir);
/* Who else holds DIR.lock now: the pid it records, -1 for a holder that records none (another
 * tool's flock), 0 when no other process holds it (this process's own lock is not counted). */
long fdpo_dir_lock_holder(const char *dir);
/* An output file a command writes at its end (--out FILE): held from the command's start
 * like a run directory (the flock on FILE.lock), so a second run naming the same file is
 * refused while the first works, instead of one silently replacing the other's output.
 * Says (info) when FILE exists and will be replaced; refuses a directory, and a file this
 * process has already claimed (two outputs of one run named the same file, under the same
 * or another spelling of its path), and a FILE that is the lock file of another output this
 * process claimed, or whose FILE.lock is one (in either order).
 * fdpo_out_file_release drops the lock and removes FILE.lock (a killed run leaves it; the
 * next run takes it over). */
/* Also refused: a FILE that is a symbolic link (the rename would replace the link) or the
 * lock file another running process holds (its claim would be dropped). Removes FILE's stale
 * FILE.tmp.PID files (fdpo_remove_stale_tmp_of). */
int fdpo_out_file_claim(const char *path, const char *flag);
void fdpo_out_file_release(const char *path);
/* What exit does for this process's locks, for a caller that ends by a signal instead (the
 * CLI's SIGINT/SIGTERM path, which skips atexit): each lock file that guards nothing (an
 * output file's, an empty run directory's) is removed; a directory's that holds files stays. */
void fdpo_locks_release_unused(void);
/* Remove DIR/NAME.tmp.PID files (fdpo_atomic_open's temp names) whose writer PID is no
 * longer running: what a kill or ENOSPC left behind. Logs each; returns how many. A set
 * that PID was committing (its DIR/.fdpo-set.tmp.PID, fdpo_atomic_commit_set) is first put
 * back whole; while that fails, that PID's files stay. */
long fdpo_remove_stale_tmp(const char *dir);
/* The same for one file's temp names only (PATH.tmp.PID beside PATH): an output file's
 * claim (fdpo_out_file_claim) clears what a killed writer of that file left. */
long fdpo_remove_stale_tmp_of(const char *path);
/* The writer's PID when name is a temp name NAME.tmp.PID (digits after the last ".tmp."),
 * else 0: notes.tmp.md and exp.tmp.v2 are a user's names. */
long fdpo_tmp_name_pid(const char *name);
/* JSON written atomically: pretty-printed (pretty = 1) or on one line, with a final
 * newline. root is a cJSON tree (cJSON.h); the caller keeps ownership. */
struct cJSON;
/* root as JSON text with a final newline (*len bytes, NUL-terminated; free()), NULL when
 * cJSON cannot format it: what fdpo_write_json_atomic writes, for a caller that writes later. */
char *fdpo_json_text(const struct cJSON *root, int pretty, size_t *len);
int fdpo_write_json_atomic(const char *path, const struct cJSON *root, int pretty);
/* root as JSON text (free() it), every number written as text that reads back to the same
 * double: as cJSON writes it where that is exact (whole numbers as digits), else the shortest
 * such text (fdpo_fmt_double); null when not finite, as JSON has no NaN. cJSON's
 * own printing keeps 15 digits whenever they come within an ulp or two, so about one value
 * in eight was written changed: a reward copied through fdpo pairs, a --lr saved for a
 * resume. What every JSON output of fdpo is printed with (fdpo_json_text too). */
char *fdpo_json_print(const struct cJSON *root, int pretty);
/* Whether cJSON writes the whole number v as a number that reads back as v: cJSON prints 15
 * significant digits (17 only when the 15 read back within a relative DBL_EPSILON), so a
 * number of 16 digits or more can come back changed: 2^53 - 1 is written 9.00719925474099e+15
 * and 12345678901234567 (past 2^53) is no double at all. True for |v| < 10^15. */
int fdpo_json_whole_exact(long long v);
/* obj[key] = v, a whole number (a seed): a JSON number where fdpo_json_whole_exact, else its
 * digits as a string, as training states keep one (fdpo_settings_int). */
void fdpo_json_add_whole(struct cJSON *obj, const char *key, long long v);
/* One non-blank JSONL line line[0..n) -> its object (the caller cJSON_Deletes it), or NULL
 * after an error naming "path:line_no" and what is wrong: "invalid JSON near column C",
 * "unexpected text after the JSON object at column C" (a second object on the line would be
 * dropped silently) or "expected a JSON object", followed by expect when not NULL (the fields
 * the format wants, as {"prompt", "chosen", "rejected"}) and ", got an array" (a string, a
 * number, a boolean, null) for a value that is not an object; "invalid JSON: the number '01'
 * at column C has a leading zero" for a number outside JSON's grammar (01, 0., 1.e5: cJSON
 * reads them with strtod, Python's json refuses them); a raw control character (a 0 byte
 * between values too); a key twice; "invalid UTF-8 (byte 0xE9 at column C)" anywhere in the
 * text, also in a key or a field the caller does not read (Python refuses the file); a UTF-8
 * byte order mark starting the line, column 1, but the file's own at the start of line_no 1
 * (which the caller hands on with line 1, or not at all), once: a second is refused.
 * Columns count bytes from 1; a text of several lines (a --lexicon file) is named by the line
 * and column where it goes wrong. The one parser of a JSONL line for every JSONL reader:
 * preference, SFT, prompts, unpaired (KTO), scored samples, tokenize --jsonl-field, and
 * report's metrics.jsonl and samples (which warn with the message and skip the line; they
 * take invalid UTF-8, shown as U+FFFD: fdpo_jsonl_parse_object_any_bytes). */
struct cJSON *fdpo_jsonl_parse_object(const char *path, size_t line_no, const char *line, size_t n, const char *expect);
/* The same checks for a whole JSON text[0..n) whose root may be any value (an eval file, a
 * lab JSON array, a run's settings): every one above but "expected a JSON object", with
 * "unexpected text after the JSON value" (a second document would be dropped silently) and
 * the key twice at any depth (cJSON's lookups read the first copy, Python's json the last).
 * NULL after the error; the caller cJSON_Deletes the value. */
struct cJSON *fdpo_json_parse_value(const char *path, size_t line_no, const char *text, size_t n);
/* cJSON decodes "\u0000" into a NUL and every string silently ends there (chosen and
 * rejected can then look identical, a prompt loses its tail); so does a raw 0 byte inside a
 * string. Returns 0 when raw[0..n) (the text root was parsed from) has neither; otherwise -1
 * after an error "WHERE: field 'PATH' contains a NUL character (\u0000)" naming the first
 * such field (e.g. 'chosen[1].content'). Every JSONL reader calls it after the parse. */
int fdpo_jsonl_check_nul(const char *where, const char *raw, size_t n, const struct cJSON *root);
/* The same for a value that is itself a field's JSON text (a prompt kept as the text of its
 * messages): PATH starts with field ('prompt[0].content'), and the message has no WHERE (the
 * caller adds its FILE:LINE). */
int fdpo_jsonl_check_nul_in(const char *field, const char *raw, size_t n, const struct cJSON *root);
/* path_join returns a malloc'd "a/b". */
char *fdpo_path_join(const char *a, const char *b);
/* The place PATH names, as an absolute path (malloc'd): the real path of its directory (the
 * deepest part that exists resolved by realpath, symlinks followed; the rest added with '.'
 * and '..' taken lexically), joined with its last component, which is not followed (a lock or
 * a swap works beside the name given). A trailing '/' is dropped; a last component '.' or '..'
 * names its directory. So "x", "./x", "x/" and "sub/../x" in one working directory give the
 * same text, and "x" in two working directories two texts. An absolute PATH is kept as
 * written ("//" and "/./" collapsed, a trailing '/' dropped): ranks on other nodes may
 * reach one directory through other symlinks or mounts. Never fails: where even the
 * working directory cannot be resolved, the part that could not is kept as given. */
char *fdpo_path_identity(const char *path);
/* FNV-1a 64 over bytes, chainable: h = fdpo_hash64(h, data, n), start with FDPO_HASH_INIT. */
#define FDPO_HASH_INIT 0xcbf29ce484222325ULL
uint64_t fdpo_hash64(uint64_t h, const void *data, size_t n);
/* 1 if s[0..n) is valid UTF-8; fdpo_utf8_first_invalid gives the offset of the first
 * invalid byte (n if none), for messages that point at it. */
int fdpo_utf8_valid(const char *s, size_t n);
size_t fdpo_utf8_first_invalid(const char *s, size_t n);

/* ---- time, threads, progress ---- */
double fdpo_now(void); /* monotonic seconds */
/* This machine's physical memory in bytes (0 when unknown): a count whose records alone take
 * more is refused naming its flag (the out-of-memory handler's line names no flag). */
double fdpo_ram_bytes(void);
/* Set OpenMP + OpenBLAS threads (n <= 0: the default count). Either way the count is capped
 * at OMP_THREAD_LIMIT (a warning through the log hook says so) and OpenMP's dynamic team
 * sizing is turned off: the GEMM libraries split their work by the thread count and need
 * teams of that size. fdpo_threads_settle() does the same (keeping the count) when the
 * settings allow a smaller team again, e.g. in a program that never called
 * fdpo_set_threads; the GEMM entry points call it. An n above the CPUs the process's
 * affinity allows (narrowed by taskset or an MPI launcher's binding) is kept, with one
 * warning through the log hook: the threads then share those CPUs. */
void fdpo_set_threads(int n);
/* The range a requested thread count (--threads) must be in: 0 (OpenMP's default,
 * OMP_NUM_THREADS or all cores) to FDPO_THREADS_MAX. Outside it an error naming --threads
 * and the range: the CLI (every command's --threads) and fdpo_train_opts_check both check
 * here, so a count never reaches fdpo_set_threads's int wrapped (2^31 ran on the default count). */
#define FDPO_THREADS_MAX 4096
int fdpo_threads_check(long n);
void fdpo_threads_settle(void);
int fdpo_get_threads(void);

/* ---- log and progress hook ----
 * The library never writes to stdout/stderr and never exits: it reports through one hook
 * (in the spirit of llama_log_set). The fdpo command installs a terminal printer
 * (src/cli/term.c); a program embedding libfdpo installs its own or none (then nothing is
 * shown). Hooks are process-wide; set them before starting work. */
typedef enum { FDPO_LOG_DEBUG = 0, FDPO_LOG_INFO = 1, FDPO_LOG_WARN = 2, FDPO_LOG_ERROR = 3 } fdpo_log_level;
typedef void (*fdpo_log_fn)(fdpo_log_level level, const char *msg, void *user);
void fdpo_log_set(fdpo_log_fn fn, void *user);
/* One message, no trailing newline ("dpo: 120 train pairs, ..."). */
void fdpo_log(fdpo_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Progress of long work: step/total, elapsed and ETA, and the metrics that apply (NaN for
 * those that do not). `phase` names the work ("train", "sample", "ref-cache", "round 2/5");
 * done = 1 on the last call of a phase. */
typedef struct {
    const char *phase;
    size_t step, total;
    double elapsed, eta;                      /* seconds; eta < 0: unknown */
    double loss, lr, grad_norm, tokens_per_sec;
    const char *extra;                        /* further "key value" text, or NULL */
    int done;
} fdpo_progress_info;
typedef void (*fdpo_progress_fn)(const fdpo_progress_info *info, void *user);
void fdpo_progress_set(fdpo_progress_fn fn, void *user);

/* A progress reporter for one phase: start, step per unit of work, end. */
typedef struct { double t_start; size_t total; const char *phase; } fdpo_progress;
void fdpo_progress_start(fdpo_progress *p, const char *phase, size_t total);
void fdpo_progress_step(fdpo_progress *p, size_t step, double loss, double lr, double grad_norm,
                        double tokens_per_sec, const char *extra);
void fdpo_progress_end(fdpo_progress *p);

/* Format a double / a float as the shortest text that reads back to the same value (for
 * JSON: 1e-05, not 9.99999974e-06; non-finite values become null). */
void fdpo_fmt_double(char *buf, size_t n, double v);
void fdpo_fmt_float(char *buf, size_t n, float v);

/* A double as fdpo_fmt_double's text, held by value for one expression, for messages:
 * fdpo_error("--x: %s is not in [0, 1]", fdpo_shortest(x).s). %g prints values one ulp apart
 * alike (1.0000000000000002 as 1), which makes "1 is not in [0, 1]"; non-finite values print
 * as inf / nan here, not JSON's null. */
typedef struct { char s[32]; } fdpo_number_text;
fdpo_number_text fdpo_shortest(double v);

#ifdef __cplusplus
}
#endif

#endif
