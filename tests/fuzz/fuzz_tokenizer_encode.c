/* fuzz_tokenizer_encode: any bytes as text to encode with mistral-v3.model (user-defined and
 * control pieces, byte fallback). tokenizer_encode, an encoder with its word cache, and the
 * same encoder fed the text in two chunks cut where the input says must give the same ids,
 * all inside the vocabulary; decoding those ids, and ids made from the input bytes, must not
 * fault. The model comes from $GALE_SHARED/tokenizers (or GALE_FUZZ_SHARED_DIR, "../shared" by
 * default, when the variable is unset). Run e.g.
 *   GALE_SHARED=/work/shared ./fuzz_tokenizer_encode -max_total_time=60 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer.h"
#include "util/file.h"

#ifndef GALE_FUZZ_SHARED_DIR
#define GALE_FUZZ_SHARED_DIR "../shared"
#endif

static gale_tokenizer *tok;
static tokenizer_encoder *enc;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *shared = getenv("GALE_SHARED");
    char *dir = gale_path_join(shared ? shared : GALE_FUZZ_SHARED_DIR, "tokenizers");
    char *path = gale_path_join(dir, "mistral-v3.model");
    gale_error err;
    tok = tokenizer_load(path, &err);
    if (!tok) {
        fprintf(stderr, "fuzz_tokenizer_encode: %s (set GALE_SHARED)\n", err.msg);
        exit(1);
    }
    enc = tokenizer_encoder_new(tok);
    free(path);
    free(dir);
    return 0;
}

static int same(const gale_ids *a, const gale_ids *b)
{
    return a->n == b->n && (a->n == 0 || !memcmp(a->v, b->v, a->n * sizeof *a->v));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    gale_ids whole = {0}, cached = {0}, streamed = {0};
    tokenizer_encode(tok, text, size, &whole);
    tokenizer_encoder_encode(enc, text, size, &cached);
    size_t cut = size ? data[0] % (size + 1) : 0;
    tokenizer_encoder_feed(enc, text, cut, &streamed);
    tokenizer_encoder_feed(enc, text + cut, size - cut, &streamed);
    tokenizer_encoder_finish(enc, &streamed);
    if (!same(&whole, &cached) || !same(&whole, &streamed))
        __builtin_trap();
    int vocab = tokenizer_vocab_size(tok);
    for (size_t i = 0; i < whole.n; i++)
        if (whole.v[i] < 0 || whole.v[i] >= vocab)
            __builtin_trap();
    gale_bytes out = {0};
    tokenizer_decode(tok, whole.v, whole.n, &out);
    /* ids from the bytes themselves, outside the vocabulary included */
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
    return 0;
}
