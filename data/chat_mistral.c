/* chat_mistral: the v1, v3 and v7 templates, as mistral-common's InstructTokenizerV1, V3 and
 * V7 encode a normalised request. */
#include <string.h>

#include "data/chat_internal.h"
#include "data/pyjson.h"

/* The v3 and v7 control tokens, looked up by piece so that a v1 model is refused by name. */
struct v3_tokens {
    int32_t inst, end_inst, tools, end_tools, tool_calls, results, end_results;
    int32_t system, end_system, tool_content; /* v7 */
};

static int control_id(const gale_tokenizer *tok, enum chat_template tmpl, const char *piece, int32_t *out,
                      gale_error *err)
{
    int id = tokenizer_piece_id(tok, piece);
    if (id < 0)
        return gale_fail(err,
                         "the %s chat template needs the control token %s, which this tokenizer "
                         "lacks (use a Mistral %s tokenizer such as %s)", chat_template_name(tmpl), piece,
                         chat_template_name(tmpl), tmpl == CHAT_MISTRAL_V3 ? "mistral-v3.model" : "a Tekken file");
    *out = id;
    return 0;
}

static int v3_tokens_find(const gale_tokenizer *tok, enum chat_template tmpl, struct v3_tokens *t, gale_error *err)
{
    if (control_id(tok, tmpl, "[INST]", &t->inst, err) || control_id(tok, tmpl, "[/INST]", &t->end_inst, err) ||
        control_id(tok, tmpl, "[AVAILABLE_TOOLS]", &t->tools, err) ||
        control_id(tok, tmpl, "[/AVAILABLE_TOOLS]", &t->end_tools, err) ||
        control_id(tok, tmpl, "[TOOL_CALLS]", &t->tool_calls, err) ||
        control_id(tok, tmpl, "[TOOL_RESULTS]", &t->results, err) ||
        control_id(tok, tmpl, "[/TOOL_RESULTS]", &t->end_results, err))
        return -1;
    if (tmpl != CHAT_MISTRAL_V7)
        return 0;
    return control_id(tok, tmpl, "[SYSTEM_PROMPT]", &t->system, err) ||
                   control_id(tok, tmpl, "[/SYSTEM_PROMPT]", &t->end_system, err) ||
                   control_id(tok, tmpl, "[TOOL_CONTENT]", &t->tool_content, err)
               ? -1
               : 0;
}

static void emit_json(const struct chat_sink *s, const json_t *value, uint8_t m, gale_bytes *buf)
{
    buf->n = 0;
    pyjson_dump(value, buf);
    chat_emit_text(s, buf->v, buf->n, m);
}

/* v1: the text "[INST] {system}\n\n{user} [/INST]", the system prompt on the first user turn.
 * v3: [AVAILABLE_TOOLS] tools [/AVAILABLE_TOOLS] before the last user turn, then
 * [INST] {system}\n\n{user} [/INST], the system prompt on the last user turn.
 * v7: as v3 without the system prompt, which has turns of its own. */
static void emit_user(const struct chat_sink *s, enum chat_template tmpl, const struct v3_tokens *t,
                      const struct chat_conversation *conv, const struct chat_turn *turn,
                      int first, int last, gale_bytes *buf)
{
    int with_system = conv->system_prompt.n && (tmpl == CHAT_MISTRAL_V1 ? first : last);
    if (tmpl != CHAT_MISTRAL_V1 && last && conv->tools) {
        chat_emit_id(s, t->tools, 0);
        emit_json(s, conv->tools, 0, buf);
        chat_emit_id(s, t->end_tools, 0);
    }
    buf->n = 0;
    if (tmpl == CHAT_MISTRAL_V1)
        gale_bytes_append(buf, "[INST] ", 7);
    if (with_system) {
        gale_bytes_append(buf, conv->system_prompt.v, conv->system_prompt.n);
        gale_bytes_append(buf, "\n\n", 2);
    }
    gale_bytes_append(buf, turn->text.v, turn->text.n);
    if (tmpl == CHAT_MISTRAL_V1) {
        gale_bytes_append(buf, " [/INST]", 8);
        chat_emit_text(s, buf->v, buf->n, 0);
    } else {
        chat_emit_id(s, t->inst, 0);
        chat_emit_text(s, buf->v, buf->n, 0);
        chat_emit_id(s, t->end_inst, 0);
    }
}

