/* The training flags every trainer shares, and the --resume rule for the fixed ones. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <math.h>
#include "cli/train_flags.h"
#include "fdpo/core.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/tokenizer.h"

static const char *precision_flag; /* --precision: applied by train_flags_finish */

size_t train_flags_add(fdpo_flag *f, size_t n, fdpo_train_opts *o) {
    const fdpo_flag shared[] = {
        {"out",           FLAG_STR,   &o->out,           NULL,     "output checkpoint directory (required); training state and metrics.jsonl go there too", 0},
        {"resume",        FLAG_BOOL,  &o->resume,        "0",      "continue the run saved in --out (same data; fixed flags default to the saved ones)", 0},
        {"overwrite",     FLAG_BOOL,  &o->overwrite,     "0",      "start a fresh run even if --out already holds a checkpoint or a tokenizer", 0},
        {"model",         FLAG_STR,   &o->init,          NULL,     "start from this checkpoint directory instead of a random init", 0},
        {"tokenizer",     FLAG_STR,   &o->tokenizer,     NULL,     "tokenizer directory (default: --model's, else byte-level)", 0},
        {"chat-template", FLAG_STR,   &o->chat_template, "auto",   "how {\"messages\"} data are rendered: auto (tokenizer_config.json's chat_template), plain, chatml, llama3, zephyr", 0},
        {"n-layer",       FLAG_INT,   &o->n_layer,       "4",      "transformer blocks (random init only)", 0},
        {"n-head",        FLAG_INT,   &o->n_head,        "4",      "attention heads (random init only)", 0},
        {"n-embd",        FLAG_INT,   &o->n_embd,        "128",    "embedding width (random init only)", 0},
        {"n-positions",   FLAG_INT,   &o->n_positions,   "256",    "maximum sequence length of the model (random init only)", 0},
        {"arch",          FLAG_STR,   &o->arch,          "gpt2",   "model family of a random init: gpt2 or llama (RMSNorm, rotary, SwiGLU, grouped-query attention)", 0},
        {"n-kv-head",     FLAG_INT,   &o->n_kv_head,     "0",      "--arch llama: key/value heads, dividing --n-head (0: n-head)", 0},
        {"intermediate-size", FLAG_INT, &o->intermediate_size, "0", "--arch llama: SwiGLU width (0: 8/3 * n-embd rounded up to a multiple of 32)", 0},
        {"rope-theta",    FLAG_FLOAT, &o->rope_theta,    "10000",  "--arch llama: rotary embedding base", 0},
        {"tie-word-embeddings", FLAG_BOOL, &o->tie_word_embeddings, "1", "--arch llama: the LM head is the token embedding (=0: a separate lm_head)", 0},
        {"seq-len",       FLAG_INT,   &o->seq_len,       "128",    "tokens per training sequence (inputs; <= n-positions)", 0},
        {"batch-size",    FLAG_INT,   &o->batch_size,    "8",      "sequences per micro-batch", 0},
        {"grad-accum",    FLAG_INT,   &o->grad_accum,    "1",      "micro-batches per optimizer step", 0},
        {"steps",         FLAG_INT,   &o->steps,         "0",      "optimizer steps (0: from --epochs)", 0},
        {"epochs",        FLAG_FLOAT, &o->epochs,        "1",      "passes over the training data when --steps is 0", 0},
        {"stop-at",       FLAG_INT,   &o->stop_at,       "0",      "save and stop after this step, as if interrupted (0: off)", 0},
        {"lr",            FLAG_FLOAT, &o->lr,            "3e-4",   "peak learning rate", 0},
        {"schedule",      FLAG_STR,   &o->schedule,      "cosine", "learning-rate schedule: constant, cosine, linear (all with linear warmup)", 0},
        {"warmup-steps",  FLAG_INT,   &o->warmup_steps,  "0",      "linear warmup steps from 0 to --lr", 0},
        {"min-lr-ratio",  FLAG_FLOAT, &o->min_lr_ratio,  "0",      "cosine/linear floor as a fraction of --lr", 0},
        {"weight-decay",  FLAG_FLOAT, &o->weight_decay,  "0.01",   "AdamW decoupled weight decay (2-D weights only)", 0},
        {"beta1",         FLAG_FLOAT, &o->beta1,         "0.9",    "AdamW beta1", 0},
        {"beta2",         FLAG_FLOAT, &o->beta2,         "0.999",  "AdamW beta2", 0},
        {"adam-eps",      FLAG_FLOAT, &o->adam_eps,      "1e-8",   "AdamW epsilon", 0},
        {"grad-clip",     FLAG_FLOAT, &o->grad_clip,     "1",      "clip the global gradient L2 norm to this (0: off)", 0},
        {"shuffle",       FLAG_BOOL,  &o->shuffle,       "1",      "reshuffle the training data every epoch (seeded)", 0},
        {"eval-fraction", FLAG_FLOAT, &o->val_fraction,  "0.05",   "fraction of documents/examples held out for evaluation (eval_loss)", 0},
        {"eval-every",    FLAG_INT,   &o->eval_every,    "100",    "validation loss every N steps and at the end (0: none during the run; eval_summary.json is still written at the end)", 0},
        {"save-every",    FLAG_INT,   &o->save_every,    "0",      "checkpoint every N steps (0: only at the end)", 0},
        {"log-every",     FLAG_INT,   &o->log_every,     "1",      "progress line and metrics.jsonl entry every N steps", 0},
        {"threads",       FLAG_INT,   &o->threads,       "0",      "OpenMP/OpenBLAS threads (0: OpenMP's default, OMP_NUM_THREADS or all cores)", 0},
        {"precision",     FLAG_STR,   &precision_flag,   "fp32",   "matmul precision: fp32, or bf16 (bf16 inputs, fp32 accumulation and master weights)", 0},
        {"seed",          FLAG_INT,   &o->seed,          FLAGS_DEFAULT_SEED,   "seed for a random init (sft: and LoRA adapters), the data split and the data order", 0},
        {"quiet",         FLAG_BOOL,  &o->quiet,         "0",      "no progress line or run summary (what became of the run is still said)", 0},
        {"allreduce-overlap", FLAG_BOOL, &o->allreduce_overlap, "0", "under mpirun: sum each layer's gradient over the ranks (MPI_Iallreduce) while backward "
                                                                     "computes the layers below it, instead of one allreduce after backward (the same parameters with 2 ranks, "
                                                                     "within rounding with more; docs/scaling.md)", 0},
        {"lora-r",        FLAG_INT,   &o->lora_r,        "0",      "LoRA rank: train rank-R adapters on --model's frozen weights; OUT gets PEFT adapter files (0: full fine-tuning)", 0},
        {"lora-alpha",    FLAG_FLOAT, &o->lora_alpha,    "8",      "LoRA scaling alpha (the update is alpha/r * B A)", 0},
        {"lora-dropout",  FLAG_FLOAT, &o->lora_dropout,  "0",      "dropout on the LoRA adapters' input during training", 0},
        {"lora-targets",  FLAG_STR,   &o->lora_targets,  NULL,     "comma list of modules to adapt, PEFT names (llama: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; gpt2: c_attn,c_proj,c_fc), or all-linear (PEFT's: all of them, the output head excepted; default: PEFT's, c_attn / q_proj,v_proj)", 0},
    };
    _Static_assert(sizeof shared / sizeof shared[0] <= TRAIN_FLAGS_MAX, "raise TRAIN_FLAGS_MAX (train_flags.h)");
    size_t k = sizeof shared / sizeof shared[0];
    memcpy(f + n, shared, k * sizeof *f);
    return n + k;
}

