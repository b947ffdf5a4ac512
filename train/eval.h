/* eval: the loss and perplexity of a model over a split of prepared folders (one pass, in
 * order), as `gale train` reports every run.eval_every steps and `gale eval` prints; and
 * the view of a loader batch that the model takes, shared with the trainer. Loss here is
 * the cross-entropy only (no router losses): the mean over every target token of the pass,
 * over all data-parallel ranks. */
#ifndef GALE_TRAIN_EVAL_H
#define GALE_TRAIN_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "data/loader.h"
#include "model/model.h"
#include "util/error.h"

/* A model batch over a loader batch's arrays. segments (B*T int32s, caller owned) receives
 * the segment ids when doc_mask is on; off, the batch has no segments (one causal sequence
 * per row). */
void eval_model_batch(const gale_batch *b, int doc_mask, int32_t *segments, struct model_batch *out);

typedef struct gale_eval_options {
    const char *const *dirs;
    size_t n_dirs;
    const char *split;   /* "val" or "train" */
    int batch_rows;
    long max_batches;    /* 0: the whole split */
    int doc_mask;
    int rank, world;     /* world > 1: sums are all-reduced over MPI_COMM_WORLD */
    int skip_bad_shards; /* data.on_bad_shard: skip */
} gale_eval_options;

typedef struct gale_eval_result {
    double loss, ppl;
    int64_t n_targets;
    long batches;
} gale_eval_result;

int eval_split(struct model *m, const gale_eval_options *opts, gale_eval_result *out, gale_error *err);

#endif
