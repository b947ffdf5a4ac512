/* trainer: `gale train`: builds the model (from scratch or a Hugging Face folder), the data
 * loader and AdamW from a run config, resumes from the run's latest checkpoint when there is
 * one, and runs the loop: gradient accumulation over micro-batches (the loss of a step is
 * the mean over every target token of the global batch: targets are counted over all
 * micro-batches and ranks first), gradients all-reduced over MPI ranks, clipping, the LR
 * schedule, AdamW (its moments optionally sharded over the ranks, ZeRO-1: each rank updates
 * its share of the weights and broadcasts it); evaluation, checkpoints and metrics on their
 * schedules. SIGINT and SIGTERM save a checkpoint and stop cleanly. A non-finite loss or
 * gradient stops the run with the step and the tensors at fault, or skips the step
 * (run.nan_policy: skip).
 * Call between MPI_Init and MPI_Finalize. */
#ifndef GALE_TRAIN_TRAINER_H
#define GALE_TRAIN_TRAINER_H

#include "model/config.h"
#include "model/model.h"
#include "train/run_config.h"
#include "util/error.h"

typedef struct gale_train_options {
    long stop_at; /* stop after this step with a checkpoint, as an interruption would; 0: none */
} gale_train_options;

/* The model shape of a run: model.config's file, else model.from's config.json, with the
 * inline keys of the model section applied on top, and moe.aux_coef when set. */
int trainer_model_config(const gale_run_config *cfg, struct model_config *mc, gale_error *err);

/* The run's LoRA adapters: lora.from's adapter_config.json, else the lora keys; rank 0 when
 * the run fine-tunes every weight. */
struct lora_config;
int trainer_lora_config(const gale_run_config *cfg, struct lora_config *lc, gale_error *err);

/* The memory plan's layout of a run (model_plan): its micro-batch, sequence, precision,
 * recomputation, ZeRO-1 and LoRA adapters (lora, or NULL), on `world` ranks of which `ep` split
 * each layer's experts; sizes of a device that stores the compute dtype natively. */
struct model_plan_layout trainer_plan_layout(const gale_run_config *cfg, const struct lora_config *lora,
                                             int world, int ep);

int trainer_run(const gale_run_config *cfg, const gale_train_options *opts, gale_error *err);

#endif
