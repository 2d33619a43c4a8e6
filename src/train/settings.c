/* Run settings: the options of a run as typed key/value pairs, keyed by their flag /
 * config-key names, saved in training_state.json and compared on --resume; plus the one
 * validity check and the defaults of fdpo_train_opts. */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fdpo/dist.h"
#include "fdpo/eval.h"
#include "fdpo/lora.h"
#include "fdpo/trainer.h"
#include "train/settings_json.h"

/* ---------------------------------------------------------------- settings */

static fdpo_setting *settings_push(fdpo_settings *s, const char *key, fdpo_setting_type type, int fixed) {
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->v[i].key, key)) continue;
        free(s->v[i].str);           /* replace: the last value given for a key wins */
        s->v[i] = (fdpo_setting){.key = s->v[i].key, .type = type, .fixed = fixed};
        return &s->v[i];
    }
    if (s->n == s->cap) { s->cap = s->cap ? 2 * s->cap : 32; s->v = fdpo_realloc(s->v, s->cap * sizeof *s->v); }
    fdpo_setting *x = &s->v[s->n++];
    *x = (fdpo_setting){.key = fdpo_strdup(key), .type = type, .fixed = fixed};
    return x;
}

void fdpo_settings_num(fdpo_settings *s, const char *key, double v, int fixed) {
    settings_push(s, key, FDPO_SETTING_NUM, fixed)->num = v;
}
void fdpo_settings_int(fdpo_settings *s, const char *key, long long v, int fixed) {
    /* a JSON number is a double, which cJSON writes with 15 digits: from 10^15 the value is
     * kept as its digits (a resume read --seed 9007199254740993 back as ...992, 2^53 - 1 as
     * ...990, and a batch size of 2^63 - 1 as LONG_MIN) */
    if (fdpo_json_whole_exact(v)) { fdpo_settings_num(s, key, (double)v, fixed); return; }
    char digits[32];
    snprintf(digits, sizeof digits, "%lld", v);
    fdpo_settings_str(s, key, digits, fixed);
}
void fdpo_settings_bool(fdpo_settings *s, const char *key, int v, int fixed) {
    settings_push(s, key, FDPO_SETTING_BOOL, fixed)->num = v ? 1 : 0;
}
void fdpo_settings_str(fdpo_settings *s, const char *key, const char *v, int fixed) {
    fdpo_setting *x = settings_push(s, key, v ? FDPO_SETTING_STR : FDPO_SETTING_NULL, fixed);
    if (v) x->str = fdpo_strdup(v);
}

/* KEY.resolved: the setting beside a path that holds where it resolved (flag keys are short) */
static const char *resolved_key(const char *key, char *buf, size_t n) {
    snprintf(buf, n, "%s.resolved", key);
    return buf;
}

void fdpo_settings_path(fdpo_settings *s, const char *key, const char *v, int fixed) {
    fdpo_setting *x = settings_push(s, key, v ? FDPO_SETTING_STR : FDPO_SETTING_NULL, fixed);
    if (v) x->str = fdpo_strdup(v);
    x->path = 1;
    /* and where it resolved (KEY.resolved, not a flag): as typed, a moved project resumes from
     * its new place; resolved, a resume from another working directory finds the file (a LoRA
     * run's relative --model base could not be loaded from elsewhere, and its absolute spelling
     * was refused as another model) */
    char *real = v ? realpath(v, NULL) : NULL;
    if (real && strcmp(real, v)) {
        char rkey[96];
        fdpo_settings_str(s, resolved_key(key, rkey, sizeof rkey), real, 0);
    }
    free(real);
}

void fdpo_settings_reward_spec(fdpo_settings *s, const char *key, const char *v, int fixed) {
    fdpo_setting *x = settings_push(s, key, v ? FDPO_SETTING_STR : FDPO_SETTING_NULL, fixed);
    if (v) x->str = fdpo_strdup(v);
    x->spec = 1;
}