int train_flags_set_default(fdpo_flag *flags, size_t n, const char *name, const char *def) {
    for (size_t i = 0; i < n; i++) if (!strcmp(flags[i].name, name)) { flags[i].def = def; return 0; }
    return fdpo_error("internal: no flag '%s'", name);
}

int train_flags_set_help(fdpo_flag *flags, size_t n, const char *name, const char *help) {
    for (size_t i = 0; i < n; i++) if (!strcmp(flags[i].name, name)) { flags[i].help = help; return 0; }
    return fdpo_error("internal: no flag '%s'", name);
}

size_t train_flags_add_except(fdpo_flag *f, size_t n, fdpo_train_opts *o, const char *const *except) {
    fdpo_flag all[TRAIN_FLAGS_MAX];
    size_t n_all = train_flags_add(all, 0, o);
    for (size_t i = 0; i < n_all; i++) {
        int skip = 0;
        for (const char *const *e = except; e && *e && !skip; e++) skip = !strcmp(all[i].name, *e);
        if (!skip) f[n++] = all[i];
    }
    return n;
}

static fdpo_flag *find(fdpo_flag *flags, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++) if (!strcmp(flags[i].name, name)) return &flags[i];
    return NULL;
}

static char **g_kept; static size_t g_n_kept;

/* A saved setting -> the flag's value. Settings are typed (state version 2); a version-1
 * state holds text, which parses the way the flag's own value would. */
