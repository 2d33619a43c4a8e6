/* Harness subcommands for the model and checkpoint IO tests and the training-step bench.
 *
 *   model-fb --model DIR --batch batch.json --out out.safetensors [--threads N] [--pre FILE]
 *       batch.json: {"sequences": [{"tokens": [..], "targets": [..], "weights"?: [..],
 *                    "pos"?: [..], "branch"?: [..]}, ...], "d_token_logp"?: [N floats],
 *                    "skip_unweighted"?: true, "fused_head"?: true}
 *       Writes logits [N,V] (zeros after a fused_head forward), logit_sums [N] (when the batch
       has a "fused_head" key, true or false), token_logp [N], seq_logp [B] and, when
       d_token_logp is given,
 *       every parameter gradient under its HF name. --pre FILE first runs forward+backward on
 *       another batch (exercises buffer reuse and growth; its gradients are dropped).
 *   model-init --config config.json --seed S --out DIR     initialised checkpoint
 *   model-load --model DIR [--save OUT]                    load (and re-save) a checkpoint
 *   model-bench --config config.json --batch B --seq T --steps S [--threads N] [--adamw 0|1]
 *               [--precision fp32|bf16] [--fused-head 0|1] [--serve]
 *       --fused-head 1 (default): the chunked LM head that pretrain and sft use; 0: [N, V] logits.
 *       prints one JSON line: tokens_per_sec, step_seconds, ... (synthetic tokens).
 *       --serve: after setup print {"ready": ...}, then run one step per "step" line read
 *       on stdin and answer {"seconds": S, "cpu_seconds": C}; "quit" (or EOF) prints the
 *       summary line and exits. The benches interleave fdpo and PyTorch steps this way.
 *   model-peaks [--threads N] [--gemm M,K,N] [--triad-mib MIB]
 *       the machine's measured peaks, one JSON line: fp32 sgemm (fdpo_sgemm: oneDNN, what
 *       fdpo calls; and OpenBLAS's cblas_sgemm, what PyTorch's fp32 matmuls call), bf16 GEMM
 *       (fdpo_gemm_bf16 on the route it picks here: vdpbf16ps or fp32 FMA, FDPO_BF16_GEMM;
 *       dpbf16_gemm_gflops: forced onto oneDNN's vdpbf16ps GEMM, 0 without AVX512-BF16) in GFLOP/s;
 *       with --triad-mib, also triad_gbs: the STREAM triad of h_triad.c over three arrays of
 *       MIB MiB (the benches size and run it themselves: bench/bandwidth.py, `triad`).
 *   isa-peaks [--threads N]   (h_isa.c) fp32 FMA vs vdpbf16ps instruction rates
 *   gemm-check ...            (h_gemm.c) both GEMM entry points on random operands
 *   model-ops --config config.json --batch B --seq T [--threads N] [--reps R]
 *       per-op timer of one fp32 training step at these shapes: runs each kernel of the
 *       forward/backward (fdpo_k_*, the linear GEMMs, the chunked LM head) and the AdamW
 *       step on random inputs, best of R (default 5) batches of 10 calls, and prints one JSON
 *       line per op: calls per step, CPU and wall ms per step (process CPU time: steadier
 *       than wall time on a shared machine), then a "total" line. docs/model.md#wave-5.
 *   model-fb also takes --precision fp32|bf16, and --lora ADAPTER_DIR: PEFT adapters attached
 *       (base frozen); the gradients written are then the adapters' (lora_A / lora_B names).
 *       --lora-train STEP: as in training step STEP (dropout on, masks keyed by STEP).
 *       --backward-hidden 1: fdpo_gpt2_backward_hidden with d hidden = 0 instead of the
 *       batch's d_token_logp. --report-hidden 1: the output gets hidden_available, 1 when
 *       fdpo_gpt2_hidden() returned the hidden states after the forward.
 *   attention-check --lengths T1,T2,... --heads NH --head-size HS --seed S [--branches 0|1] --out FILE
 *       random qkv [N,3C] and upstream d_out [N,C] over a packed batch (with --branches 1,
 *       each sequence is [shared | branch 1 | branch 2] as in the shared-prompt DPO layout);
 *       runs the materialised attention (fdpo_k_attention_forward/backward, T x T maps) and the
 *       streaming one (attention_*_streaming, O(T)) and writes qkv, dout, branch, and each
 *       one's out / dqkv as safetensors; prints one JSON line with each kernel's CPU seconds
 *       (process CPU time: steadier than wall time on a shared machine).
 *   kernel-expf
 *       reads floats from stdin (C99 hex "%a" or decimal, inf/nan), writes fdpo_k_expf of
 *       each, one "%a" per line (the tests compare with numpy's float64 exp), computed in a
 *       vectorised loop; fails if any differs from the scalar call on the same float.
 */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include "fdpo/core.h"
#include "fdpo/gpt2.h"
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/train.h"
#include "harness.h"
#include "model/gpt2_internal.h"
#include <cblas.h>
#include <omp.h>

/* --name VALUE lookup; NULL if absent */
static const char *arg(int argc, char **argv, const char *name) {
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], name)) return argv[i + 1];
    return NULL;
}

typedef struct {
    fdpo_batch b;
    size_t *seq_offset;
    int32_t *tokens, *targets, *pos;
    float *weights, *d_token_logp;
    int logit_sums; /* write logit_sums (the batch names fused_head) */
    uint8_t *branch;
} owned_batch;

static void batch_free(owned_batch *ob) {
    free(ob->seq_offset); free(ob->tokens); free(ob->targets); free(ob->pos);
    free(ob->weights); free(ob->d_token_logp); free(ob->branch);
}

