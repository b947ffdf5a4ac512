/* fuzz_chat: any bytes as a conversation through every chat template and purpose. A
 * conversation is either refused with a message or encoded with one mask byte (0 or 1) per
 * id, BOS first, and chat_encode_with_encoder gives the same; and whatever JSON parses,
 * pyjson_dump writes text that parses back to an equal value. The same bytes as a record in
 * any chat format (chat_formats.h): refused with a message, or read into a conversation whose
 * call ids are v3 ids, whose dedup text splits inside itself, and which every template
 * encodes or refuses with a message, as above. Needs GALE_SHARED (the tokenizers); run e.g.
 *   GALE_SHARED=/work/shared ./fuzz_chat -max_total_time=60 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/chat.h"
#include "data/chat_formats.h"
#include "data/chat_internal.h"
#include "data/pyjson.h"
#include "util/file.h"

static gale_tokenizer *v1, *v3;

static gale_tokenizer *load(const char *dir, const char *name)
{
    char *path = gale_path_join(dir, name);
    gale_error err;
    gale_tokenizer *tok = tokenizer_load(path, &err);
    if (!tok) {
        fprintf(stderr, "fuzz_chat: %s\n", err.msg);
        exit(1);
    }
    free(path);
    return tok;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *shared = getenv("GALE_SHARED");
    if (!shared) {
        fprintf(stderr, "fuzz_chat: set GALE_SHARED to the shared folder (it holds the tokenizers)\n");
        exit(1);
    }
    char *dir = gale_path_join(shared, "tokenizers");
    v1 = load(dir, "mistral-v1.model");
    v3 = load(dir, "mistral-v3.model");
    free(dir);
    return 0;
}

static void check_pyjson_round_trip(const json_t *value)
{
    gale_bytes text = {0};
    pyjson_dump(value, &text);
    json_t *back = json_loadb((const char *)text.v, text.n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!back || !json_equal(back, value)) {
        fprintf(stderr, "pyjson_dump wrote %.*s, which does not read back\n", (int)text.n, text.v);
        abort();
    }
    json_decref(back);
    gale_bytes_free(&text);
}

/* Checks the encoding (or refusal) of conversation by template t for purpose p. */
static void check_encoding(int t, int p, const json_t *conversation, int from_record)
{
    const gale_tokenizer *tok = t == CHAT_MISTRAL_V3 ? v3 : v1;
    gale_ids ids = {0};
    gale_bytes mask = {0};
    gale_error err;
    int rc = from_record ? chat_conversation_encode(tok, NULL, (enum chat_template)t, (enum chat_purpose)p,
                                                    conversation, &ids, &mask, &err)
                         : chat_encode(tok, (enum chat_template)t, (enum chat_purpose)p, conversation, &ids,
                                       &mask, &err);
    if (rc == 0) {
        if (ids.n != mask.n || ids.n == 0 || ids.v[0] != tokenizer_bos_id(tok))
            abort();
        for (size_t i = 0; i < mask.n; i++)
            if (mask.v[i] > 1)
                abort();
    } else if (ids.n || mask.n || !err.msg[0]) {
        abort();
    }
    /* an encoder gives the same ids, or the same refusal */
    gale_ids again = {0};
    tokenizer_encoder *enc = tokenizer_encoder_new(tok);
    int again_rc = chat_encode_with_encoder(tok, enc, (enum chat_template)t, (enum chat_purpose)p, conversation,
                                            &again, NULL, &err);
    if (again_rc != rc || again.n != ids.n || (ids.n && memcmp(again.v, ids.v, ids.n * sizeof *ids.v)))
        abort();
    tokenizer_encoder_free(enc);
    gale_ids_free(&again);
    gale_ids_free(&ids);
    gale_bytes_free(&mask);
}

/* A v3 call id, or what chat.c refuses or reads as no id: not a string, or "null". */
static int is_v3_id(const json_t *id)
{
    const char *s = json_string_value(id);
    return !s || !strcmp(s, "null") || chat_is_call_id(s, json_string_length(id));
}

static void check_record(const json_t *record)
{
    json_t *conv = NULL;
    gale_error err;
    if (chat_conversation_from_record(record, NULL, &conv, &err) < 0) {
        if (conv || !err.msg[0])
            abort();
        return;
    }
    size_t i, k;
    json_t *m, *call;
    json_array_foreach(json_object_get(conv, "messages"), i, m) {
        if (json_is_array(json_object_get(m, "content")))
            abort(); /* parts are joined into a string */
        if (json_object_get(m, "tool_call_id") && json_is_string(json_object_get(m, "tool_call_id")) &&
            !is_v3_id(json_object_get(m, "tool_call_id")))
            abort();
        json_array_foreach(json_object_get(m, "tool_calls"), k, call)
            if (json_is_object(call) && !is_v3_id(json_object_get(call, "id")))
                abort();
    }
    gale_bytes text = {0};
    size_t near_from = SIZE_MAX;
    chat_conversation_text(conv, &text, &near_from);
    if (near_from > text.n)
        abort();
    gale_bytes_free(&text);
    chat_conversation_trains(conv);
    for (int t = CHAT_MISTRAL_V1; t <= CHAT_LLAMA2; t++)
        check_encoding(t, CHAT_FOR_TRAINING, conv, 1);
    json_decref(conv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *conversation = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!conversation)
        return 0;
    check_pyjson_round_trip(conversation);
    for (int t = CHAT_MISTRAL_V1; t <= CHAT_LLAMA2; t++)
        for (int p = CHAT_FOR_TRAINING; p <= CHAT_FOR_PROMPT; p++)
            check_encoding(t, p, conversation, 0);
    check_record(conversation);
    json_decref(conversation);
    return 0;
}
