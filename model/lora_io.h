/* lora_io: adapters in and out of PEFT's format, the folder that
 * peft.PeftModel.from_pretrained(model, dir) loads:
 *   adapter_config.json        peft_type LORA, r, lora_alpha, lora_dropout, target_modules,
 *                              use_rslora, base_model_name_or_path, ...
 *   adapter_model.safetensors  base_model.model.<module>.lora_A.weight [r, in] and
 *                              .lora_B.weight [out, r] per adapted projection (fp32), and
 *                              with modules_to_save ["gate"] each trained router whole,
 *                              base_model.model.<router>.weight
 * Only what gale trains is accepted: a bias, DoRA, per-module ranks or alphas, layer subsets
 * and modules trained fully other than the routers are refused, naming the key. */
#ifndef GALE_MODEL_LORA_IO_H
#define GALE_MODEL_LORA_IO_H

#include "model/lora.h"
#include "model/model.h"
#include "util/error.h"

/* Reads dir/adapter_config.json; *base_model (caller frees; may be NULL) receives
 * base_model_name_or_path when it is a string. */
int lora_config_read(const char *dir, struct lora_config *lc, char **base_model, gale_error *err);

/* Reads dir/adapter_model.safetensors into host (layout->numel floats) by the names of layout
 * (lora_layout_build's); a missing or misshapen tensor, or one that known (NULL: layout) lacks,
 * is an error naming it (known: the whole model's adapters when layout is a rank's share). */
int lora_adapters_read(const char *dir, const struct model_layout *layout, const struct model_layout *known,
                       float *host, gale_error *err);

/* Loads dir/adapter_model.safetensors into the model's adapters; a missing, unexpected or
 * misshapen tensor is an error naming it. */
int model_lora_load(struct model *m, const char *dir, gale_error *err);

/* Writes adapter_config.json and adapter_model.safetensors (the adapters of layout, values in
 * host) into dir (made when missing), each atomically. base_model names the base (a folder or a
 * hub id; NULL: none). */
int lora_adapters_write(const char *dir, const struct lora_config *lc, const char *base_model,
                        const struct model_layout *layout, const float *host, gale_error *err);

/* lora_adapters_write of the model's adapters. */
int model_lora_save(struct model *m, const struct lora_config *lc, const char *base_model,
                    const char *dir, gale_error *err);

#endif
