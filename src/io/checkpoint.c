/* Hugging Face GPT-2 checkpoint directories: config.json (GPT2Config keys) and
 * model.safetensors (Conv1D layout, "transformer."-prefixed or bare names). */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/io.h"
#include "fdpo/tokenizer.h"

/* A required positive integer key. */
static int config_size(const char *path, const cJSON *root, const char *key, const char *alt, size_t *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j && alt) j = cJSON_GetObjectItemCaseSensitive(root, alt);
    if (!j) return alt ? fdpo_error("%s: missing key '%s' (or '%s')", path, key, alt)
                       : fdpo_error("%s: missing key '%s'", path, key);
    double v = cJSON_IsNumber(j) ? j->valuedouble : -1;
    if (!(v >= 1) || v != floor(v) || v > 1e9)
        return fdpo_error("%s: key '%s' must be a positive integer", path, j->string);
    *out = (size_t)v;
    return 0;
}

int fdpo_config_load(const char *path, fdpo_gpt2_config *c) {
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) return -1;
    int rc = fdpo_config_parse(path, text, len, c);
    free(text);
    return rc;
}

int fdpo_config_parse(const char *path, const char *text, size_t len, fdpo_gpt2_config *c) {
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fdpo_error("%s: not a JSON object (malformed config)", path);
    }
    int rc = 0;
    memset(c, 0, sizeof *c);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    const cJSON *by_layer = cJSON_GetObjectItemCaseSensitive(root, "scale_attn_by_inverse_layer_idx");
    const cJSON *scale = cJSON_GetObjectItemCaseSensitive(root, "scale_attn_weights");
    if (!mt) rc = fdpo_error("%s: missing key 'model_type' (want \"gpt2\")", path);
    else if (!cJSON_IsString(mt) || strcmp(mt->valuestring, "gpt2"))
        rc = fdpo_error("%s: model_type '%.64s' is not supported (fdpo runs GPT-2: model_type \"gpt2\")", path,
                        cJSON_IsString(mt) ? mt->valuestring : "(not a string)");
    else if (act && !cJSON_IsNull(act) && (!cJSON_IsString(act) || strcmp(act->valuestring, "gelu_new")))
        rc = fdpo_error("%s: activation_function '%.64s' is not supported (only gelu_new)", path,
                        cJSON_IsString(act) ? act->valuestring : "(not a string)");
    else if (inner && !cJSON_IsNull(inner))
        rc = fdpo_error("%s: n_inner must be null (the MLP width is 4 * n_embd)", path);
    else if (tie && cJSON_IsFalse(tie))
        rc = fdpo_error("%s: tie_word_embeddings false is not supported (the LM head is wte)", path);
    else if (by_layer && cJSON_IsTrue(by_layer))
        rc = fdpo_error("%s: scale_attn_by_inverse_layer_idx true is not supported", path);
    else if (scale && cJSON_IsFalse(scale))
        rc = fdpo_error("%s: scale_attn_weights false is not supported", path);
    if (!rc) rc = config_size(path, root, "vocab_size", NULL, &c->vocab_size);
    if (!rc) rc = config_size(path, root, "n_positions", "n_ctx", &c->n_positions);
    if (!rc) rc = config_size(path, root, "n_embd", NULL, &c->n_embd);
    if (!rc) rc = config_size(path, root, "n_layer", NULL, &c->n_layer);
    if (!rc) rc = config_size(path, root, "n_head", NULL, &c->n_head);
    c->layer_norm_epsilon = 1e-5f;
    if (!rc && eps) {
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0))
            rc = fdpo_error("%s: layer_norm_epsilon must be a positive number", path);
        else c->layer_norm_epsilon = (float)eps->valuedouble;
    }
    cJSON_Delete(root);
    if (!rc && fdpo_gpt2_config_check(c)) rc = fdpo_error_context("%s", path);
    return rc;
}

int fdpo_config_save(const char *path, const fdpo_gpt2_config *c) {
    if (fdpo_gpt2_config_check(c)) return fdpo_error_context("%s", path);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "activation_function", "gelu_new");
    cJSON *arch = cJSON_AddArrayToObject(root, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("GPT2LMHeadModel"));
    char eps[32];
    fdpo_fmt_float(eps, sizeof eps, c->layer_norm_epsilon);
    cJSON_AddRawToObject(root, "layer_norm_epsilon", eps);
    cJSON_AddStringToObject(root, "model_type", "gpt2");
    cJSON_AddNumberToObject(root, "n_ctx", (double)c->n_positions);
    cJSON_AddNumberToObject(root, "n_embd", (double)c->n_embd);
    cJSON_AddNumberToObject(root, "n_head", (double)c->n_head);
    cJSON_AddNumberToObject(root, "n_layer", (double)c->n_layer);
    cJSON_AddNumberToObject(root, "n_positions", (double)c->n_positions);
    cJSON_AddBoolToObject(root, "tie_word_embeddings", 1);
    cJSON_AddNumberToObject(root, "vocab_size", (double)c->vocab_size);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    size_t n = strlen(text);
    text = fdpo_realloc(text, n + 2);
    text[n] = '\n';
    int rc = fdpo_write_file_atomic(path, text, n + 1);
    free(text);
    return rc;
}

