/* fdpo info CKPT: print what fdpo_checkpoint_info_read finds in a checkpoint directory (its
 * config, parameter count, tokenizer kind, training state's step); this file only prints. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include "cli/commands.h"
#include "cli/flags.h"
#include "fdpo/core.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/tokenizer.h"
#include "fdpo/trainer.h"

int cmd_info(int argc, char **argv) {
    int as_json = 0;
    const char *model = NULL;
    fdpo_flag flags[] = {
        {"model", FLAG_STR, &model, NULL, "checkpoint directory (or give it positionally)", 0},
        {"json", FLAG_BOOL, &as_json, "0", "print one JSON object instead of key: value lines", 0},
    };
    int n_pos = 0;
    char **pos = NULL;
    const char *usage = "fdpo info [flags] --model CHECKPOINT_DIR   (or fdpo info CHECKPOINT_DIR)";
    int rc = flags_parse("info", usage, flags, NFLAGS(flags), argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) { free(pos); return 0; }
    if (rc != FLAGS_OK) { free(pos); return -1; }
    if (n_pos > 0 && flags_from_config("model")) model = NULL;   /* CKPT replaces a config file's model, as --model does */
    if (n_pos + (model != NULL) != 1) { free(pos); return fdpo_error("--model: expected one checkpoint directory (usage: %s)", usage); }
    const char *dir = model ? model : pos[0];
    free(pos);
    /* --json prints the path inside a JSON object, which holds UTF-8 text only */
    if (as_json && fdpo_path_utf8_check(model ? "--model" : "a path argument", dir)) return -1;

    fdpo_checkpoint_info info;
    if (fdpo_checkpoint_info_read(dir, &info)) return -1;
    const fdpo_gpt2 *m = info.model;
    const fdpo_gpt2_config *c = &m->config;
    const fdpo_tokenizer *tok = info.tok;
    int llama = c->arch == FDPO_ARCH_LLAMA;
    if (as_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "checkpoint", dir);
        cJSON_AddStringToObject(o, "model_type", info.model_type);
        cJSON_AddStringToObject(o, "architecture", info.architecture);
        cJSON_AddNumberToObject(o, "vocab_size", (double)c->vocab_size);
        cJSON_AddNumberToObject(o, "n_positions", (double)c->n_positions);
        cJSON_AddNumberToObject(o, "n_embd", (double)c->n_embd);
        cJSON_AddNumberToObject(o, "n_layer", (double)c->n_layer);
        cJSON_AddNumberToObject(o, "n_head", (double)c->n_head);
        char eps[32];
        fdpo_fmt_float(eps, sizeof eps, c->layer_norm_epsilon);
        cJSON_AddRawToObject(o, "layer_norm_epsilon", eps);
        cJSON_AddStringToObject(o, "activation_function", llama ? "silu" : "gelu_new");
        if (llama) {
            cJSON_AddNumberToObject(o, "n_kv_head", (double)c->n_kv_head);
            cJSON_AddNumberToObject(o, "intermediate_size", (double)c->intermediate_size);
            cJSON_AddNumberToObject(o, "head_dim", (double)fdpo_llama_head_dim(c));
            cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
            if (c->rope_factor != 0) {
                cJSON *rs = cJSON_AddObjectToObject(o, "rope_scaling");
                cJSON_AddStringToObject(rs, "rope_type", "llama3");
                cJSON_AddNumberToObject(rs, "factor", c->rope_factor);
                cJSON_AddNumberToObject(rs, "low_freq_factor", c->rope_low_freq_factor);
                cJSON_AddNumberToObject(rs, "high_freq_factor", c->rope_high_freq_factor);
                cJSON_AddNumberToObject(rs, "original_max_position_embeddings", (double)c->rope_original_max_position);
            } else {
                cJSON_AddNullToObject(o, "rope_scaling");
            }
            cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
            cJSON_AddBoolToObject(o, "qkv_bias", c->qkv_bias);
            cJSON_AddBoolToObject(o, "o_bias", c->o_bias);
            cJSON_AddBoolToObject(o, "mlp_bias", c->mlp_bias);
        }
        cJSON_AddNumberToObject(o, "parameters", (double)m->n_params);
        cJSON_AddStringToObject(o, "tokenizer", info.tokenizer_kind);
        if (tok) {
            cJSON_AddNumberToObject(o, "tokenizer_vocab_size", (double)fdpo_tokenizer_vocab_size(tok));
            cJSON_AddNumberToObject(o, "eos_token_id", fdpo_tokenizer_eot(tok));
            if (fdpo_tokenizer_bos(tok) >= 0) cJSON_AddNumberToObject(o, "bos_token_id", fdpo_tokenizer_bos(tok));
            cJSON_AddStringToObject(o, "chat_template", info.chat_template);
        }
        if (m->lora) {   /* a LoRA checkpoint: its base + these adapters */
            cJSON *lo = cJSON_AddObjectToObject(o, "lora");
            cJSON_AddStringToObject(lo, "base_model_name_or_path", m->lora->base_model ? m->lora->base_model : "");
            cJSON_AddNumberToObject(lo, "r", (double)m->lora->r);
            cJSON_AddNumberToObject(lo, "lora_alpha", m->lora->alpha);
            cJSON_AddStringToObject(lo, "target_modules", m->lora->targets);
            cJSON_AddNumberToObject(lo, "parameters", (double)m->lora->view.n_params);
        }
        cJSON_AddBoolToObject(o, "training_state", info.has_state);
        if (info.has_state) cJSON_AddNumberToObject(o, "step", (double)info.step);
        char *s = cJSON_PrintUnformatted(o);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(o);
    } else {
        printf("checkpoint: %s\n", dir);
        printf("model_type: %s\n", info.model_type);
        printf("architecture: %s%s\n", info.architecture, c->num_labels ? " (reward model, score.weight [1, n_embd])" : "");
        printf("vocab_size: %zu\n", c->vocab_size);
        printf("n_positions: %zu\n", c->n_positions);
        printf("n_embd: %zu\n", c->n_embd);
        printf("n_layer: %zu\n", c->n_layer);
        printf("n_head: %zu\n", c->n_head);
        printf("layer_norm_epsilon: %g\n", (double)c->layer_norm_epsilon);
        printf("activation_function: %s\n", llama ? "silu" : "gelu_new");
        if (llama) {
            printf("n_kv_head: %zu\n", c->n_kv_head);
            printf("intermediate_size: %zu\n", c->intermediate_size);
            printf("head_dim: %zu\n", fdpo_llama_head_dim(c));
            printf("rope_theta: %g\n", c->rope_theta);
            if (c->rope_factor != 0)
                printf("rope_scaling: llama3 factor=%g low_freq_factor=%g high_freq_factor=%g original_max_position_embeddings=%zu\n",
                       c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor, c->rope_original_max_position);
            else printf("rope_scaling: none\n");
            printf("tie_word_embeddings: %s\n", c->tie_word_embeddings ? "true" : "false");
            printf("biases: q/k/v %s, o %s, mlp %s\n", c->qkv_bias ? "yes" : "no", c->o_bias ? "yes" : "no",
                   c->mlp_bias ? "yes" : "no");
        }
        printf("parameters: %zu (%.2fM)\n", m->n_params, (double)m->n_params / 1e6);
        if (m->lora)
            printf("lora: r=%zu alpha=%g on %s, %zu parameters, base %s\n", m->lora->r, m->lora->alpha, m->lora->targets,
                   m->lora->view.n_params, m->lora->base_model ? m->lora->base_model : "?");
        if (tok) printf("tokenizer: %s (%zu tokens)\neos_token_id: %d\nchat_template: %s\n", info.tokenizer_kind,
                        fdpo_tokenizer_vocab_size(tok), fdpo_tokenizer_eot(tok), info.chat_template);
        else printf("tokenizer: none\n");
        if (info.has_state) printf("training_state: yes (step %zu)\n", info.step);
        else printf("training_state: no\n");
    }
    fdpo_checkpoint_info_free(&info);
    return 0;
}
