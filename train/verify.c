/* verify: a fixture folder against the model, the loss and AdamW. */
#include "train/verify.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "model/lora_io.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "optim/adamw.h"
#include "util/file.h"

struct fixture {
    char *dir;
    struct model_config cfg;
    struct safetensors_set weights, expected;
    json_t *json;
    int batch, seq;
    int32_t *tokens, *targets;
    /* AdamW settings of the fixture's conventions */
    struct adamw_config adamw;
    double clip;
    int steps;
    /* an adapter fixture (adapter_config.json present): the adapters train, the base is frozen */
    int has_lora;
    struct lora_config lora;
};

/* bf16's unit roundoff: 8 significant bits, round to nearest */
#define BF16_UNIT_ROUNDOFF (1.0 / 256)

struct table {
    FILE *out;
    struct verify_result *res;
    struct verify_tolerances tol;
};

static void report(struct table *t, const char *name, double err, double tol)
{
    int ok = err <= tol;  /* NaN fails */
    t->res->checks++;
    t->res->failed += !ok;
    if (t->out)
        fprintf(t->out, "  %-58s %11.3e %9.1e  %s\n", name, err, tol, ok ? "ok" : "FAIL");
}

/* |x - ref| / |ref| (|x - ref| when ref is all zeros). */
static double rel_err(const float *x, const double *ref, size_t n)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)x[i] - ref[i];
        d += e * e;
        r += ref[i] * ref[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

static double scalar_rel_err(double x, double ref)
{
    return ref != 0 ? fabs(x - ref) / fabs(ref) : fabs(x);
}

static int json_number_at(json_t *root, const char *key, double *out, const char *path,
                          gale_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!json_is_number(v))
        return gale_fail(err, "%s: key \"%s\" is missing or not a number", path, key);
    *out = json_number_value(v);
    return 0;
}

/* Reads the AdamW conventions (the README's values when the file does not spell them). */
static int read_adamw_conventions(struct fixture *f, const char *path, gale_error *err)
{
    f->adamw = adamw_config_default();
    f->clip = 1.0;
    f->steps = 3;
    json_t *conv = json_object_get(json_object_get(f->json, "conventions"), "adamw");
    if (!conv)
        return 0;
    json_t *betas = json_object_get(conv, "betas");
    if (betas && (!json_is_array(betas) || json_array_size(betas) != 2 ||
                  !json_is_number(json_array_get(betas, 0)) ||
                  !json_is_number(json_array_get(betas, 1))))
        return gale_fail(err, "%s: conventions.adamw.betas must be two numbers", path);
    if (betas) {
        f->adamw.beta1 = json_number_value(json_array_get(betas, 0));
        f->adamw.beta2 = json_number_value(json_array_get(betas, 1));
    }
    double steps = f->steps;
    const struct {
        const char *key;
        double *dst;
    } fields[] = {{"lr", &f->adamw.lr}, {"eps", &f->adamw.eps},
                  {"weight_decay", &f->adamw.weight_decay}, {"clip_grad_norm", &f->clip},
                  {"steps", &steps}};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        if (json_object_get(conv, fields[i].key) &&
            json_number_at(conv, fields[i].key, fields[i].dst, path, err))
            return -1;
    f->steps = (int)steps;
    return 0;
}

