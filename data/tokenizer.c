/* tokenizer: SentencePiece BPE encoding and decoding, id for id as sentencepiece 0.1.97 does,
 * and Tekken's (mistral-common's Tekkenizer, tiktoken's BPE) through the same core.
 *
 * SentencePiece encoding is a pipeline over the input bytes:
 *   normaliser  one unit at a time: a user-defined piece, a valid UTF-8 character, or U+FFFD
 *               for each byte that starts no valid character; spaces become U+2581 ("▁"), a
 *               dummy "▁" goes in front, and with remove_extra_whitespaces runs of spaces
 *               collapse and leading and trailing ones go;
 *   words       the normalised text is cut in front of every "▁" that follows a character
 *               other than "▁". When no piece the merges can produce holds such a pair (checked
 *               when the model is loaded), no merge can cross a cut, and sentencepiece's merge
 *               order restricted to one word is the order the word alone gets: so each word is
 *               encoded alone, its ids cached (complete words queue up, 16 at most, while
 *               their cache lines are fetched; words too long for a line go to a second
 *               cache), and memory is bounded by the longest words. Words are also cut
 *               between two characters that no mergeable piece holds side by side
 *               (index_chars), for the same reason, and a word of one character that is a
 *               piece is its id without the cache;
 *   BPE         sentencepiece's merge loop: the adjacent pair whose concatenation is a piece with
 *               the highest score merges first, leftmost on ties: one integer per pair, its
 *               rank, orders them (a scan of the ranks for words of up to 64 symbols, a binary
 *               heap for longer ones); whether two symbols merge is a lookup of their
 *               concatenation among the pieces, as sentencepiece does, behind a per-encoder
 *               memo keyed by the two symbols' integer keys (nothing is built at load);
 *   ids         pieces to ids; UNUSED pieces split back into the pair that made them; a
 *               character with no piece becomes its <0xNN> byte pieces (or one <unk> for a
 *               run of them).
 * The lookups all this uses (piece_index) are made when a model is loaded, and kept on disk
 * for the next process (file_cache.h).
 * Tekken: the text made valid UTF-8 (U+FFFD as Python decodes), cut into words by the
 * file's regex (PCRE2), each word its piece when it is one (tiktoken's shortcut), else BPE
 * over its bytes with score -rank; the word cache and queue as above. */
#include "data/tokenizer.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define XXH_INLINE_ALL /* the hash of every piece lookup: let the compiler inline it */
#include <xxhash.h>

#include "data/file_cache.h"
#include "data/sentencepiece_model.h"
#include "data/tekken.h"
#include "data/tekken_cache.h"
#include "data/tokenizer_find.h"
#include "util/file.h"
#include "util/hash.h"

#define WS "\xE2\x96\x81" /* U+2581, sentencepiece's whitespace symbol */
#define WS_LEN 3
#define REPLACEMENT_CHAR "\xEF\xBF\xBD"

/* Characters by code point, in pages of 256 code points (see index_chars): what the merges
 * need to know of a character without hashing it. */
#define CHAR_PAGE_BITS 8
#define N_CHAR_PAGES (0x110000u >> CHAR_PAGE_BITS)
#define NO_KEY UINT32_MAX
/* Pair rows of the bitmap at most: a model whose pieces hold more characters side by side gets
 * no cuts between characters (the 2943 pairs of Mistral v3 hold 268 characters). */
#define MAX_PAIR_CHARS 4096

typedef struct char_entry {
    uint32_t key;   /* the id of the mergeable piece that is this character alone, or NO_KEY */
    uint16_t pair;  /* its row and column in the pair bitmap; 0: it is in no pair */
    uint8_t direct; /* the character alone is a word whose id is key (a NORMAL or USER_DEFINED piece) */
    uint8_t unused_;
} char_entry;

/* Open-addressing hash table from piece bytes to id, over the pieces of the model. A slot holds
 * a short piece's bytes (most pieces), so that a lookup, hit or miss, reads one slot and not
 * the model's piece: this is the lookup of every merge the pair memo has not seen. A longer
 * piece's slot keeps the upper half of its hash instead, so a probe rarely touches a piece it
 * does not match. */
#define PIECE_INLINE_BYTES 11

typedef struct piece_slot {
    int32_t id;  /* -1: empty */
    uint8_t len; /* of the piece; 255 for 255 bytes or more */
    uint8_t bytes[PIECE_INLINE_BYTES]; /* a piece that fits, else its hash's upper 32 bits */
} piece_slot;

_Static_assert(sizeof(piece_slot) == 16, "four slots to a cache line");

/* In front of the slots, a blocked Bloom filter (two bits of one 64-bit word per piece, about
 * 16 bits per piece): most lookups of the BPE loop ask for a string that is no piece, and the
 * filter answers most of those from a few cache-resident kilobytes instead of the table. */
typedef struct piece_table {
    piece_slot *slots;
    size_t mask;
    uint64_t *filter;
    size_t filter_mask;
} piece_table;

/* What index_pieces and index_chars derive from the pieces: the lookups of encoding and
 * decoding, kept in a cache file (file_cache.h) after the first load of a large model. The
 * arrays are the index's own, or point into the cache body they were read from. */
typedef struct piece_index {
    piece_table mergeable; /* NORMAL, USER_DEFINED and UNUSED: what sentencepiece's pieces_ holds */
    piece_table reserved;  /* CONTROL, UNKNOWN and BYTE: its reserved_id_map_ */
    float *scores;
    uint8_t *types;
    int unk_id;
    int byte_ids[256];
    int32_t *user_defined;  /* ids of USER_DEFINED pieces */
    size_t n_user_defined, max_user_defined_len;
    uint8_t user_defined_first[256]; /* where some user-defined piece starts with that byte: 1,
                                      * and 2 more when it is that byte alone */
    uint64_t user_defined_two[1024]; /* bit b0 << 8 | b1: some piece starts with bytes b0 b1 */
    int split_words;        /* see the comment at the top */
    int has_unused;         /* some piece is UNUSED */
    /* SentencePiece: each character's entry (index_chars), through a page number by code point
     * (0: the page of no character) */
    uint16_t char_page_of[N_CHAR_PAGES];
    char_entry (*char_pages)[1u << CHAR_PAGE_BITS];
    size_t n_char_pages;
    /* The pairs of adjacent characters inside some mergeable piece (see join_or_cut): a bitmap
     * of pair_rows rows by the left character's pair number, pair_row_words words a row.
     * cut_pairs is 0 when words are not independent, a piece is not valid UTF-8 or there are
     * too many. */
    int cut_pairs;
    uint64_t *pair_bits;
    size_t pair_rows, pair_row_words;
    /* The pieces' bytes, each NUL-terminated, piece i from piece_starts[i] to piece_starts[i + 1]:
     * what encoding and decoding read of the pieces, so that a model whose index comes from
     * the cache is not parsed at all */
    uint32_t *piece_starts;
    char *piece_text;
    size_t piece_text_bytes;
    /* the decimal text of each id (tokenizer_id_texts); n_id_texts 0: none */
    uint64_t *id_texts;
    size_t n_id_texts;
    /* the model's settings' strings (MODEL_STRINGS), each NUL-terminated, for a model not parsed */
    char *model_strings;
    size_t model_strings_bytes;
    char sha256[65]; /* of the model file */
    const void *cache_body; /* the cache body the arrays point into, read-only (file_cache_load), */
    size_t cache_len;       /* and its length; NULL: the arrays are the index's own */
} piece_index;

struct gale_tokenizer {
    char *name;
    spm_model model;
    piece_index ix;
    int bos_id, eos_id;
    tekken_splitter *splitter; /* a Tekken file: its pre-tokenizer; NULL for SentencePiece */
    size_t n_special;       /* Tekken: the special tokens before the vocabulary (byte b is n_special + b) */
    /* SHA-256 of the file, made on first use (few commands need it): from a copy of the bytes
     * of a SentencePiece model; a Tekken file's comes with its cache */
    char sha256[65];
    uint8_t *file_bytes;
    size_t file_len;
    pthread_mutex_t sha256_lock;
    /* SentencePiece with cut_pairs: bit b of row a, where ASCII byte b, after ASCII byte a, joins
     * the word and is one character of it as it stands (no space, no user-defined piece): the
     * whole test of cut_run for most bytes of code, paths and prose, with no pair numbers */
    uint64_t ascii_joins[128][2];
    /* and the pair number of each two-byte character (U+0080..U+07FF), by its lead byte's low
     * five bits then its second byte (TWO_BYTE_INDEX), 0 where its lead byte may start a
     * user-defined piece and where the two bytes are no such character (a second byte that is
     * no trail byte, the overlong leads C0 and C1): cut_run's whole test for the letters of
     * Cyrillic, Greek, Hebrew and Arabic words, without decoding them or the character pages */
    uint16_t two_byte_pair[0x20 << 8];
};

/* ---- hashing of pieces ---- */

static uint64_t bytes_hash(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}

static uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static uint32_t load32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* memcmp(a, b, n) == 0 for the short strings of pieces and words, without a library call:
 * eight bytes at a time, the last word overlapping the one before it. Inlined: a word cache
 * hit compares once, and the call cost a third of the comparison. */
static inline __attribute__((always_inline)) int bytes_equal(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8)
            if (load64(x + i) != load64(y + i))
                return 0;
        return load64(x + n - 8) == load64(y + n - 8);
    }
    if (n >= 4)
        return load32(x) == load32(y) && load32(x + n - 4) == load32(y + n - 4);
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return 0;
    return 1;
}

/* A table for n pieces, at most half full. */
static void piece_table_init(piece_table *t, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    t->slots = gale_xcalloc(cap, sizeof *t->slots);
    for (size_t i = 0; i < cap; i++)
        t->slots[i].id = -1;
    t->mask = cap - 1;
    t->filter = gale_xcalloc(cap / 8, sizeof *t->filter);
    t->filter_mask = cap / 8 - 1;
}

/* The filter's word for hash h, and the two bits a piece of that hash sets in it. */
static uint64_t *filter_word(const piece_table *t, uint64_t h)
{
    return &t->filter[(h >> 40) & t->filter_mask];
}

static uint64_t filter_bits(uint64_t h)
{
    return 1ull << (h & 63) | 1ull << (h >> 6 & 63);
}

static uint8_t piece_slot_len(size_t n)
{
    return n < 255 ? (uint8_t)n : 255;
}

/* The bytes of piece id (NUL-terminated) and their count. */
static const char *piece_text(const piece_index *ix, int32_t id)
{
    return ix->piece_text + ix->piece_starts[id];
}

static size_t piece_len(const piece_index *ix, int32_t id)
{
    return ix->piece_starts[id + 1] - ix->piece_starts[id] - 1;
}

/* 1 when slot s holds the piece p of n bytes, hash tag tag and slot length len. */
static int piece_slot_holds(const piece_slot *s, const piece_index *ix, const void *p, size_t n, uint32_t tag,
                            uint8_t len)
{
    if (s->len != len)
        return 0;
    if (n <= PIECE_INLINE_BYTES)
        return bytes_equal(s->bytes, p, n);
    return !memcmp(s->bytes, &tag, sizeof tag) && piece_len(ix, s->id) == n && bytes_equal(piece_text(ix, s->id), p, n);
}

static int32_t piece_table_find(const piece_table *t, const piece_index *ix, const void *p, size_t n)
{
    uint64_t h = bytes_hash(p, n);
    uint32_t tag = (uint32_t)(h >> 32);
    uint8_t len = piece_slot_len(n);
    if ((*filter_word(t, h) & filter_bits(h)) != filter_bits(h))
        return -1;
    for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
        const piece_slot *s = &t->slots[i];
        if (s->id < 0)
            return -1;
        if (piece_slot_holds(s, ix, p, n, tag, len))
            return s->id;
    }
}

/* Inserts id; returns the id already there when the piece is a duplicate, else -1. One probe
 * sequence: a duplicate lies before the first empty slot. */
static int32_t piece_table_insert(piece_table *t, const piece_index *ix, const spm_model *m, int32_t id)
{
    const spm_piece *p = &m->pieces[id];
    uint64_t h = bytes_hash(p->piece, p->len);
    uint32_t tag = (uint32_t)(h >> 32);
    uint8_t len = piece_slot_len(p->len);
    size_t i = h & t->mask;
    for (; t->slots[i].id >= 0; i = (i + 1) & t->mask)
        if (piece_slot_holds(&t->slots[i], ix, p->piece, p->len, tag, len))
            return t->slots[i].id;
    *filter_word(t, h) |= filter_bits(h);
    piece_slot *s = &t->slots[i];
    s->id = id;
    s->len = len;
    if (p->len <= PIECE_INLINE_BYTES)
        memcpy(s->bytes, p->piece, p->len);
    else
        memcpy(s->bytes, &tag, sizeof tag);
    return -1;
}

