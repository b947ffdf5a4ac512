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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/lora.h"
#include "model/rng.h"

/* Rows of logits per chunk in the fused head + loss of the backward: about 128 MB of fp32. Each
 * chunk's products pack the whole lm_head weight again (OpenBLAS): at 32000 x 256, four chunks
 * of 262 rows took 8% more CPU in the head's three products than one of 1024 (45 ms a step). */
#define HEAD_CHUNK_FLOATS (32u << 20)

/* Int32 arrays of a micro-batch staged for upload (upload_batch): tokens, positions, targets,
 * segments, the valid rows and their targets. */
#define STAGED_ARRAYS 6

/* Order of a layer's tensors in the layout (model_layout_build). */
enum { W_LN1, W_Q, W_K, W_V, W_O, W_LN2, W_GATE, W_UP, W_DOWN };
enum { W_ROUTER = 6, W_EXPERT0 = 7 };  /* expert e: W_EXPERT0 + 3e + {0: w1, 1: w2, 2: w3} */

struct layer_acts {
    float *x_in, *h1, *rstd1, *q, *k, *v, *att, *lse, *x_mid, *h2, *rstd2;
    float *gate, *up;                   /* [rows, I]: dense, or [rows*k, I] per expert slot */
    float *probs, *rlse, *topk_w, *ye;  /* router (Mixtral) and expert outputs [rows*k, H] */
    int32_t *topk_idx, *slot_rows, *slot_of;
    int32_t *counts;                    /* device: slots per expert [E] */
    double *rstats;                     /* device: router_stats [E + 1] */
    float *lora_u;                      /* scratch: an adapter's x A^T [rows, r] */
    float *xr;                          /* expert parallelism: the rows received for the local
                                           experts, expert-major [ep*rows*k, H] */
};

/* Indices of the step statistics (device fp64, model_stats_read). */
enum { ST_CE_SUM, ST_TARGETS, ST_AUX, ST_Z, ST_COUNT };

struct model {
    struct model_config cfg;
    struct model_options opts;
    struct gale_backend *be;
    int owns_be;                        /* model_free frees be */
    const struct model_expert_exchange *x; /* expert parallelism; NULL: every expert is here */
    int ep;                             /* ranks the experts are split over (1: none) */
    struct model_layout layout;
    int *layer_first;                   /* index in the layout of each layer's first tensor */
    size_t w_bytes;                     /* bytes of a compute-dtype element on the device */
    float *params;                      /* fp32 master weights */
    float *weights;                     /* their compute copy; params itself in fp32 */
    float *grads;                       /* fp32; NULL when the base is frozen (LoRA) */

    /* LoRA (model/lora.h): adapters in their own layout and buffers */
    struct model_layout adapters;
    int *adapter_of;                    /* [layout.n]: the tensor's lora_A in adapters, or -1 */
    struct lora_config lora_cfg;
    int lora_rank;                      /* 0: none */
    float lora_scale;
    float lora_dropout;                 /* p of the adapters' input dropout in training passes */
    uint64_t dropout_seed;              /* the masks of the next training pass */
    int training;                       /* in model_forward_backward: dropout applies */
    float *lora_params, *lora_weights, *lora_grads;  /* fp32, compute copy (or params), fp32 */
    float *lora_u, *lora_du;            /* scratch [rows, r]: x A^T (the layers' too), dy B */
    float *lora_xd;                     /* scratch [rows, widest input]: the dropped-out input */

    /* activations and scratch for up to cap_rows tokens, carved from two arenas */
    void *act_arena, *scratch_arena;
    int cap_rows, rows, batch, seq;
    struct layer_acts *acts;
    float *x_final, *hf, *rstd_f;
    float *logits;                      /* [rows, V] after model_forward (own buffer) */
    int32_t *tokens, *targets, *positions, *segments;
    int has_segments;
    /* the rows with a target, ascending, and their targets: the head runs on these alone when
     * some are ignored (head_forward_backward) */
    int32_t *valid_rows, *valid_targets;
    int n_valid;
    int head_gathers;                   /* the backend runs moe_gather and moe_scatter_add */
    int head_all_rows;                  /* model_set_head_all_rows (tests) */
    float *dx, *dh, *datt, *dq, *dk, *dv, *tmp_a, *tmp_b, *tmp_c, *xe, *dxe, *dye, *dtopk_w;
    float *router_scratch, *head_chunk;
    float *dprobs_const;                /* [layers][E]: d(router losses)/d(probs) */
    double *router_coef;                /* [2][layers][E + 1]: weights of rstats for aux, z */
    double *rstats;                     /* [layers][E + 1]: each layer's router_stats */
    void *router_host;                  /* host staging of router_coef and dprobs_const */

    /* the step's statistics: device sums, host expert load (from the per-layer counts) */
    double *stats, *stats_host;
    int32_t *host_counts;               /* [layers][E] of the last forward: slots routed to each
                                           expert (what the aux loss counts) */
    int32_t *kept_counts;               /* [layers][E]: of those, the slots the experts run (a
                                           capacity drops the rest; else the same) */
    int64_t dropped;                    /* slots dropped by the capacity since model_stats_reset */
    int32_t *recv_counts;               /* [layers][ep][E/ep]: rows each rank sent each local
                                           expert (expert parallelism) */
    int32_t *local_counts;              /* [layers][E/ep]: rows each local expert runs */
    /* Expert parallelism: what the local experts' products need, sized by the rows they
     * receive (known only after the counts' exchange; dropless: up to every rank's slots).
     * Per layer (one for all under recomputation): gate, up and the received inputs, kept for
     * the backward; shared: tmp_a/b/c and, [rows, H], the received rows by source rank and the
     * expert-major results or gradients. Each grows to the most rows seen. */
    struct expert_store {
        void *base;
        size_t rows;
    } *expert_acts, expert_scratch;
    float *recv_rows, *yr;
    int64_t *load;                      /* [layers][E] summed since model_stats_reset */
    /* aux_scope global (model_set_aux_counts): the expert counts [layers][E] of the step's
     * whole global batch and its tokens, which the training passes' load-balancing loss uses
     * instead of each micro-batch's own; aux_tokens 0: micro-batch scope */
    int64_t *aux_counts;
    double aux_tokens;
    model_grads_ready_fn grads_ready;   /* model_set_grads_ready */
    void *grads_ready_ctx;
    int32_t *stage;                     /* host staging for batch uploads: 2 halves of
                                           STAGED_ARRAYS x rows */
    int stage_half;
    unsigned long stage_wait[2];        /* be->waits when each half was last uploaded from */
};

static size_t fsz(size_t n)
{
    return n * sizeof(float);
}

/* Compute-dtype buffers are indexed through the backend's element size: a bf16 device holds
 * 2 bytes per element behind the float * handle. */
static float *act_at(const struct model *m, const float *p, size_t elems)
{
    return (float *)((char *)p + elems * m->w_bytes);
}

static size_t wsz(const struct model *m, size_t n)
{
    return n * m->w_bytes;
}

