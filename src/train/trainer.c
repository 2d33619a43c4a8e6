/* A training run's shared machinery: model/optimizer/state setup (fresh, --init or
 * --resume), one optimizer step, progress, periodic and final checkpoints. */
#include <cJSON.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "fdpo/chat.h"
#include "fdpo/dist.h"
#include "fdpo/dpo.h"
#include "fdpo/eval.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/rm.h"
#include "fdpo/tokenizer.h"
#include "fdpo/trainer.h"

int fdpo_train_out_check(const fdpo_train_opts *o) {
    if (o->resume || o->overwrite || !o->out) return 0;
    /* a caller without those flags says what its user does instead (sacpo's stages) */
    const char *how = o->occupied_how;
    if (fdpo_out_holds_run(o->out, FDPO_RUN_ROUNDS | FDPO_RUN_SACPO | FDPO_RUN_TOKENIZER))
        return fdpo_error("--out: %s already holds a checkpoint (%s)", o->out,
                          how ? how : "use --resume to continue it, --overwrite to start over");
    /* another kind of run (online rounds, sacpo stages): its metrics.jsonl would be replaced */
    const char *held = fdpo_out_holds_run(o->out, FDPO_RUN_CHECKPOINT | FDPO_RUN_TOKENIZER);
    if (held) return fdpo_error("--out: %s already holds %s of another run (%s)", o->out, held,
                                how ? how : "choose another --out, or --overwrite to write over its files");
    /* a tokenizer (tokenizer train's OUT): the save writes the run's tokenizer and drops OUT's
     * tokenizer files (a fresh run deleted it, exit 0). Not when it is the run's own --tokenizer,
     * which the save writes back. */
    held = fdpo_out_holds_run(o->out, FDPO_RUN_CHECKPOINT | FDPO_RUN_ROUNDS | FDPO_RUN_SACPO);
    if (held && !(o->tokenizer && fdpo_settings_same_path(o->out, o->tokenizer)))
        return fdpo_error("--out: %s already holds %s, which this run's save would replace (%s)", o->out, held,
                          how ? how : "choose another --out, or --overwrite to replace it");
    return 0;
}

int fdpo_train_out_ref_check(const char *out, const char *ref, const char *model) {
    const char *dir = ref ? ref : model;
    if (!out || !dir) return 0;
    if (fdpo_settings_same_path(out, dir))
        return fdpo_error("--out %s: is the reference (%s %s): a resumed run would load its half-trained policy as the "
                          "reference; give another --out", out, ref ? "--ref" : "--model", dir);
    /* a reference that is a LoRA adapter is read onto its base: OUT must not be that base */
    char *base = fdpo_lora_is_checkpoint(dir) ? fdpo_lora_peft_base(dir) : NULL;
    int same = base && fdpo_settings_same_path(out, base);
    int rc = same ? fdpo_error("--out %s: is the base model of the reference (%s %s, a LoRA adapter on %s): a resumed "
                               "run would load its half-trained policy under the adapter as the reference; give another "
                               "--out", out, ref ? "--ref" : "--model", dir, base) : 0;
    free(base);
    return rc;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The files of a checkpoint directory that make the model a stage starts from: those a
 * checkpoint is made of (fdpo_checkpoint_file_kind: weights, shards, model and tokenizer
 * files), not its training state (the optimizer's), nor metrics or an eval.json written
 * beside them later; nor special_tokens_map.json: every Hugging Face directory holds one,
 * which the fdpo before read nowhere and hashed nowhere (sacpo.json, online.json, a training
 * state), and which mostly repeats tokenizer_config.json or adds a pad, which changes no text's
 * ids. Where it is read (legacy layouts) and changes eos or bos, the tokenizer comparison of
 * the model and its reference refuses naming them (fdpo_tokenizer_diff). */
static int model_file(const char *name) {
    return strcmp(name, "special_tokens_map.json") && fdpo_checkpoint_file_kind(name) != 0 && strcmp(name, "training_state.json") &&
           strcmp(name, "training_state.safetensors");
}

/* 8 bytes at a time (a 124M model's 500 MB at memory speed, where the byte-wise FNV took 2 s
 * a run), each word mixed in by multiply and xor-shift so that every bit of it reaches every
 * bit of the state (a multiply alone moves differences up only: two top-bit flips cancelled);
 * the tail byte-wise */
static uint64_t hash_words(uint64_t h, const char *buf, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, buf + i, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ULL;
        h ^= h >> 32;
    }
    return fdpo_hash64(h, buf + i, n - i);
}

int fdpo_hash_path(uint64_t *h, const char *path) {
    struct stat st;
    if (stat(path, &st)) return -1;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return -1;
        fdpo_strv dir = {0};
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.') fdpo_strv_push(&dir, e->d_name);
        closedir(d);
        qsort(dir.v, dir.n, sizeof *dir.v, by_name);
        char **names = dir.v;
        size_t n = dir.n;
        int rc = 0;
        for (size_t i = 0; i < n; i++) {
            char *p = fdpo_path_join(path, names[i]);
            struct stat e;
            if (!stat(p, &e) && S_ISREG(e.st_mode) && model_file(names[i])) {
                *h = fdpo_hash64(*h, names[i], strlen(names[i]) + 1);
                rc |= fdpo_hash_path(h, p);
            }
            free(p);
            free(names[i]);
        }
        free(names);
        return rc;
    }
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char buf[1 << 16];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) *h = hash_words(*h, buf, k);
    fclose(f);
    return 0;
}

void fdpo_reward_content_files(const char *spec, const char *lexicon, fdpo_strv *out) {
    if (!spec || !strncmp(spec, "cmd:", 4)) return;
    if (lexicon && (!strcmp(spec, "afinn") || !strcmp(spec, "afinn:sum"))) fdpo_strv_push(out, lexicon);
    else fdpo_reward_spec_inputs(spec, out);
}

int fdpo_reward_content_hash(const char *spec, const char *lexicon, uint64_t *h, uint64_t *base, int *has_base) {
    fdpo_strv in = {0};
    fdpo_reward_content_files(spec, lexicon, &in);
    *h = *base = FDPO_HASH_INIT;
    *has_base = 0;
    int rc = 0, brc = 0;
    for (size_t i = 0; i < in.n && !rc; i++) {
        rc = fdpo_hash_path(h, in.v[i]);
        /* an rm:DIR that is a LoRA adapter is read onto its base */
        char *b = !rc && fdpo_lora_is_checkpoint(in.v[i]) ? fdpo_lora_peft_base(in.v[i]) : NULL;
        if (b && !*has_base) { brc = fdpo_hash_path(base, b); *has_base = !brc; }
        free(b);
    }
    const int n = (int)in.n;
    fdpo_strv_free(&in);
    fdpo_clear_error();
    return rc ? -1 : n;
}

int fdpo_reward_changed_error(const char *spec, const char *lexicon, const char *then, uint64_t was, uint64_t now) {
    fdpo_strv in = {0};
    fdpo_reward_content_files(spec, lexicon, &in);
    char files[1024] = "";
    for (size_t i = 0, n = 0; i < in.n && n < sizeof files; i++)
        n += (size_t)snprintf(files + n, sizeof files - n, "%s%s", i ? ", " : "", in.v[i]);
    fdpo_strv_free(&in);
    return fdpo_error("--resume: --reward %s: the content of %s differs from what %s (hash %016llx then, %016llx now; "
                      "re-trained or edited in place?): resume needs the same reward", spec, files, then,
                      (unsigned long long)was, (unsigned long long)now);
}

uint64_t fdpo_reward_content_hash1(const char *spec, const char *lexicon, int *has_hash) {
    uint64_t h, base;
    int has_base;
    *has_hash = fdpo_reward_content_hash(spec, lexicon, &h, &base, &has_base) > 0;
    return has_base ? fdpo_hash64(h, &base, sizeof base) : h;
}

int fdpo_train_out_reward_check(const char *out, const char *spec) {
    if (!out) return 0;
    fdpo_strv in = {0};
    fdpo_reward_spec_inputs(spec, &in);   /* the files an output may not replace, as eval_claim_out's */
    int rc = 0;
    for (size_t i = 0; i < in.n && !rc; i++) {
        if (fdpo_settings_same_path(out, in.v[i])) {
            rc = fdpo_error("--out %s: is read by --reward %s: this run's saves would replace it with the policy; "
                            "give another --out", out, spec);
            break;
        }
        /* an rm:DIR that is a LoRA adapter is read onto its base: OUT must not be that base */
        char *base = fdpo_lora_is_checkpoint(in.v[i]) ? fdpo_lora_peft_base(in.v[i]) : NULL;
        if (base && fdpo_settings_same_path(out, base))
            rc = fdpo_error("--out %s: is the base model of --reward %s (a LoRA adapter on %s), which this run's saves "
                            "would replace with the policy; give another --out", out, spec, base);
        free(base);
    }
    fdpo_strv_free(&in);
    return rc;
}

