/* gale tokenize: text to token ids (or pieces) one line per line, as spm_encode prints them,
 * and ids back to text with --decode, as spm_decode does. Each mode is one function over a
 * line reader; lines are encoded in order-preserving batches over --threads threads, and a
 * line longer than a batch is encoded as a stream so memory stays flat. */
#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "data/chat.h"
#include "data/chat_formats.h"
#include "data/tokenizer.h"

#define BATCH_BYTES (4u << 20)   /* text encoded per parallel batch */
/* One thread reads in smaller blocks: the block is reused, and each page of memory touched for
 * the first time costs a fault and the zeroing of the page (~2 us in a VM, as much as encoding
 * a few kilobytes); lines longer than a block are streamed, with the same ids. */
#define ONE_THREAD_BATCH_BYTES (64u << 10)
#define CHUNKS_PER_THREAD 8      /* pieces of a batch, for load balance */
#define WRITE_BYTES (64u << 10) /* one thread: output written once this much waits */

enum output_format { FORMAT_IDS, FORMAT_PIECES };

typedef struct tokenize_options {
    const char *tokenizer, *input;
    int format; /* enum output_format */
    int threads;
    int decode;
    const char *chat; /* a chat template's name: lines are JSON conversations */
    int prompt, mask; /* chat: encode prompts for generation; print the loss mask */
} tokenize_options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gale tokenize --tokenizer M [--input FILE] [--format ids|pieces] [--threads N] [--decode]\n"
            "       gale tokenize --tokenizer M --chat v1|v3|v7|llama2 [--prompt] [--mask] [--input FILE.jsonl]\n"
            "\n"
            "Encodes text with a SentencePiece BPE model (.model) or a Tekken file (tekken.json), one\n"
            "text per line, and prints one line per input line: token ids separated by spaces, exactly\n"
            "as `spm_encode --model=PATH --output_format=id` (or mistral-common's Tekkenizer) does\n"
            "(no BOS/EOS added).\n"
            "\n"
            "  --tokenizer M      a SentencePiece .model file (Mistral v1/v3, Llama 2) or a Tekken JSON\n"
            "                     file (Mistral NeMo, Small 3, Pixtral), told apart by content; or a name,\n"
            "                     mistral-v1, mistral-v3, tekken-240718, tekken-240911 (found in $GALE_TOKENIZERS\n"
            "                     or mistral-common's data)\n"
            "  --input FILE       read FILE instead of standard input\n"
            "  --format ids       print token ids (default); `pieces` prints the pieces instead\n"
            "  --threads N        encode with N threads (default 1); output order is kept\n"
            "  --decode           read lines of ids and print their text, as spm_decode does\n"
            "  --chat TEMPLATE    lines are JSON conversations ({\"messages\": [...], \"tools\": [...]}, or\n"
            "                     any format gale prepare --kind sft reads: ShareGPT, OpenAI content parts),\n"
            "                     encoded with the chat template v1, v3, v7 (Mistral) or llama2 as training\n"
            "                     data (ending with an assistant message), BOS and EOS included\n"
            "  --prompt           with --chat: conversations are prompts for generation (ending with\n"
            "                     a user or tool message)\n"
            "  --mask             with --chat: after a tab, print the loss mask (1 on the assistant's\n"
            "                     answers and their EOS, 0 elsewhere), one 0/1 per id\n"
            "  --help             this message\n");
}

static int parse_int(const char *s, int *v)
{
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (errno || end == s || *end || x < 1 || x > 1024)
        return -1;
    *v = (int)x;
    return 0;
}

