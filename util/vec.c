/* vec: growable arrays; capacity doubles so appends are amortised O(1). */
#include "util/vec.h"

#include <stdlib.h>
#include <string.h>

#include "util/error.h"

static void *grow(void *v, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return v;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    *cap = c;
    return gale_xrealloc(v, c * elem);
}

void gale_ids_push(gale_ids *a, int32_t x)
{
    a->v = grow(a->v, &a->cap, a->n + 1, sizeof *a->v);
    a->v[a->n++] = x;
}

void gale_ids_append(gale_ids *a, const int32_t *x, size_t n)
{
    a->v = grow(a->v, &a->cap, a->n + n, sizeof *a->v);
    if (n)
        memcpy(a->v + a->n, x, n * sizeof *x);
    a->n += n;
}

void gale_ids_free(gale_ids *a)
{
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

void gale_bytes_push(gale_bytes *a, uint8_t x)
{
    a->v = grow(a->v, &a->cap, a->n + 1, 1);
    a->v[a->n++] = x;
}

void gale_bytes_append(gale_bytes *a, const void *x, size_t n)
{
    a->v = grow(a->v, &a->cap, a->n + n, 1);
    if (n)
        memcpy(a->v + a->n, x, n);
    a->n += n;
}

void gale_bytes_fill(gale_bytes *a, uint8_t x, size_t n)
{
    a->v = grow(a->v, &a->cap, a->n + n, 1);
    memset(a->v + a->n, x, n);
    a->n += n;
}

void gale_bytes_reserve(gale_bytes *a, size_t n)
{
    a->v = grow(a->v, &a->cap, a->n + n, 1);
}

void gale_bytes_free(gale_bytes *a)
{
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}
