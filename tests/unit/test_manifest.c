/* test_manifest: a prepared folder's manifest written and read back, and every way a folder can
 * disagree with its manifest refused with the reason. */
#define _GNU_SOURCE
#include "data/manifest.h"

#include <sys/stat.h>

#include "shard_fixture.h"

static gale_manifest fixture_manifest(void)
{
    gale_manifest m;
    manifest_init(&m);
    m.kind = GALE_SHARD_PRETRAIN;
    m.packing = GALE_SHARD_CONCAT;
    m.seq_len = 31;
    m.tokenizer.path = gale_xstrdup("tok/tokenizer.model");
    memcpy(m.tokenizer.sha256, fixture_sha, sizeof fixture_sha);
    m.tokenizer.vocab_size = 32000;
    m.tokenizer.bos_id = 1;
    m.tokenizer.eos_id = 2;
    return m;
}

/* A folder with train-00000 (100 rows), train-00001 (57 rows) and val-00000 (20 rows). */
static void make_folder(const char *dir, gale_manifest *m)
{
    gale_error err;
    gale_shard_meta meta = fixture_meta(31, 32000, GALE_SHARD_PRETRAIN);
    const char *names[3] = {"train-00000.h5", "train-00001.h5", "val-00000.h5"};
    const int64_t rows[3] = {100, 57, 20};
    *m = fixture_manifest();
    for (int i = 0; i < 3; i++) {
        char *path = gale_path_join(dir, names[i]);
        CHECK_OK(fixture_write_shard(path, &meta, i, rows[i], &err), err);
        CHECK_OK(manifest_add_shard(m, dir, names[i], i < 2 ? "train" : "val", &err), err);
        free(path);
    }
    char *input = gale_path_join(dir, "input.txt");
    CHECK_OK(gale_write_file_atomic(input, "some text\n", 10, &err), err);
    CHECK_OK(manifest_add_input(m, input, NULL, &err), err);
    free(input);
    m->config_json = gale_xstrdup("{\"dedup\": {\"near\": true}, \"shard_rows\": 100}");
    CHECK_OK(manifest_write(m, dir, &err), err);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    gale_error err;
    char *path = gale_path_join(dir, name);
    CHECK_OK(gale_write_file_atomic(path, text, strlen(text), &err), err);
    free(path);
}

/* Rewrites manifest.json with one textual substitution. */
static void edit_manifest(const char *dir, const char *from, const char *to)
{
    gale_error err;
    char *path = gale_path_join(dir, GALE_MANIFEST_FILE);
    char *text = gale_read_file(path, NULL, &err);
    char *at = text ? strstr(text, from) : NULL;
    CHECK(at != NULL);
    if (at) {
        char *out = NULL;
        if (asprintf(&out, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from)) < 0)
            abort();
        CHECK_OK(gale_write_file_atomic(path, out, strlen(out), &err), err);
        free(out);
    }
    free(text);
    free(path);
}

static void test_round_trip(const char *dir)
{
    gale_error err;
    gale_manifest written, read;
    make_folder(dir, &written);
    CHECK_OK(manifest_load(&read, dir, 1, &err), err);
    CHECK(read.version == 1 && read.kind == GALE_SHARD_PRETRAIN && read.packing == GALE_SHARD_CONCAT);
    CHECK(read.seq_len == 31 && read.created_at[0]);
    CHECK(!strcmp(read.tokenizer.path, "tok/tokenizer.model") && !strcmp(read.tokenizer.sha256, fixture_sha));
    CHECK(read.tokenizer.vocab_size == 32000 && read.tokenizer.bos_id == 1 && read.tokenizer.eos_id == 2);
    CHECK(read.n_inputs == 1 && read.inputs[0].bytes == 10 && read.inputs[0].sha256[0] == 0);
    CHECK(read.n_shards == 3);
    for (size_t i = 0; i < 3 && read.n_shards == 3; i++) {
        CHECK(!strcmp(read.shards[i].file, written.shards[i].file));
        CHECK(!strcmp(read.shards[i].split, written.shards[i].split));
        CHECK(read.shards[i].rows == written.shards[i].rows);
        CHECK(read.shards[i].n_docs == written.shards[i].rows * 2);
        CHECK(read.shards[i].n_real_tokens == written.shards[i].n_real_tokens);
        CHECK(!strcmp(read.shards[i].sha256, written.shards[i].sha256));
    }
    CHECK(manifest_split_rows(&read, "train") == 157 && manifest_split_rows(&read, "val") == 20);
    CHECK(read.config_json && strstr(read.config_json, "\"shard_rows\":100"));
    manifest_free(&read);

    /* a shard that disagrees with the manifest cannot be added */
    gale_shard_meta other = fixture_meta(15, 32000, GALE_SHARD_PRETRAIN);
    char *path = gale_path_join(dir, "odd.h5");
    CHECK_OK(fixture_write_shard(path, &other, 0, 3, &err), err);
    CHECK_ERROR(manifest_add_shard(&written, dir, "odd.h5", "train", &err) != 0, err,
                "seq_len 15, the manifest says 31");
    CHECK_ERROR(manifest_add_shard(&written, dir, "train-00000.h5", "train", &err) != 0, err, "listed twice");
    CHECK_ERROR(manifest_add_shard(&written, dir, "../x.h5", "train", &err) != 0, err, "plain file name");
    CHECK_ERROR(manifest_add_shard(&written, dir, "val-00000.h5", "test", &err) != 0, err, "split 'test'");
    /* and a folder holding a shard the manifest does not list is refused */
    CHECK_ERROR(manifest_load(&read, dir, 0, &err) != 0, err, "odd.h5 is not listed in manifest.json");
    unlink(path);
    free(path);
    manifest_free(&written);
}

