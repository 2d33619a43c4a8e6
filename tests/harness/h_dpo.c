/* Harness subcommands for the f-DPO trainer (tests/py/test_dpo*.py).
 *
 *   dpo-data --data FILE [--tokenizer DIR] [--max-length N] [--max-prompt-length N]
 *            [--bad-pairs error|skip] [--on-long truncate|skip|error]
 *       prints {"pairs": [{"line", "prompt", "chosen", "rejected", "truncated"}], "summary"}
 *   dpo-grad --policy DIR --data FILE --out DIR [--ref DIR | --ref-logps FILE] [--layout L]
 *            [--micro-batch K] [--max-length N] [--max-prompt-length N] [--threads N]
 *            --case "DIV LOSS BETA SMOOTHING GAMMA SFT_WEIGHT" [--case ...]
 *       runs fdpo_dpo_step (the trainer's step) once per case on all pairs of FILE and
 *       writes OUT/result.json (loss, metrics, per-pair values) and OUT/grads_<i>.safetensors
 *       (policy gradients under Hugging Face names). */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include "fdpo/core.h"
#include "fdpo/dpo.h"
#include "fdpo/io.h"
#include "fdpo/kto.h"
#include "fdpo/online.h"
#include "fdpo/rl.h"
#include "fdpo/rm.h"
#include "fdpo/sacpo.h"
#include "fdpo/train.h"
#include "harness.h"
#include "train/settings_json.h"

typedef struct {
    const char *data, *tokenizer, *policy, *ref, *ref_logps, *out, *layout, *bad_pairs, *on_long;
    long max_length, max_prompt_length, micro_batch;
    const char *cases[64]; size_t n_cases;
} dpo_args;

static int parse_args(int argc, char **argv, dpo_args *a) {
    memset(a, 0, sizeof *a);
    a->layout = "shared";
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc) return fdpo_error("%s: missing value", k);
        const char *v = argv[++i];
        if (!strcmp(k, "--data")) a->data = v;
        else if (!strcmp(k, "--tokenizer")) a->tokenizer = v;
        else if (!strcmp(k, "--policy")) a->policy = v;
        else if (!strcmp(k, "--ref")) a->ref = v;
        else if (!strcmp(k, "--ref-logps")) a->ref_logps = v;
        else if (!strcmp(k, "--out")) a->out = v;
        else if (!strcmp(k, "--layout")) a->layout = v;
        else if (!strcmp(k, "--bad-pairs")) a->bad_pairs = v;
        else if (!strcmp(k, "--on-long")) a->on_long = v;
        else if (!strcmp(k, "--max-length")) a->max_length = atol(v);
        else if (!strcmp(k, "--max-prompt-length")) a->max_prompt_length = atol(v);
        else if (!strcmp(k, "--micro-batch")) a->micro_batch = atol(v);
        else if (!strcmp(k, "--threads")) fdpo_set_threads(atoi(v));
        else if (!strcmp(k, "--case")) { if (a->n_cases == 64) return fdpo_error("too many cases"); a->cases[a->n_cases++] = v; }
        else return fdpo_error("unknown argument %s", k);
    }
    if (!a->data) return fdpo_error("--data is required");
    return 0;
}

static int pref_options(const dpo_args *a, fdpo_pref_options *o) {
    memset(o, 0, sizeof *o);
    o->max_length = (size_t)a->max_length;
    o->max_prompt_length = (size_t)a->max_prompt_length;
    if (a->bad_pairs && !strcmp(a->bad_pairs, "skip")) o->on_bad = FDPO_PREF_SKIP;
    if (a->on_long && !strcmp(a->on_long, "skip")) o->on_long = FDPO_PREF_LONG_SKIP;
    if (a->on_long && !strcmp(a->on_long, "error")) o->on_long = FDPO_PREF_LONG_ERROR;
    return 0;
}

static cJSON *ids_json(const int32_t *ids, size_t n) {
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
    return arr;
}

static void print_json(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    puts(s);
    cJSON_free(s);
}

/* --data's pairs with pref_options' truncation, tokenized by tok_dir's tokenizer (NULL: bytes) */
static int load_pairs(const dpo_args *a, const char *tok_dir, fdpo_pref_set *set) {
    fdpo_tokenizer *tok = tok_dir ? fdpo_tokenizer_load_dir(tok_dir) : fdpo_tokenizer_byte();
    if (!tok) return -1;
    fdpo_pref_options o;
    pref_options(a, &o);
    int rc = fdpo_pref_load(a->data, tok, &o, set);
    fdpo_tokenizer_free(tok);
    return rc;
}

