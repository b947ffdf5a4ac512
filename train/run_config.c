/* run_config: libyaml document → schema-checked struct; overrides go through the same
 * setters, so a --set value is checked exactly as a YAML value is. */
#include "train/run_config.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/lora.h"
#include "util/file.h"
#include "util/yaml_config.h"

static const char *const schedule_names[] = {"constant", "cosine", "linear", "wsd", NULL};
static const char *const nan_names[] = {"stop", "skip", NULL};
static const char *const bad_shard_names[] = {"error", "skip", NULL};
static const char *const aux_names[] = {"hf", "per_layer", NULL};
static const char *const aux_scope_names[] = {"micro_batch", "global", NULL};
static const char *const device_names[] = {"cpu", "cuda", NULL};
static const char *const precision_names[] = {"fp32", "bf16", NULL};
static const char *const recompute_names[] = {"none", "layer", NULL};
static const char *const checkpoint_dtype_names[] = {"auto", "f32", "bf16", NULL};
#define SECTION_NAMES "model, data, optim, run, moe, backend, checkpoint, lora, parallel"

typedef struct field {
    const char *section, *key;
    config_value value;
    size_t offset;
} field;

#define F(sec, k, t, member, lo, hi, ch) {#sec, #k, {t, lo, hi, ch}, offsetof(gale_run_config, sec.member)}
static const field fields[] = {
    F(model, config, CONFIG_STRING, config, 0, 0, NULL),
    F(model, from, CONFIG_STRING, from, 0, 0, NULL),
    F(data, seq_len, CONFIG_INT, seq_len, 1, 1 << 20, NULL),
    F(data, micro_batch, CONFIG_INT, micro_batch, 1, 1 << 16, NULL),
    F(data, grad_accum, CONFIG_INT, grad_accum, 1, 1 << 16, NULL),
    F(data, doc_mask, CONFIG_BOOL, doc_mask, 0, 1, NULL),
    F(data, on_bad_shard, CONFIG_ENUM, on_bad_shard, 0, 0, bad_shard_names),
    F(optim, lr, CONFIG_DOUBLE, lr, 1e-12, 10, NULL),
    F(optim, min_lr, CONFIG_DOUBLE, min_lr, 0, 10, NULL),
    F(optim, beta1, CONFIG_DOUBLE, beta1, 0, 0.999999, NULL),
    F(optim, beta2, CONFIG_DOUBLE, beta2, 0, 0.999999999, NULL),
    F(optim, eps, CONFIG_DOUBLE, eps, 1e-30, 1, NULL),
    F(optim, weight_decay, CONFIG_DOUBLE, weight_decay, 0, 10, NULL),
    F(optim, clip, CONFIG_DOUBLE, clip, 0, 1e9, NULL),
    F(optim, schedule, CONFIG_ENUM, schedule, 0, 0, schedule_names),
    F(optim, warmup, CONFIG_INT, warmup, 0, 1e12, NULL),
    F(optim, decay, CONFIG_INT, decay, 0, 1e12, NULL),
    F(optim, zero, CONFIG_BOOL, zero, 0, 1, NULL),
    F(run, steps, CONFIG_INT, steps, 1, 1e12, NULL),
    F(run, tokens, CONFIG_INT, tokens, 1, 1e18, NULL),
    F(run, seed, CONFIG_U64, seed, 0, 0, NULL),
    F(run, eval_every, CONFIG_INT, eval_every, 0, 1e12, NULL),
    F(run, eval_batches, CONFIG_INT, eval_batches, 1, 1e9, NULL),
    F(run, checkpoint_every, CONFIG_INT, checkpoint_every, 0, 1e12, NULL),
    F(run, keep_last, CONFIG_INT, keep_last, 1, 1e6, NULL),
    F(run, log_every, CONFIG_INT, log_every, 1, 1e9, NULL),
    F(run, dir, CONFIG_STRING, dir, 0, 0, NULL),
    F(run, nan_policy, CONFIG_ENUM, nan_policy, 0, 0, nan_names),
    F(moe, aux_loss, CONFIG_ENUM, aux_loss, 0, 0, aux_names),
    F(moe, aux_coef, CONFIG_DOUBLE, aux_coef, 0, 1e3, NULL),
    F(moe, z_loss, CONFIG_DOUBLE, z_loss, 0, 1e3, NULL),
    F(moe, aux_scope, CONFIG_ENUM, aux_scope, 0, 0, aux_scope_names),
    F(moe, capacity_factor, CONFIG_DOUBLE, capacity_factor, 0, 1e3, NULL),
    F(backend, device, CONFIG_ENUM, device, 0, 0, device_names),
    F(backend, precision, CONFIG_ENUM, precision, 0, 0, precision_names),
    F(backend, recompute, CONFIG_ENUM, recompute, 0, 0, recompute_names),
    F(backend, threads, CONFIG_INT, threads, 0, 4096, NULL),
    F(backend, peak_tflops, CONFIG_DOUBLE, peak_tflops, 0, 1e6, NULL),
    F(lora, rank, CONFIG_INT, rank, 0, 65536, NULL),
    F(lora, alpha, CONFIG_DOUBLE, alpha, 1e-6, 1e6, NULL),
    F(lora, dropout, CONFIG_DOUBLE, dropout, 0, 0.99, NULL),
    F(lora, targets, CONFIG_STRING, targets, 0, 0, NULL),
    F(lora, rslora, CONFIG_BOOL, rslora, 0, 1, NULL),
    F(lora, train_router, CONFIG_BOOL, train_router, 0, 1, NULL),
    F(lora, from, CONFIG_STRING, from, 0, 0, NULL),
    F(checkpoint, dtype, CONFIG_ENUM, dtype, 0, 0, checkpoint_dtype_names),
    F(checkpoint, shard_size, CONFIG_INT, shard_size, 1, 1e15, NULL),
    F(parallel, ep, CONFIG_INT, ep, 1, 65536, NULL),
    F(parallel, overlap, CONFIG_BOOL, overlap, 0, 1, NULL),
};
#undef F
#define N_FIELDS (sizeof fields / sizeof *fields)

