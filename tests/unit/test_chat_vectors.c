/* test_chat_vectors: every folder of $GALE_SHARED/tokenizers/chat-vectors (mistral-common's
 * encodings of sample.json, one tokens_vN.json per template) reproduced id for id by
 * chat_encode, whatever folders are there, and by chat_encode_with_encoder alike; and the
 * loss mask of each, decoded run by run, gives back the assistant answers of sample.json. */
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "data/chat.h"
#include "data/tokenizer.h"
#include "util/file.h"

static int checked;

/* The Mistral tokenizers by template, loaded once. */
struct tokenizers {
    gale_tokenizer *by_template[3];
    const char *dir;
};

static gale_tokenizer *tokenizer_for(struct tokenizers *t, enum chat_template tmpl)
{
    if (!t->by_template[tmpl]) {
        char name[64];
        gale_error err;
        snprintf(name, sizeof name, "mistral-%s.model", chat_template_name(tmpl));
        char *path = gale_path_join(t->dir, name);
        t->by_template[tmpl] = tokenizer_load(path, &err);
        free(path);
        if (!t->by_template[tmpl]) {
            fprintf(stderr, "FAIL %s\n", err.msg);
            exit(1);
        }
    }
    return t->by_template[tmpl];
}

static char *decode(const gale_tokenizer *tok, const int32_t *ids, size_t n)
{
    gale_bytes text = {0};
    tokenizer_decode(tok, ids, n, &text);
    gale_bytes_push(&text, 0);
    return (char *)text.v;
}

/* The answer an assistant message (or a run of them, merged) should decode to. */
static void expected_answer(const json_t *messages, size_t *i, enum chat_template tmpl,
                            gale_bytes *text, json_t **calls)
{
    text->n = 0;
    *calls = json_array();
    for (; *i < json_array_size(messages); ++*i) {
        const json_t *m = json_array_get(messages, *i);
        if (strcmp(json_string_value(json_object_get(m, "role")), "assistant"))
            break;
        const char *content = json_string_value(json_object_get(m, "content"));
        if (content && *content) {
            if (text->n)
                gale_bytes_append(text, "\n\n", 2);
            gale_bytes_append(text, content, strlen(content));
        }
        json_array_extend(*calls, json_object_get(m, "tool_calls"));
    }
    if (tmpl == CHAT_MISTRAL_V3)
        while (text->n && text->v[text->n - 1] == ' ')
            text->n--;
    gale_bytes_push(text, 0);
}

/* Each run of mask 1 is one answer, ending in </s>; its text (or call JSON) is the answer's. */
static void check_mask(const char *name, const gale_tokenizer *tok, enum chat_template tmpl,
                       const json_t *sample, const gale_ids *ids, const gale_bytes *mask)
{
    const json_t *messages = json_object_get(sample, "messages");
    size_t msg = 0, pos = 0;
    gale_bytes want = {0};
    for (;;) {
        while (msg < json_array_size(messages) &&
               strcmp(json_string_value(json_object_get(json_array_get(messages, msg), "role")), "assistant"))
            msg++;
        while (pos < ids->n && !mask->v[pos])
            pos++;
        if (msg == json_array_size(messages) || pos == ids->n) {
            CHECK_MSG(msg == json_array_size(messages) && pos == ids->n,
                      "%s: mask runs and assistant messages differ in number", name);
            break;
        }
        size_t end = pos;
        while (end < ids->n && mask->v[end])
            end++;
        json_t *calls;
        expected_answer(messages, &msg, tmpl, &want, &calls);
        CHECK_MSG(ids->v[end - 1] == tokenizer_eos_id(tok), "%s: a masked answer does not end with EOS", name);
        size_t start = pos;
        if (json_array_size(calls)) {
            int bad = ids->v[start++] != tokenizer_piece_id(tok, "[TOOL_CALLS]");
            char *text = decode(tok, ids->v + start, end - 1 - start);
            json_t *got = json_loads(text, 0, NULL);
            bad |= !got || json_array_size(got) != json_array_size(calls);
            for (size_t k = 0; !bad && k < json_array_size(calls); k++) {
                const json_t *want_call = json_array_get(calls, k), *got_call = json_array_get(got, k);
                const json_t *fn = json_object_get(want_call, "function");
                json_t *args = json_loads(json_string_value(json_object_get(fn, "arguments")), 0, NULL);
                bad |= !json_equal(json_object_get(got_call, "name"), json_object_get(fn, "name")) ||
                       !json_equal(json_object_get(got_call, "id"), json_object_get(want_call, "id")) ||
                       !json_equal(json_object_get(got_call, "arguments"), args);
                json_decref(args);
            }
            CHECK_MSG(!bad, "%s: masked tool calls %s do not match the sample's", name, text);
            json_decref(got);
            free(text);
        } else {
            char *text = decode(tok, ids->v + start, end - 1 - start);
            CHECK_MSG(!strcmp(text, (char *)want.v), "%s: masked answer \"%s\", want \"%s\"", name, text, want.v);
            free(text);
        }
        json_decref(calls);
        pos = end;
    }
    gale_bytes_free(&want);
}

