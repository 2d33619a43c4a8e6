/* Diversity, calibration and summary statistics (DESIGN.md §5; definitions in docs/eval.md). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/eval.h"

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

void fdpo_words_split(const char *text, fdpo_words *out) {
    out->w = NULL; out->n = 0;
    size_t cap = 0;
    for (const char *s = text; *s;) {
        while (*s && is_space(*s)) s++;
        if (!*s) break;
        const char *b = s;
        while (*s && !is_space(*s)) s++;
        if (out->n == cap) { cap = cap ? 2 * cap : 16; out->w = fdpo_realloc(out->w, cap * sizeof *out->w); }
        size_t len = (size_t)(s - b);
        char *w = fdpo_malloc(len + 1);
        memcpy(w, b, len); w[len] = 0;
        out->w[out->n++] = w;
    }
}

void fdpo_words_free(fdpo_words *w) {
    for (size_t i = 0; i < w->n; i++) free(w->w[i]);
    free(w->w);
    w->w = NULL; w->n = 0;
}

/* ---- n-gram counting: an open-addressing table keyed by (words, start, n) ---- */
typedef struct {
    const fdpo_words *text; size_t start; size_t count; uint64_t hash;
    size_t max1, max2, arg1; /* self-BLEU: the two largest per-text counts, and whose the largest is */
} ngram_entry;
/* entries in insertion order; the shared open-addressing index (fdpo_itab) finds them */
typedef struct { ngram_entry *e; size_t n, cap_e; fdpo_itab idx; size_t order; } ngram_table;

static uint64_t ngram_hash(const fdpo_words *t, size_t start, size_t n) {
    uint64_t h = FDPO_HASH_INIT;
    for (size_t i = 0; i < n; i++) {
        const char *w = t->w[start + i];
        h = fdpo_hash64(h, w, strlen(w) + 1); /* the NUL separates words */
    }
    return h;
}

static int ngram_equal(const fdpo_words *a, size_t sa, const fdpo_words *b, size_t sb, size_t n) {
    for (size_t i = 0; i < n; i++) if (strcmp(a->w[sa + i], b->w[sb + i])) return 0;
    return 1;
}

static uint64_t entry_hash(size_t item, const void *ctx) { return ((const ngram_table *)ctx)->e[item].hash; }

static void table_init(ngram_table *t, size_t order, size_t expected) {
    t->order = order;
    t->n = 0;
    t->cap_e = expected > 16 ? expected : 16;
    t->e = fdpo_malloc(t->cap_e * sizeof *t->e);
    fdpo_itab_init(&t->idx, t->cap_e);
}

static void table_free(ngram_table *t) {
    free(t->e);
    fdpo_itab_free(&t->idx);
}

/* the entry of the n-gram w[start..start+order) with hash h, or NULL; *slot (may be NULL)
 * gets the empty index slot where it would go */
static ngram_entry *table_find(const ngram_table *t, const fdpo_words *w, size_t start, uint64_t h, size_t *slot) {
    size_t i = fdpo_itab_first(&t->idx, h);
    for (; t->idx.slot[i]; i = fdpo_itab_next(&t->idx, i)) {
        ngram_entry *e = &t->e[t->idx.slot[i] - 1];
        if (e->hash == h && ngram_equal(e->text, e->start, w, start, t->order)) return e;
    }
    if (slot) *slot = i;
    return NULL;
}

/* the entry of the n-gram, added with zero counts when new */
static ngram_entry *table_get(ngram_table *t, const fdpo_words *w, size_t start, uint64_t h) {
    size_t slot;
    ngram_entry *e = table_find(t, w, start, h, &slot);
    if (e) return e;
    if (fdpo_itab_reserve(&t->idx, t->n + 1, entry_hash, t)) table_find(t, w, start, h, &slot);
    if (t->n == t->cap_e) { t->cap_e *= 2; t->e = fdpo_realloc(t->e, t->cap_e * sizeof *t->e); }
    t->e[t->n] = (ngram_entry){.text = w, .start = start, .hash = h};
    fdpo_itab_set(&t->idx, slot, t->n);
    return &t->e[t->n++];
}