const char *fdpo_settings_path_to_use(const fdpo_settings *saved, const char *key, const char *typed) {
    /* the file the run used, while it is there (the typed path from another directory may name
     * another file of the same name: a resume from projB of a run started in projA with --model
     * pol trained on projB/pol); else, a moved project, the typed path */
    char rkey[96];
    const fdpo_setting *r = fdpo_settings_find(saved, resolved_key(key, rkey, sizeof rkey));
    if (!typed || !r || r->type != FDPO_SETTING_STR || access(r->str, F_OK) != 0) return typed;
    return r->str;
}

void fdpo_settings_keep_typed_paths(fdpo_settings *now, const fdpo_settings *saved) {
    for (size_t i = 0; i < now->n; i++) {
        const fdpo_setting *x = &now->v[i], *was = fdpo_settings_find(saved, x->key);
        if (!x->path || x->type != FDPO_SETTING_STR || !was || was->type != FDPO_SETTING_STR || !strcmp(x->str, was->str) ||
            !fdpo_settings_same_path(fdpo_settings_path_to_use(saved, x->key, was->str), x->str))
            continue;   /* as typed before, or another file (a flag that may change) */
        char *real = realpath(x->str, NULL), *key = fdpo_strdup(x->key), rkey[96];
        const int fixed = x->fixed;
        fdpo_settings_str(now, key, was->str, fixed);   /* in place: entry i */
        now->v[i].path = 1;
        resolved_key(key, rkey, sizeof rkey);
        if (real && strcmp(real, was->str)) {
            const size_t n = now->n;
            fdpo_settings_str(now, rkey, real, 0);
            if (now->n > n) {   /* new: beside its path, where fdpo_settings_path puts it (the same bytes) */
                const fdpo_setting r = now->v[n];
                memmove(&now->v[i + 2], &now->v[i + 1], (n - i - 1) * sizeof *now->v);
                now->v[i + 1] = r;
            }
        } else {
            fdpo_settings_remove(now, (const char *const[]){rkey, NULL});   /* after entry i */
        }
        free(real);
        free(key);
    }
}

int fdpo_settings_same_path(const char *a, const char *b) {
    if (!strcmp(a, b)) return 1;
    char *ra = realpath(a, NULL), *rb = ra ? realpath(b, NULL) : NULL;
    int same = ra && rb && !strcmp(ra, rb);
    free(ra);
    free(rb);
    return same;
}

const fdpo_setting *fdpo_settings_find(const fdpo_settings *s, const char *key) {
    for (size_t i = 0; i < s->n; i++) if (!strcmp(s->v[i].key, key)) return &s->v[i];
    return NULL;
}

void fdpo_settings_free(fdpo_settings *s) {
    for (size_t i = 0; i < s->n; i++) { free(s->v[i].key); free(s->v[i].str); }
    free(s->v);
    memset(s, 0, sizeof *s);
}

void fdpo_setting_text(const fdpo_setting *x, char *buf, size_t n) {
    switch (x->type) {
    case FDPO_SETTING_NULL: snprintf(buf, n, "(none)"); break;
    case FDPO_SETTING_NUM:   /* a whole number in full (a seed of 2^53 read "9.00719925474099e+15") */
        if (x->num == floor(x->num) && fabs(x->num) <= 9007199254740992.0) snprintf(buf, n, "%.0f", x->num);
        else fdpo_fmt_double(buf, n, x->num);
        break;
    case FDPO_SETTING_BOOL: snprintf(buf, n, "%s", x->num != 0 ? "true" : "false"); break;
    case FDPO_SETTING_STR: snprintf(buf, n, "%s", x->str); break;
    }
}

int fdpo_number_text_equal(const char *text, double v) {
    if (!*text) return 0;
    char *end;
    errno = 0;
    long long i = strtoll(text, &end, 10);   /* digits: exactly (2^53 + 1 is not 2^53) */
    if (!*end && !errno) return v == floor(v) && fabs(v) < 9223372036854775808.0 && (long long)v == i;
    double d = strtod(text, &end);
    return !*end && d == v;
}

/* Same value? A state written before settings were typed holds text ("0.001"): compare
 * that with the text of the typed value. */