/* ---- UTF-8 as sentencepiece reads it ---- */

static int is_trail(uint8_t b)
{
    return (b & 0xC0) == 0x80;
}

static int is_valid_codepoint(uint32_t c)
{
    return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF);
}

/* The length of the valid UTF-8 character at s (n > 0 bytes available), or 0 when the byte at
 * s starts none: sentencepiece's DecodeUTF8 (overlongs, surrogates and code points above
 * U+10FFFF are invalid, and so is a sequence cut short by the end of the input). */
static size_t utf8_char_len(const uint8_t *s, size_t n)
{
    uint8_t b = s[0];
    if (b < 0x80)
        return 1;
    if ((b & 0xE0) == 0xC0) {
        if (n < 2 || !is_trail(s[1]))
            return 0;
        uint32_t c = ((uint32_t)(b & 0x1F) << 6) | (s[1] & 0x3F);
        return c >= 0x80 ? 2 : 0;
    }
    if ((b & 0xF0) == 0xE0) {
        if (n < 3 || !is_trail(s[1]) || !is_trail(s[2]))
            return 0;
        uint32_t c = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return c >= 0x800 && is_valid_codepoint(c) ? 3 : 0;
    }
    if ((b & 0xF8) == 0xF0) {
        if (n < 4 || !is_trail(s[1]) || !is_trail(s[2]) || !is_trail(s[3]))
            return 0;
        uint32_t c = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
                     ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        return c >= 0x10000 && is_valid_codepoint(c) ? 4 : 0;
    }
    return 0;
}

/* sentencepiece's OneCharLen: the length a lead byte announces, whatever follows. */
static size_t lead_byte_len(uint8_t b)
{
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[b >> 4];
}

static int utf8_valid(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t c = utf8_char_len((const uint8_t *)s + i, n - i);
        if (!c)
            return 0;
        i += c;
    }
    return 1;
}

/* The code point of a valid UTF-8 character of len bytes. */
static uint32_t utf8_codepoint(const uint8_t *s, size_t len)
{
    static const uint8_t lead_mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    uint32_t c = s[0] & lead_mask[len];
    for (size_t i = 1; i < len; i++)
        c = c << 6 | (s[i] & 0x3F);
    return c;
}

/* utf8_char_len and the code point (in *c) at once, the two- and three-byte characters of
 * most scripts decoded inline. */
