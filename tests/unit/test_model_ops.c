/* test_model_ops: each CPU kernel against a naive float64 reference: forwards by value, backwards
 * by central finite differences of that reference (so the expected gradient is exact to ~1e-9
 * and the tolerance is the fp32 kernel's rounding). Attention covers GQA, the causal mask, a
 * sliding window and document (segment) masks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu_backend.h"
#include "model/ops.h"
#include "model/rng.h"
#include "util/error.h"

static uint64_t counter;

static void fill(float *x, size_t n, double scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * gale_rng_normal(42, counter++));
}

static double *to_double(const float *x, size_t n)
{
    double *d = gale_xmalloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

/* ||got - want|| / ||want|| <= tol */
static void expect_close(const char *what, const float *got, const double *want, size_t n,
                         double tol)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d += (got[i] - want[i]) * (got[i] - want[i]);
        r += want[i] * want[i];
    }
    double rel = r > 0 ? sqrt(d / r) : sqrt(d);
    CHECK_MSG(rel <= tol, "%s: relative error %.3e > %.1e", what, rel, tol);
    if (rel <= tol)
        printf("ok   %-40s rel err %.2e\n", what, rel);
}

/* A scalar loss of double inputs, for finite differences. */
typedef double (*loss_fn)(void *ctx);

/* d loss / d x[i] by a central difference; x[i] is left as it was. */
static double central_diff(loss_fn f, void *ctx, double *x, size_t i)
{
    double keep = x[i], h = 1e-6 * fmax(1.0, fabs(keep));
    x[i] = keep + h;
    double up = f(ctx);
    x[i] = keep - h;
    double down = f(ctx);
    x[i] = keep;
    return (up - down) / (2 * h);
}

/* d loss / d x[i] for every i by central differences. */
static double *finite_diff(loss_fn f, void *ctx, double *x, size_t n)
{
    double *g = gale_xmalloc(n * sizeof *g);
    for (size_t i = 0; i < n; i++)
        g[i] = central_diff(f, ctx, x, i);
    return g;
}

/* The analytic gradient against central differences at every stride-th element. */
static void expect_grad(const char *what, loss_fn f, void *ctx, double *x, const float *analytic,
                        size_t n, size_t stride, double tol)
{
    size_t m = (n + stride - 1) / stride;
    float *got = gale_xmalloc(m * sizeof *got);
    double *want = gale_xmalloc(m * sizeof *want);
    for (size_t i = 0, j = 0; i < n; i += stride, j++) {
        want[j] = central_diff(f, ctx, x, i);
        got[j] = analytic[i];
    }
    expect_close(what, got, want, m, tol);
    free(got), free(want);
}

/* ---- rmsnorm ---- */
struct rms_ctx {
    double *x, *w, *g;
    int rows, dim;
    double eps;
};

static double rms_loss(void *p)
{
    struct rms_ctx *c = p;
    double loss = 0;
    for (int r = 0; r < c->rows; r++) {
        double ss = 0;
        for (int i = 0; i < c->dim; i++)
            ss += c->x[r * c->dim + i] * c->x[r * c->dim + i];
        double s = 1 / sqrt(ss / c->dim + c->eps);
        for (int i = 0; i < c->dim; i++)
            loss += c->g[r * c->dim + i] * c->x[r * c->dim + i] * s * c->w[i];
    }
    return loss;
}

