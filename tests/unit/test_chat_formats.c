/* test_chat_formats: every chat format gale prepare reads gives the ids and loss mask of the
 * equivalent plain {"messages": [...]} record through the same template (so its correctness
 * reduces to the templates', which test_chat and the mistral-common check verify): ShareGPT
 * (with a top-level system, function_call and observation), OpenAI content parts, the
 * developer role, --chat-key. OpenAI call ids map to 9-character v3 ids, the same in a call
 * and its result and from run to run; each refusal's text names the record's key; the
 * untrained check and the dedup text with its near part. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "data/chat.h"
#include "data/chat_formats.h"
#include "data/tokenizer.h"
#include "util/file.h"

static gale_tokenizer *tok_v1, *tok_v3;

/* JSON written with ' for " so that records read naturally here. */
static json_t *js(const char *text)
{
    char *s = gale_xstrdup(text);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    json_error_t jerr;
    json_t *v = json_loads(s, 0, &jerr);
    if (!v) {
        fprintf(stderr, "bad test JSON (%s): %s\n", jerr.text, s);
        exit(1);
    }
    free(s);
    return v;
}

static const gale_tokenizer *tok_for(enum chat_template t)
{
    return t == CHAT_MISTRAL_V3 ? tok_v3 : tok_v1;
}

/* The record through chat_formats and the plain record through chat_encode give the same
 * ids and mask under template t. */
static void expect_same(const char *name, const char *record, const char *chat_key, const char *plain,
                        enum chat_template t)
{
    json_t *rec = js(record), *want = js(plain), *conv = NULL;
    gale_error err;
    int rc = chat_conversation_from_record(rec, chat_key, &conv, &err);
    CHECK_MSG(rc == 0, "%s: %s", name, err.msg);
    gale_ids a = {0}, b = {0};
    gale_bytes ma = {0}, mb = {0};
    if (rc == 0) {
        rc = chat_conversation_encode(tok_for(t), NULL, t, CHAT_FOR_TRAINING, conv, &a, &ma, &err);
        CHECK_MSG(rc == 0, "%s (%s): %s", name, chat_template_name(t), err.msg);
        rc = chat_encode(tok_for(t), t, CHAT_FOR_TRAINING, want, &b, &mb, &err);
        CHECK_MSG(rc == 0, "%s: the plain record: %s", name, err.msg);
        CHECK_MSG(a.n == b.n && a.n > 0 && !memcmp(a.v, b.v, a.n * sizeof *a.v) && !memcmp(ma.v, mb.v, ma.n),
                  "%s (%s): %zu ids differ from the plain record's %zu", name, chat_template_name(t), a.n, b.n);
    }
    gale_ids_free(&a);
    gale_ids_free(&b);
    gale_bytes_free(&ma);
    gale_bytes_free(&mb);
    json_decref(rec);
    json_decref(want);
    json_decref(conv);
}

