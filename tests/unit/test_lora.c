/* test_lora: the adapters' dropout is PEFT's in distribution; the adapters' gradients under
 * dropout against finite differences of the training loss with the same masks (the PEFT
 * fixtures of tests/lora cover dropout 0), for a Llama with
 * every dense target and a Mixtral with attention and expert targets; the masks are a function
 * of the seed (the same seed, the same loss; another seed, another loss); the frozen base has
 * no gradients. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu_backend.h"
#include "model/lora.h"
#include "model/model.h"
#include "tiny_model.h"
#include "model/rng.h"

static struct model_config tiny(int experts)
{
    return tiny_model(37, 12, 2, experts, 0.1);
}

/* The training loss (dropout on) of the adapters in host, with the masks of seed; the experts
 * chosen into experts (Mixtral) when not NULL. */
static double train_loss(struct model *m, const struct model_batch *b, const float *host, uint64_t seed,
                         int32_t *experts)
{
    gale_error err;
    struct model_loss l;
    model_lora_upload(m, host);
    model_lora_dropout_seed(m, seed);
    model_zero_grads(m);
    if (model_forward_backward(m, b, 0, 1.0, &l, &err)) {
        fprintf(stderr, "forward_backward: %s\n", err.msg);
        exit(1);
    }
    if (experts && model_get_config(m)->num_experts)
        model_selected_experts_download(m, experts);
    return l.loss;
}

static void gradient_check(const char *name, int experts, const char *modules)
{
    gale_error err;
    struct model_config cfg = tiny(experts);
    struct lora_config lc = {.rank = 3, .alpha = 6, .dropout = 0.25};
    if (lora_targets_parse(modules, "targets", &lc.targets, &err)) {
        FAIL("%s", err.msg);
        return;
    }
    struct model_options opts = {.lora = &lc};
    struct model *m = model_create(&cfg, cpu_backend(), &opts, &err);
    CHECK_MSG(m && !model_grads(m), "%s: a frozen base has no gradient buffer", name);
    if (!m)
        return;
    model_init_random(m, 0.3, 7);
    struct model_trainable tr;
    model_trainable(m, &tr);
    const struct model_layout *layout = tr.layout;
    size_t np = layout->numel;
    float *ad = gale_xmalloc(np * 4), *grads = gale_xmalloc(np * 4), *p = gale_xmalloc(np * 4);
    for (size_t i = 0; i < np; i++)  /* B nonzero too, so every gradient carries signal */
        ad[i] = (float)(0.3 * gale_rng_normal(5, i));
    int B = 2, T = 10, n = B * T;
    int32_t tokens[20], targets[20];
    for (int i = 0; i < n; i++) {
        tokens[i] = (int32_t)(gale_rng_bits(1, i) % cfg.vocab_size);
        targets[i] = (int32_t)(gale_rng_bits(2, i) % cfg.vocab_size);
    }
    struct model_batch b = {B, T, tokens, targets, NULL, NULL};
    uint64_t seed = 42;
    size_t ne = (size_t)cfg.num_layers * n * 2;
    int32_t *e0 = gale_xmalloc(ne * 4), *e1 = gale_xmalloc(ne * 4);
    double l0 = train_loss(m, &b, ad, seed, e0);
    model_lora_grads_download(m, grads);
    CHECK_MSG(train_loss(m, &b, ad, seed, NULL) == l0, "%s: the same seed draws the same masks", name);
    CHECK_MSG(train_loss(m, &b, ad, seed + 1, NULL) != l0, "%s: another seed draws other masks", name);
    int checked = 0;
    double worst = 0;
    const char *worst_name = "";
    for (int t = 0; t < layout->n; t++) {
        const struct model_tensor *v = &layout->tensors[t];
        double norm = 0, dot = 0;
        float *dir = gale_xmalloc(v->numel * 4);
        for (size_t i = 0; i < v->numel; i++) {
            dir[i] = (float)gale_rng_normal(99 + t, i);
            norm += (double)dir[i] * dir[i];
        }
        for (size_t i = 0; i < v->numel; i++) {
            dir[i] = (float)(dir[i] / sqrt(norm));
            dot += (double)dir[i] * grads[v->offset + i];
        }
        double eps = 2e-2, d[2];  /* Richardson, as test_model */
        int flipped = 0;
        for (int level = 0; level < 2; level++) {
            double h = level ? 2 * eps : eps, f[2];
            for (int s = 0; s < 2; s++) {
                memcpy(p, ad, np * 4);
                for (size_t i = 0; i < v->numel; i++)
                    p[v->offset + i] += (float)((s ? -h : h) * dir[i]);
                f[s] = train_loss(m, &b, p, seed, e1);
                flipped |= experts && memcmp(e0, e1, ne * 4) != 0;
            }
            d[level] = (f[0] - f[1]) / (2 * h);
        }
        free(dir);
        if (flipped)  /* the routing is piecewise constant: a difference across a flip is meaningless */
            continue;
        checked++;
        double fd = (4 * d[0] - d[1]) / 3, rel = fabs(fd - dot) / fmax(fabs(dot), 1e-2);
        if (rel > worst) {
            worst = rel;
            worst_name = v->name;
        }
    }
    CHECK_MSG(worst <= 2e-3, "%s: worst adapter %s: rel err %.2e (limit 2e-3)", name, worst_name, worst);
    CHECK_MSG(checked >= layout->n / 2, "%s: %d of %d tensors checked (the rest flip routing)", name, checked,
              layout->n);
    printf("%s: %d of %d adapter tensors checked, worst rel err %.2e (%s)\n", name, checked, layout->n, worst,
           worst_name);
    free(ad), free(grads), free(p), free(e0), free(e1);
    model_free(m);
}

