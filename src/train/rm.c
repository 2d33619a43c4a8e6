/* `fdpo rm`: Bradley-Terry reward-model training on preference pairs with the shared
 * trainer (schedule, AdamW, checkpoints with state, metrics, --resume). docs/rm.md. */
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
#include "fdpo/lora.h"
#include "fdpo/objectives.h"
#include "fdpo/rm.h"

/* ---- batches ---- */
void fdpo_rm_batch_reset(fdpo_rm_batch *rb) {
    if (!rb->seq_offset) { rb->cap_seq = 16; rb->seq_offset = fdpo_malloc((rb->cap_seq + 1) * sizeof(size_t)); }
    rb->batch.n_seq = 0;
    rb->batch.n_tokens = 0;
    rb->seq_offset[0] = 0;
}

void fdpo_rm_batch_add(fdpo_rm_batch *rb, const int32_t *prompt, size_t n_prompt, const int32_t *comp,
                       size_t n_comp, int32_t eot) {
    while (n_comp > 0 && comp[n_comp - 1] == eot) n_comp--; /* the reward sits on the last real token */
    size_t B = rb->batch.n_seq, N = rb->batch.n_tokens, T = n_prompt + n_comp;
    if (B + 1 > rb->cap_seq) {
        rb->cap_seq = 2 * (B + 1);
        rb->seq_offset = fdpo_realloc(rb->seq_offset, (rb->cap_seq + 1) * sizeof(size_t));
    }
    if (N + T > rb->cap_tokens) {
        rb->cap_tokens = 2 * (N + T);
        rb->tokens = fdpo_realloc(rb->tokens, rb->cap_tokens * sizeof(int32_t));
        rb->targets = fdpo_realloc(rb->targets, rb->cap_tokens * sizeof(int32_t));
    }
    memcpy(rb->tokens + N, prompt, n_prompt * sizeof(int32_t));
    memcpy(rb->tokens + N + n_prompt, comp, n_comp * sizeof(int32_t));
    for (size_t t = 0; t < T; t++) rb->targets[N + t] = -1; /* no next-token targets: the head is the score */
    rb->seq_offset[B + 1] = N + T;
    rb->batch = (fdpo_batch){.n_seq = B + 1, .n_tokens = N + T, .seq_offset = rb->seq_offset,
                             .tokens = rb->tokens, .targets = rb->targets, .skip_unweighted = 1};
}

void fdpo_rm_batch_free(fdpo_rm_batch *rb) {
    free(rb->seq_offset); free(rb->tokens); free(rb->targets);
    memset(rb, 0, sizeof *rb);
}

