/* SACPO: stepwise safety-constrained alignment, each stage an f-DPO run; P-SACPO merges
 * (include/fdpo/sacpo.h, docs/sacpo.md). */
#include <cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "fdpo/core.h"
#include "fdpo/eval.h"
#include "fdpo/lora.h"
#include "fdpo/dist.h"
#include "fdpo/io.h"
#include "fdpo/merge.h"
#include "fdpo/sacpo.h"
#include "fdpo/trainer.h"
#include "train/settings_json.h"
#include "fdpo/tokenizer.h"

void fdpo_sacpo_opts_default(fdpo_sacpo_opts *o) {
    memset(o, 0, sizeof *o);
    fdpo_dpo_run_opts_default(&o->dpo);
    /* the online stages are `fdpo online` runs, with its defaults: each round's f-DPO at lr
     * 1e-4, constant schedule (docs/online.md); they took the dpo template's 1e-6, linear */
    fdpo_online_opts_default(&o->online);
}

static int online_stages_check(const fdpo_sacpo_opts *o);
static int sacpo_resuming(const fdpo_sacpo_opts *o);

int fdpo_sacpo_opts_check(const fdpo_sacpo_opts *o) {
    if (!o->dpo.train.init) return fdpo_error("--model: required (the checkpoint to align)");
    if (!o->reward_data && !o->reward_spec)
        return fdpo_error("--reward-data or --reward: required (preference JSONL for the reward stage, or a reward spec to run it online)");
    if (o->reward_data && o->reward_spec)
        return fdpo_error("--reward-data and --reward: give one (the reward stage trains on the file or online against the spec)");
    if (!o->safety_data && !o->safety_spec)
        return fdpo_error("--safety-data or --safety: required (preference JSONL for the safety stage, or a safety spec to run it online)");
    if (o->safety_data && o->safety_spec)
        return fdpo_error("--safety-data and --safety: give one (the safety stage trains on the file or online against the spec)");
    if (o->reward_spec || o->safety_spec) {
        if (!o->online.prompts) return fdpo_error("--data: required with --reward/--safety (the prompts the online stages sample from)");
        /* --rounds, --n, the sampling, ...: each online stage's options, checked below as fdpo
         * online checks them (online_stages_check) */
        /* a stage's rounds save every round, whole (fdpo online refuses it as --mode step's) */
        if (!o->reward_data && !o->safety_data && o->dpo.train.save_every > 0)
            return fdpo_error("--save-every: only stages on files use it (--reward-data/--safety-data); with --reward "
                              "and --safety both stages are online, and an online stage saves every round, whole");
        if (o->online.ref_update_round)
            return fdpo_error("--ref-update round: a SACPO stage's reference is its starting model (the stepwise "
                              "composition of DESIGN §4 needs it); use never");
    } else if (o->online.prompts)
        return fdpo_error("--data: the prompts of online stages; with --reward-data and --safety-data no stage is online");
    if (!o->out) return fdpo_error("--out: required (the directory that receives every stage)");
    if (fdpo_path_record_check("--out", o->out) || fdpo_path_record_check("--reward-data", o->reward_data) ||
        fdpo_path_record_check("--safety-data", o->safety_data) || fdpo_path_record_check("--data", o->online.prompts))
        return -1;
    if (o->n_lambdas == 0) return fdpo_error("--lambda: at least one multiplier is required");
    if (fdpo_beta_check(o->dpo.dpo.loss.beta)) return -1;   /* before beta / lambda, which names --lambda */
    for (size_t i = 0; i < o->n_lambdas; i++) {
        const fdpo_number_text lambda = fdpo_shortest(o->lambdas[i]);
        if (!(o->lambdas[i] > 0) || !isfinite(o->lambdas[i]))
            return fdpo_error("--lambda: %s must be a positive number (lambda = 0 is the reward stage alone: OUT/reward)", lambda.s);
        if (i > 0 && !(o->lambdas[i] > o->lambdas[i - 1]))   /* %g printed 1.0000001 after 1 as "1 after 1" */
            return fdpo_error("--lambda: the list must be strictly increasing (%s after %s)", lambda.s, fdpo_shortest(o->lambdas[i - 1]).s);
        const double b = o->dpo.dpo.loss.beta / o->lambdas[i];   /* the safety stage's beta, checked before any stage */
        if (!(b > 0) || !isfinite(b))
            return fdpo_error("--lambda: %s makes the safety stage's beta %s / %s = %s, not a finite number > 0",
                              lambda.s, fdpo_shortest(o->dpo.dpo.loss.beta).s, lambda.s, fdpo_shortest(b).s);
    }
    for (size_t i = 0; i < o->n_merge_weights; i++)
        if (!(o->merge_weights[i] > 0 && o->merge_weights[i] < 1))
            return fdpo_error("--merge: weight %s must be in (0, 1)", fdpo_shortest(o->merge_weights[i]).s);
    for (size_t i = 0; i < o->n_merge_weights; i++)   /* one merge directory per weight: a repeat wrote one twice */
        for (size_t j = 0; j < i; j++)
            if (o->merge_weights[j] == o->merge_weights[i])
                return fdpo_error("--merge: weight %s given twice", fdpo_shortest(o->merge_weights[i]).s);
    if (o->n_merge_weights && o->safety_first && o->n_lambdas < 2)   /* reward first: the reward stage is lambda 0 */
        return fdpo_error("--merge: --order safety-first has no model of lambda 0 (the reward stage alone): it needs "
                          "two or more --lambda values to interpolate between");
    if (o->dpo.dpo.loss.kind == FDPO_LOSS_SIMPO)
        return fdpo_error("--loss simpo: SACPO's second stage needs the first stage as its reference; simpo has none");
    if (o->dpo.ref) return fdpo_error("--ref: not used by sacpo (each stage's reference is its starting model)");
    /* the trainer options as the stages get them: each stage's out is a directory in OUT (the
     * template's dpo.train.out is not used; left NULL it failed "--out: required") */
    fdpo_train_opts t = o->dpo.train;
    t.out = o->out;
    /* a rerun (sacpo's resume): --max-prompt-length with --on-long skip|error, refused for a new
     * plan, may be what an earlier fdpo saved, which must still run (and add stages); state_open
     * refuses it unless the saved plan records it */
    if (fdpo_dpo_run_opts_check(&(fdpo_dpo_run_opts){
            .train = t, .plan_saved = sacpo_resuming(o), .data = o->reward_data ? o->reward_data : o->safety_data ? o->safety_data : o->online.prompts,
            .pref = o->dpo.pref, .dpo = o->dpo.dpo,
            .eval_fraction = o->dpo.eval_fraction, .ref_live = o->dpo.ref_live, .ref_cache_dir = o->dpo.ref_cache_dir}))
        return -1;
    return o->reward_spec || o->safety_spec ? online_stages_check(o) : 0;
}

static char *fmt_dir(const char *out, const char *fmt, double a, double b, double w) {
    char name[128], na[32], nb[32], nw[32];
    fdpo_fmt_double(na, sizeof na, a);
    fdpo_fmt_double(nb, sizeof nb, b);
    fdpo_fmt_double(nw, sizeof nw, w);
    if (!strcmp(fmt, "merge")) snprintf(name, sizeof name, "merge-%s-%s-w%s", na, nb, nw);
    else snprintf(name, sizeof name, "%s-%s", fmt, na);
    return fdpo_path_join(out, name);
}

char *fdpo_sacpo_lambda_dir(const char *out, double lambda) { return fmt_dir(out, "lambda", lambda, 0, 0); }

/* the end of a number at s as fmt_dir writes it (fdpo_fmt_double's text of the value read),
 * NULL if none: lambda-1.0 or lambda-0.50 are not its names */
static const char *number_end(const char *s) {
    if (!isdigit((unsigned char)*s)) return NULL;
    char *end, text[32];
    double v = strtod(s, &end);
    fdpo_fmt_double(text, sizeof text, v);
    return strlen(text) == (size_t)(end - s) && !strncmp(text, s, (size_t)(end - s)) ? end : NULL;
}

/* the length of name's suffix that marks a stage's lock file or what an interrupted save of
 * it left (fdpo_checkpoint_save_run): ".lock", ".tmp", ".old"; 0 for none */
static size_t leftover_suffix(const char *name) {
    size_t n = strlen(name);
    if (n > 5 && !strcmp(name + n - 5, ".lock")) return 5;
    return n > 4 && (!strcmp(name + n - 4, ".tmp") || !strcmp(name + n - 4, ".old")) ? 4 : 0;
}

int fdpo_sacpo_out_entry(const char *name) {
    if (!strcmp(name, "sacpo.json")) return 1;
    char base[256];
    snprintf(base, sizeof base, "%s", name);
    size_t n = strlen(base);
    base[n -= leftover_suffix(base)] = 0;
    if (n > 7 && !strcmp(base + n - 7, ".online")) base[n -= 7] = 0;
    if (!strcmp(base, "reward")) return 1;
    const char *p = !strncmp(base, "lambda-", 7) ? base + 7 : !strncmp(base, "safety-lambda-", 14) ? base + 14 : NULL;
    if (p) return (p = number_end(p)) && !*p;   /* fmt_dir's names, exactly: lambda-0.5, not lambda-best */
    if (strncmp(base, "merge-", 6)) return 0;
    p = number_end(base + 6);                   /* merge-A-B-wW */
    if (!p || *p != '-' || !(p = number_end(p + 1)) || strncmp(p, "-w", 2)) return 0;
    return (p = number_end(p + 2)) && !*p;
}

/* the plan: everything the stages depend on; a rerun with another plan is refused */
/* the shared train options sacpo's stages have no flag for (placeholders, not recorded) */
static const char *const without_flag[] = FDPO_PREF_SETTINGS_WITHOUT_FLAG;

/* a path of the plan as the file it names (resolved; as given where it does not resolve),
 * so that a rerun from another directory is the same plan (plan_same_paths) */
/* realpath, and for a file that is not there (a rerun that reads no pairs file) its directory's
 * realpath joined with its name: the same file as the first run's resolved path */
static char *resolve_path(const char *path) {
    char *real = realpath(path, NULL);
    if (real) return real;
    const char *slash = strrchr(path, '/');
    char *dir = slash ? fdpo_strdup(path) : fdpo_strdup(".");
    if (slash) dir[slash > path ? (size_t)(slash - path) : 1] = 0;   /* "/x": the root */
    char *rd = realpath(dir, NULL);
    char *out = rd ? fdpo_path_join(rd, slash ? slash + 1 : path) : NULL;
    free(dir); free(rd);
    return out;
}

