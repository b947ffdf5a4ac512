/* file_cache: what gale derives from a file's bytes (a Tekken file's parsed vocabulary, a
 * tokenizer's lookup tables) kept on disk, so that later processes read it in a fraction of
 * a millisecond instead of deriving it again. One cache file per kind and input of
 * FILE_CACHE_MIN_BYTES or more (a smaller input, a test's or a fuzzer's, is quick to derive
 * and is not cached), named KIND-<XXH3-128 of the input>-v<the writer's version>.bin under
 * $XDG_CACHE_HOME/gale (else ~/.cache/gale). It holds a header (the kind, the writer's version
 * of what it derives, the input's hash, the body's length and checksum) and the body. The cache is only a shortcut: a
 * missing, stale, cut short or corrupt file reads as none, the caller derives the body again
 * and stores it anew (atomically), and a folder that cannot be written keeps nothing. Storing
 * also removes the files of the same kind and input that other versions (a rebuilt or upgraded
 * gale) or killed writers left, once unused for a day; a load marks its file used. */
#ifndef GALE_DATA_FILE_CACHE_H
#define GALE_DATA_FILE_CACHE_H

#include <stddef.h>
#include <stdint.h>

#define FILE_CACHE_MIN_BYTES ((size_t)256 << 10)

/* What the cache files of an input are found by: its XXH3-128, hashed once however many kinds
 * are kept for it (a Tekken file's 19 MB take 3 ms). */
typedef struct file_cache_key {
    uint64_t hash[2];
    int cached; /* 0: the input is small, nothing is kept for it */
} file_cache_key;

file_cache_key file_cache_key_of(const void *data, size_t len);

/* The body kept for the input of key as kind (at most 15 characters) by a writer of the same
 * version, mapped read-only (64-byte aligned), its length in *body_len; NULL when there is
 * none. The mapping shares the page cache's copy: nothing is copied or cleared. */
const void *file_cache_load(const char *kind, uint64_t version, const file_cache_key *key, size_t *body_len);

/* Unmaps a body that file_cache_load gave (NULL: nothing). */
void file_cache_free(const void *body, size_t body_len);

/* Keeps body[0..body_len) for file_cache_load; does nothing when the input is small or the
 * cache folder cannot be written. */
void file_cache_store(const char *kind, uint64_t version, const file_cache_key *key, const void *body,
                      size_t body_len);

#endif