static void test_equivalent_formats(void)
{
    const char *plain = "{'messages': [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': "
                        "'What is two plus two?'}, {'role': 'assistant', 'content': 'Four.'}, {'role': 'user', "
                        "'content': 'And three plus three?'}, {'role': 'assistant', 'content': 'Six.', 'weight': 1}]}";
    for (int t = CHAT_MISTRAL_V1; t <= CHAT_LLAMA2; t++) {
        enum chat_template tmpl = (enum chat_template)t;
        expect_same("sharegpt",
                    "{'conversations': [{'from': 'system', 'value': 'Be brief.'}, {'from': 'human', 'value': "
                    "'What is two plus two?'}, {'from': 'gpt', 'value': 'Four.'}, {'from': 'human', 'value': "
                    "'And three plus three?'}, {'from': 'gpt', 'value': 'Six.', 'weight': 1}]}",
                    NULL, plain, tmpl);
        expect_same("sharegpt with a top-level system and OpenAI speaker names",
                    "{'system': 'Be brief.', 'conversations': [{'from': 'user', 'value': 'What is two plus two?'}, "
                    "{'from': 'assistant', 'value': 'Four.'}, {'from': 'human', 'value': 'And three plus three?'}, "
                    "{'from': 'gpt', 'value': 'Six.'}]}",
                    NULL, plain, tmpl);
        expect_same("content parts and the developer role",
                    "{'messages': [{'role': 'developer', 'content': [{'type': 'text', 'text': 'Be brief.'}]}, "
                    "{'role': 'user', 'content': [{'type': 'text', 'text': 'What is'}, {'type': 'text', 'text': ''}, "
                    "{'type': 'text', 'text': 'two plus two?'}]}, {'role': 'assistant', 'content': [{'type': "
                    "'text', 'text': 'Four.'}]}, {'role': 'user', 'content': 'And three plus three?'}, {'role': "
                    "'assistant', 'content': 'Six.'}]}",
                    NULL,
                    "{'messages': [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': "
                    "'What is\\n\\ntwo plus two?'}, {'role': 'assistant', 'content': 'Four.'}, {'role': 'user', "
                    "'content': 'And three plus three?'}, {'role': 'assistant', 'content': 'Six.'}]}",
                    tmpl);
        expect_same("chat_key", "{'dialog': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': "
                                "'Hello.', 'weight': 0}, {'role': 'user', 'content': 'Bye'}, {'role': 'assistant', "
                                "'content': 'Bye.'}], 'messages': 'not these'}",
                    "dialog",
                    "{'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello.', "
                    "'weight': 0}, {'role': 'user', 'content': 'Bye'}, {'role': 'assistant', 'content': 'Bye.'}]}",
                    tmpl);
        expect_same("conversation and only_last",
                    "{'conversation': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Yo'}, "
                    "{'role': 'user', 'content': 'Bye'}, {'role': 'assistant', 'content': 'Ciao'}], 'only_last': "
                    "true}",
                    NULL,
                    "{'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Yo'}, "
                    "{'role': 'user', 'content': 'Bye'}, {'role': 'assistant', 'content': 'Ciao'}], 'only_last': "
                    "true}",
                    tmpl);
    }
}

/* The id the conversation made of record gives messages[i].tool_calls[k] (or, k < 0, the
 * tool_call_id of messages[i]), copied into out. */
static void id_of(const char *record, size_t i, int k, char out[64])
{
    json_t *rec = js(record), *conv = NULL;
    gale_error err;
    out[0] = 0;
    if (chat_conversation_from_record(rec, NULL, &conv, &err) == 0) {
        json_t *m = json_array_get(json_object_get(conv, "messages"), i);
        json_t *id = k < 0 ? json_object_get(m, "tool_call_id")
                           : json_object_get(json_array_get(json_object_get(m, "tool_calls"), (size_t)k), "id");
        snprintf(out, 64, "%s", json_is_string(id) ? json_string_value(id) : "");
    } else {
        FAIL("%s", err.msg);
    }
    json_decref(rec);
    json_decref(conv);
}

static int is_v3_id(const char *s)
{
    if (strlen(s) != 9)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')))
            return 0;
    return 1;
}

#define TOOLS "'tools': [{'type': 'function', 'function': {'name': 'get_weather', 'parameters': {}}}]"

