/* test_cuda_ops: every op of the CUDA backend against the CPU backend, in fp32 and in bf16
 * (against the CPU's bf16 mode), on random inputs at several shapes, ragged ones included
 * (rows and sequences not multiples of a tile, experts with 0 and 1 tokens, windows larger and
 * smaller than the sequence, documents). The CUDA outputs are poisoned with NaN before each op
 * (outputs that accumulate start from the same finite values on both), and a NaN or infinity
 * where the CPU has a number fails. Prints one line per check: op, shape, max relative error
 * (max |cuda - cpu| / max |cpu| over the tensor) and its tolerance.
 *
 * Tolerances, per mode: fp32 1e-4 (the same fp32 arithmetic in other orders of summation;
 * the attention's and norms' sums run over up to a few thousand terms); bf16 2^-7 (each side
 * rounds its fp32 result to bf16, so a value near a rounding boundary lands one bf16 step,
 * 2^-8 relative, apart; twice that covers the fp32 differences before the rounding); products
 * with an fp32 operand in bf16 mode 2^-6 (the GPU rounds that operand to bf16 first, one more
 * 2^-8 per term). Integer outputs (top-k choices, expert counts, the permutation) must match
 * exactly. Exits 77 (ctest: skipped) when there is no CUDA module or device; fails when the
 * build made the module (GALE_CUDA_MODULE_BUILT=1) and it does not open.
 * GALE_CUDA_TEST=attention: only two attention shapes (for compute-sanitizer's racecheck). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/ops.h"

#define SKIP 77
#define TOL_F32 1e-4
#define TOL_BF16 (1.0 / 128)
#define TOL_BF16_MIXED (1.0 / 64)

struct pair {
    struct gale_backend *cpu, *gpu;
    int bf;              /* compute dtype bf16 */
    int failed, checks;
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* n random values in [-scale, scale], rounded to bf16 when `compute` holds them in bf16 mode */
static float *rnd(const struct pair *p, size_t n, float scale, int compute)
{
    float *x = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        x[i] = scale * uniform();
        if (compute && p->bf)
            x[i] = gale_round_bf16(x[i]);
    }
    return x;
}

static float *dup_f(const float *x, size_t n)
{
    float *y = malloc(sizeof(float) * (n ? n : 1));
    memcpy(y, x, sizeof(float) * n);
    return y;
}

static size_t elem(const struct pair *p, int compute)
{
    return compute && p->bf ? 2 : 4;
}

/* A device copy of host values: fp32, or converted to the compute dtype. */
static float *put(struct pair *p, const float *h, size_t n, int compute)
{
    struct gale_backend *g = p->gpu;
    float *d = g->ops->alloc(g, n * elem(p, compute) + 16);
    if (compute && p->bf) {
        float *tmp = g->ops->alloc(g, n * 4 + 16);
        g->ops->upload(g, tmp, h, n * 4);
        g->ops->convert(g, d, GALE_BF16, tmp, n);
        g->ops->synchronize(g);
        g->ops->free(g, tmp);
    } else {
        g->ops->upload(g, d, h, n * 4);
    }
    g->ops->synchronize(g);
    return d;
}

static int32_t *put_i32(struct pair *p, const int32_t *h, size_t n)
{
    struct gale_backend *g = p->gpu;
    int32_t *d = g->ops->alloc(g, n * 4 + 16);
    g->ops->upload(g, d, h, n * 4);
    g->ops->synchronize(g);
    return d;
}

/* A device buffer of n NaNs. */
static float *poisoned(struct pair *p, size_t n, int compute)
{
    float *h = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    float *d = put(p, h, n, compute);
    free(h);
    return d;
}

static float *get(struct pair *p, const float *d, size_t n, int compute)
{
    struct gale_backend *g = p->gpu;
    float *h = malloc(sizeof(float) * (n ? n : 1));
    if (compute && p->bf) {
        uint16_t *raw = malloc(2 * (n ? n : 1));
        g->ops->download(g, raw, d, n * 2);
        g->ops->synchronize(g);
        for (size_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)raw[i] << 16;
            memcpy(&h[i], &u, 4);
        }
        free(raw);
    } else {
        g->ops->download(g, h, d, n * 4);
        g->ops->synchronize(g);
    }
    return h;
}

static void release(struct pair *p, void *d)
{
    p->gpu->ops->free(p->gpu, d);
}