/* One input of the run, and the base of a LoRA adapter it names, against fdpo_out_replacing_drops */
static int input_kept_by_save(const char *out, const char *flag, const char *path) {
    if (!path) return 0;
    char *entry = fdpo_out_replacing_drops(out, path);
    int rc = entry ? fdpo_error("%s %s: lies in %s, which this run's first save removes with the run it replaces in %s "
                                "(--overwrite), while this run reads it again (--resume; a LoRA adapter's base); copy it "
                                "out of %s first, or give another --out", flag, path, entry, out, out) : 0;
    free(entry);
    char *base = !rc && fdpo_lora_is_checkpoint(path) ? fdpo_lora_peft_base(path) : NULL;
    entry = base ? fdpo_out_replacing_drops(out, base) : NULL;
    if (entry)
        rc = fdpo_error("%s %s: a LoRA adapter on %s, which lies in %s, which this run's first save removes with the run "
                        "it replaces in %s (--overwrite), while this run reads it again; copy it out of %s first, or "
                        "give another --out", flag, path, base, entry, out, out);
    free(base); free(entry);
    return rc;
}

int fdpo_train_out_inputs_check(const fdpo_train_opts *o, const fdpo_settings *inputs) {
    if (!o->out || !o->overwrite || o->resume || o->out_claimed) return 0;
    if (input_kept_by_save(o->out, "--model", o->init) || input_kept_by_save(o->out, "--tokenizer", o->tokenizer) ||
        input_kept_by_save(o->out, "--data", o->data))
        return -1;
    for (size_t i = 0; inputs && i < inputs->n; i++) {
        const fdpo_setting *x = &inputs->v[i];
        if (!x->str) continue;
        if (x->path) {   /* --model, --ref, --data, --eval-file, --lexicon: the settings' key is the flag */
            char flag[96];
            snprintf(flag, sizeof flag, "--%s", x->key);
            if (input_kept_by_save(o->out, flag, x->str)) return -1;
        } else if (!strcmp(x->key, "reward")) {   /* rm:DIR (and its base), lexicon: files */
            fdpo_strv in = {0};
            fdpo_reward_spec_inputs(x->str, &in);
            int rc = 0;
            for (size_t j = 0; j < in.n && !rc; j++) rc = input_kept_by_save(o->out, "--reward", in.v[j]);
            fdpo_strv_free(&in);
            if (rc) return -1;
        }
    }
    return 0;
}

/* batch x accum > n, without the product (which wraps for huge flags) */
static int step_exceeds(const fdpo_train_opts *o, size_t n_items) {
    return (size_t)o->batch_size > n_items / (size_t)o->grad_accum;
}

size_t fdpo_train_step_items(const fdpo_train_opts *o, size_t n_items) {
    if (o->batch_size <= 0 || o->grad_accum <= 0) return 0;
    return step_exceeds(o, n_items) ? n_items : (size_t)o->batch_size * (size_t)o->grad_accum;
}

size_t fdpo_train_micro_items(const fdpo_train_opts *o, size_t n_items) {
    size_t step = fdpo_train_step_items(o, n_items);
    return o->batch_size > 0 && (size_t)o->batch_size < step ? (size_t)o->batch_size : step;
}

size_t fdpo_train_total_steps(const fdpo_train_opts *o, size_t n_items) {
    if (o->steps > 0) return (size_t)o->steps;
    size_t per_step = fdpo_train_step_items(o, n_items);
    if (per_step == 0 || !(o->epochs > 0)) return 0;
    double steps = ceil(o->epochs * (double)n_items / (double)per_step - 1e-9);
    /* --epochs 1e300 gave a double past size_t, whose conversion is undefined (C11 6.3.1.4) */
    return steps > (double)FDPO_MAX_STEPS ? SIZE_MAX : (size_t)steps;
}

fdpo_tokenizer *fdpo_trainer_load_tokenizer(const fdpo_train_opts *o) {
    fdpo_tokenizer *t = NULL;
    if (o->resume && o->out) {
        /* a refusal frees OUT again, unless it was this process's already (a running open) */
        const int held_before = fdpo_dir_locked(o->out);
        if (fdpo_checkpoint_recover(o->out)) return NULL;
        char *p = fdpo_path_join(o->out, "training_state.json");
        int has = fdpo_file_exists(p);
        free(p);
        if (!has) fdpo_error("--resume: %s has no training state (training_state.json missing: nothing to resume)", o->out);
        else if (!(t = fdpo_tokenizer_load_dir(o->out))) fdpo_error_context("--resume %s", o->out);
        if (!t && !held_before) fdpo_dir_unlock(o->out);
    } else if (o->tokenizer) {
        t = fdpo_tokenizer_load_dir(o->tokenizer);
        if (!t) fdpo_error_context("--tokenizer %s", o->tokenizer);
    } else if (o->init) {
        t = fdpo_checkpoint_load_tokenizer(o->init);
        char *base = NULL;   /* a LoRA checkpoint's adapter_config.json that does not read: its error alone */
        if (!t && fdpo_lora_is_checkpoint(o->init) && fdpo_lora_peft_base_read(o->init, &base)) fdpo_error_context("--model %s", o->init);
        else if (!t && fdpo_checkpoint_has_tokenizer(o->init)) fdpo_error_context("--model %s", o->init);   /* files that do not read */
        else if (!t && o->tokenizer_flag)
            fdpo_error_context("--model %s (pass --tokenizer DIR, or copy the tokenizer files into the checkpoint)", o->init);
        else if (!t) fdpo_error_context("--model %s (copy the tokenizer files into the checkpoint: this command reads them from there)", o->init);
        free(base);
    } else {
        t = fdpo_tokenizer_byte();
    }
    /* checked here, before any data is read */
    if (t && fdpo_trainer_set_chat_template(t, o->chat_template)) { fdpo_tokenizer_free(t); return NULL; }
    return t;
}

int fdpo_trainer_set_chat_template(fdpo_tokenizer *t, const char *name) {
    if (!name) return 0;
    fdpo_tokenizer_set_chat_template(t, name);
    fdpo_chat chat;
    if (fdpo_chat_for(t, &chat)) return strcmp(name, "auto") ? -1 : 0;
    fdpo_chat_free(&chat);
    return 0;
}

int fdpo_trainer_check_lm(const fdpo_gpt2_config *c, const char *flag, const char *dir) {
    if (!c->num_labels) return 0;
    return fdpo_error("%s %s: a reward model (%s), not a language model %s", flag, dir, fdpo_gpt2_architecture(c, 1),
                      !strcmp(flag, "--ref") ? "to serve as the reference" : "to align");
}


fdpo_train_opts fdpo_train_opts_over_prompts(const fdpo_train_opts *base, const char *model, const char *prompts,
                                             long per_step, const char *step_flag) {
    fdpo_train_opts t = *base;
    t.init = model;
    t.tokenizer = NULL;
    t.shuffle = 0;
    t.batch_size = per_step;
    t.grad_accum = 1;
    t.data = prompts;
    t.step_flag = step_flag;
    return t;
}

int fdpo_prompt_run_open(fdpo_prompt_run *pr, fdpo_train_opts *t, const char *prompts, const char *reward,
                         const fdpo_reward_options *reward_opts, const char *ref, const char *model) {
    memset(pr, 0, sizeof *pr);
    if (fdpo_read_prompts(prompts, &pr->prompts, &pr->prompt_lines, &pr->n_prompts))
        return fdpo_error_context("--data");   /* the error names the file */
    if (pr->n_prompts == 0) return fdpo_error("--data %s: no prompts", prompts);
    pr->reward = fdpo_reward_create(reward, reward_opts);
    if (pr->reward && fdpo_reward_check_agree(pr->reward)) { fdpo_reward_free(pr->reward); pr->reward = NULL; }
    if (!pr->reward) return -1;   /* the message names --reward */
    if (!(pr->tok = fdpo_trainer_load_tokenizer(t))) return -1;
    /* LoRA without --ref, or with a --ref naming --model (any spelling: fdpo_settings_same_path),
     * the adapters' base: the reference is the policy with its adapters off (no second copy, as
     * online's rounds take it: is_lora_base), unless --model is a LoRA checkpoint this run
     * continues: then the reference is that checkpoint (base + its adapter, a second copy), not
     * its base, as in dpo, kto and rounds */
    pr->ref_is_base = t->lora_r > 0 && (!ref || fdpo_settings_same_path(ref, model)) && !fdpo_lora_is_checkpoint(model);
    if (!pr->ref_is_base) {
        /* with no --ref the reference is --model: refused as a reward model under that name */
        if (!(pr->ref = fdpo_trainer_load_ref(ref, model, pr->tok, 0, t->lora_r <= 0, &t->ref_hash))) return -1;
        t->ref_flag = ref ? "--ref" : "--model";   /* recorded: a resume refuses other reference weights */
        t->ref_dir = ref ? ref : model;
    }
    /* recorded: a resume refuses a reward whose files changed in place (rm:DIR, word lists) */
    t->reward_spec = reward;
    t->reward_lexicon = reward_opts->lexicon;
    t->reward_hash = fdpo_reward_content_hash1(reward, reward_opts->lexicon, &t->has_reward_hash);
    return 0;
}

