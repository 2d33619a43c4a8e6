/* Reusable pieces of a training run, shared by `fdpo pretrain`, `fdpo sft` and `fdpo dpo`:
 * options, the seeded epoch data order, training state (AdamW moments, step, RNG, data
 * position) and the atomic checkpoint-with-state save, the metrics JSONL writer, one
 * optimizer step (clip -> schedule -> AdamW), and what `fdpo info` shows of a checkpoint
 * (fdpo_checkpoint_info_read: the one reader of training_state.json is state.c's).
 *
 * A run's life, as src/train/lm_trainer.c uses it (the DPO trainer does the same with its
 * own micro-batches and metrics):
 *
 *   fdpo_trainer tr;
 *   fdpo_trainer_open(&tr, &opts, kind, tok, n_train_items, data_hash, extra_settings);
 *   while (!fdpo_trainer_done(&tr)) {
 *       fdpo_gpt2_zero_grad(tr.model);
 *       for each of opts.grad_accum micro-batches:
 *           items = fdpo_trainer_next_items(&tr, opts.batch_size)   (epoch order, reshuffled)
 *           forward, backward(d_token_logp = dLoss/dlogp, normalised over the whole step)
 *       fdpo_trainer_step(&tr, n_tokens);            clip, lr, AdamW, step++
 *       if (fdpo_trainer_want_eval(&tr)) ...         validation
 *       if (fdpo_trainer_want_log(&tr) || eval) {
 *           fdpo_trainer_metrics_begin(&tr, loss); fdpo_metrics_add(&tr.metrics, ...);
 *           fdpo_metrics_end(&tr.metrics); fdpo_trainer_progress(&tr, loss, extra); }
 *       fdpo_trainer_maybe_save(&tr)                 every --save-every steps, and --stop-at
 *   }
 *   fdpo_trainer_close(&tr, 1);                       final checkpoint + free
 */
#ifndef FDPO_TRAINER_H
#define FDPO_TRAINER_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/core.h"
#include "fdpo/data.h"
#include "fdpo/eval.h"
#include "fdpo/gpt2.h"
#include "fdpo/tokenizer.h"
#include "fdpo/train.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Options shared by every trainer. The CLI fills them from src/cli/train_flags.c. */
typedef struct {
    /* model shape for a random init (ignored with init / resume; vocab from the tokenizer) */
    long n_layer, n_head, n_embd, n_positions;
    /* the family of a random init: NULL or "gpt2", or "llama" with the fields below
     * (n_kv_head 0 = n_head; intermediate_size 0 = fdpo_train_opts_intermediate_size) */
    const char *arch;
    long n_kv_head, intermediate_size;
    double rope_theta;
    int tie_word_embeddings;
    /* batches */
    long seq_len, batch_size, grad_accum;   /* a step takes fdpo_train_step_items of them */
    long steps;          /* optimizer steps; 0 = derive from epochs */
    double epochs;       /* used when steps == 0: ceil(epochs * items / (batch * accum)) */
    long stop_at;        /* 0 = off; else save and stop after this step (simulates an interruption) */
    /* optimisation */
    double lr; const char *schedule; long warmup_steps; double min_lr_ratio;
    double weight_decay, beta1, beta2, adam_eps, grad_clip;
    /* run */
    long threads, seed;
    const char *out;     /* checkpoint directory (required) */
    int resume;          /* continue from out's training state */
    const char *init;    /* start from this checkpoint instead of a random init */
    fdpo_gpt2 *init_model; /* or from this model in memory (init then only names it, for the
                              settings): trained in place, borrowed (close does not free it);
                              the online rounds keep their policy in memory this way */
    int skip_moments;    /* checkpoints hold training_state.json but not the AdamW moments
                            (an online round's: a round is redone, never resumed mid-way); the
                            run's last step does not store them either (the optimizer handed
                            back through init_opt is to be reset before another step) */
    fdpo_adamw *init_opt;  /* with init_model: the optimizer's memory, borrowed and reset at open
                              to a fresh AdamW (the online rounds reuse one pair of moment
                              buffers instead of allocating 2x the parameters per round); close
                              hands it back with the steps taken */
    int out_claimed;     /* the caller already holds the lock that covers OUT (an online
                            round's OUT inside the run's locked directory): no OUT.lock */
    const char *data;    /* the --data file the items come from: named in the note that a step
                            was capped at the data set (not a setting; NULL: "the data") */
    /* the held-out set of dpo, rm, kto, sft and pretrain (eval_name NULL: the command has none): its size
     * and fingerprint are saved beside the training data's and --resume refuses other
     * held-out data, naming the set as eval_name ("--eval-file F", "the --eval-fraction 0.1
     * split of --data F"); every rank must hold the same one. eval_legacy_hash: what
     * data_hash held in a state saved before the held-out set had its own (dpo: the training
     * and held-out pairs; rm, kto, sft, pretrain: the training items alone), so such a run
     * still resumes */
    const char *eval_name;
    size_t eval_n_items;
    uint64_t eval_hash, eval_legacy_hash;
    const char *step_flag; /* that note's flag for batch_size when a command sets it from its own
                              (rl: "--prompts-per-step", grad_accum 1); NULL: --batch-size x --grad-accum */
    const char *continue_how; /* how a stopped or interrupted run continues, in the messages
                                 that say so (sacpo: it has no --resume); NULL: "continue with --resume" */
    const char *occupied_how; /* what a fresh run into an OUT that holds a checkpoint or another
                                 run's files should do, in fdpo_train_out_check's messages (sacpo:
                                 it has no --resume or --overwrite); NULL: those flags */
    const char *resume_how;   /* what to do when a resumed run is refused for a changed flag or other
                                 reference weights, in those messages, which then name the run cut
                                 short in OUT (sacpo: it has no --resume); NULL: "it cannot change
                                 on --resume", "resume needs the same reference" */
    int init_in_run;     /* init is a stage of the caller's own run (sacpo: the stage before, in its
                            OUT), which the caller's plan pins, and the reference's content hash
                            too: --resume does not compare init's path (its "model" setting), so
                            a moved OUT resumes (the old path was named as another --model) */
    const char *tokenizer; /* tokenizer directory (default: init's, else byte-level) */
    int tokenizer_flag;    /* the command offers --tokenizer DIR (sft, pretrain): the message for an
                              init without tokenizer files names it; the others (dpo, rl, online,
                              ...) take the tokenizer from the checkpoint alone */
    const char *chat_template; /* built-in chat template for message data (NULL/"auto": the tokenizer's) */
    long eval_every, save_every, log_every;
    long eval_max_seqs;  /* pretrain/sft: evaluate only the first N validation sequences (0 = all) */
    double val_fraction;
    int shuffle;         /* 0 = items in file order every epoch */
    int overwrite;       /* allow starting a fresh run in an OUT that holds a checkpoint */
    int quiet;           /* no progress line or informational lines (summary, eval results); the
                            --stop-at stop and --overwrite's replacement are still said */
    int allreduce_overlap; /* under MPI: start each layer's gradient allreduce during the step's
                              last backward (docs/scaling.md); not a setting: results are equal */
    /* the frozen reference a run loaded (dpo, kto, rl, online --mode step): ref_flag/ref_dir
     * name it ("--ref DIR" or "--model DIR"), ref_hash is fdpo_hash_model of its weights. It is
     * read again from its path at every start, so the training state records the hash and
     * --resume refuses other weights there (a --model re-trained in place). ref_flag NULL: none
     * (a LoRA run whose reference is its base: the base's hash is recorded for every LoRA run). */
    const char *ref_flag, *ref_dir;
    uint64_t ref_hash;
    /* the reward an on-policy trainer scores with (rl, online --mode step), read again from its
     * files at every start: reward_spec its --reward SPEC, reward_lexicon its --lexicon,
     * reward_hash fdpo_reward_content_hash1 of them (has_reward_hash 0: nothing to hash, a cmd:
     * program or a spec that reads no file). The state records it; --resume refuses another
     * content (an rm:DIR re-trained or a word list edited in place). */
    const char *reward_spec, *reward_lexicon;
    int has_reward_hash;
    uint64_t reward_hash;
    /* LoRA (fdpo/lora.h; sft and dpo): lora_r > 0 trains adapters on --model's frozen
     * weights; OUT then holds PEFT adapter files instead of model.safetensors */
    long lora_r;
    double lora_alpha, lora_dropout;  /* without lora_r: the defaults (FDPO_LORA_ALPHA_DEFAULT, 0) */
    const char *lora_targets;
} fdpo_train_opts;
#define FDPO_LORA_ALPHA_DEFAULT 8.0   /* PEFT's LoraConfig default lora_alpha */
/* The most optimizer steps a run may have, 2^53: training_state.json holds the step counts as
 * JSON numbers (doubles), exact only up to 2^53, and --resume reads no more (fdpo_json_size),
 * so a longer run saved a state it could not resume. Refused: --steps by fdpo_train_opts_check,
 * the steps of --epochs by fdpo_trainer_open. */
