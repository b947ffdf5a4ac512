/* merge: W + s * B A folded into each adapted projection as the base's tensors stream from its
 * files to the merged folder's (one sgemm per projection), through model_write_hf; trained
 * routers replace the base's. */
#include "train/merge.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/lora_io.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "util/file.h"

struct merge {
    const struct model_layout *layout; /* the base's */
    struct safetensors_set base;
    const struct model_layout *adapters;
    const int *adapter_of; /* per base tensor: the index of its lora_A in adapters, or -1 */
    const float *ab;       /* the adapters' values */
    float scale;
};

/* Base tensor t with its adapter's s * B A added, when it has one; a trained copy (a router)
 * instead of it, as PEFT's merge_and_unload keeps modules_to_save's. */
static int merged_tensor(const struct model_tensor *t, float *buffer, void *ctx, gale_error *err)
{
    const struct merge *mg = ctx;
    int a = mg->adapter_of[t - mg->layout->tensors];
    if (a >= 0 && lora_is_copy(&mg->adapters->tensors[a])) {
        memcpy(buffer, mg->ab + mg->adapters->tensors[a].offset, t->numel * sizeof *buffer);
        return 0;
    }
    if (model_read_tensor(&mg->base, t, buffer, err))
        return -1;
    if (a >= 0) {
        const struct model_tensor *A = &mg->adapters->tensors[a], *B = &mg->adapters->tensors[a + 1];
        int rank = (int)A->shape[0], rows = (int)t->shape[0], cols = (int)t->shape[1];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, rank, mg->scale, mg->ab + B->offset,
                    rank, mg->ab + A->offset, cols, 1.0f, buffer, cols);
    }
    return 0;
}

/* The base's tokenizer.model, else the adapter's, into out (when either has one). */
static int copy_tokenizer(const char *base, const char *adapter, const char *out, gale_error *err)
{
    const char *from[2] = {base, adapter};
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        char *src = gale_path_join(from[i], "tokenizer.model");
        if (gale_path_exists(src)) {
            size_t len;
            char *data = gale_read_file(src, &len, err);
            char *dst = gale_path_join(out, "tokenizer.model");
            rc = data ? gale_write_file_atomic(dst, data, len, err) : -1;
            free(data);
            free(dst);
            free(src);
            return rc;
        }
        free(src);
    }
    return rc;
}

/* The model dtype of the base's weights (its first tensor's), for the merged folder. */
static int base_dtype(const char *base, const struct safetensors_set *set, enum model_dtype *out, gale_error *err)
{
    enum safetensors_dtype d = set->n ? set->tensors[0].dtype : ST_F32;
    if (d != ST_F32 && d != ST_BF16 && d != ST_F16)
        return gale_fail(err, "%s: weights of dtype %s cannot be merged into", base, safetensors_dtype_name(d));
    *out = d == ST_BF16 ? MODEL_DTYPE_BF16 : d == ST_F16 ? MODEL_DTYPE_F16 : MODEL_DTYPE_F32;
    return 0;
}

int merge_adapter(const char *base, const char *adapter, const char *out, uint64_t shard_size, gale_error *err)
{
    struct model_config config;
    struct lora_config lora;
    char *config_path = gale_path_join(base, "config.json");
    int rc = model_config_load(config_path, &config, err) || lora_config_read(adapter, &lora, NULL, err) ? -1 : 0;
    free(config_path);
    if (rc)
        return -1;
    struct model_layout layout, adapters = {0};
    model_layout_build(&config, &layout);
    int *adapter_of = gale_xcalloc((size_t)layout.n, sizeof *adapter_of);
    struct merge mg = {&layout, {0}, &adapters, adapter_of, NULL, (float)lora_scale(&lora)};
    struct model_save_options o = {MODEL_DTYPE_F32, shard_size};
    float *ab = NULL;
    rc = -1;
    if (safetensors_open_dir(base, &mg.base, err) == 0) {
        if (base_dtype(base, &mg.base, &o.dtype, err) == 0 && model_check_tensor_names(&config, &mg.base, err) == 0 &&
            lora_layout_build(&layout, &lora, &adapters, adapter_of, err) == 0) {
            mg.ab = ab = gale_xmalloc(adapters.numel * sizeof *ab);
            if (lora_adapters_read(adapter, &adapters, NULL, ab, err) == 0 &&
                model_write_hf(&config, &layout, out, &o, merged_tensor, &mg, err) == 0)
                rc = copy_tokenizer(base, adapter, out, err);
        }
        safetensors_close(&mg.base);
    }
    if (rc)
        gale_error_prefix(err, "merging %s into %s", adapter, base);
    free(ab);
    free(adapter_of);
    model_layout_free(&adapters);
    model_layout_free(&layout);
    return rc;
}