static inline size_t utf8_char_decode(const uint8_t *s, size_t n, uint32_t *c)
{
    uint8_t b = s[0];
    if (b >= 0xC2 && b < 0xE0 && n >= 2 && is_trail(s[1])) {
        *c = (uint32_t)(b & 0x1F) << 6 | (s[1] & 0x3F);
        return 2;
    }
    if ((b & 0xF0) == 0xE0 && n >= 3 && is_trail(s[1]) && is_trail(s[2])) {
        *c = (uint32_t)(b & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
        return *c >= 0x800 && is_valid_codepoint(*c) ? 3 : 0;
    }
    size_t len = utf8_char_len(s, n);
    if (len)
        *c = utf8_codepoint(s, len);
    return len;
}

static int is_ws_at(const uint8_t *s, size_t n)
{
    return n >= WS_LEN && !memcmp(s, WS, WS_LEN);
}

/* 0 when no user-defined piece starts at s (n > 0 bytes), told by its first two bytes: most
 * '[' in text start none of Mistral's "[REFERENCE_DOC_1]" and the like. */
static int user_defined_may_start(const gale_tokenizer *tok, const uint8_t *s, size_t n)
{
    uint8_t first = tok->ix.user_defined_first[s[0]];
    if (first != 1)
        return first;
    if (n < 2)
        return 0;
    unsigned two = (unsigned)s[0] << 8 | s[1];
    return (int)(tok->ix.user_defined_two[two >> 6] >> (two & 63) & 1);
}

/* The length of the longest user-defined piece that s starts with (its id in *id), or 0. */
static size_t user_defined_match(const gale_tokenizer *tok, const uint8_t *s, size_t n, int32_t *id)
{
    if (!user_defined_may_start(tok, s, n))
        return 0;
    size_t best = 0;
    for (size_t i = 0; i < tok->ix.n_user_defined; i++) {
        int32_t u = tok->ix.user_defined[i];
        size_t len = piece_len(&tok->ix, u);
        if (len > best && len <= n && !memcmp(piece_text(&tok->ix, u), s, len)) {
            best = len;
            *id = u;
        }
    }
    return best;
}

/* ---- loading ---- */

static int check_normalizer(const spm_normalizer_spec *spec, const char *what, const char *name, gale_error *err)
{
    if (spec->charsmap_len || spec->has_rule_tsv || (spec->name[0] && strcmp(spec->name, "identity")))
        return gale_fail(err, "%s: %s '%s' is not supported: gale encodes models with the identity normalizer only",
                         name, what, spec->name[0] ? spec->name : "(custom rules)");
    return 0;
}

static int check_model_settings(const spm_model *m, const char *name, gale_error *err)
{
    if (m->n_pieces == 0)
        return gale_fail(err, "%s: not a SentencePiece model: it holds no pieces", name);
    if (m->n_pieces > INT32_MAX)
        return gale_fail(err, "%s: %zu pieces is more than gale's int32 token ids hold", name, m->n_pieces);
    /* sentencepiece writes both; a file without them is cut short or is not a model */
    if (!m->has_trainer_spec || !m->has_normalizer_spec)
        return gale_fail(err, "%s: not a complete SentencePiece model: it has no %s (truncated file?)", name,
                         m->has_trainer_spec ? "normalizer_spec" : "trainer_spec");
    if (m->model_type != SPM_MODEL_BPE)
        return gale_fail(err, "%s: this is a SentencePiece %s model; gale encodes BPE models only", name,
                         spm_model_type_name(m->model_type));
    if (check_normalizer(&m->normalizer, "normalizer", name, err) < 0)
        return -1;
    if (m->has_denormalizer && check_normalizer(&m->denormalizer, "denormalizer", name, err) < 0)
        return -1;
    if (!m->normalizer.escape_whitespaces)
        return gale_fail(err, "%s: normalizer_spec.escape_whitespaces=false is not supported", name);
    if (m->treat_whitespace_as_suffix)
        return gale_fail(err, "%s: trainer_spec.treat_whitespace_as_suffix=true is not supported", name);
    return 0;
}

/* The byte of a piece "<0xNN>" (upper-case hex, as sentencepiece writes them; NUL-terminated,
 * len bytes), or -1. */
static int byte_piece_value(const char *piece, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    if (len != 6 || memcmp(piece, "<0x", 3) || piece[5] != '>')
        return -1;
    const char *hi = memchr(hex, piece[3], 16), *lo = memchr(hex, piece[4], 16);
    if (!hi || !lo || !piece[3] || !piece[4])
        return -1;
    return (int)((hi - hex) * 16 + (lo - hex));
}

/* The pieces sentencepiece's pieces_ holds (the others are its reserved_id_map_). */
static int is_mergeable(int type)
{
    return type == SPM_PIECE_NORMAL || type == SPM_PIECE_USER_DEFINED || type == SPM_PIECE_UNUSED;
}

#define PIECE_PREFETCH 16 /* pieces ahead */

/* The pieces' bytes into ix (piece_text), one after the other. */
static int index_piece_text(piece_index *ix, const spm_model *m, const char *name, gale_error *err)
{
    size_t bytes = 0;
    for (size_t i = 0; i < m->n_pieces; i++)
        bytes += m->pieces[i].len + 1;
    if (bytes > UINT32_MAX)
        return gale_fail(err, "%s: the pieces hold %zu bytes, more than gale indexes (4 GiB)", name, bytes);
    ix->piece_starts = gale_xmalloc((m->n_pieces + 1) * sizeof *ix->piece_starts);
    ix->piece_text = gale_xmalloc(bytes);
    ix->piece_text_bytes = bytes;
    size_t at = 0;
    for (size_t i = 0; i < m->n_pieces; i++) {
        ix->piece_starts[i] = (uint32_t)at;
        memcpy(ix->piece_text + at, m->pieces[i].piece, m->pieces[i].len + 1);
        at += m->pieces[i].len + 1;
    }
    ix->piece_starts[m->n_pieces] = (uint32_t)at;
    return 0;
}

/* The decimal text of each of n ids (tokenizer_id_texts), for 10^6 ids at most. */
static void index_id_texts(piece_index *ix, size_t n)
{
    if (n > 1000000)
        return;
    ix->id_texts = gale_xmalloc(n * sizeof *ix->id_texts);
    /* the digits counted up from " 0" rather than divided out of each id */
    char s[16] = " 0";
    size_t len = 1;
    for (size_t id = 0; id < n; id++) {
        s[7] = (char)(1 + len);
        memcpy(&ix->id_texts[id], s, sizeof ix->id_texts[id]);
        size_t k = len;
        while (k > 0 && s[k] == '9')
            s[k--] = '0';
        if (k > 0) {
            s[k]++;
        } else { /* 9...9 + 1 */
            s[1] = '1';
            s[++len] = '0';
        }
    }
    ix->n_id_texts = n;
}

static int index_pieces(gale_tokenizer *tok, gale_error *err)
{
    const spm_model *m = &tok->model;
    const char *name = tok->name;
    size_t n_mergeable = 0;
    for (size_t i = 0; i < m->n_pieces; i++)
        n_mergeable += is_mergeable(m->pieces[i].type);
    piece_table_init(&tok->ix.mergeable, n_mergeable);
    piece_table_init(&tok->ix.reserved, m->n_pieces - n_mergeable);
    tok->ix.scores = gale_xmalloc(m->n_pieces * sizeof *tok->ix.scores);
    tok->ix.types = gale_xmalloc(m->n_pieces);
    tok->ix.user_defined = gale_xmalloc(m->n_pieces * sizeof *tok->ix.user_defined);
    tok->ix.unk_id = -1;
    for (int b = 0; b < 256; b++)
        tok->ix.byte_ids[b] = -1;
    if (index_piece_text(&tok->ix, m, name, err) < 0)
        return -1;
    index_id_texts(&tok->ix, m->n_pieces);
    for (size_t i = 0; i < m->n_pieces; i++) {
        const spm_piece *p = &m->pieces[i];
        if (i + PIECE_PREFETCH < m->n_pieces) { /* the slot a later piece starts at, from memory */
            const spm_piece *q = &m->pieces[i + PIECE_PREFETCH];
            const piece_table *t = is_mergeable(q->type) ? &tok->ix.mergeable : &tok->ix.reserved;
            __builtin_prefetch(&t->slots[bytes_hash(q->piece, q->len) & t->mask]);
        }
        tok->ix.scores[i] = p->score;
        tok->ix.types[i] = (uint8_t)p->type;
        if (p->len == 0)
            return gale_fail(err, "%s: piece %zu is empty", name, i);
        if (isnan(p->score)) /* sentencepiece's merge order has no place for it */
            return gale_fail(err, "%s: piece %zu '%s' has score NaN", name, i, p->piece);
        int32_t dup = piece_table_insert(is_mergeable(p->type) ? &tok->ix.mergeable : &tok->ix.reserved, &tok->ix, m,
                                         (int32_t)i);
        if (dup >= 0)
            return gale_fail(err, "%s: piece %zu '%s' is already defined as piece %d", name, i, p->piece, dup);
        if (p->type == SPM_PIECE_USER_DEFINED) {
            if (!utf8_valid(p->piece, p->len))
                return gale_fail(err, "%s: user-defined piece %zu is not valid UTF-8, which gale does not support",
                                 name, i);
            tok->ix.user_defined[tok->ix.n_user_defined++] = (int32_t)i;
            uint8_t b0 = (uint8_t)p->piece[0];
            tok->ix.user_defined_first[b0] |= p->len == 1 ? 3 : 1;
            if (p->len > 1) {
                unsigned two = (unsigned)b0 << 8 | (uint8_t)p->piece[1];
                tok->ix.user_defined_two[two >> 6] |= 1ull << (two & 63);
            }
            if (p->len > tok->ix.max_user_defined_len)
                tok->ix.max_user_defined_len = p->len;
        } else if (p->type == SPM_PIECE_UNUSED) {
            tok->ix.has_unused = 1;
        } else if (p->type == SPM_PIECE_UNKNOWN) {
            if (tok->ix.unk_id >= 0)
                return gale_fail(err, "%s: pieces %d and %zu are both of type UNKNOWN", name, tok->ix.unk_id, i);
            tok->ix.unk_id = (int)i;
        } else if (p->type == SPM_PIECE_BYTE) {
            int b = byte_piece_value(p->piece, p->len);
            if (!m->byte_fallback)
                return gale_fail(err, "%s: byte piece %zu '%s' but trainer_spec.byte_fallback is false", name, i,
                                 p->piece);
            if (b < 0)
                return gale_fail(err, "%s: piece %zu '%s' has type BYTE but is not of the form <0xNN>", name, i,
                                 p->piece);
            tok->ix.byte_ids[b] = (int)i;
        }
    }
    if (tok->ix.unk_id < 0)
        return gale_fail(err, "%s: no piece has type UNKNOWN", name);
    if (m->byte_fallback)
        for (int b = 0; b < 256; b++)
            if (tok->ix.byte_ids[b] < 0)
                return gale_fail(err, "%s: trainer_spec.byte_fallback is true but piece <0x%02X> is missing", name, b);
    return 0;
}

/* 1 when no mergeable piece holds "▁" after another character (so words can be encoded one
 * at a time) and no piece is UNUSED (their splitting back is keyed over the whole text). */
static int words_are_independent(const gale_tokenizer *tok)
{
    const spm_model *m = &tok->model;
    for (size_t i = 0; i < m->n_pieces; i++) {
        const spm_piece *p = &m->pieces[i];
        const uint8_t *s = (const uint8_t *)p->piece;
        if (p->type == SPM_PIECE_UNUSED)
            return 0;
        if (p->type != SPM_PIECE_NORMAL && p->type != SPM_PIECE_USER_DEFINED)
            continue;
        size_t k = 0;
        while (is_ws_at(s + k, p->len - k))
            k += WS_LEN;
        for (; k + WS_LEN <= p->len; k++)
            if (is_ws_at(s + k, p->len - k))
                return 0;
    }
    return 1;
}

/* sentencepiece's bos_id() and friends: the id of the named piece when it has the type. */
static int special_id(const gale_tokenizer *tok, const char *piece, int type)
{
    int id = tokenizer_piece_id(tok, piece);
    return id >= 0 && tok->ix.types[id] == type ? id : -1;
}

/* ---- characters, and the pairs of them that merges can join ---- */

#define WS_CP 0x2581u
#define NO_CHAR UINT32_MAX /* the last character of an empty word */

static const char_entry *char_entry_of(const gale_tokenizer *tok, uint32_t c)
{
    return &tok->ix.char_pages[tok->ix.char_page_of[c >> CHAR_PAGE_BITS]][c & ((1u << CHAR_PAGE_BITS) - 1)];
}

/* A symbol's key, for the pair memo: the id of the mergeable piece that is character c alone,
 * or else n_pieces + c (keys stay below 2^32 since ids are int32). */
static uint32_t char_key(const gale_tokenizer *tok, uint32_t c)
{
    uint32_t key = char_entry_of(tok, c)->key;
    return key != NO_KEY ? key : (uint32_t)tok->model.n_pieces + c;
}

/* The key of a user-defined piece in a word: it never merges (see pair_lookup), and it is no
 * character's key nor any piece's. */
static uint32_t frozen_key(const gale_tokenizer *tok)
{
    return (uint32_t)tok->model.n_pieces + 0x110000u;
}

/* 1 when the characters of pair numbers a then b lie next to each other inside some mergeable
 * piece (number 0, a character in no pair, has an empty row and column). */
static int pair_joins(const gale_tokenizer *tok, uint32_t a, uint32_t b)
{
    return (int)(tok->ix.pair_bits[a * tok->ix.pair_row_words + (b >> 6)] >> (b & 63) & 1);
}

static int ascii_joins(const gale_tokenizer *tok, uint8_t a, uint8_t b)
{
    return (int)(tok->ascii_joins[a][b >> 6] >> (b & 63) & 1);
}

static void index_ascii_joins(gale_tokenizer *tok)
{
    const char_entry *ascii = char_entry_of(tok, 0);
    for (unsigned b = 0; b < 128; b++) {
        if (b == ' ' || tok->ix.user_defined_first[b])
            continue;
        for (unsigned a = 0; a < 128; a++)
            if (pair_joins(tok, ascii[a].pair, ascii[b].pair))
                tok->ascii_joins[a][b >> 6] |= (uint64_t)1 << (b & 63);
    }
}

/* The index in two_byte_pair of the two bytes at s, the first of them 110xxxxx. */
#define TWO_BYTE_INDEX(s) ((uint32_t)((s)[0] & 0x1F) << 8 | (s)[1])

static void index_two_byte_pairs(gale_tokenizer *tok)
{
    for (uint32_t c = 0x80; c < 0x800; c++) {
        const uint8_t utf8[2] = {(uint8_t)(0xC0 | c >> 6), (uint8_t)(0x80 | (c & 0x3F))};
        if (!tok->ix.user_defined_first[utf8[0]])
            tok->two_byte_pair[TWO_BYTE_INDEX(utf8)] = char_entry_of(tok, c)->pair;
    }
}

/* The entry of character c, on a page of its own (made on first use). */
static char_entry *char_entry_add(gale_tokenizer *tok, uint32_t c)
{
    uint16_t *page = &tok->ix.char_page_of[c >> CHAR_PAGE_BITS];
    if (!*page) {
        size_t n = tok->ix.n_char_pages;
        if (!(n & (n - 1))) /* a power of two: full */
            tok->ix.char_pages = gale_xrealloc(tok->ix.char_pages, 2 * n * sizeof *tok->ix.char_pages);
        for (size_t i = 0; i < 1u << CHAR_PAGE_BITS; i++)
            tok->ix.char_pages[tok->ix.n_char_pages][i] = (char_entry){NO_KEY, 0, 0, 0};
        *page = (uint16_t)tok->ix.n_char_pages++;
    }
    return &tok->ix.char_pages[*page][c & ((1u << CHAR_PAGE_BITS) - 1)];
}

/* The pair number of character c, given on first use (from 1, counted in *n; past
 * MAX_PAIR_CHARS, *n says there are too many). */
static uint16_t pair_number(gale_tokenizer *tok, uint32_t c, size_t *n)
{
    char_entry *ce = char_entry_add(tok, c);
    if (!ce->pair && *n < MAX_PAIR_CHARS)
        ce->pair = (uint16_t)++*n;
    else if (!ce->pair)
        *n = MAX_PAIR_CHARS + 1;
    return ce->pair;
}

/* The pairs of adjacent characters of the NORMAL and USER_DEFINED pieces, by pair number, two
 * at a time into *pairs (the count returned); -1 when some such piece is not valid UTF-8 or
 * they hold too many characters. */
static long piece_pairs(gale_tokenizer *tok, uint16_t **pairs, size_t *n_chars)
{
    const spm_model *m = &tok->model;
    size_t bytes = 0, n = 0;
    for (size_t i = 0; i < m->n_pieces; i++)
        bytes += m->pieces[i].len;
    *pairs = gale_xmalloc(2 * bytes * sizeof **pairs);
    for (size_t i = 0; i < m->n_pieces; i++) {
        const spm_piece *p = &m->pieces[i];
        if (p->type != SPM_PIECE_NORMAL && p->type != SPM_PIECE_USER_DEFINED)
            continue;
        const uint8_t *s = (const uint8_t *)p->piece;
        size_t len = s[0] < 0x80 ? 1 : utf8_char_len(s, p->len);
        if (!len)
            return -1;
        if (len == p->len)
            continue; /* one character: in no pair */
        uint16_t prev = pair_number(tok, utf8_codepoint(s, len), n_chars);
        for (size_t k = len; k < p->len; k += len) {
            len = s[k] < 0x80 ? 1 : utf8_char_len(s + k, p->len - k);
            if (!len)
                return -1;
            uint16_t next = pair_number(tok, utf8_codepoint(s + k, len), n_chars);
            (*pairs)[2 * n] = prev;
            (*pairs)[2 * n + 1] = next;
            n++;
            prev = next;
        }
    }
    return *n_chars > MAX_PAIR_CHARS ? -1 : (long)n;
}

/* The entries of the characters of a SentencePiece model: each mergeable piece that is one
 * character gives that character its key, and each pair of adjacent characters in a NORMAL or
 * USER_DEFINED piece goes into the pair bitmap. No merge joins two characters that are no such
 * pair (its piece would hold them side by side), so a word can be cut there and its parts
 * encoded one by one, as words are at "▁": long runs of CJK, paths and base64 become short
 * words that the cache keeps, and most CJK characters words of one character. Cuts only where
 * words are independent at all. */
static void index_chars(gale_tokenizer *tok)
{
    const spm_model *m = &tok->model;
    tok->ix.char_pages = gale_xmalloc(sizeof *tok->ix.char_pages);
    for (size_t i = 0; i < 1u << CHAR_PAGE_BITS; i++)
        tok->ix.char_pages[0][i] = (char_entry){NO_KEY, 0, 0, 0};
    tok->ix.n_char_pages = 1;
    for (size_t i = 0; i < m->n_pieces; i++) {
        const spm_piece *p = &m->pieces[i];
        const uint8_t *s = (const uint8_t *)p->piece;
        if (!is_mergeable(p->type) || utf8_char_len(s, p->len) != p->len)
            continue;
        char_entry *ce = char_entry_add(tok, utf8_codepoint(s, p->len));
        ce->key = (uint32_t)i;
        ce->direct = p->type != SPM_PIECE_UNUSED;
    }
    if (!tok->ix.split_words)
        return;
    uint16_t *pairs;
    size_t n_chars = 0;
    long n_pairs = piece_pairs(tok, &pairs, &n_chars);
    if (n_pairs >= 0) {
        tok->ix.pair_rows = n_chars + 1;
        tok->ix.pair_row_words = (n_chars + 1 + 63) / 64;
        tok->ix.pair_bits = gale_xcalloc(tok->ix.pair_rows * tok->ix.pair_row_words, sizeof *tok->ix.pair_bits);
        for (long i = 0; i < n_pairs; i++) {
            uint32_t x = pairs[2 * i], y = pairs[2 * i + 1];
            tok->ix.pair_bits[x * tok->ix.pair_row_words + (y >> 6)] |= 1ull << (y & 63);
        }
    }
    free(pairs);
    if (n_pairs < 0)
        return; /* cut_pairs stays 0 */
    /* the trailing whitespace that remove_extra_whitespaces drops must stay in the last word */
    uint32_t ws = char_entry_of(tok, WS_CP)->pair;
    tok->ix.cut_pairs = !m->normalizer.remove_extra_whitespaces || pair_joins(tok, ws, ws);
}

/* ---- the index kept on disk ---- */

/* The cache body of an index: the piece_index itself, the model's settings (an spm_model without
 * its pieces; its strings are in model_strings), then each of the index's arrays from 64-byte
 * boundaries, in the order of INDEX_ARRAYS (X(array, bytes) for each). */
#define INDEX_ARRAYS(ix, n_pieces, X)                                                               \
    X((ix)->mergeable.slots, ((ix)->mergeable.mask + 1) * sizeof(piece_slot))                       \
    X((ix)->mergeable.filter, ((ix)->mergeable.filter_mask + 1) * sizeof(uint64_t))                 \
    X((ix)->reserved.slots, ((ix)->reserved.mask + 1) * sizeof(piece_slot))                         \
    X((ix)->reserved.filter, ((ix)->reserved.filter_mask + 1) * sizeof(uint64_t))                   \
    X((ix)->scores, (n_pieces) * sizeof(float))                                                     \
    X((ix)->types, (n_pieces))                                                                      \
    X((ix)->user_defined, (ix)->n_user_defined * sizeof(int32_t))                                   \
    X((ix)->char_pages, (ix)->n_char_pages * sizeof *(ix)->char_pages)                              \
    X((ix)->pair_bits, (ix)->pair_rows * (ix)->pair_row_words * sizeof(uint64_t))                  \
    X((ix)->piece_starts, ((n_pieces) + 1) * sizeof(uint32_t))                                      \
    X((ix)->piece_text, (ix)->piece_text_bytes)                                                     \
    X((ix)->id_texts, (ix)->n_id_texts * sizeof(uint64_t))                                          \
    X((ix)->model_strings, (ix)->model_strings_bytes)

/* The strings of a model's settings, kept in the index (model_strings) in this order. */
#define MODEL_STRINGS(m, X)                                                                         \
    X((m)->unk_piece) X((m)->bos_piece) X((m)->eos_piece) X((m)->pad_piece) X((m)->unk_surface)      \
    X((m)->normalizer.name) X((m)->denormalizer.name)

#define INDEX_CACHE_KIND "tok-index"

static size_t index_padded(size_t bytes)
{
    return (bytes + 63) & ~(size_t)63;
}

/* What the index of a model depends on besides the model's bytes: this build's code (a rebuild
 * of this file may derive it differently) and layout. */
static uint64_t index_cache_version(void)
{
    static const char build[] = __DATE__ " " __TIME__;
    return XXH3_64bits(build, sizeof build) ^ sizeof(piece_index) ^ (uint64_t)sizeof(char_entry) << 32;
}

static size_t index_body_bytes(const piece_index *ix, size_t n_pieces)
{
    size_t bytes = index_padded(sizeof *ix) + index_padded(sizeof(spm_model));
#define ADD_BYTES(array, n) bytes += index_padded(n);
    INDEX_ARRAYS(ix, n_pieces, ADD_BYTES)
#undef ADD_BYTES
    return bytes;
}

/* The strings of m's settings into ix, one after the other (a Tekken vocabulary leaves some
 * out: "", and its model is not restored from them). */
static void index_model_strings(piece_index *ix, const spm_model *m)
{
    gale_bytes strings = {0};
#define APPEND_STRING(str) gale_bytes_append(&strings, (str) ? (str) : "", (str) ? strlen(str) + 1 : 1);
    MODEL_STRINGS(m, APPEND_STRING)
#undef APPEND_STRING
    ix->model_strings = (char *)strings.v;
    ix->model_strings_bytes = strings.n;
}

/* The next of the NUL-terminated strings from *at to end, copied; NULL when none is left. */
static char *next_string(const char **at, const char *end)
{
    const char *nul = *at < end ? memchr(*at, 0, (size_t)(end - *at)) : NULL;
    if (!nul)
        return NULL;
    char *copy = gale_xstrdup(*at);
    *at = nul + 1;
    return copy;
}

/* Keeps tok's index, its model's settings and the model file's SHA-256 for the model
 * data[0..len) (see file_cache.h). */
static void index_cache_store(gale_tokenizer *tok, const void *data, size_t len, const file_cache_key *key)
{
    if (!key->cached)
        return;
    piece_index *ix = &tok->ix;
    if (!tok->sha256[0])
        gale_sha256_hex(data, len, tok->sha256);
    memcpy(ix->sha256, tok->sha256, sizeof ix->sha256);
    size_t n_pieces = tok->model.n_pieces, total = index_body_bytes(ix, n_pieces);
    uint8_t *body = gale_xcalloc(1, total), *at = body;
    /* the heads without their pointers, so that the same model gives the same body */
    piece_index head;
    memcpy(&head, ix, sizeof head);
#define FORGET_ARRAY(array, n) array = NULL;
    INDEX_ARRAYS(&head, n_pieces, FORGET_ARRAY)
#undef FORGET_ARRAY
    head.cache_body = NULL;
    head.cache_len = 0;
    memcpy(at, &head, sizeof head);
    at += index_padded(sizeof head);
    spm_model model;
    memcpy(&model, &tok->model, sizeof model);
    model.pieces = NULL;
    model.piece_bytes = NULL;
#define FORGET_STRING(str) str = NULL;
    MODEL_STRINGS(&model, FORGET_STRING)
#undef FORGET_STRING
    memcpy(at, &model, sizeof model);
    at += index_padded(sizeof model);
#define COPY_ARRAY(array, n)                                                                        \
    if ((n) > 0)                                                                                    \
        memcpy(at, array, n);                                                                       \
    at += index_padded(n);
    INDEX_ARRAYS(ix, n_pieces, COPY_ARRAY)
#undef COPY_ARRAY
    file_cache_store(INDEX_CACHE_KIND, index_cache_version(), key, body, total);
    free(body);
}

/* tok's index from the cache of the model file of key, and with with_model the model's
 * settings too (tok->model holds no pieces then: what encoding and decoding read of them is in
 * the index); 0 when there is none for it. */
static int index_cache_load(gale_tokenizer *tok, const file_cache_key *key, int with_model)
{
    size_t body_len;
    const uint8_t *body = file_cache_load(INDEX_CACHE_KIND, index_cache_version(), key, &body_len);
    if (!body)
        return 0;
    piece_index ix;
    spm_model model;
    size_t heads = index_padded(sizeof ix) + index_padded(sizeof model);
    if (body_len < heads)
        goto none;
    memcpy(&ix, body, sizeof ix);
    memcpy(&model, body + index_padded(sizeof ix), sizeof model);
    if ((!with_model && model.n_pieces != tok->model.n_pieces) || index_body_bytes(&ix, model.n_pieces) != body_len)
        goto none;
    const uint8_t *at = body + heads; /* read-only, as an index is once made */
#define POINT_ARRAY(array, n)                                                                       \
    array = (n) > 0 ? (void *)at : NULL;                                                            \
    at += index_padded(n);
    INDEX_ARRAYS(&ix, model.n_pieces, POINT_ARRAY)
#undef POINT_ARRAY
    if (with_model) {
        const char *strings = ix.model_strings, *end = strings + ix.model_strings_bytes;
        int complete = 1;
#define RESTORE_STRING(str) complete &= (str = next_string(&strings, end)) != NULL;
        MODEL_STRINGS(&model, RESTORE_STRING)
#undef RESTORE_STRING
        if (!complete) {
            spm_model_free(&model);
            goto none;
        }
        tok->model = model;
    }
    ix.cache_body = body;
    ix.cache_len = body_len;
    tok->ix = ix;
    if (!tok->sha256[0])
        memcpy(tok->sha256, ix.sha256, sizeof tok->sha256);
    return 1;
none:
    file_cache_free(body, body_len);
    return 0;
}

static void index_free(piece_index *ix)
{
    if (ix->cache_body) {
        file_cache_free(ix->cache_body, ix->cache_len);
        return;
    }
#define FREE_ARRAY(array, n) free(array);
    INDEX_ARRAYS(ix, 0, FREE_ARRAY)
#undef FREE_ARRAY
}

/* tok's index of its model (parsed from data[0..len)), made and cached. */
static int index_model(gale_tokenizer *tok, const void *data, size_t len, const file_cache_key *key, gale_error *err)
{
    if (index_pieces(tok, err) < 0)
        return -1;
    if (tok->splitter) {
        tok->ix.split_words = 1;
    } else {
        tok->ix.split_words = words_are_independent(tok);
        index_chars(tok);
    }
    index_model_strings(&tok->ix, &tok->model);
    index_cache_store(tok, data, len, key);
    return 0;
}

/* A SentencePiece model: its settings and index from the cache, without parsing the file, else
 * parsed, checked, indexed and cached. */
static int load_sentencepiece(gale_tokenizer *tok, const void *data, size_t len, const file_cache_key *key,
                              gale_error *err)
{
    if (index_cache_load(tok, key, 1))
        return 0;
    if (spm_model_parse(data, len, tok->name, &tok->model, err) < 0 ||
        check_model_settings(&tok->model, tok->name, err) < 0)
        return -1;
    return index_model(tok, data, len, key, err);
}

/* A Tekken file: its vocabulary, its pre-tokenizer and its index. With both caches valid the
 * vocabulary's pieces are not read at all (131,072 of them: 4 MB of memory to fill), since
 * what encoding and decoding read of them is in the index. */
static int load_tekken(gale_tokenizer *tok, const void *data, size_t len, const file_cache_key *key, gale_error *err)
{
    tekken_file f;
    int cached = tekken_cache_load(key, &f, tok->sha256, 0), indexed = 0, index_tried = cached;
    if (cached) {
        tok->model = f.vocab;
        indexed = index_cache_load(tok, key, 0);
        if (!indexed) { /* indexing needs the pieces */
            spm_model_free(&tok->model);
            tekken_file_free_pattern(&f);
            cached = tekken_cache_load(key, &f, tok->sha256, 1);
        }
    }
    if (!cached && tekken_parse(data, len, tok->name, &f, err) < 0)
        return -1;
    tok->model = f.vocab;
    tok->n_special = f.n_special;
    tok->splitter = tekken_splitter_new(f.pattern, tok->name, err);
    int rc = tok->splitter ? 0 : -1;
    if (rc == 0 && !cached) {
        gale_sha256_hex(data, len, tok->sha256);
        tekken_cache_store(key, &f, tok->sha256);
    }
    tekken_file_free_pattern(&f);
    if (rc == 0 && !indexed && (index_tried || !index_cache_load(tok, key, 0)))
        rc = index_model(tok, data, len, key, err);
    return rc;
}

gale_tokenizer *tokenizer_load_bytes(const void *data, size_t len, const char *name, gale_error *err)
{
    gale_tokenizer *tok = gale_xcalloc(1, sizeof *tok);
    tok->name = gale_xstrdup(name);
    pthread_mutex_init(&tok->sha256_lock, NULL);
    file_cache_key key = file_cache_key_of(data, len); /* one hash of the file for both caches */
    int rc = tekken_is_json(data, len) ? load_tekken(tok, data, len, &key, err)
                                       : load_sentencepiece(tok, data, len, &key, err);
    if (rc < 0) {
        tokenizer_free(tok);
        return NULL;
    }
    if (tok->ix.cut_pairs) {
        index_ascii_joins(tok);
        index_two_byte_pairs(tok);
    }
    tok->bos_id = special_id(tok, tok->model.bos_piece, SPM_PIECE_CONTROL);
    tok->eos_id = special_id(tok, tok->model.eos_piece, SPM_PIECE_CONTROL);
    if (!tok->sha256[0]) {
        tok->file_bytes = gale_xmalloc(len ? len : 1);
        memcpy(tok->file_bytes, data, len);
        tok->file_len = len;
    }
    return tok;
}

gale_tokenizer *tokenizer_load(const char *name_or_path, gale_error *err)
{
    char *path = tokenizer_find(name_or_path, err);
    if (!path)
        return NULL;
    gale_mapped_file file;
    gale_tokenizer *tok = NULL;
    if (gale_map_file(path, &file, err) == 0)
        tok = tokenizer_load_bytes(file.data, file.len, path, err);
    else if (!gale_path_exists(path))
        gale_error_prefix(err, "tokenizer (a .model file or one of %s)", tokenizer_known_names());
    gale_unmap_file(&file);
    free(path);
    return tok;
}

void tokenizer_free(gale_tokenizer *tok)
{
    if (!tok)
        return;
    spm_model_free(&tok->model);
    tekken_splitter_free(tok->splitter);
    index_free(&tok->ix);
    free(tok->name);
    free(tok->file_bytes);
    pthread_mutex_destroy(&tok->sha256_lock);
    free(tok);
}

int tokenizer_vocab_size(const gale_tokenizer *tok) { return (int)tok->model.n_pieces; }
const uint64_t *tokenizer_id_texts(const gale_tokenizer *tok) { return tok->ix.id_texts; }
int tokenizer_bos_id(const gale_tokenizer *tok) { return tok->bos_id; }
int tokenizer_eos_id(const gale_tokenizer *tok) { return tok->eos_id; }
int tokenizer_unk_id(const gale_tokenizer *tok) { return tok->ix.unk_id; }
const char *tokenizer_sha256(const gale_tokenizer *tok)
{
    gale_tokenizer *t = (gale_tokenizer *)tok; /* the hash is computed once, under the lock */
    pthread_mutex_lock(&t->sha256_lock);
    if (!t->sha256[0])
        gale_sha256_hex(t->file_bytes, t->file_len, t->sha256);
    pthread_mutex_unlock(&t->sha256_lock);
    return tok->sha256;
}

/* sentencepiece's PieceToId without the fallback to <unk>; for Tekken, a special token's name
 * is found before the same bytes in the vocabulary, as mistral-common's get_special_token does. */
static int piece_id_n(const gale_tokenizer *tok, const void *piece, size_t n)
{
    if (tok->splitter) {
        int id = piece_table_find(&tok->ix.reserved, &tok->ix, piece, n);
        return id >= 0 ? id : piece_table_find(&tok->ix.mergeable, &tok->ix, piece, n);
    }
    int id = piece_table_find(&tok->ix.mergeable, &tok->ix, piece, n);
    return id >= 0 ? id : piece_table_find(&tok->ix.reserved, &tok->ix, piece, n);
}

const char *const tokenizer_file_names[2] = {"tokenizer.model", "tekken.json"};

const char *tokenizer_file_name(const gale_tokenizer *tok)
{
    return tokenizer_file_names[tok->splitter != NULL];
}

int tokenizer_piece_id(const gale_tokenizer *tok, const char *piece)
{
    return piece_id_n(tok, piece, strlen(piece));
}

const char *tokenizer_id_piece(const gale_tokenizer *tok, int id)
{
    return id >= 0 && (size_t)id < tok->model.n_pieces ? piece_text(&tok->ix, id) : NULL;
}

int tokenizer_is_special(const gale_tokenizer *tok, int id)
{
    return id >= 0 && (size_t)id < tok->model.n_pieces &&
           (tok->ix.types[id] == SPM_PIECE_CONTROL || tok->ix.types[id] == SPM_PIECE_UNKNOWN);
}

/* ---- the word cache ---- */

/* A two-way set-associative cache: each entry is one 64-byte cache line holding the word and
 * then its ids, 16 bits each when the vocabulary allows (Mistral, Llama 2) and 32 otherwise, so
 * a hit reads one line (two for the second way, adjacent). A new word goes into the first way
 * of the set its hash picks, pushing the word there into the second, so that two frequent words
 * of one set do not evict each other. A word whose bytes and ids do not fit in CACHE_DATA_BYTES
 * is not kept (few in prose: long runs of spaces, rare long words; 16-bit ids keep most words of
 * markup and code, which split into many ids). */
#define CACHE_BITS 16 /* 65536 entries, 4 MiB */
/* Tests set this (1 to CACHE_BITS) to make the cache tiny, so that words evict each other all
 * the time. */
#define CACHE_BITS_ENV "GALE_TOKENIZER_CACHE_BITS"
#define HUGE_PAGE_BYTES ((size_t)2 << 20)
#define CACHE_DATA_BYTES 58

typedef struct cache_entry {
    uint32_t tag;    /* the upper half of the word's hash */
    uint8_t len;     /* of the word; 0: empty */
    uint8_t n_ids;
    uint8_t data[CACHE_DATA_BYTES]; /* the word's bytes, then its ids (unaligned) */
} cache_entry;

_Static_assert(sizeof(cache_entry) == 64, "a cache entry is one cache line");

typedef struct word_cache {
    cache_entry *entries; /* inside block; NULL: no cache (out of memory) */
    size_t set_mask; /* the number of two-way sets, less one */
    void *block;
    size_t block_bytes;
} word_cache;

/* The entries are mapped from the kernel, which gives them zeroed (empty), and on 2 MiB pages
 * where it allows (transparent huge pages on madvise): words hit entries all over the cache,
 * and with 4 KiB pages most probes would also miss the TLB. The mapping is one huge page
 * larger than the cache, so that the cache can start on a huge-page boundary inside it. */
static void word_cache_init(word_cache *c)
{
    const char *env = getenv(CACHE_BITS_ENV);
    int bits = env && atoi(env) >= 1 && atoi(env) <= CACHE_BITS ? atoi(env) : CACHE_BITS;
    size_t bytes = sizeof *c->entries << bits;
    c->set_mask = ((size_t)1 << (bits - 1)) - 1;
    c->block_bytes = bytes + HUGE_PAGE_BYTES;
    c->block = mmap(NULL, c->block_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (c->block == MAP_FAILED) {
        c->block = NULL;
        c->entries = NULL;
        return;
    }
    c->entries = (cache_entry *)(((uintptr_t)c->block + HUGE_PAGE_BYTES - 1) & ~(uintptr_t)(HUGE_PAGE_BYTES - 1));
    madvise(c->entries, bytes, MADV_HUGEPAGE);
}

static void word_cache_free(word_cache *c)
{
    if (c->block)
        munmap(c->block, c->block_bytes);
}

/* ---- the encoder ---- */

typedef struct bpe_symbol {
    uint32_t start, len; /* bytes of the word; len 0 once merged into its left neighbour */
    int32_t prev, next;
    uint32_t key;        /* char_key, the id of the piece it is, or frozen_key */
} bpe_symbol;

#define BPE_SCAN_MAX_SYMBOLS 64 /* words up to this many symbols merge by scanning, not a heap
                                 * (the widest scan of bpe_merge_by_scan) */

/* A pair of symbols' place in sentencepiece's merge order, as one integer (pair_rank): the
 * higher merges first. */
typedef uint64_t merge_rank;

typedef struct bpe_pair {
    merge_rank rank;
    int32_t left, right;
    uint32_t len; /* of the merged piece, to tell a stale entry */
    int32_t id;   /* the merged piece */
} bpe_pair;

/* An UNUSED piece made by a merge, and the length of its left part (sentencepiece's
 * rev_merge: the last pair that made it wins). */
typedef struct unused_merge {
    uint32_t start, len, left_len;
} unused_merge;

/* Complete words wait in a queue of up to WORD_QUEUE before they are encoded, their cache
 * entries prefetched as they join it: the cache is megabytes, and without the prefetch the
 * probe of each word that is not among the most frequent ones would wait on memory. */
#define WORD_QUEUE 16

typedef struct queued_word {
    uint32_t start, len; /* in the encoder's word buffer */
    int32_t id;          /* a word of one character that is a piece: its id; else -1 */
    uint64_t hash;       /* bytes_hash of the word when it can be cached */
} queued_word;

/* Words that a cache line cannot hold (runs of box-drawing characters or of spaces, long
 * identifiers, words of many ids) repeat too, and their BPE is the slowest: they go to a
 * second cache, direct-mapped, each entry's ids and bytes on the heap. */
#define LONG_CACHE_BITS 10 /* 1024 entries */
#define LONG_WORD_MAX 1024  /* bytes: the cache holds 5 MiB at most */

typedef struct long_entry {
    uint64_t hash; /* bytes_hash of the word */
    uint32_t len, n_ids;
    uint8_t *data; /* the ids (int32), then the word's bytes; NULL: empty */
} long_entry;

typedef struct pair_memo_slot {
    uint64_t not_key; /* ~(left key | right key << 32): 0, as calloc leaves it, is no pair */
    int32_t id;       /* the piece they make, or -1 */
    uint32_t order;   /* its score_order */
} pair_memo_slot;

struct tokenizer_encoder {
    const gale_tokenizer *tok;
    /* the text in progress */
    gale_bytes pending;  /* raw bytes waiting for enough look-ahead */
    int started;         /* the first unit has been seen (dummy prefix placed) */
    int prev_space;      /* remove_extra_whitespaces: the last unit ended with a space */
    gale_bytes word;     /* normalised bytes of the queued words, then of the current word */
    size_t word_start;   /* where the current word starts in word */
    uint32_t last_char;  /* the current word's last character, NO_CHAR when it is empty */
    uint32_t last_pair;  /* and its pair number (char_entry) */
    int32_t single;      /* the current word is one character that is a piece: its id; else -1 */
    queued_word queue[WORD_QUEUE];
    size_t queue_n;
    int last_was_unk;    /* the last id given out for this text is <unk> */
    tekken_matcher *matcher; /* Tekken: the pre-tokenizer's state */
    gale_bytes text;     /* Tekken: valid UTF-8 not yet cut into words */
    /* scratch of one word's BPE */
    bpe_symbol *symbols;
    size_t symbols_cap;
    /* bpe_merge_by_scan: the rank of the pair each symbol makes with the next one (0: none)
     * and the piece it makes, apart from the symbols so that the scan reads them densely */
    merge_rank scan_rank[BPE_SCAN_MAX_SYMBOLS];
    int32_t scan_piece[BPE_SCAN_MAX_SYMBOLS];
    bpe_pair *heap;
    size_t heap_n, heap_cap;
    unused_merge *unused;
    size_t unused_n, unused_cap;
    gale_ids word_ids;
    word_cache cache; /* entries NULL: no cache */
    long_entry *long_cache; /* NULL: none */
    int cache_id_bytes; /* 2 or 4: the width of the ids in the cache */
    pair_memo_slot *pair_memo; /* direct-mapped; NULL: none */
};

/* The pieces that pairs of symbols make, by the pair's keys: a few thousand pairs make most of
 * the merges of text, and a memo hit costs one multiply and one load of nearby memory. */
#define PAIR_MEMO_BITS 15 /* 32768 slots, 512 KiB */

static uint64_t pair_memo_key(const bpe_symbol *l, const bpe_symbol *r)
{
    return (uint64_t)l->key | (uint64_t)r->key << 32;
}

static pair_memo_slot *pair_memo_slot_of(const tokenizer_encoder *e, uint64_t key)
{
    return &e->pair_memo[(key * 0x9E3779B97F4A7C15ull) >> (64 - PAIR_MEMO_BITS)];
}

/* Score s as an unsigned integer that orders as the scores do: its bits, the negative ones
 * reversed below the positive ones, -0 made +0 first (they are equal scores). */
static uint32_t score_order(float s)
{
    uint32_t u;
    s += 0.0f; /* -0 + 0 is +0 */
    memcpy(&u, &s, sizeof u);
    return u >> 31 ? ~u : u | 0x80000000u;
}

/* The rank of a pair whose left symbol is left and whose piece has score order order:
 * sentencepiece merges the highest score first, and of equal scores the leftmost pair, so
 * the order above and the left symbol's index reversed below. Never 0 (~left has its top bit
 * set), which stands for no pair. */
static merge_rank pair_rank(uint32_t order, int32_t left)
{
    return (merge_rank)order << 32 | (uint32_t)~left;
}

/* The piece that symbols l and r of word w make, and its score_order: the lookup of their
 * concatenation (adjacent symbols are contiguous in the word). */
static int32_t pair_lookup(const gale_tokenizer *tok, const uint8_t *w, const bpe_symbol *l, const bpe_symbol *r,
                           uint32_t *order)
{
    if (l->key == frozen_key(tok) || r->key == frozen_key(tok)) {
        *order = 0;
        return -1;
    }
    int32_t id = piece_table_find(&tok->ix.mergeable, &tok->ix, w + l->start, l->len + r->len);
    *order = id >= 0 ? score_order(tok->ix.scores[id]) : 0;
    return id;
}

/* The memo's miss: slot m takes the pair of key. */
static __attribute__((noinline)) void pair_memo_fill(tokenizer_encoder *e, const uint8_t *w, const bpe_symbol *l,
                                                     const bpe_symbol *r, pair_memo_slot *m, uint64_t key)
{
    m->not_key = ~key;
    m->id = pair_lookup(e->tok, w, l, r, &m->order);
}

/* pair_lookup through the memo; the hit inlined into the merge loops, which make a lookup or
 * two for each merge. */
static inline __attribute__((always_inline)) int32_t encoder_pair_find(tokenizer_encoder *e, const uint8_t *w,
                                                                       const bpe_symbol *l, const bpe_symbol *r,
                                                                       uint32_t *order)
{
    if (!e->pair_memo)
        return pair_lookup(e->tok, w, l, r, order);
    uint64_t key = pair_memo_key(l, r);
    pair_memo_slot *m = pair_memo_slot_of(e, key);
    if (m->not_key != ~key) /* keys are n_pieces + 0x110000 at most, < 2^32 - 1: never ~0 */
        pair_memo_fill(e, w, l, r, m, key);
    *order = m->order;
    return m->id;
}

static int pair_before(const bpe_pair *a, const bpe_pair *b)
{
    return a->rank > b->rank;
}

static void heap_push(tokenizer_encoder *e, bpe_pair p)
{
    if (e->heap_n == e->heap_cap) {
        e->heap_cap = e->heap_cap ? 2 * e->heap_cap : 64;
        e->heap = gale_xrealloc(e->heap, e->heap_cap * sizeof *e->heap);
    }
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pair_before(&p, &e->heap[parent]))
            break;
        e->heap[i] = e->heap[parent];
        i = parent;
    }
    e->heap[i] = p;
}

