/* test_prepare_reader: the inputs of `gale prepare`: every text mode, JSONL with plain and
 * nested keys, gzip and zstd files, malformed records (bad JSON, missing key, invalid UTF-8,
 * empty) flagged with their line, a truncated .gz and a folder given as a file reported
 * without a crash; input expansion (folders, globs, excludes); normalisation forms; and the
 * prepare config's errors naming key and line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>
#include <zstd.h>

#include "check.h"
#include "data/normalize.h"
#include "data/prepare_config.h"
#include "data/reader.h"
#include "util/file.h"

#define N_LINES 20000

static char dir[] = "/tmp/gale-test-reader-XXXXXX";

static char *write_file(const char *name, const void *data, size_t len)
{
    char *path = gale_path_join(dir, name);
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, len, f);
    fclose(f);
    return path;
}

typedef struct got_record {
    record_status status;
    uint64_t line;
    char text[128];
    char detail[160];
    size_t near_from;
} got_record;

/* Reads every record of path; returns the count (-1 when the file could not be opened or
 * read further; *read_error tells which records came before). */
static int read_all(const char *path, const reader_options *opt, got_record *out, int max, int *read_error)
{
    gale_error err;
    doc_reader *r = reader_open(path, opt, &err);
    if (!r)
        return -1;
    int n = 0, got;
    reader_record rec;
    while ((got = reader_next(r, &rec, &err)) == 1 && n < max) {
        out[n].status = rec.status;
        out[n].line = rec.line;
        size_t len = rec.status == RECORD_OK || rec.status == RECORD_EMPTY ? rec.len : 0;
        if (len > 127)
            len = 127;
        memcpy(out[n].text, rec.text ? rec.text : "", len);
        out[n].text[len] = 0;
        snprintf(out[n].detail, sizeof out[n].detail, "%s", rec.detail ? rec.detail : "");
        out[n].near_from = rec.near_from;
        n++;
    }
    if (read_error) {
        *read_error = got < 0;
        if (got < 0)
            CHECK(strstr(err.msg, path) != NULL);
    }
    reader_close(r);
    return n;
}

static void test_text_modes(void)
{
    const char text[] = "first doc\nstill first\n\n\nsecond doc\r\n%\nthird\n%\n%\nfourth\n";
    char *path = write_file("modes.txt", text, strlen(text));
    got_record g[16];
    reader_options opt = {.mode = TEXT_MODE_DOCUMENT, .separator = "%", .json_key = "text"};

    CHECK(read_all(path, &opt, g, 16, NULL) == 1);
    CHECK(g[0].line == 1 && g[0].status == RECORD_OK && !strncmp(g[0].text, "first doc\nstill first", 21));

    opt.mode = TEXT_MODE_LINES;
    int n = read_all(path, &opt, g, 16, NULL);
    CHECK(n == 10);
    CHECK(g[0].line == 1 && !strcmp(g[0].text, "first doc"));
    CHECK(g[2].line == 3 && g[2].status == RECORD_EMPTY);
    CHECK(g[4].line == 5 && !strcmp(g[4].text, "second doc")); /* \r\n stripped */

    opt.mode = TEXT_MODE_PARAGRAPHS;
    n = read_all(path, &opt, g, 16, NULL);
    CHECK(n == 2);
    CHECK(g[0].line == 1 && !strcmp(g[0].text, "first doc\nstill first"));
    CHECK(g[1].line == 5 && !strncmp(g[1].text, "second doc\n%\nthird", 18));

    opt.mode = TEXT_MODE_SEPARATOR;
    n = read_all(path, &opt, g, 16, NULL);
    CHECK(n == 4);
    CHECK(g[0].line == 1 && !strcmp(g[0].text, "first doc\nstill first\n\n\nsecond doc"));
    CHECK(g[1].line == 7 && !strcmp(g[1].text, "third"));
    CHECK(g[2].line == 9 && g[2].status == RECORD_EMPTY); /* "%\n%" holds an empty record */
    CHECK(g[3].line == 10 && !strcmp(g[3].text, "fourth"));
    free(path);

    char *empty = write_file("empty.txt", "", 0);
    opt.mode = TEXT_MODE_DOCUMENT;
    CHECK(read_all(empty, &opt, g, 16, NULL) == 1 && g[0].status == RECORD_EMPTY);
    free(empty);
}

