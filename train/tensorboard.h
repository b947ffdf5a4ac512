/* tensorboard: the run's metrics as TensorBoard event files, so that `tensorboard --logdir
 * runs` shows every run in it. One file per training process,
 * RUN/events.out.tfevents.TIME.HOST.PID.N: TFRecord framing (length, masked CRC-32C of the
 * length, an Event protobuf, its masked CRC-32C), a first Event naming the file version,
 * then an Event of scalar summaries per metrics record. A resumed run starts a new file at
 * the checkpoint's step; TensorBoard's reader drops the older file's events from that step
 * on, as it does for any restart. */
#ifndef GALE_TRAIN_TENSORBOARD_H
#define GALE_TRAIN_TENSORBOARD_H

#include <jansson.h>

#include "util/error.h"

typedef struct tb_writer tb_writer;

/* Creates a new event file in run_dir; NULL with a message naming it on failure. */
tb_writer *tb_open(const char *run_dir, gale_error *err);
void tb_close(tb_writer *tb);

/* One metrics.jsonl record as scalars at its "step": every number of a "train" record under
 * train/NAME (loss, lr, grad_norm, tokens_per_s, mfu, ...), of an "eval" record under
 * eval/NAME (val_loss, val_ppl), and the per-layer expert load as experts/layer_L/{min,max,cv}.
 * Nulls (non-finite values) are left out. Flushed at once. */
int tb_write_record(tb_writer *tb, const json_t *record, gale_error *err);

#endif
