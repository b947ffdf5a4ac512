/* chat_formats: OpenAI, mistral-finetune and ShareGPT records to chat_encode's conversation. */
#include "data/chat_formats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "data/chat_internal.h"
#include "data/pyjson.h"

/* The keys searched, in order, when no chat_key is given. */
static const char *const default_keys[] = {"messages", "conversations", "conversation"};

/* Where the canonical conversation remembers its origin: "gale_source": {"key": K, "first": F}
 * means messages[i] is K[i - F] of the record, and messages[i < F] its top-level "system". */
#define SOURCE "gale_source"

enum speaker { SPEAKER_SYSTEM, SPEAKER_USER, SPEAKER_ASSISTANT, SPEAKER_TOOL, SPEAKER_CALL };
static const char *const speaker_roles[] = {"system", "user", "assistant", "tool", "assistant"};

struct speaker_name {
    const char *name;
    enum speaker speaker;
};

/* OpenAI's roles, with "developer" (its newer name for system). */
static const struct speaker_name role_names[] = {
    {"system", SPEAKER_SYSTEM}, {"developer", SPEAKER_SYSTEM}, {"user", SPEAKER_USER},
    {"assistant", SPEAKER_ASSISTANT}, {"tool", SPEAKER_TOOL}};
/* ShareGPT's speakers, with the OpenAI names some datasets use there. */
static const struct speaker_name from_names[] = {
    {"human", SPEAKER_USER},       {"user", SPEAKER_USER},
    {"gpt", SPEAKER_ASSISTANT},    {"assistant", SPEAKER_ASSISTANT},
    {"system", SPEAKER_SYSTEM},    {"function_call", SPEAKER_CALL},
    {"observation", SPEAKER_TOOL}, {"tool", SPEAKER_TOOL}};

/* What is being converted: the record's key (for messages) and the ids of calls that no
 * result has answered yet (ShareGPT observations take them in order). */
struct reading {
    const char *key;
    json_t *pending; /* array of id strings */
    json_t *ids;     /* mapped id -> original, to refuse two ids that map alike */
};

/* 9 base-62 digits of the hash of text. */
static void hashed_id(const void *text, size_t len, char out[10])
{
    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    uint64_t h = XXH3_64bits(text, len);
    for (int i = 0; i < 9; i++, h /= 62)
        out[i] = digits[h % 62];
    out[9] = 0;
}

/* The v3 form of a call id (a new string): kept when it has it, else hashed. Two different
 * ids of one conversation that map to the same one are refused (odds about 1e-16). */
static json_t *map_id(struct reading *r, const json_t *id, const char *where, gale_error *err)
{
    const char *s = json_string_value(id);
    size_t n = json_string_length(id);
    if ((n == 4 && !memcmp(s, "null", 4)) || chat_is_call_id(s, n))
        return json_incref((json_t *)id);
    char mapped[10];
    hashed_id(s, n, mapped);
    const json_t *seen = json_object_get(r->ids, mapped);
    if (seen && !json_equal(seen, id)) {
        gale_fail(err, "%s: the call ids \"%.40s\" and \"%.40s\" map to the same 9-character id; rename one",
                  where, json_string_value(seen), s);
        return NULL;
    }
    json_object_set(r->ids, mapped, (json_t *)id);
    return json_string(mapped);
}

/* A string, null, or OpenAI text parts joined as mistral-common joins them: into *out (a new
 * reference, NULL for null or absent). */
