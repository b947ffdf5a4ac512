/* layout: the parameter tensors of a model, in Hugging Face names, packed into one buffer. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

static void add(struct model_layout *layout, int *cap, int64_t rows, int64_t cols,
                const char *fmt, ...)
{
    if (layout->n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        layout->tensors = gale_xrealloc(layout->tensors, (size_t)*cap * sizeof *layout->tensors);
    }
    struct model_tensor *t = &layout->tensors[layout->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->numel = (size_t)rows * (size_t)(cols ? cols : 1);
    t->offset = layout->numel;
    t->decay = t->ndim == 2;
    layout->numel += t->numel;
}

void model_layout_build(const struct model_config *cfg, struct model_layout *layout)
{
    model_layout_build_share(cfg, 1, 0, layout);
}

void model_layout_build_share(const struct model_config *cfg, int ep_size, int ep_rank,
                              struct model_layout *layout)
{
    memset(layout, 0, sizeof *layout);
    int cap = 0;
    int64_t h = cfg->hidden_size, inter = cfg->intermediate_size, hd = cfg->head_dim;
    add(layout, &cap, cfg->vocab_size, h, "model.embed_tokens.weight");
    for (int l = 0; l < cfg->num_layers; l++) {
        add(layout, &cap, h, 0, "model.layers.%d.input_layernorm.weight", l);
        add(layout, &cap, cfg->num_heads * hd, h, "model.layers.%d.self_attn.q_proj.weight", l);
        add(layout, &cap, cfg->num_kv_heads * hd, h, "model.layers.%d.self_attn.k_proj.weight", l);
        add(layout, &cap, cfg->num_kv_heads * hd, h, "model.layers.%d.self_attn.v_proj.weight", l);
        add(layout, &cap, h, cfg->num_heads * hd, "model.layers.%d.self_attn.o_proj.weight", l);
        add(layout, &cap, h, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        if (cfg->num_experts > 0) {
            add(layout, &cap, cfg->num_experts, h, "model.layers.%d.block_sparse_moe.gate.weight", l);
            int per_rank = cfg->num_experts / ep_size;
            for (int e = ep_rank * per_rank; e < (ep_rank + 1) * per_rank; e++) {
                add(layout, &cap, inter, h, "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", l, e);
                add(layout, &cap, h, inter, "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l, e);
                add(layout, &cap, inter, h, "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", l, e);
                layout->tensors[layout->n - 1].expert = layout->tensors[layout->n - 2].expert =
                    layout->tensors[layout->n - 3].expert = 1;
            }
        } else {
            add(layout, &cap, inter, h, "model.layers.%d.mlp.gate_proj.weight", l);
            add(layout, &cap, inter, h, "model.layers.%d.mlp.up_proj.weight", l);
            add(layout, &cap, h, inter, "model.layers.%d.mlp.down_proj.weight", l);
        }
    }
    add(layout, &cap, h, 0, "model.norm.weight");
    if (!cfg->tie_word_embeddings)
        add(layout, &cap, cfg->vocab_size, h, "lm_head.weight");
}

void model_layout_free(struct model_layout *layout)
{
    free(layout->tensors);
    memset(layout, 0, sizeof *layout);
}

const struct model_tensor *model_layout_find(const struct model_layout *layout, const char *name)
{
    for (int i = 0; i < layout->n; i++)
        if (!strcmp(layout->tensors[i].name, name))
            return &layout->tensors[i];
    return NULL;
}
