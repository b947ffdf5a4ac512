/* chat: reads and validates a conversation, merges it into turns as mistral-common's
 * normaliser does, and hands the turns to the template's renderer. */
#include "data/chat.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "data/chat_internal.h"
#include "data/pyjson.h"

static const char *const template_names[] = {"v1", "v3", "llama2", "v7"};
static const char *const role_names[] = {"system", "user", "assistant", "tool"};
static const char *const role_with_article[] = {"a system", "a user", "an assistant", "a tool"};

int chat_template_from_name(const char *name, enum chat_template *out, gale_error *err)
{
    for (size_t i = 0; i < sizeof template_names / sizeof *template_names; i++)
        if (!strcmp(name, template_names[i])) {
            *out = (enum chat_template)i;
            return 0;
        }
    return gale_fail(err, "unknown chat template '%s' (expected v1, v3, v7 or llama2)", name);
}

const char *chat_template_name(enum chat_template tmpl)
{
    return template_names[tmpl];
}

int chat_has_tools(enum chat_template tmpl)
{
    return tmpl == CHAT_MISTRAL_V3 || tmpl == CHAT_MISTRAL_V7;
}

void chat_encode_text(const struct chat_sink *s, const void *text, size_t len, gale_ids *to)
{
    if (s->enc)
        tokenizer_encoder_encode(s->enc, text, len, to);
    else
        tokenizer_encode(s->tok, text, len, to);
}

void chat_emit_text(const struct chat_sink *s, const void *text, size_t len, uint8_t m)
{
    size_t before = s->ids->n;
    chat_encode_text(s, text, len, s->ids);
    if (s->mask)
        gale_bytes_fill(s->mask, m, s->ids->n - before);
}

void chat_emit_id(const struct chat_sink *s, int32_t id, uint8_t m)
{
    gale_ids_push(s->ids, id);
    if (s->mask)
        gale_bytes_push(s->mask, m);
}