void fdpo_prompt_run_close(fdpo_prompt_run *pr, const fdpo_train_opts *t, int trainer_opened) {
    if (!trainer_opened && t->out && !t->out_claimed) fdpo_dir_unlock(t->out);   /* a refused resume: the tokenizer's load took OUT */
    if (pr->tok) fdpo_tokenizer_free(pr->tok);
    fdpo_gpt2_free(pr->ref);
    if (pr->reward) fdpo_reward_free(pr->reward);
    fdpo_free_strings(pr->prompts, pr->n_prompts);
    free(pr->prompt_lines);
    memset(pr, 0, sizeof *pr);
}

fdpo_gpt2 *fdpo_trainer_load_ref(const char *ref, const char *model, const fdpo_tokenizer *tok, size_t policy_vocab,
                                 int fold_lora, uint64_t *weights_hash) {
    const char *flag = ref ? "--ref" : "--model", *dir = ref ? ref : model;
    fdpo_gpt2 *m = fdpo_checkpoint_load_model(dir);
    if (!m) { fdpo_error_context("%s %s", flag, dir); return NULL; }
    /* the form the policy takes: a policy trained in full folds its LoRA checkpoint
     * (fdpo_trainer_open), and the same checkpoint as the reference must give the same bits */
    if (fold_lora) fdpo_lora_merge(m);
    int rc = fdpo_trainer_check_lm(&m->config, flag, dir);
    if (!rc && ref && tok) {   /* a directory without tokenizer files: the run's own rules apply */
        fdpo_tokenizer *rt = fdpo_checkpoint_load_tokenizer(ref);
        char what[512];
        if (!rt && fdpo_checkpoint_has_tokenizer(ref))   /* files it cannot read: no silent pass of the check */
            rc = fdpo_error_context("--ref %s", ref);
        else if (rt && fdpo_tokenizer_diff(rt, tok, what, sizeof what))
            rc = fdpo_error("--ref %s: its tokenizer differs from that of the policy %s (%s): the same text would be "
                            "other ids", ref, model, what);
        fdpo_tokenizer_free(rt);
    }
    if (!rc && policy_vocab && m->config.vocab_size != policy_vocab)
        rc = fdpo_error("--ref %s: vocab_size %zu differs from the policy's %zu", dir, m->config.vocab_size, policy_vocab);
    uint64_t h = !rc && (weights_hash || fdpo_dist_size() > 1) ? fdpo_hash_model(m) : 0;
    if (!rc && fdpo_dist_size() > 1) {   /* a rank's stale copy at the same path would score its share with other weights */
        char what[1100];
        snprintf(what, sizeof what, "the reference's weights (%s %.1000s)", flag, dir);
        rc = fdpo_dist_check_agree(what, h);
    }
    if (rc) { fdpo_gpt2_free(m); return NULL; }
    if (weights_hash) *weights_hash = h;
    return m;
}

/* The starting policy of a language-model trainer: rm alone also takes (and continues) a
 * reward model. */
static int policy_not_lm(const fdpo_trainer *tr, const char *kind) {
    return strcmp(kind, "rm") && fdpo_trainer_check_lm(&tr->model->config, "--model", tr->opts.init ? tr->opts.init : "model");
}

static int check_model_fits(const fdpo_trainer *tr, const char *where) {
    const fdpo_gpt2_config *c = &tr->model->config;
    size_t tv = fdpo_tokenizer_vocab_size(tr->tok);
    if (c->vocab_size < tv)
        return fdpo_error("%s: model vocab_size %zu is smaller than the tokenizer's %zu", where, c->vocab_size, tv);
    if ((size_t)tr->opts.seq_len > c->n_positions)
        return fdpo_error("--seq-len: %ld exceeds the model's n_positions %zu", tr->opts.seq_len, c->n_positions);
    return 0;
}

/* What the optimizer, clipping and the training state work on: the adapters of a LoRA
 * run, else the whole model. */
static fdpo_gpt2 *trained(const fdpo_trainer *tr) { return tr->model->lora ? &tr->model->lora->view : tr->model; }

static char *absolute_path(const char *p) {
    char *r = realpath(p, NULL);
    return r ? r : fdpo_strdup(p);
}

/* LoRA: the base model of a run (fresh: --model; resume: --model if given, else the adapter's
 * base_model_name_or_path) with the adapters attached (fresh: initialised from the seed;
 * resume: OUT's). A --model that is itself a LoRA checkpoint is continued: its base is the
 * run's base and its adapters are the starting point (each round of fdpo online, each stage
 * of sacpo), so every checkpoint stays one PEFT adapter on the original base. */
static fdpo_gpt2 *lora_model(const fdpo_train_opts *o, const char *kind, const fdpo_tokenizer *tok) {
    if (strcmp(kind, "sft") && strcmp(kind, "dpo") && strcmp(kind, "kto") && strcmp(kind, "rl") && strcmp(kind, "online-step") &&
        strcmp(kind, "rm"))
        { fdpo_error("--lora-r: fdpo %s does not train LoRA adapters (sft, dpo, kto, rm, online, rl and sacpo do)", kind); return NULL; }
    const int from_adapter = o->init && fdpo_lora_is_checkpoint(o->init);
    const char *adapter_of_base = from_adapter ? o->init : o->resume && !o->init ? o->out : NULL;
    char *saved_base = NULL;
    fdpo_gpt2 *m = NULL;
    if (adapter_of_base && fdpo_lora_peft_base_read(adapter_of_base, &saved_base)) {   /* its file:line */
        fdpo_error_context("%s %s", from_adapter ? "--model" : "--resume", adapter_of_base);
        goto done;
    }
    const char *base = from_adapter ? saved_base : o->init ? o->init : saved_base;
    if (!base) {
        fdpo_error("%s: %s holds no LoRA adapter with base_model_name_or_path: give the base with --model",
                   from_adapter ? "--model" : "--resume", from_adapter ? o->init : o->out);
        goto done;
    }
    if (!(m = fdpo_checkpoint_load_model(base))) { fdpo_error_context("--model %s (the LoRA base)", base); goto done; }
    if (!strcmp(kind, "rm") && m->config.num_labels == 0) {
        /* fdpo rm on a language model: a fresh score head (as fdpo_rm_train puts on one), then
         * the adapters; the head trains in full beside them */
        fdpo_gpt2 *rm = fdpo_gpt2_reward_model_from_lm(m, FDPO_RM_INIT_STD, (uint64_t)o->seed, fdpo_tokenizer_eot(tok));
        fdpo_gpt2_free(m);
        if (!(m = rm)) { fdpo_error_context("--model %s", base); goto done; }
    }
    fdpo_lora_opts lo = {o->lora_r, o->lora_alpha, o->lora_dropout, o->lora_targets};
    const char *adapter = o->resume ? o->out : from_adapter ? o->init : NULL;
    if (adapter ? fdpo_lora_load_peft(adapter, m) : fdpo_lora_attach(m, &lo, (uint64_t)o->seed)) {
        if (adapter) fdpo_error_context("%s %s", o->resume ? "--resume" : "--model", adapter);
        fdpo_gpt2_free(m); m = NULL;
        goto done;
    }
    if (from_adapter && !o->resume) {   /* the adapter's shape is trained: other flags are refused */
        char owner[PATH_MAX + 16];
        snprintf(owner, sizeof owner, "--model %s", o->init);
        if (fdpo_lora_check_continued(m, owner, o->lora_r, o->lora_alpha, o->lora_targets)) {
            fdpo_gpt2_free(m); m = NULL;
            goto done;
        }
    }
    m->lora->seed = (uint64_t)o->seed;   /* dropout masks */
    m->lora->dropout = o->lora_dropout;
    free(m->lora->base_model);
    m->lora->base_model = absolute_path(base);
    if (!o->quiet)   /* PEFT's print_trainable_parameters */
        fdpo_log(FDPO_LOG_INFO, "LoRA r=%zu alpha=%g on %s: trainable params: %zu || all params: %zu || trainable%%: %.4f",
                 m->lora->r, m->lora->alpha, m->lora->targets, m->lora->view.n_params, m->n_params + m->lora->view.n_params,
                 100.0 * (double)m->lora->view.n_params / (double)(m->n_params + m->lora->view.n_params));
done:
    free(saved_base);
    return m;
}

/* What --resume can refuse before it reads OUT's model: a changed --lora-r, which decides
 * how that model is read (adapters on their base, or the whole model), named rather than as
 * the file the other kind of checkpoint lacks ("adapter_config.json: cannot open"); and a
 * --stop-at the saved run has already passed (it stops only at that step, so the run went on
 * to the end). A state that does not read is left to fdpo_train_state_load's error, and one
 * saved without lora-r (a full fine-tune of an older fdpo) to the comparison of all the
 * settings. */
/* The parenthesis of a resume refused for a changed flag where the caller has no --resume
 * (fdpo_train_opts.resume_how): "the run cut short in OUT was saved with it: HOW" (malloc'd);
 * NULL: fdpo_settings_check_resume's own, which names --resume. */
