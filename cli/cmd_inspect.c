/* gale inspect: what a prepared folder or a shard holds. The summary is built as one JSON
 * object per kind of thing inspected (printed as is with --json, or as text), and
 * --decode N prints a row as text with its documents and loss-mask marks. Each kind of
 * thing is one branch of inspect_path; a new kind (checkpoints) is one more branch. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/commands.h"
#include "data/manifest.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "train/checkpoint.h"
#include "util/file.h"

/* Marks around tokens that are training targets in SFT rows. */
#define TRAINED_OPEN "\xc2\xab"   /* « */
#define TRAINED_CLOSE "\xc2\xbb"  /* » */

typedef struct inspect_options {
    const char *path;
    const char *tokenizer;  /* for --decode; default: the manifest's */
    const char *split;      /* of --decode in a folder */
    int64_t row;            /* of --decode or --ids; -1: none */
    int ids;                /* 1: print the row as ids (--ids), 0: as text (--decode) */
    int json, shards, verify;
} inspect_options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gale inspect DIR|SHARD.h5 [--shards] [--verify] [--json]\n"
            "       gale inspect DIR|SHARD.h5 --decode N [--split train|val] [--tokenizer M]\n"
            "       gale inspect DIR|SHARD.h5 --ids N [--split train|val]\n"
            "\n"
            "Summarises a folder made by `gale prepare` (its manifest, shards and report.json) or one\n"
            "shard: rows, tokens, real tokens, padding, documents, compression ratio (raw bytes over\n"
            "stored bytes), deduplication counts, tokenizer, kind and packing. A folder whose shards\n"
            "disagree with its manifest is refused with the reason.\n"
            "\n"
            "  --shards          list every shard of the folder\n"
            "  --verify          also check every shard's SHA-256 against the manifest (reads all)\n"
            "  --json            print the summary as JSON\n"
            "  --decode N        print row N (of --split in a folder, counted over its shards in\n"
            "                    order) as text: each document, and in SFT rows the training\n"
            "                    targets between " TRAINED_OPEN " and " TRAINED_CLOSE "\n"
            "  --ids N           print row N as JSON: its tokens, segments and loss mask (for a\n"
            "                    pretraining shard, the mask of every non-padding token)\n"
            "  --split S         train (default) or val\n"
            "  --tokenizer M     the tokenizer (file or name) to decode with (default: the manifest's)\n"
            "  --help            this message\n");
}

static int parse_row(const char *s, int64_t *v)
{
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || end == s || *end || x < 0)
        return -1;
    *v = x;
    return 0;
}

/* Returns 0 to run, 1 when --help was asked, 2 on a usage error (already reported). */
static int parse_options(int argc, char **argv, inspect_options *o)
{
    *o = (inspect_options){.split = "train", .row = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int takes_value = !strcmp(a, "--decode") || !strcmp(a, "--ids") || !strcmp(a, "--split") ||
                          !strcmp(a, "--tokenizer");
        const char *value = NULL;
        if (takes_value) {
            if (i + 1 >= argc) {
                fprintf(stderr, "gale inspect: %s needs a value\n", a);
                return 2;
            }
            value = argv[++i];
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--shards")) {
            o->shards = 1;
        } else if (!strcmp(a, "--verify")) {
            o->verify = 1;
        } else if (!strcmp(a, "--decode") || !strcmp(a, "--ids")) {
            if (parse_row(value, &o->row) != 0) {
                fprintf(stderr, "gale inspect: %s takes a row number, not '%s'\n", a, value);
                return 2;
            }
            o->ids = !strcmp(a, "--ids");
        } else if (!strcmp(a, "--split")) {
            if (strcmp(value, "train") != 0 && strcmp(value, "val") != 0) {
                fprintf(stderr, "gale inspect: --split is train or val, not '%s'\n", value);
                return 2;
            }
            o->split = value;
        } else if (!strcmp(a, "--tokenizer")) {
            o->tokenizer = value;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "gale inspect: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (o->path) {
            fprintf(stderr, "gale inspect: one path at a time ('%s' and '%s' given)\n", o->path, a);
            return 2;
        } else {
            o->path = a;
        }
    }
    if (!o->path) {
        usage(stderr);
        return 2;
    }
    return 0;
}

