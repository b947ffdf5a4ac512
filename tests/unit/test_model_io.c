/* test_model_io: Hugging Face folders in and out, tensor by tensor. A bf16 save holds the fp32
 * weights rounded to nearest even (config.json saying bfloat16) and loads back as them; an f32
 * save sharded by a tiny shard size (index + model-0000N-of-0000M files, no single file) loads
 * back bit-identical, and a later unsharded save of the same folder drops the index; a filter
 * loads only the tensors it keeps, leaving the others untouched; on a bf16 backend, loading and an
 * init leave the compute copy equal to the master rounded to bf16; an f16 save holds them rounded
 * to nearest even halves.
 * Then the memory: with a ~330 MB model, the peak resident memory (VmHWM, reset through
 * /proc/self/clear_refs) grows by about one tensor while saving and loading, not by the model
 * (the whole-model host copy that loading and saving made before would fail it). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu_backend.h"
#include "model/model.h"
#include "model/ops.h"
#include "model/safetensors.h"
#include "util/file.h"

static struct model_config llama(int vocab, int hidden, int inter, int layers, int heads)
{
    struct model_config c = {0};
    c.kind = MODEL_LLAMA;
    c.vocab_size = vocab;
    c.hidden_size = hidden;
    c.intermediate_size = inter;
    c.num_layers = layers;
    c.num_heads = c.num_kv_heads = heads;
    c.head_dim = hidden / heads;
    c.rope_theta = 1e4;
    c.rms_norm_eps = 1e-5;
    c.max_position_embeddings = 64;
    c.bos_token_id = c.eos_token_id = -1;
    c.initializer_range = 0.02;
    return c;
}

static float *params_of(struct model *m)
{
    size_t n = model_get_layout(m)->numel;
    float *host = gale_xmalloc(n * sizeof *host);
    model_params_download(m, host);
    return host;
}

static int in_layer_1(const struct model_tensor *t, void *ctx)
{
    (void)ctx;
    return strstr(t->name, ".layers.1.") != NULL;
}

static int exists_in(const char *dir, const char *name)
{
    char *path = gale_path_join(dir, name);
    int yes = gale_path_exists(path);
    free(path);
    return yes;
}

/* On a backend computing in bf16, the count of compute-copy weights that are not the master's
 * rounded to bf16 (the CPU keeps that copy in fp32 containers in host memory). */
static size_t stale_compute_copy(struct model *m)
{
    size_t n = model_get_layout(m)->numel, stale = 0;
    const float *master = model_params(m), *copy = model_weights(m);
    for (size_t i = 0; i < n; i++)
        stale += !copy || copy[i] != gale_round_bf16(master[i]);
    return stale;
}

static void check_formats(void)
{
    gale_error err;
    struct model_config cfg = llama(64, 16, 32, 2, 2);
    struct model *a = model_create(&cfg, cpu_backend(), NULL, &err);
    struct model *b = model_create(&cfg, cpu_backend(), NULL, &err);
    model_init_random(a, 0.5, 1);
    float *pa = params_of(a);
    size_t n = model_get_layout(a)->numel;
    char dir[] = "/tmp/gale-test-model-io-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }

    struct model_save_options bf16 = {MODEL_DTYPE_BF16, 0};
    struct model_config back;
    char *config = gale_path_join(dir, "config.json");
    CHECK_MSG(model_save_hf_as(a, dir, &bf16, &err) == 0, "bf16 save: %s", err.msg);
    CHECK_MSG(model_config_load(config, &back, &err) == 0 && back.dtype == MODEL_DTYPE_BF16,
              "bf16 save: config.json does not say bfloat16");
    CHECK_MSG(model_load_hf(b, dir, &err) == 0, "bf16 load: %s", err.msg);
    float *pb = params_of(b);
    uint16_t *rounded = gale_xmalloc(n * sizeof *rounded);
    safetensors_f32_to_bf16(rounded, pa, n);
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)rounded[i] << 16, got;
        memcpy(&got, pb + i, 4);
        wrong += got != u;
    }
    CHECK_MSG(wrong == 0, "bf16 round trip: %zu of %zu weights are not the rounded fp32 ones", wrong, n);
    free(pb);

    struct model_save_options sharded = {MODEL_DTYPE_F32, 2000};
    CHECK_MSG(model_save_hf_as(a, dir, &sharded, &err) == 0, "sharded save: %s", err.msg);
    /* save_pretrained's rule: tensors in order, a new file when the next would pass the size */
    int shards = 1;
    size_t filled = 0;
    for (int i = 0; i < model_get_layout(a)->n; i++) {
        size_t bytes = model_get_layout(a)->tensors[i].numel * 4;
        if (filled > 0 && filled + bytes > sharded.shard_size) {
            shards++;
            filled = 0;
        }
        filled += bytes;
    }
    char first[64], last[64];
    snprintf(first, sizeof first, "model-00001-of-%05d.safetensors", shards);
    snprintf(last, sizeof last, "model-%05d-of-%05d.safetensors", shards, shards);
    CHECK_MSG(shards > 2 && exists_in(dir, "model.safetensors.index.json") && exists_in(dir, first) &&
                  exists_in(dir, last) && !exists_in(dir, "model.safetensors"),
              "sharded save: expected an index, %s .. %s, and no model.safetensors", first, last);
    CHECK_MSG(model_load_hf(b, dir, &err) == 0, "sharded load: %s", err.msg);
    pb = params_of(b);
    CHECK_MSG(!memcmp(pa, pb, n * sizeof *pa), "sharded f32 round trip is not bit-identical");
    free(pb);

    struct model *c = model_create(&cfg, cpu_backend(), NULL, &err);
    CHECK_MSG(model_load_hf_filtered(c, dir, in_layer_1, NULL, &err) == 0, "filtered load: %s", err.msg);
    float *pc = params_of(c);
    const struct model_layout *layout = model_get_layout(c);
    int kept_ok = 1, others_zero = 1;
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        for (size_t j = 0; j < t->numel; j++) {
            if (in_layer_1(t, NULL))
                kept_ok &= pc[t->offset + j] == pa[t->offset + j];
            else
                others_zero &= pc[t->offset + j] == 0;
        }
    }
    CHECK_MSG(kept_ok && others_zero, "filtered load: kept tensors equal %d, the others untouched %d", kept_ok,
              others_zero);
    free(pc);

    CHECK_MSG(model_save_hf(a, dir, &err) == 0, "single save: %s", err.msg);
    CHECK_MSG(exists_in(dir, "model.safetensors") && !exists_in(dir, "model.safetensors.index.json"),
              "an unsharded save over a sharded one must drop the index");
    /* loading and an init write the fp32 master; the compute copy must follow them */
    struct gale_backend *be16 = gale_backend_create("cpu", GALE_BF16, &err);
    CHECK_MSG(be16 != NULL, "bf16 backend: %s", err.msg);
    struct model *d = be16 ? model_create(&cfg, be16, NULL, &err) : NULL;
    if (d) {
        model_init_random(d, 0.5, 2);
        CHECK_MSG(stale_compute_copy(d) == 0, "init: the bf16 compute copy is not the master's");
        CHECK_MSG(model_load_hf(d, dir, &err) == 0, "bf16-mode load: %s", err.msg);
        CHECK_MSG(stale_compute_copy(d) == 0, "load: the bf16 compute copy is not the master's");
        model_free(d);
    }
    gale_backend_free(be16);

    /* f16: the weights rounded to nearest even halves (loaded back and rounded again, which a
     * half survives unchanged: test_safetensors), config.json saying float16 */
    struct model_save_options f16 = {MODEL_DTYPE_F16, 0};
    CHECK_MSG(model_save_hf_as(a, dir, &f16, &err) == 0, "f16 save: %s", err.msg);
    CHECK_MSG(model_config_load(config, &back, &err) == 0 && back.dtype == MODEL_DTYPE_F16,
              "f16 save: config.json does not say float16");
    CHECK_MSG(model_load_hf(b, dir, &err) == 0, "f16 load: %s", err.msg);
    pb = params_of(b);
    uint16_t *halves = gale_xmalloc(n * sizeof *halves), *loaded = gale_xmalloc(n * sizeof *loaded);
    safetensors_f32_to_f16(halves, pa, n);
    safetensors_f32_to_f16(loaded, pb, n);
    wrong = 0;
    for (size_t i = 0; i < n; i++)
        wrong += halves[i] != loaded[i];
    CHECK_MSG(wrong == 0, "f16 round trip: %zu of %zu weights are not the rounded fp32 ones", wrong, n);
    free(pb), free(halves), free(loaded);

    gale_remove_tree(dir, &err);
    free(config);
    free(rounded);
    free(pa);
    model_free(a);
    model_free(b);
    model_free(c);
}