/* input_ids and labels ([B,T], integers) into tokens and next-token targets. */
static int read_batch(struct fixture *f, gale_error *err)
{
    const struct safetensors_tensor *ids = safetensors_find(&f->expected, "input_ids");
    const struct safetensors_tensor *labels = safetensors_find(&f->expected, "labels");
    if (!ids || !labels)
        return gale_fail(err, "%s: expected.safetensors needs input_ids and labels", f->dir);
    if (ids->ndim != 2 || labels->ndim != 2 || ids->shape[0] != labels->shape[0] ||
        ids->shape[1] != labels->shape[1] || ids->numel == 0 || ids->numel > (1u << 24))
        return gale_fail(err, "%s: input_ids and labels must both be [B,T]", f->dir);
    f->batch = (int)ids->shape[0];
    f->seq = (int)ids->shape[1];
    int64_t *buf = gale_xmalloc(sizeof(int64_t) * ids->numel);
    f->tokens = gale_xmalloc(sizeof(int32_t) * ids->numel);
    f->targets = gale_xmalloc(sizeof(int32_t) * ids->numel);
    int rc = safetensors_read_i64(ids, buf, err);
    for (size_t i = 0; rc == 0 && i < ids->numel; i++) {
        if (buf[i] < 0 || buf[i] >= f->cfg.vocab_size)
            rc = gale_fail(err, "%s: input_ids[%zu] = %lld is outside the vocabulary", f->dir, i,
                           (long long)buf[i]);
        f->tokens[i] = (int32_t)buf[i];
    }
    if (rc == 0)
        rc = safetensors_read_i64(labels, buf, err);
    if (rc == 0)
        model_targets_from_labels(buf, f->batch, f->seq, f->targets);
    free(buf);
    return rc;
}

static void fixture_free(struct fixture *f)
{
    safetensors_close(&f->weights);
    safetensors_close(&f->expected);
    if (f->json)
        json_decref(f->json);
    free(f->tokens);
    free(f->targets);
    free(f->dir);
}

static int fixture_open(const char *dir, struct fixture *f, gale_error *err)
{
    memset(f, 0, sizeof *f);
    f->dir = gale_xstrdup(dir);
    char *config = gale_path_join(dir, "config.json");
    char *weights = gale_path_join(dir, "model.safetensors");
    char *expected = gale_path_join(dir, "expected.safetensors");
    char *json = gale_path_join(dir, "expected.json");
    int rc = -1;
    json_error_t jerr;
    if (model_config_load(config, &f->cfg, err) || safetensors_open(weights, &f->weights, err) ||
        safetensors_open(expected, &f->expected, err))
        goto done;
    f->json = json_load_file(json, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->json) {
        gale_fail(err, "%s:%d:%d: %s", json, jerr.line, jerr.column, jerr.text);
        goto done;
    }
    if (read_adamw_conventions(f, json, err) || read_batch(f, err))
        goto done;
    char *adapter = gale_path_join(dir, "adapter_config.json");
    f->has_lora = gale_path_exists(adapter);
    free(adapter);
    if (f->has_lora && lora_config_read(dir, &f->lora, NULL, err))
        goto done;
    rc = 0;
done:
    free(config);
    free(weights);
    free(expected);
    free(json);
    return rc;
}

/* Compares a host array with the fixture tensor `name` (which must have n elements). */
static int check_tensor(struct table *t, const struct fixture *f, const char *name,
                        const char *label, const float *x, size_t n, double tol, gale_error *err)
{
    const struct safetensors_tensor *ref = safetensors_find(&f->expected, name);
    if (!ref)
        return gale_fail(err, "%s: expected.safetensors has no \"%s\"", f->dir, name);
    if (ref->numel != n)
        return gale_fail(err, "%s: \"%s\" has %zu elements, the model %zu", f->dir, name,
                         ref->numel, n);
    double *r = gale_xmalloc(sizeof(double) * n);
    int rc = safetensors_read_f64(ref, r, err);
    if (rc == 0 && tol == t->tol.weight && t->tol.weight_update > 0) {
        double ss = 0;  /* the bound on the updates' difference, relative to this tensor */
        for (size_t i = 0; i < n; i++)
            ss += r[i] * r[i];
        double rms = sqrt(ss / (double)n);
        if (rms > 0 && t->tol.weight_update / rms > tol)
            tol = t->tol.weight_update / rms;
    }
    if (rc == 0)
        report(t, label, rel_err(x, r, n), tol);
    free(r);
    return rc;
}

static int check_scalar(struct table *t, const struct fixture *f, const char *key, double x,
                        double tol, gale_error *err)
{
    double ref = 0;
    if (json_number_at(f->json, key, &ref, "expected.json", err))
        return -1;
    report(t, key, scalar_rel_err(x, ref), tol);
    return 0;
}

