/* test_model: the whole model beyond the fixtures: every tensor's gradient against finite
 * differences of the loss (a Mixtral with a sliding window, documents, tied embeddings, the
 * per-layer aux loss and the z-loss; a Llama with MQA and an explicit head_dim); document
 * masking equal to running the documents apart; gradient accumulation over micro-batches equal
 * to one batch; save and load of a Hugging Face folder; the seeded init. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "cpu_backend.h"
#include "model/model.h"
#include "tiny_model.h"
#include "model/rng.h"
#include "model/safetensors.h"
#include "util/file.h"

static void check(int ok, const char *fmt, const char *what, double value, double limit)
{
    char line[512];
    snprintf(line, sizeof line, fmt, what, value, limit);
    CHECK_MSG(ok, "%s", line);
    if (ok)
        printf("ok   %s\n", line);
}

static struct model_config tiny_mixtral(void)
{
    struct model_config c = tiny_model(37, 12, 2, 4, 0.1);
    c.sliding_window = 4;
    c.tie_word_embeddings = 1;
    return c;
}

static struct model_config tiny_llama_mqa(void)
{
    struct model_config c = tiny_mixtral();
    c.kind = MODEL_LLAMA;
    c.num_heads = 3;
    c.num_kv_heads = 1;
    c.head_dim = 6;      /* explicit: heads * head_dim != hidden */
    c.head_dim_explicit = 1;
    c.sliding_window = 0;
    c.tie_word_embeddings = 0;
    c.num_experts = c.num_experts_per_tok = 0;
    c.router_aux_loss_coef = 0;
    return c;
}

static void random_tokens(int32_t *x, int n, int vocab, uint64_t seed)
{
    for (int i = 0; i < n; i++)
        x[i] = (int32_t)(gale_rng_bits(seed, (uint64_t)i) % (uint64_t)vocab);
}

static double loss_at(struct model *m, const struct model_batch *b, double den, int32_t *experts)
{
    struct model_loss l;
    gale_error err;
    if (model_forward(m, b, den, &l, &err)) {
        fprintf(stderr, "forward: %s\n", err.msg);
        exit(1);
    }
    if (experts && model_get_config(m)->num_experts)
        model_selected_experts_download(m, experts);
    return l.loss;
}

/* For each tensor: the gradient's component along a random direction in that tensor against
 * a central difference of the loss along it. Larger weights than a real init (std 0.3) give
 * the loss curvature to check. */
