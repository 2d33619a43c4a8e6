/* Training state beside a checkpoint, atomic checkpoint directories, the epoch data order
 * and the metrics JSONL writer: the pieces every trainer (pretrain, sft, dpo) shares. */
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fdpo/io.h"
#include "fdpo/trainer.h"

/* ---------------------------------------------------------------- data order */

static void order_draw(fdpo_data_order *d, fdpo_rng *rng) {
    for (size_t i = 0; i < d->n; i++) d->order[i] = i;
    if (d->shuffle) fdpo_rng_shuffle(rng, d->order, d->n);
}

void fdpo_order_init(fdpo_data_order *d, size_t n, int shuffle, fdpo_rng *rng) {
    d->n = n; d->shuffle = shuffle; d->epoch = 0; d->pos = 0;
    d->order = fdpo_malloc((n ? n : 1) * sizeof *d->order);
    order_draw(d, rng);
}

size_t fdpo_order_next(fdpo_data_order *d, fdpo_rng *rng) {
    if (d->pos == d->n) { d->epoch++; d->pos = 0; order_draw(d, rng); }
    return d->order[d->pos++];
}

double fdpo_order_epoch(const fdpo_data_order *d) {
    return d->n ? (double)d->epoch + (double)d->pos / (double)d->n : 0;
}

void fdpo_order_free(fdpo_data_order *d) { free(d->order); d->order = NULL; d->n = 0; }

/* ---------------------------------------------------------------- state */

void fdpo_strv_free(char **v, size_t n) {
    if (!v) return;
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

void fdpo_train_state_set_fixed(fdpo_train_state *s, size_t n, const char *const *keys,
                                const char *const *values) {
    fdpo_strv_free(s->fixed_keys, s->n_fixed);
    fdpo_strv_free(s->fixed_values, s->n_fixed);
    s->n_fixed = n;
    s->fixed_keys = fdpo_malloc((n ? n : 1) * sizeof(char *));
    s->fixed_values = fdpo_malloc((n ? n : 1) * sizeof(char *));
    for (size_t i = 0; i < n; i++) { s->fixed_keys[i] = fdpo_strdup(keys[i]); s->fixed_values[i] = fdpo_strdup(values[i]); }
}

void fdpo_train_state_free(fdpo_train_state *s) {
    fdpo_order_free(&s->data);
    fdpo_strv_free(s->fixed_keys, s->n_fixed);
    fdpo_strv_free(s->fixed_values, s->n_fixed);
    s->fixed_keys = s->fixed_values = NULL; s->n_fixed = 0;
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
    char **names = fdpo_malloc(2 * m->n_tensors * (m->config.n_layer + 1) * sizeof(char *));
    size_t n_names = 0;
    for (int which = 0; which < 2; which++) {
        const float *base = which ? opt->v : opt->m;
        const char *prefix = which ? "exp_avg_sq." : "exp_avg.";
        for (int ti = 0; ti < (int)m->n_tensors; ti++) {
            const fdpo_gpt2_tensor *t = &m->tensors[ti];
            size_t layers = t->per_layer ? m->config.n_layer : 1, per = t->numel / layers;
            for (size_t l = 0; l < layers; l++) {
                char name[256];
                tensor_name(name, sizeof name, prefix, t->name, l);
                names[n_names] = fdpo_strdup(name);
                fdpo_st_writer_add(w, names[n_names], FDPO_F32, t->shape, t->ndim, base + t->offset + l * per);
                n_names++;
            }
        }
    }
    char steps[32];
    snprintf(steps, sizeof steps, "%zu", opt->t);
    fdpo_st_writer_meta(w, "format", "fdpo-adamw");
    fdpo_st_writer_meta(w, "adamw_step", steps);
    int rc = fdpo_st_writer_write(w, path);
    fdpo_st_writer_free(w);
    fdpo_strv_free(names, n_names);
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

int fdpo_train_state_save(const char *dir, const fdpo_train_state *s, const fdpo_adamw *opt,
                          const fdpo_gpt2 *m) {
    char *st_path = fdpo_path_join(dir, "training_state.safetensors");
    int rc = save_moments(st_path, opt, m);
    free(st_path);
    if (rc) return -1;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "format", "fdpo-training-state");
    cJSON_AddNumberToObject(j, "version", 1);
    cJSON_AddStringToObject(j, "kind", s->kind ? s->kind : "");
    cJSON_AddNumberToObject(j, "step", (double)s->step);
    cJSON_AddNumberToObject(j, "total_steps", (double)s->total_steps);
    cJSON_AddNumberToObject(j, "adamw_step", (double)opt->t);
    cJSON *rng = cJSON_AddArrayToObject(j, "rng");
    for (int i = 0; i < 4; i++) { char h[17]; hex64(h, s->rng.s[i]); cJSON_AddItemToArray(rng, cJSON_CreateString(h)); }
    char h[17]; hex64(h, s->data_hash);
    cJSON_AddStringToObject(j, "data_hash", h);
    cJSON *data = cJSON_AddObjectToObject(j, "data");
    cJSON_AddNumberToObject(data, "n_items", (double)s->data.n);
    cJSON_AddNumberToObject(data, "epoch", (double)s->data.epoch);
    cJSON_AddNumberToObject(data, "pos", (double)s->data.pos);
    cJSON_AddBoolToObject(data, "shuffle", s->data.shuffle);
    cJSON *order = cJSON_AddArrayToObject(data, "order");
    for (size_t i = 0; i < s->data.n; i++) cJSON_AddItemToArray(order, cJSON_CreateNumber((double)s->data.order[i]));
    cJSON *fixed = cJSON_AddObjectToObject(j, "fixed");
    for (size_t i = 0; i < s->n_fixed; i++) cJSON_AddStringToObject(fixed, s->fixed_keys[i], s->fixed_values[i]);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    char *path = fdpo_path_join(dir, "training_state.json");
    size_t len = strlen(text);
    text = fdpo_realloc(text, len + 2);
    text[len] = '\n'; text[len + 1] = 0;
    rc = fdpo_write_file_atomic(path, text, len + 1);
    free(path); free(text);
    return rc;
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
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble != floor(x->valuedouble) || x->valuedouble > 9e15)
        return fdpo_error("%s: field '%s' missing or not a non-negative integer", path, key);
    *v = (size_t)x->valuedouble;
    return 0;
}

