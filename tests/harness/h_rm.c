/* Reward-model subcommands for tests/py/test_rm.py.
 *
 *   rm-grad --model RMDIR --data pairs.jsonl --out DIR [--center C] [--micro-batch K]
 *       the reward model's scalar outputs on every pair and the gradient of the step loss
 *       (mean over pairs of fdpo_rm_loss_pair, margins from the data) wrt every parameter:
 *       DIR/result.json {"rewards": [[r_chosen, r_rejected], ...], "loss"} and
 *       DIR/grads.safetensors (model-shaped: transformer.wte.weight holds the score.weight
 *       gradient as its last row). */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/io.h"
#include "fdpo/kto.h"
#include "fdpo/rm.h"
#include "harness.h"

static const char *arg(int argc, char **argv, const char *name) {
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], name)) return argv[i + 1];
    return NULL;
}

int h_rm_grad(int argc, char **argv) {
    const char *dir = arg(argc, argv, "--model"), *data = arg(argc, argv, "--data"), *out = arg(argc, argv, "--out");
    const char *cs = arg(argc, argv, "--center"), *mbs = arg(argc, argv, "--micro-batch");
    if (!dir || !data || !out) return fdpo_error("--model, --data and --out are required");
    double center = cs ? atof(cs) : 0;
    size_t mb = mbs ? (size_t)atol(mbs) : 0;
    fdpo_tokenizer *tok = NULL;
    fdpo_gpt2 *m = fdpo_rm_load(dir, &tok);
    if (!m) return -1;
    fdpo_pref_options po = {0};
    fdpo_pref_set set = {0};
    fdpo_rm_batch rb = {0};
    double *rewards = NULL;
    const fdpo_pref_pair **pairs = NULL;
    int rc = fdpo_pref_load(data, tok, &po, &set);
    if (!rc) {
        rewards = fdpo_malloc(2 * set.n * sizeof *rewards);
        pairs = fdpo_malloc(set.n * sizeof *pairs);
        for (size_t i = 0; i < set.n; i++) pairs[i] = &set.pairs[i];
        rc = fdpo_pref_margins_check(data, &set);
    }
    fdpo_rm_metrics met;
    if (!rc) {
        fdpo_gpt2_zero_grad(m);
        rc = fdpo_rm_step(m, &rb, pairs, set.n, mb, center, 1, set.n, fdpo_tokenizer_eot(tok), &met, rewards);
    }
    if (!rc) rc = fdpo_mkdir_p(out);
    if (!rc) {
        cJSON *root = cJSON_CreateObject(), *ra = cJSON_AddArrayToObject(root, "rewards");
        for (size_t i = 0; i < set.n; i++) {
            cJSON *row = cJSON_CreateArray();
            cJSON_AddItemToArray(row, cJSON_CreateNumber(rewards[2 * i]));
            cJSON_AddItemToArray(row, cJSON_CreateNumber(rewards[2 * i + 1]));
            cJSON_AddItemToArray(ra, row);
        }
        cJSON_AddNumberToObject(root, "loss", met.loss);
        cJSON_AddNumberToObject(root, "accuracy", met.accuracy);
        char *path = fdpo_path_join(out, "result.json");
        rc = fdpo_write_json_atomic(path, root, 1);
        free(path);
        cJSON_Delete(root);
    }
    if (!rc) {
        char *path = fdpo_path_join(out, "grads.safetensors");
        fdpo_st_writer *w = fdpo_st_writer_new();
        fdpo_st_writer_add_gpt2(w, m, m->grads_memory, NULL);
        rc = fdpo_st_writer_write(w, path);
        fdpo_st_writer_free(w);
        free(path);
    }
    fdpo_rm_batch_free(&rb);
    free(rewards); free(pairs);
    fdpo_pref_free(&set);
    fdpo_tokenizer_free(tok);
    fdpo_gpt2_free(m);
    return rc;
}

