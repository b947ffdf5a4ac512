/* test_expert_parallel: expert parallelism against one rank. Run as `mpirun -np W
 * test_expert_parallel EP [recompute]` (tests/train/test_expert_parallel.sh: ep=2, ep=4,
 * dp=2 x ep=2, ep=8, ep=2 recomputing); alone, ctest runs it on one rank with ep=1 and
 * checks the refusals of bad layouts.
 *
 * Every rank trains a tiny Mixtral (8 experts, top-2) holding its block of experts, on its own
 * micro-batch of a global batch, for STEPS AdamW steps: tokens go to their experts and back
 * through the all-to-all, dense gradients are summed over the world and experts' over the
 * data-parallel group. Beside it, every rank trains the whole model on the whole global batch
 * by gradient accumulation. The losses of every step and the final weights of the rank's
 * tensors agree within 1e-5 relative (measured: losses <= 1.1e-9, weights <= 3.2e-7 of each
 * tensor's largest value).
 *
 * The weights' margin depends on each expert's products running source rank by source rank
 * (model/model.c, source_rows), as the reference runs them micro-batch by micro-batch. With one
 * product over every rank's rows, ep=2 gave 1.14e-5 in layer 1's expert 4 w2: one element's
 * gradient at step 1 was 8.6e-9, a sum of terms near 1e-4 that the two orders rounded 1.4e-11
 * apart; AdamW's first update is lr g / (|g| + eps) with eps = 1e-8, whose slope there,
 * eps / (|g| + eps)^2 = 2.9e7, made that 4.1e-7 of a weight whose tensor's largest is 3.7e-2.
 * The difference stayed 4.2e-7 to step 10: the later gradients (near 1e-4) agreed to 1e-5
 * relative, so no routing decision flipped, and the clip factor was 1 in both runs.
 *
 * Layer 0's router is biased so that experts 4..7 receive no token on any rank at step 1 (so
 * under ep=2 rank 1 receives nothing at all for that layer); their gradients must be exactly
 * zero although the model's buffers come from an allocator that fills them with NaN. */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu_backend.h"
#include "tiny_model.h"
#include "optim/adamw.h"
#include "train/comm.h"
#include "train/grad_sync.h"

#define STEPS 10
#define B 2
#define T 12
#define TOL 1e-5

/* 8 experts: every layout up to ep=8 splits them. */
static struct model_config tiny_mixtral(void)
{
    return tiny_model(41, 24, 2, 8, 0.02);
}

/* The CPU backend with an allocator that fills what it gives with NaN. */
static struct gale_ops poisoned_ops;
static const struct gale_ops *cpu_ops;

static void *poisoned_alloc(struct gale_backend *be, size_t bytes)
{
    void *p = cpu_ops->alloc(be, bytes);
    if (p)
        memset(p, 0xff, bytes);
    return p;
}

static struct gale_backend *poisoned_backend(void)
{
    struct gale_backend *cpu = cpu_backend();
    cpu_ops = cpu->ops;
    poisoned_ops = *cpu_ops;
    poisoned_ops.alloc = poisoned_alloc;
    struct gale_backend *be = malloc(sizeof *be);
    *be = *cpu;
    be->ops = &poisoned_ops;
    return be;
}

/* Micro-batch i of the global batch, the same at every step (so the loss falls) and whoever
 * computes it. */
static void micro_batch(int i, int32_t *tokens, int32_t *targets, int vocab)
{
    for (int j = 0; j < B * T; j++) {
        uint32_t h = (uint32_t)(i * 104729 + j * 31 + 7) * 2654435761u;
        tokens[j] = (int32_t)(h >> 7) % vocab;
        targets[j] = (int32_t)(h >> 13) % vocab;
    }
}

/* Layer 0 routes on hidden dimension 0 only: its MLP norm keeps dimension 0 and the router
 * sends positive values to experts 0 and 1, negative ones to 2 and 3. */
static void bias_router(struct model *m)
{
    const struct model_layout *layout = model_get_layout(m);
    const struct model_config *c = model_get_config(m);
    float *host = malloc(layout->numel * sizeof *host);
    model_params_download(m, host);
    const struct model_tensor *ln = model_layout_find(layout, "model.layers.0.post_attention_layernorm.weight");
    const struct model_tensor *gate = model_layout_find(layout, "model.layers.0.block_sparse_moe.gate.weight");
    for (int d = 0; d < c->hidden_size; d++)
        host[ln->offset + d] = d == 0;
    for (int e = 0; e < c->num_experts; e++)
        host[gate->offset + (size_t)e * c->hidden_size] = e < 2 ? 1.0f : e < 4 ? -1.0f : 0.0f;
    model_params_upload(m, host);
    free(host);
}