/* Compares the CUDA result (device d) with the CPU's (host ref); frees nothing. */
static void check(struct pair *p, const char *op, const char *shape, const float *ref, const float *d, size_t n,
                  int compute, double tol)
{
    gale_error err;
    if (gale_backend_sync(p->gpu, &err)) {
        printf("%-22s %-44s FAILED: %s\n", op, shape, err.msg);
        p->failed++;
        p->checks++;
        return;
    }
    float *got = get(p, d, n, compute);
    double maxref = 0, maxdiff = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (isfinite(ref[i]) && !isfinite(got[i]))
            bad = 1;
        double r = fabs((double)ref[i]), e = fabs((double)got[i] - ref[i]);
        maxref = r > maxref ? r : maxref;
        maxdiff = e > maxdiff || isnan(e) ? e : maxdiff;
    }
    double rel = bad || isnan(maxdiff) ? INFINITY : maxdiff / (maxref > 1e-30 ? maxref : 1e-30);
    int ok = rel <= tol;
    printf("%-22s %-44s %-5s %10.3e  tol %8.2e  %s\n", op, shape, p->bf ? "bf16" : "fp32", rel, tol,
           ok ? "ok" : "FAIL");
    p->failed += !ok;
    p->checks++;
    free(got);
}

static void check_i32(struct pair *p, const char *op, const char *shape, const int32_t *ref, const int32_t *d, size_t n)
{
    int32_t *got = malloc(4 * (n ? n : 1));
    p->gpu->ops->download(p->gpu, got, d, n * 4);
    gale_error err;
    int failed = gale_backend_sync(p->gpu, &err);
    size_t wrong = 0;
    for (size_t i = 0; !failed && i < n; i++)
        wrong += got[i] != ref[i];
    int ok = !failed && !wrong;
    printf("%-22s %-44s %-5s %10zu  (int: exact)  %s\n", op, shape, p->bf ? "bf16" : "fp32", wrong, ok ? "ok" : "FAIL");
    p->failed += !ok;
    p->checks++;
    free(got);
}

static double tol(const struct pair *p)
{
    return p->bf ? TOL_BF16 : TOL_F32;
}

/* ---- the ops ---- */

static void test_matmul(struct pair *p, int ta, int tb, int m, int n, int k, float beta, int a_f32, int c_f32)
{
    enum gale_dtype w = p->bf ? GALE_BF16 : GALE_F32;
    struct gale_gemm_types t = {a_f32 ? GALE_F32 : w, w, c_f32 ? GALE_F32 : w};
    int lda = ta ? m : k, ldb = tb ? k : n, ldc = n;
    size_t na = (size_t)m * k, nb = (size_t)k * n, nc = (size_t)m * n;
    float *a = rnd(p, na, 1, !a_f32), *b = rnd(p, nb, 1, 1), *c = rnd(p, nc, 1, !c_f32);
    float *ca = put(p, a, na, !a_f32), *cb = put(p, b, nb, 1);
    float *cc = beta == 0 ? poisoned(p, nc, !c_f32) : put(p, c, nc, !c_f32);
    p->cpu->ops->matmul(p->cpu, ta, tb, m, n, k, 0.5f, a, lda, b, ldb, beta, c, ldc, t);
    p->gpu->ops->matmul(p->gpu, ta, tb, m, n, k, 0.5f, ca, lda, cb, ldb, beta, cc, ldc, t);
    char shape[96];
    snprintf(shape, sizeof shape, "%c%c %dx%dx%d beta %g A %s C %s", ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, beta,
             a_f32 ? "f32" : "cd", c_f32 ? "f32" : "cd");
    check(p, "matmul", shape, c, cc, nc, !c_f32, p->bf && a_f32 ? TOL_BF16_MIXED : tol(p));
    free(a), free(b), free(c);
    release(p, ca), release(p, cb), release(p, cc);
}