int h_dpo_data(int argc, char **argv) {
    dpo_args a;
    if (parse_args(argc, argv, &a)) return -1;
    fdpo_pref_set set;
    if (load_pairs(&a, a.tokenizer, &set)) return -1;
    cJSON *root = cJSON_CreateObject(), *pairs = cJSON_AddArrayToObject(root, "pairs");
    for (size_t i = 0; i < set.n; i++) {
        const fdpo_pref_pair *p = &set.pairs[i];
        cJSON *po = cJSON_CreateObject();
        cJSON_AddNumberToObject(po, "line", (double)p->line);
        cJSON_AddItemToObject(po, "prompt", ids_json(p->prompt, p->n_prompt));
        cJSON_AddItemToObject(po, "chosen", ids_json(p->chosen, p->n_chosen));
        cJSON_AddItemToObject(po, "rejected", ids_json(p->rejected, p->n_rejected));
        cJSON_AddBoolToObject(po, "truncated", p->truncated);
        cJSON_AddItemToArray(pairs, po);
    }
    char *sj = fdpo_pref_summary_json(&set.summary);
    cJSON_AddItemToObject(root, "summary", cJSON_Parse(sj));
    free(sj);
    print_json(root);
    cJSON_Delete(root);
    fdpo_pref_free(&set);
    return 0;
}

static int read_ref_logps(const char *path, size_t n, double *out) {
    fdpo_safetensors st;
    if (fdpo_st_open(&st, path)) return -1;
    const fdpo_st_tensor *t = fdpo_st_find(&st, "logps");
    int rc = 0;
    if (!t || t->dtype != FDPO_F64 || t->ndim != 2 || t->shape[0] != n || t->shape[1] != 2)
        rc = fdpo_error("%s: tensor 'logps' must be F64 [%zu, 2]", path, n);
    else
        memcpy(out, st.data + t->begin, 2 * n * sizeof(double));
    fdpo_st_close(&st);
    return rc;
}

static int parse_case(const char *spec, fdpo_pref_loss *L) {
    char div[64], loss[64];
    double beta, smooth, gamma, sft;
    memset(L, 0, sizeof *L);
    if (sscanf(spec, "%63s %63s %lf %lf %lf %lf", div, loss, &beta, &smooth, &gamma, &sft) != 6)
        return fdpo_error("--case '%s': expected DIV LOSS BETA SMOOTHING GAMMA SFT_WEIGHT", spec);
    if (fdpo_divergence_parse(div, &L->div) || fdpo_loss_parse(loss, &L->kind)) return -1;
    L->beta = beta; L->label_smoothing = smooth; L->simpo_gamma = gamma; L->sft_weight = sft;
    return fdpo_pref_loss_check(L);   /* fdpo_dpo_init expects a checked loss */
}

static void add_metrics(cJSON *o, const fdpo_dpo_metrics *m) {
    cJSON_AddNumberToObject(o, "loss", m->loss);
    cJSON_AddNumberToObject(o, "pref_loss", m->pref_loss);
    cJSON_AddNumberToObject(o, "sft_nll", m->sft_nll);
    cJSON_AddNumberToObject(o, "rewards/chosen", m->rewards_chosen);
    cJSON_AddNumberToObject(o, "rewards/rejected", m->rewards_rejected);
    cJSON_AddNumberToObject(o, "rewards/margins", m->margins);
    cJSON_AddNumberToObject(o, "rewards/accuracies", m->accuracy);
    cJSON_AddNumberToObject(o, "logps/chosen", m->logps_chosen);
    cJSON_AddNumberToObject(o, "logps/rejected", m->logps_rejected);
    cJSON_AddNumberToObject(o, "logits/chosen", m->logits_chosen);
    cJSON_AddNumberToObject(o, "logits/rejected", m->logits_rejected);
    if (m->scores_chosen == m->scores_chosen) {
        cJSON_AddNumberToObject(o, "scores/chosen", m->scores_chosen);
        cJSON_AddNumberToObject(o, "scores/rejected", m->scores_rejected);
    }
    cJSON_AddNumberToObject(o, "tokens", (double)m->tokens);
}

