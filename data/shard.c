/* shard: HDF5 shard writer and reader (format in docs/formats.md, "Shards (HDF5)"). */
#define _GNU_SOURCE
#include "data/shard.h"

#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "data/hdf5_heap_check.h"
#include "data/zstd_filter.h"
#include "util/file.h"

/* Rows per chunk: about this many bytes of tokens, between 1 and 256 rows. */
#define CHUNK_TARGET_BYTES (512 * 1024)
#define CHUNK_MAX_ROWS 256
/* Chunks of each dataset kept decompressed by a reader, so reading rows in order decodes
 * each chunk once (random rows gain nothing from more: a loader keeps many shards open). */
#define READ_CACHE_CHUNKS 2

enum { DS_TOKENS, DS_SEGMENTS, DS_LOSS_MASK, N_DATASETS };
static const char *const dataset_names[N_DATASETS] = {"tokens", "segments", "loss_mask"};

const char *shard_kind_name(gale_shard_kind kind)
{
    return kind == GALE_SHARD_SFT ? "sft" : "pretrain";
}

const char *shard_packing_name(gale_shard_packing packing)
{
    return packing == GALE_SHARD_BEST_FIT ? "best_fit" : "concat";
}

int shard_kind_parse(const char *name)
{
    if (!strcmp(name, "pretrain"))
        return GALE_SHARD_PRETRAIN;
    if (!strcmp(name, "sft"))
        return GALE_SHARD_SFT;
    return -1;
}

int shard_packing_parse(const char *name)
{
    if (!strcmp(name, "concat"))
        return GALE_SHARD_CONCAT;
    if (!strcmp(name, "best_fit"))
        return GALE_SHARD_BEST_FIT;
    return -1;
}

/* HDF5 1.10 cannot close a file once flushing it has failed (a full disk): the close fails
 * with "slist already enabled" and the file stays half closed, and the library's exit handler
 * then crashes closing it again (H5F__close_cb). Without that handler such a file is released
 * by the kernel at exit; every file gale completes is closed by then. Must run before the
 * library starts, hence a constructor. */
__attribute__((constructor)) static void skip_hdf5_exit_handler(void)
{
    H5dont_atexit();
}

/* HDF5 prints its error stack per thread unless told not to; gale reports errors itself. */
static void silence_hdf5(void)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

int shard_hdf5_init(gale_error *err)
{
    silence_hdf5();
    if (zstd_filter_register() != 0)
        return gale_fail(err, "HDF5 refused to register the zstd filter (id %d)", GALE_H5Z_FILTER_ZSTD);
    return 0;
}

int shard_hdf5_threadsafe(void)
{
    hbool_t threadsafe = 0;
    return H5is_library_threadsafe(&threadsafe) >= 0 && threadsafe;
}

/* File access without HDF5's file locks: a shard is private to its writer until renamed and
 * never changes after, and locks fail outright on file systems without flock (NFS, Lustre
 * on many clusters). The caller closes the list. */
static hid_t unlocked_file_access(void)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
#if H5_VERSION_GE(1, 10, 7)
    if (fapl >= 0)
        H5Pset_file_locking(fapl, 0, 1);
#endif
    return fapl;
}

/* The innermost HDF5 error message (where the failure was detected), appended to gale's own
 * message; for a failed system call only its errno text ("No space left on device"). */
static herr_t innermost_error(unsigned n, const H5E_error2_t *e, void *data)
{
    char *out = data;
    if (n != 0 || !e->desc)
        return 0;
    const char *sys = strstr(e->desc, "error message = '");
    if (sys) {
        sys += strlen("error message = '");
        snprintf(out, 512, "%.*s", (int)strcspn(sys, "'"), sys);
    } else {
        snprintf(out, 512, "%s", e->desc);
    }
    for (char *c = out; *c; c++)
        if (*c == '\n')
            *c = ' ';
    return 0;
}

static int fail_hdf5(gale_error *err, const char *path, const char *what)
{
    char detail[512] = "";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, detail);
    H5Eclear2(H5E_DEFAULT);
    if (detail[0])
        return gale_fail(err, "%s: %s (%s)", path, what, detail);
    return gale_fail(err, "%s: %s", path, what);
}

/* ---- attributes ---- */

static int write_int_attr(hid_t loc, const char *name, int64_t value)
{
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(loc, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr < 0 ? -1 : H5Awrite(attr, H5T_NATIVE_INT64, &value);
    if (attr >= 0)
        H5Aclose(attr);
    H5Sclose(space);
    return rc < 0 ? -1 : 0;
}

/* Variable-length UTF-8, what h5py writes for a Python str (and reads back as one). */
static int write_string_attr(hid_t loc, const char *name, const char *value)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr < 0 ? -1 : H5Awrite(attr, type, &value);
    if (attr >= 0)
        H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
    return rc < 0 ? -1 : 0;
}

