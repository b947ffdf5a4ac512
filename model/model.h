/* model: the Llama 2 / Mistral / Mixtral decoder, its weights and its forward and backward
 * pass, written once over a backend's ops table (model/ops.h, model/backend.h).
 *
 * Parameters live in ONE contiguous fp32 buffer (on the backend's device: the master weights),
 * described by a layout: a table of tensor views under Hugging Face names. Gradients use the
 * same layout in a second fp32 buffer, and optimizer moments can too, so all-reduce, clipping
 * and checkpointing are flat operations over [0, layout.numel). The graph reads a compute copy
 * of the weights in the backend's compute dtype: the master buffer itself in fp32, a third
 * buffer otherwise, refreshed whenever the master changes (model_weights_refresh).
 *
 * A pass's statistics (cross-entropy sum, target count, router losses) accumulate on the
 * device and come back once, in model_stats_read; the only host transfer per layer is a
 * Mixtral layer's expert counts. See docs/engine.md.
 *
 * The loss of a step is the mean over every target token of the global batch: the caller
 * passes the number of target tokens to divide the summed cross-entropy by (all micro-batches,
 * all ranks), so gradient accumulation and data parallelism optimise that mean. The router's
 * aux loss is per micro-batch; its weight in the gradient (e.g. 1 / micro-batches) is passed
 * too. */
#ifndef GALE_MODEL_MODEL_H
#define GALE_MODEL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "model/config.h"
#include "model/ops.h"
#include "util/error.h"

#define MODEL_TENSOR_NAME_MAX 96

/* One parameter tensor: a view of [offset, offset + numel) of the flat buffer. */
struct model_tensor {
    char name[MODEL_TENSOR_NAME_MAX];  /* Hugging Face name, e.g. model.layers.0.mlp.up_proj.weight */
    int ndim;                          /* 1 or 2 */
    int64_t shape[2];
    size_t offset, numel;
    int decay;                         /* 1 for 2-D weights: weight decay applies by default */
    int expert;                        /* 1 for an expert's w1/w2/w3: under expert parallelism
                                          held by one rank of each data-parallel group's EP group */
};

struct model_layout {
    struct model_tensor *tensors;
    int n;
    size_t numel;                      /* total floats */
};

/* The tensors of a model in Hugging Face order: embed_tokens, then per layer input_layernorm,
 * q/k/v/o_proj, post_attention_layernorm, mlp.gate/up/down_proj or block_sparse_moe.gate and
 * experts.E.w1/w2/w3, then model.norm and lm_head (absent when tied). */
void model_layout_build(const struct model_config *cfg, struct model_layout *layout);
/* The same, holding of each layer's experts only the contiguous block of an expert-parallel
 * rank: experts [E*ep_rank/ep_size, E*(ep_rank+1)/ep_size) (ep_size divides E). Names keep the
 * global expert index. */
void model_layout_build_share(const struct model_config *cfg, int ep_size, int ep_rank,
                              struct model_layout *layout);
void model_layout_free(struct model_layout *layout);
/* NULL when absent. */
const struct model_tensor *model_layout_find(const struct model_layout *layout, const char *name);

enum model_aux_form {
    MODEL_AUX_HF,          /* pooled over layers: E * sum_k sum_e f[k][e] * P[e] (transformers) */
    MODEL_AUX_PER_LAYER    /* mean over layers of E * sum_e f_e * P_e, f over all top-k slots */
};

/* Activation recomputation: none keeps every layer's activations for the backward; layer
 * keeps each layer's input only and runs the layer's forward again in the backward (about a
 * third more compute for a fraction of the memory; see model_plan). */
enum model_recompute { MODEL_RECOMPUTE_NONE, MODEL_RECOMPUTE_LAYER };

struct lora_config;

/* Expert parallelism: how a model whose layout holds one block of each layer's experts moves
 * routed rows to the ranks that hold their experts and back (train/comm.c implements it over
 * MPI). Both calls are collective over the size ranks of the expert-parallel group: every rank
 * makes every call, with zero rows when it has none to send. Buffers are the backend's; the
 * model waits for its queued work before each call. */
struct model_expert_exchange {
    int size, rank;
    void *ctx;
    /* send[size * per] -> recv[size * per]: block r of send goes to rank r, block s of recv
     * came from rank s (MPI_Alltoall) */
    void (*counts)(void *ctx, const int32_t *send, int32_t *recv, int per);
    /* rows of row_bytes each: send_rows[r] of send (in rank order) go to rank r, recv_rows[s]
     * from rank s land in recv in rank order (MPI_Alltoallv) */
    void (*rows)(void *ctx, const void *send, const int *send_rows, void *recv,
                 const int *recv_rows, size_t row_bytes);
    /* a rank that cannot go on (no memory for the rows it received) ends the job: the other
     * ranks are inside the collective */
    void (*abort)(void *ctx, const char *msg);
};

