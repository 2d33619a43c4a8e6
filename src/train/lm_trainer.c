/* Pretraining / SFT: the weighted next-token loss over packed batches, with gradient
 * accumulation normalised over the whole optimizer step. */
#include <cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/dist.h"
#include "fdpo/dpo.h"   /* fdpo_train_opts_held_out: the held-out set as dpo, rm and kto give theirs */
#include "fdpo/lora.h"
#include "fdpo/trainer.h"

/* A packed batch under construction, with buffers for up to cap tokens / seqs. */
typedef struct {
    size_t cap_tokens, cap_seq;
    size_t *seq_offset;
    int32_t *tokens, *targets;
    float *weights, *token_logp, *d_token_logp;
    fdpo_batch batch;
} packed;

static void packed_init(packed *p, size_t cap_seq, size_t cap_tokens) {
    p->cap_seq = cap_seq; p->cap_tokens = cap_tokens;
    p->seq_offset = fdpo_malloc((cap_seq + 1) * sizeof *p->seq_offset);
    p->tokens = fdpo_malloc(cap_tokens * sizeof *p->tokens);
    p->targets = fdpo_malloc(cap_tokens * sizeof *p->targets);
    p->weights = fdpo_malloc(cap_tokens * sizeof *p->weights);
    p->token_logp = fdpo_malloc(cap_tokens * sizeof *p->token_logp);
    p->d_token_logp = fdpo_malloc(cap_tokens * sizeof *p->d_token_logp);
}

static void packed_free(packed *p) {
    free(p->seq_offset); free(p->tokens); free(p->targets); free(p->weights);
    free(p->token_logp); free(p->d_token_logp);
}

/* Sequences items[0..n) of d laid end to end: inputs tokens[0..len-1), targets tokens[1..len);
 * a target with weight 0 becomes -1 (no log-softmax spent on it). */
static void packed_fill(packed *p, const fdpo_lm_data *d, const size_t *items, size_t n) {
    size_t k = 0;
    p->seq_offset[0] = 0;
    for (size_t b = 0; b < n; b++) {
        size_t s = d->start[items[b]], len = d->len[items[b]];
        for (size_t j = 0; j + 1 < len; j++, k++) {
            float w = d->weights ? d->weights[s + j + 1] : 1.0f;
            p->tokens[k] = d->tokens[s + j];
            p->targets[k] = w != 0.0f ? d->tokens[s + j + 1] : -1;
            p->weights[k] = w;
        }
        p->seq_offset[b + 1] = k;
    }
    p->batch = (fdpo_batch){
        .n_seq = n, .n_tokens = k, .seq_offset = p->seq_offset, .tokens = p->tokens,
        .targets = p->targets, .weights = p->weights, .pos = NULL, .branch = NULL,
        .skip_unweighted = 1, /* LM head over weighted (not prompt-masked) tokens only */
        .fused_head = 1,      /* chunked over the vocabulary: no [N, V] logits */
        .head_keep_max_bytes = FDPO_LM_LOGITS_KEEP_MAX_BYTES, /* unless they fit this budget */
    };
}

static size_t max_len(const fdpo_lm_data *d) {
    size_t m = 0;
    for (size_t i = 0; i < d->n_seq; i++) if (d->len[i] > m) m = d->len[i];
    return m;
}

int fdpo_lm_eval(fdpo_gpt2 *m, const fdpo_lm_data *d, size_t batch_size, size_t max_seqs, double *loss) {
    *loss = NAN;
    size_t n_seq = max_seqs > 0 && max_seqs < d->n_seq ? max_seqs : d->n_seq;
    if (n_seq == 0) return 0;
    packed p;
    packed_init(&p, batch_size, batch_size * max_len(d));
    size_t *items = fdpo_malloc(batch_size * sizeof *items);
    double sum = 0, wsum = 0;
    int rc = 0;
    for (size_t i = 0; i < n_seq && !rc; i += batch_size) {
        size_t n = n_seq - i < batch_size ? n_seq - i : batch_size;
        for (size_t b = 0; b < n; b++) items[b] = i + b;
        packed_fill(&p, d, items, n);
        if (p.batch.n_tokens == 0) continue;
        rc = fdpo_gpt2_forward(m, &p.batch, p.token_logp, NULL);
        for (size_t t = 0; t < p.batch.n_tokens && !rc; t++) {
            if (p.targets[t] < 0) continue;
            sum -= (double)p.weights[t] * (double)p.token_logp[t];
            wsum += p.weights[t];
        }
    }
    free(items);
    packed_free(&p);
    if (rc) return -1;
    *loss = wsum > 0 ? sum / wsum : NAN;
    return 0;
}