static void test_call_ids(void)
{
    const char *openai =
        "{" TOOLS ", 'messages': [{'role': 'user', 'content': 'Weather in Paris and Rome?'}, {'role': "
        "'assistant', 'content': null, 'tool_calls': [{'id': 'call_9f2KxQv81LmZpT0aBcDeFgHi', 'type': "
        "'function', 'function': {'name': 'get_weather', 'arguments': '{\\'city\\': \\'Paris\\'}'}}, {'id': "
        "'call_x', 'type': 'function', 'function': {'name': 'get_weather', 'arguments': '{\\'city\\': "
        "\\'Rome\\'}'}}]}, {'role': 'tool', 'tool_call_id': 'call_x', 'content': '18'}, {'role': 'tool', "
        "'tool_call_id': 'call_9f2KxQv81LmZpT0aBcDeFgHi', 'content': '21'}, {'role': 'assistant', 'content': "
        "'Paris 21, Rome 18.'}]}";
    char call0[64], call1[64], result0[64], result1[64], again[64];
    id_of(openai, 1, 0, call0);
    id_of(openai, 1, 1, call1);
    id_of(openai, 2, -1, result1);
    id_of(openai, 3, -1, result0);
    CHECK_MSG(is_v3_id(call0) && is_v3_id(call1), "mapped ids '%s' '%s'", call0, call1);
    CHECK(strcmp(call0, call1) != 0);
    CHECK(!strcmp(call0, result0) && !strcmp(call1, result1));
    id_of(openai, 1, 0, again);
    CHECK(!strcmp(again, call0));
    /* the same id in another conversation maps alike; a v3 id is kept as it is */
    id_of("{'messages': [{'role': 'user', 'content': 'x'}, {'role': 'assistant', 'tool_calls': [{'id': 'call_x', "
          "'function': {'name': 'f', 'arguments': {}}}]}]}",
          1, 0, again);
    CHECK(!strcmp(again, call1));
    id_of("{'messages': [{'role': 'user', 'content': 'x'}, {'role': 'assistant', 'tool_calls': [{'id': 'abcDEF123', "
          "'function': {'name': 'f', 'arguments': {}}}]}]}",
          1, 0, again);
    CHECK(!strcmp(again, "abcDEF123"));

    /* the record renders as the plain one with those ids, under v3 */
    char plain[2048];
    snprintf(plain, sizeof plain,
             "{" TOOLS ", 'messages': [{'role': 'user', 'content': 'Weather in Paris and Rome?'}, {'role': "
             "'assistant', 'tool_calls': [{'id': '%s', 'function': {'name': 'get_weather', 'arguments': "
             "'{\\'city\\': \\'Paris\\'}'}}, {'id': '%s', 'function': {'name': 'get_weather', 'arguments': "
             "'{\\'city\\': \\'Rome\\'}'}}]}, {'role': 'tool', 'tool_call_id': '%s', 'content': '18'}, {'role': "
             "'tool', 'tool_call_id': '%s', 'content': '21'}, {'role': 'assistant', 'content': 'Paris 21, Rome "
             "18.'}]}",
             call0, call1, call1, call0);
    expect_same("OpenAI call ids", openai, NULL, plain, CHAT_MISTRAL_V3);

    /* ShareGPT: calls get ids, observations answer them in order; tools as JSON text of bare functions */
    const char *sharegpt =
        "{'tools': '[{\\'name\\': \\'get_weather\\', \\'parameters\\': {}}]', 'conversations': [{'from': 'human', "
        "'value': 'Weather in Paris and Rome?'}, {'from': 'function_call', 'value': '[{\\'name\\': "
        "\\'get_weather\\', \\'arguments\\': {\\'city\\': \\'Paris\\'}}, {\\'name\\': \\'get_weather\\', "
        "\\'arguments\\': {\\'city\\': \\'Rome\\'}}]'}, {'from': 'observation', 'value': '21'}, {'from': "
        "'observation', 'value': '18'}, {'from': 'gpt', 'value': 'Paris 21, Rome 18.'}]}";
    id_of(sharegpt, 1, 0, call0);
    id_of(sharegpt, 1, 1, call1);
    id_of(sharegpt, 2, -1, result0);
    id_of(sharegpt, 3, -1, result1);
    CHECK_MSG(is_v3_id(call0) && is_v3_id(call1) && strcmp(call0, call1), "ShareGPT ids '%s' '%s'", call0, call1);
    CHECK(!strcmp(call0, result0) && !strcmp(call1, result1));
    snprintf(plain, sizeof plain,
             "{" TOOLS ", 'messages': [{'role': 'user', 'content': 'Weather in Paris and Rome?'}, {'role': "
             "'assistant', 'tool_calls': [{'id': '%s', 'function': {'name': 'get_weather', 'arguments': {'city': "
             "'Paris'}}}, {'id': '%s', 'function': {'name': 'get_weather', 'arguments': {'city': 'Rome'}}}]}, "
             "{'role': 'tool', 'tool_call_id': '%s', 'content': '21'}, {'role': 'tool', 'tool_call_id': '%s', "
             "'content': '18'}, {'role': 'assistant', 'content': 'Paris 21, Rome 18.'}]}",
             call0, call1, call0, call1);
    expect_same("ShareGPT function_call and observation", sharegpt, NULL, plain, CHAT_MISTRAL_V3);
}

