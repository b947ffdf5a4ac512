/* sentencepiece_model: a strict protobuf (proto2 wire format) reader for ModelProto. Only the
 * fields the encoder and decoder need are kept; every other field is skipped by wire type, as
 * protobuf does, so models written by newer sentencepiece versions still load. */
#include "data/sentencepiece_model.h"

#include <stdlib.h>
#include <string.h>

/* Protobuf wire types. */
enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_LEN = 2, WIRE_FIXED32 = 5 };

/* A bounded view of the bytes of one message, with the absolute offset of its start so that
 * messages name the byte where the problem is. */
typedef struct pb_reader {
    const uint8_t *p, *end;
    size_t base; /* offset of p in the file when the reader was made */
    const uint8_t *start;
    const char *name;
} pb_reader;

typedef struct pb_field {
    uint32_t number;
    int wire;
    uint64_t varint;      /* WIRE_VARINT */
    uint32_t fixed32;     /* WIRE_FIXED32 */
    const uint8_t *bytes; /* WIRE_LEN */
    size_t len;
    size_t offset; /* of the field's tag in the file */
} pb_field;

static size_t reader_offset(const pb_reader *r)
{
    return r->base + (size_t)(r->p - r->start);
}

static int read_varint(pb_reader *r, uint64_t *v, gale_error *err)
{
    size_t at = reader_offset(r);
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end)
            return gale_fail(err, "%s: not a SentencePiece model: truncated varint at byte %zu", r->name, at);
        uint8_t b = *r->p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return gale_fail(err, "%s: not a SentencePiece model: varint longer than 10 bytes at byte %zu", r->name, at);
}

/* Reads the next field; returns 1 with *f filled, 0 at the end of the message, -1 on error. */
static int read_field(pb_reader *r, pb_field *f, gale_error *err)
{
    if (r->p >= r->end)
        return 0;
    f->offset = reader_offset(r);
    uint64_t tag;
    if (read_varint(r, &tag, err) < 0)
        return -1;
    f->number = (uint32_t)(tag >> 3);
    f->wire = (int)(tag & 7);
    if (f->number == 0 || tag >> 3 > 0x1fffffff)
        return gale_fail(err, "%s: not a SentencePiece model: invalid field number %llu at byte %zu", r->name,
                         (unsigned long long)(tag >> 3), f->offset);
    switch (f->wire) {
    case WIRE_VARINT:
        return read_varint(r, &f->varint, err) < 0 ? -1 : 1;
    case WIRE_FIXED64:
        if (r->end - r->p < 8)
            return gale_fail(err, "%s: not a SentencePiece model: truncated field %u at byte %zu", r->name,
                             f->number, f->offset);
        r->p += 8;
        return 1;
    case WIRE_FIXED32:
        if (r->end - r->p < 4)
            return gale_fail(err, "%s: not a SentencePiece model: truncated field %u at byte %zu", r->name,
                             f->number, f->offset);
        memcpy(&f->fixed32, r->p, 4); /* little-endian on every platform gale builds on */
        r->p += 4;
        return 1;
    case WIRE_LEN: {
        uint64_t n;
        if (read_varint(r, &n, err) < 0)
            return -1;
        if (n > (uint64_t)(r->end - r->p))
            return gale_fail(err, "%s: not a SentencePiece model: field %u at byte %zu claims %llu bytes, %zu remain "
                             "(truncated file?)", r->name, f->number, f->offset, (unsigned long long)n,
                             (size_t)(r->end - r->p));
        f->bytes = r->p;
        f->len = (size_t)n;
        r->p += n;
        return 1;
    }
    default:
        return gale_fail(err, "%s: not a SentencePiece model: unsupported wire type %d (field %u) at byte %zu", r->name,
                         f->wire, f->number, f->offset);
    }
}

static pb_reader sub_reader(const pb_reader *parent, const pb_field *f)
{
    pb_reader r = {f->bytes, f->bytes + f->len, parent->base + (size_t)(f->bytes - parent->start), f->bytes,
                   parent->name};
    return r;
}

/* Checks that a known field arrived with the wire type the schema gives it. */
static int expect_wire(const pb_reader *r, const pb_field *f, int wire, const char *what, gale_error *err)
{
    if (f->wire == wire)
        return 0;
    return gale_fail(err, "%s: not a SentencePiece model: %s (field %u) has wire type %d, expected %d, at byte %zu",
                     r->name, what, f->number, f->wire, wire, f->offset);
}

static char *copy_bytes(const pb_field *f)
{
    char *s = gale_xmalloc(f->len + 1);
    memcpy(s, f->bytes, f->len);
    s[f->len] = 0;
    return s;
}

static void replace_string(char **dst, const pb_field *f)
{
    free(*dst);
    *dst = copy_bytes(f);
}

