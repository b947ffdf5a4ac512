/* adamw: torch.optim.AdamW and clip_grad_norm_ over flat buffers, one backend call per tensor
 * view (so decay can differ per tensor). */
#include "optim/adamw.h"

#include <math.h>
#include <stdlib.h>

#include "util/error.h"

struct adamw_config adamw_config_default(void)
{
    return (struct adamw_config){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8,
                                 .weight_decay = 0.1};
}

int adamw_init_ranges(struct adamw *opt, const struct adamw_config *cfg, struct gale_backend *be,
                      const size_t (*ranges)[2], int n, gale_error *err)
{
    opt->cfg = *cfg;
    opt->be = be;
    opt->ranges = gale_xcalloc(n > 0 ? (size_t)n : 1, sizeof *opt->ranges);
    opt->n_ranges = 0;
    opt->numel = 0;
    for (int i = 0; i < n; i++)
        if (ranges[i][1] > ranges[i][0]) {
            opt->ranges[opt->n_ranges++] = (struct adamw_range){ranges[i][0], ranges[i][1], opt->numel};
            opt->numel += ranges[i][1] - ranges[i][0];
        }
    /* one arena: v follows m */
    opt->m = be->ops->alloc(be, 2 * opt->numel * sizeof(float));
    opt->v = opt->m ? opt->m + opt->numel : NULL;
    opt->step = 0;
    if (gale_backend_sync(be, err)) {
        adamw_free(opt);
        gale_error_prefix(err, "AdamW moments of %zu parameters", opt->numel);
        return -1;
    }
    return 0;
}

int adamw_init(struct adamw *opt, const struct adamw_config *cfg, struct gale_backend *be,
               size_t begin, size_t end, gale_error *err)
{
    const size_t range[1][2] = {{begin, end}};
    return adamw_init_ranges(opt, cfg, be, range, 1, err);
}

void adamw_free(struct adamw *opt)
{
    if (opt->m)
        opt->be->ops->free(opt->be, opt->m);
    opt->m = opt->v = NULL;
    free(opt->ranges);
    opt->ranges = NULL;
    opt->n_ranges = 0;
}

void adamw_moments_download(struct adamw *opt, float *m, float *v)
{
    for (int i = 0; i < opt->n_ranges; i++) {
        const struct adamw_range *r = &opt->ranges[i];
        size_t bytes = (r->end - r->begin) * sizeof(float);
        opt->be->ops->download(opt->be, m + r->begin, opt->m + r->at, bytes);
        opt->be->ops->download(opt->be, v + r->begin, opt->v + r->at, bytes);
    }
    gale_backend_wait(opt->be);
}

void adamw_moments_upload(struct adamw *opt, const float *m, const float *v)
{
    for (int i = 0; i < opt->n_ranges; i++) {
        const struct adamw_range *r = &opt->ranges[i];
        size_t bytes = (r->end - r->begin) * sizeof(float);
        opt->be->ops->upload(opt->be, opt->m + r->at, m + r->begin, bytes);
        opt->be->ops->upload(opt->be, opt->v + r->at, v + r->begin, bytes);
    }
    gale_backend_wait(opt->be);
}

void adamw_step(struct adamw *opt, const struct model_layout *layout, float *params,
                float *weights, const float *grads, double lr, double grad_scale)
{
    struct gale_backend *be = opt->be;
    size_t w_bytes = be->ops->dtype_bytes(be, be->compute);
    opt->step++;
    const struct adamw_config *c = &opt->cfg;
    /* ranges and tensors both ascend: each piece is a range within one tensor */
    int i = 0;
    for (int k = 0; k < opt->n_ranges; k++) {
        const struct adamw_range *r = &opt->ranges[k];
        while (i < layout->n && layout->tensors[i].offset + layout->tensors[i].numel <= r->begin)
            i++;
        for (int j = i; j < layout->n && layout->tensors[j].offset < r->end; j++) {
            const struct model_tensor *t = &layout->tensors[j];
            size_t lo = t->offset > r->begin ? t->offset : r->begin;
            size_t hi = t->offset + t->numel < r->end ? t->offset + t->numel : r->end;
            if (lo >= hi)
                continue;
            size_t moment = r->at + (lo - r->begin);
            float *copy = weights ? (float *)((char *)weights + lo * w_bytes) : NULL;
            be->ops->adamw_step(be, params + lo, copy, grads + lo, opt->m + moment, opt->v + moment,
                                hi - lo, (float)grad_scale, (float)lr, (float)c->beta1,
                                (float)c->beta2, (float)c->eps,
                                t->decay ? (float)c->weight_decay : 0.0f, (int)opt->step);
        }
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
