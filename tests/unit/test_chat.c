/* test_chat: the chat templates' ids and loss masks against sequences built here piece by
 * piece from the tokenizer (so each rule is checked on its own: where the system prompt
 * goes, how runs of messages merge, which ids are trained), training data against the
 * mistral-common vectors' prefixes, Python's json.dumps forms, and every refusal naming
 * the message and key at fault. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "data/chat.h"
#include "data/pyjson.h"
#include "data/tokenizer.h"
#include "util/file.h"

/* JSON written with ' for " so that conversations read naturally here. */
static json_t *conv(const char *text)
{
    char *s = gale_xstrdup(text);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    json_error_t jerr;
    json_t *v = json_loads(s, JSON_ALLOW_NUL, &jerr);
    if (!v) {
        fprintf(stderr, "bad test JSON (%s): %s\n", jerr.text, s);
        exit(1);
    }
    free(s);
    return v;
}

/* An expected encoding, built piece by piece. */
struct seq {
    const gale_tokenizer *tok;
    gale_ids ids;
    gale_bytes mask;
};

static void text(struct seq *s, const char *t, int m)
{
    size_t before = s->ids.n;
    tokenizer_encode(s->tok, t, strlen(t), &s->ids);
    gale_bytes_fill(&s->mask, (uint8_t)m, s->ids.n - before);
}

static void piece(struct seq *s, const char *p, int m)
{
    int id = tokenizer_piece_id(s->tok, p);
    if (id < 0) {
        fprintf(stderr, "no piece %s\n", p);
        exit(1);
    }
    gale_ids_push(&s->ids, id);
    gale_bytes_push(&s->mask, (uint8_t)m);
}

/* A v3 user turn: [INST], its text, [/INST], none of them trained. */
static void inst(struct seq *s, const char *t)
{
    piece(s, "[INST]", 0), text(s, t, 0), piece(s, "[/INST]", 0);
}

static void seq_free(struct seq *s)
{
    gale_ids_free(&s->ids);
    gale_bytes_free(&s->mask);
}

static void expect_encoding_of(const char *name, enum chat_template tmpl,
                               enum chat_purpose purpose, const json_t *c, struct seq *want)
{
    gale_ids ids = {0};
    gale_bytes mask = {0};
    gale_error err;
    int rc = chat_encode(want->tok, tmpl, purpose, c, &ids, &mask, &err);
    CHECK_MSG(rc == 0, "%s: %s", name, err.msg);
    int same = rc == 0 && ids.n == want->ids.n && mask.n == ids.n &&
               !memcmp(ids.v, want->ids.v, ids.n * sizeof *ids.v) && !memcmp(mask.v, want->mask.v, mask.n);
    if (rc == 0)
        CHECK_MSG(same, "%s: ids or mask differ", name);
    if (rc == 0 && !same) {
        fprintf(stderr, "  got  ");
        for (size_t i = 0; i < ids.n; i++)
            fprintf(stderr, "%d%s ", ids.v[i], i < mask.n && mask.v[i] ? "*" : "");
        fprintf(stderr, "\n  want ");
        for (size_t i = 0; i < want->ids.n; i++)
            fprintf(stderr, "%d%s ", want->ids.v[i], want->mask.v[i] ? "*" : "");
        fprintf(stderr, "\n");
    }
    gale_ids_free(&ids);
    gale_bytes_free(&mask);
    seq_free(want);
}

static void expect_encoding(const char *name, enum chat_template tmpl, enum chat_purpose purpose,
                            const char *conversation, struct seq *want)
{
    json_t *c = conv(conversation);
    expect_encoding_of(name, tmpl, purpose, c, want);
    json_decref(c);
}