static void test_rows(struct pair *p, int rows, int dim, int vocab)
{
    char shape[96];
    snprintf(shape, sizeof shape, "%d rows x %d (vocab %d)", rows, dim, vocab);
    size_t n = (size_t)rows * dim;
    /* embedding */
    int32_t *tok = malloc(4 * rows);
    for (int r = 0; r < rows; r++)
        tok[r] = r % 3 == 0 ? 1 : (int32_t)((uniform() * 0.5f + 0.5f) * (vocab - 1));  /* repeats */
    float *table = rnd(p, (size_t)vocab * dim, 1, 1), *out = malloc(4 * n);
    float *ctable = put(p, table, (size_t)vocab * dim, 1), *cout = poisoned(p, n, 1);
    int32_t *ctok = put_i32(p, tok, rows);
    p->cpu->ops->embedding_fwd(p->cpu, out, table, tok, rows, dim);
    p->gpu->ops->embedding_fwd(p->gpu, cout, ctable, ctok, rows, dim);
    check(p, "embedding_fwd", shape, out, cout, n, 1, tol(p));
    float *dout = rnd(p, n, 1, 1), *dtab = rnd(p, (size_t)vocab * dim, 1, 0);
    float *cdout = put(p, dout, n, 1), *cdtab = put(p, dtab, (size_t)vocab * dim, 0);
    p->cpu->ops->embedding_bwd(p->cpu, dtab, dout, tok, rows, dim);
    p->gpu->ops->embedding_bwd(p->gpu, cdtab, cdout, ctok, rows, dim);
    check(p, "embedding_bwd", shape, dtab, cdtab, (size_t)vocab * dim, 0, tol(p));
    /* rmsnorm */
    float *x = rnd(p, n, 2, 1), *w = rnd(p, dim, 1, 1), *rstd = malloc(4 * rows);
    float *cx = put(p, x, n, 1), *cw = put(p, w, dim, 1), *crstd = poisoned(p, rows, 0);
    p->cpu->ops->rmsnorm_fwd(p->cpu, out, rstd, x, w, rows, dim, 1e-5f);
    p->gpu->ops->rmsnorm_fwd(p->gpu, cout, crstd, cx, cw, rows, dim, 1e-5f);
    check(p, "rmsnorm_fwd", shape, out, cout, n, 1, tol(p));
    check(p, "rmsnorm_fwd rstd", shape, rstd, crstd, rows, 0, TOL_F32);
    float *dx = rnd(p, n, 1, 1), *dw = rnd(p, dim, 1, 0);
    float *cdx = put(p, dx, n, 1), *cdw = put(p, dw, dim, 0);
    release(p, crstd);
    crstd = put(p, rstd, rows, 0);
    p->cpu->ops->rmsnorm_bwd(p->cpu, dx, dw, dout, x, w, rstd, rows, dim);
    p->gpu->ops->rmsnorm_bwd(p->gpu, cdx, cdw, cdout, cx, cw, crstd, rows, dim);
    check(p, "rmsnorm_bwd dx", shape, dx, cdx, n, 1, tol(p));
    check(p, "rmsnorm_bwd dw", shape, dw, cdw, dim, 0, tol(p));
    /* swiglu */
    float *up = rnd(p, n, 3, 1), *cup = put(p, up, n, 1);
    release(p, cout);
    cout = poisoned(p, n, 1);
    p->cpu->ops->swiglu_fwd(p->cpu, out, x, up, n);
    p->gpu->ops->swiglu_fwd(p->gpu, cout, cx, cup, n);
    check(p, "swiglu_fwd", shape, out, cout, n, 1, tol(p));
    float *dup = malloc(4 * n), *cdup = poisoned(p, n, 1), *dg = dup_f(dout, n), *cdg = put(p, dout, n, 1);
    p->cpu->ops->swiglu_bwd(p->cpu, dg, dup, dg, x, up, n);
    p->gpu->ops->swiglu_bwd(p->gpu, cdg, cdup, cdg, cx, cup, n);
    check(p, "swiglu_bwd dgate", shape, dg, cdg, n, 1, tol(p));
    check(p, "swiglu_bwd dup", shape, dup, cdup, n, 1, tol(p));
    /* dropout: the same counter-based mask on both, overwriting and accumulating */
    for (int acc = 0; acc < 2; acc++) {
        float *dr = dup_f(dout, n), *cdr = put(p, dout, n, 1);
        p->cpu->ops->dropout(p->cpu, dr, x, n, 0.25f, 1234u + (uint64_t)acc, acc);
        p->gpu->ops->dropout(p->gpu, cdr, cx, n, 0.25f, 1234u + (uint64_t)acc, acc);
        check(p, acc ? "dropout (accumulate)" : "dropout", shape, dr, cdr, n, 1, tol(p));
        free(dr);
        release(p, cdr);
    }
    /* cross-entropy over rows x vocab, one ignored row, with and without the gradient */
    size_t nl = (size_t)rows * vocab;
    float *lg = rnd(p, nl, 8, 0);
    int32_t *tg = malloc(4 * rows);
    for (int r = 0; r < rows; r++)
        tg[r] = r == rows / 2 ? -100 : tok[r];
    int32_t *ctg = put_i32(p, tg, rows);
    for (int grad = 0; grad < 2; grad++) {
        double sums[2] = {0.5, 1}, zero2[2] = {0.5, 1}, got[2];
        float *lr = dup_f(lg, nl), *clg = put(p, lg, nl, 0);
        double *csums = p->gpu->ops->alloc(p->gpu, sizeof sums);
        p->gpu->ops->upload(p->gpu, csums, zero2, sizeof zero2);
        p->cpu->ops->cross_entropy(p->cpu, lr, tg, rows, vocab, grad ? 0.25f : 0, sums);
        p->gpu->ops->cross_entropy(p->gpu, clg, ctg, rows, vocab, grad ? 0.25f : 0, csums);
        p->gpu->ops->download(p->gpu, got, csums, sizeof got);
        p->gpu->ops->synchronize(p->gpu);
        float fs[2] = {(float)sums[0], (float)sums[1]}, *cfs = put(p, (float[]){(float)got[0], (float)got[1]}, 2, 0);
        check(p, grad ? "cross_entropy+grad sums" : "cross_entropy sums", shape, fs, cfs, 2, 0, TOL_F32);
        if (grad)
            check(p, "cross_entropy grad", shape, lr, clg, nl, 0, TOL_F32);
        release(p, cfs), release(p, clg), release(p, csums);
        free(lr);
    }
    free(tok), free(table), free(out), free(dout), free(dtab), free(x), free(w), free(rstd), free(dx), free(dw);
    free(up), free(dup), free(dg), free(lg), free(tg);
    release(p, ctable), release(p, cout), release(p, ctok), release(p, cdout), release(p, cdtab), release(p, cx);
    release(p, cw), release(p, crstd), release(p, cdx), release(p, cdw), release(p, cup), release(p, cdup);
    release(p, cdg), release(p, ctg);
}

