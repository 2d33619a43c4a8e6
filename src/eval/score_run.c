/* fdpo score's driver: reward and log-probabilities of given completions, no sampling,
 * split over the MPI ranks by line; JSONL out. Also loading a checkpoint with its tokenizer
 * for the eval commands. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/chat.h"
#include "fdpo/dist.h"
#include "fdpo/eval.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"   /* fdpo_checkpoint_load_config */

/* DIR's tokenizer for its model of config c, which must be a language model (a reward model
 * is refused: it is a --reward rm:DIR) whose vocabulary the tokenizer's ids fit. */
static fdpo_tokenizer *eval_tokenizer(const char *flag, const char *dir, const fdpo_gpt2_config *c) {
    if (c->num_labels) {   /* its backbone would run as a language model: logits of nothing */
        fdpo_error("%s %s: a reward model (%s), not a language model to sample or score with (as a reward: "
                   "--reward rm:%s)", flag, dir, fdpo_gpt2_architecture(c, 1), dir);
        return NULL;
    }
    fdpo_tokenizer *t = fdpo_checkpoint_load_tokenizer(dir);
    if (!t) { fdpo_error_context("%s %s", flag, dir); return NULL; }
    if (fdpo_tokenizer_vocab_size(t) > c->vocab_size) {
        fdpo_error("%s %s: tokenizer has %zu tokens but the model's vocab_size is %zu", flag, dir,
                   fdpo_tokenizer_vocab_size(t), c->vocab_size);
        fdpo_tokenizer_free(t);
        return NULL;
    }
    return t;
}

int fdpo_eval_load_checkpoint(const char *flag, const char *dir, fdpo_gpt2 **model, fdpo_tokenizer **tok) {
    *model = NULL; *tok = NULL;
    if (!dir) return fdpo_error("%s: required (a checkpoint directory)", flag);
    fdpo_gpt2 *m = fdpo_checkpoint_load_model(dir);
    if (!m) return fdpo_error_context("%s %s", flag, dir);
    fdpo_tokenizer *t = eval_tokenizer(flag, dir, &m->config);
    if (!t) { fdpo_gpt2_free(m); return -1; }
    *model = m; *tok = t;
    return 0;
}

int fdpo_eval_load_config(const char *flag, const char *dir, fdpo_gpt2_config *c, fdpo_tokenizer **tok) {
    *tok = NULL;
    if (!dir) return fdpo_error("%s: required (a checkpoint directory)", flag);
    if (fdpo_checkpoint_load_config(dir, c)) return fdpo_error_context("%s %s", flag, dir);
    return (*tok = eval_tokenizer(flag, dir, c)) ? 0 : -1;
}

void fdpo_score_opts_default(fdpo_score_opts *o) {
    memset(o, 0, sizeof *o);
    o->reward_opts.timeout_s = 60;
    o->out = "-";
    o->stream = stdout;
}

int fdpo_score_opts_check(const fdpo_score_opts *o) {
    if (!o->model) return fdpo_error("--model: required (a checkpoint directory)");
    if (!o->data) return fdpo_error("--data: required (JSONL prompt/completion)");
    if (!o->out) return fdpo_error("--out: required (a JSONL file, or '-' for the stream)");
    if (fdpo_path_check("--model", o->model) || fdpo_path_check("--ref", o->ref) || fdpo_path_check("--data", o->data)) return -1;
    /* "" scored every record, then failed "--out: : rename failed"; worded as the CLI's
     * output files (src/cli/eval_common.c) */
    if (!*o->out) return fdpo_error("--out: an empty path; give a file");
    if (!strcmp(o->out, "-") && !o->stream) return fdpo_error("--out: '-' needs a stream to write to (none given)");
    return fdpo_reward_lexicon_check(o->reward_opts.lexicon, &o->reward, 1);
}

static void put(cJSON *o, const char *k, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, k, v); else cJSON_AddNullToObject(o, k);
}

/* --chat-template NAME for the conversational prompts: samples of generate or eval --chat-template X
 * score with X (they were scored with the checkpoint's own template, silently other log-probs) */
static int score_chat_template(fdpo_tokenizer *tok, const char *name, char *const *prompts, size_t n) {
    size_t i = 0;
    while (i < n && !fdpo_chat_is_conversation(prompts[i])) i++;
    if (i == n)
        return fdpo_error("--chat-template: no prompt in --data is a conversation (a JSONL \"prompt\" list of "
                          "{role, content}, or its JSON text), so the template would change nothing");
    fdpo_tokenizer_set_chat_template(tok, name);
    if (!strcmp(name, "auto")) return 0;
    fdpo_chat chat;
    if (fdpo_chat_for(tok, &chat)) return -1;   /* its message names --chat-template */
    fdpo_chat_free(&chat);
    return 0;
}