static int read_content(const json_t *content, const char *where, json_t **out, gale_error *err)
{
    *out = NULL;
    if (!content || json_is_null(content))
        return 0;
    if (json_is_string(content)) {
        *out = json_incref((json_t *)content);
        return 0;
    }
    if (!json_is_array(content))
        return gale_fail(err, "%s: expected a string or text parts, got %s", where, chat_json_type(content));
    gale_bytes text = {0};
    size_t k;
    const json_t *part;
    json_array_foreach(content, k, part) {
        const json_t *type = json_object_get(part, "type"), *t = json_object_get(part, "text");
        int rc = 0;
        if (!json_is_object(part))
            rc = gale_fail(err, "%s[%zu]: expected a text part {\"type\": \"text\", \"text\": ...}, got %s", where,
                           k, chat_json_type(part));
        else if (!type)
            rc = gale_fail(err, "%s[%zu]: missing key \"type\"", where, k);
        else if (!json_is_string(type))
            rc = gale_fail(err, "%s[%zu].type: expected a string, got %s", where, k, chat_json_type(type));
        else if (strcmp(json_string_value(type), "text"))
            rc = gale_fail(err, "%s[%zu]: a \"%.40s\" part: only text parts can be trained (images and audio are "
                                "not supported)", where, k, json_string_value(type));
        else if (!json_is_string(t))
            rc = gale_fail(err, "%s[%zu].text: expected a string, got %s", where, k, t ? chat_json_type(t) : "nothing");
        if (rc < 0) {
            gale_bytes_free(&text);
            return -1;
        }
        if (json_string_length(t) == 0)
            continue;
        if (text.n)
            gale_bytes_append(&text, "\n\n", 2);
        gale_bytes_append(&text, json_string_value(t), json_string_length(t));
    }
    *out = json_stringn(text.n ? (const char *)text.v : "", text.n);
    gale_bytes_free(&text);
    return 0;
}

static int find_speaker(const json_t *name, const struct speaker_name *names, size_t n,
                        enum speaker *out)
{
    for (size_t k = 0; k < n; k++)
        if (json_is_string(name) && !strcmp(json_string_value(name), names[k].name)) {
            *out = names[k].speaker;
            return 0;
        }
    return -1;
}

/* OpenAI's tool_calls with v3 ids; the rest of each call is chat.c's to check. */
static int map_calls(struct reading *r, const json_t *calls, size_t i, json_t **out, gale_error *err)
{
    *out = json_deep_copy(calls);
    size_t k;
    json_t *call;
    json_array_foreach(*out, k, call) {
        json_t *id = json_object_get(call, "id");
        if (!json_is_string(id))
            continue;
        char where[320];
        snprintf(where, sizeof where, "%.200s[%zu].tool_calls[%zu].id", r->key, i, k);
        json_t *mapped = map_id(r, id, where, err);
        if (!mapped)
            return -1;
        json_object_set_new(call, "id", mapped);
    }
    return 0;
}

/* A ShareGPT function_call's value: {"name", "arguments"} or a list of them, as JSON text or
 * as it is. Each call gets the id hashed from its position and itself, and waits for its
 * observation. */
static int sharegpt_calls(struct reading *r, const json_t *value, size_t i, json_t *msg, gale_error *err)
{
    json_t *v = json_is_string(value) ? pyjson_parse(json_string_value(value), json_string_length(value))
                                      : json_incref((json_t *)value);
    json_t *list = json_is_array(v) ? json_incref(v) : json_pack("[O]", v);
    json_decref(v);
    json_t *calls = json_array();
    size_t k;
    const json_t *c;
    int rc = json_array_size(list) ? 0 : -1;
    json_array_foreach(list, k, c) {
        if (!json_is_object(c) || !json_is_string(json_object_get(c, "name"))) {
            rc = -1;
            break;
        }
        char *call = json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS);
        gale_bytes position = {0};
        char at[64];
        gale_bytes_append(&position, at, (size_t)snprintf(at, sizeof at, "[%zu][%zu]", i, k));
        if (call)
            gale_bytes_append(&position, call, strlen(call));
        free(call);
        char id[10];
        hashed_id(position.v, position.n, id);
        gale_bytes_free(&position);
        const json_t *args = json_object_get(c, "arguments");
        json_array_append_new(calls, json_pack("{s:s, s:s, s:{s:O, s:O}}", "id", id, "type", "function",
                                               "function", "name", json_object_get(c, "name"), "arguments",
                                               args ? args : json_null()));
        json_array_append_new(r->pending, json_string(id));
    }
    json_decref(list);
    if (rc < 0) {
        json_decref(calls);
        return gale_fail(err, "%s[%zu].value: a function_call is JSON {\"name\": ..., \"arguments\": ...} or a "
                              "non-empty list of them", r->key, i);
    }
    json_object_set_new(msg, "tool_calls", calls);
    return 0;
}

