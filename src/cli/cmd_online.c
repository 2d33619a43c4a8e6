/* fdpo online: online / iterative f-DPO rounds (a thin layer over fdpo_online_run). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli/commands.h"
#include "cli/online_flags.h"
#include "cli/train_flags.h"
#include "fdpo/core.h"
#include "fdpo/online.h"
#include "interrupts.h"

/* Shared training flags that do not apply: the model is --model, lengths from the samples,
 * every round trains on all its pairs; the chat template is the checkpoint's. --resume means "after the last complete round" in
 * rounds mode and a trainer resume in step mode (--stop-at, --overwrite: step mode only). */
static const char *const NOT_FOR_ONLINE[] = {"model", "tokenizer", "chat-template", "n-layer", "n-head", "n-embd", "n-positions",
                                             "arch", "n-kv-head", "intermediate-size", "rope-theta", "tie-word-embeddings",
                                             "seq-len", "eval-fraction", "eval-every", NULL};   /* no held-out set: nothing to eval */

/* rounds mode's line when a signal ends fdpo, by what OUT holds then: with no complete round
 * there is nothing for --resume (it refuses the directory), so the line says so */
static struct { char kept[PATH_MAX + 256], none[PATH_MAX + 256], round0[PATH_MAX + 16]; } g_notes;
static const char *online_end_note(void) { return access(g_notes.round0, F_OK) == 0 ? g_notes.kept : g_notes.none; }

