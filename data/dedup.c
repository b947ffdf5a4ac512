/* dedup: exact and MinHash-LSH near-duplicate decisions, global over MPI ranks. */
#include "data/dedup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "data/normalize.h"
#include "util/file.h"

/* Buckets of up to this many members are paired all-to-all; larger ones as a chain plus
 * pairs with their first member, so a huge bucket costs linear work. */
#define BUCKET_ALL_PAIRS 8

typedef struct doc_entry {
    uint64_t order;
    uint64_t exact_hash[2];
    uint64_t shingle_offset; /* in uint32 units, in memory or (spilled) in the shingle file */
    uint64_t duplicate_of;
    uint32_t n_shingles;
    uint8_t spilled, has_near, fate;
} doc_entry;

/* A file that data goes to once the memory budget is used up; made on first use. */
typedef struct spill_file {
    const char *what; /* "shingles", "keys": part of the name */
    FILE *f;
    char *path;
    uint64_t bytes;
} spill_file;

struct dedup_index {
    dedup_options opt;
    minhasher *minhash;
    doc_entry *docs;
    size_t n_docs, cap_docs, cap_keys;
    uint64_t *band_keys; /* bands per document, for documents before first_spilled */
    uint32_t *mem_shingles;
    size_t n_mem_shingles, cap_mem_shingles;
    /* once the budget is used up, every later document (from first_spilled on) has its
     * band keys and shingle set on disk */
    int spilling;
    size_t first_spilled;
    spill_file spilled_shingles, spilled_keys;
    uint64_t candidates, confirmed;
};

dedup_index *dedup_index_create(const dedup_options *opt, gale_error *err)
{
    const minhash_params *p = &opt->minhash;
    if (p->bands < 1 || p->rows < 1 || p->bands * p->rows > MINHASH_MAX_PERMUTATIONS || p->ngram < 1 ||
        p->ngram > 32 || p->max_shingles < 1) {
        gale_fail(err, "dedup: bands x rows must be 1..%d and ngram 1..32 (got %d x %d, ngram %d)",
                  MINHASH_MAX_PERMUTATIONS, p->bands, p->rows, p->ngram);
        return NULL;
    }
    dedup_index *d = gale_xcalloc(1, sizeof *d);
    d->opt = *opt;
    d->minhash = minhasher_create(p);
    d->spilled_shingles.what = "shingles";
    d->spilled_keys.what = "keys";
    return d;
}

void dedup_index_free(dedup_index *d)
{
    if (!d)
        return;
    spill_file *files[2] = {&d->spilled_shingles, &d->spilled_keys};
    for (int i = 0; i < 2; i++) {
        if (files[i]->f) {
            fclose(files[i]->f);
            unlink(files[i]->path);
        }
        free(files[i]->path);
    }
    minhasher_free(d->minhash);
    free(d->docs);
    free(d->band_keys);
    free(d->mem_shingles);
    free(d);
}

const minhasher *dedup_index_minhasher(const dedup_index *d)
{
    return d->minhash;
}

size_t dedup_index_count(const dedup_index *d)
{
    return d->n_docs;
}

uint64_t dedup_spilled_bytes(const dedup_index *d)
{
    return d->spilled_shingles.bytes + d->spilled_keys.bytes;
}

void dedup_pair_counts(const dedup_index *d, uint64_t *candidates, uint64_t *confirmed)
{
    *candidates = d->candidates;
    *confirmed = d->confirmed;
}

void dedup_features_compute(const dedup_options *opt, const minhasher *m, const char *text, size_t len,
                            size_t near_from, gale_bytes *scratch, dedup_features *f)
{
    if (opt->exact) {
        normalize_exact(text, len, scratch);
        XXH128_hash_t h = XXH3_128bits(scratch->v, scratch->n);
        f->exact_hash[0] = h.high64;
        f->exact_hash[1] = h.low64;
    }
    f->shingles.n = 0;
    if (!opt->near)
        return;
    normalize_near(text + near_from, len - near_from, scratch);
    minhash_shingles(m, (const char *)scratch->v, scratch->n, &f->shingles);
    if (f->shingles.n == 0)
        return;
    const minhash_params *p = minhasher_params(m);
    uint32_t sig[MINHASH_MAX_PERMUTATIONS];
    minhash_signature(m, f->shingles.v, f->shingles.n, sig);
    if (!f->band_keys)
        f->band_keys = gale_xmalloc((size_t)p->bands * sizeof *f->band_keys);
    minhash_band_keys(m, sig, f->band_keys);
}

