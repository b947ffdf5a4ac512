/* comm: the training run's communicators (world, expert-parallel, data-parallel) and the
 * collectives over them. */
#include "train/comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim/adamw.h"

/* MPI counts are ints: a 7B model's buffers go in pieces. */
#define MPI_PIECE ((size_t)1 << 28)

static int piece_count(size_t n, size_t at)
{
    return (int)(n - at < MPI_PIECE ? n - at : MPI_PIECE);
}

/* What a ring all-reduce of `bytes` sends from each of p ranks: 2 (p - 1) / p of them. */
static uint64_t ring_bytes(size_t bytes, int p)
{
    return p > 1 ? (uint64_t)(2.0 * (p - 1) / p * (double)bytes) : 0;
}

static void alltoall_counts(void *ctx, const int32_t *send, int32_t *recv, int per)
{
    gale_comm *c = ctx;
    double t0 = MPI_Wtime();
    MPI_Alltoall(send, per, MPI_INT32_T, recv, per, MPI_INT32_T, c->ep);
    c->seconds[COMM_ALLTOALL] += MPI_Wtime() - t0;
    c->bytes[COMM_ALLTOALL] += (uint64_t)(c->ep_size - 1) * per * sizeof(int32_t);
}

static void alltoallv_rows(void *ctx, const void *send, const int *send_rows, void *recv,
                           const int *recv_rows, size_t row_bytes)
{
    gale_comm *c = ctx;
    int p = c->ep_size, sdispl[p], rdispl[p];
    MPI_Datatype row;
    MPI_Type_contiguous((int)row_bytes, MPI_BYTE, &row);
    MPI_Type_commit(&row);
    sdispl[0] = rdispl[0] = 0;
    for (int r = 1; r < p; r++) {
        sdispl[r] = sdispl[r - 1] + send_rows[r - 1];
        rdispl[r] = rdispl[r - 1] + recv_rows[r - 1];
    }
    double t0 = MPI_Wtime();
    MPI_Alltoallv(send, send_rows, sdispl, row, recv, recv_rows, rdispl, row, c->ep);
    c->seconds[COMM_ALLTOALL] += MPI_Wtime() - t0;
    MPI_Type_free(&row);
    for (int r = 0; r < p; r++)
        if (r != c->ep_rank)
            c->bytes[COMM_ALLTOALL] += (uint64_t)send_rows[r] * row_bytes;
}

static void abort_job(void *ctx, const char *msg)
{
    gale_comm *c = ctx;
    fprintf(stderr, "gale: rank %d: %s\n", c->rank, msg);
    fflush(stderr);
    MPI_Abort(c->world, 1);
}

void comm_world_position(int *rank, int *size)
{
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, size);
}

int comm_create(gale_comm *c, int ep, int num_experts, const char *key, gale_error *err)
{
    memset(c, 0, sizeof *c);
    c->world = c->ep = c->dp = MPI_COMM_NULL;
    comm_world_position(&c->rank, &c->size);
    if (ep < 1)
        return gale_fail(err, "%s = %d: must be at least 1", key, ep);
    if (c->size % ep)
        return gale_fail(err, "%s = %d does not divide the %d ranks of the job (world = "
                              "data-parallel x expert-parallel ranks)", key, ep, c->size);
    if (ep > 1 && num_experts == 0)
        return gale_fail(err, "%s = %d: expert parallelism needs a mixture-of-experts model "
                              "(num_local_experts)", key, ep);
    if (ep > 1 && num_experts % ep)
        return gale_fail(err, "%s = %d does not divide the model's %d experts (num_local_experts)",
                         key, ep, num_experts);
    MPI_Comm_dup(MPI_COMM_WORLD, &c->world);
    c->ep_size = ep;
    c->ep_rank = c->rank % ep;
    c->dp_size = c->size / ep;
    c->dp_rank = c->rank / ep;
    MPI_Comm_split(c->world, c->dp_rank, c->ep_rank, &c->ep);
    MPI_Comm_split(c->world, c->ep_rank, c->dp_rank, &c->dp);
    MPI_Comm node;
    MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &c->local_rank);
    MPI_Comm_size(node, &c->local_size);
    MPI_Comm_free(&node);
    c->exchange = (struct model_expert_exchange){
        .size = ep, .rank = c->ep_rank, .ctx = c, .counts = alltoall_counts, .rows = alltoallv_rows,
        .abort = abort_job};
    return 0;
}