/* Inline model shape keys: Hugging Face config.json names, passed through as JSON. */
typedef enum shape_type { SHAPE_INT, SHAPE_NUMBER, SHAPE_BOOL, SHAPE_STRING, SHAPE_INT_OR_NULL } shape_type;
static const struct shape_key {
    const char *key;
    shape_type type;
} shape_keys[] = {
    {"model_type", SHAPE_STRING},          {"vocab_size", SHAPE_INT},
    {"hidden_size", SHAPE_INT},            {"intermediate_size", SHAPE_INT},
    {"num_hidden_layers", SHAPE_INT},      {"num_attention_heads", SHAPE_INT},
    {"num_key_value_heads", SHAPE_INT},    {"head_dim", SHAPE_INT_OR_NULL},
    {"max_position_embeddings", SHAPE_INT}, {"rms_norm_eps", SHAPE_NUMBER},
    {"rope_theta", SHAPE_NUMBER},          {"sliding_window", SHAPE_INT_OR_NULL},
    {"num_local_experts", SHAPE_INT},      {"num_experts_per_tok", SHAPE_INT},
    {"router_aux_loss_coef", SHAPE_NUMBER}, {"tie_word_embeddings", SHAPE_BOOL},
    {"bos_token_id", SHAPE_INT},           {"eos_token_id", SHAPE_INT},
    {"initializer_range", SHAPE_NUMBER},
};

static void set_defaults(gale_run_config *c)
{
    c->model.shape = json_object();
    c->data.micro_batch = 1;
    c->data.grad_accum = 1;
    c->data.doc_mask = 1;
    c->optim.lr = 3e-4;
    c->optim.min_lr = 0;
    c->optim.beta1 = 0.9;
    c->optim.beta2 = 0.95;
    c->optim.eps = 1e-8;
    c->optim.weight_decay = 0.1;
    c->optim.clip = 1.0;
    c->optim.schedule = GALE_SCHEDULE_COSINE;
    c->run.eval_batches = 8;
    c->run.keep_last = 3;
    c->run.log_every = 1;
    c->run.seed = 1234;
    c->run.nan_policy = GALE_NAN_STOP;
    c->moe.aux_loss = GALE_AUX_HF;
    c->moe.aux_coef = -1;
    c->backend.device = GALE_DEVICE_CPU;
    c->lora.alpha = 8;  /* PEFT's defaults: lora_alpha 8, q_proj and v_proj for these models */
    c->lora.targets = gale_xstrdup("q_proj,v_proj");
    c->checkpoint.dtype = GALE_CKPT_AUTO;
    c->checkpoint.shard_size = 5000000000; /* transformers' save_pretrained default, "5GB" */
    c->parallel.ep = 1;
    c->parallel.overlap = 1;
}

