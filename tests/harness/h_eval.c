/* Harness subcommands for generation and evaluation (tests/py/test_generate.py,
 * tests/py/test_eval_metrics.py). Options are "--name value" pairs after the positionals.
 *
 *   eval-logits CKPT MODE OUT IDS        logits [T, V] float32 of IDS ("3 1 4") into OUT;
 *                                        MODE step | prefill | batched | forward
 *                                        [--precision fp32|bf16] (the model's matmuls)
 *   eval-sample CKPT --prompts "1 2;3" --eot E --n N [--max-new M --temperature T
 *               --top-k K --top-p P --seed S --batch B]   one JSON line per sample
 *   eval-sample-rows FILE R V --draws K [--group G, sampling options]   the sampler alone on
 *               logits [R, V] from FILE, G rows per fdpo_sample_tokens call
 *   eval-sampler CKPT_A CKPT_B [eval-sample's options, --precision P]   one sampler over
 *               four calls while the weights change (h_sampler)
 *   eval-run POLICY REF --prompts P --eot E --k K [sampling options, --div LIST,
 *            --samples FILE, --ead-vocab V]               fdpo_evaluate's JSON object
 *   eval-score POLICY REF --prompt IDS --seqs FILE [--div LIST]   one JSON line per line of FILE
 *   eval-text FILE VOCAB                 distinct/EAD/self-BLEU of a JSON array of strings
 *   eval-calibration P...                accuracy and ECE of probabilities P(w > l)
 *   eval-reward SPEC FILE [--lexicon L --timeout S]   reward per line of a JSONL file */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/decode.h"
#include "fdpo/eval.h"
#include "fdpo/io.h"
#include "harness.h"

static const char *opt(int argc, char **argv, const char *name, const char *def) {
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], name)) return argv[i + 1];
    return def;
}

/* "1 2 3" -> ids */
static size_t parse_ids(const char *s, int32_t **out) {
    size_t n = 0, cap = 8;
    int32_t *ids = fdpo_malloc(cap * sizeof *ids);
    char *end;
    for (const char *p = s;;) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        if (n == cap) { cap *= 2; ids = fdpo_realloc(ids, cap * sizeof *ids); }
        ids[n++] = (int32_t)v;
        p = end;
    }
    *out = ids;
    return n;
}

/* "1 2;3 4 5" -> prompts */
static size_t parse_prompts(const char *s, int32_t ***ids, size_t **lens) {
    size_t n = 1;
    for (const char *p = s; *p; p++) n += *p == ';';
    *ids = fdpo_malloc(n * sizeof **ids);
    *lens = fdpo_malloc(n * sizeof **lens);
    char *copy = fdpo_strdup(s), *save = NULL, *tok = strtok_r(copy, ";", &save);
    size_t k = 0;
    for (; tok && k < n; tok = strtok_r(NULL, ";", &save)) { (*lens)[k] = parse_ids(tok, &(*ids)[k]); k++; }
    free(copy);
    return k;
}

static void sample_config(int argc, char **argv, fdpo_sample_config *c) {
    c->temperature = atof(opt(argc, argv, "--temperature", "1"));
    c->top_k = (size_t)atol(opt(argc, argv, "--top-k", "0"));
    c->top_p = atof(opt(argc, argv, "--top-p", "1"));
    c->max_new_tokens = (size_t)atol(opt(argc, argv, "--max-new", "8"));
    c->seed = (uint64_t)atoll(opt(argc, argv, "--seed", "1"));
    c->batch = (size_t)atol(opt(argc, argv, "--batch", "8"));
    c->stop = NULL;
    c->first_prompt = 0;
}

static size_t parse_divs(const char *list, fdpo_divergence *d, size_t max) {
    char *copy = fdpo_strdup(list), *save = NULL;
    size_t n = 0;
    for (char *t = strtok_r(copy, ",", &save); t && n < max; t = strtok_r(NULL, ",", &save))
        if (fdpo_divergence_parse(t, &d[n]) == 0) n++;
    free(copy);
    return n;
}