void dedup_features_free(dedup_features *f)
{
    free(f->band_keys);
    f->band_keys = NULL;
    shingle_set_free(&f->shingles);
}

/* Appends bytes to a spill file (made in spill_dir on first use); *offset is where they went. */
static int spill_append(dedup_index *d, spill_file *s, const void *v, size_t bytes, uint64_t *offset,
                        gale_error *err)
{
    if (!s->f) {
        char name[64];
        snprintf(name, sizeof name, ".dedup-%s.%d", s->what, (int)getpid());
        s->path = gale_path_join(d->opt.spill_dir ? d->opt.spill_dir : ".", name);
        s->f = fopen(s->path, "w+b");
        if (!s->f)
            return gale_fail_errno(err, "%s: cannot create the dedup spill file", s->path);
    }
    *offset = s->bytes;
    if (fwrite(v, 1, bytes, s->f) != bytes)
        return gale_fail_errno(err, "%s: cannot write the dedup spill file", s->path);
    s->bytes += bytes;
    return 0;
}

static int spill_read(spill_file *s, uint64_t offset, void *dst, size_t bytes, gale_error *err)
{
    fflush(s->f);
    if (pread(fileno(s->f), dst, bytes, (off_t)offset) != (ssize_t)bytes)
        return gale_fail_errno(err, "%s: cannot read back the dedup spill file", s->path);
    return 0;
}

int64_t dedup_index_add(dedup_index *d, uint64_t order, const dedup_features *f, gale_error *err)
{
    size_t bands = (size_t)d->opt.minhash.bands, key_bytes = bands * sizeof(uint64_t);
    int has_near = d->opt.near && f->band_keys && f->shingles.n;
    if (d->n_docs == d->cap_docs) {
        d->cap_docs = d->cap_docs ? 2 * d->cap_docs : 4096;
        d->docs = gale_xrealloc(d->docs, d->cap_docs * sizeof *d->docs);
    }
    if (d->opt.near && !d->spilling) {
        size_t in_memory = (d->n_mem_shingles + (has_near ? f->shingles.n : 0)) * sizeof(uint32_t) +
                           (d->n_docs + 1) * key_bytes;
        if (in_memory > d->opt.memory_budget) {
            d->spilling = 1;
            d->first_spilled = d->n_docs;
        } else if (d->n_docs + 1 > d->cap_keys) {
            d->cap_keys = d->cap_keys ? 2 * d->cap_keys : 4096;
            d->band_keys = gale_xrealloc(d->band_keys, d->cap_keys * key_bytes);
        }
    }
    doc_entry *e = &d->docs[d->n_docs];
    memset(e, 0, sizeof *e);
    e->order = order;
    e->exact_hash[0] = f->exact_hash[0];
    e->exact_hash[1] = f->exact_hash[1];
    e->has_near = (uint8_t)has_near;
    if (d->opt.near) {
        uint64_t none[MINHASH_MAX_PERMUTATIONS] = {0}, at;
        const uint64_t *keys = has_near ? f->band_keys : none;
        if (!d->spilling)
            memcpy(d->band_keys + d->n_docs * bands, keys, key_bytes);
        else if (spill_append(d, &d->spilled_keys, keys, key_bytes, &at, err) < 0)
            return -1;
    }
    if (has_near) {
        size_t n = f->shingles.n;
        e->n_shingles = (uint32_t)n;
        if (!d->spilling) {
            if (d->n_mem_shingles + n > d->cap_mem_shingles) {
                size_t cap = d->cap_mem_shingles ? d->cap_mem_shingles : 1 << 16;
                while (cap < d->n_mem_shingles + n)
                    cap *= 2;
                d->mem_shingles = gale_xrealloc(d->mem_shingles, cap * sizeof *d->mem_shingles);
                d->cap_mem_shingles = cap;
            }
            memcpy(d->mem_shingles + d->n_mem_shingles, f->shingles.v, n * sizeof *f->shingles.v);
            e->shingle_offset = d->n_mem_shingles;
            d->n_mem_shingles += n;
        } else {
            uint64_t at;
            if (spill_append(d, &d->spilled_shingles, f->shingles.v, n * sizeof *f->shingles.v, &at, err) < 0)
                return -1;
            e->spilled = 1;
            e->shingle_offset = at / sizeof(uint32_t);
        }
    }
    return (int64_t)d->n_docs++;
}

