/* test_safetensors: write/read round trips (F32, F64, I64, the 8-byte header padding), BF16 and
 * F16 conversion (fp32 to F16 over every half), sharded folders with an index, and hostile
 * files: each refused with a message, never a crash. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model/safetensors.h"
#include "util/file.h"

static char dir[] = "/tmp/gale-test-st-XXXXXX";

static void round_trip(void)
{
    float a[6] = {1, -2, 3.5f, 1e-30f, -0.0f, 65504};
    double b[3] = {M_PI, -1e300, 0};
    int64_t c[2] = {-100, 1LL << 40};
    int64_t sa[2] = {2, 3}, sb[1] = {3}, sc[2] = {1, 2};
    struct safetensors_entry e[] = {{"a.weight", ST_F32, 2, sa, a},
                                    {"b", ST_F64, 1, sb, b},
                                    {"c", ST_I64, 2, sc, c},
                                    {"empty", ST_F32, 2, (int64_t[]){0, 4}, NULL}};
    const char *meta[] = {"producer", "gale"};
    gale_error err;
    char *path = gale_path_join(dir, "rt.safetensors");
    CHECK_MSG(safetensors_write(path, e, 4, meta, 1, &err) == 0, "write: %s", err.msg);
    size_t len;
    char *raw = gale_read_file(path, &len, &err);
    uint64_t hlen = 0;
    memcpy(&hlen, raw, 8);
    CHECK_MSG(hlen % 8 == 0 && strstr(raw + 8, "\"format\":\"pt\"") && strstr(raw + 8, "\"producer\":\"gale\""),
           "header not padded or metadata missing");
    CHECK_MSG(len == 8 + hlen + sizeof a + sizeof b + sizeof c, "file size %zu", len);
    free(raw);
    struct safetensors_set set;
    CHECK_MSG(safetensors_open(path, &set, &err) == 0, "open: %s", err.msg);
    const struct safetensors_tensor *ta = safetensors_find(&set, "a.weight");
    const struct safetensors_tensor *tb = safetensors_find(&set, "b");
    const struct safetensors_tensor *tc = safetensors_find(&set, "c");
    CHECK_MSG(set.n == 4 && ta && tb && tc && safetensors_find(&set, "empty")->numel == 0, "tensors");
    float ra[6];
    double rb[3];
    int64_t rc[2];
    CHECK_MSG(ta->ndim == 2 && ta->shape[0] == 2 && ta->shape[1] == 3 && ta->dtype == ST_F32, "shape of a");
    safetensors_read_f32(ta, ra, &err);
    safetensors_read_f64(tb, rb, &err);
    safetensors_read_i64(tc, rc, &err);
    CHECK_MSG(!memcmp(ra, a, sizeof a) && !memcmp(rb, b, sizeof b) && !memcmp(rc, c, sizeof c), "values");
    CHECK_MSG(safetensors_read_f32(tc, ra, &err) != 0 && strstr(err.msg, "\"c\""), "I64 read as float");
    safetensors_close(&set);
    /* a tensor named twice is refused at write time */
    struct safetensors_entry twice[] = {{"x", ST_F32, 1, sb, a}, {"x", ST_F32, 1, sb, a}};
    CHECK_MSG(safetensors_write(path, twice, 2, NULL, 0, &err) != 0 && strstr(err.msg, "\"x\""), "twice");
    free(path);
}

/* A file image from a header text and data bytes. */
static uint8_t *image(const char *header, const void *data, size_t data_len, size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    uint8_t *buf = gale_xmalloc(*len);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    if (data_len)
        memcpy(buf + 8 + h, data, data_len);
    return buf;
}

static void conversions(void)
{
    /* bf16 and f16 bit patterns with known values */
    uint16_t bf[4] = {0x3f80, 0xc040, 0x0000, 0x7f80};        /* 1, -3, 0, inf */
    uint16_t hf[5] = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x3555}; /* 1, -2, 2^-24, 65504, 0.333251953125 */
    uint8_t data[18];
    memcpy(data, bf, 8);
    memcpy(data + 8, hf, 10);
    size_t len;
    uint8_t *buf = image("{\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]},"
                         "\"h\":{\"dtype\":\"F16\",\"shape\":[5],\"data_offsets\":[8,18]}}",
                         data, sizeof data, &len);
    struct safetensors_set set;
    gale_error err;
    CHECK_MSG(safetensors_parse(buf, len, "conv", &set, &err) == 0, "parse: %s", err.msg);
    float b[4], h[5];
    safetensors_read_f32(safetensors_find(&set, "b"), b, &err);
    safetensors_read_f32(safetensors_find(&set, "h"), h, &err);
    CHECK_MSG(b[0] == 1 && b[1] == -3 && b[2] == 0 && isinf(b[3]), "bf16 values %g %g %g %g", b[0], b[1], b[2], b[3]);
    CHECK_MSG(h[0] == 1 && h[1] == -2 && h[2] == ldexpf(1, -24) && h[3] == 65504 && h[4] == 0.333251953125f,
           "f16 values %g %g %g %g %g", h[0], h[1], h[2], h[3], h[4]);
    safetensors_close(&set);
    free(buf);
}

