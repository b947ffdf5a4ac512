/* reader: input files (plain, gzip, zstd) to records with their line numbers. */
#include "data/reader.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <zlib.h>
#include <zstd.h>

#include "data/chat_formats.h"
#include "data/normalize.h"
#include "util/file.h"

/* Decompressed bytes are read in blocks of this size. */
#define READ_BLOCK (1 << 18)

typedef enum { COMPRESSION_NONE, COMPRESSION_GZIP, COMPRESSION_ZSTD } compression;

struct doc_reader {
    char *path;
    reader_options opt;
    int jsonl;
    compression comp;
    FILE *file; /* plain and zstd */
    gzFile gz;
    ZSTD_DCtx *zstd;
    uint8_t *zin;
    ZSTD_inBuffer zin_buf;
    size_t zstd_pending; /* last ZSTD_decompressStream hint: 0 when a frame just ended */
    uint64_t consumed;   /* bytes of the file read (plain and zstd) */
    int at_eof;
    /* decompressed bytes not yet split into lines: buf[pos..len); buf[0] is at buf_offset
     * in the (decompressed) file */
    char *buf;
    size_t pos, len, cap;
    uint64_t buf_offset;
    uint64_t range_end; /* lines starting at or after this offset are not this reader's */
    uint64_t next_line; /* number of the line read_line returns next */
    gale_bytes doc;     /* the record being assembled (text modes) */
    json_t *json;       /* the record last returned (JSONL) */
    json_t *conversation; /* SFT: its conversation in chat_encode's form */
    gale_bytes sft_text;
    gale_error detail;  /* why the last record is not a conversation */
    int finished;
};

const char *record_status_name(record_status s)
{
    static const char *const names[] = {"ok",    "bad_json", "missing_key", "invalid_utf8",
                                        "empty", "invalid_conversation", "untrained"};
    return names[s];
}

static int has_suffix(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && !memcmp(s + len - n, suffix, n);
}

doc_reader *reader_open(const char *path, const reader_options *opt, gale_error *err)
{
    doc_reader *r = gale_xcalloc(1, sizeof *r);
    r->path = gale_xstrdup(path);
    r->opt = *opt;
    r->next_line = 1;
    r->range_end = UINT64_MAX;
    size_t n = strlen(path);
    if (has_suffix(path, n, ".gz"))
        r->comp = COMPRESSION_GZIP, n -= 3;
    else if (has_suffix(path, n, ".zst"))
        r->comp = COMPRESSION_ZSTD, n -= 4;
    r->jsonl = has_suffix(path, n, ".jsonl") || has_suffix(path, n, ".ndjson") || has_suffix(path, n, ".json");
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        gale_fail(err, "%s: is a folder, not a file", path);
        reader_close(r);
        return NULL;
    }
    if (r->comp == COMPRESSION_GZIP) {
        r->gz = gzopen(path, "rb");
        if (!r->gz) {
            gale_fail_errno(err, "%s: cannot open", path);
            reader_close(r);
            return NULL;
        }
        gzbuffer(r->gz, READ_BLOCK);
    } else {
        r->file = fopen(path, "rb");
        if (!r->file) {
            gale_fail_errno(err, "%s: cannot open", path);
            reader_close(r);
            return NULL;
        }
        if (r->comp == COMPRESSION_ZSTD) {
            r->zstd = ZSTD_createDCtx();
            r->zin = gale_xmalloc(ZSTD_DStreamInSize());
            r->zin_buf = (ZSTD_inBuffer){r->zin, 0, 0};
        }
    }
    return r;
}

void reader_close(doc_reader *r)
{
    if (!r)
        return;
    if (r->gz)
        gzclose(r->gz);
    if (r->file)
        fclose(r->file);
    ZSTD_freeDCtx(r->zstd);
    free(r->zin);
    free(r->buf);
    free(r->path);
    gale_bytes_free(&r->doc);
    gale_bytes_free(&r->sft_text);
    json_decref(r->json);
    json_decref(r->conversation);
    free(r);
}

uint64_t reader_bytes_consumed(const doc_reader *r)
{
    if (r->gz)
        return (uint64_t)gzoffset(r->gz);
    return r->consumed;
}