static void expect_error(const char *name, const gale_tokenizer *tok, enum chat_template tmpl,
                         enum chat_purpose purpose, const char *conversation, const char *want)
{
    json_t *c = conv(conversation);
    gale_ids ids = {0};
    gale_bytes mask = {0};
    gale_ids_push(&ids, 7);
    gale_bytes_push(&mask, 1);
    gale_error err = {{0}};
    int rc = chat_encode(tok, tmpl, purpose, c, &ids, &mask, &err);
    CHECK_MSG(rc == -1 && strstr(err.msg, want), "%s: rc %d, message \"%s\", want one containing \"%s\"", name, rc,
              err.msg, want);
    CHECK_MSG(ids.n == 1 && mask.n == 1, "%s: a failed encoding left %zu ids, %zu mask bytes (want 1, 1)", name, ids.n,
              mask.n);
    gale_ids_free(&ids);
    gale_bytes_free(&mask);
    json_decref(c);
}

static gale_tokenizer *load(const char *shared, const char *model)
{
    char *dir = gale_path_join(shared, "tokenizers");
    char *path = gale_path_join(dir, model);
    gale_error err;
    gale_tokenizer *tok = tokenizer_load(path, &err);
    if (!tok) {
        fprintf(stderr, "FAIL %s\n", err.msg);
        exit(1);
    }
    free(path);
    free(dir);
    return tok;
}

static void test_v3_system_merging_and_masks(const gale_tokenizer *v3)
{
    /* the system prompt goes in front of the LAST user message; a trailing space of an
     * answer is stripped; weight 0 leaves an answer untrained, </s> included */
    struct seq s = {.tok = v3};
    piece(&s, "<s>", 0);
    inst(&s, "Hi");
    text(&s, "Hello!", 1), piece(&s, "</s>", 1);
    inst(&s, "2+2?");
    text(&s, "4", 0), piece(&s, "</s>", 0);
    inst(&s, "Be brief.\n\nAnd exact.\n\n3+3?");
    text(&s, "6", 1), piece(&s, "</s>", 1);
    expect_encoding("v3 system prompt, weight 0", CHAT_MISTRAL_V3, CHAT_FOR_TRAINING,
                    "{'messages': [{'role': 'system', 'content': 'Be brief.'},"
                    " {'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!  '},"
                    " {'role': 'user', 'content': '2+2?'}, {'role': 'system', 'content': 'And exact.'},"
                    " {'role': 'assistant', 'content': '4', 'weight': 0},"
                    " {'role': 'user', 'content': '3+3?'}, {'role': 'assistant', 'content': '6', 'weight': 1}]}",
                    &s);

    /* only_last: earlier answers are context, not targets */
    s = (struct seq){.tok = v3};
    piece(&s, "<s>", 0);
    inst(&s, "Hi");
    text(&s, "Hello!", 0), piece(&s, "</s>", 0);
    inst(&s, "2+2?");
    text(&s, "4", 1), piece(&s, "</s>", 1);
    expect_encoding("v3 only_last", CHAT_MISTRAL_V3, CHAT_FOR_TRAINING,
                    "{'only_last': true, 'messages': [{'role': 'user', 'content': 'Hi'},"
                    " {'role': 'assistant', 'content': 'Hello!'}, {'role': 'user', 'content': '2+2?'},"
                    " {'role': 'assistant', 'content': '4'}]}", &s);

    /* consecutive user (and assistant) messages merge with "\n\n"; a system message
     * between two user messages splits them; an empty content is skipped in the join */
    s = (struct seq){.tok = v3};
    piece(&s, "<s>", 0);
    inst(&s, "a\n\nb");
    inst(&s, "S\n\nc");
    text(&s, "x\n\ny", 1), piece(&s, "</s>", 1);
    expect_encoding("v3 merging runs", CHAT_MISTRAL_V3, CHAT_FOR_TRAINING,
                    "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'user', 'content': ''},"
                    " {'role': 'user', 'content': 'b'}, {'role': 'system', 'content': 'S'},"
                    " {'role': 'user', 'content': 'c'}, {'role': 'assistant', 'content': 'x'},"
                    " {'role': 'assistant', 'content': 'y'}]}", &s);

    /* assistant messages of different weights stay apart, each with its </s> */
    s = (struct seq){.tok = v3};
    piece(&s, "<s>", 0);
    inst(&s, "q");
    text(&s, "x", 0), piece(&s, "</s>", 0);
    text(&s, "y", 1), piece(&s, "</s>", 1);
    expect_encoding("v3 weights split runs", CHAT_MISTRAL_V3, CHAT_FOR_TRAINING,
                    "{'messages': [{'role': 'user', 'content': 'q'},"
                    " {'role': 'assistant', 'content': 'x', 'weight': 0},"
                    " {'role': 'assistant', 'content': 'y'}]}", &s);

    /* no user message first: an empty one is put in front, and takes the system prompt */
    s = (struct seq){.tok = v3};
    piece(&s, "<s>", 0);
    inst(&s, "S\n\n");
    text(&s, "hello", 1), piece(&s, "</s>", 1);
    expect_encoding("v3 leading empty user", CHAT_MISTRAL_V3, CHAT_FOR_TRAINING,
                    "{'messages': [{'role': 'system', 'content': 'S'},"
                    " {'role': 'assistant', 'content': 'hello'}]}", &s);
}