static float *tensor_at(const struct model *m, float *base, int index)
{
    size_t offset = m->layout.tensors[index].offset;
    return base == m->weights ? act_at(m, base, offset) : base + offset;
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

/* The operand dtypes of the graph's products (B is always a compute-dtype weight or
 * activation): activations out, fp32 out (weight gradients, logits, router logits), and the
 * same with the fp32 logits' or router's gradient as A. */
static struct gale_gemm_types gemm_types(const struct model *m, int a_f32, int c_f32)
{
    enum gale_dtype w = m->be->compute;
    return (struct gale_gemm_types){a_f32 ? GALE_F32 : w, w, c_f32 ? GALE_F32 : w};
}

static struct gale_gemm_types act_types(const struct model *m)
{
    return gemm_types(m, 0, 0);
}

static struct gale_gemm_types to_f32_types(const struct model *m)
{
    return gemm_types(m, 0, 1);
}

static struct gale_gemm_types f32_to_f32_types(const struct model *m)
{
    return gemm_types(m, 1, 1);
}

static struct gale_gemm_types f32_to_act_types(const struct model *m)
{
    return gemm_types(m, 1, 0);
}

/* Buffers are carved from an arena at this alignment (a GPU's widest vector load). */
#define CARVE_ALIGN 256

/* Bump allocation in an arena; with a NULL base it only measures. */
struct carve {
    char *base;
    size_t used;
};

static void *take(struct carve *c, size_t bytes)
{
    size_t at = (c->used + CARVE_ALIGN - 1) / CARVE_ALIGN * CARVE_ALIGN;
    c->used = at + bytes;
    return c->base ? c->base + at : NULL;
}

/* Rows per head chunk for batches of up to `rows` tokens. */
static size_t head_chunk_rows(const struct model_config *c, size_t rows)
{
    size_t chunk = HEAD_CHUNK_FLOATS / (size_t)c->vocab_size;
    chunk = chunk ? chunk : 1;
    return chunk < rows ? chunk : rows;
}

/* Rows of the MLP's per-slot buffers for n tokens: one per token, or k per token (Mixtral). */
static size_t mlp_rows(const struct model_config *c, size_t n)
{
    return c->num_experts ? n * (size_t)c->num_experts_per_tok : n;
}

/* One layer's activations for n tokens; wb bytes per compute-dtype element. */
static void carve_layer(struct carve *cv, const struct model_config *c, size_t n, size_t wb,
                        int ep, struct layer_acts *a)
{
    size_t h = c->hidden_size, dq = (size_t)c->num_heads * c->head_dim;
    size_t dkv = (size_t)c->num_kv_heads * c->head_dim, inter = c->intermediate_size;
    size_t e = c->num_experts, k = c->num_experts_per_tok;
    a->x_in = take(cv, n * h * wb);
    a->h1 = take(cv, n * h * wb);
    a->rstd1 = take(cv, fsz(n));
    a->q = take(cv, n * dq * wb);
    a->k = take(cv, n * dkv * wb);
    a->v = take(cv, n * dkv * wb);
    a->att = take(cv, n * dq * wb);
    a->lse = take(cv, fsz(n * c->num_heads));
    a->x_mid = take(cv, n * h * wb);
    a->h2 = take(cv, n * h * wb);
    a->rstd2 = take(cv, fsz(n));
    if (ep == 1) {  /* else sized by the rows received: carve_expert_acts */
        a->gate = take(cv, mlp_rows(c, n) * inter * wb);
        a->up = take(cv, mlp_rows(c, n) * inter * wb);
    }
    if (e) {
        a->probs = take(cv, fsz(n * e));
        a->rlse = take(cv, fsz(n));
        a->topk_w = take(cv, fsz(n * k));
        a->ye = take(cv, n * k * h * wb);
        a->topk_idx = take(cv, n * k * sizeof(int32_t));
        a->slot_rows = take(cv, n * k * sizeof(int32_t));
        a->slot_of = take(cv, n * k * sizeof(int32_t));
        a->counts = take(cv, e * sizeof(int32_t));
    }
}

/* The activations kept for the backward (act) and the scratch (scr) of a training pass over
 * n tokens, carved into m's pointers; with NULL bases, only measured. */
static void carve_pass(struct model *m, size_t n, struct carve *act, struct carve *scr)
{
    const struct model_config *c = &m->cfg;
    size_t wb = m->w_bytes, h = c->hidden_size, dq = (size_t)c->num_heads * c->head_dim;
    size_t dkv = (size_t)c->num_kv_heads * c->head_dim, inter = c->intermediate_size;
    size_t e = c->num_experts, k = c->num_experts_per_tok, layers = c->num_layers;
    size_t mlp_n = mlp_rows(c, n);
    if (m->opts.recompute == MODEL_RECOMPUTE_LAYER) {
        /* each layer keeps its input; one set of the rest serves every layer, the forward's
         * and the backward's recomputation */
        struct layer_acts work;
        carve_layer(act, c, n, wb, m->ep, &work);
        for (size_t l = 0; l < layers; l++) {
            m->acts[l] = work;
            m->acts[l].x_in = l == 0 ? work.x_in : take(act, n * h * wb);
        }
    } else {
        for (size_t l = 0; l < layers; l++)
            carve_layer(act, c, n, wb, m->ep, &m->acts[l]);
    }
    m->x_final = take(act, n * h * wb);
    m->hf = take(act, n * h * wb);
    m->rstd_f = take(act, fsz(n));
    m->tokens = take(scr, n * sizeof(int32_t));
    m->targets = take(scr, n * sizeof(int32_t));
    m->positions = take(scr, n * sizeof(int32_t));
    m->segments = take(scr, n * sizeof(int32_t));
    m->valid_rows = take(scr, n * sizeof(int32_t));
    m->valid_targets = take(scr, n * sizeof(int32_t));
    m->dx = take(scr, n * h * wb);
    m->dh = take(scr, n * h * wb);
    m->datt = take(scr, n * dq * wb);
    m->dq = take(scr, n * dq * wb);
    m->dk = take(scr, n * dkv * wb);
    m->dv = take(scr, n * dkv * wb);
    if (m->ep == 1) {  /* else carve_expert_scratch */
        m->tmp_a = take(scr, mlp_n * inter * wb);
        m->tmp_b = take(scr, mlp_n * inter * wb);
        m->tmp_c = take(scr, mlp_n * inter * wb);
    }
    m->head_chunk = take(scr, fsz(head_chunk_rows(c, n) * (size_t)c->vocab_size));
    if (m->lora_rank) {
        /* an adapter's product has at most n rows (an expert's slots are fewer) */
        m->lora_u = take(scr, n * m->lora_rank * wb);
        m->lora_du = take(scr, n * m->lora_rank * wb);
        if (m->lora_dropout > 0) {
            size_t widest = h > inter ? h : inter;
            m->lora_xd = take(scr, n * (widest > dq ? widest : dq) * wb);
        }
        for (size_t l = 0; l < layers; l++)
            m->acts[l].lora_u = m->lora_u;
    }
    if (e) {
        m->xe = take(scr, n * k * h * wb);
        m->dxe = take(scr, n * k * h * wb);
        m->dye = take(scr, n * k * h * wb);
        m->dtopk_w = take(scr, fsz(n * k));
        m->router_scratch = take(scr, fsz(n * e));
        m->dprobs_const = take(scr, fsz(layers * e));
        m->router_coef = take(scr, 2 * layers * (e + 1) * sizeof(double));
        m->rstats = take(act, layers * (e + 1) * sizeof(double));
        for (size_t l = 0; l < layers; l++)
            m->acts[l].rstats = m->rstats ? m->rstats + l * (e + 1) : NULL;
    }
}

/* Under expert parallelism, a layer's expert activations for `rows` received rows. */
static void carve_expert_acts(struct carve *cv, const struct model *m, size_t rows,
                              struct layer_acts *a)
{
    size_t inter = m->cfg.intermediate_size, h = m->cfg.hidden_size;
    a->gate = take(cv, rows * inter * m->w_bytes);
    a->up = take(cv, rows * inter * m->w_bytes);
    a->xr = take(cv, rows * h * m->w_bytes);
}

/* ... and the scratch of their products. */
static void carve_expert_scratch(struct carve *cv, struct model *m, size_t rows)
{
    size_t inter = m->cfg.intermediate_size, h = m->cfg.hidden_size;
    m->tmp_a = take(cv, rows * inter * m->w_bytes);
    m->tmp_b = take(cv, rows * inter * m->w_bytes);
    m->tmp_c = take(cv, rows * inter * m->w_bytes);
    m->recv_rows = take(cv, rows * h * m->w_bytes);
    m->yr = take(cv, rows * h * m->w_bytes);
}

/* Expert stores kept: one per layer, or one for all under recomputation. */
static int expert_stores(const struct model *m)
{
    return m->opts.recompute == MODEL_RECOMPUTE_LAYER ? 1 : m->cfg.num_layers;
}

const char *model_plan_arena_name(enum model_plan_arena a)
{
    static const char *const names[PLAN_ARENAS] = {"weights (compute copy)", "master weights",
                                                   "gradients", "AdamW moments", "activations",
                                                   "scratch"};
    return a < PLAN_ARENAS ? names[a] : "?";
}

int model_plan(const struct model_config *cfg, const struct model_plan_layout *lay,
               struct model_plan *out, gale_error *err)
{
    memset(out, 0, sizeof *out);
    if (model_config_validate(cfg, "model config", err))
        return -1;
    int ne = cfg->num_experts, ep = lay->ep_size > 0 ? lay->ep_size : 1;
    if (lay->micro_batch <= 0 || lay->seq_len <= 0)
        return gale_fail(err, "memory plan: micro-batch %d x seq_len %d must be positive",
                         lay->micro_batch, lay->seq_len);
    if (ep > 1 && (ne == 0 || ne % ep))
        return gale_fail(err, "memory plan: %d experts do not split over %d expert-parallel "
                              "ranks", ne, ep);
    if (lay->ep_rank < 0 || lay->ep_rank >= ep)
        return gale_fail(err, "memory plan: expert-parallel rank %d outside 0..%d", lay->ep_rank,
                         ep - 1);
    struct model tmp = {0};
    tmp.cfg = *cfg;
    tmp.ep = ep;
    tmp.opts.recompute = lay->recompute;
    tmp.lora_rank = lay->lora ? lay->lora->rank : 0;
    tmp.lora_dropout = lay->lora ? (float)lay->lora->dropout : 0;
    tmp.w_bytes = lay->compute_bytes ? lay->compute_bytes : gale_dtype_size(lay->compute);
    tmp.acts = gale_xcalloc((size_t)cfg->num_layers, sizeof *tmp.acts);
    size_t rows = (size_t)lay->micro_batch * lay->seq_len;
    struct carve act = {0}, scr = {0};
    carve_pass(&tmp, rows, &act, &scr);
    free(tmp.acts);
    size_t expert_numel = 3 * (size_t)cfg->num_layers * ne * cfg->intermediate_size *
                          (size_t)cfg->hidden_size;
    /* the rank holds the dense weights and its contiguous block of E / ep experts per layer;
     * counted, not laid out: an absurd config (2^30 experts) is refused by its size, at once */
    size_t experts_held = expert_numel / ep;
    size_t numel = (size_t)model_config_num_params(cfg) - expert_numel + experts_held;
    size_t adapters = 0;
    if (lay->lora) {
        struct model_layout al;
        if (lora_layout_whole(cfg, lay->lora, &al, err))
            return -1;
        size_t expert_adapters = 0;
        for (int i = 0; i < al.n; i++)
            if (al.tensors[i].expert)
                expert_adapters += al.tensors[i].numel;
        adapters = al.numel - expert_adapters + expert_adapters / ep;
        model_layout_free(&al);
    }
    size_t dp = lay->dp_size > 1 ? (size_t)lay->dp_size : 1, world = dp * (size_t)ep;
    if (!lay->zero)
        dp = world = 1;
    /* full fine-tuning trains every weight from an fp32 master (the compute copy too unless
     * fp32); LoRA keeps the base frozen in the compute dtype only and trains the adapters */
    size_t trained = lay->lora ? adapters : numel;
    size_t copies = (lay->lora ? numel : 0) + (lay->compute == GALE_F32 ? 0 : trained);
    out->params = numel + (lay->lora ? adapters : 0);
    out->trained = trained;
    out->bytes[PLAN_WEIGHTS] = copies * tmp.w_bytes;
    out->bytes[PLAN_MASTER] = fsz(trained);
    out->bytes[PLAN_GRADS] = fsz(trained);
    /* ZeRO-1 (train/grad_sync.h): dense moments split over the world, experts' over the
     * data-parallel ranks holding them (LoRA's adapters are dense) */
    size_t expert_moments = lay->lora ? 0 : experts_held;
    out->bytes[PLAN_MOMENTS] = 2 * fsz((trained - expert_moments + world - 1) / world + (expert_moments + dp - 1) / dp);
    if (ep > 1) {  /* the expert stores at balanced routing: each rank receives what it sends */
        struct carve ea = {0}, es = {0};
        struct layer_acts unused;
        carve_expert_acts(&ea, &tmp, mlp_rows(cfg, rows), &unused);
        carve_expert_scratch(&es, &tmp, mlp_rows(cfg, rows));
        act.used += ea.used * expert_stores(&tmp);
        scr.used += es.used;
    }
    out->bytes[PLAN_ACTIVATIONS] = act.used;
    out->bytes[PLAN_SCRATCH] = scr.used + ST_COUNT * sizeof(double);
    for (int a = 0; a < PLAN_ARENAS; a++)
        out->total += out->bytes[a];
    return 0;
}

struct model *model_create(const struct model_config *cfg, struct gale_backend *be,
                           const struct model_options *opts, gale_error *err)
{
    if (model_config_validate(cfg, "model config", err))
        return NULL;
    const struct model_expert_exchange *x = opts ? opts->exchange : NULL;
    if (x && (x->size < 1 || x->rank < 0 || x->rank >= x->size)) {
        gale_fail(err, "expert-parallel rank %d outside 0..%d", x->rank, x->size - 1);
        return NULL;
    }
    if (x && x->size > 1 && (cfg->num_experts == 0 || cfg->num_experts % x->size)) {
        gale_fail(err, "%d experts (num_local_experts) do not split over %d expert-parallel "
                       "ranks", cfg->num_experts, x->size);
        return NULL;
    }
    const struct gale_ops *ops = be->ops;
    for (int op = 0; op < GALE_OP_COUNT; op++) {
        int needed = op == GALE_OP_DROPOUT ? opts && opts->lora && opts->lora->dropout > 0
                                           : cfg->num_experts > 0 || (op != GALE_OP_ROUTER && op != GALE_OP_MOE);
        if (needed && !ops->supports_op(be, (enum gale_op)op, be->compute)) {
            gale_fail(err, "backend %s does not run %s in %s", ops->name,
                      gale_op_name((enum gale_op)op), gale_dtype_name(be->compute));
            return NULL;
        }
    }
    struct model *m = gale_xcalloc(1, sizeof *m);
    m->cfg = *cfg;
    if (opts)
        m->opts = *opts;
    m->be = be;
    m->x = x && x->size > 1 ? x : NULL;
    m->ep = m->x ? x->size : 1;
    m->w_bytes = ops->dtype_bytes(be, be->compute);
    m->head_gathers = ops->supports_op(be, GALE_OP_MOE, be->compute);
    model_layout_build_share(cfg, m->ep, m->x ? x->rank : 0, &m->layout);
    m->layer_first = gale_xcalloc((size_t)cfg->num_layers, sizeof(int));
    int per_layer = cfg->num_experts > 0 ? W_EXPERT0 + 3 * cfg->num_experts / m->ep : W_DOWN + 1;
    for (int l = 0; l < cfg->num_layers; l++)
        m->layer_first[l] = 1 + l * per_layer;
    m->acts = gale_xcalloc((size_t)cfg->num_layers, sizeof *m->acts);
    size_t le = (size_t)cfg->num_layers * cfg->num_experts;
    m->host_counts = gale_xcalloc(le ? le : 1, sizeof *m->host_counts);
    m->kept_counts = gale_xcalloc(le ? le : 1, sizeof *m->kept_counts);
    m->load = gale_xcalloc(le ? le : 1, sizeof *m->load);
    m->aux_counts = gale_xcalloc(le ? le : 1, sizeof *m->aux_counts);
    m->recv_counts = gale_xcalloc(le ? le : 1, sizeof *m->recv_counts);
    m->local_counts = gale_xcalloc(le ? le : 1, sizeof *m->local_counts);
    int f32 = be->compute == GALE_F32;
    if (m->opts.lora) {
        m->adapter_of = gale_xcalloc((size_t)m->layout.n, sizeof *m->adapter_of);
        if (lora_layout_build(&m->layout, m->opts.lora, &m->adapters, m->adapter_of, err)) {
            model_free(m);
            return NULL;
        }
        m->lora_cfg = *m->opts.lora;
        m->lora_rank = m->opts.lora->rank;
        m->lora_scale = (float)lora_scale(m->opts.lora);
        m->lora_dropout = (float)m->opts.lora->dropout;
        m->opts.lora = NULL; /* the caller's; what it says is copied above */
        /* the frozen base: its compute copy only, no master, no gradients */
        m->weights = ops->alloc(be, wsz(m, m->layout.numel));
        m->params = f32 ? m->weights : NULL;
        m->lora_params = ops->alloc(be, fsz(m->adapters.numel));
        m->lora_weights = f32 ? m->lora_params : ops->alloc(be, wsz(m, m->adapters.numel));
        m->lora_grads = ops->alloc(be, fsz(m->adapters.numel));
    } else {
        m->params = ops->alloc(be, fsz(m->layout.numel));
        m->weights = f32 ? m->params : ops->alloc(be, wsz(m, m->layout.numel));
        m->grads = ops->alloc(be, fsz(m->layout.numel));
    }
    m->stats = ops->alloc(be, ST_COUNT * sizeof(double));
    m->stats_host = ops->host_alloc(be, ST_COUNT * sizeof(double));
    if (gale_backend_sync(be, err)) {
        gale_error_prefix(err, "model of %zu parameters", m->layout.numel);
        model_free(m);
        return NULL;
    }
    return m;
}

static void free_buf(struct gale_backend *be, void *p)
{
    if (p)
        be->ops->free(be, p);
}

static void free_activations(struct model *m)
{
    struct gale_backend *be = m->be;
    free_buf(be, m->act_arena);
    free_buf(be, m->scratch_arena);
    free_buf(be, m->logits);
    if (m->stage)
        be->ops->host_free(be, m->stage);
    if (m->router_host)
        be->ops->host_free(be, m->router_host);
    for (int i = 0; m->expert_acts && i < expert_stores(m); i++)
        free_buf(be, m->expert_acts[i].base);
    free(m->expert_acts);
    free_buf(be, m->expert_scratch.base);
    m->expert_acts = NULL;
    m->expert_scratch = (struct expert_store){0};
    m->act_arena = m->scratch_arena = m->logits = NULL;
    m->stage = m->router_host = NULL;
    m->cap_rows = 0;
}

void model_free(struct model *m)
{
    if (!m)
        return;
    free_activations(m);
    if (m->weights != m->params)
        free_buf(m->be, m->weights);
    free_buf(m->be, m->params);
    free_buf(m->be, m->grads);
    if (m->lora_weights != m->lora_params)
        free_buf(m->be, m->lora_weights);
    free_buf(m->be, m->lora_params);
    free_buf(m->be, m->lora_grads);
    free(m->adapter_of);
    model_layout_free(&m->adapters);
    free_buf(m->be, m->stats);
    if (m->stats_host)
        m->be->ops->host_free(m->be, m->stats_host);
    free(m->acts);
    free(m->host_counts);
    free(m->kept_counts);
    free(m->load);
    free(m->aux_counts);
    free(m->recv_counts);
    free(m->local_counts);
    free(m->layer_first);
    model_layout_free(&m->layout);
    if (m->owns_be)
        gale_backend_free(m->be);
    free(m);
}

void model_own_backend(struct model *m)
{
    m->owns_be = 1;
}

const struct model_config *model_get_config(const struct model *m)
{
    return &m->cfg;
}

const struct model_layout *model_get_layout(const struct model *m)
{
    return &m->layout;
}

struct gale_backend *model_get_backend(const struct model *m)
{
    return m->be;
}

float *model_params(struct model *m)
{
    return m->params;
}

float *model_weights(struct model *m)
{
    return m->weights == m->params ? NULL : m->weights;
}

void model_trainable(struct model *m, struct model_trainable *out)
{
    if (m->lora_rank)
        *out = (struct model_trainable){&m->adapters, m->lora_params,
                                        m->lora_weights == m->lora_params ? NULL : m->lora_weights,
                                        m->lora_grads};
    else
        *out = (struct model_trainable){&m->layout, m->params, model_weights(m), m->grads};
}

int model_has_lora(const struct model *m)
{
    return m->lora_rank > 0;
}

void model_lora_dropout_seed(struct model *m, uint64_t seed)
{
    m->dropout_seed = seed;
}

const struct lora_config *model_lora_config(const struct model *m)
{
    return m->lora_rank ? &m->lora_cfg : NULL;
}

void model_lora_upload(struct model *m, const float *host)
{
    struct gale_backend *be = m->be;
    be->ops->upload(be, m->lora_params, host, fsz(m->adapters.numel));
    if (m->lora_weights != m->lora_params)
        be->ops->convert(be, m->lora_weights, be->compute, m->lora_params, m->adapters.numel);
    gale_backend_wait(be);
}

void model_lora_init(struct model *m, uint64_t seed)
{
    float *host = gale_xmalloc(fsz(m->adapters.numel));
    lora_init_host(&m->adapters, host, seed);
    for (int i = 0; i < m->layout.n; i++) {
        const struct model_tensor *copy = m->adapter_of[i] >= 0 ? &m->adapters.tensors[m->adapter_of[i]] : NULL;
        if (copy && lora_is_copy(copy))
            model_params_download_range(m, m->layout.tensors[i].offset, host + copy->offset, copy->numel);
    }
    model_lora_upload(m, host);
    free(host);
}

void model_lora_download(struct model *m, float *host)
{
    m->be->ops->download(m->be, host, m->lora_params, fsz(m->adapters.numel));
    gale_backend_wait(m->be);
}

void model_lora_grads_download(struct model *m, float *host)
{
    m->be->ops->download(m->be, host, m->lora_grads, fsz(m->adapters.numel));
    gale_backend_wait(m->be);
}

float *model_grads(struct model *m)
{
    return m->grads;
}

void model_weights_refresh(struct model *m)
{
    if (m->params && m->weights != m->params)
        m->be->ops->convert(m->be, m->weights, m->be->compute, m->params, m->layout.numel);
    if (m->lora_weights != m->lora_params)
        m->be->ops->convert(m->be, m->lora_weights, m->be->compute, m->lora_params, m->adapters.numel);
}

void model_params_download_range(struct model *m, size_t offset, float *host, size_t n)
{
    /* a frozen base without a master: the compute copy (4-byte elements, see model.h) */
    m->be->ops->download(m->be, host, (m->params ? m->params : m->weights) + offset, fsz(n));
    gale_backend_wait(m->be);
}

void model_params_download(struct model *m, float *host)
{
    model_params_download_range(m, 0, host, m->layout.numel);
}

/* Elements per transfer when a frozen base's weights are converted on their way up. */
#define CONVERT_CHUNK ((size_t)1 << 24)

void model_params_upload_range(struct model *m, size_t offset, const float *host, size_t n)
{
    struct gale_backend *be = m->be;
    if (m->params) {
        be->ops->upload(be, m->params + offset, host, fsz(n));
    } else { /* no master: fp32 goes up through a staging buffer into the compute copy */
        size_t chunk = n < CONVERT_CHUNK ? n : CONVERT_CHUNK;
        float *stage = chunk ? be->ops->alloc(be, fsz(chunk)) : NULL;
        for (size_t at = 0; stage && at < n; at += chunk) {
            size_t k = n - at < chunk ? n - at : chunk;
            be->ops->upload(be, stage, host + at, fsz(k));
            be->ops->convert(be, act_at(m, m->weights, offset + at), be->compute, stage, k);
            gale_backend_wait(be);  /* before the host side of the next chunk is read */
        }
        free_buf(be, stage);
    }
    gale_backend_wait(be);
}

void model_params_upload(struct model *m, const float *host)
{
    model_params_upload_range(m, 0, host, m->layout.numel);
    if (m->params)
        model_weights_refresh(m);
    gale_backend_wait(m->be);
}

void model_grads_download(struct model *m, float *host)
{
    m->be->ops->download(m->be, host, m->grads, fsz(m->layout.numel));
    gale_backend_wait(m->be);
}

void model_zero_grads(struct model *m)
{
    struct model_trainable t;
    model_trainable(m, &t);
    m->be->ops->zero(m->be, t.grads, fsz(t.layout->numel));
}

/* Makes store hold `rows` rows of what carve measures, growing it (its old contents are not
 * needed: a layer's forward rewrites them) and carving m's pointers into it. */
static int grow_store(struct model *m, struct expert_store *store, size_t rows,
                      void (*carve)(struct carve *, struct model *, size_t, void *), void *arg)
{
    struct carve cv = {0};
    if (rows > store->rows || !store->base) {
        carve(&cv, m, rows, arg);
        free_buf(m->be, store->base);
        store->base = m->be->ops->alloc(m->be, cv.used);
        store->rows = store->base ? rows : 0;
        if (!store->base)
            return -1;
    }
    cv = (struct carve){store->base, 0};
    carve(&cv, m, store->rows, arg);
    return 0;
}

static void carve_acts_of(struct carve *cv, struct model *m, size_t rows, void *a)
{
    carve_expert_acts(cv, m, rows, a);
}

static void carve_scratch_of(struct carve *cv, struct model *m, size_t rows, void *unused)
{
    carve_expert_scratch(cv, m, rows);
}

/* Under expert parallelism: layer l's expert activations and the products' scratch hold
 * `rows` received rows. A rank that cannot allocate them cannot leave the collectives half
 * done: the exchange ends the job with the message. */
static void ensure_expert_rows(struct model *m, int l, size_t rows)
{
    int shared = m->opts.recompute == MODEL_RECOMPUTE_LAYER;
    struct expert_store *store = &m->expert_acts[shared ? 0 : l];
    if (grow_store(m, store, rows, carve_acts_of, &m->acts[l]) ||
        grow_store(m, &m->expert_scratch, rows, carve_scratch_of, NULL)) {
        char msg[256];
        snprintf(msg, sizeof msg, "layer %d: no device memory for the %zu rows the rank's experts "
                                  "received", l, rows);
        m->x->abort(m->x->ctx, msg);
    }
}

/* Activations and scratch for `rows` tokens (kept when already large enough): two arenas. */
static int reserve(struct model *m, int rows, gale_error *err)
{
    if (rows <= m->cap_rows)
        return 0;
    free_activations(m);
    struct gale_backend *be = m->be;
    struct carve act = {0}, scr = {0};
    carve_pass(m, (size_t)rows, &act, &scr);
    act.base = be->ops->alloc(be, act.used);
    scr.base = be->ops->alloc(be, scr.used);
    m->stage = be->ops->host_alloc(be, 2 * STAGED_ARRAYS * (size_t)rows * sizeof(int32_t));
    size_t le = (size_t)m->cfg.num_layers * m->cfg.num_experts;
    if (le)
        m->router_host = be->ops->host_alloc(be, 2 * (le + m->cfg.num_layers) * sizeof(double) +
                                                     fsz(le));
    m->act_arena = act.base;
    m->scratch_arena = scr.base;
    if (gale_backend_sync(be, err)) {
        free_activations(m);
        gale_error_prefix(err, "activations for %d tokens", rows);
        return -1;
    }
    act.used = scr.used = 0;
    carve_pass(m, (size_t)rows, &act, &scr);
    m->cap_rows = rows;
    if (m->ep > 1) {  /* sized for balanced routing; they grow when a layer receives more */
        m->expert_acts = gale_xcalloc((size_t)expert_stores(m), sizeof *m->expert_acts);
        for (int l = 0; l < m->cfg.num_layers; l++)
            ensure_expert_rows(m, l, mlp_rows(&m->cfg, (size_t)rows));
    }
    return 0;
}

/* Checks the batch and uploads tokens, positions, segments and targets (mask applied), and
 * when some targets are ignored, the rows with one and their targets (compacted). The
 * uploads are asynchronous: they go through one half of the host staging buffer, the other
 * half from the micro-batch before, so a backend with a copy engine can overlap the upload
 * with that micro-batch's work. */
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
    if (reserve(m, n, err))
        return -1;
    m->rows = n;
    m->batch = b->batch;
    m->seq = b->seq;
    struct gale_backend *be = m->be;
    size_t bytes = sizeof(int32_t) * (size_t)n;
    m->stage_half ^= 1;
    if (m->stage_wait[m->stage_half] == be->waits)
        gale_backend_wait(be);  /* the half's last uploads may still read it */
    m->stage_wait[m->stage_half] = be->waits;
    int32_t *tokens = m->stage + (size_t)m->stage_half * STAGED_ARRAYS * m->cap_rows;
    int32_t *positions = tokens + n, *targets = positions + n, *segments = targets + n;
    int32_t *valid_rows = segments + n, *valid_targets = valid_rows + n;
    memcpy(tokens, b->tokens, bytes);
    m->n_valid = 0;
    for (int i = 0; i < n; i++) {
        int t = i % b->seq;
        int start = t == 0 || (b->segments && b->segments[i] != b->segments[i - 1]);
        positions[i] = start ? 0 : positions[i - 1] + 1;
        targets[i] = !b->targets || (b->loss_mask && !b->loss_mask[i]) || b->targets[i] < 0
                         ? -100
                         : b->targets[i];
        if (targets[i] >= 0) {
            valid_rows[m->n_valid] = i;
            valid_targets[m->n_valid++] = targets[i];
        }
    }
    be->ops->upload(be, m->tokens, tokens, bytes);
    be->ops->upload(be, m->positions, positions, bytes);
    be->ops->upload(be, m->targets, targets, bytes);
    if (m->n_valid > 0 && m->n_valid < n) {
        size_t valid_bytes = sizeof(int32_t) * (size_t)m->n_valid;
        be->ops->upload(be, m->valid_rows, valid_rows, valid_bytes);
        be->ops->upload(be, m->valid_targets, valid_targets, valid_bytes);
    }
    m->has_segments = b->segments != NULL;
    if (b->segments) {
        memcpy(segments, b->segments, bytes);
        be->ops->upload(be, m->segments, segments, bytes);
    }
    return 0;
}

