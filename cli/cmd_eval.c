/* gale eval: argument parsing for eval_split (train/eval.h) over a checkpoint. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "train/checkpoint.h"
#include "train/eval.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: gale eval --checkpoint DIR [--adapter DIR] --data DIR [--data DIR ...]\n"
               "                 [--split val|train] [--batch-rows N] [--max-batches N] [--no-doc-mask]\n"
               "\n"
               "Loss (mean cross-entropy over every target token) and perplexity of a checkpoint (or a run\n"
               "folder: its latest checkpoint, or any Hugging Face folder with config.json and safetensors)\n"
               "over one pass of a split of prepared folders.\n"
               "\n"
               "  --adapter DIR    LoRA adapters in PEFT's format (a LoRA run's checkpoint) on the base\n"
               "  --split S        val (default) or train\n"
               "  --batch-rows N   rows per forward (default 8)\n"
               "  --max-batches N  stop after N batches (default: the whole split)\n"
               "  --no-doc-mask    let attention cross document boundaries inside a row\n");
}

int cmd_eval(int argc, char **argv)
{
    const char *ckpt_arg = NULL, *adapter = NULL, *split = "val";
    const char **dirs = gale_xcalloc(argc, sizeof *dirs);
    gale_eval_options eo = {.batch_rows = 8, .doc_mask = 1, .world = 1};
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            rc = 0;
            goto done;
        } else if (has && !strcmp(a, "--checkpoint")) {
            ckpt_arg = argv[++i];
        } else if (has && !strcmp(a, "--adapter")) {
            adapter = argv[++i];
        } else if (has && !strcmp(a, "--data")) {
            dirs[eo.n_dirs++] = argv[++i];
        } else if (has && !strcmp(a, "--split")) {
            split = argv[++i];
        } else if (has && (!strcmp(a, "--batch-rows") || !strcmp(a, "--max-batches"))) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v <= 0 || v > 1 << 30) {
                fprintf(stderr, "gale eval: %s needs a positive integer, got '%s'\n", a, argv[i]);
                goto usage;
            }
            if (!strcmp(a, "--batch-rows"))
                eo.batch_rows = (int)v;
            else
                eo.max_batches = v;
        } else if (!strcmp(a, "--no-doc-mask")) {
            eo.doc_mask = 0;
        } else {
            fprintf(stderr, "gale eval: unexpected argument '%s'\n", a);
            goto usage;
        }
    }
    if (!ckpt_arg || !eo.n_dirs) {
        fprintf(stderr, "gale eval: --checkpoint and --data are required\n");
        goto usage;
    }
    if (strcmp(split, "val") && strcmp(split, "train")) {
        fprintf(stderr, "gale eval: --split is val or train, got '%s'\n", split);
        goto usage;
    }
    eo.dirs = dirs;
    eo.split = split;
    gale_error err = {{0}};
    gale_eval_result res;
    char *dir = checkpoint_resolve_model(ckpt_arg, &err);
    struct model *m = dir ? checkpoint_open_model(dir, adapter, "cpu", GALE_F32, &err) : NULL;
    rc = 1;
    if (m && eval_split(m, &eo, &res, &err) == 0) {
        printf("checkpoint %s\nsplit      %s (%ld batches of %d rows)\nloss       %.8f\nperplexity %.6f\n"
               "targets    %lld\n",
               dir, split, res.batches, eo.batch_rows, res.loss, res.ppl, (long long)res.n_targets);
        rc = 0;
    } else {
        fprintf(stderr, "gale eval: %s\n", err.msg);
    }
    model_free(m);
    free(dir);
    goto done;
usage:
    usage(stderr);
done:
    free(dirs);
    return rc;
}
