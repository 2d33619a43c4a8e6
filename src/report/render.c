/* The page: server-side HTML tables and panel frames, plus one JSON list of chart specs that
 * report.js hands to the inlined Chart.js. All data decisions (which panels, which points)
 * are made here, so the number of charts is known before the page is opened. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fdpo/core.h"
#include "report/report_internal.h"

/* Text valid as UTF-8 and at most max bytes (cut on a character boundary, "…" added). */
static void html_clip(rp_buf *b, const char *s, size_t max) {
    size_t n = strlen(s);
    if (!fdpo_utf8_valid(s, n)) { fdpo_rp_puts(b, "(not valid UTF-8)"); return; }
    if (n <= max) { fdpo_rp_html_n(b, s, n); return; }
    size_t k = max;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    fdpo_rp_html_n(b, s, k);
    fdpo_rp_puts(b, "\xe2\x80\xa6");
}

/* ---------------------------------------------------------------- charts ---- */

static const char *const PALETTE[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                      "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"};
#define N_PALETTE (sizeof PALETTE / sizeof PALETTE[0])

static const char *run_color(size_t i) { return PALETTE[i % N_PALETTE]; }

/* Same divergence, same colour in every panel. */
static const char *div_color(const char *div) {
    if (!div) return "#555555";
    if (!strcmp(div, "\x01unknown")) return "#999999";
    if (!strcmp(div, "rkl")) return PALETTE[0];
    if (!strcmp(div, "fkl")) return PALETTE[1];
    if (!strcmp(div, "js")) return PALETTE[2];
    if (!strcmp(div, "chi2")) return PALETTE[5];
    if (!strcmp(div, "tv")) return PALETTE[6];
    uint64_t h = fdpo_hash64(FDPO_HASH_INIT, div, strlen(div));
    static const size_t others[] = {3, 4, 7, 8};
    return PALETTE[others[h % 4]];
}

/* A policy's group on the policy panels: its divergence, else "" for the reference (its name
 * says so: fdpo_rp_looks_like_reference) and UNKNOWN_DIV for any other policy without one (an
 * online round whose directory holds no settings, a checkpoint outside the runs): drawn as
 * "reference" and "divergence unknown", which one grey series "reference / unknown" mixed. */
static const char UNKNOWN_DIV[] = "\x01unknown";
static const char *pol_div_key(const rp_policy *q) {
    if (q->divergence) return q->divergence;
    return fdpo_rp_looks_like_reference(q->name) ? "" : UNKNOWN_DIV;
}

/* Policies of one name evaluated by several files (two gold --eval files that both hold the
 * reference, say) are told apart by their file on the tables and tooltips: "ref (e2.json)".
 * Set once before rendering, through a hash of the names. */
static uint64_t pol_name_hash(size_t i, const void *ctx) {
    const rp_policy *q = &((const rp_ctx *)ctx)->pols[i];
    return fdpo_hash64(FDPO_HASH_INIT, q->name, strlen(q->name));
}
static void mark_same_names(rp_ctx *c) {
    fdpo_itab t;
    fdpo_itab_init(&t, c->n_pols + 1);
    size_t *first = fdpo_malloc((c->n_pols + 1) * sizeof *first);   /* first policy of i's name */
    for (size_t i = 0; i < c->n_pols; i++) {
        size_t k = fdpo_itab_first(&t, pol_name_hash(i, c));
        for (; t.slot[k]; k = fdpo_itab_next(&t, k)) if (!strcmp(c->pols[t.slot[k] - 1].name, c->pols[i].name)) break;
        if (!t.slot[k]) fdpo_itab_set(&t, k, i);
        first[i] = t.slot[k] - 1;
    }
    char *multi = fdpo_calloc(c->n_pols + 1, 1);   /* multi[f]: f's name has policies of several files */
    for (size_t i = 0; i < c->n_pols; i++)
        if (strcmp(c->pols[i].source, c->pols[first[i]].source)) multi[first[i]] = 1;
    for (size_t i = 0; i < c->n_pols; i++) {
        rp_policy *q = &c->pols[i];
        free(q->from);
        q->from = NULL;
        if (!multi[first[i]]) continue;
        size_t n = strlen(q->source) + 4;
        q->from = fdpo_malloc(n);
        snprintf(q->from, n, " (%s)", q->source);
    }
    free(multi);
    free(first);
    fdpo_itab_free(&t);
}
static const char *pol_from(const rp_ctx *c, const rp_policy *q) { (void)c; return q->from ? q->from : ""; }

static const char *div_title(const char *div) {
    if (!div) return "reference";
    if (!strcmp(div, UNKNOWN_DIV)) return "divergence unknown";
    if (!strcmp(div, "rkl")) return "reverse KL (DPO)";
    if (!strcmp(div, "fkl")) return "forward KL";
    if (!strcmp(div, "js")) return "Jensen\xe2\x80\x93Shannon";
    if (!strcmp(div, "chi2")) return "\xcf\x87\xc2\xb2";
    if (!strcmp(div, "tv")) return "total variation";
    return div;
}

typedef struct rp_charts {
    rp_ctx *c;
    rp_buf *html;
    cJSON *specs;
    size_t n;
} charts;

static cJSON *series_new(cJSON *list, const char *label, const char *color, int line, int dash) {
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "label", label);
    cJSON_AddStringToObject(s, "color", color);
    cJSON_AddBoolToObject(s, "line", line);
    cJSON_AddBoolToObject(s, "dash", dash);
    cJSON_AddItemToObject(s, "points", cJSON_CreateArray());
    cJSON_AddItemToArray(list, s);
    return s;
}

static void series_add(cJSON *s, double x, double y, const char *tip) {
    cJSON *pt = cJSON_CreateArray();
    cJSON_AddItemToArray(pt, cJSON_CreateNumber(x));
    cJSON_AddItemToArray(pt, cJSON_CreateNumber(y));
    cJSON_AddItemToArray(cJSON_GetObjectItem(s, "points"), pt);
    if (tip) {
        cJSON *tips = cJSON_GetObjectItem(s, "tips");
        if (!tips) tips = cJSON_AddArrayToObject(s, "tips");
        cJSON_AddItemToArray(tips, cJSON_CreateString(tip));
    }
}

static size_t series_len(const cJSON *s) { return (size_t)cJSON_GetArraySize(cJSON_GetObjectItem(s, "points")); }

/* Emit a panel for the series list if any series has a point; takes ownership of series. */
static int chart_emit(charts *ch, cJSON *series, const char *title, const char *explain,
                      const char *xlabel, const char *ylabel, int xlog) {
    /* drop empty series */
    for (int i = cJSON_GetArraySize(series) - 1; i >= 0; i--)
        if (series_len(cJSON_GetArrayItem(series, i)) == 0) cJSON_DeleteItemFromArray(series, i);
    if (cJSON_GetArraySize(series) == 0) { cJSON_Delete(series); return 0; }
    char id[32];
    snprintf(id, sizeof id, "chart-%zu", ++ch->n);
    cJSON *spec = cJSON_CreateObject();
    cJSON_AddStringToObject(spec, "id", id);
    cJSON_AddStringToObject(spec, "title", title);
    cJSON *x = cJSON_AddObjectToObject(spec, "x"), *y = cJSON_AddObjectToObject(spec, "y");
    cJSON_AddStringToObject(x, "title", xlabel);
    cJSON_AddBoolToObject(x, "log", xlog);
    cJSON_AddStringToObject(y, "title", ylabel);
    cJSON_AddBoolToObject(y, "log", 0);
    cJSON_AddItemToObject(spec, "series", series);
    cJSON_AddItemToArray(ch->specs, spec);
    rp_buf *b = ch->html;
    fdpo_rp_puts(b, "<figure class=\"panel\"><h3>");
    fdpo_rp_html(b, title);
    fdpo_rp_puts(b, "</h3><p class=\"explain\">");
    fdpo_rp_html(b, explain);
    fdpo_rp_printf(b, "</p><div class=\"canvas-box\"><canvas id=\"%s\" role=\"img\" aria-label=\"", id);
    fdpo_rp_html(b, title);
    fdpo_rp_puts(b, "\"></canvas></div></figure>\n");
    return 1;
}

/* the helpers above, for panels in other files (loop_panels.c) */
cJSON *fdpo_rp_series_new(cJSON *list, const char *label, const char *color, int line, int dash) {
    return series_new(list, label, color, line, dash);
}
void fdpo_rp_series_add(cJSON *s, double x, double y, const char *tip) { series_add(s, x, y, tip); }
int fdpo_rp_chart_emit(rp_charts *ch, cJSON *series, const char *title, const char *explain, const char *xlabel,
                       const char *ylabel, int xlog) {
    return chart_emit(ch, series, title, explain, xlabel, ylabel, xlog);
}
/* A directory with no metrics rows is no run (not in the table, not counted), so it takes no colour:
 * the same run keeps the same colour whether or not such a directory is listed before it. */
const char *fdpo_rp_run_color(const rp_ctx *c, size_t i) { return run_color(fdpo_rp_run_slot(c, i)); }

/* ---------------------------------------------------------------- training ---- */

