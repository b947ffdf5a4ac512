/* metrics: what the trainer reports. metrics.jsonl in the run folder gets one JSON object per
 * line (training steps and evaluations) for tools such as `gale plot`; the helpers here give
 * the numbers of the per-step line for people: model FLOPs per token for the MFU estimate,
 * the per-layer expert load of MoE routing, and durations. */
#ifndef GALE_TRAIN_METRICS_H
#define GALE_TRAIN_METRICS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model/model.h"
#include "util/error.h"

#define GALE_METRICS_FILE "metrics.jsonl"

/* Opens run_dir/metrics.jsonl for appending. Records of steps after keep_through_step are
 * dropped first (rewritten atomically): they come from a run cut off after its last
 * checkpoint and are about to be redone. keep_through_step < 0 keeps everything. */
FILE *metrics_open(const char *run_dir, long keep_through_step, gale_error *err);

/* Appends record as one line and flushes. */
int metrics_append(FILE *f, json_t *record, gale_error *err);

/* Reads every record of a metrics.jsonl (a JSON array, new reference); a line that is not
 * a JSON object is an error naming the file and line. */
json_t *metrics_read(const char *path, gale_error *err);

/* Tokens routed to each expert of one MoE layer, summarised. */
typedef struct gale_expert_load {
    double min, max;  /* tokens of the least and most loaded expert */
    double cv;        /* coefficient of variation: std / mean over experts */
} gale_expert_load;

void expert_load_summarise(const int64_t *counts, int experts, gale_expert_load *out);

/* Counts per layer and expert, counts[layer * experts + e], from the chosen experts
 * [layers][rows][k] of a forward (model_selected_experts_download); adds to counts. */
void expert_load_count(const int32_t *selected, int layers, int rows, int k, int experts, int64_t *counts);

/* Training FLOPs per token (forward and backward): 6 × the parameters each token
 * multiplies with (embedding lookups excluded, experts scaled by k / experts), 4 × when the
 * weights are frozen (LoRA: no weight gradients), plus the attention scores and mixing,
 * 12 × layers × heads × head_dim × seq_len (PaLM's estimate). */
double train_flops_per_token(const struct model_config *cfg, const struct model_layout *layout, int seq_len,
                             int frozen);

/* "1h02m", "3m05s", "12s". */
void format_duration(double seconds, char *buf, size_t size);

#endif