#define FDPO_MAX_STEPS 9007199254740992LL
/* the adapters' gradients are not laid out per layer (fdpo_train_opts_check, the trainer) */
#define FDPO_OVERLAP_LORA_REFUSED \
    "--allreduce-overlap: not available with --lora-r (the adapters' gradients are summed after backward)"

/* The library owns these options: fdpo_train_opts_default fills the documented defaults
 * (the CLI's flag table shows the same values), fdpo_train_opts_check validates them once
 * per run (the pretrain/sft caller before loading data; fdpo_dpo_run_opts_check); errors name the option by its
 * flag / config key ("--lr: -1 must be >= 0"). */
void fdpo_train_opts_default(fdpo_train_opts *o);
/* `fdpo sft`'s: fdpo_train_opts_default's with lr 2e-5 and 3 epochs (fine-tuning a given model). */
void fdpo_sft_opts_default(fdpo_train_opts *o);
int fdpo_train_opts_check(const fdpo_train_opts *o);
/* A fresh run (no --resume, no --overwrite) refuses an OUT that holds a checkpoint or another
 * kind of run (fdpo_out_holds_run), saying what to do (o->occupied_how, else --resume /
 * --overwrite); fdpo_trainer_open checks it, and a command that does costly work first (dpo's
 * reference cache, sacpo's earlier stages) checks it before. */
int fdpo_train_out_check(const fdpo_train_opts *o);
/* A trainer with a reference (dpo, kto, rl, online) loads it from ref (--ref), else from
 * model (--model), at every start, --resume included: an OUT that is that directory (the
 * same path by fdpo_settings_same_path) would give a resumed run its half-trained policy as
 * the reference. Refused, naming both flags; each such trainer's options check calls it. */
int fdpo_train_out_ref_check(const char *out, const char *ref, const char *model);
/* So is an OUT that the reward spec of an on-policy trainer (rl, online in both modes) reads
 * (fdpo_reward_spec_inputs: rm:DIR, or the base of an rm:DIR that is a LoRA adapter; lexicon:
 * and words: files, which are never a directory OUT): its saves replaced the reward model with
 * the policy, and --resume then failed. Called by their options checks, at every start. */
int fdpo_train_out_reward_check(const char *out, const char *spec);
/* Content hashes of the files a run reads again at every start, not from OUT (sacpo's plan,
 * online.json, rl's and online step mode's training state): a file changed in place under the
 * same name is refused on a rerun or --resume rather than mixed in without a word.
 * fdpo_hash_path: a file's bytes, or a checkpoint directory's model files (names and contents,
 * in name order; not its training state, metrics or eval files), chained into *h; -1 when it
 * cannot be read. */