static int read_array(const cJSON *seq, const char *key, size_t s, size_t T, size_t off, int32_t *i32, float *f32, uint8_t *u8) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(seq, key);
    if (!cJSON_IsArray(a) || (size_t)cJSON_GetArraySize(a) != T)
        return fdpo_error("batch: sequence %zu: '%s' must be an array of %zu numbers", s, key, T);
    size_t t = 0;
    for (const cJSON *v = a->child; v; v = v->next, t++) {
        if (!cJSON_IsNumber(v)) return fdpo_error("batch: sequence %zu: %s[%zu] is not a number", s, key, t);
        double x = v->valuedouble;
        if ((i32 && !(x >= -2147483648.0 && x <= 2147483647.0)) || (u8 && !(x >= 0 && x <= 255)))
            return fdpo_error("batch: sequence %zu: %s[%zu] = %g is out of range", s, key, t, x);
        if (i32) i32[off + t] = (int32_t)x;
        if (f32) f32[off + t] = (float)x;
        if (u8) u8[off + t] = (uint8_t)x;
    }
    return 0;
}

static int batch_load(const char *path, owned_batch *ob) {
    memset(ob, 0, sizeof *ob);
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *seqs = cJSON_GetObjectItemCaseSensitive(root, "sequences");
    if (!cJSON_IsArray(seqs)) { cJSON_Delete(root); return fdpo_error("%s: needs a 'sequences' array", path); }
    size_t B = (size_t)cJSON_GetArraySize(seqs), N = 0, s = 0;
    ob->seq_offset = fdpo_calloc(B + 1, sizeof(size_t));
    int any_w = 0, any_pos = 0, any_branch = 0;
    for (const cJSON *q = seqs->child; q; q = q->next, s++) {
        N += (size_t)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(q, "tokens"));
        ob->seq_offset[s + 1] = N;
        any_w |= cJSON_GetObjectItemCaseSensitive(q, "weights") != NULL;
        any_pos |= cJSON_GetObjectItemCaseSensitive(q, "pos") != NULL;
        any_branch |= cJSON_GetObjectItemCaseSensitive(q, "branch") != NULL;
    }
    ob->tokens = fdpo_calloc(N + 1, sizeof(int32_t));
    ob->targets = fdpo_calloc(N + 1, sizeof(int32_t));
    if (any_w) ob->weights = fdpo_calloc(N + 1, sizeof(float));
    if (any_pos) ob->pos = fdpo_calloc(N + 1, sizeof(int32_t));
    if (any_branch) ob->branch = fdpo_calloc(N + 1, 1);
    int rc = 0;
    s = 0;
    for (const cJSON *q = seqs->child; q && !rc; q = q->next, s++) {
        size_t off = ob->seq_offset[s], T = ob->seq_offset[s + 1] - off;
        rc = read_array(q, "tokens", s, T, off, ob->tokens, NULL, NULL);
        if (!rc) rc = read_array(q, "targets", s, T, off, ob->targets, NULL, NULL);
        for (size_t t = 0; t < T; t++) {
            if (ob->weights) ob->weights[off + t] = ob->targets[off + t] >= 0 ? 1.0f : 0.0f;
            if (ob->pos) ob->pos[off + t] = (int32_t)t;
        }
        if (!rc && ob->weights && cJSON_GetObjectItemCaseSensitive(q, "weights")) rc = read_array(q, "weights", s, T, off, NULL, ob->weights, NULL);
        if (!rc && ob->pos && cJSON_GetObjectItemCaseSensitive(q, "pos")) rc = read_array(q, "pos", s, T, off, ob->pos, NULL, NULL);
        if (!rc && ob->branch && cJSON_GetObjectItemCaseSensitive(q, "branch")) rc = read_array(q, "branch", s, T, off, NULL, NULL, ob->branch);
    }
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "d_token_logp");
    if (!rc && d) {
        if (!cJSON_IsArray(d) || (size_t)cJSON_GetArraySize(d) != N) rc = fdpo_error("%s: d_token_logp must have %zu numbers", path, N);
        ob->d_token_logp = fdpo_calloc(N + 1, sizeof(float));
        size_t t = 0;
        for (const cJSON *v = d->child; v && !rc; v = v->next) ob->d_token_logp[t++] = (float)v->valuedouble;
    }
    int skip = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "skip_unweighted"));
    const cJSON *fh = cJSON_GetObjectItemCaseSensitive(root, "fused_head");
    int fused = cJSON_IsTrue(fh);
    ob->logit_sums = fh != NULL; /* the key, true or false, asks for logit_sums in the output */
    cJSON_Delete(root);
    ob->b = (fdpo_batch){.n_seq = B, .n_tokens = N, .seq_offset = ob->seq_offset, .tokens = ob->tokens,
                         .targets = ob->targets, .weights = ob->weights, .pos = ob->pos, .branch = ob->branch,
                         .skip_unweighted = skip, .fused_head = fused};
    return rc ? fdpo_error_context("%s", path) : 0;
}

