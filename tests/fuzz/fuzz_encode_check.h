/* fuzz_encode_check: what the tokenizer fuzz targets check of one text: tokenizer_encode, an
 * encoder with its word cache and the same encoder fed the text in two chunks cut where the
 * input says give the same ids, all inside the vocabulary; decoding them, and ids made from
 * the input bytes (outside the vocabulary included), does not fault. */
#ifndef GALE_FUZZ_ENCODE_CHECK_H
#define GALE_FUZZ_ENCODE_CHECK_H

#include <string.h>

#include "data/tokenizer.h"

static int fuzz_same_ids(const gale_ids *a, const gale_ids *b)
{
    return a->n == b->n && (a->n == 0 || !memcmp(a->v, b->v, a->n * sizeof *a->v));
}

static void fuzz_encode_check(const gale_tokenizer *tok, tokenizer_encoder *enc, const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    gale_ids whole = {0}, cached = {0}, streamed = {0};
    tokenizer_encode(tok, text, size, &whole);
    tokenizer_encoder_encode(enc, text, size, &cached);
    size_t cut = size ? data[0] % (size + 1) : 0;
    tokenizer_encoder_feed(enc, text, cut, &streamed);
    tokenizer_encoder_feed(enc, text + cut, size - cut, &streamed);
    tokenizer_encoder_finish(enc, &streamed);
    if (!fuzz_same_ids(&whole, &cached) || !fuzz_same_ids(&whole, &streamed))
        __builtin_trap();
    int vocab = tokenizer_vocab_size(tok);
    for (size_t i = 0; i < whole.n; i++)
        if (whole.v[i] < 0 || whole.v[i] >= vocab)
            __builtin_trap();
    gale_bytes out = {0};
    tokenizer_decode(tok, whole.v, whole.n, &out);
    gale_ids raw = {0};
    for (size_t i = 0; i + 1 < size; i += 2)
        gale_ids_push(&raw, (int32_t)((data[i] << 8 | data[i + 1]) - 256));
    out.n = 0;
    tokenizer_decode(tok, raw.v, raw.n, &out);
    gale_ids_free(&raw);
    gale_bytes_free(&out);
    gale_ids_free(&whole);
    gale_ids_free(&cached);
    gale_ids_free(&streamed);
}

#endif