/*   kto-grad --model POLICY --ref REF --data unpaired.jsonl --out DIR --divergence D --beta B
 *            [--wd W] [--wu W] [--micro-batch K] [--max-length L]
 *       one KTO step (fdpo_kto_step): DIR/result.json {"loss", "examples": [[l, l_KL, z0,
 *       loss], ...]} and DIR/grads.safetensors (the policy's parameter gradients). */
int h_kto_grad(int argc, char **argv) {
    const char *pol = arg(argc, argv, "--model"), *refd = arg(argc, argv, "--ref"), *data = arg(argc, argv, "--data");
    const char *out = arg(argc, argv, "--out"), *div = arg(argc, argv, "--divergence"), *beta = arg(argc, argv, "--beta");
    const char *wd = arg(argc, argv, "--wd"), *wu = arg(argc, argv, "--wu"), *mbs = arg(argc, argv, "--micro-batch");
    const char *ml = arg(argc, argv, "--max-length");
    if (!pol || !refd || !data || !out || !div || !beta) return fdpo_error("--model, --ref, --data, --out, --divergence, --beta are required");
    fdpo_kto_loss K = {.beta = atof(beta), .desirable_weight = wd ? atof(wd) : 1, .undesirable_weight = wu ? atof(wu) : 1};
    if (fdpo_divergence_parse(div, &K.div) || fdpo_kto_loss_check(&K)) return -1;
    fdpo_tokenizer *tok = fdpo_tokenizer_load_dir(pol);
    if (!tok) return -1;
    fdpo_pref_options po = {.max_length = ml ? (size_t)atol(ml) : 0};
    fdpo_unpaired_set set = {0};
    int rc = fdpo_unpaired_load(data, tok, &po, &set);
    fdpo_tokenizer_free(tok);
    if (rc) return -1;
    fdpo_gpt2 *p = fdpo_checkpoint_load_model(pol), *r = fdpo_checkpoint_load_model(refd);
    const fdpo_unpaired_example **ex = fdpo_malloc(set.n * sizeof *ex);
    double *per = fdpo_malloc(4 * set.n * sizeof *per);
    for (size_t i = 0; i < set.n; i++) ex[i] = &set.ex[i];
    fdpo_kto_metrics m;
    rc = p && r ? 0 : -1;
    if (!rc) {
        fdpo_gpt2_zero_grad(p);
        rc = fdpo_kto_step(p, r, &K, ex, set.n, mbs ? (size_t)atol(mbs) : 0, po.max_length, 1, set.n, &m, per);
    }
    if (!rc) rc = fdpo_mkdir_p(out);
    if (!rc) {
        cJSON *root = cJSON_CreateObject(), *ea = cJSON_AddArrayToObject(root, "examples");
        for (size_t i = 0; i < set.n; i++) {
            cJSON *row = cJSON_CreateArray();
            for (int j = 0; j < 4; j++) cJSON_AddItemToArray(row, cJSON_CreateNumber(per[4 * i + j]));
            cJSON_AddItemToArray(ea, row);
        }
        cJSON_AddNumberToObject(root, "loss", m.loss);
        cJSON_AddNumberToObject(root, "kl", m.kl);
        char *path = fdpo_path_join(out, "result.json");
        rc = fdpo_write_json_atomic(path, root, 1);
        free(path); cJSON_Delete(root);
    }
    if (!rc) {
        char *path = fdpo_path_join(out, "grads.safetensors");
        fdpo_st_writer *w = fdpo_st_writer_new();
        fdpo_st_writer_add_gpt2(w, p, p->grads_memory, NULL);
        rc = fdpo_st_writer_write(w, path);
        fdpo_st_writer_free(w);
        free(path);
    }
    free(ex); free(per);
    fdpo_gpt2_free(p); fdpo_gpt2_free(r);
    fdpo_unpaired_free(&set);
    return rc;
}