static int write_attrs(hid_t file, const gale_shard_meta *m)
{
    int rc = 0;
    rc |= write_string_attr(file, "format", GALE_SHARD_FORMAT);
    rc |= write_int_attr(file, "version", GALE_SHARD_VERSION);
    rc |= write_int_attr(file, "seq_len", m->seq_len);
    rc |= write_int_attr(file, "vocab_size", m->vocab_size);
    rc |= write_string_attr(file, "tokenizer_sha256", m->tokenizer_sha256);
    rc |= write_int_attr(file, "bos_id", m->bos_id);
    rc |= write_int_attr(file, "eos_id", m->eos_id);
    rc |= write_string_attr(file, "kind", shard_kind_name(m->kind));
    rc |= write_string_attr(file, "packing", shard_packing_name(m->packing));
    rc |= write_int_attr(file, "n_docs", m->n_docs);
    rc |= write_int_attr(file, "n_real_tokens", m->n_real_tokens);
    return rc;
}

/* Opens a scalar attribute; -1 with a message when it is missing or not a single value. */
static hid_t open_scalar_attr(hid_t file, const char *path, const char *name, gale_error *err)
{
    if (H5Aexists(file, name) <= 0) {
        gale_fail(err, "%s: attribute '%s' is missing", path, name);
        return -1;
    }
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    if (attr < 0) {
        fail_hdf5(err, path, "cannot open an attribute");
        return -1;
    }
    hid_t space = H5Aget_space(attr);
    hssize_t n = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    if (space >= 0)
        H5Sclose(space);
    if (n != 1) {
        H5Aclose(attr);
        gale_fail(err, "%s: attribute '%s' is not a single value", path, name);
        return -1;
    }
    return attr;
}

static int read_int_attr(hid_t file, const char *path, const char *name, int64_t *out, gale_error *err)
{
    hid_t attr = open_scalar_attr(file, path, name, err);
    if (attr < 0)
        return -1;
    hid_t type = H5Aget_type(attr);
    int is_int = H5Tget_class(type) == H5T_INTEGER;
    H5Tclose(type);
    herr_t rc = is_int ? H5Aread(attr, H5T_NATIVE_INT64, out) : -1;
    H5Aclose(attr);
    if (!is_int)
        return gale_fail(err, "%s: attribute '%s' is not an integer", path, name);
    if (rc < 0)
        return fail_hdf5(err, path, "cannot read an integer attribute");
    return 0;
}

static int read_int_attr_range(hid_t file, const char *path, const char *name, int64_t lo, int64_t hi, int *out,
                               gale_error *err)
{
    int64_t v;
    if (read_int_attr(file, path, name, &v, err) != 0)
        return -1;
    if (v < lo || v > hi)
        return gale_fail(err, "%s: attribute '%s' = %lld is out of range [%lld, %lld]", path, name, (long long)v,
                         (long long)lo, (long long)hi);
    *out = (int)v;
    return 0;
}

/* Reads a string attribute, fixed or variable length (h5py writes either), into out. */
static int read_string_attr(hid_t file, const char *path, const char *name, char *out, size_t cap, gale_error *err)
{
    hid_t attr = open_scalar_attr(file, path, name, err);
    if (attr < 0)
        return -1;
    hid_t type = H5Aget_type(attr);
    int rc = -1;
    if (H5Tget_class(type) != H5T_STRING) {
        gale_fail(err, "%s: attribute '%s' is not a string", path, name);
    } else if (H5Tis_variable_str(type) > 0) {
        hid_t mem = H5Tcopy(H5T_C_S1);
        H5Tset_size(mem, H5T_VARIABLE);
        H5Tset_cset(mem, H5Tget_cset(type));
        char *s = NULL;
        if (H5Aread(attr, mem, &s) < 0) {
            fail_hdf5(err, path, "cannot read a string attribute");
        } else {
            rc = 0;
            if (!s || strlen(s) >= cap)
                rc = gale_fail(err, "%s: attribute '%s' is empty or too long", path, name);
            else
                snprintf(out, cap, "%s", s);
            H5free_memory(s);
        }
        H5Tclose(mem);
    } else {
        size_t n = H5Tget_size(type);
        if (n >= cap) {
            gale_fail(err, "%s: attribute '%s' is too long (%zu bytes)", path, name, n);
        } else {
            hid_t mem = H5Tcopy(type);
            memset(out, 0, cap);
            if (H5Aread(attr, mem, out) < 0)
                fail_hdf5(err, path, "cannot read a string attribute");
            else
                rc = 0;
            H5Tclose(mem);
        }
    }
    H5Tclose(type);
    H5Aclose(attr);
    return rc;
}

