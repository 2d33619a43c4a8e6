/* The training flags every trainer shares, and the --resume rule for the fixed ones. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include "cli/train_flags.h"
#include "fdpo/core.h"

const char *const TRAIN_FIXED_FLAGS[] = {
    "seq-len", "batch-size", "grad-accum", "steps", "epochs", "lr", "schedule", "warmup-steps",
    "min-lr-ratio", "weight-decay", "beta1", "beta2", "adam-eps", "grad-clip", "seed",
    "val-fraction", "shuffle",
};
const size_t TRAIN_N_FIXED_FLAGS = sizeof TRAIN_FIXED_FLAGS / sizeof TRAIN_FIXED_FLAGS[0];

static const char *precision_flag; /* --precision: applied by train_flags_finish */

size_t train_flags_add(fdpo_flag *f, size_t n, fdpo_train_opts *o) {
    memset(o, 0, sizeof *o);
    const fdpo_flag shared[] = {
        {"out",           FLAG_STR,   &o->out,           NULL,     "output checkpoint directory (required); training state and metrics.jsonl go there too", 0},
        {"resume",        FLAG_BOOL,  &o->resume,        "0",      "continue the run saved in --out (same data; fixed flags default to the saved ones)", 0},
        {"overwrite",     FLAG_BOOL,  &o->overwrite,     "0",      "start a fresh run even if --out already holds a checkpoint", 0},
        {"init",          FLAG_STR,   &o->init,          NULL,     "start from this checkpoint directory instead of a random init", 0},
        {"tokenizer",     FLAG_STR,   &o->tokenizer,     NULL,     "tokenizer directory (default: --init's, else byte-level)", 0},
        {"n-layer",       FLAG_INT,   &o->n_layer,       "4",      "transformer blocks (random init only)", 0},
        {"n-head",        FLAG_INT,   &o->n_head,        "4",      "attention heads (random init only)", 0},
        {"n-embd",        FLAG_INT,   &o->n_embd,        "128",    "embedding width (random init only)", 0},
        {"n-positions",   FLAG_INT,   &o->n_positions,   "256",    "maximum sequence length of the model (random init only)", 0},
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
        {"val-fraction",  FLAG_FLOAT, &o->val_fraction,  "0.05",   "fraction of documents/examples held out for validation", 0},
        {"eval-every",    FLAG_INT,   &o->eval_every,    "100",    "validation loss every N steps and at the end (0: never)", 0},
        {"save-every",    FLAG_INT,   &o->save_every,    "0",      "checkpoint every N steps (0: only at the end)", 0},
        {"log-every",     FLAG_INT,   &o->log_every,     "1",      "progress line and metrics.jsonl entry every N steps", 0},
        {"threads",       FLAG_INT,   &o->threads,       "0",      "OpenMP/OpenBLAS threads (0: all cores)", 0},
        {"precision",     FLAG_STR,   &precision_flag,   "fp32",   "matmul precision: fp32, or bf16 (bf16 inputs, fp32 accumulation and master weights)", 0},
        {"seed",          FLAG_INT,   &o->seed,          "1337",   "seed for init, data split and data order", 0},
        {"quiet",         FLAG_BOOL,  &o->quiet,         "0",      "no progress line", 0},
    };
    size_t k = sizeof shared / sizeof shared[0];
    memcpy(f + n, shared, k * sizeof *f);
    return n + k;
}

int train_flags_set_default(fdpo_flag *flags, size_t n, const char *name, const char *def) {
    for (size_t i = 0; i < n; i++) if (!strcmp(flags[i].name, name)) { flags[i].def = def; return 0; }
    return fdpo_error("internal: no flag '%s'", name);
}

static fdpo_flag *find(fdpo_flag *flags, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++) if (!strcmp(flags[i].name, name)) return &flags[i];
    return NULL;
}

static char *value_text(const fdpo_flag *f) {
    char buf[64];
    switch (f->type) {
    case FLAG_INT: snprintf(buf, sizeof buf, "%ld", *(long *)f->dest); break;
    case FLAG_FLOAT: fdpo_fmt_double(buf, sizeof buf, *(double *)f->dest); break;
    case FLAG_BOOL: snprintf(buf, sizeof buf, "%d", *(int *)f->dest ? 1 : 0); break;
    case FLAG_STR: return fdpo_strdup(*(const char **)f->dest ? *(const char **)f->dest : "");
    }
    return fdpo_strdup(buf);
}

char **train_flags_values(const fdpo_flag *flags, size_t n, const char *const *names, size_t n_names) {
    char **v = fdpo_malloc((n_names ? n_names : 1) * sizeof *v);
    for (size_t i = 0; i < n_names; i++) {
        const fdpo_flag *f = find((fdpo_flag *)flags, n, names[i]);
        v[i] = f ? value_text(f) : fdpo_strdup("");
    }
    return v;
}

static char **g_kept; static size_t g_n_kept;

/* Saved text -> flag value (the text came from value_text, so it parses). */
static int set_from_text(fdpo_flag *f, const char *text) {
    char *end;
    errno = 0;
    switch (f->type) {
    case FLAG_INT: *(long *)f->dest = strtol(text, &end, 10); break;
    case FLAG_FLOAT: *(double *)f->dest = strtod(text, &end); break;
    case FLAG_BOOL: *(int *)f->dest = atoi(text) != 0; end = (char *)text + strlen(text); break;
    case FLAG_STR: {
        /* kept for the process lifetime, like the parser's config strings */
        char *copy = fdpo_strdup(text);
        g_kept = fdpo_realloc(g_kept, (g_n_kept + 1) * sizeof *g_kept);
        g_kept[g_n_kept++] = copy;
        *(const char **)f->dest = copy;
        end = copy + strlen(copy);
        break;
    }
    }
    if (errno || *end) return fdpo_error("saved value '%s' of --%s does not parse", text, f->name);
    return 0;
}

