/* rng: a counter-based random generator: the n-th number of a stream is a pure function of
 * (seed, n), so an init is deterministic whatever the threading, and one tensor's values do not
 * depend on the others. */
#ifndef GALE_MODEL_RNG_H
#define GALE_MODEL_RNG_H

#include <stdint.h>

/* 64 random bits: element counter of stream seed. */
uint64_t gale_rng_bits(uint64_t seed, uint64_t counter);

/* Uniform in (0, 1). */
double gale_rng_uniform(uint64_t seed, uint64_t counter);

/* Standard normal (Box-Muller over counters 2n and 2n+1). */
double gale_rng_normal(uint64_t seed, uint64_t counter);

/* A stream seed derived from a seed and a name (e.g. a tensor's), FNV-1a mixed. */
uint64_t gale_rng_stream(uint64_t seed, const char *name);

#endif