static void test_v3_tools(const gale_tokenizer *v3)
{
    /* tools before the last user message, in mistral-common's key order with the defaults
     * filled in; call arguments re-serialised as Python does; results parsed when JSON;
     * the calls and their </s> trained, the results not */
    struct seq s = {.tok = v3};
    piece(&s, "<s>", 0);
    piece(&s, "[AVAILABLE_TOOLS]", 0);
    text(&s, "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"\", "
             "\"parameters\": {\"type\": \"object\", \"x\": [1.5, 2, null]}}}, "
             "{\"type\": \"function\", \"function\": {\"name\": \"g-2\", \"description\": \"G\", "
             "\"parameters\": {}}}]", 0);
    piece(&s, "[/AVAILABLE_TOOLS]", 0);
    inst(&s, "go");
    piece(&s, "[TOOL_CALLS]", 1);
    text(&s, "[{\"name\": \"f\", \"arguments\": {\"a\": 1.5, \"b\": [1, 2], \"c\": \"\xc3\xa9\\n\"}, "
             "\"id\": \"abcDEF123\"}, {\"name\": \"g-2\", \"arguments\": {}, \"id\": \"zzzzzzzz9\"}]", 1);
    piece(&s, "</s>", 1);
    piece(&s, "[TOOL_RESULTS]", 0);
    text(&s, "{\"content\": 22, \"call_id\": \"abcDEF123\"}", 0);
    piece(&s, "[/TOOL_RESULTS]", 0);
    piece(&s, "[TOOL_RESULTS]", 0);
    text(&s, "{\"content\": \"not json\", \"call_id\": \"zzzzzzzz9\"}", 0);
    piece(&s, "[/TOOL_RESULTS]", 0);
    text(&s, "done", 1), piece(&s, "</s>", 1);
    expect_encoding("v3 tool calls and results", CHAT_MISTRAL_V3, CHAT_FOR_TRAINING,
                    "{'tools': [{'function': {'parameters': {'type': 'object', 'x': [1.5, 2, null]}, 'name': 'f'}},"
                    " {'type': 'function', 'function': {'name': 'g-2', 'description': 'G'}}],"
                    " 'messages': [{'role': 'user', 'content': 'go'},"
                    " {'role': 'assistant', 'content': null, 'tool_calls': ["
                    "  {'id': 'abcDEF123', 'type': 'function', 'function': {'name': 'f',"
                    "   'arguments': '{\\n \\'a\\':1.50, \\'b\\':[1,2], \\'c\\': \\'\\\\u00e9\\\\n\\'}'}},"
                    "  {'id': 'zzzzzzzz9', 'function': {'name': 'g-2', 'arguments': ''}}]},"
                    " {'role': 'tool', 'tool_call_id': 'abcDEF123', 'content': ' 22 '},"
                    " {'role': 'tool', 'tool_call_id': 'zzzzzzzz9', 'name': 'g-2', 'content': 'not json'},"
                    " {'role': 'assistant', 'content': 'done'}]}", &s);

    /* a user message may follow a tool result; the mask stays on the calls in a prompt */
    s = (struct seq){.tok = v3};
    piece(&s, "<s>", 0);
    inst(&s, "go");
    piece(&s, "[TOOL_CALLS]", 1);
    text(&s, "[{\"name\": \"f\", \"arguments\": {}, \"id\": \"abcDEF123\"}]", 1);
    piece(&s, "</s>", 1);
    piece(&s, "[TOOL_RESULTS]", 0);
    text(&s, "{\"content\": \"r\", \"call_id\": \"abcDEF123\"}", 0);
    piece(&s, "[/TOOL_RESULTS]", 0);
    inst(&s, "next");
    expect_encoding("v3 user after a tool result", CHAT_MISTRAL_V3, CHAT_FOR_PROMPT,
                    "{'messages': [{'role': 'user', 'content': 'go'}, {'role': 'assistant', 'tool_calls':"
                    " [{'id': 'abcDEF123', 'function': {'name': 'f', 'arguments': '{}'}}]},"
                    " {'role': 'tool', 'tool_call_id': 'abcDEF123', 'content': 'r'},"
                    " {'role': 'user', 'content': 'next'}]}", &s);

    /* a prompt may end with a system message: it joins the system prompt */
    s = (struct seq){.tok = v3};
    piece(&s, "<s>", 0);
    inst(&s, "S\n\na");
    expect_encoding("v3 prompt ending with a system message", CHAT_MISTRAL_V3, CHAT_FOR_PROMPT,
                    "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'system', 'content': 'S'}]}", &s);

    /* arguments given as an object, a final call without id (allowed in training) */
    s = (struct seq){.tok = v3};
    piece(&s, "<s>", 0);
    inst(&s, "go");
    piece(&s, "[TOOL_CALLS]", 1);
    text(&s, "[{\"name\": \"f\", \"arguments\": {\"k\": [true, false]}}]", 1);
    piece(&s, "</s>", 1);
    expect_encoding("v3 final call without id", CHAT_MISTRAL_V3, CHAT_FOR_TRAINING,
                    "{'messages': [{'role': 'user', 'content': 'go'}, {'role': 'assistant', 'tool_calls':"
                    " [{'id': 'null', 'function': {'name': 'f', 'arguments': {'k': [true, false]}}}]}]}", &s);
}

