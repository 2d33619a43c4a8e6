/* Shared by fdpo generate, eval and score. */
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "cli/eval_common.h"
#include "fdpo/chat.h"
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/objectives.h"

int eval_set_chat_template(fdpo_tokenizer *tok, const char *name) {
    fdpo_tokenizer_set_chat_template(tok, name);
    if (!name || !strcmp(name, "auto")) return 0; /* an unknown file template is reported where it is needed */
    fdpo_chat chat;
    if (fdpo_chat_for(tok, &chat)) return -1;
    fdpo_chat_free(&chat);
    return 0;
}

int eval_chat_template_used(const fdpo_flag *flags, size_t n_flags, char *const *prompts, size_t n_prompts,
                            int other_use) {
    if (other_use || !flags_was_set(flags, n_flags, "chat-template")) return 0;
    for (size_t i = 0; i < n_prompts; i++)
        if (fdpo_chat_is_conversation(prompts[i])) return 0;
    return fdpo_error("--chat-template: no prompt in --data is a conversation (a JSONL \"prompt\" or \"messages\" "
                      "list of {role, content}), so the template would change nothing");
}

int eval_parse_divergences(const char *flag, const char *list, fdpo_divergence **divs, size_t *n) {
    *divs = NULL; *n = 0;
    /* an empty list is refused by the parser, as every list flag: taken as "none" it dropped
     * every fdiv_* metric without a word (a config template's `divergences =` left empty) */
    if (fdpo_divergence_parse_list(list, divs, n)) return fdpo_error_context("%s", flag);
    return 0;
}

size_t eval_sampling_flags_add(fdpo_flag *f, size_t n, eval_sampling_flags *s, const char *n_default) {
    const fdpo_flag table[EVAL_SAMPLING_NFLAGS] = {
        {"n", FLAG_COUNT, &s->n, n_default, "samples per prompt", 0},
        {"temperature", FLAG_FLOAT, &s->temperature, "1", "softmax temperature (0 = greedy); eval's KL estimates assume 1", 0},
        {"top-k", FLAG_COUNT, &s->top_k, "0", "sample among the k most probable tokens (0 = off)", 0},
        {"top-p", FLAG_FLOAT, &s->top_p, "1", "nucleus sampling mass in (0, 1] (1 = off)", 0},
        {"max-new-tokens", FLAG_COUNT, &s->max_new_tokens, "64", "most tokens generated per sample", 0},
        {"stop", FLAG_STR, &s->stop, NULL, "stop string: the completion ends before its first occurrence", 0},
        {"seed", FLAG_COUNT, &s->seed, FLAGS_DEFAULT_SEED, "RNG seed (sample s of prompt p uses a stream of (seed, p, s))", 0},
        {"batch-size", FLAG_COUNT, &s->batch_size, "8", "sequences decoded together", 0},
    };
    memcpy(f + n, table, sizeof table);
    return n + EVAL_SAMPLING_NFLAGS;
}

int eval_sampling_flags_finish(const eval_sampling_flags *s, fdpo_sample_config *c) {
    /* signs: the parser's (FLAG_COUNT); the ranges of the sampling fields: fdpo_sample_config_check */
    if (s->n == 0) return fdpo_error("--n: must be > 0 (got 0)");
    *c = (fdpo_sample_config){s->temperature, (size_t)s->top_k, s->top_p, (size_t)s->max_new_tokens, s->stop,
                              (uint64_t)s->seed, (size_t)s->batch_size, 0};
    return fdpo_sample_config_check(c);
}

static int ends_with_nocase(const char *s, const char *suffix) {   /* as the report's loader compares */
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcasecmp(s + n - k, suffix);
}

/* path must not be one of the command's inputs: the same file as an input file; in an input
 * checkpoint directory, a file under a name its loader reads (fdpo_checkpoint_file_kind:
 * model.safetensors the rename would replace, or a new tokenizer.json that would load before
 * vocab.json), while the other files there (a run's eval.json, samples) are not read; in a
 * report's RUN_DIR (the flag "RUN_DIR": it, its eval/ and its lab/; a run directory is a
 * checkpoint too), those and an existing file the report reads (.json, .jsonl, .csv, and the
 * settings of .ini and .cfg files). */