static int h_logits(int argc, char **argv) {
    if (argc < 5) return fdpo_error("usage: eval-logits CKPT MODE OUT IDS");
    if (fdpo_set_precision(opt(argc, argv, "--precision", "fp32"))) return -1;
    fdpo_gpt2 *m = fdpo_checkpoint_load_model(argv[1]);
    if (!m) return -1;
    const char *mode = argv[2];
    int32_t *ids;
    size_t T = parse_ids(argv[4], &ids), V = m->config.vocab_size;
    float *out = fdpo_malloc(T * V * sizeof(float));
    int rc = 0;
    if (!strcmp(mode, "forward")) {
        size_t off[2] = {0, T};
        int32_t *tg = fdpo_malloc(T * sizeof *tg);
        for (size_t t = 0; t < T; t++) tg[t] = -1;
        fdpo_batch b = {.n_seq = 1, .n_tokens = T, .seq_offset = off, .tokens = ids, .targets = tg};
        rc = fdpo_gpt2_forward(m, &b, NULL, NULL);
        if (!rc) memcpy(out, fdpo_gpt2_logits(m), T * V * sizeof(float));
        free(tg);
    } else {
        fdpo_decoder *d = fdpo_decoder_create(m, 3, T + 2);
        if (!d) rc = -1;
        else if (!strcmp(mode, "step")) {
            size_t slot = 0, one = 1;
            for (size_t t = 0; t < T && !rc; t++) rc = fdpo_decoder_forward(d, 1, &slot, &one, ids + t, out + t * V, 0);
        } else if (!strcmp(mode, "prefill")) {
            size_t slot = 0;
            rc = fdpo_decoder_forward(d, 1, &slot, &T, ids, out, 1);
        } else if (!strcmp(mode, "batched")) {
            /* our sequence in slot 1 between two decoys (slots 0 and 2) of other tokens:
             * half of it prefilled together with the decoys' prefills, the rest one token
             * per call alongside the decoys' steps */
            size_t half = T / 2 ? T / 2 : 1, slots[3] = {0, 1, 2};
            int32_t *feed = fdpo_malloc((T + 4) * sizeof *feed);
            float *tmp = fdpo_malloc((T + 4) * V * sizeof(float));
            size_t n_new[3] = {2, half, 1};
            feed[0] = 0; feed[1] = (int32_t)(V - 1);
            memcpy(feed + 2, ids, half * sizeof *feed);
            feed[2 + half] = (int32_t)(V / 2);
            rc = fdpo_decoder_forward(d, 3, slots, n_new, feed, tmp, 1);
            if (!rc) memcpy(out, tmp + 2 * V, half * V * sizeof(float));
            for (size_t t = half; t < T && !rc; t++) {
                size_t nn[3] = {1, 1, 1};
                int32_t f3[3] = {(int32_t)(t % V), ids[t], (int32_t)((t * 7) % V)};
                rc = fdpo_decoder_forward(d, 3, slots, nn, f3, tmp, 0);
                if (!rc) memcpy(out + t * V, tmp + V, V * sizeof(float));
            }
            free(feed); free(tmp);
        } else rc = fdpo_error("unknown mode '%s'", mode);
        fdpo_decoder_free(d);
    }
    if (!rc) {
        FILE *f = fopen(argv[3], "wb");
        if (!f || fwrite(out, sizeof(float), T * V, f) != T * V) rc = fdpo_error("cannot write %s", argv[3]);
        if (f) fclose(f);
    }
    free(out); free(ids);
    fdpo_gpt2_free(m);
    return rc;
}