static bpe_pair heap_pop(tokenizer_encoder *e)
{
    bpe_pair top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && pair_before(&e->heap[c + 1], &e->heap[c]))
            c++;
        if (!pair_before(&e->heap[c], &last))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n)
        e->heap[i] = last;
    return top;
}

/* The piece that merging symbols l and r makes, or -1 (none, or a side that cannot merge):
 * the lookup of sentencepiece's MaybeAddNewSymbolPair, which also notes the pair that made an
 * UNUSED piece, the last one winning. Inlined into its callers: it runs for each pair of each
 * word the cache misses. */
static inline __attribute__((always_inline)) int32_t bpe_pair_piece(tokenizer_encoder *e, const uint8_t *w,
                                                                    int32_t l, int32_t r, uint32_t *order)
{
    const bpe_symbol *sl = &e->symbols[l], *sr = &e->symbols[r];
    int32_t id = encoder_pair_find(e, w, sl, sr, order);
    /* has_unused first: the same for every lookup, where id >= 0 is not */
    if (e->tok->ix.has_unused && id >= 0 && e->tok->ix.types[id] == SPM_PIECE_UNUSED) {
        if (e->unused_n == e->unused_cap) {
            e->unused_cap = e->unused_cap ? 2 * e->unused_cap : 16;
            e->unused = gale_xrealloc(e->unused, e->unused_cap * sizeof *e->unused);
        }
        e->unused[e->unused_n++] = (unused_merge){sl->start, sl->len + sr->len, sl->len};
    }
    return id;
}

