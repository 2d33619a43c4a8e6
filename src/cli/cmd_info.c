/* fdpo info CKPT: load and validate a checkpoint directory, print its config, parameter
 * count, tokenizer kind and whether it carries training state. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/flags.h"
#include "fdpo/chat.h"
#include "fdpo/core.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/tokenizer.h"

/* "step" of training_state.json, or -1 when absent/unreadable */
static long training_step(const char *path) {
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) { fdpo_clear_error(); return -1; }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(root, "step");
    long s = cJSON_IsNumber(step) && step->valuedouble >= 0 && step->valuedouble <= 9e15
                 ? (long)step->valuedouble : -1;
    cJSON_Delete(root);
    return s;
}

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
    if (n_pos + (model != NULL) != 1) { free(pos); return fdpo_error("--model: expected one checkpoint directory (usage: %s)", usage); }
    const char *dir = model ? model : pos[0];
    free(pos);

    fdpo_gpt2 *m = fdpo_checkpoint_load_model(dir);
    if (!m) return -1;
    const fdpo_gpt2_config *c = &m->config;
    fdpo_tokenizer *tok = fdpo_tokenizer_load_dir(dir);
    const char *tok_kind = !tok ? "none" : fdpo_tokenizer_kind_of(tok) == FDPO_TOK_BPE ? "gpt2-bpe" : "byte";
    size_t tok_vocab = tok ? fdpo_tokenizer_vocab_size(tok) : 0;
    const char *chat_name = "none";
    fdpo_chat chat;
    if (tok && fdpo_chat_for(tok, &chat) == 0) { chat_name = fdpo_chat_name(chat.kind); fdpo_chat_free(&chat); }
    else if (tok) chat_name = "unrecognised";
    if (tok && fdpo_checkpoint_check_tokenizer(dir, c, tok)) { fdpo_tokenizer_free(tok); fdpo_gpt2_free(m); return -1; }
    fdpo_clear_error();
    char *state_path = fdpo_path_join(dir, "training_state.json");
    int has_state = fdpo_file_exists(state_path);
    long step = has_state ? training_step(state_path) : -1;
    free(state_path);

    int llama = c->arch == FDPO_ARCH_LLAMA, qwen2 = llama && !strcmp(c->model_type, "qwen2");
    const char *model_type = qwen2 ? "qwen2" : llama ? "llama" : "gpt2";
    const char *architecture = c->num_labels ? (qwen2 ? "Qwen2ForSequenceClassification" : llama ? "LlamaForSequenceClassification"
                                                                                        : "GPT2ForSequenceClassification")
                             : qwen2 ? "Qwen2ForCausalLM" : llama ? "LlamaForCausalLM" : "GPT2LMHeadModel";
    if (as_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "checkpoint", dir);
        cJSON_AddStringToObject(o, "model_type", model_type);
        cJSON_AddStringToObject(o, "architecture", architecture);
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
            cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
            cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
        }
        cJSON_AddNumberToObject(o, "parameters", (double)m->n_params);
        cJSON_AddStringToObject(o, "tokenizer", tok_kind);
        if (tok) {
            cJSON_AddNumberToObject(o, "tokenizer_vocab_size", (double)tok_vocab);
            cJSON_AddNumberToObject(o, "eos_token_id", fdpo_tokenizer_eot(tok));
            if (fdpo_tokenizer_bos(tok) >= 0) cJSON_AddNumberToObject(o, "bos_token_id", fdpo_tokenizer_bos(tok));
            cJSON_AddStringToObject(o, "chat_template", chat_name);
        }
        if (m->lora) {   /* a LoRA checkpoint: its base + these adapters */
            cJSON *lo = cJSON_AddObjectToObject(o, "lora");
            cJSON_AddStringToObject(lo, "base_model_name_or_path", m->lora->base_model ? m->lora->base_model : "");
            cJSON_AddNumberToObject(lo, "r", (double)m->lora->r);
            cJSON_AddNumberToObject(lo, "lora_alpha", m->lora->alpha);
            cJSON_AddStringToObject(lo, "target_modules", m->lora->targets);
            cJSON_AddNumberToObject(lo, "parameters", (double)m->lora->view.n_params);
        }
        cJSON_AddBoolToObject(o, "training_state", has_state);
        if (step >= 0) cJSON_AddNumberToObject(o, "step", (double)step);
        char *s = cJSON_PrintUnformatted(o);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(o);
    } else {
        printf("checkpoint: %s\n", dir);
        printf("model_type: %s\n", model_type);
        printf("architecture: %s%s\n", architecture, c->num_labels ? " (reward model, score.weight [1, n_embd])" : "");
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
            printf("rope_theta: %g\n", c->rope_theta);
            printf("tie_word_embeddings: %s\n", c->tie_word_embeddings ? "true" : "false");
        }
        printf("parameters: %zu (%.2fM)\n", m->n_params, (double)m->n_params / 1e6);
        if (m->lora)
            printf("lora: r=%zu alpha=%g on %s, %zu parameters, base %s\n", m->lora->r, m->lora->alpha, m->lora->targets,
                   m->lora->view.n_params, m->lora->base_model ? m->lora->base_model : "?");
        if (tok) printf("tokenizer: %s (%zu tokens)\neos_token_id: %d\nchat_template: %s\n", tok_kind, tok_vocab,
                        fdpo_tokenizer_eot(tok), chat_name);
        else printf("tokenizer: none\n");
        if (has_state && step >= 0) printf("training_state: yes (step %ld)\n", step);
        else printf("training_state: %s\n", has_state ? "yes" : "no");
    }
    fdpo_tokenizer_free(tok);
    fdpo_gpt2_free(m);
    return 0;
}
