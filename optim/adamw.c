/* adamw: torch.optim.AdamW and clip_grad_norm_ over flat buffers, one backend call per tensor
 * view (so decay can differ per tensor). */
#include "optim/adamw.h"

#include <math.h>

struct adamw_config adamw_config_default(void)
{
    return (struct adamw_config){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8,
                                 .weight_decay = 0.1};
}

void adamw_init(struct adamw *opt, const struct adamw_config *cfg, const struct gale_ops *ops,
                size_t begin, size_t end)
{
    opt->cfg = *cfg;
    opt->ops = ops;
    opt->begin = begin;
    opt->end = end;
    opt->m = ops->alloc((end - begin) * sizeof(float));
    opt->v = ops->alloc((end - begin) * sizeof(float));
    opt->step = 0;
}

void adamw_free(struct adamw *opt)
{
    if (opt->m)
        opt->ops->free(opt->m);
    if (opt->v)
        opt->ops->free(opt->v);
    opt->m = opt->v = NULL;
}

void adamw_step(struct adamw *opt, const struct model_layout *layout, float *params,
                const float *grads, double lr, double grad_scale)
{
    opt->step++;
    const struct adamw_config *c = &opt->cfg;
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        size_t lo = t->offset > opt->begin ? t->offset : opt->begin;
        size_t hi = t->offset + t->numel < opt->end ? t->offset + t->numel : opt->end;
        if (lo >= hi)
            continue;
        size_t moment = lo - opt->begin;
        opt->ops->adamw_step(params + lo, grads + lo, opt->m + moment, opt->v + moment, hi - lo,
                             (float)grad_scale, (float)lr, (float)c->beta1, (float)c->beta2, (float)c->eps,
                             t->decay ? (float)c->weight_decay : 0.0f, (int)opt->step);
    }
}

double grad_sumsq(const struct gale_ops *ops, const float *grads, size_t begin, size_t end)
{
    return ops->sumsq(grads + begin, end - begin);
}

double grad_clip_factor(double norm, double max_norm)
{
    if (max_norm <= 0)
        return 1.0;
    double factor = max_norm / (norm + 1e-6);
    return factor < 1.0 ? factor : 1.0;
}

double grad_clip_global_norm(const struct gale_ops *ops, float *grads, size_t n, double max_norm)
{
    double norm = sqrt(grad_sumsq(ops, grads, 0, n));
    double factor = grad_clip_factor(norm, max_norm);
    if (factor < 1.0)
        ops->scale(grads, n, (float)factor);
    return norm;
}
