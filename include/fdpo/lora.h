/* LoRA adapters (Hu et al. 2021) on the linear layers of either model family, with
 * Hugging Face PEFT's conventions so that the files fdpo writes load in PEFT and back:
 *
 *   y = base(x) + s * B (A dropout(x)),   s = alpha / r,
 *   A = lora_A.weight [r, in]  (init kaiming_uniform(a = sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)))
 *   B = lora_B.weight [out, r] (init 0, so a fresh adapter leaves the model unchanged)
 *
 * Dropout acts on the adapter's input only. GPT-2's Conv1D weights are [in, out] (PEFT's
 * fan_in_fan_out = true): A and B keep the shapes above, only merging transposes B A.
 *
 * A model with adapters attached (m->lora) trains the adapters only: its backward computes
 * no gradient of a base weight (no base grads buffer is allocated, the weight-gradient GEMMs
 * are skipped), and the optimizer, gradient clipping and the training state see the
 * adapter's tensor table `view` instead of the model's. docs/lora.md. */
#ifndef FDPO_LORA_H
#define FDPO_LORA_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/gpt2.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The linear layers an adapter can sit on, per block (both families in one list). */
typedef enum {
    FDPO_LORA_C_ATTN, FDPO_LORA_ATTN_C_PROJ, FDPO_LORA_C_FC, FDPO_LORA_MLP_C_PROJ,   /* GPT-2 */
    FDPO_LORA_Q, FDPO_LORA_K, FDPO_LORA_V, FDPO_LORA_O, FDPO_LORA_GATE, FDPO_LORA_UP, FDPO_LORA_DOWN, /* Llama */
    FDPO_LORA_N_SITES
} fdpo_lora_site;

/* --lora-r, --lora-alpha, --lora-dropout, --lora-targets */
typedef struct {
    long r;               /* rank; 0 = no LoRA */
    double alpha;         /* scaling s = alpha / r */
    double dropout;       /* on the adapter input, in [0, 1) */
    const char *targets;  /* comma list of module-name suffixes, PEFT's target_modules, or
                             FDPO_LORA_ALL_LINEAR (below); NULL: PEFT's default */
} fdpo_lora_opts;

typedef struct fdpo_lora {
    size_t r;
    double alpha, dropout;
    float scale;                       /* alpha / r */
    char *targets;                     /* the comma list as given, all-linear expanded (adapter_config.json) */
    char *base_model;                  /* base_model_name_or_path written with the adapter (may be NULL) */
    int site_tensor[FDPO_LORA_N_SITES]; /* index of the site's lora_A in view.tensors (B follows), -1 = none */
    int score_tensor;                  /* a reward model's score head, trained in full (PEFT's modules_to_save
                                        * ["score"]): index of "base_model.model.score.weight" in view, -1 = none */
    size_t site_in[FDPO_LORA_N_SITES], site_out[FDPO_LORA_N_SITES];
    /* The adapter parameters as a model-shaped table: tensors "base_model.model.<module>.
     * lora_A.weight" / ".lora_B.weight" with {i} for the layer, per_layer, decay 1;
     * config.n_layer = the model's. What AdamW, clipping, the training state and the
     * safetensors helpers iterate (they never look further than the table). */
    fdpo_gpt2 view;
    fdpo_strv names;                   /* owns view.tensors[].name */
    int enabled;                       /* 0: forward is the base model's (a DPO reference) */
    int training;                      /* 1: dropout active (a training step) */
    uint64_t seed, mask_step, mask_forward;
    /* dropout keys: the rows of the next forward are the step's rows next_row0, next_row0+1, ...
     * (fdpo_lora_set_rows, one forward only); row0 those of the last forward (its backward's) */
    uint64_t next_row0, row0;
    int rows_set;
    /* activations of the last forward: u = dropout(x) A^T per (layer, site) [N, r] */
    float *u; size_t cap_tokens;
    float *keep;                       /* [N * max in] dropout keep-scale scratch (0 or 1/(1-p)) */
    float *du;                         /* [N, r] backward scratch */
} fdpo_lora;

/* Parse the options against m's family; errors name the flag. A target matches a module
 * when it equals the module's path or is a suffix of it after a '.', as in PEFT (GPT-2's
 * "c_proj" matches attn.c_proj and mlp.c_proj), and the whole value FDPO_LORA_ALL_LINEAR
 * selects every linear layer; a target matching nothing is an error that lists the model's
 * module names. */
int fdpo_lora_opts_check(const fdpo_lora_opts *o, const fdpo_gpt2 *m);
/* The comma list of module names alone, its errors naming it `name` (an adapter's
 * target_modules). */
