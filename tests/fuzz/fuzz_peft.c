/* libFuzzer: PEFT adapter_config.json (fdpo_lora_config_parse) against a tiny model of the
 * family the first byte picks (even: GPT-2, odd: Llama with GQA). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/lora.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static fdpo_gpt2 *models[2];
    if (!models[0]) {
        fdpo_gpt2_config g = {.vocab_size = 17, .n_positions = 8, .n_embd = 8, .n_layer = 2, .n_head = 2, .layer_norm_epsilon = 1e-5f};
        fdpo_gpt2_config l = g;
        l.arch = FDPO_ARCH_LLAMA; l.n_kv_head = 1; l.intermediate_size = 12; l.rope_theta = 10000; l.tie_word_embeddings = 1;
        models[0] = fdpo_gpt2_create(&g);
        models[1] = fdpo_gpt2_create(&l);
    }
    fdpo_gpt2 *m = models[data[0] & 1];
    fdpo_lora_opts o;
    char *targets = NULL;
    if (fdpo_lora_config_parse("adapter_config.json", (const char *)data + 1, size - 1, m, &o, &targets) == 0) {
        /* an accepted config attaches: A [r, in] and B [out, r] per adapted module */
        if (o.r < 1 || !(o.dropout >= 0 && o.dropout < 1) || !(o.alpha > 0)) abort();
        if (o.r > 64) { free(targets); return 0; }   /* valid but large: skip the allocation */
        if (fdpo_lora_attach(m, &o, 1)) abort();
        const fdpo_gpt2 *v = &m->lora->view;
        if (v->n_tensors < 2 || v->n_tensors % 2) abort();
        for (size_t i = 0; i < v->n_tensors; i += 2)
            if (v->tensors[i].shape[0] != (size_t)o.r || v->tensors[i + 1].shape[1] != (size_t)o.r) abort();
        fdpo_lora_detach(m);
    }
    free(targets);
    return 0;
}
