/* Every fdpo subcommand: int cmd_NAME(int argc, char **argv), argv[0] = "NAME".
 * Return 0 on success; on failure record fdpo_error() and return non-zero (main prints it). */
#ifndef FDPO_CLI_COMMANDS_H
#define FDPO_CLI_COMMANDS_H
int cmd_pretrain(int argc, char **argv);
int cmd_sft(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_dpo(int argc, char **argv);
int cmd_online(int argc, char **argv);
int cmd_rl(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_lab(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_pairs(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_sacpo(int argc, char **argv);
int cmd_tokenizer(int argc, char **argv);
int cmd_rm(int argc, char **argv);
int cmd_kto(int argc, char **argv);
/* The start of a command rank 0 runs alone once every rank has read its flags (main.c's
 * "gated" commands: tokenizer train). Every rank calls it once, with its own verdict on its
 * flags (rc: 0, or -1 after an error) and what must agree: out_flag's path (the place it
 * names, fdpo_dist_check_same_path; NULL: none) and a hash of the other flags (what names
 * them). Collective under MPI. Returns 0 where the command goes on (one process; rank 0 of
 * a job whose ranks agreed), 1 on another rank after rank 0 ran the command successfully
 * (it waited), and -1 otherwise: on every rank when a rank's flags failed or the ranks
 * disagree (said once, by rank 0), on a waiting rank when rank 0's run failed (rank 0 said
 * why). */
int cli_alone_gate(int rc, const char *out_flag, const char *out, const char *what, unsigned long long hash);
#endif
