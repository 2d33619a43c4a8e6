/* GPT-2 model: config, parameter table, init, and forward/backward over a packed batch
 * (layer kernels in gpt2_kernels.c). */
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/gpt2.h"
#include "model/gpt2_internal.h"
#include "model/llama_internal.h"
#include "fdpo/lora.h"

int fdpo_gpt2_config_check(const fdpo_gpt2_config *c) {
    if (c->arch == FDPO_ARCH_LLAMA) return fdpo_llama_config_check(c);
    if (c->arch != FDPO_ARCH_GPT2) return fdpo_error("config: unknown model family %d", (int)c->arch);
    /* upper bounds keep every size product far from size_t/int overflow (BLAS takes int) */
    if (c->vocab_size == 0 || c->vocab_size > (1u << 24))
        return fdpo_error("config: vocab_size %zu must be in [1, %u]", c->vocab_size, 1u << 24);
    if (c->n_positions == 0 || c->n_positions > (1u << 20))
        return fdpo_error("config: n_positions %zu must be in [1, %u]", c->n_positions, 1u << 20);
    if (c->n_embd == 0 || c->n_embd > 65536)
        return fdpo_error("config: n_embd %zu must be in [1, 65536]", c->n_embd);
    if (c->n_layer == 0 || c->n_layer > 1024)
        return fdpo_error("config: n_layer %zu must be in [1, 1024]", c->n_layer);
    if (c->n_head == 0 || c->n_embd % c->n_head != 0)
        return fdpo_error("config: n_head %zu must be >= 1 and divide n_embd %zu", c->n_head, c->n_embd);
    if (c->num_labels > 1)
        return fdpo_error("config: num_labels %zu is not supported (a reward model has 1)", c->num_labels);
    if (!(c->layer_norm_epsilon > 0.0f) || !isfinite(c->layer_norm_epsilon))
        return fdpo_error("config: layer_norm_epsilon %g must be a positive number", (double)c->layer_norm_epsilon);
    /* the bounds above keep this product exact in double; refuse what cannot be allocated
     * sensibly instead of aborting in malloc */
    double n = fdpo_gpt2_config_n_params(c);
    if (n > 8589934592.0) return fdpo_error("config: %.3g parameters is more than fdpo supports (8.6e9)", n);
    return 0;
}

double fdpo_gpt2_config_n_params(const fdpo_gpt2_config *c) {
    if (c->arch == FDPO_ARCH_LLAMA) return fdpo_llama_n_params(c);
    double C = (double)c->n_embd;   /* build_tensor_table's sizes; wte's rows include the score head's */
    return ((double)c->vocab_size + (double)c->num_labels + (double)c->n_positions) * C + 2 * C +
           (double)c->n_layer * (12 * C * C + 13 * C);
}

/* Fill m->tensors (HF names, shapes, decay flags) and their offsets; sets m->n_params. */
static void build_tensor_table(fdpo_gpt2 *m) {
    size_t V = m->config.vocab_size, T = m->config.n_positions, C = m->config.n_embd, L = m->config.n_layer;
    struct { const char *name; int per_layer; size_t s0, s1; int ndim, decay; } spec[FDPO_GPT2_NUM_TENSORS] = {
        {"transformer.wte.weight", 0, V + m->config.num_labels, C, 2, 1}, /* + score rows */
        {"transformer.wpe.weight", 0, T, C, 2, 1},
        {"transformer.h.{i}.ln_1.weight", 1, C, 0, 1, 0},
        {"transformer.h.{i}.ln_1.bias", 1, C, 0, 1, 0},
        {"transformer.h.{i}.attn.c_attn.weight", 1, C, 3 * C, 2, 1},
        {"transformer.h.{i}.attn.c_attn.bias", 1, 3 * C, 0, 1, 0},
        {"transformer.h.{i}.attn.c_proj.weight", 1, C, C, 2, 1},
        {"transformer.h.{i}.attn.c_proj.bias", 1, C, 0, 1, 0},
        {"transformer.h.{i}.ln_2.weight", 1, C, 0, 1, 0},
        {"transformer.h.{i}.ln_2.bias", 1, C, 0, 1, 0},
        {"transformer.h.{i}.mlp.c_fc.weight", 1, C, 4 * C, 2, 1},
        {"transformer.h.{i}.mlp.c_fc.bias", 1, 4 * C, 0, 1, 0},
        {"transformer.h.{i}.mlp.c_proj.weight", 1, 4 * C, C, 2, 1},
        {"transformer.h.{i}.mlp.c_proj.bias", 1, C, 0, 1, 0},
        {"transformer.ln_f.weight", 0, C, 0, 1, 0},
        {"transformer.ln_f.bias", 0, C, 0, 1, 0},
    };
    size_t off = 0;
    for (int i = 0; i < FDPO_GPT2_NUM_TENSORS; i++) {
        fdpo_gpt2_tensor *t = &m->tensors[i];
        t->name = spec[i].name;
        t->per_layer = spec[i].per_layer;
        t->ndim = spec[i].ndim;
        t->shape[0] = spec[i].s0;
        t->shape[1] = spec[i].ndim > 1 ? spec[i].s1 : 0;
        t->shape[2] = 0;
        t->decay = spec[i].decay;
        size_t one = spec[i].ndim > 1 ? spec[i].s0 * spec[i].s1 : spec[i].s0;
        t->numel = one * (spec[i].per_layer ? L : 1);
        t->offset = off;
        off += t->numel;
    }
    m->n_params = off;
    m->n_tensors = FDPO_GPT2_NUM_TENSORS;
}

/* Point the 16 fields of p at consecutive tensors of memory (table order = struct order). */
static void point_params(fdpo_gpt2_params *p, float *memory, const fdpo_gpt2_tensor *tensors) {
    float **fields[FDPO_GPT2_NUM_TENSORS] = {
        &p->wte, &p->wpe, &p->ln1w, &p->ln1b, &p->qkvw, &p->qkvb, &p->attprojw, &p->attprojb,
        &p->ln2w, &p->ln2b, &p->fcw, &p->fcb, &p->fcprojw, &p->fcprojb, &p->lnfw, &p->lnfb};
    for (int i = 0; i < FDPO_GPT2_NUM_TENSORS; i++) *fields[i] = memory + tensors[i].offset;
}

const char *fdpo_gpt2_architecture(const fdpo_gpt2_config *c, int reward) {
    if (c->arch == FDPO_ARCH_GPT2) return reward ? "GPT2ForSequenceClassification" : "GPT2LMHeadModel";
    if (!strcmp(c->model_type, "qwen2")) return reward ? "Qwen2ForSequenceClassification" : "Qwen2ForCausalLM";
    return reward ? "LlamaForSequenceClassification" : "LlamaForCausalLM";
}

fdpo_gpt2 *fdpo_gpt2_create(const fdpo_gpt2_config *c) {
    if (fdpo_gpt2_config_check(c) || fdpo_model_env_check()) return NULL;
    fdpo_gpt2 *m = fdpo_calloc(1, sizeof *m);
    m->config = *c;
    if (c->arch == FDPO_ARCH_LLAMA) {
        fdpo_llama_build(m);
        if (!(m->params_memory = fdpo_alloc_large(m->n_params * sizeof(float)))) { fdpo_gpt2_free(m); return NULL; }
        m->precision = fdpo_get_precision();
        return m;
    }
    build_tensor_table(m);
    /* zeroed; fp32 decoding streams all of it every step: fdpo_alloc_large (huge pages unless
     * FDPO_HUGEPAGES says otherwise; the gradients and AdamW's moments are on the same) */
    if (!(m->params_memory = fdpo_alloc_large(m->n_params * sizeof(float)))) { fdpo_gpt2_free(m); return NULL; }
    point_params(&m->params, m->params_memory, m->tensors);
    m->precision = fdpo_get_precision();
    return m;
}

void fdpo_gpt2_set_precision(fdpo_gpt2 *m, fdpo_precision p) { m->precision = p; }

static void acts_free(fdpo_gpt2_acts *a) {
    if (!a) return;
    fdpo_free_large(a->memory);
    free(a->seq_offset);
    free(a->tokens);
    free(a->targets);
    free(a->pos);
    free(a->weights);
    free(a->branch);
    free(a->rows);
    free(a->ctargets);
    free(a->cd);
    free(a->clse);
    fdpo_free_large(a->bf16_x);
    fdpo_free_large(a->bf16_y);
    fdpo_free_large(a->logits);
    fdpo_free_large(a->head_scratch);
    fdpo_free_large(a->head_bf16);
    fdpo_free_large(a->head_acc);
    free(a->slice_grads);
    free(a);
}

void fdpo_gpt2_free(fdpo_gpt2 *m) {
    if (!m) return;
    fdpo_free_large(m->params_memory);
    fdpo_free_large(m->grads_memory);
    fdpo_free_large(m->params_bf16);
    fdpo_free_large(m->params_bf16f);
    fdpo_lora_detach(m);
    acts_free(m->acts);
    fdpo_llama_free(m);
    free(m->generation_config);
    free(m);
}