static int check_selected_experts(struct table *t, const struct fixture *f, struct model *m,
                                  gale_error *err)
{
    json_t *sel = json_object_get(f->json, "selected_experts");
    if (!sel)
        return 0;
    int layers = f->cfg.num_layers, k = f->cfg.num_experts_per_tok;
    size_t rows = (size_t)f->batch * f->seq;
    if (!json_is_array(sel) || (int)json_array_size(sel) != layers)
        return gale_fail(err, "%s: selected_experts must hold %d layers", f->dir, layers);
    int32_t *got = gale_xmalloc(sizeof(int32_t) * layers * rows * k);
    model_selected_experts_download(m, got);
    long mismatches = 0;
    int rc = 0;
    for (int l = 0; l < layers && rc == 0; l++) {
        json_t *layer = json_array_get(sel, l);
        if (!json_is_array(layer) || json_array_size(layer) != rows) {
            rc = gale_fail(err, "%s: selected_experts[%d] must hold %zu tokens", f->dir, l, rows);
            break;
        }
        for (size_t r = 0; r < rows; r++) {
            json_t *choice = json_array_get(layer, r);
            for (int j = 0; j < k; j++) {
                json_t *e = json_array_get(choice, j);
                mismatches += !json_is_integer(e) ||
                              json_integer_value(e) != got[(l * rows + r) * k + j];
            }
        }
    }
    free(got);
    if (rc == 0) {
        /* Below fp32, a choice whose reference margin (top-k probability gap) is within one
         * rounding of bf16 is a tie at that precision: with such a margin in the fixture, flips
         * are reported but not failed (the logits and gradients still check their effect). */
        double margin = json_number_value(json_object_get(f->json, "router_topk_min_margin"));
        int ties = t->tol.logits > VERIFY_TOL_LOGITS && margin < BF16_UNIT_ROUNDOFF;
        char label[96];
        snprintf(label, sizeof label, "selected_experts (%ld mismatches%s)", mismatches,
                 ties ? ", margin below 2^-8: ties" : "");
        report(t, label, (double)mismatches, ties ? (double)layers * rows * k : 0);
    }
    return rc;
}

static int check_forward(struct table *t, const struct fixture *f, struct model *m,
                         const struct model_batch *batch, gale_error *err)
{
    struct model_loss loss;
    if (model_forward(m, batch, 0, &loss, err))
        return -1;
    size_t n = (size_t)f->batch * f->seq * f->cfg.vocab_size;
    float *logits = gale_xmalloc(sizeof(float) * n);
    model_logits_download(m, logits);
    int rc = check_tensor(t, f, "logits", "logits", logits, n, t->tol.logits, err);
    free(logits);
    if (rc || check_scalar(t, f, "ce_loss", loss.ce_sum / (loss.n_targets ? loss.n_targets : 1),
                           t->tol.loss, err) ||
        check_scalar(t, f, "loss", loss.loss, t->tol.loss, err))
        return -1;
    if (f->cfg.num_experts > 0 &&
        (check_scalar(t, f, "aux_loss", loss.aux_loss, t->tol.loss, err) ||
         check_selected_experts(t, f, m, err)))
        return -1;
    return 0;
}

/* Every trained tensor (the model's, or the adapters') against prefix + name in the fixture. */
static int check_all(struct table *t, const struct fixture *f, struct model *m, const float *x,
                     const char *prefix, double tol, gale_error *err)
{
    struct model_trainable tr;
    model_trainable(m, &tr);
    const struct model_layout *layout = tr.layout;
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *v = &layout->tensors[i];
        char name[MODEL_TENSOR_NAME_MAX + 16];
        snprintf(name, sizeof name, "%s%s", prefix, v->name);
        if (check_tensor(t, f, name, name, x + v->offset, v->numel, tol, err))
            return -1;
    }
    return 0;
}

