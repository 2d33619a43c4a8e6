/* Online and iterative f-DPO rounds (include/fdpo/online.h). Each round composes the existing
 * pieces: fdpo_generate (sampling), fdpo_reward_score, preference JSONL, fdpo_dpo_train. */
#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/dpo.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/online.h"
#include "fdpo/pairs.h"
#include "fdpo/rl.h"
#include "fdpo/train.h"
#include "fdpo/trainer.h"
#include "settings_json.h"

static char *round_path(const char *out, long k, const char *suffix) {
    char name[64];
    snprintf(name, sizeof name, "round-%ld%s", k, suffix);
    return fdpo_path_join(out, name);
}

/* Rounds mode resumes with the flags given now, but a run must not switch precision half-way
 * silently (the rounds before would be fp32 and the ones after bf16, or the reverse): the
 * newest completed round that trained (one without pairs saves no training state) names the
 * precision it ran in. No such round (a run of an older fdpo, or only rounds without pairs)
 * is taken as it is. */
static int check_round_precision(const char *out, long k) {
    char *dir = NULL;
    for (; k >= 0; k--) {
        free(dir);
        dir = round_path(out, k, "/training_state.json");
        if (fdpo_file_exists(dir)) break;
    }
    free(dir);
    if (k < 0) return 0;
    dir = round_path(out, k, "");
    fdpo_settings saved = {0};
    size_t step = 0;
    int rc = 0;
    if (fdpo_train_state_read_settings(dir, &saved, &step) == 0) {
        const fdpo_setting *x = fdpo_settings_find(&saved, "precision");
        const char *now = fdpo_precision_name(fdpo_get_precision());
        if (x && x->type == FDPO_SETTING_STR && x->str && strcmp(x->str, now))
            rc = fdpo_error("--precision: %s ran in %s, this run would continue in %s; pass --precision %s "
                            "(rounds mode takes its flags from the command line)", dir, x->str, now, x->str);
        fdpo_settings_free(&saved);
    }
    free(dir);
    return rc;
}

/* OUT/online.json: a rounds run's fixed flags (fdpo_online_round_settings), written before
 * round 0. Rounds mode takes its flags from the command line on --resume, and a resume may
 * add rounds or change how it runs (--threads, --rounds), but nothing its rounds' results
 * depend on: a flag changed or left out (back to its default) is refused by name, as a
 * trainer's resume refuses it (without the file, a run of an older fdpo, only --precision is
 * checked, above). It is written with round 0's metrics line, when round 0 has run (rank 0
 * alone): a run that fails before that leaves none behind, and one that completed no round
 * has nothing to resume and writes it afresh. */
static char *plan_path(const char *out) { return fdpo_path_join(out, "online.json"); }

int fdpo_online_out_entry(const char *name) {
    if (!strcmp(name, "online.json")) return 1;
    if (strncmp(name, "round-", 6) || !isdigit((unsigned char)name[6])) return 0;
    const char *p = name + 6;
    while (isdigit((unsigned char)*p)) p++;
    if (name[6] == '0' && p > name + 7) return 0;   /* round_path writes %ld: round-007 is not its */
    return !*p || !strcmp(p, ".pairs.jsonl") || !strcmp(p, ".partial");   /* round_path's names, exactly */
}

/* The prompts as read (their texts, in order): online.json records it, so that a resume whose
 * --data file was edited in place (the same path) is refused as a trainer's is, not sampled
 * from other prompts without a word. */
static uint64_t prompts_hash(char *const *prompts, size_t n) {
    uint64_t h = FDPO_HASH_INIT;
    for (size_t i = 0; i < n; i++) h = fdpo_hash64(h, prompts[i], strlen(prompts[i]) + 1);
    return h;
}

/* The weights the rounds read again from --model / --ref at every session, not from OUT: a
 * fixed reference and a LoRA policy's base. online.json records their fdpo_hash_model; a
 * resume refuses others (a --model re-trained in place went on silently). */
typedef struct { int has_ref, has_base; uint64_t ref, base; } plan_weights;

static plan_weights plan_weights_of(fdpo_gpt2 *policy, const fdpo_gpt2 *ref) {
    plan_weights w = {0};
    if (policy && policy->lora) {   /* the base alone: the adapters are the rounds' (OUT's) */
        int on = fdpo_lora_set_enabled(policy, 0);
        w.base = fdpo_hash_model(policy);
        fdpo_lora_set_enabled(policy, on);
        w.has_base = 1;
    }
    if (ref && ref != policy) { w.ref = fdpo_hash_model(ref); w.has_ref = 1; }
    return w;
}

/* every rank (collective): the weights now against online.json's (absent: an older plan) */
static int plan_weights_check(const fdpo_online_opts *o, const plan_weights *w, int rc) {
    char *path = plan_path(o->out);
    size_t len;
    char *text = rc == 0 && fdpo_file_exists(path) ? fdpo_read_file(path, &len) : NULL;
    cJSON *j = text ? cJSON_ParseWithLength(text, len) : NULL;
    static const char *const keys[2] = {"ref_hash", "lora_base_hash"};
    for (int i = 0; i < 2 && rc == 0; i++) {
        const cJSON *was = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
        if (!(i ? w->has_base : w->has_ref) || !cJSON_IsString(was)) continue;
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)(i ? w->base : w->ref));
        if (strcmp(was->valuestring, hex))
            rc = fdpo_error("--resume: %s %s: the %s's weights differ from the ones its rounds used (%s's %s %s, now %s; "
                            "re-trained in place?): resume needs the same %s", i || !o->ref ? "--model" : "--ref",
                            i || !o->ref ? o->model : o->ref, i ? "LoRA base" : "reference", path, keys[i],
                            was->valuestring, hex, i ? "base" : "reference");
    }
    cJSON_Delete(j);
    free(text);
    free(path);
    return fdpo_dist_all_ok(rc);
}

/* reward_hash: fdpo_reward_content_hash1 of --reward's files (has_reward_hash 0: none to hash,
 * a cmd: program or a spec that reads no file), taken when the run started: the rounds score
 * with what they read then, and a resume refuses another content (an rm:DIR re-trained, a word
 * list edited in place), as sacpo's plan does for its stages */
