/* zstd_filter: the Zstandard HDF5 filter under its registered id 32015 (cd_values[0] =
 * compression level), implemented with libzstd and registered in-process, so gale reads and
 * writes shards without any plugin path. Its output is what the standard HDF5 zstd plugin
 * (hdf5plugin, HDFGroup hdf5_plugins) writes: one zstd frame per chunk; decoding accepts
 * frames with or without their content size in the header, and concatenated frames. */
#ifndef GALE_DATA_ZSTD_FILTER_H
#define GALE_DATA_ZSTD_FILTER_H

/* Registers the filter with HDF5 (replacing any zstd plugin already loaded). Returns 0, or
 * -1 when HDF5 refuses the registration. */
int zstd_filter_register(void);

#endif
