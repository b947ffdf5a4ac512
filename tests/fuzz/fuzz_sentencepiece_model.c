/* fuzz_sentencepiece_model: any bytes as a SentencePiece .model file. Loading either fails
 * with a message, or gives a tokenizer that encodes and decodes a fixed text (with every
 * kind of character the normaliser treats specially) without a fault. Run e.g.
 *   ./fuzz_sentencepiece_model -max_total_time=60 CORPUS_DIR
 * with mistral-v1.model (or a few prefixes of it) in CORPUS_DIR as seeds. */
#include <stdint.h>
#include <string.h>

#include "data/tokenizer.h"

static const char sample[] = "Hello  w\xC3\xB6rld \xE2\x96\x81\xF0\x9F\x98\x80\x80\xC0\xAF\tx [INST] <s>12";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gale_error err;
    gale_tokenizer *tok = tokenizer_load_bytes(data, size, "fuzz.model", &err);
    if (!tok) {
        if (!strstr(err.msg, "fuzz.model"))
            __builtin_trap(); /* every message names the file */
        return 0;
    }
    gale_ids ids = {0};
    gale_bytes text = {0};
    tokenizer_encode(tok, sample, sizeof sample - 1, &ids);
    for (size_t i = 0; i < ids.n; i++)
        if (ids.v[i] < 0 || ids.v[i] >= tokenizer_vocab_size(tok))
            __builtin_trap();
    tokenizer_decode(tok, ids.v, ids.n, &text);
    gale_ids_free(&ids);
    gale_bytes_free(&text);
    tokenizer_free(tok);
    return 0;
}
