/* manifest: manifest.json of a prepared folder, written last and checked against the shards. */
#define _GNU_SOURCE
#include "data/manifest.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "util/file.h"
#include "util/hash.h"

#define MANIFEST_FORMAT "gale-dataset"

void manifest_init(gale_manifest *m)
{
    memset(m, 0, sizeof *m);
    m->version = GALE_MANIFEST_VERSION;
    m->tokenizer.bos_id = m->tokenizer.eos_id = -1;
}

void manifest_free(gale_manifest *m)
{
    for (size_t i = 0; i < m->n_inputs; i++)
        free(m->inputs[i].path);
    for (size_t i = 0; i < m->n_shards; i++)
        free(m->shards[i].file);
    free(m->inputs);
    free(m->shards);
    free(m->tokenizer.path);
    free(m->config_json);
    memset(m, 0, sizeof *m);
}

static int is_split(const char *s)
{
    return !strcmp(s, "train") || !strcmp(s, "val");
}

/* A shard is named by a plain file name inside the folder: no folders, no "..". */
static int is_plain_file_name(const char *s)
{
    return s[0] && s[0] != '.' && !strchr(s, '/') && strlen(s) < 256;
}

int manifest_add_input(gale_manifest *m, const char *path, const char *sha256, gale_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return gale_fail_errno(err, "%s", path);
    m->inputs = gale_xrealloc(m->inputs, (m->n_inputs + 1) * sizeof *m->inputs);
    gale_manifest_input *in = &m->inputs[m->n_inputs++];
    memset(in, 0, sizeof *in);
    in->path = gale_xstrdup(path);
    in->bytes = (int64_t)st.st_size;
    if (sha256)
        snprintf(in->sha256, sizeof in->sha256, "%s", sha256);
    return 0;
}

/* Checks a shard's attributes against what the manifest says of the whole folder. */
static int check_shard_agrees(const gale_manifest *m, const gale_shard_meta *s, const char *path, gale_error *err)
{
    if (s->seq_len != m->seq_len)
        return gale_fail(err, "%s: seq_len %d, the manifest says %d", path, s->seq_len, m->seq_len);
    if (s->kind != m->kind || s->packing != m->packing)
        return gale_fail(err, "%s: kind %s, packing %s; the manifest says %s, %s", path, shard_kind_name(s->kind),
                         shard_packing_name(s->packing), shard_kind_name(m->kind), shard_packing_name(m->packing));
    if (strcmp(s->tokenizer_sha256, m->tokenizer.sha256) != 0)
        return gale_fail(err, "%s: tokenizer sha256 %.12s..., the manifest says %.12s...", path, s->tokenizer_sha256,
                         m->tokenizer.sha256);
    if (s->vocab_size != m->tokenizer.vocab_size || s->bos_id != m->tokenizer.bos_id ||
        s->eos_id != m->tokenizer.eos_id)
        return gale_fail(err, "%s: vocab_size %d, bos_id %d, eos_id %d; the manifest says %d, %d, %d", path,
                         s->vocab_size, s->bos_id, s->eos_id, m->tokenizer.vocab_size, m->tokenizer.bos_id,
                         m->tokenizer.eos_id);
    return 0;
}

int manifest_add_shard(gale_manifest *m, const char *dir, const char *file, const char *split, gale_error *err)
{
    if (!is_split(split))
        return gale_fail(err, "%s: split '%s' must be 'train' or 'val'", file, split);
    if (!is_plain_file_name(file))
        return gale_fail(err, "%s: a shard must be a plain file name inside %s", file, dir);
    for (size_t i = 0; i < m->n_shards; i++)
        if (!strcmp(m->shards[i].file, file))
            return gale_fail(err, "%s: listed twice in the manifest of %s", file, dir);
    char *path = gale_path_join(dir, file);
    gale_shard *s = shard_open(path, err);
    int rc = s ? check_shard_agrees(m, shard_meta(s), path, err) : -1;
    char sha[65];
    struct stat st;
    if (rc == 0 && stat(path, &st) != 0)
        rc = gale_fail_errno(err, "%s", path);
    if (rc == 0)
        rc = gale_sha256_file_hex(path, sha, err);
    if (rc == 0) {
        m->shards = gale_xrealloc(m->shards, (m->n_shards + 1) * sizeof *m->shards);
        gale_manifest_shard *e = &m->shards[m->n_shards++];
        memset(e, 0, sizeof *e);
        e->file = gale_xstrdup(file);
        snprintf(e->split, sizeof e->split, "%s", split);
        e->rows = shard_rows(s);
        e->n_docs = shard_meta(s)->n_docs;
        e->n_real_tokens = shard_meta(s)->n_real_tokens;
        e->bytes = (int64_t)st.st_size;
        memcpy(e->sha256, sha, sizeof sha);
    }
    shard_close(s);
    free(path);
    return rc;
}