/* Reads up to cap decompressed bytes into dst: the count, 0 at the end, -1 on error. */
static long stream_read(doc_reader *r, char *dst, size_t cap, gale_error *err)
{
    if (r->comp == COMPRESSION_GZIP) {
        int n = gzread(r->gz, dst, (unsigned)cap);
        if (n > 0)
            return n; /* data before a fault comes first; the fault shows on the next call */
        int code;
        const char *msg = gzerror(r->gz, &code);
        if (n < 0 || code != Z_OK)
            return gale_fail(err, "%s: corrupt or truncated gzip data near line %llu: %s", r->path,
                             (unsigned long long)r->next_line, msg);
        return 0;
    }
    if (r->comp == COMPRESSION_NONE) {
        size_t n = fread(dst, 1, cap, r->file);
        if (n == 0 && ferror(r->file))
            return gale_fail_errno(err, "%s: read error near line %llu", r->path,
                                   (unsigned long long)r->next_line);
        r->consumed += n;
        return (long)n;
    }
    ZSTD_outBuffer out = {dst, cap, 0};
    while (out.pos == 0) {
        if (r->zin_buf.pos == r->zin_buf.size) {
            size_t n = fread(r->zin, 1, ZSTD_DStreamInSize(), r->file);
            if (n == 0) {
                if (ferror(r->file))
                    return gale_fail_errno(err, "%s: read error near line %llu", r->path,
                                           (unsigned long long)r->next_line);
                if (r->zstd_pending)
                    return gale_fail(err, "%s: truncated zstd data near line %llu", r->path,
                                     (unsigned long long)r->next_line);
                return 0;
            }
            r->consumed += n;
            r->zin_buf = (ZSTD_inBuffer){r->zin, n, 0};
        }
        size_t ret = ZSTD_decompressStream(r->zstd, &out, &r->zin_buf);
        if (ZSTD_isError(ret))
            return gale_fail(err, "%s: corrupt zstd data near line %llu: %s", r->path,
                             (unsigned long long)r->next_line, ZSTD_getErrorName(ret));
        r->zstd_pending = ret;
    }
    return (long)out.pos;
}

/* A line or record past max_record_bytes ends the file's reading: /dev/zero or a file
 * without newlines would otherwise take all memory. */
static int record_too_long(const doc_reader *r, uint64_t line, gale_error *err)
{
    return gale_fail(err, "%s:%llu: a record longer than %zu bytes (max_record_bytes)", r->path,
                     (unsigned long long)line, r->opt.max_record_bytes);
}

/* The next line without its '\n' (and '\r' before it) in *line and *len: 1, 0 at the end of
 * the file, -1 on a read error. The line stays valid until the next call. */
static int read_line(doc_reader *r, const char **line, size_t *len, gale_error *err)
{
    for (;;) {
        char *nl = r->pos < r->len ? memchr(r->buf + r->pos, '\n', r->len - r->pos) : NULL;
        if (nl || (r->at_eof && r->pos < r->len)) {
            if (r->buf_offset + r->pos >= r->range_end)
                return 0; /* the next line starts in the next reader's range */
            size_t end = nl ? (size_t)(nl - r->buf) : r->len;
            *line = r->buf + r->pos;
            *len = end - r->pos;
            if (*len && (*line)[*len - 1] == '\r')
                (*len)--;
            r->pos = nl ? end + 1 : end;
            r->next_line++;
            return 1;
        }
        if (r->at_eof)
            return 0;
        if (r->pos > 0) {
            memmove(r->buf, r->buf + r->pos, r->len - r->pos);
            r->len -= r->pos;
            r->buf_offset += r->pos;
            r->pos = 0;
        }
        if (r->opt.max_record_bytes && r->len > r->opt.max_record_bytes)
            return record_too_long(r, r->next_line, err);
        if (r->cap - r->len < READ_BLOCK) {
            r->cap = r->cap ? r->cap * 2 : 2 * READ_BLOCK;
            r->buf = gale_xrealloc(r->buf, r->cap);
        }
        long n = stream_read(r, r->buf + r->len, r->cap - r->len, err);
        if (n < 0)
            return -1;
        if (n == 0)
            r->at_eof = 1;
        r->len += (size_t)n;
    }
}

