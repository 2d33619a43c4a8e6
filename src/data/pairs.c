/* Scored samples -> preference pairs with Bradley-Terry-sampled labels. */
#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/objectives.h"
#include "fdpo/pairs.h"
#include "data/jsonl.h"

void fdpo_sample_recs_free(fdpo_sample_rec *recs, size_t n) {
    for (size_t i = 0; i < n; i++) { free(recs[i].prompt); free(recs[i].completion); }
    free(recs);
}

static int get_string(const cJSON *o, const char *key, char **out, const char *path, size_t line) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return fdpo_error("%s:%zu: missing field \"%s\"", path, line, key);
    if (!cJSON_IsString(v)) return fdpo_error("%s:%zu: field \"%s\" must be a string", path, line, key);
    if (!fdpo_utf8_valid(v->valuestring, strlen(v->valuestring)))   /* else the pairs file, read later, is blamed */
        return fdpo_error("%s:%zu: field \"%s\" is not valid UTF-8", path, line, key);
    *out = fdpo_strdup(v->valuestring);
    return 0;
}

int fdpo_sample_recs_read(const char *path, fdpo_sample_rec **recs_out, size_t *n_out) {
    FILE *f = fdpo_open_regular(path);
    if (!f) return -1;
    fdpo_sample_rec *recs = NULL;
    size_t n = 0, cap = 0, line_no = 0, len_cap = 0;
    char *line = NULL;
    ssize_t got;
    int rc = 0;
    while ((got = getline(&line, &len_cap, f)) != -1) {
        line_no++;
        const size_t bom = line_no == 1 ? fdpo_jsonl_bom(line, (size_t)got) : 0;   /* a UTF-8 BOM is not data */
        const char *text = line + bom;
        const size_t n_text = (size_t)got - bom;
        size_t k = 0;
        while (k < n_text && (text[k] == ' ' || text[k] == '\t' || text[k] == '\r' || text[k] == '\n')) k++;
        if (k == n_text) continue; /* blank line */
        /* with line 1's BOM: the parser skips it and refuses a second one */
        cJSON *o = fdpo_jsonl_parse_object(path, line_no, line, (size_t)got, "{\"prompt\", \"completion\", \"reward\"}");
        if (!o) { rc = -1; break; }
        char where[PATH_MAX + 32];   /* "PATH:LINE": a path of up to PATH_MAX survives whole */
        snprintf(where, sizeof where, "%s:%zu", path, line_no);
        if (fdpo_jsonl_check_nul(where, text, n_text, o)) { cJSON_Delete(o); rc = -1; break; }
        fdpo_sample_rec r = {0};
        r.line = line_no;
        if (get_string(o, "prompt", &r.prompt, path, line_no) ||
            get_string(o, "completion", &r.completion, path, line_no)) {
            free(r.prompt); cJSON_Delete(o); rc = -1; break;
        }
        const cJSON *rw = cJSON_GetObjectItemCaseSensitive(o, "reward");
        if (rw) {
            if (!cJSON_IsNumber(rw) || !isfinite(rw->valuedouble)) {
                free(r.prompt); free(r.completion); cJSON_Delete(o);
                rc = fdpo_error("%s:%zu: field \"reward\" must be a finite number", path, line_no);
                break;
            }
            r.reward = rw->valuedouble; r.has_reward = 1;
        }
        const cJSON *nt = cJSON_GetObjectItemCaseSensitive(o, "n_tokens");
        r.has_n_tokens = nt != NULL;
        if (nt && fdpo_json_size(nt, &r.n_tokens)) {
            free(r.prompt); free(r.completion); cJSON_Delete(o);
            rc = fdpo_error("%s:%zu: field \"n_tokens\" must be a non-negative integer", path, line_no);
            break;
        }
        cJSON_Delete(o);
        if (n == cap) { cap = cap ? 2 * cap : 64; recs = fdpo_realloc(recs, cap * sizeof *recs); }
        recs[n++] = r;
    }
    free(line);
    fclose(f);
    if (rc) { fdpo_sample_recs_free(recs, n); return -1; }
    if (n == 0) { free(recs); return fdpo_error("%s: no records", path); }
    *recs_out = recs; *n_out = n;
    return 0;
}

