/* normalize: the canonical forms of a document's text that deduplication compares, and the
 * UTF-8 checks the reader applies. Two forms:
 *   exact: lower case, every run of white space folded to one space, trimmed;
 *   near:  the exact form, and also accents stripped, ASCII digits to '0', punctuation and
 *          symbols removed (so "Café, 1999!" and "cafe 2024" differ only in the digits' value).
 * Case and accents are Unicode-aware for Latin-1 Supplement and Latin Extended-A (U+00C0 to
 * U+017F), combining marks U+0300 to U+036F, Greek and basic Cyrillic capitals; white space
 * and punctuation cover ASCII, Latin-1, General Punctuation (U+2000 to U+206F) and CJK
 * punctuation (U+3000 to U+303F). Other scripts pass through unchanged. */
#ifndef GALE_DATA_NORMALIZE_H
#define GALE_DATA_NORMALIZE_H

#include <stddef.h>

#include "util/vec.h"

/* 1 when s[0..len) is well-formed UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF), else 0. */
int utf8_valid(const char *s, size_t len);

/* Number of code points in well-formed UTF-8. */
size_t utf8_length(const char *s, size_t len);

/* Replaces out's contents with the exact form of well-formed UTF-8 text. */
void normalize_exact(const char *s, size_t len, gale_bytes *out);

/* Replaces out's contents with the near-duplicate form of well-formed UTF-8 text. */
void normalize_near(const char *s, size_t len, gale_bytes *out);

#endif
