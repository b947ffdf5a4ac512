/* rng: splitmix64's finaliser applied to (seed, counter). */
#include "model/rng.h"

#include <math.h>

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t gale_rng_bits(uint64_t seed, uint64_t counter)
{
    return mix(mix(seed + 0x9e3779b97f4a7c15ULL) ^ (counter * 0x9e3779b97f4a7c15ULL + 1));
}

double gale_rng_uniform(uint64_t seed, uint64_t counter)
{
    /* 53 bits, shifted by half a step so neither 0 nor 1 comes out */
    return ((double)(gale_rng_bits(seed, counter) >> 11) + 0.5) * 0x1.0p-53;
}

double gale_rng_normal(uint64_t seed, uint64_t counter)
{
    double u1 = gale_rng_uniform(seed, 2 * counter), u2 = gale_rng_uniform(seed, 2 * counter + 1);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

uint64_t gale_rng_stream(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    return mix(seed ^ h);
}