int fdpo_hash_path(uint64_t *h, const char *path);
/* The files whose content is a reward spec's scores: fdpo_reward_spec_inputs' (rm:DIR,
 * lexicon:FILE, words:FILE, afinn's default lexicon), --lexicon FILE in place of afinn's
 * default one, and nothing for a cmd: program (a program mended in place resumes its run; one
 * may write to a file its command line names) or a spec that reads no file. Appended to out. */
void fdpo_reward_content_files(const char *spec, const char *lexicon, fdpo_strv *out);
/* Their content (fdpo_hash_path, in order) into *h, and the base an rm:DIR that is a LoRA
 * adapter is read onto into *base (*has_base 1). The number of files hashed (0: nothing to
 * hash, *h FDPO_HASH_INIT), -1 when one cannot be read (its loader names the error: cleared). */
int fdpo_reward_content_hash(const char *spec, const char *lexicon, uint64_t *h, uint64_t *base, int *has_base);
/* The same as one hash (the base's mixed in); *has_hash 0 where there is nothing to hash. */
uint64_t fdpo_reward_content_hash1(const char *spec, const char *lexicon, int *has_hash);
/* "--resume: --reward SPEC: the content of FILES differs from what THEN (hash ...)": -1 */
int fdpo_reward_changed_error(const char *spec, const char *lexicon, const char *then, uint64_t was, uint64_t now);
/* A resumed bf16 run multiplies on the route OUT's training_state.json records ("bf16-route",
 * fdpo_bf16_route_pin): the route is chosen by a timing probe, and the two routes sum in
 * different orders. Says so once when the pin differs from the measured route, warns once
 * where this CPU cannot take it; an fp32 run, or a state without the key, is left alone.
 * -1 a bad value (named), 0 none recorded, 1 taken or warned about. Called by
 * fdpo_trainer_open, and before a command's own early work on --resume (dpo's reference
 * log-probs); online rounds and sacpo reruns pin from their plan, rounds or stages. */
int fdpo_train_pin_bf16_route(const char *out);
/* The model config a random init builds from o (vocab from the tokenizer); checked by
 * fdpo_train_opts_check and fdpo_gpt2_config_check. */
fdpo_gpt2_config fdpo_train_opts_model_config(const fdpo_train_opts *o, size_t vocab_size);
/* --arch llama's default SwiGLU width: 8/3 * n_embd rounded up to a multiple of 32
 * (the 2/3 * 4C of the Llama paper, kept at GPT-2's MLP parameter count). */
long fdpo_train_opts_intermediate_size(long n_embd);

/* ---- run settings ----
 * A run's options as typed values under their flag names ("lr" = 0.001, "schedule" =
 * "cosine", "shuffle" = true, "eval-file" = null), saved in training_state.json. On --resume
 * a FIXED setting (one the result depends on: lr, seed, divergence, ...) must equal the
 * saved one; the others (save-every, eval-every, log-every, threads, ...) take the saved
 * value unless given again (the CLI does that from fdpo_train_state_read_settings). */
typedef enum { FDPO_SETTING_NULL, FDPO_SETTING_NUM, FDPO_SETTING_BOOL, FDPO_SETTING_STR } fdpo_setting_type;
typedef struct {
    char *key;                 /* flag name without "--" */
    fdpo_setting_type type;
    double num;                /* NUM (integers are exact up to 2^53), BOOL (0/1) */
    char *str;                 /* STR */
    int fixed;
    int path;                  /* STR naming a file or directory: compared by fdpo_settings_same_path */
    int spec;                  /* STR holding a reward spec: compared by fdpo_reward_spec_same */
} fdpo_setting;
typedef struct { size_t n, cap; fdpo_setting *v; } fdpo_settings;
void fdpo_settings_num(fdpo_settings *s, const char *key, double v, int fixed);   /* add or replace */
/* an integer: a number up to 2^53 in magnitude, else its decimal digits as text (exact on resume) */
void fdpo_settings_int(fdpo_settings *s, const char *key, long long v, int fixed);
/* Is text (a saved setting's digits or a legacy "1e+06") the number v? Integer digits are
 * compared exactly, other text as the double it reads as. */
int fdpo_number_text_equal(const char *text, double v);
void fdpo_settings_bool(fdpo_settings *s, const char *key, int v, int fixed);
void fdpo_settings_str(fdpo_settings *s, const char *key, const char *v, int fixed); /* NULL -> null */
/* The same from settings already read (file: named in messages, e.g. online.json): -1 a bad
 * value, 0 none recorded (or an fp32 run), 1 the recorded route taken or warned about.
 * fdpo_train_pin_bf16_route returns the same for OUT's training_state.json. */
int fdpo_train_pin_saved_bf16_route(const fdpo_settings *saved, const char *file);
/* A path flag's value (--model, --ref, --data, --eval-file, --lexicon), as typed, plus
 * KEY.resolved (its realpath, when that differs): on --resume the given path must be the same
 * file (fdpo_settings_same_path) as fdpo_settings_path_to_use's. */
void fdpo_settings_path(fdpo_settings *s, const char *key, const char *v, int fixed);
/* a reward spec (--reward SPEC): a one-file spec (lexicon:FILE, rm:DIR) is compared on resume
 * as the file it names (fdpo_reward_spec_same), as a path is */
void fdpo_settings_reward_spec(fdpo_settings *s, const char *key, const char *v, int fixed);
/* The saved path to restore and compare on --resume: KEY.resolved while it names a file (the
 * file the run used), else the typed path (a moved project). */
const char *fdpo_settings_path_to_use(const fdpo_settings *saved, const char *key, const char *typed);
/* After fdpo_settings_check_resume passed: each path in now that names the saved run's file
 * under another spelling takes the saved typed spelling back, with where it resolves now. A
 * resume fills an omitted path flag with the resolved path; recorded as typed, that lost the
 * typed spelling, and a moved project could no longer resume after one resume. */
