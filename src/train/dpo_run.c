/* `fdpo dpo` as a library call: load preference data, split it, get the reference
 * log-probs (cache or live), and run the shared trainer loop with the f-DPO step. */
#include <cJSON.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/dpo.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"

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
    if (fdpo_refcache_key_make(&key, ref_hash, src->path, tok_dir, &o->pref, &src->set, ref->precision, o->dpo.layout,
                               (size_t)o->train.batch_size))
        return -1;
    src->ref_logp = fdpo_malloc(2 * src->set.n * sizeof(double));
    src->cache_path = fdpo_refcache_path(cache_dir, &key);
    return fdpo_refcache_get(cache_dir, &key, ref, &src->set, src->ref_logp, &src->cache_hit);
}

static void gather_ref(const dpo_source *src, const fdpo_pref_pair *const *pairs, size_t n, double *out) {
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = src->ref_logp[2 * pairs[i]->index];
        out[2 * i + 1] = src->ref_logp[2 * pairs[i]->index + 1];
    }
}

/* The step metrics under TRL's names (DPOTrainer), in the order they are logged; the one
 * place these names are written. summary = 1: also in eval_summary.json. */
static const struct { const char *name; size_t offset; int summary; } DPO_METRICS[] = {
    {"rewards/chosen", offsetof(fdpo_dpo_metrics, rewards_chosen), 1},
    {"rewards/rejected", offsetof(fdpo_dpo_metrics, rewards_rejected), 1},
    {"rewards/margins", offsetof(fdpo_dpo_metrics, margins), 1},
    {"rewards/accuracies", offsetof(fdpo_dpo_metrics, accuracy), 1},
    {"logps/chosen", offsetof(fdpo_dpo_metrics, logps_chosen), 1},
    {"logps/rejected", offsetof(fdpo_dpo_metrics, logps_rejected), 1},
    {"logits/chosen", offsetof(fdpo_dpo_metrics, logits_chosen), 0},
    {"logits/rejected", offsetof(fdpo_dpo_metrics, logits_rejected), 0},
};
#define N_DPO_METRICS (sizeof DPO_METRICS / sizeof DPO_METRICS[0])
static double metric_value(const fdpo_dpo_metrics *m, size_t i) {
    return *(const double *)((const char *)m + DPO_METRICS[i].offset);
}

static void add_dpo_metrics(fdpo_metrics *mw, const char *prefix, const fdpo_dpo_metrics *m, int with_loss, double sft_weight) {
    char k[64];
#define ADD(name, v) do { snprintf(k, sizeof k, "%s%s", prefix, name); fdpo_metrics_add(mw, k, v); } while (0)
    if (with_loss) ADD("loss", m->loss);
    for (size_t i = 0; i < N_DPO_METRICS; i++) ADD(DPO_METRICS[i].name, metric_value(m, i));
    /* fdpo's own: beta * s(l) of the f-DPO score (absent for simpo); the RPO term under TRL's name */
    if (isfinite(m->scores_chosen)) { ADD("scores/chosen", m->scores_chosen); ADD("scores/rejected", m->scores_rejected); }
    if (sft_weight > 0) ADD("nll_loss", m->sft_nll);
#undef ADD
}

static cJSON *metrics_json(const fdpo_dpo_metrics *m) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "pairs", (double)m->pairs);
    cJSON_AddNumberToObject(o, "loss", m->loss);
    for (size_t i = 0; i < N_DPO_METRICS; i++)
        if (DPO_METRICS[i].summary) cJSON_AddNumberToObject(o, DPO_METRICS[i].name, metric_value(m, i));
    return o;
}

/* A resumed run's starting point, for eval_summary.json's "initial": the step-0 eval line of
 * DIR/metrics.jsonl (logged before the first step, kept by every resume; its numbers are
 * written to round-trip), read back into m. 0 when found. */