static int setting_equal(const fdpo_setting *a, const fdpo_setting *b) {
    if (a->type == b->type) {
        if (a->type == FDPO_SETTING_STR)   /* the saved one, read back, is plain text: either marks a path */
            return a->path || b->path ? fdpo_settings_same_path(a->str, b->str)
                 : a->spec || b->spec ? fdpo_reward_spec_same(a->str, b->str) : !strcmp(a->str, b->str);
        return a->type == FDPO_SETTING_NULL || a->num == b->num;
    }
    char ta[128], tb[128];
    fdpo_setting_text(a, ta, sizeof ta);
    fdpo_setting_text(b, tb, sizeof tb);
    if (a->type == FDPO_SETTING_BOOL || b->type == FDPO_SETTING_BOOL) {  /* legacy "1"/"0" */
        const fdpo_setting *t = a->type == FDPO_SETTING_BOOL ? b : a, *bo = a->type == FDPO_SETTING_BOOL ? a : b;
        return t->type == FDPO_SETTING_STR && (atoi(t->str) != 0) == (bo->num != 0);
    }
    if (a->type == FDPO_SETTING_NULL || b->type == FDPO_SETTING_NULL)      /* legacy "" = none */
        return !strcmp(a->type == FDPO_SETTING_NULL ? b->str : a->str, "");
    if (a->type == FDPO_SETTING_NUM || b->type == FDPO_SETTING_NUM) {
        /* a number and text: the same value, compared as numbers (an integer past 2^53 is now
         * saved as its digits, a state of an earlier fdpo holds the double; a version-1 state
         * wrote "1e+06" for 1000000) */
        const fdpo_setting *t = a->type == FDPO_SETTING_NUM ? b : a, *nm = a->type == FDPO_SETTING_NUM ? a : b;
        if (t->type == FDPO_SETTING_STR) return fdpo_number_text_equal(t->str, nm->num);
    }
    return !strcmp(ta, tb);
}

void fdpo_settings_remove(fdpo_settings *s, const char *const *keys) {
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++) {
        int drop = 0;
        for (const char *const *k = keys; *k; k++) drop |= !strcmp(s->v[i].key, *k);
        if (drop) { free(s->v[i].key); free(s->v[i].str); } else s->v[n++] = s->v[i];
    }
    s->n = n;
}

int fdpo_settings_check_resume(const fdpo_settings *saved, const fdpo_settings *now) {
    return fdpo_settings_check_resume_how(saved, now, NULL);
}

int fdpo_settings_check_resume_how(const fdpo_settings *saved, const fdpo_settings *now, const char *how) {
    if (!how) how = "it cannot change on --resume";
    for (size_t i = 0; i < now->n; i++) {
        const fdpo_setting *x = &now->v[i], *was = fdpo_settings_find(saved, x->key);
        if (!was || !(x->fixed || was->fixed)) continue;
        if (x->path && x->type == FDPO_SETTING_STR && was->type == FDPO_SETTING_STR) {
            /* a path is the file the run used while that is there (KEY.resolved), whatever the
             * spelling or the working directory; else (a moved project) the typed path */
            const char *res = fdpo_settings_path_to_use(saved, x->key, was->str);
            if (res != was->str) {
                if (fdpo_settings_same_path(res, x->str)) continue;
                char a[128];
                fdpo_setting_text(x, a, sizeof a);
                return fdpo_error("--%s: %s differs from the saved run's %s (%s; %s)", x->key, a, was->str, res, how);
            }
        }
        if (setting_equal(x, was)) continue;
        char a[128], b[128];
        fdpo_setting_text(x, a, sizeof a);
        fdpo_setting_text(was, b, sizeof b);
        return fdpo_error("--%s: %s differs from the saved run's %s (%s)", x->key, a, b, how);
    }
    return 0;
}

