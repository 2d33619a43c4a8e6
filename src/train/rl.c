/* Policy gradient with an f-divergence penalty (include/fdpo/rl.h, docs/rl.md). */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/rl.h"
#include "fdpo/train.h"
#include "fdpo/trainer.h"

int fdpo_rl_algo_parse(const char *name, fdpo_rl_algo *a) {
    if (!strcmp(name, "rloo")) { *a = FDPO_RL_RLOO; return 0; }
    if (!strcmp(name, "grpo")) { *a = FDPO_RL_GRPO; return 0; }
    return fdpo_error("--algo: unknown algorithm '%s' (expected rloo, grpo)", name);
}

int fdpo_rl_config_check(const fdpo_rl_config *c) {
    const char *why;
    if ((unsigned)c->algo > FDPO_RL_GRPO) return fdpo_error("--algo: unknown algorithm %d", (int)c->algo);
    if (!fdpo_divergence_admissible(&c->div, &why)) return fdpo_error("--divergence: %s", why);
    if (fdpo_beta_check(c->beta)) return -1;
    if (c->k < 2) return fdpo_error("--n: RLOO/GRPO need at least 2 samples per prompt (got %zu)", c->k);
    if (fdpo_grpo_eps_check(c->grpo_eps)) return -1;   /* also under rloo: a bad value is not silently ignored */
    return 0;
}

/* Samples packed with their prompt shared, as `fdpo dpo` packs a pair (include/fdpo/gpt2.h
 * branches): consecutive samples of the same prompt form one sequence, the prompt's first
 * P-1 tokens once in branch 0 at positions 0..P-2, then per sample a branch
 * [p[P-1], y[0..n-2]] at positions P-1.. whose targets are y[0..n-1] (nothing predicts past
 * the last token). The prompt's layers then run once for its k samples, and the fused head
 * runs on the completion rows only. Sample i's log-prob is the sum over its rows
 * [row0[i], row0[i] + n_comp[i]). Every completion must be non-empty. */
typedef struct {
    size_t n_seq, n_tok;
    size_t *seq_off;        /* [n + 1] */
    int32_t *tok, *tgt, *pos;
    uint8_t *branch;        /* NULL when no sequence holds two samples (plain causal attention) */
} rl_pack;

#define RL_MAX_BRANCHES 255 /* a branch tag is a byte, 0 the prompt's */

/* 1 if sample i can go into the sequence of sample j (the one before it), holding nb branches */
static int rl_shares_prompt(int32_t *const *prompt, const size_t *n_prompt, size_t i, size_t j, size_t nb) {
    return nb < RL_MAX_BRANCHES && n_prompt[i] == n_prompt[j] &&
           (prompt[i] == prompt[j] || !memcmp(prompt[i], prompt[j], n_prompt[i] * sizeof(int32_t)));
}

/* Tokens of the unshared packing of n samples: an upper bound of the shared one's */
static size_t rl_tokens_bound(size_t n, const size_t *n_prompt, const size_t *n_comp) {
    size_t t = 0;
    for (size_t i = 0; i < n; i++) t += n_prompt[i] - 1 + n_comp[i];
    return t;
}

/* Does sample i join sample i - 1's sequence in rl_pack_samples? With group > 0, only within
 * one prompt's group of that many samples: a rank's block starts a group, so it packs as the
 * one-process step does, and equal prompts of two groups (a prompt file's repeated line) on
 * either side of a rank boundary no longer shifted that rank's rows (LoRA dropout keys them) */
static int rl_joins(int32_t *const *prompt, const size_t *n_prompt, size_t i, size_t nb, size_t group) {
    return i > 0 && (group == 0 || i % group != 0) && rl_shares_prompt(prompt, n_prompt, i, i - 1, nb);
}

/* Rows rl_pack_samples gives n samples (the shared packing's) */
static size_t rl_packed_rows(size_t n, int32_t *const *prompt, const size_t *n_prompt, const size_t *n_comp,
                             size_t group) {
    size_t t = 0, nb = 0;
    for (size_t i = 0; i < n; i++) {
        if (rl_joins(prompt, n_prompt, i, nb, group)) nb++;
        else { t += n_prompt[i] - 1; nb = 1; }
        t += n_comp[i];
    }
    return t;
}

static void rl_pack_alloc(rl_pack *pk, size_t n, size_t tokens) {
    pk->seq_off = fdpo_malloc((n + 1) * sizeof(size_t));
    pk->tok = fdpo_malloc((tokens ? tokens : 1) * sizeof(int32_t));
    pk->tgt = fdpo_malloc((tokens ? tokens : 1) * sizeof(int32_t));
    pk->pos = fdpo_malloc((tokens ? tokens : 1) * sizeof(int32_t));
    pk->branch = fdpo_malloc(tokens ? tokens : 1);
}

static void rl_pack_free(rl_pack *pk) { free(pk->seq_off); free(pk->tok); free(pk->tgt); free(pk->pos); free(pk->branch); }

