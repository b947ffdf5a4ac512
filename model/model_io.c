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

int model_check_tensor_names(const struct model_config *cfg, const struct safetensors_set *set, gale_error *err)
{
    /* under expert parallelism the model holds a share: the other ranks' experts are expected
     * and skipped (tensors are read by name) */
    struct model_layout whole;
    model_layout_build(cfg, &whole);
    int rc = 0;
    for (int i = 0; i < set->n && rc == 0; i++)
        if (!model_layout_find(&whole, set->tensors[i].name) && !is_ignorable(set->tensors[i].name))
            rc = gale_fail(err, "unexpected tensor \"%s\" (not part of this %s config%s)", set->tensors[i].name,
                           model_kind_name(cfg->kind),
                           !strcmp(set->tensors[i].name, "lm_head.weight") ? ", which ties lm_head to embed_tokens"
                                                                            : "");
    model_layout_free(&whole);
    return rc;
}

int model_read_tensor(const struct safetensors_set *set, const struct model_tensor *t, float *buffer,
                      gale_error *err)
{
    const struct safetensors_tensor *src = safetensors_find(set, t->name);
    if (!src)
        return gale_fail(err, "missing tensor \"%s\"", t->name);
    int rc = check_shape(t, src, err) || safetensors_read_f32(src, buffer, err) ? -1 : 0;
    safetensors_release(set, src);
    return rc;
}

