/* model: the decoder's forward and backward, written once over the backend's ops table.
 *
 * A layer is  x_mid = x + o_proj(attention(rope(q), rope(k), v) of rmsnorm(x))
 *             x_out = x_mid + mlp(rmsnorm(x_mid))      (dense SwiGLU, or routed experts)
 * and the head is logits = lm_head(rmsnorm(x_L)). The forward keeps, per layer, what its
 * backward needs (inputs of each norm and product, rope'd q and k, attention's output and
 * log-sum-exp, the MLP's gate/up pre-activations, the router's choices); the SwiGLU products
 * and the experts' gathered inputs are recomputed in the backward. In the backward the head is
 * done in row chunks, so full logits are never held.
 *
 * Generation (model_forward_next) runs the same layer functions over one set of activations
 * reused by every layer, writes each layer's new keys and values into a KV cache instead, and
 * attends over the cached keys (ops->attention_cached_fwd); only the last token gets a head. */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rows of logits per chunk in the fused head + loss of the backward: about 32 MB of fp32. */
#define HEAD_CHUNK_FLOATS (8u << 20)

/* Order of a layer's tensors in the layout (model_layout_build). */
enum { W_LN1, W_Q, W_K, W_V, W_O, W_LN2, W_GATE, W_UP, W_DOWN };
enum { W_ROUTER = 6, W_EXPERT0 = 7 };  /* expert e: W_EXPERT0 + 3e + {0: w1, 1: w2, 2: w3} */

struct layer_acts {
    float *x_in, *h1, *rstd1, *q, *k, *v, *att, *lse, *x_mid, *h2, *rstd2;
    float *gate, *up;                   /* [rows, I]: dense, or [rows*k, I] per expert slot */
    float *probs, *rlse, *topk_w, *ye;  /* router (Mixtral) and expert outputs [rows*k, H] */
    int32_t *topk_idx, *slot_rows, *slot_of;
    int *counts;                        /* host: slots per expert */
};

struct model {
    struct model_config cfg;
    struct model_options opts;
    const struct gale_ops *ops;
    struct model_layout layout;
    int *layer_first;                   /* index in the layout of each layer's first tensor */
    float *params, *grads;

    /* activations for up to cap_rows tokens */
    int cap_rows, rows, batch, seq;
    struct layer_acts *acts;
    float *x_final, *hf, *rstd_f;
    float *logits;                      /* [rows, V] after model_forward */
    int32_t *tokens, *targets, *positions, *segments;
    int has_segments;

    /* backward scratch */
    float *dx, *dh, *datt, *dq, *dk, *dv, *tmp_a, *tmp_b, *tmp_c, *xe, *dxe, *dye, *dtopk_w;
    float *router_scratch, *dprobs_const, *head_chunk;
    float *host_probs, *host_rlse;      /* host copies for the aux and z losses */
};

static size_t fsz(size_t n)
{
    return n * sizeof(float);
}

static float *tensor_at(const struct model *m, float *base, int index)
{
    return base + m->layout.tensors[index].offset;
}

static float *layer_w(const struct model *m, float *base, int layer, int slot)
{
    return tensor_at(m, base, m->layer_first[layer] + slot);
}

static int embed_index(void)
{
    return 0;
}

static int final_norm_index(const struct model *m)
{
    return m->layout.n - (m->cfg.tie_word_embeddings ? 1 : 2);
}

static int lm_head_index(const struct model *m)
{
    return m->cfg.tie_word_embeddings ? embed_index() : m->layout.n - 1;
}

struct model *model_create(const struct model_config *cfg, const struct gale_ops *ops,
                           const struct model_options *opts, gale_error *err)
{
    if (model_config_validate(cfg, "model config", err))
        return NULL;
    struct model *m = gale_xcalloc(1, sizeof *m);
    m->cfg = *cfg;
    if (opts)
        m->opts = *opts;
    m->ops = ops;
    model_layout_build(cfg, &m->layout);
    m->layer_first = gale_xcalloc((size_t)cfg->num_layers, sizeof(int));
    int per_layer = cfg->num_experts > 0 ? W_EXPERT0 + 3 * cfg->num_experts : W_DOWN + 1;
    for (int l = 0; l < cfg->num_layers; l++)
        m->layer_first[l] = 1 + l * per_layer;
    m->params = ops->alloc(fsz(m->layout.numel));
    m->grads = ops->alloc(fsz(m->layout.numel));
    m->acts = gale_xcalloc((size_t)cfg->num_layers, sizeof *m->acts);
    return m;
}

static void free_buf(const struct gale_ops *ops, void *p)
{
    if (p)
        ops->free(p);
}

static void layer_acts_free(const struct gale_ops *ops, struct layer_acts *a)
{
    void *bufs[] = {a->x_in, a->h1, a->rstd1, a->q, a->k, a->v, a->att, a->lse, a->x_mid,
                    a->h2, a->rstd2, a->gate, a->up, a->probs, a->rlse, a->topk_w, a->ye,
                    a->topk_idx, a->slot_rows, a->slot_of};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        free_buf(ops, bufs[i]);
    free(a->counts);
    memset(a, 0, sizeof *a);
}

static void free_activations(struct model *m)
{
    const struct gale_ops *ops = m->ops;
    for (int l = 0; l < m->cfg.num_layers; l++)
        layer_acts_free(ops, &m->acts[l]);
    void *bufs[] = {m->x_final, m->hf, m->rstd_f, m->logits, m->tokens, m->targets, m->positions,
                    m->segments, m->dx, m->dh, m->datt, m->dq, m->dk, m->dv, m->tmp_a, m->tmp_b,
                    m->tmp_c, m->xe, m->dxe, m->dye, m->dtopk_w, m->router_scratch,
                    m->dprobs_const, m->head_chunk};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        free_buf(ops, bufs[i]);
    free(m->host_probs);
    free(m->host_rlse);
    m->x_final = m->hf = m->rstd_f = m->logits = NULL;
    m->tokens = m->targets = m->positions = m->segments = NULL;
    m->dx = m->dh = m->datt = m->dq = m->dk = m->dv = m->tmp_a = m->tmp_b = m->tmp_c = NULL;
    m->xe = m->dxe = m->dye = m->dtopk_w = m->router_scratch = m->dprobs_const = NULL;
    m->head_chunk = m->host_probs = m->host_rlse = NULL;
    m->cap_rows = 0;
}

