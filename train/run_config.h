/* run_config: the run YAML of `gale train` (sections model, data, optim, run, moe, backend,
 * lora)
 * with `--set section.key=value` overrides. Every key is checked against a schema: an
 * unknown key, a value of the wrong type or out of range is an error naming the key and
 * the YAML line (or the --set argument). The effective config is rendered as JSON to
 * print at start and to store in every checkpoint. */
#ifndef GALE_TRAIN_RUN_CONFIG_H
#define GALE_TRAIN_RUN_CONFIG_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "optim/schedule.h"
#include "util/error.h"

typedef struct gale_data_source {
    char *path;    /* a folder made by `gale prepare` */
    double weight; /* share of the rows drawn from it; 0 when no source gives one: in
                      proportion to their rows */
} gale_data_source;

typedef enum gale_nan_policy { GALE_NAN_STOP, GALE_NAN_SKIP } gale_nan_policy;
typedef enum gale_aux_loss_form { GALE_AUX_HF, GALE_AUX_PER_LAYER } gale_aux_loss_form;
/* what the load-balancing loss's expert fractions are counted over: each micro-batch, or the
 * step's whole global batch (every micro-batch of every rank) */
typedef enum gale_aux_scope { GALE_AUX_MICRO_BATCH, GALE_AUX_GLOBAL } gale_aux_scope;
typedef enum gale_device { GALE_DEVICE_CPU, GALE_DEVICE_CUDA } gale_device;
typedef enum gale_precision { GALE_PRECISION_FP32, GALE_PRECISION_BF16 } gale_precision;
typedef enum gale_recompute { GALE_RECOMPUTE_NONE, GALE_RECOMPUTE_LAYER } gale_recompute;
/* auto: the dtype of model.from's config.json when the run starts from one, else f32 */
typedef enum gale_checkpoint_dtype { GALE_CKPT_AUTO, GALE_CKPT_F32, GALE_CKPT_BF16 } gale_checkpoint_dtype;

typedef struct gale_run_config {
    char *file; /* the YAML it was read from */
    struct {
        char *config;  /* the shape: a Hugging Face config.json, or NULL (then from's) */
        char *from;    /* the weights to start from: a Hugging Face model folder, or NULL */
        json_t *shape; /* inline config.json keys on top of either (an object, maybe empty) */
    } model;
    struct {
        gale_data_source *sources;
        int n_sources;
        long seq_len, micro_batch, grad_accum;
        int doc_mask; /* attention and positions restart at each document */
        int on_bad_shard; /* 0 (error): a damaged shard ends the run; 1 (skip): left out, warned */
    } data;
    struct {
        double lr, min_lr, beta1, beta2, eps, weight_decay, clip;
        gale_schedule_kind schedule;
        long warmup, decay;
        int zero; /* ZeRO-1: each data-parallel rank keeps and updates 1/ranks of the moments */
    } optim;
    struct {
        long steps, tokens; /* one of them; tokens is turned into steps once the batch is known */
        uint64_t seed;
        long eval_every, eval_batches, checkpoint_every, keep_last, log_every;
        char *dir;
        gale_nan_policy nan_policy;
    } run;
    struct {
        gale_aux_loss_form aux_loss;
        double aux_coef; /* < 0: the model config's router_aux_loss_coef */
        double z_loss;
        gale_aux_scope aux_scope;
        double capacity_factor; /* 0: dropless; else each expert takes at most
                                   ceil(factor * tokens * k / E) slots of a micro-batch */
    } moe;
    struct {
        gale_device device;
        gale_precision precision; /* compute dtype: fp32, or bf16 with fp32 master weights */
        gale_recompute recompute; /* none, or layer: each layer's activations again in the backward */
        long threads;       /* OpenMP threads per rank; 0: the node's cores shared among its ranks */
        double peak_tflops; /* the machine's peak fp32 rate for the MFU estimate; 0: estimated */
    } backend;
    struct {
        long rank;       /* > 0 (or from): LoRA adapters train, the base is frozen */
        double alpha, dropout;
        char *targets;   /* comma-separated module names (a YAML list is joined) */
        unsigned target_mask;
        int rslora;
        int train_router; /* the routers trained whole (PEFT's modules_to_save ["gate"]) */
        char *from;      /* PEFT adapters to start from (their config gives r, alpha, targets) */
    } lora;
    struct {
        gale_checkpoint_dtype dtype; /* of the saved weights (master and moments stay fp32) */
        long shard_size;             /* bytes of weights per file before sharding */
    } checkpoint;
    struct {
        long ep; /* expert-parallel ranks splitting each MoE layer's experts; the world is
                    data-parallel x ep ranks */
        int overlap; /* gradient buckets reduced as the backward finishes them (else after it) */
    } parallel;
} gale_run_config;

/* Reads path and applies the overrides ("section.key=value" each) in order. */
gale_run_config *run_config_load(const char *path, char *const *overrides, int n_overrides, gale_error *err);
/* The same from YAML text in memory (name is used in messages). */
gale_run_config *run_config_parse(const char *yaml, size_t len, const char *name, char *const *overrides,
                                  int n_overrides, gale_error *err);
void run_config_free(gale_run_config *cfg);

/* Every key with its type, range or choices and default, one per line, for --help. */
void run_config_print_keys(FILE *out);

/* The effective config as a JSON object (new reference). */
json_t *run_config_to_json(const gale_run_config *cfg);

#endif