int model_load_tensors(struct model *m, const struct safetensors_set *set, model_tensor_filter keep,
                       void *ctx, gale_error *err)
{
    const struct model_layout *layout = model_get_layout(m);
    if (model_check_tensor_names(model_get_config(m), set, err))
        return -1;
    float *buffer = gale_xmalloc(sizeof(float) * largest_tensor(layout));
    int rc = 0;
    for (int i = 0; i < layout->n && rc == 0; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        if (keep && !keep(t, ctx))
            continue;
        rc = model_read_tensor(set, t, buffer, err);
        if (rc == 0)
            upload_tensor(m, t, buffer);
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

/* Produces the weights of tensors first.. of the layout, one at a time, in the file's dtype. */
struct save_source {
    const struct model_layout *layout;
    int first;
    enum safetensors_dtype dtype;
    float *buffer; /* one tensor */
    model_tensor_producer produce;
    void *ctx;
};

static const void *tensor_bytes(int i, void *p, gale_error *err)
{
    struct save_source *src = p;
    const struct model_tensor *t = &src->layout->tensors[src->first + i];
    if (src->produce(t, src->buffer, src->ctx, err))
        return NULL;
    if (src->dtype == ST_BF16)
        safetensors_f32_to_bf16((uint16_t *)src->buffer, src->buffer, t->numel);
    else if (src->dtype == ST_F16)
        safetensors_f32_to_f16((uint16_t *)src->buffer, src->buffer, t->numel);
    return src->buffer;
}

/* A model's weights, from its device. */
static int download_tensor(const struct model_tensor *t, float *buffer, void *ctx, gale_error *err)
{
    struct model *m = ctx;
    model_params_download_range(m, t->offset, buffer, t->numel);
    return gale_backend_sync(model_get_backend(m), err);
}

static enum safetensors_dtype file_dtype(enum model_dtype dtype)
{
    return dtype == MODEL_DTYPE_BF16 ? ST_BF16 : dtype == MODEL_DTYPE_F16 ? ST_F16 : ST_F32;
}

/* entries[i] for layout tensor i in dtype (data produced by tensor_bytes) */
static struct safetensors_entry *weight_entries(const struct model_layout *layout, enum safetensors_dtype dtype)
{
    struct safetensors_entry *entries = gale_xcalloc((size_t)layout->n, sizeof *entries);
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        entries[i] = (struct safetensors_entry){t->name, dtype, t->ndim, t->shape, NULL};
    }
    return entries;
}

int model_save_safetensors(struct model *m, const char *path, enum model_dtype dtype, gale_error *err)
{
    const struct model_layout *layout = model_get_layout(m);
    struct safetensors_entry *entries = weight_entries(layout, file_dtype(dtype));
    struct save_source src = {layout, 0, file_dtype(dtype), gale_xmalloc(sizeof(float) * largest_tensor(layout)),
                              download_tensor, m};
    int rc = safetensors_write_streamed(path, entries, layout->n, NULL, 0, tensor_bytes, &src, err);
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

/* model.safetensors.index.json: total bytes of weights and the file of each tensor. */
static int write_index(const char *dir, const struct model_layout *layout, const int *shard_of,
                       int shards, size_t dtype_size, gale_error *err)
{
    json_t *map = json_object();
    uint64_t total = 0;
    char file[64];
    for (int i = 0; i < layout->n; i++) {
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", shard_of[i] + 1, shards);
        json_object_set_new(map, layout->tensors[i].name, json_string(file));
        total += layout->tensors[i].numel * dtype_size;
    }
    json_t *root = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total,
                             "weight_map", map);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    char *path = gale_path_join(dir, "model.safetensors.index.json");
    int rc = gale_write_file_atomic(path, text, strlen(text), err);
    free(path);
    free(text);
    return rc;
}

int model_write_hf(const struct model_config *config, const struct model_layout *layout, const char *dir,
                   const struct model_save_options *o, model_tensor_producer produce, void *ctx, gale_error *err)
{
    if (gale_mkdir_p(dir, err))
        return -1;
    enum safetensors_dtype dtype = file_dtype(o->dtype);
    uint64_t limit = o->shard_size ? o->shard_size : MODEL_SHARD_SIZE_DEFAULT;
    struct safetensors_entry *entries = weight_entries(layout, dtype);
    int *shard_of = gale_xcalloc((size_t)layout->n, sizeof *shard_of);
    int shards = 1;
    uint64_t filled = 0;
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        uint64_t bytes = t->numel * safetensors_dtype_size(dtype);
        if (filled > 0 && filled + bytes > limit) {
            shards++;
            filled = 0;
        }
        shard_of[i] = shards - 1;
        filled += bytes;
    }
    struct save_source src = {layout, 0, dtype, gale_xmalloc(sizeof(float) * largest_tensor(layout)), produce, ctx};
    int rc = 0;
    for (int s = 0, first = 0; s < shards && rc == 0; s++) {
        int n = 0;
        while (first + n < layout->n && shard_of[first + n] == s)
            n++;
        char name[64];
        if (shards == 1)
            snprintf(name, sizeof name, "model.safetensors");
        else
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, shards);
        char *path = gale_path_join(dir, name);
        src.first = first;
        rc = safetensors_write_streamed(path, entries + first, n, NULL, 0, tensor_bytes, &src, err);
        free(path);
        first += n;
    }
    if (rc == 0)
        rc = shards == 1 ? remove_stale(dir, "model.safetensors.index.json", err)
                         : write_index(dir, layout, shard_of, shards,
                                       safetensors_dtype_size(dtype), err) ||
                                   remove_stale(dir, "model.safetensors", err)
                               ? -1
                               : 0;
    if (rc == 0) {
        struct model_config cfg = *config;
        cfg.dtype = o->dtype;
        char *path = gale_path_join(dir, "config.json");
        rc = model_config_save(&cfg, path, err);
        free(path);
    }
    free(src.buffer);
    free(shard_of);
    free(entries);
    return rc;
}

int model_save_hf_as(struct model *m, const char *dir, const struct model_save_options *o,
                     gale_error *err)
{
    return model_write_hf(model_get_config(m), model_get_layout(m), dir, o, download_tensor, m, err);
}

int model_save_hf(struct model *m, const char *dir, gale_error *err)
{
    struct model_save_options o = {MODEL_DTYPE_F32, MODEL_SHARD_SIZE_DEFAULT};
    return model_save_hf_as(m, dir, &o, err);
}