static char *resume_how(const fdpo_train_opts *o) {
    if (!o->resume_how) return NULL;
    const char *fmt = "the run cut short in %s was saved with it: %s";
    size_t n = strlen(fmt) + strlen(o->out) + strlen(o->resume_how) + 1;
    char *how = fdpo_malloc(n);
    snprintf(how, n, fmt, o->out, o->resume_how);
    return how;
}

static int check_resume(const fdpo_settings *saved, const fdpo_settings *now, const fdpo_train_opts *o) {
    char *how = resume_how(o);
    int rc = fdpo_settings_check_resume_how(saved, now, how);
    free(how);
    return rc;
}

static int resume_early_check(const fdpo_train_opts *o) {
    fdpo_settings saved, now = {0};
    size_t step = 0;
    if (fdpo_train_state_read_settings(o->out, &saved, &step)) return 0;
    fdpo_settings_int(&now, "lora-r", (long long)o->lora_r, 1);
    int rc = check_resume(&saved, &now, o);
    if (rc == 0 && o->stop_at > 0 && (size_t)o->stop_at <= step)
        rc = fdpo_error("--stop-at: %ld is not after the saved run's step %zu (the checkpoint in %s): give a "
                        "later step, or leave --stop-at out to run to the end", o->stop_at, step, o->out);
    fdpo_settings_free(&saved);
    fdpo_settings_free(&now);
    return rc;
}

/* --resume of a LoRA run: --lora-targets compared by the modules they select (as a continued
 * adapter's, fdpo_lora_check_continued), not as typed: the default named explicitly, or the
 * same modules in another PEFT spelling, were refused as a change. The same selection keeps
 * the saved text in now, for the comparison that follows and the state saved from here. */
static int resume_lora_targets_check(const fdpo_gpt2 *m, const fdpo_settings *saved, fdpo_settings *now) {
    const fdpo_setting *was = fdpo_settings_find(saved, "lora-targets"), *x = fdpo_settings_find(now, "lora-targets");
    if (!m->lora || !was || !x || (was->type != FDPO_SETTING_STR && was->type != FDPO_SETTING_NULL)) return 0;
    const char *typed = x->type == FDPO_SETTING_STR ? x->str : NULL, *saved_text = was->type == FDPO_SETTING_STR ? was->str : NULL;
    const int same = fdpo_lora_targets_same(typed, saved_text, m, "--lora-targets");
    if (same < 0) return -1;
    if (!same)
        return fdpo_error("--lora-targets: %s selects other modules than the saved run's %s (its adapter's target "
                          "modules: %s; it cannot change on --resume)", typed ? typed : "(the default)",
                          saved_text ? saved_text : "default", m->lora->targets);
    char *keep = saved_text ? fdpo_strdup(saved_text) : NULL;
    fdpo_settings_str(now, "lora-targets", keep, 1);
    free(keep);
    return 0;
}

/* --resume: the data must be the saved run's, the training items and the held-out set
 * alike (eval metrics computed on other data would continue the curve unannounced); the
 * error names the set that differs. A state saved before the held-out set had its own
 * fingerprint is compared as that fdpo hashed it (o->eval_legacy_hash) and then records the
 * two fingerprints separately from its next save. */
static int resume_data_check(fdpo_train_state *s, const fdpo_train_opts *o, uint64_t data_hash, size_t n_items) {
    /* a caller without --resume (sacpo's stages) says what its user does (o->resume_how) */
    char need[1024];
    if (o->resume_how) snprintf(need, sizeof need, "the run cut short in %s trained on them: %s", o->out, o->resume_how);
    else snprintf(need, sizeof need, "resume needs the same files and tokenizer");
    const char *NEED = need, *resume = o->resume_how ? "" : "--resume: ";
    const int legacy = o->eval_name && !s->has_eval_data;   /* one fingerprint of both sets, or of the training items */
    const int train_differs = s->data.n != n_items || s->data_hash != (legacy ? o->eval_legacy_hash : data_hash);
    /* legacy: the held-out set can be the cause only where that fingerprint covered one (dpo's,
     * when it has held-out pairs: without, or for rm, kto, sft, pretrain, it is the training
     * data's) and the training items are as many as then */
    const int train_or_eval = legacy && train_differs && o->eval_legacy_hash != data_hash && s->data.n == n_items;
    const int eval_differs = !legacy && o->eval_name && (s->eval_n_items != o->eval_n_items || s->eval_hash != o->eval_hash);
    if (train_or_eval)
        return fdpo_error("%sthe training data or the held-out data (%s) differ from the saved run's "
                          "(%zu training items then, %zu now): %s", resume, o->eval_name, s->data.n, n_items, NEED);
    if (train_differs && eval_differs)
        return fdpo_error("%sthe training data (%zu items then, %zu now) and the held-out data (%s; %zu items "
                          "then, %zu now) differ from the saved run's: %s", resume, s->data.n, n_items, o->eval_name,
                          s->eval_n_items, o->eval_n_items, NEED);
    if (train_differs)
        return fdpo_error("%sthe training data differ from the saved run's (%zu items then, %zu now): %s", resume,
                          s->data.n, n_items, NEED);
    if (eval_differs)
        return fdpo_error("%sthe held-out data (%s) differ from the saved run's (%zu items then, %zu now): %s", resume,
                          o->eval_name, s->eval_n_items, o->eval_n_items, NEED);
    s->data_hash = data_hash;
    s->has_eval_data = o->eval_name != NULL;
    s->eval_n_items = o->eval_n_items;
    s->eval_hash = o->eval_hash;
    return 0;
}

/* 1 if this (kind, saved route, measured route) was said before in this process */
static int said_once(int kind, const char *saved, const char *measured) {
    static char said[64];
    char key[64];
    snprintf(key, sizeof key, "%d %s %s", kind, saved, measured);
    if (!strcmp(said, key)) return 1;
    snprintf(said, sizeof said, "%s", key);
    return 0;
}

int fdpo_train_pin_saved_bf16_route(const fdpo_settings *saved, const char *file) {
    if (fdpo_get_precision() != FDPO_PRECISION_BF16) return 0;
    const fdpo_setting *r = fdpo_settings_find(saved, "bf16-route");
    if (!r) return 0;   /* an fp32 run, or one of an older fdpo */
    if (r->type != FDPO_SETTING_STR)
        return fdpo_error("%s: bf16-route must be a string (one of dpbf16, fp32, fallback)", file);
    const char *measured = fdpo_bf16_route();
    int rc = fdpo_bf16_route_pin(r->str);
    if (rc < 0) return fdpo_error_context("%s", file);
    if (said_once(rc > 0 ? 1 : 2, r->str, measured)) {
        /* said once per process: dpo pins before its reference log-probs and again on opening its trainer */
    } else if (rc > 0) {
        fdpo_log(FDPO_LOG_WARN, "bf16: the run multiplied its bf16 products on the %s route (%s); this process has no "
                 "AVX512-BF16 (or FDPO_FORCE_BF16_FALLBACK=1), so its steps now take the fallback and differ in the "
                 "last bits from an uninterrupted run", r->str, file);
    } else if (strcmp(measured, r->str)) {
        fdpo_log(FDPO_LOG_INFO, "bf16: products on the run's route, %s (bf16-route in %s), not %s as measured now: "
                 "the two sum in different orders", r->str, file, measured);
    }
    return 1;
}

int fdpo_train_pin_bf16_route(const char *out) {
    fdpo_settings saved;
    size_t step = 0;
    if (fdpo_get_precision() != FDPO_PRECISION_BF16 || fdpo_train_state_read_settings(out, &saved, &step)) return 0;
    char *file = fdpo_path_join(out, "training_state.json");
    int rc = fdpo_train_pin_saved_bf16_route(&saved, file);
    free(file);
    fdpo_settings_free(&saved);
    return rc;
}

/* The random-init architecture settings (fdpo_train_opts_settings). */
static const char *const ARCH_SETTINGS[] = {"arch", "n-kv-head", "intermediate-size", "rope-theta", "tie-word-embeddings", NULL};

/* The shared train options a kind of run has no flag for: their fields hold placeholders
 * that only meet the shared checks (dpo's "seq-len": 1), not settings to save or compare. */
static const char *const *settings_without_flag(const char *kind) {
    static const char *const PREF[] = FDPO_PREF_SETTINGS_WITHOUT_FLAG;
    /* steps over prompts (fdpo_train_opts_over_prompts): the batch is the command's own flag
     * (--prompts-per-step, --prompts-per-round), recorded under its name */
    static const char *const OVER_PROMPTS[] = {"seq-len", "eval-max-seqs", "eval-fraction", "eval-every", "batch-size",
                                               "grad-accum", "epochs", "shuffle", "chat-template", NULL};
    if (!strcmp(kind, "pretrain") || !strcmp(kind, "sft")) return NULL;
    if (!strcmp(kind, "online-step") || !strcmp(kind, "rl")) return OVER_PROMPTS;
    return PREF;   /* dpo, kto, rm */
}

/* --allreduce-overlap: a layer's gradients are final after the step's last backward passed
 * it; start their sum then (the model calls this for l = L-1 .. 0) */