/* The dropout op is PEFT's nn.Dropout in distribution (the masks themselves come from another
 * RNG): over 2^20 elements of ones at p = 0.25 each output is 0 or exactly 1 / (1 - p); the
 * kept fraction is 1 - p and the mean 1 within 5 standard deviations; two seeds' masks agree
 * on p^2 + (1 - p)^2 of the elements (independent draws), and neighbours' keeps are
 * uncorrelated; accumulate adds the same masked values. */
static void dropout_distribution(void)
{
    enum { N = 1 << 20 };
    const float p = 0.25f, keep = 1 / (1 - p);
    struct gale_backend *be = cpu_backend();
    float *ones = gale_xmalloc(N * sizeof *ones), *a = gale_xmalloc(N * sizeof *a), *b = gale_xmalloc(N * sizeof *b);
    for (size_t i = 0; i < N; i++)
        ones[i] = 1, b[i] = 1;
    be->ops->dropout(be, a, ones, N, p, 12345, 0);
    be->ops->dropout(be, b, ones, N, p, 12345, 1);
    size_t odd = 0, kept = 0, agree = 0, both = 0, wrong_acc = 0;
    double sum = 0;
    float *c = gale_xmalloc(N * sizeof *c);
    be->ops->dropout(be, c, ones, N, p, 12346, 0);
    for (size_t i = 0; i < N; i++) {
        odd += a[i] != 0 && a[i] != keep;
        kept += a[i] != 0;
        sum += a[i];
        agree += (a[i] != 0) == (c[i] != 0);
        both += i + 1 < N && a[i] != 0 && a[i + 1] != 0;
        wrong_acc += b[i] != 1 + a[i];
    }
    double q = 1 - p, sd = sqrt(p * q / N);
    double agree_want = p * p + q * q, agree_sd = sqrt(agree_want * (1 - agree_want) / N);
    CHECK_MSG(odd == 0, "dropout: %zu outputs neither 0 nor 1 / (1 - p)", odd);
    CHECK_MSG(fabs((double)kept / N - q) <= 5 * sd, "dropout: kept %.5f, want %.5f +- %.1e", (double)kept / N, q, 5 * sd);
    CHECK_MSG(fabs(sum / N - 1) <= 5 * sd * keep, "dropout: mean %.5f, want 1", sum / N);
    CHECK_MSG(fabs((double)agree / N - agree_want) <= 5 * agree_sd, "dropout: two seeds agree on %.5f, want %.5f",
              (double)agree / N, agree_want);
    CHECK_MSG(fabs((double)both / (N - 1) - q * q) <= 5 * sqrt(q * q * (1 - q * q) / N),
              "dropout: neighbours both kept %.5f, want %.5f", (double)both / (N - 1), q * q);
    CHECK_MSG(wrong_acc == 0, "dropout: accumulate differs from out + the masked values at %zu elements", wrong_acc);
    printf("dropout p = 0.25 over 2^20: kept %.5f, mean %.5f, two seeds agree %.5f (want %.5f)\n", (double)kept / N,
           sum / N, (double)agree / N, agree_want);
    free(ones), free(a), free(b), free(c);
}

int main(void)
{
    dropout_distribution();
    gradient_check("llama, every dense target, dropout 0.25", 0,
                   "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
    gradient_check("mixtral, attention and experts, dropout 0.25", 4, "q_proj,v_proj,o_proj,w1,w2,w3");
    return check_report("test_lora");
}
