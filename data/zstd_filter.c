/* zstd_filter: the HDF5 Zstandard filter (id 32015) over libzstd. */
#include "data/zstd_filter.h"

#include <hdf5.h>
#include <string.h>
#include <zstd.h>

#include "data/shard.h"

/* HDF5 never makes a chunk larger than 4 GiB; a frame claiming more is malformed. */
#define MAX_CHUNK_BYTES ((unsigned long long)0xffffffffu)

static size_t zstd_encode(const unsigned int cd_values[], size_t cd_nelmts, size_t nbytes, size_t *buf_size,
                          void **buf)
{
    int level = cd_nelmts > 0 ? (int)cd_values[0] : GALE_SHARD_ZSTD_LEVEL;
    size_t cap = ZSTD_compressBound(nbytes);
    void *out = H5allocate_memory(cap, 0);
    if (!out)
        return 0;
    size_t n = ZSTD_compress(out, cap, *buf, nbytes, level);
    if (ZSTD_isError(n)) {
        H5free_memory(out);
        return 0;
    }
    H5free_memory(*buf);
    *buf = out;
    *buf_size = cap;
    return n;
}

/* Streams frames whose header does not carry their decompressed size, growing the output. */
static size_t zstd_decode_stream(const void *in, size_t nbytes, void **out_buf, size_t *out_cap)
{
    ZSTD_DStream *ds = ZSTD_createDStream();
    if (!ds)
        return 0;
    size_t cap = nbytes * 4 > ZSTD_DStreamOutSize() ? nbytes * 4 : ZSTD_DStreamOutSize();
    unsigned char *out = H5allocate_memory(cap, 0);
    ZSTD_inBuffer src = {in, nbytes, 0};
    ZSTD_outBuffer dst = {out, cap, 0};
    size_t last = 1;
    while (out && (src.pos < src.size || dst.pos == dst.size)) {
        if (dst.pos == dst.size) {
            if (cap >= MAX_CHUNK_BYTES)
                break;
            unsigned char *grown = H5resize_memory(out, cap * 2);
            if (!grown)
                break;
            out = grown;
            cap *= 2;
            dst.dst = out;
            dst.size = cap;
        }
        size_t before_in = src.pos, before_out = dst.pos;
        last = ZSTD_decompressStream(ds, &dst, &src);
        if (ZSTD_isError(last) || (src.pos == before_in && dst.pos == before_out && dst.pos < dst.size))
            break;
        if (last == 0 && src.pos == src.size)
            break;
    }
    ZSTD_freeDStream(ds);
    /* Success is all input consumed, the last frame complete, and some data: HDF5 has no
     * empty chunks, and 0 is how a filter says it failed. */
    if (!out || ZSTD_isError(last) || last != 0 || src.pos != src.size || dst.pos == 0) {
        if (out)
            H5free_memory(out);
        return 0;
    }
    *out_buf = out;
    *out_cap = cap;
    return dst.pos;
}

/* The decompressed size of all the frames in src, from their headers: ZSTD_CONTENTSIZE_UNKNOWN
 * when a header does not say, ZSTD_CONTENTSIZE_ERROR when src is not zstd frames. */
static unsigned long long total_content_size(const unsigned char *src, size_t nbytes)
{
    unsigned long long total = 0;
    while (nbytes > 0) {
        unsigned long long size = ZSTD_getFrameContentSize(src, nbytes);
        if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN)
            return size;
        size_t frame = ZSTD_findFrameCompressedSize(src, nbytes);
        if (ZSTD_isError(frame))
            return ZSTD_CONTENTSIZE_ERROR;
        total += size;
        if (total > MAX_CHUNK_BYTES)
            return ZSTD_CONTENTSIZE_ERROR;
        src += frame;
        nbytes -= frame;
    }
    return total;
}

static size_t zstd_decode(size_t nbytes, size_t *buf_size, void **buf)
{
    unsigned long long size = total_content_size(*buf, nbytes);
    void *out = NULL;
    size_t cap = 0, n = 0;
    if (size == ZSTD_CONTENTSIZE_ERROR)
        return 0;
    if (size == ZSTD_CONTENTSIZE_UNKNOWN) {
        n = zstd_decode_stream(*buf, nbytes, &out, &cap);
        if (n == 0)
            return 0;
    } else {
        cap = size > 0 ? (size_t)size : 1;
        out = H5allocate_memory(cap, 0);
        if (!out)
            return 0;
        n = ZSTD_decompress(out, cap, *buf, nbytes);
        if (ZSTD_isError(n) || n != size || n == 0) {
            H5free_memory(out);
            return 0;
        }
    }
    H5free_memory(*buf);
    *buf = out;
    *buf_size = cap;
    return n;
}

/* HDF5's filter callback: returns the new data size, or 0 for failure. */
static size_t zstd_filter(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                          size_t *buf_size, void **buf)
{
    if (flags & H5Z_FLAG_REVERSE)
        return zstd_decode(nbytes, buf_size, buf);
    return zstd_encode(cd_values, cd_nelmts, nbytes, buf_size, buf);
}

int zstd_filter_register(void)
{
    static const H5Z_class2_t zstd_class = {
        .version = H5Z_CLASS_T_VERS,
        .id = GALE_H5Z_FILTER_ZSTD,
        .encoder_present = 1,
        .decoder_present = 1,
        .name = "Zstandard (gale, libzstd)",
        .can_apply = NULL,
        .set_local = NULL,
        .filter = zstd_filter,
    };
    return H5Zregister(&zstd_class) < 0 ? -1 : 0;
}
