/* train + data: schedules and AdamW against their closed forms, clipping, the epoch data
 * order, UTF-8 offsets, text windows, SFT weights, state round trip, atomic checkpoint
 * directories and the metrics writer. (PyTorch comparisons live in tests/py/test_train.py.) */
#include <check.h>
#include "check_main.h"
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fdpo/data.h"
#include "fdpo/decode.h"
#include "fdpo/dpo.h"
#include "fdpo/merge.h"
#include "fdpo/eval.h"
#include "fdpo/io.h"
#include "fdpo/kto.h"
#include "fdpo/online.h"
#include "fdpo/pref.h"
#include "fdpo/rl.h"
#include "fdpo/rm.h"
#include "fdpo/sacpo.h"
#include "fdpo/tokenizer.h"
#include "fdpo/train.h"
#include "fdpo/trainer.h"
#include "model/gpt2_internal.h" /* fdpo_bf16_round_n, fdpo_f32_to_bf16 */
#include "train/settings_json.h"   /* fdpo_settings_from_json */

static char tmpdir[256];
static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fdpo_test_train_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}
static char *tmp_path(const char *name) { return fdpo_path_join(tmpdir, name); }
static void write_text(const char *path, const char *s, size_t n) {
    FILE *f = fopen(path, "wb"); ck_assert_ptr_nonnull(f);
    fwrite(s, 1, n, f); fclose(f);
}

/* bf16 of the float with bits u, round to nearest even, from the two candidates' values in
 * double (exact): the reference for the bit-twiddling fdpo_bf16_round_n. NaN: quiet, same
 * sign and top payload bits. */
static uint16_t bf16_reference(uint32_t u) {
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    float f;
    memcpy(&f, &u, 4);
    uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u; /* toward zero, away from zero */
    if (lo == u) return (uint16_t)(u >> 16);
    float flo;
    memcpy(&flo, &lo, 4);
    /* hi's value: its exponent may reach 255 (infinity), worth 2^128 as a candidate */
    double vlo = flo, vhi = ((hi >> 23) & 0xff) == 0xff ? copysign(ldexp(1.0, 128), (double)f) : 0.0;
    if (((hi >> 23) & 0xff) != 0xff) {
        float fhi;
        memcpy(&fhi, &hi, 4);
        vhi = fhi;
    }
    double dlo = fabs((double)f - vlo), dhi = fabs(vhi - (double)f);
    if (dlo < dhi) return (uint16_t)(lo >> 16);
    if (dhi < dlo) return (uint16_t)(hi >> 16);
    return (uint16_t)(((lo >> 16) & 1) ? hi >> 16 : lo >> 16); /* a tie: the even one */
}

/* The online runs validate their options themselves, before reading any file (the CLI did
 * for simpo and for rounds mode's --stop-at/--overwrite; a library caller got a run) */