void comm_free(gale_comm *c)
{
    MPI_Comm *comms[] = {&c->world, &c->ep, &c->dp};
    for (size_t i = 0; i < sizeof comms / sizeof *comms; i++)
        if (*comms[i] != MPI_COMM_NULL)
            MPI_Comm_free(comms[i]);
}

MPI_Comm comm_group(const gale_comm *c, enum comm_group g)
{
    return g == COMM_EP_GROUP ? c->ep : g == COMM_DP_GROUP ? c->dp : c->world;
}

int comm_group_size(const gale_comm *c, enum comm_group g)
{
    return g == COMM_EP_GROUP ? c->ep_size : g == COMM_DP_GROUP ? c->dp_size : c->size;
}

static void sum(gale_comm *c, enum comm_group g, void *x, int n, MPI_Datatype type, size_t size)
{
    double t0 = MPI_Wtime();
    MPI_Allreduce(MPI_IN_PLACE, x, n, type, MPI_SUM, comm_group(c, g));
    c->seconds[COMM_ALLREDUCE] += MPI_Wtime() - t0;
    c->bytes[COMM_ALLREDUCE] += ring_bytes((size_t)n * size, comm_group_size(c, g));
}

void comm_sum_floats(gale_comm *c, enum comm_group g, float *x, size_t n)
{
    if (comm_group_size(c, g) == 1)
        return;
    for (size_t at = 0; at < n; at += MPI_PIECE)
        sum(c, g, x + at, piece_count(n, at), MPI_FLOAT, sizeof(float));
}

void comm_sum_doubles(gale_comm *c, enum comm_group g, double *x, int n)
{
    sum(c, g, x, n, MPI_DOUBLE, sizeof(double));
}

void comm_sum_int64(gale_comm *c, enum comm_group g, int64_t *x, int n)
{
    sum(c, g, x, n, MPI_INT64_T, sizeof(int64_t));
}

int comm_max_int(gale_comm *c, enum comm_group g, int x)
{
    MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_INT, MPI_MAX, comm_group(c, g));
    return x;
}

void comm_bcast_floats(gale_comm *c, enum comm_group g, float *x, size_t n, int root)
{
    int p = comm_group_size(c, g), me;
    MPI_Comm_rank(comm_group(c, g), &me);
    for (size_t at = 0; at < n; at += MPI_PIECE)
        MPI_Bcast(x + at, piece_count(n, at), MPI_FLOAT, root, comm_group(c, g));
    if (me == root && p > 1)
        c->bytes[COMM_BROADCAST] += n * sizeof(float);
}

void comm_bcast_int(gale_comm *c, enum comm_group g, int *x, int root)
{
    MPI_Bcast(x, 1, MPI_INT, root, comm_group(c, g));
}

/* Calls f over each maximal run of layout's tensors that are all experts or all dense. */
static void for_each_run(const struct model_layout *layout, int split,
                         void (*f)(void *ctx, int expert, size_t begin, size_t end), void *ctx)
{
    for (int i = 0; i < layout->n;) {
        int j = i + 1;
        while (j < layout->n && (!split || layout->tensors[j].expert == layout->tensors[i].expert))
            j++;
        const struct model_tensor *last = &layout->tensors[j - 1];
        f(ctx, layout->tensors[i].expert, layout->tensors[i].offset, last->offset + last->numel);
        i = j;
    }
}