dedup_fate dedup_fate_of(const dedup_index *d, size_t i, uint64_t *duplicate_of)
{
    *duplicate_of = d->docs[i].duplicate_of;
    return (dedup_fate)d->docs[i].fate;
}

/* The shingle set of local document i: in memory, or read back from the spill file into
 * scratch. */
static const uint32_t *load_shingles(dedup_index *d, size_t i, shingle_set *scratch, gale_error *err)
{
    doc_entry *e = &d->docs[i];
    if (!e->spilled)
        return d->mem_shingles + e->shingle_offset;
    if (scratch->cap < e->n_shingles) {
        scratch->cap = e->n_shingles;
        scratch->v = gale_xrealloc(scratch->v, scratch->cap * sizeof *scratch->v);
    }
    if (spill_read(&d->spilled_shingles, e->shingle_offset * sizeof(uint32_t), scratch->v,
                   (size_t)e->n_shingles * sizeof(uint32_t), err) < 0)
        return NULL;
    return scratch->v;
}

/* ---- MPI exchange ---- */

/* Sends the items of send, grouped by destination rank (send_counts[r] items for rank r),
 * and receives what the other ranks send here: *recv (malloc'd) grouped by source rank,
 * recv_counts[r] items from rank r, *n_recv in all. */
static int exchange_grouped(MPI_Comm comm, const void *send, const int *send_counts, size_t elem, void **recv,
                            int *recv_counts, size_t *n_recv, gale_error *err)
{
    int size;
    MPI_Comm_size(comm, &size);
    int *send_displs = gale_xcalloc((size_t)size, sizeof(int));
    int *recv_displs = gale_xcalloc((size_t)size, sizeof(int));
    size_t sent = 0;
    for (int r = 0; r < size; r++) {
        send_displs[r] = (int)sent;
        sent += (size_t)send_counts[r];
    }
    MPI_Alltoall(send_counts, 1, MPI_INT, recv_counts, 1, MPI_INT, comm);
    size_t total = 0;
    for (int r = 0; r < size; r++) {
        recv_displs[r] = (int)total;
        total += (size_t)recv_counts[r];
    }
    /* every rank learns whether any rank overflows, so all take the same branch */
    int too_big = total > (size_t)INT32_MAX || sent > (size_t)INT32_MAX, any_too_big = 0;
    MPI_Allreduce(&too_big, &any_too_big, 1, MPI_INT, MPI_MAX, comm);
    int rc = 0;
    if (any_too_big) {
        rc = gale_fail(err, "dedup: more than 2^31 items in one exchange; use more ranks");
    } else {
        MPI_Datatype type;
        MPI_Type_contiguous((int)elem, MPI_BYTE, &type);
        MPI_Type_commit(&type);
        *recv = gale_xmalloc((total + 1) * elem);
        MPI_Alltoallv(send, send_counts, send_displs, type, *recv, recv_counts, recv_displs, type, comm);
        MPI_Type_free(&type);
        *n_recv = total;
    }
    free(send_displs);
    free(recv_displs);
    return rc;
}