static int row_num(const cJSON *row, const char *key, double *v) { return fdpo_rp_get_num(row, key, v); }

static int any_run_has(const rp_ctx *c, const char *key) {
    for (size_t i = 0; i < c->n_runs; i++) {
        const cJSON *row;
        cJSON_ArrayForEach(row, c->runs[i].rows) { double v; if (row_num(row, key, &v)) return 1; }
    }
    return 0;
}

/* One series per run for key (and a dashed one for key2, e.g. the eval_ version). */
static int run_has(const rp_run *r, const char *key) {
    const cJSON *row;
    cJSON_ArrayForEach(row, r->rows) { double v; if (row_num(row, key, &v)) return 1; }
    return 0;
}

/* key2s: the dashed line's key, the first of the list that the run logs. */
static void training_panel(charts *ch, const char *title, const char *explain, const char *ylabel,
                           const char *key, const char *suffix, const char *const *key2s, const char *suffix2) {
    rp_ctx *c = ch->c;
    int any = any_run_has(c, key);
    for (const char *const *k2 = key2s; *k2; k2++) any |= any_run_has(c, *k2);
    if (!any) return;
    size_t maxp = c->opts->max_points ? c->opts->max_points : 2000;
    cJSON *series = cJSON_CreateArray();
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < c->n_runs; i++) {
            const rp_run *r = &c->runs[i];
            const char *k = pass == 0 ? key : NULL;
            for (const char *const *k2 = key2s; pass == 1 && *k2 && !k; k2++) if (run_has(r, *k2)) k = *k2;
            if (!k) continue;
            char label[700];
            const char *sfx = pass == 0 ? suffix : suffix2;
            snprintf(label, sizeof label, "%s%s", r->label, sfx ? sfx : "");
            cJSON *s = series_new(series, label, fdpo_rp_run_color(c, i), 1, pass == 1);
            /* same colour as the solid line, whose legend entry stands for both; a run with no solid
             * line in this panel keeps the dashed one's entry, or nothing would say whose it is */
            if (pass == 1 && run_has(r, key)) cJSON_AddBoolToObject(s, "nolegend", 1);
            size_t n = 0;
            const cJSON *row;
            cJSON_ArrayForEach(row, r->rows) { double v; n += row_num(row, k, &v); }
            fdpo_rp_thin thin = {n, maxp, 0};
            size_t j = 0, idx = 0;
            cJSON_ArrayForEach(row, r->rows) {
                double v, x;
                size_t line = r->lines[idx++];
                if (!row_num(row, k, &v)) continue;
                if (!row_num(row, "step", &x)) x = (double)line;   /* docs/report.md: step, else the line number */
                if (fdpo_rp_thin_keep(&thin, j)) series_add(s, x, v, NULL);
                j++;
            }
        }
    }
    chart_emit(ch, series, title, explain, "step", ylabel, 0);
}

/* From the last row back, along cJSON's prev links (the first item's prev is the last):
 * cJSON_GetArrayItem(i) walks from the front, which made this quadratic in the rows. */
static const cJSON *last_with(const rp_run *r, const char *key, double *v) {
    const cJSON *first = r->rows->child;
    if (!first) return NULL;
    for (const cJSON *row = first->prev;; row = row->prev) {
        if (row_num(row, key, v)) return row;
        if (row == first) return NULL;
    }
}

static void td_num(rp_buf *b, double v) { fdpo_rp_puts(b, "<td class=\"num\">"); fdpo_rp_num(b, v); fdpo_rp_puts(b, "</td>"); }
static void td_text(rp_buf *b, const char *s) { fdpo_rp_puts(b, "<td>"); fdpo_rp_html(b, s ? s : "\xe2\x80\x93"); fdpo_rp_puts(b, "</td>"); }

static void training_table(rp_ctx *c, rp_buf *b) {
    static const char *const keys[] = {"loss", "eval_loss", "rewards/margins", "rewards/accuracies",
                                       "eval_rewards/margins", "eval_rewards/accuracies", "grad_norm", "tokens_per_sec"};
    int present[sizeof keys / sizeof keys[0]];
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) present[k] = any_run_has(c, keys[k]);
    fdpo_rp_puts(b, "<div class=\"table-wrap\"><table id=\"runs-table\"><thead><tr><th>run</th><th>kind</th><th>divergence</th>"
               "<th>\xce\xb2</th><th>loss type</th><th>logged rows</th><th>last step</th>");
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        if (present[k]) { fdpo_rp_puts(b, "<th>final "); fdpo_rp_html(b, keys[k]); fdpo_rp_puts(b, "</th>"); }
    fdpo_rp_puts(b, "<th>settings from</th></tr></thead><tbody>\n");
    for (size_t i = 0; i < c->n_runs; i++) {
        const rp_run *r = &c->runs[i];
        if (!r->rows->child) continue;   /* no rows, no run: as fdpo_rp_runs_with_rows counts them */
        fdpo_rp_printf(b, "<tr><td><span class=\"swatch\" style=\"background:%s\"></span>", fdpo_rp_run_color(c, i));
        fdpo_rp_html(b, r->name);
        fdpo_rp_puts(b, "</td>");
        td_text(b, fdpo_rp_loop_kind_name(r));
        td_text(b, r->divergence);
        if (r->has_beta) td_num(b, r->beta); else td_text(b, NULL);
        td_text(b, r->loss);
        fdpo_rp_printf(b, "<td class=\"num\">%d", cJSON_GetArraySize(r->rows));
        if (r->n_bad) fdpo_rp_printf(b, " <span class=\"bad\">(%zu skipped)</span>", r->n_bad);
        fdpo_rp_puts(b, "</td>");
        double v;
        if (last_with(r, "step", &v)) td_num(b, v); else td_text(b, NULL);
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            if (!present[k]) continue;
            if (last_with(r, keys[k], &v)) td_num(b, v); else td_text(b, NULL);
        }
        if (r->config_file) {   /* the file name; the full path on hover */
            const char *slash = strrchr(r->config_file, '/');
            fdpo_rp_puts(b, "<td title=\"");
            fdpo_rp_html(b, r->config_file);
            fdpo_rp_puts(b, "\">");
            fdpo_rp_html(b, slash ? slash + 1 : r->config_file);
            fdpo_rp_puts(b, "</td>");
        } else td_text(b, "directory name");
        fdpo_rp_puts(b, "</tr>\n");
    }
    fdpo_rp_puts(b, "</tbody></table></div>\n");
}

/* ---------------------------------------------------------------- evaluation ---- */

static int pol_num(const rp_policy *q, const char *key, double *v) { return fdpo_rp_get_num(q->metrics, key, v); }

static const char *pol_kl_key(const rp_policy *q) {
    static const char *const ks[] = {"kl_seq_mean", "kl_seq", "kl", "kl_tok_mean", "kl_token", "kl_tok", NULL};
    double v;
    for (const char *const *k = ks; *k; k++) if (pol_num(q, *k, &v)) return *k;
    return NULL;
}

/* Distinct divergences of the policies, in first-seen order ("" stands for none). */
/* The policies' divergences, first-seen order ("" for none): out holds n_pols + 1 entries. */
static size_t policy_divs(const rp_ctx *c, const char **out) {
    size_t n = 0;
    for (size_t i = 0; i < c->n_pols; i++) {
        const char *d = pol_div_key(&c->pols[i]);
        size_t j = 0;
        while (j < n && strcmp(out[j], d)) j++;
        if (j == n) out[n++] = d;
    }
    return n;
}

typedef struct { double x, y; size_t i; const cJSON *row; } xyi;   /* row: a lab table's (i: a policy's index) */
static int cmp_xyi(const void *a, const void *b) {
    const xyi *p = a, *q = b;
    return (p->x > q->x) - (p->x < q->x);
}

static int lab_col(const rp_lab *L, const char *name);

/* ---- grouping a lab table's rows in linear time (a scan of the groups found so far per row,
 * then of every row per group, was quadratic in the rows of a table of many lines) ---- */

/* A cell's hash, agreeing with cells_equal: numbers by value (-0 as 0), text by its bytes,
 * an empty cell (neither) as one value. */
static uint64_t cell_hash(uint64_t h, const cJSON *x) {
    if (cJSON_IsNumber(x)) {
        double v = x->valuedouble == 0 ? 0.0 : x->valuedouble;
        h = fdpo_hash64(h, "n", 1);
        return fdpo_hash64(h, &v, sizeof v);
    }
    if (cJSON_IsString(x)) {
        h = fdpo_hash64(h, "s", 1);
        return fdpo_hash64(h, x->valuestring, strlen(x->valuestring) + 1);
    }
    return fdpo_hash64(h, "e", 1);
}

/* Rows bucketed by group, each bucket in row order: members[start[g] .. start[g + 1]) are the
 * indices of group g's rows (rows on no group, group_of == (size_t)-1, are left out). */
