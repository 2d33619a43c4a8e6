/* fdpo dpo: placeholder until its issue lands. */
#include "cli/commands.h"
#include "fdpo/core.h"
int cmd_dpo(int argc, char **argv) { (void)argc; (void)argv; return fdpo_error("not implemented yet"); }