/* ---- numbers as people read them ---- */

/* 12345678 -> "12,345,678" */
static const char *count_text(char buf[32], int64_t n)
{
    char digits[32];
    int len = snprintf(digits, sizeof digits, "%lld", (long long)(n < 0 ? -n : n));
    char *p = buf;
    if (n < 0)
        *p++ = '-';
    for (int i = 0; i < len; i++) {
        if (i > 0 && (len - i) % 3 == 0)
            *p++ = ',';
        *p++ = digits[i];
    }
    *p = 0;
    return buf;
}

static const char *bytes_text(char buf[32], double bytes)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    snprintf(buf, 32, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
    return buf;
}

static int64_t get_int(const json_t *obj, const char *key)
{
    return json_integer_value(json_object_get(obj, key));
}

/* ---- summaries ---- */

/* What one shard's attributes and storage say, as JSON. */
static json_t *shard_summary(gale_shard *s, const char *name, gale_error *err)
{
    gale_shard_storage st;
    if (shard_storage(s, &st, err) != 0)
        return NULL;
    const gale_shard_meta *m = shard_meta(s);
    int64_t tokens = shard_rows(s) * (m->seq_len + 1);
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:f, s:i, s:i, s:b, s:I, s:I, s:f}", "file", name, "rows",
                     (json_int_t)shard_rows(s), "tokens", (json_int_t)tokens, "real_tokens",
                     (json_int_t)m->n_real_tokens, "docs", (json_int_t)m->n_docs, "padding_fraction",
                     tokens ? 1.0 - (double)m->n_real_tokens / tokens : 0.0, "token_bytes", shard_token_bytes(s),
                     "chunk_rows", st.chunk_rows, "loss_mask", shard_has_loss_mask(s), "raw_bytes",
                     (json_int_t)st.raw_bytes, "stored_bytes", (json_int_t)st.stored_bytes, "compression_ratio",
                     st.stored_bytes ? (double)st.raw_bytes / st.stored_bytes : 0.0);
}

/* Adds a shard's counts to its split's totals. */
static void add_to_split(json_t *split, const json_t *shard)
{
    static const char *const keys[] = {"shards", "rows", "tokens", "real_tokens", "docs", "raw_bytes", "stored_bytes"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        int64_t add = i == 0 ? 1 : get_int(shard, keys[i]);
        json_object_set_new(split, keys[i], json_integer(get_int(split, keys[i]) + add));
    }
    int64_t tokens = get_int(split, "tokens"), stored = get_int(split, "stored_bytes");
    json_object_set_new(split, "padding_fraction",
                        json_real(tokens ? 1.0 - (double)get_int(split, "real_tokens") / tokens : 0.0));
    json_object_set_new(split, "compression_ratio",
                        json_real(stored ? (double)get_int(split, "raw_bytes") / stored : 0.0));
}

static json_t *empty_split(void)
{
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f}", "shards", (json_int_t)0, "rows", (json_int_t)0,
                     "tokens", (json_int_t)0, "real_tokens", (json_int_t)0, "docs", (json_int_t)0, "raw_bytes",
                     (json_int_t)0, "stored_bytes", (json_int_t)0, "padding_fraction", 0.0, "compression_ratio", 0.0);
}