/* ---- one step ---- */
int fdpo_rm_step(fdpo_gpt2 *m, fdpo_rm_batch *rb, const fdpo_pref_pair *const *pairs,
                 size_t n, size_t micro_batch, double center_coef, int grad, size_t norm, int32_t eot,
                 fdpo_rm_metrics *out, double *rewards_out) {
    fdpo_rm_metrics s = {0};
    size_t mb = micro_batch ? micro_batch : n;
    float *r = fdpo_malloc(2 * (mb ? mb : 1) * sizeof(float)), *dr = fdpo_malloc(2 * (mb ? mb : 1) * sizeof(float));
    int rc = 0;
    /* under MPI: this rank's micro-batches only; the sums are then added over ranks */
    if (rewards_out && fdpo_dist_size() > 1) memset(rewards_out, 0, 2 * n * sizeof *rewards_out);
    for (size_t i0 = 0; i0 < n && !rc; i0 += mb) {
        size_t k = n - i0 < mb ? n - i0 : mb;
        if (!fdpo_dist_mine(i0 / mb)) continue;
        fdpo_rm_batch_reset(rb);
        for (size_t i = 0; i < k; i++) {
            const fdpo_pref_pair *p = pairs[i0 + i];
            fdpo_rm_batch_add(rb, p->prompt, p->n_prompt, p->chosen, p->n_chosen, eot);
            fdpo_rm_batch_add(rb, p->prompt, p->n_prompt, p->rejected, p->n_rejected, eot);
        }
        fdpo_lora_set_rows(m, (uint64_t)(i0 / mb) << 32);   /* LoRA dropout: this micro-batch's rows, on any rank */
        if ((rc = fdpo_gpt2_score_forward(m, &rb->batch, r))) break;
        s.tokens += rb->batch.n_tokens;
        for (size_t i = 0; i < k; i++) {
            double rc_ = r[2 * i], rr = r[2 * i + 1], mg = pairs[i0 + i]->margin, dc, dj;
            s.loss += fdpo_rm_loss_pair(rc_, rr, mg, center_coef, &dc, &dj);
            dr[2 * i] = (float)(dc / (double)norm);
            dr[2 * i + 1] = (float)(dj / (double)norm);
            s.accuracy += rc_ > rr ? 1.0 : rc_ == rr ? 0.5 : 0.0;
            s.margin += rc_ - rr;
            s.rewards_chosen += rc_;
            s.rewards_rejected += rr;
            if (rewards_out) { rewards_out[2 * (i0 + i)] = rc_; rewards_out[2 * (i0 + i) + 1] = rr; }
        }
        if (grad) {
            fdpo_dist_arm_overlap(fdpo_dist_last_mine(i0 / mb, (n + mb - 1) / mb));   /* --allreduce-overlap */
            rc = fdpo_gpt2_score_backward(m, dr);
        }
    }
    free(r); free(dr);
    if (rc || (grad && fdpo_dist_overlap_backward_done())) return -1;   /* before the sums below, on every rank */
    if (fdpo_dist_size() > 1) {
        /* s.tokens stays this rank's: fdpo_trainer_step sums it over the ranks */
        double sums[5] = {s.loss, s.accuracy, s.margin, s.rewards_chosen, s.rewards_rejected};
        if (fdpo_dist_sum_f64(sums, 5) || (rewards_out && fdpo_dist_sum_f64(rewards_out, 2 * n))) return -1;
        s.loss = sums[0]; s.accuracy = sums[1]; s.margin = sums[2];
        s.rewards_chosen = sums[3]; s.rewards_rejected = sums[4];
    }
    if (out) {
        double d = n ? (double)n : 1;
        s.pairs = n;
        s.loss /= d; s.accuracy /= d; s.margin /= d; s.rewards_chosen /= d; s.rewards_rejected /= d;
        s.mean_reward = (s.rewards_chosen + s.rewards_rejected) / 2;
        *out = s;
    }
    return 0;
}

/* ---- data ---- */
int fdpo_pref_margins_check(const char *path, const fdpo_pref_set *set) {
    for (size_t k = 0; k < set->n; k++)
        if (!isfinite(set->pairs[k].margin))
            return fdpo_error("%s:%zu: field 'margin' must be a finite number", path, set->pairs[k].line);
    return 0;
}

static uint64_t rm_data_hash(const fdpo_pref_pair *const *pairs, size_t n) {
    uint64_t h = FDPO_HASH_INIT;
    for (size_t i = 0; i < n; i++) {
        const fdpo_pref_pair *p = pairs[i];
        uint64_t n3[3] = {p->n_prompt, p->n_chosen, p->n_rejected};
        h = fdpo_hash64(h, n3, sizeof n3);
        h = fdpo_hash64(h, p->prompt, p->n_prompt * sizeof *p->prompt);
        h = fdpo_hash64(h, p->chosen, p->n_chosen * sizeof *p->chosen);
        h = fdpo_hash64(h, p->rejected, p->n_rejected * sizeof *p->rejected);
        h = fdpo_hash64(h, &p->margin, sizeof p->margin);
    }
    return h;
}

