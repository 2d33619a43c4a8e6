/* fdpo-harness: a test-only binary that the Python tests drive (model parity, gradients,
 * objectives). Errors print "fdpo-harness SUB: message" and exit 1. */
#include <stdio.h>
#include <string.h>
#include "fdpo/core.h"
#include "cli/omp_spin.h"
#include "harness.h"

const char *harness_json_number(char *buf, const char *fmt, double v, int known) {
    if (!known) return "null";
    snprintf(buf, 32, fmt, v);
    return buf;
}

/* one declaration + one table row per subcommand (keep alphabetical) */
int h_data(int argc, char **argv);
int h_decode_matmul(int argc, char **argv);
int h_decode_matmul_check(int argc, char **argv);
int h_dpo_bench(int argc, char **argv);
int h_dpo_data(int argc, char **argv);
int h_dpo_grad(int argc, char **argv);
int h_dist(int argc, char **argv);
int h_eval(int argc, char **argv);
int h_model(int argc, char **argv);
int h_isa_peaks(int argc, char **argv);
int h_gemm_check(int argc, char **argv);
int h_kto_grad(int argc, char **argv);
int h_objectives(int argc, char **argv);
int h_lab_defaults(int argc, char **argv);
int h_opts_defaults(int argc, char **argv);
int h_rm_grad(int argc, char **argv);
int h_rl(int argc, char **argv);
int h_tokenizer(int argc, char **argv);
int h_triad(int argc, char **argv);

static const struct { const char *name; harness_fn fn; } SUBS[] = {
    {"data-chat-pref", h_data},
    {"data-chat-prompts", h_data},
    {"data-chat-sft", h_data},
    {"data-prompts", h_data},
    {"data-sft", h_data},
    {"decode-matmul", h_decode_matmul},
    {"decode-matmul-check", h_decode_matmul_check},
    {"dpo-bench", h_dpo_bench},
    {"dpo-data", h_dpo_data},
    {"dist-allreduce", h_dist},
    {"dpo-grad", h_dpo_grad},
    {"eval-calibration", h_eval},
    {"eval-logits", h_eval},
    {"eval-reward", h_eval},
    {"eval-run", h_eval},
    {"eval-sample", h_eval},
    {"eval-sampler", h_eval},
    {"eval-sample-exp", h_eval},
    {"eval-sample-rows", h_eval},
    {"eval-score", h_eval},
    {"eval-text", h_eval},
    {"gemm-check", h_gemm_check},
    {"kto-grad", h_kto_grad},
    {"model-bench", h_model},
    {"model-fb", h_model},
    {"model-init", h_model},
    {"model-load", h_model},
    {"model-peaks", h_model},
    {"isa-peaks", h_isa_peaks},
    {"model-ops", h_model},
    {"attention-check", h_model},
    {"kernel-expf", h_model},
    {"objectives", h_objectives},
    {"lab-defaults", h_lab_defaults},
    {"opts-defaults", h_opts_defaults},
    {"rm-grad", h_rm_grad},
    {"rl-grad", h_rl},
    {"rl-logp", h_rl},
    {"tok-info", h_tokenizer},
    {"tok-save", h_tokenizer},
    {"tok-threads", h_tokenizer},
    {"triad", h_triad},
    {NULL, NULL},
};

int main(int argc, char **argv) {
    fdpo_omp_spin_reexec(argv); /* libgomp's spin before it sleeps: see cli/omp_spin.h */
    if (argc >= 2) {
        for (size_t i = 0; SUBS[i].name; i++) {
            if (!strcmp(argv[1], SUBS[i].name)) {
                int rc = SUBS[i].fn(argc - 1, argv + 1);
                if (rc) { fprintf(stderr, "fdpo-harness %s: %s\n", argv[1], fdpo_last_error()); return 1; }
                return 0;
            }
        }
    }
    fprintf(stderr, "usage: fdpo-harness SUBCOMMAND ...; subcommands:");
    for (size_t i = 0; SUBS[i].name; i++) fprintf(stderr, " %s", SUBS[i].name);
    fprintf(stderr, "\n");
    return 2;
}