/* "transformer.h.{i}.x" -> "transformer.h.<layer>.x" (or the name itself) into buf */
static void tensor_name(char *buf, size_t n, const char *pattern, size_t layer) {
    const char *brace = strstr(pattern, "{i}");
    if (!brace) snprintf(buf, n, "%s", pattern);
    else snprintf(buf, n, "%.*s%zu%s", (int)(brace - pattern), pattern, layer, brace + 3);
}

static void fmt_shape(char *buf, size_t n, const size_t *shape, int ndim) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++) k += (size_t)snprintf(buf + k, n - k, "%s%zu", i ? "," : "", shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Is this a tensor name we know and skip? (causal-mask buffers, the tied LM head) */
static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}
static int is_skipped_name(const char *name) {
    return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") || !strcmp(name, "lm_head.weight");
}

static size_t count_non_finite(const float *x, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !isfinite(x[i]);
    return bad;
}

int fdpo_checkpoint_check_tokenizer(const char *dir, const fdpo_gpt2_config *c, const fdpo_tokenizer *t) {
    size_t tv = fdpo_tokenizer_vocab_size(t), mv = c->vocab_size;
    if (tv > mv)
        return fdpo_error("%s: the tokenizer has %zu tokens but config.json vocab_size is %zu (ids %zu..%zu would have "
                          "no embedding row; wrong tokenizer or config?)", dir, tv, mv, mv, tv - 1);
    return 0;
}

fdpo_gpt2 *fdpo_checkpoint_load_model(const char *dir) {
    char *cfg_path = fdpo_path_join(dir, "config.json");
    char *st_path = fdpo_path_join(dir, "model.safetensors");
    fdpo_gpt2 *m = NULL;
    fdpo_safetensors st = {0};
    fdpo_gpt2_config c;
    int rc = fdpo_config_load(cfg_path, &c);
    if (!rc && !fdpo_file_exists(st_path))
        rc = fdpo_error("%s: missing (fdpo reads model.safetensors; convert .bin checkpoints first)", st_path);
    if (!rc) rc = fdpo_st_open(&st, st_path);
    if (!rc) {
        /* A config much larger than the file (a typo in n_embd, the wrong config.json) must
         * not allocate gigabytes before the per-tensor checks below name the culprit; small
         * models go straight to those more precise checks. */
        double C = (double)c.n_embd, in_file = 0;
        double want = ((double)c.vocab_size + (double)c.n_positions) * C + 2 * C + (double)c.n_layer * (12 * C * C + 13 * C);
        for (size_t k = 0; k < st.n_tensors; k++) {
            double numel = 1;
            for (int d = 0; d < st.tensors[k].ndim; d++) numel *= (double)st.tensors[k].shape[d];
            in_file += numel;
        }
        if (want > in_file && want > 16777216.0)
            rc = fdpo_error("%s: config.json implies %.0f parameters but %s holds only %.0f values", cfg_path, want, st_path, in_file);
    }
    if (!rc && !(m = fdpo_gpt2_create(&c))) rc = fdpo_error_context("%s", cfg_path);
    size_t *used = NULL;
    if (!rc) used = fdpo_calloc(st.n_tensors ? st.n_tensors : 1, sizeof(size_t));
    for (int i = 0; !rc && i < FDPO_GPT2_NUM_TENSORS; i++) {
        const fdpo_gpt2_tensor *t = &m->tensors[i];
        size_t n_copies = t->per_layer ? c.n_layer : 1, one = t->numel / n_copies;
        for (size_t l = 0; !rc && l < n_copies; l++) {
            char name[160];
            tensor_name(name, sizeof name, t->name, l);
            const char *bare = name + strlen("transformer.");
            const fdpo_st_tensor *f = fdpo_st_find(&st, name);
            if (!f) f = fdpo_st_find(&st, bare);
            if (!f) { rc = fdpo_error("%s: missing tensor '%s'", st_path, name); break; }
            used[f - st.tensors] = 1;
            int same = f->ndim == t->ndim;
            for (int d = 0; same && d < t->ndim; d++) same = f->shape[d] == t->shape[d];
            if (!same) {
                char have[96], want[96];
                fmt_shape(have, sizeof have, f->shape, f->ndim);
                fmt_shape(want, sizeof want, t->shape, t->ndim);
                rc = fdpo_error("%s: tensor '%s': shape %s, but config.json (V=%zu, T=%zu, C=%zu) wants %s",
                                st_path, f->name, have, c.vocab_size, c.n_positions, c.n_embd, want);
                break;
            }
            float *dst = m->params_memory + t->offset + l * one;
            rc = fdpo_st_read_f32(&st, f, dst, one);
            /* NaN/Inf weights would only show up later as empty samples or a "diverged" run */
            size_t bad = rc ? 0 : count_non_finite(dst, one);
            if (bad) rc = fdpo_error("%s: tensor '%s' has %zu non-finite value%s (NaN or Inf)", st_path, f->name, bad,
                                     bad == 1 ? "" : "s");
        }
    }
    /* lm_head.weight must be the tied wte; anything else unknown means a different model */
    for (size_t k = 0; !rc && k < st.n_tensors; k++) {
        const fdpo_st_tensor *f = &st.tensors[k];
        if (used[k]) continue;
        if (!is_skipped_name(f->name)) { rc = fdpo_error("%s: unexpected tensor '%s' (not part of GPT-2)", st_path, f->name); break; }
        if (strcmp(f->name, "lm_head.weight")) continue;
        size_t n = m->tensors[0].numel;
        float *head = fdpo_malloc(n * sizeof(float));
        rc = fdpo_st_read_f32(&st, f, head, n);
        if (!rc && memcmp(head, m->params.wte, n * sizeof(float)))
            rc = fdpo_error("%s: tensor 'lm_head.weight' differs from wte (fdpo needs a tied LM head)", st_path);
        free(head);
    }
    free(used);
    fdpo_st_close(&st);
    free(cfg_path);
    free(st_path);
    if (rc) { fdpo_gpt2_free(m); return NULL; }
    return m;
}

