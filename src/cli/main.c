/* The fdpo command: a thin dispatcher over the library. */
#include <stdio.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/term.h"
#include "fdpo/core.h"

typedef struct { const char *name; int (*fn)(int, char **); const char *summary; } command;

static const command COMMANDS[] = {
    {"pretrain", cmd_pretrain, "train a GPT-2-family model on plain text (next-token loss)"},
    {"sft",      cmd_sft,      "supervised fine-tuning on JSONL prompt/completion or text"},
    {"dpo",      cmd_dpo,      "f-DPO preference optimisation (rkl, fkl, js, alpha:A; sigmoid, ipo, ...)"},
    {"online",   cmd_online,   "online / iterative f-DPO: sample, score, pair, f-DPO, per round"},
    {"rl",       cmd_rl,       "RLHF with an f-divergence penalty: RLOO / GRPO on the shaped reward r - beta f'(u)"},
    {"generate", cmd_generate, "sample completions for prompts (KV cache, top-k/top-p)"},
    {"eval",     cmd_eval,     "reward, KL, entropy, diversity and calibration of policies"},
    {"score",    cmd_score,    "reward and log-probs of given completions"},
    {"pairs",    cmd_pairs,    "scored samples -> preference pairs with Bradley-Terry labels"},
    {"lab",      cmd_lab,      "exact f-regularised alignment on finite problems"},
    {"report",   cmd_report,   "self-contained HTML report of run directories"},
    {"tokenize", cmd_tokenize, "text <-> token ids with a checkpoint's tokenizer"},
    {"info",     cmd_info,     "print a checkpoint's config and parameter count"},
};
#define N_COMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f) {
    fprintf(f, "fdpo: align language models under f-divergence constraints, on CPU\n\n"
               "usage: fdpo COMMAND [flags]   (fdpo COMMAND --help lists every flag)\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(argv[1], COMMANDS[i].name) == 0) {
            term_install(COMMANDS[i].name);
            int rc = COMMANDS[i].fn(argc - 1, argv + 1);
            term_finish();
            if (rc != 0) { fprintf(stderr, "fdpo %s: %s\n", argv[1], fdpo_last_error()); return 1; }
            return 0;
        }
    }
    fprintf(stderr, "fdpo: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
