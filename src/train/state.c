/* Training state beside a checkpoint: DIR/training_state.json (step, RNG, data order, the
 * run's typed settings) and DIR/training_state.safetensors (AdamW moments). */
#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/io.h"
#include "fdpo/trainer.h"
#include "data/jsonl.h"
#include "train/settings_json.h"

void fdpo_train_state_free(fdpo_train_state *s) {
    fdpo_order_free(&s->data);
    fdpo_settings_free(&s->settings);
    free(s->kind); s->kind = NULL;
}

static void hex64(char *buf, uint64_t v) { snprintf(buf, 17, "%016" PRIx64, v); }
static int parse_hex64(const cJSON *j, uint64_t *v) {
    if (!cJSON_IsString(j) || strlen(j->valuestring) != 16) return -1;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(j->valuestring, &end, 16);
    if (errno || *end) return -1;
    *v = (uint64_t)x;
    return 0;
}

/* "transformer.h.{i}.ln_1.weight" with layer l -> "PREFIXtransformer.h.3.ln_1.weight" */
static void tensor_name(char *buf, size_t n, const char *prefix, const char *pattern, size_t layer) {
    const char *brace = strstr(pattern, "{i}");
    if (!brace) { snprintf(buf, n, "%s%s", prefix, pattern); return; }
    snprintf(buf, n, "%s%.*s%zu%s", prefix, (int)(brace - pattern), pattern, layer, brace + 3);
}

/* The moments as safetensors tensors named after the parameters (torch's state names). */
static int save_moments(const char *path, const fdpo_adamw *opt, const fdpo_gpt2 *m) {
    fdpo_st_writer *w = fdpo_st_writer_new();
    fdpo_strv names = {0};   /* the writer keeps pointers to the names until it writes */
    /* before the first step the moments are zero by definition, whatever the buffers hold
     * (fdpo_adamw_reset does not clear them) */
    float *zeros = opt->t == 0 ? fdpo_calloc(opt->n ? opt->n : 1, sizeof(float)) : NULL;
    for (int which = 0; which < 2; which++) {
        const float *base = zeros ? zeros : which ? opt->v : opt->m;
        const char *prefix = which ? "exp_avg_sq." : "exp_avg.";
        for (int ti = 0; ti < (int)m->n_tensors; ti++) {
            const fdpo_gpt2_tensor *t = &m->tensors[ti];
            size_t layers = t->per_layer ? m->config.n_layer : 1, per = t->numel / layers;
            for (size_t l = 0; l < layers; l++) {
                char name[256];
                tensor_name(name, sizeof name, prefix, t->name, l);
                const char *kept = fdpo_strv_push(&names, name);
                fdpo_st_writer_add(w, kept, FDPO_F32, t->shape, t->ndim, base + t->offset + l * per);
            }
        }
    }
    char steps[32];
    snprintf(steps, sizeof steps, "%zu", opt->t);
    fdpo_st_writer_meta(w, "format", "fdpo-adamw");
    fdpo_st_writer_meta(w, "adamw_step", steps);
    int rc = fdpo_st_writer_write(w, path);
    fdpo_st_writer_free(w);
    fdpo_strv_free(&names);
    free(zeros);
    return rc;
}

static int load_moments(const char *path, fdpo_adamw *opt, const fdpo_gpt2 *m) {
    fdpo_safetensors st;
    if (fdpo_st_open(&st, path)) return -1;
    int rc = 0;
    for (int which = 0; which < 2 && !rc; which++) {
        float *base = which ? opt->v : opt->m;
        const char *prefix = which ? "exp_avg_sq." : "exp_avg.";
        for (int ti = 0; ti < (int)m->n_tensors && !rc; ti++) {
            const fdpo_gpt2_tensor *t = &m->tensors[ti];
            size_t layers = t->per_layer ? m->config.n_layer : 1, per = t->numel / layers;
            for (size_t l = 0; l < layers && !rc; l++) {
                char name[256];
                tensor_name(name, sizeof name, prefix, t->name, l);
                const fdpo_st_tensor *x = fdpo_st_find(&st, name);
                if (!x) { rc = fdpo_error("%s: tensor '%s' missing", path, name); break; }
                if (x->dtype != FDPO_F32) { rc = fdpo_error("%s: tensor '%s': dtype %s, want F32", path, name, x->dtype_name); break; }
                if (fdpo_st_read_f32(&st, x, base + t->offset + l * per, per)) { rc = fdpo_error_context("%s", path); break; }
            }
        }
    }
    fdpo_st_close(&st);
    return rc;
}