static void gradient_check(const char *name, const struct model_config *cfg,
                           const struct model_options *opts, const int32_t *segments)
{
    gale_error err;
    struct model *m = model_create(cfg, cpu_backend(), opts, &err);
    model_init_random(m, 0.3, 7);
    int B = 2, T = 10, n = B * T;
    int32_t tokens[20], targets[20];
    uint8_t mask[20];
    random_tokens(tokens, n, cfg->vocab_size, 1);
    random_tokens(targets, n, cfg->vocab_size, 2);
    for (int i = 0; i < n; i++)
        mask[i] = i % 7 != 3;
    targets[5] = -100;
    struct model_batch b = {B, T, tokens, targets, mask, segments};
    const struct model_layout *layout = model_get_layout(m);
    size_t np = layout->numel;
    float *params = gale_xmalloc(np * 4), *grads = gale_xmalloc(np * 4), *dir = gale_xmalloc(np * 4);
    model_params_download(m, params);
    model_zero_grads(m);
    struct model_loss l;
    double den = 13.0;  /* a global denominator, not this batch's own count */
    if (model_forward_backward(m, &b, den, 1.0, &l, &err)) {
        fprintf(stderr, "forward_backward: %s\n", err.msg);
        exit(1);
    }
    model_grads_download(m, grads);
    double l0 = loss_at(m, &b, den, NULL);
    char what[160];
    snprintf(what, sizeof what, "%s: loss of forward_backward", name);
    check(fabs(l.loss - l0) <= 1e-6 * fabs(l0), "%-60s diff %.2e (limit %.0e)", what,
          fabs(l.loss - l0), 1e-6 * fabs(l0));
    size_t ne = (size_t)cfg->num_layers * n * (cfg->num_experts_per_tok ? cfg->num_experts_per_tok : 1);
    int32_t *e0 = gale_xmalloc(ne * 4), *e1 = gale_xmalloc(ne * 4);
    loss_at(m, &b, den, e0);
    double worst = 0;
    const char *worst_name = "none differs";
    for (int t = 0; t < layout->n; t++) {
        const struct model_tensor *v = &layout->tensors[t];
        double norm = 0, dot = 0;
        for (size_t i = 0; i < v->numel; i++) {
            dir[i] = (float)gale_rng_normal(99 + t, i);
            norm += (double)dir[i] * dir[i];
        }
        for (size_t i = 0; i < v->numel; i++) {
            dir[i] = (float)(dir[i] / sqrt(norm));
            dot += (double)dir[i] * grads[v->offset + i];
        }
        /* Richardson: (4 D(h) - D(2h)) / 3 cancels the h^2 term, so h can be large enough
         * that fp32 rounding of the loss (~1e-7) stays far below the signal */
        double eps = 2e-2, d[2];
        int flipped = 0;
        for (int level = 0; level < 2; level++) {
            double h = level ? 2 * eps : eps, f[2];
            for (int s = 0; s < 2; s++) {
                float *p = gale_xmalloc(np * 4);
                memcpy(p, params, np * 4);
                for (size_t i = 0; i < v->numel; i++)
                    p[v->offset + i] += (float)((s ? -h : h) * dir[i]);
                model_params_upload(m, p);
                f[s] = loss_at(m, &b, den, e1);
                flipped |= cfg->num_experts && memcmp(e0, e1, ne * 4) != 0;
                free(p);
            }
            d[level] = (f[0] - f[1]) / (2 * h);
        }
        model_params_upload(m, params);
        if (flipped)  /* the routing is piecewise constant: a difference across a flip is meaningless */
            continue;
        double fd = (4 * d[0] - d[1]) / 3;
        /* below |dot| = 1e-2 the floor is absolute: the difference quotient of an fp32 loss
         * carries ~1e-5 of rounding noise */
        double rel = fabs(fd - dot) / fmax(fabs(dot), 1e-2);
        if (rel > worst) {
            worst = rel;
            worst_name = v->name;
        }
    }
    snprintf(what, sizeof what, "%s: worst tensor %s", name, worst_name);
    check(worst <= 2e-3, "%-60s rel err %.2e (limit %.0e)", what, worst, 2e-3);
    free(params), free(grads), free(dir), free(e0), free(e1);
    model_free(m);
}

/* A row packing documents A and B with segments gives the logits of A and B run alone. */
static void document_masking(const struct model_config *cfg, const char *name)
{
    gale_error err;
    struct model *m = model_create(cfg, cpu_backend(), NULL, &err);
    model_init_random(m, 0.3, 11);
    int la = 5, lb = 7, T = la + lb, V = cfg->vocab_size;
    int32_t packed[12], seg[12];
    random_tokens(packed, T, V, 5);
    for (int i = 0; i < T; i++)
        seg[i] = i < la ? 0 : 1;
    struct model_batch b = {1, T, packed, NULL, NULL, seg};
    float *lp = gale_xmalloc(sizeof(float) * T * V), *la_ = gale_xmalloc(sizeof(float) * la * V);
    float *lb_ = gale_xmalloc(sizeof(float) * lb * V);
    model_forward(m, &b, 0, NULL, &err);
    model_logits_download(m, lp);
    struct model_batch a = {1, la, packed, NULL, NULL, NULL};
    model_forward(m, &a, 0, NULL, &err);
    model_logits_download(m, la_);
    struct model_batch bb = {1, lb, packed + la, NULL, NULL, NULL};
    model_forward(m, &bb, 0, NULL, &err);
    model_logits_download(m, lb_);
    double d = 0, r = 0;
    for (int i = 0; i < T * V; i++) {
        double want = i < la * V ? la_[i] : lb_[i - la * V];
        d += (lp[i] - want) * (lp[i] - want);
        r += want * want;
    }
    char what[128];
    snprintf(what, sizeof what, "%s: packed documents == documents apart", name);
    check(sqrt(d / r) <= 1e-6, "%-60s rel err %.2e (limit %.0e)", what, sqrt(d / r), 1e-6);
    /* and without segments the second document does see the first */
    b.segments = NULL;
    model_forward(m, &b, 0, NULL, &err);
    model_logits_download(m, lp);
    d = 0;
    for (int i = la * V; i < T * V; i++)
        d += fabs(lp[i] - lb_[i - la * V]);
    snprintf(what, sizeof what, "%s: without segments the documents mix", name);
    check(d > 1e-3, "%-60s diff %.2e (min %.0e)", what, d, 1e-3);
    free(lp), free(la_), free(lb_);
    model_free(m);
}

