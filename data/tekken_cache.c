/* tekken_cache: the parsed vocabulary of a Tekken file on disk (see tekken_cache.h). */
#include "data/tekken_cache.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "util/file.h"

#define CACHE_MAGIC "GALETKN1"
#define CACHE_MIN_BYTES ((size_t)1 << 20)

/* The file: this header, then the pieces' lengths (uint32), types (uint8) and scores (float),
 * the pattern, and the arena of the pieces' bytes (each NUL-terminated), in that order. */
typedef struct cache_header {
    char magic[8];
    uint64_t key[2];   /* XXH3-128 of the JSON's bytes */
    uint64_t checksum; /* XXH3-64 of the rest of the header and all that follows it */
    uint64_t n_pieces, n_special, pattern_len, piece_bytes;
    int64_t version;
    char sha256[64];
} cache_header;

/* The cache file of the JSON data[0..len), or NULL when there is no cache folder or the JSON
 * is small enough to parse in a few milliseconds (a test's or a fuzzer's file). */
static char *cache_path(const void *data, size_t len, uint64_t key[2])
{
    if (len < CACHE_MIN_BYTES)
        return NULL;
    XXH128_hash_t h = XXH3_128bits(data, len);
    key[0] = h.low64;
    key[1] = h.high64;
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char dir[4096];
    if (xdg && xdg[0])
        snprintf(dir, sizeof dir, "%s/gale", xdg);
    else if (home && home[0])
        snprintf(dir, sizeof dir, "%s/.cache/gale", home);
    else
        return NULL;
    char name[64];
    snprintf(name, sizeof name, "tekken-%016llx%016llx.bin", (unsigned long long)key[1], (unsigned long long)key[0]);
    return gale_path_join(dir, name);
}

static size_t body_bytes(const cache_header *h)
{
    return h->n_pieces * (sizeof(uint32_t) + sizeof(uint8_t) + sizeof(float)) + h->pattern_len + h->piece_bytes;
}

static uint64_t checksum(const cache_header *h, const uint8_t *body)
{
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, &h->n_pieces, sizeof *h - offsetof(cache_header, n_pieces));
    XXH3_64bits_update(st, body, body_bytes(h));
    uint64_t sum = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return sum;
}

/* f from a cache file's bytes, checked whole; 0 when they are not one for key. */
static int cache_decode(const uint8_t *file, size_t len, const uint64_t key[2], tekken_file *f, char sha256[65])
{
    cache_header h;
    if (len < sizeof h)
        return 0;
    memcpy(&h, file, sizeof h);
    const uint8_t *body = file + sizeof h;
    if (memcmp(h.magic, CACHE_MAGIC, 8) || h.key[0] != key[0] || h.key[1] != key[1] || !h.n_pieces ||
        h.n_special >= h.n_pieces || h.n_pieces > INT32_MAX || h.piece_bytes > len || h.pattern_len > len ||
        len - sizeof h != body_bytes(&h) || checksum(&h, body) != h.checksum)
        return 0;
    const uint8_t *lens = body, *types = lens + h.n_pieces * sizeof(uint32_t);
    const uint8_t *scores = types + h.n_pieces, *pattern = scores + h.n_pieces * sizeof(float);
    const uint8_t *arena = pattern + h.pattern_len;
    memset(f, 0, sizeof *f);
    spm_model *m = &f->vocab;
    m->n_pieces = h.n_pieces;
    m->pieces = gale_xmalloc(h.n_pieces * sizeof *m->pieces);
    m->piece_bytes = gale_xmalloc(h.piece_bytes);
    memcpy(m->piece_bytes, arena, h.piece_bytes);
    size_t at = 0;
    for (size_t i = 0; i < h.n_pieces; i++) {
        uint32_t n;
        float score;
        memcpy(&n, lens + i * sizeof n, sizeof n);
        memcpy(&score, scores + i * sizeof score, sizeof score);
        if (n > h.piece_bytes - at || at + n >= h.piece_bytes) {
            spm_model_free(m);
            return 0;
        }
        m->pieces[i] = (spm_piece){m->piece_bytes + at, n, score, types[i]};
        at += n + 1;
    }
    m->piece_bytes_used = at;
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

int tekken_cache_load(const void *data, size_t len, tekken_file *f, char sha256[65])
{
    uint64_t key[2];
    char *path = cache_path(data, len, key);
    if (!path)
        return 0;
    size_t file_len;
    gale_error err;
    uint8_t *file = (uint8_t *)gale_read_file(path, &file_len, &err);
    free(path);
    int ok = file && cache_decode(file, file_len, key, f, sha256);
    free(file);
    return ok;
}

void tekken_cache_store(const void *data, size_t len, const tekken_file *f, const char *sha256)
{
    cache_header h = {.magic = CACHE_MAGIC};
    char *path = cache_path(data, len, h.key);
    if (!path)
        return;
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
    h.checksum = checksum(&h, body);
    memcpy(file, &h, sizeof h);
    char *dir = gale_xstrdup(path);
    *strrchr(dir, '/') = 0;
    gale_error err;
    if (gale_mkdir_p(dir, &err) == 0)
        gale_write_file_atomic(path, file, total, &err); /* a cache that cannot be written: none */
    free(dir);
    free(file);
    free(path);
}
