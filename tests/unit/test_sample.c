/* test_sample: sample_pick against the distribution worked out by hand: greedy is the
 * argmax, the nucleus keeps the fewest most probable tokens reaching top_p, and the draw
 * is the inverse CDF of the renormalised probabilities at the temperature. */
#include <math.h>
#include <stdio.h>

#include "check.h"
#include "train/sample.h"

static void expect_pick(const float *logits, int vocab, double temp, double top_p, double u, int want)
{
    int got = sample_pick(logits, vocab, temp, top_p, u);
    CHECK_MSG(got == want, "temperature %g top_p %g u %g: picked %d, want %d", temp, top_p, u, got, want);
}

int main(void)
{
    /* probabilities at temperature 1: token 2 → 4/8, token 0 → 2/8, tokens 1 and 3 → 1/8 */
    float logits[4] = {logf(2), 0, logf(4), 0};
    expect_pick(logits, 4, 0, 1, 0.99, 2); /* greedy */
    /* order: 2 (0.5), 0 (0.25), 1 (0.125), 3 (0.125); CDF 0.5, 0.75, 0.875, 1 */
    expect_pick(logits, 4, 1, 1, 0.0, 2);
    expect_pick(logits, 4, 1, 1, 0.49, 2);
    expect_pick(logits, 4, 1, 1, 0.51, 0);
    expect_pick(logits, 4, 1, 1, 0.74, 0);
    expect_pick(logits, 4, 1, 1, 0.80, 1);
    expect_pick(logits, 4, 1, 1, 0.90, 3);
    /* top_p 0.7: the nucleus is {2, 0} (mass 0.75), renormalised to 2/3, 1/3 */
    expect_pick(logits, 4, 1, 0.7, 0.65, 2);
    expect_pick(logits, 4, 1, 0.7, 0.68, 0);
    expect_pick(logits, 4, 1, 0.7, 0.999, 0);
    /* top_p 0.5 holds token 2 alone */
    expect_pick(logits, 4, 1, 0.5, 0.999, 2);
    /* temperature 0.5 squares the odds: 16, 4, 1, 1 over 22 */
    expect_pick(logits, 4, 0.5, 1, 16.0 / 22 - 1e-6, 2);
    expect_pick(logits, 4, 0.5, 1, 16.0 / 22 + 1e-6, 0);
    expect_pick(logits, 4, 0.5, 1, 20.0 / 22 + 1e-6, 1);
    /* ties go to the lower id */
    float flat[3] = {1, 1, 1};
    expect_pick(flat, 3, 0, 1, 0.5, 0);
    expect_pick(flat, 3, 1, 1, 0.5, 1);
    return check_report("test_sample");
}
