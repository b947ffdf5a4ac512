/* prepare: read → filter → dedup (global) → tokenize → pack → shards, over MPI ranks. */
#include "data/prepare.h"

#include <fcntl.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "data/chat.h"
#include "data/chat_formats.h"
#include "data/dedup.h"
#include "data/manifest.h"
#include "data/normalize.h"
#include "data/pack.h"
#include "data/reader.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "util/file.h"
#include "util/lock.h"
#include "util/progress.h"
#include "util/rank_agreement.h"

/* A batch is processed on all cores when it holds this many documents or bytes. */
#define BATCH_DOCS 2048
#define BATCH_BYTES (16u << 20)
/* Order keys: file index in the high bits, the record's first line in the low 40. */
#define ORDER_LINE_BITS 40
#define ORDER_MAX_FILES (1u << 24)

/* Why a record is not used; those before REJECT_TOO_SHORT mirror record_status (malformed
 * records), the length filters come after. A conversation the chat template refuses in
 * pass 2 is REJECT_INVALID_CONVERSATION too. */
typedef enum {
    REJECT_NONE,
    REJECT_BAD_JSON,
    REJECT_MISSING_KEY,
    REJECT_INVALID_UTF8,
    REJECT_EMPTY,
    REJECT_INVALID_CONVERSATION,
    REJECT_UNTRAINED,
    REJECT_TOO_SHORT,
    REJECT_TOO_LONG,
    REJECT_N
} reject_reason;

/* report.json's names: the reader's for malformed records, then the filters'. */
static const char *reject_name(reject_reason why)
{
    static const char *const filter_names[] = {"too_short", "too_long"};
    return why < REJECT_TOO_SHORT ? record_status_name((record_status)why) : filter_names[why - REJECT_TOO_SHORT];
}

enum { SPLIT_TRAIN, SPLIT_VAL, N_SPLITS };
static const char *const split_names[] = {"train", "val"};

/* Every count of report.json that is summed over ranks. */
typedef struct prepare_counts {
    uint64_t files_read, unreadable_files, bytes;
    uint64_t records, rejected[REJECT_N];
    uint64_t exact, near, kept;
    uint64_t candidate_pairs, confirmed_pairs, spilled_bytes;
    uint64_t cpu_us_read, cpu_us_write; /* CPU time of the two passes, all threads */
    struct {
        uint64_t docs, tokens, padding, rows, shards, truncated, dropped, truncated_tokens;
    } split[N_SPLITS];
} prepare_counts;

/* One split's output on this rank: its packer and the shard being written. */
typedef struct split_output {
    packer *pack;
    gale_shard_writer *writer;
    int64_t shard_docs;
    int shard_index;
    gale_bytes shard_names; /* "name\n" per finished shard */
} split_output;

/* Documents gathered for one parallel step. */
typedef struct doc_batch {
    gale_bytes text;
    size_t *offset, *len, *near_from;
    uint64_t *order;
    json_t **json;
    gale_ids *ids;
    gale_bytes *mask;
    dedup_features *features;
    char **chat_error;
    size_t n, cap;
} doc_batch;

/* A piece of this rank's input: a whole file, or a byte range of a big line-oriented one. */
typedef struct input_unit {
    size_t file;
    uint64_t start, end;  /* byte range; end UINT64_MAX: the whole file */
    uint64_t first_line;  /* line number (in the file) of the range's first line */
    int first_piece;      /* the file's first (or only) piece: counts the file once */
    int owner;            /* the rank that reads it */
} input_unit;

typedef struct prepare_ctx {
    const prepare_config *cfg;
    MPI_Comm comm;
    int rank, size;
    char **paths;
    size_t n_paths;
    uint64_t *file_bytes;
    input_unit *units; /* this rank's share of the input, in input order */
    size_t n_units;
    char *partial_dir;
    gale_lock out_lock; /* rank 0: OUT.lock, one prepare per output */
    gale_tokenizer *tok;
    tokenizer_encoder **encoders; /* one per OpenMP thread: scratch and word cache kept over batches */
    int n_encoders;
    enum chat_template chat;
    gale_shard_packing packing;
    reader_options ropt;
    dedup_options dopt;
    dedup_index *dedup;
    size_t next_local; /* pass 2: local dedup index of the next accepted record */
    prepare_counts counts;
    json_t *examples; /* the first rejected records, with file and line */
    FILE *removed;
    char *removed_part;
    split_output out[N_SPLITS];
    gale_progress progress;
    uint64_t progress_bytes_done, progress_docs;
} prepare_ctx;

/* ---- small helpers ---- */

/* CPU time of this process (every thread), in microseconds. */
static uint64_t cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t order_key(size_t file, uint64_t line)
{
    return ((uint64_t)file << ORDER_LINE_BITS) | line;
}

static size_t order_file(uint64_t order)
{
    return (size_t)(order >> ORDER_LINE_BITS);
}

static uint64_t order_line(uint64_t order)
{
    return order & ((1ull << ORDER_LINE_BITS) - 1);
}

/* Bytes of the file a unit covers. */
static uint64_t unit_bytes(const prepare_ctx *c, const input_unit *u)
{
    return u->end == UINT64_MAX ? c->file_bytes[u->file] : u->end - u->start;
}

/* Every rank learns whether any failed; a rank that did not fail gets a message saying so. */
static int agree(prepare_ctx *c, int rc, gale_error *err)
{
    int failed = rc < 0, any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, c->comm);
    if (any && !failed)
        gale_fail(err, "stopped because another rank failed (its message is above)");
    return any ? -1 : 0;
}

static reject_reason classify(const prepare_ctx *c, const reader_record *rec)
{
    if (rec->status != RECORD_OK)
        return (reject_reason)rec->status;
    size_t chars = utf8_length(rec->text, rec->len);
    if (chars < (size_t)c->cfg->min_chars)
        return REJECT_TOO_SHORT;
    if (c->cfg->max_chars && chars > (size_t)c->cfg->max_chars)
        return REJECT_TOO_LONG;
    return REJECT_NONE;
}