void model_free(struct model *m)
{
    if (!m)
        return;
    free_activations(m);
    m->ops->free(m->params);
    m->ops->free(m->grads);
    free(m->acts);
    free(m->layer_first);
    model_layout_free(&m->layout);
    free(m);
}

const struct model_config *model_get_config(const struct model *m)
{
    return &m->cfg;
}

const struct model_layout *model_get_layout(const struct model *m)
{
    return &m->layout;
}

const struct gale_ops *model_get_ops(const struct model *m)
{
    return m->ops;
}

float *model_params(struct model *m)
{
    return m->params;
}

float *model_grads(struct model *m)
{
    return m->grads;
}

void model_params_download(struct model *m, float *host)
{
    m->ops->download(host, m->params, fsz(m->layout.numel));
}

void model_params_upload(struct model *m, const float *host)
{
    m->ops->upload(m->params, host, fsz(m->layout.numel));
}

void model_grads_download(struct model *m, float *host)
{
    m->ops->download(host, m->grads, fsz(m->layout.numel));
}

void model_zero_grads(struct model *m)
{
    m->ops->zero(m->grads, fsz(m->layout.numel));
}

/* Rows per head chunk for batches of up to `rows` tokens. */
static size_t head_chunk_rows(const struct model *m, size_t rows)
{
    size_t chunk = HEAD_CHUNK_FLOATS / (size_t)m->cfg.vocab_size;
    chunk = chunk ? chunk : 1;
    return chunk < rows ? chunk : rows;
}

/* Rows of the MLP's per-slot buffers for n tokens: one per token, or k per token (Mixtral). */
static size_t mlp_rows(const struct model_config *c, size_t n)
{
    return c->num_experts ? n * (size_t)c->num_experts_per_tok : n;
}

/* One layer's activations for n tokens. */
static void layer_acts_alloc(const struct gale_ops *ops, const struct model_config *c, size_t n,
                             struct layer_acts *a)
{
    size_t h = c->hidden_size, dq = (size_t)c->num_heads * c->head_dim;
    size_t dkv = (size_t)c->num_kv_heads * c->head_dim, inter = c->intermediate_size;
    size_t e = c->num_experts, k = c->num_experts_per_tok;
    a->x_in = ops->alloc(fsz(n * h));
    a->h1 = ops->alloc(fsz(n * h));
    a->rstd1 = ops->alloc(fsz(n));
    a->q = ops->alloc(fsz(n * dq));
    a->k = ops->alloc(fsz(n * dkv));
    a->v = ops->alloc(fsz(n * dkv));
    a->att = ops->alloc(fsz(n * dq));
    a->lse = ops->alloc(fsz(n * c->num_heads));
    a->x_mid = ops->alloc(fsz(n * h));
    a->h2 = ops->alloc(fsz(n * h));
    a->rstd2 = ops->alloc(fsz(n));
    a->gate = ops->alloc(fsz(mlp_rows(c, n) * inter));
    a->up = ops->alloc(fsz(mlp_rows(c, n) * inter));
    if (e) {
        a->probs = ops->alloc(fsz(n * e));
        a->rlse = ops->alloc(fsz(n));
        a->topk_w = ops->alloc(fsz(n * k));
        a->ye = ops->alloc(fsz(n * k * h));
        a->topk_idx = ops->alloc(n * k * sizeof(int32_t));
        a->slot_rows = ops->alloc(n * k * sizeof(int32_t));
        a->slot_of = ops->alloc(n * k * sizeof(int32_t));
        a->counts = gale_xcalloc(e, sizeof(int));
    }
}

/* Activations and scratch for `rows` tokens (kept when already large enough). */
static void reserve(struct model *m, int rows)
{
    if (rows <= m->cap_rows)
        return;
    free_activations(m);
    const struct gale_ops *ops = m->ops;
    const struct model_config *c = &m->cfg;
    size_t n = (size_t)rows, h = c->hidden_size, dq = (size_t)c->num_heads * c->head_dim;
    size_t dkv = (size_t)c->num_kv_heads * c->head_dim, inter = c->intermediate_size;
    size_t e = c->num_experts, k = c->num_experts_per_tok;
    size_t mlp_n = mlp_rows(c, n);
    for (int l = 0; l < c->num_layers; l++)
        layer_acts_alloc(ops, c, n, &m->acts[l]);
    m->x_final = ops->alloc(fsz(n * h));
    m->hf = ops->alloc(fsz(n * h));
    m->rstd_f = ops->alloc(fsz(n));
    m->tokens = ops->alloc(n * sizeof(int32_t));
    m->targets = ops->alloc(n * sizeof(int32_t));
    m->positions = ops->alloc(n * sizeof(int32_t));
    m->segments = ops->alloc(n * sizeof(int32_t));
    m->dx = ops->alloc(fsz(n * h));
    m->dh = ops->alloc(fsz(n * h));
    m->datt = ops->alloc(fsz(n * dq));
    m->dq = ops->alloc(fsz(n * dq));
    m->dk = ops->alloc(fsz(n * dkv));
    m->dv = ops->alloc(fsz(n * dkv));
    m->tmp_a = ops->alloc(fsz(mlp_n * inter));
    m->tmp_b = ops->alloc(fsz(mlp_n * inter));
    m->tmp_c = ops->alloc(fsz(mlp_n * inter));
    m->head_chunk = ops->alloc(fsz(head_chunk_rows(m, n) * (size_t)c->vocab_size));
    if (e) {
        m->xe = ops->alloc(fsz(n * k * h));
        m->dxe = ops->alloc(fsz(n * k * h));
        m->dye = ops->alloc(fsz(n * k * h));
        m->dtopk_w = ops->alloc(fsz(n * k));
        m->router_scratch = ops->alloc(fsz(n * e));
        m->dprobs_const = ops->alloc(fsz(e));
        m->host_probs = gale_xmalloc(fsz(n * e));
        m->host_rlse = gale_xmalloc(fsz(n));
    }
    m->cap_rows = rows;
}