int fdpo_train_state_read_fixed(const char *dir, char ***keys, char ***values, size_t *n) {
    char *path;
    cJSON *j = read_state_json(dir, &path);
    if (!j) return -1;
    const cJSON *fixed = cJSON_GetObjectItemCaseSensitive(j, "fixed");
    if (!cJSON_IsObject(fixed)) { cJSON_Delete(j); fdpo_error("%s: field 'fixed' missing", path); free(path); return -1; }
    size_t cnt = (size_t)cJSON_GetArraySize(fixed), k = 0;
    *keys = fdpo_malloc((cnt ? cnt : 1) * sizeof(char *));
    *values = fdpo_malloc((cnt ? cnt : 1) * sizeof(char *));
    const cJSON *e;
    cJSON_ArrayForEach(e, fixed) {
        if (!cJSON_IsString(e)) continue;
        (*keys)[k] = fdpo_strdup(e->string); (*values)[k] = fdpo_strdup(e->valuestring); k++;
    }
    *n = k;
    cJSON_Delete(j); free(path);
    return (int)k;
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
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    if (!cJSON_IsObject(data)) { fdpo_error("%s: field 'data' missing", path); goto done; }
    if (get_size(data, "n_items", path, &n_items) || get_size(data, "epoch", path, &epoch) || get_size(data, "pos", path, &pos)) goto done;
    const cJSON *order = cJSON_GetObjectItemCaseSensitive(data, "order");
    if (!cJSON_IsArray(order) || (size_t)cJSON_GetArraySize(order) != n_items || pos > n_items) { fdpo_error("%s: field 'data.order' must list n_items indices", path); goto done; }
    s->data.n = n_items; s->data.epoch = epoch; s->data.pos = pos;
    s->data.shuffle = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(data, "shuffle"));
    s->data.order = fdpo_malloc((n_items ? n_items : 1) * sizeof(size_t));
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, order) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= (double)n_items) { fdpo_error("%s: field 'data.order' has an index out of range", path); goto done; }
        s->data.order[i++] = (size_t)e->valuedouble;
    }
    const cJSON *fixed = cJSON_GetObjectItemCaseSensitive(j, "fixed");
    if (!cJSON_IsObject(fixed)) { fdpo_error("%s: field 'fixed' missing", path); goto done; }
    size_t cnt = (size_t)cJSON_GetArraySize(fixed);
    s->fixed_keys = fdpo_malloc((cnt ? cnt : 1) * sizeof(char *));
    s->fixed_values = fdpo_malloc((cnt ? cnt : 1) * sizeof(char *));
    cJSON_ArrayForEach(e, fixed) {
        if (!cJSON_IsString(e)) { fdpo_error("%s: field 'fixed.%s' must be a string", path, e->string); goto done; }
        s->fixed_keys[s->n_fixed] = fdpo_strdup(e->string);
        s->fixed_values[s->n_fixed] = fdpo_strdup(e->valuestring);
        s->n_fixed++;
    }
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

