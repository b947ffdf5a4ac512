/* test_kernels_cpu: the CPU backend's vectorised kernels (model/cpu/kernels_cpu.c), each version
 * (AVX2 where the CPU has it, and the portable one) against references in double, on lengths that
 * leave tails: exp within 3 fp32 ulps (0 below exp(-87.3), NaN kept), SwiGLU, sums and max exact or to
 * double rounding, and AdamW with a clipping factor bit-identical to the scalar update gale had
 * before (clip in place, then the step), which test_adamw holds to torch.optim.AdamW. Then the
 * backend's cross-entropy against a double reference: loss and gradient. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu_backend.h"
#include "model/cpu/kernels_cpu.h"
#include "model/ops.h"
#include "model/rng.h"

static void fill(float *x, size_t n, double scale, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * gale_rng_normal(seed, i));
}

/* The update of ops_cpu.c before the kernels: the gradient clipped in place, then AdamW. */
static void adamw_before(float *p, float *g, float *m, float *v, size_t n, const struct adamw_kernel_args *a)
{
    for (size_t i = 0; i < n; i++)
        g[i] *= a->grad_scale;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        p[i] *= a->decay;
        m[i] += (1.0f - a->beta1) * (gi - m[i]);
        v[i] = a->beta2 * v[i] + (1.0f - a->beta2) * gi * gi;
        p[i] -= a->step_size * m[i] / (sqrtf(v[i]) / a->bc2_sqrt + a->eps);
    }
}

static void check_adamw(const char *version)
{
    enum { N = 1003 };
    float p[N], g[N], m[N], v[N], p2[N], g2[N], m2[N], v2[N];
    fill(p, N, 0.05, 1);
    fill(g, N, 0.01, 2);
    fill(m, N, 0.001, 3);
    for (size_t i = 0; i < N; i++)
        v[i] = (float)(1e-5 * fabs(gale_rng_normal(4, i)));
    memcpy(p2, p, sizeof p);
    memcpy(g2, g, sizeof g);
    memcpy(m2, m, sizeof m);
    memcpy(v2, v, sizeof v);
    struct adamw_kernel_args a = {.grad_scale = 0.3712f, .decay = 1.0f - 1e-3f * 0.1f, .beta1 = 0.9f,
                                  .beta2 = 0.95f, .step_size = (float)(1e-3 / (1 - pow(0.9, 3))),
                                  .bc2_sqrt = (float)sqrt(1 - pow(0.95, 3)), .eps = 1e-8f};
    for (int step = 0; step < 3; step++) {
        kernel_adamw(p, g, m, v, N, &a);
        float gs[N];
        memcpy(gs, g2, sizeof gs);
        adamw_before(p2, gs, m2, v2, N, &a);
    }
    CHECK_MSG(!memcmp(p, p2, sizeof p) && !memcmp(m, m2, sizeof m) && !memcmp(v, v2, sizeof v),
              "%s AdamW: not bit-identical to the in-place clip and scalar step", version);
    CHECK_MSG(!memcmp(g, g2, sizeof g), "%s AdamW wrote the gradient", version);
}

static void check_exp_max_sums(const char *version)
{
    enum { N = 2061 }; /* two blocks of 1024 and a tail */
    static float x[N], e[N];
    fill(x, N, 8.0, 5);
    x[7] = -100.0f;
    x[100] = -87.0f;
    x[200] = -INFINITY;
    x[N - 1] = 11.5f;
    float mx = kernel_max(x, N);
    double want_max = -INFINITY;
    for (size_t i = 0; i < N; i++)
        want_max = x[i] > want_max ? x[i] : want_max;
    CHECK_MSG(mx == (float)want_max, "%s max %g, want %g", version, mx, want_max);
    double sum = kernel_exp_sum(e, x, N, mx), want_sum = 0, worst = 0;
    for (size_t i = 0; i < N; i++) {
        double want = exp((double)(x[i] - mx));
        want_sum += want;
        if (x[i] - mx < -87.4f) {
            CHECK_MSG(e[i] == 0, "%s exp(%g) = %g, want 0 (flushed)", version, x[i] - mx, e[i]);
            continue;
        }
        double ulps = fabs(e[i] - want) / (nextafterf((float)want, INFINITY) - (float)want);
        worst = ulps > worst ? ulps : worst;
    }
    CHECK_MSG(worst <= 3, "%s exp: %.2f ulps off at worst", version, worst);
    CHECK_MSG(fabs(sum - want_sum) <= 1e-6 * want_sum, "%s exp sum %.9g, want %.9g", version, sum, want_sum);
    CHECK_MSG(kernel_exp_sum(NULL, x, N, mx) == sum, "%s exp sum without output differs", version);
    float nan_row[9] = {0, 1, 2, 3, NAN, 5, 6, 7, 8};
    CHECK_MSG(isnan(kernel_exp_sum(NULL, nan_row, 9, 8.0f)), "%s exp sum lost a NaN", version);

    double ss = kernel_sumsq(x, 200), want_ss = 0; /* before the -inf */
    for (size_t i = 0; i < 200; i++)
        want_ss += (double)x[i] * x[i];
    CHECK_MSG(fabs(ss - want_ss) <= 1e-14 * want_ss, "%s sumsq %.17g, want %.17g", version, ss, want_ss);
    float y[37];
    memcpy(y, x, sizeof y);
    kernel_scale(y, 37, 0.25f);
    int same = 1;
    for (size_t i = 0; i < 37; i++)
        same &= y[i] == x[i] * 0.25f;
    CHECK_MSG(same, "%s scale differs from x * s", version);
}

