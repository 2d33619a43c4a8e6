/* GPT-2 (Hugging Face GPT2LMHeadModel, "gelu_new", pre-LN, tied LM head) on CPU.
 *
 * Batches are PACKED, not padded: B sequences of lengths T_b are laid end to end in one
 * stream of N = sum T_b tokens. Matmuls run over all N tokens at once; attention runs per
 * sequence. No FLOPs go to padding.
 *
 * Each token may carry a position id and a "branch" tag. Token i attends to token j of the
 * same sequence iff j <= i and (branch[j] == 0 || branch[j] == branch[i]). With all branches
 * 0 this is ordinary causal attention. The shared-prompt DPO layout [prompt | chosen |
 * rejected] uses branch 0 for the prompt, 1 for chosen, 2 for rejected, and positions that
 * restart at len(prompt) for the rejected part, so the prompt is computed once. */
#ifndef FDPO_GPT2_H
#define FDPO_GPT2_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The model families behind this one interface (docs/model.md#families). A zeroed config
 * is GPT-2; Llama-family fields are ignored for GPT-2. */
typedef enum { FDPO_ARCH_GPT2 = 0, FDPO_ARCH_LLAMA = 1 } fdpo_arch;

typedef struct {
    size_t vocab_size;   /* V */
    size_t n_positions;  /* maxT */
    size_t n_embd;       /* C */
    size_t n_layer;      /* L */
    size_t n_head;       /* NH, C % NH == 0 */
    float layer_norm_epsilon; /* 1e-5; the RMSNorm epsilon (rms_norm_eps) for Llama */
    fdpo_arch arch;           /* after the GPT-2 fields, so {V, T, C, L, NH, eps} still reads as GPT-2 */
    /* ---- Llama family (LlamaForCausalLM, Qwen2ForCausalLM): n_embd = hidden_size,
     * n_layer = num_hidden_layers, n_head = num_attention_heads,
     * n_positions = max_position_embeddings ---- */
    size_t n_kv_head;          /* num_key_value_heads (GQA); divides n_head */
    size_t intermediate_size;  /* SwiGLU width F */
    size_t head_dim;           /* hd; 0 = n_embd / n_head */
    double rope_theta;
    int tie_word_embeddings;   /* LM head = embed_tokens */
    int qkv_bias, o_bias, mlp_bias; /* attention_bias (q,k,v,o) / Qwen2 (q,k,v) / mlp_bias */
    /* rope_scaling {"rope_type": "llama3"}: factor 0 = none */
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    size_t rope_original_max_position;
    char model_type[16];       /* "llama" or "qwen2", written back to config.json */
    /* 0: GPT2LMHeadModel. 1: GPT2ForSequenceClassification (a reward model): the scalar
     * head score.weight [1, C] is kept as one extra row of wte (row vocab_size), so that
     * AdamW, clipping and the training state handle it with no special case; the LM head
     * still uses rows [0, vocab_size) only. src/model/gpt2_score.c, docs/rm.md. */
    size_t num_labels;
    int32_t pad_token_id;     /* num_labels > 0: written to config.json (GPT-2 has none: eot) */
    /* config.json's bos_token_id, eos_token_id (an id or a list, as Llama 3's) and, for a
     * language model, pad_token_id: their compact JSON object as read ("" = none), written
     * back unchanged. transformers' generate() takes its end token from these when a
     * checkpoint has no generation_config.json; its defaults (GPT-2 50256, Llama 2) would
     * be other tokens. A model fdpo creates gets its tokenizer's bos and end token
     * (fdpo_config_set_special_ids). Room for ~500 seven-digit ids; a config.json whose
     * ids need more is refused naming them, never saved without them. */
    char special_token_ids[4096];
} fdpo_gpt2_config;

/* Parameter tensors, carved from one allocation in this order. Linear weights are stored
 * in Hugging Face Conv1D layout [in, out], so y = x @ W + b, and files map 1:1. */
