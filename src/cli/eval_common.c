/* Shared by fdpo generate, eval and score. */
#include <stdlib.h>
#include <string.h>
#include "cli/eval_common.h"
#include "fdpo/core.h"
#include "fdpo/io.h"
#include "fdpo/objectives.h"

int eval_load_checkpoint(const char *flag, const char *dir, fdpo_gpt2 **model, fdpo_tokenizer **tok) {
    *model = NULL; *tok = NULL;
    if (!dir) return fdpo_error("%s: required (a checkpoint directory)", flag);
    fdpo_gpt2 *m = fdpo_checkpoint_load_model(dir);
    if (!m) return fdpo_error_context("%s %s", flag, dir);
    fdpo_tokenizer *t = fdpo_tokenizer_load_dir(dir);
    if (!t) { fdpo_gpt2_free(m); return fdpo_error_context("%s %s", flag, dir); }
    if (fdpo_tokenizer_vocab_size(t) > m->config.vocab_size) {
        size_t tv = fdpo_tokenizer_vocab_size(t), mv = m->config.vocab_size;
        fdpo_tokenizer_free(t); fdpo_gpt2_free(m);
        return fdpo_error("%s %s: tokenizer has %zu tokens but the model's vocab_size is %zu", flag, dir, tv, mv);
    }
    *model = m; *tok = t;
    return 0;
}

int eval_parse_divergences(const char *flag, const char *list, fdpo_divergence **divs, size_t *n) {
    *divs = NULL; *n = 0;
    if (!list || !*list) return 0;
    if (fdpo_divergence_parse_list(list, divs, n)) return fdpo_error_context("%s", flag);
    return 0;
}