static int is_blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && (s[i] < '\t' || s[i] > '\r'))
            return 0;
    return 1;
}

/* Sets rec's text to s and its status from the text's UTF-8 validity and emptiness. */
static void record_set_text(reader_record *rec, const char *s, size_t len)
{
    rec->text = s;
    rec->len = len;
    if (!utf8_valid(s, len))
        rec->status = RECORD_INVALID_UTF8;
    else if (is_blank(s, len))
        rec->status = RECORD_EMPTY;
    else
        rec->status = RECORD_OK;
}

/* Follows a dotted key ("meta.body") through nested objects. */
static json_t *json_get_dotted(json_t *obj, const char *key)
{
    const char *p = key;
    while (obj && json_is_object(obj)) {
        const char *dot = strchr(p, '.');
        if (!dot)
            return json_object_get(obj, p);
        obj = json_object_getn(obj, p, (size_t)(dot - p));
        p = dot + 1;
    }
    return NULL;
}

/* SFT: the record's conversation, its text, or the reason it has none. */
static void read_conversation(doc_reader *r, reader_record *rec)
{
    json_decref(r->conversation);
    r->conversation = NULL;
    int rc = chat_conversation_from_record(r->json, r->opt.chat_key, &r->conversation, &r->detail);
    if (rc < 0) {
        rec->status = rc == CHAT_NO_MESSAGES ? RECORD_MISSING_KEY : RECORD_INVALID_CONVERSATION;
        rec->detail = r->detail.msg;
        return;
    }
    rec->json = r->conversation;
    chat_conversation_text(r->conversation, &r->sft_text, &rec->near_from);
    record_set_text(rec, (const char *)r->sft_text.v, r->sft_text.n);
    if (rec->status == RECORD_OK && !chat_conversation_trains(r->conversation)) {
        rec->status = RECORD_UNTRAINED;
        rec->detail = "no assistant message is trained (all have \"weight\": 0): nothing to learn";
    }
}

static int next_jsonl(doc_reader *r, reader_record *rec, gale_error *err)
{
    const char *line;
    size_t len;
    int got;
    while ((got = read_line(r, &line, &len, err)) == 1 && is_blank(line, len))
        ;
    if (got != 1)
        return got;
    rec->line = r->next_line - 1;
    json_decref(r->json);
    json_error_t jerr;
    r->json = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!r->json || !json_is_object(r->json)) {
        int bad_utf8 = !r->json && json_error_code(&jerr) == json_error_invalid_utf8;
        rec->status = bad_utf8 || !utf8_valid(line, len) ? RECORD_INVALID_UTF8 : RECORD_BAD_JSON;
        return 1;
    }
    if (r->opt.conversations) {
        read_conversation(r, rec);
        return 1;
    }
    json_t *value = json_get_dotted(r->json, r->opt.json_key);
    if (!json_is_string(value)) {
        rec->status = RECORD_MISSING_KEY;
        return 1;
    }
    record_set_text(rec, json_string_value(value), json_string_length(value));
    return 1;
}

/* Text modes: lines gathered into r->doc until the mode's boundary. */
static int next_text(doc_reader *r, reader_record *rec, gale_error *err)
{
    text_mode mode = r->opt.mode;
    const char *line;
    size_t len;
    r->doc.n = 0;
    uint64_t first = 0;
    for (;;) {
        int got = read_line(r, &line, &len, err);
        if (got < 0)
            return -1;
        if (got == 0) {
            r->finished = 1;
            /* a file that ends on a boundary leaves nothing: no empty record for it */
            if (first == 0 && !(mode == TEXT_MODE_DOCUMENT && r->next_line == 1))
                return 0;
            break;
        }
        uint64_t number = r->next_line - 1;
        if (mode == TEXT_MODE_SEPARATOR && len == strlen(r->opt.separator) &&
            !memcmp(line, r->opt.separator, len)) {
            if (first == 0)
                first = number;
            break;
        }
        if (mode == TEXT_MODE_PARAGRAPHS && is_blank(line, len)) {
            if (first)
                break;
            continue;
        }
        if (first == 0)
            first = number;
        else
            gale_bytes_push(&r->doc, '\n');
        gale_bytes_append(&r->doc, line, len);
        if (r->opt.max_record_bytes && r->doc.n > r->opt.max_record_bytes)
            return record_too_long(r, first, err);
        if (mode == TEXT_MODE_LINES)
            break;
    }
    rec->line = first ? first : 1;
    record_set_text(rec, r->doc.n ? (const char *)r->doc.v : "", r->doc.n);
    return 1;
}

