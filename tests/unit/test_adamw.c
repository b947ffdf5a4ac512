/* test_adamw: AdamW over a model layout against torch.optim.AdamW's update written out in
 * double (decay on 2-D tensors only), the same steps taken as two optimizer shards that cut
 * through a tensor (ZeRO-1), and clipping as clip_grad_norm_, its factor applied on the device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model/rng.h"
#include "optim/adamw.h"

static struct model_config tiny(void)
{
    struct model_config c = {0};
    c.kind = MODEL_LLAMA;
    c.vocab_size = 11;
    c.hidden_size = 8;
    c.intermediate_size = 6;
    c.num_layers = 1;
    c.num_heads = 2;
    c.num_kv_heads = 1;
    c.head_dim = 4;
    c.rope_theta = 1e4;
    c.rms_norm_eps = 1e-5;
    c.max_position_embeddings = 16;
    c.bos_token_id = c.eos_token_id = -1;
    return c;
}

/* Clipping as clip_grad_norm_: the update with max_norm is the unclipped update of the
 * gradients scaled in place by max / (norm + 1e-6) (to the bit), or of the gradients as they are
 * when the norm is under max; the norm read back is the pre-clip one. A non-finite gradient
 * makes the device skip the update: nothing changes and the step is not counted. */
static void test_clipping(struct gale_backend *be, const struct model_layout *layout,
                          const struct adamw_config *ac)
{
    size_t n = layout->numel;
    float *g = malloc(n * 4), *scaled = malloc(n * 4), *p = malloc(n * 4), *q = malloc(n * 4);
    float *p0 = malloc(n * 4);
    double sumsq = 0;
    for (size_t i = 0; i < n; i++) {
        g[i] = (float)gale_rng_normal(9, i);
        sumsq += (double)g[i] * g[i];
        p0[i] = (float)gale_rng_normal(10, i);
    }
    double norm = sqrt(sumsq), max_norm = norm / 4, factor = max_norm / (norm + 1e-6);
    for (size_t i = 0; i < n; i++)
        scaled[i] = g[i] * (float)factor;
    struct adamw clipped, plain, over;
    adamw_init(&clipped, ac, be, 0, n, NULL);
    adamw_init(&plain, ac, be, 0, n, NULL);
    adamw_init(&over, ac, be, 0, n, NULL);
    memcpy(p, p0, n * 4), memcpy(q, p0, n * 4);
    adamw_step(&clipped, layout, p, NULL, g, ac->lr, max_norm);
    adamw_step(&plain, layout, q, NULL, scaled, ac->lr, 0);
    double got = 0;
    CHECK(adamw_step_norm(&clipped, &got, NULL) == 0);
    CHECK_MSG(fabs(got - norm) <= 1e-12 * norm, "pre-clip norm %.17g, expected %.17g", got, norm);
    CHECK_MSG(memcmp(p, q, n * 4) == 0, "clipped update differs from the in-place clip's");
    /* under the limit: the gradients as they are */
    memcpy(p, p0, n * 4), memcpy(q, p0, n * 4);
    adamw_step(&over, layout, p, NULL, g, ac->lr, 2 * norm);
    adamw_free(&plain);
    adamw_init(&plain, ac, be, 0, n, NULL);
    adamw_step(&plain, layout, q, NULL, g, ac->lr, 0);
    CHECK_MSG(memcmp(p, q, n * 4) == 0, "a gradient under the limit was scaled");
    /* a NaN gradient: nothing moves, the step is not counted */
    memcpy(p, p0, n * 4);
    g[n / 2] = NAN;
    long steps = clipped.step;
    float m_before = clipped.m[0];
    adamw_step(&clipped, layout, p, NULL, g, ac->lr, max_norm);
    CHECK(adamw_step_norm(&clipped, &got, NULL) == 0);
    CHECK_MSG(isnan(got), "norm of a NaN gradient: %g", got);
    CHECK_MSG(memcmp(p, p0, n * 4) == 0 && clipped.m[0] == m_before && clipped.step == steps,
              "a non-finite gradient norm changed the weights, moments or step count");
    CHECK_MSG(isnan(gale_clip_factor(INFINITY, 1.0)) && gale_clip_factor(100, 0) == 1.0 &&
                  gale_clip_factor(0.25, 1.0) == 1.0,
              "clip factor: non-finite NaN, max_norm 0 no clipping, under the limit 1");
    adamw_free(&clipped), adamw_free(&plain), adamw_free(&over);
    free(g), free(scaled), free(p), free(q), free(p0);
}