static void plan_path(cJSON *p, const char *key, const char *path) {
    char *real = path ? resolve_path(path) : NULL;
    cJSON_AddStringToObject(p, key, real ? real : path);
    free(real);
}

/* A data file's content (FNV-1a of its bytes, hex) beside its path in the plan: a stage added
 * later (a new lambda) to a plan whose file was edited in place trained on other data than the
 * stages done before, and the merges mixed them. Nothing when the file cannot be read (its
 * loader names the error). */
static void plan_hash(cJSON *p, const char *key, const char *path) {
    size_t len;
    char *bytes = path ? fdpo_read_file(path, &len) : NULL;
    if (!bytes) { fdpo_clear_error(); return; }
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fdpo_hash64(FDPO_HASH_INIT, bytes, len));
    free(bytes);
    cJSON_AddStringToObject(p, key, hex);
}

static void add_hash(cJSON *p, const char *key, uint64_t h) {
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    cJSON_AddStringToObject(p, key, hex);
}

/* --model's content (and, for a LoRA checkpoint, its base's): a base retrained in place
 * under the same name trained the later stages from another model than the earlier ones,
 * and the merges mixed them */
static void plan_hash_model(cJSON *p, const char *model) {
    uint64_t h = FDPO_HASH_INIT;
    int rc = fdpo_hash_path(&h, model);
    char *base = !rc && fdpo_lora_is_checkpoint(model) ? fdpo_lora_peft_base(model) : NULL;
    if (base) rc = fdpo_hash_path(&h, base);
    free(base);
    fdpo_clear_error();
    if (!rc) add_hash(p, "model_hash", h);
}

static void plan_spec(cJSON *p, const char *key, const char *spec) {
    /* a spec that reads one file, as the file it names (resolved), as plan_path records paths */
    char *resolved = fdpo_reward_spec_resolved(spec);
    cJSON_AddStringToObject(p, key, resolved);
    free(resolved);
}

/* The file an online stage's reward or safety spec reads (lexicon:FILE, words:FILE, rm:DIR),
 * by content (fdpo_reward_content_hash, as rl and online record theirs): an edited word list
 * trained a stage added later against other scores. Not a cmd: program's files: a program
 * mended in place resumes its stage (as fdpo online), and one may write to a file its command
 * line names. The spec's own files only (afinn: its default lexicon, unless --lexicon replaces
 * it: then nothing, the stage never reads the default, which another working directory or an
 * npm update may change): --lexicon's content is online.lexicon_hash, beside its path, so that
 * a plan saved before it was recorded still matches (hashes are compared where both plans have
 * them). An rm:DIR that is a LoRA adapter is read onto its base (fdpo_rm_load): the base's
 * content goes under base_key, apart, for the same reason. */
static void plan_hash_spec(cJSON *p, const char *key, const char *base_key, const char *spec, const char *lexicon) {
    if (!strncmp(spec, "cmd:", 4)) return;
    if (lexicon && (!strcmp(spec, "afinn") || !strcmp(spec, "afinn:sum"))) return;
    uint64_t h, hb;
    int has_base;
    if (fdpo_reward_content_hash(spec, NULL, &h, &hb, &has_base) < 0) return;
    add_hash(p, key, h);
    if (has_base) add_hash(p, base_key, hb);
}

/* the hashes in a plan (parent NULL: the top level) and the flag of the file each is of */
static const struct { const char *parent, *key, *flag; } PLAN_HASHES[] = {
    {NULL, "reward_data_hash", "reward-data"}, {NULL, "safety_data_hash", "safety-data"}, {"online", "data_hash", "data"},
    {NULL, "model_hash", "model"}, {NULL, "reward_hash", "reward"}, {NULL, "safety_hash", "safety"},
    {NULL, "reward_base_hash", "reward"}, {NULL, "safety_base_hash", "safety"}, {"online", "lexicon_hash", "lexicon"}};

static cJSON *plan_hash_parent(cJSON *plan, const char *parent) {
    return parent ? cJSON_GetObjectItemCaseSensitive(plan, parent) : plan;
}

/* The fixed training settings of stages that train with train (either template), the loss
 * and how pairs files are read (a stage added later with another --max-length would train on
 * other data; absent from the plans before they were added, which then match as before). */
static cJSON *training_json(const fdpo_sacpo_opts *o, const fdpo_train_opts *train) {
    cJSON *tr = cJSON_CreateObject();
    fdpo_settings ts = {0};
    fdpo_train_opts_settings(train, &ts);
    fdpo_settings_remove(&ts, without_flag);
    fdpo_settings_str(&ts, "loss", fdpo_loss_name(o->dpo.dpo.loss.kind), 1);
    fdpo_settings_num(&ts, "label-smoothing", o->dpo.dpo.loss.label_smoothing, 1);
    fdpo_settings_num(&ts, "simpo-gamma", o->dpo.dpo.loss.simpo_gamma, 1);
    fdpo_settings_num(&ts, "sft-weight", o->dpo.dpo.loss.sft_weight, 1);
    fdpo_settings_str(&ts, "precision", fdpo_precision_name(fdpo_get_precision()), 1);
    fdpo_pref_data_settings(&o->dpo.pref, o->dpo.eval_fraction, o->dpo.eval_file, &ts);
    cJSON *all = fdpo_settings_to_json(&ts);
    for (size_t i = 0; i < ts.n; i++)
        if (ts.v[i].fixed) cJSON_AddItemToObject(tr, ts.v[i].key, cJSON_DetachItemFromObjectCaseSensitive(all, ts.v[i].key));
    cJSON_Delete(all);
    fdpo_settings_free(&ts);
    return tr;
}

static cJSON *plan_json(const fdpo_sacpo_opts *o) {
    cJSON *p = cJSON_CreateObject();
    char div[64];
    fdpo_divergence_name(&o->dpo.dpo.loss.div, div, sizeof div);
    plan_path(p, "model", o->dpo.train.init);
    plan_hash_model(p, o->dpo.train.init);
    /* file stages keep the plan of earlier versions; online stages add their spec and sampling */
    if (o->reward_data) { plan_path(p, "reward_data", o->reward_data); plan_hash(p, "reward_data_hash", o->reward_data); }
    else { plan_spec(p, "reward", o->reward_spec); plan_hash_spec(p, "reward_hash", "reward_base_hash", o->reward_spec, o->online.reward_opts.lexicon); }
    if (o->safety_data) { plan_path(p, "safety_data", o->safety_data); plan_hash(p, "safety_data_hash", o->safety_data); }
    else { plan_spec(p, "safety", o->safety_spec); plan_hash_spec(p, "safety_hash", "safety_base_hash", o->safety_spec, o->online.reward_opts.lexicon); }
    if (o->reward_spec || o->safety_spec) {
        cJSON *on = cJSON_AddObjectToObject(p, "online");
        plan_path(on, "data", o->online.prompts);
        plan_hash(on, "data_hash", o->online.prompts);
        cJSON_AddNumberToObject(on, "rounds", (double)o->online.rounds);
        cJSON_AddNumberToObject(on, "prompts_per_round", (double)o->online.prompts_per_round);
        cJSON_AddNumberToObject(on, "n", (double)o->online.n);
        cJSON_AddStringToObject(on, "pairs", o->online.pairs_bt ? "all-bt" : "best-worst");
        cJSON_AddStringToObject(on, "ref_update", o->online.ref_update_round ? "round" : "never");
        if (o->online.pairs_bt) cJSON_AddNumberToObject(on, "bt_scale", o->online.bt_scale);
        cJSON_AddStringToObject(on, "ref_logps", o->online.ref_logps_pairs ? "pairs" : "all");
        cJSON_AddNumberToObject(on, "temperature", o->online.sample.temperature);
        cJSON_AddNumberToObject(on, "top_k", (double)o->online.sample.top_k);
        cJSON_AddNumberToObject(on, "top_p", o->online.sample.top_p);
        cJSON_AddNumberToObject(on, "max_new_tokens", (double)o->online.sample.max_new_tokens);
        if (o->online.sample.stop) cJSON_AddStringToObject(on, "stop", o->online.sample.stop);
        if (o->online.reward_opts.lexicon) {   /* afinn's words, read in place of its default lexicon */
            plan_path(on, "lexicon", o->online.reward_opts.lexicon);
            plan_hash(on, "lexicon_hash", o->online.reward_opts.lexicon);
        }
    }
    if (o->dpo.train.lora_r > 0) {   /* LoRA stages (absent otherwise, so earlier plans still match) */
        cJSON *lo = cJSON_AddObjectToObject(p, "lora");
        cJSON_AddNumberToObject(lo, "r", (double)o->dpo.train.lora_r);
        cJSON_AddNumberToObject(lo, "alpha", o->dpo.train.lora_alpha);
        cJSON_AddNumberToObject(lo, "dropout", o->dpo.train.lora_dropout);
        if (o->dpo.train.lora_targets) cJSON_AddStringToObject(lo, "targets", o->dpo.train.lora_targets);
    }
    cJSON_AddStringToObject(p, "divergence", div);
    cJSON_AddNumberToObject(p, "beta", o->dpo.dpo.loss.beta);
    cJSON_AddStringToObject(p, "order", o->safety_first ? "safety-first" : "reward-first");
    /* the stages' training settings (steps, lr, batch, seed, loss, precision, ...): a stage done
     * before is reused only when they match (absent from the plans of earlier versions). They
     * are the stages' on files where there are any, else the online stages', which are fdpo
     * online's where a flag was not given (lr 1e-4, constant); with both kinds of stage the
     * online ones' also under "online" */
    const int files = o->reward_data || o->safety_data;
    cJSON_AddItemToObject(p, "training", training_json(o, files ? &o->dpo.train : &o->online.dpo.train));
    if (files && (o->reward_spec || o->safety_spec))
        cJSON_AddItemToObject(cJSON_GetObjectItemCaseSensitive(p, "online"), "training", training_json(o, &o->online.dpo.train));
    cJSON *l = cJSON_AddArrayToObject(p, "lambdas");
    for (size_t i = 0; i < o->n_lambdas; i++) cJSON_AddItemToArray(l, cJSON_CreateNumber(o->lambdas[i]));
    return p;
}

typedef struct { cJSON *root, *done; char *path; int plan_changed; } sacpo_state;

/* A number and the digits of the same value: an integer setting past 2^53 is saved as its
 * digits (fdpo_settings_int), a plan of an earlier fdpo holds it as a number. */
