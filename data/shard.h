/* shard: one HDF5 file of fixed-length token rows, the unit `gale prepare` writes and the
 * loader reads. Datasets /tokens (uint16 when the vocabulary fits, else uint32), /segments
 * (uint16, 65535 = padding) and, in SFT shards, /loss_mask (uint8), all [N, S] with
 * S = seq_len + 1, chunked by rows, byte-shuffled and compressed with the Zstandard filter
 * under its registered id 32015, so h5py with hdf5plugin reads them as they are. Root
 * attributes are listed in docs/formats.md ("Shards (HDF5)"). gale registers the zstd
 * filter itself; a shard is written under a temporary name and renamed when complete. */
#ifndef GALE_DATA_SHARD_H
#define GALE_DATA_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "util/error.h"

#define GALE_SHARD_FORMAT "gale-shard"
#define GALE_SHARD_VERSION 1
/* The /segments value of a padding position. */
#define GALE_SEGMENT_PAD 65535
/* The registered HDF5 filter id of Zstandard. */
#define GALE_H5Z_FILTER_ZSTD 32015

typedef enum { GALE_SHARD_PRETRAIN, GALE_SHARD_SFT } gale_shard_kind;
typedef enum { GALE_SHARD_CONCAT, GALE_SHARD_BEST_FIT } gale_shard_packing;

/* "pretrain"/"sft" and "concat"/"best_fit", and back (-1 for an unknown name). */
const char *shard_kind_name(gale_shard_kind kind);
const char *shard_packing_name(gale_shard_packing packing);
int shard_kind_parse(const char *name);
int shard_packing_parse(const char *name);

/* What a shard's root attributes say. */
typedef struct gale_shard_meta {
    int seq_len;                 /* rows hold seq_len + 1 tokens */
    int vocab_size;
    char tokenizer_sha256[65];   /* 64 lowercase hex digits */
    int bos_id, eos_id;
    gale_shard_kind kind;
    gale_shard_packing packing;
    int64_t n_docs;              /* documents (conversations) placed in the shard */
    int64_t n_real_tokens;       /* positions whose segment is not padding */
} gale_shard_meta;

/* 1 when hex is 64 lowercase hex digits, how shards and manifests record a SHA-256. */
int shard_sha256_valid(const char *hex);

/* Registers the zstd filter (id 32015) with HDF5 and silences HDF5's own error printing.
 * Idempotent and cheap; every entry point below calls it, so callers need not. */
int shard_hdf5_init(gale_error *err);

/* 1 when the HDF5 library is built thread-safe (it serialises calls from several threads),
 * so shards may be read from a background thread while others use HDF5. */
int shard_hdf5_threadsafe(void);

/* ---- writing ---- */

typedef struct gale_shard_writer gale_shard_writer;

/* Default zstd level of shard_writer_create when level is 0. */
#define GALE_SHARD_ZSTD_LEVEL 3

/* Starts a shard that will appear at path when shard_writer_finish succeeds; until then it
 * lives at a temporary name beside it. meta's n_docs and n_real_tokens are ignored (the
 * writer counts real tokens; n_docs is given to finish). zstd_level 0 means the default. */
gale_shard_writer *shard_writer_create(const char *path, const gale_shard_meta *meta, int zstd_level,
                                       gale_error *err);

/* Appends n_rows rows of S = seq_len + 1 values each, row-major. loss_mask is required for
 * SFT shards and must be NULL for pretraining ones. Token ids must lie in [0, vocab_size),
 * segments count 0, 1, 2, ... along a row with padding (GALE_SEGMENT_PAD) only at its end,
 * loss-mask values in {0, 1} and 0 at padding. A call refused by these checks appends
 * nothing and the writer stays usable; after a write error (disk full) only
 * shard_writer_abort is left. */
int shard_writer_append(gale_shard_writer *w, const int32_t *tokens, const uint16_t *segments,
                        const uint8_t *loss_mask, size_t n_rows, gale_error *err);

/* Rows appended so far. */
int64_t shard_writer_rows(const gale_shard_writer *w);

/* Writes the attributes (n_docs as given), closes, fsyncs and renames the file to its final
 * path. Frees w whether or not it succeeds; on failure the temporary file is removed. */
int shard_writer_finish(gale_shard_writer *w, int64_t n_docs, gale_error *err);

/* Drops an unfinished shard: removes the temporary file and frees w. NULL is a no-op. */
void shard_writer_abort(gale_shard_writer *w);

/* ---- reading ---- */

typedef struct gale_shard gale_shard;

/* Opens a shard and validates it: format and version attributes, every attribute present
 * with its type, dataset shapes [N, seq_len + 1] and types. A foreign, truncated or
 * unreadable file gives NULL and a message naming the file and what is wrong. */
gale_shard *shard_open(const char *path, gale_error *err);
void shard_close(gale_shard *s);

const gale_shard_meta *shard_meta(const gale_shard *s);
int64_t shard_rows(const gale_shard *s);
const char *shard_path(const gale_shard *s);
/* 1 when the shard stores /loss_mask. */
int shard_has_loss_mask(const gale_shard *s);
/* Bytes per stored token id: 2 or 4. */
int shard_token_bytes(const gale_shard *s);

/* Reads rows [first, first + n_rows) into caller buffers of n_rows * (seq_len + 1) values.
 * Any output may be NULL to skip it. Tokens come back as int32 whatever the storage type.
 * loss_mask is the stored one, or for a shard without /loss_mask "every non-padding
 * position" (derived from /segments). */
int shard_read_rows(gale_shard *s, int64_t first, size_t n_rows, int32_t *tokens, uint16_t *segments,
                    uint8_t *loss_mask, gale_error *err);

/* Uncompressed and stored (on-disk) bytes of all datasets together. */
typedef struct gale_shard_storage {
    uint64_t raw_bytes, stored_bytes;
    int chunk_rows;
} gale_shard_storage;
int shard_storage(gale_shard *s, gale_shard_storage *out, gale_error *err);

#endif