int fdpo_lora_targets_check(const char *targets, const fdpo_gpt2 *m, const char *name);
/* 1 when the comma lists targets (errors named `name`) and other select the same modules of
 * m ("c_attn" and "attn.c_attn"), 0 when they do not, -1 with the error of a bad list. */
int fdpo_lora_targets_same(const char *targets, const char *other, const fdpo_gpt2 *m, const char *name);
/* PEFT's default target_modules for m's family (no --lora-targets): "c_attn" (GPT-2),
 * "q_proj,v_proj" (Llama) */
const char *fdpo_lora_default_targets(const fdpo_gpt2 *m);
/* m carries an adapter a run continues (owner: where it came from, for messages: "--model DIR"
 * or a round's directory): its rank and alpha must be r and alpha (--lora-r/--lora-alpha), and a
 * given targets list (NULL: none given) must select its modules; the adapter's are trained, so
 * another value would be dropped and recorded in the run's state. 0, or -1 with the error. */
/* PEFT's module-name rule (target_modules, exclude_modules, modules_to_save entries): entry is
 * the module's full dotted name path, or a '.'-suffix of it ("mlp.c_proj" of
 * "transformer.h.0.mlp.c_proj") */
int fdpo_lora_name_matches(const char *path, const char *entry);
int fdpo_lora_check_continued(const fdpo_gpt2 *m, const char *owner, long r, double alpha, const char *targets);
/* 1 when PEFT's exclude_modules entry (a module's name, or a '.'-suffix of it:
 * "mlp.c_proj", "transformer.h.0.attn.c_attn") leaves out a module of some layer that the
 * comma list targets selects, else 0; -1 with the error of a bad targets list. */
int fdpo_lora_excludes(const char *targets, const fdpo_gpt2 *m, const char *entry);
/* PEFT's target_modules shorthand, taken by every targets value above (--lora-targets, an
 * adapter's target_modules) as a whole value: every linear layer of the blocks (the LM head,
 * PEFT's output layer, is left out); gpt2 c_attn,c_proj,c_fc, llama q/k/v/o_proj and
 * gate/up/down_proj. */
#define FDPO_LORA_ALL_LINEAR "all-linear"
/* Attach fresh adapters to m (A kaiming-uniform from seed, B zero); m->lora owns them. On a
 * reward model the score head joins the trainable tensors (initialised from m's).
 * Adapters m already has (a model read from a LoRA checkpoint) are first folded into the
 * base weights (fdpo_lora_merge): a new adapter adapts the merged model. */
int fdpo_lora_attach(fdpo_gpt2 *m, const fdpo_lora_opts *o, uint64_t seed);
/* Remove and free m's adapters (the base weights are untouched). */
void fdpo_lora_detach(fdpo_gpt2 *m);
/* W += s * B A for every adapter (GPT-2's [in, out] weights get (B A)^T), summed in
 * double and rounded once; then detach. */
void fdpo_lora_merge(fdpo_gpt2 *m);
/* The same from W's values in exact (m's parameters in double, as fdpo_checkpoint_load_model_exact
 * reads an F64 base; NULL: m's own floats), so an F64 base weight is rounded once, in the sum. */
void fdpo_lora_merge_exact(fdpo_gpt2 *m, const double *exact);
/* The score head of a LoRA reward model (trained in full beside the adapters, kept in the
 * view): its weights (grad 0) or gradient (grad 1); NULL without one. */
float *fdpo_lora_score(fdpo_lora *l, int grad);
/* Zero the adapter gradients (fdpo_gpt2_zero_grad calls it). */
void fdpo_lora_zero_grad(fdpo_lora *l);
/* Dropout masks are a function of (seed, step, row, layer, site), one stream per row (token)
 * of the forward: call at the start of each training step so a resumed run draws the same masks. */
void fdpo_lora_begin_step(fdpo_lora *l, uint64_t step);
/* The next training forward's rows are rows row0, row0 + 1, ... of the step: a name for each
 * token that does not depend on which rank or micro-batch computes it (the trainer loops set
 * it before each forward from the micro-batch's place in the step), so a data-parallel run
 * draws the single process's masks and a resume with another rank count continues the same
 * run. One forward only; a forward without it is keyed by its index in the step (per process).
 * No-op without adapters. */
void fdpo_lora_set_rows(fdpo_gpt2 *m, uint64_t row0);
/* Module path of a site for m's family, "{i}" for the layer ("transformer.h.{i}.attn.c_attn"). */
const char *fdpo_lora_module(const fdpo_gpt2 *m, fdpo_lora_site s);

