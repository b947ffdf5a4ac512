/* test_schedule: every LR schedule against values worked out by hand from its formula. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "optim/schedule.h"

static void expect_lr(const gale_schedule *s, long step, double want)
{
    double got = schedule_lr(s, step);
    CHECK_MSG(fabs(got - want) <= 1e-15 * fmax(1.0, fabs(want)), "%s step %ld: lr %.17g, want %.17g",
              schedule_kind_name(s->kind), step, got, want);
}

int main(void)
{
    gale_error err;
    gale_schedule constant = {GALE_SCHEDULE_CONSTANT, 1e-3, 0, 4, 100, 0};
    expect_lr(&constant, 0, 0.25e-3);
    expect_lr(&constant, 3, 1e-3);
    expect_lr(&constant, 4, 1e-3);
    expect_lr(&constant, 1000, 1e-3);

    /* cosine: warmup 10, total 110, lr 1e-3 → 1e-4: halfway through the decay (step 60)
     * the rate is the midpoint; a quarter in, min + span·(1+cos(π/4))/2. */
    gale_schedule cosine = {GALE_SCHEDULE_COSINE, 1e-3, 1e-4, 10, 110, 0};
    expect_lr(&cosine, 0, 1e-4);
    expect_lr(&cosine, 4, 5e-4);
    expect_lr(&cosine, 9, 1e-3);
    expect_lr(&cosine, 10, 1e-3);
    expect_lr(&cosine, 60, 5.5e-4);
    expect_lr(&cosine, 35, 1e-4 + 0.5 * 9e-4 * (1 + cos(M_PI / 4)));
    expect_lr(&cosine, 109, 1e-4 + 0.5 * 9e-4 * (1 + cos(M_PI * 99 / 100)));
    expect_lr(&cosine, 110, 1e-4);
    expect_lr(&cosine, 500, 1e-4);

    gale_schedule linear = {GALE_SCHEDULE_LINEAR, 2e-3, 0, 0, 100, 0};
    expect_lr(&linear, 0, 2e-3);
    expect_lr(&linear, 25, 1.5e-3);
    expect_lr(&linear, 50, 1e-3);
    expect_lr(&linear, 99, 2e-5);
    expect_lr(&linear, 100, 0);

    /* WSD: warmup 10, stable until step 80, linear decay over the last 20 steps. */
    gale_schedule wsd = {GALE_SCHEDULE_WSD, 1e-3, 1e-5, 10, 100, 20};
    expect_lr(&wsd, 0, 1e-4);
    expect_lr(&wsd, 10, 1e-3);
    expect_lr(&wsd, 79, 1e-3);
    expect_lr(&wsd, 80, 1e-3);
    expect_lr(&wsd, 90, 1e-3 - 0.5 * (1e-3 - 1e-5));
    expect_lr(&wsd, 99, 1e-3 - 0.95 * (1e-3 - 1e-5));
    expect_lr(&wsd, 100, 1e-5);

    /* a run with no steps after the warmup must not divide by zero */
    gale_schedule all_warmup = {GALE_SCHEDULE_COSINE, 1e-3, 0, 5, 5, 0};
    expect_lr(&all_warmup, 4, 1e-3);
    expect_lr(&all_warmup, 5, 0);

    gale_schedule_kind kind;
    CHECK_MSG(!schedule_kind_parse("wsd", &kind) && kind == GALE_SCHEDULE_WSD &&
                  schedule_kind_parse("step", &kind) == -1,
              "schedule_kind_parse");
    gale_schedule bad_warmup = {GALE_SCHEDULE_COSINE, 1e-3, 0, 200, 100, 0};
    gale_schedule bad_floor = {GALE_SCHEDULE_COSINE, 1e-3, 2e-3, 0, 100, 0};
    gale_schedule bad_decay = {GALE_SCHEDULE_WSD, 1e-3, 0, 10, 100, 95};
    CHECK_MSG(!schedule_validate(&cosine, &err) && !schedule_validate(&wsd, &err),
              "valid schedule refused: %s", err.msg);
    if (schedule_validate(&bad_warmup, &err) != -1 || !strstr(err.msg, "optim.warmup") ||
        schedule_validate(&bad_floor, &err) != -1 || !strstr(err.msg, "optim.min_lr") ||
        schedule_validate(&bad_decay, &err) != -1 || !strstr(err.msg, "optim.decay")) {
        FAIL("invalid schedule accepted or message without the key");
    }
    return check_report("test_schedule");
}