static int set_from_setting(fdpo_flag *f, const fdpo_setting *x) {
    if (x->type == FDPO_SETTING_NULL) { if (f->type == FLAG_STR) *(const char **)f->dest = NULL; return 0; }
    if (x->type != FDPO_SETTING_STR) {
        switch (f->type) {
        case FLAG_INT: case FLAG_COUNT: *(long *)f->dest = (long)x->num; return 0;
        case FLAG_FLOAT: *(double *)f->dest = x->num; return 0;
        case FLAG_BOOL: *(int *)f->dest = x->num != 0; return 0;
        case FLAG_STR: case FLAG_LIST: break;
        }
        return fdpo_error("saved setting '%s' is not text, but --%s takes text", x->key, f->name);
    }
    const char *text = x->str;
    char *end;
    errno = 0;
    switch (f->type) {
    case FLAG_INT: case FLAG_COUNT: *(long *)f->dest = strtol(text, &end, 10); break;
    case FLAG_FLOAT: *(double *)f->dest = strtod(text, &end); break;
    case FLAG_BOOL: *(int *)f->dest = atoi(text) != 0; end = (char *)text + strlen(text); break;
    case FLAG_STR: {
        if (!*text) { *(const char **)f->dest = NULL; return 0; }   /* version 1 saved "none" as "" */
        /* kept for the process lifetime, like the parser's config strings */
        char *copy = fdpo_strdup(text);
        g_kept = fdpo_realloc(g_kept, (g_n_kept + 1) * sizeof *g_kept);
        g_kept[g_n_kept++] = copy;
        *(const char **)f->dest = copy;
        end = copy + strlen(copy);
        break;
    }
    case FLAG_LIST: return fdpo_error("--%s: a repeatable flag cannot be restored on --resume", f->name);
    }
    if (errno || *end) return fdpo_error("saved value '%s' of --%s does not parse", text, f->name);
    return 0;
}

/* The text of a flag's value as fdpo_setting_text writes a saved one (NULL: it has none) */
static int flag_setting_text(const fdpo_flag *f, char *buf, size_t n) {
    fdpo_setting x = {.type = FDPO_SETTING_NUM};
    switch (f->type) {
    case FLAG_INT: case FLAG_COUNT: x.num = (double)*(const long *)f->dest; break;
    case FLAG_FLOAT: x.num = *(const double *)f->dest; break;
    case FLAG_BOOL: x.type = FDPO_SETTING_BOOL; x.num = *(const int *)f->dest; break;
    case FLAG_STR: x.type = *(char *const *)f->dest ? FDPO_SETTING_STR : FDPO_SETTING_NULL; x.str = *(char *const *)f->dest; break;
    case FLAG_LIST: return -1;
    }
    fdpo_setting_text(&x, buf, n);
    return 0;
}

/* --resume: every flag not given now takes the saved run's value (fixed ones and kept ones
 * such as --save-every alike); the library then refuses a fixed one that was given with
 * another value. The log says which values are in force and where they came from. */