/* Two micro-batches, each divided by the global target count, sum to one batch's gradient. */
static void accumulation(void)
{
    gale_error err;
    struct model_config cfg = tiny_llama_mqa();
    struct model *m = model_create(&cfg, cpu_backend(), NULL, &err);
    model_init_random(m, 0.1, 3);
    int B = 2, T = 8, n = B * T;
    int32_t tokens[16], targets[16];
    random_tokens(tokens, n, cfg.vocab_size, 8);
    random_tokens(targets, n, cfg.vocab_size, 9);
    for (int i = 0; i < 5; i++)
        targets[i] = -100;  /* unequal counts: a mean of means would differ */
    size_t np = model_get_layout(m)->numel;
    float *whole = gale_xmalloc(np * 4), *parts = gale_xmalloc(np * 4);
    struct model_batch b = {B, T, tokens, targets, NULL, NULL};
    long total = model_batch_count_targets(&b);
    struct model_loss l;
    model_zero_grads(m);
    model_forward_backward(m, &b, 0, 1, &l, &err);
    model_grads_download(m, whole);
    double loss_whole = l.loss;
    model_zero_grads(m);
    double loss_parts = 0;
    for (int i = 0; i < B; i++) {
        struct model_batch mb = {1, T, tokens + i * T, targets + i * T, NULL, NULL};
        model_forward_backward(m, &mb, (double)total, 1, &l, &err);
        loss_parts += l.loss;
    }
    model_grads_download(m, parts);
    double d = 0, r = 0;
    for (size_t i = 0; i < np; i++) {
        d += (parts[i] - whole[i]) * (parts[i] - whole[i]);
        r += (double)whole[i] * whole[i];
    }
    check(sqrt(d / r) <= 1e-5, "%-60s rel err %.2e (limit %.0e)",
          "micro-batches over the global count == one batch (grads)", sqrt(d / r), 1e-5);
    check(fabs(loss_parts - loss_whole) <= 1e-6 * loss_whole, "%-60s diff %.2e (limit %.0e)",
          "micro-batches over the global count == one batch (loss)", fabs(loss_parts - loss_whole),
          1e-6 * loss_whole);
    free(whole), free(parts);
    model_free(m);
}

/* One training pass's loss and gradients, with the head over every row (all_rows) or over
 * the rows with a target only. */
static double pass_grads(struct model *m, const struct model_batch *b, int all_rows, float *grads,
                         long *n_targets)
{
    gale_error err;
    struct model_loss l;
    model_set_head_all_rows(m, all_rows);
    model_zero_grads(m);
    if (model_forward_backward(m, b, 7.0, 1.0, &l, &err)) {
        fprintf(stderr, "forward_backward: %s\n", err.msg);
        exit(1);
    }
    model_grads_download(m, grads);
    model_set_head_all_rows(m, 0);
    *n_targets = l.n_targets;
    return l.loss;
}

/* The head skips the rows whose target is ignored: the same loss and gradients as over every
 * row. The same terms are summed (an ignored row's are exactly 0), but in products of fewer
 * rows, for which BLAS may choose kernels that order a row's h-term sums otherwise, and the
 * lm_head gradient groups its rows otherwise: fp32 rounding differences only, which the
 * backward carries down. So: the target count bitwise; the loss to 1e-6 and every tensor's
 * gradient to 1e-5 relative (as gradient accumulation's test, whose sums are regrouped the
 * same way; measured 3e-7 at most). All rows valid: the pass that ran before, bit for bit;
 * none: no loss, no target, zero head gradients, bit for bit. */