static int h_model_fb(int argc, char **argv) {
    const char *dir = arg(argc, argv, "--model"), *bpath = arg(argc, argv, "--batch"), *out = arg(argc, argv, "--out");
    const char *threads = arg(argc, argv, "--threads"), *pre = arg(argc, argv, "--pre");
    if (!dir || !bpath || !out) return fdpo_error("usage: model-fb --model DIR --batch FILE --out FILE");
    if (threads) fdpo_set_threads(atoi(threads));
    const char *prec = arg(argc, argv, "--precision");
    fdpo_precision precision = FDPO_PRECISION_FP32;
    if (prec && fdpo_precision_parse(prec, &precision)) return -1;
    fdpo_gpt2 *m = fdpo_checkpoint_load_model(dir);
    if (!m) return -1;
    const char *lora = arg(argc, argv, "--lora");
    if (lora && fdpo_lora_load_peft(lora, m)) { fdpo_gpt2_free(m); return -1; }
    const char *lora_train = arg(argc, argv, "--lora-train");
    if (lora_train && m->lora) fdpo_lora_begin_step(m->lora, (uint64_t)atoll(lora_train));
    fdpo_gpt2_set_precision(m, precision);
    owned_batch ob;
    int rc = batch_load(bpath, &ob);
    size_t N = ob.b.n_tokens, B = ob.b.n_seq, V = m->config.vocab_size;
    if (!rc && pre) { /* another batch first: the real one then reuses or grows its buffers */
        owned_batch pb;
        rc = batch_load(pre, &pb);
        float *d = fdpo_calloc(pb.b.n_tokens + 1, sizeof(float));
        for (size_t t = 0; t < pb.b.n_tokens; t++) d[t] = 1.0f;
        if (!rc) rc = fdpo_gpt2_forward(m, &pb.b, NULL, NULL);
        if (!rc) rc = fdpo_gpt2_backward(m, pb.d_token_logp ? pb.d_token_logp : d);
        free(d);
        batch_free(&pb);
    }
    float *tlp = fdpo_calloc(N + 1, sizeof(float)), *slp = fdpo_calloc(B + 1, sizeof(float));
    float *logits = fdpo_calloc(N * V + 1, sizeof(float)), *lsum = fdpo_calloc(N + 1, sizeof(float));
    /* a trained model's order: gradients zeroed before the forward (a GPT-2 with a gradient
     * buffer may keep its fused head's logits for the backward) */
    if (!rc && ob.d_token_logp) fdpo_gpt2_zero_grad(m);
    if (!rc) rc = fdpo_gpt2_forward(m, &ob.b, tlp, slp);
    if (!rc && fdpo_gpt2_logits(m)) memcpy(logits, fdpo_gpt2_logits(m), N * V * sizeof(float)); /* fused: zeros */
    if (!rc) rc = fdpo_gpt2_logit_sums(m, lsum);
    float hidden_available = !rc && fdpo_gpt2_hidden(m) != NULL;
    if (!rc && arg(argc, argv, "--backward-hidden")) { /* d hidden = 0 instead of the batch's d_token_logp */
        float *dh = fdpo_calloc(N * m->config.n_embd + 1, sizeof(float));
        rc = fdpo_gpt2_backward_hidden(m, dh);
        free(dh);
    } else if (!rc && ob.d_token_logp) {
        rc = fdpo_gpt2_backward(m, ob.d_token_logp);
    }
    if (!rc) {
        fdpo_st_writer *w = fdpo_st_writer_new();
        size_t sl[2] = {N, V}, sn[1] = {N}, sb[1] = {B};
        fdpo_st_writer_add(w, "logits", FDPO_F32, sl, 2, logits);
        fdpo_st_writer_add(w, "token_logp", FDPO_F32, sn, 1, tlp);
        fdpo_st_writer_add(w, "seq_logp", FDPO_F32, sb, 1, slp);
        if (ob.logit_sums) fdpo_st_writer_add(w, "logit_sums", FDPO_F32, sn, 1, lsum);
        size_t s1[1] = {1};
        if (arg(argc, argv, "--report-hidden")) fdpo_st_writer_add(w, "hidden_available", FDPO_F32, s1, 1, &hidden_available);
        if (ob.d_token_logp) {
            if (m->lora) fdpo_st_writer_add_gpt2(w, &m->lora->view, m->lora->view.grads_memory, NULL);
            else fdpo_st_writer_add_gpt2(w, m, m->grads_memory, NULL);
        }
        rc = fdpo_st_writer_write(w, out);
        fdpo_st_writer_free(w);
    }
    free(tlp); free(slp); free(logits); free(lsum);
    batch_free(&ob);
    fdpo_gpt2_free(m);
    return rc;
}

static int h_model_init(int argc, char **argv) {
    const char *cfg = arg(argc, argv, "--config"), *seed = arg(argc, argv, "--seed"), *out = arg(argc, argv, "--out");
    if (!cfg || !out) return fdpo_error("usage: model-init --config config.json --seed S --out DIR");
    fdpo_gpt2_config c;
    if (fdpo_config_load(cfg, &c)) return -1;
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    if (!m) return -1;
    fdpo_gpt2_init(m, seed ? strtoull(seed, NULL, 10) : 0);
    int rc = fdpo_checkpoint_save_model(out, m);
    fdpo_gpt2_free(m);
    return rc;
}

static int h_model_load(int argc, char **argv) {
    const char *dir = arg(argc, argv, "--model"), *save = arg(argc, argv, "--save");
    if (!dir) return fdpo_error("usage: model-load --model DIR [--save OUT]");
    fdpo_gpt2 *m = fdpo_checkpoint_load_model(dir);
    if (!m) return -1;
    printf("loaded %zu parameters\n", m->n_params);
    int rc = save ? fdpo_checkpoint_save_model(save, m) : 0;
    fdpo_gpt2_free(m);
    return rc;
}