static void test_rmsnorm(struct gale_backend *be)
{
    const struct gale_ops *ops = be->ops;
    int rows = 5, dim = 12;
    size_t n = (size_t)rows * dim;
    float *x = gale_xmalloc(n * 4), *w = gale_xmalloc(dim * 4), *g = gale_xmalloc(n * 4);
    float *out = gale_xmalloc(n * 4), *rstd = gale_xmalloc(rows * 4);
    fill(x, n, 1.5);
    fill(w, dim, 1.0);
    fill(g, n, 1.0);
    ops->rmsnorm_fwd(be, out, rstd, x, w, rows, dim, 1e-5f);
    struct rms_ctx c = {to_double(x, n), to_double(w, dim), to_double(g, n), rows, dim, 1e-5};
    /* forward: loss with g = one-hot would be tedious; compare the whole output instead */
    double *want = gale_xmalloc(n * sizeof *want);
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int i = 0; i < dim; i++)
            ss += c.x[r * dim + i] * c.x[r * dim + i];
        for (int i = 0; i < dim; i++)
            want[r * dim + i] = c.x[r * dim + i] / sqrt(ss / dim + 1e-5) * c.w[i];
    }
    expect_close("rmsnorm forward", out, want, n, 1e-6);
    /* backward accumulates: start from 1s and subtract them */
    float *dx = gale_xmalloc(n * 4), *dw = gale_xmalloc(dim * 4);
    for (size_t i = 0; i < n; i++)
        dx[i] = 1;
    for (int i = 0; i < dim; i++)
        dw[i] = 1;
    ops->rmsnorm_bwd(be, dx, dw, g, x, w, rstd, rows, dim);
    for (size_t i = 0; i < n; i++)
        dx[i] -= 1;
    for (int i = 0; i < dim; i++)
        dw[i] -= 1;
    double *gx = finite_diff(rms_loss, &c, c.x, n), *gw = finite_diff(rms_loss, &c, c.w, dim);
    expect_close("rmsnorm backward dx", dx, gx, n, 1e-5);
    expect_close("rmsnorm backward dw", dw, gw, dim, 1e-5);
    free(x), free(w), free(g), free(out), free(rstd), free(dx), free(dw), free(want);
    free(c.x), free(c.w), free(c.g), free(gx), free(gw);
}

/* ---- rope ---- */
static void rope_ref(double *y, const double *x, const int32_t *pos, int rows, int heads, int hd,
                     double theta)
{
    int half = hd / 2;
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++) {
                double a = pos[r] * pow(theta, -2.0 * i / hd);
                const double *v = x + ((size_t)r * heads + h) * hd;
                double *o = y + ((size_t)r * heads + h) * hd;
                o[i] = v[i] * cos(a) - v[i + half] * sin(a);
                o[i + half] = v[i + half] * cos(a) + v[i] * sin(a);
            }
}

static void test_rope(struct gale_backend *be)
{
    const struct gale_ops *ops = be->ops;
    int rows = 6, heads = 3, hd = 8;
    size_t n = (size_t)rows * heads * hd;
    int32_t pos[] = {0, 1, 2, 7, 0, 1000};
    float *x = gale_xmalloc(n * 4), *g = gale_xmalloc(n * 4);
    fill(x, n, 1.0);
    fill(g, n, 1.0);
    double *xd = to_double(x, n), *want = gale_xmalloc(n * sizeof *want);
    rope_ref(want, xd, pos, rows, heads, hd, 10000.0);
    ops->rope_fwd(be, x, pos, rows, heads, hd, 10000.0f);
    expect_close("rope forward", x, want, n, 1e-6);
    /* the map is linear and orthogonal: its gradient is the transpose, the inverse rotation */
    double *gd = to_double(g, n), *gt = gale_xmalloc(n * sizeof *gt);
    for (size_t i = 0; i < n; i++) {
        double *e = gale_xcalloc(n, sizeof *e), *y = gale_xmalloc(n * sizeof *y);
        e[i] = 1;
        rope_ref(y, e, pos, rows, heads, hd, 10000.0);
        gt[i] = 0;
        for (size_t j = 0; j < n; j++)
            gt[i] += gd[j] * y[j];
        free(e), free(y);
    }
    ops->rope_bwd(be, g, pos, rows, heads, hd, 10000.0f);
    expect_close("rope backward", g, gt, n, 1e-6);
    free(x), free(g), free(xd), free(want), free(gd), free(gt);
}

/* ---- attention ---- */
struct att_ctx {
    double *q, *k, *v, *g;
    const int32_t *seg;
    int batch, seq, heads, kv, hd, window;
};