static cJSON *state_json(const fdpo_train_state *s, const fdpo_adamw *opt) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "format", "fdpo-training-state");
    cJSON_AddNumberToObject(j, "version", 2);   /* 2: typed "settings" + "fixed" names */
    cJSON_AddStringToObject(j, "kind", s->kind ? s->kind : "");
    cJSON_AddNumberToObject(j, "step", (double)s->step);
    cJSON_AddNumberToObject(j, "total_steps", (double)s->total_steps);
    if (opt) cJSON_AddNumberToObject(j, "adamw_step", (double)opt->t);
    cJSON *rng = cJSON_AddArrayToObject(j, "rng");
    for (int i = 0; i < 4; i++) { char h[17]; hex64(h, s->rng.s[i]); cJSON_AddItemToArray(rng, cJSON_CreateString(h)); }
    char h[17]; hex64(h, s->data_hash);
    cJSON_AddStringToObject(j, "data_hash", h);
    if (s->has_eval_data) {   /* the held-out set (dpo, rm, kto) */
        cJSON *ev = cJSON_AddObjectToObject(j, "eval_data");
        cJSON_AddNumberToObject(ev, "n_items", (double)s->eval_n_items);
        hex64(h, s->eval_hash);
        cJSON_AddStringToObject(ev, "hash", h);
    }
    if (s->has_ref_hash) { hex64(h, s->ref_hash); cJSON_AddStringToObject(j, "ref_hash", h); }
    if (s->has_base_hash) { hex64(h, s->base_hash); cJSON_AddStringToObject(j, "lora_base_hash", h); }
    if (s->has_reward_hash) { hex64(h, s->reward_hash); cJSON_AddStringToObject(j, "reward_hash", h); }
    cJSON *data = cJSON_AddObjectToObject(j, "data");
    cJSON_AddNumberToObject(data, "n_items", (double)s->data.n);
    cJSON_AddNumberToObject(data, "epoch", (double)s->data.epoch);
    cJSON_AddNumberToObject(data, "pos", (double)s->data.pos);
    cJSON_AddBoolToObject(data, "shuffle", s->data.shuffle);
    cJSON *order = cJSON_AddArrayToObject(data, "order");
    for (size_t i = 0; i < s->data.n; i++) cJSON_AddItemToArray(order, cJSON_CreateNumber((double)s->data.order[i]));
    cJSON_AddItemToObject(j, "settings", fdpo_settings_to_json(&s->settings));
    cJSON *fixed = cJSON_AddArrayToObject(j, "fixed");
    for (size_t i = 0; i < s->settings.n; i++)
        if (s->settings.v[i].fixed) cJSON_AddItemToArray(fixed, cJSON_CreateString(s->settings.v[i].key));
    return j;
}

int fdpo_train_state_save(const char *dir, const fdpo_train_state *s, const fdpo_adamw *opt,
                          const fdpo_gpt2 *m) {
    /* opt NULL: the state of a run that is never resumed mid-way (an online round), no moments */
    char *st_path = fdpo_path_join(dir, "training_state.safetensors");
    int rc = opt ? save_moments(st_path, opt, m) : 0;
    free(st_path);
    if (rc) return -1;
    cJSON *j = state_json(s, opt);
    char *path = fdpo_path_join(dir, "training_state.json");
    rc = fdpo_write_json_atomic(path, j, 0);
    cJSON_Delete(j);
    free(path);
    return rc;
}