/* record is refused with exactly want (chat_key NULL; the template v3). */
static void expect_refusal(const char *record, const char *want)
{
    json_t *rec = js(record), *conv = NULL;
    gale_error err;
    int rc = chat_conversation_from_record(rec, NULL, &conv, &err);
    if (rc == 0) {
        gale_ids ids = {0};
        rc = chat_conversation_encode(tok_v3, NULL, CHAT_MISTRAL_V3, CHAT_FOR_TRAINING, conv, &ids, NULL, &err);
        gale_ids_free(&ids);
    }
    CHECK_MSG(rc < 0 && !strcmp(err.msg, want), "got '%s', want '%s'", rc < 0 ? err.msg : "(accepted)", want);
    json_decref(rec);
    json_decref(conv);
}

static void test_refusals(void)
{
    expect_refusal("{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'}, "
                   "{'role': 'user', 'content': 'c'}, {'role': 'assistant', 'content': 4}]}",
                   "messages[3].content: expected a string or text parts, got a number");
    expect_refusal("{'messages': [{'role': 'user', 'content': [{'type': 'text', 'text': 'look'}, {'type': "
                   "'image_url', 'image_url': {'url': 'x.png'}}]}, {'role': 'assistant', 'content': 'ok'}]}",
                   "messages[0].content[1]: a \"image_url\" part: only text parts can be trained (images and "
                   "audio are not supported)");
    expect_refusal("{'messages': [{'role': 'user', 'content': ['plain']}]}",
                   "messages[0].content[0]: expected a text part {\"type\": \"text\", \"text\": ...}, got a string");
    expect_refusal("{'messages': [{'role': 'user', 'content': [{'text': 'x'}]}]}",
                   "messages[0].content[0]: missing key \"type\"");
    expect_refusal("{'messages': [{'role': 'user', 'content': [{'type': 'text', 'text': 1}]}]}",
                   "messages[0].content[0].text: expected a string, got a number");
    expect_refusal("{'messages': [{'content': 'x'}]}", "messages[0]: missing key \"role\" (or ShareGPT's \"from\")");
    expect_refusal("{'messages': [{'role': 'bot', 'content': 'x'}]}",
                   "messages[0].role: unknown role \"bot\" (expected system, developer, user, assistant or tool)");
    expect_refusal("{'messages': [{'role': 1, 'content': 'x'}]}", "messages[0].role: expected a string, got a number");
    expect_refusal("{'messages': [3]}", "messages[0]: expected an object, got a number");
    expect_refusal("{'messages': {}}", "messages: expected an array of messages, got an object");
    expect_refusal("{'text': 'x'}",
                   "no \"messages\", \"conversations\" or \"conversation\" key (give --chat-key for another)");
    expect_refusal("[1]", "the record is an array, not an object");
    expect_refusal("{'conversations': [{'from': 'human', 'value': 'x'}, {'from': 'bot', 'value': 'y'}]}",
                   "conversations[1].from: unknown speaker \"bot\" (expected human, gpt, system, function_call, "
                   "observation, tool, user or assistant)");
    expect_refusal("{'conversations': [{'from': 'human', 'value': 'x'}, {'from': 'gpt'}]}",
                   "conversations[1]: missing key \"value\"");
    expect_refusal("{'conversations': [{'from': 'human', 'value': 'x'}, {'from': 'gpt', 'value': 2}]}",
                   "conversations[1].value: expected a string or text parts, got a number");
    expect_refusal("{'conversations': [{'from': 'human', 'value': 'x'}, {'from': 'observation', 'value': '2'}]}",
                   "conversations[1]: a tool result with no function_call before it left to answer");
    expect_refusal("{'conversations': [{'from': 'human', 'value': 'x'}, {'from': 'function_call', 'value': "
                   "'not json'}]}",
                   "conversations[1].value: a function_call is JSON {\"name\": ..., \"arguments\": ...} or a "
                   "non-empty list of them");
    expect_refusal("{'tools': 'oops', 'messages': [{'role': 'user', 'content': 'x'}]}",
                   "tools: expected an array (or JSON text of one), got a string");
    /* the template's refusals name the record's key and index, past a top-level system */
    expect_refusal("{'conversations': [{'from': 'human', 'value': 'x'}, {'from': 'gpt', 'value': 'y'}, {'from': "
                   "'human', 'value': 'z'}]}",
                   "conversations[2]: training data must end with an assistant message, not a user message");
    expect_refusal("{'system': 's', 'conversations': [{'from': 'human', 'value': 'x'}, {'from': 'gpt', 'value': "
                   "'y'}, {'from': 'human', 'value': 'z'}]}",
                   "conversations[2]: training data must end with an assistant message, not a user message");
    expect_refusal("{'messages': [{'role': 'user', 'content': 'x'}, {'role': 'assistant', 'tool_calls': [{'id': "
                   "'call_1', 'function': {'name': 'bad name', 'arguments': {}}}]}]}",
                   "messages[1].tool_calls[0].function.name: \"bad name\" is not 1 to 64 letters, digits, '_' or '-'");
}

