/* bench_shard: shard write and read throughput and the loader's batch rate. Writes one shard of
 * ROWS rows of seq_len + 1 Zipf-distributed token ids (a stand-in for text: a few ids are
 * common, most rare) joined in documents of 200-3000 tokens, then reads it back in order, at
 * random single rows, and through the loader (shuffled, B rows per batch) with and without
 * the prefetch thread. Prints one line per measurement.
 *
 *   bench_shard [--rows N] [--seq-len S] [--batch B] [--level L] [--dir DIR]
 *   bench_shard --data DIR [--batch B]     the loader alone over a prepared folder */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "data/loader.h"
#include "data/manifest.h"
#include "data/shard.h"
#include "util/file.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Zipf(1.1) over the vocabulary by inverse transform on a precomputed CDF. */
typedef struct zipf {
    double *cdf;
    int n;
} zipf;

static zipf zipf_make(int n)
{
    zipf z = {malloc(n * sizeof(double)), n};
    double sum = 0;
    for (int i = 0; i < n; i++)
        z.cdf[i] = (sum += pow(i + 1, -1.1));
    for (int i = 0; i < n; i++)
        z.cdf[i] /= sum;
    return z;
}

static int zipf_draw(const zipf *z, uint64_t *s)
{
    double u = (next_random(s) >> 11) * 0x1.0p-53;
    int lo = 0, hi = z->n - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (z->cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo + 3;  /* past bos/eos/unk */
}

static void die(const gale_error *err)
{
    fprintf(stderr, "bench_shard: %s\n", err->msg);
    exit(1);
}

static void bench_loader(const char *dir, int batch, int prefetch, int n_batches)
{
    gale_error err;
    const char *dirs[1] = {dir};
    gale_loader_options o = {.dirs = dirs, .n_dirs = 1, .split = "train", .batch_rows = batch, .rank = 0,
                             .world = 1, .seed = 1, .prefetch = prefetch};
    gale_loader *l = loader_open(&o, &err);
    if (!l)
        die(&err);
    gale_batch b;
    batch_init(&b, batch, loader_seq_len(l));
    double t0 = now();
    int64_t targets = 0;
    for (int i = 0; i < n_batches; i++) {
        if (loader_next(l, &b, &err) != 1)
            die(&err);
        targets += b.n_targets;
    }
    double dt = now() - t0;
    printf("loader    B=%d T=%d prefetch %d: %.1f batches/s, %.2f M tokens/s (%lld targets)\n", batch,
           loader_seq_len(l), prefetch, n_batches / dt, (double)n_batches * batch * loader_seq_len(l) / dt / 1e6,
           (long long)targets);
    batch_free(&b);
    loader_close(l);
}

int main(int argc, char **argv)
{
    int64_t rows = 4096;
    int seq_len = 2048, batch = 8, level = 3;
    const char *dir = NULL, *data = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows"))
            rows = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq-len"))
            seq_len = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch"))
            batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--level"))
            level = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--dir"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--data"))
            data = argv[i + 1];
    }
    if (data) {
        bench_loader(data, batch, 0, 200);
        bench_loader(data, batch, 4, 200);
        return 0;
    }
    char *tmp = NULL;
    if (!dir) {
        tmp = strdup("/tmp/gale-bench-shard-XXXXXX");
        dir = mkdtemp(tmp);
    }
    gale_error err;
    int S = seq_len + 1;
    gale_shard_meta m = {.seq_len = seq_len, .vocab_size = 32000, .bos_id = 1, .eos_id = 2,
                         .kind = GALE_SHARD_PRETRAIN, .packing = GALE_SHARD_CONCAT};
    memset(m.tokenizer_sha256, 'a', 64);
    char *path = gale_path_join(dir, "train-00000.h5");
    zipf z = zipf_make(m.vocab_size - 3);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int32_t *tokens = malloc(64 * (size_t)S * sizeof *tokens);
    uint16_t *segments = malloc(64 * (size_t)S * sizeof *segments);

    /* generate all batches first, so only writing is timed */
    int64_t n_batches = (rows + 63) / 64;
    int32_t *all_tokens = malloc((size_t)rows * S * sizeof *all_tokens);
    uint16_t *all_segments = malloc((size_t)rows * S * sizeof *all_segments);
    int64_t doc_left = 0, docs = 0;
    for (int64_t r = 0; r < rows; r++) {
        uint16_t seg = 0;
        for (int j = 0; j < S; j++) {
            int32_t *t = &all_tokens[r * S + j];
            if (doc_left == 0) {
                doc_left = 200 + (int64_t)(next_random(&rng) % 2800);
                docs++;
                if (j > 0)
                    seg++;
                *t = 1;
            } else {
                *t = doc_left == 1 ? 2 : zipf_draw(&z, &rng);
            }
            doc_left--;
            all_segments[r * S + j] = seg;
        }
    }
    double t0 = now();
    gale_shard_writer *w = shard_writer_create(path, &m, level, &err);
    if (!w)
        die(&err);
    for (int64_t i = 0; i < n_batches; i++) {
        int64_t first = i * 64, n = rows - first < 64 ? rows - first : 64;
        if (shard_writer_append(w, all_tokens + first * S, all_segments + first * S, NULL, (size_t)n, &err) != 0)
            die(&err);
    }
    if (shard_writer_finish(w, docs, &err) != 0)
        die(&err);
    double dt = now() - t0;
    double raw_mb = (double)rows * S * 4 / 1e6; /* uint16 tokens + uint16 segments */
    printf("write     %lld rows x %d, zstd %d: %.2f s, %.0f rows/s, %.1f MB/s raw\n", (long long)rows, S, level, dt,
           rows / dt, raw_mb / dt);

    gale_shard *s = shard_open(path, &err);
    if (!s)
        die(&err);
    gale_shard_storage st;
    shard_storage(s, &st, &err);
    printf("storage   %d rows per chunk, %.1f MB raw, %.1f MB stored, ratio %.2fx\n", st.chunk_rows,
           st.raw_bytes / 1e6, st.stored_bytes / 1e6, (double)st.raw_bytes / st.stored_bytes);

    t0 = now();
    uint8_t *mask = malloc(64 * (size_t)S);
    int64_t mismatches = 0;
    for (int64_t first = 0; first < rows; first += 64) {
        int64_t n = rows - first < 64 ? rows - first : 64;
        if (shard_read_rows(s, first, (size_t)n, tokens, segments, mask, &err) != 0)
            die(&err);
        mismatches += memcmp(tokens, all_tokens + first * S, (size_t)n * S * sizeof *tokens) != 0;
    }
    dt = now() - t0;
    printf("read      sequential, 64 rows a call: %.0f rows/s, %.1f MB/s raw%s\n", rows / dt, raw_mb / dt,
           mismatches ? "  (MISMATCH)" : "");

    int reads = 1000;
    t0 = now();
    for (int i = 0; i < reads; i++) {
        int64_t r = (int64_t)(next_random(&rng) % (uint64_t)rows);
        if (shard_read_rows(s, r, 1, tokens, segments, mask, &err) != 0)
            die(&err);
    }
    dt = now() - t0;
    printf("read      random single rows: %.0f rows/s (%.2f ms a row)\n", reads / dt, dt / reads * 1e3);
    shard_close(s);

    gale_manifest man;
    manifest_init(&man);
    man.kind = m.kind;
    man.packing = m.packing;
    man.seq_len = seq_len;
    man.tokenizer.path = strdup("none");
    memcpy(man.tokenizer.sha256, m.tokenizer_sha256, 65);
    man.tokenizer.vocab_size = m.vocab_size;
    man.tokenizer.bos_id = 1;
    man.tokenizer.eos_id = 2;
    if (manifest_add_shard(&man, dir, "train-00000.h5", "train", &err) != 0 || manifest_write(&man, dir, &err) != 0)
        die(&err);
    manifest_free(&man);
    bench_loader(dir, batch, 0, 200);
    bench_loader(dir, batch, 4, 200);

    free(all_tokens), free(all_segments), free(tokens), free(segments), free(mask), free(z.cdf), free(path);
    if (tmp) {
        gale_remove_tree(tmp, &err);
        free(tmp);
    }
    return 0;
}