/* Adds every n-gram of text; returns how many it added. */
static size_t table_add_text(ngram_table *t, const fdpo_words *w) {
    size_t n = t->order;
    if (w->n < n) return 0;
    for (size_t s = 0; s + n <= w->n; s++) table_get(t, w, s, ngram_hash(w, s, n))->count++;
    return w->n - n + 1;
}

static size_t table_count(const ngram_table *t, const fdpo_words *w, size_t start) {
    const ngram_entry *e = table_find(t, w, start, ngram_hash(w, start, t->order), NULL);
    return e ? e->count : 0;
}

void fdpo_distinct(const fdpo_words *texts, size_t n_texts, size_t n, double vocab, double *distinct, double *ead) {
    size_t total_words = 0;
    for (size_t i = 0; i < n_texts; i++) total_words += texts[i].n;
    ngram_table t;
    table_init(&t, n, total_words);
    size_t total = 0;
    for (size_t i = 0; i < n_texts; i++) total += table_add_text(&t, &texts[i]);
    double N = (double)t.n, C = (double)total;
    if (distinct) *distinct = total ? N / C : 0.0;
    if (ead) {
        /* expected number of distinct items when C items are drawn uniformly from V:
         * V (1 - ((V-1)/V)^C), computed with log1p/expm1 so that large V stays exact */
        double expected = vocab > 1 ? -vocab * expm1(C * log1p(-1.0 / vocab)) : 1.0;
        *ead = total ? N / expected : 0.0;
    }
    table_free(&t);
}

/* BLEU from clipped counts num[n-1] / den[n-1] (den already max(1, .)), as nltk: 0 without
 * a unigram match, method1 (0.1 / den) for other zero counts, uniform weights, brevity
 * penalty against the closest reference length. */
static double bleu_from_counts(const double *num, const double *den, size_t max_n, size_t hyp_len, size_t closest) {
    if (num[0] == 0) return 0.0;
    double log_sum = 0;
    for (size_t n = 0; n < max_n; n++) log_sum += log(num[n] == 0 ? 0.1 / den[n] : num[n] / den[n]) / (double)max_n;
    double bp = hyp_len > closest ? 1.0 : hyp_len == 0 ? 0.0 : exp(1.0 - (double)closest / (double)hyp_len);
    return bp * exp(log_sum);
}

/* Closest length to hyp_len among lens[j], j != skip (the shorter one on ties). */
static size_t closest_length(const size_t *lens, size_t n, size_t skip, size_t hyp_len) {
    size_t best = 0; int have = 0;
    for (size_t j = 0; j < n; j++) {
        if (j == skip) continue;
        size_t d = lens[j] > hyp_len ? lens[j] - hyp_len : hyp_len - lens[j];
        size_t db = best > hyp_len ? best - hyp_len : hyp_len - best;
        if (!have || d < db || (d == db && lens[j] < best)) { best = lens[j]; have = 1; }
    }
    return best;
}

