/* schedule: the learning rate of each optimizer step. Every schedule warms up linearly
 * over `warmup` steps (step s of the warmup gets lr·(s+1)/warmup, so the first step already
 * learns), then holds (constant), decays to min_lr along a half cosine or a line over the
 * remaining steps (cosine, linear), or holds and decays linearly over its last `decay`
 * steps (warmup-stable-decay, WSD). After `total` steps the rate stays at min_lr. */
#ifndef GALE_OPTIM_SCHEDULE_H
#define GALE_OPTIM_SCHEDULE_H

#include "util/error.h"

typedef enum gale_schedule_kind {
    GALE_SCHEDULE_CONSTANT,
    GALE_SCHEDULE_COSINE,
    GALE_SCHEDULE_LINEAR,
    GALE_SCHEDULE_WSD,
} gale_schedule_kind;

typedef struct gale_schedule {
    gale_schedule_kind kind;
    double lr;     /* peak rate, reached at the end of the warmup */
    double min_lr; /* floor of the decay */
    long warmup;   /* warmup steps */
    long total;    /* optimizer steps of the run */
    long decay;    /* WSD only: steps of the final linear decay */
} gale_schedule;

/* The rate of the 0-based optimizer step `step`. */
double schedule_lr(const gale_schedule *s, long step);

/* Checks that the numbers fit together (warmup and decay within total, min_lr <= lr). */
int schedule_validate(const gale_schedule *s, gale_error *err);

/* "constant", "cosine", "linear", "wsd" to a kind; -1 for any other name. */
int schedule_kind_parse(const char *name, gale_schedule_kind *kind);
const char *schedule_kind_name(gale_schedule_kind kind);

#endif
