/* config: Hugging Face config.json <-> struct model_config. */
#include "model/config.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/file.h"

const char *model_kind_name(enum model_kind kind)
{
    switch (kind) {
    case MODEL_LLAMA: return "llama";
    case MODEL_MISTRAL: return "mistral";
    case MODEL_MIXTRAL: return "mixtral";
    }
    return "?";
}

/* 1 with the value of key in *v; 0 when it is absent or null, which is an error (-1) when it is
 * required. */
static int get_value(json_t *root, const char *key, int required, json_t **v, const char *source, gale_error *err)
{
    *v = json_object_get(root, key);
    if (*v && !json_is_null(*v))
        return 1;
    return required ? gale_fail(err, "%s: missing key \"%s\"", source, key) : 0;
}

/* A key that is absent or null leaves *out untouched; anything but an integer is an error. */
static int get_int(json_t *root, const char *key, int required, int *out, const char *source,
                   gale_error *err)
{
    json_t *v;
    int present = get_value(root, key, required, &v, source, err);
    if (present <= 0)
        return present;
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)))
        d = json_real_value(v);
    else
        return gale_fail(err, "%s: key \"%s\" must be an integer", source, key);
    if (d < -2147483648.0 || d > 2147483647.0)
        return gale_fail(err, "%s: key \"%s\" = %.0f is out of range", source, key, d);
    *out = (int)d;
    return 0;
}

static int get_real(json_t *root, const char *key, int required, double *out, const char *source,
                    gale_error *err)
{
    json_t *v;
    int present = get_value(root, key, required, &v, source, err);
    if (present <= 0)
        return present;
    if (!json_is_number(v))
        return gale_fail(err, "%s: key \"%s\" must be a number", source, key);
    *out = json_number_value(v);
    if (!isfinite(*out))
        return gale_fail(err, "%s: key \"%s\" must be finite", source, key);
    return 0;
}

static int get_bool(json_t *root, const char *key, int *out, const char *source, gale_error *err)
{
    json_t *v;
    if (!get_value(root, key, 0, &v, source, err))
        return 0;
    if (!json_is_boolean(v))
        return gale_fail(err, "%s: key \"%s\" must be true or false", source, key);
    *out = json_is_true(v);
    return 0;
}

/* Features gale does not implement must not be silently dropped from a model. */
static int refuse_unsupported(json_t *root, const char *source, gale_error *err)
{
    static const char *const false_keys[] = {"attention_bias", "mlp_bias"};
    for (size_t i = 0; i < sizeof false_keys / sizeof *false_keys; i++) {
        int on = 0;
        if (get_bool(root, false_keys[i], &on, source, err))
            return -1;
        if (on)
            return gale_fail(err, "%s: key \"%s\" = true is not supported", source, false_keys[i]);
    }
    json_t *act = json_object_get(root, "hidden_act");
    if (act && !json_is_null(act)) {
        if (!json_is_string(act))
            return gale_fail(err, "%s: key \"hidden_act\" must be a string", source);
        if (strcmp(json_string_value(act), "silu") != 0)
            return gale_fail(err, "%s: key \"hidden_act\" = \"%s\" is not supported (only silu)",
                             source, json_string_value(act));
    }
    json_t *scaling = json_object_get(root, "rope_scaling");
    if (scaling && !json_is_null(scaling))
        return gale_fail(err, "%s: key \"rope_scaling\" is not supported (only plain RoPE)", source);
    json_t *jitter = json_object_get(root, "router_jitter_noise");
    if (jitter && !json_is_null(jitter) && (!json_is_number(jitter) || json_number_value(jitter) != 0))
        return gale_fail(err, "%s: key \"router_jitter_noise\" must be 0", source);
    return 0;
}

/* rope_theta at the top level (classic) or rope_parameters.rope_theta (newer dialect). */
static int get_rope_theta(json_t *root, struct model_config *cfg, const char *source,
                          gale_error *err)
{
    json_t *params = json_object_get(root, "rope_parameters");
    if (params && !json_is_null(params)) {
        if (!json_is_object(params))
            return gale_fail(err, "%s: key \"rope_parameters\" must be an object", source);
        json_t *type = json_object_get(params, "rope_type");
        if (type && !json_is_null(type) &&
            (!json_is_string(type) || strcmp(json_string_value(type), "default") != 0))
            return gale_fail(err, "%s: key \"rope_parameters.rope_type\" must be \"default\"",
                             source);
        if (json_object_get(params, "rope_theta"))
            return get_real(params, "rope_theta", 1, &cfg->rope_theta, source, err);
    }
    return get_real(root, "rope_theta", 0, &cfg->rope_theta, source, err);
}