/* Checks the batch and uploads tokens, positions, segments and targets (mask applied). */
static int upload_batch(struct model *m, const struct model_batch *b, gale_error *err)
{
    if (b->batch <= 0 || b->seq <= 0)
        return gale_fail(err, "batch of %d x %d tokens: both must be positive", b->batch, b->seq);
    if ((long long)b->batch * b->seq > 0x7fffffff)
        return gale_fail(err, "batch of %d x %d tokens is too large", b->batch, b->seq);
    int n = b->batch * b->seq, vocab = m->cfg.vocab_size;
    for (int i = 0; i < n; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= vocab)
            return gale_fail(err, "token %d at row %d position %d is outside the vocabulary "
                                  "(0..%d)", b->tokens[i], i / b->seq, i % b->seq, vocab - 1);
        if (b->targets && b->targets[i] >= vocab)
            return gale_fail(err, "target %d at row %d position %d is outside the vocabulary "
                                  "(0..%d)", b->targets[i], i / b->seq, i % b->seq, vocab - 1);
    }
    reserve(m, n);
    m->rows = n;
    m->batch = b->batch;
    m->seq = b->seq;
    int32_t *host = gale_xmalloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        int t = i % b->seq;
        int start = t == 0 || (b->segments && b->segments[i] != b->segments[i - 1]);
        host[i] = start ? 0 : host[i - 1] + 1;
    }
    m->ops->upload(m->positions, host, sizeof(int32_t) * (size_t)n);
    m->has_segments = b->segments != NULL;
    if (b->segments)
        m->ops->upload(m->segments, b->segments, sizeof(int32_t) * (size_t)n);
    m->ops->upload(m->tokens, b->tokens, sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++)
        host[i] = !b->targets || (b->loss_mask && !b->loss_mask[i]) || b->targets[i] < 0
                      ? -100
                      : b->targets[i];
    m->ops->upload(m->targets, host, sizeof(int32_t) * (size_t)n);
    free(host);
    return 0;
}

/* A layer's attention inputs for n tokens at `positions`: h1 = rmsnorm(x) and the rope'd
 * queries in a; the rope'd keys and the values into k_out and v_out ([n, kv_heads*hd]: the
 * layer's activations, or the next rows of a KV cache). */
static void qkv_forward(struct model *m, int l, struct layer_acts *a, int n, const float *x,
                        float *k_out, float *v_out, const int32_t *positions)
{
    const struct gale_ops *ops = m->ops;
    const struct model_config *c = &m->cfg;
    int h = c->hidden_size, dq = c->num_heads * c->head_dim;
    int dkv = c->num_kv_heads * c->head_dim;
    ops->rmsnorm_fwd(a->h1, a->rstd1, x, layer_w(m, m->params, l, W_LN1), n, h,
                     (float)c->rms_norm_eps);
    ops->matmul(0, 1, n, dq, h, 1, a->h1, h, layer_w(m, m->params, l, W_Q), h, 0, a->q, dq);
    ops->matmul(0, 1, n, dkv, h, 1, a->h1, h, layer_w(m, m->params, l, W_K), h, 0, k_out, dkv);
    ops->matmul(0, 1, n, dkv, h, 1, a->h1, h, layer_w(m, m->params, l, W_V), h, 0, v_out, dkv);
    ops->rope_fwd(a->q, positions, n, c->num_heads, c->head_dim, (float)c->rope_theta);
    ops->rope_fwd(k_out, positions, n, c->num_kv_heads, c->head_dim, (float)c->rope_theta);
}

/* x_mid = x + o_proj(att) over n tokens. */
static void attention_out_forward(struct model *m, int l, struct layer_acts *a, int n,
                                  const float *x)
{
    int h = m->cfg.hidden_size, dq = m->cfg.num_heads * m->cfg.head_dim;
    m->ops->copy(a->x_mid, x, fsz((size_t)n * h));
    m->ops->matmul(0, 1, n, h, dq, 1, a->att, dq, layer_w(m, m->params, l, W_O), dq, 1, a->x_mid,
                   h);
}

static void attention_forward(struct model *m, int l, const float *x)
{
    const struct model_config *c = &m->cfg;
    struct layer_acts *a = &m->acts[l];
    qkv_forward(m, l, a, m->rows, x, a->k, a->v, m->positions);
    m->ops->attention_fwd(a->att, a->lse, a->q, a->k, a->v, m->has_segments ? m->segments : NULL,
                          m->batch, m->seq, c->num_heads, c->num_kv_heads, c->head_dim,
                          c->sliding_window);
    attention_out_forward(m, l, a, m->rows, x);
}

/* Scratch that a layer's MLP forward shares with the other layers: the SwiGLU product
 * [mlp rows, I]; for Mixtral the router's logits [rows, E] and the experts' gathered inputs
 * [rows*k, H]. */
struct mlp_scratch {
    float *act, *router_logits, *xe;
};

static void dense_mlp_forward(struct model *m, int l, struct layer_acts *a, int n,
                              const struct mlp_scratch *s, float *out)
{
    const struct gale_ops *ops = m->ops;
    int h = m->cfg.hidden_size, inter = m->cfg.intermediate_size;
    ops->matmul(0, 1, n, inter, h, 1, a->h2, h, layer_w(m, m->params, l, W_GATE), h, 0, a->gate,
                inter);
    ops->matmul(0, 1, n, inter, h, 1, a->h2, h, layer_w(m, m->params, l, W_UP), h, 0, a->up, inter);
    ops->swiglu_fwd(s->act, a->gate, a->up, (size_t)n * inter);
    ops->copy(out, a->x_mid, fsz((size_t)n * h));
    ops->matmul(0, 1, n, h, inter, 1, s->act, inter, layer_w(m, m->params, l, W_DOWN), inter, 1,
                out, h);
}