static void test_rope(struct pair *p, int rows, int heads, int hd)
{
    char shape[96];
    snprintf(shape, sizeof shape, "%d rows x %d heads x %d", rows, heads, hd);
    size_t n = (size_t)rows * heads * hd;
    int32_t *pos = malloc(4 * rows);
    for (int r = 0; r < rows; r++)
        pos[r] = r * 37 % 5000;
    float *x = rnd(p, n, 1, 1), *cx = put(p, x, n, 1);
    int32_t *cpos = put_i32(p, pos, rows);
    p->cpu->ops->rope_fwd(p->cpu, x, pos, rows, heads, hd, 10000.0f);
    p->gpu->ops->rope_fwd(p->gpu, cx, cpos, rows, heads, hd, 10000.0f);
    check(p, "rope_fwd", shape, x, cx, n, 1, tol(p));
    release(p, cx);
    cx = put(p, x, n, 1);
    p->cpu->ops->rope_bwd(p->cpu, x, pos, rows, heads, hd, 1e6f);
    p->gpu->ops->rope_bwd(p->gpu, cx, cpos, rows, heads, hd, 1e6f);
    check(p, "rope_bwd", shape, x, cx, n, 1, tol(p));
    free(pos), free(x);
    release(p, cx), release(p, cpos);
}

static void test_attention(struct pair *p, int batch, int seq, int heads, int kv, int hd, int window, int docs)
{
    char shape[96];
    snprintf(shape, sizeof shape, "B%d T%d H%d/%d hd%d W%d%s", batch, seq, heads, kv, hd, window, docs ? " docs" : "");
    size_t rows = (size_t)batch * seq, nq = rows * heads * hd, nkv = rows * kv * hd, nl = rows * heads;
    int32_t *seg = NULL, *cseg = NULL;
    if (docs) {
        seg = malloc(4 * rows);
        for (size_t r = 0; r < rows; r++)
            seg[r] = (int32_t)((r % seq) / 23);  /* documents of 23 tokens */
        cseg = put_i32(p, seg, rows);
    }
    float *q = rnd(p, nq, 1, 1), *k = rnd(p, nkv, 1, 1), *v = rnd(p, nkv, 1, 1);
    float *cq = put(p, q, nq, 1), *ck = put(p, k, nkv, 1), *cv = put(p, v, nkv, 1);
    float *out = malloc(4 * nq), *lse = malloc(4 * nl), *cout = poisoned(p, nq, 1), *clse = poisoned(p, nl, 0);
    p->cpu->ops->attention_fwd(p->cpu, out, lse, q, k, v, seg, batch, seq, heads, kv, hd, window);
    p->gpu->ops->attention_fwd(p->gpu, cout, clse, cq, ck, cv, cseg, batch, seq, heads, kv, hd, window);
    check(p, "attention_fwd", shape, out, cout, nq, 1, tol(p));
    check(p, "attention_fwd lse", shape, lse, clse, nl, 0, TOL_F32);
    /* the backward from the CPU's forward on both, so only the backward is compared */
    float *dout = rnd(p, nq, 1, 1), *cdout = put(p, dout, nq, 1);
    release(p, cout), release(p, clse);
    cout = put(p, out, nq, 1), clse = put(p, lse, nl, 0);
    float *dq = malloc(4 * nq), *dk = malloc(4 * nkv), *dv = malloc(4 * nkv);
    float *cdq = poisoned(p, nq, 1), *cdk = poisoned(p, nkv, 1), *cdv = poisoned(p, nkv, 1);
    p->cpu->ops->attention_bwd(p->cpu, dq, dk, dv, dout, out, lse, q, k, v, seg, batch, seq, heads, kv, hd, window);
    p->gpu->ops->attention_bwd(p->gpu, cdq, cdk, cdv, cdout, cout, clse, cq, ck, cv, cseg, batch, seq, heads, kv, hd,
                               window);
    check(p, "attention_bwd dq", shape, dq, cdq, nq, 1, tol(p));
    check(p, "attention_bwd dk", shape, dk, cdk, nkv, 1, tol(p));
    check(p, "attention_bwd dv", shape, dv, cdv, nkv, 1, tol(p));
    /* generation: the last n_q queries of sequence 0 against its keys */
    if (!docs) {
        int n_q = seq < 5 ? seq : 5;
        size_t at = (size_t)(seq - n_q) * heads * hd, nc = (size_t)n_q * heads * hd;
        float *co = poisoned(p, nc, 1), *o = malloc(4 * nc);
        p->cpu->ops->attention_cached_fwd(p->cpu, o, q + at, k, v, n_q, seq, heads, kv, hd, window);
        p->gpu->ops->attention_cached_fwd(p->gpu, co, (float *)((char *)cq + at * (p->bf ? 2 : 4)), ck, cv, n_q, seq,
                                          heads, kv, hd, window);
        check(p, "attention_cached_fwd", shape, o, co, nc, 1, tol(p));
        release(p, co);
        free(o);
    }
    free(seg), free(q), free(k), free(v), free(out), free(lse), free(dout), free(dq), free(dk), free(dv);
    if (cseg)
        release(p, cseg);
    release(p, cq), release(p, ck), release(p, cv), release(p, cout), release(p, clse), release(p, cdout);
    release(p, cdq), release(p, cdk), release(p, cdv);
}

