/* Error messages: one per thread, set where the fault is found, context added on the way up. */
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"

/* A path of up to PATH_MAX and what is said of it, whole: "PATH:LINE: prompt[0].role ..."
 * lost its line and file name past 500 bytes of path (the context was cut at 500) */
static _Thread_local char err_msg[PATH_MAX + 2048];

int fdpo_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    return -1;
}

int fdpo_error_context(const char *fmt, ...) {
    char prefix[PATH_MAX + 512], old[sizeof err_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err_msg, sizeof old);
    /* the prefix whole (a path and its line); the message's end is cut when both do not fit,
     * and at least its first 1500 bytes are kept */
    const size_t np = strlen(prefix);
    snprintf(err_msg, sizeof err_msg, "%s: %.*s", prefix, (int)(sizeof err_msg - np - 3), old[0] ? old : "error");
    return -1;
}

const char *fdpo_last_error(void) { return err_msg[0] ? err_msg : "unknown error"; }
void fdpo_clear_error(void) { err_msg[0] = 0; }

/* Out of memory: every caller of fdpo_malloc relies on getting memory, so there is no
 * NULL to return. The program that embeds libfdpo decides what happens (docs/ARCHITECTURE.md):
 * its handler may exit, longjmp, or free a reserve and return (then the allocation is tried
 * once more). Without a handler, or when the retry fails too, the library logs through the
 * hook and abort()s: the equivalent of an unhandled std::bad_alloc, never a silent exit(). */
static fdpo_oom_fn g_oom;
static void *g_oom_user;
void fdpo_oom_set(fdpo_oom_fn fn, void *user) { g_oom = fn; g_oom_user = user; }

/* 1: the handler ran and returned (retry the allocation); 0: no handler, or too deeply
 * nested (the caller logs and aborts). An out of memory inside the handler (one that
 * allocates through fdpo) calls it again, nested, up to OOM_NESTING levels. A handler that
 * longjmps out never comes back to close its level, so each level is kept with its
 * caller's stack frame: a frame not above the current one (the stack grows down) is no
 * longer on the stack, so that level was left by a longjmp and is dropped. (A plain "in the
 * handler" flag stayed set after the first longjmp: every later out of memory in that
 * thread aborted without calling the handler.) A frame above the current one may be a
 * stale level too, when the next out of memory comes from deeper in the stack; those count
 * as nested until an out of memory at or above them drops them, so OOM_NESTING is generous. */
enum { OOM_NESTING = 16 };
static int oom(size_t n) {
    static _Thread_local uintptr_t level_frame[OOM_NESTING];
    static _Thread_local size_t levels;
    const uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    while (levels && level_frame[levels - 1] <= here) levels--;
    if (!g_oom || levels == OOM_NESTING) return 0;
    const size_t level = levels++;
    level_frame[level] = here;
    g_oom(n, g_oom_user);
    levels = level;   /* returned: this level and any that nested calls left are over */
    return 1;
}
static _Noreturn void oom_abort(size_t n) {
    fdpo_log(FDPO_LOG_ERROR, "out of memory allocating %zu bytes", n);
    abort();
}
void *fdpo_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p && oom(n)) p = malloc(n ? n : 1);
    if (!p) oom_abort(n);
    return p;
}
void *fdpo_calloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    /* count * size wraps when it does not fit (2^33 x 2^31 said "0 bytes"): the handler gets
     * SIZE_MAX, at least, and the log the two factors */
    const int overflow = size && count > SIZE_MAX / size;
    if (!p && oom(overflow ? SIZE_MAX : count * size)) p = calloc(count ? count : 1, size ? size : 1);
    if (!p && overflow) {
        fdpo_log(FDPO_LOG_ERROR, "out of memory allocating %zu x %zu bytes (more than SIZE_MAX)", count, size);
        abort();
    }
    if (!p) oom_abort(count * size);
    return p;
}
void *fdpo_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q && oom(n)) q = realloc(p, n ? n : 1);
    if (!q) oom_abort(n);
    return q;
}
void *fdpo_malloc_large(size_t n) {
    void *p = fdpo_alloc_large(n);
    if (!p && oom(n)) p = fdpo_alloc_large(n);
    if (!p) oom_abort(n);
    return p;
}
void *fdpo_realloc_large_try(void *p, size_t bytes); /* alloc_large.c */
void *fdpo_realloc_large(void *p, size_t n) {
    void *q = fdpo_realloc_large_try(p, n);
    if (!q && oom(n)) q = fdpo_realloc_large_try(p, n);
    if (!q) oom_abort(n);
    return q;
}
char *fdpo_strdup(const char *s) { size_t n = strlen(s) + 1; char *d = fdpo_malloc(n); memcpy(d, s, n); return d; }