void fdpo_settings_keep_typed_paths(fdpo_settings *now, const fdpo_settings *saved);
/* The one rule for "the same path setting" (every trainer's training_state.json and online
 * rounds' online.json): when both exist, the same file after realpath (R, ./R and /abs/R are
 * one run); otherwise the same text. */
int fdpo_settings_same_path(const char *a, const char *b);
const fdpo_setting *fdpo_settings_find(const fdpo_settings *s, const char *key);
/* s without the settings named in keys (a NULL-terminated list). */
void fdpo_settings_remove(fdpo_settings *s, const char *const *keys);
/* The shared train options the preference commands (dpo, kto, rm, sacpo's stages) have no
 * flag for: placeholders ("seq-len": 1), neither saved nor compared. */
#define FDPO_PREF_SETTINGS_WITHOUT_FLAG {"seq-len", "eval-max-seqs", NULL}
void fdpo_settings_free(fdpo_settings *s);
void fdpo_setting_text(const fdpo_setting *x, char *buf, size_t n);    /* "0.001", "true", "(none)" */
/* Error "--KEY: NOW differs from the saved run's THEN (it cannot change on --resume)" for the
 * first fixed setting of now whose value differs from saved. */
int fdpo_settings_check_resume(const fdpo_settings *saved, const fdpo_settings *now);
/* The same, the parenthesis saying how instead (NULL: "it cannot change on --resume"). */
int fdpo_settings_check_resume_how(const fdpo_settings *saved, const fdpo_settings *now, const char *how);
/* The settings of fdpo_train_opts (fixed and kept ones), appended to s. */
void fdpo_train_opts_settings(const fdpo_train_opts *o, fdpo_settings *s);
/* A fresh run that replaces OUT's (--overwrite) removes at its first save the replaced run's
 * entries of OUT (its rounds, stages, run files: fdpo_out_replacing_drops): an input inside one
 * (--model, --tokenizer, --data, and the path settings of `inputs`: --ref, --eval-file, ...; an
 * rm:DIR of its "reward"; a LoRA adapter's base) would be gone, and the run with it unresumable
 * or, a LoRA run, unloadable. Refused, naming the flag, the path and the entry. Called by
 * fdpo_trainer_open with the command's settings, before OUT is claimed (dpo: before its reference
 * cache; pretrain/sft's CLI for each --data file). */
int fdpo_train_out_inputs_check(const fdpo_train_opts *o, const fdpo_settings *inputs);

/* The examples one optimizer step takes: --batch-size x --grad-accum, capped at the data
 * set's n_items. A step takes each example at most once (as a PyTorch/TRL dataloader never
 * repeats one within a batch): with fewer items than batch x accum a step is the whole data
 * set once, and an epoch is one step (filling the step from the next epochs instead trained
 * 1 pair 8 times in one step at --batch-size 8, and weighted 3 pairs 3/8, 3/8, 2/8). */
size_t fdpo_train_step_items(const fdpo_train_opts *o, size_t n_items);
/* The examples of one micro-batch (one forward/backward): --batch-size, capped at the step's. */
size_t fdpo_train_micro_items(const fdpo_train_opts *o, size_t n_items);
/* Total optimizer steps of a run over n_items items: --steps, else
 * ceil(--epochs x n_items / fdpo_train_step_items); SIZE_MAX where that is more than
 * FDPO_MAX_STEPS (which fdpo_trainer_open refuses). */
size_t fdpo_train_total_steps(const fdpo_train_opts *o, size_t n_items);

/* ---- data order ----
 * A permutation of n items per epoch, drawn from the run's RNG at the start of each epoch
 * (identity when shuffle is off). Items are consumed in order across epoch boundaries; a
 * step that straddles one never takes an item twice (when it takes at most n): the items
 * it took from the old epoch go to the end of the new permutation (src/train/data_order.c). */
typedef struct {
    size_t n;         /* items */
    size_t *order;    /* [n], this epoch's permutation */
    size_t epoch;     /* 0-based epoch of the next item */
    size_t pos;       /* index in order of the next item */
    size_t step_start; /* pos when the current step began (fdpo_order_begin_step) */
    int shuffle;
} fdpo_data_order;
void fdpo_order_init(fdpo_data_order *d, size_t n, int shuffle, fdpo_rng *rng); /* draws epoch 0 */
void fdpo_order_begin_step(fdpo_data_order *d);             /* the next items make one step */
size_t fdpo_order_next(fdpo_data_order *d, fdpo_rng *rng);  /* next item (reshuffles at epoch end) */
/* order [n]: the items in taken [k] moved to the end, both groups keeping their order */
void fdpo_order_defer_taken(size_t *order, size_t n, const size_t *taken, size_t k);
double fdpo_order_epoch(const fdpo_data_order *d);          /* fractional epochs consumed */
void fdpo_order_free(fdpo_data_order *d);

/* ---- training state ----
 * Saved beside the model as DIR/training_state.json (step, RNG, data order, fixed settings)
 * and DIR/training_state.safetensors (AdamW moments "exp_avg.<param>" and
 * "exp_avg_sq.<param>" under the Hugging Face parameter names, F32). */