/* Fill pk (allocated for at least rl_tokens_bound tokens and n sequences) with n samples;
 * row0[i] gets sample i's first completion row. Returns the batch over pk. */
static fdpo_batch rl_pack_samples(rl_pack *pk, size_t n, int32_t *const *prompt, const size_t *n_prompt,
                                  int32_t *const *comp, const size_t *n_comp, size_t group, size_t *row0) {
    size_t t = 0, B = 0, nb = 0;
    int shared = 0;
    for (size_t i = 0; i < n; i++) {
        const size_t P = n_prompt[i];
        if (rl_joins(prompt, n_prompt, i, nb, group)) {
            shared = 1;
        } else {   /* a new sequence: the prompt but its last token, in branch 0 */
            pk->seq_off[B++] = t;
            nb = 0;
            for (size_t j = 0; j + 1 < P; j++, t++) {
                pk->tok[t] = prompt[i][j]; pk->tgt[t] = -1; pk->pos[t] = (int32_t)j; pk->branch[t] = 0;
            }
        }
        nb++;
        row0[i] = t;
        for (size_t j = 0; j < n_comp[i]; j++, t++) {
            pk->tok[t] = j == 0 ? prompt[i][P - 1] : comp[i][j - 1];
            pk->tgt[t] = comp[i][j];
            pk->pos[t] = (int32_t)(P - 1 + j);
            pk->branch[t] = (uint8_t)nb;
        }
    }
    pk->seq_off[B] = t;
    pk->n_seq = B;
    pk->n_tok = t;
    fdpo_batch b = {.n_seq = B, .n_tokens = t, .seq_offset = pk->seq_off, .tokens = pk->tok, .targets = pk->tgt,
                    .pos = pk->pos, .branch = shared ? pk->branch : NULL, .fused_head = 1};
    return b;   /* fused head: the target (completion) rows only */
}

/* The batch fdpo_rl_step runs for n samples (c->k to a group), packed into pk (allocated by
 * the caller for rl_tokens_bound tokens) with row0[i] sample i's first completion row and
 * *tokens the completion tokens; fdpo_rl_ref_logp scores the reference on this same batch. */
static int rl_step_batch(const fdpo_gpt2 *m, const fdpo_rl_config *c, size_t n, int32_t *const *prompt,
                         const size_t *n_prompt, int32_t *const *comp, const size_t *n_comp, rl_pack *pk,
                         size_t *row0, size_t *tokens, fdpo_batch *b) {
    *tokens = 0;
    for (size_t i = 0; i < n; i++) *tokens += n_comp[i];
    *b = rl_pack_samples(pk, n, prompt, n_prompt, comp, n_comp, c->k, row0);
    /* The completion rows' logits kept for the backward when they fit (no recompute: at
     * GPT-2 124M the recompute is 2 x 1024 x 50257 x 768 = 79 GFLOP a step, ~9 % of its
     * FLOPs), with a bigger budget than the fused head's general one (a 124M step's 1024
     * completion rows take 206 MB); the chunked head recomputes beyond, so memory stays
     * O(rows x chunk) for large steps. GPT-2 keeps them in the fused head
     * (head_keep_max_bytes; only a model with gradients or adapters keeps, and keeping
     * changes no log-prob); Llama, whose fused backward always recomputes, as the unfused
     * head's logits on the target rows (skip_unweighted). */
    const size_t max_bytes = c->logits_max_bytes ? c->logits_max_bytes : FDPO_RL_LOGITS_MAX_BYTES;
    if (m->config.arch == FDPO_ARCH_GPT2) b->head_keep_max_bytes = max_bytes;
    else b->fused_head = *tokens * m->config.vocab_size * sizeof(float) > max_bytes;
    b->skip_unweighted = 1;
    return fdpo_gpt2_check_batch(m, b);
}

/* the checks of fdpo_rl_step's samples that fdpo_rl_ref_logp shares */
static int rl_samples_check(const fdpo_rl_config *c, size_t n, const size_t *n_prompt, const size_t *n_comp) {
    if (n == 0 || n % c->k) return fdpo_error("rl step: %zu samples is not a whole number of groups of %zu", n, c->k);
    for (size_t i = 0; i < n; i++)
        if (n_prompt[i] < 1 || n_comp[i] < 1) return fdpo_error("rl step: sample %zu has an empty prompt or completion", i);
    return 0;
}

/* sum[i] = the sum over sample i's completion rows of the forward's token log-probs, in
 * double (a float sum made l = float(S) - S at pi = pi_ref: advantages of rounding noise,
 * which Adam turned into a full-size step) */
/* sum [i] = sample i's completion log-prob. A group's samples share their prompt in the
 * packed layout (rl_pack_samples), so equal completions sit at different places of the
 * batch; a sample equal to an earlier one of its group (k samples; prompt and completion)
 * takes that one's sum.
 * It is the same sequence, and GRPO divides its group's differences by their spread: on
 * CPUs whose GEMMs round equal rows at different places apart (oneDNN's AVX2 kernels),
 * identical completions got advantages of +-6e-5 and a gradient, not 0. Not under LoRA
 * dropout, whose masks follow the rows: there equal samples have sums of their own. */