/* Sends n items of size elem, item i to rank dest[i]; receives as exchange_grouped. */
static int exchange(MPI_Comm comm, const void *items, size_t n, size_t elem, const int *dest, void **recv,
                    size_t *n_recv, gale_error *err)
{
    int size;
    MPI_Comm_size(comm, &size);
    int *counts = gale_xcalloc((size_t)size, sizeof(int));
    int *fill = gale_xcalloc((size_t)size, sizeof(int));
    int *recv_counts = gale_xcalloc((size_t)size, sizeof(int));
    for (size_t i = 0; i < n; i++)
        counts[dest[i]]++;
    for (int r = 1; r < size; r++)
        fill[r] = fill[r - 1] + counts[r - 1];
    char *send = gale_xmalloc((n + 1) * elem);
    for (size_t i = 0; i < n; i++)
        memcpy(send + (size_t)fill[dest[i]]++ * elem, (const char *)items + i * elem, elem);
    int rc = exchange_grouped(comm, send, counts, elem, recv, recv_counts, n_recv, err);
    free(send);
    free(counts);
    free(fill);
    free(recv_counts);
    return rc;
}

/* ---- exact ---- */

typedef struct exact_msg {
    uint64_t h0, h1, order;
    uint32_t src, idx;
} exact_msg;

typedef struct verdict_msg {
    uint64_t duplicate_of;
    uint32_t idx, pad;
} verdict_msg;

static int cmp_exact(const void *x, const void *y)
{
    const exact_msg *a = x, *b = y;
    if (a->h0 != b->h0)
        return a->h0 < b->h0 ? -1 : 1;
    if (a->h1 != b->h1)
        return a->h1 < b->h1 ? -1 : 1;
    return (a->order > b->order) - (a->order < b->order);
}

static int resolve_exact(dedup_index *d, MPI_Comm comm, int rank, int size, gale_error *err)
{
    exact_msg *msgs = gale_xmalloc((d->n_docs + 1) * sizeof *msgs);
    int *dest = gale_xmalloc((d->n_docs + 1) * sizeof *dest);
    for (size_t i = 0; i < d->n_docs; i++) {
        msgs[i] = (exact_msg){d->docs[i].exact_hash[0], d->docs[i].exact_hash[1], d->docs[i].order,
                              (uint32_t)rank, (uint32_t)i};
        dest[i] = (int)(msgs[i].h0 % (uint64_t)size);
    }
    exact_msg *got = NULL;
    size_t n_got = 0;
    int rc = exchange(comm, msgs, d->n_docs, sizeof *msgs, dest, (void **)&got, &n_got, err);
    free(msgs);
    free(dest);
    if (rc < 0)
        return -1;
    qsort(got, n_got, sizeof *got, cmp_exact);
    verdict_msg *verdicts = gale_xmalloc((n_got + 1) * sizeof *verdicts);
    int *vdest = gale_xmalloc((n_got + 1) * sizeof *vdest);
    size_t n_verdicts = 0;
    for (size_t i = 1, first = 0; i < n_got; i++) {
        if (got[i].h0 != got[first].h0 || got[i].h1 != got[first].h1) {
            first = i;
            continue;
        }
        verdicts[n_verdicts] = (verdict_msg){got[first].order, got[i].idx, 0};
        vdest[n_verdicts++] = (int)got[i].src;
    }
    free(got);
    verdict_msg *mine = NULL;
    size_t n_mine = 0;
    rc = exchange(comm, verdicts, n_verdicts, sizeof *verdicts, vdest, (void **)&mine, &n_mine, err);
    free(verdicts);
    free(vdest);
    if (rc < 0)
        return -1;
    for (size_t i = 0; i < n_mine; i++) {
        doc_entry *e = &d->docs[mine[i].idx];
        e->fate = DEDUP_EXACT;
        e->duplicate_of = mine[i].duplicate_of;
    }
    free(mine);
    return 0;
}

/* ---- near: LSH candidates ---- */

typedef struct band_msg {
    uint64_t key, order;
    uint32_t src, idx;
} band_msg;