static json_t *dataset_summary(const char *dir, const gale_manifest *m, gale_error *err)
{
    json_t *splits = json_pack("{soso}", "train", empty_split(), "val", empty_split());
    json_t *shards = json_array();
    for (size_t i = 0; i < m->n_shards; i++) {
        char *path = gale_path_join(dir, m->shards[i].file);
        gale_shard *s = shard_open(path, err);
        json_t *one = s ? shard_summary(s, m->shards[i].file, err) : NULL;
        shard_close(s);
        free(path);
        if (!one) {
            json_decref(splits);
            json_decref(shards);
            return NULL;
        }
        json_object_set_new(one, "split", json_string(m->shards[i].split));
        json_object_set_new(one, "sha256", json_string(m->shards[i].sha256));
        add_to_split(json_object_get(splits, m->shards[i].split), one);
        json_array_append_new(shards, one);
    }
    int64_t input_bytes = 0;
    for (size_t i = 0; i < m->n_inputs; i++)
        input_bytes += m->inputs[i].bytes > 0 ? m->inputs[i].bytes : 0;
    json_t *summary =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:{s:s, s:s, s:i, s:i, s:i}, s:{s:I, s:I}, s:o, s:o}", "type",
                  "dataset", "path", dir, "created_at", m->created_at, "kind", shard_kind_name(m->kind), "packing",
                  shard_packing_name(m->packing), "seq_len", m->seq_len, "row_tokens", m->seq_len + 1, "tokenizer",
                  "path", m->tokenizer.path, "sha256", m->tokenizer.sha256, "vocab_size", m->tokenizer.vocab_size,
                  "bos_id", m->tokenizer.bos_id, "eos_id", m->tokenizer.eos_id, "inputs", "files",
                  (json_int_t)m->n_inputs, "bytes", (json_int_t)input_bytes, "splits", splits, "shards", shards);
    /* report.json is written by `gale prepare`; its counts are shown when it is there */
    char *report_path = gale_path_join(dir, "report.json");
    if (gale_path_exists(report_path)) {
        json_error_t jerr;
        json_t *report = json_load_file(report_path, 0, &jerr);
        if (!report) {
            gale_fail(err, "%s:%d: %s", report_path, jerr.line, jerr.text);
            json_decref(summary);
            summary = NULL;
        } else {
            json_object_set_new(summary, "report", report);
        }
    }
    free(report_path);
    return summary;
}

/* ---- text ---- */

static void print_split_line(const char *name, const json_t *s)
{
    char rows[32], tokens[32], real[32], docs[32], stored[32];
    printf("  %-5s %6lld %14s %16s %16s %7.2f%% %13s %11s %6.2fx\n", name, (long long)get_int(s, "shards"),
           count_text(rows, get_int(s, "rows")), count_text(tokens, get_int(s, "tokens")),
           count_text(real, get_int(s, "real_tokens")), 100 * json_real_value(json_object_get(s, "padding_fraction")),
           count_text(docs, get_int(s, "docs")), bytes_text(stored, (double)get_int(s, "stored_bytes")),
           json_real_value(json_object_get(s, "compression_ratio")));
}

static const json_t *path_get(const json_t *obj, const char *a, const char *b, const char *c)
{
    obj = json_object_get(obj, a);
    if (obj && b)
        obj = json_object_get(obj, b);
    if (obj && c)
        obj = json_object_get(obj, c);
    return obj;
}

/* The counts of prepare's report.json that say what was kept and why, when present. */
static void print_report(const json_t *report)
{
    static const struct {
        const char *label, *a, *b;
    } rows[] = {
        {"documents read", "documents", "read"},          {"rejected", "documents", "rejected_total"},
        {"exact duplicates", "documents", "exact_duplicates"}, {"near duplicates", "documents", "near_duplicates"},
        {"kept", "documents", "kept"},
    };
    printf("\nreport.json\n");
    char n[32];
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        const json_t *v = path_get(report, rows[i].a, rows[i].b, NULL);
        if (json_is_integer(v))
            printf("  %-18s %14s\n", rows[i].label, count_text(n, json_integer_value(v)));
    }
    const json_t *rejected = path_get(report, "documents", "rejected", NULL);
    const char *reason;
    const json_t *count;
    json_object_foreach((json_t *)rejected, reason, count)
        if (json_integer_value(count) > 0)
            printf("    %-16s %14s\n", reason, count_text(n, json_integer_value(count)));
    static const char *const splits[] = {"train", "val"};
    for (int s = 0; s < 2; s++) {
        const json_t *truncated = path_get(report, "splits", splits[s], "truncated");
        const json_t *dropped = path_get(report, "splits", splits[s], "dropped");
        if (json_integer_value(truncated) > 0 || json_integer_value(dropped) > 0) {
            char t[32];
            printf("  %-5s too long: %s truncated, %s dropped\n", splits[s],
                   count_text(t, json_integer_value(truncated)), count_text(n, json_integer_value(dropped)));
        }
    }
}