/* Returns 0 to run, 1 when --help was asked, 2 on a usage error (already reported). */
static int parse_options(int argc, char **argv, tokenize_options *o)
{
    *o = (tokenize_options){.format = FORMAT_IDS, .threads = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *value = NULL;
        int takes_value = !strcmp(a, "--tokenizer") || !strcmp(a, "--input") || !strcmp(a, "--format") ||
                          !strcmp(a, "--threads") || !strcmp(a, "--chat");
        if (takes_value) {
            if (i + 1 >= argc) {
                fprintf(stderr, "gale tokenize: %s needs a value\n", a);
                return 2;
            }
            value = argv[++i];
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "--decode")) {
            o->decode = 1;
        } else if (!strcmp(a, "--chat")) {
            o->chat = value;
        } else if (!strcmp(a, "--prompt")) {
            o->prompt = 1;
        } else if (!strcmp(a, "--mask")) {
            o->mask = 1;
        } else if (!strcmp(a, "--tokenizer")) {
            o->tokenizer = value;
        } else if (!strcmp(a, "--input")) {
            o->input = value;
        } else if (!strcmp(a, "--format")) {
            if (!strcmp(value, "ids"))
                o->format = FORMAT_IDS;
            else if (!strcmp(value, "pieces"))
                o->format = FORMAT_PIECES;
            else {
                fprintf(stderr, "gale tokenize: --format must be ids or pieces, not '%s'\n", value);
                return 2;
            }
        } else if (!strcmp(a, "--threads")) {
            if (parse_int(value, &o->threads) < 0) {
                fprintf(stderr, "gale tokenize: --threads must be an integer from 1 to 1024, not '%s'\n", value);
                return 2;
            }
        } else {
            fprintf(stderr, "gale tokenize: unknown argument '%s' (see gale tokenize --help)\n", a);
            return 2;
        }
    }
    if (!o->tokenizer) {
        fprintf(stderr, "gale tokenize: --tokenizer M is required (see gale tokenize --help)\n");
        return 2;
    }
    enum chat_template tmpl;
    gale_error err;
    if (o->chat && chat_template_from_name(o->chat, &tmpl, &err)) {
        fprintf(stderr, "gale tokenize: --chat: %s\n", err.msg);
        return 2;
    }
    if ((o->prompt || o->mask) && !o->chat) {
        fprintf(stderr, "gale tokenize: --prompt and --mask go with --chat TEMPLATE\n");
        return 2;
    }
    if (o->chat && o->decode) {
        fprintf(stderr, "gale tokenize: --decode reads ids, not conversations: drop --chat\n");
        return 2;
    }
    return 0;
}

/* ---- reading lines in blocks ---- */

typedef struct line_reader {
    FILE *f;
    const char *name;
    gale_bytes buf;
    size_t pos; /* first byte not yet handed out */
    int eof, error;
} line_reader;

/* Moves the unread part to the front and reads until it holds want bytes or the input ends. */
static void reader_fill(line_reader *r, size_t want)
{
    size_t unread = r->buf.n - r->pos;
    if (r->pos && unread)
        memmove(r->buf.v, r->buf.v + r->pos, unread);
    r->buf.n = unread;
    r->pos = 0;
    if (r->eof || unread >= want)
        return;
    gale_bytes_reserve(&r->buf, want - unread); /* room for want bytes */
    while (!r->eof && r->buf.n < want) {
        size_t got = fread(r->buf.v + r->buf.n, 1, want - r->buf.n, r->f);
        r->buf.n += got;
        if (!got) {
            r->eof = 1;
            r->error = ferror(r->f);
        }
    }
}

static int reader_failed(const line_reader *r)
{
    if (!r->error)
        return 0;
    fprintf(stderr, "gale tokenize: %s: read error: %s\n", r->name, strerror(errno));
    return 1;
}

/* Hands out the next line of r, without its newline, in *line and *len; refills only when no whole
 * line is left, since a refill moves the unread bytes. Returns 1 with a line, 0 at the end of the
 * input, -1 when reading failed or line line_no (a `what`) is longer than BATCH_BYTES. */
static int reader_next_line(line_reader *r, const char *what, size_t line_no, const uint8_t **line, size_t *len)
{
    const uint8_t *nl = r->buf.n > r->pos ? memchr(r->buf.v + r->pos, '\n', r->buf.n - r->pos) : NULL;
    if (!nl && !r->eof) {
        reader_fill(r, BATCH_BYTES);
        if (reader_failed(r))
            return -1;
        nl = r->buf.n > r->pos ? memchr(r->buf.v + r->pos, '\n', r->buf.n - r->pos) : NULL;
    }
    size_t avail = r->buf.n - r->pos;
    if (!avail)
        return 0;
    if (!nl && !r->eof) {
        fprintf(stderr, "gale tokenize: %s:%zu: %s longer than %u bytes\n", r->name, line_no, what, BATCH_BYTES);
        return -1;
    }
    *line = r->buf.v + r->pos;
    *len = nl ? (size_t)(nl - *line) : avail;
    r->pos += *len + (nl ? 1 : 0);
    return 1;
}