typedef struct pair_msg {
    uint64_t a_order, b_order; /* a before b in input order */
    uint32_t a_src, a_idx, b_idx, pad;
} pair_msg;

static int cmp_band(const void *x, const void *y)
{
    const band_msg *a = x, *b = y;
    if (a->key != b->key)
        return a->key < b->key ? -1 : 1;
    return (a->order > b->order) - (a->order < b->order);
}

static int cmp_pair(const void *x, const void *y)
{
    const pair_msg *a = x, *b = y;
    if (a->b_order != b->b_order)
        return a->b_order < b->b_order ? -1 : 1;
    return (a->a_order > b->a_order) - (a->a_order < b->a_order);
}

typedef struct pair_list {
    pair_msg *v;
    int *dest;
    size_t n, cap;
} pair_list;

static void pair_list_push(pair_list *l, const band_msg *a, const band_msg *b)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->v = gale_xrealloc(l->v, l->cap * sizeof *l->v);
        l->dest = gale_xrealloc(l->dest, l->cap * sizeof *l->dest);
    }
    l->v[l->n] = (pair_msg){a->order, b->order, a->src, a->idx, b->idx, 0};
    l->dest[l->n++] = (int)b->src;
}

/* Pairs the members of each bucket of equal keys in got (sorted). */
static void bucket_pairs(const band_msg *got, size_t n_got, pair_list *pairs)
{
    size_t start = 0;
    while (start < n_got) {
        size_t end = start + 1;
        while (end < n_got && got[end].key == got[start].key)
            end++;
        size_t k = end - start;
        const band_msg *m = got + start;
        if (k <= BUCKET_ALL_PAIRS) {
            for (size_t i = 0; i < k; i++)
                for (size_t j = i + 1; j < k; j++)
                    pair_list_push(pairs, &m[i], &m[j]);
        } else {
            for (size_t j = 1; j < k; j++) {
                pair_list_push(pairs, &m[0], &m[j]);
                if (j >= 2)
                    pair_list_push(pairs, &m[j - 1], &m[j]);
            }
        }
        start = end;
    }
}

/* Spilled band keys are read back this many documents at a time. */
#define KEY_CHUNK 4096

/* Walks the band keys of the local documents in order, one band at a time. */
typedef struct key_cursor {
    uint64_t *chunk; /* KEY_CHUNK documents' keys from the spill file */
    size_t first, n; /* spilled documents first .. first + n - 1 are in chunk */
} key_cursor;

static int band_key(dedup_index *d, key_cursor *c, size_t i, int b, uint64_t *key, gale_error *err)
{
    size_t bands = (size_t)d->opt.minhash.bands;
    if (!d->spilling || i < d->first_spilled) {
        *key = d->band_keys[i * bands + (size_t)b];
        return 0;
    }
    size_t k = i - d->first_spilled;
    if (k < c->first || k >= c->first + c->n) {
        c->first = k;
        c->n = d->n_docs - i < KEY_CHUNK ? d->n_docs - i : KEY_CHUNK;
        if (spill_read(&d->spilled_keys, (uint64_t)k * bands * sizeof(uint64_t), c->chunk,
                       c->n * bands * sizeof(uint64_t), err) < 0)
            return -1;
    }
    *key = c->chunk[(k - c->first) * bands + (size_t)b];
    return 0;
}