/* Counts a rejected record, and reports it on stderr and in report.json while fewer than
 * report_examples have been. */
static void note_rejected(prepare_ctx *c, size_t file, uint64_t line, reject_reason why, const char *detail)
{
    c->counts.rejected[why]++;
    if (json_array_size(c->examples) >= (size_t)c->cfg->report_examples)
        return;
    fprintf(stderr, "gale prepare: skipped %s:%llu: %s%s%s\n", c->paths[file], (unsigned long long)line,
            reject_name(why), detail ? ": " : "", detail ? detail : "");
    json_array_append_new(c->examples, json_pack("{s:s, s:I, s:s, s:s*}", "source", c->paths[file], "line",
                                                 (json_int_t)line, "reason", reject_name(why), "detail", detail));
}

static void note_unreadable(prepare_ctx *c, size_t file, const char *message)
{
    c->counts.unreadable_files++;
    fprintf(stderr, "gale prepare: %s (the file's remaining records are skipped)\n", message);
    if (json_array_size(c->examples) < (size_t)c->cfg->report_examples)
        json_array_append_new(c->examples, json_pack("{s:s, s:s, s:s}", "source", c->paths[file], "reason",
                                                     "unreadable", "detail", message));
}

/* The reason a --removed line gives for a rejected record. */
static const char *removed_reason(reject_reason why)
{
    return why >= REJECT_TOO_SHORT ? "filter" : why == REJECT_UNTRAINED ? "untrained" : "malformed";
}

/* One line of the --removed file. */
static void write_removed(prepare_ctx *c, uint64_t order, const char *reason, const uint64_t *duplicate_of)
{
    if (!c->removed)
        return;
    json_t *o = json_pack("{s:s, s:I, s:s}", "source", c->paths[order_file(order)], "line",
                          (json_int_t)order_line(order), "reason", reason);
    if (duplicate_of)
        json_object_set_new(o, "duplicate_of",
                            json_pack("{s:s, s:I}", "source", c->paths[order_file(*duplicate_of)], "line",
                                      (json_int_t)order_line(*duplicate_of)));
    json_dumpf(o, c->removed, JSON_COMPACT);
    fputc('\n', c->removed);
    json_decref(o);
}

/* ---- batches ---- */

static void doc_batch_add(doc_batch *b, uint64_t order, const reader_record *rec)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : BATCH_DOCS;
        b->offset = gale_xrealloc(b->offset, cap * sizeof *b->offset);
        b->len = gale_xrealloc(b->len, cap * sizeof *b->len);
        b->near_from = gale_xrealloc(b->near_from, cap * sizeof *b->near_from);
        b->order = gale_xrealloc(b->order, cap * sizeof *b->order);
        b->json = gale_xrealloc(b->json, cap * sizeof *b->json);
        b->ids = gale_xrealloc(b->ids, cap * sizeof *b->ids);
        b->mask = gale_xrealloc(b->mask, cap * sizeof *b->mask);
        b->features = gale_xrealloc(b->features, cap * sizeof *b->features);
        b->chat_error = gale_xrealloc(b->chat_error, cap * sizeof *b->chat_error);
        memset(b->ids + b->cap, 0, (cap - b->cap) * sizeof *b->ids);
        memset(b->mask + b->cap, 0, (cap - b->cap) * sizeof *b->mask);
        memset(b->features + b->cap, 0, (cap - b->cap) * sizeof *b->features);
        memset(b->chat_error + b->cap, 0, (cap - b->cap) * sizeof *b->chat_error);
        b->cap = cap;
    }
    b->offset[b->n] = b->text.n;
    b->len[b->n] = rec->len;
    b->near_from[b->n] = rec->near_from;
    b->order[b->n] = order;
    b->json[b->n] = rec->json ? json_incref(rec->json) : NULL;
    gale_bytes_append(&b->text, rec->text, rec->len);
    b->n++;
}

static int doc_batch_full(const doc_batch *b)
{
    return b->n >= BATCH_DOCS || b->text.n >= BATCH_BYTES;
}

static void doc_batch_clear(doc_batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        json_decref(b->json[i]);
        free(b->chat_error[i]);
        b->chat_error[i] = NULL;
    }
    b->n = 0;
    b->text.n = 0;
}

static void doc_batch_free(doc_batch *b)
{
    doc_batch_clear(b);
    for (size_t i = 0; i < b->cap; i++) {
        gale_ids_free(&b->ids[i]);
        gale_bytes_free(&b->mask[i]);
        dedup_features_free(&b->features[i]);
    }
    gale_bytes_free(&b->text);
    free(b->offset);
    free(b->len);
    free(b->near_from);
    free(b->order);
    free(b->json);
    free(b->ids);
    free(b->mask);
    free(b->features);
    free(b->chat_error);
}

/* ---- pass 1: read, filter, fingerprint ---- */

static int pass1_flush(prepare_ctx *c, doc_batch *b, gale_error *err)
{
    const minhasher *m = dedup_index_minhasher(c->dedup);
#pragma omp parallel
    {
        gale_bytes scratch = {0};
#pragma omp for schedule(dynamic, 16)
        for (size_t i = 0; i < b->n; i++)
            dedup_features_compute(&c->dopt, m, (const char *)b->text.v + b->offset[i], b->len[i], b->near_from[i],
                                   &scratch, &b->features[i]);
        gale_bytes_free(&scratch);
    }
    for (size_t i = 0; i < b->n; i++)
        if (dedup_index_add(c->dedup, b->order[i], &b->features[i], err) < 0)
            return -1;
    doc_batch_clear(b);
    return 0;
}

/* Reads this rank's files; visit is called for each accepted record. */
typedef int (*record_visitor)(prepare_ctx *c, doc_batch *b, size_t file, const reader_record *rec,
                              gale_error *err);