START_TEST(online_opts_are_checked_by_the_library) {
    fdpo_online_opts o;
    fdpo_online_opts_default(&o);   /* valid training options: a zeroed struct has --seq-len 0 */
    o.model = "/nonexistent/model"; o.prompts = "/nonexistent/p.txt"; o.reward = "length"; o.out = "/nonexistent/out";
    o.rounds = 1; o.prompts_per_round = 1; o.n = 2;
    o.sample.temperature = 1; o.sample.top_p = 1; o.sample.max_new_tokens = 4; o.sample.batch = 8;
    o.dpo.dpo.loss.kind = FDPO_LOSS_SIMPO;
    o.dpo.dpo.loss.beta = 0.1;
    ck_assert_int_ne(fdpo_online_run(&o), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--loss simpo: online f-DPO needs a reference"));
    ck_assert_int_ne(fdpo_online_step_run(&o), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--loss simpo"));
    o.dpo.dpo.loss.kind = FDPO_LOSS_SIGMOID;
    o.dpo.dpo.loss.beta = 0;
    ck_assert_int_ne(fdpo_online_run(&o), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--beta"));
    o.dpo.dpo.loss.beta = 0.1;
    o.dpo.train.stop_at = 2;
    ck_assert_int_ne(fdpo_online_run(&o), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--stop-at: --mode step only"));
    o.dpo.train.stop_at = 0;
    o.dpo.train.overwrite = 1;
    ck_assert_int_ne(fdpo_online_run(&o), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--overwrite: --mode step only"));
    o.dpo.train.overwrite = 0;
    o.dpo.train.stop_at = 2;
    o.ref_update_round = 1;
    o.dpo.train.steps = 2;
    ck_assert_int_ne(fdpo_online_step_run(&o), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--ref-update round"));
}
END_TEST

/* A library caller gets each command's documented defaults (the CLI's --help shows the same:
 * tests/py/test_cli.py), which pass the library's check once the required paths are given;
 * the check names the flag of a bad value (the CLI no longer checks --eval-fraction itself). */
START_TEST(trainer_defaults_are_the_library_s_and_pass_its_checks) {
    fdpo_train_opts sft;
    fdpo_sft_opts_default(&sft);
    ck_assert(sft.lr == 2e-5 && sft.epochs == 3 && !strcmp(sft.schedule, "cosine") && sft.batch_size == 8);

    fdpo_rm_run_opts rm;
    fdpo_rm_run_opts_default(&rm);
    ck_assert(rm.train.lr == 1e-5 && !strcmp(rm.train.schedule, "linear") && rm.train.eval_every == 50);
    ck_assert(rm.eval_fraction == 0.1 && rm.center_rewards_coefficient == 0);
    rm.train.init = "m"; rm.data = "d.jsonl"; rm.train.out = "o";
    ck_assert_int_eq(fdpo_rm_run_opts_check(&rm), 0);
    rm.eval_fraction = 1;
    ck_assert_int_ne(fdpo_rm_run_opts_check(&rm), 0);
    ck_assert_str_eq(fdpo_last_error(), "--eval-fraction: 1 is not in [0, 1)");

    fdpo_kto_run_opts kto;
    fdpo_kto_run_opts_default(&kto);
    ck_assert(kto.train.lr == 1e-6 && !strcmp(kto.train.schedule, "linear") && kto.train.eval_every == 50);
    ck_assert(kto.loss.beta == 0.1 && kto.loss.div.kind == FDPO_DIV_RKL);
    ck_assert(kto.loss.desirable_weight == 1 && kto.loss.undesirable_weight == 1 && kto.eval_fraction == 0.1);
    kto.train.init = "m"; kto.data = "d.jsonl"; kto.train.out = "o";
    ck_assert_int_eq(fdpo_kto_run_opts_check(&kto), 0);
    kto.eval_fraction = -0.5;
    ck_assert_int_ne(fdpo_kto_run_opts_check(&kto), 0);
    ck_assert_str_eq(fdpo_last_error(), "--eval-fraction: -0.5 is not in [0, 1)");
    kto.eval_fraction = 0.1;
    kto.train.batch_size = 1;   /* z0 would pair each example with its own prompt (TRL refuses it too) */
    ck_assert_int_ne(fdpo_kto_run_opts_check(&kto), 0);
    ck_assert_str_eq(fdpo_last_error(), "--batch-size: KTO needs at least 2 examples per micro-batch (got 1): its KL "
                                        "estimate pairs each completion with another example's prompt, and in a "
                                        "micro-batch of 1 that is its own");
    kto.train.batch_size = 2;
    ck_assert_int_eq(fdpo_kto_run_opts_check(&kto), 0);

    fdpo_rl_run_opts rl;
    fdpo_rl_run_opts_default(&rl);
    ck_assert(rl.train.lr == 1e-5 && !strcmp(rl.train.schedule, "constant") && rl.train.steps == 100);
    ck_assert(rl.rl.algo == FDPO_RL_RLOO && rl.rl.beta == 0.05 && rl.rl.k == 4 && rl.rl.grpo_eps == 1e-4);
    ck_assert(rl.prompts_per_step == 8 && rl.sample.max_new_tokens == 32 && rl.reward_opts.timeout_s == 60);
    rl.model = "m"; rl.prompts = "p.txt"; rl.reward = "length"; rl.train.out = "o";
    ck_assert_int_eq(fdpo_rl_run_opts_check(&rl), 0);
    rl.rl.k = 1;
    ck_assert_int_ne(fdpo_rl_run_opts_check(&rl), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--n: "));
    rl.rl.k = 4;   /* the shared training options, checked as sft's (they were not checked) */
    rl.train.lr = -1;
    ck_assert_int_ne(fdpo_rl_run_opts_check(&rl), 0);
    ck_assert_str_eq(fdpo_last_error(), "--lr: -1 must be >= 0");
    rl.train.lr = 1e-5;
    rl.train.seed = -1;
    ck_assert_int_ne(fdpo_rl_run_opts_check(&rl), 0);
    ck_assert_str_eq(fdpo_last_error(), "--seed: -1 must be >= 0");
    rl.train.seed = 1337;
    rl.train.lora_targets = "c_fc";
    ck_assert_int_ne(fdpo_rl_run_opts_check(&rl), 0);
    ck_assert_str_eq(fdpo_last_error(), "--lora-targets: has no effect without --lora-r R");
    rl.train.lora_r = 2;   /* with --model: valid */
    ck_assert_int_eq(fdpo_rl_run_opts_check(&rl), 0);

    fdpo_online_opts on;
    fdpo_online_opts_default(&on);
    ck_assert(on.rounds == 3 && on.prompts_per_round == 16 && on.n == 4 && on.bt_scale == 1 && !on.ref_update_round);
    ck_assert(on.dpo.train.lr == 1e-4 && !strcmp(on.dpo.train.schedule, "constant") && on.dpo.train.epochs == 1);
    ck_assert(on.dpo.dpo.loss.beta == 0.1 && on.dpo.eval_fraction == 0 && on.dpo.pref.on_bad == FDPO_PREF_SKIP);
    on.model = "m"; on.prompts = "p.txt"; on.reward = "length"; on.out = "o";
    ck_assert_int_eq(fdpo_online_opts_check(&on), 0);
    on.prompts_per_round = 0;
    ck_assert_int_ne(fdpo_online_opts_check(&on), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--prompts-per-round: "));
    on.prompts_per_round = 16;   /* the shared training options, checked as sft's (they were not checked) */
    on.dpo.train.log_every = 0;
    ck_assert_int_ne(fdpo_online_opts_check(&on), 0);
    ck_assert_str_eq(fdpo_last_error(), "--log-every: 0 must be >= 1");
    on.dpo.train.log_every = 1;
    on.dpo.train.lora_r = 2;   /* the policy is --model (the round template has no init): valid */
    ck_assert_int_eq(fdpo_online_opts_check(&on), 0);
    on.n = (long)((1ULL << 61) + 1);   /* a round of samples past the address space: named, not "out of memory" */
    ck_assert_int_ne(fdpo_online_opts_check(&on), 0);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--prompts-per-round/--n: 16 prompts x 2305843009213693953 samples cannot be held"));
    on.n = 4;

    fdpo_sacpo_opts sa;
    fdpo_sacpo_opts_default(&sa);
    ck_assert(sa.dpo.train.lr == 1e-6 && sa.dpo.eval_fraction == 0.1 && !sa.safety_first);
    /* an online stage is fdpo online, its defaults included (it took dpo's 1e-6, linear) */
    ck_assert(sa.online.rounds == 3 && sa.online.prompts_per_round == 16 && sa.online.dpo.train.lr == 1e-4 &&
              !strcmp(sa.online.dpo.train.schedule, "constant"));
    const double lambdas[] = {0.5, 1};
    sa.dpo.train.init = "m"; sa.reward_data = "r.jsonl"; sa.safety_data = "s.jsonl"; sa.out = sa.dpo.train.out = "o";
    sa.lambdas = lambdas; sa.n_lambdas = 2;
    ck_assert_msg(fdpo_sacpo_opts_check(&sa) == 0, "%s", fdpo_last_error());
}
END_TEST

START_TEST(bf16_rounding_against_reference) {
    const uint32_t special[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x00008000u, 0x00018000u, 0x007fffffu,
                                0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u, 0x7f7fffffu, 0xff7fffffu,
                                0x7f800000u, 0xff800000u, 0x7f800001u, 0xffc00000u, 0x7fbfffffu, 0x3f800000u};
    enum { N = 100003 }; /* not a multiple of 16: the scalar tail too */
    uint32_t *u = malloc(N * sizeof *u);
    uint16_t *h = malloc(N * sizeof *h);
    fdpo_rng rng;
    fdpo_rng_seed(&rng, 11);
    for (size_t i = 0; i < N; i++)
        u[i] = i < sizeof special / sizeof *special ? special[i] : (uint32_t)fdpo_rng_u64(&rng);
    fdpo_bf16_round_n(h, (const float *)u, N);
    for (size_t i = 0; i < N; i++)
        ck_assert_msg(h[i] == bf16_reference(u[i]), "0x%08x -> 0x%04x, want 0x%04x", u[i], h[i], bf16_reference(u[i]));
    fdpo_f32_to_bf16(h, (const float *)u, N); /* the parallel pass: the same bits */
    for (size_t i = 0; i < N; i++) ck_assert_uint_eq(h[i], bf16_reference(u[i]));
    /* the scalar rounding (the AVX-512 path's tail, fdpo_f32_round_bf16 of the bf16 GEMM's
     * fp32 route, the decoder's packed weights) on the special values too: above, they all
     * went through the 16-wide path, and a scalar rounding without the to-even term passed
     * (mutation review) */
    const size_t ns = sizeof special / sizeof *special;
    for (size_t i = 0; i < ns; i++) {
        float f;
        memcpy(&f, &special[i], 4);
        ck_assert_msg(fdpo_bf16_round(f) == bf16_reference(special[i]), "scalar 0x%08x", special[i]);
    }
    for (size_t n = 1; n < 16; n++) {   /* under 16 values: the scalar loop alone */
        fdpo_bf16_round_n(h, (const float *)special, n);
        for (size_t i = 0; i < n; i++) ck_assert_uint_eq(h[i], bf16_reference(special[i]));
    }
    float *w = malloc(N * sizeof *w);
    fdpo_f32_round_bf16(w, (const float *)u, N);   /* rounded to bf16, kept in fp32 */
    for (size_t i = 0; i < N; i++) {
        uint32_t bits;
        memcpy(&bits, &w[i], 4);
        ck_assert_msg((bits >> 16) == bf16_reference(u[i]) && (bits & 0xffffu) == 0, "0x%08x -> 0x%08x", u[i], bits);
    }
    free(w);
    free(u);
    free(h);
}
END_TEST

/* A bf16 model's AdamW step writes the weights' bf16 copy in its own pass (no remake at the
 * next forward): the copy equals the masters rounded (reference rounding above), and the
 * next forward gives the bits of a model whose copy is made from the masters there. */
START_TEST(adamw_writes_the_bf16_weight_copy) {
    fdpo_gpt2_config c = {.vocab_size = 96, .n_positions = 16, .n_embd = 32, .n_layer = 2, .n_head = 2,
                          .layer_norm_epsilon = 1e-5f};
    fdpo_gpt2 *m = fdpo_gpt2_create(&c), *fresh = fdpo_gpt2_create(&c);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(fresh);
    fdpo_gpt2_set_precision(m, FDPO_PRECISION_BF16);
    fdpo_gpt2_set_precision(fresh, FDPO_PRECISION_BF16);
    fdpo_gpt2_init(m, 3);
    enum { T = 12 };
    size_t off[2] = {0, T};
    int32_t tok[T], tgt[T];
    for (int t = 0; t < T; t++) { tok[t] = (t * 7 + 3) % 96; tgt[t] = (t * 5 + 1) % 96; }
    fdpo_batch b = {.n_seq = 1, .n_tokens = T, .seq_offset = off, .tokens = tok, .targets = tgt};
    float lp[T], lp_fresh[T], d[T];
    for (int t = 0; t < T; t++) d[t] = -1.0f / T;
    fdpo_adamw o;
    ck_assert_int_eq(fdpo_adamw_init(&o, m->n_params, 0.9, 0.95, 1e-8, 0.1), 0);
    for (int step = 0; step < 2; step++) {
        fdpo_gpt2_zero_grad(m);
        ck_assert_int_eq(fdpo_gpt2_forward(m, &b, lp, NULL), 0);
        ck_assert_int_eq(fdpo_gpt2_backward(m, d), 0);
        fdpo_adamw_step(&o, m, 1e-2);
        ck_assert_ptr_nonnull(m->params_bf16);
        ck_assert_uint_ne(m->params_bf16_current & 8u, 0);
        for (size_t i = 0; i < m->n_params; i++) {
            uint32_t u;
            memcpy(&u, m->params_memory + i, 4);
            ck_assert_uint_eq(m->params_bf16[i], bf16_reference(u));
        }
    }
    ck_assert_int_eq(fdpo_gpt2_forward(m, &b, lp, NULL), 0);
    ck_assert_int_eq(fdpo_gpt2_copy_params(fresh, m), 0);
    ck_assert_int_eq(fdpo_gpt2_forward(fresh, &b, lp_fresh, NULL), 0);
    ck_assert_mem_eq(lp, lp_fresh, sizeof lp);
    /* a bf16 step, then an fp32 one (which writes no bf16 copy): back in bf16, the copy is
     * remade, not the first step's kept */
    fdpo_gpt2_zero_grad(m);
    ck_assert_int_eq(fdpo_gpt2_backward(m, d), 0);
    fdpo_adamw_step(&o, m, 1e-2);
    ck_assert_uint_ne(m->params_bf16_current & 8u, 0);
    fdpo_gpt2_set_precision(m, FDPO_PRECISION_FP32);
    fdpo_gpt2_zero_grad(m);
    ck_assert_int_eq(fdpo_gpt2_forward(m, &b, lp, NULL), 0);
    ck_assert_int_eq(fdpo_gpt2_backward(m, d), 0);
    fdpo_adamw_step(&o, m, 1e-2);
    fdpo_gpt2_set_precision(m, FDPO_PRECISION_BF16);
    ck_assert_int_eq(fdpo_gpt2_forward(m, &b, lp, NULL), 0);
    ck_assert_int_eq(fdpo_gpt2_copy_params(fresh, m), 0);
    ck_assert_int_eq(fdpo_gpt2_forward(fresh, &b, lp_fresh, NULL), 0);
    ck_assert_mem_eq(lp, lp_fresh, sizeof lp);
    /* written after the step by someone else: the next forward remakes the copy */
    ck_assert_int_eq(fdpo_gpt2_copy_params(m, fresh), 0);
    ck_assert_uint_eq(m->params_bf16_current, 0);
    fdpo_adamw_free(&o);
    fdpo_gpt2_free(m);
    fdpo_gpt2_free(fresh);
}
END_TEST

START_TEST(schedule_closed_forms) {
    fdpo_schedule s = {FDPO_SCHED_COSINE, 2.0, 2, 10, 0.0};
    /* warmup from 0: step 0 -> 0, step 1 -> lr/2; cosine over the 8 steps after warmup */
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 0), 0.0, 1e-15);
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 1), 1.0, 1e-15);
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 2), 2.0, 1e-15);
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 6), 1.0, 1e-12);        /* half way: cos(pi/2) = 0 */
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 4), 1.0 + sqrt(0.5), 1e-12); /* cos(pi/4) */
    s.min_lr_ratio = 0.25;
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 10), 0.5, 1e-12);       /* the floor */
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 6), 2.0 * (0.25 + 0.75 * 0.5), 1e-12);
    s.kind = FDPO_SCHED_LINEAR; s.min_lr_ratio = 0;
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 6), 1.0, 1e-12);        /* (10-6)/8 */
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 9), 0.25, 1e-12);
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 12), 0.0, 1e-15);      /* past the end: max(0, (10-12)/8) */
    s.kind = FDPO_SCHED_CONSTANT;
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 1), 1.0, 1e-15);
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 9), 2.0, 1e-15);
    s.warmup_steps = 0;
    ck_assert_double_eq_tol(fdpo_schedule_lr(&s, 0), 2.0, 1e-15);
    fdpo_sched_kind k;
    ck_assert_int_eq(fdpo_schedule_parse("linear", &k), 0);
    ck_assert_int_eq(k, FDPO_SCHED_LINEAR);
    ck_assert_int_eq(fdpo_schedule_parse("step", &k), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "'step'"));
}
END_TEST

static fdpo_gpt2 *tiny_model(void) {
    fdpo_gpt2_config c = {.vocab_size = 11, .n_positions = 8, .n_embd = 4, .n_layer = 2, .n_head = 2,
                          .layer_norm_epsilon = 1e-5f};
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    ck_assert_ptr_nonnull(m);
    fdpo_gpt2_init(m, 5);
    fdpo_gpt2_zero_grad(m);
    return m;
}

static int is_decay(const fdpo_gpt2 *m, size_t i) {
    for (int t = 0; t < (int)m->n_tensors; t++)
        if (i >= m->tensors[t].offset && i < m->tensors[t].offset + m->tensors[t].numel) return m->tensors[t].decay;
    ck_abort_msg("index outside every tensor");
    return 0;
}