static int online_plan(const fdpo_online_opts *o, long start, uint64_t data_hash, const plan_weights *w,
                       int has_reward_hash, uint64_t reward_hash) {
    fdpo_settings now = {0};
    fdpo_online_round_settings(o, &now);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)data_hash);
    char *path = plan_path(o->out);
    int rc = 0, pinned = 0;
    if (start == 0) {   /* rank 0 alone, after round 0 ran (not collective) */
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "format", "fdpo-online-rounds");
        cJSON_AddNumberToObject(j, "version", 1);
        cJSON_AddItemToObject(j, "settings", fdpo_settings_to_json(&now));
        cJSON_AddStringToObject(j, "data_hash", hex);
        if (has_reward_hash) {
            char rh[17];
            snprintf(rh, sizeof rh, "%016llx", (unsigned long long)reward_hash);
            cJSON_AddStringToObject(j, "reward_hash", rh);
        }
        for (int i = 0; i < 2; i++) {
            if (!(i ? w->has_base : w->has_ref)) continue;
            char wh[17];
            snprintf(wh, sizeof wh, "%016llx", (unsigned long long)(i ? w->base : w->ref));
            cJSON_AddStringToObject(j, i ? "lora_base_hash" : "ref_hash", wh);
        }
        cJSON *fixed = cJSON_AddArrayToObject(j, "fixed");
        for (size_t i = 0; i < now.n; i++)
            if (now.v[i].fixed) cJSON_AddItemToArray(fixed, cJSON_CreateString(now.v[i].key));
        rc = fdpo_write_json_atomic(path, j, 1);
        cJSON_Delete(j);
    } else if (fdpo_file_exists(path)) {
        size_t len;
        char *text = fdpo_read_file(path, &len);
        cJSON *j = text ? cJSON_ParseWithLength(text, len) : NULL;
        const cJSON *set = cJSON_GetObjectItemCaseSensitive(j, "settings"), *fixed = cJSON_GetObjectItemCaseSensitive(j, "fixed");
        fdpo_settings saved = {0};
        if (!text) rc = -1;
        else if (!cJSON_IsObject(set) || !cJSON_IsArray(fixed)) rc = fdpo_error("%s: not an online run's settings file", path);
        else rc = fdpo_settings_from_json(&saved, set, fixed, path);
        if (rc == 0) fdpo_online_settings_for_resume(&saved, &now, o->dpo.train.init_in_run);
        if (rc == 0 && (rc = fdpo_settings_check_resume(&saved, &now)))
            fdpo_error_context("--out %s: its rounds ran with the flags in %s", o->out, path);
        const cJSON *dh = cJSON_GetObjectItemCaseSensitive(j, "data_hash");   /* absent: a plan of an older fdpo */
        if (rc == 0 && cJSON_IsString(dh) && strcmp(dh->valuestring, hex))
            rc = fdpo_error("--resume: the prompts of --data %s differ from the ones its rounds sampled (%s's data_hash "
                            "%s, now %s): resume needs the same prompts", o->prompts, path, dh->valuestring, hex);
        const cJSON *rh = cJSON_GetObjectItemCaseSensitive(j, "reward_hash");   /* absent: an older fdpo, or none */
        uint64_t was = 0;
        if (rc == 0 && has_reward_hash && cJSON_IsString(rh) && sscanf(rh->valuestring, "%16" SCNx64, &was) == 1 &&
            was != reward_hash) {
            char then[1100];
            snprintf(then, sizeof then, "its rounds scored with, as %.1000s records it", path);
            rc = fdpo_reward_changed_error(o->reward, o->reward_opts.lexicon, then, was, reward_hash);
        }
        pinned = rc == 0 ? fdpo_train_pin_saved_bf16_route(&saved, path) : 0;
        if (pinned < 0) rc = -1;
        fdpo_settings_free(&saved);
        cJSON_Delete(j);
        free(text);
    }
    /* a bf16 run's later rounds keep its route: online.json's (written with round 0), else
     * (a plan of an older fdpo) the newest round that recorded one */
    for (long k = start - 1; start > 0 && rc == 0 && pinned == 0 && k >= 0; k--) {
        char *dir = round_path(o->out, k, "");
        pinned = fdpo_train_pin_bf16_route(dir);
        if (pinned < 0) rc = -1;
        free(dir);
    }
    free(path);
    fdpo_settings_free(&now);
    return start == 0 ? rc : fdpo_dist_all_ok(rc);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ---- a round's checkpoint, written in the background ----
 * Round k's files (model or adapter, tokenizer, training_state.json, the pairs record) are
 * written by a thread while round k+1 samples and scores, which only read the policy; the
 * thread is joined before anything writes the policy (round k+1's f-DPO step), before the next
 * save and before the run ends, so it reads weights nobody changes. Atomicity is as before:
 * round-K.pairs.jsonl and every file of round-K.partial are written atomically (fsynced), and
 * only then round-K.partial becomes round-K by a rename (DIR fsynced); a crash before that
 * leaves round-K.partial, which --resume removes, and round K is redone. */
typedef struct {
    pthread_t thread;
    int running;
    long round;
    char *partial, *done, *pairs_path;
    const fdpo_gpt2 *model;
    const fdpo_tokenizer *tok;
    char *state_text;          /* training_state.json, or NULL (a round without pairs) */
    char *pairs_text;          /* the round's preference JSONL */
    size_t pairs_len;
    int rc;
    char err[1024];            /* fdpo_error is per thread: the writer's message, for the joiner */
} round_writer;

static int fsync_path(const char *path, int flags) {
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0) return fdpo_error("%s: cannot open: %s", path, strerror(errno));
    int rc = fsync(fd) == 0 ? 0 : fdpo_error("%s: fsync: %s", path, strerror(errno));
    close(fd);
    return rc;
}

static void *round_writer_main(void *arg) {
    round_writer *w = arg;
    const fdpo_gpt2 *m = w->model;
    int rc = fdpo_write_file_atomic(w->pairs_path, w->pairs_text, w->pairs_len);
    if (!rc) rc = m->lora ? fdpo_lora_save_peft(w->partial, m, m->lora->base_model) : fdpo_checkpoint_save_model(w->partial, m);
    if (!rc) rc = fdpo_tokenizer_save_dir(w->tok, w->partial);
    if (!rc && w->state_text) {
        char *p = fdpo_path_join(w->partial, "training_state.json");
        rc = fdpo_write_file_atomic(p, w->state_text, strlen(w->state_text));
        free(p);
    }
    char *metrics = fdpo_path_join(w->partial, "metrics.jsonl");   /* the round's f-DPO steps */
    if (!rc && fdpo_file_exists(metrics)) rc = fsync_path(metrics, O_RDONLY);
    free(metrics);
    if (!rc && rename(w->partial, w->done) != 0)
        rc = fdpo_error("rename %s -> %s: %s", w->partial, w->done, strerror(errno));
    if (!rc) rc = fdpo_fsync_parent(w->done, 1);   /* the round is complete only once its entry is on disk */
    if (rc) snprintf(w->err, sizeof w->err, "%s", fdpo_last_error());
    w->rc = rc;
    return NULL;
}

static void round_writer_clear(round_writer *w) {
    free(w->partial); free(w->done); free(w->pairs_path); free(w->state_text); free(w->pairs_text);
    w->partial = w->done = w->pairs_path = w->state_text = w->pairs_text = NULL;
}

/* Wait for the writer, if one runs; its failure becomes this thread's error. */
static int round_writer_join(round_writer *w) {
    if (!w->running) return 0;
    pthread_join(w->thread, NULL);
    w->running = 0;
    int rc = w->rc;
    if (rc) fdpo_error("round %ld: saving %s: %s", w->round, w->done, w->err);
    round_writer_clear(w);
    return rc;
}

/* Start writing round k (the previous writer must have been joined); takes state_text and
 * pairs_text. */
static int round_writer_start(round_writer *w, long k, const char *partial, const char *done, const char *pairs_path,
                              const fdpo_gpt2 *m, const fdpo_tokenizer *tok, char *state_text, char *pairs_text,
                              size_t pairs_len) {
    w->round = k;
    w->partial = fdpo_strdup(partial); w->done = fdpo_strdup(done); w->pairs_path = fdpo_strdup(pairs_path);
    w->model = m; w->tok = tok;
    w->state_text = state_text; w->pairs_text = pairs_text; w->pairs_len = pairs_len;
    w->rc = 0; w->err[0] = 0;
    int e = pthread_create(&w->thread, NULL, round_writer_main, w);
    if (e) {
        round_writer_clear(w);
        return fdpo_error("round %ld: cannot start the checkpoint writer: %s", k, strerror(e));
    }
    w->running = 1;
    return 0;
}

/* Per-round statistics of the sampled completions (TRL OnlineDPO / RLOO names). */
typedef struct {
    double scores, kl, entropy, eos, length, pairs, scores_margin;
    size_t pairs_empty;                         /* pairs skipped for an empty side (not a metric: the warning's) */
    /* seconds: generation; reward + log-probs; f-DPO; waiting for the previous round's
     * checkpoint writer (the part of the save the round does not hide) */
    double t_sampling, t_scoring, t_training, t_checkpoint;
    double t_round;                             /* the whole round, up to its metrics line */
} round_stats;

/* What a round works on, sized once for the whole run (N = P * n samples; a round has at
 * most N / 2 pairs either way of pairing). */
typedef struct {
    size_t P, K, N;
    char **ps, **pp, **cc;         /* the round's prompts; each sample's prompt and completion text */
    double *r, *logp, *lref;       /* reward, log pi and log pi_ref of each sample's tokens */
    fdpo_sample_rec *recs;         /* --pairing all-bt */
    fdpo_pref_pair *pairs;         /* over the samples' token ids */
    const fdpo_pref_pair **pair_ptr;
    double *pair_ref;              /* [2 * pairs] reference log-probs of chosen, rejected */
    size_t *pair_sample;           /* [2 * pairs] their samples */
    unsigned char *need_ref;       /* [N] the samples that get reference log-probs */
    size_t n_pairs;
} round_buf;

static void round_buf_init(round_buf *b, size_t P, size_t K) {
    memset(b, 0, sizeof *b);
    b->P = P; b->K = K; b->N = P * K;
    b->ps = fdpo_malloc(P * sizeof *b->ps);
    b->pp = fdpo_calloc(b->N, sizeof *b->pp);
    b->cc = fdpo_calloc(b->N, sizeof *b->cc);
    b->r = fdpo_calloc(b->N, sizeof(double));
    b->logp = fdpo_calloc(b->N, sizeof(double));
    b->lref = fdpo_calloc(b->N, sizeof(double));
    b->recs = fdpo_calloc(b->N, sizeof *b->recs);
    b->pairs = fdpo_calloc(b->N, sizeof *b->pairs);
    b->pair_ptr = fdpo_calloc(b->N, sizeof *b->pair_ptr);
    b->pair_ref = fdpo_calloc(2 * b->N, sizeof(double));
    b->pair_sample = fdpo_calloc(2 * b->N, sizeof(size_t));
    b->need_ref = fdpo_calloc(b->N, 1);
}

