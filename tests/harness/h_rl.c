/* rl-grad --model DIR --spec FILE.json --out DIR: one fdpo_rl_step on FIXED samples.
 * spec: {"algo", "divergence", "beta", "k", "grpo_eps",
 *        "samples": [{"prompt": [ids], "completion": [ids], "reward": r, "ref_logp": x}, ...],
 *        "blocks": [groups, ...] (optional: the step as MPI ranks run it, one fdpo_rl_step per
 *        block of that many groups with n_total = all samples, gradients accumulated, metric
 *        shares summed)}
 * Writes OUT/result.json {"loss", "advantages", metrics} and OUT/grads.safetensors.
 * rl-logp --model DIR --spec FILE.json --out DIR: fdpo_samples_logp of the spec's samples
 * (prompt, completion) -> OUT/result.json {"logp": [...]}.
 * Both take [--precision fp32|bf16] (the model's matmuls; default fp32). */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fdpo/core.h"
#include "fdpo/io.h"
#include "fdpo/rl.h"

static int32_t *ids_of(const cJSON *a, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(a);
    int32_t *v = fdpo_malloc((*n ? *n : 1) * sizeof(int32_t));
    for (size_t i = 0; i < *n; i++) v[i] = (int32_t)cJSON_GetArrayItem(a, (int)i)->valuedouble;
    return v;
}