int reader_splittable(const char *path, const reader_options *opt)
{
    size_t n = strlen(path);
    if (has_suffix(path, n, ".gz") || has_suffix(path, n, ".zst"))
        return 0;
    int jsonl = has_suffix(path, n, ".jsonl") || has_suffix(path, n, ".ndjson") || has_suffix(path, n, ".json");
    return jsonl || opt->mode == TEXT_MODE_LINES;
}

doc_reader *reader_open_range(const char *path, const reader_options *opt, uint64_t start, uint64_t end,
                              uint64_t first_line, gale_error *err)
{
    if (!reader_splittable(path, opt)) {
        gale_fail(err, "%s: only uncompressed line-oriented files can be read by byte range", path);
        return NULL;
    }
    doc_reader *r = reader_open(path, opt, err);
    if (!r)
        return NULL;
    r->range_end = end;
    if (start > 0) {
        /* the range's first line is the first one starting at or after start: skip what
         * precedes it, from the byte before start through the next newline */
        if (fseeko(r->file, (off_t)(start - 1), SEEK_SET) != 0) {
            gale_fail_errno(err, "%s: cannot seek to byte %llu", path, (unsigned long long)start);
            reader_close(r);
            return NULL;
        }
        r->buf_offset = start - 1;
        const char *line;
        size_t len;
        if (read_line(r, &line, &len, err) < 0) {
            reader_close(r);
            return NULL;
        }
    }
    r->next_line = first_line;
    return r;
}

int reader_count_newlines(const char *path, uint64_t from, uint64_t to, uint64_t *count, gale_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return gale_fail_errno(err, "%s: cannot open", path);
    int rc = 0;
    *count = 0;
    char *buf = gale_xmalloc(READ_BLOCK);
    if (fseeko(f, (off_t)from, SEEK_SET) != 0)
        rc = gale_fail_errno(err, "%s: cannot seek to byte %llu", path, (unsigned long long)from);
    for (uint64_t at = from; rc == 0 && at < to;) {
        size_t want = to - at < READ_BLOCK ? (size_t)(to - at) : READ_BLOCK;
        size_t got = fread(buf, 1, want, f);
        if (got == 0) {
            if (ferror(f))
                rc = gale_fail_errno(err, "%s: read error", path);
            break;
        }
        for (char *p = buf, *e = buf + got; (p = memchr(p, '\n', (size_t)(e - p))); p++)
            (*count)++;
        at += got;
    }
    free(buf);
    fclose(f);
    return rc;
}

int reader_next(doc_reader *r, reader_record *rec, gale_error *err)
{
    memset(rec, 0, sizeof *rec);
    if (r->finished)
        return 0;
    return r->jsonl ? next_jsonl(r, rec, err) : next_text(r, rec, err);
}

/* ---- input expansion ---- */

typedef struct path_list {
    char **v;
    size_t n, cap;
} path_list;

static void path_list_push(path_list *l, const char *path)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = gale_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = gale_xstrdup(path);
}

static int excluded(const char *path, const char *const *excludes, size_t n_excludes)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    for (size_t i = 0; i < n_excludes; i++)
        if (!fnmatch(excludes[i], base, 0) || !fnmatch(excludes[i], path, 0))
            return 1;
    return 0;
}

/* Folders already walked, by device and inode: a symlink back up the tree is walked once. */
typedef struct walked_set {
    dev_t *dev;
    ino_t *ino;
    size_t n;
} walked_set;

/* 1 when st's folder was walked already; else records it and returns 0. */
static int walked_before(walked_set *w, const struct stat *st)
{
    for (size_t i = 0; i < w->n; i++)
        if (w->dev[i] == st->st_dev && w->ino[i] == st->st_ino)
            return 1;
    w->dev = gale_xrealloc(w->dev, (w->n + 1) * sizeof *w->dev);
    w->ino = gale_xrealloc(w->ino, (w->n + 1) * sizeof *w->ino);
    w->dev[w->n] = st->st_dev;
    w->ino[w->n++] = st->st_ino;
    return 0;
}

