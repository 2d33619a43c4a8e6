/* `fdpo dpo` as a library call: load preference data, split it, get the reference
 * log-probs (cache or live), and run the shared trainer loop with the f-DPO step. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/dpo.h"
#include "fdpo/io.h"

/* Everything one data file contributes: the pairs and the reference log-probs of all of them. */
typedef struct {
    const char *path;
    fdpo_pref_set set;
    double *ref_logp;          /* [2 * set.n] or NULL (live reference / simpo) */
    char *cache_path;
    int cache_hit;
} dpo_source;

static void source_free(dpo_source *s) {
    fdpo_pref_free(&s->set);
    free(s->ref_logp);
    free(s->cache_path);
}

static char *default_cache_dir(const char *out) {
    /* beside OUT, so that runs/beta0.1 and runs/beta0.3 share runs/.fdpo-cache */
    char *copy = fdpo_strdup(out);
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/') copy[--n] = 0;
    char *slash = strrchr(copy, '/');
    char *dir;
    if (!slash) dir = fdpo_strdup(".fdpo-cache");
    else { *slash = 0; dir = fdpo_path_join(slash == copy ? "/" : copy, ".fdpo-cache"); }
    free(copy);
    return dir;
}

static int reference_logps(dpo_source *src, fdpo_gpt2 *ref, uint64_t ref_hash, const char *tok_dir,
                           const fdpo_dpo_run_opts *o, const char *cache_dir) {
    fdpo_refcache_key key;
    if (fdpo_refcache_key_make(&key, ref_hash, src->path, tok_dir, &o->pref, &src->set)) return -1;
    src->ref_logp = fdpo_malloc(2 * src->set.n * sizeof(double));
    src->cache_path = fdpo_refcache_path(cache_dir, &key);
    return fdpo_refcache_get(cache_dir, &key, ref, o->dpo.layout, (size_t)o->train.batch_size, &src->set,
                             src->ref_logp, &src->cache_hit, stderr);
}

static void gather_ref(const dpo_source *src, const fdpo_pref_pair *const *pairs, size_t n, double *out) {
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = src->ref_logp[2 * pairs[i]->index];
        out[2 * i + 1] = src->ref_logp[2 * pairs[i]->index + 1];
    }
}

static void add_dpo_metrics(fdpo_metrics *mw, const char *prefix, const fdpo_dpo_metrics *m, int with_loss, double sft_weight) {
    char k[64];
#define ADD(name, v) do { snprintf(k, sizeof k, "%s%s", prefix, name); fdpo_metrics_add(mw, k, v); } while (0)
    if (with_loss) ADD("loss", m->loss);
    ADD("rewards/chosen", m->rewards_chosen);
    ADD("rewards/rejected", m->rewards_rejected);
    ADD("rewards/margins", m->margins);
    ADD("rewards/accuracies", m->accuracy);
    ADD("logps/chosen", m->logps_chosen);
    ADD("logps/rejected", m->logps_rejected);
    ADD("logits/chosen", m->logits_chosen);
    ADD("logits/rejected", m->logits_rejected);
    if (isfinite(m->scores_chosen)) { ADD("scores/chosen", m->scores_chosen); ADD("scores/rejected", m->scores_rejected); }
    if (sft_weight > 0) ADD("nll", m->sft_nll);
#undef ADD
}

static cJSON *metrics_json(const fdpo_dpo_metrics *m) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "pairs", (double)m->pairs);
    cJSON_AddNumberToObject(o, "loss", m->loss);
    cJSON_AddNumberToObject(o, "rewards/accuracies", m->accuracy);
    cJSON_AddNumberToObject(o, "rewards/margins", m->margins);
    cJSON_AddNumberToObject(o, "rewards/chosen", m->rewards_chosen);
    cJSON_AddNumberToObject(o, "rewards/rejected", m->rewards_rejected);
    cJSON_AddNumberToObject(o, "logps/chosen", m->logps_chosen);
    cJSON_AddNumberToObject(o, "logps/rejected", m->logps_rejected);
    return o;
}

static int write_json(const char *dir, const char *name, cJSON *root) {
    char *text = cJSON_Print(root);
    char *path = fdpo_path_join(dir, name);
    size_t n = strlen(text);
    char *body = fdpo_malloc(n + 2);
    memcpy(body, text, n);
    body[n] = '\n';
    int rc = fdpo_write_file_atomic(path, body, n + 1);
    free(body); free(path);
    cJSON_free(text);
    return rc;
}

