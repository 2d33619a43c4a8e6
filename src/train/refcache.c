/* Reference log-prob cache: the frozen reference's summed completion log-probs of every
 * pair, computed once and kept on disk under a key of everything that determines them
 * (include/fdpo/dpo.h). A sweep over beta, losses or divergences reuses one file. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/lora.h"
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/dpo.h"
#include "fdpo/io.h"

#define REFCACHE_FORMAT "fdpo-refcache-3"   /* 2: checksum of logps in the metadata; 3: precision, layout and the
                                                * whole config in the key */

uint64_t fdpo_hash_model(const fdpo_gpt2 *m) {
    /* the whole architecture (a Llama's rope_theta changes the log-probs, not the weights) */
    uint64_t h = fdpo_gpt2_config_hash(FDPO_HASH_INIT, &m->config);
    h = fdpo_hash64(h, m->params_memory, m->n_params * sizeof(float));
    const fdpo_lora *l = m->lora;
    if (l && l->enabled) {   /* a LoRA checkpoint read as a model: its adapters are part of it */
        h = fdpo_hash64(h, &l->scale, sizeof l->scale);
        h = fdpo_hash64(h, l->site_tensor, sizeof l->site_tensor);
        h = fdpo_hash64(h, l->view.params_memory, l->view.n_params * sizeof(float));
    }
    return h;
}

uint64_t fdpo_hash_pair(uint64_t h, const fdpo_pref_pair *p) {
    uint64_t n3[3] = {p->n_prompt, p->n_chosen, p->n_rejected};
    h = fdpo_hash64(h, n3, sizeof n3);
    h = fdpo_hash64(h, p->prompt, p->n_prompt * sizeof *p->prompt);
    h = fdpo_hash64(h, p->chosen, p->n_chosen * sizeof *p->chosen);
    return fdpo_hash64(h, p->rejected, p->n_rejected * sizeof *p->rejected);
}

uint64_t fdpo_hash_tokenizer_dir(const char *dir) {
    static const char *const FILES[] = {"fdpo_tokenizer.json", "vocab.json", "merges.txt",
                                        "encoder.json", "vocab.bpe", "tokenizer.json"};
    uint64_t h = FDPO_HASH_INIT;
    for (size_t i = 0; i < sizeof FILES / sizeof FILES[0]; i++) {
        char *p = fdpo_path_join(dir, FILES[i]);
        if (fdpo_file_exists(p)) {
            size_t len = 0;
            char *body = fdpo_read_file(p, &len);
            h = fdpo_hash64(h, FILES[i], strlen(FILES[i]) + 1);
            if (body) h = fdpo_hash64(h, body, len);
            free(body);
        }
        free(p);
    }
    return h;
}

int fdpo_refcache_key_make(fdpo_refcache_key *k, uint64_t weights_hash, const char *data_path,
                           const char *tokenizer_dir, const fdpo_pref_options *opt, const fdpo_pref_set *set,
                           fdpo_precision precision, fdpo_pair_layout layout, size_t micro_batch) {
    memset(k, 0, sizeof *k);
    k->weights = weights_hash;
    size_t len = 0;
    char *body = fdpo_read_file(data_path, &len);
    if (!body) return -1;
    k->data = fdpo_hash64(FDPO_HASH_INIT, body, len);
    free(body);
    k->tokenizer = fdpo_hash_tokenizer_dir(tokenizer_dir);
    uint64_t o[4] = {opt->max_length, opt->max_prompt_length, (uint64_t)opt->on_bad, (uint64_t)opt->on_long};
    k->options = fdpo_hash64(FDPO_HASH_INIT, o, sizeof o);
    uint64_t t = FDPO_HASH_INIT;
    for (size_t i = 0; i < set->n; i++) t = fdpo_hash_pair(t, &set->pairs[i]);
    k->tokens = t;
    k->precision = precision;
    k->layout = layout;
    k->micro_batch = micro_batch;
    k->route = precision == FDPO_PRECISION_BF16 ? fdpo_bf16_route() : "none";
    uint64_t c[3] = {(uint64_t)precision, (uint64_t)layout, (uint64_t)micro_batch};
    k->compute = fdpo_hash64(FDPO_HASH_INIT, c, sizeof c);
    if (precision == FDPO_PRECISION_BF16) k->compute = fdpo_hash64(k->compute, k->route, strlen(k->route) + 1);
    uint64_t h = fdpo_hash64(FDPO_HASH_INIT, REFCACHE_FORMAT, sizeof REFCACHE_FORMAT);
    uint64_t parts[6] = {k->weights, k->data, k->tokenizer, k->options, k->tokens, k->compute};
    k->key = fdpo_hash64(h, parts, sizeof parts);
    return 0;
}

char *fdpo_refcache_path(const char *dir, const fdpo_refcache_key *k) {
    char name[64];
    snprintf(name, sizeof name, "ref-%016" PRIx64 ".safetensors", k->key);
    return fdpo_path_join(dir, name);
}

