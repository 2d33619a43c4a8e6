/* The published chat templates fdpo renders with a built-in (src/data/chat_known.c), private
 * to the library: src/data/chat.c recognises a file's template only when it is one of these,
 * up to what Jinja itself ignores (fdpo_chat_detect). */
#ifndef FDPO_DATA_CHAT_KNOWN_H
#define FDPO_DATA_CHAT_KNOWN_H
#include "fdpo/chat.h"

/* A hole is a run of any text inside one string literal of a known source (written HOLE in
 * the source): what the template's author chose there, read out of the file. */
#define HOLE "\001"
enum {
    HOLE_NONE,            /* no hole (the list's end) */
    HOLE_ANY,             /* text the built-in never renders (Qwen2.5's tools branch) */
    HOLE_SYSTEM,          /* chatml: the default system turn's text */
    HOLE_KNOWLEDGE_DATE,  /* llama3: the preamble's "Cutting Knowledge Date: " value */
    HOLE_DATE,            /* llama3: date_string's default ("Today Date: ") */
    HOLE_BOS,             /* the bos text written as a literal (fdpo's own saved llama3 source) */
    HOLE_EOS,             /* zephyr's end of turn written as a literal (fdpo's own saved source) */
};
#define KNOWN_START_BOS 1 /* chatml after bos_token (OpenHermes-2.5) */
#define KNOWN_NO_BOS 2    /* llama3 without the leading bos (fdpo's saved source for a tokenizer without one) */
#define KNOWN_SAVED 4     /* the source fdpo saves for its kind (fdpo_chat_source), HOLE_BOS/HOLE_EOS filled */
#define KNOWN_BOS_PLUS 8  /* llama3 writing bos_token + text (Meta-Llama-3): Jinja refuses it when bos_token is undefined */
#define KNOWN_MAX_HOLES 3

typedef struct {
    fdpo_chat_kind kind;
    int flags;                        /* KNOWN_* */
    int holes[KNOWN_MAX_HOLES];       /* what each hole holds, in source order; HOLE_NONE after the last */
    const char *source;
} fdpo_chat_known;

extern const fdpo_chat_known FDPO_CHAT_KNOWN[];
extern const size_t FDPO_CHAT_N_KNOWN;
#endif