const char *chat_json_type(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* min to max bytes, every one an ASCII letter or digit (or '_' and '-' when dashes): the
 * length is given, not strlen, so an embedded NUL is refused too. */
static bool is_word(const char *v, size_t n, size_t min, size_t max, bool dashes)
{
    if (!v || n < min || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = v[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  (dashes && (c == '_' || c == '-'));
        if (!ok)
            return false;
    }
    return true;
}

/* mistral-common's ^[a-zA-Z0-9_-]{1,64}$ for function and tool names. */
static bool is_function_name(const json_t *s)
{
    return is_word(json_string_value(s), json_string_length(s), 1, 64, true);
}

bool chat_is_call_id(const char *s, size_t n)
{
    return is_word(s, n, 9, 9, false);
}

/* mistral-common's v3 call ids: ^[a-zA-Z0-9]{9}$. */
static bool is_call_id(const json_t *s)
{
    return chat_is_call_id(json_string_value(s), json_string_length(s));
}

/* One entry of "messages", checked on its own but not yet merged with its neighbours. */
struct chat_message {
    enum chat_role role;
    const json_t *content;   /* a string, or NULL */
    int weight;              /* 0, 1, or -1 when absent */
    struct chat_call *calls; /* owned */
    size_t n_calls;
    const char *call_id;     /* tool messages */
};

static void calls_free(struct chat_call *calls, size_t n)
{
    for (size_t i = 0; i < n; i++)
        json_decref(calls[i].arguments);
    free(calls);
}

/* Python's arguments normalisation: "" or null is "{}", a string is parsed when it is JSON,
 * an object is used as it is. */
static json_t *normalized_json_text(const json_t *text)
{
    if (json_is_null(text) || json_string_length(text) == 0)
        return json_object();
    return pyjson_parse(json_string_value(text), json_string_length(text));
}

static int parse_call(const json_t *call, size_t i, size_t k, struct chat_call *out,
                      gale_error *err)
{
    if (!json_is_object(call))
        return gale_fail(err, "messages[%zu].tool_calls[%zu]: expected an object, got %s", i, k,
                         chat_json_type(call));
    const json_t *type = json_object_get(call, "type");
    if (type && !json_is_null(type) &&
        !(json_is_string(type) && !strcmp(json_string_value(type), "function")))
        return gale_fail(err, "messages[%zu].tool_calls[%zu].type: expected \"function\"", i, k);
    const json_t *fn = json_object_get(call, "function");
    if (!fn)
        return gale_fail(err, "messages[%zu].tool_calls[%zu]: missing key \"function\"", i, k);
    if (!json_is_object(fn))
        return gale_fail(err, "messages[%zu].tool_calls[%zu].function: expected an object, got %s",
                         i, k, chat_json_type(fn));
    const json_t *name = json_object_get(fn, "name");
    if (!name)
        return gale_fail(err, "messages[%zu].tool_calls[%zu].function: missing key \"name\"", i, k);
    if (!json_is_string(name))
        return gale_fail(err, "messages[%zu].tool_calls[%zu].function.name: expected a string, got %s",
                         i, k, chat_json_type(name));
    if (!is_function_name(name))
        return gale_fail(err,
                         "messages[%zu].tool_calls[%zu].function.name: \"%.80s\" is not 1 to 64 "
                         "letters, digits, '_' or '-'", i, k, json_string_value(name));
    const json_t *args = json_object_get(fn, "arguments");
    if (!args)
        return gale_fail(err, "messages[%zu].tool_calls[%zu].function: missing key \"arguments\"",
                         i, k);
    if (!json_is_string(args) && !json_is_object(args) && !json_is_null(args))
        return gale_fail(err,
                         "messages[%zu].tool_calls[%zu].function.arguments: expected a JSON string "
                         "or an object, got %s", i, k, chat_json_type(args));
    const json_t *id = json_object_get(call, "id");
    const char *id_text = NULL;
    if (id && !json_is_null(id)) {
        if (!json_is_string(id))
            return gale_fail(err, "messages[%zu].tool_calls[%zu].id: expected a string, got %s", i,
                             k, chat_json_type(id));
        id_text = json_string_value(id);
        if (json_string_length(id) == 4 && !strcmp(id_text, "null"))
            id_text = NULL;  /* mistral-common's spelling of "no id" */
        else if (!is_call_id(id))
            return gale_fail(err,
                             "messages[%zu].tool_calls[%zu].id: \"%.80s\" is not a v3 call id "
                             "(9 letters or digits)", i, k, id_text);
    }
    out->name = json_string_value(name);
    out->id = id_text;
    out->arguments = json_is_object(args) ? json_incref((json_t *)args) : normalized_json_text(args);
    return 0;
}

static int parse_weight(const json_t *msg, size_t i, int *weight, gale_error *err)
{
    const json_t *w = json_object_get(msg, "weight");
    *weight = -1;
    if (!w || json_is_null(w))
        return 0;
    double v = json_is_number(w) ? json_number_value(w) : -1.0;
    if (v != 0.0 && v != 1.0)
        return gale_fail(err, "messages[%zu].weight: expected 0 or 1", i);
    *weight = (int)v;
    return 0;
}

static int parse_role(const json_t *msg, size_t i, enum chat_role *role, gale_error *err)
{
    const json_t *r = json_object_get(msg, "role");
    if (!r)
        return gale_fail(err, "messages[%zu]: missing key \"role\"", i);
    if (!json_is_string(r))
        return gale_fail(err, "messages[%zu].role: expected a string, got %s", i, chat_json_type(r));
    for (size_t k = 0; k < sizeof role_names / sizeof *role_names; k++)
        if (!strcmp(json_string_value(r), role_names[k])) {
            *role = (enum chat_role)k;
            return 0;
        }
    return gale_fail(err,
                     "messages[%zu].role: unknown role \"%.80s\" (expected system, user, "
                     "assistant or tool)", i, json_string_value(r));
}

static int parse_tool_message(const json_t *msg, size_t i, struct chat_message *out,
                              gale_error *err)
{
    const json_t *id = json_object_get(msg, "tool_call_id");
    if (!id || json_is_null(id))
        return gale_fail(err, "messages[%zu]: missing key \"tool_call_id\"", i);
    if (!json_is_string(id))
        return gale_fail(err, "messages[%zu].tool_call_id: expected a string, got %s", i,
                         chat_json_type(id));
    if (!is_call_id(id))
        return gale_fail(err,
                         "messages[%zu].tool_call_id: \"%.80s\" is not a v3 call id (9 letters "
                         "or digits)", i, json_string_value(id));
    const json_t *name = json_object_get(msg, "name");
    if (name && !json_is_null(name) &&
        !is_function_name(name))
        return gale_fail(err, "messages[%zu].name: expected 1 to 64 letters, digits, '_' or '-'", i);
    out->call_id = json_string_value(id);
    return 0;
}

static int parse_assistant_calls(const json_t *msg, size_t i, enum chat_template tmpl,
                                 struct chat_message *out, gale_error *err)
{
    const json_t *calls = json_object_get(msg, "tool_calls");
    if (!calls || json_is_null(calls))
        return 0;
    if (!json_is_array(calls))
        return gale_fail(err, "messages[%zu].tool_calls: expected an array, got %s", i,
                         chat_json_type(calls));
    size_t n = json_array_size(calls);
    if (n && !chat_has_tools(tmpl))
        return gale_fail(err, "messages[%zu].tool_calls: the %s template has no tool calls (use v3 or v7)",
                         i, chat_template_name(tmpl));
    out->calls = gale_xcalloc(n, sizeof *out->calls);
    for (size_t k = 0; k < n; k++) {
        if (parse_call(json_array_get(calls, k), i, k, &out->calls[k], err))
            return -1;
        out->n_calls++;
    }
    return 0;
}

static int parse_message(const json_t *msg, size_t i, enum chat_template tmpl,
                         struct chat_message *out, gale_error *err)
{
    if (!json_is_object(msg))
        return gale_fail(err, "messages[%zu]: expected an object, got %s", i, chat_json_type(msg));
    if (parse_role(msg, i, &out->role, err) || parse_weight(msg, i, &out->weight, err))
        return -1;
    if (out->role != CHAT_ROLE_ASSISTANT)
        out->weight = -1;  /* only assistant messages carry a weight, also when merging runs */
    const json_t *content = json_object_get(msg, "content");
    if (content && !json_is_null(content) && !json_is_string(content))
        return gale_fail(err, "messages[%zu].content: expected a string, got %s", i,
                         chat_json_type(content));
    out->content = json_is_string(content) ? content : NULL;
    if (!out->content && out->role != CHAT_ROLE_ASSISTANT)
        return gale_fail(err, "messages[%zu]: %s message needs a string \"content\"", i,
                         role_with_article[out->role]);

    if (out->role == CHAT_ROLE_TOOL) {
        if (!chat_has_tools(tmpl))
            return gale_fail(err, "messages[%zu]: the %s template has no tool messages (use v3 or v7)", i,
                             chat_template_name(tmpl));
        return parse_tool_message(msg, i, out, err);
    }
    if (out->role != CHAT_ROLE_ASSISTANT)
        return 0;
    if (parse_assistant_calls(msg, i, tmpl, out, err))
        return -1;
    bool has_text = out->content && json_string_length(out->content) > 0;
    if (tmpl != CHAT_MISTRAL_V7 && has_text == (out->n_calls > 0)) /* v7 checks the merged turn */
        return gale_fail(err,
                         "messages[%zu]: an assistant message needs a non-empty \"content\" or "
                         "\"tool_calls\", %s", i, has_text ? "not both" : "and has neither");
    return 0;
}

/* mistral-common's role order (1.13): a tool result follows only an assistant message or
 * another result, and a system message never follows an assistant message or a result. */
static bool may_follow(enum chat_role prev, enum chat_role cur)
{
    switch (prev) {
    case CHAT_ROLE_SYSTEM:
    case CHAT_ROLE_USER: return cur != CHAT_ROLE_TOOL;
    case CHAT_ROLE_ASSISTANT:
    case CHAT_ROLE_TOOL: return cur != CHAT_ROLE_SYSTEM;
    }
    return false;
}

/* Every assistant message with n calls must be followed by n tool results before the next
 * assistant message; in training, the final calls may not have more results than calls. */
static int check_tool_results(const struct chat_message *m, size_t n, enum chat_purpose purpose,
                              gale_error *err)
{
    long expected = 0;
    size_t caller = 0;
    for (size_t i = 1; i < n; i++) {
        if (m[i].role == CHAT_ROLE_TOOL) {
            expected--;
        } else if (m[i].role == CHAT_ROLE_ASSISTANT) {
            if (expected != 0)
                return gale_fail(err,
                                 "messages[%zu]: the tool calls of messages[%zu] have %s results "
                                 "than calls", i, caller, expected > 0 ? "fewer" : "more");
            expected = (long)m[i].n_calls;
            caller = i;
        }
    }
    if (purpose == CHAT_FOR_TRAINING && expected < 0)
        return gale_fail(err, "messages[%zu]: the tool calls of messages[%zu] have more results than calls",
                         n - 1, caller);
    return 0;
}

/* mistral-finetune's rule for training data: the conversation ends with an answer. */
static int check_ends_with_answer(const struct chat_message *m, size_t n, gale_error *err)
{
    if (m[n - 1].role == CHAT_ROLE_ASSISTANT)
        return 0;
    return gale_fail(err, "messages[%zu]: training data must end with an assistant message, not %s message",
                     n - 1, role_with_article[m[n - 1].role]);
}

static int check_mistral_structure(const struct chat_message *m, size_t n,
                                   enum chat_purpose purpose, gale_error *err)
{
    if (n == 1 && m[0].role != CHAT_ROLE_USER && m[0].role != CHAT_ROLE_SYSTEM)
        return gale_fail(err, "messages[0]: a conversation of one message must be a user or system message");
    enum chat_role last = m[n - 1].role;
    if (purpose == CHAT_FOR_TRAINING && check_ends_with_answer(m, n, err))
        return -1;
    /* a trailing system message is allowed: it folds into the system prompt */
    if (purpose == CHAT_FOR_PROMPT && n > 1 && last == CHAT_ROLE_ASSISTANT)
        return gale_fail(err,
                         "messages[%zu]: a prompt must end with a user or tool message, not an "
                         "assistant message (the answer is what is generated)", n - 1);
    for (size_t i = 1; i < n; i++)
        if (!may_follow(m[i - 1].role, m[i].role))
            return gale_fail(err, "messages[%zu]: %s message cannot follow %s message", i,
                             role_with_article[m[i].role], role_with_article[m[i - 1].role]);
    /* a call without id: only in the final message of training data, whose id is not context */
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < m[i].n_calls; k++)
            if (!m[i].calls[k].id && !(purpose == CHAT_FOR_TRAINING && i == n - 1))
                return gale_fail(err,
                                 "messages[%zu].tool_calls[%zu]: missing key \"id\" (only the final "
                                 "message of training data may omit call ids)", i, k);
    return check_tool_results(m, n, purpose, err);
}

/* Meta's chat_completion: an optional system message, then user and assistant alternating. */
static int check_llama2_structure(const struct chat_message *m, size_t n,
                                  enum chat_purpose purpose, gale_error *err)
{
    size_t start = m[0].role == CHAT_ROLE_SYSTEM;
    if (start == n)
        return gale_fail(err, "messages: llama2 needs a user message after the system message");
    for (size_t i = start; i < n; i++) {
        enum chat_role want = (i - start) % 2 ? CHAT_ROLE_ASSISTANT : CHAT_ROLE_USER;
        if (m[i].role != want)
            return gale_fail(err,
                             "messages[%zu]: llama2 expects %s message here (an optional system "
                             "message first, then user and assistant alternating), not %s message",
                             i, role_with_article[want], role_with_article[m[i].role]);
    }
    enum chat_role last = m[n - 1].role;
    if (purpose == CHAT_FOR_TRAINING && check_ends_with_answer(m, n, err))
        return -1;
    if (purpose == CHAT_FOR_PROMPT && last != CHAT_ROLE_USER)
        return gale_fail(err, "messages[%zu]: a llama2 prompt must end with a user message, not %s message",
                         n - 1, role_with_article[last]);
    return 0;
}

/* The tool list as mistral-common's Tool.model_dump() writes it:
 * {"type": "function", "function": {"name", "description" (default ""), "parameters" (default {})}}. */
static int parse_tool(const json_t *tool, size_t k, json_t *list, gale_error *err)
{
    if (!json_is_object(tool))
        return gale_fail(err, "tools[%zu]: expected an object, got %s", k, chat_json_type(tool));
    const json_t *type = json_object_get(tool, "type");
    if (type && !(json_is_string(type) && !strcmp(json_string_value(type), "function")))
        return gale_fail(err, "tools[%zu].type: expected \"function\"", k);
    const json_t *fn = json_object_get(tool, "function");
    if (!fn)
        return gale_fail(err, "tools[%zu]: missing key \"function\"", k);
    if (!json_is_object(fn))
        return gale_fail(err, "tools[%zu].function: expected an object, got %s", k, chat_json_type(fn));
    const json_t *name = json_object_get(fn, "name");
    if (!name)
        return gale_fail(err, "tools[%zu].function: missing key \"name\"", k);
    if (!is_function_name(name))
        return gale_fail(err, "tools[%zu].function.name: expected 1 to 64 letters, digits, '_' or '-'", k);
    const json_t *desc = json_object_get(fn, "description");
    if (desc && !json_is_null(desc) && !json_is_string(desc))
        return gale_fail(err, "tools[%zu].function.description: expected a string, got %s", k,
                         chat_json_type(desc));
    const json_t *params = json_object_get(fn, "parameters");
    if (params && !json_is_null(params) && !json_is_object(params))
        return gale_fail(err, "tools[%zu].function.parameters: expected an object, got %s", k,
                         chat_json_type(params));

    json_t *f = json_object();
    json_object_set(f, "name", (json_t *)name);
    json_object_set_new(f, "description",
                        json_is_string(desc) ? json_incref((json_t *)desc) : json_string(""));
    json_object_set_new(f, "parameters",
                        json_is_object(params) ? json_incref((json_t *)params) : json_object());
    json_t *t = json_object();
    json_object_set_new(t, "type", json_string("function"));
    json_object_set_new(t, "function", f);
    json_array_append_new(list, t);
    return 0;
}

static int parse_tools(const json_t *conversation, enum chat_template tmpl, json_t **out,
                       gale_error *err)
{
    const json_t *tools = json_object_get(conversation, "tools");
    *out = NULL;
    if (!tools || json_is_null(tools))
        return 0;
    if (!json_is_array(tools))
        return gale_fail(err, "tools: expected an array, got %s", chat_json_type(tools));
    if (json_array_size(tools) == 0)
        return 0;
    if (!chat_has_tools(tmpl))
        return gale_fail(err, "tools: the %s template has no tools (use v3 or v7)", chat_template_name(tmpl));
    *out = json_array();
    for (size_t k = 0; k < json_array_size(tools); k++)
        if (parse_tool(json_array_get(tools, k), k, *out, err))
            return -1;
    return 0;
}

static void append_joined(gale_bytes *text, const json_t *content)
{
    size_t len = content ? json_string_length(content) : 0;
    if (!len)
        return;
    if (text->n)
        gale_bytes_append(text, "\n\n", 2);
    gale_bytes_append(text, json_string_value(content), len);
}

static struct chat_turn *new_turn(struct chat_conversation *conv, enum chat_role role,
                                  size_t message)
{
    conv->turns = gale_xrealloc(conv->turns, (conv->n_turns + 1) * sizeof *conv->turns);
    struct chat_turn *t = &conv->turns[conv->n_turns++];
    memset(t, 0, sizeof *t);
    t->role = role;
    t->message = message;
    return t;
}

/* mistral-common's normaliser: system messages make the system prompt (and split runs;
 * v7's: each stays a turn of its own), tool messages stay one per turn, runs of user or
 * assistant messages of one weight merge into one turn. */
static int merge_turns(const struct chat_message *m, size_t n, enum chat_template tmpl, bool only_last,
                       struct chat_conversation *conv, gale_error *err)
{
    bool v7 = tmpl == CHAT_MISTRAL_V7;
    for (size_t i = 0; i < n; i++) {
        const struct chat_message *msg = &m[i];
        if (msg->role == CHAT_ROLE_SYSTEM && !v7) {
            conv->has_system = 1;
            append_joined(&conv->system_prompt, msg->content);
            continue;
        }
        struct chat_turn *t = conv->n_turns ? &conv->turns[conv->n_turns - 1] : NULL;
        bool same_run = i > 0 && t && m[i - 1].role == msg->role && msg->role != CHAT_ROLE_TOOL &&
                        msg->role != CHAT_ROLE_SYSTEM && m[i - 1].weight == msg->weight;
        if (!same_run)
            t = new_turn(conv, msg->role, i);
        append_joined(&t->text, msg->content);
        if (msg->role == CHAT_ROLE_TOOL) {
            t->call_id = msg->call_id;
            if (!v7) /* v7 renders the content as it is */
                t->tool_result = normalized_json_text(msg->content);
        }
        if (msg->n_calls) {
            t->calls = gale_xrealloc(t->calls, (t->n_calls + msg->n_calls) * sizeof *t->calls);
            for (size_t k = 0; k < msg->n_calls; k++) {
                t->calls[t->n_calls] = msg->calls[k];
                json_incref(t->calls[t->n_calls++].arguments);
            }
        }
        if (t->n_calls && t->text.n && !v7)
            return gale_fail(err,
                             "messages[%zu]: merged with the assistant message messages[%zu], it "
                             "makes one turn with both content and tool calls, which v3 cannot "
                             "render", i, t->message);
        t->trained = msg->role == CHAT_ROLE_ASSISTANT && msg->weight != 0;
    }
    for (size_t k = 0; v7 && k < conv->n_turns; k++)
        if (conv->turns[k].role == CHAT_ROLE_ASSISTANT && !conv->turns[k].text.n && !conv->turns[k].n_calls)
            return gale_fail(err, "messages[%zu]: an assistant message needs a non-empty \"content\" or "
                             "\"tool_calls\", and has neither", conv->turns[k].message);
    /* an empty user turn in front, where v3 needs one; v7 opens with whatever comes first */
    if (!conv->n_turns || (!v7 && conv->turns[0].role != CHAT_ROLE_USER)) {
        new_turn(conv, CHAT_ROLE_USER, 0);
        memmove(conv->turns + 1, conv->turns, (conv->n_turns - 1) * sizeof *conv->turns);
        memset(&conv->turns[0], 0, sizeof conv->turns[0]);
        conv->turns[0].role = CHAT_ROLE_USER;
    }
    if (only_last)
        for (size_t k = 0; k + 1 < conv->n_turns; k++)
            conv->turns[k].trained = 0;
    return 0;
}

static void conversation_free(struct chat_conversation *conv)
{
    for (size_t i = 0; i < conv->n_turns; i++) {
        struct chat_turn *t = &conv->turns[i];
        gale_bytes_free(&t->text);
        calls_free(t->calls, t->n_calls);
        json_decref(t->tool_result);
    }
    free(conv->turns);
    gale_bytes_free(&conv->system_prompt);
    json_decref(conv->tools);
}

static int read_only_last(const json_t *conversation, bool *only_last, gale_error *err)
{
    const json_t *v = json_object_get(conversation, "only_last");
    if (v && !json_is_boolean(v) && !json_is_null(v))
        return gale_fail(err, "only_last: expected true or false, got %s", chat_json_type(v));
    *only_last = json_is_true(v);
    return 0;
}

static int read_conversation(const json_t *conversation, enum chat_template tmpl,
                             enum chat_purpose purpose, struct chat_conversation *conv,
                             gale_error *err)
{
    if (!json_is_object(conversation))
        return gale_fail(err, "conversation: expected an object, got %s", chat_json_type(conversation));
    const json_t *messages = json_object_get(conversation, "messages");
    if (!messages)
        return gale_fail(err, "conversation: missing key \"messages\"");
    if (!json_is_array(messages))
        return gale_fail(err, "messages: expected an array, got %s", chat_json_type(messages));
    size_t n = json_array_size(messages);
    if (n == 0)
        return gale_fail(err, "messages: the conversation has no messages");
    bool only_last = false;
    if (read_only_last(conversation, &only_last, err) || parse_tools(conversation, tmpl, &conv->tools, err))
        return -1;

    struct chat_message *m = gale_xcalloc(n, sizeof *m);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = parse_message(json_array_get(messages, i), i, tmpl, &m[i], err);
    if (!rc)
        rc = tmpl == CHAT_LLAMA2 ? check_llama2_structure(m, n, purpose, err)
                                 : check_mistral_structure(m, n, purpose, err);
    if (!rc)
        rc = merge_turns(m, n, tmpl, only_last, conv, err);
    for (size_t i = 0; i < n; i++)
        calls_free(m[i].calls, m[i].n_calls);
    free(m);
    return rc;
}

int chat_encode_with_encoder(const gale_tokenizer *tok, tokenizer_encoder *enc,
                             enum chat_template tmpl, enum chat_purpose purpose,
                             const json_t *conversation, gale_ids *ids, gale_bytes *loss_mask,
                             gale_error *err)
{
    size_t ids_before = ids->n, mask_before = loss_mask ? loss_mask->n : 0;
    struct chat_conversation conv = {0};
    struct chat_sink sink = {tok, enc, ids, loss_mask};
    int rc = read_conversation(conversation, tmpl, purpose, &conv, err);
    if (!rc)
        rc = tmpl == CHAT_LLAMA2 ? chat_render_llama2(&sink, &conv, err)
                                 : chat_render_mistral(&sink, tmpl, &conv, err);
    conversation_free(&conv);
    if (rc) {
        ids->n = ids_before;
        if (loss_mask)
            loss_mask->n = mask_before;
    }
    return rc;
}

int chat_encode(const gale_tokenizer *tok, enum chat_template tmpl, enum chat_purpose purpose,
                const json_t *conversation, gale_ids *ids, gale_bytes *loss_mask,
                gale_error *err)
{
    return chat_encode_with_encoder(tok, NULL, tmpl, purpose, conversation, ids, loss_mask, err);
}