typedef struct { size_t *start, *members; } row_buckets;
static row_buckets bucket_rows(const size_t *group_of, size_t nrows, size_t ngroups) {
    row_buckets r = {fdpo_calloc(ngroups + 1, sizeof *r.start), fdpo_malloc((nrows + 1) * sizeof *r.members)};
    size_t *fill = fdpo_calloc(ngroups + 1, sizeof *fill);
    for (size_t i = 0; i < nrows; i++) if (group_of[i] != (size_t)-1) r.start[group_of[i] + 1]++;
    for (size_t g = 0; g < ngroups; g++) r.start[g + 1] += r.start[g];
    for (size_t i = 0; i < nrows; i++)
        if (group_of[i] != (size_t)-1) r.members[r.start[group_of[i]] + fill[group_of[i]]++] = i;
    free(fill);
    return r;
}

/* The --lab-frontier tables on the reward-KL panel: per table and divergence, the exact
 * optimum's (KL, expected reward) over beta as one dashed line in the divergence's colour,
 * labelled "exact (lab)", so theory and measurement share the axes. */
static void lab_frontier_series(const rp_ctx *c, cJSON *series) {
    for (size_t t = 0; t < c->n_labs; t++) {
        const rp_lab *L = &c->labs[t];
        if (!L->on_frontier) continue;
        int dc = lab_col(L, "divergence"), bc = lab_col(L, "beta"), xc = lab_col(L, "kl"), yc = lab_col(L, "expected_reward");
        size_t nrows = (size_t)cJSON_GetArraySize(L->rows), nd = 0;
        const char **divs = fdpo_malloc((nrows + 1) * sizeof *divs);
        xyi *pts = fdpo_malloc((nrows + 1) * sizeof *pts);
        const cJSON **rowv = fdpo_malloc((nrows + 1) * sizeof *rowv);
        size_t *div_of = fdpo_malloc((nrows + 1) * sizeof *div_of), r_i = 0;
        fdpo_itab seen;   /* divergence text -> index into divs, first seen first */
        fdpo_itab_init(&seen, nrows + 1);
        const cJSON *row;
        cJSON_ArrayForEach(row, L->rows) {
            const cJSON *d = cJSON_GetArrayItem(row, dc);
            rowv[r_i] = row;
            div_of[r_i] = (size_t)-1;
            if (cJSON_IsString(d)) {
                size_t k = fdpo_itab_first(&seen, fdpo_hash64(FDPO_HASH_INIT, d->valuestring, strlen(d->valuestring)));
                for (; seen.slot[k]; k = fdpo_itab_next(&seen, k))
                    if (!strcmp(divs[seen.slot[k] - 1], d->valuestring)) break;
                if (!seen.slot[k]) { fdpo_itab_set(&seen, k, nd); divs[nd++] = d->valuestring; }
                div_of[r_i] = seen.slot[k] - 1;
            }
            r_i++;
        }
        fdpo_itab_free(&seen);
        row_buckets bk = bucket_rows(div_of, nrows, nd);
        for (size_t j = 0; j < nd; j++) {
            size_t n = 0;
            for (size_t m = bk.start[j]; m < bk.start[j + 1]; m++) {
                const size_t i = bk.members[m];
                row = rowv[i];
                const cJSON *x = cJSON_GetArrayItem(row, xc), *y = cJSON_GetArrayItem(row, yc);
                if (cJSON_IsNumber(x) && cJSON_IsNumber(y)) pts[n++] = (xyi){x->valuedouble, y->valuedouble, i, row};
            }
            qsort(pts, n, sizeof *pts, cmp_xyi);
            char label[300];
            snprintf(label, sizeof label, "%s exact (lab)", div_title(divs[j]));
            cJSON *s = series_new(series, label, div_color(divs[j]), 1, 1);
            for (size_t k = 0; k < n; k++) {
                char tip[800];
                const cJSON *b = cJSON_GetArrayItem(pts[k].row, bc);
                snprintf(tip, sizeof tip, "%s, \xce\xb2=%g: expected reward %.4g at KL %.4g (exact, %.200s)", label,
                         cJSON_IsNumber(b) ? b->valuedouble : NAN, pts[k].y, pts[k].x, L->source);
                series_add(s, pts[k].x, pts[k].y, tip);
            }
        }
        free(bk.start); free(bk.members);
        free(rowv); free(div_of);
        free(divs);
        free(pts);
    }
}

static int any_lab_frontier(const rp_ctx *c) {
    for (size_t t = 0; t < c->n_labs; t++) if (c->labs[t].on_frontier) return 1;
    return 0;
}

/* Reward against x_key (NULL: the KL key each policy has), one line per divergence. */
static void frontier_panel(charts *ch, const char *title, const char *explain, const char *xlabel, const char *x_key) {
    rp_ctx *c = ch->c;
    const char **divs = fdpo_malloc((c->n_pols + 1) * sizeof *divs);
    size_t nd = policy_divs(c, divs);
    cJSON *series = cJSON_CreateArray();
    xyi *pts = fdpo_malloc((c->n_pols + 1) * sizeof *pts);
    for (size_t d = 0; d < nd; d++) {
        size_t n = 0;
        for (size_t i = 0; i < c->n_pols; i++) {
            const rp_policy *q = &c->pols[i];
            if (strcmp(pol_div_key(q), divs[d])) continue;
            const char *xk = x_key ? x_key : pol_kl_key(q);
            double x, y;
            if (!xk || !pol_num(q, xk, &x) || !pol_num(q, "reward_mean", &y)) continue;
            pts[n++] = (xyi){x, y, i, NULL};
        }
        qsort(pts, n, sizeof *pts, cmp_xyi);
        const char *dv = divs[d][0] ? divs[d] : NULL;
        /* a line joins one divergence's policies over beta; the reference and the policies of
         * unknown divergence are points */
        cJSON *s = series_new(series, div_title(dv), div_color(dv), dv != NULL && dv != UNKNOWN_DIV && n > 1, 0);
        for (size_t k = 0; k < n; k++) {
            const rp_policy *q = &c->pols[pts[k].i];
            char tip[512], bs[64] = "", se[64] = "";
            double v;
            if (q->has_beta) snprintf(bs, sizeof bs, ", \xce\xb2=%g", q->beta);
            if (pol_num(q, "reward_se", &v) || pol_num(q, "reward_stderr", &v)) snprintf(se, sizeof se, " \xc2\xb1 %.3g", v);
            snprintf(tip, sizeof tip, "%.200s%s%s: reward %.4g%s at %.4g", q->name, pol_from(c, q), bs, pts[k].y, se,
                     pts[k].x);
            series_add(s, pts[k].x, pts[k].y, tip);
        }
    }
    free(pts);
    free(divs);
    if (!x_key) lab_frontier_series(c, series);
    chart_emit(ch, series, title, explain, xlabel, "mean reward", 0);
}

/* The lambda of an fdpo sacpo model directory: DIR/reward is the reward stage (lambda 0),
 * DIR/lambda-L the safety stage of L; -1 for any other name. */
static double sacpo_lambda(const char *name) {
    const char *slash = strrchr(name, '/'), *base = slash ? slash + 1 : name;
    if (strcmp(base, "reward") == 0) return 0;
    if (strncmp(base, "lambda-", 7) != 0) return -1;
    char *end;
    double l = strtod(base + 7, &end);
    return end != base + 7 && *end == '\0' && l > 0 ? l : -1;
}

typedef struct { double lambda, x, y; } sacpo_point;
static int cmp_sacpo_point(const void *a, const void *b) {
    double u = ((const sacpo_point *)a)->lambda, v = ((const sacpo_point *)b)->lambda;
    return (u > v) - (u < v);
}

/* The models of one fdpo sacpo run (the first directory holding a reward or lambda-L model)
 * joined in order of lambda: the trade-off path the lambda list traces. */
static void sacpo_path_series(rp_ctx *c, cJSON *series) {
    sacpo_point *pts = malloc((c->n_pols ? c->n_pols : 1) * sizeof *pts);
    if (!pts) return;
    size_t n = 0, dir_len = 0;
    const char *dir = NULL;
    for (size_t i = 0; i < c->n_pols; i++) {
        const rp_policy *q = &c->pols[i];
        double lam = sacpo_lambda(q->name), x, y;
        if (lam < 0 || !pol_num(q, "reward_mean", &x) || !pol_num(q, "safety_mean", &y)) continue;
        const char *slash = strrchr(q->name, '/');
        size_t len = slash ? (size_t)(slash - q->name) : 0;
        if (!dir) { dir = q->name; dir_len = len; }
        else if (len != dir_len || strncmp(q->name, dir, len) != 0) continue;   /* another sacpo run */
        pts[n++] = (sacpo_point){lam, x, y};
    }
    if (n >= 2) {
        qsort(pts, n, sizeof *pts, cmp_sacpo_point);
        char label[96];
        snprintf(label, sizeof label, "SACPO, \xce\xbb = %g \xe2\x86\x92 %g", pts[0].lambda, pts[n - 1].lambda);
        cJSON *s = series_new(series, label, "#444444", 1, 0);
        for (size_t k = 0; k < n; k++) {
            char tip[96];
            snprintf(tip, sizeof tip, "\xce\xbb = %g: reward %.4g, safety %.4g", pts[k].lambda, pts[k].x, pts[k].y);
            series_add(s, pts[k].x, pts[k].y, tip);
        }
    }
    free(pts);
}