static void rl_sample_sums(const fdpo_gpt2 *m, const float *tlp, size_t n, size_t k, const size_t *row0,
                           int32_t *const *prompt, const size_t *n_prompt, int32_t *const *comp, const size_t *n_comp,
                           double *sum) {
    /* LoRA dropout masks by row: equal samples are then different functions of the weights */
    const int own_rows = m->lora && m->lora->enabled && m->lora->training && m->lora->dropout > 0;
    for (size_t i = 0; i < n; i++) {   /* a sequence may hold several samples: sum each one's rows */
        size_t j = own_rows ? i : i - i % k;
        while (j < i && !(n_comp[j] == n_comp[i] && !memcmp(comp[j], comp[i], n_comp[i] * sizeof(int32_t)) &&
                          rl_shares_prompt(prompt, n_prompt, i, j, 0)))
            j++;
        if (j < i) {
            sum[i] = sum[j];
            continue;
        }
        double s = 0;
        for (size_t t = row0[i]; t < row0[i] + n_comp[i]; t++) s += tlp[t];
        sum[i] = s;
    }
}

int fdpo_rl_ref_logp(fdpo_gpt2 *ref, const fdpo_rl_config *c, size_t n, int32_t *const *prompt,
                     const size_t *n_prompt, int32_t *const *comp, const size_t *n_comp, double *ref_logp) {
    if (fdpo_rl_config_check(c) || rl_samples_check(c, n, n_prompt, n_comp)) return -1;
    rl_pack pk;
    rl_pack_alloc(&pk, n, rl_tokens_bound(n, n_prompt, n_comp));
    size_t *row0 = fdpo_malloc(n * sizeof(size_t)), tokens;
    fdpo_batch b;
    int rc = rl_step_batch(ref, c, n, prompt, n_prompt, comp, n_comp, &pk, row0, &tokens, &b);
    float *tlp = fdpo_malloc((b.n_tokens ? b.n_tokens : 1) * sizeof(float));
    int lora_training = ref->lora ? ref->lora->training : 0;
    if (ref->lora) ref->lora->training = 0;   /* scoring is evaluation: no adapter dropout */
    if (rc == 0) rc = fdpo_gpt2_forward(ref, &b, tlp, NULL);
    if (ref->lora) ref->lora->training = lora_training;
    if (rc == 0) rl_sample_sums(ref, tlp, n, c->k, row0, prompt, n_prompt, comp, n_comp, ref_logp);
    rl_pack_free(&pk);
    free(row0); free(tlp);
    return rc;
}

int fdpo_rl_step(fdpo_gpt2 *m, const fdpo_rl_config *c, size_t n, size_t n_total, int32_t *const *prompt,
                 const size_t *n_prompt, int32_t *const *comp, const size_t *n_comp, const double *reward,
                 const double *ref_logp, double *adv_out, fdpo_rl_metrics *out) {
    if (fdpo_rl_config_check(c) || rl_samples_check(c, n, n_prompt, n_comp)) return -1;
    if (n_total < n) return fdpo_error("rl step: %zu samples in a step of %zu", n, n_total);
    rl_pack pk;
    rl_pack_alloc(&pk, n, rl_tokens_bound(n, n_prompt, n_comp));
    size_t *row0 = fdpo_malloc(n * sizeof(size_t)), tokens;
    fdpo_batch b;
    int rc = rl_step_batch(m, c, n, prompt, n_prompt, comp, n_comp, &pk, row0, &tokens, &b);
    const size_t N = b.n_tokens;
    float *tlp = fdpo_malloc((N ? N : 1) * sizeof(float));
    double *slp = fdpo_malloc(n * sizeof(double));
    float *dtok = fdpo_calloc(N ? N : 1, sizeof(float));   /* 0 on the prompt rows */
    /* shaped: the logged r - beta f'(u); pg: the one the advantages weigh grad log pi by (e^64
     * cap, factored out of a group that passes it: fdpo_pg_group_advantages); lr: l per sample */
    double *shaped = fdpo_malloc(n * sizeof(double)), *pg = fdpo_malloc(n * sizeof(double)), *adv = fdpo_malloc(n * sizeof(double));
    double *lr = fdpo_malloc(n * sizeof(double));
    if (rc == 0) rc = fdpo_gpt2_forward(m, &b, tlp, NULL);
    if (rc == 0) {
        rl_sample_sums(m, tlp, n, c->k, row0, prompt, n_prompt, comp, n_comp, slp);
        /* every mean is over the step's n_total samples: the ranks' shares add up to it */
        const double inv = 1.0 / (double)n_total;
        memset(out, 0, sizeof *out);
        for (size_t i = 0; i < n; i++) {
            double l = slp[i] - ref_logp[i];
            shaped[i] = fdpo_shaped_reward(&c->div, c->beta, reward[i], l);
            lr[i] = l;
            out->scores += reward[i] * inv;
            out->kl += l * inv;
            out->fdiv += fdpo_f_over_u_log(&c->div, l) * inv;   /* D_f(pi || pi_ref) = E_pi[f(u)/u] */
            out->entropy -= slp[i] * inv;
            out->shaped += shaped[i] * inv;
        }
        for (size_t g = 0; g < n / c->k; g++) {
            fdpo_pg_group_advantages(&c->div, c->beta, reward + g * c->k, lr + g * c->k, c->k, c->algo != FDPO_RL_RLOO,
                                     c->grpo_eps, pg + g * c->k, adv + g * c->k);
        }
        for (size_t i = 0; i < n; i++) {
            out->loss -= adv[i] * slp[i] * inv;
            const float d = (float)(-adv[i] * inv); /* dLoss/dlogp_i, on each of its tokens' log-probs */
            for (size_t t = row0[i]; t < row0[i] + n_comp[i]; t++) dtok[t] = d;
            out->advantage_sq += adv[i] * adv[i] * inv;
            if (adv_out) adv_out[i] = adv[i];
        }
        out->advantage_std = sqrt(out->advantage_sq);
        out->samples = n;
        out->tokens = tokens;
        rc = fdpo_gpt2_backward(m, dtok);
    }
    rl_pack_free(&pk);
    free(row0); free(tlp); free(slp); free(dtok); free(shaped); free(pg); free(adv); free(lr);
    return rc;
}