static int same_number(const cJSON *a, const cJSON *b) {
    const cJSON *num = cJSON_IsNumber(a) ? a : b, *text = cJSON_IsNumber(a) ? b : a;
    return cJSON_IsNumber(num) && cJSON_IsString(text) && fdpo_number_text_equal(text->valuestring, num->valuedouble);
}

/* The flag of a plan entry: its key with '-' for '_' ("reward_data" -> --reward-data; the
 * online stages' "data" is --data), "lora-" before a LoRA one ("r" -> --lora-r); the online
 * stages' "pairs" (the key of plans before the flag was renamed) is --pairing. */
static void plan_flag(const char *parent, const char *key, char *flag, size_t n) {
    if (parent && !strcmp(parent, "online") && !strcmp(key, "pairs")) key = "pairing";
    snprintf(flag, n, "%s%s", parent && !strcmp(parent, "lora") ? "lora-" : "", key);
    for (char *c = flag; *c; c++) if (*c == '_') *c = '-';
}

/* "--FLAG: NOW differs from WAS in PATH, ...": a flag whose value is not the one the saved
 * stages trained with (values as JSON; NULL: the flag was not recorded or is not given). */
static int stages_trained_with(const char *flag, const cJSON *was, const cJSON *now, const char *path) {
    char *w = was ? cJSON_PrintUnformatted(was) : NULL, *i = now ? cJSON_PrintUnformatted(now) : NULL;
    fdpo_error("--%s: %s differs from %s in %s, which its stages trained with (use the same flags or another --out)",
               flag, i ? i : "(none)", w ? w : "(none)", path);
    free(w); free(i);
    return -1;
}

/* Names the first entry of the saved plan `was` that the plan `now` does not repeat (in
 * "online" and "lora" the entry inside), as the training settings are named. */
static void plan_difference(const cJSON *was, const cJSON *now, const char *path) {
    const cJSON *sides[2] = {was, now};
    for (int side = 0; side < 2; side++) {
        const cJSON *x;
        cJSON_ArrayForEach(x, sides[side]) {
            const cJSON *u = cJSON_GetObjectItemCaseSensitive(was, x->string);
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(now, x->string);
            if (u && v && cJSON_Compare(u, v, 1)) continue;
            if (cJSON_IsObject(u) || cJSON_IsObject(v)) {   /* "lora" on one side only: name its first flag */
                cJSON *none = cJSON_CreateObject();
                none->string = x->string;   /* the parent's name, for plan_flag; not owned */
                none->type |= cJSON_StringIsConst;
                plan_difference(u ? u : none, v ? v : none, path);
                cJSON_Delete(none);
                return;
            }
            char flag[64];
            plan_flag(was->string, x->string, flag, sizeof flag);
            stages_trained_with(flag, u, v, path);
            return;
        }
    }
    fdpo_error("%s: its plan differs (use the same flags or another --out)", path);
}

/* The plan's paths (--model, the pairs files, the online stages' prompts and --lexicon) as
 * the files they name: where the saved and the given spelling resolve to the same file
 * (sftm and sftm/, ./rp.jsonl, the same run from another directory), the saved entry takes
 * the given text, so that only a different file is a different plan. */
static void plan_same_paths(cJSON *saved, const cJSON *now) {
    static const char *const keys[] = {"model", "reward_data", "safety_data", "online.data", "online.lexicon"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *key = keys[i], *dot = strchr(key, '.');
        cJSON *s = saved;
        const cJSON *g = now;
        if (dot) {
            char parent[16];
            snprintf(parent, sizeof parent, "%.*s", (int)(dot - key), key);
            s = cJSON_GetObjectItemCaseSensitive(saved, parent);
            g = cJSON_GetObjectItemCaseSensitive(now, parent);
            key = dot + 1;
        }
        cJSON *a = cJSON_GetObjectItemCaseSensitive(s, key);
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(g, key);
        if (!cJSON_IsString(a) || !cJSON_IsString(b) || !strcmp(a->valuestring, b->valuestring)) continue;
        char *ra = resolve_path(a->valuestring), *rb = resolve_path(b->valuestring);
        if (ra && rb && !strcmp(ra, rb)) cJSON_SetValuestring(a, b->valuestring);
        free(ra); free(rb);
    }
    /* a spec that reads one file (lexicon:FILE, words:FILE, rm:DIR), saved by an earlier fdpo
     * as typed: the same file, resolved from here, is the same spec */
    static const char *const specs[] = {"reward", "safety"};
    for (size_t i = 0; i < 2; i++) {
        cJSON *a = cJSON_GetObjectItemCaseSensitive(saved, specs[i]);
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(now, specs[i]);
        if (cJSON_IsString(a) && cJSON_IsString(b) && fdpo_reward_spec_same(a->valuestring, b->valuestring))
            cJSON_SetValuestring(a, b->valuestring);
    }
}

/* --lora-targets as the modules it selects (fdpo_lora_targets_same against --model's family,
 * as the trainers' --resume and online rounds compare it), not as typed: PEFT's default named
 * explicitly (c_attn) or another spelling of the same modules (attn.c_attn) was refused as a
 * change. Where the saved plan's text (the "lora" entry, absent for the default, and the
 * stages' training settings, null for it) selects what the given one does, the new plan takes
 * the saved text, so the state keeps what it recorded. Other modules are refused, naming both
 * lists, the default as its modules (the generic comparison printed it "(none)"). -1 after the
 * error. */
static int plan_same_lora_targets(cJSON *plan, const cJSON *saved, const char *model, const char *path) {
    /* where the text is: parent, its child (NULL: none), key; the online stages' training
     * settings are apart beside stages on files */
    const char *const where[][3] = {{"lora", NULL, "targets"}, {"training", NULL, "lora-targets"},
                                    {"online", "training", "lora-targets"}};
    fdpo_gpt2 shape = {0};   /* the matcher reads the family only: --model's config (a LoRA checkpoint's base's) */
    int have_shape = 0;
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
        cJSON *pn = cJSON_GetObjectItemCaseSensitive(plan, where[i][0]);
        const cJSON *ps = cJSON_GetObjectItemCaseSensitive(saved, where[i][0]);
        if (where[i][1]) {
            pn = cJSON_GetObjectItemCaseSensitive(pn, where[i][1]);
            ps = cJSON_GetObjectItemCaseSensitive(ps, where[i][1]);
        }
        if (!cJSON_IsObject(pn) || !cJSON_IsObject(ps)) continue;
        const char *key = where[i][2];
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(pn, key), *s = cJSON_GetObjectItemCaseSensitive(ps, key);
        /* the "lora" entry leaves the default out; training settings hold null for it, and no
         * key in a full run's (told apart by the comparison that follows) */
        if (strcmp(where[i][0], "lora") && (!n || !s)) continue;
        if ((n && !cJSON_IsString(n) && !cJSON_IsNull(n)) || (s && !cJSON_IsString(s) && !cJSON_IsNull(s))) continue;
        const char *now = cJSON_IsString(n) ? n->valuestring : NULL, *was = cJSON_IsString(s) ? s->valuestring : NULL;
        if (now == was || (now && was && !strcmp(now, was))) continue;
        if (!have_shape) {
            if (fdpo_checkpoint_load_config(model, &shape.config)) return fdpo_error_context("--model %s", model);
            have_shape = 1;
        }
        const int same = fdpo_lora_targets_same(now, was, &shape, "--lora-targets");
        if (same < 0) return -1;
        /* other modules: named here, each side as its modules (the default was "(none)") */
        if (!same && i == 0) {
            const char *def = fdpo_lora_default_targets(&shape);
            return fdpo_error("--lora-targets: %s%s%s selects other modules than %s%s%s in %s, which its stages trained "
                              "with (use the same flags or another --out)", now ? now : "the default (", now ? "" : def,
                              now ? "" : ")", was ? was : "the default (", was ? "" : def, was ? "" : ")", path);
        }
        if (!same) continue;   /* the "lora" entry named it; a training setting only, by the comparison that follows */
        if (!s) cJSON_DeleteItemFromObjectCaseSensitive(pn, key);
        else if (n) cJSON_ReplaceItemInObjectCaseSensitive(pn, key, cJSON_Duplicate(s, 1));
        else cJSON_AddItemToObject(pn, key, cJSON_Duplicate(s, 1));
    }
    return 0;
}

/* 1 when every training setting the saved plan records (then) is now's, else 0 naming the
 * first that is not (a plan of an earlier fdpo records fewer, or none) */
static int training_same(const cJSON *then, const cJSON *now, const char *path) {
    const cJSON *x;
    cJSON_ArrayForEach(x, then) {
        /* plans before wave 28 also recorded the train option "val-fraction" (0, unused:
         * the stages' held-out share is "eval-fraction", compared on its own) */
        if (!strcmp(x->string, "val-fraction")) continue;
        /* and before wave 31 the placeholders of options sacpo has no flag for ("seq-len": 1) */
        int placeholder = 0;
        for (const char *const *k = without_flag; *k; k++) placeholder |= !strcmp(x->string, *k);
        if (placeholder) continue;
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(now, x->string);
        if (y && (cJSON_Compare(x, y, 1) || same_number(x, y))) continue;
        stages_trained_with(x->string, x, y, path);
        return 0;
    }
    return 1;
}

static size_t stage_name(const char *dir, const char **name);

/* Which kinds of training stage the saved state records done: an online one (OUT/<stage>.online
 * holds its rounds) and one on a file (any other, merges aside). */
static void stages_done_kinds(const sacpo_state *st, const char *out, int *online, int *files) {
    *online = *files = 0;
    for (const cJSON *e = st->done->child; e; e = e->next) {
        const char *name;
        if (!cJSON_IsString(e)) continue;
        size_t n = stage_name(e->valuestring, &name);
        if (n >= 6 && !strncmp(name, "merge-", 6)) continue;
        char *dir = fdpo_malloc(n + 8);
        memcpy(dir, name, n);
        memcpy(dir + n, ".online", 8);
        char *path = fdpo_path_join(out, dir);
        struct stat sb;
        if (!stat(path, &sb) && S_ISDIR(sb.st_mode)) *online = 1;
        else *files = 1;
        free(path); free(dir);
    }
}

/* Which stage kinds' inputs the stages the saved state lists done read (a merge reads none):
 * reward first, OUT/reward the reward input and OUT/lambda-L the safety one; safety first (the
 * saved plan's order), OUT/safety-lambda-L the safety input and OUT/lambda-L the reward one. */
static void stage_reads(const char *name, size_t n, int safety_first, int *reward, int *safety) {
    if ((n == 6 && !strncmp(name, "reward", 6)) || (safety_first && n > 7 && !strncmp(name, "lambda-", 7))) *reward = 1;
    else if ((!safety_first && n > 7 && !strncmp(name, "lambda-", 7)) || (n > 14 && !strncmp(name, "safety-lambda-", 14)))
        *safety = 1;
}

