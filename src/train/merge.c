/* Model merging (linear averaging, task arithmetic): see include/fdpo/merge.h. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/dpo.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/merge.h"
#include "fdpo/tokenizer.h"
#include "fdpo/trainer.h"

int fdpo_merge_opts_check(const fdpo_merge_opts *o) {
    if (o->n_models == 0) return fdpo_error("--model: at least one checkpoint to merge is required");
    /* fdpo_path_check passes NULL (an option not given), but every models[] entry is one
     * given: fdpo_merge would load NULL */
    if (!o->models) return fdpo_error("--model: %zu checkpoints announced (n_models) but no list given", o->n_models);
    for (size_t i = 0; i < o->n_models; i++) {
        if (!o->models[i]) return fdpo_error("--model: checkpoint %zu of %zu is NULL (no directory given)", i + 1, o->n_models);
        if (fdpo_path_check("--model", o->models[i])) return -1;
    }
    if (fdpo_path_check("--base", o->base)) return -1;
    if (!o->base && o->n_models < 2) return fdpo_error("--model: linear merging needs two or more checkpoints (or --base for task arithmetic)");
    if (o->weights)
        for (size_t i = 0; i < o->n_models; i++)
            if (!isfinite(o->weights[i]))   /* the value and its position: "value 1" read as the weight 1 */
                return fdpo_error("--weight: %s (weight %zu of %zu) is not a finite number",
                                  fdpo_shortest(o->weights[i]).s, i + 1, o->n_models);
    return 0;
}

double fdpo_merge_weight(const fdpo_merge_opts *o, size_t i) {
    if (o->weights) return o->weights[i];
    return o->base ? 1.0 : 1.0 / (double)o->n_models;
}

int fdpo_merge_claim_out(const char *out, int overwrite) {
    /* OUT's lock from here to the save (held to process exit, as a training run's): checked
     * only at the start, a checkpoint another run wrote there while the inputs loaded was
     * replaced; and the recovery may restore a checkpoint from OUT.old, checked after it */
    if (fdpo_checkpoint_recover(out)) return -1;
    if (overwrite) return 0;
    /* Under MPI rank 0 looks and its verdict is the job's, given to every rank before rank 0
     * goes on (fdpo_dist_all_ok waits for all): nothing orders a rank's own look after the
     * claim before rank 0's save, and a late rank found the merge this job had just written. */
    int rc = 0;
    if (fdpo_dist_is_root()) {
        /* any run's output, not only a checkpoint: the swap would drop its other files */
        const char *held = fdpo_out_holds_run(out, 0), *run_file = held ? NULL : fdpo_out_run_file(out);
        if (held) rc = fdpo_error("--out: %s already holds %s (use --overwrite to replace it)", out, held);
        /* a run that never saved: its metrics would describe another model than the merged one */
        else if (run_file) rc = fdpo_error("--out: %s already holds another run's output (%s) (use --overwrite to replace it)",
                                           out, run_file);
    }
    rc = fdpo_dist_all_ok(rc);
    if (rc) fdpo_dir_unlock(out);
    return rc;
}

/* The same architecture, and a tokenizer that encodes as the first's (fdpo_tokenizer_diff:
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
    int differs = fdpo_tokenizer_diff(tok, first_tok, what, sizeof what);
    fdpo_tokenizer_free(tok);
    if (differs)
        return fdpo_error("%s: tokenizer differs from %s's (%s): merged weights would mean different tokens", dir, first_dir,
                          what);
    return 0;
}

/* The output of merge --lora ADAPTER --model BASE takes BASE's tokenizer: where the adapter
 * directory has its own (a LoRA run's OUT: the one it was trained and is read with), the two
 * must encode alike, or the folded weights would be read as other tokens. */
static int lora_tokenizer_check(const char *adapter_dir, const char *base_dir) {
    if (!fdpo_tokenizer_dir_has_files(adapter_dir)) return 0;   /* PEFT's save_pretrained writes none: BASE's is its */
    fdpo_tokenizer *own = fdpo_tokenizer_load_dir(adapter_dir), *base = own ? fdpo_checkpoint_load_tokenizer(base_dir) : NULL;
    char what[512];
    int rc = !own ? fdpo_error_context("--lora %s", adapter_dir) : !base ? fdpo_error_context("--model %s", base_dir) : 0;
    if (!rc && fdpo_tokenizer_diff(own, base, what, sizeof what))
        rc = fdpo_error("--lora %s: its tokenizer differs from --model %s's (%s): the folded model, written with %s's "
                        "tokenizer, would read the adapter's ids as other tokens", adapter_dir, base_dir, what, base_dir);
    fdpo_tokenizer_free(own);
    fdpo_tokenizer_free(base);
    return rc;
}