static void check_swiglu(const char *version)
{
    enum { N = 517 };
    float gate[N], up[N], d[N], out[N], dgate[N], dup[N];
    fill(gate, N, 6.0, 7);
    fill(up, N, 1.0, 8);
    fill(d, N, 1.0, 9);
    gate[0] = -95.0f;
    gate[1] = 95.0f;
    kernel_swiglu_fwd(out, gate, up, N);
    memcpy(dgate, d, sizeof d); /* dgate aliasing dout, as the model calls it */
    kernel_swiglu_bwd(dgate, dup, dgate, gate, up, N);
    double worst = 0;
    for (size_t i = 0; i < N; i++) {
        double g = gate[i], sig = 1 / (1 + exp(-g));
        double want[3] = {g * sig * up[i], d[i] * up[i] * sig * (1 + g * (1 - sig)), d[i] * g * sig};
        float got[3] = {out[i], dgate[i], dup[i]};
        for (int k = 0; k < 3; k++)
            worst = fmax(worst, fabs(got[k] - want[k]) / fmax(fabs(want[k]), 1e-30));
    }
    CHECK_MSG(worst <= 4e-6, "%s SwiGLU %.3g relative off at worst", version, worst);
}

/* loss = sum over rows of lse - x[target]; grad = scale * (softmax - onehot) */
static void check_cross_entropy(void)
{
    enum { ROWS = 5, VOCAB = 3001 };
    static float x[ROWS * VOCAB], g[ROWS * VOCAB];
    int32_t targets[ROWS] = {3, -1, 3000, 0, 1234};
    fill(x, ROWS * VOCAB, 3.0, 6);
    memcpy(g, x, sizeof x);
    struct gale_backend *be = cpu_backend();
    double sums[2] = {0, 0}, sums_only[2] = {0, 0}; /* the CPU's device memory is the host's */
    be->ops->cross_entropy(be, g, targets, ROWS, VOCAB, 0.5f, sums);
    be->ops->cross_entropy(be, x, targets, ROWS, VOCAB, 0.0f, sums_only);
    double loss = sums[0], loss_only = sums_only[0];
    double want = 0, worst = 0;
    for (int r = 0; r < ROWS; r++) {
        const float *xr = x + (size_t)r * VOCAB;
        if (targets[r] < 0) {
            for (int v = 0; v < VOCAB; v++)
                worst = fmax(worst, fabs(g[(size_t)r * VOCAB + v]));
            continue;
        }
        double mx = -INFINITY, s = 0;
        for (int v = 0; v < VOCAB; v++)
            mx = fmax(mx, xr[v]);
        for (int v = 0; v < VOCAB; v++)
            s += exp(xr[v] - mx);
        want += mx + log(s) - xr[targets[r]];
        for (int v = 0; v < VOCAB; v++) {
            double d = 0.5 * (exp(xr[v] - mx) / s - (v == targets[r]));
            worst = fmax(worst, fabs(g[(size_t)r * VOCAB + v] - d) / fmax(fabs(d), 1e-6));
        }
    }
    CHECK_MSG(sums[1] == ROWS - 1 && sums_only[1] == ROWS - 1, "counted %g and %g targets, want %d",
              sums[1], sums_only[1], ROWS - 1);
    CHECK_MSG(fabs(loss - want) <= 1e-6 * fabs(want), "cross-entropy %.9g, want %.9g", loss, want);
    CHECK_MSG(loss_only == loss, "loss without gradient %.17g, with %.17g", loss_only, loss);
    CHECK_MSG(worst <= 1e-5, "cross-entropy gradient %.3g relative off at worst", worst);
}

int main(void)
{
    const char *versions[] = {"vectorised", "portable"};
    for (int portable = 0; portable < 2; portable++) {
        kernels_cpu_portable_only(portable);
        check_adamw(versions[portable]);
        check_exp_max_sums(versions[portable]);
        check_swiglu(versions[portable]);
        check_cross_entropy();
    }
    kernels_cpu_portable_only(0);
    return check_report("test_kernels_cpu");
}
