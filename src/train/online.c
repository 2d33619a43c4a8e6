/* Online and iterative f-DPO rounds (include/fdpo/online.h). Each round composes the existing
 * pieces: fdpo_generate (sampling), fdpo_reward_score, preference JSONL, fdpo_dpo_train. */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/io.h"
#include "fdpo/online.h"
#include "fdpo/pairs.h"
#include "fdpo/rl.h"
#include "fdpo/train.h"
#include "fdpo/trainer.h"

static char *round_path(const char *out, long k, const char *suffix) {
    char name[64];
    snprintf(name, sizeof name, "round-%ld%s", k, suffix);
    return fdpo_path_join(out, name);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Per-round statistics of the sampled completions (TRL OnlineDPO / RLOO names). */
typedef struct {
    double scores, kl, entropy, eos, length, pairs, reward_gap;
} round_stats;

/* log pi and log pi_ref of each sample's tokens: l = sequence log-ratio */
static int score_samples(const fdpo_gpt2 *policy, const fdpo_gpt2 *ref, int32_t *const *ids, const size_t *lens,
                         const fdpo_sample *s, size_t N, double *logp, double *logp_ref) {
    size_t max_len = 0;
    for (size_t i = 0; i < N; i++) if (lens[s[i].prompt_index] + s[i].n_tokens > max_len) max_len = lens[s[i].prompt_index] + s[i].n_tokens;
    fdpo_decoder *pd = fdpo_decoder_create(policy, 1, max_len), *rd = fdpo_decoder_create(ref, 1, max_len);
    int rc = pd && rd ? 0 : -1;
    /* under MPI each rank scores its block and the blocks are summed (x + 0 is exact) */
    size_t b, e;
    fdpo_dist_shard(N, &b, &e);
    memset(logp, 0, N * sizeof *logp);
    memset(logp_ref, 0, N * sizeof *logp_ref);
    for (size_t i = b; rc == 0 && i < e; i++) {
        fdpo_seq_score sc = {0};
        rc = fdpo_score_sequence(pd, rd, ids[s[i].prompt_index], lens[s[i].prompt_index], s[i].tokens, s[i].n_tokens, NULL, 0, &sc);
        logp[i] = sc.logp;
        logp_ref[i] = sc.logp_ref;
    }
    if (pd) fdpo_decoder_free(pd);
    if (rd) fdpo_decoder_free(rd);
    if (!rc) rc = fdpo_dist_sum_f64(logp, N);
    if (!rc) rc = fdpo_dist_sum_f64(logp_ref, N);
    return rc;
}

/* Sample, score, pair: writes pairs_path; fills st. */
static int make_round_pairs(const fdpo_online_opts *o, long k, const char *policy_dir, const char *ref_dir,
                            char **prompts, size_t n_prompts, fdpo_reward *reward, const char *pairs_path,
                            round_stats *st) {
    fdpo_gpt2 *policy = fdpo_checkpoint_load_model(policy_dir), *ref = NULL;
    fdpo_tokenizer *tok = policy ? fdpo_tokenizer_load_dir(policy_dir) : NULL;
    if (policy && tok) ref = fdpo_checkpoint_load_model(ref_dir);
    if (!policy || !tok || !ref) {
        if (tok) fdpo_tokenizer_free(tok);
        if (policy) fdpo_gpt2_free(policy);
        return fdpo_error_context("round %ld: loading %s", k, !policy || !tok ? policy_dir : ref_dir);
    }
    size_t P = (size_t)o->prompts_per_round, N = P * (size_t)o->n;
    char **ps = fdpo_malloc(P * sizeof *ps);
    for (size_t i = 0; i < P; i++) ps[i] = prompts[((size_t)k * P + i) % n_prompts];
    int32_t **ids = NULL;
    size_t *lens = NULL;
    fdpo_sample *s = NULL;
    double *r = fdpo_calloc(N, sizeof(double)), *logp = fdpo_calloc(N, sizeof(double)), *lref = fdpo_calloc(N, sizeof(double));
    char **pp = fdpo_calloc(N, sizeof(char *)), **cc = fdpo_calloc(N, sizeof(char *));
    int rc = fdpo_sample_and_score_ranks(policy, tok, &o->sample, "round", k, ps, P, (size_t)o->n, reward, &ids, &lens, &s, pp, cc, r);
    if (rc == 0) rc = score_samples(policy, ref, ids, lens, s, N, logp, lref);
    fdpo_atomic_file af;
    int opened = 0;
    if (rc == 0 && fdpo_dist_is_root()) opened = (rc = fdpo_atomic_open(&af, pairs_path)) == 0;   /* rank 0 writes */
    memset(st, 0, sizeof *st);
    if (rc == 0 && o->pairs_bt) {
        /* every disjoint pair of a prompt's completions, labels drawn from Bradley-Terry */
        fdpo_sample_rec *recs = fdpo_calloc(N, sizeof *recs);
        for (size_t i = 0; i < N; i++) {
            recs[i].prompt = pp[i]; recs[i].completion = cc[i]; recs[i].reward = r[i];
            recs[i].has_reward = 1; recs[i].n_tokens = s[i].n_completion; recs[i].line = i + 1;
        }
        fdpo_pairs_config pc = {o->bt_scale, 0, 1, fdpo_round_seed(o->sample.seed, k)};
        fdpo_pair *bp = NULL;
        size_t nbp = 0;
        rc = fdpo_make_pairs(recs, N, &pc, &bp, &nbp, NULL);
        for (size_t q = 0; rc == 0 && q < nbp; q++) {
            size_t w = bp[q].chosen, l = bp[q].rejected;
            cJSON *row = cJSON_CreateObject();
            cJSON_AddStringToObject(row, "prompt", pp[w]);
            cJSON_AddStringToObject(row, "chosen", cc[w]);
            cJSON_AddStringToObject(row, "rejected", cc[l]);
            cJSON_AddNumberToObject(row, "chosen_reward", r[w]);
            cJSON_AddNumberToObject(row, "rejected_reward", r[l]);
            char *line = cJSON_PrintUnformatted(row);
            if (opened) fprintf(af.f, "%s\n", line);
            free(line);
            cJSON_Delete(row);
            st->pairs += 1;
            st->reward_gap += r[w] - r[l];
        }
        free(bp);
        free(recs);
    }
    for (size_t p = 0; rc == 0 && !o->pairs_bt && p < P; p++) {
        size_t best = p * (size_t)o->n, worst = best;
        for (size_t j = p * (size_t)o->n; j < (p + 1) * (size_t)o->n; j++) {
            if (r[j] > r[best]) best = j;
            if (r[j] < r[worst]) worst = j;
        }
        if (!(r[best] > r[worst]) || !strcmp(s[best].text, s[worst].text)) continue;
        cJSON *row = cJSON_CreateObject();
        cJSON_AddStringToObject(row, "prompt", ps[p]);
        cJSON_AddStringToObject(row, "chosen", s[best].text);
        cJSON_AddStringToObject(row, "rejected", s[worst].text);
        cJSON_AddNumberToObject(row, "chosen_reward", r[best]);
        cJSON_AddNumberToObject(row, "rejected_reward", r[worst]);
        char *line = cJSON_PrintUnformatted(row);
        if (opened) fprintf(af.f, "%s\n", line);
        free(line);
        cJSON_Delete(row);
        st->pairs += 1;
        st->reward_gap += r[best] - r[worst];
    }
    if (opened) {
        if (rc == 0) rc = fdpo_atomic_commit(&af);
        else fdpo_atomic_abort(&af);
    }
    if (rc == 0) {
        for (size_t i = 0; i < N; i++) {
            st->scores += r[i];
            st->kl += logp[i] - lref[i];
            st->entropy += -logp[i];
            st->eos += s[i].finish == FDPO_FINISH_EOT;
            st->length += (double)s[i].n_completion;
        }
        st->scores /= (double)N; st->kl /= (double)N; st->entropy /= (double)N;
        st->eos /= (double)N; st->length /= (double)N;
        st->reward_gap = st->pairs > 0 ? st->reward_gap / st->pairs : NAN;
    }
    if (s) fdpo_samples_free(s, N);
    if (ids) fdpo_free_ids(ids, lens, P);
    free(ps); free(r); free(logp); free(lref); free(pp); free(cc);
    fdpo_gpt2_free(policy); fdpo_gpt2_free(ref); fdpo_tokenizer_free(tok);
    return rc;
}

static int append_metrics(const char *out, long k, long rounds, double beta, const round_stats *st) {
    char *path = fdpo_path_join(out, "metrics.jsonl");
    FILE *f = fopen(path, "a");
    if (!f) { int rc = fdpo_error("%s: %s", path, strerror(errno)); free(path); return rc; }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "round", (double)k);
    cJSON_AddNumberToObject(o, "objective/scores", st->scores);
    cJSON_AddNumberToObject(o, "objective/kl", st->kl);
    cJSON_AddNumberToObject(o, "objective/entropy", st->entropy);
    cJSON_AddNumberToObject(o, "objective/non_score_reward", -beta * st->kl);
    cJSON_AddNumberToObject(o, "objective/rlhf_reward", st->scores - beta * st->kl);
    cJSON_AddNumberToObject(o, "val/contain_eos_token", st->eos);
    cJSON_AddNumberToObject(o, "val/num_completion_tokens", st->length);
    cJSON_AddNumberToObject(o, "pairs", st->pairs);
    cJSON_AddNumberToObject(o, "pairs/reward_gap", st->reward_gap);
    cJSON_AddNumberToObject(o, "progress", (double)(k + 1) / (double)rounds);
    char *line = cJSON_PrintUnformatted(o);
    fprintf(f, "%s\n", line);
    int rc = fclose(f) == 0 ? 0 : fdpo_error("%s: write failed", path);
    free(line); cJSON_Delete(o); free(path);
    return rc;
}