static float *expert_w(const struct model *m, float *base, int l, int e, int which)
{
    return layer_w(m, base, l, W_EXPERT0 + 3 * e + which);
}

static void moe_forward(struct model *m, int l, struct layer_acts *a, int n,
                        const struct mlp_scratch *s, float *out)
{
    const struct gale_ops *ops = m->ops;
    const struct model_config *c = &m->cfg;
    int h = c->hidden_size, inter = c->intermediate_size;
    int ne = c->num_experts, k = c->num_experts_per_tok;
    ops->matmul(0, 1, n, ne, h, 1, a->h2, h, layer_w(m, m->params, l, W_ROUTER), h, 0,
                s->router_logits, ne);
    ops->router_fwd(a->probs, a->rlse, a->topk_idx, a->topk_w, s->router_logits, n, ne, k);
    ops->moe_plan(a->counts, a->slot_rows, a->slot_of, a->topk_idx, n, ne, k);
    ops->moe_gather(s->xe, a->h2, a->slot_rows, n * k, h);
    size_t off = 0;
    for (int e = 0; e < ne; e++) {
        int cnt = a->counts[e];
        ops->matmul(0, 1, cnt, inter, h, 1, s->xe + off * h, h, expert_w(m, m->params, l, e, 0), h,
                    0, a->gate + off * inter, inter);
        ops->matmul(0, 1, cnt, inter, h, 1, s->xe + off * h, h, expert_w(m, m->params, l, e, 2), h,
                    0, a->up + off * inter, inter);
        off += (size_t)cnt;
    }
    ops->swiglu_fwd(s->act, a->gate, a->up, (size_t)n * k * inter);
    off = 0;
    for (int e = 0; e < ne; e++) {
        int cnt = a->counts[e];
        ops->matmul(0, 1, cnt, h, inter, 1, s->act + off * inter, inter,
                    expert_w(m, m->params, l, e, 1), inter, 0, a->ye + off * h, h);
        off += (size_t)cnt;
    }
    ops->copy(out, a->x_mid, fsz((size_t)n * h));
    ops->moe_combine(out, a->ye, a->topk_w, a->slot_of, n, k, h);
}

/* out = x_mid + mlp(rmsnorm(x_mid)) over n tokens (out may be a->x_in). */
static void mlp_forward(struct model *m, int l, struct layer_acts *a, int n,
                        const struct mlp_scratch *s, float *out)
{
    const struct model_config *c = &m->cfg;
    m->ops->rmsnorm_fwd(a->h2, a->rstd2, a->x_mid, layer_w(m, m->params, l, W_LN2), n,
                        c->hidden_size, (float)c->rms_norm_eps);
    if (c->num_experts > 0)
        moe_forward(m, l, a, n, s, out);
    else
        dense_mlp_forward(m, l, a, n, s, out);
}

/* Embeddings through the final norm: m->hf holds the head's input afterwards. */
static void forward_trunk(struct model *m)
{
    const struct gale_ops *ops = m->ops;
    const struct model_config *c = &m->cfg;
    int n = m->rows, h = c->hidden_size;
    struct mlp_scratch scratch = {m->tmp_a, m->router_scratch, m->xe};
    ops->embedding_fwd(m->acts[0].x_in, tensor_at(m, m->params, embed_index()), m->tokens, n, h);
    for (int l = 0; l < c->num_layers; l++) {
        struct layer_acts *a = &m->acts[l];
        float *out = l + 1 < c->num_layers ? m->acts[l + 1].x_in : m->x_final;
        attention_forward(m, l, a->x_in);
        mlp_forward(m, l, a, n, &scratch, out);
    }
    ops->rmsnorm_fwd(m->hf, m->rstd_f, m->x_final, tensor_at(m, m->params, final_norm_index(m)),
                     n, h, (float)c->rms_norm_eps);
}

/* The router losses of the last forward, and (when grad_weight != 0) what their gradient
 * needs: for the hf form one per-expert constant shared by all layers, computed here. */
struct router_losses {
    double aux, z;
    double *layer_f;     /* [layers][E]: per-layer slot fractions (per_layer form) */
    double *pooled_f;    /* [E]: sum over k of f[k][e] pooled over layers (hf form) */
};

static void router_losses_compute(struct model *m, struct router_losses *rl)
{
    const struct model_config *c = &m->cfg;
    int n = m->rows, ne = c->num_experts, k = c->num_experts_per_tok, layers = c->num_layers;
    double rows_all = (double)n * layers;
    double *p_sum = gale_xcalloc((size_t)layers * ne, sizeof(double));
    rl->layer_f = gale_xcalloc((size_t)layers * ne, sizeof(double));
    rl->pooled_f = gale_xcalloc((size_t)ne, sizeof(double));
    rl->aux = rl->z = 0;
    double z_sum = 0;
    for (int l = 0; l < layers; l++) {
        struct layer_acts *a = &m->acts[l];
        m->ops->download(m->host_probs, a->probs, fsz((size_t)n * ne));
        m->ops->download(m->host_rlse, a->rlse, fsz((size_t)n));
        for (int r = 0; r < n; r++) {
            for (int e = 0; e < ne; e++)
                p_sum[(size_t)l * ne + e] += m->host_probs[(size_t)r * ne + e];
            z_sum += (double)m->host_rlse[r] * m->host_rlse[r];
        }
        for (int e = 0; e < ne; e++) {
            rl->layer_f[(size_t)l * ne + e] = a->counts[e] / ((double)n * k);
            rl->pooled_f[e] += a->counts[e] / rows_all;
        }
    }
    if (m->opts.aux_form == MODEL_AUX_PER_LAYER) {
        for (int l = 0; l < layers; l++)
            for (int e = 0; e < ne; e++)
                rl->aux += ne * rl->layer_f[(size_t)l * ne + e] * p_sum[(size_t)l * ne + e] / n;
        rl->aux /= layers;
    } else {
        for (int e = 0; e < ne; e++) {
            double p = 0;
            for (int l = 0; l < layers; l++)
                p += p_sum[(size_t)l * ne + e];
            rl->aux += ne * rl->pooled_f[e] * p / rows_all;
        }
    }
    rl->z = z_sum / rows_all;
    free(p_sum);
}

