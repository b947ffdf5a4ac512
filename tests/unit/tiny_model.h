/* tiny_model: the small decoder the engine's unit tests train (16 hidden, 4 heads over 2 KV
 * heads, 24 intermediate), dense or with experts (top-2). */
#ifndef GALE_TESTS_UNIT_TINY_MODEL_H
#define GALE_TESTS_UNIT_TINY_MODEL_H

#include "model/config.h"

static inline struct model_config tiny_model(int experts, int layers)
{
    struct model_config c = {0};
    c.kind = experts ? MODEL_MIXTRAL : MODEL_LLAMA;
    c.vocab_size = 41;
    c.hidden_size = 16;
    c.intermediate_size = 24;
    c.num_layers = layers;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 4;
    c.rope_theta = 10000;
    c.rms_norm_eps = 1e-5;
    c.max_position_embeddings = 64;
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    c.initializer_range = 0.02;
    c.num_experts = experts;
    c.num_experts_per_tok = experts ? 2 : 0;
    c.router_aux_loss_coef = 0.02;
    return c;
}

#endif