static const field *find_field(const char *section, const char *key)
{
    for (size_t i = 0; i < N_FIELDS; i++)
        if (!strcmp(fields[i].section, section) && !strcmp(fields[i].key, key))
            return &fields[i];
    return NULL;
}

static int is_section(const char *name)
{
    static const char *const sections[] = {"model", "data", "optim", "run", "moe", "backend", "checkpoint", "lora", "parallel"};
    for (size_t i = 0; i < sizeof sections / sizeof *sections; i++)
        if (!strcmp(name, sections[i]))
            return 1;
    return 0;
}

/* Sets one field from its scalar text; `where` is "file:line" or "--set ...". */
static int set_field(gale_run_config *c, const field *f, const char *text, const char *where, gale_error *err)
{
    char key[64];
    snprintf(key, sizeof key, "%s.%s", f->section, f->key);
    return config_value_set(&f->value, (char *)c + f->offset, key, text, where, err);
}

static int set_shape_key(gale_run_config *c, const char *key, const char *text, const char *where, gale_error *err)
{
    for (size_t i = 0; i < sizeof shape_keys / sizeof *shape_keys; i++) {
        if (strcmp(shape_keys[i].key, key))
            continue;
        long n;
        double d;
        int b;
        json_t *v = NULL;
        switch (shape_keys[i].type) {
        case SHAPE_INT_OR_NULL:
            if (!strcmp(text, "null") || !strcmp(text, "~")) {
                v = json_null();
                break;
            }
            /* fall through */
        case SHAPE_INT:
            if (config_parse_long(text, &n) || n < 0)
                return gale_fail(err, "%s: model.%s must be a non-negative integer, got '%s'", where, key, text);
            v = json_integer(n);
            break;
        case SHAPE_NUMBER:
            if (config_parse_double(text, &d) || d < 0)
                return gale_fail(err, "%s: model.%s must be a non-negative number, got '%s'", where, key, text);
            v = json_real(d);
            break;
        case SHAPE_BOOL:
            if (config_parse_bool(text, &b))
                return gale_fail(err, "%s: model.%s must be true or false, got '%s'", where, key, text);
            v = json_boolean(b);
            break;
        case SHAPE_STRING:
            v = json_string(text);
            break;
        }
        json_object_set_new(c->model.shape, key, v);
        return 0;
    }
    return gale_fail(err, "%s: unknown key model.%s (a model is given by model.config, model.from or "
                          "Hugging Face config.json keys such as hidden_size)", where, key);
}

static int set_key(gale_run_config *c, const char *section, const char *key, const char *text, const char *where,
                   gale_error *err)
{
    const field *f = find_field(section, key);
    if (f)
        return set_field(c, f, text, where, err);
    if (!strcmp(section, "model"))
        return set_shape_key(c, key, text, where, err);
    if (!strcmp(section, "data") && !strcmp(key, "sources"))
        return gale_fail(err, "%s: data.sources is a list of {path, weight}; set it in the YAML file", where);
    return gale_fail(err, "%s: unknown key %s.%s", where, section, key);
}

/* ---- YAML document walking ---- */

typedef struct yaml_ctx {
    yaml_document_t *doc;
    const char *name;
} yaml_ctx;

static void where_of(const yaml_ctx *y, const yaml_node_t *node, char *buf, size_t size)
{
    config_yaml_where(y->name, node, buf, size);
}

