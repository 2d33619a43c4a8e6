/* fdpo-harness: test-only subcommands that the Python tests drive. Each subsystem adds its
 * own file tests/harness/h_<subsystem>.c and one line in the table in harness.c. */
#ifndef FDPO_HARNESS_H
#define FDPO_HARNESS_H
typedef int (*harness_fn)(int argc, char **argv); /* argv[0] = subcommand; 0 = ok */
#endif
