/* Shared checks for the JSONL readers (preference, SFT, prompts, scored samples). Private to
 * the library: the readers include it as "data/jsonl.h". */
#ifndef FDPO_DATA_JSONL_H
#define FDPO_DATA_JSONL_H
#include <cJSON.h>
#include <stddef.h>

/* fdpo_jsonl_parse_object (one JSONL line -> its object) is public: fdpo/core.h. */
#include "fdpo/core.h"

/* fdpo_jsonl_parse_object's checks but the key twice, which Python's json reads (the last
 * copy counts): fdpo_json_check_python_object's, after Python's other extensions. */
cJSON *fdpo_json_parse_object_any_keys(const char *path, size_t line_no, const char *line, size_t n, const char *expect);

/* 0 when the file text[0..n) is a JSON object as transformers reads a generation_config.json:
 * decoded as UTF-8 (a byte that is not, a byte order mark and a raw NUL are refused), then
 * Python's json.loads, which also takes NaN, Infinity, -Infinity and a lone surrogate escape
 * ("\ud800") and a key twice; else -1, with fdpo_error naming PATH:LINE and the column. For a
 * file fdpo carries without reading its values. */
int fdpo_json_check_python_object(const char *path, const char *text, size_t n);

/* t[0..n), a copy of a JSON text, with Python's extensions (NaN, Infinity, -Infinity, a lone
 * surrogate escape) spelt as JSON at the same length, as fdpo_json_check_python_object reads
 * them: where a text that only Python's json reads is told from one that no reader does. */
void fdpo_json_python_extensions_as_json(char *t, size_t n);

/* fdpo_jsonl_parse_object's checks but invalid UTF-8, which it passes through: for the report,
 * which shows such bytes as U+FFFD rather than drop a line of a run's metrics or samples. */
cJSON *fdpo_jsonl_parse_object_any_bytes(const char *path, size_t line_no, const char *line, size_t n);

/* Bytes to skip at the start of a file: 3 for a UTF-8 byte order mark, else 0. A JSONL reader
 * skips them to find blank lines but hands line 1 to the parser with them: it skips the file's
 * own and refuses a second one (EF BB BF EF BB BF), as Python's json after utf-8-sig. */
size_t fdpo_jsonl_bom(const char *text, size_t len);
/* The error for a byte order mark starting line LINE_NO of PATH that is not the file's own
 * (a later line's, or a second one after it): -1 (Python's json refuses the line at column 1) */
int fdpo_jsonl_refuse_bom(const char *path, size_t line_no);

/* fdpo_jsonl_check_nul is public too (fdpo/core.h). */

/* A key that one object of j (at any depth; the innermost such object, first in sorted
 * order) holds twice, or NULL: refused by fdpo_jsonl_parse_object and in a conversation kept
 * as JSON text (fdpo_chat_parse_conversation). */
const char *fdpo_json_duplicate_key(const cJSON *j);

/* The offset of the next number token of the JSON text s[from..n) (from outside any string),
 * or n when none; *len gets its length. fdpo_jsonl_parse_object checks each against JSON's
 * grammar; a --lexicon reads its weights' text with it. */
size_t fdpo_json_next_number(const char *s, size_t n, size_t from, size_t *len);

/* The offset of the u of the first \u escape inside a string of the JSON text s[0..n) that
 * four hex digits do not follow (\uZZZZ, \u12G4, \u 123), or n. RFC 8259 needs the four digits and
 * Python's json refuses the text; cJSON reads such an escape as U+0000, so the string ends
 * there without a word. Checked by fdpo_jsonl_parse_object / fdpo_json_parse_value and by every
 * other reader of a JSON file a user hands fdpo (tokenizer.json, a safetensors header, a
 * conversation kept as JSON text), each with FDPO_JSON_BAD_U_ESCAPE and the column. */
size_t fdpo_json_bad_u_escape(const char *s, size_t n);
/* The line and column (bytes, from 1) of text[off], text starting on line line_no: a JSONL
 * line has no newline, a whole file has many. Returns the line, the column in *col. */
size_t fdpo_json_line_col(const char *text, size_t off, size_t line_no, size_t *col);
/* Invalid UTF-8 in a JSON text, anywhere (a string, a key, a column no reader uses): every
 * JSONL reader's words, with the byte and its column. */
#define FDPO_JSON_INVALID_UTF8 "invalid UTF-8 (byte 0x%02X at column %zu)"
/* 0 when text[0..n) is valid UTF-8; else -1 after the error every reader of a user's JSON or
 * word file gives (JSONL lines, --lexicon, words:FILE, prompt files, generation_config.json):
 * "PATH:LINE: invalid UTF-8 (byte 0xE9 at column C)", text starting on line line_no (a file's
 * byte order mark skipped by the caller: columns count from after it, as Python's). */
int fdpo_json_refuse_invalid_utf8(const char *path, size_t line_no, const char *text, size_t n);
#define FDPO_JSON_BAD_U_ESCAPE "invalid JSON: the \\u escape at column %zu needs four hex digits (Python's json " \
                               "refuses it; read as U+0000 it would cut the string there)"

/* Offset of the first NUL inside a JSON string of raw[0..n), or n: a "\u0000" escape or a raw
 * 0 byte (cJSON keeps raw control bytes, and the string ends there too). What
 * fdpo_jsonl_check_nul looks for; a --lexicon names the word and line that holds it. */
size_t fdpo_json_find_nul(const char *raw, size_t n);
/* Offset of the first raw control character of the JSON text line[0..n) that JSON refuses:
 * any below U+0020 inside a string (a 0 byte there is fdpo_json_find_nul's), any but tab, CR
 * and LF between tokens; n when none. *in_string: which of the two it was. cJSON takes them,
 * Python's json refuses the text. */
size_t fdpo_json_raw_control(const char *line, size_t n, int *in_string);

/* Where a JSON text that cJSON reads is no JSON for Python's json (nor RFC 8259): kind, in the
 * order checked, a raw control character (in_string: inside a string; see
 * fdpo_json_raw_control), a \u escape without four hex digits (fdpo_json_bad_u_escape), a number
 * outside JSON's grammar (01, -01.5, 0., 1.e5: cJSON reads them with strtod; len its length,
 * why what is wrong with it, "a leading zero"); at its offset. The one rule by which the JSONL
 * parser and a prompt kept as its messages' JSON text (fdpo_chat_parse_conversation) refuse
 * what only cJSON reads. */
typedef enum { FDPO_JSON_STRICT, FDPO_JSON_RAW_CONTROL, FDPO_JSON_U_ESCAPE, FDPO_JSON_NUMBER } fdpo_json_flaw_kind;
typedef struct {
    fdpo_json_flaw_kind kind;   /* FDPO_JSON_STRICT: none */
    size_t at, len;
    int in_string;
    const char *why;
} fdpo_json_flaw;
fdpo_json_flaw fdpo_json_cjson_only(const char *s, size_t n);

/* The offsets of the opening quotes of the keys of the object that the JSON text s[0..n)
 * (valid JSON) is, in the text's order (cJSON's order of the members), malloc'd; *count
 * gets how many. Where a file of many lines (a --lexicon) names a member's line. */
size_t *fdpo_json_member_offsets(const char *s, size_t n, size_t *count);

/* 0 with *out set when j is a JSON number holding a non-negative integer <= 2^53 (every
 * such integer is exact in a double and fits size_t: no cast of an out-of-range double,
 * which is undefined behaviour); else -1, *out untouched. The one check for the sizes,
 * counts and steps fdpo reads from JSON (state.json, safetensors headers, scored samples). */
int fdpo_json_size(const cJSON *j, size_t *out);

#endif
