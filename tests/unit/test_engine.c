/* test_engine: the engine's rules that the fixtures do not see. Host transfers in a training
 * step, counted by a wrapper around the CPU backend: none per layer but a Mixtral layer's expert
 * counts, the statistics read once per step. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu_backend.h"
#include "model/model.h"

/* ---- a backend that counts its host transfers ---- */

static const struct gale_ops *inner;
static long uploads, downloads;

static void counting_upload(struct gale_backend *be, void *dst, const void *src, size_t bytes)
{
    uploads++;
    inner->upload(be, dst, src, bytes);
}

static void counting_download(struct gale_backend *be, void *dst, const void *src, size_t bytes)
{
    downloads++;
    inner->download(be, dst, src, bytes);
}

/* The CPU backend with counted transfers: the same context, its own table. Freed with free. */
static struct gale_backend *counting_backend(void)
{
    static struct gale_ops ops;
    struct gale_backend *cpu = cpu_backend();
    inner = cpu->ops;
    ops = *cpu->ops;
    ops.upload = counting_upload;
    ops.download = counting_download;
    struct gale_backend *be = malloc(sizeof *be);
    *be = *cpu;
    be->ops = &ops;
    return be;
}

static struct model_config tiny(int experts, int layers)
{
    struct model_config c = {0};
    c.kind = experts ? MODEL_MIXTRAL : MODEL_LLAMA;
    c.vocab_size = 41;
    c.hidden_size = 16;
    c.intermediate_size = 24;
    c.num_layers = layers;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 4;
    c.rope_theta = 10000;
    c.rms_norm_eps = 1e-5;
    c.max_position_embeddings = 64;
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    c.initializer_range = 0.02;
    c.num_experts = experts;
    c.num_experts_per_tok = experts ? 2 : 0;
    c.router_aux_loss_coef = 0.02;
    return c;
}

#define B 2
#define T 9
#define MICRO 3

struct transfers {
    long up, down;
};

/* The host transfers of one optimizer step of MICRO micro-batches, after a warm-up step. */
static struct transfers step_transfers(struct gale_backend *be, int experts, int layers)
{
    struct model_config cfg = tiny(experts, layers);
    struct model_options opts = {MODEL_AUX_HF, 1e-3};
    gale_error err;
    struct model *m = model_create(&cfg, be, &opts, &err);
    CHECK_MSG(m != NULL, "model_create: %s", m ? "" : err.msg);
    struct transfers t = {-1, -1};
    if (!m)
        return t;
    model_init_random(m, 0.02, 7);
    int32_t tokens[B * T], targets[B * T];
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (i * 7 + 3) % cfg.vocab_size;
        targets[i] = (i * 5 + 1) % cfg.vocab_size;
    }
    struct model_batch batch = {.batch = B, .seq = T, .tokens = tokens, .targets = targets};
    struct model_stats st;
    for (int pass = 0; pass < 2; pass++) {  /* the first allocates and uploads the weights */
        uploads = downloads = 0;
        model_zero_grads(m);
        model_stats_reset(m);
        for (int i = 0; i < MICRO; i++)
            CHECK_MSG(model_forward_backward(m, &batch, B * T * MICRO, 1.0 / MICRO, NULL, &err) == 0,
                      "forward_backward: %s", err.msg);
        CHECK_MSG(model_stats_read(m, &st, &err) == 0, "stats: %s", err.msg);
    }
    t.up = uploads;
    t.down = downloads;
    CHECK_MSG(st.n_targets == B * T * MICRO, "%ld targets counted, %d expected", st.n_targets,
              B * T * MICRO);
    model_free(m);
    return t;
}

static void test_transfers(void)
{
    struct gale_backend *be = counting_backend();
    for (int experts = 0; experts <= 4; experts += 4) {
        struct transfers two = step_transfers(be, experts, 2);
        struct transfers five = step_transfers(be, experts, 5);
        /* what 3 more layers add, per micro-batch */
        double up = (five.up - two.up) / 3.0 / MICRO, down = (five.down - two.down) / 3.0 / MICRO;
        printf("%s: a step of %d micro-batches makes %ld uploads and %ld downloads with 2 layers, "
               "%ld and %ld with 5: %.0f and %.0f per layer and micro-batch\n",
               experts ? "mixtral" : "dense", MICRO, two.up, two.down, five.up, five.down, up,
               down);
        CHECK_MSG(up == 0, "%s: %.2f uploads per layer and micro-batch", experts ? "mixtral" : "dense",
                  up);
        CHECK_MSG(down == (experts ? 1 : 0), "%s: %.2f downloads per layer and micro-batch, only "
                  "a Mixtral layer's expert counts may come back", experts ? "mixtral" : "dense",
                  down);
        /* what is left is per micro-batch (the batch; a Mixtral's router weights) or per step */
        long per_step_down = two.down - (experts ? 2L * MICRO : 0);
        CHECK_MSG(per_step_down == 1, "%s: %ld downloads per step beside the expert counts, "
                  "the statistics come back in one", experts ? "mixtral" : "dense", per_step_down);
        CHECK_MSG(two.up == MICRO * (experts ? 5 : 3), "%s: %ld uploads for %d micro-batches: "
                  "tokens, positions, targets (and the router's loss weights)",
                  experts ? "mixtral" : "dense", two.up, MICRO);
    }
    free(be);
}

int main(void)
{
    test_transfers();
    gale_backend_free(cpu_backend());
    return check_report("test_engine");
}
