/* prepare_config: a schema table of keys; YAML values and flags go through one setter, so
 * both are checked alike. */
#include "data/prepare_config.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/file.h"
#include "util/yaml_config.h"

/* Most keys are one typed value; two are not: a list of strings, and dedup, which sets two
 * switches from one word. */
typedef enum { KEY_VALUE, KEY_LIST, KEY_DEDUP } key_kind;

static const char *const kind_names[] = {"pretrain", "sft", NULL};
static const char *const packing_names[] = {"concat", "best_fit", NULL};
static const char *const text_mode_names[] = {"document", "lines", "paragraphs", "separator", NULL};
static const char *const overlong_names[] = {"truncate", "drop", NULL};
static const char *const progress_names[] = {"off", "on", NULL};

typedef struct key_spec {
    const char *key;
    key_kind kind;
    config_value value; /* KEY_VALUE */
    size_t offset;
    const char *help;
} key_spec;

#define K(name, kind, type, member, lo, hi, choices, help) \
    {#name, kind, {type, lo, hi, choices}, offsetof(prepare_config, member), help}
#define V(name, type, member, lo, hi, choices, help) K(name, KEY_VALUE, type, member, lo, hi, choices, help)
static const key_spec keys[] = {
    K(inputs, KEY_LIST, CONFIG_STRING, inputs, 0, 0, NULL, "files, folders (walked) and globs; .gz and .zst are decompressed"),
    K(exclude, KEY_LIST, CONFIG_STRING, exclude, 0, 0, NULL, "fnmatch patterns of base names or paths to leave out"),
    V(tokenizer, CONFIG_STRING, tokenizer, 0, 0, NULL, "SentencePiece .model or Tekken .json file, or mistral-v1, mistral-v3, tekken-240718, tekken-240911 (found in $GALE_TOKENIZERS or mistral-common's data)"),
    V(out, CONFIG_STRING, out, 0, 0, NULL, "the dataset folder to write"),
    V(removed, CONFIG_STRING, removed, 0, 0, NULL, "write one JSON line per removed document here"),
    V(kind, CONFIG_ENUM, kind, 0, 0, kind_names, "pretrain (text) or sft (conversations) [pretrain]"),
    V(packing, CONFIG_ENUM, packing, 0, 0, packing_names, "concat or best_fit [concat for pretrain, best_fit for sft]"),
    V(seq_len, CONFIG_INT, seq_len, 1, 131072, NULL, "tokens per training sequence; rows hold seq_len+1 [2048]"),
    V(text_mode, CONFIG_ENUM, text_mode, 0, 0, text_mode_names, "text files: one document each, or per line, per blank-line paragraph, or between separator lines: document, lines, paragraphs, separator [document]"),
    V(separator, CONFIG_STRING, separator, 0, 0, NULL, "the line between documents in text_mode separator [%]"),
    V(json_key, CONFIG_STRING, json_key, 0, 0, NULL, "the text's key in JSONL records, dotted when nested [text]"),
    V(chat_template, CONFIG_STRING, chat_template, 0, 0, NULL, "sft: v1, v3 or llama2 [v3]"),
    V(chat_key, CONFIG_STRING, chat_key, 0, 0, NULL, "sft: the record key holding the messages [messages, conversations or conversation, the first present]"),
    V(min_chars, CONFIG_INT, min_chars, 0, 1e15, NULL, "documents shorter (in characters) are filtered [1]"),
    V(max_chars, CONFIG_INT, max_chars, 0, 1e15, NULL, "documents longer are filtered; 0: no bound [0]"),
    V(max_record_bytes, CONFIG_INT, max_record_bytes, 1024, 1e15, NULL, "a longer input line or record is an error (bounds the memory a bad input can take) [67108864]"),
    K(dedup, KEY_DEDUP, CONFIG_STRING, dedup_exact, 0, 0, NULL, "exact,near | exact | near | none [exact,near]"),
    V(near_threshold, CONFIG_DOUBLE, near_threshold, 0.01, 1, NULL, "Jaccard similarity of near duplicates [0.8]"),
    V(minhash_bands, CONFIG_INT, minhash_bands, 1, 1024, NULL, "LSH bands [14]"),
    V(minhash_rows, CONFIG_INT, minhash_rows, 1, 1024, NULL, "MinHash values per band [8]"),
    V(ngram, CONFIG_INT, ngram, 1, 32, NULL, "words per shingle [5]"),
    V(max_shingles, CONFIG_INT, max_shingles, 16, 1 << 24, NULL, "shingle hashes kept per document [16384]"),
    V(dedup_memory_mb, CONFIG_INT, dedup_memory_mb, 0, 1 << 24, NULL, "band keys and shingle sets kept in memory per rank before spilling to disk [1024]"),
    V(seed, CONFIG_U64, seed, 0, 0, NULL, "MinHash and split seed [1]"),
    V(val_fraction, CONFIG_DOUBLE, val_fraction, 0, 1, NULL, "share of documents in the validation split [0.01]"),
    V(shard_rows, CONFIG_INT, shard_rows, 1, 1 << 30, NULL, "rows per shard [8192]"),
    V(zstd_level, CONFIG_INT, zstd_level, 1, 19, NULL, "zstd level of the shards [3]"),
    V(overlong, CONFIG_ENUM, drop_overlong, 0, 0, overlong_names, "best_fit: documents longer than a row are truncated or dropped [truncate]"),
    V(pack_window, CONFIG_INT, pack_window, 1, 1 << 24, NULL, "best_fit: documents sorted and placed together [4096]"),
    V(threads, CONFIG_INT, threads, 0, 4096, NULL, "tokenizer threads per rank; 0: all cores [0]"),
    V(report_examples, CONFIG_INT, report_examples, 0, 1 << 20, NULL, "rejected records reported with file:line [10]"),
    V(max_rejected_share, CONFIG_DOUBLE, max_rejected_share, 0, 1, NULL, "fail the run when more than this share of the records read are malformed (or when every record is rejected) [0.5]"),
    V(overwrite, CONFIG_BOOL, overwrite, 0, 1, NULL, "replace an existing prepared folder [false]"),
    V(progress, CONFIG_ENUM, progress, 0, 0, progress_names, "progress on stderr: off or on [on a terminal]"),
};
#undef V
#undef K
#define N_KEYS (sizeof keys / sizeof *keys)

void prepare_config_init(prepare_config *c)
{
    memset(c, 0, sizeof *c);
    c->kind = GALE_SHARD_PRETRAIN;
    c->packing = -1;
    c->seq_len = 2048;
    c->text_mode = TEXT_MODE_DOCUMENT;
    c->separator = gale_xstrdup("%");
    c->json_key = gale_xstrdup("text");
    c->chat_template = gale_xstrdup("v3");
    c->min_chars = 1;
    c->max_record_bytes = 64L << 20;
    c->dedup_exact = c->dedup_near = 1;
    c->near_threshold = 0.8;
    c->minhash_bands = 14;
    c->minhash_rows = 8;
    c->ngram = 5;
    c->max_shingles = 16384;
    c->dedup_memory_mb = 1024;
    c->seed = 1;
    c->val_fraction = 0.01;
    c->shard_rows = 8192;
    c->zstd_level = 3;
    c->pack_window = 4096;
    c->report_examples = 10;
    c->max_rejected_share = 0.5;
    c->progress = -1;
}

static void list_clear(string_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void list_push(string_list *l, const char *s)
{
    l->v = gale_xrealloc(l->v, (l->n + 1) * sizeof *l->v);
    l->v[l->n++] = gale_xstrdup(s);
}

void prepare_config_free(prepare_config *c)
{
    list_clear(&c->inputs);
    list_clear(&c->exclude);
    for (size_t i = 0; i < N_KEYS; i++)
        if (keys[i].kind == KEY_VALUE && keys[i].value.type == CONFIG_STRING) {
            char **slot = (char **)((char *)c + keys[i].offset);
            free(*slot);
            *slot = NULL;
        }
}

static const key_spec *find_key(const char *key)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strcmp(keys[i].key, key))
            return &keys[i];
    return NULL;
}

