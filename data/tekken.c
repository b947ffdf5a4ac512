/* tekken: Tekken JSON files into the tokenizer's vocabulary, and the PCRE2 pre-tokenizer. */
#include "data/tekken.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <nettle/base64.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tekken_is_json(const void *data, size_t len)
{
    const uint8_t *s = data;
    size_t i = 0;
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i < len && s[i] == '{';
}

/* ---- the file ---- */

/* mistral-common's Tekkenizer.DEPRECATED_SPECIAL_TOKENS: the special tokens of a file of
 * version v7 or older that lists none. */
static const char *const deprecated_special[] = {
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
};

#define N_DEPRECATED_SPECIAL (sizeof deprecated_special / sizeof *deprecated_special)

static int json_size(json_t *obj, const char *key, size_t *v, const char *name, gale_error *err)
{
    json_t *x = json_object_get(obj, key);
    if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > INT32_MAX)
        return gale_fail(err, "%s: config.%s must be an integer from 0 to %d", name, key, INT32_MAX);
    *v = (size_t)json_integer_value(x);
    return 0;
}

/* The bytes of a base64 string (standard alphabet, padded), decoded by Nettle, into out (room
 * for 3/4 of its length); the decoded length, or -1 when it is not base64. */
static long base64_decode(const char *s, size_t n, uint8_t *out)
{
    if (n % 4 || n > INT32_MAX)
        return -1;
    struct base64_decode_ctx ctx;
    size_t got = 0;
    base64_decode_init(&ctx);
    if (!base64_decode_update(&ctx, &got, out, n, s) || !base64_decode_final(&ctx))
        return -1;
    return (long)got;
}

/* The special tokens: the file's list (rank = position), or the deprecated ones of old files,
 * then "<SPECIAL_i>" up to n_special. Their strings go into piece_bytes from *used. */
static int parse_special(json_t *root, tekken_file *f, const char *name, gale_error *err)
{
    spm_model *m = &f->vocab;
    json_t *list = json_object_get(root, "special_tokens");
    size_t n_listed;
    if (list && !json_is_null(list)) {
        if (!json_is_array(list))
            return gale_fail(err, "%s: special_tokens must be an array", name);
        n_listed = json_array_size(list);
    } else {
        if (f->version > 7)
            return gale_fail(err, "%s: a Tekken file of version v%d must list its special_tokens", name, f->version);
        n_listed = N_DEPRECATED_SPECIAL;
    }
    if (n_listed > f->n_special)
        return gale_fail(err, "%s: %zu special tokens but config.default_num_special_tokens is %zu", name, n_listed,
                         f->n_special);
    for (size_t i = 0; i < f->n_special; i++) {
        char filler[32];
        const char *s;
        if (i >= n_listed) {
            snprintf(filler, sizeof filler, "<SPECIAL_%zu>", i);
            s = filler;
        } else if (list && !json_is_null(list)) {
            json_t *t = json_array_get(list, i), *rank = json_object_get(t, "rank");
            s = json_string_value(json_object_get(t, "token_str"));
            if (!s || !json_is_integer(rank))
                return gale_fail(err, "%s: special_tokens[%zu] needs an integer rank and a token_str", name, i);
            if (json_integer_value(rank) != (json_int_t)i)
                return gale_fail(err, "%s: special_tokens[%zu] has rank %lld; gale needs the list in rank order", name,
                                 i, (long long)json_integer_value(rank));
        } else {
            s = deprecated_special[i];
        }
        size_t len = strlen(s);
        if (!len)
            return gale_fail(err, "%s: special token %zu is empty", name, i);
        m->piece_bytes = gale_xrealloc(m->piece_bytes, m->piece_bytes_used + len + 1);
        memcpy(m->piece_bytes + m->piece_bytes_used, s, len + 1);
        /* "<unk>" is the tokenizer's unknown piece, which it only ever decodes */
        m->pieces[i] = (spm_piece){NULL, len, 0, strcmp(s, "<unk>") ? SPM_PIECE_CONTROL : SPM_PIECE_UNKNOWN};
        m->pieces[i].piece = (char *)(uintptr_t)m->piece_bytes_used; /* an offset until the block stops moving */
        m->piece_bytes_used += len + 1;
    }
    return 0;
}