int fdpo_lm_train(const fdpo_train_opts *o, const char *kind, const fdpo_tokenizer *tok,
                  const fdpo_lm_data *train, const fdpo_lm_data *val) {
    fdpo_trainer tr;
    /* the checkpoint the run started from, fixed as dpo's is: a LoRA run's resume loads its
     * base from it again, and another --model there continued the adapters on another base */
    fdpo_settings extra = {0};
    fdpo_settings_path(&extra, "model", o->init, 1);
    /* the held-out split is in the resume fingerprint and the ranks' agreement too: the
     * eval_loss after a resume must be computed on the same sequences */
    static const fdpo_lm_data no_val = {0};
    const fdpo_lm_data *held_out = val ? val : &no_val;
    fdpo_train_opts topen = *o;
    char eval_name[PATH_MAX + 64];
    const uint64_t train_hash = fdpo_lm_data_hash(train);   /* also the older states' fingerprint */
    fdpo_train_opts_held_out(&topen, eval_name, sizeof eval_name, o->data, o->val_fraction, NULL, held_out->n_seq,
                             fdpo_lm_data_hash(held_out), train_hash);
    int orc = fdpo_trainer_open(&tr, &topen, kind, tok, train->n_seq, train_hash, &extra);
    fdpo_settings_free(&extra);
    if (orc) return -1;
    /* S sequences a step in A micro-batches of B (the last one short when the step was capped
     * at the data set: fdpo_train_step_items) */
    const size_t S = tr.step_items, B = tr.micro_items, A = (S + B - 1) / B;
    size_t longest = max_len(train);
    packed p;
    packed_init(&p, B, B * (longest > 1 ? longest : 1));
    size_t *items = fdpo_malloc(S * sizeof *items);
    int rc = 0;
    if (!o->quiet && tr.state.step == 0)
        fdpo_log(FDPO_LOG_INFO, "%zu train sequences (%zu tokens), %zu val sequences; %zu parameters; %zu steps of %zu sequences (micro-batches of %zu)",
                train->n_seq, train->n_tokens, val ? val->n_seq : 0, tr.model->n_params,
                tr.state.total_steps, S, B);
    /* one document (pretrain) or example (sft): the split holds out >= 1 of n >= 2
     * (fdpo_data_split), none of 1, and the evaluations due (every --eval-every steps and at
     * the last, and the final one of eval_summary.json, --eval-every 0 included) would not run
     * without a word */
    if (o->val_fraction > 0 && (!val || val->n_seq == 0) && tr.state.step == 0 &&
        fdpo_dist_is_root()) {   /* every rank has the same data: said once */
        const int sft = !strcmp(kind, "sft");
        size_t el = 0;   /* the separator by its text: an Instruct tokenizer's is <|im_end|> */
        const char *eos = fdpo_tokenizer_token_bytes(tok, fdpo_tokenizer_eot(tok), &el);
        char docs[128];
        snprintf(docs, sizeof docs, " documents (%.*s separates them)", (int)(el < 64 ? el : 64), eos ? eos : "");
        char every[96] = "";
        if (o->eval_every > 0) snprintf(every, sizeof every, "--eval-every %ld writes no eval_loss and ", o->eval_every);
        fdpo_log(FDPO_LOG_WARN, "--eval-fraction %g: the data is one %s, which the split keeps for training, so "
                 "%sthe run writes no eval_summary.json (give two or more%s, or --eval-fraction 0)", o->val_fraction,
                 sft ? "example" : "document", every, sft ? " examples" : docs);
    }
    const int have_val = val && val->n_seq > 0;
    double eval_loss = NAN;
    size_t eval_step = SIZE_MAX;   /* the step eval_loss was computed at: the final summary reuses it */
    while (!rc && !fdpo_trainer_done(&tr)) {
        fdpo_trainer_begin_step(&tr);
        /* the whole step's sequences first: the loss is normalised by their total weight */
        double W = 0;
        for (size_t i = 0; i < S; i++) {
            items[i] = fdpo_trainer_next_item(&tr);
            W += fdpo_lm_data_seq_weight(train, items[i]);
        }
        double loss_sum = 0;
        size_t n_tokens = 0;
        for (size_t a = 0; a < A && !rc; a++) {
            if (!fdpo_dist_mine(a)) continue;   /* under MPI: this rank's micro-batches */
            packed_fill(&p, train, items + a * B, S - a * B < B ? S - a * B : B);
            n_tokens += p.batch.n_tokens;
            if (p.batch.n_tokens == 0 || W <= 0) continue;
            fdpo_lora_set_rows(tr.model, (uint64_t)a << 32);   /* LoRA dropout: micro-batch a's rows, on any rank */
            if ((rc = fdpo_gpt2_forward(tr.model, &p.batch, p.token_logp, NULL))) break;
            /* loss = -sum_t w_t logp_t / W  =>  dloss/dlogp_t = -w_t / W */
            for (size_t t = 0; t < p.batch.n_tokens; t++) {
                if (p.targets[t] < 0) { p.d_token_logp[t] = 0; continue; }
                loss_sum -= (double)p.weights[t] * (double)p.token_logp[t];
                p.d_token_logp[t] = (float)(-(double)p.weights[t] / W);
            }
            fdpo_dist_arm_overlap(fdpo_dist_last_mine(a, A));   /* --allreduce-overlap: the step's last backward here */
            rc = fdpo_gpt2_backward(tr.model, p.d_token_logp);
        }
        /* the layers' sums this rank's backward did not start, then the loss's: on every rank */
        if (rc || (rc = fdpo_dist_overlap_backward_done()) || (rc = fdpo_dist_sum_f64(&loss_sum, 1))) break;
        double loss = W > 0 ? loss_sum / W : 0;
        if ((rc = fdpo_trainer_step(&tr, n_tokens))) break;
        int eval = have_val && fdpo_trainer_want_eval(&tr);
        if (eval && (rc = fdpo_lm_eval(tr.model, val, B, (size_t)o->eval_max_seqs, &eval_loss))) break;
        if (eval) eval_step = tr.state.step;
        if (fdpo_trainer_want_log(&tr) || eval) {
            fdpo_trainer_metrics_begin(&tr, loss);
            if (eval) fdpo_metrics_add(&tr.metrics, "eval_loss", eval_loss);   /* TRL's (and HF Trainer's) name */
            if ((rc = fdpo_metrics_end(&tr.metrics))) break;
            char extra[64] = "";
            if (eval) snprintf(extra, sizeof extra, "eval loss %.4f", eval_loss);
            fdpo_trainer_progress(&tr, loss, extra);
        }
        rc = fdpo_trainer_maybe_save(&tr);
    }
    if (!rc && have_val && !tr.stopped) {
        /* the final model's held-out loss, as dpo and rm write theirs (--eval-every 0 too: the
         * split was held out of training for this); the last step's, where that step evaluated */
        rc = fdpo_trainer_before_final_eval(&tr);
        if (!rc && eval_step != tr.state.step) rc = fdpo_lm_eval(tr.model, val, B, (size_t)o->eval_max_seqs, &eval_loss);
        if (!rc) {
            const size_t n_eval = o->eval_max_seqs > 0 && (size_t)o->eval_max_seqs < val->n_seq
                                      ? (size_t)o->eval_max_seqs : val->n_seq;   /* as fdpo_lm_eval takes them */
            cJSON *root = cJSON_CreateObject();
            cJSON_AddNumberToObject(root, "step", (double)tr.state.step);
            cJSON_AddNumberToObject(root, "sequences", (double)n_eval);
            cJSON_AddNumberToObject(root, "eval_loss", eval_loss);
            rc = fdpo_trainer_write_eval_summary(&tr, root);
            cJSON_Delete(root);
            if (!rc && !o->quiet) fdpo_log(FDPO_LOG_INFO, "eval (%zu sequences): loss %.4f", n_eval, eval_loss);
        }
    }
    free(items);
    packed_free(&p);
    int crc = fdpo_trainer_close(&tr, rc == 0);
    return rc ? rc : crc;
}