static void test_jsonl(void)
{
    const char text[] = "{\"text\": \"alpha\", \"meta\": {\"body\": \"nested\"}}\n"
                        "{\"text\": \"beta\"\n"                  /* 2: bad JSON */
                        "\n"                                     /* 3: blank, skipped */
                        "{\"other\": 1}\n"                       /* 4: missing key */
                        "{\"text\": 5}\n"                        /* 5: not a string */
                        "{\"text\": \"bad \xff\xfe utf8\"}\n"    /* 6: invalid UTF-8 */
                        "{\"text\": \"   \\n  \"}\n"             /* 7: empty */
                        "[1, 2]\n"                               /* 8: not an object */
                        "{\"text\": \"caf\\u00e9 \\ud83d\\ude00\"}"; /* 9: no final newline */
    char *path = write_file("data.jsonl", text, strlen(text));
    got_record g[16];
    reader_options opt = {.json_key = "text"};
    int n = read_all(path, &opt, g, 16, NULL);
    CHECK(n == 8);
    CHECK(g[0].line == 1 && g[0].status == RECORD_OK && !strcmp(g[0].text, "alpha"));
    CHECK(g[1].line == 2 && g[1].status == RECORD_BAD_JSON);
    CHECK(g[2].line == 4 && g[2].status == RECORD_MISSING_KEY);
    CHECK(g[3].line == 5 && g[3].status == RECORD_MISSING_KEY);
    CHECK(g[4].line == 6 && g[4].status == RECORD_INVALID_UTF8);
    CHECK(g[5].line == 7 && g[5].status == RECORD_EMPTY);
    CHECK(g[6].line == 8 && g[6].status == RECORD_BAD_JSON);
    CHECK(g[7].line == 9 && g[7].status == RECORD_OK && !strcmp(g[7].text, "caf\xc3\xa9 \xf0\x9f\x98\x80"));

    opt.json_key = "meta.body";
    n = read_all(path, &opt, g, 16, NULL);
    CHECK(n == 8 && g[0].status == RECORD_OK && !strcmp(g[0].text, "nested"));
    CHECK(g[7].status == RECORD_MISSING_KEY);
    free(path);

    /* conversations: the text puts the system prompt first and near dedup starts after it */
    const char chat[] =
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", "
        "\"content\": \"hello\"}]}\n"
        "{\"messages\": 3}\n"
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": \"gpt\", \"value\": \"yo\"}, "
        "{\"from\": \"system\", \"value\": \"be brief\"}]}\n"
        "{\"text\": \"not a chat\"}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", "
        "\"content\": \"hello\", \"weight\": 0}]}\n"
        "{\"turns\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n";
    path = write_file("chat.jsonl", chat, strlen(chat));
    opt.conversations = 1;
    n = read_all(path, &opt, g, 16, NULL);
    CHECK(n == 6 && g[0].status == RECORD_OK && !strcmp(g[0].text, "hi\nhello\n") && g[0].near_from == 0);
    CHECK(g[1].status == RECORD_INVALID_CONVERSATION && g[1].line == 2 &&
          !strcmp(g[1].detail, "messages: expected an array of messages, got a number"));
    CHECK(g[2].status == RECORD_OK && !strcmp(g[2].text, "be brief\nhi\nyo\n") && g[2].near_from == 9);
    CHECK(g[3].status == RECORD_MISSING_KEY && strstr(g[3].detail, "--chat-key"));
    CHECK(g[4].status == RECORD_UNTRAINED && strstr(g[4].detail, "nothing to learn"));
    CHECK(g[5].status == RECORD_MISSING_KEY);
    opt.chat_key = "turns";
    n = read_all(path, &opt, g, 16, NULL);
    CHECK(n == 6 && g[5].status == RECORD_OK && !strcmp(g[5].text, "a\nb\n"));
    CHECK(g[0].status == RECORD_MISSING_KEY && !strcmp(g[0].detail, "missing key \"turns\""));
    free(path);
}