int prepare_config_is_list(const char *key)
{
    const key_spec *k = find_key(key);
    return k && k->kind == KEY_LIST;
}

static int set_key(prepare_config *c, const key_spec *k, const char *v, const char *where, gale_error *err)
{
    void *slot = (char *)c + k->offset;
    switch (k->kind) {
    case KEY_VALUE:
        return config_value_set(&k->value, slot, k->key, v, where, err);
    case KEY_LIST:
        list_clear(slot);
        list_push(slot, v);
        return 0;
    case KEY_DEDUP:
        if (!strcmp(v, "exact,near") || !strcmp(v, "near,exact"))
            c->dedup_exact = 1, c->dedup_near = 1;
        else if (!strcmp(v, "exact"))
            c->dedup_exact = 1, c->dedup_near = 0;
        else if (!strcmp(v, "near"))
            c->dedup_exact = 0, c->dedup_near = 1;
        else if (!strcmp(v, "none"))
            c->dedup_exact = 0, c->dedup_near = 0;
        else
            return gale_fail(err, "%s: dedup must be exact,near, exact, near or none, got '%s'", where, v);
        return 0;
    }
    return 0;
}

int prepare_config_set(prepare_config *c, const char *key, const char *value, const char *where,
                       gale_error *err)
{
    const key_spec *k = find_key(key);
    if (!k)
        return gale_fail(err, "%s: unknown key '%s' (gale prepare --help lists them)", where, key);
    return set_key(c, k, value, where, err);
}

int prepare_config_append(prepare_config *c, const char *key, const char *value, const char *where,
                          gale_error *err)
{
    const key_spec *k = find_key(key);
    if (!k || k->kind != KEY_LIST)
        return gale_fail(err, "%s: '%s' is not a list key", where, key);
    list_push((string_list *)((char *)c + k->offset), value);
    return 0;
}