static float *adapter_at(const struct model *m, float *base, int index)
{
    size_t offset = m->adapters.tensors[index].offset;
    return base == m->lora_weights ? act_at(m, base, offset) : base + offset;
}

/* In a training pass with dropout, the adapter's input dropout(x) in lora_xd: its mask a function
 * of the pass's seed and the projection, so the backward (and a recomputation) draws it again. */
static int dropping(const struct model *m)
{
    return m->training && m->lora_dropout > 0;
}

static uint64_t mask_seed(const struct model *m, int index)
{
    return gale_rng_bits(m->dropout_seed, (uint64_t)index);
}

static const float *adapter_input(struct model *m, int index, int rows, int nin, const float *x)
{
    if (!dropping(m))
        return x;
    m->be->ops->dropout(m->be, m->lora_xd, x, (size_t)rows * nin, m->lora_dropout, mask_seed(m, index), 0);
    return m->lora_xd;
}

/* out = beta * out + x W^T for the projection at `index` of the layout, over `rows` rows of x
 * [rows, in]; with an adapter, out += s * (x A^T) B^T through u [rows, r]. */
static void linear_fwd(struct model *m, int index, int rows, const float *x, float beta,
                       float *out, float *u)
{
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    const struct model_tensor *t = &m->layout.tensors[index];
    int nout = (int)t->shape[0], nin = (int)t->shape[1], r = m->lora_rank;
    ops->matmul(be, 0, 1, rows, nout, nin, 1, x, nin, tensor_at(m, m->weights, index), nin, beta,
                out, nout, act_types(m));
    int ad = m->adapter_of ? m->adapter_of[index] : -1;
    if (ad < 0 || rows == 0)
        return;
    x = adapter_input(m, index, rows, nin, x);
    ops->matmul(be, 0, 1, rows, r, nin, 1, x, nin, adapter_at(m, m->lora_weights, ad), nin, 0, u,
                r, act_types(m));
    ops->matmul(be, 0, 1, rows, nout, r, m->lora_scale, u, r,
                adapter_at(m, m->lora_weights, ad + 1), r, 1, out, nout, act_types(m));
}