/* The vocabulary, its first n_vocab entries, after the special tokens. */
static int parse_vocab(json_t *root, tekken_file *f, size_t n_vocab, const char *name, gale_error *err)
{
    spm_model *m = &f->vocab;
    json_t *vocab = json_object_get(root, "vocab");
    if (!json_is_array(vocab))
        return gale_fail(err, "%s: vocab must be an array", name);
    if (json_array_size(vocab) < n_vocab)
        return gale_fail(err, "%s: config.default_vocab_size needs %zu vocab entries but the file has %zu", name,
                         n_vocab, json_array_size(vocab));
    size_t bytes = m->piece_bytes_used;
    for (size_t r = 0; r < n_vocab; r++) {
        const char *b64 = json_string_value(json_object_get(json_array_get(vocab, r), "token_bytes"));
        if (!b64)
            return gale_fail(err, "%s: vocab[%zu].token_bytes must be a string", name, r);
        bytes += strlen(b64) / 4 * 3 + 1;
    }
    m->piece_bytes = gale_xrealloc(m->piece_bytes, bytes);
    for (size_t r = 0; r < n_vocab; r++) {
        json_t *t = json_array_get(vocab, r), *rank = json_object_get(t, "rank");
        const char *b64 = json_string_value(json_object_get(t, "token_bytes"));
        if (!json_is_integer(rank) || json_integer_value(rank) != (json_int_t)r)
            return gale_fail(err, "%s: vocab[%zu].rank must be %zu", name, r, r);
        uint8_t *p = (uint8_t *)m->piece_bytes + m->piece_bytes_used;
        long len = base64_decode(b64, strlen(b64), p);
        if (len <= 0)
            return gale_fail(err, "%s: vocab[%zu].token_bytes is not base64 of at least one byte", name, r);
        if (r < 256 && (len != 1 || p[0] != r))
            return gale_fail(err, "%s: vocab[%zu] must be the single byte 0x%02zX", name, r, r);
        p[len] = 0;
        spm_piece *piece = &m->pieces[f->n_special + r];
        *piece = (spm_piece){(char *)(uintptr_t)m->piece_bytes_used, (size_t)len, -(float)r, SPM_PIECE_NORMAL};
        m->piece_bytes_used += (size_t)len + 1;
    }
    return 0;
}

static int parse_root(json_t *root, tekken_file *f, const char *name, gale_error *err)
{
    json_t *config = json_object_get(root, "config");
    if (!json_is_object(config))
        return gale_fail(err, "%s: not a Tekken file: no config object", name);
    const char *pattern = json_string_value(json_object_get(config, "pattern"));
    const char *version = json_string_value(json_object_get(config, "version"));
    if (!pattern)
        return gale_fail(err, "%s: config.pattern must be a string", name);
    if (!version || version[0] != 'v' || version[1] < '1' || version[1] > '9')
        return gale_fail(err, "%s: config.version must be a string \"vN\"", name);
    f->version = atoi(version + 1);
    size_t vocab_size = 0; /* set by json_size where it succeeds; GCC does not see that */
    if (json_size(config, "default_vocab_size", &vocab_size, name, err) < 0 ||
        json_size(config, "default_num_special_tokens", &f->n_special, name, err) < 0)
        return -1;
    if (vocab_size <= f->n_special + 256)
        return gale_fail(err, "%s: config.default_vocab_size %zu leaves no room for the 256 bytes after %zu special "
                         "tokens", name, vocab_size, f->n_special);
    spm_model *m = &f->vocab;
    m->n_pieces = vocab_size;
    m->pieces = gale_xcalloc(vocab_size, sizeof *m->pieces);
    if (parse_special(root, f, name, err) < 0 || parse_vocab(root, f, vocab_size - f->n_special, name, err) < 0)
        return -1;
    for (size_t i = 0; i < m->n_pieces; i++)
        m->pieces[i].piece = m->piece_bytes + (uintptr_t)m->pieces[i].piece;
    tekken_model_settings(m);
    f->pattern = gale_xstrdup(pattern);
    return 0;
}

