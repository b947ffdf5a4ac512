/* test_kv_cache: generation's incremental forward equals the full forward. The cached
 * attention op against attention_fwd over every way of splitting a sequence into cached keys
 * and new queries (GQA, windows, several query blocks); then whole models (a GQA Llama, a
 * Mistral with a window of 4, Mixtrals with and without a window, the golden fixtures of
 * transformers): the logits of a prefill and then one token at a time, or of uneven chunks,
 * equal model_forward's at every position within 1e-5 relative, over sequences longer than the
 * window, the rolling buffer and the 256-token prefill chunk; the fixtures' logits too. Bad calls
 * are errors that leave the cache usable, and sample_generate's draws (greedy and seeded) are
 * those of rerunning the full forward for each token. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu_backend.h"
#include "model/model.h"
#include "model/rng.h"
#include "model/safetensors.h"
#include "train/sample.h"
#include "util/file.h"

#define TOL 1e-5

/* ||x - ref|| / ||ref|| */
static double rel_err(const float *x, const float *ref, size_t n)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)x[i] - ref[i]) * ((double)x[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    return sqrt(d) / (r > 0 ? sqrt(r) : 1);
}

static void random_floats(float *x, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)gale_rng_normal(seed, i);
}

static void random_tokens(int32_t *x, int n, int vocab, uint64_t seed)
{
    for (int i = 0; i < n; i++)
        x[i] = (int32_t)(gale_rng_bits(seed, (uint64_t)i) % (uint64_t)vocab);
}

/* The one-row products of decoding (sgemv in the CPU backend) against a double-precision sum,
 * for each transpose, with padded leading dimensions and beta 0 (over NaN) and 1. */
static void check_one_row_matmul(void)
{
    struct gale_backend *be = cpu_backend();
    const struct gale_ops *ops = be->ops;
    enum { N = 700, K = 300, PAD = 3 };
    float *a = gale_xmalloc(sizeof(float) * K * (1 + PAD));
    float *b = gale_xmalloc(sizeof(float) * (N + PAD) * (K + PAD));
    float c[N + PAD], c0[N + PAD];
    random_floats(a, (size_t)K * (1 + PAD), 11);
    random_floats(b, (size_t)(N + PAD) * (K + PAD), 12);
    random_floats(c0, N + PAD, 13);
    double worst = 0;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int beta = 0; beta < 2; beta++) {
                int lda = ta ? 1 + PAD : K + PAD, ldb = tb ? K + PAD : N + PAD;
                memcpy(c, c0, sizeof c);
                if (!beta)
                    c[5] = NAN;
                ops->matmul(be, ta, tb, 1, N, K, 0.5f, a, lda, b, ldb, (float)beta, c, N + PAD,
                            F32_GEMM);
                for (int j = 0; j < N; j++) {
                    double want = beta ? c0[j] : 0;
                    for (int i = 0; i < K; i++)
                        want += 0.5 * (ta ? a[(size_t)i * lda] : a[i]) *
                                (tb ? b[(size_t)j * ldb + i] : b[(size_t)i * ldb + j]);
                    double e = fabs(c[j] - want) / (fabs(want) + 1);
                    worst = e > worst || e != e ? e : worst;
                }
            }
    CHECK_MSG(worst <= 1e-5, "one-row matmul off by %.2e", worst);
    printf("ok   one-row matmul, every transpose, beta 0 and 1: worst %.2e\n", worst);
    free(a);
    free(b);
}

/* attention_cached_fwd over keys [0, n_kv) and the last n_q of them as queries equals rows
 * n_kv - n_q .. n_kv - 1 of attention_fwd over the first n_kv rows. */
