/* model_io: weights in and out of a model: a seeded init from scratch, Hugging Face folders
 * (safetensors, hub names) and saving them back. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
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

void model_init_random(struct model *m, double std, uint64_t seed)
{
    const struct model_layout *layout = model_get_layout(m);
    const struct model_config *cfg = model_get_config(m);
    float *host = gale_xmalloc(sizeof(float) * layout->numel);
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        float *dst = host + t->offset;
        if (t->ndim == 1) {
            for (size_t j = 0; j < t->numel; j++)
                dst[j] = 1.0f;
            continue;
        }
        double s = is_output_projection(t->name) ? std / sqrt(2.0 * cfg->num_layers) : std;
        uint64_t stream = gale_rng_stream(seed, t->name);
#pragma omp parallel for if (t->numel >= 65536)
        for (size_t j = 0; j < t->numel; j++)
            dst[j] = (float)(s * gale_rng_normal(stream, j));
    }
    model_params_upload(m, host);
    free(host);
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

int model_load_tensors(struct model *m, const struct safetensors_set *set, gale_error *err)
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
    float *host = gale_xmalloc(sizeof(float) * layout->numel);
    int rc = 0;
    for (int i = 0; i < layout->n && rc == 0; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        const struct safetensors_tensor *src = safetensors_find(set, t->name);
        if (!src)
            rc = gale_fail(err, "missing tensor \"%s\"", t->name);
        else if (check_shape(t, src, err) || safetensors_read_f32(src, host + t->offset, err))
            rc = -1;
    }
    if (rc == 0)
        model_params_upload(m, host);
    free(host);
    return rc;
}

int model_load_hf(struct model *m, const char *dir, gale_error *err)
{
    struct safetensors_set set;
    if (safetensors_open_dir(dir, &set, err))
        return -1;
    int rc = model_load_tensors(m, &set, err);
    if (rc)
        gale_error_prefix(err, "%s", dir);
    safetensors_close(&set);
    return rc;
}

int model_save_hf(struct model *m, const char *dir, gale_error *err)
{
    const struct model_layout *layout = model_get_layout(m);
    if (gale_mkdir_p(dir, err))
        return -1;
    float *host = gale_xmalloc(sizeof(float) * layout->numel);
    model_params_download(m, host);
    struct safetensors_entry *entries = gale_xcalloc((size_t)layout->n, sizeof *entries);
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        entries[i] = (struct safetensors_entry){t->name, ST_F32, t->ndim, t->shape, host + t->offset};
    }
    char *weights = gale_path_join(dir, "model.safetensors");
    char *config = gale_path_join(dir, "config.json");
    int rc = safetensors_write(weights, entries, layout->n, NULL, 0, err);
    if (rc == 0)
        rc = model_config_save(model_get_config(m), config, err);
    free(weights);
    free(config);
    free(entries);
    free(host);
    return rc;
}