void fdpo_gpt2_init(fdpo_gpt2 *m, uint64_t seed) {
    if (m->config.arch == FDPO_ARCH_LLAMA) { fdpo_llama_init(m, seed); return; }
    fdpo_rng rng;
    fdpo_rng_seed(&rng, seed);
    double resid_std = 0.02 / sqrt(2.0 * (double)m->config.n_layer);
    for (int i = 0; i < FDPO_GPT2_NUM_TENSORS; i++) {
        const fdpo_gpt2_tensor *t = &m->tensors[i];
        float *p = m->params_memory + t->offset;
        if (t->decay) {
            /* residual projections (attn.c_proj, mlp.c_proj weights) get 1/sqrt(2L) */
            double sd = strstr(t->name, "c_proj.weight") ? resid_std : 0.02;
            for (size_t k = 0; k < t->numel; k++) p[k] = (float)(sd * fdpo_rng_normal(&rng));
        } else {
            float v = strstr(t->name, ".weight") ? 1.0f : 0.0f; /* LN weight 1, biases 0 */
            for (size_t k = 0; k < t->numel; k++) p[k] = v;
        }
    }
}

int fdpo_gpt2_check_batch(const fdpo_gpt2 *m, const fdpo_batch *b) {
    const fdpo_gpt2_config *c = &m->config;
    if (b->n_seq == 0) return fdpo_error("batch: no sequences");
    if (!b->seq_offset || !b->tokens || !b->targets) return fdpo_error("batch: seq_offset, tokens and targets are required");
    if (b->seq_offset[0] != 0) return fdpo_error("batch: seq_offset[0] = %zu, must be 0", b->seq_offset[0]);
    for (size_t s = 0; s < b->n_seq; s++) {
        if (b->seq_offset[s + 1] <= b->seq_offset[s])
            return fdpo_error("batch: sequence %zu is empty or seq_offset decreases (%zu -> %zu)",
                              s, b->seq_offset[s], b->seq_offset[s + 1]);
        size_t T = b->seq_offset[s + 1] - b->seq_offset[s];
        if (!b->pos && T > c->n_positions)
            return fdpo_error("batch: sequence %zu has %zu tokens, more than n_positions %zu", s, T, c->n_positions);
    }
    if (b->seq_offset[b->n_seq] != b->n_tokens)
        return fdpo_error("batch: seq_offset[%zu] = %zu but n_tokens = %zu", b->n_seq, b->seq_offset[b->n_seq], b->n_tokens);
    if (b->n_tokens > (size_t)1 << 30) return fdpo_error("batch: %zu tokens is too many", b->n_tokens);
    for (size_t t = 0; t < b->n_tokens; t++) {
        if (b->tokens[t] < 0 || (size_t)b->tokens[t] >= c->vocab_size)
            return fdpo_error("batch: token %zu: id %d outside [0, vocab_size %zu)", t, (int)b->tokens[t], c->vocab_size);
        if (b->targets[t] < -1 || b->targets[t] >= (int64_t)c->vocab_size)
            return fdpo_error("batch: token %zu: target %d outside [-1, vocab_size %zu)", t, (int)b->targets[t], c->vocab_size);
        if (b->pos && (b->pos[t] < 0 || (size_t)b->pos[t] >= c->n_positions))
            return fdpo_error("batch: token %zu: position %d outside [0, n_positions %zu)", t, (int)b->pos[t], c->n_positions);
        if (b->weights && !isfinite(b->weights[t]))
            return fdpo_error("batch: token %zu: weight is not finite", t);
    }
    return 0;
}

/* Make sure the activation buffers hold a batch of N tokens, B sequences and sequences up
 * to maxT tokens; grows (never shrinks) the buffers. */
static void acts_reserve(fdpo_gpt2 *m, size_t N, size_t B, size_t maxT) {
    fdpo_gpt2_acts *a = m->acts;
    if (!a) a = m->acts = fdpo_calloc(1, sizeof *a);
    if (B > a->cap_seq) {
        a->seq_offset = fdpo_realloc(a->seq_offset, (B + 1) * sizeof(size_t));
        a->cap_seq = B;
    }
    if (maxT > a->cap_maxT) a->cap_maxT = maxT;
    if (N <= a->cap_tokens && a->memory) return;
    if (N > a->cap_tokens) {
        a->tokens = fdpo_realloc(a->tokens, N * sizeof(int32_t));
        a->targets = fdpo_realloc(a->targets, N * sizeof(int32_t));
        a->pos = fdpo_realloc(a->pos, N * sizeof(int32_t));
        a->weights = fdpo_realloc(a->weights, N * sizeof(float));
        a->rows = fdpo_realloc(a->rows, N * sizeof(size_t));
        a->ctargets = fdpo_realloc(a->ctargets, N * sizeof(int32_t));
        a->cd = fdpo_realloc(a->cd, N * sizeof(float));
        a->clse = fdpo_realloc(a->clse, N * sizeof(float));
        free(a->branch);
        a->branch = NULL;
    }
    N = N > a->cap_tokens ? N : a->cap_tokens;
    size_t C = m->config.n_embd, L = m->config.n_layer, NH = m->config.n_head;
    struct { float **p; size_t n; } parts[] = {
        {&a->encoded, N * C}, {&a->ln1, L * N * C}, {&a->ln1_mean, L * N}, {&a->ln1_rstd, L * N},
        {&a->qkv, L * N * 3 * C}, {&a->atty, L * N * C}, {&a->att_lse, L * N * NH}, {&a->residual2, L * N * C},
        {&a->ln2, L * N * C}, {&a->ln2_mean, L * N}, {&a->ln2_rstd, L * N}, {&a->fch, L * N * 4 * C},
        {&a->fch_gelu, L * N * 4 * C}, {&a->residual3, L * N * C}, {&a->lnf, N * C}, {&a->lnf_mean, N},
        {&a->lnf_rstd, N}, {&a->lse, N}, {&a->logit_sum, N}, {&a->d_residual, N * C}, {&a->d_ln, N * C},
        {&a->d_qkv, N * 3 * C}, {&a->d_atty, N * C}, {&a->d_fch, N * 4 * C},
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) total += parts[i].n;
    /* grown in place, not free + malloc nor realloc: every activation is written before it
     * is read, but the pages an earlier (smaller) batch touched must stay mapped where they
     * are -- free + malloc faults them all again (124M: an online round with one pair more
     * than the round before faulted all ~170 MB again), and realloc's mremap moves them,
     * which a VM with shadow paging makes as slow as faulting (src/core/alloc_large.c) */
    a->memory = fdpo_realloc_large(a->memory, total * sizeof(float));
    float *p = a->memory;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) { *parts[i].p = p; p += parts[i].n; }
    a->cap_tokens = N;
}

/* Grow a scratch buffer to hold at least n elements of size elem (never shrinks; in place,
 * as acts_reserve's memory: free it with fdpo_free_large). */
static void *grow(void *p, size_t *cap, size_t n, size_t elem) {
    if (n <= *cap && p) return p;
    *cap = n;
    return fdpo_realloc_large(p, (n ? n : 1) * elem);
}

void *fdpo_model_grow(void *p, size_t *cap, size_t n, size_t elem) { return grow(p, cap, n, elem); }

/* The [N, V] logits buffer, only for forwards that materialise logits. */
static void logits_reserve(fdpo_gpt2_acts *a, size_t N, size_t V) {
    if (N <= a->logits_cap && a->logits) return;
    a->logits = fdpo_realloc_large(a->logits, (N ? N : 1) * V * sizeof(float));
    a->logits_cap = N;
}

/* The model code's numeric environment knobs, read once they are good: FDPO_LMHEAD_CHUNK
 * (vocabulary columns per chunk, >= 1) and FDPO_LMHEAD_KEEP_MAX_BYTES (bytes, >= 0). A bad
 * value is fdpo_gpt2_create's error (every model is made by it); a caller that reaches the
 * head without one (the harness's kernel tests) gets one notice through the log hook and
 * the default. */
static long env_lmhead_chunk = FDPO_LMHEAD_CHUNK, env_keep_max_bytes = (long)FDPO_LMHEAD_KEEP_MAX_BYTES;
static _Atomic int env_state;   /* 0: not read (or bad); 1: read and good; 2: bad, said so */

int fdpo_model_env_check(void) {
    if (env_state == 1) return 0;
    long chunk, keep;
    if (fdpo_env_long("FDPO_LMHEAD_CHUNK", FDPO_LMHEAD_CHUNK, 1, LONG_MAX, &chunk) ||
        fdpo_env_long("FDPO_LMHEAD_KEEP_MAX_BYTES", (long)FDPO_LMHEAD_KEEP_MAX_BYTES, 0, LONG_MAX, &keep))
        return -1;
    env_lmhead_chunk = chunk;
    env_keep_max_bytes = keep;
    env_state = 1;
    return 0;
}

static void model_env_read(void) {
    if (env_state) return;
    if (fdpo_model_env_check()) {
        fdpo_log(FDPO_LOG_WARN, "%s; using the defaults", fdpo_last_error());
        env_state = 2;
    }
}

/* Vocabulary columns per chunk of the fused head: FDPO_LMHEAD_CHUNK, or the environment
 * variable of that name (tests use it to put chunk boundaries inside tiny vocabularies). */
