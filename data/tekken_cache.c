/* tekken_cache: the parsed vocabulary of a Tekken file on disk (see tekken_cache.h). */
#include "data/tekken_cache.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/file_cache.h"

#define CACHE_KIND "tekken"
#define CACHE_VERSION 2 /* of the layout below */

/* The cache body: this header, then the pieces' lengths (uint32), types (uint8) and scores
 * (float), the pattern, and the arena of the pieces' bytes (each NUL-terminated), in that
 * order. */
typedef struct cache_header {
    uint64_t n_pieces, n_special, pattern_len, piece_bytes;
    int64_t version;
    char sha256[64];
} cache_header;

static size_t body_bytes(const cache_header *h)
{
    return h->n_pieces * (sizeof(uint32_t) + sizeof(uint8_t) + sizeof(float)) + h->pattern_len + h->piece_bytes;
}

/* m's pieces from the cache body's arrays; 0 when they do not fit its arena. */
static int decode_pieces(const cache_header *h, const uint8_t *lens, const uint8_t *types, const uint8_t *scores,
                         const uint8_t *arena, spm_model *m)
{
    m->pieces = gale_xmalloc(h->n_pieces * sizeof *m->pieces);
    m->piece_bytes = gale_xmalloc(h->piece_bytes);
    memcpy(m->piece_bytes, arena, h->piece_bytes);
    size_t at = 0;
    for (size_t i = 0; i < h->n_pieces; i++) {
        uint32_t n;
        float score;
        memcpy(&n, lens + i * sizeof n, sizeof n);
        memcpy(&score, scores + i * sizeof score, sizeof score);
        if (n > h->piece_bytes - at || at + n >= h->piece_bytes)
            return 0;
        m->pieces[i] = (spm_piece){m->piece_bytes + at, n, score, types[i]};
        at += n + 1;
    }
    m->piece_bytes_used = at;
    return 1;
}

/* f from a cache body (its checksum already checked), the pieces only with_pieces; 0 when it
 * is not one. */
static int cache_decode(const uint8_t *file, size_t len, tekken_file *f, char sha256[65], int with_pieces)
{
    cache_header h;
    if (len < sizeof h)
        return 0;
    memcpy(&h, file, sizeof h);
    const uint8_t *body = file + sizeof h;
    if (!h.n_pieces || h.n_special >= h.n_pieces || h.n_pieces > INT32_MAX || h.piece_bytes > len ||
        h.pattern_len > len || len - sizeof h != body_bytes(&h))
        return 0;
    const uint8_t *lens = body, *types = lens + h.n_pieces * sizeof(uint32_t);
    const uint8_t *scores = types + h.n_pieces, *pattern = scores + h.n_pieces * sizeof(float);
    const uint8_t *arena = pattern + h.pattern_len;
    memset(f, 0, sizeof *f);
    spm_model *m = &f->vocab;
    m->n_pieces = h.n_pieces;
    if (with_pieces && !decode_pieces(&h, lens, types, scores, arena, m)) {
        spm_model_free(m);
        return 0;
    }
    tekken_model_settings(m);
    f->n_special = h.n_special;
    f->version = (int)h.version;
    f->pattern = gale_xmalloc(h.pattern_len + 1);
    memcpy(f->pattern, pattern, h.pattern_len);
    f->pattern[h.pattern_len] = 0;
    memcpy(sha256, h.sha256, 64);
    sha256[64] = 0;
    return 1;
}

int tekken_cache_load(const file_cache_key *key, tekken_file *f, char sha256[65], int with_pieces)
{
    size_t file_len;
    const uint8_t *file = file_cache_load(CACHE_KIND, CACHE_VERSION, key, &file_len);
    int ok = file && cache_decode(file, file_len, f, sha256, with_pieces);
    file_cache_free(file, file_len);
    return ok;
}

void tekken_cache_store(const file_cache_key *key, const tekken_file *f, const char *sha256)
{
    if (!key->cached)
        return;
    cache_header h = {0};
    const spm_model *m = &f->vocab;
    h.n_pieces = m->n_pieces;
    h.n_special = f->n_special;
    h.pattern_len = strlen(f->pattern);
    h.piece_bytes = m->piece_bytes_used;
    h.version = f->version;
    memcpy(h.sha256, sha256, 64);
    size_t total = sizeof h + body_bytes(&h);
    uint8_t *file = gale_xmalloc(total), *body = file + sizeof h;
    uint8_t *lens = body, *types = lens + h.n_pieces * sizeof(uint32_t);
    uint8_t *scores = types + h.n_pieces, *pattern = scores + h.n_pieces * sizeof(float);
    for (size_t i = 0; i < m->n_pieces; i++) {
        uint32_t n = (uint32_t)m->pieces[i].len;
        memcpy(lens + i * sizeof n, &n, sizeof n);
        types[i] = (uint8_t)m->pieces[i].type;
        memcpy(scores + i * sizeof(float), &m->pieces[i].score, sizeof(float));
    }
    memcpy(pattern, f->pattern, h.pattern_len);
    memcpy(pattern + h.pattern_len, m->piece_bytes, h.piece_bytes);
    memcpy(file, &h, sizeof h);
    file_cache_store(CACHE_KIND, CACHE_VERSION, key, file, total);
    free(file);
}
