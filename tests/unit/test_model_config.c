/* test_model_config: config.json in both hub dialects (the three fixtures and real hub configs,
 * Mixtral 8x7B included), the parameter counts the hub publishes, the round trip through
 * model_config_to_json, and bad configs refused with the key and the file named. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model/config.h"
#include "util/file.h"

static struct model_config load(const char *shared, const char *rel)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", shared, rel);
    struct model_config c;
    gale_error err;
    if (model_config_load(path, &c, &err)) {
        FAIL("%s: %s", rel, err.msg);
        memset(&c, 0, sizeof c);
    }
    return c;
}

static void round_trip(const struct model_config *c, const char *name)
{
    char *json = model_config_to_json(c);
    struct model_config back;
    gale_error err;
    if (model_config_parse(json, name, &back, &err)) {
        FAIL("round trip of %s: %s", name, err.msg);
    } else {
        back.head_dim_explicit = c->head_dim_explicit;  /* always written as a number */
        CHECK_MSG(memcmp(&back, c, sizeof back) == 0, "round trip of %s changed the config", name);
    }
    free(json);
}

static void good_configs(const char *shared)
{
    struct model_config c = load(shared, "golden/llama-tiny/config.json");
    CHECK_MSG(c.kind == MODEL_LLAMA && c.head_dim == 10 && c.head_dim_explicit && c.sliding_window == 0 &&
               c.rope_theta == 10000 && c.num_kv_heads == 2 && c.rms_norm_eps == 1e-6,
           "llama-tiny fields");
    round_trip(&c, "llama-tiny");
    c = load(shared, "golden/mistral-tiny/config.json");
    CHECK_MSG(c.kind == MODEL_MISTRAL && c.sliding_window == 5 && c.head_dim == 8 && !c.head_dim_explicit &&
               c.vocab_size == 101, "mistral-tiny fields");
    round_trip(&c, "mistral-tiny");
    c = load(shared, "golden/mixtral-tiny/config.json");
    CHECK_MSG(c.kind == MODEL_MIXTRAL && c.rope_theta == 1e6 && c.head_dim == 8 && c.sliding_window == 0 &&
               c.num_experts == 4 && c.num_experts_per_tok == 2 && c.router_aux_loss_coef == 0.02,
           "mixtral-tiny fields");
    round_trip(&c, "mixtral-tiny");
    c = load(shared, "hub-configs/mistral-7b-v0.1.json");
    CHECK_MSG(c.sliding_window == 4096 && c.head_dim == 128 && c.num_kv_heads == 8, "mistral 7b fields");
    CHECK_MSG(model_config_num_params(&c) == 7241732096LL, "Mistral 7B has %lld parameters, the hub 7241732096",
           model_config_num_params(&c));
    round_trip(&c, "mistral-7b");
    c = load(shared, "hub-configs/mixtral-8x7b-v0.1.json");
    CHECK_MSG(c.num_experts == 8 && c.num_experts_per_tok == 2 && c.rope_theta == 1e6 && c.sliding_window == 0,
           "mixtral 8x7b fields");
    CHECK_MSG(model_config_num_params(&c) == 46702792704LL,
           "Mixtral 8x7B has %lld parameters, the hub 46702792704", model_config_num_params(&c));
    round_trip(&c, "mixtral-8x7b");
    c = load(shared, "hub-configs/mistral-nemo-shape.json");
    CHECK_MSG(c.head_dim == 128 && c.head_dim_explicit && c.hidden_size == 5120 && c.num_heads == 32 &&
               c.vocab_size == 131072 && c.sliding_window == 0, "mistral nemo fields (head_dim != hidden/heads)");
    round_trip(&c, "mistral-nemo");
}