size_t fdpo_lmhead_chunk(size_t V) {
    model_env_read();
    size_t c = (size_t)env_lmhead_chunk;
    return c < V ? c : V;
}

/* bf16 weights: two copies of the fp32 masters, each made only if a GEMM reads it.
 *   params_bf16  (uint16): the operand of vdpbf16ps GEMMs, and of fp32-route GEMMs that
 *     widen it themselves;
 *   params_bf16f (fp32, the same bf16 values exactly): the weight of fp32-route GEMMs
 *     (fdpo_gemm_bf16_widens: every large GEMM on a CPU whose vdpbf16ps is the slower
 *     instruction, every one without AVX512-BF16), which then widen nothing.
 * Out of date at each forward (every writer of params, the optimizer, loading, copy_params,
 * is then covered without a hook), remade at their first use after it: at most once per
 * forward, and the backward uses the forward's. A params_frozen model's are made once per
 * run (124M: 0.75-1 GB of traffic per forward saved).
 * The fp32 copy pays only where it is read many times: a params_frozen model's (a fixed
 * reference, scored every step of a run) is made once per run. A trainable model's would be
 * remade at every forward and read by that forward and its backward only, and writing it
 * (4 bytes per parameter to DRAM, read back from DRAM) costs more than widening each weight
 * into a per-thread scratch the GEMM then reads from the cache: measured idle (wave 8,
 * bench_online --baseline, 124M bf16), a copy per forward made the policy's scoring forward
 * 8 % slower and training no faster (1.01-1.04x, noise), and it put the 124M DPO step at
 * T = 1024 at 63 % of PyTorch's peak RSS against #13's 60 %. So only frozen models make it;
 * the others' fp32-route GEMMs widen the bf16 copy. The products, and so the results, are
 * the same bits either way. FDPO_BF16_WEIGHT_COPY=0 never makes it, =1 always does (A/B
 * runs). The decoder packs its own bf16 weights and reads neither. */

static int bf16_weight_copy_setting(void) { /* -1: by the rule above; 0 never; 1 always */
    static _Atomic int state = -2;
    int s = state;
    if (s == -2) {
        static const char *const choices[] = {"auto", "0", "1", NULL};
        int warned = 0;
        s = fdpo_env_choice("FDPO_BF16_WEIGHT_COPY", choices, 0, &warned) - 1;   /* auto -> -1 */
        state = s;
    }
    return s;
}

void fdpo_model_bf16_refresh(fdpo_gpt2 *m) { /* both families */
    fdpo_bf16_native(); /* says once if the GEMMs fall back */
    /* bit 8: the optimizer's last update wrote params_bf16 too (fdpo_model_params_updated);
     * good for this forward only: a later one without a new update remakes it */
    if (!m->params_frozen) m->params_bf16_current = (m->params_bf16_current & 8u) ? 1u : 0u;
    int set = bf16_weight_copy_setting();
    int copy = set >= 0 ? set : m->params_frozen;
    m->params_bf16_current = (m->params_bf16_current & ~4u) | (copy ? 4u : 0u);
}

fdpo_bf16_weight fdpo_model_bf16_weight(fdpo_gpt2 *m, const float *w, size_t M, size_t N) {
    size_t off = (size_t)(w - m->params_memory);
    if (M == 0 || N == 0) return (fdpo_bf16_weight){NULL, NULL}; /* no product: no copy made for it */
    if ((m->params_bf16_current & 4u) && fdpo_gemm_bf16_widens(M, N)) {
        if (!(m->params_bf16_current & 2u)) {
            if (!m->params_bf16f) m->params_bf16f = fdpo_malloc_large(m->n_params * sizeof(float));
            fdpo_f32_round_bf16(m->params_bf16f, m->params_memory, m->n_params);
            m->params_bf16_current |= 2u;
        }
        return (fdpo_bf16_weight){NULL, m->params_bf16f + off};
    }
    if (!(m->params_bf16_current & 1u)) {
        /* fdpo_malloc_large: 2 MiB aligned, on the parameters' page size */
        if (!m->params_bf16) m->params_bf16 = fdpo_malloc_large(m->n_params * sizeof(uint16_t));
        fdpo_f32_to_bf16(m->params_bf16, m->params_memory, m->n_params);
        m->params_bf16_current |= 1u;
    }
    return (fdpo_bf16_weight){m->params_bf16 + off, NULL};
}

/* The optimizer's half of the bf16 copy: an update writes the new params and, in the same
 * pass while they are in cache, their bf16 copy, instead of a second pass over the params
 * at the next forward (124M, 2 threads, idle: AdamW + the next forward's copy 59-62 ms ->
 * 50-56 ms, under 1 % of a training step). Rows [off, off + n) just written; any thread,
 * disjoint ranges. A no-op unless the model is bf16, trainable and its bf16 copy exists
 * (made by an earlier forward). */
static int optimizer_writes_bf16(const fdpo_gpt2 *m) {
    return m->precision == FDPO_PRECISION_BF16 && m->params_bf16 && !m->params_frozen;
}

void fdpo_model_params_updated(fdpo_gpt2 *m, size_t off, size_t n) {
    if (optimizer_writes_bf16(m)) fdpo_bf16_round_n(m->params_bf16 + off, m->params_memory + off, n);
}

/* Every parameter went through fdpo_model_params_updated since the update began: the bf16
 * copy is current for the next forward (its refresh keeps it instead of remaking it). */
void fdpo_model_params_update_done(fdpo_gpt2 *m) {
    if (optimizer_writes_bf16(m)) m->params_bf16_current |= 8u;
    else m->params_bf16_current &= ~8u; /* nothing written (an fp32 update): a stale bit must not survive */
}

static void bf16_prepare(fdpo_gpt2 *m) {
    fdpo_gpt2_acts *a = m->acts;
    size_t C = m->config.n_embd;
    fdpo_model_bf16_refresh(m);
    if (a->bf16_cap < a->cap_tokens) {
        a->bf16_x = fdpo_realloc_large(a->bf16_x, a->cap_tokens * 4 * C * sizeof(uint16_t));
        a->bf16_y = fdpo_realloc_large(a->bf16_y, a->cap_tokens * 4 * C * sizeof(uint16_t));
        a->bf16_cap = a->cap_tokens;
    }
}

/* Linear layers and the LM head in the model's precision (the kernels do the maths). */
static void linear_forward(fdpo_gpt2 *m, float *out, const float *inp, const float *w, const float *bias,
                           size_t N, size_t IC, size_t OC) {
    if (m->precision == FDPO_PRECISION_BF16)
        fdpo_k_matmul_forward_bf16(out, inp, fdpo_model_bf16_weight(m, w, N, OC), bias, N, IC, OC, m->acts->bf16_x);
    else
        fdpo_k_matmul_forward(out, inp, w, bias, N, IC, OC);
}

static void linear_backward(fdpo_gpt2 *m, float *dinp, float *dw, float *dbias, const float *dout,
                            const float *inp, const float *w, size_t N, size_t IC, size_t OC) {
    if (m->acts->precision == FDPO_PRECISION_BF16) /* the forward's: its bf16 weights are current */
        fdpo_k_matmul_backward_bf16(dinp, dw, dbias, dout, inp, fdpo_model_bf16_weight(m, w, N, IC), N, IC, OC,
                                    m->acts->bf16_x, m->acts->bf16_y);
    else
        fdpo_k_matmul_backward(dinp, dw, dbias, dout, inp, w, N, IC, OC, 0);
}

static void head_forward(fdpo_gpt2 *m, float *logits, const float *inp, size_t N) {
    const fdpo_gpt2_config *c = &m->config;
    if (m->precision == FDPO_PRECISION_BF16)
        fdpo_k_lmhead_forward_bf16(logits, inp, fdpo_model_bf16_weight(m, m->params.wte, N, c->vocab_size), N, c->n_embd,
                                   c->vocab_size, m->acts->bf16_x);
    else
        fdpo_k_lmhead_forward(logits, inp, m->params.wte, N, c->n_embd, c->vocab_size);
}

static void head_backward(fdpo_gpt2 *m, float *dinp, const float *dlogits, const float *inp, size_t N) {
    const fdpo_gpt2_config *c = &m->config;
    fdpo_gpt2_acts *a = m->acts;
    if (a->precision == FDPO_PRECISION_BF16) {
        a->head_bf16 = grow(a->head_bf16, &a->head_bf16_cap, N * c->vocab_size, sizeof(uint16_t));
        fdpo_k_lmhead_backward_bf16(dinp, fdpo_lora_frozen(m) ? NULL : m->grads.wte, dlogits, inp,
                                    fdpo_model_bf16_weight(m, m->params.wte, N, c->n_embd), N, c->n_embd,
                                    c->vocab_size, a->head_bf16, a->bf16_y);
    }
    else
        fdpo_k_lmhead_backward(dinp, fdpo_lora_frozen(m) ? NULL : m->grads.wte, dlogits, inp, m->params.wte, N, c->n_embd, c->vocab_size);
}

/* Does the fused head keep its K x V logits for the backward? Only in a model being trained
 * (a gradient buffer or LoRA adapters: a reference model's forward has no backward) and only
 * when they fit the batch's budget, max_bytes, or else FDPO_LMHEAD_KEEP_MAX_BYTES (or the
 * environment variable of that name). */
