/* fuzz_zstd_filter: libFuzzer over gale's HDF5 zstd filter (id 32015), through HDF5 as a shard
 * reader meets it: a chunk is stored raw (H5Dwrite_chunk) in a dataset whose pipeline is the
 * filter, in an in-memory HDF5 file, and read back. Random bytes alone rarely make a zstd
 * frame, so the first input byte picks what the chunk is:
 *   0: the input itself;
 *   1: the input (tiled to a chunk) compressed as one frame that records its size, with one
 *      byte XORed (input bytes 1-3: where and with what; 0 leaves it whole);
 *   2: the same as two frames that do not record their size (the streaming decoder), and the
 *      XOR;
 *   3: the input written through the filter (its encoder) and read back: must be equal.
 * Any chunk must give the data or a read error, never a crash or an overrun. */
#include <hdf5.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "data/shard.h"

#define CHUNK_VALUES 4096
#define CHUNK_BYTES (CHUNK_VALUES * 2)

/* Compresses src into frames (1 or 2), with or without their content size; the size. */
static size_t make_frames(const uint8_t *src, int frames, int with_size, uint8_t *dst, size_t cap)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, 3);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, with_size);
    size_t used = 0, part = CHUNK_BYTES / frames;
    for (int f = 0; f < frames; f++) {
        ZSTD_inBuffer in = {src + f * part, f == frames - 1 ? CHUNK_BYTES - f * part : part, 0};
        ZSTD_outBuffer out = {dst + used, cap - used, 0};
        size_t left;
        do
            left = ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_end);
        while (!ZSTD_isError(left) && left != 0);
        if (ZSTD_isError(left))
            abort();
        used += out.pos;
    }
    ZSTD_freeCCtx(cctx);
    return used;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gale_error err;
    if (shard_hdf5_init(&err) != 0)
        abort();
    if (size < 1)
        return 0;
    int mode = data[0] % 4;
    static uint8_t tiled[CHUNK_BYTES], chunk[2 * CHUNK_BYTES + 1024];
    static uint16_t out[CHUNK_VALUES];
    const uint8_t *payload = size > 4 ? data + 4 : data;
    size_t payload_size = size > 4 ? size - 4 : size;
    for (size_t i = 0; i < CHUNK_BYTES; i++)
        tiled[i] = payload[i % payload_size];
    const uint8_t *raw = data;
    size_t raw_size = size;
    if (mode == 1 || mode == 2) {
        raw_size = make_frames(tiled, mode, mode == 1, chunk, sizeof chunk);
        if (size > 4 && data[3])
            chunk[((size_t)data[1] << 8 | data[2]) % raw_size] ^= data[3];
        raw = chunk;
    }

    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_core(fapl, 1 << 20, 0);
    hid_t f = H5Fcreate("fuzz-zstd.h5", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    hsize_t dims[1] = {CHUNK_VALUES};
    hid_t space = H5Screate_simple(1, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    unsigned level = 3;
    H5Pset_chunk(dcpl, 1, dims);
    H5Pset_filter(dcpl, GALE_H5Z_FILTER_ZSTD, H5Z_FLAG_MANDATORY, 1, &level);
    hid_t d = H5Dcreate2(f, "x", H5T_NATIVE_UINT16, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    hsize_t offset[1] = {0};
    if (mode == 3) {
        if (H5Dwrite(d, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, tiled) < 0 ||
            H5Dread(d, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0 ||
            memcmp(out, tiled, CHUNK_BYTES) != 0)
            abort(); /* the filter's own round trip must be exact */
    } else if (raw_size > 0 && H5Dwrite_chunk(d, H5P_DEFAULT, 0, offset, raw_size, raw) >= 0) {
        herr_t rc = H5Dread(d, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, out);
        /* a whole frame of the chunk's bytes must read back as exactly those bytes */
        if (mode != 0 && !(size > 4 && data[3]) && (rc < 0 || memcmp(out, tiled, CHUNK_BYTES) != 0))
            abort();
    }
    H5Eclear2(H5E_DEFAULT);
    H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(space);
    H5Fclose(f);
    H5Pclose(fapl);
    return 0;
}