static void att_ref(const struct att_ctx *c, double *out)
{
    int dq = c->heads * c->hd, dkv = c->kv * c->hd, group = c->heads / c->kv;
    double *p = gale_xmalloc(sizeof(double) * c->seq);
    for (int b = 0; b < c->batch; b++)
        for (int h = 0; h < c->heads; h++)
            for (int i = 0; i < c->seq; i++) {
                const double *qi = c->q + ((size_t)b * c->seq + i) * dq + h * c->hd;
                double mx = -INFINITY;
                for (int j = 0; j < c->seq; j++) {
                    int ok = j <= i && (c->window <= 0 || i - j < c->window) &&
                             (!c->seg || c->seg[b * c->seq + i] == c->seg[b * c->seq + j]);
                    p[j] = -INFINITY;
                    if (!ok)
                        continue;
                    const double *kj = c->k + ((size_t)b * c->seq + j) * dkv + (h / group) * c->hd;
                    double s = 0;
                    for (int d = 0; d < c->hd; d++)
                        s += qi[d] * kj[d];
                    p[j] = s / sqrt((double)c->hd);
                    mx = fmax(mx, p[j]);
                }
                double sum = 0;
                for (int j = 0; j < c->seq; j++)
                    sum += p[j] == -INFINITY ? 0 : exp(p[j] - mx);
                double *o = out + ((size_t)b * c->seq + i) * dq + h * c->hd;
                for (int d = 0; d < c->hd; d++)
                    o[d] = 0;
                for (int j = 0; j < c->seq; j++) {
                    if (p[j] == -INFINITY)
                        continue;
                    const double *vj = c->v + ((size_t)b * c->seq + j) * dkv + (h / group) * c->hd;
                    for (int d = 0; d < c->hd; d++)
                        o[d] += exp(p[j] - mx) / sum * vj[d];
                }
            }
    free(p);
}

static double att_loss(void *p)
{
    struct att_ctx *c = p;
    size_t n = (size_t)c->batch * c->seq * c->heads * c->hd;
    double *out = gale_xmalloc(n * sizeof *out), loss = 0;
    att_ref(c, out);
    for (size_t i = 0; i < n; i++)
        loss += out[i] * c->g[i];
    free(out);
    return loss;
}

static void test_attention(struct gale_backend *be, const char *name, int seq, int window,
                           const int32_t *seg, int heads, int kv, size_t stride)
{
    const struct gale_ops *ops = be->ops;
    int batch = 2, hd = 4;
    size_t nq = (size_t)batch * seq * heads * hd, nkv = (size_t)batch * seq * kv * hd;
    float *q = gale_xmalloc(nq * 4), *k = gale_xmalloc(nkv * 4), *v = gale_xmalloc(nkv * 4);
    float *g = gale_xmalloc(nq * 4), *out = gale_xmalloc(nq * 4);
    float *lse = gale_xmalloc(sizeof(float) * batch * heads * seq);
    fill(q, nq, 1.0), fill(k, nkv, 1.0), fill(v, nkv, 1.0), fill(g, nq, 1.0);
    struct att_ctx c = {to_double(q, nq), to_double(k, nkv), to_double(v, nkv), to_double(g, nq),
                        seg, batch, seq, heads, kv, hd, window};
    double *want = gale_xmalloc(nq * sizeof *want);
    att_ref(&c, want);
    ops->attention_fwd(be, out, lse, q, k, v, seg, batch, seq, heads, kv, hd, window);
    char what[128];
    snprintf(what, sizeof what, "attention forward (%s)", name);
    expect_close(what, out, want, nq, 1e-6);
    float *dq = gale_xmalloc(nq * 4), *dk = gale_xmalloc(nkv * 4), *dv = gale_xmalloc(nkv * 4);
    ops->attention_bwd(be, dq, dk, dv, g, out, lse, q, k, v, seg, batch, seq, heads, kv, hd,
                       window);
    snprintf(what, sizeof what, "attention dq (%s)", name);
    expect_grad(what, att_loss, &c, c.q, dq, nq, stride, 1e-5);
    snprintf(what, sizeof what, "attention dk (%s)", name);
    expect_grad(what, att_loss, &c, c.k, dk, nkv, stride, 1e-5);
    snprintf(what, sizeof what, "attention dv (%s)", name);
    expect_grad(what, att_loss, &c, c.v, dv, nkv, stride, 1e-5);
    free(q), free(k), free(v), free(g), free(out), free(lse), free(dq), free(dk), free(dv);
    free(c.q), free(c.k), free(c.v), free(c.g), free(want);
}