static const char *scalar_text(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

static int read_source(gale_run_config *c, const yaml_ctx *y, yaml_node_t *item, gale_error *err)
{
    char where[512];
    where_of(y, item, where, sizeof where);
    gale_data_source src = {NULL, 0};
    if (item->type == YAML_SCALAR_NODE) {
        src.path = gale_xstrdup(scalar_text(item));
    } else if (item->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top; p++) {
            yaml_node_t *k = yaml_document_get_node(y->doc, p->key), *v = yaml_document_get_node(y->doc, p->value);
            char vwhere[512];
            where_of(y, v, vwhere, sizeof vwhere);
            const char *key = k->type == YAML_SCALAR_NODE ? scalar_text(k) : "?";
            if (v->type != YAML_SCALAR_NODE) {
                free(src.path);
                return gale_fail(err, "%s: data.sources[].%s must be a scalar", vwhere, key);
            }
            if (!strcmp(key, "path")) {
                free(src.path);
                src.path = gale_xstrdup(scalar_text(v));
            } else if (!strcmp(key, "weight")) {
                if (config_parse_double(scalar_text(v), &src.weight) || src.weight <= 0) {
                    free(src.path);
                    return gale_fail(err, "%s: data.sources[].weight must be a number > 0, got '%s'", vwhere,
                                     scalar_text(v));
                }
            } else {
                free(src.path);
                return gale_fail(err, "%s: unknown key data.sources[].%s (path, weight)", vwhere, key);
            }
        }
        if (!src.path)
            return gale_fail(err, "%s: data.sources[] entry has no path", where);
    } else {
        return gale_fail(err, "%s: data.sources[] entries are a path or {path, weight}", where);
    }
    c->data.sources = gale_xrealloc(c->data.sources, (c->data.n_sources + 1) * sizeof *c->data.sources);
    c->data.sources[c->data.n_sources++] = src;
    return 0;
}

/* lora.targets as a YAML list of names: joined with commas, checked with the rest. */
static int join_targets(gale_run_config *c, const yaml_ctx *y, yaml_node_t *list, const char *where,
                        gale_error *err)
{
    size_t len = 1;
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top; it++) {
        yaml_node_t *item = yaml_document_get_node(y->doc, *it);
        if (item->type != YAML_SCALAR_NODE)
            return gale_fail(err, "%s: lora.targets entries must be module names", where);
        len += strlen(scalar_text(item)) + 1;
    }
    char *joined = gale_xcalloc(len, 1);
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top; it++) {
        if (joined[0])
            strcat(joined, ",");
        strcat(joined, scalar_text(yaml_document_get_node(y->doc, *it)));
    }
    free(c->lora.targets);
    c->lora.targets = joined;
    return 0;
}

static int read_section(gale_run_config *c, const yaml_ctx *y, const char *section, yaml_node_t *map, gale_error *err)
{
    char where[512];
    where_of(y, map, where, sizeof where);
    if (map->type != YAML_MAPPING_NODE)
        return gale_fail(err, "%s: section '%s' must be a mapping of keys", where, section);
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key), *v = yaml_document_get_node(y->doc, p->value);
        where_of(y, k, where, sizeof where);
        if (k->type != YAML_SCALAR_NODE)
            return gale_fail(err, "%s: keys of section '%s' must be plain names", where, section);
        const char *key = scalar_text(k);
        if (!strcmp(section, "data") && !strcmp(key, "sources")) {
            if (v->type != YAML_SEQUENCE_NODE)
                return gale_fail(err, "%s: data.sources must be a list", where);
            for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++)
                if (read_source(c, y, yaml_document_get_node(y->doc, *it), err))
                    return -1;
            continue;
        }
        if (!strcmp(section, "lora") && !strcmp(key, "targets") && v->type == YAML_SEQUENCE_NODE) {
            if (join_targets(c, y, v, where, err))
                return -1;
            continue;
        }
        if (v->type != YAML_SCALAR_NODE)
            return gale_fail(err, "%s: %s.%s must be a single value", where, section, key);
        if (set_key(c, section, key, scalar_text(v), where, err))
            return -1;
    }
    return 0;
}

