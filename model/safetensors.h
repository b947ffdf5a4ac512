/* safetensors: reading and writing the Hugging Face tensor file format: 8-byte little-endian
 * header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}},
 * then the raw data. Every header is checked against the file size (offsets inside the data,
 * no overlap, sizes matching dtype x shape), so a truncated or hostile file is an error, never
 * a crash. A model folder holds one `model.safetensors` or shards listed by
 * `model.safetensors.index.json`. */
#ifndef GALE_MODEL_SAFETENSORS_H
#define GALE_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "util/error.h"

enum safetensors_dtype { ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64 };

#define SAFETENSORS_MAX_DIMS 8

struct safetensors_tensor {
    char *name;
    enum safetensors_dtype dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    size_t numel;
    const uint8_t *data;       /* points into the mapped file: numel * dtype size bytes */
    int file_index;            /* which shard of a folder holds it */
};

/* One file or a sharded folder, mapped read-only. */
struct safetensors_set {
    struct safetensors_tensor *tensors;
    int n;
    /* the mapped files */
    int nfiles;
    char **paths;
    void **maps;
    size_t *map_sizes;
};

/* Parses a whole file image already in memory (buf stays owned by the caller and must
 * outlive the set's tensors). `source` names it in errors. */
int safetensors_parse(const uint8_t *buf, size_t len, const char *source,
                      struct safetensors_set *set, gale_error *err);

/* Maps and parses one .safetensors file. */
int safetensors_open(const char *path, struct safetensors_set *set, gale_error *err);

/* Opens a model folder: model.safetensors.index.json and its shards when present, else
 * model.safetensors. A tensor named twice, or an index naming a missing shard, is an error. */
int safetensors_open_dir(const char *dir, struct safetensors_set *set, gale_error *err);

/* The same for the files of another stem: STEM.safetensors.index.json and its shards, else
 * STEM.safetensors (the optimizer state of a checkpoint: "optimizer"). */
int safetensors_open_stem(const char *dir, const char *stem, struct safetensors_set *set, gale_error *err);

/* 1 when dir holds STEM.safetensors or STEM.safetensors.index.json. */
int safetensors_stem_exists(const char *dir, const char *stem);

/* File `file` (from 0) of total: STEM.safetensors when total is 1, else Hugging Face's
 * STEM-0000N-of-0000M.safetensors (N from 1). */
void safetensors_shard_name(char *buf, size_t size, const char *stem, int file, int total);

/* Writes dir/STEM.safetensors.index.json (atomically) from the headers of the total shard
 * files of stem in dir: each tensor's file and the data's total_size, as save_pretrained
 * writes it. The shards may come from different processes. */
int safetensors_write_index(const char *dir, const char *stem, int total, gale_error *err);

void safetensors_close(struct safetensors_set *set);

/* NULL when the name is absent. */
const struct safetensors_tensor *safetensors_find(const struct safetensors_set *set,
                                                  const char *name);

/* Lets the kernel drop t's pages of the mapped file from this process's memory (they are read
 * again from the file if touched): a model loaded tensor by tensor then holds one tensor's
 * pages at a time, not the whole file. No-op for a set parsed from a caller's buffer. */
void safetensors_release(const struct safetensors_set *set, const struct safetensors_tensor *t);

/* Converts a floating-point tensor (F32, F16, BF16, F64) to numel floats in out. */
int safetensors_read_f32(const struct safetensors_tensor *t, float *out, gale_error *err);

/* The same to doubles (exact for every dtype but I64 beyond 2^53). */
int safetensors_read_f64(const struct safetensors_tensor *t, double *out, gale_error *err);

/* Reads an I64 tensor (or any integer-valued float tensor) into int64s. */
int safetensors_read_i64(const struct safetensors_tensor *t, int64_t *out, gale_error *err);

/* fp32 to bfloat16, rounding to nearest even (NaN stays a quiet NaN); out may alias in. */
void safetensors_f32_to_bf16(uint16_t *out, const float *in, size_t n);

/* Bytes per element. */
size_t safetensors_dtype_size(enum safetensors_dtype dtype);
const char *safetensors_dtype_name(enum safetensors_dtype dtype);

/* One tensor to write; data holds numel elements of dtype, little-endian. */
struct safetensors_entry {
    const char *name;
    enum safetensors_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data;
};

/* Writes the tensors (in the given order) atomically to path, header padded with spaces to
 * a multiple of 8 bytes. metadata_kv holds n_metadata key, value string pairs
 * (2 * n_metadata strings) for "__metadata__"; "format": "pt" is always added. */
int safetensors_write(const char *path, const struct safetensors_entry *entries, int n,
                      const char *const *metadata_kv, int n_metadata, gale_error *err);

/* The same with each entry's data produced when it is written: data(i, ctx, err) returns entry
 * i's bytes (valid until the next call) or NULL after setting err; entries[i].data is unused.
 * A file is written one tensor at a time from a buffer of one tensor. */
typedef const void *(*safetensors_data_fn)(int i, void *ctx, gale_error *err);
int safetensors_write_streamed(const char *path, const struct safetensors_entry *entries, int n,
                               const char *const *metadata_kv, int n_metadata,
                               safetensors_data_fn data, void *ctx, gale_error *err);

#endif
