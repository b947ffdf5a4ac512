/* safetensors: checked parsing of the header, dtype conversion, sharded folders, atomic
 * writing. */
#define _GNU_SOURCE
#include "model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/file.h"

/* The format caps the header at 100 MB; a larger length is hostile or corrupt. */
#define SAFETENSORS_MAX_HEADER (100u << 20)

static const struct {
    const char *name;
    enum safetensors_dtype dtype;
    size_t size;
} dtypes[] = {
    {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2}, {"F64", ST_F64, 8}, {"I64", ST_I64, 8},
};

size_t safetensors_dtype_size(enum safetensors_dtype dtype)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (dtypes[i].dtype == dtype)
            return dtypes[i].size;
    return 0;
}

const char *safetensors_dtype_name(enum safetensors_dtype dtype)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (dtypes[i].dtype == dtype)
            return dtypes[i].name;
    return "?";
}

static int dtype_from_name(const char *name, enum safetensors_dtype *out)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (!strcmp(dtypes[i].name, name)) {
            *out = dtypes[i].dtype;
            return 0;
        }
    return -1;
}

static void set_free_tensors(struct safetensors_set *set)
{
    for (int i = 0; i < set->n; i++)
        free(set->tensors[i].name);
    free(set->tensors);
    set->tensors = NULL;
    set->n = 0;
}

void safetensors_close(struct safetensors_set *set)
{
    set_free_tensors(set);
    for (int i = 0; i < set->nfiles; i++) {
        if (set->maps && set->maps[i] && set->map_sizes[i])
            munmap(set->maps[i], set->map_sizes[i]);
        if (set->paths)
            free(set->paths[i]);
    }
    free(set->paths);
    free(set->maps);
    free(set->map_sizes);
    memset(set, 0, sizeof *set);
}