static int get_kind(json_t *root, struct model_config *cfg, const char *source, gale_error *err)
{
    json_t *type = json_object_get(root, "model_type");
    if (!type)
        return gale_fail(err, "%s: missing key \"model_type\"", source);
    if (!json_is_string(type))
        return gale_fail(err, "%s: key \"model_type\" must be a string", source);
    const char *s = json_string_value(type);
    if (!strcmp(s, "llama"))
        cfg->kind = MODEL_LLAMA;
    else if (!strcmp(s, "mistral"))
        cfg->kind = MODEL_MISTRAL;
    else if (!strcmp(s, "mixtral"))
        cfg->kind = MODEL_MIXTRAL;
    else
        return gale_fail(err, "%s: key \"model_type\" = \"%s\" is not supported "
                              "(llama, mistral or mixtral)", source, s);
    return 0;
}

static int get_head_dim(json_t *root, struct model_config *cfg, const char *source,
                        gale_error *err)
{
    cfg->head_dim = 0;
    if (get_int(root, "head_dim", 0, &cfg->head_dim, source, err))
        return -1;
    cfg->head_dim_explicit = cfg->head_dim != 0;
    if (!cfg->head_dim_explicit) {
        if (cfg->num_heads <= 0 || cfg->hidden_size % cfg->num_heads != 0)
            return gale_fail(err, "%s: key \"num_attention_heads\" = %d does not divide "
                                  "\"hidden_size\" = %d", source, cfg->num_heads, cfg->hidden_size);
        cfg->head_dim = cfg->hidden_size / cfg->num_heads;
    }
    return 0;
}

const char *model_dtype_name(enum model_dtype dtype)
{
    static const char *const names[] = {"float32", "bfloat16", "float16"};
    return names[dtype];
}

/* "dtype" (transformers 5) or else "torch_dtype" (4.x); absent or null: float32 */
static int get_dtype(json_t *root, struct model_config *cfg, const char *source, gale_error *err)
{
    const char *key = json_object_get(root, "dtype") ? "dtype" : "torch_dtype";
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    for (int d = MODEL_DTYPE_F32; d <= MODEL_DTYPE_F16; d++)
        if (json_is_string(v) && !strcmp(json_string_value(v), model_dtype_name(d))) {
            cfg->dtype = d;
            return 0;
        }
    return gale_fail(err, "%s: %s must be \"float32\", \"bfloat16\" or \"float16\"", source, key);
}

static int parse_fields(json_t *root, struct model_config *cfg, const char *source,
                        gale_error *err)
{
    if (get_kind(root, cfg, source, err) || refuse_unsupported(root, source, err))
        return -1;
    if (get_int(root, "vocab_size", 1, &cfg->vocab_size, source, err) ||
        get_int(root, "hidden_size", 1, &cfg->hidden_size, source, err) ||
        get_int(root, "intermediate_size", 1, &cfg->intermediate_size, source, err) ||
        get_int(root, "num_hidden_layers", 1, &cfg->num_layers, source, err) ||
        get_int(root, "num_attention_heads", 1, &cfg->num_heads, source, err))
        return -1;
    cfg->num_kv_heads = cfg->num_heads;
    if (get_int(root, "num_key_value_heads", 0, &cfg->num_kv_heads, source, err) ||
        get_int(root, "max_position_embeddings", 0, &cfg->max_position_embeddings, source, err) ||
        get_int(root, "bos_token_id", 0, &cfg->bos_token_id, source, err) ||
        get_int(root, "eos_token_id", 0, &cfg->eos_token_id, source, err) ||
        get_real(root, "rms_norm_eps", 0, &cfg->rms_norm_eps, source, err) ||
        get_real(root, "initializer_range", 0, &cfg->initializer_range, source, err) ||
        get_bool(root, "tie_word_embeddings", &cfg->tie_word_embeddings, source, err) ||
        get_rope_theta(root, cfg, source, err) || get_dtype(root, cfg, source, err))
        return -1;
    if (get_head_dim(root, cfg, source, err))
        return -1;
    /* transformers' MistralConfig defaults sliding_window to 4096 when the key is absent; a
     * null means none. Llama has no sliding window at all. */
    if (cfg->kind == MODEL_MISTRAL && !json_object_get(root, "sliding_window"))
        cfg->sliding_window = 4096;
    if (cfg->kind != MODEL_LLAMA &&
        get_int(root, "sliding_window", 0, &cfg->sliding_window, source, err))
        return -1;
    if (cfg->kind == MODEL_MIXTRAL) {
        cfg->num_experts = 8;
        cfg->num_experts_per_tok = 2;
        cfg->router_aux_loss_coef = 0.001;  /* MixtralConfig's defaults */
        if (get_int(root, "num_local_experts", 0, &cfg->num_experts, source, err) ||
            get_int(root, "num_experts_per_tok", 0, &cfg->num_experts_per_tok, source, err) ||
            get_real(root, "router_aux_loss_coef", 0, &cfg->router_aux_loss_coef, source, err))
            return -1;
    }
    return 0;
}