/* A host copy of one of the trained flat buffers (model_trainable's params or grads). */
static float *download_trained(struct model *m, const float *device)
{
    struct model_trainable tr;
    model_trainable(m, &tr);
    struct gale_backend *be = model_get_backend(m);
    float *host = gale_xmalloc(sizeof(float) * tr.layout->numel);
    be->ops->download(be, host, device, sizeof(float) * tr.layout->numel);
    gale_backend_wait(be);
    return host;
}

static int check_gradients(struct table *t, const struct fixture *f, struct model *m,
                           const struct model_batch *batch, gale_error *err)
{
    struct model_loss loss;
    model_zero_grads(m);
    if (model_forward_backward(m, batch, 0, 1.0, &loss, err))
        return -1;
    report(t, "loss (forward of the backward pass)",
           scalar_rel_err(loss.loss, json_number_value(json_object_get(f->json, "loss"))),
           t->tol.loss);
    struct model_trainable tr;
    model_trainable(m, &tr);
    float *grads = download_trained(m, tr.grads);
    int rc = check_all(t, f, m, grads, "grad.", t->tol.grad, err);
    free(grads);
    return rc;
}

/* The fixture's list `key` must hold at least n numbers. */
static int json_list(const struct fixture *f, const char *key, int n, json_t **out,
                     gale_error *err)
{
    *out = json_object_get(f->json, key);
    if (!json_is_array(*out) || (int)json_array_size(*out) < n)
        return gale_fail(err, "%s: expected.json \"%s\" must list at least %d numbers", f->dir,
                         key, n);
    return 0;
}

static int check_adamw(struct table *t, const struct fixture *f, struct model *m,
                       const struct model_batch *batch, gale_error *err)
{
    json_t *losses, *norms;
    if (json_list(f, "adamw_losses", f->steps + 1, &losses, err) ||
        json_list(f, "adamw_grad_norms_before_clip", f->steps, &norms, err))
        return -1;
    struct model_trainable tr;
    model_trainable(m, &tr);
    const struct model_layout *layout = tr.layout;
    struct gale_backend *be = model_get_backend(m);
    struct adamw opt;
    if (adamw_init(&opt, &f->adamw, be, 0, layout->numel, err))
        return -1;
    struct model_loss loss;
    char label[96];
    int rc = 0;
    for (int s = 0; s < f->steps && rc == 0; s++) {
        model_zero_grads(m);
        if (model_forward_backward(m, batch, 0, 1.0, &loss, err)) {
            rc = -1;
            break;
        }
        snprintf(label, sizeof label, "adamw_losses[%d]", s);
        report(t, label, scalar_rel_err(loss.loss, json_number_value(json_array_get(losses, s))),
               t->tol.loss);
        /* clipped and updated as gale train does: the factor stays on the device */
        adamw_step(&opt, layout, tr.params, tr.weights, tr.grads, f->adamw.lr, f->clip);
        double norm;
        if (adamw_step_norm(&opt, &norm, err)) {
            rc = -1;
            break;
        }
        snprintf(label, sizeof label, "adamw_grad_norms_before_clip[%d]", s);
        report(t, label, scalar_rel_err(norm, json_number_value(json_array_get(norms, s))),
               t->tol.grad);
    }
    adamw_free(&opt);
    if (rc || model_loss(m, batch, 0, &loss, err))
        return -1;
    snprintf(label, sizeof label, "adamw_losses[%d]", f->steps);
    report(t, label,
           scalar_rel_err(loss.loss, json_number_value(json_array_get(losses, f->steps))),
           t->tol.loss);
    float *params = download_trained(m, tr.params);
    char prefix[32];
    snprintf(prefix, sizeof prefix, "after%d.", f->steps);
    rc = check_all(t, f, m, params, prefix, t->tol.weight, err);
    free(params);
    return rc;
}

/* The frozen base's weights on the host. */
static float *base_weights(struct model *m)
{
    float *host = gale_xmalloc(sizeof(float) * model_get_layout(m)->numel);
    model_params_download(m, host);
    return host;
}

