/* reader: the inputs of `gale prepare` turned into records, each with its file and the line
 * where it starts. Inputs are files, folders (walked, sorted), and globs (sorted, regular
 * files only), minus exclude patterns; `.gz` files are read through zlib and `.zst` files
 * through libzstd's streaming decoder, so nothing is ever held whole in memory except one
 * record; a big uncompressed line-oriented file can be read by byte ranges, one per MPI rank.
 * A file whose name (less .gz/.zst) ends in .jsonl, .ndjson or .json is JSON Lines;
 * any other is text, split by the text mode: the whole file, each line, blank-line
 * separated paragraphs, or parts between separator lines (fortune files: "%").
 * Malformed records (bad JSON, missing key, invalid UTF-8, empty) come back flagged with
 * their reason, not as errors, so the pipeline counts them and goes on. */
#ifndef GALE_DATA_READER_H
#define GALE_DATA_READER_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "util/error.h"
#include "util/vec.h"

typedef enum {
    TEXT_MODE_DOCUMENT,   /* a file is one document */
    TEXT_MODE_LINES,      /* a line is one document */
    TEXT_MODE_PARAGRAPHS, /* blank lines separate documents */
    TEXT_MODE_SEPARATOR,  /* a line equal to the separator separates documents */
} text_mode;

typedef struct reader_options {
    text_mode mode;
    const char *separator; /* the separator line of TEXT_MODE_SEPARATOR, e.g. "%" */
    const char *json_key;  /* the text's key in JSONL records, dotted for nesting ("meta.body") */
    int conversations;     /* records are conversations (SFT, data/chat_formats.h): json_key is not used */
    const char *chat_key;  /* SFT: the messages' key; NULL: messages, conversations or conversation */
    size_t max_record_bytes; /* a longer line or record is an error; 0: no bound */
} reader_options;

typedef enum {
    RECORD_OK,
    RECORD_BAD_JSON,
    RECORD_MISSING_KEY,   /* the key is absent or not a string; for SFT, no "messages" array */
    RECORD_INVALID_UTF8,
    RECORD_EMPTY,         /* nothing but white space */
    RECORD_INVALID_CONVERSATION, /* SFT: messages that no chat format reads (detail says why) */
    RECORD_UNTRAINED,     /* SFT: every assistant message has weight 0: nothing to learn */
    RECORD_N_STATUS
} record_status;

/* "ok", "bad_json", "missing_key", "invalid_utf8", "empty", "invalid_conversation",
 * "untrained": the names report.json uses. */
const char *record_status_name(record_status s);

typedef struct reader_record {
    record_status status;
    uint64_t line;     /* 1-based line of the record's first byte in the (decompressed) file */
    const char *text;  /* the document's text (SFT: chat_conversation_text's); */
    size_t len;        /* valid until the next reader_next */
    size_t near_from;  /* near dedup reads text[near_from, len) (SFT: not the system prompt) */
    json_t *json;      /* SFT: the conversation in chat_encode's form (chat_formats.h; borrowed,
                        * valid until the next reader_next) */
    const char *detail; /* why the record is malformed, when there is more to say, or NULL */
} reader_record;

typedef struct doc_reader doc_reader;

/* Opens one input file; NULL and a message naming the file when it cannot be read. */
doc_reader *reader_open(const char *path, const reader_options *opt, gale_error *err);

/* Reads the next record: 1 and *rec filled, 0 at the end, -1 when the file cannot be read
 * further (I/O error, corrupt or truncated compressed data), with a message naming file:line. */
int reader_next(doc_reader *r, reader_record *rec, gale_error *err);

/* 1 when path can be read by byte ranges (reader_open_range): an uncompressed file whose
 * records are lines (JSONL, or text in TEXT_MODE_LINES). */
int reader_splittable(const char *path, const reader_options *opt);

/* Opens the part of a splittable file whose records are the lines starting in byte range
 * [start, end), the first of them being line first_line of the file. Consecutive ranges
 * give every line exactly once. */
doc_reader *reader_open_range(const char *path, const reader_options *opt, uint64_t start, uint64_t end,
                              uint64_t first_line, gale_error *err);

/* Counts the '\n' bytes of path in byte range [from, to). */
int reader_count_newlines(const char *path, uint64_t from, uint64_t to, uint64_t *count, gale_error *err);

/* Bytes of the file itself (compressed bytes for .gz/.zst) consumed so far. */
uint64_t reader_bytes_consumed(const doc_reader *r);
void reader_close(doc_reader *r);

/* The files named by inputs (files, folders, globs), sorted within each input, in input
 * order, minus those whose base name or path matches an exclude pattern (fnmatch). An input
 * that names nothing is an error naming it. *paths is an array of n_paths strings. */
int reader_expand_inputs(const char *const *inputs, size_t n_inputs, const char *const *excludes,
                         size_t n_excludes, char ***paths, size_t *n_paths, gale_error *err);
void reader_free_paths(char **paths, size_t n_paths);

#endif
