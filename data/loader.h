/* loader: serves training batches from one or several prepared folders.
 *
 * The folders (sources) are mixed by weight into one global stream of rows, the same on
 * every rank: slot g of the stream goes to the source that is furthest behind its share
 * (smooth weighted round robin, so after g slots source s has served weight_s * g rows,
 * to within one), and a source's k-th row is row perm(seed, s, k / n_s)[k % n_s] of
 * its split: a fresh shuffle of all its rows each epoch, so every row is served exactly
 * once per epoch. Batches step through the stream R * B slots at a time; data-parallel rank
 * r of R takes slots [r * B, (r + 1) * B) of each step, so the ranks' shares are disjoint
 * and together cover every slot. The position (slots consumed, rows drawn per source) does
 * not depend on R or B: resuming from it continues exactly the stream an uninterrupted run
 * would have served (with other R or B too: only the split of the stream changes). Resuming
 * with other weights is allowed: from there each source is steered towards its new share of
 * all the slots so far. A background thread prepares batches ahead.
 *
 * A batch holds B rows of T = seq_len inputs (row[:-1]) and targets (row[1:]). The target
 * mask is 0 where the target (or its input) is padding; in SFT shards it is the stored
 * loss mask of the target; in pretraining shards it is 1 everywhere else, including the
 * BOS that starts a new document, predicted from the previous document's EOS (as Megatron
 * and llm.c do: the pair is always EOS -> BOS, so nothing is learned across documents). */
#ifndef GALE_DATA_LOADER_H
#define GALE_DATA_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "util/error.h"

#define GALE_LOADER_MAX_SOURCES 32

typedef struct gale_loader_options {
    const char *const *dirs;     /* prepared folders */
    const double *weights;       /* one > 0 per folder; NULL: in proportion to their rows */
    size_t n_dirs;
    const char *split;           /* "train" or "val" */
    int batch_rows;              /* B: rows per batch on this rank */
    int rank, world;             /* data-parallel rank r of R (0 of 1 without MPI) */
    uint64_t seed;
    /* 0: mixed, shuffled, endless stream (training). 1: one pass over every row of every
     * source, in order, sources one after the other (evaluation); slots past the end are
     * served as padding rows with an all-zero mask; every rank takes the same number of
     * steps, ceil(rows / (R * B)), after which loader_next returns 0. A source without
     * rows in the split is allowed here (none at all: loader_next returns 0 at once); a
     * training stream refuses it. */
    int one_pass;
    int prefetch;                /* batches prepared ahead by the background thread; 0: none
                                  * (and none when HDF5 is not built thread-safe) */
    int verify_checksums;        /* check every shard's SHA-256 against the manifest at open;
                                  * otherwise each shard's is checked when it is first read */
    int skip_bad_shards;         /* 1: a shard that fails its checks (SHA-256 included, all at
                                  * open) is left out with a warning; 0: it is an error */
} gale_loader_options;

typedef struct gale_batch {
    int rows, seq_len;           /* B and T */
    int32_t *inputs;             /* [B, T] */
    int32_t *targets;            /* [B, T] */
    uint16_t *segments;          /* [B, T] segment of each input; GALE_SEGMENT_PAD at padding */
    int32_t *positions;          /* [B, T] position within its segment (restarts at each one) */
    uint8_t *loss_mask;          /* [B, T] 1 where targets[b, t] is trained on */
    int64_t n_targets;           /* sum of loss_mask */
    int64_t first_slot;          /* global stream slot of this rank's first row */
} gale_batch;

void batch_init(gale_batch *b, int rows, int seq_len);
void batch_free(gale_batch *b);

/* Where the stream stands: slots consumed over all ranks, and rows drawn from each source
 * (the source's epoch is rows_drawn / its row count). */
typedef struct gale_loader_position {
    int64_t slots;
    size_t n_sources;
    int64_t rows_drawn[GALE_LOADER_MAX_SOURCES];
} gale_loader_position;

typedef struct gale_loader gale_loader;

/* Loads and verifies every folder's manifest (same seq_len and tokenizer across folders,
 * else an error naming both), and starts at the beginning of the stream. */
gale_loader *loader_open(const gale_loader_options *opts, gale_error *err);
void loader_close(gale_loader *l);

int loader_seq_len(const gale_loader *l);
int loader_vocab_size(const gale_loader *l);
/* Rows of the split in source s, and over all sources. */
int64_t loader_source_rows(const gale_loader *l, size_t s);
int64_t loader_total_rows(const gale_loader *l);

/* Fills b (made by batch_init with B rows and T = seq_len) with this rank's next batch.
 * Returns 1 with a batch, 0 when a one-pass loader is done, -1 on error. */
int loader_next(gale_loader *l, gale_batch *b, gale_error *err);

/* The position of the next batch loader_next would serve. */
void loader_position(const gale_loader *l, gale_loader_position *pos);
/* Continues from pos (from loader_position or loader_position_from_json of a run over the
 * same folders and weights); a position that does not fit these sources is an error. */
int loader_seek(gale_loader *l, const gale_loader_position *pos, gale_error *err);

/* The position as a JSON object {"slots": ..., "rows_drawn": [...]} and back. */
json_t *loader_position_to_json(const gale_loader_position *pos);
int loader_position_from_json(const json_t *j, gale_loader_position *pos, gale_error *err);

#endif
