/* `fdpo kto`: KTO with an f-divergence score on unpaired data, driven by the shared
 * trainer. The loss is objectives' fdpo_kto_loss_one; the rules are in include/fdpo/kto.h. */
#include <cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/dpo.h"
#include "fdpo/io.h"
#include "fdpo/kto.h"
#include "fdpo/lora.h"

/* Packed batch of 2k sequences: (prompt i, completion i) for i < k, then the KL pairs
 * (prompt (i+1) mod k, completion i cut to max_length). Inputs p + c[0..|c|-1), targets c. */
typedef struct {
    fdpo_batch batch;
    size_t *seq_offset; int32_t *tokens, *targets;
    size_t cap_tokens, cap_seq;
} kto_batch;

static void kb_add(kto_batch *kb, const int32_t *p, size_t np, const int32_t *c, size_t nc) {
    size_t B = kb->batch.n_seq, N = kb->batch.n_tokens, T = np + nc - 1;
    if (B + 2 > kb->cap_seq) { kb->cap_seq = 2 * (B + 2); kb->seq_offset = fdpo_realloc(kb->seq_offset, (kb->cap_seq + 1) * sizeof(size_t)); }
    if (N + T > kb->cap_tokens) {
        kb->cap_tokens = 2 * (N + T);
        kb->tokens = fdpo_realloc(kb->tokens, kb->cap_tokens * sizeof(int32_t));
        kb->targets = fdpo_realloc(kb->targets, kb->cap_tokens * sizeof(int32_t));
    }
    memcpy(kb->tokens + N, p, np * sizeof(int32_t));
    memcpy(kb->tokens + N + np, c, (nc - 1) * sizeof(int32_t));
    for (size_t t = 0; t < T; t++) kb->targets[N + t] = t + 1 >= np ? c[t + 1 - np] : -1;
    if (B == 0) kb->seq_offset[0] = 0;
    kb->seq_offset[B + 1] = N + T;
    kb->batch = (fdpo_batch){.n_seq = B + 1, .n_tokens = N + T, .seq_offset = kb->seq_offset,
                             .tokens = kb->tokens, .targets = kb->targets};
}

static void kb_build(kto_batch *kb, const fdpo_unpaired_example *const *ex, size_t k, size_t max_length) {
    if (!kb->seq_offset) { kb->cap_seq = 2; kb->seq_offset = fdpo_malloc((kb->cap_seq + 1) * sizeof(size_t)); }
    kb->batch.n_seq = kb->batch.n_tokens = 0;
    for (size_t i = 0; i < k; i++) kb_add(kb, ex[i]->prompt, ex[i]->n_prompt, ex[i]->completion, ex[i]->n_completion);
    for (size_t i = 0; i < k; i++) {
        const fdpo_unpaired_example *p = ex[(i + 1) % k], *c = ex[i];
        size_t nc = c->n_completion;
        if (max_length && p->n_prompt + nc > max_length) nc = max_length - p->n_prompt;
        kb_add(kb, p->prompt, p->n_prompt, c->completion, nc);
    }
}

/* The micro-batch that starts at i0 of n: mb examples, or the rest; a last one of a single
 * example joins the one before (mb + 1): its KL pair would be its own prompt, the estimate
 * --batch-size 1 is refused for. */
static size_t micro_len(size_t i0, size_t n, size_t mb) {
    size_t rest = n - i0;
    return mb >= 2 && rest == mb + 1 ? rest : rest < mb ? rest : mb;   /* micro-batches of 1: each is its own */
}