/* ---- a whole run ---- */

/* the most sequences one sampling batch decodes together: the key/value cache is
 * batch x (prompt + new tokens) x 2C per layer (124M, 80 tokens: 6 MB a sequence) */
#define RL_SAMPLE_BATCH_MAX 64

/* the ranks' shares of one step's means (fdpo_rl_step) summed into the step's */
static int rl_metrics_sum(fdpo_rl_metrics *m) {
    double v[9] = {m->loss, m->scores, m->kl, m->entropy, m->shaped, m->advantage_sq, (double)m->samples,
                   (double)m->tokens, m->fdiv};
    if (fdpo_dist_sum_f64(v, 9)) return -1;
    m->loss = v[0]; m->scores = v[1]; m->kl = v[2]; m->entropy = v[3]; m->shaped = v[4];
    m->advantage_sq = v[5]; m->advantage_std = sqrt(v[5]);
    m->samples = (size_t)v[6]; m->tokens = (size_t)v[7]; m->fdiv = v[8];
    return 0;
}

/* fdpo_samples_logp: the training forward (fused head, completion rows only, each prompt
 * shared by its consecutive samples: rl_pack_samples) over micro-batches of consecutive
 * samples holding at most SCORE_TOKENS packed tokens (one sequence at least). The split
 * depends on the samples alone, so each sample is scored in the same batch whatever the
 * number of ranks (the ranks take contiguous runs of micro-batches) and its log-prob is the
 * same bits; the budget bounds the activations (124M: ~0.7 MB a token). */
#define SCORE_TOKENS 1024

/* fdpo rl's step on a rank: micro-batches of consecutive whole groups holding at most
 * SCORE_TOKENS packed rows each (one group at least: its samples' advantages need them all),
 * first_group[0..n] their bounds among groups [g0, g1). Each is scored by the reference
 * (fdpo_rl_ref_logp) and trained (fdpo_rl_step) as the same batch, so with equal weights
 * l = log pi - log pi_ref is exactly 0: when the reference had its own packing and split, l
 * was rounding noise that GRPO's std normalisation and Adam made a full lr step. The budget
 * bounds both passes' activations, as the scoring's alone did. Returns n. */
static size_t rl_micro_batches(size_t g0, size_t g1, size_t k, int32_t *const *prompt, const size_t *n_prompt,
                               const size_t *n_comp, size_t *first_group) {
    size_t n = 0, rows = 0;
    for (size_t g = g0; g < g1; g++) {
        size_t r = rl_packed_rows(k, prompt + g * k, n_prompt + g * k, n_comp + g * k, k);
        if (g == g0 || rows + r > SCORE_TOKENS) { first_group[n++] = g; rows = 0; }
        rows += r;
    }
    first_group[n] = g1;
    return n;
}

/* the shares of one step's means of two calls of fdpo_rl_step, summed into *sum */
static void rl_metrics_add(fdpo_rl_metrics *sum, const fdpo_rl_metrics *x) {
    sum->loss += x->loss; sum->scores += x->scores; sum->kl += x->kl; sum->entropy += x->entropy;
    sum->shaped += x->shaped; sum->advantage_sq += x->advantage_sq; sum->fdiv += x->fdiv;
    sum->advantage_std = sqrt(sum->advantage_sq);
    sum->samples += x->samples; sum->tokens += x->tokens;
}