int fdpo_pairs_config_check(const fdpo_pairs_config *c) {
    if (!(c->scale > 0) || !isfinite(c->scale)) return fdpo_error("--bt-scale: must be a finite number > 0 (got %g)", c->scale);
    return 0;
}

/* Group key: index of the first record with the same prompt. O(n * prompts), fine for the
 * sizes a preference set has; a hash would only matter past ~10^5 distinct prompts. */
int fdpo_make_pairs(const fdpo_sample_rec *recs, size_t n, const fdpo_pairs_config *c,
                    fdpo_pair **pairs_out, size_t *n_pairs_out, fdpo_pairs_skipped *skipped) {
    if (fdpo_pairs_config_check(c)) return -1;
    double scale = c->scale;
    for (size_t i = 0; i < n; i++)
        if (!recs[i].has_reward) return fdpo_error("line %zu: record has no reward (give --reward)", recs[i].line);
    size_t *group = fdpo_malloc(n * sizeof *group);
    size_t *firsts = fdpo_malloc(n * sizeof *firsts), n_groups = 0;
    for (size_t i = 0; i < n; i++) {
        size_t g = n_groups;
        for (size_t j = 0; j < n_groups; j++)
            if (strcmp(recs[firsts[j]].prompt, recs[i].prompt) == 0) { g = j; break; }
        if (g == n_groups) firsts[n_groups++] = i;
        group[i] = g;
    }
    fdpo_rng rng;
    fdpo_rng_seed(&rng, c->seed);
    fdpo_pair *pairs = fdpo_malloc((n / 2 + 1) * sizeof *pairs);
    size_t np = 0, same = 0, ties = 0, empty = 0, unpaired = 0, beyond_max = 0;
    size_t *members = fdpo_malloc(n * sizeof *members);
    for (size_t g = 0; g < n_groups; g++) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++) if (group[i] == g) members[m++] = i;
        fdpo_rng_shuffle(&rng, members, m);
        size_t made = 0, k = 0;
        for (; k + 1 < m; k += 2) {
            if (c->max_per_prompt && made >= c->max_per_prompt) break;
            const fdpo_sample_rec *a = &recs[members[k]], *b = &recs[members[k + 1]];
            if (strcmp(a->completion, b->completion) == 0) { same++; continue; }
            if (c->skip_ties && a->reward == b->reward) { ties++; continue; }
            double p_a = fdpo_sigmoid((a->reward - b->reward) / scale);
            int a_wins = fdpo_rng_uniform(&rng) < p_a;
            /* an empty side (EOT drawn first) makes no pair: a preference file refuses one. After
             * the draw, so the other pairs keep the labels they had when such pairs were kept. */
            if (!*a->completion || !*b->completion) { empty++; continue; }
            pairs[np].chosen = a_wins ? members[k] : members[k + 1];
            pairs[np].rejected = a_wins ? members[k + 1] : members[k];
            pairs[np].p_chosen = a_wins ? p_a : 1.0 - p_a;
            np++; made++;
        }
        if (k + 1 < m) beyond_max += m - k;
        else unpaired += m - k;
    }
    free(members); free(group); free(firsts);
    *pairs_out = pairs; *n_pairs_out = np;
    if (skipped) *skipped = (fdpo_pairs_skipped){same, ties, empty, unpaired, beyond_max};
    return 0;
}

void fdpo_pair_row_write(FILE *f, const char *prompt, const char *chosen, const char *rejected, double chosen_reward,
                         double rejected_reward) {
    cJSON *row = cJSON_CreateObject();
    cJSON_AddStringToObject(row, "prompt", prompt);
    cJSON_AddStringToObject(row, "chosen", chosen);
    cJSON_AddStringToObject(row, "rejected", rejected);
    cJSON_AddNumberToObject(row, "chosen_reward", chosen_reward);
    cJSON_AddNumberToObject(row, "rejected_reward", rejected_reward);
    char *line = fdpo_json_print(row, 0);
    fprintf(f, "%s\n", line);
    free(line);
    cJSON_Delete(row);
}