/* ---- YAML ---- */

static int read_mapping(prepare_config *c, yaml_document_t *doc, const char *name, gale_error *err)
{
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root)
        return 0; /* an empty file sets nothing */
    char where[1200];
    if (root->type != YAML_MAPPING_NODE) {
        config_yaml_where(name, root, where, sizeof where);
        return gale_fail(err, "%s: the config must be a mapping of keys to values", where);
    }
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(doc, p->key), *vn = yaml_document_get_node(doc, p->value);
        config_yaml_where(name, kn, where, sizeof where);
        if (kn->type != YAML_SCALAR_NODE)
            return gale_fail(err, "%s: keys must be plain names", where);
        const char *key = (const char *)kn->data.scalar.value;
        const key_spec *k = find_key(key);
        if (!k)
            return gale_fail(err, "%s: unknown key '%s' (gale prepare --help lists them)", where, key);
        if (vn->type == YAML_SCALAR_NODE) {
            if (set_key(c, k, (const char *)vn->data.scalar.value, where, err) < 0)
                return -1;
        } else if (vn->type == YAML_SEQUENCE_NODE && k->kind == KEY_LIST) {
            list_clear((string_list *)((char *)c + k->offset));
            for (yaml_node_item_t *it = vn->data.sequence.items.start; it < vn->data.sequence.items.top; it++) {
                yaml_node_t *item = yaml_document_get_node(doc, *it);
                config_yaml_where(name, item, where, sizeof where);
                if (item->type != YAML_SCALAR_NODE)
                    return gale_fail(err, "%s: %s must be a list of strings", where, key);
                list_push((string_list *)((char *)c + k->offset), (const char *)item->data.scalar.value);
            }
        } else {
            return gale_fail(err, "%s: %s must be %s", where, key,
                             k->kind == KEY_LIST ? "a string or a list of strings" : "a single value");
        }
    }
    return 0;
}

int prepare_config_parse_yaml(prepare_config *c, const char *yaml, size_t len, const char *name,
                              gale_error *err)
{
    yaml_document_t doc;
    if (config_yaml_load(&doc, yaml, len, name, err) < 0)
        return -1;
    int rc = read_mapping(c, &doc, name, err);
    yaml_document_delete(&doc);
    return rc;
}

int prepare_config_load_yaml(prepare_config *c, const char *path, gale_error *err)
{
    size_t len;
    char *text = gale_read_file(path, &len, err);
    if (!text)
        return -1;
    int rc = prepare_config_parse_yaml(c, text, len, path, err);
    free(text);
    return rc;
}

int prepare_config_check(const prepare_config *c, gale_error *err)
{
    if (c->inputs.n == 0)
        return gale_fail(err, "no inputs: set inputs in the config or give --input PATH...");
    if (!c->tokenizer)
        return gale_fail(err, "no tokenizer: set tokenizer in the config or give --tokenizer NAME|PATH");
    if (!c->out)
        return gale_fail(err, "no output folder: set out in the config or give --out DIR");
    if (c->max_chars && c->max_chars < c->min_chars)
        return gale_fail(err, "max_chars (%ld) is below min_chars (%ld)", c->max_chars, c->min_chars);
    if (c->minhash_bands * c->minhash_rows > 1024)
        return gale_fail(err, "minhash_bands x minhash_rows = %ld exceeds 1024",
                         c->minhash_bands * c->minhash_rows);
    if (c->kind == GALE_SHARD_SFT && c->packing == GALE_SHARD_CONCAT)
        return gale_fail(err, "packing concat is for pretraining: sft conversations are placed whole (best_fit)");
    return 0;
}

static json_t *list_json(const string_list *l)
{
    json_t *a = json_array();
    for (size_t i = 0; i < l->n; i++)
        json_array_append_new(a, json_string(l->v[i]));
    return a;
}

json_t *prepare_config_to_json(const prepare_config *c)
{
    json_t *o = json_object();
    for (size_t i = 0; i < N_KEYS; i++) {
        const key_spec *k = &keys[i];
        const void *slot = (const char *)c + k->offset;
        json_t *v = NULL;
        switch (k->kind) {
        case KEY_VALUE:
            v = config_value_json(&k->value, slot);
            break;
        case KEY_LIST:
            v = list_json(slot);
            break;
        case KEY_DEDUP:
            v = json_string(c->dedup_exact && c->dedup_near ? "exact,near"
                            : c->dedup_exact               ? "exact"
                            : c->dedup_near                ? "near"
                                                           : "none");
            break;
        }
        json_object_set_new(o, k->key, v);
    }
    return o;
}

void prepare_config_print_keys(FILE *f)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "%s", keys[i].key);
        for (char *p = flag; *p; p++)
            if (*p == '_')
                *p = '-';
        fprintf(f, "  --%-18s %s\n", flag, keys[i].help);
    }
}