static int resume_defaults(fdpo_flag *flags, size_t n, const char *out, const char *kind) {
    fdpo_settings saved;
    size_t step = 0;
    if (fdpo_checkpoint_recover(out)) return -1;
    if (fdpo_train_state_read_settings(out, &saved, &step)) return fdpo_error_context("--resume");
    /* another command's run: none of its settings are this command's (restored, its
     * --eval-file was read as this command's data and the error named that file) */
    if (fdpo_train_state_check_kind(out, kind)) { fdpo_settings_free(&saved); return -1; }
    char from_saved[1024] = "", given[512] = "";
    size_t a = 0, b = 0;
    int rc = 0;
    char *state_file = fdpo_path_join(out, "training_state.json");
    for (size_t i = 0; i < saved.n && !rc; i++) {
        const fdpo_setting *x = &saved.v[i];
        fdpo_flag *f = find(flags, n, x->key);
        if (!f) continue;
        char text[96];
        fdpo_setting_text(x, text, sizeof text);
        char now_text[96];
        if (f->set) {   /* named as new only when it is (--threads 1 given again said "new values ... --threads") */
            if (!x->fixed && b < sizeof given &&
                (flag_setting_text(f, now_text, sizeof now_text) || strcmp(now_text, text)))
                b += (size_t)snprintf(given + b, sizeof given - b, "%s--%s", b ? ", " : "", f->name);
            continue;
        }
        fdpo_setting use = *x;   /* a path typed relative to another directory: where it resolved then */
        if (x->type == FDPO_SETTING_STR) use.str = (char *)fdpo_settings_path_to_use(&saved, x->key, x->str);
        rc = set_from_setting(f, &use);
        if (rc) {
            fdpo_error_context("%s", state_file);
        } else {   /* a check of the value later names the file it came from, not only the flag */
            flags_note_saved(f->name, state_file, f->type == FLAG_STR ? *(const char **)f->dest : NULL);
        }
        if (use.str != x->str) fdpo_setting_text(&use, text, sizeof text);
        if (!rc && a < sizeof from_saved)
            a += (size_t)snprintf(from_saved + a, sizeof from_saved - a, "%s%s=%s", a ? " " : "", x->key, text);
    }
    /* --lora-r switches the LoRA flags on or off: a changed one is named itself here, before
     * the saved --lora-alpha, now without effect, would be named instead (the library's
     * comparison and words) */
    fdpo_flag *lora_r = find(flags, n, "lora-r");
    if (!rc && lora_r && lora_r->set) {
        fdpo_settings now = {0};
        fdpo_settings_int(&now, "lora-r", (long long)*(long *)lora_r->dest, 0);
        rc = fdpo_settings_check_resume(&saved, &now);
        fdpo_settings_free(&now);
    }
    fdpo_settings_free(&saved);
    free(state_file);
    if (rc) return rc;
    fdpo_log(FDPO_LOG_INFO, "resuming %s after step %zu with the saved settings: %s", out, step, a ? from_saved : "(none)");
    if (b) fdpo_log(FDPO_LOG_INFO, "resuming with new values given now for: %s", given);
    return 0;
}

/* The random init's shape flags with --model or --resume, where the model is loaded and they
 * would be ignored: given, each must agree with the loaded model (so re-running the command
 * line with --resume still works), and on --resume a given --tokenizer must encode as the
 * saved run's, which it keeps (docs/cli.md: a flag without effect is refused). */