/* Each bad config is refused and the message names the key and the source. */
static void bad_configs(void)
{
    static const char *base =
        "{\"model_type\": \"mistral\", \"vocab_size\": 100, \"hidden_size\": 64, "
        "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
        "\"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0, "
        "\"hidden_act\": \"silu\", \"sliding_window\": null%s}";
    static const struct {
        const char *extra;  /* appended to base (overrides by duplicate key are refused too) */
        const char *key;    /* must appear in the message */
    } cases[] = {
        {", \"model_type\": \"gpt2\"", "model_type"},  /* duplicate key */
        {"", NULL},                                      /* the good one */
    };
    gale_error err;
    char text[2048];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(text, sizeof text, base, cases[i].extra);
        struct model_config c;
        int rc = model_config_parse(text, "bad.json", &c, &err);
        if (!cases[i].key)
            CHECK_MSG(rc == 0, "base config refused: %s", err.msg);
        else
            CHECK_MSG(rc != 0 && strstr(err.msg, "bad.json"), "case %zu accepted or unnamed", i);
    }
    static const struct {
        const char *from, *to, *key;
    } edits[] = {
        {"\"mistral\"", "\"gpt2\"", "model_type"},
        {"\"num_attention_heads\": 4", "\"num_attention_heads\": 3", "num_attention_heads"},
        {"\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", "num_key_value_heads"},
        {"\"hidden_size\": 64", "\"hidden_size\": -64", "hidden_size"},
        {"\"vocab_size\": 100", "\"vocab_size\": \"100\"", "vocab_size"},
        {"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 2.5", "num_hidden_layers"},
        {"\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "hidden_act"},
        {"\"sliding_window\": null", "\"sliding_window\": -1", "sliding_window"},
        {"\"sliding_window\": null", "\"sliding_window\": null, \"attention_bias\": true", "attention_bias"},
        {"\"sliding_window\": null", "\"sliding_window\": null, \"rope_scaling\": {\"type\": \"linear\"}", "rope_scaling"},
        {"\"rope_theta\": 10000.0", "\"rope_parameters\": {\"rope_theta\": \"x\"}", "rope_theta"},
        {"\"rope_theta\": 10000.0", "\"rope_theta\": 0", "rope_theta"},
        {"\"intermediate_size\": 128, ", "", "intermediate_size"},
        {"\"mistral\"", "\"mixtral\", \"num_local_experts\": 4, \"num_experts_per_tok\": 5", "num_experts_per_tok"},
        {"\"mistral\"", "\"mixtral\", \"num_local_experts\": 0", "num_local_experts"},
        {"\"rms_norm_eps\": 1e-5", "\"rms_norm_eps\": true", "rms_norm_eps"},
        {"\"rms_norm_eps\": 1e-5", "\"rms_norm_eps\": 1e-5, \"bos_token_id\": 100", "bos_token_id"},
        {"\"rms_norm_eps\": 1e-5", "\"rms_norm_eps\": 1e-5, \"head_dim\": 15", "head_dim"},
        {"\"rms_norm_eps\": 1e-5", "\"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": 1", "tie_word_embeddings"},
    };
    for (size_t i = 0; i < sizeof edits / sizeof *edits; i++) {
        char good[2048];
        snprintf(good, sizeof good, base, "");
        char *at = strstr(good, edits[i].from);
        if (!at) {
            FAIL("edit %zu: '%s' not in the base config", i, edits[i].from);
            continue;
        }
        snprintf(text, sizeof text, "%.*s%s%s", (int)(at - good), good, edits[i].to,
                 at + strlen(edits[i].from));
        struct model_config c;
        int rc = model_config_parse(text, "bad.json", &c, &err);
        CHECK_MSG(rc != 0, "edit %s -> %s accepted", edits[i].from, edits[i].to);
        if (rc != 0)
            CHECK_MSG(strstr(err.msg, edits[i].key) && strstr(err.msg, "bad.json"),
                   "message for %s does not name the key and file: %s", edits[i].key, err.msg);
    }
    struct model_config c;
    CHECK_MSG(model_config_parse("{\"model_type\": ", "trunc.json", &c, &err) != 0 &&
               strstr(err.msg, "trunc.json:1:"), "truncated JSON: %s", err.msg);
    CHECK_MSG(model_config_parse("[1, 2]", "arr.json", &c, &err) != 0 && strstr(err.msg, "arr.json"),
           "a JSON array accepted");
    CHECK_MSG(model_config_load("/nonexistent/config.json", &c, &err) != 0 &&
               strstr(err.msg, "/nonexistent/config.json"), "missing file: %s", err.msg);
    /* a mistral without the key gets transformers' default window */
    snprintf(text, sizeof text, base, "");
    char *w = strstr(text, ", \"sliding_window\": null");
    memmove(w, w + strlen(", \"sliding_window\": null"), strlen(w + strlen(", \"sliding_window\": null")) + 1);
    CHECK_MSG(model_config_parse(text, "nowindow.json", &c, &err) == 0 && c.sliding_window == 4096,
           "mistral without sliding_window: %d", c.sliding_window);
}

int main(void)
{
    const char *shared = getenv("GALE_SHARED");
    if (!shared) {
        fprintf(stderr, "GALE_SHARED is not set\n");
        return 1;
    }
    good_configs(shared);
    bad_configs();
    return check_report("test_model_config");
}