/* A stage cut short counts too (it trained on its input; its resume would go on with the edited
 * one, or the stage be recorded done on rounds scored by the old one): a stage on a file whose
 * directory holds a training state, an online stage whose rounds directory holds round 0. */
static void stages_done_read(const sacpo_state *st, const cJSON *saved, const char *out, int *reward, int *safety) {
    const cJSON *order = cJSON_GetObjectItemCaseSensitive(saved, "order");
    const int safety_first = cJSON_IsString(order) && !strcmp(order->valuestring, "safety-first");
    *reward = *safety = 0;
    for (const cJSON *e = st->done->child; e; e = e->next) {
        const char *name;
        if (!cJSON_IsString(e)) continue;
        size_t n = stage_name(e->valuestring, &name);
        stage_reads(name, n, safety_first, reward, safety);
    }
    DIR *d = opendir(out);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (!fdpo_sacpo_out_entry(e->d_name) || !strcmp(e->d_name, "sacpo.json") || leftover_suffix(e->d_name)) continue;
        const int online = n > 7 && !strcmp(e->d_name + n - 7, ".online");
        char *dir = fdpo_path_join(out, e->d_name);
        char *mark = fdpo_path_join(dir, online ? "round-0" : "training_state.json");
        if (fdpo_file_exists(mark)) stage_reads(e->d_name, online ? n - 7 : n, safety_first, reward, safety);
        free(mark); free(dir);
    }
    if (d) closedir(d);
}

/* 1 when the saved plan's training settings (then) record now's pairs settings, --max-prompt-length
 * and --on-long */
static int same_pairs_settings(const cJSON *then, const cJSON *now) {
    static const char *const keys[] = {"max-prompt-length", "on-long"};
    int same = cJSON_IsObject(then);
    for (size_t i = 0; same && i < sizeof keys / sizeof keys[0]; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(then, keys[i]), *y = cJSON_GetObjectItemCaseSensitive(now, keys[i]);
        same = x && y && (cJSON_Compare(x, y, 1) || same_number(x, y));
    }
    return same;
}

/* what an interrupted stage tells the user: sacpo has no --resume, a rerun resumes */
#define SACPO_CONTINUE "run the same fdpo sacpo command again: it resumes the stage"
/* and a stage whose directory holds what no stage of this plan left (no training state): sacpo
 * has no --resume or --overwrite, which the trainer's message named */
#define SACPO_OCCUPIED "not a stage this sacpo run started: move it away, or give sacpo another --out"
/* and a stage cut short whose resume is refused (a flag changed before any stage was done, so
 * that sacpo.json did not hold the plan yet; its reference retrained in place): the trainer's
 * message said to keep --flag "on --resume", which sacpo does not have */
#define SACPO_RESUME "run fdpo sacpo with the flags and files that stage started with to resume it, or remove that " \
                     "directory to start the stage over"

static int state_open(sacpo_state *st, const fdpo_sacpo_opts *o) {
    st->path = fdpo_path_join(o->out, "sacpo.json");
    cJSON *plan = plan_json(o);
    if (fdpo_file_exists(st->path)) {
        size_t len;
        char *text = fdpo_read_file(st->path, &len);
        if (!text) { cJSON_Delete(plan); return -1; }
        st->root = cJSON_ParseWithLength(text, len);
        free(text);
        cJSON *saved = cJSON_GetObjectItemCaseSensitive(st->root, "plan");
        st->done = cJSON_GetObjectItemCaseSensitive(st->root, "stages_done");
        if (!saved || !cJSON_IsArray(st->done)) { cJSON_Delete(plan); return fdpo_error("%s: not a sacpo state file", st->path); }
        /* fdpo_sacpo_opts_check let a rerun's pairs settings pass as a saved plan's: a
         * combination a new plan is refused (--max-prompt-length with --on-long skip|error) runs
         * only where this plan records it */
        if (!same_pairs_settings(cJSON_GetObjectItemCaseSensitive(saved, "training"), cJSON_GetObjectItemCaseSensitive(plan, "training")) &&
            fdpo_pref_data_check(&o->dpo.pref, 0)) {
            cJSON_Delete(plan);
            return -1;
        }
        if (plan_same_lora_targets(plan, saved, o->dpo.train.init, st->path)) { cJSON_Delete(plan); return -1; }
        /* the lambda list may grow (more models from the same stages); everything else must
         * match: the plan first (model, data, divergence, beta, order, LoRA), then the training
         * settings one by one, named: those the saved plan records (a plan of an earlier fdpo
         * records fewer, or none) */
        cJSON *a = cJSON_Duplicate(saved, 1), *b = cJSON_Duplicate(plan, 1);
        cJSON_DeleteItemFromObject(a, "lambdas");
        cJSON_DeleteItemFromObject(b, "lambdas");
        cJSON_DeleteItemFromObject(a, "training");
        cJSON_DeleteItemFromObject(b, "training");
        /* what only some stages read is compared only when one of them is done: the online
         * settings (prompts, sampling, rounds) when an online stage is, the stages' training
         * settings when a stage of their kind is (a rerun after a bad --data failed the first
         * online stage, the stage on a file done, was refused for its corrected --data) */
        int online_done, files_done;
        stages_done_kinds(st, o->out, &online_done, &files_done);
        if (!online_done) {
            cJSON_DeleteItemFromObject(a, "online");
            cJSON_DeleteItemFromObject(b, "online");
        }
        cJSON *online_then = cJSON_DetachItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(a, "online"), "training");
        cJSON_Delete(cJSON_DetachItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(b, "online"), "training"));
        /* plans before wave 28 could record --stop '' (no stop string), now refused as a flag:
         * the same plan as no --stop */
        const cJSON *stop = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(a, "online"), "stop");
        if (cJSON_IsString(stop) && !*stop->valuestring)
            cJSON_DeleteItemFromObject(cJSON_GetObjectItemCaseSensitive(a, "online"), "stop");
        /* --ref-logps, absent from the plans of earlier fdpo (which did not compare it): such a plan
         * takes the given one, as before (either value may have trained its stages) */
        cJSON *online_was = cJSON_GetObjectItemCaseSensitive(a, "online");
        const cJSON *ref_logps = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(b, "online"), "ref_logps");
        if (cJSON_IsObject(online_was) && ref_logps && !cJSON_HasObjectItem(online_was, "ref_logps"))
            cJSON_AddItemToObject(online_was, "ref_logps", cJSON_Duplicate(ref_logps, 1));
        plan_same_paths(a, b);
        /* the inputs of one stage kind (its pairs file's or spec's content, and the file's path)
         * are compared only once a stage of that kind is done: a --safety-data corrected in place
         * (or given anew) after the reward stage, before any safety stage read it, was refused
         * as another content than the stages had trained on */
        int reward_read, safety_read;
        stages_done_read(st, a, o->out, &reward_read, &safety_read);
        static const char *const data_keys[2] = {"reward_data", "safety_data"};
        for (int k = 0; k < 2; k++) {
            if (k ? safety_read : reward_read) continue;
            const cJSON *pa = cJSON_GetObjectItemCaseSensitive(a, data_keys[k]), *pb = cJSON_GetObjectItemCaseSensitive(b, data_keys[k]);
            if (!cJSON_IsString(pa) || !cJSON_IsString(pb)) continue;   /* a file for a spec: named below */
            cJSON_DeleteItemFromObjectCaseSensitive(a, data_keys[k]);
            cJSON_DeleteItemFromObjectCaseSensitive(b, data_keys[k]);
        }
        /* the files' contents after the plan (a different path is named as such first); a plan
         * of an earlier fdpo records none */
        const char *edited = NULL;
        char was_hash[40] = "", now_hash[40] = "";
        for (size_t i = 0; i < sizeof PLAN_HASHES / sizeof PLAN_HASHES[0]; i++) {
            cJSON *pa = plan_hash_parent(a, PLAN_HASHES[i].parent), *pb = plan_hash_parent(b, PLAN_HASHES[i].parent);
            const cJSON *ha = cJSON_GetObjectItemCaseSensitive(pa, PLAN_HASHES[i].key);
            const cJSON *hb = cJSON_GetObjectItemCaseSensitive(pb, PLAN_HASHES[i].key);
            const char *flag = PLAN_HASHES[i].flag;
            const int read = (strcmp(flag, "reward-data") && strcmp(flag, "reward") ? 1 : reward_read) &&
                             (strcmp(flag, "safety-data") && strcmp(flag, "safety") ? 1 : safety_read);
            if (!edited && read && cJSON_IsString(ha) && cJSON_IsString(hb) && strcmp(ha->valuestring, hb->valuestring)) {
                edited = PLAN_HASHES[i].flag;
                snprintf(was_hash, sizeof was_hash, "%s", ha->valuestring);
                snprintf(now_hash, sizeof now_hash, "%s", hb->valuestring);
            }
            cJSON_DeleteItemFromObjectCaseSensitive(pa, PLAN_HASHES[i].key);
            cJSON_DeleteItemFromObjectCaseSensitive(pb, PLAN_HASHES[i].key);
        }
        int same = cJSON_Compare(a, b, 1);
        if (!same) plan_difference(a, b, st->path);
        else if (edited) {
            same = 0;
            fdpo_error("--%s: the content it reads differs from what %s's stages trained on (%s, now %s): use the "
                       "same files or another --out", edited, st->path, was_hash, now_hash);
        }
        cJSON_Delete(a); cJSON_Delete(b);
        const cJSON *then = cJSON_GetObjectItemCaseSensitive(saved, "training");
        const cJSON *now = cJSON_GetObjectItemCaseSensitive(plan, "training");
        const int files = o->reward_data || o->safety_data;   /* "training" is theirs, else the online stages' */
        if (same && (files ? files_done : online_done)) same = training_same(then, now, st->path);
        /* the online stages' beside stages on files: a plan before they were recorded apart
         * trained its online stages with its "training" */
        const cJSON *online_now = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(plan, "online"), "training");
        if (same && online_done && online_now) same = training_same(online_then ? online_then : then, online_now, st->path);
        cJSON_Delete(online_then);
        if (!same) { cJSON_Delete(plan); return -1; }
        /* an input of a stage not done yet that changed (its hash), a lambda added: recorded
         * before that stage starts (fdpo_sacpo_run), else a stage cut short under the new
         * file was compared with the old hash on the next rerun and refused (a review's find) */
        st->plan_changed = !cJSON_Compare(saved, plan, 1);
        cJSON_ReplaceItemInObject(st->root, "plan", plan);
        return 0;
    }
    st->root = cJSON_CreateObject();
    cJSON_AddItemToObject(st->root, "plan", plan);
    st->done = cJSON_AddArrayToObject(st->root, "stages_done");
    return 0;
}