static void check_cached_op(int seq, int heads, int kv_heads, int hd, int window)
{
    struct gale_backend *be = cpu_backend();
    const struct gale_ops *ops = be->ops;
    int dq = heads * hd, dkv = kv_heads * hd;
    float *q = gale_xmalloc(sizeof(float) * seq * dq), *k = gale_xmalloc(sizeof(float) * seq * dkv);
    float *v = gale_xmalloc(sizeof(float) * seq * dkv), *full = gale_xmalloc(sizeof(float) * seq * dq);
    float *lse = gale_xmalloc(sizeof(float) * seq * heads), *out = gale_xmalloc(sizeof(float) * seq * dq);
    random_floats(q, (size_t)seq * dq, 1);
    random_floats(k, (size_t)seq * dkv, 2);
    random_floats(v, (size_t)seq * dkv, 3);
    const int n_kvs[] = {1, 2, 5, 64, 65, 130, seq};
    const int n_qs[] = {1, 3, 64, 65, 130, seq};
    double worst = 0;
    for (size_t a = 0; a < sizeof n_kvs / sizeof *n_kvs; a++) {
        int n_kv = n_kvs[a];
        /* the full attention over a prefix is the prefix of the full attention: causal */
        ops->attention_fwd(be, full, lse, q, k, v, NULL, 1, n_kv, heads, kv_heads, hd, window);
        for (size_t b = 0; b < sizeof n_qs / sizeof *n_qs; b++) {
            int n_q = n_qs[b];
            if (n_q > n_kv)
                continue;
            size_t first = (size_t)(n_kv - n_q) * dq;
            ops->attention_cached_fwd(be, out, q + first, k, v, n_q, n_kv, heads, kv_heads, hd,
                                      window);
            for (int r = 0; r < n_q; r++) {
                double e = rel_err(out + (size_t)r * dq, full + first + (size_t)r * dq, (size_t)dq);
                worst = e > worst ? e : worst;
                CHECK_MSG(e <= TOL, "cached attention (window %d) of %d queries over %d keys: query %d "
                      "off by %.2e", window, n_q, n_kv, r, e);
            }
        }
    }
    printf("ok   cached attention op, %d heads / %d kv heads, window %d: worst %.2e\n", heads,
           kv_heads, window, worst);
    free(q);
    free(k);
    free(v);
    free(full);
    free(lse);
    free(out);
}

static struct model_config tiny(enum model_kind kind, int window, int experts)
{
    struct model_config c = {0};
    c.kind = kind;
    c.vocab_size = 61;
    c.hidden_size = 32;
    c.intermediate_size = 24;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 8;
    c.rope_theta = 10000;
    c.rms_norm_eps = 1e-5;
    c.max_position_embeddings = 1024;
    c.sliding_window = window;
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    c.initializer_range = 0.02;
    c.num_experts = experts;
    c.num_experts_per_tok = experts ? 2 : 0;
    c.router_aux_loss_coef = experts ? 0.02 : 0;
    return c;
}

/* model_forward's logits [seq, vocab] of one sequence. */
static float *full_logits(struct model *m, const int32_t *tokens, int seq)
{
    gale_error err;
    struct model_batch b = {.batch = 1, .seq = seq, .tokens = tokens};
    if (model_forward(m, &b, 0, NULL, &err)) {
        fprintf(stderr, "FAIL forward: %s\n", err.msg);
        exit(1);
    }
    float *logits = gale_xmalloc(sizeof(float) * seq * model_get_config(m)->vocab_size);
    model_logits_download(m, logits);
    return logits;
}

/* Runs tokens through the (reset) cache in chunks of the given sizes (the last repeated to the
 * end) and checks the logits after each chunk against ref's row. Returns the worst error. */
static double run_chunks(struct model *m, struct model_kv_cache *kc, const int32_t *tokens,
                         int seq, const float *ref, const int *sizes, int n_sizes,
                         const char *name, float *all_logits)
{
    int vocab = model_get_config(m)->vocab_size;
    float *logits = gale_xmalloc(sizeof(float) * vocab);
    double worst = 0;
    gale_error err;
    model_kv_cache_reset(kc);
    for (int at = 0, i = 0; at < seq; i++) {
        int n = sizes[i < n_sizes ? i : n_sizes - 1];
        n = n < seq - at ? n : seq - at;
        if (model_forward_next(m, kc, tokens + at, n, logits, &err)) {
            CHECK_MSG(0, "%s: forward_next of %d tokens at %d: %s", name, n, at, err.msg);
            break;
        }
        at += n;
        CHECK_MSG(model_kv_cache_length(kc) == at, "%s: cache length %d, want %d", name,
              model_kv_cache_length(kc), at);
        double e = rel_err(logits, ref + (size_t)(at - 1) * vocab, (size_t)vocab);
        worst = e > worst ? e : worst;
        CHECK_MSG(e <= TOL, "%s: chunks of %d..: logits at position %d off by %.2e", name, sizes[0],
              at - 1, e);
        if (all_logits)
            memcpy(all_logits + (size_t)(at - 1) * vocab, logits, sizeof(float) * vocab);
    }
    free(logits);
    return worst;
}