static int h_sample(int argc, char **argv) {
    if (argc < 2) return fdpo_error("usage: eval-sample CKPT --prompts P --eot E --n N ...");
    fdpo_gpt2 *m = fdpo_checkpoint_load_model(argv[1]);
    if (!m) return -1;
    fdpo_sample_config c;
    sample_config(argc, argv, &c);
    int32_t **ids; size_t *lens;
    size_t np = parse_prompts(opt(argc, argv, "--prompts", "0"), &ids, &lens);
    size_t n = (size_t)atol(opt(argc, argv, "--n", "1"));
    fdpo_sample *s = NULL;
    int rc = fdpo_generate_eot(m, NULL, (int32_t)atol(opt(argc, argv, "--eot", "-1")), &c, ids, lens, np, n, &s);
    for (size_t i = 0; !rc && i < np * n; i++) {
        printf("{\"p\": %zu, \"s\": %zu, \"logp\": %.17g, \"finish\": %d, \"tokens\": [", s[i].prompt_index,
               s[i].sample_index, s[i].logp, (int)s[i].finish);
        for (size_t t = 0; t < s[i].n_tokens; t++) printf(t ? ", %d" : "%d", s[i].tokens[t]);
        printf("]}\n");
    }
    if (!rc) fdpo_samples_free(s, np * n);
    for (size_t i = 0; i < np; i++) free(ids[i]);
    free(ids); free(lens);
    fdpo_gpt2_free(m);
    return rc;
}

static void print_samples(const fdpo_sample *s, size_t n, int call, const char *via) {
    for (size_t i = 0; i < n; i++) {
        printf("{\"call\": %d, \"via\": \"%s\", \"p\": %zu, \"s\": %zu, \"logp\": %.17g, \"finish\": %d, \"tokens\": [",
               call, via, s[i].prompt_index, s[i].sample_index, s[i].logp, (int)s[i].finish);
        for (size_t t = 0; t < s[i].n_tokens; t++) printf(t ? ", %d" : "%d", s[i].tokens[t]);
        printf("]}\n");
    }
}

/* eval-sampler CKPT_A CKPT_B [eval-sample's options, --precision]: one fdpo_sampler kept
 * over four calls while the model's weights change under it, as a training loop's do:
 * call 1 A's weights with the options given, call 2 B's (copied into the same model), call
 * 3 A's with twice the new tokens and a batch 2 larger (the decoder must grow), call 4 B's
 * with half the new tokens and batch 1 (a decoder larger than the call needs). Each call's
 * samples, then a fresh fdpo_generate_eot's on the same weights (via "fresh"), one JSON
 * line per sample (test_generate.py). */
static int h_sampler(int argc, char **argv) {
    if (argc < 3) return fdpo_error("usage: eval-sampler CKPT_A CKPT_B --prompts P --eot E --n N ...");
    if (fdpo_set_precision(opt(argc, argv, "--precision", "fp32"))) return -1;
    fdpo_gpt2 *a = fdpo_checkpoint_load_model(argv[1]), *b = a ? fdpo_checkpoint_load_model(argv[2]) : NULL;
    fdpo_gpt2 *m = b ? fdpo_checkpoint_load_model(argv[1]) : NULL;
    if (!m) { fdpo_gpt2_free(a); fdpo_gpt2_free(b); return -1; }
    fdpo_sample_config c;
    sample_config(argc, argv, &c);
    int32_t **ids; size_t *lens;
    size_t np = parse_prompts(opt(argc, argv, "--prompts", "0"), &ids, &lens);
    size_t n = (size_t)atol(opt(argc, argv, "--n", "1"));
    int32_t eot = (int32_t)atol(opt(argc, argv, "--eot", "-1"));
    fdpo_sampler *smp = fdpo_sampler_create(m);
    int rc = 0;
    for (int call = 1; call <= 4 && !rc; call++) {
        fdpo_sample_config cc = c;
        if (call == 3) { cc.max_new_tokens = 2 * c.max_new_tokens; cc.batch = c.batch + 2; }
        if (call == 4) { cc.max_new_tokens = c.max_new_tokens / 2 ? c.max_new_tokens / 2 : 1; cc.batch = 1; }
        rc = fdpo_gpt2_copy_params(m, call % 2 ? a : b);
        fdpo_sample *s = NULL, *f = NULL;
        if (!rc) rc = fdpo_sampler_generate(smp, NULL, eot, &cc, ids, lens, np, n, &s);
        if (!rc) rc = fdpo_generate_eot(m, NULL, eot, &cc, ids, lens, np, n, &f);
        if (!rc) { print_samples(s, np * n, call, "sampler"); print_samples(f, np * n, call, "fresh"); }
        if (s) fdpo_samples_free(s, np * n);
        if (f) fdpo_samples_free(f, np * n);
    }
    fdpo_sampler_free(smp);
    for (size_t i = 0; i < np; i++) free(ids[i]);
    free(ids); free(lens);
    fdpo_gpt2_free(m); fdpo_gpt2_free(a); fdpo_gpt2_free(b);
    return rc;
}

