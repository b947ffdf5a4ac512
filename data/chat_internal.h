/* chat_internal: what chat.c hands the template renderers (chat_mistral.c, chat_llama2.c):
 * a conversation already validated and merged into turns, and the helpers that append ids
 * with their mask. Not part of the public API; data/chat.h is. */
#ifndef GALE_DATA_CHAT_INTERNAL_H
#define GALE_DATA_CHAT_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data/chat.h"

enum chat_role { CHAT_ROLE_SYSTEM, CHAT_ROLE_USER, CHAT_ROLE_ASSISTANT, CHAT_ROLE_TOOL };

struct chat_call {
    const char *name;
    const char *id;     /* NULL when the call has none (absent, null or "null") */
    json_t *arguments;  /* owned: the parsed arguments, or the string when not JSON */
};

/* One turn: consecutive messages of one role (and weight) merged, as mistral-common does. */
struct chat_turn {
    enum chat_role role;     /* CHAT_ROLE_SYSTEM in v7 only; else system text is in system_prompt */
    size_t message;          /* index in "messages" of the turn's first message */
    gale_bytes text;         /* contents joined with "\n\n" */
    struct chat_call *calls; /* assistant only */
    size_t n_calls;
    json_t *tool_result;     /* tool only, owned (v3): the content parsed as JSON, or the string */
    const char *call_id;     /* tool only */
    int trained;             /* assistant only: its ids are training targets */
};

struct chat_conversation {
    int has_system;          /* any system message, even an empty one (llama2 wraps it anyway) */
    gale_bytes system_prompt; /* the non-empty system contents joined with "\n\n" */
    json_t *tools;           /* owned, v3 and v7: the tool list in mistral-common's shape, or NULL */
    struct chat_turn *turns;
    size_t n_turns;
};

/* Where a renderer's ids go: text is encoded by tok (through enc, a per-thread encoder, when
 * it is not NULL) and appended to ids, with one byte each appended to mask unless it is NULL. */
struct chat_sink {
    const gale_tokenizer *tok;
    tokenizer_encoder *enc;
    gale_ids *ids;
    gale_bytes *mask;
};

/* v3 and v7 have tools, tool calls and tool results; v1 and llama2 do not. */
int chat_has_tools(enum chat_template tmpl);

int chat_render_mistral(const struct chat_sink *s, enum chat_template tmpl,
                        const struct chat_conversation *conv, gale_error *err);
int chat_render_llama2(const struct chat_sink *s, const struct chat_conversation *conv,
                       gale_error *err);

/* Appends the ids of text to to (not to the sink's ids). */
void chat_encode_text(const struct chat_sink *s, const void *text, size_t len, gale_ids *to);
/* Appends the ids of text to the sink, each with mask byte m. */
void chat_emit_text(const struct chat_sink *s, const void *text, size_t len, uint8_t m);
void chat_emit_id(const struct chat_sink *s, int32_t id, uint8_t m);

/* mistral-common's v3 call ids: 9 ASCII letters or digits (n bytes at s). */
bool chat_is_call_id(const char *s, size_t n);

/* "an object", "a string", "a number", ...: a JSON value's type in an error message. */
const char *chat_json_type(const json_t *v);

#endif