/* ---- output ---- */

/* The decimal digits of u. */
static size_t decimal_len(uint32_t u)
{
    size_t len = 1;
    while (u >= 10) {
        u /= 10;
        len++;
    }
    return len;
}

/* Writes v in decimal at p, two digits at a time from the end; returns the length. */
static size_t put_int(char *p, int32_t v)
{
    static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                                "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                                "8081828384858687888990919293949596979899";
    size_t sign = v < 0;
    uint32_t u = sign ? (uint32_t)0 - (uint32_t)v : (uint32_t)v;
    size_t len = sign + decimal_len(u), n = len;
    if (sign)
        p[0] = '-';
    while (u >= 100) {
        n -= 2;
        memcpy(p + n, pairs + 2 * (u % 100), 2);
        u /= 100;
    }
    if (u >= 10)
        memcpy(p + n - 2, pairs + 2 * u, 2);
    else
        p[n - 1] = (char)('0' + u);
    return len;
}

#define ID_TEXT_MAX 12 /* " -2147483648" */

/* The text of each id of the vocabulary (tokenizer_id_texts), so that printing an id is one load
 * and one 8-byte store: ids are printed once per token. */
typedef struct id_texts {
    const uint64_t *text;
    size_t n; /* 0: no table, put_int prints */
} id_texts;

static id_texts id_texts_of(const gale_tokenizer *tok)
{
    const uint64_t *text = tokenizer_id_texts(tok);
    return (id_texts){text, text ? (size_t)tokenizer_vocab_size(tok) : 0};
}

/* The ids of one line as spm_encode prints them: ids or pieces separated by single spaces.
 * first says whether nothing of this line has been printed yet (streamed lines come in parts).
 * This is the hot loop of printing: ids are written straight into out, made large enough for
 * all of them first; pieces go through a local block. */
static void format_ids(const gale_tokenizer *tok, int format, const id_texts *texts, const gale_ids *ids, int first,
                       gale_bytes *out)
{
    if (!ids->n)
        return;
    if (format == FORMAT_IDS) {
        gale_bytes_reserve(out, ids->n * ID_TEXT_MAX + sizeof *texts->text);
        /* locals, so that the stores through p are not taken to change them */
        const int32_t *v = ids->v;
        const size_t n = ids->n, n_texts = texts->n;
        const uint64_t *text = texts->text;
        char *p = (char *)out->v + out->n;
        size_t i = 0;
        if (first) { /* the line's first id, with no space in front: its text without the space */
            uint32_t id = (uint32_t)v[i++];
            if (id < n_texts) {
                uint64_t digits = text[id] >> 8;
                memcpy(p, &digits, sizeof digits);
                p += (text[id] >> 56) - 1;
            } else {
                p += put_int(p, (int32_t)id);
            }
        }
        for (; i < n; i++) {
            uint32_t id = (uint32_t)v[i];
            if (id < n_texts) {
                uint64_t t = text[id];
                memcpy(p, &t, sizeof t);
                p += t >> 56;
            } else {
                *p++ = ' ';
                p += put_int(p, v[i]);
            }
        }
        out->n = (size_t)(p - (char *)out->v);
        return;
    }
    char block[4096];
    size_t n = 0;
    for (size_t i = 0; i < ids->n; i++) {
        const char *piece = tokenizer_id_piece(tok, ids->v[i]);
        size_t len = piece ? strlen(piece) : ID_TEXT_MAX;
        if (n + 1 + len > sizeof block) {
            gale_bytes_append(out, block, n);
            n = 0;
        }
        if (!first || i)
            block[n++] = ' ';
        if (!piece) {
            n += put_int(block + n, ids->v[i]);
        } else if (len + 1 > sizeof block) {
            gale_bytes_append(out, block, n);
            gale_bytes_append(out, piece, len);
            n = 0;
        } else {
            memcpy(block + n, piece, len);
            n += len;
        }
    }
    gale_bytes_append(out, block, n);
}