/* Router and experts over `rows` tokens and E experts, top k: expert E-1 gets no token and
 * expert E-2 exactly one (row 0), so the per-expert shapes include 0 and 1 rows. */
static void test_moe(struct pair *p, int rows, int ne, int k, int dim)
{
    char shape[96];
    snprintf(shape, sizeof shape, "%d rows, %d experts top %d, dim %d", rows, ne, k, dim);
    size_t nl = (size_t)rows * ne, nk = (size_t)rows * k, nx = (size_t)rows * dim, ns = nk * dim;
    float *logits = rnd(p, nl, 2, 0);
    for (int r = 0; r < rows; r++) {
        logits[(size_t)r * ne + ne - 1] = -30;
        logits[(size_t)r * ne + ne - 2] = r == 0 ? 30 : -30;
    }
    float *probs = malloc(4 * nl), *lse = malloc(4 * rows), *tw = malloc(4 * nk);
    int32_t *idx = malloc(4 * nk);
    float *clog = put(p, logits, nl, 0), *cprobs = poisoned(p, nl, 0), *clse = poisoned(p, rows, 0);
    float *ctw = poisoned(p, nk, 0);
    int32_t *cidx = p->gpu->ops->alloc(p->gpu, 4 * nk);
    p->cpu->ops->router_fwd(p->cpu, probs, lse, idx, tw, logits, rows, ne, k);
    p->gpu->ops->router_fwd(p->gpu, cprobs, clse, cidx, ctw, clog, rows, ne, k);
    check(p, "router_fwd probs", shape, probs, cprobs, nl, 0, TOL_F32);
    check(p, "router_fwd lse", shape, lse, clse, rows, 0, TOL_F32);
    check(p, "router_fwd topk_w", shape, tw, ctw, nk, 0, TOL_F32);
    check_i32(p, "router_fwd topk_idx", shape, idx, cidx, nk);
    /* statistics */
    double stats[257], cst_h[257];
    double *cst = p->gpu->ops->alloc(p->gpu, sizeof(double) * (ne + 1));
    p->cpu->ops->router_stats(p->cpu, stats, probs, lse, rows, ne);
    p->gpu->ops->router_stats(p->gpu, cst, cprobs, clse, rows, ne);
    p->gpu->ops->download(p->gpu, cst_h, cst, sizeof(double) * (ne + 1));
    p->gpu->ops->synchronize(p->gpu);
    float fs[257], fg[257];
    for (int e = 0; e <= ne; e++)
        fs[e] = (float)stats[e], fg[e] = (float)cst_h[e];
    float *cfg = put(p, fg, ne + 1, 0);
    check(p, "router_stats", shape, fs, cfg, ne + 1, 0, TOL_F32);
    /* backward */
    float *dtw = rnd(p, nk, 1, 0), *dpc = rnd(p, ne, 0.1f, 0), *dl = malloc(4 * nl);
    float *cdtw = put(p, dtw, nk, 0), *cdpc = put(p, dpc, ne, 0), *cdl = poisoned(p, nl, 0);
    p->cpu->ops->router_bwd(p->cpu, dl, dtw, probs, lse, idx, tw, dpc, 0.01f, rows, ne, k);
    p->gpu->ops->router_bwd(p->gpu, cdl, cdtw, cprobs, clse, cidx, ctw, cdpc, 0.01f, rows, ne, k);
    check(p, "router_bwd", shape, dl, cdl, nl, 0, TOL_F32);
    /* permutation */
    int32_t *counts = malloc(4 * ne), *srows = malloc(4 * nk), *sof = malloc(4 * nk);
    int32_t *ccounts = p->gpu->ops->alloc(p->gpu, 4 * ne), *csrows = p->gpu->ops->alloc(p->gpu, 4 * nk);
    int32_t *csof = p->gpu->ops->alloc(p->gpu, 4 * nk);
    p->cpu->ops->moe_plan(p->cpu, counts, srows, sof, idx, rows, ne, k);
    p->gpu->ops->moe_plan(p->gpu, ccounts, csrows, csof, cidx, rows, ne, k);
    check_i32(p, "moe_plan counts", shape, counts, ccounts, ne);
    check_i32(p, "moe_plan slot_rows", shape, srows, csrows, nk);
    check_i32(p, "moe_plan slot_of", shape, sof, csof, nk);
    if (counts[ne - 1] != 0 || counts[ne - 2] != 1)
        printf("note: expert counts %d and %d, meant 0 and 1\n", counts[ne - 1], counts[ne - 2]);
    float *x = rnd(p, nx, 1, 1), *cx = put(p, x, nx, 1), *xe = malloc(4 * ns), *cxe = poisoned(p, ns, 1);
    p->cpu->ops->moe_gather(p->cpu, xe, x, srows, (int)nk, dim);
    p->gpu->ops->moe_gather(p->gpu, cxe, cx, csrows, (int)nk, dim);
    check(p, "moe_gather", shape, xe, cxe, ns, 1, tol(p));
    float *ye = rnd(p, ns, 1, 1), *cye = put(p, ye, ns, 1), *o = rnd(p, nx, 1, 1), *co = put(p, o, nx, 1);
    p->cpu->ops->moe_combine(p->cpu, o, ye, tw, sof, rows, k, dim);
    p->gpu->ops->moe_combine(p->gpu, co, cye, ctw, csof, rows, k, dim);
    check(p, "moe_combine", shape, o, co, nx, 1, tol(p));
    float *dout = rnd(p, nx, 1, 1), *cdout = put(p, dout, nx, 1), *dye = malloc(4 * ns), *cdye = poisoned(p, ns, 1);
    float *dtw2 = malloc(4 * nk), *cdtw2 = poisoned(p, nk, 0);
    p->cpu->ops->moe_combine_bwd(p->cpu, dye, dtw2, dout, ye, tw, sof, rows, k, dim);
    p->gpu->ops->moe_combine_bwd(p->gpu, cdye, cdtw2, cdout, cye, ctw, csof, rows, k, dim);
    check(p, "moe_combine_bwd dye", shape, dye, cdye, ns, 1, tol(p));
    check(p, "moe_combine_bwd dtopk_w", shape, dtw2, cdtw2, nk, 0, TOL_F32 * 10);
    float *dx = rnd(p, nx, 1, 1), *cdx = put(p, dx, nx, 1);
    p->cpu->ops->moe_scatter_add(p->cpu, dx, ye, srows, (int)nk, dim);
    p->gpu->ops->moe_scatter_add(p->gpu, cdx, cye, csrows, (int)nk, dim);
    check(p, "moe_scatter_add", shape, dx, cdx, nx, 1, tol(p));
    free(logits), free(probs), free(lse), free(tw), free(idx), free(dtw), free(dpc), free(dl), free(counts);
    free(srows), free(sof), free(x), free(xe), free(ye), free(o), free(dout), free(dye), free(dtw2), free(dx);
    release(p, clog), release(p, cprobs), release(p, clse), release(p, ctw), release(p, cidx), release(p, cst);
    release(p, cfg), release(p, cdtw), release(p, cdpc), release(p, cdl), release(p, ccounts), release(p, csrows);
    release(p, csof), release(p, cx), release(p, cxe), release(p, cye), release(p, co), release(p, cdout);
    release(p, cdye), release(p, cdtw2), release(p, cdx);
}