/* CPU time of the whole process (all threads), for comparisons on a busy machine */
static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int h_model_bench(int argc, char **argv) {
    const char *cfg = arg(argc, argv, "--config"), *threads = arg(argc, argv, "--threads");
    const char *bs = arg(argc, argv, "--batch"), *ts = arg(argc, argv, "--seq"), *ss = arg(argc, argv, "--steps");
    const char *adam = arg(argc, argv, "--adamw"), *prec = arg(argc, argv, "--precision");
    const char *fused = arg(argc, argv, "--fused-head");
    int serve = 0;
    for (int i = 1; i < argc; i++) serve |= !strcmp(argv[i], "--serve");
    fdpo_precision precision = FDPO_PRECISION_FP32;
    if (prec && fdpo_precision_parse(prec, &precision)) return -1;
    if (!cfg || !bs || !ts) return fdpo_error("usage: model-bench --config FILE --batch B --seq T [--steps S]");
    if (threads) fdpo_set_threads(atoi(threads));
    fdpo_gpt2_config c;
    if (fdpo_config_load(cfg, &c)) return -1;
    size_t B = (size_t)atoi(bs), T = (size_t)atoi(ts), steps = ss ? (size_t)atoi(ss) : 3, N = B * T;
    int use_adamw = !adam || atoi(adam);
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    if (!m) return -1;
    fdpo_gpt2_init(m, 1);
    fdpo_gpt2_set_precision(m, precision);
    size_t *off = fdpo_malloc((B + 1) * sizeof(size_t));
    int32_t *tok = fdpo_malloc(N * sizeof(int32_t)), *tgt = fdpo_malloc(N * sizeof(int32_t));
    float *d = fdpo_malloc(N * sizeof(float));
    fdpo_rng rng;
    fdpo_rng_seed(&rng, 7);
    for (size_t b = 0; b <= B; b++) off[b] = b * T;
    for (size_t t = 0; t < N; t++) {
        tok[t] = (int32_t)fdpo_rng_below(&rng, c.vocab_size);
        tgt[t] = (int32_t)fdpo_rng_below(&rng, c.vocab_size);
        d[t] = -1.0f / (float)N; /* the SFT gradient */
    }
    /* the LM head as pretrain/sft run it (chunked, no [N, V] logits) unless --fused-head 0 */
    fdpo_batch b = {.n_seq = B, .n_tokens = N, .seq_offset = off, .tokens = tok, .targets = tgt,
                    .fused_head = !fused || atoi(fused), .head_keep_max_bytes = FDPO_LM_LOGITS_KEEP_MAX_BYTES};
    fdpo_adamw opt;
    if (use_adamw) fdpo_adamw_init(&opt, m->n_params, 0.9, 0.95, 1e-8, 0.1);
    double t_total = 0.0, best = 1e30, cpu_total = 0.0;
    int rc = 0;
    if (serve) {
        printf("{\"ready\": 1, \"n_params\": %zu, \"bf16_native\": %d}\n", m->n_params,
               precision == FDPO_PRECISION_BF16 ? fdpo_bf16_native() : 0);
        fflush(stdout);
        steps = 0;
    }
    char line[64];
    for (size_t step = 0; !rc; step++) { /* step 0 is warm-up (without --serve) */
        if (serve) {
            if (!fgets(line, sizeof line, stdin) || strncmp(line, "step", 4) != 0) break;
        } else if (step > steps) {
            break;
        }
        double t0 = fdpo_now(), c0 = cpu_seconds();
        fdpo_gpt2_zero_grad(m);
        rc = fdpo_gpt2_forward(m, &b, NULL, NULL);
        if (!rc) rc = fdpo_gpt2_backward(m, d);
        if (!rc && use_adamw) fdpo_adamw_step(&opt, m, 1e-4);
        double dt = fdpo_now() - t0, dc = cpu_seconds() - c0;
        if (serve) {
            printf("{\"seconds\": %.6f, \"cpu_seconds\": %.6f}\n", dt, dc);
            fflush(stdout);
            t_total += dt; cpu_total += dc; steps++;
            if (dt < best) best = dt;
        } else if (step > 0) { t_total += dt; cpu_total += dc; if (dt < best) best = dt; }
    }
    /* no timed step (--steps 0, a server closed before its first step): the rates are null,
     * not inf and the 1e30 sentinel, so the summary stays JSON */
    int timed = steps > 0 && t_total > 0;
    if (use_adamw) fdpo_adamw_free(&opt);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    char b1[32], b2[32], b3[32], b4[32];
    if (!rc)
        printf("{\"impl\": \"fdpo\", \"tokens_per_sec\": %s, \"step_seconds\": %s, \"best_step_seconds\": %s, "
               "\"cpu_seconds_per_step\": %s, \"n_params\": %zu, \"adamw\": %d, \"threads\": %d, \"max_rss_kb\": %ld}\n",
               harness_json_number(b1, "%.1f", timed ? (double)(N * steps) / t_total : 0, timed),
               harness_json_number(b2, "%.4f", timed ? t_total / (double)steps : 0, timed),
               harness_json_number(b3, "%.4f", best, timed),
               harness_json_number(b4, "%.4f", timed ? cpu_total / (double)steps : 0, timed), m->n_params, use_adamw,
               fdpo_get_threads(), ru.ru_maxrss);
    free(off); free(tok); free(tgt); free(d);
    fdpo_gpt2_free(m);
    return rc;
}

/* ---- model-ops: per-op timer (CPU and wall ms per training step) ---- */
typedef struct {
    double cpu_ms, wall_ms;
} op_time;

static float *ops_random(fdpo_rng *rng, size_t n) {
    float *p = fdpo_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = (float)(fdpo_rng_uniform(rng) - 0.5);
    return p;
}