static void test_v1(const gale_tokenizer *v1)
{
    /* v1: plain text, the system prompt on the FIRST user message, answers not stripped */
    struct seq s = {.tok = v1};
    piece(&s, "<s>", 0);
    text(&s, "[INST] Sys\n\nHi [/INST]", 0);
    text(&s, "Hello ", 1), piece(&s, "</s>", 1);
    text(&s, "[INST] Bye [/INST]", 0);
    text(&s, "Ciao", 1), piece(&s, "</s>", 1);
    expect_encoding("v1 system prompt and masks", CHAT_MISTRAL_V1, CHAT_FOR_TRAINING,
                    "{'messages': [{'role': 'system', 'content': 'Sys'}, {'role': 'user', 'content': 'Hi'},"
                    " {'role': 'assistant', 'content': 'Hello '}, {'role': 'user', 'content': 'Bye'},"
                    " {'role': 'assistant', 'content': 'Ciao'}]}", &s);
}

static void test_llama2(const gale_tokenizer *v1)
{
    /* Meta's reference: each pair is ONE string through SentencePiece between <s> and </s>,
     * the system prompt inside the first turn, the whole turn stripped (Python's strip(),
     * so U+3000 goes too, but not the spaces before "Hi" that the system block shields);
     * the answer is what follows the ids of the prompt alone. */
    const char *pair1 = "[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\n  Hi [/INST] Hello there ";
    const char *prompt1 = "[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\n  Hi [/INST]";
    gale_ids p = {0}, q = {0};
    struct seq s;
    tokenizer_encode(v1, prompt1, strlen(prompt1), &p);
    tokenizer_encode(v1, pair1, strlen(pair1), &q);
    s = (struct seq){.tok = v1};
    piece(&s, "<s>", 0);
    gale_ids_append(&s.ids, q.v, q.n);
    gale_bytes_fill(&s.mask, 0, p.n);
    gale_bytes_fill(&s.mask, 1, q.n - p.n);
    piece(&s, "</s>", 1);
    piece(&s, "<s>", 0);
    text(&s, "[INST] Next? [/INST]", 0);
    expect_encoding("llama2 prompt", CHAT_LLAMA2, CHAT_FOR_PROMPT,
                    "{'messages': [{'role': 'system', 'content': 'Be kind.'},"
                    " {'role': 'user', 'content': '  Hi\\n'}, {'role': 'assistant', 'content': 'Hello there\\u3000'},"
                    " {'role': 'user', 'content': 'Next?'}]}", &s);
    gale_ids_free(&p);
    gale_ids_free(&q);
}

