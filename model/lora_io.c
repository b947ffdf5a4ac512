/* lora_io: PEFT's adapter_config.json and adapter_model.safetensors. */
#include "model/lora_io.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"
#include "util/file.h"

/* Keys that must hold their "off" value: what gale does not train. */
static int refuse_unsupported(json_t *cfg, const char *path, gale_error *err)
{
    static const char *const must_be_false[] = {"use_dora", "fan_in_fan_out"};
    static const char *const must_be_null[] = {"layers_to_transform"};
    static const char *const must_be_empty[] = {"rank_pattern", "alpha_pattern"};
    for (size_t i = 0; i < sizeof must_be_false / sizeof *must_be_false; i++)
        if (json_is_true(json_object_get(cfg, must_be_false[i])))
            return gale_fail(err, "%s: %s is true: gale trains plain LoRA only", path, must_be_false[i]);
    for (size_t i = 0; i < sizeof must_be_null / sizeof *must_be_null; i++) {
        json_t *v = json_object_get(cfg, must_be_null[i]);
        if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
            return gale_fail(err, "%s: %s is set: gale adapts every layer", path, must_be_null[i]);
    }
    for (size_t i = 0; i < sizeof must_be_empty / sizeof *must_be_empty; i++) {
        json_t *v = json_object_get(cfg, must_be_empty[i]);
        if (v && json_object_size(v) > 0)
            return gale_fail(err, "%s: %s is not empty: gale uses one rank and one alpha", path, must_be_empty[i]);
    }
    json_t *bias = json_object_get(cfg, "bias");
    if (bias && (!json_is_string(bias) || strcmp(json_string_value(bias), "none")))
        return gale_fail(err, "%s: bias must be \"none\"", path);
    return 0;
}

/* modules_to_save: none, or ["gate"] (a Mixtral's routers, trained whole). */
static int read_modules_to_save(json_t *list, const char *path, int *train_router, gale_error *err)
{
    *train_router = 0;
    if (!list || json_is_null(list) || (json_is_array(list) && json_array_size(list) == 0))
        return 0;
    json_t *only = json_array_get(list, 0);
    if (json_array_size(list) != 1 || !json_is_string(only) || strcmp(json_string_value(only), "gate"))
        return gale_fail(err, "%s: modules_to_save must be null or [\"gate\"] (a Mixtral's routers): gale trains "
                              "no other module fully", path);
    *train_router = 1;
    return 0;
}

static int read_targets(json_t *list, const char *path, unsigned *mask, gale_error *err)
{
    if (!json_is_array(list) || json_array_size(list) == 0)
        return gale_fail(err, "%s: target_modules must be a list of module names (a regex is not supported)",
                         path);
    char joined[256] = "";
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *s = json_array_get(list, i);
        if (!json_is_string(s))
            return gale_fail(err, "%s: target_modules[%zu] must be a string", path, i);
        size_t used = strlen(joined);
        snprintf(joined + used, sizeof joined - used, "%s%s", i ? "," : "", json_string_value(s));
    }
    char key[600];
    snprintf(key, sizeof key, "%s: target_modules", path);
    return lora_targets_parse(joined, key, mask, err);
}

int lora_config_read(const char *dir, struct lora_config *lc, char **base_model, gale_error *err)
{
    char *path = gale_path_join(dir, "adapter_config.json");
    json_error_t jerr;
    json_t *cfg = json_load_file(path, 0, &jerr);
    int rc = -1;
    memset(lc, 0, sizeof *lc);
    if (base_model)
        *base_model = NULL;
    if (!json_is_object(cfg)) {
        gale_fail(err, "%s:%d: %s", path, jerr.line, cfg ? "not a JSON object" : jerr.text);
        goto done;
    }
    json_t *type = json_object_get(cfg, "peft_type"), *r = json_object_get(cfg, "r");
    json_t *alpha = json_object_get(cfg, "lora_alpha"), *dropout = json_object_get(cfg, "lora_dropout");
    if (!json_is_string(type) || strcmp(json_string_value(type), "LORA")) {
        gale_fail(err, "%s: peft_type must be \"LORA\"", path);
        goto done;
    }
    if (!json_is_integer(r) || json_integer_value(r) < 1 || json_integer_value(r) > 65536) {
        gale_fail(err, "%s: r must be an integer in [1, 65536]", path);
        goto done;
    }
    if (!json_is_number(alpha) || (dropout && !json_is_number(dropout))) {
        gale_fail(err, "%s: lora_alpha (and lora_dropout when given) must be numbers", path);
        goto done;
    }
    lc->rank = (int)json_integer_value(r);
    lc->alpha = json_number_value(alpha);
    lc->dropout = dropout ? json_number_value(dropout) : 0;
    lc->rslora = json_is_true(json_object_get(cfg, "use_rslora"));
    if (lc->dropout < 0 || lc->dropout >= 1) {
        gale_fail(err, "%s: lora_dropout must be in [0, 1)", path);
        goto done;
    }
    if (refuse_unsupported(cfg, path, err) ||
        read_targets(json_object_get(cfg, "target_modules"), path, &lc->targets, err) ||
        read_modules_to_save(json_object_get(cfg, "modules_to_save"), path, &lc->train_router, err))
        goto done;
    json_t *base = json_object_get(cfg, "base_model_name_or_path");
    if (base_model && json_is_string(base))
        *base_model = gale_xstrdup(json_string_value(base));
    rc = 0;
done:
    json_decref(cfg);
    free(path);
    return rc;
}