/* The reference among list: the policy whose KL to the reference is exactly 0 (log pi - log
 * pi_ref vanishes term by term when the policy is the reference itself). */
static const rp_policy *kl_zero_policy(const rp_policy *list, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const char *k = pol_kl_key(&list[i]);
        double v;
        if (k && pol_num(&list[i], k, &v) && v == 0) return &list[i];
    }
    return NULL;
}
static const rp_policy *policy_named(const rp_policy *list, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++) if (!strcmp(list[i].name, name)) return &list[i];
    return NULL;
}
/* The policy named name in file source, else NULL. */
static const rp_policy *policy_named_in(const rp_policy *list, size_t n, const char *name, const char *source) {
    for (size_t i = 0; i < n; i++) if (!strcmp(list[i].name, name) && !strcmp(list[i].source, source)) return &list[i];
    return NULL;
}

/* Reward over-optimisation (--proxy-eval): the policies of the proxy file that the gold files
 * also evaluated, in the proxy file's order (an online run's rounds), as two lines against
 * the gold evaluation's KL: gold and proxy reward as a gain over the reference in units of the
 * reference's reward standard deviation, so two rewards of different scales share one axis
 * (raw means and standard errors in the tooltips). Needs the reference (KL 0) in both. */
static void overoptimisation_panel(charts *ch) {
    rp_ctx *c = ch->c;
    if (!c->n_proxy) return;
    const rp_policy *pref = kl_zero_policy(c->proxy, c->n_proxy);
    const rp_policy *gref = pref ? policy_named(c->pols, c->n_pols, pref->name) : NULL;
    double gm0, gs0, pm, ps;
    if (!gref || !pol_num(gref, "reward_mean", &gm0) || !pol_num(gref, "reward_std", &gs0) || !(gs0 > 0) ||
        !pol_num(pref, "reward_mean", &pm) || !pol_num(pref, "reward_std", &ps) || !(ps > 0)) {
        fdpo_rp_warn(c, "--proxy-eval: no reference policy (KL 0, reward_std > 0) in both the proxy and the gold "
                        "eval files: the over-optimisation panel needs it to put both rewards on one axis");
        return;
    }
    cJSON *series = cJSON_CreateArray();
    cJSON *sg = series_new(series, "gold reward", PALETTE[2], 1, 0), *sp = series_new(series, "proxy reward", PALETTE[1], 1, 1);
    for (size_t i = 0; i < c->n_proxy; i++) {
        const rp_policy *p = &c->proxy[i], *g = policy_named(c->pols, c->n_pols, p->name);
        const char *xk = g ? pol_kl_key(g) : NULL;
        double x, yg, yp, seg = NAN, sep = NAN;
        if (!xk || !pol_num(g, xk, &x) || !pol_num(g, "reward_mean", &yg) || !pol_num(p, "reward_mean", &yp)) continue;
        /* a gold policy's gain is over the reference of its own gold file (the same prompts and
         * reward), when that file evaluated it too: with two gold files both holding the
         * reference, the second file's policies were measured against the first file's */
        double gm = gm0, gs = gs0, m, sd;
        const rp_policy *own = policy_named_in(c->pols, c->n_pols, gref->name, g->source);
        if (own && pol_num(own, "reward_mean", &m) && pol_num(own, "reward_std", &sd) && sd > 0) { gm = m; gs = sd; }
        /* the s.e. as the summary table reads it (reward_se, else reward_stderr); none: no "±" */
        int has_seg = pol_num(g, "reward_se", &seg) || pol_num(g, "reward_stderr", &seg);
        int has_sep = pol_num(p, "reward_se", &sep) || pol_num(p, "reward_stderr", &sep);
        char tip[600], raw[64] = "", gain[64] = "";
        if (has_seg) { snprintf(raw, sizeof raw, " ± %.2g", seg); snprintf(gain, sizeof gain, " ± %.2g", seg / gs); }
        snprintf(tip, sizeof tip, "%.200s%s: gold reward %.4g%s (gain %.3g%s s.d.) at KL %.4g", p->name, pol_from(c, g),
                 yg, raw, (yg - gm) / gs, gain, x);
        series_add(sg, x, (yg - gm) / gs, tip);
        raw[0] = gain[0] = 0;
        if (has_sep) { snprintf(raw, sizeof raw, " ± %.2g", sep); snprintf(gain, sizeof gain, " ± %.2g", sep / ps); }
        snprintf(tip, sizeof tip, "%.200s: proxy reward %.4g%s (gain %.3g%s s.d.) at KL %.4g", p->name, yp,
                 raw, (yp - pm) / ps, gain, x);
        series_add(sp, x, (yp - pm) / ps, tip);
    }
    chart_emit(ch, series, "Reward over-optimisation: gold vs proxy reward",
               "The same policies (in the order of the proxy eval file: an online run's rounds against a "
               "reward model) scored with the gold reward (--eval) and with the proxy they were optimised "
               "against (--proxy-eval), against KL(π‖π_ref) from the gold evaluation. "
               "Each reward is shown as its gain over the reference policy in units of the reference's reward "
               "standard deviation, so both start at 0; hover for the raw means ± s.e. A proxy that keeps "
               "rising while gold rises less, stalls or falls is the reward model being over-optimised.",
               "KL(π ‖ π_ref) (nats)", "reward gain over the reference (reference s.d.)", 0);
}

/* Reward against safety (fdpo eval --safety): one labelled point per policy, and the
 * threshold T of safety_frac_safe as a horizontal line when the eval file gives it. */
static void safety_panel(charts *ch) {
    rp_ctx *c = ch->c;
    cJSON *series = cJSON_CreateArray();
    double xmin = INFINITY, xmax = -INFINITY, thr = NAN;
    for (size_t i = 0; i < c->n_pols; i++) {
        const rp_policy *q = &c->pols[i];
        double x, y, v;
        if (!pol_num(q, "reward_mean", &x) || !pol_num(q, "safety_mean", &y)) continue;
        if (isnan(thr) && pol_num(q, "safety_threshold", &v)) thr = v;
        if (x < xmin) xmin = x;
        if (x > xmax) xmax = x;
        char tip[512], se[64] = "", frac[64] = "";
        if (pol_num(q, "safety_se", &v)) snprintf(se, sizeof se, " \xc2\xb1 %.3g", v);
        if (pol_num(q, "safety_frac_safe", &v)) snprintf(frac, sizeof frac, ", %.3g safe", v);
        snprintf(tip, sizeof tip, "%.200s: reward %.4g, safety %.4g%s%s", q->name, x, y, se, frac);
        /* labelled by the last path component (sacpo's reward, lambda-L, merge-...; base), the
         * tooltip names the whole path */
        const char *slash = strrchr(q->name, '/'), *label = slash && slash[1] ? slash + 1 : q->name;
        series_add(series_new(series, label, run_color(i), 0, 0), x, y, tip);
    }
    sacpo_path_series(c, series);
    if (cJSON_GetArraySize(series) && isfinite(thr)) {
        char label[64];
        snprintf(label, sizeof label, "threshold %g", thr);
        cJSON *t = series_new(series, label, "#7f7f7f", 1, 1);
        series_add(t, xmin, thr, NULL);
        if (xmax > xmin) series_add(t, xmax, thr, NULL);
    }
    chart_emit(ch, series, "Reward vs safety", "Mean reward against mean safety score g of the sampled completions "
               "(fdpo eval --safety), one point per policy; the dashed line is the threshold T of --safety-threshold, "
               "the constraint E[g] \xe2\x89\xa5 T (each tooltip's fraction safe counts the samples with g \xe2\x89\xa5 T); "
               "the models of an fdpo sacpo run are joined in order of \xce\xbb. "
               "Up and right is better.", "mean reward", "mean safety", 0);
}

static int starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }
static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Policy table with the given columns (only those some policy has). Headers drop `strip`
 * (a common suffix); reward_mean shows "± standard error" when the policy has one. */