static void test_errors(const gale_tokenizer *v1, const gale_tokenizer *v3)
{
    const enum chat_purpose T = CHAT_FOR_TRAINING, P = CHAT_FOR_PROMPT;
    const enum chat_template V3 = CHAT_MISTRAL_V3, V1 = CHAT_MISTRAL_V1, L2 = CHAT_LLAMA2;
    expect_error("not an object", v3, V3, T, "[1]", "conversation: expected an object, got an array");
    expect_error("no messages", v3, V3, T, "{'msgs': []}", "conversation: missing key \"messages\"");
    expect_error("empty messages", v3, V3, T, "{'messages': []}", "messages: the conversation has no messages");
    expect_error("message not object", v3, V3, T, "{'messages': [{'role': 'user', 'content': 'a'}, 3]}",
                 "messages[1]: expected an object, got a number");
    expect_error("no role", v3, V3, T, "{'messages': [{'content': 'a'}]}", "messages[0]: missing key \"role\"");
    expect_error("unknown role", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'bot', 'content': 'b'}]}",
                 "messages[1].role: unknown role \"bot\"");
    expect_error("content not string", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': ['a']}, {'role': 'assistant', 'content': 'b'}]}",
                 "messages[0].content: expected a string, got an array");
    expect_error("user without content", v3, V3, T,
                 "{'messages': [{'role': 'user'}, {'role': 'assistant', 'content': 'b'}]}",
                 "messages[0]: a user message needs a string \"content\"");
    expect_error("bad weight", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b', 'weight': 0.5}]}",
                 "messages[1].weight: expected 0 or 1");
    expect_error("training ends with user", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'},"
                 " {'role': 'user', 'content': 'c'}]}",
                 "messages[2]: training data must end with an assistant message, not a user message");
    expect_error("prompt ends with assistant", v3, V3, P,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'}]}",
                 "messages[1]: a prompt must end with a user or tool message, not an assistant message");
    expect_error("assistant with neither", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': ''}]}",
                 "messages[1]: an assistant message needs a non-empty \"content\" or \"tool_calls\", and has neither");
    expect_error("assistant with both", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b',"
                 " 'tool_calls': [{'id': 'abcdefghi', 'function': {'name': 'f', 'arguments': '{}'}}]}]}",
                 "messages[1]: an assistant message needs a non-empty \"content\" or \"tool_calls\", not both");
    expect_error("tool call without name", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'id': 'abcdefghi', 'function': {'arguments': '{}'}}]}]}",
                 "messages[1].tool_calls[0].function: missing key \"name\"");
    expect_error("tool call bad name", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'id': 'abcdefghi', 'function': {'name': 'get weather', 'arguments': '{}'}}]}]}",
                 "messages[1].tool_calls[0].function.name: \"get weather\" is not 1 to 64");
    expect_error("tool call name with a NUL", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'id': 'abcdefghi', 'function': {'name': 'f\\u0000x', 'arguments': '{}'}}]}]}",
                 "messages[1].tool_calls[0].function.name: \"f\" is not 1 to 64");
    expect_error("call id with a NUL", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'id': 'null\\u0000', 'function': {'name': 'f', 'arguments': '{}'}}]}]}",
                 "messages[1].tool_calls[0].id: \"null\" is not a v3 call id");
    expect_error("tool call without function", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'id': 'abcdefghi'}]}]}",
                 "messages[1].tool_calls[0]: missing key \"function\"");
    expect_error("tool call without arguments", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'id': 'abcdefghi', 'function': {'name': 'f'}}]}]}",
                 "messages[1].tool_calls[0].function: missing key \"arguments\"");
    expect_error("bad call id", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'id': 'call_1', 'function': {'name': 'f', 'arguments': '{}'}}]}]}",
                 "messages[1].tool_calls[0].id: \"call_1\" is not a v3 call id");
    expect_error("missing call id before the end", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'function': {'name': 'f', 'arguments': '{}'}}]},"
                 " {'role': 'tool', 'tool_call_id': 'abcdefghi', 'content': '1'}, {'role': 'assistant', 'content': 'b'}]}",
                 "messages[1].tool_calls[0]: missing key \"id\"");
    expect_error("prompt call without id", v3, V3, P,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'function': {'name': 'f', 'arguments': '{}'}}]},"
                 " {'role': 'tool', 'tool_call_id': 'abcdefghi', 'content': '1'}]}",
                 "messages[1].tool_calls[0]: missing key \"id\"");
    expect_error("system after assistant", v3, V3, P,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'},"
                 " {'role': 'system', 'content': 'c'}, {'role': 'user', 'content': 'd'}]}",
                 "messages[2]: a system message cannot follow an assistant message");
    expect_error("tool without call id", v3, V3, P,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'id': 'abcdefghi', 'function': {'name': 'f', 'arguments': '{}'}}]},"
                 " {'role': 'tool', 'content': '1'}]}",
                 "messages[2]: missing key \"tool_call_id\"");
    expect_error("tool after user", v3, V3, P,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'tool', 'tool_call_id': 'abcdefghi', 'content': '1'}]}",
                 "messages[1]: a tool message cannot follow a user message");
    expect_error("missing tool result", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'id': 'abcdefghi', 'function': {'name': 'f', 'arguments': '{}'}},"
                 "  {'id': 'abcdefghj', 'function': {'name': 'f', 'arguments': '{}'}}]},"
                 " {'role': 'tool', 'tool_call_id': 'abcdefghi', 'content': '1'}, {'role': 'assistant', 'content': 'b'}]}",
                 "messages[3]: the tool calls of messages[1] have fewer results than calls");
    expect_error("content and calls merged", v3, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'},"
                 " {'role': 'assistant', 'tool_calls': [{'id': 'abcdefghi', 'function': {'name': 'f', 'arguments': '{}'}}]}]}",
                 "messages[2]: merged with the assistant message messages[1]");
    expect_error("tools not array", v3, V3, T,
                 "{'tools': {}, 'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'}]}",
                 "tools: expected an array, got an object");
    expect_error("tool without name", v3, V3, T,
                 "{'tools': [{'function': {'description': 'x'}}], 'messages': [{'role': 'user', 'content': 'a'},"
                 " {'role': 'assistant', 'content': 'b'}]}",
                 "tools[0].function: missing key \"name\"");
    expect_error("only_last not boolean", v3, V3, T,
                 "{'only_last': 1, 'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'}]}",
                 "only_last: expected true or false");
    expect_error("v3 template on a v1 tokenizer", v1, V3, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'}]}",
                 "needs the control token [INST]");
    expect_error("v1 with tools", v1, V1, T,
                 "{'tools': [{'function': {'name': 'f'}}], 'messages': [{'role': 'user', 'content': 'a'},"
                 " {'role': 'assistant', 'content': 'b'}]}",
                 "tools: the v1 template has no tools (use v3 or v7)");
    expect_error("v1 with a tool call", v1, V1, P,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant',"
                 " 'tool_calls': [{'id': 'abcdefghi', 'function': {'name': 'f', 'arguments': '{}'}}]},"
                 " {'role': 'user', 'content': 'c'}]}",
                 "messages[1].tool_calls: the v1 template has no tool calls (use v3 or v7)");
    expect_error("llama2 two users", v1, L2, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'user', 'content': 'b'},"
                 " {'role': 'assistant', 'content': 'c'}]}",
                 "messages[1]: llama2 expects an assistant message here");
    expect_error("llama2 late system", v1, L2, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'},"
                 " {'role': 'system', 'content': 'c'}, {'role': 'assistant', 'content': 'd'}]}",
                 "messages[2]: llama2 expects a user message here");
    expect_error("llama2 tool message", v1, L2, P,
                 "{'messages': [{'role': 'user', 'content': 'a'}, {'role': 'tool', 'tool_call_id': 'abcdefghi', 'content': 'b'}]}",
                 "messages[1]: the llama2 template has no tool messages");
    expect_error("llama2 training ends with user", v1, L2, T,
                 "{'messages': [{'role': 'user', 'content': 'a'}]}",
                 "messages[0]: training data must end with an assistant message");

    gale_error err;
    enum chat_template tmpl;
    CHECK_MSG(chat_template_from_name("v2", &tmpl, &err) == -1 && strstr(err.msg, "'v2' (expected v1, v3, v7 or llama2)"),
              "template name v2 accepted or unclear: %s", err.msg);
}