static void round_buf_free(round_buf *b) {
    free(b->ps); free(b->pp); free(b->cc); free(b->r); free(b->logp); free(b->lref);
    free(b->recs); free(b->pairs); free(b->pair_ptr); free(b->pair_ref);
    free(b->pair_sample); free(b->need_ref);
}

/* Pair q = samples w (chosen) and l (rejected): its record line in the pairs file and its
 * training pair over the sampled token ids (the prompt's ids, the completion's tokens with
 * the EOT the sampler drew, if any: exactly what was sampled and scored). */
static void add_pair(round_buf *b, round_stats *st, FILE *f, int32_t **ids, const size_t *lens,
                     const fdpo_sample *s, size_t w, size_t l) {
    /* an empty completion makes no pair, as an empty side of a preference file does not (the
     * rounds mode has always skipped them: docs/online.md): EOT at once, or a text that a stop
     * string, or a special token spelled as the stop, ended before any text (its record's
     * "rejected": "" could not be read back) */
    if (s[w].n_completion == 0 || s[l].n_completion == 0 || !*b->cc[w] || !*b->cc[l]) { st->pairs_empty++; return; }
    size_t q = b->n_pairs++;
    fdpo_pref_pair *x = &b->pairs[q];
    x->prompt = ids[s[w].prompt_index]; x->n_prompt = lens[s[w].prompt_index];
    x->chosen = s[w].tokens; x->n_chosen = s[w].n_tokens;
    x->rejected = s[l].tokens; x->n_rejected = s[l].n_tokens;
    x->line = q + 1; x->index = q; x->truncated = 0;
    b->pair_ptr[q] = x;
    b->pair_sample[2 * q] = w;   /* their reference log-probs: scored once the pairs are known */
    b->pair_sample[2 * q + 1] = l;
    st->pairs += 1;
    st->scores_margin += b->r[w] - b->r[l];
    if (!f) return;
    fdpo_pair_row_write(f, b->pp[w], b->cc[w], b->cc[l], b->r[w], b->r[l]);
}

/* log pi_ref of the samples marked in need (NAN for the others): one fdpo_samples_logp pass
 * over just them, in sample order, so a prompt's scored samples still share its prompt.
 * Best-worst pairing uses 2 of a prompt's n samples; the reference forward is the round's
 * scoring cost, so the others are not scored unless --ref-logps all asks for them. ref ==
 * policy: a LoRA policy whose reference is its base, itself with the adapters off.
 * Collective under MPI (every rank holds every sample and the same need). */
static int ref_logps(fdpo_gpt2 *ref, fdpo_gpt2 *policy, int32_t *const *ids, const size_t *lens, const fdpo_sample *s,
                     size_t N, const unsigned char *need, double *lref) {
    fdpo_sample *sub = fdpo_malloc((N ? N : 1) * sizeof *sub);
    size_t *at = fdpo_malloc((N ? N : 1) * sizeof *at), n = 0;
    double *lp = fdpo_malloc((N ? N : 1) * sizeof *lp);
    for (size_t i = 0; i < N; i++) {
        lref[i] = NAN;
        if (need[i]) { sub[n] = s[i]; at[n++] = i; }   /* shallow: the tokens stay the sample's */
    }
    int lora_on = ref == policy ? fdpo_lora_set_enabled(policy, 0) : 0;
    int rc = fdpo_samples_logp(ref, ids, lens, sub, n, lp);
    if (ref == policy) fdpo_lora_set_enabled(policy, lora_on);
    for (size_t q = 0; rc == 0 && q < n; q++) lref[at[q]] = lp[q];
    free(sub); free(at); free(lp);
    return rc;
}

/* objective/kl: the mean of log pi - log pi_ref over the samples that have log pi_ref (all, or
 * the pairs' with --ref-logps pairs); NAN when none has */
static double mean_kl(const double *logp, const double *lref, size_t N) {
    double kl = 0;
    size_t n = 0;
    for (size_t i = 0; i < N; i++)
        if (!isnan(lref[i])) { kl += logp[i] - lref[i]; n++; }
    return n ? kl / (double)n : NAN;
}

/* Sample from the policy, score, pair: fills b (pairs over *s's tokens: the caller frees *s,
 * *ids after training on them) and st; on rank 0 *pairs_text (*pairs_len bytes, the caller
 * frees it) is the pairs as preference JSONL, the round's record (written by the round's
 * checkpoint writer, not read back). ref == NULL: the reference is the policy
 * itself this round (round 0 of online DPO from --model; every round of iterative DPO), so
 * log pi_ref = log pi. log pi of a sample is the sampler's own sum (fdpo_sample.logp:
 * untempered, over the same tokens fdpo_samples_logp scores). */
static int make_round_pairs(const fdpo_online_opts *o, const fdpo_sample_config *sample, long k, fdpo_gpt2 *policy,
                            fdpo_sampler *sampler, fdpo_gpt2 *ref,
                            const fdpo_tokenizer *tok, char **prompts, size_t n_prompts, fdpo_reward *reward,
                            char **pairs_text, size_t *pairs_len, round_buf *b, int32_t ***ids, size_t **lens,
                            fdpo_sample **s, round_stats *st) {
    const size_t P = b->P, K = b->K, N = b->N;
    for (size_t i = 0; i < P; i++) b->ps[i] = prompts[((size_t)k * P + i) % n_prompts];
    double sec[2] = {0, 0};
    memset(st, 0, sizeof *st);
    b->n_pairs = 0;
    char what[32];
    snprintf(what, sizeof what, "round %ld", k);
    int rc = fdpo_sample_and_score_ranks(sampler, tok, sample, what, k, b->ps, P, K, reward, ids, lens, s,
                                         b->pp, b->cc, b->r, sec);
    for (size_t i = 0; rc == 0 && i < N; i++) b->logp[i] = (*s)[i].logp;
    st->t_sampling = sec[0];
    *pairs_text = NULL;
    *pairs_len = 0;
    FILE *f = rc == 0 && fdpo_dist_is_root() ? open_memstream(pairs_text, pairs_len) : NULL;   /* rank 0 writes */
    if (rc == 0 && fdpo_dist_is_root() && !f) rc = fdpo_error("round %ld: cannot buffer the pairs: %s", k, strerror(errno));
    const fdpo_sample *x = *s;
    if (rc == 0 && o->pairs_bt) {
        /* every disjoint pair of a prompt's completions, labels drawn from Bradley-Terry */
        for (size_t i = 0; i < N; i++)
            b->recs[i] = (fdpo_sample_rec){.prompt = b->pp[i], .completion = b->cc[i], .reward = b->r[i],
                                           .n_tokens = x[i].n_completion, .has_reward = 1, .line = i + 1,
                                           .has_n_tokens = 1};
        fdpo_pairs_config pc = {o->bt_scale, 0, 1, fdpo_round_seed(sample->seed, k)};
        fdpo_pair *bp = NULL;
        size_t nbp = 0;
        fdpo_pairs_skipped skipped = {0};
        rc = fdpo_make_pairs(b->recs, N, &pc, &bp, &nbp, &skipped);
        st->pairs_empty += skipped.empty;   /* dropped there, as add_pair drops them: the warning's count */
        for (size_t q = 0; rc == 0 && q < nbp; q++) add_pair(b, st, f, *ids, *lens, x, bp[q].chosen, bp[q].rejected);
        free(bp);
    }
    for (size_t p = 0; rc == 0 && !o->pairs_bt && p < P; p++) {
        size_t best = p * K, worst = best;
        for (size_t j = p * K; j < (p + 1) * K; j++) {
            if (b->r[j] > b->r[best]) best = j;
            if (b->r[j] < b->r[worst]) worst = j;
        }
        if (!(b->r[best] > b->r[worst]) || !strcmp(x[best].text, x[worst].text)) continue;
        add_pair(b, st, f, *ids, *lens, x, best, worst);
    }
    if (f && (fclose(f) != 0 || rc)) {
        if (rc == 0) rc = fdpo_error("round %ld: cannot buffer the pairs", k);
        free(*pairs_text);
        *pairs_text = NULL;
        *pairs_len = 0;
    }
    /* the reference log-probs of the pairs' samples (of all with --ref-logps all): l = log pi - log pi_ref */
    double t_logp = fdpo_now();
    if (rc == 0 && ref) {
        memset(b->need_ref, !o->ref_logps_pairs, N);
        for (size_t q = 0; q < 2 * b->n_pairs; q++) b->need_ref[b->pair_sample[q]] = 1;
        rc = ref_logps(ref, policy, *ids, *lens, *s, N, b->need_ref, b->lref);
    } else if (rc == 0) {
        memcpy(b->lref, b->logp, N * sizeof(double));
    }
    for (size_t q = 0; rc == 0 && q < 2 * b->n_pairs; q++) b->pair_ref[q] = b->lref[b->pair_sample[q]];
    st->t_scoring = sec[1] + (fdpo_now() - t_logp);
    if (rc == 0) {
        st->kl = mean_kl(b->logp, b->lref, N);
        for (size_t i = 0; i < N; i++) {
            st->scores += b->r[i];
            st->entropy += -b->logp[i];
            st->eos += x[i].finish == FDPO_FINISH_EOT;
            st->length += (double)x[i].n_completion;
        }
        st->scores /= (double)N; st->entropy /= (double)N;
        st->eos /= (double)N; st->length /= (double)N;
        st->scores_margin = st->pairs > 0 ? st->scores_margin / st->pairs : NAN;
    }
    return rc;
}

