/* test_shard: shards written and read back value for value (uint16 and uint32 tokens,
 * pretraining and SFT), the writer's checks and atomicity, the zstd filter on frames with and
 * without a content size, and clear errors on foreign, damaged and unwritable files. */
#define _GNU_SOURCE
#include <errno.h>
#include <hdf5.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <zstd.h>

#include "shard_fixture.h"

static char *path_in(const char *dir, const char *name)
{
    return gale_path_join(dir, name);
}

/* Reads the whole shard back in odd-sized pieces and compares with the fixture. */
static void check_shard_contents(const char *path, const gale_shard_meta *want, int tag, int64_t n_rows)
{
    gale_error err;
    gale_shard *s = shard_open(path, &err);
    CHECK_OK(s ? 0 : -1, err);
    if (!s)
        return;
    const gale_shard_meta *m = shard_meta(s);
    int S = want->seq_len + 1, sft = want->kind == GALE_SHARD_SFT;
    CHECK(shard_rows(s) == n_rows);
    CHECK(m->seq_len == want->seq_len && m->vocab_size == want->vocab_size);
    CHECK(m->bos_id == 1 && m->eos_id == 2 && m->kind == want->kind && m->packing == want->packing);
    CHECK(!strcmp(m->tokenizer_sha256, fixture_sha));
    CHECK(m->n_docs == n_rows * 2);
    CHECK(shard_has_loss_mask(s) == sft);
    CHECK(shard_token_bytes(s) == (want->vocab_size <= 65536 ? 2 : 4));

    int32_t *t = malloc(100 * S * sizeof *t), *wt = malloc(S * sizeof *wt);
    uint16_t *g = malloc(100 * S * sizeof *g), *wg = malloc(S * sizeof *wg);
    uint8_t *k = malloc(100 * S), *wk = malloc(S);
    int64_t real = 0, mismatches = 0;
    for (int64_t first = 0; first < n_rows;) {
        size_t n = (size_t)(first % 97) + 1;
        if ((int64_t)n > n_rows - first)
            n = (size_t)(n_rows - first);
        CHECK_OK(shard_read_rows(s, first, n, t, g, k, &err), err);
        for (size_t i = 0; i < n; i++) {
            fixture_row(tag, first + (int64_t)i, S, want->vocab_size, wt, wg, wk);
            for (int j = 0; j < S; j++) {
                uint8_t mask = sft ? wk[j] : wg[j] != GALE_SEGMENT_PAD;
                mismatches += t[i * S + j] != wt[j] || g[i * S + j] != wg[j] || k[i * S + j] != mask;
                real += wg[j] != GALE_SEGMENT_PAD;
            }
        }
        first += (int64_t)n;
    }
    CHECK(mismatches == 0);
    CHECK(m->n_real_tokens == real);

    /* a single output is enough, and the loss mask alone still derives from segments */
    if (n_rows >= 3) {
        CHECK_OK(shard_read_rows(s, n_rows - 3, 3, NULL, NULL, k, &err), err);
        fixture_row(tag, n_rows - 1, S, want->vocab_size, wt, wg, wk);
        CHECK(k[2 * S + S - 1] == (sft ? wk[S - 1] : wg[S - 1] != GALE_SEGMENT_PAD));
    }
    /* out of range */
    CHECK_ERROR(shard_read_rows(s, n_rows - 1, 2, t, NULL, NULL, &err) != 0, err, "the shard has");
    CHECK_ERROR(shard_read_rows(s, -1, 1, t, NULL, NULL, &err) != 0, err, "requested");

    gale_shard_storage st;
    CHECK_OK(shard_storage(s, &st, &err), err);
    uint64_t raw = (uint64_t)n_rows * S * (shard_token_bytes(s) + 2 + (sft ? 1 : 0));
    CHECK(st.raw_bytes == raw);
    CHECK(st.stored_bytes > 0 && (n_rows < 100 || st.stored_bytes < st.raw_bytes));
    CHECK(st.chunk_rows >= 1 && st.chunk_rows <= 256);
    free(t), free(wt), free(g), free(wg), free(k), free(wk);
    shard_close(s);
}

