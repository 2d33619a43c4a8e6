/* fdpo merge: linear weight averaging or task arithmetic of checkpoints (P-SACPO). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/flags.h"
#include "fdpo/core.h"
#include "fdpo/io.h"
#include "fdpo/merge.h"
#include "fdpo/tokenizer.h"
#include "fdpo/trainer.h"

int cmd_merge(int argc, char **argv) {
    flag_list model_list = {0};   /* repeatable, through the parser: aliases and --config files too */
    const char *weight_list = NULL, *base = NULL, *out = NULL, *lora = NULL;
    int overwrite = 0;
    long threads = 0;
    fdpo_flag flags[] = {
        {"model", FLAG_LIST, &model_list, NULL, "a checkpoint to merge (repeat for each)", 0},
        {"weight", FLAG_STR, &weight_list, NULL, "comma list, one weight per --model (default 1/n; 1 each with --base)", 0},
        {"base", FLAG_STR, &base, NULL, "task arithmetic: theta = base + sum w_i (theta_i - base)", 0},
        {"lora", FLAG_STR, &lora, NULL, "PEFT LoRA adapter directory to fold into --model (a full checkpoint): W += (alpha/r) B A (default base: the adapter's base_model_name_or_path)", 0},
        {"out", FLAG_STR, &out, NULL, "output checkpoint directory (required)", 0},
        {"overwrite", FLAG_BOOL, &overwrite, "0", "replace an existing checkpoint, another run's output (its metrics.jsonl) or a tokenizer in --out", 0},
        {"threads", FLAG_INT, &threads, "0", "threads (0 = OpenMP default)", 0},
    };
    const char *usage = "fdpo merge --model A --model B [...] [--weight w1,w2,...] [--base CKPT] --out DIR\n"
                        "       fdpo merge --lora ADAPTER_DIR [--model BASE] --out DIR";
    int rc = flags_parse("merge", usage, flags, NFLAGS(flags), argc, argv, NULL, NULL);
    const char *const *models = model_list.v;
    size_t n_models = model_list.n;
    double *weights = NULL;
    size_t n_weights = 0;
    fdpo_gpt2 *m = NULL;
    fdpo_tokenizer *tok = NULL;
    if (rc == FLAGS_HELP) { rc = 0; goto done; }
    if (rc) { rc = -1; goto done; }
    fdpo_set_threads((int)threads);
    rc = -1;
    if (!out) { fdpo_error("--out: required (usage: %s)", usage); goto done; }
    if (weight_list) {
        if (flags_number_list("weight", weight_list, FLAGS_LIST_ANY, &weights, &n_weights)) goto done;
        if (n_weights != n_models) { fdpo_error("--weight: %zu weights for %zu --model checkpoints", n_weights, n_models); goto done; }
    }
    if (lora && (n_models > 1 || base || weight_list)) { fdpo_error("--lora: takes one --model (the base) and no --base or --weight"); goto done; }
    fdpo_merge_opts o = {models, n_models, weights, base};
    if (!lora && fdpo_merge_opts_check(&o)) goto done;   /* a bad flag refused before OUT is claimed */
    if (fdpo_merge_claim_out(out, overwrite)) goto done;
    const char *tok_dir;
    if (lora) {
        m = fdpo_merge_lora(lora, n_models ? models[0] : NULL);
        if (!m) goto done;
        tok_dir = n_models ? models[0] : lora;   /* a LoRA run's OUT holds the tokenizer too */
    } else {
        m = fdpo_merge(&o);
        if (!m) goto done;
        tok_dir = base ? base : models[0];
    }
    tok = fdpo_checkpoint_load_tokenizer(tok_dir);
    if (!tok) { fdpo_error_context("%s", tok_dir); goto done; }
    /* the merged model is not the run OUT may hold (--overwrite): its metrics.jsonl and
     * summaries are left out of the swap (a save that fails leaves that run whole) */
    static const fdpo_run_file no_run_files[1];
    if (fdpo_checkpoint_save_run(out, m, tok, NULL, NULL, no_run_files, 0))
        goto done;
    if (lora) fdpo_log(FDPO_LOG_INFO, "%s: %s merged into its base written", out, lora);
    else fdpo_log(FDPO_LOG_INFO, "%s: %s of %zu checkpoints%s%s written", out, base ? "task arithmetic" : "weighted average",
                  n_models, base ? " on " : "", base ? base : "");
    rc = 0;
done:
    fdpo_tokenizer_free(tok);
    fdpo_gpt2_free(m);
    free(weights);
    return rc;
}