struct model_options {
    enum model_aux_form aux_form;
    double router_z_loss_coef;   /* 0: no z-loss; else coef * mean over rows of lse(logits)^2 */
    enum model_recompute recompute;
    /* 0: dropless. Else, in training passes (model_forward_backward, model_route), each
     * expert of a MoE layer runs at most ceil(capacity_factor * tokens * k / E) of a
     * micro-batch's slots, the first in token order: a slot past it is dropped (its expert
     * output is zero; the token keeps its residual and its other experts). Each rank applies it
     * to its own micro-batch before the dispatch, so expert parallelism drops what one rank
     * running the same micro-batches drops. Evaluation and generation are dropless. */
    double capacity_factor;
    /* LoRA adapters (model/lora.h) or NULL. With adapters the base weights are frozen: they
     * have no gradients and no master copy (the compute dtype's copy is all there is), and
     * only the adapters train: model_trainable gives their buffers. */
    const struct lora_config *lora;
    /* NULL: the model holds every expert. Else its experts are exchange->rank's block of
     * exchange->size (which must divide num_experts) and the MoE layers exchange rows. */
    const struct model_expert_exchange *exchange;
};

/* One micro-batch. Position t of row b is token tokens[b*T + t]; it is trained to predict
 * targets[b*T + t] (negative: no target). Shards give inputs = row[:-1], targets = row[1:];
 * the fixtures' labels convention converts with model_targets_from_labels. */
struct model_batch {
    int batch, seq;                /* B, T */
    const int32_t *tokens;         /* [B,T] host */
    const int32_t *targets;        /* [B,T] host, or NULL for a forward without loss */
    const uint8_t *loss_mask;      /* [B,T] host or NULL: 0 drops the target at t */
    const int32_t *segments;       /* [B,T] host or NULL: document index; attention does not
                                      cross documents and positions restart at 0 at each
                                      document's first token */
};

struct model_loss {
    double loss;        /* ce_sum / ce_denominator + coef * aux_loss + z_coef * z_loss */
    double ce_sum;      /* summed cross-entropy of this micro-batch */
    long n_targets;     /* targets counted in this micro-batch */
    double aux_loss;    /* router load-balancing loss (0 for dense models) */
    double z_loss;      /* router z-loss (0 unless enabled) */
};

/* What model_stats_read gives: sums since model_stats_reset over the passes run. */
struct model_stats {
    double ce_sum;               /* summed cross-entropy */
    long n_targets;              /* targets counted */
    double aux_sum, z_sum;       /* router aux and z losses, summed over the passes */
    const int64_t *expert_load;  /* [layers][E] routing slots per expert (NULL when dense);
                                    valid until the next pass */
    int64_t dropped;             /* routing slots (token, expert) a capacity dropped in the
                                    training passes, summed over layers */
};

/* The memory plan: every device buffer of a training run, sized from the model, the shape of a
 * micro-batch, the precision, recomputation and the parallel layout before anything is
 * allocated, by the same code that carves the model's arenas (so the plan is the allocation). */
enum model_plan_arena {
    PLAN_WEIGHTS, PLAN_MASTER, PLAN_GRADS, PLAN_MOMENTS, PLAN_ACTIVATIONS, PLAN_SCRATCH,
    PLAN_ARENAS
};

struct model_plan_layout {
    int micro_batch, seq_len;
    enum gale_dtype compute;       /* the compute dtype of weights' copy and activations */
    size_t compute_bytes;          /* bytes per compute element; 0: the dtype's own size (the
                                      CPU's bf16 mode keeps 4-byte containers) */
    enum model_recompute recompute;
    int ep_size, ep_rank;          /* expert parallelism: the rank holds experts
                                      [E*rank/ep, E*(rank+1)/ep) of each layer (1, 0: all) */
    int dp_size, zero;             /* with zero, the moments are split over dp_size ranks */
    const struct lora_config *lora; /* adapters on a frozen base, or NULL */
};

struct model_plan {
    size_t bytes[PLAN_ARENAS];     /* per arena, on one rank */
    size_t total;
    size_t params;                 /* parameters held by the rank */
    size_t trained;                /* of which trained: params, or the adapters' (LoRA) */
};

