/* fuzz_prepare_reader: any bytes as a `gale prepare` input: as JSONL (plain key, nested key,
 * conversations in any chat format, under their own keys or --chat-key's), as text in every
 * text mode, and as .gz and .zst data. Every record comes back with a status (a rejected
 * conversation with its reason), an OK record is well-formed UTF-8 with its line inside the file, and
 * its normal forms and shingles are computed without fault; a corrupt stream ends with an
 * error message. The first byte of the input picks the mode. Also feeds the bytes to the
 * prepare config's YAML parser. Run e.g.
 *   ./fuzz_prepare_reader -max_total_time=60 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/minhash.h"
#include "data/normalize.h"
#include "data/prepare_config.h"
#include "data/reader.h"

static char path_base[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const char *const suffix[] = {".jsonl", ".jsonl", ".jsonl", ".txt", ".txt",
                                         ".txt",   ".txt",   ".jsonl.gz", ".txt.zst"};
    unsigned pick = data[0] % 9;
    if (!path_base[0])
        snprintf(path_base, sizeof path_base, "/tmp/fuzz-prepare-reader-%d", (int)getpid());
    char path[96];
    snprintf(path, sizeof path, "%s%s", path_base, suffix[pick]);
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    fwrite(data + 1, 1, size - 1, f);
    fclose(f);

    reader_options opt = {.mode = (text_mode)(pick >= 3 && pick <= 6 ? pick - 3 : TEXT_MODE_LINES),
                          .separator = "%",
                          .json_key = pick == 1 ? "meta.body" : "text",
                          .conversations = pick == 2,
                          .chat_key = data[0] / 9 % 2 ? "dialog" : NULL};
    gale_error err;
    doc_reader *r = reader_open(path, &opt, &err);
    if (r) {
        minhash_params mp = minhash_default_params();
        minhasher *m = minhasher_create(&mp);
        gale_bytes norm = {0};
        shingle_set set = {0};
        reader_record rec;
        int got;
        while ((got = reader_next(r, &rec, &err)) == 1) {
            if (rec.line < 1 || (pick < 7 && rec.line > size + 1))
                abort();
            if ((rec.status == RECORD_INVALID_CONVERSATION || rec.status == RECORD_UNTRAINED) && !rec.detail)
                abort();
            if (rec.status != RECORD_OK)
                continue;
            if (rec.near_from > rec.len || (opt.conversations && !rec.json))
                abort();
            if (!utf8_valid(rec.text, rec.len))
                abort();
            normalize_exact(rec.text, rec.len, &norm);
            if (!utf8_valid((const char *)norm.v, norm.n))
                abort();
            normalize_near(rec.text, rec.len, &norm);
            minhash_shingles(m, (const char *)norm.v, norm.n, &set);
            for (size_t i = 1; i < set.n; i++)
                if (set.v[i - 1] >= set.v[i])
                    abort();
        }
        if (got < 0 && !strstr(err.msg, path))
            abort();
        gale_bytes_free(&norm);
        shingle_set_free(&set);
        minhasher_free(m);
        reader_close(r);
    }
    unlink(path);

    prepare_config c;
    prepare_config_init(&c);
    prepare_config_parse_yaml(&c, (const char *)data + 1, size - 1, "fuzz.yaml", &err);
    prepare_config_free(&c);
    return 0;
}
