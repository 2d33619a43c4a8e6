/* Error messages: one per thread, set where the fault is found, context added on the way up. */
#include <limits.h>
#include <stdarg.h>
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

static int oom(size_t n) {
    static _Thread_local int in_handler;
    if (g_oom && !in_handler) { in_handler = 1; g_oom(n, g_oom_user); in_handler = 0; return 1; }
    fdpo_log(FDPO_LOG_ERROR, "out of memory allocating %zu bytes", n);
    abort();
}
void *fdpo_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p && oom(n)) p = malloc(n ? n : 1);
    if (!p) { fdpo_log(FDPO_LOG_ERROR, "out of memory allocating %zu bytes", n); abort(); }
    return p;
}
void *fdpo_calloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p && oom(count * size)) p = calloc(count ? count : 1, size ? size : 1);
    if (!p) { fdpo_log(FDPO_LOG_ERROR, "out of memory allocating %zu bytes", count * size); abort(); }
    return p;
}
void *fdpo_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q && oom(n)) q = realloc(p, n ? n : 1);
    if (!q) { fdpo_log(FDPO_LOG_ERROR, "out of memory allocating %zu bytes", n); abort(); }
    return q;
}
void *fdpo_malloc_large(size_t n) {
    void *p = fdpo_alloc_large(n);
    if (!p && oom(n)) p = fdpo_alloc_large(n);
    if (!p) { fdpo_log(FDPO_LOG_ERROR, "out of memory allocating %zu bytes", n); abort(); }
    return p;
}
void *fdpo_realloc_large_try(void *p, size_t bytes); /* alloc_large.c */
void *fdpo_realloc_large(void *p, size_t n) {
    void *q = fdpo_realloc_large_try(p, n);
    if (!q && oom(n)) q = fdpo_realloc_large_try(p, n);
    if (!q) { fdpo_log(FDPO_LOG_ERROR, "out of memory allocating %zu bytes", n); abort(); }
    return q;
}
char *fdpo_strdup(const char *s) { size_t n = strlen(s) + 1; char *d = fdpo_malloc(n); memcpy(d, s, n); return d; }