static int head_keeps_logits(const fdpo_gpt2 *m, size_t K, size_t V, size_t max_bytes) {
    model_env_read();
    size_t max = max_bytes ? max_bytes : (size_t)env_keep_max_bytes;
    return (m->grads_memory || m->lora) && K > 0 && V > m->acts->head_chunk && K * V * sizeof(float) <= max;
}

/* The fused head's scratch for K rows: one chunk of logits (or all of them: keep), bf16
 * operands, row state. */
static void fused_head_reserve(fdpo_gpt2 *m, size_t K, size_t chunk, int keep) {
    fdpo_gpt2_acts *a = m->acts;
    size_t C = m->config.n_embd;
    a->head_scratch = grow(a->head_scratch, &a->head_scratch_cap, K * (keep ? m->config.vocab_size : chunk), sizeof(float));
    a->head_acc = grow(a->head_acc, &a->head_acc_cap, 3 * K, sizeof(double));
    if (a->precision == FDPO_PRECISION_BF16)
        a->head_bf16 = grow(a->head_bf16, &a->head_bf16_cap, K * (C + chunk), sizeof(uint16_t));
}

/* Fused LM head over the packed rows a->rows[k0..k1), the active rows of tokens [t0, t1):
 * log-probs, lse and logit sums chunk by chunk over the vocabulary; no [N, V] logits. Tokens
 * of [t0, t1) not listed get lse, logit_sum and token_logp 0. The packed ln_f rows and the
 * chunk logits live in the slice's own rows of the scratch (tokens t0.. of d_atty, rows
 * k0.. of head_scratch), so slices of a batch can run this side by side (slice_plan). */
static void lmhead_rows_forward_fused(fdpo_gpt2 *m, float *tlp, size_t k0, size_t k1, size_t t0, size_t t1) {
    fdpo_gpt2_acts *a = m->acts;
    size_t C = m->config.n_embd, V = m->config.vocab_size, chunk = a->head_chunk, K = k1 - k0;
    /* the last block left the rows packed (head_rows_only), else pack them into backward scratch */
    float *lnf_packed = a->head_rows_only ? a->lnf + t0 * C : a->d_atty + t0 * C;
    if (!a->head_rows_only) fdpo_k_gather_rows(lnf_packed, a->lnf, a->rows + k0, K, C);
    for (size_t k = k0; k < k1; k++) a->ctargets[k] = a->targets[a->rows[k]];
    float *csum = a->d_ln + t0; /* free during forward */
    fdpo_bf16_weight wb = {NULL, NULL};
    if (a->precision == FDPO_PRECISION_BF16) wb = fdpo_model_bf16_weight(m, m->params.wte, K, chunk);
    fdpo_k_lmhead_logsoftmax_forward_chunked(a->clse + k0, a->cd + k0, csum, lnf_packed, m->params.wte, wb,
                                             a->ctargets + k0, K, C, V, chunk, a->head_scratch + k0 * (a->head_keep ? V : chunk),
                                             a->head_bf16, a->head_acc + 3 * k0, a->head_keep);
    memset(a->lse + t0, 0, (t1 - t0) * sizeof(float));
    memset(a->logit_sum + t0, 0, (t1 - t0) * sizeof(float));
    if (tlp) memset(tlp + t0, 0, (t1 - t0) * sizeof(float));
    for (size_t k = k0; k < k1; k++) {
        a->lse[a->rows[k]] = a->clse[k];
        a->logit_sum[a->rows[k]] = csum[k - k0];
        if (tlp) tlp[a->rows[k]] = a->cd[k];
    }
}

/* LM head and log-softmax over the K rows a->rows[0..K) only (the rest get logits 0,
 * lse 0 and token_logp 0): pack their ln_f outputs, one GEMM of K x V instead of N x V,
 * then move each logits row to its token's place. */
static void lmhead_rows_forward(fdpo_gpt2 *m, float *tlp, size_t K) {
    fdpo_gpt2_acts *a = m->acts;
    size_t N = a->n_tokens, C = m->config.n_embd, V = m->config.vocab_size;
    float *lnf_packed = a->d_atty; /* backward scratch, free during forward */
    fdpo_k_gather_rows(lnf_packed, a->lnf, a->rows, K, C);
    for (size_t k = 0; k < K; k++) a->ctargets[k] = a->targets[a->rows[k]];
    head_forward(m, a->logits, lnf_packed, K);
    fdpo_k_logsoftmax_forward(a->clse, a->cd, a->logits, a->ctargets, K, V);
    memset(a->lse, 0, N * sizeof(float));
    if (tlp) memset(tlp, 0, N * sizeof(float));
    for (size_t k = 0; k < K; k++) {
        a->lse[a->rows[k]] = a->clse[k];
        if (tlp) tlp[a->rows[k]] = a->cd[k];
    }
    fdpo_k_scatter_rows(a->logits, 0, N, a->rows, K, V); /* the skipped tokens' rows become 0 */
}

/* ---- The last block on the head's rows ----
 * With the fused head only the rows a->rows[] (tokens with a target, and a weight when
 * skip_unweighted) are read from the model's output: in DPO, SFT and RL scoring the prompt
 * tokens are not. Every other token's last-block output is dead, and after its attention
 * (whose keys and values every later token reads) so is the rest of its block: c_proj,
 * ln_2, the MLP and ln_f. The last block therefore runs them on the head's rows only,
 * gathered to the front of the slice's rows; the backward scatters their d attention output
 * and d residual back before the attention's backward (the other rows' are 0, as they were).
 * The same arithmetic per row; in the 124M DPO goal step (half the rows are prompt) it skips
 * ~16 of ~640 GFLOP. FDPO_HEAD_ROWS_ONLY=0 runs the whole block (A/B runs, tests). */
int fdpo_model_head_rows_only_setting(void) { /* both families */
    static int env = -1;
    if (env < 0) {
        env = fdpo_env_switch("FDPO_HEAD_ROWS_ONLY", 1);
    }
    return env;
}

/* The forward from the embeddings to ln_f for sequences [s0, s1) of the packed batch (its
 * tokens t0 .. t0+n, its head rows a->rows[k0..k1)): every kernel over those rows only,
 * attention over those sequences. The whole batch (0, B) lets each kernel split its work
 * over the threads; a slice (slice_plan) runs on one thread inside the caller's region.
 * The c_proj, c_fc and mlp c_proj biases are added by the next elementwise pass (GELU, or
 * residual + LayerNorm, which also computes the next layer's ln_1 or ln_f) instead of a copy
 * before the GEMM: fewer passes over [N, C] and fewer parallel regions per layer. */
static void forward_trunk(fdpo_gpt2 *m, size_t s0, size_t s1, size_t k0, size_t k1) {
    fdpo_gpt2_acts *a = m->acts;
    const fdpo_gpt2_config *c = &m->config;
    const fdpo_gpt2_params *p = &m->params;
    const size_t N = a->n_tokens, C = c->n_embd, L = c->n_layer, NH = c->n_head, B = s1 - s0;
    const size_t t0 = a->seq_offset[s0], n = a->seq_offset[s1] - t0;
    const size_t *seq = a->seq_offset + s0; /* absolute token offsets */
    const uint8_t *branch = a->has_branch ? a->branch : NULL;
    const float eps = c->layer_norm_epsilon;
    fdpo_k_encoder_forward(a->encoded + t0 * C, a->tokens + t0, a->pos + t0, p->wte, p->wpe, n, C);
    fdpo_k_layernorm_forward(a->ln1 + t0 * C, a->ln1_mean + t0, a->ln1_rstd + t0, a->encoded + t0 * C, p->ln1w,
                             p->ln1b, n, C, eps);
    for (size_t l = 0; l < L; l++) {
        const float *residual_l = l == 0 ? a->encoded : a->residual3 + (l - 1) * N * C, *residual = residual_l + t0 * C;
        float *ln1 = a->ln1 + l * N * C + t0 * C, *qkv_l = a->qkv + l * N * 3 * C, *qkv = qkv_l + t0 * 3 * C;
        float *atty_l = a->atty + l * N * C, *atty = atty_l + t0 * C;
        float *res2 = a->residual2 + l * N * C + t0 * C, *ln2 = a->ln2 + l * N * C + t0 * C;
        float *fch = a->fch + l * N * 4 * C + t0 * 4 * C, *fch_gelu = a->fch_gelu + l * N * 4 * C + t0 * 4 * C;
        float *res3 = a->residual3 + l * N * C + t0 * C;
        size_t ln2_row = l * N + t0;
        int last = l + 1 == L;
        linear_forward(m, qkv, ln1, p->qkvw + l * C * 3 * C, p->qkvb + l * 3 * C, n, C, 3 * C);
        fdpo_lora_forward(m, FDPO_LORA_C_ATTN, l, qkv, ln1, n, NULL);   /* (no slices with LoRA: t0 = 0) */
        fdpo_k_attention_forward_streaming(atty_l, a->att_lse + l * N * NH, qkv_l, seq, branch, B, C, NH);
        size_t nb = n; /* rows the rest of the block runs on */
        if (last && a->head_rows_only) {
            nb = k1 - k0;
            if (nb == 0) break;
            float *atty_p = a->d_qkv + t0 * 3 * C, *residual_p = atty_p + nb * C; /* backward scratch, free now */
            fdpo_k_gather_rows(atty_p, atty_l, a->rows + k0, nb, C);
            fdpo_k_gather_rows(residual_p, residual_l, a->rows + k0, nb, C);
            atty = atty_p;
            residual = residual_p;
        }
        const size_t *lrows = nb != n ? a->rows + k0 : NULL;   /* the batch rows of the packed ones (LoRA dropout) */
        linear_forward(m, res2, atty, p->attprojw + l * C * C, NULL, nb, C, C);
        fdpo_lora_forward(m, FDPO_LORA_ATTN_C_PROJ, l, res2, atty, nb, lrows);
        fdpo_k_residual_layernorm_forward(res2, ln2, a->ln2_mean + ln2_row, a->ln2_rstd + ln2_row, p->attprojb + l * C,
                                          residual, p->ln2w + l * C, p->ln2b + l * C, nb, C, eps);
        linear_forward(m, fch, ln2, p->fcw + l * C * 4 * C, NULL, nb, C, 4 * C);
        fdpo_lora_forward(m, FDPO_LORA_C_FC, l, fch, ln2, nb, lrows);
        fdpo_k_bias_gelu_forward(fch_gelu, fch, p->fcb + l * 4 * C, nb, 4 * C);
        linear_forward(m, res3, fch_gelu, p->fcprojw + l * 4 * C * C, NULL, nb, 4 * C, C);
        fdpo_lora_forward(m, FDPO_LORA_MLP_C_PROJ, l, res3, fch_gelu, nb, lrows);
        fdpo_k_residual_layernorm_forward(res3, last ? a->lnf + t0 * C : ln1 + N * C,
                                          last ? a->lnf_mean + t0 : a->ln1_mean + (l + 1) * N + t0,
                                          last ? a->lnf_rstd + t0 : a->ln1_rstd + (l + 1) * N + t0,
                                          p->fcprojb + l * C, res2, last ? p->lnfw : p->ln1w + (l + 1) * C,
                                          last ? p->lnfb : p->ln1b + (l + 1) * C, nb, C, eps);
    }
}