static int initial_from_metrics(const char *dir, size_t n_eval, fdpo_dpo_metrics *m) {
    char *path = fdpo_path_join(dir, "metrics.jsonl");
    size_t len = 0;
    char *text = fdpo_file_exists(path) ? fdpo_read_file(path, &len) : NULL;
    free(path);
    int found = 0;
    for (char *p = text; text && p < text + len && !found;) {
        char *nl = memchr(p, '\n', (size_t)(text + len - p)), *end = nl ? nl : text + len;
        cJSON *o = cJSON_ParseWithLength(p, (size_t)(end - p));
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step"), *loss = cJSON_GetObjectItemCaseSensitive(o, "eval_loss");
        if (cJSON_IsNumber(step) && step->valuedouble == 0 && cJSON_IsNumber(loss)) {
            memset(m, 0, sizeof *m);
            m->pairs = n_eval;
            m->loss = loss->valuedouble;
            found = 1;
            for (size_t i = 0; i < N_DPO_METRICS; i++) {
                char k[64];
                snprintf(k, sizeof k, "eval_%s", DPO_METRICS[i].name);
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
                *(double *)((char *)m + DPO_METRICS[i].offset) = cJSON_IsNumber(v) ? v->valuedouble : NAN;
            }
        }
        cJSON_Delete(o);
        p = end + 1;
    }
    free(text);
    return found ? 0 : -1;
}

/* A fingerprint of pairs: every token of the training pairs, then (with eval) of the
 * held-out pairs. The trainer keeps one of the training pairs (train, n, NULL, 0) and one of
 * the held-out pairs (eval, n_eval, NULL, 0); both together was the one fingerprint of the
 * states saved before, still compared for those (fdpo_train_opts's eval_legacy_hash). */
static uint64_t run_data_hash(const fdpo_pref_pair *const *train, size_t n_train,
                              const fdpo_pref_pair *const *eval, size_t n_eval) {
    uint64_t h = FDPO_HASH_INIT;
    for (size_t i = 0; i < n_train; i++) h = fdpo_hash_pair(h, train[i]);
    uint64_t counts[2] = {n_train, n_eval};
    h = fdpo_hash64(h, counts, sizeof counts);
    for (size_t i = 0; i < n_eval; i++) h = fdpo_hash_pair(h, eval[i]);
    return h;
}

void fdpo_pref_run_defaults(fdpo_train_opts *train, fdpo_pref_options *pref, double *eval_fraction, double lr) {
    fdpo_train_opts_default(train);
    train->lr = lr; train->schedule = "linear"; train->eval_every = 50;
    train->val_fraction = 0;   /* the split is eval_fraction's */
    /* the model's shape comes from --model: only the shared checks see these */
    train->n_layer = train->n_head = train->n_embd = train->n_positions = train->seq_len = 1;
    *eval_fraction = 0.1;
    pref->on_long = FDPO_PREF_LONG_TRUNCATE;
    pref->on_bad = FDPO_PREF_ERROR;
}

void fdpo_dpo_run_opts_default(fdpo_dpo_run_opts *o) {
    memset(o, 0, sizeof *o);
    /* DPO fine-tunes a given policy: tiny lr */
    fdpo_pref_run_defaults(&o->train, &o->pref, &o->eval_fraction, 1e-6);
    o->dpo.loss = (fdpo_pref_loss){.kind = FDPO_LOSS_SIGMOID, .div = {.kind = FDPO_DIV_RKL}, .beta = 0.1, .simpo_gamma = FDPO_SIMPO_GAMMA_DEFAULT};
    o->dpo.layout = FDPO_LAYOUT_SHARED;
}

