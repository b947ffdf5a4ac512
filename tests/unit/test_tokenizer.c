/* test_tokenizer: the tokenizer library beyond the spm comparisons of tests/tok: accessors and
 * known encodings of the Mistral models; the streaming encoder (any chunking) and the cached
 * encoder give tokenizer_encode's ids; encoding from two threads at once; and bad model files
 * (empty, truncated at many offsets, random bytes, a PNG, bit flips, hand-made models that are
 * unigram, use another normaliser or break the piece rules) are errors naming the file, never
 * a crash. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "data/tokenizer.h"
#include "util/file.h"
#include "util/hash.h"

/* xorshift64*: the tests' own deterministic random numbers. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static char *shared_path(const char *name)
{
    const char *shared = getenv("GALE_SHARED");
    char *dir = gale_path_join(shared ? shared : "../shared", "tokenizers");
    char *p = gale_path_join(dir, name);
    free(dir);
    return p;
}

static gale_tokenizer *load_shared(const char *name)
{
    char *path = shared_path(name);
    gale_error err;
    gale_tokenizer *tok = tokenizer_load(path, &err);
    if (!tok) {
        fprintf(stderr, "FAIL: cannot load %s: %s\n", path, err.msg);
        exit(1);
    }
    free(path);
    return tok;
}

static int ids_equal(const gale_ids *a, const int32_t *b, size_t n)
{
    return a->n == n && (n == 0 || !memcmp(a->v, b, n * sizeof *b));
}

/* tok must encode text as want[0..n). */
static void expect_ids(const gale_tokenizer *tok, const char *text, const int32_t *want, size_t n, const char *label)
{
    gale_ids ids = {0};
    tokenizer_encode(tok, text, strlen(text), &ids);
    CHECK_MSG(ids_equal(&ids, want, n), "%s", label);
    gale_ids_free(&ids);
}

/* ---- accessors and known encodings ---- */

static void test_known(const gale_tokenizer *v1, const gale_tokenizer *v3)
{
    CHECK_MSG(tokenizer_vocab_size(v1) == 32000, "v1 vocab %d", tokenizer_vocab_size(v1));
    CHECK_MSG(tokenizer_vocab_size(v3) == 32768, "v3 vocab %d", tokenizer_vocab_size(v3));
    CHECK_MSG(tokenizer_bos_id(v1) == 1 && tokenizer_eos_id(v1) == 2 && tokenizer_unk_id(v1) == 0, "v1 specials");
    CHECK_MSG(tokenizer_bos_id(v3) == 1 && tokenizer_eos_id(v3) == 2 && tokenizer_unk_id(v3) == 0, "v3 specials");
    CHECK_MSG(tokenizer_piece_id(v3, "[INST]") == 3 && tokenizer_piece_id(v3, "[/INST]") == 4, "v3 [INST]");
    CHECK_MSG(tokenizer_piece_id(v1, "[INST]") == -1, "v1 has no [INST]");
    CHECK_MSG(tokenizer_piece_id(v1, "<0x0A>") == 13, "v1 <0x0A> is %d", tokenizer_piece_id(v1, "<0x0A>"));
    CHECK_MSG(!strcmp(tokenizer_id_piece(v1, 1), "<s>"), "id 1 is <s>");
    CHECK_MSG(!tokenizer_id_piece(v1, -1) && !tokenizer_id_piece(v1, 32000), "out of range pieces");

    char hex[65];
    gale_error err;
    char *path = shared_path("mistral-v1.model");
    CHECK_MSG(gale_sha256_file_hex(path, hex, &err) == 0 && !strcmp(hex, tokenizer_sha256(v1)), "sha256");
    free(path);

    /* ids from spm_encode 0.1.97 */
    static const int32_t hello[] = {22557, 1526};
    static const int32_t inst_text[] = {1501, 17057, 29561, 12782}; /* "[INST] hi": never the control id */
    static const int32_t ref_doc[] = {29473, 767};                  /* a user-defined piece, whole */
    static const int32_t space[] = {1027};
    expect_ids(v1, "Hello world", hello, 2, "v1 'Hello world'");
    expect_ids(v3, "[INST] hi", inst_text, 4, "v3 '[INST] hi'");
    expect_ids(v3, "[REFERENCE_DOC_3]", ref_doc, 2, "v3 user-defined piece");
    expect_ids(v3, " ", space, 1, "v3 ' '");
    expect_ids(v3, "", NULL, 0, "empty text gives no ids");
    gale_ids ids = {0};

    /* decode(encode(text)) is text for valid UTF-8 */
    static const char *texts[] = {"Hello world", "  two leading spaces", "trailing  ", "日本語 😀 e\xCC\x81",
                                  "tab\tand\rcr", "\xE2\x96\x81literal", "x"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        gale_bytes text = {0};
        ids.n = 0;
        tokenizer_encode(v3, texts[i], strlen(texts[i]), &ids);
        tokenizer_decode(v3, ids.v, ids.n, &text);
        /* sentencepiece decodes a literal U+2581 as a space */
        const char *want = i == 5 ? " literal" : texts[i];
        CHECK_MSG(text.n == strlen(want) && !memcmp(text.v, want, text.n), "round trip of '%s'", texts[i]);
        gale_bytes_free(&text);
    }
    /* an id outside the vocabulary decodes as the unknown surface */
    int32_t bad[] = {-1, 99999};
    gale_bytes text = {0};
    tokenizer_decode(v1, bad, 2, &text);
    CHECK_MSG(text.n == 10 && !memcmp(text.v, " \xE2\x81\x87  \xE2\x81\x87 ", 10), "bad ids decode as unk");
    gale_bytes_free(&text);
    gale_ids_free(&ids);
}

