/* tekken_cache: the parsed vocabulary of a Tekken file kept on disk (data/file_cache.h, kind
 * "tekken"), so that a process loads it in milliseconds rather than parsing 19 MB of JSON
 * (about half a second with jansson, which dominated `gale tokenize` on small inputs): the
 * special tokens and the vocabulary (the arena of their bytes, their lengths, types and
 * scores), the pattern and the JSON's SHA-256. A missing, stale or damaged cache file is parsed
 * again from the JSON and written anew; a folder that cannot be written leaves everything as
 * it was without it. */
#ifndef GALE_DATA_TEKKEN_CACHE_H
#define GALE_DATA_TEKKEN_CACHE_H

#include <stddef.h>

#include "data/file_cache.h"
#include "data/tekken.h"

/* The cached form of the Tekken JSON of key: 1 with *f filled (as tekken_parse fills it, but
 * without the pieces unless with_pieces: the vocabulary's size only) and its SHA-256 in sha256;
 * 0 when there is no valid cache file for these bytes. */
int tekken_cache_load(const file_cache_key *key, tekken_file *f, char sha256[65], int with_pieces);

/* Keeps f, parsed from the JSON of key with SHA-256 sha256, for tekken_cache_load; silently
 * does nothing when the cache folder cannot be written. */
void tekken_cache_store(const file_cache_key *key, const tekken_file *f, const char *sha256);

#endif