int shard_sha256_valid(const char *s)
{
    if (strlen(s) != 64)
        return 0;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return 0;
    return 1;
}

static int read_attrs(hid_t file, const char *path, gale_shard_meta *m, gale_error *err)
{
    char text[128];
    int64_t version;
    if (H5Aexists(file, "format") <= 0)
        return gale_fail(err, "%s: not a gale shard (no 'format' attribute)", path);
    if (read_string_attr(file, path, "format", text, sizeof text, err) != 0)
        return -1;
    if (strcmp(text, GALE_SHARD_FORMAT) != 0)
        return gale_fail(err, "%s: not a gale shard (format attribute is '%s', expected '%s')", path, text,
                         GALE_SHARD_FORMAT);
    if (read_int_attr(file, path, "version", &version, err) != 0)
        return -1;
    if (version != GALE_SHARD_VERSION)
        return gale_fail(err, "%s: shard version %lld is not supported (this gale reads version %d)", path,
                         (long long)version, GALE_SHARD_VERSION);
    if (read_int_attr_range(file, path, "seq_len", 1, 1 << 24, &m->seq_len, err) != 0 ||
        read_int_attr_range(file, path, "vocab_size", 1, INT32_MAX, &m->vocab_size, err) != 0 ||
        read_int_attr_range(file, path, "bos_id", -1, m->vocab_size - 1, &m->bos_id, err) != 0 ||
        read_int_attr_range(file, path, "eos_id", -1, m->vocab_size - 1, &m->eos_id, err) != 0 ||
        read_int_attr(file, path, "n_docs", &m->n_docs, err) != 0 ||
        read_int_attr(file, path, "n_real_tokens", &m->n_real_tokens, err) != 0)
        return -1;
    if (read_string_attr(file, path, "tokenizer_sha256", m->tokenizer_sha256, sizeof m->tokenizer_sha256, err) != 0)
        return -1;
    if (!shard_sha256_valid(m->tokenizer_sha256))
        return gale_fail(err, "%s: attribute 'tokenizer_sha256' is not 64 lowercase hex digits", path);
    if (read_string_attr(file, path, "kind", text, sizeof text, err) != 0)
        return -1;
    int kind = shard_kind_parse(text);
    if (kind < 0)
        return gale_fail(err, "%s: attribute 'kind' is '%s', expected 'pretrain' or 'sft'", path, text);
    m->kind = kind;
    if (read_string_attr(file, path, "packing", text, sizeof text, err) != 0)
        return -1;
    int packing = shard_packing_parse(text);
    if (packing < 0)
        return gale_fail(err, "%s: attribute 'packing' is '%s', expected 'concat' or 'best_fit'", path, text);
    m->packing = packing;
    if (m->n_docs < 0 || m->n_real_tokens < 0)
        return gale_fail(err, "%s: attributes 'n_docs' and 'n_real_tokens' must not be negative", path);
    return 0;
}

/* ---- writing ---- */

struct gale_shard_writer {
    char *path, *tmp_path;
    gale_shard_meta meta;
    int row_len;                /* S */
    int token_bytes;            /* 2 or 4 */
    int chunk_rows;
    int n_datasets;             /* 2, or 3 with /loss_mask */
    hid_t file;
    hid_t datasets[N_DATASETS];
    int64_t rows_written;       /* rows in the file */
    /* rows waiting for a full chunk, already in their stored types */
    size_t pending;
    void *pending_tokens;
    uint16_t *pending_segments;
    uint8_t *pending_mask;
};

static hid_t token_file_type(int token_bytes)
{
    return token_bytes == 2 ? H5T_STD_U16LE : H5T_STD_U32LE;
}

static hid_t dataset_file_type(const gale_shard_writer *w, int ds)
{
    return ds == DS_TOKENS ? token_file_type(w->token_bytes) : ds == DS_SEGMENTS ? H5T_STD_U16LE : H5T_STD_U8LE;
}

static hid_t dataset_mem_type(const gale_shard_writer *w, int ds)
{
    if (ds == DS_TOKENS)
        return w->token_bytes == 2 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32;
    return ds == DS_SEGMENTS ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT8;
}

/* Filters on write: shuffle, zstd, then Fletcher-32 over the stored (compressed) bytes, so a
 * changed byte in a chunk is caught before the zstd decoder sees it. */
