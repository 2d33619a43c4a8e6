/* The report's growable string buffer (report_internal.h), used by both halves of the
 * report: load.c (CSV cells, warnings) and render.c (the page). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "report/report_internal.h"

void fdpo_rp_put(rp_buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        b->p = fdpo_realloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
void fdpo_rp_puts(rp_buf *b, const char *s) { fdpo_rp_put(b, s, strlen(s)); }
void fdpo_rp_printf(rp_buf *b, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) { fdpo_rp_put(b, tmp, (size_t)n); return; }
    char *big = fdpo_malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    fdpo_rp_put(b, big, (size_t)n);
    free(big);
}
void fdpo_rp_html_n(rp_buf *b, const char *s, size_t n) {
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        const char *rep = NULL;
        switch (s[i]) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&#39;"; break;
        default: break;
        }
        if (rep) { fdpo_rp_put(b, s + start, i - start); fdpo_rp_puts(b, rep); start = i + 1; }
    }
    fdpo_rp_put(b, s + start, n - start);
}
void fdpo_rp_html(rp_buf *b, const char *s) { fdpo_rp_html_n(b, s, strlen(s)); }
void fdpo_rp_num(rp_buf *b, double v) {
    if (!isfinite(v)) { fdpo_rp_puts(b, "\xe2\x80\x93"); return; }
    if (v == floor(v) && fabs(v) < 1e7) fdpo_rp_printf(b, "%.0f", v);
    else fdpo_rp_printf(b, "%.4g", v);
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    size_t k = s[0] < 0x80 ? 1 : (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3 : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (!k || k > n) return 0;
    return fdpo_utf8_valid((const char *)s, k) ? k : 0;
}

void fdpo_rp_fix_utf8(rp_buf *b) {
    if (!b->p || fdpo_utf8_valid(b->p, b->n)) return;
    rp_buf out = {0};
    const unsigned char *s = (const unsigned char *)b->p;
    size_t i = 0, start = 0;
    while (i < b->n) {
        size_t k = utf8_seq(s + i, b->n - i);
        if (k) { i += k; continue; }
        fdpo_rp_put(&out, b->p + start, i - start);
        fdpo_rp_puts(&out, "\xef\xbf\xbd");     /* U+FFFD, as a browser would show it */
        start = ++i;
    }
    fdpo_rp_put(&out, b->p + start, b->n - start);
    free(b->p);
    *b = out;
}