START_TEST(adamw_two_steps_closed_form) {
    fdpo_gpt2 *m = tiny_model();
    size_t n = m->n_params;
    float *p0 = malloc(n * sizeof *p0);
    memcpy(p0, m->params_memory, n * sizeof *p0);
    fdpo_adamw o;
    const double b1 = 0.9, b2 = 0.99, eps = 1e-3, wd = 0.5, lr1 = 0.1, lr2 = 0.05;
    ck_assert_int_eq(fdpo_adamw_init(&o, n, b1, b2, eps, wd), 0);
    for (size_t i = 0; i < n; i++) m->grads_memory[i] = (float)(((double)(i % 7) - 3.0) * 0.1);
    fdpo_adamw_step(&o, m, lr1);
    for (size_t i = 0; i < n; i++) m->grads_memory[i] = (float)(((double)(i % 5) - 2.0) * 0.2);
    fdpo_adamw_step(&o, m, lr2);
    ck_assert_uint_eq(o.t, 2);
    size_t n_decay = 0;
    for (size_t i = 0; i < n; i++) {
        /* torch.optim.AdamW, written out in double */
        double g1 = ((double)(i % 7) - 3.0) * 0.1, g2 = ((double)(i % 5) - 2.0) * 0.2;
        double w = is_decay(m, i) ? wd : 0.0, p = p0[i];
        double mm = (1 - b1) * g1, vv = (1 - b2) * g1 * g1;
        p *= 1 - lr1 * w;
        p -= lr1 / (1 - b1) * mm / (sqrt(vv) / sqrt(1 - b2) + eps);
        mm = b1 * mm + (1 - b1) * g2; vv = b2 * vv + (1 - b2) * g2 * g2;
        p *= 1 - lr2 * w;
        p -= lr2 / (1 - b1 * b1) * mm / (sqrt(vv) / sqrt(1 - b2 * b2) + eps);
        ck_assert_double_eq_tol(m->params_memory[i], p, 2e-6 * (1 + fabs(p)));
        ck_assert_double_eq_tol(o.m[i], mm, 1e-7);
        ck_assert_double_eq_tol(o.v[i], vv, 1e-8);
        n_decay += is_decay(m, i);
    }
    ck_assert_uint_gt(n_decay, 0);
    ck_assert_uint_lt(n_decay, n);
    ck_assert_int_eq(fdpo_adamw_init(&o, n, 1.0, b2, eps, wd), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--beta1"));
    fdpo_adamw_free(&o);
    free(p0);
    fdpo_gpt2_free(m);
}
END_TEST

/* The trainer's step: clipping folded into AdamW (g read as g * scale) and, on a last step whose
 * moments nobody reads, the moments not stored. Against torch.optim.AdamW on clipped gradients
 * written out in double; the moments keep their previous values; the gradients stay unscaled. */
START_TEST(adamw_scaled_step_closed_form) {
    fdpo_gpt2 *m = tiny_model();
    size_t n = m->n_params;
    float *p0 = malloc(n * sizeof *p0);
    memcpy(p0, m->params_memory, n * sizeof *p0);
    fdpo_adamw o;
    const double b1 = 0.9, b2 = 0.99, eps = 1e-3, wd = 0.5, lr1 = 0.1, lr2 = 0.05, max_norm = 0.5;
    ck_assert_int_eq(fdpo_adamw_init(&o, n, b1, b2, eps, wd), 0);
    double ss = 0;
    for (size_t i = 0; i < n; i++) {
        m->grads_memory[i] = (float)(((double)(i % 7) - 3.0) * 0.1);
        ss += (double)m->grads_memory[i] * m->grads_memory[i];
    }
    double norm = fdpo_grad_norm(m);
    ck_assert_double_eq_tol(norm, sqrt(ss), 1e-12 * sqrt(ss));
    ck_assert_float_eq(fdpo_clip_scale(norm, 0), 1.0f);          /* no clipping asked */
    ck_assert_float_eq(fdpo_clip_scale(norm, 2 * norm), 1.0f);   /* below the max */
    float s1 = fdpo_clip_scale(norm, max_norm);
    ck_assert_double_eq_tol(s1, max_norm / (norm + 1e-6), 1e-7);
    fdpo_adamw_step_ex(&o, m, lr1, s1, 1);   /* the first step, moments stored */
    float *m1 = malloc(n * sizeof *m1), *v1 = malloc(n * sizeof *v1);
    memcpy(m1, o.m, n * sizeof *m1);
    memcpy(v1, o.v, n * sizeof *v1);
    for (size_t i = 0; i < n; i++) m->grads_memory[i] = (float)(((double)(i % 5) - 2.0) * 0.2);
    fdpo_adamw_step_ex(&o, m, lr2, 1.0f, 0);   /* the last: moments not stored */
    ck_assert_uint_eq(o.t, 2);
    for (size_t i = 0; i < n; i++) {
        double g1 = ((double)(i % 7) - 3.0) * 0.1 * (max_norm / (sqrt(ss) + 1e-6)), g2 = ((double)(i % 5) - 2.0) * 0.2;
        double w = is_decay(m, i) ? wd : 0.0, p = p0[i];
        double mm = (1 - b1) * g1, vv = (1 - b2) * g1 * g1;
        ck_assert_double_eq_tol(m1[i], mm, 1e-7);
        ck_assert_double_eq_tol(v1[i], vv, 1e-8);
        p *= 1 - lr1 * w;
        p -= lr1 / (1 - b1) * mm / (sqrt(vv) / sqrt(1 - b2) + eps);
        mm = b1 * mm + (1 - b1) * g2; vv = b2 * vv + (1 - b2) * g2 * g2;
        p *= 1 - lr2 * w;
        p -= lr2 / (1 - b1 * b1) * mm / (sqrt(vv) / sqrt(1 - b2 * b2) + eps);
        ck_assert_double_eq_tol(m->params_memory[i], p, 2e-6 * (1 + fabs(p)));
        ck_assert_float_eq(o.m[i], m1[i]);   /* not stored */
        ck_assert_float_eq(o.v[i], v1[i]);
        ck_assert_float_eq(m->grads_memory[i], (float)(((double)(i % 5) - 2.0) * 0.2));   /* unscaled */
    }
    fdpo_adamw_free(&o);
    free(p0); free(m1); free(v1);
    fdpo_gpt2_free(m);
}
END_TEST

START_TEST(clip_grad_norm_scales_above_max_only) {
    fdpo_gpt2 *m = tiny_model();
    size_t n = m->n_params;
    for (size_t i = 0; i < n; i++) m->grads_memory[i] = (i % 2) ? 3.0f : -4.0f;
    double want = sqrt((double)(n / 2) * 9.0 + (double)(n - n / 2) * 16.0);
    double norm = fdpo_clip_grad_norm(m, 2.0 * want); /* below max: untouched */
    ck_assert_double_eq_tol(norm, want, 1e-9 * want);
    ck_assert_float_eq(m->grads_memory[1], 3.0f);
    norm = fdpo_clip_grad_norm(m, 1.0);
    ck_assert_double_eq_tol(norm, want, 1e-9 * want);
    double scale = 1.0 / (want + 1e-6);
    ck_assert_double_eq_tol(m->grads_memory[1], 3.0 * scale, 1e-6 * 3.0 * scale);
    ck_assert_double_eq_tol(m->grads_memory[0], -4.0 * scale, 1e-6 * 4.0 * scale);
    ck_assert_double_eq_tol(fdpo_clip_grad_norm(m, 0), 1.0, 1e-6); /* 0 = no clipping, just the norm */
    fdpo_gpt2_free(m);
}
END_TEST

START_TEST(data_order_epochs) {
    fdpo_rng r1, r2;
    fdpo_rng_seed(&r1, 9); fdpo_rng_seed(&r2, 9);
    fdpo_data_order a, b;
    fdpo_order_init(&a, 10, 1, &r1);
    fdpo_order_init(&b, 10, 1, &r2);
    size_t first[10], second[10];
    for (int e = 0; e < 2; e++) {
        int seen[10] = {0};
        for (int i = 0; i < 10; i++) {
            size_t x = fdpo_order_next(&a, &r1);
            ck_assert_uint_eq(x, fdpo_order_next(&b, &r2));  /* same seed, same order */
            ck_assert_uint_lt(x, 10);
            seen[x]++;
            (e ? second : first)[i] = x;
        }
        for (int i = 0; i < 10; i++) ck_assert_int_eq(seen[i], 1); /* each epoch a permutation */
    }
    ck_assert_int_ne(memcmp(first, second, sizeof first), 0); /* reshuffled */
    ck_assert_double_eq_tol(fdpo_order_epoch(&a), 2.0, 1e-12);
    fdpo_order_free(&a); fdpo_order_free(&b);
    fdpo_order_init(&a, 4, 0, &r1);
    for (size_t i = 0; i < 9; i++) ck_assert_uint_eq(fdpo_order_next(&a, &r1), i % 4);
    fdpo_order_free(&a);
}
END_TEST

/* A step that straddles an epoch boundary never repeats an item (it took the old epoch's
 * last ones; they go to the end of the new permutation), every epoch stays a permutation, and
 * the new permutation is the blind draw (same RNG numbers) with those items moved back. */
START_TEST(data_order_step_never_repeats_an_item) {
    const size_t n = 7, per_step = 3;
    size_t straddled = 0;
    for (uint64_t seed = 1; seed <= 200; seed++) {
        fdpo_rng r, twin;
        fdpo_rng_seed(&r, seed); fdpo_rng_seed(&twin, seed);
        fdpo_data_order d, blind;
        fdpo_order_init(&d, n, 1, &r);
        fdpo_order_init(&blind, n, 1, &twin);
        size_t seq[7 * 3 * 5];
        for (size_t step = 0; step < n * 5; step++) {
            fdpo_order_begin_step(&d);
            size_t ep = d.epoch;
            for (size_t i = 0; i < per_step; i++) seq[step * per_step + i] = fdpo_order_next(&d, &r);
            for (size_t i = 0; i < per_step; i++)
                for (size_t j = 0; j < i; j++) ck_assert_uint_ne(seq[step * per_step + i], seq[step * per_step + j]);
            if (d.epoch != ep) {   /* this step straddled: the new order is the blind draw, deferred */
                straddled++;
                for (size_t i = 0; i < n; i++) blind.order[i] = i;   /* the blind draw of the new epoch */
                fdpo_rng_shuffle(&twin, blind.order, n);
                size_t tail[3], w = 0, want[7];
                size_t k = per_step - d.pos;   /* items of this step from the old epoch */
                for (size_t i = 0; i < k; i++) tail[i] = seq[step * per_step + i];
                for (size_t i = 0; i < n; i++) {   /* the reference: stable partition, by definition */
                    int t = 0;
                    for (size_t j = 0; j < k; j++) t |= blind.order[i] == tail[j];
                    if (!t) want[w++] = blind.order[i];
                }
                for (size_t i = 0; i < n; i++)
                    for (size_t j = 0; j < k; j++)
                        if (blind.order[i] == tail[j]) want[w++] = tail[j];
                ck_assert_uint_eq(w, n);
                ck_assert_int_eq(memcmp(want, d.order, sizeof want), 0);
            }
        }
        for (size_t e = 0; e < per_step * 5; e++) {   /* each epoch (n consecutive items) a permutation */
            int seen[7] = {0};
            for (size_t i = 0; i < n; i++) seen[seq[e * n + i]]++;
            for (size_t i = 0; i < n; i++) ck_assert_int_eq(seen[i], 1);
        }
        fdpo_order_free(&d); fdpo_order_free(&blind);
    }
    ck_assert_uint_gt(straddled, 1000);
    /* unshuffled: still 0, 1, ..., n-1 over and over */
    fdpo_rng r;
    fdpo_rng_seed(&r, 3);
    fdpo_data_order d;
    fdpo_order_init(&d, n, 0, &r);
    for (size_t step = 0, x = 0; step < 20; step++) {
        fdpo_order_begin_step(&d);
        for (size_t i = 0; i < per_step; i++, x++) ck_assert_uint_eq(fdpo_order_next(&d, &r), x % n);
    }
    fdpo_order_free(&d);
}
END_TEST

/* A step takes min(batch x accum, n) distinct items; the micro-batch is capped with it; the
 * epochs count whole passes (an epoch is one step once the step holds the data set). */
START_TEST(step_items_capped_at_the_data) {
    fdpo_train_opts o;
    fdpo_train_opts_default(&o);
    o.batch_size = 8; o.grad_accum = 1;
    ck_assert_uint_eq(fdpo_train_step_items(&o, 3), 3);
    ck_assert_uint_eq(fdpo_train_micro_items(&o, 3), 3);
    ck_assert_uint_eq(fdpo_train_step_items(&o, 8), 8);
    ck_assert_uint_eq(fdpo_train_step_items(&o, 100), 8);
    o.epochs = 3;
    ck_assert_uint_eq(fdpo_train_total_steps(&o, 3), 3);      /* was ceil(9 / 8) = 2 */
    ck_assert_uint_eq(fdpo_train_total_steps(&o, 20), 8);     /* ceil(60 / 8) */
    o.batch_size = 2; o.grad_accum = 4;
    ck_assert_uint_eq(fdpo_train_step_items(&o, 3), 3);
    ck_assert_uint_eq(fdpo_train_micro_items(&o, 3), 2);      /* micro-batches of 2 and 1 */
    ck_assert_uint_eq(fdpo_train_step_items(&o, 7), 7);
    ck_assert_uint_eq(fdpo_train_step_items(&o, 9), 8);
    o.batch_size = 100000000;
    ck_assert_uint_eq(fdpo_train_step_items(&o, 3), 3);
    ck_assert_uint_eq(fdpo_train_micro_items(&o, 3), 3);
    o.batch_size = LONG_MAX; o.grad_accum = LONG_MAX;         /* the product wraps: not used */
    ck_assert_uint_eq(fdpo_train_step_items(&o, 5), 5);
    o.epochs = 1.5;
    ck_assert_uint_eq(fdpo_train_total_steps(&o, 5), 2);      /* ceil(1.5) passes of one step */
    o.epochs = 9007199254740992.0;                            /* 2^53 passes of one step: the most */
    ck_assert_uint_eq(fdpo_train_total_steps(&o, 5), (size_t)FDPO_MAX_STEPS);
    o.epochs = 1e300;   /* was (size_t)1e300, undefined (C11 6.3.1.4); fdpo_trainer_open refuses SIZE_MAX */
    ck_assert_uint_eq(fdpo_train_total_steps(&o, 5), SIZE_MAX);
}
END_TEST

START_TEST(utf8_first_invalid_offsets) {
    ck_assert_uint_eq(fdpo_utf8_first_invalid("ab\xff", 3), 2);
    ck_assert_uint_eq(fdpo_utf8_first_invalid("caf\xc3\xa9", 5), 5);      /* valid é */
    ck_assert_uint_eq(fdpo_utf8_first_invalid("x\xe2\x82", 3), 1);       /* cut short */
    ck_assert_uint_eq(fdpo_utf8_first_invalid("\xc0\xaf", 2), 0);        /* overlong */
    ck_assert_uint_eq(fdpo_utf8_first_invalid("ok\xed\xa0\x80", 5), 2);  /* surrogate */
    ck_assert_uint_eq(fdpo_utf8_first_invalid("\xf0\x9f\x98\x80!", 5), 5); /* emoji */
}
END_TEST

START_TEST(data_split_counts) {
    unsigned char v[10];
    size_t cnt = 0;
    fdpo_data_split(10, 0.25, 1, v);
    for (int i = 0; i < 10; i++) cnt += v[i];
    ck_assert_uint_eq(cnt, 3);                          /* round(2.5) = 3 */
    fdpo_data_split(10, 0.01, 1, v);
    cnt = 0; for (int i = 0; i < 10; i++) cnt += v[i];
    ck_assert_uint_eq(cnt, 1);                          /* at least one */
    fdpo_data_split(2, 0.99, 1, v);
    ck_assert_uint_eq(v[0] + v[1], 1);                  /* at least one left to train on */
    fdpo_data_split(1, 0.5, 1, v);
    ck_assert_uint_eq(v[0], 0);
}
END_TEST

START_TEST(text_windows_cover_every_token) {
    make_tmpdir();
    char *p = tmp_path("t.txt");
    write_text(p, "abc<|endoftext|>de", 18);
    fdpo_tokenizer *tok = fdpo_tokenizer_byte();
    fdpo_lm_data tr, va;
    const char *paths[] = {p};
    ck_assert_int_eq(fdpo_text_load(paths, 1, tok, 3, 0.0, 1, &tr, &va), 0);
    /* stream a b c EOT d e EOT, windows of 4 overlapping by one: [0,4) [3,7) */
    int32_t want[] = {'a', 'b', 'c', 256, 'd', 'e', 256};
    ck_assert_uint_eq(tr.n_tokens, 7);
    for (int i = 0; i < 7; i++) ck_assert_int_eq(tr.tokens[i], want[i]);
    ck_assert_uint_eq(tr.n_seq, 2);
    ck_assert_uint_eq(tr.start[1], 3); ck_assert_uint_eq(tr.len[1], 4);
    ck_assert_uint_eq(tr.n_docs, 2);
    ck_assert_uint_eq(va.n_seq, 0);
    ck_assert_double_eq(fdpo_lm_data_seq_weight(&tr, 0) + fdpo_lm_data_seq_weight(&tr, 1), 6.0);
    fdpo_lm_data_free(&tr); fdpo_lm_data_free(&va);
    /* split by document: one of the two goes to validation */
    ck_assert_int_eq(fdpo_text_load(paths, 1, tok, 3, 0.5, 1, &tr, &va), 0);
    ck_assert_uint_eq(tr.n_docs, 1); ck_assert_uint_eq(va.n_docs, 1);
    ck_assert_uint_eq(tr.n_tokens + va.n_tokens, 7);
    fdpo_lm_data_free(&tr); fdpo_lm_data_free(&va);
    write_text(p, "<|endoftext|>", 13);
    ck_assert_int_eq(fdpo_text_load(paths, 1, tok, 3, 0.0, 1, &tr, &va), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "t.txt"));
    fdpo_tokenizer_free(tok);
    unlink(p); free(p);
    rmdir(tmpdir);
}
END_TEST