/* Training adapters leaves every bit of the base as it was. */
static void check_base_unchanged(struct table *t, struct model *m, const float *before)
{
    float *after = base_weights(m);
    size_t n = model_get_layout(m)->numel, changed = 0;
    for (size_t i = 0; i < n; i++)
        changed += memcmp(&after[i], &before[i], sizeof *after) != 0;
    char label[96];
    snprintf(label, sizeof label, "base weights unchanged (%zu of %zu values differ)", changed, n);
    report(t, label, (double)changed, 0);
    free(after);
}

struct verify_tolerances verify_tolerances_for(enum gale_dtype compute, int layers, int steps,
                                               double lr)
{
    struct verify_tolerances tol = {VERIFY_TOL_LOGITS, VERIFY_TOL_LOSS, VERIFY_TOL_GRAD,
                                    VERIFY_TOL_WEIGHT, 0};
    if (compute == GALE_F32)
        return tol;
    /* bf16 keeps 8 significant bits: one rounding (to nearest even) perturbs a value by at most
     * u = 2^-8 relative. Errors are bounded as if each rounding on the longest path added u:
     * a layer rounds 9 activations on it (norm, q, rope, attention, residual; norm, gate/up,
     * SwiGLU, residual) and multiplies by 4 rounded weights (q, o, gate/up, down); the head
     * rounds the final norm's output and the lm_head and embedding weights. */
    double u = BF16_UNIT_ROUNDOFF, forward = u * (13.0 * layers + 3);
    tol.logits = forward;
    tol.loss = forward;      /* a smooth function of the logits, O(1) in them */
    tol.grad = 2 * forward;  /* the backward runs the path again, rounding as much */
    /* The master weights stay fp32; each AdamW update is at most lr per element (beta1 = 0.9,
     * beta2 = 0.95: |m_hat / sqrt(v_hat)| <= (1 - beta1) / sqrt(1 - beta2) < 1), so two runs'
     * weights part by at most 2 lr per step and element: relative to a tensor of RMS r, by
     * 2 lr steps / r (check_tensor divides). */
    tol.weight_update = 2 * lr * steps;
    return tol;
}

int verify_fixture(const char *dir, struct gale_backend *be, FILE *out,
                   struct verify_result *res, gale_error *err)
{
    memset(res, 0, sizeof *res);
    struct fixture f;
    if (fixture_open(dir, &f, err)) {
        fixture_free(&f);
        return -1;
    }
    struct model_options opts = {.aux_form = MODEL_AUX_HF, .lora = f.has_lora ? &f.lora : NULL};
    struct model *m = model_create(&f.cfg, be, &opts, err);
    int rc = -1;
    if (m && model_load_tensors(m, &f.weights, NULL, NULL, err) == 0 &&
        (!f.has_lora || model_lora_load(m, dir, err) == 0)) {
        if (out)
            fprintf(out, "%s: %s, %d layers, hidden %d, batch %d x %d, backend %s\n  %-58s %11s "
                         "%9s  %s\n", dir, model_kind_name(f.cfg.kind), f.cfg.num_layers,
                    f.cfg.hidden_size, f.batch, f.seq, be->ops->name, "check", "rel err",
                    "tol", "result");
        struct table t = {out, res,
                          verify_tolerances_for(be->compute, f.cfg.num_layers, f.steps,
                                                f.adamw.lr)};
        struct model_batch batch = {.batch = f.batch, .seq = f.seq, .tokens = f.tokens,
                                    .targets = f.targets};
        float *base = f.has_lora ? base_weights(m) : NULL;
        rc = check_forward(&t, &f, m, &batch, err);
        if (rc == 0)
            rc = check_gradients(&t, &f, m, &batch, err);
        if (rc == 0)
            rc = check_adamw(&t, &f, m, &batch, err);
        if (rc == 0 && base)
            check_base_unchanged(&t, m, base);
        free(base);
    }
    if (rc)
        gale_error_prefix(err, "%s", dir);
    model_free(m);
    fixture_free(&f);
    return rc;
}