/* Every candidate pair whose later document is on this rank, sorted and distinct. */
static int near_candidates(dedup_index *d, MPI_Comm comm, int rank, int size, pair_msg **out, size_t *n_out,
                           gale_error *err)
{
    int bands = d->opt.minhash.bands;
    pair_list pairs = {0};
    band_msg *msgs = gale_xmalloc((d->n_docs + 1) * sizeof *msgs);
    int *dest = gale_xmalloc((d->n_docs + 1) * sizeof *dest);
    key_cursor cursor = {gale_xmalloc(KEY_CHUNK * (size_t)bands * sizeof(uint64_t)), 0, 0};
    int read_failed = 0;
    for (int b = 0; b < bands; b++) {
        size_t n = 0;
        cursor.n = 0;
        for (size_t i = 0; i < d->n_docs; i++) {
            const doc_entry *e = &d->docs[i];
            uint64_t key;
            if (!e->has_near || e->fate != DEDUP_KEEP || read_failed)
                continue;
            if (band_key(d, &cursor, i, b, &key, err) < 0) {
                read_failed = 1; /* the exchanges go on, so that no rank waits forever */
                continue;
            }
            msgs[n] = (band_msg){key, e->order, (uint32_t)rank, (uint32_t)i};
            dest[n++] = (int)((key >> 17) % (uint64_t)size);
        }
        band_msg *got = NULL;
        size_t n_got = 0;
        if (exchange(comm, msgs, n, sizeof *msgs, dest, (void **)&got, &n_got, err) < 0) {
            free(msgs);
            free(dest);
            free(pairs.v);
            free(pairs.dest);
            return -1;
        }
        qsort(got, n_got, sizeof *got, cmp_band);
        bucket_pairs(got, n_got, &pairs);
        free(got);
    }
    free(msgs);
    free(dest);
    free(cursor.chunk);
    pair_msg *mine = NULL;
    size_t n_mine = 0;
    int rc = exchange(comm, pairs.v, pairs.n, sizeof *pairs.v, pairs.dest, (void **)&mine, &n_mine, err);
    free(pairs.v);
    free(pairs.dest);
    int any_failed = 0;
    MPI_Allreduce(&read_failed, &any_failed, 1, MPI_INT, MPI_MAX, comm);
    if (rc == 0 && any_failed) {
        free(mine);
        return read_failed ? -1 : gale_fail(err, "dedup: another rank failed to read its spill file");
    }
    if (rc < 0)
        return -1;
    qsort(mine, n_mine, sizeof *mine, cmp_pair);
    size_t n = 0;
    for (size_t i = 0; i < n_mine; i++)
        if (n == 0 || mine[i].a_order != mine[n - 1].a_order || mine[i].b_order != mine[n - 1].b_order)
            mine[n++] = mine[i];
    *out = mine;
    *n_out = n;
    return 0;
}

/* ---- near: fetching the earlier documents' shingle sets ---- */

typedef struct shingle_request {
    uint32_t src, idx;
} shingle_request;

static int cmp_request(const void *x, const void *y)
{
    const shingle_request *a = x, *b = y;
    if (a->src != b->src)
        return (a->src > b->src) - (a->src < b->src);
    return (a->idx > b->idx) - (a->idx < b->idx);
}

/* The remote shingle sets this rank needs: requests (sorted, distinct) and, for request
 * k, its set at replies + offsets[k] of lengths[k] values. */
typedef struct fetched_sets {
    shingle_request *requests;
    size_t n_requests;
    uint32_t *replies;
    size_t *offsets;
    uint32_t *lengths;
} fetched_sets;

static void fetched_sets_free(fetched_sets *f)
{
    free(f->requests);
    free(f->replies);
    free(f->offsets);
    free(f->lengths);
}

