/* Private to src/model: the Llama decoder behind fdpo_decoder (include/fdpo/decode.h). */
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
#endif