typedef struct {
    size_t step;            /* optimizer steps taken */
    size_t total_steps;
    fdpo_rng rng;           /* data-order RNG, as it stands after the last consumed item */
    fdpo_data_order data;
    uint64_t data_hash;     /* fingerprint of the training items (resume refuses other data) */
    int has_eval_data;      /* the held-out set's size and fingerprint are known (dpo, rm, kto;
                               0 in a state saved by an fdpo before they were saved) */
    size_t eval_n_items;
    uint64_t eval_hash;
    /* fdpo_hash_model of what the run computes against besides its trained weights, read again
     * at every start (resume refuses others): the loaded reference (fdpo_train_opts.ref_hash)
     * and a LoRA run's base (adapters off). has_*: recorded (a state of an older fdpo has none,
     * and resumes unchecked). */
    int has_ref_hash, has_base_hash;
    uint64_t ref_hash, base_hash;
    /* fdpo_train_opts.reward_hash (rl, online --mode step); has_reward_hash 0: none recorded (a
     * state of an older fdpo, or a reward that reads no file), resumed unchecked */
    int has_reward_hash;
    uint64_t reward_hash;
    fdpo_settings settings; /* the run's options, typed (see above) */
    char *kind;             /* "pretrain", "sft", "dpo" */
} fdpo_train_state;
void fdpo_train_state_free(fdpo_train_state *s);
/* Write both state files into dir (atomic each); opt NULL: training_state.json alone. */
int fdpo_train_state_save(const char *dir, const fdpo_train_state *s, const fdpo_adamw *opt,
                          const fdpo_gpt2 *m);
/* The text fdpo_train_state_save(dir, s, NULL, m) writes as training_state.json (one line,
 * no moments), for a writer that saves it elsewhere or later (the online rounds). Free it. */
char *fdpo_train_state_text(const fdpo_train_state *s);
/* Read both state files; opt must already be sized for m (fdpo_adamw_init). */
int fdpo_train_state_load(const char *dir, fdpo_train_state *s, fdpo_adamw *opt, const fdpo_gpt2 *m);
/* --resume of DIR with a command of this kind: refused ("--resume: DIR holds a 'dpo' run, not
 * 'kto'") when DIR's training_state.json is another command's, before any saved setting is
 * applied or any of its files read; 0 too where DIR holds no readable state (the load that
 * follows says what is wrong). */
int fdpo_train_state_check_kind(const char *dir, const char *kind);
/* Read only the settings and the step of DIR/training_state.json (for the CLI to default
 * flags to the saved run's values on --resume). Free with fdpo_settings_free. settings
 * NULL: the step alone (then a state without settings is fine; step must not be NULL).
 * Errors name the file and the field ("DIR/training_state.json: field 'step' ..."). */
int fdpo_train_state_read_settings(const char *dir, fdpo_settings *settings, size_t *step);

/* ---- what `fdpo info` shows of a checkpoint directory (src/train/info.c) ---- */
typedef struct {
    fdpo_gpt2 *model;           /* loaded and validated (fdpo_checkpoint_load_model) */
    fdpo_tokenizer *tok;        /* NULL: no loadable tokenizer in the directory */
    const char *model_type;     /* "gpt2", "llama" or "qwen2" */
    const char *architecture;   /* the Hugging Face class ("GPT2LMHeadModel", "LlamaForSequenceClassification", ...) */
    const char *tokenizer_kind; /* "none", "gpt2-bpe" or "byte" */
    const char *chat_template;  /* the tokenizer's template: its name, "unrecognised", or "none" (no tokenizer) */
    int has_state;              /* DIR/training_state.json exists */
    size_t step;                /* its "step" (0 when !has_state) */
} fdpo_checkpoint_info;
/* Load DIR's model and tokenizer (the tokenizer must fit the model) and read the step of its
 * training state with the trainer's reader (fdpo_train_state_read_settings): a
 * training_state.json that does not parse, or whose "step" is not a non-negative integer,
 * is an error naming the file. On error nothing is left to free. */
int fdpo_checkpoint_info_read(const char *dir, fdpo_checkpoint_info *info);
void fdpo_checkpoint_info_free(fdpo_checkpoint_info *info);

/* ---- checkpoint directories with atomic replacement ----
 * fdpo_checkpoint_save_all writes config.json, model.safetensors, the tokenizer files and,
 * when s != NULL, the training state (the AdamW moments only when opt != NULL), all into the sibling OUT.tmp; then OUT -> OUT.old,
 * OUT.tmp -> OUT, remove OUT.old. A crash leaves OUT complete (old or new) or, between the
 * two renames, OUT.old beside the complete OUT.tmp, and fdpo_checkpoint_recover renames OUT.old
 * back. The save marks its OUT.tmp (.fdpo-save; .fdpo-swap once OUT.old is its), so that only
 * its own leftovers are repaired: a user's OUT.tmp or OUT.old is refused, never removed. Files in OUT that
 * are not part of a checkpoint (metrics.jsonl, anything a user put there) are hard-linked
 * (or copied) into OUT.tmp first so they survive the swap. */
int fdpo_checkpoint_save_all(const char *out, const fdpo_gpt2 *m, const fdpo_tokenizer *tok,
                             const fdpo_train_state *s, const fdpo_adamw *opt);
/* Claim OUT for this process and repair it: take the run lock (fdpo_dir_lock on OUT.lock;
 * a second run on the same OUT is refused naming the holder's pid), then repair what an
 * interrupted save of OUT left (OUT.old renamed back, its OUT.tmp removed, each a warning;
 * also the unmarked pair an earlier fdpo's save left between its renames: docs/training.md,
 * Leftovers), and remove the NAME.tmp.PID files of dead writers. Refused, naming it: an
 * OUT.tmp or OUT.old that no save made (a user's backup, another run's directory, another
 * leftover of an earlier fdpo) or whose lock a running run holds, and an OUT named X.tmp or
 * X.old while a run on X holds X.lock (fdpo_dir_lock). Runs once per process and directory
 * (later calls return 0); the lock is released by fdpo_trainer_close or at process exit. */
int fdpo_checkpoint_recover(const char *out);
/* Remove a directory tree (files and subdirectories; links are removed, never followed). A
 * directory inside it on another file system (a mount point) is not entered: an error names it. */
