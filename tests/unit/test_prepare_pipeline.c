/* test_prepare_pipeline: `gale prepare` end to end, in process, over a small corpus whose
 * every fate is known: JSONL (plain, .gz, .zst) and a text file with exact duplicates
 * (case and spacing), near duplicates (punctuation, digits), bad JSON, a missing key,
 * invalid UTF-8, empty, too short and too long records. Checks report.json's counts, the
 * --removed lines (reason, file, line, duplicate_of), the refusal of an existing output,
 * and that the shards, read back through the shard reader and decoded, hold exactly the
 * kept documents between BOS and EOS with the right segments. An SFT run checks that a
 * conversation the chat template refuses is counted and that rows carry the template's ids
 * and loss mask, a ShareGPT record's those of the same messages; 50 conversations sharing a
 * long system prompt are not near duplicates of each other. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <zlib.h>
#include <zstd.h>

#include "check.h"
#include "data/chat.h"
#include "data/manifest.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "util/file.h"

static char dir[] = "/tmp/gale-test-pipeline-XXXXXX";
static char tokenizer_path[1024];

static const char *const kept_docs[] = {
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "A long document about gardening: tomatoes need sun, water, and patience; peppers like warmth, basil loves "
    "company, and weeds never sleep at all.",
    "Completely different text about sailing boats across the windy northern sea in winter.",
    "Numbers 1234 and 5678 appear in this sentence about counting sheep at night slowly.",
    "One more plain line of text that stands on its own without any duplicate.",
};

static char *path_in(const char *name)
{
    return gale_path_join(dir, name);
}

static void write_plain_n(const char *name, const char *text, size_t len)
{
    char *p = path_in(name);
    gale_write_file_atomic(p, text, len, NULL);
    free(p);
}

static void write_plain(const char *name, const char *text)
{
    write_plain_n(name, text, strlen(text));
}

static void write_corpus(void)
{
    char too_long[700];
    int k = snprintf(too_long, sizeof too_long, "{\"text\": \"");
    for (int i = 0; i < 60; i++)
        k += snprintf(too_long + k, sizeof too_long - (size_t)k, "long word ");
    snprintf(too_long + k, sizeof too_long - (size_t)k, "\"}\n");

    char docs[2048];
    snprintf(docs, sizeof docs,
             "{\"text\": \"%s\"}\n"
             "{\"text\": \"the  QUICK brown fox jumps over the lazy dog near the river bank today.\"}\n"
             "{\"text\": not json}\n"
             "{\"body\": \"no text key\"}\n"
             "{\"text\": \"tiny\"}\n"
             "{\"text\": \"   \"}\n"
             "{\"text\": \"%s\"}\n",
             kept_docs[0], kept_docs[1]);
    write_plain("docs.jsonl", docs);

    char docs2[1024];
    snprintf(docs2, sizeof docs2,
             "{\"text\": \"A long document about gardening: tomatoes need sun, water, and patience; peppers like "
             "warmth, basil loves company, and weeds never sleep at all!\"}\n"
             "{\"text\": \"%s\"}\n"
             "{\"text\": \"bad \xff bytes here in this line\"}\n",
             kept_docs[2]);
    char *gz_path = path_in("docs2.jsonl.gz");
    gzFile gz = gzopen(gz_path, "wb");
    gzwrite(gz, docs2, (unsigned)strlen(docs2));
    gzclose(gz);
    free(gz_path);

    char docs3[2048];
    snprintf(docs3, sizeof docs3, "{\"text\": \"%s\"}\n%s{\"text\": \"%s\"}\n", kept_docs[2], too_long, kept_docs[3]);
    size_t bound = ZSTD_compressBound(strlen(docs3));
    char *z = malloc(bound);
    size_t zn = ZSTD_compress(z, bound, docs3, strlen(docs3), 3);
    char *zst_path = path_in("docs3.jsonl.zst");
    gale_write_file_atomic(zst_path, z, zn, NULL);
    free(zst_path);
    free(z);

    char notes[512];
    snprintf(notes, sizeof notes,
             "Numbers 9999 and 0000 appear in this sentence about counting sheep at night slowly.\n\n%s\n",
             kept_docs[4]);
    write_plain("notes.txt", notes);
}

static void base_config(prepare_config *c, const char *out)
{
    prepare_config_init(c);
    const char *names[] = {"docs.jsonl", "docs2.jsonl.gz", "docs3.jsonl.zst", "notes.txt"};
    for (int i = 0; i < 4; i++) {
        char *p = path_in(names[i]);
        prepare_config_append(c, "inputs", p, "test", NULL);
        free(p);
    }
    char *o = path_in(out);
    prepare_config_set(c, "out", o, "test", NULL);
    free(o);
    prepare_config_set(c, "tokenizer", tokenizer_path, "test", NULL);
    prepare_config_set(c, "text_mode", "lines", "test", NULL);
    prepare_config_set(c, "seq_len", "24", "test", NULL);
    prepare_config_set(c, "min_chars", "10", "test", NULL);
    prepare_config_set(c, "max_chars", "400", "test", NULL);
    prepare_config_set(c, "val_fraction", "0.3", "test", NULL);
    prepare_config_set(c, "shard_rows", "2", "test", NULL);
    prepare_config_set(c, "progress", "off", "test", NULL);
    prepare_config_set(c, "report_examples", "3", "test", NULL);
}

static json_int_t report_int(json_t *report, const char *a, const char *b, const char *c)
{
    json_t *v = json_object_get(json_object_get(report, a), b);
    if (c)
        v = json_object_get(v, c);
    return json_integer_value(v);
}

/* The removed file's lines as "reason file:line [-> file:line]" strings, file names only. */
static void check_removed(const char *path)
{
    const char *want[] = {
        "exact docs.jsonl:2 -> docs.jsonl:1", "malformed docs.jsonl:3",       "malformed docs.jsonl:4",
        "filter docs.jsonl:5",                "malformed docs.jsonl:6",       "near docs2.jsonl.gz:1 -> docs.jsonl:7",
        "malformed docs2.jsonl.gz:3",         "exact docs3.jsonl.zst:1 -> docs2.jsonl.gz:2",
        "filter docs3.jsonl.zst:2",           "near notes.txt:1 -> docs3.jsonl.zst:3",
        "malformed notes.txt:2",
    };
    size_t n_want = sizeof want / sizeof *want;
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    if (!f)
        return;
    char line[4096];
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        CHECK(o != NULL);
        const char *src = strrchr(json_string_value(json_object_get(o, "source")), '/') + 1;
        char got[512];
        int k = snprintf(got, sizeof got, "%s %s:%lld", json_string_value(json_object_get(o, "reason")), src,
                         (long long)json_integer_value(json_object_get(o, "line")));
        json_t *dup = json_object_get(o, "duplicate_of");
        if (dup)
            snprintf(got + k, sizeof got - (size_t)k, " -> %s:%lld",
                     strrchr(json_string_value(json_object_get(dup, "source")), '/') + 1,
                     (long long)json_integer_value(json_object_get(dup, "line")));
        CHECK_MSG(n >= n_want || !strcmp(got, want[n]), "removed line %zu: got '%s', want '%s'", n + 1, got, want[n]);
        n++;
        json_decref(o);
    }
    fclose(f);
    CHECK(n == n_want);
}

