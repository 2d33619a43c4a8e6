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

/* Lines: "# T" / "## T" / "### T" headings (h2..h4), "- item" list items, ``` fenced
 * blocks (preformatted), blank lines end a paragraph; other lines join into paragraphs. */
void fdpo_rp_notes(rp_buf *b, const char *text) {
    fdpo_rp_puts(b, "<section id=\"summary\" class=\"notes\">\n");
    enum { NONE, PARA, LIST, PRE } st = NONE;
    static const char *const CLOSE[] = {"", "</p>\n", "</ul>\n", "</pre>\n"};
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n'), *e = nl ? nl : p + strlen(p);
        size_t n = (size_t)(e - p);
        if (n && p[n - 1] == '\r') n--;
        if (st == PRE) {
            if (n >= 3 && !strncmp(p, "```", 3)) { fdpo_rp_puts(b, CLOSE[PRE]); st = NONE; }
            else { fdpo_rp_html_n(b, p, n); fdpo_rp_puts(b, "\n"); }
        } else if (n >= 3 && !strncmp(p, "```", 3)) {
            fdpo_rp_puts(b, CLOSE[st]);
            fdpo_rp_puts(b, "<pre>");
            st = PRE;
        } else if (n == 0) {
            fdpo_rp_puts(b, CLOSE[st]);
            st = NONE;
        } else if (p[0] == '#') {
            size_t level = 0;
            while (level < n && p[level] == '#') level++;
            size_t skip = level < n && p[level] == ' ' ? level + 1 : level;
            int h = level >= 3 ? 4 : (int)level + 1;
            fdpo_rp_puts(b, CLOSE[st]);
            st = NONE;
            fdpo_rp_printf(b, "<h%d>", h);
            notes_inline(b, p + skip, n - skip);
            fdpo_rp_printf(b, "</h%d>\n", h);
        } else if (n >= 2 && p[0] == '-' && p[1] == ' ') {
            if (st != LIST) { fdpo_rp_puts(b, CLOSE[st]); fdpo_rp_puts(b, "<ul>\n"); st = LIST; }
            fdpo_rp_puts(b, "<li>");
            notes_inline(b, p + 2, n - 2);
            fdpo_rp_puts(b, "</li>\n");
        } else {
            if (st == LIST) { fdpo_rp_puts(b, CLOSE[LIST]); st = NONE; }
            if (st == NONE) { fdpo_rp_puts(b, "<p>"); st = PARA; } else fdpo_rp_puts(b, "\n");
            notes_inline(b, p, n);
        }
        p = nl ? nl + 1 : e;
    }
    fdpo_rp_puts(b, CLOSE[st]);
    fdpo_rp_puts(b, "</section>\n");
}
