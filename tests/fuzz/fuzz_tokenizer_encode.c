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
#include "tests/fuzz/fuzz_encode_check.h"
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_encode_check(tok, enc, data, size);
    return 0;
}