int model_plan(const struct model_config *cfg, const struct model_plan_layout *layout,
               struct model_plan *out, gale_error *err);
const char *model_plan_arena_name(enum model_plan_arena a);

struct model;

/* A model with zeroed parameters and gradients on backend be (not owned; it must outlive the
 * model). Fails, naming the sizes, when the device cannot hold them. */
struct model *model_create(const struct model_config *cfg, struct gale_backend *be,
                           const struct model_options *opts, gale_error *err);
void model_free(struct model *m);
/* Hands be to the model: model_free frees it too. */
void model_own_backend(struct model *m);

const struct model_config *model_get_config(const struct model *m);
const struct model_layout *model_get_layout(const struct model *m);
struct gale_backend *model_get_backend(const struct model *m);
/* The flat device buffers, layout.numel fp32 elements each: master weights and gradients. */
float *model_params(struct model *m);
float *model_grads(struct model *m);
/* The compute copy of the weights (layout.numel elements of the compute dtype), or NULL when
 * it is model_params itself (fp32). */
float *model_weights(struct model *m);
/* Rewrites the compute copy from the master weights: after anything but model_params_upload
 * or an AdamW step given model_weights wrote them (e.g. a broadcast into model_params). */
void model_weights_refresh(struct model *m);

/* What an optimizer trains: the model's own buffers, or with LoRA the adapters' (layout under
 * PEFT's names; weights NULL when params is the compute copy itself). */
struct model_trainable {
    const struct model_layout *layout;
    float *params, *weights, *grads;
};
void model_trainable(struct model *m, struct model_trainable *out);
/* With LoRA: 1, and the adapters to or from a host array of their layout.numel floats. */
int model_has_lora(const struct model *m);
void model_lora_upload(struct model *m, const float *host);
/* New adapters: PEFT's init (lora_init_host, deterministic in seed), the trained copies of the
 * routers (lora.train_router) equal to the base's. */
void model_lora_init(struct model *m, uint64_t seed);
void model_lora_download(struct model *m, float *host);
void model_lora_grads_download(struct model *m, float *host);
/* The seed of the adapters' dropout masks in the next training passes (the trainer gives each
 * micro-batch its own, from the run's seed and the step, so a resumed run draws the same). */
void model_lora_dropout_seed(struct model *m, uint64_t seed);
/* The adapters' configuration, or NULL without LoRA. */
const struct lora_config *model_lora_config(const struct model *m);

/* Zeroes the device statistics and the expert load. */
void model_stats_reset(struct model *m);
/* Waits for the queued work and reads the statistics (one transfer); -1 with the backend's
 * first failure since the last check. */
int model_stats_read(struct model *m, struct model_stats *out, gale_error *err);

/* From scratch: every weight ~ N(0, std^2), the output projections (o_proj, down_proj, w2)
 * scaled by 1/sqrt(2 * layers), norms at 1. Deterministic in seed (counter-based RNG). */
void model_init_random(struct model *m, double std, uint64_t seed);

/* Loads a Hugging Face folder (model.safetensors or an index + shards; F32, BF16, F16). A
 * missing, unexpected or misshapen tensor is an error naming it. Streams: the files are mapped,
 * and each tensor is converted into a buffer of one tensor, uploaded, and its pages released, so
 * the extra host memory is one tensor's, not the model's. */
int model_load_hf(struct model *m, const char *dir, gale_error *err);

/* Whether this process holds tensor t (e.g. expert parallelism: its own experts only). */
typedef int (*model_tensor_filter)(const struct model_tensor *t, void *ctx);

/* model_load_hf for the tensors keep(t, ctx) accepts (keep NULL: all); the others are neither
 * read nor required. A tensor the layout does not know is still an error. */
int model_load_hf_filtered(struct model *m, const char *dir, model_tensor_filter keep, void *ctx,
                           gale_error *err);
/* Loads the weights from an open set (e.g. a fixture); same checks. */
struct safetensors_set;
int model_load_tensors(struct model *m, const struct safetensors_set *set, model_tensor_filter keep,
                       void *ctx, gale_error *err);
/* Fails naming the first tensor of set that is no tensor of cfg's model (nor a buffer old
 * checkpoints carry, rotary_emb.inv_freq). */
int model_check_tensor_names(const struct model_config *cfg, const struct safetensors_set *set, gale_error *err);
/* Tensor t, found by name in set, into buffer as t->numel floats, its shape checked; its pages of
 * the mapped file are released after. */
