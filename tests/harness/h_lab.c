/* fdpo-harness lab-defaults: the library's defaults of the lab's option structs
 * (fdpo_lab_beta_grid_default, fdpo_lab_coverage_opts_default, fdpo_lab_algo_opts_default,
 * and fdpo_lab_gen_default's generated problem under "solve", which every subcommand shares, its
 * response lengths under "bias", the one that has them)
 * under the flag names of `fdpo lab SUB --help`, one JSON object per subcommand;
 * tests/py/test_lab.py compares them with the help text. */
#include <stdio.h>
#include <cJSON.h>
#include "fdpo/lab.h"
#include "fdpo/objectives.h"
#include "fdpo/lab_algos.h"
#include "harness.h"

int h_lab_defaults(int argc, char **argv) {
    (void)argc; (void)argv;
    cJSON *root = cJSON_CreateObject();
    fdpo_lab_gen gen;
    fdpo_lab_gen_default(&gen);
    cJSON *so = cJSON_AddObjectToObject(root, "solve");
    cJSON_AddStringToObject(so, "pi-ref", gen.pi_ref_kind);
    cJSON_AddStringToObject(so, "reward", gen.reward_kind);
    cJSON_AddNumberToObject(so, "zipf-s", gen.zipf_s);
    cJSON_AddNumberToObject(so, "dirichlet-alpha", gen.dirichlet_alpha);
    cJSON_AddNumberToObject(so, "reward-scale", gen.reward_scale);
    cJSON *bo = cJSON_AddObjectToObject(root, "bias"); /* the one subcommand that reads lengths */
    cJSON_AddNumberToObject(bo, "length-min", (double)gen.length_min);
    cJSON_AddNumberToObject(bo, "length-max", (double)gen.length_max);
    fdpo_lab_beta_grid_opts g;
    fdpo_lab_beta_grid_default(&g);
    cJSON *fr = cJSON_AddObjectToObject(root, "frontier");
    cJSON_AddNumberToObject(fr, "beta-min", g.beta_min);
    cJSON_AddNumberToObject(fr, "beta-max", g.beta_max);
    cJSON_AddNumberToObject(fr, "n-betas", (double)g.n_betas);
    fdpo_lab_coverage_opts co;
    fdpo_lab_coverage_opts_default(&co);
    char div[64];
    fdpo_divergence_name(&co.data_div, div, sizeof div);
    cJSON *cv = cJSON_AddObjectToObject(root, "coverage");
    cJSON_AddNumberToObject(cv, "beta", co.beta);
    cJSON_AddNumberToObject(cv, "mixture", co.mixture);
    cJSON_AddNumberToObject(cv, "ridge", co.ridge);
    cJSON_AddNumberToObject(cv, "seed", (double)co.seed);
    cJSON_AddStringToObject(cv, "data-divergence", div);
    /* the method-independent ones (--steps, --lr and --pair-top are "0 = the method's
     * default" on the command line, filled in by the library per method) */
    fdpo_lab_algo_opts ao;
    fdpo_lab_algo_opts_default(&ao, FDPO_LAB_DPO, 1, 6);
    cJSON *ck = cJSON_AddObjectToObject(root, "check --method dpo");
    cJSON_AddNumberToObject(ck, "beta", ao.beta);
    cJSON_AddNumberToObject(ck, "group-size", (double)ao.k);
    cJSON_AddNumberToObject(ck, "grpo-eps", ao.grpo_eps);
    cJSON_AddStringToObject(ck, "labels", ao.labels == FDPO_LAB_LABELS_BT ? "bt" : "threshold");
    cJSON_AddNumberToObject(ck, "desirable-weight", ao.desirable_weight);
    cJSON_AddNumberToObject(ck, "undesirable-weight", ao.undesirable_weight);
    cJSON_AddNumberToObject(ck, "seed", (double)ao.seed);
    char *text = cJSON_PrintUnformatted(root);
    printf("%s\n", text);
    cJSON_free(text);
    cJSON_Delete(root);
    return 0;
}
