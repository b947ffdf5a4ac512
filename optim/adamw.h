/* adamw: torch.optim.AdamW over the model's flat parameter buffer, with global-norm gradient
 * clipping as torch.nn.utils.clip_grad_norm_ in the same device-side sequence. The moments
 * cover a set of ranges of the flat buffer (one, [0, numel), for the whole model), so an
 * optimizer shard (ZeRO-1: a rank's piece of each bucket, train/grad_sync.h) is the same code
 * as the whole model. Weight decay applies to the tensors whose view says decay (2-D weights).
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
    float *m, *v;          /* device: one arena of 2 x numel floats, v after m, */
    double *norm_sq;       /* then the step's gradient sum of squares (fp64) */
    float *clip;           /* and its clip factor */
    double *norm_sq_host;  /* the sum of squares read back after the update */
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

/* One step at rate lr on the master weights params[r] over the held ranges r, with the
 * gradients clipped as torch.nn.utils.clip_grad_norm_(max_norm) over the whole gradient
 * (max_norm <= 0: no clipping), also writing weights[r] in the backend's compute dtype when
 * weights is not NULL (model_weights); decay per tensor view as the layout says. params,
 * weights and grads are full flat buffers of the layout. The whole gradient's sum of squares is
 * the held ranges' own, on the device (one process holding the whole gradient). The norm, the
 * clip factor and the update are queued on the device one after the other with no host read
 * between them; a non-finite norm makes the device skip the update. adamw_step_norm reads the
 * norm back afterwards. */
void adamw_step(struct adamw *opt, const struct model_layout *layout, float *params,
                float *weights, const float *grads, double lr, double max_norm);
/* The same where the whole gradient's sum of squares is sumsq, a host value (a world of ranks:
 * their sum, grad_sync_sumsq). */
void adamw_step_summed(struct adamw *opt, const struct model_layout *layout, float *params, float *weights,
                       const float *grads, double lr, double max_norm, double sumsq);

/* The gradient norm before clipping of the last adamw_step: its one read from the device,
 * made after the update was queued. When the norm is not finite the device skipped the
 * update, and the step is taken back from opt->step. -1 with err on a device failure. */
int adamw_step_norm(struct adamw *opt, double *norm, gale_error *err);

/* The norm of grads[0, n) alone, read back at once, for a step that takes no update (a
 * non-finite loss). -1 with err on a device failure. */
int adamw_grad_norm(struct adamw *opt, const float *grads, size_t n, double *norm,
                    gale_error *err);

/* The sum of squares of grads over n flat ranges [ranges[i][0], ranges[i][1]) (a rank's
 * share of a world's gradient), read back at once. -1 with err on a device failure. */
int adamw_grad_sumsq(struct adamw *opt, const float *grads, const size_t (*ranges)[2], int n, double *sumsq,
                     gale_error *err);

#endif
