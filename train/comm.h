/* comm: the one place that owns the MPI communicators of a training run and the collectives
 * over them.
 *
 * World = dp x ep ranks. World rank w is expert-parallel rank w % ep of data-parallel replica
 * w / ep: the ep ranks of a replica (consecutive ranks, so on one node when ep divides the
 * ranks per node) split each MoE layer's experts into contiguous blocks and exchange routed
 * tokens (all-to-all); the dp ranks with the same EP rank hold the same experts and average
 * their gradients. Dense weights are replicated on every rank.
 *
 * Each collective adds the bytes this rank sends, and the time it spent in MPI, to per-kind
 * counters, so a step's communication can be reported (comm_bytes, comm_s).
 *
 * Errors: communicators use MPI_ERRORS_ARE_FATAL (Open MPI's default): a failed collective, or
 * a peer that died, aborts the whole job rather than returning into a half-done step. */
#ifndef GALE_TRAIN_COMM_H
#define GALE_TRAIN_COMM_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "util/error.h"

enum comm_group { COMM_WORLD_GROUP, COMM_EP_GROUP, COMM_DP_GROUP };

/* kinds of collective whose bytes are counted (appended: metrics.jsonl names them) */
enum comm_kind { COMM_ALLREDUCE, COMM_ALLTOALL, COMM_BROADCAST, COMM_REDUCE_SCATTER, COMM_ALLGATHER, COMM_KINDS };

typedef struct gale_comm {
    MPI_Comm world, ep, dp;
    int rank, size;           /* in the world */
    int ep_rank, ep_size;     /* in the expert-parallel group */
    int dp_rank, dp_size;     /* in the data-parallel group */
    int local_rank, local_size; /* ranks on this node: the device a rank drives is
                                   local_rank (a GPU backend takes it modulo its devices) */
    struct model_expert_exchange exchange; /* the EP group's all-to-all, for the model */
    uint64_t bytes[COMM_KINDS]; /* sent by this rank since comm_bytes_reset */
    double seconds[COMM_KINDS]; /* spent inside the MPI calls of each kind since then (waiting
                                   for slower ranks included) */
} gale_comm;

/* This process's rank in MPI_COMM_WORLD and the world's size: no communication, so callable
 * before the checks that must precede the first collective (comm_create's). */
void comm_world_position(int *rank, int *size);

/* Splits MPI_COMM_WORLD (after MPI_Init) into ep-sized expert-parallel groups. ep must divide
 * the world size and, when above 1, num_experts (the model's num_local_experts; 0 for a
 * dense model). key names the setting in messages, e.g. "run.yaml: parallel.ep". */
int comm_create(gale_comm *c, int ep, int num_experts, const char *key, gale_error *err);
void comm_free(gale_comm *c);

MPI_Comm comm_group(const gale_comm *c, enum comm_group g);
int comm_group_size(const gale_comm *c, enum comm_group g);

/* In-place sums over a group (floats in pieces: MPI counts are ints). */
void comm_sum_floats(gale_comm *c, enum comm_group g, float *x, size_t n);
void comm_sum_doubles(gale_comm *c, enum comm_group g, double *x, int n);
void comm_sum_int64(gale_comm *c, enum comm_group g, int64_t *x, int n);
int comm_max_int(gale_comm *c, enum comm_group g, int x);
void comm_bcast_floats(gale_comm *c, enum comm_group g, float *x, size_t n, int root);
void comm_bcast_int(gale_comm *c, enum comm_group g, int *x, int root);

/* The model's gradients (a flat buffer of layout's tensors, each already divided by the global
 * batch's target count) summed where they are replicated: dense tensors over the world,
 * experts' over the data-parallel group (the ranks holding the same experts). */
void comm_sum_gradients(gale_comm *c, const struct model_layout *layout, float *grads);
/* The squared norm of the whole model's gradient, after comm_sum_gradients: the dense part
 * once, every rank's experts once (summed over the expert-parallel group). */
double comm_grad_sumsq(gale_comm *c, const struct model_layout *layout,
                       struct gale_backend *be, const float *grads);

void comm_bytes_reset(gale_comm *c);
const char *comm_kind_name(enum comm_kind k);

/* Every rank's x (all: one per rank of the group, in rank order). */
void comm_allgather_u64(gale_comm *c, enum comm_group g, uint64_t x, uint64_t *all);

/* Root receives each rank's floats in rank order into all (counts[r] from rank r; counts and all
 * are root's only), the others send their n = counts[their rank] (point to point, in pieces: any
 * size). For state small enough to gather, e.g. LoRA adapters held by several ranks. */
void comm_gather_floats(gale_comm *c, enum comm_group g, const float *mine, size_t n, float *all,
                        const size_t *counts, int root);

/* Collective over the world: whether any rank failed (failed non-zero). Returns the lowest
 * failing rank, whose err->msg every rank then holds ("rank R: ..." on the others), or -1
 * when none failed. So a job whose one rank fails stops on every rank with that rank's
 * message, whichever rank's report ends the job. */
int comm_agree(gale_comm *c, int failed, gale_error *err);

#endif
