/* cmd_prepare: `gale prepare [CONFIG.yaml] [--key value ...]`: reads the YAML, applies the
 * flags over it, and runs the pipeline under MPI (a singleton without mpirun). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "data/prepare.h"
#include "data/prepare_config.h"

static void prepare_usage(FILE *f)
{
    fprintf(f,
            "usage: gale prepare [CONFIG.yaml] [--input PATH...] [--tokenizer M] [--out DIR] [--KEY VALUE...]\n"
            "       mpirun -np N gale prepare ...   (inputs split over ranks; dedup stays global)\n"
            "\n"
            "Reads text and JSONL inputs (.gz and .zst too), drops malformed records and those outside\n"
            "the length bounds, removes exact and near duplicates (MinHash LSH, confirmed by Jaccard\n"
            "similarity), tokenizes, packs rows of seq_len+1 tokens and writes HDF5 shards, report.json\n"
            "and manifest.json into OUT (built as OUT.partial, renamed when complete).\n"
            "\n"
            "--kind sft reads conversations, one JSON record per line, in any of these formats (told\n"
            "apart record by record): OpenAI and mistral-finetune {\"messages\": [{\"role\", \"content\"}]}\n"
            "(roles system, developer, user, assistant, tool; content a string or text parts\n"
            "[{\"type\": \"text\", \"text\": ...}]; tool_calls, tool_call_id, weight, \"tools\", \"only_last\"),\n"
            "and ShareGPT {\"conversations\": [{\"from\", \"value\"}]} (from human, gpt, system,\n"
            "function_call, observation; a top-level \"system\"). The messages are under chat_key, or the\n"
            "first of messages, conversations, conversation. Call ids that are not 9 letters or digits\n"
            "(OpenAI's call_...) are mapped to 9 by a hash, alike in a call and its result. A record no\n"
            "format reads is rejected with the key at fault and its file:line; one with nothing to\n"
            "learn (every answer \"weight\": 0) is rejected as untrained. Near dedup of conversations\n"
            "compares the messages other than system ones, so conversations that share a long system\n"
            "prompt are not taken for duplicates; exact dedup compares everything. A run that rejects\n"
            "every record, or more than max_rejected_share of them as malformed, fails.\n"
            "\n"
            "Every key of the YAML file is also a flag (underscores as dashes); flags override the file.\n"
            "--input (or --inputs) and --exclude take one or more values. --overwrite alone means\n"
            "--overwrite true.\n"
            "\n"
            "keys:\n");
    prepare_config_print_keys(f);
}

/* --some-key → some_key; --input → inputs. */
static void flag_key(const char *flag, char *key, size_t size)
{
    snprintf(key, size, "%s", flag + 2);
    for (char *p = key; *p; p++)
        if (*p == '-')
            *p = '_';
    if (!strcmp(key, "input"))
        snprintf(key, size, "inputs");
}

/* Loads the config file (the one plain argument) and applies the flags over it, wherever
 * they stand: pass 0 finds the file, pass 1 applies the flags. */
static int parse_args(int argc, char **argv, prepare_config *cfg, gale_error *err)
{
    const char *config = NULL;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && config && prepare_config_load_yaml(cfg, config, err) < 0)
            return -1;
        for (int i = 1; i < argc; i++) {
            const char *arg = argv[i];
            if (strncmp(arg, "--", 2)) {
                if (pass == 0 && config)
                    return gale_fail(err, "unexpected argument '%s' (one config file at most)", arg);
                config = arg;
                continue;
            }
            char key[128], where[160];
            flag_key(arg, key, sizeof key);
            snprintf(where, sizeof where, "flag %s", arg);
            int n_values = 0;
            while (i + 1 + n_values < argc && strncmp(argv[i + 1 + n_values], "--", 2))
                n_values++;
            if (prepare_config_is_list(key)) {
                if (n_values == 0)
                    return gale_fail(err, "%s needs at least one value", arg);
                for (int k = 0; pass == 1 && k < n_values; k++)
                    if ((k ? prepare_config_append(cfg, key, argv[i + 1 + k], where, err)
                           : prepare_config_set(cfg, key, argv[i + 1], where, err)) < 0)
                        return -1;
                i += n_values;
            } else if (!strcmp(key, "overwrite") && n_values == 0) {
                cfg->overwrite = 1;
            } else {
                if (n_values == 0)
                    return gale_fail(err, "%s needs a value", arg);
                if (pass == 1 && prepare_config_set(cfg, key, argv[i + 1], where, err) < 0)
                    return -1;
                i++;
            }
        }
    }
    return 0;
}

int cmd_prepare(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            prepare_usage(stdout);
            return 0;
        }
    int initialized = 0, provided;
    MPI_Initialized(&initialized);
    if (!initialized)
        MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    prepare_config cfg;
    prepare_config_init(&cfg);
    gale_error err;
    int rc = parse_args(argc, argv, &cfg, &err);
    if (rc == 0)
        rc = prepare_run(&cfg, MPI_COMM_WORLD, &err);
    if (rc < 0) {
        if (size > 1)
            fprintf(stderr, "gale prepare: rank %d: error: %s\n", rank, err.msg);
        else
            fprintf(stderr, "gale prepare: error: %s\n", err.msg);
    }
    prepare_config_free(&cfg);
    if (!initialized)
        MPI_Finalize();
    return rc < 0 ? 1 : 0;
}
