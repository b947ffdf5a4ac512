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
    /* one arena: v follows m, then the clip's sum of squares and factor (8-byte aligned:
     * 2 x n floats are a multiple of 8 bytes) */
    size_t n = end - begin;
    opt->m = be->ops->alloc(be, 2 * n * sizeof(float) + sizeof(double) + sizeof(float));
    opt->v = opt->m ? opt->m + n : NULL;
    opt->norm_sq = opt->m ? (double *)(opt->m + 2 * n) : NULL;
    opt->clip = opt->m ? (float *)(opt->norm_sq + 1) : NULL;
    opt->norm_sq_host = be->ops->host_alloc(be, sizeof(double));
    opt->step = 0;
    if (gale_backend_sync(be, err)) {
        adamw_free(opt);
        gale_error_prefix(err, "AdamW moments of %zu parameters", n);
        return -1;
    }
    return 0;
}

void adamw_free(struct adamw *opt)
{
    if (opt->m)
        opt->be->ops->free(opt->be, opt->m);
    if (opt->norm_sq_host)
        opt->be->ops->host_free(opt->be, opt->norm_sq_host);
    opt->m = opt->v = opt->clip = NULL;
    opt->norm_sq = opt->norm_sq_host = NULL;
}

/* Queues the sum of squares of grads[0, n) into opt->norm_sq. */
static void queue_sumsq(struct adamw *opt, const float *grads, size_t n)
{
    opt->be->ops->zero(opt->be, opt->norm_sq, sizeof(double));
    opt->be->ops->sumsq(opt->be, opt->norm_sq, grads, n);
}

/* Reads opt->norm_sq back: the norm. */
static int read_norm(struct adamw *opt, double *norm, gale_error *err)
{
    struct gale_backend *be = opt->be;
    be->ops->download(be, opt->norm_sq_host, opt->norm_sq, sizeof(double));
    if (gale_backend_sync(be, err))
        return -1;
    *norm = sqrt(*opt->norm_sq_host);
    return 0;
}

void adamw_step(struct adamw *opt, const struct model_layout *layout, float *params,
                float *weights, const float *grads, double lr, double max_norm)
{
    struct gale_backend *be = opt->be;
    size_t w_bytes = be->ops->dtype_bytes(be, be->compute);
    queue_sumsq(opt, grads, layout->numel);
    be->ops->clip_factor(be, opt->clip, opt->norm_sq, max_norm);
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
                            hi - lo, opt->clip, (float)lr, (float)c->beta1, (float)c->beta2,
                            (float)c->eps, t->decay ? (float)c->weight_decay : 0.0f,
                            (int)opt->step);
    }
}

int adamw_step_norm(struct adamw *opt, double *norm, gale_error *err)
{
    if (read_norm(opt, norm, err))
        return -1;
    if (!isfinite(*norm))
        opt->step--; /* the device skipped the update (gale_clip_factor gave NaN) */
    return 0;
}

int adamw_grad_norm(struct adamw *opt, const float *grads, size_t n, double *norm,
                    gale_error *err)
{
    queue_sumsq(opt, grads, n);
    return read_norm(opt, norm, err);
}