/* a stage's name: the last component of its directory (every stage is a child of --out) */
static size_t stage_name(const char *dir, const char **name) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    *name = dir + b;
    return n - b;
}

/* Stages are recorded by name, and matched by name: a record of an earlier fdpo holds the
 * directory as --out spelled it ("M1/reward"), which --out ./M1, another working directory
 * or a moved OUT spell otherwise, and every stage then ran again. */
static int stage_done(const sacpo_state *st, const char *dir) {
    const char *want, *got;
    size_t n = stage_name(dir, &want);
    for (const cJSON *e = st->done->child; e; e = e->next)
        if (cJSON_IsString(e) && stage_name(e->valuestring, &got) == n && !strncmp(got, want, n)) return 1;
    return 0;
}

/* a done list entry's stage name (malloc'd), NULL for an entry that is not a string */
static char *entry_name(const cJSON *e) {
    const char *name;
    size_t n = cJSON_IsString(e) ? stage_name(e->valuestring, &name) : 0;
    if (!n) return NULL;
    char *rec = fdpo_malloc(n + 1);
    memcpy(rec, name, n);
    rec[n] = 0;
    return rec;
}

/* 1 when the stage or merge named made was made from the one named from (names as fmt_dir
 * writes them): lambda-L trains from reward (reward first) or safety-lambda-L (safety first),
 * merge-A-B-wW reads lambda-A (reward for A = 0) and lambda-B */
static int made_from(const char *made, const char *from) {
    if (!strncmp(made, "lambda-", 7))
        return !strcmp(from, "reward") || (!strncmp(from, "safety-", 7) && !strcmp(from + 7, made));
    const char *a = made + 6, *a_end = strncmp(made, "merge-", 6) ? NULL : number_end(a);
    const char *b = a_end && *a_end == '-' ? a_end + 1 : NULL, *b_end = b ? number_end(b) : NULL;
    if (!b_end) return 0;
    if (!strcmp(from, "reward")) return a_end - a == 1 && *a == '0';
    if (strncmp(from, "lambda-", 7)) return 0;
    const size_t n = strlen(from + 7);
    return ((size_t)(a_end - a) == n && !strncmp(a, from + 7, n)) || ((size_t)(b_end - b) == n && !strncmp(b, from + 7, n));
}

/* adds to made the directories in out of the stages and merges listed done, and there, that
 * were made from the one named from, or from one made from it (a merge of a lambda-L made from
 * reward), each once */
static void done_made_from_add(const sacpo_state *st, const char *out, const char *from, fdpo_strv *made) {
    for (const cJSON *e = st->done->child; e; e = e->next) {
        char *name = entry_name(e);
        char *dir = name && made_from(name, from) ? fdpo_path_join(out, name) : NULL;
        struct stat sb;
        int seen = 0;
        for (size_t i = 0; dir && i < made->n; i++) seen |= !strcmp(made->v[i], dir);
        if (dir && !seen && !stat(dir, &sb)) fdpo_strv_push(made, dir);
        if (dir) done_made_from_add(st, out, name, made);   /* stage -> lambda -> merge: no cycle */
        free(dir); free(name);
    }
}

/* done_made_from_add's directories as ", "-joined text in the order sacpo.json lists them
 * (malloc'd), NULL for none */
static char *done_made_from(const sacpo_state *st, const char *out, const char *from) {
    fdpo_strv made = {0};
    done_made_from_add(st, out, from, &made);
    size_t len = 1;
    for (size_t i = 0; i < made.n; i++) len += strlen(made.v[i]) + 2;
    char *text = made.n ? fdpo_calloc(len, 1) : NULL;
    for (const cJSON *e = st->done->child; text && e; e = e->next) {
        char *name = entry_name(e);
        char *dir = name ? fdpo_path_join(out, name) : NULL;
        for (size_t i = 0; dir && i < made.n; i++)
            if (!strcmp(made.v[i], dir)) {
                if (*text) strcat(text, ", ");
                strcat(text, dir);
                made.v[i][0] = 0;   /* once, should sacpo.json list it twice */
            }
        free(dir); free(name);
    }
    fdpo_strv_free(&made);
    return text;
}

/* where an online stage's rounds go: DIR.online (malloc'd) */
static char *online_run_dir(const char *dir) {
    size_t len = strlen(dir);
    char *run = fdpo_malloc(len + 8);
    memcpy(run, dir, len);
    memcpy(run + len, ".online", 8);
    return run;
}

/* The stages and merges sacpo.json lists done, as they are in OUT now: one not there (removed
 * or moved away by hand) is trained again from the plan (it was reported "done before", and
 * what read it next failed on its missing config.json, on every rerun), unless a stage or merge
 * listed done and there was made from it: a retrain is the same model only where it is bit for
 * bit (--threads, which a rerun may change, sums in another order), and those would stay made
 * from the old one, mixed silently with the new, so it is refused, naming them. One there that
 * holds no model it can read is refused, naming it. */
static int stages_done_present(sacpo_state *st, const char *out) {
    cJSON *e = st->done->child;
    while (e) {
        cJSON *next = e->next;
        char *rec = entry_name(e);
        char *dir = rec ? fdpo_path_join(out, rec) : NULL;
        struct stat sb;
        const int missing = dir && stat(dir, &sb) != 0;
        /* an online stage whose rounds are still in DIR.online: the rerun copies its last round
         * back (or resumes its rounds), the model what was made from it read, not a new one */
        char *rounds = missing ? online_run_dir(dir) : NULL;
        const int restored = rounds && !stat(rounds, &sb) && S_ISDIR(sb.st_mode);
        free(rounds);
        char *made = missing && !restored ? done_made_from(st, out, rec) : NULL;
        int rc = 0;
        if (made)
            rc = fdpo_error("%s: listed done in %s but not there (removed or moved away), and %s, listed done there too, "
                            "%s made from it; training it again would leave %s made from a model that may differ from "
                            "the new one (another --threads or machine sums in another order): put %s back, or remove "
                            "%s too, so that the rerun makes them again from it",
                            dir, st->path, made, strchr(made, ',') ? "were" : "was", strchr(made, ',') ? "them" : "it",
                            dir, made);
        else if (missing) {
            fdpo_log(FDPO_LOG_INFO, "%s: listed done in %s but not there (removed or moved away): training it again",
                     dir, st->path);
            cJSON_DetachItemViaPointer(st->done, e);
            cJSON_Delete(e);
        } else if (dir) {
            static const char *const weights[] = {"model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"};
            int has_weights = 0;
            for (size_t i = 0; i < sizeof weights / sizeof weights[0]; i++) {
                char *w = fdpo_path_join(dir, weights[i]);
                has_weights |= fdpo_file_exists(w);
                free(w);
            }
            fdpo_gpt2_config c;
            if (!has_weights) fdpo_error("no weights (model.safetensors or adapter_model.safetensors)");
            if (!has_weights || fdpo_checkpoint_load_config(dir, &c))
                rc = fdpo_error_context("%s: listed done in %s but holds no model it can read; remove %s and run the "
                                        "same fdpo sacpo command again to train it again, or give another --out",
                                        dir, st->path, dir);
        }
        free(made); free(dir); free(rec);
        if (rc) return -1;
        e = next;
    }
    return 0;
}

static int state_mark(sacpo_state *st, const char *dir) {
    const char *name;
    size_t n = stage_name(dir, &name);
    char *rec = fdpo_malloc(n + 1);
    memcpy(rec, name, n);
    rec[n] = 0;
    cJSON_AddItemToArray(st->done, cJSON_CreateString(rec));
    if (fdpo_dist_rank() > 0) { free(rec); return 0; }   /* under MPI rank 0 alone writes */
    /* a stage's content (its model files, fdpo_hash_path) under "stage_hashes": a stage replaced
     * in place was trusted by name, and what a rerun trained from it or merged with it mixed
     * another model with the stages done before (stages_done_unchanged). Not a merge's: no stage
     * or merge reads one. */
    uint64_t h = FDPO_HASH_INIT;
    if (strncmp(rec, "merge-", 6) && !fdpo_hash_path(&h, dir)) {
        cJSON *hashes = cJSON_GetObjectItemCaseSensitive(st->root, "stage_hashes");
        if (!cJSON_IsObject(hashes)) {
            cJSON_DeleteItemFromObjectCaseSensitive(st->root, "stage_hashes");
            hashes = cJSON_AddObjectToObject(st->root, "stage_hashes");
        }
        cJSON_DeleteItemFromObjectCaseSensitive(hashes, rec);
        add_hash(hashes, rec, h);
    }
    fdpo_clear_error();   /* unreadable: nothing recorded, nothing compared */
    free(rec);
    return fdpo_write_json_atomic(st->path, st->root, 1);
}

/* A stage listed done that a stage still to run starts from, or a merge still to run reads
 * (dir), must hold the model it was recorded done with: one replaced in place (fdpo merge or dpo
 * --overwrite into it, a checkpoint copied there) was trusted by name, and the new stages were
 * made from another model than the stages and merges done before, mixed in one plan without a
 * word. A stage recorded without a hash (a plan of an earlier fdpo) is not compared. checked:
 * the stages compared already. */
static int stage_unchanged(const sacpo_state *st, const char *out, const char *dir, fdpo_strv *checked) {
    const char *n0;
    size_t n = stage_name(dir, &n0);
    char *name = fdpo_malloc(n + 1);
    memcpy(name, n0, n);
    name[n] = 0;
    int seen = 0;
    for (size_t i = 0; i < checked->n; i++) seen |= !strcmp(checked->v[i], name);
    const cJSON *was = seen ? NULL : cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(st->root, "stage_hashes"), name);
    int rc = 0;
    if (cJSON_IsString(was)) {
        fdpo_strv_push(checked, name);
        uint64_t h = FDPO_HASH_INIT;
        char now[17];
        if (fdpo_hash_path(&h, dir)) rc = fdpo_error_context("%s: listed done in %s", dir, st->path);
        snprintf(now, sizeof now, "%016llx", (unsigned long long)h);
        char *made = rc || !strcmp(now, was->valuestring) ? NULL : done_made_from(st, out, name);
        if (!rc && strcmp(now, was->valuestring))
            rc = fdpo_error("%s: listed done in %s, but its content differs from the model it was recorded done with "
                            "(%s, now %s: replaced in place?), and a stage or merge still to run reads it%s%s%s: put "
                            "that model back, or remove %s%s%s so that the rerun makes %s again, or give another --out",
                            dir, st->path, was->valuestring, now, made ? ", beside " : "", made ? made : "",
                            made ? " made from the recorded one" : "", dir, made ? " and " : "", made ? made : "",
                            made ? "them" : "it");
        free(made);
    }
    free(name);
    return rc;
}