static uint64_t pairs_hash(const fdpo_pref_pair *const *pairs, size_t n) {
    uint64_t h = FDPO_HASH_INIT;
    for (size_t i = 0; i < n; i++) {
        const fdpo_pref_pair *p = pairs[i];
        uint64_t n3[3] = {p->n_prompt, p->n_chosen, p->n_rejected};
        h = fdpo_hash64(h, n3, sizeof n3);
        h = fdpo_hash64(h, p->prompt, p->n_prompt * sizeof *p->prompt);
        h = fdpo_hash64(h, p->chosen, p->n_chosen * sizeof *p->chosen);
        h = fdpo_hash64(h, p->rejected, p->n_rejected * sizeof *p->rejected);
    }
    return h;
}

int fdpo_dpo_train(const fdpo_dpo_run_opts *o) {
    const fdpo_train_opts *to = &o->train;
    const char *policy_dir = to->init;
    if (!policy_dir) return fdpo_error("--policy: required (the checkpoint to align, also the default reference)");
    if (!o->data) return fdpo_error("--data: required (preference JSONL)");
    const int simpo = o->dpo.loss.kind == FDPO_LOSS_SIMPO;
    if (fdpo_pref_loss_check(&o->dpo.loss)) return -1;

    int rc = -1;
    fdpo_tokenizer *tok = NULL;
    fdpo_gpt2 *ref = NULL;
    dpo_source train_src = {.path = o->data}, eval_src = {.path = o->eval_file};
    size_t *train_idx = NULL, *eval_idx = NULL, n_train = 0, n_eval = 0;
    const fdpo_pref_pair **train_pairs = NULL, **eval_pairs = NULL, **step_pairs = NULL;
    double *step_ref = NULL, *eval_ref = NULL;
    char *cache_dir = NULL;
    fdpo_trainer tr;
    int tr_open = 0;
    fdpo_dpo d;
    int d_open = 0;
    fdpo_pref_options popt = o->pref;

    /* the policy's context length bounds --max-length */
    char *cfg_path = fdpo_path_join(to->resume ? to->out : policy_dir, "config.json");
    fdpo_gpt2_config pcfg;
    int crc = fdpo_config_load(cfg_path, &pcfg);
    free(cfg_path);
    if (crc) { fdpo_error_context("--policy %s", policy_dir); goto done; }
    if (popt.max_length == 0) popt.max_length = pcfg.n_positions;
    if (popt.max_length > pcfg.n_positions) {
        fdpo_error("--max-length %zu exceeds the policy's n_positions %zu", popt.max_length, pcfg.n_positions);
        goto done;
    }
    if (!(tok = fdpo_trainer_load_tokenizer(to))) goto done;
    /* before the reference cache is built, not after */
    if (fdpo_checkpoint_check_tokenizer(to->resume ? to->out : policy_dir, &pcfg, tok)) goto done;
    if (fdpo_pref_load(o->data, tok, &popt, &train_src.set)) goto done;
    fdpo_pref_summary_print(stderr, o->data, &train_src.set.summary);
    if (o->eval_file) {
        if (fdpo_pref_load(o->eval_file, tok, &popt, &eval_src.set)) goto done;
        fdpo_pref_summary_print(stderr, o->eval_file, &eval_src.set.summary);
        n_train = train_src.set.n;
        train_idx = fdpo_malloc(n_train * sizeof *train_idx);
        for (size_t i = 0; i < n_train; i++) train_idx[i] = i;
        n_eval = eval_src.set.n;
        eval_idx = fdpo_malloc(n_eval * sizeof *eval_idx);
        for (size_t i = 0; i < n_eval; i++) eval_idx[i] = i;
    } else if (fdpo_pref_split(train_src.set.n, o->eval_fraction, (uint64_t)to->seed, &train_idx, &n_train,
                               &eval_idx, &n_eval)) goto done;
    if (n_train == 0) { fdpo_error("%s: no training pairs left after the eval split", o->data); goto done; }
    const dpo_source *esrc = o->eval_file ? &eval_src : &train_src;
    train_pairs = fdpo_malloc(n_train * sizeof *train_pairs);
    for (size_t i = 0; i < n_train; i++) train_pairs[i] = &train_src.set.pairs[train_idx[i]];
    eval_pairs = fdpo_malloc((n_eval ? n_eval : 1) * sizeof *eval_pairs);
    for (size_t i = 0; i < n_eval; i++) eval_pairs[i] = &esrc->set.pairs[eval_idx[i]];

    /* the reference: --ref, else the initial policy (also on --resume: --policy is fixed) */
    if (!simpo) {
        const char *ref_dir = o->ref ? o->ref : policy_dir;
        if (!(ref = fdpo_checkpoint_load_model(ref_dir))) { fdpo_error_context("--ref %s", ref_dir); goto done; }
        if (ref->config.vocab_size != pcfg.vocab_size) {
            fdpo_error("--ref %s: vocab_size %zu differs from the policy's %zu", ref_dir, ref->config.vocab_size, pcfg.vocab_size);
            goto done;
        }
        if (popt.max_length > ref->config.n_positions) {
            fdpo_error("--max-length %zu exceeds the reference's n_positions %zu", popt.max_length, ref->config.n_positions);
            goto done;
        }
        if (!o->ref_live) {
            if (to->threads > 0) fdpo_set_threads((int)to->threads);
            cache_dir = o->ref_cache_dir ? fdpo_strdup(o->ref_cache_dir) : default_cache_dir(to->out);
            uint64_t h = fdpo_hash_model(ref);
            /* the policy's tokenizer files (OUT's copies are re-serialised, not byte-equal) */
            const char *tok_dir = policy_dir;
            if (reference_logps(&train_src, ref, h, tok_dir, o, cache_dir)) goto done;
            if (o->eval_file && reference_logps(&eval_src, ref, h, tok_dir, o, cache_dir)) goto done;
            fdpo_gpt2_free(ref); /* its job is done: keep the memory for the policy */
            ref = NULL;
        }
    }

    if (fdpo_trainer_open(&tr, to, "dpo", tok, n_train, pairs_hash(train_pairs, n_train), o->n_fixed,
                          o->fixed_keys, o->fixed_values)) goto done;
    tr_open = 1;
    {
        cJSON *root = cJSON_CreateObject();
        char *sj = fdpo_pref_summary_json(&train_src.set.summary);
        cJSON_AddItemToObject(root, "data", cJSON_Parse(sj));
        free(sj);
        if (o->eval_file) {
            sj = fdpo_pref_summary_json(&eval_src.set.summary);
            cJSON_AddItemToObject(root, "eval_data", cJSON_Parse(sj));
            free(sj);
        }
        cJSON_AddNumberToObject(root, "train_pairs", (double)n_train);
        cJSON_AddNumberToObject(root, "eval_pairs", (double)n_eval);
        cJSON_AddNumberToObject(root, "max_length", (double)popt.max_length);
        cJSON_AddNumberToObject(root, "max_prompt_length", (double)(popt.max_prompt_length ? popt.max_prompt_length : popt.max_length / 2));
        cJSON *r = cJSON_AddObjectToObject(root, "reference");
        cJSON_AddStringToObject(r, "mode", simpo ? "none" : o->ref_live ? "live" : "cache");
        if (train_src.cache_path) {
            cJSON_AddStringToObject(r, "cache_file", train_src.cache_path);
            cJSON_AddBoolToObject(r, "cache_hit", train_src.cache_hit);
        }
        int wrc = write_json(to->out, "data_summary.json", root);
        cJSON_Delete(root);
        if (wrc) goto done;
    }

    fdpo_dpo_config dcfg = o->dpo;
    dcfg.micro_batch = (size_t)to->batch_size;
    if (fdpo_dpo_init(&d, tr.model, ref, &dcfg)) goto done;
    d_open = 1;
    const size_t per_step = (size_t)(to->batch_size * to->grad_accum);
    step_pairs = fdpo_malloc(per_step * sizeof *step_pairs);
    step_ref = fdpo_malloc(2 * per_step * sizeof *step_ref);
    if (n_eval && esrc->ref_logp) {
        eval_ref = fdpo_malloc(2 * n_eval * sizeof *eval_ref);
        gather_ref(esrc, eval_pairs, n_eval, eval_ref);
    }
    if (!to->quiet && tr.state.step == 0)
        fdpo_log(FDPO_LOG_INFO, "%zu train pairs, %zu eval pairs; %s reference; %zu steps of %zu x %zu pairs",
                n_train, n_eval, simpo ? "no" : o->ref_live ? "live" : "cached", tr.state.total_steps,
                (size_t)to->grad_accum, (size_t)to->batch_size);

    fdpo_dpo_metrics em = {0}, initial = {0};
    int have_initial = 0;
    /* held-out accuracy of the starting point: the baseline the run is judged against */
    if (n_eval && to->eval_every > 0 && tr.state.step == 0) {
        if (fdpo_dpo_step(&d, eval_pairs, n_eval, eval_ref, 0, &initial, NULL)) goto done;
        have_initial = 1;
        fdpo_metrics_begin(&tr.metrics, 0);
        add_dpo_metrics(&tr.metrics, "eval_", &initial, 1, dcfg.loss.sft_weight);
        if (fdpo_metrics_end(&tr.metrics)) goto done;
    }
    while (!fdpo_trainer_done(&tr)) {
        fdpo_trainer_begin_step(&tr);
        for (size_t i = 0; i < per_step; i++) step_pairs[i] = train_pairs[fdpo_trainer_next_item(&tr)];
        if (train_src.ref_logp) gather_ref(&train_src, step_pairs, per_step, step_ref);
        fdpo_dpo_metrics m;
        if (fdpo_dpo_step(&d, step_pairs, per_step, train_src.ref_logp ? step_ref : NULL, 1, &m, NULL)) goto done;
        if (fdpo_trainer_step(&tr, m.tokens)) goto done;
        int eval = n_eval && fdpo_trainer_want_eval(&tr);
        if (eval && fdpo_dpo_step(&d, eval_pairs, n_eval, eval_ref, 0, &em, NULL)) goto done;
        if (fdpo_trainer_want_log(&tr) || eval) {
            fdpo_trainer_metrics_begin(&tr, m.loss);
            add_dpo_metrics(&tr.metrics, "", &m, 0, dcfg.loss.sft_weight);
            if (eval) add_dpo_metrics(&tr.metrics, "eval_", &em, 1, dcfg.loss.sft_weight);
            if (fdpo_metrics_end(&tr.metrics)) goto done;
            char extra[128];
            int k = snprintf(extra, sizeof extra, "acc %.2f | margin %.3g", m.accuracy, m.margins);
            if (eval) snprintf(extra + k, sizeof extra - (size_t)k, " | eval acc %.3f", em.accuracy);
            fdpo_trainer_progress(&tr, m.loss, extra);
        }
        if (fdpo_trainer_maybe_save(&tr)) goto done;
    }
    if (n_eval && !tr.stopped) {
        /* final held-out summary: how often the implicit reward ranks chosen above rejected */
        if (fdpo_dpo_step(&d, eval_pairs, n_eval, eval_ref, 0, &em, NULL)) goto done;
        cJSON *root = metrics_json(&em);
        cJSON_AddNumberToObject(root, "step", (double)tr.state.step);
        if (have_initial) cJSON_AddItemToObject(root, "initial", metrics_json(&initial));
        int wrc = write_json(to->out, "eval_summary.json", root);
        cJSON_Delete(root);
        if (wrc) goto done;
        if (!to->quiet) {
            char start[96] = "";
            if (have_initial) snprintf(start, sizeof start, " (at start: %.4f, %.4g)", initial.accuracy, initial.margins);
            fdpo_log(FDPO_LOG_INFO, "eval (%zu pairs): reward accuracy %.4f, margin %.4g%s", n_eval, em.accuracy, em.margins, start);
        }
    }
    rc = 0;
done:
    if (d_open) fdpo_dpo_free(&d);
    if (tr_open) {
        int crc2 = fdpo_trainer_close(&tr, rc == 0);
        if (!rc) rc = crc2;
    }
    fdpo_gpt2_free(ref);
    source_free(&train_src);
    source_free(&eval_src);
    free(train_idx); free(eval_idx); free(train_pairs); free(eval_pairs); free(step_pairs); free(step_ref); free(eval_ref);
    free(cache_dir);
    fdpo_tokenizer_free(tok);
    return rc;
}