static int read_files(prepare_ctx *c, doc_batch *b, int count_rejects, record_visitor visit,
                      int (*flush)(prepare_ctx *, doc_batch *, gale_error *), gale_error *err)
{
    c->progress_bytes_done = 0;
    c->progress_docs = 0;
    for (size_t u = 0; u < c->n_units; u++) {
        const input_unit *unit = &c->units[u];
        size_t f = unit->file;
        gale_error rerr;
        doc_reader *r = unit->end == UINT64_MAX
                            ? reader_open(c->paths[f], &c->ropt, &rerr)
                            : reader_open_range(c->paths[f], &c->ropt, unit->start, unit->end, unit->first_line, &rerr);
        if (!r) {
            if (count_rejects && unit->first_piece)
                note_unreadable(c, f, rerr.msg);
            continue;
        }
        if (count_rejects && unit->first_piece)
            c->counts.files_read++;
        reader_record rec;
        int got;
        while ((got = reader_next(r, &rec, &rerr)) == 1) {
            if (rec.line >= (1ull << ORDER_LINE_BITS)) {
                reader_close(r);
                return gale_fail(err, "%s: more than 2^40 lines", c->paths[f]);
            }
            c->progress_docs++;
            reject_reason why = classify(c, &rec);
            if (why != REJECT_NONE) {
                if (count_rejects) {
                    c->counts.records++;
                    note_rejected(c, f, rec.line, why, rec.detail);
                } else {
                    write_removed(c, order_key(f, rec.line), removed_reason(why), NULL);
                }
                continue;
            }
            if (count_rejects)
                c->counts.records++;
            if (visit(c, b, f, &rec, err) < 0 || (doc_batch_full(b) && flush(c, b, err) < 0)) {
                reader_close(r);
                return -1;
            }
            if ((c->progress_docs & 255) == 0)
                progress_update(&c->progress, c->progress_docs, c->progress_bytes_done + reader_bytes_consumed(r));
        }
        if (got < 0 && count_rejects)
            note_unreadable(c, f, rerr.msg);
        c->progress_bytes_done += unit_bytes(c, unit);
        progress_update(&c->progress, c->progress_docs, c->progress_bytes_done);
        reader_close(r);
    }
    return flush(c, b, err);
}

static int pass1_visit(prepare_ctx *c, doc_batch *b, size_t file, const reader_record *rec, gale_error *err)
{
    doc_batch_add(b, order_key(file, rec->line), rec);
    return 0;
}

/* ---- pass 2: tokenize, split, pack, write ---- */

static int split_of(const prepare_ctx *c, const char *text, size_t len)
{
    uint64_t h = XXH3_64bits_withSeed(text, len, c->cfg->seed ^ 0x73706c6974ull);
    return (double)(h >> 11) * 0x1.0p-53 < c->cfg->val_fraction ? SPLIT_VAL : SPLIT_TRAIN;
}

static int shard_open_next(prepare_ctx *c, int s, gale_error *err)
{
    split_output *o = &c->out[s];
    char name[64];
    if (c->size > 1)
        snprintf(name, sizeof name, "%s-r%03d-%05d.h5", split_names[s], c->rank, o->shard_index);
    else
        snprintf(name, sizeof name, "%s-%05d.h5", split_names[s], o->shard_index);
    char *path = gale_path_join(c->partial_dir, name);
    gale_shard_meta meta = {
        .seq_len = (int)c->cfg->seq_len,
        .vocab_size = tokenizer_vocab_size(c->tok),
        .bos_id = tokenizer_bos_id(c->tok),
        .eos_id = tokenizer_eos_id(c->tok),
        .kind = (gale_shard_kind)c->cfg->kind,
        .packing = c->packing,
    };
    memcpy(meta.tokenizer_sha256, tokenizer_sha256(c->tok), 65);
    o->writer = shard_writer_create(path, &meta, (int)c->cfg->zstd_level, err);
    free(path);
    if (!o->writer)
        return -1;
    o->shard_docs = 0;
    gale_bytes_append(&o->shard_names, name, strlen(name));
    gale_bytes_push(&o->shard_names, '\n');
    o->shard_index++;
    c->counts.split[s].shards++;
    return 0;
}

/* Moves the packer's finished rows into shards of shard_rows rows. */
static int drain_rows(prepare_ctx *c, int s, gale_error *err)
{
    split_output *o = &c->out[s];
    packed_rows *rows = packer_rows(o->pack);
    size_t S = (size_t)c->cfg->seq_len + 1, done = 0;
    while (done < rows->n_rows) {
        if (!o->writer && shard_open_next(c, s, err) < 0)
            return -1;
        size_t room = (size_t)c->cfg->shard_rows - (size_t)shard_writer_rows(o->writer);
        size_t take = rows->n_rows - done < room ? rows->n_rows - done : room;
        if (shard_writer_append(o->writer, rows->tokens + done * S, rows->segments + done * S,
                                rows->loss_mask ? rows->loss_mask + done * S : NULL, take, err) < 0)
            return -1;
        for (size_t r = done; r < done + take; r++)
            o->shard_docs += rows->docs[r];
        done += take;
        if (shard_writer_rows(o->writer) == c->cfg->shard_rows) {
            gale_shard_writer *w = o->writer;
            o->writer = NULL;
            if (shard_writer_finish(w, o->shard_docs, err) < 0)
                return -1;
        }
    }
    packer_clear_rows(o->pack);
    return 0;
}