/* One line of DIR/metrics.jsonl per round, "step" = round + 1 (so a resume drops the lines of
 * rounds after the last complete one, as fdpo_metrics_open does for steps). */
static int write_round_metrics(fdpo_metrics *mw, long k, long rounds, double beta, const round_stats *st) {
    fdpo_metrics_begin(mw, (size_t)k + 1);
    fdpo_metrics_add(mw, "round", (double)k);
    fdpo_metrics_add(mw, "objective/scores", st->scores);
    fdpo_metrics_add(mw, "objective/kl", st->kl);
    fdpo_metrics_add(mw, "objective/entropy", st->entropy);
    fdpo_metrics_add(mw, "objective/non_score_reward", -beta * st->kl);
    fdpo_metrics_add(mw, "objective/rlhf_reward", st->scores - beta * st->kl);
    fdpo_metrics_add(mw, "val/contain_eos_token", st->eos);
    fdpo_metrics_add(mw, "val/num_completion_tokens", st->length);
    fdpo_metrics_add(mw, "pairs", st->pairs);
    fdpo_metrics_add(mw, "objective/scores_margin", st->scores_margin);   /* TRL OnlineDPO's name; "pairs/reward_gap" before */
    fdpo_metrics_add(mw, "time/sampling", st->t_sampling);
    fdpo_metrics_add(mw, "time/scoring", st->t_scoring);
    fdpo_metrics_add(mw, "time/training", st->t_training);
    fdpo_metrics_add(mw, "time/checkpoint", st->t_checkpoint);
    fdpo_metrics_add(mw, "time/round", st->t_round);
    fdpo_metrics_add(mw, "progress", (double)(k + 1) / (double)rounds);
    return fdpo_metrics_end(mw);
}

/* --lora-r: the policy trains adapters on its base and every round-K is one PEFT adapter on
 * the original base. A --model (or a completed round, on --resume) that holds an adapter is
 * continued; a plain --model gets fresh adapters from --seed, as the trainer would attach them.
 * Without --lora-r an adapter checkpoint is merged and trained in full, as fdpo dpo does. */
static int policy_lora_setup(const fdpo_online_opts *o, fdpo_gpt2 *policy, const char *from) {
    const fdpo_train_opts *t = &o->dpo.train;
    if (t->lora_r <= 0) { if (policy->lora) fdpo_lora_merge(policy); return 0; }
    if (!policy->lora) {
        fdpo_lora_opts lo = {t->lora_r, t->lora_alpha, t->lora_dropout, t->lora_targets};
        if (fdpo_lora_attach(policy, &lo, (uint64_t)t->seed)) return fdpo_error_context("--model %s", from);
        policy->lora->base_model = realpath(from, NULL);
    } else {   /* on --resume a completed round's adapter, whose targets the run chose */
        char owner[PATH_MAX + 16];
        snprintf(owner, sizeof owner, "%s%s", o->resume ? "" : "--model ", from);
        if (fdpo_lora_check_continued(policy, owner, t->lora_r, t->lora_alpha, t->lora_targets))
            return -1;
    }
    policy->lora->seed = (uint64_t)t->seed;   /* dropout masks */
    policy->lora->dropout = t->lora_dropout;
    return 0;
}

/* Samples decoded together: all of a round's (or step's) samples on this rank, up to
 * ONLINE_SAMPLE_BATCH_MAX (rl.c's cap), as fdpo rl samples its step, so that each weight is
 * read once per new token for all of them. A fixed 8 read the 124M weights twice per token
 * for the bench's 16 samples. A sample's RNG stream does not depend on the batch; the
 * decoder's logits can differ in their last bits with the number of rows decoded together,
 * so log-probs (and, rarely, a token drawn at a boundary) may differ from a smaller batch's. */
#define ONLINE_SAMPLE_BATCH_MAX 64
static fdpo_sample_config online_sample_config(const fdpo_online_opts *o) {
    fdpo_sample_config c = o->sample;
    c.seed = (uint64_t)o->dpo.train.seed;   /* the one seed (online.h): dpo.train.seed, the run's recorded "seed" */
    size_t pb, pe;
    fdpo_dist_shard((size_t)o->prompts_per_round, &pb, &pe);
    size_t mine = (pe - pb) * (size_t)o->n;
    c.batch = mine < ONLINE_SAMPLE_BATCH_MAX ? mine : ONLINE_SAMPLE_BATCH_MAX;
    if (c.batch < 1) c.batch = 1;
    return c;
}

/* Is path the LoRA policy's base (the file system's idea of the same directory)? */
static int is_lora_base(const fdpo_gpt2 *policy, const char *path) {
    if (!policy->lora || !policy->lora->base_model) return 0;
    char *real = realpath(path, NULL);
    int same = real && !strcmp(real, policy->lora->base_model);
    free(real);
    return same;
}

/* What both modes need, before any model or data is read: the paths, an f-DPO loss that has
 * a reference (simpo has none: pairs scored against pi_ref are what online f-DPO is), n >= 2. */
void fdpo_online_round_dpo_opts(fdpo_dpo_run_opts *d) {
    d->dpo.layout = FDPO_LAYOUT_SHARED;
    d->eval_fraction = 0;
    d->pref.on_long = FDPO_PREF_LONG_TRUNCATE;
    d->pref.on_bad = FDPO_PREF_SKIP;
}

void fdpo_online_opts_default(fdpo_online_opts *o) {
    memset(o, 0, sizeof *o);
    fdpo_dpo_run_opts_default(&o->dpo);
    /* a round's f-DPO run: a few pairs trained once at a larger constant lr; the prompts are
     * shared by the pairs, no held-out split, long completions truncated, empty ones skipped */
    o->dpo.train.lr = 1e-4; o->dpo.train.schedule = "constant"; o->dpo.train.epochs = 1;
    o->dpo.train.eval_every = 0;
    fdpo_online_round_dpo_opts(&o->dpo);
    o->reward_opts.timeout_s = 60;
    o->rounds = 3; o->prompts_per_round = 16; o->n = 4;
    o->bt_scale = 1;
    o->sample = (fdpo_sample_config){.temperature = 1, .top_p = 1, .max_new_tokens = 32, .seed = (uint64_t)o->dpo.train.seed, .batch = 8};   /* seed: not read, dpo.train.seed's is */
}

/* a pair needs two different completions of a prompt: greedy decoding (temperature 0, top-k 1,
 * a top-p at or below 1/V) gives all --n the same text, so every prompt ties and nothing ever
 * trains (the run "succeeded" with the initial weights). vocab: the policy's, 0 before it is read. */
int fdpo_online_sample_check(const fdpo_online_opts *o, size_t vocab) {
    return fdpo_sample_distinct_check(&o->sample, o->n, vocab, "online pairs need different completions of a prompt",
                                      "no pair could ever form");
}