static void expect_pyjson(const char *input, const char *want)
{
    json_t *v = json_loads(input, JSON_DECODE_ANY, NULL);
    gale_bytes out = {0};
    pyjson_dump(v, &out);
    gale_bytes_push(&out, 0);
    CHECK_MSG(!strcmp((char *)out.v, want), "pyjson %s:\n  got  %s\n  want %s", input, out.v, want);
    gale_bytes_free(&out);
    json_decref(v);
}

/* The wanted strings are Python 3's json.dumps(json.loads(input), ensure_ascii=False). */
static void test_pyjson(void)
{
    expect_pyjson("[0.1, 1.0, -0.0, 1e16, 1e15, 1e-5, 0.0001, 123456789012345678.0, 5e-324, "
                  "1.7976931348623157e308, 2.5, 100.0, 1e22, 0.30000000000000004, -1.5e-7, "
                  "9007199254740993.0, 1E-4, 0.001234, 12345.678]",
                  "[0.1, 1.0, -0.0, 1e+16, 1000000000000000.0, 1e-05, 0.0001, 1.2345678901234568e+17, "
                  "5e-324, 1.7976931348623157e+308, 2.5, 100.0, 1e+22, 0.30000000000000004, -1.5e-07, "
                  "9007199254740992.0, 0.0001, 0.001234, 12345.678]");
    expect_pyjson("{\"s\": \"a\\\"b\\\\c\\n\\t\\u0001\\u007f \\u00e9 \\ud83d\\ude00 \\u2028\\/\", \"n\": null, "
                  "\"t\": true, \"f\": false, \"i\": -12, \"e\": {}, \"a\": [], \"z\": 0, \"b\": 9223372036854775807}",
                  "{\"s\": \"a\\\"b\\\\c\\n\\t\\u0001\x7f \xc3\xa9 \xf0\x9f\x98\x80 \xe2\x80\xa8/\", \"n\": null, "
                  "\"t\": true, \"f\": false, \"i\": -12, \"e\": {}, \"a\": [], \"z\": 0, \"b\": 9223372036854775807}");
    /* Python keeps a duplicate key at its first place with the last value */
    expect_pyjson("{\"a\": 1, \"b\": 2, \"a\": 3}", "{\"a\": 3, \"b\": 2}");

    json_t *s = pyjson_parse(" [1,2] ", 7), *t = pyjson_parse("{oops", 5);
    if (!json_is_array(s) || json_array_size(s) != 2 || !json_is_string(t) ||
        strcmp(json_string_value(t), "{oops")) {
        FAIL("pyjson_parse: JSON parsed, other text kept as a string");
    }
    json_decref(s);
    json_decref(t);
}