static int out_not_input(const char *flag, const char *path, const char *const (*inputs)[2], size_t n_inputs) {
    struct stat so, si, sd;
    const int exists = stat(path, &so) == 0;
    char *dir_copy = fdpo_strdup(path), *name_copy = fdpo_strdup(path);
    const int have_dir = stat(dirname(dir_copy), &sd) == 0;
    const char *name = basename(name_copy);
    const int loaded = fdpo_checkpoint_file_kind(name) != 0;
    static const char *const REPORT_READS[] = {".json", ".jsonl", ".csv", ".ini", ".cfg"};
    int data = 0;
    for (size_t k = 0; exists && k < sizeof REPORT_READS / sizeof REPORT_READS[0]; k++)
        data |= ends_with_nocase(name, REPORT_READS[k]);
    int rc = 0;
    for (size_t i = 0; i < n_inputs && !rc; i++) {
        const char *in_flag = inputs[i][0], *in = inputs[i][1];
        if (!in || stat(in, &si) != 0) continue;
        if (S_ISDIR(si.st_mode)) {
            const int read = loaded || (!strcmp(in_flag, "RUN_DIR") && data);
            if (!have_dir || sd.st_dev != si.st_dev || sd.st_ino != si.st_ino || !read) continue;
            rc = exists ? fdpo_error("%s %s: is inside the input %s %s, which the output would replace; give another file",
                                     flag, path, in_flag, in)
                        : fdpo_error("%s %s: is inside the input %s %s, whose loader would read it as one of its own "
                                     "files; give another file", flag, path, in_flag, in);
        } else if (exists && so.st_dev == si.st_dev && so.st_ino == si.st_ino) {
            rc = fdpo_error("%s %s: is the input %s %s, which the output would replace; give another file", flag, path,
                            in_flag, in);
        }
    }
    free(dir_copy);
    free(name_copy);
    return rc;
}

int eval_claim_out(const char *flag, const char *path, const char *const (*inputs)[2], size_t n_inputs, int stdout_ok) {
    if (path && !strcmp(path, "-") && !stdout_ok)   /* it made a file named "-" */
        return fdpo_error("%s -: this output is a file (only generate's and score's --out - mean stdout)", flag);
    if (!path || !strcmp(path, "-")) return 0;
    /* refused here, not by the rename after all the work */
    if (!*path) return fdpo_error("%s: an empty path; give a file", flag);
    if (path[strlen(path) - 1] == '/') return fdpo_error("%s %s: ends in '/' (a directory); give a file", flag, path);
    /* every rank: all of them return the error (rank 0 alone would leave the others in collectives) */
    if (fdpo_refuse_special_file(path)) return fdpo_error_context("%s", flag);
    /* also inputs no command lists: its --config files, and the base model a LoRA adapter
     * among the inputs (--model, --ref, rm:DIR) is read onto */
    eval_inputs all = {0};
    for (size_t i = 0; i < n_inputs; i++) eval_inputs_add(&all, inputs[i][0], &inputs[i][1], 1);
    const char *const *configs;
    size_t n_configs = flags_config_files(&configs);
    eval_inputs_add(&all, "--config", configs, n_configs);
    for (size_t i = 0, n = all.n; i < n; i++) {
        const char *in = all.v[i][1];
        char *base = in && fdpo_lora_is_checkpoint(in) ? fdpo_lora_peft_base(in) : NULL;
        if (base) {
            char label[512];
            snprintf(label, sizeof label, "%s %s's LoRA base", all.v[i][0], in);
            const char *owned[2] = {fdpo_strv_push(&all.owned, label), fdpo_strv_push(&all.owned, base)};
            eval_inputs_add(&all, owned[0], &owned[1], 1);
        }
        free(base);
    }
    int rc = out_not_input(flag, path, (const char *const (*)[2])all.v, all.n);
    eval_inputs_free(&all);
    if (rc) return -1;
    if (!fdpo_dist_is_root()) return 0;
    return fdpo_out_file_claim(path, flag);
}

void eval_release_out(const char *path) {
    if (path && strcmp(path, "-")) fdpo_out_file_release(path);
}

void eval_inputs_add(eval_inputs *in, const char *flag, const char *const *paths, size_t n_paths) {
    if (in->n + n_paths > in->cap) {
        in->cap = 2 * (in->n + n_paths) + 4;
        in->v = fdpo_realloc(in->v, in->cap * sizeof *in->v);
    }
    for (size_t i = 0; i < n_paths; i++) { in->v[in->n][0] = flag; in->v[in->n++][1] = paths[i]; }
}

void eval_inputs_add_reward(eval_inputs *in, const char *flag, const char *spec) {
    fdpo_strv files = {0};
    fdpo_reward_spec_inputs(spec, &files);
    for (size_t i = 0; i < files.n; i++) {
        const char *owned = fdpo_strv_push(&in->owned, files.v[i]);
        eval_inputs_add(in, flag, &owned, 1);
    }
    fdpo_strv_free(&files);
}

void eval_inputs_free(eval_inputs *in) {
    free(in->v);
    fdpo_strv_free(&in->owned);
    *in = (eval_inputs){0};
}