int fdpo_online_opts_check(const fdpo_online_opts *o) {
    if (!o->model) return fdpo_error("--model: required (the policy to align)");
    if (!o->prompts) return fdpo_error("--data: required (prompt file)");
    if (!o->reward) return fdpo_error("--reward: required (afinn, length, cmd:PROG)");
    if (!o->out) return fdpo_error("--out: required (run directory)");
    if (fdpo_path_record_check("--model", o->model) || fdpo_path_record_check("--data", o->prompts) || fdpo_path_record_check("--ref", o->ref) ||
        fdpo_path_record_check("--lexicon", o->reward_opts.lexicon) || fdpo_reward_spec_path_check("--reward", o->reward))
        return -1;
    if (o->dpo.dpo.loss.kind == FDPO_LOSS_SIMPO) return fdpo_error("--loss simpo: online f-DPO needs a reference");
    if (fdpo_pref_loss_check(&o->dpo.dpo.loss)) return -1;
    if (o->prompts_per_round < 1) return fdpo_error("--prompts-per-round: must be >= 1 (got %ld)", o->prompts_per_round);
    if (o->n < 2) return fdpo_error("--n: online pairs need at least 2 completions per prompt (got %ld)", o->n);
    /* a round's (or step's) samples must be countable and fit the machine: --n past that wrapped
     * their size and failed as "out of memory allocating 8 bytes", a count beyond its memory
     * as "out of memory allocating N bytes", naming neither flag */
    if (fdpo_samples_count_check("--prompts-per-round", (size_t)o->prompts_per_round, (size_t)o->n)) return -1;
    /* the shared training options (--lr, --seed, --log-every, --lora-*, ...), checked as sft and
     * dpo check them before anything is sampled: each round's f-DPO run and step mode's trainer
     * take them, from --model into --out (step mode's steps take --prompts-per-round prompts,
     * checked above, in place of --batch-size x --grad-accum) */
    fdpo_train_opts t = o->dpo.train;
    t.out = o->out;
    t.init = o->model;
    t.resume = o->resume;
    if (fdpo_train_opts_check(&t)) return -1;
    if (fdpo_train_out_ref_check(o->out, o->ref, o->model) || fdpo_train_out_reward_check(o->out, o->reward)) return -1;
    /* not on --resume: a run saved before this rule resumes with its saved --lexicon (sacpo's
     * stages always resume; fdpo_sacpo_run checks both of its specs) */
    if (!o->resume && !o->dpo.train.resume && fdpo_reward_lexicon_check(o->reward_opts.lexicon, &o->reward, 1))
        return -1;
    if (fdpo_sample_config_check(&o->sample)) return -1;
    return fdpo_online_sample_check(o, 0);
}

int fdpo_online_rounds_opts_check(const fdpo_online_opts *o) {
    if (fdpo_online_opts_check(o)) return -1;
    /* a round is redone, never resumed half-way: the trainer's mid-run stop and restart do not apply */
    if (o->dpo.train.stop_at > 0 || o->dpo.train.overwrite)
        return fdpo_error("%s: --mode step only (rounds mode resumes after the last complete round)",
                          o->dpo.train.stop_at > 0 ? "--stop-at" : "--overwrite");
    if (o->dpo.train.save_every > 0)   /* it was accepted, recorded and ignored */
        return fdpo_error("--save-every: --mode step only (rounds mode saves every round, whole)");
    if (o->rounds < 1) return fdpo_error("--rounds: must be >= 1 (got %ld)", o->rounds);
    if (o->pairs_bt && fdpo_pairs_config_check(&(fdpo_pairs_config){.scale = o->bt_scale})) return -1;
    return 0;
}

/* The flags every rank must share: --rounds and the ones online.json fixes (--precision
 * among them). A rank with fewer rounds finished while the others waited in the next
 * round's gather; mixed precisions were refused only once a round trained, or never. */
static uint64_t round_flags_hash(const fdpo_online_opts *o) {
    fdpo_settings s = {0};
    fdpo_online_round_settings(o, &s);
    uint64_t h = fdpo_hash64(FDPO_HASH_INIT, &o->rounds, sizeof o->rounds);
    for (size_t i = 0; i < s.n; i++) {
        if (!s.v[i].fixed) continue;
        char v[256];
        fdpo_setting_text(&s.v[i], v, sizeof v);
        h = fdpo_hash64(h, s.v[i].key, strlen(s.v[i].key) + 1);
        h = fdpo_hash64(h, v, strlen(v) + 1);
    }
    fdpo_settings_free(&s);
    return h;
}

