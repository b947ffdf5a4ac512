/* checkpoint: saving and loading a training run's state, as docs/formats.md ("A run folder") says.
 *
 *   RUN/checkpoints/step_00001000/
 *     config.json                      Hugging Face's, the weights' dtype in it
 *     model-0000N-of-0000M.safetensors the weights under the hub's names in the checkpoint's
 *     + model.safetensors.index.json   dtype (fp32 or bf16): each rank's own tensors in files of
 *                                      its own, at most shard_size bytes each (one file:
 *                                      model.safetensors and no index)
 *     master-0000N-of-0000M...         the fp32 weights the run continues from, when the
 *                                      weights above are not fp32 (resume stays exact); the
 *                                      same files and index as the weights
 *     optimizer-0000N-of-0000M...      AdamW moments: exp_avg.NAME and exp_avg_sq.NAME of the
 *     + optimizer.safetensors.index.json  tensors of model-0000N (optimizer.safetensors when one)
 *     tokenizer.model, tokenizer_config.json, special_tokens_map.json, generation_config.json
 *                                      for transformers (train/hf_files.h), when the tokenizer is known
 *     trainer_state.json               step, tokens seen, loader position, RNG seed, run
 *                                      config, world layout
 *   RUN/checkpoints/latest             "step_00001000": the newest complete checkpoint
 *
 * A save has three phases over the ranks of a job (train/trainer.c drives them, the folder
 * being shared): rank 0 makes an empty step_XXXXXXXX.tmp/ (checkpoint_begin); every rank
 * writes its own files into it, each atomically and fsynced (checkpoint_write_part: no rank
 * sends its tensors to another, but a LoRA run's expert adapters go to rank 0 for PEFT's one
 * adapter_model.safetensors); once all have, rank 0 writes the indexes (from the files'
 * headers), config.json, the tokenizer files and trainer_state.json, renames the folder and
 * replaces `latest` atomically (checkpoint_finish). A crash at any moment, of any rank, leaves
 * the previous checkpoint whole and `latest` naming a complete one. The oldest are removed
 * beyond keep_last. Loading reads tensors by name, so any layout of ranks resumes any other's
 * checkpoint. */
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
    int world_size;       /* MPI ranks: data parallel x expert parallel */
    int ep_size;          /* expert-parallel ranks */
} gale_train_state;

void train_state_clear(gale_train_state *st);

/* One rank's share of a checkpoint. */
struct checkpoint_part {
    const int *tensors;    /* indices into the trained layout (the model's, or LoRA's adapters'), in order */
    int n;
    const int *file_of;    /* each one's file (model_shard_plan over the weights' dtype) */
    int first_file, total_files; /* this part's first file in the folder's numbering, and all of them */
    const float *m, *v;    /* AdamW moments on the host: tensor t's at m + t->offset - base */
    size_t base;
    int weights;           /* 1: the tensors' weights too (0 for LoRA: rank 0's
                              checkpoint_finish writes every adapter) */
};

/* run_dir/checkpoints/step_XXXXXXXX.tmp, where every rank writes (caller frees). */
char *checkpoint_tmp_dir(const char *run_dir, long step);

/* Rank 0, first: an empty checkpoint_tmp_dir (one left by a crashed save is removed). */
int checkpoint_begin(const char *run_dir, long step, gale_error *err);

/* Every rank: its weights (in save->dtype, with fp32 master files beside them when that is
 * not f32) and moments into the folder checkpoint_begin made. */
int checkpoint_write_part(const char *tmp_dir, struct model *m, const struct checkpoint_part *part,
                          const struct model_save_options *save, gale_error *err);

/* Rank 0, once every rank's part is written: the indexes over total_files files, config.json
 * (or a LoRA run's adapters, PEFT's one file: adapters, when not NULL, holds every adapter's
 * values over lora_layout_whole's layout, gathered from the expert-parallel ranks; NULL: the
 * model's own), the tokenizer files hf describes (may be NULL), trainer_state.json;
 * then the folder is published under its step's name (one of that step already there, from a
 * run resumed at an earlier step, is replaced atomically), `latest` points at it and the oldest
 * beyond keep_last are removed. *out_dir (when not NULL) receives the final folder (caller frees). */
int checkpoint_finish(const char *run_dir, struct model *m, const gale_train_state *st, const gale_hf_files *hf,
                      int keep_last, const struct model_save_options *save, int total_files, const float *adapters,
                      char **out_dir, gale_error *err);

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

/* Loads weights into m (the fp32 master files when there are some) and moments into opt
 * (whose layout must match; opt may be NULL) from a checkpoint folder, by tensor name: a rank
 * holding a share of the experts reads those, and a ZeRO-1 shard of the optimizer takes its
 * range [begin, end) of the rank's moments, so a run resumes on any layout of ranks. */
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