int fdpo_online_run(const fdpo_online_opts *o) {
    if (!o->model) return fdpo_error("--model: required (the policy to align)");
    if (!o->prompts) return fdpo_error("--data: required (prompt file)");
    if (!o->reward) return fdpo_error("--reward: required (afinn, length, cmd:PROG)");
    if (!o->out) return fdpo_error("--out: required (run directory)");
    if (o->rounds < 1) return fdpo_error("--rounds: must be >= 1 (got %ld)", o->rounds);
    if (o->prompts_per_round < 1) return fdpo_error("--prompts-per-round: must be >= 1 (got %ld)", o->prompts_per_round);
    if (o->n < 2) return fdpo_error("--n: online pairs need at least 2 completions per prompt (got %ld)", o->n);
    if (o->pairs_bt && (!(o->bt_scale > 0) || !isfinite(o->bt_scale))) return fdpo_error("--bt-scale: must be > 0 (got %g)", o->bt_scale);
    if (fdpo_sample_config_check(&o->sample)) return -1;
    char **prompts = NULL;
    size_t n_prompts = 0;
    if (fdpo_read_prompts(o->prompts, &prompts, &n_prompts)) return fdpo_error_context("--data %s", o->prompts);
    if (n_prompts == 0) { fdpo_free_strings(prompts, 0); return fdpo_error("--data %s: no prompts", o->prompts); }
    fdpo_reward *reward = fdpo_reward_create(o->reward, &o->reward_opts);
    if (!reward) { fdpo_free_strings(prompts, n_prompts); return -1; } /* the message names --reward */
    int rc = fdpo_mkdir_p(o->out);
    long start = 0;
    if (rc == 0) {
        /* completed rounds: DIR/round-0 .. round-(start-1) */
        for (;; start++) {
            char *p = round_path(o->out, start, "");
            int there = is_dir(p);
            free(p);
            if (!there) break;
        }
        if (start > 0 && !o->resume)
            rc = fdpo_error("--out %s: holds %ld completed round(s); pass --resume to continue after them or choose another --out", o->out, start);
        /* every rank must see the same completed rounds (OUT on a shared file system) */
        if (rc == 0) rc = fdpo_dist_check_agree("the completed rounds in --out", (uint64_t)start);
        if (start >= o->rounds && rc == 0) fdpo_log(FDPO_LOG_INFO, "all %ld rounds already complete in %s", o->rounds, o->out);
        else if (start > 0 && rc == 0) fdpo_log(FDPO_LOG_INFO, "resuming after round %ld", start - 1);
    }
    const char *ref0 = o->ref ? o->ref : o->model;
    fdpo_progress prog;
    int prog_on = rc == 0 && start < o->rounds;
    if (prog_on) fdpo_progress_start(&prog, "online rounds", (size_t)o->rounds);
    for (long k = start; rc == 0 && k < o->rounds; k++) {
        char *prev = k > 0 ? round_path(o->out, k - 1, "") : fdpo_strdup(o->model);
        const char *ref = o->ref_update_round && k > 0 ? prev : ref0;
        char *pairs = round_path(o->out, k, ".pairs.jsonl"), *partial = round_path(o->out, k, ".partial");
        char *done = round_path(o->out, k, "");
        round_stats st;
        fdpo_log(FDPO_LOG_INFO, "round %ld (%ld of %ld): sampling %ld x %ld from %s", k, k + 1, o->rounds,
                 o->prompts_per_round, o->n, prev);
        rc = make_round_pairs(o, k, prev, ref, prompts, n_prompts, reward, pairs, &st);
        if (rc == 0) rc = fdpo_dist_barrier();   /* rank 0 wrote the pairs the others train on */
        if (rc == 0) {
            fdpo_log(FDPO_LOG_INFO, "round %ld: mean reward %.4g, KL %.4g, %g pairs (reward gap %.4g)", k,
                     st.scores, st.kl, st.pairs, st.reward_gap);
            if (is_dir(partial) && fdpo_dist_is_root()) rc = fdpo_remove_tree(partial);
        }
        if (rc == 0 && st.pairs == 0) {
            /* nothing to learn from: the policy carries over unchanged */
            fdpo_log(FDPO_LOG_WARN, "round %ld: every prompt's %ld completions got the same reward: no pairs, the policy "
                     "carries over unchanged (raise --n or the sampling temperature)", k, o->n);
            fdpo_gpt2 *m = fdpo_checkpoint_load_model(prev);
            fdpo_tokenizer *tk = m ? fdpo_tokenizer_load_dir(prev) : NULL;
            rc = m && tk ? fdpo_checkpoint_save_all(partial, m, tk, NULL, NULL) : -1;
            if (tk) fdpo_tokenizer_free(tk);
            if (m) fdpo_gpt2_free(m);
        } else if (rc == 0) {
            fdpo_dpo_run_opts d = o->dpo;
            d.train.init = prev;
            d.train.out = partial;
            d.train.resume = 0;
            d.train.overwrite = 1;
            d.data = pairs;
            d.ref = ref;
            rc = fdpo_dpo_train(&d);
            if (rc) fdpo_error_context("round %ld: f-DPO on %s", k, pairs);
        }
        if (fdpo_dist_is_root()) {   /* rank 0 writes; the others wait for the finished round */
            if (rc == 0 && rename(partial, done) != 0) rc = fdpo_error("round %ld: rename %s -> %s: %s", k, partial, done, strerror(errno));
            if (rc == 0) rc = append_metrics(o->out, k, o->rounds, o->dpo.dpo.loss.beta, &st);
        }
        if (rc == 0) rc = fdpo_dist_barrier();
        if (rc == 0) {
            char extra[128];
            snprintf(extra, sizeof extra, "reward %.4g kl %.4g pairs %g", st.scores, st.kl, st.pairs);
            fdpo_progress_step(&prog, (size_t)k + 1, NAN, o->dpo.train.lr, NAN, NAN, extra);
        }
        free(prev); free(pairs); free(partial); free(done);
    }
    if (prog_on && rc == 0) fdpo_progress_end(&prog);
    fdpo_reward_free(reward);
    fdpo_free_strings(prompts, n_prompts);
    return rc;
}