static void policy_table(rp_ctx *c, rp_buf *b, const char *id, const char *const *cols, size_t n_cols,
                         const char *strip) {
    int *present = fdpo_calloc(n_cols ? n_cols : 1, sizeof *present);
    int any = 0;
    for (size_t k = 0; k < n_cols; k++)
        for (size_t i = 0; i < c->n_pols; i++) { double v; if (pol_num(&c->pols[i], cols[k], &v)) { present[k] = 1; any = 1; break; } }
    if (!any) { free(present); return; }
    fdpo_rp_printf(b, "<div class=\"table-wrap\"><table id=\"%s\"><thead><tr><th>policy</th><th>run</th><th>divergence</th><th>\xce\xb2</th>", id);
    for (size_t k = 0; k < n_cols; k++) {
        if (!present[k]) continue;
        size_t n = strlen(cols[k]);
        if (strip && ends_with(cols[k], strip)) n -= strlen(strip);
        fdpo_rp_puts(b, "<th>"); fdpo_rp_html_n(b, cols[k], n); fdpo_rp_puts(b, "</th>");
    }
    fdpo_rp_puts(b, "</tr></thead><tbody>\n");
    for (size_t i = 0; i < c->n_pols; i++) {
        const rp_policy *q = &c->pols[i];
        const char *key = pol_div_key(q);
        fdpo_rp_printf(b, "<tr><td><span class=\"swatch\" style=\"background:%s\"></span>", div_color(key[0] ? key : NULL));
        fdpo_rp_html(b, q->name);
        fdpo_rp_html(b, pol_from(c, q));
        fdpo_rp_puts(b, "</td>");
        td_text(b, q->run);
        td_text(b, q->divergence);
        if (q->has_beta) td_num(b, q->beta); else td_text(b, NULL);
        for (size_t k = 0; k < n_cols; k++) {
            if (!present[k]) continue;
            double v, se;
            if (!pol_num(q, cols[k], &v)) { td_text(b, NULL); continue; }
            if (!strcmp(cols[k], "reward_mean") && (pol_num(q, "reward_se", &se) || pol_num(q, "reward_stderr", &se))) {
                fdpo_rp_puts(b, "<td class=\"num\">"); fdpo_rp_num(b, v); fdpo_rp_puts(b, " \xc2\xb1 "); fdpo_rp_num(b, se); fdpo_rp_puts(b, "</td>");
            } else td_num(b, v);
        }
        fdpo_rp_puts(b, "</tr>\n");
    }
    fdpo_rp_puts(b, "</tbody></table></div>\n");
    free(present);
}

/* Which table a metric goes to. Spread statistics (_std, _se) only appear under "all metrics". */
enum { K_SUMMARY, K_DIV_FLAT, K_DIV_PER, K_DIV_ACROSS, K_LENGTH, K_OTHER };

static int is_spread(const char *k) { return ends_with(k, "_std") || ends_with(k, "_se") || ends_with(k, "_stderr"); }

static int key_class(const char *k) {
    static const char *const summary[] = {"reward_mean", "kl_seq_mean", "kl_seq", "kl_tok_mean", "kl_token", "kl",
                                          "entropy", "pref_accuracy", "pref_ece", "n_samples", NULL};
    for (const char *const *p = summary; *p; p++) if (!strcmp(k, *p)) return K_SUMMARY;
    if (is_spread(k)) return K_OTHER;
    if (starts_with(k, "fdiv_seq_") || (starts_with(k, "fdiv") && !starts_with(k, "fdiv_tok"))) return K_SUMMARY;
    if (starts_with(k, "distinct") || starts_with(k, "ead") || starts_with(k, "self_bleu")) {
        if (ends_with(k, "_per_input")) return K_DIV_PER;
        if (ends_with(k, "_across_input")) return K_DIV_ACROSS;
        return K_DIV_FLAT;
    }
    if (starts_with(k, "len_") || starts_with(k, "length") || starts_with(k, "reward_length") ||
        starts_with(k, "reward_words") || !strcmp(k, "frac_eot") || !strcmp(k, "pref_chosen_longer"))
        return K_LENGTH;
    return K_OTHER;
}

/* Keys of one class across policies (summary keys in a fixed order first, then first-seen). */
static size_t collect_keys(const rp_ctx *c, int cls, const char **out, size_t max) {
    size_t n = 0;
    static const char *const order[] = {"reward_mean", "kl_seq_mean", "kl_seq", "kl", "kl_tok_mean", "kl_token",
                                        "entropy", NULL};
    if (cls == K_SUMMARY) for (const char *const *p = order; *p && n < max; p++) out[n++] = *p;
    for (size_t i = 0; i < c->n_pols; i++) {
        for (const cJSON *it = c->pols[i].metrics->child; it; it = it->next) {
            if (cls != K_OTHER || !is_spread(it->string)) { if (key_class(it->string) != cls) continue; }
            int seen = 0;
            for (size_t j = 0; j < n && !seen; j++) if (!strcmp(out[j], it->string)) seen = 1;
            if (!seen && n < max) out[n++] = it->string;
        }
    }
    return n;
}

static void samples_grid(rp_ctx *c, rp_buf *b) {
    size_t max_prompts = c->opts->max_prompts ? c->opts->max_prompts : 6;
    size_t np = 0;
    for (size_t i = 0; i < c->n_pols; i++) np += cJSON_GetArraySize(c->pols[i].samples) > 0;
    if (!np) return;
    /* prompts in first-seen order: as many as asked for (no more than there are samples) */
    size_t n_samples = 0;
    for (size_t i = 0; i < c->n_pols; i++) n_samples += (size_t)cJSON_GetArraySize(c->pols[i].samples);
    if (max_prompts > n_samples) max_prompts = n_samples;
    const char **prompts = fdpo_malloc(max_prompts * sizeof *prompts);
    size_t n_prompts = 0;
    for (size_t i = 0; i < c->n_pols && n_prompts < max_prompts; i++) {
        const cJSON *s;
        cJSON_ArrayForEach(s, c->pols[i].samples) {
            const char *p = cJSON_GetObjectItem(s, "prompt")->valuestring;
            size_t j = 0;
            while (j < n_prompts && strcmp(prompts[j], p)) j++;
            if (j == n_prompts && n_prompts < max_prompts) prompts[n_prompts++] = p;
        }
    }
    fdpo_rp_puts(b, "<h2 id=\"samples\">Sample completions</h2>\n<p class=\"explain\">The first completion each policy "
               "produced for the same prompt, side by side (reward in brackets when the eval file has it). Read them "
               "for what the numbers hide: repetition, length, collapse onto one answer.</p>\n");
    fdpo_rp_printf(b, "<div class=\"table-wrap\"><table class=\"samples\" id=\"samples-table\"><thead><tr><th>prompt</th>");
    for (size_t i = 0; i < c->n_pols; i++) {
        if (!cJSON_GetArraySize(c->pols[i].samples)) continue;
        fdpo_rp_puts(b, "<th>"); fdpo_rp_html(b, c->pols[i].name);
        if (c->pols[i].divergence) { fdpo_rp_puts(b, "<br><small>"); fdpo_rp_html(b, c->pols[i].divergence);
            if (c->pols[i].has_beta) fdpo_rp_printf(b, ", \xce\xb2=%g", c->pols[i].beta);
            fdpo_rp_puts(b, "</small>"); }
        fdpo_rp_puts(b, "</th>");
    }
    fdpo_rp_puts(b, "</tr></thead><tbody>\n");
    for (size_t j = 0; j < n_prompts; j++) {
        fdpo_rp_puts(b, "<tr><td class=\"prompt\">");
        html_clip(b, prompts[j][0] ? prompts[j] : "(no prompt given)", 400);
        fdpo_rp_puts(b, "</td>");
        for (size_t i = 0; i < c->n_pols; i++) {
            if (!cJSON_GetArraySize(c->pols[i].samples)) continue;
            const cJSON *s, *hit = NULL;
            cJSON_ArrayForEach(s, c->pols[i].samples)
                if (!strcmp(cJSON_GetObjectItem(s, "prompt")->valuestring, prompts[j])) { hit = s; break; }
            fdpo_rp_puts(b, "<td class=\"completion\">");
            if (hit) {
                html_clip(b, cJSON_GetObjectItem(hit, "completion")->valuestring, 700);
                double r;
                if (fdpo_rp_get_num(hit, "reward", &r)) { fdpo_rp_puts(b, " <span class=\"reward\">["); fdpo_rp_num(b, r); fdpo_rp_puts(b, "]</span>"); }
            } else fdpo_rp_puts(b, "<span class=\"none\">\xe2\x80\x93</span>");
            fdpo_rp_puts(b, "</td>");
        }
        fdpo_rp_puts(b, "</tr>\n");
    }
    fdpo_rp_puts(b, "</tbody></table></div>\n");
    free(prompts);
}

/* ---------------------------------------------------------------- lab ---- */

static int lab_col(const rp_lab *L, const char *name) {
    for (size_t i = 0; i < L->n_cols; i++) if (!strcmp(L->cols[i], name)) return (int)i;
    return -1;
}

static int cell_num(const cJSON *row, int col, double *v) {
    if (col < 0) return 0;
    const cJSON *x = cJSON_GetArrayItem(row, col);
    if (!cJSON_IsNumber(x)) return 0;
    *v = x->valuedouble;
    return 1;
}