static void print_dataset(const json_t *d, int list_shards)
{
    const json_t *tok = json_object_get(d, "tokenizer"), *inputs = json_object_get(d, "inputs");
    char n[32], b[32];
    printf("dataset    %s (prepared %s)\n", json_string_value(json_object_get(d, "path")),
           json_string_value(json_object_get(d, "created_at")));
    printf("kind       %s, packing %s, seq_len %lld (rows of %lld tokens)\n",
           json_string_value(json_object_get(d, "kind")), json_string_value(json_object_get(d, "packing")),
           (long long)get_int(d, "seq_len"), (long long)get_int(d, "row_tokens"));
    printf("tokenizer  %s\n           sha256 %s, vocab %lld, bos %lld, eos %lld\n",
           json_string_value(json_object_get(tok, "path")), json_string_value(json_object_get(tok, "sha256")),
           (long long)get_int(tok, "vocab_size"), (long long)get_int(tok, "bos_id"), (long long)get_int(tok, "eos_id"));
    printf("inputs     %s files, %s\n\n", count_text(n, get_int(inputs, "files")),
           bytes_text(b, (double)get_int(inputs, "bytes")));
    printf("  %-5s %6s %14s %16s %16s %8s %13s %11s %7s\n", "split", "shards", "rows", "tokens", "real tokens",
           "padding", "docs", "stored", "ratio");
    print_split_line("train", path_get(d, "splits", "train", NULL));
    print_split_line("val", path_get(d, "splits", "val", NULL));
    if (list_shards) {
        printf("\n  %-24s %-5s %10s %14s %7s %11s %7s  %s\n", "shard", "split", "rows", "real tokens", "padding",
               "stored", "ratio", "sha256");
        size_t i;
        const json_t *s;
        json_array_foreach(json_object_get(d, "shards"), i, s)
        {
            char rows[32], real[32], stored[32];
            printf("  %-24s %-5s %10s %14s %6.2f%% %11s %6.2fx  %.16s\n", json_string_value(json_object_get(s, "file")),
                   json_string_value(json_object_get(s, "split")), count_text(rows, get_int(s, "rows")),
                   count_text(real, get_int(s, "real_tokens")),
                   100 * json_real_value(json_object_get(s, "padding_fraction")),
                   bytes_text(stored, (double)get_int(s, "stored_bytes")),
                   json_real_value(json_object_get(s, "compression_ratio")),
                   json_string_value(json_object_get(s, "sha256")));
        }
    }
    const json_t *report = json_object_get(d, "report");
    if (report)
        print_report(report);
}

static void print_shard(const json_t *s, const gale_shard_meta *m)
{
    char rows[32], tokens[32], real[32], docs[32], raw[32], stored[32];
    printf("shard      %s\n", json_string_value(json_object_get(s, "file")));
    printf("kind       %s, packing %s, seq_len %d (rows of %d tokens)%s\n", shard_kind_name(m->kind),
           shard_packing_name(m->packing), m->seq_len, m->seq_len + 1,
           json_is_true(json_object_get(s, "loss_mask")) ? ", with loss mask" : "");
    printf("tokenizer  sha256 %s, vocab %d, bos %d, eos %d\n", m->tokenizer_sha256, m->vocab_size, m->bos_id,
           m->eos_id);
    printf("rows       %s\n", count_text(rows, get_int(s, "rows")));
    printf("tokens     %s, of which real %s (padding %.2f%%)\n", count_text(tokens, get_int(s, "tokens")),
           count_text(real, get_int(s, "real_tokens")), 100 * json_real_value(json_object_get(s, "padding_fraction")));
    printf("documents  %s\n", count_text(docs, get_int(s, "docs")));
    printf("storage    uint%lld tokens, %lld rows per chunk, %s raw, %s stored, ratio %.2fx\n",
           (long long)get_int(s, "token_bytes") * 8, (long long)get_int(s, "chunk_rows"),
           bytes_text(raw, (double)get_int(s, "raw_bytes")), bytes_text(stored, (double)get_int(s, "stored_bytes")),
           json_real_value(json_object_get(s, "compression_ratio")));
}