/* sentencepiece's MaybeAddNewSymbolPair: queues the merge of l and r when it makes a piece. */
static void bpe_queue_pair(tokenizer_encoder *e, const uint8_t *w, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return;
    uint32_t order;
    int32_t id = bpe_pair_piece(e, w, l, r, &order);
    if (id >= 0)
        heap_push(e, (bpe_pair){pair_rank(order, l), l, r, e->symbols[l].len + e->symbols[r].len, id});
}

/* Symbol l absorbs its right neighbour r into the piece id. */
static void bpe_merge(tokenizer_encoder *e, int32_t l, int32_t r, int32_t id)
{
    bpe_symbol *sl = &e->symbols[l], *sr = &e->symbols[r];
    sl->len += sr->len;
    sl->key = (uint32_t)id;
    sl->next = sr->next;
    if (sr->next >= 0)
        e->symbols[sr->next].prev = l;
    sr->len = 0;
}

/* sentencepiece's merge loop with its agenda (a heap): for words of any length. */
static void bpe_merge_with_heap(tokenizer_encoder *e, const uint8_t *w, size_t count)
{
    e->heap_n = 0;
    for (size_t i = 1; i < count; i++)
        bpe_queue_pair(e, w, (int32_t)i - 1, (int32_t)i);
    while (e->heap_n) {
        bpe_pair top = heap_pop(e);
        const bpe_symbol *l = &e->symbols[top.left], *r = &e->symbols[top.right];
        if (!l->len || !r->len || l->len + r->len != top.len)
            continue; /* stale: one side has changed since the pair was queued */
        bpe_merge(e, top.left, top.right, top.id);
        bpe_queue_pair(e, w, l->prev, top.left);
        bpe_queue_pair(e, w, top.left, l->next);
    }
}