int fdpo_dpo_run_opts_check(const fdpo_dpo_run_opts *o) {
    if (!o->train.init) return fdpo_error("--model: required (the checkpoint to align, also the default reference)");
    if (!o->data) return fdpo_error("--data: required (preference JSONL)");
    if (fdpo_path_record_check("--data", o->data) || fdpo_path_record_check("--eval-file", o->eval_file) || fdpo_path_record_check("--ref", o->ref) ||
        fdpo_path_record_check("--ref-cache-dir", o->ref_cache_dir))
        return -1;
    if (fdpo_train_opts_check(&o->train)) return -1;
    if (fdpo_pref_loss_check(&o->dpo.loss)) return -1;
    if ((unsigned)o->dpo.layout > FDPO_LAYOUT_PLAIN) return fdpo_error("--layout: unknown layout %d", (int)o->dpo.layout);
    if (fdpo_pref_data_check(&o->pref, o->train.resume || o->plan_saved)) return -1;
    if (!(o->eval_fraction >= 0 && o->eval_fraction < 1)) return fdpo_error("--eval-fraction: %g is not in [0, 1)", o->eval_fraction);
    if (o->dpo.loss.kind == FDPO_LOSS_SIMPO) {
        /* reference-free: a reference flag would be saved and shown as the run's while unused.
         * --ref is a fixed setting: a simpo run saved with one before this rule still resumes;
         * --ref-live and --ref-cache-dir may change on --resume (--ref-live=0 drops a saved one). */
        if (o->ref && !o->train.resume)
            return fdpo_error("--ref %s: --loss simpo uses no reference model; drop --ref or pick another --loss", o->ref);
        if (o->ref_live) return fdpo_error("--ref-live: --loss simpo uses no reference model; drop --ref-live or pick another --loss");
        if (o->ref_cache_dir)
            return fdpo_error("--ref-cache-dir %s: --loss simpo uses no reference model (nothing is cached); drop "
                              "--ref-cache-dir or pick another --loss", o->ref_cache_dir);
    } else if (o->dpo.loss.simpo_gamma != FDPO_SIMPO_GAMMA_DEFAULT && !o->train.resume) {
        /* as --label-smoothing with a loss that has none: a value other than the default is
         * refused (a fixed setting: a run saved with one before this rule still resumes) */
        return fdpo_error("--simpo-gamma: only the simpo loss uses it, not %s (got %g)", fdpo_loss_name(o->dpo.loss.kind),
                          o->dpo.loss.simpo_gamma);
    }
    if (o->ref_live && o->ref_cache_dir) return fdpo_error("--ref-cache-dir: has no use with --ref-live");
    if (o->dpo.loss.kind != FDPO_LOSS_SIMPO && fdpo_train_out_ref_check(o->train.out, o->ref, o->train.init)) return -1;
    return 0;
}

static const char *on_long_name(fdpo_pref_on_long v) {
    return v == FDPO_PREF_LONG_SKIP ? "skip" : v == FDPO_PREF_LONG_ERROR ? "error" : "truncate";
}

int fdpo_pref_data_check(const fdpo_pref_options *p, int resume) {
    /* a value past the enum was read as the default (error / truncate) and saved as it */
    if ((unsigned)p->on_bad > FDPO_PREF_SKIP) return fdpo_error("--bad-pairs: unknown policy %d", (int)p->on_bad);
    if ((unsigned)p->on_long > FDPO_PREF_LONG_ERROR) return fdpo_error("--on-long: unknown policy %d", (int)p->on_long);
    /* only a truncated pair's prompt is cut to it: with skip or error the value changed nothing
     * (the pair was skipped or refused instead) and was accepted without a word. A fixed
     * setting: a run saved with one before this rule still resumes. */
    if (p->max_prompt_length && p->on_long != FDPO_PREF_LONG_TRUNCATE && !resume)
        return fdpo_error("--max-prompt-length %zu: only used by --on-long truncate (got --on-long %s)",
                          p->max_prompt_length, on_long_name(p->on_long));
    return 0;
}

void fdpo_pref_data_settings(const fdpo_pref_options *p, double eval_fraction, const char *eval_file, fdpo_settings *s) {
    fdpo_settings_int(s, "max-length", (long long)p->max_length, 1);
    fdpo_settings_int(s, "max-prompt-length", (long long)p->max_prompt_length, 1);
    fdpo_settings_str(s, "on-long", on_long_name(p->on_long), 1);
    fdpo_settings_str(s, "bad-pairs", p->on_bad == FDPO_PREF_SKIP ? "skip" : "error", 1);
    fdpo_settings_num(s, "eval-fraction", eval_fraction, 1);
    fdpo_settings_path(s, "eval-file", eval_file, 1);
}

void fdpo_pref_eval_name(char *buf, size_t n, const char *data, double eval_fraction, const char *eval_file) {
    if (eval_file) snprintf(buf, n, "--eval-file %s", eval_file);
    else if (data) snprintf(buf, n, "the --eval-fraction %g split of --data %s", eval_fraction, data);
    else snprintf(buf, n, "the --eval-fraction %g split of the --data files", eval_fraction);
}

