/* grad_sync: bucketed, non-blocking gradient reduction and ZeRO-1's shards (grad_sync.h). */
#include "train/grad_sync.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim/adamw.h"
#include "util/error.h"

/* Elements per bucket at most: MPI counts and displacements are ints. */
#define BUCKET_MAX ((size_t)1 << 28)

/* The decoder layer a tensor belongs to, -1 for the embeddings, the final norm and the head
 * (which the backward finishes outside the layers). */
static int layer_of(const struct model_tensor *t)
{
    const char *at = strstr(t->name, "layers.");
    return at ? atoi(at + strlen("layers.")) : -1;
}

static void add_bucket(struct grad_sync *s, size_t begin, size_t end, int first, int last, int expert)
{
    gale_comm *c = s->c;
    s->buckets = gale_xrealloc(s->buckets, (size_t)(s->n + 1) * sizeof *s->buckets);
    struct grad_bucket *b = &s->buckets[s->n++];
    memset(b, 0, sizeof *b);
    b->begin = begin;
    b->end = end;
    b->first = first;
    b->last = last;
    b->group = expert && c->ep_size > 1 ? COMM_DP_GROUP : COMM_WORLD_GROUP;
    int p = comm_group_size(c, b->group), me = b->group == COMM_DP_GROUP ? c->dp_rank : c->rank;
    size_t n = end - begin, chunk = (n + p - 1) / p;
    b->counts = gale_xcalloc((size_t)p, sizeof *b->counts);
    b->displs = gale_xcalloc((size_t)p, sizeof *b->displs);
    for (int r = 0; r < p; r++) {
        size_t lo = (size_t)r * chunk < n ? (size_t)r * chunk : n, hi = lo + chunk < n ? lo + chunk : n;
        b->displs[r] = (int)lo;
        b->counts[r] = (int)(hi - lo);
    }
    b->piece_begin = begin + (size_t)b->displs[me];
    b->piece_end = b->piece_begin + (size_t)b->counts[me];
}

void grad_sync_init(struct grad_sync *s, gale_comm *c, const struct model_layout *layout, int zero)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    s->layout = layout;
    s->zero = zero;
    for (int i = 0; i < layout->n;) {
        const struct model_tensor *t = &layout->tensors[i];
        int j = i + 1;
        while (j < layout->n && layer_of(&layout->tensors[j]) == layer_of(t) &&
               (c->ep_size == 1 || layout->tensors[j].expert == t->expert))
            j++;
        size_t begin = t->offset, end = layout->tensors[j - 1].offset + layout->tensors[j - 1].numel;
        for (size_t at = begin; at < end; at += BUCKET_MAX) {
            size_t stop = end - at < BUCKET_MAX ? end : at + BUCKET_MAX;
            int first = i, last = j - 1;  /* the tensors this piece of the run touches */
            while (layout->tensors[first].offset + layout->tensors[first].numel <= at)
                first++;
            while (layout->tensors[last].offset >= stop)
                last--;
            add_bucket(s, at, stop, first, last, t->expert);
        }
        i = j;
    }
}

void grad_sync_free(struct grad_sync *s)
{
    for (int i = 0; i < s->n; i++) {
        free(s->buckets[i].counts);
        free(s->buckets[i].displs);
    }
    free(s->buckets);
    memset(s, 0, sizeof *s);
}

int grad_sync_pieces(const struct grad_sync *s, size_t (**ranges)[2])
{
    *ranges = gale_xcalloc(s->n ? (size_t)s->n : 1, sizeof **ranges);
    for (int i = 0; i < s->n; i++) {
        (*ranges)[i][0] = s->buckets[i].piece_begin;
        (*ranges)[i][1] = s->buckets[i].piece_end;
    }
    return s->n;
}

void grad_sync_begin(struct grad_sync *s, float *grads)
{
    s->grads = grads;
    for (int i = 0; i < s->n; i++)
        s->buckets[i].started = 0;
}

static int group_size(const struct grad_sync *s, const struct grad_bucket *b)
{
    return comm_group_size(s->c, b->group);
}

/* What a ring sends from each of p ranks for a reduce-scatter or an all-gather of `bytes`:
 * (p - 1) / p of them; an all-reduce is both. */
static uint64_t ring_share(size_t bytes, int p)
{
    return (uint64_t)((double)(p - 1) / p * (double)bytes);
}

/* The kind a bucket's reduction counts as. */
static enum comm_kind kind_of(const struct grad_sync *s)
{
    return s->zero ? COMM_REDUCE_SCATTER : COMM_ALLREDUCE;
}

static void start(struct grad_sync *s, struct grad_bucket *b)
{
    MPI_Comm comm = comm_group(s->c, b->group);
    double t0 = MPI_Wtime();
    int p = group_size(s, b);
    b->started = 1;
    b->request = MPI_REQUEST_NULL;
    if (p == 1)
        return;
    float *x = s->grads + b->begin;
    size_t bytes = (b->end - b->begin) * sizeof(float);
    if (s->zero) {
        /* in place: the input is the bucket, and this rank's piece of the sum lands at its
         * start (moved to the piece's place in grad_sync_finish) */
        MPI_Ireduce_scatter(MPI_IN_PLACE, x, b->counts, MPI_FLOAT, MPI_SUM, comm, &b->request);
        s->c->bytes[COMM_REDUCE_SCATTER] += ring_share(bytes, p);
    } else {
        MPI_Iallreduce(MPI_IN_PLACE, x, (int)(b->end - b->begin), MPI_FLOAT, MPI_SUM, comm, &b->request);
        s->c->bytes[COMM_ALLREDUCE] += 2 * ring_share(bytes, p);
    }
    s->c->seconds[kind_of(s)] += MPI_Wtime() - t0;
}