/* 1 if the online.json of the stage's rounds in run records a --lexicon: a stage of a run saved
 * before --lexicon was kept from the specs that do not read it resumes with it */
static int stage_saved_lexicon(const char *run) {
    char *path = fdpo_path_join(run, "online.json");
    size_t len = 0;
    char *text = fdpo_file_exists(path) ? fdpo_read_file(path, &len) : NULL;
    cJSON *saved = text ? cJSON_ParseWithLength(text, len) : NULL;
    const cJSON *lex = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(saved, "settings"), "lexicon");
    const int has = cJSON_IsString(lex);
    cJSON_Delete(saved);
    free(text);
    free(path);
    fdpo_clear_error();   /* unreadable: the stage's own resume names it */
    return has;
}

/* 1 when a stage starts from a stage before it (OUT/reward, OUT/safety-lambda-L), not from
 * --model: sacpo's plan pins that model (the stage chain, by name), so the stage's resume
 * does not compare its path, which a moved OUT changes (fdpo_train_opts.init_in_run) */
static int init_in_out(const fdpo_sacpo_opts *o, const char *init) {
    return strcmp(init, o->dpo.train.init) != 0;   /* plan_stages: --model's text, or a stage's directory */
}

/* An online stage's fdpo online run: from init (also its reference) against spec into run,
 * with beta; the stage runs it and online_stages_check checks it, before any stage runs. */
static fdpo_online_opts online_stage_opts(const fdpo_sacpo_opts *o, const char *init, const char *spec,
                                          const char *spec_flag, double beta, const char *run) {
    fdpo_online_opts on = o->online;
    on.model = init;
    /* and the trainer template's, which online.json records too (as "model.resolved"): it was
     * sacpo's --model in every stage, so a stage from OUT/reward cut short was refused on the
     * rerun ("--model: OUT/reward differs from the saved run's OUT/reward (--model ...)") */
    on.dpo.train.init = init;
    on.ref = NULL;
    on.reward = spec;
    on.reward_opts.flag = spec_flag;   /* its errors name --safety for the safety stage */
    on.out = run;
    char *round0 = fdpo_path_join(run, "round-0");
    on.resume = fdpo_file_exists(round0);   /* continue after its complete rounds, or start at round 0 */
    free(round0);
    /* --lexicon is the word list of the afinn specs: a stage whose spec reads none does not get
     * it (fdpo online refuses --lexicon with such a spec; the other stage's afinn uses it) */
    if (!fdpo_reward_spec_reads_lexicon(spec) && !(on.resume && stage_saved_lexicon(run))) on.reward_opts.lexicon = NULL;
    on.dpo.train.continue_how = SACPO_CONTINUE;
    on.dpo.train.init_in_run = init_in_out(o, init);
    on.dpo.train.occupied_how = SACPO_OCCUPIED;
    on.dpo.train.resume_how = SACPO_RESUME;
    on.dpo.train.overwrite = 0;   /* the trainer's flags that rounds mode has no use for (it refuses them) */
    on.dpo.train.stop_at = 0;
    on.dpo.train.save_every = 0;
    on.dpo.dpo.loss.beta = beta;
    return on;
}

/* an online stage: online f-DPO rounds from init (also the reference) against spec into
 * dir.online, then its last round saved as dir; resumes after the last complete round */
static int run_online_stage(const fdpo_sacpo_opts *o, const char *what, const char *init, const char *spec,
                            const char *spec_flag, double beta, const char *dir) {
    char *run = online_run_dir(dir);
    fdpo_online_opts on = online_stage_opts(o, init, spec, spec_flag, beta, run);
    fdpo_log(FDPO_LOG_INFO, "%s: %s -> %s online against %s, beta %g, %ld round(s) in %s", what, init, dir, spec, beta,
             on.rounds, run);
    int rc = fdpo_online_run(&on);
    char name[32];
    snprintf(name, sizeof name, "round-%ld", on.rounds - 1);
    char *last = fdpo_path_join(run, name);
    if (rc == 0) rc = fdpo_checkpoint_recover(dir);
    fdpo_gpt2 *m = rc == 0 ? fdpo_checkpoint_load_model(last) : NULL;
    fdpo_tokenizer *tok = m ? fdpo_tokenizer_load_dir(last) : NULL;
    if (rc == 0) rc = m && tok ? fdpo_checkpoint_save_all(dir, m, tok, NULL, NULL) : -1;
    fdpo_dir_unlock(dir);   /* done, or failed: either way free again (as run_merge) */
    if (tok) fdpo_tokenizer_free(tok);
    if (m) fdpo_gpt2_free(m);
    free(last);
    free(run);
    return rc;
}

/* one f-DPO stage: init -> dir on data (or online against spec) with beta; resumes a stage left half-way */
static int run_stage(const fdpo_sacpo_opts *o, sacpo_state *st, const char *what, const char *init, const char *data,
                     const char *spec, const char *spec_flag, double beta, const char *dir) {
    if (stage_done(st, dir)) {
        fdpo_log(FDPO_LOG_INFO, "%s: done before (%s)", what, dir);
        return 0;
    }
    /* a stop that came as the stage before finished (its last step or round): not the next */
    if (fdpo_trainer_take_stop())
        return fdpo_error("interrupted before the %s (the stages done are kept in %s; run the same fdpo sacpo command "
                          "again: it starts there)", what, o->out);
    if (!data) {
        if (run_online_stage(o, what, init, spec, spec_flag, beta, dir)) return fdpo_error_context("sacpo %s", what);
        return state_mark(st, dir);
    }
    fdpo_dpo_run_opts d = o->dpo;
    d.train.init = init;
    d.train.out = dir;
    d.data = data;
    d.ref = NULL;                 /* the stage's starting model is its reference */
    d.dpo.loss.beta = beta;
    char *state = fdpo_path_join(dir, "training_state.json");
    d.train.resume = fdpo_file_exists(state);
    d.train.continue_how = SACPO_CONTINUE;
    d.train.init_in_run = init_in_out(o, init);
    d.train.occupied_how = SACPO_OCCUPIED;
    d.train.resume_how = SACPO_RESUME;
    d.plan_saved = 1;   /* a new plan's pairs settings passed fdpo_sacpo_opts_check; a saved one's are kept */
    free(state);
    fdpo_log(FDPO_LOG_INFO, "%s: %s -> %s on %s, beta %g%s", what, init, dir, data, beta, d.train.resume ? " (resuming)" : "");
    if (fdpo_dpo_train(&d)) return fdpo_error_context("sacpo %s", what);
    return state_mark(st, dir);
}

static int run_merge(const fdpo_sacpo_opts *o, sacpo_state *st, const char *a, const char *b, double w, const char *dir) {
    if (stage_done(st, dir)) return 0;
    /* a stop (Ctrl-C, SIGTERM) during the stages or a merge: as between stages, not the next
     * merge (every merge ran, and fdpo exited 0) */
    if (fdpo_trainer_take_stop())
        return fdpo_error("interrupted before the merge %s (the stages and merges done are kept in %s; run the same "
                          "fdpo sacpo command again: it starts there)", dir, o->out);
    /* claiming the output is collective under MPI; the merging itself is rank 0's */
    if (fdpo_checkpoint_recover(dir)) return -1;
    if (fdpo_dist_rank() > 0) return state_mark(st, dir);
    const char *models[2] = {a, b};
    double weights[2] = {1 - w, w};
    fdpo_merge_opts mo = {models, 2, weights, NULL};
    fdpo_gpt2 *m = fdpo_merge(&mo);
    fdpo_tokenizer *tok = m ? fdpo_tokenizer_load_dir(a) : NULL;
    int rc = tok ? fdpo_checkpoint_save_all(dir, m, tok, NULL, NULL) : -1;
    fdpo_tokenizer_free(tok);
    fdpo_gpt2_free(m);
    /* done, or failed (then free again too): a process holds at most 8 locks, and a plan has more merges */
    fdpo_dir_unlock(dir);
    if (rc) return fdpo_error_context("sacpo merge %s", dir);
    fdpo_log(FDPO_LOG_INFO, "merge: %g x %s + %g x %s -> %s", 1 - w, a, w, b, dir);
    return state_mark(st, dir);
}

/* a bad spec is named before any stage runs (the online library would only meet it later) by
 * its flag: fdpo_reward_create names it in its own errors, a word list's loader only its file */
static int check_spec(const char *spec, const fdpo_reward_options *ro, const char *flag) {
    if (!spec) return 0;
    fdpo_reward_options named = *ro;
    named.flag = flag;
    fdpo_reward *r = fdpo_reward_create(spec, &named);
    if (!r) return strncmp(fdpo_last_error(), flag, strlen(flag)) ? fdpo_error_context("%s %s", flag, spec) : -1;
    fdpo_reward_free(r);
    return 0;
}

/* a rerun of a saved run (OUT/sacpo.json): it keeps the options it was saved with (--lexicon
 * included, which a run saved before fdpo_reward_lexicon_check may hold unused) */
static int sacpo_resuming(const fdpo_sacpo_opts *o) {
    char *path = fdpo_path_join(o->out, "sacpo.json");
    int saved = fdpo_file_exists(path);
    free(path);
    return saved;
}

/* A rerun of a bf16 run keeps the route its stages ran on (fdpo_train_pin_bf16_route): a stage
 * that starts now would otherwise take the route measured now. The first saved state that
 * records one names it: a dpo stage's directory, or a round of an online stage (its final
 * directory has no state, a round without pairs none either); the stages of one run share
 * the route, as each rerun pins it. */
static int pin_stages_route(const char *out) {
    if (fdpo_get_precision() != FDPO_PRECISION_BF16) return 0;
    DIR *d = opendir(out);
    if (!d) return 0;
    int pinned = 0;
    struct dirent *e;
    while (pinned == 0 && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (!fdpo_sacpo_out_entry(e->d_name) || !strcmp(e->d_name, "sacpo.json") || leftover_suffix(e->d_name))
            continue;   /* a stage's lock, or what an interrupted save of it left */
        char *dir = fdpo_path_join(out, e->d_name);
        pinned = fdpo_train_pin_bf16_route(dir);
        for (long k = 0; pinned == 0 && n > 7 && !strcmp(e->d_name + n - 7, ".online"); k++) {
            char name[32];
            snprintf(name, sizeof name, "round-%ld", k);
            char *round = fdpo_path_join(dir, name);
            int there = fdpo_file_exists(round);
            if (there) pinned = fdpo_train_pin_bf16_route(round);
            free(round);
            if (!there) break;
        }
        free(dir);
    }
    closedir(d);
    return pinned < 0 ? -1 : 0;
}