typedef struct {
    float *wte;      /* [V, C]  token embedding, also the LM head (tied) */
    float *wpe;      /* [maxT, C] */
    float *ln1w;     /* [L, C] */
    float *ln1b;     /* [L, C] */
    float *qkvw;     /* [L, C, 3C]  attn.c_attn.weight */
    float *qkvb;     /* [L, 3C] */
    float *attprojw; /* [L, C, C]   attn.c_proj.weight */
    float *attprojb; /* [L, C] */
    float *ln2w;     /* [L, C] */
    float *ln2b;     /* [L, C] */
    float *fcw;      /* [L, C, 4C]  mlp.c_fc.weight */
    float *fcb;      /* [L, 4C] */
    float *fcprojw;  /* [L, 4C, C]  mlp.c_proj.weight */
    float *fcprojb;  /* [L, C] */
    float *lnfw;     /* [C] */
    float *lnfb;     /* [C] */
} fdpo_gpt2_params;
#define FDPO_GPT2_NUM_TENSORS 16
#define FDPO_MODEL_MAX_TENSORS 24   /* the largest family's table (Llama with every bias) */

/* One parameter tensor as the checkpoint code and the optimizer see it. */
typedef struct {
    const char *name;   /* Hugging Face name with "{i}" for per-layer tensors, e.g. "transformer.h.{i}.attn.c_attn.weight" */
    size_t offset;      /* into params_memory */
    size_t numel;       /* all layers together */
    int per_layer;      /* 1 if the tensor is [L, ...] (one HF tensor per layer) */
    size_t shape[3];    /* shape of ONE HF tensor (per layer where per_layer) */
    int ndim;
    int decay;          /* 1 for 2-D weights (AdamW weight decay applies), 0 for biases/LN */
} fdpo_gpt2_tensor;

typedef struct fdpo_gpt2_acts fdpo_gpt2_acts; /* activations, private to src/model */

/* Matmul precision (--precision). bf16: every linear layer and the LM head multiply
 * bf16-rounded inputs (activations and a bf16 copy of the weights, refreshed at each
 * forward) with fp32 accumulation into fp32 outputs; master weights, gradients, optimizer
 * state, attention, LayerNorm, softmax, losses and log-prob sums stay fp32. */
typedef enum { FDPO_PRECISION_FP32 = 0, FDPO_PRECISION_BF16 = 1 } fdpo_precision;
int fdpo_precision_parse(const char *name, fdpo_precision *out); /* "fp32" | "bf16"; error names --precision */
const char *fdpo_precision_name(fdpo_precision p);
/* Process-wide default for models created afterwards (like fdpo_set_threads). */
int fdpo_set_precision(const char *name);
fdpo_precision fdpo_get_precision(void);
/* 1 when bf16 matmuls run on AVX512-BF16 (oneDNN); 0 = the correct but slower fp32
 * fallback (no AVX512-BF16, or FDPO_FORCE_BF16_FALLBACK=1), announced once via fdpo_log. */
int fdpo_bf16_native(void);
/* The route of this process's bf16 products: "dpbf16" (vdpbf16ps), "fp32" (the large GEMMs
 * and the decoder multiply the bf16 values widened to fp32, where vdpbf16ps is the slower
 * instruction), "fallback" (no AVX512-BF16: everything widened). The choice between the first
 * two is a timing probe, so a run records its route (training_state.json, "bf16-route") and
 * its resume pins it with fdpo_bf16_route_pin: the two routes sum in different orders.
 * The pin returns 0, 1 when this CPU cannot take that route (no AVX512-BF16: the resumed
 * steps differ in the last bits from an uninterrupted run), -1 for an unknown name.
 * FDPO_BF16_GEMM and FDPO_DECODE_BF16 (test and A/B switches) still override it. */
const char *fdpo_bf16_route(void);
int fdpo_bf16_route_pin(const char *route);
/* The pin is the resumed run's, not the process's: a run records fdpo_bf16_route_pinned()
 * ("dpbf16", "fp32", "fallback", or NULL when none is pinned and the probe decides) before
 * it pins, and gives it to fdpo_bf16_route_restore when it ends, so that a fresh run started
 * later in the same process takes its own route, as it would in a fresh process. */
const char *fdpo_bf16_route_pinned(void);
void fdpo_bf16_route_restore(const char *pinned);

