/* test_loader: the training stream. Every row served exactly once per epoch over R = 1, 2, 3
 * ranks, the same global stream whatever R and B, batch contents (inputs, targets, segments,
 * positions, target mask) as the rows say, mixing weights kept, resume continuing exactly,
 * one-pass evaluation, and refusals of folders that do not go together. */
#define _GNU_SOURCE
#include "data/loader.h"

#include <math.h>

#include "data/manifest.h"
#include "shard_fixture.h"

#define SEQ 15
#define VOCAB 32000

/* Folder A: pretraining, train = tag 10 (70 rows) + tag 11 (53 rows), val = tag 12 (29 rows).
 * Folder B: SFT, train = tag 20 (40 rows), val = tag 21 (9 rows). */
typedef struct folder_spec {
    const char *name;
    gale_shard_kind kind;
    int seq_len;
    const char *sha;
    int n;
    int tags[3];
    int64_t rows[3];
    const char *splits[3];
} folder_spec;

static const folder_spec spec_a = {"a", GALE_SHARD_PRETRAIN, SEQ, NULL, 3, {10, 11, 12},
                                   {70, 53, 29}, {"train", "train", "val"}};
static const folder_spec spec_b = {"b", GALE_SHARD_SFT, SEQ, NULL, 2, {20, 21}, {40, 9}, {"train", "val"}};

static char *make_folder(const char *root, const folder_spec *f)
{
    gale_error err;
    char *dir = gale_path_join(root, f->name);
    CHECK_OK(gale_mkdir_p(dir, &err), err);
    gale_manifest m;
    manifest_init(&m);
    m.kind = f->kind;
    m.packing = f->kind == GALE_SHARD_SFT ? GALE_SHARD_BEST_FIT : GALE_SHARD_CONCAT;
    m.seq_len = f->seq_len;
    m.tokenizer.path = gale_xstrdup("tokenizer.model");
    snprintf(m.tokenizer.sha256, sizeof m.tokenizer.sha256, "%s", f->sha ? f->sha : fixture_sha);
    m.tokenizer.vocab_size = VOCAB;
    m.tokenizer.bos_id = 1;
    m.tokenizer.eos_id = 2;
    gale_shard_meta meta = fixture_meta(f->seq_len, VOCAB, f->kind);
    memcpy(meta.tokenizer_sha256, m.tokenizer.sha256, sizeof m.tokenizer.sha256);
    for (int i = 0; i < f->n; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s-%05d.h5", f->splits[i], i);
        char *path = gale_path_join(dir, name);
        CHECK_OK(fixture_write_shard(path, &meta, f->tags[i], f->rows[i], &err), err);
        CHECK_OK(manifest_add_shard(&m, dir, name, f->splits[i], &err), err);
        free(path);
    }
    CHECK_OK(manifest_write(&m, dir, &err), err);
    manifest_free(&m);
    return dir;
}

/* Which row a batch row is: its tag (column 1) and row within its shard (column 0); checks
 * every field of the batch row against the fixture. Returns tag * 100000 + row. */
static long identify_and_check(const gale_batch *b, int i, gale_shard_kind kind)
{
    int T = b->seq_len, S = T + 1;
    const int32_t *in = b->inputs + (size_t)i * T;
    int tag = in[1];
    int64_t row = in[0];
    int32_t tok[SEQ + 1];
    uint16_t seg[SEQ + 1];
    uint8_t mask[SEQ + 1];
    fixture_row(tag, row, S, VOCAB, tok, seg, mask);
    int bad = 0;
    for (int t = 0; t < T; t++) {
        size_t at = (size_t)i * T + t;
        int target_is_trained = seg[t] != GALE_SEGMENT_PAD && seg[t + 1] != GALE_SEGMENT_PAD &&
                                (kind == GALE_SHARD_PRETRAIN || mask[t + 1]);
        int position = 0;
        for (int u = t; u > 0 && seg[u - 1] == seg[t]; u--)
            position++;
        bad += b->inputs[at] != tok[t] || b->targets[at] != tok[t + 1] || b->segments[at] != seg[t];
        bad += b->loss_mask[at] != target_is_trained || b->positions[at] != position;
    }
    CHECK_MSG(!bad, "batch row %d (tag %d row %lld): %d fields differ from the shard", i, tag, (long long)row, bad);
    return tag * 100000L + (long)row;
}

