/* tiny_model.h: the small model shape the unit tests build (16 wide, 4 heads of 4 over 2 KV
 * heads), with the sizes each test varies given as arguments; experts 0 gives a Llama, else a
 * Mixtral routing to 2 of them. */
#ifndef GALE_TESTS_TINY_MODEL_H
#define GALE_TESTS_TINY_MODEL_H

#include "model/config.h"

static inline struct model_config tiny_model(int vocab, int ffn, int layers, int experts, double aux_coef)
{
    struct model_config c = {0};
    c.kind = experts ? MODEL_MIXTRAL : MODEL_LLAMA;
    c.vocab_size = vocab;
    c.hidden_size = 16;
    c.intermediate_size = ffn;
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
    c.router_aux_loss_coef = experts ? aux_coef : 0;
    return c;
}

#endif