/* ---- swiglu ---- */
struct swiglu_ctx {
    double *gate, *up, *g;
    size_t n;
};

static double swiglu_loss(void *p)
{
    struct swiglu_ctx *c = p;
    double loss = 0;
    for (size_t i = 0; i < c->n; i++)
        loss += c->g[i] * c->gate[i] / (1 + exp(-c->gate[i])) * c->up[i];
    return loss;
}

static void test_swiglu(struct gale_backend *be)
{
    const struct gale_ops *ops = be->ops;
    size_t n = 40;
    float *gate = gale_xmalloc(n * 4), *up = gale_xmalloc(n * 4), *g = gale_xmalloc(n * 4);
    float *out = gale_xmalloc(n * 4), *dgate = gale_xmalloc(n * 4), *dup = gale_xmalloc(n * 4);
    fill(gate, n, 3.0), fill(up, n, 1.0), fill(g, n, 1.0);
    struct swiglu_ctx c = {to_double(gate, n), to_double(up, n), to_double(g, n), n};
    double *want = gale_xmalloc(n * sizeof *want);
    for (size_t i = 0; i < n; i++)
        want[i] = c.gate[i] / (1 + exp(-c.gate[i])) * c.up[i];
    ops->swiglu_fwd(be, out, gate, up, n);
    expect_close("swiglu forward", out, want, n, 1e-6);
    /* dgate aliasing dout is allowed */
    memcpy(dgate, g, n * 4);
    ops->swiglu_bwd(be, dgate, dup, dgate, gate, up, n);
    double *gg = finite_diff(swiglu_loss, &c, c.gate, n), *gu = finite_diff(swiglu_loss, &c, c.up, n);
    expect_close("swiglu dgate", dgate, gg, n, 1e-5);
    expect_close("swiglu dup", dup, gu, n, 1e-5);
    free(gate), free(up), free(g), free(out), free(dgate), free(dup), free(want);
    free(c.gate), free(c.up), free(c.g), free(gg), free(gu);
}

/* ---- router: softmax, top-k, renormalise; aux-loss constant and z-loss terms ---- */
struct router_ctx {
    double *logits, *gw, *c;
    const int32_t *idx;  /* the top-k choice is held fixed (piecewise constant) */
    int rows, experts, k;
    double z;
};

static double router_loss(void *p)
{
    struct router_ctx *c = p;
    double loss = 0;
    for (int r = 0; r < c->rows; r++) {
        const double *x = c->logits + r * c->experts;
        double mx = -INFINITY, sum = 0, chosen = 0;
        for (int e = 0; e < c->experts; e++)
            mx = fmax(mx, x[e]);
        for (int e = 0; e < c->experts; e++)
            sum += exp(x[e] - mx);
        double lse = mx + log(sum);
        for (int e = 0; e < c->experts; e++)
            loss += c->c[e] * exp(x[e] - lse);
        for (int j = 0; j < c->k; j++)
            chosen += exp(x[c->idx[r * c->k + j]] - lse);
        for (int j = 0; j < c->k; j++)
            loss += c->gw[r * c->k + j] * exp(x[c->idx[r * c->k + j]] - lse) / chosen;
        loss += c->z * lse * lse;
    }
    return loss;
}