static gale_loader *open_loader(const char *const *dirs, const double *weights, size_t n, const char *split, int B,
                                int rank, int world, int prefetch, int one_pass)
{
    gale_error err;
    gale_loader_options o = {.dirs = dirs, .weights = weights, .n_dirs = n, .split = split, .batch_rows = B,
                             .rank = rank, .world = world, .seed = 1234, .one_pass = one_pass, .prefetch = prefetch};
    gale_loader *l = loader_open(&o, &err);
    CHECK_OK(l ? 0 : -1, err);
    return l;
}

/* Runs R ranks of batch B for `steps` steps and returns the global stream: the row served at
 * each slot, in slot order. */
static long *global_stream(const char *const *dirs, const double *weights, size_t n, int R, int B, int steps,
                           int prefetch, gale_shard_kind *kinds)
{
    long *stream = calloc((size_t)R * B * steps, sizeof *stream);
    for (int r = 0; r < R; r++) {
        gale_loader *l = open_loader(dirs, weights, n, "train", B, r, R, prefetch, 0);
        if (!l)
            continue;
        gale_batch b;
        batch_init(&b, B, SEQ);
        gale_error err;
        for (int k = 0; k < steps; k++) {
            CHECK(loader_next(l, &b, &err) == 1);
            CHECK(b.first_slot == (int64_t)k * R * B + (int64_t)r * B);
            for (int i = 0; i < B; i++) {
                long id = identify_and_check(&b, i, kinds[(b.inputs[(size_t)i * SEQ + 1] / 10) - 1]);
                stream[b.first_slot + i] = id;
            }
        }
        batch_free(&b);
        loader_close(l);
    }
    return stream;
}