/* eval-sample-exp STRIDE: is fdpo_expf8 (the sampler's and fp32 decoder's exponential) 8 wide, and on how many of 1 in
 * STRIDE floats of (-88, 88) does it differ from libm's expf (test_generate_decode.py) */
static int h_sample_exp(int argc, char **argv) {
    uint32_t stride = argc > 1 ? (uint32_t)atol(argv[1]) : 7;
    int on = fdpo_expf8_ready();
    printf("{\"vector\": %d, \"mismatches\": %zu}\n", on, fdpo_expf8_check(stride));
    return 0;
}

/* eval-sample-rows FILE R V --draws K [--group G --temperature T --top-k K --top-p P]:
 * logits [R, V] float32 from FILE; row i's RNG is fdpo_rng_seed (i); K times, all R rows are
 * drawn by fdpo_sample_tokens in groups of G rows (G = 1: one fdpo_sample_token per row).
 * One JSON line per row: its K tokens and log-probs (test_generate.py) */
static int h_sample_rows(int argc, char **argv) {
    if (argc < 4) return fdpo_error("usage: eval-sample-rows FILE R V --draws K ...");
    size_t R = (size_t)atol(argv[2]), V = (size_t)atol(argv[3]), K = (size_t)atol(opt(argc, argv, "--draws", "1"));
    size_t G = (size_t)atol(opt(argc, argv, "--group", "4"));
    if (R == 0 || V == 0 || G == 0) return fdpo_error("eval-sample-rows: R, V and --group must be > 0");
    fdpo_sample_config c;
    sample_config(argc, argv, &c);
    float *lg = fdpo_malloc(R * V * sizeof *lg);
    FILE *f = fopen(argv[1], "rb");
    size_t got = f ? fread(lg, sizeof *lg, R * V, f) : 0;
    if (f) fclose(f);
    if (got != R * V) { free(lg); return fdpo_error("%s: expected %zu floats", argv[1], R * V); }
    fdpo_rng *rng = fdpo_malloc(R * sizeof *rng);
    double *work = fdpo_malloc(R * V * sizeof *work), *lp = fdpo_malloc(R * K * sizeof *lp);
    size_t *order = fdpo_malloc(R * V * sizeof *order);
    int32_t *tok = fdpo_malloc(R * K * sizeof *tok);
    const float **rows = fdpo_malloc(R * sizeof *rows);
    fdpo_rng **rp = fdpo_malloc(R * sizeof *rp);
    double **wp = fdpo_malloc(R * sizeof *wp);
    size_t **op = fdpo_malloc(R * sizeof *op);
    for (size_t i = 0; i < R; i++) {
        fdpo_rng_seed(&rng[i], i);
        rows[i] = lg + i * V; rp[i] = &rng[i]; wp[i] = work + i * V; op[i] = order + i * V;
    }
    int32_t t[64];
    double l[64];
    for (size_t k = 0; k < K; k++)
        for (size_t i0 = 0; i0 < R; i0 += G) {
            size_t m = R - i0 < G ? R - i0 : G;
            if (m > 64) m = 64;
            if (G == 1) t[0] = fdpo_sample_token(rows[i0], V, &c, rp[i0], wp[i0], op[i0], &l[0]);
            else fdpo_sample_tokens(m, rows + i0, V, &c, rp + i0, wp + i0, op + i0, t, l);
            for (size_t i = 0; i < m; i++) { tok[(i0 + i) * K + k] = t[i]; lp[(i0 + i) * K + k] = l[i]; }
        }
    for (size_t i = 0; i < R; i++) {
        printf("{\"tokens\": [");
        for (size_t k = 0; k < K; k++) printf(k ? ", %d" : "%d", tok[i * K + k]);
        printf("], \"logp\": [");
        for (size_t k = 0; k < K; k++) printf(k ? ", %.17g" : "%.17g", lp[i * K + k]);
        printf("]}\n");
    }
    free(lg); free(rng); free(work); free(lp); free(order); free(tok); free(rows); free(rp); free(wp); free(op);
    return 0;
}