static void on_layer_grads(void *ctx, size_t layer) {
    fdpo_trainer *tr = ctx;
    if (!fdpo_dist_overlap_armed() || tr->overlap_failed) return;
    if (fdpo_dist_overlap_start(tr->overlap, tr->model->grads_memory, layer)) tr->overlap_failed = 1;
}

/* one group per layer: its slice of every per-layer tensor; the rest is summed at the end */
static int overlap_open(fdpo_trainer *tr) {
    fdpo_gpt2 *m = tr->model;
    size_t L = m->config.n_layer, k = 0;
    size_t *off = fdpo_malloc(m->n_tensors * sizeof *off), *len = fdpo_malloc(m->n_tensors * sizeof *len);
    tr->overlap = fdpo_dist_overlap_create(m->n_params, L);
    int rc = 0;
    for (size_t l = 0; l < L && !rc; l++) {
        k = 0;
        for (size_t t = 0; t < m->n_tensors; t++) {
            const fdpo_gpt2_tensor *x = &m->tensors[t];
            if (!x->per_layer) continue;
            off[k] = x->offset + l * (x->numel / L);
            len[k++] = x->numel / L;
        }
        rc = fdpo_dist_overlap_group(tr->overlap, l, k, off, len);
    }
    free(off); free(len);
    m->on_layer_grads = on_layer_grads;
    m->on_layer_grads_ctx = tr;
    return rc;
}

/* The optimizer's memory: freed, or a borrowed one (init_opt) handed back with its steps. */
static void release_opt(fdpo_trainer *tr) {
    if (tr->opts.init_opt && tr->opt.m && tr->opt.m == tr->opts.init_opt->m) {
        *tr->opts.init_opt = tr->opt;
        memset(&tr->opt, 0, sizeof tr->opt);
    } else {
        fdpo_adamw_free(&tr->opt);
    }
}

/* What the run computes against besides its trained weights is read again from its paths at
 * every start: the reference (o->ref_hash) and a LoRA run's frozen base. Record their hashes;
 * a resume refuses other weights there (a --model re-trained in place would silently change
 * the loss from the resumed step on). A state of an older fdpo has no hashes: unchecked. */
static int trainer_identity(fdpo_trainer *tr, const fdpo_train_opts *o) {
    fdpo_train_state *s = &tr->state;
    const int has_base = tr->model->lora != NULL;
    uint64_t base = 0;
    if (has_base) {   /* the base alone: the adapters are the trained (and saved) weights */
        int on = fdpo_lora_set_enabled(tr->model, 0);
        base = fdpo_hash_model(tr->model);
        fdpo_lora_set_enabled(tr->model, on);
    }
    if (o->resume && o->ref_flag && s->has_ref_hash && s->ref_hash != o->ref_hash) {
        /* a full run from a LoRA checkpoint saved by an fdpo that scored its LoRA reference
         * unmerged (fdpo_trainer_load_ref's fold_lora): the same files, another hash */
        const int lora_ref = o->lora_r <= 0 && fdpo_lora_is_checkpoint(o->ref_dir);
        if (o->resume_how)   /* a caller without --resume (sacpo's stages) says what its user does */
            return fdpo_error("%s %s: the reference's weights differ from the ones the run cut short in %s trained against "
                              "(hash %016llx then, %016llx now; %s): %s", o->ref_flag, o->ref_dir, o->out,
                              (unsigned long long)s->ref_hash, (unsigned long long)o->ref_hash,
                              lora_ref ? "re-trained in place, or saved by an earlier fdpo, which scored this LoRA "
                                         "reference unmerged (docs/lora.md)" : "re-trained in place?", o->resume_how);
        return fdpo_error("--resume: %s %s: the reference's weights differ from the ones the saved run trained against "
                          "(hash %016llx then, %016llx now; %s): resume needs the same reference", o->ref_flag, o->ref_dir,
                          (unsigned long long)s->ref_hash, (unsigned long long)o->ref_hash,
                          lora_ref ? "re-trained in place, or saved by an earlier fdpo, which scored this LoRA reference "
                                     "unmerged (docs/lora.md): finish it with the fdpo that saved it, or start it anew"
                                   : "re-trained in place?");
    }
    /* a LoRA state that records its base but no reference computed against the base with its
     * adapters off: rl and online --mode step of an earlier fdpo did so when continuing an
     * adapter without --ref, where this one takes --model (the adapter) as the reference.
     * Resumed, the loss would switch references mid-run without a word. */
    if (o->resume && o->ref_flag && !s->has_ref_hash && s->has_base_hash)
        return fdpo_error("--resume: the saved run trained against its LoRA base with the adapters off (an earlier "
                          "fdpo's reference for a continued adapter without --ref), and this run's reference is %s %s: "
                          "resumed, the loss would change references mid-run; finish it with the fdpo that saved it, or "
                          "start it anew", o->ref_flag, o->ref_dir);
    if (o->resume && has_base && s->has_base_hash && s->base_hash != base)
        return fdpo_error("--resume: --model %s: the LoRA base's weights differ from the ones the saved run's adapters "
                          "were trained on (hash %016llx then, %016llx now; re-trained in place?): resume needs the same base",
                          tr->model->lora->base_model ? tr->model->lora->base_model : "", (unsigned long long)s->base_hash,
                          (unsigned long long)base);
    if (o->resume && o->has_reward_hash && s->has_reward_hash && s->reward_hash != o->reward_hash)
        return fdpo_reward_changed_error(o->reward_spec, o->reward_lexicon, "the saved run scored with", s->reward_hash,
                                         o->reward_hash);
    s->has_ref_hash = o->ref_flag != NULL;
    s->ref_hash = o->ref_flag ? o->ref_hash : 0;
    s->has_reward_hash = o->has_reward_hash;
    s->reward_hash = o->has_reward_hash ? o->reward_hash : 0;
    s->has_base_hash = has_base;
    s->base_hash = base;
    return 0;
}

static atomic_uint g_stop_requests;    /* fdpo_trainer_request_stop calls so far */
static atomic_uint g_stops_honoured;   /* of those, the ones a trainer has stopped for */

/* A refused open: the run is over before it began. OUT is free again (unless the caller
 * claimed it), the bf16 route what it was. Returns -1. */
static int open_refused(fdpo_trainer *tr) {
    fdpo_bf16_route_restore(tr->route_pinned_before);
    if (!tr->opts.out_claimed) fdpo_dir_unlock(tr->opts.out);
    return -1;
}

