/* checkpoint: saving and loading a training run's state, as docs/formats.md ("A run folder") says.
 *
 *   RUN/checkpoints/step_00001000/
 *     config.json, model.safetensors   Hugging Face names and layout, in the checkpoint's
 *                                      dtype (fp32 or bf16; sharded with an index above its
 *                                      shard size, as model_save_hf_as writes)
 *     master.safetensors               the fp32 weights the run continues from, when the
 *                                      weights above are not fp32 (resume stays exact)
 *     tokenizer.model, tokenizer_config.json, special_tokens_map.json, generation_config.json
 *                                      for transformers (train/hf_files.h), when the tokenizer is known
 *     optimizer.safetensors            AdamW moments: exp_avg.NAME and exp_avg_sq.NAME per
 *                                      parameter tensor
 *     trainer_state.json               step, tokens seen, loader position, RNG seed, run
 *                                      config, world layout
 *   RUN/checkpoints/latest             "step_00001000": the newest complete checkpoint
 *
 * Everything is written into step_XXXXXXXX.tmp/, each file atomically and fsynced, then the
 * folder is renamed and `latest` replaced atomically, so a crash at any moment leaves the
 * previous checkpoint whole and `latest` naming a complete one. The oldest are removed
 * beyond keep_last. One process (rank 0) writes: a sharded optimizer's moments are gathered
 * to it, so a checkpoint does not depend on the number of ranks. */
#ifndef GALE_TRAIN_CHECKPOINT_H
#define GALE_TRAIN_CHECKPOINT_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "model/model.h"
#include "optim/adamw.h"
#include "train/hf_files.h"
#include "util/error.h"

#define GALE_TRAINER_STATE_FORMAT "gale-trainer-state"
#define GALE_TRAINER_STATE_VERSION 1

/* What, besides weights and moments, a run needs to continue exactly. */
typedef struct gale_train_state {
    long step;            /* training steps done */
    long optimizer_step;  /* AdamW updates done (fewer than step when non-finite steps were skipped) */
    int64_t tokens_seen;  /* target tokens trained on, all ranks */
    uint64_t seed;        /* the run's seed: model init and data order derive from it */
    json_t *loader;       /* loader position (loader_position_to_json) */
    json_t *config;       /* the effective run config (run_config_to_json) */
    int world_size;       /* MPI ranks; all data-parallel */
} gale_train_state;

void train_state_clear(gale_train_state *st);

/* AdamW moments of the whole model on the host, layout.numel floats each (a sharded
 * optimizer gathers them first). */
typedef struct gale_moments {
    const float *m, *v;
} gale_moments;

/* Writes a checkpoint of step st->step under run_dir/checkpoints, points `latest` at it
 * and removes the oldest beyond keep_last, with the tokenizer files hf describes (may be NULL);
 * save gives the weights' dtype and shard size (NULL: fp32, default shards). A checkpoint of
 * that step already there (from a run resumed at an earlier step) is replaced atomically.
 * *out_dir (when not NULL) receives the final folder (caller frees). */
int checkpoint_save(const char *run_dir, struct model *m, const gale_moments *moments,
                    const gale_train_state *st, const gale_hf_files *hf, int keep_last,
                    const struct model_save_options *save, char **out_dir, gale_error *err);

/* The folder `latest` names under run_dir/checkpoints (caller frees); NULL with err->msg
 * empty when the run has no checkpoint yet, NULL with a message when `latest` is broken. */
char *checkpoint_latest(const char *run_dir, gale_error *err);

/* A model folder from what the user gave: the folder itself when it is a checkpoint or a
 * plain Hugging Face folder (config.json + safetensors), or the checkpoint a run folder's
 * `latest` names (caller frees). */
char *checkpoint_resolve(const char *path, gale_error *err);

/* The same, or path itself when it is a plain Hugging Face folder (config.json): a model to
 * sample from or evaluate. */
char *checkpoint_resolve_model(const char *path, gale_error *err);

/* Reads trainer_state.json of a checkpoint folder (st owns new references). */
int checkpoint_read_state(const char *dir, gale_train_state *st, gale_error *err);

/* Loads weights into m (the fp32 master.safetensors when there is one) and moments into opt
 * (whose layout must match; opt may be NULL) from a checkpoint folder; an optimizer shard takes its range [begin, end) of the saved
 * state, so a run may resume on another number of ranks. */
int checkpoint_load_weights(const char *dir, struct model *m, struct adamw *opt, gale_error *err);

/* A model on backend `backend` ("cpu", "cuda") computing in `compute` from a checkpoint or any
 * Hugging Face folder (config.json and model.safetensors or shards), for sampling and
 * evaluation; with adapter (not NULL), the LoRA adapters of that folder (PEFT's format) on top
 * of it. */
struct model *checkpoint_open_model(const char *dir, const char *adapter, const char *backend,
                                    enum gale_dtype compute, gale_error *err);

/* A summary for people: step, tokens, model kind and parameters, config. */
int checkpoint_describe(const char *dir, FILE *out, gale_error *err);

#endif