fdpo_gpt2 *fdpo_rm_load(const char *dir, fdpo_tokenizer **tok) {
    fdpo_gpt2 *m = fdpo_checkpoint_load_model(dir);
    if (!m) { fdpo_error_context("reward model %s", dir); return NULL; }
    if (m->config.num_labels != 1) {
        fdpo_error("reward model %s: a language model (architectures ...LMHeadModel / ...ForCausalLM, no score.weight), "
                   "not a reward model (train one with fdpo rm)", dir);
        fdpo_gpt2_free(m);
        return NULL;
    }
    if (tok && !(*tok = fdpo_checkpoint_load_tokenizer(dir))) {
        fdpo_error_context("reward model %s", dir);
        fdpo_gpt2_free(m);
        return NULL;
    }
    /* rm: scores text with the reward model's own tokenizer: one that does not fit the model
     * (tokenizer files copied from another checkpoint) would index past its embeddings */
    if (tok && fdpo_tokenizer_vocab_size(*tok) > m->config.vocab_size) {
        fdpo_error("reward model %s: its tokenizer has %zu tokens but the model's vocab_size is %zu "
                   "(the tokenizer files belong to another model)", dir, fdpo_tokenizer_vocab_size(*tok),
                   m->config.vocab_size);
        fdpo_tokenizer_free(*tok);
        *tok = NULL;
        fdpo_gpt2_free(m);
        return NULL;
    }
    return m;
}

static void add_rm_metrics(fdpo_metrics *mw, const char *prefix, const fdpo_rm_metrics *m, int with_loss) {
    char k[64];
#define ADD(name, v) do { snprintf(k, sizeof k, "%s%s", prefix, name); fdpo_metrics_add(mw, k, v); } while (0)
    if (with_loss) ADD("loss", m->loss);
    ADD("accuracy", m->accuracy);
    ADD("margin", m->margin);
    ADD("mean_reward", m->mean_reward);
    ADD("rewards/chosen", m->rewards_chosen);
    ADD("rewards/rejected", m->rewards_rejected);
#undef ADD
}

void fdpo_rm_run_opts_default(fdpo_rm_run_opts *o) {
    memset(o, 0, sizeof *o);
    /* a reward model is fine-tuned from a given backbone at a small lr */
    fdpo_pref_run_defaults(&o->train, &o->pref, &o->eval_fraction, 1e-5);
}

int fdpo_rm_run_opts_check(const fdpo_rm_run_opts *o) {
    if (!o->train.init) return fdpo_error("--model: required (the backbone checkpoint)");
    if (!o->data) return fdpo_error("--data: required (preference JSONL)");
    if (fdpo_path_record_check("--data", o->data) || fdpo_path_record_check("--eval-file", o->eval_file)) return -1;
    if (fdpo_train_opts_check(&o->train) || fdpo_pref_data_check(&o->pref, o->train.resume)) return -1;
    if (!isfinite(o->center_rewards_coefficient) || o->center_rewards_coefficient < 0)
        return fdpo_error("--center-rewards-coefficient: must be a finite number >= 0 (got %g)", o->center_rewards_coefficient);
    if (!(o->eval_fraction >= 0 && o->eval_fraction < 1)) return fdpo_error("--eval-fraction: %g is not in [0, 1)", o->eval_fraction);
    return 0;
}

void fdpo_rm_run_opts_settings(const fdpo_rm_run_opts *o, fdpo_settings *s) {
    fdpo_settings_path(s, "model", o->train.init, 1);
    fdpo_settings_path(s, "data", o->data, 1);
    fdpo_settings_num(s, "center-rewards-coefficient", o->center_rewards_coefficient, 1);
    fdpo_pref_data_settings(&o->pref, o->eval_fraction, o->eval_file, s);
}

