/* tokenizer: SentencePiece BPE models (Mistral v1 and v3, Llama 2) loaded from their
 * `.model` protobuf, encoding id-for-id as sentencepiece does (identity normaliser, dummy
 * prefix, whitespace as U+2581, merges by piece score, user-defined pieces, byte fallback)
 * and decoding back to text. A unigram model or another normaliser is refused by name. */
#ifndef GALE_DATA_TOKENIZER_H
#define GALE_DATA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "util/error.h"
#include "util/vec.h"

typedef struct gale_tokenizer gale_tokenizer;

/* Loads a SentencePiece model file; NULL and a message naming the file on any problem. */
gale_tokenizer *tokenizer_load(const char *path, gale_error *err);
/* The same from bytes in memory (name is used in messages). */
gale_tokenizer *tokenizer_load_bytes(const void *data, size_t len, const char *name, gale_error *err);
void tokenizer_free(gale_tokenizer *tok);

/* Appends the ids of text (len bytes, any bytes, not NUL-terminated) to out, exactly as
 * sentencepiece's Encode does: no BOS or EOS added. Safe to call from many threads at once. */
void tokenizer_encode(const gale_tokenizer *tok, const char *text, size_t len, gale_ids *out);

/* Appends the text of ids to out, as sentencepiece's Decode does. */
void tokenizer_decode(const gale_tokenizer *tok, const int32_t *ids, size_t n, gale_bytes *out);

int tokenizer_vocab_size(const gale_tokenizer *tok);
int tokenizer_bos_id(const gale_tokenizer *tok);
int tokenizer_eos_id(const gale_tokenizer *tok);
int tokenizer_unk_id(const gale_tokenizer *tok);
/* The id of a piece (control pieces such as "[INST]" included), or -1. */
int tokenizer_piece_id(const gale_tokenizer *tok, const char *piece);
/* The piece of an id (NUL-terminated), or NULL when out of range. */
const char *tokenizer_id_piece(const gale_tokenizer *tok, int id);
/* SHA-256 of the model file's bytes, 64 hex digits. */
const char *tokenizer_sha256(const gale_tokenizer *tok);

#endif