/* A JSON integer that is a valid non-negative size. */
static int json_size(json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

struct span {
    uint64_t begin, end;
    int index;
};

static int compare_spans(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Fills t from one header entry; data_len is the size of the data section. */
static int parse_entry(const char *name, json_t *entry, const uint8_t *data, uint64_t data_len,
                       struct safetensors_tensor *t, struct span *span, const char *source,
                       gale_error *err)
{
    if (!json_is_object(entry))
        return gale_fail(err, "%s: tensor \"%s\": header entry is not an object", source, name);
    json_t *dtype = json_object_get(entry, "dtype");
    json_t *shape = json_object_get(entry, "shape");
    json_t *offsets = json_object_get(entry, "data_offsets");
    if (!json_is_string(dtype) || !json_is_array(shape) || !json_is_array(offsets))
        return gale_fail(err, "%s: tensor \"%s\": needs dtype (string), shape and data_offsets "
                              "(arrays)", source, name);
    if (dtype_from_name(json_string_value(dtype), &t->dtype))
        return gale_fail(err, "%s: tensor \"%s\": unsupported dtype \"%s\" (F32, F16, BF16, F64, "
                              "I64)", source, name, json_string_value(dtype));
    size_t ndim = json_array_size(shape);
    if (ndim > SAFETENSORS_MAX_DIMS)
        return gale_fail(err, "%s: tensor \"%s\": %zu dimensions (at most %d)", source, name, ndim,
                         SAFETENSORS_MAX_DIMS);
    t->ndim = (int)ndim;
    uint64_t numel = 1;
    for (size_t i = 0; i < ndim; i++) {
        uint64_t d;
        if (json_size(json_array_get(shape, i), &d))
            return gale_fail(err, "%s: tensor \"%s\": shape[%zu] is not a non-negative integer",
                             source, name, i);
        if (d != 0 && numel > UINT64_MAX / d)
            return gale_fail(err, "%s: tensor \"%s\": shape overflows", source, name);
        numel *= d;
        t->shape[i] = (int64_t)d;
    }
    uint64_t begin, end;
    if (json_array_size(offsets) != 2 || json_size(json_array_get(offsets, 0), &begin) ||
        json_size(json_array_get(offsets, 1), &end) || begin > end)
        return gale_fail(err, "%s: tensor \"%s\": data_offsets must be [begin, end] with "
                              "begin <= end", source, name);
    if (end > data_len)
        return gale_fail(err, "%s: tensor \"%s\": data_offsets end %llu is past the data "
                              "(%llu bytes; truncated file?)", source, name,
                         (unsigned long long)end, (unsigned long long)data_len);
    size_t esize = safetensors_dtype_size(t->dtype);
    if (numel > UINT64_MAX / esize || numel * esize != end - begin)
        return gale_fail(err, "%s: tensor \"%s\": %llu bytes for a %s tensor of %llu elements",
                         source, name, (unsigned long long)(end - begin),
                         json_string_value(dtype), (unsigned long long)numel);
    t->numel = (size_t)numel;
    t->data = data + begin;
    span->begin = begin;
    span->end = end;
    t->name = gale_xstrdup(name);
    return 0;
}

static int check_overlap(struct span *spans, int n, const struct safetensors_tensor *tensors,
                         const char *source, gale_error *err)
{
    qsort(spans, (size_t)n, sizeof *spans, compare_spans);
    for (int i = 1; i < n; i++)
        if (spans[i].begin < spans[i - 1].end)
            return gale_fail(err, "%s: tensors \"%s\" and \"%s\" overlap in the data", source,
                             tensors[spans[i - 1].index].name, tensors[spans[i].index].name);
    return 0;
}

static int parse_header(json_t *root, const uint8_t *data, uint64_t data_len,
                        struct safetensors_set *set, const char *source, gale_error *err)
{
    if (!json_is_object(root))
        return gale_fail(err, "%s: the header is not a JSON object", source);
    size_t cap = json_object_size(root);
    set->tensors = gale_xcalloc(cap ? cap : 1, sizeof *set->tensors);
    struct span *spans = gale_xcalloc(cap ? cap : 1, sizeof *spans);
    const char *name;
    json_t *entry;
    int rc = 0;
    json_object_foreach(root, name, entry) {
        if (!strcmp(name, "__metadata__")) {
            if (!json_is_object(entry)) {
                rc = gale_fail(err, "%s: \"__metadata__\" is not an object", source);
                break;
            }
            continue;
        }
        spans[set->n].index = set->n;
        if (parse_entry(name, entry, data, data_len, &set->tensors[set->n], &spans[set->n], source,
                        err)) {
            rc = -1;
            break;
        }
        set->n++;
    }
    if (rc == 0)
        rc = check_overlap(spans, set->n, set->tensors, source, err);
    free(spans);
    return rc;
}

int safetensors_parse(const uint8_t *buf, size_t len, const char *source,
                      struct safetensors_set *set, gale_error *err)
{
    memset(set, 0, sizeof *set);
    if (len < 8)
        return gale_fail(err, "%s: %zu bytes is too short for a safetensors file", source, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | buf[i];
    if (hlen > SAFETENSORS_MAX_HEADER || hlen > len - 8)
        return gale_fail(err, "%s: header length %llu does not fit the file (%zu bytes; "
                              "truncated or not a safetensors file)", source,
                         (unsigned long long)hlen, len);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return gale_fail(err, "%s: header is not valid JSON (column %d: %s)", source,
                         jerr.column, jerr.text);
    int rc = parse_header(root, buf + 8 + hlen, len - 8 - hlen, set, source, err);
    json_decref(root);
    if (rc)
        set_free_tensors(set);
    return rc;
}

/* Maps a regular file read-only (an empty file maps to NULL, size 0). */
static int map_file(const char *path, void **map, size_t *size, gale_error *err)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return gale_fail_errno(err, "%s", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return gale_fail_errno(err, "%s", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return gale_fail(err, "%s: not a regular file", path);
    }
    *size = (size_t)st.st_size;
    *map = NULL;
    if (*size > 0) {
        *map = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (*map == MAP_FAILED) {
            *map = NULL;
            close(fd);
            return gale_fail_errno(err, "mmap %s", path);
        }
    }
    close(fd);
    return 0;
}

/* Adds one mapped file and its tensors to set (which may already hold others). */
static int add_file(struct safetensors_set *set, const char *path, gale_error *err)
{
    void *map = NULL;
    size_t size = 0;
    if (map_file(path, &map, &size, err))
        return -1;
    struct safetensors_set one;
    static const uint8_t empty[1];
    if (safetensors_parse(map ? map : empty, size, path, &one, err)) {
        if (map)
            munmap(map, size);
        return -1;
    }
    int f = set->nfiles++;
    set->paths = gale_xrealloc(set->paths, set->nfiles * sizeof *set->paths);
    set->maps = gale_xrealloc(set->maps, set->nfiles * sizeof *set->maps);
    set->map_sizes = gale_xrealloc(set->map_sizes, set->nfiles * sizeof *set->map_sizes);
    set->paths[f] = gale_xstrdup(path);
    set->maps[f] = map;
    set->map_sizes[f] = size;
    set->tensors = gale_xrealloc(set->tensors, (set->n + one.n + 1) * sizeof *set->tensors);
    for (int i = 0; i < one.n; i++) {
        const struct safetensors_tensor *twin = safetensors_find(set, one.tensors[i].name);
        if (twin) {
            int rc = gale_fail(err, "%s: tensor \"%s\" is also in %s", path, one.tensors[i].name,
                               set->paths[twin->file_index]);
            safetensors_close(&one);
            return rc;
        }
        one.tensors[i].file_index = f;
        set->tensors[set->n++] = one.tensors[i];
        one.tensors[i].name = NULL;
    }
    safetensors_close(&one);
    return 0;
}

int safetensors_open(const char *path, struct safetensors_set *set, gale_error *err)
{
    memset(set, 0, sizeof *set);
    if (add_file(set, path, err)) {
        safetensors_close(set);
        return -1;
    }
    return 0;
}

/* Shard file names of an index, each once, checked to be plain names inside the folder. */
static int index_files(json_t *map, const char *index_path, char ***files, int *nfiles,
                       gale_error *err)
{
    const char *name;
    json_t *file;
    *files = NULL;
    *nfiles = 0;
    json_object_foreach(map, name, file) {
        if (!json_is_string(file))
            return gale_fail(err, "%s: weight_map[\"%s\"] is not a string", index_path, name);
        const char *f = json_string_value(file);
        if (!*f || strchr(f, '/') || !strcmp(f, "..") || !strcmp(f, "."))
            return gale_fail(err, "%s: weight_map[\"%s\"] = \"%s\" is not a file name in the "
                                  "folder", index_path, name, f);
        int seen = 0;
        for (int i = 0; i < *nfiles && !seen; i++)
            seen = !strcmp((*files)[i], f);
        if (!seen) {
            *files = gale_xrealloc(*files, (*nfiles + 1) * sizeof **files);
            (*files)[(*nfiles)++] = gale_xstrdup(f);
        }
    }
    return 0;
}

static int open_index(const char *dir, const char *index_path, struct safetensors_set *set,
                      gale_error *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return gale_fail(err, "%s:%d:%d: %s", index_path, jerr.line, jerr.column, jerr.text);
    json_t *map = json_object_get(root, "weight_map");
    int rc = -1;
    char **files = NULL;
    int nfiles = 0;
    if (!json_is_object(map))
        gale_fail(err, "%s: missing object \"weight_map\"", index_path);
    else if (index_files(map, index_path, &files, &nfiles, err) == 0) {
        rc = 0;
        for (int i = 0; i < nfiles && rc == 0; i++) {
            char *path = gale_path_join(dir, files[i]);
            rc = add_file(set, path, err);
            free(path);
        }
        const char *name;
        json_t *file;
        json_object_foreach(map, name, file) {
            if (rc)
                break;
            const struct safetensors_tensor *t = safetensors_find(set, name);
            if (!t)
                rc = gale_fail(err, "%s: tensor \"%s\" is not in %s", index_path, name,
                               json_string_value(file));
            else if (strcmp(strrchr(set->paths[t->file_index], '/') + 1, json_string_value(file)))
                rc = gale_fail(err, "%s: tensor \"%s\" is in %s, not in %s", index_path, name,
                               set->paths[t->file_index], json_string_value(file));
        }
    }
    for (int i = 0; i < nfiles; i++)
        free(files[i]);
    free(files);
    json_decref(root);
    return rc;
}

/* dir/STEM.safetensors.index.json (caller frees) */
static char *index_path(const char *dir, const char *stem)
{
    char name[256];
    snprintf(name, sizeof name, "%s.safetensors.index.json", stem);
    return gale_path_join(dir, name);
}

int safetensors_open_stem(const char *dir, const char *stem, struct safetensors_set *set, gale_error *err)
{
    memset(set, 0, sizeof *set);
    char *index = index_path(dir, stem), single_name[256];
    snprintf(single_name, sizeof single_name, "%s.safetensors", stem);
    int rc;
    if (gale_path_exists(index)) {
        rc = open_index(dir, index, set, err);
    } else {
        char *single = gale_path_join(dir, single_name);
        if (!gale_path_exists(single))
            rc = gale_fail(err, "%s: neither %s nor %s.safetensors.index.json", dir, single_name, stem);
        else
            rc = add_file(set, single, err);
        free(single);
    }
    free(index);
    if (rc)
        safetensors_close(set);
    return rc;
}

int safetensors_open_dir(const char *dir, struct safetensors_set *set, gale_error *err)
{
    return safetensors_open_stem(dir, "model", set, err);
}

int safetensors_stem_exists(const char *dir, const char *stem)
{
    char name[256];
    snprintf(name, sizeof name, "%s.safetensors", stem);
    char *single = gale_path_join(dir, name), *index = index_path(dir, stem);
    int found = gale_path_exists(single) || gale_path_exists(index);
    free(single);
    free(index);
    return found;
}

void safetensors_shard_name(char *buf, size_t size, const char *stem, int file, int total)
{
    if (total == 1)
        snprintf(buf, size, "%s.safetensors", stem);
    else
        snprintf(buf, size, "%s-%05d-of-%05d.safetensors", stem, file + 1, total);
}

int safetensors_write_index(const char *dir, const char *stem, int total, gale_error *err)
{
    json_t *map = json_object();
    uint64_t bytes = 0;
    int rc = 0;
    for (int f = 0; f < total && rc == 0; f++) {
        char name[256];
        safetensors_shard_name(name, sizeof name, stem, f, total);
        char *path = gale_path_join(dir, name);
        struct safetensors_set one;
        rc = safetensors_open(path, &one, err);
        for (int i = 0; rc == 0 && i < one.n; i++) {
            json_object_set_new(map, one.tensors[i].name, json_string(name));
            bytes += one.tensors[i].numel * safetensors_dtype_size(one.tensors[i].dtype);
        }
        if (rc == 0)
            safetensors_close(&one);
        free(path);
    }
    json_t *root = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)bytes, "weight_map", map);
    if (rc == 0) {
        char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS), *path = index_path(dir, stem);
        rc = gale_write_file_atomic(path, text, strlen(text), err);
        free(path);
        free(text);
    }
    json_decref(root);
    return rc;
}