static int create_datasets(gale_shard_writer *w, int zstd_level)
{
    hsize_t dims[2] = {0, (hsize_t)w->row_len};
    hsize_t maxdims[2] = {H5S_UNLIMITED, (hsize_t)w->row_len};
    hsize_t chunk[2] = {(hsize_t)w->chunk_rows, (hsize_t)w->row_len};
    unsigned level = (unsigned)zstd_level;
    hid_t space = H5Screate_simple(2, dims, maxdims);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    int rc = space < 0 || dcpl < 0 || H5Pset_chunk(dcpl, 2, chunk) < 0 || H5Pset_shuffle(dcpl) < 0 ||
                     H5Pset_filter(dcpl, GALE_H5Z_FILTER_ZSTD, H5Z_FLAG_MANDATORY, 1, &level) < 0 ||
                     H5Pset_fletcher32(dcpl) < 0 || H5Pset_obj_track_times(dcpl, 0) < 0
                 ? -1
                 : 0;
    for (int ds = 0; rc == 0 && ds < w->n_datasets; ds++) {
        w->datasets[ds] = H5Dcreate2(w->file, dataset_names[ds], dataset_file_type(w, ds), space, H5P_DEFAULT, dcpl,
                                     H5P_DEFAULT);
        if (w->datasets[ds] < 0)
            rc = -1;
    }
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (space >= 0)
        H5Sclose(space);
    return rc;
}

static void writer_free(gale_shard_writer *w)
{
    for (int ds = 0; ds < N_DATASETS; ds++)
        if (w->datasets[ds] > 0)
            H5Dclose(w->datasets[ds]);
    if (w->file > 0)
        H5Fclose(w->file);
    free(w->pending_tokens);
    free(w->pending_segments);
    free(w->pending_mask);
    free(w->path);
    free(w->tmp_path);
    free(w);
}

static int chunk_rows_for(int row_len, int token_bytes)
{
    int rows = CHUNK_TARGET_BYTES / (row_len * token_bytes);
    return rows < 1 ? 1 : rows > CHUNK_MAX_ROWS ? CHUNK_MAX_ROWS : rows;
}

static int check_meta(const char *path, const gale_shard_meta *m, gale_error *err)
{
    if (m->seq_len < 1 || m->seq_len > (1 << 24))
        return gale_fail(err, "%s: seq_len %d is out of range [1, %d]", path, m->seq_len, 1 << 24);
    if (m->vocab_size < 1)
        return gale_fail(err, "%s: vocab_size %d must be positive", path, m->vocab_size);
    if (m->bos_id < -1 || m->bos_id >= m->vocab_size || m->eos_id < -1 || m->eos_id >= m->vocab_size)
        return gale_fail(err, "%s: bos_id %d or eos_id %d is outside the vocabulary (%d)", path, m->bos_id, m->eos_id,
                         m->vocab_size);
    if (!shard_sha256_valid(m->tokenizer_sha256))
        return gale_fail(err, "%s: tokenizer_sha256 must be 64 lowercase hex digits", path);
    if (m->kind != GALE_SHARD_PRETRAIN && m->kind != GALE_SHARD_SFT)
        return gale_fail(err, "%s: unknown shard kind %d", path, (int)m->kind);
    if (m->packing != GALE_SHARD_CONCAT && m->packing != GALE_SHARD_BEST_FIT)
        return gale_fail(err, "%s: unknown packing %d", path, (int)m->packing);
    return 0;
}

gale_shard_writer *shard_writer_create(const char *path, const gale_shard_meta *meta, int zstd_level,
                                       gale_error *err)
{
    if (shard_hdf5_init(err) != 0 || check_meta(path, meta, err) != 0)
        return NULL;
    if (zstd_level == 0)
        zstd_level = GALE_SHARD_ZSTD_LEVEL;
    if (zstd_level < 1 || zstd_level > ZSTD_maxCLevel()) {
        gale_fail(err, "%s: zstd level %d is out of range [1, %d]", path, zstd_level, ZSTD_maxCLevel());
        return NULL;
    }
    gale_shard_writer *w = gale_xcalloc(1, sizeof *w);
    w->path = gale_xstrdup(path);
    if (asprintf(&w->tmp_path, "%s.tmp.%ld", path, (long)getpid()) < 0)
        abort();
    w->meta = *meta;
    w->meta.n_docs = 0;
    w->meta.n_real_tokens = 0;
    w->row_len = meta->seq_len + 1;
    w->token_bytes = meta->vocab_size <= 65536 ? 2 : 4;
    w->chunk_rows = chunk_rows_for(w->row_len, w->token_bytes);
    w->n_datasets = meta->kind == GALE_SHARD_SFT ? 3 : 2;
    size_t cells = (size_t)w->chunk_rows * w->row_len;
    w->pending_tokens = gale_xmalloc(cells * w->token_bytes);
    w->pending_segments = gale_xmalloc(cells * sizeof(uint16_t));
    if (w->n_datasets == 3)
        w->pending_mask = gale_xmalloc(cells);
    hid_t fapl = unlocked_file_access();
    /* The 1.10 file format checksums the superblock, object headers (attributes included)
     * and chunk index, so damage to them is a read error rather than a misread. */
    if (fapl >= 0)
        H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110);
    /* no object times (the 1.10 format stores them): the same rows give the same bytes */
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    if (fcpl >= 0)
        H5Pset_obj_track_times(fcpl, 0);
    w->file = H5Fcreate(w->tmp_path, H5F_ACC_TRUNC, fcpl, fapl);
    if (w->file < 0)
        fail_hdf5(err, w->path, "cannot create the shard file"); /* before H5Pclose clears the stack */
    if (fcpl >= 0)
        H5Pclose(fcpl);
    H5Pclose(fapl);
    if (w->file < 0) {
        w->file = 0;
        unlink(w->tmp_path);
        writer_free(w);
        return NULL;
    }
    if (create_datasets(w, zstd_level) != 0) {
        fail_hdf5(err, w->path, "cannot create the shard datasets");
        shard_writer_abort(w);
        return NULL;
    }
    return w;
}

