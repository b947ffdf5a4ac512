/* manifest: `manifest.json`, the table of contents of a prepared folder: what was made
 * (kind, packing, seq_len), from which inputs, with which tokenizer, and every shard with
 * its split, row count and SHA-256. `gale prepare` builds it with manifest_add_shard as
 * shards are finished and writes it last (atomically); readers load it and check that it
 * agrees with the shards on disk, refusing the folder with the reason when it does not. */
#ifndef GALE_DATA_MANIFEST_H
#define GALE_DATA_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include "data/shard.h"
#include "util/error.h"

#define GALE_MANIFEST_FILE "manifest.json"
#define GALE_MANIFEST_VERSION 1

typedef struct gale_manifest_input {
    char *path;
    int64_t bytes;       /* size when prepared, -1 when unknown */
    char sha256[65];     /* "" when not recorded */
} gale_manifest_input;

typedef struct gale_manifest_shard {
    char *file;          /* name inside the folder, e.g. "train-00000.h5" */
    char split[8];       /* "train" or "val" */
    int64_t rows;
    int64_t n_docs, n_real_tokens;
    int64_t bytes;       /* size of the file, -1 when not recorded (older manifests) */
    char sha256[65];     /* of the whole file */
} gale_manifest_shard;

typedef struct gale_manifest {
    int version;                 /* GALE_MANIFEST_VERSION */
    char created_at[32];         /* ISO 8601 UTC, set by manifest_write when empty */
    gale_shard_kind kind;
    gale_shard_packing packing;
    int seq_len;
    struct {
        char *path;              /* the .model file used, as given */
        char sha256[65];
        int vocab_size, bos_id, eos_id;
    } tokenizer;
    gale_manifest_input *inputs;
    size_t n_inputs;
    gale_manifest_shard *shards;
    size_t n_shards;
    char *config_json;           /* optional: the prepare settings as a JSON object, or NULL */
} gale_manifest;

/* Zeroes m and sets the version; fill kind, packing, seq_len and tokenizer directly. */
void manifest_init(gale_manifest *m);
void manifest_free(gale_manifest *m);

/* Records an input file: its size from stat, and sha256 when not NULL. */
int manifest_add_input(gale_manifest *m, const char *path, const char *sha256, gale_error *err);

/* Records dir/file, a finished shard of split "train" or "val": opens it, checks that its
 * attributes agree with m (seq_len, kind, packing, tokenizer sha256, vocab size, BOS/EOS),
 * and takes its row count, document and token counts and SHA-256 from the file. */
int manifest_add_shard(gale_manifest *m, const char *dir, const char *file, const char *split,
                       gale_error *err);

/* Writes dir/manifest.json atomically. */
int manifest_write(const gale_manifest *m, const char *dir, gale_error *err);

/* Reads dir/manifest.json into m (initialised here); a missing file, bad JSON or a missing
 * or mistyped key is an error naming the file and the key. */
int manifest_read(gale_manifest *m, const char *dir, gale_error *err);

/* Checks that every shard exists, opens as a gale shard, and agrees with m on row count
 * and attributes; with verify_checksums also that its SHA-256 matches (reads every byte). */
int manifest_verify(const gale_manifest *m, const char *dir, int verify_checksums, gale_error *err);

/* The checks of manifest_verify for shard i alone (not the unlisted-file check). The file's
 * size is checked before HDF5 opens it. */
int manifest_verify_shard(const gale_manifest *m, const char *dir, size_t i, int verify_checksums, gale_error *err);

/* manifest_read followed by manifest_verify. */
int manifest_load(gale_manifest *m, const char *dir, int verify_checksums, gale_error *err);

/* Rows over the shards of a split ("train", "val"). */
int64_t manifest_split_rows(const gale_manifest *m, const char *split);

#endif