static void set_defaults(struct model_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->rope_theta = 10000.0;
    cfg->rms_norm_eps = 1e-6;
    cfg->max_position_embeddings = 4096;
    cfg->bos_token_id = -1;
    cfg->eos_token_id = -1;
    cfg->initializer_range = 0.02;
}

int model_config_parse(const char *json_text, const char *source, struct model_config *cfg,
                       gale_error *err)
{
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return gale_fail(err, "%s:%d:%d: invalid JSON: %s", source, jerr.line, jerr.column,
                         jerr.text);
    int rc = -1;
    if (!json_is_object(root))
        gale_fail(err, "%s: the top level must be a JSON object", source);
    else {
        set_defaults(cfg);
        rc = parse_fields(root, cfg, source, err);
        if (rc == 0)
            rc = model_config_validate(cfg, source, err);
    }
    json_decref(root);
    return rc;
}

int model_config_load(const char *path, struct model_config *cfg, gale_error *err)
{
    char *text = gale_read_file(path, NULL, err);
    if (!text)
        return -1;
    int rc = model_config_parse(text, path, cfg, err);
    free(text);
    return rc;
}

int model_config_validate(const struct model_config *cfg, const char *source, gale_error *err)
{
    const struct {
        const char *key;
        int value;
    } positive[] = {
        {"vocab_size", cfg->vocab_size},
        {"hidden_size", cfg->hidden_size},
        {"intermediate_size", cfg->intermediate_size},
        {"num_hidden_layers", cfg->num_layers},
        {"num_attention_heads", cfg->num_heads},
        {"num_key_value_heads", cfg->num_kv_heads},
        {"head_dim", cfg->head_dim},
        {"max_position_embeddings", cfg->max_position_embeddings},
    };
    for (size_t i = 0; i < sizeof positive / sizeof *positive; i++)
        if (positive[i].value <= 0)
            return gale_fail(err, "%s: key \"%s\" = %d must be positive", source, positive[i].key,
                             positive[i].value);
    if (cfg->num_heads % cfg->num_kv_heads != 0)
        return gale_fail(err, "%s: key \"num_key_value_heads\" = %d does not divide "
                              "\"num_attention_heads\" = %d", source, cfg->num_kv_heads,
                         cfg->num_heads);
    if (cfg->head_dim % 2 != 0)
        return gale_fail(err, "%s: key \"head_dim\" = %d must be even (rotate-half RoPE)", source,
                         cfg->head_dim);
    if (!(cfg->rope_theta > 0))
        return gale_fail(err, "%s: key \"rope_theta\" must be positive", source);
    if (!(cfg->rms_norm_eps > 0))
        return gale_fail(err, "%s: key \"rms_norm_eps\" must be positive", source);
    if (!(cfg->initializer_range >= 0))
        return gale_fail(err, "%s: key \"initializer_range\" must not be negative", source);
    if (cfg->sliding_window < 0)
        return gale_fail(err, "%s: key \"sliding_window\" = %d must not be negative", source,
                         cfg->sliding_window);
    if (cfg->bos_token_id >= cfg->vocab_size || cfg->eos_token_id >= cfg->vocab_size)
        return gale_fail(err, "%s: key \"%s\" is not below \"vocab_size\" = %d", source,
                         cfg->bos_token_id >= cfg->vocab_size ? "bos_token_id" : "eos_token_id",
                         cfg->vocab_size);
    if (cfg->kind == MODEL_MIXTRAL) {
        if (cfg->num_experts <= 0)
            return gale_fail(err, "%s: key \"num_local_experts\" = %d must be positive", source,
                             cfg->num_experts);
        if (cfg->num_experts_per_tok <= 0 || cfg->num_experts_per_tok > cfg->num_experts)
            return gale_fail(err, "%s: key \"num_experts_per_tok\" = %d must be in 1..%d", source,
                             cfg->num_experts_per_tok, cfg->num_experts);
        if (!(cfg->router_aux_loss_coef >= 0))
            return gale_fail(err, "%s: key \"router_aux_loss_coef\" must not be negative", source);
    } else if (cfg->num_experts != 0) {
        return gale_fail(err, "%s: experts are only supported with model_type mixtral", source);
    }
    return 0;
}

