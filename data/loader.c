/* loader: the training data stream over prepared folders (see loader.h for its contract). */
#define _GNU_SOURCE
#include "data/loader.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/manifest.h"
#include "data/shard.h"
#include "util/file.h"
#include "util/hash.h"

/* Shards kept open at once over all sources: each open shard holds HDF5 chunk caches (a few
 * MB at seq_len 2048), so this bounds the loader's memory. */
#define MAX_OPEN_SHARDS 16

typedef struct source {
    char *dir;
    gale_manifest manifest;
    double share;                /* weight / sum of weights */
    int64_t rows;                /* rows of the split */
    size_t n_shards;             /* shards of the split, in manifest order */
    char **shard_paths;
    const char **shard_sha256;   /* what the manifest promises for each */
    int *checked;                /* 1 once a shard's SHA-256 matched */
    int64_t *shard_first;        /* first row of each shard in the source; [n_shards] = rows */
    gale_shard **open;           /* NULL while closed */
    uint64_t *last_use;
    int64_t perm_epoch;          /* epoch whose shuffle perm holds, -1 for none */
    uint32_t *perm;
} source;

/* A row of the stream: source and row within its split, or source -1 for a padding row. */
typedef struct row_ref {
    int source;
    int64_t row;
} row_ref;

typedef struct ring_slot {
    gale_batch batch;
    gale_loader_position end;    /* the position after this batch */
    int status;                  /* what loader_next returns for it */
    gale_error err;
    int full;
} ring_slot;

struct gale_loader {
    gale_loader_options opts;
    char *split;
    source *sources;
    size_t n_sources;
    int seq_len, vocab_size;
    int64_t total_rows;
    uint64_t use_clock;
    int n_open;

    /* rows of the batch being made, [B, S] */
    int32_t *row_tokens;
    uint16_t *row_segments;
    uint8_t *row_mask;
    row_ref *refs;

    gale_loader_position position;   /* of the next batch loader_next serves */
    gale_loader_position cursor;     /* of the next batch the producer makes */

    /* prefetch: a ring of batches filled by the producer thread */
    ring_slot *ring;
    int ring_size, head, tail;
    int running, stop;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t ready, space;
};

/* ---- batches ---- */

void batch_init(gale_batch *b, int rows, int seq_len)
{
    size_t n = (size_t)rows * seq_len;
    memset(b, 0, sizeof *b);
    b->rows = rows;
    b->seq_len = seq_len;
    b->inputs = gale_xmalloc(n * sizeof *b->inputs);
    b->targets = gale_xmalloc(n * sizeof *b->targets);
    b->segments = gale_xmalloc(n * sizeof *b->segments);
    b->positions = gale_xmalloc(n * sizeof *b->positions);
    b->loss_mask = gale_xmalloc(n);
}

void batch_free(gale_batch *b)
{
    free(b->inputs);
    free(b->targets);
    free(b->segments);
    free(b->positions);
    free(b->loss_mask);
    memset(b, 0, sizeof *b);
}

static void batch_copy(gale_batch *to, const gale_batch *from)
{
    size_t n = (size_t)from->rows * from->seq_len;
    memcpy(to->inputs, from->inputs, n * sizeof *to->inputs);
    memcpy(to->targets, from->targets, n * sizeof *to->targets);
    memcpy(to->segments, from->segments, n * sizeof *to->segments);
    memcpy(to->positions, from->positions, n * sizeof *to->positions);
    memcpy(to->loss_mask, from->loss_mask, n);
    to->n_targets = from->n_targets;
    to->first_slot = from->first_slot;
}