int h_dpo_grad(int argc, char **argv) {
    dpo_args a;
    if (parse_args(argc, argv, &a)) return -1;
    if (!a.policy || !a.out || a.n_cases == 0) return fdpo_error("--policy, --out and --case are required");
    fdpo_pair_layout layout;
    if (fdpo_layout_parse(a.layout, &layout)) return -1;
    fdpo_pref_set set;
    if (load_pairs(&a, a.policy, &set)) return -1;
    fdpo_gpt2 *policy = fdpo_checkpoint_load_model(a.policy), *ref = NULL;
    double *ref_logps = NULL, *pair_out = fdpo_malloc(5 * set.n * sizeof(double));
    const fdpo_pref_pair **pairs = fdpo_malloc(set.n * sizeof *pairs);
    for (size_t i = 0; i < set.n; i++) pairs[i] = &set.pairs[i];
    cJSON *root = cJSON_CreateObject(), *cases = cJSON_AddArrayToObject(root, "cases");
    int rc = policy ? 0 : -1;
    if (!rc && a.ref) { ref = fdpo_checkpoint_load_model(a.ref); if (!ref) rc = -1; }
    if (!rc && a.ref_logps) { ref_logps = fdpo_malloc(2 * set.n * sizeof(double)); rc = read_ref_logps(a.ref_logps, set.n, ref_logps); }
    if (!rc && fdpo_mkdir_p(a.out)) rc = -1;
    for (size_t c = 0; c < a.n_cases && !rc; c++) {
        fdpo_dpo_config cfg = {.layout = layout, .micro_batch = (size_t)a.micro_batch};
        fdpo_dpo d;
        if (parse_case(a.cases[c], &cfg.loss) || fdpo_dpo_init(&d, policy, ref, &cfg)) { rc = -1; break; }
        fdpo_gpt2_zero_grad(policy);
        fdpo_dpo_metrics m;
        rc = fdpo_dpo_step(&d, pairs, set.n, ref_logps, 1, &m, pair_out);
        fdpo_dpo_free(&d);
        if (rc) break;
        cJSON *co = cJSON_CreateObject();
        cJSON_AddStringToObject(co, "case", a.cases[c]);
        add_metrics(co, &m);
        cJSON *pa = cJSON_AddArrayToObject(co, "pairs");
        for (size_t i = 0; i < set.n; i++) {
            cJSON *row = cJSON_CreateArray();
            for (int j = 0; j < 5; j++) cJSON_AddItemToArray(row, cJSON_CreateNumber(pair_out[5 * i + j]));
            cJSON_AddItemToArray(pa, row);
        }
        cJSON_AddItemToArray(cases, co);
        char name[64];
        snprintf(name, sizeof name, "grads_%zu.safetensors", c);
        char *path = fdpo_path_join(a.out, name);
        fdpo_st_writer *w = fdpo_st_writer_new();
        fdpo_st_writer_add_gpt2(w, policy, policy->grads_memory, NULL);
        rc = fdpo_st_writer_write(w, path);
        fdpo_st_writer_free(w);
        free(path);
    }
    if (!rc) {
        char *path = fdpo_path_join(a.out, "result.json");
        rc = fdpo_write_json_atomic(path, root, 1);
        free(path);
    }
    cJSON_Delete(root);
    free(pairs); free(pair_out); free(ref_logps);
    fdpo_gpt2_free(policy);
    fdpo_gpt2_free(ref);
    fdpo_pref_free(&set);
    return rc;
}

/* dpo-bench --config config.json --layout shared|plain --ref cached|live [--pairs 4]
 *           [--prompt 128] [--chosen 64] [--rejected 64] [--steps 3] [--threads N]
 * One DPO training step = fdpo_dpo_step (policy forward/backward, live reference forward
 * when --ref live) + clip + AdamW, on random token pairs. Cached reference log-probs are
 * computed before the clock starts (a real run computes them once per data set). Prints one
 * JSON line: pairs_per_sec (mean over the timed steps after one warm-up), step_seconds,
 * best_step_seconds, tokens per step, peak RSS. [--precision fp32|bf16] sets the models'
 * matmul precision; [--serve] runs one step per "step" line on stdin, answering
 * {"seconds": S, "cpu_seconds": C (process CPU time, all threads), "phases": {"zero_grad",
 * "forward_backward" (fdpo_dpo_step), "grad_norm", "adamw": wall seconds}} (the benches
 * interleave fdpo and PyTorch steps; see h_model.c; bench_dpo_step.py prints the phases). */