static int h_run(int argc, char **argv) {
    if (argc < 3) return fdpo_error("usage: eval-run POLICY REF --prompts P --eot E --k K ...");
    fdpo_gpt2 *pm = fdpo_checkpoint_load_model(argv[1]);
    if (!pm) return -1;
    fdpo_gpt2 *rm = fdpo_checkpoint_load_model(argv[2]);
    if (!rm) { fdpo_gpt2_free(pm); return -1; }
    fdpo_divergence divs[8];
    fdpo_eval_config c = {0};
    sample_config(argc, argv, &c.sample);
    c.k = (size_t)atol(opt(argc, argv, "--k", "4"));
    c.n_div = parse_divs(opt(argc, argv, "--div", "rkl,fkl,js,alpha:0.5,tv,chi2"), divs, 8);
    c.divs = divs;
    c.eot = (int32_t)atol(opt(argc, argv, "--eot", "-1"));
    c.ead_vocab = atof(opt(argc, argv, "--ead-vocab", "0"));
    int32_t **ids; size_t *lens;
    size_t np = parse_prompts(opt(argc, argv, "--prompts", "0"), &ids, &lens);
    const char *sp = opt(argc, argv, "--samples", NULL);
    FILE *sf = sp ? fopen(sp, "w") : NULL;
    cJSON *o = fdpo_evaluate(pm, rm, NULL, NULL, ids, lens, np, &c, sf, "policy");
    if (sf) fclose(sf);
    if (o) { char *s = cJSON_Print(o); printf("%s\n", s); free(s); cJSON_Delete(o); }
    for (size_t i = 0; i < np; i++) free(ids[i]);
    free(ids); free(lens);
    fdpo_gpt2_free(pm); fdpo_gpt2_free(rm);
    return o ? 0 : -1;
}

static int h_score(int argc, char **argv) {
    if (argc < 3) return fdpo_error("usage: eval-score POLICY REF --prompt IDS --seqs FILE");
    fdpo_gpt2 *pm = fdpo_checkpoint_load_model(argv[1]);
    if (!pm) return -1;
    fdpo_gpt2 *rm = fdpo_checkpoint_load_model(argv[2]);
    if (!rm) { fdpo_gpt2_free(pm); return -1; }
    fdpo_divergence divs[8];
    size_t nd = parse_divs(opt(argc, argv, "--div", "rkl,fkl,js,alpha:0.5,tv,chi2"), divs, 8);
    int32_t *prompt;
    size_t np = parse_ids(opt(argc, argv, "--prompt", "0"), &prompt);
    size_t len;
    char *text = fdpo_read_file(opt(argc, argv, "--seqs", ""), &len);
    int rc = text ? 0 : -1;
    fdpo_decoder *pd = fdpo_decoder_create(pm, 1, pm->config.n_positions);
    fdpo_decoder *rd = fdpo_decoder_create(rm, 1, rm->config.n_positions);
    double fd[8];
    char *save = NULL;
    for (char *line = text ? strtok_r(text, "\n", &save) : NULL; line && !rc; line = strtok_r(NULL, "\n", &save)) {
        int32_t *seq;
        size_t n = parse_ids(line, &seq);
        fdpo_seq_score s = {.fdiv_tok = fd};
        rc = fdpo_score_sequence(pd, rd, prompt, np, seq, n, divs, nd, &s);
        if (!rc) {
            printf("{\"logp\": %.17g, \"logp_ref\": %.17g, \"entropy_sum\": %.17g, \"kl_tok\": %.17g, \"fdiv_tok\": [",
                   s.logp, s.logp_ref, s.entropy_sum, s.kl_tok);
            for (size_t k = 0; k < nd; k++) printf(k ? ", %.17g" : "%.17g", fd[k]);
            printf("]}\n");
        }
        free(seq);
    }
    fdpo_decoder_free(pd); fdpo_decoder_free(rd);
    free(text); free(prompt);
    fdpo_gpt2_free(pm); fdpo_gpt2_free(rm);
    return rc;
}

