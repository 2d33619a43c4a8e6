/* The page's "Summary" section: a notes file (e.g. the conclusion the sentiment demo
 * generates from its measured numbers) rendered from a small Markdown subset, so a run can
 * put its own written findings on the page it draws. */
#include <string.h>
#include "report/report_internal.h"

/* Inline text: **bold** and `code`; everything else HTML-escaped. */
static void notes_inline(rp_buf *b, const char *s, size_t n) {
    int bold = 0, code = 0;
    size_t run = 0; /* start of pending plain text */
    for (size_t i = 0; i < n; i++) {
        if (!code && i + 1 < n && s[i] == '*' && s[i + 1] == '*') {
            fdpo_rp_html_n(b, s + run, i - run);
            fdpo_rp_puts(b, bold ? "</strong>" : "<strong>");
            bold = !bold;
            run = ++i + 1;
        } else if (s[i] == '`') {
            fdpo_rp_html_n(b, s + run, i - run);
            fdpo_rp_puts(b, code ? "</code>" : "<code>");
            code = !code;
            run = i + 1;
        }
    }
    fdpo_rp_html_n(b, s + run, n - run);
    if (code) fdpo_rp_puts(b, "</code>");
    if (bold) fdpo_rp_puts(b, "</strong>");
}

/* Lines: "# T" / "## T" / "### T" headings (h2..h4), "- item" list items and, under one,
 * indented "  - sub-item"s (one level: the demo's conclusion nests its significance notes so),
 * ``` fenced blocks (preformatted), blank lines end a paragraph; other lines join into
 * paragraphs. In a list the last item's <li> stays open for sub-items (sub: their <ul>). */
void fdpo_rp_notes(rp_buf *b, const char *text) {
    fdpo_rp_puts(b, "<section id=\"summary\" class=\"notes\">\n");
    enum { NONE, PARA, LIST, PRE } st = NONE;
    int sub = 0;
    static const char *const CLOSE[] = {"", "</p>\n", "</li>\n</ul>\n", "</pre>\n"};
#define CLOSE_ST() do { if (sub) fdpo_rp_puts(b, "</ul>\n"); sub = 0; fdpo_rp_puts(b, CLOSE[st]); } while (0)
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n'), *e = nl ? nl : p + strlen(p);
        size_t n = (size_t)(e - p);
        if (n && p[n - 1] == '\r') n--;
        size_t ind = 0;
        while (ind < n && p[ind] == ' ') ind++;
        int item = ind + 2 <= n && p[ind] == '-' && p[ind + 1] == ' ';
        if (st == PRE) {
            if (n >= 3 && !strncmp(p, "```", 3)) { fdpo_rp_puts(b, CLOSE[PRE]); st = NONE; }
            else { fdpo_rp_html_n(b, p, n); fdpo_rp_puts(b, "\n"); }
        } else if (n >= 3 && !strncmp(p, "```", 3)) {
            CLOSE_ST();
            fdpo_rp_puts(b, "<pre>");
            st = PRE;
        } else if (n == 0) {
            CLOSE_ST();
            st = NONE;
        } else if (p[0] == '#') {
            size_t level = 0;
            while (level < n && p[level] == '#') level++;
            size_t skip = level < n && p[level] == ' ' ? level + 1 : level;
            int h = level >= 3 ? 4 : (int)level + 1;
            CLOSE_ST();
            st = NONE;
            fdpo_rp_printf(b, "<h%d>", h);
            notes_inline(b, p + skip, n - skip);
            fdpo_rp_printf(b, "</h%d>\n", h);
        } else if (item && ind >= 2 && st == LIST) {    /* a sub-item of the open item */
            if (!sub) { fdpo_rp_puts(b, "\n<ul>\n"); sub = 1; }
            fdpo_rp_puts(b, "<li>");
            notes_inline(b, p + ind + 2, n - ind - 2);
            fdpo_rp_puts(b, "</li>\n");
        } else if (item) {
            if (st != LIST) { CLOSE_ST(); fdpo_rp_puts(b, "<ul>\n"); st = LIST; }
            else { if (sub) fdpo_rp_puts(b, "</ul>\n"); sub = 0; fdpo_rp_puts(b, "</li>\n"); }
            fdpo_rp_puts(b, "<li>");
            notes_inline(b, p + ind + 2, n - ind - 2);
        } else {
            if (st == LIST) { CLOSE_ST(); st = NONE; }
            if (st == NONE) { fdpo_rp_puts(b, "<p>"); st = PARA; } else fdpo_rp_puts(b, "\n");
            notes_inline(b, p, n);
        }
        p = nl ? nl + 1 : e;
    }
    CLOSE_ST();
#undef CLOSE_ST
    fdpo_rp_puts(b, "</section>\n");
}