int64_t manifest_split_rows(const gale_manifest *m, const char *split)
{
    int64_t rows = 0;
    for (size_t i = 0; i < m->n_shards; i++)
        if (!strcmp(m->shards[i].split, split))
            rows += m->shards[i].rows;
    return rows;
}

/* ---- writing ---- */

static json_t *split_totals(const gale_manifest *m, const char *split)
{
    int64_t shards = 0, rows = 0, docs = 0, tokens = 0;
    for (size_t i = 0; i < m->n_shards; i++) {
        const gale_manifest_shard *e = &m->shards[i];
        if (strcmp(e->split, split) != 0)
            continue;
        shards++;
        rows += e->rows;
        docs += e->n_docs;
        tokens += e->n_real_tokens;
    }
    return json_pack("{sIsIsIsI}", "shards", (json_int_t)shards, "rows", (json_int_t)rows, "n_docs", (json_int_t)docs,
                     "n_real_tokens", (json_int_t)tokens);
}

static json_t *manifest_to_json(const gale_manifest *m, gale_error *err)
{
    char now[32];
    if (!m->created_at[0]) {
        time_t t = time(NULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    json_t *root = json_pack("{sssisssssssi}", "format", MANIFEST_FORMAT, "version", m->version, "created_at",
                             m->created_at[0] ? m->created_at : now, "kind", shard_kind_name(m->kind), "packing",
                             shard_packing_name(m->packing), "seq_len", m->seq_len);
    json_object_set_new(root, "tokenizer",
                        json_pack("{sssssisisi}", "path", m->tokenizer.path ? m->tokenizer.path : "", "sha256",
                                  m->tokenizer.sha256, "vocab_size", m->tokenizer.vocab_size, "bos_id",
                                  m->tokenizer.bos_id, "eos_id", m->tokenizer.eos_id));
    json_t *inputs = json_array();
    for (size_t i = 0; i < m->n_inputs; i++)
        json_array_append_new(inputs, json_pack("{sssIss}", "path", m->inputs[i].path, "bytes",
                                                (json_int_t)m->inputs[i].bytes, "sha256", m->inputs[i].sha256));
    json_object_set_new(root, "inputs", inputs);
    json_t *shards = json_array();
    for (size_t i = 0; i < m->n_shards; i++) {
        const gale_manifest_shard *e = &m->shards[i];
        json_t *entry = json_pack("{sssssIsIsIss}", "file", e->file, "split", e->split, "rows", (json_int_t)e->rows,
                                  "n_docs", (json_int_t)e->n_docs, "n_real_tokens", (json_int_t)e->n_real_tokens,
                                  "sha256", e->sha256);
        if (e->bytes >= 0)
            json_object_set_new(entry, "bytes", json_integer(e->bytes));
        json_array_append_new(shards, entry);
    }
    json_object_set_new(root, "shards", shards);
    json_object_set_new(root, "totals",
                        json_pack("{soso}", "train", split_totals(m, "train"), "val", split_totals(m, "val")));
    if (m->config_json) {
        json_error_t jerr;
        json_t *config = json_loads(m->config_json, 0, &jerr);
        if (!config || !json_is_object(config)) {
            json_decref(config);
            json_decref(root);
            gale_fail(err, "manifest: config is not a JSON object (%s)", config ? "another JSON value" : jerr.text);
            return NULL;
        }
        json_object_set_new(root, "config", config);
    }
    return root;
}

int manifest_write(const gale_manifest *m, const char *dir, gale_error *err)
{
    json_t *root = manifest_to_json(m, err);
    if (!root)
        return -1;
    char *path = gale_path_join(dir, GALE_MANIFEST_FILE);
    int rc = gale_write_json_atomic(path, root, JSON_INDENT(2), err);
    json_decref(root);
    free(path);
    return rc;
}

/* ---- reading ---- */

/* Looks up key in obj (an object named where, e.g. "shards[2]") with the wanted JSON type;
 * an error naming the file and key when it is absent or of another type. */
static json_t *get_key(const char *file, json_t *obj, const char *where, const char *key, json_type type,
                       gale_error *err)
{
    static const char *const type_names[] = {"an object", "an array", "a string", "an integer", "a number", "a boolean",
                                             "a boolean", "null"};
    json_t *v = json_object_get(obj, key);
    if (!v) {
        gale_fail(err, "%s: key '%s%s%s' is missing", file, where, where[0] ? "." : "", key);
        return NULL;
    }
    if (json_typeof(v) != type) {
        gale_fail(err, "%s: key '%s%s%s' must be %s", file, where, where[0] ? "." : "", key, type_names[type]);
        return NULL;
    }
    return v;
}

static int get_int(const char *file, json_t *obj, const char *where, const char *key, int64_t lo, int64_t hi,
                   int64_t *out, gale_error *err)
{
    json_t *v = get_key(file, obj, where, key, JSON_INTEGER, err);
    if (!v)
        return -1;
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return gale_fail(err, "%s: key '%s%s%s' = %lld is out of range [%lld, %lld]", file, where, where[0] ? "." : "",
                         key, (long long)x, (long long)lo, (long long)hi);
    *out = x;
    return 0;
}

static const char *get_string(const char *file, json_t *obj, const char *where, const char *key, gale_error *err)
{
    json_t *v = get_key(file, obj, where, key, JSON_STRING, err);
    return v ? json_string_value(v) : NULL;
}

static int get_sha256(const char *file, json_t *obj, const char *where, const char *key, int allow_empty,
                      char out[65], gale_error *err)
{
    const char *s = get_string(file, obj, where, key, err);
    if (!s)
        return -1;
    if (!(allow_empty && !s[0]) && !shard_sha256_valid(s))
        return gale_fail(err, "%s: key '%s.%s' must be 64 lowercase hex digits", file, where, key);
    snprintf(out, 65, "%s", s);
    return 0;
}

static int parse_header(const char *file, json_t *root, gale_manifest *m, gale_error *err)
{
    const char *format = get_string(file, root, "", "format", err);
    if (!format)
        return -1;
    if (strcmp(format, MANIFEST_FORMAT) != 0)
        return gale_fail(err, "%s: key 'format' is '%s', expected '%s'", file, format, MANIFEST_FORMAT);
    int64_t version, seq_len;
    if (get_int(file, root, "", "version", 0, INT32_MAX, &version, err) != 0)
        return -1;
    if (version != GALE_MANIFEST_VERSION)
        return gale_fail(err, "%s: manifest version %lld is not supported (this gale reads version %d)", file,
                         (long long)version, GALE_MANIFEST_VERSION);
    m->version = (int)version;
    const char *created = get_string(file, root, "", "created_at", err);
    const char *kind = created ? get_string(file, root, "", "kind", err) : NULL;
    const char *packing = kind ? get_string(file, root, "", "packing", err) : NULL;
    if (!packing || get_int(file, root, "", "seq_len", 1, 1 << 24, &seq_len, err) != 0)
        return -1;
    snprintf(m->created_at, sizeof m->created_at, "%s", created);
    if (shard_kind_parse(kind) < 0)
        return gale_fail(err, "%s: key 'kind' is '%s', expected 'pretrain' or 'sft'", file, kind);
    if (shard_packing_parse(packing) < 0)
        return gale_fail(err, "%s: key 'packing' is '%s', expected 'concat' or 'best_fit'", file, packing);
    m->kind = shard_kind_parse(kind);
    m->packing = shard_packing_parse(packing);
    m->seq_len = (int)seq_len;

    json_t *tok = get_key(file, root, "", "tokenizer", JSON_OBJECT, err);
    int64_t vocab, bos, eos;
    const char *tok_path = tok ? get_string(file, tok, "tokenizer", "path", err) : NULL;
    if (!tok_path || get_sha256(file, tok, "tokenizer", "sha256", 0, m->tokenizer.sha256, err) != 0 ||
        get_int(file, tok, "tokenizer", "vocab_size", 1, INT32_MAX, &vocab, err) != 0 ||
        get_int(file, tok, "tokenizer", "bos_id", -1, vocab - 1, &bos, err) != 0 ||
        get_int(file, tok, "tokenizer", "eos_id", -1, vocab - 1, &eos, err) != 0)
        return -1;
    m->tokenizer.path = gale_xstrdup(tok_path);
    m->tokenizer.vocab_size = (int)vocab;
    m->tokenizer.bos_id = (int)bos;
    m->tokenizer.eos_id = (int)eos;
    return 0;
}

/* Element i of the array under key, which must be an object; its name ("key[i]") goes to where. */
static json_t *get_element(const char *file, json_t *array, const char *key, size_t i, char where[64], gale_error *err)
{
    snprintf(where, 64, "%s[%zu]", key, i);
    json_t *e = json_array_get(array, i);
    if (!json_is_object(e)) {
        gale_fail(err, "%s: '%s' must be an object", file, where);
        return NULL;
    }
    return e;
}

static int parse_inputs(const char *file, json_t *root, gale_manifest *m, gale_error *err)
{
    json_t *inputs = get_key(file, root, "", "inputs", JSON_ARRAY, err);
    if (!inputs)
        return -1;
    m->n_inputs = json_array_size(inputs);
    m->inputs = gale_xcalloc(m->n_inputs ? m->n_inputs : 1, sizeof *m->inputs);
    for (size_t i = 0; i < m->n_inputs; i++) {
        char where[64];
        json_t *e = get_element(file, inputs, "inputs", i, where, err);
        if (!e)
            return -1;
        gale_manifest_input *in = &m->inputs[i];
        const char *path = get_string(file, e, where, "path", err);
        if (!path || get_int(file, e, where, "bytes", -1, INT64_MAX, &in->bytes, err) != 0 ||
            get_sha256(file, e, where, "sha256", 1, in->sha256, err) != 0)
            return -1;
        in->path = gale_xstrdup(path);
    }
    return 0;
}

static int parse_shards(const char *file, json_t *root, gale_manifest *m, gale_error *err)
{
    json_t *shards = get_key(file, root, "", "shards", JSON_ARRAY, err);
    if (!shards)
        return -1;
    size_t n = json_array_size(shards);
    m->shards = gale_xcalloc(n ? n : 1, sizeof *m->shards);
    for (size_t i = 0; i < n; i++) {
        char where[64];
        json_t *e = get_element(file, shards, "shards", i, where, err);
        if (!e)
            return -1;
        gale_manifest_shard *s = &m->shards[i];
        const char *name = get_string(file, e, where, "file", err);
        const char *split = name ? get_string(file, e, where, "split", err) : NULL;
        if (!split || get_int(file, e, where, "rows", 0, INT64_MAX, &s->rows, err) != 0 ||
            get_int(file, e, where, "n_docs", 0, INT64_MAX, &s->n_docs, err) != 0 ||
            get_int(file, e, where, "n_real_tokens", 0, INT64_MAX, &s->n_real_tokens, err) != 0 ||
            get_sha256(file, e, where, "sha256", 0, s->sha256, err) != 0)
            return -1;
        s->bytes = -1;
        if (json_object_get(e, "bytes") && get_int(file, e, where, "bytes", 0, INT64_MAX, &s->bytes, err) != 0)
            return -1;
        if (!is_plain_file_name(name))
            return gale_fail(err, "%s: '%s.file' = '%s' must be a plain file name", file, where, name);
        if (!is_split(split))
            return gale_fail(err, "%s: '%s.split' = '%s' must be 'train' or 'val'", file, where, split);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(m->shards[j].file, name))
                return gale_fail(err, "%s: shard '%s' is listed twice", file, name);
        s->file = gale_xstrdup(name);
        snprintf(s->split, sizeof s->split, "%s", split);
        m->n_shards = i + 1;
    }
    return 0;
}

int manifest_read(gale_manifest *m, const char *dir, gale_error *err)
{
    manifest_init(m);
    char *file = gale_path_join(dir, GALE_MANIFEST_FILE);
    if (!gale_path_exists(file)) {
        gale_fail(err, "%s: no %s (not a prepared folder, or `gale prepare` did not finish)", dir,
                  GALE_MANIFEST_FILE);
        free(file);
        return -1;
    }
    json_error_t jerr;
    json_t *root = json_load_file(file, 0, &jerr);
    int rc = 0;
    if (!root)
        rc = gale_fail(err, "%s:%d:%d: %s", file, jerr.line, jerr.column, jerr.text);
    else if (!json_is_object(root))
        rc = gale_fail(err, "%s: must hold a JSON object", file);
    if (rc == 0)
        rc = parse_header(file, root, m, err);
    if (rc == 0)
        rc = parse_inputs(file, root, m, err);
    if (rc == 0)
        rc = parse_shards(file, root, m, err);
    json_t *config = rc == 0 ? json_object_get(root, "config") : NULL;
    if (config && !json_is_object(config))
        rc = gale_fail(err, "%s: key 'config' must be an object", file);
    else if (config)
        m->config_json = json_dumps(config, JSON_COMPACT);
    json_decref(root);
    free(file);
    if (rc != 0)
        manifest_free(m);
    return rc;
}

/* ---- verifying ---- */

static int verify_shard(const gale_manifest *m, const char *dir, const gale_manifest_shard *e, int verify_checksums,
                        gale_error *err)
{
    char *path = gale_path_join(dir, e->file);
    int rc = 0;
    if (!gale_path_exists(path)) {
        rc = gale_fail(err, "%s: manifest.json lists %s but the file is missing", dir, e->file);
        free(path);
        return rc;
    }
    struct stat st;
    if (e->bytes >= 0 && stat(path, &st) == 0 && (int64_t)st.st_size != e->bytes) {
        rc = gale_fail(err, "%s: %lld bytes, manifest.json says %lld: the file changed", path, (long long)st.st_size,
                       (long long)e->bytes);
        free(path);
        return rc;
    }
    gale_shard *s = shard_open(path, err);
    if (!s)
        rc = -1;
    if (rc == 0)
        rc = check_shard_agrees(m, shard_meta(s), path, err);
    if (rc == 0 && shard_rows(s) != e->rows)
        rc = gale_fail(err, "%s: has %lld rows, manifest.json says %lld", path, (long long)shard_rows(s),
                       (long long)e->rows);
    if (rc == 0 && (shard_meta(s)->n_docs != e->n_docs || shard_meta(s)->n_real_tokens != e->n_real_tokens))
        rc = gale_fail(err, "%s: n_docs %lld, n_real_tokens %lld; manifest.json says %lld, %lld", path,
                       (long long)shard_meta(s)->n_docs, (long long)shard_meta(s)->n_real_tokens,
                       (long long)e->n_docs, (long long)e->n_real_tokens);
    shard_close(s);
    char sha[65];
    if (rc == 0 && verify_checksums) {
        rc = gale_sha256_file_hex(path, sha, err);
        if (rc == 0 && strcmp(sha, e->sha256) != 0)
            rc = gale_fail(err, "%s: SHA-256 %.16s... does not match manifest.json (%.16s...): the file changed",
                           path, sha, e->sha256);
    }
    free(path);
    return rc;
}

/* Refuses a folder holding shards that the manifest does not list (left from another run). */
static int check_no_unlisted_shards(const gale_manifest *m, const char *dir, gale_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return gale_fail_errno(err, "%s", dir);
    int rc = 0;
    struct dirent *ent;
    while (rc == 0 && (ent = readdir(d))) {
        size_t len = strlen(ent->d_name);
        if (len < 3 || strcmp(ent->d_name + len - 3, ".h5") != 0)
            continue;
        int listed = 0;
        for (size_t i = 0; i < m->n_shards && !listed; i++)
            listed = !strcmp(m->shards[i].file, ent->d_name);
        if (!listed)
            rc = gale_fail(err, "%s: %s is not listed in manifest.json (left from another run?)", dir, ent->d_name);
    }
    closedir(d);
    return rc;
}

int manifest_verify_shard(const gale_manifest *m, const char *dir, size_t i, int verify_checksums, gale_error *err)
{
    return verify_shard(m, dir, &m->shards[i], verify_checksums, err);
}

int manifest_verify(const gale_manifest *m, const char *dir, int verify_checksums, gale_error *err)
{
    for (size_t i = 0; i < m->n_shards; i++)
        if (verify_shard(m, dir, &m->shards[i], verify_checksums, err) != 0)
            return -1;
    return check_no_unlisted_shards(m, dir, err);
}

int manifest_load(gale_manifest *m, const char *dir, int verify_checksums, gale_error *err)
{
    if (manifest_read(m, dir, err) != 0)
        return -1;
    if (manifest_verify(m, dir, verify_checksums, err) != 0) {
        manifest_free(m);
        return -1;
    }
    return 0;
}
