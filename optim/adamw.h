/* adamw: torch.optim.AdamW over the model's flat parameter buffer, and global-norm gradient
 * clipping as torch.nn.utils.clip_grad_norm_. The moments cover a set of ranges of the flat
 * buffer (one, [0, numel), for the whole model), so an optimizer shard (ZeRO-1: a rank's piece
 * of each bucket, train/grad_sync.h) is the same code as the whole model. Weight decay applies to the tensors whose view says decay (2-D weights).
 * As in mixed-precision training (llm.c's adamw(params, master, grads, m, v, stream)): the
 * update runs on the fp32 master weights and moments and writes the compute copy too. */
#ifndef GALE_OPTIM_ADAMW_H
#define GALE_OPTIM_ADAMW_H

#include <stddef.h>

#include "model/model.h"
#include "model/ops.h"
#include "util/error.h"

struct adamw_config {
    double lr;             /* the base rate; adamw_step takes the scheduled one */
    double beta1, beta2;
    double eps;
    double weight_decay;
};

/* Defaults of the golden fixtures: betas (0.9, 0.95), eps 1e-8, wd 0.1, lr 1e-3. */
struct adamw_config adamw_config_default(void);

/* [begin, end) of the flat buffer, its moments at [at, at + end - begin) of m and v */
struct adamw_range {
    size_t begin, end, at;
};

struct adamw {
    struct adamw_config cfg;
    struct gale_backend *be;
    struct adamw_range *ranges; /* ascending, disjoint */
    int n_ranges;
    size_t numel;          /* moments held: the ranges' total */
    float *m, *v;          /* device: one arena of 2 x numel floats, v after m */
    long step;             /* steps taken */
};

/* Zeroed moments for [begin, end) of the flat buffer; -1 when the device cannot hold them. */
int adamw_init(struct adamw *opt, const struct adamw_config *cfg, struct gale_backend *be,
               size_t begin, size_t end, gale_error *err);
/* The same for n ranges [ranges[i][0], ranges[i][1]), ascending and disjoint (empty ones are
 * left out). */
int adamw_init_ranges(struct adamw *opt, const struct adamw_config *cfg, struct gale_backend *be,
                      const size_t (*ranges)[2], int n, gale_error *err);
void adamw_free(struct adamw *opt);

/* The held moments to (download) or from (upload) host arrays of the whole flat buffer's
 * size, at their flat offsets; download leaves the other elements as they are. */
void adamw_moments_download(struct adamw *opt, float *m, float *v);
void adamw_moments_upload(struct adamw *opt, const float *m, const float *v);

/* One step at rate lr on the master weights params[r] with grad_scale * grads[r] over the
 * held ranges r (both full flat buffers of the layout; grad_scale is clipping's factor,
 * applied in the same pass, 1 for none), also writing weights[begin, end) in the backend's
 * compute dtype when weights is not NULL (model_weights); decay per tensor view as the layout
 * says. */
void adamw_step(struct adamw *opt, const struct model_layout *layout, float *params,
                float *weights, const float *grads, double lr, double grad_scale);

/* Sum of squares of grads[begin, end) (for a global norm across ranks: all-reduce it). */
double grad_sumsq(struct gale_backend *be, const float *grads, size_t begin, size_t end);

/* The factor clip_grad_norm_ multiplies by: max_norm / (norm + 1e-6) when norm > max_norm,
 * else 1 (max_norm <= 0: no clipping). */
double grad_clip_factor(double norm, double max_norm);

/* Single-process clip of grads[0, n): returns the norm before clipping. */
double grad_clip_global_norm(struct gale_backend *be, float *grads, size_t n,
                             double max_norm);

#endif