static void test_router(struct gale_backend *be)
{
    const struct gale_ops *ops = be->ops;
    int rows = 7, experts = 5, k = 2;
    size_t n = (size_t)rows * experts;
    float *logits = gale_xmalloc(n * 4), *probs = gale_xmalloc(n * 4), *lse = gale_xmalloc(rows * 4);
    float *w = gale_xmalloc(rows * k * 4), *gw = gale_xmalloc(rows * k * 4);
    float *cst = gale_xmalloc(experts * 4), *dl = gale_xmalloc(n * 4);
    int32_t *idx = gale_xmalloc(rows * k * 4);
    fill(logits, n, 2.0), fill(gw, rows * k, 1.0), fill(cst, experts, 0.3);
    ops->router_fwd(be, probs, lse, idx, w, logits, rows, experts, k);
    /* each choice is the most probable expert not chosen before it; weights sum to 1 */
    int bad = 0;
    for (int r = 0; r < rows; r++) {
        double sum = 0;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < experts; e++) {
                int taken = 0;
                for (int m = 0; m < j; m++)
                    taken |= idx[r * k + m] == e;
                if (!taken && (best < 0 || logits[r * experts + e] > logits[r * experts + best]))
                    best = e;
            }
            bad += idx[r * k + j] != best;
            sum += w[r * k + j];
        }
        bad += fabs(sum - 1) > 1e-6;
    }
    CHECK_MSG(!bad, "router top-k: %d wrong choices or weights", bad);
    float z = 0.05f;
    struct router_ctx c = {to_double(logits, n), to_double(gw, rows * k), to_double(cst, experts),
                           idx, rows, experts, k, z};
    ops->router_bwd(be, dl, gw, probs, lse, idx, w, cst, z, rows, experts, k);
    double *gl = finite_diff(router_loss, &c, c.logits, n);
    expect_close("router backward (top-k, aux, z)", dl, gl, n, 1e-5);
    free(logits), free(probs), free(lse), free(w), free(gw), free(cst), free(dl), free(idx);
    free(c.logits), free(c.gw), free(c.c), free(gl);
}

/* ---- cross-entropy ---- */
struct ce_ctx {
    double *x;
    const int32_t *t;
    int rows, vocab;
};

static double ce_loss(void *p)
{
    struct ce_ctx *c = p;
    double loss = 0;
    for (int r = 0; r < c->rows; r++) {
        if (c->t[r] < 0)
            continue;
        double mx = -INFINITY, sum = 0;
        for (int v = 0; v < c->vocab; v++)
            mx = fmax(mx, c->x[r * c->vocab + v]);
        for (int v = 0; v < c->vocab; v++)
            sum += exp(c->x[r * c->vocab + v] - mx);
        loss += mx + log(sum) - c->x[r * c->vocab + c->t[r]];
    }
    return loss;
}

static void test_cross_entropy(struct gale_backend *be)
{
    const struct gale_ops *ops = be->ops;
    int rows = 6, vocab = 11;
    size_t n = (size_t)rows * vocab;
    int32_t t[] = {3, -100, 0, 10, -1, 5};
    float *x = gale_xmalloc(n * 4);
    fill(x, n, 3.0);
    struct ce_ctx c = {to_double(x, n), t, rows, vocab};
    double sums[2] = {0, 0};
    ops->cross_entropy(be, x, t, rows, vocab, 0, sums);
    double want = ce_loss(&c);
    CHECK_MSG(sums[1] == 4 && fabs(sums[0] - want) <= 1e-6 * fabs(want),
              "cross-entropy: sum %.9g count %g, want %.9g and 4", sums[0], sums[1], want);
    ops->cross_entropy(be, x, t, rows, vocab, 0.25f, sums);
    CHECK_MSG(sums[1] == 8 && fabs(sums[0] - 2 * want) <= 2e-6 * fabs(want),
              "cross-entropy accumulates: sum %.9g count %g, want %.9g and 8", sums[0], sums[1],
              2 * want);
    double *g = finite_diff(ce_loss, &c, c.x, n);
    for (size_t i = 0; i < n; i++)
        g[i] *= 0.25;
    expect_close("cross-entropy gradient", x, g, n, 1e-5);
    free(x), free(c.x), free(g);
}