/* ---- sliced batches: one thread per group of whole sequences ----
 * A small model's step is ~90 short kernels, each its own parallel region (or a GEMM that
 * oneDNN splits): on 2 threads the fork/joins, wake-ups and halves of small GEMMs cost a
 * large part of the step. A batch of several sequences splits instead into n_threads slices
 * of whole sequences with about equal token counts; every kernel is row-local or works per
 * sequence, so each thread runs its slice through the whole forward (one region, no
 * barrier) and the whole backward, accumulating weight gradients into its own buffer; one
 * pass at the end adds the buffers to the model's gradients in thread order. Results depend
 * only on the batch and the thread count (the slices are a function of both), as before.
 * Taken for fp32 GPT-2 with the fused head, no LoRA, >= 2 threads, up to
 * FDPO_SLICE_MAX_PARAMS parameters (each extra thread holds a gradient copy) and slices
 * within 20 % of an equal share; FDPO_SLICES=0 turns it off (A/B runs). */
#define FDPO_SLICE_MAX_PARAMS ((size_t)16 << 20)
#define FDPO_SLICE_MAX_EXTRA ((size_t)64 << 20) /* floats of gradient copies (256 MB), with > 2 threads */
#define FDPO_SLICE_MIN_TOKENS 64

/* bounds[0..n]: sequence index where slice i starts; returns n (0: run unsliced) */
static int slice_plan(const fdpo_gpt2 *m, size_t *bounds) {
    static int env = -1;
    if (env < 0) {
        env = fdpo_env_switch("FDPO_SLICES", 1);
    }
    const fdpo_gpt2_acts *a = m->acts;
    fdpo_threads_settle(); /* the count a team really gets (OMP_THREAD_LIMIT), before any GEMM did it */
    int n = omp_get_max_threads();
    if (n > FDPO_MAX_SLICES) n = FDPO_MAX_SLICES;
    while (n > 2 && (size_t)(n - 1) * m->n_params > FDPO_SLICE_MAX_EXTRA) n--; /* gradient copies' memory */
    size_t B = a->n_seq, N = a->n_tokens;
    if (!env || n < 2 || m->config.arch != FDPO_ARCH_GPT2 || m->lora || a->precision != FDPO_PRECISION_FP32 ||
        !a->fused_head || m->n_params > FDPO_SLICE_MAX_PARAMS || B < (size_t)n ||
        N < (size_t)n * FDPO_SLICE_MIN_TOKENS || omp_in_parallel() || omp_get_max_active_levels() > 1)
        return 0;
    bounds[0] = 0;
    for (int i = 1; i < n; i++) { /* the sequence boundary nearest to i/n of the tokens */
        size_t target = N * (size_t)i / (size_t)n, s = bounds[i - 1] + 1;
        while (s + 1 <= B - (size_t)(n - i) && a->seq_offset[s + 1] <= target) s++;
        if (s + 1 <= B - (size_t)(n - i) && a->seq_offset[s] < target &&
            target - a->seq_offset[s] > a->seq_offset[s + 1] - target)
            s++;
        bounds[i] = s;
    }
    bounds[n] = B;
    for (int i = 0; i < n; i++) /* within 20 % of N / n (the unsliced path loses about that much) */
        if (5 * (a->seq_offset[bounds[i + 1]] - a->seq_offset[bounds[i]]) * (size_t)n > 6 * N) return 0;
    return n;
}

/* kb[i]: the first packed row (a->rows[0..K)) of slice i */
static void slice_rows(const fdpo_gpt2_acts *a, size_t K, int n, size_t *kb) {
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        size_t t0 = a->seq_offset[a->slice_bounds[i]];
        while (k < K && a->rows[k] < t0) k++;
        kb[i] = k;
    }
    kb[n] = K;
}

int fdpo_gpt2_forward(fdpo_gpt2 *m, const fdpo_batch *b, float *token_logp, float *seq_logp) {
    if (fdpo_gpt2_check_batch(m, b)) return -1;
    if (m->config.arch == FDPO_ARCH_LLAMA) return fdpo_llama_forward(m, b, token_logp, seq_logp);
    const fdpo_gpt2_config *c = &m->config;
    size_t N = b->n_tokens, B = b->n_seq, V = c->vocab_size;
    size_t maxT = 0;
    for (size_t s = 0; s < B; s++) {
        size_t T = b->seq_offset[s + 1] - b->seq_offset[s];
        if (T > maxT) maxT = T;
    }
    acts_reserve(m, N, B, maxT);
    fdpo_gpt2_acts *a = m->acts;
    /* keep our own copy of the batch for backward, with defaults resolved */
    a->n_seq = B;
    a->n_tokens = N;
    a->max_T = maxT;
    memcpy(a->seq_offset, b->seq_offset, (B + 1) * sizeof(size_t));
    for (size_t s = 0; s < B; s++) {
        for (size_t t = b->seq_offset[s]; t < b->seq_offset[s + 1]; t++)
            a->pos[t] = b->pos ? b->pos[t] : (int32_t)(t - b->seq_offset[s]);
    }
    memcpy(a->tokens, b->tokens, N * sizeof(int32_t));
    memcpy(a->targets, b->targets, N * sizeof(int32_t));
    for (size_t t = 0; t < N; t++)
        a->weights[t] = b->targets[t] < 0 ? 0.0f : (b->weights ? b->weights[t] : 1.0f);
    if (b->branch) {
        if (!a->branch) a->branch = fdpo_malloc(a->cap_tokens);
        memcpy(a->branch, b->branch, N);
    }
    a->has_branch = b->branch != NULL;
    a->precision = m->precision; /* backward follows the forward even if m->precision changes */
    if (m->precision == FDPO_PRECISION_BF16) bf16_prepare(m);

    /* token_logp is needed for seq_logp even when the caller did not ask for it */
    float *tlp = token_logp ? token_logp : (seq_logp ? a->d_residual : NULL); /* d_residual is free now */
    a->skip_unweighted = b->skip_unweighted;
    a->fused_head = b->fused_head;
    int n_slices = slice_plan(m, a->slice_bounds);
    a->head_chunk = fdpo_lmhead_chunk(V);
    size_t K = N;
    if (b->fused_head) { /* rows with a target (and a weight, if skipping) only, never [N, V] */
        K = 0;
        for (size_t t = 0; t < N; t++)
            if (a->targets[t] >= 0 && (!b->skip_unweighted || a->weights[t] != 0.0f)) a->rows[K++] = t;
        a->head_keep = head_keeps_logits(m, K, V, b->head_keep_max_bytes);
        fused_head_reserve(m, K, a->head_chunk, a->head_keep);
        /* kept, or one chunk: the logits stay in head_scratch (a slice's K_i x V block at row k0,
         * chunk by chunk inside it) for the backward */
        a->head_logits_rows = a->head_keep || a->head_chunk >= V ? K : SIZE_MAX;
    }
    a->head_rows_only = b->fused_head && K > 0 && K < N && fdpo_model_head_rows_only_setting();
    if (n_slices) { /* one region, no barrier: each thread runs its sequences through the whole model */
        size_t kb[FDPO_MAX_SLICES + 1];
        slice_rows(a, K, n_slices, kb);
#pragma omp parallel num_threads(n_slices)
        for (int i = omp_get_thread_num(); i < n_slices; i += omp_get_num_threads()) { /* fewer threads: still every slice */
            size_t s0 = a->slice_bounds[i], s1 = a->slice_bounds[i + 1];
            forward_trunk(m, s0, s1, kb[i], kb[i + 1]);
            lmhead_rows_forward_fused(m, tlp, kb[i], kb[i + 1], a->seq_offset[s0], a->seq_offset[s1]);
        }
    } else {
        forward_trunk(m, 0, B, 0, K);
        if (b->fused_head) {
            lmhead_rows_forward_fused(m, tlp, 0, K, 0, N);
        } else {
            logits_reserve(a, N, V);
            if (b->skip_unweighted) { /* the LM head only over tokens whose log-prob is used */
                K = 0;
                for (size_t t = 0; t < N; t++) if (a->weights[t] != 0.0f) a->rows[K++] = t;
            }
            if (K == N) {
                head_forward(m, a->logits, a->lnf, N);
                fdpo_k_logsoftmax_forward(a->lse, tlp, a->logits, a->targets, N, V);
            } else {
                lmhead_rows_forward(m, tlp, K);
            }
        }
    }
    if (seq_logp) {
        for (size_t s = 0; s < B; s++) {
            double sum = 0.0;
            for (size_t t = a->seq_offset[s]; t < a->seq_offset[s + 1]; t++) sum += (double)a->weights[t] * tlp[t];
            seq_logp[s] = (float)sum;
        }
    }
    a->has_forward = 1;
    return 0;
}