static int online_run(const fdpo_online_opts *o) {
    if (fdpo_online_rounds_opts_check(o)) return -1;
    char **prompts = NULL;
    size_t n_prompts = 0, *prompt_lines = NULL;
    if (fdpo_read_prompts(o->prompts, &prompts, &prompt_lines, &n_prompts)) return fdpo_error_context("--data");   /* the error names the file */
    if (n_prompts == 0) { fdpo_free_strings(prompts, 0); free(prompt_lines); return fdpo_error("--data %s: no prompts", o->prompts); }
    fdpo_reward *reward = fdpo_reward_create(o->reward, &o->reward_opts);
    if (reward && fdpo_reward_check_agree(reward)) { fdpo_reward_free(reward); reward = NULL; }
    if (!reward) { fdpo_free_strings(prompts, n_prompts); free(prompt_lines); return -1; } /* the message names --reward */
    int has_reward_hash;   /* what the reward read (online_plan) */
    const uint64_t reward_hash = fdpo_reward_content_hash1(o->reward, o->reward_opts.lexicon, &has_reward_hash);
    /* one run per directory: a second one would sample and rename the same rounds */
    /* one OUT for the job, said before anything is made, as the trainers' (fdpo_checkpoint_recover):
     * rank 0 alone writes the rounds, and a rank given another --out was ignored */
    int rc = fdpo_dist_check_same_path("--out", o->out), locked = 0;   /* what it names, not its text */
    if (rc == 0 && fdpo_dist_is_root()) locked = (rc = fdpo_dir_lock(o->out, "--out")) == 0;   /* rank 0 holds it */
    /* rank 0 alone makes OUT, under its lock: another rank's mkdir ran before rank 0's refusal
     * (inside a running run's OUT, whose saves then carried the new directory) */
    if (rc == 0 && fdpo_dist_is_root()) rc = fdpo_mkdir_p(o->out);
    /* under the lock nobody else writes here: a killed writer's NAME.tmp.PID is stale (as a trainer's recovery) */
    if (rc == 0 && fdpo_dist_is_root()) fdpo_remove_stale_tmp(o->out);
    rc = fdpo_dist_all_ok(rc);
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
        /* as step mode and the trainers: a mistyped --out is not a fresh run */
        if (start == 0 && o->resume)
            rc = fdpo_error("--resume: %s holds no completed round (nothing to resume; drop --resume to start the run)", o->out);
        /* a trainer's checkpoint or sacpo stages: the rounds' metrics.jsonl would replace that run's */
        const char *held = rc == 0 ? fdpo_out_holds_run(o->out, FDPO_RUN_ROUNDS | FDPO_RUN_TOKENIZER) : NULL;
        if (held) rc = fdpo_error("--out %s: already holds %s of another run; choose another --out", o->out, held);
        /* every rank must see the same completed rounds (OUT on a shared file system) */
        if (rc == 0) rc = fdpo_dist_check_agree("the completed rounds in --out", (uint64_t)start);
        if (rc == 0) rc = fdpo_dist_check_agree("the flags (--rounds, --precision, ...)", round_flags_hash(o));
        if (start >= o->rounds && rc == 0) fdpo_log(FDPO_LOG_INFO, "all %ld rounds already complete in %s", o->rounds, o->out);
        else if (start > 0 && rc == 0) fdpo_log(FDPO_LOG_INFO, "resuming after round %ld", start - 1);
        if (start > 0 && start < o->rounds && rc == 0) rc = check_round_precision(o->out, start - 1);
        if (start > 0 && start < o->rounds && rc == 0) rc = online_plan(o, start, prompts_hash(prompts, n_prompts), NULL, has_reward_hash,
                                                                       reward_hash);
    }
    /* every rank on rank 0's bf16 route before round 0's sampler and reference scores (the
     * decoder keeps the route it starts with), after a resume's pin */
    if (rc == 0) rc = fdpo_dist_agree_bf16_route();
    const char *ref0 = o->ref ? o->ref : o->model;
    fdpo_progress prog;
    int prog_on = rc == 0 && start < o->rounds;   /* the loop runs; its progress line unless --quiet */
    /* the models stay in memory for the whole run: the policy (trained in place, round by
     * round) and, with a fixed reference, the reference; both are read from disk once */
    fdpo_gpt2 *policy = NULL, *ref = NULL;
    fdpo_tokenizer *tok = NULL;
    plan_weights weights = {0};
    /* the reference is the round's starting policy itself in iterative DPO (round 0: --ref
     * when one is given, else --model), and in round 0 of online DPO whose reference is
     * --model (by any spelling of its path: fdpo_settings_same_path, as resume compares paths):
     * then log pi_ref = log pi, no second scoring */
    const int ref_is_model = !o->ref || fdpo_settings_same_path(o->ref, o->model);
    const int need_ref = !o->ref_update_round || (start == 0 && !ref_is_model);
    if (prog_on) {
        char *from = start > 0 ? round_path(o->out, start - 1, "") : fdpo_strdup(o->model);
        policy = fdpo_checkpoint_load_model(from);
        tok = policy ? fdpo_checkpoint_load_tokenizer(from) : NULL;
        if (!policy || !tok) rc = fdpo_error_context("round %ld: loading %s", start, from);
        else rc = fdpo_trainer_check_lm(&policy->config, start > 0 ? "--resume" : "--model", from);
        /* conversational prompts rendered with the run's --chat-template (sacpo's online stages;
         * NULL, fdpo online's: the checkpoint's), as step mode's trainer tokenizer renders them */
        if (rc == 0) rc = fdpo_trainer_set_chat_template(tok, o->dpo.train.chat_template);
        if (rc == 0) rc = policy_lora_setup(o, policy, from);
        free(from);
        if (rc == 0 && need_ref && is_lora_base(policy, ref0)) {
            ref = policy;   /* the base with the adapters off: no second copy */
        } else if (rc == 0 && need_ref) {
            ref = fdpo_trainer_load_ref(o->ref, o->model, tok, policy->config.vocab_size, o->dpo.train.lora_r <= 0, NULL);
            if (!ref) rc = -1;
            if (ref) ref->params_frozen = 1;   /* never written: --precision bf16 converts it once per run */
        }
        /* round 0's reference: --ref (iterative DPO's later ones are the policy) */
        const fdpo_gpt2 *ref_fit = ref && ref != policy ? ref : NULL;
        if (rc == 0) rc = fdpo_prompts_check_fit(tok, prompts, prompt_lines, n_prompts, &policy->config,
                                                 ref_fit ? &ref_fit->config : NULL, o->sample.max_new_tokens, o->prompts);
        if (rc == 0) rc = fdpo_online_sample_check(o, policy->config.vocab_size);
        if (rc == 0) weights = plan_weights_of(policy, ref);
        if (start > 0) rc = plan_weights_check(o, &weights, rc);
    }
    round_buf buf;
    round_buf_init(&buf, (size_t)o->prompts_per_round, (size_t)o->n);
    /* one decoder for every round (its cache, buffers and bf16 packed weights; re-packed in
     * place at each round's sampling, after the round before trained the policy) */
    fdpo_sampler *sampler = prog_on && rc == 0 ? fdpo_sampler_create(policy) : NULL;
    const fdpo_sample_config sample = online_sample_config(o);
    /* one pair of AdamW moment buffers for the whole run: every round's f-DPO starts a fresh
     * optimizer in them (fdpo_adamw_reset) instead of allocating and faulting in 2x the
     * parameters per round */
    fdpo_adamw opt = {0};
    int opt_ok = 0;
    round_writer writer = {0};
    /* the metrics of complete rounds only: a line written for a round that then did not
     * become round-K (a crash before the rename) is dropped and written again */
    fdpo_metrics mw = {0};
    if (prog_on && rc == 0) rc = fdpo_metrics_open(&mw, o->out, (size_t)start);
    if (prog_on && rc == 0) {
        const fdpo_train_opts *t = &o->dpo.train;
        fdpo_gpt2 *trained = policy->lora ? &policy->lora->view : policy;
        opt_ok = (rc = fdpo_adamw_init(&opt, trained->n_params, t->beta1, t->beta2, t->adam_eps, t->weight_decay)) == 0;
    }
    if (prog_on && rc == 0 && !o->dpo.train.quiet) fdpo_progress_start(&prog, "online rounds", (size_t)o->rounds);
    for (long k = start; rc == 0 && k < o->rounds; k++) {
        char *prev = k > 0 ? round_path(o->out, k - 1, "") : fdpo_strdup(o->model);
        const char *ref_name = o->ref_update_round && k > 0 ? prev : ref0;
        char *pairs = round_path(o->out, k, ".pairs.jsonl"), *partial = round_path(o->out, k, ".partial");
        char *done = round_path(o->out, k, "");
        round_stats st;
        int32_t **ids = NULL;
        size_t *lens = NULL;
        fdpo_sample *samples = NULL;
        char *pairs_text = NULL, *state_text = NULL;
        size_t pairs_len = 0;
        fdpo_log(FDPO_LOG_INFO, "round %ld (%ld of %ld): sampling %ld x %ld from %s", k, k + 1, o->rounds,
                 o->prompts_per_round, o->n, prev);
        const double t_round = fdpo_now();
        fdpo_gpt2 *round_ref = (o->ref_update_round && k > 0) || (k == 0 && ref_is_model) ? NULL : ref;
        /* (round k-1's writer may still be reading the policy: sampling and scoring only read it) */
        rc = make_round_pairs(o, &sample, k, policy, sampler, round_ref, tok, prompts, n_prompts, reward, &pairs_text, &pairs_len, &buf, &ids,
                              &lens, &samples, &st);
        if (o->ref_update_round && ref && ref != policy) {   /* --ref scored round 0 only: not held for the rest */
            fdpo_gpt2_free(ref);
            ref = NULL;
        }
        if (rc == 0) {
            fdpo_log(FDPO_LOG_INFO, "round %ld: mean reward %.4g, KL %.4g, %g pairs (scores margin %.4g)", k,
                     st.scores, st.kl, st.pairs, st.scores_margin);
            if (is_dir(partial) && fdpo_dist_is_root()) rc = fdpo_remove_tree(partial);
            /* and the pairs record a killed writer wrote before it (the round's training state
             * records the path's resolved form only where a file is there: a resumed round's
             * training_state.json gained "data.resolved"); what cannot be removed (a directory
             * of that name) the writer's rename names */
            if (rc == 0 && fdpo_dist_is_root()) (void)unlink(pairs);
            rc = fdpo_dist_all_ok(rc);
        }
        /* the policy is about to change (or to be saved again): round k-1's files must be out */
        double t_wait = fdpo_now();
        if (rc == 0) rc = round_writer_join(&writer);
        st.t_checkpoint = fdpo_now() - t_wait;
        if (rc == 0 && st.pairs == 0 && st.pairs_empty) {
            fdpo_log(FDPO_LOG_WARN, "round %ld: no pairs: %zu had an empty completion (EOT drawn first, or --stop before "
                     "any text), skipped; the other prompts' completions got the same reward. The policy carries over "
                     "unchanged", k, st.pairs_empty);
        } else if (rc == 0 && st.pairs == 0) {
            /* nothing to learn from: the policy carries over unchanged */
            fdpo_log(FDPO_LOG_WARN, "round %ld: every prompt's %ld completions got the same reward: no pairs, the policy "
                     "carries over unchanged (raise --n or the sampling temperature)", k, o->n);
        } else if (rc == 0) {
            /* f-DPO on the round's pairs straight from memory: the trainer of `fdpo dpo`, with
             * the pairs' reference log-probs taken from the scoring above; it saves nothing
             * (the writer below does) and hands its final state over */
            fdpo_dpo_run_opts d = o->dpo;
            d.train.init = prev;
            d.train.init_opt = &opt;
            d.train.out = partial;
            d.train.out_claimed = 1;   /* inside --out, whose lock this run holds */
            d.train.resume = 0;
            d.train.overwrite = 1;
            d.train.skip_moments = 1;   /* a round is redone, never resumed half-way: nothing reads them */
            d.train.quiet = 1;          /* the rounds' own progress line below is the run's */
            d.data = pairs;
            d.ref = ref_name;
            fdpo_train_state ts;
            double t0 = fdpo_now();
            /* round_ref NULL: the reference is this round's starting policy, whose first step
             * takes it from its own forward (the scoring's log pi is another float order) */
            rc = fdpo_dpo_train_pairs(&d, policy, tok, buf.pair_ptr, buf.n_pairs, buf.pair_ref, !round_ref, &ts);
            st.t_training = fdpo_now() - t0;
            /* its pairs, from memory: round-K.pairs.jsonl is written with the round, after this */
            if (rc) fdpo_error_context("round %ld: f-DPO on its %zu pairs", k, buf.n_pairs);
            else {
                if (fdpo_dist_is_root()) state_text = fdpo_train_state_text(&ts);
                fdpo_train_state_free(&ts);
            }
        }
        if (samples) fdpo_samples_free(samples, buf.N);
        if (ids) fdpo_free_ids(ids, lens, buf.P);
        if (fdpo_dist_is_root()) {   /* rank 0 writes; the others go on with the policy in memory */
            /* the metrics line before the writer's rename: a crash between the two drops it on --resume */
            st.t_round = fdpo_now() - t_round;
            if (rc == 0 && k == 0) rc = online_plan(o, 0, prompts_hash(prompts, n_prompts), &weights, has_reward_hash, reward_hash);
            if (rc == 0) rc = write_round_metrics(&mw, k, o->rounds, o->dpo.dpo.loss.beta, &st);
            if (rc == 0) {
                rc = round_writer_start(&writer, k, partial, done, pairs, policy, tok, state_text, pairs_text, pairs_len);
                state_text = pairs_text = NULL;   /* the writer's now */
            }
        }
        free(state_text); free(pairs_text);
        if (rc == 0) rc = fdpo_dist_barrier();
        if (rc == 0) {
            char extra[128];
            snprintf(extra, sizeof extra, "reward %.4g kl %.4g pairs %g", st.scores, st.kl, st.pairs);
            if (!o->dpo.train.quiet) fdpo_progress_step(&prog, (size_t)k + 1, NAN, o->dpo.train.lr, NAN, NAN, extra);
        }
        /* a stop requested (fdpo_trainer_request_stop: sacpo's online stages) while the round
         * ran: the round is complete and its writer saves it (joined below), the next is not begun */
        if (rc == 0 && k + 1 < o->rounds && fdpo_trainer_take_stop())
            rc = fdpo_error("interrupted after round %ld (%ld of %ld; the complete rounds in %s are kept; %s)", k, k + 1,
                            o->rounds, o->out, o->dpo.train.continue_how ? o->dpo.train.continue_how : "continue with --resume");
        free(prev); free(pairs); free(partial); free(done);
    }
    /* the last round's files (also after a failure: a finished round stays finished) */
    if (writer.running) {
        int wrc = round_writer_join(&writer);
        if (rc == 0) rc = wrc;
    }
    if (prog_on && rc == 0 && !o->dpo.train.quiet) fdpo_progress_end(&prog);
    fdpo_sampler_free(sampler);
    round_buf_free(&buf);
    if (opt_ok) fdpo_adamw_free(&opt);
    if (ref != policy) fdpo_gpt2_free(ref);
    fdpo_gpt2_free(policy);
    if (tok) fdpo_tokenizer_free(tok);
    fdpo_metrics_close(&mw);
    if (locked) fdpo_dir_unlock(o->out);
    fdpo_reward_free(reward);
    fdpo_free_strings(prompts, n_prompts);
    free(prompt_lines);
    return rc;
}

