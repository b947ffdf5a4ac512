/* minhash: shingle sets, MinHash signatures, LSH band keys and Jaccard similarity. */
#include "data/minhash.h"

#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "util/error.h"

struct minhasher {
    minhash_params p;
    uint64_t a[MINHASH_MAX_PERMUTATIONS], b[MINHASH_MAX_PERMUTATIONS];
};

minhash_params minhash_default_params(void)
{
    return (minhash_params){.bands = 14, .rows = 8, .ngram = 5, .max_shingles = 16384, .seed = 1};
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

minhasher *minhasher_create(const minhash_params *p)
{
    minhasher *m = gale_xcalloc(1, sizeof *m);
    m->p = *p;
    uint64_t state = p->seed;
    for (int i = 0; i < p->bands * p->rows; i++) {
        m->a[i] = splitmix64(&state) | 1;
        m->b[i] = splitmix64(&state);
    }
    return m;
}

void minhasher_free(minhasher *m)
{
    free(m);
}

const minhash_params *minhasher_params(const minhasher *m)
{
    return &m->p;
}

void shingle_set_free(shingle_set *s)
{
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static void shingle_push(shingle_set *s, uint32_t h)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->v = gale_xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = h;
}

static int cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return (a > b) - (a < b);
}

void minhash_shingles(const minhasher *m, const char *norm, size_t len, shingle_set *out)
{
    out->n = 0;
    if (len == 0)
        return;
    int k = m->p.ngram;
    /* starts[i % (k+1)]: where the i-th word starts; a window of k words ends before the
     * space that follows its last word */
    size_t starts[64];
    size_t words = 0, i = 0;
    uint64_t seed = m->p.seed;
    while (i <= len) {
        size_t start = i;
        while (i < len && norm[i] != ' ')
            i++;
        starts[words % 64] = start;
        words++;
        if (words >= (size_t)k) {
            size_t first = starts[(words - (size_t)k) % 64];
            shingle_push(out, (uint32_t)XXH3_64bits_withSeed(norm + first, i - first, seed));
        }
        i++; /* past the space (or the end) */
    }
    if (words < (size_t)k)
        shingle_push(out, (uint32_t)XXH3_64bits_withSeed(norm, len, seed));
    qsort(out->v, out->n, sizeof *out->v, cmp_u32);
    size_t n = 0;
    for (size_t j = 0; j < out->n; j++)
        if (n == 0 || out->v[j] != out->v[n - 1])
            out->v[n++] = out->v[j];
    out->n = n < m->p.max_shingles ? n : m->p.max_shingles;
}

void minhash_signature(const minhasher *m, const uint32_t *shingles, size_t n, uint32_t *sig)
{
    int np = m->p.bands * m->p.rows;
    for (int i = 0; i < np; i++)
        sig[i] = UINT32_MAX;
    for (size_t j = 0; j < n; j++) {
        uint64_t x = shingles[j];
        for (int i = 0; i < np; i++) {
            uint32_t h = (uint32_t)((m->a[i] * x + m->b[i]) >> 32);
            sig[i] = h < sig[i] ? h : sig[i];
        }
    }
}

void minhash_band_keys(const minhasher *m, const uint32_t *sig, uint64_t *keys)
{
    for (int b = 0; b < m->p.bands; b++)
        keys[b] = XXH3_64bits_withSeed(sig + (size_t)b * m->p.rows, (size_t)m->p.rows * sizeof *sig,
                                       m->p.seed ^ ((uint64_t)b << 32));
}

double shingle_jaccard(const uint32_t *a, size_t na, const uint32_t *b, size_t nb, size_t cap)
{
    if (na == 0 || nb == 0)
        return 0.0;
    int sketched = na >= cap || nb >= cap;
    size_t k = na < nb ? na : nb; /* union elements considered when sketched */
    size_t i = 0, j = 0, both = 0, seen = 0;
    while ((i < na || j < nb) && (!sketched || seen < k)) {
        if (j == nb || (i < na && a[i] < b[j])) {
            i++;
        } else if (i == na || b[j] < a[i]) {
            j++;
        } else {
            both++;
            i++;
            j++;
        }
        seen++;
    }
    return (double)both / (double)seen;
}