static void test_optimizer(struct pair *p, size_t n)
{
    char shape[96];
    snprintf(shape, sizeof shape, "%zu elements", n);
    float *w = rnd(p, n, 1, 0), *g = rnd(p, n, 0.01f, 0), *m = rnd(p, n, 0.001f, 0), *v = malloc(4 * n);
    for (size_t i = 0; i < n; i++)
        v[i] = 1e-6f * (uniform() + 1.5f);
    float *cw = put(p, w, n, 0), *cg = put(p, g, n, 0), *cm = put(p, m, n, 0), *cv = put(p, v, n, 0);
    float *copy = malloc(4 * n), *ccopy = poisoned(p, n, 1);
    /* the clip factor: a device scalar */
    float half = 0.5f, *chalf = put(p, &half, 1, 0);
    p->cpu->ops->adamw_step(p->cpu, w, p->bf ? copy : NULL, g, m, v, n, &half, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3);
    p->gpu->ops->adamw_step(p->gpu, cw, p->bf ? ccopy : NULL, cg, cm, cv, n, chalf, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3);
    check(p, "adamw_step p", shape, w, cw, n, 0, TOL_F32);
    check(p, "adamw_step m", shape, m, cm, n, 0, TOL_F32);
    check(p, "adamw_step v", shape, v, cv, n, 0, TOL_F32);
    if (p->bf)
        check(p, "adamw_step compute copy", shape, copy, ccopy, n, 1, tol(p));
    double s_cpu = 0.5, s_gpu = 0, *cs = p->gpu->ops->alloc(p->gpu, sizeof(double));
    float f_cpu, *cf = p->gpu->ops->alloc(p->gpu, sizeof(float));
    p->gpu->ops->upload(p->gpu, cs, &s_cpu, sizeof s_cpu);  /* sumsq adds to what is there */
    p->cpu->ops->sumsq(p->cpu, &s_cpu, g, n);
    p->gpu->ops->sumsq(p->gpu, cs, cg, n);
    p->cpu->ops->clip_factor(p->cpu, &f_cpu, &s_cpu, 0.5 * sqrt(s_cpu));
    p->gpu->ops->clip_factor(p->gpu, cf, cs, 0.5 * sqrt(s_cpu));
    p->gpu->ops->download(p->gpu, &s_gpu, cs, sizeof s_gpu);
    p->gpu->ops->synchronize(p->gpu);
    float fs = (float)s_cpu, *cfs = put(p, (float[]){(float)s_gpu}, 1, 0);
    check(p, "sumsq", shape, &fs, cfs, 1, 0, 1e-6);
    check(p, "clip_factor", shape, &f_cpu, cf, 1, 0, 1e-6);
    p->cpu->ops->axpy(p->cpu, g, m, n, -2.0f);
    p->gpu->ops->axpy(p->gpu, cg, cm, n, -2.0f);
    check(p, "axpy", shape, g, cg, n, 0, 1e-6);
    float *cc = poisoned(p, n, 1);
    p->cpu->ops->convert(p->cpu, copy, p->bf ? GALE_BF16 : GALE_F32, w, n);
    p->gpu->ops->convert(p->gpu, cc, p->bf ? GALE_BF16 : GALE_F32, cw, n);
    check(p, "convert", shape, copy, cc, n, 1, 0);
    double x[9], wt[9], acc = 0.25, cacc_h = 0;
    for (int i = 0; i < 9; i++)
        x[i] = uniform(), wt[i] = uniform();
    double *cx = p->gpu->ops->alloc(p->gpu, sizeof x), *cwt = p->gpu->ops->alloc(p->gpu, sizeof wt);
    double *cacc = p->gpu->ops->alloc(p->gpu, sizeof acc);
    p->gpu->ops->upload(p->gpu, cx, x, sizeof x);
    p->gpu->ops->upload(p->gpu, cwt, wt, sizeof wt);
    p->gpu->ops->upload(p->gpu, cacc, &acc, sizeof acc);
    p->cpu->ops->dot_f64(p->cpu, &acc, x, wt, 9);
    p->gpu->ops->dot_f64(p->gpu, cacc, cx, cwt, 9);
    p->gpu->ops->download(p->gpu, &cacc_h, cacc, sizeof acc);
    p->gpu->ops->synchronize(p->gpu);
    float fa = (float)acc, *cfa = put(p, (float[]){(float)cacc_h}, 1, 0);
    check(p, "dot_f64", "9 elements", &fa, cfa, 1, 0, 1e-7);
    free(w), free(g), free(m), free(v), free(copy);
    release(p, cw), release(p, cg), release(p, cm), release(p, cv), release(p, ccopy), release(p, cfs);
    release(p, chalf), release(p, cs), release(p, cf);
    release(p, cc), release(p, cx), release(p, cwt), release(p, cacc), release(p, cfa);
}

