/* normalize: UTF-8 validation, and the exact and near-duplicate forms of text. */
#include "data/normalize.h"

#include <stdint.h>

int utf8_valid(const char *text, size_t len)
{
    const uint8_t *s = (const uint8_t *)text;
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            n = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (i + n > len)
            return 0;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += n;
    }
    return 1;
}

size_t utf8_length(const char *text, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((uint8_t)text[i] & 0xC0) != 0x80;
    return n;
}

/* Decodes the code point at s[*i] (well-formed input) and advances *i past it. */
static uint32_t utf8_next(const uint8_t *s, size_t *i)
{
    uint8_t c = s[*i];
    if (c < 0x80) {
        *i += 1;
        return c;
    }
    size_t n = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
    uint32_t cp = c & (0x7F >> n);
    for (size_t k = 1; k < n; k++)
        cp = (cp << 6) | (s[*i + k] & 0x3F);
    *i += n;
    return cp;
}

/* Writes cp as UTF-8 at p; returns the byte count. */
static size_t utf8_put(uint8_t *p, uint32_t cp)
{
    if (cp < 0x80) {
        p[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        p[0] = (uint8_t)(0xC0 | (cp >> 6)), p[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        p[0] = (uint8_t)(0xE0 | (cp >> 12)), p[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        p[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    p[0] = (uint8_t)(0xF0 | (cp >> 18)), p[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    p[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)), p[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

static int is_space(uint32_t cp)
{
    return cp == ' ' || (cp >= '\t' && cp <= '\r') || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* Lower case for ASCII, Latin-1, Latin Extended-A, Greek and basic Cyrillic. */
static uint32_t to_lower(uint32_t cp)
{
    if (cp < 0x80)
        return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7)
        return cp + 32;
    if (cp >= 0x100 && cp <= 0x17F) {
        if (cp == 0x130)
            return 'i';
        if (cp == 0x178)
            return 0xFF;
        /* pairs start on an even code point except in U+0139..U+0148 and U+0179..U+017E */
        int odd_upper = (cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E);
        int is_pair = !(cp == 0x131 || cp == 0x138 || cp == 0x149 || cp == 0x17F);
        if (is_pair && (cp & 1) == (uint32_t)odd_upper)
            return cp + 1;
        return cp;
    }
    if (cp >= 0x391 && cp <= 0x3A9 && cp != 0x3A2)
        return cp + 32;
    if (cp >= 0x410 && cp <= 0x42F)
        return cp + 32;
    if (cp >= 0x400 && cp <= 0x40F)
        return cp + 80;
    return cp;
}

/* The ASCII letters of a lower-case Latin-1 or Latin Extended-A letter without its accent
 * ("" for a symbol), or NULL when cp is outside U+00DF..U+017F. */
static const char *strip_accent(uint32_t cp)
{
    static const char *const latin1[] = {
        "ss", "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i",
        "d", "n", "o", "o", "o", "o", "o", "", "o", "u", "u", "u", "u", "y", "th", "y",
    };
    /* U+0100..U+017F in runs: letters and run lengths */
    static const struct {
        const char *letters;
        uint8_t count;
    } extended_a[] = {
        {"a", 6}, {"c", 8}, {"d", 4}, {"e", 10}, {"g", 8}, {"h", 4}, {"i", 10}, {"ij", 2},
        {"j", 2}, {"k", 3}, {"l", 10}, {"n", 9}, {"o", 6}, {"oe", 2}, {"r", 6}, {"s", 8},
        {"t", 6}, {"u", 12}, {"w", 2}, {"y", 3}, {"z", 6}, {"s", 1},
    };
    if (cp >= 0xDF && cp <= 0xFF)
        return latin1[cp - 0xDF];
    if (cp >= 0x100 && cp <= 0x17F) {
        uint32_t k = cp - 0x100;
        for (size_t r = 0; r < sizeof extended_a / sizeof *extended_a; r++) {
            if (k < extended_a[r].count)
                return extended_a[r].letters;
            k -= extended_a[r].count;
        }
    }
    return NULL;
}

/* Non-ASCII punctuation, symbols, combining marks and zero-width characters: dropped by the
 * near form (ASCII ones are decided inline). */
static int is_dropped_near(uint32_t cp)
{
    return (cp >= 0xA1 && cp <= 0xBF) || cp == 0xD7 || cp == 0xF7 || (cp >= 0x300 && cp <= 0x36F) ||
           (cp >= 0x200B && cp <= 0x200F) || (cp >= 0x2010 && cp <= 0x2027) ||
           (cp >= 0x2030 && cp <= 0x205E) || (cp >= 0x2060 && cp <= 0x206F) ||
           (cp >= 0x3001 && cp <= 0x303F) || cp == 0xFEFF;
}

/* Replaces out with text folded to lower case, white space runs folded to one space and
 * trimmed; with near set, also accents stripped, digits to '0', punctuation dropped. No
 * character grows in bytes (a 2-byte letter becomes at most 2 ASCII letters), so len bytes
 * of room are enough and the loop writes without bounds checks. */
static void normalize(const char *text, size_t len, int near, gale_bytes *out)
{
    const uint8_t *s = (const uint8_t *)text;
    out->n = 0;
    gale_bytes_fill(out, 0, len + 1);
    uint8_t *o = out->v, *start = out->v;
    int pending_space = 0;
    size_t i = 0;
    while (i < len) {
        uint32_t cp = s[i];
        if (cp < 0x80) {
            i++; /* ASCII, the common case, decided inline */
            if (cp == ' ' || (cp >= '\t' && cp <= '\r')) {
                pending_space = o > start;
                continue;
            }
            if (cp >= 'A' && cp <= 'Z')
                cp += 32;
            else if (near && cp >= '0' && cp <= '9')
                cp = '0';
            else if (near && !(cp >= 'a' && cp <= 'z') && !(cp >= '0' && cp <= '9'))
                continue;
            if (pending_space) {
                *o++ = ' ';
                pending_space = 0;
            }
            *o++ = (uint8_t)cp;
            continue;
        }
        cp = utf8_next(s, &i);
        if (is_space(cp)) {
            pending_space = o > start;
            continue;
        }
        cp = to_lower(cp);
        const char *ascii = NULL;
        if (near) {
            if (is_dropped_near(cp))
                continue;
            ascii = strip_accent(cp);
            if (ascii && !*ascii)
                continue;
        }
        if (pending_space) {
            *o++ = ' ';
            pending_space = 0;
        }
        if (ascii)
            while (*ascii)
                *o++ = (uint8_t)*ascii++;
        else
            o += utf8_put(o, cp);
    }
    out->n = (size_t)(o - start);
}

void normalize_exact(const char *s, size_t len, gale_bytes *out)
{
    normalize(s, len, 0, out);
}

void normalize_near(const char *s, size_t len, gale_bytes *out)
{
    normalize(s, len, 1, out);
}