static int write_out(const gale_bytes *b)
{
    if (b->n && fwrite(b->v, 1, b->n, stdout) != b->n) {
        fprintf(stderr, "gale tokenize: writing the output: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

/* Ends an output line; writes out and empties b once it holds a batch, so that output goes
 * in large writes. */
static int end_line(gale_bytes *b)
{
    gale_bytes_push(b, '\n');
    if (b->n < BATCH_BYTES)
        return 0;
    if (write_out(b) < 0)
        return -1;
    b->n = 0;
    return 0;
}

/* ---- encode mode ---- */

typedef struct line_span {
    size_t start, len;
} line_span;

typedef struct encode_chunk {
    size_t first, end; /* lines [first, end) of the batch */
    gale_bytes text;   /* their output */
} encode_chunk;

/* Encodes the lines of a batch on the threads, each chunk into its own buffer, and prints the
 * buffers in order. One thread encodes the chunks in order, so it writes each as it fills:
 * from a buffer that stays in the cache, rather than megabytes of memory touched once. */
static int encode_batch(const gale_tokenizer *tok, tokenizer_encoder **encoders, const tokenize_options *o,
                        const id_texts *texts, const uint8_t *text, const line_span *lines, size_t n_lines, encode_chunk *chunks,
                        size_t n_chunks)
{
    size_t per = (n_lines + n_chunks - 1) / n_chunks;
    for (size_t c = 0; c < n_chunks; c++) {
        chunks[c].first = c * per < n_lines ? c * per : n_lines;
        chunks[c].end = (c + 1) * per < n_lines ? (c + 1) * per : n_lines;
        chunks[c].text.n = 0;
    }
    const int in_order = o->threads == 1;
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(o->threads)
    for (size_t c = 0; c < n_chunks; c++) {
        tokenizer_encoder *enc = encoders[omp_get_thread_num()];
        gale_ids ids = {0};
        for (size_t l = chunks[c].first; l < chunks[c].end; l++) {
            ids.n = 0;
            tokenizer_encoder_encode(enc, (const char *)text + lines[l].start, lines[l].len, &ids);
            format_ids(tok, o->format, texts, &ids, 1, &chunks[c].text);
            gale_bytes_push(&chunks[c].text, '\n');
            if (in_order && (chunks[c].text.n >= WRITE_BYTES || l + 1 == chunks[c].end)) {
                failed |= !failed && write_out(&chunks[c].text) < 0;
                chunks[c].text.n = 0;
            }
        }
        gale_ids_free(&ids);
    }
    if (failed)
        return -1;
    for (size_t c = 0; c < n_chunks; c++)
        if (write_out(&chunks[c].text) < 0)
            return -1;
    return 0;
}

/* The text encoded per batch. */
static size_t batch_bytes(const tokenize_options *o)
{
    return o->threads == 1 ? ONE_THREAD_BATCH_BYTES : BATCH_BYTES;
}

/* A line longer than a batch: fed to one encoder block by block, its ids printed as they
 * come. The reader's buffer starts with the line; returns with the line consumed. */
static int encode_long_line(const gale_tokenizer *tok, tokenizer_encoder *enc, const tokenize_options *o,
                            const id_texts *texts, line_reader *r)
{
    gale_ids ids = {0};
    gale_bytes out = {0};
    int first = 1, rc = 0;
    for (;;) {
        uint8_t *start = r->buf.v + r->pos;
        size_t avail = r->buf.n - r->pos;
        uint8_t *nl = memchr(start, '\n', avail);
        size_t take = nl ? (size_t)(nl - start) : avail;
        ids.n = 0;
        out.n = 0;
        tokenizer_encoder_feed(enc, (const char *)start, take, &ids);
        r->pos += take;
        if (nl || r->eof) {
            tokenizer_encoder_finish(enc, &ids);
            if (nl)
                r->pos++;
        }
        format_ids(tok, o->format, texts, &ids, first, &out);
        first = first && !ids.n;
        if (nl || r->eof)
            gale_bytes_push(&out, '\n');
        if (write_out(&out) < 0) {
            rc = -1;
            break;
        }
        if (nl || r->eof)
            break;
        reader_fill(r, batch_bytes(o));
    }
    gale_ids_free(&ids);
    gale_bytes_free(&out);
    return rc;
}

static int encode_lines(const gale_tokenizer *tok, line_reader *r, const tokenize_options *o)
{
    tokenizer_encoder **encoders = gale_xmalloc((size_t)o->threads * sizeof *encoders);
    for (int t = 0; t < o->threads; t++)
        encoders[t] = tokenizer_encoder_new(tok);
    /* one thread: one chunk, so one output buffer rather than one per chunk */
    size_t n_chunks = o->threads == 1 ? 1 : (size_t)o->threads * CHUNKS_PER_THREAD;
    encode_chunk *chunks = gale_xcalloc(n_chunks, sizeof *chunks);
    line_span *lines = NULL;
    size_t lines_cap = 0;
    int rc = 0;
    id_texts texts = id_texts_of(tok);
    for (;;) {
        reader_fill(r, batch_bytes(o));
        if (reader_failed(r)) {
            rc = -1;
            break;
        }
        size_t avail = r->buf.n - r->pos;
        if (!avail)
            break;
        const uint8_t *base = r->buf.v + r->pos;
        size_t n_lines = 0, at = 0;
        for (;;) {
            const uint8_t *nl = memchr(base + at, '\n', avail - at);
            if (!nl && !(r->eof && at < avail))
                break;
            size_t len = nl ? (size_t)(nl - (base + at)) : avail - at;
            if (n_lines == lines_cap) {
                lines_cap = lines_cap ? 2 * lines_cap : 4096;
                lines = gale_xrealloc(lines, lines_cap * sizeof *lines);
            }
            lines[n_lines++] = (line_span){at, len};
            at += len + (nl ? 1 : 0);
            if (!nl)
                break;
        }
        if (!n_lines) {
            if (encode_long_line(tok, encoders[0], o, &texts, r) < 0) {
                rc = -1;
                break;
            }
            continue;
        }
        if (encode_batch(tok, encoders, o, &texts, base, lines, n_lines, chunks, n_chunks) < 0) {
            rc = -1;
            break;
        }
        r->pos += at;
    }
    for (int t = 0; t < o->threads; t++)
        tokenizer_encoder_free(encoders[t]);
    for (size_t c = 0; c < n_chunks; c++)
        gale_bytes_free(&chunks[c].text);
    free(chunks);
    free(encoders);
    free(lines);
    return rc;
}

/* ---- decode mode ---- */

/* Parses the ids of one line ("12 345 6"); on a bad token reports it with the line number. */
static int parse_id_line(const gale_tokenizer *tok, const char *name, size_t line_no, const uint8_t *s, size_t n,
                         gale_ids *ids)
{
    int vocab = tokenizer_vocab_size(tok);
    size_t i = 0;
    while (i < n) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r'))
            i++;
        if (i == n)
            break;
        size_t start = i;
        long long v = 0;
        int digits = 0, neg = 0;
        if (s[i] == '-')
            neg = 1, i++;
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, digits++)
            if (v < (1LL << 40))
                v = v * 10 + (s[i] - '0');
        if (!digits || (i < n && s[i] != ' ' && s[i] != '\t' && s[i] != '\r')) {
            while (i < n && s[i] != ' ' && s[i] != '\t')
                i++;
            fprintf(stderr, "gale tokenize: %s:%zu: '%.*s' is not a token id\n", name, line_no, (int)(i - start),
                    (const char *)s + start);
            return -1;
        }
        if (neg)
            v = -v;
        if (v < 0 || v >= vocab) {
            fprintf(stderr, "gale tokenize: %s:%zu: id %lld is outside the vocabulary (0..%d)\n", name, line_no, v,
                    vocab - 1);
            return -1;
        }
        gale_ids_push(ids, (int32_t)v);
    }
    return 0;
}

static int decode_lines(const gale_tokenizer *tok, line_reader *r)
{
    gale_ids ids = {0};
    gale_bytes out = {0};
    size_t line_no = 0;
    int rc = 0;
    const uint8_t *line;
    size_t len;
    while ((rc = reader_next_line(r, "a line of ids", ++line_no, &line, &len)) > 0) {
        ids.n = 0;
        if (parse_id_line(tok, r->name, line_no, line, len, &ids) < 0) {
            /* the lines before a bad one are still printed: nothing valid is lost */
            rc = write_out(&out) < 0 ? -1 : -2;
            break;
        }
        tokenizer_decode(tok, ids.v, ids.n, &out);
        if (end_line(&out) < 0) {
            rc = -1;
            break;
        }
    }
    if (!rc && write_out(&out) < 0)
        rc = -1;
    if (rc == -2)
        rc = -1;
    gale_ids_free(&ids);
    gale_bytes_free(&out);
    return rc;
}

/* ---- chat mode ---- */

static int encode_conversation(const gale_tokenizer *tok, tokenizer_encoder *enc, enum chat_template tmpl,
                               enum chat_purpose purpose, const uint8_t *text, size_t len, gale_ids *ids,
                               gale_bytes *mask, gale_error *err)
{
    json_error_t jerr;
    json_t *record = json_loadb((const char *)text, len, JSON_ALLOW_NUL, &jerr);
    if (!record)
        return gale_fail(err, "not valid JSON: %s (column %d)", jerr.text, jerr.column);
    json_t *conversation;
    int rc = chat_conversation_from_record(record, NULL, &conversation, err) < 0 ? -1 : 0;
    if (rc == 0)
        rc = chat_conversation_encode(tok, enc, tmpl, purpose, conversation, ids, mask, err);
    json_decref(conversation);
    json_decref(record);
    return rc;
}

static int is_blank(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

/* One JSON conversation per line through the chat template: one line of ids each (empty for a
 * blank line), with --mask a tab and the mask. A bad conversation stops with its line number. */
static int chat_lines(const gale_tokenizer *tok, line_reader *r, const tokenize_options *o)
{
    enum chat_template tmpl;
    gale_error err;
    chat_template_from_name(o->chat, &tmpl, &err); /* checked with the options */
    enum chat_purpose purpose = o->prompt ? CHAT_FOR_PROMPT : CHAT_FOR_TRAINING;
    tokenizer_encoder *enc = tokenizer_encoder_new(tok);
    gale_ids ids = {0};
    gale_bytes mask = {0}, out = {0};
    size_t line_no = 0;
    int rc = 0;
    const uint8_t *line;
    size_t len;
    while ((rc = reader_next_line(r, "a conversation", ++line_no, &line, &len)) > 0) {
        ids.n = mask.n = 0;
        if (!is_blank(line, len) && encode_conversation(tok, enc, tmpl, purpose, line, len, &ids, &mask, &err) < 0) {
            fprintf(stderr, "gale tokenize: %s:%zu: %s\n", r->name, line_no, err.msg);
            rc = -1;
            break;
        }
        format_ids(tok, o->format, &(id_texts){0}, &ids, 1, &out);
        if (o->mask) {
            gale_bytes_push(&out, '\t');
            for (size_t i = 0; i < mask.n; i++) {
                if (i)
                    gale_bytes_push(&out, ' ');
                gale_bytes_push(&out, (uint8_t)('0' + mask.v[i]));
            }
        }
        if (end_line(&out) < 0) {
            rc = -1;
            break;
        }
    }
    if (!rc && write_out(&out) < 0)
        rc = -1;
    tokenizer_encoder_free(enc);
    gale_ids_free(&ids);
    gale_bytes_free(&mask);
    gale_bytes_free(&out);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    tokenize_options o;
    int parsed = parse_options(argc, argv, &o);
    if (parsed)
        return parsed == 1 ? 0 : 2;
    gale_error err;
    gale_tokenizer *tok = tokenizer_load(o.tokenizer, &err);
    if (!tok) {
        fprintf(stderr, "gale tokenize: %s\n", err.msg);
        return 1;
    }
    line_reader r = {stdin, "<stdin>", {0}, 0, 0, 0};
    if (o.input) {
        r.f = fopen(o.input, "rb");
        r.name = o.input;
        if (!r.f) {
            fprintf(stderr, "gale tokenize: %s: %s\n", o.input, strerror(errno));
            tokenizer_free(tok);
            return 1;
        }
    }
    int rc = o.chat ? chat_lines(tok, &r, &o) : o.decode ? decode_lines(tok, &r) : encode_lines(tok, &r, &o);
    if (!rc && fflush(stdout) != 0) {
        fprintf(stderr, "gale tokenize: writing the output: %s\n", strerror(errno));
        rc = -1;
    }
    if (o.input)
        fclose(r.f);
    gale_bytes_free(&r.buf);
    tokenizer_free(tok);
    return rc ? 1 : 0;
}