/* Read a cache file written by write_cache; 0 ok, -1 unusable (message says why). */
static int read_cache(const char *path, const fdpo_refcache_key *k, size_t n, double *out) {
    fdpo_safetensors st;
    if (fdpo_st_open(&st, path)) return -1;
    int rc = 0;
    char want[32];
    snprintf(want, sizeof want, "%016" PRIx64, k->key);
    const char *fmt = fdpo_st_meta(&st, "format"), *key = fdpo_st_meta(&st, "key");
    const fdpo_st_tensor *t = fdpo_st_find(&st, "logps");
    if (!fmt || strcmp(fmt, REFCACHE_FORMAT) || !key || strcmp(key, want))
        rc = fdpo_error("%s: not a reference cache for key %s", path, want);
    else if (!t || t->dtype != FDPO_F64 || t->ndim != 2 || t->shape[0] != n || t->shape[1] != 2)
        rc = fdpo_error("%s: tensor 'logps' must be F64 [%zu, 2]", path, n);
    else {
        memcpy(out, st.data + t->begin, n * 2 * sizeof(double)); /* little-endian hosts only, like the model files */
        /* a flipped byte or a NaN written by a broken run must not become the reference */
        char sum[32];
        snprintf(sum, sizeof sum, "%016" PRIx64, fdpo_hash64(FDPO_HASH_INIT, out, n * 2 * sizeof(double)));
        const char *want_sum = fdpo_st_meta(&st, "checksum");
        if (!want_sum || strcmp(want_sum, sum))
            rc = fdpo_error("%s: checksum of 'logps' is %s, the file says %s (damaged)", path, sum, want_sum ? want_sum : "nothing");
        for (size_t i = 0; i < 2 * n && !rc; i++)
            if (!isfinite(out[i])) rc = fdpo_error("%s: logps[%zu][%zu] is %g (not finite)", path, i / 2, i % 2, out[i]);
    }
    fdpo_st_close(&st);
    return rc;
}

static int write_cache(const char *path, const fdpo_refcache_key *k, size_t n, const double *logps) {
    fdpo_st_writer *w = fdpo_st_writer_new();
    size_t shape[2] = {n, 2};
    char key[32], parts[256];
    snprintf(key, sizeof key, "%016" PRIx64, k->key);
    snprintf(parts, sizeof parts, "weights=%016" PRIx64 " data=%016" PRIx64 " tokenizer=%016" PRIx64
             " options=%016" PRIx64 " tokens=%016" PRIx64 " precision=%s route=%s layout=%s micro_batch=%zu", k->weights,
             k->data, k->tokenizer, k->options, k->tokens, fdpo_precision_name(k->precision), k->route,
             k->layout == FDPO_LAYOUT_PLAIN ? "plain" : "shared", k->micro_batch);
    fdpo_st_writer_add(w, "logps", FDPO_F64, shape, 2, logps);
    fdpo_st_writer_meta(w, "format", REFCACHE_FORMAT);
    fdpo_st_writer_meta(w, "key", key);
    fdpo_st_writer_meta(w, "parts", parts);
    char sum[32];
    snprintf(sum, sizeof sum, "%016" PRIx64, fdpo_hash64(FDPO_HASH_INIT, logps, n * 2 * sizeof(double)));
    fdpo_st_writer_meta(w, "checksum", sum);
    int rc = fdpo_st_writer_write(w, path);
    fdpo_st_writer_free(w);
    return rc;
}

int fdpo_refcache_get(const char *dir, const fdpo_refcache_key *k, fdpo_gpt2 *ref, const fdpo_pref_set *set,
                      double *out, int *hit) {
    if (ref->precision != k->precision)
        return fdpo_error("reference cache: the key is for %s log-probs, the reference model runs in %s",
                          fdpo_precision_name(k->precision), fdpo_precision_name(ref->precision));
    /* before rank 0 looks for the file: ranks with another key (--precision, --layout, the
     * pairs, the reference) would wait for a file of another name */
    if (fdpo_dist_check_agree("the reference log-probs' key (--ref, the pairs, --precision, --layout)", k->key)) return -1;
    /* rank 0 alone looks for the file and says hit for every rank, which then reads its own
     * directory's: another directory there failed with a bare "No such file" */
    if (fdpo_dist_check_same_path("--ref-cache-dir", dir)) return -1;
    char *path = fdpo_refcache_path(dir, k);
    *hit = 0;
    /* under MPI rank 0 decides hit or miss for every rank (a miss is computed by all) */
    int root = fdpo_dist_rank() == 0;
    if (root) fdpo_remove_stale_tmp(dir);   /* a killed run's half-written cache file */
    if (root && fdpo_file_exists(path)) {
        if (read_cache(path, k, set->n, out) == 0) {
            *hit = 1;
        } else {
            /* a damaged or foreign file is recomputed and replaced, and the log says why */
            fdpo_log(FDPO_LOG_WARN, "ref cache unusable (%s); recomputing", fdpo_last_error());
            fdpo_clear_error();
        }
    }
    if (fdpo_dist_bcast(hit, sizeof *hit, 0)) { free(path); return -1; }
    if (*hit) {
        int rc = root ? 0 : read_cache(path, k, set->n, out);
        if (!rc) fdpo_log(FDPO_LOG_INFO, "ref cache hit: %s", path);
        free(path);
        return rc;
    }
    fdpo_log(FDPO_LOG_INFO, "ref cache miss: computing reference log-probs of %zu pairs -> %s", set->n, path);
    const fdpo_pref_pair **pairs = fdpo_malloc((set->n ? set->n : 1) * sizeof *pairs);
    for (size_t i = 0; i < set->n; i++) pairs[i] = &set->pairs[i];
    int rc = fdpo_dpo_pair_logps(ref, k->layout, k->micro_batch, pairs, set->n, out);
    free(pairs);
    if (!rc && root && fdpo_mkdir_p(dir)) rc = fdpo_error_context("--ref-cache-dir %s", dir);
    if (!rc && root) rc = write_cache(path, k, set->n, out);
    free(path);
    return rc;
}