/* Prefill then single tokens, a prefill past the chunk, and uneven chunks, each against the
 * full forward at every position the schedule reaches. */
static void check_model(struct model *m, const int32_t *tokens, int seq, int max_len,
                        const char *name)
{
    gale_error err;
    float *ref = full_logits(m, tokens, seq);
    struct model_kv_cache *kc = model_kv_cache_create(m, max_len, &err);
    if (!kc) {
        CHECK_MSG(0, "%s: cache: %s", name, err.msg);
        free(ref);
        return;
    }
    const int one[] = {1}, prompt7[] = {7, 1}, prompt_long[] = {270, 1}, uneven[] = {3, 1, 5, 2, 9};
    const int short_then_long[] = {5, 300};  /* a full chunk after a few keys: with W = 4 they fill
                                                the rolling buffer but for one row */
    double worst = run_chunks(m, kc, tokens, seq, ref, one, 1, name, NULL);
    double e = run_chunks(m, kc, tokens, seq, ref, prompt7, 2, name, NULL);
    worst = e > worst ? e : worst;
    if (seq > 270) {
        e = run_chunks(m, kc, tokens, seq, ref, prompt_long, 2, name, NULL);
        worst = e > worst ? e : worst;
        e = run_chunks(m, kc, tokens, seq, ref, short_then_long, 2, name, NULL);
        worst = e > worst ? e : worst;
    }
    e = run_chunks(m, kc, tokens, seq, ref, uneven, 5, name, NULL);
    worst = e > worst ? e : worst;
    printf("ok   %s, %d tokens, cache max_len %d: every position's logits within %.2e\n", name, seq,
           max_len, worst);
    model_kv_cache_free(kc);
    free(ref);
}

static void check_random_model(const char *name, struct model_config cfg, int seq, int max_len)
{
    gale_error err;
    struct model *m = model_create(&cfg, cpu_backend(), NULL, &err);
    if (!m) {
        CHECK_MSG(0, "%s: %s", name, err.msg);
        return;
    }
    /* weights larger than a real init: peaked attention and distinct router choices */
    model_init_random(m, 0.2, 5);
    int32_t *tokens = gale_xmalloc(sizeof(int32_t) * seq);
    random_tokens(tokens, seq, cfg.vocab_size, 9);
    check_model(m, tokens, seq, max_len, name);
    free(tokens);
    model_free(m);
}

/* Each row of a fixture's input_ids through the cache, one token at a time: every position
 * against the full forward, and all of them against transformers' logits. */