/* VmHWM and VmRSS in bytes */
static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n))
            kb = atol(line + n + 1);
    if (f)
        fclose(f);
    return kb * 1024;
}

/* Resets VmHWM to the current resident size; 0 when the kernel allows it. */
static int reset_peak(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f)
        return -1;
    int rc = fputs("5", f) < 0;
    return fclose(f) || rc ? -1 : 0;
}

static void check_memory(void)
{
    gale_error err;
    struct model_config cfg = llama(8000, 1024, 4096, 4, 8);
    struct model *m = model_create(&cfg, cpu_backend(), NULL, &err);
    model_init_random(m, 0.02, 2); /* every page of the parameters resident before measuring */
    const struct model_layout *layout = model_get_layout(m);
    long model_bytes = (long)(layout->numel * sizeof(float)), largest = 0;
    for (int i = 0; i < layout->n; i++)
        largest = (long)layout->tensors[i].numel * 4 > largest ? (long)layout->tensors[i].numel * 4 : largest;
    char dir[] = "/tmp/gale-test-model-io-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    if (reset_peak()) {
        printf("SKIP the memory checks: /proc/self/clear_refs cannot reset the peak here\n");
        gale_remove_tree(dir, &err);
        model_free(m);
        return;
    }
    long slack = 16l << 20;
    const char *what[] = {"saving (f32, 100 MB shards)", "loading them", "saving (bf16)", "loading bf16"};
    for (int step = 0; step < 4; step++) {
        reset_peak();
        long before = status_kb("VmRSS:");
        int rc;
        if (step % 2 == 0) {
            struct model_save_options o = {step ? MODEL_DTYPE_BF16 : MODEL_DTYPE_F32, 100000000};
            rc = model_save_hf_as(m, dir, &o, &err);
        } else {
            rc = model_load_hf(m, dir, &err);
        }
        long extra = status_kb("VmHWM:") - before;
        /* a save holds one fp32 tensor; a load one fp32 tensor and that tensor's mapped pages */
        long allowed = (step % 2 ? 2 : 1) * largest + slack;
        printf("%-28s peak +%6.1f MB (model %.1f MB, largest tensor %.1f MB)\n", what[step], extra / 1e6,
               model_bytes / 1e6, largest / 1e6);
        CHECK_MSG(rc == 0, "%s: %s", what[step], err.msg);
        CHECK_MSG(extra <= allowed, "%s: the peak grew by %.1f MB, more than %.1f MB (one tensor)", what[step],
                  extra / 1e6, allowed / 1e6);
    }
    gale_remove_tree(dir, &err);
    model_free(m);
}

int main(void)
{
    check_formats();
    check_memory();
    return check_report("test_model_io");
}