struct run {
    struct model *m;
    struct adamw opt;
    double loss[STEPS];
    int64_t dropped;   /* slots the capacity dropped in the last step */
};

static void start(struct run *r, struct gale_backend *be, const struct model_expert_exchange *x,
                  enum model_recompute recompute, double capacity)
{
    struct model_config cfg = tiny_mixtral();
    struct model_options opts = {.aux_form = MODEL_AUX_HF, .router_z_loss_coef = 1e-3, .exchange = x,
                                 .recompute = recompute, .capacity_factor = capacity};
    gale_error err;
    r->m = model_create(&cfg, be, &opts, &err);
    if (!r->m) {
        fprintf(stderr, "model_create: %s\n", err.msg);
        exit(1);
    }
    model_init_random(r->m, 0.02, 11);
    bias_router(r->m);
    struct adamw_config ac = adamw_config_default();
    /* the moments rely on the backend's zero-filled allocation: only the model's buffers are
     * poisoned */
    if (adamw_init(&r->opt, &ac, cpu_backend(), 0, model_get_layout(r->m)->numel, &err)) {
        fprintf(stderr, "adamw_init: %s\n", err.msg);
        exit(1);
    }
}

static void finish(struct run *r)
{
    adamw_free(&r->opt);
    model_free(r->m);
}

/* Test modes beyond the layout (argv[2...]). */
struct mode {
    enum model_recompute recompute; /* "recompute": the parallel run recomputes each layer's
                                       forward (and exchange) in the backward */
    int global;                     /* "global": aux_scope global in both runs */
    double capacity;                /* "capacity": a capacity factor of 1 in both runs */
    int zero;                       /* "zero": the parallel run reduce-scatters its gradient
                                       buckets and updates its ZeRO-1 pieces (train/grad_sync) */
    int overlap;                    /* "overlap": the parallel run starts each bucket's reduction
                                       as its backward finishes it, and a second parallel run
                                       reducing after the backward ends with the same bits */
};

/* The forward and backward of micro-batches [first, first + count) of the global batch of
 * world micro-batches. With global, first their routing (model_route), the expert counts
 * summed over the world's ranks (comm; NULL: this one holds the whole batch) and given to the
 * model as the global batch's. */
static double passes(struct run *r, int first, int count, int world, int global, gale_comm *comm)
{
    const struct model_config *c = model_get_config(r->m);
    int32_t tokens[B * T], targets[B * T];
    gale_error err;
    struct model_stats st;
    if (global) {
        model_stats_reset(r->m);
        for (int i = first; i < first + count; i++) {
            micro_batch(i, tokens, targets, c->vocab_size);
            struct model_batch mb = {.batch = B, .seq = T, .tokens = tokens, .targets = targets};
            CHECK_OK(model_route(r->m, &mb, &err), err);
        }
        CHECK_OK(model_stats_read(r->m, &st, &err), err);
        int le = c->num_layers * c->num_experts;
        int64_t counts[le];
        memcpy(counts, st.expert_load, sizeof counts);
        if (comm)
            comm_sum_int64(comm, COMM_WORLD_GROUP, counts, le);
        model_set_aux_counts(r->m, counts, (double)B * T * world);
    }
    model_zero_grads(r->m);
    model_stats_reset(r->m);
    for (int i = first; i < first + count; i++) {
        micro_batch(i, tokens, targets, c->vocab_size);
        struct model_batch mb = {.batch = B, .seq = T, .tokens = tokens, .targets = targets};
        if (model_forward_backward(r->m, &mb, (double)B * T * world, 1.0 / world, NULL, &err)) {
            fprintf(stderr, "forward_backward: %s\n", err.msg);
            exit(1);
        }
    }
    if (model_stats_read(r->m, &st, &err)) {
        fprintf(stderr, "stats: %s\n", err.msg);
        exit(1);
    }
    r->dropped = st.dropped;
    return st.ce_sum / ((double)B * T * world) + (c->router_aux_loss_coef * st.aux_sum + 1e-3 * st.z_sum) / world;
}

static void update(struct run *r, double sumsq);

static void on_grads_ready(void *ctx, int first, int end)
{
    grad_sync_ready(ctx, first, end);
}

/* A step of the parallel run through train/grad_sync (as gale train takes it): the buckets'
 * reductions started during the backward (overlap) or after it, ZeRO-1's pieces updated and
 * all-gathered. Returns the step's loss. */
