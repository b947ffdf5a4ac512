/* tensorboard: TensorBoard event files; see tensorboard.h. The two protobuf messages are
 * encoded by hand: they are a handful of tagged fields.
 *   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
 *   Summary { repeated Value value = 1; }
 *   Value   { string tag = 1; float simple_value = 2; } */
#include "train/tensorboard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "util/file.h"
#include "util/vec.h"

struct tb_writer {
    FILE *f;
    char *path;
};

/* ---- CRC-32C (Castagnoli), as TFRecord frames use it ---- */

/* Bit by bit: a record is a few hundred bytes a step, so a table would buy nothing. */
static uint32_t crc32c(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
}

static uint32_t masked_crc(const uint8_t *p, size_t n)
{
    uint32_t c = crc32c(p, n);
    return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

/* ---- protobuf wire format ---- */

static void put_varint(gale_bytes *b, uint64_t x)
{
    while (x >= 0x80) {
        gale_bytes_push(b, (uint8_t)(x | 0x80));
        x >>= 7;
    }
    gale_bytes_push(b, (uint8_t)x);
}

static void put_le(gale_bytes *b, uint64_t x, int bytes)
{
    for (int i = 0; i < bytes; i++)
        gale_bytes_push(b, (uint8_t)(x >> (8 * i)));
}

/* A length-delimited field (wire type 2). */
static void put_bytes_field(gale_bytes *b, int field, const void *data, size_t n)
{
    put_varint(b, (uint64_t)field << 3 | 2);
    put_varint(b, n);
    gale_bytes_append(b, data, n);
}

static double now_seconds(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec + tv.tv_usec * 1e-6;
}

/* Event header: wall_time (field 1, fixed64 double) and step (field 2, varint). */
static void put_event_header(gale_bytes *ev, long step)
{
    double wall = now_seconds();
    uint64_t bits;
    memcpy(&bits, &wall, sizeof bits);
    put_varint(ev, 1 << 3 | 1);
    put_le(ev, bits, 8);
    put_varint(ev, 2 << 3 | 0);
    put_varint(ev, (uint64_t)(int64_t)step);
}

/* Summary.Value { tag, simple_value } appended to summary as field 1. */
static void put_scalar(gale_bytes *summary, const char *tag, double value)
{
    gale_bytes v = {0};
    put_bytes_field(&v, 1, tag, strlen(tag));
    float x = (float)value;
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    put_varint(&v, 2 << 3 | 5);
    put_le(&v, bits, 4);
    put_bytes_field(summary, 1, v.v, v.n);
    gale_bytes_free(&v);
}

/* One TFRecord: length, its masked CRC, the data, its masked CRC. */
static int write_record(tb_writer *tb, const gale_bytes *data, gale_error *err)
{
    gale_bytes frame = {0};
    put_le(&frame, data->n, 8);
    put_le(&frame, masked_crc(frame.v, 8), 4);
    gale_bytes_append(&frame, data->v, data->n);
    put_le(&frame, masked_crc(data->v, data->n), 4);
    int bad = fwrite(frame.v, 1, frame.n, tb->f) != frame.n || fflush(tb->f) != 0;
    gale_bytes_free(&frame);
    return bad ? gale_fail_errno(err, "%s: cannot write", tb->path) : 0;
}

tb_writer *tb_open(const char *run_dir, gale_error *err)
{
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    long t = (long)now_seconds();
    /* a second file of the same second and process (a run resumed in-process) gets the next N */
    for (int n = 0; n < 1000; n++) {
        char name[400];
        snprintf(name, sizeof name, "events.out.tfevents.%010ld.%s.%d.%d", t, host, (int)getpid(), n);
        char *path = gale_path_join(run_dir, name);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 && errno == EEXIST) {
            free(path);
            continue;
        }
        FILE *f = fd < 0 ? NULL : fdopen(fd, "wb");
        if (!f) {
            gale_fail_errno(err, "%s: cannot create", path);
            if (fd >= 0)
                close(fd);
            free(path);
            return NULL;
        }
        tb_writer *tb = gale_xcalloc(1, sizeof *tb);
        tb->f = f;
        tb->path = path;
        gale_bytes ev = {0};
        put_event_header(&ev, 0);
        put_bytes_field(&ev, 3, "brain.Event:2", 13);
        int rc = write_record(tb, &ev, err);
        gale_bytes_free(&ev);
        if (rc) {
            tb_close(tb);
            return NULL;
        }
        return tb;
    }
    gale_fail(err, "%s: too many event files of this second and process", run_dir);
    return NULL;
}

void tb_close(tb_writer *tb)
{
    if (!tb)
        return;
    fclose(tb->f);
    free(tb->path);
    free(tb);
}

/* Every number of obj as PREFIX/KEY (the step and booleans left out). */
static void put_numbers(gale_bytes *summary, const char *prefix, const json_t *obj)
{
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)obj, key, value)
    {
        if (!json_is_number(value) || !strcmp(key, "step"))
            continue;
        char tag[160];
        snprintf(tag, sizeof tag, "%s/%s", prefix, key);
        put_scalar(summary, tag, json_number_value(value));
    }
}

int tb_write_record(tb_writer *tb, const json_t *record, gale_error *err)
{
    const char *kind = json_string_value(json_object_get(record, "kind"));
    if (!tb || !kind)
        return 0;
    gale_bytes summary = {0};
    put_numbers(&summary, kind, record);
    const json_t *experts = json_object_get(record, "experts");
    for (size_t i = 0; i < json_array_size(experts); i++) {
        const json_t *layer = json_array_get(experts, i);
        char prefix[64];
        snprintf(prefix, sizeof prefix, "experts/layer_%lld",
                 (long long)json_integer_value(json_object_get(layer, "layer")));
        json_t *stats = json_deep_copy(layer);
        json_object_del(stats, "layer");
        put_numbers(&summary, prefix, stats);
        json_decref(stats);
    }
    gale_bytes ev = {0};
    put_event_header(&ev, (long)json_integer_value(json_object_get(record, "step")));
    put_bytes_field(&ev, 5, summary.v, summary.n);
    int rc = write_record(tb, &ev, err);
    gale_bytes_free(&ev);
    gale_bytes_free(&summary);
    return rc;
}
