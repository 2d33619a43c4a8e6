/* Private to src/model: the Llama decoder behind fdpo_decoder (include/fdpo/decode.h), and
 * the small-rows kernel both decoders share (gpt2_decode.c). */
#ifndef FDPO_LLAMA_DECODE_H
#define FDPO_LLAMA_DECODE_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/gpt2.h"

typedef struct llama_decoder llama_decoder;
llama_decoder *fdpo_llama_decoder_create(const fdpo_gpt2 *m, size_t max_seqs, size_t max_len);
void fdpo_llama_decoder_free(llama_decoder *d);
void fdpo_llama_decoder_reset(llama_decoder *d, size_t slot);
size_t fdpo_llama_decoder_len(const llama_decoder *d, size_t slot);
void fdpo_llama_decoder_copy_slot(llama_decoder *d, size_t dst, size_t src);
/* Arguments checked by fdpo_decoder_forward; R = sum n_new. */
int fdpo_llama_decoder_forward(llama_decoder *d, size_t n_slots, const size_t *slots, const size_t *n_new,
                          const int32_t *tokens, float *logits, int all_logits, size_t R);

/* Decoding steps of up to DECODE_HEAD_ROWS rows: out [R, OC] (= or +=, accumulate)
 * x [R, IC] @ w [OC, IC]^T in one pass over w, fp32 (w32) or bf16 (w16, w32 NULL; x then
 * bf16-rounded), each output summed in an order that depends on neither R nor the thread
 * count. xpad [ceil(R/8)*8, IC] comes from fdpo_decode_rows_pad. */
#define DECODE_HEAD_ROWS 16
void fdpo_decode_rows_matmul_wt(float *out, const float *xpad, const float *w32, const uint16_t *w16, size_t R,
                                size_t IC, size_t OC, int accumulate);
/* xpad [ceil(R/8)*8, C] = inp [R, C], or in16 widened when in16 is not NULL; the rows past R zero */
void fdpo_decode_rows_pad(float *xpad, const float *inp, const uint16_t *in16, size_t R, size_t C);
#endif
