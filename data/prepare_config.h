/* prepare_config: the settings of `gale prepare`, from a flat YAML mapping (libyaml) and from
 * command-line flags that override it. Every YAML key has a flag of the same name with '-'
 * for '_' (min_chars: --min-chars). An unknown key, a value of the wrong type or out of range
 * is an error naming the key and the YAML line (or the flag). Relative paths are taken from
 * the current folder. */
#ifndef GALE_DATA_PREPARE_CONFIG_H
#define GALE_DATA_PREPARE_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "data/reader.h"
#include "data/shard.h"
#include "util/error.h"

typedef struct string_list {
    char **v;
    size_t n;
} string_list;

typedef struct prepare_config {
    string_list inputs;      /* files, folders, globs */
    string_list exclude;     /* fnmatch patterns on base names or paths */
    char *tokenizer;         /* SentencePiece .model */
    char *out;               /* the dataset folder made */
    char *removed;           /* JSON lines of removed documents, or NULL */
    int kind;                /* gale_shard_kind */
    int packing;             /* gale_shard_packing, or -1: by kind */
    long seq_len;
    int text_mode;           /* text_mode */
    char *separator;
    char *json_key;
    char *chat_template;     /* v1, v3, llama2 */
    char *chat_key;          /* sft: the messages' key, or NULL: messages, conversations, conversation */
    long min_chars, max_chars; /* max 0: no bound */
    long max_record_bytes;   /* a longer line or record is an error */
    int dedup_exact, dedup_near;
    double near_threshold;
    long minhash_bands, minhash_rows, ngram, max_shingles;
    long dedup_memory_mb;    /* shingle sets held in memory before spilling, per rank */
    uint64_t seed;
    double val_fraction;
    long shard_rows, zstd_level;
    int drop_overlong;       /* best_fit: drop (1) or truncate (0) */
    long pack_window;
    long threads;            /* 0: OpenMP's default */
    long report_examples;    /* malformed/filtered records reported on stderr with file:line */
    double max_rejected_share; /* more malformed records than this share of those read fail the run */
    int overwrite;           /* replace an existing prepared folder */
    int progress;            /* -1 auto (a terminal), 0 off, 1 on */
} prepare_config;

void prepare_config_init(prepare_config *c);
void prepare_config_free(prepare_config *c);

/* Reads a YAML file's settings into c (over what is already there). */
int prepare_config_load_yaml(prepare_config *c, const char *path, gale_error *err);
/* The same from text in memory; name is used in messages. */
int prepare_config_parse_yaml(prepare_config *c, const char *yaml, size_t len, const char *name,
                              gale_error *err);

/* Sets one key from text ("min_chars", "10"); where names the origin in messages. List
 * keys (inputs, exclude) are replaced by the single value. */
int prepare_config_set(prepare_config *c, const char *key, const char *value, const char *where,
                       gale_error *err);
/* Appends to a list key. */
int prepare_config_append(prepare_config *c, const char *key, const char *value, const char *where,
                          gale_error *err);
/* 1 when key is a list key (inputs, exclude). */
int prepare_config_is_list(const char *key);

/* Checks that the required settings are there and agree with each other. */
int prepare_config_check(const prepare_config *c, gale_error *err);

/* The effective settings as a JSON object (new reference), for the manifest and report. */
json_t *prepare_config_to_json(const prepare_config *c);

/* Writes the key list with types and defaults, for --help. */
void prepare_config_print_keys(FILE *f);

#endif
