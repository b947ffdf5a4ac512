/* tekken: Mistral's Tekken tokenizer files (tekken_*.json, as mistral-common's Tekkenizer reads
 * them) and their regex pre-tokenizer. A Tekken file holds a byte-level BPE vocabulary (base64
 * token bytes by rank), the tiktoken pattern that cuts text into words, and the special tokens,
 * which take the first num_special ids (the vocabulary's rank r is id num_special + r). The
 * BPE itself is the tokenizer's (data/tokenizer.c): the lowest rank merges first, which is
 * sentencepiece's highest score first with score -rank. */
#ifndef GALE_DATA_TEKKEN_H
#define GALE_DATA_TEKKEN_H

#include <stddef.h>
#include <stdint.h>

#include "data/sentencepiece_model.h"
#include "util/error.h"
#include "util/vec.h"

/* 1 when the bytes look like a JSON document (a Tekken file) rather than a protobuf. */
int tekken_is_json(const void *data, size_t len);

typedef struct tekken_file {
    spm_model vocab;  /* the special tokens (CONTROL), then the vocabulary by rank (NORMAL,
                         score -rank), cut to the file's default_vocab_size as mistral-common does */
    size_t n_special; /* default_num_special_tokens */
    char *pattern;    /* the pre-tokenizer's regex */
    int version;      /* the N of config.version "vN" */
} tekken_file;

/* Parses a Tekken JSON file; -1 and a message naming the file and the key at fault. */
int tekken_parse(const void *data, size_t len, const char *name, tekken_file *f, gale_error *err);
/* What every Tekken vocabulary is as a model besides its pieces (BPE, identity normaliser, the
 * names of <unk>, <s>, </s> and <pad>). */
void tekken_model_settings(spm_model *m);
/* Frees what tekken_parse made but the vocabulary, which the caller takes over. */
void tekken_file_free_pattern(tekken_file *f);

/* The pre-tokenizer: the pattern compiled by PCRE2 (Unicode, JIT) with its "\s" pinned to
 * Unicode White_Space as tiktoken's Rust regex reads it. Shared by threads. */
typedef struct tekken_splitter tekken_splitter;
tekken_splitter *tekken_splitter_new(const char *pattern, const char *name, gale_error *err);
void tekken_splitter_free(tekken_splitter *s);

/* One thread's matching state. */
typedef struct tekken_matcher tekken_matcher;
tekken_matcher *tekken_matcher_new(const tekken_splitter *s);
void tekken_matcher_free(tekken_matcher *m);

/* The next word of valid UTF-8 text s[0..n) at or after offset: 1 with its bounds, 0 when
 * there is none, -1 when more text could change it (only when !final). Text between words
 * (none with Tekken's own pattern) is skipped, as tiktoken does. */
int tekken_next_word(tekken_matcher *m, const uint8_t *s, size_t n, size_t offset, int final, size_t *start,
                     size_t *end);

/* Appends bytes s[0..n) to out as valid UTF-8, each ill-formed sequence replaced by U+FFFD as
 * Python's bytes.decode("utf-8", "replace") does (one per maximal subpart). Unless final, an
 * incomplete character at the end is left out; returns the bytes of s used. */
size_t tekken_utf8_repair(const uint8_t *s, size_t n, int final, gale_bytes *out);

#endif