/* ---- streaming and cached encoding ---- */

/* Random text over pieces chosen to hit the normaliser's corners. */
static size_t random_text(uint64_t *rng, char *buf, size_t cap)
{
    static const char *parts[] = {"the", " ", "  ", "quick", "日本", "😀", "\xE2\x96\x81", "\xEF\xBF\xBD", "\x80",
                                  "\xE2\x96", "\xF0\x9F\x98", "\xC0\xAF", "\xED\xA0\x80", "[REFERENCE_DOC_1",
                                  "[REFERENCE_DOC_12]", "]", "\t", "\r", "é", "e\xCC\x81", "1234", "\0", "x"};
    size_t n = 0, k = 1 + rng_next(rng) % 40;
    for (size_t i = 0; i < k; i++) {
        size_t p = rng_next(rng) % (sizeof parts / sizeof *parts);
        size_t len = p == 21 ? 1 : strlen(parts[p]);
        if (n + len > cap)
            break;
        memcpy(buf + n, parts[p], len);
        n += len;
    }
    return n;
}

static void test_streaming(const gale_tokenizer *tok)
{
    uint64_t rng = 42;
    char text[1024];
    gale_ids whole = {0}, cached = {0}, streamed = {0};
    tokenizer_encoder *enc = tokenizer_encoder_new(tok);
    int bad = 0;
    for (int t = 0; t < 3000; t++) {
        size_t n = random_text(&rng, text, sizeof text);
        whole.n = cached.n = streamed.n = 0;
        tokenizer_encode(tok, text, n, &whole);
        tokenizer_encoder_encode(enc, text, n, &cached);
        for (size_t at = 0; at < n;) {
            size_t len = 1 + rng_next(&rng) % 9;
            if (len > n - at)
                len = n - at;
            tokenizer_encoder_feed(enc, text + at, len, &streamed);
            at += len;
        }
        tokenizer_encoder_finish(enc, &streamed);
        if (!ids_equal(&cached, whole.v, whole.n) || !ids_equal(&streamed, whole.v, whole.n))
            bad++;
    }
    CHECK_MSG(bad == 0, "%d of 3000 texts encode differently streamed or cached", bad);
    tokenizer_encoder_free(enc);
    gale_ids_free(&whole);
    gale_ids_free(&cached);
    gale_ids_free(&streamed);
}