int lora_adapters_read(const char *dir, const struct model_layout *layout, const struct model_layout *known,
                       float *host, gale_error *err)
{
    known = known ? known : layout;
    char *path = gale_path_join(dir, "adapter_model.safetensors");
    struct safetensors_set set;
    if (safetensors_open(path, &set, err)) {
        free(path);
        return -1;
    }
    int rc = 0;
    for (int i = 0; rc == 0 && i < set.n; i++)
        if (!model_layout_find(known, set.tensors[i].name))
            rc = gale_fail(err, "%s: unexpected tensor \"%s\" (not an adapter of this config's targets)", path,
                           set.tensors[i].name);
    for (int i = 0; rc == 0 && i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        const struct safetensors_tensor *src = safetensors_find(&set, t->name);
        if (!src)
            rc = gale_fail(err, "%s: missing tensor \"%s\"", path, t->name);
        else if (src->ndim != 2 || src->shape[0] != t->shape[0] || src->shape[1] != t->shape[1])
            rc = gale_fail(err, "%s: tensor \"%s\" is not [%lld, %lld]", path, t->name, (long long)t->shape[0],
                           (long long)t->shape[1]);
        else
            rc = safetensors_read_f32(src, host + t->offset, err);
    }
    safetensors_close(&set);
    free(path);
    return rc;
}

int model_lora_load(struct model *m, const char *dir, gale_error *err)
{
    if (!model_has_lora(m))
        return gale_fail(err, "%s: the model has no adapters to load into", dir);
    struct model_trainable tr;
    model_trainable(m, &tr);
    /* under expert parallelism the file holds every expert's adapters, the model its share */
    struct model_layout adapters;
    float *host = gale_xmalloc(tr.layout->numel * sizeof *host);
    int rc = lora_layout_whole(model_get_config(m), model_lora_config(m), &adapters, err);
    if (rc == 0)
        rc = lora_adapters_read(dir, tr.layout, &adapters, host, err);
    model_layout_free(&adapters);
    if (rc == 0)
        model_lora_upload(m, host);
    free(host);
    return rc;
}

static json_t *config_json(const struct lora_config *lc, const char *base_model)
{
    json_t *targets = json_array();
    for (int t = 0; t < LORA_TARGETS; t++)
        if (lc->targets & (1u << t))
            json_array_append_new(targets, json_string(lora_target_name(t)));
    json_t *to_save = lc->train_router ? json_pack("[s]", "gate") : json_null();
    return json_pack("{s:s, s:s, s:i, s:f, s:f, s:o, s:s, s:b, s:b, s:b, s:b, s:b, s:o, s:n, s:n, s:{}, s:{}, "
                     "s:s?, s:n}",
                     "peft_type", "LORA", "task_type", "CAUSAL_LM", "r", lc->rank, "lora_alpha", lc->alpha,
                     "lora_dropout", lc->dropout, "target_modules", targets, "bias", "none", "use_rslora",
                     lc->rslora, "use_dora", 0, "fan_in_fan_out", 0, "inference_mode", 1, "init_lora_weights", 1,
                     "modules_to_save", to_save, "layers_to_transform", "layers_pattern", "rank_pattern",
                     "alpha_pattern", "base_model_name_or_path", base_model, "revision");
}

int lora_adapters_write(const char *dir, const struct lora_config *lc, const char *base_model,
                        const struct model_layout *layout, const float *host, gale_error *err)
{
    if (gale_mkdir_p(dir, err))
        return -1;
    struct safetensors_entry *entries = gale_xcalloc((size_t)layout->n, sizeof *entries);
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        entries[i] = (struct safetensors_entry){t->name, ST_F32, t->ndim, t->shape, host + t->offset};
    }
    char *weights = gale_path_join(dir, "adapter_model.safetensors");
    char *config = gale_path_join(dir, "adapter_config.json");
    int rc = safetensors_write(weights, entries, layout->n, NULL, 0, err);
    if (rc == 0) {
        json_t *j = config_json(lc, base_model);
        char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        rc = gale_write_file_atomic(config, text, strlen(text), err);
        free(text);
        json_decref(j);
    }
    free(weights);
    free(config);
    free(entries);
    return rc;
}

int model_lora_save(struct model *m, const struct lora_config *lc, const char *base_model, const char *dir,
                    gale_error *err)
{
    struct model_trainable tr;
    model_trainable(m, &tr);
    float *host = gale_xmalloc(tr.layout->numel * sizeof *host);
    model_lora_download(m, host);
    int rc = lora_adapters_write(dir, lc, base_model, tr.layout, host, err);
    free(host);
    return rc;
}
