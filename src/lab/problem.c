/* Lab problems: generated (Zipf / Dirichlet / uniform pi_ref, Gaussian / uniform rewards) or
 * read from a CSV file, and validated. */
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/lab.h"

void fdpo_lab_problem_free(fdpo_lab_problem *p) {
    free(p->pi_ref); free(p->reward); free(p->reward_hat); free(p->length); free(p->safety); free(p->prompt_offset);
    memset(p, 0, sizeof *p);
}

/* log of a Gamma(a, 1) sample (Marsaglia & Tsang 2000; a < 1 via Gamma(a+1) U^(1/a)), in logs
 * so that small shapes do not underflow. */
static double log_gamma_sample(fdpo_rng *rng, double a) {
    double boost = 0;
    if (a < 1) {
        double u;
        do u = fdpo_rng_uniform(rng); while (u <= 0);
        boost = log(u) / a;
        a += 1;
    }
    const double d = a - 1.0 / 3, c = 1 / sqrt(9 * d);
    for (;;) {
        double x = fdpo_rng_normal(rng), v = 1 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = fdpo_rng_uniform(rng);
        if (u > 0 && log(u) < 0.5 * x * x + d - d * v + d * log(v)) return log(d * v) + boost;
    }
}

void fdpo_lab_gen_default(fdpo_lab_gen *g) {
    *g = (fdpo_lab_gen){.pi_ref_kind = "zipf", .reward_kind = "gaussian", .zipf_s = 1, .dirichlet_alpha = 1,
                        .reward_scale = 1, .length_min = 10, .length_max = 200};
}

int fdpo_lab_generate(const fdpo_lab_gen *g, size_t n, fdpo_rng *rng, fdpo_lab_problem *p) {
    memset(p, 0, sizeof *p);
    if (n == 0) return fdpo_error("--n: must be >= 1 (got 0)");
    int kind;
    if (!strcmp(g->pi_ref_kind, "zipf")) kind = 0;
    else if (!strcmp(g->pi_ref_kind, "dirichlet")) kind = 1;
    else if (!strcmp(g->pi_ref_kind, "uniform")) kind = 2;
    else return fdpo_error("--pi-ref: unknown kind '%s' (expected zipf, dirichlet, uniform)", g->pi_ref_kind);
    int rkind;
    if (!strcmp(g->reward_kind, "gaussian")) rkind = 0;
    else if (!strcmp(g->reward_kind, "uniform")) rkind = 1;
    else return fdpo_error("--reward: unknown kind '%s' (expected gaussian, uniform)", g->reward_kind);
    if (kind == 0 && !(g->zipf_s >= 0 && isfinite(g->zipf_s))) return fdpo_error("--zipf-s: must be >= 0 (got %g)", g->zipf_s);
    if (kind == 1 && !(g->dirichlet_alpha >= 0.01 && isfinite(g->dirichlet_alpha)))
        return fdpo_error("--dirichlet-alpha: must be >= 0.01 (got %g)", g->dirichlet_alpha);
    if (!(g->reward_scale > 0 && isfinite(g->reward_scale))) return fdpo_error("--reward-scale: must be > 0 (got %g)", g->reward_scale);
    if (g->length_min < 0 || g->length_max < g->length_min)
        return fdpo_error("--length-min/--length-max: need 0 <= min <= max (got %ld, %ld)", g->length_min, g->length_max);
    p->n = n;
    p->pi_ref = fdpo_malloc(n * sizeof(double));
    p->reward = fdpo_malloc(n * sizeof(double));
    p->length = fdpo_malloc(n * sizeof(double));
    /* log weights, then a max-shifted normalisation */
    double m = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double lw = kind == 0 ? -g->zipf_s * log((double)(i + 1)) : kind == 1 ? log_gamma_sample(rng, g->dirichlet_alpha) : 0;
        p->pi_ref[i] = lw;
        if (lw > m) m = lw;
    }
    double z = 0;
    for (size_t i = 0; i < n; i++) { p->pi_ref[i] = exp(p->pi_ref[i] - m); z += p->pi_ref[i]; }
    /* a Dirichlet draw with a tiny shape can underflow a component to 0, which the lab refuses
     * (pi_ref > 0): floor it at the smallest normal double, then renormalise */
    double z2 = 0;
    for (size_t i = 0; i < n; i++) { p->pi_ref[i] /= z; if (p->pi_ref[i] < DBL_MIN) p->pi_ref[i] = DBL_MIN; z2 += p->pi_ref[i]; }
    for (size_t i = 0; i < n; i++) p->pi_ref[i] /= z2;
    for (size_t i = 0; i < n; i++)
        p->reward[i] = rkind == 0 ? g->reward_scale * fdpo_rng_normal(rng) : g->reward_scale * (2 * fdpo_rng_uniform(rng) - 1);
    uint64_t span = (uint64_t)(g->length_max - g->length_min) + 1;
    for (size_t i = 0; i < n; i++) p->length[i] = (double)(g->length_min + (long)fdpo_rng_below(rng, span));
    return 0;
}