static double ops_total_cpu, ops_total_wall;
static void ops_report(const char *name, int calls, op_time t) {
    printf("{\"op\": \"%s\", \"calls_per_step\": %d, \"cpu_ms_per_step\": %.4f, \"wall_ms_per_step\": %.4f}\n", name,
           calls, t.cpu_ms * calls, t.wall_ms * calls);
    ops_total_cpu += t.cpu_ms * calls;
    ops_total_wall += t.wall_ms * calls;
}

/* ops_report(NAME, CALLS, best of reps batches of 10 calls of STMT, per call, in ms) */
#define OPS_TIME(name, calls, reps, STMT)                                                            \
    do {                                                                                             \
        op_time best_ = {1e30, 1e30};                                                                \
        for (int r_ = 0; r_ < (reps); r_++) {                                                        \
            double w0_ = fdpo_now(), c0_ = cpu_seconds();                                            \
            for (int i_ = 0; i_ < 10; i_++) { STMT; }                                                \
            double w_ = (fdpo_now() - w0_) * 100.0, c_ = (cpu_seconds() - c0_) * 100.0;              \
            if (c_ < best_.cpu_ms) best_.cpu_ms = c_;                                                \
            if (w_ < best_.wall_ms) best_.wall_ms = w_;                                              \
        }                                                                                            \
        ops_report(name, calls, best_);                                                              \
    } while (0)