/* one f-DPO (or online) stage of the plan: its model in, its data or spec, its beta, its dir */
typedef struct {
    char what[64];
    char *init, *dir;           /* owned */
    const char *data, *data_flag, *spec, *spec_flag;
    double beta;
} sacpo_stage;

/* the stages in the order they run. Reward first: one reward stage at beta from --model, then
 * per lambda a safety stage at beta/lambda from it. Safety first: per lambda a safety stage
 * from --model, then a reward stage from that. */
static sacpo_stage *plan_stages(const fdpo_sacpo_opts *o, size_t *n_out) {
    const double beta = o->dpo.dpo.loss.beta;
    sacpo_stage *s = fdpo_calloc(2 * o->n_lambdas + 1, sizeof *s);
    size_t n = 0;
    char *reward_dir = fdpo_path_join(o->out, "reward");
    const sacpo_stage reward = {"", NULL, NULL, o->reward_data, "--reward-data", o->reward_spec, "--reward", beta};
    const sacpo_stage safety = {"", NULL, NULL, o->safety_data, "--safety-data", o->safety_spec, "--safety", 0};
    if (!o->safety_first) {
        s[n] = reward;
        snprintf(s[n].what, sizeof s[n].what, "reward stage");
        s[n].init = fdpo_strdup(o->dpo.train.init);
        s[n++].dir = fdpo_strdup(reward_dir);
    }
    for (size_t i = 0; i < o->n_lambdas; i++) {
        const double lam = o->lambdas[i];
        char *final = fdpo_sacpo_lambda_dir(o->out, lam), lam_text[32];
        fdpo_fmt_double(lam_text, sizeof lam_text, lam);   /* as the stage's directory spells it: %g made two lambdas one */
        s[n] = safety;
        snprintf(s[n].what, sizeof s[n].what, "safety stage (lambda %s)", lam_text);
        s[n].beta = beta / lam;
        if (!o->safety_first) {
            s[n].init = fdpo_strdup(reward_dir);
            s[n++].dir = final;
            continue;
        }
        s[n].init = fdpo_strdup(o->dpo.train.init);
        s[n].dir = fmt_dir(o->out, "safety-lambda", lam, 0, 0);
        n++;
        s[n] = reward;
        snprintf(s[n].what, sizeof s[n].what, "reward stage (lambda %s)", lam_text);
        s[n].init = fdpo_strdup(s[n - 1].dir);
        s[n++].dir = final;
    }
    free(reward_dir);
    *n_out = n;
    return s;
}

static void stages_free(sacpo_stage *s, size_t n) {
    for (size_t i = 0; i < n; i++) { free(s[i].init); free(s[i].dir); }
    free(s);
}

/* stage_unchanged for every done stage that the stages and merges still to run read, before
 * any of them runs */
static int stages_done_unchanged(const fdpo_sacpo_opts *o, const sacpo_state *st, const sacpo_stage *s, size_t n) {
    fdpo_strv checked = {0};
    int rc = 0;
    for (size_t i = 0; !rc && i < n; i++)
        if (!stage_done(st, s[i].dir) && init_in_out(o, s[i].init) && stage_done(st, s[i].init))
            rc = stage_unchanged(st, o->out, s[i].init, &checked);
    /* the merges as sacpo_run makes them */
    for (size_t i = o->safety_first ? 1 : 0; !rc && i < o->n_lambdas; i++)
        for (size_t k = 0; !rc && k < o->n_merge_weights; k++) {
            const double la = i ? o->lambdas[i - 1] : 0, lb = o->lambdas[i];
            char *dir = fmt_dir(o->out, "merge", la, lb, o->merge_weights[k]);
            if (!stage_done(st, dir)) {
                char *a = i ? fdpo_sacpo_lambda_dir(o->out, la) : fdpo_path_join(o->out, "reward");
                char *b = fdpo_sacpo_lambda_dir(o->out, lb);
                if (stage_done(st, a)) rc = stage_unchanged(st, o->out, a, &checked);
                if (!rc && stage_done(st, b)) rc = stage_unchanged(st, o->out, b, &checked);
                free(a); free(b);
            }
            free(dir);
        }
    fdpo_strv_free(&checked);
    return rc;
}

/* Every online stage's options as its run takes them (online_stage_opts), by fdpo online's
 * own check of a rounds run (fdpo_online_rounds_opts_check), before any stage runs: --bt-scale
 * 0 or --min-lr-ratio under online's constant schedule failed only when the stage started,
 * after a stage on a file had trained. */
static int online_stages_check(const fdpo_sacpo_opts *o) {
    size_t n;
    sacpo_stage *s = plan_stages(o, &n);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (s[i].data) continue;
        char *run = online_run_dir(s[i].dir);
        fdpo_online_opts on = online_stage_opts(o, s[i].init, s[i].spec, s[i].spec_flag, s[i].beta, run);
        if (fdpo_online_rounds_opts_check(&on))
            rc = fdpo_error_context("sacpo %s, online (fdpo online's defaults where a flag is not given: --lr 1e-4, "
                                    "--schedule constant)", s[i].what);
        free(run);
    }
    stages_free(s, n);
    return rc;
}

/* The online stages' prompts as fdpo online checks them at its start: --data holds prompts,
 * each of which leaves room to generate in --model's context (every stage starts from a model
 * of its shape and tokenizer). Found by the first online stage, a missing --data or a prompt too
 * long failed the run after the stages before it had trained. */
static int online_prompts_check(const fdpo_sacpo_opts *o) {
    char **prompts = NULL;
    size_t n = 0, *lines = NULL;
    if (fdpo_read_prompts(o->online.prompts, &prompts, &lines, &n)) return fdpo_error_context("--data");
    fdpo_gpt2_config c;
    fdpo_tokenizer *tok = NULL;
    int rc = n == 0 ? fdpo_error("--data %s: no prompts", o->online.prompts) : 0;
    if (!rc) rc = fdpo_eval_load_config("--model", o->dpo.train.init, &c, &tok);
    if (!rc) rc = fdpo_trainer_set_chat_template(tok, o->online.dpo.train.chat_template);   /* as the stages render them */
    if (!rc) rc = fdpo_prompts_check_fit(tok, prompts, lines, n, &c, NULL, o->online.sample.max_new_tokens, o->online.prompts);
    if (!rc) rc = fdpo_online_sample_check(&o->online, c.vocab_size);   /* a --top-p at or below 1/V: greedy */
    if (tok) fdpo_tokenizer_free(tok);
    fdpo_free_strings(prompts, n);
    free(lines);
    return rc;
}

/* A stage's pairs file read as its stage reads it (fdpo_dpo_train): --model's tokenizer and
 * chat template (every stage's model is --model's shape and tokenizer), --max-length (default
 * n_positions) and the pairs flags, and at least one training pair left by --eval-fraction's
 * split. A malformed or empty --safety-data failed the safety stage after the reward stage had
 * trained. A --max-length the model refuses is left to the first stage, which names it before
 * it trains. */
static int pairs_check(const fdpo_sacpo_opts *o, const char *path, const char *flag) {
    fdpo_train_opts t = o->dpo.train;
    t.resume = 0;
    t.out = NULL;
    fdpo_gpt2_config c;
    if (fdpo_checkpoint_load_config(t.init, &c)) return fdpo_error_context("--model %s", t.init);
    fdpo_pref_options popt = o->dpo.pref;
    if (popt.max_length == 0) popt.max_length = c.n_positions;
    if (popt.max_length > c.n_positions) return 0;
    fdpo_tokenizer *tok = fdpo_trainer_load_tokenizer(&t);
    if (!tok) return -1;
    fdpo_pref_set set = {0};
    size_t *train_idx = NULL, *eval_idx = NULL, n_train = 0, n_eval = 0;
    int rc = fdpo_pref_load(path, tok, &popt, &set);
    if (!rc) rc = fdpo_pref_split(set.n, o->dpo.eval_fraction, (uint64_t)t.seed, &train_idx, &n_train, &eval_idx, &n_eval);
    if (!rc && n_train == 0) rc = fdpo_error("%s: no training pairs left after the eval split", path);
    if (rc) fdpo_error_context("%s", flag);
    free(train_idx);
    free(eval_idx);
    fdpo_pref_free(&set);
    fdpo_tokenizer_free(tok);
    return rc;
}

/* the inputs of the stages still to run, before any of them trains: their pairs files open (a
 * rerun that adds a lambda needs both files in safety-first order, and the second was found
 * missing only after the first had trained) and read as pairs their stage trains on
 * (pairs_check), and the online stages' prompts fit */
static int stages_data_open(const fdpo_sacpo_opts *o, const sacpo_state *st, const sacpo_stage *s, size_t n) {
    int online = 0;
    const char *checked[2] = {NULL, NULL};   /* the flags whose file was read: each once */
    for (size_t i = 0; i < n; i++) {
        if (st && stage_done(st, s[i].dir)) continue;
        online |= !s[i].data;
        if (!s[i].data) continue;
        /* the pairs reader's own check (fdpo_open_regular): a directory or a device opened with
         * fopen, and the stage reading it refused it only after the stages before it trained */
        FILE *f = fdpo_open_regular(s[i].data);
        if (!f) {
            char why[1024];
            snprintf(why, sizeof why, "%s", fdpo_last_error());
            return fdpo_error("%s %s", s[i].data_flag, why);
        }
        fclose(f);
    }
    for (size_t i = 0; i < n; i++) {
        if ((st && stage_done(st, s[i].dir)) || !s[i].data) continue;
        if ((checked[0] && !strcmp(checked[0], s[i].data_flag)) || (checked[1] && !strcmp(checked[1], s[i].data_flag)))
            continue;
        if (pairs_check(o, s[i].data, s[i].data_flag)) return -1;
        checked[checked[0] ? 1 : 0] = s[i].data_flag;
    }
    return online ? online_prompts_check(o) : 0;
}

/* 1 when an online stage's directory dir holds its own final model: the stage's last round's
 * model files (fdpo_hash_path), which run_online_stage copies there before it is recorded done
 * (a run stopped in between left it); 0 for anything else, or nothing */