cJSON *fdpo_settings_to_json(const fdpo_settings *s) {
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; i < s->n; i++) {
        const fdpo_setting *x = &s->v[i];
        cJSON *v = x->type == FDPO_SETTING_NUM ? cJSON_CreateNumber(x->num)
                 : x->type == FDPO_SETTING_BOOL ? cJSON_CreateBool(x->num != 0)
                 : x->type == FDPO_SETTING_STR ? cJSON_CreateString(x->str) : cJSON_CreateNull();
        cJSON_AddItemToObject(o, x->key, v);
    }
    return o;
}

int fdpo_settings_from_json(fdpo_settings *s, const cJSON *o, const cJSON *fixed_list, const char *path) {
    const cJSON *e;
    cJSON_ArrayForEach(e, o) {
        /* keys renamed in wave 28 with their flags: pretrain/sft's "val-fraction" (dpo-like
         * runs saved it, unused, beside their own "eval-fraction", which then wins) and
         * online's "pairs" (best-worst|all-bt; eval's --pairs is a file) */
        static const char *const RENAMED[][2] = {{"val-fraction", "eval-fraction"}, {"pairs", "pairing"}};
        const char *key = e->string;
        int skip = 0;
        for (size_t r = 0; r < sizeof RENAMED / sizeof RENAMED[0]; r++)
            if (!strcmp(key, RENAMED[r][0])) {
                skip = cJSON_GetObjectItemCaseSensitive(o, RENAMED[r][1]) != NULL;
                key = RENAMED[r][1];
            }
        if (skip) continue;
        int fixed = 0;
        if (fixed_list) {
            const cJSON *f;
            cJSON_ArrayForEach(f, fixed_list) if (cJSON_IsString(f) && !strcmp(f->valuestring, e->string)) fixed = 1;
        } else {
            fixed = 1;   /* version 1 states saved only the fixed settings */
        }
        if (cJSON_IsNumber(e)) fdpo_settings_num(s, key, e->valuedouble, fixed);
        else if (cJSON_IsBool(e)) fdpo_settings_bool(s, key, cJSON_IsTrue(e), fixed);
        else if (cJSON_IsString(e)) fdpo_settings_str(s, key, e->valuestring, fixed);
        else if (cJSON_IsNull(e)) fdpo_settings_str(s, key, NULL, fixed);
        else return fdpo_error("%s: setting '%s' must be a number, boolean, string or null", path, e->string);
    }
    return 0;
}

/* ---------------------------------------------------------------- train options */

/* Every fdpo_train_opts field a run's result depends on (fixed) or that a resumed run
 * should keep unless given again (not fixed), under its flag name. */
typedef enum { T_LONG, T_DOUBLE, T_BOOL, T_STR } field_type;
static const struct { const char *key; field_type type; size_t offset; int fixed; } TRAIN_FIELDS[] = {
    {"seq-len", T_LONG, offsetof(fdpo_train_opts, seq_len), 1},
    {"batch-size", T_LONG, offsetof(fdpo_train_opts, batch_size), 1},
    {"grad-accum", T_LONG, offsetof(fdpo_train_opts, grad_accum), 1},
    {"steps", T_LONG, offsetof(fdpo_train_opts, steps), 1},
    {"epochs", T_DOUBLE, offsetof(fdpo_train_opts, epochs), 1},
    {"lr", T_DOUBLE, offsetof(fdpo_train_opts, lr), 1},
    {"schedule", T_STR, offsetof(fdpo_train_opts, schedule), 1},
    {"warmup-steps", T_LONG, offsetof(fdpo_train_opts, warmup_steps), 1},
    {"min-lr-ratio", T_DOUBLE, offsetof(fdpo_train_opts, min_lr_ratio), 1},
    {"weight-decay", T_DOUBLE, offsetof(fdpo_train_opts, weight_decay), 1},
    {"beta1", T_DOUBLE, offsetof(fdpo_train_opts, beta1), 1},
    {"beta2", T_DOUBLE, offsetof(fdpo_train_opts, beta2), 1},
    {"adam-eps", T_DOUBLE, offsetof(fdpo_train_opts, adam_eps), 1},
    {"grad-clip", T_DOUBLE, offsetof(fdpo_train_opts, grad_clip), 1},
    {"seed", T_LONG, offsetof(fdpo_train_opts, seed), 1},
    /* a preference command's own --eval-fraction (fdpo_pref_data_settings) replaces it */
    {"eval-fraction", T_DOUBLE, offsetof(fdpo_train_opts, val_fraction), 1},
    {"shuffle", T_BOOL, offsetof(fdpo_train_opts, shuffle), 1},
    {"chat-template", T_STR, offsetof(fdpo_train_opts, chat_template), 1},
    /* kept from the saved run unless given again (a resumed run used to drop them) */
    {"eval-every", T_LONG, offsetof(fdpo_train_opts, eval_every), 0},
    {"save-every", T_LONG, offsetof(fdpo_train_opts, save_every), 0},
    {"log-every", T_LONG, offsetof(fdpo_train_opts, log_every), 0},
    {"eval-max-seqs", T_LONG, offsetof(fdpo_train_opts, eval_max_seqs), 0},
    {"threads", T_LONG, offsetof(fdpo_train_opts, threads), 0},
};

