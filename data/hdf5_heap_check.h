/* hdf5_heap_check: checks the global heap collections of an HDF5 file before HDF5 reads
 * them. HDF5 keeps variable-length strings (gale's string attributes, as h5py writes them)
 * in global heap collections, which carry no checksum in any file format version, and
 * trusts their object sizes: one changed byte there makes H5Aread copy past its buffer or
 * loop forever. A collection whose objects do not tile it exactly is refused here. */
#ifndef GALE_DATA_HDF5_HEAP_CHECK_H
#define GALE_DATA_HDF5_HEAP_CHECK_H
#include "util/error.h"

/* Bytes searched for collections at each end of the file: HDF5 writes metadata at the start
 * (before the first chunk) and at the end (what is written at close, attributes included). */
#define GALE_HEAP_CHECK_SPAN (1 << 20)

/* 0 when every global heap collection found near either end of path is well formed, else
 * -1 with a message naming the file and the collection's offset. */
int hdf5_check_global_heaps(const char *path, gale_error *err);
#endif