int fdpo_kto_step(fdpo_gpt2 *policy, fdpo_gpt2 *ref, const fdpo_kto_loss *K, const fdpo_unpaired_example *const *ex,
                  size_t n, size_t micro_batch, size_t max_length, int grad, size_t norm, fdpo_kto_metrics *out,
                  double *out_l) {
    fdpo_kto_metrics s = {0};
    size_t mb = micro_batch ? micro_batch : n;
    kto_batch kb = {0};
    const size_t n_micro = n ? (n + mb - 1) / mb - (mb >= 2 && n > mb && n % mb == 1) : 0;   /* as micro_len cuts */
    float *lp = fdpo_malloc(2 * (mb + 1) * sizeof(float)), *lr = fdpo_malloc(2 * (mb + 1) * sizeof(float));
    float *dseq = fdpo_malloc(2 * (mb + 1) * sizeof(float));
    double *l_kl = fdpo_malloc((mb + 1) * sizeof(double));
    float *dtok = NULL;
    size_t cap_tok = 0;
    int rc = 0;
    /* Under MPI: this rank's micro-batches only (fdpo_dist_mine), the sums then added over
     * ranks. z0 needs no exchange: it is the mean over one micro-batch's KL pairs, and a
     * micro-batch is computed whole by one rank, so it is the z0 of a single process. */
    if (out_l && fdpo_dist_size() > 1) memset(out_l, 0, 4 * n * sizeof *out_l);
    for (size_t i0 = 0, k; i0 < n && !rc; i0 += k) {
        k = micro_len(i0, n, mb);
        if (!fdpo_dist_mine(i0 / mb)) continue;
        kb_build(&kb, ex + i0, k, max_length);
        /* LoRA: the reference may be the policy itself with its adapters off (forward first) */
        fdpo_lora *base_only = ref == policy ? policy->lora : NULL;
        if (base_only) base_only->enabled = 0;
        rc = fdpo_gpt2_forward(ref, &kb.batch, NULL, lr);
        if (base_only) base_only->enabled = 1;
        if (rc) break;
        fdpo_lora_set_rows(policy, (uint64_t)(i0 / mb) << 32);   /* LoRA dropout: this micro-batch's rows, on any rank */
        if ((rc = fdpo_gpt2_forward(policy, &kb.batch, NULL, lp))) break;
        s.tokens += kb.batch.n_tokens;
        for (size_t i = 0; i < k; i++) l_kl[i] = (double)lp[k + i] - (double)lr[k + i];
        double z0 = fdpo_kto_z0(&K->div, l_kl, k);
        s.kl += z0 * (double)k;
        for (size_t i = 0; i < k; i++) {
            const fdpo_unpaired_example *e = ex[i0 + i];
            double l = (double)lp[i] - (double)lr[i], dl;
            double loss = fdpo_kto_loss_one(K, l, e->label, z0, &dl);
            s.loss += loss;
            dseq[i] = (float)(dl / (double)norm);
            dseq[k + i] = 0.0f; /* the KL pairs set z0, which carries no gradient */
            double rw = K->beta * l, sc = K->beta * fdpo_kto_score(&K->div, l);
            if (e->label) { s.desirable++; s.rewards_chosen += rw; s.logps_chosen += lp[i]; s.scores_chosen += sc; }
            else { s.undesirable++; s.rewards_rejected += rw; s.logps_rejected += lp[i]; s.scores_rejected += sc; }
            if (out_l) { double *o = out_l + 4 * (i0 + i); o[0] = l; o[1] = l_kl[i]; o[2] = z0; o[3] = loss; }
        }
        if (grad) {
            if (kb.batch.n_tokens > cap_tok) { cap_tok = kb.batch.n_tokens; dtok = fdpo_realloc(dtok, cap_tok * sizeof(float)); }
            fdpo_batch_seq_to_token_grad(&kb.batch, dseq, dtok);
            fdpo_dist_arm_overlap(fdpo_dist_last_mine(i0 / mb, n_micro));   /* --allreduce-overlap */
            rc = fdpo_gpt2_backward(policy, dtok);
        }
    }
    free(lp); free(lr); free(dseq); free(l_kl); free(dtok);
    free(kb.seq_offset); free(kb.tokens); free(kb.targets);
    if (rc || (grad && fdpo_dist_overlap_backward_done())) return -1;   /* before the sums below, on every rank */
    if (fdpo_dist_size() > 1) {
        /* s.tokens stays this rank's: fdpo_trainer_step sums it over the ranks */
        double sums[10] = {(double)s.desirable, (double)s.undesirable, s.loss, s.kl,
                           s.rewards_chosen, s.rewards_rejected, s.logps_chosen, s.logps_rejected,
                           s.scores_chosen, s.scores_rejected};
        if (fdpo_dist_sum_f64(sums, 10) || (out_l && fdpo_dist_sum_f64(out_l, 4 * n))) return -1;
        s.desirable = (size_t)sums[0]; s.undesirable = (size_t)sums[1];
        s.loss = sums[2]; s.kl = sums[3]; s.rewards_chosen = sums[4]; s.rewards_rejected = sums[5];
        s.logps_chosen = sums[6]; s.logps_rejected = sums[7]; s.scores_chosen = sums[8]; s.scores_rejected = sums[9];
    }
    if (out) {
        s.n = n;
        s.loss /= n ? (double)n : 1;
        s.kl /= n ? (double)n : 1;
        double dd = (double)s.desirable, du = (double)s.undesirable; /* 0/0 = NaN: that side is not logged */
        s.rewards_chosen /= dd; s.logps_chosen /= dd; s.scores_chosen /= dd;
        s.rewards_rejected /= du; s.logps_rejected /= du; s.scores_rejected /= du;
        s.margins = s.rewards_chosen - s.rewards_rejected;
        *out = s;
    }
    return 0;
}