static double process_cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec + 1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}
static const char *bench_arg(int argc, char **argv, const char *name, const char *def) {
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], name)) return argv[i + 1];
    return def;
}

int h_dpo_bench(int argc, char **argv) {
    const char *cfg_path = bench_arg(argc, argv, "--config", NULL);
    if (!cfg_path) return fdpo_error("usage: dpo-bench --config FILE [--layout shared|plain] [--ref cached|live] ...");
    const char *threads = bench_arg(argc, argv, "--threads", NULL);
    if (threads) fdpo_set_threads(atoi(threads));
    fdpo_pair_layout layout;
    if (fdpo_layout_parse(bench_arg(argc, argv, "--layout", "shared"), &layout)) return -1;
    int live = !strcmp(bench_arg(argc, argv, "--ref", "cached"), "live");
    size_t n_pairs = (size_t)atol(bench_arg(argc, argv, "--pairs", "4"));
    size_t P = (size_t)atol(bench_arg(argc, argv, "--prompt", "128"));
    size_t Cw = (size_t)atol(bench_arg(argc, argv, "--chosen", "64"));
    size_t Cl = (size_t)atol(bench_arg(argc, argv, "--rejected", "64"));
    size_t steps = (size_t)atol(bench_arg(argc, argv, "--steps", "3"));
    if (n_pairs == 0 || P == 0 || Cw == 0 || Cl == 0 || steps == 0) return fdpo_error("dpo-bench: sizes must be >= 1");
    int serve = 0;
    for (int i = 1; i < argc; i++) serve |= !strcmp(argv[i], "--serve");
    if (fdpo_set_precision(bench_arg(argc, argv, "--precision", "fp32"))) return -1;
    fdpo_gpt2_config c;
    if (fdpo_config_load(cfg_path, &c)) return -1;
    fdpo_gpt2 *policy = fdpo_gpt2_create(&c), *ref = NULL;
    if (!policy) return -1;
    fdpo_gpt2_init(policy, 1);
    fdpo_rng rng;
    fdpo_rng_seed(&rng, 7);
    fdpo_pref_pair *pairs = fdpo_calloc(n_pairs, sizeof *pairs);
    const fdpo_pref_pair **pp = fdpo_malloc(n_pairs * sizeof *pp);
    for (size_t k = 0; k < n_pairs; k++) {
        fdpo_pref_pair *p = &pairs[k];
        p->n_prompt = P; p->n_chosen = Cw; p->n_rejected = Cl; p->index = k;
        p->prompt = fdpo_malloc(P * sizeof(int32_t));
        p->chosen = fdpo_malloc(Cw * sizeof(int32_t));
        p->rejected = fdpo_malloc(Cl * sizeof(int32_t));
        for (size_t i = 0; i < P; i++) p->prompt[i] = (int32_t)fdpo_rng_below(&rng, c.vocab_size);
        for (size_t i = 0; i < Cw; i++) p->chosen[i] = (int32_t)fdpo_rng_below(&rng, c.vocab_size);
        for (size_t i = 0; i < Cl; i++) p->rejected[i] = (int32_t)fdpo_rng_below(&rng, c.vocab_size);
        pp[k] = p;
    }
    double *ref_logps = NULL;
    int rc = 0;
    ref = fdpo_gpt2_create(&c);
    fdpo_gpt2_copy_params(ref, policy);
    if (!live) {
        ref_logps = fdpo_malloc(2 * n_pairs * sizeof(double));
        rc = fdpo_dpo_pair_logps(ref, layout, 0, pp, n_pairs, ref_logps);
        fdpo_gpt2_free(ref);
        ref = NULL;
    }
    fdpo_dpo_config cfg = {.layout = layout, .micro_batch = 0,
                           .loss = {.kind = FDPO_LOSS_SIGMOID, .div = {.kind = FDPO_DIV_RKL}, .beta = 0.1}};
    fdpo_dpo d;
    fdpo_adamw opt;
    if (!rc) rc = fdpo_dpo_init(&d, policy, ref, &cfg);
    if (!rc) rc = fdpo_adamw_init(&opt, policy->n_params, 0.9, 0.999, 1e-8, 0.0);
    double total = 0, best = 1e30;
    size_t tokens = 0;
    if (serve && !rc) {
        printf("{\"ready\": 1, \"n_params\": %zu}\n", policy->n_params);
        fflush(stdout);
        steps = 0;
    }
    char line[64];
    for (size_t s = 0; !rc; s++) {
        if (serve ? !fgets(line, sizeof line, stdin) || strncmp(line, "step", 4) != 0 : s > steps) break;
        double t0 = fdpo_now(), c0 = process_cpu_seconds();
        fdpo_gpt2_zero_grad(policy);
        double t1 = fdpo_now();
        fdpo_dpo_metrics m;
        rc = fdpo_dpo_step(&d, pp, n_pairs, ref_logps, 1, &m, NULL);
        if (rc) break;
        double t2 = fdpo_now();
        /* as the trainer steps (src/train/trainer.c): clipping folded into AdamW's pass */
        double norm = fdpo_grad_norm(policy);
        double t3 = fdpo_now();
        fdpo_adamw_step_ex(&opt, policy, 1e-6, fdpo_clip_scale(norm, 1.0), 1);
        double t4 = fdpo_now(), dt = t4 - t0, dc = process_cpu_seconds() - c0;
        tokens = m.tokens;
        if (serve) {
            printf("{\"seconds\": %.6f, \"cpu_seconds\": %.6f, \"tokens\": %zu, \"phases\": {\"zero_grad\": %.6f, "
                   "\"forward_backward\": %.6f, \"grad_norm\": %.6f, \"adamw\": %.6f}}\n",
                   dt, dc, tokens, t1 - t0, t2 - t1, t3 - t2, t4 - t3);
            fflush(stdout);
            steps++;
            total += dt;
            if (dt < best) best = dt;
        } else if (s > 0) { total += dt; if (dt < best) best = dt; }
    }
    /* no timed step (a server closed before its first step): null rates, not inf and the
     * 1e30 sentinel, so the summary stays JSON */
    int timed = steps > 0 && total > 0;
    if (!rc) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        char b1[32], b2[32], b3[32];
        printf("{\"impl\": \"fdpo-%s-%s\", \"pairs_per_sec\": %s, \"step_seconds\": %s, \"best_step_seconds\": %s, "
               "\"tokens_per_step\": %zu, \"threads\": %d, \"n_params\": %zu, \"max_rss_kb\": %ld}\n",
               layout == FDPO_LAYOUT_SHARED ? "shared" : "plain", live ? "live" : "cached",
               harness_json_number(b1, "%.4f", timed ? (double)(n_pairs * steps) / total : 0, timed),
               harness_json_number(b2, "%.4f", timed ? total / (double)steps : 0, timed),
               harness_json_number(b3, "%.4f", best, timed), tokens, fdpo_get_threads(),
               policy->n_params, ru.ru_maxrss);
        fdpo_dpo_free(&d);
        fdpo_adamw_free(&opt);
    }
    for (size_t k = 0; k < n_pairs; k++) { free(pairs[k].prompt); free(pairs[k].chosen); free(pairs[k].rejected); }
    free(pairs); free(pp); free(ref_logps);
    fdpo_gpt2_free(policy);
    fdpo_gpt2_free(ref);
    return rc;
}