char *fdpo_train_state_text(const fdpo_train_state *s) {
    cJSON *j = state_json(s, NULL);
    char *text = fdpo_json_print(j, 0);
    cJSON_Delete(j);
    size_t n = strlen(text);
    char *line = fdpo_malloc(n + 2);   /* as fdpo_write_json_atomic writes it: one line */
    memcpy(line, text, n);
    line[n] = '\n';
    line[n + 1] = 0;
    free(text);
    return line;
}

static cJSON *read_state_json(const char *dir, char **path_out) {
    char *path = fdpo_path_join(dir, "training_state.json");
    if (!fdpo_file_exists(path)) {
        fdpo_error("%s: no training state (training_state.json missing: nothing to resume; "
                   "start without --resume)", dir);
        free(path); return NULL;
    }
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) { free(path); return NULL; }
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j || !cJSON_IsObject(j)) { cJSON_Delete(j); fdpo_error("%s: not a JSON object", path); free(path); return NULL; }
    *path_out = path;
    return j;
}

static int get_size(const cJSON *obj, const char *key, const char *path, size_t *v) {
    if (fdpo_json_size(cJSON_GetObjectItemCaseSensitive(obj, key), v))
        return fdpo_error("%s: field '%s' missing or not a non-negative integer", path, key);
    return 0;
}

/* Version 2: "settings" {key: typed value} and "fixed" [keys]; version 1: "fixed" {key: text}. */
static int read_settings(const cJSON *j, const char *path, fdpo_settings *out) {
    const cJSON *settings = cJSON_GetObjectItemCaseSensitive(j, "settings");
    const cJSON *fixed = cJSON_GetObjectItemCaseSensitive(j, "fixed");
    if (cJSON_IsObject(settings) && cJSON_IsArray(fixed)) return fdpo_settings_from_json(out, settings, fixed, path);
    if (cJSON_IsObject(fixed)) return fdpo_settings_from_json(out, fixed, NULL, path);
    return fdpo_error("%s: field 'settings' missing", path);
}

int fdpo_train_state_read_settings(const char *dir, fdpo_settings *settings, size_t *step) {
    char *path;
    if (settings) memset(settings, 0, sizeof *settings);
    cJSON *j = read_state_json(dir, &path);
    if (!j) return -1;
    int rc = settings ? read_settings(j, path, settings) : 0;
    if (!rc && step) rc = get_size(j, "step", path, step);
    if (rc && settings) fdpo_settings_free(settings);
    cJSON_Delete(j); free(path);
    return rc;
}

int fdpo_train_state_check_kind(const char *dir, const char *kind) {
    char *path = fdpo_path_join(dir, "training_state.json");
    size_t len;
    char *text = fdpo_file_exists(path) ? fdpo_read_file(path, &len) : NULL;
    cJSON *j = text ? cJSON_ParseWithLength(text, len) : NULL;
    const cJSON *saved = cJSON_GetObjectItemCaseSensitive(j, "kind");
    int rc = 0;
    if (cJSON_IsString(saved) && strcmp(saved->valuestring, kind))
        rc = fdpo_error("--resume: %s holds a '%s' run, not '%s'", dir, saved->valuestring, kind);
    cJSON_Delete(j); free(text); free(path);
    return rc;
}

