/* lora: low-rank adapters (LoRA, Hu et al. 2021) on a frozen model's projections, in PEFT's
 * layout. A targeted projection y = W x becomes y = W x + s * B (A dropout(x)) with A [r, in]
 * and B [out, r] trained and W frozen; s = alpha / r (alpha / sqrt(r) with rsLoRA). The
 * adapters form their own model_layout under the names PEFT saves them by
 * (base_model.model.<module>.lora_A.weight, then lora_B), so their flat buffers train,
 * clip, all-reduce and checkpoint like a model's. */
#ifndef GALE_MODEL_LORA_H
#define GALE_MODEL_LORA_H

#include "model/model.h"
#include "util/error.h"

/* The projections an adapter can target, by their module names. */
enum lora_target {
    LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN, LORA_W1, LORA_W2, LORA_W3,
    LORA_TARGETS
};

struct lora_config {
    int rank;            /* r; 0: no adapters (full fine-tuning) */
    double alpha;
    double dropout;      /* on the adapter's input, as PEFT's lora_dropout */
    unsigned targets;    /* bit (1u << lora_target) per targeted module */
    int rslora;          /* scale alpha / sqrt(r) instead of alpha / r */
    int train_router;    /* a Mixtral's routers (block_sparse_moe.gate) trained whole, as PEFT's
                            modules_to_save = ["gate"] */
};

const char *lora_target_name(enum lora_target t);
/* A comma-separated list of module names into a mask; key names the config key in errors. */
int lora_targets_parse(const char *list, const char *key, unsigned *mask, gale_error *err);
/* The list back, comma-separated, into buf. */
void lora_targets_format(unsigned mask, char *buf, size_t size);
double lora_scale(const struct lora_config *lc);

/* The target a base tensor's name belongs to, or -1 (norms, embeddings, the router, the head). */
int lora_target_of(const char *name);

/* The adapters of the base layout's targeted tensors, in its order: lora_A [r, in] then
 * lora_B [out, r] per tensor, and with train_router a trained copy of each router under PEFT's
 * saved name of a modules_to_save module (base_model.model.<router>.weight). adapter_of[i]
 * (base->n entries) receives the index of tensor i's lora_A or copy, or -1. Fails naming the
 * target when one matches no tensor of the model (train_router: when it has no router). */
int lora_layout_build(const struct model_layout *base, const struct lora_config *lc,
                      struct model_layout *out, int *adapter_of, gale_error *err);

/* lora_layout_build over the whole model of cfg (every expert's adapters, whatever share of the
 * experts a rank holds): what an adapter checkpoint holds. */
int lora_layout_whole(const struct model_config *cfg, const struct lora_config *lc, struct model_layout *out,
                      gale_error *err);

/* Whether an adapter-layout tensor is a trained copy of a base tensor (a router), not a lora_A
 * or lora_B. */
int lora_is_copy(const struct model_tensor *adapter);

/* PEFT's default init into host (adapter layout.numel floats): A Kaiming-uniform with
 * a = sqrt(5) (uniform in +-1/sqrt(in)), B zero. Deterministic in seed. The trained copies are
 * left for the caller: they start as the base's tensors. */
void lora_init_host(const struct model_layout *adapters, float *host, uint64_t seed);

#endif
