/* fdpo-harness objectives FILE|-
 *
 * Evaluates the f-divergence table and the preference losses over a JSON grid, for
 * tests/py/test_objectives.py. Input:
 *   {"divergences": ["rkl", "alpha:0.5", ...], "u": [...], "v": [...], "l": [...], "lq": -1,
 *    "losses": [{"loss": "sigmoid", "divergence": "js", "beta": 0.1, "label_smoothing": 0,
 *                "simpo_gamma": 0, "pairs": [[lw, ll], ...]}, ...], "x": [...]}
 * Output (one JSON object; non-finite numbers as NaN/Infinity/-Infinity, which Python's
 * json module reads):
 *   {"divergences": [{"name", "admissible", "why", "sup", "f", "fprime" (over u),
 *                     "fprime_inv" (over v), "f_log", "f_over_u", "score", "score_grad" (over l),
 *                     "qf_log" (fdpo_qf_log(d, lp, lq) for lp over l, lq from "lq", default 0)}],
 *    "losses": [{"loss": [...], "dlw": [...], "dll": [...]}],
 *    "logistic": {"sigmoid", "log_sigmoid", "softplus" (over x)}}
 * A bad spec or a loss that fdpo_pref_loss_check refuses is an error (exit 1, message). */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/objectives.h"
#include "harness.h"

static void put_num(double v) {
    if (isnan(v)) fputs("NaN", stdout);
    else if (isinf(v)) fputs(v > 0 ? "Infinity" : "-Infinity", stdout);
    else printf("%.17g", v);
}

static void put_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        putchar(*s);
    }
    putchar('"');
}

/* numbers of a JSON array (NULL/empty allowed) */
static double *read_array(const cJSON *a, size_t *n, const char *what) {
    *n = 0;
    if (!a) return NULL;
    if (!cJSON_IsArray(a)) { fdpo_error("'%s' must be an array", what); return NULL; }
    size_t m = (size_t)cJSON_GetArraySize(a);
    double *x = fdpo_malloc((m ? m : 1) * sizeof *x);
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        if (!cJSON_IsNumber(e)) { free(x); fdpo_error("'%s'[%zu] is not a number", what, i); return NULL; }
        x[i++] = e->valuedouble;
    }
    *n = m;
    return x;
}

static void put_map(const fdpo_divergence *d, double (*fn)(const fdpo_divergence *, double), const double *x, size_t n) {
    putchar('[');
    for (size_t i = 0; i < n; i++) { if (i) putchar(','); put_num(fn(d, x[i])); }
    putchar(']');
}

