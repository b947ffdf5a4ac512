/* file_cache: derived data kept on disk, by kind and input (see file_cache.h). */
#include "data/file_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* the library's XXH3 picked at run time for the CPU (AVX2 where there is one): the input's key
 * and the body's checksum are most of a cached load (a Tekken file: 19 MB and 8 MB to hash) */
#include <xxh_x86dispatch.h>
#include <xxhash.h>

#include "util/file.h"

#define CACHE_MAGIC "GALECCH1"

/* A rebuilt or upgraded gale writes its own files (the version is in the name) and leaves its
 * predecessors' behind: 7.8 MB a build for mistral-v3.model's index. Storing a file therefore
 * removes the other files of the same kind and input (other versions, the older naming without
 * one, temporary files of killed writers) not used for a day. A load marks its file used (at
 * most once an hour, one utimensat), so two builds in use side by side keep both. */
#define UNUSED_SECONDS (24 * 3600)
#define MARK_USED_SECONDS 3600
#define KIND_BYTES 16

typedef struct cache_header {
    char magic[8];
    char kind[KIND_BYTES];
    uint64_t version;
    uint64_t key[2];   /* XXH3-128 of the input */
    uint64_t body_len;
    uint64_t checksum; /* XXH3-64 of the body */
} cache_header;

_Static_assert(sizeof(cache_header) == 64, "the body starts on a cache line");

file_cache_key file_cache_key_of(const void *data, size_t len)
{
    if (len < FILE_CACHE_MIN_BYTES)
        return (file_cache_key){{0, 0}, 0};
    XXH128_hash_t h = XXH3_128bits(data, len);
    return (file_cache_key){{h.low64, h.high64}, 1};
}

/* What the names of the cache files of kind for the input of key start with: KIND-<XXH3-128>. */
static void input_prefix(char *out, size_t size, const char *kind, const file_cache_key *key)
{
    snprintf(out, size, "%s-%016llx%016llx", kind, (unsigned long long)key->hash[1], (unsigned long long)key->hash[0]);
}

/* The header a cache file of kind for the input of key starts with (checksum and length to
 * fill), and its path; NULL when the input is small or there is no cache folder. */
static char *cache_path(const char *kind, uint64_t version, const file_cache_key *key, cache_header *h)
{
    if (!key->cached || strlen(kind) >= KIND_BYTES)
        return NULL;
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char dir[4096];
    if (xdg && xdg[0])
        snprintf(dir, sizeof dir, "%s/gale", xdg);
    else if (home && home[0])
        snprintf(dir, sizeof dir, "%s/.cache/gale", home);
    else
        return NULL;
    *h = (cache_header){.magic = CACHE_MAGIC, .version = version, .key = {key->hash[0], key->hash[1]}};
    memcpy(h->kind, kind, strlen(kind));
    /* the version is in the name too: two builds that derive differently (a developer's
     * before and after) each keep their own file instead of rewriting each other's per run */
    char name[KIND_BYTES + 72];
    input_prefix(name, sizeof name, kind, key);
    snprintf(name + strlen(name), sizeof name - strlen(name), "-v%016llx.bin", (unsigned long long)version);
    return gale_path_join(dir, name);
}

const void *file_cache_load(const char *kind, uint64_t version, const file_cache_key *key, size_t *body_len)
{
    cache_header want, h;
    char *path = cache_path(kind, version, key, &want);
    if (!path)
        return NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0)
        return NULL;
    struct stat st;
    uint8_t *file = NULL;
    if (fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof h) {
        file = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (file == MAP_FAILED)
            file = NULL;
    }
    if (file) {
        memcpy(&h, file, sizeof h);
        if (memcmp(&h, &want, offsetof(cache_header, body_len)) || h.body_len != (uint64_t)st.st_size - sizeof h ||
            XXH3_64bits(file + sizeof h, h.body_len) != h.checksum) {
            munmap(file, (size_t)st.st_size);
            file = NULL;
        } else if (time(NULL) - st.st_mtime > MARK_USED_SECONDS) {
            futimens(fd, NULL); /* used now; a file that cannot be marked may be pruned later */
        }
    }
    close(fd);
    if (!file)
        return NULL;
    *body_len = h.body_len;
    return file + sizeof h;
}

void file_cache_free(const void *body, size_t body_len)
{
    if (body)
        munmap((uint8_t *)body - sizeof(cache_header), sizeof(cache_header) + body_len);
}

/* Removes the files in dir named prefix + "-v..." or prefix + "." (other versions, the older
 * naming, temporary files) other than keep, that were not used for UNUSED_SECONDS. */
static void prune_unused(const char *dir, const char *prefix, const char *keep)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    size_t n = strlen(prefix);
    time_t now = time(NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (strncmp(name, prefix, n) || (strncmp(name + n, "-v", 2) && name[n] != '.') || !strcmp(name, keep))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
            now - st.st_mtime > UNUSED_SECONDS)
            unlinkat(dirfd(d), name, 0);
    }
    closedir(d);
}

void file_cache_store(const char *kind, uint64_t version, const file_cache_key *key, const void *body,
                      size_t body_len)
{
    cache_header h;
    char *path = cache_path(kind, version, key, &h);
    if (!path)
        return;
    h.body_len = body_len;
    h.checksum = XXH3_64bits(body, body_len);
    uint8_t *file = gale_xmalloc(sizeof h + body_len);
    memcpy(file, &h, sizeof h);
    memcpy(file + sizeof h, body, body_len);
    char *dir = gale_xstrdup(path), *name = strrchr(dir, '/');
    *name++ = 0;
    gale_error err; /* a cache that cannot be written: none */
    if (gale_mkdir_p(dir, &err) == 0 && gale_write_file_atomic(path, file, sizeof h + body_len, &err) == 0) {
        char prefix[KIND_BYTES + 40];
        input_prefix(prefix, sizeof prefix, kind, key);
        prune_unused(dir, prefix, name);
    }
    free(dir);
    free(file);
    free(path);
}
