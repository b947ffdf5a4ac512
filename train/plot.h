/* plot: the loss (train and val) and learning-rate curves of a run, from its metrics.jsonl,
 * drawn by gnuplot into a PNG; where gnuplot is not installed, written as an SVG by a small
 * writer here. The image is written atomically. */
#ifndef GALE_TRAIN_PLOT_H
#define GALE_TRAIN_PLOT_H

#include "util/error.h"

/* Draws run_dir/metrics.jsonl into out_path (NULL: run_dir/curves.png, or curves.svg
 * without gnuplot). *written receives the path written (caller frees). */
int plot_run(const char *run_dir, const char *out_path, char **written, gale_error *err);

#endif
