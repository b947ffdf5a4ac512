/* shard_fixture: what the shard, manifest and loader tests share: a scratch folder, rows with
 * known contents, and writing them as a shard. Every row's tokens encode (seed, row, column)
 * so a test can tell exactly which row it was served. Header-only: each test is one program. */
#ifndef GALE_TESTS_SHARD_FIXTURE_H
#define GALE_TESTS_SHARD_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "data/shard.h"
#include "util/file.h"

static const char fixture_sha[65] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/* A fresh scratch folder under $TMPDIR (or /tmp); the caller removes it. */
static char *fixture_tmpdir(const char *name)
{
    const char *base = getenv("TMPDIR");
    char *dir = NULL;
    if (asprintf(&dir, "%s/gale-%s-XXXXXX", base && base[0] ? base : "/tmp", name) < 0 || !mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    return dir;
}

static gale_shard_meta fixture_meta(int seq_len, int vocab_size, gale_shard_kind kind)
{
    gale_shard_meta m;
    memset(&m, 0, sizeof m);
    m.seq_len = seq_len;
    m.vocab_size = vocab_size;
    memcpy(m.tokenizer_sha256, fixture_sha, sizeof fixture_sha);
    m.bos_id = 1;
    m.eos_id = 2;
    m.kind = kind;
    m.packing = kind == GALE_SHARD_SFT ? GALE_SHARD_BEST_FIT : GALE_SHARD_CONCAT;
    return m;
}

/* The token at (row, column) of a fixture with this tag: column 0 holds the row (modulo the
 * vocabulary) and column 1 the tag, so a served row identifies itself. */
static int32_t fixture_token(int tag, int64_t row, int col, int vocab_size)
{
    if (col == 0)
        return (int32_t)(row % vocab_size);
    if (col == 1)
        return tag % vocab_size;
    return (int32_t)(((uint64_t)(tag + 1) * 2654435761u * (uint64_t)(row + 1) + (uint64_t)col * 40503u) % vocab_size);
}

/* Fills row `row` of a fixture: documents of varying length joined, the last one cut, and
 * (every third row) padding at the end. loss_mask (may be NULL) marks every other document. */
static void fixture_row(int tag, int64_t row, int row_len, int vocab_size, int32_t *tokens, uint16_t *segments,
                        uint8_t *loss_mask)
{
    int pad_from = row % 3 == 2 ? row_len - 1 - (int)(row % 7) : row_len;
    uint16_t seg = 0;
    int doc_len = 3 + (int)(row % 5);
    for (int j = 0, in_doc = 0; j < row_len; j++, in_doc++) {
        if (in_doc == doc_len) {
            seg++;
            in_doc = 0;
            doc_len = 2 + (int)((row + seg) % 6);
        }
        int pad = j >= pad_from;
        tokens[j] = fixture_token(tag, row, j, vocab_size);
        segments[j] = pad ? GALE_SEGMENT_PAD : seg;
        if (loss_mask)
            loss_mask[j] = !pad && seg % 2 == 1;
    }
}

/* Writes rows [0, n_rows) of fixture `tag` to path, appending in uneven batches. */
static int fixture_write_shard(const char *path, const gale_shard_meta *meta, int tag, int64_t n_rows,
                               gale_error *err)
{
    gale_shard_writer *w = shard_writer_create(path, meta, 0, err);
    if (!w)
        return -1;
    int S = meta->seq_len + 1, sft = meta->kind == GALE_SHARD_SFT;
    size_t batch_max = 37;
    int32_t *t = malloc(batch_max * S * sizeof *t);
    uint16_t *s = malloc(batch_max * S * sizeof *s);
    uint8_t *m = malloc(batch_max * S);
    int rc = 0;
    for (int64_t row = 0; rc == 0 && row < n_rows;) {
        size_t n = 1 + (size_t)(row % batch_max);
        if ((int64_t)n > n_rows - row)
            n = (size_t)(n_rows - row);
        for (size_t i = 0; i < n; i++)
            fixture_row(tag, row + (int64_t)i, S, meta->vocab_size, t + i * S, s + i * S, m + i * S);
        rc = shard_writer_append(w, t, s, sft ? m : NULL, n, err);
        row += (int64_t)n;
    }
    free(t);
    free(s);
    free(m);
    if (rc != 0) {
        shard_writer_abort(w);
        return -1;
    }
    return shard_writer_finish(w, n_rows * 2, err);
}

static void fixture_remove_tree(const char *dir)
{
    gale_error err;
    if (gale_remove_tree(dir, &err) != 0)
        fprintf(stderr, "warning: %s\n", err.msg);
}

#endif
