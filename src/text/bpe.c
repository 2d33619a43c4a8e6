/* GPT-2 byte-level BPE. Placeholder until the BPE issue lands: reports that no BPE
 * tokenizer is available. */
#include "fdpo/core.h"
#include "text/tokenizer_internal.h"

int fdpo_bpe_dir_has_files(const char *dir) { (void)dir; return 0; }
fdpo_tokenizer *fdpo_bpe_load_dir(const char *dir) { fdpo_error("%s: GPT-2 BPE not supported yet", dir); return NULL; }
int fdpo_bpe_save_dir(const fdpo_tokenizer *t, const char *dir) { (void)t; return fdpo_error("%s: GPT-2 BPE not supported yet", dir); }
void fdpo_bpe_free(struct fdpo_bpe *b) { (void)b; }
int fdpo_bpe_encode(const fdpo_tokenizer *t, const char *text, size_t len, int allow_special, int32_t **ids, size_t *n_ids) {
    (void)t; (void)text; (void)len; (void)allow_special; (void)ids; (void)n_ids;
    return fdpo_error("GPT-2 BPE not supported yet");
}
const char *fdpo_bpe_token_bytes(const fdpo_tokenizer *t, int32_t id, size_t *len) { (void)t; (void)id; *len = 0; return ""; }