typedef struct {
    fdpo_gpt2_config config;
    fdpo_gpt2_tensor tensors[FDPO_MODEL_MAX_TENSORS];
    size_t n_tensors;                                /* entries of tensors[] in use */
    size_t n_params;
    fdpo_gpt2_params params; float *params_memory;
    fdpo_gpt2_params grads;  float *grads_memory;   /* allocated on first backward */
    fdpo_gpt2_acts *acts;                            /* sized for the largest batch seen */
    struct fdpo_llama_state *llama;                  /* Llama family: tensor roles, activations */
    fdpo_precision precision;                        /* from fdpo_get_precision() at create */
    uint16_t *params_bf16;                           /* bf16 copy of params (bf16 only) */
    float *params_bf16f;  /* the same bf16 values in fp32: the weights of bf16 GEMMs that run as fp32 GEMMs */
    unsigned params_bf16_current; /* bit 1: params_bf16, bit 2: params_bf16f made since the last
                                     refresh; bit 4: this forward reads params_bf16f (src/model/gpt2.c) */
    int params_frozen;   /* set by an owner that writes params no more (online's fixed reference):
                            the bf16 copies are made at their first use, not at every forward */
    /* When set, called by the GPT-2 and Llama backwards as soon as layer l's parameter
     * gradients are complete for this backward (l = L-1 down to 0): the data-parallel
     * trainer starts summing them over the ranks while the layers below are computed
     * (src/train/trainer.c). */
    void (*on_layer_grads)(void *ctx, size_t layer);
    void *on_layer_grads_ctx;
    struct fdpo_lora *lora;                          /* LoRA adapters (fdpo/lora.h), NULL = none */
    char *generation_config;  /* the checkpoint's generation_config.json as read, written again by
                                 every save (src/io/checkpoint.c); NULL = none */
} fdpo_gpt2;

/* A packed batch (see top). Arrays of length N unless noted. The caller owns them. */
typedef struct {
    size_t n_seq;              /* B */
    size_t n_tokens;           /* N */
    const size_t *seq_offset;  /* [B+1], seq b is tokens [seq_offset[b], seq_offset[b+1]) */
    const int32_t *tokens;     /* input ids */
    const int32_t *targets;    /* next-token target per position, -1 = no target */
    const float *weights;      /* per-token weight for seq_logp (and losses); NULL = 1 where target >= 0 */
    const int32_t *pos;        /* position ids; NULL = 0..T_b-1 within each sequence */
    const uint8_t *branch;     /* branch tags; NULL = plain causal attention */
    /* 1: run the LM head (logits, log-softmax) only for tokens with a target and a non-zero
     * weight, the ones whose log-prob a loss uses (DPO/SFT completions). Other tokens get
     * token_logp 0 and logits rows of 0, and must get d_token_logp 0 in backward (an error
     * otherwise). 0 (default): every token with a target. */
    int skip_unweighted;
    /* 1: the LM head, log-softmax and target gather run fused over vocabulary chunks, never
     * holding the [N, V] logits (memory O(rows x chunk), the backward recomputes each
     * chunk's logits). Only tokens with a target (and, with skip_unweighted, a non-zero
     * weight) get a log-prob. fdpo_gpt2_logits() is then NULL; fdpo_gpt2_logit_sums() still
     * works. For the training losses (DPO/SFT/RL) that use target log-probs only. The
     * last block after its attention then also runs on the head's rows only (see
     * fdpo_gpt2_hidden). */
    int fused_head;
    /* With fused_head, GPT-2 family, in a model being trained (gradients or LoRA): the head
     * keeps the [K, V] logits of its K rows for the backward (no recompute there: one
     * K x V x C GEMM less) when they take at most this many bytes; 0 = the general budget,
     * FDPO_LMHEAD_KEEP_MAX_BYTES (128 MiB; the environment variable of that name overrides
     * it). A caller whose step is worth more memory passes its own (fdpo_rl_step). Llama's
     * fused backward always recomputes. */
    size_t head_keep_max_bytes;
} fdpo_batch;
/* The head_keep_max_bytes of training steps with no peak-memory goal (pretrain, SFT, and
 * RL's default, FDPO_RL_LOGITS_MAX_BYTES): a 124M step of B4 x T256 keeps its 1024 rows'
 * logits (206 MB) and skips a 79 GFLOP recompute, ~8 % of the step (bf16,
 * bench/bench_train_step.py). Larger batches recompute: memory stays O(rows x chunk). */