int fdpo_trainer_open(fdpo_trainer *tr, const fdpo_train_opts *o, const char *kind,
                      const fdpo_tokenizer *tok, size_t n_items, uint64_t data_hash,
                      const fdpo_settings *extra) {
    memset(tr, 0, sizeof *tr);
    tr->opts = *o;
    tr->tok = tok;
    tr->saved_step = SIZE_MAX;
    tr->route_pinned_before = fdpo_bf16_route_pinned();
    tr->stops_seen = atomic_load(&g_stops_honoured);   /* requests still pending are for this run too */
    if (!o->out) return fdpo_error("--out: required (the checkpoint directory to write)");
    if (n_items == 0) return fdpo_error("no training data");
    fdpo_set_threads((int)o->threads);
    size_t total = fdpo_train_total_steps(o, n_items);
    if (total == 0) return fdpo_error("--steps: the run has no steps (give --steps N or --epochs X > 0)");
    if (total > (size_t)FDPO_MAX_STEPS) {   /* --steps is checked by fdpo_train_opts_check */
        size_t per_step = fdpo_train_step_items(o, n_items);
        return fdpo_error("--epochs: %g gives more than 2^53 = %lld steps (ceil(epochs x %zu items / %zu per step)), "
                          "the most a training state records exactly (its --resume could not continue the run)",
                          o->epochs, FDPO_MAX_STEPS, n_items, per_step);
    }
    if (o->stop_at > 0 && (size_t)o->stop_at > total)   /* it would never stop there: the run went to the end */
        return fdpo_error("--stop-at: %ld is after the run's last step %zu (give a step <= %zu)", o->stop_at, total, total);
    if (fdpo_schedule_parse(o->schedule, &tr->sched.kind)) return -1;
    /* data parallelism: every step loop on this trainer (pretrain, sft, dpo, rm, kto) computes
     * only this rank's micro-batches (fdpo_dist_mine) and fdpo_trainer_step sums them */
    tr->sched.lr = o->lr;
    tr->sched.warmup_steps = (size_t)o->warmup_steps;
    tr->sched.total_steps = total;
    tr->sched.min_lr_ratio = o->min_lr_ratio;
    if (fdpo_train_out_inputs_check(o, extra)) return -1;
    if (!o->out_claimed && fdpo_checkpoint_recover(o->out)) return -1;
    /* another command's run: said before any of its settings are read (its route, --lora-r);
     * refused with OUT free again (as at fail:), or an embedding program kept it locked */
    if (o->resume && fdpo_train_state_check_kind(o->out, kind)) return open_refused(tr);
    /* before any product: a resumed run's route, then every rank on rank 0's (in that order:
     * a rank that cannot take the saved route makes every rank take the fallback) */
    if ((o->resume && fdpo_train_pin_bf16_route(o->out) < 0) || fdpo_dist_agree_bf16_route()) return open_refused(tr);
    fdpo_train_state *s = &tr->state;
    /* this run's settings: the shared options, then the command's own */
    fdpo_settings now = {0};
    fdpo_train_opts_settings(o, &now);
    for (size_t i = 0; extra && i < extra->n; i++) {
        const fdpo_setting *x = &extra->v[i];
        if (x->path) fdpo_settings_path(&now, x->key, x->str, x->fixed);
        else if (x->spec && x->type == FDPO_SETTING_STR) fdpo_settings_reward_spec(&now, x->key, x->str, x->fixed);
        else if (x->type == FDPO_SETTING_STR || x->type == FDPO_SETTING_NULL) fdpo_settings_str(&now, x->key, x->str, x->fixed);
        else if (x->type == FDPO_SETTING_BOOL) fdpo_settings_bool(&now, x->key, x->num != 0, x->fixed);
        else fdpo_settings_num(&now, x->key, x->num, x->fixed);
    }
    if (settings_without_flag(kind)) fdpo_settings_remove(&now, settings_without_flag(kind));
    if (o->resume) {
        if (resume_early_check(o)) goto fail;
        tr->model = o->lora_r > 0 ? lora_model(o, kind, tok) : fdpo_checkpoint_load_model(o->out);
        if (!tr->model) { if (o->lora_r <= 0) fdpo_error_context("--resume %s", o->out); goto fail; }
        if (check_model_fits(tr, o->out)) goto fail;
        if (fdpo_adamw_init(&tr->opt, trained(tr)->n_params, o->beta1, o->beta2, o->adam_eps, o->weight_decay)) goto fail;
        if (fdpo_train_state_load(o->out, s, &tr->opt, trained(tr))) { fdpo_error_context("--resume"); goto fail; }
        /* the flags before the data: a changed --seed or --eval-fraction also changes the
         * data's split and hash, and the flag is the cause to name; the command's own flags
         * first, under its names (rl's --prompts-per-step is the trainer's batch size) */
        if (o->init_in_run) {   /* the caller pins it (fdpo_train_opts.init_in_run) */
            static const char *const init_keys[] = {"model", "model.resolved", NULL};
            fdpo_settings_remove(&s->settings, init_keys);
        }
        if (extra && check_resume(&s->settings, extra, o)) goto fail;
        if (resume_lora_targets_check(tr->model, &s->settings, &now)) goto fail;
        if (check_resume(&s->settings, &now, o)) goto fail;
        if (resume_data_check(s, o, data_hash, n_items)) goto fail;
        if (trainer_identity(tr, o)) goto fail;
        /* a run that started from --model recorded no random-init architecture: keep it so */
        if (!fdpo_settings_find(&s->settings, "arch")) fdpo_settings_remove(&now, ARCH_SETTINGS);
        /* from now on the state records this session's values (a new --save-every sticks),
         * paths as the run first typed them */
        fdpo_settings_keep_typed_paths(&now, &s->settings);
        fdpo_settings_free(&s->settings);
        s->settings = now;
        now = (fdpo_settings){0};
        if (s->total_steps != total) { fdpo_error("--steps: %zu total steps differ from the saved run's %zu", total, s->total_steps); goto fail; }
        if (s->data.shuffle != (o->shuffle != 0)) { fdpo_error("--shuffle: differs from the saved run's"); goto fail; }
        if (s->step >= total) fdpo_log(FDPO_LOG_INFO, "%s already finished (%zu/%zu steps)", o->out, s->step, total);
    } else {
        if (!o->overwrite) {
            if (fdpo_train_out_check(o)) goto fail;
        }
        if (o->init_model) {
            /* a borrowed model in memory (online rounds): LoRA adapters, if any, already attached */
            if ((o->lora_r > 0) != (o->init_model->lora != NULL))
                { fdpo_error("--lora-r: the model in memory %s LoRA adapters", o->init_model->lora ? "has" : "has no"); goto fail; }
            tr->model = o->init_model;
            if (policy_not_lm(tr, kind) || check_model_fits(tr, o->init ? o->init : "model")) goto fail;
        } else if (o->lora_r > 0) {
            if (!(tr->model = lora_model(o, kind, tok))) goto fail;
            if (policy_not_lm(tr, kind) || check_model_fits(tr, o->init)) goto fail;
        } else if (o->init) {
            tr->model = fdpo_checkpoint_load_model(o->init);
            if (!tr->model) { fdpo_error_context("--model %s", o->init); goto fail; }
            fdpo_lora_merge(tr->model);   /* a LoRA checkpoint: full training starts from the merged model */
            if (policy_not_lm(tr, kind) || check_model_fits(tr, o->init)) goto fail;
        } else {
            fdpo_gpt2_config c = fdpo_train_opts_model_config(o, fdpo_tokenizer_vocab_size(tok));
            fdpo_config_set_special_ids(&c, fdpo_tokenizer_bos(tok), fdpo_tokenizer_eot(tok));
            /* the shape options were checked by fdpo_train_opts_check */
            if (fdpo_gpt2_config_check(&c)) goto fail;
            tr->model = fdpo_gpt2_create(&c);
            if (!tr->model) goto fail;
            fdpo_gpt2_init(tr->model, (uint64_t)o->seed);
            if (check_model_fits(tr, "model")) goto fail;
        }
        if (o->init_opt && o->init_opt->n != trained(tr)->n_params) {
            fdpo_error("optimizer memory for %zu parameters given for a model with %zu", o->init_opt->n, trained(tr)->n_params);
            goto fail;
        }
        if (o->init_opt ? (tr->opt = *o->init_opt, fdpo_adamw_reset(&tr->opt, o->beta1, o->beta2, o->adam_eps, o->weight_decay))
                        : fdpo_adamw_init(&tr->opt, trained(tr)->n_params, o->beta1, o->beta2, o->adam_eps, o->weight_decay))
            goto fail;
        s->kind = fdpo_strdup(kind);
        s->total_steps = total;
        s->data_hash = data_hash;
        s->has_eval_data = o->eval_name != NULL;
        s->eval_n_items = o->eval_n_items;
        s->eval_hash = o->eval_hash;
        if (trainer_identity(tr, o)) goto fail;
        fdpo_rng_seed(&s->rng, (uint64_t)o->seed);
        fdpo_order_init(&s->data, n_items, o->shuffle, &s->rng);
        s->settings = now;
        now = (fdpo_settings){0};
        if (fdpo_dist_is_root() && fdpo_mkdir_p(o->out)) goto fail;   /* rank 0 alone makes OUT */
    }
    fdpo_settings_free(&now);
    if (fdpo_dist_size() > 1) {
        /* every rank must run the same job: flags, data and starting weights */
        uint64_t h = fdpo_hash64(FDPO_HASH_INIT, &data_hash, sizeof data_hash);
        if (o->eval_name) {   /* the held-out set: each rank evaluates its share of its own copy */
            uint64_t ev[2] = {o->eval_n_items, o->eval_hash};
            h = fdpo_hash64(h, ev, sizeof ev);
        }
        for (size_t i = 0; i < s->settings.n; i++) {
            const fdpo_setting *x = &s->settings.v[i];
            const size_t kn = strlen(x->key);
            /* KEY.resolved: there or not by how KEY was spelt; KEY's place is hashed below */
            if (kn > 9 && !strcmp(x->key + kn - 9, ".resolved")) continue;
            char v[256];
            fdpo_setting_text(x, v, sizeof v);
            h = fdpo_hash64(h, x->key, kn + 1);
            if ((x->path || !strcmp(x->key, "ref-cache-dir")) && x->type == FDPO_SETTING_STR) {
                /* a path as the place it names, not its text: "pairs.jsonl" on one rank and
                 * "./pairs.jsonl" on another agree (an online round's pairs file lies under
                 * --out, so "xo" and "./xo" gave two texts); the same text from another
                 * working directory does not. (--ref-cache-dir is saved as typed, without
                 * KEY.resolved, but names a directory all the same.) */
                char *id = fdpo_path_identity(x->str);
                h = fdpo_hash64(h, id, strlen(id) + 1);
                free(id);
            } else if (strcmp(x->key, "threads") && strcmp(x->key, "bf16-route")) {
                /* per process: the thread count; the bf16 route, which fdpo_dist_agree_bf16_route
                 * made one already */
                h = fdpo_hash64(h, v, strlen(v) + 1);
            }
        }
        h = fdpo_hash64(h, &s->step, sizeof s->step);
        if (fdpo_dist_check_agree("the flags, training data or held-out data", h)) goto fail;
        if (fdpo_dist_check_agree("the starting model", fdpo_hash64(FDPO_HASH_INIT, tr->model->params_memory,
                                                                    tr->model->n_params * sizeof(float)))) goto fail;
        if (fdpo_dist_check_agree("--allreduce-overlap", (uint64_t)(o->allreduce_overlap != 0))) goto fail;
        /* not a setting, but it decides after which step a rank leaves the loop: a rank that
         * stopped while the others entered the next step's sums hung the job. (Its other exits
         * agree already: the steps are a setting, a stop signal is summed each step.) */
        const uint64_t stops_at = o->stop_at > 0 && (size_t)o->stop_at < tr->state.total_steps ? (uint64_t)o->stop_at : 0;
        if (fdpo_dist_check_agree("--stop-at", stops_at)) goto fail;   /* = --steps: the end, as none */
        if (o->allreduce_overlap && tr->model->lora) {   /* the adapters' gradients are not laid out per layer */
            fdpo_error("%s", FDPO_OVERLAP_LORA_REFUSED);
            goto fail;
        }
        if (o->allreduce_overlap && overlap_open(tr)) goto fail;
    }
    tr->step_items = fdpo_train_step_items(o, n_items);
    tr->micro_items = fdpo_train_micro_items(o, n_items);
    /* an online round's pairs (init_model) are fewer than a step most rounds: not news there */
    if (step_exceeds(o, n_items) && !o->quiet && !o->init_model) {
        char flags[96];
        if (o->step_flag) snprintf(flags, sizeof flags, "%s %ld", o->step_flag, o->batch_size);
        else snprintf(flags, sizeof flags, "--batch-size %ld x --grad-accum %ld", o->batch_size, o->grad_accum);
        fdpo_log(FDPO_LOG_INFO, "%s exceeds the %zu examples of %s: each step takes all %zu once (an epoch is one step)",
                 flags, n_items, o->data ? o->data : "the data", n_items);
    }
    tr->start_step = s->step;
    if (o->resume) tr->saved_step = s->step;
    /* A fresh run that replaces a run in OUT (--overwrite) leaves it whole until its first
     * save, which replaces it whole, metrics and summaries included (fdpo_checkpoint_save_run);
     * its own lines wait in memory until then. Removing the old files at the start lost the
     * old model to a run that then failed a later check or was killed; leaving them until the
     * save let such a run leave the old model beside its own metrics.jsonl. Without a
     * checkpoint in OUT, what a run that never saved left there goes now. */
    if (!o->resume) {
        if (o->overwrite && !o->out_claimed && fdpo_out_holds_run(o->out, 0)) {
            tr->replacing = 1;
            /* said under --quiet too (as the notices below): what becomes of OUT, not progress */
            fdpo_log(FDPO_LOG_INFO, "--overwrite: %s keeps the previous run until this run's first checkpoint, "
                     "which replaces it whole (its metrics.jsonl and summaries too)", o->out);
        } else if (fdpo_out_remove_run_files(o->out)) {
            goto fail;
        }
    }
    if (fdpo_metrics_open(&tr->metrics, o->out, o->resume ? s->step : 0)) goto fail;
    tr->metrics.held = tr->replacing;
    fdpo_progress_start(&tr->progress, "train", total);
    return 0;
fail:
    if (tr->overlap && tr->model) { tr->model->on_layer_grads = NULL; tr->model->on_layer_grads_ctx = NULL; }
    fdpo_dist_overlap_free(tr->overlap);
    tr->overlap = NULL;
    fdpo_settings_free(&now);
    fdpo_metrics_close(&tr->metrics);
    fdpo_train_state_free(s);
    release_opt(tr);
    if (tr->model != o->init_model) fdpo_gpt2_free(tr->model);
    tr->model = NULL;
    return open_refused(tr);
}