/* The train options that training_state.json does not hold (run control, LoRA, a random
 * init's shape), added for the comparison with --help when s lacks them. */
static void unsaved_train_settings(const fdpo_train_opts *t, fdpo_settings *s) {
    const struct { const char *key; double v; } x[] = {
        {"resume", t->resume}, {"overwrite", t->overwrite}, {"stop-at", (double)t->stop_at}, {"quiet", t->quiet},
        {"allreduce-overlap", t->allreduce_overlap}, {"lora-r", (double)t->lora_r}, {"lora-alpha", t->lora_alpha},
        {"lora-dropout", t->lora_dropout}, {"n-layer", (double)t->n_layer}, {"n-head", (double)t->n_head},
        {"n-embd", (double)t->n_embd}, {"n-positions", (double)t->n_positions}, {"n-kv-head", (double)t->n_kv_head},
        {"intermediate-size", (double)t->intermediate_size}, {"rope-theta", t->rope_theta},
        {"tie-word-embeddings", t->tie_word_embeddings},
    };
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        if (!fdpo_settings_find(s, x[i].key)) fdpo_settings_num(s, x[i].key, x[i].v, 0);
}

/* opts-defaults: the library's defaults of every training command's options as settings
 * under their flag names, one JSON object {"train", "sft", "dpo", "rm", "kto", "rl",
 * "online", "sacpo"} (fdpo_train_opts_default, fdpo_sft_opts_default,
 * fdpo_dpo_run_opts_default, fdpo_rm_run_opts_default, fdpo_kto_run_opts_default,
 * fdpo_rl_run_opts_default, fdpo_online_opts_default, fdpo_sacpo_opts_default);
 * tests/py/test_cli.py compares them with each command's --help. */
