/* schedule: warmup, then constant, cosine, linear or warmup-stable-decay. */
#include "optim/schedule.h"

#include <math.h>
#include <string.h>

static const char *const kind_names[] = {
    [GALE_SCHEDULE_CONSTANT] = "constant",
    [GALE_SCHEDULE_COSINE] = "cosine",
    [GALE_SCHEDULE_LINEAR] = "linear",
    [GALE_SCHEDULE_WSD] = "wsd",
};

int schedule_kind_parse(const char *name, gale_schedule_kind *kind)
{
    for (int k = 0; k < (int)(sizeof kind_names / sizeof *kind_names); k++)
        if (!strcmp(name, kind_names[k])) {
            *kind = (gale_schedule_kind)k;
            return 0;
        }
    return -1;
}

const char *schedule_kind_name(gale_schedule_kind kind)
{
    return kind_names[kind];
}

int schedule_validate(const gale_schedule *s, gale_error *err)
{
    if (s->lr <= 0)
        return gale_fail(err, "optim.lr must be > 0 (got %g)", s->lr);
    if (s->min_lr < 0 || s->min_lr > s->lr)
        return gale_fail(err, "optim.min_lr must be in [0, optim.lr = %g] (got %g)", s->lr, s->min_lr);
    if (s->warmup < 0 || s->warmup > s->total)
        return gale_fail(err, "optim.warmup must be in [0, %ld steps of the run] (got %ld)", s->total, s->warmup);
    if (s->kind == GALE_SCHEDULE_WSD && (s->decay < 0 || s->decay > s->total - s->warmup))
        return gale_fail(err, "optim.decay must be in [0, %ld steps after the warmup] (got %ld)",
                         s->total - s->warmup, s->decay);
    return 0;
}

/* Position in [0, 1] of step within [begin, end). */
static double progress(long step, long begin, long end)
{
    return end > begin ? (double)(step - begin) / (double)(end - begin) : 1.0;
}

double schedule_lr(const gale_schedule *s, long step)
{
    if (step < s->warmup)
        return s->lr * (double)(step + 1) / (double)s->warmup;
    if (s->kind == GALE_SCHEDULE_CONSTANT)
        return s->lr;
    if (step >= s->total)
        return s->min_lr;
    double span = s->lr - s->min_lr;
    switch (s->kind) {
    case GALE_SCHEDULE_COSINE:
        return s->min_lr + 0.5 * span * (1.0 + cos(M_PI * progress(step, s->warmup, s->total)));
    case GALE_SCHEDULE_LINEAR:
        return s->lr - span * progress(step, s->warmup, s->total);
    case GALE_SCHEDULE_WSD: {
        long decay_begin = s->total - s->decay;
        if (step < decay_begin)
            return s->lr;
        return s->lr - span * progress(step, decay_begin, s->total);
    }
    case GALE_SCHEDULE_CONSTANT:
        break;
    }
    return s->lr;
}
