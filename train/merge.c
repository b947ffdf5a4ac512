/* merge: W + s * B A on the host (one sgemm per projection), written in the base's dtype. */
#include "train/merge.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/lora.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "train/checkpoint.h"
#include "util/file.h"

#define ADAPTER_PREFIX "base_model.model."
#define LORA_A_SUFFIX ".lora_A.weight"

/* The base tensor an adapter's lora_A belongs to. */
static const struct model_tensor *adapted(const struct model_layout *layout, const char *lora_a)
{
    char name[MODEL_TENSOR_NAME_MAX];
    size_t n = strlen(lora_a) - strlen(ADAPTER_PREFIX) - strlen(LORA_A_SUFFIX);
    snprintf(name, sizeof name, "%.*s.weight", (int)n, lora_a + strlen(ADAPTER_PREFIX));
    return model_layout_find(layout, name);
}

/* IEEE half precision of f, rounded to nearest even (overflow to infinity, NaN kept). */
static uint16_t f16_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
    int exp = (int)((x >> 23) & 0xff), e = exp - 127 + 15;
    if (exp == 0xff)
        return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00);
    int shift = 13;                      /* normal: drop 13 of the 23 mantissa bits */
    uint32_t kept = ((uint32_t)e << 10) | (mant >> 13), rem = mant & 0x1fff;
    if (e <= 0) {                        /* subnormal: units of 2^-24 */
        if (e < -10)
            return (uint16_t)sign;
        shift = 14 - e;
        mant |= 0x800000;
        kept = mant >> shift;
        rem = mant & ((1u << shift) - 1);
    }
    uint32_t mid = 1u << (shift - 1);
    kept += rem > mid || (rem == mid && (kept & 1));  /* a carry rounds up into the exponent */
    return (uint16_t)(sign | kept);
}

/* n floats into dtype (F32, BF16 or F16; round to nearest even) in out. */
static void convert(const float *x, size_t n, enum safetensors_dtype dtype, void *out)
{
    for (size_t i = 0; i < n; i++) {
        if (dtype == ST_BF16) {
            float r = gale_round_bf16(x[i]);
            uint32_t bits;
            memcpy(&bits, &r, sizeof bits);
            ((uint16_t *)out)[i] = (uint16_t)(bits >> 16);
        } else if (dtype == ST_F16) {
            ((uint16_t *)out)[i] = f16_bits(x[i]);
        } else {
            ((float *)out)[i] = x[i];
        }
    }
}

static int write_weights(const struct model_layout *layout, const float *host, enum safetensors_dtype dtype,
                         const char *path, gale_error *err)
{
    size_t size = safetensors_dtype_size(dtype);
    char *data = gale_xmalloc(layout->numel * size);
    struct safetensors_entry *entries = gale_xcalloc((size_t)layout->n, sizeof *entries);
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        convert(host + t->offset, t->numel, dtype, data + t->offset * size);
        entries[i] = (struct safetensors_entry){t->name, dtype, t->ndim, t->shape, data + t->offset * size};
    }
    int rc = safetensors_write(path, entries, layout->n, NULL, 0, err);
    free(entries);
    free(data);
    return rc;
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

int merge_adapter(const char *base, const char *adapter, const char *out, gale_error *err)
{
    struct safetensors_set set;
    if (safetensors_open_dir(base, &set, err))
        return -1;
    enum safetensors_dtype dtype = set.n ? set.tensors[0].dtype : ST_F32;
    safetensors_close(&set);
    if (dtype != ST_F32 && dtype != ST_BF16 && dtype != ST_F16)
        return gale_fail(err, "%s: weights of dtype %s cannot be merged into", base, safetensors_dtype_name(dtype));
    struct model *m = checkpoint_open_model(base, adapter, "cpu", GALE_F32, err);
    if (!m)
        return -1;
    const struct model_layout *layout = model_get_layout(m);
    struct model_trainable tr;
    model_trainable(m, &tr);
    const struct model_layout *adapters = tr.layout;
    float *w = gale_xmalloc(layout->numel * sizeof *w), *ab = gale_xmalloc(adapters->numel * sizeof *ab);
    model_params_download(m, w);
    model_lora_download(m, ab);
    float scale = (float)lora_scale(model_lora_config(m));
    for (int i = 0; i < adapters->n; i += 2) {  /* lora_A, then its lora_B */
        const struct model_tensor *a = &adapters->tensors[i], *b = &adapters->tensors[i + 1];
        const struct model_tensor *t = adapted(layout, a->name);
        int rank = (int)a->shape[0], rows = (int)t->shape[0], cols = (int)t->shape[1];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, rank, scale, ab + b->offset, rank,
                    ab + a->offset, cols, 1.0f, w + t->offset, cols);
    }
    char *weights = gale_path_join(out, "model.safetensors"), *config = gale_path_join(out, "config.json");
    int rc = -1;
    if (gale_mkdir_p(out, err) == 0 && write_weights(layout, w, dtype, weights, err) == 0 &&
        model_config_save(model_get_config(m), config, err) == 0)
        rc = copy_tokenizer(base, adapter, out, err);
    if (rc)
        gale_error_prefix(err, "merging %s into %s", adapter, base);
    free(weights);
    free(config);
    free(w);
    free(ab);
    model_free(m);
    return rc;
}