/* The backward of linear_fwd from dy [rows, out]: dx = beta * dx + dy W plus the adapter's
 * s * (dy B) A; W's gradient unless the base is frozen, and the adapter's:
 * dB += s * dy^T (x A^T), dA += s * (dy B)^T x. */
static void linear_bwd(struct model *m, int index, int rows, const float *x, const float *dy,
                       float beta, float *dx)
{
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    const struct model_tensor *t = &m->layout.tensors[index];
    int nout = (int)t->shape[0], nin = (int)t->shape[1], r = m->lora_rank;
    if (m->grads)
        ops->matmul(be, 1, 0, nout, nin, rows, 1, dy, nout, x, nin, 1,
                    tensor_at(m, m->grads, index), nin, to_f32_types(m));
    ops->matmul(be, 0, 0, rows, nin, nout, 1, dy, nout, tensor_at(m, m->weights, index), nin, beta,
                dx, nin, act_types(m));
    int ad = m->adapter_of ? m->adapter_of[index] : -1;
    if (ad < 0 || rows == 0)
        return;
    float *u = m->lora_u, *du = m->lora_du;
    const float *a = adapter_at(m, m->lora_weights, ad), *b = adapter_at(m, m->lora_weights, ad + 1);
    x = adapter_input(m, index, rows, nin, x);
    ops->matmul(be, 0, 1, rows, r, nin, 1, x, nin, a, nin, 0, u, r, act_types(m));
    ops->matmul(be, 1, 0, nout, r, rows, m->lora_scale, dy, nout, u, r, 1,
                adapter_at(m, m->lora_grads, ad + 1), r, to_f32_types(m));
    ops->matmul(be, 0, 0, rows, r, nout, m->lora_scale, dy, nout, b, r, 0, du, r, act_types(m));
    ops->matmul(be, 1, 0, r, nin, rows, 1, du, r, x, nin, 1, adapter_at(m, m->lora_grads, ad), nin,
                to_f32_types(m));
    if (!dropping(m)) {
        ops->matmul(be, 0, 0, rows, nin, r, 1, du, r, a, nin, 1, dx, nin, act_types(m));
        return;
    }
    /* through the dropout: the same mask on (du A), added to dx */
    ops->matmul(be, 0, 0, rows, nin, r, 1, du, r, a, nin, 0, m->lora_xd, nin, act_types(m));
    ops->dropout(be, dx, m->lora_xd, (size_t)rows * nin, m->lora_dropout, mask_seed(m, index), 1);
}

/* Layer l's gradient of the tensor in `slot`, NULL when the base is frozen. */
static float *grads_w(struct model *m, int l, int slot)
{
    return m->grads ? layer_w(m, m->grads, l, slot) : NULL;
}

static int layer_index(const struct model *m, int layer, int slot)
{
    return m->layer_first[layer] + slot;
}

/* Layer l's router weights: the trained copy under lora.train_router, else the base's. */
static float *router_w(struct model *m, int l)
{
    int ad = m->adapter_of ? m->adapter_of[layer_index(m, l, W_ROUTER)] : -1;
    return ad >= 0 ? adapter_at(m, m->lora_weights, ad) : layer_w(m, m->weights, l, W_ROUTER);
}