static void test_refusals(const char *root)
{
    gale_error err;
    gale_manifest m, got;
    char *dir = gale_path_join(root, "refusals");
    gale_mkdir_p(dir, &err);
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "no manifest.json");
    make_folder(dir, &m);

    char *shard = gale_path_join(dir, "train-00001.h5"), *moved = gale_path_join(dir, "moved");
    rename(shard, moved);
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "lists train-00001.h5 but the file is missing");
    rename(moved, shard);
    CHECK_OK(manifest_load(&got, dir, 0, &err), err);
    manifest_free(&got);

    /* other contents: the size recorded in the manifest tells at once, before HDF5 reads it */
    gale_shard_meta meta = fixture_meta(31, 32000, GALE_SHARD_PRETRAIN);
    CHECK_OK(fixture_write_shard(shard, &meta, 77, 57, &err), err);
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "train-00001.h5: ");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, " bytes, manifest.json says ");
    /* without recorded sizes (older manifests) the other checks remain: same rows, other
     * contents, only the checksum tells */
    CHECK_OK(manifest_read(&got, dir, &err), err);
    for (size_t i = 0; i < got.n_shards; i++) {
        char bytes[64];
        snprintf(bytes, sizeof bytes, ",\n      \"bytes\": %lld", (long long)got.shards[i].bytes);
        edit_manifest(dir, bytes, "");
    }
    manifest_free(&got);
    CHECK_OK(manifest_load(&got, dir, 0, &err), err);
    CHECK(got.shards[0].bytes == -1);
    manifest_free(&got);
    CHECK_ERROR(manifest_load(&got, dir, 1, &err) != 0, err, "train-00001.h5: SHA-256");
    /* fewer rows */
    CHECK_OK(fixture_write_shard(shard, &meta, 1, 50, &err), err);
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "train-00001.h5: has 50 rows, manifest.json says 57");
    /* a shard replaced by a file that is not one */
    write_text(dir, "train-00001.h5", "not hdf5");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "train-00001.h5: not an HDF5 file");
    CHECK_OK(fixture_write_shard(shard, &meta, 1, 57, &err), err);
    CHECK_OK(manifest_load(&got, dir, 1, &err), err);
    manifest_free(&got);

    /* the manifest itself: bad JSON, missing and mistyped keys, bad values */
    edit_manifest(dir, "\"seq_len\": 31", "\"seq_len\": 63");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "seq_len 31, the manifest says 63");
    edit_manifest(dir, "\"seq_len\": 63", "\"seq_len\": \"31\"");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "manifest.json: key 'seq_len' must be an integer");
    edit_manifest(dir, "\"seq_len\": \"31\"", "\"seq_len\": 31");
    edit_manifest(dir, "\"rows\": 57", "\"rows\": 58");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "has 57 rows, manifest.json says 58");
    edit_manifest(dir, "\"rows\": 58", "\"rowz\": 57");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "key 'shards[1].rows' is missing");
    edit_manifest(dir, "\"rowz\": 57", "\"rows\": 57");
    edit_manifest(dir, "\"split\": \"val\"", "\"split\": \"dev\"");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "'shards[2].split' = 'dev' must be 'train' or 'val'");
    edit_manifest(dir, "\"split\": \"dev\"", "\"split\": \"val\"");
    edit_manifest(dir, "\"kind\": \"pretrain\"", "\"kind\": \"sft\"");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "kind pretrain, packing concat; the manifest says sft");
    edit_manifest(dir, "\"kind\": \"sft\"", "\"kind\": \"pretrain\"");
    edit_manifest(dir, "\"format\": \"gale-dataset\"", "\"format\": \"other\"");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "key 'format' is 'other'");
    edit_manifest(dir, "\"format\": \"other\"", "\"format\": \"gale-dataset\"");
    edit_manifest(dir, "\"file\": \"val-00000.h5\"", "\"file\": \"../val-00000.h5\"");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "must be a plain file name");
    edit_manifest(dir, "\"file\": \"../val-00000.h5\"", "\"file\": \"val-00000.h5\"");
    CHECK_OK(manifest_load(&got, dir, 1, &err), err);
    manifest_free(&got);
    edit_manifest(dir, "\"shards\": [", "\"shards\": [1, ");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "manifest.json: 'shards[0]' must be an object");
    edit_manifest(dir, "\"shards\": [1, ", "\"shards\": [");
    edit_manifest(dir, "\"shards\": [", "\"shards\": [,");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "manifest.json:");
    write_text(dir, GALE_MANIFEST_FILE, "[1, 2]");
    CHECK_ERROR(manifest_load(&got, dir, 0, &err) != 0, err, "must hold a JSON object");

    manifest_free(&m);
    free(shard), free(moved), free(dir);
}

int main(void)
{
    char *dir = fixture_tmpdir("manifest");
    test_round_trip(dir);
    test_refusals(dir);
    fixture_remove_tree(dir);
    free(dir);
    return check_report("test_manifest");
}
