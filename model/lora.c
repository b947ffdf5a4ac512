/* lora: adapter configuration, layout under PEFT's names, and PEFT's default init. */
#include "model/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/rng.h"

/* Module names, and the suffix of the base tensors each one adapts. */
static const struct {
    const char *name, *suffix;
} targets[LORA_TARGETS] = {
    [LORA_Q] = {"q_proj", ".self_attn.q_proj.weight"},
    [LORA_K] = {"k_proj", ".self_attn.k_proj.weight"},
    [LORA_V] = {"v_proj", ".self_attn.v_proj.weight"},
    [LORA_O] = {"o_proj", ".self_attn.o_proj.weight"},
    [LORA_GATE] = {"gate_proj", ".mlp.gate_proj.weight"},
    [LORA_UP] = {"up_proj", ".mlp.up_proj.weight"},
    [LORA_DOWN] = {"down_proj", ".mlp.down_proj.weight"},
    [LORA_W1] = {"w1", ".w1.weight"},
    [LORA_W2] = {"w2", ".w2.weight"},
    [LORA_W3] = {"w3", ".w3.weight"},
};

const char *lora_target_name(enum lora_target t)
{
    return t < LORA_TARGETS ? targets[t].name : "?";
}

int lora_targets_parse(const char *list, const char *key, unsigned *mask, gale_error *err)
{
    *mask = 0;
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        const char *word = p;
        while (n && (*word == ' ')) {
            word++;
            n--;
        }
        while (n && word[n - 1] == ' ')
            n--;
        int found = -1;
        for (int t = 0; t < LORA_TARGETS; t++)
            if (strlen(targets[t].name) == n && !strncmp(word, targets[t].name, n))
                found = t;
        if (found < 0)
            return gale_fail(err, "%s: unknown target '%.*s' (q_proj, k_proj, v_proj, o_proj, gate_proj, "
                                  "up_proj, down_proj, w1, w2, w3)", key, (int)n, word);
        *mask |= 1u << found;
        p = word + n;
        p += strspn(p, " ");
        if (*p == ',')
            p++;
    }
    if (!*mask)
        return gale_fail(err, "%s: no target given (e.g. q_proj,v_proj)", key);
    return 0;
}

void lora_targets_format(unsigned mask, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = 0;
    for (int t = 0; t < LORA_TARGETS && used < size; t++)
        if (mask & (1u << t))
            used += snprintf(buf + used, size - used, "%s%s", used ? "," : "", targets[t].name);
}

double lora_scale(const struct lora_config *lc)
{
    return lc->rslora ? lc->alpha / sqrt((double)lc->rank) : lc->alpha / lc->rank;
}

int lora_target_of(const char *name)
{
    size_t n = strlen(name);
    for (int t = 0; t < LORA_TARGETS; t++) {
        size_t s = strlen(targets[t].suffix);
        if (n >= s && !strcmp(name + n - s, targets[t].suffix))
            return t;
    }
    return -1;
}

#define ROUTER_SUFFIX ".block_sparse_moe.gate.weight"

static int is_router(const char *name)
{
    size_t n = strlen(name), s = strlen(ROUTER_SUFFIX);
    return n >= s && !strcmp(name + n - s, ROUTER_SUFFIX);
}

int lora_is_copy(const struct model_tensor *adapter)
{
    return !strstr(adapter->name, ".lora_A.") && !strstr(adapter->name, ".lora_B.");
}

/* One tensor appended to the adapter layout (tensors preallocated): module's adapter `which`,
 * or with which NULL the module's trained copy. */
static void append(struct model_layout *out, const char *module, const char *which, int64_t rows,
                   int64_t cols)
{
    struct model_tensor *t = &out->tensors[out->n++];
    memset(t, 0, sizeof *t);
    if (which)
        snprintf(t->name, sizeof t->name, "base_model.model.%s.%s.weight", module, which);
    else
        snprintf(t->name, sizeof t->name, "base_model.model.%s.weight", module);
    t->ndim = 2;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->numel = (size_t)rows * (size_t)cols;
    t->offset = out->numel;
    t->decay = 1;
    out->numel += t->numel;
}

int lora_layout_build(const struct model_layout *base, const struct lora_config *lc,
                      struct model_layout *out, int *adapter_of, gale_error *err)
{
    memset(out, 0, sizeof *out);
    unsigned seen = 0;
    int count = 0, routers = 0;
    for (int i = 0; i < base->n; i++) {
        int t = lora_target_of(base->tensors[i].name);
        count += t >= 0 && (lc->targets & (1u << t));
        routers += lc->train_router && is_router(base->tensors[i].name);
    }
    if (lc->train_router && !routers)
        return gale_fail(err, "lora.train_router: this model has no router (a Mixtral's block_sparse_moe.gate)");
    out->tensors = gale_xcalloc(2 * (size_t)count + (size_t)routers + 1, sizeof *out->tensors);
    for (int i = 0; i < base->n; i++) {
        const struct model_tensor *w = &base->tensors[i];
        int t = lora_target_of(w->name), copy = lc->train_router && is_router(w->name);
        adapter_of[i] = -1;
        if (!copy && (t < 0 || !(lc->targets & (1u << t))))
            continue;
        char module[MODEL_TENSOR_NAME_MAX];
        snprintf(module, sizeof module, "%.*s", (int)(strlen(w->name) - strlen(".weight")), w->name);
        adapter_of[i] = out->n;
        if (copy) {
            append(out, module, NULL, w->shape[0], w->shape[1]);
            continue;
        }
        seen |= 1u << t;
        append(out, module, "lora_A", lc->rank, w->shape[1]);
        append(out, module, "lora_B", w->shape[0], lc->rank);
        /* an expert's adapters live where the expert does: reduced over the data-parallel group */
        out->tensors[out->n - 1].expert = out->tensors[out->n - 2].expert = w->expert;
    }
    for (int t = 0; t < LORA_TARGETS; t++)
        if ((lc->targets & (1u << t)) && !(seen & (1u << t))) {
            model_layout_free(out);
            return gale_fail(err, "lora.targets: %s matches no projection of this model (%s)", targets[t].name,
                             t >= LORA_W1 ? "w1, w2, w3 are a Mixtral's experts" : "a Mixtral has experts w1, w2, w3 "
                                                                                   "instead of gate/up/down_proj");
        }
    return 0;
}

int lora_layout_whole(const struct model_config *cfg, const struct lora_config *lc, struct model_layout *out,
                      gale_error *err)
{
    struct model_layout whole;
    model_layout_build(cfg, &whole);
    int *adapter_of = gale_xcalloc((size_t)whole.n, sizeof *adapter_of);
    int rc = lora_layout_build(&whole, lc, out, adapter_of, err);
    free(adapter_of);
    model_layout_free(&whole);
    return rc;
}

void lora_init_host(const struct model_layout *adapters, float *host, uint64_t seed)
{
    for (int i = 0; i < adapters->n; i++) {
        const struct model_tensor *t = &adapters->tensors[i];
        float *dst = host + t->offset;
        if (lora_is_copy(t))
            continue;
        if (strstr(t->name, ".lora_B.")) {
            memset(dst, 0, t->numel * sizeof *dst);
            continue;
        }
        /* kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) */
        double bound = 1.0 / sqrt((double)t->shape[1]);
        uint64_t stream = gale_rng_stream(seed, t->name);
        for (size_t j = 0; j < t->numel; j++)
            dst[j] = (float)(bound * (2 * gale_rng_uniform(stream, j) - 1));
    }
}