/* fp32 to f16 against IEEE's rule, over every half: each finite half converts back to its own bits;
 * the midpoint between two neighbours goes to the even one, a float above it up and one below it
 * down (above the largest half, 65504, the next step would be 65536: from 65520 up is infinity); NaN stays NaN. The halves'
 * values come from the F16 reader checked above. */
static void f16_rounding(void)
{
    enum { N = 1 << 16 };
    uint16_t *bits = gale_xmalloc(N * sizeof *bits), *back = gale_xmalloc(N * sizeof *back);
    for (int i = 0; i < N; i++)
        bits[i] = (uint16_t)i;
    char header[128];
    snprintf(header, sizeof header, "{\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[0,%d]}}", N, 2 * N);
    size_t len;
    uint8_t *buf = image(header, bits, 2 * (size_t)N, &len);
    struct safetensors_set set;
    gale_error err;
    float *v = gale_xmalloc(N * sizeof *v);
    CHECK_MSG(safetensors_parse(buf, len, "halves", &set, &err) == 0 &&
                  safetensors_read_f32(safetensors_find(&set, "h"), v, &err) == 0, "halves: %s", err.msg);
    safetensors_f32_to_f16(back, v, N);
    int wrong = 0;
    for (int i = 0; i < N; i++)
        wrong += isnan(v[i]) ? (back[i] & 0x7fff) <= 0x7c00 : back[i] != bits[i];
    CHECK_MSG(wrong == 0, "%d halves do not convert back to their bits", wrong);
    int off = 0;
    for (int h = 0; h < 0x7c00; h++) {        /* positive finite h and its upper neighbour */
        for (int sign = 0; sign < 2; sign++) { /* and their negatives */
            float lo = v[h | sign << 15], hi = h + 1 < 0x7c00 ? v[(h + 1) | sign << 15] : (sign ? -65536 : 65536);
            float mid = (lo + hi) / 2, x[3];
            x[0] = mid, x[1] = nextafterf(mid, hi), x[2] = nextafterf(mid, lo);
            uint16_t got[3], even = (uint16_t)((h & 1 ? h + 1 : h) | sign << 15);
            safetensors_f32_to_f16(got, x, 3);
            off += got[0] != even || got[1] != ((h + 1) | sign << 15) || got[2] != (h | sign << 15);
        }
    }
    CHECK_MSG(off == 0, "%d midpoints between halves rounded wrongly", off);
    float tiny[2] = {ldexpf(1, -26), 1e30f};
    uint16_t t[2];
    safetensors_f32_to_f16(t, tiny, 2);
    CHECK_MSG(t[0] == 0 && t[1] == 0x7c00, "2^-26 -> %#x, 1e30 -> %#x", t[0], t[1]);
    safetensors_close(&set);
    free(buf), free(v), free(bits), free(back);
}