static double num_field(const cJSON *o, const char *key, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

int h_objectives(int argc, char **argv) {
    if (argc < 2) return fdpo_error("usage: fdpo-harness objectives FILE|-");
    char *text;
    if (!strcmp(argv[1], "-")) {
        size_t cap = 4096, len = 0;
        text = fdpo_malloc(cap);
        size_t got;
        while ((got = fread(text + len, 1, cap - len - 1, stdin)) > 0) {
            len += got;
            if (cap - len < 2) { cap *= 2; text = fdpo_realloc(text, cap); }
        }
        text[len] = 0;
    } else {
        size_t len;
        text = fdpo_read_file(argv[1], &len);
        if (!text) return -1;
    }
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) return fdpo_error("input is not valid JSON");
    int rc = -1;
    double *u = NULL, *v = NULL, *l = NULL, *x = NULL;
    size_t nu, nv, nl, nx;
    u = read_array(cJSON_GetObjectItemCaseSensitive(root, "u"), &nu, "u");
    v = read_array(cJSON_GetObjectItemCaseSensitive(root, "v"), &nv, "v");
    l = read_array(cJSON_GetObjectItemCaseSensitive(root, "l"), &nl, "l");
    x = read_array(cJSON_GetObjectItemCaseSensitive(root, "x"), &nx, "x");
    const double lq = num_field(root, "lq", 0);
    if ((!u && nu) || (!v && nv) || (!l && nl) || (!x && nx)) goto done;

    /* validate everything before printing, so an error leaves stdout empty */
    const cJSON *divs = cJSON_GetObjectItemCaseSensitive(root, "divergences");
    const cJSON *losses = cJSON_GetObjectItemCaseSensitive(root, "losses");
    const cJSON *e;
    cJSON_ArrayForEach(e, divs) {
        fdpo_divergence d;
        if (!cJSON_IsString(e)) { fdpo_error("'divergences' entries must be strings"); goto done; }
        if (fdpo_divergence_parse(e->valuestring, &d)) goto done;
    }
    size_t n_losses = (size_t)cJSON_GetArraySize(losses);
    fdpo_pref_loss *cfg = fdpo_calloc(n_losses ? n_losses : 1, sizeof *cfg);
    size_t k = 0;
    cJSON_ArrayForEach(e, losses) {
        fdpo_pref_loss *L = &cfg[k++];
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "loss");
        const cJSON *div = cJSON_GetObjectItemCaseSensitive(e, "divergence");
        if (fdpo_loss_parse(cJSON_IsString(name) ? name->valuestring : "", &L->kind)) { free(cfg); goto done; }
        if (fdpo_divergence_parse(cJSON_IsString(div) ? div->valuestring : "rkl", &L->div)) {
            fdpo_error_context("--divergence");
            free(cfg);
            goto done;
        }
        L->beta = num_field(e, "beta", 0.1);
        L->label_smoothing = num_field(e, "label_smoothing", 0);
        L->simpo_gamma = num_field(e, "simpo_gamma", 0);
        L->sft_weight = num_field(e, "sft_weight", 0);
        if (fdpo_pref_loss_check(L)) { free(cfg); goto done; }
    }

    printf("{\"divergences\":[");
    int first = 1;
    cJSON_ArrayForEach(e, divs) {
        fdpo_divergence d;
        fdpo_divergence_parse(e->valuestring, &d);
        char name[64];
        fdpo_divergence_name(&d, name, sizeof name);
        const char *why;
        int ok = fdpo_divergence_admissible(&d, &why);
        printf("%s{\"name\":", first ? "" : ",");
        first = 0;
        put_str(name);
        printf(",\"admissible\":%s,\"why\":", ok ? "true" : "false");
        if (why) put_str(why); else fputs("null", stdout);
        fputs(",\"sup\":", stdout); put_num(fdpo_fprime_inv_sup(&d));
        fputs(",\"f\":", stdout); put_map(&d, fdpo_f, u, nu);
        fputs(",\"fprime\":", stdout); put_map(&d, fdpo_fprime, u, nu);
        fputs(",\"fprime_inv\":", stdout); put_map(&d, fdpo_fprime_inv, v, nv);
        fputs(",\"f_log\":", stdout); put_map(&d, fdpo_f_log, l, nl);
        fputs(",\"f_over_u\":", stdout); put_map(&d, fdpo_f_over_u_log, l, nl);
        fputs(",\"score\":", stdout); put_map(&d, fdpo_score, l, nl);
        fputs(",\"score_grad\":", stdout); put_map(&d, fdpo_score_grad, l, nl);
        fputs(",\"qf_log\":[", stdout);
        for (size_t i = 0; i < nl; i++) { if (i) putchar(','); put_num(fdpo_qf_log(&d, l[i], lq)); }
        putchar(']');
        putchar('}');
    }
    printf("],\"losses\":[");
    k = 0;
    cJSON_ArrayForEach(e, losses) {
        const fdpo_pref_loss *L = &cfg[k];
        const cJSON *pairs = cJSON_GetObjectItemCaseSensitive(e, "pairs");
        size_t np = (size_t)cJSON_GetArraySize(pairs);
        double *out = fdpo_malloc(3 * (np ? np : 1) * sizeof *out);
        size_t i = 0;
        const cJSON *p;
        cJSON_ArrayForEach(p, pairs) {
            double lw = cJSON_GetArrayItem(p, 0) ? cJSON_GetArrayItem(p, 0)->valuedouble : NAN;
            double ll = cJSON_GetArrayItem(p, 1) ? cJSON_GetArrayItem(p, 1)->valuedouble : NAN;
            out[3 * i] = fdpo_pref_loss_pair(L, lw, ll, &out[3 * i + 1], &out[3 * i + 2]);
            i++;
        }
        static const char *keys[3] = {"loss", "dlw", "dll"};
        printf("%s{", k ? "," : "");
        for (int c = 0; c < 3; c++) {
            printf("%s\"%s\":[", c ? "," : "", keys[c]);
            for (size_t j = 0; j < np; j++) { if (j) putchar(','); put_num(out[3 * j + c]); }
            putchar(']');
        }
        putchar('}');
        free(out);
        k++;
    }
    printf("],\"logistic\":{");
    double (*const logistic[3])(double) = {fdpo_sigmoid, fdpo_log_sigmoid, fdpo_softplus};
    static const char *lnames[3] = {"sigmoid", "log_sigmoid", "softplus"};
    for (int c = 0; c < 3; c++) {
        printf("%s\"%s\":[", c ? "," : "", lnames[c]);
        for (size_t j = 0; j < nx; j++) { if (j) putchar(','); put_num(logistic[c](x[j])); }
        putchar(']');
    }
    printf("}}\n");
    free(cfg);
    rc = 0;
done:
    free(u); free(v); free(l); free(x);
    cJSON_Delete(root);
    return rc;
}