double fdpo_sentence_bleu(const fdpo_words *refs, size_t n_refs, const fdpo_words *hyp, size_t max_n) {
    double num[16] = {0}, den[16] = {0};
    if (max_n > 16) max_n = 16;
    for (size_t n = 1; n <= max_n; n++) {
        if (hyp->n >= n) {
            /* hypothesis n-gram counts, each clipped by its largest count in any reference */
            ngram_table h;
            table_init(&h, n, hyp->n);
            table_add_text(&h, hyp);
            for (size_t r = 0; r < n_refs; r++) {
                ngram_table rt;
                table_init(&rt, n, refs[r].n);
                table_add_text(&rt, &refs[r]);
                for (size_t i = 0; i < h.n; i++) {
                    size_t c = table_count(&rt, h.e[i].text, h.e[i].start);
                    if (c > h.e[i].max1) h.e[i].max1 = c;
                }
                table_free(&rt);
            }
            for (size_t i = 0; i < h.n; i++) {
                num[n - 1] += (double)(h.e[i].count < h.e[i].max1 ? h.e[i].count : h.e[i].max1);
                den[n - 1] += (double)h.e[i].count;
            }
            table_free(&h);
        }
        if (den[n - 1] < 1) den[n - 1] = 1;
    }
    size_t *lens = fdpo_malloc((n_refs ? n_refs : 1) * sizeof *lens);
    for (size_t r = 0; r < n_refs; r++) lens[r] = refs[r].n;
    size_t closest = closest_length(lens, n_refs, (size_t)-1, hyp->n);
    free(lens);
    return bleu_from_counts(num, den, max_n, hyp->n, closest);
}

double fdpo_self_bleu(const fdpo_words *texts, size_t n_texts, size_t max_n) {
    if (n_texts < 2) return NAN;
    if (max_n > 16) max_n = 16;
    /* For each n-gram the two largest per-text counts (and which text holds the largest)
     * give "its largest count in any OTHER text" in O(1): linear in the total n-grams
     * instead of rebuilding every reference set for every hypothesis. */
    double *num = fdpo_calloc(n_texts * max_n, sizeof(double)), *den = fdpo_calloc(n_texts * max_n, sizeof(double));
    size_t *lens = fdpo_malloc(n_texts * sizeof *lens), total_words = 0;
    for (size_t i = 0; i < n_texts; i++) { lens[i] = texts[i].n; total_words += texts[i].n; }
    ngram_table *per = fdpo_malloc(n_texts * sizeof *per);
    for (size_t n = 1; n <= max_n; n++) {
        ngram_table all;
        table_init(&all, n, total_words);
        for (size_t i = 0; i < n_texts; i++) {
            table_init(&per[i], n, texts[i].n);
            table_add_text(&per[i], &texts[i]);
            for (size_t e = 0; e < per[i].n; e++) {
                const ngram_entry *x = &per[i].e[e];
                ngram_entry *g = table_get(&all, x->text, x->start, x->hash);
                if (x->count > g->max1) { g->max2 = g->max1; g->max1 = x->count; g->arg1 = i; }
                else if (x->count > g->max2) g->max2 = x->count;
            }
        }
        for (size_t i = 0; i < n_texts; i++) {
            double nu = 0, de = 0;
            for (size_t e = 0; e < per[i].n; e++) {
                const ngram_entry *x = &per[i].e[e];
                const ngram_entry *g = table_find(&all, x->text, x->start, x->hash, NULL);
                size_t other = g->arg1 == i ? g->max2 : g->max1;
                nu += (double)(x->count < other ? x->count : other);
                de += (double)x->count;
            }
            num[i * max_n + n - 1] = nu;
            den[i * max_n + n - 1] = de < 1 ? 1 : de;
            table_free(&per[i]);
        }
        table_free(&all);
    }
    double sum = 0;
    for (size_t i = 0; i < n_texts; i++)
        sum += bleu_from_counts(num + i * max_n, den + i * max_n, max_n, lens[i], closest_length(lens, n_texts, i, lens[i]));
    free(per); free(num); free(den); free(lens);
    return sum / (double)n_texts;
}

void fdpo_calibration(const double *p, size_t n, double *accuracy, double *ece) {
    double bin_conf[10] = {0}, bin_correct[10] = {0};
    size_t bin_n[10] = {0}, correct = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(p[i] >= 0.0 && p[i] <= 1.0)) { /* NaN has no bin (its cast to int is undefined) */
            if (accuracy) *accuracy = NAN;
            if (ece) *ece = NAN;
            return;
        }
        int right = p[i] > 0.5;
        double conf = right ? p[i] : 1.0 - p[i];
        int b = (int)floor(conf * 10.0);
        if (b > 9) b = 9;
        if (b < 0) b = 0;
        bin_conf[b] += conf; bin_correct[b] += right; bin_n[b]++;
        correct += (size_t)right;
    }
    double e = 0;
    for (int b = 0; b < 10; b++)
        if (bin_n[b]) e += fabs(bin_correct[b] - bin_conf[b]) / (double)n; /* n_b/n * |acc_b - conf_b| */
    if (accuracy) *accuracy = n ? (double)correct / (double)n : NAN;
    if (ece) *ece = n ? e : NAN;
}