int h_rl(int argc, char **argv) {
    const char *model = NULL, *spec = NULL, *outdir = NULL, *precision = "fp32";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--precision")) precision = argv[i + 1];
        else if (!strcmp(argv[i], "--spec")) spec = argv[i + 1];
        else if (!strcmp(argv[i], "--out")) outdir = argv[i + 1];
        else return fdpo_error("unknown flag %s", argv[i]);
    }
    if (!model || !spec || !outdir) return fdpo_error("--model, --spec and --out are required");
    if (fdpo_set_precision(precision)) return -1;   /* the model loaded below takes it */
    size_t len;
    char *text = fdpo_read_file(spec, &len);
    if (!text) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) return fdpo_error("%s: not JSON", spec);
    fdpo_rl_config c = {0};
    int rc = fdpo_rl_algo_parse(cJSON_GetObjectItem(root, "algo")->valuestring, &c.algo);
    if (!rc) rc = fdpo_divergence_parse(cJSON_GetObjectItem(root, "divergence")->valuestring, &c.div);
    c.beta = cJSON_GetObjectItem(root, "beta")->valuedouble;
    c.k = (size_t)cJSON_GetObjectItem(root, "k")->valuedouble;
    c.grpo_eps = cJSON_GetObjectItem(root, "grpo_eps")->valuedouble;
    const cJSON *lmax = cJSON_GetObjectItem(root, "logits_max_bytes");   /* 1: force the fused head */
    if (lmax) c.logits_max_bytes = (size_t)lmax->valuedouble;
    const cJSON *ss = cJSON_GetObjectItem(root, "samples");
    size_t n = (size_t)cJSON_GetArraySize(ss);
    int32_t **p = fdpo_calloc(n, sizeof *p), **y = fdpo_calloc(n, sizeof *y);
    size_t *np = fdpo_calloc(n, sizeof(size_t)), *ny = fdpo_calloc(n, sizeof(size_t));
    double *r = fdpo_calloc(n, sizeof(double)), *lr = fdpo_calloc(n, sizeof(double)), *adv = fdpo_calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++) {
        const cJSON *s = cJSON_GetArrayItem(ss, (int)i);
        p[i] = ids_of(cJSON_GetObjectItem(s, "prompt"), &np[i]);
        y[i] = ids_of(cJSON_GetObjectItem(s, "completion"), &ny[i]);
        r[i] = cJSON_GetObjectItem(s, "reward")->valuedouble;
        lr[i] = cJSON_GetObjectItem(s, "ref_logp")->valuedouble;
    }
    fdpo_gpt2 *m = rc ? NULL : fdpo_checkpoint_load_model(model);
    if (!m) rc = -1;
    if (!rc && !strcmp(argv[0], "rl-logp")) {
        fdpo_sample *smp = fdpo_calloc(n ? n : 1, sizeof *smp);
        for (size_t i = 0; i < n; i++) { smp[i].prompt_index = i; smp[i].tokens = y[i]; smp[i].n_tokens = ny[i]; }
        /* "repeat": N scores N times and records each pass's wall and CPU seconds (bench/) */
        const cJSON *rep = cJSON_GetObjectItem(root, "repeat");
        int reps = rep ? (int)rep->valuedouble : 1;
        double *sec = fdpo_calloc(2 * (size_t)(reps > 0 ? reps : 1), sizeof(double));
        for (int it = 0; !rc && it < (reps > 0 ? reps : 1); it++) {
            double t0 = fdpo_now(), c0 = (double)clock() / CLOCKS_PER_SEC;
            rc = fdpo_samples_logp(m, p, np, smp, n, lr);
            sec[2 * it] = fdpo_now() - t0;
            sec[2 * it + 1] = (double)clock() / CLOCKS_PER_SEC - c0;
        }
        free(smp);
        if (!rc) rc = fdpo_mkdir_p(outdir);
        if (!rc) {
            cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "logp");
            for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(lr[i]));
            cJSON *w = cJSON_AddArrayToObject(o, "seconds"), *cpu = cJSON_AddArrayToObject(o, "cpu_seconds");
            for (int it = 0; it < (reps > 0 ? reps : 1); it++) {
                cJSON_AddItemToArray(w, cJSON_CreateNumber(sec[2 * it]));
                cJSON_AddItemToArray(cpu, cJSON_CreateNumber(sec[2 * it + 1]));
            }
            char *path = fdpo_path_join(outdir, "result.json");
            rc = fdpo_write_json_atomic(path, o, 1);
            free(path); cJSON_Delete(o);
        }
        free(sec);
        goto done;
    }
    fdpo_rl_metrics met;
    if (!rc) fdpo_gpt2_zero_grad(m);
    const cJSON *blocks = cJSON_GetObjectItem(root, "blocks");
    /* "repeat": N runs the step N times (gradients zeroed between) and times the last (bench/) */
    const cJSON *rep_g = cJSON_GetObjectItem(root, "repeat");
    double t0 = 0, c0 = 0;
    for (int it = rep_g ? (int)rep_g->valuedouble : 1; !rc && !blocks && it > 0; it--) {
        fdpo_gpt2_zero_grad(m);
        t0 = fdpo_now(); c0 = (double)clock() / CLOCKS_PER_SEC;
        rc = fdpo_rl_step(m, &c, n, n, p, np, y, ny, r, lr, adv, &met);
    }
    const double step_s = fdpo_now() - t0, step_cpu = (double)clock() / CLOCKS_PER_SEC - c0;
    if (!rc && blocks) {   /* the ranks' shares, summed as rl_metrics_sum does */
        memset(&met, 0, sizeof met);
        size_t first = 0;
        for (int b = 0; !rc && b < cJSON_GetArraySize(blocks); b++) {
            size_t cnt = (size_t)cJSON_GetArrayItem(blocks, b)->valuedouble * c.k;
            if (first + cnt > n) { rc = fdpo_error("blocks: more groups than samples"); break; }
            fdpo_rl_metrics part;
            rc = fdpo_rl_step(m, &c, cnt, n, p + first, np + first, y + first, ny + first, r + first, lr + first,
                              adv + first, &part);
            met.loss += part.loss; met.kl += part.kl; met.scores += part.scores; met.advantage_sq += part.advantage_sq;
            met.fdiv += part.fdiv; met.entropy += part.entropy;
            first += cnt;
        }
        met.advantage_std = sqrt(met.advantage_sq);
    }
    if (!rc) rc = fdpo_mkdir_p(outdir);
    if (!rc) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "loss", met.loss);
        cJSON_AddNumberToObject(o, "kl", met.kl);
        cJSON_AddNumberToObject(o, "fdiv", met.fdiv);
        cJSON_AddNumberToObject(o, "entropy", met.entropy);
        cJSON_AddNumberToObject(o, "scores", met.scores);
        cJSON_AddNumberToObject(o, "advantage_std", met.advantage_std);
        cJSON_AddNumberToObject(o, "seconds", step_s);
        cJSON_AddNumberToObject(o, "cpu_seconds", step_cpu);
        cJSON *a = cJSON_AddArrayToObject(o, "advantages");
        for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(adv[i]));
        char *path = fdpo_path_join(outdir, "result.json");
        rc = fdpo_write_json_atomic(path, o, 1);
        free(path); cJSON_Delete(o);
        path = fdpo_path_join(outdir, "grads.safetensors");
        fdpo_st_writer *w = fdpo_st_writer_new();
        fdpo_st_writer_add_gpt2(w, m, m->grads_memory, NULL);
        if (!rc) rc = fdpo_st_writer_write(w, path);
        fdpo_st_writer_free(w);
        free(path);
    }
done:
    for (size_t i = 0; i < n; i++) { free(p[i]); free(y[i]); }
    free(p); free(y); free(np); free(ny); free(r); free(lr); free(adv);
    if (m) fdpo_gpt2_free(m);
    cJSON_Delete(root);
    return rc;
}