#define FDPO_LM_LOGITS_KEEP_MAX_BYTES ((size_t)256 << 20)

int  fdpo_gpt2_config_check(const fdpo_gpt2_config *c); /* error names the bad key */
/* The number of parameters a model of c's family and shapes holds (what fdpo_gpt2_create
 * allocates), in double so that an unchecked config cannot overflow it. */
double fdpo_gpt2_config_n_params(const fdpo_gpt2_config *c);
/* The Hugging Face class of c's family (config.json "architectures"): with reward, the
 * reward model's (GPT2ForSequenceClassification, LlamaForSequenceClassification,
 * Qwen2ForSequenceClassification), else the LM's (GPT2LMHeadModel, LlamaForCausalLM,
 * Qwen2ForCausalLM). */
const char *fdpo_gpt2_architecture(const fdpo_gpt2_config *c, int reward);
/* Allocate a model with this config. Parameters are zero until init or load. */
/* The model code's numeric environment knobs, FDPO_LMHEAD_CHUNK and
 * FDPO_LMHEAD_KEEP_MAX_BYTES (fdpo_env_long): -1 after an error naming a bad one. Checked by
 * fdpo_gpt2_create and fdpo_checkpoint_load_model, so a bad value fails the run at its start. */
int fdpo_model_env_check(void);
fdpo_gpt2 *fdpo_gpt2_create(const fdpo_gpt2_config *c);
void fdpo_gpt2_free(fdpo_gpt2 *m);
/* GPT-2 init: N(0, 0.02) weights, residual projections (attn.c_proj, mlp.c_proj) scaled by
 * 1/sqrt(2 L), zero biases, LayerNorm weight 1 / bias 0. Deterministic for a seed. */
void fdpo_gpt2_init(fdpo_gpt2 *m, uint64_t seed);
int  fdpo_gpt2_check_batch(const fdpo_gpt2 *m, const fdpo_batch *b); /* ids < V, pos < maxT, ... */

/* Forward over a packed batch.
 *   token_logp[N]  (out, may be NULL): log softmax(logits_t)[targets[t]]; 0 where targets[t] < 0
 *   seq_logp[B]    (out, may be NULL): sum_t weight_t * token_logp[t] over sequence b
 * Keeps activations and logits for a following fdpo_gpt2_backward(). */
int fdpo_gpt2_forward(fdpo_gpt2 *m, const fdpo_batch *b, float *token_logp, float *seq_logp);
/* Logits [N, V] of the last forward (valid until the next forward or backward); NULL after
 * a fused_head forward, which never materialises them. */
const float *fdpo_gpt2_logits(const fdpo_gpt2 *m);
/* out [N] = sum over the vocabulary of each token's logits in the last forward (0 for rows
 * the head skipped); works with and without fused_head (TRL's logits/chosen metric). */
int fdpo_gpt2_logit_sums(const fdpo_gpt2 *m, float *out);

/* Backward of the last forward for an arbitrary upstream gradient d_token_logp[N]
 * (dObjective/dtoken_logp[t]; entries where targets < 0 are ignored). ACCUMULATES into
 * m->grads (call fdpo_gpt2_zero_grad first). This is how every objective talks to the
 * model: SFT passes -w_t / W_total, f-DPO passes its per-pair coefficient times w_t. */