static int shape_flags_check(fdpo_flag *flags, size_t n, const fdpo_train_opts *o) {
    static const char *const SHAPE[] = {"n-layer", "n-head", "n-embd", "n-positions",   /* then the Llama ones */
                                        "n-kv-head", "intermediate-size", "rope-theta", "tie-word-embeddings"};
    const char *dir = o->resume ? o->out : o->init, *source = o->resume ? "the run saved in" : "--model";
    if (!dir) {   /* a random init: the Llama shapes shape only --arch llama */
        for (size_t i = 4; (!o->arch || strcmp(o->arch, "llama")) && i < sizeof SHAPE / sizeof SHAPE[0]; i++)
            if (flags_was_set(flags, n, SHAPE[i]))
                return fdpo_error("--%s: a Llama shape, and this random init is --arch %s (give --arch llama)", SHAPE[i],
                                  o->arch ? o->arch : "gpt2");
        return 0;
    }
    int shape_given = flags_was_set(flags, n, "arch");
    for (size_t i = 0; i < sizeof SHAPE / sizeof SHAPE[0]; i++) shape_given |= flags_was_set(flags, n, SHAPE[i]);
    /* on --resume the saved state comes first: without training_state.json there is nothing to
     * resume, and that is the cause to report, not a shape flag that its config.json contradicts
     * (the repair an interrupted save left runs first, as resume_defaults does; once a process) */
    if (shape_given && o->resume) {
        fdpo_settings saved;
        size_t step = 0;
        if (fdpo_checkpoint_recover(dir)) return -1;
        if (fdpo_train_state_read_settings(dir, &saved, &step)) return fdpo_error_context("--resume");
        fdpo_settings_free(&saved);
    }
    /* a LoRA checkpoint (a LoRA run's OUT, or a PEFT adapter given as --model) holds no
     * config.json: the model is its base's (base_model_name_or_path), as the trainer loads it */
    char *lora_base = fdpo_lora_is_checkpoint(dir) ? fdpo_lora_peft_base(dir) : NULL;
    char *path = shape_given ? fdpo_path_join(lora_base ? lora_base : dir, "config.json") : NULL;
    /* the file that says the family: an adapter directory has adapter_config.json, whose
     * base_model_name_or_path names the model whose config.json it is */
    char says[1200];
    if (lora_base) snprintf(says, sizeof says, "an adapter: its adapter_config.json names the base model %s, whose config.json says the family",
                            lora_base);
    else snprintf(says, sizeof says, "its config.json says the family");
    free(lora_base);
    fdpo_gpt2_config c;
    /* not a checkpoint: the trainer's load says so, after the --tokenizer check below */
    const int have_config = path && !fdpo_config_load(path, &c);
    free(path);
    if (have_config) {
        const int llama = c.arch == FDPO_ARCH_LLAMA;
        /* on --resume of a random init --arch and a Llama run's shapes are saved settings,
         * which the library compares (fdpo_trainer_open: "differs from the saved run's"); a run
         * from --model records none of them, so they are compared here as for a fresh run */
        int arch_saved = 0;
        fdpo_settings saved;
        size_t step = 0;
        if (o->resume && !fdpo_train_state_read_settings(dir, &saved, &step)) {
            arch_saved = fdpo_settings_find(&saved, "arch") != NULL;
            fdpo_settings_free(&saved);
        }
        const int saved_llama_shape = arch_saved && llama;
        if (!arch_saved && flags_was_set(flags, n, "arch") && o->arch && strcmp(o->arch, llama ? "llama" : "gpt2"))
            return fdpo_error("--arch %s: %s %s is %s (%s; drop the flag)", o->arch, source,
                              dir, fdpo_gpt2_architecture(&c, 0), says);
        const struct { const char *name; double given, has; int applies; } v[] = {
            {"n-layer", (double)o->n_layer, (double)c.n_layer, 1},
            {"n-head", (double)o->n_head, (double)c.n_head, 1},
            {"n-embd", (double)o->n_embd, (double)c.n_embd, 1},
            {"n-positions", (double)o->n_positions, (double)c.n_positions, 1},
            {"n-kv-head", (double)(o->n_kv_head > 0 ? (size_t)o->n_kv_head : c.n_head), (double)c.n_kv_head, llama},
            {"intermediate-size", (double)(o->intermediate_size > 0 ? o->intermediate_size
                                           : fdpo_train_opts_intermediate_size((long)c.n_embd)),
             (double)c.intermediate_size, llama},
            {"rope-theta", o->rope_theta, c.rope_theta, llama},
            {"tie-word-embeddings", (double)(o->tie_word_embeddings != 0), (double)(c.tie_word_embeddings != 0), llama},
        };
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
            if (!flags_was_set(flags, n, v[i].name) || (i >= 4 && saved_llama_shape)) continue;
            if (!v[i].applies)
                return fdpo_error("--%s: a Llama shape, and %s %s is %s", v[i].name, source, dir,
                                  fdpo_gpt2_architecture(&c, 0));
            if (v[i].given != v[i].has)
                return fdpo_error("--%s %g: %s %s has %g (shape flags only shape a random init; drop the flag)",
                                  v[i].name, v[i].given, source, dir, v[i].has);
        }
    }
    if (o->resume && o->tokenizer && flags_was_set(flags, n, "tokenizer")) {
        fdpo_tokenizer *given = fdpo_tokenizer_load_dir(o->tokenizer);
        if (!given) return fdpo_error_context("--tokenizer %s", o->tokenizer);
        fdpo_tokenizer *saved = fdpo_tokenizer_load_dir(dir);
        char what[512];
        int differs = saved && fdpo_tokenizer_diff(given, saved, what, sizeof what);
        fdpo_tokenizer_free(given);
        fdpo_tokenizer_free(saved);
        if (differs)
            return fdpo_error("--tokenizer %s: differs from the tokenizer of the run saved in %s (%s), which the resumed "
                              "run keeps (drop the flag)", o->tokenizer, dir, what);
    }
    return 0;
}