/* Asks the ranks holding the earlier document of each pair for its shingle set. */
static int fetch_shingles(dedup_index *d, MPI_Comm comm, int size, const pair_msg *pairs, size_t n_pairs,
                          fetched_sets *f, gale_error *err)
{
    memset(f, 0, sizeof *f);
    f->requests = gale_xmalloc((n_pairs + 1) * sizeof *f->requests);
    for (size_t i = 0; i < n_pairs; i++)
        f->requests[i] = (shingle_request){pairs[i].a_src, pairs[i].a_idx};
    qsort(f->requests, n_pairs, sizeof *f->requests, cmp_request);
    size_t n = 0;
    for (size_t i = 0; i < n_pairs; i++)
        if (n == 0 || cmp_request(&f->requests[i], &f->requests[n - 1]))
            f->requests[n++] = f->requests[i];
    f->n_requests = n;
    /* requests are sorted by rank, so they are already grouped by destination */
    int *counts = gale_xcalloc((size_t)size, sizeof(int));
    int *asked_counts = gale_xcalloc((size_t)size, sizeof(int));
    for (size_t i = 0; i < n; i++)
        counts[f->requests[i].src]++;
    shingle_request *asked = NULL;
    size_t n_asked = 0;
    int rc = exchange_grouped(comm, f->requests, counts, sizeof *f->requests, (void **)&asked, asked_counts,
                              &n_asked, err);
    if (rc == 0) {
        /* answer each request with [length, values...], to the rank that asked, in order */
        gale_bytes answer = {0};
        shingle_set scratch = {0};
        size_t k = 0;
        for (int r = 0; r < size && rc == 0; r++) {
            size_t before = answer.n;
            for (int j = 0; j < asked_counts[r] && rc == 0; j++, k++) {
                uint32_t idx = asked[k].idx;
                const uint32_t *v = load_shingles(d, idx, &scratch, err);
                if (!v) {
                    rc = -1;
                    break;
                }
                uint32_t len = d->docs[idx].n_shingles;
                gale_bytes_append(&answer, &len, sizeof len);
                gale_bytes_append(&answer, v, len * sizeof *v);
            }
            counts[r] = (int)((answer.n - before) / sizeof(uint32_t));
        }
        shingle_set_free(&scratch);
        /* a failed read still takes part in the exchange, so no rank waits forever */
        int failed = rc < 0, any_failed = 0;
        MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, comm);
        size_t n_words = 0;
        if (!any_failed)
            rc = exchange_grouped(comm, answer.v, counts, sizeof(uint32_t), (void **)&f->replies, asked_counts,
                                  &n_words, err);
        else if (rc == 0)
            rc = gale_fail(err, "dedup: another rank failed to read its spill file");
        gale_bytes_free(&answer);
        if (rc == 0) {
            f->offsets = gale_xmalloc((n + 1) * sizeof *f->offsets);
            f->lengths = gale_xmalloc((n + 1) * sizeof *f->lengths);
            size_t at = 0;
            for (size_t i = 0; i < n; i++) {
                f->lengths[i] = f->replies[at];
                f->offsets[i] = at + 1;
                at += 1 + f->lengths[i];
            }
        }
    }
    free(asked);
    free(counts);
    free(asked_counts);
    return rc;
}

/* ---- near: confirmation and clustering ---- */

typedef struct edge {
    uint64_t a, b;
} edge;

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return (a > b) - (a < b);
}

/* Confirms this rank's candidate pairs by true Jaccard similarity. */
static int confirm_pairs(dedup_index *d, const pair_msg *pairs, size_t n_pairs, const fetched_sets *f,
                         edge **edges, size_t *n_edges, gale_error *err)
{
    *edges = gale_xmalloc((n_pairs + 1) * sizeof **edges);
    *n_edges = 0;
    shingle_set scratch = {0};
    for (size_t i = 0; i < n_pairs; i++) {
        shingle_request key = {pairs[i].a_src, pairs[i].a_idx};
        const shingle_request *hit =
            bsearch(&key, f->requests, f->n_requests, sizeof *f->requests, cmp_request);
        size_t k = (size_t)(hit - f->requests);
        const uint32_t *b = load_shingles(d, pairs[i].b_idx, &scratch, err);
        if (!b) {
            shingle_set_free(&scratch);
            return -1;
        }
        double j = shingle_jaccard(f->replies + f->offsets[k], f->lengths[k], b,
                                   d->docs[pairs[i].b_idx].n_shingles, d->opt.minhash.max_shingles);
        if (j >= d->opt.threshold)
            (*edges)[(*n_edges)++] = (edge){pairs[i].a_order, pairs[i].b_order};
    }
    shingle_set_free(&scratch);
    return 0;
}

