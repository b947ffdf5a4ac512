/* pack: concat and best-fit-decreasing packing of token ids into fixed rows. */
#include "data/pack.h"

#include <stdlib.h>
#include <string.h>

#include "util/error.h"

typedef struct pending_doc {
    size_t offset, n; /* into the window's ids (and mask) */
    size_t index;     /* arrival order, for a deterministic sort */
} pending_doc;

struct packer {
    pack_options opt;
    size_t row_len;
    packed_rows rows;
    pack_stats stats;
    /* concat: the row being filled */
    size_t fill;
    uint16_t segment;
    uint32_t row_docs;
    int32_t *cur_tokens;
    uint16_t *cur_segments;
    /* best_fit: the window of documents waiting to be placed */
    pending_doc *docs;
    size_t n_docs, cap_docs;
    int32_t *ids;
    uint8_t *mask;
    size_t n_ids, cap_ids;
};

packer *packer_create(const pack_options *opt)
{
    packer *p = gale_xcalloc(1, sizeof *p);
    p->opt = *opt;
    if (p->opt.window == 0)
        p->opt.window = 1;
    p->row_len = (size_t)opt->seq_len + 1;
    p->cur_tokens = gale_xmalloc(p->row_len * sizeof *p->cur_tokens);
    p->cur_segments = gale_xmalloc(p->row_len * sizeof *p->cur_segments);
    return p;
}

void packer_free(packer *p)
{
    if (!p)
        return;
    free(p->rows.tokens);
    free(p->rows.segments);
    free(p->rows.loss_mask);
    free(p->rows.docs);
    free(p->cur_tokens);
    free(p->cur_segments);
    free(p->docs);
    free(p->ids);
    free(p->mask);
    free(p);
}

packed_rows *packer_rows(packer *p)
{
    return &p->rows;
}

void packer_clear_rows(packer *p)
{
    p->rows.n_rows = 0;
}

const pack_stats *packer_stats(const packer *p)
{
    return &p->stats;
}

/* A new all-padding row at the end of rows; returns its index. */
static size_t new_row(packer *p)
{
    packed_rows *r = &p->rows;
    size_t S = p->row_len;
    if (r->n_rows == r->cap_rows) {
        r->cap_rows = r->cap_rows ? 2 * r->cap_rows : 64;
        r->tokens = gale_xrealloc(r->tokens, r->cap_rows * S * sizeof *r->tokens);
        r->segments = gale_xrealloc(r->segments, r->cap_rows * S * sizeof *r->segments);
        r->docs = gale_xrealloc(r->docs, r->cap_rows * sizeof *r->docs);
        if (p->opt.with_loss_mask)
            r->loss_mask = gale_xrealloc(r->loss_mask, r->cap_rows * S * sizeof *r->loss_mask);
    }
    size_t row = r->n_rows++;
    for (size_t j = 0; j < S; j++) {
        r->tokens[row * S + j] = p->opt.pad_id;
        r->segments[row * S + j] = GALE_SEGMENT_PAD;
    }
    if (p->opt.with_loss_mask)
        memset(r->loss_mask + row * S, 0, S);
    r->docs[row] = 0;
    p->stats.rows++;
    return row;
}

/* ---- concat ---- */

static void concat_emit_row(packer *p, size_t used)
{
    size_t row = new_row(p);
    size_t S = p->row_len;
    memcpy(p->rows.tokens + row * S, p->cur_tokens, used * sizeof *p->cur_tokens);
    memcpy(p->rows.segments + row * S, p->cur_segments, used * sizeof *p->cur_segments);
    p->rows.docs[row] = p->row_docs;
    p->stats.padding_tokens += S - used;
    p->fill = 0;
    p->segment = 0;
    p->row_docs = 0;
}

static void concat_add(packer *p, const int32_t *ids, size_t n)
{
    p->row_docs++;
    while (n > 0) {
        size_t take = p->row_len - p->fill;
        if (take > n)
            take = n;
        memcpy(p->cur_tokens + p->fill, ids, take * sizeof *ids);
        for (size_t j = 0; j < take; j++)
            p->cur_segments[p->fill + j] = p->segment;
        p->fill += take;
        ids += take;
        n -= take;
        if (p->fill == p->row_len)
            concat_emit_row(p, p->row_len);
    }
    /* the next document is the next segment, unless the row just ended with this one */
    if (p->fill > 0)
        p->segment++;
}