/* The piece string of f, NUL-terminated, in the model's block: one allocation for all pieces
 * rather than one each (32,000 pieces). Each copy takes len + 1 bytes of a field that takes at
 * least len + 2 bytes of the file, so a block of the file's size never runs out. */
static char *copy_piece(spm_model *m, const pb_field *f)
{
    char *s = m->piece_bytes + m->piece_bytes_used;
    if (f->len)
        memcpy(s, f->bytes, f->len);
    s[f->len] = 0;
    m->piece_bytes_used += f->len + 1;
    return s;
}

/* A piece as sentencepiece writes it, read without the general loop (a model is 32,000 of
 * them): the string (field 1, under 128 bytes), the score (field 2), and the type (field 3, one
 * byte) unless NORMAL, in that order and nothing else. 0 when r holds anything else, for
 * parse_piece to read. */
static int parse_piece_common(pb_reader r, spm_model *m, spm_piece *piece)
{
    const uint8_t *p = r.p;
    size_t avail = (size_t)(r.end - p);
    if (avail < 7 || p[0] != 0x0A || p[1] >= 0x80 || avail < 7u + p[1] || p[2 + p[1]] != 0x15)
        return 0;
    size_t n = p[1], rest = avail - 7 - n;
    const uint8_t *type = p + 7 + n;
    if (rest && (rest != 2 || type[0] != 0x18 || type[1] < SPM_PIECE_NORMAL || type[1] > SPM_PIECE_BYTE))
        return 0;
    piece->piece = copy_piece(m, &(pb_field){.bytes = p + 2, .len = n});
    piece->len = n;
    memcpy(&piece->score, p + 3 + n, 4);
    piece->type = rest ? type[1] : SPM_PIECE_NORMAL;
    return 1;
}

static int parse_piece(pb_reader r, spm_model *m, spm_piece *piece, gale_error *err)
{
    pb_field f;
    int rc;
    piece->type = SPM_PIECE_NORMAL;
    while ((rc = read_field(&r, &f, err)) > 0) {
        if (f.number == 1) {
            if (expect_wire(&r, &f, WIRE_LEN, "SentencePiece.piece", err) < 0)
                return -1;
            piece->piece = copy_piece(m, &f);
            piece->len = f.len;
        } else if (f.number == 2) {
            if (expect_wire(&r, &f, WIRE_FIXED32, "SentencePiece.score", err) < 0)
                return -1;
            memcpy(&piece->score, &f.fixed32, 4);
        } else if (f.number == 3) {
            if (expect_wire(&r, &f, WIRE_VARINT, "SentencePiece.type", err) < 0)
                return -1;
            if (f.varint < SPM_PIECE_NORMAL || f.varint > SPM_PIECE_BYTE)
                return gale_fail(err, "%s: invalid SentencePiece.type %llu at byte %zu", r.name,
                                 (unsigned long long)f.varint, f.offset);
            piece->type = (int)f.varint;
        }
    }
    return rc;
}

static int parse_normalizer(pb_reader r, spm_normalizer_spec *spec, gale_error *err)
{
    pb_field f;
    int rc;
    while ((rc = read_field(&r, &f, err)) > 0) {
        switch (f.number) {
        case 1:
            if (expect_wire(&r, &f, WIRE_LEN, "NormalizerSpec.name", err) < 0)
                return -1;
            replace_string(&spec->name, &f);
            break;
        case 2:
            if (expect_wire(&r, &f, WIRE_LEN, "NormalizerSpec.precompiled_charsmap", err) < 0)
                return -1;
            spec->charsmap_len = f.len;
            break;
        case 3:
        case 4:
        case 5:
            if (expect_wire(&r, &f, WIRE_VARINT, "NormalizerSpec flag", err) < 0)
                return -1;
            *(f.number == 3 ? &spec->add_dummy_prefix
              : f.number == 4 ? &spec->remove_extra_whitespaces : &spec->escape_whitespaces) = f.varint != 0;
            break;
        case 6:
            if (expect_wire(&r, &f, WIRE_LEN, "NormalizerSpec.normalization_rule_tsv", err) < 0)
                return -1;
            spec->has_rule_tsv = f.len > 0;
            break;
        default:
            break;
        }
    }
    return rc;
}

static int parse_trainer(pb_reader r, spm_model *m, gale_error *err)
{
    pb_field f;
    int rc;
    while ((rc = read_field(&r, &f, err)) > 0) {
        switch (f.number) {
        case 3:
        case 24:
        case 35:
            if (expect_wire(&r, &f, WIRE_VARINT, "TrainerSpec field", err) < 0)
                return -1;
            if (f.number == 3)
                m->model_type = (int)(f.varint > 100 ? 0 : f.varint);
            else if (f.number == 24)
                m->treat_whitespace_as_suffix = f.varint != 0;
            else
                m->byte_fallback = f.varint != 0;
            break;
        case 44:
        case 45:
        case 46:
        case 47:
        case 48:
            if (expect_wire(&r, &f, WIRE_LEN, "TrainerSpec piece name", err) < 0)
                return -1;
            replace_string(f.number == 44 ? &m->unk_surface
                           : f.number == 45 ? &m->unk_piece
                           : f.number == 46 ? &m->bos_piece
                           : f.number == 47 ? &m->eos_piece : &m->pad_piece, &f);
            break;
        default:
            break;
        }
    }
    return rc;
}