const struct safetensors_tensor *safetensors_find(const struct safetensors_set *set,
                                                  const char *name)
{
    for (int i = 0; i < set->n; i++)
        if (set->tensors[i].name && !strcmp(set->tensors[i].name, name))
            return &set->tensors[i];
    return NULL;
}

static double half_to_double(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double v;
    if (exp == 0)
        v = ldexp(mant, -24);
    else if (exp == 31)
        v = mant ? NAN : INFINITY;
    else
        v = ldexp(mant + 1024, exp - 25);
    return sign ? -v : v;
}

/* Element i of t as a double; loads go through memcpy since the data may be unaligned. */
static double element(const struct safetensors_tensor *t, size_t i)
{
    switch (t->dtype) {
    case ST_F32: {
        float f;
        memcpy(&f, t->data + 4 * i, 4);
        return f;
    }
    case ST_F64: {
        double d;
        memcpy(&d, t->data + 8 * i, 8);
        return d;
    }
    case ST_BF16: {
        uint16_t b;
        memcpy(&b, t->data + 2 * i, 2);
        uint32_t u = (uint32_t)b << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case ST_F16: {
        uint16_t h;
        memcpy(&h, t->data + 2 * i, 2);
        return half_to_double(h);
    }
    case ST_I64: {
        int64_t x;
        memcpy(&x, t->data + 8 * i, 8);
        return (double)x;
    }
    }
    return 0;
}

int safetensors_read_f32(const struct safetensors_tensor *t, float *out, gale_error *err)
{
    if (t->dtype == ST_I64)
        return gale_fail(err, "tensor \"%s\" is I64, not floating point", t->name);
    if (t->dtype == ST_F32) {
        memcpy(out, t->data, t->numel * 4);
        return 0;
    }
    if (t->dtype == ST_BF16) { /* exact: a bfloat16 is the top half of a float */
        for (size_t i = 0; i < t->numel; i++) {
            uint16_t b;
            memcpy(&b, t->data + 2 * i, 2);
            uint32_t u = (uint32_t)b << 16;
            memcpy(out + i, &u, 4);
        }
        return 0;
    }
    for (size_t i = 0; i < t->numel; i++)
        out[i] = (float)element(t, i);
    return 0;
}

void safetensors_f32_to_bf16(uint16_t *out, const float *in, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, in + i, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a NaN, quiet */
            out[i] = (uint16_t)((u >> 16) | 0x40);
        else
            out[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
    }
}

void safetensors_release(const struct safetensors_set *set, const struct safetensors_tensor *t)
{
    if (!set->maps || t->file_index < 0 || t->file_index >= set->nfiles || !set->maps[t->file_index])
        return;
    const uint8_t *map = set->maps[t->file_index];
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t begin = (size_t)(t->data - map), end = begin + t->numel * safetensors_dtype_size(t->dtype);
    begin = begin / page * page;
    end = end > set->map_sizes[t->file_index] ? set->map_sizes[t->file_index] : end;
    if (end > begin)
        madvise((void *)(map + begin), end - begin, MADV_DONTNEED);
}

int safetensors_read_f64(const struct safetensors_tensor *t, double *out, gale_error *err)
{
    for (size_t i = 0; i < t->numel; i++)
        out[i] = element(t, i);
    return 0;
}

int safetensors_read_i64(const struct safetensors_tensor *t, int64_t *out, gale_error *err)
{
    if (t->dtype == ST_I64) {
        memcpy(out, t->data, t->numel * 8);
        return 0;
    }
    for (size_t i = 0; i < t->numel; i++) {
        double d = element(t, i);
        if (d != floor(d) || fabs(d) > 9007199254740992.0)
            return gale_fail(err, "tensor \"%s\": element %zu = %g is not an integer", t->name, i,
                             d);
        out[i] = (int64_t)d;
    }
    return 0;
}

/* The header JSON, padded with spaces to a multiple of 8 bytes. */
static char *build_header(const struct safetensors_entry *entries, int n,
                          const char *const *metadata_kv, int n_metadata, size_t *hlen)
{
    json_t *root = json_object();
    json_t *meta = json_object();
    json_object_set_new(meta, "format", json_string("pt"));
    for (int i = 0; i < n_metadata; i++)
        json_object_set_new(meta, metadata_kv[2 * i], json_string(metadata_kv[2 * i + 1]));
    json_object_set_new(root, "__metadata__", meta);
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const struct safetensors_entry *e = &entries[i];
        json_t *shape = json_array();
        uint64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            json_array_append_new(shape, json_integer(e->shape[d]));
            numel *= (uint64_t)e->shape[d];
        }
        uint64_t bytes = numel * safetensors_dtype_size(e->dtype);
        json_object_set_new(root, e->name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype",
                                      safetensors_dtype_name(e->dtype), "shape", shape,
                                      "data_offsets", (json_int_t)offset,
                                      (json_int_t)(offset + bytes)));
        offset += bytes;
    }
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    text = gale_xrealloc(text, padded + 1);
    memset(text + len, ' ', padded - len);
    text[padded] = 0;
    *hlen = padded;
    return text;
}