/* ---- best fit decreasing ---- */

static int cmp_longest_first(const void *x, const void *y)
{
    const pending_doc *a = x, *b = y;
    if (a->n != b->n)
        return a->n > b->n ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

static void best_fit_place_window(packer *p)
{
    if (p->n_docs == 0)
        return;
    size_t S = p->row_len;
    qsort(p->docs, p->n_docs, sizeof *p->docs, cmp_longest_first);
    size_t first_row = p->rows.n_rows;
    size_t *room = gale_xmalloc(p->n_docs * sizeof *room); /* per row of this window */
    uint16_t *next_segment = gale_xmalloc(p->n_docs * sizeof *next_segment);
    size_t n_open = 0;
    for (size_t i = 0; i < p->n_docs; i++) {
        const pending_doc *d = &p->docs[i];
        size_t best = n_open;
        for (size_t r = 0; r < n_open; r++)
            if (room[r] >= d->n && (best == n_open || room[r] < room[best]))
                best = r;
        if (best == n_open) {
            new_row(p);
            room[n_open] = S;
            next_segment[n_open++] = 0;
        }
        size_t row = first_row + best, at = S - room[best];
        memcpy(p->rows.tokens + row * S + at, p->ids + d->offset, d->n * sizeof *p->ids);
        for (size_t j = 0; j < d->n; j++)
            p->rows.segments[row * S + at + j] = next_segment[best];
        if (p->opt.with_loss_mask)
            memcpy(p->rows.loss_mask + row * S + at, p->mask + d->offset, d->n);
        p->rows.docs[row]++;
        next_segment[best]++;
        room[best] -= d->n;
    }
    for (size_t r = 0; r < n_open; r++)
        p->stats.padding_tokens += room[r];
    free(room);
    free(next_segment);
    p->n_docs = 0;
    p->n_ids = 0;
}

static void best_fit_add(packer *p, const int32_t *ids, const uint8_t *mask, size_t n)
{
    if (n > p->row_len) {
        p->stats.truncated_tokens += n - p->row_len;
        if (p->opt.drop_overlong) {
            p->stats.dropped++;
            return;
        }
        p->stats.truncated++;
        n = p->row_len;
    }
    p->stats.docs++;
    p->stats.real_tokens += n;
    if (p->n_docs == p->cap_docs) {
        p->cap_docs = p->cap_docs ? 2 * p->cap_docs : 256;
        p->docs = gale_xrealloc(p->docs, p->cap_docs * sizeof *p->docs);
    }
    if (p->n_ids + n > p->cap_ids) {
        p->cap_ids = p->cap_ids ? p->cap_ids : 1 << 16;
        while (p->cap_ids < p->n_ids + n)
            p->cap_ids *= 2;
        p->ids = gale_xrealloc(p->ids, p->cap_ids * sizeof *p->ids);
        if (p->opt.with_loss_mask)
            p->mask = gale_xrealloc(p->mask, p->cap_ids);
    }
    memcpy(p->ids + p->n_ids, ids, n * sizeof *ids);
    if (p->opt.with_loss_mask)
        memcpy(p->mask + p->n_ids, mask, n);
    p->docs[p->n_docs] = (pending_doc){p->n_ids, n, p->n_docs};
    p->n_docs++;
    p->n_ids += n;
    if (p->n_docs >= p->opt.window)
        best_fit_place_window(p);
}

void packer_add(packer *p, const int32_t *ids, const uint8_t *mask, size_t n)
{
    if (n == 0)
        return;
    if (p->opt.packing == GALE_SHARD_CONCAT) {
        p->stats.docs++;
        p->stats.real_tokens += n;
        concat_add(p, ids, n);
    } else {
        best_fit_add(p, ids, mask, n);
    }
}

void packer_finish(packer *p)
{
    if (p->opt.packing == GALE_SHARD_CONCAT) {
        if (p->fill > 0)
            concat_emit_row(p, p->fill);
    } else {
        best_fit_place_window(p);
    }
}
