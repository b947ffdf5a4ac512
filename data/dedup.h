/* dedup: global exact and near-duplicate removal over the documents of every MPI rank.
 * Each rank adds its documents (after filtering) with a global input-order key; then
 * dedup_resolve decides, collectively, which ones are removed and of which document each is
 * a duplicate, so that the first document in global input order is kept and the result does
 * not depend on the number of ranks:
 *   exact: the XXH3-128 hash of the exact-normalised text; hashes travel to an owner rank
 *          (MPI_Alltoallv), which keeps the smallest order key of each hash;
 *   near:  per band, LSH keys travel to owner ranks; documents sharing a key are candidates
 *          (each bucket's members, sorted by order, paired all-to-all in buckets of up to 8
 *          and as a chain plus pairs with the first beyond); each candidate pair is checked by
 *          the rank of its later document, which fetches the earlier one's shingle set, and
 *          kept when the true Jaccard similarity reaches the threshold; confirmed pairs are
 *          gathered on every rank and clustered by union-find, the smallest order key of a
 *          cluster being the document kept.
 * Memory per document: 48 bytes of bookkeeping, plus its band keys (8 bytes per band, 112
 * by default) and shingle set (4 bytes per distinct shingle, at most max_shingles) while
 * these fit in memory_budget; once the budget is used up, the keys and sets of every later
 * document go to two files in spill_dir (removed when done), read back band by band and
 * set by set. So a rank holds 48 bytes per document plus the budget. */
#ifndef GALE_DATA_DEDUP_H
#define GALE_DATA_DEDUP_H

#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include "data/minhash.h"
#include "util/error.h"

typedef enum { DEDUP_KEEP, DEDUP_EXACT, DEDUP_NEAR } dedup_fate;

typedef struct dedup_options {
    int exact, near;          /* which passes run */
    double threshold;         /* near: Jaccard similarity at or above which two documents match */
    minhash_params minhash;
    size_t memory_budget;     /* bytes of band keys and shingle sets held in memory before spilling */
    const char *spill_dir;    /* where the spill file goes (removed when done) */
} dedup_options;

typedef struct dedup_index dedup_index;

dedup_index *dedup_index_create(const dedup_options *opt, gale_error *err);
void dedup_index_free(dedup_index *d);

/* The per-document features, computed without the index (thread-safe, for worker threads):
 * the exact hash of text[0, len), the shingles and band keys of text[near_from, len) (a
 * conversation's turns without the system prompt that many share). */
typedef struct dedup_features {
    uint64_t exact_hash[2];
    uint64_t *band_keys;     /* bands values, or NULL when the near text is empty */
    shingle_set shingles;
} dedup_features;
void dedup_features_compute(const dedup_options *opt, const minhasher *m, const char *text, size_t len,
                            size_t near_from, gale_bytes *scratch, dedup_features *f);
void dedup_features_free(dedup_features *f);
const minhasher *dedup_index_minhasher(const dedup_index *d);

/* Adds the next local document; order keys must be distinct across all ranks. Returns the
 * document's local index (0, 1, 2, ... in the order of adding), or -1 on a spill error. */
int64_t dedup_index_add(dedup_index *d, uint64_t order, const dedup_features *f, gale_error *err);
size_t dedup_index_count(const dedup_index *d);

/* Collective over comm: decides the fate of every document of every rank. */
int dedup_resolve(dedup_index *d, MPI_Comm comm, gale_error *err);

/* After dedup_resolve: the fate of local document i and, when removed, the order key of
 * the document it duplicates (the one kept). */
dedup_fate dedup_fate_of(const dedup_index *d, size_t i, uint64_t *duplicate_of);

/* Candidate pairs checked and pairs confirmed by this rank in dedup_resolve. */
void dedup_pair_counts(const dedup_index *d, uint64_t *candidates, uint64_t *confirmed);

/* Bytes of band keys and shingle sets spilled to disk (0 when everything fit the budget). */
uint64_t dedup_spilled_bytes(const dedup_index *d);

#endif