int cmd_online(int argc, char **argv) {
    static const char usage[] =
        "fdpo online --model CKPT --data PROMPTS --reward SPEC --out DIR [--divergence D] [--beta B] "
        "[--rounds R] [--prompts-per-round P] [--n N] [--ref-update never|round] [flags]";
    fdpo_online_opts o;
    fdpo_online_opts_default(&o);   /* the flags below then set what they name */
    fdpo_flag flags[TRAIN_FLAGS_MAX + ONLINE_FLAGS_N + 8];
    size_t n = 0;
    const char *divergence, *loss, *mode;
    double beta, smoothing;
    online_flags of;
    const fdpo_flag own[] = {
        {"model", FLAG_STR, &o.model, NULL, "initial policy checkpoint (required); also the reference unless --ref", 0},
        {"ref", FLAG_STR, &o.ref, NULL, "reference checkpoint (default: --model)", 0},
        {"divergence", FLAG_STR, &divergence, "rkl", "f-divergence: rkl, fkl, js, alpha:A", 0},
        {"loss", FLAG_STR, &loss, "sigmoid", "preference loss: sigmoid, robust, hinge, ipo", 0},
        {"beta", FLAG_FLOAT, &beta, "0.1", "strength of the divergence constraint (> 0)", 0},
        /* robust's one parameter, as fdpo dpo has it (without it robust was sigmoid) */
        {"label-smoothing", FLAG_FLOAT, &smoothing, "0", "label noise e in [0, 0.5) for sigmoid (cDPO) and robust", 0},
        {"mode", FLAG_STR, &mode, "rounds", "rounds (sample -> pair -> f-DPO run per round) or step (fresh samples every optimizer step, TRL OnlineDPOTrainer; --steps steps)", 0},
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) flags[n++] = own[i];
    n = online_flags_add(&of, &o, flags, n);
    n = train_flags_add_except(flags, n, &o.dpo.train, NOT_FOR_ONLINE);
    train_flags_set_help(flags, n, "out", "run directory: round-K/ checkpoints, round-K.pairs.jsonl, metrics.jsonl (required)");
    train_flags_set_help(flags, n, "resume", "rounds: continue after the last complete round in --out; step: continue the saved run bit-exactly");
    train_flags_set_help(flags, n, "overwrite", "--mode step: start a fresh run even if --out holds one (rounds mode refuses it)");
    train_flags_set_help(flags, n, "stop-at", "--mode step: save and stop after this step, as if interrupted (rounds mode refuses it)");
    train_flags_set_help(flags, n, "save-every", "--mode step: checkpoint every N steps (rounds mode saves every round, and refuses it)");
    train_flags_set_help(flags, n, "batch-size", "pairs per micro-batch of each round's f-DPO");
    train_flags_set_help(flags, n, "epochs", "passes over each round's pairs (when --steps is 0)");
    train_flags_set_help(flags, n, "seed", "seed for sampling, --pairing all-bt labels, the order of each round's pairs and LoRA "
                                           "adapters (init, dropout)");
    train_flags_set_default(flags, n, "lr", "1e-4");
    train_flags_set_default(flags, n, "schedule", "constant");
    train_flags_set_default(flags, n, "epochs", "1");
    int n_pos = 0;
    char **pos = NULL;
    int rc = flags_parse("online", usage, flags, n, argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    rc = -1;
    if (n_pos > 0) { fdpo_error("unexpected argument '%s'", pos[0]); goto done; }
    /* rounds mode resumes per round (fdpo_online_run), not as a trainer; a step-mode run
     * directory holds training_state.json, whose saved flags (--mode among them) then apply */
    o.resume = o.dpo.train.resume;
    if (o.resume && o.dpo.train.out) {
        char *state = fdpo_path_join(o.dpo.train.out, "training_state.json");
        if (!fdpo_file_exists(state)) o.dpo.train.resume = 0;
        free(state);
    }
    /* a step-mode run: --mode step given, or a resumed directory with a trainer's state (its
     * saved --mode applies only inside train_flags_finish, below) */
    if (!strcmp(mode, "step") || o.dpo.train.resume) {
        /* each step is one f-DPO step on the pairs of --prompts-per-round fresh prompts: the
         * rounds' f-DPO batching would be ignored (named before the shared checks: --epochs
         * with --steps is also refused there, less to the point) */
        static const char *const ROUNDS_ONLY[] = {"batch-size", "grad-accum", "epochs", "shuffle"};
        const char *given = flags_first_set(flags, n, FLAGS_NAMES(ROUNDS_ONLY));
        if (given) {
            fdpo_error("--%s: --mode rounds only (a step of --mode step is one f-DPO step on the pairs of "
                       "--prompts-per-round prompts)", given);
            goto done;
        }
    }
    if (train_flags_finish(flags, n, &o.dpo.train, "online-step")) goto done;
    o.out = o.dpo.train.out;
    if (online_flags_finish(&of, flags, n, &o, (uint64_t)o.dpo.train.seed, &o.reward, 1)) goto done;
    if (fdpo_divergence_parse(divergence, &o.dpo.dpo.loss.div)) { fdpo_error_context("--divergence"); goto done; }
    if (fdpo_loss_parse(loss, &o.dpo.dpo.loss.kind)) goto done;
    o.dpo.dpo.loss.beta = beta;   /* the loss (simpo, beta, divergence, smoothing): checked by the library's run */
    o.dpo.dpo.loss.label_smoothing = smoothing;
    fdpo_online_round_dpo_opts(&o.dpo);
    fdpo_set_threads((int)o.dpo.train.threads);
    if (!strcmp(mode, "rounds")) {
        if (o.dpo.train.resume) { fdpo_error("--resume: %s holds a --mode step run (pass --mode step)", o.out); goto done; }
        /* a signal kills a running reward program (the round then fails, "interrupted") or
         * ends fdpo saying what is kept; either way the complete rounds stay */
        snprintf(g_notes.kept, sizeof g_notes.kept, "fdpo online: interrupted: the complete rounds in %s are kept (the "
                 "same command with --resume continues after the last one)", o.out);
        snprintf(g_notes.none, sizeof g_notes.none, "fdpo online: interrupted before round 0 completed: %s holds no round "
                 "to resume (the same command without --resume starts the run again)", o.out);
        snprintf(g_notes.round0, sizeof g_notes.round0, "%s/round-0", o.out);
        interrupts_set_end_note(online_end_note);
        interrupts_set(INTERRUPT_KILL_REWARD);
        rc = fdpo_online_run(&o);
        interrupts_set_end_note(NULL);   /* the run is over: a signal now ends fdpo without it */
    }
    else if (!strcmp(mode, "step")) {
        if (flags_was_set(flags, n, "rounds") || o.ref_update_round) {
            fdpo_error("--mode step: --rounds and --ref-update round belong to --mode rounds");
            goto done;
        }
        interrupts_set(INTERRUPT_STOP_TRAINER);
        rc = fdpo_online_step_run(&o);
    } else fdpo_error("--mode: '%s' is not rounds or step", mode);
done:
    free(pos);
    return rc;
}