static void router_losses_free(struct router_losses *rl)
{
    free(rl->layer_f);
    free(rl->pooled_f);
}

static void fill_loss(const struct model *m, struct model_loss *out, double ce_sum, long count,
                      double denominator, const struct router_losses *rl)
{
    memset(out, 0, sizeof *out);
    out->ce_sum = ce_sum;
    out->n_targets = count;
    if (rl) {
        out->aux_loss = rl->aux;
        if (m->opts.router_z_loss_coef != 0)
            out->z_loss = rl->z;
    }
    out->loss = ce_sum / denominator + m->cfg.router_aux_loss_coef * out->aux_loss +
                m->opts.router_z_loss_coef * out->z_loss;
}

long model_batch_count_targets(const struct model_batch *b)
{
    if (!b->targets)
        return 0;
    long n = 0;
    for (long i = 0; i < (long)b->batch * b->seq; i++)
        n += b->targets[i] >= 0 && (!b->loss_mask || b->loss_mask[i]);
    return n;
}

static double resolve_denominator(const struct model_batch *b, double denominator)
{
    if (denominator > 0)
        return denominator;
    long n = model_batch_count_targets(b);
    return n > 0 ? (double)n : 1.0;
}

int model_forward(struct model *m, const struct model_batch *batch, double ce_denominator,
                  struct model_loss *out, gale_error *err)
{
    if (upload_batch(m, batch, err))
        return -1;
    const struct model_config *c = &m->cfg;
    int n = m->rows, h = c->hidden_size, vocab = c->vocab_size;
    if (!m->logits)
        m->logits = m->ops->alloc(fsz((size_t)m->cap_rows * vocab));
    forward_trunk(m);
    m->ops->matmul(0, 1, n, vocab, h, 1, m->hf, h, tensor_at(m, m->params, lm_head_index(m)), h, 0,
                   m->logits, vocab);
    long count = 0;
    double ce_sum = batch->targets ? m->ops->cross_entropy(m->logits, m->targets, n, vocab, 0, &count)
                                   : 0;
    struct router_losses rl = {0};
    if (c->num_experts > 0)
        router_losses_compute(m, &rl);
    if (out)
        fill_loss(m, out, ce_sum, count, resolve_denominator(batch, ce_denominator),
                  c->num_experts > 0 ? &rl : NULL);
    router_losses_free(&rl);
    return 0;
}

/* lm_head and cross-entropy in row chunks, leaving d(loss)/d(hf) in m->dh. */
static double head_forward_backward(struct model *m, double scale, long *count)
{
    const struct gale_ops *ops = m->ops;
    int n = m->rows, h = m->cfg.hidden_size, vocab = m->cfg.vocab_size;
    int chunk = (int)head_chunk_rows(m, (size_t)m->cap_rows);
    float *w = tensor_at(m, m->params, lm_head_index(m));
    float *dw = tensor_at(m, m->grads, lm_head_index(m));
    double total = 0;
    *count = 0;
    for (int r0 = 0; r0 < n; r0 += chunk) {
        int rows = n - r0 < chunk ? n - r0 : chunk;
        const float *x = m->hf + (size_t)r0 * h;
        ops->matmul(0, 1, rows, vocab, h, 1, x, h, w, h, 0, m->head_chunk, vocab);
        long c = 0;
        total += ops->cross_entropy(m->head_chunk, m->targets + r0, rows, vocab, (float)scale, &c);
        *count += c;
        ops->matmul(1, 0, vocab, h, rows, 1, m->head_chunk, vocab, x, h, 1, dw, h);
        ops->matmul(0, 0, rows, h, vocab, 1, m->head_chunk, vocab, w, h, 0, m->dh + (size_t)r0 * h,
                    h);
    }
    return total;
}

static void dense_mlp_backward(struct model *m, int l)
{
    const struct gale_ops *ops = m->ops;
    struct layer_acts *a = &m->acts[l];
    int n = m->rows, h = m->cfg.hidden_size, inter = m->cfg.intermediate_size;
    float *wg = layer_w(m, m->params, l, W_GATE), *wu = layer_w(m, m->params, l, W_UP);
    float *wd = layer_w(m, m->params, l, W_DOWN);
    ops->swiglu_fwd(m->tmp_a, a->gate, a->up, (size_t)n * inter);
    ops->matmul(1, 0, h, inter, n, 1, m->dx, h, m->tmp_a, inter, 1,
                layer_w(m, m->grads, l, W_DOWN), inter);
    ops->matmul(0, 0, n, inter, h, 1, m->dx, h, wd, inter, 0, m->tmp_b, inter);
    ops->swiglu_bwd(m->tmp_b, m->tmp_c, m->tmp_b, a->gate, a->up, (size_t)n * inter);
    ops->matmul(1, 0, inter, h, n, 1, m->tmp_b, inter, a->h2, h, 1,
                layer_w(m, m->grads, l, W_GATE), h);
    ops->matmul(1, 0, inter, h, n, 1, m->tmp_c, inter, a->h2, h, 1, layer_w(m, m->grads, l, W_UP),
                h);
    ops->matmul(0, 0, n, h, inter, 1, m->tmp_b, inter, wg, h, 0, m->dh, h);
    ops->matmul(0, 0, n, h, inter, 1, m->tmp_c, inter, wu, h, 1, m->dh, h);
}

