/* The fdpo command: a thin dispatcher over the library. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/omp_spin.h"
#include "cli/term.h"
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/gpt2.h"
#include "interrupts.h"

#define FDPO_VERSION "0.2.0"

/* models: the command makes or loads a model, so the model code's environment knobs
 * (FDPO_LMHEAD_*) are checked before it starts (fdpo_model_env_check): a bad value is the
 * environment's error, not that of whichever checkpoint happened to be loaded first.
 * alone: the command has nothing to split over MPI ranks, so under mpirun rank 0 alone runs
 * it and the others wait for it and end with its status: the job is one process's run (every
 * rank running it whole printed its output once per rank, and tokenizer train's ranks raced
 * for --out's lock, every one failing or writing over the others). */
/* alone GATED: every rank runs the command up to cli_alone_gate, where the ranks vote on their
 * flags and compare what they name (tokenizer train's --out: a rank given another one was
 * ignored, rank 0 writing its own); then rank 0 goes on alone as above. */
enum { GATED = 2 };
typedef struct { const char *name; int (*fn)(int, char **); const char *summary; int models, alone; } command;

static const command COMMANDS[] = {
    {"pretrain", cmd_pretrain, "train a GPT-2- or Llama-family model on plain text (next-token loss)", 1, 0},
    {"sft",      cmd_sft,      "supervised fine-tuning on JSONL prompt/completion or text", 1, 0},
    {"dpo",      cmd_dpo,      "f-DPO preference optimisation (rkl, fkl, js, alpha:A; sigmoid, ipo, ...)", 1, 0},
    {"rm",       cmd_rm,       "Bradley-Terry reward model (GPT2/LlamaForSequenceClassification) on preference pairs", 1, 0},
    {"kto",      cmd_kto,      "KTO on unpaired desirable/undesirable completions, with an f-divergence score", 1, 0},
    {"online",   cmd_online,   "online / iterative f-DPO: sample, score, pair, f-DPO, per round", 1, 0},
    {"rl",       cmd_rl,       "RLHF with an f-divergence penalty: RLOO / GRPO on the shaped reward r - beta f'(u)", 1, 0},
    {"generate", cmd_generate, "sample completions for prompts (KV cache, top-k/top-p)", 1, 0},
    {"eval",     cmd_eval,     "reward, KL, entropy, diversity and calibration of policies", 1, 0},
    {"score",    cmd_score,    "reward and log-probs of given completions", 1, 0},
    {"pairs",    cmd_pairs,    "scored samples -> preference pairs with Bradley-Terry labels", 1, 1},
    {"sacpo",    cmd_sacpo,    "safety-constrained alignment, stepwise (SACPO) with P-SACPO merges", 1, 0},
    {"merge",    cmd_merge,    "average checkpoints or add task vectors (model merging, P-SACPO)", 1, 0},
    {"lab",      cmd_lab,      "exact f-regularised alignment on finite problems", 0, 1},
    {"report",   cmd_report,   "self-contained HTML report of run directories", 0, 1},
    {"tokenize", cmd_tokenize, "text <-> token ids with a checkpoint's tokenizer", 0, 1},
    {"tokenizer", cmd_tokenizer, "train a byte-level BPE tokenizer (GPT-2 pre-tokenisation) on text", 0, GATED},
    {"info",     cmd_info,     "print a checkpoint's config and parameter count", 0, 1},
};
#define N_COMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f) {
    fprintf(f, "fdpo: align language models under f-divergence constraints, on CPU\n\n"
               "usage: fdpo COMMAND [flags]   (fdpo COMMAND --help lists every flag)\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(f, "\nparallel: %s\n", fdpo_dist_compiled()
            ? "MPI built in: mpirun -np N fdpo COMMAND ... runs data-parallel (docs/scaling.md)"
            : "built without MPI (install libopenmpi-dev and rebuild for mpirun -np N)");
}

/* --help and --version print to stdout and say so when it failed (a full disk, a closed
 * pipe): --version exited 0 having written nothing */
static int stdout_flushed(void) {
    if (fflush(stdout) != 0 || ferror(stdout)) { fprintf(stderr, "fdpo: <stdout>: write error\n"); return 1; }
    return 0;
}

static int version(void) {
    printf("fdpo %s\nMPI: %s\n", FDPO_VERSION, fdpo_dist_compiled() ? "built in (Open MPI)" : "not built");
    return stdout_flushed();
}

static int asks_for_help(int argc, char **argv) {
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
    return 0;
}

/* Rank 0's end of the other ranks' wait for a command it ran alone (main): its status. */
static void release_waiting(int rc) {
    if (fdpo_dist_barrier_idle() == 0) (void)fdpo_dist_all_ok(rc);
}

/* a GATED command's cli_alone_gate: 0 not reached (or one process), 1 passed, -1 failed on
 * every rank (each knows: nobody waits in a collective) */
static int g_gate;

