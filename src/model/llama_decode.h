/* Private to src/model: the Llama decoder behind fdpo_decoder (include/fdpo/decode.h), and
 * the packed bf16 small-rows matmul both decoders share (gpt2_decode.c). */
#ifndef FDPO_LLAMA_DECODE_H
#define FDPO_LLAMA_DECODE_H
#include <stddef.h>
#include <stdint.h>
#include "fdpo/gpt2.h"

typedef struct llama_decoder llama_decoder;
llama_decoder *fdpo_llama_decoder_create(const fdpo_gpt2 *m, size_t max_seqs, size_t max_len);
void fdpo_llama_decoder_free(llama_decoder *d);
void fdpo_llama_decoder_reset(llama_decoder *d, size_t slot);
/* The model's parameters changed: every packed bf16 weight is made again at its next use. */
void fdpo_llama_decoder_refresh_weights(llama_decoder *d);
size_t fdpo_llama_decoder_len(const llama_decoder *d, size_t slot);
void fdpo_llama_decoder_copy_slot(llama_decoder *d, size_t dst, size_t src);
/* Arguments checked by fdpo_decoder_forward; R = sum n_new. */
int fdpo_llama_decoder_forward(llama_decoder *d, size_t n_slots, const size_t *slots, const size_t *n_new,
                          const int32_t *tokens, float *logits, int all_logits, size_t R);

/* bf16 weights packed for the decoders' small-rows driver (gpt2_decode.c): W [IC, OC] with
 * W [i, o] = src [i * si + o * so] (a [OC, IC] weight packs with si = 1, so = IC), rounded
 * to bf16, fdpo_decode_packed_size(IC, OC) elements. */
size_t fdpo_decode_packed_size(size_t IC, size_t OC);
void fdpo_decode_pack_bf16(uint16_t *dst, const float *src, size_t IC, size_t OC, size_t si, size_t so);
/* out [R, OC] (= or +=, accumulate) bf16(inp [R, IC]) @ W (packed), fp32 sums, any R, each
 * output summed in an order that depends on neither R nor the thread count (fp32 FMAs of
 * the widened bf16 pairs in i order, or vdpbf16ps where the CPU runs it fast; the portable
 * tile has the widening route's sums). Scratch: in16 R * (IC + 1) bf16 (the vdpbf16ps
 * route's operands), acc fdpo_decode_packed_scratch(R) floats (for the current thread
 * count). */
void fdpo_decode_packed_matmul(float *out, const float *inp, const uint16_t *wp, size_t R, size_t IC, size_t OC,
                               int accumulate, uint16_t *in16, float *acc);
size_t fdpo_decode_packed_scratch(size_t R);
/* fdpo_decode_packed_matmul as thread t of a team of nt's share, inside the caller's
 * parallel region (every thread of the team calls it). Thread t computes the output columns
 * fdpo_decode_share_cols gives it. rounded: inp holds bf16 values already (read in place,
 * no rounded copy). The vdpbf16ps route reads bf16 rows: x16 [R, IC rounded up to even]
 * (the pad column 0), bf16(inp), whole when every thread enters the call (the caller's
 * barrier) and unchanged until the team's next barrier after it; with x16 NULL the route
 * copies inp into in16 itself, with a barrier before and after. */
void fdpo_decode_packed_matmul_share(float *out, const float *inp, const uint16_t *wp, size_t R, size_t IC,
                                     size_t OC, int accumulate, uint16_t *in16, float *acc, size_t t, size_t nt,
                                     int rounded, const uint16_t *x16);
/* 1 when fdpo_decode_packed_matmul_share takes bf16 rows (the vdpbf16ps route: worth an x16) */
int fdpo_decode_reads_bf16_rows(void);
/* The x16 buffer of a one-region step: *buf grown to need elements (zeroed when made, so the
 * pad columns the steps never write stay 0) where the route reads bf16 rows, else NULL. */
uint16_t *fdpo_decode_x16(uint16_t **buf, size_t *cap, size_t need);
/* [*o0, *o1): the output columns of out [R, OC] thread t of nt computes in
 * fdpo_decode_packed_matmul_share (o0 >= o1: none) */
void fdpo_decode_share_cols(size_t OC, size_t t, size_t nt, size_t *o0, size_t *o1);
/* fp32: out [R, OC] (= or +=) inp [R, IC] @ w [IC, OC] as stored, R <= 16 (the decoder's
 * small-rows path; more rows go to the GEMM), each output summed in i order from 0 with one
 * fused multiply-add per term whatever R and the thread count. acc: fdpo_decode_f32_scratch
 * (R, OC) floats. */
void fdpo_decode_f32_matmul(float *out, const float *inp, const float *w, size_t R, size_t IC, size_t OC,
                            int accumulate, float *acc);
size_t fdpo_decode_f32_scratch(size_t R, size_t OC);
#endif