/* Writes the pending rows at the end of every dataset. */
static int flush_pending(gale_shard_writer *w, gale_error *err)
{
    if (w->pending == 0)
        return 0;
    const void *bufs[N_DATASETS] = {w->pending_tokens, w->pending_segments, w->pending_mask};
    hsize_t start[2] = {(hsize_t)w->rows_written, 0};
    hsize_t count[2] = {w->pending, (hsize_t)w->row_len};
    hsize_t dims[2] = {(hsize_t)w->rows_written + w->pending, (hsize_t)w->row_len};
    hid_t mem = H5Screate_simple(2, count, NULL);
    int rc = 0;
    for (int ds = 0; rc == 0 && ds < w->n_datasets; ds++) {
        hid_t space = -1;
        if (H5Dset_extent(w->datasets[ds], dims) < 0 || (space = H5Dget_space(w->datasets[ds])) < 0 ||
            H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
            H5Dwrite(w->datasets[ds], dataset_mem_type(w, ds), mem, space, H5P_DEFAULT, bufs[ds]) < 0)
            rc = fail_hdf5(err, w->path, "cannot write rows");
        if (space >= 0)
            H5Sclose(space);
    }
    H5Sclose(mem);
    w->rows_written += w->pending;
    w->pending = 0;
    return rc;
}

/* Checks one row against the format; 0 or -1 with a message naming the row and column. */
static int check_row(const gale_shard_writer *w, int64_t row, const int32_t *tokens, const uint16_t *segments,
                     const uint8_t *mask, gale_error *err)
{
    for (int j = 0; j < w->row_len; j++) {
        if (tokens[j] < 0 || tokens[j] >= w->meta.vocab_size)
            return gale_fail(err, "%s: row %lld column %d: token id %d is outside the vocabulary (%d)", w->path,
                             (long long)row, j, tokens[j], w->meta.vocab_size);
        uint16_t prev = j > 0 ? segments[j - 1] : 0;
        int ok = segments[j] == GALE_SEGMENT_PAD
                     ? 1
                     : j == 0 ? segments[j] == 0
                              : prev != GALE_SEGMENT_PAD && (segments[j] == prev || segments[j] == prev + 1);
        if (!ok)
            return gale_fail(err,
                             "%s: row %lld column %d: segment %u does not follow %u (segments count 0, 1, 2, ... "
                             "and padding comes last)",
                             w->path, (long long)row, j, segments[j], prev);
        if (mask && (mask[j] > 1 || (mask[j] && segments[j] == GALE_SEGMENT_PAD)))
            return gale_fail(err, "%s: row %lld column %d: loss mask %u must be 0 or 1, and 0 at padding", w->path,
                             (long long)row, j, mask[j]);
    }
    return 0;
}