static uint64_t kto_data_hash(const fdpo_unpaired_example *const *ex, size_t n) {
    uint64_t h = FDPO_HASH_INIT;
    for (size_t i = 0; i < n; i++) {
        uint64_t n3[3] = {ex[i]->n_prompt, ex[i]->n_completion, (uint64_t)ex[i]->label};
        h = fdpo_hash64(h, n3, sizeof n3);
        h = fdpo_hash64(h, ex[i]->prompt, ex[i]->n_prompt * sizeof(int32_t));
        h = fdpo_hash64(h, ex[i]->completion, ex[i]->n_completion * sizeof(int32_t));
    }
    return h;
}

/* TRL KTOTrainer's log: per-side means over the examples of that side; a side without
 * examples in the batch is left out (and so is the margin), count/ and _sum are not logged.
 * Each key and value goes to add(sink, ...): a metrics line, or eval_summary.json's object. */
typedef void (*kto_metric_sink)(void *sink, const char *key, double value);
static void to_metrics_line(void *mw, const char *key, double value) { fdpo_metrics_add(mw, key, value); }
static void to_json_object(void *o, const char *key, double value) { cJSON_AddNumberToObject(o, key, value); }

static void put_kto_metrics(kto_metric_sink add, void *sink, const char *prefix, const fdpo_kto_metrics *m,
                            int with_loss) {
    char k[64];
#define ADD(name, v) do { snprintf(k, sizeof k, "%s%s", prefix, name); add(sink, k, v); } while (0)
    if (with_loss) ADD("loss", m->loss);
    ADD("kl", m->kl);
    if (m->desirable) {
        ADD("rewards/chosen", m->rewards_chosen);
        ADD("logps/chosen", m->logps_chosen);
        ADD("scores/chosen", m->scores_chosen);
    }
    if (m->undesirable) {
        ADD("rewards/rejected", m->rewards_rejected);
        ADD("logps/rejected", m->logps_rejected);
        ADD("scores/rejected", m->scores_rejected);
    }
    if (m->desirable && m->undesirable) ADD("rewards/margins", m->margins);
#undef ADD
}

static void add_kto_metrics(fdpo_metrics *mw, const char *prefix, const fdpo_kto_metrics *m, int with_loss) {
    put_kto_metrics(to_metrics_line, mw, prefix, m, with_loss);
}

void fdpo_kto_run_opts_default(fdpo_kto_run_opts *o) {
    memset(o, 0, sizeof *o);
    fdpo_pref_run_defaults(&o->train, &o->pref, &o->eval_fraction, 1e-6);   /* as dpo */
    o->loss = (fdpo_kto_loss){.div = {.kind = FDPO_DIV_RKL}, .beta = 0.1, .desirable_weight = 1, .undesirable_weight = 1};
}

int fdpo_kto_run_opts_check(const fdpo_kto_run_opts *o) {
    if (!o->train.init) return fdpo_error("--model: required (the policy checkpoint, also the default reference)");
    if (!o->data) return fdpo_error("--data: required (unpaired JSONL {prompt, completion, label})");
    if (fdpo_path_record_check("--data", o->data) || fdpo_path_record_check("--eval-file", o->eval_file) || fdpo_path_record_check("--ref", o->ref))
        return -1;
    if (fdpo_train_opts_check(&o->train)) return -1;
    /* z0 pairs completion i with prompt (i+1) mod n of its micro-batch: with n = 1 that is the
     * example's own prompt, so the "KL estimate" is the example's own log-ratio (TRL's
     * KTOTrainer refuses a per-device batch size of 1 for this reason) */
    if (o->train.batch_size < 2)
        return fdpo_error("--batch-size: KTO needs at least 2 examples per micro-batch (got %ld): its KL estimate pairs "
                          "each completion with another example's prompt, and in a micro-batch of 1 that is its own",
                          o->train.batch_size);
    if (fdpo_kto_loss_check(&o->loss) || fdpo_pref_data_check(&o->pref, o->train.resume)) return -1;
    if (!(o->eval_fraction >= 0 && o->eval_fraction < 1)) return fdpo_error("--eval-fraction: %g is not in [0, 1)", o->eval_fraction);
    return fdpo_train_out_ref_check(o->train.out, o->ref, o->train.init);
}