/* Symbol l notes the piece it makes with its right neighbour r, and that pair's rank. */
static inline __attribute__((always_inline)) void scan_set_pair(tokenizer_encoder *e, const uint8_t *w, int32_t l,
                                                                 int32_t r)
{
    uint32_t order;
    int32_t id = bpe_pair_piece(e, w, l, r, &order);
    e->scan_piece[l] = id;
    e->scan_rank[l] = pair_rank(order, l) & -(merge_rank)(id >= 0); /* whether a pair merges is random */
}

/* The highest of ranks r[0..n), n a multiple of 4 known where this is inlined: a fixed number
 * of steps in four independent chains, with no branch that depends on the ranks (which pair
 * wins is random in the words the cache misses) nor on how many symbols there are. */
static inline __attribute__((always_inline)) merge_rank max_rank(const merge_rank *r, size_t n)
{
    merge_rank a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i < n; i += 4) {
        a = r[i] > a ? r[i] : a;
        b = r[i + 1] > b ? r[i + 1] : b;
        c = r[i + 2] > c ? r[i + 2] : c;
        d = r[i + 3] > d ? r[i + 3] : d;
    }
    a = b > a ? b : a;
    c = d > c ? d : c;
    return c > a ? c : a;
}

/* The same merges for a short word: each symbol keeps the rank of the pair it makes with its
 * right neighbour, and each step takes the highest rank. Without the heap's pushes, pops and
 * stale entries this is faster for the few symbols of most words; the lookups, and so the
 * UNUSED bookkeeping, happen in the same order as with the heap. The first pairs' ranks are
 * set as the symbols are made (bpe_encode_word), top the highest of them. */
static void bpe_merge_by_scan(tokenizer_encoder *e, const uint8_t *w, size_t count, merge_rank top)
{
    bpe_symbol *sym = e->symbols;
    merge_rank *rank = e->scan_rank;
    /* ranks past the last pair are 0 (all are between words: each word's scan ends when the
     * highest is 0), and symbols merged away get 0, so the scan runs over the array up to a
     * fixed width rather than along the list */
    size_t width = count <= 8 ? 8 : count <= 16 ? 16 : count <= 32 ? 32 : 64;
    for (; top; top = width == 8    ? max_rank(rank, 8)
                      : width == 16 ? max_rank(rank, 16)
                      : width == 32 ? max_rank(rank, 32)
                                    : max_rank(rank, 64)) {
        int32_t best = (int32_t)~(uint32_t)top, next = sym[best].next;
        rank[next] = 0;
        bpe_merge(e, best, next, e->scan_piece[best]);
        if (sym[best].prev >= 0)
            scan_set_pair(e, w, sym[best].prev, best);
        if (sym[best].next >= 0)
            scan_set_pair(e, w, best, sym[best].next);
        else
            rank[best] = 0;
    }
}

/* gale_ids_push, without its call where there is room (most ids of a word) */
static inline __attribute__((always_inline)) void push_id(gale_ids *out, int32_t id)
{
    if (out->n < out->cap)
        out->v[out->n++] = id;
    else
        gale_ids_push(out, id);
}

/* Appends the ids of one final piece of word w (sentencepiece's resegment and its handling
 * of unknown pieces). */
static void emit_piece(tokenizer_encoder *e, const uint8_t *w, uint32_t start, uint32_t len, gale_ids *out)
{
    const gale_tokenizer *tok = e->tok;
    int id = piece_id_n(tok, w + start, len);
    if (id >= 0 && tok->ix.types[id] == SPM_PIECE_UNUSED) {
        for (size_t i = e->unused_n; i-- > 0;) {
            const unused_merge *u = &e->unused[i];
            if (u->len == len && !memcmp(w + u->start, w + start, len)) {
                uint32_t left = u->left_len;
                emit_piece(e, w, start, left, out);
                emit_piece(e, w, start + left, len - left, out);
                return;
            }
        }
    }
    if (id >= 0 && tok->ix.types[id] != SPM_PIECE_UNKNOWN) {
        gale_ids_push(out, id);
    } else if (tok->model.byte_fallback) {
        for (uint32_t i = 0; i < len; i++)
            gale_ids_push(out, tok->ix.byte_ids[w[start + i]]);
    } else if (!out->n || out->v[out->n - 1] != tok->ix.unk_id) {
        gale_ids_push(out, tok->ix.unk_id); /* sentencepiece merges a run of unknowns into one <unk> */
    }
}

/* sentencepiece's BPE Model::Encode over one word (or the whole text when words are not
 * independent), then the ids of its pieces. */
static void bpe_encode_word(tokenizer_encoder *e, const uint8_t *w, size_t n, gale_ids *out)
{
    const gale_tokenizer *tok = e->tok;
    if (tok->splitter) { /* tiktoken: a word that is a piece is that piece, whatever the merges */
        int32_t id = piece_table_find(&tok->ix.mergeable, &tok->ix, w, n);
        if (id >= 0) {
            gale_ids_push(out, id);
            return;
        }
    }
    if (e->symbols_cap < n) { /* a symbol is a byte at least */
        e->symbols_cap = n < 64 ? 64 : 2 * n;
        e->symbols = gale_xrealloc(e->symbols, e->symbols_cap * sizeof *e->symbols);
    }
    e->unused_n = 0;
    size_t count = 0;
    merge_rank top = 0;
    for (size_t i = 0; i < n; count++) {
        size_t len = 1;
        uint32_t key;
        int32_t ud;
        if (tok->splitter) { /* byte-level BPE: every byte is a symbol and a piece */
            key = (uint32_t)(tok->n_special + w[i]);
        } else if (tok->ix.user_defined_first[w[i]] && (len = user_defined_match(tok, w + i, n - i, &ud))) {
            key = frozen_key(tok); /* its id comes from emit_piece */
        } else if (w[i] < 0x80) {
            len = 1; /* user_defined_match may have left 0 */
            key = char_key(tok, w[i]);
        } else {
            len = lead_byte_len(w[i]);
            if (len > n - i)
                len = n - i;
            key = char_key(tok, utf8_codepoint(w + i, len));
        }
        bpe_symbol *sym = &e->symbols[count];
        *sym = (bpe_symbol){(uint32_t)i, (uint32_t)len, (int32_t)count - 1, (int32_t)count + 1, key};
        if (count && count < BPE_SCAN_MAX_SYMBOLS) { /* the scan's first pairs, in this loop */
            scan_set_pair(e, w, (int32_t)count - 1, (int32_t)count);
            top = e->scan_rank[count - 1] > top ? e->scan_rank[count - 1] : top;
        }
        i += len;
    }
    if (!count)
        return;
    e->symbols[count - 1].next = -1;
    if (count <= BPE_SCAN_MAX_SYMBOLS) {
        bpe_merge_by_scan(e, w, count, top);
    } else {
        e->unused_n = 0; /* the heap makes the first lookups again */
        memset(e->scan_rank, 0, sizeof e->scan_rank);
        bpe_merge_with_heap(e, w, count);
    }
    for (int32_t i = 0; i >= 0; i = e->symbols[i].next) {
        const bpe_symbol *sym = &e->symbols[i];
        if (sym->key < tok->model.n_pieces && tok->ix.types[sym->key] != SPM_PIECE_UNUSED)
            push_id(out, (int32_t)sym->key);
        else
            emit_piece(e, w, sym->start, sym->len, out);
    }
}

/* Appends the ids of one word to out; a word that starts with <unk> right after one that
 * ended with it adds no second <unk> (sentencepiece merges runs of unknowns over the text). */
static void append_word_ids(tokenizer_encoder *e, const int32_t *ids, size_t n, gale_ids *out)
{
    if (n && ids[0] == e->tok->ix.unk_id && e->last_was_unk)
        ids++, n--;
    if (!n)
        return;
    if (out->cap - out->n < n) {
        gale_ids_append(out, ids, n);
    } else { /* a few ids: a loop rather than a call of memcpy */
        for (size_t i = 0; i < n; i++)
            out->v[out->n + i] = ids[i];
        out->n += n;
    }
    e->last_was_unk = ids[n - 1] == e->tok->ix.unk_id;
}

/* The ids of a cache hit, widened to int32. */
static void append_cached_ids(tokenizer_encoder *e, const cache_entry *c, gale_ids *out)
{
    const uint8_t *p = c->data + c->len;
    if (e->cache_id_bytes == 4 || out->cap - out->n < c->n_ids) {
        int32_t ids[CACHE_DATA_BYTES / 2];
        for (size_t i = 0; i < c->n_ids; i++)
            ids[i] = e->cache_id_bytes == 2 ? (int32_t)(uint16_t)(p[2 * i] | p[2 * i + 1] << 8)
                                            : (int32_t)load32(p + 4 * i);
        append_word_ids(e, ids, c->n_ids, out);
        return;
    }
    /* 16-bit ids, widened straight into out: what append_word_ids does with them */
    int32_t unk = e->tok->ix.unk_id, *o = out->v + out->n;
    size_t n = 0;
    for (size_t i = 0; i < c->n_ids; i++) {
        uint16_t id;
        memcpy(&id, p + 2 * i, 2);
        o[n] = id;
        n += !(i == 0 && id == unk && e->last_was_unk);
    }
    out->n += n;
    if (n)
        e->last_was_unk = o[n - 1] == unk;
}

/* Keeps word w and its ids in the first way of set when they fit; 0 when they do not. */
static int cache_store(tokenizer_encoder *e, cache_entry *set, uint32_t tag, const uint8_t *w, size_t n,
                       const gale_ids *ids)
{
    if (n + (size_t)e->cache_id_bytes * ids->n > CACHE_DATA_BYTES)
        return 0;
    if (set[0].len)
        set[1] = set[0];
    cache_entry *c = &set[0];
    c->tag = tag;
    c->len = (uint8_t)n;
    c->n_ids = (uint8_t)ids->n;
    memcpy(c->data, w, n);
    uint8_t *p = c->data + n;
    if (e->cache_id_bytes == 2) {
        for (size_t i = 0; i < ids->n; i++) {
            uint16_t id = (uint16_t)ids->v[i];
            memcpy(p + 2 * i, &id, 2);
        }
    } else {
        memcpy(p, ids->v, 4 * ids->n);
    }
    return 1;
}

static int cacheable(const tokenizer_encoder *e, size_t n)
{
    return e->cache.entries && n < CACHE_DATA_BYTES;
}

/* The entry of the long-word cache for a word of hash h; NULL for a word too long for it. */
static long_entry *long_slot(const tokenizer_encoder *e, size_t n, uint64_t h)
{
    return e->long_cache && n <= LONG_WORD_MAX ? &e->long_cache[h >> (64 - LONG_CACHE_BITS)] : NULL;
}