static int compare_ids(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* Slots [from, from + n) hold n distinct rows of `want` (sorted ids). */
static int is_permutation_of(const long *slots, int64_t n, const long *want)
{
    long *sorted = malloc((size_t)n * sizeof *sorted);
    memcpy(sorted, slots, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, compare_ids);
    int same = memcmp(sorted, want, (size_t)n * sizeof *sorted) == 0;
    free(sorted);
    return same;
}

static void test_epochs_over_ranks(const char *dir_a)
{
    const char *dirs[1] = {dir_a};
    gale_shard_kind kinds[3] = {GALE_SHARD_PRETRAIN, GALE_SHARD_PRETRAIN, GALE_SHARD_PRETRAIN};
    long all_rows[123];
    for (int i = 0; i < 123; i++)
        all_rows[i] = i < 70 ? 10 * 100000L + i : 11 * 100000L + (i - 70);
    /* 3 epochs and a bit, with batch sizes that do not divide 123 */
    int B[3] = {5, 4, 3};
    long *streams[3];
    int64_t slots = 0;
    for (int R = 1; R <= 3; R++) {
        int steps = (int)((3 * 123 + R * B[R - 1] - 1) / (R * B[R - 1])) + 1;
        streams[R - 1] = global_stream(dirs, NULL, 1, R, B[R - 1], steps, R == 2 ? 0 : 3, kinds);
        int64_t n = (int64_t)R * B[R - 1] * steps;
        slots = R == 1 ? n : slots < n ? slots : n;
        for (int e = 0; e < 3; e++)
            CHECK_MSG(is_permutation_of(streams[R - 1] + e * 123, 123, all_rows),
                      "R=%d: epoch %d does not serve every row exactly once", R, e);
    }
    /* the stream is the same whatever R, B and prefetch */
    for (int R = 2; R <= 3; R++)
        CHECK(memcmp(streams[0], streams[R - 1], (size_t)slots * sizeof(long)) == 0);
    /* shuffled, and differently each epoch */
    int in_order = 0, same_as_first = 0;
    for (int i = 0; i < 123; i++) {
        in_order += streams[0][i] == all_rows[i];
        same_as_first += streams[0][i] == streams[0][123 + i];
    }
    CHECK(in_order < 20 && same_as_first < 20);
    for (int R = 0; R < 3; R++)
        free(streams[R]);
}

static void test_mixing(const char *dir_a, const char *dir_b)
{
    const char *dirs[2] = {dir_a, dir_b};
    gale_shard_kind kinds[2] = {GALE_SHARD_PRETRAIN, GALE_SHARD_SFT};
    double weights[2] = {3, 1};
    int R = 2, B = 6, steps = 60;
    long *stream = global_stream(dirs, weights, 2, R, B, steps, 2, kinds);
    int64_t n = (int64_t)R * B * steps, from_b = 0;
    long *a_rows = malloc(n * sizeof *a_rows), *b_rows = malloc(n * sizeof *b_rows);
    int64_t na = 0, nb = 0;
    for (int64_t g = 0; g < n; g++) {
        int is_b = stream[g] / 100000 == 20;
        from_b += is_b;
        if (is_b)
            b_rows[nb++] = stream[g];
        else
            a_rows[na++] = stream[g];
        double want = 0.25 * (double)(g + 1);
        if (fabs((double)from_b - want) > 1.0) {
            FAIL("mixing: after %lld slots %lld rows from B, want %.2f", (long long)g + 1,
                    (long long)from_b, want);
            break;
        }
    }
    /* each source still serves each of its rows once per its own epoch */
    long all_a[123], all_b[40];
    for (int i = 0; i < 123; i++)
        all_a[i] = i < 70 ? 10 * 100000L + i : 11 * 100000L + (i - 70);
    for (int i = 0; i < 40; i++)
        all_b[i] = 20 * 100000L + i;
    for (int64_t e = 0; (e + 1) * 123 <= na; e++)
        CHECK(is_permutation_of(a_rows + e * 123, 123, all_a));
    for (int64_t e = 0; (e + 1) * 40 <= nb; e++)
        CHECK(is_permutation_of(b_rows + e * 40, 40, all_b));
    CHECK(nb >= 160);

    /* without weights: in proportion to rows (123 : 40) */
    long *natural = global_stream(dirs, NULL, 2, 1, 163, 1, 0, kinds);
    int64_t nat_b = 0;
    for (int g = 0; g < 163; g++)
        nat_b += natural[g] / 100000 == 20;
    CHECK(nat_b == 40);
    free(natural), free(stream), free(a_rows), free(b_rows);
}

static int batches_equal(const gale_batch *x, const gale_batch *y)
{
    size_t n = (size_t)x->rows * x->seq_len;
    return x->first_slot == y->first_slot && x->n_targets == y->n_targets &&
           !memcmp(x->inputs, y->inputs, n * sizeof *x->inputs) &&
           !memcmp(x->targets, y->targets, n * sizeof *x->targets) &&
           !memcmp(x->segments, y->segments, n * sizeof *x->segments) &&
           !memcmp(x->positions, y->positions, n * sizeof *x->positions) && !memcmp(x->loss_mask, y->loss_mask, n);
}

static void test_resume(const char *dir_a, const char *dir_b)
{
    const char *dirs[2] = {dir_a, dir_b};
    double weights[2] = {1, 2};
    gale_error err;
    gale_batch b1, b2;
    batch_init(&b1, 4, SEQ);
    batch_init(&b2, 4, SEQ);
    /* rank 1 of 2: run 23 steps, save, then compare the next 30 with a resumed loader */
    gale_loader *l1 = open_loader(dirs, weights, 2, "train", 4, 1, 2, 3, 0);
    for (int k = 0; l1 && k < 23; k++)
        CHECK(loader_next(l1, &b1, &err) == 1);
    gale_loader_position pos;
    if (l1)
        loader_position(l1, &pos);
    CHECK(pos.slots == 23 * 8 && pos.n_sources == 2 && pos.rows_drawn[0] + pos.rows_drawn[1] == 23 * 8);
    json_t *j = loader_position_to_json(&pos);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    json_error_t jerr;
    json_t *back = json_loads(text, 0, &jerr);
    gale_loader_position restored;
    CHECK_OK(loader_position_from_json(back, &restored, &err), err);
    json_decref(back);
    free(text);
    CHECK(!memcmp(&restored, &pos, sizeof pos));

    gale_loader *l2 = open_loader(dirs, weights, 2, "train", 4, 1, 2, 0, 0);
    CHECK_OK(l2 ? loader_seek(l2, &restored, &err) : -1, err);
    for (int k = 0; l1 && l2 && k < 30; k++) {
        CHECK(loader_next(l1, &b1, &err) == 1);
        CHECK(loader_next(l2, &b2, &err) == 1);
        if (!batches_equal(&b1, &b2)) {
            FAIL("resume: batch %d after the resume differs", k);
            break;
        }
    }
    /* resumed with other R and B, the ranks continue the same global stream */
    gale_shard_kind kinds[2] = {GALE_SHARD_PRETRAIN, GALE_SHARD_SFT};
    int64_t total = restored.slots + 3 * 2 * 4;
    long *reference = global_stream(dirs, weights, 2, 1, 1, (int)total, 0, kinds);
    for (int r = 0; r < 3; r++) {
        gale_loader *l3 = open_loader(dirs, weights, 2, "train", 2, r, 3, 1, 0);
        gale_batch b3;
        batch_init(&b3, 2, SEQ);
        CHECK_OK(l3 ? loader_seek(l3, &restored, &err) : -1, err);
        for (int k = 0; l3 && k < 4; k++) {
            CHECK(loader_next(l3, &b3, &err) == 1);
            CHECK(b3.first_slot == restored.slots + k * 6 + r * 2);
            for (int i = 0; i < 2; i++)
                CHECK(identify_and_check(&b3, i, kinds[b3.inputs[(size_t)i * SEQ + 1] / 10 - 1]) ==
                      reference[b3.first_slot + i]);
        }
        batch_free(&b3);
        loader_close(l3);
    }
    free(reference);

    /* seeking a prefetching loader backwards replays the same batches */
    gale_loader_position again;
    loader_position(l1, &again);
    CHECK(loader_next(l1, &b1, &err) == 1);
    CHECK_OK(loader_seek(l1, &again, &err), err);
    CHECK(loader_next(l1, &b2, &err) == 1);
    CHECK(batches_equal(&b1, &b2));

    /* positions that do not fit */
    gale_loader_position bad = pos;
    bad.rows_drawn[0]++;
    CHECK_ERROR(loader_seek(l2, &bad, &err) != 0, err, "inconsistent");
    bad = pos;
    bad.n_sources = 1;
    CHECK_ERROR(loader_seek(l2, &bad, &err) != 0, err, "over 1 sources");
    json_t *junk = json_pack("{sssi}", "slots", "x", "rows_drawn", 3);
    CHECK_ERROR(loader_position_from_json(junk, &bad, &err) != 0, err, "data position");
    json_decref(junk);
    gale_batch wrong;
    batch_init(&wrong, 5, SEQ);
    CHECK_ERROR(loader_next(l2, &wrong, &err) != 0, err, "batch of 5 x 15 given");
    batch_free(&wrong);
    loader_close(l1);
    loader_close(l2);
    batch_free(&b1);
    batch_free(&b2);
}

static void test_one_pass(const char *dir_a, const char *dir_b)
{
    const char *dirs[2] = {dir_a, dir_b};
    gale_shard_kind kinds[2] = {GALE_SHARD_PRETRAIN, GALE_SHARD_SFT};
    int R = 2, B = 4;
    long seen[64];
    int n_seen = 0, steps[2] = {0, 0};
    for (int r = 0; r < R; r++) {
        gale_loader *l = open_loader(dirs, NULL, 2, "val", B, r, R, r, 1);
        if (!l)
            return;
        CHECK(loader_total_rows(l) == 38 && loader_source_rows(l, 0) == 29 && loader_source_rows(l, 1) == 9);
        gale_batch b;
        batch_init(&b, B, SEQ);
        gale_error err;
        int rc;
        while ((rc = loader_next(l, &b, &err)) == 1) {
            steps[r]++;
            for (int i = 0; i < B; i++) {
                int64_t slot = b.first_slot + i;
                if (slot >= 38) {
                    int pad = 1;
                    for (int t = 0; t < SEQ; t++)
                        pad &= b.segments[(size_t)i * SEQ + t] == GALE_SEGMENT_PAD && !b.loss_mask[(size_t)i * SEQ + t];
                    CHECK(pad);
                    continue;
                }
                int source = slot >= 29;
                long id = identify_and_check(&b, i, kinds[source]);
                CHECK(id == (source ? 21 * 100000L + (slot - 29) : 12 * 100000L + slot));
                if (n_seen < 64)
                    seen[n_seen++] = id;
            }
        }
        CHECK(rc == 0 && loader_next(l, &b, &err) == 0);
        batch_free(&b);
        loader_close(l);
    }
    /* ceil(38 / 8) = 5 steps on every rank, every row once */
    CHECK(steps[0] == 5 && steps[1] == 5 && n_seen == 38);
    qsort(seen, (size_t)n_seen, sizeof *seen, compare_ids);
    for (int i = 1; i < n_seen; i++)
        CHECK(seen[i] != seen[i - 1]);
}

/* More shards than the loader keeps open: shards are closed and reopened as rows need them,
 * and every row still comes once per epoch. */
static void test_many_shards(const char *root)
{
    gale_error err;
    enum { SHARDS = 23, ROWS = 5 };
    char *dir = gale_path_join(root, "many");
    CHECK_OK(gale_mkdir_p(dir, &err), err);
    gale_manifest m;
    manifest_init(&m);
    m.kind = GALE_SHARD_PRETRAIN;
    m.packing = GALE_SHARD_CONCAT;
    m.seq_len = SEQ;
    m.tokenizer.path = gale_xstrdup("tokenizer.model");
    memcpy(m.tokenizer.sha256, fixture_sha, sizeof fixture_sha);
    m.tokenizer.vocab_size = VOCAB;
    m.tokenizer.bos_id = 1;
    m.tokenizer.eos_id = 2;
    gale_shard_meta meta = fixture_meta(SEQ, VOCAB, GALE_SHARD_PRETRAIN);
    long all_rows[SHARDS * ROWS];
    for (int i = 0; i < SHARDS; i++) {
        char name[64];
        snprintf(name, sizeof name, "train-%05d.h5", i);
        char *path = gale_path_join(dir, name);
        CHECK_OK(fixture_write_shard(path, &meta, 100 + i, ROWS, &err), err);
        CHECK_OK(manifest_add_shard(&m, dir, name, "train", &err), err);
        free(path);
        for (int r = 0; r < ROWS; r++)
            all_rows[i * ROWS + r] = (100 + i) * 100000L + r;
    }
    CHECK_OK(manifest_write(&m, dir, &err), err);
    manifest_free(&m);
    const char *dirs[1] = {dir};
    gale_shard_kind kinds[SHARDS / 10 + 11];
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
        kinds[i] = GALE_SHARD_PRETRAIN;
    long *stream = global_stream(dirs, NULL, 1, 1, 5, 2 * SHARDS * ROWS / 5, 2, kinds);
    CHECK(is_permutation_of(stream, SHARDS * ROWS, all_rows));
    CHECK(is_permutation_of(stream + SHARDS * ROWS, SHARDS * ROWS, all_rows));
    free(stream);
    free(dir);
}

static void test_refusals(const char *root, const char *dir_a)
{
    gale_error err;
    folder_spec long_rows = spec_a, other_tok = spec_a, no_val = spec_a;
    long_rows.name = "long";
    long_rows.seq_len = 31;
    other_tok.name = "othertok";
    other_tok.sha = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    no_val.name = "noval";
    no_val.n = 2;
    char *dir_long = make_folder(root, &long_rows), *dir_tok = make_folder(root, &other_tok);
    char *dir_noval = make_folder(root, &no_val), *dir_none = gale_path_join(root, "none");
    gale_loader_options o = {.n_dirs = 2, .split = "train", .batch_rows = 2, .rank = 0, .world = 1};
    const char *pair1[2] = {dir_a, dir_long}, *pair2[2] = {dir_a, dir_tok}, *one[1] = {dir_noval};
    const char *none[1] = {dir_none};
    o.dirs = pair1;
    CHECK_ERROR(loader_open(&o, &err) == NULL, err, "long: seq_len 31 differs from");
    o.dirs = pair2;
    CHECK_ERROR(loader_open(&o, &err) == NULL, err, "othertok: tokenizer fedcba987654... (vocab 32000) differs");
    o.dirs = one;
    o.n_dirs = 1;
    o.split = "val";
    CHECK_ERROR(loader_open(&o, &err) == NULL, err, "noval: no val rows");
    /* a one-pass loader over an empty split simply has nothing to serve */
    o.one_pass = 1;
    gale_loader *empty = loader_open(&o, &err);
    CHECK_OK(empty ? 0 : -1, err);
    if (empty) {
        gale_batch b;
        batch_init(&b, 2, SEQ);
        CHECK(loader_total_rows(empty) == 0 && loader_next(empty, &b, &err) == 0);
        batch_free(&b);
        loader_close(empty);
    }
    o.one_pass = 0;
    o.dirs = none;
    CHECK_ERROR(loader_open(&o, &err) == NULL, err, "none: no manifest.json");
    o.dirs = one;
    o.split = "test";
    CHECK_ERROR(loader_open(&o, &err) == NULL, err, "split must be");
    o.split = "train";
    o.rank = 1;
    CHECK_ERROR(loader_open(&o, &err) == NULL, err, "rank 1 of 1");
    o.rank = 0;
    double w[1] = {0};
    o.weights = w;
    CHECK_ERROR(loader_open(&o, &err) == NULL, err, "weight 0 must be a positive number");
    free(dir_long), free(dir_tok), free(dir_noval), free(dir_none);
}

/* A shard changed after prepare (200 bytes XORed, same size) is never served: the loader
 * checks its SHA-256 against the manifest when it first opens it (error naming the shard),
 * or with skip_bad_shards leaves it out at open and serves the others. */
static void test_damaged_shard(const char *root)
{
    static const folder_spec spec = {"damaged", GALE_SHARD_PRETRAIN, SEQ, NULL, 3, {30, 31, 32},
                                     {20, 20, 20}, {"train", "train", "train"}};
    char *dir = make_folder(root, &spec);
    char *path = gale_path_join(dir, "train-00001.h5");
    gale_error err;
    size_t len = 0;
    char *bytes = gale_read_file(path, &len, &err);
    CHECK_OK(bytes ? 0 : -1, err);
    for (size_t i = len / 2; bytes && i < len / 2 + 200 && i < len; i++)
        bytes[i] ^= 0x5a;
    CHECK_OK(gale_write_file_atomic(path, bytes, len, &err), err);
    free(bytes);
    const char *dirs[] = {dir};
    for (int prefetch = 0; prefetch <= 2; prefetch += 2) {
        gale_loader *l = open_loader(dirs, NULL, 1, "train", 8, 0, 1, prefetch, 1);
        gale_batch b;
        batch_init(&b, 8, SEQ);
        int rc, served_damaged = 0;
        while (l && (rc = loader_next(l, &b, &err)) == 1)
            for (int i = 0; i < b.rows; i++)
                served_damaged |= b.segments[i * b.seq_len] != GALE_SEGMENT_PAD &&
                                  identify_and_check(&b, i, GALE_SHARD_PRETRAIN) / 100000 == 31;
        CHECK(!served_damaged);
        CHECK_ERROR(l && rc == -1, err, "damaged/train-00001.h5: SHA-256");
        batch_free(&b);
        loader_close(l);
    }
    gale_loader_options o = {.dirs = dirs, .n_dirs = 1, .split = "train", .batch_rows = 8, .world = 1,
                             .one_pass = 1, .skip_bad_shards = 1};
    gale_loader *l = loader_open(&o, &err);
    CHECK_OK(l ? 0 : -1, err);
    if (l) {
        CHECK(loader_total_rows(l) == 40);
        gale_batch b;
        batch_init(&b, 8, SEQ);
        long seen[2] = {0, 0};
        int rc;
        while ((rc = loader_next(l, &b, &err)) == 1)
            for (int i = 0; i < b.rows; i++) {
                if (b.segments[i * b.seq_len] == GALE_SEGMENT_PAD)
                    continue;  /* padding past the end of the pass */
                long tag = identify_and_check(&b, i, GALE_SHARD_PRETRAIN) / 100000;
                CHECK(tag == 30 || tag == 32);
                seen[tag == 32]++;
            }
        CHECK_OK(rc, err);
        CHECK(seen[0] == 20 && seen[1] == 20);
        batch_free(&b);
        loader_close(l);
    }
    free(path);
    free(dir);
}

int main(void)
{
    char *root = fixture_tmpdir("loader");
    char *dir_a = make_folder(root, &spec_a), *dir_b = make_folder(root, &spec_b);
    test_epochs_over_ranks(dir_a);
    test_mixing(dir_a, dir_b);
    test_resume(dir_a, dir_b);
    test_one_pass(dir_a, dir_b);
    test_many_shards(root);
    test_refusals(root, dir_a);
    test_damaged_shard(root);
    fixture_remove_tree(root);
    free(dir_a), free(dir_b), free(root);
    return check_report("test_loader");
}