static int h_model_ops(int argc, char **argv) {
    const char *cfg = arg(argc, argv, "--config"), *threads = arg(argc, argv, "--threads");
    const char *bs = arg(argc, argv, "--batch"), *ts = arg(argc, argv, "--seq"), *rs = arg(argc, argv, "--reps");
    if (!cfg || !bs || !ts) return fdpo_error("usage: model-ops --config FILE --batch B --seq T [--threads N] [--reps R]");
    if (threads) fdpo_set_threads(atoi(threads));
    fdpo_gpt2_config c;
    if (fdpo_config_load(cfg, &c)) return -1;
    if (c.arch != FDPO_ARCH_GPT2) return fdpo_error("model-ops: --config: GPT-2 configs only");
    int reps = rs && atoi(rs) > 0 ? atoi(rs) : 5, L = (int)c.n_layer;
    size_t B = (size_t)atoi(bs), T = (size_t)atoi(ts), N = B * T, C = c.n_embd, NH = c.n_head, V = c.vocab_size;
    if (B == 0 || T == 0 || T > c.n_positions) return fdpo_error("model-ops: --batch/--seq: need B >= 1, 1 <= T <= n_positions");
    fdpo_rng rng;
    fdpo_rng_seed(&rng, 5);
    float *x = ops_random(&rng, N * 4 * C), *y = ops_random(&rng, N * 4 * C), *o = ops_random(&rng, N * 4 * C);
    float *w = ops_random(&rng, 16 * C * C), *dw = ops_random(&rng, 16 * C * C), *bias = ops_random(&rng, 4 * C);
    float *qkv = ops_random(&rng, N * 3 * C), *dqkv = ops_random(&rng, N * 3 * C), *att = ops_random(&rng, N * C);
    float *lse = ops_random(&rng, N * NH), *mean = ops_random(&rng, N), *rstd = ops_random(&rng, N);
    float *lw = ops_random(&rng, C), *lb = ops_random(&rng, C), *dlw = ops_random(&rng, C), *dlb = ops_random(&rng, 4 * C);
    float *wte = ops_random(&rng, V * C), *dwte = ops_random(&rng, V * C), *wpe = ops_random(&rng, T * C);
    float *dwpe = ops_random(&rng, T * C), *tlp = ops_random(&rng, N), *lsum = ops_random(&rng, N);
    float *dt = fdpo_malloc(N * sizeof(float)), *scratch = fdpo_malloc(N * fdpo_lmhead_chunk(V) * sizeof(float));
    double *acc = fdpo_malloc(3 * N * sizeof(double));
    int32_t *tok = fdpo_malloc(N * sizeof(int32_t)), *pos = fdpo_malloc(N * sizeof(int32_t));
    size_t *off = fdpo_malloc((B + 1) * sizeof(size_t)), chunk = fdpo_lmhead_chunk(V);
    for (size_t b = 0; b <= B; b++) off[b] = b * T;
    for (size_t t = 0; t < N; t++) {
        tok[t] = (int32_t)fdpo_rng_below(&rng, V);
        pos[t] = (int32_t)(t % T);
        dt[t] = -1.0f / (float)N;
    }
    for (size_t i = 0; i < N; i++) rstd[i] = 1.0f;
    const fdpo_bf16_weight fp32_head = {NULL, NULL}; /* the fp32 head */
    fdpo_k_attention_forward_streaming(att, lse, qkv, off, NULL, B, C, NH); /* a consistent lse */
    ops_total_cpu = ops_total_wall = 0.0;
    const int R = reps;
    OPS_TIME("encoder_forward", 1, R, fdpo_k_encoder_forward(o, tok, pos, wte, wpe, N, C));
    OPS_TIME("layernorm_forward", 1, R, fdpo_k_layernorm_forward(o, mean, rstd, x, lw, lb, N, C, 1e-5f));
    OPS_TIME("matmul_forward qkv", L, R, fdpo_k_matmul_forward(o, x, w, bias, N, C, 3 * C));
    OPS_TIME("attention_forward", L, R, fdpo_k_attention_forward_streaming(att, lse, qkv, off, NULL, B, C, NH));
    OPS_TIME("matmul_forward attn_proj", L, R, fdpo_k_matmul_forward(o, x, w, NULL, N, C, C));
    OPS_TIME("residual_layernorm_forward", 2 * L, R, fdpo_k_residual_layernorm_forward(y, o, mean, rstd, lb, x, lw, lb, N, C, 1e-5f));
    OPS_TIME("matmul_forward fc", L, R, fdpo_k_matmul_forward(o, x, w, NULL, N, C, 4 * C));
    OPS_TIME("bias_gelu_forward", L, R, fdpo_k_bias_gelu_forward(o, y, bias, N, 4 * C));
    OPS_TIME("matmul_forward fc_proj", L, R, fdpo_k_matmul_forward(o, x, w, NULL, N, 4 * C, C));
    OPS_TIME("lmhead_logsoftmax_forward", 1, R, fdpo_k_lmhead_logsoftmax_forward_chunked(lse, tlp, lsum, x, wte, fp32_head, tok, N, C, V, chunk,
                                                                    scratch, NULL, acc, 0));
    OPS_TIME("lmhead_logsoftmax_backward", 1, R, fdpo_k_lmhead_logsoftmax_backward_chunked(o, dwte, dt, lse, tok, x, wte, fp32_head, N, C, V, chunk,
                                                                     scratch, NULL, chunk >= V));
    OPS_TIME("layernorm_backward", 2 * L + 1, R, fdpo_k_layernorm_backward(o, dlw, dlb, y, x, lw, mean, rstd, N, C));
    OPS_TIME("matmul_backward fc_proj", L, R, fdpo_k_matmul_backward(o, dw, dlb, y, x, w, N, 4 * C, C, 0));
    OPS_TIME("gelu_backward_bias", L, R, fdpo_k_gelu_backward_bias(o, dlb, x, N, 4 * C));
    OPS_TIME("matmul_backward fc", L, R, fdpo_k_matmul_backward(o, dw, NULL, y, x, w, N, C, 4 * C, 0));
    OPS_TIME("matmul_backward attn_proj", L, R, fdpo_k_matmul_backward(o, dw, dlb, y, x, w, N, C, C, 0));
    OPS_TIME("attention_backward", L, R, fdpo_k_attention_backward_streaming(dqkv, y, qkv, att, lse, off, NULL, B, C, NH, 0));
    if (fdpo_attention_bf16(FDPO_PRECISION_BF16))   /* what a bf16 model's backward runs instead */
        OPS_TIME("attention_backward bf16", L, R,
                 fdpo_k_attention_backward_streaming(dqkv, y, qkv, att, lse, off, NULL, B, C, NH, 1));
    OPS_TIME("matmul_backward qkv", L, R, fdpo_k_matmul_backward(o, dw, dlb, y, x, w, N, C, 3 * C, 0));
    OPS_TIME("encoder_backward", 1, R, fdpo_k_encoder_backward(dwte, dwpe, y, tok, pos, N, C));
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    if (!m) return -1;
    fdpo_gpt2_init(m, 1);
    fdpo_gpt2_zero_grad(m);
    fdpo_adamw opt;
    fdpo_adamw_init(&opt, m->n_params, 0.9, 0.95, 1e-8, 0.1);
    OPS_TIME("zero_grad", 1, R, fdpo_gpt2_zero_grad(m));
    OPS_TIME("adamw_step", 1, R, fdpo_adamw_step(&opt, m, 1e-4));
    printf("{\"op\": \"total\", \"cpu_ms_per_step\": %.4f, \"wall_ms_per_step\": %.4f, \"threads\": %d}\n",
           ops_total_cpu, ops_total_wall, fdpo_get_threads());
    fdpo_adamw_free(&opt);
    fdpo_gpt2_free(m);
    float *bufs[] = {x, y, o, w, dw, bias, qkv, dqkv, att, lse, mean, rstd, lw, lb, dlw, dlb, wte, dwte, wpe, dwpe,
                     tlp, lsum, dt, scratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(acc); free(tok); free(pos); free(off);
    return 0;
}

/* best of several runs of fn, at least min_reps and until min_seconds have passed */
static double best_seconds(void (*fn)(void *), void *ctx, int min_reps, double min_seconds) {
    double best = 1e30, start = fdpo_now();
    for (int r = 0; r < min_reps || fdpo_now() - start < min_seconds; r++) {
        double t0 = fdpo_now();
        fn(ctx);
        double dt = fdpo_now() - t0;
        if (dt < best) best = dt;
        if (r > 1000) break;
    }
    return best;
}

typedef struct {
    size_t M, K, N;
    float *a, *b, *c;
    uint16_t *ha, *hb;
} peak_ctx;

static void run_sgemm(void *p) { /* the fp32 GEMM fdpo's kernels call (oneDNN) */
    peak_ctx *x = p;
    fdpo_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)x->M, (int)x->N, (int)x->K, 1.0f, x->a, (int)x->K,
               x->b, (int)x->N, 0.0f, x->c, (int)x->N);
}

static void run_sgemm_openblas(void *p) { /* what PyTorch's fp32 matmuls call here */
    peak_ctx *x = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)x->M, (int)x->N, (int)x->K, 1.0f, x->a, (int)x->K,
                x->b, (int)x->N, 0.0f, x->c, (int)x->N);
}

static void run_gemm_bf16(void *p) {
    peak_ctx *x = p;
    fdpo_gemm_bf16(0, 0, x->M, x->N, x->K, 1.0f, x->ha, x->K, x->hb, x->N, 0.0f, x->c, x->N);
}