/* ---- experts: plan, gather, combine and their backwards ---- */
static void test_moe_routing(struct gale_backend *be)
{
    const struct gale_ops *ops = be->ops;
    int rows = 6, k = 2, experts = 3, dim = 4, slots = rows * k;
    int32_t idx[] = {0, 2, 2, 1, 1, 0, 0, 1, 2, 0, 1, 2};
    int32_t counts[3];
    int32_t slot_rows[12], slot_of[12];
    ops->moe_plan(be, counts, slot_rows, slot_of, idx, rows, experts, k);
    int bad = counts[0] != 4 || counts[1] != 4 || counts[2] != 4;
    for (int s = 0; s < slots; s++) {
        int pos = slot_of[s];
        int e = pos < 4 ? 0 : pos < 8 ? 1 : 2;
        bad += slot_rows[pos] != s / k || idx[s] != e;
    }
    float x[24], xe[48], ye[48], w[12], out[24], dout[24], dye[48], dw[12], dx[24];
    fill(x, 24, 1), fill(ye, 48, 1), fill(w, 12, 1), fill(dout, 24, 1);
    ops->moe_gather(be, xe, x, slot_rows, slots, dim);
    for (int s = 0; s < slots; s++)
        for (int c = 0; c < dim; c++)
            bad += xe[slot_of[s] * dim + c] != x[(s / k) * dim + c];
    memset(out, 0, sizeof out);
    ops->moe_combine(be, out, ye, w, slot_of, rows, k, dim);
    ops->moe_combine_bwd(be, dye, dw, dout, ye, w, slot_of, rows, k, dim);
    memset(dx, 0, sizeof dx);
    ops->moe_scatter_add(be, dx, dye, slot_rows, slots, dim);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < dim; c++) {
            double o = 0, d = 0;
            for (int j = 0; j < k; j++) {
                o += w[r * k + j] * ye[slot_of[r * k + j] * dim + c];
                d += w[r * k + j] * dout[r * dim + c];
            }
            bad += fabs(out[r * dim + c] - o) > 1e-6 || fabs(dx[r * dim + c] - d) > 1e-6;
        }
    for (int s = 0; s < slots; s++) {
        double d = 0;
        for (int c = 0; c < dim; c++)
            d += dout[(s / k) * dim + c] * ye[slot_of[s] * dim + c];
        bad += fabs(dw[s] - d) > 1e-5;
    }
    CHECK_MSG(!bad, "moe plan/gather/combine: %d mismatches", bad);
    if (!bad)
        printf("ok   moe plan, gather, combine, scatter\n");
}

/* ---- matmul (all transposes, leading dimensions), embeddings, AdamW ---- */
static void test_matmul(struct gale_backend *be)
{
    const struct gale_ops *ops = be->ops;
    int m = 5, n = 7, k = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            float a[64], b[64], c[64];
            fill(a, 64, 1), fill(b, 64, 1), fill(c, 64, 1);
            int lda = (ta ? m : k) + 1, ldb = (tb ? k : n) + 2, ldc = n + 1;
            double want[64];
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    double s = 0;
                    for (int p = 0; p < k; p++)
                        s += (ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
                    want[i * n + j] = 0.5 * s + 2.0 * c[i * ldc + j];
                }
            ops->matmul(be, ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 2.0f, c, ldc, F32_GEMM);
            float got[64];
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                    got[i * n + j] = c[i * ldc + j];
            char what[64];
            snprintf(what, sizeof what, "matmul trans_a=%d trans_b=%d", ta, tb);
            expect_close(what, got, want, (size_t)m * n, 1e-6);
        }
}

