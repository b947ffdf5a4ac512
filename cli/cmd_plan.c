/* gale plan: the memory plan of a run (model/model.h, model_plan) per rank, without
 * allocating: what `gale train` would hold on each device, and whether it fits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "model/config.h"
#include "model/lora.h"
#include "model/model.h"
#include "train/run_config.h"
#include "train/trainer.h"
#include "util/error.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gale plan CONFIG.yaml [--set section.key=value ...] [--world N] [--ep N]\n"
            "                 [--device-memory GIB]\n"
            "\n"
            "Prints the memory plan of a training run per rank: the bytes of each arena (the\n"
            "weights' compute copy, fp32 master weights, fp32 gradients, AdamW moments,\n"
            "activations, scratch) sized from the model, data.micro_batch x data.seq_len,\n"
            "backend.precision, backend.recompute, the lora section (adapters on a frozen base:\n"
            "the base's compute copy only, master, gradients and moments of the adapters) and\n"
            "the parallel layout, without allocating.\n"
            "Sizes are those of a device storing the compute dtype natively (bf16: 2 bytes).\n"
            "\n"
            "  --set section.key=value  override one key of the YAML (repeatable)\n"
            "  --world N                ranks in all (default 1): data parallel x expert parallel\n"
            "  --ep N                   expert-parallel ranks splitting each layer's experts\n"
            "                           (default 1; parallel.ep of a run)\n"
            "  --device-memory GIB      say whether the plan fits a device of this many GiB\n");
}

static int parse_int(const char *opt, const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v <= 0 || v > 1 << 20) {
        fprintf(stderr, "gale plan: %s needs a positive number, got '%s'\n", opt, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int cmd_plan(int argc, char **argv)
{
    const char *config = NULL;
    char **sets = gale_xcalloc((size_t)argc, sizeof *sets);
    int n_sets = 0, world = 1, ep = 1, bad = 0;
    double device_gib = 0;
    for (int i = 1; i < argc && !bad; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(sets);
            return 0;
        } else if (!strcmp(a, "--set") && i + 1 < argc) {
            sets[n_sets++] = argv[++i];
        } else if (!strcmp(a, "--world") && i + 1 < argc) {
            bad = parse_int(a, argv[++i], &world);
        } else if (!strcmp(a, "--ep") && i + 1 < argc) {
            bad = parse_int(a, argv[++i], &ep);
        } else if (!strcmp(a, "--device-memory") && i + 1 < argc) {
            device_gib = strtod(argv[++i], NULL);
            bad = device_gib <= 0;
            if (bad)
                fprintf(stderr, "gale plan: --device-memory needs GiB > 0, got '%s'\n", argv[i]);
        } else if (a[0] != '-' && !config) {
            config = a;
        } else {
            fprintf(stderr, "gale plan: unknown or incomplete option '%s'\n", a);
            bad = 1;
        }
    }
    if (!bad && !config) {
        fprintf(stderr, "gale plan: no config file given\n");
        bad = 1;
    }
    if (!bad && world % ep) {
        fprintf(stderr, "gale plan: --ep %d does not divide --world %d\n", ep, world);
        bad = 1;
    }
    if (bad) {
        free(sets);
        usage(stderr);
        return 2;
    }
    gale_error err = {{0}};
    gale_run_config *cfg = run_config_load(config, sets, n_sets, &err);
    free(sets);
    struct model_config mc;
    struct lora_config lora;
    if (!cfg || trainer_model_config(cfg, &mc, &err) || trainer_lora_config(cfg, &lora, &err)) {
        fprintf(stderr, "gale plan: %s\n", err.msg);
        run_config_free(cfg);
        return 1;
    }
    struct model_plan_layout lay = trainer_plan_layout(cfg, lora.rank ? &lora : NULL, world, ep);
    struct model_plan plan;
    int rc = model_plan(&mc, &lay, &plan, &err);
    if (rc) {
        fprintf(stderr, "gale plan: %s: %s\n", config, err.msg);
        run_config_free(cfg);
        return 1;
    }
    double gib = 1024.0 * 1024 * 1024;
    printf("%s: %s, %.2fB parameters (%.2fB on a rank); micro-batch %d x %d tokens, %s, "
           "recompute %s\nlayout: %d rank(s) = data parallel %d x expert parallel %d, ZeRO-1 %s\n",
           config, model_kind_name(mc.kind), model_config_num_params(&mc) / 1e9, plan.params / 1e9,
           lay.micro_batch, lay.seq_len, gale_dtype_name(lay.compute),
           lay.recompute == MODEL_RECOMPUTE_LAYER ? "layer" : "none", world, world / ep, ep,
           lay.zero ? "on (moments split: dense over every rank, experts' over the data-parallel ranks)" : "off");
    if (lay.lora) {
        char targets[128];
        lora_targets_format(lora.targets, targets, sizeof targets);
        printf("LoRA r=%d on %s: %.1fM adapter parameters trained (%.3f%% of the rank's), the base "
               "frozen in %s\n", lora.rank, targets, plan.trained / 1e6, 100.0 * plan.trained / plan.params,
               gale_dtype_name(lay.compute));
    }
    printf("  %-24s %12s\n", "per rank", "GiB");
    for (int a = 0; a < PLAN_ARENAS; a++)
        printf("  %-24s %12.3f\n", model_plan_arena_name((enum model_plan_arena)a),
               plan.bytes[a] / gib);
    printf("  %-24s %12.3f   (%zu bytes)\n", "total", plan.total / gib, plan.total);
    if (device_gib > 0)
        printf("fits %.1f GiB: %s (%.0f%%)\n", device_gib,
               plan.total <= device_gib * gib ? "yes" : "no",
               100 * plan.total / (device_gib * gib));
    if (ep > 1)
        printf("expert parallelism: each rank holds %d of %d experts per layer; their activations "
               "are sized for balanced routing and grow with the rows a layer receives\n",
               mc.num_experts / ep, mc.num_experts);
    run_config_free(cfg);
    return 0;
}