static int h_model_peaks(int argc, char **argv) {
    const char *threads = arg(argc, argv, "--threads"), *gemm = arg(argc, argv, "--gemm"), *mib = arg(argc, argv, "--triad-mib");
    if (threads) fdpo_set_threads(atoi(threads));
    peak_ctx x = {.M = 1024, .K = 768, .N = 3072};
    if (gemm && sscanf(gemm, "%zu,%zu,%zu", &x.M, &x.K, &x.N) != 3)
        return fdpo_error("--gemm: '%s' is not M,K,N", gemm);
    size_t big = x.M * x.K > x.K * x.N ? x.M * x.K : x.K * x.N;
    big = big > x.M * x.N ? big : x.M * x.N;
    x.a = fdpo_malloc(big * sizeof(float)); x.b = fdpo_malloc(big * sizeof(float)); x.c = fdpo_malloc(big * sizeof(float));
    x.ha = fdpo_malloc(big * sizeof(uint16_t)); x.hb = fdpo_malloc(big * sizeof(uint16_t));
    for (size_t i = 0; i < big; i++) { x.a[i] = (float)((i * 7) % 13) * 0.1f; x.b[i] = (float)((i * 5) % 11) * 0.1f; }
    fdpo_f32_to_bf16(x.ha, x.a, big);
    fdpo_f32_to_bf16(x.hb, x.b, big);
    double flops = 2.0 * (double)x.M * (double)x.K * (double)x.N;
    double t_s = best_seconds(run_sgemm, &x, 5, 0.5);
    double t_o = best_seconds(run_sgemm_openblas, &x, 5, 0.5);
    double t_h = best_seconds(run_gemm_bf16, &x, 5, 0.5);
    int native = fdpo_bf16_native();
    double t_d = 0.0; /* oneDNN's vdpbf16ps GEMM, whichever route fdpo picked above */
    if (native) {
        fdpo_gemm_bf16_force_route(1);
        t_d = best_seconds(run_gemm_bf16, &x, 5, 0.5);
        fdpo_gemm_bf16_force_route(-1);
    }
    free(x.a); free(x.b); free(x.c); free(x.ha); free(x.hb);
    long triad_mib = mib ? atol(mib) : 0; /* no --triad-mib: no triad (bench/bandwidth.py sizes and runs it) */
    if (mib && triad_mib < 1) return fdpo_error("--triad-mib: must be >= 1");
    double triad_gbs = triad_mib ? harness_triad_gbs((size_t)triad_mib) : 0.0;
    if (triad_mib && triad_gbs <= 0.0) return -1;
    printf("{\"threads\": %d, \"gemm\": [%zu, %zu, %zu], \"sgemm_gflops\": %.1f, \"bf16_gflops\": %.1f, "
           "\"bf16_native\": %d, \"openblas_sgemm_gflops\": %.1f, \"dpbf16_gemm_gflops\": %.1f",
           fdpo_get_threads(), x.M, x.K, x.N, flops / t_s * 1e-9, flops / t_h * 1e-9, native, flops / t_o * 1e-9,
           t_d > 0 ? flops / t_d * 1e-9 : 0.0);
    if (triad_mib) printf(", \"triad_mib\": %ld, \"triad_gbs\": %.2f", triad_mib, triad_gbs);
    printf("}\n");
    return 0;
}