static void long_store(long_entry *l, uint64_t h, const uint8_t *w, size_t n, const gale_ids *ids)
{
    l->data = gale_xrealloc(l->data, ids->n * sizeof *ids->v + n);
    memcpy(l->data, ids->v, ids->n * sizeof *ids->v);
    memcpy(l->data + ids->n * sizeof *ids->v, w, n);
    *l = (long_entry){h, (uint32_t)n, (uint32_t)ids->n, l->data};
}

/* The cache set (two entries) of a word of hash h. */
static cache_entry *cache_set(const tokenizer_encoder *e, uint64_t h)
{
    return &e->cache.entries[2 * (h & e->cache.set_mask)];
}

static int cache_entry_holds(const cache_entry *c, uint32_t tag, const uint8_t *w, size_t n)
{
    return c->len == n && c->tag == tag && bytes_equal(c->data, w, n);
}

/* Encodes word w whose bytes_hash is h (when hashed: a word of LONG_WORD_MAX bytes at most). */
static void encode_word(tokenizer_encoder *e, const uint8_t *w, size_t n, uint64_t h, gale_ids *out)
{
    cache_entry *set = NULL;
    uint32_t tag = 0;
    if (cacheable(e, n)) {
        tag = (uint32_t)(h >> 32);
        set = cache_set(e, h);
        for (int way = 0; way < 2; way++)
            if (cache_entry_holds(&set[way], tag, w, n)) {
                append_cached_ids(e, &set[way], out);
                return;
            }
    }
    long_entry *l = long_slot(e, n, h);
    if (l && l->hash == h && l->len == n && !memcmp(l->data + l->n_ids * sizeof(int32_t), w, n)) {
        append_word_ids(e, (const int32_t *)(const void *)l->data, l->n_ids, out);
        return;
    }
    e->word_ids.n = 0;
    bpe_encode_word(e, w, n, &e->word_ids);
    append_word_ids(e, e->word_ids.v, e->word_ids.n, out);
    if ((!set || !cache_store(e, set, tag, w, n, &e->word_ids)) && l)
        long_store(l, h, w, n, &e->word_ids);
}

static size_t current_word_len(const tokenizer_encoder *e)
{
    return e->word.n - e->word_start;
}

/* Encodes the queued words, in order, and moves the current word to the front. */
static void encode_queue(tokenizer_encoder *e, gale_ids *out)
{
    for (size_t i = 0; i < e->queue_n; i++) {
        queued_word *q = &e->queue[i];
        if (q->id >= 0 && out->n < out->cap) { /* a NORMAL or USER_DEFINED piece, not <unk> */
            out->v[out->n++] = q->id;
            e->last_was_unk = 0;
        } else if (q->id >= 0)
            append_word_ids(e, &q->id, 1, out);
        else
            encode_word(e, e->word.v + q->start, q->len, q->hash, out);
    }
    e->queue_n = 0;
    size_t current = current_word_len(e);
    if (current)
        memmove(e->word.v, e->word.v + e->word_start, current);
    e->word.n = current;
    e->word_start = 0;
}

/* Ends the current word: it joins the queue. Inlined where most words end (cut_run), whose
 * registers are already saved: a call's saves and restores were a third of its cost. */
static inline __attribute__((always_inline)) void end_word(tokenizer_encoder *e, gale_ids *out)
{
    size_t n = current_word_len(e);
    if (n) {
        queued_word *q = &e->queue[e->queue_n++];
        *q = (queued_word){(uint32_t)e->word_start, (uint32_t)n, e->single, 0};
        if (e->single < 0 && cacheable(e, n)) {
            q->hash = bytes_hash(e->word.v + e->word_start, n);
            cache_entry *set = cache_set(e, q->hash);
            __builtin_prefetch(&set[0]);
            __builtin_prefetch(&set[1]);
        } else if (e->single < 0 && n <= LONG_WORD_MAX) {
            q->hash = bytes_hash(e->word.v + e->word_start, n);
        }
        e->word_start = e->word.n;
        if (e->queue_n == WORD_QUEUE)
            encode_queue(e, out);
    }
    e->last_char = NO_CHAR;
    e->single = -1;
}

static void flush_word(tokenizer_encoder *e, gale_ids *out)
{
    end_word(e, out);
}

/* A word of one character that is a piece, id, after the current word (which is empty). */
static void queue_single(tokenizer_encoder *e, int32_t id, gale_ids *out)
{
    if (!e->queue_n && out->n < out->cap) { /* nothing to wait for: the id itself */
        out->v[out->n++] = id;
        e->last_was_unk = 0;
        return;
    }
    e->queue[e->queue_n++].id = id; /* all encode_queue reads of it */
    if (e->queue_n == WORD_QUEUE)
        encode_queue(e, out);
}

/* Ends the current word in front of character c (of entry ce) where no merge can join c to
 * it: where the pair is in no mergeable piece (cut_pairs), or else at "▁" after another
 * character. Then c is the word's last character. */
static void join_or_cut(tokenizer_encoder *e, uint32_t c, const char_entry *ce, gale_ids *out)
{
    const gale_tokenizer *tok = e->tok;
    if (e->last_char != NO_CHAR &&
        (tok->ix.cut_pairs ? !pair_joins(tok, e->last_pair, ce->pair)
                        : tok->ix.split_words && c == WS_CP && e->last_char != WS_CP))
        flush_word(e, out);
    e->single = e->last_char == NO_CHAR && ce->direct ? (int32_t)ce->key : -1;
    e->last_char = c;
    e->last_pair = ce->pair;
}

/* Appends n bytes to the current word: a character or a few, so a loop rather than a call of
 * memcpy, and gale_bytes_reserve only when the buffer grows. */
static void word_append(tokenizer_encoder *e, const uint8_t *s, size_t n)
{
    if (e->word.cap - e->word.n < n)
        gale_bytes_reserve(&e->word, n);
    uint8_t *d = e->word.v + e->word.n;
    for (size_t i = 0; i < n; i++)
        d[i] = s[i];
    e->word.n += n;
}

/* Appends "▁", a space as the word holds it: two stores of a constant rather than the loop. */
static void word_append_space(tokenizer_encoder *e)
{
    if (e->word.cap - e->word.n < WS_LEN)
        gale_bytes_reserve(&e->word, WS_LEN);
    memcpy(e->word.v + e->word.n, WS, WS_LEN);
    e->word.n += WS_LEN;
}

/* Appends s[from..to) of the n bytes of s to the current word: most words of cut_run in one
 * copy of 16 bytes, which may read and write past the word where s and the buffer have room. */
static void run_append(tokenizer_encoder *e, const uint8_t *s, size_t from, size_t to, size_t n)
{
    if (to - from <= 16 && n - from >= 16 && e->word.cap - e->word.n >= 16) {
        memcpy(e->word.v + e->word.n, s + from, 16);
        e->word.n += to - from;
    } else {
        word_append(e, s + from, to - from);
    }
}

/* The character of a normalised unit that starts at u (a space as "▁"). */
static uint32_t unit_char(const uint8_t *u, size_t n)
{
    return u[0] == ' ' ? WS_CP : utf8_codepoint(u, utf8_char_len(u, n));
}

/* Appends one normalised unit (spaces not yet escaped) to the current word, first ending the
 * word where the unit cannot join it (join_or_cut). A unit of several characters (a
 * user-defined piece) is no word of one character. */
static void push_unit(tokenizer_encoder *e, const uint8_t *u, size_t n, gale_ids *out)
{
    uint32_t first = unit_char(u, n);
    join_or_cut(e, first, char_entry_of(e->tok, first), out);
    size_t last = n - 1;
    while (last > 0 && is_trail(u[last]))
        last--;
    if (last > 0) {
        uint32_t c = unit_char(u + last, n - last);
        e->last_char = c;
        e->last_pair = char_entry_of(e->tok, c)->pair;
        e->single = -1;
    }
    if (!memchr(u, ' ', n))
        word_append(e, u, n);
    else
        for (size_t i = 0; i < n; i++) {
            if (u[i] == ' ')
                word_append_space(e);
            else
                word_append(e, u + i, 1);
        }
}

/* sentencepiece's Normalizer::Normalize, one unit at a time (identity normaliser). */
static void normalize_unit(tokenizer_encoder *e, const uint8_t *u, size_t n, gale_ids *out)
{
    const spm_normalizer_spec *spec = &e->tok->model.normalizer;
    if (!e->started) {
        if (spec->remove_extra_whitespaces && n == 1 && u[0] == ' ')
            return; /* leading spaces */
        e->started = 1;
        if (spec->add_dummy_prefix)
            push_unit(e, (const uint8_t *)" ", 1, out);
        e->prev_space = spec->remove_extra_whitespaces;
    }
    if (e->prev_space)
        while (n && u[0] == ' ')
            u++, n--;
    if (n) {
        push_unit(e, u, n, out);
        e->prev_space = u[n - 1] == ' ';
    }
    if (!spec->remove_extra_whitespaces)
        e->prev_space = 0;
}

static int plain_byte(const gale_tokenizer *tok, uint8_t b)
{
    return b < 0x80 && b != ' ' && !tok->ix.user_defined_first[b];
}

/* The units of s[i..stop) up to the first that is not one character that normalises to
 * itself ("▁" for a space, with remove_extra_whitespaces off) outside user-defined pieces,
 * appended to the words in one pass: what normalize_unit and join_or_cut do with each, the
 * word cut between two characters that no mergeable piece holds side by side. For models with
 * cut_pairs; returns where it stops. */
static size_t cut_run(tokenizer_encoder *e, const uint8_t *s, size_t i, size_t stop, size_t n, gale_ids *out)
{
    const gale_tokenizer *tok = e->tok;
    const int spaces = !tok->model.normalizer.remove_extra_whitespaces;
    const char_entry *ascii = char_entry_of(tok, 0), *ws = char_entry_of(tok, WS_CP);
    uint32_t last = e->last_pair, c = e->last_char;
    int32_t single = e->single;
    int empty = c == NO_CHAR; /* the current word */
    size_t j = i, run = i;   /* s[run..j) is yet to be appended to the current word */
    while (j < stop) {
        uint8_t b = s[j];
        const char_entry *ce;
        size_t len = 1;
        if (tok->ix.user_defined_first[b] && user_defined_may_start(tok, s + j, n - j))
            break;
        if (b == ' ') {
            if (!spaces)
                break;
            c = WS_CP, ce = ws;
        } else if (b < 0x80) {
            c = b, ce = &ascii[b];
        } else {
            if (!(len = utf8_char_decode(s + j, n - j, &c)))
                break;
            ce = char_entry_of(tok, c);
        }
        if (!empty && !pair_joins(tok, last, ce->pair)) {
            if (single >= 0 && !current_word_len(e)) {
                /* a word of one character that is a piece, all in s[run..j): its id joins
                 * the queue, without its bytes (most words of base64) */
                queue_single(e, single, out);
                e->last_char = NO_CHAR;
            } else {
                run_append(e, s, run, j, n);
                e->single = single;
                end_word(e, out);
            }
            run = j;
            empty = 1;
        }
        if (!ce->pair && ce->direct) {
            /* a character in no pair that is a piece (most CJK): a word of its own (the word
             * before it has just ended), whose id joins the queue without its bytes */
            queue_single(e, (int32_t)ce->key, out);
            j += len;
            while (j + 2 < stop && (s[j] & 0xF0) == 0xE0 && is_trail(s[j + 1]) && is_trail(s[j + 2]) &&
                   !tok->ix.user_defined_first[s[j]]) {
                /* the three-byte characters after it that are such words too (runs of CJK);
                 * an overlong one is left to utf8_char_decode, a surrogate is no piece */
                uint32_t c3 = (uint32_t)(s[j] & 0x0F) << 12 | (uint32_t)(s[j + 1] & 0x3F) << 6 | (s[j + 2] & 0x3F);
                const char_entry *ce3 = char_entry_of(tok, c3);
                if (c3 < 0x800 || ce3->pair || !ce3->direct)
                    break;
                queue_single(e, (int32_t)ce3->key, out);
                j += 3;
            }
            run = j;
            continue;
        }
        single = empty && ce->direct ? (int32_t)ce->key : -1;
        empty = 0;
        last = ce->pair;
        if (b == ' ') {
            if (j > run) /* most spaces start a word: nothing before them to append */
                run_append(e, s, run, j, n);
            word_append_space(e);
            run = j + 1;
        }
        j += len;
        if (b < 0x80 && b != ' ' && j < stop && s[j] < 0x80 && ascii_joins(tok, s[j - 1], s[j])) {
            /* the ASCII bytes after it that join the word one by one, told by one bit each */
            do
                j++;
            while (j < stop && s[j] < 0x80 && ascii_joins(tok, s[j - 1], s[j]));
            c = s[j - 1];
            last = ascii[c].pair;
            single = -1;
        }
        if (len == 2 || b == ' ') {
            /* the two-byte characters after it that join the word (most letters of Cyrillic);
             * two bytes that are no such character have pair number 0, which joins nothing,
             * and are left to utf8_char_decode */
            size_t from = j;
            while (j + 1 < stop && (s[j] & 0xE0) == 0xC0) {
                uint32_t pair = tok->two_byte_pair[TWO_BYTE_INDEX(s + j)];
                if (!pair_joins(tok, last, pair))
                    break;
                last = pair;
                j += 2;
            }
            if (j > from) {
                c = (uint32_t)(s[j - 2] & 0x1F) << 6 | (s[j - 1] & 0x3F);
                single = -1;
            }
        }
    }
    if (j > i) {
        run_append(e, s, run, j, n);
        e->single = empty ? -1 : single;
        e->last_char = empty ? NO_CHAR : c;
        e->last_pair = last;
        e->prev_space = 0;
    }
    return j;
}