int model_read_tensor(const struct safetensors_set *set, const struct model_tensor *t, float *buffer,
                      gale_error *err);

/* transformers' default max_shard_size ("5GB") */
#define MODEL_SHARD_SIZE_DEFAULT 5000000000ull

struct model_save_options {
    enum model_dtype dtype; /* of the written weights: f32, bf16 or f16 (rounded to nearest even) */
    uint64_t shard_size;    /* bytes of weights per file at most (a larger tensor gets a file of
                               its own); 0: MODEL_SHARD_SIZE_DEFAULT */
};

/* Writes a Hugging Face folder into dir, each file atomically: config.json (its dtype and
 * torch_dtype saying o->dtype) and the weights with hub names, in o->dtype, as
 * model.safetensors when they fit one shard, else model-0000N-of-0000M.safetensors and
 * model.safetensors.index.json as transformers' save_pretrained shards them (in order, a new
 * file when the next tensor would pass shard_size). Streams tensor by tensor from the device
 * through a buffer of one tensor. A weights file of the other form left in dir is removed. */
int model_save_hf_as(struct model *m, const char *dir, const struct model_save_options *o,
                     gale_error *err);

/* How save_pretrained splits tensors which[0..n) of layout (indices, in order) in o's dtype
 * into files of at most o->shard_size bytes (a new file when the next tensor would pass it; a
 * larger tensor gets one of its own): file_of[k] for each; returns the number of files. */
int model_shard_plan(const struct model_layout *layout, const int *which, int n, const struct model_save_options *o,
                     int *file_of);

/* Writes the weights of tensors which[0..n) in dtype, each file atomically, tensor k into
 * dir/STEM-<first + file_of[k] + 1>-of-<total>.safetensors (safetensors_shard_name): one
 * process's share of a folder whose other files others write. */
int model_save_part(struct model *m, const char *dir, const char *stem, const int *which, int n, const int *file_of,
                    enum model_dtype dtype, int first, int total, gale_error *err);

/* dir/config.json of the model, its dtype and torch_dtype saying dtype. */
int model_save_config(struct model *m, const char *dir, enum model_dtype dtype, gale_error *err);

/* Writes t's weights as t->numel floats into buffer; a nonzero return stops the writer. */
typedef int (*model_tensor_producer)(const struct model_tensor *t, float *buffer, void *ctx, gale_error *err);
/* model_save_hf_as's folder for config's model, the tensors of layout produced one at a time by
 * produce (so the weights need never be whole in memory, e.g. gale merge's). */
int model_write_hf(const struct model_config *config, const struct model_layout *layout, const char *dir,
                   const struct model_save_options *o, model_tensor_producer produce, void *ctx, gale_error *err);

/* model_save_hf_as in fp32, default shard size. */
int model_save_hf(struct model *m, const char *dir, gale_error *err);

/* Parameters to or from a host array of layout.numel floats. A frozen base in bf16 has no
 * master: its download needs a backend whose compute elements are 4 bytes (the CPU's). */
void model_params_download(struct model *m, float *host);
/* n values at element offset of the same, into host; waits. */
void model_params_download_range(struct model *m, size_t offset, float *host, size_t n);
void model_params_upload(struct model *m, const float *host);
/* n fp32 values from the host into the weights at element offset: the master's (the caller
 * refreshes the compute copy once all are in), or without a master (a frozen LoRA base) the
 * compute copy's, converted. Waits, so host may be refilled at once. */
void model_params_upload_range(struct model *m, size_t offset, const float *host, size_t n);
void model_grads_download(struct model *m, float *host);

/* Zeroes the trained gradients (model_trainable's). */
void model_zero_grads(struct model *m);

/* Forward only. The pass's statistics add to the device's (model_stats_read). With out, the
 * pass stands alone: the statistics are reset before and read into out after (ce divided by
 * ce_denominator; <= 0 means by this micro-batch's own target count). Afterwards
 * model_logits_download gives the logits. */
int model_forward(struct model *m, const struct model_batch *batch, double ce_denominator,
                  struct model_loss *out, gale_error *err);

/* Forward and loss only, as model_forward, without keeping the logits: the head runs in the
 * training pass's row chunks, over the positions with a target only, so evaluation needs no
 * [rows, vocab] buffer beside the memory plan and does no work for masked positions. The same
 * loss as model_forward's, to the bit when every position has a target and the batch fits one
 * head chunk, else to fp32 rounding (docs/math.md). */
int model_loss(struct model *m, const struct model_batch *batch, double ce_denominator,
               struct model_loss *out, gale_error *err);