static void test_compressed(void)
{
    /* 20000 lines of poorly compressible text, so the stream crosses several read blocks
     * and zstd blocks, and a file cut in half still holds whole blocks */
    gale_bytes plain = {0};
    for (int i = 1; i <= N_LINES; i++) {
        char line[128];
        int k = snprintf(line, sizeof line, "{\"text\": \"document number %d of the compressed file %08x\"}\n", i,
                         (unsigned)(i * 2654435761u));
        gale_bytes_append(&plain, line, (size_t)k);
    }
    char *gz_path = gale_path_join(dir, "big.jsonl.gz");
    gzFile gz = gzopen(gz_path, "wb");
    gzwrite(gz, plain.v, (unsigned)plain.n);
    gzclose(gz);
    size_t bound = ZSTD_compressBound(plain.n);
    char *z = malloc(bound);
    size_t zn = ZSTD_compress(z, bound, plain.v, plain.n, 3);
    char *zst_path = write_file("big.jsonl.zst", z, zn);

    reader_options opt = {.json_key = "text"};
    static got_record g[N_LINES + 1];
    int read_error;
    CHECK(read_all(gz_path, &opt, g, N_LINES + 1, &read_error) == N_LINES && !read_error);
    CHECK(g[N_LINES - 1].line == N_LINES && !strncmp(g[N_LINES - 1].text, "document number 20000 of", 24));
    CHECK(read_all(zst_path, &opt, g, N_LINES + 1, &read_error) == N_LINES && !read_error);
    CHECK(g[1233].line == 1234 && !strncmp(g[1233].text, "document number 1234 of", 23));

    /* truncated: the records before the cut come back, then a read error naming the file */
    size_t gz_len;
    char *gz_bytes = gale_read_file(gz_path, &gz_len, NULL);
    char *cut_gz = write_file("cut.jsonl.gz", gz_bytes, gz_len / 2);
    char *cut_zst = write_file("cut.jsonl.zst", z, zn / 2);
    int n = read_all(cut_gz, &opt, g, N_LINES + 1, &read_error);
    CHECK(read_error && n > 1000 && n < N_LINES);
    n = read_all(cut_zst, &opt, g, N_LINES + 1, &read_error);
    CHECK(read_error && n > 1000 && n < N_LINES);
    /* garbage that claims to be zstd */
    char *junk = write_file("junk.txt.zst", "this is not zstd at all", 23);
    opt.mode = TEXT_MODE_LINES;
    CHECK(read_all(junk, &opt, g, 10, &read_error) == 0 && read_error);

    /* a folder or a missing file cannot be opened: NULL with the path in the message */
    gale_error err;
    CHECK(reader_open(dir, &opt, &err) == NULL && strstr(err.msg, dir));
    CHECK(reader_open("/nonexistent/gale.txt", &opt, &err) == NULL && strstr(err.msg, "/nonexistent/gale.txt"));

    free(gz_bytes);
    free(z);
    free(gz_path);
    free(zst_path);
    free(cut_gz);
    free(cut_zst);
    free(junk);
    gale_bytes_free(&plain);
}

/* Byte ranges cut anywhere (inside a line, on a newline, at a line start) give every
 * record of the whole file exactly once, with its line number, when each range's first line
 * number comes from the newline counts of the ranges before it (as the pipeline does). */
