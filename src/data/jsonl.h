/* Shared checks for the JSONL readers (preference, SFT, prompts, scored samples). Private to
 * the library: the readers include it as "data/jsonl.h". */
#ifndef FDPO_DATA_JSONL_H
#define FDPO_DATA_JSONL_H
#include <cJSON.h>
#include <stddef.h>

/* fdpo_jsonl_parse_object (one JSONL line -> its object) is public: fdpo/core.h. */
#include "fdpo/core.h"

/* Bytes to skip at the start of a file: 3 for a UTF-8 byte order mark, else 0. */
size_t fdpo_jsonl_bom(const char *text, size_t len);

/* fdpo_jsonl_check_nul is public too (fdpo/core.h). */

/* 0 with *out set when j is a JSON number holding a non-negative integer <= 2^53 (every
 * such integer is exact in a double and fits size_t: no cast of an out-of-range double,
 * which is undefined behaviour); else -1, *out untouched. The one check for the sizes,
 * counts and steps fdpo reads from JSON (state.json, safetensors headers, scored samples). */
int fdpo_json_size(const cJSON *j, size_t *out);

#endif