int shard_writer_append(gale_shard_writer *w, const int32_t *tokens, const uint16_t *segments,
                        const uint8_t *loss_mask, size_t n_rows, gale_error *err)
{
    if ((loss_mask != NULL) != (w->n_datasets == 3))
        return gale_fail(err, "%s: a %s shard %s", w->path, shard_kind_name(w->meta.kind),
                         loss_mask ? "takes no loss mask" : "needs a loss mask");
    size_t S = (size_t)w->row_len;
    /* every row is checked before any is taken, so a refused call appends nothing */
    for (size_t i = 0; i < n_rows; i++)
        if (check_row(w, shard_writer_rows(w) + (int64_t)i, tokens + i * S, segments + i * S,
                      loss_mask ? loss_mask + i * S : NULL, err) != 0)
            return -1;
    for (size_t i = 0; i < n_rows; i++) {
        const int32_t *t = tokens + i * S;
        const uint16_t *s = segments + i * S;
        const uint8_t *m = loss_mask ? loss_mask + i * S : NULL;
        size_t at = w->pending * S;
        for (size_t j = 0; j < S; j++) {
            if (w->token_bytes == 2)
                ((uint16_t *)w->pending_tokens)[at + j] = (uint16_t)t[j];
            else
                ((uint32_t *)w->pending_tokens)[at + j] = (uint32_t)t[j];
            w->meta.n_real_tokens += s[j] != GALE_SEGMENT_PAD;
        }
        memcpy(w->pending_segments + at, s, S * sizeof *s);
        if (m)
            memcpy(w->pending_mask + at, m, S);
        if (++w->pending == (size_t)w->chunk_rows && flush_pending(w, err) != 0)
            return -1;
    }
    return 0;
}

int64_t shard_writer_rows(const gale_shard_writer *w)
{
    return w->rows_written + (int64_t)w->pending;
}

int shard_writer_finish(gale_shard_writer *w, int64_t n_docs, gale_error *err)
{
    w->meta.n_docs = n_docs;
    if (n_docs < 0) {
        gale_fail(err, "%s: n_docs %lld must not be negative", w->path, (long long)n_docs);
        shard_writer_abort(w);
        return -1;
    }
    if (flush_pending(w, err) != 0) {
        shard_writer_abort(w);
        return -1;
    }
    if (write_attrs(w->file, &w->meta) != 0) {
        fail_hdf5(err, w->path, "cannot write the shard attributes");
        shard_writer_abort(w);
        return -1;
    }
    /* Flushing first makes a full disk show while every object is still open; a failed
     * H5Fclose leaves the library a half-closed file that crashes it at exit. */
    if (H5Fflush(w->file, H5F_SCOPE_LOCAL) < 0) {
        fail_hdf5(err, w->path, "cannot complete the shard file");
        shard_writer_abort(w);
        return -1;
    }
    int rc = 0;
    for (int ds = 0; ds < w->n_datasets; ds++) {
        if (H5Dclose(w->datasets[ds]) < 0 && rc == 0)
            rc = fail_hdf5(err, w->path, "cannot write a dataset");
        w->datasets[ds] = 0;
    }
    if (H5Fclose(w->file) < 0 && rc == 0)
        rc = fail_hdf5(err, w->path, "cannot complete the shard file");
    w->file = 0;
    if (rc == 0 && gale_fsync_path(w->tmp_path, err) != 0)
        rc = -1;
    if (rc == 0 && gale_rename_durable(w->tmp_path, w->path, err) != 0)
        rc = -1;
    if (rc != 0)
        unlink(w->tmp_path);
    writer_free(w);
    return rc;
}

void shard_writer_abort(gale_shard_writer *w)
{
    if (!w)
        return;
    /* The file is thrown away: emptying it first gives the closes below room to write what
     * HDF5 still holds when the disk is full, so every object closes cleanly. */
    if (truncate(w->tmp_path, 0) != 0) {
        /* nothing to free: closing can still succeed */
    }
    for (int ds = 0; ds < N_DATASETS; ds++) {
        if (w->datasets[ds] > 0)
            H5Dclose(w->datasets[ds]);
        w->datasets[ds] = 0;
    }
    if (w->file > 0)
        H5Fclose(w->file);
    w->file = 0;
    H5Eclear2(H5E_DEFAULT);
    unlink(w->tmp_path);
    writer_free(w);
}

/* ---- reading ---- */

struct gale_shard {
    char *path;
    gale_shard_meta meta;
    int64_t rows;
    int row_len;
    int token_bytes;
    int chunk_rows;
    hid_t file;
    hid_t datasets[N_DATASETS];   /* loss_mask is 0 when absent */
};

void shard_close(gale_shard *s)
{
    if (!s)
        return;
    for (int ds = 0; ds < N_DATASETS; ds++)
        if (s->datasets[ds] > 0)
            H5Dclose(s->datasets[ds]);
    if (s->file > 0)
        H5Fclose(s->file);
    free(s->path);
    free(s);
}