int fdpo_samples_logp(fdpo_gpt2 *m, int32_t *const *ids, const size_t *lens, const fdpo_sample *s, size_t n,
                      double *logp) {
    memset(logp, 0, n * sizeof *logp);
    const size_t n1 = n ? n : 1;
    int32_t **pr = fdpo_malloc(n1 * sizeof *pr), **co = fdpo_malloc(n1 * sizeof *co);
    size_t *np = fdpo_malloc(n1 * sizeof *np), *nc = fdpo_malloc(n1 * sizeof *nc), *idx = fdpo_malloc(n1 * sizeof *idx);
    size_t *mb = fdpo_malloc((n + 1) * sizeof *mb), n_mb = 0, cnt = 0, tokens = 0, nb = 0, max_tokens = 0;
    /* the non-empty samples (an empty completion has log-prob 0), in order; micro-batch j is
     * packed samples [mb[j], mb[j + 1]), split as rl_pack_samples will pack them */
    mb[0] = 0;
    for (size_t i = 0; i < n; i++) {
        if (!s[i].n_tokens) continue;
        size_t q = cnt++;
        idx[q] = i;
        pr[q] = ids[s[i].prompt_index]; np[q] = lens[s[i].prompt_index];
        co[q] = s[i].tokens; nc[q] = s[i].n_tokens;
        int joins = q > mb[n_mb] && rl_shares_prompt(pr, np, q, q - 1, nb) && tokens + nc[q] <= SCORE_TOKENS;
        size_t cost = joins ? nc[q] : np[q] - 1 + nc[q];
        if (!joins && q > mb[n_mb] && tokens + cost > SCORE_TOKENS) { mb[++n_mb] = q; tokens = 0; }
        nb = joins ? nb + 1 : 1;
        tokens += cost;
        if (tokens > max_tokens) max_tokens = tokens;
    }
    if (cnt > 0) mb[++n_mb] = cnt;
    size_t b, e;
    fdpo_dist_shard(n_mb, &b, &e);
    rl_pack pk;
    rl_pack_alloc(&pk, cnt, max_tokens);
    size_t *row0 = fdpo_malloc(n1 * sizeof *row0);
    float *tlp = fdpo_malloc((max_tokens ? max_tokens : 1) * sizeof *tlp);
    int rc = 0, lora_training = m->lora ? m->lora->training : 0;
    if (m->lora) m->lora->training = 0;   /* scoring is evaluation: no adapter dropout */
    for (size_t j = b; rc == 0 && j < e; j++) {
        const size_t first = mb[j], k = mb[j + 1] - mb[j];
        fdpo_batch batch = rl_pack_samples(&pk, k, pr + first, np + first, co + first, nc + first, 0, row0);
        rc = fdpo_gpt2_forward(m, &batch, tlp, NULL);
        for (size_t q = 0; rc == 0 && q < k; q++) {
            double sum = 0;   /* in double, as the decoder's scorer sums */
            for (size_t t = row0[q]; t < row0[q] + nc[first + q]; t++) sum += tlp[t];
            logp[idx[first + q]] = sum;
        }
    }
    if (m->lora) m->lora->training = lora_training;
    rl_pack_free(&pk);
    free(pr); free(co); free(np); free(nc); free(idx); free(mb); free(row0); free(tlp);
    /* each rank scored its micro-batches and the blocks are summed (x + 0 is exact): every
     * rank gets the single process's numbers; the call is collective */
    rc = fdpo_dist_all_ok(rc);
    return rc ? rc : fdpo_dist_sum_f64(logp, n);
}

uint64_t fdpo_prompts_hash(char *const *prompts, size_t n) {
    uint64_t h = FDPO_HASH_INIT;
    for (size_t i = 0; i < n; i++) h = fdpo_hash64(h, prompts[i], strlen(prompts[i]) + 1);
    return h;
}

void fdpo_sample_config_settings(const fdpo_sample_config *c, const fdpo_reward_options *r, fdpo_settings *s) {
    fdpo_settings_num(s, "temperature", c->temperature, 1);
    fdpo_settings_int(s, "top-k", (long long)c->top_k, 1);
    fdpo_settings_num(s, "top-p", c->top_p, 1);
    fdpo_settings_int(s, "max-new-tokens", (long long)c->max_new_tokens, 1);
    fdpo_settings_str(s, "stop", c->stop, 1);
    fdpo_settings_path(s, "lexicon", r->lexicon, 1);
    fdpo_settings_num(s, "reward-timeout", r->timeout_s, 0);
}

void fdpo_rl_run_opts_default(fdpo_rl_run_opts *o) {
    memset(o, 0, sizeof *o);
    fdpo_train_opts_default(&o->train);
    o->train.lr = 1e-5; o->train.schedule = "constant"; o->train.steps = 100;
    /* batches are sampled groups: the data-file and model-shape fields only meet the shared checks */
    o->train.n_layer = o->train.n_head = o->train.n_embd = o->train.n_positions = o->train.seq_len = 1;
    o->train.batch_size = o->train.grad_accum = 1;
    o->train.epochs = 0; o->train.val_fraction = 0; o->train.eval_every = 0; o->train.shuffle = 0;
    o->reward_opts.timeout_s = 60;
    o->rl = (fdpo_rl_config){.algo = FDPO_RL_RLOO, .div = {.kind = FDPO_DIV_RKL}, .beta = 0.05, .k = 4, .grpo_eps = 1e-4};
    o->prompts_per_step = 8;
    o->sample = (fdpo_sample_config){.temperature = 1, .top_p = 1, .max_new_tokens = 32, .seed = (uint64_t)o->train.seed, .batch = 8};   /* seed: not read, train.seed's is */
}