static int pass2_flush(prepare_ctx *c, doc_batch *b, gale_error *err)
{
    int sft = c->cfg->kind == GALE_SHARD_SFT;
#pragma omp parallel num_threads(c->n_encoders)
    {
        tokenizer_encoder *enc = c->encoders[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 4)
        for (size_t i = 0; i < b->n; i++) {
            gale_ids *ids = &b->ids[i];
            ids->n = 0;
            b->mask[i].n = 0;
            if (sft) {
                gale_error cerr;
                if (chat_conversation_encode(c->tok, enc, c->chat, CHAT_FOR_TRAINING, b->json[i], ids, &b->mask[i],
                                             &cerr) < 0)
                    b->chat_error[i] = gale_xstrdup(cerr.msg);
            } else {
                gale_ids_push(ids, tokenizer_bos_id(c->tok));
                tokenizer_encoder_encode(enc, (const char *)b->text.v + b->offset[i], b->len[i], ids);
                gale_ids_push(ids, tokenizer_eos_id(c->tok));
            }
        }
    }
    for (size_t i = 0; i < b->n; i++) {
        if (b->chat_error[i]) {
            note_rejected(c, order_file(b->order[i]), order_line(b->order[i]), REJECT_INVALID_CONVERSATION,
                          b->chat_error[i]);
            c->counts.kept--; /* kept by dedup, refused by the chat template */
            write_removed(c, b->order[i], "malformed", NULL);
            continue;
        }
        int s = split_of(c, (const char *)b->text.v + b->offset[i], b->len[i]);
        packer_add(c->out[s].pack, b->ids[i].v, sft ? b->mask[i].v : NULL, b->ids[i].n);
        if (drain_rows(c, s, err) < 0)
            return -1;
    }
    doc_batch_clear(b);
    return 0;
}

static int pass2_visit(prepare_ctx *c, doc_batch *b, size_t file, const reader_record *rec, gale_error *err)
{
    uint64_t dup;
    dedup_fate fate = dedup_fate_of(c->dedup, c->next_local++, &dup);
    if (fate != DEDUP_KEEP) {
        write_removed(c, order_key(file, rec->line), fate == DEDUP_EXACT ? "exact" : "near", &dup);
        return 0;
    }
    doc_batch_add(b, order_key(file, rec->line), rec);
    return 0;
}

static int finish_outputs(prepare_ctx *c, gale_error *err)
{
    for (int s = 0; s < N_SPLITS; s++) {
        split_output *o = &c->out[s];
        packer_finish(o->pack);
        if (drain_rows(c, s, err) < 0)
            return -1;
        if (o->writer) {
            gale_shard_writer *w = o->writer;
            o->writer = NULL;
            if (shard_writer_finish(w, o->shard_docs, err) < 0)
                return -1;
        }
        const pack_stats *st = packer_stats(o->pack);
        c->counts.split[s].docs = st->docs;
        c->counts.split[s].tokens = st->real_tokens;
        c->counts.split[s].padding = st->padding_tokens;
        c->counts.split[s].rows = st->rows;
        c->counts.split[s].truncated = st->truncated;
        c->counts.split[s].dropped = st->dropped;
        c->counts.split[s].truncated_tokens = st->truncated_tokens;
    }
    return 0;
}

/* ---- setup ---- */

/* The rank whose share [total*r/size, total*(r+1)/size) of the input bytes holds offset x. */
static int share_owner(uint64_t x, uint64_t total, int size)
{
    int r = 0;
    while (r + 1 < size && total * (uint64_t)(r + 1) / (uint64_t)size <= x)
        r++;
    return r;
}

/* Splits the input into one share of about equal bytes per rank, files in input order: a
 * file goes whole to the rank whose share it starts in, except that a splittable file (big
 * JSONL or lines) crossing share boundaries is cut at them. Every rank computes every piece
 * the same way; the owners of cut pieces count their newlines, so that all ranks learn the
 * line each piece starts at and order keys stay those of a one-rank run. */
static int assign_units(prepare_ctx *c, gale_error *err)
{
    uint64_t total = 0, at = 0;
    for (size_t f = 0; f < c->n_paths; f++)
        total += c->file_bytes[f];
    input_unit *all = NULL;
    size_t n_all = 0, cap = 0;
    for (size_t f = 0; f < c->n_paths; f++) {
        uint64_t size = c->file_bytes[f];
        int r = share_owner(at, total, c->size);
        size_t first = n_all;
        do {
            uint64_t share_end = r + 1 < c->size ? total * (uint64_t)(r + 1) / (uint64_t)c->size : UINT64_MAX;
            uint64_t start = n_all > first ? all[n_all - 1].end : 0;
            uint64_t end = size == 0 || share_end - at >= size || !reader_splittable(c->paths[f], &c->ropt)
                               ? size
                               : share_end - at;
            if (end > start || size == 0) {
                if (n_all == cap) {
                    cap = cap ? 2 * cap : 64;
                    all = gale_xrealloc(all, cap * sizeof *all);
                }
                all[n_all++] = (input_unit){f, start, end, 1, start == 0, r};
            }
            r++;
        } while (all[n_all - 1].end < size);
        if (n_all - first == 1)
            all[first].end = UINT64_MAX; /* not cut: the whole file */
        at += size;
    }
    /* newlines of each cut piece [start - 1, end - 1), counted by its owner, summed for all */
    uint64_t *newlines = gale_xcalloc(n_all + 1, sizeof *newlines);
    int rc = 0;
    for (size_t u = 0; u < n_all && rc == 0; u++)
        if (all[u].owner == c->rank && all[u].end != UINT64_MAX)
            rc = reader_count_newlines(c->paths[all[u].file], all[u].start ? all[u].start - 1 : 0, all[u].end - 1,
                                       &newlines[u], err);
    if (agree(c, rc, err) < 0) {
        free(all);
        free(newlines);
        return -1;
    }
    MPI_Allreduce(MPI_IN_PLACE, newlines, (int)n_all, MPI_UINT64_T, MPI_SUM, c->comm);
    uint64_t before = 0; /* newlines of the file before the current piece's start - 1 */
    c->units = gale_xmalloc((n_all + 1) * sizeof *c->units);
    c->n_units = 0;
    for (size_t u = 0; u < n_all; u++) {
        if (all[u].start == 0)
            before = 0;
        /* the piece's first line follows the newline at or after start - 1 */
        all[u].first_line = all[u].start == 0 ? 1 : before + 2;
        before += newlines[u];
        if (all[u].owner == c->rank)
            c->units[c->n_units++] = all[u];
    }
    free(all);
    free(newlines);
    return 0;
}