const float *fdpo_gpt2_logits(const fdpo_gpt2 *m) {
    if (m->config.arch == FDPO_ARCH_LLAMA) return fdpo_llama_logits(m);
    return m->acts && m->acts->has_forward && !m->acts->fused_head ? m->acts->logits : NULL;
}

int fdpo_gpt2_logit_sums(const fdpo_gpt2 *m, float *out) {
    const float *logits = fdpo_gpt2_logits(m);
    size_t V = m->config.vocab_size;
    if (m->config.arch == FDPO_ARCH_GPT2 && m->acts && m->acts->has_forward && m->acts->fused_head) {
        memcpy(out, m->acts->logit_sum, m->acts->n_tokens * sizeof(float));
        return 0;
    }
    if (m->config.arch == FDPO_ARCH_LLAMA && fdpo_llama_fused_logit_sums(m)) {
        memcpy(out, fdpo_llama_fused_logit_sums(m), m->llama->acts.n_tokens * sizeof(float));
        return 0;
    }
    if (!logits) return fdpo_error("logit sums: no forward pass");
    size_t N = m->config.arch == FDPO_ARCH_LLAMA ? m->llama->acts.n_tokens : m->acts->n_tokens;
    for (size_t t = 0; t < N; t++) {
        double r = 0;
        for (size_t v = 0; v < V; v++) r += logits[t * V + v];
        out[t] = (float)r;
    }
    return 0;
}

void fdpo_gpt2_zero_grad(fdpo_gpt2 *m) {
    if (m->lora) { fdpo_lora_zero_grad(m->lora); return; } /* frozen base: no base gradients at all */
    if (!m->grads_memory) {
        m->grads_memory = fdpo_malloc_large(m->n_params * sizeof(float)); /* zeroed; the params' pages */
        if (m->config.arch == FDPO_ARCH_GPT2) point_params(&m->grads, m->grads_memory, m->tensors);
        return;
    }
    /* split over the threads: a small model's step otherwise waits ~0.1 ms on one thread here */
    const size_t chunk = (size_t)1 << 16, n = m->n_params;
    long n_chunks = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (n >= 4 * FDPO_PAR_MIN)
    for (long i = 0; i < n_chunks; i++) {
        size_t lo = (size_t)i * chunk, len = n - lo < chunk ? n - lo : chunk;
        memset(m->grads_memory + lo, 0, len * sizeof(float));
    }
}

/* Backward from d ln_f (a->d_ln, rows of tokens t0.. of sequences [s0, s1); with
 * head_rows_only its first K packed rows) down to the embeddings, accumulating weight
 * gradients into g (NULL: frozen base, LoRA); the whole batch (0, B, the model's gradients)
 * or one thread's slice (its own gradient buffer), whose head rows are a->rows[k0..k0+K). */
static void backward_trunk(fdpo_gpt2 *m, fdpo_gpt2_params *g, size_t s0, size_t s1, size_t k0, size_t K,
                           int layer_hooks) {
    fdpo_gpt2_acts *a = m->acts;
    const fdpo_gpt2_config *c = &m->config;
    const fdpo_gpt2_params *p = &m->params;
    const size_t N = a->n_tokens, C = c->n_embd, L = c->n_layer, NH = c->n_head, B = s1 - s0;
    const size_t t0 = a->seq_offset[s0], n = a->seq_offset[s1] - t0;
    const size_t *seq = a->seq_offset + s0;
    const uint8_t *branch = a->has_branch ? a->branch : NULL;
#define G(field, off) (g ? g->field + (off) : NULL)
    float *d_res = a->d_residual + t0 * C, *d_ln = a->d_ln + t0 * C, *d_fch = a->d_fch + t0 * 4 * C;
    float *d_atty = a->d_atty + t0 * C, *d_qkv_all = a->d_qkv, *d_qkv = a->d_qkv + t0 * 3 * C;
    const size_t n_last = a->head_rows_only ? K : n; /* rows of the last block after its attention */
    memset(d_res, 0, n * C * sizeof(float));
    if (n_last > 0)
        fdpo_k_layernorm_backward(d_res, G(lnfw, 0), G(lnfb, 0), d_ln, a->residual3 + (L - 1) * N * C + t0 * C,
                                  p->lnfw, a->lnf_mean + t0, a->lnf_rstd + t0, n_last, C);
    for (size_t l = L; l-- > 0;) {
        const float *residual = (l == 0 ? a->encoded : a->residual3 + (l - 1) * N * C) + t0 * C;
        const float *ln1 = a->ln1 + l * N * C + t0 * C, *qkv_l = a->qkv + l * N * 3 * C;
        const float *atty_l = a->atty + l * N * C, *atty = atty_l + t0 * C;
        const float *res2 = a->residual2 + l * N * C + t0 * C, *ln2 = a->ln2 + l * N * C + t0 * C;
        const float *fch = a->fch + l * N * 4 * C + t0 * 4 * C, *fch_gelu = a->fch_gelu + l * N * 4 * C + t0 * 4 * C;
        size_t row = l * N + t0, nb = l + 1 == L ? n_last : n;
        if (nb != n) { /* the forward's packed c_proj input again, in d_qkv (free until the attention's backward) */
            fdpo_k_gather_rows(d_qkv, atty_l, a->rows + k0, nb, C);
            atty = d_qkv;
        }
        const size_t *lrows = nb != n ? a->rows + k0 : NULL;
        if (nb > 0) {
            /* MLP block: res3 = res2 + gelu(ln2(res2) @ fcw + fcb) @ fcprojw + fcprojb */
            linear_backward(m, d_fch, G(fcprojw, l * 4 * C * C), G(fcprojb, l * C), d_res, fch_gelu,
                            p->fcprojw + l * 4 * C * C, nb, 4 * C, C);
            fdpo_lora_backward(m, FDPO_LORA_MLP_C_PROJ, l, d_fch, d_res, fch_gelu, nb, lrows);
            fdpo_k_gelu_backward_bias(d_fch, G(fcb, l * 4 * C), fch, nb, 4 * C); /* fch holds gelu'; c_fc's bias grad too */
            linear_backward(m, d_ln, G(fcw, l * C * 4 * C), NULL, d_fch, ln2, p->fcw + l * C * 4 * C, nb, C, 4 * C);
            fdpo_lora_backward(m, FDPO_LORA_C_FC, l, d_ln, d_fch, ln2, nb, lrows);
            fdpo_k_layernorm_backward(d_res, G(ln2w, l * C), G(ln2b, l * C), d_ln, res2, p->ln2w + l * C,
                                      a->ln2_mean + row, a->ln2_rstd + row, nb, C);
            /* attention block: res2 = residual + attn(ln1(residual)) @ attprojw + attprojb */
            linear_backward(m, d_atty, G(attprojw, l * C * C), G(attprojb, l * C), d_res, atty,
                            p->attprojw + l * C * C, nb, C, C);
            fdpo_lora_backward(m, FDPO_LORA_ATTN_C_PROJ, l, d_atty, d_res, atty, nb, lrows);
        }
        if (nb != n) { /* back to the tokens' rows; the rows the last block skipped get 0 */
            fdpo_k_scatter_rows(a->d_atty, t0, n, a->rows + k0, nb, C);
            fdpo_k_scatter_rows(a->d_residual, t0, n, a->rows + k0, nb, C);
        }
        fdpo_k_attention_backward_streaming(d_qkv_all, a->d_atty, qkv_l, atty_l, a->att_lse + l * N * NH, seq, branch,
                                            B, C, NH, fdpo_attention_bf16(a->precision));
        linear_backward(m, d_ln, G(qkvw, l * C * 3 * C), G(qkvb, l * 3 * C), d_qkv, ln1, p->qkvw + l * C * 3 * C,
                        n, C, 3 * C);
        fdpo_lora_backward(m, FDPO_LORA_C_ATTN, l, d_ln, d_qkv, ln1, n, NULL);
        fdpo_k_layernorm_backward(d_res, G(ln1w, l * C), G(ln1b, l * C), d_ln, residual, p->ln1w + l * C,
                                  a->ln1_mean + row, a->ln1_rstd + row, n, C);
        if (layer_hooks && m->on_layer_grads) m->on_layer_grads(m->on_layer_grads_ctx, l); /* layer l is final */
    }
    if (g) fdpo_k_encoder_backward(g->wte, g->wpe, d_res, a->tokens + t0, a->pos + t0, n, C);
#undef G
}

