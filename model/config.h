/* config: the model's shape, read from (and written back as) a Hugging Face `config.json`.
 * Llama 2, Mistral and Mixtral, in both hub dialects: `rope_theta` at the top level or under
 * `rope_parameters`, `head_dim` absent, null or a number, `sliding_window` null or a number.
 * Llama 2 is Mistral without a sliding window; Mixtral adds the router and experts. */
#ifndef GALE_MODEL_CONFIG_H
#define GALE_MODEL_CONFIG_H

#include "util/error.h"

enum model_kind { MODEL_LLAMA, MODEL_MISTRAL, MODEL_MIXTRAL };

/* The dtype config.json gives the weights ("dtype", transformers 5; "torch_dtype", 4.x). */
enum model_dtype { MODEL_DTYPE_F32, MODEL_DTYPE_BF16, MODEL_DTYPE_F16 };

struct model_config {
    enum model_kind kind;
    int vocab_size;
    int hidden_size;
    int intermediate_size;         /* dense MLP width, or each expert's width (Mixtral) */
    int num_layers;                /* num_hidden_layers */
    int num_heads;                 /* num_attention_heads */
    int num_kv_heads;              /* num_key_value_heads (defaults to num_heads) */
    int head_dim;                  /* resolved: the config's number, else hidden/heads */
    int head_dim_explicit;         /* 1 when config.json gave head_dim as a number */
    double rope_theta;
    double rms_norm_eps;
    int max_position_embeddings;
    int sliding_window;            /* W keys seen by each query (itself included); 0 = none */
    int tie_word_embeddings;
    int bos_token_id, eos_token_id;  /* -1 when absent or null */
    double initializer_range;      /* the std of a from-scratch init (default 0.02) */
    enum model_dtype dtype;        /* the weights' dtype as config.json says (default f32) */
    /* Mixtral only (num_experts == 0 for dense models) */
    int num_experts;               /* num_local_experts */
    int num_experts_per_tok;       /* k of the top-k */
    double router_aux_loss_coef;
};

/* Parses config.json text; `source` (a path) names the file in errors, which also name the
 * key at fault. Unsupported features (biases, rope scaling, hidden_act other than silu) are
 * errors, not silently ignored. */
int model_config_parse(const char *json_text, const char *source, struct model_config *cfg,
                       gale_error *err);

/* Reads and parses the file at path. */
int model_config_load(const char *path, struct model_config *cfg, gale_error *err);

/* Checks sizes and divisibility; model_config_parse calls it. */
int model_config_validate(const struct model_config *cfg, const char *source, gale_error *err);

/* config.json text that transformers loads as is (caller frees). */
char *model_config_to_json(const struct model_config *cfg);

/* Writes model_config_to_json atomically to path. */
int model_config_save(const struct model_config *cfg, const char *path, gale_error *err);

/* "float32", "bfloat16" or "float16", as config.json writes it. */
const char *model_dtype_name(enum model_dtype dtype);

/* "llama", "mistral" or "mixtral". */
const char *model_kind_name(enum model_kind kind);

/* Parameter count of the whole model. */
long long model_config_num_params(const struct model_config *cfg);

#endif
