/* fuzz_zstd_filter: libFuzzer over gale's HDF5 zstd filter (id 32015) on the read path: the
 * input is stored as one raw chunk (H5Dwrite_chunk) of a dataset whose pipeline is that
 * filter, in an in-memory HDF5 file, and read back. Any bytes must give the data or a read
 * error, never a crash or an overrun. */
#include <hdf5.h>
#include <stdint.h>
#include <stdlib.h>

#include "data/shard.h"

#define CHUNK_VALUES 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gale_error err;
    if (shard_hdf5_init(&err) != 0)
        abort();
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
    static uint16_t out[CHUNK_VALUES];
    if (size > 0 && H5Dwrite_chunk(d, H5P_DEFAULT, 0, offset, size, data) >= 0)
        H5Dread(d, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, out);
    H5Eclear2(H5E_DEFAULT);
    H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(space);
    H5Fclose(f);
    H5Pclose(fapl);
    return 0;
}
