/* gale plot: argument parsing for plot_run (train/plot.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "train/plot.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: gale plot RUN_DIR [--out FILE.png|FILE.svg]\n"
               "\n"
               "Draws the train loss, val loss and learning rate of a run from RUN_DIR/metrics.jsonl.\n"
               "PNG through gnuplot (default RUN_DIR/curves.png); SVG when FILE ends in .svg or gnuplot\n"
               "is not installed (default RUN_DIR/curves.svg then).\n");
}

int cmd_plot(int argc, char **argv)
{
    const char *run_dir = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            out = argv[++i];
        } else if (argv[i][0] != '-' && !run_dir) {
            run_dir = argv[i];
        } else {
            fprintf(stderr, "gale plot: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!run_dir) {
        usage(stderr);
        return 2;
    }
    gale_error err;
    char *written = NULL;
    if (plot_run(run_dir, out, &written, &err)) {
        fprintf(stderr, "gale plot: %s\n", err.msg);
        return 1;
    }
    printf("%s\n", written);
    free(written);
    return 0;
}
