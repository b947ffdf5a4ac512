/* merge: W + s * B A folded into each adapted projection as the base's tensors stream from its
 * files to the merged folder's (one sgemm per projection), through model_write_hf; trained
 * routers replace the base's. */
#include "train/merge.h"

#include <cblas.h>
#include <dirent.h>
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

/* 1 when a and b name the same existing folder. */
static int same_folder(const char *a, const char *b)
{
    char *ra = realpath(a, NULL), *rb = realpath(b, NULL);
    int same = ra && rb && !strcmp(ra, rb);
    free(ra);
    free(rb);
    return same;
}

/* out may be replaced: it does not exist, or it is an empty folder or a model folder (it has a
 * config.json, e.g. an earlier merge's). Anything else is a user's folder, refused. */
static int check_out(const char *base, const char *adapter, const char *out, gale_error *err)
{
    if (same_folder(out, base) || same_folder(out, adapter))
        return gale_fail(err, "--out %s is the base or the adapter folder: the merge reads them while it writes", out);
    if (!gale_path_exists(out))
        return 0;
    DIR *d = opendir(out);
    if (!d)
        return gale_fail_errno(err, "--out %s", out);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));)
        entries += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    char *config = gale_path_join(out, "config.json");
    int model = gale_path_exists(config);
    free(config);
    if (entries && !model)
        return gale_fail(err, "--out %s exists and is not a model folder (no config.json): give a new or empty folder", out);
    return 0;
}

/* The merged folder written whole in tmp replaces out: out moves aside, tmp takes its name,
 * the old one is removed; a merge killed at any moment leaves out as it was. */
static int publish(const char *tmp, const char *out, gale_error *err)
{
    if (!gale_path_exists(out))
        return gale_rename_durable(tmp, out, err);
    size_t n = strlen(out) + 8;
    char *old = gale_xmalloc(n);
    snprintf(old, n, "%s.old", out);
    int rc = (gale_path_exists(old) && gale_remove_tree(old, err)) || gale_rename_durable(out, old, err) ||
                     gale_rename_durable(tmp, out, err) || gale_remove_tree(old, err)
                 ? -1
                 : 0;
    free(old);
    return rc;
}

int merge_adapter(const char *base, const char *adapter, const char *out, uint64_t shard_size, gale_error *err)
{
    if (check_out(base, adapter, out, err))
        return -1;
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
    size_t tmp_len = strlen(out) + 8;
    char *tmp = gale_xmalloc(tmp_len);
    snprintf(tmp, tmp_len, "%s.tmp", out);
    rc = gale_path_exists(tmp) && gale_remove_tree(tmp, err) ? -2 : -1;
    if (rc == -1 && safetensors_open_dir(base, &mg.base, err) == 0) {
        if (base_dtype(base, &mg.base, &o.dtype, err) == 0 && model_check_tensor_names(&config, &mg.base, err) == 0 &&
            lora_layout_build(&layout, &lora, &adapters, adapter_of, err) == 0) {
            mg.ab = ab = gale_xmalloc(adapters.numel * sizeof *ab);
            if (lora_adapters_read(adapter, &adapters, NULL, ab, err) == 0 &&
                model_write_hf(&config, &layout, tmp, &o, merged_tensor, &mg, err) == 0 &&
                copy_tokenizer(base, adapter, tmp, err) == 0 && gale_fsync_path(tmp, err) == 0)
                rc = publish(tmp, out, err);
        }
        safetensors_close(&mg.base);
    }
    if (rc) {
        gale_error_prefix(err, "merging %s into %s", adapter, base);
        gale_error ignored;  /* the first error is the one to report */
        if (gale_path_exists(tmp))
            gale_remove_tree(tmp, &ignored);
    }
    free(tmp);
    free(ab);
    free(adapter_of);
    model_layout_free(&adapters);
    model_layout_free(&layout);
    return rc;
}
