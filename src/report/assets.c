/* Assets compiled into the library with the assembler's .incbin (paths are relative to the
 * repository root, where make runs): the page script and style sheet from this folder, and
 * the Chart.js UMD bundle from node_modules when `npm install` (scripts/deps.sh) has put it
 * there. Without it the library still builds; `fdpo report` then needs --chartjs FILE. */
#include <stddef.h>
#include "fdpo/report.h"
#include "report/report_internal.h"

#define FDPO_INCBIN(sym, path)                                                        \
    __asm__(".section .rodata\n"                                                      \
            ".balign 16\n"                                                            \
            ".local " #sym "\n"                                                       \
            #sym ":\n"                                                                \
            ".incbin \"" path "\"\n"                                                  \
            ".local " #sym "_end\n"                                                   \
            #sym "_end:\n"                                                            \
            ".byte 0\n"                                                               \
            ".previous\n");                                                           \
    extern const char sym[], sym##_end[]

FDPO_INCBIN(fdpo_asset_report_js, "src/report/report.js");
FDPO_INCBIN(fdpo_asset_report_css, "src/report/report.css");

const char *fdpo_rp_asset_js(size_t *len) {
    *len = (size_t)(fdpo_asset_report_js_end - fdpo_asset_report_js);
    return fdpo_asset_report_js;
}
const char *fdpo_rp_asset_css(size_t *len) {
    *len = (size_t)(fdpo_asset_report_css_end - fdpo_asset_report_css);
    return fdpo_asset_report_css;
}

#if defined(__has_include)
#if __has_include("../../node_modules/chart.js/dist/chart.umd.min.js")
#define FDPO_HAVE_CHARTJS 1
FDPO_INCBIN(fdpo_asset_chartjs, "node_modules/chart.js/dist/chart.umd.min.js");
#endif
#endif

const char *fdpo_report_embedded_chartjs(size_t *len) {
#ifdef FDPO_HAVE_CHARTJS
    *len = (size_t)(fdpo_asset_chartjs_end - fdpo_asset_chartjs);
    return fdpo_asset_chartjs;
#else
    *len = 0;
    return NULL;
#endif
}
