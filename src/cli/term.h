/* The fdpo command's terminal printer for the library's log and progress hooks. */
#ifndef FDPO_CLI_TERM_H
#define FDPO_CLI_TERM_H
#include "fdpo/core.h"
/* Install the printer; log lines read "fdpo CMD: message". */
void term_install(const char *cmd);
/* End an open progress line (before printing an error). */
void term_finish(void);
#endif