static void head_skip(const char *name, const struct model_config *cfg, enum gale_dtype dtype)
{
    gale_error err;
    struct gale_backend *be = dtype == GALE_F32 ? cpu_backend()
                                                : gale_backend_create("cpu", dtype, &err);
    CHECK_MSG(be != NULL, "cpu backend %s", gale_dtype_name(dtype));
    struct model *m = model_create(cfg, be, NULL, &err);
    model_init_random(m, 0.3, 5);
    enum { B = 3, T = 10, N = B * T };
    const double LOSS_LIMIT = 1e-6, GRAD_LIMIT = 1e-5;
    int32_t tokens[N], targets[N], masked[N], none[N];
    random_tokens(tokens, N, cfg->vocab_size, 21);
    random_tokens(targets, N, cfg->vocab_size, 22);
    for (int i = 0; i < N; i++) {
        int t = i % T, row = i / T;
        /* row 0 ignored whole; row 1 a prompt of 4 and its last position; row 2 its first */
        int ignored = row == 0 || (row == 1 && (t < 4 || t == T - 1)) || (row == 2 && t == 0);
        masked[i] = ignored ? -100 : targets[i];
        none[i] = -100;
    }
    const struct model_layout *layout = model_get_layout(m);
    const struct model_tensor *head = model_layout_find(
        layout, cfg->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
    size_t np = layout->numel;
    float *skip = gale_xmalloc(np * 4), *all = gale_xmalloc(np * 4);
    long n_skip, n_all;
    char what[160];

    /* all valid first: the masked pass then starts from a used m->dh, as in training */
    struct model_batch b = {B, T, tokens, targets, NULL, NULL};
    double loss_skip = pass_grads(m, &b, 0, skip, &n_skip);
    double loss_all = pass_grads(m, &b, 1, all, &n_all);
    snprintf(what, sizeof what, "%s: all valid: loss and every grad bitwise", name);
    check(loss_skip == loss_all && n_skip == N && !memcmp(skip, all, np * 4),
          "%-66s diff %.2e (limit %.0e)", what, loss_skip - loss_all, 0);

    b.targets = masked;
    loss_skip = pass_grads(m, &b, 0, skip, &n_skip);
    loss_all = pass_grads(m, &b, 1, all, &n_all);
    snprintf(what, sizeof what, "%s: masked rows skipped: loss (targets bitwise)", name);
    check(fabs(loss_skip - loss_all) <= LOSS_LIMIT * loss_all && n_skip == n_all && n_all == 14,
          "%-66s diff %.2e (limit %.0e)", what, loss_skip - loss_all, LOSS_LIMIT * loss_all);
    double worst = 0;
    const char *worst_name = "none differs";
    for (int t = 0; t < layout->n; t++) {
        const struct model_tensor *x = &layout->tensors[t];
        double d = 0, r = 0;
        for (size_t i = x->offset; i < x->offset + x->numel; i++) {
            d += ((double)skip[i] - all[i]) * ((double)skip[i] - all[i]);
            r += (double)all[i] * all[i];
        }
        double e = r > 0 ? sqrt(d / r) : d > 0;
        if (e > worst)
            worst = e, worst_name = x->name;
    }
    snprintf(what, sizeof what, "%s: masked rows skipped: every grad (%s)", name, worst_name);
    check(worst <= GRAD_LIMIT, "%-66s rel err %.2e (limit %.0e)", what, worst, GRAD_LIMIT);

    b.targets = none;
    loss_skip = pass_grads(m, &b, 0, skip, &n_skip);
    loss_all = pass_grads(m, &b, 1, all, &n_all);
    const struct model_tensor *norm = model_layout_find(layout, "model.norm.weight");
    int head_zero = 1;
    for (size_t i = 0; i < head->numel && !cfg->tie_word_embeddings; i++)
        head_zero &= skip[head->offset + i] == 0;
    for (size_t i = 0; i < norm->numel; i++)
        head_zero &= skip[norm->offset + i] == 0;
    snprintf(what, sizeof what, "%s: all ignored: no targets, zero head grads", name);
    check(n_skip == 0 && head_zero && !memcmp(skip, all, np * 4) && loss_skip == loss_all,
          "%-66s %.0f (limit %.0f)", what, (double)n_skip, 0);
    free(skip), free(all);
    model_free(m);
    if (be != cpu_backend())
        gale_backend_free(be);
}

/* Evaluation's loss (model_loss: the chunked head over the rows with a target) against
 * model_forward's (every row's logits, then the loss): every target valid, the batch in one
 * head chunk: the same products and the same sums, so the loss to the bit; some ignored: the
 * kept rows' products have fewer rows (fp32 rounding: 1e-6 relative, as head_skip); none: no
 * target, no loss. The target counts are equal in every case. */
static void eval_loss(const char *name, const struct model_config *cfg)
{
    gale_error err;
    struct model *m = model_create(cfg, cpu_backend(), NULL, &err);
    model_init_random(m, 0.3, 9);
    enum { B = 3, T = 10, N = B * T };
    int32_t tokens[N], targets[N], masked[N], none[N];
    random_tokens(tokens, N, cfg->vocab_size, 31);
    random_tokens(targets, N, cfg->vocab_size, 32);
    for (int i = 0; i < N; i++) {
        masked[i] = i / T == 0 || i % T < 3 ? -100 : targets[i];
        none[i] = -100;
    }
    const int32_t *cases[] = {targets, masked, none};
    const char *what[] = {"every target", "some ignored", "none"};
    for (int c = 0; c < 3; c++) {
        struct model_batch b = {B, T, tokens, cases[c], NULL, NULL};
        struct model_loss full, chunked;
        int rc = model_forward(m, &b, 0, &full, &err);
        rc = rc || model_loss(m, &b, 0, &chunked, &err);
        CHECK_MSG(rc == 0, "%s: %s", name, err.msg);
        double diff = fabs(chunked.loss - full.loss), limit = c == 1 ? 1e-6 * fabs(full.loss) : 0;
        char label[160];
        snprintf(label, sizeof label, "%s: model_loss = model_forward's loss, %s", name, what[c]);
        check(diff <= limit && chunked.n_targets == full.n_targets && (c < 2 || full.n_targets == 0),
              "%-66s diff %.2e (limit %.0e)", label, diff, limit);
    }
    model_free(m);
}

/* Save to a folder, load into a fresh model: identical parameters; the init is seeded. */
static void save_load_init(void)
{
    gale_error err;
    struct model_config cfg = tiny_mixtral();
    struct model *a = model_create(&cfg, cpu_backend(), NULL, &err);
    struct model *b = model_create(&cfg, cpu_backend(), NULL, &err);
    model_init_random(a, 0.02, 5);
    model_init_random(b, 0.02, 5);
    size_t np = model_get_layout(a)->numel;
    float *pa = gale_xmalloc(np * 4), *pb = gale_xmalloc(np * 4);
    model_params_download(a, pa);
    model_params_download(b, pb);
    check(memcmp(pa, pb, np * 4) == 0, "%-60s %g %g", "same seed, same init", 0, 0);
    /* std: plain weights 0.02, output projections 0.02 / sqrt(2 * layers), norms 1 */
    const struct model_tensor *q = model_layout_find(model_get_layout(a), "model.layers.0.self_attn.q_proj.weight");
    const struct model_tensor *w2 = model_layout_find(model_get_layout(a), "model.layers.1.block_sparse_moe.experts.3.w2.weight");
    const struct model_tensor *norm = model_layout_find(model_get_layout(a), "model.norm.weight");
    double sq = 0, s2 = 0;
    for (size_t i = 0; i < q->numel; i++)
        sq += (double)pa[q->offset + i] * pa[q->offset + i];
    for (size_t i = 0; i < w2->numel; i++)
        s2 += (double)pa[w2->offset + i] * pa[w2->offset + i];
    sq = sqrt(sq / q->numel);
    s2 = sqrt(s2 / w2->numel);
    check(fabs(sq - 0.02) < 0.002, "%-60s std %.4f (want %.4f)", "init std of q_proj", sq, 0.02);
    check(fabs(s2 - 0.01) < 0.0015, "%-60s std %.4f (want %.4f)", "init std of w2 (scaled)", s2, 0.01);
    check(pa[norm->offset] == 1.0f, "%-60s %g (want %g)", "init of norms", pa[norm->offset], 1);
    model_init_random(b, 0.02, 6);
    model_params_download(b, pb);
    check(memcmp(pa, pb, np * 4) != 0, "%-60s %g %g", "another seed, another init", 0, 0);

    char dir[] = "/tmp/gale-test-model-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    int rc = model_save_hf(a, dir, &err);
    struct model_config cfg2;
    char *config = gale_path_join(dir, "config.json");
    if (rc == 0)
        rc = model_config_load(config, &cfg2, &err);
    struct model *c = rc == 0 ? model_create(&cfg2, cpu_backend(), NULL, &err) : NULL;
    if (c)
        rc = model_load_hf(c, dir, &err);
    if (rc || !c) {
        FAIL("save/load: %s", err.msg);
    } else {
        model_params_download(c, pb);
        check(memcmp(pa, pb, np * 4) == 0 && cfg2.sliding_window == cfg.sliding_window &&
                  cfg2.tie_word_embeddings == 1 && cfg2.num_experts == 4,
              "%-60s %g %g", "save_hf then load_hf: same config and weights", 0, 0);
    }
    /* a missing tensor is named */
    struct model_config other = cfg;
    other.tie_word_embeddings = 0;
    struct model *d = model_create(&other, cpu_backend(), NULL, &err);
    rc = model_load_hf(d, dir, &err);
    check(rc != 0 && strstr(err.msg, "lm_head.weight") != NULL, "%-60s %g %g",
          "loading a tied checkpoint into an untied config names lm_head.weight", 0, 0);
    other = cfg;
    other.intermediate_size = 8;
    model_free(d);
    d = model_create(&other, cpu_backend(), NULL, &err);
    rc = model_load_hf(d, dir, &err);
    check(rc != 0 && strstr(err.msg, "experts.0.w1.weight") && strstr(err.msg, "shape"),
          "%-60s %g %g", "a misshapen tensor is named with both shapes", 0, 0);
    model_free(d);
    gale_remove_tree(dir, &err);
    free(config);
    free(pa), free(pb);
    model_free(a), model_free(b), model_free(c);
}

static void bad_batches(void)
{
    gale_error err;
    struct model_config cfg = tiny_llama_mqa();
    struct model *m = model_create(&cfg, cpu_backend(), NULL, &err);
    int32_t tokens[4] = {1, 2, 37, 3}, targets[4] = {1, 2, 3, 4};
    struct model_batch b = {1, 4, tokens, targets, NULL, NULL};
    int rc = model_forward(m, &b, 0, NULL, &err);
    check(rc != 0 && strstr(err.msg, "token 37"), "%-60s %g %g", "a token outside the vocabulary is refused", 0, 0);
    tokens[2] = 3;
    targets[1] = 99;
    rc = model_forward_backward(m, &b, 0, 1, NULL, &err);
    check(rc != 0 && strstr(err.msg, "target 99"), "%-60s %g %g", "a target outside the vocabulary is refused", 0, 0);
    model_free(m);
}

int main(void)
{
    struct model_config mixtral = tiny_mixtral(), llama = tiny_llama_mqa();
    int32_t seg[20] = {0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2};
    struct model_options per_layer = {.aux_form = MODEL_AUX_PER_LAYER, .router_z_loss_coef = 1e-2};
    struct model_options hf = {.aux_form = MODEL_AUX_HF};
    gradient_check("mixtral hf aux, window, tied", &mixtral, &hf, NULL);
    gradient_check("mixtral per_layer aux + z, documents", &mixtral, &per_layer, seg);
    gradient_check("llama MQA head_dim 6, documents", &llama, NULL, seg);
    document_masking(&mixtral, "mixtral");
    document_masking(&llama, "llama");
    accumulation();
    head_skip("llama fp32", &llama, GALE_F32);
    head_skip("llama bf16", &llama, GALE_BF16);
    head_skip("mixtral tied fp32", &mixtral, GALE_F32);
    head_skip("mixtral tied bf16", &mixtral, GALE_BF16);
    eval_loss("llama", &llama);
    eval_loss("mixtral", &mixtral);
    save_load_init();
    bad_batches();
    return check_report("test_model");
}