int fdpo_lab_validate(const fdpo_lab_problem *p, const char *what) {
    if (p->n == 0) return fdpo_error("%s: no responses (n = 0)", what);
    if (p->prompt_offset) {
        if (p->n_prompts < 1 || p->prompt_offset[0] != 0 || p->prompt_offset[p->n_prompts] != p->n)
            return fdpo_error("%s: prompt offsets do not cover the %zu responses", what, p->n);
        for (size_t x = 0; x < p->n_prompts; x++) {
            if (p->prompt_offset[x + 1] <= p->prompt_offset[x]) return fdpo_error("%s: prompt %zu has no responses", what, x);
            fdpo_lab_problem one = *p;
            one.n = p->prompt_offset[x + 1] - p->prompt_offset[x];
            one.n_prompts = 0;
            one.prompt_offset = NULL;
            const size_t o = p->prompt_offset[x];
            one.pi_ref += o; one.reward += o;
            if (one.reward_hat) one.reward_hat += o;
            if (one.length) one.length += o;
            if (one.safety) one.safety += o;
            char w[256];
            snprintf(w, sizeof w, "%s, prompt %zu", what, x);
            if (fdpo_lab_validate(&one, w)) return -1;
        }
        return 0;
    }
    double s = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (!(p->pi_ref[i] > 0) || !isfinite(p->pi_ref[i]))
            return fdpo_error("%s: pi_ref[%zu] = %g: pi_ref must be finite and > 0 (f-regularisation divides by it)", what, i, p->pi_ref[i]);
        if (!isfinite(p->reward[i])) return fdpo_error("%s: reward[%zu] is not finite", what, i);
        if (p->reward_hat && !isfinite(p->reward_hat[i])) return fdpo_error("%s: reward_hat[%zu] is not finite", what, i);
        if (p->safety && !isfinite(p->safety[i])) return fdpo_error("%s: safety[%zu] is not finite", what, i);
        s += p->pi_ref[i];
    }
    if (fabs(s - 1) > 1e-9) return fdpo_error("%s: pi_ref sums to %.17g, not 1", what, s);
    return 0;
}

/* ---- CSV ---- */

enum { COL_PI_REF, COL_REWARD, COL_REWARD_HAT, COL_LENGTH, COL_SAFETY, COL_PROMPT, N_COLS };
static const char *COL_NAMES[N_COLS] = {"pi_ref", "reward", "reward_hat", "length", "safety", "prompt"};