static void normalizer_defaults(spm_normalizer_spec *spec)
{
    spec->name = gale_xstrdup("");
    spec->add_dummy_prefix = 1;
    spec->remove_extra_whitespaces = 1;
    spec->escape_whitespaces = 1;
}

static void model_defaults(spm_model *m)
{
    memset(m, 0, sizeof *m);
    m->model_type = SPM_MODEL_UNIGRAM;
    m->unk_piece = gale_xstrdup("<unk>");
    m->bos_piece = gale_xstrdup("<s>");
    m->eos_piece = gale_xstrdup("</s>");
    m->pad_piece = gale_xstrdup("<pad>");
    m->unk_surface = gale_xstrdup(" \xE2\x81\x87 ");
    normalizer_defaults(&m->normalizer);
    normalizer_defaults(&m->denormalizer);
}

static int parse_model(pb_reader r, spm_model *m, gale_error *err)
{
    size_t cap = 0;
    pb_field f;
    int rc;
    while ((rc = read_field(&r, &f, err)) > 0) {
        if (f.number < 1 || f.number > 5 || f.number == 4)
            continue; /* 4 is self_test_data */
        if (expect_wire(&r, &f, WIRE_LEN, "ModelProto field", err) < 0)
            return -1;
        pb_reader sub = sub_reader(&r, &f);
        if (f.number == 1) {
            if (m->n_pieces == cap) {
                cap = cap ? 2 * cap : 1024;
                m->pieces = gale_xrealloc(m->pieces, cap * sizeof *m->pieces);
            }
            spm_piece *p = &m->pieces[m->n_pieces++];
            memset(p, 0, sizeof *p);
            if (!parse_piece_common(sub, m, p) && parse_piece(sub, m, p, err) < 0)
                return -1;
            if (!p->piece) /* the piece message (2 bytes at least) had no string */
                p->piece = copy_piece(m, &(pb_field){.len = 0});
        } else if (f.number == 2) {
            m->has_trainer_spec = 1;
            if (parse_trainer(sub, m, err) < 0)
                return -1;
        } else if (f.number == 3) {
            m->has_normalizer_spec = 1;
            if (parse_normalizer(sub, &m->normalizer, err) < 0)
                return -1;
        } else if (f.number == 5) {
            m->has_denormalizer = 1;
            if (parse_normalizer(sub, &m->denormalizer, err) < 0)
                return -1;
        }
    }
    return rc;
}

int spm_model_parse(const void *data, size_t len, const char *name, spm_model *model, gale_error *err)
{
    model_defaults(model);
    if (len == 0) {
        spm_model_free(model);
        return gale_fail(err, "%s: not a SentencePiece model: the file is empty", name);
    }
    pb_reader r = {data, (const uint8_t *)data + len, 0, data, name};
    model->piece_bytes = gale_xmalloc(len);
    if (parse_model(r, model, err) < 0) {
        spm_model_free(model);
        return -1;
    }
    return 0;
}

static void normalizer_free(spm_normalizer_spec *spec)
{
    free(spec->name);
}

void spm_model_free(spm_model *m)
{
    free(m->piece_bytes);
    free(m->pieces);
    free(m->unk_piece);
    free(m->bos_piece);
    free(m->eos_piece);
    free(m->pad_piece);
    free(m->unk_surface);
    normalizer_free(&m->normalizer);
    normalizer_free(&m->denormalizer);
    memset(m, 0, sizeof *m);
}

const char *spm_model_type_name(int model_type)
{
    switch (model_type) {
    case SPM_MODEL_UNIGRAM: return "unigram";
    case SPM_MODEL_BPE: return "bpe";
    case SPM_MODEL_WORD: return "word";
    case SPM_MODEL_CHAR: return "char";
    default: return "unknown";
    }
}

const char *spm_piece_type_name(int type)
{
    switch (type) {
    case SPM_PIECE_NORMAL: return "NORMAL";
    case SPM_PIECE_UNKNOWN: return "UNKNOWN";
    case SPM_PIECE_CONTROL: return "CONTROL";
    case SPM_PIECE_USER_DEFINED: return "USER_DEFINED";
    case SPM_PIECE_UNUSED: return "UNUSED";
    case SPM_PIECE_BYTE: return "BYTE";
    default: return "?";
    }
}