/* Decodes every document of every shard of the folder: text between BOS and EOS. */
static size_t decode_shards(const char *out, const gale_tokenizer *tok, char **docs, size_t max_docs,
                            int64_t *real_tokens)
{
    gale_manifest m;
    gale_error err;
    CHECK(manifest_load(&m, out, 1, &err) == 0);
    size_t n_docs = 0;
    *real_tokens = 0;
    int bos = tokenizer_bos_id(tok), eos = tokenizer_eos_id(tok);
    for (int split = 0; split < 2; split++) {
        gale_ids stream = {0};
        for (size_t s = 0; s < m.n_shards; s++) {
            if (strcmp(m.shards[s].split, split ? "val" : "train"))
                continue;
            char *p = gale_path_join(out, m.shards[s].file);
            gale_shard *sh = shard_open(p, &err);
            free(p);
            CHECK(sh != NULL);
            if (!sh)
                continue;
            size_t S = (size_t)shard_meta(sh)->seq_len + 1, rows = (size_t)shard_rows(sh);
            CHECK(S == 25 && !shard_has_loss_mask(sh));
            int32_t *t = malloc(rows * S * sizeof *t);
            uint16_t *seg = malloc(rows * S * sizeof *seg);
            CHECK(shard_read_rows(sh, 0, rows, t, seg, NULL, &err) == 0);
            for (size_t r = 0; r < rows; r++) {
                for (size_t j = 0; j < S; j++) {
                    if (seg[r * S + j] == GALE_SEGMENT_PAD)
                        continue;
                    (*real_tokens)++;
                    /* a new segment starts exactly where a document (or a row) starts */
                    if (j > 0 && seg[r * S + j] != seg[r * S + j - 1])
                        CHECK(t[r * S + j] == bos && seg[r * S + j] == seg[r * S + j - 1] + 1);
                    gale_ids_push(&stream, t[r * S + j]);
                }
            }
            free(t);
            free(seg);
            shard_close(sh);
        }
        for (size_t i = 0; i < stream.n;) {
            CHECK(stream.v[i] == bos);
            size_t e = i + 1;
            while (e < stream.n && stream.v[e] != eos)
                e++;
            gale_bytes text = {0};
            tokenizer_decode(tok, stream.v + i + 1, e - i - 1, &text);
            gale_bytes_push(&text, 0);
            if (n_docs < max_docs)
                docs[n_docs++] = (char *)text.v;
            else
                gale_bytes_free(&text);
            i = e + 1;
        }
        gale_ids_free(&stream);
    }
    manifest_free(&m);
    return n_docs;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_pretrain(const gale_tokenizer *tok)
{
    prepare_config c;
    base_config(&c, "out");
    char *removed = path_in("removed.jsonl");
    prepare_config_set(&c, "removed", removed, "test", NULL);
    gale_error err;
    int rc = prepare_run(&c, MPI_COMM_WORLD, &err);
    if (rc < 0)
        fprintf(stderr, "prepare_run: %s\n", err.msg);
    CHECK(rc == 0);
    char *out = path_in("out"), *partial = path_in("out.partial");
    CHECK(!gale_path_exists(partial));

    char *report_path = gale_path_join(out, "report.json");
    json_t *report = json_load_file(report_path, 0, NULL);
    CHECK(report != NULL);
    CHECK(report_int(report, "documents", "read", NULL) == 16);
    CHECK(report_int(report, "documents", "kept", NULL) == 5);
    CHECK(report_int(report, "documents", "exact_duplicates", NULL) == 2);
    CHECK(report_int(report, "documents", "near_duplicates", NULL) == 2);
    CHECK(report_int(report, "documents", "rejected_total", NULL) == 7);
    CHECK(report_int(report, "documents", "rejected", "bad_json") == 1);
    CHECK(report_int(report, "documents", "rejected", "missing_key") == 1);
    CHECK(report_int(report, "documents", "rejected", "invalid_utf8") == 1);
    CHECK(report_int(report, "documents", "rejected", "empty") == 2);
    CHECK(report_int(report, "documents", "rejected", "too_short") == 1);
    CHECK(report_int(report, "documents", "rejected", "too_long") == 1);
    CHECK(json_array_size(json_object_get(report, "examples")) == 3);
    json_int_t docs = report_int(report, "splits", "train", "documents") + report_int(report, "splits", "val", "documents");
    json_int_t tokens = report_int(report, "splits", "train", "tokens") + report_int(report, "splits", "val", "tokens");
    CHECK(docs == 5);
    size_t want_tokens = 0;
    for (int i = 0; i < 5; i++) {
        gale_ids ids = {0};
        tokenizer_encode(tok, kept_docs[i], strlen(kept_docs[i]), &ids);
        want_tokens += ids.n + 2;
        gale_ids_free(&ids);
    }
    CHECK(tokens == (json_int_t)want_tokens);
    json_decref(report);
    free(report_path);

    check_removed(removed);

    char *decoded[16];
    int64_t real_tokens;
    size_t n = decode_shards(out, tok, decoded, 16, &real_tokens);
    CHECK(n == 5 && real_tokens == (int64_t)want_tokens);
    const char *sorted_kept[5];
    memcpy(sorted_kept, kept_docs, sizeof sorted_kept);
    qsort(sorted_kept, 5, sizeof *sorted_kept, cmp_str);
    qsort(decoded, n, sizeof *decoded, cmp_str);
    for (size_t i = 0; i < n && n == 5; i++)
        CHECK_MSG(!strcmp(decoded[i], sorted_kept[i]), "decoded '%s' != kept '%s'", decoded[i], sorted_kept[i]);
    for (size_t i = 0; i < n; i++)
        free(decoded[i]);

    /* an existing output is refused unless overwrite is set */
    rc = prepare_run(&c, MPI_COMM_WORLD, &err);
    CHECK(rc < 0 && strstr(err.msg, "already exists") && strstr(err.msg, "overwrite"));
    prepare_config_set(&c, "overwrite", "true", "test", NULL);
    prepare_config_set(&c, "dedup", "none", "test", NULL);
    CHECK(prepare_run(&c, MPI_COMM_WORLD, &err) == 0);
    report_path = gale_path_join(out, "report.json");
    report = json_load_file(report_path, 0, NULL);
    CHECK(report_int(report, "documents", "kept", NULL) == 9 &&
          report_int(report, "documents", "exact_duplicates", NULL) == 0);
    json_decref(report);
    free(report_path);

    free(removed);
    free(out);
    free(partial);
    prepare_config_free(&c);
}

static void test_sft(const gale_tokenizer *tok)
{
    const char *convs[] = {
        "{\"messages\": [{\"role\": \"user\", \"content\": \"What is two plus two?\"}, "
        "{\"role\": \"assistant\", \"content\": \"Four.\"}]}",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hello there, nobody answers me\"}]}",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a colour of the sky.\"}, "
        "{\"role\": \"assistant\", \"content\": \"Blue, on a clear day.\"}]}",
    };
    /* the third conversation as ShareGPT writes it: its rows must be those of convs[2] */
    const char *sharegpt = "{\"conversations\": [{\"from\": \"human\", \"value\": \"Name a colour of the sky.\"}, "
                           "{\"from\": \"gpt\", \"value\": \"Blue, on a clear day.\"}]}";
    char text[2048];
    snprintf(text, sizeof text, "%s\n%s\n%s\n", convs[0], convs[1], sharegpt);
    write_plain("chat.jsonl", text);
    prepare_config c;
    base_config(&c, "sft");
    char *in = path_in("chat.jsonl");
    prepare_config_set(&c, "inputs", in, "test", NULL);
    free(in);
    prepare_config_set(&c, "kind", "sft", "test", NULL);
    prepare_config_set(&c, "chat_template", "v1", "test", NULL);
    prepare_config_set(&c, "seq_len", "63", "test", NULL);
    prepare_config_set(&c, "val_fraction", "0", "test", NULL);
    gale_error err;
    int rc = prepare_run(&c, MPI_COMM_WORLD, &err);
    if (rc < 0)
        fprintf(stderr, "prepare_run: %s\n", err.msg);
    CHECK(rc == 0);
    char *out = path_in("sft");
    char *report_path = gale_path_join(out, "report.json");
    json_t *report = json_load_file(report_path, 0, NULL);
    CHECK(report_int(report, "documents", "rejected", "invalid_conversation") == 1);
    CHECK(report_int(report, "documents", "kept", NULL) == 2);
    CHECK(report_int(report, "splits", "train", "documents") == 2);
    json_decref(report);
    free(report_path);

    /* the single row holds both conversations whole, with the template's ids and mask */
    gale_ids want_ids = {0};
    gale_bytes want_mask = {0};
    for (int i = 0; i < 3; i += 2) {
        json_t *conv = json_loads(convs[i], 0, NULL);
        CHECK(chat_encode(tok, CHAT_MISTRAL_V1, CHAT_FOR_TRAINING, conv, &want_ids, &want_mask, &err) == 0);
        json_decref(conv);
    }
    char *shard_path = gale_path_join(out, "train-00000.h5");
    gale_shard *sh = shard_open(shard_path, &err);
    CHECK(sh && shard_rows(sh) == 1 && shard_has_loss_mask(sh) && shard_meta(sh)->packing == GALE_SHARD_BEST_FIT);
    if (sh && shard_rows(sh) == 1) {
        int32_t t[64];
        uint16_t seg[64];
        uint8_t mask[64];
        CHECK(shard_read_rows(sh, 0, 1, t, seg, mask, &err) == 0);
        size_t n_real = 0;
        for (size_t j = 0; j < 64; j++)
            n_real += seg[j] != GALE_SEGMENT_PAD;
        CHECK(n_real == want_ids.n);
        /* best fit places the longer conversation first */
        size_t first_len = 0;
        {
            json_t *conv = json_loads(convs[0], 0, NULL);
            gale_ids one = {0};
            chat_encode(tok, CHAT_MISTRAL_V1, CHAT_FOR_TRAINING, conv, &one, NULL, &err);
            first_len = one.n;
            gale_ids_free(&one);
            json_decref(conv);
        }
        size_t second_len = want_ids.n - first_len;
        size_t a_off = first_len >= second_len ? 0 : second_len; /* where conversation 0 sits in the row */
        size_t b_off = first_len >= second_len ? first_len : 0;
        CHECK(!memcmp(t + a_off, want_ids.v, first_len * sizeof *t) && !memcmp(mask + a_off, want_mask.v, first_len));
        CHECK(!memcmp(t + b_off, want_ids.v + first_len, second_len * sizeof *t) &&
              !memcmp(mask + b_off, want_mask.v + first_len, second_len));
    }
    shard_close(sh);
    free(shard_path);
    gale_ids_free(&want_ids);
    gale_bytes_free(&want_mask);
    free(out);
    prepare_config_free(&c);
}

/* A word from a fixed list, by a small LCG: texts made of them share no 5-word shingles. */
static const char *random_word(uint64_t *state)
{
    static const char *const words[] = {
        "apple", "river", "stone", "cloud", "engine", "garden", "violet", "harbor", "silver", "candle",
        "forest", "mirror", "pepper", "rocket", "saddle", "timber", "velvet", "window", "yellow", "zebra",
        "anchor", "bridge", "castle", "desert", "falcon", "glacier", "hollow", "island", "jungle", "kettle",
        "lantern", "meadow", "nickel", "orchard", "pillow", "quarry", "ribbon", "shadow", "tunnel", "umbrella"};
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return words[(*state >> 33) % (sizeof words / sizeof *words)];
}

static void append_str(gale_bytes *b, const char *s)
{
    gale_bytes_append(b, s, strlen(s));
}

static void append_words(gale_bytes *b, uint64_t *state, int n)
{
    for (int i = 0; i < n; i++) {
        const char *w = random_word(state);
        if (i)
            gale_bytes_push(b, ' ');
        gale_bytes_append(b, w, strlen(w));
    }
}

/* 50 distinct conversations under one long system prompt are all kept by the default dedup
 * (near dedup looks at the turns, not the shared system prompt), while an exact copy and a
 * copy whose turns differ only in punctuation are still removed. */
static void test_sft_shared_system_prompt(void)
{
    gale_bytes system = {0}, text = {0}, first = {0};
    uint64_t state = 7;
    append_words(&system, &state, 400);
    for (int k = 0; k < 50; k++) {
        gale_bytes line = {0};
        append_str(&line, "{\"messages\": [{\"role\": \"system\", \"content\": \"");
        gale_bytes_append(&line, system.v, system.n);
        append_str(&line, "\"}, {\"role\": \"user\", \"content\": \"");
        append_words(&line, &state, 12);
        append_str(&line, "\"}, {\"role\": \"assistant\", \"content\": \"");
        append_words(&line, &state, 30);
        append_str(&line, "\"}]}\n");
        if (k == 0)
            gale_bytes_append(&first, line.v, line.n);
        gale_bytes_append(&text, line.v, line.n);
        gale_bytes_free(&line);
    }
    gale_bytes_append(&text, first.v, first.n); /* an exact copy */
    /* the first conversation again with a full stop after its answer: a near duplicate */
    gale_bytes_append(&text, first.v, first.n - 5);
    append_str(&text, ".\"}]}\n");
    write_plain_n("shared-system.jsonl", (const char *)text.v, text.n);

    prepare_config c;
    base_config(&c, "shared-system");
    char *in = path_in("shared-system.jsonl");
    prepare_config_set(&c, "inputs", in, "test", NULL);
    free(in);
    prepare_config_set(&c, "kind", "sft", "test", NULL);
    prepare_config_set(&c, "chat_template", "v1", "test", NULL);
    prepare_config_set(&c, "seq_len", "1024", "test", NULL);
    prepare_config_set(&c, "max_chars", "0", "test", NULL);
    gale_error err;
    int rc = prepare_run(&c, MPI_COMM_WORLD, &err);
    CHECK_MSG(rc == 0, "prepare_run: %s", err.msg);
    char *out = path_in("shared-system");
    char *report_path = gale_path_join(out, "report.json");
    json_t *report = json_load_file(report_path, 0, NULL);
    CHECK_MSG(report_int(report, "documents", "kept", NULL) == 50, "kept %lld of 50 distinct conversations",
              (long long)report_int(report, "documents", "kept", NULL));
    CHECK(report_int(report, "documents", "exact_duplicates", NULL) == 1);
    CHECK(report_int(report, "documents", "near_duplicates", NULL) == 1);
    json_decref(report);
    free(report_path);
    free(out);
    prepare_config_free(&c);
    gale_bytes_free(&system);
    gale_bytes_free(&text);
    gale_bytes_free(&first);
}

int main(int argc, char **argv)
{
    const char *shared = getenv("GALE_SHARED");
    if (!shared) {
        printf("SKIP: GALE_SHARED is not set (ctest sets it)\n");
        return CHECK_SKIP_CODE;
    }
    snprintf(tokenizer_path, sizeof tokenizer_path, "%s/tokenizers/mistral-v1.model", shared);
    MPI_Init(&argc, &argv);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    gale_error err;
    gale_tokenizer *tok = tokenizer_load(tokenizer_path, &err);
    CHECK(tok != NULL);
    if (tok) {
        write_corpus();
        test_pretrain(tok);
        test_sft(tok);
        test_sft_shared_system_prompt();
        tokenizer_free(tok);
    }
    gale_remove_tree(dir, NULL);
    MPI_Finalize();
    return check_report("test_prepare_pipeline");
}
