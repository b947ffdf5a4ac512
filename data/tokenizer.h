/* tokenizer: SentencePiece BPE models (Mistral v1 and v3, Llama 2) loaded from their
 * `.model` protobuf, encoding id-for-id as sentencepiece does (identity normaliser, dummy
 * prefix, whitespace as U+2581, merges by piece score, user-defined pieces, byte fallback)
 * and decoding back to text; and Mistral's Tekken files (tekken_*.json: byte-level BPE by
 * rank after a regex pre-tokenizer, special tokens first), id-for-id as mistral-common's
 * Tekkenizer, through the same API and BPE core (data/tekken.h reads the file). The format is
 * told by content. A unigram model or another normaliser is refused by name. */
#ifndef GALE_DATA_TOKENIZER_H
#define GALE_DATA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "util/error.h"
#include "util/vec.h"

typedef struct gale_tokenizer gale_tokenizer;

/* Loads a SentencePiece model or Tekken file, given by path or by name (tokenizer_find.h); NULL
 * and a message naming the file on any problem. */
gale_tokenizer *tokenizer_load(const char *name_or_path, gale_error *err);
/* The same from bytes in memory (name is used in messages). */
gale_tokenizer *tokenizer_load_bytes(const void *data, size_t len, const char *name, gale_error *err);
void tokenizer_free(gale_tokenizer *tok);

/* Appends the ids of text (len bytes, any bytes, not NUL-terminated) to out, exactly as
 * sentencepiece's Encode does: no BOS or EOS added. Safe to call from many threads at once. */
void tokenizer_encode(const gale_tokenizer *tok, const char *text, size_t len, gale_ids *out);

/* An encoder: the scratch memory of encoding and a cache of the ids of frequent words, for
 * one thread at a time (give each thread its own; the tokenizer itself is shared). Encoding
 * through one is several times faster than tokenizer_encode on real text, with the same ids. */
typedef struct tokenizer_encoder tokenizer_encoder;
tokenizer_encoder *tokenizer_encoder_new(const gale_tokenizer *tok);
void tokenizer_encoder_free(tokenizer_encoder *enc);
/* tokenizer_encode through enc. */
void tokenizer_encoder_encode(tokenizer_encoder *enc, const char *text, size_t len, gale_ids *out);
/* One text given in consecutive chunks of any size (cut anywhere, even inside a character):
 * feed appends the ids of the words that are already complete (the last few, up to 16, may
 * wait for the next feed), finish those of the rest and makes enc ready for the next text.
 * The ids are those of tokenizer_encode over the whole text, and the memory used stays
 * bounded by the longest words, not the text. */
void tokenizer_encoder_feed(tokenizer_encoder *enc, const char *chunk, size_t len, gale_ids *out);
void tokenizer_encoder_finish(tokenizer_encoder *enc, gale_ids *out);

/* Appends the text of ids to out, as sentencepiece's Decode does. An id outside the
 * vocabulary decodes as the unknown piece's surface (" \xE2\x81\x87 "): check ids with
 * tokenizer_vocab_size first where that matters. */
void tokenizer_decode(const gale_tokenizer *tok, const int32_t *ids, size_t n, gale_bytes *out);

int tokenizer_vocab_size(const gale_tokenizer *tok);
int tokenizer_bos_id(const gale_tokenizer *tok);
int tokenizer_eos_id(const gale_tokenizer *tok);
int tokenizer_unk_id(const gale_tokenizer *tok);
/* The id of a piece (control pieces such as "[INST]" included), or -1. */
int tokenizer_piece_id(const gale_tokenizer *tok, const char *piece);
/* The piece of an id (NUL-terminated), or NULL when out of range. */
const char *tokenizer_id_piece(const gale_tokenizer *tok, int id);
/* The decimal text of each id as it follows another on a line of ids: a space and the digits in
 * the first bytes of a 64-bit word (in memory order), their count in its top byte (" 7" is
 * 0x02...3720); kept with the tokenizer's index, so that printing ids builds nothing. NULL when
 * the vocabulary holds more than 10^6 ids. */
const uint64_t *tokenizer_id_texts(const gale_tokenizer *tok);
/* 1 when id is a control or the unknown piece (<s>, </s>, <unk>, [INST], ...): what
 * transformers calls a special token; 0 otherwise. */
int tokenizer_is_special(const gale_tokenizer *tok, int id);
/* SHA-256 of the model file's bytes, 64 hex digits. */
const char *tokenizer_sha256(const gale_tokenizer *tok);
/* The name a model folder keeps this tokenizer's file under, as Mistral's own folders do:
 * "tokenizer.model" (SentencePiece) or "tekken.json" (Tekken). */
const char *tokenizer_file_name(const gale_tokenizer *tok);
/* Both names, for looking a folder's tokenizer up. */
extern const char *const tokenizer_file_names[2];

#endif
