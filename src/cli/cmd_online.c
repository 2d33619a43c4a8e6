/* fdpo online: online / iterative f-DPO rounds (a thin layer over fdpo_online_run). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/train_flags.h"
#include "fdpo/core.h"
#include "fdpo/online.h"

/* Shared training flags that do not apply: the model is --model (and its chat template), lengths from the samples,
 * every round trains on all its pairs; --resume means "after the last complete round". */
static const char *const NOT_FOR_ONLINE[] = {"model", "tokenizer", "chat-template", "n-layer", "n-head", "n-embd", "n-positions",
                                             "arch", "n-kv-head", "intermediate-size", "rope-theta", "tie-word-embeddings",
                                             "seq-len", "val-fraction", "overwrite", "stop-at", NULL};

int cmd_online(int argc, char **argv) {
    static const char usage[] =
        "fdpo online --model CKPT --data PROMPTS --reward SPEC --out DIR [--divergence D] [--beta B] "
        "[--rounds R] [--prompts-per-round P] [--n N] [--ref-update never|round] [flags]";
    fdpo_online_opts o;
    memset(&o, 0, sizeof o);
    fdpo_flag flags[TRAIN_FLAGS_MAX + 24];
    size_t n = 0;
    const char *divergence, *loss, *ref_update, *stop = NULL, *pairs_mode, *mode;
    double beta, temperature, top_p, timeout;
    long top_k, max_new;
    const fdpo_flag own[] = {
        {"model", FLAG_STR, &o.model, NULL, "initial policy checkpoint (required); also the reference unless --ref", 0},
        {"ref", FLAG_STR, &o.ref, NULL, "reference checkpoint (default: --model)", 0},
        {"data", FLAG_STR, &o.prompts, NULL, "prompts: JSONL {\"prompt\"} or text, one per line (required)", 0},
        {"reward", FLAG_STR, &o.reward, NULL, "reward of a completion: afinn, lexicon:FILE, length, length:words, cmd:PROG, rm:DIR (required)", 0},
        {"lexicon", FLAG_STR, &o.reward_opts.lexicon, NULL, "AFINN lexicon file for --reward afinn", 0},
        {"reward-timeout", FLAG_FLOAT, &timeout, "60", "seconds a cmd: reward may take", 0},
        {"divergence", FLAG_STR, &divergence, "rkl", "f-divergence: rkl, fkl, js, alpha:A", 0},
        {"loss", FLAG_STR, &loss, "sigmoid", "preference loss: sigmoid, robust, hinge, ipo", 0},
        {"beta", FLAG_FLOAT, &beta, "0.1", "strength of the divergence constraint (> 0)", 0},
        {"rounds", FLAG_INT, &o.rounds, "3", "sample -> pair -> f-DPO rounds", 0},
        {"prompts-per-round", FLAG_INT, &o.prompts_per_round, "16", "prompts sampled each round (cycling through the file)", 0},
        {"n", FLAG_INT, &o.n, "4", "completions sampled per prompt", 0},
        {"pairs", FLAG_STR, &pairs_mode, "best-worst", "pairs per prompt: best-worst (the best and the worst completion) or all-bt (all disjoint pairs, Bradley-Terry-sampled labels, as fdpo pairs)", 0},
        {"bt-scale", FLAG_FLOAT, &o.bt_scale, "1", "--pairs all-bt: P(a chosen) = sigmoid((r_a - r_b) / scale)", 0},
        {"mode", FLAG_STR, &mode, "rounds", "rounds (sample -> pair -> f-DPO run per round) or step (fresh samples every optimizer step, TRL OnlineDPOTrainer; --steps steps)", 0},
        {"ref-update", FLAG_STR, &ref_update, "never", "never: fixed reference (online DPO); round: the previous round's policy (iterative DPO)", 0},
        {"temperature", FLAG_FLOAT, &temperature, "1", "sampling temperature", 0},
        {"top-k", FLAG_INT, &top_k, "0", "sample among the k most probable tokens (0 = off)", 0},
        {"top-p", FLAG_FLOAT, &top_p, "1", "nucleus mass in (0, 1] (1 = off)", 0},
        {"max-new-tokens", FLAG_INT, &max_new, "32", "most tokens per completion", 0},
        {"stop", FLAG_STR, &stop, NULL, "stop string", 0},
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) flags[n++] = own[i];
    n = train_flags_add_except(flags, n, &o.dpo.train, NOT_FOR_ONLINE);
    train_flags_set_help(flags, n, "out", "run directory: round-K/ checkpoints, round-K.pairs.jsonl, metrics.jsonl (required)");
    train_flags_set_help(flags, n, "resume", "continue after the last complete round in --out");
    train_flags_set_help(flags, n, "batch-size", "pairs per micro-batch of each round's f-DPO");
    train_flags_set_help(flags, n, "epochs", "passes over each round's pairs (when --steps is 0)");
    o.dpo.train.n_layer = o.dpo.train.n_head = o.dpo.train.n_embd = o.dpo.train.n_positions = o.dpo.train.seq_len = 1;
    train_flags_set_default(flags, n, "lr", "1e-4");
    train_flags_set_default(flags, n, "schedule", "constant");
    train_flags_set_default(flags, n, "eval-every", "0");
    train_flags_set_default(flags, n, "epochs", "1");
    int n_pos = 0;
    char **pos = NULL;
    int rc = flags_parse("online", usage, flags, n, argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    rc = -1;
    if (n_pos > 0) { fdpo_error("unexpected argument '%s'", pos[0]); goto done; }
    /* the run directory's --resume is per round (fdpo_online_run), not a trainer resume */
    o.resume = o.dpo.train.resume;
    o.dpo.train.resume = 0;
    if (train_flags_finish(flags, n, &o.dpo.train)) goto done;
    o.out = o.dpo.train.out;
    if (!strcmp(ref_update, "never")) o.ref_update_round = 0;
    else if (!strcmp(ref_update, "round")) o.ref_update_round = 1;
    else { fdpo_error("--ref-update: '%s' is not never or round", ref_update); goto done; }
    if (!strcmp(pairs_mode, "best-worst")) o.pairs_bt = 0;
    else if (!strcmp(pairs_mode, "all-bt")) o.pairs_bt = 1;
    else { fdpo_error("--pairs: '%s' is not best-worst or all-bt", pairs_mode); goto done; }
    if (fdpo_divergence_parse(divergence, &o.dpo.dpo.loss.div)) { fdpo_error_context("--divergence"); goto done; }
    if (fdpo_loss_parse(loss, &o.dpo.dpo.loss.kind)) goto done;
    if (o.dpo.dpo.loss.kind == FDPO_LOSS_SIMPO) { fdpo_error("--loss simpo: online f-DPO needs a reference"); goto done; }
    o.dpo.dpo.loss.beta = beta;
    if (fdpo_pref_loss_check(&o.dpo.dpo.loss)) goto done;
    o.dpo.dpo.layout = FDPO_LAYOUT_SHARED;
    o.dpo.eval_fraction = 0;
    o.dpo.pref.on_long = FDPO_PREF_LONG_TRUNCATE;
    o.dpo.pref.on_bad = FDPO_PREF_SKIP;
    o.dpo.train.quiet = 1;
    o.reward_opts.timeout_s = timeout;
    if (top_k < 0) { fdpo_error("--top-k: must be >= 0 (got %ld)", top_k); goto done; }
    if (max_new <= 0) { fdpo_error("--max-new-tokens: must be > 0 (got %ld)", max_new); goto done; }
    o.sample = (fdpo_sample_config){temperature, (size_t)top_k, top_p, (size_t)max_new, stop, (uint64_t)o.dpo.train.seed, 8};
    fdpo_set_threads((int)o.dpo.train.threads);
    if (!strcmp(mode, "rounds")) rc = fdpo_online_run(&o);
    else if (!strcmp(mode, "step")) {
        if (flags_was_set(flags, n, "rounds") || o.ref_update_round) {
            fdpo_error("--mode step: --rounds and --ref-update round belong to --mode rounds");
            goto done;
        }
        rc = fdpo_online_step_run(&o);
    } else fdpo_error("--mode: '%s' is not rounds or step", mode);
done:
    free(pos);
    return rc;
}
