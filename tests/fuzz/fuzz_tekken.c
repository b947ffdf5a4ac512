/* fuzz_tekken: the Tekken JSON loader and encoder. The first input byte picks:
 *   even  the rest is a Tekken file for tokenizer_load_bytes; when it loads, a text and the
 *         input are encoded and decoded (every id inside the vocabulary);
 *   odd   the rest is text for a small Tekken file built here (the 256 bytes, a few merges,
 *         Tekken's own pattern), checked as fuzz_encode_check.h says. Run e.g.
 *   ./fuzz_tekken -max_total_time=60 */
#include <jansson.h>
#include <nettle/base64.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_encode_check.h"

static const char *const merges[] = {"he", "ll", "llo", "hello", " w", "or", "ld", " world", "in", "ing",
                                     " t", "th", " the", "日本", "\xC3\xA9", "  ", "\n\n", "12", "!!", "\xE6\x9C\xAC"};

#define PATTERN                                                                                                  \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?" \
    "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|"     \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

static gale_tokenizer *small;
static tokenizer_encoder *enc;

static json_t *vocab_entry(int rank, const void *bytes, size_t n)
{
    char b64[64];
    base64_encode_raw(b64, n, bytes);
    b64[BASE64_ENCODE_RAW_LENGTH(n)] = 0;
    return json_pack("{s:i, s:s, s:n}", "rank", rank, "token_bytes", b64, "token_str");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    json_t *vocab = json_array();
    int rank = 0;
    for (; rank < 256; rank++) {
        unsigned char b = (unsigned char)rank;
        json_array_append_new(vocab, vocab_entry(rank, &b, 1));
    }
    for (size_t i = 0; i < sizeof merges / sizeof *merges; i++, rank++)
        json_array_append_new(vocab, vocab_entry(rank, merges[i], strlen(merges[i])));
    json_t *file = json_pack("{s:{s:s, s:i, s:i, s:i, s:s}, s:o}", "config", "pattern", PATTERN, "num_vocab_tokens",
                             rank, "default_vocab_size", rank + 30, "default_num_special_tokens", 30, "version", "v7",
                             "vocab", vocab);
    char *text = json_dumps(file, 0);
    gale_error err;
    small = tokenizer_load_bytes(text, strlen(text), "small tekken", &err);
    if (!small) {
        fprintf(stderr, "fuzz_tekken: %s\n", err.msg);
        exit(1);
    }
    enc = tokenizer_encoder_new(small);
    free(text);
    json_decref(file);
    return 0;
}

static void check_ids(const gale_tokenizer *tok, const gale_ids *ids)
{
    for (size_t i = 0; i < ids->n; i++)
        if (ids->v[i] < 0 || ids->v[i] >= tokenizer_vocab_size(tok))
            __builtin_trap();
}

static void fuzz_file(const uint8_t *data, size_t size)
{
    gale_error err;
    gale_tokenizer *tok = tokenizer_load_bytes(data, size, "fuzz", &err);
    if (!tok)
        return;
    static const char text[] = "Hello wörld 123 !! \xFF\xE6\x97 日本語\n\n  x";
    gale_ids ids = {0};
    tokenizer_encode(tok, text, sizeof text - 1, &ids);
    tokenizer_encode(tok, (const char *)data, size, &ids);
    check_ids(tok, &ids);
    gale_bytes out = {0};
    tokenizer_decode(tok, ids.v, ids.n, &out);
    gale_bytes_free(&out);
    gale_ids_free(&ids);
    tokenizer_free(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size)
        return 0;
    if (data[0] & 1)
        fuzz_encode_check(small, enc, data + 1, size - 1);
    else
        fuzz_file(data + 1, size - 1);
    return 0;
}
