/* gale: dispatches `gale SUBCOMMAND ...` to its cli/cmd_*.c entry point. */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "model/backend.h"
#include "model/cpu/blas_core.h"
#include "model/cpu/blas_pool.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    {"prepare", cmd_prepare, "text and JSONL to deduplicated, tokenized, packed HDF5 shards (MPI)"},
    {"tokenize", cmd_tokenize, "text or chat JSONL to token ids (SentencePiece BPE or Tekken), and back"},
    {"train", cmd_train, "train or fine-tune a model from a run YAML (resumes; MPI data and expert parallel, LoRA)"},
    {"plot", cmd_plot, "loss and learning-rate curves of a run (PNG via gnuplot, or SVG)"},
    {"plan", cmd_plan, "the memory plan of a run per rank (GiB per arena, fits a device or not)"},
    {"verify", cmd_verify, "check a backend against a reference fixture (logits, gradients, AdamW)"},
    {"sample", cmd_sample, "generate text from a checkpoint (temperature, top-p, chat template)"},
    {"eval", cmd_eval, "loss and perplexity of a checkpoint over a split of prepared data"},
    {"merge", cmd_merge, "fold LoRA adapters (PEFT's format) into their base: a full HF folder"},
    {"inspect", cmd_inspect, "summarise a prepared folder or shard; print a row as text (--decode)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: gale COMMAND [ARGS...]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n`gale COMMAND --help` describes each one; `gale --version` says which backends run here.\n");
}

/* What this gale is and what it can run on: the version, the BLAS kernels, and whether the
 * CUDA backend opens here (its module, a driver, a device). */
static int version(void)
{
    char blas[256];
    blas_core_describe(blas, sizeof blas);
    printf("gale %s\nbackends: cpu (fp32, bf16)", GALE_VERSION);
    gale_error err;
    struct gale_backend *cuda = gale_backend_create("cuda", GALE_BF16, &err);
    if (cuda)
        printf(", cuda (fp32, bf16)\n");
    else
        printf("; %s\n", err.msg);
    gale_backend_free(cuda);
    printf("blas: %s\n", blas);
    return 0;
}

int main(int argc, char **argv)
{
    blas_core_select(argv);
    blas_pool_stop();
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version"))
        return version();
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "gale: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