static int read_document(gale_run_config *c, yaml_document_t *doc, const char *name, gale_error *err)
{
    yaml_ctx y = {doc, name};
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root)
        return gale_fail(err, "%s: empty file", name);
    char where[512];
    where_of(&y, root, where, sizeof where);
    if (root->type != YAML_MAPPING_NODE)
        return gale_fail(err, "%s: a run config is a mapping of sections (" SECTION_NAMES ")",
                         where);
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key), *v = yaml_document_get_node(doc, p->value);
        where_of(&y, k, where, sizeof where);
        if (k->type != YAML_SCALAR_NODE || !is_section(scalar_text(k)))
            return gale_fail(err, "%s: unknown section '%s' (" SECTION_NAMES ")", where,
                             k->type == YAML_SCALAR_NODE ? scalar_text(k) : "?");
        if (read_section(c, &y, scalar_text(k), v, err))
            return -1;
    }
    return 0;
}

static int apply_override(gale_run_config *c, const char *arg, gale_error *err)
{
    char where[600];
    snprintf(where, sizeof where, "--set %s", arg);
    const char *eq = strchr(arg, '='), *dot = strchr(arg, '.');
    if (!eq || !dot || dot > eq)
        return gale_fail(err, "%s: expected section.key=value", where);
    char section[64], key[128];
    size_t ns = dot - arg, nk = eq - dot - 1;
    if (ns >= sizeof section || nk >= sizeof key || ns == 0 || nk == 0)
        return gale_fail(err, "%s: expected section.key=value", where);
    memcpy(section, arg, ns);
    section[ns] = 0;
    memcpy(key, dot + 1, nk);
    key[nk] = 0;
    if (!is_section(section))
        return gale_fail(err, "%s: unknown section '%s' (" SECTION_NAMES ")", where, section);
    return set_key(c, section, key, eq + 1, where, err);
}

static int check_complete(gale_run_config *c, gale_error *err)
{
    const char *name = c->file;
    if (!c->model.config && !c->model.from && json_object_size(c->model.shape) == 0)
        return gale_fail(err, "%s: no model: set model.config (a config.json), model.from (a Hugging Face "
                              "folder) or the shape keys (hidden_size, ...)", name);
    if (c->data.n_sources == 0)
        return gale_fail(err, "%s: data.sources is missing: list the prepared folders to train on", name);
    int weighted = 0;
    for (int i = 0; i < c->data.n_sources; i++)
        weighted += c->data.sources[i].weight > 0;
    if (weighted && weighted < c->data.n_sources)
        return gale_fail(err, "%s: give data.sources[].weight to every source or to none (none: in proportion "
                              "to their rows)", name);
    if (c->data.seq_len == 0)
        return gale_fail(err, "%s: data.seq_len is missing", name);
    if ((c->run.steps > 0) == (c->run.tokens > 0))
        return gale_fail(err, "%s: give exactly one of run.steps and run.tokens", name);
    if (!c->run.dir)
        return gale_fail(err, "%s: run.dir is missing: the folder for checkpoints and metrics", name);
    if (c->optim.min_lr > c->optim.lr)
        return gale_fail(err, "%s: optim.min_lr = %g is above optim.lr = %g", name, c->optim.min_lr, c->optim.lr);
    char key[600];
    snprintf(key, sizeof key, "%s: lora.targets", name);
    if ((c->lora.rank > 0 || c->lora.from) && lora_targets_parse(c->lora.targets, key, &c->lora.target_mask, err))
        return -1;
    return 0;
}

gale_run_config *run_config_parse(const char *yaml, size_t len, const char *name, char *const *overrides,
                                  int n_overrides, gale_error *err)
{
    gale_run_config *c = gale_xcalloc(1, sizeof *c);
    c->file = gale_xstrdup(name);
    set_defaults(c);
    yaml_document_t doc;
    if (config_yaml_load(&doc, yaml, len, name, err) < 0) {
        run_config_free(c);
        return NULL;
    }
    int rc = read_document(c, &doc, name, err);
    yaml_document_delete(&doc);
    for (int i = 0; rc == 0 && i < n_overrides; i++)
        rc = apply_override(c, overrides[i], err);
    if (rc == 0)
        rc = check_complete(c, err);
    if (rc) {
        run_config_free(c);
        return NULL;
    }
    return c;
}

