/* model_io: weights in and out of a model: a seeded init from scratch, Hugging Face folders
 * (safetensors, hub names) and saving them back. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "model/backend.h"
#include "model/model.h"
#include "model/ops.h"
#include "model/rng.h"
#include "model/safetensors.h"
#include "util/file.h"

/* Output projections: their std is divided by sqrt(2 * layers) (GPT-2 style), so the residual
 * stream's variance does not grow with depth. */
static int is_output_projection(const char *name)
{
    size_t n = strlen(name);
    static const char *const suffixes[] = {".o_proj.weight", ".down_proj.weight", ".w2.weight"};
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        size_t s = strlen(suffixes[i]);
        if (n >= s && !strcmp(name + n - s, suffixes[i]))
            return 1;
    }
    return 0;
}

/* The largest tensor of the layout, in elements: the size of a one-tensor buffer. */
static size_t largest_tensor(const struct model_layout *layout)
{
    size_t most = 1;
    for (int i = 0; i < layout->n; i++)
        most = layout->tensors[i].numel > most ? layout->tensors[i].numel : most;
    return most;
}

/* Copies one tensor from host fp32 into the weights (model_params_upload_range) and waits, so
 * the buffer can be refilled; the caller refreshes the compute copy once all are in. */
static void upload_tensor(struct model *m, const struct model_tensor *t, const float *buffer)
{
    model_params_upload_range(m, t->offset, buffer, t->numel);
}

void model_init_random(struct model *m, double std, uint64_t seed)
{
    const struct model_layout *layout = model_get_layout(m);
    const struct model_config *cfg = model_get_config(m);
    float *buffer = gale_xmalloc(sizeof(float) * largest_tensor(layout));
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        if (t->ndim == 1) {
            for (size_t j = 0; j < t->numel; j++)
                buffer[j] = 1.0f;
        } else {
            double s = is_output_projection(t->name) ? std / sqrt(2.0 * cfg->num_layers) : std;
            uint64_t stream = gale_rng_stream(seed, t->name);
#pragma omp parallel for if (t->numel >= 65536)
            for (size_t j = 0; j < t->numel; j++)
                buffer[j] = (float)(s * gale_rng_normal(stream, j));
        }
        upload_tensor(m, t, buffer);
    }
    free(buffer);
    model_weights_refresh(m);
    gale_backend_wait(model_get_backend(m));
}

/* Buffers some old checkpoints carry that are not parameters. */
static int is_ignorable(const char *name)
{
    const char *suffix = "rotary_emb.inv_freq";
    size_t n = strlen(name), s = strlen(suffix);
    return n >= s && !strcmp(name + n - s, suffix);
}

static int check_shape(const struct model_tensor *want, const struct safetensors_tensor *got,
                       gale_error *err)
{
    int ok = got->ndim == want->ndim;
    for (int d = 0; ok && d < want->ndim; d++)
        ok = got->shape[d] == want->shape[d];
    if (ok)
        return 0;
    char have[128] = "", need[64];
    for (int d = 0; d < got->ndim; d++) {
        size_t len = strlen(have);
        snprintf(have + len, sizeof have - len, "%s%lld", d ? ", " : "", (long long)got->shape[d]);
    }
    if (want->ndim == 2)
        snprintf(need, sizeof need, "%lld, %lld", (long long)want->shape[0],
                 (long long)want->shape[1]);
    else
        snprintf(need, sizeof need, "%lld", (long long)want->shape[0]);
    return gale_fail(err, "tensor \"%s\" has shape [%s], the config needs [%s]", want->name, have,
                     need);
}

int model_load_tensors(struct model *m, const struct safetensors_set *set, model_tensor_filter keep,
                       void *ctx, gale_error *err)
{
    const struct model_layout *layout = model_get_layout(m);
    /* under expert parallelism the model holds a share: the other ranks' experts are expected
     * and skipped (tensors are read by name) */
    struct model_layout whole;
    model_layout_build(model_get_config(m), &whole);
    for (int i = 0; i < set->n; i++)
        if (!model_layout_find(&whole, set->tensors[i].name) && !is_ignorable(set->tensors[i].name)) {
            model_layout_free(&whole);
            return gale_fail(err, "unexpected tensor \"%s\" (not part of this %s config%s)",
                             set->tensors[i].name, model_kind_name(model_get_config(m)->kind),
                             !strcmp(set->tensors[i].name, "lm_head.weight")
                                 ? ", which ties lm_head to embed_tokens"
                                 : "");
        }
    model_layout_free(&whole);
    float *buffer = gale_xmalloc(sizeof(float) * largest_tensor(layout));
    int rc = 0;
    for (int i = 0; i < layout->n && rc == 0; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        if (keep && !keep(t, ctx))
            continue;
        const struct safetensors_tensor *src = safetensors_find(set, t->name);
        if (!src)
            rc = gale_fail(err, "missing tensor \"%s\"", t->name);
        else if (check_shape(t, src, err) || safetensors_read_f32(src, buffer, err))
            rc = -1;
        else
            upload_tensor(m, t, buffer);
        if (src)
            safetensors_release(set, src);
    }
    free(buffer);
    model_weights_refresh(m);
    if (gale_backend_sync(model_get_backend(m), err))
        rc = -1;
    return rc;
}

int model_load_hf_filtered(struct model *m, const char *dir, model_tensor_filter keep, void *ctx,
                           gale_error *err)
{
    struct safetensors_set set;
    if (safetensors_open_dir(dir, &set, err))
        return -1;
    int rc = model_load_tensors(m, &set, keep, ctx, err);
    if (rc)
        gale_error_prefix(err, "%s", dir);
    safetensors_close(&set);
    return rc;
}

