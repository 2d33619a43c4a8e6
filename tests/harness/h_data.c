/* Data readers for the Python tests: what the prompts and SFT readers keep, as JSON.
 *   data-prompts FILE   {"prompts": [...]}                         (fdpo_read_prompts)
 *   data-sft FILE...    {"sequences": [{"tokens", "weights"}], "dropped", "cut", "first_dropped", "first_cut"}  (fdpo_sft_load,
 *                       byte tokenizer, --seq-len 64, no validation split)
 *   data-chat-sft TOK TEMPLATE FILE   the same with tokenizer directory TOK and
 *                       --chat-template TEMPLATE (auto: the tokenizer's), --seq-len 4096
 *   data-chat-prompts TOK TEMPLATE FILE  {"prompts": [...], "ids": [[...]]}
 *                       (fdpo_read_prompts + fdpo_encode_prompts)
 *   data-chat-pref TOK TEMPLATE FILE  {"pairs": [{"prompt", "chosen", "rejected"}]} token ids
 *                       (fdpo_pref_load, no truncation) */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/data.h"
#include "fdpo/eval.h"
#include "fdpo/pref.h"
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
    if (fdpo_read_prompts(argv[1], &p, NULL, &n)) return -1;
    cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "prompts");
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(p[i]));
    fdpo_free_strings(p, n);
    return print_json(o);
}

static fdpo_tokenizer *chat_tokenizer(const char *dir, const char *name) {
    fdpo_tokenizer *tok = strcmp(dir, "byte") ? fdpo_tokenizer_load_dir(dir) : fdpo_tokenizer_byte();
    if (tok) fdpo_tokenizer_set_chat_template(tok, name);
    return tok;
}

static cJSON *ids_json(const int32_t *v, size_t n) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

static int h_chat_pref(int argc, char **argv) {
    if (argc != 4) return fdpo_error("usage: data-chat-pref TOK TEMPLATE FILE");
    fdpo_tokenizer *tok = chat_tokenizer(argv[1], argv[2]);
    if (!tok) return -1;
    fdpo_pref_options opt = {0};
    fdpo_pref_set set;
    int rc = fdpo_pref_load(argv[3], tok, &opt, &set);
    fdpo_tokenizer_free(tok);
    if (rc) return -1;
    cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "pairs");
    for (size_t i = 0; i < set.n; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddItemToObject(p, "prompt", ids_json(set.pairs[i].prompt, set.pairs[i].n_prompt));
        cJSON_AddItemToObject(p, "chosen", ids_json(set.pairs[i].chosen, set.pairs[i].n_chosen));
        cJSON_AddItemToObject(p, "rejected", ids_json(set.pairs[i].rejected, set.pairs[i].n_rejected));
        cJSON_AddItemToArray(a, p);
    }
    fdpo_pref_free(&set);
    return print_json(o);
}

static int h_chat_prompts(int argc, char **argv) {
    if (argc != 4) return fdpo_error("usage: data-chat-prompts TOK TEMPLATE FILE");
    fdpo_tokenizer *tok = chat_tokenizer(argv[1], argv[2]);
    if (!tok) return -1;
    char **p = NULL;
    size_t n = 0, *lens = NULL;
    int32_t **ids = NULL;
    int rc = fdpo_read_prompts(argv[3], &p, NULL, &n);
    if (!rc) rc = fdpo_encode_prompts(tok, p, n, &ids, &lens);
    fdpo_tokenizer_free(tok);
    if (rc) { fdpo_free_strings(p, n); return -1; }
    cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "prompts"), *b = cJSON_AddArrayToObject(o, "ids");
    for (size_t i = 0; i < n; i++) {
        cJSON_AddItemToArray(a, cJSON_CreateString(p[i]));
        cJSON_AddItemToArray(b, ids_json(ids[i], lens[i]));
    }
    fdpo_free_ids(ids, lens, n);
    fdpo_free_strings(p, n);
    return print_json(o);
}

static int h_sft(int argc, char **argv) {
    int chat = !strcmp(argv[0], "data-chat-sft");
    if (chat ? argc != 4 : argc < 2) return fdpo_error(chat ? "usage: data-chat-sft TOK TEMPLATE FILE" : "usage: data-sft FILE...");
    fdpo_tokenizer *tok = chat ? chat_tokenizer(argv[1], argv[2]) : fdpo_tokenizer_byte();
    if (!tok) return -1;
    fdpo_lm_data train, val;
    fdpo_sft_stats st;
    int rc = chat ? fdpo_sft_load((const char *const *)argv + 3, 1, tok, 4096, 0.0, 1, &train, &val, &st)
                  : fdpo_sft_load((const char *const *)argv + 1, (size_t)argc - 1, tok, 64, 0.0, 1, &train, &val, &st);
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
    cJSON_AddNumberToObject(o, "dropped", (double)st.dropped);
    cJSON_AddNumberToObject(o, "cut", (double)st.cut);
    cJSON_AddStringToObject(o, "first_dropped", st.first_dropped);
    cJSON_AddStringToObject(o, "first_cut", st.first_cut);
    cJSON_AddNumberToObject(o, "two_shapes", (double)st.two_shapes);
    cJSON_AddStringToObject(o, "first_two_shapes", st.first_two_shapes);
    cJSON_AddNumberToObject(o, "eos_text", (double)st.eos_text);
    cJSON_AddStringToObject(o, "first_eos_text", st.first_eos_text);
    fdpo_lm_data_free(&train);
    fdpo_lm_data_free(&val);
    return print_json(o);
}

int h_data(int argc, char **argv) {
    if (!strcmp(argv[0], "data-prompts")) return h_prompts(argc, argv);
    if (!strcmp(argv[0], "data-sft") || !strcmp(argv[0], "data-chat-sft")) return h_sft(argc, argv);
    if (!strcmp(argv[0], "data-chat-pref")) return h_chat_pref(argc, argv);
    if (!strcmp(argv[0], "data-chat-prompts")) return h_chat_prompts(argc, argv);
    return fdpo_error("unknown subcommand %s", argv[0]);
}