int fdpo_rm_train(const fdpo_rm_run_opts *o) {
    const fdpo_train_opts *to = &o->train;
    if (fdpo_rm_run_opts_check(o)) return -1;
    /* another command's run: said before its data, or a saved path of it, is read */
    if (to->resume && fdpo_train_state_check_kind(to->out, "rm")) return -1;
    int rc = -1, tr_open = 0;
    fdpo_tokenizer *tok = NULL;
    fdpo_pref_set train_set = {0}, eval_set = {0};
    size_t *train_idx = NULL, *eval_idx = NULL, n_train = 0, n_eval = 0;
    const fdpo_pref_pair **train_pairs = NULL, **eval_pairs = NULL, **step_pairs = NULL;
    fdpo_rm_batch rb = {0};
    fdpo_trainer tr;
    fdpo_pref_options popt = o->pref;

    fdpo_gpt2_config mcfg;   /* a LoRA checkpoint's shape is its base's */
    int crc = fdpo_checkpoint_load_config(to->resume ? to->out : to->init, &mcfg);
    if (crc) { fdpo_error_context("--model %s", to->init); goto done; }
    if (popt.max_length == 0) popt.max_length = mcfg.n_positions;
    if (popt.max_length > mcfg.n_positions) {
        fdpo_error("--max-length %zu exceeds the model's n_positions %zu", popt.max_length, mcfg.n_positions);
        goto done;
    }
    if (!(tok = fdpo_trainer_load_tokenizer(to))) goto done;
    const int32_t eot = fdpo_tokenizer_eot(tok);
    if (fdpo_pref_load(o->data, tok, &popt, &train_set)) goto done;
    fdpo_pref_summary_log(o->data, &train_set.summary);
    if (fdpo_pref_margins_check(o->data, &train_set)) goto done;
    const fdpo_pref_set *eset = &train_set;
    if (o->eval_file) {
        if (fdpo_pref_load(o->eval_file, tok, &popt, &eval_set)) goto done;
        if (fdpo_pref_margins_check(o->eval_file, &eval_set)) goto done;
        n_train = train_set.n;
        train_idx = fdpo_malloc((n_train ? n_train : 1) * sizeof *train_idx);
        for (size_t i = 0; i < n_train; i++) train_idx[i] = i;
        n_eval = eval_set.n;
        eval_idx = fdpo_malloc((n_eval ? n_eval : 1) * sizeof *eval_idx);
        for (size_t i = 0; i < n_eval; i++) eval_idx[i] = i;
        eset = &eval_set;
    } else if (fdpo_pref_split(train_set.n, o->eval_fraction, (uint64_t)to->seed, &train_idx, &n_train,
                               &eval_idx, &n_eval)) goto done;
    if (n_train == 0) { fdpo_error("%s: no training pairs left after the eval split", o->data); goto done; }
    train_pairs = fdpo_malloc(n_train * sizeof *train_pairs);
    for (size_t i = 0; i < n_train; i++) train_pairs[i] = &train_set.pairs[train_idx[i]];
    eval_pairs = fdpo_malloc((n_eval ? n_eval : 1) * sizeof *eval_pairs);
    for (size_t i = 0; i < n_eval; i++) eval_pairs[i] = &eset->pairs[eval_idx[i]];

    fdpo_settings settings = {0};
    fdpo_rm_run_opts_settings(o, &settings);
    fdpo_train_opts topen = *to;
    topen.data = o->data;   /* named if a step is capped at the data set */
    char eval_name[PATH_MAX + 64];
    const uint64_t train_hash = rm_data_hash(train_pairs, n_train);   /* also the older states' fingerprint */
    fdpo_train_opts_held_out(&topen, eval_name, sizeof eval_name, o->data, o->eval_fraction, o->eval_file, n_eval,
                             rm_data_hash(eval_pairs, n_eval), train_hash);
    int orc = fdpo_trainer_open(&tr, &topen, "rm", tok, n_train, train_hash, &settings);
    fdpo_settings_free(&settings);
    if (orc) goto done;
    tr_open = 1;
    if (tr.model->config.num_labels == 0) {
        /* a language model: put a fresh score head on its backbone; AdamW is resized (step 0) */
        fdpo_gpt2 *rmodel = fdpo_gpt2_reward_model_from_lm(tr.model, FDPO_RM_INIT_STD, (uint64_t)to->seed, eot);
        if (!rmodel) { fdpo_error_context("--model %s", to->init ? to->init : to->out); goto done; }
        fdpo_gpt2_free(tr.model);
        tr.model = rmodel;
        fdpo_adamw_free(&tr.opt);
        if (fdpo_adamw_init(&tr.opt, rmodel->n_params, to->beta1, to->beta2, to->adam_eps, to->weight_decay)) goto done;
    }
    const size_t per_step = tr.step_items, mb = tr.micro_items;
    step_pairs = fdpo_malloc(per_step * sizeof *step_pairs);
    if (!to->quiet && tr.state.step == 0)
        fdpo_log(FDPO_LOG_INFO, "reward model: %zu train pairs, %zu eval pairs; %zu steps of %zu pairs (micro-batches of %zu)",
                 n_train, n_eval, tr.state.total_steps, per_step, mb);
    const double cc = o->center_rewards_coefficient;
    fdpo_rm_metrics em = {0};
    size_t em_step = SIZE_MAX;   /* the step em was computed at: the final summary reuses it */
    if (n_eval && to->eval_every > 0 && tr.state.step == 0) {
        if (fdpo_rm_step(tr.model, &rb, eval_pairs, n_eval, mb, cc, 0, n_eval, eot, &em, NULL)) goto done;
        fdpo_metrics_begin(&tr.metrics, 0);
        add_rm_metrics(&tr.metrics, "eval_", &em, 1);
        if (fdpo_metrics_end(&tr.metrics)) goto done;
    }
    while (!fdpo_trainer_done(&tr)) {
        fdpo_trainer_begin_step(&tr);
        for (size_t i = 0; i < per_step; i++) {
            size_t j = fdpo_trainer_next_item(&tr);
            step_pairs[i] = train_pairs[j];
        }
        fdpo_rm_metrics m;
        if (fdpo_rm_step(tr.model, &rb, step_pairs, per_step, mb, cc, 1, per_step,
                         eot, &m, NULL)) goto done;
        if (fdpo_trainer_step(&tr, m.tokens)) goto done;
        int eval = n_eval && fdpo_trainer_want_eval(&tr);
        if (eval && fdpo_rm_step(tr.model, &rb, eval_pairs, n_eval, mb, cc, 0, n_eval,
                                 eot, &em, NULL)) goto done;
        if (eval) em_step = tr.state.step;
        if (fdpo_trainer_want_log(&tr) || eval) {
            fdpo_trainer_metrics_begin(&tr, m.loss);
            add_rm_metrics(&tr.metrics, "", &m, 0);
            if (eval) add_rm_metrics(&tr.metrics, "eval_", &em, 1);
            if (fdpo_metrics_end(&tr.metrics)) goto done;
            char extra[96];
            int k = snprintf(extra, sizeof extra, "acc %.2f | margin %.3g", m.accuracy, m.margin);
            if (eval) snprintf(extra + k, sizeof extra - (size_t)k, " | eval acc %.3f", em.accuracy);
            fdpo_trainer_progress(&tr, m.loss, extra);
        }
        if (fdpo_trainer_maybe_save(&tr)) goto done;
    }
    if (n_eval && !tr.stopped) {
        /* final held-out summary: how often the reward model ranks chosen above rejected */
        if (fdpo_trainer_before_final_eval(&tr)) goto done;
        if (em_step != tr.state.step && fdpo_rm_step(tr.model, &rb, eval_pairs, n_eval, mb, cc, 0, n_eval, eot, &em, NULL))
            goto done;
        cJSON *root = cJSON_CreateObject();
        cJSON_AddNumberToObject(root, "step", (double)tr.state.step);
        cJSON_AddNumberToObject(root, "pairs", (double)n_eval);
        cJSON_AddNumberToObject(root, "eval_loss", em.loss);
        cJSON_AddNumberToObject(root, "eval_accuracy", em.accuracy);
        cJSON_AddNumberToObject(root, "eval_margin", em.margin);
        int wrc = fdpo_trainer_write_eval_summary(&tr, root);
        cJSON_Delete(root);
        if (wrc) goto done;
        if (!to->quiet) fdpo_log(FDPO_LOG_INFO, "eval (%zu pairs): accuracy %.4f, loss %.4g", n_eval, em.accuracy, em.loss);
    }
    rc = 0;
done:
    if (tr_open) {
        int crc2 = fdpo_trainer_close(&tr, rc == 0);
        if (!rc) rc = crc2;
    } else if (!to->out_claimed) {
        fdpo_dir_unlock(to->out);   /* a refused resume: fdpo_trainer_load_tokenizer took OUT (as dpo) */
    }
    fdpo_rm_batch_free(&rb);
    fdpo_pref_free(&train_set);
    fdpo_pref_free(&eval_set);
    free(train_idx); free(eval_idx); free(train_pairs); free(eval_pairs); free(step_pairs);
    fdpo_tokenizer_free(tok);
    return rc;
}