/* exact laid out as m's parameters: the base's values (laid out as a model of base_config)
 * by tensor name, where reading the adapter made m a reward model (a score head added: GPT-2's
 * wte one row longer, Llama's score.weight in place of lm_head); the score head, which the
 * adapter fills, stays 0. Frees exact. */
static double *exact_as_laid_out(double *exact, const fdpo_gpt2_config *base_config, const fdpo_gpt2 *m) {
    if (base_config->num_labels == m->config.num_labels) return exact;
    fdpo_gpt2 *layout = fdpo_gpt2_create(base_config);   /* its table only: the pages stay untouched */
    double *out = layout ? calloc(m->n_params, sizeof *out) : NULL;
    for (size_t i = 0; out && i < m->n_tensors; i++)
        for (size_t j = 0; j < layout->n_tensors; j++)
            if (!strcmp(m->tensors[i].name, layout->tensors[j].name)) {
                size_t n = m->tensors[i].numel < layout->tensors[j].numel ? m->tensors[i].numel : layout->tensors[j].numel;
                memcpy(out + m->tensors[i].offset, exact + layout->tensors[j].offset, n * sizeof *out);
                break;
            }
    if (layout && !out) fdpo_error("out of memory for %zu parameters", m->n_params);
    fdpo_gpt2_free(layout);
    free(exact);
    return out;
}

fdpo_gpt2 *fdpo_merge_lora(const char *adapter_dir, const char *base_dir) {
    if (!fdpo_lora_dir_has_adapter(adapter_dir)) {
        fdpo_error("--lora: %s has no adapter_config.json (a PEFT LoRA adapter directory)", adapter_dir);
        return NULL;
    }
    char *saved = NULL;
    if (!base_dir && fdpo_lora_peft_base_read(adapter_dir, &saved)) { fdpo_error_context("--lora %s", adapter_dir); return NULL; }
    const char *base = base_dir ? base_dir : saved;
    fdpo_gpt2 *m = NULL;
    if (!base) { fdpo_error("--model: required (%s names no base_model_name_or_path)", adapter_dir); goto done; }
    /* an adapter directory reads as its base + its adapter, and the fold would add this one on
     * top (a continued adapter, which holds its predecessor's training, counted it twice): one
     * level only, as every reader of a LoRA checkpoint (fdpo_lora_load_checkpoint) */
    if (fdpo_lora_is_checkpoint(base)) {
        if (base_dir) fdpo_error("--model %s is itself a LoRA adapter directory (a base + its adapter), not a full "
                                 "checkpoint; give the base --lora %s adapts, or merge it first (fdpo merge --lora %s "
                                 "--out DIR)", base, adapter_dir, base);
        else fdpo_error("--lora %s: base_model_name_or_path %s is itself a LoRA adapter directory; merge it first "
                        "(fdpo merge --lora %s --out DIR)", adapter_dir, base, base);
        goto done;
    }
    if (base_dir && lora_tokenizer_check(adapter_dir, base_dir)) goto done;
    double *exact = NULL;   /* an F64 base's own values: the fold rounds them once, in the sum */
    if (!(m = fdpo_checkpoint_load_model_exact(base, &exact))) { fdpo_error_context("--model %s", base); goto done; }
    const fdpo_gpt2_config base_config = m->config;
    if (!(m = fdpo_lora_load_onto(adapter_dir, m, base))) { fdpo_error_context("--lora %s", adapter_dir); free(exact); goto done; }
    if (exact && !(exact = exact_as_laid_out(exact, &base_config, m))) { fdpo_gpt2_free(m); m = NULL; goto done; }
    fdpo_lora_merge_exact(m, exact);
    free(exact);
    for (size_t k = 0; k < m->n_params; k++)
        if (!isfinite(m->params_memory[k])) {
            char where[192];
            fdpo_gpt2_param_name(m, k, where, sizeof where);
            fdpo_error("--lora %s: folding it into %s overflows float32 at %s (W + (alpha/r) B A is beyond %g)", adapter_dir,
                       base, where, (double)FLT_MAX);
            fdpo_gpt2_free(m); m = NULL;
            break;
        }
done:
    free(saved);
    return m;
}

