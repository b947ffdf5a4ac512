/* gale train: argument parsing for trainer_run (train/trainer.h). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "train/run_config.h"
#include "train/trainer.h"
#include "util/error.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gale train CONFIG.yaml [--set section.key=value ...] [--stop-at STEP]\n"
            "\n"
            "Trains a Llama 2 / Mistral / Mixtral model as the run YAML says (sections model, data,\n"
            "optim, run, moe, backend, checkpoint; see configs/). Resumes from\n"
            "RUN_DIR/checkpoints/latest when the run has a checkpoint. Data parallel under mpirun:\n"
            "`mpirun -np N gale train ...`.\n"
            "\n"
            "  --set section.key=value  override one key of the YAML (repeatable), e.g. --set optim.lr=1e-4\n"
            "  --stop-at STEP           stop after STEP with a checkpoint, as SIGINT would (resume later)\n"
            "  --help                   this text\n"
            "\n"
            "Writes RUN_DIR/metrics.jsonl (one JSON object per step and evaluation) and\n"
            "RUN_DIR/checkpoints/step_NNNNNNNN/ (a Hugging Face folder: config.json and\n"
            "model.safetensors, or model-0000N-of-0000M.safetensors and an index above\n"
            "checkpoint.shard_size; in checkpoint.dtype, with master.safetensors in fp32 for resuming\n"
            "when that is bf16).\n"
            "\n"
            "Keys of the run YAML (section.key):\n");
    run_config_print_keys(f);
}

static int parse_args(int argc, char **argv, const char **config, char ***sets, int *n_sets, long *stop_at)
{
    *sets = gale_xcalloc(argc, sizeof **sets);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--set") && i + 1 < argc) {
            (*sets)[(*n_sets)++] = argv[++i];
        } else if (!strncmp(a, "--set=", 6)) {
            (*sets)[(*n_sets)++] = argv[i] + 6;
        } else if (!strcmp(a, "--stop-at") && i + 1 < argc) {
            char *end;
            *stop_at = strtol(argv[++i], &end, 10);
            if (*end || *stop_at <= 0) {
                fprintf(stderr, "gale train: --stop-at needs a step number > 0, got '%s'\n", argv[i]);
                return -1;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "gale train: unknown or incomplete option '%s'\n", a);
            return -1;
        } else if (*config) {
            fprintf(stderr, "gale train: one config file, got '%s' and '%s'\n", *config, a);
            return -1;
        } else {
            *config = a;
        }
    }
    if (!*config) {
        fprintf(stderr, "gale train: no config file given\n");
        return -1;
    }
    return 0;
}

int cmd_train(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
    const char *config = NULL;
    char **sets = NULL;
    int n_sets = 0;
    gale_train_options opts = {0};
    if (parse_args(argc, argv, &config, &sets, &n_sets, &opts.stop_at)) {
        free(sets);
        usage(stderr);
        return 2;
    }
    gale_error err = {{0}};
    gale_run_config *cfg = run_config_load(config, sets, n_sets, &err);
    free(sets);
    if (!cfg) {
        fprintf(stderr, "gale train: %s\n", err.msg);
        return 1;
    }
    MPI_Init(&argc, &argv);
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    int rc = trainer_run(cfg, &opts, &err);
    run_config_free(cfg);
    if (rc) {
        if (world > 1)
            fprintf(stderr, "gale train: rank %d: %s\n", rank, err.msg);
        else
            fprintf(stderr, "gale train: %s\n", err.msg);
        if (world > 1) /* the other ranks may be waiting in a collective */
            MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Finalize();
    return rc ? 1 : 0;
}
