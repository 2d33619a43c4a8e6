/* Data readers for the Python tests: what the prompts and SFT readers keep, as JSON.
 *   data-prompts FILE   {"prompts": [...]}                         (fdpo_read_prompts)
 *   data-sft FILE...    {"sequences": [{"tokens", "weights"}], "dropped"}  (fdpo_sft_load,
 *                       byte tokenizer, --seq-len 64, no validation split) */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/data.h"
#include "fdpo/eval.h"
#include "harness.h"

static int print_json(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    puts(s);
    cJSON_free(s);
    return 0;
}

static int h_prompts(int argc, char **argv) {
    if (argc != 2) return fdpo_error("usage: data-prompts FILE");
    char **p;
    size_t n;
    if (fdpo_read_prompts(argv[1], &p, &n)) return -1;
    cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "prompts");
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(p[i]));
    fdpo_free_strings(p, n);
    return print_json(o);
}

static int h_sft(int argc, char **argv) {
    if (argc < 2) return fdpo_error("usage: data-sft FILE...");
    fdpo_tokenizer *tok = fdpo_tokenizer_byte();
    fdpo_lm_data train, val;
    size_t dropped;
    int rc = fdpo_sft_load((const char *const *)argv + 1, (size_t)argc - 1, tok, 64, 0.0, 1, &train, &val, &dropped);
    fdpo_tokenizer_free(tok);
    if (rc) return -1;
    cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "sequences");
    for (size_t i = 0; i < train.n_seq; i++) {
        cJSON *s = cJSON_CreateObject(), *t = cJSON_AddArrayToObject(s, "tokens"), *w = cJSON_AddArrayToObject(s, "weights");
        for (size_t j = 0; j < train.len[i]; j++) {
            cJSON_AddItemToArray(t, cJSON_CreateNumber(train.tokens[train.start[i] + j]));
            cJSON_AddItemToArray(w, cJSON_CreateNumber(train.weights[train.start[i] + j]));
        }
        cJSON_AddItemToArray(a, s);
    }
    cJSON_AddNumberToObject(o, "dropped", (double)dropped);
    fdpo_lm_data_free(&train);
    fdpo_lm_data_free(&val);
    return print_json(o);
}

int h_data(int argc, char **argv) {
    if (!strcmp(argv[0], "data-prompts")) return h_prompts(argc, argv);
    if (!strcmp(argv[0], "data-sft")) return h_sft(argc, argv);
    return fdpo_error("unknown subcommand %s", argv[0]);
}