int fdpo_trainer_done(const fdpo_trainer *tr) {
    return tr->stopped || tr->state.step >= tr->state.total_steps;
}

size_t fdpo_trainer_next_item(fdpo_trainer *tr) {
    return fdpo_order_next(&tr->state.data, &tr->state.rng);
}

void fdpo_trainer_begin_step(fdpo_trainer *tr) {
    fdpo_order_begin_step(&tr->state.data);
    if (tr->overlap && tr->model->on_layer_grads_ctx != tr) {
        /* the command replaced the model after open (rm puts a score head on the language
         * model): lay the groups out again over the model now trained, and hook its backward */
        fdpo_dist_overlap_free(tr->overlap);
        tr->overlap = NULL;
        if (overlap_open(tr)) tr->overlap_failed = 1;   /* fdpo_trainer_step fails with the message */
    }
    fdpo_gpt2_zero_grad(tr->model);
    if (tr->model->lora) fdpo_lora_begin_step(tr->model->lora, tr->state.step);   /* dropout on, masks keyed by the step */
    if (tr->overlap) fdpo_dist_overlap_begin_step(tr->overlap, trained(tr)->grads_memory);
    tr->t_step_start = fdpo_now();
    tr->comm_at_step_start = fdpo_dist_comm_seconds();
}

int fdpo_trainer_step(fdpo_trainer *tr, size_t n_tokens) {
    /* data parallel: each rank holds the gradient of its micro-batches; the sum is the step's */
    double tokens = (double)n_tokens;
    fdpo_gpt2 *p = trained(tr);
    if (tr->model->lora) tr->model->lora->training = 0;   /* evaluation after the step runs without dropout */
    if (tr->overlap) {   /* --allreduce-overlap: the layers' sums started during backward */
        if (tr->overlap_failed || fdpo_dist_overlap_finish(tr->overlap, p->grads_memory)) return -1;
    } else if (fdpo_dist_sum_f32(p->grads_memory, p->n_params)) return -1;
    if (fdpo_dist_sum_f64(&tokens, 1)) return -1;
    n_tokens = (size_t)tokens;
    /* clipping folded into the update: AdamW reads g * scale (the same bits as scaling the
     * gradients in place first, one pass over them less) */
    double norm = fdpo_grad_norm(p);
    if (!isfinite(norm))
        return fdpo_error("step %zu: gradient norm is %g (not finite: the loss diverged, or its gradient overflowed float; "
                          "lower --lr or raise --warmup-steps)",
                          tr->state.step + 1, norm);
    double lr = fdpo_schedule_lr(&tr->sched, tr->state.step);
    /* a run without moments in its checkpoints (an online round) need not store them after
     * its last step: nothing reads them (the next round resets the optimizer) */
    int store_moments = !(tr->opts.skip_moments && tr->state.step + 1 >= tr->state.total_steps);
    if (fdpo_adamw_step_ex(&tr->opt, p, lr, fdpo_clip_scale(norm, tr->opts.grad_clip), store_moments)) return -1;
    tr->state.step++;
    tr->last_lr = lr;
    tr->last_grad_norm = norm;
    double dt = fdpo_now() - tr->t_step_start;
    tr->last_step_seconds = dt;
    tr->last_comm_seconds = fdpo_dist_comm_seconds() - tr->comm_at_step_start;
    tr->last_tokens_per_sec = dt > 0 ? (double)n_tokens / dt : 0;
    return 0;
}

static int divides(long every, size_t step) { return every > 0 && step % (size_t)every == 0; }

/* Not at --stop-at (it logged that step too): a run stopped there and resumed would hold a
 * metrics line the uninterrupted run has not, as an interrupt does not add one either. */
int fdpo_trainer_want_log(const fdpo_trainer *tr) {
    size_t s = tr->state.step;
    return divides(tr->opts.log_every, s) || s == tr->state.total_steps;
}

int fdpo_trainer_want_eval(const fdpo_trainer *tr) {
    size_t s = tr->state.step;
    return tr->opts.eval_every > 0 && (divides(tr->opts.eval_every, s) || s == tr->state.total_steps);
}

void fdpo_trainer_progress(fdpo_trainer *tr, double loss, const char *extra) {
    if (tr->opts.quiet) return;
    /* ETA from this process's pace: pretend the steps before a resume took as long */
    size_t done = tr->state.step - tr->start_step;
    if (done > 0 && tr->start_step > 0) {
        double el = fdpo_now() - tr->progress.t_start;
        tr->progress.t_start = fdpo_now() - el * (double)tr->state.step / (double)done;
        tr->start_step = 0; /* adjusted once: from now on t_start already covers the earlier steps */
    }
    fdpo_progress_step(&tr->progress, tr->state.step, loss, tr->last_lr, tr->last_grad_norm,
                       tr->last_tokens_per_sec, extra);
}

void fdpo_trainer_metrics_begin(fdpo_trainer *tr, double loss) {
    fdpo_metrics_begin(&tr->metrics, tr->state.step);
    fdpo_metrics_add(&tr->metrics, "epoch", fdpo_order_epoch(&tr->state.data));
    fdpo_metrics_add(&tr->metrics, "loss", loss);
    fdpo_metrics_add(&tr->metrics, "learning_rate", tr->last_lr);
    fdpo_metrics_add(&tr->metrics, "grad_norm", tr->last_grad_norm);
    fdpo_metrics_add(&tr->metrics, "tokens_per_sec", tr->last_tokens_per_sec);
    if (fdpo_dist_size() > 1) {   /* what data parallelism costs: see docs/scaling.md */
        fdpo_metrics_add(&tr->metrics, "dist/allreduce_seconds", tr->last_comm_seconds);
        fdpo_metrics_add(&tr->metrics, "dist/comm_fraction",
                         tr->last_step_seconds > 0 ? tr->last_comm_seconds / tr->last_step_seconds : 0);
        if (tr->overlap)   /* --allreduce-overlap: the layers whose sum ran during backward */
            fdpo_metrics_add(&tr->metrics, "dist/overlapped_layers", (double)fdpo_dist_overlap_last_overlapped(tr->overlap));
    }
}