static int is_llama(const fdpo_train_opts *o) { return o->arch && !strcmp(o->arch, "llama"); }

void fdpo_train_opts_settings(const fdpo_train_opts *o, fdpo_settings *s) {
    const char *base = (const char *)o;
    for (size_t i = 0; i < sizeof TRAIN_FIELDS / sizeof TRAIN_FIELDS[0]; i++) {
        const char *p = base + TRAIN_FIELDS[i].offset;
        switch (TRAIN_FIELDS[i].type) {
        case T_LONG: fdpo_settings_int(s, TRAIN_FIELDS[i].key, *(const long *)p, TRAIN_FIELDS[i].fixed); break;
        case T_DOUBLE: fdpo_settings_num(s, TRAIN_FIELDS[i].key, *(const double *)p, TRAIN_FIELDS[i].fixed); break;
        case T_BOOL: fdpo_settings_bool(s, TRAIN_FIELDS[i].key, *(const int *)p, TRAIN_FIELDS[i].fixed); break;
        case T_STR: fdpo_settings_str(s, TRAIN_FIELDS[i].key, *(const char *const *)p, TRAIN_FIELDS[i].fixed); break;
        }
    }
    /* kept from the saved run unless given again: a resumed bf16 run stays bf16 (the
     * precision is the process's, fdpo_set_precision, not a train option) */
    fdpo_settings_str(s, "precision", fdpo_precision_name(fdpo_get_precision()), 0);
    /* a bf16 run's route (vdpbf16ps, fp32 FMA, fallback): chosen by a timing probe, so a
     * resume pins the saved one (fdpo_train_pin_bf16_route), never compares it */
    if (fdpo_get_precision() == FDPO_PRECISION_BF16) fdpo_settings_str(s, "bf16-route", fdpo_bf16_route(), 0);
    /* --lora-r always, 0 (full fine-tuning) included, so that --resume can neither drop a LoRA
     * run's adapters nor add adapters to a full run: with the key only in LoRA runs, --resume
     * --lora-r 0 left out every lora-* key, compared nothing, and saved the state without them
     * (after which any LoRA values were accepted). A state saved before without the key is
     * a full fine-tune and still resumes: a key the saved run lacks is not compared. */
    fdpo_settings_int(s, "lora-r", (long long)o->lora_r, 1);
    if (o->lora_r > 0) {   /* the adapters' shape and training, for a LoRA run only */
        fdpo_settings_num(s, "lora-alpha", o->lora_alpha, 1);
        fdpo_settings_num(s, "lora-dropout", o->lora_dropout, 1);
        fdpo_settings_str(s, "lora-targets", o->lora_targets, 1);
    }
    /* a random init's family and Llama shape: --resume refuses another architecture */
    if (o->init) return;
    int llama = is_llama(o);
    fdpo_settings_str(s, "arch", llama ? "llama" : "gpt2", 1);
    if (!llama) return;
    fdpo_gpt2_config c = fdpo_train_opts_model_config(o, 0);
    fdpo_settings_int(s, "n-kv-head", (long long)c.n_kv_head, 1);
    fdpo_settings_int(s, "intermediate-size", (long long)c.intermediate_size, 1);
    fdpo_settings_num(s, "rope-theta", c.rope_theta, 1);
    fdpo_settings_bool(s, "tie-word-embeddings", c.tie_word_embeddings, 1);
}

