/* gale merge: argument parsing for merge_adapter (train/merge.h). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "train/merge.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: gale merge --base DIR --adapter DIR --out DIR [--shard-size BYTES]\n"
               "\n"
               "Folds LoRA adapters (PEFT's format: adapter_config.json and adapter_model.safetensors,\n"
               "as a LoRA run's checkpoints hold them) into their base, W + (alpha/r) * B A for every\n"
               "adapted projection, and writes a full Hugging Face folder (config.json, the weights\n"
               "in the base's dtype, the tokenizer) that needs no adapter. The weights are sharded as\n"
               "transformers' save_pretrained does: files of at most --shard-size bytes (default\n"
               "5000000000) and model.safetensors.index.json, or one model.safetensors when they fit.\n"
               "They stream tensor by tensor: the merge holds one tensor in memory, not the model.\n"
               "The folder is written whole as DIR.tmp and then takes DIR's place, so a merge that\n"
               "fails or is killed leaves DIR as it was; DIR must be new, empty, or a model folder\n"
               "(one with a config.json, e.g. an earlier merge), never the base or the adapter.\n");
}

int cmd_merge(int argc, char **argv)
{
    const char *base = NULL, *adapter = NULL, *out = NULL;
    uint64_t shard_size = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (has && !strcmp(a, "--base")) {
            base = argv[++i];
        } else if (has && !strcmp(a, "--adapter")) {
            adapter = argv[++i];
        } else if (has && !strcmp(a, "--out")) {
            out = argv[++i];
        } else if (has && !strcmp(a, "--shard-size")) {
            char *end;
            const char *v = argv[++i];
            errno = 0;
            unsigned long long n = strtoull(v, &end, 10);
            if (*v < '0' || *v > '9' || *end || errno || n == 0) {
                fprintf(stderr, "gale merge: --shard-size '%s' is not a positive number of bytes\n", v);
                return 2;
            }
            shard_size = n;
        } else {
            fprintf(stderr, "gale merge: unexpected argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!base || !adapter || !out) {
        fprintf(stderr, "gale merge: --base, --adapter and --out are required\n");
        usage(stderr);
        return 2;
    }
    gale_error err = {{0}};
    if (merge_adapter(base, adapter, out, shard_size, &err)) {
        fprintf(stderr, "gale merge: %s\n", err.msg);
        return 1;
    }
    printf("merged %s into %s: %s\n", adapter, base, out);
    return 0;
}