static void test_embedding(struct gale_backend *be)
{
    const struct gale_ops *ops = be->ops;
    int32_t tokens[] = {2, 0, 2, 3};
    float table[20], out[20], dout[20], dtable[20] = {0};
    fill(table, 20, 1), fill(dout, 20, 1);
    ops->embedding_fwd(be, out, table, tokens, 4, 5);
    ops->embedding_bwd(be, dtable, dout, tokens, 4, 5);
    double want_out[20], want_d[20] = {0};
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 5; c++) {
            want_out[r * 5 + c] = table[tokens[r] * 5 + c];
            want_d[tokens[r] * 5 + c] += dout[r * 5 + c];
        }
    expect_close("embedding forward", out, want_out, 20, 0);
    expect_close("embedding backward (repeated token)", dtable, want_d, 20, 1e-7);
}

static void test_adamw(struct gale_backend *be)
{
    const struct gale_ops *ops = be->ops;
    size_t n = 9;
    float p[9], g[9], m[9] = {0}, v[9] = {0};
    double pd[9], md[9] = {0}, vd[9] = {0};
    fill(p, n, 1);
    for (size_t i = 0; i < n; i++)
        pd[i] = p[i];
    double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
    const float one = 1.0f;
    for (int step = 1; step <= 3; step++) {
        fill(g, n, 1);
        ops->adamw_step(be, p, NULL, g, m, v, n, &one, (float)lr, (float)b1, (float)b2,
                        (float)eps, (float)wd, step);
        for (size_t i = 0; i < n; i++) {  /* torch.optim.AdamW, written out */
            pd[i] *= 1 - lr * wd;
            md[i] = b1 * md[i] + (1 - b1) * g[i];
            vd[i] = b2 * vd[i] + (1 - b2) * g[i] * g[i];
            double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
            pd[i] -= lr / bc1 * md[i] / (sqrt(vd[i]) / sqrt(bc2) + eps);
        }
    }
    expect_close("adamw 3 steps", p, pd, n, 1e-6);
}

#if defined(__SANITIZE_ADDRESS__)
/* ASan aborts on an allocation too large to make unless told to fail it as calloc does: the
 * failed allocation below must come back as an error */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}
#endif

/* bf16 rounding is to nearest, ties to even, on the 8 significant bits */
static void test_bf16_rounding(void)
{
    float one = 1.0f, ulp = 1.0f / 128;  /* bf16's spacing at 1 */
    CHECK(gale_round_bf16(one + ulp / 2) == one);              /* tie: to the even 1.0 */
    CHECK(gale_round_bf16(one + 3 * ulp / 2) == one + 2 * ulp); /* tie: to the even 1 + 2ulp */
    CHECK(gale_round_bf16(one + ulp / 2 + ulp / 64) == one + ulp);
    CHECK(gale_round_bf16(-(one + ulp / 4)) == -one);
    CHECK(isnan(gale_round_bf16(NAN)) && isinf(gale_round_bf16(INFINITY)));
    float x = 0.1f, r = gale_round_bf16(x);
    CHECK_MSG(fabsf(r - x) <= x / 256, "round_bf16(0.1) = %.9g is off by more than 2^-8", r);
}

/* The bf16 mode: outputs the policy keeps in bf16 are rounded, fp32 ones are not; AdamW
 * writes the rounded compute copy beside the fp32 master weights. */
