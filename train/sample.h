/* sample: text generation from a trained model: temperature and nucleus (top-p) sampling,
 * or greedy at temperature 0, stopping at EOS or after max_new tokens. The prompt is run once
 * into a KV cache (model_forward_next), then each new token alone: linear in length. */
#ifndef GALE_TRAIN_SAMPLE_H
#define GALE_TRAIN_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "util/error.h"
#include "util/vec.h"

typedef struct gale_sample_options {
    int max_new;        /* tokens to generate at most */
    double temperature; /* 0: greedy (argmax) */
    double top_p;       /* nucleus mass in (0, 1]; 1: the whole distribution */
    uint64_t seed;
    int eos_id;         /* stops generation when drawn (< 0: never) */
} gale_sample_options;

/* Wall time of a generation: the prompt's forward, and the draws and one-token forwards
 * after it (not the on_token callbacks). */
typedef struct gale_sample_stats {
    double prefill_s, generate_s;
} gale_sample_stats;

/* Called after each new token with every id generated so far. */
typedef void (*sample_token_fn)(const int32_t *generated, size_t n, void *ctx);

/* Appends the generated ids (the EOS included when drawn) to out; stops before passing the
 * model's max_position_embeddings. stats may be NULL. */
int sample_generate(struct model *m, const int32_t *prompt, size_t n_prompt, const gale_sample_options *opts,
                    gale_ids *out, sample_token_fn on_token, void *ctx, gale_sample_stats *stats,
                    gale_error *err);

/* The token drawn from logits[vocab] with a uniform number u in [0, 1): among the smallest
 * set of most probable tokens whose mass reaches top_p, at the given temperature, by
 * inverse CDF over that set renormalised. Temperature 0: the argmax (lowest id on ties). */
int32_t sample_pick(const float *logits, int vocab, double temperature, double top_p, double u);

#endif
