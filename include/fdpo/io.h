/* Files the ecosystem uses: safetensors, config.json, Hugging Face checkpoint directories. */
#ifndef FDPO_IO_H
#define FDPO_IO_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/gpt2.h"
#include "fdpo/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- safetensors ---- */
typedef enum { FDPO_F32, FDPO_F16, FDPO_BF16, FDPO_I32, FDPO_I64, FDPO_U8, FDPO_F64, FDPO_DTYPE_OTHER } fdpo_dtype;
typedef struct {
    char *name;
    fdpo_dtype dtype;
    char dtype_name[8];
    int ndim;
    size_t shape[8];
    size_t begin, end;       /* byte offsets into data */
} fdpo_st_tensor;
typedef struct {
    char *path;
    size_t n_tensors;
    fdpo_st_tensor *tensors;
    char **meta_keys, **meta_values; size_t n_meta; /* "__metadata__" (string -> string) */
    unsigned char *data;     /* the data section */
    size_t data_len;
    void *map; size_t map_len;
} fdpo_safetensors;
/* Open and validate (header length, JSON, offsets within the file, shapes x dtype = bytes). */
int fdpo_st_open(fdpo_safetensors *st, const char *path);
/* The same over bytes in memory (name is used in messages); bytes must outlive st. */
int fdpo_st_open_buffer(fdpo_safetensors *st, const char *name, const void *bytes, size_t len);
void fdpo_st_close(fdpo_safetensors *st);
const fdpo_st_tensor *fdpo_st_find(const fdpo_safetensors *st, const char *name);
const char *fdpo_st_meta(const fdpo_safetensors *st, const char *key);
/* Read tensor as float32 (f32, f16, bf16 converted exactly; f64 rounded to nearest, a finite
 * value beyond float's range refused naming the element). Checks numel == n. */
int fdpo_st_read_f32(const fdpo_safetensors *st, const fdpo_st_tensor *t, float *out, size_t n);
/* The same as double: every float dtype exactly (an F64 tensor's own values). */
int fdpo_st_read_f64(const fdpo_safetensors *st, const fdpo_st_tensor *t, double *out, size_t n);

/* Writer: add tensors (data copied by reference until write), then write atomically. */
typedef struct fdpo_st_writer fdpo_st_writer;
fdpo_st_writer *fdpo_st_writer_new(void);
void fdpo_st_writer_add(fdpo_st_writer *w, const char *name, fdpo_dtype dtype,
                        const size_t *shape, int ndim, const void *data);
void fdpo_st_writer_meta(fdpo_st_writer *w, const char *key, const char *value);
/* atomic; refuses (writing nothing) what fdpo_st_open would: a name added twice, a tensor
 * named __metadata__, ndim outside [0, 8] */
int fdpo_st_writer_write(fdpo_st_writer *w, const char *path);
/* Add every GPT-2 tensor of a params-shaped buffer (m->params_memory, m->grads_memory, an
 * optimizer moment, ...) under its Hugging Face name ("transformer.h.3.attn.c_attn.weight"),
 * each with prefix prepended (NULL = none), as F32 [in, out] tensors. */
void fdpo_st_writer_add_gpt2(fdpo_st_writer *w, const fdpo_gpt2 *m, const float *memory, const char *prefix);
/* Read a params-shaped buffer written that way (exact names, F32/F16/BF16, shapes checked);
 * a non-finite value, or a tensor under prefix (every tensor, prefix NULL) that the model
 * does not read, is refused naming the tensor. */
int fdpo_st_read_gpt2(const fdpo_safetensors *st, const fdpo_gpt2 *m, float *memory, const char *prefix);
/* Element k of m's params_memory as the checkpoint's model.safetensors holds it, for messages:
 * "transformer.h.1.mlp.c_fc.weight[3,5]" (the tensor's name as fdpo_checkpoint_save_model
 * writes it, then the row and column, or the index of a 1-D tensor; a GPT-2 reward model's
 * head is "score.weight[0,c]"). params_memory's order is fdpo's own, not the file's. */