int fdpo_train_state_load(const char *dir, fdpo_train_state *s, fdpo_adamw *opt, const fdpo_gpt2 *m) {
    memset(s, 0, sizeof *s);
    char *path;
    cJSON *j = read_state_json(dir, &path);
    if (!j) return -1;
    int rc = -1;
    size_t adamw_t = 0, n_items = 0, epoch = 0, pos = 0;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(j, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "fdpo-training-state")) { fdpo_error("%s: field 'format' is not \"fdpo-training-state\"", path); goto done; }
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(j, "kind");
    if (!cJSON_IsString(kind)) { fdpo_error("%s: field 'kind' missing", path); goto done; }
    if (get_size(j, "step", path, &s->step) || get_size(j, "total_steps", path, &s->total_steps) ||
        get_size(j, "adamw_step", path, &adamw_t)) goto done;
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(j, "rng");
    if (!cJSON_IsArray(rng) || cJSON_GetArraySize(rng) != 4) { fdpo_error("%s: field 'rng' must be 4 hex strings", path); goto done; }
    for (int i = 0; i < 4; i++)
        if (parse_hex64(cJSON_GetArrayItem(rng, i), &s->rng.s[i])) { fdpo_error("%s: field 'rng' must be 4 hex strings", path); goto done; }
    if (parse_hex64(cJSON_GetObjectItemCaseSensitive(j, "data_hash"), &s->data_hash)) { fdpo_error("%s: field 'data_hash' must be a hex string", path); goto done; }
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(j, "eval_data");   /* absent: a state of an older fdpo */
    if (ev) {
        if (!cJSON_IsObject(ev) || get_size(ev, "n_items", path, &s->eval_n_items) ||
            parse_hex64(cJSON_GetObjectItemCaseSensitive(ev, "hash"), &s->eval_hash)) {
            fdpo_error("%s: field 'eval_data' must hold 'n_items' and a hex string 'hash'", path);
            goto done;
        }
        s->has_eval_data = 1;
    }
    /* absent in the state of an older fdpo (or a run without a reference / LoRA base) */
    const cJSON *ref_hash = cJSON_GetObjectItemCaseSensitive(j, "ref_hash"), *base_hash = cJSON_GetObjectItemCaseSensitive(j, "lora_base_hash");
    if (ref_hash && parse_hex64(ref_hash, &s->ref_hash)) { fdpo_error("%s: field 'ref_hash' must be a hex string", path); goto done; }
    if (base_hash && parse_hex64(base_hash, &s->base_hash)) { fdpo_error("%s: field 'lora_base_hash' must be a hex string", path); goto done; }
    s->has_ref_hash = ref_hash != NULL;
    s->has_base_hash = base_hash != NULL;
    const cJSON *reward_hash = cJSON_GetObjectItemCaseSensitive(j, "reward_hash");   /* rl, online step; absent before */
    if (reward_hash && parse_hex64(reward_hash, &s->reward_hash)) { fdpo_error("%s: field 'reward_hash' must be a hex string", path); goto done; }
    s->has_reward_hash = reward_hash != NULL;
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    if (!cJSON_IsObject(data)) { fdpo_error("%s: field 'data' missing", path); goto done; }
    if (get_size(data, "n_items", path, &n_items) || get_size(data, "epoch", path, &epoch) || get_size(data, "pos", path, &pos)) goto done;
    const cJSON *order = cJSON_GetObjectItemCaseSensitive(data, "order");
    if (!cJSON_IsArray(order) || (size_t)cJSON_GetArraySize(order) != n_items || pos > n_items) { fdpo_error("%s: field 'data.order' must list n_items indices", path); goto done; }
    s->data.n = n_items; s->data.epoch = epoch; s->data.pos = pos; s->data.step_start = pos;
    s->data.shuffle = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(data, "shuffle"));
    s->data.order = fdpo_malloc((n_items ? n_items : 1) * sizeof(size_t));
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, order) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= (double)n_items) { fdpo_error("%s: field 'data.order' has an index out of range", path); goto done; }
        s->data.order[i++] = (size_t)e->valuedouble;
    }
    if (read_settings(j, path, &s->settings)) goto done;
    s->kind = fdpo_strdup(kind->valuestring);
    char *st_path = fdpo_path_join(dir, "training_state.safetensors");
    int mrc = load_moments(st_path, opt, m);
    free(st_path);
    if (mrc) goto done;
    opt->t = adamw_t;
    rc = 0;
done:
    if (rc) fdpo_train_state_free(s);
    cJSON_Delete(j);
    free(path);
    return rc;
}