/* a prompt label and the line where its rows start (for the contiguity check) */
typedef struct { char *label; size_t line; } prompt_start;
static int cmp_prompt_start(const void *a, const void *b) {
    const prompt_start *x = a, *y = b;
    int c = strcmp(x->label, y->label);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* pi_ref[0..n) scaled to sum to 1 when it is off by more than 1e-9; *old_sum gets the old sum
 * (0 when untouched). The sum of values near DBL_MAX overflows: sum pi_ref / max instead, and
 * report max * that (inf when the true sum is not representable). */
static void normalise(double *q, size_t n, double *old_sum) {
    double m = 0, s = 0;
    *old_sum = 0;
    for (size_t i = 0; i < n; i++) if (q[i] > m) m = q[i];
    for (size_t i = 0; i < n; i++) s += q[i] / m;
    if (fabs(m * s - 1) > 1e-9) {
        for (size_t i = 0; i < n; i++) q[i] = (q[i] / m) / s;
        *old_sum = m * s;
    }
}

/* Splits line in place at commas; trims spaces. Returns the number of fields (<= max). */
static size_t split_fields(char *line, char **fields, size_t max) {
    size_t k = 0;
    char *s = line;
    for (;;) {
        char *comma = strchr(s, ',');
        if (comma) *comma = 0;
        while (isspace((unsigned char)*s)) s++;
        char *e = s + strlen(s);
        while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
        if (k < max) fields[k] = s;
        k++;
        if (!comma) break;
        s = comma + 1;
    }
    return k;
}

static int all_space(const char *s) {
    for (; *s; s++) if (!isspace((unsigned char)*s)) return 0;
    return 1;
}

int fdpo_lab_read_csv(const char *path, fdpo_lab_problem *p, double *renormalised) {
    memset(p, 0, sizeof *p);
    if (renormalised) *renormalised = 0;
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) return -1; /* the message names the path */
    int rc = -1;
    int col_of_field[16];
    int field_of_col[N_COLS];
    for (int c = 0; c < N_COLS; c++) field_of_col[c] = -1;
    prompt_start *starts = NULL; /* one per prompt, in file order */
    size_t n_starts = 0, cap_starts = 0, *offsets = NULL;
    /* a NUL would end the line scan early and silently drop the rest of the file */
    const char *nul = memchr(text, 0, len);
    if (nul) {
        size_t at = 1;
        for (const char *c = text; c < nul; c++) at += *c == '\n';
        fdpo_error("%s:%zu: NUL byte in a text CSV", path, at);
        free(text);
        return -1;
    }
    size_t n_fields = 0, cap = 0, n = 0, lineno = 0;
    double *cols[N_COLS] = {0};
    char *save = NULL, *line;
    int have_header = 0;
    line = text;
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) line += 3; /* UTF-8 byte-order mark (spreadsheet exports) */
    for (; line; line = save) {
        char *nl = strchr(line, '\n');
        save = nl ? nl + 1 : NULL;
        if (nl) *nl = 0;
        if (nl && nl > line && nl[-1] == '\r') nl[-1] = 0;
        lineno++;
        if (all_space(line)) continue;
        char *f[16];
        size_t k = split_fields(line, f, 16);
        if (!have_header) {
            if (k > 16) { fdpo_error("%s:%zu: too many columns (%zu)", path, lineno, k); goto done; }
            for (size_t j = 0; j < k; j++) {
                int c = -1;
                for (int t = 0; t < N_COLS; t++) if (!strcmp(f[j], COL_NAMES[t])) c = t;
                if (c < 0) { fdpo_error("%s:%zu: unknown column '%s' (expected pi_ref, reward, and optionally reward_hat, length, safety, prompt)", path, lineno, f[j]); goto done; }
                if (field_of_col[c] >= 0) { fdpo_error("%s:%zu: column '%s' appears twice", path, lineno, f[j]); goto done; }
                field_of_col[c] = (int)j;
                col_of_field[j] = c;
            }
            for (int c = 0; c < 2; c++)
                if (field_of_col[c] < 0) { fdpo_error("%s:%zu: missing column '%s' (the header needs pi_ref,reward)", path, lineno, COL_NAMES[c]); goto done; }
            n_fields = k;
            have_header = 1;
            continue;
        }
        if (k != n_fields) { fdpo_error("%s:%zu: expected %zu fields, got %zu", path, lineno, n_fields, k); goto done; }
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            for (int c = 0; c < N_COLS; c++)
                if (field_of_col[c] >= 0 && c != COL_PROMPT) cols[c] = fdpo_realloc(cols[c], cap * sizeof(double));
        }
        for (size_t j = 0; j < k; j++) {
            int c = col_of_field[j];
            if (c == COL_PROMPT) { /* a label: a new one starts the next prompt's rows */
                if (n_starts && !strcmp(starts[n_starts - 1].label, f[j])) continue;
                if (n_starts + 1 >= cap_starts) {
                    cap_starts = cap_starts ? 2 * cap_starts : 64;
                    starts = fdpo_realloc(starts, cap_starts * sizeof *starts);
                    offsets = fdpo_realloc(offsets, (cap_starts + 1) * sizeof *offsets);
                }
                starts[n_starts] = (prompt_start){fdpo_strdup(f[j]), lineno};
                offsets[n_starts++] = n;
                continue;
            }
            char *end;
            errno = 0;
            double v = strtod(f[j], &end);
            /* ERANGE also flags underflow, where strtod returns a subnormal (or 0, which the
             * pi_ref > 0 check then refuses): only overflow is an error */
            if (end == f[j] || *end || (errno == ERANGE && fabs(v) == HUGE_VAL) || !isfinite(v) ||
                !fdpo_number_is_decimal(f[j])) {   /* "0x10" read as 16 */
                fdpo_error("%s:%zu: column '%s': '%s' is not a finite decimal number", path, lineno, COL_NAMES[c], f[j]);
                goto done;
            }
            if (c == COL_PI_REF && !(v > 0)) {
                fdpo_error("%s:%zu: column 'pi_ref': must be > 0 (got %s): the f-divergence divides by pi_ref; drop responses the reference never produces", path, lineno, f[j]);
                goto done;
            }
            if (c == COL_LENGTH && v < 0) { fdpo_error("%s:%zu: column 'length': must be >= 0 (got %s)", path, lineno, f[j]); goto done; }
            cols[c][n] = v;
        }
        n++;
    }
    if (!have_header) { fdpo_error("%s: empty file (expected a header pi_ref,reward)", path); goto done; }
    if (n == 0) { fdpo_error("%s: no data rows (need at least one response)", path); goto done; }
    if (n_starts) {
        /* each prompt's rows are one block: a label seen before another prompt's rows is an error */
        prompt_start *sorted = fdpo_malloc(n_starts * sizeof *sorted);
        memcpy(sorted, starts, n_starts * sizeof *sorted);
        qsort(sorted, n_starts, sizeof *sorted, cmp_prompt_start);
        size_t again = 0;
        for (size_t x = 1; x < n_starts && !again; x++)
            if (!strcmp(sorted[x].label, sorted[x - 1].label)) again = x;
        if (again) fdpo_error("%s:%zu: column 'prompt': '%s' appears again after other prompts' rows (line %zu); "
                              "each prompt's rows must be contiguous", path, sorted[again].line, sorted[again].label,
                              sorted[again - 1].line);
        free(sorted);
        if (again) goto done;
        offsets[n_starts] = n;
    }
    /* pi_ref is a distribution per prompt */
    double *q = cols[COL_PI_REF];
    for (size_t x = 0; x < (n_starts ? n_starts : 1); x++) {
        const size_t lo = n_starts ? offsets[x] : 0, hi = n_starts ? offsets[x + 1] : n;
        double old, m = 0;
        for (size_t i = lo; i < hi; i++) if (q[i] > m) m = q[i];
        normalise(q + lo, hi - lo, &old);
        if (old != 0 && renormalised && *renormalised == 0) *renormalised = old;
        /* a value more than double's range below the largest becomes 0 when normalised; the
         * f-divergence divides by pi_ref, so refuse instead of solving a different problem */
        for (size_t i = lo; i < hi; i++)
            if (!(q[i] > 0)) {
                fdpo_error("%s: data row %zu: pi_ref is so much smaller than the largest (%g) that it is 0 once "
                           "normalised; the lab needs pi_ref > 0 for every response (rescale or drop it)", path, i + 1, m);
                goto done;
            }
    }
    p->n = n;
    p->pi_ref = cols[COL_PI_REF];
    p->reward = cols[COL_REWARD];
    p->reward_hat = cols[COL_REWARD_HAT];
    p->length = cols[COL_LENGTH];
    p->safety = cols[COL_SAFETY];
    if (n_starts) { p->n_prompts = n_starts; p->prompt_offset = offsets; offsets = NULL; }
    memset(cols, 0, sizeof cols);
    rc = 0;
done:
    for (int c = 0; c < N_COLS; c++) free(cols[c]);
    for (size_t x = 0; x < n_starts; x++) free(starts[x].label);
    free(starts); free(offsets);
    free(text);
    return rc;
}

int fdpo_lab_generate_safety(fdpo_lab_problem *p, double correlation, fdpo_rng *rng) {
    if (!(correlation >= -1 && correlation <= 1))   /* sqrt(1 - c^2) would be NaN in every score */
        return fdpo_error("--safety-correlation: must be in [-1, 1] (got %s)", fdpo_shortest(correlation).s);
    free(p->safety);
    p->safety = fdpo_malloc(p->n * sizeof(double));
    double sd = 0;
    for (size_t i = 0; i < p->n; i++) sd += p->reward[i] * p->reward[i] / (double)p->n;
    sd = sqrt(sd);
    const double c = correlation, rest = sqrt(1 - c * c);
    for (size_t i = 0; i < p->n; i++)
        p->safety[i] = c * (sd > 0 ? p->reward[i] / sd : 0) + rest * fdpo_rng_normal(rng);
    return 0;
}