/* A failure is reported, named and sticky, not an abort. */
static void test_errors(struct pair *p)
{
    gale_error err;
    void *huge = p->gpu->ops->alloc(p->gpu, (size_t)1 << 62);
    int failed = gale_backend_sync(p->gpu, &err);
    int ok = !huge && failed && strstr(err.msg, "alloc") && !gale_backend_sync(p->gpu, &err);
    printf("%-22s %-44s %-5s %10s  %s\n", "sticky error", "alloc of 2^62 bytes", p->bf ? "bf16" : "fp32",
           failed ? "reported" : "missed", ok ? "ok" : "FAIL");
    if (failed)
        printf("  (%s)\n", err.msg);
    p->failed += !ok;
    p->checks++;
}

/* GALE_CUDA_TEST=attention runs the attention checks only (compute-sanitizer's racecheck). */
static void run_mode(struct pair *p)
{
    const char *only = getenv("GALE_CUDA_TEST");
    if (only && !strcmp(only, "attention")) {
        test_attention(p, 2, 77, 4, 2, 64, 0, 0);
        test_attention(p, 1, 130, 8, 2, 128, 32, 1);
        return;
    }
    test_errors(p);
    /* products: the graph's cases (activations, weight gradients, the head's fp32 gradient) */
    test_matmul(p, 0, 1, 37, 96, 64, 0, 0, 0);
    test_matmul(p, 0, 1, 300, 2048, 512, 1, 0, 0);
    test_matmul(p, 1, 0, 96, 64, 37, 1, 0, 1);
    test_matmul(p, 0, 0, 37, 64, 96, 0, 0, 0);
    test_matmul(p, 0, 1, 5, 32000, 128, 0, 0, 1);
    test_matmul(p, 1, 0, 1000, 128, 5, 1, 1, 1);
    test_matmul(p, 0, 0, 5, 128, 1000, 0, 1, 0);
    test_matmul(p, 0, 1, 1, 96, 64, 0, 0, 0);
    test_matmul(p, 1, 0, 96, 64, 0, 1, 0, 1);  /* an expert with no tokens: C unchanged */
    test_rows(p, 1, 64, 50);
    test_rows(p, 37, 96, 300);
    test_rows(p, 300, 2048, 32000);
    test_rope(p, 37, 4, 64);
    test_rope(p, 300, 8, 128);
    test_attention(p, 2, 77, 4, 2, 64, 0, 0);     /* seq not a multiple of the tile */
    test_attention(p, 1, 130, 8, 2, 128, 32, 1);  /* window smaller than seq, documents */
    test_attention(p, 2, 50, 4, 4, 32, 200, 1);   /* window larger than seq */
    test_attention(p, 1, 1, 2, 1, 16, 0, 0);
    test_attention(p, 1, 300, 4, 1, 128, 64, 0);
    test_attention(p, 1, 257, 2, 1, 256, 0, 0);
    test_moe(p, 37, 8, 2, 96);
    test_moe(p, 300, 8, 2, 512);
    test_moe(p, 5, 4, 1, 64);
    test_optimizer(p, 100003);
}