/* Forward and backward: gradients += d(loss)/d(params) where
 * loss = ce_sum / ce_denominator + aux_weight * (coef * aux + z_coef * z).
 * ce_denominator <= 0 means this micro-batch's own target count; aux_weight is typically
 * 1 / (micro-batches * data-parallel ranks). Logits are not kept. out as for model_forward:
 * NULL to accumulate the statistics over a step's micro-batches without waiting. */
int model_forward_backward(struct model *m, const struct model_batch *batch,
                           double ce_denominator, double aux_weight, struct model_loss *out,
                           gale_error *err);

/* aux_scope global, in two passes over a step's micro-batches. model_route runs a training
 * pass's forward up to the routing of every layer (the trunk, no head, no loss) and adds the
 * micro-batch's expert counts to the statistics' expert_load. Once the counts of every
 * micro-batch of every rank are summed, model_set_aux_counts gives them ([layers][E], routing
 * slots of the whole global batch of `tokens` tokens) to the training passes that follow:
 * their load-balancing loss takes its expert fractions f from them instead of from their
 * own micro-batch, so the step's aux loss is that of the global batch, E * sum f_e * P_e with
 * both f and P over every token (with aux_weight 1 / (micro-batches * ranks) as for the
 * micro-batch scope; docs/parallel.md derives it). counts NULL: each micro-batch's own again.
 * Evaluation (model_forward) always uses its own. Under expert parallelism model_route is
 * collective like a training pass. */
int model_route(struct model *m, const struct model_batch *batch, gale_error *err);
void model_set_aux_counts(struct model *m, const int64_t *counts, double tokens);

/* Called by model_forward_backward as its backward finishes the gradients of layout tensors
 * [first, end) for this pass (the final norm and head, then each layer from the last, then
 * the embeddings), once the backend's work on them is done: a data-parallel reduction can
 * start while the backward goes on (train/grad_sync.h). Set it for the last micro-batch of a
 * step only; fn NULL: none. Not called with LoRA (the base has no gradients). */
typedef void (*model_grads_ready_fn)(void *ctx, int first, int end);
void model_set_grads_ready(struct model *m, model_grads_ready_fn fn, void *ctx);

/* Test-only: with on, the training pass's head runs over every row, those with an ignored
 * target too, as before it learnt to skip them: the reference the skip is tested against. */
void model_set_head_all_rows(struct model *m, int on);

/* After model_forward: logits [B, T, vocab] to host. */
void model_logits_download(struct model *m, float *host);

/* After a forward of a Mixtral: the chosen experts [layers][B*T][k] to host. */
void model_selected_experts_download(struct model *m, int32_t *host);

/* Generation: an incremental forward of one sequence over a KV cache. model_forward_next runs
 * the sequence's next n tokens (the prompt, then one new token at a time), keeps their rope'd
 * keys and values, and gives the logits after the last of them: what model_forward gives at
 * that position for the whole sequence (GQA, positions continuing from the cache's length,
 * sliding window, Mixtral routing), to fp32 rounding. A model with a sliding window keeps only
 * the keys the window can see (a rolling buffer of 2(W - 1) + 256 rows per layer). */
struct model_kv_cache;

/* A cache for a sequence of up to max_len tokens; max_len 0 means unlimited, for a model with
 * a sliding window only. Holds the activations of up to 256 tokens: a longer prompt is run in
 * chunks of that many. */
struct model_kv_cache *model_kv_cache_create(struct model *m, int max_len, gale_error *err);
void model_kv_cache_free(struct model_kv_cache *cache);
/* Tokens of the sequence so far. */
int model_kv_cache_length(const struct model_kv_cache *cache);
/* Empties the cache for a new sequence. */
void model_kv_cache_reset(struct model_kv_cache *cache);
/* logits: host [vocab] after the last of the n tokens, or NULL to skip the head (a prefill
 * whose logits are not needed). Errors, which leave the cache as it was: n < 1, a token outside
 * the vocabulary, more than max_len tokens in all, a cache made for another model. */
int model_forward_next(struct model *m, struct model_kv_cache *cache, const int32_t *tokens, int n,
                       float *logits, gale_error *err);

/* targets[b,t] = labels[b,t+1] (the last position of each row gets -100): the convention of
 * transformers' causal LM labels. */
void model_targets_from_labels(const int64_t *labels, int batch, int seq, int32_t *targets);

/* Number of target tokens of a batch (targets >= 0 and loss_mask != 0). */
long model_batch_count_targets(const struct model_batch *batch);

#endif