static void print_json(json_t *j)
{
    char *text = json_dumps(j, JSON_INDENT(2));
    printf("%s\n", text);
    free(text);
}

/* ---- decoding a row ---- */

/* Prints ids[from, to) of a segment: the decoded text between prefix decodings, so word
 * boundaries come out as in the whole document. */
static void print_span(const gale_tokenizer *tok, const int32_t *seg_ids, size_t from, size_t to)
{
    gale_bytes before = {0}, upto = {0};
    tokenizer_decode(tok, seg_ids, from, &before);
    tokenizer_decode(tok, seg_ids, to, &upto);
    if (upto.n >= before.n && (before.n == 0 || !memcmp(upto.v, before.v, before.n))) {
        if (upto.n > before.n)
            fwrite(upto.v + before.n, 1, upto.n - before.n, stdout);
    } else {
        gale_bytes alone = {0};
        tokenizer_decode(tok, seg_ids + from, to - from, &alone);
        if (alone.n)
            fwrite(alone.v, 1, alone.n, stdout);
        gale_bytes_free(&alone);
    }
    gale_bytes_free(&before);
    gale_bytes_free(&upto);
}

/* 1 for a control token (BOS, EOS, [INST], ...): one that decodes to nothing on its own
 * although it is not the bare word boundary U+2581 (whose space decoding drops at the start). */
static int is_control(const gale_tokenizer *tok, int32_t id)
{
    gale_bytes text = {0};
    tokenizer_decode(tok, &id, 1, &text);
    const char *piece = tokenizer_id_piece(tok, id);
    int control = text.n == 0 && piece && strncmp(piece, "\xe2\x96\x81", 3) != 0;
    gale_bytes_free(&text);
    return control;
}

/* One document of a row: control tokens shown as their pieces, the training targets of SFT
 * rows between marks. */
static void print_segment(const gale_tokenizer *tok, const gale_shard_meta *m, const int32_t *ids,
                          const uint8_t *mask, size_t n)
{
    int marks = m->kind == GALE_SHARD_SFT, in_trained = 0;
    for (size_t from = 0; from < n;) {
        int control = is_control(tok, ids[from]);
        size_t to = from + 1;
        while (!control && to < n && mask[to] == mask[from] && !is_control(tok, ids[to]))
            to++;
        int trained = marks && mask[from];
        if (trained != in_trained)
            fputs(trained ? TRAINED_OPEN : TRAINED_CLOSE, stdout);
        in_trained = trained;
        if (control)
            fputs(tokenizer_id_piece(tok, ids[from]), stdout);
        else
            print_span(tok, ids, from, to);
        from = to;
    }
    if (in_trained)
        fputs(TRAINED_CLOSE, stdout);
}

/* The tokenizer to decode with: --tokenizer, else the manifest's (as given, then beside the
 * folder, then as a name such as mistral-v1); it must be the one the shard was made with. */
static gale_tokenizer *decode_tokenizer(const inspect_options *o, const char *dir, const gale_manifest *m,
                                        const gale_shard_meta *meta, gale_error *err)
{
    const char *path = o->tokenizer;
    char *beside = NULL;
    if (!path && m && m->tokenizer.path && m->tokenizer.path[0]) {
        path = m->tokenizer.path;
        if (!gale_path_exists(path) && path[0] != '/') {
            beside = gale_path_join(dir, path);
            if (gale_path_exists(beside))
                path = beside;
        }
    }
    if (!path) {
        gale_fail(err, "--decode needs --tokenizer PATH (a shard does not record where its tokenizer is)");
        return NULL;
    }
    gale_tokenizer *tok = tokenizer_load(path, err);
    if (tok && strcmp(tokenizer_sha256(tok), meta->tokenizer_sha256) != 0) {
        gale_fail(err, "%s: sha256 %.12s... is not the tokenizer of these shards (%.12s...)", path,
                  tokenizer_sha256(tok), meta->tokenizer_sha256);
        tokenizer_free(tok);
        tok = NULL;
    }
    free(beside);
    return tok;
}