int fdpo_gpt2_backward(fdpo_gpt2 *m, const float *d_token_logp);
void fdpo_gpt2_zero_grad(fdpo_gpt2 *m);
/* d_token_logp[t] = d_seq_logp[b(t)] * weight_t, for per-sequence upstream gradients. */
void fdpo_batch_seq_to_token_grad(const fdpo_batch *b, const float *d_seq_logp, float *d_token_logp);
/* 1 if two configs describe the same architecture (family, every shape, epsilon, rope). */
int fdpo_gpt2_config_equal(const fdpo_gpt2_config *a, const fdpo_gpt2_config *b);
/* A Llama's attention head size: config head_dim, or hidden_size / num_attention_heads when unset */
size_t fdpo_llama_head_dim(const fdpo_gpt2_config *c);
/* The fields in which a and b differ, of those fdpo_gpt2_config_equal compares (0: equal), written
 * to buf (may be NULL) as "name A vs B" joined by ", " under config.json's names, e.g.
 * "architectures GPT2ForSequenceClassification vs GPT2LMHeadModel, num_labels 1 vs 0" or
 * "rope_theta 10000 vs 500000"; cut at size. The one list of those fields (equal is diff == 0). */
size_t fdpo_gpt2_config_diff(const fdpo_gpt2_config *a, const fdpo_gpt2_config *b, char *buf, size_t size);
/* h chained (fdpo_hash64) over exactly the fields fdpo_gpt2_config_equal compares: equal
 * configs hash equal, and a change to any of them (a Llama's rope_theta) changes the hash. */
uint64_t fdpo_gpt2_config_hash(uint64_t h, const fdpo_gpt2_config *c);
/* Switch a model's matmul precision (forward/backward from the next forward on). */
void fdpo_gpt2_set_precision(fdpo_gpt2 *m, fdpo_precision p);
/* Copy parameters (same config required). */
int fdpo_gpt2_copy_params(fdpo_gpt2 *dst, const fdpo_gpt2 *src);
/* For an optimizer: params [off, off + n) were just written by its update (call from any
 * thread, disjoint ranges, while they are in cache); once every parameter was,
 * fdpo_model_params_update_done. A bf16 model's weight copy is then written in the same
 * pass and kept by the next forward, instead of remade there from the masters. An update
 * that skips these calls is still correct (the next forward remakes the copy). */
void fdpo_model_params_updated(fdpo_gpt2 *m, size_t off, size_t n);
void fdpo_model_params_update_done(fdpo_gpt2 *m);
/* Backward of the last forward from a gradient on the final hidden states (after ln_f)
 * d_lnf [N, C] instead of on the token log-probs; the LM head gets no gradient.
 * ACCUMULATES into m->grads like fdpo_gpt2_backward. An error after a fused_head forward
 * whose head skipped rows (below). */
int fdpo_gpt2_backward_hidden(fdpo_gpt2 *m, const float *d_lnf);
/* Final hidden states (after ln_f) [N, C] of the last forward, NULL if none. Also NULL
 * after a fused_head forward whose head skipped some rows (no target, or weight 0 with
 * skip_unweighted): its last block ran c_proj, the MLP and ln_f on the head's rows only,
 * so the other rows' hidden states do not exist (docs/model.md, "The last block on the
 * head's rows"). */
const float *fdpo_gpt2_hidden(const fdpo_gpt2 *m);

/* ---- scalar head (GPT2ForSequenceClassification, num_labels 1; src/model/gpt2_score.c) ----
 * (and Llama/Qwen2 ...ForSequenceClassification: score.weight [1, C] stands alone, no lm_head).
 * r_b = score.weight . h_b, h_b the final hidden state of sequence b's last token that is
 * not pad_token_id (transformers' pooling; pad_token_id < 0: the last token). */
float *fdpo_gpt2_score_weight(fdpo_gpt2 *m);     /* [C] inside params_memory; NULL for an LM */
/* Forward over a packed batch (targets may all be -1): rewards[B]. */
int fdpo_gpt2_score_forward(fdpo_gpt2 *m, const fdpo_batch *b, float *rewards);
/* Backward of the last score forward for d_rewards[B]; ACCUMULATES into m->grads. */
int fdpo_gpt2_score_backward(fdpo_gpt2 *m, const float *d_rewards);
/* A reward model with lm's backbone and score.weight ~ N(0, init_std) drawn from seed. */
fdpo_gpt2 *fdpo_gpt2_reward_model_from_lm(const fdpo_gpt2 *lm, double init_std, uint64_t seed,
                                          int32_t pad_token_id);

#ifdef __cplusplus
}
#endif

#endif