int main(void)
{
    gale_error err;
    struct pair modes[2] = {{0}};
    int total_failed = 0, total = 0;
    for (int bf = 0; bf < 2; bf++) {
        enum gale_dtype dt = bf ? GALE_BF16 : GALE_F32;
        struct pair *p = &modes[bf];
        p->bf = bf;
        p->gpu = gale_backend_create("cuda", dt, &err);
        if (!p->gpu) {
            /* no device or no module is a skip; a module this build made that does not open
             * (a symbol the executable does not export) is a failure */
            const char *built = getenv("GALE_CUDA_MODULE_BUILT");
            if (built && !strcmp(built, "1") && strstr(err.msg, "does not load")) {
                fprintf(stderr, "FAIL: %s\n", err.msg);
                return 1;
            }
            printf("SKIP: %s\n", err.msg);
            return SKIP;
        }
        p->cpu = gale_backend_create("cpu", dt, &err);
        if (!p->cpu) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        printf("%-22s %-44s %-5s %10s  %-14s %s\n", "op", "shape", "mode", "max rel", "tolerance", "");
        run_mode(p);
        total_failed += p->failed;
        total += p->checks;
        gale_backend_free(p->gpu);
        gale_backend_free(p->cpu);
    }
    printf("%d checks, %d failed\n", total, total_failed);
    return total_failed ? 1 : 0;
}