/* --eval-every, the held-out set (--eval-fraction or --eval-file) and --eval-max-seqs act
 * only together, and the library cannot tell a given value from its default: a given flag
 * that the others leave without effect is refused here (docs/training.md). (--eval-every 0
 * with a held-out set is not such a case: every command with one evaluates it at the end and
 * writes eval_summary.json, on the first --eval-max-seqs sequences for pretrain and sft.) */
static int eval_flags_check(fdpo_flag *flags, size_t n) {
    fdpo_flag *every = find(flags, n, "eval-every"), *fraction = find(flags, n, "eval-fraction"),
              *file = find(flags, n, "eval-file"), *max_seqs = find(flags, n, "eval-max-seqs");
    if (!every || !fraction) return 0;   /* a command without a held-out set (online, rl) */
    const long every_n = *(long *)every->dest;
    const double fraction_v = *(double *)fraction->dest;
    /* a value out of its own range is that flag's error, which the library's range check
     * reports (--eval-fraction -0.1 read as "no held-out set" blamed --eval-every) */
    if (!(fraction_v >= 0 && fraction_v < 1) || every_n < 0 || (max_seqs && *(long *)max_seqs->dest < 0)) return 0;
    const int held_out = fraction_v > 0 || (file && *(const char **)file->dest);
    if (every->set && every_n > 0 && !held_out)
        return fdpo_error("--eval-every %ld: there is no held-out set to evaluate (--eval-fraction is 0%s)", every_n,
                          file ? " and no --eval-file is given" : "");
    if (max_seqs && max_seqs->set && !held_out)
        return fdpo_error("--eval-max-seqs: has no effect without an evaluation (--eval-fraction is 0)");
    return 0;
}

int train_flags_finish(fdpo_flag *flags, size_t n, fdpo_train_opts *o, const char *kind) {
    if (!o->out) return fdpo_error("--out: required (the checkpoint directory to write)");
    for (size_t i = 0; i < n; i++) o->tokenizer_flag |= !strcmp(flags[i].name, "tokenizer");   /* for the library's advice */
    if (shape_flags_check(flags, n, o)) return -1;
    if (o->resume && resume_defaults(flags, n, o->out, kind)) return -1;   /* may set --precision from the saved run */
    if (eval_flags_check(flags, n)) return -1;
    /* --steps sets the run's length; the epochs were accepted and changed nothing */
    if (flags_was_set(flags, n, "epochs") && o->steps > 0)
        return fdpo_error("--epochs: has no effect with --steps %ld (the run is its steps; give one of the two)", o->steps);
    if (fdpo_set_precision(precision_flag)) return -1;
    return 0;
}