void fdpo_train_opts_held_out(fdpo_train_opts *t, char *buf, size_t n, const char *data, double eval_fraction,
                              const char *eval_file, size_t n_items, uint64_t hash, uint64_t legacy_hash) {
    fdpo_pref_eval_name(buf, n, data, eval_fraction, eval_file);
    t->eval_name = buf;   /* what the eval metrics are computed on must not change either */
    t->eval_n_items = n_items;
    t->eval_hash = hash;
    t->eval_legacy_hash = legacy_hash;
}

void fdpo_dpo_run_opts_settings(const fdpo_dpo_run_opts *o, fdpo_settings *s) {
    char div[64];
    fdpo_divergence_name(&o->dpo.loss.div, div, sizeof div);   /* canonical: alpha:.5 == alpha:0.5 */
    fdpo_settings_path(s, "model", o->train.init, 1);
    fdpo_settings_path(s, "data", o->data, 1);
    fdpo_settings_str(s, "divergence", div, 1);
    fdpo_settings_str(s, "loss", fdpo_loss_name(o->dpo.loss.kind), 1);
    fdpo_settings_num(s, "beta", o->dpo.loss.beta, 1);
    fdpo_settings_num(s, "label-smoothing", o->dpo.loss.label_smoothing, 1);
    fdpo_settings_num(s, "simpo-gamma", o->dpo.loss.simpo_gamma, 1);
    fdpo_settings_num(s, "sft-weight", o->dpo.loss.sft_weight, 1);
    fdpo_pref_data_settings(&o->pref, o->eval_fraction, o->eval_file, s);
    fdpo_settings_path(s, "ref", o->ref, 1);
    /* the same function either way (docs/dpo.md): kept from the saved run unless given again */
    fdpo_settings_str(s, "layout", o->dpo.layout == FDPO_LAYOUT_PLAIN ? "plain" : "shared", 0);
    fdpo_settings_bool(s, "ref-live", o->ref_live, 0);
    fdpo_settings_str(s, "ref-cache-dir", o->ref_cache_dir, 0);
}

