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
    /* one arena: v follows m, then the clip's sum of squares and factor (8-byte aligned: 2 x
     * numel floats are a multiple of 8 bytes) */
    opt->m = be->ops->alloc(be, 2 * opt->numel * sizeof(float) + sizeof(double) + sizeof(float));
    opt->v = opt->m ? opt->m + opt->numel : NULL;
    opt->norm_sq = opt->m ? (double *)(opt->m + 2 * opt->numel) : NULL;
    opt->clip = opt->m ? (float *)(opt->norm_sq + 1) : NULL;
    opt->norm_sq_host = be->ops->host_alloc(be, sizeof(double));
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
    if (opt->norm_sq_host)
        opt->be->ops->host_free(opt->be, opt->norm_sq_host);
    opt->m = opt->v = opt->clip = NULL;
    opt->norm_sq = opt->norm_sq_host = NULL;
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

/* Queues the sum of squares of grads over n flat ranges into opt->norm_sq. */
static void queue_sumsq(struct adamw *opt, const float *grads, const size_t (*ranges)[2], int n)
{
    opt->be->ops->zero(opt->be, opt->norm_sq, sizeof(double));
    for (int i = 0; i < n; i++)
        if (ranges[i][1] > ranges[i][0])
            opt->be->ops->sumsq(opt->be, opt->norm_sq, grads + ranges[i][0], ranges[i][1] - ranges[i][0]);
}

/* Queues the held ranges' sum of squares. */
static void queue_held_sumsq(struct adamw *opt, const float *grads)
{
    size_t (*held)[2] = gale_xcalloc(opt->n_ranges ? (size_t)opt->n_ranges : 1, sizeof *held);
    for (int i = 0; i < opt->n_ranges; i++) {
        held[i][0] = opt->ranges[i].begin;
        held[i][1] = opt->ranges[i].end;
    }
    queue_sumsq(opt, grads, (const size_t (*)[2])held, opt->n_ranges);
    free(held);
}

/* Reads opt->norm_sq back. */
static int read_sumsq(struct adamw *opt, double *sumsq, gale_error *err)
{
    struct gale_backend *be = opt->be;
    be->ops->download(be, opt->norm_sq_host, opt->norm_sq, sizeof(double));
    if (gale_backend_sync(be, err))
        return -1;
    *sumsq = *opt->norm_sq_host;
    return 0;
}

/* The update, clipped by the factor of the sum of squares in opt->norm_sq. */
static void step(struct adamw *opt, const struct model_layout *layout, float *params, float *weights,
                 const float *grads, double lr, double max_norm)
{
    struct gale_backend *be = opt->be;
    size_t w_bytes = be->ops->dtype_bytes(be, be->compute);
    be->ops->clip_factor(be, opt->clip, opt->norm_sq, max_norm);
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
                                hi - lo, opt->clip, (float)lr, (float)c->beta1, (float)c->beta2,
                                (float)c->eps, t->decay ? (float)c->weight_decay : 0.0f,
                                (int)opt->step);
        }
    }
}

void adamw_step(struct adamw *opt, const struct model_layout *layout, float *params,
                float *weights, const float *grads, double lr, double max_norm)
{
    queue_held_sumsq(opt, grads);
    step(opt, layout, params, weights, grads, lr, max_norm);
}

void adamw_step_summed(struct adamw *opt, const struct model_layout *layout, float *params, float *weights,
                       const float *grads, double lr, double max_norm, double sumsq)
{
    /* the host value goes through the host buffer, which outlives the queued copy */
    *opt->norm_sq_host = sumsq;
    opt->be->ops->upload(opt->be, opt->norm_sq, opt->norm_sq_host, sizeof(double));
    step(opt, layout, params, weights, grads, lr, max_norm);
}

int adamw_step_norm(struct adamw *opt, double *norm, gale_error *err)
{
    double sumsq;
    if (read_sumsq(opt, &sumsq, err))
        return -1;
    *norm = sqrt(sumsq);
    if (!isfinite(*norm))
        opt->step--; /* the device skipped the update (gale_clip_factor gave NaN) */
    return 0;
}

int adamw_grad_norm(struct adamw *opt, const float *grads, size_t n, double *norm,
                    gale_error *err)
{
    const size_t all[1][2] = {{0, n}};
    double sumsq;
    queue_sumsq(opt, grads, all, 1);
    if (read_sumsq(opt, &sumsq, err))
        return -1;
    *norm = sqrt(sumsq);
    return 0;
}

int adamw_grad_sumsq(struct adamw *opt, const float *grads, const size_t (*ranges)[2], int n, double *sumsq,
                     gale_error *err)
{
    queue_sumsq(opt, grads, ranges, n);
    return read_sumsq(opt, sumsq, err);
}