void fdpo_online_round_settings(const fdpo_online_opts *o, fdpo_settings *s) {
    fdpo_train_opts_settings(&o->dpo.train, s);
    fdpo_dpo_run_opts_settings(&o->dpo, s);
    /* the run's own paths (the template's are set per round), resolved: a resume that spells
     * them another way (R/x and ./R/x; sacpo's stages live under its --out) is the same run */
    const char *const keys[3] = {"model", "ref", "data"}, *const paths[3] = {o->model, o->ref, o->prompts};
    for (int i = 0; i < 3; i++) {
        char *real = paths[i] ? realpath(paths[i], NULL) : NULL;
        fdpo_settings_path(s, keys[i], real ? real : paths[i], 1);
        free(real);
    }
    /* fixed here: a round of bf16 after rounds of fp32 (or the reverse) is another run (--lora-r,
     * also without LoRA, is fixed in fdpo_train_opts_settings: a resume can neither add nor
     * drop the adapters) */
    fdpo_settings_str(s, "precision", fdpo_precision_name(fdpo_get_precision()), 1);
    fdpo_settings_str(s, "mode", "rounds", 1);   /* --mode's own value (it said "round"; hunt of wave 46) */
    /* resolved as the paths above, and compared as the file it names: an online.json of an
     * older fdpo holds the spec as typed (sacpo's stages pass theirs as given) */
    char *reward = o->reward ? fdpo_reward_spec_resolved(o->reward) : NULL;
    fdpo_settings_reward_spec(s, "reward", reward, 1);
    free(reward);
    fdpo_settings_int(s, "n", (long long)o->n, 1);
    fdpo_settings_int(s, "prompts-per-round", (long long)o->prompts_per_round, 1);
    fdpo_settings_str(s, "pairing", o->pairs_bt ? "all-bt" : "best-worst", 1);
    fdpo_settings_num(s, "bt-scale", o->bt_scale, 1);
    fdpo_settings_str(s, "ref-logps", o->ref_logps_pairs ? "pairs" : "all", 1);
    fdpo_settings_str(s, "ref-update", o->ref_update_round ? "round" : "never", 1);
    fdpo_sample_config_settings(&o->sample, &o->reward_opts, s);
}

void fdpo_online_settings_for_resume(fdpo_settings *saved, fdpo_settings *now, int init_in_run) {
    /* an online.json of an earlier fdpo records rounds mode as "round", which --mode never
     * took: the same mode as "rounds" (hunt of wave 46) */
    const fdpo_setting *md = fdpo_settings_find(saved, "mode");
    if (md && md->type == FDPO_SETTING_STR && md->str && !strcmp(md->str, "round"))
        fdpo_settings_str(saved, "mode", "rounds", md->fixed);
    /* --lora-targets is compared by the modules it selects, against the completed round's
     * adapter (policy_lora_setup): as typed, PEFT's default named explicitly was a change */
    static const char *const by_modules[] = {"lora-targets", NULL};
    fdpo_settings_remove(saved, by_modules);
    fdpo_settings_remove(now, by_modules);
    /* a sacpo stage's starting model, the stage before in its OUT: sacpo's plan pins it and
     * ref_hash its content (fdpo_train_opts.init_in_run); a moved OUT is the same run */
    static const char *const init_keys[] = {"model", "model.resolved", NULL};
    if (init_in_run) fdpo_settings_remove(saved, init_keys);
}

/* ---- --mode step ---- */

void fdpo_online_step_settings(const fdpo_online_opts *o, fdpo_settings *s) {
    char div[64];
    fdpo_divergence_name(&o->dpo.dpo.loss.div, div, sizeof div);
    fdpo_settings_str(s, "mode", "step", 1);
    fdpo_settings_path(s, "model", o->model, 1);
    fdpo_settings_path(s, "ref", o->ref, 1);
    fdpo_settings_path(s, "data", o->prompts, 1);
    fdpo_settings_reward_spec(s, "reward", o->reward, 1);
    fdpo_settings_str(s, "divergence", div, 1);
    fdpo_settings_str(s, "loss", fdpo_loss_name(o->dpo.dpo.loss.kind), 1);
    fdpo_settings_num(s, "beta", o->dpo.dpo.loss.beta, 1);
    fdpo_settings_num(s, "label-smoothing", o->dpo.dpo.loss.label_smoothing, 1);
    fdpo_settings_int(s, "n", (long long)o->n, 1);
    fdpo_settings_int(s, "prompts-per-round", (long long)o->prompts_per_round, 1);
    fdpo_settings_str(s, "ref-logps", o->ref_logps_pairs ? "pairs" : "all", 1);
    fdpo_sample_config_settings(&o->sample, &o->reward_opts, s);
}

