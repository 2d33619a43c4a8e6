/* What `fdpo info` shows of a checkpoint directory: the model, its tokenizer and chat
 * template, and the step of its training state (read by the trainer's reader, state.c). */
#include <stdlib.h>
#include <string.h>
#include "fdpo/chat.h"
#include "fdpo/io.h"
#include "fdpo/trainer.h"

void fdpo_checkpoint_info_free(fdpo_checkpoint_info *info) {
    fdpo_tokenizer_free(info->tok);
    fdpo_gpt2_free(info->model);
    memset(info, 0, sizeof *info);
}

int fdpo_checkpoint_info_read(const char *dir, fdpo_checkpoint_info *info) {
    memset(info, 0, sizeof *info);
    fdpo_gpt2 *m = fdpo_checkpoint_load_model(dir);
    if (!m) return -1;
    info->model = m;
    const fdpo_gpt2_config *c = &m->config;
    fdpo_tokenizer *tok = info->tok = fdpo_checkpoint_load_tokenizer(dir);
    info->tokenizer_kind = !tok ? "none" : fdpo_tokenizer_kind_of(tok) == FDPO_TOK_BPE ? "gpt2-bpe" : "byte";
    info->chat_template = "none";
    fdpo_chat chat;
    if (tok && fdpo_chat_for(tok, &chat) == 0) { info->chat_template = fdpo_chat_name(chat.kind); fdpo_chat_free(&chat); }
    else if (tok) info->chat_template = "unrecognised";
    if (tok && fdpo_checkpoint_check_tokenizer(dir, c, tok)) { fdpo_checkpoint_info_free(info); return -1; }
    fdpo_clear_error();   /* no tokenizer is not an error here */

    int llama = c->arch == FDPO_ARCH_LLAMA, qwen2 = llama && !strcmp(c->model_type, "qwen2");
    info->model_type = qwen2 ? "qwen2" : llama ? "llama" : "gpt2";
    info->architecture = fdpo_gpt2_architecture(c, c->num_labels > 0);

    char *state_path = fdpo_path_join(dir, "training_state.json");
    info->has_state = fdpo_file_exists(state_path);
    free(state_path);
    if (info->has_state && fdpo_train_state_read_settings(dir, NULL, &info->step)) {
        fdpo_checkpoint_info_free(info);
        return -1;
    }
    return 0;
}
