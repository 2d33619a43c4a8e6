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
#endif