/* 1 if every x[i] equals x[0]. Constancy is tested on the values: the computed mean of
 * n copies of 0.1 can be an ulp off 0.1, so sxx came out ~1e-33 rather than 0, and a
 * constant reward gave a correlation of 2e-16 where it has none. */
static int all_equal(const double *x, size_t n) {
    for (size_t i = 1; i < n; i++) if (x[i] != x[0]) return 0;
    return 1;
}

/* A cmd: reward may be any finite double, and squares of deviations overflow above ~1e154
 * (the sums themselves near DBL_MAX) and underflow below ~1e-154: a std of 1e300 rewards was
 * inf, a correlation finite/inf = 0. Values whose largest magnitude lies outside
 * [2^-200, 2^200] are scaled by 2^-e to a largest magnitude in [0.5, 1), and the results
 * scaled back: exact, but for values below 2^-1021 of the largest (they become subnormal),
 * which are below the spread's rounding anyway (the mean is summed unscaled: fdpo_stats_of);
 * inside that range e is 0 and nothing changes. NaN and inf are left
 * as they are (e 0), so they still make the result NaN. */
static int scale_exponent(const double *x, size_t n) {
    double largest = 0;
    for (size_t i = 0; i < n; i++) if (fabs(x[i]) > largest) largest = fabs(x[i]);
    if (!isfinite(largest) || largest == 0 || (largest >= 0x1p-200 && largest <= 0x1p200)) return 0;
    int e;
    frexp(largest, &e);
    return e;
}

/* The exactly rounded sum of x (Shewchuk's algorithm, as Python's math.fsum): the partials
 * p[] hold the running sum exactly as non-overlapping doubles, smallest first; the result is
 * their sum rounded once, half to even. A plain sum rounds at every step, and a sum cancelling
 * across scales, (1, 1e300, -1e300), came out 0 rather than 1. Sums that overflow, inf and NaN
 * give the plain sum. */
double fdpo_exact_sum(const double *x, size_t n) {
    double plain = 0;
    for (size_t i = 0; i < n; i++) plain += x[i];
    if (!isfinite(plain)) return plain;
    double small[64], *p = small;
    size_t np = 0, cap = 64;
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        size_t k = 0;
        for (size_t j = 0; j < np; j++) {
            double y = p[j];
            if (fabs(v) < fabs(y)) { double t = v; v = y; y = t; }
            const double hi = v + y, lo = y - (hi - v);
            if (lo != 0) p[k++] = lo;
            v = hi;
        }
        if (!isfinite(v)) { if (p != small) free(p); return plain; }   /* an intermediate overflowed */
        np = k;
        if (np == cap) {
            double *q = fdpo_malloc(2 * cap * sizeof *q);
            memcpy(q, p, np * sizeof *q);
            if (p != small) free(p);
            p = q; cap *= 2;
        }
        p[np++] = v;
    }
    double hi = 0, lo = 0;
    if (np > 0) {
        hi = p[--np];
        while (np > 0) {   /* add the partials from the top until the sum is inexact */
            const double a = hi, y = p[--np];
            hi = a + y;
            lo = y - (hi - a);
            if (lo != 0) break;
        }
        /* half-way case: the rest moves the tie toward lo's side */
        if (np > 0 && ((lo < 0 && p[np - 1] < 0) || (lo > 0 && p[np - 1] > 0))) {
            const double y = lo * 2, a = hi + y;
            if (y == a - hi) hi = a;
        }
    }
    if (p != small) free(p);
    return hi;
}