int fdpo_score_run(const fdpo_score_opts *o) {
    if (fdpo_score_opts_check(o)) return -1;
    const char *data_path = o->data, *ref_dir = o->ref, *out_path = o->out;
    int rc = 0;
    fdpo_reward *reward = NULL;
    if (o->reward && !(reward = fdpo_reward_create(o->reward, &o->reward_opts))) return -1;
    char **prompts = NULL, **comps = NULL;
    size_t n = 0;
    fdpo_gpt2 *m = NULL, *ref = NULL;
    fdpo_tokenizer *tok = NULL, *rtok = NULL;
    int32_t **pids = NULL, **cids = NULL;
    size_t *plens = NULL, *clens = NULL, *ntok = NULL;
    double *rw = NULL;
    fdpo_decoder *md = NULL, *rd = NULL;
    size_t *lines = NULL;   /* each record's line in --data, for messages */
    if (fdpo_read_completions(data_path, &prompts, &comps, &lines, &n)) rc = fdpo_error_context("--data");
    if (!rc) rc = fdpo_eval_load_checkpoint("--model", o->model, &m, &tok);
    if (!rc && o->chat_template) rc = score_chat_template(tok, o->chat_template, prompts, n);
    if (!rc && ref_dir) rc = fdpo_eval_load_checkpoint("--ref", ref_dir, &ref, &rtok);
    if (!rc && ref && ref->config.vocab_size != m->config.vocab_size)
        rc = fdpo_error("--ref %s: vocabulary %zu != --model's %zu", ref_dir, ref->config.vocab_size, m->config.vocab_size);
    char what[512];
    if (!rc && ref && fdpo_tokenizer_diff(rtok, tok, what, sizeof what))   /* log-ratios compare the same ids */
        rc = fdpo_error("--ref %s: its tokenizer differs from --model's (%s): the same text would be other ids", ref_dir,
                        what);
    /* every rank's block on one bf16 route, agreed before the decoders take theirs (a rank
     * that failed above ends the job: src/cli/main.c) */
    if (!rc) rc = fdpo_dist_agree_bf16_route();
    if (!rc) rc = fdpo_encode_prompts(tok, prompts, n, &pids, &plens);
    if (!rc) {
        cids = fdpo_calloc(n, sizeof *cids);
        clens = fdpo_calloc(n, sizeof *clens);
        ntok = fdpo_calloc(n, sizeof *ntok);
        size_t max_len = 0, longest = 0;
        for (size_t i = 0; i < n && !rc; i++) {
            if (fdpo_tokenizer_encode(tok, comps[i], strlen(comps[i]), 0, &cids[i], &clens[i])) {
                rc = fdpo_error_context("--data %s:%zu: completion", data_path, lines[i]);
                break;
            }
            ntok[i] = clens[i];
            if (o->add_eot) {
                cids[i] = fdpo_realloc(cids[i], (clens[i] + 1) * sizeof(int32_t));
                cids[i][clens[i]++] = fdpo_tokenizer_eot(tok);
            }
            size_t l = plens[i] + clens[i];
            if (l > max_len) { max_len = l; longest = i; }
        }
        size_t cap = m->config.n_positions;
        if (ref && ref->config.n_positions < cap) cap = ref->config.n_positions;
        if (!rc && max_len > cap)
            rc = fdpo_error("--data %s:%zu: prompt + completion of %zu tokens exceed n_positions %zu",
                            data_path, lines[longest], max_len, cap);
        if (!rc && !(md = fdpo_decoder_create(m, 1, max_len ? max_len : 1))) rc = -1;
        if (!rc && ref && !(rd = fdpo_decoder_create(ref, 1, max_len ? max_len : 1))) rc = -1;
    }
    if (!rc && fdpo_dist_size() > 1) {   /* every rank must score the same lines with the same models */
        uint64_t h = FDPO_HASH_INIT;
        for (size_t i = 0; i < n; i++) {
            h = fdpo_hash64(h, &plens[i], sizeof plens[i]);
            h = fdpo_hash64(h, pids[i], plens[i] * sizeof(int32_t));
            h = fdpo_hash64(h, &clens[i], sizeof clens[i]);
            h = fdpo_hash64(h, cids[i], clens[i] * sizeof(int32_t));
        }
        h = fdpo_hash64(h, m->params_memory, m->n_params * sizeof(float));
        if (ref) h = fdpo_hash64(h, ref->params_memory, ref->n_params * sizeof(float));
        /* the spec, and an rm: reward model's weights (a rank's stale copy at the same path) */
        if (o->reward) h = fdpo_hash64(h, &(uint64_t){fdpo_reward_identity(reward)}, sizeof(uint64_t));
        const int precision = (int)fdpo_get_precision();
        h = fdpo_hash64(h, &precision, sizeof precision);
        rc = fdpo_dist_check_agree("the --data lines, --model, --ref, --reward or --precision", h);
    }
    /* under MPI each rank scores (and rewards) its block of lines, the blocks are joined
     * (fdpo_dist_join_shards_f64: the same numbers as one process, bit for bit) and rank 0 writes */
    enum { S_LOGP, S_ENTROPY, S_LOGP_REF, S_KL_TOK, S_N };
    double *sc = rc ? NULL : fdpo_calloc(n ? n * S_N : 1, sizeof *sc);
    size_t mine_begin = 0, mine_end = n;
    fdpo_dist_shard(n, &mine_begin, &mine_end);
    if (!rc && reward) {
        rw = fdpo_calloc(n ? n : 1, sizeof *rw);
        size_t b = mine_begin, k = mine_end - mine_begin;
        if (k && fdpo_reward_score(reward, k, prompts + b, comps + b, ntok + b, rw + b))
            rc = fdpo_error_context("%s %s", fdpo_reward_flag(reward), fdpo_reward_spec(reward));   /* as online and rl name it */
    }
    for (size_t i = mine_begin; i < mine_end && !rc; i++) {
        fdpo_seq_score s = {0};
        if (fdpo_score_sequence(md, rd, pids[i], plens[i], cids[i], clens[i], NULL, 0, &s))
            rc = fdpo_error_context("--data %s:%zu", data_path, lines[i]);   /* the file's line, blank lines counted */
        sc[i * S_N + S_LOGP] = s.logp;
        sc[i * S_N + S_ENTROPY] = s.entropy_sum;
        sc[i * S_N + S_LOGP_REF] = s.logp_ref;
        sc[i * S_N + S_KL_TOK] = s.kl_tok;
    }
    if (fdpo_dist_size() > 1 && sc) {   /* every rank reaches this, failed or not */
        rc = fdpo_dist_all_ok(rc);
        if (!rc) rc = fdpo_dist_join_shards_f64(sc, n, S_N);
        if (!rc && rw) rc = fdpo_dist_join_shards_f64(rw, n, 1);
    }
    fdpo_atomic_file af = {0};
    FILE *f = fdpo_dist_is_root() ? o->stream : NULL;
    if (!rc && fdpo_dist_is_root() && strcmp(out_path, "-")) {
        if (fdpo_atomic_open(&af, out_path)) rc = fdpo_error_context("--out");
        else f = af.f;
    }
    for (size_t i = 0; i < n && !rc && f; i++) {
        fdpo_seq_score s = {.logp = sc[i * S_N + S_LOGP], .entropy_sum = sc[i * S_N + S_ENTROPY],
                            .logp_ref = sc[i * S_N + S_LOGP_REF], .kl_tok = sc[i * S_N + S_KL_TOK]};
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "prompt", prompts[i]);
        cJSON_AddStringToObject(j, "completion", comps[i]);
        cJSON_AddNumberToObject(j, "n_tokens", (double)ntok[i]);
        put(j, "logp", s.logp);
        put(j, "logp_mean", clens[i] ? s.logp / (double)clens[i] : NAN);
        put(j, "entropy_mean", clens[i] ? s.entropy_sum / (double)clens[i] : NAN);
        if (ref) {
            put(j, "logp_ref", s.logp_ref);
            put(j, "kl_seq", s.logp - s.logp_ref);
            put(j, "kl_tok", s.kl_tok);
        }
        if (reward) put(j, "reward", rw[i]);
        char *line = fdpo_json_print(j, 0);
        fprintf(f, "%s\n", line);
        free(line);
        cJSON_Delete(j);
    }
    if (af.f) {
        if (!rc) { if (fdpo_atomic_commit(&af)) rc = fdpo_error_context("--out"); }
        else fdpo_atomic_abort(&af);
    }
    free(sc);
    fdpo_decoder_free(md); fdpo_decoder_free(rd);
    if (cids) for (size_t i = 0; i < n; i++) free(cids[i]);
    free(cids); free(clens); free(ntok); free(rw);
    fdpo_free_ids(pids, plens, pids ? n : 0);
    fdpo_free_strings(prompts, n); fdpo_free_strings(comps, n); free(lines);
    fdpo_tokenizer_free(tok); fdpo_tokenizer_free(rtok);
    fdpo_gpt2_free(m); fdpo_gpt2_free(ref);
    fdpo_reward_free(reward);
    return rc;
}