long fdpo_train_opts_intermediate_size(long n_embd) {
    long f = (8 * n_embd + 2) / 3;   /* ceil(8C/3) */
    return (f + 31) / 32 * 32;
}

fdpo_gpt2_config fdpo_train_opts_model_config(const fdpo_train_opts *o, size_t vocab_size) {
    fdpo_gpt2_config c = {
        .vocab_size = vocab_size, .n_positions = (size_t)o->n_positions,
        .n_embd = (size_t)o->n_embd, .n_layer = (size_t)o->n_layer, .n_head = (size_t)o->n_head,
        .layer_norm_epsilon = 1e-5f,
    };
    if (!is_llama(o)) return c;
    c.arch = FDPO_ARCH_LLAMA;
    snprintf(c.model_type, sizeof c.model_type, "llama");
    c.n_kv_head = (size_t)(o->n_kv_head > 0 ? o->n_kv_head : o->n_head);
    c.intermediate_size = (size_t)(o->intermediate_size > 0 ? o->intermediate_size
                                                            : fdpo_train_opts_intermediate_size(o->n_embd));
    c.rope_theta = o->rope_theta;
    c.tie_word_embeddings = o->tie_word_embeddings != 0;
    return c;
}

void fdpo_train_opts_default(fdpo_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_layer = 4; o->n_head = 4; o->n_embd = 128; o->n_positions = 256;
    o->seq_len = 128; o->batch_size = 8; o->grad_accum = 1;
    o->epochs = 1; o->lr = 3e-4; o->schedule = "cosine";
    o->weight_decay = 0.01; o->beta1 = 0.9; o->beta2 = 0.999; o->adam_eps = 1e-8; o->grad_clip = 1;
    o->seed = FDPO_DEFAULT_SEED; o->eval_every = 100; o->log_every = 1;
    o->val_fraction = 0.05; o->shuffle = 1;
    o->arch = "gpt2"; o->rope_theta = 10000; o->tie_word_embeddings = 1;
    o->lora_alpha = FDPO_LORA_ALPHA_DEFAULT;   /* PEFT's LoraConfig defaults: alpha 8, dropout 0 */
}

void fdpo_sft_opts_default(fdpo_train_opts *o) {
    fdpo_train_opts_default(o);
    o->lr = 2e-5; o->epochs = 3;
}

