/* merge: LoRA adapters folded into their base, W' = W + s * B A for every adapted projection,
 * written as a full Hugging Face folder in the base's dtype (what `gale merge` does). */
#ifndef GALE_TRAIN_MERGE_H
#define GALE_TRAIN_MERGE_H

#include "util/error.h"

/* base: a Hugging Face folder (or gale checkpoint); adapter: PEFT's format; out: the folder to
 * write (config.json, model.safetensors in the base's dtype, the tokenizer when either has one). */
int merge_adapter(const char *base, const char *adapter, const char *out, gale_error *err);

#endif
