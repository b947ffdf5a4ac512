/* minhash: the near-duplicate fingerprint of a document. Its near-normalised text
 * (data/normalize.h) is cut into word n-grams ("shingles", 5 words by default; a text of
 * fewer words is one shingle), each hashed to 32 bits (XXH3); the sorted set of distinct
 * shingle hashes is what Jaccard similarity is computed on. A MinHash signature of
 * bands x rows values (14 x 8 = 112 by default) uses the multiply-shift family
 * h(x) = (a*x + b) >> 32 with random 64-bit a (odd) and b, and each band of rows values is
 * hashed to one 64-bit LSH key, so two documents of Jaccard similarity J share at least one
 * key with probability 1 - (1 - J^rows)^bands.
 * Memory per document is bounded: a shingle set keeps at most max_shingles hashes (the
 * smallest ones, a bottom-k sketch), and the Jaccard of two sets of which one was cut is the
 * bottom-k estimate. */
#ifndef GALE_DATA_MINHASH_H
#define GALE_DATA_MINHASH_H

#include <stddef.h>
#include <stdint.h>

#include "util/vec.h"

#define MINHASH_MAX_PERMUTATIONS 1024

typedef struct minhash_params {
    int bands, rows;      /* signature length is bands * rows <= MINHASH_MAX_PERMUTATIONS */
    int ngram;            /* words per shingle */
    size_t max_shingles;  /* cap of a shingle set (bottom-k beyond it) */
    uint64_t seed;
} minhash_params;

/* 14 bands x 8 rows, 5-word shingles, 16384 shingles per document at most, seed 1. */
minhash_params minhash_default_params(void);

typedef struct minhasher minhasher;

minhasher *minhasher_create(const minhash_params *p);
void minhasher_free(minhasher *m);
const minhash_params *minhasher_params(const minhasher *m);

/* A growable array of shingle hashes. */
typedef struct shingle_set {
    uint32_t *v;
    size_t n, cap;
} shingle_set;
void shingle_set_free(shingle_set *s);

/* Replaces out with the sorted distinct shingle hashes of near-normalised text (words
 * separated by single spaces), cut to the max_shingles smallest. Empty text, empty set. */
void minhash_shingles(const minhasher *m, const char *norm, size_t len, shingle_set *out);

/* Writes the bands * rows signature of a non-empty shingle set. */
void minhash_signature(const minhasher *m, const uint32_t *shingles, size_t n, uint32_t *sig);

/* Writes the bands LSH keys of a signature (each band's rows hashed, salted by band). */
void minhash_band_keys(const minhasher *m, const uint32_t *sig, uint64_t *keys);

/* Jaccard similarity of two sorted distinct shingle sets: exact when neither reached cap,
 * else the bottom-k estimate with k the smaller set's size. */
double shingle_jaccard(const uint32_t *a, size_t na, const uint32_t *b, size_t nb, size_t cap);

#endif