struct grad_pass {
    gale_comm *c;
    struct gale_backend *be;
    float *grads;
    double *device_sumsq;  /* dense, experts: the backend's accumulators */
};

static void sum_run(void *ctx, int expert, size_t begin, size_t end)
{
    struct grad_pass *p = ctx;
    comm_sum_floats(p->c, expert ? COMM_DP_GROUP : COMM_WORLD_GROUP, p->grads + begin, end - begin);
}

static void sumsq_run(void *ctx, int expert, size_t begin, size_t end)
{
    struct grad_pass *p = ctx;
    p->be->ops->sumsq(p->be, p->device_sumsq + expert, p->grads + begin, end - begin);
}

void comm_sum_gradients(gale_comm *c, const struct model_layout *layout, float *grads)
{
    struct grad_pass p = {.c = c, .grads = grads};
    for_each_run(layout, c->ep_size > 1, sum_run, &p);
}

double comm_grad_sumsq(gale_comm *c, const struct model_layout *layout,
                       struct gale_backend *be, const float *grads)
{
    double sumsq[2];
    struct grad_pass p = {.c = c, .be = be, .grads = (float *)grads, .device_sumsq = be->ops->alloc(be, sizeof sumsq)};
    be->ops->zero(be, p.device_sumsq, sizeof sumsq);
    for_each_run(layout, c->ep_size > 1, sumsq_run, &p);
    be->ops->download(be, sumsq, p.device_sumsq, sizeof sumsq);
    gale_backend_wait(be);
    be->ops->free(be, p.device_sumsq);
    if (c->ep_size > 1)
        comm_sum_doubles(c, COMM_EP_GROUP, &sumsq[1], 1);
    return sumsq[0] + sumsq[1];
}

void comm_bytes_reset(gale_comm *c)
{
    memset(c->bytes, 0, sizeof c->bytes);
    memset(c->seconds, 0, sizeof c->seconds);
}

const char *comm_kind_name(enum comm_kind k)
{
    static const char *const names[COMM_KINDS] = {"allreduce", "alltoall", "broadcast", "reduce_scatter",
                                                  "allgather"};
    return k < COMM_KINDS ? names[k] : "?";
}

void comm_allgather_u64(gale_comm *c, enum comm_group g, uint64_t x, uint64_t *all)
{
    MPI_Allgather(&x, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, comm_group(c, g));
}

void comm_gather_floats(gale_comm *c, enum comm_group g, const float *mine, size_t n, float *all,
                        const size_t *counts, int root)
{
    MPI_Comm comm = comm_group(c, g);
    int p = comm_group_size(c, g), me;
    MPI_Comm_rank(comm, &me);
    double t0 = MPI_Wtime();
    if (me != root) {
        for (size_t at = 0; at < n; at += MPI_PIECE)
            MPI_Send(mine + at, piece_count(n, at), MPI_FLOAT, root, 0, comm);
        c->bytes[COMM_BROADCAST] += n * sizeof(float); /* one to one, as grad_sync's gathers count */
    } else {
        for (int r = 0; r < p; all += counts[r], r++)
            if (r == root && counts[r])
                memcpy(all, mine, counts[r] * sizeof *all);
            else
                for (size_t at = 0; at < counts[r]; at += MPI_PIECE)
                    MPI_Recv(all + at, piece_count(counts[r], at), MPI_FLOAT, r, 0, comm, MPI_STATUS_IGNORE);
    }
    c->seconds[COMM_BROADCAST] += MPI_Wtime() - t0;
}

int comm_agree(gale_comm *c, int failed, gale_error *err)
{
    int first = failed ? c->rank : c->size;
    MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, c->world);
    if (first == c->size)
        return -1;
    char msg[sizeof err->msg];
    if (c->rank == first)
        memcpy(msg, err->msg, sizeof msg);
    MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, first, c->world);
    if (c->rank != first)
        snprintf(err->msg, sizeof err->msg, "rank %d: %.*s", first, (int)sizeof msg - 16, msg);
    return first;
}