/* One message of the record, in chat.c's form. */
static int read_message(struct reading *r, const json_t *in, size_t i, json_t *messages, gale_error *err)
{
    if (!json_is_object(in))
        return gale_fail(err, "%s[%zu]: expected an object, got %s", r->key, i, chat_json_type(in));
    const json_t *role = json_object_get(in, "role");
    bool sharegpt = !role && json_object_get(in, "from");
    const char *role_key = sharegpt ? "from" : "role";
    const json_t *name = sharegpt ? json_object_get(in, "from") : role;
    enum speaker who;
    if (!name)
        return gale_fail(err, "%s[%zu]: missing key \"role\" (or ShareGPT's \"from\")", r->key, i);
    if (!json_is_string(name))
        return gale_fail(err, "%s[%zu].%s: expected a string, got %s", r->key, i, role_key, chat_json_type(name));
    if (sharegpt ? find_speaker(name, from_names, sizeof from_names / sizeof *from_names, &who)
                 : find_speaker(name, role_names, sizeof role_names / sizeof *role_names, &who))
        return gale_fail(err, "%s[%zu].%s: unknown %s \"%.40s\" (expected %s)", r->key, i, role_key,
                         sharegpt ? "speaker" : "role", json_string_value(name),
                         sharegpt ? "human, gpt, system, function_call, observation, tool, user or assistant"
                                  : "system, developer, user, assistant or tool");

    const char *content_key = sharegpt && json_object_get(in, "value") ? "value" : "content";
    if (sharegpt && !json_object_get(in, content_key))
        return gale_fail(err, "%s[%zu]: missing key \"value\"", r->key, i);
    json_t *msg = json_pack("{s:s}", "role", speaker_roles[who]);
    json_array_append_new(messages, msg);
    static const char *const kept[] = {"weight", "name"};
    for (size_t k = 0; k < sizeof kept / sizeof *kept; k++)
        if (json_object_get(in, kept[k]))
            json_object_set(msg, kept[k], json_object_get(in, kept[k]));
    char where[320];
    snprintf(where, sizeof where, "%.200s[%zu].%s", r->key, i, content_key);
    if (who == SPEAKER_CALL)
        return sharegpt_calls(r, json_object_get(in, content_key), i, msg, err);
    json_t *content;
    if (read_content(json_object_get(in, content_key), where, &content, err) < 0)
        return -1;
    if (content)
        json_object_set_new(msg, "content", content);

    const json_t *calls = json_object_get(in, "tool_calls");
    if (json_is_array(calls)) {
        json_t *mapped;
        if (map_calls(r, calls, i, &mapped, err) < 0) {
            json_decref(mapped);
            return -1;
        }
        json_object_set_new(msg, "tool_calls", mapped);
    } else if (calls) {
        json_object_set(msg, "tool_calls", (json_t *)calls); /* chat.c names what is wrong */
    }
    if (who != SPEAKER_TOOL)
        return 0;
    const json_t *id = json_object_get(in, "tool_call_id");
    if (json_is_string(id)) {
        snprintf(where, sizeof where, "%.200s[%zu].tool_call_id", r->key, i);
        json_t *mapped = map_id(r, id, where, err);
        if (!mapped)
            return -1;
        json_object_set_new(msg, "tool_call_id", mapped);
    } else if (id) {
        json_object_set(msg, "tool_call_id", (json_t *)id);
    } else if (sharegpt) {
        if (json_array_size(r->pending) == 0)
            return gale_fail(err, "%s[%zu]: a tool result with no function_call before it left to answer",
                             r->key, i);
        json_object_set(msg, "tool_call_id", json_array_get(r->pending, 0));
        json_array_remove(r->pending, 0);
    }
    return 0;
}