START_TEST(sft_weights_and_truncation) {
    make_tmpdir();
    char *p = tmp_path("s.jsonl");
    const char *text = "{\"prompt\": \"ab\", \"completion\": \"c\"}\n"
                       "{\"text\": \"xy\"}\n"
                       "{\"prompt\": \"\", \"completion\": \"z\"}\n"
                       "{\"prompt\": \"0123456789\", \"completion\": \"q\"}\n";
    write_text(p, text, strlen(text));
    fdpo_tokenizer *tok = fdpo_tokenizer_byte();
    fdpo_lm_data tr, va;
    fdpo_sft_stats st;
    const char *paths[] = {p};
    ck_assert_int_eq(fdpo_sft_load(paths, 1, tok, 5, 0.0, 1, &tr, &va, &st), 0);
    ck_assert_uint_eq(st.dropped, 1);   /* the prompt fills all 6 tokens: nothing to learn */
    ck_assert_uint_eq(st.cut, 0);       /* a dropped example is not also counted as cut */
    ck_assert_str_eq(st.first_dropped + strlen(st.first_dropped) - 2, ":4");
    ck_assert_uint_eq(tr.n_seq, 3);
    int32_t t0[] = {'a', 'b', 'c', 256}; float w0[] = {0, 0, 1, 1};
    int32_t t1[] = {'x', 'y', 256};      float w1[] = {0, 1, 1};
    int32_t t2[] = {256, 'z', 256};      float w2[] = {0, 1, 1};  /* empty prompt -> EOT */
    const int32_t *ts[] = {t0, t1, t2}; const float *ws[] = {w0, w1, w2}; size_t lens[] = {4, 3, 3};
    for (size_t s = 0; s < 3; s++) {
        ck_assert_uint_eq(tr.len[s], lens[s]);
        for (size_t j = 0; j < lens[s]; j++) {
            ck_assert_int_eq(tr.tokens[tr.start[s] + j], ts[s][j]);
            ck_assert_float_eq(tr.weights[tr.start[s] + j], ws[s][j]);
        }
    }
    ck_assert_double_eq(fdpo_lm_data_seq_weight(&tr, 0), 2.0);
    uint64_t h = fdpo_lm_data_hash(&tr);
    tr.weights[tr.start[0] + 2] = 0.5f;
    ck_assert_uint_ne(h, fdpo_lm_data_hash(&tr));
    fdpo_lm_data_free(&tr); fdpo_lm_data_free(&va);
    fdpo_tokenizer_free(tok);
    unlink(p); free(p);
    rmdir(tmpdir);
}
END_TEST

START_TEST(sft_messages_template) {
    make_tmpdir();
    char *p = tmp_path("m.jsonl");
    const char *text = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, "
                       "{\"role\": \"assistant\", \"content\": \"yo\"}]}\n";
    write_text(p, text, strlen(text));
    fdpo_tokenizer *tok = fdpo_tokenizer_byte();
    fdpo_lm_data tr, va;
    fdpo_sft_stats st;
    const char *paths[] = {p};
    ck_assert_int_eq(fdpo_sft_load(paths, 1, tok, 64, 0.0, 1, &tr, &va, &st), 0);
    ck_assert_uint_eq(st.dropped, 0);
    ck_assert_uint_eq(st.cut, 0);
    /* "<|user|>\nhi\n<|assistant|>\n" weight 0, then "yo\n" and <|endoftext|> weight 1 */
    const char *rendered = "<|user|>\nhi\n<|assistant|>\nyo\n";
    size_t n = strlen(rendered), head = n - 3;
    ck_assert_uint_eq(tr.n_seq, 1);
    ck_assert_uint_eq(tr.len[0], n + 1);
    for (size_t j = 0; j < n; j++) {
        ck_assert_int_eq(tr.tokens[j], (unsigned char)rendered[j]);
        ck_assert_float_eq(tr.weights[j], j < head ? 0.0f : 1.0f);
    }
    ck_assert_int_eq(tr.tokens[n], 256);
    ck_assert_float_eq(tr.weights[n], 1.0f);
    fdpo_lm_data_free(&tr); fdpo_lm_data_free(&va);
    fdpo_tokenizer_free(tok);
    unlink(p); free(p);
    rmdir(tmpdir);
}
END_TEST

/* Before wave 28 pretrain/sft saved their held-out share as "val-fraction", and dpo-like runs
 * saved that unused train option (0) beside their own "eval-fraction": read back, the first
 * is "eval-fraction", the second keeps the command's value. */
START_TEST(settings_read_old_val_fraction) {
    cJSON *old_lm = cJSON_Parse("{\"lr\": 0.01, \"val-fraction\": 0.25}");
    cJSON *old_pref = cJSON_Parse("{\"val-fraction\": 0, \"eval-fraction\": 0.1}");
    cJSON *fixed = cJSON_Parse("[\"lr\", \"val-fraction\", \"eval-fraction\"]");
    fdpo_settings a = {0}, b = {0};
    ck_assert_int_eq(fdpo_settings_from_json(&a, old_lm, fixed, "a.json"), 0);
    ck_assert_int_eq(fdpo_settings_from_json(&b, old_pref, fixed, "b.json"), 0);
    const fdpo_setting *x = fdpo_settings_find(&a, "eval-fraction");
    ck_assert(x && x->type == FDPO_SETTING_NUM && x->num == 0.25 && x->fixed);
    ck_assert_ptr_null(fdpo_settings_find(&a, "val-fraction"));
    ck_assert_uint_eq(a.n, 2);
    x = fdpo_settings_find(&b, "eval-fraction");
    ck_assert(x && x->num == 0.1 && x->fixed);
    ck_assert_ptr_null(fdpo_settings_find(&b, "val-fraction"));
    ck_assert_uint_eq(b.n, 1);
    fdpo_settings_free(&a); fdpo_settings_free(&b);
    cJSON_Delete(old_lm); cJSON_Delete(old_pref); cJSON_Delete(fixed);
}
END_TEST

