/* fdpo-harness: a test-only binary that the Python tests drive (model parity, gradients). */
#include <stdio.h>
int main(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "fdpo-harness: no commands yet\n"); return 2; }