/* ---- two threads ---- */

typedef struct thread_job {
    const gale_tokenizer *tok;
    const char *text;
    size_t len;
    gale_ids out;
} thread_job;

static void *encode_job(void *arg)
{
    thread_job *j = arg;
    tokenizer_encoder *enc = tokenizer_encoder_new(j->tok);
    for (int r = 0; r < 20; r++) {
        j->out.n = 0;
        if (r % 2)
            tokenizer_encode(j->tok, j->text, j->len, &j->out);
        else
            tokenizer_encoder_encode(enc, j->text, j->len, &j->out);
    }
    tokenizer_encoder_free(enc);
    return NULL;
}

static void test_threads(const gale_tokenizer *tok)
{
    uint64_t rng = 7;
    size_t cap = 200000, n = 0;
    char *text = gale_xmalloc(cap);
    while (n + 1024 < cap)
        n += random_text(&rng, text + n, 1024);
    gale_ids want = {0};
    tokenizer_encode(tok, text, n, &want);
    thread_job jobs[2] = {{tok, text, n, {0}}, {tok, text, n, {0}}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, encode_job, &jobs[i]);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        CHECK_MSG(ids_equal(&jobs[i].out, want.v, want.n), "thread %d ids differ", i);
        gale_ids_free(&jobs[i].out);
    }
    gale_ids_free(&want);
    free(text);
}

/* ---- bad model files ---- */

/* Expects loading to fail with a message that names the file. */
static void expect_refused(const void *data, size_t len, const char *what, const char *must_say)
{
    gale_error err;
    err.msg[0] = 0;
    gale_tokenizer *tok = tokenizer_load_bytes(data, len, "bad.model", &err);
    CHECK_MSG(!tok, "%s: loaded", what);
    if (tok) {
        tokenizer_free(tok);
        return;
    }
    CHECK_MSG(strstr(err.msg, "bad.model") != NULL, "%s: message does not name the file: %s", what, err.msg);
    CHECK_MSG(!must_say || strstr(err.msg, must_say), "%s: message lacks '%s': %s", what, must_say, err.msg);
}

/* A tiny protobuf writer for hand-made models. */
static void pb_varint(gale_bytes *b, uint64_t v)
{
    do {
        uint8_t c = v & 0x7f;
        v >>= 7;
        gale_bytes_push(b, c | (v ? 0x80 : 0));
    } while (v);
}

static void pb_len(gale_bytes *b, int field, const void *data, size_t n)
{
    pb_varint(b, (uint64_t)field << 3 | 2);
    pb_varint(b, n);
    gale_bytes_append(b, data, n);
}

static void pb_int(gale_bytes *b, int field, uint64_t v)
{
    pb_varint(b, (uint64_t)field << 3);
    pb_varint(b, v);
}

static void pb_piece(gale_bytes *b, const char *piece, float score, int type)
{
    gale_bytes p = {0};
    pb_len(&p, 1, piece, strlen(piece));
    pb_varint(&p, 2 << 3 | 5);
    gale_bytes_append(&p, &score, 4);
    pb_int(&p, 3, (uint64_t)type);
    pb_len(b, 1, p.v, p.n);
    gale_bytes_free(&p);
}

typedef struct tiny_model {
    int model_type, byte_fallback, duplicate, no_unk;
    const char *normalizer;
} tiny_model;