/* ShareGPT writes tools as JSON text and as bare functions; chat.c reads OpenAI's list. */
static int read_tools(const json_t *tools, json_t *conv, gale_error *err)
{
    if (!tools || json_is_null(tools))
        return 0;
    json_t *list = json_is_string(tools) ? pyjson_parse(json_string_value(tools), json_string_length(tools))
                                         : json_incref((json_t *)tools);
    if (json_is_string(tools) && json_string_length(tools) == 0) {
        json_decref(list);
        return 0;
    }
    if (!json_is_array(list)) {
        json_decref(list);
        return gale_fail(err, "tools: expected an array (or JSON text of one), got %s", chat_json_type(tools));
    }
    json_t *out = json_array();
    size_t k;
    json_t *t;
    json_array_foreach(list, k, t) {
        bool bare = json_is_object(t) && !json_object_get(t, "function") && json_object_get(t, "name");
        json_array_append_new(out, bare ? json_pack("{s:s, s:O}", "type", "function", "function", t)
                                        : json_incref(t));
    }
    json_decref(list);
    json_object_set_new(conv, "tools", out);
    return 0;
}

static const char *find_key(const json_t *record, const char *chat_key, const json_t **messages)
{
    if (chat_key && *chat_key) {
        *messages = json_object_get(record, chat_key);
        return chat_key;
    }
    for (size_t k = 0; k < sizeof default_keys / sizeof *default_keys; k++)
        if ((*messages = json_object_get(record, default_keys[k])))
            return default_keys[k];
    return NULL;
}

/* An id chat.c reads as it is: absent or not a string (chat.c refuses those), "null", or 9
 * letters or digits. */
static bool is_kept_id(const json_t *id)
{
    const char *s = json_string_value(id);
    size_t n = json_string_length(id);
    return !s || (n == 4 && !memcmp(s, "null", 4)) || chat_is_call_id(s, n);
}

/* A record that is already chat.c's conversation: "messages" of OpenAI's roles but developer,
 * string contents, v3 call ids, tools in OpenAI's shape. Most records are, and are used as
 * they are rather than copied. */
static bool is_canonical(const json_t *record, const char *key, const json_t *messages)
{
    if (strcmp(key, "messages") || json_object_get(record, SOURCE))
        return false;
    const json_t *tools = json_object_get(record, "tools"), *t, *m, *call;
    if (tools && !json_is_null(tools) && !json_is_array(tools))
        return false;
    size_t i, k;
    json_array_foreach(tools, i, t)
        if (json_is_object(t) && !json_object_get(t, "function") && json_object_get(t, "name"))
            return false;
    json_array_foreach(messages, i, m) {
        const json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        enum speaker who;
        if (find_speaker(role, role_names, sizeof role_names / sizeof *role_names, &who) ||
            !strcmp(json_string_value(role), "developer"))
            return false;
        if ((content && !json_is_string(content) && !json_is_null(content)) ||
            !is_kept_id(json_object_get(m, "tool_call_id")))
            return false;
        json_array_foreach(json_object_get(m, "tool_calls"), k, call)
            if (!is_kept_id(json_object_get(call, "id")))
                return false;
    }
    return true;
}

int chat_conversation_from_record(const json_t *record, const char *chat_key, json_t **out,
                                  gale_error *err)
{
    *out = NULL;
    if (!json_is_object(record))
        return gale_fail(err, "the record is %s, not an object", chat_json_type(record));
    const json_t *in;
    const char *key = find_key(record, chat_key, &in);
    if (!key || !in) {
        if (key)
            gale_fail(err, "missing key \"%s\"", key);
        else
            gale_fail(err, "no \"messages\", \"conversations\" or \"conversation\" key (give --chat-key for another)");
        return CHAT_NO_MESSAGES;
    }
    if (!json_is_array(in))
        return gale_fail(err, "%s: expected an array of messages, got %s", key, chat_json_type(in));
    if (is_canonical(record, key, in)) {
        *out = json_incref((json_t *)record);
        return 0;
    }

    struct reading r = {key, json_array(), json_object()};
    json_t *conv = json_object(), *messages = json_array();
    json_object_set_new(conv, "messages", messages);
    size_t first = 0;
    int rc = 0;
    const json_t *system = json_object_get(record, "system");
    const json_t *m0 = json_array_get(in, 0);
    if (json_string_length(system) > 0 && json_is_object(m0) && !json_object_get(m0, "role") && json_object_get(m0, "from")) {
        json_array_append_new(messages, json_pack("{s:s, s:O}", "role", "system", "content", system));
        first = 1;
    }
    size_t i;
    const json_t *msg;
    json_array_foreach(in, i, msg)
        if ((rc = read_message(&r, msg, i, messages, err)) < 0)
            break;
    if (rc == 0)
        rc = read_tools(json_object_get(record, "tools"), conv, err);
    const json_t *only_last = json_object_get(record, "only_last");
    if (only_last)
        json_object_set(conv, "only_last", (json_t *)only_last);
    json_object_set_new(conv, SOURCE, json_pack("{s:s, s:I}", "key", key, "first", (json_int_t)first));
    json_decref(r.pending);
    json_decref(r.ids);
    if (rc < 0) {
        json_decref(conv);
        return -1;
    }
    *out = conv;
    return 0;
}

