/* adamw: torch.optim.AdamW and clip_grad_norm_ over flat buffers, one backend call per tensor
 * view (so decay can differ per tensor). */
#include "optim/adamw.h"

#include <math.h>

struct adamw_config adamw_config_default(void)
{
    return (struct adamw_config){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8,
                                 .weight_decay = 0.1};
}

int adamw_init(struct adamw *opt, const struct adamw_config *cfg, struct gale_backend *be,
               size_t begin, size_t end, gale_error *err)
{
    opt->cfg = *cfg;
    opt->be = be;
    opt->begin = begin;
    opt->end = end;
    /* one arena: v follows m */
    opt->m = be->ops->alloc(be, 2 * (end - begin) * sizeof(float));
    opt->v = opt->m ? opt->m + (end - begin) : NULL;
    opt->step = 0;
    if (gale_backend_sync(be, err)) {
        adamw_free(opt);
        gale_error_prefix(err, "AdamW moments of %zu parameters", end - begin);
        return -1;
    }
    return 0;
}

void adamw_free(struct adamw *opt)
{
    if (opt->m)
        opt->be->ops->free(opt->be, opt->m);
    opt->m = opt->v = NULL;
}

void adamw_step(struct adamw *opt, const struct model_layout *layout, float *params,
                float *weights, const float *grads, double lr, double grad_scale)
{
    struct gale_backend *be = opt->be;
    size_t w_bytes = be->ops->dtype_bytes(be, be->compute);
    opt->step++;
    const struct adamw_config *c = &opt->cfg;
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        size_t lo = t->offset > opt->begin ? t->offset : opt->begin;
        size_t hi = t->offset + t->numel < opt->end ? t->offset + t->numel : opt->end;
        if (lo >= hi)
            continue;
        size_t moment = lo - opt->begin;
        float *copy = weights ? (float *)((char *)weights + lo * w_bytes) : NULL;
        be->ops->adamw_step(be, params + lo, copy, grads + lo, opt->m + moment, opt->v + moment,
                            hi - lo, (float)grad_scale, (float)lr, (float)c->beta1,
                            (float)c->beta2, (float)c->eps,
                            t->decay ? (float)c->weight_decay : 0.0f, (int)opt->step);
    }
}

double grad_sumsq(struct gale_backend *be, const float *grads, size_t begin, size_t end)
{
    return be->ops->sumsq(be, grads + begin, end - begin);
}

double grad_clip_factor(double norm, double max_norm)
{
    if (max_norm <= 0)
        return 1.0;
    double factor = max_norm / (norm + 1e-6);
    return factor < 1.0 ? factor : 1.0;
}

double grad_clip_global_norm(struct gale_backend *be, float *grads, size_t n, double max_norm)
{
    double norm = sqrt(grad_sumsq(be, grads, 0, n));
    double factor = grad_clip_factor(norm, max_norm);
    if (factor < 1.0)
        be->ops->scale(be, grads, n, (float)factor);
    return norm;
}