void tekken_model_settings(spm_model *m)
{
    m->model_type = SPM_MODEL_BPE;
    m->has_trainer_spec = m->has_normalizer_spec = 1;
    m->unk_piece = gale_xstrdup("<unk>");
    m->bos_piece = gale_xstrdup("<s>");
    m->eos_piece = gale_xstrdup("</s>");
    m->pad_piece = gale_xstrdup("<pad>");
    m->unk_surface = gale_xstrdup("");
    m->normalizer.name = gale_xstrdup("identity");
}

int tekken_parse(const void *data, size_t len, const char *name, tekken_file *f, gale_error *err)
{
    memset(f, 0, sizeof *f);
    json_error_t jerr;
    json_t *root = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (!root)
        return gale_fail(err, "%s:%d:%d: not a Tekken file: %s", name, jerr.line, jerr.column, jerr.text);
    int rc = json_is_object(root) ? parse_root(root, f, name, err)
                                  : gale_fail(err, "%s: not a Tekken file: the JSON is not an object", name);
    json_decref(root);
    if (rc < 0) {
        spm_model_free(&f->vocab);
        tekken_file_free_pattern(f);
    }
    return rc;
}

void tekken_file_free_pattern(tekken_file *f)
{
    free(f->pattern);
    f->pattern = NULL;
}

/* ---- the pre-tokenizer ---- */

/* Unicode White_Space, which "\s" is in Rust's regex (tiktoken's); PCRE2's "\s" also takes
 * U+180E, so the pattern spells it out. */
#define WHITE_SPACE "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

struct tekken_splitter {
    pcre2_code *code;
};

struct tekken_matcher {
    const tekken_splitter *splitter;
    pcre2_match_data *match;
    pcre2_match_context *context;
    pcre2_jit_stack *jit_stack;
};

/* The pattern with "\s" and "\S" written as White_Space classes (inside a class, its members). */
static char *pin_white_space(const char *p)
{
    gale_bytes out = {0};
    int in_class = 0;
    for (size_t i = 0; p[i]; i++) {
        if (p[i] == '\\' && p[i + 1]) {
            char c = p[i + 1];
            if (c == 's')
                gale_bytes_append(&out, in_class ? WHITE_SPACE : "[" WHITE_SPACE "]",
                                  strlen(WHITE_SPACE) + (in_class ? 0 : 2));
            else if (c == 'S' && !in_class)
                gale_bytes_append(&out, "[^" WHITE_SPACE "]", strlen(WHITE_SPACE) + 3);
            else
                gale_bytes_append(&out, p + i, 2);
            i++;
            continue;
        }
        if (p[i] == '[' && !in_class) {
            in_class = 1;
            gale_bytes_push(&out, '[');
            if (p[i + 1] == '^')
                gale_bytes_push(&out, (uint8_t)p[++i]);
            if (p[i + 1] == ']') /* a leading ']' is a member */
                gale_bytes_push(&out, (uint8_t)p[++i]);
            continue;
        }
        if (p[i] == ']' && in_class)
            in_class = 0;
        gale_bytes_push(&out, (uint8_t)p[i]);
    }
    gale_bytes_push(&out, 0);
    return (char *)out.v;
}

tekken_splitter *tekken_splitter_new(const char *pattern, const char *name, gale_error *err)
{
    char *pinned = pin_white_space(pattern);
    int code_err;
    PCRE2_SIZE offset;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)pinned, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code_err,
                                     &offset, NULL);
    free(pinned);
    if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code_err, msg, sizeof msg);
        gale_fail(err, "%s: config.pattern does not compile at offset %zu: %s", name, (size_t)offset, (char *)msg);
        return NULL;
    }
    /* JIT is a speed-up only: where it is unavailable pcre2_match interprets */
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE | PCRE2_JIT_PARTIAL_HARD);
    tekken_splitter *s = gale_xmalloc(sizeof *s);
    s->code = code;
    return s;
}