START_TEST(state_and_checkpoint_round_trip) {
    make_tmpdir();
    char *out = tmp_path("ckpt");
    fdpo_gpt2 *m = tiny_model();
    fdpo_tokenizer *tok = fdpo_tokenizer_byte();
    fdpo_adamw o;
    ck_assert_int_eq(fdpo_adamw_init(&o, m->n_params, 0.9, 0.999, 1e-8, 0.1), 0);
    for (size_t i = 0; i < m->n_params; i++) { m->grads_memory[i] = (float)sin((double)i); }
    fdpo_adamw_step(&o, m, 1e-3);
    fdpo_train_state s = {0};
    s.kind = fdpo_strdup("pretrain");
    s.step = 1; s.total_steps = 5; s.data_hash = 0xfeedfacecafebeefULL;
    s.has_eval_data = 1; s.eval_n_items = 3; s.eval_hash = 0x0123456789abcdefULL;   /* dpo/rm/kto's held-out set */
    fdpo_rng_seed(&s.rng, 3);
    fdpo_order_init(&s.data, 6, 1, &s.rng);
    fdpo_order_next(&s.data, &s.rng);
    fdpo_settings_num(&s.settings, "lr", 0.001, 1);
    fdpo_settings_num(&s.settings, "seed", 3, 1);
    fdpo_settings_str(&s.settings, "schedule", "cosine", 1);
    fdpo_settings_str(&s.settings, "eval-file", NULL, 1);
    fdpo_settings_bool(&s.settings, "shuffle", 1, 1);
    fdpo_settings_num(&s.settings, "save-every", 5, 0);
    ck_assert_int_eq(fdpo_checkpoint_save_all(out, m, tok, &s, &o), 0);
    /* files a user keeps in OUT survive the next save's directory swap */
    char *extra = fdpo_path_join(out, "notes.txt");
    write_text(extra, "keep me", 7);
    ck_assert_int_eq(fdpo_checkpoint_save_all(out, m, tok, &s, &o), 0);
    ck_assert(fdpo_file_exists(extra));
    /* a crash between the renames: OUT.old, and OUT.tmp marked as a save that had begun the
     * swap (a user's OUT.old without that mark is left alone and refused: test_out_guard.py) */
    char *old = tmp_path("ckpt.old"), *swap_tmp = tmp_path("ckpt.tmp");
    ck_assert_int_eq(rename(out, old), 0);
    ck_assert_int_eq(mkdir(swap_tmp, 0777), 0);
    char *swap_mark = fdpo_path_join(swap_tmp, ".fdpo-swap");
    write_text(swap_mark, "", 0);
    fdpo_dir_unlock(out);   /* the crashed process is gone; the next one claims OUT afresh */
    ck_assert_int_eq(fdpo_checkpoint_recover(out), 0);
    ck_assert(fdpo_file_exists(out) && !fdpo_file_exists(old) && !fdpo_file_exists(swap_tmp));
    free(swap_mark); free(swap_tmp);

    fdpo_gpt2 *m2 = fdpo_checkpoint_load_model(out);
    ck_assert_ptr_nonnull(m2);
    ck_assert_int_eq(memcmp(m2->params_memory, m->params_memory, m->n_params * sizeof(float)), 0);
    fdpo_adamw o2;
    fdpo_adamw_init(&o2, m2->n_params, 0.9, 0.999, 1e-8, 0.1);
    fdpo_train_state s2;
    ck_assert_int_eq(fdpo_train_state_load(out, &s2, &o2, m2), 0);
    ck_assert_int_eq(memcmp(o2.m, o.m, o.n * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(o2.v, o.v, o.n * sizeof(float)), 0);
    ck_assert_uint_eq(o2.t, 1);
    ck_assert_uint_eq(s2.step, 1); ck_assert_uint_eq(s2.total_steps, 5);
    ck_assert_uint_eq(s2.data_hash, s.data_hash);
    ck_assert(s2.has_eval_data && s2.eval_n_items == 3 && s2.eval_hash == s.eval_hash);
    ck_assert_int_eq(memcmp(&s2.rng, &s.rng, sizeof s.rng), 0);
    ck_assert_uint_eq(s2.data.pos, 1); ck_assert_uint_eq(s2.data.n, 6);
    ck_assert_int_eq(memcmp(s2.data.order, s.data.order, 6 * sizeof(size_t)), 0);
    /* settings come back typed, with their fixedness */
    ck_assert_uint_eq(s2.settings.n, 6);
    const fdpo_setting *x = fdpo_settings_find(&s2.settings, "lr");
    ck_assert(x && x->type == FDPO_SETTING_NUM && x->num == 0.001 && x->fixed);
    x = fdpo_settings_find(&s2.settings, "schedule");
    ck_assert(x && x->type == FDPO_SETTING_STR && !strcmp(x->str, "cosine"));
    x = fdpo_settings_find(&s2.settings, "eval-file");
    ck_assert(x && x->type == FDPO_SETTING_NULL);
    x = fdpo_settings_find(&s2.settings, "shuffle");
    ck_assert(x && x->type == FDPO_SETTING_BOOL && x->num == 1);
    x = fdpo_settings_find(&s2.settings, "save-every");
    ck_assert(x && x->type == FDPO_SETTING_NUM && x->num == 5 && !x->fixed);
    /* resume check: a fixed setting must be equal, a kept one may change */
    fdpo_settings now = {0};
    fdpo_settings_num(&now, "save-every", 7, 0);
    fdpo_settings_num(&now, "seed", 3, 1);
    ck_assert_int_eq(fdpo_settings_check_resume(&s2.settings, &now), 0);
    fdpo_settings_num(&now, "lr", 0.002, 1);
    ck_assert_int_eq(fdpo_settings_check_resume(&s2.settings, &now), -1);
    ck_assert_str_eq(fdpo_last_error(), "--lr: 0.002 differs from the saved run's 0.001 (it cannot change on --resume)");
    fdpo_settings_free(&now);
    ck_assert_str_eq(s2.kind, "pretrain");
    /* a damaged state file is an error naming the file and field */
    char *sj = fdpo_path_join(out, "training_state.json");
    write_text(sj, "{\"format\": \"fdpo-training-state\", \"kind\": \"sft\"}", 48);
    fdpo_train_state s3;
    ck_assert_int_eq(fdpo_train_state_load(out, &s3, &o2, m2), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "training_state.json: field 'step'"));

    fdpo_train_state_free(&s); fdpo_train_state_free(&s2);
    fdpo_adamw_free(&o); fdpo_adamw_free(&o2);
    fdpo_gpt2_free(m); fdpo_gpt2_free(m2);
    fdpo_tokenizer_free(tok);
    ck_assert_int_eq(fdpo_remove_tree(tmpdir), 0);
    free(sj); free(extra); free(old); free(out);
}
END_TEST

/* The file is made, and on resume cut back, with the first line only: a run that fails
 * before it logs anything leaves no metrics.jsonl, nor an earlier run's cut or emptied. */
START_TEST(metrics_writer_and_resume_truncation) {
    make_tmpdir();
    fdpo_metrics mw;
    char *p = tmp_path("metrics.jsonl");
    ck_assert_int_eq(fdpo_metrics_open(&mw, tmpdir, 0), 0);
    fdpo_metrics_close(&mw);
    ck_assert(!fdpo_file_exists(p));   /* opened, nothing logged: no file */
    ck_assert_int_eq(fdpo_metrics_open(&mw, tmpdir, 0), 0);
    for (size_t s = 1; s <= 4; s++) {
        fdpo_metrics_begin(&mw, s);
        fdpo_metrics_add(&mw, "loss", 1.0 / (double)s);
        fdpo_metrics_add(&mw, "rewards/chosen", NAN);
        ck_assert_int_eq(fdpo_metrics_end(&mw), 0);
    }
    fdpo_metrics_close(&mw);
    size_t len, len4;
    char *four = fdpo_read_file(p, &len4);
    ck_assert_int_eq(fdpo_metrics_open(&mw, tmpdir, 2), 0); /* resume from step 2 that fails at once */
    fdpo_metrics_close(&mw);
    char *text = fdpo_read_file(p, &len);
    ck_assert_str_eq(text, four);
    free(text);
    ck_assert_int_eq(fdpo_metrics_open(&mw, tmpdir, 0), 0); /* a fresh run (--overwrite) that fails at once */
    fdpo_metrics_close(&mw);
    text = fdpo_read_file(p, &len);
    ck_assert_str_eq(text, four);
    free(text);
    ck_assert_int_eq(fdpo_metrics_open(&mw, tmpdir, 2), 0); /* resume from step 2: its first line cuts */
    fdpo_metrics_begin(&mw, 3);
    fdpo_metrics_add(&mw, "loss", 0.25);
    ck_assert_int_eq(fdpo_metrics_end(&mw), 0);
    fdpo_metrics_close(&mw);
    text = fdpo_read_file(p, &len);
    ck_assert_str_eq(text, "{\"step\": 1, \"loss\": 1, \"rewards/chosen\": null}\n"
                           "{\"step\": 2, \"loss\": 0.5, \"rewards/chosen\": null}\n"
                           "{\"step\": 3, \"loss\": 0.25}\n");
    free(text); free(four); free(p);
    ck_assert_int_eq(fdpo_remove_tree(tmpdir), 0);
}
END_TEST

/* The held-out preference pairs never reach training: train and eval index sets are
 * disjoint, together cover 0..n-1 once, hold round(fraction * n) eval pairs (at least 1 when
 * fraction > 0 and n >= 2), and the same seed gives the same split. */
/* fdpo_gpt2_config_hash covers what fdpo_gpt2_config_equal compares (the reference cache's
 * key rests on it): equal configs hash equal; changing any one compared field makes the
 * configs unequal and the hash different; model_type, not compared, leaves both alone. */