void fdpo_rl_run_opts_settings(const fdpo_rl_run_opts *o, fdpo_settings *s) {
    char div[64];
    fdpo_divergence_name(&o->rl.div, div, sizeof div);
    fdpo_settings_path(s, "model", o->model, 1);
    fdpo_settings_path(s, "ref", o->ref, 1);
    fdpo_settings_path(s, "data", o->prompts, 1);
    fdpo_settings_reward_spec(s, "reward", o->reward, 1);
    fdpo_settings_str(s, "algo", o->rl.algo == FDPO_RL_RLOO ? "rloo" : "grpo", 1);
    fdpo_settings_str(s, "divergence", div, 1);
    fdpo_settings_num(s, "beta", o->rl.beta, 1);
    fdpo_settings_int(s, "n", (long long)o->rl.k, 1);
    fdpo_settings_int(s, "prompts-per-step", (long long)o->prompts_per_step, 1);
    fdpo_settings_num(s, "grpo-eps", o->rl.grpo_eps, 1);
    fdpo_sample_config_settings(&o->sample, &o->reward_opts, s);
}

/* The trainer options the run uses: the policy is --model (or OUT's checkpoint on --resume),
 * the items are the prompts, taken in file order, prompts_per_step per step. */
static fdpo_train_opts rl_train_opts(const fdpo_rl_run_opts *o) {
    return fdpo_train_opts_over_prompts(&o->train, o->model, o->prompts, o->prompts_per_step, "--prompts-per-step");
}

/* RLOO and GRPO score a sample against the others of its group: greedy decoding gives the
 * group one text, every advantage 0, and the run "trained" nothing (exit 0). vocab: the
 * policy's (a top-p at or below 1/V is greedy too), 0 before it is read. */
static int rl_distinct_check(const fdpo_rl_run_opts *o, size_t vocab) {
    return fdpo_sample_distinct_check(&o->sample, (long)o->rl.k, vocab, "RLOO/GRPO compare the --n completions of a prompt",
                                      "every advantage would be 0 and nothing would train");
}

int fdpo_rl_run_opts_check(const fdpo_rl_run_opts *o) {
    if (!o->model) return fdpo_error("--model: required (the policy to train)");
    if (!o->prompts) return fdpo_error("--data: required (prompt file)");
    if (!o->reward) return fdpo_error("--reward: required (afinn, length, cmd:PROG)");
    if (!o->train.out) return fdpo_error("--out: required (checkpoint directory)");
    if (fdpo_path_record_check("--model", o->model) || fdpo_path_record_check("--ref", o->ref) || fdpo_path_record_check("--data", o->prompts) ||
        fdpo_path_record_check("--lexicon", o->reward_opts.lexicon) || fdpo_reward_spec_path_check("--reward", o->reward))
        return -1;
    if (o->train.steps < 1) return fdpo_error("--steps: must be >= 1 (got %ld)", o->train.steps);
    if (o->prompts_per_step < 1) return fdpo_error("--prompts-per-step: must be >= 1 (got %ld)", o->prompts_per_step);
    /* the shared options (--lr, --seed, --log-every, --lora-*, ...) as sft and dpo check them */
    const fdpo_train_opts t = rl_train_opts(o);
    if (fdpo_train_opts_check(&t)) return -1;
    if (fdpo_rl_config_check(&o->rl) || fdpo_sample_config_check(&o->sample)) return -1;
    if (rl_distinct_check(o, 0)) return -1;
    if (fdpo_train_out_ref_check(o->train.out, o->ref, o->model) || fdpo_train_out_reward_check(o->train.out, o->reward))
        return -1;
    /* not on --resume: a run saved before this rule resumes with its saved --lexicon */
    if (!o->train.resume && fdpo_reward_lexicon_check(o->reward_opts.lexicon, &o->reward, 1)) return -1;
    return 0;
}