static int write_all(FILE *f, const void *data, size_t n, const char *path, gale_error *err)
{
    if (n && fwrite(data, 1, n, f) != n)
        return gale_fail_errno(err, "write %s", path);
    return 0;
}

int safetensors_write_streamed(const char *path, const struct safetensors_entry *entries, int n,
                               const char *const *metadata_kv, int n_metadata,
                               safetensors_data_fn data, void *ctx, gale_error *err)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(entries[i].name, entries[j].name))
                return gale_fail(err, "%s: tensor \"%s\" given twice", path, entries[i].name);
    size_t hlen;
    char *header = build_header(entries, n, metadata_kv, n_metadata, &hlen);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(header);
        return gale_fail_errno(err, "%s", tmp);
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    int rc = write_all(f, len8, 8, tmp, err);
    if (rc == 0)
        rc = write_all(f, header, hlen, tmp, err);
    for (int i = 0; i < n && rc == 0; i++) {
        size_t numel = 1;
        for (int d = 0; d < entries[i].ndim; d++)
            numel *= (size_t)entries[i].shape[d];
        size_t size = numel * safetensors_dtype_size(entries[i].dtype);
        if (size == 0)
            continue;
        const void *bytes = data(i, ctx, err);
        rc = bytes ? write_all(f, bytes, size, tmp, err) : -1;
    }
    free(header);
    if (rc == 0 && (fflush(f) != 0 || fsync(fileno(f)) != 0))
        rc = gale_fail_errno(err, "write %s", tmp);
    if (fclose(f) != 0 && rc == 0)
        rc = gale_fail_errno(err, "close %s", tmp);
    if (rc == 0)
        rc = gale_rename_durable(tmp, path, err);
    if (rc)
        unlink(tmp);
    return rc;
}

static const void *entry_data(int i, void *entries, gale_error *err)
{
    return ((const struct safetensors_entry *)entries)[i].data;
}

int safetensors_write(const char *path, const struct safetensors_entry *entries, int n,
                      const char *const *metadata_kv, int n_metadata, gale_error *err)
{
    return safetensors_write_streamed(path, entries, n, metadata_kv, n_metadata, entry_data,
                                      (void *)entries, err);
}