/* <unk> <s> </s> ▁ a b ab ▁a ▁ab, and the 256 byte pieces when byte_fallback. */
static void tiny_model_bytes(const tiny_model *m, gale_bytes *out)
{
    static const char *normal[] = {"\xE2\x96\x81", "a", "b", "ab", "\xE2\x96\x81" "a", "\xE2\x96\x81" "ab"};
    pb_piece(out, "<unk>", 0, m->no_unk ? 1 : 2);
    pb_piece(out, "<s>", 0, 3);
    pb_piece(out, "</s>", 0, 3);
    if (m->byte_fallback)
        for (int b = 0; b < 256; b++) {
            char piece[8];
            snprintf(piece, sizeof piece, "<0x%02X>", b);
            pb_piece(out, piece, 0, 6);
        }
    for (size_t i = 0; i < sizeof normal / sizeof *normal; i++)
        pb_piece(out, normal[i], -(float)i, 1);
    if (m->duplicate)
        pb_piece(out, "ab", -9, 1);
    gale_bytes spec = {0};
    pb_int(&spec, 3, (uint64_t)m->model_type);
    pb_int(&spec, 35, (uint64_t)m->byte_fallback);
    pb_len(out, 2, spec.v, spec.n);
    spec.n = 0;
    pb_len(&spec, 1, m->normalizer, strlen(m->normalizer));
    pb_int(&spec, 4, 0);
    pb_len(out, 3, spec.v, spec.n);
    gale_bytes_free(&spec);
}