/* Checks a dataset's shape [rows, S] and element type; rows comes from /tokens. */
static int check_dataset(gale_shard *s, int ds, size_t want_bytes, gale_error *err)
{
    hid_t d = s->datasets[ds];
    hid_t type = H5Dget_type(d), space = H5Dget_space(d);
    hsize_t dims[2] = {0, 0};
    int ok_space =
        space >= 0 && H5Sget_simple_extent_ndims(space) == 2 && H5Sget_simple_extent_dims(space, dims, NULL) == 2;
    int ok_type = type >= 0 && H5Tget_class(type) == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_NONE;
    size_t bytes = type >= 0 ? H5Tget_size(type) : 0;
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    if (!ok_space || dims[1] != (hsize_t)s->row_len)
        return gale_fail(err, "%s: /%s has shape [%llu, %llu], expected [N, %d] (seq_len + 1)", s->path,
                         dataset_names[ds], (unsigned long long)dims[0], (unsigned long long)dims[1], s->row_len);
    if (ds == DS_TOKENS) {
        if (!ok_type || (bytes != 2 && bytes != 4))
            return gale_fail(err, "%s: /tokens must hold unsigned 16- or 32-bit integers", s->path);
        s->token_bytes = (int)bytes;
        s->rows = (int64_t)dims[0];
    } else {
        if (!ok_type || bytes != want_bytes)
            return gale_fail(err, "%s: /%s must hold unsigned %zu-bit integers", s->path, dataset_names[ds],
                             want_bytes * 8);
        if ((int64_t)dims[0] != s->rows)
            return gale_fail(err, "%s: /%s has %llu rows but /tokens has %lld", s->path, dataset_names[ds],
                             (unsigned long long)dims[0], (long long)s->rows);
    }
    return 0;
}

static int open_datasets(gale_shard *s, gale_error *err)
{
    static const size_t element_bytes[N_DATASETS] = {0, 2, 1};
    for (int ds = 0; ds < N_DATASETS; ds++) {
        if (H5Lexists(s->file, dataset_names[ds], H5P_DEFAULT) <= 0) {
            if (ds == DS_LOSS_MASK && s->meta.kind == GALE_SHARD_PRETRAIN)
                continue;
            return gale_fail(err, "%s: dataset /%s is missing", s->path, dataset_names[ds]);
        }
        s->datasets[ds] = H5Dopen2(s->file, dataset_names[ds], H5P_DEFAULT);
        if (s->datasets[ds] < 0) {
            s->datasets[ds] = 0;
            return fail_hdf5(err, s->path, "cannot open a dataset");
        }
        if (check_dataset(s, ds, element_bytes[ds], err) != 0)
            return -1;
    }
    /* Size each dataset's chunk cache to its chunks, so reading rows in order decodes each
     * chunk once. */
    hid_t dcpl = H5Dget_create_plist(s->datasets[DS_TOKENS]);
    hsize_t chunk[2] = {0, 0};
    if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, 2, chunk) == 2)
        s->chunk_rows = (int)chunk[0];
    if (dcpl >= 0)
        H5Pclose(dcpl);
    return 0;
}

static int reopen_with_cache(gale_shard *s, gale_error *err)
{
    if (s->chunk_rows <= 0)
        return 0;
    size_t bytes = (size_t)READ_CACHE_CHUNKS * s->chunk_rows * s->row_len * 4;
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    int rc = dapl >= 0 && H5Pset_chunk_cache(dapl, 521, bytes, 1.0) >= 0 ? 0 : -1;
    for (int ds = 0; rc == 0 && ds < N_DATASETS; ds++) {
        if (s->datasets[ds] <= 0)
            continue;
        H5Dclose(s->datasets[ds]);
        s->datasets[ds] = H5Dopen2(s->file, dataset_names[ds], dapl);
        if (s->datasets[ds] < 0) {
            s->datasets[ds] = 0;
            rc = -1;
        }
    }
    if (dapl >= 0)
        H5Pclose(dapl);
    return rc == 0 ? 0 : fail_hdf5(err, s->path, "cannot reopen a dataset");
}

gale_shard *shard_open(const char *path, gale_error *err)
{
    if (shard_hdf5_init(err) != 0)
        return NULL;
    struct stat st;
    if (stat(path, &st) != 0) {
        gale_fail_errno(err, "%s", path);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        gale_fail(err, "%s: not a file", path);
        return NULL;
    }
    gale_shard *s = gale_xcalloc(1, sizeof *s);
    s->path = gale_xstrdup(path);
#if H5_VERSION_GE(1, 12, 0)
    htri_t is_hdf5 = H5Fis_accessible(path, H5P_DEFAULT);
#else
    htri_t is_hdf5 = H5Fis_hdf5(path);
#endif
    if (is_hdf5 <= 0) {
        H5Eclear2(H5E_DEFAULT);
        gale_fail(err, "%s: not an HDF5 file (a gale shard is HDF5)", path);
        shard_close(s);
        return NULL;
    }
    if (hdf5_check_global_heaps(path, err) != 0) {
        shard_close(s);
        return NULL;
    }
    hid_t fapl = unlocked_file_access();
    s->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (s->file < 0)
        fail_hdf5(err, path, "cannot open as HDF5 (truncated or damaged?)");
    H5Pclose(fapl);
    if (s->file < 0) {
        s->file = 0;
        shard_close(s);
        return NULL;
    }
    if (read_attrs(s->file, path, &s->meta, err) != 0) {
        shard_close(s);
        return NULL;
    }
    s->row_len = s->meta.seq_len + 1;
    if (open_datasets(s, err) != 0 || reopen_with_cache(s, err) != 0) {
        shard_close(s);
        return NULL;
    }
    return s;
}