int fdpo_remove_tree(const char *path);
/* What in OUT shows that a run already wrote there, so that two runs never share an output
 * silently: a trainer's checkpoint (training_state.json, model.safetensors, a LoRA adapter's
 * adapter_config.json), online rounds (round-0/), a sacpo plan (sacpo.json) or a tokenizer's
 * files (vocab.json, tokenizer.json, ...: `fdpo tokenizer train`'s OUT, which a save that writes
 * its own tokenizer does not carry over). Returns a
 * description naming the file ("a checkpoint (training_state.json)", ...) or NULL when OUT
 * holds none of them; a kind listed in `ignore` (FDPO_RUN_* bits: the caller's own kind,
 * which it resumes) is not reported. */
enum { FDPO_RUN_CHECKPOINT = 1, FDPO_RUN_ROUNDS = 2, FDPO_RUN_SACPO = 4, FDPO_RUN_TOKENIZER = 8 };
const char *fdpo_out_holds_run(const char *out, unsigned ignore);
/* The files a run leaves in OUT that describe that run: metrics.jsonl, data_summary.json,
 * eval_summary.json. A fresh run into an OUT without a checkpoint (a run that never saved
 * left them) removes them (rank 0 only under MPI); a run that replaces a checkpoint
 * (--overwrite) and `merge --overwrite` leave them out of their save's swap
 * (fdpo_checkpoint_save_run); `merge` without --overwrite refuses them (fdpo_merge_claim_out). */
int fdpo_out_remove_run_files(const char *out);
/* The first of those run files OUT holds (its name), NULL for none: what a run that never
 * saved left, which fdpo_out_holds_run does not count (a fresh training run removes them). */
const char *fdpo_out_run_file(const char *out);
/* Whether the first save of a run that replaces OUT's (--overwrite) drops path: path, resolved
 * (realpath), is or lies in an entry of OUT that the save leaves behind, the replaced run's
 * files above or its online rounds' or sacpo stages' entries (round-K, round-K.pairs.jsonl,
 * lambda-L, reward, ...). Returns that entry as OUT/NAME (to free), else NULL (also for a
 * path that does not exist). fdpo_train_out_inputs_check refuses such an input at the start. */
char *fdpo_out_replacing_drops(const char *out, const char *path);
/* A file a save writes into the new directory (name, bytes). */
typedef struct { const char *name; const char *data; size_t len; } fdpo_run_file;
/* fdpo_checkpoint_save_all for the first save of a run that replaces another in OUT
 * (--overwrite): the old run's metrics.jsonl and summaries are not carried over, `files`
 * (this run's metrics so far, its data summary) are written in their place, all in the one
 * directory swap: OUT holds the old run whole or the new one whole, never a mix. */
int fdpo_checkpoint_save_run(const char *out, const fdpo_gpt2 *m, const fdpo_tokenizer *tok,
                             const fdpo_train_state *s, const fdpo_adamw *opt, const fdpo_run_file *files,
                             size_t n_files);

/* ---- metrics JSONL: DIR/metrics.jsonl, one object per logged step ---- */
typedef struct {
    char *path;
    FILE *f;                       /* open from the first line on */
    char *line; size_t len, cap;   /* the object being built */
    size_t keep_upto_step;
    int pending;                   /* keep_upto_step not applied yet */
    int held;                      /* lines kept in memory (text, text_len), not written to
                                      DIR, until the save that replaces the old run (--overwrite) */
    char *text; size_t text_len, text_cap;
} fdpo_metrics;
/* Open for appending. keep_upto_step: on resume, drop lines whose "step" is larger (steps
 * logged after the checkpoint we resume from); SIZE_MAX keeps all; 0 truncates. The file is
 * neither created nor changed before the first fdpo_metrics_end: a run that fails at its start
 * leaves none (nor an emptied one). */
int fdpo_metrics_open(fdpo_metrics *mw, const char *dir, size_t keep_upto_step);
void fdpo_metrics_begin(fdpo_metrics *mw, size_t step);
void fdpo_metrics_add(fdpo_metrics *mw, const char *key, double value); /* non-finite -> null */
int fdpo_metrics_end(fdpo_metrics *mw);   /* writes the line and flushes */
/* Applies keep_upto_step now if no line did yet (and closes the file): a checkpoint saved
 * before the run's first line carries metrics.jsonl along, which must then hold this run's
 * lines only (an --overwrite run's would otherwise carry the old run's). */
int fdpo_metrics_settle(fdpo_metrics *mw);
void fdpo_metrics_close(fdpo_metrics *mw);

/* ---- the run ---- */
typedef struct {
    fdpo_train_opts opts;
    fdpo_gpt2 *model;
    const fdpo_tokenizer *tok;  /* borrowed */
    fdpo_adamw opt;
    fdpo_schedule sched;
    fdpo_train_state state;
    fdpo_metrics metrics;
    fdpo_progress progress;
    size_t step_items;          /* examples per step (fdpo_train_step_items): take this many
                                   fdpo_trainer_next_item per step */
    size_t micro_items;         /* examples per micro-batch (fdpo_train_micro_items) */
    /* last step, for logging */
    double last_lr, last_grad_norm, last_tokens_per_sec;
    double t_step_start;
    /* under MPI: seconds inside collectives (gradient allreduce, loss sums, waiting for the
     * slowest rank) during the last step, and that step's wall time */
    double comm_at_step_start, last_comm_seconds, last_step_seconds;
    int stopped;                /* stop_at reached or interrupted */
    int interrupted;            /* stopped by fdpo_trainer_request_stop */
    size_t start_step;          /* step this process started from (resume) */
    size_t saved_step;          /* step of the last save (SIZE_MAX: none) */
    struct fdpo_dist_overlap *overlap; /* --allreduce-overlap under MPI, else NULL */
    int overlap_failed;                /* a launch failed during backward (message set) */
    /* --overwrite of a checkpoint: OUT keeps the old run whole until this run's first save,
     * which replaces it whole; until then this run's metrics lines and data summary wait
     * here (a run killed before it left the old model beside the new run's metrics) */
    int replacing;
    char *held_name, *held_text; size_t held_len;   /* fdpo_trainer_write_run_json's file */
    const char *route_pinned_before;   /* the bf16 route pin at open, restored at close
                                          (fdpo_bf16_route_restore): a resume's pin is its own */
    unsigned stops_seen;               /* stop requests that stopped earlier trainers (at open) */
} fdpo_trainer;