static void check_vector(const char *folder, const char *name, const char *tokens_file,
                         struct tokenizers *toks)
{
    char label[512], version[16];
    gale_error err;
    /* tokens_v3.json -> template "v3" */
    snprintf(version, sizeof version, "%.*s", (int)(strlen(tokens_file) - strlen("tokens_.json")),
             tokens_file + strlen("tokens_"));
    snprintf(label, sizeof label, "%s/%s", name, version);
    enum chat_template tmpl;
    if (chat_template_from_name(version, &tmpl, &err)) {
        FAIL("%s: %s", label, err.msg);
        return;
    }
    char *path = gale_path_join(folder, "sample.json");
    json_t *sample = json_load_file(path, 0, NULL);
    free(path);
    path = gale_path_join(folder, tokens_file);
    json_t *vector = json_load_file(path, 0, NULL);
    free(path);
    const json_t *want = json_object_get(vector, "tokens");
    if (!sample || !json_is_array(want)) {
        FAIL("%s: cannot read sample.json or %s", label, tokens_file);
        json_decref(sample);
        json_decref(vector);
        return;
    }
    const gale_tokenizer *tok = tokenizer_for(toks, tmpl);
    gale_ids ids = {0};
    gale_bytes mask = {0};
    checked++;
    if (chat_encode(tok, tmpl, CHAT_FOR_PROMPT, sample, &ids, &mask, &err)) {
        FAIL("%s: %s", label, err.msg);
    } else {
        size_t n = json_array_size(want), at = 0;
        while (at < n && at < ids.n && ids.v[at] == json_integer_value(json_array_get(want, at)))
            at++;
        if (at != n || ids.n != n || mask.n != n) {
            FAIL("%s: %zu ids, want %zu; first difference at %zu", label, ids.n, n, at);
        } else {
            check_mask(label, tok, tmpl, sample, &ids, &mask);
        }
        /* the same through a per-thread encoder */
        tokenizer_encoder *enc = tokenizer_encoder_new(tok);
        gale_ids again = {0};
        gale_bytes again_mask = {0};
        if (chat_encode_with_encoder(tok, enc, tmpl, CHAT_FOR_PROMPT, sample, &again, &again_mask, &err) ||
            again.n != ids.n || memcmp(again.v, ids.v, ids.n * sizeof *ids.v) ||
            memcmp(again_mask.v, mask.v, mask.n)) {
            FAIL("%s: chat_encode_with_encoder differs from chat_encode", label);
        }
        gale_ids_free(&again);
        gale_bytes_free(&again_mask);
        tokenizer_encoder_free(enc);
    }
    printf("%s: %zu ids\n", label, ids.n);
    gale_ids_free(&ids);
    gale_bytes_free(&mask);
    json_decref(vector);
    json_decref(sample);
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(void)
{
    const char *shared = getenv("GALE_SHARED");
    if (!shared) {
        fprintf(stderr, "FAIL GALE_SHARED is not set\n");
        return 1;
    }
    char *dir = gale_path_join(shared, "tokenizers");
    char *vectors = gale_path_join(dir, "chat-vectors");
    struct tokenizers toks = {{0}, dir};

    struct dirent **folders;
    int n = scandir(vectors, &folders, NULL, by_name);
    if (n < 0) {
        perror(vectors);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char *folder = gale_path_join(vectors, folders[i]->d_name);
        struct dirent **files;
        int m = folders[i]->d_name[0] == '.' ? -1 : scandir(folder, &files, NULL, by_name);
        for (int k = 0; k < m; k++) {
            const char *f = files[k]->d_name;
            size_t len = strlen(f);
            if (!strncmp(f, "tokens_", 7) && len > 12 && !strcmp(f + len - 5, ".json"))
                check_vector(folder, folders[i]->d_name, f, &toks);
            free(files[k]);
        }
        if (m >= 0)
            free(files);
        free(folder);
        free(folders[i]);
    }
    free(folders);
    for (int t = 0; t < 3; t++)
        tokenizer_free(toks.by_template[t]);
    CHECK_MSG(checked > 0, "no tokens_*.json found under %s", vectors);
    free(vectors);
    free(dir);
    printf("%d vectors\n", checked);
    return check_report("test_chat_vectors");
}