const gale_shard_meta *shard_meta(const gale_shard *s)
{
    return &s->meta;
}

int64_t shard_rows(const gale_shard *s)
{
    return s->rows;
}

const char *shard_path(const gale_shard *s)
{
    return s->path;
}

int shard_has_loss_mask(const gale_shard *s)
{
    return s->datasets[DS_LOSS_MASK] > 0;
}

int shard_token_bytes(const gale_shard *s)
{
    return s->token_bytes;
}

static int read_dataset_rows(gale_shard *s, int ds, hid_t mem_type, int64_t first, size_t n_rows, void *out,
                             gale_error *err)
{
    hsize_t start[2] = {(hsize_t)first, 0};
    hsize_t count[2] = {n_rows, (hsize_t)s->row_len};
    hid_t space = H5Dget_space(s->datasets[ds]);
    hid_t mem = H5Screate_simple(2, count, NULL);
    int rc = space < 0 || mem < 0 || H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
                     H5Dread(s->datasets[ds], mem_type, mem, space, H5P_DEFAULT, out) < 0
                 ? -1
                 : 0;
    if (mem >= 0)
        H5Sclose(mem);
    if (space >= 0)
        H5Sclose(space);
    if (rc != 0) {
        char what[128];
        snprintf(what, sizeof what, "cannot read rows %lld..%lld of /%s", (long long)first,
                 (long long)(first + (int64_t)n_rows - 1), dataset_names[ds]);
        return fail_hdf5(err, s->path, what);
    }
    return 0;
}

int shard_read_rows(gale_shard *s, int64_t first, size_t n_rows, int32_t *tokens, uint16_t *segments,
                    uint8_t *loss_mask, gale_error *err)
{
    silence_hdf5();
    if (first < 0 || first > s->rows || (int64_t)n_rows > s->rows - first)
        return gale_fail(err, "%s: rows %lld..%lld requested, the shard has %lld", s->path, (long long)first,
                         (long long)(first + (int64_t)n_rows - 1), (long long)s->rows);
    if (n_rows == 0)
        return 0;
    size_t cells = n_rows * (size_t)s->row_len;
    if (tokens) {
        if (read_dataset_rows(s, DS_TOKENS, H5T_NATIVE_INT32, first, n_rows, tokens, err) != 0)
            return -1;
        for (size_t i = 0; i < cells; i++)
            if (tokens[i] < 0 || tokens[i] >= s->meta.vocab_size)
                return gale_fail(err, "%s: row %lld column %zu: token id %d is outside the vocabulary (%d)", s->path,
                                 (long long)(first + (int64_t)(i / s->row_len)), i % s->row_len, tokens[i],
                                 s->meta.vocab_size);
    }
    uint16_t *seg = segments;
    if (!seg && loss_mask && !shard_has_loss_mask(s))
        seg = gale_xmalloc(cells * sizeof *seg);
    int rc = 0;
    if (seg)
        rc = read_dataset_rows(s, DS_SEGMENTS, H5T_NATIVE_UINT16, first, n_rows, seg, err);
    if (rc == 0 && loss_mask) {
        if (shard_has_loss_mask(s)) {
            rc = read_dataset_rows(s, DS_LOSS_MASK, H5T_NATIVE_UINT8, first, n_rows, loss_mask, err);
        } else {
            for (size_t i = 0; i < cells; i++)
                loss_mask[i] = seg[i] != GALE_SEGMENT_PAD;
        }
    }
    if (seg != segments)
        free(seg);
    return rc;
}

int shard_storage(gale_shard *s, gale_shard_storage *out, gale_error *err)
{
    static const uint64_t element_bytes[N_DATASETS] = {0, 2, 1};
    silence_hdf5();
    memset(out, 0, sizeof *out);
    out->chunk_rows = s->chunk_rows;
    uint64_t cells = (uint64_t)s->rows * (uint64_t)s->row_len;
    for (int ds = 0; ds < N_DATASETS; ds++) {
        if (s->datasets[ds] <= 0)
            continue;
        out->raw_bytes += cells * (ds == DS_TOKENS ? (uint64_t)s->token_bytes : element_bytes[ds]);
        out->stored_bytes += H5Dget_storage_size(s->datasets[ds]);
    }
    return 0;
}
