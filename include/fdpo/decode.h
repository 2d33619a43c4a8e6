/* Incremental GPT-2 decoding with a key/value cache.
 *
 * A decoder holds the keys and values of up to max_seqs sequences ("slots"), each up to
 * max_len tokens long. One call appends new tokens to any number of slots at once: the
 * new tokens of all slots are packed into R rows, every matmul runs over the R rows (one
 * sgemm per weight), and attention runs per row over its own slot's cache. Prefill (many
 * tokens, one slot or several) and decoding steps (one token per slot) are the same call.
 * The model's parameters are only read; the decoder owns its cache and scratch buffers.
 * In bf16 (the model's precision at create) it reads its own packed bf16 copy of the
 * weights, made at create: after the parameters change (an optimizer step), call
 * fdpo_decoder_refresh_weights before the next forward. */
#ifndef FDPO_DECODE_H
#define FDPO_DECODE_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/gpt2.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fdpo_decoder fdpo_decoder;

/* max_len <= n_positions (error otherwise). */
fdpo_decoder *fdpo_decoder_create(const fdpo_gpt2 *m, size_t max_seqs, size_t max_len);
void fdpo_decoder_free(fdpo_decoder *d);
/* Make the packed bf16 weights again from the model's current parameters, in the buffers
 * they already have (no allocation); nothing to do in fp32, which reads the parameters. The
 * caches and slots are kept. */
void fdpo_decoder_refresh_weights(fdpo_decoder *d);
const fdpo_gpt2 *fdpo_decoder_model(const fdpo_decoder *d);
size_t fdpo_decoder_max_len(const fdpo_decoder *d);
/* Forget a slot's tokens (its length becomes 0). */
void fdpo_decoder_reset(fdpo_decoder *d, size_t slot);
size_t fdpo_decoder_len(const fdpo_decoder *d, size_t slot);
/* Copy slot src's cache into slot dst (to share one prompt prefill among n samples). */
void fdpo_decoder_copy_slot(fdpo_decoder *d, size_t dst, size_t src);

/* Append n_new[i] tokens to slot slots[i] for i < n_slots (slots distinct). tokens holds
 * them packed slot after slot (R = sum n_new rows). Writes logits:
 *   all_logits = 1: [R, V], one row per new token;
 *   all_logits = 0: [n_slots, V], the row of each slot's last new token.
 * Every n_new[i] must be > 0. Errors (nothing appended): a slot out of range or named
 * twice, a slot that would exceed max_len, a token id outside [0, V). */
int fdpo_decoder_forward(fdpo_decoder *d, size_t n_slots, const size_t *slots,
                         const size_t *n_new, const int32_t *tokens, float *logits, int all_logits);

/* e [0:8] = expf (x [0:8]) bit for bit (libm's, glibc's algorithm 8 wide on AVX-512; expf
 * itself outside (-88, 88), without AVX-512, with FDPO_EXPF8_SCALAR=1, or if the check at
 * first use failed): for fp32 results that must keep the bits of a scalar expf loop (the
 * sampler's weights, the fp32 decoder's GELU and softmax). fdpo_expf8_ready: 1 when it
 * runs vectorised. fdpo_expf8_check: how many of 1 in stride of the floats in (-88, 88)
 * differ from expf (0 when not vectorised). */
void fdpo_expf8(float *e, const float *x);
/* e [0:n] = expf (x [0:n]), the bits of fdpo_expf8 (and so of expf) on every element, with
 * one call for the block (the sampler's rows) */
void fdpo_expf_block(float *e, const float *x, size_t n);
int fdpo_expf8_ready(void);
size_t fdpo_expf8_check(uint32_t stride);

#ifdef __cplusplus
}
#endif

#endif
