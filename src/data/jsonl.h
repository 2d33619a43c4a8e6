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

/* cJSON decodes "\u0000" into a NUL and every string silently ends there (chosen and
 * rejected can then look identical, a prompt loses its tail); so does a raw 0 byte inside a
 * string. Returns 0 when raw[0..n) (the text root was parsed from) has neither; otherwise -1
 * after an error "WHERE: field 'PATH' contains a NUL character (\u0000)" naming the first
 * such field (e.g. 'chosen[1].content'). */
int fdpo_jsonl_check_nul(const char *where, const char *raw, size_t n, const cJSON *root);

/* 0 with *out set when j is a JSON number holding a non-negative integer <= 2^53 (every
 * such integer is exact in a double and fits size_t: no cast of an out-of-range double,
 * which is undefined behaviour); else -1, *out untouched. The one check for the sizes,
 * counts and steps fdpo reads from JSON (state.json, safetensors headers, scored samples). */
int fdpo_json_size(const cJSON *j, size_t *out);

#endif