int model_load_hf(struct model *m, const char *dir, gale_error *err)
{
    return model_load_hf_filtered(m, dir, NULL, NULL, err);
}

/* Produces the weights of tensors which[0..] of the layout, one at a time, in the file's dtype. */
struct save_source {
    struct model *m;
    const int *which;
    enum safetensors_dtype dtype;
    float *buffer; /* one tensor */
};

static const void *tensor_bytes(int i, void *p, gale_error *err)
{
    struct save_source *src = p;
    const struct model_tensor *t = &model_get_layout(src->m)->tensors[src->which[i]];
    struct gale_backend *be = model_get_backend(src->m);
    model_params_download_range(src->m, t->offset, src->buffer, t->numel);
    if (gale_backend_sync(be, err))
        return NULL;
    if (src->dtype == ST_BF16)
        safetensors_f32_to_bf16((uint16_t *)src->buffer, src->buffer, t->numel);
    return src->buffer;
}

static enum safetensors_dtype file_dtype(enum model_dtype dtype)
{
    return dtype == MODEL_DTYPE_BF16 ? ST_BF16 : ST_F32;
}

static int check_save_dtype(enum model_dtype dtype, const char *where, gale_error *err)
{
    if (dtype == MODEL_DTYPE_F32 || dtype == MODEL_DTYPE_BF16)
        return 0;
    return gale_fail(err, "%s: weights are saved as float32 or bfloat16, not %s", where, model_dtype_name(dtype));
}

int model_shard_plan(const struct model_layout *layout, const int *which, int n, const struct model_save_options *o,
                     int *file_of)
{
    uint64_t limit = o->shard_size ? o->shard_size : MODEL_SHARD_SIZE_DEFAULT, filled = 0;
    size_t elem = safetensors_dtype_size(file_dtype(o->dtype));
    int files = 0;
    for (int k = 0; k < n; k++) {
        uint64_t bytes = layout->tensors[which[k]].numel * elem;
        if (files == 0 || (filled > 0 && filled + bytes > limit)) {
            files++;
            filled = 0;
        }
        file_of[k] = files - 1;
        filled += bytes;
    }
    return files;
}

int model_save_part(struct model *m, const char *dir, const char *stem, const int *which, int n, const int *file_of,
                    enum model_dtype dtype, int first, int total, gale_error *err)
{
    if (check_save_dtype(dtype, dir, err))
        return -1;
    const struct model_layout *layout = model_get_layout(m);
    struct safetensors_entry *entries = gale_xcalloc(n ? (size_t)n : 1, sizeof *entries);
    for (int k = 0; k < n; k++) {
        const struct model_tensor *t = &layout->tensors[which[k]];
        entries[k] = (struct safetensors_entry){t->name, file_dtype(dtype), t->ndim, t->shape, NULL};
    }
    struct save_source src = {m, which, file_dtype(dtype), gale_xmalloc(sizeof(float) * largest_tensor(layout))};
    int rc = 0;
    for (int k = 0; k < n && rc == 0;) {
        int count = 0;
        while (k + count < n && file_of[k + count] == file_of[k])
            count++;
        char name[256];
        safetensors_shard_name(name, sizeof name, stem, first + file_of[k], total);
        char *path = gale_path_join(dir, name);
        src.which = which + k;
        rc = safetensors_write_streamed(path, entries + k, count, NULL, 0, tensor_bytes, &src, err);
        free(path);
        k += count;
    }
    free(src.buffer);
    free(entries);
    return rc;
}

/* Removes dir/name when it is there (a weights file of the other form, from an earlier save). */
static int remove_stale(const char *dir, const char *name, gale_error *err)
{
    char *path = gale_path_join(dir, name);
    int rc = 0;
    if (gale_path_exists(path) && unlink(path) != 0)
        rc = gale_fail_errno(err, "removing %s", path);
    free(path);
    return rc;
}

int model_save_config(struct model *m, const char *dir, enum model_dtype dtype, gale_error *err)
{
    struct model_config cfg = *model_get_config(m);
    cfg.dtype = dtype;
    char *config = gale_path_join(dir, "config.json");
    int rc = model_config_save(&cfg, config, err);
    free(config);
    return rc;
}

int model_save_hf_as(struct model *m, const char *dir, const struct model_save_options *o,
                     gale_error *err)
{
    if (check_save_dtype(o->dtype, dir, err) || gale_mkdir_p(dir, err))
        return -1;
    const struct model_layout *layout = model_get_layout(m);
    int *all = gale_xcalloc((size_t)layout->n, sizeof *all), *file_of = gale_xcalloc((size_t)layout->n, sizeof *file_of);
    for (int i = 0; i < layout->n; i++)
        all[i] = i;
    int shards = model_shard_plan(layout, all, layout->n, o, file_of);
    int rc = model_save_part(m, dir, "model", all, layout->n, file_of, o->dtype, 0, shards, err);
    if (rc == 0)
        rc = shards == 1 ? remove_stale(dir, "model.safetensors.index.json", err)
                         : safetensors_write_index(dir, "model", shards, err) ||
                                   remove_stale(dir, "model.safetensors", err)
                               ? -1
                               : 0;
    if (rc == 0)
        rc = model_save_config(m, dir, o->dtype, err);
    free(file_of);
    free(all);
    return rc;
}

int model_save_hf(struct model *m, const char *dir, gale_error *err)
{
    struct model_save_options o = {MODEL_DTYPE_F32, MODEL_SHARD_SIZE_DEFAULT};
    return model_save_hf_as(m, dir, &o, err);
}