static void hostile(void)
{
    static const struct {
        const char *header;
        size_t data_len;
        const char *why;  /* a piece of the message */
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "past the data"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "8 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "begin <= end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlap"},
        {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, "overflows"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "JSON"},
        {"[1,2,3]", 0, "not a JSON object"},
        {"{\"a\":5}", 0, "not an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "JSON"},
        {"{\"__metadata__\":[1]}", 0, "__metadata__"},
    };
    uint8_t zeros[16] = {0};
    gale_error err;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t len;
        uint8_t *buf = image(cases[i].header, zeros, cases[i].data_len, &len);
        struct safetensors_set set;
        int rc = safetensors_parse(buf, len, "hostile.safetensors", &set, &err);
        CHECK_MSG(rc != 0, "case %zu (%s) accepted", i, cases[i].why);
        if (rc != 0)
            CHECK_MSG(strstr(err.msg, cases[i].why) && strstr(err.msg, "hostile.safetensors"),
                   "case %zu: message '%s' lacks '%s'", i, err.msg, cases[i].why);
        else
            safetensors_close(&set);
        free(buf);
    }
    /* header length larger than the file, and a file shorter than 8 bytes */
    uint8_t huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    struct safetensors_set set;
    CHECK_MSG(safetensors_parse(huge, sizeof huge, "huge", &set, &err) != 0 && strstr(err.msg, "header length"),
           "huge header length: %s", err.msg);
    CHECK_MSG(safetensors_parse(huge, 5, "short", &set, &err) != 0 && strstr(err.msg, "too short"), "short file");
    /* truncating a good file anywhere is an error, never a crash */
    char *path = gale_path_join(dir, "rt.safetensors");
    size_t len;
    char *raw = gale_read_file(path, &len, &err);
    int accepted = 0;
    for (size_t cut = 0; cut < len; cut++)
        if (safetensors_parse((uint8_t *)raw, cut, "cut", &set, &err) == 0) {
            accepted++;
            safetensors_close(&set);
        }
    CHECK_MSG(accepted == 0, "%d truncations of a %zu-byte file accepted", accepted, len);
    free(raw);
    free(path);
}

static void write_text(const char *name, const char *text)
{
    gale_error err;
    char *p = gale_path_join(dir, name);
    CHECK_MSG(gale_write_file_atomic(p, text, strlen(text), &err) == 0, "%s", err.msg);
    free(p);
}

static void sharded(void)
{
    gale_error err;
    char *sub = gale_path_join(dir, "sharded");
    gale_mkdir_p(sub, &err);
    float x[2] = {1, 2}, y[3] = {3, 4, 5};
    int64_t s2[1] = {2}, s3[1] = {3};
    struct safetensors_entry a = {"x", ST_F32, 1, s2, x}, b = {"y", ST_F32, 1, s3, y};
    char *p1 = gale_path_join(sub, "model-00001-of-00002.safetensors");
    char *p2 = gale_path_join(sub, "model-00002-of-00002.safetensors");
    safetensors_write(p1, &a, 1, NULL, 0, &err);
    safetensors_write(p2, &b, 1, NULL, 0, &err);
    write_text("sharded/model.safetensors.index.json",
               "{\"metadata\": {}, \"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", "
               "\"y\": \"model-00002-of-00002.safetensors\"}}");
    struct safetensors_set set;
    CHECK_MSG(safetensors_open_dir(sub, &set, &err) == 0, "sharded open: %s", err.msg);
    float got[3];
    if (set.n == 2) {
        safetensors_read_f32(safetensors_find(&set, "y"), got, &err);
        CHECK_MSG(got[2] == 5 && set.nfiles == 2, "sharded values");
        safetensors_close(&set);
    }
    write_text("sharded/model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", \"y\": \"missing.safetensors\"}}");
    CHECK_MSG(safetensors_open_dir(sub, &set, &err) != 0 && strstr(err.msg, "missing.safetensors"),
           "missing shard: %s", err.msg);
    write_text("sharded/model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"model-00002-of-00002.safetensors\", \"y\": \"model-00002-of-00002.safetensors\"}}");
    CHECK_MSG(safetensors_open_dir(sub, &set, &err) != 0 && strstr(err.msg, "\"x\""), "misplaced tensor: %s", err.msg);
    write_text("sharded/model.safetensors.index.json", "{\"weight_map\": {\"x\": \"../rt.safetensors\"}}");
    CHECK_MSG(safetensors_open_dir(sub, &set, &err) != 0 && strstr(err.msg, "not a file name"), "escape: %s", err.msg);
    /* the same tensor in two shards */
    safetensors_write(p2, &a, 1, NULL, 0, &err);
    write_text("sharded/model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", \"z\": \"model-00002-of-00002.safetensors\"}}");
    CHECK_MSG(safetensors_open_dir(sub, &set, &err) != 0 && strstr(err.msg, "also in"), "duplicate: %s", err.msg);
    CHECK_MSG(safetensors_open_dir("/nonexistent", &set, &err) != 0 && strstr(err.msg, "/nonexistent"),
           "empty folder");
    free(p1), free(p2), free(sub);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    round_trip();
    conversions();
    f16_rounding();
    hostile();
    sharded();
    gale_error err;
    gale_remove_tree(dir, &err);
    return check_report("test_safetensors");
}