/* ---------------------------------------------------------------- directories */

int fdpo_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : fdpo_error("%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return fdpo_error("%s: cannot open directory: %s", path, strerror(errno));
        struct dirent *e;
        int rc = 0;
        while ((e = readdir(d)) && !rc) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char *child = fdpo_path_join(path, e->d_name);
            rc = fdpo_remove_tree(child);
            free(child);
        }
        closedir(d);
        if (rc) return rc;
        if (rmdir(path) != 0) return fdpo_error("%s: cannot remove: %s", path, strerror(errno));
        return 0;
    }
    if (unlink(path) != 0) return fdpo_error("%s: cannot remove: %s", path, strerror(errno));
    return 0;
}

static int copy_file(const char *src, const char *dst) {
    size_t len;
    char *data = fdpo_read_file(src, &len);
    if (!data) return -1;
    int rc = fdpo_write_file_atomic(dst, data, len);
    free(data);
    return rc;
}

/* The files every save writes afresh: never carried over (a writer that truncated in place
 * instead of renaming would otherwise write through the link into the old checkpoint). */
static int rewritten_by_save(const char *name) {
    static const char *const names[] = {"config.json", "model.safetensors", "training_state.json",
                                        "training_state.safetensors"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) if (!strcmp(name, names[i])) return 1;
    return 0;
}

/* Hard-link (or copy) every other file of src into dst, recursively: what a user or the run
 * keeps in OUT besides the checkpoint (metrics.jsonl, notes) survives the directory swap. */
static int carry_over(const char *src, const char *dst, int top) {
    DIR *d = opendir(src);
    if (!d) return fdpo_error("%s: cannot open directory: %s", src, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) && !rc) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (strstr(e->d_name, ".tmp.")) continue; /* another writer's half-written temp file */
        if (top && rewritten_by_save(e->d_name)) continue;
        char *a = fdpo_path_join(src, e->d_name), *b = fdpo_path_join(dst, e->d_name);
        struct stat st;
        if (lstat(a, &st) == 0) {
            if (S_ISDIR(st.st_mode)) rc = fdpo_mkdir_p(b) || carry_over(a, b, 0);
            else if (S_ISREG(st.st_mode) && link(a, b) != 0) rc = copy_file(a, b);
        }
        free(a); free(b);
    }
    closedir(d);
    return rc;
}

static void fsync_parent(const char *path) {
    char *copy = fdpo_strdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) { fsync(fd); close(fd); }
    free(copy);
}

static char *suffixed(const char *path, const char *suffix) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;   /* "out/" -> "out.tmp", not "out/.tmp" */
    char *r = fdpo_malloc(n + strlen(suffix) + 1);
    memcpy(r, path, n);
    strcpy(r + n, suffix);
    return r;
}

int fdpo_checkpoint_recover(const char *out) {
    char *old = suffixed(out, ".old"), *tmp = suffixed(out, ".tmp");
    int rc = 0;
    if (!fdpo_file_exists(out) && fdpo_file_exists(old)) {
        if (rename(old, out) != 0) rc = fdpo_error("%s: cannot restore from %s: %s", out, old, strerror(errno));
        else fdpo_log(FDPO_LOG_WARN, "%s restored from %s (a save was interrupted)", out, old);
    } else if (fdpo_file_exists(out) && fdpo_file_exists(old)) {
        rc = fdpo_remove_tree(old);  /* the swap finished; only the cleanup was interrupted */
    }
    if (!rc && fdpo_file_exists(tmp)) rc = fdpo_remove_tree(tmp);
    free(old); free(tmp);
    return rc;
}