static int decode_row(gale_shard *s, int64_t row, const char *where, const gale_tokenizer *tok, gale_error *err)
{
    const gale_shard_meta *m = shard_meta(s);
    size_t S = (size_t)m->seq_len + 1;
    int32_t *ids = gale_xmalloc(S * sizeof *ids);
    uint16_t *seg = gale_xmalloc(S * sizeof *seg);
    uint8_t *mask = gale_xmalloc(S);
    int rc = shard_read_rows(s, row, 1, ids, seg, mask, err);
    if (rc == 0) {
        size_t real = 0, docs = 0;
        for (size_t j = 0; j < S; j++) {
            real += seg[j] != GALE_SEGMENT_PAD;
            docs += seg[j] != GALE_SEGMENT_PAD && (j == 0 || seg[j] != seg[j - 1]);
        }
        printf("%s: %zu tokens, %zu document%s, %zu padding%s\n", where, S, docs, docs == 1 ? "" : "s", S - real,
               m->kind == GALE_SHARD_SFT ? "; " TRAINED_OPEN "..." TRAINED_CLOSE " marks the training targets"
                                         : "; every real token is a training target");
        for (size_t j = 0; j < S && seg[j] != GALE_SEGMENT_PAD;) {
            size_t end = j;
            while (end < S && seg[end] == seg[j])
                end++;
            printf("--- document %u, tokens %zu..%zu%s ---\n", seg[j], j, end - 1,
                   j == 0 && ids[0] != m->bos_id ? " (continued from the previous row)" : "");
            print_segment(tok, m, ids + j, mask + j, end - j);
            printf("\n");
            j = end;
        }
        if (real < S)
            printf("--- padding, tokens %zu..%zu ---\n", real, S - 1);
    }
    free(ids);
    free(seg);
    free(mask);
    return rc;
}

/* Row `row` as one line of JSON: tokens, segments and loss mask, as the loader reads them. */
static int dump_row(gale_shard *s, int64_t row, const char *where, gale_error *err)
{
    size_t S = (size_t)shard_meta(s)->seq_len + 1;
    int32_t *ids = gale_xmalloc(S * sizeof *ids);
    uint16_t *seg = gale_xmalloc(S * sizeof *seg);
    uint8_t *mask = gale_xmalloc(S);
    int rc = shard_read_rows(s, row, 1, ids, seg, mask, err);
    if (rc == 0) {
        json_t *tokens = json_array(), *segments = json_array(), *loss_mask = json_array();
        for (size_t j = 0; j < S; j++) {
            json_array_append_new(tokens, json_integer(ids[j]));
            json_array_append_new(segments, json_integer(seg[j]));
            json_array_append_new(loss_mask, json_integer(mask[j]));
        }
        json_t *out = json_pack("{s:s, s:o, s:o, s:o}", "row", where, "tokens", tokens, "segments", segments,
                                "loss_mask", loss_mask);
        char *text = json_dumps(out, JSON_COMPACT);
        printf("%s\n", text);
        free(text);
        json_decref(out);
    }
    free(ids);
    free(seg);
    free(mask);
    return rc;
}

/* Prints row `row` of shard s, as --ids or --decode ask; where names it in the output. */
static int print_row(const inspect_options *o, gale_shard *s, int64_t row, const char *where, const char *dir,
                     const gale_manifest *m, gale_error *err)
{
    if (o->ids)
        return dump_row(s, row, where, err);
    gale_tokenizer *tok = decode_tokenizer(o, dir, m, shard_meta(s), err);
    int rc = tok ? decode_row(s, row, where, tok, err) : -1;
    tokenizer_free(tok);
    return rc;
}

/* ---- the kinds of thing inspected ---- */

