/* grad_sync: a training step's gradient reduction in buckets, started as the backward
 * produces them, and ZeRO-1's optimizer shards over the same buckets.
 *
 * The buckets cut the trained layout where the backward finishes its tensors (the final norm
 * and head, each layer, the embeddings: model_set_grads_ready reports them), where the kind
 * changes under expert parallelism (dense gradients are summed over the world, experts' over
 * the data-parallel group: the ranks holding the same experts) and at MPI's int counts. Each
 * bucket's collective is non-blocking (MPI_Iallreduce, or with ZeRO-1 MPI_Ireduce_scatter),
 * started by grad_sync_ready as soon as its tensors are final and waited for in
 * grad_sync_finish, before the optimizer. A step that starts every bucket after the backward
 * (overlap off) makes the same collectives over the same buffers, so the same sums to the bit.
 *
 * ZeRO-1: each bucket of n elements over a group of p ranks is cut into p pieces
 * (ceil(n / p) each, the last ones shorter); rank q of the group holds the AdamW moments of
 * piece q of every bucket (adamw_init_ranges over grad_sync_pieces), receives that piece's sum
 * from the reduce-scatter, updates it, and the pieces are all-gathered into every rank's
 * weights (grad_sync_gather_params). Dense weights are so sharded over the world, experts'
 * over the data-parallel group. */
#ifndef GALE_TRAIN_GRAD_SYNC_H
#define GALE_TRAIN_GRAD_SYNC_H

#include <mpi.h>
#include <stddef.h>

#include "model/model.h"
#include "optim/adamw.h"
#include "train/comm.h"

struct grad_bucket {
    size_t begin, end;        /* of the flat buffer */
    int first, last;          /* the layout's tensors it holds part of */
    enum comm_group group;
    int *counts, *displs;     /* per rank of the group: its piece (elements, from begin) */
    size_t piece_begin, piece_end; /* this rank's piece, flat */
    MPI_Request request;
    int started;
};

struct grad_sync {
    gale_comm *c;
    const struct model_layout *layout;
    int zero;
    struct grad_bucket *buckets;
    int n;
    float *grads;             /* the step's, from grad_sync_begin */
};

/* Buckets of layout (the trained one: the whole model's, or LoRA's adapters) for comm's
 * layout; zero: ZeRO-1's reduce-scatter and shards, else all-reduce. */
void grad_sync_init(struct grad_sync *s, gale_comm *c, const struct model_layout *layout, int zero);
void grad_sync_free(struct grad_sync *s);

/* ZeRO-1: this rank's pieces ([n][2] flat ranges, ascending); returns n. */
int grad_sync_pieces(const struct grad_sync *s, size_t (**ranges)[2]);

/* A step's reduction of grads begins (none of its buckets started). */
void grad_sync_begin(struct grad_sync *s, float *grads);
/* The gradients of layout tensors [first, end) are final: starts the buckets that lie within
 * them. The backend's work on them must be done (model_set_grads_ready waits). */
void grad_sync_ready(struct grad_sync *s, int first, int end);
/* Starts the buckets not started yet and waits for all. Then grads holds the sums: everywhere,
 * or with ZeRO-1 in this rank's pieces only. */
void grad_sync_finish(struct grad_sync *s);
/* The squared norm of the whole model's summed gradient into *sumsq, after grad_sync_finish:
 * each rank squares its pieces on the device (opt's fp64 accumulator; with or without ZeRO-1
 * the same number either way), summed over the world. -1 with err on a device failure. */
int grad_sync_sumsq(struct grad_sync *s, struct adamw *opt, double *sumsq, gale_error *err);
/* ZeRO-1, after each rank updated its pieces of params (the fp32 master): every rank gets
 * every piece (MPI_Allgatherv per bucket). */
void grad_sync_gather_params(struct grad_sync *s, float *params);
/* ZeRO-1, for a checkpoint written by the data-parallel ranks in parts: part[d] (d < dp,
 * part[dp] = the layout's numel) where DP rank d's part begins, each a bucket's start and a
 * tensor's, at or after d / dp of the flat buffer. */
void grad_sync_parts(const struct grad_sync *s, size_t *part);
/* ZeRO-1: each bucket's moments go from the pieces (m_pieces, v_pieces: this rank's moments,
 * adamw's ranges in order, on the host) to the rank writing it (MPI_Gatherv over the bucket's
 * group): of DP rank d's part (part from grad_sync_parts), a dense bucket to EP rank 0 of
 * replica d, an expert bucket to DP rank d of this rank's experts. m and v receive this rank's
 * part, [part[dp_rank], part[dp_rank + 1]) of the flat buffer (a dense bucket's only at EP rank
 * 0). */
void grad_sync_collect_part(struct grad_sync *s, const size_t *part, const float *m_pieces, const float *v_pieces,
                            float *m, float *v);
#endif