void fdpo_st_writer_add_gpt2(fdpo_st_writer *w, const fdpo_gpt2 *m, const float *memory, const char *prefix) {
    for (int i = 0; i < FDPO_GPT2_NUM_TENSORS; i++) {
        const fdpo_gpt2_tensor *t = &m->tensors[i];
        size_t n_copies = t->per_layer ? m->config.n_layer : 1, one = t->numel / n_copies;
        for (size_t l = 0; l < n_copies; l++) {
            char name[160], full[256];
            tensor_name(name, sizeof name, t->name, l);
            snprintf(full, sizeof full, "%s%s", prefix ? prefix : "", name);
            fdpo_st_writer_add(w, full, FDPO_F32, t->shape, t->ndim, memory + t->offset + l * one);
        }
    }
}

int fdpo_st_read_gpt2(const fdpo_safetensors *st, const fdpo_gpt2 *m, float *memory, const char *prefix) {
    for (int i = 0; i < FDPO_GPT2_NUM_TENSORS; i++) {
        const fdpo_gpt2_tensor *t = &m->tensors[i];
        size_t n_copies = t->per_layer ? m->config.n_layer : 1, one = t->numel / n_copies;
        for (size_t l = 0; l < n_copies; l++) {
            char name[160], full[256];
            tensor_name(name, sizeof name, t->name, l);
            snprintf(full, sizeof full, "%s%s", prefix ? prefix : "", name);
            const fdpo_st_tensor *f = fdpo_st_find(st, full);
            if (!f) return fdpo_error("%s: missing tensor '%s'", st->path, full);
            int same = f->ndim == t->ndim;
            for (int d = 0; same && d < t->ndim; d++) same = f->shape[d] == t->shape[d];
            if (!same) {
                char have[96], want[96];
                fmt_shape(have, sizeof have, f->shape, f->ndim);
                fmt_shape(want, sizeof want, t->shape, t->ndim);
                return fdpo_error("%s: tensor '%s': shape %s, the model wants %s", st->path, full, have, want);
            }
            if (fdpo_st_read_f32(st, f, memory + t->offset + l * one, one)) return -1;
        }
    }
    return 0;
}

int fdpo_checkpoint_save_model(const char *dir, const fdpo_gpt2 *m) {
    if (fdpo_mkdir_p(dir)) return -1;
    char *cfg_path = fdpo_path_join(dir, "config.json");
    char *st_path = fdpo_path_join(dir, "model.safetensors");
    int rc = fdpo_config_save(cfg_path, &m->config);
    if (!rc) {
        fdpo_st_writer *w = fdpo_st_writer_new();
        fdpo_st_writer_meta(w, "format", "pt");
        fdpo_st_writer_add_gpt2(w, m, m->params_memory, NULL);
        rc = fdpo_st_writer_write(w, st_path);
        fdpo_st_writer_free(w);
    }
    free(cfg_path);
    free(st_path);
    return rc;
}