/* Row o->row of the split, counted over its shards in manifest order as the loader does. */
static int dataset_row(const inspect_options *o, const gale_manifest *m, gale_error *err)
{
    int64_t row = o->row;
    size_t i = 0;
    for (; i < m->n_shards; i++) {
        if (strcmp(m->shards[i].split, o->split) != 0)
            continue;
        if (row < m->shards[i].rows)
            break;
        row -= m->shards[i].rows;
    }
    if (i == m->n_shards)
        return gale_fail(err, "%s: row %lld is past the end of the %s split (%lld rows)", o->path, (long long)o->row,
                         o->split, (long long)manifest_split_rows(m, o->split));
    char *path = gale_path_join(o->path, m->shards[i].file);
    gale_shard *s = shard_open(path, err);
    char where[512];
    snprintf(where, sizeof where, "row %lld of %s (%s row %lld)", (long long)o->row, o->split, m->shards[i].file,
             (long long)row);
    int rc = s ? print_row(o, s, row, where, o->path, m, err) : -1;
    shard_close(s);
    free(path);
    return rc;
}

static int inspect_dataset(const inspect_options *o, gale_error *err)
{
    gale_manifest m;
    if (manifest_load(&m, o->path, o->verify, err) != 0)
        return -1;
    int rc = 0;
    if (o->row >= 0) {
        rc = dataset_row(o, &m, err);
    } else {
        json_t *summary = dataset_summary(o->path, &m, err);
        if (!summary)
            rc = -1;
        else if (o->json)
            print_json(summary);
        else
            print_dataset(summary, o->shards);
        json_decref(summary);
    }
    manifest_free(&m);
    return rc;
}

static int inspect_shard(const inspect_options *o, gale_error *err)
{
    gale_shard *s = shard_open(o->path, err);
    if (!s)
        return -1;
    int rc = 0;
    if (o->row >= 0) {
        char where[512];
        snprintf(where, sizeof where, "row %lld of %s", (long long)o->row, o->path);
        rc = print_row(o, s, o->row, where, ".", NULL, err);
    } else {
        json_t *summary = shard_summary(s, o->path, err);
        if (!summary) {
            rc = -1;
        } else {
            const gale_shard_meta *m = shard_meta(s);
            json_object_set_new(summary, "type", json_string("shard"));
            json_object_set_new(summary, "meta",
                                json_pack("{s:i, s:i, s:s, s:i, s:i, s:s, s:s}", "seq_len", m->seq_len, "vocab_size",
                                          m->vocab_size, "tokenizer_sha256", m->tokenizer_sha256, "bos_id", m->bos_id,
                                          "eos_id", m->eos_id, "kind", shard_kind_name(m->kind), "packing",
                                          shard_packing_name(m->packing)));
            if (o->json)
                print_json(summary);
            else
                print_shard(summary, m);
        }
        json_decref(summary);
    }
    shard_close(s);
    return rc;
}

/* What path is, by what it holds: a prepared folder has manifest.json; a shard is a file. */
static int inspect_path(const inspect_options *o, gale_error *err)
{
    struct stat st;
    if (stat(o->path, &st) != 0)
        return gale_fail_errno(err, "%s", o->path);
    if (S_ISDIR(st.st_mode)) {
        char *manifest = gale_path_join(o->path, GALE_MANIFEST_FILE);
        int is_dataset = gale_path_exists(manifest);
        free(manifest);
        if (is_dataset)
            return inspect_dataset(o, err);
        char *checkpoint = checkpoint_resolve(o->path, err);
        if (!checkpoint)
            return gale_fail(err, "%s: not a prepared folder (no %s) nor a checkpoint or run folder", o->path,
                             GALE_MANIFEST_FILE);
        int rc = checkpoint_describe(checkpoint, stdout, err);
        free(checkpoint);
        return rc;
    }
    return inspect_shard(o, err);
}

int cmd_inspect(int argc, char **argv)
{
    inspect_options o;
    int parsed = parse_options(argc, argv, &o);
    if (parsed != 0)
        return parsed == 1 ? 0 : 2;
    gale_error err;
    if (inspect_path(&o, &err) != 0) {
        fprintf(stderr, "gale inspect: %s\n", err.msg);
        return 1;
    }
    return 0;
}
