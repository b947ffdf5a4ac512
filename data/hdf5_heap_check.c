/* hdf5_heap_check: global heap collections parsed as HDF5 parses them (H5HGcache.c), with
 * every size checked against the collection it lives in. */
#define _GNU_SOURCE
#include "data/hdf5_heap_check.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* "GCOL", version 1, three reserved zero bytes: eight bytes that compressed chunk data
 * matches by chance once in 2^64 positions. */
static const char collection_signature[8] = {'G', 'C', 'O', 'L', 1, 0, 0, 0};
#define COLLECTION_HEADER 16  /* signature, version, reserved, 8-byte collection size */
#define OBJECT_HEADER 16      /* index, reference count, reserved, 8-byte object size */
#define MIN_COLLECTION 4096   /* H5HG_MINSIZE */

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Checks the collection that starts at file offset at. */
static int check_collection(const char *path, int fd, off_t at, uint64_t file_size, gale_error *err)
{
    unsigned char head[COLLECTION_HEADER];
    if (pread(fd, head, sizeof head, at) != (ssize_t)sizeof head)
        return gale_fail(err, "%s: global heap at byte %lld is cut off", path, (long long)at);
    uint64_t size = le64(head + 8);
    if (size < MIN_COLLECTION || size > file_size - (uint64_t)at)
        return gale_fail(err, "%s: global heap at byte %lld has size %llu, outside the file (damaged)", path,
                         (long long)at, (unsigned long long)size);
    unsigned char *c = malloc(size);
    if (!c)
        return gale_fail(err, "%s: global heap at byte %lld: out of memory", path, (long long)at);
    int rc = pread(fd, c, size, at) == (ssize_t)size ? 0 : -1;
    uint64_t p = COLLECTION_HEADER;
    while (rc == 0 && p + OBJECT_HEADER <= size) {
        unsigned index = c[p] | (unsigned)c[p + 1] << 8;
        uint64_t object = le64(c + p + 8);
        /* the free-space object (index 0) counts its own header; the others are padded to 8 */
        uint64_t need = index == 0 ? object : object > size ? size + 1 : OBJECT_HEADER + ((object + 7) & ~7ull);
        if (need < OBJECT_HEADER || need > size - p)
            rc = -1;
        else
            p += need;
    }
    free(c);
    if (rc != 0)
        return gale_fail(err, "%s: global heap at byte %lld: an object's size does not fit the heap (damaged)", path,
                         (long long)at);
    return 0;
}

static int scan(const char *path, int fd, off_t from, size_t len, uint64_t file_size, gale_error *err)
{
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf)
        return gale_fail(err, "%s: out of memory", path);
    int rc = pread(fd, buf, len, from) == (ssize_t)len ? 0 : gale_fail_errno(err, "%s", path);
    for (size_t i = 0; rc == 0 && i + sizeof collection_signature <= len; i++) {
        unsigned char *hit = memmem(buf + i, len - i, collection_signature, sizeof collection_signature);
        if (!hit)
            break;
        i = (size_t)(hit - buf);
        rc = check_collection(path, fd, from + (off_t)i, file_size, err);
    }
    free(buf);
    return rc;
}

int hdf5_check_global_heaps(const char *path, gale_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return gale_fail_errno(err, "%s", path);
    struct stat st;
    int rc = fstat(fd, &st) == 0 ? 0 : gale_fail_errno(err, "%s", path);
    uint64_t size = rc == 0 ? (uint64_t)st.st_size : 0;
    if (rc == 0 && size <= 2 * (uint64_t)GALE_HEAP_CHECK_SPAN) {
        rc = scan(path, fd, 0, (size_t)size, size, err);
    } else if (rc == 0) {
        /* a collection straddling the boundary of a span is found from its start */
        rc = scan(path, fd, 0, GALE_HEAP_CHECK_SPAN, size, err);
        if (rc == 0)
            rc = scan(path, fd, (off_t)(size - GALE_HEAP_CHECK_SPAN), GALE_HEAP_CHECK_SPAN, size, err);
    }
    close(fd);
    return rc;
}