START_TEST(config_hash_follows_config_equal) {
    fdpo_gpt2_config base = {.vocab_size = 300, .n_positions = 64, .n_embd = 64, .n_layer = 2, .n_head = 8,
                             .layer_norm_epsilon = 1e-6f, .arch = FDPO_ARCH_LLAMA, .n_kv_head = 2,
                             .intermediate_size = 192, .rope_theta = 10000, .tie_word_embeddings = 1,
                             .model_type = "llama"};
    const uint64_t h0 = fdpo_gpt2_config_hash(FDPO_HASH_INIT, &base);
    fdpo_gpt2_config c = base;
    snprintf(c.model_type, sizeof c.model_type, "qwen2");
    ck_assert(fdpo_gpt2_config_equal(&base, &c));
    ck_assert_uint_eq(fdpo_gpt2_config_hash(FDPO_HASH_INIT, &c), h0);
    char what[256];   /* fdpo_gpt2_config_diff names each one (merge's message) */
#define CHANGED(stmt) do { c = base; stmt; ck_assert_msg(!fdpo_gpt2_config_equal(&base, &c), #stmt); \
        ck_assert_msg(fdpo_gpt2_config_hash(FDPO_HASH_INIT, &c) != h0, #stmt); \
        ck_assert_msg(fdpo_gpt2_config_diff(&c, &base, what, sizeof what) >= 1 && what[0], #stmt); } while (0)
    CHANGED(c.vocab_size++);        CHANGED(c.n_positions++);       CHANGED(c.n_embd += 8);
    CHANGED(c.n_layer++);           CHANGED(c.n_head = 4);          CHANGED(c.layer_norm_epsilon = 1e-5f);
    CHANGED(c.num_labels = 1);      CHANGED(c.arch = FDPO_ARCH_GPT2);
    CHANGED(c.n_kv_head = 4);       CHANGED(c.intermediate_size = 160);  CHANGED(c.head_dim = 16);
    CHANGED(c.rope_theta = 500000); CHANGED(c.tie_word_embeddings = 0);  CHANGED(c.qkv_bias = 1);
    CHANGED(c.o_bias = 1);          CHANGED(c.mlp_bias = 1);        CHANGED(c.rope_factor = 8);
    CHANGED(c.rope_low_freq_factor = 1); CHANGED(c.rope_high_freq_factor = 4);
    CHANGED(c.rope_original_max_position = 8192);
#undef CHANGED
    c = base;
    ck_assert_uint_eq(fdpo_gpt2_config_diff(&c, &base, what, sizeof what), 0);
    ck_assert_str_eq(what, "");
    c.num_labels = 1; c.rope_theta = 500000; c.layer_norm_epsilon = 1e-5f;
    ck_assert_uint_eq(fdpo_gpt2_config_diff(&c, &base, what, sizeof what), 4);
    ck_assert_str_eq(what, "architectures LlamaForSequenceClassification vs LlamaForCausalLM, num_labels 1 vs 0, "
                           "layer_norm_epsilon 1e-05 vs 1e-06, rope_theta 500000 vs 10000");
    /* GPT-2: the Llama fields are not part of its architecture (config_equal ignores them) */
    fdpo_gpt2_config g = base, g2;
    g.arch = FDPO_ARCH_GPT2;
    g2 = g;
    g2.rope_theta = 3;
    ck_assert(fdpo_gpt2_config_equal(&g, &g2));
    ck_assert_uint_eq(fdpo_gpt2_config_hash(FDPO_HASH_INIT, &g), fdpo_gpt2_config_hash(FDPO_HASH_INIT, &g2));
}
END_TEST

/* --arch llama: the config a random init builds, the SwiGLU default against ceil(8C/3)
 * rounded up to 32 computed here by integer search, and the flag named by each refusal. */
START_TEST(llama_random_init_config) {
    for (long C = 2; C <= 4096; C += 2) {
        long want = 32;
        while (3 * want < 8 * C) want += 32;   /* the least multiple of 32 with want >= 8C/3 */
        ck_assert_int_eq(fdpo_train_opts_intermediate_size(C), want);
    }
    fdpo_train_opts o;
    fdpo_train_opts_default(&o);
    o.out = "unused";
    fdpo_gpt2_config g = fdpo_train_opts_model_config(&o, 257);
    ck_assert_int_eq(g.arch, FDPO_ARCH_GPT2);
    o.arch = "llama"; o.n_head = 8; o.n_kv_head = 2; o.n_embd = 64; o.rope_theta = 500; o.tie_word_embeddings = 0;
    ck_assert_int_eq(fdpo_train_opts_check(&o), 0);
    fdpo_gpt2_config c = fdpo_train_opts_model_config(&o, 300);
    ck_assert_int_eq(c.arch, FDPO_ARCH_LLAMA);
    ck_assert_uint_eq(c.vocab_size, 300);
    ck_assert_uint_eq(c.n_kv_head, 2);
    ck_assert_uint_eq(c.intermediate_size, 192);   /* 8 * 64 / 3 = 170.7 -> 192 */
    ck_assert(c.rope_theta == 500 && !c.tie_word_embeddings && !strcmp(c.model_type, "llama"));
    ck_assert_int_eq(fdpo_gpt2_config_check(&c), 0);
    o.n_kv_head = 0;
    ck_assert_uint_eq(fdpo_train_opts_model_config(&o, 300).n_kv_head, 8);
    struct { const char *field; long v; const char *msg; } bad[] = {
        {"n_kv_head", 3, "--n-kv-head: 3 must divide --n-head 8"},
        {"n_embd", 72, "--n-embd: --arch llama needs an even head size"},
        {"intermediate_size", -5, "--intermediate-size: -5"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fdpo_train_opts b = o;
        if (!strcmp(bad[i].field, "n_kv_head")) b.n_kv_head = bad[i].v;
        else if (!strcmp(bad[i].field, "n_embd")) b.n_embd = bad[i].v;
        else b.intermediate_size = bad[i].v;
        ck_assert_int_eq(fdpo_train_opts_check(&b), -1);
        ck_assert_msg(strstr(fdpo_last_error(), bad[i].msg), "%s", fdpo_last_error());
    }
    fdpo_train_opts b = o;
    b.arch = "gpt3";
    ck_assert_int_eq(fdpo_train_opts_check(&b), -1);
    ck_assert(strstr(fdpo_last_error(), "--arch: 'gpt3'"));
}
END_TEST

START_TEST(pref_split_is_disjoint_and_complete) {
    const size_t sizes[] = {2, 3, 10, 97, 1000};
    const double fractions[] = {0.0, 0.01, 0.1, 0.5, 0.9};
    for (size_t a = 0; a < sizeof sizes / sizeof sizes[0]; a++) {
        for (size_t b = 0; b < sizeof fractions / sizeof fractions[0]; b++) {
            for (uint64_t seed = 1; seed <= 3; seed++) {
                size_t n = sizes[a], *tr, *ev, nt, ne;
                double f = fractions[b];
                ck_assert_int_eq(fdpo_pref_split(n, f, seed, &tr, &nt, &ev, &ne), 0);
                ck_assert_uint_eq(nt + ne, n);
                size_t want = (size_t)floor(f * (double)n + 0.5);
                if (f > 0 && n >= 2 && want == 0) want = 1;
                if (want >= n) want = n - 1;
                ck_assert_uint_eq(ne, want);
                unsigned char *seen = calloc(n, 1);
                for (size_t i = 0; i < nt; i++) { ck_assert_uint_lt(tr[i], n); ck_assert_int_eq(seen[tr[i]], 0); seen[tr[i]] = 1; }
                for (size_t i = 0; i < ne; i++) { ck_assert_uint_lt(ev[i], n); ck_assert_int_eq(seen[ev[i]], 0); seen[ev[i]] = 2; }
                for (size_t i = 0; i < n; i++) ck_assert_int_ne(seen[i], 0);
                size_t *tr2, *ev2, nt2, ne2;
                ck_assert_int_eq(fdpo_pref_split(n, f, seed, &tr2, &nt2, &ev2, &ne2), 0);
                ck_assert_uint_eq(ne2, ne);
                ck_assert_int_eq(memcmp(ev, ev2, ne * sizeof *ev), 0);
                free(seen); free(tr); free(ev); free(tr2); free(ev2);
            }
        }
    }
    size_t *tr, *ev, nt, ne;
    ck_assert_int_eq(fdpo_pref_split(10, 1.0, 1, &tr, &nt, &ev, &ne), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--eval-fraction"));
}
END_TEST

/* The library's readers behind fdpo info and fdpo score, called directly: the checkpoint's
 * step through the trainer's state reader, errors naming the file / flag, one scored line. */
START_TEST(checkpoint_info_and_score_run_from_the_library) {
    make_tmpdir();
    char *out = tmp_path("ckpt");
    fdpo_gpt2_config c = {.vocab_size = 257, .n_positions = 16, .n_embd = 4, .n_layer = 1, .n_head = 2,
                          .layer_norm_epsilon = 1e-5f};
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    ck_assert_ptr_nonnull(m);
    fdpo_gpt2_init(m, 5);
    fdpo_tokenizer *tok = fdpo_tokenizer_byte();
    fdpo_train_state s = {0};
    s.kind = fdpo_strdup("sft");
    s.step = 3; s.total_steps = 9;
    fdpo_rng_seed(&s.rng, 1);
    fdpo_order_init(&s.data, 2, 0, &s.rng);
    ck_assert_int_eq(fdpo_checkpoint_save_all(out, m, tok, &s, NULL), 0);

    fdpo_checkpoint_info info;
    ck_assert_int_eq(fdpo_checkpoint_info_read(out, &info), 0);
    ck_assert(info.has_state);
    ck_assert_uint_eq(info.step, 3);
    ck_assert_str_eq(info.model_type, "gpt2");
    ck_assert_str_eq(info.architecture, "GPT2LMHeadModel");
    ck_assert_str_eq(info.tokenizer_kind, "byte");
    ck_assert_uint_eq(info.model->config.vocab_size, 257);
    fdpo_checkpoint_info_free(&info);
    char *sj = fdpo_path_join(out, "training_state.json");
    write_text(sj, "{\"step\": 3", 10);   /* truncated */
    ck_assert_int_eq(fdpo_checkpoint_info_read(out, &info), -1);
    ck_assert_ptr_null(info.model);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "ckpt/training_state.json: not a JSON object"));
    write_text(sj, "{\"step\": true}", 14);   /* wrong-typed */
    ck_assert_int_eq(fdpo_checkpoint_info_read(out, &info), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "ckpt/training_state.json: field 'step'"));
    ck_assert_int_eq(remove(sj), 0);
    ck_assert_int_eq(fdpo_checkpoint_info_read(out, &info), 0);
    ck_assert(!info.has_state && info.step == 0);
    fdpo_checkpoint_info_free(&info);

    fdpo_score_opts o;
    fdpo_score_opts_default(&o);
    ck_assert_str_eq(o.out, "-");
    ck_assert(o.stream == stdout && o.reward_opts.timeout_s == 60);
    ck_assert_int_eq(fdpo_score_run(&o), -1);
    ck_assert_str_eq(fdpo_last_error(), "--model: required (a checkpoint directory)");
    o.model = out;
    ck_assert_int_eq(fdpo_score_opts_check(&o), -1);
    ck_assert_str_eq(fdpo_last_error(), "--data: required (JSONL prompt/completion)");
    char *data = tmp_path("c.jsonl"), *scored = tmp_path("scored.jsonl");
    write_text(data, "{\"prompt\": \"ab\", \"completion\": \"xyz\"}\n", 38);
    o.data = data;
    o.stream = NULL;
    ck_assert_int_eq(fdpo_score_opts_check(&o), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "--out: '-' needs a stream"));
    o.out = scored;
    o.reward = "length";
    ck_assert_int_eq(fdpo_score_run(&o), 0);
    size_t len;
    char *text = fdpo_read_file(scored, &len);
    ck_assert_ptr_nonnull(text);
    ck_assert_ptr_nonnull(strstr(text, "{\"prompt\":\"ab\",\"completion\":\"xyz\",\"n_tokens\":3,\"logp\":-"));
    ck_assert_ptr_nonnull(strstr(text, ",\"reward\":3}\n"));
    ck_assert_ptr_null(strstr(text, "logp_ref"));   /* no --ref */
    ck_assert_ptr_eq(strchr(text, '\n') + 1, text + len);   /* one line */

    free(text); free(data); free(scored); free(sj); free(out);
    fdpo_train_state_free(&s);
    fdpo_gpt2_free(m);
    fdpo_tokenizer_free(tok);
    ck_assert_int_eq(fdpo_remove_tree(tmpdir), 0);
}
END_TEST