static const char *cell_str(const cJSON *row, int col) {
    const cJSON *x = col >= 0 ? cJSON_GetArrayItem(row, col) : NULL;
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

/* Columns that split a divergence's points into several lines when they take several values. */
static const char *const LAB_GROUPS[] = {"noise", "data_policy", "bias", "prompt", NULL};

/* Two cells are one group's value only when equal in full: the same number, the same whole
 * text, or both empty (a value printed with %g or cut to a buffer merged 0.1 and 0.1000001,
 * or two prompts sharing their first 127 bytes). */
static int cells_equal(const cJSON *row_a, const cJSON *row_b, int col) {
    const cJSON *a = cJSON_GetArrayItem(row_a, col), *b = cJSON_GetArrayItem(row_b, col);
    if (cJSON_IsNumber(a) && cJSON_IsNumber(b)) return a->valuedouble == b->valuedouble;
    if (cJSON_IsString(a) && cJSON_IsString(b)) return !strcmp(a->valuestring, b->valuestring);
    return !cJSON_IsNumber(a) && !cJSON_IsString(a) && !cJSON_IsNumber(b) && !cJSON_IsString(b);
}

/* A group's value for its label: a number with the fewest digits (6 or more) that read back
 * as the same number, so two groups never share a label; text whole; "-" when empty. */
static void group_value_text(rp_buf *b, const cJSON *row, int col) {
    const cJSON *x = cJSON_GetArrayItem(row, col);
    if (cJSON_IsNumber(x)) {
        char v[40];
        for (int prec = 6; prec <= 17; prec++) {
            snprintf(v, sizeof v, "%.*g", prec, x->valuedouble);
            if (strtod(v, NULL) == x->valuedouble) break;
        }
        fdpo_rp_puts(b, v);
    } else if (cJSON_IsString(x)) fdpo_rp_puts(b, x->valuestring);
    else fdpo_rp_puts(b, "-");
}

static int distinct_values(const rp_lab *L, int col) {
    const cJSON *first = L->rows->child, *row;
    if (!first) return 0;
    cJSON_ArrayForEach(row, L->rows) if (!cells_equal(first, row, col)) return 2;
    return 1;
}

/* y_col against x_col, one line per divergence (and per value of a grouping column that
 * varies in the table, e.g. noise; β too when it is not what the line runs over), sorted by x. */
static int lab_panel(charts *ch, const rp_lab *L, const char *x_name, const char *y_name,
                     const char *title, const char *explain, const char *xlabel, const char *ylabel) {
    int dc = lab_col(L, "divergence"), xc = lab_col(L, x_name), yc = lab_col(L, y_name), bc = lab_col(L, "beta");
    if (dc < 0 || xc < 0 || yc < 0) return 0;
    int gcols[8], ng = 0;
    for (const char *const *g = LAB_GROUPS; *g && ng < 8; g++) {
        int col = lab_col(L, *g);
        if (col >= 0 && col != xc && distinct_values(L, col) > 1) gcols[ng++] = col;
    }
    /* the frontier runs over beta (x = kl); other x axes split by it */
    if (bc >= 0 && bc != xc && strcmp(x_name, "kl") && distinct_values(L, bc) > 1) gcols[ng++] = bc;
    size_t nrows = (size_t)cJSON_GetArraySize(L->rows);
    /* a group (one line): its first row, whose divergence and grouping cells every row of it shares */
    const cJSON **groups = fdpo_malloc((nrows + 1) * sizeof *groups), **rowv = fdpo_malloc((nrows + 1) * sizeof *rowv);
    size_t *group_of = fdpo_malloc((nrows + 1) * sizeof *group_of), nk = 0, r_i = 0;
    /* a group's dash: the n-th group of the same divergence gets the n-th dash pattern;
     * first_of_div[j]: the first group of group j's divergence, n_of_div[that]: its groups so far */
    size_t *first_of_div = fdpo_malloc((nrows + 1) * sizeof *first_of_div), *n_of_div = fdpo_calloc(nrows + 1, sizeof *n_of_div);
    int *dashes = fdpo_malloc((nrows + 1) * sizeof *dashes);
    fdpo_itab by_key, by_div;   /* (divergence, grouping cells) -> group; divergence -> its first group */
    fdpo_itab_init(&by_key, nrows + 1);
    fdpo_itab_init(&by_div, nrows + 1);
    const cJSON *row;
    cJSON_ArrayForEach(row, L->rows) {
        size_t j = (size_t)-1;     /* no divergence: on no line */
        const char *dv = cell_str(row, dc);
        rowv[r_i] = row;
        if (dv) {
            const uint64_t hd = fdpo_hash64(FDPO_HASH_INIT, dv, strlen(dv) + 1);
            uint64_t h = hd;
            for (int g = 0; g < ng; g++) h = cell_hash(h, cJSON_GetArrayItem(row, gcols[g]));
            size_t k = fdpo_itab_first(&by_key, h);
            for (; by_key.slot[k]; k = fdpo_itab_next(&by_key, k)) {
                const cJSON *first = groups[by_key.slot[k] - 1];
                int same = !strcmp(cell_str(first, dc), dv);
                for (int g = 0; g < ng && same; g++) same = cells_equal(first, row, gcols[g]);
                if (same) break;
            }
            if (by_key.slot[k]) j = by_key.slot[k] - 1;
            else {
                j = nk;
                groups[nk++] = row;
                fdpo_itab_set(&by_key, k, j);
                size_t q = fdpo_itab_first(&by_div, hd);
                for (; by_div.slot[q]; q = fdpo_itab_next(&by_div, q))
                    if (!strcmp(cell_str(groups[by_div.slot[q] - 1], dc), dv)) break;
                if (!by_div.slot[q]) fdpo_itab_set(&by_div, q, j);
                first_of_div[j] = by_div.slot[q] - 1;
                dashes[j] = (int)n_of_div[first_of_div[j]]++;
            }
        }
        group_of[r_i++] = j;
    }
    fdpo_itab_free(&by_key);
    fdpo_itab_free(&by_div);
    row_buckets bk = bucket_rows(group_of, nrows, nk);
    int xlog = !strcmp(x_name, "beta") || !strcmp(x_name, "n_comparisons");
    cJSON_ArrayForEach(row, L->rows) { double x; if (cell_num(row, xc, &x) && x <= 0) xlog = 0; }
    cJSON *series = cJSON_CreateArray();
    xyi *pts = fdpo_malloc((nrows + 1) * sizeof *pts);
    for (size_t d = 0; d < nk; d++) {
        const char *dv = cell_str(groups[d], dc);
        size_t n = 0;
        for (size_t m = bk.start[d]; m < bk.start[d + 1]; m++) {
            const size_t i = bk.members[m];
            double x, y;
            if (cell_num(rowv[i], xc, &x) && cell_num(rowv[i], yc, &y)) pts[n++] = (xyi){x, y, i, rowv[i]};
        }
        qsort(pts, n, sizeof *pts, cmp_xyi);
        const int dash = dashes[d];
        rp_buf label = {0};
        fdpo_rp_puts(&label, div_title(dv));
        for (int g = 0; g < ng; g++) {
            fdpo_rp_printf(&label, ", %s=", L->cols[gcols[g]]);
            group_value_text(&label, groups[d], gcols[g]);
        }
        cJSON *s = series_new(series, label.p, div_color(dv), n > 1, 0);
        cJSON_ReplaceItemInObject(s, "dash", cJSON_CreateNumber(dash));
        for (size_t k = 0; k < n; k++) {
            char tip[400];
            double beta;
            if (bc != xc && cell_num(pts[k].row, bc, &beta))
                snprintf(tip, sizeof tip, "%.250s, \xce\xb2=%g: %s %.4g, %s %.4g", label.p, beta, x_name, pts[k].x, y_name, pts[k].y);
            else snprintf(tip, sizeof tip, "%.250s: %s %.4g, %s %.4g", label.p, x_name, pts[k].x, y_name, pts[k].y);
            series_add(s, pts[k].x, pts[k].y, tip);
        }
        free(label.p);
    }
    free(groups); free(rowv);
    free(group_of);
    free(first_of_div); free(n_of_div); free(dashes);
    free(bk.start); free(bk.members);
    free(pts);
    return chart_emit(ch, series, title, explain, xlabel, ylabel, xlog);
}

static void lab_table(rp_buf *b, const rp_lab *L, size_t max_rows) {
    fdpo_rp_puts(b, "<div class=\"table-wrap\"><table class=\"lab\"><thead><tr>");
    for (size_t i = 0; i < L->n_cols; i++) { fdpo_rp_puts(b, "<th>"); fdpo_rp_html(b, L->cols[i]); fdpo_rp_puts(b, "</th>"); }
    fdpo_rp_puts(b, "</tr></thead><tbody>\n");
    size_t n = 0;
    const cJSON *row;
    cJSON_ArrayForEach(row, L->rows) {
        if (n++ >= max_rows) break;
        fdpo_rp_puts(b, "<tr>");
        const cJSON *x;
        cJSON_ArrayForEach(x, row) {
            if (cJSON_IsNumber(x)) td_num(b, x->valuedouble);
            else td_text(b, cJSON_IsString(x) ? x->valuestring : NULL);
        }
        fdpo_rp_puts(b, "</tr>\n");
    }
    fdpo_rp_puts(b, "</tbody></table></div>\n");
    if ((size_t)cJSON_GetArraySize(L->rows) > max_rows)
        fdpo_rp_printf(b, "<p class=\"explain\">First %zu of %d rows.</p>\n", max_rows, cJSON_GetArraySize(L->rows));
}

static void lab_section(charts *ch, rp_buf *b) {
    rp_ctx *c = ch->c;
    if (!c->n_labs) return;
    fdpo_rp_puts(b, "<h2 id=\"lab\">Lab: exact solutions on finite problems</h2>\n<p class=\"explain\">Computed exactly "
               "by <code>fdpo lab</code> (closed form \xcf\x80* = \xcf\x80_ref\xc2\xb7(f\xe2\x80\xb2)\xe2\x81\xbb\xc2\xb9((r\xe2\x88\x92\xce\xbb)/\xce\xb2), no sampling), so these panels show what each "
               "divergence does without training noise. One line per divergence.</p>\n");
    for (size_t t = 0; t < c->n_labs; t++) {
        const rp_lab *L = &c->labs[t];
        fdpo_rp_puts(b, "<h3 class=\"source\">");
        fdpo_rp_html(b, L->source);
        fdpo_rp_puts(b, "</h3>\n<div class=\"grid\">\n");
        /* need: a column the experiment's table has (gap: noise), so that the reward_gap of
         * coverage and bias tables is not drawn against beta as well; avoid: a column that marks
         * another experiment. A constrained table (min_safety) has kl, expected_reward, entropy
         * and beta too, but one beta: its rows run over the threshold, not along a beta frontier,
         * so it gets its own panels against min_safety instead. */
        static const struct { const char *x, *y, *need, *avoid, *title, *explain, *xlabel, *ylabel; } P[] = {
            {"kl", "expected_reward", NULL, "min_safety", "Lab: exact reward\xe2\x80\x93KL frontier",
             "Expected reward of the exact optimum against its KL(\xcf\x80\xe2\x80\x96\xcf\x80_ref), one point per "
             "\xce\xb2. A curve above another buys more reward for the same KL budget.",
             "KL(\xcf\x80* \xe2\x80\x96 \xcf\x80_ref) (nats)", "expected reward"},
            {"beta", "entropy", NULL, "min_safety", "Lab: entropy of the optimum vs \xce\xb2",
             "Entropy of \xcf\x80* as \xce\xb2 varies: small \xce\xb2 loosens the constraint and lets the optimum "
             "concentrate on the best responses (low entropy); large \xce\xb2 keeps the reference's spread.", "\xce\xb2", "entropy (nats)"},
            {"beta", "support", NULL, "min_safety", "Lab: support size vs \xce\xb2",
             "Number of responses that keep positive probability. Divergences whose f\xe2\x80\xb2 admits 0 "
             "(\xcf\x87\xc2\xb2, TV) drop responses entirely; the f-DPO ones never do.", "\xce\xb2",
             "responses with \xcf\x80*(y) > 0"},
            {"beta", "f_divergence", NULL, "min_safety", "Lab: D_f(\xcf\x80*\xe2\x80\x96\xcf\x80_ref) vs \xce\xb2",
             "The divergence each method itself pays at its optimum, in its own units.", "\xce\xb2", "D_f (own f)"},
            {"beta", "reward_gap", "noise", NULL, "Lab: true-reward gap from reward error vs \xce\xb2",
             "J(\xcf\x80*) \xe2\x88\x92 J(\xcf\x80\xcc\x82): true reward lost by optimising a noisy reward "
             "r\xcc\x82 instead of r. It can be negative (J is the unregularised reward).", "\xce\xb2", "reward gap"},
            {"beta", "objective_gap", "noise", NULL, "Lab: regularised-objective gap vs \xce\xb2",
             "The same comparison on the regularised objective (1), which is never negative; where the file has "
             "the column's bound, compare against it in the table.", "\xce\xb2", "objective gap"},
            {"n_comparisons", "reward_gap", NULL, NULL, "Lab: reward gap vs number of comparisons",
             "r\xcc\x82 fitted by Bradley\xe2\x80\x93Terry from N comparisons drawn from a data policy: the "
             "gap shrinks only where the data covers what \xcf\x80* would generate.", "comparisons N",
             "reward gap"},
            {"beta", "length_increase", NULL, NULL, "Lab: length increase under a length-biased reward vs \xce\xb2",
             "How much longer \xcf\x80\xcc\x82's answers are than \xcf\x80*'s when r\xcc\x82 = r + b\xc2\xb7length.",
             "\xce\xb2", "length increase"},
            /* `fdpo lab constrained --frontier`: one point per threshold B (infeasible ones, NaN, are left out) */
            {"min_safety", "expected_reward", "min_safety", NULL, "Lab: constrained optimum: expected reward vs safety threshold",
             "E[reward] of the optimum of E[r] \xe2\x88\x92 \xce\xb2 D_f subject to E[safety] \xe2\x89\xa5 B, one point per "
             "threshold B: flat while the constraint is inactive, then the reward each divergence gives up for safety.",
             "safety threshold B", "expected reward"},
            {"min_safety", "expected_safety", "min_safety", NULL, "Lab: constrained optimum: expected safety vs safety threshold",
             "E[safety] of the same optimum: on the diagonal E[safety] = B where the constraint binds, above it where it "
             "is inactive.", "safety threshold B", "expected safety"},
            {"min_safety", "lambda", "min_safety", NULL, "Lab: multiplier \xce\xbb* vs safety threshold",
             "The Lagrange multiplier of the safety constraint (0 while inactive): the reward price of one unit of "
             "E[safety] at the optimum.", "safety threshold B", "\xce\xbb*"},
        };
        int drawn = 0;
        for (size_t k = 0; k < sizeof P / sizeof P[0]; k++) {
            if (P[k].need && lab_col(L, P[k].need) < 0) continue;
            if (P[k].avoid && lab_col(L, P[k].avoid) >= 0) continue;
            if (k == 0 && L->on_frontier && c->n_pols) continue;   /* drawn on the evaluation's reward-KL panel */
            drawn += lab_panel(ch, L, P[k].x, P[k].y, P[k].title, P[k].explain, P[k].xlabel, P[k].ylabel);
        }
        fdpo_rp_puts(b, "</div>\n");
        if (drawn) {
            fdpo_rp_puts(b, "<details><summary>table</summary>\n");
            lab_table(b, L, 500);
            fdpo_rp_puts(b, "</details>\n");
        } else {
            lab_table(b, L, 200);
        }
    }
}

/* ---------------------------------------------------------------- page ---- */

static void json_into_script(rp_buf *b, const cJSON *v) {
    char *s = cJSON_PrintUnformatted(v);
    /* '<' occurs only inside JSON strings, where \u003c means the same: no "</script>" */
    for (char *p = s, *q; *p; p = q + 1) {
        q = strchr(p, '<');
        if (!q) { fdpo_rp_puts(b, p); break; }
        fdpo_rp_put(b, p, (size_t)(q - p));
        fdpo_rp_puts(b, "\\u003c");
    }
    free(s);
}

size_t fdpo_rp_render(rp_ctx *c, const char *chartjs, size_t chartjs_len, rp_buf *b) {
    const char *title = c->opts->title ? c->opts->title : "fdpo report";
    rp_buf body = {0};
    charts ch = {c, &body, cJSON_CreateArray(), 0};
    fdpo_rp_number_runs(c);   /* the runs' colour slots, once */
    mark_same_names(c);

    if (c->notes) fdpo_rp_notes(&body, c->notes);

    /* training */
    if (c->n_runs) {
        int any_rows = 0;
        for (size_t i = 0; i < c->n_runs; i++) any_rows |= cJSON_GetArraySize(c->runs[i].rows) > 0;
        if (any_rows) {
            fdpo_rp_puts(&body, "<h2 id=\"training\">Training</h2>\n<p class=\"explain\">One line per run, from each "
                           "run's <code>metrics.jsonl</code>; dashed lines are the held-out (eval_ / val_) values. "
                           "The run's divergence and \xce\xb2 come from its config file, else only the directory name is shown.</p>\n");
            training_table(c, &body);
            fdpo_rp_puts(&body, "<div class=\"grid\">\n");
            training_panel(&ch, "Training loss", "The objective being minimised (preference loss for DPO runs, "
                           "next-token loss for pretrain/SFT). Losses of different divergences are on different "
                           "scales: compare shapes, not levels.", "loss", "loss", NULL,
                           (const char *const[]){"eval_loss", NULL}, " (held out)");
            training_panel(&ch, "Reward margin", "rewards/margins = \xce\xb2\xc2\xb7(log-ratio of chosen \xe2\x88\x92 "
                           "log-ratio of rejected): how far the implicit reward separates the pair. A margin that keeps "
                           "growing while held-out accuracy stalls is the policy drifting from the reference.", "reward margin",
                           "rewards/margins", NULL, (const char *const[]){"eval_rewards/margins", NULL}, " (held out)");
            training_panel(&ch, "Preference accuracy", "rewards/accuracies: the fraction of pairs whose chosen "
                           "response gets the higher implicit reward.", "accuracy", "rewards/accuracies", NULL,
                           (const char *const[]){"eval_rewards/accuracies", NULL}, " (held out)");
            training_panel(&ch, "Implicit rewards: chosen (solid) and rejected (dashed)", "rewards/chosen and "
                           "rewards/rejected (\xce\xb2 \xc3\x97 log-ratio). When both fall, the margin grows by pushing "
                           "the rejected answer down faster than the chosen one, not by raising the chosen one.",
                           "implicit reward", "rewards/chosen", " chosen", (const char *const[]){"rewards/rejected", NULL}, " rejected");
            training_panel(&ch, "Held-out implicit rewards: chosen (solid) and rejected (dashed)", "eval_rewards/chosen "
                           "and eval_rewards/rejected: the same implicit rewards on the held-out pairs.", "implicit reward",
                           "eval_rewards/chosen", " chosen (held out)", (const char *const[]){"eval_rewards/rejected", NULL},
                           " rejected (held out)");
            fdpo_rp_puts(&body, "</div>\n");
            fdpo_rp_loop_section(c, &ch, &body);
        }
    }

    /* evaluation */
    if (c->n_pols) {
        fdpo_rp_puts(&body, "<h2 id=\"evaluation\">Evaluation: what each divergence cost</h2>\n<p class=\"explain\">From "
                       "<code>fdpo eval</code> output. Each policy is one point; points of one divergence are joined in "
                       "order of the x value, so a line traces that divergence's frontier over \xce\xb2. Up and left is "
                       "better: more reward for less departure from the reference.</p>\n");
        /* room for every metric name of every policy: no table leaves one out */
        size_t max_keys = 7;     /* collect_keys' fixed summary keys */
        for (size_t i = 0; i < c->n_pols; i++) max_keys += (size_t)cJSON_GetArraySize(c->pols[i].metrics);
        const char **keys = fdpo_malloc(max_keys * sizeof *keys);
        size_t nk = collect_keys(c, K_SUMMARY, keys, max_keys);
        policy_table(c, &body, "eval-table", keys, nk, NULL);
        fdpo_rp_puts(&body, "<div class=\"grid\">\n");
        frontier_panel(&ch, "Reward\xe2\x80\x93KL frontier", any_lab_frontier(c) ?
                       "Mean reward of sampled completions against the sequence-level KL(\xcf\x80\xe2\x80\x96\xcf\x80_ref) "
                       "(Monte-Carlo). Hover a point for its \xce\xb2 and standard error. Dashed, \"exact (lab)\": the "
                       "exact optimum of each divergence at the same \xce\xb2s on the finite problem of --lab-frontier "
                       "(fdpo lab frontier), in the same reward units: what the objective would reach without "
                       "sampling, optimisation or function-approximation error." :
                       "Mean reward of sampled completions against the "
                       "sequence-level KL(\xcf\x80\xe2\x80\x96\xcf\x80_ref) (Monte-Carlo; per-token KL when that is all "
                       "the eval file has). Hover a point for its \xce\xb2 and standard error.",
                       "KL(\xcf\x80 \xe2\x80\x96 \xcf\x80_ref) (nats)", NULL);
        frontier_panel(&ch, "Reward\xe2\x80\x93" "entropy frontier", "Mean reward against predictive entropy (mean "
                       "full-vocabulary entropy at sampled positions). Low entropy at equal reward means the policy "
                       "collapsed onto fewer answers.", "entropy (nats)", "entropy");
        frontier_panel(&ch, "Reward\xe2\x80\x93" "diversity frontier (distinct-2)", "Mean reward against distinct-2 "
                       "within a prompt (distinct word bigrams / all bigrams of the k samples of each prompt, averaged "
                       "over prompts). Right is more diverse.", "distinct-2 per input", "distinct_2_per_input");
        frontier_panel(&ch, "Reward\xe2\x80\x93" "diversity frontier (self-BLEU)", "Mean reward against word-level "
                       "self-BLEU-4 within a prompt. Left is more diverse (less overlap between samples).",
                       "self-BLEU-4 per input", "self_bleu_4_per_input");
        safety_panel(&ch);
        overoptimisation_panel(&ch);
        fdpo_rp_puts(&body, "</div>\n");
        static const struct { int cls; const char *id, *title, *strip; } DIV_TABLES[] = {
            {K_DIV_FLAT, "diversity-table", "Diversity", NULL},
            {K_DIV_PER, "diversity-per-input-table", "Diversity within a prompt (per input: the k samples of each prompt, averaged)", "_per_input"},
            {K_DIV_ACROSS, "diversity-across-input-table", "Diversity across prompts (across input: the first sample of every prompt)", "_across_input"},
            {K_LENGTH, "length-table", "Length and verbosity", NULL},
        };
        int said = 0;
        for (size_t t = 0; t < sizeof DIV_TABLES / sizeof DIV_TABLES[0]; t++) {
            nk = collect_keys(c, DIV_TABLES[t].cls, keys, max_keys);
            if (!nk) continue;
            if (!said++)
                fdpo_rp_puts(&body, "<h3 id=\"diversity\">Diversity and length</h3>\n<p class=\"explain\">distinct-n: distinct "
                               "n-grams / all n-grams; EAD: distinct n-grams corrected for sample size (higher = more "
                               "diverse); self-BLEU: overlap of each sample with the others (higher = <em>less</em> "
                               "diverse); length in tokens and words, and the correlation of reward with length "
                               "(verbosity bias).</p>\n");
            fdpo_rp_puts(&body, "<h4>"); fdpo_rp_html(&body, DIV_TABLES[t].title); fdpo_rp_puts(&body, "</h4>\n");
            policy_table(c, &body, DIV_TABLES[t].id, keys, nk, DIV_TABLES[t].strip);
        }
        nk = collect_keys(c, K_OTHER, keys, max_keys);
        if (nk) {
            fdpo_rp_puts(&body, "<details><summary>all other metrics (spreads, log-probs, per-token estimates)</summary>\n");
            policy_table(c, &body, "other-table", keys, nk, NULL);
            fdpo_rp_puts(&body, "</details>\n");
        }
        free(keys);
        samples_grid(c, &body);
    }

    lab_section(&ch, &body);

    if (c->n_warnings) {
        fdpo_rp_puts(&body, "<h2 id=\"warnings\">Warnings</h2>\n<p class=\"explain\">Inputs that were skipped while "
                       "building this report.</p>\n<ul class=\"warnings\">\n");
        for (size_t i = 0; i < c->n_warnings; i++) { fdpo_rp_puts(&body, "<li>"); fdpo_rp_html(&body, c->warnings[i]); fdpo_rp_puts(&body, "</li>\n"); }
        fdpo_rp_puts(&body, "</ul>\n");
    }

    /* assemble */
    char when[64] = "";
    time_t now = time(NULL);
    struct tm tmv;
    if (gmtime_r(&now, &tmv)) strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", &tmv);
    size_t css_len, js_len;
    const char *css = fdpo_rp_asset_css(&css_len), *js = fdpo_rp_asset_js(&js_len);
    fdpo_rp_puts(b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
               "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>");
    fdpo_rp_html(b, title);
    fdpo_rp_puts(b, "</title>\n<style>\n");
    fdpo_rp_put(b, css, css_len);
    size_t n_runs = fdpo_rp_runs_with_rows(c);   /* as counted on stdout; a directory of eval files only is no run */
    fdpo_rp_printf(b, "</style>\n</head>\n<body data-charts-expected=\"%zu\">\n<header><h1>", ch.n);
    fdpo_rp_html(b, title);
    fdpo_rp_printf(b, "</h1><p class=\"meta\">%zu run%s, %zu evaluated polic%s, %zu lab table%s \xc2\xb7 generated %s by "
                 "<code>fdpo report</code> \xc2\xb7 charts: Chart.js (MIT), inlined</p>\n",
              n_runs, n_runs == 1 ? "" : "s", c->n_pols, c->n_pols == 1 ? "y" : "ies",
              c->n_labs, c->n_labs == 1 ? "" : "s", when);
    fdpo_rp_puts(b, "<p id=\"js-status\" class=\"bad\" hidden></p>\n<nav>");
    if (c->notes) fdpo_rp_puts(b, "<a href=\"#summary\">summary</a> ");
    if (n_runs) fdpo_rp_puts(b, "<a href=\"#training\">training</a> ");   /* the section of the runs with rows */
    if (strstr(body.p ? body.p : "", "<h2 id=\"loop\">")) fdpo_rp_puts(b, "<a href=\"#loop\">loop</a> ");
    if (c->n_pols) fdpo_rp_puts(b, "<a href=\"#evaluation\">evaluation</a> ");
    if (c->n_labs) fdpo_rp_puts(b, "<a href=\"#lab\">lab</a> ");
    if (c->n_warnings) fdpo_rp_printf(b, "<a href=\"#warnings\">%zu warning%s</a>", c->n_warnings, c->n_warnings == 1 ? "" : "s");
    fdpo_rp_puts(b, "</nav></header>\n<main>\n");
    fdpo_rp_put(b, body.p ? body.p : "", body.n);
    fdpo_rp_puts(b, "</main>\n<script type=\"application/json\" id=\"fdpo-charts\">");
    json_into_script(b, ch.specs);
    fdpo_rp_puts(b, "</script>\n<script>\n");
    fdpo_rp_put(b, chartjs, chartjs_len);
    fdpo_rp_puts(b, "\n</script>\n<script>\n");
    fdpo_rp_put(b, js, js_len);
    fdpo_rp_puts(b, "</script>\n</body>\n</html>\n");
    free(body.p);
    cJSON_Delete(ch.specs);
    return ch.n;
}