/* Training data is the conversation cut after an answer: its ids are the prompt vector's
 * ids up to that answer's </s>, and only the answers are trained. */
static void test_training_prefix(const char *shared, const gale_tokenizer *tok,
                                 enum chat_template tmpl, const char *folder, size_t n_messages,
                                 size_t n_eos)
{
    char name[256];
    snprintf(name, sizeof name, "chat-vectors/%s/tokens_%s.json", folder, chat_template_name(tmpl));
    char *dir = gale_path_join(shared, "tokenizers");
    char *path = gale_path_join(dir, name);
    json_t *vector = json_load_file(path, 0, NULL);
    free(path);
    snprintf(name, sizeof name, "chat-vectors/%s/sample.json", folder);
    path = gale_path_join(dir, name);
    json_t *sample = json_load_file(path, 0, NULL);
    free(path);
    free(dir);
    if (!vector || !sample) {
        FAIL("cannot read the %s vector", folder);
        return;
    }
    json_t *messages = json_object_get(sample, "messages");
    while (json_array_size(messages) > n_messages)
        json_array_remove(messages, json_array_size(messages) - 1);

    const json_t *want = json_object_get(vector, "tokens");
    struct seq s = {.tok = tok};
    size_t eos_seen = 0;
    for (size_t i = 0; i < json_array_size(want) && eos_seen < n_eos; i++) {
        int id = (int)json_integer_value(json_array_get(want, i));
        gale_ids_push(&s.ids, id);
        gale_bytes_push(&s.mask, 0);
        eos_seen += id == tokenizer_eos_id(tok);
    }
    /* the answers: from after each [/INST] or [/TOOL_RESULTS] that an answer follows, to its </s> */
    int end_inst = tokenizer_piece_id(tok, "[/INST]"), end_results = tokenizer_piece_id(tok, "[/TOOL_RESULTS]");
    gale_ids close_ids = {0};
    tokenizer_encode(tok, "[/INST]", 7, &close_ids);
    for (size_t i = 0; i < s.ids.n; i++) {
        int after_close = tmpl == CHAT_MISTRAL_V1
            ? i + 1 >= close_ids.n &&
                  !memcmp(s.ids.v + i + 1 - close_ids.n, close_ids.v, close_ids.n * sizeof *close_ids.v)
            : s.ids.v[i] == end_inst || s.ids.v[i] == end_results;
        if (!after_close)
            continue;
        size_t j = i + 1;
        if (j < s.ids.n && s.ids.v[j] == tokenizer_piece_id(tok, "[TOOL_RESULTS]"))
            continue;
        while (j < s.ids.n && s.ids.v[j] != tokenizer_eos_id(tok) &&
               s.ids.v[j] != tokenizer_piece_id(tok, "[TOOL_RESULTS]"))
            s.mask.v[j++] = 1;
        if (j < s.ids.n && s.ids.v[j] == tokenizer_eos_id(tok))
            s.mask.v[j] = 1;
    }
    gale_ids_free(&close_ids);
    snprintf(name, sizeof name, "training prefix of %s (%s)", folder, chat_template_name(tmpl));
    expect_encoding_of(name, tmpl, CHAT_FOR_TRAINING, sample, &s);
    json_decref(sample);
    json_decref(vector);
}

int main(void)
{
    const char *shared = getenv("GALE_SHARED");
    if (!shared) {
        fprintf(stderr, "FAIL GALE_SHARED is not set\n");
        return 1;
    }
    gale_tokenizer *v1 = load(shared, "mistral-v1.model"), *v3 = load(shared, "mistral-v3.model");
    test_v3_system_merging_and_masks(v3);
    test_v3_tools(v3);
    test_v1(v1);
    test_llama2(v1);
    test_errors(v1, v3);
    test_pyjson();
    test_training_prefix(shared, v1, CHAT_MISTRAL_V1, "no_tools", 6, 3);
    test_training_prefix(shared, v3, CHAT_MISTRAL_V3, "no_tools", 6, 3);
    test_training_prefix(shared, v3, CHAT_MISTRAL_V3, "get_weather_full", 12, 5);
    test_training_prefix(shared, v3, CHAT_MISTRAL_V3, "several_calls", 8, 4);
    tokenizer_free(v1);
    tokenizer_free(v3);
    return check_report("test_chat");
}