/* d inp [K, C] (overwritten) and dwte of the fused head over packed rows k0..k1 = K, whose
 * ln_f outputs are inp [K, C] */
static void lmhead_backward_rows(fdpo_gpt2 *m, float *dinp, float *dwte, size_t k0, size_t k1, const float *inp,
                                 int logits_ready) {
    fdpo_gpt2_acts *a = m->acts;
    size_t C = m->config.n_embd, V = m->config.vocab_size, chunk = a->head_chunk;
    fdpo_bf16_weight wb = {NULL, NULL};
    if (a->precision == FDPO_PRECISION_BF16) wb = fdpo_model_bf16_weight(m, m->params.wte, k1 - k0, chunk);
    fdpo_k_lmhead_logsoftmax_backward_chunked(dinp, dwte, a->cd + k0, a->clse + k0, a->ctargets + k0, inp,
                                              m->params.wte, wb, k1 - k0, C, V, chunk,
                                              a->head_scratch + k0 * (a->head_keep ? V : chunk),
                                              a->head_bf16, logits_ready);
}

/* The fused LM head's backward over the packed rows k0..k1 (tokens [t0, t1)): d ln_f into
 * a->d_ln's rows t0..t1 (0 for rows without a gradient; with head_rows_only packed in its
 * first k1 - k0 rows, where the last block wants it), dW into dwte (NULL: frozen). The
 * packed operands live in the slice's own rows of d_atty and d_qkv, free until its blocks. */
static void lmhead_rows_backward_fused(fdpo_gpt2 *m, float *dwte, size_t k0, size_t k1, size_t t0, size_t t1,
                                       int logits_ready) {
    fdpo_gpt2_acts *a = m->acts;
    size_t C = m->config.n_embd;
    if (a->head_rows_only) { /* ln_f's rows are packed already */
        lmhead_backward_rows(m, a->d_ln + t0 * C, dwte, k0, k1, a->lnf + t0 * C, logits_ready);
        return;
    }
    float *lnf_packed = a->d_atty + t0 * C, *dlnf_packed = a->d_qkv + t0 * 3 * C;
    fdpo_k_gather_rows(lnf_packed, a->lnf, a->rows + k0, k1 - k0, C);
    lmhead_backward_rows(m, dlnf_packed, dwte, k0, k1, lnf_packed, logits_ready);
    memset(a->d_ln + t0 * C, 0, (t1 - t0) * C * sizeof(float));
    for (size_t k = k0; k < k1; k++) memcpy(a->d_ln + a->rows[k] * C, dlnf_packed + (k - k0) * C, C * sizeof(float));
}

/* g [P] += the n_slices - 1 buffers sg [n_slices - 1, P], added in buffer order per element,
 * and the buffers cleared for the next backward; called by every thread of the region, each
 * taking blocks of SUM_BLOCK elements. Buffer by buffer over a block (contiguous rows, which
 * vectorise; the block of g stays in L1): the old loop nest, buffers inside, ran scalar
 * (~1.5 % of a small model's step). The same adds in the same order per element. */
#define SUM_BLOCK 2048
static void slice_grads_sum(float *g, float *sg, size_t P, int n_slices) {
    long n_blocks = (long)((P + SUM_BLOCK - 1) / SUM_BLOCK);
#pragma omp for schedule(static)
    for (long blk = 0; blk < n_blocks; blk++) {
        size_t lo = (size_t)blk * SUM_BLOCK, len = P - lo < SUM_BLOCK ? P - lo : SUM_BLOCK;
        float *restrict gb = g + lo;
        for (int t = 1; t < n_slices; t++) {
            float *restrict sb = sg + (size_t)(t - 1) * P + lo;
#pragma omp simd
            for (size_t j = 0; j < len; j++) {
                gb[j] += sb[j];
                sb[j] = 0.0f;
            }
        }
    }
}

/* Sliced backward (see slice_plan): thread i runs its slice's head and trunk into its own
 * gradients (thread 0: the model's), then all add the others' buffers to the model's in
 * thread order and clear them. Layer hooks run afterwards, when every layer is final. */
static void backward_sliced(fdpo_gpt2 *m, int n_slices, size_t K, int logits_ready) {
    fdpo_gpt2_acts *a = m->acts;
    size_t P = m->n_params, kb[FDPO_MAX_SLICES + 1];
    slice_rows(a, K, n_slices, kb);
    if (a->slice_grads_cap < (size_t)(n_slices - 1) * P) { /* zeroed once; the sum below re-zeroes them */
        free(a->slice_grads);
        a->slice_grads_cap = (size_t)(n_slices - 1) * P;
        a->slice_grads = fdpo_calloc(a->slice_grads_cap, sizeof(float));
    }
#pragma omp parallel num_threads(n_slices)
    {
        for (int i = omp_get_thread_num(); i < n_slices; i += omp_get_num_threads()) { /* slice i: buffer i */
            fdpo_gpt2_params gi = m->grads;
            if (i > 0) point_params(&gi, a->slice_grads + (size_t)(i - 1) * P, m->tensors);
            size_t s0 = a->slice_bounds[i], s1 = a->slice_bounds[i + 1];
            lmhead_rows_backward_fused(m, gi.wte, kb[i], kb[i + 1], a->seq_offset[s0], a->seq_offset[s1], logits_ready);
            backward_trunk(m, &gi, s0, s1, kb[i], kb[i + 1] - kb[i], 0);
        }
#pragma omp barrier
        slice_grads_sum(m->grads_memory, a->slice_grads, P, n_slices);
    }
    if (m->on_layer_grads)
        for (size_t l = m->config.n_layer; l-- > 0;) m->on_layer_grads(m->on_layer_grads_ctx, l);
}

/* d_lnf == NULL: from d_token_logp through the LM head; else from the final hidden states */
static int gpt2_backward(fdpo_gpt2 *m, const float *d_token_logp, const float *d_lnf) {
    if (m->config.arch == FDPO_ARCH_LLAMA) {
        if (!m->grads_memory && !fdpo_lora_frozen(m)) fdpo_gpt2_zero_grad(m);
        return d_lnf ? fdpo_llama_backward_hidden(m, d_lnf) : fdpo_llama_backward(m, d_token_logp);
    }
    fdpo_gpt2_acts *a = m->acts;
    if (!a || !a->has_forward) return fdpo_error("gpt2 backward: no forward pass to differentiate");
    if (!m->grads_memory && !fdpo_lora_frozen(m)) fdpo_gpt2_zero_grad(m);
    const fdpo_gpt2_config *c = &m->config;
    size_t N = a->n_tokens, B = a->n_seq, C = c->n_embd, V = c->vocab_size;
    /* LoRA: the base is frozen, no base gradient is computed (the kernels skip NULL ones) */
    fdpo_gpt2_params *g = fdpo_lora_frozen(m) ? NULL : &m->grads;

    /* The logits buffer becomes d logits (the forward's logits are not needed afterwards).
     * Rows without a gradient (prompt tokens, no target) add nothing to the LM head
     * backward, the largest matmuls of the step: pack the K active rows to the front. */
    size_t K = 0;
    if (d_lnf) { /* no LM head */
        if (a->head_rows_only)
            return fdpo_error("gpt2 backward_hidden: the forward (fused_head) ran the last block on the LM head's "
                              "rows only; the other hidden states were not computed");
        memcpy(a->d_ln, d_lnf, N * C * sizeof(float));
        goto trunk;
    }
    for (size_t t = 0; t < N; t++) {
        /* head_rows_only: exactly the forward's rows (the last block's packed rows), a 0 gradient included */
        if (a->targets[t] < 0 || (d_token_logp[t] == 0.0f && !a->head_rows_only)) continue;
        if (a->skip_unweighted && a->weights[t] == 0.0f) {
            if (d_token_logp[t] == 0.0f) continue;
            return fdpo_error("gpt2 backward: d_token_logp[%zu] = %g but the forward skipped that token "
                              "(skip_unweighted: its weight is 0)", t, (double)d_token_logp[t]);
        }
        a->rows[K] = t;
        a->ctargets[K] = a->targets[t];
        a->cd[K] = d_token_logp[t];
        a->clse[K] = a->lse[t];
        K++;
    }
    if (a->fused_head) { /* recompute the logits chunk by chunk; dW and d lnf accumulate as we go */
        fused_head_reserve(m, K, a->head_chunk, a->head_keep); /* kept: the forward grew it to K x V */
        /* the backward's rows are the forward's rows with a gradient, in the same order: the same
         * count means the same rows, whose logits the forward may have left in head_scratch */
        int logits_ready = a->head_logits_rows == K;
        a->head_logits_rows = SIZE_MAX; /* head_scratch now holds d logits */
        int n_slices = slice_plan(m, a->slice_bounds);
        if (n_slices) {
            backward_sliced(m, n_slices, K, logits_ready);
            a->has_forward = 0;
            return 0;
        }
        lmhead_rows_backward_fused(m, g ? g->wte : NULL, 0, K, 0, N, logits_ready);
    } else if (K == N) {
        fdpo_k_logsoftmax_backward(a->logits, a->lse, a->targets, d_token_logp, N, V);
        head_backward(m, a->d_ln, a->logits, a->lnf, N);
    } else {
        float *lnf_packed = a->d_atty, *dlnf_packed = a->d_qkv; /* both free until the blocks */
        fdpo_k_gather_rows(a->logits, a->logits, a->rows, K, V);
        fdpo_k_gather_rows(lnf_packed, a->lnf, a->rows, K, C);
        memset(a->d_ln, 0, N * C * sizeof(float));
        if (K > 0) {
            fdpo_k_logsoftmax_backward(a->logits, a->clse, a->ctargets, a->cd, K, V);
            head_backward(m, dlnf_packed, a->logits, lnf_packed, K);
            for (size_t k = 0; k < K; k++) memcpy(a->d_ln + a->rows[k] * C, dlnf_packed + k * C, C * sizeof(float));
        }
    }
trunk:
    backward_trunk(m, g, 0, B, 0, K, 1);
    a->has_forward = 0; /* the logits are gone; a second backward needs a new forward */
    return 0;
}

