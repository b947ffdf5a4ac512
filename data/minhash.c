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

/* Sorts v[0..n) with three 11-bit counting passes through tmp (n values): a shingle set
 * is sorted once per document, and this is several times faster than qsort. */
static void radix_sort_u32(uint32_t *v, uint32_t *tmp, size_t n)
{
    for (int shift = 0; shift < 32; shift += 11) {
        size_t count[2049] = {0};
        for (size_t i = 0; i < n; i++)
            count[((v[i] >> shift) & 0x7FF) + 1]++;
        for (size_t k = 1; k <= 2048; k++)
            count[k] += count[k - 1];
        for (size_t i = 0; i < n; i++)
            tmp[count[(v[i] >> shift) & 0x7FF]++] = v[i];
        uint32_t *swap = v;
        v = tmp;
        tmp = swap;
    }
    /* three passes: the sorted values are in the caller's tmp */
}

static int cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return (a > b) - (a < b);
}

/* Short sets sort faster by comparison than by passes over 2048 counters. */
static void sort_u32(uint32_t *v, size_t n)
{
    if (n < 256) {
        qsort(v, n, sizeof *v, cmp_u32);
        return;
    }
    uint32_t *tmp = gale_xmalloc(n * sizeof *tmp);
    radix_sort_u32(v, tmp, n);
    memcpy(v, tmp, n * sizeof *v);
    free(tmp);
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
    sort_u32(out->v, out->n);
    size_t n = 0;
    for (size_t j = 0; j < out->n; j++)
        if (n == 0 || out->v[j] != out->v[n - 1])
            out->v[n++] = out->v[j];
    out->n = n < m->p.max_shingles ? n : m->p.max_shingles;
}

void minhash_signature(const minhasher *m, const uint32_t *shingles, size_t n, uint32_t *sig)
{
    /* four permutations at a time: their minima stay in registers, each shingle is loaded
     * once for the four, and the four chains run in parallel in the core */
    int np = m->p.bands * m->p.rows, i = 0;
    for (; i + 4 <= np; i += 4) {
        const uint64_t *a = m->a + i, *b = m->b + i;
        uint32_t lo0 = UINT32_MAX, lo1 = UINT32_MAX, lo2 = UINT32_MAX, lo3 = UINT32_MAX;
        for (size_t j = 0; j < n; j++) {
            uint64_t x = shingles[j];
            uint32_t h0 = (uint32_t)((a[0] * x + b[0]) >> 32), h1 = (uint32_t)((a[1] * x + b[1]) >> 32);
            uint32_t h2 = (uint32_t)((a[2] * x + b[2]) >> 32), h3 = (uint32_t)((a[3] * x + b[3]) >> 32);
            lo0 = h0 < lo0 ? h0 : lo0;
            lo1 = h1 < lo1 ? h1 : lo1;
            lo2 = h2 < lo2 ? h2 : lo2;
            lo3 = h3 < lo3 ? h3 : lo3;
        }
        sig[i] = lo0, sig[i + 1] = lo1, sig[i + 2] = lo2, sig[i + 3] = lo3;
    }
    for (; i < np; i++) {
        uint32_t lo = UINT32_MAX;
        for (size_t j = 0; j < n; j++) {
            uint32_t h = (uint32_t)((m->a[i] * shingles[j] + m->b[i]) >> 32);
            lo = h < lo ? h : lo;
        }
        sig[i] = lo;
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