int h_opts_defaults(int argc, char **argv) {
    (void)argc; (void)argv;
    enum { TRAIN, SFT, DPO, RM, KTO, RL, ONLINE, SACPO, N_KINDS };
    static const char *const names[N_KINDS] = {"train", "sft", "dpo", "rm", "kto", "rl", "online", "sacpo"};
    fdpo_settings s[N_KINDS];
    memset(s, 0, sizeof s);
    fdpo_train_opts t;
    fdpo_train_opts_default(&t);
    fdpo_train_opts_settings(&t, &s[TRAIN]);
    fdpo_train_opts sft;
    fdpo_sft_opts_default(&sft);
    fdpo_train_opts_settings(&sft, &s[SFT]);
    fdpo_dpo_run_opts d;
    fdpo_dpo_run_opts_default(&d);
    fdpo_train_opts_settings(&d.train, &s[DPO]);
    fdpo_dpo_run_opts_settings(&d, &s[DPO]);
    fdpo_rm_run_opts rm;
    fdpo_rm_run_opts_default(&rm);
    fdpo_train_opts_settings(&rm.train, &s[RM]);
    fdpo_rm_run_opts_settings(&rm, &s[RM]);
    fdpo_kto_run_opts kto;
    fdpo_kto_run_opts_default(&kto);
    fdpo_train_opts_settings(&kto.train, &s[KTO]);
    fdpo_kto_run_opts_settings(&kto, &s[KTO]);
    fdpo_rl_run_opts rl;
    fdpo_rl_run_opts_default(&rl);
    fdpo_train_opts_settings(&rl.train, &s[RL]);
    fdpo_rl_run_opts_settings(&rl, &s[RL]);
    fdpo_online_opts on;
    fdpo_online_opts_default(&on);
    fdpo_online_round_settings(&on, &s[ONLINE]);   /* with the round's train and f-DPO settings */
    fdpo_sacpo_opts sa;
    fdpo_sacpo_opts_default(&sa);
    fdpo_train_opts_settings(&sa.dpo.train, &s[SACPO]);
    fdpo_dpo_run_opts_settings(&sa.dpo, &s[SACPO]);
    fdpo_settings st = {0};   /* the online stages' sampling and rounds: the keys sa.dpo has not */
    fdpo_online_round_settings(&sa.online, &st);
    for (size_t i = 0; i < st.n; i++) {
        const fdpo_setting *x = &st.v[i];
        if (fdpo_settings_find(&s[SACPO], x->key)) continue;
        if (x->type == FDPO_SETTING_NUM) fdpo_settings_num(&s[SACPO], x->key, x->num, x->fixed);
        else if (x->type == FDPO_SETTING_BOOL) fdpo_settings_bool(&s[SACPO], x->key, x->num != 0, x->fixed);
        else fdpo_settings_str(&s[SACPO], x->key, x->type == FDPO_SETTING_STR ? x->str : NULL, x->fixed);
    }
    fdpo_settings_free(&st);
    fdpo_settings_str(&s[SACPO], "order", sa.safety_first ? "safety-first" : "reward-first", 1);
    fdpo_settings_num(&s[ONLINE], "rounds", (double)on.rounds, 0);   /* online.json keeps no round count */
    fdpo_settings_num(&s[SACPO], "rounds", (double)sa.online.rounds, 0);
    const fdpo_train_opts *const train_of[N_KINDS] = {&t, &sft, &d.train, &rm.train, &kto.train, &rl.train, &on.dpo.train, &sa.dpo.train};
    cJSON *o = cJSON_CreateObject();
    for (int k = 0; k < N_KINDS; k++) {
        unsaved_train_settings(train_of[k], &s[k]);
        cJSON_AddItemToObject(o, names[k], fdpo_settings_to_json(&s[k]));
        fdpo_settings_free(&s[k]);
    }
    char *text = cJSON_PrintUnformatted(o);
    printf("%s\n", text);
    cJSON_free(text);
    cJSON_Delete(o);
    return 0;
}