int fdpo_rl_train(const fdpo_rl_run_opts *o) {
    if (fdpo_rl_run_opts_check(o)) return -1;
    /* an fdpo_trainer run whose items are the prompts */
    fdpo_train_opts t = rl_train_opts(o);
    fdpo_prompt_run pr;
    int rc = fdpo_prompt_run_open(&pr, &t, o->prompts, o->reward, &o->reward_opts, o->ref, o->model);
    fdpo_gpt2 *ref = pr.ref;   /* or the policy itself (pr.ref_is_base), once the trainer opens */
    fdpo_settings extra = {0};
    fdpo_rl_run_opts_settings(o, &extra);
    fdpo_trainer tr;
    int tr_ok = 0;
    if (!rc) tr_ok = (rc = fdpo_trainer_open(&tr, &t, "rl", pr.tok, pr.n_prompts, fdpo_prompts_hash(pr.prompts, pr.n_prompts), &extra)) == 0;
    fdpo_settings_free(&extra);
    if (!rc && pr.ref_is_base) ref = tr.model;
    else if (ref) ref->params_frozen = 1;   /* never written: --precision bf16 converts it once per run */
    if (!rc && ref->config.vocab_size != tr.model->config.vocab_size)
        rc = fdpo_error("--ref: vocabulary %zu != the policy's %zu", ref->config.vocab_size, tr.model->config.vocab_size);
    if (!rc) rc = fdpo_prompts_check_fit(pr.tok, pr.prompts, pr.prompt_lines, pr.n_prompts, &tr.model->config,
                                         ref != tr.model ? &ref->config : NULL, o->sample.max_new_tokens, o->prompts);
    if (!rc) rc = rl_distinct_check(o, tr.model->config.vocab_size);
    /* the gradient, the shaped reward and the penalty use log pi of the policy itself: from a
     * tempered or truncated sampler they are off-policy without a correction (TRL instead
     * trains the tempered policy, logits / T). A --top-k of the vocabulary or more keeps every
     * token: the sampler does not truncate (sample.c) */
    const fdpo_sample_config *sc = &o->sample;
    if (!rc && (sc->temperature != 1 || (sc->top_k > 0 && (size_t)sc->top_k < tr.model->config.vocab_size) ||
                sc->top_p < 1))
        fdpo_log(FDPO_LOG_WARN, "--temperature/--top-k/--top-p: the samples do not come from the policy being trained, "
                 "and the policy gradient and the divergence penalty use its untempered log-probs: the updates are "
                 "biased (docs/rl.md)");
    fdpo_gpt2 *policy = tr_ok ? tr.model : NULL;
    /* one decoder for the whole run (its cache, buffers and bf16 packed weights; re-packed
     * in place at each step's sampling, after the optimizer step before it) */
    fdpo_sampler *sampler = policy ? fdpo_sampler_create(policy) : NULL;
    tr.progress.phase = "rl";
    /* a step takes each prompt at most once (fdpo_train_step_items) */
    const size_t P = tr_ok ? tr.step_items : 1, k = o->rl.k;
    /* a step's P x k samples beyond the machine's memory ended in the out-of-memory handler's
     * line, naming no flag (P is known once the prompts are read) */
    if (!rc) rc = fdpo_samples_count_check("--prompts-per-step", P, k);
    const size_t N = rc ? 0 : P * k;
    char **ps = fdpo_malloc(P * sizeof *ps), **pp = fdpo_malloc(N * sizeof *pp), **cc = fdpo_malloc(N * sizeof *cc);
    size_t *np = fdpo_malloc(N * sizeof(size_t)), *ny = fdpo_malloc(N * sizeof(size_t));
    int32_t **pi = fdpo_malloc(N * sizeof *pi), **yi = fdpo_malloc(N * sizeof *yi);
    double *r = fdpo_malloc(N * sizeof(double)), *lref = fdpo_malloc(N * sizeof(double));
    size_t *mb = fdpo_malloc((P + 1) * sizeof *mb);   /* a step's micro-batches (rl_micro_batches) */
    size_t pb, pe;   /* this rank's prompts of each step (fdpo_sample_and_score_ranks samples the same block) */
    fdpo_dist_shard(P, &pb, &pe);
    /* all of a step's samples on this rank decode together (one weight read per token for all) */
    fdpo_sample_config sample = o->sample;
    sample.seed = (uint64_t)o->train.seed;   /* the one seed (rl.h): train.seed, the run's recorded "seed" setting */
    sample.batch = (pe - pb) * k < RL_SAMPLE_BATCH_MAX ? (pe - pb) * k : RL_SAMPLE_BATCH_MAX;
    if (sample.batch < 1) sample.batch = 1;
    while (rc == 0 && !fdpo_trainer_done(&tr)) {
        const long step = (long)tr.state.step;   /* 0-based; the sampling seed is (seed, step) */
        fdpo_trainer_begin_step(&tr);
        for (size_t i = 0; i < P; i++) ps[i] = pr.prompts[fdpo_trainer_next_item(&tr)];
        int32_t **ids = NULL;
        size_t *lens = NULL;
        fdpo_sample *s = NULL;
        double sec[2] = {0, 0}, t_score = fdpo_now(), t_train = 0;
        char what[32];   /* the step as its metrics line counts it */
        snprintf(what, sizeof what, "step %ld", step + 1);
        rc = fdpo_sample_and_score_ranks(sampler, pr.tok, &sample, what, step, ps, P, k, pr.reward, &ids, &lens, &s, pp, cc, r, sec);
        t_score = fdpo_now();
        fdpo_rl_metrics m;
        memset(&m, 0, sizeof m);
        double eos = 0, len = 0;
        size_t my_tokens = 0;   /* this rank's: fdpo_trainer_step sums them over the ranks */
        if (!rc) {   /* sampled: every rank holds every sample and reward */
            for (size_t i = 0; i < N; i++) {
                pi[i] = ids[s[i].prompt_index]; np[i] = lens[s[i].prompt_index];
                yi[i] = s[i].tokens; ny[i] = s[i].n_tokens;
                eos += s[i].finish == FDPO_FINISH_EOT;
                len += (double)s[i].n_completion;
            }
            /* under MPI each rank scores, and computes the loss and gradient of, its block of
             * prompts (the block it sampled; a prompt's k samples stay together, so the
             * per-prompt baselines are the single process's), in micro-batches that the
             * reference and the policy run alike (rl_micro_batches) */
            const size_t n_mb = rl_micro_batches(pb, pe, k, pi, np, ny, mb);
            int lora_on = pr.ref_is_base ? fdpo_lora_set_enabled(policy, 0) : 0;
            for (size_t j = 0; rc == 0 && j < n_mb; j++) {
                const size_t first = mb[j] * k, cnt = (mb[j + 1] - mb[j]) * k;
                rc = fdpo_rl_ref_logp(ref, &o->rl, cnt, pi + first, np + first, yi + first, ny + first, lref + first);
            }
            if (pr.ref_is_base) fdpo_lora_set_enabled(policy, lora_on);
            sec[1] += fdpo_now() - t_score;
            t_train = fdpo_now();
            /* each micro-batch's loss and gradient scaled by 1/N of the whole step, accumulated:
             * fdpo_trainer_step's sum over the ranks is the step's gradient */
            for (size_t j = 0; rc == 0 && j < n_mb; j++) {
                const size_t first = mb[j] * k, cnt = (mb[j + 1] - mb[j]) * k;
                fdpo_rl_metrics part;
                /* LoRA dropout: the rows named by their place in the one-process packing of the step */
                fdpo_lora_set_rows(policy, rl_packed_rows(first, pi, np, ny, k));
                fdpo_dist_arm_overlap(j + 1 == n_mb);   /* --allreduce-overlap: the step's last backward here */
                rc = fdpo_rl_step(policy, &o->rl, cnt, N, pi + first, np + first, yi + first, ny + first, r + first,
                                  lref + first, NULL, &part);
                if (rc == 0) rl_metrics_add(&m, &part);
            }
            if (!rc) rc = fdpo_dist_overlap_backward_done();   /* every rank, before the collectives below */
            rc = fdpo_dist_all_ok(rc);
            my_tokens = m.tokens;
            if (!rc && fdpo_dist_size() > 1) rc = rl_metrics_sum(&m);
            double scores = 0;   /* every rank holds every reward: their mean in one order on any rank count */
            for (size_t i = 0; i < N; i++) scores += r[i];
            m.scores = scores / (double)N;
        }
        if (!rc) rc = fdpo_trainer_step(&tr, my_tokens);
        if (!rc) t_train = fdpo_now() - t_train;
        if (!rc && fdpo_trainer_want_log(&tr)) {
            fdpo_trainer_metrics_begin(&tr, m.loss);
            fdpo_metrics *mw = &tr.metrics;
            fdpo_metrics_add(mw, "objective/scores", m.scores);
            fdpo_metrics_add(mw, "objective/kl", m.kl);
            fdpo_metrics_add(mw, "objective/entropy", m.entropy);
            /* u from the training forward's log pi, as the shaped reward and objective/kl take it */
            fdpo_metrics_add(mw, "objective/f_divergence", m.fdiv);
            fdpo_metrics_add(mw, "objective/non_score_reward", -o->rl.beta * m.fdiv);
            fdpo_metrics_add(mw, "objective/rlhf_reward", m.scores - o->rl.beta * m.fdiv);
            fdpo_metrics_add(mw, "objective/shaped_reward", m.shaped);
            fdpo_metrics_add(mw, "policy/advantage_std", m.advantage_std);
            fdpo_metrics_add(mw, "val/contain_eos_token", eos / (double)N);
            fdpo_metrics_add(mw, "val/num_completion_tokens", len / (double)N);
            fdpo_metrics_add(mw, "time/sampling", sec[0]);
            fdpo_metrics_add(mw, "time/scoring", sec[1]);
            fdpo_metrics_add(mw, "time/training", t_train);
            rc = fdpo_metrics_end(mw);
            char extra_text[96];
            snprintf(extra_text, sizeof extra_text, "reward %.4g kl %.4g", m.scores, m.kl);
            fdpo_trainer_progress(&tr, m.loss, extra_text);
        }
        if (s) fdpo_samples_free(s, N);
        if (ids) fdpo_free_ids(ids, lens, P);
        if (!rc) rc = fdpo_trainer_maybe_save(&tr);
    }
    fdpo_sampler_free(sampler);
    if (tr_ok && fdpo_trainer_close(&tr, rc == 0)) rc = -1;
    free(ps); free(pp); free(cc); free(np); free(ny); free(pi); free(yi); free(r); free(lref); free(mb);
    fdpo_prompt_run_close(&pr, &t, tr_ok);
    return rc;
}