/* ---- hooks the model calls (src/model/gpt2.c, llama.c) after a linear layer ----
 * forward: out [N, out] += s * dropout(x) A^T B^T for the adapter at (layer, site), if any.
 * backward: dA, dB += ..., dx [N, in] += the adapter's input gradient.
 * rows: the batch row of each of the N rows where they are a packed subset (the last layer on
 * the head's rows only), NULL for rows 0..N-1: dropout masks are keyed by the batch row. */
void fdpo_lora_forward(fdpo_gpt2 *m, fdpo_lora_site s, size_t layer, float *out, const float *x, size_t N,
                       const size_t *rows);
void fdpo_lora_backward(fdpo_gpt2 *m, fdpo_lora_site s, size_t layer, float *dx, const float *dout, const float *x, size_t N,
                        const size_t *rows);
/* decoder hook (src/model/gpt2_decode.c, llama_decode.c): out [N, out] += s * x A^T B^T,
 * no dropout, nothing kept; a no-op without an enabled adapter at (layer, site). */
void fdpo_lora_apply(const fdpo_gpt2 *m, fdpo_lora_site s, size_t layer, float *out, const float *x, size_t N);
/* Switch m's adapters on (1) or off (0: the forward and the decoder are the base model's,
 * the reference of a LoRA policy); returns the previous setting (0 without adapters). */
int fdpo_lora_set_enabled(fdpo_gpt2 *m, int on);
/* 1 when m's base weights are frozen (adapters attached): no base gradients. */
static inline int fdpo_lora_frozen(const fdpo_gpt2 *m) { return m->lora != NULL; }

/* ---- PEFT files (src/io/peft.c) ----
 * DIR/adapter_model.safetensors (F32, keys base_model.model.<module>.lora_{A,B}.weight) and
 * DIR/adapter_config.json (peft_type LORA, task_type CAUSAL_LM, r, lora_alpha, lora_dropout,
 * target_modules, bias "none", fan_in_fan_out, base_model_name_or_path), each atomic. */
int fdpo_lora_save_peft(const char *dir, const fdpo_gpt2 *m, const char *base_model);
/* Read DIR's adapter_config.json and attach adapters with its settings and the tensors of
 * adapter_model.safetensors to m (shapes checked against m). */
int fdpo_lora_load_peft(const char *dir, fdpo_gpt2 *m);
/* adapter_config.json text -> options for m's family (checked: fdpo_lora_opts_check), the
 * target list malloc'd into *targets (o->targets points to it; free it). path names the file
 * in messages. In memory, for the fuzzer (tests/fuzz/fuzz_peft.c). */
int fdpo_lora_config_parse(const char *path, const char *text, size_t len, const fdpo_gpt2 *m, fdpo_lora_opts *o,
                           char **targets);
/* A LoRA checkpoint directory as a model: the base named by DIR's adapter_config.json
 * (base_model_name_or_path, a full checkpoint) with DIR's adapters attached and enabled.
 * fdpo_checkpoint_load_model calls it for a directory with adapter_config.json and no
 * config.json, so every command that reads a model reads a LoRA run's output directly. */
fdpo_gpt2 *fdpo_lora_load_checkpoint(const char *dir);
/* DIR/config.json, or for a LoRA checkpoint directory its base's (the model's shape). */
int fdpo_checkpoint_load_config(const char *dir, fdpo_gpt2_config *c);
/* DIR's adapters attached to base, read from base_dir (consumed: freed on error). An
 * adapter that trains a score head (modules_to_save ["score"], fdpo rm --lora-r) on a language
 * model turns base into a reward model first (pad = the end of text of DIR's own tokenizer,
 * else of base_dir's: PEFT's save_pretrained writes none, and merge --lora's --model BASE is
 * the one the adapter is folded onto). */
fdpo_gpt2 *fdpo_lora_load_onto(const char *dir, fdpo_gpt2 *base, const char *base_dir);
/* 1 if DIR is a LoRA checkpoint: adapter_config.json and no config.json of its own. */
int fdpo_lora_is_checkpoint(const char *dir);
/* 1 if DIR holds adapter_config.json. */
int fdpo_lora_dir_has_adapter(const char *dir);
/* base_model_name_or_path of DIR's adapter_config.json (malloc'd), NULL if absent. */
char *fdpo_lora_peft_base(const char *dir);
/* The same, telling a config that does not read (-1, the error naming its file and line: a
 * JSON syntax error, a key twice) from one without the key (0, *base NULL). */
int fdpo_lora_peft_base_read(const char *dir, char **base);

#ifdef __cplusplus
}
#endif

#endif