static void test_round_trips(const char *dir)
{
    gale_error err;
    char *p16 = path_in(dir, "pretrain16.h5"), *p32 = path_in(dir, "sft32.h5"), *p1 = path_in(dir, "one.h5");
    gale_shard_meta pre = fixture_meta(63, 32000, GALE_SHARD_PRETRAIN);
    CHECK_OK(fixture_write_shard(p16, &pre, 5, 1000, &err), err);
    check_shard_contents(p16, &pre, 5, 1000);

    gale_shard_meta sft = fixture_meta(40, 70000, GALE_SHARD_SFT);
    CHECK_OK(fixture_write_shard(p32, &sft, 9, 513, &err), err);
    check_shard_contents(p32, &sft, 9, 513);

    /* seq_len 1 and vocab exactly 65536 (still uint16); a single row */
    gale_shard_meta tiny = fixture_meta(1, 65536, GALE_SHARD_PRETRAIN);
    CHECK_OK(fixture_write_shard(p1, &tiny, 3, 1, &err), err);
    check_shard_contents(p1, &tiny, 3, 1);
    free(p16), free(p32), free(p1);
}

static void test_writer_checks(const char *dir)
{
    gale_error err;
    char *path = path_in(dir, "checks.h5");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    gale_shard_meta m = fixture_meta(7, 100, GALE_SHARD_PRETRAIN);
    int32_t t[8] = {1, 5, 6, 2, 1, 7, 8, 2};
    uint16_t g[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    uint8_t k[8] = {0};

    gale_shard_meta bad = m;
    bad.tokenizer_sha256[3] = 'X';
    CHECK_ERROR(shard_writer_create(path, &bad, 0, &err) == NULL, err, "tokenizer_sha256");
    bad = m;
    bad.eos_id = 100;
    CHECK_ERROR(shard_writer_create(path, &bad, 0, &err) == NULL, err, "eos_id");
    CHECK_ERROR(shard_writer_create(path, &m, 99, &err) == NULL, err, "zstd level");

    gale_shard_writer *w = shard_writer_create(path, &m, 0, &err);
    CHECK_OK(w ? 0 : -1, err);
    if (!w)
        return;
    CHECK(!gale_path_exists(path) && gale_path_exists(tmp));
    CHECK_OK(shard_writer_append(w, t, g, NULL, 1, &err), err);
    CHECK_ERROR(shard_writer_append(w, t, g, k, 1, &err) != 0, err, "takes no loss mask");
    t[3] = 100;
    CHECK_ERROR(shard_writer_append(w, t, g, NULL, 1, &err) != 0, err, "row 1 column 3: token id 100");
    t[3] = 2;
    g[5] = 3;
    CHECK_ERROR(shard_writer_append(w, t, g, NULL, 1, &err) != 0, err, "column 5: segment 3 does not follow 1");
    g[5] = GALE_SEGMENT_PAD;
    CHECK_ERROR(shard_writer_append(w, t, g, NULL, 1, &err) != 0, err, "column 6: segment 1 does not follow 65535");
    g[0] = 1;
    CHECK_ERROR(shard_writer_append(w, t, g, NULL, 1, &err) != 0, err, "column 0: segment 1");
    /* a call with one bad row among good ones appends none of them */
    int32_t t2[16] = {1, 5, 6, 2, 1, 7, 8, 2, 1, 5, 6, 2, 1, 7, 8, 2};
    uint16_t g2x[16] = {0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1};
    CHECK_OK(shard_writer_append(w, t2, g2x, NULL, 1, &err), err);
    t2[8 + 2] = -1;
    CHECK_ERROR(shard_writer_append(w, t2, g2x, NULL, 2, &err) != 0, err, "row 3 column 2: token id -1");
    CHECK(shard_writer_rows(w) == 2);
    CHECK(shard_hdf5_threadsafe() == 1);
    shard_writer_abort(w);
    CHECK(!gale_path_exists(path) && !gale_path_exists(tmp));

    gale_shard_meta s = fixture_meta(7, 100, GALE_SHARD_SFT);
    uint16_t g2[8] = {0, 0, 0, 0, 1, 1, GALE_SEGMENT_PAD, GALE_SEGMENT_PAD};
    w = shard_writer_create(path, &s, 0, &err);
    CHECK_ERROR(shard_writer_append(w, t, g2, NULL, 1, &err) != 0, err, "needs a loss mask");
    k[7] = 1;
    CHECK_ERROR(shard_writer_append(w, t, g2, k, 1, &err) != 0, err,
                "column 7: loss mask 1 must be 0 or 1, and 0 at padding");
    k[7] = 0;
    k[2] = 2;
    CHECK_ERROR(shard_writer_append(w, t, g2, k, 1, &err) != 0, err, "column 2: loss mask 2");
    k[2] = 1;
    CHECK_OK(shard_writer_append(w, t, g2, k, 1, &err), err);
    CHECK_ERROR(shard_writer_finish(w, -1, &err) != 0, err, "n_docs");
    CHECK(!gale_path_exists(path) && !gale_path_exists(tmp));

    /* an empty shard is a valid shard */
    w = shard_writer_create(path, &m, 0, &err);
    CHECK_OK(shard_writer_finish(w, 0, &err), err);
    gale_shard *sh = shard_open(path, &err);
    CHECK_OK(sh ? 0 : -1, err);
    if (sh)
        CHECK(shard_rows(sh) == 0 && shard_meta(sh)->n_real_tokens == 0);
    shard_close(sh);
    free(path);
}

/* An HDF5 file with a /tokens dataset and the given string "format" (NULL: no attributes). */
static void write_foreign_h5(const char *path, const char *format)
{
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[2] = {4, 8};
    hid_t space = H5Screate_simple(2, dims, NULL);
    hid_t d = H5Dcreate2(f, "tokens", H5T_STD_U16LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    uint16_t zeros[32] = {0};
    H5Dwrite(d, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros);
    if (format) {
        hid_t type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, strlen(format));
        hid_t scalar = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(f, "format", type, scalar, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, type, format);
        H5Aclose(a), H5Sclose(scalar), H5Tclose(type);
    }
    H5Dclose(d), H5Sclose(space), H5Fclose(f);
}

static void test_bad_files(const char *dir)
{
    gale_error err;
    char *missing = path_in(dir, "missing.h5"), *text = path_in(dir, "text.h5"), *bare = path_in(dir, "bare.h5");
    char *foreign = path_in(dir, "foreign.h5"), *ours = path_in(dir, "fixed-format.h5");
    char *good = path_in(dir, "good.h5"), *cut = path_in(dir, "cut.h5");

    CHECK_ERROR(shard_open(missing, &err) == NULL, err, "missing.h5: No such file");
    CHECK_ERROR(shard_open(dir, &err) == NULL, err, "not a file");
    CHECK_OK(gale_write_file_atomic(text, "hello, not hdf5\n", 16, &err), err);
    CHECK_ERROR(shard_open(text, &err) == NULL, err, "text.h5: not an HDF5 file");
    write_foreign_h5(bare, NULL);
    CHECK_ERROR(shard_open(bare, &err) == NULL, err, "bare.h5: not a gale shard (no 'format' attribute)");
    write_foreign_h5(foreign, "safetensors");
    CHECK_ERROR(shard_open(foreign, &err) == NULL, err, "format attribute is 'safetensors'");
    /* a fixed-length "gale-shard" is accepted as the format, then the next attribute is missing */
    write_foreign_h5(ours, "gale-shard");
    CHECK_ERROR(shard_open(ours, &err) == NULL, err, "fixed-format.h5: attribute 'version' is missing");

    /* truncations of a real shard: each one is refused at open or at read, never crashes */
    gale_shard_meta m = fixture_meta(127, 32000, GALE_SHARD_PRETRAIN);
    CHECK_OK(fixture_write_shard(good, &m, 1, 600, &err), err);
    size_t len = 0;
    char *bytes = gale_read_file(good, &len, &err);
    int refused = 0, tries = 0;
    for (size_t keep = 0; bytes && keep < len; keep += len / 13 + 1) {
        CHECK_OK(gale_write_file_atomic(cut, bytes, keep, &err), err);
        tries++;
        gale_shard *s = shard_open(cut, &err);
        if (!s) {
            refused += strstr(err.msg, "cut.h5") != NULL;
            continue;
        }
        int32_t *t = malloc(600 * 128 * sizeof *t);
        int rc = shard_read_rows(s, 0, (size_t)shard_rows(s), t, NULL, NULL, &err);
        refused += rc != 0 && strstr(err.msg, "cut.h5") != NULL;
        free(t);
        shard_close(s);
    }
    CHECK(tries > 10 && refused == tries);
    /* the message of a truncated file says so */
    if (bytes) {
        CHECK_OK(gale_write_file_atomic(cut, bytes, len - 100, &err), err);
        CHECK_ERROR(shard_open(cut, &err) == NULL, err, "truncated");
    }
    free(bytes);
    free(missing), free(text), free(bare), free(foreign), free(ours), free(good), free(cut);
}

/* Frames as other zstd encoders write them: streamed without a content size, and split in
 * two concatenated frames; the filter must decode both. */
static void test_zstd_frames(const char *dir)
{
    gale_error err;
    CHECK_OK(shard_hdf5_init(&err), err);
    char *path = path_in(dir, "frames.h5");
    enum { ROWS = 16, COLS = 64 };
    uint32_t data[ROWS * COLS], back[ROWS * COLS];
    for (int i = 0; i < ROWS * COLS; i++)
        data[i] = (uint32_t)(i * 7919u % 1000u);
    size_t raw = sizeof data, cap = ZSTD_compressBound(raw) * 2 + 64;
    unsigned char *frame = malloc(cap);

    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
    ZSTD_outBuffer out = {frame, cap, 0};
    ZSTD_inBuffer in = {data, raw / 2, 0};
    ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_end);
    size_t first_frame = out.pos;
    CHECK(ZSTD_getFrameContentSize(frame, first_frame) == ZSTD_CONTENTSIZE_UNKNOWN);
    ZSTD_CCtx_reset(cctx, ZSTD_reset_session_only);
    ZSTD_inBuffer in2 = {(char *)data + raw / 2, raw - raw / 2, 0};
    ZSTD_compressStream2(cctx, &out, &in2, ZSTD_e_end);
    ZSTD_freeCCtx(cctx);
    size_t both_frames = out.pos;
    /* the same data as one frame with its content size, as hdf5plugin writes it */
    size_t sized = ZSTD_compress(frame + both_frames, cap - both_frames, data, raw, 3);

    struct {
        const char *name;
        const void *bytes;
        size_t n;
    } cases[] = {{"two unsized frames", frame, both_frames}, {"one sized frame", frame + both_frames, sized}};
    for (int c = 0; c < 2; c++) {
        hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        hsize_t dims[2] = {ROWS, COLS};
        hid_t space = H5Screate_simple(2, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
        unsigned level = 3;
        H5Pset_chunk(dcpl, 2, dims);
        H5Pset_filter(dcpl, GALE_H5Z_FILTER_ZSTD, H5Z_FLAG_MANDATORY, 1, &level);
        hid_t d = H5Dcreate2(f, "x", H5T_NATIVE_UINT32, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        hsize_t offset[2] = {0, 0};
        CHECK(H5Dwrite_chunk(d, H5P_DEFAULT, 0, offset, cases[c].n, cases[c].bytes) >= 0);
        H5Dclose(d), H5Pclose(dcpl), H5Sclose(space), H5Fclose(f);

        f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        d = H5Dopen2(f, "x", H5P_DEFAULT);
        memset(back, 0, sizeof back);
        herr_t rc = H5Dread(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, back);
        CHECK_MSG(rc >= 0 && memcmp(back, data, sizeof data) == 0, "zstd filter: %s not decoded", cases[c].name);
        H5Dclose(d), H5Fclose(f);
    }

    /* a damaged frame is a read error, not a crash */
    frame[both_frames + sized / 2] ^= 0x5a;
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[2] = {ROWS, COLS};
    hid_t space = H5Screate_simple(2, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 2, dims);
    H5Pset_filter(dcpl, GALE_H5Z_FILTER_ZSTD, H5Z_FLAG_MANDATORY, 0, NULL);
    hid_t d = H5Dcreate2(f, "x", H5T_NATIVE_UINT32, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    hsize_t offset[2] = {0, 0};
    H5Dwrite_chunk(d, H5P_DEFAULT, 0, offset, sized - 3, frame + both_frames);
    CHECK(H5Dread(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, back) < 0);
    H5Eclear2(H5E_DEFAULT);
    H5Dclose(d), H5Pclose(dcpl), H5Sclose(space), H5Fclose(f);
    free(frame);
    free(path);
}

/* A disk that fills up mid-shard: an error naming the file, nothing left behind. Needs root
 * to mount a 1 MiB tmpfs; skipped with a message otherwise. */
static void test_full_disk(const char *dir)
{
    char *mnt = path_in(dir, "small");
    gale_error err;
    CHECK_OK(gale_mkdir_p(mnt, &err), err);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0) {
        check_skip("full-disk case: cannot mount a tmpfs (%s)", strerror(errno));
        rmdir(mnt);
        free(mnt);
        return;
    }
    char *path = path_in(mnt, "full.h5");
    /* pseudo-random tokens over a large vocabulary barely compress: 3 MB raw fills 1 MiB */
    gale_shard_meta m = fixture_meta(1023, 1 << 20, GALE_SHARD_PRETRAIN);
    gale_shard_writer *w = shard_writer_create(path, &m, 1, &err);
    CHECK_OK(w ? 0 : -1, err);
    int32_t *t = malloc(64 * 1024 * sizeof *t);
    uint16_t *g = calloc(64 * 1024, sizeof *g);
    uint64_t x = 88172645463325252ull;
    int rc = 0;
    for (int batch = 0; w && rc == 0 && batch < 12; batch++) {
        for (int i = 0; i < 64 * 1024; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            t[i] = (int32_t)(x % (1u << 20));
        }
        rc = shard_writer_append(w, t, g, NULL, 64, &err);
    }
    if (w && rc == 0)
        rc = shard_writer_finish(w, 1, &err);
    else if (w)
        shard_writer_abort(w);
    CHECK_ERROR(rc != 0, err, "full.h5: ");
    CHECK_ERROR(rc != 0, err, "No space left on device");
    if (rc != 0)
        printf("full disk reported as: %s\n", err.msg);
    /* nothing under the final name, no temporary left */
    CHECK(!gale_path_exists(path));
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(!gale_path_exists(tmp));
    free(t), free(g), free(path);
    umount(mnt);
    rmdir(mnt);
    free(mnt);
}

int main(void)
{
    char *dir = fixture_tmpdir("shard");
    test_round_trips(dir);
    test_writer_checks(dir);
    test_bad_files(dir);
    test_zstd_frames(dir);
    test_full_disk(dir);
    fixture_remove_tree(dir);
    free(dir);
    return check_report("test_shard");
}
