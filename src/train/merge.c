/* Model merging (linear averaging, task arithmetic): see include/fdpo/merge.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/dpo.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/merge.h"
#include "fdpo/tokenizer.h"

int fdpo_merge_opts_check(const fdpo_merge_opts *o) {
    if (o->n_models == 0) return fdpo_error("--model: at least one checkpoint to merge is required");
    for (size_t i = 0; i < o->n_models; i++)
        if (fdpo_path_check("--model", o->models[i])) return -1;
    if (fdpo_path_check("--base", o->base)) return -1;
    if (!o->base && o->n_models < 2) return fdpo_error("--model: linear merging needs two or more checkpoints (or --base for task arithmetic)");
    if (o->weights)
        for (size_t i = 0; i < o->n_models; i++)
            if (!isfinite(o->weights[i])) return fdpo_error("--weight: value %zu is not a finite number", i + 1);
    return 0;
}

double fdpo_merge_weight(const fdpo_merge_opts *o, size_t i) {
    if (o->weights) return o->weights[i];
    return o->base ? 1.0 : 1.0 / (double)o->n_models;
}

/* The same architecture, and a tokenizer that encodes as the first's (fdpo_tokenizer_same:
 * by content, so the same tokenizer saved in another format or with another chat template
 * merges, and two BPEs of one size but other merges do not). */
static int check_compatible(const char *dir, const fdpo_gpt2 *m, const char *first_dir, const fdpo_gpt2 *first,
                            const fdpo_tokenizer *first_tok) {
    const fdpo_gpt2_config *a = &m->config, *b = &first->config;
    char what[512];   /* the fields that differ, not a fixed list of shapes that may all be equal */
    if (fdpo_gpt2_config_diff(a, b, what, sizeof what))
        return fdpo_error("%s: architecture differs from %s (%s)", dir, first_dir, what);
    fdpo_tokenizer *tok = fdpo_checkpoint_load_tokenizer(dir);
    if (!tok) return -1;
    int same = fdpo_tokenizer_same(tok, first_tok);
    fdpo_tokenizer_free(tok);
    if (!same)
        return fdpo_error("%s: tokenizer differs from %s's (merged weights would mean different tokens)", dir, first_dir);
    return 0;
}

fdpo_gpt2 *fdpo_merge_lora(const char *adapter_dir, const char *base_dir) {
    if (!fdpo_lora_dir_has_adapter(adapter_dir)) {
        fdpo_error("--lora: %s has no adapter_config.json (a PEFT LoRA adapter directory)", adapter_dir);
        return NULL;
    }
    char *saved = base_dir ? NULL : fdpo_lora_peft_base(adapter_dir);
    const char *base = base_dir ? base_dir : saved;
    fdpo_gpt2 *m = NULL;
    if (!base) { fdpo_error("--model: required (%s names no base_model_name_or_path)", adapter_dir); goto done; }
    if (!(m = fdpo_checkpoint_load_model(base))) { fdpo_error_context("--model %s", base); goto done; }
    if (!(m = fdpo_lora_load_onto(adapter_dir, m))) { fdpo_error_context("--lora %s", adapter_dir); goto done; }
    fdpo_lora_merge(m);
    for (size_t k = 0; k < m->n_params; k++)
        if (!isfinite(m->params_memory[k])) {
            fdpo_error("--lora %s: the merged parameters overflow float32 (parameter %zu is not finite)", adapter_dir, k);
            fdpo_gpt2_free(m); m = NULL;
            break;
        }
done:
    free(saved);
    return m;
}

fdpo_gpt2 *fdpo_merge(const fdpo_merge_opts *o) {
    if (fdpo_merge_opts_check(o)) return NULL;
    const char *first_dir = o->base ? o->base : o->models[0];
    fdpo_gpt2 *first = fdpo_checkpoint_load_model(first_dir);
    if (!first) return NULL;
    fdpo_tokenizer *first_tok = fdpo_checkpoint_load_tokenizer(first_dir);
    if (!first_tok) { fdpo_gpt2_free(first); return NULL; }
    fdpo_lora_merge(first);   /* LoRA checkpoints are averaged as the models they define (base + s B A) */
    size_t n = first->n_params;
    double *acc = calloc(n, sizeof *acc);   /* theta in double: the base (or 0), then each term in order */
    if (!acc) { fdpo_gpt2_free(first); fdpo_tokenizer_free(first_tok); fdpo_error("out of memory for %zu parameters", n); return NULL; }
    if (acc && o->base) for (size_t k = 0; k < n; k++) acc[k] = first->params_memory[k];
    for (size_t i = 0; i < o->n_models; i++) {
        fdpo_gpt2 *m = fdpo_checkpoint_load_model(o->models[i]);
        if (m) fdpo_lora_merge(m);
        if (!m || check_compatible(o->models[i], m, first_dir, first, first_tok)) {
            fdpo_gpt2_free(m); fdpo_gpt2_free(first); fdpo_tokenizer_free(first_tok); free(acc);
            return NULL;
        }
        double w = fdpo_merge_weight(o, i);
        const float *p = m->params_memory;
        if (o->base) {
            const float *b = first->params_memory;
            for (size_t k = 0; k < n; k++) acc[k] += w * ((double)p[k] - (double)b[k]);
        } else {
            for (size_t k = 0; k < n; k++) acc[k] += w * (double)p[k];
        }
        fdpo_gpt2_free(m);
    }
    fdpo_tokenizer_free(first_tok);
    float *dst = first->params_memory;
    for (size_t k = 0; k < n; k++) dst[k] = (float)acc[k];
    free(acc);
    for (size_t k = 0; k < n; k++)
        if (!isfinite(dst[k])) {
            fdpo_gpt2_free(first);
            fdpo_error("--weight: the merged parameters overflow float32 (parameter %zu is not finite)", k);
            return NULL;
        }
    return first;
}
