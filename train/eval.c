/* eval: one ordered pass of forward-only micro-batches, cross-entropy summed then divided. */
#include "train/eval.h"

#include <math.h>
#include <mpi.h>
#include <stdlib.h>

void eval_model_batch(const gale_batch *b, int doc_mask, int32_t *segments, struct model_batch *out)
{
    size_t n = (size_t)b->rows * b->seq_len;
    if (doc_mask)
        for (size_t i = 0; i < n; i++)
            segments[i] = b->segments[i];
    *out = (struct model_batch){
        .batch = b->rows,
        .seq = b->seq_len,
        .tokens = b->inputs,
        .targets = b->targets,
        .loss_mask = b->loss_mask,
        .segments = doc_mask ? segments : NULL,
    };
}

int eval_split(struct model *m, const gale_eval_options *o, gale_eval_result *out, gale_error *err)
{
    gale_loader_options lo = {
        .dirs = o->dirs,
        .n_dirs = o->n_dirs,
        .split = o->split,
        .batch_rows = o->batch_rows,
        .rank = o->rank,
        .world = o->world,
        .one_pass = 1,
        .prefetch = 1,
        .skip_bad_shards = o->skip_bad_shards,
    };
    gale_loader *l = loader_open(&lo, err);
    if (!l)
        return -1;
    if (loader_total_rows(l) == 0) {
        loader_close(l);
        return gale_fail(err, "no rows in the '%s' split of the data", o->split);
    }
    int seq = loader_seq_len(l);
    gale_batch b;
    batch_init(&b, o->batch_rows, seq);
    int32_t *segments = gale_xmalloc((size_t)o->batch_rows * seq * sizeof *segments);
    double sums[2] = {0, 0}; /* cross-entropy, targets */
    long batches = 0;
    int rc = 0, got;
    /* every rank takes the same number of one-pass batches, so the stop is collective */
    while ((o->max_batches == 0 || batches < o->max_batches) && (got = loader_next(l, &b, err)) != 0) {
        if (got < 0) {
            rc = -1;
            break;
        }
        struct model_batch mb;
        struct model_loss loss;
        eval_model_batch(&b, o->doc_mask, segments, &mb);
        if (model_loss(m, &mb, 0, &loss, err)) {
            rc = -1;
            break;
        }
        sums[0] += loss.ce_sum;
        sums[1] += (double)loss.n_targets;
        batches++;
    }
    free(segments);
    batch_free(&b);
    loader_close(l);
    if (rc)
        return -1;
    if (o->world > 1)
        MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    if (sums[1] == 0)
        return gale_fail(err, "the '%s' split has no target tokens in %ld batches", o->split, batches);
    out->loss = sums[0] / sums[1];
    out->ppl = exp(out->loss);
    out->n_targets = (int64_t)sums[1];
    out->batches = batches;
    return 0;
}