void fdpo_gpt2_param_name(const fdpo_gpt2 *m, size_t k, char *buf, size_t size);
void fdpo_st_writer_free(fdpo_st_writer *w);

/* ---- checkpoints (Hugging Face layout) ----
 * DIR/config.json, DIR/model.safetensors, tokenizer files (text/), and optionally
 * DIR/training_state.safetensors + DIR/training_state.json (train/). */
int fdpo_config_load(const char *config_json_path, fdpo_gpt2_config *c);
/* The same from text in memory (path is used in messages). */
int fdpo_config_parse(const char *path, const char *text, size_t len, fdpo_gpt2_config *c);
int fdpo_config_save(const char *config_json_path, const fdpo_gpt2_config *c);
/* c->special_token_ids of a model created for a tokenizer: bos_token_id its bos (its end
 * token where it has none, as GPT-2's), eos_token_id its end token */
void fdpo_config_set_special_ids(fdpo_gpt2_config *c, int32_t bos, int32_t eos);
/* Load config.json + model.safetensors: accepts "transformer."-prefixed or bare names,
 * skips attn.bias / attn.masked_bias buffers and lm_head.weight (tied; must equal wte if
 * present), converts f16/bf16 exactly and f64 rounded to nearest, and refuses NaN/Inf weights
 * naming the tensor and count (an f64 beyond float's range naming the element). */
fdpo_gpt2 *fdpo_checkpoint_load_model(const char *dir);
/* The same, and where DIR's files hold an F64 tensor, *exact = every parameter in double as
 * the files hold it (fdpo merge sums those, not their float roundings; free()); else NULL. */
fdpo_gpt2 *fdpo_checkpoint_load_model_exact(const char *dir, double **exact);
/* The tokenizer of the model in DIR: DIR's own files; for a LoRA adapter without any (what
 * PEFT's save_pretrained writes) its base's, base_model_name_or_path, whose model it adapts. */
fdpo_tokenizer *fdpo_checkpoint_load_tokenizer(const char *dir);
/* Whether DIR has tokenizer files fdpo_checkpoint_load_tokenizer would read (DIR's own, or an
 * adapter's base's): 0 where the caller's own tokenizer rules apply, not a read failure */
int fdpo_checkpoint_has_tokenizer(const char *dir);
/* A checkpoint's tokenizer must fit its embedding: tokenizer vocab <= config vocab_size
 * (GPT-2 pads vocab_size up; a larger tokenizer means a mismatched pair). dir names the
 * checkpoint in the message. */
int fdpo_checkpoint_check_tokenizer(const char *dir, const fdpo_gpt2_config *c, const fdpo_tokenizer *t);
/* Write config.json + model.safetensors, each atomically. */
int fdpo_checkpoint_save_model(const char *dir, const fdpo_gpt2 *m);
/* 0, or an error naming dir and how many of m's weights are NaN or Inf: every save refuses
 * such a model (its loaders do too), before anything is written. */
int fdpo_weights_finite(const char *dir, const fdpo_gpt2 *m);
/* What a file of a checkpoint directory is, by its name: FDPO_CKPT_FILE_MODEL for the files
 * a save writes afresh (config.json, generation_config.json, the weights: model.safetensors,
 * a sharded index and its model-*.safetensors, a LoRA adapter's two files, the training
 * state's two), FDPO_CKPT_FILE_TOKENIZER for the files a tokenizer is read from (every
 * format's, tokenizer_config.json and chat_template.jinja included), 0 for anything else
 * (metrics.jsonl, notes). */
enum { FDPO_CKPT_FILE_MODEL = 1, FDPO_CKPT_FILE_TOKENIZER = 2 };
int fdpo_checkpoint_file_kind(const char *name);

#ifdef __cplusplus
}
#endif

#endif