int fdpo_checkpoint_save_all(const char *out, const fdpo_gpt2 *m, const fdpo_tokenizer *tok,
                             const fdpo_train_state *s, const fdpo_adamw *opt) {
    char *old = suffixed(out, ".old"), *tmp = suffixed(out, ".tmp");
    int rc = -1;
    if (fdpo_checkpoint_recover(out)) goto done;
    if (fdpo_mkdir_p(tmp)) goto done;
    if (fdpo_file_exists(out) && carry_over(out, tmp, 1)) goto done;
    if (fdpo_checkpoint_save_model(tmp, m)) goto done;
    if (tok && fdpo_tokenizer_save_dir(tok, tmp)) goto done;
    if (s && opt && fdpo_train_state_save(tmp, s, opt, m)) goto done;
    if (fdpo_file_exists(out) && rename(out, old) != 0) { fdpo_error("%s: cannot move aside: %s", out, strerror(errno)); goto done; }
    if (rename(tmp, out) != 0) { fdpo_error("%s: cannot rename %s into place: %s", out, tmp, strerror(errno)); goto done; }
    fsync_parent(out);
    if (fdpo_remove_tree(old)) goto done;
    rc = 0;
done:
    if (rc) fdpo_error_context("saving checkpoint %s", out);
    free(old); free(tmp);
    return rc;
}

/* ---------------------------------------------------------------- metrics */

int fdpo_metrics_open(fdpo_metrics *mw, const char *dir, size_t keep_upto_step) {
    memset(mw, 0, sizeof *mw);
    mw->path = fdpo_path_join(dir, "metrics.jsonl");
    if (keep_upto_step != SIZE_MAX && fdpo_file_exists(mw->path)) {
        /* drop what was logged after the checkpoint we resume from: it will be logged again */
        size_t len;
        char *text = fdpo_read_file(mw->path, &len);
        if (!text) return -1;
        char *kept = fdpo_malloc(len + 1);
        size_t k = 0;
        for (char *p = text; keep_upto_step > 0 && p < text + len;) {
            char *nl = memchr(p, '\n', (size_t)(text + len - p));
            char *end = nl ? nl : text + len;
            cJSON *o = cJSON_ParseWithLength(p, (size_t)(end - p));
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "step");
            if (cJSON_IsNumber(st) && st->valuedouble <= (double)keep_upto_step) {
                memcpy(kept + k, p, (size_t)(end - p)); k += (size_t)(end - p); kept[k++] = '\n';
            }
            cJSON_Delete(o);
            p = end + 1;
        }
        int rc = fdpo_write_file_atomic(mw->path, kept, k);
        free(text); free(kept);
        if (rc) return -1;
    }
    mw->f = fopen(mw->path, "a");
    if (!mw->f) return fdpo_error("%s: cannot open for writing: %s", mw->path, strerror(errno));
    return 0;
}

static void line_append(fdpo_metrics *mw, const char *s) {
    size_t n = strlen(s);
    if (mw->len + n + 1 > mw->cap) { mw->cap = (mw->len + n + 1) * 2; mw->line = fdpo_realloc(mw->line, mw->cap); }
    memcpy(mw->line + mw->len, s, n + 1);
    mw->len += n;
}

void fdpo_metrics_begin(fdpo_metrics *mw, size_t step) {
    char buf[64];
    mw->len = 0;
    snprintf(buf, sizeof buf, "{\"step\": %zu", step);
    line_append(mw, buf);
}

void fdpo_metrics_add(fdpo_metrics *mw, const char *key, double value) {
    char num[40];
    fdpo_fmt_double(num, sizeof num, value);
    line_append(mw, ", ");
    cJSON *ks = cJSON_CreateString(key);
    char *kq = cJSON_PrintUnformatted(ks);
    line_append(mw, kq);
    cJSON_free(kq); cJSON_Delete(ks);
    line_append(mw, ": ");
    line_append(mw, num);
}

int fdpo_metrics_end(fdpo_metrics *mw) {
    line_append(mw, "}\n");
    if (!mw->f) return 0;
    if (fputs(mw->line, mw->f) < 0 || fflush(mw->f) != 0) return fdpo_error("%s: write failed: %s", mw->path, strerror(errno));
    return 0;
}

void fdpo_metrics_close(fdpo_metrics *mw) {
    if (mw->f) fclose(mw->f);
    free(mw->path); free(mw->line);
    memset(mw, 0, sizeof *mw);
}