static size_t union_find_root(size_t *parent, size_t x)
{
    while (parent[x] != x) {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    return x;
}

/* Clusters the confirmed edges of every rank; each local document in a cluster whose
 * smallest order key is not its own is a near duplicate of that one. */
static void cluster_edges(dedup_index *d, const edge *all, size_t n_all)
{
    uint64_t *nodes = gale_xmalloc((2 * n_all + 1) * sizeof *nodes);
    for (size_t i = 0; i < n_all; i++) {
        nodes[2 * i] = all[i].a;
        nodes[2 * i + 1] = all[i].b;
    }
    qsort(nodes, 2 * n_all, sizeof *nodes, cmp_u64);
    size_t n = 0;
    for (size_t i = 0; i < 2 * n_all; i++)
        if (n == 0 || nodes[i] != nodes[n - 1])
            nodes[n++] = nodes[i];
    size_t *parent = gale_xmalloc((n + 1) * sizeof *parent);
    for (size_t i = 0; i < n; i++)
        parent[i] = i;
    for (size_t i = 0; i < n_all; i++) {
        size_t a = (size_t)((uint64_t *)bsearch(&all[i].a, nodes, n, sizeof *nodes, cmp_u64) - nodes);
        size_t b = (size_t)((uint64_t *)bsearch(&all[i].b, nodes, n, sizeof *nodes, cmp_u64) - nodes);
        a = union_find_root(parent, a);
        b = union_find_root(parent, b);
        /* nodes are sorted, so the smaller index is the earlier document: it stays root */
        if (a < b)
            parent[b] = a;
        else if (b < a)
            parent[a] = b;
    }
    for (size_t i = 0; i < d->n_docs; i++) {
        doc_entry *e = &d->docs[i];
        if (!e->has_near || e->fate != DEDUP_KEEP)
            continue;
        uint64_t *hit = bsearch(&e->order, nodes, n, sizeof *nodes, cmp_u64);
        if (!hit)
            continue;
        size_t root = union_find_root(parent, (size_t)(hit - nodes));
        if (nodes[root] != e->order) {
            e->fate = DEDUP_NEAR;
            e->duplicate_of = nodes[root];
        }
    }
    free(nodes);
    free(parent);
}

static int resolve_near(dedup_index *d, MPI_Comm comm, int rank, int size, gale_error *err)
{
    pair_msg *pairs = NULL;
    size_t n_pairs = 0;
    if (near_candidates(d, comm, rank, size, &pairs, &n_pairs, err) < 0)
        return -1;
    d->candidates = n_pairs;
    fetched_sets f;
    int rc = fetch_shingles(d, comm, size, pairs, n_pairs, &f, err);
    edge *edges = NULL;
    size_t n_edges = 0;
    if (rc == 0)
        rc = confirm_pairs(d, pairs, n_pairs, &f, &edges, &n_edges, err);
    free(pairs);
    fetched_sets_free(&f);
    int failed = rc < 0, any_failed = 0;
    MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, comm);
    if (any_failed) {
        free(edges);
        return rc < 0 ? -1 : gale_fail(err, "dedup: another rank failed to confirm its candidates");
    }
    d->confirmed = n_edges;
    /* every rank clusters the same global edge list, so all agree */
    int *counts = gale_xcalloc((size_t)size, sizeof(int));
    int *displs = gale_xcalloc((size_t)size, sizeof(int));
    int mine = (int)(n_edges * 2);
    MPI_Allgather(&mine, 1, MPI_INT, counts, 1, MPI_INT, comm);
    size_t total = 0;
    for (int r = 0; r < size; r++) {
        displs[r] = (int)total;
        total += (size_t)counts[r];
    }
    edge *all = gale_xmalloc((total / 2 + 1) * sizeof *all);
    MPI_Allgatherv(edges, mine, MPI_UINT64_T, all, counts, displs, MPI_UINT64_T, comm);
    cluster_edges(d, all, total / 2);
    free(all);
    free(edges);
    free(counts);
    free(displs);
    return 0;
}

int dedup_resolve(dedup_index *d, MPI_Comm comm, gale_error *err)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (d->opt.exact && resolve_exact(d, comm, rank, size, err) < 0)
        return -1;
    if (d->opt.near && resolve_near(d, comm, rank, size, err) < 0)
        return -1;
    return 0;
}