/* Normalises the units of s that are complete: all of them when final, else those with
 * enough bytes after them that the next chunk cannot change them. Returns the bytes used. */
static size_t normalize_run(tokenizer_encoder *e, const uint8_t *s, size_t n, int final, gale_ids *out)
{
    const gale_tokenizer *tok = e->tok;
    size_t lookahead = tok->ix.max_user_defined_len > 4 ? tok->ix.max_user_defined_len : 4;
    const char_entry *ascii = char_entry_of(tok, 0), *ws = char_entry_of(tok, WS_CP);
    size_t i = 0;
    while (i < n && (final || n - i >= lookahead)) {
        if (e->started && tok->ix.cut_pairs) {
            size_t j = cut_run(e, s, i, final ? n : n - lookahead + 1, n, out);
            if (j > i) {
                i = j;
                continue;
            }
        }
        if (e->started && s[i] == ' ' && !tok->model.normalizer.remove_extra_whitespaces) {
            /* a space: what normalize_unit and push_unit do with it, without the calls */
            join_or_cut(e, WS_CP, ws, out);
            word_append_space(e);
            i++;
            continue;
        }
        if (e->started && plain_byte(tok, s[i])) {
            /* a run of ASCII bytes other than space that start no user-defined piece: each is a
             * unit of its own that normalize_unit would append unchanged */
            size_t j = i, stop = final ? n : n - lookahead + 1;
            while (++j < stop && plain_byte(tok, s[j]))
                ;
            join_or_cut(e, s[i], &ascii[s[i]], out);
            if (j - i > 1) {
                e->single = -1;
                e->last_char = s[j - 1];
                e->last_pair = ascii[s[j - 1]].pair;
            }
            word_append(e, s + i, j - i);
            e->prev_space = 0;
            i = j;
            continue;
        }
        size_t len;
        if (e->started && s[i] >= 0x80 && !tok->ix.user_defined_first[s[i]] && (len = utf8_char_len(s + i, n - i))) {
            /* a valid character that starts no user-defined piece: what normalize_unit and
             * push_unit do with it, without the calls */
            uint32_t c = utf8_codepoint(s + i, len);
            join_or_cut(e, c, char_entry_of(tok, c), out);
            word_append(e, s + i, len);
            e->prev_space = 0;
            i += len;
            continue;
        }
        int32_t ud;
        len = user_defined_match(tok, s + i, n - i, &ud);
        if (len) {
            normalize_unit(e, s + i, len, out);
        } else if ((len = utf8_char_len(s + i, n - i))) {
            normalize_unit(e, s + i, len, out);
        } else {
            len = 1; /* one byte that starts no character: U+FFFD, as sentencepiece does */
            normalize_unit(e, (const uint8_t *)REPLACEMENT_CHAR, 3, out);
        }
        i += len;
    }
    return i;
}

static void encoder_reset(tokenizer_encoder *e)
{
    e->pending.n = 0;
    e->text.n = 0;
    e->started = 0;
    e->prev_space = 0;
    e->word.n = 0;
    e->word_start = 0;
    e->queue_n = 0;
    e->last_char = NO_CHAR;
    e->single = -1;
    e->last_was_unk = 0;
}

/* Tekken: s (the pending bytes or a new text) made valid UTF-8, then each word the regex
 * finds in it encoded; unless final, what more text could change waits. Returns the bytes of s
 * used. */
static size_t tekken_run(tokenizer_encoder *e, const uint8_t *s, size_t n, int final, gale_ids *out)
{
    size_t used = tekken_utf8_repair(s, n, final, &e->text);
    size_t done = 0, start, end;
    int rc;
    while ((rc = tekken_next_word(e->matcher, e->text.v, e->text.n, done, final, &start, &end)) > 0) {
        word_append(e, e->text.v + start, end - start);
        flush_word(e, out);
        done = end;
    }
    if (rc == 0)
        done = e->text.n; /* no word in the rest: tiktoken skips it */
    if (done) {
        memmove(e->text.v, e->text.v + done, e->text.n - done);
        e->text.n -= done;
    }
    return used;
}

void tokenizer_encoder_feed(tokenizer_encoder *e, const char *chunk, size_t len, gale_ids *out)
{
    if (!len)
        return;
    if (e->matcher) {
        gale_bytes_append(&e->pending, chunk, len);
        size_t used = tekken_run(e, e->pending.v, e->pending.n, 0, out);
        if (used) {
            memmove(e->pending.v, e->pending.v + used, e->pending.n - used);
            e->pending.n -= used;
        }
        return;
    }
    gale_bytes_append(&e->pending, chunk, len);
    size_t used = normalize_run(e, e->pending.v, e->pending.n, 0, out);
    memmove(e->pending.v, e->pending.v + used, e->pending.n - used);
    e->pending.n -= used;
}

void tokenizer_encoder_finish(tokenizer_encoder *e, gale_ids *out)
{
    if (e->matcher) {
        tekken_run(e, e->pending.v, e->pending.n, 1, out);
        encode_queue(e, out);
        encoder_reset(e);
        return;
    }
    if (e->pending.n)
        normalize_run(e, e->pending.v, e->pending.n, 1, out);
    if (e->tok->model.normalizer.remove_extra_whitespaces)
        while (current_word_len(e) >= WS_LEN && !memcmp(e->word.v + e->word.n - WS_LEN, WS, WS_LEN))
            e->word.n -= WS_LEN; /* trailing whitespace */
    flush_word(e, out);
    encode_queue(e, out);
    encoder_reset(e);
}

void tokenizer_encoder_encode(tokenizer_encoder *e, const char *text, size_t len, gale_ids *out)
{
    if (e->pending.n || e->started || e->text.n)
        tokenizer_encoder_finish(e, out);
    if (e->matcher) {
        tekken_run(e, (const uint8_t *)text, len, 1, out);
        encode_queue(e, out);
        encoder_reset(e);
        return;
    }
    normalize_run(e, (const uint8_t *)text, len, 1, out);
    tokenizer_encoder_finish(e, out);
}

static void encoder_init(tokenizer_encoder *e, const gale_tokenizer *tok)
{
    memset(e, 0, sizeof *e);
    e->tok = tok;
    e->last_char = NO_CHAR;
    e->single = -1;
    if (tok->splitter)
        e->matcher = tekken_matcher_new(tok->splitter);
}

static void encoder_release(tokenizer_encoder *e)
{
    gale_bytes_free(&e->pending);
    gale_bytes_free(&e->text);
    tekken_matcher_free(e->matcher);
    gale_bytes_free(&e->word);
    free(e->symbols);
    free(e->heap);
    free(e->unused);
    gale_ids_free(&e->word_ids);
    word_cache_free(&e->cache);
    if (e->long_cache)
        for (size_t i = 0; i < (size_t)1 << LONG_CACHE_BITS; i++)
            free(e->long_cache[i].data);
    free(e->long_cache);
    free(e->pair_memo);
}

tokenizer_encoder *tokenizer_encoder_new(const gale_tokenizer *tok)
{
    tokenizer_encoder *e = gale_xmalloc(sizeof *e);
    encoder_init(e, tok);
    word_cache_init(&e->cache);
    e->long_cache = gale_xcalloc((size_t)1 << LONG_CACHE_BITS, sizeof *e->long_cache);
    e->cache_id_bytes = tok->model.n_pieces <= 65536 ? 2 : 4;
    /* zeroed pages that the kernel maps as the memo first touches them: no start-up cost for
     * the slots a short text never uses */
    e->pair_memo = gale_xcalloc((size_t)1 << PAIR_MEMO_BITS, sizeof *e->pair_memo);
    return e;
}

void tokenizer_encoder_free(tokenizer_encoder *e)
{
    if (!e)
        return;
    encoder_release(e);
    free(e);
}

void tokenizer_encode(const gale_tokenizer *tok, const char *text, size_t len, gale_ids *out)
{
    tokenizer_encoder e;
    encoder_init(&e, tok);
    tokenizer_encoder_encode(&e, text, len, out);
    encoder_release(&e);
}

/* ---- decoding ---- */

/* A run of byte pieces becomes the UTF-8 it spells; each byte that starts no valid character
 * becomes U+FFFD (sentencepiece's ProcessBytePieces). */
static void decode_bytes(const gale_bytes *bytes, gale_bytes *out)
{
    for (size_t i = 0; i < bytes->n;) {
        size_t len = utf8_char_len(bytes->v + i, bytes->n - i);
        if (len) {
            gale_bytes_append(out, bytes->v + i, len);
            i += len;
        } else {
            gale_bytes_append(out, REPLACEMENT_CHAR, 3);
            i++;
        }
    }
}

/* Appends a piece with "▁" turned back into spaces. */
static void append_unescaped(gale_bytes *out, const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        if (is_ws_at(s + i, n - i)) {
            gale_bytes_push(out, ' ');
            i += WS_LEN;
        } else {
            gale_bytes_push(out, s[i++]);
        }
    }
}

/* mistral-common's Tekkenizer.decode: the bytes of the vocabulary's ids, each run between
 * special tokens (which it leaves out) decoded as UTF-8 on its own, ill-formed bytes as U+FFFD. */
static void tekken_decode(const gale_tokenizer *tok, const int32_t *ids, size_t n, gale_bytes *out)
{
    gale_bytes bytes = {0};
    for (size_t i = 0; i <= n; i++) {
        if (i < n && ids[i] >= (int32_t)tok->n_special && (size_t)ids[i] < tok->model.n_pieces) {
            gale_bytes_append(&bytes, piece_text(&tok->ix, ids[i]), piece_len(&tok->ix, ids[i]));
        } else {
            tekken_utf8_repair(bytes.v, bytes.n, 1, out);
            bytes.n = 0;
        }
    }
    gale_bytes_free(&bytes);
}

void tokenizer_decode(const gale_tokenizer *tok, const int32_t *ids, size_t n, gale_bytes *out)
{
    if (tok->splitter) {
        tekken_decode(tok, ids, n, out);
        return;
    }
    const spm_model *m = &tok->model;
    const size_t text_start = out->n;
    gale_bytes bytes = {0};
    int expect_bos_ws = 1, bos_ws_seen = 0;
    for (size_t i = 0; i < n; i++) {
        int id = ids[i] >= 0 && (size_t)ids[i] < m->n_pieces ? ids[i] : -1;
        /* sentencepiece decodes IdToPiece then PieceToId, which matters for a piece string that
         * is both mergeable and reserved */
        if (id >= 0)
            id = piece_id_n(tok, piece_text(&tok->ix, id), piece_len(&tok->ix, id));
        if (id >= 0 && tok->ix.types[id] == SPM_PIECE_BYTE) {
            gale_bytes_push(&bytes, (uint8_t)byte_piece_value(piece_text(&tok->ix, id), piece_len(&tok->ix, id)));
            continue;
        }
        decode_bytes(&bytes, out);
        bytes.n = 0;
        if (bos_ws_seen || out->n > text_start)
            expect_bos_ws = 0;
        bos_ws_seen = 0;
        if (id < 0 || tok->ix.types[id] == SPM_PIECE_UNKNOWN) {
            gale_bytes_append(out, m->unk_surface, strlen(m->unk_surface));
        } else if (tok->ix.types[id] != SPM_PIECE_CONTROL) {
            const uint8_t *s = (const uint8_t *)piece_text(&tok->ix, id);
            size_t len = piece_len(&tok->ix, id);
            if (expect_bos_ws && (m->normalizer.add_dummy_prefix || m->normalizer.remove_extra_whitespaces) &&
                is_ws_at(s, len)) {
                s += WS_LEN;
                len -= WS_LEN;
                bos_ws_seen = !m->normalizer.remove_extra_whitespaces;
            }
            append_unescaped(out, s, len);
        }
    }
    decode_bytes(&bytes, out);
    gale_bytes_free(&bytes);
}