/* Mean of d_i = x_i * 2^-e - x_0 * 2^-e, the values scaled and centred on the first one.
 * A plain sum of n copies of 0.1 divided by n is a few ulps off 0.1, and values an ulp apart
 * then got deviations measured from a centre outside them: a constant reward had std 1e-17,
 * near-constant ones a std and correlation wrong by up to 9x. d_i is exact for close values
 * (Sterbenz), 0 for a constant column, and at most 2^201 after scale_exponent. */
static double centred_mean(const double *x, size_t n, int e) {
    const double x0 = ldexp(x[0], -e);
    double md = 0;
    for (size_t i = 0; i < n; i++) md += ldexp(x[i], -e) - x0;
    return md / (double)n;
}

double fdpo_pearson(const double *x, const double *y, size_t n) {
    if (n < 2 || all_equal(x, n) || all_equal(y, n)) return NAN;
    const int ex = scale_exponent(x, n), ey = scale_exponent(y, n);   /* r does not depend on scale */
    const double x0 = ldexp(x[0], -ex), y0 = ldexp(y[0], -ey);
    const double mdx = centred_mean(x, n, ex), mdy = centred_mean(y, n, ey);
    double sxy = 0, sxx = 0, syy = 0;
    for (size_t i = 0; i < n; i++) {
        double dx = (ldexp(x[i], -ex) - x0) - mdx, dy = (ldexp(y[i], -ey) - y0) - mdy;
        sxy += dx * dy; sxx += dx * dx; syy += dy * dy;
    }
    if (sxx <= 0 || syy <= 0) return NAN;
    return sxy / sqrt(sxx * syy);
}

fdpo_stats fdpo_stats_of(const double *x, size_t n) {
    fdpo_stats s = {NAN, NAN, NAN, n};
    if (n == 0) return s;
    if (all_equal(x, n)) {   /* a constant column: its mean exactly, no spread (n copies of 0.1 summed and divided need not give 0.1 back) */
        s.mean = x[0];
        if (n > 1 && isfinite(x[0])) s.std = s.se = 0;
        else if (n > 1) s.std = s.se = NAN;
        return s;
    }
    const int e = scale_exponent(x, n);   /* the sums below are of x * 2^-e */
    double *xs = fdpo_malloc(n * sizeof *xs), lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        xs[i] = ldexp(x[i], -e);
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    /* the mean is the exactly rounded sum over n (math.fsum(x) / len(x)); an inf or NaN in x
     * gives the plain sum's inf or NaN. Kept inside [min, max], where the exact mean lies. */
    const double sum = fdpo_exact_sum(xs, n), m = sum / (double)n;
    /* the mean from the values as they are: scaled by 2^-e, those below 2^-1021 of the largest
     * lose bits the exact sum keeps ((1e-300, 1e300, -1e300) gave 0, a review's find); the
     * scaled sum only where this one overflows */
    const double whole = fdpo_exact_sum(x, n);
    s.mean = isfinite(whole) ? whole / (double)n : ldexp(m, e);
    if (isfinite(s.mean)) s.mean = s.mean < lo ? lo : s.mean > hi ? hi : s.mean;
    if (n < 2) { free(xs); return s; }
    /* two passes: deviations from the rounded mean, with the correction (sum d)^2 / n for the
     * mean's own rounding (the corrected two-pass algorithm); sum d exactly rounded */
    double v = 0;
    for (size_t i = 0; i < n; i++) { xs[i] -= m; v += xs[i] * xs[i]; }
    const double c = fdpo_exact_sum(xs, n);
    free(xs);
    v -= c * c / (double)n;
    if (v < 0) v = 0;
    const double std_scaled = sqrt(v / (double)(n - 1));
    s.std = ldexp(std_scaled, e);
    s.se = ldexp(std_scaled / sqrt((double)n), e);   /* finite even where std is past DBL_MAX */
    return s;
}