static void check_fixture(const char *shared, const char *fixture)
{
    gale_error err;
    char *dir = gale_path_join(shared, fixture);
    char *cfg_path = gale_path_join(dir, "config.json");
    char *exp_path = gale_path_join(dir, "expected.safetensors");
    struct model_config cfg;
    struct safetensors_set weights = {0}, expected = {0};
    struct model *m = NULL;
    if (model_config_load(cfg_path, &cfg, &err) || safetensors_open_dir(dir, &weights, &err) ||
        safetensors_open(exp_path, &expected, &err) ||
        !(m = model_create(&cfg, cpu_backend(), NULL, &err)) ||
        model_load_tensors(m, &weights, &err)) {
        CHECK_MSG(0, "%s: %s", fixture, err.msg);
        goto done;
    }
    const struct safetensors_tensor *ids_t = safetensors_find(&expected, "input_ids");
    const struct safetensors_tensor *logits_t = safetensors_find(&expected, "logits");
    if (!ids_t || !logits_t || ids_t->ndim != 2) {
        CHECK_MSG(0, "%s: expected.safetensors lacks input_ids [B,T] or logits", fixture);
        goto done;
    }
    int rows = (int)ids_t->shape[0], seq = (int)ids_t->shape[1], vocab = cfg.vocab_size;
    int64_t *ids = gale_xmalloc(sizeof(int64_t) * ids_t->numel);
    float *want = gale_xmalloc(sizeof(float) * logits_t->numel);
    float *got = gale_xmalloc(sizeof(float) * logits_t->numel);
    int32_t *tokens = gale_xmalloc(sizeof(int32_t) * seq);
    if (safetensors_read_i64(ids_t, ids, &err) || safetensors_read_f32(logits_t, want, &err)) {
        CHECK_MSG(0, "%s: %s", fixture, err.msg);
    } else {
        struct model_kv_cache *kc = model_kv_cache_create(m, seq, &err);
        const int one[] = {1};
        double worst = 0;
        for (int b = 0; b < rows; b++) {
            for (int t = 0; t < seq; t++)
                tokens[t] = (int32_t)ids[(size_t)b * seq + t];
            float *ref = full_logits(m, tokens, seq);
            double e = run_chunks(m, kc, tokens, seq, ref, one, 1, fixture,
                                  got + (size_t)b * seq * vocab);
            worst = e > worst ? e : worst;
            free(ref);
        }
        double vs_hf = rel_err(got, want, logits_t->numel);
        CHECK_MSG(vs_hf <= TOL, "%s: step-by-step logits off transformers' by %.2e", fixture, vs_hf);
        printf("ok   %s: %d rows of %d tokens step by step: within %.2e of the full forward, "
               "%.2e of transformers\n", fixture, rows, seq, worst, vs_hf);
        model_kv_cache_free(kc);
    }
    free(ids);
    free(want);
    free(got);
    free(tokens);
done:
    model_free(m);
    safetensors_close(&weights);
    safetensors_close(&expected);
    free(dir);
    free(cfg_path);
    free(exp_path);
}

/* Refused calls name what is wrong and leave the cache as it was. */
static void check_errors(void)
{
    gale_error err;
    struct model_config cfg = tiny(MODEL_LLAMA, 0, 0);
    struct model *m = model_create(&cfg, cpu_backend(), NULL, &err);
    struct model *other = model_create(&cfg, cpu_backend(), NULL, &err);
    model_init_random(m, 0.2, 3);
    int32_t tokens[9];
    random_tokens(tokens, 9, cfg.vocab_size, 4);
    float *ref = full_logits(m, tokens, 8);
    float logits[61];

    CHECK_MSG(!model_kv_cache_create(m, 0, &err) && strstr(err.msg, "sliding window"),
          "max_len 0 without a window: '%s'", err.msg);
    CHECK_MSG(!model_kv_cache_create(m, -3, &err) && strstr(err.msg, "-3"), "max_len -3: '%s'",
          err.msg);
    struct model_kv_cache *kc = model_kv_cache_create(m, 8, &err);
    CHECK_MSG(model_forward_next(m, kc, tokens, 5, logits, &err) == 0, "prefill: %s", err.msg);
    CHECK_MSG(model_forward_next(m, kc, tokens + 5, 4, logits, &err) != 0 &&
              strstr(err.msg, "max_len of 8"), "past max_len: '%s'", err.msg);
    int32_t bad[2] = {tokens[5], 61};
    CHECK_MSG(model_forward_next(m, kc, bad, 2, logits, &err) != 0 && strstr(err.msg, "token 61") &&
              strstr(err.msg, "position 6"), "token outside the vocabulary: '%s'", err.msg);
    CHECK_MSG(model_forward_next(m, kc, tokens + 5, 0, logits, &err) != 0 && strstr(err.msg, "got 0"),
          "no tokens: '%s'", err.msg);
    CHECK_MSG(model_forward_next(other, kc, tokens + 5, 1, logits, &err) != 0 &&
              strstr(err.msg, "another model"), "another model's cache: '%s'", err.msg);
    CHECK_MSG(model_kv_cache_length(kc) == 5, "length after refused calls: %d", model_kv_cache_length(kc));
    /* the refusals changed nothing: the sequence goes on to its last token; NULL logits */
    CHECK_MSG(model_forward_next(m, kc, tokens + 5, 2, NULL, &err) == 0, "%s", err.msg);
    CHECK_MSG(model_forward_next(m, kc, tokens + 7, 1, logits, &err) == 0, "%s", err.msg);
    double e = rel_err(logits, ref + 7 * cfg.vocab_size, (size_t)cfg.vocab_size);
    CHECK_MSG(e <= TOL, "logits after the refused calls off by %.2e", e);
    printf("ok   refused calls: max_len, vocabulary, no tokens, another model's cache\n");
    model_kv_cache_free(kc);
    free(ref);
    model_free(m);
    model_free(other);
}