/* Per-expert d(router losses)/d(probs) of layer l, and the z-loss scale. */
static float moe_router_loss_grads(struct model *m, int l, const struct router_losses *rl,
                                   double aux_weight)
{
    const struct model_config *c = &m->cfg;
    int ne = c->num_experts, layers = c->num_layers;
    double rows_all = (double)m->rows * layers;
    float *host = gale_xmalloc(fsz((size_t)ne));
    double coef = aux_weight * c->router_aux_loss_coef;
    for (int e = 0; e < ne; e++) {
        double f = m->opts.aux_form == MODEL_AUX_PER_LAYER ? rl->layer_f[(size_t)l * ne + e]
                                                           : rl->pooled_f[e];
        host[e] = (float)(coef * ne * f / rows_all);
    }
    m->ops->upload(m->dprobs_const, host, fsz((size_t)ne));
    free(host);
    return (float)(aux_weight * m->opts.router_z_loss_coef / rows_all);
}

static void moe_backward(struct model *m, int l, const struct router_losses *rl,
                         double aux_weight)
{
    const struct gale_ops *ops = m->ops;
    const struct model_config *c = &m->cfg;
    struct layer_acts *a = &m->acts[l];
    int n = m->rows, h = c->hidden_size, inter = c->intermediate_size;
    int ne = c->num_experts, k = c->num_experts_per_tok, slots = n * k;
    ops->moe_combine_bwd(m->dye, m->dtopk_w, m->dx, a->ye, a->topk_w, a->slot_of, n, k, h);
    ops->swiglu_fwd(m->tmp_a, a->gate, a->up, (size_t)slots * inter);
    ops->moe_gather(m->xe, a->h2, a->slot_rows, slots, h);
    size_t off = 0;
    for (int e = 0; e < ne; e++) {
        int cnt = a->counts[e];
        ops->matmul(1, 0, h, inter, cnt, 1, m->dye + off * h, h, m->tmp_a + off * inter, inter, 1,
                    expert_w(m, m->grads, l, e, 1), inter);
        ops->matmul(0, 0, cnt, inter, h, 1, m->dye + off * h, h, expert_w(m, m->params, l, e, 1),
                    inter, 0, m->tmp_b + off * inter, inter);
        off += (size_t)cnt;
    }
    ops->swiglu_bwd(m->tmp_b, m->tmp_c, m->tmp_b, a->gate, a->up, (size_t)slots * inter);
    off = 0;
    for (int e = 0; e < ne; e++) {
        int cnt = a->counts[e];
        const float *dg = m->tmp_b + off * inter, *du = m->tmp_c + off * inter;
        const float *xe = m->xe + off * h;
        ops->matmul(1, 0, inter, h, cnt, 1, dg, inter, xe, h, 1, expert_w(m, m->grads, l, e, 0), h);
        ops->matmul(1, 0, inter, h, cnt, 1, du, inter, xe, h, 1, expert_w(m, m->grads, l, e, 2), h);
        ops->matmul(0, 0, cnt, h, inter, 1, dg, inter, expert_w(m, m->params, l, e, 0), h, 0,
                    m->dxe + off * h, h);
        ops->matmul(0, 0, cnt, h, inter, 1, du, inter, expert_w(m, m->params, l, e, 2), h, 1,
                    m->dxe + off * h, h);
        off += (size_t)cnt;
    }
    ops->zero(m->dh, fsz((size_t)n * h));
    ops->moe_scatter_add(m->dh, m->dxe, a->slot_rows, slots, h);
    float z_scale = moe_router_loss_grads(m, l, rl, aux_weight);
    ops->router_bwd(m->router_scratch, m->dtopk_w, a->probs, a->rlse, a->topk_idx, a->topk_w,
                    m->dprobs_const, z_scale, n, ne, k);
    ops->matmul(1, 0, ne, h, n, 1, m->router_scratch, ne, a->h2, h, 1,
                layer_w(m, m->grads, l, W_ROUTER), h);
    ops->matmul(0, 0, n, h, ne, 1, m->router_scratch, ne, layer_w(m, m->params, l, W_ROUTER), h, 1,
                m->dh, h);
}

static void attention_backward(struct model *m, int l)
{
    const struct gale_ops *ops = m->ops;
    const struct model_config *c = &m->cfg;
    struct layer_acts *a = &m->acts[l];
    int n = m->rows, h = c->hidden_size, dq = c->num_heads * c->head_dim;
    int dkv = c->num_kv_heads * c->head_dim;
    ops->matmul(1, 0, h, dq, n, 1, m->dx, h, a->att, dq, 1, layer_w(m, m->grads, l, W_O), dq);
    ops->matmul(0, 0, n, dq, h, 1, m->dx, h, layer_w(m, m->params, l, W_O), dq, 0, m->datt, dq);
    ops->attention_bwd(m->dq, m->dk, m->dv, m->datt, a->att, a->lse, a->q, a->k, a->v,
                       m->has_segments ? m->segments : NULL, m->batch, m->seq, c->num_heads,
                       c->num_kv_heads, c->head_dim, c->sliding_window);
    ops->rope_bwd(m->dq, m->positions, n, c->num_heads, c->head_dim, (float)c->rope_theta);
    ops->rope_bwd(m->dk, m->positions, n, c->num_kv_heads, c->head_dim, (float)c->rope_theta);
    ops->matmul(1, 0, dq, h, n, 1, m->dq, dq, a->h1, h, 1, layer_w(m, m->grads, l, W_Q), h);
    ops->matmul(1, 0, dkv, h, n, 1, m->dk, dkv, a->h1, h, 1, layer_w(m, m->grads, l, W_K), h);
    ops->matmul(1, 0, dkv, h, n, 1, m->dv, dkv, a->h1, h, 1, layer_w(m, m->grads, l, W_V), h);
    ops->matmul(0, 0, n, h, dq, 1, m->dq, dq, layer_w(m, m->params, l, W_Q), h, 0, m->dh, h);
    ops->matmul(0, 0, n, h, dkv, 1, m->dk, dkv, layer_w(m, m->params, l, W_K), h, 1, m->dh, h);
    ops->matmul(0, 0, n, h, dkv, 1, m->dv, dkv, layer_w(m, m->params, l, W_V), h, 1, m->dh, h);
    ops->rmsnorm_bwd(m->dx, layer_w(m, m->grads, l, W_LN1), m->dh, a->x_in,
                     layer_w(m, m->params, l, W_LN1), a->rstd1, n, h);
}