void tekken_splitter_free(tekken_splitter *s)
{
    if (!s)
        return;
    pcre2_code_free(s->code);
    free(s);
}

tekken_matcher *tekken_matcher_new(const tekken_splitter *s)
{
    tekken_matcher *m = gale_xcalloc(1, sizeof *m);
    m->splitter = s;
    m->match = pcre2_match_data_create_from_pattern(s->code, NULL);
    m->context = pcre2_match_context_create(NULL);
    m->jit_stack = pcre2_jit_stack_create(32 << 10, 8 << 20, NULL);
    if (!m->match || !m->context || !m->jit_stack) {
        fprintf(stderr, "gale: out of memory\n");
        abort();
    }
    pcre2_jit_stack_assign(m->context, NULL, m->jit_stack);
    return m;
}

void tekken_matcher_free(tekken_matcher *m)
{
    if (!m)
        return;
    pcre2_match_data_free(m->match);
    pcre2_match_context_free(m->context);
    pcre2_jit_stack_free(m->jit_stack);
    free(m);
}

/* The length of the UTF-8 character at s (n > 0 bytes), valid. */
static size_t char_len(const uint8_t *s, size_t n)
{
    size_t len = s[0] < 0x80 ? 1 : s[0] < 0xE0 ? 2 : s[0] < 0xF0 ? 3 : 4;
    return len < n ? len : n;
}

int tekken_next_word(tekken_matcher *m, const uint8_t *s, size_t n, size_t offset, int final, size_t *start,
                     size_t *end)
{
    for (;;) {
        if (offset >= n)
            return 0;
        uint32_t options = PCRE2_NO_UTF_CHECK | (final ? 0 : PCRE2_PARTIAL_HARD);
        int rc = pcre2_match(m->splitter->code, s, n, offset, options, m->match, m->context);
        if (rc == PCRE2_ERROR_NOMATCH)
            return 0;
        if (rc == PCRE2_ERROR_PARTIAL)
            return -1;
        if (rc < 0) { /* a resource limit on a pathological word: never on Tekken's own pattern */
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            fprintf(stderr, "gale: the Tekken pre-tokenizer failed: %s\n", (char *)msg);
            abort();
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->match);
        if (ov[1] > ov[0]) {
            *start = ov[0];
            *end = ov[1];
            return 1;
        }
        offset = ov[0] + char_len(s + ov[0], n - ov[0]); /* an empty match: tiktoken moves on */
    }
}

/* The number of bytes of the well-formed prefix of the character at s (1 to 4), the byte
 * count it needs in *need; a lone byte that starts nothing is a prefix of 0 bytes. */
static size_t utf8_prefix(const uint8_t *s, size_t n, size_t *need)
{
    uint8_t b = s[0];
    uint8_t lo = 0x80, hi = 0xBF;
    if (b < 0x80) {
        *need = 1;
        return 1;
    }
    if (b >= 0xC2 && b <= 0xDF)
        *need = 2;
    else if (b >= 0xE0 && b <= 0xEF)
        *need = 3, lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
    else if (b >= 0xF0 && b <= 0xF4)
        *need = 4, lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
    else {
        *need = 1;
        return 0;
    }
    size_t k = 1;
    if (k < n && s[k] >= lo && s[k] <= hi)
        for (k = 2; k < *need && k < n && s[k] >= 0x80 && s[k] <= 0xBF;)
            k++;
    return k;
}

size_t tekken_utf8_repair(const uint8_t *s, size_t n, int final, gale_bytes *out)
{
    /* s[run..i) is well-formed and not yet appended: appended in one piece, not a character
     * at a time */
    size_t run = 0, i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t need, k = utf8_prefix(s + i, n - i, &need);
        if (k == need) {
            i += k;
            continue;
        }
        if (i > run)
            gale_bytes_append(out, s + run, i - run);
        if (i + k == n && !final && k > 0)
            return i; /* may complete in the next chunk */
        gale_bytes_append(out, "\xEF\xBF\xBD", 3);
        i += k ? k : 1;
        run = i;
    }
    if (i > run)
        gale_bytes_append(out, s + run, i - run);
    return i;
}
