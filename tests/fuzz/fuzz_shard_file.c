/* fuzz_shard_file: libFuzzer over whole shard files as gale_shard reads them (shard_open, every
 * row, the storage summary). Random bytes rarely get past HDF5's superblock, so an input that
 * does not start with the HDF5 signature is a list of changes to a real shard written at
 * start-up by the shard writer (pretraining or SFT, three chunks per dataset): byte 0 picks
 * the shard, then each 4 bytes are an offset (24 bits, modulo the file size) and a byte to XOR
 * there. An input that starts with the signature is the file itself. Any file must open and
 * read, or fail with a message: never a crash, an overrun or a hang. */
#define _GNU_SOURCE
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/shard.h"
#include "tests/unit/shard_fixture.h"

#define ROWS 600  /* with seq_len 31: three chunks of up to 256 rows */

static uint8_t *base[2];
static size_t base_size[2];
static char path[256];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    gale_error err;
    char *dir = fixture_tmpdir("fuzz-shard");
    for (int k = 0; k < 2; k++) {
        char *p = gale_path_join(dir, k ? "sft.h5" : "pretrain.h5");
        gale_shard_meta meta = fixture_meta(31, 32000, k ? GALE_SHARD_SFT : GALE_SHARD_PRETRAIN);
        if (fixture_write_shard(p, &meta, 5 + k, ROWS, &err) != 0 || !(base[k] = (uint8_t *)gale_read_file(p, &base_size[k], &err))) {
            fprintf(stderr, "fuzz_shard_file: %s\n", err.msg);
            abort();
        }
        free(p);
    }
    fixture_remove_tree(dir);
    free(dir);
    snprintf(path, sizeof path, "%s/gale-fuzz-shard-%d.h5", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (int)getpid());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    uint8_t *file;
    size_t file_size;
    if (size >= sizeof signature && !memcmp(data, signature, sizeof signature)) {
        file = malloc(size);
        memcpy(file, data, size);
        file_size = size;
    } else {
        int k = size > 0 ? data[0] & 1 : 0;
        file_size = base_size[k];
        file = malloc(file_size);
        memcpy(file, base[k], file_size);
        for (size_t i = 1; i + 4 <= size; i += 4)
            file[((size_t)data[i] | (size_t)data[i + 1] << 8 | (size_t)data[i + 2] << 16) % file_size] ^= data[i + 3];
    }
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(file, 1, file_size, f) != file_size || fclose(f) != 0)
        abort();
    free(file);

    gale_error err;
    gale_shard *s = shard_open(path, &err);
    if (s) {
        int S = shard_meta(s)->seq_len + 1;
        enum { BATCH = 64 };
        int32_t *tokens = malloc((size_t)BATCH * S * sizeof *tokens);
        uint16_t *segments = malloc((size_t)BATCH * S * sizeof *segments);
        uint8_t *mask = malloc((size_t)BATCH * S);
        for (int64_t row = 0; row < shard_rows(s); row += BATCH) {
            size_t n = shard_rows(s) - row < BATCH ? (size_t)(shard_rows(s) - row) : BATCH;
            if (shard_read_rows(s, row, n, tokens, segments, mask, &err) != 0)
                break;
        }
        gale_shard_storage storage;
        shard_storage(s, &storage, &err);
        free(tokens);
        free(segments);
        free(mask);
        shard_close(s);
    }
    unlink(path);
    return 0;
}
