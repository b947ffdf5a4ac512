/* test_prepare_pack: concat packing (exact rows, segment numbering, per-row document counts,
 * padding of the last row only) and best-fit-decreasing packing (every document whole in one
 * row with its loss mask, no row overfull, truncation and dropping counted, row count within
 * the 11/9 OPT + 1 bound of best-fit decreasing). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "data/pack.h"

static void test_concat(void)
{
    pack_options opt = {.packing = GALE_SHARD_CONCAT, .seq_len = 7, .pad_id = 2};
    packer *p = packer_create(&opt);
    const size_t lengths[] = {3, 5, 10, 2};
    int32_t next = 100;
    for (size_t d = 0; d < 4; d++) {
        int32_t ids[16];
        for (size_t i = 0; i < lengths[d]; i++)
            ids[i] = next++;
        packer_add(p, ids, NULL, lengths[d]);
    }
    packer_finish(p);
    packed_rows *r = packer_rows(p);
    CHECK(r->n_rows == 3 && r->loss_mask == NULL);
    const uint16_t P = GALE_SEGMENT_PAD;
    const uint16_t want_seg[3][8] = {{0, 0, 0, 1, 1, 1, 1, 1}, {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 1, 1, P, P, P, P}};
    const uint32_t want_docs[3] = {2, 1, 1};
    for (size_t row = 0; row < 3 && r->n_rows == 3; row++) {
        CHECK(!memcmp(r->segments + row * 8, want_seg[row], sizeof want_seg[row]));
        CHECK(r->docs[row] == want_docs[row]);
    }
    for (size_t j = 0; j < 20; j++)
        CHECK(r->tokens[j] == (int32_t)(100 + j));
    for (size_t j = 20; j < 24; j++)
        CHECK(r->tokens[j] == 2);
    const pack_stats *st = packer_stats(p);
    CHECK(st->docs == 4 && st->real_tokens == 20 && st->padding_tokens == 4 && st->rows == 3);
    packer_clear_rows(p);
    CHECK(packer_rows(p)->n_rows == 0);
    packer_free(p);
}

static uint64_t rng_state = 7;
static uint64_t rng(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Documents are ids (doc << 12) | position, so each row can be checked against its source. */
static void test_best_fit(int drop)
{
    const int seq_len = 63;
    const size_t S = 64, n_docs = 3000;
    pack_options opt = {.packing = GALE_SHARD_BEST_FIT, .seq_len = seq_len, .with_loss_mask = 1,
                        .drop_overlong = drop, .window = 500, .pad_id = 0};
    packer *p = packer_create(&opt);
    size_t *len = malloc(n_docs * sizeof *len);
    size_t placed_tokens = 0, overlong = 0, row_total = 0;
    int *seen = calloc(n_docs, sizeof *seen);
    for (size_t d = 0; d < n_docs; d++) {
        len[d] = 1 + rng() % (S + 8); /* some longer than a row */
        int32_t ids[128];
        uint8_t mask[128];
        for (size_t i = 0; i < len[d]; i++) {
            ids[i] = (int32_t)((d << 12) | i);
            mask[i] = (uint8_t)((d + i) & 1);
        }
        packer_add(p, ids, mask, len[d]);
        if (len[d] > S)
            overlong++;
        placed_tokens += len[d] > S ? (drop ? 0 : S) : len[d];
        /* check the rows finished so far, then drop them as the pipeline does */
        packed_rows *r = packer_rows(p);
        if (d + 1 == n_docs)
            packer_finish(p);
        for (size_t row = 0; row < r->n_rows; row++) {
            const int32_t *t = r->tokens + row * S;
            const uint16_t *seg = r->segments + row * S;
            const uint8_t *m = r->loss_mask + row * S;
            size_t j = 0;
            uint16_t expect_seg = 0;
            while (j < S && seg[j] != GALE_SEGMENT_PAD) {
                size_t doc = (size_t)t[j] >> 12, k = 0;
                CHECK(seg[j] == expect_seg);
                while (j < S && seg[j] == expect_seg) {
                    CHECK((size_t)t[j] == ((doc << 12) | k) && m[j] == ((doc + k) & 1));
                    j++, k++;
                }
                CHECK(k == (len[doc] > S ? S : len[doc])); /* whole, or truncated to a row */
                seen[doc]++;
                expect_seg++;
            }
            CHECK(r->docs[row] == expect_seg);
            for (; j < S; j++)
                CHECK(seg[j] == GALE_SEGMENT_PAD && m[j] == 0);
        }
        row_total += r->n_rows;
        packer_clear_rows(p);
    }
    const pack_stats *st = packer_stats(p);
    size_t placed_docs = 0;
    for (size_t d = 0; d < n_docs; d++) {
        int want = drop && len[d] > S ? 0 : 1;
        CHECK(seen[d] == want);
        placed_docs += (size_t)want;
    }
    CHECK(st->docs == placed_docs && st->real_tokens == placed_tokens && st->rows == row_total);
    CHECK(st->real_tokens + st->padding_tokens == st->rows * S);
    CHECK((drop ? st->dropped : st->truncated) == overlong && (drop ? st->truncated : st->dropped) == 0);
    /* best-fit decreasing uses at most 11/9 OPT + 1 rows, and OPT >= tokens / S (per window) */
    size_t windows = (n_docs + 499) / 500;
    CHECK((double)st->rows <= 11.0 / 9.0 * ((double)placed_tokens / (double)S) + 2.0 * (double)windows);
    printf("best_fit (%s): %zu docs, %llu rows, %.2f%% padding\n", drop ? "drop" : "truncate", placed_docs,
           (unsigned long long)st->rows, 100.0 * (double)st->padding_tokens / (double)(st->rows * S));
    free(len);
    free(seen);
    packer_free(p);
}

int main(void)
{
    test_concat();
    test_best_fit(0);
    test_best_fit(1);
    return check_report("test_prepare_pack");
}