static void test_hand_made_models(void)
{
    gale_bytes b = {0};
    tiny_model ok = {2, 1, 0, 0, "identity"};
    tiny_model_bytes(&ok, &b);
    gale_error err;
    gale_tokenizer *tok = tokenizer_load_bytes(b.v, b.n, "tiny.model", &err);
    CHECK_MSG(tok != NULL, "tiny model: %s", tok ? "" : err.msg);
    if (tok) {
        /* " abc" -> "▁▁abc": ab (score -3) merges before ▁a (-4), then ▁ab (-5); "c" has no
         * piece, so byte fallback gives <0x63> */
        gale_ids ids = {0};
        tokenizer_encode(tok, " abc", 4, &ids);
        int32_t want[] = {259, 264, 3 + 0x63};
        CHECK_MSG(ids_equal(&ids, want, 3), "tiny model ' abc' -> %zu ids", ids.n);
        gale_ids_free(&ids);
        tokenizer_free(tok);
    }
    struct {
        tiny_model m;
        const char *what, *says;
    } bad[] = {
        {{1, 1, 0, 0, "identity"}, "unigram model", "unigram"},
        {{2, 1, 0, 0, "nmt_nfkc"}, "nmt_nfkc normalizer", "nmt_nfkc"},
        {{2, 1, 1, 0, "identity"}, "duplicate piece", "already defined"},
        {{2, 1, 0, 1, "identity"}, "no unknown piece", "UNKNOWN"},
        {{2, 0, 0, 0, "identity"}, "no byte fallback is fine", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        b.n = 0;
        tiny_model_bytes(&bad[i].m, &b);
        if (!bad[i].says) {
            tok = tokenizer_load_bytes(b.v, b.n, "tiny.model", &err);
            CHECK_MSG(tok != NULL, "%s: %s", bad[i].what, tok ? "" : err.msg);
            tokenizer_free(tok);
        } else {
            expect_refused(b.v, b.n, bad[i].what, bad[i].says);
        }
    }
    /* byte pieces present but byte_fallback false; and byte_fallback with a byte missing */
    b.n = 0;
    pb_piece(&b, "<unk>", 0, 2);
    pb_piece(&b, "<0x41>", 0, 6);
    gale_bytes spec = {0};
    pb_int(&spec, 3, 2);
    pb_len(&b, 2, spec.v, spec.n);
    pb_len(&b, 3, "", 0);
    expect_refused(b.v, b.n, "byte piece without byte_fallback", "byte_fallback is false");
    spec.n = 0;
    pb_int(&spec, 3, 2);
    pb_int(&spec, 35, 1);
    pb_len(&b, 2, spec.v, spec.n); /* a second trainer_spec merges into the first, as in protobuf */
    expect_refused(b.v, b.n, "missing byte pieces", "<0x00> is missing");
    /* a score that has no place in the merge order */
    b.n = 0;
    pb_piece(&b, "<unk>", 0, 2);
    pb_piece(&b, "a", 0, 1);
    pb_piece(&b, "aa", NAN, 1);
    spec.n = 0;
    pb_int(&spec, 3, 2);
    pb_len(&b, 2, spec.v, spec.n);
    pb_len(&b, 3, "", 0);
    expect_refused(b.v, b.n, "NaN score", "score NaN");
    gale_bytes_free(&spec);
    gale_bytes_free(&b);
}

static void test_bad_files(void)
{
    expect_refused("", 0, "empty file", "empty");
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                                  0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 0x1f, 0x15, 0xc4, 0x89};
    expect_refused(png, sizeof png, "PNG", NULL);
    expect_refused("hello, I am a text file\n", 24, "text", NULL);
    expect_refused("\x1f\x8b\x08\x00\x00\x00\x00\x00", 8, "gzip header", NULL);

    gale_error err;
    CHECK_MSG(!tokenizer_load("/nonexistent/x.model", &err) && strstr(err.msg, "/nonexistent/x.model"),
          "missing file: %s", err.msg);

    char *path = shared_path("mistral-v1.model");
    size_t len;
    char *model = gale_read_file(path, &len, &err);
    free(path);
    if (!model) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    /* truncated: every offset of the first 600 bytes, the last 300, and 300 random ones */
    uint64_t rng = 99;
    int truncated_loaded = 0;
    for (size_t k = 0; k < 1200; k++) {
        size_t at = k < 600 ? k : k < 900 ? len - (k - 599) : rng_next(&rng) % len;
        gale_tokenizer *tok = tokenizer_load_bytes(model, at, "bad.model", &err);
        if (tok) {
            truncated_loaded++;
            tokenizer_free(tok);
        } else {
            CHECK_MSG(strstr(err.msg, "bad.model") != NULL, "truncated at %zu: %s", at, err.msg);
        }
    }
    CHECK_MSG(truncated_loaded == 0, "%d truncated models loaded", truncated_loaded);

    /* random bytes */
    uint8_t junk[4096];
    for (int t = 0; t < 300; t++) {
        size_t n = 1 + rng_next(&rng) % sizeof junk;
        for (size_t i = 0; i < n; i++)
            junk[i] = (uint8_t)rng_next(&rng);
        expect_refused(junk, n, "random bytes", NULL);
    }

    /* a few bytes changed: an error or a model that encodes without crashing */
    char *copy = gale_xmalloc(len);
    for (int t = 0; t < 40; t++) {
        memcpy(copy, model, len);
        for (int f = 0; f < 1 + t % 8; f++)
            copy[rng_next(&rng) % len] = (char)rng_next(&rng);
        gale_tokenizer *tok = tokenizer_load_bytes(copy, len, "flipped.model", &err);
        if (tok) {
            gale_ids ids = {0};
            gale_bytes text = {0};
            static const char sample[] = "Bit flips \xF0\x9F\x98\x80 and  spaces\x80";
            tokenizer_encode(tok, sample, sizeof sample - 1, &ids);
            tokenizer_decode(tok, ids.v, ids.n, &text);
            gale_ids_free(&ids);
            gale_bytes_free(&text);
            tokenizer_free(tok);
        } else {
            CHECK_MSG(strstr(err.msg, "flipped.model") != NULL, "bit flips: %s", err.msg);
        }
    }
    free(copy);
    free(model);
}

int main(void)
{
    gale_tokenizer *v1 = load_shared("mistral-v1.model");
    gale_tokenizer *v3 = load_shared("mistral-v3.model");
    test_known(v1, v3);
    test_streaming(v3);
    test_streaming(v1);
    test_threads(v3);
    test_hand_made_models();
    test_bad_files();
    tokenizer_free(v1);
    tokenizer_free(v3);
    return check_report("test_tokenizer");
}