/* Load the tokenizer a run uses: OUT's on --resume, else --tokenizer DIR, else --init's
 * directory, else byte-level. On --resume it claims OUT (fdpo_checkpoint_recover: a half-done
 * save is settled first) and keeps it on success: a trainer that is then refused before
 * fdpo_trainer_open frees it (fdpo_dir_unlock), as dpo, kto, rm, rl and online do. */
fdpo_tokenizer *fdpo_trainer_load_tokenizer(const fdpo_train_opts *o);
/* --chat-template name (NULL: leave t's) on t, checked: -1 naming the flag when a named
 * template cannot render ("auto" without a recognised template leaves plain text). */
int fdpo_trainer_set_chat_template(fdpo_tokenizer *t, const char *name);
/* The one check that a language-model trainer's policy or reference (pretrain, sft, dpo, kto,
 * rl, online, sacpo; not rm, which also continues a reward model) is a language model: a
 * reward model (num_labels > 0, <Family>ForSequenceClassification) is refused, naming the
 * flag and directory it came from:
 *   "--model DIR: a reward model (GPT2ForSequenceClassification), not a language model to align"
 *   "--ref DIR: a reward model (...), not a language model to serve as the reference"
 * 0 when c is a language model. fdpo_trainer_open applies it to the policy of every kind but
 * "rm"; fdpo_trainer_load_ref to a reference. */
int fdpo_trainer_check_lm(const fdpo_gpt2_config *c, const char *flag, const char *dir);
/* The reference of dpo, kto, rl and online: --ref, else --model (whose flag the errors then
 * name), loaded as a language model (fdpo_trainer_check_lm). A --ref whose directory holds
 * tokenizer files must hold the run's tokenizer tok (fdpo_tokenizer_same): its log-probs are of
 * the policy's token ids, so another tokenizer of the same size scored unrelated tokens. With
 * policy_vocab > 0 its vocab_size must be that. Under MPI every rank must have loaded the same
 * weights (fdpo_dist_check_agree: a rank's stale copy at the same path is refused).
 * fold_lora: a LoRA checkpoint's adapters are folded into its weights (fdpo_lora_merge), as
 * fdpo_trainer_open folds a policy it trains in full (lora_r 0): then a reference that is
 * the policy's own checkpoint computes the same bits, and step 1's log pi - log pi_ref is
 * exactly 0 (with adapters that train, lora_r > 0, pass 0: the unmerged reference matches
 * the policy's unmerged forward). weights_hash (may be NULL): fdpo_hash_model of the
 * reference as loaded (folded or not), for fdpo_train_opts.ref_hash. NULL with the error. */
fdpo_gpt2 *fdpo_trainer_load_ref(const char *ref, const char *model, const fdpo_tokenizer *tok, size_t policy_vocab,
                                 int fold_lora, uint64_t *weights_hash);
/* The trainer options of a run whose items are prompts (rl, online --mode step): base's, with
 * the policy model (or OUT's checkpoint on --resume), no --tokenizer, the prompt file as data
 * in file order (no shuffle), per_step prompts per step (step_flag names them in notes) and no
 * accumulation. */
fdpo_train_opts fdpo_train_opts_over_prompts(const fdpo_train_opts *base, const char *model, const char *prompts,
                                             long per_step, const char *step_flag);
/* What a run over prompts (rl, online --mode step) opens before fdpo_trainer_open: the
 * prompts of PROMPTS (--data; none is an error), the reward of REWARD (--reward, refused
 * where MPI ranks disagree), t's tokenizer (fdpo_trainer_load_tokenizer) and the reference:
 * --ref REF, else --model MODEL (fdpo_trainer_load_ref), or none (ref NULL, ref_is_base 1)
 * when t trains LoRA adapters on a MODEL that is no LoRA checkpoint without --ref or with a
 * REF naming MODEL (fdpo_settings_same_path): then the reference is the policy with its
 * adapters off (one model in memory, as online's rounds take it). The reference and the reward are recorded on
 * t (ref_flag, ref_dir, ref_hash; reward_spec, reward_lexicon, reward_hash) so that --resume
 * refuses other files. 0 when all opened; -1 with the error of the first that failed (the
 * rest is not tried). Either way fdpo_prompt_run_close(pr, t, trainer_opened) frees what
 * opened, and OUT's lock when the trainer was never opened (a refused resume: the tokenizer's
 * load took it). */
typedef struct {
    char **prompts;
    size_t n_prompts, *prompt_lines;
    fdpo_reward *reward;
    fdpo_tokenizer *tok;
    fdpo_gpt2 *ref;
    int ref_is_base;
} fdpo_prompt_run;
int fdpo_prompt_run_open(fdpo_prompt_run *pr, fdpo_train_opts *t, const char *prompts, const char *reward,
                         const fdpo_reward_options *reward_opts, const char *ref, const char *model);
void fdpo_prompt_run_close(fdpo_prompt_run *pr, const fdpo_train_opts *t, int trainer_opened);
/* Set threads, recover/prepare OUT, build the model (resume: OUT; init: CKPT; else random
 * with the shape options and the tokenizer's vocab), the optimizer, the state (resume:
 * loaded and checked against data_hash, n_items and the fixed settings), open metrics and
 * the progress line. kind: "pretrain", "sft", "dpo", "kto", "rm", "rl", "online-step"; every
 * kind but "rm" refuses a reward model as the starting policy (fdpo_trainer_check_lm). */