static void set_int_or_null(json_t *o, const char *key, int value, int present)
{
    json_object_set_new(o, key, present ? json_integer(value) : json_null());
}

char *model_config_to_json(const struct model_config *cfg)
{
    static const char *const architectures[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                                "MixtralForCausalLM"};
    json_t *o = json_object();
    json_object_set_new(o, "architectures", json_pack("[s]", architectures[cfg->kind]));
    json_object_set_new(o, "model_type", json_string(model_kind_name(cfg->kind)));
    json_object_set_new(o, "vocab_size", json_integer(cfg->vocab_size));
    json_object_set_new(o, "hidden_size", json_integer(cfg->hidden_size));
    json_object_set_new(o, "intermediate_size", json_integer(cfg->intermediate_size));
    json_object_set_new(o, "num_hidden_layers", json_integer(cfg->num_layers));
    json_object_set_new(o, "num_attention_heads", json_integer(cfg->num_heads));
    json_object_set_new(o, "num_key_value_heads", json_integer(cfg->num_kv_heads));
    json_object_set_new(o, "head_dim", json_integer(cfg->head_dim));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    json_object_set_new(o, "max_position_embeddings", json_integer(cfg->max_position_embeddings));
    json_object_set_new(o, "rms_norm_eps", json_real(cfg->rms_norm_eps));
    json_object_set_new(o, "rope_theta", json_real(cfg->rope_theta));
    json_object_set_new(o, "initializer_range", json_real(cfg->initializer_range));
    json_object_set_new(o, "tie_word_embeddings", json_boolean(cfg->tie_word_embeddings));
    set_int_or_null(o, "bos_token_id", cfg->bos_token_id, cfg->bos_token_id >= 0);
    set_int_or_null(o, "eos_token_id", cfg->eos_token_id, cfg->eos_token_id >= 0);
    if (cfg->kind == MODEL_LLAMA) {
        json_object_set_new(o, "attention_bias", json_false());
        json_object_set_new(o, "mlp_bias", json_false());
    } else {
        set_int_or_null(o, "sliding_window", cfg->sliding_window, cfg->sliding_window > 0);
    }
    if (cfg->kind == MODEL_MIXTRAL) {
        json_object_set_new(o, "num_local_experts", json_integer(cfg->num_experts));
        json_object_set_new(o, "num_experts_per_tok", json_integer(cfg->num_experts_per_tok));
        json_object_set_new(o, "router_aux_loss_coef", json_real(cfg->router_aux_loss_coef));
        json_object_set_new(o, "router_jitter_noise", json_real(0.0));
    }
    /* both spellings: transformers 4.x reads torch_dtype, 5.x dtype */
    json_object_set_new(o, "torch_dtype", json_string(model_dtype_name(cfg->dtype)));
    json_object_set_new(o, "dtype", json_string(model_dtype_name(cfg->dtype)));
    json_object_set_new(o, "use_cache", json_true());
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(o);
    size_t n = strlen(text);
    char *out = gale_xmalloc(n + 2);
    memcpy(out, text, n);
    out[n] = '\n';
    out[n + 1] = 0;
    free(text);
    return out;
}

int model_config_save(const struct model_config *cfg, const char *path, gale_error *err)
{
    char *text = model_config_to_json(cfg);
    int rc = gale_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

long long model_config_num_params(const struct model_config *cfg)
{
    /* 128-bit, saturated: an absurd config (2^30 experts) must not wrap to a small count */
    __int128 h = cfg->hidden_size, inter = cfg->intermediate_size, hd = cfg->head_dim;
    __int128 attn = h * hd * (2 * (__int128)cfg->num_heads + 2 * (__int128)cfg->num_kv_heads);
    __int128 mlp = cfg->kind == MODEL_MIXTRAL ? (__int128)cfg->num_experts * 3 * h * inter + (__int128)cfg->num_experts * h
                                              : 3 * h * inter;
    __int128 per_layer = attn + mlp + 2 * h;
    __int128 embed = (__int128)cfg->vocab_size * h;
    __int128 n = embed * (cfg->tie_word_embeddings ? 1 : 2) + h + per_layer * cfg->num_layers;
    return n > LLONG_MAX ? LLONG_MAX : (long long)n;
}