static int resume_fixed(fdpo_flag *flags, size_t n, const char *out, const char *const *fixed, size_t n_fixed) {
    char **keys, **vals;
    size_t ns;
    if (fdpo_checkpoint_recover(out)) return -1;
    if (fdpo_train_state_read_fixed(out, &keys, &vals, &ns) < 0) return fdpo_error_context("--resume");
    int rc = 0;
    for (size_t i = 0; i < n_fixed && !rc; i++) {
        fdpo_flag *f = find(flags, n, fixed[i]);
        if (!f) continue;
        for (size_t k = 0; k < ns; k++) {
            if (strcmp(keys[k], fixed[i])) continue;
            if (f->set) {
                char *now = value_text(f);
                if (strcmp(now, vals[k]))
                    rc = fdpo_error("--%s: %s differs from the saved run's %s (it cannot change on --resume)",
                                    f->name, now, vals[k]);
                free(now);
            } else {
                rc = set_from_text(f, vals[k]);
            }
            break;
        }
    }
    fdpo_strv_free(keys, ns);
    fdpo_strv_free(vals, ns);
    return rc;
}

int train_flags_finish(fdpo_flag *flags, size_t n, fdpo_train_opts *o,
                       const char *const *fixed, size_t n_fixed) {
    if (!o->out) return fdpo_error("--out: required (the checkpoint directory to write)");
    if (fdpo_set_precision(precision_flag)) return -1;
    if (o->resume && resume_fixed(flags, n, o->out, fixed, n_fixed)) return -1;
    if (o->resume && o->overwrite) return fdpo_error("--overwrite: cannot be combined with --resume");
    if (o->seq_len < 1) return fdpo_error("--seq-len: %ld must be >= 1", o->seq_len);
    if (o->batch_size < 1) return fdpo_error("--batch-size: %ld must be >= 1", o->batch_size);
    if (o->grad_accum < 1) return fdpo_error("--grad-accum: %ld must be >= 1", o->grad_accum);
    if (o->steps < 0) return fdpo_error("--steps: %ld must be >= 0", o->steps);
    if (o->steps == 0 && !(o->epochs > 0)) return fdpo_error("--epochs: %g must be > 0 when --steps is 0", o->epochs);
    if (o->stop_at < 0) return fdpo_error("--stop-at: %ld must be >= 0", o->stop_at);
    if (!(o->lr >= 0)) return fdpo_error("--lr: %g must be >= 0", o->lr);
    fdpo_sched_kind k;
    if (fdpo_schedule_parse(o->schedule, &k)) return -1;
    if (o->warmup_steps < 0) return fdpo_error("--warmup-steps: %ld must be >= 0", o->warmup_steps);
    if (!(o->min_lr_ratio >= 0 && o->min_lr_ratio <= 1)) return fdpo_error("--min-lr-ratio: %g is not in [0, 1]", o->min_lr_ratio);
    if (!(o->weight_decay >= 0)) return fdpo_error("--weight-decay: %g must be >= 0", o->weight_decay);
    if (!(o->beta1 >= 0 && o->beta1 < 1)) return fdpo_error("--beta1: %g is not in [0, 1)", o->beta1);
    if (!(o->beta2 >= 0 && o->beta2 < 1)) return fdpo_error("--beta2: %g is not in [0, 1)", o->beta2);
    if (!(o->adam_eps > 0)) return fdpo_error("--adam-eps: %g must be > 0", o->adam_eps);
    if (!(o->grad_clip >= 0)) return fdpo_error("--grad-clip: %g must be >= 0", o->grad_clip);
    if (!(o->val_fraction >= 0 && o->val_fraction < 1)) return fdpo_error("--val-fraction: %g is not in [0, 1)", o->val_fraction);
    if (o->eval_every < 0) return fdpo_error("--eval-every: %ld must be >= 0", o->eval_every);
    if (o->save_every < 0) return fdpo_error("--save-every: %ld must be >= 0", o->save_every);
    if (o->log_every < 1) return fdpo_error("--log-every: %ld must be >= 1", o->log_every);
    if (o->threads < 0) return fdpo_error("--threads: %ld must be >= 0", o->threads);
    if (o->seed < 0) return fdpo_error("--seed: %ld must be >= 0", o->seed);
    if (o->n_layer < 1) return fdpo_error("--n-layer: %ld must be >= 1", o->n_layer);
    if (o->n_head < 1) return fdpo_error("--n-head: %ld must be >= 1", o->n_head);
    if (o->n_embd < 1 || o->n_embd % o->n_head) return fdpo_error("--n-embd: %ld must be a positive multiple of --n-head (%ld)", o->n_embd, o->n_head);
    if (o->n_positions < 1) return fdpo_error("--n-positions: %ld must be >= 1", o->n_positions);
    if (!o->init && !o->resume && o->seq_len > o->n_positions)
        return fdpo_error("--seq-len: %ld exceeds --n-positions %ld", o->seq_len, o->n_positions);
    return 0;
}

static void on_interrupt(int sig) { (void)sig; fdpo_trainer_request_stop(); }

void train_catch_interrupts(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_interrupt;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}
