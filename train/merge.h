/* merge: LoRA adapters folded into their base, W' = W + s * B A for every adapted projection,
 * written as a full Hugging Face folder in the base's dtype (what `gale merge` does). */
#ifndef GALE_TRAIN_MERGE_H
#define GALE_TRAIN_MERGE_H

#include <stdint.h>

#include "util/error.h"

/* base: a Hugging Face folder (or gale checkpoint); adapter: PEFT's format; out: the folder to
 * write (config.json, the weights in the base's dtype sharded as save_pretrained does at
 * shard_size bytes, 0: its default 5 GB; the tokenizer when either has one). The weights stream
 * one tensor at a time: the merge holds one tensor and the adapters, never the model. */
int merge_adapter(const char *base, const char *adapter, const char *out, uint64_t shard_size, gale_error *err);

#endif