/* The text (v3 and v7 strip trailing spaces, v1 does not) and/or [TOOL_CALLS] [{"name": ...,
 * "arguments": ..., "id": ...}, ...] (v7 may have both), then </s>; all of it is the answer. */
static void emit_assistant(const struct chat_sink *s, enum chat_template tmpl,
                           const struct v3_tokens *t, const struct chat_turn *turn, gale_bytes *buf)
{
    uint8_t m = turn->trained ? 1 : 0;
    size_t len = turn->text.n;
    if (tmpl != CHAT_MISTRAL_V1)
        while (len && turn->text.v[len - 1] == ' ')
            len--;
    if (len || !turn->n_calls)
        chat_emit_text(s, turn->text.v, len, m);
    if (turn->n_calls) {
        json_t *calls = json_array();
        for (size_t k = 0; k < turn->n_calls; k++) {
            json_t *call = json_object();
            json_object_set_new(call, "name", json_string(turn->calls[k].name));
            json_object_set(call, "arguments", turn->calls[k].arguments);
            if (turn->calls[k].id)
                json_object_set_new(call, "id", json_string(turn->calls[k].id));
            json_array_append_new(calls, call);
        }
        chat_emit_id(s, t->tool_calls, m);
        emit_json(s, calls, m, buf);
        json_decref(calls);
    }
    chat_emit_id(s, tokenizer_eos_id(s->tok), m);
}

/* v3: [TOOL_RESULTS] {"content": ..., "call_id": ...} [/TOOL_RESULTS]
 * v7: [TOOL_RESULTS] {call id} [TOOL_CONTENT] {content} [/TOOL_RESULTS] */
static void emit_tool_result(const struct chat_sink *s, enum chat_template tmpl, const struct v3_tokens *t,
                             const struct chat_turn *turn, gale_bytes *buf)
{
    if (tmpl == CHAT_MISTRAL_V7) {
        chat_emit_id(s, t->results, 0);
        chat_emit_text(s, turn->call_id, strlen(turn->call_id), 0);
        chat_emit_id(s, t->tool_content, 0);
        chat_emit_text(s, turn->text.v, turn->text.n, 0);
        chat_emit_id(s, t->end_results, 0);
        return;
    }
    json_t *result = json_object();
    json_object_set(result, "content", turn->tool_result);
    json_object_set_new(result, "call_id", json_string(turn->call_id));
    chat_emit_id(s, t->results, 0);
    emit_json(s, result, 0, buf);
    chat_emit_id(s, t->end_results, 0);
    json_decref(result);
}

int chat_render_mistral(const struct chat_sink *s, enum chat_template tmpl,
                        const struct chat_conversation *conv, gale_error *err)
{
    struct v3_tokens t = {0};
    if (tmpl != CHAT_MISTRAL_V1 && v3_tokens_find(s->tok, tmpl, &t, err))
        return -1;
    size_t first_user = conv->n_turns, last_user = 0;
    for (size_t i = 0; i < conv->n_turns; i++)
        if (conv->turns[i].role == CHAT_ROLE_USER) {
            if (first_user == conv->n_turns)
                first_user = i;
            last_user = i;
        }

    gale_bytes buf = {0};
    chat_emit_id(s, tokenizer_bos_id(s->tok), 0);
    for (size_t i = 0; i < conv->n_turns; i++) {
        const struct chat_turn *turn = &conv->turns[i];
        switch (turn->role) {
        case CHAT_ROLE_USER:
            emit_user(s, tmpl, &t, conv, turn, i == first_user, i == last_user, &buf);
            break;
        case CHAT_ROLE_ASSISTANT:
            emit_assistant(s, tmpl, &t, turn, &buf);
            break;
        case CHAT_ROLE_TOOL:
            emit_tool_result(s, tmpl, &t, turn, &buf);
            break;
        case CHAT_ROLE_SYSTEM: /* v7; the others merge it into the system prompt (chat.c) */
            chat_emit_id(s, t.system, 0);
            chat_emit_text(s, turn->text.v, turn->text.n, 0);
            chat_emit_id(s, t.end_system, 0);
            break;
        }
    }
    gale_bytes_free(&buf);
    return 0;
}