int model_forward_backward(struct model *m, const struct model_batch *batch,
                           double ce_denominator, double aux_weight, struct model_loss *out,
                           gale_error *err)
{
    if (!batch->targets)
        return gale_fail(err, "a backward pass needs targets");
    if (upload_batch(m, batch, err))
        return -1;
    const struct gale_ops *ops = m->ops;
    const struct model_config *c = &m->cfg;
    int n = m->rows, h = c->hidden_size;
    double denominator = resolve_denominator(batch, ce_denominator);
    forward_trunk(m);
    struct router_losses rl = {0};
    if (c->num_experts > 0)
        router_losses_compute(m, &rl);
    long count = 0;
    double ce_sum = head_forward_backward(m, 1.0 / denominator, &count);
    ops->zero(m->dx, fsz((size_t)n * h));
    int fn = final_norm_index(m);
    ops->rmsnorm_bwd(m->dx, tensor_at(m, m->grads, fn), m->dh, m->x_final,
                     tensor_at(m, m->params, fn), m->rstd_f, n, h);
    for (int l = c->num_layers - 1; l >= 0; l--) {
        struct layer_acts *a = &m->acts[l];
        if (c->num_experts > 0)
            moe_backward(m, l, &rl, aux_weight);
        else
            dense_mlp_backward(m, l);
        ops->rmsnorm_bwd(m->dx, layer_w(m, m->grads, l, W_LN2), m->dh, a->x_mid,
                         layer_w(m, m->params, l, W_LN2), a->rstd2, n, h);
        attention_backward(m, l);
    }
    ops->embedding_bwd(tensor_at(m, m->grads, embed_index()), m->dx, m->tokens, n, h);
    if (out)
        fill_loss(m, out, ce_sum, count, denominator, c->num_experts > 0 ? &rl : NULL);
    router_losses_free(&rl);
    return 0;
}

void model_logits_download(struct model *m, float *host)
{
    m->ops->download(host, m->logits, fsz((size_t)m->rows * m->cfg.vocab_size));
}

void model_selected_experts_download(struct model *m, int32_t *host)
{
    size_t per_layer = (size_t)m->rows * m->cfg.num_experts_per_tok;
    for (int l = 0; l < m->cfg.num_layers; l++)
        m->ops->download(host + l * per_layer, m->acts[l].topk_idx, per_layer * sizeof(int32_t));
}

/* ---- generation: the incremental forward over a KV cache ---- */

/* Most tokens one pass of model_forward_next takes: bounds the activations a cache holds
 * (a longer prompt is run in chunks). */
#define KV_CHUNK_ROWS 256

struct model_kv_cache {
    const struct model *m;
    int max_len;                 /* most tokens of the sequence; 0: unlimited (sliding window) */
    int capacity;                /* key rows kept per layer */
    int chunk;                   /* most tokens per pass */
    int length;                  /* tokens of the sequence so far */
    int stored;                  /* keys held: those of the last `stored` tokens, in order */
    float *k, *v;                /* [layers][capacity][kv_heads * head_dim], rope'd keys */
    struct layer_acts acts;      /* one set for `chunk` tokens, reused by every layer */
    struct mlp_scratch scratch;
    float *hf, *rstd_f, *logits; /* the head over the last token */
    int32_t *tokens, *positions;
    int32_t *host_positions;
};

struct model_kv_cache *model_kv_cache_create(struct model *m, int max_len, gale_error *err)
{
    const struct model_config *c = &m->cfg;
    int window = c->sliding_window;
    if (max_len < 0 || (max_len == 0 && window <= 0)) {
        gale_fail(err, "KV cache of max_len %d: needs a positive length (0, unlimited, only for a "
                       "model with a sliding window)", max_len);
        return NULL;
    }
    struct model_kv_cache *kc = gale_xcalloc(1, sizeof *kc);
    const struct gale_ops *ops = m->ops;
    kc->m = m;
    kc->max_len = max_len;
    kc->chunk = max_len > 0 && max_len < KV_CHUNK_ROWS ? max_len : KV_CHUNK_ROWS;
    kc->capacity = max_len;
    if (window > 0) {
        /* the new queries of a pass see the W - 1 keys before them: 2(W - 1) + chunk rows let
         * make_room move those to the front without overlap */
        long long rolling = 2LL * (window - 1) + kc->chunk;
        if (max_len == 0 || rolling < max_len)
            kc->capacity = (int)rolling;
    }
    size_t dkv = (size_t)c->num_kv_heads * c->head_dim, n = (size_t)kc->chunk;
    size_t rows = (size_t)c->num_layers * kc->capacity;
    kc->k = ops->alloc(fsz(rows * dkv));
    kc->v = ops->alloc(fsz(rows * dkv));
    layer_acts_alloc(ops, c, n, &kc->acts);
    kc->scratch.act = ops->alloc(fsz(mlp_rows(c, n) * c->intermediate_size));
    if (c->num_experts > 0) {
        kc->scratch.router_logits = ops->alloc(fsz(n * c->num_experts));
        kc->scratch.xe = ops->alloc(fsz(n * c->num_experts_per_tok * c->hidden_size));
    }
    kc->hf = ops->alloc(fsz((size_t)c->hidden_size));
    kc->rstd_f = ops->alloc(fsz(1));
    kc->logits = ops->alloc(fsz((size_t)c->vocab_size));
    kc->tokens = ops->alloc(n * sizeof(int32_t));
    kc->positions = ops->alloc(n * sizeof(int32_t));
    kc->host_positions = gale_xmalloc(n * sizeof(int32_t));
    return kc;
}