/* The generation of the full forward rerun for each new token (what sample_generate did before
 * the cache): same draws (counter t of the seed), same stop. */
static void generate_by_full_forward(struct model *m, const int32_t *prompt, int n_prompt,
                                     const gale_sample_options *o, gale_ids *out)
{
    int vocab = model_get_config(m)->vocab_size;
    gale_ids seq = {0};
    gale_ids_append(&seq, prompt, (size_t)n_prompt);
    for (int t = 0; t < o->max_new; t++) {
        float *logits = full_logits(m, seq.v, (int)seq.n);
        int32_t id = sample_pick(logits + (seq.n - 1) * vocab, vocab, o->temperature, o->top_p,
                                 gale_rng_uniform(o->seed, (uint64_t)t));
        free(logits);
        gale_ids_push(&seq, id);
        gale_ids_push(out, id);
        if (id == o->eos_id)
            break;
    }
    gale_ids_free(&seq);
}

static void check_sample_generate(void)
{
    gale_error err;
    struct model_config cfg = tiny(MODEL_MIXTRAL, 6, 4);
    struct model *m = model_create(&cfg, cpu_backend(), NULL, &err);
    model_init_random(m, 0.2, 21);
    int32_t prompt[5];
    random_tokens(prompt, 5, cfg.vocab_size, 22);
    const gale_sample_options cases[] = {
        {.max_new = 40, .temperature = 0, .top_p = 1, .seed = 0, .eos_id = -1},
        {.max_new = 40, .temperature = 0.8, .top_p = 0.9, .seed = 7, .eos_id = -1},
        {.max_new = 40, .temperature = 1.5, .top_p = 1, .seed = 3, .eos_id = 2},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        gale_ids got = {0}, want = {0};
        CHECK_MSG(sample_generate(m, prompt, 5, &cases[c], &got, NULL, NULL, NULL, &err) == 0, "%s", err.msg);
        generate_by_full_forward(m, prompt, 5, &cases[c], &want);
        CHECK_MSG(got.n == want.n && !memcmp(got.v, want.v, sizeof(int32_t) * got.n),
              "sample_generate case %zu: %zu tokens, the full forward's %zu, or different ids", c,
              got.n, want.n);
        printf("ok   sample_generate (temperature %g, seed %llu): %zu tokens, as the full forward "
               "draws them\n", cases[c].temperature, (unsigned long long)cases[c].seed, got.n);
        gale_ids_free(&got);
        gale_ids_free(&want);
    }
    model_free(m);
}

int main(void)
{
    const char *shared = getenv("GALE_SHARED");
    if (!shared) {
        fprintf(stderr, "FAIL GALE_SHARED is not set (ctest sets it)\n");
        return 1;
    }
    check_one_row_matmul();
    check_cached_op(150, 4, 2, 8, 0);
    check_cached_op(150, 4, 2, 8, 5);
    check_cached_op(150, 6, 1, 4, 70);

    /* 300 tokens pass the 256-token chunk and, with W = 4, the rolling buffer's 262 rows */
    check_random_model("llama (GQA)", tiny(MODEL_LLAMA, 0, 0), 300, 300);
    check_random_model("mistral (window 4)", tiny(MODEL_MISTRAL, 4, 0), 300, 0);
    check_random_model("mistral (window 4), max_len", tiny(MODEL_MISTRAL, 4, 0), 300, 300);
    check_random_model("mixtral", tiny(MODEL_MIXTRAL, 0, 4), 120, 120);
    /* W = 40: 39 keys move when the 334-row buffer fills */
    check_random_model("mixtral (window 40)", tiny(MODEL_MIXTRAL, 40, 4), 400, 0);

    check_fixture(shared, "golden/llama-tiny");
    check_fixture(shared, "golden/mistral-tiny");
    check_fixture(shared, "golden/mixtral-tiny");

    check_errors();
    check_sample_generate();
    return check_report("test_kv_cache");
}