static int h_text(int argc, char **argv) {
    if (argc < 3) return fdpo_error("usage: eval-text FILE VOCAB");
    size_t len;
    char *s = fdpo_read_file(argv[1], &len);
    if (!s) return -1;
    cJSON *arr = cJSON_Parse(s);
    free(s);
    if (!cJSON_IsArray(arr)) { cJSON_Delete(arr); return fdpo_error("%s: expected a JSON array of strings", argv[1]); }
    size_t n = (size_t)cJSON_GetArraySize(arr);
    fdpo_words *w = fdpo_calloc(n ? n : 1, sizeof *w);
    for (size_t i = 0; i < n; i++) fdpo_words_split(cJSON_GetArrayItem(arr, (int)i)->valuestring, &w[i]);
    double V = atof(argv[2]);
    printf("{");
    for (size_t k = 1; k <= 4; k++) {
        double d, e;
        fdpo_distinct(w, n, k, V, &d, &e);
        printf("\"distinct_%zu\": %.17g, \"ead_%zu\": %.17g, ", k, d, k, e);
    }
    double b3 = fdpo_self_bleu(w, n, 3), b4 = fdpo_self_bleu(w, n, 4);
    if (isnan(b3)) printf("\"self_bleu_3\": null, \"self_bleu_4\": null}\n");
    else printf("\"self_bleu_3\": %.17g, \"self_bleu_4\": %.17g}\n", b3, b4);
    for (size_t i = 0; i < n; i++) fdpo_words_free(&w[i]);
    free(w);
    cJSON_Delete(arr);
    return 0;
}

static int h_calibration(int argc, char **argv) {
    size_t n = (size_t)(argc - 1);
    double *p = fdpo_malloc((n ? n : 1) * sizeof *p), acc, ece;
    for (size_t i = 0; i < n; i++) p[i] = atof(argv[i + 1]);
    fdpo_calibration(p, n, &acc, &ece);
    printf("{\"accuracy\": %.17g, \"ece\": %.17g}\n", acc, ece);
    free(p);
    return 0;
}

static int h_reward(int argc, char **argv) {
    if (argc < 3) return fdpo_error("usage: eval-reward SPEC FILE");
    fdpo_reward_options o = {opt(argc, argv, "--lexicon", NULL), atof(opt(argc, argv, "--timeout", "10")), NULL};
    fdpo_reward *r = fdpo_reward_create(argv[1], &o);
    if (!r) return -1;
    char **p, **c;
    size_t n;
    int rc = fdpo_read_completions(argv[2], &p, &c, NULL, &n);
    if (!rc) {
        double *out = fdpo_malloc(n * sizeof *out);
        size_t *nt = fdpo_malloc(n * sizeof *nt);
        for (size_t i = 0; i < n; i++) nt[i] = strlen(c[i]);
        rc = fdpo_reward_score(r, n, p, c, nt, out);
        for (size_t i = 0; !rc && i < n; i++) printf("%.17g\n", out[i]);
        free(out); free(nt);
        fdpo_free_strings(p, n); fdpo_free_strings(c, n);
    }
    fdpo_reward_free(r);
    return rc;
}

int h_eval(int argc, char **argv) {
    const char *sub = argv[0];
    if (!strcmp(sub, "eval-logits")) return h_logits(argc, argv);
    if (!strcmp(sub, "eval-sample")) return h_sample(argc, argv);
    if (!strcmp(sub, "eval-sampler")) return h_sampler(argc, argv);
    if (!strcmp(sub, "eval-sample-exp")) return h_sample_exp(argc, argv);
    if (!strcmp(sub, "eval-sample-rows")) return h_sample_rows(argc, argv);
    if (!strcmp(sub, "eval-run")) return h_run(argc, argv);
    if (!strcmp(sub, "eval-score")) return h_score(argc, argv);
    if (!strcmp(sub, "eval-text")) return h_text(argc, argv);
    if (!strcmp(sub, "eval-calibration")) return h_calibration(argc, argv);
    if (!strcmp(sub, "eval-reward")) return h_reward(argc, argv);
    return fdpo_error("unknown subcommand %s", sub);
}