/* A path given as "" is refused by its flag in every option check that takes one, as the
 * CLI refuses it (`--ref-cache-dir: an empty path`): the library owns validation. Before, ""
 * reached fdpo_mkdir_p (a heap-buffer-overflow: --ref-cache-dir, a tokenizer or checkpoint
 * save) or failed after all the work (score: "--out: : rename failed"). */
START_TEST(option_checks_refuse_an_empty_path) {
    fdpo_dpo_run_opts d;
    fdpo_dpo_run_opts_default(&d);
    d.train.init = "m"; d.data = "d.jsonl"; d.train.out = "o";
    ck_assert_int_eq(fdpo_dpo_run_opts_check(&d), 0);
    const char **dpo_paths[] = {&d.ref_cache_dir, &d.ref, &d.eval_file, &d.data, &d.train.out, &d.train.tokenizer};
    const char *dpo_msgs[] = {"--ref-cache-dir", "--ref", "--eval-file", "--data", "--out", "--tokenizer"};
    for (size_t i = 0; i < sizeof dpo_paths / sizeof dpo_paths[0]; i++) {
        const char *keep = *dpo_paths[i];
        *dpo_paths[i] = "";
        const fdpo_dpo_run_opts b = d;
        *dpo_paths[i] = keep;
        ck_assert_int_eq(fdpo_dpo_run_opts_check(&b), -1);
        char want[64];
        snprintf(want, sizeof want, "%s: an empty path", dpo_msgs[i]);
        ck_assert_str_eq(fdpo_last_error(), want);
    }
    fdpo_score_opts so;
    fdpo_score_opts_default(&so);
    so.model = "m"; so.data = "d.jsonl"; so.out = "";
    ck_assert_int_eq(fdpo_score_opts_check(&so), -1);
    ck_assert_str_eq(fdpo_last_error(), "--out: an empty path; give a file");
    fdpo_rl_run_opts rl;
    fdpo_rl_run_opts_default(&rl);
    rl.model = "m"; rl.prompts = ""; rl.reward = "length"; rl.train.out = "o";
    ck_assert_int_eq(fdpo_rl_run_opts_check(&rl), -1);
    ck_assert_str_eq(fdpo_last_error(), "--data: an empty path");
    const char *models[] = {"a", ""};
    fdpo_merge_opts mo = {.models = models, .n_models = 2};
    ck_assert_int_eq(fdpo_merge_opts_check(&mo), -1);
    ck_assert_str_eq(fdpo_last_error(), "--model: an empty path");

    /* and the saves that made "" a directory name */
    fdpo_gpt2_config c = {.vocab_size = 257, .n_positions = 16, .n_embd = 4, .n_layer = 1, .n_head = 2,
                          .layer_norm_epsilon = 1e-5f};
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    ck_assert_ptr_nonnull(m);
    fdpo_tokenizer *tok = fdpo_tokenizer_byte();
    ck_assert_int_eq(fdpo_tokenizer_save_dir(tok, ""), -1);
    ck_assert_str_eq(fdpo_last_error(), "cannot create a directory at an empty path");
    ck_assert_int_eq(fdpo_checkpoint_save_model("", m), -1);
    ck_assert_str_eq(fdpo_last_error(), "cannot create a directory at an empty path");
    fdpo_tokenizer_free(tok);
    fdpo_gpt2_free(m);
}
END_TEST

/* sacpo's OUT is fdpo_sacpo_opts.out, the directory of every stage (sacpo.h); the template's
 * dpo.train.out is not used, and left NULL it failed "--out: required" (the CLI hid it by
 * copying --out into both). */
START_TEST(sacpo_check_takes_out_not_the_template_s) {
    fdpo_sacpo_opts sa;
    fdpo_sacpo_opts_default(&sa);
    const double lambdas[] = {0.5};
    sa.dpo.train.init = "m"; sa.reward_data = "r.jsonl"; sa.safety_data = "s.jsonl"; sa.out = "o";
    sa.lambdas = lambdas; sa.n_lambdas = 1;
    ck_assert_ptr_null(sa.dpo.train.out);
    ck_assert_msg(fdpo_sacpo_opts_check(&sa) == 0, "%s", fdpo_last_error());
    sa.out = NULL;
    ck_assert_int_eq(fdpo_sacpo_opts_check(&sa), -1);
    ck_assert_str_eq(fdpo_last_error(), "--out: required (the directory that receives every stage)");
    sa.out = "";
    ck_assert_int_eq(fdpo_sacpo_opts_check(&sa), -1);
    ck_assert_str_eq(fdpo_last_error(), "--out: an empty path");
    sa.out = "o";
    sa.dpo.train.lr = -1;   /* the trainer options are still checked */
    ck_assert_int_eq(fdpo_sacpo_opts_check(&sa), -1);
    ck_assert_str_eq(fdpo_last_error(), "--lr: -1 must be >= 0");
}
END_TEST

/* An enum value past its type's values is refused by its flag (as the lab's `--method: unknown
 * method 42`): a loss kind 9 gave fdpo_pref_loss_pair's NaN under the name "?", and a layout,
 * bad-pairs or on-long policy 7 ran as the default and was saved as it. */
START_TEST(option_checks_refuse_unknown_enum_values) {
    fdpo_pref_loss L = {.kind = FDPO_LOSS_SIGMOID, .div = {.kind = FDPO_DIV_RKL}, .beta = 0.1};
    ck_assert_int_eq(fdpo_pref_loss_check(&L), 0);
    L.kind = (fdpo_loss_kind)9;
    ck_assert_int_eq(fdpo_pref_loss_check(&L), -1);
    ck_assert_str_eq(fdpo_last_error(), "--loss: unknown loss 9");
    L.kind = FDPO_LOSS_SIGMOID;
    L.div.kind = (fdpo_div_kind)9;
    ck_assert_int_eq(fdpo_pref_loss_check(&L), -1);
    ck_assert_str_eq(fdpo_last_error(), "--divergence: unknown divergence 9");

    fdpo_rl_run_opts rl;
    fdpo_rl_run_opts_default(&rl);
    ck_assert_int_eq(fdpo_rl_config_check(&rl.rl), 0);
    rl.rl.algo = (fdpo_rl_algo)5;
    ck_assert_int_eq(fdpo_rl_config_check(&rl.rl), -1);
    ck_assert_str_eq(fdpo_last_error(), "--algo: unknown algorithm 5");
    rl.rl.algo = FDPO_RL_RLOO;
    rl.rl.div.kind = (fdpo_div_kind)9;
    ck_assert_int_eq(fdpo_rl_config_check(&rl.rl), -1);
    ck_assert_str_eq(fdpo_last_error(), "--divergence: an unknown divergence kind");

    fdpo_dpo_run_opts d;
    fdpo_dpo_run_opts_default(&d);
    d.train.init = "m"; d.data = "d.jsonl"; d.train.out = "o";
    fdpo_dpo_run_opts b = d;
    b.dpo.layout = (fdpo_pair_layout)7;
    ck_assert_int_eq(fdpo_dpo_run_opts_check(&b), -1);
    ck_assert_str_eq(fdpo_last_error(), "--layout: unknown layout 7");
    b = d;
    b.pref.on_bad = (fdpo_pref_on_bad)7;
    ck_assert_int_eq(fdpo_dpo_run_opts_check(&b), -1);
    ck_assert_str_eq(fdpo_last_error(), "--bad-pairs: unknown policy 7");
    b = d;
    b.pref.on_long = (fdpo_pref_on_long)7;
    ck_assert_int_eq(fdpo_dpo_run_opts_check(&b), -1);
    ck_assert_str_eq(fdpo_last_error(), "--on-long: unknown policy 7");
    fdpo_rm_run_opts rm;
    fdpo_rm_run_opts_default(&rm);
    rm.train.init = "m"; rm.data = "d.jsonl"; rm.train.out = "o";
    rm.pref.on_long = (fdpo_pref_on_long)7;
    ck_assert_int_eq(fdpo_rm_run_opts_check(&rm), -1);
    ck_assert_str_eq(fdpo_last_error(), "--on-long: unknown policy 7");
}
END_TEST

/* The optimiser and length options must be finite, as --lora-alpha, --beta and --sft-weight
 * are: an infinite --adam-eps trained nothing and returned 0, --epochs inf said "the run has
 * no steps". */
START_TEST(train_opts_refuse_infinite_values) {
    fdpo_train_opts o;
    fdpo_train_opts_default(&o);
    o.out = "o";
    ck_assert_int_eq(fdpo_train_opts_check(&o), 0);
    struct { const char *flag; double *v; } cases[] = {
        {"--lr", &o.lr}, {"--weight-decay", &o.weight_decay}, {"--adam-eps", &o.adam_eps},
        {"--grad-clip", &o.grad_clip}, {"--epochs", &o.epochs}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const double keep = *cases[i].v;
        *cases[i].v = INFINITY;
        o.steps = 0;   /* --epochs counts only then */
        ck_assert_int_eq(fdpo_train_opts_check(&o), -1);
        char want[64];
        snprintf(want, sizeof want, "%s: inf is not a finite number", cases[i].flag);
        ck_assert_str_eq(fdpo_last_error(), want);
        *cases[i].v = keep;
    }
    o.steps = 5; o.epochs = INFINITY;   /* unused with --steps: as before */
    ck_assert_int_eq(fdpo_train_opts_check(&o), 0);
}
END_TEST

START_TEST(decoder_needs_a_sequence_length_of_one_or_more) {
    fdpo_gpt2_config c = {.vocab_size = 257, .n_positions = 64, .n_embd = 4, .n_layer = 1, .n_head = 2,
                          .layer_norm_epsilon = 1e-5f};
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_null(fdpo_decoder_create(m, 1, 0));   /* it said "0 exceeds the model's n_positions 64" */
    ck_assert_str_eq(fdpo_last_error(), "decoder: sequence length must be >= 1 (got 0)");
    ck_assert_ptr_null(fdpo_decoder_create(m, 1, 65));
    ck_assert_str_eq(fdpo_last_error(), "decoder: sequence length 65 exceeds the model's n_positions 64");
    fdpo_decoder *d = fdpo_decoder_create(m, 1, 64);
    ck_assert_ptr_nonnull(d);
    fdpo_decoder_free(d);
    fdpo_gpt2_free(m);
}
END_TEST

/* Before its first backward a model has no gradients (gpt2.h: grads_memory is allocated
 * there, or by fdpo_gpt2_zero_grad): the optimizer's calls say so and change nothing (they
 * read the NULL gradients and died with SIGSEGV). An optimizer sized for another model is
 * refused too (its steps walked the model's tensors past its moment arrays). */