static double synced_step(struct run *r, struct grad_sync *sync, gale_comm *comm, const struct mode *mode,
                          int overlap)
{
    grad_sync_begin(sync, model_grads(r->m));
    model_set_grads_ready(r->m, overlap ? on_grads_ready : NULL, sync);
    double loss = passes(r, comm->rank, 1, comm->size, mode->global, comm);
    model_set_grads_ready(r->m, NULL, NULL);
    grad_sync_finish(sync);
    double sumsq = 0;
    gale_error err;
    CHECK_OK(grad_sync_sumsq(sync, &r->opt, &sumsq, &err), err);
    update(r, sumsq);
    if (mode->zero)
        grad_sync_gather_params(sync, model_params(r->m));
    return loss;
}

/* The parallel run's optimizer: the whole layout, or under ZeRO-1 its pieces. */
static void shard_optimizer(struct run *r, struct grad_sync *sync)
{
    size_t(*pieces)[2];
    int n = grad_sync_pieces(sync, &pieces);
    struct adamw_config ac = adamw_config_default();
    gale_error err;
    adamw_free(&r->opt);
    CHECK_OK(adamw_init_ranges(&r->opt, &ac, cpu_backend(), (const size_t(*)[2])pieces, n, &err), err);
    free(pieces);
}

/* AdamW at lr 1e-3, clipped at norm 1 for the world's sum of squares sumsq. */
static void update(struct run *r, double sumsq)
{
    const struct model_layout *layout = model_get_layout(r->m);
    adamw_step_summed(&r->opt, layout, model_params(r->m), model_weights(r->m), model_grads(r->m), 1e-3, 1.0, sumsq);
}

/* The sum of squares of a one-rank run's whole gradient. */
static double whole_sumsq(struct run *r)
{
    const size_t all[1][2] = {{0, model_get_layout(r->m)->numel}};
    double sumsq = 0;
    gale_error err;
    CHECK_OK(adamw_grad_sumsq(&r->opt, model_grads(r->m), all, 1, &sumsq, &err), err);
    return sumsq;
}

/* At step 1 the experts that no rank routed a token to have exactly zero gradients (the buffer
 * came poisoned), and every gradient is finite. Returns how many such experts this rank
 * holds. */
static int check_idle_experts(struct run *r, int64_t *load)
{
    const struct model_layout *layout = model_get_layout(r->m);
    float *grads = malloc(layout->numel * sizeof *grads);
    model_grads_download(r->m, grads);
    int idle = 0;
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        int l, e;
        int finite = 1, zero = 1;
        for (size_t j = 0; j < t->numel; j++) {
            finite &= isfinite(grads[t->offset + j]);
            zero &= grads[t->offset + j] == 0.0f;
        }
        CHECK_MSG(finite, "%s: non-finite gradient", t->name);
        if (t->expert && sscanf(t->name, "model.layers.%d.block_sparse_moe.experts.%d.", &l, &e) == 2 &&
            load[l * 8 + e] == 0) {
            CHECK_MSG(zero, "%s: expert %d of layer %d got no token but its gradient is not zero", t->name, e, l);
            idle++;
        }
    }
    free(grads);
    return idle;
}

/* The largest difference of a's tensors from the same tensors of b (which may hold more),
 * relative to each tensor's largest value in b; its tensor's name in *name. */
static double weight_difference(struct run *a_run, struct run *b_run, const char **name)
{
    const struct model_layout *lay = model_get_layout(a_run->m), *ref_lay = model_get_layout(b_run->m);
    float *a = malloc(lay->numel * sizeof *a), *b = malloc(ref_lay->numel * sizeof *b);
    model_params_download(a_run->m, a);
    model_params_download(b_run->m, b);
    double worst = 0;
    *name = "";
    for (int i = 0; i < lay->n; i++) {
        const struct model_tensor *t = &lay->tensors[i], *u = model_layout_find(ref_lay, t->name);
        CHECK_MSG(u && u->numel == t->numel, "%s is not in the whole model", t->name);
        if (!u)
            continue;
        double scale = 0, diff = 0;
        for (size_t j = 0; j < t->numel; j++) {
            scale = fmax(scale, fabs(b[u->offset + j]));
            double d = fabs((double)a[t->offset + j] - b[u->offset + j]);
            diff = isnan(d) ? INFINITY : fmax(diff, d);  /* fmax would drop a NaN */
        }
        if (diff / scale > worst) {
            worst = diff / scale;
            *name = t->name;
        }
    }
    free(a);
    free(b);
    return worst;
}