/* ---- shuffling ---- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n), without modulo bias (Lemire's multiply-and-reject). */
static uint64_t random_below(uint64_t *state, uint64_t n)
{
    __uint128_t m = (__uint128_t)splitmix64(state) * n;
    uint64_t low = (uint64_t)m;
    if (low < n) {
        uint64_t threshold = -n % n;
        while (low < threshold) {
            m = (__uint128_t)splitmix64(state) * n;
            low = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

/* The order of source s's rows in epoch e: a Fisher-Yates shuffle seeded by (seed, s, e). */
static void shuffle_epoch(source *src, uint64_t seed, size_t s, int64_t epoch)
{
    uint64_t state = seed;
    state ^= splitmix64(&state) ^ (uint64_t)(s + 1) * 0xd1b54a32d192ed03ull;
    state ^= splitmix64(&state) ^ (uint64_t)(epoch + 1) * 0x8cb92ba72f3d8dd7ull;
    for (int64_t i = 0; i < src->rows; i++)
        src->perm[i] = (uint32_t)i;
    for (int64_t i = src->rows - 1; i > 0; i--) {
        uint64_t j = random_below(&state, (uint64_t)i + 1);
        uint32_t t = src->perm[i];
        src->perm[i] = src->perm[j];
        src->perm[j] = t;
    }
    src->perm_epoch = epoch;
}

/* ---- the stream ---- */

/* The source that slot g (= pos->slots) goes to: the one furthest behind its share. */
static size_t pick_source(const gale_loader *l, const gale_loader_position *pos)
{
    size_t best = 0;
    double best_deficit = -INFINITY;
    for (size_t s = 0; s < l->n_sources; s++) {
        double deficit = l->sources[s].share * (double)(pos->slots + 1) - (double)pos->rows_drawn[s];
        if (deficit > best_deficit) {
            best_deficit = deficit;
            best = s;
        }
    }
    return best;
}

/* Advances pos by one slot and says which row it holds. */
static row_ref next_slot(gale_loader *l, gale_loader_position *pos)
{
    row_ref ref = {-1, 0};
    if (l->opts.one_pass) {
        int64_t g = pos->slots;
        for (size_t s = 0; s < l->n_sources && ref.source < 0; s++) {
            if (g < l->sources[s].rows) {
                ref.source = (int)s;
                ref.row = g;
                pos->rows_drawn[s]++;
            }
            g -= l->sources[s].rows;
        }
    } else {
        size_t s = pick_source(l, pos);
        source *src = &l->sources[s];
        int64_t k = pos->rows_drawn[s]++;
        int64_t epoch = k / src->rows;
        if (src->perm_epoch != epoch)
            shuffle_epoch(src, l->opts.seed, s, epoch);
        ref.source = (int)s;
        ref.row = src->perm[k % src->rows];
    }
    pos->slots++;
    return ref;
}

/* The shard of a source holding row, and its row within that shard. */
static size_t find_shard(const source *src, int64_t row, int64_t *local)
{
    size_t lo = 0, hi = src->n_shards;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (src->shard_first[mid] <= row)
            lo = mid;
        else
            hi = mid;
    }
    *local = row - src->shard_first[lo];
    return lo;
}

/* The open shard k of source s, opening it (and closing the least recently used one when
 * too many are open). */
static gale_shard *shard_handle(gale_loader *l, size_t s, size_t k, gale_error *err)
{
    source *src = &l->sources[s];
    src->last_use[k] = ++l->use_clock;
    if (src->open[k])
        return src->open[k];
    if (l->n_open >= MAX_OPEN_SHARDS) {
        source *lru_src = NULL;
        size_t lru = 0;
        for (size_t i = 0; i < l->n_sources; i++)
            for (size_t j = 0; j < l->sources[i].n_shards; j++)
                if (l->sources[i].open[j] && (!lru_src || l->sources[i].last_use[j] < lru_src->last_use[lru])) {
                    lru_src = &l->sources[i];
                    lru = j;
                }
        shard_close(lru_src->open[lru]);
        lru_src->open[lru] = NULL;
        l->n_open--;
    }
    /* Checked once per shard, before HDF5 parses it: a changed byte is never trained on. With
     * prefetch this runs on the producer thread, ahead of the step that needs the shard. */
    if (!src->checked[k]) {
        char sha[65];
        if (gale_sha256_file_hex(src->shard_paths[k], sha, err) != 0)
            return NULL;
        if (strcmp(sha, src->shard_sha256[k]) != 0) {
            gale_fail(err, "%s: SHA-256 %.16s... does not match manifest.json (%.16s...): the file changed",
                      src->shard_paths[k], sha, src->shard_sha256[k]);
            return NULL;
        }
        src->checked[k] = 1;
    }
    src->open[k] = shard_open(src->shard_paths[k], err);
    if (!src->open[k])
        return NULL;
    if (shard_rows(src->open[k]) != src->shard_first[k + 1] - src->shard_first[k]) {
        gale_fail(err, "%s: has %lld rows, manifest.json says %lld (changed since the loader started)",
                  src->shard_paths[k], (long long)shard_rows(src->open[k]),
                  (long long)(src->shard_first[k + 1] - src->shard_first[k]));
        shard_close(src->open[k]);
        src->open[k] = NULL;
        return NULL;
    }
    l->n_open++;
    return src->open[k];
}

/* Reads the rows of refs[0..B) into the row buffers, runs of consecutive rows at once. */
static int read_rows(gale_loader *l, gale_error *err)
{
    int B = l->opts.batch_rows, S = l->seq_len + 1;
    for (int i = 0; i < B;) {
        size_t at = (size_t)i * S;
        if (l->refs[i].source < 0) {
            memset(l->row_tokens + at, 0, S * sizeof *l->row_tokens);
            for (int j = 0; j < S; j++)
                l->row_segments[at + j] = GALE_SEGMENT_PAD;
            memset(l->row_mask + at, 0, S);
            i++;
            continue;
        }
        size_t s = (size_t)l->refs[i].source;
        int64_t local;
        size_t k = find_shard(&l->sources[s], l->refs[i].row, &local);
        int64_t shard_end = l->sources[s].shard_first[k + 1];
        int n = 1;
        while (i + n < B && l->refs[i + n].source == (int)s && l->refs[i + n].row == l->refs[i].row + n &&
               l->refs[i].row + n < shard_end)
            n++;
        gale_shard *sh = shard_handle(l, s, k, err);
        if (!sh ||
            shard_read_rows(sh, local, (size_t)n, l->row_tokens + at, l->row_segments + at, l->row_mask + at, err) != 0)
            return -1;
        i += n;
    }
    return 0;
}

/* Turns the rows into inputs, targets, segments, positions and the target mask. */
static void rows_to_batch(const gale_loader *l, gale_batch *b)
{
    int S = l->seq_len + 1, T = l->seq_len;
    b->n_targets = 0;
    for (int i = 0; i < b->rows; i++) {
        const int32_t *tok = l->row_tokens + (size_t)i * S;
        const uint16_t *seg = l->row_segments + (size_t)i * S;
        const uint8_t *mask = l->row_mask + (size_t)i * S;
        size_t at = (size_t)i * T;
        for (int t = 0; t < T; t++) {
            b->inputs[at + t] = tok[t];
            b->targets[at + t] = tok[t + 1];
            b->segments[at + t] = seg[t];
            b->positions[at + t] = t > 0 && seg[t] == seg[t - 1] ? b->positions[at + t - 1] + 1 : 0;
            uint8_t m = mask[t + 1] && seg[t] != GALE_SEGMENT_PAD && seg[t + 1] != GALE_SEGMENT_PAD;
            b->loss_mask[at + t] = m;
            b->n_targets += m;
        }
    }
}

/* Makes the batch at *pos for this rank and advances pos over the whole step (all ranks).
 * 1 with a batch, 0 at the end of a one-pass loader, -1 on error. */
static int produce_batch(gale_loader *l, gale_loader_position *pos, gale_batch *b, gale_error *err)
{
    int64_t B = l->opts.batch_rows, step = B * l->opts.world;
    if (l->opts.one_pass && pos->slots >= l->total_rows)
        return 0;
    b->first_slot = pos->slots + l->opts.rank * B;
    for (int64_t i = 0; i < step; i++) {
        row_ref ref = next_slot(l, pos);
        int64_t mine = i - l->opts.rank * B;
        if (mine >= 0 && mine < B)
            l->refs[mine] = ref;
    }
    if (read_rows(l, err) != 0)
        return -1;
    rows_to_batch(l, b);
    return 1;
}

/* ---- the prefetch thread ---- */

static void *producer_main(void *arg)
{
    gale_loader *l = arg;
    pthread_mutex_lock(&l->lock);
    while (!l->stop) {
        ring_slot *slot = &l->ring[l->tail];
        if (slot->full) {
            pthread_cond_wait(&l->space, &l->lock);
            continue;
        }
        pthread_mutex_unlock(&l->lock);
        int status = produce_batch(l, &l->cursor, &slot->batch, &slot->err);
        slot->end = l->cursor;
        pthread_mutex_lock(&l->lock);
        slot->status = status;
        slot->full = 1;
        l->tail = (l->tail + 1) % l->ring_size;
        pthread_cond_signal(&l->ready);
        /* the end of a one-pass stream and an error are final: the slot stays for every
         * later loader_next */
        if (status != 1)
            break;
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

static int start_producer(gale_loader *l, gale_error *err)
{
    for (int i = 0; i < l->ring_size; i++)
        l->ring[i].full = 0;
    l->head = l->tail = 0;
    l->stop = 0;
    l->cursor = l->position;
    if (l->ring_size == 0)
        return 0;
    if (pthread_create(&l->thread, NULL, producer_main, l) != 0)
        return gale_fail(err, "loader: cannot start the prefetch thread");
    l->running = 1;
    return 0;
}

static void stop_producer(gale_loader *l)
{
    if (!l->running)
        return;
    pthread_mutex_lock(&l->lock);
    l->stop = 1;
    pthread_cond_broadcast(&l->space);
    pthread_mutex_unlock(&l->lock);
    pthread_join(l->thread, NULL);
    l->running = 0;
}

int loader_next(gale_loader *l, gale_batch *b, gale_error *err)
{
    if (b->rows != l->opts.batch_rows || b->seq_len != l->seq_len)
        return gale_fail(err, "loader: batch of %d x %d given, the loader serves %d x %d", b->rows, b->seq_len,
                         l->opts.batch_rows, l->seq_len);
    if (l->ring_size == 0) {
        int status = produce_batch(l, &l->cursor, b, err);
        if (status == 1)
            l->position = l->cursor;
        else
            l->cursor = l->position;
        return status;
    }
    pthread_mutex_lock(&l->lock);
    while (!l->ring[l->head].full)
        pthread_cond_wait(&l->ready, &l->lock);
    pthread_mutex_unlock(&l->lock);
    ring_slot *slot = &l->ring[l->head];
    if (slot->status != 1) {
        if (slot->status < 0 && err)
            *err = slot->err;
        return slot->status;
    }
    batch_copy(b, &slot->batch);
    l->position = slot->end;
    pthread_mutex_lock(&l->lock);
    slot->full = 0;
    l->head = (l->head + 1) % l->ring_size;
    pthread_cond_signal(&l->space);
    pthread_mutex_unlock(&l->lock);
    return 1;
}

/* ---- opening ---- */

/* data.on_bad_shard: skip. Every shard of the split is checked in full (SHA-256 included)
 * before the stream is laid out, so that all ranks leave out the same ones; returns which
 * shards are usable (those of other splits are not looked at). */
static int *leave_out_bad_shards(const gale_manifest *m, const char *dir, const char *split)
{
    int *usable = gale_xcalloc(m->n_shards + 1, sizeof *usable);
    for (size_t i = 0; i < m->n_shards; i++) {
        gale_error why;
        usable[i] = strcmp(m->shards[i].split, split) != 0 || manifest_verify_shard(m, dir, i, 1, &why) == 0;
        if (!usable[i])
            fprintf(stderr, "warning: leaving out a bad shard (data.on_bad_shard: skip): %s\n", why.msg);
    }
    return usable;
}

static int open_source(gale_loader *l, size_t s, const char *dir, gale_error *err)
{
    source *src = &l->sources[s];
    src->dir = gale_xstrdup(dir);
    src->perm_epoch = -1;
    int *usable = NULL;
    if (l->opts.skip_bad_shards) {
        if (manifest_read(&src->manifest, dir, err) != 0)
            return -1;
        usable = leave_out_bad_shards(&src->manifest, dir, l->split);
    } else if (manifest_load(&src->manifest, dir, l->opts.verify_checksums, err) != 0) {
        return -1;
    }
    const gale_manifest *m = &src->manifest;
    for (size_t i = 0; i < m->n_shards; i++)
        src->n_shards += !strcmp(m->shards[i].split, l->split) && (!usable || usable[i]);
    src->shard_paths = gale_xcalloc(src->n_shards + 1, sizeof *src->shard_paths);
    src->shard_sha256 = gale_xcalloc(src->n_shards + 1, sizeof *src->shard_sha256);
    src->checked = gale_xcalloc(src->n_shards + 1, sizeof *src->checked);
    src->shard_first = gale_xcalloc(src->n_shards + 1, sizeof *src->shard_first);
    src->open = gale_xcalloc(src->n_shards + 1, sizeof *src->open);
    src->last_use = gale_xcalloc(src->n_shards + 1, sizeof *src->last_use);
    size_t k = 0;
    for (size_t i = 0; i < m->n_shards; i++) {
        if (strcmp(m->shards[i].split, l->split) != 0 || (usable && !usable[i]))
            continue;
        src->shard_paths[k] = gale_path_join(dir, m->shards[i].file);
        src->shard_sha256[k] = m->shards[i].sha256;
        src->checked[k] = l->opts.verify_checksums || usable;
        src->shard_first[k + 1] = src->shard_first[k] + m->shards[i].rows;
        k++;
    }
    free(usable);
    src->rows = src->shard_first[src->n_shards];
    /* a training stream draws from every source; a one-pass one just has nothing from it */
    if (src->rows == 0 && !l->opts.one_pass)
        return gale_fail(err, "%s: no %s rows (manifest.json lists %zu %s shards)", dir, l->split, src->n_shards,
                         l->split);
    if (src->rows > UINT32_MAX)
        return gale_fail(err, "%s: %lld %s rows, more than the loader's shuffle holds (%u)", dir,
                         (long long)src->rows, l->split, UINT32_MAX);
    if (s == 0)
        return 0;
    const gale_manifest *first = &l->sources[0].manifest;
    if (m->seq_len != first->seq_len)
        return gale_fail(err, "%s: seq_len %d differs from %s's %d", dir, m->seq_len, l->sources[0].dir,
                         first->seq_len);
    if (strcmp(m->tokenizer.sha256, first->tokenizer.sha256) != 0 ||
        m->tokenizer.vocab_size != first->tokenizer.vocab_size)
        return gale_fail(err, "%s: tokenizer %.12s... (vocab %d) differs from %s's %.12s... (vocab %d)", dir,
                         m->tokenizer.sha256, m->tokenizer.vocab_size, l->sources[0].dir, first->tokenizer.sha256,
                         first->tokenizer.vocab_size);
    return 0;
}

static int check_options(const gale_loader_options *o, gale_error *err)
{
    if (o->n_dirs < 1 || o->n_dirs > GALE_LOADER_MAX_SOURCES)
        return gale_fail(err, "loader: %zu folders given, 1 to %d are supported", o->n_dirs, GALE_LOADER_MAX_SOURCES);
    if (!o->split || (strcmp(o->split, "train") != 0 && strcmp(o->split, "val") != 0))
        return gale_fail(err, "loader: split must be 'train' or 'val'");
    if (o->batch_rows < 1 || o->world < 1 || o->rank < 0 || o->rank >= o->world)
        return gale_fail(err, "loader: batch rows %d, rank %d of %d: need rows >= 1 and 0 <= rank < world",
                         o->batch_rows, o->rank, o->world);
    if (o->prefetch < 0)
        return gale_fail(err, "loader: prefetch %d must not be negative", o->prefetch);
    for (size_t i = 0; o->weights && i < o->n_dirs; i++)
        if (!(o->weights[i] > 0) || !isfinite(o->weights[i]))
            return gale_fail(err, "%s: weight %g must be a positive number", o->dirs[i], o->weights[i]);
    return 0;
}

gale_loader *loader_open(const gale_loader_options *opts, gale_error *err)
{
    if (check_options(opts, err) != 0)
        return NULL;
    gale_loader *l = gale_xcalloc(1, sizeof *l);
    l->opts = *opts;
    l->split = gale_xstrdup(opts->split);
    l->opts.split = l->split;
    l->opts.dirs = NULL;
    l->opts.weights = NULL;
    l->n_sources = opts->n_dirs;
    l->sources = gale_xcalloc(l->n_sources, sizeof *l->sources);
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->ready, NULL);
    pthread_cond_init(&l->space, NULL);
    for (size_t s = 0; s < l->n_sources; s++) {
        if (open_source(l, s, opts->dirs[s], err) != 0) {
            loader_close(l);
            return NULL;
        }
        l->total_rows += l->sources[s].rows;
    }
    double total_weight = 0;
    for (size_t s = 0; s < l->n_sources; s++)
        total_weight += opts->weights ? opts->weights[s] : (double)l->sources[s].rows;
    for (size_t s = 0; s < l->n_sources; s++) {
        source *src = &l->sources[s];
        src->share = (opts->weights ? opts->weights[s] : (double)src->rows) / total_weight;
        if (!opts->one_pass)
            src->perm = gale_xmalloc((size_t)src->rows * sizeof *src->perm);
    }
    l->seq_len = l->sources[0].manifest.seq_len;
    l->vocab_size = l->sources[0].manifest.tokenizer.vocab_size;
    size_t cells = (size_t)opts->batch_rows * (l->seq_len + 1);
    l->row_tokens = gale_xmalloc(cells * sizeof *l->row_tokens);
    l->row_segments = gale_xmalloc(cells * sizeof *l->row_segments);
    l->row_mask = gale_xmalloc(cells);
    l->refs = gale_xmalloc((size_t)opts->batch_rows * sizeof *l->refs);
    l->position.n_sources = l->n_sources;
    /* without a thread-safe HDF5 a reading thread could race other HDF5 users: no prefetch */
    l->ring_size = shard_hdf5_threadsafe() ? opts->prefetch : 0;
    l->ring = gale_xcalloc(l->ring_size ? l->ring_size : 1, sizeof *l->ring);
    for (int i = 0; i < l->ring_size; i++)
        batch_init(&l->ring[i].batch, opts->batch_rows, l->seq_len);
    if (start_producer(l, err) != 0) {
        loader_close(l);
        return NULL;
    }
    return l;
}

void loader_close(gale_loader *l)
{
    if (!l)
        return;
    stop_producer(l);
    for (size_t s = 0; s < l->n_sources; s++) {
        source *src = &l->sources[s];
        for (size_t k = 0; k < src->n_shards; k++) {
            shard_close(src->open[k]);
            free(src->shard_paths[k]);
        }
        free(src->shard_paths);
        free(src->shard_sha256);
        free(src->checked);
        free(src->shard_first);
        free(src->open);
        free(src->last_use);
        free(src->perm);
        free(src->dir);
        manifest_free(&src->manifest);
    }
    for (int i = 0; i < l->ring_size; i++)
        batch_free(&l->ring[i].batch);
    free(l->ring);
    free(l->sources);
    free(l->row_tokens);
    free(l->row_segments);
    free(l->row_mask);
    free(l->refs);
    free(l->split);
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->ready);
    pthread_cond_destroy(&l->space);
    free(l);
}

int loader_seq_len(const gale_loader *l)
{
    return l->seq_len;
}

int loader_vocab_size(const gale_loader *l)
{
    return l->vocab_size;
}

int64_t loader_source_rows(const gale_loader *l, size_t s)
{
    return s < l->n_sources ? l->sources[s].rows : 0;
}

int64_t loader_total_rows(const gale_loader *l)
{
    return l->total_rows;
}

/* ---- position ---- */

void loader_position(const gale_loader *l, gale_loader_position *pos)
{
    *pos = l->position;
}

int loader_seek(gale_loader *l, const gale_loader_position *pos, gale_error *err)
{
    if (pos->n_sources != l->n_sources)
        return gale_fail(err, "loader: the position is over %zu sources, this loader reads %zu", pos->n_sources,
                         l->n_sources);
    int64_t drawn = 0;
    for (size_t s = 0; s < pos->n_sources; s++) {
        if (pos->rows_drawn[s] < 0)
            return gale_fail(err, "loader: the position's rows_drawn[%zu] is negative", s);
        drawn += pos->rows_drawn[s];
    }
    /* every slot draws one row (past the end of a one-pass stream, a padding row) */
    if (pos->slots < 0 || (l->opts.one_pass ? drawn > pos->slots : drawn != pos->slots))
        return gale_fail(err, "loader: the position is inconsistent (%lld slots, %lld rows drawn)",
                         (long long)pos->slots, (long long)drawn);
    stop_producer(l);
    l->position = *pos;
    return start_producer(l, err);
}

json_t *loader_position_to_json(const gale_loader_position *pos)
{
    json_t *drawn = json_array();
    for (size_t s = 0; s < pos->n_sources; s++)
        json_array_append_new(drawn, json_integer(pos->rows_drawn[s]));
    return json_pack("{sIso}", "slots", (json_int_t)pos->slots, "rows_drawn", drawn);
}

int loader_position_from_json(const json_t *j, gale_loader_position *pos, gale_error *err)
{
    memset(pos, 0, sizeof *pos);
    json_t *slots = json_object_get(j, "slots"), *drawn = json_object_get(j, "rows_drawn");
    if (!json_is_integer(slots) || !json_is_array(drawn))
        return gale_fail(err, "data position: needs an integer 'slots' and an array 'rows_drawn'");
    if (json_array_size(drawn) < 1 || json_array_size(drawn) > GALE_LOADER_MAX_SOURCES)
        return gale_fail(err, "data position: 'rows_drawn' must hold 1 to %d counts", GALE_LOADER_MAX_SOURCES);
    pos->slots = json_integer_value(slots);
    pos->n_sources = json_array_size(drawn);
    for (size_t s = 0; s < pos->n_sources; s++) {
        json_t *v = json_array_get(drawn, s);
        if (!json_is_integer(v))
            return gale_fail(err, "data position: 'rows_drawn[%zu]' must be an integer", s);
        pos->rows_drawn[s] = json_integer_value(v);
    }
    return 0;
}