int fdpo_train_opts_check(const fdpo_train_opts *o) {
    if (!o->out) return fdpo_error("--out: required (the checkpoint directory to write)");
    if (fdpo_path_record_check("--out", o->out) || fdpo_path_record_check("--model", o->init) || fdpo_path_record_check("--tokenizer", o->tokenizer) ||
        fdpo_path_record_check("--data", o->data))
        return -1;
    if (o->resume && o->overwrite) return fdpo_error("--overwrite: cannot be combined with --resume");
    if (o->seq_len < 1) return fdpo_error("--seq-len: %ld must be >= 1", o->seq_len);
    if (o->batch_size < 1) return fdpo_error("--batch-size: %ld must be >= 1", o->batch_size);
    if (o->grad_accum < 1) return fdpo_error("--grad-accum: %ld must be >= 1", o->grad_accum);
    if (o->steps < 0) return fdpo_error("--steps: %ld must be >= 0", o->steps);
    if (o->steps > FDPO_MAX_STEPS)
        return fdpo_error("--steps: %ld is more than 2^53 = %lld, the most a training state records exactly (its --resume "
                          "could not continue the run)", o->steps, FDPO_MAX_STEPS);
    if (o->steps == 0 && !(o->epochs > 0)) return fdpo_error("--epochs: %g must be > 0 when --steps is 0", o->epochs);
    if (o->stop_at < 0) return fdpo_error("--stop-at: %ld must be >= 0", o->stop_at);
    if (!(o->lr >= 0)) return fdpo_error("--lr: %g must be >= 0", o->lr);
    fdpo_sched_kind k;
    if (fdpo_schedule_parse(o->schedule, &k)) return -1;
    if (o->warmup_steps < 0) return fdpo_error("--warmup-steps: %ld must be >= 0", o->warmup_steps);
    if (!(o->min_lr_ratio >= 0 && o->min_lr_ratio <= 1))
        return fdpo_error("--min-lr-ratio: %s is not in [0, 1]", fdpo_shortest(o->min_lr_ratio).s);
    if (o->min_lr_ratio != 0 && o->schedule && !strcmp(o->schedule, "constant"))   /* the floor of cosine and linear */
        return fdpo_error("--min-lr-ratio: has no effect with --schedule constant (give --schedule cosine or linear)");
    if (!(o->weight_decay >= 0)) return fdpo_error("--weight-decay: %g must be >= 0", o->weight_decay);
    if (!(o->beta1 >= 0 && o->beta1 < 1)) return fdpo_error("--beta1: %g is not in [0, 1)", o->beta1);
    if (!(o->beta2 >= 0 && o->beta2 < 1)) return fdpo_error("--beta2: %g is not in [0, 1)", o->beta2);
    if (!(o->adam_eps > 0)) return fdpo_error("--adam-eps: %g must be > 0", o->adam_eps);
    if (!(o->grad_clip >= 0)) return fdpo_error("--grad-clip: %g must be >= 0", o->grad_clip);
    /* finite, as --lora-alpha: an inf --adam-eps trained nothing, inf epochs was "the run has no steps" */
    const struct { const char *flag; double v; } finite[] = {
        {"--lr", o->lr}, {"--weight-decay", o->weight_decay}, {"--adam-eps", o->adam_eps}, {"--grad-clip", o->grad_clip},
        {"--epochs", o->steps == 0 ? o->epochs : 0}};
    for (size_t i = 0; i < sizeof finite / sizeof finite[0]; i++)
        if (!isfinite(finite[i].v)) return fdpo_error("%s: %g is not a finite number", finite[i].flag, finite[i].v);
    if (!(o->val_fraction >= 0 && o->val_fraction < 1)) return fdpo_error("--eval-fraction: %g is not in [0, 1)", o->val_fraction);
    if (o->eval_every < 0) return fdpo_error("--eval-every: %ld must be >= 0", o->eval_every);
    if (o->save_every < 0) return fdpo_error("--save-every: %ld must be >= 0", o->save_every);
    if (o->log_every < 1) return fdpo_error("--log-every: %ld must be >= 1", o->log_every);
    if (o->eval_max_seqs < 0) return fdpo_error("--eval-max-seqs: %ld must be >= 0", o->eval_max_seqs);
    if (fdpo_threads_check(o->threads)) return -1;   /* fdpo_trainer_open's (int) cast must not wrap */
    if (o->seed < 0) return fdpo_error("--seed: %ld must be >= 0", o->seed);
    if (o->lora_r < 0) return fdpo_error("--lora-r: %ld must be >= 1 (0: no LoRA)", o->lora_r);
    if (o->lora_r > 0) {   /* the targets are checked against the model when it is loaded */
        if (!isfinite(o->lora_alpha) || !(o->lora_alpha > 0)) return fdpo_error("--lora-alpha: %g must be a number > 0", o->lora_alpha);
        if (!(o->lora_dropout >= 0 && o->lora_dropout < 1)) return fdpo_error("--lora-dropout: %g must be in [0, 1)", o->lora_dropout);
        if (!o->init && !o->resume)
            return fdpo_error("--lora-r: LoRA adapts a pretrained model: give it with --model (a random init has nothing to adapt)");
        if (o->init && fdpo_settings_same_path(o->out, o->init))   /* the first save replaced the base */
            return fdpo_error("--out %s: is --model %s, the frozen base of the adapters: the first save would replace "
                              "the base with the adapter; give another --out", o->out, o->init);
        /* --model an adapter: its base, which the adapter saved in OUT would name (itself) */
        char *base = o->init && !o->resume && fdpo_lora_is_checkpoint(o->init) ? fdpo_lora_peft_base(o->init) : NULL;
        int same = base && fdpo_settings_same_path(o->out, base);
        free(base);
        if (same)
            return fdpo_error("--out %s: is the LoRA base of --model %s (its base_model_name_or_path); the adapter saved "
                              "there would replace that base and name itself as its base: give another --out", o->out, o->init);
    } else if (o->lora_targets || o->lora_dropout != 0 || o->lora_alpha != FDPO_LORA_ALPHA_DEFAULT) {
        /* a LoRA flag without --lora-r (its default value cannot be told from no flag) */
        return fdpo_error("--%s: has no effect without --lora-r R", o->lora_targets ? "lora-targets"
                          : o->lora_dropout != 0 ? "lora-dropout" : "lora-alpha");
    }
    /* before any sampling or reference cache (online and sacpo met it when the trainer opened) */
    if (o->allreduce_overlap && fdpo_dist_size() > 1 &&
        (o->lora_r > 0 || (o->init && !o->resume && fdpo_lora_is_checkpoint(o->init)) ||
         (o->resume && fdpo_lora_is_checkpoint(o->out))))
        return fdpo_error("%s", FDPO_OVERLAP_LORA_REFUSED);
    /* the model config's own bounds (fdpo_gpt2_config_check, fdpo_llama_config_check), named by
     * flag: past them the message named a config.json field ("config: n_layer 4294967297 must
     * be in [1, 1024]"). GPT-2's heads are bounded by dividing n_embd, Llama's also by 1024. */
    const long max_heads = is_llama(o) ? 1024 : 65536, max_positions = is_llama(o) ? 1L << 24 : 1L << 20;
    if (o->n_layer < 1 || o->n_layer > 1024) return fdpo_error("--n-layer: %ld must be in [1, 1024]", o->n_layer);
    if (o->n_head < 1 || o->n_head > max_heads) return fdpo_error("--n-head: %ld must be in [1, %ld]", o->n_head, max_heads);
    if (o->n_embd < 1 || o->n_embd > 65536 || o->n_embd % o->n_head)
        return fdpo_error("--n-embd: %ld must be a multiple of --n-head (%ld) in [1, 65536]", o->n_embd, o->n_head);
    if (o->n_positions < 1 || o->n_positions > max_positions)
        return fdpo_error("--n-positions: %ld must be in [1, %ld]", o->n_positions, max_positions);
    if (o->arch && strcmp(o->arch, "gpt2") && strcmp(o->arch, "llama"))
        return fdpo_error("--arch: '%s' is not a model family fdpo can initialise (gpt2, llama)", o->arch);
    if (is_llama(o)) {
        if (o->n_kv_head < 0 || (o->n_kv_head > 0 && o->n_head % o->n_kv_head))
            return fdpo_error("--n-kv-head: %ld must divide --n-head %ld (0: n-head)", o->n_kv_head, o->n_head);
        if ((o->n_embd / o->n_head) % 2)
            return fdpo_error("--n-embd: --arch llama needs an even head size (n-embd / n-head = %ld; rotary "
                              "embeddings rotate pairs)", o->n_embd / o->n_head);
        if (o->intermediate_size < 0 || o->intermediate_size > (1L << 20))
            return fdpo_error("--intermediate-size: %ld is not in [0, %ld] (0: 8/3 * n-embd rounded up to 32)",
                              o->intermediate_size, 1L << 20);
        if (!(o->rope_theta > 0) || !isfinite(o->rope_theta))
            return fdpo_error("--rope-theta: %g must be a positive number", o->rope_theta);
    }
    if (!o->init && !o->resume && o->seq_len > o->n_positions)
        return fdpo_error("--seq-len: %ld exceeds --n-positions %ld", o->seq_len, o->n_positions);
    return 0;
}