int cli_alone_gate(int rc, const char *out_flag, const char *out, const char *what, unsigned long long hash) {
    if (fdpo_dist_size() < 2) return rc ? -1 : 0;
    /* a rank whose flags failed: every rank fails with its message (none waits for it) */
    if (fdpo_dist_all_ok(rc) || (out_flag && fdpo_dist_check_same_path(out_flag, out)) ||
        fdpo_dist_check_agree(what, (uint64_t)hash)) {
        g_gate = -1;
        return -1;
    }
    g_gate = 1;
    if (fdpo_dist_is_root()) return 0;
    return fdpo_dist_barrier_idle() || fdpo_dist_all_ok(0) ? -1 : 1;   /* rank 0's status */
}

int main(int argc, char **argv) {
    fdpo_omp_spin_reexec(argv); /* libgomp's spin before it sleeps: see cli/omp_spin.h */
    interrupts_start();         /* before any thread: see cli/interrupts.h */
    /* errors are one line and exit 1 (docs/cli.md); the usage is --help's */
    if (argc < 2) { fprintf(stderr, "fdpo: a command is required (fdpo --help lists them)\n"); return 1; }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return stdout_flushed();
    }
    if (!strcmp(argv[1], "--version")) return version();
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(argv[1], COMMANDS[i].name) == 0) {
            int rc = fdpo_dist_init(&argc, &argv);
            /* rank 0 alone prints (results, --help): the other ranks' stdout was each a copy */
            if (rc == 0 && !fdpo_dist_is_root() && !freopen("/dev/null", "w", stdout))
                rc = fdpo_error("cannot silence stdout on rank %d", fdpo_dist_rank());
            const int gated = COMMANDS[i].alone == GATED && fdpo_dist_size() > 1;
            const int alone = COMMANDS[i].alone && !gated && fdpo_dist_size() > 1;
            int waits = rc == 0 && alone && !fdpo_dist_is_root();
            term_install(COMMANDS[i].name);
            if (waits) rc = fdpo_dist_barrier_idle() || fdpo_dist_all_ok(0) ? -1 : 0;   /* rank 0's status */
            /* an item -h or --help may be a flag's value ("--stop -h"), which only the command's
             * flag table tells: flags_parse runs the check once it has found no --help (the
             * check was skipped, and the loader's copy blamed --model DIR:, hunt of wave 46) */
            if (rc == 0 && !waits && COMMANDS[i].models) {
                if (asks_for_help(argc, argv)) flags_defer_check(fdpo_model_env_check);
                else rc = fdpo_model_env_check();
            }
            if (rc == 0 && !waits) rc = COMMANDS[i].fn(argc - 1, argv + 1);
            flags_defer_check(NULL);
            /* a GATED command past its gate: rank 0 ran it alone, the others waited for it */
            const int alone_root = (alone && fdpo_dist_is_root()) || (gated && g_gate == 1 && fdpo_dist_is_root());
            if (gated && g_gate == 1 && !fdpo_dist_is_root()) waits = 1;
            /* what a command printed (generate/score --out -, eval's table, info) must have
             * reached stdout: a full disk or a closed pipe lost it with exit 0 */
            errno = 0;
            if (rc == 0 && (fflush(stdout) != 0 || ferror(stdout)))
                rc = fdpo_error("<stdout>: write error: %s", errno ? strerror(errno) : "the stream is in error");
            term_finish();
            if (rc != 0) {
                if (waits) { fdpo_dist_finalize(); return 1; }   /* rank 0 failed: it said why (before it let us go) */
                /* a check that names a flag whose value a --config file set: say where */
                /* fdpo_last_error holds at most PATH_MAX + 2048 bytes; the flag and the config
                 * file's path and line are added */
                char buf[2 * PATH_MAX + 2304];
                const char *msg = flags_error_origin(fdpo_last_error(), buf, sizeof buf);
                if (gated && g_gate == -1) {
                    /* every rank failed at the gate, knowing why: said once, by rank 0 */
                    if (fdpo_dist_is_root()) fprintf(stderr, "fdpo %s: %s\n", argv[1], msg);
                    fflush(stderr);
                    fdpo_dist_finalize();
                    return 1;
                }
                if (alone_root) {
                    /* one process's run: its message as one process says it, then the waiting
                     * ranks go with its status and every rank ends normally (an abort's banner
                     * followed the message) */
                    fprintf(stderr, "fdpo %s: %s\n", argv[1], msg);
                    fflush(stderr);
                    release_waiting(rc);
                    fdpo_dist_finalize();
                    return 1;
                }
                if (fdpo_dist_size() > 1) {
                    /* one rank failed: say which, then end every rank (none waits in a collective) */
                    fprintf(stderr, "fdpo %s [rank %d/%d]: %s\n", argv[1], fdpo_dist_rank(), fdpo_dist_size(), msg);
                    fflush(stderr);
                    fdpo_dist_abort(1);
                }
                fprintf(stderr, "fdpo %s: %s\n", argv[1], msg);
                return 1;
            }
            if (alone_root) release_waiting(0);
            fdpo_dist_finalize();
            return 0;
        }
    }
    fprintf(stderr, "fdpo: unknown command '%s' (fdpo --help lists the commands)\n", argv[1]);
    return 1;
}