/* What an input path is: 1 a regular file to read, 2 a folder to walk, 0 something skipped
 * with a warning (a FIFO, device or socket: reading one would hang or never end), -1 an
 * error (a dangling symlink fails here, before any work). */
static int classify_input(const char *path, struct stat *st, gale_error *err)
{
    if (stat(path, st) != 0) {
        struct stat link;
        if (lstat(path, &link) == 0 && S_ISLNK(link.st_mode))
            return gale_fail(err, "input '%s': a symlink to nothing (dangling)", path);
        return gale_fail_errno(err, "input '%s'", path);
    }
    if (S_ISDIR(st->st_mode))
        return 2;
    if (S_ISREG(st->st_mode))
        return 1;
    fprintf(stderr, "gale prepare: warning: skipping '%s': not a regular file (%s)\n", path,
            S_ISFIFO(st->st_mode) ? "a FIFO" : S_ISSOCK(st->st_mode) ? "a socket" : "a device");
    return 0;
}

static int walk_folder(const char *dir, path_list *out, const char *const *excludes, size_t n_excludes,
                       walked_set *walked, gale_error *err)
{
    struct dirent **entries;
    int n = scandir(dir, &entries, NULL, alphasort);
    if (n < 0)
        return gale_fail_errno(err, "%s: cannot list folder", dir);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        const char *name = entries[i]->d_name;
        if (rc == 0 && strcmp(name, ".") && strcmp(name, "..")) {
            char *path = gale_path_join(dir, name);
            struct stat st;
            int what = excluded(path, excludes, n_excludes) ? 0 : classify_input(path, &st, err);
            if (what < 0)
                rc = -1;
            else if (what == 1)
                path_list_push(out, path);
            else if (what == 2 && walked_before(walked, &st))
                fprintf(stderr, "gale prepare: warning: skipping '%s': a folder already read (a symlink loop?)\n",
                        path);
            else if (what == 2)
                rc = walk_folder(path, out, excludes, n_excludes, walked, err);
            free(path);
        }
        free(entries[i]);
    }
    free(entries);
    return rc;
}

int reader_expand_inputs(const char *const *inputs, size_t n_inputs, const char *const *excludes,
                         size_t n_excludes, char ***paths, size_t *n_paths, gale_error *err)
{
    path_list out = {0};
    walked_set walked = {0};
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n_inputs; i++) {
        const char *in = inputs[i];
        size_t before = out.n;
        struct stat st;
        if (strpbrk(in, "*?[")) {
            glob_t g;
            int grc = glob(in, 0, NULL, &g);
            if (grc == 0) {
                for (size_t k = 0; k < g.gl_pathc; k++)
                    if (stat(g.gl_pathv[k], &st) == 0 && S_ISREG(st.st_mode) &&
                        !excluded(g.gl_pathv[k], excludes, n_excludes))
                        path_list_push(&out, g.gl_pathv[k]);
            }
            globfree(&g);
            if (grc != 0 && grc != GLOB_NOMATCH)
                rc = gale_fail(err, "input '%s': cannot expand the pattern", in);
        } else {
            int what = classify_input(in, &st, err);
            if (what < 0)
                rc = -1;
            else if (what == 2 && !walked_before(&walked, &st))
                rc = walk_folder(in, &out, excludes, n_excludes, &walked, err);
            else if (what == 1 && !excluded(in, excludes, n_excludes))
                path_list_push(&out, in);
        }
        if (rc == 0 && out.n == before)
            rc = gale_fail(err, "input '%s' names no file%s", in, n_excludes ? " (after excludes)" : "");
    }
    free(walked.dev);
    free(walked.ino);
    if (rc != 0) {
        reader_free_paths(out.v, out.n);
        return -1;
    }
    *paths = out.v;
    *n_paths = out.n;
    return 0;
}

void reader_free_paths(char **paths, size_t n_paths)
{
    for (size_t i = 0; i < n_paths; i++)
        free(paths[i]);
    free(paths);
}