int fdpo_online_step_run(const fdpo_online_opts *o) {
    if (fdpo_online_opts_check(o)) return -1;
    if (o->ref_update_round) return fdpo_error("--ref-update round: belongs to --mode rounds (step mode's reference is fixed)");
    if (o->pairs_bt) return fdpo_error("--pairing all-bt: --mode step pairs the best with the worst sample");
    if (o->dpo.train.steps < 1) return fdpo_error("--steps: --mode step needs --steps >= 1 (got %ld)", o->dpo.train.steps);
    /* an fdpo_trainer run over the prompts (file order, prompts_per_round per step): it
     * checkpoints with training state, stops and resumes as the other trainers do */
    fdpo_train_opts t = fdpo_train_opts_over_prompts(&o->dpo.train, o->model, o->prompts, o->prompts_per_round,
                                                     "--prompts-per-round");
    t.resume = o->resume;
    fdpo_prompt_run pr;
    int rc = fdpo_prompt_run_open(&pr, &t, o->prompts, o->reward, &o->reward_opts, o->ref, o->model);
    fdpo_gpt2 *ref = pr.ref;   /* or the policy itself (pr.ref_is_base), once the trainer opens */
    fdpo_settings extra = {0};
    fdpo_online_step_settings(o, &extra);
    fdpo_trainer tr;
    fdpo_dpo d = {0};
    int tr_ok = 0, d_ok = 0;
    if (!rc) tr_ok = (rc = fdpo_trainer_open(&tr, &t, "online-step", pr.tok, pr.n_prompts, fdpo_prompts_hash(pr.prompts, pr.n_prompts), &extra)) == 0;
    fdpo_settings_free(&extra);
    fdpo_gpt2 *policy = tr_ok ? tr.model : NULL;
    if (pr.ref_is_base) ref = policy;
    /* one decoder for the whole run, re-packed in place (bf16) at each step's sampling */
    fdpo_sampler *sampler = policy ? fdpo_sampler_create(policy) : NULL;
    tr.progress.phase = "online";
    fdpo_dpo_config cfg = o->dpo.dpo;
    cfg.micro_batch = 0;
    if (!rc) rc = fdpo_prompts_check_fit(pr.tok, pr.prompts, pr.prompt_lines, pr.n_prompts, &policy->config,
                                         ref && ref != policy ? &ref->config : NULL, o->sample.max_new_tokens, o->prompts);
    if (!rc) rc = fdpo_online_sample_check(o, policy->config.vocab_size);
    if (!rc) d_ok = (rc = fdpo_dpo_init(&d, policy, ref, &cfg)) == 0;
    /* a step takes each prompt at most once (fdpo_train_step_items) */
    const size_t P = tr_ok ? tr.step_items : 1, K = (size_t)o->n, N = P * K;
    const fdpo_sample_config sample = online_sample_config(o);
    char **ps = fdpo_malloc(P * sizeof *ps), **pp = fdpo_malloc(N * sizeof *pp), **cc = fdpo_malloc(N * sizeof *cc);
    double *r = fdpo_malloc(N * sizeof(double)), *lref = fdpo_malloc(N * sizeof(double)), *lpol = fdpo_malloc(N * sizeof(double));
    fdpo_pref_pair *pairs = fdpo_calloc(P, sizeof *pairs);
    const fdpo_pref_pair **pptr = fdpo_malloc(P * sizeof *pptr);
    double *pair_ref = fdpo_malloc(2 * P * sizeof *pair_ref);
    size_t *pair_sample = fdpo_malloc(2 * P * sizeof *pair_sample);
    unsigned char *need_ref = fdpo_malloc(N);
    /* --ref naming --model by another spelling (./M, M/, an absolute path) is --model too */
    const int ref_is_model = !o->ref || fdpo_settings_same_path(o->ref, o->model);
    while (rc == 0 && !fdpo_trainer_done(&tr)) {
        const long step = (long)tr.state.step;   /* 0-based; the sampling seed is (seed, step) */
        fdpo_trainer_begin_step(&tr);
        for (size_t i = 0; i < P; i++) ps[i] = pr.prompts[fdpo_trainer_next_item(&tr)];
        int32_t **ids = NULL;
        size_t *lens = NULL;
        fdpo_sample *s = NULL;
        double sec[2] = {0, 0}, t_score, t_train = 0;
        char what[32];   /* the step as its metrics line counts it */
        snprintf(what, sizeof what, "step %ld", step + 1);
        rc = fdpo_sample_and_score_ranks(sampler, pr.tok, &sample, what, step, ps, P, K, pr.reward, &ids, &lens, &s, pp, cc, r, sec);
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
            pair_sample[2 * np] = best;   /* their reference log-probs: scored below */
            pair_sample[2 * np + 1] = worst;
            pptr[np++] = q;
            gap += r[best] - r[worst];
        }
        t_score = fdpo_now();
        /* log pi: the sampler's own sums (untempered, over the tokens scored here); log pi_ref:
         * the same at step 0 of a run whose reference is --model, else one scoring pass over
         * the pairs' samples (all with --ref-logps all) */
        for (size_t i = 0; !rc && i < N; i++) lpol[i] = s[i].logp;
        if (!rc && step == 0 && ref_is_model) memcpy(lref, lpol, N * sizeof *lref);
        else if (!rc) {
            memset(need_ref, !o->ref_logps_pairs, N);
            for (size_t q = 0; q < 2 * np; q++) need_ref[pair_sample[q]] = 1;
            rc = ref_logps(ref, policy, ids, lens, s, N, need_ref, lref);
        }
        for (size_t q = 0; !rc && q < 2 * np; q++) pair_ref[q] = lref[pair_sample[q]];
        sec[1] += fdpo_now() - t_score;
        if (!rc) kl = mean_kl(lpol, lref, N);
        for (size_t i = 0; rc == 0 && i < N; i++) {
            scores += r[i]; ent -= lpol[i]; eos += s[i].finish == FDPO_FINISH_EOT;
        }
        fdpo_dpo_metrics m = {0};
        t_train = fdpo_now();
        /* under MPI every rank holds the same pairs: one micro-batch per rank, so each computes
         * the loss and gradient of its own block (fdpo_dist_mine: block r on rank r) and the
         * trainer sums them; the step's denominators are the whole step's (fdpo_dpo_step), so
         * the sum is the single process's gradient up to the order of the float additions */
        d.cfg.micro_batch = (np + (size_t)fdpo_dist_size() - 1) / (size_t)fdpo_dist_size();
        /* step 0 of a run whose reference is --model: the policy is the reference, its own
         * forward gives the reference's log-probs (implicit rewards exactly 0) */
        d.ref_is_policy = step == 0 && ref_is_model;
        if (!rc && np > 0) rc = fdpo_dpo_step(&d, pptr, np, pair_ref, 1, &m, NULL);
        d.ref_is_policy = 0;
        /* m.tokens: the positions this rank's block ran through the policy (the trainer sums the ranks') */
        if (!rc && np > 0) rc = fdpo_trainer_step(&tr, m.tokens);
        else if (!rc) {
            /* no pairs (every prompt's samples tied): nothing to learn from, so the policy and
             * AdamW stay as they are (weight decay and momentum would move it); the step counts */
            tr.state.step++;
            tr.last_lr = fdpo_schedule_lr(&tr.sched, tr.state.step - 1);
            tr.last_grad_norm = NAN;
            tr.last_tokens_per_sec = 0;
        }
        t_train = fdpo_now() - t_train;
        if (!rc && fdpo_trainer_want_log(&tr)) {
            double beta = o->dpo.dpo.loss.beta;
            fdpo_trainer_metrics_begin(&tr, np ? m.loss : NAN);
            fdpo_metrics *mw = &tr.metrics;
            fdpo_metrics_add(mw, "objective/scores", scores / (double)N);
            fdpo_metrics_add(mw, "objective/kl", kl);
            fdpo_metrics_add(mw, "objective/entropy", ent / (double)N);
            fdpo_metrics_add(mw, "objective/non_score_reward", -beta * kl);
            fdpo_metrics_add(mw, "objective/rlhf_reward", scores / (double)N - beta * kl);
            fdpo_metrics_add(mw, "val/contain_eos_token", eos / (double)N);
            fdpo_metrics_add(mw, "rewards/chosen", np ? m.rewards_chosen : NAN);
            fdpo_metrics_add(mw, "rewards/rejected", np ? m.rewards_rejected : NAN);
            fdpo_metrics_add(mw, "rewards/margins", np ? m.margins : NAN);
            fdpo_metrics_add(mw, "rewards/accuracies", np ? m.accuracy : NAN);
            fdpo_metrics_add(mw, "pairs", (double)np);
            fdpo_metrics_add(mw, "objective/scores_margin", np ? gap / (double)np : NAN);
            /* TRL OnlineDPOTrainer's: the policy's summed log-probs of the pairs (its f-DPO forward) */
            fdpo_metrics_add(mw, "logps/chosen", np ? m.logps_chosen : NAN);
            fdpo_metrics_add(mw, "logps/rejected", np ? m.logps_rejected : NAN);
            fdpo_metrics_add(mw, "beta", beta);
            fdpo_metrics_add(mw, "time/sampling", sec[0]);
            fdpo_metrics_add(mw, "time/scoring", sec[1]);
            fdpo_metrics_add(mw, "time/training", t_train);
            rc = fdpo_metrics_end(mw);
            char extra_text[96];
            snprintf(extra_text, sizeof extra_text, "reward %.4g kl %.4g pairs %zu", scores / (double)N, kl, np);
            fdpo_trainer_progress(&tr, np ? m.loss : NAN, extra_text);
        }
        if (s) fdpo_samples_free(s, N);
        if (ids) fdpo_free_ids(ids, lens, P);
        if (!rc) rc = fdpo_trainer_maybe_save(&tr);
    }
    fdpo_sampler_free(sampler);
    if (d_ok) fdpo_dpo_free(&d);
    if (tr_ok && fdpo_trainer_close(&tr, rc == 0)) rc = -1;
    free(ps); free(pp); free(cc); free(r); free(lref); free(lpol); free(pairs); free(pptr); free(pair_ref);
    free(pair_sample); free(need_ref);
    fdpo_prompt_run_close(&pr, &t, tr_ok);
    return rc;
}

/* a resumed run's bf16 route pin (fdpo_train_pin_bf16_route) is this run's alone: a later run
 * in the process takes its own route, as in a fresh process */
int fdpo_online_run(const fdpo_online_opts *o) {
    const char *route_pinned_before = fdpo_bf16_route_pinned();
    int rc = online_run(o);
    fdpo_bf16_route_restore(route_pinned_before);
    return rc;
}