int fdpo_gpt2_backward(fdpo_gpt2 *m, const float *d_token_logp) { return gpt2_backward(m, d_token_logp, NULL); }
int fdpo_gpt2_backward_hidden(fdpo_gpt2 *m, const float *d_lnf) { return gpt2_backward(m, NULL, d_lnf); }
const float *fdpo_gpt2_hidden(const fdpo_gpt2 *m) {
    if (m->config.arch == FDPO_ARCH_LLAMA) return fdpo_llama_hidden(m);
    return m->acts && m->acts->has_forward && !m->acts->head_rows_only ? m->acts->lnf : NULL;
}

void fdpo_batch_seq_to_token_grad(const fdpo_batch *b, const float *d_seq_logp, float *d_token_logp) {
    for (size_t s = 0; s < b->n_seq; s++) {
        for (size_t t = b->seq_offset[s]; t < b->seq_offset[s + 1]; t++) {
            float w = b->targets[t] < 0 ? 0.0f : (b->weights ? b->weights[t] : 1.0f);
            d_token_logp[t] = d_seq_logp[s] * w;
        }
    }
}

/* One differing field of fdpo_gpt2_config_diff: "name A vs B" appended to buf (", " between). */
typedef struct { char *buf; size_t size, len, n; } config_diff;

static void diff_add(config_diff *d, const char *name, const char *va, const char *vb) {
    d->n++;
    if (!d->buf || d->len >= d->size) return;
    int k = snprintf(d->buf + d->len, d->size - d->len, "%s%s %s vs %s", d->n > 1 ? ", " : "", name, va, vb);
    if (k > 0) d->len += (size_t)k;
}

static void diff_size(config_diff *d, const char *name, size_t a, size_t b) {
    if (a == b) return;
    char va[32], vb[32];
    snprintf(va, sizeof va, "%zu", a);
    snprintf(vb, sizeof vb, "%zu", b);
    diff_add(d, name, va, vb);
}

static void diff_num(config_diff *d, const char *name, double a, double b) {
    if (a == b) return;
    char va[32], vb[32];
    snprintf(va, sizeof va, "%g", a);
    snprintf(vb, sizeof vb, "%g", b);
    if (!strcmp(va, vb)) { snprintf(va, sizeof va, "%.17g", a); snprintf(vb, sizeof vb, "%.17g", b); }
    diff_add(d, name, va, vb);
}

/* The fields that make two configs one architecture, each compared once: equal and the
 * messages that name what differs read this list (fdpo_gpt2_config_hash keeps its own list:
 * a field added here is added there by hand). */
size_t fdpo_gpt2_config_diff(const fdpo_gpt2_config *a, const fdpo_gpt2_config *b, char *buf, size_t size) {
    config_diff d = {buf, size, 0, 0};
    if (buf && size) buf[0] = 0;
    if (a->arch != b->arch || (a->num_labels > 0) != (b->num_labels > 0))
        diff_add(&d, "architectures", fdpo_gpt2_architecture(a, a->num_labels > 0), fdpo_gpt2_architecture(b, b->num_labels > 0));
    diff_size(&d, "num_labels", a->num_labels, b->num_labels);
    diff_size(&d, "n_layer", a->n_layer, b->n_layer);
    diff_size(&d, "n_embd", a->n_embd, b->n_embd);
    diff_size(&d, "n_head", a->n_head, b->n_head);
    diff_size(&d, "vocab_size", a->vocab_size, b->vocab_size);
    diff_size(&d, "n_positions", a->n_positions, b->n_positions);
    diff_num(&d, "layer_norm_epsilon", a->layer_norm_epsilon, b->layer_norm_epsilon);
    if (a->arch == FDPO_ARCH_LLAMA && b->arch == FDPO_ARCH_LLAMA) {
        diff_size(&d, "num_key_value_heads", a->n_kv_head, b->n_kv_head);
        diff_size(&d, "intermediate_size", a->intermediate_size, b->intermediate_size);
        /* the effective size: an explicit head_dim equal to hidden/heads (transformers writes it) is no difference */
        diff_size(&d, "head_dim", fdpo_llama_head_dim(a), fdpo_llama_head_dim(b));
        diff_num(&d, "rope_theta", a->rope_theta, b->rope_theta);
        diff_size(&d, "tie_word_embeddings", (size_t)a->tie_word_embeddings, (size_t)b->tie_word_embeddings);
        diff_size(&d, "qkv_bias", (size_t)a->qkv_bias, (size_t)b->qkv_bias);
        diff_size(&d, "o_bias", (size_t)a->o_bias, (size_t)b->o_bias);
        diff_size(&d, "mlp_bias", (size_t)a->mlp_bias, (size_t)b->mlp_bias);
        diff_num(&d, "rope_scaling.factor", a->rope_factor, b->rope_factor);
        diff_num(&d, "rope_scaling.low_freq_factor", a->rope_low_freq_factor, b->rope_low_freq_factor);
        diff_num(&d, "rope_scaling.high_freq_factor", a->rope_high_freq_factor, b->rope_high_freq_factor);
        diff_size(&d, "rope_scaling.original_max_position_embeddings", a->rope_original_max_position,
                  b->rope_original_max_position);
    }
    return d.n;
}

int fdpo_gpt2_config_equal(const fdpo_gpt2_config *a, const fdpo_gpt2_config *b) {
    return fdpo_gpt2_config_diff(a, b, NULL, 0) == 0;
}

uint64_t fdpo_gpt2_config_hash(uint64_t h, const fdpo_gpt2_config *c) {
    /* field by field (not the struct's bytes: padding, model_type): the ones compared above */
    const uint64_t common[7] = {(uint64_t)c->arch, c->vocab_size, c->n_positions, c->n_embd, c->n_layer, c->n_head,
                                c->num_labels};
    h = fdpo_hash64(h, common, sizeof common);
    h = fdpo_hash64(h, &c->layer_norm_epsilon, sizeof c->layer_norm_epsilon);
    if (c->arch != FDPO_ARCH_LLAMA) return h;
    /* head_dim as config_diff sees it, 0 for hidden/heads whether written or not: the keys of
     * caches made before an explicit head_dim was compared by its effect stay the same */
    const size_t hd = fdpo_llama_head_dim(c) == c->n_embd / c->n_head ? 0 : fdpo_llama_head_dim(c);
    const uint64_t shape[8] = {c->n_kv_head, c->intermediate_size, hd, (uint64_t)c->tie_word_embeddings,
                               (uint64_t)c->qkv_bias, (uint64_t)c->o_bias, (uint64_t)c->mlp_bias,
                               c->rope_original_max_position};
    const double rope[4] = {c->rope_theta, c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor};
    h = fdpo_hash64(h, shape, sizeof shape);
    return fdpo_hash64(h, rope, sizeof rope);
}

int fdpo_gpt2_copy_params(fdpo_gpt2 *dst, const fdpo_gpt2 *src) {
    const fdpo_gpt2_config *a = &dst->config, *b = &src->config;
    char what[512];
    if (fdpo_gpt2_config_diff(a, b, what, sizeof what)) return fdpo_error("copy params: configs differ (%s)", what);
    memcpy(dst->params_memory, src->params_memory, src->n_params * sizeof(float));
    dst->params_bf16_current = 0; /* a frozen model's bf16 copies too */
    return 0;
}