void model_kv_cache_free(struct model_kv_cache *kc)
{
    if (!kc)
        return;
    const struct gale_ops *ops = kc->m->ops;
    layer_acts_free(ops, &kc->acts);
    void *bufs[] = {kc->k, kc->v, kc->scratch.act, kc->scratch.router_logits, kc->scratch.xe,
                    kc->hf, kc->rstd_f, kc->logits, kc->tokens, kc->positions};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        free_buf(ops, bufs[i]);
    free(kc->host_positions);
    free(kc);
}

int model_kv_cache_length(const struct model_kv_cache *kc)
{
    return kc->length;
}

void model_kv_cache_reset(struct model_kv_cache *kc)
{
    kc->length = kc->stored = 0;
}

static size_t kv_row_floats(const struct model *m)
{
    return (size_t)m->cfg.num_kv_heads * m->cfg.head_dim;
}

/* Layer l's key (or value) rows, from row `row` on. */
static float *kv_rows(const struct model *m, const struct model_kv_cache *kc, float *base, int l,
                      int row)
{
    return base + ((size_t)l * kc->capacity + row) * kv_row_floats(m);
}

/* Before n more keys: when they would not fit (only with a sliding window, max_len bounds the
 * rest), keeps just the last W - 1 keys, the oldest that the new queries can see. */
static void make_room(struct model *m, struct model_kv_cache *kc, int n)
{
    if (kc->stored + n <= kc->capacity)
        return;
    int keep = m->cfg.sliding_window - 1, from = kc->stored - keep;
    size_t bytes = fsz((size_t)keep * kv_row_floats(m));
    for (int l = 0; l < m->cfg.num_layers; l++) {
        m->ops->copy(kv_rows(m, kc, kc->k, l, 0), kv_rows(m, kc, kc->k, l, from), bytes);
        m->ops->copy(kv_rows(m, kc, kc->v, l, 0), kv_rows(m, kc, kc->v, l, from), bytes);
    }
    kc->stored = keep;
}

/* The next n <= chunk tokens through every layer: their keys and values join the cache and
 * acts.x_in holds the last layer's output. */
static void forward_next_chunk(struct model *m, struct model_kv_cache *kc, const int32_t *tokens,
                               int n)
{
    const struct gale_ops *ops = m->ops;
    const struct model_config *c = &m->cfg;
    struct layer_acts *a = &kc->acts;
    make_room(m, kc, n);
    for (int i = 0; i < n; i++)
        kc->host_positions[i] = kc->length + i;
    ops->upload(kc->positions, kc->host_positions, (size_t)n * sizeof(int32_t));
    ops->upload(kc->tokens, tokens, (size_t)n * sizeof(int32_t));
    ops->embedding_fwd(a->x_in, tensor_at(m, m->params, embed_index()), kc->tokens, n,
                       c->hidden_size);
    for (int l = 0; l < c->num_layers; l++) {
        float *k = kv_rows(m, kc, kc->k, l, 0), *v = kv_rows(m, kc, kc->v, l, 0);
        size_t next = (size_t)kc->stored * kv_row_floats(m);
        qkv_forward(m, l, a, n, a->x_in, k + next, v + next, kc->positions);
        ops->attention_cached_fwd(a->att, a->q, k, v, n, kc->stored + n, c->num_heads,
                                  c->num_kv_heads, c->head_dim, c->sliding_window);
        attention_out_forward(m, l, a, n, a->x_in);
        mlp_forward(m, l, a, n, &kc->scratch, a->x_in);
    }
    kc->stored += n;
    kc->length += n;
}

/* logits (host) = lm_head(rmsnorm(x)) of row `row` of the last chunk's output. */
static void head_of_row(struct model *m, struct model_kv_cache *kc, int row, float *logits)
{
    const struct model_config *c = &m->cfg;
    int h = c->hidden_size, vocab = c->vocab_size;
    m->ops->rmsnorm_fwd(kc->hf, kc->rstd_f, kc->acts.x_in + (size_t)row * h,
                        tensor_at(m, m->params, final_norm_index(m)), 1, h,
                        (float)c->rms_norm_eps);
    m->ops->matmul(0, 1, 1, vocab, h, 1, kc->hf, h, tensor_at(m, m->params, lm_head_index(m)), h,
                   0, kc->logits, vocab);
    m->ops->download(logits, kc->logits, fsz((size_t)vocab));
}

int model_forward_next(struct model *m, struct model_kv_cache *kc, const int32_t *tokens, int n,
                       float *logits, gale_error *err)
{
    if (kc->m != m)
        return gale_fail(err, "the KV cache was made for another model");
    if (n < 1)
        return gale_fail(err, "model_forward_next takes at least one token, got %d", n);
    int vocab = m->cfg.vocab_size;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab)
            return gale_fail(err, "token %d at position %d is outside the vocabulary (0..%d)",
                             tokens[i], kc->length + i, vocab - 1);
    int limit = kc->max_len > 0 ? kc->max_len : INT32_MAX;
    if (n > limit - kc->length)
        return gale_fail(err, "%d more tokens after %d would pass the KV cache's max_len of %d", n,
                         kc->length, limit);
    int rows = 0;
    for (int done = 0; done < n; done += rows) {
        rows = n - done < kc->chunk ? n - done : kc->chunk;
        forward_next_chunk(m, kc, tokens + done, rows);
    }
    if (logits)
        head_of_row(m, kc, rows - 1, logits);
    return 0;
}

void model_targets_from_labels(const int64_t *labels, int batch, int seq, int32_t *targets)
{
    for (int b = 0; b < batch; b++)
        for (int t = 0; t < seq; t++) {
            int64_t y = t + 1 < seq ? labels[(size_t)b * seq + t + 1] : -100;
            targets[(size_t)b * seq + t] = y < 0 ? -100 : (int32_t)y;
        }
}