void fdpo_kto_run_opts_settings(const fdpo_kto_run_opts *o, fdpo_settings *s) {
    char div[64];
    fdpo_divergence_name(&o->loss.div, div, sizeof div);
    fdpo_settings_path(s, "model", o->train.init, 1);
    fdpo_settings_path(s, "data", o->data, 1);
    fdpo_settings_path(s, "ref", o->ref, 1);
    fdpo_settings_str(s, "divergence", div, 1);
    fdpo_settings_num(s, "beta", o->loss.beta, 1);
    fdpo_settings_num(s, "desirable-weight", o->loss.desirable_weight, 1);
    fdpo_settings_num(s, "undesirable-weight", o->loss.undesirable_weight, 1);
    fdpo_pref_data_settings(&o->pref, o->eval_fraction, o->eval_file, s);
}

/* dpo's summary lines (counts, the first line skipped per reason), then the labels */
static void log_examples(const char *name, const fdpo_unpaired_set *s) {
    fdpo_pref_summary_log(name, &s->summary);
    fdpo_log(FDPO_LOG_INFO, "%s: %zu desirable, %zu undesirable", name, s->desirable, s->undesirable);
}

int fdpo_kto_train(const fdpo_kto_run_opts *o) {
    const fdpo_train_opts *to = &o->train;
    if (fdpo_kto_run_opts_check(o)) return -1;
    /* another command's run: said before its data, or a saved path of it, is read */
    if (to->resume && fdpo_train_state_check_kind(to->out, "kto")) return -1;
    int rc = -1, tr_open = 0;
    fdpo_tokenizer *tok = NULL;
    fdpo_gpt2 *ref = NULL;
    fdpo_unpaired_set train_set = {0}, eval_set = {0};
    size_t *train_idx = NULL, *eval_idx = NULL, n_train = 0, n_eval = 0;
    const fdpo_unpaired_example **train_ex = NULL, **eval_ex = NULL, **step_ex = NULL;
    fdpo_trainer tr;
    fdpo_pref_options popt = o->pref;

    fdpo_gpt2_config pcfg;   /* a LoRA checkpoint's shape is its base's */
    const int shape_is_out = to->resume && to->lora_r <= 0;
    int crc = fdpo_checkpoint_load_config(shape_is_out ? to->out : to->init, &pcfg);
    if (crc) { fdpo_error_context("--model %s", to->init); goto done; }
    if (fdpo_trainer_check_lm(&pcfg, shape_is_out ? "--resume" : "--model", shape_is_out ? to->out : to->init)) goto done;
    if (popt.max_length == 0) popt.max_length = pcfg.n_positions;
    if (popt.max_length > pcfg.n_positions) {
        fdpo_error("--max-length %zu exceeds the model's n_positions %zu", popt.max_length, pcfg.n_positions);
        goto done;
    }
    if (!(tok = fdpo_trainer_load_tokenizer(to))) goto done;
    if (fdpo_unpaired_load(o->data, tok, &popt, &train_set)) goto done;
    log_examples(o->data, &train_set);
    const fdpo_unpaired_set *eset = &train_set;
    if (o->eval_file) {
        if (fdpo_unpaired_load(o->eval_file, tok, &popt, &eval_set)) goto done;
        log_examples(o->eval_file, &eval_set);
        n_train = train_set.n;
        train_idx = fdpo_malloc(n_train * sizeof *train_idx);
        for (size_t i = 0; i < n_train; i++) train_idx[i] = i;
        n_eval = eval_set.n;
        eval_idx = fdpo_malloc(n_eval * sizeof *eval_idx);
        for (size_t i = 0; i < n_eval; i++) eval_idx[i] = i;
        eset = &eval_set;
    } else if (fdpo_pref_split(train_set.n, o->eval_fraction, (uint64_t)to->seed, &train_idx, &n_train,
                               &eval_idx, &n_eval)) goto done;
    /* a held-out micro-batch of one pairs the example with its own prompt: z0 is its own
     * log-ratio and eval_loss reads 0.5 whenever that is >= 0, whatever the model */
    if (n_eval == 1 && o->eval_file) {
        fdpo_error("--eval-file %s: 1 example: KTO's KL estimate needs at least 2 per micro-batch", o->eval_file);
        goto done;
    }
    if (n_eval == 1) {   /* the split's one: kept for training, as --eval-fraction 0 would */
        fdpo_log(FDPO_LOG_WARN, "--eval-fraction %g holds out 1 of %zu examples, and KTO's KL estimate needs 2 per "
                 "micro-batch: it is kept for training and no eval_* is written (give more examples or --eval-file)",
                 o->eval_fraction, train_set.n);
        n_eval = 0;
        n_train = train_set.n;
        train_idx = fdpo_realloc(train_idx, n_train * sizeof *train_idx);
        for (size_t i = 0; i < n_train; i++) train_idx[i] = i;
    }
    if (n_train == 0) { fdpo_error("%s: no training examples left after the eval split", o->data); goto done; }
    if (n_train == 1) {   /* every micro-batch would be that one example (see --batch-size) */
        fdpo_error("%s: 1 training example left after the eval split: KTO's KL estimate needs at least 2 per micro-batch",
                   o->data);
        goto done;
    }
    train_ex = fdpo_malloc(n_train * sizeof *train_ex);
    for (size_t i = 0; i < n_train; i++) train_ex[i] = &train_set.ex[train_idx[i]];
    eval_ex = fdpo_malloc((n_eval ? n_eval : 1) * sizeof *eval_ex);
    for (size_t i = 0; i < n_eval; i++) eval_ex[i] = &eset->ex[eval_idx[i]];

    /* LoRA without --ref: the reference is the base, i.e. the policy with its adapters off
     * (unless --model is a LoRA checkpoint being continued: then it is that checkpoint) */
    uint64_t ref_hash = 0;
    if (to->lora_r > 0 && !o->ref && !fdpo_lora_is_checkpoint(to->init)) goto open;
    if (!(ref = fdpo_trainer_load_ref(o->ref, to->init, tok, pcfg.vocab_size, to->lora_r <= 0, &ref_hash))) goto done;
    if (popt.max_length > ref->config.n_positions) {
        fdpo_error("--max-length %zu exceeds the reference's n_positions %zu", popt.max_length, ref->config.n_positions);
        goto done;
    }
open:;
    fdpo_settings settings = {0};
    fdpo_kto_run_opts_settings(o, &settings);
    fdpo_train_opts topen = *to;
    topen.data = o->data;   /* named if a step is capped at the data set */
    char eval_name[PATH_MAX + 64];
    const uint64_t train_hash = kto_data_hash(train_ex, n_train);   /* also the older states' fingerprint */
    fdpo_train_opts_held_out(&topen, eval_name, sizeof eval_name, o->data, o->eval_fraction, o->eval_file, n_eval,
                             kto_data_hash(eval_ex, n_eval), train_hash);
    if (ref) {   /* recorded: a resume refuses other reference weights */
        topen.ref_flag = o->ref ? "--ref" : "--model";
        topen.ref_dir = o->ref ? o->ref : to->init;
        topen.ref_hash = ref_hash;
    }
    int orc = fdpo_trainer_open(&tr, &topen, "kto", tok, n_train, train_hash, &settings);
    fdpo_settings_free(&settings);
    if (orc) goto done;
    tr_open = 1;
    {   /* as dpo's, with each file's desirable/undesirable counts */
        cJSON *root = fdpo_pref_data_summary(&train_set.summary, o->eval_file ? &eval_set.summary : NULL, n_train,
                                             n_eval, &popt);
        const fdpo_unpaired_set *sets[] = {&train_set, &eval_set};
        const char *keys[] = {"data", "eval_data"};
        for (int i = 0; i < 2; i++) {
            cJSON *d = cJSON_GetObjectItemCaseSensitive(root, keys[i]);
            if (!d) continue;
            cJSON_AddNumberToObject(d, "desirable", (double)sets[i]->desirable);
            cJSON_AddNumberToObject(d, "undesirable", (double)sets[i]->undesirable);
        }
        cJSON_AddStringToObject(cJSON_AddObjectToObject(root, "reference"), "mode", "live");
        int wrc = fdpo_trainer_write_run_json(&tr, "data_summary.json", root);
        cJSON_Delete(root);
        if (wrc) goto done;
    }
    fdpo_gpt2 *reference = ref ? ref : tr.model;   /* not freed twice: ref stays NULL then */
    const size_t per_step = tr.step_items, mb = tr.micro_items;
    /* held-out micro-batches stay --batch-size's (z0 is a micro-batch's KL mean), capped at
     * the held-out set (the buffers are sized by it) */
    const size_t mb_eval = (size_t)to->batch_size < n_eval ? (size_t)to->batch_size : n_eval;
    step_ex = fdpo_malloc(per_step * sizeof *step_ex);
    if (!to->quiet && tr.state.step == 0)
        fdpo_log(FDPO_LOG_INFO, "kto: %zu train examples, %zu eval examples; live reference; %zu steps of %zu (micro-batches of %zu)",
                 n_train, n_eval, tr.state.total_steps, per_step, mb);
    fdpo_kto_metrics em = {0};
    size_t em_step = SIZE_MAX;   /* the step em was computed at: the final summary reuses it */
    if (n_eval && to->eval_every > 0 && tr.state.step == 0) {
        if (fdpo_kto_step(tr.model, reference, &o->loss, eval_ex, n_eval, mb_eval, popt.max_length, 0, n_eval, &em, NULL)) goto done;
        fdpo_metrics_begin(&tr.metrics, 0);
        add_kto_metrics(&tr.metrics, "eval_", &em, 1);
        if (fdpo_metrics_end(&tr.metrics)) goto done;
    }
    while (!fdpo_trainer_done(&tr)) {
        fdpo_trainer_begin_step(&tr);
        for (size_t i = 0; i < per_step; i++) step_ex[i] = train_ex[fdpo_trainer_next_item(&tr)];
        fdpo_kto_metrics m;
        if (fdpo_kto_step(tr.model, reference, &o->loss, step_ex, per_step, mb, popt.max_length, 1, per_step, &m, NULL)) goto done;
        if (fdpo_trainer_step(&tr, m.tokens)) goto done;
        int eval = n_eval && fdpo_trainer_want_eval(&tr);
        if (eval && fdpo_kto_step(tr.model, reference, &o->loss, eval_ex, n_eval, mb_eval, popt.max_length, 0, n_eval, &em, NULL)) goto done;
        if (eval) em_step = tr.state.step;
        if (fdpo_trainer_want_log(&tr) || eval) {
            fdpo_trainer_metrics_begin(&tr, m.loss);
            add_kto_metrics(&tr.metrics, "", &m, 0);
            if (eval) add_kto_metrics(&tr.metrics, "eval_", &em, 1);
            if (fdpo_metrics_end(&tr.metrics)) goto done;
            /* the margin only where it is defined: a step with examples of both kinds (as in
             * metrics.jsonl; a step of one kind printed "margin -nan") */
            char extra[96];
            if (m.desirable && m.undesirable) snprintf(extra, sizeof extra, "kl %.3g | margin %.3g", m.kl, m.margins);
            else snprintf(extra, sizeof extra, "kl %.3g", m.kl);
            fdpo_trainer_progress(&tr, m.loss, extra);
        }
        if (fdpo_trainer_maybe_save(&tr)) goto done;
    }
    if (n_eval && !tr.stopped) {
        /* the final model's held-out metrics, as dpo and rm write them (--eval-every 0 too: the
         * set was held out of training for this); the last step's, where that step evaluated */
        if (fdpo_trainer_before_final_eval(&tr)) goto done;
        if (em_step != tr.state.step &&
            fdpo_kto_step(tr.model, reference, &o->loss, eval_ex, n_eval, mb_eval, popt.max_length, 0, n_eval, &em, NULL))
            goto done;
        cJSON *root = cJSON_CreateObject();
        cJSON_AddNumberToObject(root, "step", (double)tr.state.step);
        cJSON_AddNumberToObject(root, "examples", (double)n_eval);
        put_kto_metrics(to_json_object, root, "eval_", &em, 1);
        int wrc = fdpo_trainer_write_eval_summary(&tr, root);
        cJSON_Delete(root);
        if (wrc) goto done;
        if (!to->quiet) fdpo_log(FDPO_LOG_INFO, "eval (%zu examples): loss %.4g, kl %.3g", n_eval, em.loss, em.kl);
    }
    rc = 0;
done:
    if (tr_open) {
        int crc2 = fdpo_trainer_close(&tr, rc == 0);
        if (!rc) rc = crc2;
    } else if (!to->out_claimed) {
        fdpo_dir_unlock(to->out);   /* a refused resume: fdpo_trainer_load_tokenizer took OUT (as dpo) */
    }
    fdpo_gpt2_free(ref);
    fdpo_unpaired_free(&train_set);
    fdpo_unpaired_free(&eval_set);
    free(train_idx); free(eval_idx); free(train_ex); free(eval_ex); free(step_ex);
    fdpo_tokenizer_free(tok);
    return rc;
}