static int h_attention_check(int argc, char **argv) {
    const char *lens = arg(argc, argv, "--lengths"), *heads = arg(argc, argv, "--heads");
    const char *hsz = arg(argc, argv, "--head-size"), *seed = arg(argc, argv, "--seed"), *out = arg(argc, argv, "--out");
    const char *brs = arg(argc, argv, "--branches"), *bf16s = arg(argc, argv, "--bf16");
    if (!lens || !heads || !hsz || !out)
        return fdpo_error("usage: attention-check --lengths T1,T2 --heads NH --head-size HS [--seed S] [--branches 0|1] "
                          "[--bf16 0|1] --out FILE");
    int bf16 = bf16s && atoi(bf16s);   /* the streaming backward's bf16 tile products */
    size_t NH = (size_t)atol(heads), C = NH * (size_t)atol(hsz), B = 0, off[65] = {0};
    for (const char *p = lens; *p && B < 64; B++) {
        char *end;
        long T = strtol(p, &end, 10);
        if (T < 1 || end == p) return fdpo_error("--lengths: '%s' is not a list of positive lengths", lens);
        off[B + 1] = off[B] + (size_t)T;
        p = *end == ',' ? end + 1 : end;
    }
    size_t N = off[B];
    if (NH == 0 || C == 0) return fdpo_error("--heads and --head-size must be >= 1");
    int with_branch = brs && atoi(brs);
    fdpo_rng rng;
    fdpo_rng_seed(&rng, seed ? strtoull(seed, NULL, 10) : 1);
    float *qkv = fdpo_malloc(N * 3 * C * sizeof(float)), *dout = fdpo_malloc(N * C * sizeof(float));
    float *br_f = fdpo_malloc(N * sizeof(float));
    uint8_t *br = fdpo_calloc(N, 1);
    for (size_t i = 0; i < N * 3 * C; i++) qkv[i] = (float)fdpo_rng_normal(&rng);
    for (size_t i = 0; i < N * C; i++) dout[i] = (float)fdpo_rng_normal(&rng);
    size_t A = 0, att_off[65] = {0};
    for (size_t b = 0; b < B; b++) {
        size_t T = off[b + 1] - off[b];
        for (size_t t = 0; t < T && with_branch; t++) br[off[b] + t] = (uint8_t)(t < T / 3 ? 0 : t < 2 * T / 3 ? 1 : 2);
        att_off[b + 1] = att_off[b] + NH * T * T;
        A = att_off[b + 1];
    }
    for (size_t t = 0; t < N; t++) br_f[t] = br[t];
    float *o_old = fdpo_malloc(N * C * sizeof(float)), *o_new = fdpo_malloc(N * C * sizeof(float));
    float *d_old = fdpo_malloc(N * 3 * C * sizeof(float)), *d_new = fdpo_malloc(N * 3 * C * sizeof(float));
    float *att = fdpo_malloc((A + 1) * sizeof(float)), *lse = fdpo_malloc(N * NH * sizeof(float));
    size_t maxT = 0;
    for (size_t b = 0; b < B; b++) if (off[b + 1] - off[b] > maxT) maxT = off[b + 1] - off[b];
    int nth = omp_get_max_threads();
    float *scratch = fdpo_malloc((size_t)nth * maxT * maxT * sizeof(float));
    const uint8_t *bp = with_branch ? br : NULL;
    /* NaN in the streaming outputs: every element must be stored (the kernels store a row's
     * first product instead of clearing and adding), so one left unwritten fails the test */
    for (size_t i = 0; i < N * C; i++) o_new[i] = NAN;
    for (size_t i = 0; i < N * 3 * C; i++) d_new[i] = NAN;
    double c0 = cpu_seconds();
    fdpo_k_attention_forward(o_old, att, qkv, off, att_off, bp, B, C, NH);
    double c1 = cpu_seconds();
    fdpo_k_attention_backward(d_old, scratch, maxT * maxT, dout, qkv, att, off, att_off, B, C, NH);
    double c2 = cpu_seconds();
    fdpo_k_attention_forward_streaming(o_new, lse, qkv, off, bp, B, C, NH);
    double c3 = cpu_seconds();
    fdpo_k_attention_backward_streaming(d_new, dout, qkv, o_new, lse, off, bp, B, C, NH, bf16);
    double c4 = cpu_seconds();
    printf("{\"materialised_forward_cpu_s\": %.4f, \"materialised_backward_cpu_s\": %.4f, "
           "\"streaming_forward_cpu_s\": %.4f, \"streaming_backward_cpu_s\": %.4f, "
           "\"materialised_bytes\": %zu, \"streaming_bytes\": %zu}\n",
           c1 - c0, c2 - c1, c3 - c2, c4 - c3, (A + (size_t)nth * maxT * maxT) * sizeof(float), N * NH * sizeof(float));
    fdpo_st_writer *w = fdpo_st_writer_new();
    size_t s3[2] = {N, 3 * C}, s1[2] = {N, C}, sn[1] = {N}, so[1] = {B + 1};
    float off_f[65];
    for (size_t b = 0; b <= B; b++) off_f[b] = (float)off[b];
    fdpo_st_writer_add(w, "qkv", FDPO_F32, s3, 2, qkv);
    fdpo_st_writer_add(w, "dout", FDPO_F32, s1, 2, dout);
    fdpo_st_writer_add(w, "branch", FDPO_F32, sn, 1, br_f);
    fdpo_st_writer_add(w, "seq_offset", FDPO_F32, so, 1, off_f);
    fdpo_st_writer_add(w, "out_materialised", FDPO_F32, s1, 2, o_old);
    fdpo_st_writer_add(w, "out_streaming", FDPO_F32, s1, 2, o_new);
    fdpo_st_writer_add(w, "dqkv_materialised", FDPO_F32, s3, 2, d_old);
    fdpo_st_writer_add(w, "dqkv_streaming", FDPO_F32, s3, 2, d_new);
    int rc = fdpo_st_writer_write(w, out);
    fdpo_st_writer_free(w);
    free(qkv); free(dout); free(br_f); free(br); free(o_old); free(o_new); free(d_old); free(d_new);
    free(att); free(lse); free(scratch);
    return rc;
}

/* the array through one `omp simd` loop: the vector code path of fdpo_k_expf */
static void expf_array(float *restrict y, const float *restrict x, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] = fdpo_k_expf(x[i]);
}

static int h_kernel_expf(void) {
    char word[128];
    size_t n = 0, cap = 1024;
    float *x = fdpo_malloc(cap * sizeof(float));
    int rc = 0;
    while (scanf("%127s", word) == 1) {
        char *end;
        float v = strtof(word, &end);
        if (*end) { rc = fdpo_error("kernel-expf: '%s' is not a float", word); break; }
        if (n == cap) x = fdpo_realloc(x, (cap *= 2) * sizeof(float));
        x[n++] = v;
    }
    float *y = fdpo_malloc((n + 1) * sizeof(float));
    if (!rc) expf_array(y, x, n);
    for (size_t i = 0; i < n && !rc; i++) {
        volatile float xi = x[i]; /* the scalar path */
        float s = fdpo_k_expf(xi);
        if (memcmp(&s, &y[i], sizeof s) != 0)
            rc = fdpo_error("kernel-expf: x = %a: vector %a, scalar %a", (double)x[i], (double)y[i], (double)s);
        else
            printf("%a\n", (double)y[i]);
    }
    free(x);
    free(y);
    return rc;
}

int h_model(int argc, char **argv);
int h_model(int argc, char **argv) {
    if (!strcmp(argv[0], "kernel-expf")) return h_kernel_expf();
    if (!strcmp(argv[0], "model-fb")) return h_model_fb(argc, argv);
    if (!strcmp(argv[0], "model-init")) return h_model_init(argc, argv);
    if (!strcmp(argv[0], "model-load")) return h_model_load(argc, argv);
    if (!strcmp(argv[0], "model-bench")) return h_model_bench(argc, argv);
    if (!strcmp(argv[0], "model-peaks")) return h_model_peaks(argc, argv);
    if (!strcmp(argv[0], "model-ops")) return h_model_ops(argc, argv);
    if (!strcmp(argv[0], "attention-check")) return h_attention_check(argc, argv);
    return fdpo_error("unknown model subcommand");
}