/* Rewrites the "messages[i]" that chat.c's messages start with into the record's own key. */
static void name_source(const json_t *conversation, gale_error *err)
{
    const json_t *source = json_object_get(conversation, SOURCE);
    const char *key = json_string_value(json_object_get(source, "key"));
    size_t first = (size_t)json_integer_value(json_object_get(source, "first"));
    if (!key || strncmp(err->msg, "messages", 8) || (!strcmp(key, "messages") && first == 0))
        return;
    const char *rest = err->msg + 8;
    char head[160];
    if (*rest == '[') {
        char *end;
        size_t i = strtoul(rest + 1, &end, 10);
        if (*end != ']')
            return;
        rest = end + 1;
        if (i < first)
            snprintf(head, sizeof head, "system");
        else
            snprintf(head, sizeof head, "%s[%zu]", key, i - first);
    } else {
        snprintf(head, sizeof head, "%s", key);
    }
    char *tail = gale_xstrdup(rest);
    snprintf(err->msg, sizeof err->msg, "%s%s", head, tail);
    free(tail);
}

int chat_conversation_encode(const gale_tokenizer *tok, tokenizer_encoder *enc,
                             enum chat_template tmpl, enum chat_purpose purpose,
                             const json_t *conversation, gale_ids *ids, gale_bytes *loss_mask,
                             gale_error *err)
{
    int rc = chat_encode_with_encoder(tok, enc, tmpl, purpose, conversation, ids, loss_mask, err);
    if (rc < 0)
        name_source(conversation, err);
    return rc;
}

static bool is_zero_weight(const json_t *msg)
{
    const json_t *w = json_object_get(msg, "weight");
    return json_is_number(w) && json_number_value(w) == 0.0;
}

bool chat_conversation_trains(const json_t *conversation)
{
    const json_t *messages = json_object_get(conversation, "messages");
    bool only_last = json_is_true(json_object_get(conversation, "only_last"));
    bool any_assistant = false;
    for (size_t i = json_array_size(messages); i-- > 0;) {
        const json_t *m = json_array_get(messages, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!role || strcmp(role, "assistant"))
            continue;
        any_assistant = true;
        if (!is_zero_weight(m))
            return true;
        if (only_last)
            return false;
    }
    return !any_assistant; /* no answer at all is chat.c's to refuse, with its reason */
}

static void append_message(gale_bytes *text, const json_t *m)
{
    const json_t *content = json_object_get(m, "content");
    if (json_is_string(content))
        gale_bytes_append(text, json_string_value(content), json_string_length(content));
    size_t k;
    const json_t *call;
    json_array_foreach(json_object_get(m, "tool_calls"), k, call) {
        char *dump = json_dumps(json_object_get(call, "function"), JSON_COMPACT | JSON_SORT_KEYS);
        if (dump)
            gale_bytes_append(text, dump, strlen(dump));
        free(dump);
    }
    gale_bytes_push(text, '\n');
}

static bool is_system(const json_t *m)
{
    const char *role = json_string_value(json_object_get(m, "role"));
    return role && !strcmp(role, "system");
}

void chat_conversation_text(const json_t *conversation, gale_bytes *text, size_t *near_from)
{
    const json_t *messages = json_object_get(conversation, "messages");
    text->n = 0;
    size_t i;
    const json_t *m;
    json_array_foreach(messages, i, m)
        if (is_system(m))
            append_message(text, m);
    *near_from = text->n;
    json_array_foreach(messages, i, m)
        if (!is_system(m))
            append_message(text, m);
}