/* The formula of o with its inputs and weights, for messages: "0.5 * A + 0.5 * B", or
 * "BASE + 1 * (A - BASE)" for task arithmetic */
static void merge_sum(const fdpo_merge_opts *o, char *buf, size_t size) {
    size_t k = 0;
    buf[0] = 0;
    if (o->base) k += (size_t)snprintf(buf, size, "%s", o->base);
    for (size_t i = 0; i < o->n_models && k < size; i++) {
        const char *plus = i || o->base ? " + " : "";
        if (o->base) k += (size_t)snprintf(buf + k, size - k, "%s%g * (%s - %s)", plus, fdpo_merge_weight(o, i), o->models[i], o->base);
        else k += (size_t)snprintf(buf + k, size - k, "%s%g * %s", plus, fdpo_merge_weight(o, i), o->models[i]);
    }
}

fdpo_gpt2 *fdpo_merge(const fdpo_merge_opts *o) {
    if (fdpo_merge_opts_check(o)) return NULL;
    const char *first_dir = o->base ? o->base : o->models[0];
    /* an F64 input's own values (the model's floats round them): the sum rounds once; the
     * first model of a linear merge is read again below as models[0] */
    double *first_exact = NULL;
    fdpo_gpt2 *first = fdpo_checkpoint_load_model_exact(first_dir, o->base ? &first_exact : NULL);
    if (!first) return NULL;
    fdpo_tokenizer *first_tok = fdpo_checkpoint_load_tokenizer(first_dir);
    if (!first_tok) { fdpo_gpt2_free(first); free(first_exact); return NULL; }
    fdpo_lora_merge(first);   /* LoRA checkpoints are averaged as the models they define (base + s B A) */
    size_t n = first->n_params;
    double *acc = calloc(n, sizeof *acc);   /* theta in double: the base (or 0), then each term in order */
    if (!acc) {
        fdpo_gpt2_free(first); free(first_exact); fdpo_tokenizer_free(first_tok);
        fdpo_error("out of memory for %zu parameters", n);
        return NULL;
    }
    if (o->base) for (size_t k = 0; k < n; k++) acc[k] = first_exact ? first_exact[k] : first->params_memory[k];
    for (size_t i = 0; i < o->n_models; i++) {
        double *exact = NULL;
        fdpo_gpt2 *m = fdpo_checkpoint_load_model_exact(o->models[i], &exact);
        if (m) fdpo_lora_merge(m);
        if (!m || check_compatible(o->models[i], m, first_dir, first, first_tok)) {
            fdpo_gpt2_free(m); free(exact); fdpo_gpt2_free(first); free(first_exact); fdpo_tokenizer_free(first_tok); free(acc);
            return NULL;
        }
        double w = fdpo_merge_weight(o, i);
        const float *p = m->params_memory, *b = first->params_memory;
        for (size_t k = 0; k < n; k++) {
            double x = exact ? exact[k] : (double)p[k];
            if (o->base) acc[k] += w * (x - (first_exact ? first_exact[k] : (double)b[k]));
            else acc[k] += w * x;
        }
        fdpo_gpt2_free(m);
        free(exact);
    }
    free(first_exact);
    fdpo_tokenizer_free(first_tok);
    float *dst = first->params_memory;
    for (size_t k = 0; k < n; k++) dst[k] = (float)acc[k];
    for (size_t k = 0; k < n; k++)
        if (!isfinite(dst[k])) {
            /* the inputs' values or the weights: name the element and the sum that left float's range */
            char where[192], sum[512];
            fdpo_gpt2_param_name(first, k, where, sizeof where);
            merge_sum(o, sum, sizeof sum);
            fdpo_error("the merge overflows float32 at %s: %s = %g is beyond %g", where, sum, acc[k], (double)FLT_MAX);
            fdpo_gpt2_free(first); free(acc);
            return NULL;
        }
    free(acc);
    return first;
}