/* The rank's tensors against the same tensors of the whole model. */
static void compare_weights(struct run *ep, struct run *ref, int rank)
{
    const char *worst_name;
    double worst = weight_difference(ep, ref, &worst_name);
    CHECK_MSG(worst <= TOL, "rank %d: weights differ from one rank's by %.2e relative (%s)", rank, worst, worst_name);
    printf("rank %d: %d tensors, largest relative weight difference %.2e%s%s\n", rank, model_get_layout(ep->m)->n,
           worst, worst > 0 ? " in " : "", worst_name);
}

static void check_refusals(void)
{
    gale_comm c;
    gale_error err;
    CHECK_ERROR(comm_create(&c, 2, 8, "run.yaml: parallel.ep", &err) != 0, err,
                "run.yaml: parallel.ep = 2 does not divide the 1 ranks");
    CHECK_ERROR(comm_create(&c, 0, 8, "run.yaml: parallel.ep", &err) != 0, err, "parallel.ep = 0: must be at least 1");
    struct model_config cfg = tiny_mixtral();
    struct model_expert_exchange three = {.size = 3, .rank = 0};
    struct model_options opts = {.exchange = &three};
    CHECK_ERROR(model_create(&cfg, cpu_backend(), &opts, &err) == NULL, err,
                "8 experts (num_local_experts) do not split over 3 expert-parallel ranks");
    struct model_plan plan;
    struct model_plan_layout pl = {.micro_batch = B, .seq_len = T, .compute = GALE_F32, .ep_size = 2, .ep_rank = 1};
    CHECK_OK(model_plan(&cfg, &pl, &plan, &err), err);
    struct model_layout half;
    model_layout_build_share(&cfg, 2, 1, &half);
    CHECK_MSG(plan.params == half.numel, "the plan holds %zu parameters, rank 1 of 2 holds %zu", plan.params,
              half.numel);
    CHECK(model_layout_find(&half, "model.layers.1.block_sparse_moe.experts.4.w2.weight") != NULL);
    CHECK(model_layout_find(&half, "model.layers.1.block_sparse_moe.experts.3.w2.weight") == NULL);
    model_layout_free(&half);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int ep = argc > 1 ? atoi(argv[1]) : 1;
    struct mode mode = {MODEL_RECOMPUTE_NONE, 0, 0, 0, 0};
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "recompute"))
            mode.recompute = MODEL_RECOMPUTE_LAYER;
        else if (!strcmp(argv[i], "global"))
            mode.global = 1;
        else if (!strcmp(argv[i], "capacity"))
            mode.capacity = 1.0;
        else if (!strcmp(argv[i], "zero"))
            mode.zero = 1;
        else if (!strcmp(argv[i], "overlap"))
            mode.overlap = 1;
        else {
            fprintf(stderr, "test_expert_parallel: unknown mode %s\n", argv[i]);
            return 2;
        }
    }
    gale_comm comm;
    gale_error err;
    if (comm_create(&comm, ep, 8, "test_expert_parallel EP", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (comm.size == 1)
        check_refusals();
    struct run par, ref, ref_mb;
    start(&par, poisoned_backend(), &comm.exchange, mode.recompute, mode.capacity);
    start(&ref, cpu_backend(), NULL, MODEL_RECOMPUTE_NONE, mode.capacity);
    /* under aux_scope global, rank 0 also trains one rank with the micro-batch scope: with more
     * than one micro-batch the scope must change the training */
    int contrast = mode.global && comm.rank == 0 && comm.size > 1;
    if (contrast)
        start(&ref_mb, cpu_backend(), NULL, MODEL_RECOMPUTE_NONE, mode.capacity);
    const struct model_layout *layout = model_get_layout(par.m);
    struct grad_sync sync, sync_after;
    struct run par_after; /* overlap: the same, reducing after the backward */
    int synced = mode.zero || mode.overlap;
    if (synced) {
        grad_sync_init(&sync, &comm, layout, mode.zero);
        if (mode.zero)
            shard_optimizer(&par, &sync);
    }
    if (mode.overlap) {
        start(&par_after, poisoned_backend(), &comm.exchange, mode.recompute, mode.capacity);
        grad_sync_init(&sync_after, &comm, layout, mode.zero);
        if (mode.zero)
            shard_optimizer(&par_after, &sync_after);
    }
    int idle = 0;
    for (int s = 0; s < STEPS; s++) {
        double sums[1];
        if (synced) {
            sums[0] = synced_step(&par, &sync, &comm, &mode, mode.overlap);
            if (mode.overlap)
                synced_step(&par_after, &sync_after, &comm, &mode, 0);
        } else {
            sums[0] = passes(&par, comm.rank, 1, comm.size, mode.global, &comm);
            comm_sum_gradients(&comm, layout, model_grads(par.m));
        }
        comm_sum_doubles(&comm, COMM_WORLD_GROUP, sums, 1);
        par.loss[s] = sums[0];
        if (s == 0) {
            struct model_stats st;
            model_stats_read(par.m, &st, &err);
            int64_t load[16];
            memcpy(load, st.expert_load, sizeof load);
            comm_sum_int64(&comm, COMM_WORLD_GROUP, load, 16);
            idle = check_idle_experts(&par, load);
        }
        if (!synced)
            update(&par, comm_grad_sumsq(&comm, layout, model_get_backend(par.m), model_grads(par.m)));
        ref.loss[s] = passes(&ref, 0, comm.size, comm.size, mode.global, NULL);
        update(&ref, whole_sumsq(&ref));
        if (contrast) {
            ref_mb.loss[s] = passes(&ref_mb, 0, comm.size, comm.size, 0, NULL);
            update(&ref_mb, whole_sumsq(&ref_mb));
        }
        if (mode.capacity) {
            /* every rank drops from its own micro-batch what one rank drops from it */
            int64_t dropped = par.dropped;
            comm_sum_int64(&comm, COMM_WORLD_GROUP, &dropped, 1);
            CHECK_MSG(dropped == ref.dropped, "step %d: %lld slots dropped on %d ranks, %lld on one", s + 1,
                      (long long)dropped, comm.size, (long long)ref.dropped);
            CHECK_MSG(ref.dropped > 0, "step %d: the capacity dropped nothing", s + 1);
            if (comm.rank == 0 && s == 0)
                printf("step 1: the capacity dropped %lld of %d slots\n", (long long)ref.dropped,
                       B * T * 2 * 2 * comm.size);
        }
        double rel = fabs(par.loss[s] - ref.loss[s]) / fabs(ref.loss[s]);
        CHECK_MSG(rel <= TOL, "step %d: loss %.8f on %d ranks (ep %d), %.8f on one: %.2e relative", s + 1,
                  par.loss[s], comm.size, ep, ref.loss[s], rel);
        if (comm.rank == 0)
            printf("step %2d: loss %.8f (ep %d x dp %d) %.8f (one rank), relative difference %.2e\n", s + 1,
                   par.loss[s], comm.ep_size, comm.dp_size, ref.loss[s], rel);
    }
    CHECK_MSG(ref.loss[STEPS - 1] < ref.loss[0], "the loss does not fall: %.6f -> %.6f", ref.loss[0],
              ref.loss[STEPS - 1]);
    /* layer 0 sends nothing to experts 4..7: the rank holding them (all of them: ep = 2) saw
     * idle experts, and every idle one had a zero gradient */
    int idle_anywhere = 0;
    MPI_Allreduce(&idle, &idle_anywhere, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    CHECK_MSG(idle_anywhere >= 4 * 3 * comm.dp_size, "only %d idle expert tensors at step 1", idle_anywhere);
    compare_weights(&par, &ref, comm.rank);
    if (mode.overlap) {
        size_t bytes = layout->numel * sizeof(float);
        float *a = malloc(bytes), *b = malloc(bytes);
        model_params_download(par.m, a);
        model_params_download(par_after.m, b);
        CHECK_MSG(memcmp(a, b, bytes) == 0, "rank %d: reducing during the backward ends with other weights than "
                                            "reducing after it", comm.rank);
        if (comm.rank == 0)
            printf("reductions during the backward and after it: the same weights to the bit\n");
        free(a);
        free(b);
        finish(&par_after);
        grad_sync_free(&sync_after);
    }
    if (synced)
        grad_sync_free(&sync);
    if (contrast) {
        const char *name;
        double apart = weight_difference(&ref, &ref_mb, &name);
        double loss_apart = fabs(ref.loss[0] - ref_mb.loss[0]) / fabs(ref_mb.loss[0]);
        printf("aux_scope global against micro_batch on one rank: step 1 losses %.2e apart, final weights %.2e "
               "(%s)\n", loss_apart, apart, name);
        CHECK_MSG(apart > 100 * TOL, "aux_scope global trains as micro_batch does: weights %.2e apart", apart);
        finish(&ref_mb);
    }
    finish(&par);
    finish(&ref);
    comm_free(&comm);
    int failed = failures;
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    int rc = check_report("test_expert_parallel");
    MPI_Finalize();
    return rc ? rc : failed ? 1 : 0;
}