static void test_ranges(void)
{
    gale_bytes text = {0};
    for (int i = 1; i <= 500; i++) {
        char line[96];
        int k = i % 7 == 0 ? snprintf(line, sizeof line, "\n") /* blank: skipped, but counted */
                           : snprintf(line, sizeof line, "{\"text\": \"line %d %.*s\"}\n", i, i % 40, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        gale_bytes_append(&text, line, (size_t)k);
    }
    const char *last = "{\"text\": \"last, no newline\"}";
    gale_bytes_append(&text, last, strlen(last));
    char *path = write_file("ranges.jsonl", text.v, text.n);
    reader_options opt = {.json_key = "text"};
    CHECK(reader_splittable(path, &opt) && !reader_splittable("x.jsonl.gz", &opt));
    static got_record whole[600], part[600];
    int n_whole = read_all(path, &opt, whole, 600, NULL);
    CHECK(n_whole == 500 - 500 / 7 + 1);

    uint64_t seed = 99;
    for (int trial = 0; trial < 40; trial++) {
        /* cut points: random, plus a newline byte and a line start */
        uint64_t cuts[8];
        int n_cuts = 1 + trial % 6;
        for (int k = 0; k < n_cuts; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            cuts[k] = 1 + (seed >> 33) % (text.n - 1);
        }
        if (trial == 0)
            cuts[0] = (uint64_t)((char *)memchr(text.v + 100, '\n', text.n - 100) - (char *)text.v);
        if (trial == 1)
            cuts[0] = (uint64_t)((char *)memchr(text.v + 100, '\n', text.n - 100) - (char *)text.v) + 1;
        for (int a = 0; a < n_cuts; a++)
            for (int b = a + 1; b < n_cuts; b++)
                if (cuts[b] < cuts[a]) {
                    uint64_t t = cuts[a];
                    cuts[a] = cuts[b];
                    cuts[b] = t;
                }
        uint64_t bounds[10] = {0};
        for (int k = 0; k < n_cuts; k++)
            bounds[k + 1] = cuts[k];
        bounds[n_cuts + 1] = text.n;
        int got = 0;
        uint64_t newlines_before = 0;
        for (int k = 0; k <= n_cuts; k++) {
            uint64_t s = bounds[k], e = bounds[k + 1], count;
            if (s == e)
                continue;
            uint64_t first_line = s == 0 ? 1 : newlines_before + 2;
            CHECK(reader_count_newlines(path, s == 0 ? 0 : s - 1, e - 1, &count, NULL) == 0);
            newlines_before += count;
            gale_error err;
            doc_reader *r = reader_open_range(path, &opt, s, e, first_line, &err);
            CHECK(r != NULL);
            reader_record rec;
            while (r && reader_next(r, &rec, &err) == 1 && got < 600) {
                part[got].line = rec.line;
                size_t len = rec.len > 127 ? 127 : rec.len;
                memcpy(part[got].text, rec.text, len);
                part[got].text[len] = 0;
                got++;
            }
            reader_close(r);
        }
        CHECK(got == n_whole);
        for (int i = 0; i < got && got == n_whole; i++)
            if (part[i].line != whole[i].line || strcmp(part[i].text, whole[i].text)) {
                FAIL("trial %d record %d: line %llu '%s' vs %llu '%s'", trial, i,
                        (unsigned long long)part[i].line, part[i].text, (unsigned long long)whole[i].line,
                        whole[i].text);
                break;
            }
    }
    free(path);
    gale_bytes_free(&text);
}

static void test_expand(void)
{
    char *sub = gale_path_join(dir, "tree/b");
    gale_mkdir_p(sub, NULL);
    free(write_file("tree/z.txt", "z", 1));
    free(write_file("tree/a.txt", "a", 1));
    free(write_file("tree/b/c.txt", "c", 1));
    free(write_file("tree/b/skip.dat", "x", 1));
    char *tree = gale_path_join(dir, "tree");
    char *glob = gale_path_join(dir, "tree/*.txt");
    const char *inputs[] = {tree, glob};
    const char *excludes[] = {"*.dat"};
    char **paths;
    size_t n;
    gale_error err;
    CHECK(reader_expand_inputs(inputs, 2, excludes, 1, &paths, &n, &err) == 0);
    CHECK(n == 5);
    if (n == 5) {
        CHECK(strstr(paths[0], "tree/a.txt") && strstr(paths[1], "tree/b/c.txt") && strstr(paths[2], "tree/z.txt"));
        CHECK(strstr(paths[3], "tree/a.txt") && strstr(paths[4], "tree/z.txt"));
    }
    reader_free_paths(paths, n);
    const char *missing[] = {"/nonexistent/file.txt"};
    CHECK(reader_expand_inputs(missing, 1, NULL, 0, &paths, &n, &err) < 0 && strstr(err.msg, "/nonexistent/file.txt"));
    const char *nomatch[] = {"/nonexistent/*.txt"};
    CHECK(reader_expand_inputs(nomatch, 1, NULL, 0, &paths, &n, &err) < 0 && strstr(err.msg, "names no file"));
    free(sub);
    free(tree);
    free(glob);
}

static void test_normalize(void)
{
    gale_bytes out = {0};
    const char *s = "  Héllo,\t WORLD!\n\n Ça   va? 1999 \xe2\x80\x94 \xc5\x81\xc3\xb3" "d\xc5\xba  ";
    normalize_exact(s, strlen(s), &out);
    CHECK(out.n == strlen("héllo, world! ça va? 1999 \xe2\x80\x94 \xc5\x82\xc3\xb3" "d\xc5\xba") &&
          !memcmp(out.v, "héllo, world! ça va? 1999 \xe2\x80\x94 \xc5\x82\xc3\xb3" "d\xc5\xba", out.n));
    normalize_near(s, strlen(s), &out);
    CHECK(out.n == strlen("hello world ca va 0000 lodz") && !memcmp(out.v, "hello world ca va 0000 lodz", out.n));
    /* Greek and Cyrillic capitals fold; a combining accent is dropped */
    const char *g = "\xce\x91\xce\x92\xce\x93 \xd0\x90\xd0\x91 e\xcc\x81t\xc3\xa9";
    normalize_near(g, strlen(g), &out);
    CHECK(out.n == strlen("\xce\xb1\xce\xb2\xce\xb3 \xd0\xb0\xd0\xb1 ete") &&
          !memcmp(out.v, "\xce\xb1\xce\xb2\xce\xb3 \xd0\xb0\xd0\xb1 ete", out.n));
    gale_bytes_free(&out);

    CHECK(utf8_valid("plain", 5));
    CHECK(utf8_valid("\xf0\x9f\x98\x80", 4));
    CHECK(!utf8_valid("\xc0\xaf", 2));         /* overlong '/' */
    CHECK(!utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    CHECK(!utf8_valid("\xf4\x90\x80\x80", 4)); /* past U+10FFFF */
    CHECK(!utf8_valid("\xe2\x82", 2));         /* truncated */
    CHECK(utf8_length("h\xc3\xa9\xf0\x9f\x98\x80", 7) == 3);
}

static void test_config(void)
{
    prepare_config c;
    prepare_config_init(&c);
    gale_error err;
    const char good[] = "inputs:\n  - a.txt\n  - 'b/*.jsonl'\ntokenizer: t.model\nout: o\nseq_len: 1024\n"
                        "dedup: exact\nkind: sft\nnear_threshold: 0.9\noverwrite: yes\n";
    CHECK(prepare_config_parse_yaml(&c, good, strlen(good), "good.yaml", &err) == 0);
    CHECK(c.inputs.n == 2 && !strcmp(c.inputs.v[1], "b/*.jsonl"));
    CHECK(c.seq_len == 1024 && c.dedup_exact && !c.dedup_near && c.kind == 1 && c.near_threshold == 0.9);
    CHECK(c.overwrite == 1 && prepare_config_check(&c, &err) == 0);
    CHECK(prepare_config_set(&c, "seq_len", "4096", "flag --seq-len", &err) == 0 && c.seq_len == 4096);
    CHECK(prepare_config_set(&c, "packing", "concat", "flag --packing", &err) == 0);
    CHECK(prepare_config_check(&c, &err) < 0 && strstr(err.msg, "concat"));

    struct {
        const char *yaml, *expect;
    } bad[] = {
        {"out: o\nseq_lenn: 5\n", "bad.yaml:2: unknown key 'seq_lenn'"},
        {"seq_len: many\n", "bad.yaml:1: seq_len must be an integer"},
        {"tokenizer: t\nseq_len: 0\n", "bad.yaml:2: seq_len = 0 is out of range"},
        {"near_threshold: 1.5\n", "bad.yaml:1: near_threshold = 1.5 is out of range"},
        {"kind: chat\n", "bad.yaml:1: kind must be one of pretrain, sft"},
        {"\n\ndedup: fuzzy\n", "bad.yaml:3: dedup must be"},
        {"inputs: {a: 1}\n", "bad.yaml:1: inputs must be a string or a list"},
        {"seq_len: [1, 2]\n", "bad.yaml:1: seq_len must be a single value"},
        {"out: [unclosed\n", "bad.yaml:2: YAML error"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        prepare_config b;
        prepare_config_init(&b);
        int rc = prepare_config_parse_yaml(&b, bad[i].yaml, strlen(bad[i].yaml), "bad.yaml", &err);
        CHECK(rc < 0);
        CHECK_MSG(rc >= 0 || strstr(err.msg, bad[i].expect), "expected '%s' in '%s'", bad[i].expect, err.msg);
        prepare_config_free(&b);
    }
    prepare_config_free(&c);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_text_modes();
    test_jsonl();
    test_compressed();
    test_ranges();
    test_expand();
    test_normalize();
    test_config();
    gale_remove_tree(dir, NULL);
    return check_report("test_prepare_reader");
}