static int trains(const char *record)
{
    json_t *rec = js(record), *conv = NULL;
    gale_error err;
    int r = chat_conversation_from_record(rec, NULL, &conv, &err) == 0 && chat_conversation_trains(conv);
    json_decref(rec);
    json_decref(conv);
    return r;
}

static void test_trains_and_text(void)
{
    CHECK(trains("{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'}]}"));
    CHECK(!trains("{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b', 'weight': "
                  "0}, {'role': 'user', 'content': 'c'}, {'role': 'assistant', 'content': 'd', 'weight': 0.0}]}"));
    CHECK(trains("{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'}, {'role': "
                 "'user', 'content': 'c'}, {'role': 'assistant', 'content': 'd', 'weight': 0}]}"));
    CHECK(!trains("{'only_last': true, 'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', "
                  "'content': 'b'}, {'role': 'user', 'content': 'c'}, {'role': 'assistant', 'content': 'd', "
                  "'weight': 0}]}"));

    json_t *rec = js("{'messages': [{'role': 'user', 'content': 'q'}, {'role': 'system', 'content': 'S1'}, {'role': "
                     "'assistant', 'tool_calls': [{'id': 'call_a', 'function': {'name': 'f', 'arguments': "
                     "{'x': 1}}}]}, {'role': 'developer', 'content': 'S2'}]}"),
           *conv = NULL;
    gale_error err;
    CHECK_OK(chat_conversation_from_record(rec, NULL, &conv, &err), err);
    gale_bytes text = {0};
    size_t near_from = 99;
    chat_conversation_text(conv, &text, &near_from);
    const char want[] = "S1\nS2\nq\n{\"arguments\":{\"x\":1},\"name\":\"f\"}\n";
    CHECK_MSG(text.n == strlen(want) && !memcmp(text.v, want, text.n), "text '%.*s'", (int)text.n, text.v);
    CHECK(near_from == 6);
    gale_bytes_free(&text);
    json_decref(rec);
    json_decref(conv);
}

int main(void)
{
    const char *shared = getenv("GALE_SHARED");
    if (!shared) {
        printf("SKIP: GALE_SHARED is not set (ctest sets it)\n");
        return 77;
    }
    char path[1024];
    gale_error err;
    snprintf(path, sizeof path, "%s/tokenizers/mistral-v1.model", shared);
    tok_v1 = tokenizer_load(path, &err);
    snprintf(path, sizeof path, "%s/tokenizers/mistral-v3.model", shared);
    tok_v3 = tok_v1 ? tokenizer_load(path, &err) : NULL;
    if (!tok_v3) {
        printf("SKIP: %s\n", err.msg);
        tokenizer_free(tok_v1);
        return 77;
    }
    test_equivalent_formats();
    test_call_ids();
    test_refusals();
    test_trains_and_text();
    tokenizer_free(tok_v1);
    tokenizer_free(tok_v3);
    return check_report("test_chat_formats");
}