START_TEST(optimizer_calls_before_any_backward_are_errors) {
    fdpo_gpt2_config c = {.vocab_size = 11, .n_positions = 8, .n_embd = 4, .n_layer = 2, .n_head = 2,
                          .layer_norm_epsilon = 1e-5f};
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    ck_assert_ptr_nonnull(m);
    fdpo_gpt2_init(m, 5);
    ck_assert_ptr_null(m->grads_memory);
    const size_t n = m->n_params;
    float *p0 = malloc(n * sizeof *p0);
    memcpy(p0, m->params_memory, n * sizeof *p0);
    const char *no_grads = "the model has no gradients yet (run a backward pass, or fdpo_gpt2_zero_grad, first)";
    char want[256];
    fdpo_adamw o;
    ck_assert_int_eq(fdpo_adamw_init(&o, n, 0.9, 0.999, 1e-8, 0.01), 0);
    ck_assert_int_eq(fdpo_adamw_step(&o, m, 1e-3), -1);
    snprintf(want, sizeof want, "adamw step: %s", no_grads);
    ck_assert_str_eq(fdpo_last_error(), want);
    ck_assert_int_eq(fdpo_adamw_step_ex(&o, m, 1e-3, 0.5f, 1), -1);
    ck_assert_str_eq(fdpo_last_error(), want);
    ck_assert_uint_eq(o.t, 0);   /* no step counted */
    ck_assert_mem_eq(m->params_memory, p0, n * sizeof *p0);
    snprintf(want, sizeof want, "gradient norm: %s", no_grads);
    ck_assert(isnan(fdpo_grad_norm(m)));
    ck_assert_str_eq(fdpo_last_error(), want);
    fdpo_clear_error();
    ck_assert(isnan(fdpo_clip_grad_norm(m, 1.0)));
    ck_assert_str_eq(fdpo_last_error(), want);
    ck_assert_ptr_null(m->grads_memory);

    fdpo_gpt2_zero_grad(m);   /* zero gradients: norm 0, and a step moves only by weight decay */
    fdpo_adamw other;
    ck_assert_int_eq(fdpo_adamw_init(&other, n - 1, 0.9, 0.999, 1e-8, 0.01), 0);
    ck_assert_int_eq(fdpo_adamw_step(&other, m, 1e-3), -1);
    snprintf(want, sizeof want, "adamw step: the optimizer holds moments for %zu parameters, the model has %zu", n - 1, n);
    ck_assert_str_eq(fdpo_last_error(), want);
    ck_assert_uint_eq(other.t, 0);
    ck_assert_mem_eq(m->params_memory, p0, n * sizeof *p0);
    fdpo_adamw_free(&other);
    ck_assert_double_eq(fdpo_grad_norm(m), 0.0);
    ck_assert_double_eq(fdpo_clip_grad_norm(m, 1.0), 0.0);
    ck_assert_int_eq(fdpo_adamw_step(&o, m, 1e-3), 0);
    ck_assert_uint_eq(o.t, 1);
    for (size_t i = 0; i < n; i++) {   /* torch.optim.AdamW with g = 0: p *= 1 - lr * wd on decayed tensors */
        float want_p = is_decay(m, i) ? p0[i] * (float)(1.0 - 1e-3 * 0.01) : p0[i];
        ck_assert_float_eq(m->params_memory[i], want_p);
    }
    fdpo_adamw_free(&o);
    free(p0);
    fdpo_gpt2_free(m);
}
END_TEST

/* decode.h: the slots of one call are distinct. A slot named twice had both entries' rows
 * written to the same cache positions (rc 0, wrong logits) and its length grown past
 * max_len (then fdpo_decoder_copy_slot copied past the slot). Both decoders, GPT-2 and Llama. */
START_TEST(decoder_refuses_a_slot_named_twice_in_one_call) {
    const char *arches[] = {"gpt2", "llama"};
    for (size_t a = 0; a < 2; a++) {
        fdpo_train_opts o;
        fdpo_train_opts_default(&o);
        o.out = "unused"; o.arch = arches[a];
        o.n_layer = 1; o.n_head = 2; o.n_embd = 8; o.n_positions = 8; o.seq_len = 8;
        ck_assert_int_eq(fdpo_train_opts_check(&o), 0);
        fdpo_gpt2_config c = fdpo_train_opts_model_config(&o, 16);
        fdpo_gpt2 *m = fdpo_gpt2_create(&c);
        ck_assert_ptr_nonnull(m);
        fdpo_gpt2_init(m, 3);
        fdpo_decoder *d = fdpo_decoder_create(m, 2, 8);
        ck_assert_ptr_nonnull(d);
        float logits[3 * 16];
        size_t twice[] = {0, 0}, n_one[] = {1, 1, 1};
        int32_t tok[] = {1, 2, 3};
        ck_assert_int_eq(fdpo_decoder_forward(d, 2, twice, n_one, tok, logits, 1), -1);
        ck_assert_str_eq(fdpo_last_error(), "decoder: slot 0 given twice in one call (entries 1 and 2)");
        ck_assert_uint_eq(fdpo_decoder_len(d, 0), 0);
        /* the repeat need not be next to the first */
        size_t len7[] = {7};
        int32_t prefill[7] = {1, 2, 3, 4, 5, 6, 7};
        ck_assert_int_eq(fdpo_decoder_forward(d, 1, (size_t[]){1}, len7, prefill, logits, 0), 0);
        size_t apart[] = {1, 0, 1};
        ck_assert_int_eq(fdpo_decoder_forward(d, 3, apart, n_one, tok, logits, 1), -1);
        ck_assert_str_eq(fdpo_last_error(), "decoder: slot 1 given twice in one call (entries 1 and 3)");
        ck_assert_uint_eq(fdpo_decoder_len(d, 1), 7);   /* it had become 9 in an 8-token cache */
        ck_assert_uint_eq(fdpo_decoder_len(d, 0), 0);
        size_t distinct[] = {1, 0};
        ck_assert_int_eq(fdpo_decoder_forward(d, 2, distinct, n_one, tok, logits, 1), 0);
        ck_assert_uint_eq(fdpo_decoder_len(d, 1), 8);
        ck_assert_uint_eq(fdpo_decoder_len(d, 0), 1);
        fdpo_decoder_free(d);
        fdpo_gpt2_free(m);
    }
}
END_TEST

/* merge.h: one validation for the inputs. fdpo_path_check passes NULL (an option not given),
 * so a NULL models[] entry passed the check and fdpo_merge crashed in strlen(NULL). */
/* --threads's range is the library's (fdpo_threads_check), as the CLI's parser enforces it:
 * fdpo_train_opts_check took any count >= 0, and fdpo_trainer_open's (int) cast then ran
 * 4294967297 on 1 thread and 2^31 (INT_MIN) on the default count, without a word */
START_TEST(train_opts_threads_in_the_cli_range) {
    fdpo_train_opts o;
    fdpo_train_opts_default(&o);
    o.out = "o";
    const long ok[] = {0, 1, 4096}, bad[] = {4097, 2147483648L, 4294967297L, LONG_MAX, -1};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        o.threads = ok[i];
        ck_assert_int_eq(fdpo_train_opts_check(&o), 0);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o.threads = bad[i];
        ck_assert_int_eq(fdpo_train_opts_check(&o), -1);
        char want[160];
        snprintf(want, sizeof want, "--threads: %ld is not in [0, 4096] (0: OpenMP's default, OMP_NUM_THREADS or all cores)", bad[i]);
        ck_assert_str_eq(fdpo_last_error(), want);
    }
}
END_TEST

/* a non-finite --weight is named by its value and its position: "value 1" read as the weight 1 */
START_TEST(merge_check_names_the_non_finite_weight) {
    const char *models[] = {"a", "b"};
    double w[2] = {INFINITY, 1};
    fdpo_merge_opts mo = {.models = models, .n_models = 2, .weights = w};
    ck_assert_int_eq(fdpo_merge_opts_check(&mo), -1);
    ck_assert_str_eq(fdpo_last_error(), "--weight: inf (weight 1 of 2) is not a finite number");
    w[0] = 1; w[1] = NAN;
    ck_assert_int_eq(fdpo_merge_opts_check(&mo), -1);
    ck_assert_str_eq(fdpo_last_error(), "--weight: nan (weight 2 of 2) is not a finite number");
    w[1] = -0.5;
    ck_assert_int_eq(fdpo_merge_opts_check(&mo), 0);
}
END_TEST

START_TEST(merge_check_refuses_a_null_model) {
    const char *models[] = {"a", NULL, "c"};
    fdpo_merge_opts mo = {.models = models, .n_models = 3};
    ck_assert_int_eq(fdpo_merge_opts_check(&mo), -1);
    ck_assert_str_eq(fdpo_last_error(), "--model: checkpoint 2 of 3 is NULL (no directory given)");
    fdpo_clear_error();
    ck_assert_ptr_null(fdpo_merge(&mo));   /* the same check, not a load of NULL */
    ck_assert_str_eq(fdpo_last_error(), "--model: checkpoint 2 of 3 is NULL (no directory given)");
    fdpo_merge_opts none = {.models = NULL, .n_models = 2};
    ck_assert_int_eq(fdpo_merge_opts_check(&none), -1);
    ck_assert_str_eq(fdpo_last_error(), "--model: 2 checkpoints announced (n_models) but no list given");
    models[1] = "b";
    ck_assert_int_eq(fdpo_merge_opts_check(&mo), 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("train");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, schedule_closed_forms);
    tcase_add_test(tc, adamw_two_steps_closed_form);
    tcase_add_test(tc, online_opts_are_checked_by_the_library);
    tcase_add_test(tc, trainer_defaults_are_the_library_s_and_pass_its_checks);
    tcase_add_test(tc, bf16_rounding_against_reference);
    tcase_add_test(tc, adamw_writes_the_bf16_weight_copy);
    tcase_add_test(tc, adamw_scaled_step_closed_form);
    tcase_add_test(tc, clip_grad_norm_scales_above_max_only);
    tcase_add_test(tc, data_order_epochs);
    tcase_add_test(tc, data_order_step_never_repeats_an_item);
    tcase_add_test(tc, step_items_capped_at_the_data);
    tcase_add_test(tc, utf8_first_invalid_offsets);
    tcase_add_test(tc, data_split_counts);
    tcase_add_test(tc, text_windows_cover_every_token);
    tcase_add_test(tc, sft_weights_and_truncation);
    tcase_add_test(tc, sft_messages_template);
    tcase_add_test(tc, state_and_checkpoint_round_trip);
    tcase_add_test(tc, settings_read_old_val_fraction);
    tcase_add_test(tc, metrics_writer_and_resume_truncation);
    tcase_add_test(tc, pref_split_is_disjoint_and_complete);
    tcase_add_test(tc, llama_random_init_config);
    tcase_add_test(tc, config_hash_follows_config_equal);
    tcase_add_test(tc, checkpoint_info_and_score_run_from_the_library);
    tcase_add_test(tc, option_checks_refuse_an_empty_path);
    tcase_add_test(tc, sacpo_check_takes_out_not_the_template_s);
    tcase_add_test(tc, option_checks_refuse_unknown_enum_values);
    tcase_add_test(tc, train_opts_refuse_infinite_values);
    tcase_add_test(tc, decoder_needs_a_sequence_length_of_one_or_more);
    tcase_add_test(tc, optimizer_calls_before_any_backward_are_errors);
    tcase_add_test(tc, decoder_refuses_a_slot_named_twice_in_one_call);
    tcase_add_test(tc, merge_check_refuses_a_null_model);
    tcase_add_test(tc, train_opts_threads_in_the_cli_range);
    tcase_add_test(tc, merge_check_names_the_non_finite_weight);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