gale_run_config *run_config_load(const char *path, char *const *overrides, int n_overrides, gale_error *err)
{
    size_t len;
    char *text = gale_read_file(path, &len, err);
    if (!text)
        return NULL;
    gale_run_config *c = run_config_parse(text, len, path, overrides, n_overrides, err);
    free(text);
    return c;
}

void run_config_free(gale_run_config *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->data.n_sources; i++)
        free(c->data.sources[i].path);
    free(c->data.sources);
    free(c->model.config);
    free(c->model.from);
    json_decref(c->model.shape);
    free(c->run.dir);
    free(c->lora.targets);
    free(c->lora.from);
    free(c->file);
    free(c);
}

static json_t *field_json(const gale_run_config *c, const field *f)
{
    return config_value_json(&f->value, (const char *)c + f->offset);
}

void run_config_print_keys(FILE *out)
{
    static const char *const type_names[] = {[CONFIG_INT] = "integer", [CONFIG_U64] = "integer",
                                             [CONFIG_DOUBLE] = "number", [CONFIG_BOOL] = "true|false",
                                             [CONFIG_STRING] = "string", [CONFIG_ENUM] = "choice"};
    gale_run_config defaults = {0};
    set_defaults(&defaults);
    for (size_t i = 0; i < N_FIELDS; i++) {
        const field *f = &fields[i];
        const config_value *v = &f->value;
        char key[64], kind[160] = "";
        snprintf(key, sizeof key, "%s.%s", f->section, f->key);
        if (v->type == CONFIG_INT)
            snprintf(kind, sizeof kind, "%s in [%.0f, %.0f]", type_names[v->type], v->min, v->max);
        else if (v->type == CONFIG_DOUBLE)
            snprintf(kind, sizeof kind, "%s in [%g, %g]", type_names[v->type], v->min, v->max);
        else if (v->type == CONFIG_ENUM)
            for (int c = 0; v->choices[c]; c++)
                snprintf(kind + strlen(kind), sizeof kind - strlen(kind), "%s%s", c ? "|" : "", v->choices[c]);
        else
            snprintf(kind, sizeof kind, "%s", type_names[v->type]);
        json_t *def = field_json(&defaults, f);
        /* a key with no default: a null string, a 0 below the range, aux_coef's -1 */
        int unset = json_is_null(def) || (json_is_integer(def) && json_integer_value(def) < v->min) ||
                    (json_is_real(def) && json_real_value(def) < v->min);
        char *def_text = json_dumps(def, JSON_ENCODE_ANY | JSON_REAL_PRECISION(6));
        fprintf(out, "  %-24s %-34s %s%s\n", key, kind, unset ? "" : "default ", unset ? "(none)" : def_text);
        free(def_text);
        json_decref(def);
    }
    fprintf(out, "  %-24s %-34s\n", "data.sources", "list of {path, weight} or paths (no weights: by rows)");
    fprintf(out, "  %-24s %-34s\n", "model.<config.json key>", "hidden_size, num_local_experts, ...");
    json_decref(defaults.model.shape);
}

json_t *run_config_to_json(const gale_run_config *c)
{
    json_t *root = json_object();
    for (size_t i = 0; i < N_FIELDS; i++) {
        json_t *sec = json_object_get(root, fields[i].section);
        if (!sec) {
            sec = json_object();
            json_object_set_new(root, fields[i].section, sec);
        }
        json_object_set_new(sec, fields[i].key, field_json(c, &fields[i]));
    }
    json_object_update(json_object_get(root, "model"), c->model.shape);
    json_t *sources = json_array();
    for (int i = 0; i < c->data.n_sources; i++)
        json_array_append_new(sources, json_pack("{s:s, s:o}", "path", c->data.sources[i].path, "weight",
                                                 c->data.sources[i].weight > 0 ? json_real(c->data.sources[i].weight)
                                                                               : json_null()));
    json_object_set_new(json_object_get(root, "data"), "sources", sources);
    return root;
}