/* ---- --mode step ---- */

int fdpo_online_step_run(const fdpo_online_opts *o) {
    const fdpo_train_opts *t = &o->dpo.train;
    if (!o->model) return fdpo_error("--model: required (the policy to align)");
    if (!o->prompts) return fdpo_error("--data: required (prompt file)");
    if (!o->reward) return fdpo_error("--reward: required (afinn, length, cmd:PROG)");
    if (!o->out) return fdpo_error("--out: required (run directory)");
    if (o->resume) return fdpo_error("--resume: --mode step keeps no training state yet (rounds mode resumes)");
    if (o->pairs_bt) return fdpo_error("--pairs all-bt: --mode step pairs the best with the worst sample");
    if (t->steps < 1) return fdpo_error("--steps: --mode step needs --steps >= 1 (got %ld)", t->steps);
    if (o->prompts_per_round < 1) return fdpo_error("--prompts-per-round: must be >= 1 (got %ld)", o->prompts_per_round);
    if (o->n < 2) return fdpo_error("--n: online pairs need at least 2 completions per prompt (got %ld)", o->n);
    if (fdpo_sample_config_check(&o->sample) || fdpo_pref_loss_check(&o->dpo.dpo.loss)) return -1;
    char **prompts = NULL;
    size_t n_prompts = 0;
    if (fdpo_read_prompts(o->prompts, &prompts, &n_prompts)) return fdpo_error_context("--data %s", o->prompts);
    if (n_prompts == 0) { fdpo_free_strings(prompts, 0); return fdpo_error("--data %s: no prompts", o->prompts); }
    fdpo_reward *reward = fdpo_reward_create(o->reward, &o->reward_opts);
    fdpo_gpt2 *policy = reward ? fdpo_checkpoint_load_model(o->model) : NULL, *ref = NULL;
    fdpo_tokenizer *tok = policy ? fdpo_tokenizer_load_dir(o->model) : NULL;
    if (tok) ref = fdpo_checkpoint_load_model(o->ref ? o->ref : o->model);
    int rc = reward && policy && tok && ref ? 0 : -1;
    if (reward && (!policy || !tok)) fdpo_error_context("--model %s", o->model);
    else if (reward && !ref) fdpo_error_context("--ref %s", o->ref);
    fdpo_adamw opt = {0};
    fdpo_metrics mw = {0};
    fdpo_dpo d = {0};
    int opt_ok = 0, mw_ok = 0, d_ok = 0;
    if (!rc) rc = fdpo_mkdir_p(o->out);
    if (!rc) opt_ok = (rc = fdpo_adamw_init(&opt, policy->n_params, t->beta1, t->beta2, t->adam_eps, t->weight_decay)) == 0;
    if (!rc) mw_ok = (rc = fdpo_metrics_open(&mw, o->out, 0)) == 0;
    fdpo_dpo_config cfg = o->dpo.dpo;
    cfg.micro_batch = 0;
    if (!rc) d_ok = (rc = fdpo_dpo_init(&d, policy, ref, &cfg)) == 0;
    const size_t P = (size_t)o->prompts_per_round, K = (size_t)o->n, N = P * K;
    char **ps = fdpo_malloc(P * sizeof *ps), **pp = fdpo_malloc(N * sizeof *pp), **cc = fdpo_malloc(N * sizeof *cc);
    double *r = fdpo_malloc(N * sizeof(double)), *lref = fdpo_malloc(N * sizeof(double));
    fdpo_pref_pair *pairs = fdpo_calloc(P, sizeof *pairs);
    const fdpo_pref_pair **pptr = fdpo_malloc(P * sizeof *pptr);
    fdpo_progress prog;
    if (!rc) fdpo_progress_start(&prog, "online", (size_t)t->steps);
    for (long step = 0; rc == 0 && step < t->steps; step++) {
        for (size_t i = 0; i < P; i++) ps[i] = prompts[((size_t)step * P + i) % n_prompts];
        int32_t **ids = NULL;
        size_t *lens = NULL;
        fdpo_sample *s = NULL;
        rc = fdpo_sample_and_score_ranks(policy, tok, &o->sample, "step", step, ps, P, K, reward, &ids, &lens, &s, pp, cc, r);
        double *lpol = fdpo_malloc(N * sizeof(double));
        if (!rc) rc = fdpo_samples_logp(ref, ids, lens, s, N, lref);
        if (!rc) rc = fdpo_samples_logp(policy, ids, lens, s, N, lpol);
        size_t np = 0;
        double gap = 0, scores = 0, kl = 0, ent = 0, eos = 0;
        for (size_t p = 0; rc == 0 && p < P; p++) {
            size_t best = p * K, worst = best;
            for (size_t j = p * K; j < (p + 1) * K; j++) {
                if (r[j] > r[best]) best = j;
                if (r[j] < r[worst]) worst = j;
            }
            if (!(r[best] > r[worst])) continue;
            const fdpo_sample *b = &s[best], *w = &s[worst];
            if (b->n_tokens == w->n_tokens && !memcmp(b->tokens, w->tokens, b->n_tokens * sizeof(int32_t))) continue;
            fdpo_pref_pair *q = &pairs[np];
            q->prompt = ids[p]; q->n_prompt = lens[p];
            q->chosen = b->tokens; q->n_chosen = b->n_tokens;
            q->rejected = w->tokens; q->n_rejected = w->n_tokens;
            q->line = (size_t)step + 1; q->index = np;
            pptr[np++] = q;
            gap += r[best] - r[worst];
        }
        for (size_t i = 0; rc == 0 && i < N; i++) {
            scores += r[i]; kl += lpol[i] - lref[i]; ent -= lpol[i]; eos += s[i].finish == FDPO_FINISH_EOT;
        }
        fdpo_dpo_metrics m = {0};
        double gn = NAN;
        if (!rc && np > 0) {
            fdpo_gpt2_zero_grad(policy);
            rc = fdpo_dpo_step(&d, pptr, np, NULL, 1, &m, NULL);
            /* under MPI fdpo_dpo_step's one micro-batch ran on rank 0: every rank takes its gradient */
            if (!rc) rc = fdpo_dist_sum_f32(policy->grads_memory, policy->n_params);
            if (!rc) { gn = fdpo_clip_grad_norm(policy, t->grad_clip); fdpo_adamw_step(&opt, policy, t->lr); }
        }
        if (!rc) {
            double beta = o->dpo.dpo.loss.beta;
            fdpo_metrics_begin(&mw, (size_t)step + 1);
            fdpo_metrics_add(&mw, "loss", np ? m.loss : NAN);
            fdpo_metrics_add(&mw, "objective/scores", scores / (double)N);
            fdpo_metrics_add(&mw, "objective/kl", kl / (double)N);
            fdpo_metrics_add(&mw, "objective/entropy", ent / (double)N);
            fdpo_metrics_add(&mw, "objective/non_score_reward", -beta * kl / (double)N);
            fdpo_metrics_add(&mw, "objective/rlhf_reward", (scores - beta * kl) / (double)N);
            fdpo_metrics_add(&mw, "val/contain_eos_token", eos / (double)N);
            fdpo_metrics_add(&mw, "rewards/chosen", np ? m.rewards_chosen : NAN);
            fdpo_metrics_add(&mw, "rewards/rejected", np ? m.rewards_rejected : NAN);
            fdpo_metrics_add(&mw, "rewards/margins", np ? m.margins : NAN);
            fdpo_metrics_add(&mw, "rewards/accuracies", np ? m.accuracy : NAN);
            fdpo_metrics_add(&mw, "pairs", (double)np);
            fdpo_metrics_add(&mw, "pairs/reward_gap", np ? gap / (double)np : NAN);
            fdpo_metrics_add(&mw, "grad_norm", gn);
            fdpo_metrics_add(&mw, "learning_rate", t->lr);
            rc = fdpo_metrics_end(&mw);
            char extra[96];
            snprintf(extra, sizeof extra, "reward %.4g kl %.4g pairs %zu", scores / (double)N, kl / (double)N, np);
            fdpo_progress_step(&prog, (size_t)step + 1, np ? m.loss : NAN, t->lr, gn, NAN, extra);
        }
        free(lpol);
        if (s) fdpo_samples_free(s, N);
        if (ids) fdpo_free_ids(ids, lens, P);
    }
    if (!rc) fdpo_progress_end(&prog);
    if (!rc) rc = fdpo_checkpoint_save_all(o->out, policy, tok, NULL, NULL);
    if (!rc) rc = fdpo_dist_barrier();   /* nobody reads OUT before rank 0 wrote it */
    if (d_ok) fdpo_dpo_free(&d);
    if (mw_ok) fdpo_metrics_close(&mw);
    if (opt_ok) fdpo_adamw_free(&opt);
    free(ps); free(pp); free(cc); free(r); free(lref); free(pairs); free(pptr);
    if (tok) fdpo_tokenizer_free(tok);
    if (policy) fdpo_gpt2_free(policy);
    if (ref) fdpo_gpt2_free(ref);
    if (reward) fdpo_reward_free(reward);
    fdpo_free_strings(prompts, n_prompts);
    return rc;
}