static int online_stage_final_there(const fdpo_sacpo_opts *o, const char *dir) {
    char *run = online_run_dir(dir), name[32];
    snprintf(name, sizeof name, "round-%ld", o->online.rounds - 1);
    char *last = fdpo_path_join(run, name);
    uint64_t h_dir = FDPO_HASH_INIT, h_last = FDPO_HASH_INIT;
    const int own = fdpo_file_exists(dir) && fdpo_file_exists(last) && !fdpo_hash_path(&h_dir, dir) &&
                    !fdpo_hash_path(&h_last, last) && h_dir == h_last;
    fdpo_clear_error();   /* unreadable: not its own, which the check below names */
    free(last);
    free(run);
    return own;
}

/* An online stage's rounds directory run that holds rounds (its online.json) must hold this
 * stage's: their fixed flags (fdpo_online_round_settings, as online.json records them) the
 * stage's run (online_stage_opts). Another run's rounds there were found only when the stage
 * started, after the stages before it had trained, by fdpo online's resume; and when they were
 * as many as --rounds, not at all: the stage copied another run's last round as its model. */
static int online_rounds_are_the_stage(const fdpo_sacpo_opts *o, const sacpo_stage *s, const char *run) {
    char *path = fdpo_path_join(run, "online.json");
    if (!fdpo_file_exists(path)) { free(path); return 0; }   /* none: fdpo online's own checks */
    size_t len;
    char *text = fdpo_read_file(path, &len);
    cJSON *j = text ? cJSON_ParseWithLength(text, len) : NULL;
    const cJSON *set = cJSON_GetObjectItemCaseSensitive(j, "settings"), *fixed = cJSON_GetObjectItemCaseSensitive(j, "fixed");
    fdpo_settings saved = {0}, now = {0};
    int rc = !text ? -1 : !cJSON_IsObject(set) || !cJSON_IsArray(fixed)
                              ? fdpo_error("%s: not an online run's settings file", path)
                              : fdpo_settings_from_json(&saved, set, fixed, path);
    if (rc == 0) {
        fdpo_online_opts on = online_stage_opts(o, s->init, s->spec, s->spec_flag, s->beta, run);
        fdpo_online_round_settings(&on, &now);
        /* as fdpo online's resume compares them (online_plan) */
        fdpo_online_settings_for_resume(&saved, &now, on.dpo.train.init_in_run);
        char how[512];
        snprintf(how, sizeof how, "%s holds rounds that ran with it: if they are this stage's, run fdpo sacpo with the "
                 "flags and files that stage started with to resume it; else move %s away, or give sacpo another --out",
                 run, run);
        rc = fdpo_settings_check_resume_how(&saved, &now, how);
        if (rc) fdpo_error_context("sacpo %s", s->what);
    }
    fdpo_settings_free(&saved);
    fdpo_settings_free(&now);
    cJSON_Delete(j);
    free(text);
    free(path);
    return rc;
}

/* The directories of the stages still to run, before any stage trains: one that holds a
 * checkpoint (or another run's files) with no training state of a stage to resume is refused
 * as its trainer would refuse it (fdpo_train_out_check), which found it only when that stage
 * started, after the stages before it had trained. An online stage's directory receives its
 * last round at its end, over whatever was there (a checkpoint there was replaced without a
 * word), and may hold only that round's copy; its rounds' directory DIR.online may hold no
 * checkpoint (fdpo online's own check, which refused it when the stage started). */
static int stages_out_free(const fdpo_sacpo_opts *o, const sacpo_state *st, const sacpo_stage *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (stage_done(st, s[i].dir)) continue;
        fdpo_train_opts t = o->dpo.train;
        char *state = fdpo_path_join(s[i].dir, "training_state.json");
        t.out = s[i].dir;
        t.resume = s[i].data ? fdpo_file_exists(state) : online_stage_final_there(o, s[i].dir);
        t.occupied_how = SACPO_OCCUPIED;
        free(state);
        if (fdpo_train_out_check(&t)) return fdpo_error_context("sacpo %s", s[i].what);
        if (s[i].data) continue;
        char *run = online_run_dir(s[i].dir);
        const char *held = fdpo_out_holds_run(run, FDPO_RUN_ROUNDS | FDPO_RUN_TOKENIZER);   /* as fdpo_online_run */
        int rc = held ? fdpo_error("sacpo %s: --out: %s already holds %s of another run (%s)", s[i].what, run, held,
                                   SACPO_OCCUPIED) : 0;
        if (!rc) rc = online_rounds_are_the_stage(o, &s[i], run);
        free(run);
        if (rc) return -1;
    }
    return 0;
}

/* Under MPI every rank runs every stage and merge of its own plan, each a collective job:
 * a rank with another --lambda list or --merge went on into a stage the others never started
 * (and waited in it for ever). The plan as it runs: each stage's directory, model in, data or
 * spec and beta, in order (--lambda, --order, --beta, the data and --out), then the merges'
 * weights. The flags of each stage's training its own trainer compares. */
static int plan_agree(const fdpo_sacpo_opts *o, const sacpo_stage *s, size_t n) {
    if (fdpo_dist_size() < 2) return 0;
    uint64_t h = FDPO_HASH_INIT;
    const uint64_t counts[3] = {n, o->n_lambdas, o->n_merge_weights};
    h = fdpo_hash64(h, counts, sizeof counts);
    for (size_t i = 0; i < n; i++) {
        /* the paths as the places they name (fdpo_path_identity): "--out s" on one rank and
         * "--out ./s" on another are one plan; the spec as its text */
        const char *path[] = {s[i].dir, s[i].init, s[i].data};
        for (size_t k = 0; k < sizeof path / sizeof path[0]; k++) {
            char *id = path[k] ? fdpo_path_identity(path[k]) : fdpo_strdup("");
            h = fdpo_hash64(h, id, strlen(id) + 1);
            free(id);
        }
        const char *spec = s[i].spec ? s[i].spec : "";
        h = fdpo_hash64(h, spec, strlen(spec) + 1);
        h = fdpo_hash64(h, &s[i].beta, sizeof s[i].beta);
    }
    h = fdpo_hash64(h, o->merge_weights, o->n_merge_weights * sizeof *o->merge_weights);
    return fdpo_dist_check_agree("the stages (--lambda, --merge, --order, --beta, the data or --out)", h);
}

static int sacpo_run(const fdpo_sacpo_opts *o) {
    if (fdpo_sacpo_opts_check(o)) return -1;
    const char *const specs[] = {o->reward_spec, o->safety_spec};
    if ((!sacpo_resuming(o) && fdpo_reward_lexicon_check(o->online.reward_opts.lexicon, specs, 2)) ||
        check_spec(o->reward_spec, &o->online.reward_opts, "--reward") ||
        check_spec(o->safety_spec, &o->online.reward_opts, "--safety"))
        return -1;
    size_t n_stages;
    sacpo_stage *stages = plan_stages(o, &n_stages);
    if (plan_agree(o, stages, n_stages)) { stages_free(stages, n_stages); return -1; }
    /* a first run opens its pairs files before it claims --out; a rerun, those of the stages
     * still to run once it has read which are done */
    if (!sacpo_resuming(o) && stages_data_open(o, NULL, stages, n_stages)) { stages_free(stages, n_stages); return -1; }
    if (fdpo_dist_rank() == 0 && (fdpo_dir_lock(o->out, "--out") || fdpo_mkdir_p(o->out))) {
        fdpo_dir_unlock(o->out);   /* a refused run leaves OUT free (a no-op when the lock was refused) */
        stages_free(stages, n_stages);
        return -1;
    }
    if (fdpo_dist_rank() == 0) fdpo_remove_stale_tmp(o->out);   /* under the lock: a killed writer's NAME.tmp.PID */
    if (fdpo_dist_barrier()) { stages_free(stages, n_stages); return -1; }
    sacpo_state st = {0};
    /* a dpo/rl/online run's files next to the stages would be mixed with them */
    const char *held = fdpo_out_holds_run(o->out, FDPO_RUN_SACPO | FDPO_RUN_TOKENIZER);
    int rc = held ? fdpo_error("--out: %s already holds %s of another run; choose another --out", o->out, held)
                  : state_open(&st, o);
    if (!rc) rc = stages_done_present(&st, o->out);
    if (!rc) rc = stages_data_open(o, &st, stages, n_stages);
    if (!rc) rc = stages_out_free(o, &st, stages, n_stages);
    if (!rc) rc = stages_done_unchanged(o, &st, stages, n_stages);
    if (!rc) rc = pin_stages_route(o->out);
    if (!rc && st.plan_changed && fdpo_dist_rank() == 0) rc = fdpo_write_json_atomic(st.path, st.root, 1);
    for (size_t i = 0; !rc && i < n_stages; i++)
        rc = run_stage(o, &st, stages[i].what, stages[i].init, stages[i].data, stages[i].spec, stages[i].spec_flag,
                       stages[i].beta, stages[i].dir);
    stages_free(stages, n_stages);
    /* P-SACPO: each pair of neighbours in the chain of models by lambda. Reward first, the chain
     * starts at the reward stage, lambda = 0 (Wachi et al. 2024, sec. 6, merge it with one model
     * of a conservatively large lambda: --lambda 10 --merge q is (1 - q) reward + q lambda-10);
     * safety first has no model of lambda 0 */
    const size_t first = o->safety_first ? 1 : 0;
    for (size_t i = first; !rc && i < o->n_lambdas; i++)
        for (size_t k = 0; !rc && k < o->n_merge_weights; k++) {
            const double la = i ? o->lambdas[i - 1] : 0, lb = o->lambdas[i];
            char *a = i ? fdpo_sacpo_lambda_dir(o->out, la) : fdpo_path_join(o->out, "reward");
            char *b = fdpo_sacpo_lambda_dir(o->out, lb);
            char *dir = fmt_dir(o->out, "merge", la, lb, o->merge_weights[k]);
            rc = run_merge(o, &st, a, b, o->merge_weights[k], dir);
            free(a); free(b); free(dir);
        }
    cJSON_Delete(st.root);
    free(st.path);
    if (fdpo_dist_rank() == 0) fdpo_dir_unlock(o->out);
    return rc;
}

/* a resumed run's bf16 route pin (fdpo_train_pin_bf16_route) is this run's alone: a later run
 * in the process takes its own route, as in a fresh process */
int fdpo_sacpo_run(const fdpo_sacpo_opts *o) {
    const char *route_pinned_before = fdpo_bf16_route_pinned();
    int rc = sacpo_run(o);
    fdpo_bf16_route_restore(route_pinned_before);
    return rc;
}