int fdpo_trainer_open(fdpo_trainer *tr, const fdpo_train_opts *o, const char *kind,
                      const fdpo_tokenizer *tok, size_t n_items, uint64_t data_hash,
                      const fdpo_settings *extra);   /* the command's own settings, or NULL */
int fdpo_trainer_done(const fdpo_trainer *tr);            /* all steps taken or stopped */
size_t fdpo_trainer_next_item(fdpo_trainer *tr);          /* next training item index */
/* Call before the first micro-batch of a step: zero grads, start the step clock. */
void fdpo_trainer_begin_step(fdpo_trainer *tr);
/* After the micro-batches' backward passes: clip (tr->last_grad_norm = norm before
 * clipping), lr of this step (tr->last_lr), AdamW, step++. n_tokens: the tokens THIS RANK
 * processed this step (its own micro-batches, not a count already summed over the ranks):
 * like the gradients, the trainer sums them over the ranks, and tokens_per_sec is the job's
 * (the step's tokens, each counted once, per second). */
int fdpo_trainer_step(fdpo_trainer *tr, size_t n_tokens);
/* Progress line for the step just taken (extra appended, may be NULL; quiet: nothing). */
void fdpo_trainer_progress(fdpo_trainer *tr, double loss, const char *extra);
int fdpo_trainer_want_log(const fdpo_trainer *tr);        /* log_every divides step, or last step */
int fdpo_trainer_want_eval(const fdpo_trainer *tr);       /* eval_every divides step, or last step */
/* Standard metrics of the step just taken: step, epoch, loss, learning_rate, grad_norm,
 * tokens_per_sec, and with more than one rank dist/allreduce_seconds and dist/comm_fraction
 * (share of the step's wall time spent in collectives), with --allreduce-overlap also
 * dist/overlapped_layers; the caller adds its own keys then calls fdpo_metrics_end. */
void fdpo_trainer_metrics_begin(fdpo_trainer *tr, double loss);
/* Ask every running trainer to save and stop after its current step (async-signal-safe:
 * only counts the request; the CLI calls it from its SIGINT/SIGTERM thread). fdpo_trainer_maybe_save
 * then saves, marks the run stopped and interrupted, and the trainer returns an error
 * "interrupted after step N (checkpoint saved; continue with --resume)". A request made while
 * no trainer runs is for the next one to open; once a trainer has stopped for a request, the
 * trainers opened after that train to their end (a program that cancelled one run can train
 * again in the same process). */
void fdpo_trainer_request_stop(void);
/* Was a stop requested of tr? Under MPI a collective (every rank calls it at the same point of its
 * step): true on every rank when any rank's request is pending, so all stop at the same step. */
int fdpo_trainer_stop_requested(const fdpo_trainer *tr);
/* Between trainers (online's rounds, sacpo's stages): 1 when a stop request is pending that
 * no trainer has stopped for (one that came as the last step ended), and it is then answered:
 * the caller stops, and trainers opened later train on. Collective under MPI, as above. */
int fdpo_trainer_take_stop(void);
/* Save when save_every divides the step or stop_at is reached (then marks stopped), or a
 * stop was requested (then marks stopped and interrupted). */
int fdpo_trainer_maybe_save(fdpo_trainer *tr);
int fdpo_trainer_save(fdpo_trainer *tr);
/* OUT/NAME = root (pretty JSON), a file that describes the run (dpo's data_summary.json):
 * written now, or while the run is replacing another (--overwrite, before its first save)
 * with that save. Rank 0 writes. */
int fdpo_trainer_write_run_json(fdpo_trainer *tr, const char *name, const struct cJSON *root);
/* The final checkpoint, now, unless the last save was of this step: a file that describes the
 * final model (eval_summary.json) is written after it, so a save that fails or
 * is killed never leaves a summary of a model that is not on disk. */
int fdpo_trainer_save_final(fdpo_trainer *tr);
/* Before the final held-out evaluation, which can take long: the final checkpoint
 * (fdpo_trainer_save_final), so that a signal during the evaluation (a second Ctrl-C, a batch
 * scheduler's SIGKILL after its SIGTERM) leaves it (it left the last periodic save, or none);
 * and a stop requested at the last step ends the run here, marked stopped and interrupted,
 * with the error "interrupted after step N of N, before the final evaluation (...)" (it was
 * ignored until the evaluation ended). */
int fdpo_trainer_before_final_eval(fdpo_trainer *tr);
/* OUT/eval_summary.json = root, the final model's held-out metrics ({"step", the held-out
 * count, the metrics}), after the final checkpoint (fdpo_trainer_save_final). Every trainer
 * with a held-out set writes it at the end of a run that was not stopped, --eval-every 0
 * included. Rank 0 writes. */
int fdpo_trainer_write_eval_summary(fdpo_trainer *tr, const struct cJSON *root);
/* Final save (if save_final and not just saved) and free everything but the tokenizer. */
int fdpo_trainer_close(fdpo_trainer *tr, int save_final);

/* ---- pretraining / SFT ----
 * The weighted next-token loop over fdpo_lm_data: each step takes batch_size * grad_accum
 * sequences; loss = sum_t w_t * (-log p(target_t)) / W, W = sum of w_t over the WHOLE step,
 * so that accumulated micro-batches give the loss and gradient of one big batch. val (may
 * be empty) is evaluated every eval_every steps and at the end. o must have passed
 * fdpo_train_opts_check (the data loaders need its sizes first, so the caller checks once,
 * before loading). */
int fdpo_lm_train(const fdpo_train_opts *o, const char *kind, const fdpo_tokenizer *tok,
                  const fdpo_lm_data *train, const fdpo_lm_data *val);
/* Weighted mean next-token loss of m over the first max_seqs sequences of d (0 = all),
 * batch_size sequences at a time. */
int fdpo_lm_eval(fdpo_gpt2 *m, const fdpo_lm_data *d, size_t batch_size, size_t max_seqs, double *loss);

#ifdef __cplusplus
}
#endif

#endif
