/* fdpo generate: sample completions for prompts with the KV-cache decoder; JSONL out. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/eval_common.h"
#include "cli/flags.h"
#include "fdpo/dist.h"
#include "fdpo/eval.h"

static const char *finish_name(fdpo_finish f) {
    return f == FDPO_FINISH_EOT ? "eot" : f == FDPO_FINISH_STOP ? "stop" : "length";
}

int cmd_generate(int argc, char **argv) {
    const char *model_dir, *prompts_path, *out_path, *precision, *chat_template;
    long threads;
    eval_sampling_flags sf;
    const fdpo_flag own[] = {
        {"model", FLAG_STR, &model_dir, NULL, "checkpoint directory (required)", 0},
        {"data", FLAG_STR, &prompts_path, NULL, "prompts: JSONL {\"prompt\": ...} or plain text, one per line (required)", 0},
        {"chat-template", FLAG_STR, &chat_template, "auto", "conversational prompts ({\"messages\"}): auto (the checkpoint's tokenizer_config.json), plain, chatml, llama3, zephyr", 0},
        {"out", FLAG_STR, &out_path, "-", "output JSONL file ('-' = stdout)", 0},
        {"threads", FLAG_INT, &threads, "0", "threads (0 = OpenMP default)", 0},
        {"precision", FLAG_STR, &precision, "fp32", "matmul precision: fp32, or bf16 (bf16 inputs, fp32 accumulation)", 0},
    };
    /* the sampling flags follow this command's own (sized from the list: adding a flag cannot overwrite one) */
    fdpo_flag flags[sizeof own / sizeof own[0] + EVAL_SAMPLING_NFLAGS];
    memcpy(flags, own, sizeof own);
    size_t n_flags = eval_sampling_flags_add(flags, sizeof own / sizeof own[0], &sf, "1");
    int rc = flags_parse("generate", "fdpo generate --model CKPT --data PROMPTS [flags]", flags, n_flags,
                         argc, argv, NULL, NULL);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    if (!model_dir) return fdpo_error("--model: required (a checkpoint directory)");
    if (!prompts_path) return fdpo_error("--data: required (prompts: JSONL or text file)");
    fdpo_sample_config sc;
    if (eval_sampling_flags_finish(&sf, &sc)) return -1;
    if (fdpo_set_precision(precision)) return -1;
    const char *const inputs[][2] = {{"--data", prompts_path}, {"--model", model_dir}};
    if (eval_claim_out("--out", out_path, inputs, 2, 1)) return -1;
    size_t n = (size_t)sf.n;
    fdpo_set_threads((int)threads);

    char **prompts = NULL;
    size_t n_prompts = 0, *prompt_lines = NULL;
    if (fdpo_read_prompts(prompts_path, &prompts, &prompt_lines, &n_prompts)) {
        eval_release_out(out_path);
        return fdpo_error_context("--data");
    }
    /* before the model loads and before the sampling's "--data FILE" context, so that the
     * message starts "--n N:" and names a --config line that set it (hunt of wave 46) */
    if (fdpo_samples_count_check(NULL, n_prompts, n)) {
        eval_release_out(out_path);
        fdpo_free_strings(prompts, n_prompts);
        free(prompt_lines);
        return -1;
    }
    fdpo_gpt2 *m = NULL;
    fdpo_tokenizer *tok = NULL;
    int32_t **ids = NULL;
    size_t *lens = NULL;
    fdpo_sample *s = NULL;
    rc = eval_chat_template_used(flags, n_flags, prompts, n_prompts, 0);
    if (!rc) rc = fdpo_eval_load_checkpoint("--model", model_dir, &m, &tok);
    if (!rc) rc = eval_set_chat_template(tok, chat_template);
    if (!rc) rc = fdpo_encode_prompts(tok, prompts, n_prompts, &ids, &lens);
    if (!rc) rc = fdpo_prompt_lens_check(lens, prompt_lines, n_prompts, m->config.n_positions, prompts_path);
    double t0 = fdpo_now();
    /* under MPI each rank generates its block of prompts; rank 0 writes them all */
    fdpo_generate_timing tm;
    if (!rc && fdpo_generate_ranks(m, tok, fdpo_tokenizer_eot(tok), &sc, ids, lens, n_prompts, n, &s, &tm))
        rc = fdpo_error_context("--data %s", prompts_path);   /* its faults name a prompt of this file */
    double dt = fdpo_now() - t0;
    if (!rc) {
        fdpo_atomic_file af = {0};
        FILE *f = stdout;
        if (!fdpo_dist_is_root()) f = NULL;
        else if (strcmp(out_path, "-")) {
            if (fdpo_atomic_open(&af, out_path)) rc = fdpo_error_context("--out");
            else f = af.f;
        }
        size_t total = n_prompts * n, new_tokens = 0;
        for (size_t i = 0; !rc && i < total; i++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "prompt_index", (double)s[i].prompt_index);
            cJSON_AddNumberToObject(o, "sample_index", (double)s[i].sample_index);
            cJSON_AddStringToObject(o, "prompt", prompts[s[i].prompt_index]);
            cJSON_AddStringToObject(o, "completion", s[i].text);
            cJSON_AddNumberToObject(o, "n_tokens", (double)s[i].n_completion);
            cJSON_AddNumberToObject(o, "logp", s[i].logp);
            cJSON_AddStringToObject(o, "finish", finish_name(s[i].finish));
            cJSON *t = cJSON_CreateArray();
            for (size_t j = 0; j < s[i].n_tokens; j++) cJSON_AddItemToArray(t, cJSON_CreateNumber(s[i].tokens[j]));
            cJSON_AddItemToObject(o, "tokens", t);
            char *line = fdpo_json_print(o, 0);
            if (f) fprintf(f, "%s\n", line);
            free(line);
            cJSON_Delete(o);
            new_tokens += s[i].n_tokens;
        }
        if (f && f != stdout) {
            if (!rc) { if (fdpo_atomic_commit(&af)) rc = fdpo_error_context("--out"); }
            else fdpo_atomic_abort(&af);
        }
        /* the whole call, then its parts: the decoding steps' rate is the one a long run
         * of sampling (fdpo online, fdpo rl) sees, the set-up being paid once */
        if (!rc) fdpo_log(FDPO_LOG_INFO, "generated %zu samples, %zu new tokens in %.2fs (%.1f tokens/s): decoder "
                         "set-up %.2fs, prefill %.2fs, %zu decoding steps of %zu tokens in %.2fs (%.1f tokens/s)", total,
                         new_tokens, dt, dt > 0 ? (double)new_tokens / dt : 0.0, tm.setup, tm.prefill, tm.decode_steps,
                         tm.decode_tokens, tm.decode,
                         tm.decode > 0 ? (double)tm.decode_tokens / tm.decode : 0.0);
        fdpo_samples_free(s, total);
    }
    fdpo_free_ids(ids, lens, ids ? n_prompts : 0);
    fdpo_free_strings(prompts, n_prompts);
    free(prompt_lines);
    fdpo_tokenizer_free(tok);
    fdpo_gpt2_free(m);
    eval_release_out(out_path);
    return rc;
}
