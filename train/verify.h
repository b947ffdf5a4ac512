/* verify: checks a backend against a reference fixture folder in the format of
 * docs/math.md (config.json, model.safetensors, expected.safetensors,
 * expected.json): logits, the losses, every gradient, the router's choices and three AdamW
 * steps, each printed as a relative error against its tolerance. Nothing in it is specific
 * to one fixture: any folder in that format is a test. */
#ifndef GALE_TRAIN_VERIFY_H
#define GALE_TRAIN_VERIFY_H

#include <stdio.h>

#include "model/ops.h"
#include "util/error.h"

/* The contract's tolerances (relative: |x - ref| / |ref| per tensor). */
#define VERIFY_TOL_LOGITS 1e-5
#define VERIFY_TOL_LOSS 1e-5
#define VERIFY_TOL_GRAD 1e-4
#define VERIFY_TOL_WEIGHT 1e-4

/* The tolerances of a run: the contract's in fp32, derived from bf16's precision and the
 * model's depth in bf16 (verify_tolerances_for says how). */
struct verify_tolerances {
    double logits, loss, grad, weight;
    double weight_update;  /* > 0: the weights after AdamW may also part by this much
                              absolute RMS (the updates' bound), relative to each tensor */
};

struct verify_tolerances verify_tolerances_for(enum gale_dtype compute, int layers, int steps,
                                               double lr);

struct verify_result {
    int checks;     /* rows of the table */
    int failed;     /* rows past their tolerance */
};

/* Runs every check of the fixture in dir on backend be (in its compute dtype), printing a
 * table to out (NULL: silent). Returns -1 when the fixture cannot be read (err says why),
 * else 0 with the counts in res. */
int verify_fixture(const char *dir, struct gale_backend *be, FILE *out,
                   struct verify_result *res, gale_error *err);

#endif