static void test_bf16_mode(void)
{
    gale_error err;
    struct gale_backend *be = gale_backend_create("cpu", GALE_BF16, &err);
    CHECK_MSG(be != NULL, "bf16 backend: %s", be ? "" : err.msg);
    if (!be)
        return;
    CHECK(be->ops->supports_op(be, GALE_OP_MATMUL, GALE_BF16));
    CHECK(!be->ops->supports_op(be, GALE_OP_MATMUL, GALE_FP8_E4M3));
    float a[6], b[6], c[4], c32[4];
    fill(a, 6, 1), fill(b, 6, 1);
    struct gale_gemm_types to_bf16 = {GALE_BF16, GALE_BF16, GALE_BF16};
    be->ops->matmul(be, 0, 1, 2, 2, 3, 1, a, 3, b, 3, 0, c, 2, to_bf16);
    be->ops->matmul(be, 0, 1, 2, 2, 3, 1, a, 3, b, 3, 0, c32, 2, F32_GEMM);
    int bad = 0;
    for (int i = 0; i < 4; i++)
        bad += c[i] != gale_round_bf16(c32[i]);
    CHECK_MSG(bad == 0, "bf16 product outputs are not the rounded fp32 ones");
    float p[5] = {0.1f, -0.2f, 0.3f, 1.7f, -2.9f}, g[5] = {1, -1, 0.5f, 0.25f, 2};
    float m[5] = {0}, v[5] = {0}, copy[5];
    const float one = 1.0f;
    be->ops->adamw_step(be, p, copy, g, m, v, 5, &one, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1);
    for (int i = 0; i < 5; i++)
        bad += copy[i] != gale_round_bf16(p[i]) || p[i] == gale_round_bf16(p[i]);
    CHECK_MSG(bad == 0, "AdamW's compute copy is not the rounded master (or the master is)");
    double stats[3], probs_rows[2] = {0};
    float probs[4] = {0.25f, 0.75f, 0.5f, 0.5f}, lse[2] = {1.5f, -2};
    be->ops->router_stats(be, stats, probs, lse, 2, 2);
    CHECK_MSG(stats[0] == 0.75 && stats[1] == 1.25 && stats[2] == 6.25,
              "router_stats %g %g %g", stats[0], stats[1], stats[2]);
    double w[3] = {2, 0, 1};
    be->ops->dot_f64(be, probs_rows, stats, w, 3);
    CHECK_MSG(probs_rows[0] == 7.75, "dot_f64 %g", probs_rows[0]);
    CHECK(gale_backend_sync(be, &err) == 0);
    CHECK(be->ops->alloc(be, (size_t)1 << 62) == NULL);
    CHECK_MSG(gale_backend_sync(be, &err) == -1 && strstr(err.msg, "alloc") &&
                  strstr(err.msg, "4611686018427387904 bytes"),
              "a failed allocation names the op and the size: %s", err.msg);
    CHECK(gale_backend_sync(be, &err) == 0);  /* reported once */
    gale_backend_free(be);
}

int main(void)
{
    struct gale_backend *be = cpu_backend();
    test_matmul(be);
    test_bf16_rounding();
    test_bf16_mode();
    test_embedding(be);
    test_rmsnorm(be);
    test_rope(be);
    int32_t seg[18] = {0, 0, 0, 1, 1, 1, 1, 1, 2, 0, 0, 0, 0, 0, 0, 3, 3, 3};
    test_attention(be, "causal, GQA 4/2", 9, 0, NULL, 4, 2, 1);
    test_attention(be, "window 3, GQA 4/2", 9, 3, NULL, 4, 2, 1);
    test_attention(be, "documents, MQA 3/1", 9, 0, seg, 3, 1, 1);
    test_attention(be, "window 4 + documents, MHA", 9, 4, seg, 2, 2, 1);
    /* longer than the kernel's query blocks: several blocks, windows reaching across them */
    int32_t long_seg[2 * 150];
    for (int i = 0; i < 300; i++)
        long_seg[i] = i < 150 ? (i < 70 ? 0 : 1) : (i - 150) / 50;
    test_attention(be, "150 tokens, causal, GQA 4/2", 150, 0, NULL, 4, 2, 61);
    test_attention(be, "150 tokens, window 80 + documents", 150, 80, long_seg, 2, 1, 61);
    test_attention(be, "150 tokens, window 5", 150, 5, NULL, 2, 2, 61);
    test_swiglu(be);
    test_router(be);
    test_cross_entropy(be);
    test_moe_routing(be);
    test_adamw(be);
    gale_backend_free(be);
    return check_report("test_model_ops");
}