int main(void)
{
    struct gale_backend *be = gale_backend_create("cpu", GALE_F32, NULL);
    struct model_config cfg = tiny();
    struct model_layout layout;
    model_layout_build(&cfg, &layout);
    size_t n = layout.numel;
    float *p = malloc(n * 4), *p2 = malloc(n * 4), *g = malloc(n * 4);
    double *pd = malloc(n * 8), *md = calloc(n, 8), *vd = calloc(n, 8);
    for (size_t i = 0; i < n; i++)
        pd[i] = p[i] = p2[i] = (float)gale_rng_normal(1, i);
    struct adamw_config ac = {.lr = 3e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
    struct adamw whole, lo, hi;
    size_t cut = layout.tensors[1].offset + 3;  /* inside the first norm weight */
    adamw_init(&whole, &ac, be, 0, n, NULL);
    adamw_init(&lo, &ac, be, 0, cut, NULL);
    adamw_init(&hi, &ac, be, cut, n, NULL);
    for (int step = 1; step <= 4; step++) {
        for (size_t i = 0; i < n; i++)
            g[i] = (float)gale_rng_normal(2 + step, i);
        adamw_step(&whole, &layout, p, NULL, g, ac.lr, 0);  /* max_norm 0: no clipping */
        adamw_step(&lo, &layout, p2, NULL, g, ac.lr, 0);
        adamw_step(&hi, &layout, p2, NULL, g, ac.lr, 0);
        for (int t = 0; t < layout.n; t++) {
            const struct model_tensor *v = &layout.tensors[t];
            double wd = v->ndim == 2 ? ac.weight_decay : 0;
            for (size_t i = v->offset; i < v->offset + v->numel; i++) {
                pd[i] *= 1 - ac.lr * wd;
                md[i] = ac.beta1 * md[i] + (1 - ac.beta1) * g[i];
                vd[i] = ac.beta2 * vd[i] + (1 - ac.beta2) * (double)g[i] * g[i];
                double bc1 = 1 - pow(ac.beta1, step), bc2 = 1 - pow(ac.beta2, step);
                pd[i] -= ac.lr / bc1 * md[i] / (sqrt(vd[i]) / sqrt(bc2) + ac.eps);
            }
        }
    }
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs(p[i] - pd[i]) / fmax(1e-3, fabs(pd[i])));
    CHECK_MSG(worst < 1e-5, "AdamW differs from torch's update by %.2e", worst);
    CHECK_MSG(memcmp(p, p2, n * 4) == 0, "two shards differ from one optimizer");
    /* norms (1-D) are not decayed: with zero gradients only 2-D weights shrink */
    memset(g, 0, n * 4);
    struct adamw fresh;
    adamw_init(&fresh, &ac, be, 0, n, NULL);
    memcpy(p2, p, n * 4);
    adamw_step(&fresh, &layout, p2, NULL, g, ac.lr, 0);
    const struct model_tensor *norm = model_layout_find(&layout, "model.norm.weight");
    const struct model_tensor *emb = model_layout_find(&layout, "model.embed_tokens.weight");
    CHECK_MSG(p2[norm->offset] == p[norm->offset], "a norm weight was decayed");
    CHECK_MSG(fabsf(p2[emb->offset] - p[emb->offset] * (float)(1 - ac.lr * ac.weight_decay)) < 1e-7,
           "a 2-D weight was not decayed");

    test_clipping(be, &layout, &ac);
    adamw_free(&whole), adamw_free(&lo), adamw_free(&hi), adamw_free(&fresh);
    model_layout_free(&layout);
    gale_backend_free(be);
    free(p), free(p2), free(g), free(pd), free(md), free(vd);
    printf("AdamW and clipping: worst rel diff %.2e\n", worst);
    return check_report("test_adamw");
}
