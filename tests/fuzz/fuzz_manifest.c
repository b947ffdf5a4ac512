/* fuzz_manifest: libFuzzer over manifest_read (as manifest.json of a scratch folder) and
 * loader_position_from_json: any bytes are refused with a message or read into a manifest
 * that writes back and reads again to the same values. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/loader.h"
#include "data/manifest.h"
#include "util/file.h"

static void same_or_abort(const gale_manifest *a, const gale_manifest *b)
{
    if (a->kind != b->kind || a->packing != b->packing || a->seq_len != b->seq_len || a->n_shards != b->n_shards ||
        a->n_inputs != b->n_inputs || strcmp(a->tokenizer.sha256, b->tokenizer.sha256) != 0 ||
        strcmp(a->tokenizer.path, b->tokenizer.path) != 0 || a->tokenizer.vocab_size != b->tokenizer.vocab_size)
        abort();
    for (size_t i = 0; i < a->n_shards; i++)
        if (strcmp(a->shards[i].file, b->shards[i].file) != 0 || strcmp(a->shards[i].split, b->shards[i].split) != 0 ||
            a->shards[i].rows != b->shards[i].rows || strcmp(a->shards[i].sha256, b->shards[i].sha256) != 0)
            abort();
    if ((a->config_json == NULL) != (b->config_json == NULL))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char dir[] = "/tmp/gale-fuzz-manifest-XXXXXX";
    if (!mkdtemp(dir))
        return 0;
    gale_error err;
    char *path = gale_path_join(dir, GALE_MANIFEST_FILE);
    gale_manifest m, again;
    FILE *f = fopen(path, "wb");
    int written = f && fwrite(data, 1, size, f) == size;
    if (f)
        fclose(f);
    if (written && manifest_read(&m, dir, &err) == 0) {
        if (manifest_write(&m, dir, &err) != 0 || manifest_read(&again, dir, &err) != 0)
            abort();
        same_or_abort(&m, &again);
        manifest_free(&again);
        manifest_free(&m);
    }
    json_error_t jerr;
    json_t *j = json_loadb((const char *)data, size, 0, &jerr);
    gale_loader_position pos;
    if (j && loader_position_from_json(j, &pos, &err) == 0 && pos.n_sources > GALE_LOADER_MAX_SOURCES)
        abort();
    json_decref(j);
    gale_remove_tree(dir, &err);
    free(path);
    return 0;
}
