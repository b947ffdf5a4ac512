/* gale: dispatches `gale SUBCOMMAND ...` to its cli/cmd_*.c entry point. `gale tokenize` and
 * the help are in this executable, which links only what they need; every other command is
 * in the module libgale_commands.so (HDF5, Open MPI, OpenBLAS, libyaml: a dozen milliseconds
 * of dynamic loading), opened when such a command runs. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "util/module.h"

#define COMMANDS_MODULE "libgale_commands.so"

struct command {
    const char *name;
    int (*run)(int argc, char **argv); /* NULL: the module's cmd_NAME */
    const char *summary;
};

static const struct command commands[] = {
    {"prepare", NULL, "text and JSONL to deduplicated, tokenized, packed HDF5 shards (MPI)"},
    {"tokenize", cmd_tokenize, "text or chat JSONL to token ids (SentencePiece BPE or Tekken), and back"},
    {"train", NULL, "train or fine-tune a model from a run YAML (resumes; MPI data and expert parallel, LoRA)"},
    {"plot", NULL, "loss and learning-rate curves of a run (PNG via gnuplot, or SVG)"},
    {"plan", NULL, "the memory plan of a run per rank (GiB per arena, fits a device or not)"},
    {"verify", NULL, "check a backend against a reference fixture (logits, gradients, AdamW)"},
    {"sample", NULL, "generate text from a checkpoint (temperature, top-p, chat template)"},
    {"eval", NULL, "loss and perplexity of a checkpoint over a split of prepared data"},
    {"merge", NULL, "fold LoRA adapters (PEFT's format) into their base: a full HF folder"},
    {"inspect", NULL, "summarise a prepared folder or shard; print a row as text (--decode)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: gale COMMAND [ARGS...]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n`gale COMMAND --help` describes each one; `gale --version` says which backends run here.\n");
}

/* Runs the module's cmd_NAME on argv (argv[0] is NAME). The module is opened RTLD_GLOBAL: its
 * libraries then resolve symbols as they did when gale linked them (Open MPI's components
 * take libmpi's; libgale_cuda.so takes the module's gale_* functions). RTLD_LAZY binds their
 * functions at first call, as at a process's start (binding all of HDF5's, Open MPI's and
 * OpenBLAS's now cost 2-3 ms); the module itself is linked -z now, so what it lacks fails here. */
static int run_in_module(const char *name, int argc, char **argv, char **whole_argv)
{
    gale_error err;
    int missing;
    char symbol[64];
    snprintf(symbol, sizeof symbol, "cmd_%s", name);
    void *module = gale_module_open(COMMANDS_MODULE, "GALE_COMMANDS_MODULE", RTLD_LAZY | RTLD_GLOBAL,
                                    symbol, &missing, &err);
    if (!module) {
        fprintf(stderr, "gale %s: %s%s\n", name, err.msg,
                missing ? ": every command but tokenize is in that module, which is built beside gale "
                          "and installed in lib/gale" : "");
        return 1;
    }
    void (*init)(char **) = (void (*)(char **))dlsym(module, "gale_commands_init");
    int (*run)(int, char **) = (int (*)(int, char **))dlsym(module, symbol);
    if (!init) {
        fprintf(stderr, "gale %s: %s lacks gale_commands_init\n", name, COMMANDS_MODULE);
        return 1;
    }
    init(whole_argv);
    return run(argc, argv);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version"))
        return run_in_module("version", argc - 1, argv + 1, argv);
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        const struct command *c = &commands[i];
        if (!strcmp(argv[1], c->name))
            return c->run ? c->run(argc - 1, argv + 1) : run_in_module(c->name, argc - 1, argv + 1, argv);
    }
    fprintf(stderr, "gale: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