static char *partial_path(const char *out)
{
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/')
        n--;
    char *p = gale_xmalloc(n + 16);
    memcpy(p, out, n);
    strcpy(p + n, ".partial");
    return p;
}

/* Rank 0: OUT.lock beside OUT (OUT itself appears only at the end, by rename), held until
 * prepare_run returns, so a second prepare into OUT fails before touching OUT.partial. */
static int take_output_lock(prepare_ctx *c, gale_error *err)
{
    char *parent = gale_xstrdup(c->cfg->out);
    char *slash = strrchr(parent, '/');
    int rc = 0;
    if (slash && slash != parent) {
        *slash = 0;
        rc = gale_mkdir_p(parent, err);
    }
    free(parent);
    char *lock = gale_xmalloc(strlen(c->cfg->out) + 8);
    sprintf(lock, "%s.lock", c->cfg->out);
    if (rc == 0)
        rc = gale_lock_take(&c->out_lock, lock, "gale prepare", err);
    free(lock);
    return rc;
}

/* Rank 0: the --removed file is written at the end, through REMOVED.tmp.PID: a place it cannot
 * be written fails now, before the work, by writing that temporary. */
static int check_removed_writable(const prepare_ctx *c, gale_error *err)
{
    struct stat st;
    if (stat(c->cfg->removed, &st) == 0 && !S_ISREG(st.st_mode))
        return gale_fail(err, "--removed %s: not a regular file", c->cfg->removed);
    char *tmp = gale_xmalloc(strlen(c->cfg->removed) + 32);
    sprintf(tmp, "%s.tmp.%d", c->cfg->removed, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    int rc = fd < 0 ? gale_fail_errno(err, "--removed %s: cannot be written", c->cfg->removed) : 0;
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

/* Rank 0: refuses an existing output unless overwrite, and makes a fresh OUT.partial. */
static int make_partial_dir(prepare_ctx *c, gale_error *err)
{
    if (take_output_lock(c, err) < 0 || (c->cfg->removed && check_removed_writable(c, err) < 0))
        return -1;
    if (gale_path_exists(c->cfg->out) && !c->cfg->overwrite)
        return gale_fail(err, "%s already exists; give --overwrite (or overwrite: true) to replace it",
                         c->cfg->out);
    if (gale_path_exists(c->partial_dir)) {
        fprintf(stderr, "gale prepare: removing %s, left by an interrupted run\n", c->partial_dir);
        if (gale_remove_tree(c->partial_dir, err) < 0)
            return -1;
    }
    return gale_mkdir_p(c->partial_dir, err);
}

static int setup(prepare_ctx *c, gale_error *err)
{
    const prepare_config *cfg = c->cfg;
    if (reader_expand_inputs((const char *const *)cfg->inputs.v, cfg->inputs.n, (const char *const *)cfg->exclude.v,
                             cfg->exclude.n, &c->paths, &c->n_paths, err) < 0)
        return -1;
    if (c->n_paths >= ORDER_MAX_FILES)
        return gale_fail(err, "%zu input files: at most %u are supported", c->n_paths, ORDER_MAX_FILES - 1);
    c->file_bytes = gale_xcalloc(c->n_paths, sizeof *c->file_bytes);
    for (size_t f = 0; f < c->n_paths; f++) {
        struct stat st;
        if (stat(c->paths[f], &st) == 0)
            c->file_bytes[f] = (uint64_t)st.st_size;
    }
    c->ropt = (reader_options){(text_mode)cfg->text_mode, cfg->separator, cfg->json_key,
                               cfg->kind == GALE_SHARD_SFT, cfg->chat_key, (size_t)cfg->max_record_bytes};
    if (assign_units(c, err) < 0)
        return -1;
    c->tok = tokenizer_load(cfg->tokenizer, err);
    if (!c->tok)
        return -1;
    if (cfg->kind == GALE_SHARD_SFT && chat_template_from_name(cfg->chat_template, &c->chat, err) < 0)
        return gale_fail(err, "chat_template: '%s' is not v1, v3 or llama2", cfg->chat_template);
    c->packing = cfg->packing >= 0 ? (gale_shard_packing)cfg->packing
                 : cfg->kind == GALE_SHARD_SFT ? GALE_SHARD_BEST_FIT
                                               : GALE_SHARD_CONCAT;
    c->dopt = (dedup_options){
        .exact = cfg->dedup_exact,
        .near = cfg->dedup_near,
        .threshold = cfg->near_threshold,
        .minhash = {(int)cfg->minhash_bands, (int)cfg->minhash_rows, (int)cfg->ngram, (size_t)cfg->max_shingles,
                    cfg->seed},
        .memory_budget = (size_t)cfg->dedup_memory_mb << 20,
        .spill_dir = c->partial_dir,
    };
    c->dedup = dedup_index_create(&c->dopt, err);
    if (!c->dedup)
        return -1;
    for (int s = 0; s < N_SPLITS; s++) {
        pack_options po = {c->packing, (int)cfg->seq_len, cfg->kind == GALE_SHARD_SFT, cfg->drop_overlong,
                           (size_t)cfg->pack_window, tokenizer_eos_id(c->tok)};
        c->out[s].pack = packer_create(&po);
    }
    if (cfg->removed) {
        char name[64];
        snprintf(name, sizeof name, ".removed-r%03d.jsonl", c->rank);
        c->removed_part = gale_path_join(c->partial_dir, name);
        c->removed = fopen(c->removed_part, "w");
        if (!c->removed)
            return gale_fail_errno(err, "%s: cannot create", c->removed_part);
    }
    return 0;
}

static void ctx_free(prepare_ctx *c)
{
    reader_free_paths(c->paths, c->n_paths);
    free(c->file_bytes);
    free(c->units);
    for (int t = 0; t < c->n_encoders; t++)
        tokenizer_encoder_free(c->encoders[t]);
    free(c->encoders);
    tokenizer_free(c->tok);
    dedup_index_free(c->dedup);
    for (int s = 0; s < N_SPLITS; s++) {
        shard_writer_abort(c->out[s].writer);
        packer_free(c->out[s].pack);
        gale_bytes_free(&c->out[s].shard_names);
    }
    if (c->removed)
        fclose(c->removed);
    free(c->removed_part);
    json_decref(c->examples);
}

/* ---- gathering on rank 0 and finishing ---- */

static char *gather_text(prepare_ctx *c, const char *text, size_t len);

/* Rank 0: the first report_examples rejected records over all ranks, in rank order
 * (NULL elsewhere). Each rank sends its list as one line of JSON. */
static json_t *gather_examples(prepare_ctx *c)
{
    char *mine = json_dumps(c->examples, JSON_COMPACT);
    size_t n = strlen(mine);
    mine = gale_xrealloc(mine, n + 2);
    strcpy(mine + n, "\n");
    char *all = gather_text(c, mine, n + 1);
    free(mine);
    if (!all)
        return NULL;
    json_t *examples = json_array();
    for (char *line = all, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = 0;
        json_t *part = json_loads(line, 0, NULL);
        size_t i;
        json_t *e;
        json_array_foreach(part, i, e)
        if (json_array_size(examples) < (size_t)c->cfg->report_examples)
            json_array_append(examples, e);
        json_decref(part);
    }
    free(all);
    return examples;
}

/* Concatenates every rank's text on rank 0 (NUL-terminated; NULL elsewhere). */
static char *gather_text(prepare_ctx *c, const char *text, size_t len)
{
    int n = (int)len;
    int *counts = c->rank == 0 ? gale_xcalloc((size_t)c->size, sizeof(int)) : NULL;
    int *displs = c->rank == 0 ? gale_xcalloc((size_t)c->size, sizeof(int)) : NULL;
    MPI_Gather(&n, 1, MPI_INT, counts, 1, MPI_INT, 0, c->comm);
    size_t total = 0;
    if (c->rank == 0)
        for (int r = 0; r < c->size; r++) {
            displs[r] = (int)total;
            total += (size_t)counts[r];
        }
    char *all = c->rank == 0 ? gale_xmalloc(total + 1) : NULL;
    MPI_Gatherv(text, n, MPI_CHAR, all, counts, displs, MPI_CHAR, 0, c->comm);
    if (all)
        all[total] = 0;
    free(counts);
    free(displs);
    return all;
}

static json_t *split_json(const prepare_counts *t, int s)
{
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "documents", (json_int_t)t->split[s].docs, "tokens",
                     (json_int_t)t->split[s].tokens, "padding", (json_int_t)t->split[s].padding, "rows",
                     (json_int_t)t->split[s].rows, "shards", (json_int_t)t->split[s].shards, "truncated",
                     (json_int_t)t->split[s].truncated, "dropped", (json_int_t)t->split[s].dropped,
                     "truncated_tokens", (json_int_t)t->split[s].truncated_tokens);
}

static json_t *report_json(const prepare_ctx *c, const prepare_counts *t, json_t *examples, double seconds[3])
{
    json_t *rejected = json_object();
    uint64_t n_rejected = 0;
    for (int r = 1; r < REJECT_N; r++) {
        json_object_set_new(rejected, reject_name((reject_reason)r), json_integer((json_int_t)t->rejected[r]));
        n_rejected += t->rejected[r];
    }
    json_t *splits = json_object();
    for (int s = 0; s < N_SPLITS; s++)
        json_object_set_new(splits, split_names[s], split_json(t, s));
    json_t *report = json_pack(
        "{s:i, s:{s:I, s:I, s:I}, s:{s:I, s:I, s:o, s:I, s:I, s:I}, s:{s:I, s:I, s:I}, s:o, s:o, "
        "s:{s:f, s:f, s:f}, s:{s:f, s:f}, s:o}",
        "ranks", c->size, "inputs", "files", (json_int_t)c->n_paths, "unreadable_files",
        (json_int_t)t->unreadable_files, "bytes", (json_int_t)t->bytes, "documents", "read", (json_int_t)t->records,
        "rejected_total", (json_int_t)n_rejected, "rejected", rejected, "exact_duplicates", (json_int_t)t->exact,
        "near_duplicates", (json_int_t)t->near, "kept", (json_int_t)t->kept, "near_dedup", "candidate_pairs",
        (json_int_t)t->candidate_pairs, "confirmed_pairs", (json_int_t)t->confirmed_pairs, "spilled_bytes",
        (json_int_t)t->spilled_bytes, "splits", splits, "examples", examples, "seconds", "read_dedup", seconds[0],
        "tokenize_pack", seconds[1], "total", seconds[2], "cpu_seconds", "read_dedup", 1e-6 * (double)t->cpu_us_read,
        "tokenize_pack", 1e-6 * (double)t->cpu_us_write, "config", prepare_config_to_json(c->cfg));
    return report;
}

/* Rank 0: the removed file from every rank's part, in rank (= input) order. */
static int merge_removed(prepare_ctx *c, gale_error *err)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", c->cfg->removed, (int)getpid());
    FILE *out = fopen(tmp, "w");
    if (!out)
        return gale_fail_errno(err, "%s: cannot create", tmp);
    int rc = 0;
    char buf[1 << 16];
    for (int r = 0; r < c->size && rc == 0; r++) {
        char name[64];
        snprintf(name, sizeof name, ".removed-r%03d.jsonl", r);
        char *part = gale_path_join(c->partial_dir, name);
        FILE *in = fopen(part, "r");
        if (!in) {
            rc = gale_fail_errno(err, "%s: cannot read", part);
        } else {
            size_t n;
            while ((n = fread(buf, 1, sizeof buf, in)) > 0)
                if (fwrite(buf, 1, n, out) != n) {
                    rc = gale_fail_errno(err, "%s: cannot write", tmp);
                    break;
                }
            fclose(in);
            unlink(part);
        }
        free(part);
    }
    if (fflush(out) != 0 || fsync(fileno(out)) != 0)
        rc = rc ? rc : gale_fail_errno(err, "%s: cannot write", tmp);
    fclose(out);
    if (rc == 0)
        rc = gale_rename_durable(tmp, c->cfg->removed, err);
    if (rc < 0)
        unlink(tmp);
    return rc;
}