void grad_sync_ready(struct grad_sync *s, int first, int end)
{
    int flag;
    for (int i = 0; i < s->n; i++) {
        struct grad_bucket *b = &s->buckets[i];
        if (!b->started && b->first >= first && b->last < end) {
            start(s, b);
        } else if (b->started && b->request != MPI_REQUEST_NULL) {
            double t0 = MPI_Wtime();
            MPI_Test(&b->request, &flag, MPI_STATUS_IGNORE);  /* drives progress */
            s->c->seconds[kind_of(s)] += MPI_Wtime() - t0;
        }
    }
}

void grad_sync_finish(struct grad_sync *s)
{
    for (int i = 0; i < s->n; i++)
        if (!s->buckets[i].started)
            start(s, &s->buckets[i]);
    for (int i = 0; i < s->n; i++) {
        struct grad_bucket *b = &s->buckets[i];
        double t0 = MPI_Wtime();
        MPI_Wait(&b->request, MPI_STATUS_IGNORE);
        s->c->seconds[kind_of(s)] += MPI_Wtime() - t0;
        if (s->zero && b->piece_begin != b->begin && group_size(s, b) > 1)
            memmove(s->grads + b->piece_begin, s->grads + b->begin,
                    (b->piece_end - b->piece_begin) * sizeof(float));
    }
}

int grad_sync_sumsq(struct grad_sync *s, struct adamw *opt, double *sumsq, gale_error *err)
{
    size_t (*pieces)[2];
    int n = grad_sync_pieces(s, &pieces);
    int rc = adamw_grad_sumsq(opt, s->grads, (const size_t (*)[2])pieces, n, sumsq, err);
    free(pieces);
    if (rc == 0 && s->c->size > 1)
        comm_sum_doubles(s->c, COMM_WORLD_GROUP, sumsq, 1);
    return rc;
}

void grad_sync_gather_params(struct grad_sync *s, float *params)
{
    MPI_Request *req = gale_xcalloc(s->n ? (size_t)s->n : 1, sizeof *req);
    double t0 = MPI_Wtime();
    for (int i = 0; i < s->n; i++) {
        struct grad_bucket *b = &s->buckets[i];
        int p = group_size(s, b);
        req[i] = MPI_REQUEST_NULL;
        if (p == 1)
            continue;
        MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, params + b->begin, b->counts, b->displs, MPI_FLOAT,
                        comm_group(s->c, b->group), &req[i]);
        s->c->bytes[COMM_ALLGATHER] += ring_share((b->end - b->begin) * sizeof(float), p);
    }
    MPI_Waitall(s->n, req, MPI_STATUSES_IGNORE);
    s->c->seconds[COMM_ALLGATHER] += MPI_Wtime() - t0;
    free(req);
}

void grad_sync_parts(const struct grad_sync *s, size_t *part)
{
    const struct model_layout *layout = s->layout;
    int dp = s->c->dp_size, i = 0;
    size_t chunk = (layout->numel + dp - 1) / dp;
    for (int d = 0; d < dp; d++) {
        while (i < s->n && (s->buckets[i].begin < (size_t)d * chunk ||
                            s->buckets[i].begin != layout->tensors[s->buckets[i].first].offset))
            i++;
        part[d] = i < s->n ? s->buckets[i].begin : layout->numel;
    }
    part[dp] = layout->numel;
}

void grad_sync_collect_part(struct grad_sync *s, const size_t *part, const float *m_pieces, const float *v_pieces,
                            float *m, float *v)
{
    gale_comm *c = s->c;
    size_t at = 0; /* this rank's piece of bucket i in the pieces */
    const float *pieces[2] = {m_pieces, v_pieces};
    float *whole[2] = {m, v};
    for (int i = 0; i < s->n; i++) {
        struct grad_bucket *b = &s->buckets[i];
        int d = 0;
        while (d + 1 < c->dp_size && part[d + 1] <= b->begin)
            d++;
        int dense = b->group == COMM_WORLD_GROUP, p = group_size(s, b);
        int root = dense ? d * c->ep_size : d, me = dense ? c->rank : c->dp_rank;
        size_t n = b->piece_end - b->piece_begin;
        for (int which = 0; which < 2; which++) {
            float *recv = me == root ? whole[which] + (b->begin - part[d]) : NULL;
            if (p == 1) {
                memcpy(recv, pieces[which] + at, n * sizeof(float));
                continue;
            }
            double t0 = MPI_Wtime();
            MPI_Gatherv(pieces[which] + at, (int)n, MPI_FLOAT, recv, b->counts, b->displs, MPI_FLOAT, root,
                        comm_group(c, b->group));
            c->seconds[COMM_BROADCAST] += MPI_Wtime() - t0;
            if (me != root)
                c->bytes[COMM_BROADCAST] += n * sizeof(float);
        }
        at += n;
    }
}