/* Its gradient: the trained copy's, else the base's; NULL when the router is frozen (LoRA). */
static float *router_grad(struct model *m, int l)
{
    int ad = m->adapter_of ? m->adapter_of[layer_index(m, l, W_ROUTER)] : -1;
    return ad >= 0 ? adapter_at(m, m->lora_grads, ad) : grads_w(m, l, W_ROUTER);
}

/* A layer's attention inputs for n tokens at `positions`: h1 = rmsnorm(x) and the rope'd
 * queries in a; the rope'd keys and the values into k_out and v_out ([n, kv_heads*hd]: the
 * layer's activations, or the next rows of a KV cache). */
static void qkv_forward(struct model *m, int l, struct layer_acts *a, int n, const float *x,
                        float *k_out, float *v_out, const int32_t *positions)
{
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    const struct model_config *c = &m->cfg;
    ops->rmsnorm_fwd(be, a->h1, a->rstd1, x, layer_w(m, m->weights, l, W_LN1), n, c->hidden_size,
                     (float)c->rms_norm_eps);
    linear_fwd(m, layer_index(m, l, W_Q), n, a->h1, 0, a->q, a->lora_u);
    linear_fwd(m, layer_index(m, l, W_K), n, a->h1, 0, k_out, a->lora_u);
    linear_fwd(m, layer_index(m, l, W_V), n, a->h1, 0, v_out, a->lora_u);
    ops->rope_fwd(be, a->q, positions, n, c->num_heads, c->head_dim, (float)c->rope_theta);
    ops->rope_fwd(be, k_out, positions, n, c->num_kv_heads, c->head_dim, (float)c->rope_theta);
}

/* x_mid = x + o_proj(att) over n tokens. */
static void attention_out_forward(struct model *m, int l, struct layer_acts *a, int n,
                                  const float *x)
{
    int h = m->cfg.hidden_size;
    m->be->ops->copy(m->be, a->x_mid, x, wsz(m, (size_t)n * h));
    linear_fwd(m, layer_index(m, l, W_O), n, a->att, 1, a->x_mid, a->lora_u);
}

static void attention_forward(struct model *m, int l, const float *x)
{
    const struct model_config *c = &m->cfg;
    struct layer_acts *a = &m->acts[l];
    qkv_forward(m, l, a, m->rows, x, a->k, a->v, m->positions);
    m->be->ops->attention_fwd(m->be, a->att, a->lse, a->q, a->k, a->v,
                              m->has_segments ? m->segments : NULL, m->batch, m->seq, c->num_heads,
                              c->num_kv_heads, c->head_dim, c->sliding_window);
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
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    int h = m->cfg.hidden_size, inter = m->cfg.intermediate_size;
    linear_fwd(m, layer_index(m, l, W_GATE), n, a->h2, 0, a->gate, a->lora_u);
    linear_fwd(m, layer_index(m, l, W_UP), n, a->h2, 0, a->up, a->lora_u);
    ops->swiglu_fwd(be, s->act, a->gate, a->up, (size_t)n * inter);
    ops->copy(be, out, a->x_mid, wsz(m, (size_t)n * h));
    linear_fwd(m, layer_index(m, l, W_DOWN), n, s->act, 1, out, a->lora_u);
}

/* Local expert e's weight (0: w1, 1: w2, 2: w3): e counts the rank's own block from 0. */
static int expert_index(const struct model *m, int l, int e, int which)
{
    return layer_index(m, l, W_EXPERT0 + 3 * e + which);
}

/* Experts held by this rank, per layer. */
static int local_experts(const struct model *m)
{
    return m->cfg.num_experts / m->ep;
}

/* The rows each local expert of layer l runs: all of the rank's own slots of that expert, or
 * under expert parallelism what every rank sent it. */
static const int32_t *local_counts(const struct model *m, int l)
{
    return m->ep > 1 ? m->local_counts + (size_t)l * local_experts(m)
                     : m->kept_counts + (size_t)l * m->cfg.num_experts;
}

static int rows_of(const int32_t *counts, int n)
{
    int total = 0;
    for (int i = 0; i < n; i++)
        total += counts[i];
    return total;
}

/* Rows of layer l's local expert e that came from EP rank r (its own rows without expert
 * parallelism). An expert's products run source by source, each over one rank's micro-batch
 * rows, as one rank accumulating the same micro-batches runs them: its weight gradient then
 * sums the micro-batches' products in that rank's order, and each row's outputs come from
 * the same BLAS kernel (a product's per-row rounding depends on its row count: a single row
 * goes through gemv, tile edges through other kernels). One product over every rank's rows
 * rounds differently, and AdamW turns that into weight differences far above rounding where a
 * gradient element is as small as its own rounding error: g / (sqrt(v) + eps) at step 1 is
 * g / (|g| + eps), which for |g| near eps = 1e-8 moves by 3e7 x the error in g
 * (tests/unit/test_expert_parallel.c measured 1.1e-5 of a tensor's largest weight from one
 * element whose gradient, 8.6e-9, had summed terms of 1e-4). The cost: E/ep x ep products
 * per layer instead of E/ep, each over about tokens x top-k / E rows. */
static int source_rows(const struct model *m, int l, int e, int r)
{
    int ne = m->cfg.num_experts, per = local_experts(m);
    return m->ep > 1 ? m->recv_counts[(size_t)l * ne + (size_t)r * per + e] : local_counts(m, l)[e];
}

/* Rows of layer l this rank sends to each EP rank (its slots of that rank's experts, which
 * moe_plan's expert order keeps contiguous) and receives from each. */
static void exchange_sizes(const struct model *m, int l, int *send_rows, int *recv_rows)
{
    int ne = m->cfg.num_experts, per = local_experts(m);
    for (int r = 0; r < m->ep; r++) {
        send_rows[r] = rows_of(m->kept_counts + (size_t)l * ne + (size_t)r * per, per);
        recv_rows[r] = rows_of(m->recv_counts + (size_t)l * ne + (size_t)r * per, per);
    }
}

/* Received rows come by source rank, then local expert; the experts' products want them
 * expert-major. to_experts: src by source -> dst by expert; else the reverse. */
static void permute_received(struct model *m, int l, float *dst, const float *src, int to_experts)
{
    int ne = m->cfg.num_experts, ep = m->ep, per = local_experts(m);
    const int32_t *recv = m->recv_counts + (size_t)l * ne;  /* [source][local expert] */
    size_t row = wsz(m, m->cfg.hidden_size), by_expert = 0;
    for (int e = 0; e < per; e++) {
        for (int r = 0; r < ep; r++) {
            size_t by_source = 0;
            for (int i = 0; i < r * per + e; i++)
                by_source += (size_t)recv[i];
            size_t cnt = (size_t)recv[r * per + e];
            size_t h = m->cfg.hidden_size;
            const float *from = act_at(m, src, (to_experts ? by_source : by_expert) * h);
            float *to = act_at(m, dst, (to_experts ? by_expert : by_source) * h);
            if (cnt)
                m->be->ops->copy(m->be, to, from, cnt * row);
            by_expert += cnt;
        }
    }
}

/* Sends rows [slots, H] grouped by destination (from) to the ranks that hold their experts,
 * or, with back, the experts' rows home again; to receives them. */
static void exchange_rows(struct model *m, int l, const float *from, float *to, int back)
{
    int send_rows[m->ep], recv_rows[m->ep];
    exchange_sizes(m, l, send_rows, recv_rows);
    gale_backend_wait(m->be);  /* the rows are written by queued work */
    m->x->rows(m->x->ctx, from, back ? recv_rows : send_rows, to, back ? send_rows : recv_rows,
               wsz(m, m->cfg.hidden_size));
}

/* The slots each expert of a micro-batch of n tokens takes at most under moe.capacity_factor
 * (in training passes; 0: all of them). */
static int expert_capacity(const struct model *m, int n)
{
    const struct model_config *c = &m->cfg;
    if (!m->training || m->opts.capacity_factor <= 0)
        return INT32_MAX;
    return (int)ceil(m->opts.capacity_factor * n * c->num_experts_per_tok / c->num_experts);
}

/* Under a capacity: each expert keeps its first `cap` slots in moe_plan's order (token order)
 * and the slots are reordered so that the kept ones stay grouped by expert, in front, and the
 * dropped ones follow (their expert outputs are zero: they add nothing to their token and get
 * no gradient). kept_counts says how many each expert runs. The slot arrays travel to the host
 * and back only when something is dropped. */
static void drop_overflow(struct model *m, int l, struct layer_acts *a, int n)
{
    struct gale_backend *be = m->be;
    int ne = m->cfg.num_experts, slots = n * m->cfg.num_experts_per_tok, cap = expert_capacity(m, n);
    const int32_t *counts = m->host_counts + (size_t)l * ne;
    int32_t *kept = m->kept_counts + (size_t)l * ne;
    int overflow = 0;
    for (int e = 0; e < ne; e++) {
        kept[e] = counts[e] < cap ? counts[e] : cap;
        overflow |= kept[e] < counts[e];
    }
    if (!overflow)
        return;
    /* host: the old slot_rows and slot_of, then each old position's new one, the new slot_of */
    int32_t *rows = gale_xmalloc(4 * (size_t)slots * sizeof *rows);
    int32_t *of = rows + slots, *moved = of + slots, *new_of = moved + slots;
    be->ops->download(be, rows, a->slot_rows, (size_t)slots * sizeof *rows);
    be->ops->download(be, of, a->slot_of, (size_t)slots * sizeof *of);
    gale_backend_wait(be);
    int front = 0, tail = rows_of(kept, ne), at = 0;
    for (int e = 0; e < ne; e++)
        for (int j = 0; j < counts[e]; j++, at++)
            moved[at] = j < kept[e] ? front++ : tail++;
    for (int r = 0; r < slots; r++)
        new_of[r] = moved[of[r]];
    for (int p = 0; p < slots; p++)
        of[moved[p]] = rows[p];  /* of becomes the new slot_rows */
    be->ops->upload(be, a->slot_rows, of, (size_t)slots * sizeof *of);
    be->ops->upload(be, a->slot_of, new_of, (size_t)slots * sizeof *new_of);
    gale_backend_wait(be);
    free(rows);
}

/* Slots of layer l's micro-batch that its experts run (all of them unless a capacity dropped
 * some): the dropped ones follow them in the slot order. */
static int kept_slots(const struct model *m, int l)
{
    return rows_of(m->kept_counts + (size_t)l * m->cfg.num_experts, m->cfg.num_experts);
}

/* After moe_plan: the expert counts come to the host (the layer's one transfer: they size the
 * products), a capacity drops what overflows, and under expert parallelism the kept counts go
 * to the ranks holding the experts. */
