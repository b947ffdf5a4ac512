/* vec: growable arrays of token ids and of bytes, the currency between the tokenizer,
 * the chat templates and the packer. */
#ifndef GALE_UTIL_VEC_H
#define GALE_UTIL_VEC_H

#include <stddef.h>
#include <stdint.h>

typedef struct gale_ids {
    int32_t *v;
    size_t n, cap;
} gale_ids;

typedef struct gale_bytes {
    uint8_t *v;
    size_t n, cap;
} gale_bytes;

void gale_ids_push(gale_ids *a, int32_t x);
void gale_ids_append(gale_ids *a, const int32_t *x, size_t n);
void gale_ids_free(gale_ids *a);

void gale_bytes_push(gale_bytes *a, uint8_t x);
void gale_bytes_append(gale_bytes *a, const void *x, size_t n);
/* Appends n copies of x. */
void gale_bytes_fill(gale_bytes *a, uint8_t x, size_t n);
/* Makes room for n more bytes after the a->n in use (to write at a->v + a->n directly). */
void gale_bytes_reserve(gale_bytes *a, size_t n);
void gale_bytes_free(gale_bytes *a);

#endif