static void drop_held(fdpo_trainer *tr) {
    free(tr->held_name); free(tr->held_text);
    tr->held_name = tr->held_text = NULL;
    tr->held_len = 0;
}

/* the first save of a run that replaces the one in OUT: the old run's files stay behind, this
 * run's metrics so far and its held file go into the new directory, in the one swap */
static int save_replacing(fdpo_trainer *tr) {
    fdpo_run_file files[2];
    size_t n = 0;
    /* (empty when nothing was logged yet, as a save of a fresh run leaves it) */
    files[n++] = (fdpo_run_file){"metrics.jsonl", tr->metrics.text ? tr->metrics.text : "", tr->metrics.text_len};
    if (tr->held_name) files[n++] = (fdpo_run_file){tr->held_name, tr->held_text, tr->held_len};
    if (fdpo_checkpoint_save_run(tr->opts.out, tr->model, tr->tok, &tr->state, tr->opts.skip_moments ? NULL : &tr->opt,
                                 files, n))
        return -1;
    tr->saved_step = tr->state.step;
    tr->replacing = tr->metrics.held = 0;
    tr->metrics.pending = 0;   /* OUT's metrics.jsonl is this run's lines: the next ones are appended */
    free(tr->metrics.text);
    tr->metrics.text = NULL;
    tr->metrics.text_len = tr->metrics.text_cap = 0;
    drop_held(tr);
    fdpo_log(FDPO_LOG_INFO, "%s: the previous run is replaced by this one (step %zu)", tr->opts.out, tr->state.step);
    return 0;
}

int fdpo_trainer_write_run_json(fdpo_trainer *tr, const char *name, const cJSON *root) {
    if (fdpo_dist_rank() > 0) return 0;   /* rank 0 alone writes */
    char *path = fdpo_path_join(tr->opts.out, name);
    if (!tr->replacing) {
        int rc = fdpo_write_json_atomic(path, root, 1);
        free(path);
        return rc;
    }
    drop_held(tr);
    tr->held_text = fdpo_json_text(root, 1, &tr->held_len);
    if (!tr->held_text) { int rc = fdpo_error("%s: cannot format JSON", path); free(path); return rc; }
    free(path);
    tr->held_name = fdpo_strdup(name);
    return 0;
}

int fdpo_trainer_save(fdpo_trainer *tr) {
    if (fdpo_dist_rank() > 0) { tr->saved_step = tr->state.step; return 0; }   /* rank 0 alone writes */
    if (tr->replacing) return save_replacing(tr);
    /* metrics.jsonl is carried into the new directory by the swap, cut to this run's lines
     * first if none was logged yet; the next line reopens it there (fdpo_metrics_end) */
    if (fdpo_metrics_settle(&tr->metrics)) return -1;
    if (tr->metrics.f) { fclose(tr->metrics.f); tr->metrics.f = NULL; }
    int rc = fdpo_checkpoint_save_all(tr->opts.out, tr->model, tr->tok, &tr->state,
                                      tr->opts.skip_moments ? NULL : &tr->opt);
    if (!rc) tr->saved_step = tr->state.step;
    return rc;
}

/* Requests are counted, not flagged: a flag that stayed set stopped every later trainer of the
 * process after its first step. A trainer stops for the requests made since the last one that
 * a trainer stopped for (fdpo_trainer_close records that), so every trainer running at a
 * request stops, and one that opens after the stop trains on. (atomic_uint: lock-free here,
 * so async-signal-safe as the header promises.) */
void fdpo_trainer_request_stop(void) { atomic_fetch_add(&g_stop_requests, 1); }

/* a trainer stopped for the requests made so far: trainers opened from now on do not stop for them */
static void stop_honoured(void) {
    unsigned now = atomic_load(&g_stop_requests), was = atomic_load(&g_stops_honoured);
    while (was < now && !atomic_compare_exchange_weak(&g_stops_honoured, &was, now)) {}
}

/* 1 if any rank has a pending stop: under MPI every rank stops at the same step. A signal
 * that reached some ranks only (a kill of one rank's pid) made them end with "checkpoint
 * saved" while rank 0, which saves, went on until the abort they caused killed it, before or
 * during its save. Collective under MPI; a failed reduction counts as a stop. */
static int any_rank_pending(int pending) {
    if (fdpo_dist_size() == 1) return pending;
    double any = pending;
    if (fdpo_dist_sum_f64(&any, 1)) return 1;
    return any > 0;
}

int fdpo_trainer_stop_requested(const fdpo_trainer *tr) {
    return any_rank_pending(atomic_load(&g_stop_requests) != tr->stops_seen);
}

int fdpo_trainer_take_stop(void) {
    const int any = any_rank_pending(atomic_load(&g_stop_requests) != atomic_load(&g_stops_honoured));
    if (any) stop_honoured();
    return any;
}

int fdpo_trainer_maybe_save(fdpo_trainer *tr) {
    size_t s = tr->state.step;
    int stop = tr->opts.stop_at > 0 && s == (size_t)tr->opts.stop_at && s < tr->state.total_steps;
    int interrupt = s < tr->state.total_steps && fdpo_trainer_stop_requested(tr);
    if (divides(tr->opts.save_every, s) || stop || interrupt) {
        if (fdpo_trainer_save(tr)) return -1;
        /* the ranks end with the error below, whose abort must not cut rank 0's save short */
        if (interrupt && fdpo_dist_barrier()) return -1;
    }
    const char *how = tr->opts.continue_how ? tr->opts.continue_how : "continue with --resume";
    if (interrupt) {
        tr->stopped = tr->interrupted = 1;
        return fdpo_error("interrupted after step %zu of %zu (checkpoint saved in %s; %s)", s, tr->state.total_steps,
                          tr->opts.out, how);
    }
    if (stop) {
        tr->stopped = 1;
        /* under --quiet too: a stopped run exits 0, and without this line nothing said it stopped */
        fdpo_log(FDPO_LOG_INFO, "stopped after step %zu (--stop-at); %s", s, how);
    }
    return 0;
}

int fdpo_trainer_save_final(fdpo_trainer *tr) {
    return tr->model && tr->saved_step != tr->state.step ? fdpo_trainer_save(tr) : 0;
}

int fdpo_trainer_before_final_eval(fdpo_trainer *tr) {
    if (fdpo_trainer_save_final(tr)) return -1;
    /* a stop requested at the last step (fdpo_trainer_maybe_save lets the run end there) */
    if (!fdpo_trainer_stop_requested(tr)) return 0;
    if (fdpo_dist_barrier()) return -1;   /* as fdpo_trainer_maybe_save: the ranks' error must not cut rank 0's save */
    tr->stopped = tr->interrupted = 1;
    const char *how = tr->opts.continue_how ? tr->opts.continue_how : "continue with --resume";
    return fdpo_error("interrupted after step %zu of %zu, before the final evaluation (checkpoint saved in %s; %s "
                      "to write its eval_summary.json)", tr->state.step, tr->state.total_steps, tr->opts.out, how);
}

int fdpo_trainer_write_eval_summary(fdpo_trainer *tr, const cJSON *root) {
    if (fdpo_trainer_save_final(tr)) return -1;   /* the summary describes a model on disk */
    return fdpo_trainer_write_run_json(tr, "eval_summary.json", root);
}

int fdpo_trainer_close(fdpo_trainer *tr, int save_final) {
    int rc = 0;
    if (save_final) rc = fdpo_trainer_save_final(tr);
    /* under MPI: nobody reads the final checkpoint (a next stage, a resume) before rank 0 wrote it */
    if (save_final && !rc && tr->model) rc = fdpo_dist_barrier();
    /* the "done" line only for a run that succeeded: a failure ends with its error alone */
    if (save_final && !rc && !tr->opts.quiet && tr->model) fdpo_progress_end(&tr->progress);
    fdpo_metrics_close(&tr->metrics);
    drop_held(tr);
    fdpo_train_state_free(&tr->state);
    release_opt(tr);
    if (tr->overlap && tr->model) { tr->model->on_layer_grads = NULL; tr->model->on_layer_grads_ctx = NULL; }
    fdpo_dist_overlap_free(tr->overlap);
    tr->overlap = NULL;
    if (tr->model != tr->opts.init_model) fdpo_gpt2_free(tr->model);   /* a borrowed one goes back */
    tr->model = NULL;
    if (tr->opts.out && !tr->opts.out_claimed) fdpo_dir_unlock(tr->opts.out);
    if (tr->interrupted) stop_honoured();
    fdpo_bf16_route_restore(tr->route_pinned_before);   /* a resume's pin ends with the run */
    return rc;
}