int fdpo_dpo_train(const fdpo_dpo_run_opts *o) {
    const fdpo_train_opts *to = &o->train;
    const char *policy_dir = to->init;
    if (fdpo_dpo_run_opts_check(o)) return -1;
    const int simpo = o->dpo.loss.kind == FDPO_LOSS_SIMPO;

    int rc = -1;
    fdpo_tokenizer *tok = NULL;
    fdpo_gpt2 *ref = NULL;
    dpo_source train_src = {.path = o->data}, eval_src = {.path = o->eval_file};
    size_t *train_idx = NULL, *eval_idx = NULL, n_train = 0, n_eval = 0;
    const fdpo_pref_pair **train_pairs = NULL, **eval_pairs = NULL, **step_pairs = NULL;
    double *step_ref = NULL, *eval_ref = NULL;
    char *cache_dir = NULL;
    const char *route_pinned_before = fdpo_bf16_route_pinned();   /* a resume's pin below is this run's alone */
    fdpo_trainer tr;
    int tr_open = 0;
    fdpo_dpo d;
    int d_open = 0;
    fdpo_pref_options popt = o->pref;
    /* an input that this run's replacing save would remove, before the cache */
    fdpo_settings inputs = {0};
    fdpo_dpo_run_opts_settings(o, &inputs);
    int irc = fdpo_train_out_inputs_check(to, &inputs);
    fdpo_settings_free(&inputs);
    if (irc) return -1;
    /* claim OUT before any work: a second run on the same OUT stops here, not after the cache;
     * another command's run is said before its saved route is read */
    if (fdpo_checkpoint_recover(to->out)) return -1;
    if (fdpo_train_out_check(to) || (to->resume && fdpo_train_state_check_kind(to->out, "dpo"))) goto done;
    /* the cache is no run's output (runs share it), but a running run's swap must not take it,
     * this run's own included (its first save, after all its steps, found OUT.tmp in the way) */
    if (o->ref_cache_dir && fdpo_shared_dir_check(o->ref_cache_dir, "--ref-cache-dir")) goto done;
    /* before the reference's log-probs: the resumed run's route, on every rank */
    if ((to->resume && fdpo_train_pin_bf16_route(to->out) < 0) || fdpo_dist_agree_bf16_route()) goto done;

    /* the policy's context length bounds --max-length (a LoRA run's OUT holds the adapter
     * only: the policy's shape is --model's) */
    const char *shape_dir = to->resume && to->lora_r <= 0 ? to->out : policy_dir;
    fdpo_gpt2_config pcfg;
    int crc = fdpo_checkpoint_load_config(shape_dir, &pcfg);   /* a LoRA checkpoint: its base's */
    if (crc) { fdpo_error_context("--model %s", policy_dir); goto done; }
    if (fdpo_trainer_check_lm(&pcfg, shape_dir == policy_dir ? "--model" : "--resume", shape_dir)) goto done;
    if (popt.max_length == 0) popt.max_length = pcfg.n_positions;
    if (popt.max_length > pcfg.n_positions) {
        fdpo_error("--max-length %zu exceeds the policy's n_positions %zu", popt.max_length, pcfg.n_positions);
        goto done;
    }
    if (!(tok = fdpo_trainer_load_tokenizer(to))) goto done;
    /* before the reference cache is built, not after */
    if (fdpo_checkpoint_check_tokenizer(shape_dir, &pcfg, tok)) goto done;
    if (fdpo_pref_load(o->data, tok, &popt, &train_src.set)) goto done;
    fdpo_pref_summary_log(o->data, &train_src.set.summary);
    if (o->eval_file) {
        if (fdpo_pref_load(o->eval_file, tok, &popt, &eval_src.set)) goto done;
        fdpo_pref_summary_log(o->eval_file, &eval_src.set.summary);
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

    /* the reference: --ref, else the initial policy (also on --resume: --model is fixed) */
    /* LoRA with --ref-live and no --ref: the reference is the policy with its adapters
     * disabled (fdpo_dpo_step), no second copy of the weights */
    /* (not when --model is itself a LoRA checkpoint being continued: the reference is that
     * checkpoint, base + its adapters as they were, e.g. SACPO's second stage) */
    const int ref_is_base = to->lora_r > 0 && o->ref_live && !o->ref && !fdpo_lora_is_checkpoint(policy_dir);
    uint64_t ref_hash = 0;
    if (!simpo && !ref_is_base) {
        if (!(ref = fdpo_trainer_load_ref(o->ref, policy_dir, tok, pcfg.vocab_size, to->lora_r <= 0, &ref_hash))) goto done;
        if (popt.max_length > ref->config.n_positions) {
            fdpo_error("--max-length %zu exceeds the reference's n_positions %zu", popt.max_length, ref->config.n_positions);
            goto done;
        }
        if (!o->ref_live) {
            if (to->threads > 0) fdpo_set_threads((int)to->threads);
            cache_dir = o->ref_cache_dir ? fdpo_strdup(o->ref_cache_dir) : default_cache_dir(to->out);
            /* the policy's tokenizer files (OUT's copies are re-serialised, not byte-equal) */
            const char *tok_dir = policy_dir;
            if (reference_logps(&train_src, ref, ref_hash, tok_dir, o, cache_dir)) goto done;
            if (o->eval_file && reference_logps(&eval_src, ref, ref_hash, tok_dir, o, cache_dir)) goto done;
            fdpo_gpt2_free(ref); /* its job is done: keep the memory for the policy */
            ref = NULL;
        }
    }

    fdpo_settings settings = {0};
    fdpo_dpo_run_opts_settings(o, &settings);
    fdpo_train_opts topen = *to;
    topen.data = o->data;   /* named if a step is capped at the data set */
    char eval_name[PATH_MAX + 64];
    fdpo_train_opts_held_out(&topen, eval_name, sizeof eval_name, o->data, o->eval_fraction, o->eval_file, n_eval,
                             run_data_hash(eval_pairs, n_eval, NULL, 0),
                             run_data_hash(train_pairs, n_train, eval_pairs, n_eval));
    if (!simpo && !ref_is_base) {   /* recorded: a resume refuses other reference weights */
        topen.ref_flag = o->ref ? "--ref" : "--model";
        topen.ref_dir = o->ref ? o->ref : policy_dir;
        topen.ref_hash = ref_hash;
    }
    int orc = fdpo_trainer_open(&tr, &topen, "dpo", tok, n_train, run_data_hash(train_pairs, n_train, NULL, 0), &settings);
    fdpo_settings_free(&settings);
    if (orc) goto done;
    tr_open = 1;
    {
        cJSON *root = fdpo_pref_data_summary(&train_src.set.summary, o->eval_file ? &eval_src.set.summary : NULL,
                                             n_train, n_eval, &popt);
        cJSON *r = cJSON_AddObjectToObject(root, "reference");
        cJSON_AddStringToObject(r, "mode", simpo ? "none" : o->ref_live ? "live" : "cache");
        if (train_src.cache_path) {
            cJSON_AddStringToObject(r, "cache_file", train_src.cache_path);
            cJSON_AddBoolToObject(r, "cache_hit", train_src.cache_hit);
        }
        int wrc = fdpo_trainer_write_run_json(&tr, "data_summary.json", root);
        cJSON_Delete(root);
        if (wrc) goto done;
    }

    fdpo_dpo_config dcfg = o->dpo;
    dcfg.micro_batch = tr.micro_items;
    if (fdpo_dpo_init(&d, tr.model, ref_is_base && !simpo ? tr.model : ref, &dcfg)) goto done;
    d_open = 1;
    const size_t per_step = tr.step_items;
    step_pairs = fdpo_malloc(per_step * sizeof *step_pairs);
    step_ref = fdpo_malloc(2 * per_step * sizeof *step_ref);
    if (n_eval && esrc->ref_logp) {
        eval_ref = fdpo_malloc(2 * n_eval * sizeof *eval_ref);
        gather_ref(esrc, eval_pairs, n_eval, eval_ref);
    }
    if (!to->quiet && tr.state.step == 0)
        fdpo_log(FDPO_LOG_INFO, "%zu train pairs, %zu eval pairs; %s reference; %zu steps of %zu pairs (micro-batches of %zu)",
                n_train, n_eval, simpo ? "no" : o->ref_live ? "live" : "cached", tr.state.total_steps,
                per_step, tr.micro_items);

    fdpo_dpo_metrics em = {0}, initial = {0};
    size_t em_step = SIZE_MAX;   /* the step em was computed at: the final summary reuses it */
    int have_initial = 0;
    /* held-out accuracy of the starting point: the baseline the run is judged against */
    if (n_eval && to->eval_every > 0 && tr.state.step == 0) {
        if (fdpo_dpo_step(&d, eval_pairs, n_eval, eval_ref, 0, &initial, NULL)) goto done;
        have_initial = 1;
        fdpo_metrics_begin(&tr.metrics, 0);
        add_dpo_metrics(&tr.metrics, "eval_", &initial, 1, dcfg.loss.sft_weight);
        if (fdpo_metrics_end(&tr.metrics)) goto done;
    } else if (n_eval && fdpo_dist_rank() == 0) {   /* (--eval-every may change on resume: the line decides) */
        have_initial = initial_from_metrics(to->out, n_eval, &initial) == 0;   /* resumed: as logged then */
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
        if (eval) em_step = tr.state.step;
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
        if (fdpo_trainer_before_final_eval(&tr)) goto done;
        if (em_step != tr.state.step && fdpo_dpo_step(&d, eval_pairs, n_eval, eval_ref, 0, &em, NULL)) goto done;
        cJSON *root = metrics_json(&em);
        cJSON_AddNumberToObject(root, "step", (double)tr.state.step);
        if (have_initial) cJSON_AddItemToObject(root, "initial", metrics_json(&initial));
        int wrc = fdpo_trainer_write_eval_summary(&tr, root);
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
    } else {
        fdpo_dir_unlock(to->out);
    }
    fdpo_bf16_route_restore(route_pinned_before);
    fdpo_gpt2_free(ref);
    source_free(&train_src);
    source_free(&eval_src);
    free(train_idx); free(eval_idx); free(train_pairs); free(eval_pairs); free(step_pairs); free(step_ref); free(eval_ref);
    free(cache_dir);
    fdpo_tokenizer_free(tok);
    return rc;
}

int fdpo_dpo_train_pairs(const fdpo_dpo_run_opts *o, fdpo_gpt2 *policy, const fdpo_tokenizer *tok,
                         const fdpo_pref_pair *const *pairs, size_t n, const double *ref_logp, int ref_is_start,
                         fdpo_train_state *state_out) {
    const fdpo_train_opts *to = &o->train;
    if (fdpo_dpo_run_opts_check(o)) return -1;
    if (n == 0) return fdpo_error("%s: no training pairs", o->data);
    const int simpo = o->dpo.loss.kind == FDPO_LOSS_SIMPO;
    if (!simpo && !ref_logp) return fdpo_error("no reference log-probs for the pairs of %s", o->data);
    fdpo_train_opts t = *to;
    t.init_model = policy;
    t.data = o->data;
    if (state_out) { t.save_every = 0; t.stop_at = 0; }   /* the caller saves */
    /* a round has as many pairs as it kept (ties drop prompts), often fewer than a step takes:
     * the trainer's step then takes each pair once (fdpo_train_step_items) */
    fdpo_settings settings = {0};
    fdpo_dpo_run_opts_settings(o, &settings);
    fdpo_trainer tr;
    int rc = fdpo_trainer_open(&tr, &t, "dpo", tok, n, run_data_hash(pairs, n, NULL, 0), &settings);
    fdpo_settings_free(&settings);
    if (rc) return -1;
    fdpo_dpo d;
    fdpo_dpo_config dcfg = o->dpo;
    /* data parallel: the ranks share out micro-batches; with one per step (--grad-accum 1) that
     * left every rank but rank 0 idle, so under MPI a micro-batch is a rank's part of one */
    const size_t ranks = (size_t)fdpo_dist_size();
    dcfg.micro_batch = (tr.micro_items + ranks - 1) / ranks;
    if (fdpo_dpo_init(&d, tr.model, NULL, &dcfg)) { fdpo_trainer_close(&tr, 0); return -1; }
    const size_t per_step = tr.step_items;
    const fdpo_pref_pair **step_pairs = fdpo_malloc(per_step * sizeof *step_pairs);
    double *step_ref = fdpo_malloc(2 * per_step * sizeof *step_ref);
    while (rc == 0 && !fdpo_trainer_done(&tr)) {
        fdpo_trainer_begin_step(&tr);
        for (size_t i = 0; i < per_step; i++) {
            size_t k = fdpo_trainer_next_item(&tr);
            step_pairs[i] = pairs[k];
            if (!simpo) { step_ref[2 * i] = ref_logp[2 * k]; step_ref[2 * i + 1] = ref_logp[2 * k + 1]; }
        }
        fdpo_dpo_metrics m;
        d.ref_is_policy = ref_is_start && tr.state.step == 0;   /* until the first update */
        rc = fdpo_dpo_step(&d, step_pairs, per_step, simpo ? NULL : step_ref, 1, &m, NULL);
        d.ref_is_policy = 0;
        if (!rc) rc = fdpo_trainer_step(&tr, m.tokens);
        if (!rc && fdpo_trainer_want_log(&tr)) {
            fdpo_trainer_metrics_begin(&tr, m.loss);
            add_dpo_metrics(&tr.metrics, "", &m, 0, dcfg.loss.sft_weight);
            rc = fdpo_metrics_end(&tr.metrics);
            char extra[96];
            snprintf(extra, sizeof extra, "acc %.2f | margin %.3g", m.accuracy, m.margins);
            fdpo_trainer_progress(&tr, m.loss, extra);
        }
        if (!rc && !state_out) rc = fdpo_trainer_maybe_save(&tr);
        /* a stop after the last step leaves the pairs trained: the caller keeps them (an
         * online round is then complete and saved) */
        else if (!rc && !fdpo_trainer_done(&tr) && fdpo_trainer_stop_requested(&tr)) {
            tr.stopped = tr.interrupted = 1;   /* fdpo_trainer_close: the request is answered */
            rc = fdpo_error("interrupted after step %zu of %zu (nothing of it is saved; %s)",
                            tr.state.step, tr.state.total_steps,
                            t.continue_how ? t.continue_how : "continue with --resume");
        }
    }
    fdpo_dpo_free(&d);
    free(step_pairs);
    free(step_ref);
    if (state_out && rc == 0) {   /* handed over: close frees an empty state and saves nothing */
        *state_out = tr.state;
        memset(&tr.state, 0, sizeof tr.state);
    }
    int crc = fdpo_trainer_close(&tr, rc == 0 && !state_out);
    return rc ? rc : crc;
}