static void exchange_counts(struct model *m, int l, struct layer_acts *a, int n)
{
    struct gale_backend *be = m->be;
    int ne = m->cfg.num_experts, per = local_experts(m);
    int32_t *counts = m->host_counts + (size_t)l * ne;
    be->ops->download(be, counts, a->counts, (size_t)ne * sizeof(int32_t));
    gale_backend_wait(be);
    drop_overflow(m, l, a, n);
    if (m->ep == 1)
        return;
    int32_t *recv = m->recv_counts + (size_t)l * ne, *local = m->local_counts + (size_t)l * per;
    m->x->counts(m->x->ctx, m->kept_counts + (size_t)l * ne, recv, per);
    for (int e = 0; e < per; e++) {
        local[e] = 0;
        for (int r = 0; r < m->ep; r++)
            local[e] += recv[r * per + e];
    }
}

static void moe_forward(struct model *m, int l, struct layer_acts *a, int n,
                        const struct mlp_scratch *s, float *out)
{
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    const struct model_config *c = &m->cfg;
    int h = c->hidden_size, inter = c->intermediate_size;
    int ne = c->num_experts, k = c->num_experts_per_tok, per = local_experts(m);
    ops->matmul(be, 0, 1, n, ne, h, 1, a->h2, h, router_w(m, l), h, 0, s->router_logits, ne, to_f32_types(m));
    ops->router_fwd(be, a->probs, a->rlse, a->topk_idx, a->topk_w, s->router_logits, n, ne, k);
    ops->router_stats(be, a->rstats, a->probs, a->rlse, n, ne);
    ops->moe_plan(be, a->counts, a->slot_rows, a->slot_of, a->topk_idx, n, ne, k);
    exchange_counts(m, l, a, n);
    const int32_t *counts = local_counts(m, l);
    int kept = kept_slots(m, l);
    ops->moe_gather(be, s->xe, a->h2, a->slot_rows, kept, h);
    /* the local experts' inputs, SwiGLU products and outputs, expert-major */
    float *xr = s->xe, *act = s->act, *yr = a->ye;
    if (m->ep > 1) {
        ensure_expert_rows(m, l, (size_t)rows_of(counts, per));
        act = m->tmp_a;
        exchange_rows(m, l, s->xe, m->recv_rows, 0);
        permute_received(m, l, a->xr, m->recv_rows, 1);
        xr = a->xr;
        yr = m->yr;
    }
    /* one product per source rank's rows of an expert (see source_rows) */
    int sources = m->ep > 1 ? m->ep : 1;
    size_t off = 0;
    for (int e = 0; e < per; e++)
        for (int r = 0; r < sources; r++) {
            int cnt = source_rows(m, l, e, r);
            const float *xe = act_at(m, xr, off * h);
            linear_fwd(m, expert_index(m, l, e, 0), cnt, xe, 0, act_at(m, a->gate, off * inter), a->lora_u);
            linear_fwd(m, expert_index(m, l, e, 2), cnt, xe, 0, act_at(m, a->up, off * inter), a->lora_u);
            off += (size_t)cnt;
        }
    ops->swiglu_fwd(be, act, a->gate, a->up, off * inter);
    off = 0;
    for (int e = 0; e < per; e++)
        for (int r = 0; r < sources; r++) {
            int cnt = source_rows(m, l, e, r);
            linear_fwd(m, expert_index(m, l, e, 1), cnt, act_at(m, act, off * inter), 0,
                       act_at(m, yr, off * h), a->lora_u);
            off += (size_t)cnt;
        }
    if (m->ep > 1) {
        permute_received(m, l, m->recv_rows, m->yr, 0);
        exchange_rows(m, l, m->recv_rows, a->ye, 1);
    }
    if (kept < n * k)  /* the dropped slots' outputs */
        ops->zero(be, act_at(m, a->ye, (size_t)kept * h), wsz(m, (size_t)(n * k - kept) * h));
    ops->copy(be, out, a->x_mid, wsz(m, (size_t)n * h));
    ops->moe_combine(be, out, a->ye, a->topk_w, a->slot_of, n, k, h);
}

/* out = x_mid + mlp(rmsnorm(x_mid)) over n tokens (out may be a->x_in). */
static void mlp_forward(struct model *m, int l, struct layer_acts *a, int n,
                        const struct mlp_scratch *s, float *out)
{
    const struct model_config *c = &m->cfg;
    m->be->ops->rmsnorm_fwd(m->be, a->h2, a->rstd2, a->x_mid, layer_w(m, m->weights, l, W_LN2), n,
                        c->hidden_size, (float)c->rms_norm_eps);
    if (c->num_experts > 0)
        moe_forward(m, l, a, n, s, out);
    else
        dense_mlp_forward(m, l, a, n, s, out);
}

/* Embeddings through the final norm: m->hf holds the head's input afterwards. */
static void forward_trunk(struct model *m)
{
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    const struct model_config *c = &m->cfg;
    int n = m->rows, h = c->hidden_size;
    struct mlp_scratch scratch = {m->tmp_a, m->router_scratch, m->xe};
    ops->embedding_fwd(be, m->acts[0].x_in, tensor_at(m, m->weights, embed_index()), m->tokens, n,
                       h);
    for (int l = 0; l < c->num_layers; l++) {
        struct layer_acts *a = &m->acts[l];
        float *out = l + 1 < c->num_layers ? m->acts[l + 1].x_in : m->x_final;
        attention_forward(m, l, a->x_in);
        mlp_forward(m, l, a, n, &scratch, out);
    }
    ops->rmsnorm_fwd(be, m->hf, m->rstd_f, m->x_final,
                     tensor_at(m, m->weights, final_norm_index(m)), n, h, (float)c->rms_norm_eps);
}

/* After a forward over a Mixtral, from the expert counts on the host: the router losses'
 * weights. dprobs_const[l][e] (the load-balancing loss's gradient w.r.t. the probabilities,
 * weighted by aux_weight) for a backward, and the coefficients that turn each layer's
 * router_stats into the aux and z losses; both go up in one upload, the losses accumulate into
 * the device statistics. The aux loss is E * sum_e f_e * P_e with f the slot fractions per
 * layer (per_layer form, averaged over layers) or pooled over layers (hf form). f comes from
 * this micro-batch's counts, or in a training pass under aux_scope global from the whole
 * step's (model_set_aux_counts): a fraction, so the rest of the formula is the same. */
static void router_losses(struct model *m, double aux_weight, int for_backward)
{
    struct gale_backend *be = m->be;
    const struct model_config *c = &m->cfg;
    int n = m->rows, ne = c->num_experts, k = c->num_experts_per_tok, layers = c->num_layers;
    size_t le = (size_t)layers * ne, lstat = (size_t)layers * (ne + 1);
    double rows_all = (double)n * layers;
    int global = for_backward && m->aux_tokens > 0;
    double f_tokens = global ? m->aux_tokens : n;  /* the tokens the fractions are of */
    double *aux_coef = m->router_host, *z_coef = aux_coef + lstat;
    float *dprobs = (float *)(z_coef + lstat);
    double *pooled_f = gale_xcalloc((size_t)ne, sizeof(double));
    for (size_t i = 0; i < le; i++) {
        m->load[i] += m->host_counts[i];
        m->dropped += m->host_counts[i] - m->kept_counts[i];
        pooled_f[i % ne] += (global ? (double)m->aux_counts[i] : m->host_counts[i]) / (f_tokens * layers);
    }
    int per_layer = m->opts.aux_form == MODEL_AUX_PER_LAYER;
    double coef = aux_weight * c->router_aux_loss_coef;
    for (int l = 0; l < layers; l++) {
        double *al = aux_coef + (size_t)l * (ne + 1), *zl = z_coef + (size_t)l * (ne + 1);
        for (int e = 0; e < ne; e++) {
            size_t i = (size_t)l * ne + e;
            double layer_f = (global ? (double)m->aux_counts[i] : m->host_counts[i]) / (f_tokens * k);
            double f = per_layer ? layer_f : pooled_f[e];
            al[e] = per_layer ? ne * layer_f / ((double)n * layers) : ne * pooled_f[e] / rows_all;
            zl[e] = 0;
            dprobs[i] = (float)(coef * ne * f / rows_all);
        }
        al[ne] = 0;
        zl[ne] = 1.0 / rows_all;
    }
    free(pooled_f);
    /* router_host is rewritten each micro-batch: its last uploads are done, the forward waited
     * for every layer's expert counts since */
    be->ops->upload(be, m->router_coef, aux_coef, 2 * lstat * sizeof(double));
    if (for_backward)
        be->ops->upload(be, m->dprobs_const, dprobs, fsz(le));
    be->ops->dot_f64(be, m->stats + ST_AUX, m->rstats, m->router_coef, lstat);
    be->ops->dot_f64(be, m->stats + ST_Z, m->rstats, m->router_coef + lstat, lstat);
}

void model_set_aux_counts(struct model *m, const int64_t *counts, double tokens)
{
    size_t le = (size_t)m->cfg.num_layers * m->cfg.num_experts;
    m->aux_tokens = counts && le ? tokens : 0;
    if (m->aux_tokens > 0)
        memcpy(m->aux_counts, counts, le * sizeof *counts);
}

void model_stats_reset(struct model *m)
{
    m->be->ops->zero(m->be, m->stats, ST_COUNT * sizeof(double));
    memset(m->load, 0, (size_t)m->cfg.num_layers * m->cfg.num_experts * sizeof *m->load);
    m->dropped = 0;
}

int model_stats_read(struct model *m, struct model_stats *out, gale_error *err)
{
    struct gale_backend *be = m->be;
    be->ops->download(be, m->stats_host, m->stats, ST_COUNT * sizeof(double));
    if (gale_backend_sync(be, err))
        return -1;
    out->ce_sum = m->stats_host[ST_CE_SUM];
    out->n_targets = (long)m->stats_host[ST_TARGETS];
    out->aux_sum = m->stats_host[ST_AUX];
    out->z_sum = m->stats_host[ST_Z];
    out->expert_load = m->cfg.num_experts ? m->load : NULL;
    out->dropped = m->dropped;
    return 0;
}

