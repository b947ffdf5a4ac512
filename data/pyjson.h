/* pyjson: JSON text byte-for-byte as Python writes and reads it, because Mistral's chat
 * templates tokenize the output of `json.dumps(value, ensure_ascii=False)`: ", " and ": "
 * separators, object keys in insertion order, non-ASCII kept as UTF-8, control characters
 * escaped as \n or \u00XX, floats in repr's shortest round-trip form ("1.0", "1e-05",
 * "1e+16"). Values are jansson's (2.14 keeps object keys in insertion order).
 *
 * Known differences from Python's json.loads in pyjson_parse: NaN/Infinity literals and
 * integers beyond 64 bits are not JSON to jansson, so such text is kept as a string. */
#ifndef GALE_DATA_PYJSON_H
#define GALE_DATA_PYJSON_H

#include <jansson.h>
#include <stddef.h>

#include "util/vec.h"

/* Appends json.dumps(value, ensure_ascii=False) to out. */
void pyjson_dump(const json_t *value, gale_bytes *out);

/* Python's `try: json.loads(text) except JSONDecodeError: text`: the value text parses to
 * (any JSON value, surrounding white space allowed), or else a JSON string holding text
 * itself. text is UTF-8, as every jansson string is. Returns a new reference. */
json_t *pyjson_parse(const char *text, size_t len);

#endif
