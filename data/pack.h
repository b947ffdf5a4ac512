/* pack: documents' token ids into fixed rows of S = seq_len + 1 tokens, the shard layout.
 *   concat:   documents are joined in order and cut every S tokens; a row's segments number
 *             the documents (or pieces of documents) in it 0, 1, 2, ...; only the very last
 *             row is padded; rows carry no loss mask (every real token is a target).
 *   best_fit: documents (conversations) are placed whole, never cut: a window of documents
 *             is sorted by decreasing length and each goes to the open row with the least
 *             room that still fits it (best-fit decreasing), a new row when none does; a
 *             document longer than S is truncated to S or dropped, as configured.
 * Padding positions have segment GALE_SEGMENT_PAD, token pad_id and loss mask 0. */
#ifndef GALE_DATA_PACK_H
#define GALE_DATA_PACK_H

#include <stddef.h>
#include <stdint.h>

#include "data/shard.h"

typedef struct pack_options {
    gale_shard_packing packing;
    int seq_len;            /* rows hold seq_len + 1 tokens */
    int with_loss_mask;     /* best_fit only: documents come with a mask, rows carry one */
    int drop_overlong;      /* best_fit: drop (1) or truncate (0) documents longer than a row */
    size_t window;          /* best_fit: documents sorted and placed together */
    int32_t pad_id;
} pack_options;

typedef struct pack_stats {
    uint64_t docs;             /* documents placed (truncated ones included) */
    uint64_t real_tokens;      /* non-padding positions */
    uint64_t padding_tokens;
    uint64_t rows;
    uint64_t truncated, dropped; /* best_fit: documents longer than a row */
    uint64_t truncated_tokens;   /* tokens cut off by truncation or dropped with documents */
} pack_stats;

/* Finished rows, row-major, S values per row; docs[r] is the number of documents whose
 * first token is in row r. loss_mask is NULL without with_loss_mask. */
typedef struct packed_rows {
    int32_t *tokens;
    uint16_t *segments;
    uint8_t *loss_mask;
    uint32_t *docs;
    size_t n_rows, cap_rows;
} packed_rows;

typedef struct packer packer;

packer *packer_create(const pack_options *opt);
void packer_free(packer *p);

/* Adds one document: n ids and, with with_loss_mask, n mask bytes. */
void packer_add(packer *p, const int32_t *ids, const uint8_t *mask, size_t n);

/* Places everything still pending (the last window, the partial last row). */
void packer_finish(packer *p);

/* Rows finished so far; the caller takes them and calls packer_clear_rows. */
packed_rows *packer_rows(packer *p);
void packer_clear_rows(packer *p);

const pack_stats *packer_stats(const packer *p);

#endif