/* A stand-alone pass's losses: the statistics since the reset that began it. */
static int fill_loss(struct model *m, struct model_loss *out, double denominator, gale_error *err)
{
    struct model_stats st;
    if (model_stats_read(m, &st, err))
        return -1;
    memset(out, 0, sizeof *out);
    out->ce_sum = st.ce_sum;
    out->n_targets = st.n_targets;
    if (m->cfg.num_experts) {
        out->aux_loss = st.aux_sum;
        if (m->opts.router_z_loss_coef != 0)
            out->z_loss = st.z_sum;
    }
    out->loss = out->ce_sum / denominator + m->cfg.router_aux_loss_coef * out->aux_loss +
                m->opts.router_z_loss_coef * out->z_loss;
    return 0;
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

static void head_forward_backward(struct model *m, double scale);

/* The forward and loss of a micro-batch. With keep_logits, every row's logits are kept in
 * m->logits for model_logits_download (an own buffer beside the plan's); without, the head
 * runs as the training pass's does, in its row chunks and over the rows with a target, and
 * only the loss is kept. */
static int forward_and_loss(struct model *m, const struct model_batch *batch, int keep_logits,
                            double ce_denominator, struct model_loss *out, gale_error *err)
{
    if (out)
        model_stats_reset(m);
    if (upload_batch(m, batch, err))
        return -1;
    struct gale_backend *be = m->be;
    const struct model_config *c = &m->cfg;
    int n = m->rows, h = c->hidden_size, vocab = c->vocab_size;
    if (keep_logits && !m->logits)
        m->logits = be->ops->alloc(be, fsz((size_t)m->cap_rows * vocab));
    if (gale_backend_sync(be, err))
        return -1;
    forward_trunk(m);
    if (keep_logits) {
        be->ops->matmul(be, 0, 1, n, vocab, h, 1, m->hf, h,
                        tensor_at(m, m->weights, lm_head_index(m)), h, 0, m->logits, vocab,
                        to_f32_types(m));
        if (batch->targets)
            be->ops->cross_entropy(be, m->logits, m->targets, n, vocab, 0, m->stats + ST_CE_SUM);
    } else if (batch->targets) {
        head_forward_backward(m, 0.0);
    }
    if (c->num_experts > 0)
        router_losses(m, 1.0, 0);
    if (out)
        return fill_loss(m, out, resolve_denominator(batch, ce_denominator), err);
    return be->failed ? gale_backend_sync(be, err) : 0;
}

int model_forward(struct model *m, const struct model_batch *batch, double ce_denominator,
                  struct model_loss *out, gale_error *err)
{
    return forward_and_loss(m, batch, 1, ce_denominator, out, err);
}

int model_loss(struct model *m, const struct model_batch *batch, double ce_denominator,
               struct model_loss *out, gale_error *err)
{
    return forward_and_loss(m, batch, 0, ce_denominator, out, err);
}

int model_route(struct model *m, const struct model_batch *batch, gale_error *err)
{
    if (upload_batch(m, batch, err))
        return -1;
    size_t le = (size_t)m->cfg.num_layers * m->cfg.num_experts;
    m->training = 1;  /* as the training pass will: the same dropout masks, the same drops */
    forward_trunk(m);
    m->training = 0;
    for (size_t i = 0; i < le; i++)
        m->load[i] += m->host_counts[i];
    return m->be->failed ? gale_backend_sync(m->be, err) : 0;
}

void model_set_head_all_rows(struct model *m, int on)
{
    m->head_all_rows = on;
}

/* lm_head and cross-entropy in row chunks, leaving d(loss)/d(hf) in m->dh; with scale 0, the
 * loss alone (model_loss: no gradient, m->dh untouched).
 *
 * A row whose target is ignored (a prompt token of SFT, padding) adds nothing to the loss or
 * to any gradient, yet costs the head's three products like any other. When some are
 * ignored, the head runs on the rows with a target only: their hf gathered into m->dx (free
 * until the backward below the head), their d(hf) written over it chunk by chunk (a chunk's
 * inputs are read before its d(hf) is written) and scattered into m->dh, zero elsewhere. The
 * same terms are summed, but the products have fewer rows (a BLAS may pick kernels that sum a
 * row's terms in another order) and the lm_head gradient groups its rows otherwise, so the
 * results may differ in the last bits (docs/math.md). All rows valid, or a backend without
 * the gather: the full pass, unchanged. */
static void head_forward_backward(struct model *m, double scale)
{
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    int n = m->rows, h = m->cfg.hidden_size, vocab = m->cfg.vocab_size;
    int chunk = (int)head_chunk_rows(&m->cfg, (size_t)m->cap_rows);
    float *w = tensor_at(m, m->weights, lm_head_index(m));
    float *dw = m->grads ? tensor_at(m, m->grads, lm_head_index(m)) : NULL;
    const float *hf = m->hf;
    const int32_t *targets = m->targets;
    float *dhf = m->dh;
    int backward = scale != 0;
    int skipping = m->n_valid < n && m->head_gathers && !m->head_all_rows;
    if (skipping) {
        if (backward)
            ops->zero(be, m->dh, wsz(m, (size_t)n * h));
        if (m->n_valid == 0)
            return;  /* as the full pass: no loss, no target counted, no gradient */
        n = m->n_valid;
        ops->moe_gather(be, m->dx, m->hf, m->valid_rows, n, h);
        hf = dhf = m->dx;
        targets = m->valid_targets;
    }
    for (int r0 = 0; r0 < n; r0 += chunk) {
        int rows = n - r0 < chunk ? n - r0 : chunk;
        const float *x = act_at(m, hf, (size_t)r0 * h);
        ops->matmul(be, 0, 1, rows, vocab, h, 1, x, h, w, h, 0, m->head_chunk, vocab,
                    to_f32_types(m));
        ops->cross_entropy(be, m->head_chunk, targets + r0, rows, vocab, (float)scale,
                           m->stats + ST_CE_SUM);
        if (!backward)
            continue;
        if (dw)
            ops->matmul(be, 1, 0, vocab, h, rows, 1, m->head_chunk, vocab, x, h, 1, dw, h,
                        f32_to_f32_types(m));
        ops->matmul(be, 0, 0, rows, h, vocab, 1, m->head_chunk, vocab, w, h, 0,
                    act_at(m, dhf, (size_t)r0 * h), h, f32_to_act_types(m));
    }
    if (skipping && backward)
        ops->moe_scatter_add(be, m->dh, m->dx, m->valid_rows, n, h);
}

static void dense_mlp_backward(struct model *m, int l)
{
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    struct layer_acts *a = &m->acts[l];
    int n = m->rows, inter = m->cfg.intermediate_size;
    ops->swiglu_fwd(be, m->tmp_a, a->gate, a->up, (size_t)n * inter);
    linear_bwd(m, layer_index(m, l, W_DOWN), n, m->tmp_a, m->dx, 0, m->tmp_b);
    ops->swiglu_bwd(be, m->tmp_b, m->tmp_c, m->tmp_b, a->gate, a->up, (size_t)n * inter);
    linear_bwd(m, layer_index(m, l, W_GATE), n, a->h2, m->tmp_b, 0, m->dh);
    linear_bwd(m, layer_index(m, l, W_UP), n, a->h2, m->tmp_c, 1, m->dh);
}

static void moe_backward(struct model *m, int l, double aux_weight)
{
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    const struct model_config *c = &m->cfg;
    struct layer_acts *a = &m->acts[l];
    int n = m->rows, h = c->hidden_size, inter = c->intermediate_size;
    int ne = c->num_experts, k = c->num_experts_per_tok, slots = kept_slots(m, l), per = local_experts(m);
    const int32_t *counts = local_counts(m, l);
    size_t rows = (size_t)rows_of(counts, per);
    ops->moe_combine_bwd(be, m->dye, m->dtopk_w, m->dx, a->ye, a->topk_w, a->slot_of, n, k, h);
    ops->swiglu_fwd(be, m->tmp_a, a->gate, a->up, rows * inter);
    /* the local experts' inputs, output gradients and input gradients, expert-major */
    float *xr = m->xe, *dyr = m->dye, *dxr = m->dxe;
    if (m->ep > 1) {
        exchange_rows(m, l, m->dye, m->recv_rows, 0);
        permute_received(m, l, m->yr, m->recv_rows, 1);
        xr = a->xr;
        dyr = m->yr;
        dxr = m->recv_rows;
    } else {
        ops->moe_gather(be, m->xe, a->h2, a->slot_rows, slots, h);
    }
    /* one product per source rank's rows of an expert (see source_rows) */
    int sources = m->ep > 1 ? m->ep : 1;
    size_t off = 0;
    for (int e = 0; e < per; e++)
        for (int r = 0; r < sources; r++) {
            int cnt = source_rows(m, l, e, r);
            linear_bwd(m, expert_index(m, l, e, 1), cnt, act_at(m, m->tmp_a, off * inter),
                       act_at(m, dyr, off * h), 0, act_at(m, m->tmp_b, off * inter));
            off += (size_t)cnt;
        }
    ops->swiglu_bwd(be, m->tmp_b, m->tmp_c, m->tmp_b, a->gate, a->up, rows * inter);
    off = 0;
    for (int e = 0; e < per; e++)
        for (int r = 0; r < sources; r++) {
            int cnt = source_rows(m, l, e, r);
            const float *dg = act_at(m, m->tmp_b, off * inter), *du = act_at(m, m->tmp_c, off * inter);
            const float *xe = act_at(m, xr, off * h);
            float *dxe = act_at(m, dxr, off * h);
            linear_bwd(m, expert_index(m, l, e, 0), cnt, xe, dg, 0, dxe);
            linear_bwd(m, expert_index(m, l, e, 2), cnt, xe, du, 1, dxe);
            off += (size_t)cnt;
        }
    if (m->ep > 1) {
        permute_received(m, l, m->yr, m->recv_rows, 0);
        exchange_rows(m, l, m->yr, m->dxe, 1);
    }
    ops->zero(be, m->dh, wsz(m, (size_t)n * h));
    ops->moe_scatter_add(be, m->dh, m->dxe, a->slot_rows, slots, h);
    float z_scale = (float)(aux_weight * m->opts.router_z_loss_coef / ((double)n * c->num_layers));
    ops->router_bwd(be, m->router_scratch, m->dtopk_w, a->probs, a->rlse, a->topk_idx, a->topk_w,
                    m->dprobs_const + (size_t)l * ne, z_scale, n, ne, k);
    float *dw = router_grad(m, l); /* NULL: frozen under LoRA unless lora.train_router */
    if (dw)
        ops->matmul(be, 1, 0, ne, h, n, 1, m->router_scratch, ne, a->h2, h, 1, dw, h, f32_to_f32_types(m));
    ops->matmul(be, 0, 0, n, h, ne, 1, m->router_scratch, ne, router_w(m, l), h, 1, m->dh, h,
                f32_to_act_types(m));
}

static void attention_backward(struct model *m, int l)
{
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    const struct model_config *c = &m->cfg;
    struct layer_acts *a = &m->acts[l];
    int n = m->rows, h = c->hidden_size;
    linear_bwd(m, layer_index(m, l, W_O), n, a->att, m->dx, 0, m->datt);
    ops->attention_bwd(be, m->dq, m->dk, m->dv, m->datt, a->att, a->lse, a->q, a->k, a->v,
                       m->has_segments ? m->segments : NULL, m->batch, m->seq, c->num_heads,
                       c->num_kv_heads, c->head_dim, c->sliding_window);
    ops->rope_bwd(be, m->dq, m->positions, n, c->num_heads, c->head_dim, (float)c->rope_theta);
    ops->rope_bwd(be, m->dk, m->positions, n, c->num_kv_heads, c->head_dim, (float)c->rope_theta);
    linear_bwd(m, layer_index(m, l, W_Q), n, a->h1, m->dq, 0, m->dh);
    linear_bwd(m, layer_index(m, l, W_K), n, a->h1, m->dk, 1, m->dh);
    linear_bwd(m, layer_index(m, l, W_V), n, a->h1, m->dv, 1, m->dh);
    ops->rmsnorm_bwd(be, m->dx, grads_w(m, l, W_LN1), m->dh, a->x_in,
                     layer_w(m, m->weights, l, W_LN1), a->rstd1, n, h);
}

void model_set_grads_ready(struct model *m, model_grads_ready_fn fn, void *ctx)
{
    m->grads_ready = fn;
    m->grads_ready_ctx = ctx;
}

/* The backward has finished the gradients of tensors [first, end). */
static void grads_ready(struct model *m, int first, int end)
{
    if (!m->grads_ready || !m->grads)
        return;
    gale_backend_wait(m->be);
    m->grads_ready(m->grads_ready_ctx, first, end);
}

int model_forward_backward(struct model *m, const struct model_batch *batch,
                           double ce_denominator, double aux_weight, struct model_loss *out,
                           gale_error *err)
{
    if (!batch->targets)
        return gale_fail(err, "a backward pass needs targets");
    if (out)
        model_stats_reset(m);
    if (upload_batch(m, batch, err))
        return -1;
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    const struct model_config *c = &m->cfg;
    int n = m->rows, h = c->hidden_size;
    double denominator = resolve_denominator(batch, ce_denominator);
    m->training = 1;
    forward_trunk(m);
    if (c->num_experts > 0)
        router_losses(m, aux_weight, 1);
    head_forward_backward(m, 1.0 / denominator);
    ops->zero(be, m->dx, wsz(m, (size_t)n * h));
    int fn = final_norm_index(m);
    ops->rmsnorm_bwd(be, m->dx, m->grads ? tensor_at(m, m->grads, fn) : NULL, m->dh, m->x_final,
                     tensor_at(m, m->weights, fn), m->rstd_f, n, h);
    grads_ready(m, fn, m->layout.n);  /* the final norm and an untied head */
    struct mlp_scratch scratch = {m->tmp_a, m->router_scratch, m->xe};
    for (int l = c->num_layers - 1; l >= 0; l--) {
        struct layer_acts *a = &m->acts[l];
        if (m->opts.recompute == MODEL_RECOMPUTE_LAYER) {
            /* the layer's forward again from its kept input: the same ops on the same values,
             * so the same activations; its output rewrites the next input identically */
            attention_forward(m, l, a->x_in);
            mlp_forward(m, l, a, n, &scratch, l + 1 < c->num_layers ? m->acts[l + 1].x_in
                                                                      : m->x_final);
        }
        if (c->num_experts > 0)
            moe_backward(m, l, aux_weight);
        else
            dense_mlp_backward(m, l);
        ops->rmsnorm_bwd(be, m->dx, grads_w(m, l, W_LN2), m->dh, a->x_mid,
                         layer_w(m, m->weights, l, W_LN2), a->rstd2, n, h);
        attention_backward(m, l);
        grads_ready(m, m->layer_first[l], l + 1 < c->num_layers ? m->layer_first[l + 1] : fn);
    }
    if (m->grads)
        ops->embedding_bwd(be, tensor_at(m, m->grads, embed_index()), m->dx, m->tokens, n, h);
    grads_ready(m, embed_index(), embed_index() + 1);
    m->training = 0;
    if (out)
        return fill_loss(m, out, denominator, err);
    return be->failed ? gale_backend_sync(be, err) : 0;  /* no wait: errors show at the read */
}

void model_logits_download(struct model *m, float *host)
{
    m->be->ops->download(m->be, host, m->logits, fsz((size_t)m->rows * m->cfg.vocab_size));
    gale_backend_wait(m->be);
}

void model_selected_experts_download(struct model *m, int32_t *host)
{
    size_t per_layer = (size_t)m->rows * m->cfg.num_experts_per_tok;
    for (int l = 0; l < m->cfg.num_layers; l++)
        m->be->ops->download(m->be, host + l * per_layer, m->acts[l].topk_idx,
                             per_layer * sizeof(int32_t));
    gale_backend_wait(m->be);
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
    void *arena;                 /* everything below on the device, in one allocation */
    float *k, *v;                /* [layers][capacity][kv_heads * head_dim], rope'd keys */
    struct layer_acts acts;      /* one set for `chunk` tokens, reused by every layer */
    struct mlp_scratch scratch;
    float *hf, *rstd_f, *logits; /* the head over the last token */
    int32_t *tokens, *positions;
    int32_t *host_positions;     /* host staging: positions, then tokens */
    unsigned long stage_wait;    /* be->waits at its last uploads */
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
    if (m->ep > 1) {
        gale_fail(err, "KV cache: generation runs on a model holding every expert (this one holds "
                       "%d of %d)", local_experts(m), c->num_experts);
        return NULL;
    }
    struct model_kv_cache *kc = gale_xcalloc(1, sizeof *kc);
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
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
    struct carve cv = {0};
    for (int pass = 0; pass < 2; pass++) {  /* measure, then carve */
        size_t wb = m->w_bytes;
        kc->k = take(&cv, rows * dkv * wb);
        kc->v = take(&cv, rows * dkv * wb);
        carve_layer(&cv, c, n, wb, 1, &kc->acts);
        kc->scratch.act = take(&cv, mlp_rows(c, n) * c->intermediate_size * wb);
        if (m->lora_rank)
            kc->acts.lora_u = take(&cv, n * m->lora_rank * wb);
        if (c->num_experts > 0) {
            kc->scratch.router_logits = take(&cv, fsz(n * c->num_experts));
            kc->scratch.xe = take(&cv, n * c->num_experts_per_tok * c->hidden_size * wb);
            kc->acts.rstats = take(&cv, ((size_t)c->num_experts + 1) * sizeof(double));
        }
        kc->hf = take(&cv, (size_t)c->hidden_size * wb);
        kc->rstd_f = take(&cv, fsz(1));
        kc->logits = take(&cv, fsz((size_t)c->vocab_size));
        kc->tokens = take(&cv, n * sizeof(int32_t));
        kc->positions = take(&cv, n * sizeof(int32_t));
        if (pass == 0) {
            kc->arena = cv.base = ops->alloc(be, cv.used);
            cv.used = 0;
        }
    }
    kc->host_positions = ops->host_alloc(be, 2 * n * sizeof(int32_t));
    if (gale_backend_sync(be, err)) {
        gale_error_prefix(err, "KV cache of %zu rows", rows);
        model_kv_cache_free(kc);
        return NULL;
    }
    return kc;
}

void model_kv_cache_free(struct model_kv_cache *kc)
{
    if (!kc)
        return;
    struct gale_backend *be = kc->m->be;
    free_buf(be, kc->arena);
    if (kc->host_positions)
        be->ops->host_free(be, kc->host_positions);
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
    return act_at(m, base, ((size_t)l * kc->capacity + row) * kv_row_floats(m));
}

/* Before n more keys: when they would not fit (only with a sliding window, max_len bounds the
 * rest), keeps just the last W - 1 keys, the oldest that the new queries can see. */
static void make_room(struct model *m, struct model_kv_cache *kc, int n)
{
    if (kc->stored + n <= kc->capacity)
        return;
    int keep = m->cfg.sliding_window - 1, from = kc->stored - keep;
    size_t bytes = wsz(m, (size_t)keep * kv_row_floats(m));
    for (int l = 0; l < m->cfg.num_layers; l++) {
        m->be->ops->copy(m->be, kv_rows(m, kc, kc->k, l, 0), kv_rows(m, kc, kc->k, l, from), bytes);
        m->be->ops->copy(m->be, kv_rows(m, kc, kc->v, l, 0), kv_rows(m, kc, kc->v, l, from), bytes);
    }
    kc->stored = keep;
}

/* The next n <= chunk tokens through every layer: their keys and values join the cache and
 * acts.x_in holds the last layer's output. */
static void forward_next_chunk(struct model *m, struct model_kv_cache *kc, const int32_t *tokens,
                               int n)
{
    struct gale_backend *be = m->be;
    const struct gale_ops *ops = be->ops;
    const struct model_config *c = &m->cfg;
    struct layer_acts *a = &kc->acts;
    make_room(m, kc, n);
    if (kc->stage_wait == be->waits)
        gale_backend_wait(be);  /* the last chunk's uploads may still read the staging */
    kc->stage_wait = be->waits;
    int32_t *staged_tokens = kc->host_positions + kc->chunk;
    for (int i = 0; i < n; i++) {
        kc->host_positions[i] = kc->length + i;
        staged_tokens[i] = tokens[i];
    }
    ops->upload(be, kc->positions, kc->host_positions, (size_t)n * sizeof(int32_t));
    ops->upload(be, kc->tokens, staged_tokens, (size_t)n * sizeof(int32_t));
    ops->embedding_fwd(be, a->x_in, tensor_at(m, m->weights, embed_index()), kc->tokens, n,
                       c->hidden_size);
    for (int l = 0; l < c->num_layers; l++) {
        float *k = kv_rows(m, kc, kc->k, l, 0), *v = kv_rows(m, kc, kc->v, l, 0);
        qkv_forward(m, l, a, n, a->x_in, kv_rows(m, kc, kc->k, l, kc->stored),
                    kv_rows(m, kc, kc->v, l, kc->stored), kc->positions);
        ops->attention_cached_fwd(be, a->att, a->q, k, v, n, kc->stored + n, c->num_heads,
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
    m->be->ops->rmsnorm_fwd(m->be, kc->hf, kc->rstd_f, act_at(m, kc->acts.x_in, (size_t)row * h),
                        tensor_at(m, m->weights, final_norm_index(m)), 1, h,
                        (float)c->rms_norm_eps);
    m->be->ops->matmul(m->be, 0, 1, 1, vocab, h, 1, kc->hf, h,
                       tensor_at(m, m->weights, lm_head_index(m)), h, 0, kc->logits, vocab,
                       to_f32_types(m));
    m->be->ops->download(m->be, logits, kc->logits, fsz((size_t)vocab));
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
    return gale_backend_sync(m->be, err);
}

void model_targets_from_labels(const int64_t *labels, int batch, int seq, int32_t *targets)
{
    for (int b = 0; b < batch; b++)
        for (int t = 0; t < seq; t++) {
            int64_t y = t + 1 < seq ? labels[(size_t)b * seq + t + 1] : -100;
            targets[(size_t)b * seq + t] = y < 0 ? -100 : (int32_t)y;
        }
}