static int write_manifest(prepare_ctx *c, char *names[N_SPLITS], gale_error *err)
{
    gale_manifest m;
    manifest_init(&m);
    m.kind = (gale_shard_kind)c->cfg->kind;
    m.packing = c->packing;
    m.seq_len = (int)c->cfg->seq_len;
    m.tokenizer.path = gale_xstrdup(c->cfg->tokenizer);
    memcpy(m.tokenizer.sha256, tokenizer_sha256(c->tok), 65);
    m.tokenizer.vocab_size = tokenizer_vocab_size(c->tok);
    m.tokenizer.bos_id = tokenizer_bos_id(c->tok);
    m.tokenizer.eos_id = tokenizer_eos_id(c->tok);
    json_t *cfg = prepare_config_to_json(c->cfg);
    m.config_json = json_dumps(cfg, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(cfg);
    int rc = 0;
    for (size_t f = 0; f < c->n_paths && rc == 0; f++)
        rc = manifest_add_input(&m, c->paths[f], NULL, err);
    for (int s = 0; s < N_SPLITS && rc == 0; s++)
        for (char *line = names[s], *nl; rc == 0 && line && (nl = strchr(line, '\n')); line = nl + 1) {
            *nl = 0;
            rc = manifest_add_shard(&m, c->partial_dir, line, split_names[s], err);
        }
    if (rc == 0)
        rc = manifest_write(&m, c->partial_dir, err);
    manifest_free(&m);
    return rc;
}

/* Rank 0: report, removed file, manifest last, then OUT.partial becomes OUT. */
static int finish_dataset(prepare_ctx *c, const prepare_counts *t, char *names[N_SPLITS], json_t *examples,
                          double seconds[3], gale_error *err)
{
    json_t *report = report_json(c, t, examples, seconds);
    char *text = json_dumps(report, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(report);
    char *path = gale_path_join(c->partial_dir, "report.json");
    int rc = gale_write_file_atomic(path, text, strlen(text), err);
    free(path);
    free(text);
    if (rc == 0 && c->cfg->removed)
        rc = merge_removed(c, err);
    if (rc == 0)
        rc = write_manifest(c, names, err);
    if (rc < 0)
        return -1;
    char *old = NULL;
    if (gale_path_exists(c->cfg->out)) {
        old = gale_xmalloc(strlen(c->partial_dir) + 32);
        snprintf(old, strlen(c->partial_dir) + 32, "%s.old.%d", c->partial_dir, (int)getpid());
        rc = gale_rename_durable(c->cfg->out, old, err);
    }
    if (rc == 0)
        rc = gale_rename_durable(c->partial_dir, c->cfg->out, err);
    if (rc == 0 && old)
        rc = gale_remove_tree(old, err);
    free(old);
    return rc;
}

static void print_summary(const prepare_ctx *c, const prepare_counts *t, double seconds)
{
    uint64_t rejected = 0;
    for (int r = 1; r < REJECT_N; r++)
        rejected += t->rejected[r];
    fprintf(stderr,
            "gale prepare: %llu documents read, %llu rejected, %llu exact and %llu near duplicates removed, "
            "%llu kept\n",
            (unsigned long long)t->records, (unsigned long long)rejected, (unsigned long long)t->exact,
            (unsigned long long)t->near, (unsigned long long)t->kept);
    for (int s = 0; s < N_SPLITS; s++)
        fprintf(stderr, "gale prepare: %s: %llu documents, %llu tokens, %llu rows in %llu shards (%.1f%% padding)\n",
                split_names[s], (unsigned long long)t->split[s].docs, (unsigned long long)t->split[s].tokens,
                (unsigned long long)t->split[s].rows, (unsigned long long)t->split[s].shards,
                t->split[s].rows ? 100.0 * (double)t->split[s].padding /
                                       (double)(t->split[s].rows * (uint64_t)(c->cfg->seq_len + 1))
                                 : 0.0);
    fprintf(stderr, "gale prepare: %s written in %.1fs (%.1f MB/s)\n", c->cfg->out, seconds,
            (double)t->bytes / 1e6 / (seconds > 0 ? seconds : 1e-9));
    /* An empty dataset is a valid result, but rarely the one that was meant. */
    if (t->split[0].rows == 0)
        fprintf(stderr, "gale prepare: warning: the train split is empty (%llu documents kept): "
                        "gale train will refuse this folder\n", (unsigned long long)t->kept);
}

/* Rank 0: refuses a run that rejected every record, or more than max_rejected_share of them
 * as malformed (a wrong key, format or template, more often than bad data). */
static int check_rejected(const prepare_ctx *c, const prepare_counts *t, gale_error *err)
{
    uint64_t malformed = 0, filtered = 0;
    for (int r = 1; r < REJECT_N; r++)
        *(r < REJECT_TOO_SHORT ? &malformed : &filtered) += t->rejected[r];
    if (t->records == 0)
        return 0;
    if (malformed + filtered == t->records)
        return gale_fail(err,
                         "every record was rejected (%llu malformed or untrained, %llu outside the length "
                         "bounds): nothing to prepare; the first reasons are listed above",
                         (unsigned long long)malformed, (unsigned long long)filtered);
    if ((double)malformed > c->cfg->max_rejected_share * (double)t->records)
        return gale_fail(err,
                         "%llu of %llu records (%.1f%%) were rejected as malformed or untrained, more than "
                         "max_rejected_share (%g): check the input format and key (gale prepare --help) against "
                         "the reasons listed above, or raise max_rejected_share",
                         (unsigned long long)malformed, (unsigned long long)t->records,
                         100.0 * (double)malformed / (double)t->records, c->cfg->max_rejected_share);
    return 0;
}

/* ---- the pipeline ---- */

static int run(prepare_ctx *c, gale_error *err)
{
    double t0 = progress_now();
    uint64_t cpu0 = cpu_us();
    int rc = 0;
    if (c->rank == 0)
        rc = make_partial_dir(c, err);
    if (agree(c, rc, err) < 0)
        return -1;
    if (agree(c, setup(c, err), err) < 0)
        return -1;
    if (c->cfg->threads > 0)
        omp_set_num_threads((int)c->cfg->threads);
    c->n_encoders = omp_get_max_threads();
    c->encoders = gale_xmalloc((size_t)c->n_encoders * sizeof *c->encoders);
    for (int t = 0; t < c->n_encoders; t++)
        c->encoders[t] = tokenizer_encoder_new(c->tok);
    uint64_t my_bytes = 0;
    for (size_t u = 0; u < c->n_units; u++)
        my_bytes += unit_bytes(c, &c->units[u]);
    c->counts.bytes = my_bytes;
    int progress_mode = c->rank == 0 ? c->cfg->progress : 0;

    doc_batch batch = {0};
    progress_start(&c->progress, c->size > 1 ? "read (rank 0)" : "read", "docs", my_bytes, progress_mode);
    rc = read_files(c, &batch, 1, pass1_visit, pass1_flush, err);
    progress_finish(&c->progress);
    if (agree(c, rc, err) < 0 || agree(c, dedup_resolve(c->dedup, c->comm, err), err) < 0) {
        doc_batch_free(&batch);
        return -1;
    }
    for (size_t i = 0; i < dedup_index_count(c->dedup); i++) {
        uint64_t dup;
        dedup_fate fate = dedup_fate_of(c->dedup, i, &dup);
        c->counts.exact += fate == DEDUP_EXACT;
        c->counts.near += fate == DEDUP_NEAR;
        c->counts.kept += fate == DEDUP_KEEP;
    }
    dedup_pair_counts(c->dedup, &c->counts.candidate_pairs, &c->counts.confirmed_pairs);
    c->counts.spilled_bytes = dedup_spilled_bytes(c->dedup);
    double t1 = progress_now();
    uint64_t cpu1 = cpu_us();
    c->counts.cpu_us_read = cpu1 - cpu0;

    progress_start(&c->progress, c->size > 1 ? "tokenize (rank 0)" : "tokenize", "docs", my_bytes, progress_mode);
    rc = read_files(c, &batch, 0, pass2_visit, pass2_flush, err);
    progress_finish(&c->progress);
    doc_batch_free(&batch);
    if (rc == 0)
        rc = finish_outputs(c, err);
    if (c->removed) {
        if (fclose(c->removed) != 0 && rc == 0)
            rc = gale_fail_errno(err, "%s: cannot write", c->removed_part);
        c->removed = NULL;
    }
    if (agree(c, rc, err) < 0)
        return -1;
    double t2 = progress_now();
    c->counts.cpu_us_write = cpu_us() - cpu1;

    prepare_counts total;
    MPI_Reduce(&c->counts, &total, sizeof total / sizeof(uint64_t), MPI_UINT64_T, MPI_SUM, 0, c->comm);
    char *names[N_SPLITS];
    for (int s = 0; s < N_SPLITS; s++)
        names[s] = gather_text(c, (const char *)c->out[s].shard_names.v, c->out[s].shard_names.n);
    json_t *examples = gather_examples(c);
    double seconds[3] = {t1 - t0, t2 - t1, 0};
    if (c->rank == 0) {
        seconds[2] = progress_now() - t0;
        rc = check_rejected(c, &total, err);
        if (rc == 0)
            rc = finish_dataset(c, &total, names, examples, seconds, err);
        if (rc == 0)
            print_summary(c, &total, seconds[2]);
    }
    for (int s = 0; s < N_SPLITS; s++)
        free(names[s]);
    MPI_Bcast(&rc, 1, MPI_INT, 0, c->comm);
    if (rc < 0 && c->rank != 0)
        gale_fail(err, "rank 0 failed to finish the dataset (its message is above)");
    return rc;
}

/* Every rank must prepare with rank 0's settings (util/rank_agreement.h). */
static int settings_agree(const prepare_config *cfg, MPI_Comm comm, gale_error *err)
{
    char *text = NULL;
    json_t *settings = prepare_config_to_json(cfg);
    rank_agreement_lines(&text, "", settings);
    json_decref(settings);
    int rc = rank_agreement_check(comm, "the prepare settings", text ? text : "", err);
    free(text);
    return rc;
}

int prepare_run(const prepare_config *cfg, MPI_Comm comm, gale_error *err)
{
    if (settings_agree(cfg, comm, err) < 0 || prepare_config_check(cfg, err) < 0)
        return -1;
    prepare_ctx c = {.cfg = cfg, .comm = comm, .examples = json_array()};
    MPI_Comm_rank(comm, &c.rank);
    MPI_Comm_size(comm, &c.size);
    c.partial_dir = partial_path(cfg->out);
    int rc = run(&c, err);
    ctx_free(&c);
    if (rc < 0) {
        /* a clean failure leaves nothing behind (a killed run leaves OUT.partial) */
        MPI_Barrier(comm);
        if (c.rank == 0 && c.out_lock.path && gale_path_exists(c.partial_dir)) /* ours only */
            gale_remove_tree(c.partial_dir, NULL);
    }
    gale_lock_release(&c.out_lock);
    free(c.partial_dir);
    return rc;
}
